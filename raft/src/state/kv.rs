//! Key-value state: values with revisions, compare-and-set, TTL and history.
//!
//! Every change (put, delete, expiry) is also kept as a history event under its revision, so
//! watches can replay from a past revision. History is dropped up to `compact_revision` by a
//! replicated `KvCompact` entry, which the leader proposes when history outgrows its bound.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use super::{prefixed, unprefixed};
use crate::codec;

const PREFIX: &[u8] = b"k:";
/// `h:<revision, 8 bytes big-endian><key>` → the value written, or `None` for a delete.
const HISTORY_PREFIX: &[u8] = b"h:";
/// Where the compaction point is stored.
pub const COMPACT_KEY: &[u8] = b"m:kvhist";

/// What a change did to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEventKind {
    Put,
    Delete,
}

/// One change from the key-value history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEvent {
    pub revision: u64,
    pub key: String,
    pub kind: KvEventKind,
    /// The value written (`None` for a delete).
    pub value: Option<Vec<u8>>,
}

/// The history asked for has been compacted away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// Events at or below this revision are gone.
    pub compact_revision: u64,
}

/// A key's current value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub value: Vec<u8>,
    /// The revision that last wrote the key.
    pub revision: u64,
    /// The revision that created the key (after it was last absent).
    pub create_revision: u64,
    /// Replicated-clock deadline after which the key is gone.
    pub expires_at_ms: Option<u64>,
}

#[derive(Default, Debug)]
pub(super) struct Kv {
    entries: BTreeMap<String, KvEntry>,
    /// (deadline, key) of every key with a TTL, for expiry in deadline order.
    ttl: BTreeSet<(u64, String)>,
    /// Changes by (revision, key); `None` is a delete.
    history: BTreeMap<(u64, String), Option<Vec<u8>>>,
    /// Events at or below this revision have been dropped.
    compact_revision: u64,
}

fn history_key(revision: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(HISTORY_PREFIX.len() + 8 + key.len());
    k.extend_from_slice(HISTORY_PREFIX);
    k.extend_from_slice(&revision.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

impl Kv {
    pub(super) fn load(db: &Db) -> storage::Result<Kv> {
        let mut kv = Kv::default();
        for (k, v) in db.sm_scan_prefix(PREFIX)? {
            let key = unprefixed(PREFIX, &k)?;
            let entry: KvEntry = codec::decode(&v)?;
            if let Some(at) = entry.expires_at_ms {
                kv.ttl.insert((at, key.clone()));
            }
            kv.entries.insert(key, entry);
        }
        for (k, v) in db.sm_scan_prefix(HISTORY_PREFIX)? {
            let rest = &k[HISTORY_PREFIX.len()..];
            if rest.len() < 8 {
                return Err(storage::Error::Corrupt("short history key".into()));
            }
            let revision = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            let key = String::from_utf8(rest[8..].to_vec())
                .map_err(|_| storage::Error::Corrupt("history key is not UTF-8".into()))?;
            kv.history.insert((revision, key), codec::decode(&v)?);
        }
        if let Some(v) = db.sm_get(COMPACT_KEY)? {
            kv.compact_revision = codec::decode(&v)?;
        }
        Ok(kv)
    }

    fn record(&mut self, revision: u64, key: &str, value: Option<&[u8]>, batch: &mut SmBatch) {
        let value = value.map(<[u8]>::to_vec);
        batch.put(
            history_key(revision, key),
            codec::encode(&value).expect("event encodes"),
        );
        self.history.insert((revision, key.to_string()), value);
    }

    /// Drops history at or below `revision` (never above `current`, the latest revision);
    /// returns the compaction point.
    pub(super) fn compact(&mut self, revision: u64, current: u64, batch: &mut SmBatch) -> u64 {
        let target = revision.min(current);
        if target <= self.compact_revision {
            return self.compact_revision;
        }
        let keep = self.history.split_off(&(target + 1, String::new()));
        for (rev, key) in std::mem::replace(&mut self.history, keep).into_keys() {
            batch.delete(history_key(rev, &key));
        }
        self.compact_revision = target;
        batch.put(
            COMPACT_KEY.to_vec(),
            codec::encode(&target).expect("u64 encodes"),
        );
        target
    }

    pub(super) fn compact_revision(&self) -> u64 {
        self.compact_revision
    }

    /// Number of history events kept.
    pub(super) fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Up to `limit` changes under `prefix` with revision `from_revision` or later, in
    /// revision order (keys in order within a revision).
    pub(super) fn events_since(
        &self,
        prefix: &str,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<KvEvent>, Compacted> {
        if from_revision <= self.compact_revision && self.compact_revision > 0 {
            return Err(Compacted {
                compact_revision: self.compact_revision,
            });
        }
        Ok(self
            .history
            .range((from_revision, String::new())..)
            .filter(|((_, k), _)| k.starts_with(prefix))
            .take(limit)
            .map(|((revision, key), value)| KvEvent {
                revision: *revision,
                key: key.clone(),
                kind: if value.is_some() {
                    KvEventKind::Put
                } else {
                    KvEventKind::Delete
                },
                value: value.clone(),
            })
            .collect())
    }

    /// The key's revision, 0 when absent.
    pub(super) fn revision_of(&self, key: &str) -> u64 {
        self.entries.get(key).map(|e| e.revision).unwrap_or(0)
    }

    /// Writes `key` at `revision`.
    pub(super) fn put(
        &mut self,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
        revision: u64,
        batch: &mut SmBatch,
    ) {
        let create_revision = self
            .entries
            .get(key)
            .map(|e| e.create_revision)
            .unwrap_or(revision);
        let entry = KvEntry {
            value: value.to_vec(),
            revision,
            create_revision,
            expires_at_ms,
        };
        if let Some(old) = self.entries.get(key) {
            if let Some(at) = old.expires_at_ms {
                self.ttl.remove(&(at, key.to_string()));
            }
        }
        if let Some(at) = expires_at_ms {
            self.ttl.insert((at, key.to_string()));
        }
        batch.put(
            prefixed(PREFIX, key),
            codec::encode(&entry).expect("entry encodes"),
        );
        self.entries.insert(key.to_string(), entry);
        self.record(revision, key, Some(value), batch);
    }

    /// Removes `key` at `revision`; says whether it existed.
    pub(super) fn remove(&mut self, key: &str, revision: u64, batch: &mut SmBatch) -> bool {
        let Some(old) = self.entries.remove(key) else {
            return false;
        };
        if let Some(at) = old.expires_at_ms {
            self.ttl.remove(&(at, key.to_string()));
        }
        batch.delete(prefixed(PREFIX, key));
        self.record(revision, key, None, batch);
        true
    }

    /// The first key whose deadline is at or before `now`.
    pub(super) fn first_expired(&self, now: u64) -> Option<String> {
        self.ttl
            .first()
            .filter(|(at, _)| *at <= now)
            .map(|(_, k)| k.clone())
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.ttl.first().map(|(at, _)| *at)
    }

    pub(super) fn get(&self, key: &str, now: u64) -> Option<&KvEntry> {
        self.entries.get(key).filter(|e| !is_expired(e, now))
    }

    pub(super) fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> (Vec<(&String, &KvEntry)>, bool) {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        let mut items = Vec::new();
        let mut more = false;
        for (k, e) in self.entries.range((start, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if is_expired(e, now) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push((k, e));
        }
        (items, more)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn is_expired(e: &KvEntry, now: u64) -> bool {
    e.expires_at_ms.is_some_and(|at| at <= now)
}
