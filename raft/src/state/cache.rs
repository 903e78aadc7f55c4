//! The replicated cache: entries with TTL and tags, bounded by entries and bytes.
//!
//! Eviction must leave every replica with the same set, so it cannot follow reads (each node
//! serves its own): entries are evicted in the order they were last written, oldest first,
//! against the bounds carried in the write that overflowed them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::{Db, SmBatch};

use super::prefixed;
use super::primitive::{put_record, records, Cx, Deadlines, Part, Primitive};
use crate::codec;

const PREFIX: &[u8] = b"c:";
const META_KEY: &[u8] = b"m:cache";

/// A cache write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheCmd {
    /// Stores an entry. The bounds travel in the entry so every replica evicts the same
    /// entries, whatever its own configuration says.
    Set {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        tags: Vec<String>,
        limits: CacheLimits,
    },
    Delete {
        key: String,
    },
    /// Removes every entry carrying any of `tags`.
    Invalidate {
        tags: Vec<String>,
    },
}

/// Bounds of the cache, carried by each cache write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

/// The result of a [`CacheCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheResult {
    Stored,
    /// How many entries a delete or an invalidation removed.
    Removed(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    #[serde(with = "serde_bytes")]
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
    ttl: Deadlines<String>,
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

impl Part for Cache {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Cache> {
        let mut c = Cache::default();
        if let Some(bytes) = db.sm_get(META_KEY)? {
            c.meta = codec::decode(&bytes)?;
        }
        for (key, entry) in records::<CacheEntry>(db, PREFIX)? {
            c.index(&key, &entry);
            c.entries.insert(key, entry);
        }
        Ok(c)
    }

    fn expire(&mut self, cx: &mut Cx<'_>) {
        while let Some(key) = self.ttl.first_due(cx.now()) {
            self.remove(&key, cx.batch);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.ttl.next()
    }
}

impl Primitive for Cache {
    type Cmd = CacheCmd;
    type Output = CacheResult;

    fn apply(&mut self, cmd: &CacheCmd, cx: &mut Cx<'_>) -> CacheResult {
        match cmd {
            CacheCmd::Set {
                key,
                value,
                ttl_ms,
                tags,
                limits,
            } => {
                let expires = ttl_ms.map(|t| cx.now().saturating_add(t));
                self.set(key, value, expires, tags, *limits, cx.batch)
            }
            CacheCmd::Delete { key } => CacheResult::Removed(u64::from(self.remove(key, cx.batch))),
            CacheCmd::Invalidate { tags } => self.invalidate(tags, cx.batch),
        }
    }

    fn in_txn(_cmd: &CacheCmd) -> bool {
        true
    }
}

impl Cache {
    fn index(&mut self, key: &str, e: &CacheEntry) {
        self.by_seq.insert(e.seq, key.to_string());
        for t in &e.tags {
            self.by_tag.insert((t.clone(), key.to_string()));
        }
        if let Some(at) = e.expires_at_ms {
            self.ttl.insert(at, key.to_string());
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
            self.ttl.remove(at, &key.to_string());
        }
        self.bytes -= entry_bytes(key, &e);
        batch.delete(prefixed(PREFIX, key));
        true
    }

    fn save_meta(&self, batch: &mut SmBatch) {
        put_record(batch, META_KEY.to_vec(), &self.meta);
    }

    fn set(
        &mut self,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
        tags: &[String],
        limits: CacheLimits,
        batch: &mut SmBatch,
    ) -> CacheResult {
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
        put_record(batch, prefixed(PREFIX, key), &entry);
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
        CacheResult::Stored
    }

    fn invalidate(&mut self, tags: &[String], batch: &mut SmBatch) -> CacheResult {
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
        CacheResult::Removed(keys.len() as u64)
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
