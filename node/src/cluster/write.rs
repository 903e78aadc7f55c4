//! The write path: a proposal goes to the leader (this node, or forwarded over QUIC), and
//! comes back as its typed result.

use super::*;
use raft::command::IdemKey;
use raft::ProposeError;

/// Why a write did not give its typed result.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A fenced write whose fence is not the lock's current one; nothing was applied.
    #[error("stale fence (current: {current:?})")]
    StaleFence { current: Option<u64> },
    /// The `Idempotency-Key` was first used for a different request (its fingerprint differs,
    /// or, for a key of an earlier build, its remembered answer is of another kind).
    #[error("the Idempotency-Key was first used for a different request")]
    IdempotencyMismatch,
    /// The write would grow the state while the storage quota is reached; nothing was
    /// applied.
    #[error("the storage quota is reached ({used_bytes} of {quota_bytes} bytes)")]
    QuotaExceeded { used_bytes: u64, quota_bytes: u64 },
    /// The write would make one more of something the cluster holds its limit of; nothing
    /// was applied.
    #[error("{limit} reached: the cluster holds {max} {what}")]
    LimitReached {
        limit: String,
        max: u64,
        what: String,
    },
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
pub(super) fn typed<P: Proposal>(response: Response) -> Result<P::Output, WriteError> {
    P::output(response).map_err(|other| match other {
        Response::StaleFence { current } => WriteError::StaleFence { current },
        Response::IdempotencyMismatch => WriteError::IdempotencyMismatch,
        Response::QuotaExceeded {
            used_bytes,
            quota_bytes,
        } => WriteError::QuotaExceeded {
            used_bytes,
            quota_bytes,
        },
        Response::LimitReached { limit, max, what } => {
            WriteError::LimitReached { limit, max, what }
        }
        // A key of an earlier build (no fingerprint) remembered an answer of another kind.
        _ => WriteError::IdempotencyMismatch,
    })
}

impl Cluster {
    /// Waits (up to `until`) for a leader other than `not` whose address this node knows.
    ///
    /// The address matters as much as the id: a node that just joined learns the leader's id
    /// from its first heartbeat, before the replicated log tells it the leader's address. A
    /// wait that returned on the id alone would return at once, again and again, and the
    /// caller's retry loop would spin without yielding, starving the runtime (and with it the
    /// very transport that would bring the address).
    pub(super) async fn wait_for_leader(
        &self,
        not: Option<NodeId>,
        until: Instant,
    ) -> Option<(NodeId, NodeInfo)> {
        let remaining = until.saturating_duration_since(Instant::now());
        let _ = self
            .replica
            .wait_until(
                remaining,
                move |m| m.addressed_leader().is_some_and(|(id, _)| Some(id) != not),
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
        idempotency_key: Option<IdemKey>,
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
        idempotency_key: Option<IdemKey>,
    ) -> Result<P::Output, WriteError> {
        let deadline = Instant::now() + self.request_timeout();
        let written = self
            .write_indexed(proposal.into(), idempotency_key, deadline)
            .await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = self
            .replica
            .wait_applied(written.log_index, remaining)
            .await
        {
            warn!(error = %e, index = written.log_index, "write not yet applied on this node");
        }
        typed::<P>(written.response)
    }

    pub(super) async fn write_indexed(
        &self,
        command: Command,
        idempotency_key: Option<IdemKey>,
        deadline: Instant,
    ) -> Result<Written, ServiceError> {
        let command = match idempotency_key {
            Some(idem) => match command.keyed() {
                Ok(keyed) => Command::Idempotent {
                    idem,
                    command: Box::new(keyed),
                },
                // Already under a key: it keeps its own.
                Err(keyed) => keyed,
            },
            None => command,
        };
        let req = Request {
            stamp_ms: 0,
            idempotency_key: None,
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
            let result = match self.send_to_leader(&leader, &req, deadline).await {
                Sent::Answered(r) => r,
                Sent::NotSent => {
                    avoid = Some(leader.0);
                    continue;
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

    /// Proposes `req` on `leader`: here when this node leads, else forwarded over QUIC.
    async fn send_to_leader(
        &self,
        leader: &(NodeId, NodeInfo),
        req: &Request,
        deadline: Instant,
    ) -> Sent {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if leader.0 == self.id {
            return Sent::Answered(
                match tokio::time::timeout(remaining, self.write_local(req.clone())).await {
                    Ok(r) => r,
                    Err(_) => Err(ServiceError::Unknown(
                        "timed out waiting for the write to commit".into(),
                    )),
                },
            );
        }
        let forward = RpcRequest::Write(req.clone());
        let answer = self
            .transport
            .call_node(leader.0, &leader.1.cluster_addr, &forward, remaining)
            .await;
        Sent::Answered(match answer {
            Ok(RpcResponse::Write(r)) => r,
            Ok(other) => Err(ServiceError::Unknown(format!(
                "unexpected answer from leader: {other:?}"
            ))),
            // Never sent: safe to try the next leader.
            Err(transport::Error::Connect { reason, .. }) => {
                warn!(leader = leader.0, %reason, "cannot reach leader to forward write");
                return Sent::NotSent;
            }
            Err(transport::Error::Timeout(_)) => Err(ServiceError::Unknown(
                "timed out waiting for the leader".into(),
            )),
            Err(e) => Err(ServiceError::Unknown(format!(
                "forward to leader failed: {e}"
            ))),
        })
    }

    /// Proposes on this node, which must be the leader; stamps the replicated clock.
    pub async fn write_local(&self, mut req: Request) -> Result<Written, ServiceError> {
        req.stamp_ms = self.clock_ms();
        match self.replica.propose(req).await {
            Ok((response, log_index)) => Ok(Written {
                response,
                log_index,
            }),
            Err(ProposeError::NotLeader(leader)) => Err(ServiceError::NotLeader { leader }),
            Err(e @ (ProposeError::Discarded | ProposeError::Stopped(_))) => {
                Err(ServiceError::Unknown(e.to_string()))
            }
            Err(ProposeError::Unavailable(e)) => Err(ServiceError::Unavailable(e)),
        }
    }
}

/// What became of one attempt to hand a write to the leader.
enum Sent {
    /// The leader (or this node) answered, or the outcome is unknown.
    Answered(Result<Written, ServiceError>),
    /// It never left this node: safe to try another leader.
    NotSent,
}
