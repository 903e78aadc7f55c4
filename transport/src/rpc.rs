//! The messages exchanged between nodes, one request and one response per QUIC bi-stream
//! (but for an append stream, which carries many of each).
//!
//! Sent between nodes of possibly different versions: append variants only, so a variant
//! keeps its wire index. A variant that is no longer sent may be removed only together with
//! a new codec format version, which nodes of the earlier format refuse as a whole.

use std::collections::{BTreeMap, BTreeSet};

use raft::network::{
    AppendRequest, AppendResponse, SnapshotMeta, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, Vote, VoteRequest, VoteResponse,
};
use raft::{codec, LogId, NodeId, NodeInfo, Request, Response};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    Append(AppendRequest),
    Vote(VoteRequest),
    PreVote(VoteRequest),
    TransferLeader(TransferLeaderRequest),
    /// A snapshot follows in raw chunk frames until `total_bytes` have been sent.
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        total_bytes: u64,
    },
    /// A follower asks the leader for a read index (ReadIndex protocol).
    ReadIndex,
    /// A client write forwarded to the leader, answered with the log index it took, so the
    /// follower can wait until the write is visible in its own state.
    Write(Request),
    /// A new node asks to join with a key it generated; answered by [`RpcResponse::Joined`]
    /// with a certificate for that key. Allowed without a certificate.
    JoinWithKey {
        token: String,
        node: NodeInfo,
        /// The joiner's public key (uncompressed P-256 point).
        public_key: Vec<u8>,
    },
    /// A member checks that the cluster still counts it in (answered by `Hello`, or by
    /// `Removed` when its id was removed).
    Hello,
    /// A change to Raft itself, asked of any node and run on the leader; answered by
    /// [`RpcResponse::Admin`].
    Admin(AdminOp),
    /// A member asks for the node keys the cluster pinned and the removed nodes (answered by
    /// [`RpcResponse::NodeKeys`]), to check a peer its own state does not know yet.
    NodeKeys,
    /// The leader's appends follow on this stream, one `AppendRequest` frame each, sent
    /// without waiting for answers; each is answered by an [`RpcResponse::StreamAppend`] frame,
    /// in order, until the leader finishes the stream or an append is refused.
    AppendStream,
}

/// The wire index of [`RpcRequest::JoinWithKey`].
const JOIN_WITH_KEY: u8 = 7;

/// Whether an encoded request is a join, read from its first two bytes (the format version
/// and the variant) without decoding it.
pub(crate) fn is_join(frame: &[u8]) -> bool {
    frame.get(..2) == Some(&[codec::FORMAT_VERSION, JOIN_WITH_KEY][..])
}

/// An operation on Raft itself (membership, leadership, snapshots). It runs on the leader:
/// the node a client asked forwards it there, as it forwards writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// Removes a member (a voter, or a learner) from the membership.
    RemoveMember(NodeId),
    /// Makes a learner a voter.
    PromoteMember(NodeId),
    /// Hands leadership to this voter.
    TransferLeader(NodeId),
    /// Builds a snapshot (on the leader, which then purges the log behind it).
    Snapshot,
}

/// What an [`AdminOp`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminDone {
    Removed(NodeId),
    Promoted(NodeId),
    /// The leader after a transfer.
    Leader(NodeId),
    /// The snapshot's last index, and whether it was built within the wait.
    Snapshot {
        index: Option<u64>,
        completed: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Raft's answers; an error of the remote Raft travels as text.
    Append(Result<AppendResponse, String>),
    Vote(Result<VoteResponse, String>),
    TransferLeader(Result<TransferLeaderResponse, String>),
    Snapshot(Result<SnapshotResponse, String>),
    ReadIndex(Result<LogId, ServiceError>),
    /// The request is not allowed on this connection or is malformed.
    Refused(String),
    Write(Result<Written, ServiceError>),
    Joined(Result<JoinGranted, ServiceError>),
    /// The caller's certificate names a node that was removed from the cluster: the text
    /// says which node and what to do.
    Removed(String),
    Hello,
    Admin(Result<AdminDone, ServiceError>),
    NodeKeys(NodeKeys),
    /// The answer to one append of an [`RpcRequest::AppendStream`].
    StreamAppend(Result<StreamAppendResult, String>),
}

/// The node keys the cluster pinned and the nodes it removed, as one member's applied state
/// has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKeys {
    /// Node id → SHA-256 of the node's public key (its certificate's SubjectPublicKeyInfo).
    pub keys: BTreeMap<NodeId, [u8; 32]>,
    pub removed: BTreeSet<NodeId>,
}

/// A committed and applied write: its result and the index of its log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub response: Response,
    pub log_index: u64,
}

/// Why a forwarded request or service call did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServiceError {
    /// The receiver is not the leader; the leader it knows of, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    /// No quorum or the node is shutting down: the write was not applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The outcome is unknown: the write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The request was refused (e.g. a wrong join token).
    #[error("refused: {0}")]
    Refused(String),
    /// What the request names does not exist (e.g. a member id).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. a membership change under way);
    /// nothing was done.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request is malformed or names something of the wrong kind; nothing was done.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// What a joining node receives: its id, a certificate naming it (for the key it sent), and
/// the cluster CA with its key (the cluster-wide secret every member holds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGranted {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub cert_der: Vec<u8>,
    pub ca_cert_der: Vec<u8>,
    pub ca_key_der: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes of different versions of one format exchange these: a variant's wire index
    /// never changes within a format.
    #[test]
    fn variants_keep_their_wire_index() {
        let req = |r: &RpcRequest| codec::encode(r).unwrap()[1];
        assert_eq!(req(&RpcRequest::ReadIndex), 5);
        assert_eq!(req(&RpcRequest::Hello), 8);
        assert_eq!(req(&RpcRequest::NodeKeys), 10);
        assert_eq!(req(&RpcRequest::AppendStream), 11);
        let join = RpcRequest::JoinWithKey {
            token: "t".into(),
            node: NodeInfo::default(),
            public_key: vec![4; 65],
        };
        assert_eq!(req(&join), JOIN_WITH_KEY);
        assert!(is_join(&codec::encode(&join).unwrap()));
        assert!(!is_join(&codec::encode(&RpcRequest::Hello).unwrap()));
        assert!(!is_join(&[codec::FORMAT_VERSION]));
        let resp = |r: &RpcResponse| codec::encode(r).unwrap()[1];
        assert_eq!(resp(&RpcResponse::Refused(String::new())), 5);
        assert_eq!(resp(&RpcResponse::Removed(String::new())), 8);
        assert_eq!(resp(&RpcResponse::Hello), 9);
        assert_eq!(resp(&RpcResponse::NodeKeys(NodeKeys::default())), 11);
        assert_eq!(resp(&RpcResponse::StreamAppend(Err(String::new()))), 12);
    }
}
