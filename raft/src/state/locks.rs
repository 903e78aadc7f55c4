//! Locks with leases and fencing tokens.
//!
//! A fence is drawn from one counter shared by all locks, so it strictly increases for any
//! one name across grants, leader changes and restarts, and a released lock needs no record.
//! Leases and waits end on the replicated clock; a waiter is granted the lock in the same
//! apply that frees it, so waiters are served in the order their acquires were logged.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use storage::SmBatch;

use super::leases::{Fences, LeaseTable, Leased, Wait};
use super::primitive::{Cx, Primitive};

const PREFIX: &[u8] = b"l:";
const COUNTER_KEY: &[u8] = b"m:locks";

/// Most callers queued on one lock; past it an acquire answers [`LockResult::Limited`].
pub const MAX_WAITERS_PER_LOCK: usize = 1024;

/// A lock command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockCmd {
    /// Grants lock `name` to `owner` for `ttl_ms` if it is free; otherwise queues the caller
    /// when `wait` is given (waiters are served in log order), or answers who holds it.
    Acquire {
        name: String,
        owner: String,
        ttl_ms: u64,
        wait: Option<LockWait>,
    },
    /// Withdraws a queued acquire whose caller stopped waiting. If the lock was granted to it
    /// in the meantime, the answer is that grant.
    CancelWait { name: String, waiter_id: String },
    /// Extends the lease of the holder with `fence` to `ttl_ms` from now.
    Renew {
        name: String,
        fence: u64,
        ttl_ms: u64,
    },
    /// Releases the lock held with `fence`; the next waiter, if any, is granted it.
    Release { name: String, fence: u64 },
    /// Releases the lock if `owner` holds it, as Redis clients unlock (compare and delete);
    /// answers `Released`, or `StaleFence` when another owner or nobody holds it.
    ReleaseOwned { name: String, owner: String },
}

/// A queued acquire of a lock (see [`Wait`]).
pub type LockWait = Wait;

/// The result of a [`LockCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockResult {
    /// A grant, or a renewal of it.
    Granted {
        fence: u64,
        ttl_ms: u64,
    },
    /// The lock is held by someone else and the caller did not wait.
    Held {
        holder: String,
    },
    /// The caller was queued behind `holder`; its grant shows in the lock's state.
    Queued {
        holder: String,
    },
    /// A fence that is not the lock's current one; `current` is the current fence if held.
    StaleFence {
        current: Option<u64>,
    },
    Released,
    /// No such lock (a cancelled wait on a lock nobody holds).
    NotFound,
    /// Too many callers already wait; nothing was applied.
    Limited(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub owner: String,
    pub fence: u64,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
    /// The queued acquire this grant answered, if it was one.
    pub waiter_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub id: String,
    pub owner: String,
    pub ttl_ms: u64,
    pub deadline_ms: u64,
}

/// One lock: its holder and the queue behind it. Invariant: a lock with waiters is held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    pub holder: Option<Holder>,
    pub waiters: VecDeque<Waiter>,
}

/// Every lock, by name.
pub(crate) type Locks = LeaseTable<LockEntry>;

impl Primitive for Locks {
    type Cmd = LockCmd;
    type Output = LockResult;

    fn apply(&mut self, cmd: &LockCmd, cx: &mut Cx<'_>) -> LockResult {
        let now = cx.now();
        match cmd {
            LockCmd::Acquire {
                name,
                owner,
                ttl_ms,
                wait,
            } => self.acquire(name, owner, *ttl_ms, wait.as_ref(), now, cx.batch),
            LockCmd::CancelWait { name, waiter_id } => {
                self.cancel_wait(name, waiter_id, now, cx.batch)
            }
            LockCmd::Renew {
                name,
                fence,
                ttl_ms,
            } => self.renew(name, *fence, *ttl_ms, now, cx.batch),
            LockCmd::Release { name, fence } => self.release(name, *fence, now, cx.batch),
            LockCmd::ReleaseOwned { name, owner } => {
                let held = self
                    .entries
                    .get(name)
                    .and_then(|e| e.holder.as_ref())
                    .filter(|h| h.owner == *owner)
                    .map(|h| h.fence);
                match held {
                    // `release` settles an expired lease first: then the fence is stale.
                    Some(fence) => self.release(name, fence, now, cx.batch),
                    None => LockResult::StaleFence {
                        current: self.current_fence(name),
                    },
                }
            }
        }
    }
}

impl Locks {
    /// Callers queued for any lock.
    pub(super) fn waiter_count(&self) -> usize {
        self.entries.values().map(|e| e.waiters.len()).sum()
    }

    /// The current fence of `name`, if held.
    pub(super) fn current_fence(&self, name: &str) -> Option<u64> {
        self.entries
            .get(name)
            .and_then(|e| e.holder.as_ref())
            .map(|h| h.fence)
    }

    fn acquire(
        &mut self,
        name: &str,
        owner: &str,
        ttl_ms: u64,
        wait: Option<&LockWait>,
        now: u64,
        batch: &mut SmBatch,
    ) -> LockResult {
        self.update(name, now, batch, |entry, fences| match &entry.holder {
            None => {
                let fence = fences.next();
                entry.holder = Some(Holder {
                    owner: owner.to_string(),
                    fence,
                    ttl_ms,
                    expires_at_ms: now.saturating_add(ttl_ms),
                    waiter_id: None,
                });
                LockResult::Granted { fence, ttl_ms }
            }
            Some(h) => match wait {
                None => LockResult::Held {
                    holder: h.owner.clone(),
                },
                Some(_) if entry.waiters.len() >= MAX_WAITERS_PER_LOCK => LockResult::Limited(
                    format!("{MAX_WAITERS_PER_LOCK} callers already wait for this lock"),
                ),
                Some(w) => {
                    let holder = h.owner.clone();
                    entry.waiters.push_back(Waiter {
                        id: w.waiter_id.clone(),
                        owner: owner.to_string(),
                        ttl_ms,
                        deadline_ms: now.saturating_add(w.wait_ms),
                    });
                    LockResult::Queued { holder }
                }
            },
        })
    }

    /// Removes a waiter; if the lock was granted to it meanwhile, answers the grant.
    fn cancel_wait(
        &mut self,
        name: &str,
        waiter_id: &str,
        now: u64,
        batch: &mut SmBatch,
    ) -> LockResult {
        self.update(name, now, batch, |entry, _| {
            if let Some(h) = &entry.holder {
                if h.waiter_id.as_deref() == Some(waiter_id) {
                    return LockResult::Granted {
                        fence: h.fence,
                        ttl_ms: h.ttl_ms,
                    };
                }
            }
            entry.waiters.retain(|w| w.id != waiter_id);
            match &entry.holder {
                Some(h) => LockResult::Held {
                    holder: h.owner.clone(),
                },
                None => LockResult::NotFound,
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
    ) -> LockResult {
        self.update(name, now, batch, |entry, _| match &mut entry.holder {
            Some(h) if h.fence == fence => {
                h.ttl_ms = ttl_ms;
                h.expires_at_ms = now.saturating_add(ttl_ms);
                LockResult::Granted { fence, ttl_ms }
            }
            other => LockResult::StaleFence {
                current: other.as_ref().map(|h| h.fence),
            },
        })
    }

    fn release(&mut self, name: &str, fence: u64, now: u64, batch: &mut SmBatch) -> LockResult {
        self.update(name, now, batch, |entry, _| match &entry.holder {
            Some(h) if h.fence == fence => {
                entry.holder = None;
                LockResult::Released
            }
            other => LockResult::StaleFence {
                current: other.as_ref().map(|h| h.fence),
            },
        })
    }
}

impl Leased for LockEntry {
    const PREFIX: &'static [u8] = PREFIX;
    const COUNTER_KEY: &'static [u8] = COUNTER_KEY;

    fn deadlines(&self) -> Vec<u64> {
        let mut d: Vec<u64> = self.waiters.iter().map(|w| w.deadline_ms).collect();
        d.extend(self.holder.as_ref().map(|h| h.expires_at_ms));
        d
    }

    fn is_empty(&self) -> bool {
        self.holder.is_none() && self.waiters.is_empty()
    }

    /// Ends a due lease and due waits, then grants a free lock to the first waiter.
    fn settle(&mut self, now: u64, fences: &mut Fences<'_>) {
        if self.holder.as_ref().is_some_and(|h| h.expires_at_ms <= now) {
            self.holder = None;
        }
        self.waiters.retain(|w| w.deadline_ms > now);
        if self.holder.is_none() {
            if let Some(w) = self.waiters.pop_front() {
                self.holder = Some(Holder {
                    owner: w.owner,
                    fence: fences.next(),
                    ttl_ms: w.ttl_ms,
                    expires_at_ms: now.saturating_add(w.ttl_ms),
                    waiter_id: Some(w.id),
                });
            }
        }
    }
}
