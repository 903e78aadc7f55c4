//! Key-value state: values with revisions, compare-and-set and TTL.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storage::{codec, Db, SmBatch};

use super::{prefixed, unprefixed};

const PREFIX: &[u8] = b"k:";

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
        Ok(kv)
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
    }

    /// Removes `key`; says whether it existed.
    pub(super) fn remove(&mut self, key: &str, batch: &mut SmBatch) -> bool {
        let Some(old) = self.entries.remove(key) else {
            return false;
        };
        if let Some(at) = old.expires_at_ms {
            self.ttl.remove(&(at, key.to_string()));
        }
        batch.delete(prefixed(PREFIX, key));
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
