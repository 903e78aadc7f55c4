//! `stackd cache …`: read and write the cache, invalidate by tag, show stats.

use clap::Subcommand;

use super::{print_json, print_raw, value_or_stdin, Target};
use crate::api::client::CacheWrite;

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
    match cmd {
        CacheCmd::Get { key, target } => print_raw(&target.client()?.cache_get(&key).await?.value),
        CacheCmd::Set {
            key,
            value,
            ttl_ms,
            tags,
            target,
        } => {
            let w = CacheWrite {
                ttl_ms,
                tags: tags.map(|t| vec![t]).unwrap_or_default(),
                fence: None,
            };
            let body = value_or_stdin(value)?;
            print_json(&target.client()?.cache_set(&key, body, &w).await?)
        }
        CacheCmd::Del { key, target } => print_json(&target.client()?.cache_delete(&key).await?),
        CacheCmd::Invalidate { tags, target } => {
            print_json(&target.client()?.cache_invalidate(tags).await?)
        }
        CacheCmd::Stats { target } => print_json(&target.client()?.cache_stats(false).await?),
    }
}
