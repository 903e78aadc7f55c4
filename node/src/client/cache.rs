//! `stackd cache …`: read and write the cache, invalidate by tag, show stats.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::{check, client, key_path, send_json, value_or_stdin, Target};

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// Print a cached value (raw bytes); exits 1 on a miss.
    Get {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Store a value (from the argument or stdin).
    Set {
        key: String,
        value: Option<String>,
        /// Expire the entry after this many milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Comma-separated tags, for invalidation.
        #[arg(long)]
        tags: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove one entry.
    Del {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove every entry carrying any of the tags.
    Invalidate {
        #[arg(required = true)]
        tags: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Entries, bytes and evictions (the same on every node); hits and misses of this node.
    Stats {
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(cmd: CacheCmd) -> anyhow::Result<()> {
    let http = client();
    let path = |k: &str| format!("/v1/cache/{}", key_path(k));
    let v = match cmd {
        CacheCmd::Get { key, target } => {
            let resp = check(
                http.get(target.url(&path(&key)))
                    .send()
                    .await
                    .context("request failed")?,
            )
            .await?;
            std::io::stdout().write_all(&resp.bytes().await?)?;
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!();
            }
            return Ok(());
        }
        CacheCmd::Set {
            key,
            value,
            ttl_ms,
            tags,
            target,
        } => {
            let mut q = Vec::new();
            if let Some(t) = ttl_ms {
                q.push(format!("ttl_ms={t}"));
            }
            if let Some(t) = tags {
                q.push(format!("tags={}", key_path(&t)));
            }
            let mut url = target.url(&path(&key));
            if !q.is_empty() {
                url = format!("{url}?{}", q.join("&"));
            }
            send_json(http.put(url).body(value_or_stdin(value)?)).await?
        }
        CacheCmd::Del { key, target } => send_json(http.delete(target.url(&path(&key)))).await?,
        CacheCmd::Invalidate { tags, target } => {
            send_json(
                http.post(target.url("/v1/cache/invalidate"))
                    .json(&json!({ "tags": tags })),
            )
            .await?
        }
        CacheCmd::Stats { target } => send_json(http.get(target.url("/v1/cache/stats"))).await?,
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
