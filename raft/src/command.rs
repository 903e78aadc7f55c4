//! The replicated commands and their results.
//!
//! Persisted in the Raft log: append enum variants only, never reorder or remove them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One proposal: a command stamped with the proposing leader's wall clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The leader's wall clock (ms since the Unix epoch) when it proposed this entry. Apply
    /// advances the replicated clock to `max(previous, stamp_ms)`.
    pub stamp_ms: u64,
    /// `Idempotency-Key` of the client request: a retried write with the same key is answered
    /// from the first result and applied once.
    pub idempotency_key: Option<String>,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a new cluster, proposed once by the node that initialized it.
    InitCluster {
        cluster_id: String,
        join_token_sha256: String,
    },
    /// Allocates the next node id; ids are never reused.
    AllocateNodeId,
    /// Writes a key. `if_revision`: apply only if the key's revision is this (0 = absent).
    Put {
        key: String,
        value: Vec<u8>,
        if_revision: Option<u64>,
        ttl_ms: Option<u64>,
    },
    /// Deletes a key, optionally only if its revision matches.
    Delete {
        key: String,
        if_revision: Option<u64>,
    },
    /// Advances the replicated clock so due deadlines (TTL keys, idempotency records) expire.
    Tick,
    /// Grants lock `name` to `owner` for `ttl_ms` if it is free; otherwise queues the caller
    /// when `wait` is given (waiters are served in log order), or answers who holds it.
    LockAcquire {
        name: String,
        owner: String,
        ttl_ms: u64,
        wait: Option<LockWait>,
    },
    /// Withdraws a queued acquire whose caller stopped waiting. If the lock was granted to it
    /// in the meantime, the answer is that grant.
    LockCancelWait {
        name: String,
        waiter_id: String,
    },
    /// Extends the lease of the holder with `fence` to `ttl_ms` from now.
    LockRenew {
        name: String,
        fence: u64,
        ttl_ms: u64,
    },
    /// Releases the lock held with `fence`; the next waiter, if any, is granted it.
    LockRelease {
        name: String,
        fence: u64,
    },
    /// Applies `command` only while lock `lock` is held with fence `fence`.
    Fenced {
        lock: String,
        fence: u64,
        command: Box<Command>,
    },
    /// Creates a session. `id` is drawn by the proposer (unguessable) and carried here.
    SessionCreate {
        id: String,
        user: String,
        /// JSON object text.
        data: String,
        ttl_ms: u64,
    },
    /// Slides a session's expiry to `ttl_ms` from now.
    SessionTouch {
        id: String,
    },
    /// Merges `patch` (JSON object text, RFC 7396 merge patch) into the session data and
    /// slides its expiry.
    SessionUpdate {
        id: String,
        patch: String,
    },
    SessionDelete {
        id: String,
    },
    /// Deletes every session of `user` (log out everywhere).
    SessionDeleteUser {
        user: String,
    },
    /// Stores a cache entry. The bounds travel in the entry so every replica evicts the same
    /// entries, whatever its own configuration says.
    CacheSet {
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        tags: Vec<String>,
        limits: CacheLimits,
    },
    CacheDelete {
        key: String,
    },
    /// Removes every cache entry carrying any of `tags`.
    CacheInvalidate {
        tags: Vec<String>,
    },
    /// Applies `success` if every compare holds, else `failure`; all key-value changes of the
    /// transaction share one revision.
    Txn(Txn),
    QueueEnqueue {
        queue: String,
        job: Enqueue,
    },
    /// Claims up to `max` ready jobs, each with a new lease for `visibility_ms`.
    QueueClaim {
        queue: String,
        worker: String,
        max: u32,
        visibility_ms: u64,
    },
    JobAck {
        id: u64,
        lease: u64,
    },
    JobNack {
        id: u64,
        lease: u64,
        error: Option<String>,
        retry_in_ms: Option<u64>,
    },
    JobExtend {
        id: u64,
        lease: u64,
        visibility_ms: u64,
    },
    /// Moves dead jobs (these ids, or all with `None`) back to ready with fresh attempts.
    QueueReplay {
        queue: String,
        ids: Option<Vec<u64>>,
    },
    ScheduleSet {
        queue: String,
        name: String,
        spec: ScheduleSpec,
    },
    ScheduleDelete {
        queue: String,
        name: String,
    },
    /// Drops key-value history at or below `revision` (capped at the current revision).
    KvCompact {
        revision: u64,
    },
    /// Records a join token (by its SHA-256) that admits nodes until `expires_at_ms` (on the
    /// proposer's clock when the token was made).
    JoinTokenCreate {
        token_sha256: String,
        expires_at_ms: u64,
    },
    /// Records that node `id` was removed: its certificate is refused from now on.
    NodeRemoved {
        id: u64,
    },
    /// Appends an event (JSON text) to a channel's history under the next offset. The
    /// retention travels in the entry so every replica trims the same events, whatever its
    /// own configuration says.
    ChannelPublish {
        channel: String,
        data: String,
        retention: ChannelRetention,
    },
    /// A client connected to node `node_id` is present on `channel`. Renews the node's
    /// presence lease like [`Command::PresenceHeartbeat`].
    PresenceJoin {
        channel: String,
        client_id: String,
        user: String,
        node_id: u64,
        incarnation: u64,
        lease_ms: u64,
    },
    PresenceLeave {
        channel: String,
        client_id: String,
        node_id: u64,
    },
    /// Renews node `node_id`'s presence lease to `lease_ms` from now. `incarnation` is drawn by
    /// the node's process at start: a new one drops the entries of the previous process.
    /// When a lease ends on the replicated clock, the node's entries are removed.
    PresenceHeartbeat {
        node_id: u64,
        incarnation: u64,
        lease_ms: u64,
    },
    /// Revokes the join token whose id (the first 16 hex digits of its SHA-256) is
    /// `token_id`, the founding token included: it admits no one from now on.
    JoinTokenRevoke {
        token_id: String,
    },
}

/// How much history a channel keeps: at most `max_events` events, none older than
/// `max_age_ms` on the replicated clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRetention {
    pub max_events: u64,
    pub max_age_ms: u64,
}

/// A job to enqueue. `run_at_ms` wins over `delay_ms`; neither means now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueue {
    /// JSON text.
    pub payload: String,
    pub delay_ms: Option<u64>,
    pub run_at_ms: Option<u64>,
    /// Higher runs first.
    pub priority: i64,
    /// Claims before the job goes to the dead list.
    pub max_attempts: u32,
    /// Base of the exponential retry delay.
    pub backoff_ms: u64,
    /// While a job with this key is queued, enqueueing another answers its id.
    pub unique_key: Option<String>,
}

/// A cron schedule: each due time enqueues a job with `payload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub cron: String,
    /// JSON text.
    pub payload: String,
    pub priority: i64,
    pub max_attempts: u32,
}

/// A claimed job as the worker receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimed {
    pub id: u64,
    pub payload: String,
    pub attempt: u32,
    pub lease: u64,
}

/// A queued acquire: the proposer's id for this caller and how long it may wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockWait {
    pub waiter_id: String,
    pub wait_ms: u64,
}

/// Bounds of the cache, carried by each cache write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Command>,
    pub failure: Vec<Command>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// The key's current revision equals `revision` (0 = absent).
    Revision { key: String, revision: u64 },
    /// Lock `lock` is currently held with fence `fence`.
    Fence { lock: String, fence: u64 },
}

/// The result of applying one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries, ticks, cluster init.
    Done,
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
    NodeId(u64),
    /// The command cannot apply to this state (e.g. the cluster is already initialized).
    Rejected(String),
    /// A lock grant, or a renewal of it.
    LockGranted {
        fence: u64,
        ttl_ms: u64,
    },
    /// The lock is held by someone else and the caller did not wait.
    LockHeld {
        holder: String,
    },
    /// The caller was queued behind `holder`; its grant shows in the lock's state.
    LockQueued {
        holder: String,
    },
    /// A fence that is not the lock's current one; `current` is the current fence if held.
    StaleFence {
        current: Option<u64>,
    },
    /// A lock was released.
    Released,
    /// No such lock, session or cache entry.
    NotFound,
    /// A session exists (created, touched or updated) and expires this long after apply.
    Session {
        expires_in_ms: u64,
    },
    /// How many items an operation removed (sessions of a user, invalidated cache entries).
    Count(u64),
    /// A bound was reached (e.g. waiters on one lock); nothing was applied.
    Limited(String),
    Txn {
        succeeded: bool,
        /// The global revision after the transaction.
        revision: u64,
        results: Vec<Response>,
    },
    /// A job id; `existing` when a queued job with the same unique key answered.
    Enqueued {
        id: u64,
        existing: bool,
    },
    Claimed(Vec<Claimed>),
    /// A lease that is not the job's current claim; `current` is the current lease if any.
    StaleLease {
        current: Option<u64>,
    },
    /// A cron schedule was stored; it fires next at this time.
    Scheduled {
        next_at_ms: u64,
    },
    /// A session was created with this id (a retried create answers the first id).
    SessionCreated {
        id: String,
        expires_in_ms: u64,
    },
    /// History at or below this revision is gone.
    Compacted {
        compact_revision: u64,
    },
    /// An event was appended to a channel under this offset.
    Published {
        offset: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::InitCluster { cluster_id, .. } => write!(f, "init-cluster {cluster_id}"),
            Command::AllocateNodeId => write!(f, "allocate-node-id"),
            Command::Put { key, value, .. } => write!(f, "put {key} ({} bytes)", value.len()),
            Command::Delete { key, .. } => write!(f, "delete {key}"),
            Command::Tick => write!(f, "tick"),
            Command::LockAcquire { name, owner, .. } => write!(f, "lock-acquire {name} by {owner}"),
            Command::LockCancelWait { name, .. } => write!(f, "lock-cancel-wait {name}"),
            Command::LockRenew { name, fence, .. } => write!(f, "lock-renew {name}:{fence}"),
            Command::LockRelease { name, fence } => write!(f, "lock-release {name}:{fence}"),
            Command::Fenced {
                lock,
                fence,
                command,
            } => write!(f, "fenced {lock}:{fence} {command}"),
            Command::SessionCreate { user, .. } => write!(f, "session-create for {user}"),
            Command::SessionTouch { .. } => write!(f, "session-touch"),
            Command::SessionUpdate { .. } => write!(f, "session-update"),
            Command::SessionDelete { .. } => write!(f, "session-delete"),
            Command::SessionDeleteUser { user } => write!(f, "session-delete-user {user}"),
            Command::CacheSet { key, value, .. } => {
                write!(f, "cache-set {key} ({} bytes)", value.len())
            }
            Command::CacheDelete { key } => write!(f, "cache-delete {key}"),
            Command::CacheInvalidate { tags } => write!(f, "cache-invalidate {tags:?}"),
            Command::QueueEnqueue { queue, .. } => write!(f, "enqueue {queue}"),
            Command::QueueClaim { queue, worker, .. } => write!(f, "claim {queue} by {worker}"),
            Command::JobAck { id, .. } => write!(f, "ack {id}"),
            Command::JobNack { id, .. } => write!(f, "nack {id}"),
            Command::JobExtend { id, .. } => write!(f, "extend {id}"),
            Command::QueueReplay { queue, .. } => write!(f, "replay {queue}"),
            Command::ScheduleSet { queue, name, .. } => write!(f, "schedule {queue}/{name}"),
            Command::ScheduleDelete { queue, name } => write!(f, "unschedule {queue}/{name}"),
            Command::ChannelPublish { channel, data, .. } => {
                write!(f, "publish {channel} ({} bytes)", data.len())
            }
            Command::PresenceJoin {
                channel, node_id, ..
            } => write!(f, "presence-join {channel} on node {node_id}"),
            Command::PresenceLeave {
                channel, node_id, ..
            } => write!(f, "presence-leave {channel} on node {node_id}"),
            Command::PresenceHeartbeat { node_id, .. } => {
                write!(f, "presence-heartbeat node {node_id}")
            }
            Command::KvCompact { revision } => write!(f, "kv-compact {revision}"),
            Command::JoinTokenCreate { .. } => write!(f, "join-token-create"),
            Command::NodeRemoved { id } => write!(f, "node-removed {id}"),
            Command::JoinTokenRevoke { token_id } => write!(f, "join-token-revoke {token_id}"),
            Command::Txn(t) => write!(
                f,
                "txn ({} compares, {}/{} ops)",
                t.compare.len(),
                t.success.len(),
                t.failure.len()
            ),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.command {
            Command::Tick => write!(f, "tick @{}", self.stamp_ms),
            other => other.fmt(f),
        }
    }
}
