//! The job queue under faults: what producers and workers saw, checked against what a queue
//! with leases promises.
//!
//! - No acknowledged enqueue is lost: once the queue has drained, every job whose enqueue was
//!   acknowledged was delivered at least once.
//! - No job is delivered that was never enqueued: each payload carries the number of one
//!   enqueue attempt (acknowledged or not: an enqueue whose answer was lost may still apply).
//! - A job delivered again is explained by its lease: a later delivery completes only after
//!   the earlier claim's lease could have expired (`visibility` after that claim was sent),
//!   and carries a higher attempt and another lease.
//! - No ack is accepted on a stale lease: once a later delivery of a job has been answered,
//!   an ack sent after that with an earlier lease must be refused.

use std::collections::{BTreeMap, BTreeSet};

/// One enqueue attempt: the number its payload carries, and the job id when acknowledged.
#[derive(Debug, Clone)]
pub struct Enqueue {
    pub n: u64,
    pub job: Option<u64>,
}

/// One delivered job, as a worker's claim answered it (times in the run's ns).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The payload's number (`None`: the payload had none).
    pub n: Option<u64>,
    pub job: u64,
    pub lease: u64,
    pub attempt: u32,
    pub call: u64,
    pub ret: u64,
}

/// One ack a node accepted.
#[derive(Debug, Clone)]
pub struct Ack {
    pub job: u64,
    pub lease: u64,
    pub call: u64,
    pub ret: u64,
}

/// Everything the queue clients of a run recorded.
#[derive(Debug, Default)]
pub struct QueueLog {
    pub enqueues: Vec<Enqueue>,
    pub deliveries: Vec<Delivery>,
    pub acks: Vec<Ack>,
    /// Acks refused (stale lease, job gone) and acks whose answer was lost.
    pub acks_refused: usize,
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct QueueReport {
    pub enqueued: usize,
    pub delivered: usize,
    /// Deliveries of a job after its first, each explained by an expired lease.
    pub redelivered: usize,
    pub acked: usize,
    pub problems: Vec<String>,
}

/// Checks `log` of a queue whose claims hold a lease for `visibility_ns`. Call it once the
/// queue has drained (nothing ready, delayed or in flight).
pub fn check(log: &QueueLog, visibility_ns: u64) -> QueueReport {
    let mut r = QueueReport {
        enqueued: log.enqueues.iter().filter(|e| e.job.is_some()).count(),
        delivered: log.deliveries.len(),
        acked: log.acks.len(),
        ..QueueReport::default()
    };
    let attempted: BTreeSet<u64> = log.enqueues.iter().map(|e| e.n).collect();
    let mut by_job: BTreeMap<u64, Vec<&Delivery>> = BTreeMap::new();
    for d in &log.deliveries {
        match d.n {
            Some(n) if attempted.contains(&n) => {}
            n => r.problems.push(format!(
                "job {} was delivered with payload number {n:?}, which no producer enqueued",
                d.job
            )),
        }
        by_job.entry(d.job).or_default().push(d);
    }
    for e in &log.enqueues {
        if let Some(job) = e.job {
            if !by_job.contains_key(&job) {
                r.problems.push(format!(
                    "job {job} (payload {}) was acknowledged as enqueued and never delivered",
                    e.n
                ));
            }
        }
    }
    for (job, ds) in &mut by_job {
        ds.sort_by_key(|d| (d.attempt, d.ret));
        for pair in ds.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            r.redelivered += 1;
            // The replicated clock is stamped in whole ms: allow the rounding.
            if b.ret + 2_000_000 < a.call + visibility_ns {
                r.problems.push(format!(
                    "job {job} was delivered again {:.1} ms after a claim whose lease lasts {} ms",
                    (b.ret.saturating_sub(a.call)) as f64 / 1e6,
                    visibility_ns / 1_000_000
                ));
            }
            if b.attempt <= a.attempt || b.lease == a.lease {
                r.problems.push(format!(
                    "job {job} was delivered twice as attempt {} (leases {} and {})",
                    b.attempt, a.lease, b.lease
                ));
            }
        }
    }
    for ack in &log.acks {
        let Some(ds) = by_job.get(&ack.job) else {
            continue;
        };
        let Some(own) = ds.iter().find(|d| d.lease == ack.lease) else {
            continue;
        };
        if let Some(later) = ds
            .iter()
            .find(|d| d.attempt > own.attempt && d.ret < ack.call)
        {
            r.problems.push(format!(
                "an ack of job {} with lease {} was accepted after attempt {} (lease {}) had been delivered",
                ack.job, ack.lease, later.attempt, later.lease
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIS: u64 = 2_000_000_000;

    fn delivery(job: u64, n: u64, lease: u64, attempt: u32, call: u64, ret: u64) -> Delivery {
        Delivery {
            n: Some(n),
            job,
            lease,
            attempt,
            call,
            ret,
        }
    }

    fn log() -> QueueLog {
        QueueLog {
            enqueues: vec![
                Enqueue {
                    n: 1,
                    job: Some(10),
                },
                Enqueue { n: 2, job: None },
            ],
            deliveries: vec![delivery(10, 1, 100, 1, 0, 5)],
            acks: vec![Ack {
                job: 10,
                lease: 100,
                call: 6,
                ret: 7,
            }],
            acks_refused: 0,
        }
    }

    #[test]
    fn a_clean_log_passes() {
        let r = check(&log(), VIS);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!((r.enqueued, r.delivered, r.acked), (1, 1, 1));
    }

    #[test]
    fn a_lost_job_is_caught() {
        let mut l = log();
        l.enqueues.push(Enqueue {
            n: 3,
            job: Some(11),
        });
        let r = check(&l, VIS);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("never delivered"));
    }

    #[test]
    fn a_job_nobody_enqueued_is_caught_and_an_unacknowledged_one_is_not() {
        let mut l = log();
        l.deliveries.push(delivery(12, 2, 101, 1, 10, 20));
        assert!(check(&l, VIS).problems.is_empty());
        l.deliveries.push(delivery(13, 99, 102, 1, 10, 20));
        let r = check(&l, VIS);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("no producer enqueued"));
    }

    #[test]
    fn a_redelivery_before_the_lease_could_expire_is_caught() {
        let mut l = log();
        l.deliveries
            .push(delivery(10, 1, 103, 2, VIS + 1, VIS + 10));
        let r = check(&l, VIS);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.redelivered, 1);
        l.deliveries[1].ret = VIS / 2;
        assert!(check(&l, VIS).problems[0].contains("delivered again"));
    }

    #[test]
    fn an_ack_on_a_superseded_lease_is_caught() {
        let mut l = log();
        l.deliveries
            .push(delivery(10, 1, 103, 2, VIS + 1, VIS + 10));
        l.acks.push(Ack {
            job: 10,
            lease: 100,
            call: VIS + 11,
            ret: VIS + 12,
        });
        let r = check(&l, VIS);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("was accepted after attempt 2"));
    }
}
