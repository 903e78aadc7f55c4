//! `stackd lock …`: acquire, renew, release and inspect locks, or hold one while a command runs.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::{AcquireArgs, LeaseArgs, RenewArgs, Target};
use crate::api::client::Client;
use crate::api::model::AcquireRequest;

#[derive(Subcommand, Debug)]
pub enum LockCmd {
    /// Acquire a lock; prints its fence (use it with --fence LOCK:F on writes, renew, release).
    Acquire {
        name: String,
        /// Who holds the lock (shown to others while held).
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        lease: AcquireArgs,
    },
    /// Extend the lease of the holder with FENCE.
    Renew(RenewArgs),
    /// Release the lock held with FENCE.
    Release(LeaseArgs),
    /// Show who holds a lock, its fence and how long the lease has left.
    Get {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Hold the lock while COMMAND runs: acquire (waiting up to --wait-ms), renew every third
    /// of the TTL, release when it exits. The command sees STACKD_LOCK and STACKD_FENCE; if a
    /// renewal fails the command is killed and the exit status is 1.
    Run {
        name: String,
        #[arg(long)]
        owner: String,
        #[arg(long, default_value_t = 10_000)]
        ttl_ms: u64,
        #[arg(long, default_value_t = 60_000)]
        wait_ms: u64,
        #[command(flatten)]
        target: Target,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

async fn acquire(
    client: &Client,
    name: &str,
    owner: &str,
    ttl_ms: u64,
    wait_ms: u64,
) -> anyhow::Result<u64> {
    let req = AcquireRequest {
        owner: owner.to_string(),
        ttl_ms,
        wait_ms,
    };
    Ok(client.lock_acquire(name, &req).await?.fence)
}

pub async fn run(cmd: LockCmd) -> anyhow::Result<()> {
    match cmd {
        LockCmd::Acquire {
            name,
            owner,
            lease:
                AcquireArgs {
                    ttl_ms,
                    wait_ms,
                    target,
                },
        } => {
            let fence = acquire(&target.client()?, &name, &owner, ttl_ms, wait_ms).await?;
            outln!("{fence}");
        }
        LockCmd::Renew(RenewArgs {
            lease:
                LeaseArgs {
                    name,
                    fence,
                    target,
                },
            ttl_ms,
        }) => {
            target.client()?.lock_renew(&name, fence, ttl_ms).await?;
            outln!("renewed {name}:{fence} for {ttl_ms} ms");
        }
        LockCmd::Release(LeaseArgs {
            name,
            fence,
            target,
        }) => {
            target.client()?.lock_release(&name, fence).await?;
            outln!("released {name}:{fence}");
        }
        LockCmd::Get { name, target } => {
            let l = target.client()?.lock_get(&name).await?;
            outln!(
                "holder {}  fence {}  expires in {} ms  waiters {}",
                l.holder,
                l.fence,
                l.expires_in_ms,
                l.waiters
            );
        }
        LockCmd::Run {
            name,
            owner,
            ttl_ms,
            wait_ms,
            target,
            command,
        } => {
            let client = target.client()?;
            return hold_while(&client, &name, &owner, ttl_ms, wait_ms, &command).await;
        }
    }
    Ok(())
}

async fn hold_while(
    client: &Client,
    name: &str,
    owner: &str,
    ttl_ms: u64,
    wait_ms: u64,
    command: &[String],
) -> anyhow::Result<()> {
    let fence = acquire(client, name, owner, ttl_ms, wait_ms).await?;
    eprintln!("stackd: holding {name} with fence {fence}");
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("STACKD_LOCK", name)
        .env("STACKD_FENCE", fence.to_string())
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]))?;
    let mut every = tokio::time::interval(Duration::from_millis((ttl_ms / 3).max(1)));
    every.tick().await;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = every.tick() => {
                if let Err(e) = client.lock_renew(name, fence, ttl_ms).await {
                    let _ = child.kill().await;
                    bail!("lost the lock ({e}); the command was stopped");
                }
            }
        }
    };
    if let Err(e) = client.lock_release(name, fence).await {
        eprintln!("stackd: release failed ({e}); the lease ends by itself after {ttl_ms} ms");
    }
    if !status.success() {
        bail!("command exited with {status}");
    }
    Ok(())
}
