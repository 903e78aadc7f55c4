//! The `stackd` node: configuration, the HTTP API, the cluster handle and the CLI client.
//!
//! # Layout
//! - [`config`]: `stackd serve` settings from flags, environment and TOML.
//! - [`server`]: node start-up (identity, storage, Raft, transport, API) and shutdown.
//! - [`cluster`]: writes from any node, batched linearizable reads, joins, leader duties.
//! - [`api`]: the HTTP routes; [`error`] maps every failure to its status and code.
//! - [`audit`]: security events, to the structured log and the replicated `$audit` stream.
//! - [`api_tls`]: the API over TLS (`api.tls_cert`, `api.tls_key`).
//! - [`http_server`]: the API's accept loop and HTTP/1 connections, with header read and
//!   write timeouts.
//! - [`auth`]: what each route needs, bearer tokens checked against the replicated ACL;
//!   [`jwt`]: JWTs of app users verified against the ACL's JWT providers.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`realtime`]: the feed of applied events behind WebSocket fan-out, and presence leases.
//! - [`samples`]: the ring of recent figures behind `GET /v1/node/samples` (the admin UI's charts).
//! - [`backup`]: the backup stream format, its reader and restore into a new data dir.
//! - [`client`]: the client subcommands (`stackd kv …`, `stackd cluster …`, `stackd queue …`
//!   and the others).
//! - [`openapi`]: the API reference served at `/v1/openapi.json`.
//! - [`rate`]: request rates per token, per client address and per WebSocket connection.
//! - [`checks`]: the HTTP and TCP health checks of registered instances, each run by one
//!   alive node; [`gateway`]: the HTTP and WebSocket proxy to healthy instances.
//! - [`resp`]: the Redis protocol (RESP2 and RESP3) on `resp.addr`, over the cache, the
//!   key-value store and channels.
//! - [`service`]: client protocols that span several proposals (the blocking acquire of leased
//!   primitives, the long-poll claim of jobs), shared by every front end.

#![forbid(unsafe_code)]

pub mod api;
pub mod api_tls;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod checks;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod gateway;
pub mod http_server;
pub mod jwt;
pub mod metrics;
pub mod openapi;
pub mod rate;
pub mod realtime;
pub mod resp;
pub mod samples;
pub mod server;
pub mod service;
pub mod threads;

/// Installs the process-wide rustls crypto provider (ring). Call once before any TLS use;
/// later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
