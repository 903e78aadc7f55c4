//! Node configuration: one nested [`Config`], read from a TOML file (`--config`), `STACKD_*`
//! environment variables and flags, in this order of precedence: flags > environment > file >
//! defaults. [`Config::validate`] refuses bad values at start-up, naming the setting.
//!
//! Every default is set once, in the `Default` of its section (the `section!` declarations
//! below), next to the documentation of the field. The same declarations give the commented
//! example file (`stackd config example`) and the help of each `stackd serve` flag, so none of
//! them is a copy that can drift.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

/// Declares one section of the config file: the struct (with `serde(default)` and unknown keys
/// refused), its `Default` (the one place its defaults are set) and [`Section`], which lists
/// each field's name, documentation and, for a setting unset by default, an example value.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])+
        [$key:literal] pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                pub $field:ident: $ty:ty = $default:expr $(; e.g. $example:literal)?,
            )+
        }
    ) => {
        $(#[doc = $sdoc])+
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[doc = $doc])+ pub $field: $ty,)+
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)+ }
            }
        }

        impl $name {
            /// This section's name and fields in the config file.
            pub const SECTION: Section = Section {
                name: $key,
                doc: concat!($($sdoc, "\n"),+),
                fields: &[$(FieldDoc {
                    name: stringify!($field),
                    doc: concat!($($doc, "\n"),+),
                    example: section!(@example $($example)?),
                },)+],
            };
        }
    };
    (@example) => { None };
    (@example $example:literal) => { Some($example) };
}

/// A section of the config file, for the example file and the help of the flags.
#[derive(Debug)]
pub struct Section {
    pub name: &'static str,
    pub doc: &'static str,
    pub fields: &'static [FieldDoc],
}

/// A setting of a [`Section`].
#[derive(Debug)]
pub struct FieldDoc {
    pub name: &'static str,
    pub doc: &'static str,
    /// A value shown (commented out) in the example file for a setting unset by default.
    pub example: Option<&'static str>,
}

section! {
    /// Where the node keeps its state.
    ["storage"] pub struct StorageConfig {
        /// Directory for the node's RocksDB, TLS credentials and snapshots. An empty directory
        /// starts a new node; an existing one restarts the member it holds. Required; there
        /// is no default.
        pub data_dir: Option<PathBuf> = None; e.g. "/var/lib/stackd",
        /// The read cache, in MiB: RocksDB's block cache (blocks read from disk: values,
        /// their index and bloom filters, shared by the log and the state) and, an eighth of
        /// it, the key-value values read lately. With `memtable_mb`, it bounds the memory
        /// the store uses whatever the size of the data. Default: 256. Range: 8 to 1048576.
        pub block_cache_mb: u64 = 256,
        /// RocksDB's memtables (writes not yet flushed to disk), all together, in MiB.
        /// Default: 128. Range: 16 to 65536.
        pub memtable_mb: u64 = 128,
    }
}

section! {
    /// The HTTP API: apps, the CLI, `/metrics`, WebSockets.
    ["api"] pub struct ApiConfig {
        /// Address (IP:PORT) the HTTP API listens on. Default: "127.0.0.1:7001".
        pub addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7001)),
        /// Address (HOST:PORT) other nodes and clients use to reach this node's API, if it
        /// differs from api.addr (e.g. when listening on 0.0.0.0). Default: none (api.addr).
        pub advertise_addr: Option<String> = None; e.g. "10.0.0.1:7001",
        /// How long a write or linearizable read may wait for the cluster before the answer
        /// is 504 (write outcome unknown) or 503, in milliseconds. Default: 5000. Range: 100
        /// to 600000.
        pub request_timeout_ms: u64 = 5_000,
        /// Most HTTP requests handled at once; further ones get 503. Default: 4096. Range: 1
        /// to 1000000.
        pub max_inflight_requests: usize = 4096,
        /// Most `/health`, `/ready` and `/metrics` requests handled at once, apart from
        /// api.max_inflight_requests, so probes and scrapes are answered while the node sheds
        /// other requests; further ones get 503. Default: 64. Range: 1 to 10000.
        pub max_inflight_probes: usize = 64,
        /// Time a client has to send a request's head (request line and headers), from the
        /// moment its connection opens or its previous answer was sent; then the connection
        /// is closed (nothing was read to answer). Idle keep-alive connections close after
        /// this too. In milliseconds. Default: 10000. Range: 100 to 600000.
        pub header_read_timeout_ms: u64 = 10_000,
        /// Time a client has to send a request's whole body, from the moment the request is
        /// let in; then the answer is 408 request_timeout. In milliseconds. Default: 30000.
        /// Range: 100 to 600000.
        pub body_read_timeout_ms: u64 = 30_000,
        /// Longest a write to a client may stay blocked (the client reads nothing); then the
        /// connection is closed. This bounds how long a stalled download (a backup) holds its
        /// stream, and how long a WebSocket client may stop reading. In milliseconds. Default:
        /// 30000. Range: 100 to 3600000.
        pub write_timeout_ms: u64 = 30_000,
        /// Above this load (requests in flight plus WebSocket connections), a node sends new
        /// WebSocket connections and long-poll claims to a member carrying under three quarters
        /// of its load (a `moved` answer naming it), so clients spread back over the members,
        /// a restarted one included. 0 turns it off. Default: 1000.
        pub move_clients_above: u64 = 1_000,
        /// Serve every route without a token. For tests and local experiments only: anyone
        /// who reaches the API port owns the cluster. Logged as a warning at start-up and
        /// shown as `auth: "off"` in `GET /v1/cluster`. Default: false.
        pub insecure_no_auth: bool = false,
        /// Web origins (`scheme://host[:port]`, comma-separated, or `*` for any) whose pages may
        /// call the API from a browser: answered with CORS headers, and let through the Origin
        /// check of WebSocket upgrades and of every request but GET and HEAD. Default: ""
        /// (pages served by the node itself only).
        pub allowed_origins: Origins = Origins::default(); e.g. "https://app.example.com",
        /// Serve the API over TLS (https://, wss://) with this certificate chain (PEM), so tokens
        /// do not cross the network in the clear; needs api.tls_key. Default: none (plain
        /// HTTP: keep the API on a trusted network or behind a TLS proxy).
        pub tls_cert: Option<PathBuf> = None; e.g. "/etc/stackd/api-cert.pem",
        /// The private key (PEM) of api.tls_cert. Default: none.
        pub tls_key: Option<PathBuf> = None; e.g. "/etc/stackd/api-key.pem",
        /// Serve the API over TLS with a certificate this node issues itself from the cluster
        /// CA (instead of api.tls_cert): for the advertised API host, api.tls_names, localhost,
        /// 127.0.0.1 and ::1, valid 90 days and renewed after 30. Clients trust the CA written
        /// to `api-ca.pem` in the data dir (`stackd --ca-cert`, `curl --cacert`). Default: false.
        pub tls_from_cluster_ca: bool = false,
        /// More names (DNS names or IP addresses, comma-separated) for the certificate of
        /// api.tls_from_cluster_ca, e.g. a load balancer's name. Default: "".
        pub tls_names: HostNames = HostNames::default(); e.g. "stackd.internal,10.0.0.10",
        /// Serve `/metrics` without a token (for a Prometheus scraper on a trusted network).
        /// When false, `/metrics` needs a token with `read` on `cluster`. Default: false.
        pub metrics_open: bool = false,
    }
}

section! {
    /// Request rates, per node (a client spreading over N nodes gets N times these): token
    /// buckets refilled continuously, a burst of up to one second's worth. Past one the answer
    /// is 429 rate_limited with Retry-After. 0 turns a limit off.
    ["rate"] pub struct RateConfig {
        /// Reads (GET, HEAD) per second with one token. Default: 20000.
        pub token_reads_per_sec: u64 = 20_000,
        /// Writes (every other method) per second with one token. Default: 10000.
        pub token_writes_per_sec: u64 = 10_000,
        /// Requests per second from one client IP, with or without a token. Default: 50000.
        pub ip_requests_per_sec: u64 = 50_000,
        /// Failed authentications (401) per minute from one client IP; past it, 429 until the
        /// bucket refills. Default: 60.
        pub auth_failures_per_min: u64 = 60,
        /// WebSocket connections opened per second from one client IP. Default: 50.
        pub ws_connections_per_sec: u64 = 50,
        /// Messages per second a WebSocket client may send on one connection; past it a
        /// message is refused with rate_limited and the connection stays open. Default: 1000.
        pub ws_messages_per_sec: u64 = 1_000,
    }
}

section! {
    /// The cluster port (QUIC: Raft, forwarded writes, snapshots) and joining a cluster.
    ["cluster"] pub struct ClusterConfig {
        /// Address (IP:PORT) the cluster port listens on (UDP). Default: "127.0.0.1:7101".
        pub addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7101)),
        /// Address (HOST:PORT) other nodes use to reach this node's cluster port, if it
        /// differs from cluster.addr. Default: none (cluster.addr).
        pub advertise_addr: Option<String> = None; e.g. "10.0.0.1:7101",
        /// Cluster address (HOST:PORT) of any current member, to join its cluster. Only used
        /// when the data directory is empty; needs cluster.token. The node makes its own key
        /// and receives a certificate naming its new id, signed by the cluster CA (kept under
        /// `tls/` in the data dir). Default: none (an empty data dir starts a new cluster).
        pub join: Option<String> = None; e.g. "10.0.0.1:7101",
        /// Join token `stk1.<CA fingerprint>.<secret>`: printed by the first node (also in
        /// its data dir as `join-token`; it does not expire), or made by `stackd token create
        /// [--ttl 24h]`. If the join is refused the node exits saying why: "invalid join
        /// token" (wrong secret), "join token expired" (create another), "not signed by the
        /// cluster CA named in the join token" (cluster.join points at another cluster).
        /// Default: none.
        pub token: Option<String> = None; e.g. "stk1.<fingerprint>.<secret>",
    }
}

section! {
    /// Gossip (UDP): liveness and metadata of the members.
    ["gossip"] pub struct GossipConfig {
        /// Address (IP:PORT) gossip listens on (UDP). Other members reach a node at its
        /// advertised cluster IP and cluster port + 1, so change the port only if that one
        /// is taken. Default: none (the cluster.addr IP, port + 1).
        pub addr: Option<SocketAddr> = None; e.g. "0.0.0.0:7102",
    }
}

section! {
    /// Raft timing, snapshots and the size of the voter set.
    ["raft"] pub struct RaftConfig {
        /// Interval between the leader's heartbeats, in milliseconds. Default: 100. Range: 10
        /// to 10000.
        pub heartbeat_interval_ms: u64 = 100,
        /// Minimum election timeout, in milliseconds; the maximum is twice this. Default:
        /// 500. Range: more than twice raft.heartbeat_interval_ms, at most 60000.
        pub election_timeout_ms: u64 = 500,
        /// Log entries between automatic snapshots. Default: 100000. Range: 100 or more.
        pub snapshot_every_entries: u64 = 100_000,
        /// Bytes of log entries between automatic snapshots, whichever of the two comes
        /// first: a log of large entries is snapshotted and purged sooner. Default:
        /// 1073741824 (1 GiB). Range: 1048576 (1 MiB) or more.
        pub snapshot_every_log_bytes: u64 = 1 << 30,
        /// Voters the cluster grows to by promoting caught-up learners. Default: 3. Allowed:
        /// 3 or 5.
        pub target_voters: usize = 3,
    }
}

section! {
    /// Replacing dead voters (the leader's autopilot).
    ["autopilot"] pub struct AutopilotConfig {
        /// Let the leader replace a voter that gossip has seen down for longer than
        /// autopilot.dead_grace_ms with a caught-up, alive learner (one membership change at
        /// a time, never below quorum). Default: false.
        pub replace_dead: bool = false,
        /// How long a voter must have been down in gossip before autopilot replaces it, in
        /// milliseconds. Default: 30000. Range: 1000 or more (gossip needs a few seconds to
        /// call a node down).
        pub dead_grace_ms: u64 = 30_000,
    }
}

section! {
    /// Limits on what clients store.
    ["limits"] pub struct LimitsConfig {
        /// Largest value accepted (keys, cache entries, session data, job payloads, channel
        /// events), in bytes. JSON bodies may be twice this plus 64 KiB. Default: 1048576
        /// (1 MiB). Range: 1 to 33554432 (32 MiB).
        pub max_value_bytes: usize = 1 << 20,
        /// Key-value revisions whose history is kept for watches and history reads; the
        /// leader compacts older history. Default: 10000. Range: 1 or more.
        pub kv_history_revisions: u64 = 10_000,
        /// Storage quota, in bytes of key-value keys and values held (like etcd's
        /// --quota-backend-bytes). Once the data reaches it, the cluster raises the NOSPACE
        /// alarm (`alarms` in GET /v1/cluster, `stackd_alarm` in /metrics) and refuses writes
        /// that grow the state with 507 quota_exceeded, while reads, deletes, acks, locks and
        /// compaction go on; the alarm clears once the data is under the quota again. The
        /// leader's setting is the cluster's: set the same on every node. 0 turns it off.
        /// Default: 2147483648 (2 GiB). Range: 0, or at least limits.max_value_bytes.
        pub quota_bytes: u64 = 2 << 30,
        /// Most keys the key-value state holds; a put of one more is refused with 429
        /// rate_limited naming this setting (`setting`, and `limit` its value). Like every
        /// `max_*` below, the leader's setting is the cluster's, and 0 turns it off.
        /// Default: 10000000.
        pub max_keys: u64 = 10_000_000,
        /// Most job queues (a queue exists from its first job until deleted with
        /// `DELETE /v1/queues/{name}`); a job for one more is refused. Default: 10000.
        pub max_queues: u64 = 10_000,
        /// Most jobs one queue holds (ready, delayed, in flight and dead); one more is
        /// refused until some are acked or deleted. Default: 1000000.
        pub max_jobs_per_queue: u64 = 1_000_000,
        /// Most cron schedules, all queues together. Default: 10000.
        pub max_schedules: u64 = 10_000,
        /// Most channels (a channel exists from its first publish); a publish to one more is
        /// refused. Reserved channels (`$audit`) are not refused. Default: 100000.
        pub max_channels: u64 = 100_000,
        /// Most live sessions of one user; one more is refused until one ends (sessions
        /// listed per user stop at 1000 too). Default: 1000.
        pub max_sessions_per_user: u64 = 1_000,
        /// Most access-control tokens (`POST /v1/acl/tokens`); one more is refused until one
        /// is deleted or expires. Default: 100000.
        pub max_tokens: u64 = 100_000,
        /// Most unexpired join tokens made after the founding one (`POST /v1/cluster/tokens`);
        /// one more is refused until one expires or is revoked. Default: 1000.
        pub max_join_tokens: u64 = 1_000,
        /// Most callers queued for locks (blocking acquires of held locks), all locks
        /// together; one more is refused (each lock also queues at most 1024). Default:
        /// 100000.
        pub max_lock_waiters: u64 = 100_000,
    }
}

section! {
    /// The replicated cache.
    ["cache"] pub struct CacheConfig {
        /// Most entries in the cache; past it the oldest writes are evicted. Default: 100000.
        /// Range: 1 or more.
        pub max_entries: u64 = 100_000,
        /// Most bytes (keys + values) in the cache; past it the oldest writes are evicted.
        /// Default: 268435456 (256 MiB). Range: at least limits.max_value_bytes + 512 (one
        /// largest entry).
        pub max_bytes: u64 = 256 << 20,
    }
}

section! {
    /// Channels: history retention and presence.
    ["channels"] pub struct ChannelsConfig {
        /// History retention of channels by name prefix: comma-separated
        /// `PREFIX=EVENTS:AGE_MS` rules; the longest matching prefix wins, and the empty
        /// prefix sets the retention of channels no other rule matches. Example:
        /// "chat/=500:3600000,ticks/=100:60000". Default: "=1000:86400000" (1000 events for
        /// 24 hours). Range: 1 to 1000000 events, 1 to 2592000000 ms (30 days) per rule.
        pub retention: Retention = Retention::default(),
        /// Presence lease of a node, in milliseconds: a node renews it every third of this
        /// while it has present clients, and a node that stops (crash, partition) loses its
        /// clients' presence this long after its last renewal. Default: 6000. Range: 300 to
        /// 600000.
        pub presence_lease_ms: u64 = 6_000,
    }
}

section! {
    /// WebSocket connections (`/v1/ws`).
    ["ws"] pub struct WsConfig {
        /// Bytes of messages queued for one WebSocket connection; a client that falls further
        /// behind is disconnected (close code 1008, reason `slow consumer`) and resumes by
        /// offset. Default: 4194304 (4 MiB). Range: at least limits.max_value_bytes + 4096
        /// (one largest event).
        pub send_buffer_bytes: usize = 4 << 20,
        /// Events per second one WebSocket connection is sent while catching up from history.
        /// Default: 10000. Range: 1 or more.
        pub catch_up_events_per_sec: u64 = 10_000,
        /// Most WebSocket connections on this node; further upgrades get 503. Default: 10000.
        /// Range: 1 or more.
        pub max_connections: usize = 10_000,
        /// Interval of the pings the server sends on each WebSocket connection, in
        /// milliseconds. Default: 15000. Range: 100 to 600000, below ws.idle_timeout_ms.
        pub ping_interval_ms: u64 = 15_000,
        /// A WebSocket connection from which nothing arrives (no message, no pong) for this
        /// long is closed with error idle_timeout and close code 1001. Browsers and most
        /// clients answer pings by themselves. In milliseconds. Default: 45000. Range: above
        /// ws.ping_interval_ms, at most 3600000.
        pub idle_timeout_ms: u64 = 45_000,
        /// Most `publish` requests of one WebSocket connection waiting for their write to
        /// commit; a publish past it is refused with rate_limited (setting
        /// `ws.max_pending_publishes`) and the connection goes on. Default: 256. Range: 1 to
        /// 100000.
        pub max_pending_publishes: usize = 256,
    }
}

section! {
    /// The gateway: an HTTP and WebSocket proxy on every node to the healthy instances of the
    /// registered services, by the routes of `/v1/routes`.
    ["gateway"] pub struct GatewayConfig {
        /// Address (IP:PORT) the gateway listens on (plain HTTP/1.1 and WebSocket
        /// upgrades). Default: none (no gateway).
        pub addr: Option<SocketAddr> = None; e.g. "0.0.0.0:8080",
        /// Threads that serve the gateway, each with its own listening socket on
        /// gateway.addr (SO_REUSEPORT: the kernel spreads new connections over them) and its
        /// own connections to the instances, so a request and its instance's connection stay
        /// on one core. 0 = one per core. Default: 0. Range: 0 to 64.
        pub threads: usize = 0,
    }
}

section! {
    /// The Redis protocol (RESP2 and RESP3): Redis clients use the cache (db 0) and the
    /// key-value store (db 1) through any node, with a stackd token as the password.
    ["resp"] pub struct RespConfig {
        /// Address (IP:PORT) the RESP listener binds (plain TCP, like the API without TLS:
        /// keep it on a trusted network). Default: none (no RESP listener).
        pub addr: Option<SocketAddr> = None; e.g. "127.0.0.1:6379",
        /// Most RESP connections at once; one more is answered "-ERR max number of clients
        /// reached" and closed. Default: 10000. Range: 1 to 1000000.
        pub max_connections: usize = 10_000,
        /// Most arguments in one command, its name included (an MSET of N pairs has 2N+1);
        /// a longer one is a protocol error that closes the connection. Each argument is at
        /// most limits.max_value_bytes. Default: 65536. Range: 3 to 1048576.
        pub max_args: usize = 65_536,
        /// Threads that serve RESP connections, each with its own listening socket on
        /// resp.addr (SO_REUSEPORT) and its own connections, so a connection's requests are
        /// read, answered and written on one core without waking another. 0 = half the
        /// cores, at least one (the rest is the node's own work). Default: 0. Range: 0 to 64.
        pub threads: usize = 0,
    }
}

/// The whole configuration of a node, one field per section of the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub storage: StorageConfig,
    pub api: ApiConfig,
    pub cluster: ClusterConfig,
    pub gossip: GossipConfig,
    pub raft: RaftConfig,
    pub autopilot: AutopilotConfig,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
    pub channels: ChannelsConfig,
    pub ws: WsConfig,
    pub rate: RateConfig,
    pub gateway: GatewayConfig,
    pub resp: RespConfig,
    /// `[[services]]`: instances this node registers at start-up (see [`ServiceEntry`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceEntry>,
}

/// One `[[services]]` table of the config file: an instance this node registers when it
/// starts (again on every start, which keeps its status when the check is unchanged), with
/// the fields of `PUT /v1/services/{service}/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub service: String,
    pub id: String,
    #[serde(flatten)]
    pub instance: crate::api::services::RegisterRequest,
}

/// Most `[[services]]` entries in one config file.
pub const MAX_SERVICE_ENTRIES: usize = 1_000;

/// The `[[services]]` part of the example file.
const SERVICES_EXAMPLE: &str = "
# Instances this node registers in the service registry when it starts (one [[services]]
# table each, at most 1000), with the fields of PUT /v1/services/{service}/instances/{id}.
# [[services]]
# service = \"web\"
# id = \"web-1\"
# address = \"10.0.0.5\"
# port = 8080
# tags = [\"blue\"]
# check = { type = \"http\", path = \"/health\", interval_ms = 5000 }
";

/// The sections of [`Config`], in the order of its fields.
pub const SECTIONS: &[Section] = &[
    StorageConfig::SECTION,
    ApiConfig::SECTION,
    ClusterConfig::SECTION,
    GossipConfig::SECTION,
    RaftConfig::SECTION,
    AutopilotConfig::SECTION,
    LimitsConfig::SECTION,
    CacheConfig::SECTION,
    ChannelsConfig::SECTION,
    WsConfig::SECTION,
    RateConfig::SECTION,
    GatewayConfig::SECTION,
    RespConfig::SECTION,
];

/// The documentation of the setting at `path` (`section.field`).
pub fn field_doc(path: &str) -> Option<&'static FieldDoc> {
    let (section, field) = path.split_once('.')?;
    SECTIONS
        .iter()
        .find(|s| s.name == section)?
        .fields
        .iter()
        .find(|f| f.name == field)
}

/// Declares the flags of `stackd serve`: each one overrides the setting at its path, and can
/// also be given as its environment variable (clap: a flag wins over the variable).
macro_rules! serve_flags {
    ($(
        $(#[$attr:meta])*
        $arg:ident: $ty:ty, $env:literal => $($path:ident).+;
    )+) => {
        /// Settings of `stackd serve`. Each flag (or its `STACKD_*` environment variable)
        /// overrides one setting of the config file; the help of each comes from the
        /// documentation of its [`Config`] field (see [`document_flags`]).
        #[derive(Args, Debug, Clone, Default)]
        pub struct ServeArgs {
            /// TOML config file with sections (`stackd config example` prints one with every
            /// setting and its default). Environment variables override it, and flags
            /// override both.
            #[arg(long, env = "STACKD_CONFIG", value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                #[arg(long, env = $env)]
                $(#[$attr])*
                pub $arg: Option<String>,
            )+
        }

        /// Every flag of `stackd serve` with its environment variable and setting.
        pub const FLAGS: &[Flag] = &[$(Flag {
            arg: stringify!($arg),
            env: $env,
            path: stringify!($($path).+),
        },)+];

        impl ServeArgs {
            /// Sets every setting given as a flag or environment variable over `config`.
            fn apply(self, config: &mut Config) -> Result<(), Invalid> {
                let mut invalid = Invalid::default();
                $(
                    if let Some(text) = self.$arg {
                        match text.parse::<$ty>() {
                            Ok(v) => config.$($path).+ = v.into(),
                            Err(e) => invalid.push(
                                stringify!($($path).+),
                                format!("must be {}, not {text:?} ({e})", <$ty as Form>::FORM),
                            ),
                        }
                    }
                )+
                invalid.into_result()
            }
        }
    };
}

serve_flags! {
    data_dir: PathBuf, "STACKD_DATA_DIR" => storage.data_dir;
    block_cache_mb: u64, "STACKD_BLOCK_CACHE_MB" => storage.block_cache_mb;
    memtable_mb: u64, "STACKD_MEMTABLE_MB" => storage.memtable_mb;
    api_addr: SocketAddr, "STACKD_API_ADDR" => api.addr;
    advertise_api_addr: String, "STACKD_ADVERTISE_API_ADDR" => api.advertise_addr;
    request_timeout_ms: u64, "STACKD_REQUEST_TIMEOUT_MS" => api.request_timeout_ms;
    max_inflight_requests: usize, "STACKD_MAX_INFLIGHT_REQUESTS" => api.max_inflight_requests;
    max_inflight_probes: usize, "STACKD_MAX_INFLIGHT_PROBES" => api.max_inflight_probes;
    header_read_timeout_ms: u64, "STACKD_HEADER_READ_TIMEOUT_MS" => api.header_read_timeout_ms;
    body_read_timeout_ms: u64, "STACKD_BODY_READ_TIMEOUT_MS" => api.body_read_timeout_ms;
    write_timeout_ms: u64, "STACKD_WRITE_TIMEOUT_MS" => api.write_timeout_ms;
    move_clients_above: u64, "STACKD_MOVE_CLIENTS_ABOVE" => api.move_clients_above;
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    insecure_no_auth: bool, "STACKD_INSECURE_NO_AUTH" => api.insecure_no_auth;
    allowed_origins: Origins, "STACKD_ALLOWED_ORIGINS" => api.allowed_origins;
    api_tls_cert: PathBuf, "STACKD_API_TLS_CERT" => api.tls_cert;
    api_tls_key: PathBuf, "STACKD_API_TLS_KEY" => api.tls_key;
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    api_tls_from_cluster_ca: bool, "STACKD_API_TLS_FROM_CLUSTER_CA" => api.tls_from_cluster_ca;
    api_tls_names: HostNames, "STACKD_API_TLS_NAMES" => api.tls_names;
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    metrics_open: bool, "STACKD_METRICS_OPEN" => api.metrics_open;
    cluster_addr: SocketAddr, "STACKD_CLUSTER_ADDR" => cluster.addr;
    advertise_cluster_addr: String, "STACKD_ADVERTISE_CLUSTER_ADDR" => cluster.advertise_addr;
    join: String, "STACKD_JOIN" => cluster.join;
    // A secret: never shown in --help. `--token` is what the first node prints.
    #[arg(hide_env_values = true, alias = "token")]
    join_token: String, "STACKD_JOIN_TOKEN" => cluster.token;
    gossip_addr: SocketAddr, "STACKD_GOSSIP_ADDR" => gossip.addr;
    gateway_addr: SocketAddr, "STACKD_GATEWAY_ADDR" => gateway.addr;
    gateway_threads: usize, "STACKD_GATEWAY_THREADS" => gateway.threads;
    resp_addr: SocketAddr, "STACKD_RESP_ADDR" => resp.addr;
    resp_max_connections: usize, "STACKD_RESP_MAX_CONNECTIONS" => resp.max_connections;
    resp_max_args: usize, "STACKD_RESP_MAX_ARGS" => resp.max_args;
    resp_threads: usize, "STACKD_RESP_THREADS" => resp.threads;
    heartbeat_interval_ms: u64, "STACKD_HEARTBEAT_INTERVAL_MS" => raft.heartbeat_interval_ms;
    election_timeout_ms: u64, "STACKD_ELECTION_TIMEOUT_MS" => raft.election_timeout_ms;
    snapshot_every_entries: u64, "STACKD_SNAPSHOT_EVERY_ENTRIES" => raft.snapshot_every_entries;
    snapshot_every_log_bytes: u64, "STACKD_SNAPSHOT_EVERY_LOG_BYTES" => raft.snapshot_every_log_bytes;
    target_voters: usize, "STACKD_TARGET_VOTERS" => raft.target_voters;
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    autopilot_replace_dead: bool, "STACKD_AUTOPILOT_REPLACE_DEAD" => autopilot.replace_dead;
    autopilot_dead_grace_ms: u64, "STACKD_AUTOPILOT_DEAD_GRACE_MS" => autopilot.dead_grace_ms;
    max_value_bytes: usize, "STACKD_MAX_VALUE_BYTES" => limits.max_value_bytes;
    kv_history_revisions: u64, "STACKD_KV_HISTORY_REVISIONS" => limits.kv_history_revisions;
    quota_bytes: u64, "STACKD_QUOTA_BYTES" => limits.quota_bytes;
    max_keys: u64, "STACKD_MAX_KEYS" => limits.max_keys;
    max_queues: u64, "STACKD_MAX_QUEUES" => limits.max_queues;
    max_jobs_per_queue: u64, "STACKD_MAX_JOBS_PER_QUEUE" => limits.max_jobs_per_queue;
    max_schedules: u64, "STACKD_MAX_SCHEDULES" => limits.max_schedules;
    max_channels: u64, "STACKD_MAX_CHANNELS" => limits.max_channels;
    max_sessions_per_user: u64, "STACKD_MAX_SESSIONS_PER_USER" => limits.max_sessions_per_user;
    max_tokens: u64, "STACKD_MAX_TOKENS" => limits.max_tokens;
    max_join_tokens: u64, "STACKD_MAX_JOIN_TOKENS" => limits.max_join_tokens;
    max_lock_waiters: u64, "STACKD_MAX_LOCK_WAITERS" => limits.max_lock_waiters;
    cache_max_entries: u64, "STACKD_CACHE_MAX_ENTRIES" => cache.max_entries;
    cache_max_bytes: u64, "STACKD_CACHE_MAX_BYTES" => cache.max_bytes;
    channel_retention: Retention, "STACKD_CHANNEL_RETENTION" => channels.retention;
    presence_lease_ms: u64, "STACKD_PRESENCE_LEASE_MS" => channels.presence_lease_ms;
    ws_send_buffer_bytes: usize, "STACKD_WS_SEND_BUFFER_BYTES" => ws.send_buffer_bytes;
    ws_catch_up_events_per_sec: u64, "STACKD_WS_CATCH_UP_EVENTS_PER_SEC" => ws.catch_up_events_per_sec;
    ws_max_connections: usize, "STACKD_WS_MAX_CONNECTIONS" => ws.max_connections;
    ws_ping_interval_ms: u64, "STACKD_WS_PING_INTERVAL_MS" => ws.ping_interval_ms;
    ws_idle_timeout_ms: u64, "STACKD_WS_IDLE_TIMEOUT_MS" => ws.idle_timeout_ms;
    ws_max_pending_publishes: usize, "STACKD_WS_MAX_PENDING_PUBLISHES" => ws.max_pending_publishes;
    rate_token_reads_per_sec: u64, "STACKD_RATE_TOKEN_READS_PER_SEC" => rate.token_reads_per_sec;
    rate_token_writes_per_sec: u64, "STACKD_RATE_TOKEN_WRITES_PER_SEC" => rate.token_writes_per_sec;
    rate_ip_requests_per_sec: u64, "STACKD_RATE_IP_REQUESTS_PER_SEC" => rate.ip_requests_per_sec;
    rate_auth_failures_per_min: u64, "STACKD_RATE_AUTH_FAILURES_PER_MIN" => rate.auth_failures_per_min;
    rate_ws_connections_per_sec: u64, "STACKD_RATE_WS_CONNECTIONS_PER_SEC" => rate.ws_connections_per_sec;
    rate_ws_messages_per_sec: u64, "STACKD_RATE_WS_MESSAGES_PER_SEC" => rate.ws_messages_per_sec;
}

/// A flag of `stackd serve`: its argument id (the flag is `--` and the id with dashes), its
/// environment variable and the path of its setting in the config file.
#[derive(Debug)]
pub struct Flag {
    pub arg: &'static str,
    pub env: &'static str,
    pub path: &'static str,
}

impl Flag {
    /// `--heartbeat-interval-ms`.
    pub fn long(&self) -> String {
        format!("--{}", self.arg.replace('_', "-"))
    }
}

/// How a setting is named in errors: its file path, flag and environment variable.
fn setting_name(path: &str) -> String {
    match FLAGS.iter().find(|f| f.path == path) {
        Some(f) => format!("{path} ({}, {})", f.long(), f.env),
        None => path.to_string(),
    }
}

/// What a flag's value must look like, for errors.
trait Form: FromStr {
    const FORM: &'static str;
}
impl Form for u64 {
    const FORM: &'static str = "a whole number";
}
impl Form for usize {
    const FORM: &'static str = "a whole number";
}
impl Form for bool {
    const FORM: &'static str = "true or false";
}
impl Form for SocketAddr {
    const FORM: &'static str = "IP:PORT";
}
impl Form for String {
    const FORM: &'static str = "text";
}
impl Form for PathBuf {
    const FORM: &'static str = "a path";
}
impl Form for Origins {
    const FORM: &'static str = "comma-separated origins (scheme://host[:port]) or *";
}
impl Form for HostNames {
    const FORM: &'static str = "comma-separated DNS names or IP addresses";
}
impl Form for Retention {
    const FORM: &'static str = "comma-separated PREFIX=EVENTS:AGE_MS rules";
}

/// Gives each `stackd serve` flag its help: the documentation of its setting, and where that
/// setting goes in the config file. Apply it to the command that holds [`ServeArgs`].
pub fn document_flags(mut cmd: clap::Command) -> clap::Command {
    for flag in FLAGS {
        let doc = field_doc(flag.path).expect("every flag sets a documented field");
        let help = format!(
            "{} [config file: {}]",
            paragraphs(doc.doc).join("\n\n"),
            flag.path
        );
        cmd = cmd.mut_arg(flag.arg, |a| a.help(help));
    }
    cmd
}

/// The paragraphs of a doc comment, each on one line.
fn paragraphs(doc: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in doc.lines().map(str::trim) {
        let last = out.last_mut().expect("never empty");
        if line.is_empty() {
            if !last.is_empty() {
                out.push(String::new());
            }
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(line);
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The problems found in a configuration, each naming its setting.
#[derive(Debug, Default)]
pub struct Invalid(Vec<String>);

impl Invalid {
    fn push(&mut self, path: &str, problem: String) {
        self.0.push(format!("{}: {problem}", setting_name(path)));
    }

    fn check(&mut self, ok: bool, path: &str, problem: impl FnOnce() -> String) {
        if !ok {
            self.push(path, problem());
        }
    }

    fn into_result(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Checks `value` against an inclusive range, naming the range in the problem.
fn in_range<T: PartialOrd + fmt::Display + Copy>(
    invalid: &mut Invalid,
    path: &str,
    value: T,
    min: T,
    max: Option<T>,
) {
    let ok = value >= min && max.is_none_or(|m| value <= m);
    invalid.check(ok, path, || match max {
        Some(max) => format!("must be {min} to {max}, not {value}"),
        None => format!("must be at least {min}, not {value}"),
    });
}

/// `HOST:PORT` with a non-empty host and a port number.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl ServeArgs {
    /// The configuration these flags give: the `--config` file (or the defaults), with every
    /// flag and environment variable over it, validated.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load_file(path)?,
            None => Config::default(),
        };
        self.apply(&mut config)?;
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Parses a config file's text: sections as in `stackd config example`; a missing
    /// setting takes its default, an unknown one is an error naming it.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let table: toml::Table = text.parse()?;
        check_keys(&table)?;
        Ok(toml::from_str(text)?)
    }

    /// Reads a config file (see [`from_toml`](Self::from_toml)).
    pub fn load_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Config::from_toml(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Refuses a bad value with an error naming the setting (its path in the file, flag and
    /// environment variable) and what it must be. Nothing is clamped.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        self.validate_storage_and_api(&mut invalid);
        self.validate_cluster(&mut invalid);
        self.validate_raft(&mut invalid);
        self.validate_limits(&mut invalid);
        if self.services.len() > MAX_SERVICE_ENTRIES {
            invalid.0.push(format!(
                "services: at most {MAX_SERVICE_ENTRIES} entries, got {}",
                self.services.len()
            ));
        }
        for (i, e) in self.services.iter().enumerate() {
            if let Err(err) = crate::api::services::instance_spec(&e.service, &e.id, &e.instance) {
                invalid.0.push(format!(
                    "services[{i}] ({}/{}): {}",
                    e.service, e.id, err.message
                ));
            }
        }
        invalid.into_result()
    }

    /// `storage`, then `api`.
    fn validate_storage_and_api(&self, bad: &mut Invalid) {
        bad.check(self.storage.data_dir.is_some(), "storage.data_dir", || {
            "is required: the directory of the node's state".into()
        });
        let storage = &self.storage;
        in_range(
            bad,
            "storage.block_cache_mb",
            storage.block_cache_mb,
            8,
            Some(1 << 20),
        );
        in_range(
            bad,
            "storage.memtable_mb",
            storage.memtable_mb,
            16,
            Some(65_536),
        );
        self.validate_api(bad);
    }

    /// `api`: its address, bounds, timeouts and TLS.
    fn validate_api(&self, bad: &mut Invalid) {
        if let Some(a) = &self.api.advertise_addr {
            bad.check(is_host_port(a), "api.advertise_addr", || {
                format!("must be HOST:PORT, not {a:?}")
            });
        }
        let api = &self.api;
        in_range(
            bad,
            "api.request_timeout_ms",
            api.request_timeout_ms,
            100,
            Some(600_000),
        );
        in_range(
            bad,
            "api.max_inflight_requests",
            api.max_inflight_requests,
            1,
            Some(1_000_000),
        );
        in_range(
            bad,
            "api.max_inflight_probes",
            api.max_inflight_probes,
            1,
            Some(10_000),
        );
        for (name, ms, max) in [
            (
                "api.header_read_timeout_ms",
                api.header_read_timeout_ms,
                600_000,
            ),
            (
                "api.body_read_timeout_ms",
                api.body_read_timeout_ms,
                600_000,
            ),
            ("api.write_timeout_ms", api.write_timeout_ms, 3_600_000),
        ] {
            in_range(bad, name, ms, 100, Some(max));
        }
        bad.check(
            api.tls_cert.is_some() == api.tls_key.is_some(),
            "api.tls_cert",
            || "api.tls_cert and api.tls_key go together: give both or neither".to_string(),
        );
        bad.check(
            !(api.tls_from_cluster_ca && api.tls_cert.is_some()),
            "api.tls_from_cluster_ca",
            || "must not be set with api.tls_cert: give one or the other".to_string(),
        );
    }

    /// `cluster` and `gossip`: addresses and the join token.
    fn validate_cluster(&self, bad: &mut Invalid) {
        if let Some(a) = &self.cluster.advertise_addr {
            bad.check(is_host_port(a), "cluster.advertise_addr", || {
                format!("must be HOST:PORT, not {a:?}")
            });
        }
        if let Some(j) = &self.cluster.join {
            bad.check(is_host_port(j), "cluster.join", || {
                format!("must be HOST:PORT (a member's cluster address), not {j:?}")
            });
            bad.check(self.cluster.token.is_some(), "cluster.token", || {
                "is required with cluster.join (printed by the first node, and in its data dir as join-token)".into()
            });
        }
        if let Some(t) = &self.cluster.token {
            if let Err(e) = transport::tls::token_fingerprint(t) {
                bad.push(
                    "cluster.token",
                    format!("must be stk1.<fingerprint>.<secret>: {e}"),
                );
            }
        }
        if self.gossip.addr.is_none() {
            bad.check(self.cluster.addr.port() < u16::MAX, "gossip.addr", || {
                "must be given: the cluster port is 65535, so port + 1 does not exist".into()
            });
        }
    }

    /// `raft` timing and size, and `autopilot`.
    fn validate_raft(&self, bad: &mut Invalid) {
        let raft = &self.raft;
        in_range(
            bad,
            "raft.heartbeat_interval_ms",
            raft.heartbeat_interval_ms,
            10,
            Some(10_000),
        );
        bad.check(
            raft.election_timeout_ms > raft.heartbeat_interval_ms.saturating_mul(2)
                && raft.election_timeout_ms <= 60_000,
            "raft.election_timeout_ms",
            || {
                format!(
                    "must be more than twice raft.heartbeat_interval_ms ({}) and at most 60000, not {}",
                    raft.heartbeat_interval_ms, raft.election_timeout_ms
                )
            },
        );
        in_range(
            bad,
            "raft.snapshot_every_entries",
            raft.snapshot_every_entries,
            100,
            None,
        );
        in_range(
            bad,
            "raft.snapshot_every_log_bytes",
            raft.snapshot_every_log_bytes,
            1 << 20,
            None,
        );
        bad.check(
            raft.target_voters == 3 || raft.target_voters == 5,
            "raft.target_voters",
            || format!("must be 3 or 5, not {}", raft.target_voters),
        );

        in_range(
            bad,
            "autopilot.dead_grace_ms",
            self.autopilot.dead_grace_ms,
            1_000,
            None,
        );
    }

    /// `limits`, and the `cache`, `channels` and `ws` bounds that follow from them.
    fn validate_limits(&self, bad: &mut Invalid) {
        let max_value = self.limits.max_value_bytes;
        in_range(
            bad,
            "limits.max_value_bytes",
            max_value,
            1,
            Some(MAX_VALUE_BYTES_MAX),
        );
        in_range(
            bad,
            "limits.kv_history_revisions",
            self.limits.kv_history_revisions,
            1,
            None,
        );
        let quota = self.limits.quota_bytes;
        bad.check(
            quota == 0 || quota >= max_value as u64,
            "limits.quota_bytes",
            || {
                format!(
                    "must be 0 (off) or at least limits.max_value_bytes = {max_value}, not {quota}"
                )
            },
        );

        in_range(bad, "cache.max_entries", self.cache.max_entries, 1, None);
        let entry = max_value as u64 + 512;
        bad.check(self.cache.max_bytes >= entry, "cache.max_bytes", || {
            format!(
                "must hold one largest entry: at least limits.max_value_bytes + 512 = {entry}, not {}",
                self.cache.max_bytes
            )
        });

        for rule in &self.channels.retention.rules {
            if let Err(e) = rule.check() {
                bad.push("channels.retention", e);
            }
        }
        let lease = self.channels.presence_lease_ms;
        in_range(bad, "channels.presence_lease_ms", lease, 300, Some(600_000));

        self.validate_listeners(bad);
    }

    /// The bounds of the WebSocket, gateway and Redis protocol listeners.
    fn validate_listeners(&self, bad: &mut Invalid) {
        let event = self.limits.max_value_bytes + 4096;
        bad.check(self.ws.send_buffer_bytes >= event, "ws.send_buffer_bytes", || {
            format!(
                "must hold one largest event: at least limits.max_value_bytes + 4096 = {event}, not {}",
                self.ws.send_buffer_bytes
            )
        });
        let ws = &self.ws;
        in_range(
            bad,
            "ws.catch_up_events_per_sec",
            ws.catch_up_events_per_sec,
            1,
            None,
        );
        in_range(bad, "ws.max_connections", ws.max_connections, 1, None);
        in_range(
            bad,
            "ws.ping_interval_ms",
            ws.ping_interval_ms,
            100,
            Some(600_000),
        );
        in_range(
            bad,
            "ws.idle_timeout_ms",
            ws.idle_timeout_ms,
            ws.ping_interval_ms + 1,
            Some(3_600_000),
        );
        in_range(
            bad,
            "ws.max_pending_publishes",
            ws.max_pending_publishes,
            1,
            Some(100_000),
        );
        in_range(bad, "gateway.threads", self.gateway.threads, 0, Some(64));
        in_range(
            bad,
            "resp.max_connections",
            self.resp.max_connections,
            1,
            Some(1_000_000),
        );
        in_range(bad, "resp.max_args", self.resp.max_args, 3, Some(1 << 20));
        in_range(bad, "resp.threads", self.resp.threads, 0, Some(64));
    }

    /// The data directory. Set in every validated config.
    pub fn data_dir(&self) -> &Path {
        self.storage
            .data_dir
            .as_deref()
            .expect("Config::validate requires storage.data_dir")
    }

    /// The memory RocksDB may use.
    pub fn store_memory(&self) -> storage::Memory {
        let mib = |m: u64| usize::try_from(m << 20).unwrap_or(usize::MAX);
        storage::Memory {
            cache_bytes: mib(self.storage.block_cache_mb),
            memtable_bytes: mib(self.storage.memtable_mb),
        }
    }

    /// The API address other nodes and clients use.
    pub fn advertise_api_addr(&self) -> String {
        (self.api.advertise_addr.clone()).unwrap_or_else(|| self.api.addr.to_string())
    }

    /// The cluster address other nodes use.
    pub fn advertise_cluster_addr(&self) -> String {
        (self.cluster.advertise_addr.clone()).unwrap_or_else(|| self.cluster.addr.to_string())
    }

    /// The UDP address gossip binds: gossip.addr, or the cluster IP with its port + 1.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip.addr.unwrap_or_else(|| {
            let port = self.cluster.addr.port().checked_add(1);
            SocketAddr::new(
                self.cluster.addr.ip(),
                port.expect("Config::validate refuses cluster port 65535 without gossip.addr"),
            )
        })
    }

    /// Where other members send gossip (`host:port`): the advertised cluster host with the
    /// gossip port.
    pub fn advertise_gossip_addr(&self) -> String {
        let cluster = self.advertise_cluster_addr();
        let host = cluster
            .rsplit_once(':')
            .map_or(cluster.as_str(), |(h, _)| h);
        format!("{host}:{}", self.gossip_addr().port())
    }

    /// The retention a publish on `channel` carries.
    pub fn retention_for(&self, channel: &str) -> raft::command::ChannelRetention {
        self.channels.retention.for_channel(channel)
    }

    /// The commented TOML file of `stackd config example`: every setting with its default.
    pub fn example() -> String {
        let mut out = String::from(
            "# stackd configuration: `stackd serve --config FILE`. Every setting is shown with its\n\
             # default; settings left out take their default. Each can also be given as a flag or\n\
             # a STACKD_* environment variable, which override the file (flags > environment >\n\
             # file > defaults).\n",
        );
        out.push_str(&Config::default().to_commented_toml(&[]));
        out.push_str(SERVICES_EXAMPLE);
        out
    }

    /// This configuration as a commented TOML file, one section after another; a setting
    /// unset here is shown commented out with an example value, and a setting in `hide`
    /// (e.g. a secret) is shown only as set or not.
    pub fn to_commented_toml(&self, hide: &[&str]) -> String {
        let value = toml::Value::try_from(self).expect("a config serializes to TOML");
        let table = value.as_table().expect("a config is a table");
        let mut out = String::new();
        for section in SECTIONS {
            out.push('\n');
            for line in section.doc.lines() {
                out.push_str(&format!("#{line}\n"));
            }
            out.push_str(&format!("[{}]\n", section.name));
            let values = table.get(section.name).and_then(|v| v.as_table());
            for field in section.fields {
                let path = format!("{}.{}", section.name, field.name);
                out.push('\n');
                for p in paragraphs(field.doc) {
                    for line in wrap(&p, 90) {
                        out.push_str(&format!("# {line}\n"));
                    }
                }
                if let Some(flag) = FLAGS.iter().find(|f| f.path == path) {
                    out.push_str(&format!(
                        "# Flag: {}; environment: {}.\n",
                        flag.long(),
                        flag.env
                    ));
                }
                match values.and_then(|v| v.get(field.name)) {
                    Some(_) if hide.contains(&path.as_str()) => {
                        out.push_str(&format!("# {} is set (not shown)\n", field.name));
                    }
                    Some(v) => out.push_str(&format!("{} = {v}\n", field.name)),
                    None => {
                        let example = field.example.map(|e| format!("{e:?}")).unwrap_or_default();
                        out.push_str(&format!("# {} = {example}\n", field.name));
                    }
                }
            }
        }
        if !self.services.is_empty() {
            #[derive(Serialize)]
            struct Services<'a> {
                services: &'a [ServiceEntry],
            }
            let services = Services {
                services: &self.services,
            };
            out.push_str("\n# Instances this node registers when it starts.\n");
            out.push_str(&toml::to_string(&services).expect("services serialize to TOML"));
        }
        out
    }
}

/// Refuses a key of the file that is no setting, naming it with its section.
fn check_keys(table: &toml::Table) -> anyhow::Result<()> {
    let names = |names: Vec<&str>| names.join(", ");
    for (key, value) in table {
        if key == "services" {
            // An array of tables, checked by its type (unknown fields are refused there).
            continue;
        }
        let Some(section) = SECTIONS.iter().find(|s| s.name == key) else {
            // A flag's name is most likely a setting written without its section.
            if let Some(flag) = FLAGS.iter().find(|f| f.arg == key) {
                anyhow::bail!("unknown setting `{key}`: it is `{}` in the file", flag.path);
            }
            anyhow::bail!(
                "unknown section `{key}`: the sections are {}",
                names(SECTIONS.iter().map(|s| s.name).collect())
            );
        };
        let Some(fields) = value.as_table() else {
            anyhow::bail!("`{key}` must be a section ([{key}]), not a value");
        };
        for field in fields.keys() {
            if !section.fields.iter().any(|f| f.name == field) {
                anyhow::bail!(
                    "unknown setting `{key}.{field}`: the settings of [{key}] are {}",
                    names(section.fields.iter().map(|f| f.name).collect())
                );
            }
        }
    }
    Ok(())
}

/// Splits `text` into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The largest limits.max_value_bytes: 32 MiB (frames between nodes are at most 64 MiB).
pub const MAX_VALUE_BYTES_MAX: usize = 32 << 20;

/// Most events one channel may keep, and the longest age: 30 days.
pub const CHANNEL_MAX_EVENTS_MAX: u64 = 1_000_000;
pub const CHANNEL_MAX_AGE_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;

/// Retention of the channels whose name starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    pub prefix: String,
    pub max_events: u64,
    pub max_age_ms: u64,
}

impl RetentionRule {
    fn check(&self) -> Result<(), String> {
        if (1..=CHANNEL_MAX_EVENTS_MAX).contains(&self.max_events)
            && (1..=CHANNEL_MAX_AGE_MS_MAX).contains(&self.max_age_ms)
        {
            Ok(())
        } else {
            Err(format!(
                "rule \"{self}\": events must be 1 to {CHANNEL_MAX_EVENTS_MAX}, age 1 to {CHANNEL_MAX_AGE_MS_MAX} ms"
            ))
        }
    }
}

impl fmt::Display for RetentionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.prefix, self.max_events, self.max_age_ms)
    }
}

/// Web origins allowed to call the API from a browser: `scheme://host[:port]` each, or `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origins(pub Vec<String>);

impl Origins {
    /// Whether `origin` (an `Origin` header's value) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.0
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

impl FromStr for Origins {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for o in spec.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let ok = o == "*"
                || (o.starts_with("http://") || o.starts_with("https://"))
                    && !o
                        .trim_end_matches('/')
                        .contains(|c: char| c.is_whitespace())
                    && o.splitn(4, '/').nth(3).is_none_or(str::is_empty);
            if !ok {
                return Err(format!(
                    "{o:?} is not an origin: give scheme://host[:port] (no path) or *"
                ));
            }
            out.push(o.trim_end_matches('/').to_string());
        }
        Ok(Origins(out))
    }
}

impl fmt::Display for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl TryFrom<String> for Origins {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Origins> for String {
    fn from(o: Origins) -> String {
        o.to_string()
    }
}

/// Names a certificate is for: DNS names or IP addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostNames(pub Vec<String>);

impl FromStr for HostNames {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        spec.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                rustls::pki_types::ServerName::try_from(n)
                    .map(|_| n.to_string())
                    .map_err(|_| format!("{n:?} is neither a DNS name nor an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(HostNames)
    }
}

impl fmt::Display for HostNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl TryFrom<String> for HostNames {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<HostNames> for String {
    fn from(n: HostNames) -> String {
        n.to_string()
    }
}

/// Channel retention rules by name prefix, written `PREFIX=EVENTS:AGE_MS,...`. The rule with
/// the empty prefix, always present, covers channels no other rule matches; a spec that does
/// not set it keeps the default's. Parsing checks the form; [`Config::validate`] the bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Retention {
    /// Longest prefix first, so the first match is the most specific; the last has the empty
    /// prefix.
    rules: Vec<RetentionRule>,
}

impl Default for Retention {
    /// 1000 events for 24 hours, for every channel.
    fn default() -> Self {
        Retention {
            rules: vec![RetentionRule {
                prefix: String::new(),
                max_events: 1000,
                max_age_ms: 24 * 60 * 60 * 1000,
            }],
        }
    }
}

impl Retention {
    /// The rules, longest prefix first.
    pub fn rules(&self) -> &[RetentionRule] {
        &self.rules
    }

    /// The retention a publish on `channel` carries: the rule of the longest matching prefix.
    pub fn for_channel(&self, channel: &str) -> raft::command::ChannelRetention {
        let rule = self
            .rules
            .iter()
            .find(|r| channel.starts_with(&r.prefix))
            .expect("the empty prefix matches every channel");
        raft::command::ChannelRetention {
            max_events: rule.max_events,
            max_age_ms: rule.max_age_ms,
        }
    }
}

impl FromStr for Retention {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut rules = Retention::default().rules;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || format!("rule {part:?} is not PREFIX=EVENTS:AGE_MS");
            let (prefix, bounds) = part.rsplit_once('=').ok_or_else(bad)?;
            let (events, age) = bounds.split_once(':').ok_or_else(bad)?;
            let rule = RetentionRule {
                prefix: prefix.to_string(),
                max_events: events.parse().map_err(|_| bad())?,
                max_age_ms: age.parse().map_err(|_| bad())?,
            };
            rules.retain(|r| r.prefix != rule.prefix);
            rules.push(rule);
        }
        rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Retention { rules })
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<String> = self.rules.iter().map(|r| r.to_string()).collect();
        write!(f, "{}", rules.join(","))
    }
}

impl TryFrom<String> for Retention {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Retention> for String {
    fn from(r: Retention) -> String {
        r.to_string()
    }
}

/// The gossip address of a member whose cluster address is `cluster_addr` (`host:port`): the
/// same host, port + 1. Every node derives its peers' gossip addresses from the Raft
/// membership this way.
pub fn derived_gossip_addr(cluster_addr: &str) -> Option<String> {
    let (host, port) = cluster_addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{host}:{}", port.checked_add(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str =
        "stk1.abababababababababababababababababababababababababababababababab.cdcd";

    /// Every `section.field` of the config, from the declarations.
    fn all_paths() -> Vec<String> {
        SECTIONS
            .iter()
            .flat_map(|s| {
                s.fields
                    .iter()
                    .map(move |f| format!("{}.{}", s.name, f.name))
            })
            .collect()
    }

    /// A valid config whose every setting differs from its default.
    fn every_setting_changed() -> Config {
        let mut c = Config::default();
        c.storage.data_dir = Some("/srv/stackd".into());
        c.storage.block_cache_mb = 512;
        c.storage.memtable_mb = 64;
        c.api.addr = "10.0.0.1:8001".parse().unwrap();
        c.api.advertise_addr = Some("api.example:8001".into());
        c.api.request_timeout_ms = 7_000;
        c.api.max_inflight_requests = 100;
        c.api.max_inflight_probes = 9;
        c.limits.quota_bytes = 1 << 30;
        c.limits.max_keys = 11;
        c.limits.max_queues = 12;
        c.limits.max_jobs_per_queue = 13;
        c.limits.max_schedules = 14;
        c.limits.max_channels = 15;
        c.limits.max_sessions_per_user = 16;
        c.limits.max_tokens = 17;
        c.limits.max_join_tokens = 18;
        c.limits.max_lock_waiters = 19;
        c.api.header_read_timeout_ms = 1_234;
        c.api.body_read_timeout_ms = 2_345;
        c.api.write_timeout_ms = 3_456;
        c.api.move_clients_above = 50;
        c.api.insecure_no_auth = true;
        c.api.metrics_open = true;
        c.api.tls_cert = Some("/etc/stackd/api-cert.pem".into());
        c.api.tls_key = Some("/etc/stackd/api-key.pem".into());
        c.api.tls_from_cluster_ca = true;
        c.api.tls_names = "stackd.internal,10.0.0.10".parse().unwrap();
        c.rate.token_reads_per_sec = 1;
        c.rate.token_writes_per_sec = 2;
        c.rate.ip_requests_per_sec = 3;
        c.rate.auth_failures_per_min = 4;
        c.rate.ws_connections_per_sec = 5;
        c.rate.ws_messages_per_sec = 6;
        c.api.allowed_origins = "https://app.example.com,http://localhost:3000"
            .parse()
            .unwrap();
        c.cluster.addr = "10.0.0.1:8101".parse().unwrap();
        c.cluster.advertise_addr = Some("node-a.example:8101".into());
        c.cluster.join = Some("10.0.0.2:8101".into());
        c.cluster.token = Some(TOKEN.into());
        c.gossip.addr = Some("0.0.0.0:9000".parse().unwrap());
        c.raft.heartbeat_interval_ms = 50;
        c.raft.election_timeout_ms = 300;
        c.raft.snapshot_every_entries = 500;
        c.raft.snapshot_every_log_bytes = 2 << 20;
        c.raft.target_voters = 5;
        c.autopilot.replace_dead = true;
        c.autopilot.dead_grace_ms = 5_000;
        c.limits.max_value_bytes = 4096;
        c.limits.kv_history_revisions = 20;
        c.cache.max_entries = 10;
        c.cache.max_bytes = 1 << 20;
        c.channels.retention = "chat/=5:1000".parse().unwrap();
        c.channels.presence_lease_ms = 900;
        c.ws.send_buffer_bytes = 1 << 20;
        c.ws.catch_up_events_per_sec = 5;
        c.ws.max_connections = 7;
        c.ws.ping_interval_ms = 1_000;
        c.ws.idle_timeout_ms = 5_000;
        c.ws.max_pending_publishes = 3;
        c.gateway.addr = Some("0.0.0.0:8080".parse().unwrap());
        c.gateway.threads = 4;
        c.resp.addr = Some("127.0.0.1:6379".parse().unwrap());
        c.resp.max_connections = 5;
        c.resp.max_args = 100;
        c.resp.threads = 3;
        c
    }

    #[test]
    fn services_in_the_file_are_checked_and_shown() {
        let base = "[storage]\ndata_dir = \"/srv/stackd\"\n";
        let good = format!(
            "{base}[[services]]\nservice = \"web\"\nid = \"web-1\"\naddress = \"10.0.0.5\"\n\
             port = 8080\ncheck = {{ type = \"http\", path = \"/health\", interval_ms = 5000 }}\n"
        );
        let c = Config::from_toml(&good).unwrap();
        c.validate().unwrap();
        assert_eq!(c.services[0].instance.port, 8080);
        // `config show` renders them, and that parses back to the same config.
        let shown = c.to_commented_toml(&[]);
        assert_eq!(Config::from_toml(&shown).unwrap(), c);
        // A misspelled field is refused, not ignored.
        let typo = good.replace("port = 8080", "prot = 8080");
        assert!(Config::from_toml(&typo).is_err());
        // A bad entry is named with what is wrong.
        let bad = good.replace("interval_ms = 5000", "interval_ms = 5");
        let err = Config::from_toml(&bad)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("services[0] (web/web-1)"), "{err}");
        assert!(
            err.contains("check.interval_ms must be 100 to 3600000"),
            "{err}"
        );
        // The example shows how, commented out.
        assert!(Config::example().contains("# [[services]]"));
    }

    #[test]
    fn parsing_the_example_gives_exactly_the_defaults() {
        let example = Config::example();
        assert_eq!(Config::from_toml(&example).unwrap(), Config::default());
        for path in all_paths() {
            let (section, field) = path.split_once('.').unwrap();
            let section_at = example.find(&format!("\n[{section}]\n")).unwrap();
            let rest = &example[section_at..];
            let listed = rest.contains(&format!("\n{field} = "))
                || rest.contains(&format!("\n# {field} = "));
            assert!(listed, "the example lists {path}");
        }
    }

    #[test]
    fn a_rendered_config_parses_back_to_itself_with_every_setting() {
        let c = every_setting_changed();
        // Valid, but for the two settings that exclude each other.
        let mut valid = c.clone();
        valid.api.tls_from_cluster_ca = false;
        valid.validate().unwrap();
        let value = toml::Value::try_from(&c).unwrap();
        let mut serialized: Vec<String> = Vec::new();
        for (section, fields) in value.as_table().unwrap() {
            for field in fields.as_table().unwrap().keys() {
                serialized.push(format!("{section}.{field}"));
            }
        }
        let mut documented = all_paths();
        serialized.sort();
        documented.sort();
        assert_eq!(
            serialized, documented,
            "every field is declared with its documentation"
        );
        for path in all_paths() {
            let default = Config::default();
            assert_ne!(
                toml::Value::try_from(&default).unwrap()[path.split_once('.').unwrap().0]
                    .get(path.split_once('.').unwrap().1),
                value[path.split_once('.').unwrap().0].get(path.split_once('.').unwrap().1),
                "every_setting_changed changes {path}"
            );
        }
        assert_eq!(Config::from_toml(&c.to_commented_toml(&[])).unwrap(), c);
        let shown = c.to_commented_toml(&["cluster.token"]);
        assert!(!shown.contains(TOKEN), "a hidden setting is not shown");
        assert!(shown.contains("# token is set (not shown)"));
    }

    #[test]
    fn every_setting_has_its_flag_and_environment_variable() {
        let mut flagged: Vec<String> = FLAGS.iter().map(|f| f.path.to_string()).collect();
        let mut documented = all_paths();
        flagged.sort();
        documented.sort();
        assert_eq!(flagged, documented);
        for f in FLAGS {
            assert_eq!(
                f.env,
                format!("STACKD_{}", f.arg.to_uppercase()),
                "{}",
                f.arg
            );
        }
        let cmd = document_flags(ServeArgs::augment_args(clap::Command::new("serve")));
        for f in FLAGS {
            let arg = cmd.get_arguments().find(|a| a.get_id() == f.arg).unwrap();
            assert_eq!(arg.get_long(), Some(&f.long()[2..]));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(f.env));
            let help = arg.get_help().unwrap().to_string();
            assert!(help.contains(f.path), "{}: {help}", f.arg);
            assert_eq!(
                arg.is_hide_env_values_set(),
                f.arg == "join_token",
                "{}",
                f.arg
            );
        }
    }

    #[test]
    fn every_setting_documents_its_default() {
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        for section in SECTIONS {
            for field in section.fields {
                let doc = paragraphs(field.doc).join(" ");
                let expected = match defaults[section.name].get(field.name) {
                    Some(v) => format!("Default: {v}"),
                    None if field.name == "data_dir" => "Required; there is no default".into(),
                    None => "Default: none".into(),
                };
                assert!(
                    doc.contains(&expected),
                    "{}.{}: the doc should say {expected:?}: {doc}",
                    section.name,
                    field.name
                );
            }
        }
    }

    /// Each case: a setting (TOML, over a config with a data dir) and the setting the
    /// error must name.
    const BAD: &[(&str, &str)] = &[
        ("", "storage.data_dir"),
        ("storage.block_cache_mb = 7", "storage.block_cache_mb"),
        ("storage.memtable_mb = 65537", "storage.memtable_mb"),
        ("api.advertise_addr = \"api.example\"", "api.advertise_addr"),
        ("api.request_timeout_ms = 99", "api.request_timeout_ms"),
        ("api.request_timeout_ms = 600001", "api.request_timeout_ms"),
        ("api.max_inflight_requests = 0", "api.max_inflight_requests"),
        ("gateway.threads = 65", "gateway.threads"),
        ("resp.threads = 65", "resp.threads"),
        (
            "api.tls_cert = \"c.pem\"\napi.tls_key = \"k.pem\"\napi.tls_from_cluster_ca = true",
            "api.tls_from_cluster_ca",
        ),
        ("api.max_inflight_requests = 1000001", "api.max_inflight_requests"),
        ("cluster.advertise_addr = \"10.0.0.1\"", "cluster.advertise_addr"),
        ("cluster.advertise_addr = \":7101\"", "cluster.advertise_addr"),
        ("cluster.join = \"10.0.0.1:7101\"", "cluster.token"),
        (
            "cluster.join = \"10.0.0.1\"\ncluster.token = \"stk1.abababababababababababababababababababababababababababababababab.cd\"",
            "cluster.join",
        ),
        ("cluster.token = \"secret\"", "cluster.token"),
        ("cluster.addr = \"127.0.0.1:65535\"", "gossip.addr"),
        ("raft.heartbeat_interval_ms = 9", "raft.heartbeat_interval_ms"),
        (
            "raft.snapshot_every_log_bytes = 1000",
            "raft.snapshot_every_log_bytes",
        ),
        (
            "raft.heartbeat_interval_ms = 10001\nraft.election_timeout_ms = 60000",
            "raft.heartbeat_interval_ms",
        ),
        ("raft.election_timeout_ms = 200", "raft.election_timeout_ms"),
        ("raft.election_timeout_ms = 60001", "raft.election_timeout_ms"),
        ("raft.snapshot_every_entries = 99", "raft.snapshot_every_entries"),
        ("raft.target_voters = 4", "raft.target_voters"),
        ("autopilot.dead_grace_ms = 999", "autopilot.dead_grace_ms"),
        ("limits.max_value_bytes = 0", "limits.max_value_bytes"),
        (
            "limits.max_value_bytes = 33554433\ncache.max_bytes = 40000000\nws.send_buffer_bytes = 40000000",
            "limits.max_value_bytes",
        ),
        ("limits.kv_history_revisions = 0", "limits.kv_history_revisions"),
        ("cache.max_entries = 0", "cache.max_entries"),
        ("cache.max_bytes = 1049087", "cache.max_bytes"),
        ("channels.retention = \"chat/=0:1000\"", "channels.retention"),
        ("channels.retention = \"=5:2592000001\"", "channels.retention"),
        ("channels.presence_lease_ms = 299", "channels.presence_lease_ms"),
        ("channels.presence_lease_ms = 600001", "channels.presence_lease_ms"),
        ("ws.send_buffer_bytes = 1052671", "ws.send_buffer_bytes"),
        ("ws.catch_up_events_per_sec = 0", "ws.catch_up_events_per_sec"),
        ("ws.max_connections = 0", "ws.max_connections"),
    ];

    /// The edges of the documented ranges, each accepted.
    const GOOD: &[&str] = &[
        "storage.block_cache_mb = 8\nstorage.memtable_mb = 16",
        "storage.block_cache_mb = 1048576\nstorage.memtable_mb = 65536",
        "api.advertise_addr = \"api.example:80\"",
        "api.request_timeout_ms = 100",
        "api.request_timeout_ms = 600000",
        "api.max_inflight_requests = 1",
        "api.max_inflight_requests = 1000000",
        "cluster.addr = \"127.0.0.1:65535\"\ngossip.addr = \"127.0.0.1:7000\"",
        "raft.heartbeat_interval_ms = 10\nraft.election_timeout_ms = 21",
        "raft.heartbeat_interval_ms = 10000\nraft.election_timeout_ms = 60000",
        "raft.snapshot_every_entries = 100",
        "raft.target_voters = 5",
        "autopilot.dead_grace_ms = 1000",
        "limits.max_value_bytes = 1",
        "limits.max_value_bytes = 33554432\ncache.max_bytes = 33554944\nws.send_buffer_bytes = 33558528",
        "limits.kv_history_revisions = 1",
        "cache.max_entries = 1",
        "cache.max_bytes = 1049088",
        "channels.retention = \"a=1:1,b=1000000:2592000000\"",
        "channels.presence_lease_ms = 300",
        "channels.presence_lease_ms = 600000",
        "ws.send_buffer_bytes = 1052672",
        "ws.catch_up_events_per_sec = 1",
        "ws.max_connections = 1",
    ];

    fn with_data_dir(toml: &str) -> Config {
        let mut c = Config::from_toml(toml).unwrap_or_else(|e| panic!("{toml}: {e:#}"));
        c.storage.data_dir.get_or_insert_with(|| "/x".into());
        c
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_setting_flag_and_range() {
        for (toml, path) in BAD {
            let mut c = Config::from_toml(toml).unwrap();
            if *path != "storage.data_dir" {
                c.storage.data_dir = Some("/x".into());
            }
            let err = c.validate().expect_err(toml).to_string();
            let flag = FLAGS.iter().find(|f| f.path == *path).unwrap();
            for name in [path, flag.long().as_str(), flag.env] {
                assert!(err.contains(name), "{toml:?}: {err:?} should name {name}");
            }
            assert_eq!(
                err.lines().count(),
                2,
                "{toml:?}: only {path} is wrong: {err}"
            );
            assert!(err.contains("must") || err.contains("required"), "{err}");
        }
        for toml in GOOD {
            with_data_dir(toml)
                .validate()
                .unwrap_or_else(|e| panic!("{toml:?} is allowed: {e}"));
        }
        Config::default()
            .validate()
            .expect_err("the data dir is required");
    }

    #[test]
    fn a_flag_that_does_not_parse_names_its_setting() {
        let err = ServeArgs {
            data_dir: Some("/x".into()),
            heartbeat_interval_ms: Some("fast".into()),
            api_addr: Some("localhost".into()),
            channel_retention: Some("chat/".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let err = format!("{err:#}");
        for name in [
            "raft.heartbeat_interval_ms (--heartbeat-interval-ms, STACKD_HEARTBEAT_INTERVAL_MS): must be a whole number, not \"fast\"",
            "api.addr (--api-addr, STACKD_API_ADDR): must be IP:PORT, not \"localhost\"",
            "channels.retention (--channel-retention, STACKD_CHANNEL_RETENTION)",
        ] {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_by_name() {
        for (toml, named) in [
            ("[raft]\nheartbeat_ms = 5\n", "`raft.heartbeat_ms`"),
            ("[rafts]\nheartbeat_interval_ms = 5\n", "`rafts`"),
            (
                "api_addr = \"10.0.0.1:7001\"\n",
                "it is `api.addr` in the file",
            ),
            ("raft = 5\n", "`raft` must be a section"),
        ] {
            let err = format!("{:#}", Config::from_toml(toml).unwrap_err());
            assert!(err.contains(named), "{toml:?}: {err}");
        }
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stackd.toml");
        std::fs::write(
            &file,
            "[storage]\ndata_dir = \"/var/lib/stackd\"\n[api]\naddr = \"127.0.0.5:8000\"\n[raft]\ntarget_voters = 5\n",
        )
        .unwrap();
        let c = ServeArgs {
            config: Some(file),
            api_addr: Some("127.0.0.6:9000".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let mut expected = Config::default();
        expected.storage.data_dir = Some("/var/lib/stackd".into());
        expected.api.addr = "127.0.0.6:9000".parse().unwrap();
        expected.raft.target_voters = 5;
        assert_eq!(c, expected);
        assert_eq!(c.advertise_api_addr(), "127.0.0.6:9000");
        assert_eq!(c.gossip_addr().to_string(), "127.0.0.1:7102");
        assert_eq!(c.advertise_gossip_addr(), "127.0.0.1:7102");
    }

    #[test]
    fn channel_retention_takes_the_longest_matching_prefix() {
        let r: Retention = "chat/=5:1000, chat/vip/=50:2000,=7:3000".parse().unwrap();
        let r = |ch: &str| {
            let r = r.for_channel(ch);
            (r.max_events, r.max_age_ms)
        };
        assert_eq!(r("chat/vip/1"), (50, 2000));
        assert_eq!(r("chat/1"), (5, 1000));
        assert_eq!(r("other"), (7, 3000));
        let only_chat: Retention = "chat/=5:1000".parse().unwrap();
        assert_eq!(
            only_chat.for_channel("x").max_events,
            1000,
            "the default rule stays"
        );
        assert_eq!(only_chat.to_string(), "chat/=5:1000,=1000:86400000");
        assert!("x=10".parse::<Retention>().is_err());
        assert!("x=a:10".parse::<Retention>().is_err());
        assert_eq!("".parse::<Retention>().unwrap(), Retention::default());
    }

    #[test]
    fn the_gossip_address_follows_the_cluster_address() {
        assert_eq!(
            derived_gossip_addr("10.0.0.1:7101").as_deref(),
            Some("10.0.0.1:7102")
        );
        assert_eq!(
            derived_gossip_addr("node-a.internal:7101").as_deref(),
            Some("node-a.internal:7102")
        );
        assert_eq!(derived_gossip_addr("10.0.0.1:65535"), None);
        assert_eq!(derived_gossip_addr("nope"), None);
        let c = with_data_dir(
            "cluster.addr = \"0.0.0.0:9000\"\ncluster.advertise_addr = \"10.1.2.3:9000\"\ngossip.addr = \"0.0.0.0:9500\"",
        );
        c.validate().unwrap();
        assert_eq!(c.gossip_addr().to_string(), "0.0.0.0:9500");
        assert_eq!(c.advertise_gossip_addr(), "10.1.2.3:9500");
    }
}
