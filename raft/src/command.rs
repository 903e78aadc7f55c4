//! The replicated commands and their results.
//!
//! Persisted in the Raft log: append enum variants only, never reorder or remove them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One proposal: a command stamped with the proposing leader's wall clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The leader's wall clock (ms since the Unix epoch) when it proposed this entry. Apply
    /// advances the replicated clock to `max(previous, stamp_ms)`.
    pub stamp_ms: u64,
    /// `Idempotency-Key` of the client request: a retried write with the same key is answered
    /// from the first result and applied once.
    pub idempotency_key: Option<String>,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a new cluster, proposed once by the node that initialized it.
    InitCluster {
        cluster_id: String,
        join_token_sha256: String,
    },
    /// Allocates the next node id; ids are never reused.
    AllocateNodeId,
    /// Writes a key. `if_revision`: apply only if the key's revision is this (0 = absent).
    Put {
        key: String,
        value: Vec<u8>,
        if_revision: Option<u64>,
        ttl_ms: Option<u64>,
    },
    /// Deletes a key, optionally only if its revision matches.
    Delete {
        key: String,
        if_revision: Option<u64>,
    },
    /// Advances the replicated clock so due deadlines (TTL keys, idempotency records) expire.
    Tick,
}

/// The result of applying one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries, ticks, cluster init.
    Done,
    Put {
        revision: u64,
    },
    Delete {
        revision: u64,
        deleted: bool,
    },
    /// A compare (`if_revision`) failed; nothing was written.
    Conflict {
        current_revision: u64,
    },
    NodeId(u64),
    /// The command cannot apply to this state (e.g. the cluster is already initialized).
    Rejected(String),
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.command {
            Command::InitCluster { cluster_id, .. } => write!(f, "init-cluster {cluster_id}"),
            Command::AllocateNodeId => write!(f, "allocate-node-id"),
            Command::Put { key, value, .. } => write!(f, "put {key} ({} bytes)", value.len()),
            Command::Delete { key, .. } => write!(f, "delete {key}"),
            Command::Tick => write!(f, "tick @{}", self.stamp_ms),
        }
    }
}
