//! stackd's Raft layer: what is replicated, how it is encoded, logged and applied. It builds
//! on `storage` for bytes in RocksDB; the encoding and everything openraft lives here.
//!
//! # Layout
//! - [`codec`]: the versioned postcard encoding of everything persisted or sent.
//! - [`types`]: the openraft type configuration ([`TypeConfig`]) and [`NodeInfo`].
//! - [`command`]: the replicated [`Request`]/[`Command`] and their [`Response`].
//! - [`state`]: the in-memory replicated [`State`] and its deterministic apply.
//! - [`state_machine`]: openraft's state-machine traits over the state and RocksDB.
//! - [`snapshot`]: snapshot files, sent, received and installed in chunks ([`SnapshotData`],
//!   [`snapshot::SnapshotSink`]).
//! - [`log_store`]: openraft's `RaftLogStorage` (vote, append with group-commit fsync, truncate,
//!   purge) over the byte-level log of [`storage::Db`].
//! - [`config`]: the openraft configuration built from stackd's timing.
//! - [`replica`]: the node's one handle on Raft ([`Replica`]): proposals, reads, membership
//!   and figures in stackd's terms.
//! - [`network`]: how a replica reaches the others, over a [`network::Link`] the node provides,
//!   and the Raft messages that cross it.
//!
//! openraft is named only in this crate; `openraft` is re-exported for the log store's
//! conformance suite and benchmark.

#![forbid(unsafe_code)]

pub mod codec;
pub mod command;
pub mod config;
pub mod log_store;
pub mod network;
pub mod replica;
pub mod snapshot;
pub mod state;
pub mod state_machine;
pub mod types;

pub use command::{Command, Request, Response};
pub use network::{AppendAnswers, AppendInput, Link, LinkError, LogId, PeerAnswer, PeerRpc};
pub use openraft;
pub use replica::{Metrics, ProposeError, Replica, ReplicaError, Role};
pub use state::State;
pub use state_machine::{LiveBatch, StateMachine};
pub use types::{LogStore, NodeId, NodeInfo, SnapshotData, TypeConfig};
