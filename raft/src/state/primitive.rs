//! What every part of the replicated state implements, and the pieces they share: the apply
//! context, one deadline index, and the encoding of persisted records.
//!
//! A part is registered once, in the `parts!` list of [`super`]; that one line makes it
//! loaded at start-up, expired on the replicated clock and asked for its next deadline, so
//! a part cannot be half-registered.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::{Db, SmBatch};

use super::{LiveEvent, Meta};
use crate::codec;

/// A part of the replicated state with its own records in the `sm` column family and its
/// own deadlines on the replicated clock.
pub(crate) trait Part: Sized {
    /// Rebuilds the part from the `sm` column family; `now_ms` is the replicated clock of
    /// the last applied entry.
    fn load(db: &Db, now_ms: u64) -> storage::Result<Self>;

    /// Removes or settles everything due at or before `cx.now()`.
    fn expire(&mut self, cx: &mut Cx<'_>);

    /// The earliest deadline still pending; the leader proposes a `Tick` once it passes.
    fn next_deadline(&self) -> Option<u64>;

    /// Writes what the part keeps once per applied batch rather than once per command (its
    /// counters, say) into `batch`, if it changed; called before each batch is written.
    fn end_batch(&mut self, _batch: &mut SmBatch) {}
}

/// A primitive clients use: a [`Part`] with typed commands and a typed result.
pub(crate) trait Primitive: Part {
    type Cmd;
    type Output;

    /// Applies one command: a pure function of (state, command, `cx.now()`).
    fn apply(&mut self, cmd: &Self::Cmd, cx: &mut Cx<'_>) -> Self::Output;

    /// Whether `cmd` may be one of a transaction's writes: it must be unconditional, since a
    /// transaction's compares are its only conditions.
    fn in_txn(_cmd: &Self::Cmd) -> bool {
        false
    }
}

/// What an apply may touch besides its own part: the replicated scalars, the batch that
/// persists the entry's changes, and the live events handed to subscribers.
pub(crate) struct Cx<'a> {
    pub meta: &'a mut Meta,
    pub batch: &'a mut SmBatch,
    live: &'a mut Option<Vec<LiveEvent>>,
    /// Inside a transaction: the one revision all its key-value changes share.
    pub txn_revision: Option<u64>,
}

impl<'a> Cx<'a> {
    pub fn new(
        meta: &'a mut Meta,
        batch: &'a mut SmBatch,
        live: &'a mut Option<Vec<LiveEvent>>,
    ) -> Self {
        Cx {
            meta,
            batch,
            live,
            txn_revision: None,
        }
    }

    /// The replicated clock.
    pub fn now(&self) -> u64 {
        self.meta.now_ms
    }

    /// Records a live event, built only when someone collects them.
    pub fn emit(&mut self, event: impl FnOnce() -> LiveEvent) {
        if let Some(live) = self.live.as_mut() {
            live.push(event());
        }
    }

    /// Persists `record` under `key`.
    pub fn put(&mut self, key: Vec<u8>, record: &impl Serialize) {
        put_record(self.batch, key, record);
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.batch.delete(key);
    }
}

/// Every record under `prefix`, keyed by the rest of its key (UTF-8), in key order.
pub(crate) fn records<T: DeserializeOwned>(
    db: &Db,
    prefix: &[u8],
) -> storage::Result<Vec<(String, T)>> {
    db.sm_scan_prefix(prefix)?
        .into_iter()
        .map(|(k, v)| Ok((super::unprefixed(prefix, &k)?, codec::decode(&v)?)))
        .collect()
}

/// Persists `record` under `key` in `batch`.
///
/// Records are plain derived serde types (structs, enums, strings, integers, vectors and
/// ordered maps), and postcard encodes those into a growing `Vec` without any failure mode:
/// an error here is a broken invariant of the type, not a condition to handle.
pub(crate) fn put_record(batch: &mut SmBatch, key: Vec<u8>, record: &impl Serialize) {
    let bytes = codec::encode(record).expect("state records are plain serde types");
    batch.put(key, bytes);
}

/// Deadlines on the replicated clock, each with the item it belongs to, in deadline order
/// (then item order, so expiry is deterministic).
#[derive(Debug)]
pub(crate) struct Deadlines<K: Ord> {
    set: BTreeSet<(u64, K)>,
}

impl<K: Ord> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            set: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> Deadlines<K> {
    pub fn insert(&mut self, at: u64, item: K) {
        self.set.insert((at, item));
    }

    pub fn remove(&mut self, at: u64, item: &K) {
        self.set.remove(&(at, item.clone()));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<u64> {
        self.set.first().map(|(at, _)| *at)
    }

    /// The item with the earliest deadline if it is at or before `now`, without removing it
    /// (the owner removes it when it settles the item).
    pub fn first_due(&self, now: u64) -> Option<K> {
        self.set
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|(_, item)| item.clone())
    }

    /// Removes and answers the item with the earliest deadline if it is at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<K> {
        if self.set.first().is_some_and(|(at, _)| *at <= now) {
            self.set.pop_first().map(|(_, item)| item)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_due_in_time_then_item_order() {
        let mut d = Deadlines::default();
        d.insert(20, "b".to_string());
        d.insert(10, "z".to_string());
        d.insert(20, "a".to_string());
        assert_eq!(d.next(), Some(10));
        assert_eq!(d.pop_due(9), None);
        assert_eq!(d.pop_due(20).as_deref(), Some("z"));
        assert_eq!(d.first_due(20).as_deref(), Some("a"));
        d.remove(20, &"a".to_string());
        assert_eq!(d.pop_due(25).as_deref(), Some("b"));
        assert_eq!(d.pop_due(25), None);
        assert_eq!(d.next(), None);
    }
}
