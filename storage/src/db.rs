//! The RocksDB instance of a node and its column families.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::error::Result;

/// Node-local metadata: the Raft vote, the last purged log id, the node's identity.
pub(crate) const CF_META: &str = "meta";
/// The Raft log: key = log index (u64 big-endian), value = encoded entry.
pub(crate) const CF_LOGS: &str = "logs";
/// The replicated state machine: keys are laid out by the `raft` crate.
pub(crate) const CF_SM: &str = "sm";

/// One RocksDB instance holding the log, the node's metadata and the state machine.
///
/// Cloning is cheap; all clones share the same database.
#[derive(Clone)]
pub struct Db {
    pub(crate) db: Arc<DB>,
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
    /// Opens (or creates) the database under `path`.
    ///
    /// Block checksums are verified on every read (`paranoid_checks`), so corruption surfaces
    /// as an error instead of wrong data.
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        // A Raft log is written once and read back rarely: keep memtables modest.
        opts.set_write_buffer_size(32 << 20);
        opts.set_max_background_jobs(2);
        let cfs = [CF_META, CF_LOGS, CF_SM]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self { db: Arc::new(db) })
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
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

    /// Reads one state-machine key.
    pub fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_SM), key)?)
    }

    /// All state-machine entries whose key starts with `prefix`, in key order.
    pub fn sm_scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_SM),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
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
        self.db.flush_wal(true)?;
        Ok(())
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
    pub fn sm_export_each(&self, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let snap = self.db.snapshot();
        for item in snap.iterator_cf(self.cf(CF_SM), IteratorMode::Start) {
            let (k, v) = item?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Replaces the whole state machine with `items` in one synced batch, so a crash leaves
    /// either the old state or the new one.
    ///
    /// Blocking: call it from `spawn_blocking`.
    pub fn sm_replace(&self, items: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let cf = self.cf(CF_SM);
        let mut wb = WriteBatch::default();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item?;
            wb.delete_cf(cf, k);
        }
        for (k, v) in items {
            wb.put_cf(cf, k, v);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }
}
