//! stackd's integration tests, one binary (see ARCHITECTURE.md "Testing").

mod errors;
mod faults;
mod kv_cluster;
mod locks;
mod membership;
mod storage_suite;
