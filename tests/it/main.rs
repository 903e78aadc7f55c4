//! stackd's integration tests, one binary (see ARCHITECTURE.md "Testing").

mod errors;
mod faults;
mod history;
mod kv_cluster;
mod membership;
mod storage_suite;
