//! stackd's cluster transport. This is the only crate that names `quinn`.
//!
//! # Layout
//! - [`tls`]: the cluster CA, node certificates, mutual TLS with identity checks, join tokens.
//! - [`frame`]: length-prefixed frames on QUIC streams.
//! - [`rpc`]: the request and response messages between nodes.
//! - [`endpoint`]: the node's QUIC endpoint: cached outgoing connections, one bi-stream per
//!   call, and the server loop (Raft RPCs, forwarded writes, read index, joins).
//! - [`network`]: openraft's `RaftNetworkV2` over the endpoint.

pub mod endpoint;
pub mod error;
pub mod frame;
pub mod network;
pub mod rpc;
pub mod tls;

pub use endpoint::{Limits, Service, Transport};
pub use error::{Error, Result};
pub use network::Network;
pub use rpc::{JoinAccepted, JoinGranted, RpcRequest, RpcResponse, ServiceError, Written};
pub use tls::ClusterTls;
