//! The openraft type configuration shared by every node.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};

/// A node's addresses, carried in the Raft membership so every member can reach every other.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeInfo {
    /// HTTP API address (`host:port`) that apps and the admin UI use.
    pub api_addr: String,
    /// QUIC address (`host:port`) that carries Raft, forwarded writes and snapshots.
    pub cluster_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "api={} cluster={}", self.api_addr, self.cluster_addr)
    }
}

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// stackd's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
);

pub type LogStore = crate::log_store::LogStore<TypeConfig>;
pub use crate::snapshot::SnapshotData;
