//! The durable Raft log: openraft's `RaftLogStorage` on the `logs` and `meta` column families
//! of [`storage::Db`], each entry, vote and log id stored in the [`codec`](crate::codec)
//! encoding.
//!
//! Appends are written to RocksDB inside `append` (so they are readable at once) and made
//! durable by one syncer thread that fsyncs the write-ahead log for every batch of appends
//! queued behind it (group commit), then reports the completions in the order they arrived.
//! openraft is never told an entry is durable before it is.
//!
//! The newest entries are also kept decoded in memory ([`Recent`], at most
//! [`RECENT_MAX_BYTES`] of their encoding): replication and the state machine read what was
//! just appended, and reading it back from RocksDB (an iterator, a copy and a decode per
//! entry) cost each node a few percent of a write's CPU.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
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

/// Most bytes (of their encoding) of the newest entries kept decoded in memory.
pub const RECENT_MAX_BYTES: usize = 8 << 20;
/// Most entries kept decoded in memory.
const RECENT_MAX_ENTRIES: usize = 16_384;

/// The newest entries of the log, in order: always the log's last entries (`first` up to the
/// last appended), or none (after a start, or once truncated or purged past them). Changed
/// under its lock together with RocksDB, so a reader sees both alike.
struct Recent<E> {
    entries: VecDeque<(E, usize)>,
    first: u64,
    bytes: usize,
}

impl<E> Recent<E> {
    fn new() -> Self {
        Recent {
            entries: VecDeque::new(),
            first: 0,
            bytes: 0,
        }
    }

    /// One past the last entry held.
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Appends `(index, entry, encoded size)`s; an entry that does not follow the last one
    /// held starts afresh. The oldest go past the bounds.
    fn append(&mut self, appended: impl IntoIterator<Item = (u64, E, usize)>) {
        for (index, entry, size) in appended {
            if self.entries.is_empty() || index != self.end() {
                self.clear();
                self.first = index;
            }
            self.entries.push_back((entry, size));
            self.bytes += size;
        }
        while self.entries.len() > 1
            && (self.bytes > RECENT_MAX_BYTES || self.entries.len() > RECENT_MAX_ENTRIES)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
            self.first += 1;
        }
    }

    /// Forgets the entries at `from` and above.
    fn truncate_from(&mut self, from: u64) {
        while !self.entries.is_empty() && self.end() > from {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets the entries at `upto` and below.
    fn purge_upto(&mut self, upto: u64) {
        while !self.entries.is_empty() && self.first <= upto {
            self.pop_front();
        }
    }

    /// The entries from `start` up to `end` (exclusive; `None`: the last), when all of them
    /// that the log holds are here.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<E>>
    where
        E: Clone,
    {
        if self.entries.is_empty() || start < self.first {
            return None;
        }
        let end = end.map_or(self.end(), |e| e.min(self.end()));
        if start >= end {
            return Some(Vec::new());
        }
        let range = (start - self.first) as usize..(end - self.first) as usize;
        Some(self.entries.range(range).map(|(e, _)| e.clone()).collect())
    }
}

/// `range` as a start and an exclusive end (`None`: unbounded).
fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.checked_add(1),
        Bound::Excluded(x) => Some(*x),
        Bound::Unbounded => None,
    };
    (start, end)
}

/// The Raft log store. Cloning shares the database, the recent entries and the syncer thread.
pub struct LogStore<C: RaftTypeConfig> {
    db: Db,
    recent: Arc<std::sync::Mutex<Recent<C::Entry>>>,
    syncer: Arc<Syncer<C>>,
    /// Bytes of entries appended, shared with the replica (which snapshots by log size).
    appended_bytes: Arc<AtomicU64>,
    _c: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            recent: self.recent.clone(),
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
            recent: Arc::new(std::sync::Mutex::new(Recent::new())),
            syncer: Arc::new(Syncer {
                tx: std::sync::Mutex::new(tx),
            }),
            appended_bytes: Arc::new(AtomicU64::new(0)),
            _c: PhantomData,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent<C::Entry>> {
        // A panic under the lock leaves it as consistent as any other moment: use it.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
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
    EntryOf<C>: Serialize + DeserializeOwned + Clone,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let (start, end) = bounds(&range);
        if let Some(entries) = self.recent().get(start, end) {
            return Ok(entries);
        }
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
    EntryOf<C>: Serialize + DeserializeOwned + Clone,
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
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|entry| Ok((entry.index(), codec::encode(entry)?)))
            .collect::<Result<Vec<_>, io::Error>>()?;
        let sizes: Vec<usize> = encoded.iter().map(|(_, e)| e.len()).collect();
        self.appended_bytes
            .fetch_add(sizes.iter().sum::<usize>() as u64, Ordering::Relaxed);
        // Written now so the entries are readable when this returns; durable once the syncer
        // has fsynced the WAL, which is when openraft is told.
        {
            let mut recent = self.recent();
            self.db.log_append(encoded)?;
            recent.append(
                entries
                    .into_iter()
                    .zip(sizes)
                    .map(|(e, size)| (e.index(), e, size)),
            );
        }
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
        let mut recent = self.recent();
        recent.truncate_from(from);
        Ok(self.db.log_truncate_from(from)?)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        // Record the purge point first: entries at or below it are ignored from then on.
        self.put_meta_sync(KEY_LAST_PURGED, &log_id)?;
        let mut recent = self.recent();
        recent.purge_upto(log_id.index());
        Ok(self.db.log_delete_below(log_id.index() + 1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::{bounds, Recent};

    #[test]
    fn recent_entries_are_the_logs_last_and_answer_only_what_they_hold() {
        let mut r = Recent::new();
        assert_eq!(r.get(1, None), None, "nothing held: read RocksDB");
        r.append((5..=9).map(|i| (i, i, 10)));
        assert_eq!(r.get(5, Some(8)), Some(vec![5, 6, 7]));
        assert_eq!(r.get(8, None), Some(vec![8, 9]));
        assert_eq!(r.get(7, Some(100)), Some(vec![7, 8, 9]));
        assert_eq!(r.get(10, None), Some(vec![]), "past the last entry: none");
        assert_eq!(r.get(4, None), None, "older than held: read RocksDB");

        r.truncate_from(8);
        assert_eq!(r.get(5, None), Some(vec![5, 6, 7]));
        r.append([(8, 80, 10)]);
        assert_eq!(r.get(7, None), Some(vec![7, 80]));
        // An append that does not follow starts afresh (a snapshot installed, say).
        r.append([(20, 20, 10)]);
        assert_eq!(r.get(8, None), None);
        assert_eq!(r.get(20, None), Some(vec![20]));
        r.purge_upto(20);
        assert_eq!(r.get(20, None), None);
        r.append([(21, 21, 10)]);
        r.truncate_from(3);
        assert_eq!(r.get(21, None), None);
    }

    #[test]
    fn recent_entries_stay_within_their_bounds() {
        let mut r = Recent::new();
        r.append((1..=100).map(|i| (i, i, super::RECENT_MAX_BYTES / 10)));
        assert_eq!(r.entries.len(), 10);
        assert_eq!(r.get(91, None).map(|v| v.len()), Some(10));
        assert_eq!(r.get(90, None), None);
        // One entry over the bound alone is still held: it is the last.
        r.append([(101, 101, super::RECENT_MAX_BYTES * 2)]);
        assert_eq!(r.get(101, None), Some(vec![101]));
        r.append((102..=20_000).map(|i| (i, i, 1)));
        assert_eq!(r.entries.len(), super::RECENT_MAX_ENTRIES);
    }

    #[test]
    fn bounds_of_every_range_kind() {
        assert_eq!(bounds(&(3..7)), (3, Some(7)));
        assert_eq!(bounds(&(3..=7)), (3, Some(8)));
        assert_eq!(bounds(&(3..)), (3, None));
        assert_eq!(bounds(&(..=u64::MAX)), (0, None));
        assert_eq!(bounds(&(..)), (0, None));
    }
}
