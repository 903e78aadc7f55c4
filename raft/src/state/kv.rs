//! Key-value state: values with revisions, compare-and-set, TTL and history.
//!
//! Every change (put, delete, expiry) is also kept as a history event under its revision, so
//! watches can replay from a past revision. History is dropped up to `compact_revision` by a
//! replicated `KvCompact` entry, which the leader proposes when history outgrows its bound.
//!
//! Values live in the store, not in memory: each key's metadata (revisions, deadline, value
//! length) and the history's index (revision, key, put or delete) are held in memory, and the
//! values are read from the store (`k:` and `h:` records, through RocksDB's block cache) when
//! a key, a page of keys or a page of history is asked for. A value whose batch is not yet
//! written is held until it is ([`Kv::written`]), so a reader never misses one. So a node holds
//! about a hundred bytes per key plus its key in memory, whatever the size of the values.
//!
//! Values read from the store lately are kept in a bounded cache ([`ReadValues`], an eighth of
//! the store's read cache), each with the revision it was read at: a key's value at a revision
//! never changes, so an entry is used only while it matches the key's revision in memory and
//! needs no invalidation.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch, WeakDb};

use super::names::Names;
use super::primitive::{put_record, Cx, Deadlines, Part, Primitive};
use super::{prefixed, LiveEvent};
use crate::codec;

pub(super) const PREFIX: &[u8] = b"k:";
/// `h:<revision, 8 bytes big-endian><key>` → the value written, or `None` for a delete.
const HISTORY_PREFIX: &[u8] = b"h:";
/// Where the compaction point is stored.
pub const COMPACT_KEY: &[u8] = b"m:kvhist";

/// A key-value write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCmd {
    /// Writes a key. `if_revision`: apply only if the key's revision is this (0 = absent).
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        if_revision: Option<u64>,
        ttl_ms: Option<u64>,
    },
    /// Deletes a key, optionally only if its revision matches.
    Delete {
        key: String,
        if_revision: Option<u64>,
    },
    /// Drops history at or below `revision` (capped at the current revision).
    Compact { revision: u64 },
}

/// The result of a [`KvCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    Put {
        revision: u64,
    },
    Delete {
        revision: u64,
        deleted: bool,
    },
    /// A compare (`if_revision`) failed; nothing was written.
    Conflict {
        current_revision: u64,
    },
    /// History at or below this revision is gone.
    Compacted {
        compact_revision: u64,
    },
}

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

/// A key's current value: what a read answers, and the `k:` record stored for the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The revision that last wrote the key.
    pub revision: u64,
    /// The revision that created the key (after it was last absent).
    pub create_revision: u64,
    /// Replicated-clock deadline after which the key is gone.
    pub expires_at_ms: Option<u64>,
}

/// A [`KvEntry`] record borrowing its value: encoded without copying a value being written,
/// and decoded without copying one being loaded. The same fields in the same order, so the
/// same bytes.
#[derive(Serialize, Deserialize)]
struct EntryRecord<'a> {
    #[serde(with = "serde_bytes", borrow)]
    value: &'a [u8],
    revision: u64,
    create_revision: u64,
    expires_at_ms: Option<u64>,
}

/// What memory holds of a key: everything but its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KeyMeta {
    pub revision: u64,
    pub create_revision: u64,
    pub expires_at_ms: Option<u64>,
    /// The value's length in bytes.
    pub value_len: u64,
}

/// A key-value read could not be served from this node's state.
#[derive(Debug, thiserror::Error)]
pub enum KvReadError {
    #[error("reading the store: {0}")]
    Store(#[from] storage::Error),
    /// The store holds another revision of the key than the state: a snapshot is being
    /// installed under it. The read is retried once the new state is in place.
    #[error("the state is being replaced by a snapshot")]
    Replaced,
}

#[derive(Default, Debug)]
pub(super) struct Kv {
    /// Every key, with what memory holds of it; the values are in the store, under
    /// `k:<key>`, or in `pending` until their batch is written.
    entries: Names<KeyMeta>,
    /// Current values whose batch is not yet written to the store (every one, for a state
    /// loaded from no store); shared with `unwritten`.
    pending: BTreeMap<String, Arc<[u8]>>,
    /// Every key with a TTL, for expiry in deadline order.
    ttl: Deadlines<String>,
    /// Changes by (revision, key): `true` for a put, `false` for a delete. The values of
    /// the puts are in the store, under [`history_key`].
    history: BTreeMap<(u64, String), bool>,
    /// Values of history puts whose batch is not yet written to the store (every one, for a
    /// state loaded from no store).
    unwritten: BTreeMap<(u64, String), Arc<[u8]>>,
    /// The store the values are read from; weak, so that the state does not keep
    /// the database open.
    store: Option<WeakDb>,
    /// Values read from the store lately.
    read_values: ReadValues,
    /// Events at or below this revision have been dropped.
    compact_revision: u64,
    /// Bytes of the keys and values held (not their history): what the storage quota
    /// counts. Kept as entries come and go, recounted on load.
    bytes: u64,
}

/// Values read from the store lately, by key, each with the revision it was read at, in at
/// most a given number of bytes (keys, values and a fixed cost per entry); past that, the
/// cache's own policy (S3-FIFO) evicts values read once before those read often. Reads of a
/// node share it, each taking a shard's lock briefly.
#[derive(Default)]
struct ReadValues(Option<quick_cache::sync::Cache<Arc<str>, ReadValue, ByBytes>>);

/// A value and the revision it was read at.
type ReadValue = (u64, Arc<[u8]>);

/// Bookkeeping per cached value, counted with its key and value.
const READ_VALUE_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<Arc<str>, ReadValue> for ByBytes {
    fn weight(&self, key: &Arc<str>, (_, value): &ReadValue) -> u64 {
        key.len() as u64 + value.len() as u64 + READ_VALUE_OVERHEAD
    }
}

impl std::fmt::Debug for ReadValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(c) => write!(f, "ReadValues({} entries, {} bytes)", c.len(), c.weight()),
            None => f.write_str("ReadValues(off)"),
        }
    }
}

impl ReadValues {
    /// A cache of at most `bytes`; none for 0.
    fn new(bytes: usize) -> ReadValues {
        let bytes = bytes as u64;
        // The estimated count sizes its tables: values of about 256 bytes.
        let estimated = (bytes / (256 + READ_VALUE_OVERHEAD)).max(16) as usize;
        ReadValues(
            (bytes > 0).then(|| quick_cache::sync::Cache::with_weighter(estimated, bytes, ByBytes)),
        )
    }

    /// The value of `key` at `revision`, if held.
    fn get(&self, key: &str, revision: u64) -> Option<Arc<[u8]>> {
        let (at, value) = self.0.as_ref()?.get(key)?;
        (at == revision).then_some(value)
    }

    fn insert(&self, key: &str, revision: u64, value: Arc<[u8]>) {
        if let Some(c) = &self.0 {
            c.insert(key.into(), (revision, value));
        }
    }
}

/// What one entry counts towards the storage quota.
fn entry_bytes(key: &str, meta: &KeyMeta) -> u64 {
    key.len() as u64 + meta.value_len
}

pub(super) fn history_key(revision: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(HISTORY_PREFIX.len() + 8 + key.len());
    k.extend_from_slice(HISTORY_PREFIX);
    k.extend_from_slice(&revision.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

impl Part for Kv {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Kv> {
        let mut kv = Kv::default();
        // What memory holds of each key, and of the history the index only: the values stay
        // in the store.
        db.sm_scan_prefix_each(PREFIX, |k, v| {
            let key = super::unprefixed(PREFIX, k)?;
            let r: EntryRecord<'_> = codec::decode_borrowed(v)?;
            let meta = KeyMeta {
                revision: r.revision,
                create_revision: r.create_revision,
                expires_at_ms: r.expires_at_ms,
                value_len: r.value.len() as u64,
            };
            if let Some(at) = meta.expires_at_ms {
                kv.ttl.insert(at, key.clone());
            }
            kv.bytes += entry_bytes(&key, &meta);
            kv.entries.insert(&key, meta);
            Ok(())
        })?;
        db.sm_scan_prefix_each(HISTORY_PREFIX, |k, v| {
            let rest = &k[HISTORY_PREFIX.len()..];
            if rest.len() < 8 {
                return Err(storage::Error::Corrupt("short history key".into()));
            }
            let revision = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            let key = String::from_utf8(rest[8..].to_vec())
                .map_err(|_| storage::Error::Corrupt("history key is not UTF-8".into()))?;
            let value: Option<serde_bytes::ByteBuf> = codec::decode(v)?;
            kv.history.insert((revision, key), value.is_some());
            Ok(())
        })?;
        kv.store = Some(db.downgrade());
        kv.read_values = ReadValues::new(db.value_cache_bytes());
        if let Some(v) = db.sm_get(COMPACT_KEY)? {
            kv.compact_revision = codec::decode(&v)?;
        }
        Ok(kv)
    }

    /// Each expired key is a change and takes the next revision, in deadline order.
    fn expire(&mut self, cx: &mut Cx<'_>) {
        while let Some(key) = self.ttl.first_due(cx.now()) {
            cx.meta.revision += 1;
            let revision = cx.meta.revision;
            self.remove(&key, revision, cx.batch);
            cx.emit(|| LiveEvent::Kv(KvEvent::delete(revision, key)));
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.ttl.next()
    }
}

impl Primitive for Kv {
    type Cmd = KvCmd;
    type Output = KvResult;

    fn apply(&mut self, cmd: &KvCmd, cx: &mut Cx<'_>) -> KvResult {
        match cmd {
            KvCmd::Put {
                key,
                value,
                if_revision,
                ttl_ms,
            } => {
                if let Some(conflict) = self.compare(key, *if_revision) {
                    return conflict;
                }
                let revision = self.next_revision(cx);
                let expires = ttl_ms.map(|t| cx.now().saturating_add(t));
                self.put(key, value, expires, revision, cx.batch);
                cx.emit(|| {
                    LiveEvent::Kv(KvEvent {
                        revision,
                        key: key.clone(),
                        kind: KvEventKind::Put,
                        value: Some(value.clone()),
                    })
                });
                KvResult::Put { revision }
            }
            KvCmd::Delete { key, if_revision } => {
                if let Some(conflict) = self.compare(key, *if_revision) {
                    return conflict;
                }
                if !self.entries.contains_key(key) {
                    return KvResult::Delete {
                        revision: cx.meta.revision,
                        deleted: false,
                    };
                }
                let revision = self.next_revision(cx);
                self.remove(key, revision, cx.batch);
                cx.emit(|| LiveEvent::Kv(KvEvent::delete(revision, key.clone())));
                KvResult::Delete {
                    revision,
                    deleted: true,
                }
            }
            KvCmd::Compact { revision } => KvResult::Compacted {
                compact_revision: self.compact(*revision, cx.meta.revision, cx.batch),
            },
        }
    }

    fn in_txn(cmd: &KvCmd) -> bool {
        matches!(
            cmd,
            KvCmd::Put {
                if_revision: None,
                ..
            } | KvCmd::Delete {
                if_revision: None,
                ..
            }
        )
    }
}

impl KvEvent {
    fn delete(revision: u64, key: String) -> KvEvent {
        KvEvent {
            revision,
            key,
            kind: KvEventKind::Delete,
            value: None,
        }
    }
}

impl KvResult {
    /// Whether the write changed a key (and so took a revision).
    pub fn changed(&self) -> bool {
        matches!(
            self,
            KvResult::Put { .. } | KvResult::Delete { deleted: true, .. }
        )
    }
}

impl Kv {
    /// `Some(conflict)` when `if_revision` is given and is not the key's revision.
    fn compare(&self, key: &str, if_revision: Option<u64>) -> Option<KvResult> {
        let current = self.revision_of(key);
        if_revision
            .filter(|expected| *expected != current)
            .map(|_| KvResult::Conflict {
                current_revision: current,
            })
    }

    /// The revision a change takes: the transaction's, or the next one, which it commits.
    fn next_revision(&self, cx: &mut Cx<'_>) -> u64 {
        match cx.txn_revision {
            Some(r) => r,
            None => {
                cx.meta.revision += 1;
                cx.meta.revision
            }
        }
    }

    /// Records the change in the history; `value` is the put's (shared with `pending`).
    fn record(&mut self, revision: u64, key: &str, value: Option<Arc<[u8]>>, batch: &mut SmBatch) {
        put_record(
            batch,
            history_key(revision, key),
            &value.as_deref().map(serde_bytes::Bytes::new),
        );
        self.history
            .insert((revision, key.to_string()), value.is_some());
        if let Some(v) = value {
            self.unwritten.insert((revision, key.to_string()), v);
        }
    }

    /// The batches applied so far are written to the store: the values are read from there
    /// from now on.
    pub(super) fn written(&mut self) {
        if self.store.is_some() {
            self.pending.clear();
            self.unwritten.clear();
        }
    }

    /// Drops history at or below `revision` (never above `current`, the latest revision);
    /// returns the compaction point.
    fn compact(&mut self, revision: u64, current: u64, batch: &mut SmBatch) -> u64 {
        let target = revision.min(current);
        if target <= self.compact_revision {
            return self.compact_revision;
        }
        let keep = self.history.split_off(&(target + 1, String::new()));
        for (rev, key) in std::mem::replace(&mut self.history, keep).into_keys() {
            batch.delete(history_key(rev, &key));
        }
        if self.store.is_none() {
            self.unwritten = self.unwritten.split_off(&(target + 1, String::new()));
        }
        self.compact_revision = target;
        put_record(batch, COMPACT_KEY.to_vec(), &target);
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
    /// revision order (keys in order within a revision). The values are read from the store,
    /// in one multi-get, under the caller's read lock (which keeps compaction away).
    ///
    /// A value the store does not have (a snapshot being installed replaced it, or the store
    /// failed) ends the history there: the answer is `Compacted` at that revision, and the
    /// reader starts again from the current state, as after a compaction.
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
        let picked: Vec<(&(u64, String), bool)> = self
            .history
            .range((from_revision, String::new())..)
            .filter(|((_, k), _)| k.starts_with(prefix))
            .take(limit)
            .map(|(at, put)| (at, *put))
            .collect();
        let stored: Vec<Vec<u8>> = picked
            .iter()
            .filter(|(at, put)| *put && !self.unwritten.contains_key(*at))
            .map(|((revision, key), _)| history_key(*revision, key))
            .collect();
        let mut stored = self.read_stored(&stored).into_iter();
        let mut events = Vec::with_capacity(picked.len());
        for (at, put) in picked {
            let value = if !put {
                None
            } else if let Some(v) = self.unwritten.get(at) {
                Some(v.to_vec())
            } else if let Some(v) = stored.next().flatten() {
                Some(v)
            } else {
                let (revision, key) = at;
                tracing::warn!(revision, key, "history value missing from the store");
                return Err(Compacted {
                    compact_revision: *revision,
                });
            };
            events.push(KvEvent {
                revision: at.0,
                key: at.1.clone(),
                kind: if put {
                    KvEventKind::Put
                } else {
                    KvEventKind::Delete
                },
                value,
            });
        }
        Ok(events)
    }

    /// The history values under `keys`, in order: `None` for each one the store does not
    /// have (or all, when it cannot be read).
    fn read_stored(&self, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
        let read = || -> storage::Result<Vec<Option<Vec<u8>>>> {
            self.read_each(keys, |v| {
                Ok(codec::decode::<Option<serde_bytes::ByteBuf>>(v)?
                    .map(serde_bytes::ByteBuf::into_vec))
            })
            .map(|values| values.into_iter().map(Option::flatten).collect())
        };
        read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading history values");
            Vec::new()
        })
    }

    /// Reads the records under `keys` from the store in one multi-get, each through `f`, in
    /// order (`None` for a record the store lacks); nothing when there is no store.
    fn read_each<T>(
        &self,
        keys: &[Vec<u8>],
        mut f: impl FnMut(&[u8]) -> storage::Result<T>,
    ) -> storage::Result<Vec<Option<T>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let Some(db) = self.store.as_ref().and_then(WeakDb::upgrade) else {
            return Ok(Vec::new());
        };
        if let [key] = keys {
            // One key (every single read): a plain get, read in place.
            return Ok(vec![db.sm_get_with(key, f)?]);
        }
        db.sm_multi_get(keys)?
            .into_iter()
            .map(|v| v.map(|bytes| f(&bytes)).transpose())
            .collect()
    }

    /// The key's revision, 0 when absent.
    pub(super) fn revision_of(&self, key: &str) -> u64 {
        self.entries.get(key).map(|e| e.revision).unwrap_or(0)
    }

    /// What memory holds of a live key (not past its deadline at `now`).
    pub(super) fn meta(&self, key: &str, now: u64) -> Option<&KeyMeta> {
        self.entries.get(key).filter(|e| !is_expired(e, now))
    }

    /// Writes `key` at `revision`.
    fn put(
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
        let meta = KeyMeta {
            revision,
            create_revision,
            expires_at_ms,
            value_len: value.len() as u64,
        };
        if let Some(old) = self.entries.get(key) {
            if let Some(at) = old.expires_at_ms {
                self.ttl.remove(at, &key.to_string());
            }
        }
        if let Some(at) = expires_at_ms {
            self.ttl.insert(at, key.to_string());
        }
        let record = EntryRecord {
            value,
            revision,
            create_revision,
            expires_at_ms,
        };
        put_record(batch, prefixed(PREFIX, key), &record);
        self.bytes += entry_bytes(key, &meta);
        if let Some(old) = self.entries.insert(key, meta) {
            self.bytes -= entry_bytes(key, &old);
        }
        let value: Arc<[u8]> = value.into();
        self.pending.insert(key.to_string(), value.clone());
        self.record(revision, key, Some(value), batch);
    }

    /// Removes `key` at `revision`; says whether it existed.
    fn remove(&mut self, key: &str, revision: u64, batch: &mut SmBatch) -> bool {
        let Some(old) = self.entries.remove(key) else {
            return false;
        };
        self.pending.remove(key);
        self.bytes -= entry_bytes(key, &old);
        if let Some(at) = old.expires_at_ms {
            self.ttl.remove(at, &key.to_string());
        }
        batch.delete(prefixed(PREFIX, key));
        self.record(revision, key, None, batch);
        true
    }

    /// The key's entry, its value read from the store (or held, until written).
    pub(super) fn get(&self, key: &str, now: u64) -> Result<Option<KvEntry>, KvReadError> {
        let Some(meta) = self.meta(key, now) else {
            return Ok(None);
        };
        let mut values = self.values(std::iter::once((key, meta)))?;
        Ok(values.pop().map(|value| entry(meta, value)))
    }

    /// Up to `limit` live keys under `prefix` after `after`, in key order, with their
    /// values (read in one multi-get); the flag says whether more remain.
    pub(super) fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<(String, KvEntry)>, bool), KvReadError> {
        let (items, more) = self.keys(prefix, after, limit, now);
        let values = self.values(items.iter().copied())?;
        let items = items
            .into_iter()
            .zip(values)
            .map(|((k, m), v)| (k.to_string(), entry(m, v)))
            .collect();
        Ok((items, more))
    }

    /// Like [`list`](Self::list), without reading the values.
    pub(super) fn keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> (Vec<(&str, &KeyMeta)>, bool) {
        self.entries
            .list_live(prefix, after, limit, |e| !is_expired(e, now))
    }

    /// The values of `keys` (each present, with its metadata), in order: held ones from
    /// `pending` or the values read lately, the others from the store (one get, or one
    /// multi-get). A stored record at another revision than the state's means a snapshot is
    /// being installed under the state.
    fn values<'a>(
        &self,
        keys: impl Iterator<Item = (&'a str, &'a KeyMeta)>,
    ) -> Result<Vec<Vec<u8>>, KvReadError> {
        let keys: Vec<(&str, &KeyMeta)> = keys.collect();
        // Each key's value if memory holds it (unwritten, or read lately), else `None`.
        let held: Vec<Option<Arc<[u8]>>> = keys
            .iter()
            .map(|(k, meta)| {
                self.pending
                    .get(*k)
                    .cloned()
                    .or_else(|| self.read_values.get(k, meta.revision))
            })
            .collect();
        let stored: Vec<Vec<u8>> = keys
            .iter()
            .zip(&held)
            .filter(|(_, h)| h.is_none())
            .map(|((k, _), _)| prefixed(PREFIX, k))
            .collect();
        let read = self.read_each(&stored, |v| {
            let r: EntryRecord<'_> = codec::decode_borrowed(v)?;
            Ok((r.revision, Arc::<[u8]>::from(r.value)))
        })?;
        if read.len() != stored.len() {
            return Err(KvReadError::Replaced);
        }
        let mut read = read.into_iter();
        keys.into_iter()
            .zip(held)
            .map(|((k, meta), held)| match held {
                Some(v) => Ok(v.to_vec()),
                None => match read.next().flatten() {
                    Some((revision, value)) if revision == meta.revision => {
                        let out = value.to_vec();
                        self.read_values.insert(k, revision, value);
                        Ok(out)
                    }
                    _ => Err(KvReadError::Replaced),
                },
            })
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of the keys and values held.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn entry(meta: &KeyMeta, value: Vec<u8>) -> KvEntry {
    KvEntry {
        value,
        revision: meta.revision,
        create_revision: meta.create_revision,
        expires_at_ms: meta.expires_at_ms,
    }
}

fn is_expired(e: &KeyMeta, now: u64) -> bool {
    e.expires_at_ms.is_some_and(|at| at <= now)
}
