//! stackd's integration tests, one binary (see ARCHITECTURE.md "Testing").

#![forbid(unsafe_code)]

mod access;
mod backup;
mod cache;
mod channels;
mod channels_proc;
mod cluster_port;
mod code_shape;
mod config;
mod errors;
mod faults;
mod gateway;
mod gossip;
mod history;
mod idempotency;
mod joins;
mod jwt;
mod kv_cluster;
mod lifecycle;
mod limits;
mod listings;
mod locks;
mod membership;
mod queues;
mod quota;
mod replication;
mod resp;
mod router_fuzz;
mod security;
mod semaphores;
mod services;
mod sessions;
mod snapshots;
mod storage_suite;
mod timeouts;
