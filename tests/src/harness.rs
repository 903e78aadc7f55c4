//! The fault-injection run: real `stackd` processes, concurrent clients on every node
//! recording a history, a nemesis injecting faults on a timeline, then the checks.
//!
//! A run is *valid* only if every planned fault happened (an isolated leader was replaced on
//! the majority side), clients reached a minimum rate before the first fault, and after
//! healing a write and a read succeed on every node. It *passes* if it is valid, the history
//! is linearizable (within the time budget) and every node ends with the same KV state.
//! Anything else saves the history, the fault timeline, the node logs and the
//! counterexample in one folder and prints its path.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::checker::convergence::converged;
use crate::checker::kv::{check_history, Report};
use crate::checker::queues::{QueueLog, QueueReport};
use crate::history::{Kind, Outcome, Recorder};
use crate::http::wait_for;
use crate::nemesis::Partitions;
use crate::process::{ProcCluster, ProcOptions};
use crate::workload::{
    cache_client, client, http_client, lock_client, perform, queue_name, queue_producer,
    queue_worker, session_client, ttl_client, Ctx, LockLog, SessionCacheLog, JOB_VISIBILITY,
    KEY_TTL, OP_TIMEOUT, SESSIONS,
};

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Cut the leader off from every other node (it ends up alone on the minority side).
    IsolateLeader,
    /// Cut a random minority (1 to (n-1)/2 nodes) off from the rest.
    Partition,
    /// Split the others in two halves that cannot talk; one bridge node talks to both.
    Bridge,
    /// `kill -9` a node (the leader half of the time), then restart it.
    Kill,
    /// `SIGSTOP` a node (the leader half of the time) for longer than an election timeout,
    /// then `SIGCONT`.
    Pause,
    /// `kill -9` every node at once under load, then restart them all: acknowledged writes
    /// must survive on disk.
    KillAll,
    /// Remove a voter (the leader half of the time) from the membership, then a fresh node
    /// with an empty data dir joins at its address and is promoted to voter.
    Membership,
    /// Step one node's wall clock (the leader half of the time) an hour ahead or back, its
    /// monotonic clock untouched, then set it right again: leases and TTLs must keep
    /// following the replicated clock (the queue checker sees a lease that ends early).
    ClockJump,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::IsolateLeader,
        Fault::Partition,
        Fault::Bridge,
        Fault::Kill,
        Fault::Pause,
        Fault::KillAll,
        Fault::Membership,
        Fault::ClockJump,
    ];

    /// The fault named `name` (its variant name, any case, `_` and `-` ignored).
    pub fn parse(name: &str) -> Option<Fault> {
        let want: String = name
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_lowercase();
        Fault::ALL
            .into_iter()
            .find(|f| format!("{f:?}").to_lowercase() == want)
    }

    fn needs_iptables(self) -> bool {
        matches!(
            self,
            Fault::IsolateLeader | Fault::Partition | Fault::Bridge
        )
    }
}

/// What to run. [`RunConfig::from_env`] reads the `STACKD_FAULTS_*` knobs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub nodes: usize,
    /// Last octet of node 1's loopback address (nodes use consecutive addresses).
    pub first_ip: u8,
    /// Faults are injected in this order, round-robin, until `duration` has passed (each at
    /// least once).
    pub faults: Vec<Fault>,
    pub duration: Duration,
    /// How long one fault lasts (pauses: longer than the 1 s maximum election timeout).
    pub hold: Duration,
    /// Quiet time between faults.
    pub gap: Duration,
    /// Fault-free workload before the first fault, over which `min_rate` is measured.
    pub warmup: Duration,
    /// Definite operations per second the clients must reach during the warm-up.
    pub min_rate: f64,
    pub clients_per_node: usize,
    pub keys: usize,
    /// Time allowed to the linearizability check; running out is a failure.
    pub check_budget: Duration,
    pub seed: u64,
    /// Run the nodes with `STACKD_UNSAFE_STALE_READS=1` (the checker's own test).
    pub unsafe_stale_reads: bool,
    /// Run the nodes with `STACKD_UNSAFE_LOSE_JOBS=N`: every Nth job is answered as enqueued
    /// and never stored (the queue checker's own test).
    pub unsafe_lose_jobs: Option<u64>,
    /// Where a failed run's evidence goes (default: a new folder in the temp dir).
    pub out_dir: Option<PathBuf>,
    /// Save the evidence even when the run passes.
    pub keep: bool,
}

impl RunConfig {
    /// The short run of the test suite: 3 nodes, every fault once.
    pub fn short() -> Self {
        Self {
            nodes: 3,
            first_ip: 11,
            faults: Fault::ALL.to_vec(),
            duration: Duration::ZERO,
            hold: Duration::from_secs(4),
            gap: Duration::from_secs(2),
            warmup: Duration::from_secs(3),
            min_rate: 20.0,
            clients_per_node: 2,
            keys: 12,
            check_budget: Duration::from_secs(60),
            seed: seed_from_clock(),
            unsafe_stale_reads: false,
            unsafe_lose_jobs: None,
            out_dir: None,
            keep: false,
        }
    }

    /// `base` with the `STACKD_FAULTS_*` environment knobs applied: `SECS`, `NODES`,
    /// `CLIENTS` (per node), `KEYS`, `HOLD_MS`, `GAP_MS`, `SEED`, `FIRST_IP`, `OUT`, `KEEP=1`,
    /// `CHECK_SECS`, `ONLY` (comma-separated fault names, e.g. `kill,clock_jump`).
    pub fn from_env(mut self) -> Result<Self> {
        fn knob<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
            match std::env::var(format!("STACKD_FAULTS_{name}")) {
                Ok(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("STACKD_FAULTS_{name}={v:?} is not valid")),
                Err(_) => Ok(None),
            }
        }
        if let Some(s) = knob::<u64>("SECS")? {
            self.duration = Duration::from_secs(s);
        }
        if let Some(n) = knob("NODES")? {
            self.nodes = n;
        }
        if let Some(n) = knob("CLIENTS")? {
            self.clients_per_node = n;
        }
        if let Some(n) = knob("KEYS")? {
            self.keys = n;
        }
        if let Some(ms) = knob::<u64>("HOLD_MS")? {
            self.hold = Duration::from_millis(ms);
        }
        if let Some(ms) = knob::<u64>("GAP_MS")? {
            self.gap = Duration::from_millis(ms);
        }
        if let Some(s) = knob("SEED")? {
            self.seed = s;
        }
        if let Some(ip) = knob("FIRST_IP")? {
            self.first_ip = ip;
        }
        if let Some(s) = knob::<u64>("CHECK_SECS")? {
            self.check_budget = Duration::from_secs(s);
        }
        if let Some(p) = knob::<String>("OUT")? {
            self.out_dir = Some(PathBuf::from(p));
        }
        if let Some(k) = knob::<u8>("KEEP")? {
            self.keep = k == 1;
        }
        if let Some(only) = knob::<String>("ONLY")? {
            self.faults = only
                .split(',')
                .map(|n| {
                    Fault::parse(n.trim()).ok_or_else(|| {
                        anyhow::anyhow!("STACKD_FAULTS_ONLY: no fault named {n:?} (see Fault)")
                    })
                })
                .collect::<Result<_>>()?;
        }
        if !(3..=9).contains(&self.nodes) || self.first_ip as usize + self.nodes > 255 {
            bail!("STACKD_FAULTS_NODES must be 3 to 9 with addresses below 127.0.0.255");
        }
        Ok(self)
    }
}

fn seed_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

/// One injected fault, as it happened.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub fault: Fault,
    pub start_ns: u64,
    pub end_ns: u64,
    pub what: String,
    /// Whether the fault took the intended effect (for `IsolateLeader`: the majority elected
    /// a new leader while the old one was cut off).
    pub effective: bool,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub elapsed: Duration,
    pub ops: usize,
    pub ok_ops: usize,
    pub warmup_rate: f64,
    pub faults: Vec<FaultRecord>,
    pub check: Option<Report>,
    pub check_time: Duration,
    /// Reasons the run does not count.
    pub invalid: Vec<String>,
    /// Divergence between nodes, problems recovering, lock fence violations.
    pub problems: Vec<String>,
    /// Lock grants recorded, and fenced writes (accepted, rejected as stale).
    pub lock_grants: usize,
    pub fenced_writes: (usize, usize),
    /// The queue workload's figures and what its checks found.
    pub queue: Option<QueueReport>,
    /// Session operations checked, and whether a session's history had no linearization.
    pub sessions_checked: usize,
    pub session_violations: usize,
    /// Cache hits checked against the invalidations their node had answered.
    pub cache_hits_checked: usize,
    /// Keys written with a TTL whose reads were checked for an early expiry.
    pub ttl_keys_checked: usize,
    pub artifacts: Option<PathBuf>,
}

impl RunReport {
    pub fn valid(&self) -> bool {
        self.invalid.is_empty()
    }

    pub fn linearizable(&self) -> bool {
        self.check.as_ref().is_some_and(Report::ok)
    }

    pub fn passed(&self) -> bool {
        self.valid() && self.linearizable() && self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fault run (seed {}): {:.1} s, {} operations ({} definite), {:.0} ops/s before faults",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.ops,
            self.ok_ops,
            self.warmup_rate
        );
        let mut counts: HashMap<Fault, usize> = HashMap::new();
        for f in &self.faults {
            *counts.entry(f.fault).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort();
        let _ = writeln!(s, "faults injected: {} {:?}", self.faults.len(), counts);
        if let Some(c) = &self.check {
            let _ = writeln!(
                s,
                "linearizability: {} operations on {} keys ({} unknown outcomes) checked in {:.1} s: {} violations, {} timeouts",
                c.ops_checked,
                c.keys,
                c.unknown,
                self.check_time.as_secs_f64(),
                c.violations.len(),
                c.timeouts.len()
            );
        }
        let _ = writeln!(
            s,
            "locks: {} grants checked for fence order; fenced writes {} accepted, {} rejected as stale",
            self.lock_grants, self.fenced_writes.0, self.fenced_writes.1
        );
        let _ = writeln!(
            s,
            "sessions: {} operations checked, {} sessions without a linearization; cache: {} hits checked against invalidations; {} keys with a TTL checked for early expiry",
            self.sessions_checked, self.session_violations, self.cache_hits_checked, self.ttl_keys_checked
        );
        if let Some(q) = &self.queue {
            let _ = writeln!(
                s,
                "queue: {} enqueues acknowledged, {} deliveries ({} after an expired lease), {} acks accepted",
                q.enqueued, q.delivered, q.redelivered, q.acked
            );
        }
        for p in &self.invalid {
            let _ = writeln!(s, "INVALID: {p}");
        }
        for p in self.problems.iter().take(SUMMARY_PROBLEMS) {
            let _ = writeln!(s, "PROBLEM: {p}");
        }
        if self.problems.len() > SUMMARY_PROBLEMS {
            let _ = writeln!(
                s,
                "… {} more problems (all in problems.txt of the evidence)",
                self.problems.len() - SUMMARY_PROBLEMS
            );
        }
        if let Some(c) = &self.check {
            for (_, cx) in c.violations.iter().take(3) {
                let _ = writeln!(s, "{}", truncate_lines(cx, 60));
            }
            for k in &c.timeouts {
                let _ = writeln!(s, "check of key {k:?} ran out of time");
            }
        }
        if let Some(p) = &self.artifacts {
            let _ = writeln!(s, "evidence saved in {}", p.display());
        }
        s
    }
}

/// Problems a summary lists; the evidence folder keeps them all.
const SUMMARY_PROBLEMS: usize = 20;

fn truncate_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() <= n {
        return s.to_string();
    }
    format!(
        "{}\n  … ({} more lines in counterexample.txt)",
        lines[..n].join("\n"),
        lines.len() - n
    )
}

/// The nemesis: applies faults to the cluster and remembers what is currently broken.
struct Nemesis<'a> {
    cluster: &'a mut ProcCluster,
    partitions: Option<Partitions>,
    ctx: Arc<Ctx>,
    rng: StdRng,
    hold: Duration,
    /// Raft node id of each node (ids are allocated by the cluster and may skip numbers).
    ids: Vec<u64>,
}

impl Nemesis<'_> {
    fn n(&self) -> usize {
        self.cluster.bases.len()
    }

    /// A typed client of every node whose requests give up after 1 s.
    fn quick_apis(&self) -> Vec<node::api::client::Client> {
        let http = http_client(Duration::from_secs(1));
        self.cluster
            .bases
            .iter()
            .map(|b| node::api::client::Client::with_http(b, http.clone()))
            .collect()
    }

    /// The leader that every node of `among` names, if it is one of them and not `not`.
    async fn leader(&self, among: &[usize], not: Option<usize>) -> Result<usize> {
        let apis = self.quick_apis();
        let ids = &self.ids;
        wait_for("a leader all agree on", Duration::from_secs(30), || async {
            let mut agreed = None;
            for &i in among {
                let s = crate::http::status(&apis[i]).await?;
                let id = s.leader_id?;
                if agreed.is_some_and(|a| a != id) {
                    return None;
                }
                agreed = Some(id);
            }
            let l = ids.iter().position(|x| Some(*x) == agreed)?;
            (among.contains(&l) && Some(l) != not).then_some(l)
        })
        .await
    }

    fn pick_target(&mut self, leader: usize) -> usize {
        if self.rng.random_bool(0.5) {
            leader
        } else {
            self.rng.random_range(0..self.n())
        }
    }

    fn ips(&self, nodes: &[usize]) -> Vec<String> {
        nodes.iter().map(|&i| self.cluster.ip(i)).collect()
    }

    fn parts(&self) -> Result<&Partitions> {
        self.partitions
            .as_ref()
            .context("partition faults need iptables")
    }

    async fn inject(&mut self, fault: Fault) -> Result<FaultRecord> {
        let all: Vec<usize> = (0..self.n()).collect();
        let leader = self.leader(&all, None).await?;
        let start_ns = self.ctx.rec.now_ns();
        let mut effective = true;
        let what = match fault {
            Fault::IsolateLeader => {
                let others: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
                let what = format!("isolate leader n{} from {}", leader + 1, names(&others));
                self.ctx.note(format!("fault start: {what}"));
                self.parts()?
                    .split(&[self.ips(&[leader]), self.ips(&others)])?;
                match self.leader(&others, Some(leader)).await {
                    Ok(l) => self.ctx.note(format!(
                        "n{} elected on the majority side while n{} is cut off",
                        l + 1,
                        leader + 1
                    )),
                    Err(e) => {
                        effective = false;
                        self.ctx
                            .note(format!("no new leader on the majority side: {e}"));
                    }
                }
                tokio::time::sleep(self.hold).await;
                what
            }
            Fault::Partition => {
                let mut shuffled = all.clone();
                shuffled.shuffle(&mut self.rng);
                let size = self.rng.random_range(1..=(self.n() - 1) / 2);
                let (minority, majority) = shuffled.split_at(size);
                let what = format!("partition {} | {}", names(minority), names(majority));
                self.ctx.note(format!("fault start: {what}"));
                self.parts()?
                    .split(&[self.ips(minority), self.ips(majority)])?;
                tokio::time::sleep(self.hold).await;
                what
            }
            Fault::Bridge => {
                let mut shuffled = all.clone();
                shuffled.shuffle(&mut self.rng);
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                let what = format!(
                    "bridge: {} | {} with n{} seeing both",
                    names(a),
                    names(b),
                    bridge + 1
                );
                self.ctx.note(format!("fault start: {what}"));
                let (ia, ib) = (self.ips(a), self.ips(b));
                let mut pairs = Vec::new();
                for x in &ia {
                    for y in &ib {
                        pairs.push((x.clone(), y.clone()));
                        pairs.push((y.clone(), x.clone()));
                    }
                }
                self.parts()?.cut(&pairs)?;
                tokio::time::sleep(self.hold).await;
                what
            }
            Fault::Kill => {
                let t = self.pick_target(leader);
                let what = format!(
                    "kill -9 n{}{}",
                    t + 1,
                    if t == leader { " (leader)" } else { "" }
                );
                self.ctx.note(format!("fault start: {what}"));
                self.cluster.kill9(t)?;
                tokio::time::sleep(self.hold).await;
                self.ctx.note(format!("restart n{}", t + 1));
                self.cluster.restart(t)?;
                what
            }
            Fault::Pause => {
                let t = self.pick_target(leader);
                let what = format!(
                    "SIGSTOP n{}{}",
                    t + 1,
                    if t == leader { " (leader)" } else { "" }
                );
                self.ctx.note(format!("fault start: {what}"));
                self.cluster.pause(t, true)?;
                tokio::time::sleep(self.hold).await;
                self.ctx.note(format!("SIGCONT n{}", t + 1));
                self.cluster.pause(t, false)?;
                what
            }
            Fault::Membership => {
                let t = self.pick_target(leader);
                let what = format!(
                    "remove n{} (id {}{}), a fresh node joins in its place",
                    t + 1,
                    self.ids[t],
                    if t == leader { ", leader" } else { "" }
                );
                self.ctx.note(format!("fault start: {what}"));
                effective = self.replace_member(t).await?;
                what
            }
            Fault::ClockJump => {
                let t = self.pick_target(leader);
                let secs: i64 = if self.rng.random_bool(0.5) {
                    3600
                } else {
                    -3600
                };
                let what = format!(
                    "wall clock of n{}{} {secs:+} s",
                    t + 1,
                    if t == leader { " (leader)" } else { "" }
                );
                self.ctx.note(format!("fault start: {what}"));
                self.cluster.set_clock_offset(t, secs)?;
                tokio::time::sleep(self.hold).await;
                self.ctx.note(format!("wall clock of n{} set right", t + 1));
                self.cluster.set_clock_offset(t, 0)?;
                // The node reads its offset again within a second.
                tokio::time::sleep(Duration::from_millis(1100)).await;
                what
            }
            Fault::KillAll => {
                let what = "kill -9 every node".to_string();
                self.ctx.note(format!("fault start: {what}"));
                for i in 0..self.n() {
                    self.cluster.kill9(i)?;
                }
                tokio::time::sleep(self.hold / 2).await;
                self.ctx.note("restart every node");
                for i in 0..self.n() {
                    self.cluster.restart(i)?;
                }
                what
            }
        };
        if let Some(p) = &self.partitions {
            p.heal()?;
        }
        self.ctx.note(format!("fault end: {what}"));
        let end_ns = self.ctx.rec.now_ns();
        Ok(FaultRecord {
            fault,
            start_ns,
            end_ns,
            what,
            effective,
        })
    }

    /// Removes node `t` from the membership through another node, then starts a fresh node
    /// at its address and waits until it is a voter; answers whether all of it happened.
    async fn replace_member(&mut self, t: usize) -> Result<bool> {
        let old = self.ids[t];
        let via = (t + 1) % self.n();
        let others: Vec<usize> = (0..self.n()).filter(|&i| i != t).collect();
        let api = self.ctx.api(via);
        let apis = self.quick_apis();
        wait_for("the member removed", Duration::from_secs(30), || async {
            if let Err(e) = api.remove_member(old).await {
                if e.status() != Some(404) {
                    return None;
                }
            }
            for &i in &others {
                let s = crate::http::status(&apis[i]).await?;
                if s.members.iter().any(|m| m.id == old) {
                    return None;
                }
            }
            Some(())
        })
        .await?;
        self.ctx
            .note(format!("n{} (id {old}) removed; a fresh node joins", t + 1));
        // From here the address answers for another node: its state starts over.
        self.ctx.lives[t].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cluster.replace(t, via)?;
        let voters = self.cluster.opts_target_voters().min(self.n());
        let fresh = &apis[t];
        let joined = wait_for(
            "the fresh node a voter",
            Duration::from_secs(60),
            || async {
                let s = crate::http::status(fresh).await?;
                let me = s.members.iter().find(|m| m.id == s.node_id)?;
                let voter = matches!(me.role, node::api::model::MemberRole::Voter);
                (s.node_id != old && voter && crate::http::voter_count(&s) == voters)
                    .then_some(s.node_id)
            },
        )
        .await;
        match joined {
            Ok(id) => {
                self.ctx
                    .note(format!("n{} rejoined as id {id}, a voter", t + 1));
                self.ids[t] = id;
                self.cluster.ids[t] = id;
                Ok(true)
            }
            Err(e) => {
                self.ctx
                    .note(format!("the fresh node did not become a voter: {e}"));
                Ok(false)
            }
        }
    }

    /// Undoes everything: partitions healed, paused nodes continued, dead nodes restarted, clocks
    /// set right.
    fn heal_all(&mut self) -> Result<()> {
        if let Some(p) = &self.partitions {
            p.heal()?;
        }
        for i in 0..self.n() {
            // Fails only when the nodes run without libfaketime: nothing to set right.
            let _ = self.cluster.set_clock_offset(i, 0);
        }
        for i in 0..self.n() {
            if self.cluster.is_running(i) {
                let _ = self.cluster.pause(i, false);
            } else {
                self.cluster.restart(i)?;
            }
        }
        Ok(())
    }

    /// Waits until every node names the same leader and is ready.
    async fn wait_recovered(&self, within: Duration) -> Result<()> {
        let apis = self.quick_apis();
        wait_for("every node ready under one leader", within, || async {
            let mut leader = None;
            for api in &apis {
                let s = crate::http::status(api).await?;
                let l = s.leader_id?;
                if leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
                api.ready().await.ok()?;
            }
            leader
        })
        .await?;
        Ok(())
    }
}

fn names(nodes: &[usize]) -> String {
    let v: Vec<String> = nodes.iter().map(|i| format!("n{}", i + 1)).collect();
    format!("{{{}}}", v.join(","))
}

/// Runs the harness with `cfg` and checks the result. Errors are returned only for problems
/// of the harness itself (no iptables, stackd would not start); anything the cluster does
/// wrong is in the report.
pub async fn run(cfg: RunConfig) -> Result<RunReport> {
    let started = Instant::now();
    let wants_iptables = cfg.faults.iter().any(|f| f.needs_iptables());
    let partitions = if wants_iptables {
        Some(Partitions::new()?)
    } else {
        None
    };
    let mut env = Vec::new();
    if cfg.unsafe_stale_reads {
        env.push(("STACKD_UNSAFE_STALE_READS".to_string(), "1".to_string()));
    }
    if let Some(n) = cfg.unsafe_lose_jobs {
        env.push(("STACKD_UNSAFE_LOSE_JOBS".to_string(), n.to_string()));
    }
    let faketime = cfg.faults.contains(&Fault::ClockJump);
    if faketime && !std::path::Path::new(crate::process::LIBFAKETIME).exists() {
        bail!(
            "clock jumps need libfaketime at {} (apt-get install faketime)",
            crate::process::LIBFAKETIME
        );
    }
    let opts = ProcOptions {
        first_ip: cfg.first_ip,
        faketime,
        target_voters: if cfg.nodes >= 5 { 5 } else { 3 },
        env,
        ..Default::default()
    };
    let mut cluster = ProcCluster::start_with(cfg.nodes, opts).await?;
    let ctx = Arc::new(Ctx {
        rec: Recorder::new(Instant::now()),
        bases: cluster.bases.clone(),
        key_prefix: format!("r{}-k", cfg.seed % 1_000_000),
        timeline: Mutex::new(Vec::new()),
        lives: (0..cfg.nodes).map(|_| Default::default()).collect(),
    });
    ctx.note(format!(
        "cluster of {} nodes up on {}..; seed {}",
        cfg.nodes,
        cluster.ip(0),
        cfg.seed
    ));
    let mut report = RunReport {
        seed: cfg.seed,
        elapsed: Duration::ZERO,
        ops: 0,
        ok_ops: 0,
        warmup_rate: 0.0,
        faults: Vec::new(),
        check: None,
        check_time: Duration::ZERO,
        invalid: Vec::new(),
        problems: Vec::new(),
        lock_grants: 0,
        fenced_writes: (0, 0),
        queue: None,
        sessions_checked: 0,
        session_violations: 0,
        cache_hits_checked: 0,
        ttl_keys_checked: 0,
        artifacts: None,
    };
    let outcome = drive(&cfg, &mut cluster, partitions, &ctx, &mut report).await;
    if let Err(e) = &outcome {
        report.problems.push(format!("run aborted: {e:#}"));
    }
    report.elapsed = started.elapsed();
    let ops = ctx.rec.ops();
    report.ops = ops.len();
    report.ok_ops = ops.iter().filter(|o| o.is_ok()).count();
    if !report.passed() || cfg.keep {
        report.artifacts = save_evidence(&cfg, &cluster, &ctx, &report).ok();
    }
    Ok(report)
}

async fn drive(
    cfg: &RunConfig,
    cluster: &mut ProcCluster,
    partitions: Option<Partitions>,
    ctx: &Arc<Ctx>,
    report: &mut RunReport,
) -> Result<()> {
    let n = cfg.nodes;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..n * cfg.clients_per_node {
        clients.push(tokio::spawn(client(
            ctx.clone(),
            c,
            c % n,
            cfg.keys,
            cfg.seed,
            stop.clone(),
        )));
    }
    let locks = Arc::new(Mutex::new(LockLog::default()));
    for c in 0..n {
        clients.push(tokio::spawn(lock_client(
            ctx.clone(),
            c,
            c,
            locks.clone(),
            stop.clone(),
        )));
    }
    // Stops the clients however this function ends.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let sessions = Arc::new(create_sessions(ctx).await?);
    let seen = Arc::new(Mutex::new(SessionCacheLog::default()));
    for node in 0..n {
        for writer in [true, false] {
            clients.push(tokio::spawn(session_client(
                ctx.clone(),
                (node, writer),
                sessions.clone(),
                seen.clone(),
                stop.clone(),
            )));
        }
        clients.push(tokio::spawn(cache_client(
            ctx.clone(),
            node,
            seen.clone(),
            stop.clone(),
        )));
        clients.push(tokio::spawn(ttl_client(
            ctx.clone(),
            node,
            seen.clone(),
            stop.clone(),
        )));
    }
    let jobs = Arc::new(Mutex::new(QueueLog::default()));
    let stop_workers = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for node in 0..n {
        clients.push(tokio::spawn(queue_producer(
            ctx.clone(),
            node,
            jobs.clone(),
            stop.clone(),
        )));
        workers.push(tokio::spawn(queue_worker(
            ctx.clone(),
            node,
            node,
            jobs.clone(),
            stop_workers.clone(),
        )));
    }
    let _stop_workers_guard = StopOnDrop(stop_workers.clone());
    let _stop_guard = StopOnDrop(stop.clone());

    ctx.note("phase: warm-up, no faults");
    let warm_start = ctx.rec.now_ns();
    tokio::time::sleep(cfg.warmup).await;
    let warm_end = ctx.rec.now_ns();
    let warm_ok = ctx
        .rec
        .ops()
        .iter()
        .filter(|o| {
            o.is_ok()
                && o.complete_ns
                    .is_some_and(|t| t >= warm_start && t <= warm_end)
        })
        .count();
    report.warmup_rate = warm_ok as f64 / cfg.warmup.as_secs_f64();
    if report.warmup_rate < cfg.min_rate {
        report.invalid.push(format!(
            "clients reached {:.1} ops/s before faults, below the minimum {}",
            report.warmup_rate, cfg.min_rate
        ));
    }

    let ids = cluster.ids.clone();
    ctx.note(format!("node ids: {ids:?}"));

    ctx.note("phase: faults");
    let mut nemesis = Nemesis {
        ids,
        cluster,
        partitions,
        ctx: ctx.clone(),
        rng: StdRng::seed_from_u64(cfg.seed.wrapping_add(1)),
        hold: cfg.hold,
    };
    let fault_start = Instant::now();
    let mut round = 0;
    let result: Result<()> = async {
        loop {
            let fault = cfg.faults[round % cfg.faults.len()];
            if round >= cfg.faults.len() && fault_start.elapsed() >= cfg.duration {
                break;
            }
            round += 1;
            let rec = nemesis.inject(fault).await;
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    nemesis.heal_all()?;
                    return Err(e.context(format!("injecting {fault:?}")));
                }
            };
            report.faults.push(rec);
            if let Err(e) = nemesis.wait_recovered(Duration::from_secs(30)).await {
                bail!("the cluster did not recover after the fault: {e:#}");
            }
            tokio::time::sleep(cfg.gap).await;
        }
        Ok(())
    }
    .await;
    nemesis.heal_all()?;
    let recovered = nemesis.wait_recovered(Duration::from_secs(60)).await;
    ctx.note("phase: healed; clients stop");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    result?;
    recovered.context("the cluster did not recover after healing")?;

    let planned: BTreeSet<Fault> = cfg.faults.iter().copied().collect();
    for f in planned {
        let happened = report.faults.iter().filter(|r| r.fault == f);
        if !happened.clone().any(|r| r.effective) {
            report.invalid.push(match happened.count() {
                0 => format!("planned fault {f:?} never happened"),
                _ => format!("fault {f:?} never took effect (see the timeline)"),
            });
        }
    }

    ctx.note("phase: final reads of every key on every node; a write and a read per node");
    let http = http_client(OP_TIMEOUT);
    for node in 0..n {
        for k in 0..cfg.keys {
            let key = ctx.key(k);
            let id = ctx.rec.fresh_id();
            let idx = ctx.rec.invoke(id, usize::MAX, node, &key, Kind::Read);
            let out = perform(&http, &ctx.bases[node], &key, Kind::Read).await;
            ctx.rec.complete(idx, out);
        }
        let key = format!("{}final-{node}", ctx.key_prefix);
        let value = ctx.rec.fresh_id();
        for kind in [Kind::Write { value }, Kind::Read] {
            let id = ctx.rec.fresh_id();
            let idx = ctx.rec.invoke(id, usize::MAX, node, &key, kind);
            let out = perform(&http, &ctx.bases[node], &key, kind).await;
            let good = match (&out, kind) {
                (Outcome::Written { .. }, Kind::Write { .. }) => true,
                (
                    Outcome::Read {
                        value: Some((v, _)),
                    },
                    Kind::Read,
                ) => *v == value,
                _ => false,
            };
            if !good {
                report
                    .invalid
                    .push(format!("final {kind:?} on n{} answered {out:?}", node + 1));
            }
            ctx.rec.complete(idx, out);
        }
    }

    ctx.note("phase: the queue drains; workers stop");
    let drained = queue_drained(ctx).await;
    stop_workers.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    match drained {
        Ok(()) => {
            let q = crate::checker::queues::check(
                &jobs.lock().expect("queue log"),
                JOB_VISIBILITY.as_nanos() as u64,
            );
            if q.enqueued == 0 || q.acked == 0 {
                report
                    .invalid
                    .push("the queue clients never got a job through".into());
            }
            report.problems.extend(q.problems.iter().cloned());
            report.queue = Some(q);
        }
        Err(e) => report.invalid.push(format!("{e:#}")),
    }

    ctx.note("phase: convergence");
    if let Err(e) = converged(&ctx.bases).await {
        report.problems.push(format!("{e:#}"));
    }

    ctx.note("phase: lock fences");
    {
        let l = locks.lock().expect("lock log");
        report.lock_grants = l.grants.len();
        report.fenced_writes = (l.fenced_ok.len(), l.fenced_rejected);
        if l.grants.is_empty() {
            report
                .invalid
                .push("the lock clients never got the lock".into());
        }
        report
            .problems
            .extend(crate::checker::locks::check_fences(&l.grants));
        report
            .problems
            .extend(crate::checker::locks::check_fenced_writes(
                &l.grants,
                &l.fenced_ok,
            ));
    }

    ctx.note("phase: linearizability check");
    let t = Instant::now();
    report.check = Some(check_history(&ctx.rec.ops(), cfg.check_budget));
    {
        let seen = seen.lock().expect("session and cache log");
        let (checked, problems) =
            crate::checker::sessions::check_sessions(&seen.sessions, cfg.check_budget);
        report.sessions_checked = checked;
        report.session_violations = problems.len();
        report.problems.extend(problems);
        report.cache_hits_checked = seen.hits.len();
        report.ttl_keys_checked = seen.ttl_writes.len();
        report.problems.extend(crate::checker::sessions::check_ttls(
            &seen.ttl_writes,
            &seen.ttl_misses,
            KEY_TTL.as_nanos() as u64,
        ));
        report
            .problems
            .extend(crate::checker::sessions::check_cache(
                &seen.cache_writes,
                &seen.invalidations,
                &seen.hits,
            ));
        if seen.sessions.is_empty() || seen.hits.is_empty() {
            report
                .invalid
                .push("the session or cache clients never got an answer".into());
        }
    }
    report.check_time = t.elapsed();
    Ok(())
}

/// Creates the sessions the session clients share, through node 1.
async fn create_sessions(ctx: &Ctx) -> Result<Vec<String>> {
    let api = ctx.api(0);
    let mut ids = Vec::new();
    for s in 0..SESSIONS {
        let req = node::api::model::CreateSessionRequest {
            user: format!("{}user{s}", ctx.key_prefix),
            data: None,
            ttl_ms: Some(24 * 3600 * 1000),
        };
        let created = wait_for("a session created", Duration::from_secs(30), || async {
            api.session_create(&req).await.ok()
        })
        .await?;
        ids.push(created.id);
    }
    Ok(ids)
}

/// Waits until the run's queue holds no job that is ready, delayed or in flight. Workers keep
/// claiming meanwhile (a lease of a claim whose answer was lost expires within
/// [`JOB_VISIBILITY`]); a long run may leave a backlog, so the wait fails only when the queue
/// stops shrinking for a minute, or after [`DRAIN_AT_MOST`].
async fn queue_drained(ctx: &Ctx) -> Result<()> {
    let api = ctx.api(0);
    let queue = queue_name(ctx);
    let started = Instant::now();
    let (mut least, mut shrunk_at, mut last) = (u64::MAX, Instant::now(), None);
    loop {
        if let Ok(s) = api.queue_stats(&queue).await {
            let left = s.ready + s.delayed + s.in_flight;
            if left == 0 {
                return Ok(());
            }
            if left < least {
                (least, shrunk_at) = (left, Instant::now());
            }
            last = Some(s);
        }
        if shrunk_at.elapsed() > Duration::from_secs(60) || started.elapsed() > DRAIN_AT_MOST {
            bail!(
                "the queue did not drain after healing in {:.0} s (last seen: {last:?})",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The longest a queue left with a backlog by a long run is given to drain.
const DRAIN_AT_MOST: Duration = Duration::from_secs(900);

fn save_evidence(
    cfg: &RunConfig,
    cluster: &ProcCluster,
    ctx: &Ctx,
    report: &RunReport,
) -> Result<PathBuf> {
    let dir = match &cfg.out_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "stackd-faults-{}-{}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&dir)?;
    let mut history = String::new();
    for op in ctx.rec.ops() {
        history.push_str(&serde_json::to_string(&op)?);
        history.push('\n');
    }
    std::fs::write(dir.join("history.jsonl"), history)?;
    let mut timeline = String::new();
    for (at, what) in ctx.timeline.lock().expect("timeline").iter() {
        let _ = writeln!(timeline, "{:>10.3} ms  {what}", *at as f64 / 1e6);
    }
    std::fs::write(dir.join("timeline.txt"), timeline)?;
    let mut cx = String::new();
    if let Some(c) = &report.check {
        for (_, text) in &c.violations {
            let _ = writeln!(cx, "{text}");
        }
        for k in &c.timeouts {
            let _ = writeln!(cx, "key {k:?}: the check ran out of its time budget");
        }
    }
    std::fs::write(dir.join("counterexample.txt"), cx)?;
    std::fs::write(dir.join("summary.txt"), report.summary())?;
    std::fs::write(dir.join("problems.txt"), report.problems.join("\n"))?;
    for i in 0..cfg.nodes {
        let name = format!("node{}.log", i + 1);
        let _ = std::fs::copy(cluster.root().join(&name), dir.join(&name));
    }
    Ok(dir)
}
