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
//! - [`semaphores`]: counting semaphores: permits under leases with fences, FIFO waiters.
//! - [`sessions`]: sessions with sliding expiry.
//! - [`cache`]: the bounded cache with tags.
//! - [`queues`]: job queues with leases, retries, dead letters and cron schedules.
//! - [`channels`]: channel histories with offsets and retention, and presence with node leases.
//! - [`security`]: created join tokens, pinned node keys and removed node ids.
//! - [`acl`]: access-control tokens and policies.
//!
//! When enabled ([`State::set_emit_live`]), apply also records [`LiveEvent`]s (channel events
//! and key-value changes) that the state machine hands to subscribers after each batch.
//!
//! Key layout in the `sm` column family:
//! - `m:state` → [`Meta`]; `m:locks` → the last fence; `m:cache` → cache counters;
//!   `m:security` → [`Security`] (join tokens, removed nodes)
//!   `m:revoked-tokens` → revoked join tokens (digest → when), part of [`Security`]
//!   `m:node-keys` → pinned node keys (node id → key digest), part of [`Security`]
//! - `k:<key>` → [`KvEntry`], `l:<name>` → [`LockEntry`], `s:<id>` → [`SessionEntry`],
//!   `c:<key>` → [`CacheEntry`]
//! - `sem:<name>` → [`SemaphoreEntry`]; `m:semaphores` → the last semaphore fence
//! - `h:<revision BE><key>` → a key-value history event; `m:kvhist` → the compaction point
//! - `i:<idempotency key>` → [`IdemRecord`] (keys of earlier builds: `Request::idempotency_key`)
//! - `if:<scoped idempotency key>` → [`FingerprintedRecord`] (keys of [`Command::Idempotent`])
//! - `svi:<service>/<id>` → [`services::Instance`], `svr:<service>` → the service's revision,
//!   `rt:<name>` → [`services::Route`], `m:services` → the registry's revision counters
//! - `acl:t:<accessor id>` → [`acl::Token`], `acl:p:<name>` → [`acl::Policy`], `acl:j:<name>` →
//!   [`acl::JwtProvider`], `m:acl` → whether
//!   the bootstrap token was made

pub mod acl;
pub(crate) mod cache;
pub(crate) mod channels;
pub mod export;
pub(crate) mod kv;
mod leases;
pub(crate) mod locks;
mod names;
mod primitive;
pub(crate) mod queues;
pub(crate) mod security;
pub(crate) mod semaphores;
pub(crate) mod services;
pub(crate) mod sessions;

use std::collections::{BTreeMap, BTreeSet};

use openraft::alias::{LogIdOf, StoredMembershipOf};
use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

pub use cache::{CacheCounts, CacheEntry};
pub use channels::{ChannelEvent, ChannelSummary, History, Presence, PRESENCE_PER_CHANNEL_MAX};
pub use kv::{Compacted, KvEntry, KvEvent, KvEventKind, KvReadError, COMPACT_KEY};
pub use locks::{Holder, LockEntry, Waiter, MAX_WAITERS_PER_LOCK};
pub use queues::{
    next_fire_ms, unsafe_lose_jobs_every, Job, JobListState, JobState, QueueStats, Schedule,
    BACKOFF_MAX_MS, CRON_CATCH_UP_MAX, CRON_HORIZON_DAYS,
};
pub use security::{
    token_id, ClusterLimits, Security, EXPIRED_TOKEN_KEPT_MS, FOUNDER, NODE_KEYS_KEY,
    REVOKED_TOKENS_KEY, SECURITY_KEY,
};
pub use semaphores::{
    SemaphoreEntry, SemaphoreLease, SemaphoreWaiter, MAX_HOLDERS_PER_SEMAPHORE,
    MAX_SEMAPHORE_CAPACITY, MAX_WAITERS_PER_SEMAPHORE,
};
pub use services::{
    Check, Damping, HashOn, Health, Instance, InstanceSpec, Route, Strategy, MAX_INSTANCES,
    MAX_ROUTES, NOT_CHECKED,
};
pub use sessions::SessionEntry;

use crate::codec;
use crate::command::{
    Additions, Adds, Command, Compare, Grows, Guarded, IdemKey, NotNested, Op, OpResponse, Request,
    Response, Txn, TxnResult,
};
use crate::types::TypeConfig;
use primitive::{put_record, records, Cx, Deadlines, Part, Primitive};

/// Where [`Meta`] is stored in the `sm` column family.
pub const META_KEY: &[u8] = b"m:state";
const IDEM_PREFIX: &[u8] = b"i:";
const FINGERPRINTED_IDEM_PREFIX: &[u8] = b"if:";

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

/// The remembered result of a [`Command::Idempotent`] write: the fingerprint of the request,
/// which a retry must match, and the record as for any key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FingerprintedRecord {
    pub fingerprint: [u8; 32],
    pub record: IdemRecord,
}

/// Declares the parts of the state, in the order they load and expire. A part listed here
/// is loaded, expired and asked for its next deadline; one that is not cannot be reached.
macro_rules! parts {
    ($($field:ident: $ty:ty),* $(,)?) => {
        #[derive(Default, Debug)]
        struct Parts {
            $($field: $ty,)*
        }

        impl Parts {
            fn load(db: &Db, now_ms: u64) -> storage::Result<Parts> {
                Ok(Parts {
                    $($field: <$ty as Part>::load(db, now_ms)?,)*
                })
            }

            fn expire(&mut self, cx: &mut Cx<'_>) {
                $(self.$field.expire(cx);)*
            }

            fn next_deadline(&self) -> Option<u64> {
                [$(self.$field.next_deadline(),)*].into_iter().flatten().min()
            }

            fn end_batch(&mut self, batch: &mut SmBatch) {
                $(self.$field.end_batch(batch);)*
            }
        }
    };
}

parts! {
    kv: kv::Kv,
    locks: locks::Locks,
    sessions: sessions::Sessions,
    cache: cache::Cache,
    queues: queues::Queues,
    channels: channels::Channels,
    semaphores: semaphores::Semaphores,
    services: services::Services,
    security: Security,
    acl: acl::Acl,
    idem: Idempotency,
}

impl Parts {
    /// The refusal of a command that would pass a count limit in force, if any. The writes
    /// of a transaction count together.
    fn limit_refusal(&self, command: &Command, now: u64) -> Option<Response> {
        let limits = &self.security.limits;
        if *limits
            == (ClusterLimits {
                quota_bytes: limits.quota_bytes,
                ..Default::default()
            })
        {
            return None;
        }
        let mut adds = Vec::new();
        command.additions(&mut adds);
        if adds.is_empty() {
            return None;
        }
        self.tally(adds).refusal(self, now)
    }

    /// What `adds` would add that is not there yet, by limit.
    fn tally<'a>(&self, adds: Vec<Adds<'a>>) -> Adding<'a> {
        let mut a = Adding::default();
        for add in adds {
            match add {
                Adds::Key(k) if self.kv.revision_of(k) == 0 => {
                    a.keys.insert(k);
                }
                Adds::Key(_) => {}
                Adds::Job { queue } => {
                    *a.jobs.entry(queue).or_default() += 1;
                    if !self.queues.has_queue(queue) {
                        a.queues.insert(queue);
                    }
                }
                Adds::Schedule { queue, name } if !self.queues.has_schedule(queue, name) => {
                    a.schedules.insert((queue, name));
                }
                Adds::Schedule { .. } => {}
                Adds::Channel(c) if !self.channels.has_channel(c) => {
                    a.channels.insert(c);
                }
                Adds::Channel(_) => {}
                Adds::Session { user } => *a.sessions.entry(user).or_default() += 1,
                Adds::Token { accessor_id } if !self.acl.has_token(accessor_id) => {
                    a.tokens.insert(accessor_id);
                }
                Adds::Token { .. } => {}
                Adds::JoinToken => a.join_tokens += 1,
                // Only an acquire of a held lock queues its caller.
                Adds::LockWaiter { lock } if self.locks.current_fence(lock).is_some() => {
                    a.waiters += 1
                }
                Adds::LockWaiter { .. } => {}
            }
        }
        a
    }
}

/// What one command (the writes of a transaction together) adds, counted as the count
/// limits count it: new keys, queues, schedules, channels and tokens, jobs per queue,
/// sessions per user, join tokens and lock waiters.
#[derive(Default)]
struct Adding<'a> {
    keys: BTreeSet<&'a str>,
    queues: BTreeSet<&'a str>,
    jobs: BTreeMap<&'a str, usize>,
    schedules: BTreeSet<(&'a str, &'a str)>,
    channels: BTreeSet<&'a str>,
    sessions: BTreeMap<&'a str, usize>,
    tokens: BTreeSet<&'a str>,
    join_tokens: usize,
    waiters: usize,
}

impl Adding<'_> {
    /// The refusal of the first limit these additions would pass in `p`, if any, checked in
    /// one fixed order (a command over several limits is told the first).
    fn refusal(&self, p: &Parts, now: u64) -> Option<Response> {
        let [keys, queues, schedules, channels, tokens, join_tokens, waiters] = self.counts(p);
        let [jobs, sessions] = self.counts_per_name(p);
        let first = |counts: &[Count]| counts.iter().find_map(|c| c.refusal(p, now));
        first(&[keys, queues])
            .or_else(|| jobs.refusal(p))
            .or_else(|| first(&[schedules, channels]))
            .or_else(|| sessions.refusal(p))
            .or_else(|| first(&[tokens, join_tokens, waiters]))
    }

    /// The limits on counts of the whole state, with what these additions add to each.
    fn counts(&self, p: &Parts) -> [Count; 7] {
        let l = &p.security.limits;
        [
            Count(
                "limits.max_keys",
                l.max_keys,
                |p, _| p.kv.len(),
                self.keys.len(),
                "keys",
            ),
            Count(
                "limits.max_queues",
                l.max_queues,
                |p, _| p.queues.queue_count(),
                self.queues.len(),
                "queues",
            ),
            Count(
                "limits.max_schedules",
                l.max_schedules,
                |p, _| p.queues.schedule_count(),
                self.schedules.len(),
                "schedules",
            ),
            Count(
                "limits.max_channels",
                l.max_channels,
                |p, _| p.channels.channel_count(),
                self.channels.len(),
                "channels",
            ),
            Count(
                "limits.max_tokens",
                l.max_tokens,
                |p, _| p.acl.token_count(),
                self.tokens.len(),
                "tokens",
            ),
            Count(
                "limits.max_join_tokens",
                l.max_join_tokens,
                |p, now| p.security.live_join_tokens(now),
                self.join_tokens,
                "unexpired join tokens",
            ),
            Count(
                "limits.max_lock_waiters",
                l.max_lock_waiters,
                |p, _| p.locks.waiter_count(),
                self.waiters,
                "callers waiting for locks",
            ),
        ]
    }

    /// The limits on counts per name (jobs per queue, sessions per user), with what these
    /// additions add under each name.
    fn counts_per_name(&self, p: &Parts) -> [PerName<'_>; 2] {
        let l = &p.security.limits;
        [
            PerName(
                "limits.max_jobs_per_queue",
                l.max_jobs_per_queue,
                |p, q| p.queues.job_count(q),
                &self.jobs,
                "jobs in queue",
            ),
            PerName(
                "limits.max_sessions_per_user",
                l.max_sessions_per_user,
                |p, u| p.sessions.count_of(u),
                &self.sessions,
                "sessions of user",
            ),
        ]
    }
}

/// A limit on a count of the whole state: its name, its maximum (0: none), how many there are,
/// how many a command adds, and what they are.
struct Count(
    &'static str,
    u64,
    fn(&Parts, u64) -> usize,
    usize,
    &'static str,
);

impl Count {
    fn refusal(&self, p: &Parts, now: u64) -> Option<Response> {
        let Count(limit, max, have, adding, what) = *self;
        // `have` only when some are added: counting the live join tokens walks them.
        (max > 0 && adding > 0 && over(max, have(p, now), adding))
            .then(|| refused(limit, max, what.to_string()))
    }
}

/// A limit on a count per name: its name, its maximum (0: none), how many a name has, how many
/// a command adds under each name, and what they are.
struct PerName<'a>(
    &'static str,
    u64,
    fn(&Parts, &str) -> usize,
    &'a BTreeMap<&'a str, usize>,
    &'static str,
);

impl PerName<'_> {
    fn refusal(&self, p: &Parts) -> Option<Response> {
        let PerName(limit, max, have, adding, what) = *self;
        let (name, _) = adding.iter().find(|(n, k)| over(max, have(p, n), **k))?;
        Some(refused(limit, max, format!("{what} {name:?}")))
    }
}

/// Whether `adding` more to the `have` there are passes `max` (0: no limit).
fn over(max: u64, have: usize, adding: usize) -> bool {
    max > 0 && adding > 0 && (have + adding) as u64 > max
}

fn refused(limit: &str, max: u64, what: String) -> Response {
    Response::LimitReached {
        limit: limit.to_string(),
        max,
        what,
    }
}

/// The whole replicated state, in memory.
#[derive(Default, Debug)]
pub struct State {
    pub meta: Meta,
    parts: Parts,
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
    /// A service of the registry changed; it is at `revision` now.
    Service {
        service: String,
        revision: u64,
    },
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

/// Remembered answers of writes that carried an `Idempotency-Key`, until their window ends.
/// The keys of earlier builds (no fingerprint) and those of [`Command::Idempotent`] (scoped,
/// with the fingerprint of their request) are two namespaces that never meet.
#[derive(Default, Debug)]
struct Idempotency {
    /// By the record's key in the `sm` column family (prefix included).
    records: std::collections::BTreeMap<Vec<u8>, Remembered>,
    ttl: Deadlines<Vec<u8>>,
}

#[derive(Debug)]
struct Remembered {
    /// `None` for a key of an earlier build.
    fingerprint: Option<[u8; 32]>,
    record: IdemRecord,
}

/// The `Idempotency-Key` of the request being applied.
enum IdemRef<'a> {
    /// `Request::idempotency_key`, from an entry of an earlier build.
    Unscoped(&'a str),
    Fingerprinted(&'a IdemKey),
}

impl IdemRef<'_> {
    fn record_key(&self) -> Vec<u8> {
        match self {
            IdemRef::Unscoped(key) => prefixed(IDEM_PREFIX, key),
            IdemRef::Fingerprinted(k) => prefixed(FINGERPRINTED_IDEM_PREFIX, &k.key),
        }
    }

    fn fingerprint(&self) -> Option<[u8; 32]> {
        match self {
            IdemRef::Unscoped(_) => None,
            IdemRef::Fingerprinted(k) => Some(k.fingerprint),
        }
    }
}

impl Part for Idempotency {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Self> {
        let mut idem = Idempotency::default();
        for (key, record) in records::<IdemRecord>(db, IDEM_PREFIX)? {
            idem.insert(prefixed(IDEM_PREFIX, &key), None, record);
        }
        for (key, r) in records::<FingerprintedRecord>(db, FINGERPRINTED_IDEM_PREFIX)? {
            let key = prefixed(FINGERPRINTED_IDEM_PREFIX, &key);
            idem.insert(key, Some(r.fingerprint), r.record);
        }
        Ok(idem)
    }

    fn expire(&mut self, cx: &mut Cx<'_>) {
        while let Some(key) = self.ttl.pop_due(cx.now()) {
            self.records.remove(&key);
            cx.delete(key);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.ttl.next()
    }
}

impl Idempotency {
    fn insert(&mut self, key: Vec<u8>, fingerprint: Option<[u8; 32]>, record: IdemRecord) {
        self.ttl.insert(record.expires_at_ms, key.clone());
        self.records.insert(
            key,
            Remembered {
                fingerprint,
                record,
            },
        );
    }

    /// The answer to a request whose key was seen within the window: the remembered one, or
    /// a mismatch when the key came with another request.
    fn answer(&self, key: &IdemRef<'_>) -> Option<Response> {
        let seen = self.records.get(&key.record_key())?;
        Some(if seen.fingerprint == key.fingerprint() {
            seen.record.response.clone()
        } else {
            Response::IdempotencyMismatch
        })
    }

    fn remember(&mut self, key: &IdemRef<'_>, response: &Response, cx: &mut Cx<'_>) {
        let record = IdemRecord {
            expires_at_ms: cx.now().saturating_add(IDEMPOTENCY_WINDOW_MS),
            response: response.clone(),
        };
        let db_key = key.record_key();
        match key.fingerprint() {
            None => cx.put(db_key.clone(), &record),
            Some(fingerprint) => cx.put(
                db_key.clone(),
                &FingerprintedRecord {
                    fingerprint,
                    record: record.clone(),
                },
            ),
        }
        self.insert(db_key, key.fingerprint(), record);
    }
}

impl State {
    /// Rebuilds the in-memory state from the `sm` column family.
    pub fn load(db: &Db) -> storage::Result<State> {
        let meta: Meta = match db.sm_get(META_KEY)? {
            Some(bytes) => codec::decode(&bytes)?,
            None => Meta::default(),
        };
        Ok(State {
            parts: Parts::load(db, meta.now_ms)?,
            meta,
            live: None,
        })
    }

    /// The batches applied so far are written to the store: what was held until then (the
    /// key-value values and history values) is read from there from now on.
    pub fn written(&mut self) {
        self.parts.kv.written();
    }

    /// Writes the scalars, and what each part keeps once per batch, into `batch`; called once
    /// per applied batch, before it is written.
    pub fn persist_meta(&mut self, batch: &mut SmBatch) {
        self.parts.end_batch(batch);
        put_record(batch, META_KEY.to_vec(), &self.meta);
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

    /// Applies one request and records its writes in `batch`.
    pub fn apply(&mut self, req: &Request, batch: &mut SmBatch) -> Response {
        self.meta.now_ms = self.meta.now_ms.max(req.stamp_ms);
        let now = self.meta.now_ms;
        let mut cx = Cx::new(&mut self.meta, batch, &mut self.live);
        self.parts.expire(&mut cx);

        let key = match &req.command {
            Command::Idempotent { idem, .. } => Some(IdemRef::Fingerprinted(idem)),
            _ => req.idempotency_key.as_deref().map(IdemRef::Unscoped),
        };
        if let Some(key) = &key {
            if let Some(answer) = self.parts.idem.answer(key) {
                return answer;
            }
        }
        // The quota and the bytes held are replicated state, so every replica refuses the
        // same writes. The refusal is not remembered under the key: a retry once there is
        // room applies.
        let (used_bytes, quota_bytes) = (
            self.parts.kv.bytes(),
            self.parts.security.limits.quota_bytes,
        );
        if quota_bytes > 0 && used_bytes >= quota_bytes && Grows::grows(&req.command) {
            return Response::QuotaExceeded {
                used_bytes,
                quota_bytes,
            };
        }
        if let Some(refusal) = self.parts.limit_refusal(&req.command, now) {
            return refusal;
        }
        let response = match &req.command {
            Command::Idempotent { command, .. } => self.parts.apply(&**command, &mut cx),
            command => self.parts.apply(command, &mut cx),
        };
        if let Some(key) = &key {
            self.parts.idem.remember(key, &response, &mut cx);
        }
        response
    }

    /// The earliest deadline still pending, on the replicated clock. The leader proposes a
    /// `Tick` once its wall clock passes it.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.parts.next_deadline()
    }

    /// Join tokens and removed nodes.
    pub fn security(&self) -> &Security {
        &self.parts.security
    }

    /// Access-control tokens and policies.
    pub fn acl(&self) -> &acl::Acl {
        &self.parts.acl
    }

    /// A key's current entry, or `None` when absent or past its deadline on the replicated
    /// clock. The value is read from the store.
    pub fn get(&self, key: &str) -> Result<Option<KvEntry>, KvReadError> {
        self.parts.kv.get(key, self.meta.now_ms)
    }

    /// A live key's revision (0 when absent or past its deadline), without reading its value.
    pub fn kv_revision(&self, key: &str) -> u64 {
        self.parts
            .kv
            .meta(key, self.meta.now_ms)
            .map_or(0, |m| m.revision)
    }

    /// Up to `limit` live keys starting with `prefix` and greater than `after`, in key order,
    /// with their values (read from the store); the flag says whether more remain.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, KvEntry)>, bool), KvReadError> {
        self.parts.kv.list(prefix, after, limit, self.meta.now_ms)
    }

    /// Like [`list`](Self::list), the keys only (no value is read).
    pub fn kv_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> (Vec<&str>, bool) {
        let (items, more) = self.parts.kv.keys(prefix, after, limit, self.meta.now_ms);
        (items.into_iter().map(|(k, _)| k).collect(), more)
    }

    /// Up to `limit` key-value changes under `prefix` from `from_revision` on (inclusive), in
    /// revision order; `Compacted` when that part of the history has been dropped.
    pub fn kv_events_since(
        &self,
        prefix: &str,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<KvEvent>, Compacted> {
        self.parts.kv.events_since(prefix, from_revision, limit)
    }

    /// History at or below this revision has been compacted away (0: none yet).
    pub fn compact_revision(&self) -> u64 {
        self.parts.kv.compact_revision()
    }

    /// Number of key-value history events kept.
    pub fn kv_history_len(&self) -> usize {
        self.parts.kv.history_len()
    }

    /// Bytes of data held, as the storage quota counts them: the keys and values of the
    /// key-value state (not their history).
    pub fn data_bytes(&self) -> u64 {
        self.parts.kv.bytes()
    }

    /// The storage quota in force, in bytes (0: none).
    pub fn quota_bytes(&self) -> u64 {
        self.parts.security.limits.quota_bytes
    }

    /// The cluster-wide limits in force.
    pub fn limits(&self) -> &ClusterLimits {
        &self.parts.security.limits
    }

    /// Whether the `NOSPACE` alarm is raised: the data held reached the quota, and writes
    /// that grow the state are refused until it is under again.
    pub fn nospace(&self) -> bool {
        self.quota_bytes() > 0 && self.data_bytes() >= self.quota_bytes()
    }

    /// Number of keys (including expired ones not yet removed).
    pub fn key_count(&self) -> usize {
        self.parts.kv.len()
    }

    /// A lock's holder (if its lease has not ended) and waiters.
    pub fn lock(&self, name: &str) -> Option<&LockEntry> {
        self.parts.locks.get(name)
    }

    /// Up to `limit` locks whose name starts with `prefix` and is greater than `after`, in
    /// name order (held or waited for; a lease past its end may still show until the next
    /// apply settles it); the flag says whether more remain.
    pub fn locks_under(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(&String, &LockEntry)>, bool) {
        self.parts.locks.list(prefix, after, limit)
    }

    /// [`State::locks_under`] for semaphores.
    pub fn semaphores_under(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(&String, &SemaphoreEntry)>, bool) {
        self.parts.semaphores.list(prefix, after, limit)
    }

    /// A semaphore's capacity, current leases (by fence) and waiters, first waiter first;
    /// `None` when no permit is held or waited for.
    pub fn semaphore(&self, name: &str) -> Option<&SemaphoreEntry> {
        self.parts.semaphores.get(name)
    }

    /// A live session.
    pub fn session(&self, id: &str) -> Option<&SessionEntry> {
        self.parts.sessions.get(id, self.meta.now_ms)
    }

    /// A user's live sessions, by id.
    pub fn sessions_of(&self, user: &str) -> Vec<(String, &SessionEntry)> {
        self.parts
            .sessions
            .ids_of(user)
            .into_iter()
            .filter_map(|id| self.session(&id).map(|s| (id, s)))
            .collect()
    }

    pub fn session_count(&self) -> usize {
        self.parts.sessions.len()
    }

    /// A live cache entry.
    pub fn cache_get(&self, key: &str) -> Option<&CacheEntry> {
        self.parts.cache.get(key, self.meta.now_ms)
    }

    /// Up to `limit` live cache entries under `prefix` after `after`, in key order (see
    /// [`State::list`]).
    pub fn cache_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(&str, &CacheEntry)>, bool) {
        self.parts
            .cache
            .list(prefix, after, limit, self.meta.now_ms)
    }

    pub fn cache_counts(&self) -> CacheCounts {
        self.parts.cache.counts()
    }

    /// A hash of the whole cache, equal on replicas that hold the same entries.
    pub fn cache_digest(&self) -> String {
        self.parts.cache.digest()
    }

    /// A queue's counts, or `None` for a queue that never held a job.
    pub fn queue_stats(&self, queue: &str) -> Option<QueueStats> {
        self.parts.queues.stats(queue)
    }

    pub fn queue_names(&self) -> Vec<String> {
        self.parts.queues.queue_names()
    }

    pub fn queue_has_ready(&self, queue: &str) -> bool {
        self.parts.queues.has_ready(queue)
    }

    pub fn job(&self, id: u64) -> Option<&Job> {
        self.parts.queues.job(id)
    }

    /// Up to `limit` dead jobs of `queue`, oldest first.
    pub fn dead_jobs(&self, queue: &str, limit: usize) -> Vec<(u64, &Job)> {
        self.parts.queues.dead(queue, limit)
    }

    /// Up to `limit` jobs of `queue` in `state` (every state when `None`).
    pub fn jobs(&self, queue: &str, state: Option<JobListState>, limit: usize) -> Vec<(u64, &Job)> {
        self.parts.queues.jobs_in(queue, state, limit)
    }

    pub fn schedules(&self, queue: &str) -> Vec<(String, &Schedule)> {
        self.parts.queues.schedules(queue)
    }

    /// Events of `channel` after offset `since` (at most `limit`) with the retained range;
    /// `None` for a channel never published.
    pub fn channel_history(&self, channel: &str, since: u64, limit: usize) -> Option<History> {
        self.parts.channels.history(channel, since, limit)
    }

    /// The last offset published on `channel`, 0 when none.
    pub fn channel_latest_offset(&self, channel: &str) -> u64 {
        self.parts.channels.latest_offset(channel)
    }

    /// Present clients of `channel`, by client id.
    pub fn presence(&self, channel: &str) -> Vec<Presence> {
        self.parts.channels.present(channel)
    }

    /// Up to `limit` channels (published, or with clients present) whose name starts with
    /// `prefix` and is greater than `after`, in name order; the flag says whether more remain.
    pub fn channels_under(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ChannelSummary>, bool) {
        self.parts.channels.list(prefix, after, limit)
    }

    /// (channels ever published, events retained across them).
    /// The instances of `service`, by id.
    pub fn service_instances(&self, service: &str) -> Vec<&Instance> {
        self.parts.services.instances_of(service).collect()
    }

    /// A service's revision (see [`services`], "Revisions").
    pub fn service_revision(&self, service: &str) -> u64 {
        self.parts.services.revision_of(service)
    }

    /// The registry's revision: it grows with every change of any service or route.
    pub fn registry_revision(&self) -> u64 {
        self.parts.services.revision()
    }

    /// Every service with instances, with its revision, by name.
    pub fn services(&self) -> &std::collections::BTreeMap<String, u64> {
        self.parts.services.services()
    }

    /// Every instance, by service then id.
    pub fn all_instances(&self) -> impl Iterator<Item = &Instance> {
        self.parts.services.all_instances()
    }

    pub fn instance(&self, service: &str, id: &str) -> Option<&Instance> {
        self.parts.services.instance(service, id)
    }

    /// The gateway's routes, by name.
    pub fn routes(&self) -> &std::collections::BTreeMap<String, Route> {
        self.parts.services.routes()
    }

    pub fn channel_counts(&self) -> (usize, usize) {
        (
            self.parts.channels.channel_count(),
            self.parts.channels.retained_events(),
        )
    }
}

impl Parts {
    /// Applies one command, of any nesting level; every command kind is dispatched here, so
    /// the compiler sees a new kind that is not. `R` is what a transaction's result holds at
    /// this level (see `command`, "Nesting").
    fn apply<F: Nested<R>, T: Nested<R>, I, R>(
        &mut self,
        cmd: &Command<F, T, I>,
        cx: &mut Cx<'_>,
    ) -> Response<R> {
        match cmd {
            Command::Tick => Response::Done,
            Command::Cluster(c) => Response::Cluster(self.security.apply(c, cx)),
            Command::Kv(c) => Response::Kv(self.kv.apply(c, cx)),
            Command::Lock(c) => Response::Lock(self.locks.apply(c, cx)),
            Command::Session(c) => Response::Session(self.sessions.apply(c, cx)),
            Command::Cache(c) => Response::Cache(self.cache.apply(c, cx)),
            Command::Queue(c) => Response::Queue(self.queues.apply(c, cx)),
            Command::Channel(c) => Response::Channel(self.channels.apply(c, cx)),
            Command::Semaphore(c) => Response::Semaphore(self.semaphores.apply(c, cx)),
            Command::Acl(c) => Response::Acl(self.acl.apply(c, cx)),
            Command::Service(c) => Response::Service(self.services.apply(c, cx)),
            Command::Txn(txn) => txn.apply_in(self, cx),
            Command::Fenced {
                lock,
                fence,
                command,
            } => match self.locks.current_fence(lock) {
                Some(f) if f == *fence => command.apply_in(self, cx),
                current => Response::StaleFence { current },
            },
            // `State::apply` unwraps a request's own; one nested in another command is refused.
            Command::Idempotent { .. } => {
                Response::Rejected("an Idempotency-Key belongs to a whole request".into())
            }
        }
    }

    fn apply_txn(&mut self, txn: &Txn, cx: &mut Cx<'_>) -> Response {
        let succeeded = txn.compare.iter().all(|c| match c {
            Compare::Revision { key, revision } => self.kv.revision_of(key) == *revision,
            Compare::Fence { lock, fence } => self.locks.current_fence(lock) == Some(*fence),
            Compare::SemaphoreFence { semaphore, fence } => {
                self.semaphores.holds(semaphore, *fence)
            }
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
        let revision = cx.meta.revision + 1;
        cx.txn_revision = Some(revision);
        let results: Vec<OpResponse> = ops.iter().map(|op| self.apply(op, cx)).collect();
        cx.txn_revision = None;
        if results
            .iter()
            .any(|r| matches!(r, Response::Kv(kv) if kv.changed()))
        {
            cx.meta.revision = revision;
        }
        Response::Txn(TxnResult {
            succeeded,
            revision: cx.meta.revision,
            results,
        })
    }
}

/// What a transaction or fenced variant holds, applied where [`Parts::apply`] meets it; its
/// result is a `Response<R>`.
trait Nested<R> {
    fn apply_in(&self, parts: &mut Parts, cx: &mut Cx<'_>) -> Response<R>;
}

impl Nested<TxnResult> for Box<Guarded> {
    fn apply_in(&self, parts: &mut Parts, cx: &mut Cx<'_>) -> Response {
        parts.apply(&**self, cx)
    }
}

impl Nested<TxnResult> for Txn {
    fn apply_in(&self, parts: &mut Parts, cx: &mut Cx<'_>) -> Response {
        parts.apply_txn(self, cx)
    }
}

impl<R> Nested<R> for NotNested {
    fn apply_in(&self, _: &mut Parts, _: &mut Cx<'_>) -> Response<R> {
        match *self {}
    }
}

/// The writes a transaction may hold: those each primitive allows (unconditional writes).
pub fn txn_op_allowed(op: &Op) -> bool {
    match op {
        Command::Kv(c) => kv::Kv::in_txn(c),
        Command::Lock(c) => locks::Locks::in_txn(c),
        Command::Session(c) => sessions::Sessions::in_txn(c),
        Command::Cache(c) => cache::Cache::in_txn(c),
        Command::Queue(c) => queues::Queues::in_txn(c),
        Command::Channel(c) => channels::Channels::in_txn(c),
        Command::Semaphore(c) => semaphores::Semaphores::in_txn(c),
        Command::Cluster(c) => Security::in_txn(c),
        Command::Acl(c) => acl::Acl::in_txn(c),
        Command::Service(c) => services::Services::in_txn(c),
        Command::Tick => false,
        Command::Txn(n)
        | Command::Fenced { command: n, .. }
        | Command::Idempotent { command: n, .. } => match *n {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::*;

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
        Command::Kv(KvCmd::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            if_revision,
            ttl_ms,
        })
    }

    #[test]
    fn revisions_grow_and_cas_compares_key_revision() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        assert_eq!(
            s.apply(&req(1, put("a", "1", Some(0), None)), &mut b),
            Response::Kv(KvResult::Put { revision: 1 })
        );
        assert_eq!(
            s.apply(&req(2, put("b", "1", None, None)), &mut b),
            Response::Kv(KvResult::Put { revision: 2 })
        );
        assert_eq!(
            s.apply(&req(3, put("a", "2", Some(0), None)), &mut b),
            Response::Kv(KvResult::Conflict {
                current_revision: 1
            })
        );
        assert_eq!(
            s.apply(&req(3, put("a", "2", Some(1), None)), &mut b),
            Response::Kv(KvResult::Put { revision: 3 })
        );
        assert_eq!(s.get("a").unwrap().unwrap().value, b"2");
        assert_eq!(s.get("a").unwrap().unwrap().create_revision, 1);
        assert_eq!(
            s.apply(
                &req(
                    4,
                    Command::Kv(KvCmd::Delete {
                        key: "zz".into(),
                        if_revision: None
                    })
                ),
                &mut b
            ),
            Response::Kv(KvResult::Delete {
                revision: 3,
                deleted: false
            })
        );
        assert_eq!(
            s.apply(
                &req(
                    4,
                    Command::Kv(KvCmd::Delete {
                        key: "a".into(),
                        if_revision: Some(3)
                    })
                ),
                &mut b
            ),
            Response::Kv(KvResult::Delete {
                revision: 4,
                deleted: true
            })
        );
        assert!(s.get("a").unwrap().is_none());
    }

    #[test]
    fn ttl_follows_the_replicated_clock_not_the_stamps_order() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        s.apply(&req(1_000, put("t", "x", None, Some(500))), &mut b);
        // A stamp from a leader whose clock is behind never moves the clock backwards.
        s.apply(&req(900, Command::Tick), &mut b);
        assert!(s.get("t").unwrap().is_some());
        assert_eq!(s.next_deadline_ms(), Some(1_500));
        s.apply(&req(1_499, Command::Tick), &mut b);
        assert!(s.get("t").unwrap().is_some());
        s.apply(&req(1_500, Command::Tick), &mut b);
        assert!(s.get("t").unwrap().is_none());
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
        assert_eq!(
            s.apply(&r, &mut b),
            Response::Kv(KvResult::Put { revision: 2 })
        );
    }

    fn idempotent(key: &str, fingerprint: u8, command: Command) -> Command {
        Command::Idempotent {
            idem: IdemKey {
                key: key.into(),
                fingerprint: [fingerprint; 32],
            },
            command: Box::new(command.keyed().expect("not under a key")),
        }
    }

    #[test]
    fn a_fingerprinted_key_answers_its_own_request_once_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let apply = |s: &mut State, stamp: u64, command: Command| {
            let mut b = SmBatch::default();
            let r = s.apply(&req(stamp, command), &mut b);
            s.persist_meta(&mut b);
            db.sm_write(b).unwrap();
            r
        };
        let first = apply(
            &mut s,
            10,
            idempotent("alice:k1", 1, put("a", "v", None, None)),
        );
        assert_eq!(first, Response::Kv(KvResult::Put { revision: 1 }));
        // The same request again: the first answer, applied once.
        let again = apply(
            &mut s,
            11,
            idempotent("alice:k1", 1, put("a", "v", None, None)),
        );
        assert_eq!(again, first);
        // The same key with another request: refused, nothing applied, the record kept.
        let other = apply(
            &mut s,
            12,
            idempotent("alice:k1", 2, put("a", "w", None, None)),
        );
        assert_eq!(other, Response::IdempotencyMismatch);
        let delete = Command::Kv(KvCmd::Delete {
            key: "a".into(),
            if_revision: None,
        });
        let other = apply(&mut s, 12, idempotent("alice:k1", 3, delete.clone()));
        assert_eq!(other, Response::IdempotencyMismatch);
        assert_eq!(s.meta.revision, 1);
        assert_eq!(s.get("a").unwrap().unwrap().value, b"v");
        // Another key (another caller's scope) is its own.
        let bob = apply(
            &mut s,
            13,
            idempotent("bob:k1", 2, put("a", "w", None, None)),
        );
        assert_eq!(bob, Response::Kv(KvResult::Put { revision: 2 }));
        // A key of an earlier build, without fingerprint, is another namespace.
        let mut legacy = req(14, delete);
        legacy.idempotency_key = Some("alice:k1".into());
        let mut b = SmBatch::default();
        assert_eq!(
            s.apply(&legacy, &mut b),
            Response::Kv(KvResult::Delete {
                revision: 3,
                deleted: true
            })
        );
        assert_eq!(s.apply(&legacy, &mut b), s.apply(&legacy, &mut b));
        assert_eq!(s.meta.revision, 3);

        // The records and their fingerprints survive a reload (a restart, a snapshot).
        let mut r = State::load(&db).unwrap();
        let mut b = SmBatch::default();
        assert_eq!(
            r.apply(
                &req(15, idempotent("alice:k1", 1, put("a", "v", None, None))),
                &mut b
            ),
            first
        );
        assert_eq!(
            r.apply(&req(15, idempotent("alice:k1", 9, Command::Tick)), &mut b),
            Response::IdempotencyMismatch
        );
        assert_eq!(r.next_deadline_ms(), Some(10 + IDEMPOTENCY_WINDOW_MS));
        // After the window the key is forgotten: a new request may use it.
        let late = 13 + IDEMPOTENCY_WINDOW_MS;
        assert_eq!(
            r.apply(
                &req(late, idempotent("alice:k1", 2, put("a", "w", None, None))),
                &mut b
            ),
            Response::Kv(KvResult::Put { revision: 3 })
        );
    }

    #[test]
    fn a_keyed_command_does_not_nest() {
        // Under a key, in a fence or in a transaction, a keyed command cannot be built, and its
        // encoding is refused as soon as its variant is read.
        let inner = put("a", "v", None, None);
        let keyed = idempotent("k", 1, inner.clone());
        assert!(keyed.clone().keyed().is_err());
        let bytes = codec::encode(&keyed).unwrap();
        assert_eq!(codec::decode::<Command>(&bytes).unwrap(), keyed);
        // The same key over a keyed command instead of the plain one.
        let header = &bytes[..bytes.len() - codec::encode(&inner).unwrap().len()];
        let mut nested = header.to_vec();
        nested.extend(&bytes);
        assert!(codec::decode::<Command>(&nested).is_err());
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
        let (items, more) = s.list("a/", None, 2).unwrap();
        assert_eq!(
            items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        assert!(more);
        let (items, more) = s.list("a/", Some("a/2"), 2).unwrap();
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
    use crate::command::*;

    /// Applies one command stamped `stamp_ms`, without an idempotency key.
    pub(super) fn run(s: &mut State, stamp_ms: u64, command: Command) -> Response {
        s.apply(
            &super::tests::req(stamp_ms, command),
            &mut SmBatch::default(),
        )
    }

    fn acquire(owner: &str, ttl_ms: u64, wait: Option<(&str, u64)>) -> Command {
        Command::Lock(LockCmd::Acquire {
            name: "L".into(),
            owner: owner.into(),
            ttl_ms,
            wait: wait.map(|(id, wait_ms)| LockWait {
                waiter_id: id.into(),
                wait_ms,
            }),
        })
    }

    #[test]
    fn lock_fences_grow_and_waiters_are_served_in_order() {
        let mut s = State::default();
        assert_eq!(
            run(&mut s, 100, acquire("a", 1000, None)),
            Response::Lock(LockResult::Granted {
                fence: 1,
                ttl_ms: 1000
            })
        );
        assert_eq!(
            run(&mut s, 110, acquire("b", 500, None)),
            Response::Lock(LockResult::Held { holder: "a".into() })
        );
        assert_eq!(
            run(&mut s, 120, acquire("b", 500, Some(("wb", 5000)))),
            Response::Lock(LockResult::Queued { holder: "a".into() })
        );
        assert_eq!(
            run(&mut s, 130, acquire("c", 500, Some(("wc", 5000)))),
            Response::Lock(LockResult::Queued { holder: "a".into() })
        );
        // A stale fence cannot release or write.
        assert_eq!(
            run(
                &mut s,
                140,
                Command::Lock(LockCmd::Release {
                    name: "L".into(),
                    fence: 7
                })
            ),
            Response::Lock(LockResult::StaleFence { current: Some(1) })
        );
        assert_eq!(
            run(
                &mut s,
                150,
                Command::Lock(LockCmd::Release {
                    name: "L".into(),
                    fence: 1
                })
            ),
            Response::Lock(LockResult::Released)
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
            command: Box::new(Command::Kv(KvCmd::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                if_revision: None,
                ttl_ms: None,
            })),
        };
        assert_eq!(
            run(&mut s, 700, fenced),
            Response::StaleFence { current: Some(3) }
        );
        assert!(s.get("k").unwrap().is_none());
        // Cancelling a wait that was granted answers the grant.
        assert_eq!(
            run(
                &mut s,
                710,
                Command::Lock(LockCmd::CancelWait {
                    name: "L".into(),
                    waiter_id: "wc".into()
                })
            ),
            Response::Lock(LockResult::Granted {
                fence: 3,
                ttl_ms: 500
            })
        );
        // When everything has expired the lock leaves no record, but fences keep growing.
        run(&mut s, 10_000, Command::Tick);
        assert!(s.lock("L").is_none());
        assert_eq!(
            run(&mut s, 10_001, acquire("d", 10, None)),
            Response::Lock(LockResult::Granted {
                fence: 4,
                ttl_ms: 10
            })
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
                Command::Lock(LockCmd::CancelWait {
                    name: "L".into(),
                    waiter_id: "wb".into()
                })
            ),
            Response::Lock(LockResult::Held { holder: "a".into() })
        );
    }

    #[test]
    fn sessions_slide_and_log_out_everywhere() {
        let mut s = State::default();
        let create = |id: &str, user: &str| {
            Command::Session(SessionCmd::Create {
                id: id.into(),
                user: user.into(),
                data: r#"{"a":1}"#.into(),
                ttl_ms: 1000,
            })
        };
        run(&mut s, 0, create("s1", "u1"));
        run(&mut s, 0, create("s2", "u1"));
        run(&mut s, 0, create("s3", "u2"));
        run(
            &mut s,
            800,
            Command::Session(SessionCmd::Touch { id: "s1".into() }),
        );
        run(
            &mut s,
            800,
            Command::Session(SessionCmd::Touch { id: "s3".into() }),
        );
        run(&mut s, 1000, Command::Tick);
        assert!(s.session("s1").is_some(), "touched: expires at 1800");
        assert!(s.session("s2").is_none(), "untouched: expired at 1000");
        run(
            &mut s,
            1100,
            Command::Session(SessionCmd::Update {
                id: "s1".into(),
                patch: r#"{"b":2}"#.into(),
            }),
        );
        assert_eq!(s.session("s1").unwrap().data, r#"{"a":1,"b":2}"#);
        assert_eq!(s.session("s1").unwrap().expires_at_ms, 2100);
        assert_eq!(
            run(
                &mut s,
                1200,
                Command::Session(SessionCmd::DeleteUser { user: "u1".into() })
            ),
            Response::Session(SessionResult::Deleted(1))
        );
        assert!(s.sessions_of("u1").is_empty());
        assert_eq!(s.sessions_of("u2").len(), 1);
    }

    fn cache_set(key: &str, bytes: usize, tags: &[&str], max_entries: u64) -> Command {
        Command::Cache(CacheCmd::Set {
            key: key.into(),
            value: vec![b'x'; bytes],
            ttl_ms: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            limits: CacheLimits {
                max_entries,
                max_bytes: 100,
            },
        })
    }

    /// The cache's counters are written once per applied batch: a batch of many writes,
    /// some evicting, reloads with the same counts and the same order of eviction.
    #[test]
    fn cache_counters_written_once_per_batch_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let mut batch = SmBatch::default();
        for i in 0..5 {
            s.apply(
                &super::tests::req(1, cache_set(&format!("k{i}"), 10, &[], 3)),
                &mut batch,
            );
        }
        s.persist_meta(&mut batch);
        db.sm_write(batch).unwrap();
        assert_eq!(s.cache_counts().evictions, 2);
        let mut r = State::load(&db).unwrap();
        assert_eq!(r.cache_counts(), s.cache_counts());
        assert_eq!(r.cache_digest(), s.cache_digest());
        // Both evict k2, the oldest write left, on the next write.
        for st in [&mut s, &mut r] {
            st.apply(
                &super::tests::req(2, cache_set("k5", 10, &[], 3)),
                &mut SmBatch::default(),
            );
            assert!(st.cache_get("k2").is_none());
            assert!(st.cache_get("k3").is_some());
        }
        assert_eq!(r.cache_counts(), s.cache_counts());
        // A batch with no cache write leaves the counters' record alone.
        let mut quiet = SmBatch::default();
        s.persist_meta(&mut quiet);
        s.persist_meta(&mut quiet);
        assert_eq!(
            quiet.len(),
            3,
            "the state's own scalars twice, the cache's once"
        );
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
                Command::Cache(CacheCmd::Invalidate {
                    tags: vec!["t2".into(), "t1".into()]
                })
            ),
            Response::Cache(CacheResult::Removed(2))
        );
        assert_eq!(s.cache_counts().entries, 0);
        assert_eq!(s.cache_counts().bytes, 0);
    }

    #[test]
    fn a_rewritten_cache_entry_takes_its_new_tags_and_size() {
        let mut s = State::default();
        let invalidate = |tag: &str| {
            Command::Cache(CacheCmd::Invalidate {
                tags: vec![tag.into()],
            })
        };
        run(&mut s, 0, cache_set("a", 10, &["old", "both"], 10));
        run(&mut s, 0, cache_set("a", 20, &["new", "both"], 10));
        assert_eq!(s.cache_counts().entries, 1);
        assert_eq!(s.cache_counts().bytes, 21);
        assert_eq!(
            run(&mut s, 0, invalidate("old")),
            Response::Cache(CacheResult::Removed(0))
        );
        assert_eq!(s.cache_get("a").unwrap().value.len(), 20);
        assert_eq!(
            run(&mut s, 0, invalidate("both")),
            Response::Cache(CacheResult::Removed(1))
        );
        assert_eq!(s.cache_counts().bytes, 0);
        assert_eq!(
            run(&mut s, 0, invalidate("new")),
            Response::Cache(CacheResult::Removed(0))
        );
    }

    #[test]
    fn txn_applies_one_branch_with_one_revision() {
        let mut s = State::default();
        let put = |k: &str| KvCmd::Put {
            key: k.into(),
            value: b"v".to_vec(),
            if_revision: None,
            ttl_ms: None,
        };
        run(&mut s, 0, put("a").into());
        let txn = |rev: u64| {
            Command::Txn(Txn {
                compare: vec![Compare::Revision {
                    key: "a".into(),
                    revision: rev,
                }],
                success: vec![put("x").into(), put("y").into()],
                failure: vec![put("f").into()],
            })
        };
        match run(&mut s, 0, txn(5)) {
            Response::Txn(TxnResult {
                succeeded,
                revision,
                ..
            }) => assert_eq!((succeeded, revision), (false, 2)),
            other => panic!("{other:?}"),
        }
        assert!(s.get("x").unwrap().is_none() && s.get("y").unwrap().is_none());
        assert_eq!(s.get("f").unwrap().unwrap().revision, 2);
        match run(&mut s, 0, txn(1)) {
            Response::Txn(TxnResult {
                succeeded,
                revision,
                ..
            }) => assert_eq!((succeeded, revision), (true, 3)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.get("x").unwrap().unwrap().revision, 3);
        assert_eq!(s.get("y").unwrap().unwrap().revision, 3);
    }

    #[test]
    fn a_lock_is_released_by_its_owner_only_and_not_after_its_lease() {
        let mut s = State::default();
        let release = |owner: &str| {
            Command::Lock(LockCmd::ReleaseOwned {
                name: "L".into(),
                owner: owner.into(),
            })
        };
        assert!(matches!(
            run(&mut s, 0, acquire("a", 100, None)),
            Response::Lock(LockResult::Granted { .. })
        ));
        assert!(matches!(
            run(&mut s, 10, release("b")),
            Response::Lock(LockResult::StaleFence { current: Some(_) })
        ));
        assert_eq!(
            run(&mut s, 20, release("a")),
            Response::Lock(LockResult::Released)
        );
        assert!(s.lock("L").is_none_or(|e| e.holder.is_none()));
        // Past its lease, the owner no longer holds it.
        run(&mut s, 30, acquire("a", 100, None));
        assert!(matches!(
            run(&mut s, 200, release("a")),
            Response::Lock(LockResult::StaleFence { .. })
        ));
    }

    const BIG: CacheLimits = CacheLimits {
        max_entries: 100,
        max_bytes: 10_000,
    };

    fn set_if(key: &str, value: &str, ttl: CacheTtl, only: Option<CacheCond>) -> Command {
        Command::Cache(CacheCmd::SetIf {
            key: key.into(),
            value: value.into(),
            ttl,
            only,
            return_previous: true,
            limits: BIG,
        })
    }

    fn written(written: bool, previous: Option<&str>) -> Response {
        Response::Cache(CacheResult::Written {
            written,
            previous: previous.map(|p| serde_bytes::ByteBuf::from(p.as_bytes().to_vec())),
        })
    }

    fn incr(key: &str, by: i64) -> Command {
        Command::Cache(CacheCmd::Incr {
            key: key.into(),
            by,
            limits: BIG,
        })
    }

    #[test]
    fn cache_conditional_sets_keep_or_replace_the_ttl() {
        let mut s = State::default();
        let absent = Some(CacheCond::Absent);
        let present = Some(CacheCond::Present);
        assert_eq!(
            run(&mut s, 0, set_if("k", "a", CacheTtl::None, present)),
            written(false, None)
        );
        assert!(s.cache_get("k").is_none());
        assert_eq!(
            run(&mut s, 0, set_if("k", "a", CacheTtl::In(100), absent)),
            written(true, None)
        );
        assert_eq!(
            run(&mut s, 10, set_if("k", "b", CacheTtl::None, absent)),
            written(false, Some("a"))
        );
        assert_eq!(s.cache_get("k").unwrap().value, &b"a"[..]);
        // KEEPTTL keeps the expiry of the entry it replaces.
        assert_eq!(
            run(&mut s, 20, set_if("k", "c", CacheTtl::Keep, present)),
            written(true, Some("a"))
        );
        assert_eq!(s.cache_get("k").unwrap().expires_at_ms, Some(100));
        // Past its TTL the entry counts as absent, before the expiry pass removes it.
        assert_eq!(
            run(&mut s, 150, set_if("k", "d", CacheTtl::At(500), absent)),
            written(true, None)
        );
        assert_eq!(s.cache_get("k").unwrap().expires_at_ms, Some(500));
        assert_eq!(
            run(&mut s, 160, set_if("k", "e", CacheTtl::None, None)),
            written(true, Some("d"))
        );
        assert_eq!(s.cache_get("k").unwrap().expires_at_ms, None);
        // An expiry time already past: written and gone at once, holding nothing.
        assert_eq!(
            run(&mut s, 170, set_if("k", "f", CacheTtl::At(100), None)),
            written(true, Some("e"))
        );
        assert!(s.cache_get("k").is_none());
        assert_eq!(s.cache_counts().entries, 0);
    }

    #[test]
    fn cache_counters_are_atomic_and_refuse_what_is_not_an_integer() {
        let mut s = State::default();
        assert_eq!(
            run(&mut s, 0, incr("n", 5)),
            Response::Cache(CacheResult::Counter(5))
        );
        assert_eq!(
            run(&mut s, 0, incr("n", -7)),
            Response::Cache(CacheResult::Counter(-2))
        );
        assert_eq!(s.cache_get("n").unwrap().value, &b"-2"[..]);
        run(
            &mut s,
            0,
            set_if("m", &i64::MAX.to_string(), CacheTtl::In(50), None),
        );
        assert_eq!(
            run(&mut s, 0, incr("m", 1)),
            Response::Cache(CacheResult::Overflow)
        );
        assert_eq!(
            run(&mut s, 0, incr("m", -1)),
            Response::Cache(CacheResult::Counter(i64::MAX - 1))
        );
        // A counter keeps its TTL.
        assert_eq!(s.cache_get("m").unwrap().expires_at_ms, Some(50));
        for bad in ["x", " 1", "01", "+1", "1.5", ""] {
            run(&mut s, 0, set_if("b", bad, CacheTtl::None, None));
            assert_eq!(
                run(&mut s, 0, incr("b", 1)),
                Response::Cache(CacheResult::NotInteger),
                "{bad:?}"
            );
            assert_eq!(s.cache_get("b").unwrap().value, bad.as_bytes());
        }
    }

    #[test]
    fn cache_expire_and_compare_and_delete() {
        let mut s = State::default();
        let expire = |ttl_ms| {
            Command::Cache(CacheCmd::Expire {
                key: "k".into(),
                ttl_ms,
            })
        };
        assert_eq!(
            run(&mut s, 0, expire(Some(10))),
            Response::Cache(CacheResult::Touched(false))
        );
        run(&mut s, 0, set_if("k", "owner-1", CacheTtl::In(100), None));
        assert_eq!(
            run(&mut s, 50, expire(Some(1000))),
            Response::Cache(CacheResult::Touched(true))
        );
        assert_eq!(s.cache_get("k").unwrap().expires_at_ms, Some(1050));
        assert_eq!(
            run(&mut s, 60, expire(None)),
            Response::Cache(CacheResult::Touched(true))
        );
        assert_eq!(s.cache_get("k").unwrap().expires_at_ms, None);
        assert_eq!(
            run(&mut s, 60, expire(None)),
            Response::Cache(CacheResult::Touched(false))
        );
        // The old deadline is gone: the entry outlives it.
        run(&mut s, 2000, Command::Tick);
        assert!(s.cache_get("k").is_some());
        let del_if = |v: &str| {
            Command::Cache(CacheCmd::DeleteIfEq {
                key: "k".into(),
                value: v.into(),
            })
        };
        assert_eq!(
            run(&mut s, 2000, del_if("owner-2")),
            Response::Cache(CacheResult::Removed(0))
        );
        assert!(s.cache_get("k").is_some());
        assert_eq!(
            run(&mut s, 2000, del_if("owner-1")),
            Response::Cache(CacheResult::Removed(1))
        );
        assert!(s.cache_get("k").is_none());
    }
}

#[cfg(test)]
mod queue_tests {
    use super::primitive_tests::run;
    use super::*;
    use crate::command::*;

    fn enqueue(payload: &str, priority: i64, delay_ms: Option<u64>) -> Command {
        Command::Queue(QueueCmd::Enqueue {
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
        })
    }

    fn claim(s: &mut State, now: u64, max: u32) -> Vec<Claimed> {
        match run(
            s,
            now,
            Command::Queue(QueueCmd::Claim {
                queue: "q".into(),
                worker: "w".into(),
                max,
                visibility_ms: 1000,
            }),
        ) {
            Response::Queue(QueueResult::Claimed(c)) => c,
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
                Command::Queue(QueueCmd::Ack {
                    id: c.id,
                    lease: c.lease + 1
                })
            ),
            Response::Queue(QueueResult::StaleLease {
                current: Some(c.lease)
            })
        );
        run(
            &mut s,
            10,
            Command::Queue(QueueCmd::Nack {
                id: c.id,
                lease: c.lease,
                error: Some("boom".into()),
                retry_in_ms: None,
            }),
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
                Command::Queue(QueueCmd::Ack {
                    id: c2.id,
                    lease: c2.lease
                })
            ),
            Response::Queue(QueueResult::StaleLease { current: None })
        ));
        assert_eq!(
            run(
                &mut s,
                1300,
                Command::Queue(QueueCmd::Replay {
                    queue: "q".into(),
                    ids: None
                })
            ),
            Response::Queue(QueueResult::Count(1))
        );
        let c3 = claim(&mut s, 1300, 1).remove(0);
        assert_eq!(c3.attempt, 1);
        run(
            &mut s,
            1301,
            Command::Queue(QueueCmd::Ack {
                id: c3.id,
                lease: c3.lease,
            }),
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
                Command::Queue(QueueCmd::ScheduleSet {
                    queue: "q".into(),
                    name: "tick".into(),
                    spec: every_second,
                })
            ),
            Response::Queue(QueueResult::Scheduled { next_at_ms: 11_000 })
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
                Command::Queue(QueueCmd::ScheduleSet {
                    queue: "q".into(),
                    name: "bad".into(),
                    spec: ScheduleSpec {
                        cron: "61 * * * *".into(),
                        payload: "{}".into(),
                        priority: 0,
                        max_attempts: 1,
                    },
                })
            ),
            Response::Queue(QueueResult::Rejected(_))
        ));
    }

    #[test]
    fn unique_keys_answer_the_queued_job() {
        let mut s = State::default();
        let mut e = enqueue("1", 0, None);
        if let Command::Queue(QueueCmd::Enqueue { job, .. }) = &mut e {
            job.unique_key = Some("u".into());
        }
        let first = run(&mut s, 0, e.clone());
        let Response::Queue(QueueResult::Enqueued { id, existing }) = first else {
            panic!()
        };
        assert!(!existing);
        assert_eq!(
            run(&mut s, 0, e.clone()),
            Response::Queue(QueueResult::Enqueued { id, existing: true })
        );
        let c = claim(&mut s, 0, 1).remove(0);
        run(
            &mut s,
            0,
            Command::Queue(QueueCmd::Ack {
                id: c.id,
                lease: c.lease,
            }),
        );
        assert!(matches!(
            run(&mut s, 0, e),
            Response::Queue(QueueResult::Enqueued {
                existing: false,
                ..
            })
        ));
    }
}

#[cfg(test)]
mod persistence_tests {
    use super::tests::put;
    use super::*;
    use crate::command::*;

    /// Everything apply writes through to RocksDB is enough to rebuild the same state: what a
    /// restart, or a follower installing a snapshot, relies on.
    #[test]
    fn a_reloaded_state_answers_like_the_one_that_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let commands = vec![
            Command::Kv(KvCmd::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                if_revision: None,
                ttl_ms: Some(60_000),
            }),
            Command::Lock(LockCmd::Acquire {
                name: "L".into(),
                owner: "a".into(),
                ttl_ms: 5_000,
                wait: None,
            }),
            Command::Lock(LockCmd::Acquire {
                name: "L".into(),
                owner: "b".into(),
                ttl_ms: 5_000,
                wait: Some(LockWait {
                    waiter_id: "wb".into(),
                    wait_ms: 9_000,
                }),
            }),
            Command::Session(SessionCmd::Create {
                id: "s1".into(),
                user: "u".into(),
                data: "{}".into(),
                ttl_ms: 60_000,
            }),
            Command::Cache(CacheCmd::Set {
                key: "c".into(),
                value: b"x".to_vec(),
                ttl_ms: None,
                tags: vec!["t".into()],
                limits: CacheLimits {
                    max_entries: 10,
                    max_bytes: 1000,
                },
            }),
            Command::Queue(QueueCmd::Enqueue {
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
            }),
            Command::Queue(QueueCmd::Enqueue {
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
            }),
            Command::Queue(QueueCmd::Claim {
                queue: "q".into(),
                worker: "w".into(),
                max: 1,
                visibility_ms: 1_000,
            }),
            Command::Queue(QueueCmd::ScheduleSet {
                queue: "q".into(),
                name: "cron".into(),
                spec: ScheduleSpec {
                    cron: "0 * * * *".into(),
                    payload: "null".into(),
                    priority: 0,
                    max_attempts: 1,
                },
            }),
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
        assert_eq!(r.get("k").unwrap(), s.get("k").unwrap());
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
                    command: Command::Lock(LockCmd::Acquire {
                        name: "M".into(),
                        owner: "c".into(),
                        ttl_ms: 10,
                        wait: None,
                    }),
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
            Command::Kv(KvCmd::Delete {
                key: "a/1".into(),
                if_revision: None,
            }),
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
            apply(&mut s, 21, Command::Kv(KvCmd::Compact { revision: 3 })),
            Response::Kv(KvResult::Compacted {
                compact_revision: 3
            })
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
            apply(&mut s, 22, Command::Kv(KvCmd::Compact { revision: 99 })),
            Response::Kv(KvResult::Compacted {
                compact_revision: 5
            })
        );
        assert_eq!(
            apply(&mut s, 23, Command::Kv(KvCmd::Compact { revision: 1 })),
            Response::Kv(KvResult::Compacted {
                compact_revision: 5
            })
        );
        assert_eq!(s.kv_history_len(), 0);
        apply(&mut s, 24, put("a/3", "w", None, None)); // rev 6

        let r = State::load(&db).unwrap();
        assert_eq!(r.compact_revision(), 5);
        assert_eq!(r.kv_events_since("", 6, 10), s.kv_events_since("", 6, 10));
        assert_eq!(r.kv_history_len(), 1);
    }
}

/// The key-value history holds its index in memory and reads its values from the store.
#[cfg(test)]
mod history_store_tests {
    use super::*;
    use crate::command::*;

    fn request(stamp_ms: u64, command: Command) -> Request {
        Request {
            stamp_ms,
            idempotency_key: None,
            command,
        }
    }

    #[test]
    fn history_values_are_read_from_the_store_once_written_and_held_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::load(&db).unwrap();
        let big = "v".repeat(100_000);
        let mut batch = SmBatch::default();
        // Revisions 1 and 2.
        let small = tests::put("a/2", "small", None, None);
        s.apply(&request(1, tests::put("a/1", &big, None, None)), &mut batch);
        s.apply(&request(2, small), &mut batch);
        // Applied but not written yet: the values are held, and served.
        let seen = s.kv_events_since("a/", 1, 10).unwrap();
        assert_eq!(seen[0].value.as_deref(), Some(big.as_bytes()));
        s.persist_meta(&mut batch);
        db.sm_write(batch).unwrap();
        s.written();
        let events = s.kv_events_since("a/", 1, 10).unwrap();
        let values: Vec<_> = events.iter().map(|e| e.value.clone()).collect();
        assert_eq!(
            values,
            vec![Some(big.clone().into_bytes()), Some(b"small".to_vec())]
        );

        // Written: the values are read from the store, not memory. A value the store lost
        // ends the history there, as a compaction does.
        let mut gone = SmBatch::default();
        gone.delete(kv::history_key(1, "a/1"));
        db.sm_write(gone).unwrap();
        assert_eq!(
            s.kv_events_since("a/", 1, 10),
            Err(Compacted {
                compact_revision: 1
            })
        );
        assert_eq!(s.kv_events_since("a/", 2, 10).unwrap().len(), 1);

        // Deletes have no value to read; a state reloaded reads the same history.
        let mut batch = SmBatch::default();
        let del = Command::Kv(KvCmd::Delete {
            key: "a/2".into(),
            if_revision: None,
        });
        s.apply(&request(3, del), &mut batch); // rev 3
        s.persist_meta(&mut batch);
        db.sm_write(batch).unwrap();
        s.written();
        let reloaded = State::load(&db).unwrap();
        assert_eq!(
            reloaded.kv_events_since("", 2, 10),
            s.kv_events_since("", 2, 10)
        );
        assert_eq!(reloaded.kv_events_since("", 2, 10).unwrap().len(), 2);
    }

    #[test]
    fn current_values_are_read_from_the_store_once_written_and_held_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::load(&db).unwrap();
        let big = "b".repeat(100_000);
        let write = |s: &mut State, stamp: u64, commands: Vec<Command>| {
            let mut batch = SmBatch::default();
            for c in commands {
                s.apply(&request(stamp, c), &mut batch);
            }
            batch
        };
        let mut batch = write(
            &mut s,
            1,
            vec![
                tests::put("k/1", &big, None, None),
                tests::put("k/2", "two", None, None),
                tests::put("k/1", "one", None, None),
            ],
        );
        // Applied but not written: the latest value of each key is held, and served.
        assert_eq!(s.get("k/1").unwrap().unwrap().value, b"one");
        let (items, more) = s.list("k/", None, 10).unwrap();
        assert!(!more);
        let listed: Vec<_> = items
            .iter()
            .map(|(k, e)| (k.as_str(), e.value.as_slice()))
            .collect();
        assert_eq!(listed, [("k/1", &b"one"[..]), ("k/2", &b"two"[..])]);
        s.persist_meta(&mut batch);
        db.sm_write(batch).unwrap();
        s.written();

        // Written: read from the store, with the same revisions; deletes need no read.
        let one = s.get("k/1").unwrap().unwrap();
        assert_eq!(
            (one.value.as_slice(), one.revision, one.create_revision),
            (&b"one"[..], 3, 1)
        );
        assert_eq!(s.list("k/", None, 10).unwrap().0.len(), 2);
        let mut batch = write(
            &mut s,
            2,
            vec![Command::Kv(KvCmd::Delete {
                key: "k/2".into(),
                if_revision: None,
            })],
        );
        assert_eq!(s.get("k/2").unwrap(), None);
        assert_eq!(s.kv_revision("k/1"), 3);
        s.persist_meta(&mut batch);
        db.sm_write(batch).unwrap();
        s.written();

        // The quota counts the values held in the store, and a reload counts the same.
        let reloaded = State::load(&db).unwrap();
        assert_eq!(reloaded.data_bytes(), s.data_bytes());
        assert_eq!(s.data_bytes(), ("k/1".len() + "one".len()) as u64);
        assert_eq!(reloaded.get("k/1").unwrap(), s.get("k/1").unwrap());

        // A stored record at another revision than the state's (a snapshot being installed
        // under it) is refused, never served as the state's value; a value read before at the
        // state's revision is still the state's, and served from memory.
        let unread = State::load(&db).unwrap();
        let mut other = SmBatch::default();
        let entry = KvEntry {
            value: b"someone else's".to_vec(),
            revision: 99,
            create_revision: 99,
            expires_at_ms: None,
        };
        put_record(&mut other, prefixed(kv::PREFIX, "k/1"), &entry);
        db.sm_write(other).unwrap();
        assert!(matches!(unread.get("k/1"), Err(KvReadError::Replaced)));
        assert!(matches!(
            unread.list("k/", None, 10),
            Err(KvReadError::Replaced)
        ));
        let held = s.get("k/1").unwrap().unwrap();
        assert_eq!((held.value.as_slice(), held.revision), (&b"one"[..], 3));
    }

    #[test]
    fn a_value_read_lately_is_served_only_at_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::load(&db).unwrap();
        let mut stamp = 0;
        let mut apply = |s: &mut State, c: Command| {
            stamp += 1;
            let mut batch = SmBatch::default();
            s.apply(&request(stamp, c), &mut batch);
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
            s.written();
        };
        let value = |s: &State| s.get("k").unwrap().map(|e| (e.value, e.revision));
        apply(&mut s, tests::put("k", "first", None, None));
        // Read once from the store (and kept), then again (from memory): the same answer.
        assert_eq!(value(&s), Some((b"first".to_vec(), 1)));
        assert_eq!(value(&s), Some((b"first".to_vec(), 1)));
        // Overwritten: the value kept at the old revision is not served.
        apply(&mut s, tests::put("k", "second", None, None));
        assert_eq!(value(&s), Some((b"second".to_vec(), 2)));
        // Deleted, then written again with the first value's bytes: a new revision.
        let delete = Command::Kv(KvCmd::Delete {
            key: "k".into(),
            if_revision: None,
        });
        apply(&mut s, delete);
        assert_eq!(value(&s), None);
        apply(&mut s, tests::put("k", "first", None, None));
        assert_eq!(value(&s), Some((b"first".to_vec(), 4)));
        assert_eq!(value(&s), Some((b"first".to_vec(), 4)));
        // A page of keys mixes values read lately with values read from the store.
        apply(&mut s, tests::put("l", "other", None, None));
        let (items, _) = s.list("", None, 10).unwrap();
        let listed: Vec<_> = items
            .iter()
            .map(|(k, e)| (k.as_str(), e.value.as_slice(), e.revision))
            .collect();
        assert_eq!(listed, [("k", &b"first"[..], 4), ("l", &b"other"[..], 5)]);
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;
    use crate::command::*;

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
                Command::Cluster(ClusterCmd::JoinTokenCreate {
                    token_sha256: "old".into(),
                    expires_at_ms: 2 * day,
                }),
            ),
            (
                2_000,
                Command::Cluster(ClusterCmd::JoinTokenCreate {
                    token_sha256: "new".into(),
                    expires_at_ms: 20 * day,
                }),
            ),
            (3_000, Command::Cluster(ClusterCmd::NodeRemoved { id: 3 })),
            (4_000, Command::Cluster(ClusterCmd::NodeRemoved { id: 3 })),
            (5_000, Command::Cluster(ClusterCmd::AllocateNodeId)),
        ];
        for (stamp, command) in commands {
            let mut batch = SmBatch::default();
            s.apply(&tests::req(stamp, command), &mut batch);
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
        }
        assert_eq!(s.security().join_tokens.len(), 2);
        assert_eq!(
            s.security()
                .removed_nodes
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![3]
        );
        let r = State::load(&db).unwrap();
        assert_eq!(r.security(), s.security());

        // A token expired longer than EXPIRED_TOKEN_KEPT_MS is forgotten when the next one is
        // made; the other stays.
        let later = 2 * day + EXPIRED_TOKEN_KEPT_MS + 1;
        let mut batch = SmBatch::default();
        s.apply(
            &tests::req(
                later,
                Command::Cluster(ClusterCmd::JoinTokenCreate {
                    token_sha256: "third".into(),
                    expires_at_ms: later + day,
                }),
            ),
            &mut batch,
        );
        let names: Vec<&str> = s
            .security()
            .join_tokens
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names, vec!["new", "third"]);
    }

    #[test]
    fn node_keys_are_pinned_at_founding_and_admission_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let run = |s: &mut State, stamp: u64, command: ClusterCmd| {
            let mut batch = SmBatch::default();
            let r = s.apply(&tests::req(stamp, command.into()), &mut batch);
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
            r
        };
        let found = |key: u8| ClusterCmd::Found {
            cluster_id: "c1".into(),
            join_token_sha256: "t".into(),
            node_key_sha256: [key; 32],
        };
        assert_eq!(
            run(&mut s, 1, found(1)),
            Response::Cluster(ClusterResult::Done)
        );
        let admit = |key: u8| ClusterCmd::AdmitNode {
            key_sha256: [key; 32],
        };
        assert_eq!(
            run(&mut s, 2, admit(2)),
            Response::Cluster(ClusterResult::NodeId(2))
        );
        assert_eq!(
            run(&mut s, 3, admit(3)),
            Response::Cluster(ClusterResult::NodeId(3))
        );
        // Founding again changes nothing: node 1 keeps its key.
        assert_eq!(
            run(&mut s, 4, found(9)),
            Response::Cluster(ClusterResult::AlreadyInitialized)
        );
        run(&mut s, 5, ClusterCmd::NodeRemoved { id: 3 });
        let keys = &s.security().node_keys;
        assert_eq!(keys.len(), 3);
        assert_eq!((keys[&1], keys[&2], keys[&3]), ([1; 32], [2; 32], [3; 32]));
        assert_eq!(s.meta.cluster_id.as_deref(), Some("c1"));
        let r = State::load(&db).unwrap();
        assert_eq!(r.security(), s.security());
        // Ids are never reused: the next one is 4.
        assert_eq!(
            run(&mut s, 6, admit(4)),
            Response::Cluster(ClusterResult::NodeId(4))
        );
        // A restore into a new cluster keeps none of them.
        assert_eq!(
            export::import(NODE_KEYS_KEY, &db.sm_get(NODE_KEYS_KEY).unwrap().unwrap()).unwrap(),
            None
        );
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
            Command::Cluster(ClusterCmd::Init {
                cluster_id: "c1".into(),
                join_token_sha256: founding.clone(),
            }),
        );
        run(
            &mut s,
            2_000,
            Command::Cluster(ClusterCmd::JoinTokenCreate {
                token_sha256: created.clone(),
                expires_at_ms: day,
            }),
        );
        let revoke = |id: &str| {
            Command::Cluster(ClusterCmd::JoinTokenRevoke {
                token_id: id.into(),
            })
        };
        assert!(matches!(
            run(&mut s, 3_000, revoke("0123456789abcdef")),
            Response::Cluster(ClusterResult::NotFound)
        ));
        assert!(matches!(
            run(&mut s, 4_000, revoke(token_id(&created))),
            Response::Cluster(ClusterResult::Done)
        ));
        assert!(s.security().join_tokens.is_empty());
        assert!(matches!(
            run(&mut s, 5_000, revoke(token_id(&founding))),
            Response::Cluster(ClusterResult::Done)
        ));
        assert_eq!(s.meta.join_token_sha256, None);
        assert_eq!(
            s.security().revoked_tokens,
            std::collections::BTreeMap::from([(created.clone(), 4_000), (founding.clone(), 5_000)])
        );
        // Revoking again finds nothing: a revoked token is gone from both places.
        assert!(matches!(
            run(&mut s, 6_000, revoke(token_id(&created))),
            Response::Cluster(ClusterResult::NotFound)
        ));

        let r = State::load(&db).unwrap();
        assert_eq!(r.security(), s.security());
        assert_eq!(r.security().revoked_tokens.len(), 2);
        assert_eq!(r.meta.join_token_sha256, None);
    }
}

#[cfg(test)]
mod channel_tests {
    use super::primitive_tests::run;
    use super::*;
    use crate::command::*;

    fn publish(channel: &str, data: &str, max_events: u64, max_age_ms: u64) -> Command {
        Command::Channel(ChannelCmd::Publish {
            channel: channel.into(),
            data: data.into(),
            retention: ChannelRetention {
                max_events,
                max_age_ms,
            },
        })
    }

    #[test]
    fn offsets_grow_per_channel_and_history_keeps_the_newest() {
        let mut s = State::default();
        s.set_emit_live(true);
        for i in 1..=5u64 {
            assert_eq!(
                run(&mut s, i, publish("a", &i.to_string(), 3, 60_000)),
                Response::Channel(ChannelResult::Published { offset: i })
            );
        }
        assert_eq!(
            run(&mut s, 9, publish("b", "1", 3, 60_000)),
            Response::Channel(ChannelResult::Published { offset: 1 })
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
            Response::Channel(ChannelResult::Published { offset: 3 })
        );
    }

    fn join(channel: &str, client: &str, node_id: u64, incarnation: u64) -> Command {
        Command::Channel(ChannelCmd::PresenceJoin {
            channel: channel.into(),
            client_id: client.into(),
            user: format!("user-{client}"),
            node_id,
            incarnation,
            lease_ms: 1_000,
        })
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
            Command::Channel(ChannelCmd::PresenceHeartbeat {
                node_id: 1,
                incarnation: 11,
                lease_ms: 1_000,
            }),
        );
        run(
            &mut s,
            900,
            Command::Channel(ChannelCmd::PresenceHeartbeat {
                node_id: 2,
                incarnation: 22,
                lease_ms: 1_000,
            }),
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
            Command::Channel(ChannelCmd::PresenceHeartbeat {
                node_id: 2,
                incarnation: 23,
                lease_ms: 1_000,
            }),
        );
        assert_eq!(s.presence("room").len(), 1);
        assert_eq!(
            run(
                &mut s,
                1_100,
                Command::Channel(ChannelCmd::PresenceLeave {
                    channel: "room".into(),
                    client_id: "c1".into(),
                    node_id: 1
                })
            ),
            Response::Channel(ChannelResult::Left(1))
        );
        assert!(s.presence("room").is_empty());
    }

    #[test]
    fn only_an_idle_channel_is_deleted_and_stays_deleted_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut s = State::default();
        let delete = || {
            Command::Channel(ChannelCmd::Delete {
                channel: "a".into(),
            })
        };
        let apply = |s: &mut State, now: u64, cmd: Command| {
            let mut batch = SmBatch::default();
            let r = s.apply(&tests::req(now, cmd), &mut batch);
            s.persist_meta(&mut batch);
            db.sm_write(batch).unwrap();
            r
        };
        assert_eq!(
            apply(&mut s, 0, delete()),
            Response::Channel(ChannelResult::NotFound)
        );
        apply(&mut s, 0, publish("a", "1", 10, 500));
        apply(&mut s, 0, join("a", "c1", 1, 7));
        assert_eq!(
            apply(&mut s, 100, delete()),
            Response::Channel(ChannelResult::NotIdle {
                present: 1,
                retained: 1
            })
        );
        // The event ages out at 500; the client is still there.
        assert_eq!(
            apply(&mut s, 600, delete()),
            Response::Channel(ChannelResult::NotIdle {
                present: 1,
                retained: 0
            })
        );
        apply(
            &mut s,
            700,
            Command::Channel(ChannelCmd::PresenceLeave {
                channel: "a".into(),
                client_id: "c1".into(),
                node_id: 1,
            }),
        );
        assert_eq!(
            apply(&mut s, 800, delete()),
            Response::Channel(ChannelResult::Deleted)
        );
        assert_eq!(s.channel_history("a", 0, 10), None);
        let reloaded = State::load(&db).unwrap();
        assert_eq!(
            reloaded.channel_history("a", 0, 10),
            None,
            "the deletion is durable"
        );
        assert_eq!(
            apply(&mut s, 900, publish("a", "2", 10, 500)),
            Response::Channel(ChannelResult::Published { offset: 1 })
        );
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

#[cfg(test)]
mod quota_tests {
    use super::*;
    use crate::command::*;

    fn put(key: &str, len: usize) -> Command {
        Command::Kv(KvCmd::Put {
            key: key.into(),
            value: vec![7; len],
            if_revision: None,
            ttl_ms: None,
        })
    }

    #[test]
    fn growth_is_refused_at_the_quota_the_same_on_every_replica_and_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let entries = [
            Command::Cluster(ClusterCmd::SetLimits(ClusterLimits {
                quota_bytes: 250,
                ..Default::default()
            })),
            put("a", 99), // 100 bytes
            put("b", 99), // 200
            put("a", 49), // an overwrite: 150
            put("c", 99), // 250: the quota is reached by this write
            put("d", 1),  // refused
            Command::Kv(KvCmd::Delete {
                key: "b".into(),
                if_revision: None,
            }), // 150
            put("e", 9),  // 160: accepted again
        ];
        let mut replicas = [State::default(), State::default()];
        let mut answers = [Vec::new(), Vec::new()];
        for (i, command) in entries.iter().enumerate() {
            for (r, s) in replicas.iter_mut().enumerate() {
                let mut batch = SmBatch::default();
                let req = Request {
                    stamp_ms: 1_000 + i as u64,
                    idempotency_key: None,
                    command: command.clone(),
                };
                answers[r].push(s.apply(&req, &mut batch));
                if r == 0 {
                    s.persist_meta(&mut batch);
                    db.sm_write(batch).unwrap();
                }
            }
        }
        assert_eq!(answers[0], answers[1], "replicas decide alike");
        assert_eq!(
            answers[0][5],
            Response::QuotaExceeded {
                used_bytes: 250,
                quota_bytes: 250
            }
        );
        assert!(matches!(answers[0][7], Response::Kv(KvResult::Put { .. })));
        let s = &replicas[0];
        assert_eq!(
            (s.data_bytes(), s.quota_bytes(), s.nospace()),
            (160, 250, false)
        );
        let reloaded = State::load(&db).unwrap();
        assert_eq!(reloaded.data_bytes(), 160, "recounted from the records");
        assert_eq!(reloaded.quota_bytes(), 250);
    }

    #[test]
    fn only_commands_that_grow_the_state_are_refused() {
        let mut s = State::default();
        let run = |s: &mut State, command: Command| {
            s.apply(&super::tests::req(1_000, command), &mut SmBatch::default())
        };
        let limits = ClusterLimits {
            quota_bytes: 10,
            ..Default::default()
        };
        run(&mut s, Command::Cluster(ClusterCmd::SetLimits(limits)));
        run(&mut s, put("k", 20));
        assert!(s.nospace());
        let refused = |r: &Response| matches!(r, Response::QuotaExceeded { .. });
        assert!(refused(&run(&mut s, put("k2", 1))));
        let txn = Command::Txn(Txn {
            compare: vec![],
            success: vec![Command::Kv(KvCmd::Put {
                key: "t".into(),
                value: vec![1],
                if_revision: None,
                ttl_ms: None,
            })],
            failure: vec![],
        });
        assert!(refused(&run(&mut s, txn)));
        for passes in [
            Command::Tick,
            Command::Kv(KvCmd::Compact { revision: 1 }),
            Command::Kv(KvCmd::Delete {
                key: "k".into(),
                if_revision: None,
            }),
        ] {
            assert!(!refused(&run(&mut s, passes)));
        }
        assert!(!s.nospace());
    }
}
