//! The request bodies and success answers of the HTTP API, in one place: handlers build these
//! instead of ad-hoc JSON, and `/v1/openapi.json` describes them (see `crate::openapi`).
//!
//! Field names and shapes are the wire format. Ids that are u64 inside (jobs) travel as
//! strings; optional answers are `null`, not absent, unless a field says otherwise.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

// ---- Shared ----

/// `{status}` of `/health` (`ok`) and `/ready` (`ready`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub status: String,
}

/// `{deleted: true}` / `{deleted: false}`: whether something was removed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: bool,
}

// ---- Key-value ----

/// A write's revision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Revision {
    pub revision: u64,
}

/// The answer of a key delete.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvDeleted {
    pub revision: u64,
    /// Whether the key existed.
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvItem {
    pub key: String,
    /// The value, base64.
    pub value: String,
    pub revision: u64,
}

/// A page of keys in key order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvList {
    pub items: Vec<KvItem>,
    /// The last key of the page when more follow (pass it as `after`); null when done.
    pub next: Option<String>,
    /// The store's revision at the read.
    pub revision: u64,
}

/// Whether a change was a put or a delete (expiries are deletes).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvChange {
    pub event: ChangeKind,
    pub key: String,
    pub revision: u64,
    /// The new value, base64; null for a delete.
    pub value: Option<String>,
}

/// A page of key-value history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvHistory {
    pub events: Vec<KvChange>,
    /// Pass it as `since_revision` to continue; null when done.
    pub next_since_revision: Option<u64>,
    pub revision: u64,
    pub compact_revision: u64,
}

/// `POST /v1/cluster/compact`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactRequest {
    /// Drop history at or below this revision (capped at the current revision).
    pub revision: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Compacted {
    pub compact_revision: u64,
}

// ---- Transactions ----

// Defined next to their handler in `api::txn`, where a primitive that joins transactions adds
// its compare and op.
pub use super::txn::wire::*;

// ---- Locks ----

/// `POST /v1/locks/{name}/acquire`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    pub owner: String,
    /// The lease, 1 to 86400000 ms.
    #[schema(minimum = 1, maximum = 86400000)]
    pub ttl_ms: u64,
    /// How long to queue for the lock, at most 60000 ms; 0 = do not wait.
    #[serde(default)]
    #[schema(maximum = 60000, default = 0)]
    pub wait_ms: u64,
}

/// `POST /v1/locks/{name}/renew`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub fence: u64,
    #[schema(minimum = 1, maximum = 86400000)]
    pub ttl_ms: u64,
}

/// `POST /v1/locks/{name}/release`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub fence: u64,
}

/// A granted lock.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    /// Strictly increases per lock name.
    pub fence: u64,
    pub owner: String,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Renewed {
    pub fence: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Released {
    pub released: bool,
}

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LockInfo {
    pub holder: String,
    pub fence: u64,
    pub expires_in_ms: u64,
    pub ttl_ms: u64,
    /// Callers queued for the lock.
    pub waiters: u64,
}

/// `GET /v1/locks`: a page of locks in name order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LockList {
    pub locks: Vec<LockSummary>,
    /// The last name of the page when more follow (pass it as `after`); null when done.
    pub next: Option<String>,
}

/// A lock that is held or waited for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LockSummary {
    pub name: String,
    /// The holder; null while nobody holds it (its waiters are served at the next step).
    pub holder: Option<String>,
    pub fence: Option<u64>,
    pub ttl_ms: Option<u64>,
    pub expires_in_ms: Option<u64>,
    /// Callers queued for the lock.
    pub waiters: u64,
    /// The first waiters (at most 10), first served first.
    pub next_waiters: Vec<LockWaiter>,
}

/// A caller queued for a lock or semaphore.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LockWaiter {
    pub owner: String,
    /// How long it still waits before giving up.
    pub gives_up_in_ms: u64,
}

// ---- Sessions ----

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    pub user: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Map<String, Value>>,
    /// 1 to 2592000000 ms; default 1800000 (30 minutes).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000000u64, default = 1800000)]
    pub ttl_ms: Option<u64>,
}

/// `PATCH /v1/sessions/{id}`: merged into the data (RFC 7396: null removes a field).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSessionRequest {
    #[schema(value_type = Object)]
    pub data: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionCreated {
    /// 128 random bits, URL-safe base64.
    pub id: String,
    pub expires_in_ms: u64,
}

/// A live session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub id: String,
    pub user: String,
    /// The session's JSON object.
    pub data: Value,
    pub created_at_ms: u64,
    pub expires_in_ms: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// `{deleted: n}`: how many sessions were ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeletedCount {
    pub deleted: u64,
}

// ---- Cache ----

/// `POST /v1/cache/invalidate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateRequest {
    /// 1 to 64 tags.
    #[schema(min_items = 1, max_items = 64)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stored {
    pub stored: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invalidated {
    pub invalidated: u64,
}

/// Cache figures: entries, bytes and evictions are replicated (equal on every node), hits
/// and misses are this node's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
    pub hits: u64,
    pub misses: u64,
    pub max_entries: u64,
    pub max_bytes: u64,
    pub applied_index: u64,
    /// A digest of the cache's content; only with `?digest=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

// ---- Queues and jobs ----

/// `POST /v1/queues/{name}/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Any JSON, at most max_value_bytes once encoded.
    pub payload: Value,
    /// At most 365 days; not with run_at_ms.
    pub delay_ms: Option<u64>,
    /// Due time, ms since the Unix epoch; not with delay_ms.
    pub run_at_ms: Option<u64>,
    /// Higher is claimed first.
    #[serde(default)]
    #[schema(default = 0)]
    pub priority: i64,
    /// 1 to 1000; default 3.
    #[schema(minimum = 1, maximum = 1000, default = 3)]
    pub max_attempts: Option<u32>,
    /// Retry n waits backoff_ms * 2^(n-1), at most a day; default 1000.
    #[schema(default = 1000)]
    pub backoff_ms: Option<u64>,
    /// While a job with this key is queued, enqueuing another answers it (200, existing).
    pub unique_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Enqueued {
    /// The job id (a u64, as a string).
    pub id: String,
    /// True when a queued job already had this unique_key (then it is that job's id).
    pub existing: bool,
}

/// `POST /v1/queues/{name}/claim`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub worker: String,
    /// 1 to 100.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100, default = 1)]
    pub max: u32,
    /// How long claimed jobs stay invisible, at most 43200000; default 30000.
    #[schema(minimum = 1, maximum = 43200000, default = 30000)]
    pub visibility_ms: Option<u64>,
    /// Long-poll up to this long for a ready job, at most 60000.
    #[serde(default)]
    #[schema(maximum = 60000, default = 0)]
    pub wait_ms: u64,
    /// The claim was sent here by a `moved` answer: this node serves it whatever its load.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moved: bool,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimedJob {
    /// The job id (a u64, as a string).
    pub id: String,
    pub payload: Value,
    pub attempt: u32,
    /// Pass it to ack, nack and extend.
    pub lease: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Claimed {
    pub jobs: Vec<ClaimedJob>,
}

/// `POST /v1/jobs/{id}/ack`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub lease: u64,
}

/// `POST /v1/jobs/{id}/nack`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    pub lease: u64,
    /// Kept as the job's last_error (first 4096 characters).
    pub error: Option<String>,
    /// Retry after this instead of the job's backoff.
    pub retry_in_ms: Option<u64>,
}

/// `POST /v1/jobs/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub lease: u64,
    #[schema(minimum = 1, maximum = 43200000)]
    pub visibility_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Acked {
    pub acked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Nacked {
    pub nacked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Extended {
    pub extended: bool,
    pub visibility_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStateName {
    Ready,
    Delayed,
    InFlight,
    Dead,
}

/// A job that is not yet completed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    /// The job id (a u64, as a string).
    pub id: String,
    pub queue: String,
    pub payload: Value,
    pub state: JobStateName,
    pub attempt: u32,
    pub max_attempts: u32,
    pub priority: i64,
    pub due_in_ms: u64,
    pub created_at_ms: u64,
    pub last_error: Option<String>,
    pub worker: Option<String>,
    pub unique_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobInfo>,
}

/// A queue's job counts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueStats {
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub completed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueSummary {
    pub queue: String,
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub completed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueSummary>,
}

/// `POST /v1/queues/{name}/dead/replay`: `{ids: [...]}` (1 to 1000 job ids) or
/// `{all: true}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub ids: Option<Vec<String>>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    pub replayed: u64,
}

/// `POST /v1/queues/{name}/dead/delete`: `{ids: [...]}` (1 to 1000 job ids) or `{all: true}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteDeadRequest {
    pub ids: Option<Vec<String>>,
    #[serde(default)]
    pub all: bool,
}

/// `PUT /v1/queues/{queue}/schedules/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// UTC; 5 fields, or 6 with seconds.
    pub cron: String,
    /// The payload of each enqueued job.
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub priority: i64,
    #[schema(minimum = 1, maximum = 1000, default = 3)]
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NextFire {
    /// The next due time, ms since the Unix epoch.
    pub next_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleInfo {
    pub name: String,
    pub cron: String,
    pub payload: Value,
    pub next_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleInfo>,
}

// ---- Channels ----

/// `GET /v1/channels`: a page of channels in name order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelSummary>,
    /// The last name of the page when more follow (pass it as `after`); null when done.
    pub next: Option<String>,
}

/// A channel that was published to, or has clients present.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelSummary {
    pub name: String,
    /// The last offset published, 0 when none.
    pub latest_offset: u64,
    /// The oldest retained offset; latest_offset + 1 when nothing is retained.
    pub earliest_offset: u64,
    /// Events retained.
    pub retained: u64,
    /// When the last retained event was published (ms since the Unix epoch), if any.
    pub last_published_ms: Option<u64>,
    /// Clients present across the cluster (WebSocket subscribers that gave a user).
    pub present: u64,
}

/// `POST /v1/channels/{name}/publish`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Any JSON, at most max_value_bytes once encoded.
    pub data: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Published {
    /// The event's offset in its channel (from 1, never repeated).
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelEvent {
    pub offset: u64,
    pub data: Value,
    pub ts_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelHistory {
    pub events: Vec<ChannelEvent>,
    /// The oldest retained offset; latest_offset + 1 when nothing is retained.
    pub earliest_offset: u64,
    /// The last offset published, 0 when none.
    pub latest_offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PresentClient {
    pub client_id: String,
    pub user: String,
    /// The node the client is connected to.
    pub node_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Presence {
    pub clients: Vec<PresentClient>,
}

// ---- Cluster ----

/// Cluster status as the answering node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    /// The node that answered.
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    /// Applied on the node that answered.
    pub applied_index: u64,
    /// Last snapshot of the node that answered.
    pub snapshot_index: Option<u64>,
    /// Log purged up to this index on the node that answered.
    pub purged_index: Option<u64>,
    pub revision: u64,
    pub compact_revision: u64,
    pub members: Vec<Member>,
    pub autopilot: Autopilot,
    /// Whether the answering node checks tokens: `off` only when it was started with
    /// `--insecure-no-auth`.
    pub auth: AuthMode,
    /// The cluster's raised alarms (replicated state, the same on every node once applied):
    /// `NOSPACE` while the data held is at or past the storage quota.
    #[serde(default)]
    pub alarms: Vec<Alarm>,
    /// The data held and the storage quota, as applied on the answering node.
    #[serde(default)]
    pub storage: StorageUse,
}

/// An alarm of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Alarm {
    /// The data held reached `limits.quota_bytes`: writes that grow the state are refused
    /// with 507 quota_exceeded until it is under again.
    #[serde(rename = "NOSPACE")]
    Nospace,
}

/// The data the storage quota counts, and the quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StorageUse {
    /// Bytes of key-value keys and values held (not their history).
    pub data_bytes: u64,
    /// The quota in force (`limits.quota_bytes` of the leader that set it); 0: none.
    pub quota_bytes: u64,
}

/// Whether a node checks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Voter,
    Learner,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub id: u64,
    pub api_addr: String,
    pub cluster_addr: String,
    pub role: MemberRole,
    /// Liveness in the answering node's gossip view (SWIM): alive, suspect, down or
    /// unknown. The answering node itself is alive; unknown until gossip has heard of the
    /// member.
    pub gossip: String,
    /// How long the member has had that gossip state on the answering node.
    pub gossip_changed_ms_ago: Option<u64>,
    /// The member's applied log index, from its gossip metadata (at most about 0.5 s old).
    pub applied_index: Option<u64>,
    pub load: Load,
    /// Whether the leader heard from the member (an acknowledged heartbeat or append)
    /// within one election timeout; the leader's own view, or on other nodes the one it
    /// publishes in gossip (at most about 0.5 s old); true for the leader itself; null
    /// without a known leader or before its gossip arrived.
    pub leader_reaches: Option<bool>,
    /// ms since the member last acknowledged the leader; null: never.
    pub leader_contact_ms_ago: Option<u64>,
    /// Entries of the leader's log the member has not acknowledged; null: none
    /// acknowledged yet.
    pub replication_lag: Option<u64>,
}

/// From the member's gossip metadata; an empty object when none arrived yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Load {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_requests: Option<u64>,
    /// Absent with inflight_requests; null where the platform has no load average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_avg_1m: Option<Option<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Autopilot {
    pub target_voters: u64,
    /// `--autopilot-replace-dead`: the leader replaces a voter down in gossip for
    /// dead_grace_ms with a caught-up alive learner.
    pub replace_dead: bool,
    pub dead_grace_ms: u64,
    /// Membership changes made by this node's autopilot while it led (last 32, oldest
    /// first).
    pub actions: Vec<AutopilotAction>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutopilotAction {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// promote (a caught-up learner, voters below target), add_voter (a learner added to
    /// replace a dead voter) or remove_voter (a dead voter removed).
    pub action: String,
    pub node: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    pub removed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Promoted {
    pub promoted: u64,
}

/// `POST /v1/cluster/leader/transfer`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// A voter's node id.
    pub to: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Leader {
    pub leader_id: u64,
}

/// `GET /v1/cluster/digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateDigest {
    pub node_id: u64,
    /// The last log index applied to the digested state.
    pub applied_index: Option<u64>,
    pub revision: u64,
    /// State records digested.
    pub records: u64,
    /// SHA-256 (hex) of every record, length-prefixed, in key order.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTaken {
    pub snapshot_index: Option<u64>,
    /// False when no new snapshot was built within 60 s.
    pub completed: bool,
}

/// `POST /v1/cluster/tokens` (the body may be empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// 1 to 31536000000 ms; default 86400000 (24 hours).
    #[schema(minimum = 1, maximum = 31536000000u64, default = 86400000)]
    pub ttl_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// The secret: give it to `stackd serve --join … --token`.
    pub token: String,
    /// The first 16 hex digits of the token's SHA-256.
    pub id: String,
    /// ms since the Unix epoch.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    pub id: String,
    /// The token the cluster was founded with.
    pub founding: bool,
    /// null for the founding token.
    pub expires_at_ms: Option<u64>,
    pub expired: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevokedToken {
    pub id: String,
    pub revoked_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokens {
    pub tokens: Vec<JoinToken>,
    pub revoked: Vec<RevokedToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    pub id: String,
    pub revoked: bool,
}

// ---- Parameters (documentation only: handlers read the raw query, see `api::params`) ----

/// `consistency`: every read is linearizable unless the query says `stale`; then the
/// answering node's state is read as it is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    Linearizable,
    Stale,
}
