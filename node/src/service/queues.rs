//! Queues: the long-poll claim of jobs: claim, and while nothing was ready, watch this node's
//! state until a job is, then claim again.
//!
//! However many claims wait on a node, a job that becomes ready wakes only as many of them
//! as it takes to claim the ready jobs ([`ClaimGate`]): the others see that the claims under
//! way will take them and go on waiting, so one new job costs one claim entry per node with
//! waiters, not one per waiting claim.

use std::collections::HashMap;
use std::sync::Mutex;

use raft::command::{Claimed, QueueCmd, QueueResult};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cluster::{Cluster, WriteError};

/// The ready jobs that the woken claims of this node are about to take, per queue.
#[derive(Default)]
pub struct ClaimGate {
    reserved: Mutex<HashMap<String, u64>>,
    /// Notified when a claim under way ends, so the waiters look again.
    released: Notify,
}

impl ClaimGate {
    /// Reserves up to `max` of the `ready` jobs of `queue` that no claim under way will take.
    fn reserve(&self, queue: &str, ready: u64, max: u32) -> Option<Reservation<'_>> {
        let mut reserved = self.reserved.lock().expect("claim gate lock");
        let taken = reserved.get(queue).copied().unwrap_or(0);
        if ready <= taken {
            return None;
        }
        let n = (ready - taken).min(u64::from(max));
        *reserved.entry(queue.to_string()).or_default() += n;
        Some(Reservation {
            gate: self,
            queue: queue.to_string(),
            n,
        })
    }
}

/// A woken claim's share of the ready jobs, given back when its claim has applied here.
struct Reservation<'a> {
    gate: &'a ClaimGate,
    queue: String,
    n: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.gate.reserved.lock().expect("claim gate lock");
        if let Some(r) = reserved.get_mut(&self.queue) {
            *r -= self.n;
            if *r == 0 {
                reserved.remove(&self.queue);
            }
        }
        drop(reserved);
        self.gate.released.notify_waiters();
    }
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
    let gate = &cluster.claims;
    let mut reservation = None;
    loop {
        let command = QueueCmd::Claim {
            queue: queue.to_string(),
            worker: worker.to_string(),
            max,
            visibility_ms,
        };
        // The reservation is held until the claim has applied on this node (answered once
        // visible here), so the waiters it kept back see the jobs it took as gone.
        let answer = cluster.write_visible(command, None).await;
        drop(reservation.take());
        let jobs = match answer? {
            QueueResult::Claimed(jobs) => jobs,
            other => return Ok(Err(other)),
        };
        if !jobs.is_empty() || Instant::now() >= deadline {
            return Ok(Ok(jobs));
        }
        reservation = cluster
            .wait_for_state_or(deadline, &gate.released, |s| {
                let ready = s.queue_stats(queue).map_or(0, |q| q.ready);
                gate.reserve(queue, ready, max)
            })
            .await?;
        if reservation.is_none() {
            return Ok(Ok(Vec::new()));
        }
    }
}
