//! RocksDB persistence for stackd. This is the only crate that names `rocksdb`.
//!
//! # Layout
//! - [`db`]: the node's one RocksDB instance and its column families (`meta`, `logs`, `sm`),
//!   with the state-machine reads and atomic batches the `raft` crate builds on.
//! - [`log_store`]: openraft's `RaftLogStorage` (vote, append with group-commit fsync, truncate,
//!   purge).
//! - [`codec`]: the versioned postcard encoding of everything persisted or sent.
//! - [`error`]: the crate's error type.

pub mod codec;
pub mod db;
pub mod error;
pub mod log_store;

pub use db::{Db, SmBatch};
pub use error::{Error, Result};
pub use log_store::LogStore;
