//! The client protocols that span more than one proposal, kept out of the HTTP and WebSocket
//! adapters so that every front end runs the same one.
//!
//! # Layout
//! - [`acquire`]: the blocking acquire of a leased primitive (a lock, a semaphore): propose
//!   with a wait, watch this node's state until the grant shows or the wait ends, then settle
//!   the race between a late grant and the caller giving up through the log.
//! - [`claim`]: the long-poll claim of jobs: claim, and while nothing was ready, watch this
//!   node's state until a job is, then claim again.

use raft::command::{
    Claimed, LockCmd, LockResult, LockWait, Proposal, QueueCmd, QueueResult, SemaphoreCmd,
    SemaphoreResult, SemaphoreWait,
};
use raft::State;
use tokio::time::{Duration, Instant};

use crate::cluster::{Cluster, WriteError};

/// A leased primitive whose acquire may wait in a queue served in arrival order.
pub trait Queueing {
    type Cmd: Proposal<Output = Self::Result>;
    type Result;

    /// The acquire was queued: its grant will show in the state.
    fn queued(result: &Self::Result) -> bool;

    /// In this node's applied state: `Some(Some(grant))` once `waiter_id` was granted,
    /// `Some(None)` once it no longer waits (its wait ended), `None` while it still waits.
    fn look(state: &State, name: &str, waiter_id: &str) -> Option<Option<Self::Result>>;

    /// Withdraws the queued acquire; answers its grant if it came meanwhile.
    fn cancel(name: &str, waiter_id: &str) -> Self::Cmd;
}

/// The waiter id of a blocking acquire: derived from its `Idempotency-Key`, so that a retried
/// request looks for the same place in the queue, else drawn at random (unguessable).
pub fn waiter_id(idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(k) => format!("idem:{k}"),
        None => hex::encode(rand::random::<[u8; 16]>()),
    }
}

/// Proposes `acquire` and, when it was queued with `wait` (`(waiter_id, wait_ms)`), waits
/// until its grant shows in this node's state or `wait_ms` after `started` has passed; then
/// withdraws it through the log, which answers the grant if it came at the last moment.
///
/// A queued answer without a wait (a retry, under the same `Idempotency-Key`, of an acquire
/// that had waited) is returned as it is.
pub async fn acquire<Q: Queueing>(
    cluster: &Cluster,
    name: &str,
    acquire: Q::Cmd,
    wait: Option<(&str, u64)>,
    idempotency_key: Option<String>,
    started: Instant,
) -> Result<Q::Result, WriteError> {
    // Visible: the wait below watches this node's state, which must already show the queue.
    let first = cluster.write_visible(acquire, idempotency_key).await?;
    let Some((waiter_id, wait_ms)) = wait.filter(|_| Q::queued(&first)) else {
        return Ok(first);
    };
    let deadline = started + Duration::from_millis(wait_ms);
    let seen = cluster
        .wait_for_state(deadline, |state| Q::look(state, name, waiter_id))
        .await?;
    if let Some(Some(grant)) = seen {
        return Ok(grant);
    }
    cluster.write(Q::cancel(name, waiter_id), None).await
}

/// Claims up to `max` ready jobs of `queue` for `worker`, each leased for `visibility_ms`;
/// when none is ready, waits (until `deadline`) for one to be, on this node's state, and
/// claims again. Answers the jobs claimed, none when the wait ended first.
///
/// A claim is not retried under an `Idempotency-Key`: one that timed out leaves its jobs
/// leased until their visibility ends, when they are offered again.
pub async fn claim(
    cluster: &Cluster,
    queue: &str,
    worker: &str,
    max: u32,
    visibility_ms: u64,
    deadline: Instant,
) -> Result<Result<Vec<Claimed>, QueueResult>, WriteError> {
    loop {
        let command = QueueCmd::Claim {
            queue: queue.to_string(),
            worker: worker.to_string(),
            max,
            visibility_ms,
        };
        let jobs = match cluster.write_visible(command, None).await? {
            QueueResult::Claimed(jobs) => jobs,
            other => return Ok(Err(other)),
        };
        if !jobs.is_empty() || Instant::now() >= deadline {
            return Ok(Ok(jobs));
        }
        let ready = cluster
            .wait_for_state(deadline, |s| s.queue_has_ready(queue).then_some(()))
            .await?;
        if ready.is_none() {
            return Ok(Ok(Vec::new()));
        }
    }
}

/// Locks: one holder, waiters served in log order.
pub struct Locks;

impl Queueing for Locks {
    type Cmd = LockCmd;
    type Result = LockResult;

    fn queued(result: &LockResult) -> bool {
        matches!(result, LockResult::Queued { .. })
    }

    fn look(state: &State, name: &str, waiter_id: &str) -> Option<Option<LockResult>> {
        let Some(l) = state.lock(name) else {
            return Some(None);
        };
        if let Some(h) = l.holder.as_ref() {
            if h.waiter_id.as_deref() == Some(waiter_id) {
                return Some(Some(LockResult::Granted {
                    fence: h.fence,
                    ttl_ms: h.ttl_ms,
                }));
            }
        }
        (!l.waiters.iter().any(|w| w.id == waiter_id)).then_some(None)
    }

    fn cancel(name: &str, waiter_id: &str) -> LockCmd {
        LockCmd::CancelWait {
            name: name.to_string(),
            waiter_id: waiter_id.to_string(),
        }
    }
}

/// Semaphores: permits under leases, waiters served first come, first served.
pub struct Semaphores;

impl Queueing for Semaphores {
    type Cmd = SemaphoreCmd;
    type Result = SemaphoreResult;

    fn queued(result: &SemaphoreResult) -> bool {
        matches!(result, SemaphoreResult::Queued { .. })
    }

    fn look(state: &State, name: &str, waiter_id: &str) -> Option<Option<SemaphoreResult>> {
        let Some(s) = state.semaphore(name) else {
            return Some(None);
        };
        let granted = s
            .holders
            .iter()
            .find(|(_, l)| l.waiter_id.as_deref() == Some(waiter_id));
        if let Some((fence, l)) = granted {
            return Some(Some(SemaphoreResult::Granted {
                fence: *fence,
                permits: l.permits,
                ttl_ms: l.ttl_ms,
            }));
        }
        (!s.waiters.iter().any(|w| w.id == waiter_id)).then_some(None)
    }

    fn cancel(name: &str, waiter_id: &str) -> SemaphoreCmd {
        SemaphoreCmd::CancelWait {
            name: name.to_string(),
            waiter_id: waiter_id.to_string(),
        }
    }
}

/// The wait part of a lock acquire, `None` without a wait.
pub fn lock_wait(waiter_id: &str, wait_ms: u64) -> Option<LockWait> {
    (wait_ms > 0).then(|| LockWait {
        waiter_id: waiter_id.to_string(),
        wait_ms,
    })
}

/// The wait part of a semaphore acquire, `None` without a wait.
pub fn semaphore_wait(waiter_id: &str, wait_ms: u64) -> Option<SemaphoreWait> {
    (wait_ms > 0).then(|| SemaphoreWait {
        waiter_id: waiter_id.to_string(),
        wait_ms,
    })
}
