//! The replica: a node's one handle on Raft. It proposes commands and answers their results,
//! confirms leadership for reads, changes the membership, and reports Raft's figures in
//! stackd's own terms. Outside this crate, nothing names openraft.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::metrics::RaftServerMetrics;
use openraft::{ChangeMembers, Instant as _, RaftMetrics, ReadPolicy, ServerState};

use crate::command::{Request, Response};
use crate::network::{AppendRequest, SnapshotResponse, StreamAppendResult, Vote};
use crate::network::{Link, LogId, Network, PeerAnswer, PeerRpc, SnapshotMeta};
use crate::state_machine::StateMachine;
use crate::types::{LogStore, NodeId, NodeInfo, TypeConfig};

type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Raft's timing and log retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often the leader heartbeats.
    pub heartbeat_interval_ms: u64,
    /// The lower bound of the randomized election timeout; the upper bound is twice that.
    pub election_timeout_ms: u64,
    /// Entries since the last snapshot that trigger a new one.
    pub snapshot_every_entries: u64,
}

/// Why an operation on the replica failed, in words fit for a log line or an error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplicaError(String);

impl ReplicaError {
    fn of(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// Why a proposal or a read round has no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node does not lead; the leader it knows of, with its addresses, if any.
    #[error("not the leader")]
    NotLeader(Option<(NodeId, NodeInfo)>),
    /// The entry was dropped by a leader change: it may or may not have been applied.
    #[error("leader changed; the write may or may not have been applied")]
    Discarded,
    /// Certainly not applied (no quorum, shutting down, …).
    #[error("{0}")]
    Unavailable(String),
    /// Raft stopped while the proposal was under way: the outcome is unknown.
    #[error("raft stopped: {0}")]
    Stopped(String),
}

/// A node's part in Raft now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Candidate,
    Follower,
    Learner,
    Shutdown,
}

/// The cluster's members as one node's log has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    nodes: BTreeMap<NodeId, NodeInfo>,
    voters: BTreeSet<NodeId>,
    joint: bool,
    committed: bool,
}

impl Membership {
    /// A member's addresses.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// Every member (voters and learners) with its addresses.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &NodeInfo)> {
        self.nodes.iter().map(|(id, n)| (*id, n))
    }

    /// The voters (of both configurations while a change is joint).
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// The members that are not voters.
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.voters.contains(id))
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether a voter change is half done (a joint configuration).
    pub fn is_joint(&self) -> bool {
        self.joint
    }

    /// Whether Raft takes a new change now: not joint, and the latest membership entry
    /// committed (a learner just added is not yet).
    pub fn is_settled(&self) -> bool {
        !self.joint && self.committed
    }
}

/// How the leader sees one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follower {
    /// The last index it acknowledged (`None`: none yet).
    pub matched: Option<u64>,
    /// How long ago it last acknowledged a heartbeat or an append (`None`: never).
    pub acked_ago: Option<Duration>,
}

/// Raft's figures as one node sees them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// The last index this node knows committed.
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    /// The last index the newest snapshot covers.
    pub snapshot: Option<u64>,
    /// The last index purged from the log.
    pub purged: Option<u64>,
    pub membership: Membership,
    /// While this node leads: how it sees each follower (`None` otherwise).
    pub followers: Option<BTreeMap<NodeId, Follower>>,
}

impl Metrics {
    fn of(m: &RaftMetrics<TypeConfig>) -> Self {
        let stored = m.membership_config.membership();
        let membership = Membership {
            nodes: stored.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            voters: stored.voter_ids().collect(),
            joint: stored.get_joint_config().len() > 1,
            committed: m.membership_config.log_id() == m.committed_membership_config.log_id(),
        };
        let followers = m.replication.as_ref().map(|repl| {
            repl.iter()
                .map(|(id, matched)| {
                    let acked_ago = m
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h.get(id).cloned().flatten())
                        .map(|t| t.elapsed());
                    let matched = matched.map(|l| l.index);
                    (*id, Follower { matched, acked_ago })
                })
                .collect()
        });
        Metrics {
            role: match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Candidate => Role::Candidate,
                ServerState::Follower => Role::Follower,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Shutdown,
            },
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed.map(|l| l.index),
            applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            membership,
            followers,
        }
    }

    /// The leader, when this node knows its addresses too.
    pub fn addressed_leader(&self) -> Option<(NodeId, &NodeInfo)> {
        let id = self.leader?;
        Some((id, self.membership.node(id)?))
    }
}

/// Wakes each time Raft's figures change.
pub struct Changes {
    applied: tokio::sync::watch::Receiver<u64>,
    server:
        openraft::type_config::alias::WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>,
}

impl Changes {
    /// Waits until more entries are applied on this node (or a snapshot is installed, or
    /// this node's role changes); an error once Raft has stopped.
    pub async fn changed(&mut self) -> Result<(), ReplicaError> {
        tokio::select! {
            r = self.applied.changed() => r.map_err(|_| ReplicaError("raft stopped".into())),
            r = self.server.changed() => r.map_err(ReplicaError::of),
        }
    }
}

/// A change to the voters or the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Makes a learner a voter.
    AddVoter(NodeId),
    /// Removes a voter from the membership altogether (not kept as a learner).
    RemoveVoter(NodeId),
    /// Removes a learner.
    RemoveLearner(NodeId),
}

/// This node's replica. Clones share it.
#[derive(Clone)]
pub struct Replica {
    raft: Raft,
    /// Bytes appended to the log since the last snapshot this node built (about: see
    /// [`Replica::snapshot_by_log_bytes`]).
    log_bytes: Arc<AtomicU64>,
    /// The state machine's applied index (see [`StateMachine::applied`]).
    applied: tokio::sync::watch::Receiver<u64>,
    /// The service registry's revision (see [`StateMachine::registry`]).
    registry: tokio::sync::watch::Receiver<u64>,
    /// Where snapshots are kept, and received ones written.
    snapshot_dir: Arc<std::path::PathBuf>,
}

impl Replica {
    /// Starts this node's replica over its stores, reaching its peers through `link`.
    pub async fn start<L: Link>(
        id: NodeId,
        timing: Timing,
        link: Arc<L>,
        log_store: LogStore,
        state_machine: StateMachine,
    ) -> Result<Self, ReplicaError> {
        let config = crate::config::raft_config(&timing).map_err(ReplicaError::of)?;
        let log_bytes = log_store.appended_bytes();
        let applied = state_machine.applied();
        let registry = state_machine.registry();
        let snapshot_dir = Arc::new(state_machine.snapshot_dir().to_path_buf());
        let raft = Raft::new(id, config, Network::new(link), log_store, state_machine)
            .await
            .map_err(ReplicaError::of)?;
        Ok(Self {
            raft,
            log_bytes,
            applied,
            registry,
            snapshot_dir,
        })
    }

    /// Builds a snapshot whenever `limit` bytes of entries were appended to the log since the
    /// last one, checked every `every`; runs until dropped. Beside openraft's own policy (a
    /// count of entries), so that a log of large entries is not kept for as many of them.
    pub async fn snapshot_by_log_bytes(&self, limit: u64, every: Duration) {
        let snapshot = |r: &Raft| r.metrics().borrow_watched().snapshot;
        let mut last = snapshot(&self.raft);
        self.log_bytes.store(0, Ordering::Relaxed);
        loop {
            tokio::time::sleep(every).await;
            let now = snapshot(&self.raft);
            if now != last {
                // A snapshot was built (by either policy, or on demand): count from here.
                last = now;
                self.log_bytes.store(0, Ordering::Relaxed);
                continue;
            }
            let bytes = self.log_bytes.load(Ordering::Relaxed);
            if bytes >= limit {
                tracing::info!(bytes, limit, "snapshot: the log grew past its size limit");
                self.log_bytes.store(0, Ordering::Relaxed);
                if let Err(e) = self.raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "snapshot by log size not started");
                }
            }
        }
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    /// Waits until Raft stops on an error of its own (a storage write that failed, say on a
    /// full disk), and answers it. Never answers while Raft runs or after a clean shutdown.
    ///
    /// It waits on Raft's server figures (role, leader, membership), which change rarely, not on
    /// all of them: those change with every replication step, and a waiter woken by each would
    /// cost every write and read a task wake-up. When Raft's core stops, that channel closes,
    /// and the core's last figures say why.
    pub async fn failure(&self) -> ReplicaError {
        let mut server = self.raft.server_metrics();
        loop {
            if let Err(e) = &self.raft.metrics().borrow_watched().running_state {
                return ReplicaError::of(e);
            }
            if server.changed().await.is_err() {
                if let Err(e) = &self.raft.metrics().borrow_watched().running_state {
                    return ReplicaError::of(e);
                }
                return std::future::pending().await;
            }
        }
    }

    /// The current term, as this node knows it.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// Raft's figures now.
    pub fn metrics(&self) -> Metrics {
        Metrics::of(&self.raft.metrics().borrow_watched())
    }

    /// The leader this node knows of, with its addresses when the membership has them.
    pub fn known_leader(&self) -> Option<(NodeId, Option<NodeInfo>)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        Some((id, m.membership_config.membership().get_node(&id).cloned()))
    }

    /// Whether this node knows a leader and has applied everything it knows is committed.
    pub fn is_ready(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let committed = m.local_committed.map(|l| l.index);
        m.current_leader.is_some()
            && m.last_applied.map(|l| l.index) >= committed
            && matches!(
                m.state,
                ServerState::Leader | ServerState::Follower | ServerState::Learner
            )
    }

    /// A watch on what changes the state: entries applied on this node. Raft's role changes
    /// wake it too, and it ends when Raft stops.
    pub fn changes(&self) -> Changes {
        Changes {
            applied: self.applied.clone(),
            server: self.raft.server_metrics(),
        }
    }

    /// A watch on the service registry's revision on this node: it wakes only when the
    /// registry changes, where [`Replica::changes`] wakes on every applied batch.
    pub fn registry_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.registry.clone()
    }

    /// Waits up to `timeout` until `until` holds of Raft's figures, and answers them then.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        until: impl Fn(&Metrics) -> bool + Send + 'static,
        what: &str,
    ) -> Result<Metrics, ReplicaError> {
        self.raft
            .wait(Some(timeout))
            .metrics(move |m| until(&Metrics::of(m)), what)
            .await
            .map(|m| Metrics::of(&m))
            .map_err(ReplicaError::of)
    }

    /// Waits up to `timeout` until this node has applied entry `index`. It reads the state
    /// machine's applied index, without copying Raft's figures: this is on the path of every
    /// linearizable read and every read-your-writes write.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ReplicaError> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(timeout, async {
            applied.wait_for(|&a| a >= index).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ReplicaError("raft stopped".into())),
            Err(_) => Err(ReplicaError(format!(
                "entry {index} not applied within {timeout:?} (applied: {})",
                *self.applied.borrow()
            ))),
        }
    }

    /// Proposes `req` on this node, which must lead; answers its result and its log index
    /// once it is committed and applied here.
    pub async fn propose(&self, req: Request) -> Result<(Response, u64), ProposeError> {
        match self.raft.client_write(req).await {
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader(f.leader_id.zip(f.leader_node)))
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(ProposeError::Discarded)
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Stopped(e.to_string())),
        }
    }

    /// ReadIndex on this node, which must lead: confirms its leadership with a quorum and
    /// answers the position a linearizable read must wait for. Bounded by `timeout`: without a
    /// quorum the leader cannot confirm, and a stuck round would hold up every read behind it.
    pub async fn read_index(&self, timeout: Duration) -> Result<LogId, ProposeError> {
        let round = tokio::time::timeout(
            timeout,
            self.raft.get_read_linearizer(ReadPolicy::ReadIndex),
        );
        let Ok(result) = round.await else {
            return Err(ProposeError::Unavailable(
                "no quorum confirmed the leader in time".into(),
            ));
        };
        match result {
            Ok(lin) => Ok(*lin.read_log_id().log_id()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader(f.leader_id.zip(f.leader_node)))
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    /// Adds a learner (returns once the change is proposed, not when it has caught up).
    pub async fn add_learner(&self, id: NodeId, node: NodeInfo) -> Result<(), ReplicaError> {
        self.raft
            .add_learner(id, node, false)
            .await
            .map(|_| ())
            .map_err(ReplicaError::of)
    }

    /// Changes the voters or members; returns once the change is committed.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ReplicaError> {
        let (change, retain) = match change {
            MembershipChange::AddVoter(id) => {
                (ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            }
            MembershipChange::RemoveVoter(id) => {
                (ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            }
            MembershipChange::RemoveLearner(id) => {
                (ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            }
        };
        self.raft
            .change_membership(change, retain)
            .await
            .map(|_| ())
            .map_err(ReplicaError::of)
    }

    /// Whether this node's log already holds a membership (it founded or joined a cluster).
    pub async fn is_initialized(&self) -> Result<bool, ReplicaError> {
        self.raft.is_initialized().await.map_err(ReplicaError::of)
    }

    /// Founds a cluster of `members`.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, NodeInfo>,
    ) -> Result<(), ReplicaError> {
        self.raft
            .initialize(members)
            .await
            .map_err(ReplicaError::of)
    }

    /// Starts building a snapshot now.
    pub async fn snapshot(&self) -> Result<(), ReplicaError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(ReplicaError::of)
    }

    /// Purges the log up to `index` (kept entries behind the snapshot are purged too).
    pub async fn purge_log(&self, index: u64) -> Result<(), ReplicaError> {
        self.raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(ReplicaError::of)
    }

    /// Asks voter `to` to take over leadership (it may not).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ReplicaError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(ReplicaError::of)
    }

    /// Stops Raft.
    pub async fn shutdown(&self) -> Result<(), ReplicaError> {
        self.raft.shutdown().await.map_err(ReplicaError::of)
    }

    /// Answers a peer's Raft message.
    pub async fn answer(&self, rpc: PeerRpc) -> PeerAnswer {
        match rpc {
            PeerRpc::Append(r) => {
                PeerAnswer::Append(self.raft.append_entries(r).await.map_err(text))
            }
            PeerRpc::Vote(r) => PeerAnswer::Vote(self.raft.vote(r).await.map_err(text)),
            PeerRpc::PreVote(r) => PeerAnswer::Vote(self.raft.pre_vote(r).await.map_err(text)),
            PeerRpc::TransferLeader(r) => {
                PeerAnswer::TransferLeader(self.raft.handle_transfer_leader(r).await.map_err(text))
            }
        }
    }

    /// Takes a leader's stream of appends: each is answered once its entries are on disk, in
    /// order; the answers end after the first one refused (a conflict, or a higher vote) or
    /// when the replica stops.
    pub fn stream_append(
        &self,
        input: impl futures::Stream<Item = AppendRequest> + Send + 'static,
    ) -> futures::stream::BoxStream<'static, Result<StreamAppendResult, String>> {
        use futures::StreamExt;
        self.raft
            .stream_append(input)
            .map(|r| r.map_err(text))
            .boxed()
    }

    /// Starts receiving a snapshot of `len` data bytes from the leader, into a file beside
    /// this node's snapshot; [`SnapshotSink::finish`](crate::snapshot::SnapshotSink::finish)
    /// gives what [`install_snapshot`](Self::install_snapshot) takes.
    pub async fn receive_snapshot(
        &self,
        meta: &SnapshotMeta,
        len: u64,
    ) -> std::io::Result<crate::snapshot::SnapshotSink> {
        crate::snapshot::SnapshotSink::create(&self.snapshot_dir, meta, len).await
    }

    /// Installs a snapshot a peer sent, received into its file.
    pub async fn install_snapshot(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        data: crate::SnapshotData,
    ) -> Result<SnapshotResponse, String> {
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: data,
        };
        self.raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A remote Raft error, as it travels.
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
