//! The replicated cache: entries with TTL and tags, bounded by entries and bytes.
//!
//! Eviction must leave every replica with the same set, so it cannot follow reads (each node
//! serves its own): entries are evicted in the order they were last written, oldest first,
//! against the bounds carried in the write that overflowed them.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::{Db, SmBatch};

use super::names::Names;
use super::prefixed;
use super::primitive::{put_record, records, Cx, Deadlines, Part, Primitive};
use crate::codec;

const PREFIX: &[u8] = b"c:";
const META_KEY: &[u8] = b"m:cache";
/// Stale pairs the write order may hold beyond one per entry before they are dropped.
const STALE_SLACK: usize = 1024;

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
    /// Stores an entry if `only` allows, as Redis's `SET` with its options does; answers
    /// [`CacheResult::Written`]. The entry carries no tags.
    SetIf {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl: CacheTtl,
        only: Option<CacheCond>,
        /// Whether the answer carries the value the entry held before.
        return_previous: bool,
        limits: CacheLimits,
    },
    /// Adds `by` to the entry's value read as a signed 64-bit decimal integer (an absent
    /// entry reads as 0), keeping its TTL and tags; answers [`CacheResult::Counter`],
    /// [`CacheResult::NotInteger`] or [`CacheResult::Overflow`].
    Incr {
        key: String,
        by: i64,
        limits: CacheLimits,
    },
    /// Sets (`Some`, from now) or removes (`None`) a live entry's TTL; answers
    /// [`CacheResult::Touched`]: false when there is no live entry, or no TTL to remove.
    Expire {
        key: String,
        ttl_ms: Option<u64>,
    },
    /// Removes the entry only if it holds `value`; answers [`CacheResult::Removed`].
    DeleteIfEq {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
}

/// The TTL a [`CacheCmd::SetIf`] leaves on its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheTtl {
    /// None: the entry lives until it is removed or evicted.
    None,
    /// Expires this many milliseconds after the write.
    In(u64),
    /// Expires at this time of the replicated clock (Unix milliseconds).
    At(u64),
    /// Keeps the TTL of the entry it replaces (none if there was no entry).
    Keep,
}

/// Whether a conditional write needs its entry to be there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheCond {
    Absent,
    Present,
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
    /// A [`CacheCmd::SetIf`]: whether it wrote, and the entry's previous value when asked
    /// for (`None` also when there was no live entry).
    Written {
        written: bool,
        previous: Option<serde_bytes::ByteBuf>,
    },
    /// The value after a [`CacheCmd::Incr`].
    Counter(i64),
    /// The entry does not hold a signed 64-bit decimal integer; nothing was written.
    NotInteger,
    /// The increment would overflow a signed 64-bit integer; nothing was written.
    Overflow,
    /// Whether a [`CacheCmd::Expire`] found a live entry.
    Touched(bool),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Shared with the readers that answer it (a read takes a reference, not a copy).
    #[serde(with = "shared_bytes")]
    pub value: bytes::Bytes,
    pub tags: Vec<String>,
    pub expires_at_ms: Option<u64>,
    /// Write order: the smallest is evicted first.
    pub seq: u64,
}

/// `Bytes` encoded as a `Vec<u8>` under `serde_bytes` is (a length and the bytes), so records
/// written as either read as the other.
mod shared_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| Bytes::from(b.into_vec()))
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct CacheMeta {
    next_seq: u64,
    evictions: u64,
}

#[derive(Default, Debug)]
pub(super) struct Cache {
    entries: Names<CacheEntry>,
    index: Index,
    meta: CacheMeta,
    /// `meta` changed since it was last written (it is written once per applied batch).
    meta_dirty: bool,
}

/// What is derived from the entries: write order (eviction), tags, deadlines, the byte count.
#[derive(Default, Debug)]
struct Index {
    /// `(seq, name)` of each write, oldest first. A name written again or removed leaves its
    /// old pair behind rather than being searched for: eviction skips a pair whose entry is
    /// gone or carries another `seq`, and [`Cache::set`] drops them in bulk once they
    /// outnumber the entries. Eviction still takes the live entry with the smallest `seq`.
    by_seq: VecDeque<(u64, Arc<str>)>,
    by_tag: BTreeSet<(String, String)>,
    ttl: Deadlines<String>,
    bytes: u64,
}

impl Index {
    fn add(&mut self, key: &Arc<str>, e: &CacheEntry) {
        self.by_seq.push_back((e.seq, key.clone()));
        for t in &e.tags {
            self.by_tag.insert((t.clone(), key.to_string()));
        }
        if let Some(at) = e.expires_at_ms {
            self.ttl.insert(at, key.to_string());
        }
        self.bytes += entry_bytes(key, e);
    }

    /// Forgets `e`, `key`'s entry (its pair in `by_seq` goes stale, see there).
    fn drop(&mut self, key: &str, e: &CacheEntry) {
        for t in &e.tags {
            self.by_tag.remove(&(t.clone(), key.to_string()));
        }
        if let Some(at) = e.expires_at_ms {
            self.ttl.remove(at, &key.to_string());
        }
        self.bytes -= entry_bytes(key, e);
    }
}

/// The replicated numbers of [`Cache`]; every replica reports the same ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheCounts {
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
}

/// Whether a write-order pair is still its entry's latest write (not stale).
fn is_current(entries: &Names<CacheEntry>, seq: u64, name: &str) -> bool {
    entries.get(name).is_some_and(|e| e.seq == seq)
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
            c.entries.insert(&key, entry);
            let (name, entry) = c.entries.get_shared(&key).expect("just inserted");
            c.index.add(name, entry);
        }
        // Read in key order; eviction goes by write order.
        c.index
            .by_seq
            .make_contiguous()
            .sort_unstable_by_key(|(seq, _)| *seq);
        Ok(c)
    }

    fn expire(&mut self, cx: &mut Cx<'_>) {
        while let Some(key) = self.index.ttl.first_due(cx.now()) {
            self.remove(&key, cx.batch);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.index.ttl.next()
    }

    fn end_batch(&mut self, batch: &mut SmBatch) {
        if std::mem::take(&mut self.meta_dirty) {
            put_record(batch, META_KEY.to_vec(), &self.meta);
        }
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
            CacheCmd::SetIf {
                key,
                value,
                ttl,
                only,
                return_previous,
                limits,
            } => self.set_if(key, value, *ttl, (*only, *return_previous), *limits, cx),
            CacheCmd::Incr { key, by, limits } => self.incr(key, *by, *limits, cx),
            CacheCmd::Expire { key, ttl_ms } => self.expire(key, *ttl_ms, cx),
            CacheCmd::DeleteIfEq { key, value } => {
                let same = self.get(key, cx.now()).is_some_and(|e| e.value == *value);
                CacheResult::Removed(u64::from(same && self.remove(key, cx.batch)))
            }
        }
    }

    fn in_txn(_cmd: &CacheCmd) -> bool {
        true
    }
}

/// `value` read as Redis reads a counter: a signed 64-bit decimal integer with no sign
/// other than a leading `-`, no leading zeros and no spaces.
fn parse_i64(value: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(value).ok()?;
    let n: i64 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

impl Cache {
    fn remove(&mut self, key: &str, batch: &mut SmBatch) -> bool {
        let Some(e) = self.entries.remove(key) else {
            return false;
        };
        self.index.drop(key, &e);
        batch.delete(prefixed(PREFIX, key));
        true
    }

    /// `SetIf`: a `SET` with Redis's options (only if absent or present, the previous value,
    /// a TTL kept, relative or absolute).
    fn set_if(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: CacheTtl,
        (only, return_previous): (Option<CacheCond>, bool),
        limits: CacheLimits,
        cx: &mut Cx<'_>,
    ) -> CacheResult {
        let now = cx.now();
        let current = self.get(key, now);
        let allowed = match only {
            None => true,
            Some(CacheCond::Absent) => current.is_none(),
            Some(CacheCond::Present) => current.is_some(),
        };
        let previous = current
            .filter(|_| return_previous)
            .map(|e| serde_bytes::ByteBuf::from(e.value.to_vec()));
        if allowed {
            let expires = match ttl {
                CacheTtl::None => None,
                CacheTtl::In(t) => Some(now.saturating_add(t)),
                CacheTtl::At(at) => Some(at),
                CacheTtl::Keep => current.and_then(|e| e.expires_at_ms),
            };
            if expires.is_some_and(|at| at <= now) {
                // Already expired (a time in the past): as if written and gone.
                self.remove(key, cx.batch);
            } else {
                self.set(key, value, expires, &[], limits, cx.batch);
            }
        }
        CacheResult::Written {
            written: allowed,
            previous,
        }
    }

    /// `Incr`: adds `by` to the integer value (0 when absent), keeping its TTL and tags.
    fn incr(&mut self, key: &str, by: i64, limits: CacheLimits, cx: &mut Cx<'_>) -> CacheResult {
        let now = cx.now();
        let current = self.get(key, now);
        let n = match current.map(|e| parse_i64(&e.value)) {
            None => 0,
            Some(Some(n)) => n,
            Some(None) => return CacheResult::NotInteger,
        };
        let Some(n) = n.checked_add(by) else {
            return CacheResult::Overflow;
        };
        let (expires, tags) = current
            .map(|e| (e.expires_at_ms, e.tags.clone()))
            .unwrap_or_default();
        self.set(
            key,
            n.to_string().as_bytes(),
            expires,
            &tags,
            limits,
            cx.batch,
        );
        CacheResult::Counter(n)
    }

    /// `Expire`: sets (or with `None` removes) a present entry's TTL.
    fn expire(&mut self, key: &str, ttl_ms: Option<u64>, cx: &mut Cx<'_>) -> CacheResult {
        let now = cx.now();
        let Some(e) = self.get(key, now) else {
            return CacheResult::Touched(false);
        };
        if ttl_ms.is_none() && e.expires_at_ms.is_none() {
            // Nothing to remove: Redis's PERSIST answers 0 for it.
            return CacheResult::Touched(false);
        }
        let mut e = e.clone();
        let name = key.to_string();
        if let Some(at) = e.expires_at_ms {
            self.index.ttl.remove(at, &name);
        }
        e.expires_at_ms = ttl_ms.map(|t| now.saturating_add(t));
        if let Some(at) = e.expires_at_ms {
            self.index.ttl.insert(at, name);
        }
        put_record(cx.batch, prefixed(PREFIX, key), &e);
        self.entries.insert(key, e);
        CacheResult::Touched(true)
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
        let mut tags = tags.to_vec();
        tags.sort();
        tags.dedup();
        let entry = CacheEntry {
            value: bytes::Bytes::copy_from_slice(value),
            tags,
            expires_at_ms,
            seq: self.meta.next_seq,
        };
        self.meta.next_seq += 1;
        // The record overwrites the old one (no tombstone first), and a key written again
        // keeps its place among the ordered names.
        put_record(batch, prefixed(PREFIX, key), &entry);
        if let Some(old) = self.entries.insert(key, entry) {
            self.index.drop(key, &old);
        }
        let (name, entry) = self.entries.get_shared(key).expect("just inserted");
        self.index.add(name, entry);
        // Evict oldest writes first; the entry just written goes last, and only if it alone
        // is over the bounds.
        while self.entries.len() as u64 > limits.max_entries || self.index.bytes > limits.max_bytes
        {
            let Some(oldest) = self.pop_oldest() else {
                break;
            };
            self.remove(&oldest, batch);
            self.meta.evictions += 1;
        }
        if self.index.by_seq.len() > 2 * self.entries.len() + STALE_SLACK {
            let entries = &self.entries;
            self.index
                .by_seq
                .retain(|(seq, name)| is_current(entries, *seq, name));
        }
        self.meta_dirty = true;
        CacheResult::Stored
    }

    /// The name of the live entry written longest ago, taken off the write order (stale pairs
    /// met on the way are dropped).
    fn pop_oldest(&mut self) -> Option<Arc<str>> {
        while let Some((seq, name)) = self.index.by_seq.pop_front() {
            if is_current(&self.entries, seq, &name) {
                return Some(name);
            }
        }
        None
    }

    fn invalidate(&mut self, tags: &[String], batch: &mut SmBatch) -> CacheResult {
        let mut keys = BTreeSet::new();
        for t in tags {
            let start = (t.clone(), String::new());
            keys.extend(
                self.index
                    .by_tag
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

    /// Up to `limit` live entries whose keys start with `prefix` and are greater than
    /// `after`, in key order; the flag says whether more remain.
    pub(super) fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> (Vec<(&str, &CacheEntry)>, bool) {
        self.entries.list_live(prefix, after, limit, |e| {
            e.expires_at_ms.is_none_or(|at| at > now)
        })
    }

    pub(super) fn counts(&self) -> CacheCounts {
        CacheCounts {
            entries: self.entries.len() as u64,
            bytes: self.index.bytes,
            evictions: self.meta.evictions,
        }
    }

    /// SHA-256 over every entry in key order: equal on replicas that hold the same cache.
    pub(super) fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (k, e) in self.entries.iter() {
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

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: CacheLimits = CacheLimits {
        max_entries: 3,
        max_bytes: u64::MAX,
    };

    fn set(c: &mut Cache, key: &str) {
        c.set(key, b"v", None, &[], THREE, &mut SmBatch::default());
    }

    #[test]
    fn rewrites_keep_the_write_order_bounded_and_eviction_takes_the_oldest_live_write() {
        let mut c = Cache::default();
        set(&mut c, "a");
        // Far more rewrites than stale pairs are kept for.
        for i in 0..4 * STALE_SLACK {
            set(&mut c, if i % 2 == 0 { "b" } else { "c" });
            assert!(c.index.by_seq.len() <= 2 * c.entries.len() + STALE_SLACK);
        }
        assert_eq!(c.counts().evictions, 0);
        // b's pairs all go stale; a is still the oldest live write, then c.
        c.remove("b", &mut SmBatch::default());
        set(&mut c, "d");
        set(&mut c, "e");
        assert!(c.get("a", 0).is_none());
        set(&mut c, "f");
        assert!(c.get("c", 0).is_none());
        let left: Vec<&str> = c.entries.iter().map(|(k, _)| k).collect();
        assert_eq!(left, ["d", "e", "f"]);
        assert_eq!(c.counts().evictions, 2);
    }
}
