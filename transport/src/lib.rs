//! stackd's cluster transport. This is the only crate that names `quinn` and `foca`. It
//! builds on `raft` (the Raft messages and [`raft::codec`]) and knows nothing of RocksDB or of
//! openraft.
//!
//! # Layout
//! - [`tls`]: the cluster CA, node certificates, mutual TLS with identity checks, join tokens.
//! - [`admission`]: who may ask what (joins only without a certificate; members, by the key
//!   the cluster pinned for them), decided before a peer's frame is read or decoded.
//! - [`frame`]: length-prefixed frames on QUIC streams, each one [`raft::codec`]-encoded message.
//! - [`rpc`]: the request and response messages between nodes.
//! - [`endpoint`]: the node's QUIC endpoint: cached outgoing connections, one bi-stream per
//!   call, and the server loop (Raft RPCs, forwarded writes, read index, joins).
//! - [`link`]: the endpoint as the [`raft::Link`] a replica reaches its peers by.
//! - [`gossip`]: SWIM membership (foca) over authenticated UDP: liveness and metadata.

#![forbid(unsafe_code)]

pub mod admission;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod gossip;
mod link;
mod pool;
pub mod rpc;
pub mod tls;

pub use admission::{PeerCheck, Refusal};
pub use endpoint::{Limits, Service, Transport};
pub use error::{Error, Result};
pub use gossip::{Gossip, GossipConfig, Liveness, MemberReach, NodeMeta, PeerView};
pub use pool::PeerStats;
pub use rpc::{
    AdminDone, AdminOp, JoinGranted, NodeKeys, RpcRequest, RpcResponse, ServiceError, Written,
};
pub use tls::ClusterTls;
