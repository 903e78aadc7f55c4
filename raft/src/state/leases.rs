//! What locks and semaphores share: named entries whose leases and waits end on the
//! replicated clock, fences drawn from one counter per primitive that only grows (so a fence
//! is never handed out twice, across grants, leader changes and restarts), and one update
//! step that settles an entry (ends what is due, serves its waiters) and persists it.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use super::prefixed;
use super::primitive::{put_record, records, Cx, Deadlines, Part};
use crate::codec;

/// A queued acquire: the proposer's id for this caller (unique among the waiters of one lock
/// or semaphore) and how long it may wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    pub waiter_id: String,
    pub wait_ms: u64,
}

/// An entry with leases and waits: a lock, a semaphore.
pub(crate) trait Leased:
    Clone + Debug + Default + PartialEq + Serialize + DeserializeOwned
{
    /// Entries are stored under `<PREFIX><name>`.
    const PREFIX: &'static [u8];
    /// Where the last fence handed out is stored.
    const COUNTER_KEY: &'static [u8];

    /// Every lease end and wait end of the entry.
    fn deadlines(&self) -> Vec<u64>;

    /// Nothing held and nobody waiting: the entry needs no record.
    fn is_empty(&self) -> bool;

    /// Ends the leases and waits due at `now`, then grants what is free to the waiters in
    /// order, drawing their fences from `fences`.
    fn settle(&mut self, now: u64, fences: &mut Fences<'_>);
}

/// Hands out fences from a primitive's counter.
pub(crate) struct Fences<'a>(&'a mut u64);

impl Fences<'_> {
    pub fn next(&mut self) -> u64 {
        *self.0 += 1;
        *self.0
    }
}

/// The entries of one leased primitive, by name, with their deadlines and fence counter.
#[derive(Debug)]
pub(crate) struct LeaseTable<E> {
    pub(super) entries: BTreeMap<String, E>,
    deadlines: Deadlines<String>,
    last_fence: u64,
}

impl<E> Default for LeaseTable<E> {
    fn default() -> Self {
        LeaseTable {
            entries: BTreeMap::new(),
            deadlines: Deadlines::default(),
            last_fence: 0,
        }
    }
}

impl<E: Leased> Part for LeaseTable<E> {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Self> {
        let mut table = LeaseTable::default();
        if let Some(bytes) = db.sm_get(E::COUNTER_KEY)? {
            table.last_fence = codec::decode(&bytes)?;
        }
        for (name, entry) in records::<E>(db, E::PREFIX)? {
            for at in entry.deadlines() {
                table.deadlines.insert(at, name.clone());
            }
            table.entries.insert(name, entry);
        }
        Ok(table)
    }

    /// Ends every lease and wait due, serving the waiters of what they free.
    fn expire(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        while let Some(name) = self.deadlines.first_due(now) {
            self.update(&name, now, cx.batch, |_, _| ());
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.deadlines.next()
    }
}

impl<E: Leased> LeaseTable<E> {
    pub fn get(&self, name: &str) -> Option<&E> {
        self.entries.get(name)
    }

    /// Up to `limit` entries whose name starts with `prefix` and is greater than `after`, in
    /// name order; the flag says whether more remain.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(&String, &E)>, bool) {
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut it = self
            .entries
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));
        let items: Vec<_> = it.by_ref().take(limit).collect();
        let more = it.next().is_some();
        (items, more)
    }

    /// Runs `f` on the entry of `name`, settling it before and after, and writes it back
    /// (or deletes its record once empty) with its deadlines re-indexed.
    pub fn update<R>(
        &mut self,
        name: &str,
        now: u64,
        batch: &mut SmBatch,
        f: impl FnOnce(&mut E, &mut Fences<'_>) -> R,
    ) -> R {
        let mut entry = self.entries.remove(name).unwrap_or_default();
        for at in entry.deadlines() {
            self.deadlines.remove(at, &name.to_string());
        }
        let before = entry.clone();
        let fence_before = self.last_fence;
        let mut fences = Fences(&mut self.last_fence);
        entry.settle(now, &mut fences);
        let out = f(&mut entry, &mut fences);
        entry.settle(now, &mut fences);
        if self.last_fence != fence_before {
            put_record(batch, E::COUNTER_KEY.to_vec(), &self.last_fence);
        }
        if entry.is_empty() {
            if before != E::default() {
                batch.delete(prefixed(E::PREFIX, name));
            }
        } else {
            for at in entry.deadlines() {
                self.deadlines.insert(at, name.to_string());
            }
            if entry != before {
                put_record(batch, prefixed(E::PREFIX, name), &entry);
            }
            self.entries.insert(name.to_string(), entry);
        }
        out
    }
}
