//! openraft's `RaftStateMachine` over [`State`] and the `sm` column family.

use std::io;
use std::io::Cursor;
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

    fn write_snapshot_file(&self, file: &SnapshotFile) -> io::Result<()> {
        let bytes = codec::encode(file)?;
        let tmp = self.snapshot_path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        // Rename is atomic: a crash leaves the old snapshot or the new one, never half of one.
        std::fs::rename(&tmp, &self.snapshot_path)?;
        if let Some(dir) = self.snapshot_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let db = self.db.clone();
        // Read from a RocksDB snapshot off the async runtime: a large state must not stall QUIC.
        let (items, meta) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let items = db.sm_export()?;
            let meta: Meta = match items.iter().find(|(k, _)| k.as_slice() == META_KEY) {
                Some((_, v)) => codec::decode(v)?,
                None => Meta::default(),
            };
            Ok((codec::encode(&items)?, meta))
        })
        .await
        .map_err(io::Error::other)??;
        let snap_meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: meta.last_applied,
            last_membership: meta.last_membership,
        };
        let file = SnapshotFile {
            meta: snap_meta.clone(),
            data: items,
        };
        self.write_snapshot_file(&file)?;
        tracing::info!(last_log_id = ?snap_meta.last_log_id, bytes = file.data.len(), "snapshot built");
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta: snap_meta,
            snapshot: Cursor::new(file.data),
        })
    }
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
        let items: Vec<(Vec<u8>, Vec<u8>)> = codec::decode(&data)?;
        let db = self.db.clone();
        let new_state = tokio::task::spawn_blocking(move || -> io::Result<State> {
            db.sm_replace(items)?;
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
        *self.state.write().expect("state lock") = new_state;
        self.applied
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        let _ = self.live.send(LiveBatch::Reset);
        self.write_snapshot_file(&SnapshotFile {
            meta: meta.clone(),
            data,
        })?;
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
