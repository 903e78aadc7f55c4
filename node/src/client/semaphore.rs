//! `stackd semaphore …`: acquire N of M permits, renew, release and inspect semaphores.

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::{client, key_path, send_json, LeaseArgs, RenewArgs, Target};
use crate::api::semaphores::{Grant, Released, SemaphoreView};

#[derive(Subcommand, Debug)]
pub enum SemaphoreCmd {
    /// Take PERMITS of a semaphore of CAPACITY permits; prints the lease's fence (use it to
    /// renew and release, or in a transaction's compare).
    Acquire {
        name: String,
        /// Who holds the permits (shown to others while held).
        #[arg(long)]
        holder: String,
        /// Permits to take, 1..=capacity.
        #[arg(long, default_value_t = 1)]
        permits: u32,
        /// The semaphore's permits; must match while any are held or waited for.
        #[arg(long)]
        capacity: u32,
        /// Lease length; the permits are freed when it is not renewed in time.
        #[arg(long, default_value_t = 10_000)]
        ttl_ms: u64,
        /// Wait up to this long for the permits (waiters are served in arrival order).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Extend the lease with FENCE.
    Renew(RenewArgs),
    /// Release the permits of the lease with FENCE.
    Release(LeaseArgs),
    /// Show a semaphore's capacity, its leases and how many wait.
    Get {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(cmd: SemaphoreCmd) -> anyhow::Result<()> {
    let http = client();
    let path = |name: &str, op: &str| format!("/v1/semaphores/{}{op}", key_path(name));
    match cmd {
        SemaphoreCmd::Acquire {
            name,
            holder,
            permits,
            capacity,
            ttl_ms,
            wait_ms,
            target,
        } => {
            let body = json!({
                "holder": holder, "permits": permits, "capacity": capacity,
                "ttl_ms": ttl_ms, "wait_ms": wait_ms,
            });
            let v = send_json(http.post(target.url(&path(&name, "/acquire"))).json(&body)).await?;
            let g: Grant = serde_json::from_value(v).context("the acquire's answer")?;
            println!("{}", g.fence);
        }
        SemaphoreCmd::Renew(RenewArgs {
            lease:
                LeaseArgs {
                    name,
                    fence,
                    target,
                },
            ttl_ms,
        }) => {
            let body = json!({ "fence": fence, "ttl_ms": ttl_ms });
            send_json(http.post(target.url(&path(&name, "/renew"))).json(&body)).await?;
            println!("renewed {name}:{fence} for {ttl_ms} ms");
        }
        SemaphoreCmd::Release(LeaseArgs {
            name,
            fence,
            target,
        }) => {
            let body = json!({ "fence": fence });
            let v = send_json(http.post(target.url(&path(&name, "/release"))).json(&body)).await?;
            let r: Released = serde_json::from_value(v).context("the release's answer")?;
            println!("released {name}:{fence} ({} permits)", r.permits);
        }
        SemaphoreCmd::Get { name, target } => {
            let v = send_json(http.get(target.url(&path(&name, "")))).await?;
            let s: SemaphoreView = serde_json::from_value(v).context("the semaphore")?;
            println!(
                "capacity {}  held {}  free {}  waiting {}",
                s.capacity, s.held, s.free, s.waiting
            );
            for l in s.holders {
                println!(
                    "  fence {}  {}  {} permits  expires in {} ms",
                    l.fence, l.holder, l.permits, l.expires_in_ms
                );
            }
        }
    }
    Ok(())
}
