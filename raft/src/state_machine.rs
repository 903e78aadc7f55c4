//! openraft's `RaftStateMachine` over [`State`] and the `sm` column family.

use std::io;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use storage::{Db, SmBatch};

use crate::codec;
use crate::command::Response;
use crate::snapshot::{varint_len, write_varint};
use crate::state::{LiveEvent, Meta, State, META_KEY};
use crate::types::{SnapshotData, TypeConfig};

/// The state machine handed to openraft; clones share the state.
#[derive(Clone)]
pub struct StateMachine {
    db: Db,
    state: Arc<RwLock<State>>,
    snapshot_path: PathBuf,
    /// Held while a snapshot is built or installed: openraft builds one in a task of its own,
    /// which may run while a snapshot is installed in batches, and must then neither read a
    /// half-installed state nor rename its file over the one being installed.
    snapshot_lock: Arc<std::sync::Mutex<()>>,
    live: tokio::sync::broadcast::Sender<LiveBatch>,
    /// The index of the last entry applied (or of the snapshot installed), sent once its
    /// batch is in the state and written.
    applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// The service registry's revision (services, instances, routes), sent when an applied
    /// batch or an installed snapshot changes it.
    registry: Arc<tokio::sync::watch::Sender<u64>>,
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

impl StateMachine {
    /// Loads the state from `db`; snapshots are kept under `dir`. An install of a snapshot
    /// that a stop cut short is done again first, from the snapshot file it left.
    pub fn open(db: Db, dir: &Path) -> storage::Result<Self> {
        std::fs::create_dir_all(dir)?;
        crate::snapshot::remove_unfinished(dir)?;
        let snapshot_path = dir.join("snapshot.bin");
        if db.sm_replace_pending()? {
            tracing::warn!("a snapshot install was cut short; installing it again");
            let Some((_, data)) = SnapshotData::open(&snapshot_path)? else {
                return Err(storage::Error::Corrupt(
                    "a snapshot install was cut short and its snapshot file is gone".into(),
                ));
            };
            load_pairs(&db, &data)?;
        }
        let state = State::load(&db)?;
        let applied = state.meta.last_applied.map_or(0, |l| l.index);
        let registry = state.registry_revision();
        Ok(Self {
            applied: Arc::new(tokio::sync::watch::channel(applied).0),
            registry: Arc::new(tokio::sync::watch::channel(registry).0),
            db,
            state: Arc::new(RwLock::new(state)),
            snapshot_path,
            snapshot_lock: Arc::default(),
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

    /// The service registry's revision, as it moves: what follows the registry waits on it
    /// without a wake-up per applied batch (see [`StateMachine::applied`]).
    pub fn registry(&self) -> tokio::sync::watch::Receiver<u64> {
        self.registry.subscribe()
    }

    /// Sends the registry's `revision` if it moved.
    fn registry_is(&self, revision: u64) {
        self.registry.send_if_modified(|r| {
            let moved = *r != revision;
            *r = revision;
            moved
        });
    }

    /// The directory snapshots are kept in.
    pub fn snapshot_dir(&self) -> &Path {
        self.snapshot_path
            .parent()
            .expect("the snapshot file is in a directory")
    }

    /// The shared in-memory state, for reads. Hold the lock only for short, non-async sections.
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    /// Streams the state machine from one RocksDB snapshot into the snapshot file, so a
    /// large state is never held in memory, in the layout of [`crate::snapshot`].
    ///
    /// The snapshot answered reads its data from that file.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let db = self.db.clone();
        let path = self.snapshot_path.clone();
        // Off the async runtime: a large state must not stall QUIC.
        let lock = self.snapshot_lock.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (meta, bytes) = write_snapshot_stream(&db, &path)?;
            tracing::info!(last_log_id = ?meta.last_log_id, bytes, "snapshot built");
            let (_, data) = SnapshotData::open(&path)?
                .ok_or_else(|| io::Error::other("the snapshot file just built is gone"))?;
            Ok::<_, io::Error>((meta, data))
        })
        .await
        .map_err(io::Error::other)??;
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: data,
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
    crate::snapshot::write_snapshot_file(path, &snap_meta, data_len, |out| {
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
        let (live, registry) = {
            let mut st = self.state.write().expect("state lock");
            st.persist_meta(&mut batch);
            (st.take_live(), st.registry_revision())
        };
        // One atomic batch: the changes and `last_applied` land together or not at all.
        self.db.sm_write(batch)?;
        self.state.write().expect("state lock").written();
        self.registry_is(registry);
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

    /// Installs a snapshot from its file: the file becomes this node's snapshot (a received
    /// one is renamed, not copied), then its pairs replace the state machine in bounded
    /// batches, read one at a time, so a state larger than memory installs. A stop in between
    /// leaves the install to be done again at start-up ([`StateMachine::open`]).
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let db = self.db.clone();
        let path = self.snapshot_path.clone();
        let meta_copy = meta.clone();
        let lock = self.snapshot_lock.clone();
        let new_state = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
            let data = snapshot.keep_as(&path, &meta_copy)?;
            load_pairs(&db, &data)?;
            Ok(State::load(&db)?)
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
        let registry = new_state.registry_revision();
        *self.state.write().expect("state lock") = new_state;
        self.registry_is(registry);
        self.applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        let _ = self.live.send(LiveBatch::Reset);
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        let path = self.snapshot_path.clone();
        let opened = tokio::task::spawn_blocking(move || SnapshotData::open(&path))
            .await
            .map_err(io::Error::other)??;
        Ok(
            opened
                .map(|(meta, snapshot)| SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot }),
        )
    }
}

/// Replaces the state machine with a snapshot's pairs, in batches of 4 MiB. Blocking.
fn load_pairs(db: &Db, data: &SnapshotData) -> io::Result<()> {
    const BATCH_BYTES: usize = 4 << 20;
    let pairs = data.pairs()?.map(|p| p.map_err(storage::Error::from));
    db.sm_replace_streamed(pairs, BATCH_BYTES)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::vote::RaftLeaderIdExt;

    use serde::Serialize;

    use super::*;
    use crate::command::{Command, KvCmd, Request};

    /// The layout of a snapshot file, encoded whole.
    #[derive(Serialize)]
    struct SnapshotFile {
        meta: SnapshotMetaOf<TypeConfig>,
        data: Vec<u8>,
    }

    /// The snapshot written in a stream is, byte for byte, the file encoded whole, reads back
    /// with every entry of the state machine, installs from its file on another node, and an
    /// install cut short is done again at start-up.
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
        let read: Vec<(Vec<u8>, Vec<u8>)> = current
            .snapshot
            .pairs()
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap();
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

        // An install cut short (here by a read error halfway) leaves the state machine half
        // replaced; the node installs the snapshot again from its file when it starts.
        let half = items.len() / 2;
        let cut = items[..half]
            .iter()
            .cloned()
            .map(Ok)
            .chain([Err(storage::Error::Corrupt("cut".into()))]);
        assert!(other_db.sm_replace_streamed(cut, 1).is_err());
        assert!(other_db.sm_replace_pending().unwrap());
        assert_eq!(other_db.sm_export().unwrap().len(), half);
        drop(follower);
        let restarted = StateMachine::open(other_db.clone(), &other.path().join("snap")).unwrap();
        assert!(!other_db.sm_replace_pending().unwrap());
        assert_eq!(other_db.sm_export().unwrap(), items);
        assert_eq!(*restarted.applied().borrow(), 300);
    }

    /// The registry's watch moves when an applied batch changes the registry, and stays put
    /// for every other write (what follows the registry is not woken by them).
    #[tokio::test]
    async fn the_registry_watch_moves_with_the_registry_only() {
        use openraft::entry::RaftEntry as _;

        use crate::command::ServiceCmd;
        use crate::state::InstanceSpec;

        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(db, &dir.path().join("snap")).unwrap();
        let mut registry = sm.registry();
        let start = *registry.borrow_and_update();
        let mut index = 0;
        let mut apply = |command: Command| {
            index += 1;
            let log_id = crate::network::LogId::new(
                openraft::alias::LeaderIdOf::<TypeConfig>::new_committed(1, 1),
                index,
            );
            let request = Request {
                stamp_ms: 1,
                idempotency_key: None,
                command,
            };
            let entry = openraft::alias::EntryOf::<TypeConfig>::new_normal(log_id, request);
            futures::stream::iter([Ok((entry, None))])
        };
        let put = KvCmd::Put {
            key: "k".into(),
            value: b"v".to_vec(),
            if_revision: None,
            ttl_ms: None,
        };
        sm.apply(apply(Command::Kv(put))).await.unwrap();
        assert!(!registry.has_changed().unwrap(), "a key-value put moved it");

        let register = ServiceCmd::Register(InstanceSpec {
            service: "web".into(),
            id: "w1".into(),
            address: "127.0.0.1".into(),
            port: 8080,
            tags: vec![],
            meta: Default::default(),
            weight: 1,
            check: None,
            deregister_critical_after_ms: 0,
        });
        sm.apply(apply(Command::Service(register))).await.unwrap();
        assert!(
            registry.has_changed().unwrap(),
            "a registration did not move it"
        );
        let now = *registry.borrow_and_update();
        assert!(now > start);
        assert_eq!(now, sm.state().read().unwrap().registry_revision());
    }
}
