//! `stackd lock …`: acquire, renew, release and inspect locks, or hold one while a command runs.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::{client, key_path, send_json, LeaseArgs, RenewArgs, Target};

#[derive(Subcommand, Debug)]
pub enum LockCmd {
    /// Acquire a lock; prints its fence (use it with --fence LOCK:F on writes, renew, release).
    Acquire {
        name: String,
        /// Who holds the lock (shown to others while held).
        #[arg(long)]
        owner: String,
        /// Lease length; the lock is released when it is not renewed in time.
        #[arg(long, default_value_t = 10_000)]
        ttl_ms: u64,
        /// Wait up to this long for the lock if it is held (waiters are served in order).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[command(flatten)]
        target: Target,
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
    http: &reqwest::Client,
    target: &Target,
    name: &str,
    owner: &str,
    ttl_ms: u64,
    wait_ms: u64,
) -> anyhow::Result<u64> {
    let v = send_json(
        http.post(target.url(&format!("/v1/locks/{}/acquire", key_path(name))))
            .json(&json!({ "owner": owner, "ttl_ms": ttl_ms, "wait_ms": wait_ms })),
    )
    .await?;
    v["fence"].as_u64().context("no fence in the answer")
}

pub async fn run(cmd: LockCmd) -> anyhow::Result<()> {
    let http = client();
    match cmd {
        LockCmd::Acquire {
            name,
            owner,
            ttl_ms,
            wait_ms,
            target,
        } => {
            let fence = acquire(&http, &target, &name, &owner, ttl_ms, wait_ms).await?;
            println!("{fence}");
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
            send_json(
                http.post(target.url(&format!("/v1/locks/{}/renew", key_path(&name))))
                    .json(&json!({ "fence": fence, "ttl_ms": ttl_ms })),
            )
            .await?;
            println!("renewed {name}:{fence} for {ttl_ms} ms");
        }
        LockCmd::Release(LeaseArgs {
            name,
            fence,
            target,
        }) => {
            send_json(
                http.post(target.url(&format!("/v1/locks/{}/release", key_path(&name))))
                    .json(&json!({ "fence": fence })),
            )
            .await?;
            println!("released {name}:{fence}");
        }
        LockCmd::Get { name, target } => {
            let v: Value =
                send_json(http.get(target.url(&format!("/v1/locks/{}", key_path(&name))))).await?;
            println!(
                "holder {}  fence {}  expires in {} ms  waiters {}",
                v["holder"].as_str().unwrap_or("?"),
                v["fence"],
                v["expires_in_ms"],
                v["waiters"]
            );
        }
        LockCmd::Run {
            name,
            owner,
            ttl_ms,
            wait_ms,
            target,
            command,
        } => return hold_while(&http, &target, &name, &owner, ttl_ms, wait_ms, &command).await,
    }
    Ok(())
}

async fn hold_while(
    http: &reqwest::Client,
    target: &Target,
    name: &str,
    owner: &str,
    ttl_ms: u64,
    wait_ms: u64,
    command: &[String],
) -> anyhow::Result<()> {
    let fence = acquire(http, target, name, owner, ttl_ms, wait_ms).await?;
    eprintln!("stackd: holding {name} with fence {fence}");
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("STACKD_LOCK", name)
        .env("STACKD_FENCE", fence.to_string())
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]))?;
    let renew_url = target.url(&format!("/v1/locks/{}/renew", key_path(name)));
    let mut every = tokio::time::interval(Duration::from_millis((ttl_ms / 3).max(1)));
    every.tick().await;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = every.tick() => {
                let r = send_json(
                    http.post(&renew_url).json(&json!({ "fence": fence, "ttl_ms": ttl_ms })),
                )
                .await;
                if let Err(e) = r {
                    let _ = child.kill().await;
                    bail!("lost the lock ({e}); the command was stopped");
                }
            }
        }
    };
    let release = http
        .post(target.url(&format!("/v1/locks/{}/release", key_path(name))))
        .json(&json!({ "fence": fence }));
    if let Err(e) = send_json(release).await {
        eprintln!("stackd: release failed ({e}); the lease ends by itself after {ttl_ms} ms");
    }
    if !status.success() {
        bail!("command exited with {status}");
    }
    Ok(())
}
