//! Job queues: delays, priorities, visibility leases, retries with backoff, dead letters and
//! cron schedules, all on the replicated clock.
//!
//! A job is *delayed* until its due time, then *ready*; a claim takes ready jobs by priority
//! (higher first), then due time, then enqueue order, and gives each a lease (from one counter,
//! so a lease never repeats). The job is *in flight* until acked (gone, counted as completed),
//! nacked or its visibility ends; then it is retried after a backoff, or moved to the *dead*
//! list once it has been claimed `max_attempts` times.
//!
//! Cron schedules fire inside apply: every due time at or before the replicated clock enqueues
//! one job, so a due time fires once whichever node leads. After downtime, missed due times
//! fire one job each, at most [`CRON_CATCH_UP_MAX`] of them (the most recent); older ones are
//! skipped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use super::{prefixed, unprefixed};
use crate::codec;
use crate::command::{Claimed, Enqueue, Response, ScheduleSpec};

const JOB_PREFIX: &[u8] = b"j:";
const QUEUE_PREFIX: &[u8] = b"q:";
const SCHEDULE_PREFIX: &[u8] = b"cr:";
const COUNTERS_KEY: &[u8] = b"m:jobs";

/// Most missed due times one schedule fires after downtime.
pub const CRON_CATCH_UP_MAX: usize = 100;
/// Longest retry delay from exponential backoff: one day.
pub const BACKOFF_MAX_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Waiting,
    InFlight,
    Dead,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub queue: String,
    /// JSON text.
    pub payload: String,
    pub priority: i64,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub unique_key: Option<String>,
    /// Claims so far.
    pub attempt: u32,
    pub state: JobState,
    /// When a waiting job becomes ready.
    pub due_ms: u64,
    /// Enqueue order.
    pub seq: u64,
    pub created_at_ms: u64,
    pub last_error: Option<String>,
    /// The current claim, while in flight.
    pub lease: Option<u64>,
    pub worker: Option<String>,
    /// When an in-flight job is offered again.
    pub visible_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub cron: String,
    pub payload: String,
    pub priority: i64,
    pub max_attempts: u32,
    pub next_at_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Counters {
    last_job_id: u64,
    last_lease: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct QueueMeta {
    completed: u64,
}

/// Counts of one queue; the same on every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub completed: u64,
}

#[derive(Default, Debug)]
struct Queue {
    /// (priority desc, due, seq) → id
    ready: BTreeSet<(Reverse<i64>, u64, u64, u64)>,
    delayed: BTreeSet<(u64, u64)>,
    in_flight: BTreeSet<u64>,
    dead: BTreeSet<u64>,
    unique: BTreeMap<String, u64>,
    meta: QueueMeta,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.ready.is_empty()
            && self.delayed.is_empty()
            && self.in_flight.is_empty()
            && self.dead.is_empty()
            && self.meta.completed == 0
    }
}

#[derive(Default, Debug)]
pub(super) struct Queues {
    jobs: BTreeMap<u64, Job>,
    queues: BTreeMap<String, Queue>,
    /// Every delayed job: (due, id).
    delayed: BTreeSet<(u64, u64)>,
    /// Every in-flight job: (visible again at, id).
    visibility: BTreeSet<(u64, u64)>,
    schedules: BTreeMap<(String, String), Schedule>,
    schedule_due: BTreeSet<(u64, String, String)>,
    counters: Counters,
}

fn job_key(id: u64) -> Vec<u8> {
    let mut k = JOB_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn schedule_key(queue: &str, name: &str) -> Vec<u8> {
    let mut k = SCHEDULE_PREFIX.to_vec();
    k.extend_from_slice(queue.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The next fire time of `cron` strictly after `after_ms` (UTC), if any.
pub fn next_fire_ms(cron: &str, after_ms: u64) -> Result<Option<u64>, String> {
    let cron = croner::Cron::from_str(cron).map_err(|e| format!("bad cron expression: {e}"))?;
    // Cron has whole seconds: start from the second `after_ms` falls in.
    let Some(start) = chrono::DateTime::from_timestamp((after_ms / 1000) as i64, 0) else {
        return Ok(None);
    };
    Ok(cron
        .find_next_occurrence(&start, false)
        .ok()
        .map(|t| t.timestamp_millis().max(0) as u64))
}

/// The retry delay after the `attempt`-th claim failed: `backoff_ms · 2^(attempt-1)`.
pub(super) fn backoff_delay_ms(backoff_ms: u64, attempt: u32) -> u64 {
    let shift = attempt.saturating_sub(1).min(32);
    backoff_ms.saturating_mul(1u64 << shift).min(BACKOFF_MAX_MS)
}

impl Queues {
    /// `now` is the replicated clock the state was saved at.
    pub(super) fn load(db: &Db, now: u64) -> storage::Result<Queues> {
        let mut q = Queues::default();
        if let Some(bytes) = db.sm_get(COUNTERS_KEY)? {
            q.counters = codec::decode(&bytes)?;
        }
        for (k, v) in db.sm_scan_prefix(QUEUE_PREFIX)? {
            let name = unprefixed(QUEUE_PREFIX, &k)?;
            q.queues.entry(name).or_default().meta = codec::decode(&v)?;
        }
        for (k, v) in db.sm_scan_prefix(JOB_PREFIX)? {
            let id_bytes: [u8; 8] = k[JOB_PREFIX.len()..]
                .try_into()
                .map_err(|_| storage::Error::Corrupt("bad job key".into()))?;
            let id = u64::from_be_bytes(id_bytes);
            let job: Job = codec::decode(&v)?;
            q.index(id, &job, now);
            q.jobs.insert(id, job);
        }
        for (k, v) in db.sm_scan_prefix(SCHEDULE_PREFIX)? {
            let rest = &k[SCHEDULE_PREFIX.len()..];
            let split = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| storage::Error::Corrupt("bad schedule key".into()))?;
            let queue = String::from_utf8(rest[..split].to_vec())
                .map_err(|_| storage::Error::Corrupt("bad schedule key".into()))?;
            let name = String::from_utf8(rest[split + 1..].to_vec())
                .map_err(|_| storage::Error::Corrupt("bad schedule key".into()))?;
            let s: Schedule = codec::decode(&v)?;
            q.schedule_due
                .insert((s.next_at_ms, queue.clone(), name.clone()));
            q.schedules.insert((queue, name), s);
        }
        Ok(q)
    }

    /// Adds `job` to the indexes; a waiting job is ready once due at `now`.
    fn index(&mut self, id: u64, job: &Job, now: u64) {
        let q = self.queues.entry(job.queue.clone()).or_default();
        match job.state {
            JobState::Waiting => {
                if job.due_ms <= now {
                    q.ready
                        .insert((Reverse(job.priority), job.due_ms, job.seq, id));
                } else {
                    q.delayed.insert((job.due_ms, id));
                    self.delayed.insert((job.due_ms, id));
                }
            }
            JobState::InFlight => {
                q.in_flight.insert(id);
                self.visibility.insert((job.visible_at_ms, id));
            }
            JobState::Dead => {
                q.dead.insert(id);
            }
        }
        if job.state != JobState::Dead {
            if let Some(u) = &job.unique_key {
                q.unique.insert(u.clone(), id);
            }
        }
    }

    fn unindex(&mut self, id: u64, job: &Job) {
        let Some(q) = self.queues.get_mut(&job.queue) else {
            return;
        };
        q.ready
            .remove(&(Reverse(job.priority), job.due_ms, job.seq, id));
        q.delayed.remove(&(job.due_ms, id));
        self.delayed.remove(&(job.due_ms, id));
        q.in_flight.remove(&id);
        self.visibility.remove(&(job.visible_at_ms, id));
        q.dead.remove(&id);
        if let Some(u) = &job.unique_key {
            if q.unique.get(u) == Some(&id) {
                q.unique.remove(u);
            }
        }
    }

    /// Re-indexes and persists a changed job.
    fn store(&mut self, id: u64, job: Job, now: u64, batch: &mut SmBatch) {
        if let Some(old) = self.jobs.remove(&id) {
            self.unindex(id, &old);
        }
        self.index(id, &job, now);
        batch.put(job_key(id), codec::encode(&job).expect("job encodes"));
        self.jobs.insert(id, job);
    }

    fn remove(&mut self, id: u64, batch: &mut SmBatch) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        self.unindex(id, &job);
        batch.delete(job_key(id));
        Some(job)
    }

    fn save_counters(&self, batch: &mut SmBatch) {
        batch.put(
            COUNTERS_KEY.to_vec(),
            codec::encode(&self.counters).expect("counters encode"),
        );
    }

    fn save_queue_meta(&self, queue: &str, batch: &mut SmBatch) {
        if let Some(q) = self.queues.get(queue) {
            batch.put(
                prefixed(QUEUE_PREFIX, queue),
                codec::encode(&q.meta).expect("queue meta encodes"),
            );
        }
    }

    pub(super) fn enqueue(
        &mut self,
        queue: &str,
        e: &Enqueue,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        if let Some(u) = &e.unique_key {
            if let Some(id) = self.queues.get(queue).and_then(|q| q.unique.get(u)) {
                return Response::Enqueued {
                    id: *id,
                    existing: true,
                };
            }
        }
        self.counters.last_job_id += 1;
        let id = self.counters.last_job_id;
        self.save_counters(batch);
        let due_ms = match (e.run_at_ms, e.delay_ms) {
            (Some(at), _) => at,
            (None, Some(d)) => now.saturating_add(d),
            (None, None) => now,
        };
        let job = Job {
            queue: queue.to_string(),
            payload: e.payload.clone(),
            priority: e.priority,
            max_attempts: e.max_attempts.max(1),
            backoff_ms: e.backoff_ms,
            unique_key: e.unique_key.clone(),
            attempt: 0,
            state: JobState::Waiting,
            due_ms,
            seq: id,
            created_at_ms: now,
            last_error: None,
            lease: None,
            worker: None,
            visible_at_ms: 0,
        };
        self.store(id, job, now, batch);
        Response::Enqueued {
            id,
            existing: false,
        }
    }

    pub(super) fn claim(
        &mut self,
        queue: &str,
        worker: &str,
        max: u32,
        visibility_ms: u64,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        let ids: Vec<u64> = match self.queues.get(queue) {
            Some(q) => q
                .ready
                .iter()
                .take(max as usize)
                .map(|(_, _, _, id)| *id)
                .collect(),
            None => Vec::new(),
        };
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let mut job = self.jobs.get(&id).cloned().expect("indexed job exists");
            self.counters.last_lease += 1;
            let lease = self.counters.last_lease;
            job.attempt += 1;
            job.state = JobState::InFlight;
            job.lease = Some(lease);
            job.worker = Some(worker.to_string());
            job.visible_at_ms = now.saturating_add(visibility_ms);
            claimed.push(Claimed {
                id,
                payload: job.payload.clone(),
                attempt: job.attempt,
                lease,
            });
            self.store(id, job, now, batch);
        }
        if !claimed.is_empty() {
            self.save_counters(batch);
        }
        Response::Claimed(claimed)
    }

    /// The in-flight job `id` if `lease` is its current claim.
    fn leased(&self, id: u64, lease: u64) -> Result<Job, Response> {
        match self.jobs.get(&id) {
            None => Err(Response::NotFound),
            Some(j) if j.state == JobState::InFlight && j.lease == Some(lease) => Ok(j.clone()),
            Some(j) => Err(Response::StaleLease { current: j.lease }),
        }
    }

    pub(super) fn ack(&mut self, id: u64, lease: u64, batch: &mut SmBatch) -> Response {
        let job = match self.leased(id, lease) {
            Ok(j) => j,
            Err(r) => return r,
        };
        self.remove(id, batch);
        self.queues
            .entry(job.queue.clone())
            .or_default()
            .meta
            .completed += 1;
        self.save_queue_meta(&job.queue, batch);
        Response::Done
    }

    pub(super) fn nack(
        &mut self,
        id: u64,
        lease: u64,
        error: Option<&str>,
        retry_in_ms: Option<u64>,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        let job = match self.leased(id, lease) {
            Ok(j) => j,
            Err(r) => return r,
        };
        self.fail(id, job, error.unwrap_or("nacked"), retry_in_ms, now, batch);
        Response::Done
    }

    pub(super) fn extend(
        &mut self,
        id: u64,
        lease: u64,
        visibility_ms: u64,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        let mut job = match self.leased(id, lease) {
            Ok(j) => j,
            Err(r) => return r,
        };
        job.visible_at_ms = now.saturating_add(visibility_ms);
        self.store(id, job, now, batch);
        Response::Done
    }

    /// A failed attempt: retry after the backoff, or dead after `max_attempts` claims.
    fn fail(
        &mut self,
        id: u64,
        mut job: Job,
        error: &str,
        retry_in_ms: Option<u64>,
        now: u64,
        batch: &mut SmBatch,
    ) {
        job.last_error = Some(error.chars().take(4096).collect());
        job.lease = None;
        job.worker = None;
        if job.attempt >= job.max_attempts {
            job.state = JobState::Dead;
        } else {
            job.state = JobState::Waiting;
            let delay =
                retry_in_ms.unwrap_or_else(|| backoff_delay_ms(job.backoff_ms, job.attempt));
            job.due_ms = now.saturating_add(delay);
        }
        self.store(id, job, now, batch);
    }

    pub(super) fn replay(
        &mut self,
        queue: &str,
        ids: Option<&[u64]>,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        let dead: Vec<u64> = match self.queues.get(queue) {
            Some(q) => match ids {
                Some(ids) => ids.iter().copied().filter(|i| q.dead.contains(i)).collect(),
                None => q.dead.iter().copied().collect(),
            },
            None => Vec::new(),
        };
        for &id in &dead {
            let mut job = self.jobs.get(&id).cloned().expect("indexed job exists");
            job.state = JobState::Waiting;
            job.attempt = 0;
            job.due_ms = now;
            if let Some(u) = &job.unique_key {
                // A new job took the unique key meanwhile: the replayed one runs without it.
                if self
                    .queues
                    .get(queue)
                    .is_some_and(|q| q.unique.contains_key(u))
                {
                    job.unique_key = None;
                }
            }
            self.store(id, job, now, batch);
        }
        Response::Count(dead.len() as u64)
    }

    pub(super) fn set_schedule(
        &mut self,
        queue: &str,
        name: &str,
        spec: &ScheduleSpec,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        let mut s = Schedule {
            cron: spec.cron.clone(),
            payload: spec.payload.clone(),
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            next_at_ms: 0,
        };
        // Due times are computed here, on the replicated clock, never by the proposer.
        match next_fire_ms(&s.cron, now) {
            Ok(Some(at)) => s.next_at_ms = at,
            Ok(None) => return Response::Rejected("the cron expression never fires".into()),
            Err(e) => return Response::Rejected(e),
        }
        self.delete_schedule(queue, name, batch);
        self.schedule_due
            .insert((s.next_at_ms, queue.to_string(), name.to_string()));
        batch.put(
            schedule_key(queue, name),
            codec::encode(&s).expect("schedule encodes"),
        );
        let next = s.next_at_ms;
        self.schedules
            .insert((queue.to_string(), name.to_string()), s);
        Response::Scheduled { next_at_ms: next }
    }

    pub(super) fn delete_schedule(
        &mut self,
        queue: &str,
        name: &str,
        batch: &mut SmBatch,
    ) -> Response {
        match self
            .schedules
            .remove(&(queue.to_string(), name.to_string()))
        {
            Some(s) => {
                self.schedule_due
                    .remove(&(s.next_at_ms, queue.to_string(), name.to_string()));
                batch.delete(schedule_key(queue, name));
                Response::Count(1)
            }
            None => Response::NotFound,
        }
    }

    /// Moves due delayed jobs to ready, retries or buries jobs whose visibility ended, and
    /// fires due cron schedules.
    pub(super) fn expire(&mut self, now: u64, batch: &mut SmBatch) {
        while let Some((at, id)) = self.delayed.first().copied() {
            if at > now {
                break;
            }
            let job = self.jobs.get(&id).cloned().expect("indexed job exists");
            // Stored unchanged; re-indexing at `now` makes it ready.
            self.unindex(id, &job);
            self.index(id, &job, now);
        }
        while let Some((at, id)) = self.visibility.first().copied() {
            if at > now {
                break;
            }
            let job = self.jobs.get(&id).cloned().expect("indexed job exists");
            self.fail(id, job, "visibility timeout", None, now, batch);
        }
        while let Some((at, queue, name)) = self.schedule_due.first().cloned() {
            if at > now {
                break;
            }
            self.fire(&queue, &name, now, batch);
        }
    }

    fn fire(&mut self, queue: &str, name: &str, now: u64, batch: &mut SmBatch) {
        let key = (queue.to_string(), name.to_string());
        let mut s = self.schedules.get(&key).cloned().expect("indexed schedule");
        self.schedule_due
            .remove(&(s.next_at_ms, queue.to_string(), name.to_string()));
        // Every due time up to now, the most recent CRON_CATCH_UP_MAX of them.
        let mut due = Vec::new();
        let mut at = s.next_at_ms;
        while at <= now {
            due.push(at);
            if due.len() > CRON_CATCH_UP_MAX {
                due.remove(0);
            }
            match next_fire_ms(&s.cron, at) {
                Ok(Some(next)) if next > at => at = next,
                _ => {
                    at = u64::MAX;
                    break;
                }
            }
        }
        for t in due {
            let e = Enqueue {
                payload: s.payload.clone(),
                delay_ms: None,
                run_at_ms: Some(t),
                priority: s.priority,
                max_attempts: s.max_attempts,
                backoff_ms: 1000,
                unique_key: Some(format!("cron:{name}:{t}")),
            };
            self.enqueue(queue, &e, now, batch);
        }
        s.next_at_ms = at;
        if at == u64::MAX {
            // The expression never fires again.
            self.schedules.remove(&key);
            batch.delete(schedule_key(queue, name));
            return;
        }
        self.schedule_due
            .insert((s.next_at_ms, queue.to_string(), name.to_string()));
        batch.put(
            schedule_key(queue, name),
            codec::encode(&s).expect("schedule encodes"),
        );
        self.schedules.insert(key, s);
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        [
            self.delayed.first().map(|(at, _)| *at),
            self.visibility.first().map(|(at, _)| *at),
            self.schedule_due.first().map(|(at, _, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn stats(&self, queue: &str) -> Option<QueueStats> {
        let q = self.queues.get(queue).filter(|q| !q.is_empty())?;
        Some(QueueStats {
            ready: q.ready.len() as u64,
            delayed: q.delayed.len() as u64,
            in_flight: q.in_flight.len() as u64,
            dead: q.dead.len() as u64,
            completed: q.meta.completed,
        })
    }

    pub(super) fn queue_names(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    /// Whether a claim on `queue` would get a job now.
    pub(super) fn has_ready(&self, queue: &str) -> bool {
        self.queues.get(queue).is_some_and(|q| !q.ready.is_empty())
    }

    pub(super) fn job(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub(super) fn dead(&self, queue: &str, limit: usize) -> Vec<(u64, &Job)> {
        self.queues
            .get(queue)
            .map(|q| {
                q.dead
                    .iter()
                    .take(limit)
                    .map(|id| (*id, &self.jobs[id]))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn schedules(&self, queue: &str) -> Vec<(String, &Schedule)> {
        self.schedules
            .range((queue.to_string(), String::new())..)
            .take_while(|((q, _), _)| q == queue)
            .map(|((_, n), s)| (n.clone(), s))
            .collect()
    }
}
