//! Who may ask what of a node, decided before anything a peer sent is decoded.
//!
//! A connection is served by what its peer presented at the TLS handshake (already checked
//! against the cluster CA and this cluster's id):
//! - **No certificate**: a node that is not a member yet. It may only ask to join. Such
//!   connections are at most
//!   [`Limits::max_joining_connections`](crate::Limits::max_joining_connections) of all, so
//!   they cannot take the members' places; their requests are served one at a time, a frame
//!   may hold at most [`Limits::max_join_frame_bytes`](crate::Limits::max_join_frame_bytes) and
//!   must arrive within
//!   [`Limits::join_request_timeout`](crate::Limits::join_request_timeout), and its first bytes
//!   must say it is a join before it is decoded at all; anything else is answered `Refused`
//!   and the connection is closed. Such a connection keeps QUIC's small
//!   [`Limits::join_window_bytes`](crate::Limits::join_window_bytes) receive window.
//! - **A node certificate**: before each request is read, the node's [`PeerCheck`] decides,
//!   from the replicated state, whether the node the certificate names, holding that key, is a
//!   member: removed nodes are answered `Removed`, certificates of unknown nodes or for another
//!   key than the one the cluster pinned for that node `Refused`, and in both cases the
//!   request is not read. Only then is the frame read (up to
//!   [`Limits::max_frame_bytes`](crate::Limits::max_frame_bytes)) and decoded.
//!
//! The same check applies the other way: a member calling node N ([`Transport::call_node`])
//! sends nothing, and reads nothing, until N's certificate passes it.
//!
//! [`Transport::call_node`]: crate::Transport::call_node

use crate::tls::Peer;

/// Whether a peer whose certificate chains to the cluster CA is a member, decided from the
/// replicated state (implemented by the node). Called for every request, so a removal takes
/// effect on open connections too; it must be quick and must not block.
pub trait PeerCheck: Send + Sync + 'static {
    fn check_peer(&self, peer: &Peer) -> Result<(), Refusal>;
}

/// Why a peer is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The node was removed from the cluster; the text says so, and what to do. Told to the
    /// node as `RpcResponse::Removed`, which makes it stop.
    Removed(String),
    /// Not a member this node knows of (yet), or a certificate for another key than the one
    /// the cluster pinned for that node.
    NotMember(String),
}

impl Refusal {
    pub fn reason(&self) -> &str {
        match self {
            Refusal::Removed(r) | Refusal::NotMember(r) => r,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}
