//! Single `stackd` processes started outside a [`crate::process::ProcCluster`]: a node that
//! joins an existing cluster later, or the first node of a cluster restored from a backup.
//! Each is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use node::api::client::Client;

use crate::http::{self, wait_for};
use crate::process::stackd_bin;

pub struct Standalone {
    child: Child,
    pub base: String,
    pub cluster_addr: String,
    pub log: PathBuf,
}

impl Standalone {
    /// Starts `stackd serve` on `ip` (free ports) with `data_dir`, joining `join` =
    /// (cluster address, token) when given; `extra` are more arguments.
    pub fn spawn(
        ip: &str,
        data_dir: &Path,
        join: Option<(&str, &str)>,
        extra: &[&str],
    ) -> Result<Self> {
        let (api, _) = crate::free_addrs(ip);
        let cluster = crate::free_cluster_addr(ip);
        let log = data_dir.with_extension("log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(stackd_bin());
        cmd.arg("serve")
            .arg("--insecure-no-auth")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--api-addr")
            .arg(api.to_string())
            .arg("--cluster-addr")
            .arg(cluster.to_string())
            .args(extra)
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .env("STACKD_LOG", "info,openraft=warn");
        if let Some((addr, token)) = join {
            cmd.arg("--join").arg(addr).arg("--token").arg(token);
        }
        Ok(Self {
            child: cmd.spawn().context("spawning stackd")?,
            base: format!("http://{api}"),
            cluster_addr: cluster.to_string(),
            log,
        })
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let api = http::api(&self.base);
        wait_for("the node to be ready", timeout, || async {
            api.ready().await.ok().map(drop)
        })
        .await
        .with_context(|| self.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every live key of `api`'s node as (key, value, revision), in key order, read page by page
/// from the node's local state (`consistency=stale`, so a learner answers too).
pub async fn all_kv(api: &Client) -> Result<Vec<(String, Vec<u8>, u64)>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    crate::checker::convergence::list_all(api)
        .await?
        .into_iter()
        .map(|(key, value, revision)| Ok((key, b64.decode(value)?, revision)))
        .collect()
}

/// The key-value digest of `api`'s node (see `node::backup::kv_digest`).
pub async fn kv_digest(api: &Client) -> Result<(String, usize)> {
    let all = all_kv(api).await?;
    Ok((
        node::backup::kv_digest(all.iter().map(|(k, v, r)| (k.as_str(), v.as_slice(), *r))),
        all.len(),
    ))
}
