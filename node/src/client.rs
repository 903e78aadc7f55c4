//! The command-line client (`stackd kv`, `lock`, `semaphore`, `session`, `cache`, `queue`, `worker`, `channel`, `txn`,
//! `cluster`, `backup`, `token`, `acl`, `service`, `route`) against any node's API, and
//! `stackd restore`.
//!
//! Each command parses its arguments, calls the typed client ([`crate::api::client`]) and
//! prints the answer.
//!
//! # Layout
//! - this file: the subcommands ([`Command`], flattened into `stackd`'s own), shared
//!   arguments, `kv`, `cluster` (status and operations) and `token`;
//! - [`acl`]: tokens and policies;
//! - [`lock`], [`semaphore`], [`session`], [`cache`], [`queue`] (and the worker), [`channel`],
//!   [`txn`]: the other primitives;
//! - [`service`]: the service registry (`stackd service`) and the gateway's routes
//!   (`stackd route`);
//! - [`backup`]: `stackd backup` and `stackd restore`.

/// `println!` for the CLI's output: a reader that went away (`stackd kv ls | head`) ends the
/// command quietly instead of a panic; another write error ends it with the error.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::client::write_line(format_args!($($arg)*))
    };
}

pub mod acl;
pub mod backup;
pub mod cache;
pub mod channel;
pub mod lock;
pub mod queue;
pub mod semaphore;
pub mod service;
pub mod session;
pub mod txn;

use std::io::Write;

use base64::Engine;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::api::client::{Client, KvListQuery, KvWrite};
use crate::api::model::{ClusterStatus, JoinTokens, MemberRole};

/// The client subcommands of `stackd` (flattened into its command line after `serve` and
/// `config`). Adding a primitive's commands touches this enum, [`run`] and its own file.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Read and write keys on any node.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Locks with leases and fencing tokens; `lock run` holds one while a command runs.
    #[command(subcommand)]
    Lock(lock::LockCmd),
    /// Counting semaphores: N of M permits under fenced leases, waiters served in order.
    #[command(subcommand)]
    Semaphore(semaphore::SemaphoreCmd),
    /// User sessions with a sliding expiry.
    #[command(subcommand)]
    Session(session::SessionCmd),
    /// The replicated cache: TTL, tags, invalidation.
    #[command(subcommand)]
    Cache(cache::CacheCmd),
    /// Job queues: enqueue, claim, ack, dead letters, cron schedules.
    #[command(subcommand)]
    Queue(queue::QueueCmd),
    /// Run a shell command for each job of a queue (payload on stdin; exit 0 acks).
    Worker(queue::WorkerCmd),
    /// Pub/sub channels: list, publish, history, presence, delete an idle one.
    #[command(subcommand)]
    Channel(channel::ChannelCmd),
    /// Apply a transaction (compares, then success or failure writes) given as JSON.
    Txn(txn::TxnCmd),
    /// Inspect and operate the cluster: status, remove, promote, transfer-leader, snapshot.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Stream a consistent, checksummed backup of the cluster's state into a file.
    Backup(backup::BackupCmd),
    /// Load a backup into a new, empty data dir, from which `stackd serve` starts a new
    /// cluster with the same data (keys, revisions, locks, sessions, cache, queues).
    Restore(backup::RestoreCmd),
    /// Join tokens: `token create [--ttl 24h]` prints a new token for `serve --join`;
    /// `token list` and `token revoke ID` show and revoke them.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Access control: tokens (`acl token create --policy P`) and policies (`acl policy set`).
    #[command(subcommand)]
    Acl(acl::AclCmd),
    /// The service registry: register instances with health checks, list healthy ones.
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// The gateway's routes: which requests go to which service, and how.
    #[command(subcommand)]
    Route(service::RouteCmd),
}

/// Runs a client subcommand.
pub async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Kv(cmd) => kv(cmd).await,
        Command::Lock(cmd) => lock::run(cmd).await,
        Command::Semaphore(cmd) => semaphore::run(cmd).await,
        Command::Session(cmd) => session::run(cmd).await,
        Command::Cache(cmd) => cache::run(cmd).await,
        Command::Txn(cmd) => txn::run(cmd).await,
        Command::Queue(cmd) => queue::run(cmd).await,
        Command::Worker(cmd) => queue::worker(cmd).await,
        Command::Channel(cmd) => channel::run(cmd).await,
        Command::Cluster(cmd) => cluster(cmd).await,
        Command::Backup(cmd) => backup::backup(cmd).await,
        Command::Restore(cmd) => backup::restore(cmd),
        Command::Token(cmd) => token(cmd).await,
        Command::Acl(cmd) => acl::run(cmd).await,
        Command::Service(cmd) => service::run(cmd).await,
        Command::Route(cmd) => service::run_route(cmd).await,
    }
}

/// A lease of a lock or a semaphore: its NAME and FENCE, and the node to ask.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    pub name: String,
    #[arg(long)]
    pub fence: u64,
    #[command(flatten)]
    pub target: Target,
}

/// The lease an acquire of a lock or a semaphore asks for: how long it lasts and how long to
/// wait for it, and the node to ask.
#[derive(Args, Debug)]
pub struct AcquireArgs {
    /// Lease length; the lease ends, and what it holds is freed, when it is not renewed in
    /// time.
    #[arg(long, default_value_t = 10_000)]
    pub ttl_ms: u64,
    /// Wait up to this long when the lease cannot be granted at once (waiters are served in
    /// arrival order).
    #[arg(long, default_value_t = 0)]
    pub wait_ms: u64,
    #[command(flatten)]
    pub target: Target,
}

/// A lease to extend, and for how long.
#[derive(Args, Debug)]
pub struct RenewArgs {
    #[command(flatten)]
    pub lease: LeaseArgs,
    #[arg(long, default_value_t = 10_000)]
    pub ttl_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// API address of any node (HOST:PORT or URL).
    #[arg(
        long,
        env = "STACKD_ADDR",
        default_value = "127.0.0.1:7001",
        global = true
    )]
    pub addr: String,
    /// Token secret sent with every request (a management token is printed by the founding
    /// node and kept in its data dir as `bootstrap-token`). Wins over --token-file.
    #[arg(long, env = "STACKD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the token secret (e.g. DATA_DIR/bootstrap-token).
    #[arg(long, env = "STACKD_TOKEN_FILE", value_name = "FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// For an --addr of https://: a CA certificate (PEM) to trust for the node's certificate
    /// (e.g. DATA_DIR/api-ca.pem with api.tls_from_cluster_ca, or the certificate of
    /// api.tls_cert itself when it is self-signed).
    #[arg(long, env = "STACKD_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Target {
    /// The typed client of this node, with the token given, if any.
    pub fn client(&self) -> anyhow::Result<Client> {
        let client = match &self.ca_cert {
            None => Client::new(&self.addr),
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("reading --ca-cert {}: {e}", path.display()))?;
                let ca = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .add_root_certificate(ca)
                    .build()?;
                Client::with_http(&self.addr, http)
            }
        };
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading token file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(match token.filter(|t| !t.is_empty()) {
            Some(t) => client.with_token(t),
            None => client,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Print a key's value (raw bytes) to stdout.
    Get {
        key: String,
        /// Read this node's local state without a round trip to the leader.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Write a key; prints the new revision.
    Put {
        key: String,
        /// The value; read from stdin when omitted.
        value: Option<String>,
        /// Write only if the key's revision is this (0 = only if absent).
        #[arg(long)]
        if_revision: Option<u64>,
        /// Expire the key after this many milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Write only while lock LOCK is held with fence F (`LOCK:F`, from `stackd lock`).
        #[arg(long, value_name = "LOCK:F")]
        fence: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a key.
    Del {
        key: String,
        #[arg(long)]
        if_revision: Option<u64>,
        /// Delete only while lock LOCK is held with fence F.
        #[arg(long, value_name = "LOCK:F")]
        fence: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List keys (and values) by prefix.
    Ls {
        /// Key prefix; all keys when omitted.
        #[arg(default_value = "")]
        prefix: String,
        /// Most keys to print.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Show the cluster's leader, term, and members.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a member (voter or learner) from the cluster.
    Remove {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Make a learner a voter.
    Promote {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Hand leadership to another voter; prints the new leader.
    TransferLeader {
        to: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Take a snapshot on the leader now (the log behind it can then be purged).
    Snapshot {
        #[command(flatten)]
        target: Target,
    },
}

// ---- Join tokens ----

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a join token; prints it (pass it to `stackd serve --join … --token`).
    Create {
        /// How long the token admits nodes: a number with s, m, h or d (e.g. 90m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: u64,
        /// Print the JSON answer (token, id and expiry) instead of the token alone.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List the join tokens by id (the founding one, created ones with their expiry, and
    /// revoked ones). Tokens themselves cannot be shown: the cluster keeps only their SHA-256.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a join token by its id (from `stackd token list`, or printed by `create`); the
    /// founding token can be revoked too. Nodes already joined are not affected.
    Revoke {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `90m`, `24h`, `7d`, `30s` → milliseconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit_ms) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1_000),
        Some((i, 'm')) => (&s[..i], 60_000),
        Some((i, 'h')) => (&s[..i], 3_600_000),
        Some((i, 'd')) => (&s[..i], 86_400_000),
        _ => return Err(format!("{s:?}: give a number with s, m, h or d (e.g. 24h)")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: give a number with s, m, h or d (e.g. 24h)"))?;
    if n == 0 {
        return Err("the TTL must be more than 0".into());
    }
    Ok(n.saturating_mul(unit_ms))
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { ttl, json, target } => {
            let t = target.client()?.create_token(Some(ttl)).await?;
            if json {
                outln!("{}", serde_json::to_value(&t)?);
            } else {
                outln!("{}", t.token);
                eprintln!(
                    "stackd token: id {} (revoke it with `stackd token revoke {}`)",
                    t.id, t.id
                );
            }
        }
        TokenCmd::List { json, target } => {
            let tokens = target.client()?.tokens().await?;
            if json {
                outln!("{}", serde_json::to_value(&tokens)?);
            } else {
                print_tokens(&tokens);
            }
        }
        TokenCmd::Revoke { id, target } => {
            target.client()?.revoke_token(&id).await?;
            outln!("revoked join token {id}");
        }
    }
    Ok(())
}

fn print_tokens(v: &JoinTokens) {
    outln!("{:<18} {:<9} EXPIRES (UTC)", "ID", "STATE");
    for t in &v.tokens {
        let state = if t.founding {
            "founding"
        } else if t.expired {
            "expired"
        } else {
            "valid"
        };
        let expires = t.expires_at_ms.map_or("never".to_string(), |e| {
            chrono::DateTime::from_timestamp_millis(e as i64).map_or(e.to_string(), |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
        });
        outln!("{:<18} {:<9} {}", t.id, state, expires);
    }
    for t in &v.revoked {
        outln!("{:<18} {:<9} -", t.id, "revoked");
    }
}

/// Prints an answer as indented JSON.
pub(crate) fn print_json(answer: &impl Serialize) -> anyhow::Result<()> {
    outln!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(answer)?)?
    );
    Ok(())
}

/// Writes one line to stdout (see `outln!`).
pub(crate) fn write_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("stackd: writing the output: {e}");
        std::process::exit(1);
    }
}

/// Reads a value argument, or stdin when it is absent.
pub(crate) fn value_or_stdin(value: Option<String>) -> anyhow::Result<Vec<u8>> {
    Ok(match value {
        Some(v) => v.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
    })
}

/// Writes a raw value to stdout (a newline after it on a terminal).
pub(crate) fn print_raw(value: &[u8]) -> anyhow::Result<()> {
    std::io::stdout().write_all(value)?;
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        outln!("");
    }
    Ok(())
}

pub async fn kv(cmd: KvCmd) -> anyhow::Result<()> {
    match cmd {
        KvCmd::Get { key, stale, target } => {
            let client = target.client()?;
            let client = if stale { client.stale() } else { client };
            print_raw(&client.kv_get(&key).await?.value)?;
        }
        KvCmd::Put {
            key,
            value,
            if_revision,
            ttl_ms,
            fence,
            target,
        } => {
            let w = KvWrite {
                if_revision,
                ttl_ms,
                fence,
            };
            let body = value_or_stdin(value)?;
            let put = target.client()?.kv_put_with(&key, body, &w).await?;
            outln!("revision {}", put.revision);
        }
        KvCmd::Del {
            key,
            if_revision,
            fence,
            target,
        } => {
            let w = KvWrite {
                if_revision,
                ttl_ms: None,
                fence,
            };
            let d = target.client()?.kv_delete_with(&key, &w).await?;
            outln!("deleted {} (revision {})", d.deleted, d.revision);
        }
        KvCmd::Ls {
            prefix,
            limit,
            target,
        } => kv_ls(&target.client()?, prefix, limit).await?,
    }
    Ok(())
}

/// Prints up to `limit` keys under `prefix`, a page of at most 1000 at a time.
async fn kv_ls(client: &Client, prefix: String, limit: u64) -> anyhow::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut q = KvListQuery {
        prefix: Some(prefix),
        ..KvListQuery::default()
    };
    let mut printed = 0u64;
    while printed < limit {
        q.limit = Some((limit - printed).min(1000));
        let page = client.kv_list(&q).await?;
        for item in &page.items {
            let value = b64.decode(&item.value).unwrap_or_default();
            outln!(
                "{}\t{}\t{}",
                item.key,
                item.revision,
                String::from_utf8_lossy(&value)
            );
            printed += 1;
        }
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    Ok(())
}

/// A number, or `null` as JSON shows a missing one.
fn or_null(n: Option<u64>) -> String {
    n.map_or("null".to_string(), |n| n.to_string())
}

pub async fn cluster(cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Remove { id, target } => {
            target.client()?.remove_member(id).await?;
            outln!("removed node {id}");
        }
        ClusterCmd::Promote { id, target } => {
            target.client()?.promote_member(id).await?;
            outln!("node {id} is a voter");
        }
        ClusterCmd::TransferLeader { to, target } => {
            let l = target.client()?.transfer_leader(to).await?;
            outln!("leader is node {}", l.leader_id);
        }
        ClusterCmd::Snapshot { target } => {
            let s = target.client()?.snapshot().await?;
            outln!("snapshot at index {}", or_null(s.snapshot_index));
        }
        ClusterCmd::Status { json, target } => {
            let status = target.client()?.cluster_status().await?;
            if json {
                print_json(&status)?;
            } else {
                print_status(&status);
            }
        }
    }
    Ok(())
}

fn print_status(v: &ClusterStatus) {
    outln!(
        "cluster {}  leader {}  term {}  commit {}",
        v.cluster_id.as_deref().unwrap_or("?"),
        or_null(v.leader_id),
        v.term,
        v.commit_index
    );
    outln!(
        "{:<4} {:<8} {:<8} {:<22} {:<22} applied",
        "id",
        "role",
        "health",
        "api",
        "cluster"
    );
    for m in &v.members {
        let role = match m.role {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        };
        outln!(
            "{:<4} {:<8} {:<8} {:<22} {:<22} {}",
            m.id,
            role,
            m.gossip,
            m.api_addr,
            m.cluster_addr,
            m.applied_index.map_or("-".to_string(), |n| n.to_string())
        );
    }
}
