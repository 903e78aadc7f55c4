//! The command-line client (`stackd kv`, `lock`, `semaphore`, `session`, `cache`, `queue`, `worker`, `txn`,
//! `cluster`, `backup`, `token`) against any node's API, and `stackd restore`.
//!
//! # Layout
//! - this file: shared plumbing, `kv`, `cluster` (status and operations) and `token`;
//! - [`lock`], [`semaphore`], [`session`], [`cache`], [`queue`] (and the worker), [`txn`]: the
//!   other primitives;
//! - [`backup`]: `stackd backup` and `stackd restore`.

pub mod backup;
pub mod cache;
pub mod lock;
pub mod queue;
pub mod semaphore;
pub mod session;
pub mod txn;

use std::io::Write;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::Value;

/// A lease of a lock or a semaphore: its NAME and FENCE, and the node to ask.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    pub name: String,
    #[arg(long)]
    pub fence: u64,
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
}

impl Target {
    pub(crate) fn url(&self, path: &str) -> String {
        let base = if self.addr.starts_with("http://") || self.addr.starts_with("https://") {
            self.addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", self.addr)
        };
        format!("{base}{path}")
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
            let v = send_json(
                client()
                    .post(target.url("/v1/cluster/tokens"))
                    .json(&serde_json::json!({ "ttl_ms": ttl })),
            )
            .await?;
            if json {
                println!("{v}");
            } else {
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!(
                    "stackd token: id {} (revoke it with `stackd token revoke {}`)",
                    v["id"].as_str().unwrap_or_default(),
                    v["id"].as_str().unwrap_or_default()
                );
            }
        }
        TokenCmd::List { json, target } => {
            let v = send_json(client().get(target.url("/v1/cluster/tokens"))).await?;
            if json {
                println!("{v}");
                return Ok(());
            }
            println!("{:<18} {:<9} EXPIRES (UTC)", "ID", "STATE");
            for t in v["tokens"].as_array().into_iter().flatten() {
                let state = if t["founding"] == true {
                    "founding"
                } else if t["expired"] == true {
                    "expired"
                } else {
                    "valid"
                };
                let expires = t["expires_at_ms"]
                    .as_u64()
                    .map_or("never".to_string(), |e| {
                        chrono::DateTime::from_timestamp_millis(e as i64)
                            .map_or(e.to_string(), |t| {
                                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            })
                    });
                println!(
                    "{:<18} {:<9} {}",
                    t["id"].as_str().unwrap_or_default(),
                    state,
                    expires
                );
            }
            for t in v["revoked"].as_array().into_iter().flatten() {
                println!(
                    "{:<18} {:<9} -",
                    t["id"].as_str().unwrap_or_default(),
                    "revoked"
                );
            }
        }
        TokenCmd::Revoke { id, target } => {
            send_json(
                client().delete(target.url(&format!("/v1/cluster/tokens/{}", key_path(&id)))),
            )
            .await?;
            println!("revoked join token {id}");
        }
    }
    Ok(())
}

pub(crate) fn key_path(key: &str) -> String {
    form_urlencoded::byte_serialize(key.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
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

/// Sends a request and returns the JSON of a successful answer.
pub(crate) async fn send_json(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let resp = check(req.send().await.context("request failed")?).await?;
    Ok(resp.json().await?)
}

/// Turns an error answer of the API into a readable error.
pub(crate) async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let msg = body["error"]["message"].as_str().unwrap_or("");
    let extra: Vec<String> = body["error"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "code" && *k != "message")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if extra.is_empty() {
        bail!("{status} {code}: {msg}")
    }
    bail!("{status} {code}: {msg} ({})", extra.join(", "))
}

pub async fn kv(cmd: KvCmd) -> anyhow::Result<()> {
    let http = client();
    match cmd {
        KvCmd::Get { key, stale, target } => {
            let mut url = target.url(&format!("/v1/kv/{}", key_path(&key)));
            if stale {
                url.push_str("?consistency=stale");
            }
            let resp = check(http.get(url).send().await.context("request failed")?).await?;
            let bytes = resp.bytes().await?;
            std::io::stdout().write_all(&bytes)?;
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!();
            }
        }
        KvCmd::Put {
            key,
            value,
            if_revision,
            ttl_ms,
            fence,
            target,
        } => {
            let body = value_or_stdin(value)?;
            let mut q = Vec::new();
            if let Some(r) = if_revision {
                q.push(format!("if_revision={r}"));
            }
            if let Some(t) = ttl_ms {
                q.push(format!("ttl_ms={t}"));
            }
            if let Some(f) = fence {
                q.push(format!("fence={}", key_path(&f)));
            }
            let mut url = target.url(&format!("/v1/kv/{}", key_path(&key)));
            if !q.is_empty() {
                url = format!("{url}?{}", q.join("&"));
            }
            let resp = check(
                http.put(url)
                    .body(body)
                    .send()
                    .await
                    .context("request failed")?,
            )
            .await?;
            let v: Value = resp.json().await?;
            println!("revision {}", v["revision"]);
        }
        KvCmd::Del {
            key,
            if_revision,
            fence,
            target,
        } => {
            let mut q = Vec::new();
            if let Some(r) = if_revision {
                q.push(format!("if_revision={r}"));
            }
            if let Some(f) = fence {
                q.push(format!("fence={}", key_path(&f)));
            }
            let mut url = target.url(&format!("/v1/kv/{}", key_path(&key)));
            if !q.is_empty() {
                url = format!("{url}?{}", q.join("&"));
            }
            let resp = check(http.delete(url).send().await.context("request failed")?).await?;
            let v: Value = resp.json().await?;
            println!("deleted {} (revision {})", v["deleted"], v["revision"]);
        }
        KvCmd::Ls {
            prefix,
            limit,
            target,
        } => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut after: Option<String> = None;
            let mut printed = 0u64;
            while printed < limit {
                let page = (limit - printed).min(1000);
                let mut url =
                    target.url(&format!("/v1/kv?prefix={}&limit={page}", key_path(&prefix)));
                if let Some(a) = &after {
                    url.push_str(&format!("&after={}", key_path(a)));
                }
                let resp = check(http.get(url).send().await.context("request failed")?).await?;
                let v: Value = resp.json().await?;
                for item in v["items"].as_array().into_iter().flatten() {
                    let value = b64
                        .decode(item["value"].as_str().unwrap_or(""))
                        .unwrap_or_default();
                    println!(
                        "{}\t{}\t{}",
                        item["key"].as_str().unwrap_or(""),
                        item["revision"],
                        String::from_utf8_lossy(&value)
                    );
                    printed += 1;
                }
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

pub async fn cluster(cmd: ClusterCmd) -> anyhow::Result<()> {
    let http = client();
    let op = |target: &Target, path: &str, body: serde_json::Value| {
        http.post(target.url(path)).json(&body)
    };
    match cmd {
        ClusterCmd::Remove { id, target } => {
            let path = format!("/v1/cluster/members/{id}/remove");
            send_json(op(&target, &path, serde_json::json!({}))).await?;
            println!("removed node {id}");
        }
        ClusterCmd::Promote { id, target } => {
            let path = format!("/v1/cluster/members/{id}/promote");
            send_json(op(&target, &path, serde_json::json!({}))).await?;
            println!("node {id} is a voter");
        }
        ClusterCmd::TransferLeader { to, target } => {
            let body = serde_json::json!({ "to": to });
            let v = send_json(op(&target, "/v1/cluster/leader/transfer", body)).await?;
            println!("leader is node {}", v["leader_id"]);
        }
        ClusterCmd::Snapshot { target } => {
            let v = send_json(op(&target, "/v1/cluster/snapshot", serde_json::json!({}))).await?;
            println!("snapshot at index {}", v["snapshot_index"]);
        }
        ClusterCmd::Status { json, target } => {
            let resp = check(
                http.get(target.url("/v1/cluster"))
                    .send()
                    .await
                    .context("request failed")?,
            )
            .await?;
            let v: Value = resp.json().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "cluster {}  leader {}  term {}  commit {}",
                v["cluster_id"].as_str().unwrap_or("?"),
                v["leader_id"],
                v["term"],
                v["commit_index"]
            );
            println!(
                "{:<4} {:<8} {:<8} {:<22} {:<22} applied",
                "id", "role", "health", "api", "cluster"
            );
            for m in v["members"].as_array().into_iter().flatten() {
                let num = |x: &Value| {
                    x.as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "{:<4} {:<8} {:<8} {:<22} {:<22} {}",
                    num(&m["id"]),
                    m["role"].as_str().unwrap_or(""),
                    m["gossip"].as_str().unwrap_or(""),
                    m["api_addr"].as_str().unwrap_or(""),
                    m["cluster_addr"].as_str().unwrap_or(""),
                    num(&m["applied_index"])
                );
            }
        }
    }
    Ok(())
}
