//! Clusters of real `stackd` processes on 127.0.0.1, .2, .3 … (or from another first address,
//! so that two test runs on one machine stay apart), for what crosses process boundaries:
//! `kill -9`, restarts from the data dir, lost quorum, pauses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::http::{self, wait_for};

/// The `stackd` binary next to the test executable (built by `cargo build --bin stackd`).
pub fn stackd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STACKD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("stackd");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --bin stackd` first (the README's test command does)",
        bin.display()
    );
    bin
}

/// Runs `stackd ARGS…` to its end and fails the test unless it succeeds (showing its stderr);
/// answers its stdout and stderr.
pub fn stackd_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (String, String) {
    let (ok, stdout, stderr) = run_stackd(args);
    assert!(ok, "stackd {:?} failed: {stderr}", os_args(args));
    (stdout, stderr)
}

/// Runs `stackd ARGS…` to its end and fails the test if it succeeds; answers its stderr.
pub fn stackd_fails<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let (ok, _, stderr) = run_stackd(args);
    assert!(!ok, "stackd {:?} should have failed", os_args(args));
    stderr
}

/// Runs `stackd ARGS…` to its end; answers whether it succeeded, its stdout and its stderr.
pub fn run_stackd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new(stackd_bin())
        .args(args)
        .output()
        .expect("running stackd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `stackd ARGS…` to its end with exactly the `STACKD_*` environment variables of `env`
/// (those of the test process are not passed on); answers whether it succeeded, its stdout
/// and its stderr.
pub fn stackd_with_env<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut cmd = Command::new(stackd_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("STACKD_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running stackd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn os_args<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<&std::ffi::OsStr> {
    args.iter().map(|a| a.as_ref()).collect()
}

/// How a [`ProcCluster`] is started.
#[derive(Debug, Clone)]
pub struct ProcOptions {
    /// Last octet of node 1's address: node `i` listens on 127.0.0.(first_ip + i).
    pub first_ip: u8,
    /// `--target-voters` (3 or 5).
    pub target_voters: usize,
    /// Extra environment for every process.
    pub env: Vec<(String, String)>,
    /// Each node runs the gateway too, on an address of its own ([`ProcCluster::gateway_addrs`]).
    pub gateway: bool,
    /// Each node runs under libfaketime, its wall clock offset by what
    /// [`ProcCluster::set_clock_offset`] says (the monotonic clock untouched).
    pub faketime: bool,
    /// Node `.0`'s data dir is a tmpfs of `.1` bytes (needs root), so its disk can fill up;
    /// [`ProcCluster::grow_disk`] makes room.
    pub small_disk: Option<(usize, u64)>,
    /// Node `i` runs under libfiu's `fiu-run -x` (Debian's `fiu-utils`), so
    /// [`ProcCluster::fail_fsync`] can make its syncs fail.
    pub fiu: Option<usize>,
}

/// Where Debian's `faketime` package puts the library.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl Default for ProcOptions {
    fn default() -> Self {
        Self {
            first_ip: 1,
            target_voters: 3,
            env: Vec::new(),
            gateway: false,
            faketime: false,
            small_disk: None,
            fiu: None,
        }
    }
}

pub struct ProcCluster {
    root: TempDir,
    opts: ProcOptions,
    procs: Vec<Option<Child>>,
    pub api_addrs: Vec<String>,
    pub cluster_addrs: Vec<String>,
    /// Where each node's gateway listens (used when started with [`ProcOptions::gateway`]).
    pub gateway_addrs: Vec<String>,
    pub bases: Vec<String>,
    /// Raft node id of each node.
    pub ids: Vec<u64>,
    /// Node 1's join token.
    token: String,
}

impl ProcCluster {
    fn spawn(&self, i: usize, join: Option<(&str, &str)>) -> Result<Child> {
        let dir = self.root.path().join(format!("node{}", i + 1));
        if let Some((small, bytes)) = self.opts.small_disk.filter(|(n, _)| *n == i) {
            if !dir.exists() {
                std::fs::create_dir_all(&dir)?;
                mount_tmpfs(&dir, bytes)
                    .with_context(|| format!("a small disk for node {}", small + 1))?;
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join(format!("node{}.log", i + 1)))?;
        let mut cmd = if self.opts.fiu == Some(i) {
            let mut fiu = Command::new("fiu-run");
            fiu.arg("-x")
                .arg("-f")
                .arg(self.fiu_ctrl())
                .arg(stackd_bin());
            fiu
        } else {
            Command::new(stackd_bin())
        };
        cmd.arg("serve")
            .arg("--insecure-no-auth")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--api-addr")
            .arg(&self.api_addrs[i])
            .arg("--cluster-addr")
            .arg(&self.cluster_addrs[i])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .arg("--target-voters")
            .arg(self.opts.target_voters.to_string())
            .env("STACKD_LOG", "info,openraft=warn")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        if let Some((addr, token)) = join {
            cmd.arg("--join").arg(addr).arg("--token").arg(token);
        }
        if self.opts.gateway {
            cmd.arg("--gateway-addr").arg(&self.gateway_addrs[i]);
        }
        if self.opts.faketime {
            let offset = self.clock_file(i);
            if !offset.exists() {
                std::fs::write(&offset, "+0\n")?;
            }
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", offset)
                // The offset file is read again at most once a second.
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        cmd.spawn().context("spawning stackd")
    }

    /// Starts `n` processes: node 1 founds the cluster, the others join it.
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_with(n, ProcOptions::default()).await
    }

    /// Starts `n` processes with `opts`.
    pub async fn start_with(n: usize, opts: ProcOptions) -> Result<Self> {
        let voters = n.min(opts.target_voters);
        let mut c = Self::found(n, opts).await?;
        for i in 1..n {
            c.join(i)?;
            // Join one at a time, each promotion done before the next join (a join that meets a
            // membership change in progress is refused and retried under a new id), so node
            // ids follow the order of the addresses; `ids` records them anyway.
            c.wait_ready(i, Duration::from_secs(30)).await?;
            c.wait_voters((i + 1).min(voters), &(0..=i).collect::<Vec<_>>())
                .await?;
        }
        c.wait_voters(voters, &(0..n).collect::<Vec<_>>()).await?;
        c.record_ids().await?;
        Ok(c)
    }

    /// Starts node 1 alone (it founds the cluster) and waits for its join token, with room for
    /// `n` nodes: [`join`](Self::join) starts the others, then [`record_ids`](Self::record_ids)
    /// learns their ids.
    pub async fn found(n: usize, opts: ProcOptions) -> Result<Self> {
        crate::init_logging();
        let root = TempDir::new()?;
        let mut api_addrs = Vec::new();
        let mut cluster_addrs = Vec::new();
        let mut gateway_addrs = Vec::new();
        for i in 0..n {
            let ip = format!("127.0.0.{}", opts.first_ip as usize + i);
            api_addrs.push(crate::free_addrs(&ip).0.to_string());
            gateway_addrs.push(crate::free_addrs(&ip).0.to_string());
            cluster_addrs.push(crate::free_cluster_addr(&ip).to_string());
        }
        let bases = api_addrs.iter().map(|a| format!("http://{a}")).collect();
        let mut c = Self {
            root,
            opts,
            procs: (0..n).map(|_| None).collect(),
            api_addrs,
            cluster_addrs,
            gateway_addrs,
            bases,
            ids: Vec::new(),
            token: String::new(),
        };
        c.procs[0] = Some(c.spawn(0, None)?);
        let token_file = c.root.path().join("node1").join("join-token");
        c.token = wait_for("node 1's join token", Duration::from_secs(30), || async {
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|t| t.trim().to_string())
        })
        .await
        .map_err(|e| e.context(c.log_tail(0)))?;
        Ok(c)
    }

    /// Starts node `i` (not running yet), joining through node 1 with its token; returns at
    /// once.
    pub fn join(&mut self, i: usize) -> Result<()> {
        if self.procs[i].is_some() {
            bail!("node {} is running", i + 1);
        }
        let join = self.cluster_addrs[0].clone();
        let token = self.token.clone();
        self.procs[i] = Some(self.spawn(i, Some((&join, &token)))?);
        Ok(())
    }

    /// Replaces node `i` with a fresh node at the same addresses: stops its process if it
    /// runs, deletes its data dir and starts a new node that joins through node `via`'s cluster
    /// address (it gets a new id; [`record_ids`](Self::record_ids) learns it). Remove the old
    /// member first: a member's address is refused to a joiner. Returns at once.
    pub fn replace(&mut self, i: usize, via: usize) -> Result<()> {
        if let Some(mut child) = self.procs[i].take() {
            let _ = child.kill();
            child.wait()?;
        }
        let dir = self.data_dir(i);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let join = self.cluster_addrs[via].clone();
        let token = self.token.clone();
        self.procs[i] = Some(self.spawn(i, Some((&join, &token)))?);
        Ok(())
    }

    /// The typed client of every node, in node order.
    pub fn apis(&self) -> Vec<node::api::client::Client> {
        self.bases.iter().map(|b| http::api(b)).collect()
    }

    /// Waits (up to `timeout`) until node `i` answers `/ready` with 200.
    pub async fn wait_ready(&self, i: usize, timeout: Duration) -> Result<()> {
        let api = http::api(&self.bases[i]);
        wait_for(&format!("node {} ready", i + 1), timeout, || async {
            api.ready().await.ok().map(drop)
        })
        .await
        .map_err(|e| e.context(self.log_tail(i)))
    }

    /// Reads every node's id from its `GET /v1/cluster` into `ids`.
    pub async fn record_ids(&mut self) -> Result<()> {
        self.ids.clear();
        for i in 0..self.bases.len() {
            let s = http::api(&self.bases[i])
                .cluster_status()
                .await
                .context("GET /v1/cluster")?;
            self.ids.push(s.node_id);
        }
        Ok(())
    }

    /// Waits until the nodes `alive` all report `voters` voters and agree on a leader; returns
    /// the leader's id.
    pub async fn wait_voters(&self, voters: usize, alive: &[usize]) -> Result<u64> {
        let apis = self.apis();
        wait_for(
            &format!("{voters} voters and one leader"),
            Duration::from_secs(30),
            || async {
                let mut leader = None;
                for &i in alive {
                    let s = http::status(&apis[i]).await?;
                    let l = s.leader_id?;
                    if http::voter_count(&s) != voters || leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                leader
            },
        )
        .await
    }

    /// The index of the node with Raft id `id`.
    pub fn index_of(&self, id: u64) -> usize {
        self.ids
            .iter()
            .position(|x| *x == id)
            .unwrap_or_else(|| panic!("no node has id {id} (ids {:?})", self.ids))
    }

    /// Waits for a leader among the nodes `alive` other than id `not`; returns its id.
    pub async fn wait_leader(&self, alive: &[usize], not: Option<u64>) -> Result<u64> {
        let apis = self.apis();
        wait_for("a leader", Duration::from_secs(30), || async {
            for &i in alive {
                let s = http::status(&apis[i]).await?;
                let l = s.leader_id?;
                let index = self.ids.iter().position(|x| *x == l)?;
                if Some(l) != not && alive.contains(&index) {
                    return Some(l);
                }
            }
            None
        })
        .await
    }

    /// `kill -9` of node `i`.
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        let Some(mut child) = self.procs[i].take() else {
            bail!("node {} is not running", i + 1)
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Restarts node `i` from its data dir (no --join).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.procs[i].is_some() {
            bail!("node {} is running", i + 1);
        }
        self.procs[i] = Some(self.spawn(i, None)?);
        Ok(())
    }

    /// Sends `SIGSTOP` (`pause`) or `SIGCONT` to node `i`.
    pub fn pause(&self, i: usize, pause: bool) -> Result<()> {
        let Some(child) = &self.procs[i] else {
            bail!("node {} is not running", i + 1)
        };
        let sig = if pause { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill {sig} node {} failed: {status}", i + 1);
        }
        Ok(())
    }

    /// Waits (up to `timeout`) until node `i`'s process exits by itself; returns its status.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus> {
        let Some(child) = self.procs[i].as_mut() else {
            bail!("node {} is not running", i + 1)
        };
        let status = wait_for(&format!("node {} to exit", i + 1), timeout, || {
            std::future::ready(child.try_wait().ok().flatten())
        })
        .await?;
        self.procs[i] = None;
        Ok(status)
    }

    /// Node `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node{}", i + 1))
    }

    /// Node `i`'s whole log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.root.path().join(format!("node{}.log", i + 1)))
            .unwrap_or_default()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    fn clock_file(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node{}.faketime", i + 1))
    }

    /// Offsets node `i`'s wall clock by `secs` (started with [`ProcOptions::faketime`]); the
    /// node sees it within a second.
    pub fn set_clock_offset(&self, i: usize, secs: i64) -> Result<()> {
        if !self.opts.faketime {
            bail!("the nodes were not started under libfaketime");
        }
        std::fs::write(self.clock_file(i), format!("{secs:+}s\n"))?;
        Ok(())
    }

    fn fiu_ctrl(&self) -> PathBuf {
        self.root.path().join("fiu-ctrl")
    }

    /// Makes every fsync and fdatasync of node `i` (run under [`ProcOptions::fiu`]) fail
    /// (`fail`), or succeed again.
    pub fn fail_fsync(&self, i: usize, fail: bool) -> Result<()> {
        let Some(child) = &self.procs[i] else {
            bail!("node {} is not running", i + 1)
        };
        for point in ["posix/io/sync/fsync", "posix/io/sync/fdatasync"] {
            let command = if fail {
                format!("enable name={point}")
            } else {
                format!("disable name={point}")
            };
            let status = Command::new("fiu-ctrl")
                .arg("-f")
                .arg(self.fiu_ctrl())
                .args(["-c", &command])
                .arg(child.id().to_string())
                .status()
                .context("running fiu-ctrl (apt-get install fiu-utils)")?;
            if !status.success() {
                bail!("fiu-ctrl {command} on node {} failed: {status}", i + 1);
            }
        }
        Ok(())
    }

    /// Gives node `i`'s small disk ([`ProcOptions::small_disk`]) `bytes` in all.
    pub fn grow_disk(&self, i: usize, bytes: u64) -> Result<()> {
        let dir = self.data_dir(i);
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&dir)
            .status()?;
        if !status.success() {
            bail!("remounting {} failed: {status}", dir.display());
        }
        Ok(())
    }

    /// The `--target-voters` the nodes run with.
    pub fn opts_target_voters(&self) -> usize {
        self.opts.target_voters
    }

    /// The IP address node `i` listens on.
    pub fn ip(&self, i: usize) -> String {
        format!("127.0.0.{}", self.opts.first_ip as usize + i)
    }

    /// The folder holding the data dirs and the logs (`node{i}.log`, 1-based).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The last lines of node `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.root.path().join(format!("node{}.log", i + 1)))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "node {} log tail:\n{}",
            i + 1,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

/// Mounts a tmpfs of `bytes` on `dir`.
fn mount_tmpfs(dir: &Path, bytes: u64) -> Result<()> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .status()
        .context("running mount (a small disk needs root)")?;
    if !status.success() {
        bail!("mounting a tmpfs on {} failed: {status}", dir.display());
    }
    Ok(())
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((i, _)) = self.opts.small_disk {
            let _ = Command::new("umount").arg(self.data_dir(i)).status();
        }
        if std::thread::panicking() {
            // Keep the data dirs and logs of a failed test for inspection.
            if let Ok(tmp) = TempDir::new() {
                let dir = std::mem::replace(&mut self.root, tmp).keep();
                eprintln!("stackd test cluster kept for inspection: {}", dir.display());
            }
        }
    }
}
