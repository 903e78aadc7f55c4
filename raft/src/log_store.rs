//! The durable Raft log: openraft's `RaftLogStorage` on the `logs` and `meta` column families
//! of [`storage::Db`], each entry, vote and log id stored in the [`codec`](crate::codec)
//! encoding.
//!
//! Appends are written to RocksDB inside `append` (so they are readable at once) and made
//! durable by one syncer thread that fsyncs the write-ahead log for every batch of appends
//! queued behind it (group commit), then reports the completions in the order they arrived.
//! openraft is never told an entry is durable before it is.

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::{Db, WeakDb};

use crate::codec;

const KEY_VOTE: &str = "raft_vote";
const KEY_LAST_PURGED: &str = "raft_last_purged";
const KEY_COMMITTED: &str = "raft_committed";

/// The Raft log store. Cloning shares the database and the syncer thread.
pub struct LogStore<C: RaftTypeConfig> {
    db: Db,
    syncer: Arc<Syncer<C>>,
    /// Bytes of entries appended, shared with the replica (which snapshots by log size).
    appended_bytes: Arc<AtomicU64>,
    _c: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            syncer: self.syncer.clone(),
            appended_bytes: self.appended_bytes.clone(),
            _c: PhantomData,
        }
    }
}

/// Owns the channel to the syncer thread; the thread ends when the last store clone is dropped.
struct Syncer<C: RaftTypeConfig> {
    tx: std::sync::Mutex<mpsc::Sender<IOFlushed<C>>>,
}

impl<C: RaftTypeConfig> LogStore<C>
where
    EntryOf<C>: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    pub fn new(db: Db) -> Self {
        let (tx, rx) = mpsc::channel::<IOFlushed<C>>();
        // A weak handle: the syncer must not keep RocksDB open after the node lets go of it
        // (closing it before process exit keeps RocksDB's own threads from aborting).
        let sync_db = db.downgrade();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_loop(sync_db, rx))
            .expect("spawn log syncer thread");
        Self {
            db,
            syncer: Arc::new(Syncer {
                tx: std::sync::Mutex::new(tx),
            }),
            appended_bytes: Arc::new(AtomicU64::new(0)),
            _c: PhantomData,
        }
    }

    /// The count of bytes of entries appended to this store (by any clone), which its reader
    /// may reset.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended_bytes.clone()
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, io::Error> {
        match self.db.meta_get(key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta_sync<T: Serialize>(&self, key: &str, value: &T) -> Result<(), io::Error> {
        let bytes = codec::encode(value)?;
        self.db.meta_put_sync(key, &bytes)?;
        Ok(())
    }
}

/// Waits for queued appends, fsyncs the WAL once for all of them, completes them in order.
fn sync_loop<C: RaftTypeConfig>(db: WeakDb, rx: mpsc::Receiver<IOFlushed<C>>) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let res = match db.upgrade() {
            Some(db) => db.sync_wal().map_err(|e| e.to_string()),
            None => Err("database closed".to_string()),
        };
        for cb in pending {
            cb.io_completed(res.clone().map_err(io::Error::other));
        }
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C>
where
    EntryOf<C>: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let mut out = Vec::new();
        for (index, v) in self.db.log_range(range)? {
            let entry: EntryOf<C> = codec::decode(&v)?;
            if entry.index() != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("log entry at key {index} has index {}", entry.index()),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C>
where
    EntryOf<C>: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_log_id = match self.db.log_last()? {
            None => None,
            Some((_, v)) => {
                let entry: EntryOf<C> = codec::decode(&v)?;
                Some(entry.log_id())
            }
        };
        let last_purged_log_id: Option<LogIdOf<C>> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = last_log_id.or_else(|| last_purged_log_id.clone());
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        // Synced: a vote forgotten after a crash could let this node vote twice in a term.
        self.put_meta_sync(KEY_VOTE, vote)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // Not synced: losing it only means re-learning the commit index from the leader.
        let bytes = codec::encode(&committed)?;
        Ok(self.db.meta_put(KEY_COMMITTED, &bytes)?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self
            .get_meta::<Option<LogIdOf<C>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries = entries
            .into_iter()
            .map(|entry| Ok((entry.index(), codec::encode(&entry)?)))
            .collect::<Result<Vec<_>, io::Error>>()?;
        let bytes: usize = entries.iter().map(|(_, e)| e.len()).sum();
        self.appended_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        // Written now so the entries are readable when this returns; durable once the syncer
        // has fsynced the WAL, which is when openraft is told.
        self.db.log_append(entries)?;
        let tx = self.syncer.tx.lock().expect("syncer mutex").clone();
        if let Err(mpsc::SendError(cb)) = tx.send(callback) {
            cb.io_completed(Err(io::Error::other("log syncer stopped")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        // Truncated entries were never committed; losing the deletion only re-exposes entries
        // that openraft truncates again on the next conflict, so no sync is needed.
        Ok(self.db.log_truncate_from(from)?)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        // Record the purge point first: entries at or below it are ignored from then on.
        self.put_meta_sync(KEY_LAST_PURGED, &log_id)?;
        Ok(self.db.log_delete_below(log_id.index() + 1)?)
    }
}
