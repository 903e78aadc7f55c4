//! Counting semaphores: a name with a capacity of permits, held under leases with fences.
//!
//! # Model
//! A semaphore `name` has a capacity of M permits. An acquire asks for N of them (1 ≤ N ≤ M)
//! for `ttl_ms`; when N fit in what is free it is granted a lease of its own: a fence, the N
//! permits, and an expiry on the replicated clock. The holder renews the lease with its fence
//! and releases it with its fence; a lease not renewed ends on the replicated clock and its
//! permits are free again. A fence that is not a current lease of the semaphore is refused.
//!
//! Fences are drawn from one counter shared by all semaphores (its own, not the locks'), so
//! they strictly increase across grants, semaphores, leader changes and restarts; a semaphore
//! that holds nothing needs no record.
//! [`Compare::SemaphoreFence`](crate::command::Compare::SemaphoreFence) lets a transaction
//! apply its writes only while a lease is current.
//!
//! # Waiting
//! An acquire that does not fit either answers [`SemaphoreResult::Full`] or, given a `wait`,
//! joins the semaphore's queue until its wait ends on the replicated clock. The queue is
//! strictly FIFO: only its head may be granted, so a waiter that does not fit blocks those
//! behind it and a large request is not starved by a stream of small ones. For the same
//! reason a new acquire is not granted past queued waiters even when its permits are free.
//! Whenever permits are freed (a release, an ended lease, an ended or cancelled wait at the
//! head), the queue is served from its head in the same apply, so waiters are granted in the
//! order their acquires were logged. A wait of 0 ms does not queue.
//!
//! # Capacity
//! The capacity is not configured separately: the first acquire of a semaphore that holds
//! nothing and has no waiters sets it. While any permit is held or waited for, every acquire
//! must name the same capacity; one naming another is refused with
//! [`SemaphoreResult::CapacityMismatch`] and the current capacity. Once the last lease and
//! wait have ended the semaphore is forgotten and the next acquire sets the capacity anew.
//!
//! # Bounds
//! A semaphore's record (its leases and its queue) is rewritten whole on every change, so
//! both are bounded:
//! - [`MAX_SEMAPHORE_CAPACITY`]: a larger capacity is refused with
//!   [`SemaphoreResult::Limited`].
//! - [`MAX_HOLDERS_PER_SEMAPHORE`]: leases held at once. An acquire whose permits are free but
//!   finds this many leases answers `Limited` without a wait; with a wait it queues, and it is
//!   granted once a lease ends. The queue's head is served the same way.
//! - [`MAX_WAITERS_PER_SEMAPHORE`]: queued acquires; one more that would wait answers
//!   `Limited`.
//!
//! Nothing is applied when an acquire is refused.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use storage::SmBatch;

use super::leases::{Fences, LeaseTable, Leased, Wait};
use super::primitive::{Cx, Primitive};

/// `sem:<name>` → [`SemaphoreEntry`].
const PREFIX: &[u8] = b"sem:";
/// `m:semaphores` → the last fence handed out.
const COUNTER_KEY: &[u8] = b"m:semaphores";

/// Largest capacity of a semaphore; an acquire naming more answers
/// [`SemaphoreResult::Limited`].
pub const MAX_SEMAPHORE_CAPACITY: u32 = 1_000_000;

/// Most leases held at once on one semaphore. Past it a fitting acquire without a wait answers
/// [`SemaphoreResult::Limited`]; one with a wait queues until a lease ends.
pub const MAX_HOLDERS_PER_SEMAPHORE: usize = 1024;

/// Most callers queued on one semaphore; past it an acquire that would wait answers
/// [`SemaphoreResult::Limited`].
pub const MAX_WAITERS_PER_SEMAPHORE: usize = 1024;

/// A semaphore command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SemaphoreCmd {
    /// Grants `permits` of semaphore `name` (of `capacity` permits) to `holder` for `ttl_ms` if
    /// they fit in what is free and nobody waits; otherwise queues the caller when `wait` is
    /// given, or answers that the semaphore is full. `permits` must be in `1..=capacity`,
    /// `capacity` in `1..=MAX_SEMAPHORE_CAPACITY` and `ttl_ms` above 0.
    Acquire {
        name: String,
        holder: String,
        permits: u32,
        capacity: u32,
        ttl_ms: u64,
        wait: Option<SemaphoreWait>,
    },
    /// Withdraws a queued acquire whose caller stopped waiting. If it was granted in the
    /// meantime, the answer is that grant.
    CancelWait { name: String, waiter_id: String },
    /// Extends the lease with `fence` to `ttl_ms` (above 0) from now.
    Renew {
        name: String,
        fence: u64,
        ttl_ms: u64,
    },
    /// Ends the lease with `fence`; its permits serve the queue in the same apply.
    Release { name: String, fence: u64 },
}

/// A queued acquire of permits (see [`Wait`]).
pub type SemaphoreWait = Wait;

/// The result of a [`SemaphoreCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SemaphoreResult {
    /// A grant of `permits` under the lease `fence`, or a renewal of it.
    Granted {
        fence: u64,
        permits: u32,
        ttl_ms: u64,
    },
    /// The caller was queued with `ahead` waiters before it while `free` permits are free;
    /// its grant shows in the semaphore's state.
    Queued { free: u32, ahead: u32 },
    /// The permits asked for are not free, or others wait before the caller, and the caller
    /// did not wait. `held` permits are held, `waiting` callers are queued.
    Full { free: u32, held: u32, waiting: u32 },
    /// Permits are held or waited for under another capacity, `capacity`; nothing was applied.
    CapacityMismatch { capacity: u32 },
    /// No current lease of this semaphore has this fence (it ended, or never was).
    StaleFence,
    /// The lease ended and its `permits` are free.
    Released { permits: u32 },
    /// The queued acquire was withdrawn.
    Cancelled,
    /// No queued acquire or lease has this waiter id.
    NotFound,
    /// A bound was reached (capacity, leases or waiters); nothing was applied.
    Limited(String),
    /// A malformed command (permits outside `1..=capacity`, a capacity of 0, a TTL of 0);
    /// nothing was applied.
    Invalid(String),
}

/// A lease on some permits of a semaphore; its fence is its key in [`SemaphoreEntry::holders`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaphoreLease {
    pub holder: String,
    pub permits: u32,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
    /// The queued acquire this grant answered, if it was one.
    pub waiter_id: Option<String>,
}

/// A queued acquire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaphoreWaiter {
    pub id: String,
    pub holder: String,
    pub permits: u32,
    pub ttl_ms: u64,
    pub deadline_ms: u64,
}

/// One semaphore: its capacity, its leases by fence and the queue behind them, first waiter
/// first. Invariants: the leases hold at most `capacity` permits, there are at most
/// [`MAX_HOLDERS_PER_SEMAPHORE`] of them, and the queue's head does not fit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaphoreEntry {
    pub capacity: u32,
    pub holders: BTreeMap<u64, SemaphoreLease>,
    pub waiters: VecDeque<SemaphoreWaiter>,
}

impl SemaphoreEntry {
    /// Permits held by current leases.
    pub fn held(&self) -> u32 {
        self.holders.values().map(|l| l.permits).sum()
    }

    /// Permits not held.
    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.held())
    }

    /// Whether `permits` can be granted now, leaving the queue aside.
    fn fits(&self, permits: u32) -> bool {
        permits <= self.free() && self.holders.len() < MAX_HOLDERS_PER_SEMAPHORE
    }

    fn waiting(&self) -> u32 {
        count(self.waiters.len())
    }
}

/// A count bounded by [`MAX_WAITERS_PER_SEMAPHORE`] or [`MAX_HOLDERS_PER_SEMAPHORE`].
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Every semaphore, by name.
pub(crate) type Semaphores = LeaseTable<SemaphoreEntry>;

impl Primitive for Semaphores {
    type Cmd = SemaphoreCmd;
    type Output = SemaphoreResult;

    fn apply(&mut self, cmd: &SemaphoreCmd, cx: &mut Cx<'_>) -> SemaphoreResult {
        let now = cx.now();
        match cmd {
            SemaphoreCmd::Acquire {
                name,
                holder,
                permits,
                capacity,
                ttl_ms,
                wait,
            } => {
                let req = AcquireReq {
                    holder,
                    permits: *permits,
                    capacity: *capacity,
                    ttl_ms: *ttl_ms,
                    wait: wait.as_ref(),
                };
                self.acquire(name, req, now, cx.batch)
            }
            SemaphoreCmd::CancelWait { name, waiter_id } => {
                self.cancel_wait(name, waiter_id, now, cx.batch)
            }
            SemaphoreCmd::Renew {
                name,
                fence,
                ttl_ms,
            } => self.renew(name, *fence, *ttl_ms, now, cx.batch),
            SemaphoreCmd::Release { name, fence } => self.release(name, *fence, now, cx.batch),
        }
    }

    /// Only `Release`: whether or not the lease was still current, afterwards it holds
    /// nothing, so its effect does not depend on the state it meets and a transaction's
    /// compares stay its only conditions (e.g. write a result and give the permits back while
    /// [`Compare::SemaphoreFence`](crate::command::Compare::SemaphoreFence) holds). `Acquire`
    /// and `Renew` succeed or not depending on what is free or current, and `CancelWait` may
    /// answer a grant.
    fn in_txn(cmd: &SemaphoreCmd) -> bool {
        matches!(cmd, SemaphoreCmd::Release { .. })
    }
}

/// The fields of an acquire.
struct AcquireReq<'a> {
    holder: &'a str,
    permits: u32,
    capacity: u32,
    ttl_ms: u64,
    wait: Option<&'a SemaphoreWait>,
}

impl AcquireReq<'_> {
    /// Why the acquire is malformed or past [`MAX_SEMAPHORE_CAPACITY`]; checked before the
    /// state is.
    fn refusal(&self) -> Option<SemaphoreResult> {
        let (permits, capacity) = (self.permits, self.capacity);
        if capacity == 0 {
            Some(SemaphoreResult::Invalid(
                "a semaphore's capacity is at least 1".into(),
            ))
        } else if capacity > MAX_SEMAPHORE_CAPACITY {
            Some(SemaphoreResult::Limited(format!(
                "a semaphore has at most {MAX_SEMAPHORE_CAPACITY} permits, not {capacity}"
            )))
        } else if permits == 0 || permits > capacity {
            Some(SemaphoreResult::Invalid(format!(
                "permits must be in 1..={capacity}, not {permits}"
            )))
        } else if self.ttl_ms == 0 {
            Some(SemaphoreResult::Invalid("a lease's TTL is above 0".into()))
        } else {
            None
        }
    }
}

impl Semaphores {
    /// Whether `fence` is a current lease of semaphore `name`.
    pub(super) fn holds(&self, name: &str, fence: u64) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.holders.contains_key(&fence))
    }

    fn acquire(
        &mut self,
        name: &str,
        req: AcquireReq<'_>,
        now: u64,
        batch: &mut SmBatch,
    ) -> SemaphoreResult {
        if let Some(refused) = req.refusal() {
            return refused;
        }
        self.update(name, now, batch, |entry, fences| {
            if entry.is_empty() {
                entry.capacity = req.capacity;
            } else if entry.capacity != req.capacity {
                return SemaphoreResult::CapacityMismatch {
                    capacity: entry.capacity,
                };
            }
            if entry.waiters.is_empty() && entry.fits(req.permits) {
                let fence = fences.next();
                entry.holders.insert(
                    fence,
                    SemaphoreLease {
                        holder: req.holder.to_string(),
                        permits: req.permits,
                        ttl_ms: req.ttl_ms,
                        expires_at_ms: now.saturating_add(req.ttl_ms),
                        waiter_id: None,
                    },
                );
                return SemaphoreResult::Granted {
                    fence,
                    permits: req.permits,
                    ttl_ms: req.ttl_ms,
                };
            }
            match req.wait.filter(|w| w.wait_ms > 0) {
                Some(_) if entry.waiters.len() >= MAX_WAITERS_PER_SEMAPHORE => {
                    SemaphoreResult::Limited(format!(
                        "{MAX_WAITERS_PER_SEMAPHORE} callers already wait for this semaphore"
                    ))
                }
                Some(w) => {
                    let ahead = entry.waiting();
                    entry.waiters.push_back(SemaphoreWaiter {
                        id: w.waiter_id.clone(),
                        holder: req.holder.to_string(),
                        permits: req.permits,
                        ttl_ms: req.ttl_ms,
                        deadline_ms: now.saturating_add(w.wait_ms),
                    });
                    SemaphoreResult::Queued {
                        free: entry.free(),
                        ahead,
                    }
                }
                None if entry.waiters.is_empty() && req.permits <= entry.free() => {
                    SemaphoreResult::Limited(format!(
                        "{MAX_HOLDERS_PER_SEMAPHORE} leases already hold permits of this semaphore"
                    ))
                }
                None => SemaphoreResult::Full {
                    free: entry.free(),
                    held: entry.held(),
                    waiting: entry.waiting(),
                },
            }
        })
    }

    /// Removes a waiter; if it was granted meanwhile, answers the grant.
    fn cancel_wait(
        &mut self,
        name: &str,
        waiter_id: &str,
        now: u64,
        batch: &mut SmBatch,
    ) -> SemaphoreResult {
        self.update(name, now, batch, |entry, _| {
            let granted = entry
                .holders
                .iter()
                .find(|(_, l)| l.waiter_id.as_deref() == Some(waiter_id));
            if let Some((&fence, l)) = granted {
                return SemaphoreResult::Granted {
                    fence,
                    permits: l.permits,
                    ttl_ms: l.ttl_ms,
                };
            }
            let before = entry.waiters.len();
            entry.waiters.retain(|w| w.id != waiter_id);
            if entry.waiters.len() < before {
                SemaphoreResult::Cancelled
            } else {
                SemaphoreResult::NotFound
            }
        })
    }

    fn renew(
        &mut self,
        name: &str,
        fence: u64,
        ttl_ms: u64,
        now: u64,
        batch: &mut SmBatch,
    ) -> SemaphoreResult {
        if ttl_ms == 0 {
            return SemaphoreResult::Invalid("a lease's TTL is above 0".into());
        }
        self.update(name, now, batch, |entry, _| {
            match entry.holders.get_mut(&fence) {
                Some(l) => {
                    l.ttl_ms = ttl_ms;
                    l.expires_at_ms = now.saturating_add(ttl_ms);
                    SemaphoreResult::Granted {
                        fence,
                        permits: l.permits,
                        ttl_ms,
                    }
                }
                None => SemaphoreResult::StaleFence,
            }
        })
    }

    fn release(
        &mut self,
        name: &str,
        fence: u64,
        now: u64,
        batch: &mut SmBatch,
    ) -> SemaphoreResult {
        self.update(name, now, batch, |entry, _| {
            match entry.holders.remove(&fence) {
                Some(l) => SemaphoreResult::Released { permits: l.permits },
                None => SemaphoreResult::StaleFence,
            }
        })
    }
}

impl Leased for SemaphoreEntry {
    const PREFIX: &'static [u8] = PREFIX;
    const COUNTER_KEY: &'static [u8] = COUNTER_KEY;

    fn deadlines(&self) -> Vec<u64> {
        let mut d: Vec<u64> = self.waiters.iter().map(|w| w.deadline_ms).collect();
        d.extend(self.holders.values().map(|l| l.expires_at_ms));
        d
    }

    fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// Ends due leases and due waits, then grants the queue's head while it fits.
    ///
    /// Every lease has a TTL above 0, so none granted here is already due.
    fn settle(&mut self, now: u64, fences: &mut Fences<'_>) {
        self.holders.retain(|_, l| l.expires_at_ms > now);
        self.waiters.retain(|w| w.deadline_ms > now);
        while self.waiters.front().is_some_and(|w| self.fits(w.permits)) {
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            self.holders.insert(
                fences.next(),
                SemaphoreLease {
                    holder: w.holder,
                    permits: w.permits,
                    ttl_ms: w.ttl_ms,
                    expires_at_ms: now.saturating_add(w.ttl_ms),
                    waiter_id: Some(w.id),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Compare, KvCmd, KvResult, Request, Response, Txn, TxnResult};
    use crate::state::{txn_op_allowed, State};

    fn run(s: &mut State, stamp_ms: u64, command: Command) -> Response {
        let req = Request {
            stamp_ms,
            idempotency_key: None,
            command,
        };
        s.apply(&req, &mut SmBatch::default())
    }

    /// Applies a semaphore command and answers its result.
    fn sem(s: &mut State, stamp_ms: u64, cmd: SemaphoreCmd) -> SemaphoreResult {
        match run(s, stamp_ms, Command::Semaphore(cmd)) {
            Response::Semaphore(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn tick(s: &mut State, stamp_ms: u64) {
        run(s, stamp_ms, Command::Tick);
    }

    fn acquire(
        name: &str,
        holder: &str,
        permits: u32,
        capacity: u32,
        ttl_ms: u64,
        wait: Option<(&str, u64)>,
    ) -> SemaphoreCmd {
        SemaphoreCmd::Acquire {
            name: name.into(),
            holder: holder.into(),
            permits,
            capacity,
            ttl_ms,
            wait: wait.map(|(id, wait_ms)| SemaphoreWait {
                waiter_id: id.into(),
                wait_ms,
            }),
        }
    }

    fn release(name: &str, fence: u64) -> SemaphoreCmd {
        SemaphoreCmd::Release {
            name: name.into(),
            fence,
        }
    }

    fn renew(name: &str, fence: u64, ttl_ms: u64) -> SemaphoreCmd {
        SemaphoreCmd::Renew {
            name: name.into(),
            fence,
            ttl_ms,
        }
    }

    fn cancel(name: &str, waiter_id: &str) -> SemaphoreCmd {
        SemaphoreCmd::CancelWait {
            name: name.into(),
            waiter_id: waiter_id.into(),
        }
    }

    fn granted(fence: u64, permits: u32, ttl_ms: u64) -> SemaphoreResult {
        SemaphoreResult::Granted {
            fence,
            permits,
            ttl_ms,
        }
    }

    /// The semaphore's leases as (fence, holder, permits), in fence order.
    fn leases(s: &State, name: &str) -> Vec<(u64, String, u32)> {
        s.semaphore(name)
            .map(|e| {
                e.holders
                    .iter()
                    .map(|(f, l)| (*f, l.holder.clone(), l.permits))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn lease(fence: u64, holder: &str, permits: u32) -> (u64, String, u32) {
        (fence, holder.to_string(), permits)
    }

    fn waiter_ids(s: &State, name: &str) -> Vec<String> {
        s.semaphore(name)
            .map(|e| e.waiters.iter().map(|w| w.id.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn grants_up_to_capacity_then_answers_full() {
        let mut s = State::default();
        assert_eq!(
            sem(&mut s, 0, acquire("S", "a", 2, 5, 1000, None)),
            granted(1, 2, 1000)
        );
        assert_eq!(
            sem(&mut s, 0, acquire("S", "b", 3, 5, 1000, None)),
            granted(2, 3, 1000)
        );
        assert_eq!(
            sem(&mut s, 0, acquire("S", "c", 1, 5, 1000, None)),
            SemaphoreResult::Full {
                free: 0,
                held: 5,
                waiting: 0
            }
        );
        let e = s.semaphore("S").unwrap();
        assert_eq!((e.capacity, e.held(), e.free()), (5, 5, 0));
        assert_eq!(leases(&s, "S"), [lease(1, "a", 2), lease(2, "b", 3)]);

        assert_eq!(
            sem(&mut s, 10, release("S", 1)),
            SemaphoreResult::Released { permits: 2 }
        );
        assert_eq!(
            sem(&mut s, 10, acquire("S", "c", 1, 5, 1000, None)),
            granted(3, 1, 1000)
        );
        assert_eq!(
            sem(&mut s, 10, acquire("S", "d", 2, 5, 1000, None)),
            SemaphoreResult::Full {
                free: 1,
                held: 4,
                waiting: 0
            }
        );
    }

    #[test]
    fn waiters_are_served_in_arrival_order_and_a_large_head_is_not_starved() {
        let mut s = State::default();
        assert_eq!(
            sem(&mut s, 0, acquire("S", "a", 3, 4, 10_000, None)),
            granted(1, 3, 10_000)
        );
        // b needs all four permits: it waits at the head.
        assert_eq!(
            sem(
                &mut s,
                1,
                acquire("S", "b", 4, 4, 10_000, Some(("wb", 5_000)))
            ),
            SemaphoreResult::Queued { free: 1, ahead: 0 }
        );
        // c's one permit is free, but b came first.
        assert_eq!(
            sem(
                &mut s,
                2,
                acquire("S", "c", 1, 4, 10_000, Some(("wc", 5_000)))
            ),
            SemaphoreResult::Queued { free: 1, ahead: 1 }
        );
        assert_eq!(
            sem(
                &mut s,
                3,
                acquire("S", "e", 1, 4, 10_000, Some(("we", 5_000)))
            ),
            SemaphoreResult::Queued { free: 1, ahead: 2 }
        );
        // Nor does a caller who does not wait pass them.
        assert_eq!(
            sem(&mut s, 4, acquire("S", "d", 1, 4, 10_000, None)),
            SemaphoreResult::Full {
                free: 1,
                held: 3,
                waiting: 3
            }
        );
        // a's release lets b in, in the same apply; c and e still wait behind b.
        assert_eq!(
            sem(&mut s, 10, release("S", 1)),
            SemaphoreResult::Released { permits: 3 }
        );
        assert_eq!(leases(&s, "S"), [lease(2, "b", 4)]);
        let b = &s.semaphore("S").unwrap().holders[&2];
        assert_eq!(
            (b.waiter_id.as_deref(), b.expires_at_ms),
            (Some("wb"), 10_010)
        );
        assert_eq!(waiter_ids(&s, "S"), ["wc", "we"]);
        // b's release serves both, in arrival order.
        sem(&mut s, 20, release("S", 2));
        assert_eq!(leases(&s, "S"), [lease(3, "c", 1), lease(4, "e", 1)]);
        assert!(waiter_ids(&s, "S").is_empty());
    }

    #[test]
    fn leases_end_on_the_replicated_clock_and_free_permits_for_waiters() {
        let mut s = State::default();
        sem(&mut s, 0, acquire("S", "a", 2, 2, 100, None));
        sem(&mut s, 10, acquire("S", "b", 1, 2, 50, Some(("wb", 1_000))));
        sem(&mut s, 10, acquire("S", "c", 1, 2, 80, Some(("wc", 1_000))));
        assert_eq!(s.next_deadline_ms(), Some(100));
        tick(&mut s, 99);
        assert_eq!(leases(&s, "S"), [lease(1, "a", 2)]);
        tick(&mut s, 100);
        assert_eq!(leases(&s, "S"), [lease(2, "b", 1), lease(3, "c", 1)]);
        assert!(waiter_ids(&s, "S").is_empty());
        assert_eq!(s.next_deadline_ms(), Some(150));
        // A renewal moves the lease's end.
        assert_eq!(sem(&mut s, 120, renew("S", 3, 100)), granted(3, 1, 100));
        assert_eq!(s.semaphore("S").unwrap().holders[&3].expires_at_ms, 220);
        tick(&mut s, 150);
        assert_eq!(leases(&s, "S"), [lease(3, "c", 1)]);
        tick(&mut s, 219);
        assert_eq!(leases(&s, "S"), [lease(3, "c", 1)]);
        tick(&mut s, 220);
        assert!(s.semaphore("S").is_none(), "nothing held: no record");
        assert_eq!(s.next_deadline_ms(), None);
    }

    #[test]
    fn waits_end_on_the_replicated_clock_and_unblock_those_behind() {
        let mut s = State::default();
        sem(&mut s, 0, acquire("S", "a", 1, 2, 10_000, None));
        assert_eq!(
            sem(&mut s, 0, acquire("S", "w1", 2, 2, 500, Some(("w1", 100)))),
            SemaphoreResult::Queued { free: 1, ahead: 0 }
        );
        assert_eq!(
            sem(
                &mut s,
                0,
                acquire("S", "w2", 1, 2, 500, Some(("w2", 1_000)))
            ),
            SemaphoreResult::Queued { free: 1, ahead: 1 }
        );
        // A wait of 0 ms does not queue.
        assert_eq!(
            sem(&mut s, 0, acquire("S", "w3", 1, 2, 500, Some(("w3", 0)))),
            SemaphoreResult::Full {
                free: 1,
                held: 1,
                waiting: 2
            }
        );
        assert_eq!(s.next_deadline_ms(), Some(100));
        tick(&mut s, 99);
        assert_eq!(waiter_ids(&s, "S"), ["w1", "w2"]);
        // w1's wait ends; w2, now at the head, fits and is granted in the same apply.
        tick(&mut s, 100);
        assert!(waiter_ids(&s, "S").is_empty());
        assert_eq!(leases(&s, "S"), [lease(1, "a", 1), lease(2, "w2", 1)]);
        assert_eq!(
            sem(&mut s, 101, cancel("S", "w1")),
            SemaphoreResult::NotFound
        );
    }

    #[test]
    fn fences_strictly_increase_across_semaphores() {
        let mut s = State::default();
        assert_eq!(
            sem(&mut s, 0, acquire("x", "a", 1, 2, 100, None)),
            granted(1, 1, 100)
        );
        assert_eq!(
            sem(&mut s, 0, acquire("y", "a", 1, 1, 100, None)),
            granted(2, 1, 100)
        );
        assert_eq!(
            sem(&mut s, 0, acquire("x", "b", 1, 2, 100, None)),
            granted(3, 1, 100)
        );
        sem(&mut s, 1, release("x", 1));
        sem(&mut s, 1, release("x", 3));
        assert!(s.semaphore("x").is_none());
        // A semaphore that held nothing for a while still gets a new fence.
        assert_eq!(
            sem(&mut s, 2, acquire("x", "c", 1, 2, 100, None)),
            granted(4, 1, 100)
        );
        tick(&mut s, 1_000);
        assert!(s.semaphore("x").is_none() && s.semaphore("y").is_none());
        assert_eq!(
            sem(&mut s, 1_001, acquire("z", "d", 1, 1, 100, None)),
            granted(5, 1, 100)
        );
    }

    #[test]
    fn a_fence_that_is_not_a_current_lease_is_refused() {
        let mut s = State::default();
        sem(&mut s, 0, acquire("x", "a", 1, 2, 100, None)); // fence 1
        sem(&mut s, 0, acquire("y", "b", 1, 1, 100, None)); // fence 2
                                                            // Another semaphore's fence, or one never handed out.
        assert_eq!(
            sem(&mut s, 1, renew("x", 2, 100)),
            SemaphoreResult::StaleFence
        );
        assert_eq!(
            sem(&mut s, 1, release("x", 99)),
            SemaphoreResult::StaleFence
        );
        assert_eq!(
            sem(&mut s, 1, release("nope", 1)),
            SemaphoreResult::StaleFence
        );
        assert!(s.semaphore("nope").is_none());
        assert_eq!(
            sem(&mut s, 1, renew("x", 1, 0)),
            SemaphoreResult::Invalid("a lease's TTL is above 0".into())
        );
        // A released lease.
        assert_eq!(
            sem(&mut s, 2, release("x", 1)),
            SemaphoreResult::Released { permits: 1 }
        );
        assert_eq!(sem(&mut s, 3, release("x", 1)), SemaphoreResult::StaleFence);
        assert_eq!(
            sem(&mut s, 3, renew("x", 1, 100)),
            SemaphoreResult::StaleFence
        );
        // An ended lease.
        assert_eq!(
            sem(&mut s, 200, acquire("x", "c", 1, 2, 100, None)),
            granted(3, 1, 100)
        );
        assert_eq!(
            sem(&mut s, 300, renew("x", 3, 100)),
            SemaphoreResult::StaleFence
        );
    }

    #[test]
    fn cancel_wait_answers_a_grant_made_meanwhile_or_withdraws_the_waiter() {
        let mut s = State::default();
        sem(&mut s, 0, acquire("S", "a", 2, 3, 1_000, None)); // fence 1
        sem(
            &mut s,
            0,
            acquire("S", "big", 3, 3, 700, Some(("wbig", 5_000))),
        );
        sem(
            &mut s,
            0,
            acquire("S", "small", 1, 3, 600, Some(("wsmall", 5_000))),
        );
        assert_eq!(leases(&s, "S"), [lease(1, "a", 2)]);
        // Withdrawing the head lets the one behind it in, in the same apply.
        assert_eq!(
            sem(&mut s, 10, cancel("S", "wbig")),
            SemaphoreResult::Cancelled
        );
        assert_eq!(leases(&s, "S"), [lease(1, "a", 2), lease(2, "small", 1)]);
        // The caller that stopped waiting learns it was granted, and holds the lease.
        assert_eq!(sem(&mut s, 20, cancel("S", "wsmall")), granted(2, 1, 600));
        assert_eq!(leases(&s, "S"), [lease(1, "a", 2), lease(2, "small", 1)]);
        assert_eq!(
            sem(&mut s, 20, cancel("S", "wbig")),
            SemaphoreResult::NotFound
        );
        assert_eq!(
            sem(&mut s, 20, cancel("none", "w")),
            SemaphoreResult::NotFound
        );
        assert!(s.semaphore("none").is_none());
        // Once the granted lease ends, its waiter id is unknown.
        tick(&mut s, 620);
        assert_eq!(
            sem(&mut s, 620, cancel("S", "wsmall")),
            SemaphoreResult::NotFound
        );
    }

    #[test]
    fn capacity_is_set_by_the_first_acquire_and_must_match_while_held() {
        let mut s = State::default();
        assert_eq!(
            sem(&mut s, 0, acquire("S", "a", 1, 3, 1_000, None)),
            granted(1, 1, 1_000)
        );
        sem(
            &mut s,
            0,
            acquire("S", "b", 3, 3, 1_000, Some(("wb", 1_000))),
        );
        let mismatch = SemaphoreResult::CapacityMismatch { capacity: 3 };
        assert_eq!(
            sem(&mut s, 1, acquire("S", "c", 1, 4, 1_000, None)),
            mismatch
        );
        assert_eq!(
            sem(
                &mut s,
                1,
                acquire("S", "c", 1, 4, 1_000, Some(("wc", 1_000)))
            ),
            mismatch
        );
        // Nothing was applied: no lease, no waiter, no fence spent.
        assert_eq!(leases(&s, "S"), [lease(1, "a", 1)]);
        assert_eq!(waiter_ids(&s, "S"), ["wb"]);
        // Still refused while held: b was granted from the queue.
        sem(&mut s, 2, release("S", 1));
        assert_eq!(leases(&s, "S"), [lease(2, "b", 3)]);
        assert_eq!(
            sem(&mut s, 3, acquire("S", "c", 1, 2, 1_000, None)),
            mismatch
        );
        // Once nothing is held, the next acquire sets the capacity anew.
        sem(&mut s, 4, release("S", 2));
        assert!(s.semaphore("S").is_none());
        assert_eq!(
            sem(&mut s, 5, acquire("S", "c", 4, 4, 1_000, None)),
            granted(3, 4, 1_000)
        );
        assert_eq!(s.semaphore("S").unwrap().capacity, 4);
    }

    #[test]
    fn malformed_acquires_and_the_capacity_bound_apply_nothing() {
        let mut s = State::default();
        let cases = [
            (
                acquire("S", "a", 1, MAX_SEMAPHORE_CAPACITY + 1, 100, None),
                SemaphoreResult::Limited(format!(
                    "a semaphore has at most {MAX_SEMAPHORE_CAPACITY} permits, not {}",
                    MAX_SEMAPHORE_CAPACITY + 1
                )),
            ),
            (
                acquire("S", "a", 1, 0, 100, None),
                SemaphoreResult::Invalid("a semaphore's capacity is at least 1".into()),
            ),
            (
                acquire("S", "a", 0, 3, 100, None),
                SemaphoreResult::Invalid("permits must be in 1..=3, not 0".into()),
            ),
            (
                acquire("S", "a", 4, 3, 100, Some(("w", 100))),
                SemaphoreResult::Invalid("permits must be in 1..=3, not 4".into()),
            ),
            (
                acquire("S", "a", 1, 3, 0, None),
                SemaphoreResult::Invalid("a lease's TTL is above 0".into()),
            ),
        ];
        for (cmd, want) in cases {
            assert_eq!(sem(&mut s, 0, cmd), want);
            assert!(s.semaphore("S").is_none());
        }
        // The largest capacity, all at once.
        assert_eq!(
            sem(
                &mut s,
                0,
                acquire(
                    "S",
                    "a",
                    MAX_SEMAPHORE_CAPACITY,
                    MAX_SEMAPHORE_CAPACITY,
                    100,
                    None
                )
            ),
            granted(1, MAX_SEMAPHORE_CAPACITY, 100)
        );
    }

    #[test]
    fn the_holders_bound_refuses_or_queues_until_a_lease_ends() {
        let mut s = State::default();
        let cap = MAX_HOLDERS_PER_SEMAPHORE as u32 + 10;
        for i in 0..MAX_HOLDERS_PER_SEMAPHORE {
            let r = sem(
                &mut s,
                0,
                acquire("S", &format!("h{i}"), 1, cap, 1_000, None),
            );
            assert!(matches!(r, SemaphoreResult::Granted { .. }), "{r:?}");
        }
        assert_eq!(
            sem(&mut s, 1, acquire("S", "x", 1, cap, 1_000, None)),
            SemaphoreResult::Limited(format!(
                "{MAX_HOLDERS_PER_SEMAPHORE} leases already hold permits of this semaphore"
            ))
        );
        assert_eq!(
            sem(
                &mut s,
                1,
                acquire("S", "x", 1, cap, 1_000, Some(("wx", 1_000)))
            ),
            SemaphoreResult::Queued { free: 10, ahead: 0 }
        );
        // With a waiter ahead, a caller that does not wait is told it is full.
        assert_eq!(
            sem(&mut s, 1, acquire("S", "y", 1, cap, 1_000, None)),
            SemaphoreResult::Full {
                free: 10,
                held: MAX_HOLDERS_PER_SEMAPHORE as u32,
                waiting: 1
            }
        );
        sem(&mut s, 2, release("S", 1));
        let e = s.semaphore("S").unwrap();
        assert_eq!(e.holders.len(), MAX_HOLDERS_PER_SEMAPHORE);
        assert!(e.waiters.is_empty());
        assert_eq!(e.holders.values().last().unwrap().holder, "x");
    }

    #[test]
    fn the_waiters_bound_refuses_another_waiter() {
        let mut s = State::default();
        sem(&mut s, 0, acquire("S", "a", 1, 1, 10_000, None));
        for i in 0..MAX_WAITERS_PER_SEMAPHORE {
            let id = format!("w{i}");
            let r = sem(
                &mut s,
                0,
                acquire("S", &id, 1, 1, 1_000, Some((&id, 5_000))),
            );
            assert!(matches!(r, SemaphoreResult::Queued { .. }), "{r:?}");
        }
        assert_eq!(
            sem(
                &mut s,
                1,
                acquire("S", "x", 1, 1, 1_000, Some(("wx", 5_000)))
            ),
            SemaphoreResult::Limited(format!(
                "{MAX_WAITERS_PER_SEMAPHORE} callers already wait for this semaphore"
            ))
        );
        assert_eq!(
            sem(&mut s, 1, acquire("S", "x", 1, 1, 1_000, None)),
            SemaphoreResult::Full {
                free: 0,
                held: 1,
                waiting: MAX_WAITERS_PER_SEMAPHORE as u32
            }
        );
        assert_eq!(
            s.semaphore("S").unwrap().waiters.len(),
            MAX_WAITERS_PER_SEMAPHORE
        );
    }

    #[test]
    fn a_transaction_can_hold_only_while_a_lease_is_current_and_release_it() {
        let mut s = State::default();
        sem(&mut s, 0, acquire("S", "a", 2, 2, 1_000, None)); // fence 1
        sem(
            &mut s,
            0,
            acquire("S", "b", 1, 2, 1_000, Some(("wb", 5_000))),
        );
        let put = |key: &str| {
            Command::Kv(KvCmd::Put {
                key: key.into(),
                value: b"1".to_vec(),
                if_revision: None,
                ttl_ms: None,
            })
        };
        let txn = Command::Txn(Txn {
            compare: vec![Compare::SemaphoreFence {
                semaphore: "S".into(),
                fence: 1,
            }],
            success: vec![put("done"), Command::Semaphore(release("S", 1))],
            failure: vec![put("lost")],
        });
        assert_eq!(
            run(&mut s, 10, txn.clone()),
            Response::Txn(TxnResult {
                succeeded: true,
                revision: 1,
                results: vec![
                    Response::Kv(KvResult::Put { revision: 1 }),
                    Response::Semaphore(SemaphoreResult::Released { permits: 2 }),
                ],
            })
        );
        // The release served the waiter in the same apply.
        assert_eq!(leases(&s, "S"), [lease(2, "b", 1)]);
        // The lease is gone: the same transaction now takes its failure branch.
        assert!(matches!(
            run(&mut s, 11, txn),
            Response::Txn(TxnResult {
                succeeded: false,
                ..
            })
        ));
        assert!(s.get("lost").unwrap().is_some());

        // Only a release may be a transaction's write.
        let acq = Command::Semaphore(acquire("S", "c", 1, 2, 1_000, None));
        assert!(txn_op_allowed(&Command::Semaphore(release("S", 2))));
        assert!(!txn_op_allowed(&acq));
        assert!(!txn_op_allowed(&Command::Semaphore(renew("S", 2, 10))));
        assert!(!txn_op_allowed(&Command::Semaphore(cancel("S", "w"))));
        let r = run(
            &mut s,
            12,
            Command::Txn(Txn {
                compare: vec![],
                success: vec![acq],
                failure: vec![],
            }),
        );
        assert!(matches!(r, Response::Rejected(_)), "{r:?}");
        assert_eq!(leases(&s, "S"), [lease(2, "b", 1)]);
    }

    /// What apply writes through to RocksDB rebuilds the same semaphores, fence counter
    /// included.
    #[test]
    fn a_reloaded_state_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let commands = [
            (0, acquire("x", "a", 2, 3, 5_000, None)),
            (1, acquire("x", "b", 2, 3, 5_000, Some(("wb", 9_000)))),
            (2, acquire("y", "c", 1, 1, 5_000, None)),
            (3, release("y", 2)),
            (4, acquire("z", "d", 1, 1, 50, None)),
            (5, acquire("z", "e", 1, 1, 500, Some(("we", 9_000)))),
        ];
        let apply = |s: &mut State, stamp_ms: u64, command: Command| {
            let mut batch = SmBatch::default();
            let r = s.apply(
                &Request {
                    stamp_ms,
                    idempotency_key: None,
                    command,
                },
                &mut batch,
            );
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
            r
        };
        for (stamp, cmd) in commands {
            apply(&mut s, stamp, Command::Semaphore(cmd));
        }
        // d's lease ends at 54: e is granted by the tick.
        apply(&mut s, 60, Command::Tick);
        assert_eq!(leases(&s, "z"), [lease(4, "e", 1)]);

        let mut r = State::load(&db).unwrap();
        for name in ["x", "y", "z"] {
            assert_eq!(r.semaphore(name), s.semaphore(name), "{name}");
        }
        assert!(r.semaphore("y").is_none());
        assert_eq!(r.next_deadline_ms(), s.next_deadline_ms());
        // The fence counter continues where it was, and the queue is served the same.
        let next = acquire("y", "f", 1, 1, 100, None);
        assert_eq!(sem(&mut r, 70, next.clone()), sem(&mut s, 70, next),);
        assert_eq!(leases(&r, "y"), [lease(5, "f", 1)]);
        sem(&mut r, 80, release("x", 1));
        sem(&mut s, 80, release("x", 1));
        assert_eq!(r.semaphore("x"), s.semaphore("x"));
        assert_eq!(leases(&r, "x"), [lease(6, "b", 2)]);
    }
}
