//! Node configuration: one struct, from flags, `STACKD_*` environment variables or a TOML file
//! (in that order of precedence), validated at boot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

/// Settings of `stackd serve`. Every field can be given as a flag, as the environment
/// variable named after it, or in the `--config` TOML file under the same name (snake_case).
#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings; flags and environment variables override it.
    #[arg(long, env = "STACKD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Directory for the node's RocksDB, TLS credentials and snapshots. An empty directory
    /// starts a new node; an existing one restarts the member it holds.
    #[arg(long, env = "STACKD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// HTTP API listen address (apps, CLI, metrics) [default: 127.0.0.1:7001].
    #[arg(long, env = "STACKD_API_ADDR")]
    pub api_addr: Option<String>,

    /// QUIC cluster listen address (Raft, forwarded writes, snapshots) [default: 127.0.0.1:7101].
    #[arg(long, env = "STACKD_CLUSTER_ADDR")]
    pub cluster_addr: Option<String>,

    /// Address other nodes and clients use to reach this node's API, if it differs from
    /// --api-addr (e.g. when listening on 0.0.0.0).
    #[arg(long, env = "STACKD_ADVERTISE_API_ADDR")]
    pub advertise_api_addr: Option<String>,

    /// Address other nodes use to reach this node's cluster port, if it differs from
    /// --cluster-addr.
    #[arg(long, env = "STACKD_ADVERTISE_CLUSTER_ADDR")]
    pub advertise_cluster_addr: Option<String>,

    /// Cluster address (HOST:PORT) of any current member, to join its cluster. Only used when
    /// the data directory is empty. The node makes its own key and receives a certificate
    /// naming its new id, signed by the cluster CA (kept under `tls/` in the data dir).
    #[arg(long, env = "STACKD_JOIN")]
    pub join: Option<String>,

    /// Join token `stk1.<CA fingerprint>.<secret>`: printed by the first node (also in its data
    /// dir as `join-token`; it does not expire), or made by `stackd token create [--ttl 24h]`.
    /// If the join is refused the node exits saying why: "invalid join token" (wrong secret),
    /// "join token expired" (create another), "not signed by the cluster CA named in the join
    /// token" (--join points at another cluster).
    #[arg(long, env = "STACKD_TOKEN")]
    pub token: Option<String>,

    /// Voters the cluster grows to by promoting caught-up learners: 3 or 5 [default: 3].
    #[arg(long, env = "STACKD_TARGET_VOTERS")]
    pub target_voters: Option<usize>,

    /// Raft heartbeat interval in ms [default: 100].
    #[arg(long, env = "STACKD_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,

    /// Minimum election timeout in ms; the maximum is twice this [default: 500].
    #[arg(long, env = "STACKD_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,

    /// Log entries between automatic snapshots [default: 10000].
    #[arg(long, env = "STACKD_SNAPSHOT_EVERY_ENTRIES")]
    pub snapshot_every_entries: Option<u64>,

    /// Largest value accepted, in bytes [default: 1048576].
    #[arg(long, env = "STACKD_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,

    /// How long a write or linearizable read may wait for the cluster before the answer is
    /// 504 (write outcome unknown) or 503, in ms [default: 5000].
    #[arg(long, env = "STACKD_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,

    /// Most entries in the cache; past it the oldest writes are evicted [default: 100000].
    #[arg(long, env = "STACKD_CACHE_MAX_ENTRIES")]
    pub cache_max_entries: Option<u64>,

    /// Most bytes (keys + values) in the cache; past it the oldest writes are evicted
    /// [default: 268435456].
    #[arg(long, env = "STACKD_CACHE_MAX_BYTES")]
    pub cache_max_bytes: Option<u64>,

    /// Most HTTP requests handled at once; further ones get 503 [default: 4096].
    #[arg(long, env = "STACKD_MAX_INFLIGHT_REQUESTS")]
    pub max_inflight_requests: Option<usize>,

    /// Key-value revisions whose history is kept for watches and history reads; the leader
    /// compacts older history [default: 10000].
    #[arg(long, env = "STACKD_KV_HISTORY_REVISIONS")]
    pub kv_history_revisions: Option<u64>,

    // --- gossip and autopilot ---
    /// UDP address for gossip (liveness and metadata) [default: the cluster address's IP
    /// with its port + 1]. Other members reach a node at its advertised cluster IP and
    /// cluster port + 1, so change the port only if that one is taken.
    #[arg(long, env = "STACKD_GOSSIP_ADDR")]
    pub gossip_addr: Option<String>,

    /// Let the leader replace a voter that gossip has seen down for longer than
    /// --autopilot-dead-grace-ms with a caught-up, alive learner (one membership change at
    /// a time, never below quorum) [default: false].
    #[arg(long, env = "STACKD_AUTOPILOT_REPLACE_DEAD", num_args = 0..=1, default_missing_value = "true")]
    pub autopilot_replace_dead: Option<bool>,

    /// How long a voter must have been down in gossip before autopilot replaces it, in ms
    /// [default: 30000].
    #[arg(long, env = "STACKD_AUTOPILOT_DEAD_GRACE_MS")]
    pub autopilot_dead_grace_ms: Option<u64>,

    // --- Channels and WebSocket ---
    /// History retention of channels by name prefix: comma-separated `PREFIX=EVENTS:AGE_MS`
    /// rules; the longest matching prefix wins, and channels no rule matches keep 1000 events
    /// for 24 hours [default: "=1000:86400000"]. Example: `chat/=500:3600000,ticks/=100:60000`.
    #[arg(long, env = "STACKD_CHANNEL_RETENTION")]
    pub channel_retention: Option<String>,

    /// Bytes of messages queued for one WebSocket connection; a client that falls further
    /// behind is disconnected (close code 1008, reason `slow consumer`) and resumes by offset
    /// [default: 4194304].
    #[arg(long, env = "STACKD_WS_SEND_BUFFER_BYTES")]
    pub ws_send_buffer_bytes: Option<usize>,

    /// Events per second one WebSocket connection is sent while catching up from history
    /// [default: 10000].
    #[arg(long, env = "STACKD_WS_CATCH_UP_EVENTS_PER_SEC")]
    pub ws_catch_up_events_per_sec: Option<u64>,

    /// Most WebSocket connections on this node; further upgrades get 503 [default: 10000].
    #[arg(long, env = "STACKD_WS_MAX_CONNECTIONS")]
    pub ws_max_connections: Option<usize>,

    /// Presence lease of a node, in ms: a node renews it every third of this while it has
    /// present clients, and a node that stops (crash, partition) loses its clients' presence
    /// this long after its last renewal [default: 6000].
    #[arg(long, env = "STACKD_PRESENCE_LEASE_MS")]
    pub presence_lease_ms: Option<u64>,
}

/// Retention of the channels whose name starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    pub prefix: String,
    pub max_events: u64,
    pub max_age_ms: u64,
}

/// Most events one channel may keep, and the longest age: 30 days.
pub const CHANNEL_MAX_EVENTS_MAX: u64 = 1_000_000;
pub const CHANNEL_MAX_AGE_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;

/// Parses `PREFIX=EVENTS:AGE_MS,...`; an empty prefix sets the default.
pub fn parse_retention(spec: &str) -> anyhow::Result<Vec<RetentionRule>> {
    let mut rules = vec![RetentionRule {
        prefix: String::new(),
        max_events: 1000,
        max_age_ms: 24 * 60 * 60 * 1000,
    }];
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad =
            || anyhow::anyhow!("--channel-retention rule {part:?} is not PREFIX=EVENTS:AGE_MS");
        let (prefix, bounds) = part.rsplit_once('=').ok_or_else(bad)?;
        let (events, age) = bounds.split_once(':').ok_or_else(bad)?;
        let max_events: u64 = events.parse().map_err(|_| bad())?;
        let max_age_ms: u64 = age.parse().map_err(|_| bad())?;
        if !(1..=CHANNEL_MAX_EVENTS_MAX).contains(&max_events)
            || !(1..=CHANNEL_MAX_AGE_MS_MAX).contains(&max_age_ms)
        {
            bail!(
                "--channel-retention rule {part:?}: events must be 1 to {CHANNEL_MAX_EVENTS_MAX}, age 1 to {CHANNEL_MAX_AGE_MS_MAX} ms"
            );
        }
        rules.retain(|r| r.prefix != prefix);
        rules.push(RetentionRule {
            prefix: prefix.to_string(),
            max_events,
            max_age_ms,
        });
    }
    // Longest prefix first, so the first match is the most specific rule.
    rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(rules)
}

/// The validated configuration with every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub cluster_addr: SocketAddr,
    pub advertise_api_addr: String,
    pub advertise_cluster_addr: String,
    pub join: Option<String>,
    pub token: Option<String>,
    pub target_voters: usize,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_every_entries: u64,
    pub max_value_bytes: usize,
    pub request_timeout_ms: u64,
    pub max_inflight_requests: usize,
    pub cache_max_entries: u64,
    pub cache_max_bytes: u64,
    pub kv_history_revisions: u64,
    // --- gossip and autopilot ---
    /// UDP address gossip binds.
    pub gossip_addr: SocketAddr,
    /// Where other members send gossip (`host:port`).
    pub advertise_gossip_addr: String,
    pub autopilot_replace_dead: bool,
    pub autopilot_dead_grace_ms: u64,
    /// Channel retention rules, longest prefix first (the last has the empty prefix).
    pub channel_retention: Vec<RetentionRule>,
    pub ws_send_buffer_bytes: usize,
    pub ws_catch_up_events_per_sec: u64,
    pub ws_max_connections: usize,
    pub presence_lease_ms: u64,
}

/// The gossip address of a member whose cluster address is `cluster_addr` (`host:port`): the
/// same host, port + 1. Every node derives its peers' gossip addresses from the Raft
/// membership this way.
pub fn derived_gossip_addr(cluster_addr: &str) -> Option<String> {
    let (host, port) = cluster_addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{host}:{}", port.checked_add(1)?))
}

impl Config {
    /// The retention a publish on `channel` carries.
    pub fn retention_for(&self, channel: &str) -> raft::command::ChannelRetention {
        let rule = self
            .channel_retention
            .iter()
            .find(|r| channel.starts_with(&r.prefix))
            .expect("the empty prefix matches every channel");
        raft::command::ChannelRetention {
            max_events: rule.max_events,
            max_age_ms: rule.max_age_ms,
        }
    }
}

impl ServeArgs {
    /// Flags/env first, then the config file, then defaults; checks every value.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => ServeArgs::default(),
        };
        macro_rules! pick {
            ($f:ident) => {
                self.$f.clone().or(file.$f.clone())
            };
        }
        let data_dir = pick!(data_dir).context("--data-dir is required")?;
        let api_addr: SocketAddr = pick!(api_addr)
            .unwrap_or_else(|| "127.0.0.1:7001".into())
            .parse()
            .context("--api-addr must be IP:PORT")?;
        let cluster_addr: SocketAddr = pick!(cluster_addr)
            .unwrap_or_else(|| "127.0.0.1:7101".into())
            .parse()
            .context("--cluster-addr must be IP:PORT")?;
        let target_voters = pick!(target_voters).unwrap_or(3);
        if target_voters != 3 && target_voters != 5 {
            bail!("--target-voters must be 3 or 5, not {target_voters}");
        }
        let heartbeat_interval_ms = pick!(heartbeat_interval_ms).unwrap_or(100);
        let election_timeout_ms = pick!(election_timeout_ms).unwrap_or(500);
        if heartbeat_interval_ms == 0 || election_timeout_ms <= heartbeat_interval_ms * 2 {
            bail!("--election-timeout-ms must be more than twice --heartbeat-interval-ms");
        }
        let join = pick!(join);
        let token = pick!(token);
        if join.is_some() && token.is_none() {
            bail!("--join needs --token (printed by the first node, and in its data dir as join-token)");
        }
        let max_value_bytes = pick!(max_value_bytes).unwrap_or(1 << 20);
        if max_value_bytes == 0 || max_value_bytes > 32 << 20 {
            bail!("--max-value-bytes must be between 1 and 33554432");
        }
        let cache_max_entries = pick!(cache_max_entries).unwrap_or(100_000);
        let cache_max_bytes = pick!(cache_max_bytes).unwrap_or(256 << 20);
        if cache_max_entries == 0 {
            bail!("--cache-max-entries must be at least 1");
        }
        if cache_max_bytes < max_value_bytes as u64 + 512 {
            bail!("--cache-max-bytes must hold at least one largest entry (max value bytes + 512)");
        }
        let advertise_cluster_addr =
            pick!(advertise_cluster_addr).unwrap_or_else(|| cluster_addr.to_string());
        let gossip_addr: SocketAddr = match pick!(gossip_addr) {
            Some(a) => a.parse().context("--gossip-addr must be IP:PORT")?,
            None => derived_gossip_addr(&cluster_addr.to_string())
                .and_then(|a| a.parse().ok())
                .context("the cluster port is 65535: give --gossip-addr")?,
        };
        let advertise_gossip_addr = match advertise_cluster_addr.rsplit_once(':') {
            Some((host, _)) => format!("{host}:{}", gossip_addr.port()),
            None => bail!("--advertise-cluster-addr must be HOST:PORT"),
        };
        let autopilot_dead_grace_ms = pick!(autopilot_dead_grace_ms).unwrap_or(30_000);
        if autopilot_dead_grace_ms < 1_000 {
            bail!("--autopilot-dead-grace-ms must be at least 1000 (gossip needs a few seconds to call a node down)");
        }
        Ok(Config {
            data_dir,
            api_addr,
            cluster_addr,
            advertise_api_addr: pick!(advertise_api_addr).unwrap_or_else(|| api_addr.to_string()),
            advertise_cluster_addr,
            join,
            token,
            target_voters,
            heartbeat_interval_ms,
            election_timeout_ms,
            snapshot_every_entries: pick!(snapshot_every_entries).unwrap_or(10_000).max(100),
            max_value_bytes,
            request_timeout_ms: pick!(request_timeout_ms).unwrap_or(5_000).max(100),
            max_inflight_requests: pick!(max_inflight_requests).unwrap_or(4096).max(1),
            cache_max_entries,
            cache_max_bytes,
            channel_retention: parse_retention(&pick!(channel_retention).unwrap_or_default())?,
            ws_send_buffer_bytes: ws_send_buffer_bytes(
                pick!(ws_send_buffer_bytes),
                max_value_bytes,
            )?,
            ws_catch_up_events_per_sec: pick!(ws_catch_up_events_per_sec).unwrap_or(10_000).max(1),
            ws_max_connections: pick!(ws_max_connections).unwrap_or(10_000).max(1),
            presence_lease_ms: pick!(presence_lease_ms)
                .unwrap_or(6_000)
                .clamp(300, 600_000),
            kv_history_revisions: pick!(kv_history_revisions).unwrap_or(10_000).max(1),
            gossip_addr,
            advertise_gossip_addr,
            autopilot_replace_dead: pick!(autopilot_replace_dead).unwrap_or(false),
            autopilot_dead_grace_ms,
        })
    }
}

/// The WebSocket send buffer must hold at least one largest event (value limit + framing).
fn ws_send_buffer_bytes(v: Option<usize>, max_value_bytes: usize) -> anyhow::Result<usize> {
    let v = v.unwrap_or(4 << 20);
    if v < max_value_bytes + 4096 {
        bail!("--ws-send-buffer-bytes must hold one largest event (max value bytes + 4096)");
    }
    Ok(v)
}

fn load_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("stackd-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("stackd.toml");
        std::fs::write(
            &file,
            "data_dir = \"/var/lib/stackd\"\napi_addr = \"127.0.0.5:8000\"\ntarget_voters = 5\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            api_addr: Some("127.0.0.6:9000".into()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/stackd"));
        assert_eq!(
            c.api_addr.to_string(),
            "127.0.0.6:9000",
            "the flag wins over the file"
        );
        assert_eq!(c.advertise_api_addr, "127.0.0.6:9000");
        assert_eq!(c.target_voters, 5);
        assert_eq!(c.cluster_addr.to_string(), "127.0.0.1:7101");
        assert_eq!(c.max_value_bytes, 1 << 20);
        assert_eq!(c.gossip_addr.to_string(), "127.0.0.1:7102");
        assert_eq!(c.advertise_gossip_addr, "127.0.0.1:7102");
        assert!(
            !c.autopilot_replace_dead,
            "autopilot replacement is off by default"
        );
        assert_eq!(c.autopilot_dead_grace_ms, 30_000);

        std::fs::write(&file, "data_dir = \"/x\"\nunknown_setting = 1\n").unwrap();
        let err = ServeArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown_setting"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn channel_retention_takes_the_longest_matching_prefix() {
        let c = ServeArgs {
            data_dir: Some("/x".into()),
            channel_retention: Some("chat/=5:1000, chat/vip/=50:2000,=7:3000".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let r = |ch: &str| {
            let r = c.retention_for(ch);
            (r.max_events, r.max_age_ms)
        };
        assert_eq!(r("chat/vip/1"), (50, 2000));
        assert_eq!(r("chat/1"), (5, 1000));
        assert_eq!(r("other"), (7, 3000));
        assert!(parse_retention("x=0:10").is_err());
        assert!(parse_retention("x=10").is_err());
        assert_eq!(parse_retention("").unwrap()[0].max_events, 1000);
    }

    #[test]
    fn bad_settings_are_refused_at_boot() {
        let base = || ServeArgs {
            data_dir: Some("/x".into()),
            ..Default::default()
        };
        assert!(
            ServeArgs::default().resolve().is_err(),
            "data dir is required"
        );
        assert!(ServeArgs {
            target_voters: Some(4),
            ..base()
        }
        .resolve()
        .is_err());
        assert!(ServeArgs {
            api_addr: Some("nope".into()),
            ..base()
        }
        .resolve()
        .is_err());
        assert!(
            ServeArgs {
                join: Some("127.0.0.1:7101".into()),
                ..base()
            }
            .resolve()
            .is_err(),
            "join needs a token"
        );
        assert!(ServeArgs {
            election_timeout_ms: Some(150),
            ..base()
        }
        .resolve()
        .is_err());
        assert!(ServeArgs {
            autopilot_dead_grace_ms: Some(10),
            ..base()
        }
        .resolve()
        .is_err());
        assert!(base().resolve().is_ok());
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
        let c = ServeArgs {
            data_dir: Some("/x".into()),
            cluster_addr: Some("0.0.0.0:9000".into()),
            advertise_cluster_addr: Some("10.1.2.3:9000".into()),
            gossip_addr: Some("0.0.0.0:9500".into()),
            autopilot_replace_dead: Some(true),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.gossip_addr.to_string(), "0.0.0.0:9500");
        assert_eq!(c.advertise_gossip_addr, "10.1.2.3:9500");
        assert!(c.autopilot_replace_dead);
    }
}
