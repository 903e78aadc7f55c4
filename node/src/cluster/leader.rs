//! The leader's duties: ticking the replicated clock, compacting history, promoting
//! caught-up learners, and handing leadership over.

use super::*;

impl Cluster {
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
            if !self.replica.is_leader() {
                continue;
            }
            let now = self.clock_ms();
            let due = self
                .state
                .read()
                .expect("state lock")
                .next_deadline_ms()
                .is_some_and(|at| at <= now);
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
                self.sync_limits().await;
                if self.config.autopilot.replace_dead {
                    self.replace_dead_voter().await;
                }
            }
        }
    }

    /// Puts this node's `limits` settings (the storage quota and the count limits) in force
    /// when the replicated ones differ: they are decided in apply, so they must be one set of
    /// figures on every replica, and the leader's configuration sets them (set the same on
    /// every node).
    pub(super) async fn sync_limits(&self) {
        let l = &self.config.limits;
        let want = raft::state::ClusterLimits {
            quota_bytes: l.quota_bytes,
            max_keys: l.max_keys,
            max_queues: l.max_queues,
            max_jobs_per_queue: l.max_jobs_per_queue,
            max_schedules: l.max_schedules,
            max_channels: l.max_channels,
            max_sessions_per_user: l.max_sessions_per_user,
            max_tokens: l.max_tokens,
            max_join_tokens: l.max_join_tokens,
            max_lock_waiters: l.max_lock_waiters,
        };
        if *self.state.read().expect("state lock").limits() == want {
            return;
        }
        match self.write(ClusterCmd::SetLimits(want), None).await {
            Ok(_) => info!(limits = ?want, "cluster limits set"),
            Err(e) => warn!(error = %e, "cluster limits proposal failed"),
        }
    }

    /// Proposes a compaction once the key-value history holds more than 10% past its bound,
    /// keeping the last `kv_history_revisions` revisions.
    pub(super) async fn compact_kv_history(&self) {
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
    pub(super) async fn promote_caught_up_learner(&self) {
        let m = self.metrics();
        let membership = &m.membership;
        if membership.is_joint() {
            return; // a membership change is in progress
        }
        let voters = membership.voters();
        if voters.len() >= self.config.raft.target_voters {
            return;
        }
        // A learner gossip sees down is skipped: its replication progress is stale.
        let view = self.gossip.snapshot();
        for learner in membership.learners() {
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
                    .replica
                    .change_membership(MembershipChange::AddVoter(learner))
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

    /// Hands leadership to voter `to` and waits (up to two election timeouts) until this
    /// node sees a leader other than itself; answers the new leader.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<NodeId, ServiceError> {
        self.replica
            .transfer_leader(to)
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let me = self.id;
        let wait = Duration::from_millis(self.config.raft.election_timeout_ms * 4);
        self.replica
            .wait_until(
                wait,
                move |m| m.leader.is_some_and(|l| l != me),
                "leadership transferred",
            )
            .await
            .map_err(|_| {
                ServiceError::Unavailable(format!(
                    "node {to} did not take over within {wait:?}; this node may still lead"
                ))
            })?;
        Ok(self.metrics().leader.unwrap_or(to))
    }

    /// The voter that has replicated the most of the leader's log, other than this node.
    pub fn best_successor(&self) -> Option<NodeId> {
        let m = self.metrics();
        let followers = m.followers.as_ref()?;
        m.membership
            .voters()
            .iter()
            .copied()
            .filter(|v| *v != self.id)
            .max_by_key(|v| followers.get(v).and_then(|f| f.matched))
    }
}
