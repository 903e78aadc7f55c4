//! openraft's `RaftStateMachine` over [`State`] and the `sm` column family.

use std::io;
use std::io::Cursor;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use crate::codec;
use crate::command::Response;
use crate::state::{LiveEvent, Meta, State, META_KEY};
use crate::types::{SnapshotData, TypeConfig};

/// The state machine handed to openraft; clones share the state.
#[derive(Clone)]
pub struct StateMachine {
    db: Db,
    state: Arc<RwLock<State>>,
    snapshot_path: PathBuf,
    live: tokio::sync::broadcast::Sender<LiveBatch>,
    /// The index of the last entry applied (or of the snapshot installed), sent once its
    /// batch is in the state and written.
    applied: Arc<tokio::sync::watch::Sender<u64>>,
}

/// What the state machine tells live subscribers after each applied batch. Each node sends
/// what it applies itself, so subscribers of every node are served without the leader.
#[derive(Clone, Debug)]
pub enum LiveBatch {
    /// The channel events and key-value changes of one applied batch, in apply order.
    Events(Arc<Vec<LiveEvent>>),
    /// The state was replaced by a snapshot: events in between were never sent, and
    /// subscribers re-read what they may have missed from the state.
    Reset,
}

/// Applied batches buffered for slow receivers; one that falls further behind is told it
/// lagged and catches up from the state.
pub const LIVE_BATCHES_BUFFERED: usize = 4096;

/// A snapshot as stored on disk and sent to followers.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<TypeConfig>,
    /// The encoded `sm` column family: `Vec<(key, value)>`.
    data: Vec<u8>,
}

impl StateMachine {
    /// Loads the state from `db`; snapshots are kept under `dir`.
    pub fn open(db: Db, dir: &Path) -> storage::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let state = State::load(&db)?;
        let applied = state.meta.last_applied.map_or(0, |l| l.index);
        Ok(Self {
            applied: Arc::new(tokio::sync::watch::channel(applied).0),
            db,
            state: Arc::new(RwLock::new(state)),
            snapshot_path: dir.join("snapshot.bin"),
            live: tokio::sync::broadcast::channel(LIVE_BATCHES_BUFFERED).0,
        })
    }

    /// Receives every applied batch's live events from now on.
    pub fn subscribe_live(&self) -> tokio::sync::broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }

    /// A handle to subscribe with later (see [`StateMachine::subscribe_live`]).
    pub fn live_sender(&self) -> tokio::sync::broadcast::Sender<LiveBatch> {
        self.live.clone()
    }

    /// The index of the last entry applied to the state, as it moves. Waiting on it costs a
    /// wake-up per applied batch, where Raft's figures change with every replication step too.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The shared in-memory state, for reads. Hold the lock only for short, non-async sections.
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    /// Streams the state machine from one RocksDB snapshot into the snapshot file, so a
    /// large state is never held in memory. The bytes are those of [`SnapshotFile`] encoded
    /// whole, so the file reads back as before.
    ///
    /// The snapshot answered carries the meta and no bytes: they are in the file, which is
    /// what a follower is sent ([`RaftStateMachine::get_current_snapshot`]); openraft takes
    /// only the meta of a snapshot it asked to build.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let db = self.db.clone();
        let path = self.snapshot_path.clone();
        // Off the async runtime: a large state must not stall QUIC.
        let (meta, bytes) = tokio::task::spawn_blocking(move || write_snapshot_stream(&db, &path))
            .await
            .map_err(io::Error::other)??;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes, "snapshot built");
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: Cursor::new(Vec::new()),
        })
    }
}

/// Writes the snapshot file from one view of the state machine in two passes (the first
/// measures, the second writes), synced and renamed into place; answers its meta and the
/// data's length.
fn write_snapshot_stream(db: &Db, path: &Path) -> io::Result<(SnapshotMetaOf<TypeConfig>, u64)> {
    let view = db.sm_view();
    // Pass 1: how many entries and bytes, and the applied point they cover.
    let (mut count, mut body) = (0u64, 0u64);
    let mut meta = Meta::default();
    let mut failed = None;
    view.each(|k, v| {
        count += 1;
        body += varint_len(k.len() as u64) + k.len() as u64;
        body += varint_len(v.len() as u64) + v.len() as u64;
        if k == META_KEY {
            match codec::decode(v) {
                Ok(m) => meta = m,
                Err(e) => failed = Some(e),
            }
        }
        true
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let snap_meta = SnapshotMetaOf::<TypeConfig> {
        last_log_id: meta.last_applied,
        last_membership: meta.last_membership,
    };
    // `data` is `codec::encode(&Vec<(key, value)>)`: the format byte, the count, the pairs.
    let data_len = 1 + varint_len(count) + body;
    write_snapshot_file(path, &snap_meta, data_len, |out| {
        out.write_all(&[codec::FORMAT_VERSION])?;
        write_varint(out, count)?;
        // Pass 2: the pairs, from the same view.
        let (mut written, mut error) = (0u64, None);
        view.each(|k, v| {
            let pair = write_varint(out, k.len() as u64)
                .and_then(|()| out.write_all(k))
                .and_then(|()| write_varint(out, v.len() as u64))
                .and_then(|()| out.write_all(v));
            written += 1;
            match pair {
                Ok(()) => true,
                Err(e) => {
                    error = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        if written != count {
            return Err(io::Error::other(format!(
                "the state machine view changed between passes ({count} then {written} entries)"
            )));
        }
        Ok(())
    })?;
    Ok((snap_meta, data_len))
}

/// Writes the snapshot file: the bytes of [`SnapshotFile`] encoded whole, its data (of
/// `data_len` bytes) written by `write_data`, into a temp file that is synced and renamed
/// into place (a crash leaves the old snapshot or the new one, never half of one).
fn write_snapshot_file(
    path: &Path,
    meta: &SnapshotMetaOf<TypeConfig>,
    data_len: u64,
    write_data: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    out.write_all(&[codec::FORMAT_VERSION])?;
    out.write_all(&postcard::to_allocvec(meta).map_err(io::Error::other)?)?;
    write_varint(&mut out, data_len)?;
    write_data(&mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `n` as postcard writes a length (a varint), into `buf`.
fn varint(n: u64, buf: &mut [u8; 10]) -> &[u8] {
    postcard::to_slice(&n, buf).expect("a u64 varint fits in 10 bytes")
}

fn varint_len(n: u64) -> u64 {
    varint(n, &mut [0; 10]).len() as u64
}

fn write_varint(out: &mut impl io::Write, n: u64) -> io::Result<()> {
    out.write_all(varint(n, &mut [0; 10]))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let st = self.state.read().expect("state lock");
        Ok((st.meta.last_applied, st.meta.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = SmBatch::default();
        let mut responses = Vec::new();
        // Live events are recorded only while someone on this node listens (values are not
        // copied for nobody). A listener that arrives during an unrecorded batch may have read
        // the state before the batch's later entries: it is told to re-read (`Reset`).
        let recording = self.live.receiver_count() > 0;
        self.state
            .write()
            .expect("state lock")
            .set_emit_live(recording);
        let mut last = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            last = Some(entry.log_id.index);
            let mut st = self.state.write().expect("state lock");
            st.meta.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Normal(ref req) => st.apply(req, &mut batch),
                EntryPayload::Membership(ref m) => {
                    st.meta.last_membership =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                    Response::Done
                }
            };
            if let Some(r) = responder {
                responses.push((r, response));
            }
        }
        let live = {
            let mut st = self.state.write().expect("state lock");
            st.persist_meta(&mut batch);
            st.take_live()
        };
        // One atomic batch: the changes and `last_applied` land together or not at all.
        self.db.sm_write(batch)?;
        self.state.write().expect("state lock").written();
        if !live.is_empty() {
            // No receivers is not an error: everyone may have left meanwhile.
            let _ = self.live.send(LiveBatch::Events(Arc::new(live)));
        } else if !recording && self.live.receiver_count() > 0 {
            let _ = self.live.send(LiveBatch::Reset);
        }
        if let Some(index) = last {
            self.applied.send_replace(index);
        }
        for (r, resp) in responses {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let db = self.db.clone();
        let (new_state, data) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            {
                // Borrowed from the received bytes, not copied out of them.
                let items: Vec<(&[u8], &[u8])> = codec::decode_borrowed(&data)?;
                db.sm_replace(items)?;
            }
            Ok((State::load(&db)?, data))
        })
        .await
        .map_err(io::Error::other)??;
        if new_state.meta.last_applied != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot data is at {:?}, its meta says {:?}",
                    new_state.meta.last_applied, meta.last_log_id
                ),
            ));
        }
        *self.state.write().expect("state lock") = new_state;
        self.applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        let _ = self.live.send(LiveBatch::Reset);
        let path = self.snapshot_path.clone();
        let meta_copy = meta.clone();
        tokio::task::spawn_blocking(move || {
            write_snapshot_file(&path, &meta_copy, data.len() as u64, |out| {
                out.write_all(&data)
            })
        })
        .await
        .map_err(io::Error::other)??;
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        let bytes = match std::fs::read(&self.snapshot_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file: SnapshotFile = codec::decode(&bytes)?;
        Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
            meta: file.meta,
            snapshot: Cursor::new(file.data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::command::{Command, KvCmd, Request};

    /// The snapshot written in a stream is, byte for byte, the file encoded whole, and reads
    /// back with every entry of the state machine.
    #[tokio::test]
    async fn a_streamed_snapshot_is_the_file_encoded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(db.clone(), &dir.path().join("snap")).unwrap();
        {
            let state = sm.state();
            let mut st = state.write().unwrap();
            let mut batch = SmBatch::default();
            for i in 0..300u32 {
                let put = KvCmd::Put {
                    key: format!("k{i}"),
                    // Values across the varint boundaries (127, 16,383 bytes).
                    value: vec![i as u8; (i as usize * 97) % 20_000],
                    if_revision: None,
                    ttl_ms: None,
                };
                st.apply(
                    &Request {
                        stamp_ms: 1,
                        idempotency_key: None,
                        command: Command::Kv(put),
                    },
                    &mut batch,
                );
            }
            st.meta.last_applied = Some(crate::network::LogId::new(
                openraft::alias::LeaderIdOf::<TypeConfig>::new_committed(1, 1),
                300,
            ));
            st.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
        }
        let built = sm.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(300));

        let items = db.sm_export().unwrap();
        let whole = codec::encode(&SnapshotFile {
            meta: built.meta.clone(),
            data: codec::encode(&items).unwrap(),
        })
        .unwrap();
        let streamed = std::fs::read(dir.path().join("snap").join("snapshot.bin")).unwrap();
        assert_eq!(streamed.len(), whole.len());
        assert!(
            streamed == whole,
            "the streamed file differs from the whole encoding"
        );

        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        let read: Vec<(Vec<u8>, Vec<u8>)> = codec::decode(current.snapshot.get_ref()).unwrap();
        assert_eq!(read, items);

        // Installed on another node: the same entries, and the same file to send on.
        let other = tempfile::tempdir().unwrap();
        let other_db = Db::open(&other.path().join("db")).unwrap();
        let mut follower =
            StateMachine::open(other_db.clone(), &other.path().join("snap")).unwrap();
        follower
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();
        assert_eq!(other_db.sm_export().unwrap(), items);
        let installed = std::fs::read(other.path().join("snap").join("snapshot.bin")).unwrap();
        assert!(
            installed == whole,
            "the installed file differs from the whole encoding"
        );
        assert_eq!(*follower.applied().borrow(), 300);
    }
}
