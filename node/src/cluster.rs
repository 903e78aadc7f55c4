//! The node's view of its cluster: writes from any node (forwarded to the leader),
//! linearizable reads (ReadIndex, batched), joins, and the leader's background duties.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::alias::LogIdOf;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ReadPolicy, ServerState};
use raft::{Command, NodeId, NodeInfo, Raft, Request, Response, State, TypeConfig};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use transport::{
    ClusterTls, JoinAccepted, RpcRequest, RpcResponse, Service, ServiceError, Transport, Written,
};

use crate::config::Config;

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
    reads: ReadBatcher,
}

type ReadResult = Result<LogIdOf<TypeConfig>, ServiceError>;

/// Batches concurrent linearizable reads behind one ReadIndex round: a read waits for the
/// round that starts after it arrives (an earlier round could predate its write), and every
/// read that queued during a round shares the next one.
#[derive(Default)]
struct ReadBatcher {
    inner: Arc<Mutex<BatchState>>,
}

#[derive(Default)]
struct BatchState {
    running: bool,
    waiting: Vec<oneshot::Sender<ReadResult>>,
}

impl Cluster {
    pub fn new(
        id: NodeId,
        info: NodeInfo,
        raft: Raft,
        state: Arc<RwLock<State>>,
        transport: Arc<Transport>,
        tls: ClusterTls,
        config: Config,
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
            reads: ReadBatcher::default(),
        })
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// The current leader and its addresses, as this node knows them.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let (id, node) = known_leader(&self.raft)?;
        Some((id, node?))
    }

    /// Waits (up to `until`) for a leader other than `not`.
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
                move |m| m.current_leader.is_some() && m.current_leader != not,
                "leader known",
            )
            .await;
        self.leader().filter(|(id, _)| Some(*id) != not)
    }

    /// Proposes a write through the leader, from any node.
    ///
    /// `Unavailable` means the write was certainly not applied; `Unknown` that it may have
    /// been (a forward or proposal was under way when the time ran out or the leader changed).
    pub async fn write(
        &self,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<Response, ServiceError> {
        Ok(self
            .write_indexed(
                command,
                idempotency_key,
                Instant::now() + self.request_timeout(),
            )
            .await?
            .response)
    }

    /// Like [`Cluster::write`], and returns only once this node has applied the write too, so
    /// a local (stale) read on this node sees it: read-your-writes through the same node.
    /// If this node lags past the request deadline the write still succeeded and is
    /// answered; it becomes visible here once applied.
    pub async fn write_visible(
        &self,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<Response, ServiceError> {
        let deadline = Instant::now() + self.request_timeout();
        let written = self
            .write_indexed(command, idempotency_key, deadline)
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
        Ok(written.response)
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
        let settle = Duration::from_millis(self.config.election_timeout_ms * 2);
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
                    .call(&leader.1.cluster_addr, &forward, remaining)
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
        let deadline = Instant::now() + self.request_timeout();
        let settle = Duration::from_millis(self.config.election_timeout_ms * 2);
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
            tokio::spawn(async move {
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
            }
        }
    }

    /// Proposes a compaction once the key-value history holds more than 10% past its bound,
    /// keeping the last `kv_history_revisions` revisions.
    async fn compact_kv_history(&self) {
        let keep = self.config.kv_history_revisions;
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
            command: Command::KvCompact {
                revision: revision - keep,
            },
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
        if voters.len() >= self.config.target_voters {
            return;
        }
        let last = m.last_log_index.unwrap_or(0);
        let Some(repl) = m.replication.as_ref() else {
            return;
        };
        for learner in membership.learner_ids() {
            let matched = repl
                .get(&learner)
                .cloned()
                .flatten()
                .map(|l| l.index)
                .unwrap_or(0);
            if last.saturating_sub(matched) <= 100 {
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
                    Ok(_) => info!(node = learner, "learner promoted"),
                    Err(e) => warn!(node = learner, error = %e, "promotion failed"),
                }
                return;
            }
        }
    }

    /// The initializing node's one-time cluster setup entry.
    pub async fn init_cluster_state(
        &self,
        cluster_id: String,
        token: &str,
    ) -> Result<(), ServiceError> {
        let command = Command::InitCluster {
            cluster_id,
            join_token_sha256: transport::tls::token_digest(token),
        };
        match self.write(command, None).await? {
            Response::Done | Response::Rejected(_) => Ok(()),
            other => Err(ServiceError::Unknown(format!(
                "unexpected init answer {other:?}"
            ))),
        }
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
        let wait = Duration::from_millis(self.config.election_timeout_ms * 4);
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

/// One ReadIndex round: the leader confirms its leadership with a quorum and answers the
/// index a read must wait for.
/// The leader this node knows of, with its addresses when the membership has them.
fn known_leader(raft: &Raft) -> Option<(NodeId, Option<NodeInfo>)> {
    let m = raft.metrics();
    let m = m.borrow_watched();
    let id = m.current_leader?;
    Some((id, m.membership_config.membership().get_node(&id).cloned()))
}

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
        .call(&node.cluster_addr, &RpcRequest::ReadIndex, timeout)
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

    async fn join(&self, token: String, node: NodeInfo) -> Result<JoinAccepted, ServiceError> {
        if !self.raft.is_leader() {
            let Some((_, leader)) = self.leader() else {
                return Err(ServiceError::Unavailable(
                    "no leader to admit the node; retry".into(),
                ));
            };
            return match self
                .transport
                .call(
                    &leader.cluster_addr,
                    &RpcRequest::Join { token, node },
                    self.request_timeout(),
                )
                .await
            {
                Ok(RpcResponse::Join(r)) => r,
                Ok(other) => Err(ServiceError::Unavailable(format!(
                    "unexpected answer: {other:?}"
                ))),
                Err(e) => Err(ServiceError::Unavailable(format!(
                    "leader unreachable: {e}"
                ))),
            };
        }
        let (expected, cluster_id) = {
            let st = self.state.read().expect("state lock");
            (
                st.meta.join_token_sha256.clone(),
                st.meta.cluster_id.clone(),
            )
        };
        let (Some(expected), Some(cluster_id)) = (expected, cluster_id) else {
            return Err(ServiceError::Unavailable(
                "cluster is still initializing; retry".into(),
            ));
        };
        if transport::tls::token_digest(&token) != expected {
            return Err(ServiceError::Refused("invalid join token".into()));
        }
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
        let id = match self.write(Command::AllocateNodeId, None).await? {
            Response::NodeId(id) => id,
            other => {
                return Err(ServiceError::Unknown(format!(
                    "unexpected allocation answer {other:?}"
                )))
            }
        };
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
        Ok(JoinAccepted {
            node_id: id,
            cluster_id,
            cert_der: self.tls.cert_der.clone(),
            key_der: self.tls.key_der.clone(),
        })
    }
}
