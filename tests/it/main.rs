//! stackd's integration tests, one binary (see ARCHITECTURE.md "Testing").

mod cache;
mod errors;
mod faults;
mod history;
mod kv_cluster;
mod locks;
mod membership;
mod queues;
mod security;
mod sessions;
mod storage_suite;
