//! The replicated cache: entries with TTL and tags, bounded by entries and bytes.
//!
//! Eviction must leave every replica with the same set, so it cannot follow reads (each node
//! serves its own): entries are evicted in the order they were last written, oldest first,
//! against the bounds carried in the write that overflowed them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::{Db, SmBatch};

use super::{prefixed, unprefixed};
use crate::codec;
use crate::command::{CacheLimits, Response};

const PREFIX: &[u8] = b"c:";
const META_KEY: &[u8] = b"m:cache";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub value: Vec<u8>,
    pub tags: Vec<String>,
    pub expires_at_ms: Option<u64>,
    /// Write order: the smallest is evicted first.
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct CacheMeta {
    next_seq: u64,
    evictions: u64,
}

#[derive(Default, Debug)]
pub(super) struct Cache {
    entries: BTreeMap<String, CacheEntry>,
    by_seq: BTreeMap<u64, String>,
    by_tag: BTreeSet<(String, String)>,
    ttl: BTreeSet<(u64, String)>,
    bytes: u64,
    meta: CacheMeta,
}

/// The replicated numbers of [`Cache`]; every replica reports the same ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheCounts {
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
}

fn entry_bytes(key: &str, e: &CacheEntry) -> u64 {
    (key.len() + e.value.len()) as u64
}

impl Cache {
    pub(super) fn load(db: &Db) -> storage::Result<Cache> {
        let mut c = Cache::default();
        if let Some(bytes) = db.sm_get(META_KEY)? {
            c.meta = codec::decode(&bytes)?;
        }
        for (k, v) in db.sm_scan_prefix(PREFIX)? {
            let key = unprefixed(PREFIX, &k)?;
            let entry: CacheEntry = codec::decode(&v)?;
            c.index(&key, &entry);
            c.entries.insert(key, entry);
        }
        Ok(c)
    }

    fn index(&mut self, key: &str, e: &CacheEntry) {
        self.by_seq.insert(e.seq, key.to_string());
        for t in &e.tags {
            self.by_tag.insert((t.clone(), key.to_string()));
        }
        if let Some(at) = e.expires_at_ms {
            self.ttl.insert((at, key.to_string()));
        }
        self.bytes += entry_bytes(key, e);
    }

    fn remove(&mut self, key: &str, batch: &mut SmBatch) -> bool {
        let Some(e) = self.entries.remove(key) else {
            return false;
        };
        self.by_seq.remove(&e.seq);
        for t in &e.tags {
            self.by_tag.remove(&(t.clone(), key.to_string()));
        }
        if let Some(at) = e.expires_at_ms {
            self.ttl.remove(&(at, key.to_string()));
        }
        self.bytes -= entry_bytes(key, &e);
        batch.delete(prefixed(PREFIX, key));
        true
    }

    fn save_meta(&self, batch: &mut SmBatch) {
        batch.put(
            META_KEY.to_vec(),
            codec::encode(&self.meta).expect("cache meta encodes"),
        );
    }

    pub(super) fn set(
        &mut self,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
        tags: &[String],
        limits: CacheLimits,
        batch: &mut SmBatch,
    ) -> Response {
        self.remove(key, batch);
        let mut tags = tags.to_vec();
        tags.sort();
        tags.dedup();
        let entry = CacheEntry {
            value: value.to_vec(),
            tags,
            expires_at_ms,
            seq: self.meta.next_seq,
        };
        self.meta.next_seq += 1;
        self.index(key, &entry);
        batch.put(
            prefixed(PREFIX, key),
            codec::encode(&entry).expect("cache entry encodes"),
        );
        self.entries.insert(key.to_string(), entry);
        // Evict oldest writes first; the entry just written goes last, and only if it alone
        // is over the bounds.
        while self.entries.len() as u64 > limits.max_entries || self.bytes > limits.max_bytes {
            let Some((_, oldest)) = self.by_seq.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.remove(&oldest, batch);
            self.meta.evictions += 1;
        }
        self.save_meta(batch);
        Response::Done
    }

    pub(super) fn delete(&mut self, key: &str, batch: &mut SmBatch) -> Response {
        Response::Count(u64::from(self.remove(key, batch)))
    }

    pub(super) fn invalidate(&mut self, tags: &[String], batch: &mut SmBatch) -> Response {
        let mut keys = BTreeSet::new();
        for t in tags {
            let start = (t.clone(), String::new());
            keys.extend(
                self.by_tag
                    .range(start..)
                    .take_while(|(tag, _)| tag == t)
                    .map(|(_, k)| k.clone()),
            );
        }
        for k in &keys {
            self.remove(k, batch);
        }
        Response::Count(keys.len() as u64)
    }

    pub(super) fn expire(&mut self, now: u64, batch: &mut SmBatch) {
        while let Some((at, key)) = self.ttl.first().cloned() {
            if at > now {
                break;
            }
            self.remove(&key, batch);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.ttl.first().map(|(at, _)| *at)
    }

    pub(super) fn get(&self, key: &str, now: u64) -> Option<&CacheEntry> {
        self.entries
            .get(key)
            .filter(|e| e.expires_at_ms.is_none_or(|at| at > now))
    }

    pub(super) fn counts(&self) -> CacheCounts {
        CacheCounts {
            entries: self.entries.len() as u64,
            bytes: self.bytes,
            evictions: self.meta.evictions,
        }
    }

    /// SHA-256 over every entry in key order: equal on replicas that hold the same cache.
    pub(super) fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (k, e) in &self.entries {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((e.value.len() as u64).to_be_bytes());
            h.update(&e.value);
            h.update(e.expires_at_ms.unwrap_or(0).to_be_bytes());
            for t in &e.tags {
                h.update((t.len() as u64).to_be_bytes());
                h.update(t.as_bytes());
            }
            h.update(e.seq.to_be_bytes());
        }
        hex::encode(h.finalize())
    }
}
