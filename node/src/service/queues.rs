//! Queues: the long-poll claim of jobs: claim, and while nothing was ready, watch this node's
//! state until a job is, then claim again.

use raft::command::{Claimed, QueueCmd, QueueResult};
use tokio::time::Instant;

use crate::cluster::{Cluster, WriteError};

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
