//! Locks with leases and fencing tokens.
//!
//! A fence is drawn from one counter shared by all locks, so it strictly increases for any
//! one name across grants, leader changes and restarts, and a released lock needs no record.
//! Leases and waits end on the replicated clock; a waiter is granted the lock in the same
//! apply that frees it, so waiters are served in the order their acquires were logged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use super::{prefixed, unprefixed};
use crate::codec;
use crate::command::{LockWait, Response};

const PREFIX: &[u8] = b"l:";
const COUNTER_KEY: &[u8] = b"m:locks";

/// Most callers queued on one lock; past it an acquire answers [`Response::Limited`].
pub const MAX_WAITERS_PER_LOCK: usize = 1024;

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

impl LockEntry {
    fn deadlines(&self) -> Vec<u64> {
        let mut d: Vec<u64> = self.waiters.iter().map(|w| w.deadline_ms).collect();
        d.extend(self.holder.as_ref().map(|h| h.expires_at_ms));
        d
    }
}

#[derive(Default, Debug)]
pub(super) struct Locks {
    entries: BTreeMap<String, LockEntry>,
    /// (deadline, name) for every lease end and wait end.
    deadlines: BTreeSet<(u64, String)>,
    last_fence: u64,
}

impl Locks {
    pub(super) fn load(db: &Db) -> storage::Result<Locks> {
        let mut locks = Locks::default();
        if let Some(bytes) = db.sm_get(COUNTER_KEY)? {
            locks.last_fence = codec::decode(&bytes)?;
        }
        for (k, v) in db.sm_scan_prefix(PREFIX)? {
            let name = unprefixed(PREFIX, &k)?;
            let entry: LockEntry = codec::decode(&v)?;
            for at in entry.deadlines() {
                locks.deadlines.insert((at, name.clone()));
            }
            locks.entries.insert(name, entry);
        }
        Ok(locks)
    }

    pub(super) fn get(&self, name: &str) -> Option<&LockEntry> {
        self.entries.get(name)
    }

    /// The current fence of `name`, if held.
    pub(super) fn current_fence(&self, name: &str) -> Option<u64> {
        self.entries
            .get(name)
            .and_then(|e| e.holder.as_ref())
            .map(|h| h.fence)
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Ends every lease and wait due at `now`, granting freed locks to their next waiter.
    pub(super) fn expire(&mut self, now: u64, batch: &mut SmBatch) {
        while let Some((at, name)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.update(&name, now, batch, |_, _| ());
        }
    }

    pub(super) fn acquire(
        &mut self,
        name: &str,
        owner: &str,
        ttl_ms: u64,
        wait: Option<&LockWait>,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
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
                Response::LockGranted { fence, ttl_ms }
            }
            Some(h) => match wait {
                None => Response::LockHeld {
                    holder: h.owner.clone(),
                },
                Some(_) if entry.waiters.len() >= MAX_WAITERS_PER_LOCK => Response::Limited(
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
                    Response::LockQueued { holder }
                }
            },
        })
    }

    /// Removes a waiter; if the lock was granted to it meanwhile, answers the grant.
    pub(super) fn cancel_wait(
        &mut self,
        name: &str,
        waiter_id: &str,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        self.update(name, now, batch, |entry, _| {
            if let Some(h) = &entry.holder {
                if h.waiter_id.as_deref() == Some(waiter_id) {
                    return Response::LockGranted {
                        fence: h.fence,
                        ttl_ms: h.ttl_ms,
                    };
                }
            }
            entry.waiters.retain(|w| w.id != waiter_id);
            match &entry.holder {
                Some(h) => Response::LockHeld {
                    holder: h.owner.clone(),
                },
                None => Response::NotFound,
            }
        })
    }

    pub(super) fn renew(
        &mut self,
        name: &str,
        fence: u64,
        ttl_ms: u64,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        self.update(name, now, batch, |entry, _| match &mut entry.holder {
            Some(h) if h.fence == fence => {
                h.ttl_ms = ttl_ms;
                h.expires_at_ms = now.saturating_add(ttl_ms);
                Response::LockGranted { fence, ttl_ms }
            }
            other => Response::StaleFence {
                current: other.as_ref().map(|h| h.fence),
            },
        })
    }

    pub(super) fn release(
        &mut self,
        name: &str,
        fence: u64,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        self.update(name, now, batch, |entry, _| match &entry.holder {
            Some(h) if h.fence == fence => {
                entry.holder = None;
                Response::Released
            }
            other => Response::StaleFence {
                current: other.as_ref().map(|h| h.fence),
            },
        })
    }

    /// Runs `f` on the lock's entry, then settles it (ends due leases and waits, grants a free
    /// lock to its next waiter), and writes it back with its deadlines re-indexed.
    fn update<R>(
        &mut self,
        name: &str,
        now: u64,
        batch: &mut SmBatch,
        f: impl FnOnce(&mut LockEntry, &mut Fences) -> R,
    ) -> R {
        let mut entry = self.entries.remove(name).unwrap_or_default();
        for at in entry.deadlines() {
            self.deadlines.remove(&(at, name.to_string()));
        }
        let before = entry.clone();
        let fence_before = self.last_fence;
        let mut fences = Fences(&mut self.last_fence);
        settle(&mut entry, now, &mut fences);
        let out = f(&mut entry, &mut fences);
        settle(&mut entry, now, &mut fences);
        if self.last_fence != fence_before {
            batch.put(
                COUNTER_KEY.to_vec(),
                codec::encode(&self.last_fence).expect("counter encodes"),
            );
        }
        if entry.holder.is_none() && entry.waiters.is_empty() {
            if before != LockEntry::default() {
                batch.delete(prefixed(PREFIX, name));
            }
        } else {
            for at in entry.deadlines() {
                self.deadlines.insert((at, name.to_string()));
            }
            if entry != before {
                batch.put(
                    prefixed(PREFIX, name),
                    codec::encode(&entry).expect("lock encodes"),
                );
            }
            self.entries.insert(name.to_string(), entry);
        }
        out
    }
}

/// Hands out fences from the shared counter.
struct Fences<'a>(&'a mut u64);

impl Fences<'_> {
    fn next(&mut self) -> u64 {
        *self.0 += 1;
        *self.0
    }
}

/// Ends a due lease and due waits, then grants a free lock to the first waiter.
fn settle(entry: &mut LockEntry, now: u64, fences: &mut Fences<'_>) {
    if entry
        .holder
        .as_ref()
        .is_some_and(|h| h.expires_at_ms <= now)
    {
        entry.holder = None;
    }
    entry.waiters.retain(|w| w.deadline_ms > now);
    if entry.holder.is_none() {
        if let Some(w) = entry.waiters.pop_front() {
            entry.holder = Some(Holder {
                owner: w.owner,
                fence: fences.next(),
                ttl_ms: w.ttl_ms,
                expires_at_ms: now.saturating_add(w.ttl_ms),
                waiter_id: Some(w.id),
            });
        }
    }
}
