//! The node's view of its cluster: writes from any node (forwarded to the leader),
//! linearizable reads (ReadIndex, batched), joins, and the leader's background duties.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::alias::LogIdOf;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, Instant as _, RaftMetrics, ReadPolicy, ServerState};
use raft::command::{ClusterCmd, ClusterResult, KvCmd, Proposal};
use raft::{Command, NodeId, NodeInfo, Raft, Request, Response, State, TypeConfig};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use transport::tls::PeerId;
use transport::{
    ClusterTls, Gossip, JoinGranted, Liveness, MemberReach, NodeMeta, RpcRequest, RpcResponse,
    Service, ServiceError, Transport, Written,
};

use crate::config::{derived_gossip_addr, Config};

/// Why a write did not give its typed result.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A fenced write whose fence is not the lock's current one; nothing was applied.
    #[error("stale fence (current: {current:?})")]
    StaleFence { current: Option<u64> },
    /// The `Idempotency-Key` was first used for a request of another kind, whose remembered
    /// answer came back.
    #[error("the Idempotency-Key was first used for a different request")]
    IdempotencyMismatch,
}

impl From<WriteError> for ServiceError {
    fn from(e: WriteError) -> ServiceError {
        match e {
            WriteError::Service(e) => e,
            other => ServiceError::Refused(other.to_string()),
        }
    }
}

/// The typed result of an applied proposal.
fn typed<P: Proposal>(response: Response) -> Result<P::Output, WriteError> {
    P::output(response).map_err(|other| match other {
        Response::StaleFence { current } => WriteError::StaleFence { current },
        _ => WriteError::IdempotencyMismatch,
    })
}

/// Wall clock in ms since the Unix epoch; used only to stamp proposals on the leader.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A deliberate bug for the history checker's own test (`tests/it/history.rs`): with the
/// environment variable `STACKD_UNSAFE_STALE_READS=1`, linearizable reads skip ReadIndex and
/// read local state, so a partitioned old leader or a lagging follower answers stale values.
/// Off unless that exact value is set; never set it outside that test.
fn unsafe_stale_reads() -> bool {
    static ON: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var("STACKD_UNSAFE_STALE_READS").is_ok_and(|v| v == "1")
    });
    *ON
}

/// A node's handle on the cluster, shared by the API, the transport server and background
/// tasks.
pub struct Cluster {
    pub id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub state: Arc<RwLock<State>>,
    pub transport: Arc<Transport>,
    pub tls: ClusterTls,
    pub config: Config,
    /// This node's gossip member: liveness and metadata of every node, as seen from here.
    pub gossip: Arc<Gossip>,
    /// Membership changes the autopilot made while this node led, newest last.
    autopilot: Mutex<VecDeque<AutopilotAction>>,
    /// Autopilot actions since start, by action.
    autopilot_totals: Mutex<BTreeMap<&'static str, u64>>,
    reads: ReadBatcher,
}

/// Autopilot actions kept for `GET /v1/cluster`.
const AUTOPILOT_LOG_LEN: usize = 32;

/// One membership change the leader's autopilot made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AutopilotAction {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// `promote` (a caught-up learner, voters below target), `add_voter` (a learner added to
    /// replace a dead voter) or `remove_voter` (a dead voter removed).
    pub action: &'static str,
    pub node: NodeId,
    pub reason: String,
}

type ReadResult = Result<LogIdOf<TypeConfig>, ServiceError>;

/// Batches concurrent linearizable reads behind one ReadIndex round: a read waits for the
/// round that starts after it arrives (an earlier round could predate its write), and every
/// read that queued during a round shares the next one.
#[derive(Default)]
struct ReadBatcher {
    inner: Arc<Mutex<BatchState>>,
    /// Owns the task driving the rounds; shutdown waits for it.
    tasks: TaskTracker,
}

#[derive(Default)]
struct BatchState {
    running: bool,
    waiting: Vec<oneshot::Sender<ReadResult>>,
}

impl Cluster {
    // One handle per part of the node, each made once by `server::Node::start`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        info: NodeInfo,
        raft: Raft,
        state: Arc<RwLock<State>>,
        transport: Arc<Transport>,
        tls: ClusterTls,
        config: Config,
        gossip: Arc<Gossip>,
    ) -> Arc<Self> {
        if unsafe_stale_reads() {
            warn!(
                "STACKD_UNSAFE_STALE_READS=1: linearizable reads skip ReadIndex (test-only fault)"
            );
        }
        Arc::new(Self {
            id,
            info,
            raft,
            state,
            transport,
            tls,
            config,
            gossip,
            autopilot: Mutex::new(VecDeque::new()),
            autopilot_totals: Mutex::new(BTreeMap::new()),
            reads: ReadBatcher::default(),
        })
    }

    /// The tracker owning the tasks that drive ReadIndex rounds.
    pub fn read_rounds(&self) -> &TaskTracker {
        &self.reads.tasks
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// How recently the leader must have heard from a member to count it reachable: one
    /// election timeout (a follower that heard nothing for that long starts an election).
    pub fn contact_window(&self) -> Duration {
        Duration::from_millis(self.config.raft.election_timeout_ms)
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.api.request_timeout_ms)
    }

    /// The current leader and its addresses, as this node knows them.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let (id, node) = known_leader(&self.raft)?;
        Some((id, node?))
    }

    /// Waits (up to `until`) for a leader other than `not` whose address this node knows.
    ///
    /// The address matters as much as the id: a node that just joined learns the leader's id
    /// from its first heartbeat, before the replicated log tells it the leader's address. A
    /// wait that returned on the id alone would return at once, again and again, and the
    /// caller's retry loop would spin without yielding, starving the runtime (and with it the
    /// very transport that would bring the address).
    async fn wait_for_leader(
        &self,
        not: Option<NodeId>,
        until: Instant,
    ) -> Option<(NodeId, NodeInfo)> {
        let remaining = until.saturating_duration_since(Instant::now());
        let _ = self
            .raft
            .wait(Some(remaining))
            .metrics(
                move |m| addressed_leader(m).is_some_and(|(id, _)| Some(id) != not),
                "leader and its address known",
            )
            .await;
        self.leader().filter(|(id, _)| Some(*id) != not)
    }

    /// Proposes a write through the leader, from any node, and answers its typed result.
    ///
    /// `Unavailable` means the write was certainly not applied; `Unknown` that it may have
    /// been (a forward or proposal was under way when the time ran out or the leader changed).
    pub async fn write<P: Proposal>(
        &self,
        proposal: P,
        idempotency_key: Option<String>,
    ) -> Result<P::Output, WriteError> {
        let written = self
            .write_indexed(
                proposal.into(),
                idempotency_key,
                Instant::now() + self.request_timeout(),
            )
            .await?;
        typed::<P>(written.response)
    }

    /// Like [`Cluster::write`], and returns only once this node has applied the write too, so
    /// a local (stale) read on this node sees it: read-your-writes through the same node.
    /// If this node lags past the request deadline the write still succeeded and is
    /// answered; it becomes visible here once applied.
    pub async fn write_visible<P: Proposal>(
        &self,
        proposal: P,
        idempotency_key: Option<String>,
    ) -> Result<P::Output, WriteError> {
        let deadline = Instant::now() + self.request_timeout();
        let written = self
            .write_indexed(proposal.into(), idempotency_key, deadline)
            .await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = self
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(written.log_index), "write visible locally")
            .await
        {
            warn!(error = %e, index = written.log_index, "write not yet applied on this node");
        }
        typed::<P>(written.response)
    }

    async fn write_indexed(
        &self,
        command: Command,
        idempotency_key: Option<String>,
        deadline: Instant,
    ) -> Result<Written, ServiceError> {
        let req = Request {
            stamp_ms: 0,
            idempotency_key,
            command,
        };
        let settle = Duration::from_millis(self.config.raft.election_timeout_ms * 2);
        let mut hint: Option<(NodeId, NodeInfo)> = None;
        // A node that just refused or could not be reached; it may lead again later.
        let mut avoid: Option<NodeId> = None;
        // Every path that leaves the loop early returns; staying in it means the write was
        // certainly not appended anywhere, so running out of time is `Unavailable`.
        while Instant::now() < deadline {
            let leader = match hint
                .take()
                .or_else(|| self.leader().filter(|(id, _)| Some(*id) != avoid))
            {
                Some(l) => l,
                None => {
                    let until = deadline.min(Instant::now() + settle);
                    match self.wait_for_leader(avoid, until).await {
                        Some(l) => l,
                        None => {
                            avoid = None;
                            continue;
                        }
                    }
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = if leader.0 == self.id {
                match tokio::time::timeout(remaining, self.write_local(req.clone())).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ServiceError::Unknown(
                            "timed out waiting for the write to commit".into(),
                        ))
                    }
                }
            } else {
                let forward = RpcRequest::Write(req.clone());
                match self
                    .transport
                    .call_node(leader.0, &leader.1.cluster_addr, &forward, remaining)
                    .await
                {
                    Ok(RpcResponse::Write(r)) => r,
                    Ok(other) => {
                        return Err(ServiceError::Unknown(format!(
                            "unexpected answer from leader: {other:?}"
                        )))
                    }
                    // Never sent: safe to try the next leader.
                    Err(transport::Error::Connect { reason, .. }) => {
                        warn!(leader = leader.0, %reason, "cannot reach leader to forward write");
                        avoid = Some(leader.0);
                        continue;
                    }
                    Err(transport::Error::Timeout(_)) => {
                        return Err(ServiceError::Unknown(
                            "timed out waiting for the leader".into(),
                        ))
                    }
                    Err(e) => {
                        return Err(ServiceError::Unknown(format!(
                            "forward to leader failed: {e}"
                        )))
                    }
                }
            };
            match result {
                // Rejected before it was appended: retrying elsewhere cannot apply it twice.
                Err(ServiceError::NotLeader { leader: next }) => {
                    avoid = Some(leader.0);
                    hint = next.filter(|(id, _)| *id != leader.0);
                }
                other => return other,
            }
        }
        Err(ServiceError::Unavailable(
            "no leader reachable before the request timeout; the write was not applied".into(),
        ))
    }

    /// Proposes on this node, which must be the leader; stamps the replicated clock.
    pub async fn write_local(&self, mut req: Request) -> Result<Written, ServiceError> {
        req.stamp_ms = now_ms();
        match self.raft.client_write(req).await {
            Ok(r) => Ok(Written {
                response: r.data,
                log_index: r.log_id.index,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ServiceError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(ServiceError::Unknown(
                    "leader changed; the write may or may not have been applied".into(),
                ))
            }
            Err(RaftError::APIError(e)) => Err(ServiceError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ServiceError::Unknown(format!("raft stopped: {e}"))),
        }
    }

    /// Waits until this node's state reflects every write acknowledged before the call
    /// (ReadIndex through the leader, then wait for the local apply).
    pub async fn read_barrier(&self) -> Result<(), ServiceError> {
        if unsafe_stale_reads() {
            return Ok(());
        }
        self.read_barrier_until(Instant::now() + self.request_timeout())
            .await
    }

    /// Whether this node can serve a linearizable request now: it knows a leader, reaches it,
    /// the leader confirms its leadership with a quorum, and this node has applied up to the
    /// leader's read index. Bounded by one second or two election timeouts, whichever is
    /// longer, so a readiness probe gets an answer quickly.
    pub async fn check_ready(&self) -> Result<(), ServiceError> {
        if !self.is_ready() {
            return Err(ServiceError::Unavailable(
                "no known leader, or still applying committed entries".into(),
            ));
        }
        let within = Duration::from_millis(self.config.raft.election_timeout_ms * 2)
            .max(Duration::from_secs(1));
        self.read_barrier_until(Instant::now() + within).await
    }

    async fn read_barrier_until(&self, deadline: Instant) -> Result<(), ServiceError> {
        let settle = Duration::from_millis(self.config.raft.election_timeout_ms * 2);
        let log_id = loop {
            match self.read_index(deadline).await {
                Ok(id) => break id,
                // During a leader change the round fails fast; a read changes nothing, so it
                // is simply asked again once a leader is known, within the same deadline.
                Err(ServiceError::NotLeader { .. }) if Instant::now() < deadline => {
                    let until = deadline.min(Instant::now() + settle);
                    let _ = self.wait_for_leader(None, until).await;
                }
                Err(e) => return Err(e),
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(log_id.index), "linearizable read")
            .await
            .map_err(|_| {
                ServiceError::Unavailable("timed out catching up to the read index".into())
            })?;
        Ok(())
    }

    /// Joins the next ReadIndex round (starting one if none is running) and returns its index.
    async fn read_index(&self, deadline: Instant) -> ReadResult {
        let (tx, rx) = oneshot::channel();
        let drive = {
            let mut s = self.reads.inner.lock().expect("read batch lock");
            s.waiting.push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if drive {
            let raft = self.raft.clone();
            let transport = self.transport.clone();
            let this_id = self.id;
            let timeout = self.request_timeout();
            let batcher = self.reads.inner.clone();
            self.reads.tasks.spawn(async move {
                loop {
                    let batch = {
                        let mut s = batcher.lock().expect("read batch lock");
                        if s.waiting.is_empty() {
                            s.running = false;
                            return;
                        }
                        std::mem::take(&mut s.waiting)
                    };
                    let res = read_index_round(&raft, &transport, this_id, timeout).await;
                    for tx in batch {
                        let _ = tx.send(res.clone());
                    }
                }
            });
        }
        tokio::time::timeout_at(deadline, rx)
            .await
            .map_err(|_| ServiceError::Unavailable("timed out confirming leadership".into()))?
            .map_err(|_| ServiceError::Unavailable("read round dropped".into()))?
    }

    /// The leader's duties, run on every node and active only while it leads: tick the
    /// replicated clock when a deadline is due, promote caught-up learners.
    pub async fn run_leader_tasks(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_promote_check = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if !self.raft.is_leader() {
                continue;
            }
            let due = self
                .state
                .read()
                .expect("state lock")
                .next_deadline_ms()
                .is_some_and(|at| at <= now_ms());
            if due {
                let req = Request {
                    stamp_ms: 0,
                    idempotency_key: None,
                    command: Command::Tick,
                };
                if let Err(e) = self.write_local(req).await {
                    warn!(error = %e, "tick proposal failed");
                }
            }
            if last_promote_check.elapsed() >= Duration::from_millis(500) {
                last_promote_check = Instant::now();
                self.promote_caught_up_learner().await;
                self.compact_kv_history().await;
                if self.config.autopilot.replace_dead {
                    self.replace_dead_voter().await;
                }
            }
        }
    }

    /// Proposes a compaction once the key-value history holds more than 10% past its bound,
    /// keeping the last `kv_history_revisions` revisions.
    async fn compact_kv_history(&self) {
        let keep = self.config.limits.kv_history_revisions;
        let (revision, compacted) = {
            let st = self.state.read().expect("state lock");
            (st.meta.revision, st.compact_revision())
        };
        if revision.saturating_sub(compacted) <= keep + keep / 10 {
            return;
        }
        let req = Request {
            stamp_ms: 0,
            idempotency_key: None,
            command: Command::Kv(KvCmd::Compact {
                revision: revision - keep,
            }),
        };
        match self.write_local(req).await {
            Ok(_) => info!(
                compact_revision = revision - keep,
                "key-value history compacted"
            ),
            Err(e) => warn!(error = %e, "compaction proposal failed"),
        }
    }

    /// Promotes one learner that has caught up, while voters are below the target.
    async fn promote_caught_up_learner(&self) {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return; // a membership change is in progress
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() >= self.config.raft.target_voters {
            return;
        }
        // A learner gossip sees down is skipped: its replication progress is stale.
        let view = self.gossip.snapshot();
        for learner in membership.learner_ids() {
            let down = view
                .get(&learner)
                .is_some_and(|p| p.liveness == Liveness::Down);
            if caught_up(&m, learner, self.contact_window()) && !down {
                info!(
                    node = learner,
                    voters = voters.len(),
                    "promoting caught-up learner to voter"
                );
                match self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([learner])), true)
                    .await
                {
                    Ok(_) => {
                        info!(node = learner, "learner promoted");
                        self.record(
                            "promote",
                            learner,
                            format!(
                                "voters {} below target {}",
                                voters.len(),
                                self.config.raft.target_voters
                            ),
                        );
                    }
                    Err(e) => warn!(node = learner, error = %e, "promotion failed"),
                }
                return;
            }
        }
    }

    // --- gossip and autopilot ---

    /// Keeps gossip fed: the Raft members as seeds, and this node's metadata. Runs on every
    /// node until `shutdown`.
    pub async fn run_gossip_feed(
        self: Arc<Self>,
        inflight: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resolved: BTreeMap<String, std::net::SocketAddr> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let m = self.metrics();
            let members: Vec<(NodeId, String)> = m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .filter_map(|(id, n)| Some((*id, derived_gossip_addr(&n.cluster_addr)?)))
                .collect();
            let mut seeds = BTreeMap::new();
            for (id, addr) in members {
                if let Some(a) = resolved.get(&addr) {
                    seeds.insert(id, *a);
                    continue;
                }
                // Host names are resolved once per address, off the hot path.
                if let Ok(Some(a)) = tokio::net::lookup_host(addr.as_str())
                    .await
                    .map(|mut it| it.next())
                {
                    resolved.insert(addr, a);
                    seeds.insert(id, a);
                }
            }
            self.gossip.set_seeds(seeds);
            let busy = self.config.api.max_inflight_requests - inflight.available_permits();
            self.gossip.set_local_meta(NodeMeta {
                api_addr: self.info.api_addr.clone(),
                cluster_addr: self.info.cluster_addr.clone(),
                applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
                inflight_requests: busy as u64,
                load_avg_1m: load_avg_1m(),
                replication: self.reach_of_members(&m),
            });
        }
    }

    /// While this node leads: how it reaches each other member (empty otherwise).
    pub fn reach_of_members(&self, m: &RaftMetrics<TypeConfig>) -> Vec<MemberReach> {
        if m.current_leader != Some(self.id) {
            return Vec::new();
        }
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, _)| {
                let (lag, acked) = replication_of(m, *id);
                MemberReach {
                    node: *id,
                    lag,
                    acked_ms_ago: acked.map(|d| d.as_millis() as u64),
                }
            })
            .collect()
    }

    /// How the leader reaches each other member: this node's own view while it leads, else
    /// what the leader last published in gossip (its ages brought up to now). `None` without a
    /// known leader or before its gossip arrived.
    pub fn leader_reach(&self) -> Option<(NodeId, Vec<MemberReach>)> {
        let m = self.metrics();
        let leader = m.current_leader?;
        if leader == self.id {
            return Some((leader, self.reach_of_members(&m)));
        }
        let view = self.gossip.snapshot();
        let (meta, at) = view.get(&leader)?.meta.as_ref()?;
        let age = at.elapsed().as_millis() as u64;
        let reach = meta
            .replication
            .iter()
            .map(|r| MemberReach {
                acked_ms_ago: r.acked_ms_ago.map(|a| a + age),
                ..r.clone()
            })
            .collect();
        Some((leader, reach))
    }

    /// One step of replacing a voter that gossip has seen down for longer than the grace
    /// period, while this node leads (see [`plan_replacement`] for the rules). Adding the
    /// spare and removing the dead voter are two passes, 500 ms apart: one membership change
    /// at a time.
    async fn replace_dead_voter(&self) {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return;
        }
        let seen: BTreeMap<NodeId, (Liveness, Duration)> = self
            .gossip
            .snapshot()
            .into_iter()
            .map(|(id, p)| (id, (p.liveness, p.since.elapsed())))
            .collect();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let ready: BTreeSet<NodeId> = learners
            .iter()
            .copied()
            .filter(|l| caught_up(&m, *l, self.contact_window()))
            .collect();
        let grace = Duration::from_millis(self.config.autopilot.dead_grace_ms);
        let Some(step) = plan_replacement(
            self.id,
            &voters,
            &learners,
            &ready,
            &seen,
            self.config.raft.target_voters,
            grace,
        ) else {
            return;
        };
        let timeout = Duration::from_millis(self.config.api.request_timeout_ms * 2);
        let (change, action, node, reason) = match step {
            Step::AddVoter { node, replaces } => {
                let down_ms = seen.get(&replaces).map_or(0, |(_, d)| d.as_millis());
                info!(
                    node,
                    replaces,
                    down_ms = down_ms as u64,
                    "autopilot: adding a learner as voter to replace a dead voter"
                );
                (
                    ChangeMembers::AddVoterIds(BTreeSet::from([node])),
                    "add_voter",
                    node,
                    format!("replaces voter {replaces}, down in gossip for {down_ms} ms"),
                )
            }
            Step::RemoveVoter { node } => {
                let down_ms = seen.get(&node).map_or(0, |(_, d)| d.as_millis());
                info!(
                    node,
                    down_ms = down_ms as u64,
                    "autopilot: removing dead voter"
                );
                (
                    ChangeMembers::RemoveVoters(BTreeSet::from([node])),
                    "remove_voter",
                    node,
                    format!("down in gossip for {down_ms} ms"),
                )
            }
        };
        // A removed voter is not kept as a learner: it is dead, and a spare it is not.
        match tokio::time::timeout(timeout, self.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => {
                info!(node, action, "autopilot: membership changed");
                self.record(action, node, reason);
            }
            Ok(Err(e)) => warn!(node, action, error = %e, "autopilot: membership change failed"),
            Err(_) => warn!(node, action, "autopilot: membership change timed out"),
        }
    }

    fn record(&self, action: &'static str, node: NodeId, reason: String) {
        *self
            .autopilot_totals
            .lock()
            .expect("autopilot totals lock")
            .entry(action)
            .or_default() += 1;
        let mut log = self.autopilot.lock().expect("autopilot log lock");
        if log.len() == AUTOPILOT_LOG_LEN {
            log.pop_front();
        }
        log.push_back(AutopilotAction {
            at_ms: now_ms(),
            action,
            node,
            reason,
        });
    }

    /// How many `action`s the autopilot made on this node since it started.
    pub fn autopilot_total(&self, action: &str) -> u64 {
        self.autopilot_totals
            .lock()
            .expect("autopilot totals lock")
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// The autopilot's recent membership changes on this node, oldest first.
    pub fn autopilot_actions(&self) -> Vec<AutopilotAction> {
        self.autopilot
            .lock()
            .expect("autopilot log lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The initializing node's one-time cluster setup entry.
    pub async fn init_cluster_state(
        &self,
        cluster_id: String,
        token: &str,
    ) -> Result<(), ServiceError> {
        let command = ClusterCmd::Init {
            cluster_id,
            join_token_sha256: transport::tls::token_digest(token),
        };
        // Already initialized (a replayed start-up) is as good as done.
        self.write(command, None).await?;
        Ok(())
    }

    /// Long-polls this node's applied state: `check` runs now and after every apply until it
    /// finds what it looks for. `Ok(None)` when `deadline` passes first; an error when Raft
    /// has stopped.
    pub async fn wait_for_state<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Result<Option<T>, ServiceError> {
        let mut applied = self.raft.metrics();
        loop {
            if let Some(found) = check(&self.state.read().expect("state lock")) {
                return Ok(Some(found));
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ServiceError::Unavailable("shutting down".into())),
                Err(_) => return Ok(None),
            }
        }
    }

    /// Hands leadership to voter `to` and waits (up to two election timeouts) until this
    /// node sees a leader other than itself; answers the new leader.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<NodeId, ServiceError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let me = self.id;
        let wait = Duration::from_millis(self.config.raft.election_timeout_ms * 4);
        self.raft
            .wait(Some(wait))
            .metrics(
                move |m| m.current_leader.is_some_and(|l| l != me),
                "leadership transferred",
            )
            .await
            .map_err(|_| {
                ServiceError::Unavailable(format!(
                    "node {to} did not take over within {wait:?}; this node may still lead"
                ))
            })?;
        Ok(self.metrics().current_leader.unwrap_or(to))
    }

    /// The voter that has replicated the most of the leader's log, other than this node.
    pub fn best_successor(&self) -> Option<NodeId> {
        let m = self.metrics();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let repl = m.replication.as_ref()?;
        voters
            .into_iter()
            .filter(|v| *v != self.id)
            .max_by_key(|v| repl.get(v).cloned().flatten().map(|l| l.index))
    }

    /// Whether this node knows a leader and has applied everything it knows is committed.
    pub fn is_ready(&self) -> bool {
        let m = self.metrics();
        let committed = m.local_committed.map(|l| l.index);
        m.current_leader.is_some()
            && m.last_applied.map(|l| l.index) >= committed
            && matches!(
                m.state,
                ServerState::Leader | ServerState::Follower | ServerState::Learner
            )
    }
}

/// One membership change the autopilot wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Make learner `node` a voter, to replace dead voter `replaces`.
    AddVoter { node: NodeId, replaces: NodeId },
    /// Remove dead voter `node`.
    RemoveVoter { node: NodeId },
}

/// The autopilot's next step about dead voters, if any, from the leader's facts: `me` (the
/// leader, always alive), the voter and learner sets, the learners caught up with the log
/// (`ready`), and what gossip has seen of each node (liveness and for how long).
///
/// - Dead means `down` for at least `grace`; `suspect` or never seen is not dead.
/// - The voter down longest is handled first.
/// - Every change needs a majority of alive voters in the current set (else it could not
///   commit, and nothing is done).
/// - Voters at or below `target`: an alive, caught-up learner is added first; without one
///   nothing happens (the cluster never shrinks by itself).
/// - Voters above `target`: the dead voter is removed, if the alive voters are a majority of
///   the remaining set too.
fn plan_replacement(
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    ready: &BTreeSet<NodeId>,
    seen: &BTreeMap<NodeId, (Liveness, Duration)>,
    target: usize,
    grace: Duration,
) -> Option<Step> {
    let alive = |id: NodeId| id == me || seen.get(&id).is_some_and(|(l, _)| *l != Liveness::Down);
    let (dead, _) = voters
        .iter()
        .filter(|v| **v != me)
        .filter_map(|v| match seen.get(v) {
            Some((Liveness::Down, d)) if *d >= grace => Some((*v, *d)),
            _ => None,
        })
        .max_by_key(|(_, d)| *d)?;
    let alive_voters = voters.iter().filter(|v| alive(**v)).count();
    if alive_voters * 2 <= voters.len() {
        // Checked every pass while it lasts: debug, not warn. `/v1/cluster` shows it.
        debug!(
            dead,
            alive_voters,
            voters = voters.len(),
            "autopilot: a voter is down but the alive voters are no majority; not changing membership"
        );
        return None;
    }
    if voters.len() > target {
        // The dead voter is not among the alive ones, so they stay as many in a set one
        // smaller.
        let remaining = voters.len() - 1;
        return (alive_voters * 2 > remaining).then_some(Step::RemoveVoter { node: dead });
    }
    let spare = learners
        .iter()
        .copied()
        .find(|l| ready.contains(l) && seen.get(l).is_some_and(|(s, _)| *s == Liveness::Alive));
    match spare {
        // The new set has one more voter, and it is alive: still a majority.
        Some(node) => Some(Step::AddVoter {
            node,
            replaces: dead,
        }),
        None => {
            debug!(
                dead,
                "autopilot: a voter is down but no caught-up alive learner can replace it"
            );
            None
        }
    }
}

/// How far the leader sees `node`: its replication lag (entries of the leader's log it has not
/// acknowledged; `None` when it has acknowledged none yet) and how long ago it last
/// acknowledged a heartbeat or an append (`None`: never). Leader's metrics only.
fn replication_of(m: &RaftMetrics<TypeConfig>, node: NodeId) -> (Option<u64>, Option<Duration>) {
    let last = m.last_log_index.unwrap_or(0);
    let lag = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&node).cloned().flatten())
        .map(|l| last.saturating_sub(l.index));
    let acked = m
        .heartbeat
        .as_ref()
        .and_then(|h| h.get(&node).cloned().flatten())
        .map(|t| t.elapsed());
    (lag, acked)
}

/// Whether `node` has replicated the leader's log to within 100 entries and acknowledged the
/// leader within `fresh`. A node that has acknowledged nothing yet is not caught up, however
/// short the log: promoting a voter the leader cannot reach weakens the quorum.
fn caught_up(m: &RaftMetrics<TypeConfig>, node: NodeId, fresh: Duration) -> bool {
    matches!(replication_of(m, node), (Some(lag), Some(ago)) if lag <= 100 && ago <= fresh)
}

/// The machine's one-minute load average (Linux `/proc/loadavg`), if the OS reports it.
pub(crate) fn load_avg_1m() -> Option<f32> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The leader this node knows of, with its addresses when the membership has them.
fn known_leader(raft: &Raft) -> Option<(NodeId, Option<NodeInfo>)> {
    let m = raft.metrics();
    let m = m.borrow_watched();
    let id = m.current_leader?;
    Some((id, m.membership_config.membership().get_node(&id).cloned()))
}

/// The leader in `m` when its address is known too.
fn addressed_leader(m: &RaftMetrics<TypeConfig>) -> Option<(NodeId, &NodeInfo)> {
    let id = m.current_leader?;
    Some((id, m.membership_config.membership().get_node(&id)?))
}

/// One ReadIndex round: the leader confirms its leadership with a quorum and answers the
/// index a read must wait for.
async fn read_index_round(
    raft: &Raft,
    transport: &Transport,
    this_id: NodeId,
    timeout: Duration,
) -> ReadResult {
    let Some((leader, node)) = known_leader(raft) else {
        return Err(ServiceError::NotLeader { leader: None });
    };
    if leader == this_id {
        return local_read_index(raft, timeout).await;
    }
    let Some(node) = node else {
        return Err(ServiceError::Unavailable("leader address unknown".into()));
    };
    match transport
        .call_node(leader, &node.cluster_addr, &RpcRequest::ReadIndex, timeout)
        .await
    {
        Ok(RpcResponse::ReadIndex(r)) => r,
        Ok(other) => Err(ServiceError::Unavailable(format!(
            "unexpected answer: {other:?}"
        ))),
        Err(e) => Err(ServiceError::Unavailable(format!(
            "leader unreachable: {e}"
        ))),
    }
}

/// Bounded by `timeout`: without a quorum the leader cannot confirm its leadership, and a
/// stuck round would hold up every read queued behind it.
async fn local_read_index(raft: &Raft, timeout: Duration) -> ReadResult {
    let round = tokio::time::timeout(timeout, raft.get_read_linearizer(ReadPolicy::ReadIndex));
    let Ok(result) = round.await else {
        return Err(ServiceError::Unavailable(
            "no quorum confirmed the leader in time".into(),
        ));
    };
    match result {
        Ok(lin) => Ok(*lin.read_log_id().log_id()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
            Err(ServiceError::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            })
        }
        Err(RaftError::APIError(e)) => Err(ServiceError::Unavailable(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(ServiceError::Unavailable(e.to_string())),
    }
}

impl Service for Cluster {
    async fn forward(&self, req: Request) -> Result<Written, ServiceError> {
        let timeout = self.request_timeout();
        match tokio::time::timeout(timeout, self.write_local(req)).await {
            Ok(r) => r,
            Err(_) => Err(ServiceError::Unknown(
                "timed out waiting for the write to commit".into(),
            )),
        }
    }

    async fn read_index(&self) -> Result<LogIdOf<TypeConfig>, ServiceError> {
        local_read_index(&self.raft, self.request_timeout()).await
    }

    async fn join(
        &self,
        token: String,
        node: NodeInfo,
        public_key: Vec<u8>,
    ) -> Result<JoinGranted, ServiceError> {
        if !self.raft.is_leader() {
            let Some((leader_id, leader)) = self.leader() else {
                return Err(ServiceError::Unavailable(
                    "no leader to admit the node; retry".into(),
                ));
            };
            let relay = RpcRequest::JoinWithKey {
                token,
                node,
                public_key,
            };
            return match self
                .transport
                .call_node(
                    leader_id,
                    &leader.cluster_addr,
                    &relay,
                    self.request_timeout(),
                )
                .await
            {
                Ok(RpcResponse::Joined(r)) => r,
                Ok(other) => Err(ServiceError::Unavailable(format!(
                    "unexpected answer: {other:?}"
                ))),
                Err(e) => Err(ServiceError::Unavailable(format!(
                    "leader unreachable: {e}"
                ))),
            };
        }
        // A token created just before a leader change is committed but maybe not applied
        // here yet.
        self.read_barrier().await?;
        self.check_join_token(&token)?;
        let cluster_id = self.tls.cluster_id.clone();
        let m = self.metrics();
        if let Some((id, _)) = m
            .membership_config
            .membership()
            .nodes()
            .find(|(_, n)| n.cluster_addr == node.cluster_addr)
        {
            return Err(ServiceError::Refused(format!(
                "node {id} already uses cluster address {}; remove it first or use another address",
                node.cluster_addr
            )));
        }
        // Check the key before an id is spent on it.
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(ServiceError::Refused(
                "node public key is not an uncompressed P-256 point".into(),
            ));
        }
        let id = match self.write(ClusterCmd::AllocateNodeId, None).await? {
            ClusterResult::NodeId(id) => id,
            other => {
                return Err(ServiceError::Unknown(format!(
                    "node id allocation answered {other:?}"
                )))
            }
        };
        let cert_der = self
            .tls
            .issue(id, &public_key)
            .map_err(|e| ServiceError::Refused(format!("cannot issue a certificate: {e}")))?;
        info!(node = id, addr = %node.cluster_addr, "admitting node as learner");
        // The id is allocated now; a membership change already under way (a promotion) only
        // delays the learner, so retry under the same id rather than waste it.
        let deadline = Instant::now() + self.request_timeout();
        loop {
            match self.raft.add_learner(id, node.clone(), false).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    warn!(node = id, error = %e, "adding learner; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(ServiceError::Unavailable(format!(
                        "adding learner {id} failed: {e}"
                    )))
                }
            }
        }
        Ok(JoinGranted {
            node_id: id,
            cluster_id,
            cert_der,
            ca_cert_der: self.tls.ca_cert_der.clone(),
            ca_key_der: self.tls.ca_key_der.clone(),
        })
    }

    fn admit_peer(&self, peer: &PeerId) -> Result<(), String> {
        if self
            .state
            .read()
            .expect("state lock")
            .security()
            .removed_nodes
            .contains(&peer.node_id)
        {
            return Err(removed_message(peer.node_id, &peer.cluster_id));
        }
        Ok(())
    }
}

/// What a removed node is told, and prints before it exits.
pub fn removed_message(id: NodeId, cluster_id: &str) -> String {
    format!(
        "node {id} was removed from cluster {cluster_id}; wipe the data dir and join again with \
         a token (`stackd token create`)"
    )
}

impl Cluster {
    /// Whether `token` admits a node now: the founding token, or a created one that has not
    /// expired (on this node's clock).
    fn check_join_token(&self, token: &str) -> Result<(), ServiceError> {
        let digest = transport::tls::token_digest(token);
        let st = self.state.read().expect("state lock");
        if st.meta.cluster_id.is_none() {
            return Err(ServiceError::Unavailable(
                "cluster is still initializing; retry".into(),
            ));
        }
        if st.meta.join_token_sha256.as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        if st.security().revoked_tokens.contains_key(&digest) {
            return Err(ServiceError::Refused("join token revoked".into()));
        }
        match st.security().join_tokens.get(&digest) {
            Some(exp) if *exp > now_ms() => Ok(()),
            Some(_) => Err(ServiceError::Refused("join token expired".into())),
            None => Err(ServiceError::Refused("invalid join token".into())),
        }
    }

    /// The join tokens that admit nodes or were revoked, as this node's applied state has
    /// them (ids only: the cluster keeps no token, only its SHA-256).
    pub fn join_tokens(&self) -> serde_json::Value {
        let st = self.state.read().expect("state lock");
        let now = now_ms();
        let mut tokens = Vec::new();
        if let Some(d) = &st.meta.join_token_sha256 {
            tokens.push(serde_json::json!({
                "id": raft::state::token_id(d),
                "founding": true,
                "expires_at_ms": null,
                "expired": false,
            }));
        }
        for (d, exp) in &st.security().join_tokens {
            tokens.push(serde_json::json!({
                "id": raft::state::token_id(d),
                "founding": false,
                "expires_at_ms": exp,
                "expired": *exp <= now,
            }));
        }
        let revoked: Vec<_> = st
            .security()
            .revoked_tokens
            .iter()
            .map(|(d, at)| serde_json::json!({ "id": raft::state::token_id(d), "revoked_at_ms": at }))
            .collect();
        serde_json::json!({ "tokens": tokens, "revoked": revoked })
    }

    /// Revokes the join token with this id (the founding one included); `Ok(false)` when no
    /// token has that id.
    pub async fn revoke_join_token(&self, token_id: &str) -> Result<bool, ServiceError> {
        let r = self
            .write_visible(
                ClusterCmd::JoinTokenRevoke {
                    token_id: token_id.to_string(),
                },
                None,
            )
            .await?;
        Ok(r == ClusterResult::Done)
    }

    /// Creates a join token valid for `ttl_ms`; answers it, its id and its expiry.
    pub async fn create_join_token(
        &self,
        ttl_ms: u64,
    ) -> Result<(String, String, u64), ServiceError> {
        let token = transport::tls::new_join_token(self.tls.ca_fingerprint());
        let token_sha256 = transport::tls::token_digest(&token);
        let id = raft::state::token_id(&token_sha256).to_string();
        let expires_at_ms = now_ms().saturating_add(ttl_ms);
        self.write(
            ClusterCmd::JoinTokenCreate {
                token_sha256,
                expires_at_ms,
            },
            None,
        )
        .await?;
        Ok((token, id, expires_at_ms))
    }

    /// Checks that the members still count this node in: every second while it seems cut off
    /// (no leader known, or not in its own membership), every 10 s otherwise (a removed
    /// learner may never notice). A member that refuses it as removed makes the transport
    /// report it (`Transport::removed`).
    pub async fn watch_membership(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.raft.is_leader() {
                continue;
            }
            let m = self.metrics();
            let membership = m.membership_config.membership();
            let cut_off = m.current_leader.is_none() || membership.get_node(&self.id).is_none();
            if !cut_off && round % 10 != 0 {
                continue;
            }
            let peers: Vec<(NodeId, NodeInfo)> = membership
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .map(|(id, n)| (*id, n.clone()))
                .collect();
            for (id, n) in peers {
                let hello = self.transport.call_node(
                    id,
                    &n.cluster_addr,
                    &RpcRequest::Hello,
                    Duration::from_secs(2),
                );
                if let Ok(RpcResponse::Hello) = hello.await {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn seen(facts: &[(NodeId, Liveness, u64)]) -> BTreeMap<NodeId, (Liveness, Duration)> {
        facts
            .iter()
            .map(|(id, l, secs)| (*id, (*l, Duration::from_secs(*secs))))
            .collect()
    }

    use Liveness::{Alive, Down, Suspect};

    #[test]
    fn a_voter_down_past_the_grace_period_is_replaced_by_a_ready_spare_then_removed() {
        let facts = seen(&[(2, Alive, 100), (3, Down, 31), (4, Alive, 100)]);
        let plan = |voters: &[NodeId], learners: &[NodeId]| {
            plan_replacement(
                1,
                &set(voters),
                &set(learners),
                &set(&[4]),
                &facts,
                3,
                GRACE,
            )
        };
        assert_eq!(
            plan(&[1, 2, 3], &[4]),
            Some(Step::AddVoter {
                node: 4,
                replaces: 3
            })
        );
        // Next pass: voters above target, the dead one goes.
        assert_eq!(
            plan(&[1, 2, 3, 4], &[]),
            Some(Step::RemoveVoter { node: 3 })
        );
        // Done: nothing more.
        assert_eq!(plan(&[1, 2, 4], &[]), None);
    }

    #[test]
    fn nothing_happens_within_the_grace_period_or_without_a_verdict_or_a_spare() {
        let v = set(&[1, 2, 3]);
        let l = set(&[4]);
        let ready = set(&[4]);
        let run = |facts: &[(NodeId, Liveness, u64)], ready: &BTreeSet<NodeId>| {
            plan_replacement(1, &v, &l, ready, &seen(facts), 3, GRACE)
        };
        assert_eq!(
            run(&[(2, Alive, 9), (3, Down, 29), (4, Alive, 9)], &ready),
            None,
            "within grace"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (3, Suspect, 99), (4, Alive, 9)], &ready),
            None,
            "suspect is no verdict"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (4, Alive, 9)], &ready),
            None,
            "never seen is no verdict"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (3, Down, 99), (4, Alive, 9)], &set(&[])),
            None,
            "the spare has not caught up"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (3, Down, 99), (4, Suspect, 9)], &ready),
            None,
            "the spare is not alive"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (3, Down, 99)], &ready),
            None,
            "gossip has not seen the spare"
        );
        // The leader never judges itself.
        assert_eq!(
            plan_replacement(
                1,
                &v,
                &l,
                &ready,
                &seen(&[(1, Down, 99), (2, Alive, 9), (3, Alive, 9), (4, Alive, 9)]),
                3,
                GRACE
            ),
            None
        );
    }

    #[test]
    fn no_change_is_made_without_a_majority_of_alive_voters() {
        // 3 voters, 2 dead: the leader alone is no majority.
        let facts = seen(&[(2, Down, 99), (3, Down, 99), (4, Alive, 9)]);
        assert_eq!(
            plan_replacement(
                1,
                &set(&[1, 2, 3]),
                &set(&[4]),
                &set(&[4]),
                &facts,
                3,
                GRACE
            ),
            None
        );
        // 4 voters above a target of 3, 2 of them dead: 2 of 4 is no majority either.
        let facts = seen(&[(2, Alive, 9), (3, Down, 99), (4, Down, 99)]);
        assert_eq!(
            plan_replacement(
                1,
                &set(&[1, 2, 3, 4]),
                &set(&[]),
                &set(&[]),
                &facts,
                3,
                GRACE
            ),
            None
        );
        // 5 voters, 2 dead: 3 of 5 alive; a spare joins (4 of 6), then the dead go one by
        // one, the one down longest first.
        let facts = seen(&[
            (2, Alive, 9),
            (3, Alive, 9),
            (4, Down, 40),
            (5, Down, 90),
            (6, Alive, 9),
        ]);
        let plan = |voters: &[NodeId], learners: &[NodeId]| {
            plan_replacement(
                1,
                &set(voters),
                &set(learners),
                &set(&[6]),
                &facts,
                5,
                GRACE,
            )
        };
        assert_eq!(
            plan(&[1, 2, 3, 4, 5], &[6]),
            Some(Step::AddVoter {
                node: 6,
                replaces: 5
            })
        );
        assert_eq!(
            plan(&[1, 2, 3, 4, 5, 6], &[]),
            Some(Step::RemoveVoter { node: 5 })
        );
        // 4 alive of the 5 that remain: the second dead voter is below target with no
        // spare left, so it stays until one joins.
        assert_eq!(plan(&[1, 2, 3, 4, 6], &[]), None);
    }
}
