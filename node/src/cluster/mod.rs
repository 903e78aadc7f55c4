//! The node's view of its cluster: writes from any node (forwarded to the leader),
//! linearizable reads (ReadIndex, batched), joins, and the leader's background duties.
//!
//! # Layout
//! - [`write`]: proposals and their typed results, forwarded to the leader when needed.
//! - [`reads`]: batched ReadIndex rounds for linearizable reads.
//! - [`leader`]: ticks, history compaction, learner promotion, leadership transfer.
//! - [`gossip`]: what gossip is told, and how the leader reaches each member.
//! - [`autopilot`]: dead-voter replacement, one membership change at a time.
//! - [`membership`]: operations on Raft itself (remove, promote, transfer, snapshot), run on
//!   the leader and forwarded there over QUIC.
//! - [`join`]: joins, join tokens, and the service the transport calls.
//! - [`peers`]: who is a member (the transport's peer check over the pinned node keys and
//!   removed nodes), and the key sync of a node that lags.
//! - [`status`]: the cluster as this node sees it (`GET /v1/cluster`).
//! - [`clock`]: the leader's clock, what proposals are stamped with (wall-clock jumps during a
//!   term do not move it).

mod autopilot;
mod clock;
mod gossip;
mod join;
mod leader;
mod membership;
mod peers;
mod reads;
mod status;
mod write;

pub use autopilot::AutopilotAction;
use gossip::caught_up;
pub(crate) use gossip::load_avg_1m;
pub use join::removed_message;
pub use peers::{check_node_keys, Peers};
use reads::ReadBatcher;
pub use write::WriteError;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raft::command::{ClusterCmd, ClusterResult, KvCmd, Proposal};
use raft::replica::MembershipChange;
use raft::{Command, LogId, Metrics, NodeId, NodeInfo, Replica, Request, Response, State};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use transport::tls::Peer;
use transport::{
    AdminDone, AdminOp, ClusterTls, Gossip, JoinGranted, Liveness, MemberReach, NodeKeys, NodeMeta,
    PeerCheck, Refusal, RpcRequest, RpcResponse, Service, ServiceError, Transport, Written,
};

use crate::config::{derived_gossip_addr, Config};

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

/// Raft's figures as one node sees them (its leader, term and log positions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftView {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
}

impl RaftView {
    fn of(m: &Metrics) -> Self {
        RaftView {
            leader: m.leader,
            term: m.term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: m.committed.unwrap_or(0),
            applied_index: m.applied.unwrap_or(0),
            snapshot_index: m.snapshot,
            purged_index: m.purged,
        }
    }
}

/// A read-only handle on the applied state.
#[derive(Clone)]
pub struct StateReader(Arc<RwLock<State>>);

impl StateReader {
    /// Read access; hold it briefly (applies wait for it).
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.0.read().expect("state lock")
    }
}

/// A node's handle on the cluster, shared by the API, the transport server and background
/// tasks.
pub struct Cluster {
    pub id: NodeId,
    pub info: NodeInfo,
    replica: Replica,
    state: Arc<RwLock<State>>,
    transport: Arc<Transport>,
    tls: ClusterTls,
    config: Config,
    /// This node's gossip member: liveness and metadata of every node, as seen from here.
    gossip: Arc<Gossip>,
    /// Who is a member (the transport's peer check).
    peers: Arc<Peers>,
    /// Membership changes the autopilot made while this node led, newest last.
    autopilot: Mutex<VecDeque<AutopilotAction>>,
    /// Autopilot actions since start, by action.
    autopilot_totals: Mutex<BTreeMap<&'static str, u64>>,
    reads: ReadBatcher,
    audit: Arc<crate::audit::AuditLog>,
    /// The long-poll claims this node is proposing after a wait, per queue.
    pub(crate) claims: crate::service::queues::ClaimGate,
    /// What this node stamps its proposals with while it leads.
    clock: clock::LeaderClock,
    /// This node's permits of in-flight requests and of WebSocket connections, from which its
    /// own load is read fresh (set once by the gossip feed).
    load: std::sync::OnceLock<(Arc<Semaphore>, Arc<Semaphore>)>,
}

impl Cluster {
    // One handle per part of the node, each made once by `server::Node::start`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        info: NodeInfo,
        replica: Replica,
        state: Arc<RwLock<State>>,
        transport: Arc<Transport>,
        tls: ClusterTls,
        config: Config,
        gossip: Arc<Gossip>,
        peers: Arc<Peers>,
    ) -> Arc<Self> {
        if unsafe_stale_reads() {
            warn!(
                "STACKD_UNSAFE_STALE_READS=1: linearizable reads skip ReadIndex (test-only fault)"
            );
        }
        if let Some(every) = raft::state::unsafe_lose_jobs_every() {
            warn!("STACKD_UNSAFE_LOSE_JOBS={every}: enqueued jobs are dropped (test-only fault)");
        }
        Arc::new(Self {
            id,
            info,
            replica,
            state,
            transport,
            tls,
            config,
            gossip,
            peers,
            autopilot: Mutex::new(VecDeque::new()),
            autopilot_totals: Mutex::new(BTreeMap::new()),
            reads: ReadBatcher::new(),
            audit: Arc::new(crate::audit::AuditLog::new(id)),
            claims: Default::default(),
            clock: Default::default(),
            load: std::sync::OnceLock::new(),
        })
    }

    /// The node's audit log.
    pub fn audit(&self) -> &Arc<crate::audit::AuditLog> {
        &self.audit
    }

    fn metrics(&self) -> Metrics {
        self.replica.metrics()
    }

    /// Raft's figures as this node sees them.
    pub fn raft_view(&self) -> RaftView {
        RaftView::of(&self.metrics())
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Read access to this node's applied state; hold it briefly (applies wait for it).
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("state lock")
    }

    /// A read-only handle on the applied state, for tasks that outlive a borrow of the cluster.
    pub fn state_reader(&self) -> StateReader {
        StateReader(self.state.clone())
    }

    /// The cluster CA's certificate (DER).
    pub fn ca_cert_der(&self) -> Vec<u8> {
        self.tls.ca_cert_der.clone()
    }

    /// The cluster transport (per-peer figures, connections).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// This node's gossip member: liveness and metadata of every node, as seen from here.
    pub fn gossip(&self) -> &Gossip {
        &self.gossip
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    /// This node's replica, for the node's own start-up and shutdown.
    pub(crate) fn replica(&self) -> &Replica {
        &self.replica
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
        let (id, node) = self.replica.known_leader()?;
        Some((id, node?))
    }

    /// Long-polls this node's applied state: `check` runs now and after every apply until it
    /// finds what it looks for. `Ok(None)` when `deadline` passes first; an error when Raft
    /// has stopped.
    pub async fn wait_for_state<T>(
        &self,
        deadline: Instant,
        check: impl FnMut(&State) -> Option<T>,
    ) -> Result<Option<T>, ServiceError> {
        self.wait_for_state_or(deadline, &tokio::sync::Notify::new(), check)
            .await
    }

    /// [`wait_for_state`](Self::wait_for_state), with `check` also run each time `woken` is
    /// notified (for what changes outside the state).
    pub async fn wait_for_state_or<T>(
        &self,
        deadline: Instant,
        woken: &tokio::sync::Notify,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Result<Option<T>, ServiceError> {
        let mut applied = self.replica.changes();
        loop {
            let notified = woken.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = check(&self.state.read().expect("state lock")) {
                return Ok(Some(found));
            }
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(ServiceError::Unavailable("shutting down".into()));
                    }
                }
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// The time this node stamps a proposal with now (see [`clock`]).
    fn clock_ms(&self) -> u64 {
        let term = self.replica.term();
        self.clock.stamp(term, now_ms, || self.state().meta.now_ms)
    }

    /// Whether this node knows a leader and has applied everything it knows is committed.
    pub fn is_ready(&self) -> bool {
        self.replica.is_ready()
    }
}

impl crate::api_tls::IssueApiCert for Cluster {
    fn issue(&self, names: &[String], valid_for: Duration) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        Ok(self.tls.issue_api_cert(names, valid_for)?)
    }
}
