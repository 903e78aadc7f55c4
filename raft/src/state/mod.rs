//! The replicated state and its deterministic apply function.
//!
//! `State::apply` is a pure function of (state, request): it reads no clock, draws no random
//! numbers and iterates only ordered maps, so every replica that applies the same log holds the
//! same state. Time comes from the log: each request carries the proposer's wall clock and the
//! replicated clock is `now = max(previous now, stamp)`.
//!
//! The state is kept in memory (reads never touch disk) and written through to the `sm`
//! column family; `load` rebuilds it at start-up.
//!
//! # Layout
//! - [`kv`]: key-value entries, revisions, TTL.
//! - [`locks`]: leases, waiters and fences.
//! - [`sessions`]: sessions with sliding expiry.
//! - [`cache`]: the bounded cache with tags.
//! - [`queues`]: job queues with leases, retries, dead letters and cron schedules.
//! - [`channels`]: channel histories with offsets and retention, and presence with node leases.
//! - [`security`]: created join tokens and removed node ids.
//!
//! When enabled ([`State::set_emit_live`]), apply also records [`LiveEvent`]s (channel events
//! and key-value changes) that the state machine hands to subscribers after each batch.
//!
//! Key layout in the `sm` column family:
//! - `m:state` → [`Meta`]; `m:locks` → the last fence; `m:cache` → cache counters;
//!   `m:security` → [`Security`] (join tokens, removed nodes)
//!   `m:revoked-tokens` → revoked join tokens (digest → when), part of [`Security`]
//! - `k:<key>` → [`KvEntry`], `l:<name>` → [`LockEntry`], `s:<id>` → [`SessionEntry`],
//!   `c:<key>` → [`CacheEntry`]
//! - `h:<revision BE><key>` → a key-value history event; `m:kvhist` → the compaction point
//! - `i:<idempotency key>` → [`IdemRecord`]

mod cache;
mod channels;
mod kv;
mod locks;
mod queues;
mod security;
mod sessions;

use std::collections::{BTreeMap, BTreeSet};

use openraft::alias::{LogIdOf, StoredMembershipOf};
use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

pub use cache::{CacheCounts, CacheEntry};
pub use channels::{ChannelEvent, History, Presence, PRESENCE_PER_CHANNEL_MAX};
pub use kv::{Compacted, KvEntry, KvEvent, KvEventKind, COMPACT_KEY};
pub use locks::{Holder, LockEntry, Waiter, MAX_WAITERS_PER_LOCK};
pub use queues::{
    next_fire_ms, Job, JobState, QueueStats, Schedule, BACKOFF_MAX_MS, CRON_CATCH_UP_MAX,
};
pub use security::{token_id, Security, EXPIRED_TOKEN_KEPT_MS, REVOKED_TOKENS_KEY, SECURITY_KEY};
pub use sessions::SessionEntry;

use crate::codec;
use crate::command::{Command, Compare, Request, Response, Txn};
use crate::types::TypeConfig;

/// Where [`Meta`] is stored in the `sm` column family.
pub const META_KEY: &[u8] = b"m:state";
const IDEM_PREFIX: &[u8] = b"i:";

/// How long an `Idempotency-Key` is remembered, on the replicated clock.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Scalars of the state machine, persisted together with every applied batch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// The replicated clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// The global revision: incremented by every key-value change.
    pub revision: u64,
    /// The next node id to hand out (ids are never reused).
    pub next_node_id: u64,
    pub cluster_id: Option<String>,
    pub join_token_sha256: Option<String>,
    pub last_applied: Option<LogIdOf<TypeConfig>>,
    pub last_membership: StoredMembershipOf<TypeConfig>,
}

/// The remembered result of a write that carried an `Idempotency-Key`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdemRecord {
    pub expires_at_ms: u64,
    pub response: Response,
}

/// The whole replicated state, in memory.
#[derive(Default, Debug)]
pub struct State {
    pub meta: Meta,
    kv: kv::Kv,
    locks: locks::Locks,
    sessions: sessions::Sessions,
    cache: cache::Cache,
    queues: queues::Queues,
    /// Join tokens and removed nodes.
    pub security: Security,
    channels: channels::Channels,
    idem: BTreeMap<String, IdemRecord>,
    idem_ttl: BTreeSet<(u64, String)>,
    /// Live events of the batch being applied; `None` while nobody collects them.
    live: Option<Vec<LiveEvent>>,
}

/// A change that live subscribers are told about, recorded by apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveEvent {
    Channel {
        channel: String,
        event: ChannelEvent,
    },
    Kv(KvEvent),
}

fn prefixed(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key.as_bytes());
    k
}

fn unprefixed(prefix: &[u8], key: &[u8]) -> storage::Result<String> {
    String::from_utf8(key[prefix.len()..].to_vec())
        .map_err(|_| storage::Error::Corrupt("state key is not UTF-8".into()))
}

impl State {
    /// Rebuilds the in-memory state from the `sm` column family.
    pub fn load(db: &Db) -> storage::Result<State> {
        let mut state = State::default();
        if let Some(bytes) = db.sm_get(META_KEY)? {
            state.meta = codec::decode(&bytes)?;
        }
        state.kv = kv::Kv::load(db)?;
        state.locks = locks::Locks::load(db)?;
        state.sessions = sessions::Sessions::load(db)?;
        state.cache = cache::Cache::load(db)?;
        state.queues = queues::Queues::load(db, state.meta.now_ms)?;
        state.security = Security::load(db)?;
        state.channels = channels::Channels::load(db)?;
        for (k, v) in db.sm_scan_prefix(IDEM_PREFIX)? {
            let key = unprefixed(IDEM_PREFIX, &k)?;
            let rec: IdemRecord = codec::decode(&v)?;
            state.idem_ttl.insert((rec.expires_at_ms, key.clone()));
            state.idem.insert(key, rec);
        }
        Ok(state)
    }

    /// Writes the scalars into `batch`; called once per applied batch.
    pub fn persist_meta(&self, batch: &mut SmBatch) {
        batch.put(
            META_KEY.to_vec(),
            codec::encode(&self.meta).expect("meta encodes"),
        );
    }

    /// Starts (or stops) recording [`LiveEvent`]s during apply; see [`State::take_live`].
    pub fn set_emit_live(&mut self, on: bool) {
        if on != self.live.is_some() {
            self.live = on.then(Vec::new);
        }
    }

    /// The live events recorded since the last call.
    pub fn take_live(&mut self) -> Vec<LiveEvent> {
        self.live.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn emit(&mut self, event: impl FnOnce() -> LiveEvent) {
        if let Some(live) = &mut self.live {
            live.push(event());
        }
    }

    /// Applies one request and records its writes in `batch`.
    pub fn apply(&mut self, req: &Request, batch: &mut SmBatch) -> Response {
        self.meta.now_ms = self.meta.now_ms.max(req.stamp_ms);
        self.expire(batch);

        if let Some(ikey) = &req.idempotency_key {
            if let Some(rec) = self.idem.get(ikey) {
                return rec.response.clone();
            }
        }
        let response = self.apply_command(&req.command, batch);
        if let Some(ikey) = &req.idempotency_key {
            let rec = IdemRecord {
                expires_at_ms: self.meta.now_ms.saturating_add(IDEMPOTENCY_WINDOW_MS),
                response: response.clone(),
            };
            batch.put(
                prefixed(IDEM_PREFIX, ikey),
                codec::encode(&rec).expect("record encodes"),
            );
            self.idem_ttl.insert((rec.expires_at_ms, ikey.clone()));
            self.idem.insert(ikey.clone(), rec);
        }
        response
    }

    fn apply_command(&mut self, cmd: &Command, batch: &mut SmBatch) -> Response {
        let now = self.meta.now_ms;
        match cmd {
            Command::InitCluster {
                cluster_id,
                join_token_sha256,
            } => {
                if self.meta.cluster_id.is_some() {
                    return Response::Rejected("cluster already initialized".into());
                }
                self.meta.cluster_id = Some(cluster_id.clone());
                self.meta.join_token_sha256 = Some(join_token_sha256.clone());
                // The initializing node is node 1.
                self.meta.next_node_id = self.meta.next_node_id.max(2);
                Response::Done
            }
            Command::AllocateNodeId => {
                let id = self.meta.next_node_id.max(2);
                self.meta.next_node_id = id + 1;
                Response::NodeId(id)
            }
            Command::Put {
                key, if_revision, ..
            }
            | Command::Delete { key, if_revision } => {
                let current = self.kv.revision_of(key);
                if let Some(expected) = if_revision {
                    if *expected != current {
                        return Response::Conflict {
                            current_revision: current,
                        };
                    }
                }
                let revision = self.meta.revision + 1;
                let resp = self.write_op(cmd, revision, batch);
                if let Response::Put { .. } | Response::Delete { deleted: true, .. } = resp {
                    self.meta.revision = revision;
                }
                resp
            }
            Command::Tick => Response::Done,
            Command::LockAcquire {
                name,
                owner,
                ttl_ms,
                wait,
            } => self
                .locks
                .acquire(name, owner, *ttl_ms, wait.as_ref(), now, batch),
            Command::LockCancelWait { name, waiter_id } => {
                self.locks.cancel_wait(name, waiter_id, now, batch)
            }
            Command::LockRenew {
                name,
                fence,
                ttl_ms,
            } => self.locks.renew(name, *fence, *ttl_ms, now, batch),
            Command::LockRelease { name, fence } => self.locks.release(name, *fence, now, batch),
            Command::Fenced {
                lock,
                fence,
                command,
            } => match self.locks.current_fence(lock) {
                Some(f) if f == *fence => self.apply_command(command, batch),
                current => Response::StaleFence { current },
            },
            Command::SessionCreate {
                id,
                user,
                data,
                ttl_ms,
            } => self.sessions.create(id, user, data, *ttl_ms, now, batch),
            Command::SessionTouch { id } => self.sessions.touch(id, None, now, batch),
            Command::SessionUpdate { id, patch } => {
                self.sessions.touch(id, Some(patch), now, batch)
            }
            Command::SessionDelete { id } => self.sessions.delete(id, batch),
            Command::SessionDeleteUser { user } => self.sessions.delete_user(user, batch),
            Command::CacheSet { .. }
            | Command::CacheDelete { .. }
            | Command::CacheInvalidate { .. } => self.write_op(cmd, self.meta.revision, batch),
            Command::Txn(txn) => self.apply_txn(txn, batch),
            Command::QueueEnqueue { .. } => self.write_op(cmd, self.meta.revision, batch),
            Command::QueueClaim {
                queue,
                worker,
                max,
                visibility_ms,
            } => self
                .queues
                .claim(queue, worker, *max, *visibility_ms, now, batch),
            Command::JobAck { id, lease } => self.queues.ack(*id, *lease, batch),
            Command::JobNack {
                id,
                lease,
                error,
                retry_in_ms,
            } => self
                .queues
                .nack(*id, *lease, error.as_deref(), *retry_in_ms, now, batch),
            Command::JobExtend {
                id,
                lease,
                visibility_ms,
            } => self.queues.extend(*id, *lease, *visibility_ms, now, batch),
            Command::QueueReplay { queue, ids } => {
                self.queues.replay(queue, ids.as_deref(), now, batch)
            }
            Command::ScheduleSet { queue, name, spec } => {
                self.queues.set_schedule(queue, name, spec, now, batch)
            }
            Command::ScheduleDelete { queue, name } => {
                self.queues.delete_schedule(queue, name, batch)
            }
            Command::ChannelPublish { .. } => self.write_op(cmd, self.meta.revision, batch),
            Command::PresenceJoin {
                channel,
                client_id,
                user,
                node_id,
                incarnation,
                lease_ms,
            } => self.channels.join(
                channel,
                client_id,
                user,
                *node_id,
                *incarnation,
                *lease_ms,
                now,
                batch,
            ),
            Command::PresenceLeave {
                channel,
                client_id,
                node_id,
            } => self.channels.leave(channel, client_id, *node_id, batch),
            Command::PresenceHeartbeat {
                node_id,
                incarnation,
                lease_ms,
            } => self
                .channels
                .heartbeat(*node_id, *incarnation, *lease_ms, now, batch),
            Command::KvCompact { revision } => Response::Compacted {
                compact_revision: self.kv.compact(*revision, self.meta.revision, batch),
            },
            Command::JoinTokenCreate {
                token_sha256,
                expires_at_ms,
            } => self
                .security
                .create_token(token_sha256, *expires_at_ms, now, batch),
            Command::NodeRemoved { id } => self.security.node_removed(*id, batch),
            Command::JoinTokenRevoke { token_id } => {
                let founding = self.meta.join_token_sha256.clone();
                match self
                    .security
                    .revoke_token(token_id, founding.as_deref(), now, batch)
                {
                    Some(security::Revoked::Founding) => {
                        // The meta is persisted with every applied batch.
                        self.meta.join_token_sha256 = None;
                        Response::Done
                    }
                    Some(security::Revoked::Created) => Response::Done,
                    None => Response::NotFound,
                }
            }
        }
    }

    /// Applies an unconditional write (the ops a transaction may hold); key-value changes
    /// take `revision`, which the caller commits to `meta.revision` if anything changed.
    fn write_op(&mut self, cmd: &Command, revision: u64, batch: &mut SmBatch) -> Response {
        let now = self.meta.now_ms;
        match cmd {
            Command::Put {
                key, value, ttl_ms, ..
            } => {
                let expires = ttl_ms.map(|t| now.saturating_add(t));
                self.kv.put(key, value, expires, revision, batch);
                self.emit(|| {
                    LiveEvent::Kv(KvEvent {
                        revision,
                        key: key.clone(),
                        kind: KvEventKind::Put,
                        value: Some(value.clone()),
                    })
                });
                Response::Put { revision }
            }
            Command::Delete { key, .. } => {
                if self.kv.remove(key, revision, batch) {
                    self.emit(|| {
                        LiveEvent::Kv(KvEvent {
                            revision,
                            key: key.clone(),
                            kind: KvEventKind::Delete,
                            value: None,
                        })
                    });
                    Response::Delete {
                        revision,
                        deleted: true,
                    }
                } else {
                    Response::Delete {
                        revision: self.meta.revision,
                        deleted: false,
                    }
                }
            }
            Command::CacheSet {
                key,
                value,
                ttl_ms,
                tags,
                limits,
            } => {
                let expires = ttl_ms.map(|t| now.saturating_add(t));
                self.cache.set(key, value, expires, tags, *limits, batch)
            }
            Command::CacheDelete { key } => self.cache.delete(key, batch),
            Command::CacheInvalidate { tags } => self.cache.invalidate(tags, batch),
            Command::QueueEnqueue { queue, job } => self.queues.enqueue(queue, job, now, batch),
            Command::ChannelPublish {
                channel,
                data,
                retention,
            } => {
                let (resp, event) = self.channels.publish(channel, data, *retention, now, batch);
                self.emit(|| LiveEvent::Channel {
                    channel: channel.clone(),
                    event,
                });
                resp
            }
            other => Response::Rejected(format!("{other} is not allowed in a transaction")),
        }
    }

    fn apply_txn(&mut self, txn: &Txn, batch: &mut SmBatch) -> Response {
        let succeeded = txn.compare.iter().all(|c| match c {
            Compare::Revision { key, revision } => self.kv.revision_of(key) == *revision,
            Compare::Fence { lock, fence } => self.locks.current_fence(lock) == Some(*fence),
        });
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Checked before anything is written, so a transaction applies whole or not at all.
        if let Some(bad) = ops.iter().find(|op| !txn_op_allowed(op)) {
            return Response::Rejected(format!("{bad} is not allowed in a transaction"));
        }
        let revision = self.meta.revision + 1;
        let mut changed = false;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let r = self.write_op(op, revision, batch);
            changed |= matches!(
                r,
                Response::Put { .. } | Response::Delete { deleted: true, .. }
            );
            results.push(r);
        }
        if changed {
            self.meta.revision = revision;
        }
        Response::Txn {
            succeeded,
            revision: self.meta.revision,
            results,
        }
    }

    /// Removes everything whose deadline is at or before the replicated clock. Each expired
    /// key is a change and takes the next revision, in deadline order.
    fn expire(&mut self, batch: &mut SmBatch) {
        let now = self.meta.now_ms;
        while let Some(key) = self.kv.first_expired(now) {
            self.meta.revision += 1;
            self.kv.remove(&key, self.meta.revision, batch);
            let revision = self.meta.revision;
            self.emit(|| {
                LiveEvent::Kv(KvEvent {
                    revision,
                    key,
                    kind: KvEventKind::Delete,
                    value: None,
                })
            });
        }
        self.locks.expire(now, batch);
        self.sessions.expire(now, batch);
        self.cache.expire(now, batch);
        self.queues.expire(now, batch);
        self.channels.expire(now, batch);
        while let Some((at, key)) = self.idem_ttl.first().cloned() {
            if at > now {
                break;
            }
            self.idem_ttl.remove(&(at, key.clone()));
            self.idem.remove(&key);
            batch.delete(prefixed(IDEM_PREFIX, &key));
        }
    }

    /// The earliest deadline still pending, on the replicated clock. The leader proposes a
    /// `Tick` once its wall clock passes it.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        [
            self.kv.next_deadline(),
            self.locks.next_deadline(),
            self.sessions.next_deadline(),
            self.cache.next_deadline(),
            self.queues.next_deadline(),
            self.channels.next_deadline(),
            self.idem_ttl.first().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A key's current entry, or `None` when absent or past its deadline on the replicated
    /// clock.
    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.kv.get(key, self.meta.now_ms)
    }

    /// Up to `limit` live keys starting with `prefix` and greater than `after`, in key order;
    /// the flag says whether more remain.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(&String, &KvEntry)>, bool) {
        self.kv.list(prefix, after, limit, self.meta.now_ms)
    }

    /// Up to `limit` key-value changes under `prefix` from `from_revision` on (inclusive), in
    /// revision order; `Compacted` when that part of the history has been dropped.
    pub fn kv_events_since(
        &self,
        prefix: &str,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<KvEvent>, Compacted> {
        self.kv.events_since(prefix, from_revision, limit)
    }

    /// History at or below this revision has been compacted away (0: none yet).
    pub fn compact_revision(&self) -> u64 {
        self.kv.compact_revision()
    }

    /// Number of key-value history events kept.
    pub fn kv_history_len(&self) -> usize {
        self.kv.history_len()
    }

    /// Number of keys (including expired ones not yet removed).
    pub fn key_count(&self) -> usize {
        self.kv.len()
    }

    /// A lock's holder (if its lease has not ended) and waiters.
    pub fn lock(&self, name: &str) -> Option<&LockEntry> {
        self.locks.get(name)
    }

    /// A live session.
    pub fn session(&self, id: &str) -> Option<&SessionEntry> {
        self.sessions.get(id, self.meta.now_ms)
    }

    /// A user's live sessions, by id.
    pub fn sessions_of(&self, user: &str) -> Vec<(String, &SessionEntry)> {
        self.sessions
            .ids_of(user)
            .into_iter()
            .filter_map(|id| self.session(&id).map(|s| (id, s)))
            .collect()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A live cache entry.
    pub fn cache_get(&self, key: &str) -> Option<&CacheEntry> {
        self.cache.get(key, self.meta.now_ms)
    }

    pub fn cache_counts(&self) -> CacheCounts {
        self.cache.counts()
    }

    /// A hash of the whole cache, equal on replicas that hold the same entries.
    pub fn cache_digest(&self) -> String {
        self.cache.digest()
    }

    /// A queue's counts, or `None` for a queue that never held a job.
    pub fn queue_stats(&self, queue: &str) -> Option<QueueStats> {
        self.queues.stats(queue)
    }

    pub fn queue_names(&self) -> Vec<String> {
        self.queues.queue_names()
    }

    pub fn queue_has_ready(&self, queue: &str) -> bool {
        self.queues.has_ready(queue)
    }

    pub fn job(&self, id: u64) -> Option<&Job> {
        self.queues.job(id)
    }

    /// Up to `limit` dead jobs of `queue`, oldest first.
    pub fn dead_jobs(&self, queue: &str, limit: usize) -> Vec<(u64, &Job)> {
        self.queues.dead(queue, limit)
    }

    pub fn schedules(&self, queue: &str) -> Vec<(String, &Schedule)> {
        self.queues.schedules(queue)
    }

    /// Events of `channel` after offset `since` (at most `limit`) with the retained range;
    /// `None` for a channel never published.
    pub fn channel_history(&self, channel: &str, since: u64, limit: usize) -> Option<History> {
        self.channels.history(channel, since, limit)
    }

    /// The last offset published on `channel`, 0 when none.
    pub fn channel_latest_offset(&self, channel: &str) -> u64 {
        self.channels.latest_offset(channel)
    }

    /// Present clients of `channel`, by client id.
    pub fn presence(&self, channel: &str) -> Vec<Presence> {
        self.channels.present(channel)
    }

    /// (channels ever published, events retained across them).
    pub fn channel_counts(&self) -> (usize, usize) {
        (
            self.channels.channel_count(),
            self.channels.retained_events(),
        )
    }
}

/// The writes a transaction may hold: unconditional key-value and cache writes.
pub fn txn_op_allowed(op: &Command) -> bool {
    match op {
        Command::Put { if_revision, .. } | Command::Delete { if_revision, .. } => {
            if_revision.is_none()
        }
        Command::CacheSet { .. }
        | Command::CacheDelete { .. }
        | Command::CacheInvalidate { .. }
        | Command::QueueEnqueue { .. }
        | Command::ChannelPublish { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn req(stamp_ms: u64, command: Command) -> Request {
        Request {
            stamp_ms,
            idempotency_key: None,
            command,
        }
    }

    pub(super) fn put(
        key: &str,
        value: &str,
        if_revision: Option<u64>,
        ttl_ms: Option<u64>,
    ) -> Command {
        Command::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            if_revision,
            ttl_ms,
        }
    }

    #[test]
    fn revisions_grow_and_cas_compares_key_revision() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        assert_eq!(
            s.apply(&req(1, put("a", "1", Some(0), None)), &mut b),
            Response::Put { revision: 1 }
        );
        assert_eq!(
            s.apply(&req(2, put("b", "1", None, None)), &mut b),
            Response::Put { revision: 2 }
        );
        assert_eq!(
            s.apply(&req(3, put("a", "2", Some(0), None)), &mut b),
            Response::Conflict {
                current_revision: 1
            }
        );
        assert_eq!(
            s.apply(&req(3, put("a", "2", Some(1), None)), &mut b),
            Response::Put { revision: 3 }
        );
        assert_eq!(s.get("a").unwrap().value, b"2");
        assert_eq!(s.get("a").unwrap().create_revision, 1);
        assert_eq!(
            s.apply(
                &req(
                    4,
                    Command::Delete {
                        key: "zz".into(),
                        if_revision: None
                    }
                ),
                &mut b
            ),
            Response::Delete {
                revision: 3,
                deleted: false
            }
        );
        assert_eq!(
            s.apply(
                &req(
                    4,
                    Command::Delete {
                        key: "a".into(),
                        if_revision: Some(3)
                    }
                ),
                &mut b
            ),
            Response::Delete {
                revision: 4,
                deleted: true
            }
        );
        assert!(s.get("a").is_none());
    }

    #[test]
    fn ttl_follows_the_replicated_clock_not_the_stamps_order() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        s.apply(&req(1_000, put("t", "x", None, Some(500))), &mut b);
        // A stamp from a leader whose clock is behind never moves the clock backwards.
        s.apply(&req(900, Command::Tick), &mut b);
        assert!(s.get("t").is_some());
        assert_eq!(s.next_deadline_ms(), Some(1_500));
        s.apply(&req(1_499, Command::Tick), &mut b);
        assert!(s.get("t").is_some());
        s.apply(&req(1_500, Command::Tick), &mut b);
        assert!(s.get("t").is_none());
        assert_eq!(
            s.meta.revision, 2,
            "expiry is a change with its own revision"
        );
        assert_eq!(s.next_deadline_ms(), None);
    }

    #[test]
    fn idempotent_retry_applies_once() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        let mut r = req(10, put("k", "v", None, None));
        r.idempotency_key = Some("abc".into());
        let first = s.apply(&r, &mut b);
        let again = s.apply(&r, &mut b);
        assert_eq!(first, again);
        assert_eq!(s.meta.revision, 1);
        // After the window the key is forgotten and a new write applies.
        r.stamp_ms = 10 + IDEMPOTENCY_WINDOW_MS;
        assert_eq!(s.apply(&r, &mut b), Response::Put { revision: 2 });
    }

    #[test]
    fn list_pages_by_prefix_and_skips_expired() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        for k in ["a/1", "a/2", "a/3", "b/1"] {
            s.apply(&req(1, put(k, "v", None, None)), &mut b);
        }
        s.apply(&req(1, put("a/0", "v", None, Some(5))), &mut b);
        s.apply(&req(10, Command::Tick), &mut b);
        let (items, more) = s.list("a/", None, 2);
        assert_eq!(
            items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        assert!(more);
        let (items, more) = s.list("a/", Some("a/2"), 2);
        assert_eq!(
            items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a/3"]
        );
        assert!(!more);
    }
}

#[cfg(test)]
mod primitive_tests {
    use super::*;
    use crate::command::{CacheLimits, LockWait};

    /// Applies one command stamped `stamp_ms`, without an idempotency key.
    pub(super) fn run(s: &mut State, stamp_ms: u64, command: Command) -> Response {
        s.apply(
            &super::tests::req(stamp_ms, command),
            &mut SmBatch::default(),
        )
    }

    fn acquire(owner: &str, ttl_ms: u64, wait: Option<(&str, u64)>) -> Command {
        Command::LockAcquire {
            name: "L".into(),
            owner: owner.into(),
            ttl_ms,
            wait: wait.map(|(id, wait_ms)| LockWait {
                waiter_id: id.into(),
                wait_ms,
            }),
        }
    }

    #[test]
    fn lock_fences_grow_and_waiters_are_served_in_order() {
        let mut s = State::default();
        assert_eq!(
            run(&mut s, 100, acquire("a", 1000, None)),
            Response::LockGranted {
                fence: 1,
                ttl_ms: 1000
            }
        );
        assert_eq!(
            run(&mut s, 110, acquire("b", 500, None)),
            Response::LockHeld { holder: "a".into() }
        );
        assert_eq!(
            run(&mut s, 120, acquire("b", 500, Some(("wb", 5000)))),
            Response::LockQueued { holder: "a".into() }
        );
        assert_eq!(
            run(&mut s, 130, acquire("c", 500, Some(("wc", 5000)))),
            Response::LockQueued { holder: "a".into() }
        );
        // A stale fence cannot release or write.
        assert_eq!(
            run(
                &mut s,
                140,
                Command::LockRelease {
                    name: "L".into(),
                    fence: 7
                }
            ),
            Response::StaleFence { current: Some(1) }
        );
        assert_eq!(
            run(
                &mut s,
                150,
                Command::LockRelease {
                    name: "L".into(),
                    fence: 1
                }
            ),
            Response::Released
        );
        // Released to the first waiter in the same apply.
        let h = s.lock("L").unwrap().holder.clone().unwrap();
        assert_eq!((h.owner.as_str(), h.fence), ("b", 2));
        assert_eq!(h.waiter_id.as_deref(), Some("wb"));
        // b's lease ends on the replicated clock: c is granted with the next fence.
        assert_eq!(s.next_deadline_ms(), Some(650));
        run(&mut s, 650, Command::Tick);
        let h = s.lock("L").unwrap().holder.clone().unwrap();
        assert_eq!((h.owner.as_str(), h.fence), ("c", 3));
        // The old holder's fenced write is rejected.
        let fenced = Command::Fenced {
            lock: "L".into(),
            fence: 2,
            command: Box::new(Command::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                if_revision: None,
                ttl_ms: None,
            }),
        };
        assert_eq!(
            run(&mut s, 700, fenced),
            Response::StaleFence { current: Some(3) }
        );
        assert!(s.get("k").is_none());
        // Cancelling a wait that was granted answers the grant.
        assert_eq!(
            run(
                &mut s,
                710,
                Command::LockCancelWait {
                    name: "L".into(),
                    waiter_id: "wc".into()
                }
            ),
            Response::LockGranted {
                fence: 3,
                ttl_ms: 500
            }
        );
        // When everything has expired the lock leaves no record, but fences keep growing.
        run(&mut s, 10_000, Command::Tick);
        assert!(s.lock("L").is_none());
        assert_eq!(
            run(&mut s, 10_001, acquire("d", 10, None)),
            Response::LockGranted {
                fence: 4,
                ttl_ms: 10
            }
        );
    }

    #[test]
    fn waits_end_on_the_replicated_clock() {
        let mut s = State::default();
        run(&mut s, 0, acquire("a", 10_000, None));
        run(&mut s, 0, acquire("b", 100, Some(("wb", 300))));
        run(&mut s, 299, Command::Tick);
        assert_eq!(s.lock("L").unwrap().waiters.len(), 1);
        run(&mut s, 300, Command::Tick);
        assert!(s.lock("L").unwrap().waiters.is_empty());
        assert_eq!(
            run(
                &mut s,
                301,
                Command::LockCancelWait {
                    name: "L".into(),
                    waiter_id: "wb".into()
                }
            ),
            Response::LockHeld { holder: "a".into() }
        );
    }

    #[test]
    fn sessions_slide_and_log_out_everywhere() {
        let mut s = State::default();
        let create = |id: &str, user: &str| Command::SessionCreate {
            id: id.into(),
            user: user.into(),
            data: r#"{"a":1}"#.into(),
            ttl_ms: 1000,
        };
        run(&mut s, 0, create("s1", "u1"));
        run(&mut s, 0, create("s2", "u1"));
        run(&mut s, 0, create("s3", "u2"));
        run(&mut s, 800, Command::SessionTouch { id: "s1".into() });
        run(&mut s, 800, Command::SessionTouch { id: "s3".into() });
        run(&mut s, 1000, Command::Tick);
        assert!(s.session("s1").is_some(), "touched: expires at 1800");
        assert!(s.session("s2").is_none(), "untouched: expired at 1000");
        run(
            &mut s,
            1100,
            Command::SessionUpdate {
                id: "s1".into(),
                patch: r#"{"b":2}"#.into(),
            },
        );
        assert_eq!(s.session("s1").unwrap().data, r#"{"a":1,"b":2}"#);
        assert_eq!(s.session("s1").unwrap().expires_at_ms, 2100);
        assert_eq!(
            run(
                &mut s,
                1200,
                Command::SessionDeleteUser { user: "u1".into() }
            ),
            Response::Count(1)
        );
        assert!(s.sessions_of("u1").is_empty());
        assert_eq!(s.sessions_of("u2").len(), 1);
    }

    fn cache_set(key: &str, bytes: usize, tags: &[&str], max_entries: u64) -> Command {
        Command::CacheSet {
            key: key.into(),
            value: vec![b'x'; bytes],
            ttl_ms: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            limits: CacheLimits {
                max_entries,
                max_bytes: 100,
            },
        }
    }

    #[test]
    fn cache_evicts_oldest_writes_and_invalidates_by_tag() {
        let mut s = State::default();
        run(&mut s, 0, cache_set("a", 10, &["t1"], 3));
        run(&mut s, 0, cache_set("b", 10, &["t1", "t2"], 3));
        run(&mut s, 0, cache_set("c", 10, &[], 3));
        run(&mut s, 0, cache_set("a", 10, &["t1"], 3)); // a is now the newest write
        run(&mut s, 0, cache_set("d", 10, &["t2"], 3)); // evicts b, the oldest
        assert!(s.cache_get("b").is_none());
        assert_eq!(s.cache_counts().entries, 3);
        assert_eq!(s.cache_counts().evictions, 1);
        // By bytes: 93 more bytes push out everything older.
        run(&mut s, 0, cache_set("big", 90, &["t2"], 10));
        assert_eq!(s.cache_counts().entries, 1);
        assert!(s.cache_counts().bytes <= 100);
        run(&mut s, 0, cache_set("e", 1, &["t1"], 10));
        assert_eq!(
            run(
                &mut s,
                0,
                Command::CacheInvalidate {
                    tags: vec!["t2".into(), "t1".into()]
                }
            ),
            Response::Count(2)
        );
        assert_eq!(s.cache_counts().entries, 0);
        assert_eq!(s.cache_counts().bytes, 0);
    }

    #[test]
    fn txn_applies_one_branch_with_one_revision() {
        let mut s = State::default();
        let put = |k: &str| Command::Put {
            key: k.into(),
            value: b"v".to_vec(),
            if_revision: None,
            ttl_ms: None,
        };
        run(&mut s, 0, put("a"));
        let txn = |rev: u64| {
            Command::Txn(Txn {
                compare: vec![Compare::Revision {
                    key: "a".into(),
                    revision: rev,
                }],
                success: vec![put("x"), put("y")],
                failure: vec![put("f")],
            })
        };
        match run(&mut s, 0, txn(5)) {
            Response::Txn {
                succeeded,
                revision,
                ..
            } => assert_eq!((succeeded, revision), (false, 2)),
            other => panic!("{other:?}"),
        }
        assert!(s.get("x").is_none() && s.get("y").is_none());
        assert_eq!(s.get("f").unwrap().revision, 2);
        match run(&mut s, 0, txn(1)) {
            Response::Txn {
                succeeded,
                revision,
                ..
            } => assert_eq!((succeeded, revision), (true, 3)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.get("x").unwrap().revision, 3);
        assert_eq!(s.get("y").unwrap().revision, 3);
    }
}

#[cfg(test)]
mod queue_tests {
    use super::primitive_tests::run;
    use super::*;
    use crate::command::{Claimed, Enqueue, ScheduleSpec};

    fn enqueue(payload: &str, priority: i64, delay_ms: Option<u64>) -> Command {
        Command::QueueEnqueue {
            queue: "q".into(),
            job: Enqueue {
                payload: payload.into(),
                delay_ms,
                run_at_ms: None,
                priority,
                max_attempts: 2,
                backoff_ms: 100,
                unique_key: None,
            },
        }
    }

    fn claim(s: &mut State, now: u64, max: u32) -> Vec<Claimed> {
        match run(
            s,
            now,
            Command::QueueClaim {
                queue: "q".into(),
                worker: "w".into(),
                max,
                visibility_ms: 1000,
            },
        ) {
            Response::Claimed(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn claims_follow_priority_due_time_and_enqueue_order() {
        let mut s = State::default();
        run(&mut s, 0, enqueue("\"low\"", 0, None));
        run(&mut s, 0, enqueue("\"high\"", 5, None));
        run(&mut s, 0, enqueue("\"low2\"", 0, None));
        run(&mut s, 0, enqueue("\"later\"", 9, Some(500)));
        let got: Vec<String> = claim(&mut s, 10, 10)
            .into_iter()
            .map(|c| c.payload)
            .collect();
        assert_eq!(got, ["\"high\"", "\"low\"", "\"low2\""]);
        assert!(claim(&mut s, 499, 10).is_empty(), "not due before 500");
        assert_eq!(claim(&mut s, 500, 10)[0].payload, "\"later\"");
    }

    #[test]
    fn failures_back_off_then_die_and_replay_revives() {
        let mut s = State::default();
        run(&mut s, 0, enqueue("1", 0, None));
        let c = claim(&mut s, 0, 1).remove(0);
        assert_eq!(c.attempt, 1);
        // A stale lease cannot ack.
        assert_eq!(
            run(
                &mut s,
                1,
                Command::JobAck {
                    id: c.id,
                    lease: c.lease + 1
                }
            ),
            Response::StaleLease {
                current: Some(c.lease)
            }
        );
        run(
            &mut s,
            10,
            Command::JobNack {
                id: c.id,
                lease: c.lease,
                error: Some("boom".into()),
                retry_in_ms: None,
            },
        );
        // backoff_ms · 2^0 = 100 ms after the nack.
        assert!(claim(&mut s, 109, 1).is_empty());
        let c2 = claim(&mut s, 110, 1).remove(0);
        assert_eq!(c2.attempt, 2);
        // Visibility runs out on the second (last) attempt: dead.
        run(&mut s, 110 + 1000, Command::Tick);
        let st = s.queue_stats("q").unwrap();
        assert_eq!((st.dead, st.ready, st.in_flight), (1, 0, 0));
        assert_eq!(
            s.dead_jobs("q", 10)[0].1.last_error.as_deref(),
            Some("visibility timeout")
        );
        // The old lease is stale now.
        assert!(matches!(
            run(
                &mut s,
                1200,
                Command::JobAck {
                    id: c2.id,
                    lease: c2.lease
                }
            ),
            Response::StaleLease { current: None }
        ));
        assert_eq!(
            run(
                &mut s,
                1300,
                Command::QueueReplay {
                    queue: "q".into(),
                    ids: None
                }
            ),
            Response::Count(1)
        );
        let c3 = claim(&mut s, 1300, 1).remove(0);
        assert_eq!(c3.attempt, 1);
        run(
            &mut s,
            1301,
            Command::JobAck {
                id: c3.id,
                lease: c3.lease,
            },
        );
        assert_eq!(s.queue_stats("q").unwrap().completed, 1);
    }

    #[test]
    fn cron_fires_each_due_time_once_and_caps_catch_up() {
        let mut s = State::default();
        let every_second = ScheduleSpec {
            cron: "* * * * * *".into(),
            payload: "{}".into(),
            priority: 0,
            max_attempts: 1,
        };
        assert_eq!(
            run(
                &mut s,
                10_500,
                Command::ScheduleSet {
                    queue: "q".into(),
                    name: "tick".into(),
                    spec: every_second,
                }
            ),
            Response::Scheduled { next_at_ms: 11_000 }
        );
        run(&mut s, 13_200, Command::Tick);
        assert_eq!(s.queue_stats("q").unwrap().ready, 3, "11, 12, 13 s");
        run(&mut s, 13_900, Command::Tick);
        assert_eq!(
            s.queue_stats("q").unwrap().ready,
            3,
            "nothing new before 14 s"
        );
        // Downtime of 1000 s: only the latest CRON_CATCH_UP_MAX due times fire.
        run(&mut s, 1_013_500, Command::Tick);
        assert_eq!(
            s.queue_stats("q").unwrap().ready,
            3 + CRON_CATCH_UP_MAX as u64
        );
        assert!(matches!(
            run(
                &mut s,
                1_013_600,
                Command::ScheduleSet {
                    queue: "q".into(),
                    name: "bad".into(),
                    spec: ScheduleSpec {
                        cron: "61 * * * *".into(),
                        payload: "{}".into(),
                        priority: 0,
                        max_attempts: 1,
                    },
                }
            ),
            Response::Rejected(_)
        ));
    }

    #[test]
    fn unique_keys_answer_the_queued_job() {
        let mut s = State::default();
        let mut e = enqueue("1", 0, None);
        if let Command::QueueEnqueue { job, .. } = &mut e {
            job.unique_key = Some("u".into());
        }
        let first = run(&mut s, 0, e.clone());
        let Response::Enqueued { id, existing } = first else {
            panic!()
        };
        assert!(!existing);
        assert_eq!(
            run(&mut s, 0, e.clone()),
            Response::Enqueued { id, existing: true }
        );
        let c = claim(&mut s, 0, 1).remove(0);
        run(
            &mut s,
            0,
            Command::JobAck {
                id: c.id,
                lease: c.lease,
            },
        );
        assert!(matches!(
            run(&mut s, 0, e),
            Response::Enqueued {
                existing: false,
                ..
            }
        ));
    }
}

#[cfg(test)]
mod persistence_tests {
    use super::tests::put;
    use super::*;
    use crate::command::{CacheLimits, Enqueue, LockWait, ScheduleSpec};

    /// Everything apply writes through to RocksDB is enough to rebuild the same state: what a
    /// restart, or a follower installing a snapshot, relies on.
    #[test]
    fn a_reloaded_state_answers_like_the_one_that_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let commands = vec![
            Command::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                if_revision: None,
                ttl_ms: Some(60_000),
            },
            Command::LockAcquire {
                name: "L".into(),
                owner: "a".into(),
                ttl_ms: 5_000,
                wait: None,
            },
            Command::LockAcquire {
                name: "L".into(),
                owner: "b".into(),
                ttl_ms: 5_000,
                wait: Some(LockWait {
                    waiter_id: "wb".into(),
                    wait_ms: 9_000,
                }),
            },
            Command::SessionCreate {
                id: "s1".into(),
                user: "u".into(),
                data: "{}".into(),
                ttl_ms: 60_000,
            },
            Command::CacheSet {
                key: "c".into(),
                value: b"x".to_vec(),
                ttl_ms: None,
                tags: vec!["t".into()],
                limits: CacheLimits {
                    max_entries: 10,
                    max_bytes: 1000,
                },
            },
            Command::QueueEnqueue {
                queue: "q".into(),
                job: Enqueue {
                    payload: "1".into(),
                    delay_ms: Some(100),
                    run_at_ms: None,
                    priority: 0,
                    max_attempts: 3,
                    backoff_ms: 10,
                    unique_key: Some("u1".into()),
                },
            },
            Command::QueueEnqueue {
                queue: "q".into(),
                job: Enqueue {
                    payload: "2".into(),
                    delay_ms: None,
                    run_at_ms: None,
                    priority: 0,
                    max_attempts: 3,
                    backoff_ms: 10,
                    unique_key: None,
                },
            },
            Command::QueueClaim {
                queue: "q".into(),
                worker: "w".into(),
                max: 1,
                visibility_ms: 1_000,
            },
            Command::ScheduleSet {
                queue: "q".into(),
                name: "cron".into(),
                spec: ScheduleSpec {
                    cron: "0 * * * *".into(),
                    payload: "null".into(),
                    priority: 0,
                    max_attempts: 1,
                },
            },
        ];
        for (i, command) in commands.into_iter().enumerate() {
            let mut batch = SmBatch::default();
            s.apply(
                &Request {
                    stamp_ms: 1_000 + i as u64,
                    idempotency_key: Some(format!("op{i}")),
                    command,
                },
                &mut batch,
            );
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
        }
        let r = State::load(&db).unwrap();
        assert_eq!(r.meta.revision, s.meta.revision);
        assert_eq!(r.get("k"), s.get("k"));
        assert_eq!(r.lock("L"), s.lock("L"));
        assert_eq!(r.session("s1"), s.session("s1"));
        assert_eq!(r.cache_digest(), s.cache_digest());
        assert_eq!(r.cache_counts(), s.cache_counts());
        assert_eq!(r.queue_stats("q"), s.queue_stats("q"));
        assert_eq!(r.schedules("q"), s.schedules("q"));
        assert_eq!(r.next_deadline_ms(), s.next_deadline_ms());
        // Counters continue where they were: the next fence and job id are new ones.
        let mut r = r;
        let mut batch = SmBatch::default();
        let next = |st: &mut State, b: &mut SmBatch| {
            st.apply(
                &Request {
                    stamp_ms: 2_000,
                    idempotency_key: None,
                    command: Command::LockAcquire {
                        name: "M".into(),
                        owner: "c".into(),
                        ttl_ms: 10,
                        wait: None,
                    },
                },
                b,
            )
        };
        assert_eq!(next(&mut r, &mut batch), next(&mut s, &mut batch));
        // An idempotency record survives too.
        let again = Request {
            stamp_ms: 2_001,
            idempotency_key: Some("op5".into()),
            command: Command::Tick,
        };
        assert_eq!(r.apply(&again, &mut batch), s.apply(&again, &mut batch));
    }

    #[test]
    fn history_replays_changes_from_a_revision_until_compacted_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let apply = |s: &mut State, stamp: u64, command: Command| {
            let mut batch = SmBatch::default();
            let r = s.apply(
                &Request {
                    stamp_ms: stamp,
                    idempotency_key: None,
                    command,
                },
                &mut batch,
            );
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
            r
        };
        apply(&mut s, 1, put("a/1", "x", None, None)); // rev 1
        apply(&mut s, 2, put("b/1", "y", None, None)); // rev 2
        apply(&mut s, 3, put("a/2", "z", None, Some(10))); // rev 3, expires at 13
        apply(
            &mut s,
            4,
            Command::Delete {
                key: "a/1".into(),
                if_revision: None,
            },
        ); // rev 4
        apply(&mut s, 20, Command::Tick); // a/2 expires: rev 5
        let events = s.kv_events_since("a/", 2, 100).unwrap();
        let seen: Vec<(u64, &str, KvEventKind, Option<&[u8]>)> = events
            .iter()
            .map(|e| (e.revision, e.key.as_str(), e.kind, e.value.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (3, "a/2", KvEventKind::Put, Some(&b"z"[..])),
                (4, "a/1", KvEventKind::Delete, None),
                (5, "a/2", KvEventKind::Delete, None),
            ]
        );
        assert_eq!(s.kv_events_since("", 1, 2).unwrap().len(), 2, "limit holds");

        assert_eq!(
            apply(&mut s, 21, Command::KvCompact { revision: 3 }),
            Response::Compacted {
                compact_revision: 3
            }
        );
        assert_eq!(
            s.kv_events_since("a/", 3, 100),
            Err(Compacted {
                compact_revision: 3
            })
        );
        assert_eq!(s.kv_events_since("a/", 4, 100).unwrap().len(), 2);
        // Compaction never goes past the current revision, nor backwards.
        assert_eq!(
            apply(&mut s, 22, Command::KvCompact { revision: 99 }),
            Response::Compacted {
                compact_revision: 5
            }
        );
        assert_eq!(
            apply(&mut s, 23, Command::KvCompact { revision: 1 }),
            Response::Compacted {
                compact_revision: 5
            }
        );
        assert_eq!(s.kv_history_len(), 0);
        apply(&mut s, 24, put("a/3", "w", None, None)); // rev 6

        let r = State::load(&db).unwrap();
        assert_eq!(r.compact_revision(), 5);
        assert_eq!(r.kv_events_since("", 6, 10), s.kv_events_since("", 6, 10));
        assert_eq!(r.kv_history_len(), 1);
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;

    #[test]
    fn join_tokens_and_removed_nodes_are_replicated_state_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let day = 24 * 3600 * 1000;
        let commands = [
            // A token that expires at 2 days, one at 20 days.
            (
                1_000,
                Command::JoinTokenCreate {
                    token_sha256: "old".into(),
                    expires_at_ms: 2 * day,
                },
            ),
            (
                2_000,
                Command::JoinTokenCreate {
                    token_sha256: "new".into(),
                    expires_at_ms: 20 * day,
                },
            ),
            (3_000, Command::NodeRemoved { id: 3 }),
            (4_000, Command::NodeRemoved { id: 3 }),
            (5_000, Command::AllocateNodeId),
        ];
        for (stamp, command) in commands {
            let mut batch = SmBatch::default();
            s.apply(&tests::req(stamp, command), &mut batch);
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
        }
        assert_eq!(s.security.join_tokens.len(), 2);
        assert_eq!(
            s.security.removed_nodes.iter().copied().collect::<Vec<_>>(),
            vec![3]
        );
        let r = State::load(&db).unwrap();
        assert_eq!(r.security, s.security);

        // A token expired longer than EXPIRED_TOKEN_KEPT_MS is forgotten when the next one is
        // made; the other stays.
        let later = 2 * day + EXPIRED_TOKEN_KEPT_MS + 1;
        let mut batch = SmBatch::default();
        s.apply(
            &tests::req(
                later,
                Command::JoinTokenCreate {
                    token_sha256: "third".into(),
                    expires_at_ms: later + day,
                },
            ),
            &mut batch,
        );
        let names: Vec<&str> = s.security.join_tokens.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["new", "third"]);
    }

    #[test]
    fn revoked_tokens_founding_or_created_are_remembered_across_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let founding = "f".repeat(64);
        let created = format!("{}{}", "c".repeat(16), "0".repeat(48));
        let day = 24 * 3600 * 1000;
        let run = |s: &mut State, stamp: u64, command: Command| {
            let mut batch = SmBatch::default();
            let r = s.apply(&tests::req(stamp, command), &mut batch);
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
            r
        };
        run(
            &mut s,
            1_000,
            Command::InitCluster {
                cluster_id: "c1".into(),
                join_token_sha256: founding.clone(),
            },
        );
        run(
            &mut s,
            2_000,
            Command::JoinTokenCreate {
                token_sha256: created.clone(),
                expires_at_ms: day,
            },
        );
        let revoke = |id: &str| Command::JoinTokenRevoke {
            token_id: id.into(),
        };
        assert!(matches!(
            run(&mut s, 3_000, revoke("0123456789abcdef")),
            Response::NotFound
        ));
        assert!(matches!(
            run(&mut s, 4_000, revoke(token_id(&created))),
            Response::Done
        ));
        assert!(s.security.join_tokens.is_empty());
        assert!(matches!(
            run(&mut s, 5_000, revoke(token_id(&founding))),
            Response::Done
        ));
        assert_eq!(s.meta.join_token_sha256, None);
        assert_eq!(
            s.security.revoked_tokens,
            BTreeMap::from([(created.clone(), 4_000), (founding.clone(), 5_000)])
        );
        // Revoking again finds nothing: a revoked token is gone from both places.
        assert!(matches!(
            run(&mut s, 6_000, revoke(token_id(&created))),
            Response::NotFound
        ));

        let r = State::load(&db).unwrap();
        assert_eq!(r.security, s.security);
        assert_eq!(r.security.revoked_tokens.len(), 2);
        assert_eq!(r.meta.join_token_sha256, None);
    }
}

#[cfg(test)]
mod channel_tests {
    use super::primitive_tests::run;
    use super::*;
    use crate::command::ChannelRetention;

    fn publish(channel: &str, data: &str, max_events: u64, max_age_ms: u64) -> Command {
        Command::ChannelPublish {
            channel: channel.into(),
            data: data.into(),
            retention: ChannelRetention {
                max_events,
                max_age_ms,
            },
        }
    }

    #[test]
    fn offsets_grow_per_channel_and_history_keeps_the_newest() {
        let mut s = State::default();
        s.set_emit_live(true);
        for i in 1..=5u64 {
            assert_eq!(
                run(&mut s, i, publish("a", &i.to_string(), 3, 60_000)),
                Response::Published { offset: i }
            );
        }
        assert_eq!(
            run(&mut s, 9, publish("b", "1", 3, 60_000)),
            Response::Published { offset: 1 }
        );
        let h = s.channel_history("a", 0, 100).unwrap();
        assert_eq!((h.earliest_offset, h.latest_offset), (3, 5));
        let offsets: Vec<u64> = h.events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [3, 4, 5]);
        let h = s.channel_history("a", 3, 1).unwrap();
        assert_eq!(h.events[0].offset, 4);
        assert_eq!(h.events[0].data, "4");
        assert!(s.channel_history("a", 5, 10).unwrap().events.is_empty());
        assert!(s.channel_history("none", 0, 10).is_none());
        let live = s.take_live();
        assert_eq!(live.len(), 6);
        assert!(
            matches!(&live[5], LiveEvent::Channel { channel, event } if channel == "b" && event.offset == 1)
        );
    }

    #[test]
    fn events_age_out_on_the_replicated_clock_and_offsets_continue() {
        let mut s = State::default();
        run(&mut s, 1_000, publish("a", "1", 100, 500));
        run(&mut s, 1_200, publish("a", "2", 100, 500));
        assert_eq!(s.next_deadline_ms(), Some(1_500));
        run(&mut s, 1_500, Command::Tick);
        let h = s.channel_history("a", 0, 10).unwrap();
        assert_eq!((h.earliest_offset, h.latest_offset), (2, 2));
        run(&mut s, 1_700, Command::Tick);
        let h = s.channel_history("a", 0, 10).unwrap();
        assert_eq!(
            (h.earliest_offset, h.latest_offset, h.events.len()),
            (3, 2, 0)
        );
        assert_eq!(s.next_deadline_ms(), None);
        assert_eq!(
            run(&mut s, 1_800, publish("a", "3", 100, 500)),
            Response::Published { offset: 3 }
        );
    }

    fn join(channel: &str, client: &str, node_id: u64, incarnation: u64) -> Command {
        Command::PresenceJoin {
            channel: channel.into(),
            client_id: client.into(),
            user: format!("user-{client}"),
            node_id,
            incarnation,
            lease_ms: 1_000,
        }
    }

    #[test]
    fn presence_ends_with_its_node_lease_or_a_new_incarnation() {
        let mut s = State::default();
        run(&mut s, 0, join("room", "c1", 1, 11));
        run(&mut s, 0, join("room", "c2", 2, 22));
        run(&mut s, 0, join("room", "c3", 3, 33));
        assert_eq!(s.presence("room").len(), 3);
        // Nodes 1 and 2 renew; node 3 does not and its lease ends at 1000.
        run(
            &mut s,
            900,
            Command::PresenceHeartbeat {
                node_id: 1,
                incarnation: 11,
                lease_ms: 1_000,
            },
        );
        run(
            &mut s,
            900,
            Command::PresenceHeartbeat {
                node_id: 2,
                incarnation: 22,
                lease_ms: 1_000,
            },
        );
        run(&mut s, 1_000, Command::Tick);
        let ids: Vec<String> = s
            .presence("room")
            .into_iter()
            .map(|p| p.client_id)
            .collect();
        assert_eq!(ids, ["c1", "c2"]);
        // Node 2 restarted: its new process's heartbeat drops what the old one left.
        run(
            &mut s,
            1_100,
            Command::PresenceHeartbeat {
                node_id: 2,
                incarnation: 23,
                lease_ms: 1_000,
            },
        );
        assert_eq!(s.presence("room").len(), 1);
        assert_eq!(
            run(
                &mut s,
                1_100,
                Command::PresenceLeave {
                    channel: "room".into(),
                    client_id: "c1".into(),
                    node_id: 1
                }
            ),
            Response::Count(1)
        );
        assert!(s.presence("room").is_empty());
    }

    #[test]
    fn channels_and_presence_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let cmds = [
            publish("a", "1", 2, 10_000),
            publish("a", "2", 2, 10_000),
            publish("a", "3", 2, 10_000),
            publish("b/x", "{}", 2, 10_000),
            join("a", "c1", 1, 7),
        ];
        for (i, c) in cmds.into_iter().enumerate() {
            let mut batch = SmBatch::default();
            s.apply(&tests::req(10 + i as u64, c), &mut batch);
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
        }
        let r = State::load(&db).unwrap();
        assert_eq!(r.channel_history("a", 0, 10), s.channel_history("a", 0, 10));
        assert_eq!(
            r.channel_history("b/x", 0, 10),
            s.channel_history("b/x", 0, 10)
        );
        assert_eq!(r.presence("a"), s.presence("a"));
        assert_eq!(r.next_deadline_ms(), s.next_deadline_ms());
    }
}
