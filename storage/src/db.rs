//! The RocksDB instance of a node and its column families.

use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType,
    Direction, IteratorMode, Options, WriteBatch, WriteBufferManager, WriteOptions, DB,
};

use crate::error::{Error, Result};

/// Node-local metadata: the Raft vote, the last purged log id, the node's identity.
pub(crate) const CF_META: &str = "meta";
/// The Raft log: key = log index (u64 big-endian), value = the entry's bytes.
pub(crate) const CF_LOGS: &str = "logs";
/// The replicated state machine: keys are laid out by the `raft` crate.
pub(crate) const CF_SM: &str = "sm";
/// In `meta` while a streamed replace of the state machine is under way.
const SM_REPLACE_PENDING: &[u8] = b"sm-replace-pending";

/// How much memory RocksDB may use, whatever the size of the data: blocks read (data, index
/// and bloom filters) are held in one LRU cache shared by every column family, and the
/// memtables of all of them together are bounded (a flush starts when they reach it). An
/// eighth of the read cache is left to the state's cache of values read lately
/// ([`Db::value_cache_bytes`]), so the two together stay within `cache_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// The read caches' capacity (RocksDB's block cache and the values read lately), in bytes.
    pub cache_bytes: usize,
    /// The bound of all memtables together, in bytes.
    pub memtable_bytes: usize,
}

impl Default for Memory {
    /// 256 MiB of block cache and 128 MiB of memtables.
    fn default() -> Self {
        Memory {
            cache_bytes: 256 << 20,
            memtable_bytes: 128 << 20,
        }
    }
}

/// One memtable's size: a quarter of the bound, so that each column family can fill one and
/// flush another within it, and at most 32 MiB (the log is written once and read back rarely).
fn memtable_size(m: &Memory) -> usize {
    (m.memtable_bytes / 4).clamp(1 << 20, 32 << 20)
}

/// The state machine's memtable: at most 4 MiB, whatever the bound. Its keys are written in
/// no order (a cache or key-value write lands anywhere), and a skip list insert costs a cache
/// miss per level it walks: in a 32 MiB memtable of overwritten versions, inserting was the
/// hottest user-space code of a replicated `SET`; at 4 MiB replicated `SET`s ran about 5%
/// faster (docs/benchmarks.md). The log's keys come in order, so its inserts stay cheap in a
/// large memtable.
const SM_MEMTABLE_BYTES: usize = 4 << 20;

/// RocksDB's rule of thumb for leveled compaction: the first level holds about as much as the
/// memtables that flush into it before a compaction (four). Left at its 256 MiB default
/// behind 4 MiB memtables, each compaction of random keys into that level would rewrite far
/// more than it brings.
const SM_LEVEL_BASE_BYTES: u64 = 4 * SM_MEMTABLE_BYTES as u64;

/// One RocksDB instance holding the log, the node's metadata and the state machine.
///
/// Cloning is cheap; all clones share the same database.
#[derive(Clone)]
pub struct Db {
    db: Arc<DB>,
    syncs: Arc<SyncTimes>,
    value_cache_bytes: usize,
}

/// One point in time of the state machine (see [`Db::sm_view`]).
pub struct SmView<'a> {
    snap: rocksdb::Snapshot<'a>,
    cf: &'a rocksdb::ColumnFamily,
}

impl SmView<'_> {
    /// Calls `f` on every entry, in key order, until it returns `false`.
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn each(&self, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        for item in self.snap.iterator_cf(self.cf, IteratorMode::Start) {
            let (k, v) = item?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}

/// A handle to a [`Db`] that does not keep it open (see [`Db::downgrade`]).
#[derive(Clone)]
pub struct WeakDb(Weak<DB>, Arc<SyncTimes>, usize);

impl std::fmt::Debug for WeakDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakDb")
    }
}

impl WeakDb {
    /// The database, unless every [`Db`] clone has been dropped (and so it is closed).
    pub fn upgrade(&self) -> Option<Db> {
        self.0.upgrade().map(|db| Db {
            db,
            syncs: self.1.clone(),
            value_cache_bytes: self.2,
        })
    }
}

/// How long the write-ahead log syncs of [`Db::sync_wal`] took, since the last
/// [`SyncTimes::take`]: two clock reads and three atomic adds per sync.
#[derive(Debug, Default)]
pub struct SyncTimes {
    count: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
}

/// [`SyncTimes`] taken over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub count: u64,
    pub total_us: u64,
    pub max_us: u64,
}

impl SyncTimes {
    fn record(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The syncs since the last call, and starts counting anew.
    pub fn take(&self) -> SyncSummary {
        SyncSummary {
            count: self.count.swap(0, Ordering::Relaxed),
            total_us: self.total_us.swap(0, Ordering::Relaxed),
            max_us: self.max_us.swap(0, Ordering::Relaxed),
        }
    }
}

/// A set of state-machine changes written atomically.
#[derive(Default, Debug)]
pub struct SmBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl SmBatch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl Db {
    /// Opens (or creates) the database under `path`, with the default [`Memory`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Memory::default())
    }

    /// Opens (or creates) the database under `path`, using at most about `memory` besides
    /// what reads and writes hold while they run.
    ///
    /// Block checksums are verified on every read (`paranoid_checks`), so corruption surfaces
    /// as an error instead of wrong data.
    pub fn open_with(path: &Path, memory: Memory) -> Result<Self> {
        let value_cache_bytes = memory.cache_bytes / 8;
        let cache = Cache::new_lru_cache(memory.cache_bytes - value_cache_bytes);
        let memtables = WriteBufferManager::new_write_buffer_manager(memory.memtable_bytes, false);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Index and filter blocks count against the cache instead of growing with the data.
        // They are partitioned (4 KiB parts under a small top level, which stays pinned), so
        // a lookup loads the part it needs: whole, a large file's index would be loaded again
        // after each eviction, and a cache full of values evicts it all the time.
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_cache_index_and_filter_blocks(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Values are read by key (a key's value, a page of history): a bloom filter spares
        // most lookups a data block read.
        table.set_bloom_filter(10.0, false);
        let cf_opts = |size: usize| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(size);
            o.set_write_buffer_manager(&memtables);
            // LZ4: cheap enough for the log's write path, and most state compresses.
            o.set_compression_type(DBCompressionType::Lz4);
            o
        };
        let mut opts = cf_opts(memtable_size(&memory));
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        opts.set_max_background_jobs(2);
        // A write-ahead log file is deleted once every column family written in it has
        // flushed; the rarely written `meta` would keep them all otherwise. Past this size the
        // column families holding the oldest file are flushed.
        opts.set_max_total_wal_size(memory.memtable_bytes as u64);
        let mut sm_opts = cf_opts(SM_MEMTABLE_BYTES.min(memtable_size(&memory)));
        sm_opts.set_max_bytes_for_level_base(SM_LEVEL_BASE_BYTES);
        sm_opts.set_target_file_size_base(SM_MEMTABLE_BYTES as u64);
        let cfs = [
            ColumnFamilyDescriptor::new(CF_META, cf_opts(memtable_size(&memory))),
            ColumnFamilyDescriptor::new(CF_LOGS, cf_opts(memtable_size(&memory))),
            ColumnFamilyDescriptor::new(CF_SM, sm_opts),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self {
            db: Arc::new(db),
            syncs: Arc::default(),
            value_cache_bytes,
        })
    }

    /// A handle that does not keep the database open: for a thread that must not outlive the
    /// node's use of it (closing RocksDB before process exit keeps its own threads from
    /// aborting).
    pub fn downgrade(&self) -> WeakDb {
        WeakDb(
            Arc::downgrade(&self.db),
            self.syncs.clone(),
            self.value_cache_bytes,
        )
    }

    /// How many bytes the state may keep of values it read from here (an eighth of
    /// [`Memory::cache_bytes`], taken from RocksDB's block cache).
    pub fn value_cache_bytes(&self) -> usize {
        self.value_cache_bytes
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Reads node-local metadata.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    /// Writes node-local metadata and syncs it to disk before returning.
    pub fn meta_put_sync(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_META), key, value, &wo)?;
        Ok(())
    }

    /// Writes node-local metadata without syncing it: a crash may lose it.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.db.put_cf(self.cf(CF_META), key, value)?;
        Ok(())
    }

    /// The log entries whose index is in `range`, in index order, as `(index, bytes)`.
    pub fn log_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => match x.checked_add(1) {
                Some(x) => x,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let key = index_key(start);
        let it = self.db.iterator_cf(
            self.cf(CF_LOGS),
            IteratorMode::From(&key, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item?;
            let index = key_index(&k)?;
            if !range.contains(&index) {
                break;
            }
            out.push((index, v.to_vec()));
        }
        Ok(out)
    }

    /// The log entry with the highest index, as `(index, bytes)`.
    pub fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self
            .db
            .iterator_cf(self.cf(CF_LOGS), IteratorMode::End)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((key_index(&k)?, v.to_vec())))
            }
        }
    }

    /// Writes log entries `(index, bytes)` in one atomic batch, replacing any at the same
    /// index. Not synced: readable at once, durable after [`sync_wal`](Self::sync_wal).
    pub fn log_append(&self, entries: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<()> {
        let cf = self.cf(CF_LOGS);
        let mut wb = WriteBatch::default();
        for (index, bytes) in entries {
            wb.put_cf(cf, index_key(index), bytes);
        }
        self.db.write(wb)?;
        Ok(())
    }

    /// Deletes every log entry at `from` or above. Not synced.
    pub fn log_truncate_from(&self, from: u64) -> Result<()> {
        let cf = self.cf(CF_LOGS);
        self.db
            .delete_range_cf(cf, index_key(from), index_key(u64::MAX))?;
        // delete_range excludes its end key.
        self.db.delete_cf(cf, index_key(u64::MAX))?;
        Ok(())
    }

    /// Deletes every log entry below `end`. Not synced.
    pub fn log_delete_below(&self, end: u64) -> Result<()> {
        self.db
            .delete_range_cf(self.cf(CF_LOGS), index_key(0), index_key(end))?;
        Ok(())
    }

    /// Reads one state-machine key.
    pub fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_SM), key)?)
    }

    /// Reads one state-machine key through `f`, in place (the value is not copied out of
    /// RocksDB's block first).
    pub fn sm_get_with<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(CF_SM), key)? {
            Some(v) => f(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Reads several state-machine keys at once, in the order given.
    pub fn sm_multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(CF_SM);
        self.db
            .multi_get_cf(keys.iter().map(|k| (cf, k.as_slice())))
            .into_iter()
            .map(|r| r.map_err(Into::into))
            .collect()
    }

    /// Calls `f` on every state-machine entry whose key starts with `prefix`, in key order,
    /// without collecting them.
    pub fn sm_scan_prefix_each(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let it = self.db.iterator_cf(
            self.cf(CF_SM),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }

    /// All state-machine entries whose key starts with `prefix`, in key order.
    pub fn sm_scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.sm_scan_prefix_each(prefix, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Applies a state-machine batch atomically.
    ///
    /// Not synced: the Raft log, which precedes it in the same write-ahead log, is the source
    /// of truth, and entries lost here are applied again after a crash.
    pub fn sm_write(&self, batch: SmBatch) -> Result<()> {
        let cf = self.cf(CF_SM);
        let mut wb = WriteBatch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => wb.put_cf(cf, k, v),
                None => wb.delete_cf(cf, k),
            }
        }
        self.db.write(wb)?;
        Ok(())
    }

    /// Makes every write so far durable (syncs the write-ahead log), for writes made unsynced
    /// in bulk such as a restore.
    pub fn sync_wal(&self) -> Result<()> {
        let start = std::time::Instant::now();
        self.db.flush_wal(true)?;
        self.syncs.record(start.elapsed());
        Ok(())
    }

    /// How long the syncs of [`Db::sync_wal`] took (the Raft log's appends are made durable
    /// there), shared by every clone.
    pub fn sync_times(&self) -> &SyncTimes {
        &self.syncs
    }

    /// A consistent copy of the whole state machine (read from a RocksDB snapshot).
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn sm_export(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.sm_export_each(|k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Calls `f` on every state-machine entry of one RocksDB snapshot, in key order, until it
    /// returns `false`: a consistent export that never holds the whole state in memory.
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn sm_export_each(&self, f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        self.sm_view().each(f)
    }

    /// The state machine as of now, read from one RocksDB snapshot as often as needed (say
    /// once to measure, once to write).
    pub fn sm_view(&self) -> SmView<'_> {
        SmView {
            snap: self.db.snapshot(),
            cf: self.cf(CF_SM),
        }
    }

    /// Replaces the state machine with `items` (in key order or not), written in batches of
    /// about `batch_bytes`, so a state larger than memory can be installed.
    ///
    /// Crash-safe by redoing: the first batch clears the state machine and records that a
    /// replace is under way (in the same atomic write); the last one, synced, clears the
    /// record. A node that stops in between finds [`sm_replace_pending`](Self::sm_replace_pending)
    /// and must replace again from the same source before it reads the state machine. An
    /// error from `items` leaves the replace pending too.
    pub fn sm_replace_streamed(
        &self,
        items: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
        batch_bytes: usize,
    ) -> Result<()> {
        let cf = self.cf(CF_SM);
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_META), SM_REPLACE_PENDING, b"");
        let first = self.db.iterator_cf(cf, IteratorMode::Start).next();
        let last = self.db.iterator_cf(cf, IteratorMode::End).next();
        if let (Some(first), Some(last)) = (first, last) {
            let (first, last) = (first?.0, last?.0);
            // One range tombstone (the end is exclusive), and the last key itself.
            wb.delete_range_cf(cf, &first, &last);
            wb.delete_cf(cf, &last);
        }
        let mut pending = 0usize;
        for item in items {
            let (k, v) = item?;
            pending += k.len() + v.len();
            wb.put_cf(cf, k, v);
            if pending >= batch_bytes {
                // Not synced: the last write's sync covers the log before it, and a crash
                // before then leaves the replace pending.
                self.db.write(std::mem::take(&mut wb))?;
                pending = 0;
            }
        }
        wb.delete_cf(self.cf(CF_META), SM_REPLACE_PENDING);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    /// Whether a [`sm_replace_streamed`](Self::sm_replace_streamed) was cut short: the state
    /// machine holds part of the new state and must be replaced again.
    pub fn sm_replace_pending(&self) -> Result<bool> {
        Ok(self
            .db
            .get_cf(self.cf(CF_META), SM_REPLACE_PENDING)?
            .is_some())
    }
}

/// The key of log entry `index`: big-endian, so keys sort by index.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::Corrupt("log key is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(db: &Db) -> Vec<u64> {
        db.log_range(..)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn log_append_range_truncate_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.log_last().unwrap(), None);
        db.log_append((1..=5).map(|i| (i, vec![i as u8]))).unwrap();
        db.log_append([(u64::MAX, vec![0xff])]).unwrap();
        assert_eq!(db.log_last().unwrap(), Some((u64::MAX, vec![0xff])));
        assert_eq!(
            db.log_range(2..4).unwrap(),
            vec![(2, vec![2]), (3, vec![3])]
        );
        assert_eq!(
            db.log_range((Bound::Excluded(4), Bound::Included(5)))
                .unwrap(),
            vec![(5, vec![5])]
        );
        assert!(db
            .log_range((Bound::Excluded(u64::MAX), Bound::Unbounded))
            .unwrap()
            .is_empty());

        db.log_truncate_from(4).unwrap();
        assert_eq!(entries(&db), vec![1, 2, 3]);
        db.log_delete_below(3).unwrap();
        assert_eq!(entries(&db), vec![3]);
        assert_eq!(db.log_last().unwrap(), Some((3, vec![3])));
    }

    #[test]
    fn weak_handle_does_not_keep_the_database_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let weak = db.downgrade();
        assert!(weak.upgrade().is_some());
        drop(db);
        assert!(weak.upgrade().is_none());
    }
}
