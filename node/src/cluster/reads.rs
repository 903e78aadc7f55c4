//! Linearizable reads: ReadIndex rounds through the leader, batched, then a wait for the
//! local apply.

use super::*;
use raft::ProposeError;

pub(super) type ReadResult = Result<LogId, ServiceError>;

/// Batches concurrent linearizable reads behind one ReadIndex round: a read waits for the
/// round that starts after it arrives (an earlier round could predate its write), and every
/// read that queued during a round shares the next one.
pub(super) struct ReadBatcher {
    inner: Arc<Mutex<BatchState>>,
    /// The task driving the rounds, stopped by [`Cluster::refuse_new_reads`].
    driver: TaskTracker,
    /// The node's runtime, where the rounds run: a reader may be on a runtime of its own (a
    /// listener's thread) that ends before the round would.
    runtime: tokio::runtime::Handle,
    stop: CancellationToken,
}

impl ReadBatcher {
    /// A batcher whose rounds run on the current runtime.
    pub(super) fn new() -> ReadBatcher {
        ReadBatcher {
            inner: Arc::default(),
            driver: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            stop: CancellationToken::new(),
        }
    }
}

#[derive(Default)]
pub(super) struct BatchState {
    running: bool,
    waiting: Vec<oneshot::Sender<ReadResult>>,
}

impl Cluster {
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

    pub(super) async fn read_barrier_until(&self, deadline: Instant) -> Result<(), ServiceError> {
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
        self.replica
            .wait_applied(log_id.index, remaining)
            .await
            .map_err(|_| {
                ServiceError::Unavailable("timed out catching up to the read index".into())
            })?;
        Ok(())
    }

    /// Joins the next ReadIndex round (starting one if none is running) and returns its index.
    pub(super) async fn read_index(&self, deadline: Instant) -> ReadResult {
        let (tx, rx) = oneshot::channel();
        let drive = {
            let mut s = self.reads.inner.lock().expect("read batch lock");
            if self.reads.stop.is_cancelled() {
                return Err(ServiceError::Unavailable(
                    "the node is shutting down".into(),
                ));
            }
            s.waiting.push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if drive {
            let replica = self.replica.clone();
            let transport = self.transport.clone();
            let this_id = self.id;
            let timeout = self.request_timeout();
            let batcher = self.reads.inner.clone();
            let stop = self.reads.stop.clone();
            self.reads.driver.spawn_on(
                async move {
                    let rounds = async {
                        loop {
                            let batch = {
                                let mut s = batcher.lock().expect("read batch lock");
                                if s.waiting.is_empty() {
                                    s.running = false;
                                    return;
                                }
                                std::mem::take(&mut s.waiting)
                            };
                            let res =
                                read_index_round(&replica, &transport, this_id, timeout).await;
                            for tx in batch {
                                let _ = tx.send(res.clone());
                            }
                        }
                    };
                    if stop.run_until_cancelled(rounds).await.is_none() {
                        // Stopped: the reads still queued are told their round was dropped, and
                        // no round starts any more.
                        batcher.lock().expect("read batch lock").waiting.clear();
                    }
                },
                &self.reads.runtime,
            );
        }
        tokio::time::timeout_at(deadline, rx)
            .await
            .map_err(|_| ServiceError::Unavailable("timed out confirming leadership".into()))?
            .map_err(|_| ServiceError::Unavailable("read round dropped".into()))?
    }

    /// Part of the node's shutdown: a read asked for from now on, or still queued for a
    /// round, fails as unavailable, and no round starts any more. The node's stop then waits
    /// for [`Cluster::read_rounds`].
    pub fn refuse_new_reads(&self) {
        self.reads.stop.cancel();
    }

    /// The tracker owning the task that drives ReadIndex rounds.
    pub fn read_rounds(&self) -> &TaskTracker {
        &self.reads.driver
    }
}

/// One ReadIndex round: the leader confirms its leadership with a quorum and answers the
/// index a read must wait for.
pub(super) async fn read_index_round(
    replica: &Replica,
    transport: &Transport,
    this_id: NodeId,
    timeout: Duration,
) -> ReadResult {
    let Some((leader, node)) = replica.known_leader() else {
        return Err(ServiceError::NotLeader { leader: None });
    };
    if leader == this_id {
        return local_read_index(replica, timeout).await;
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

/// ReadIndex on this node, which should lead.
pub(super) async fn local_read_index(replica: &Replica, timeout: Duration) -> ReadResult {
    replica.read_index(timeout).await.map_err(|e| match e {
        ProposeError::NotLeader(leader) => ServiceError::NotLeader { leader },
        other => ServiceError::Unavailable(other.to_string()),
    })
}
