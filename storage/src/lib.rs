//! RocksDB persistence for stackd. This is the only crate that names `rocksdb`.
//!
//! # Layout
//! - [`db`]: the node's one RocksDB instance and its column families (`meta`, `logs`, `sm`),
//!   with the byte-level log operations, state-machine reads and atomic batches the `raft`
//!   crate builds on. Keys and values are bytes: this crate knows nothing of openraft or of
//!   the encoding.
//! - [`error`]: the crate's error type.

#![forbid(unsafe_code)]

pub mod db;
pub mod error;

pub use db::{Db, Memory, SmBatch, SmView, SyncSummary, SyncTimes, WeakDb};
pub use error::{Error, Result};
