//! The replicated commands and their results.
//!
//! Each primitive has its own command and result type, defined with the primitive in
//! [`crate::state`]; [`Command`] and [`Response`] hold one variant per primitive. A
//! [`Proposal`] names the result type of a command, so a proposer gets that type back.
//!
//! Persisted in the Raft log: append enum variants only, never reorder or remove them.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::state::acl::{AclCmd, AclResult};
pub use crate::state::cache::{CacheCmd, CacheLimits, CacheResult};
pub use crate::state::channels::{ChannelCmd, ChannelResult, ChannelRetention};
pub use crate::state::kv::{KvCmd, KvResult};
pub use crate::state::locks::{LockCmd, LockResult, LockWait};
pub use crate::state::queues::{Claimed, Enqueue, QueueCmd, QueueResult, ScheduleSpec};
pub use crate::state::security::{ClusterCmd, ClusterResult};
pub use crate::state::semaphores::{SemaphoreCmd, SemaphoreResult, SemaphoreWait};
pub use crate::state::sessions::{SessionCmd, SessionResult};

/// One proposal: a command stamped with the proposing leader's wall clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The leader's wall clock (ms since the Unix epoch) when it proposed this entry. Apply
    /// advances the replicated clock to `max(previous, stamp_ms)`.
    pub stamp_ms: u64,
    /// `Idempotency-Key` of a client request proposed by an earlier build: one namespace for
    /// every caller, and no check that a retry is the same request. Entries of earlier builds
    /// still apply this way; this build proposes [`Command::Idempotent`] instead.
    pub idempotency_key: Option<String>,
    pub command: Command,
}

/// A client's `Idempotency-Key` as a write carries it ([`Command::Idempotent`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemKey {
    /// The key, qualified by whom it belongs to (the proposer scopes it to the caller, so two
    /// callers' keys never meet); the state compares it as it is.
    pub key: String,
    /// A digest of the request the key was sent with: a retry must carry the same one.
    pub fingerprint: [u8; 32],
}

/// One replicated command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Advances the replicated clock so due deadlines (TTL keys, leases, idempotency
    /// records) expire.
    Tick,
    Cluster(ClusterCmd),
    Kv(KvCmd),
    Lock(LockCmd),
    Session(SessionCmd),
    Cache(CacheCmd),
    Queue(QueueCmd),
    Channel(ChannelCmd),
    /// Applies `success` if every compare holds, else `failure`; all key-value changes of the
    /// transaction share one revision.
    Txn(Txn),
    /// Applies `command` only while lock `lock` is held with fence `fence`.
    Fenced {
        lock: String,
        fence: u64,
        command: Box<Command>,
    },
    Semaphore(SemaphoreCmd),
    Acl(AclCmd),
    /// `command` under an `Idempotency-Key`: the first time the key is seen, `command` applies
    /// and its answer is remembered with the fingerprint for
    /// [`IDEMPOTENCY_WINDOW_MS`](crate::state::IDEMPOTENCY_WINDOW_MS); a retry
    /// with the same fingerprint is answered from that, one with another fingerprint gets
    /// [`Response::IdempotencyMismatch`]. Only a request's own command; never nested.
    Idempotent {
        idem: IdemKey,
        command: Box<Command>,
    },
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
    /// Semaphore `semaphore` has a current lease with fence `fence`.
    SemaphoreFence { semaphore: String, fence: u64 },
}

/// The result of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The global revision after the transaction.
    pub revision: u64,
    /// One result per write of the branch taken, in order.
    pub results: Vec<Response>,
}

/// The result of applying one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries, ticks.
    Done,
    /// A fenced command whose fence is not the lock's current one; nothing was applied.
    /// `current` is the current fence if the lock is held.
    StaleFence {
        current: Option<u64>,
    },
    /// A transaction holding a write that transactions may not hold; nothing was applied.
    Rejected(String),
    Cluster(ClusterResult),
    Kv(KvResult),
    Lock(LockResult),
    Session(SessionResult),
    Cache(CacheResult),
    Queue(QueueResult),
    Channel(ChannelResult),
    Txn(TxnResult),
    Semaphore(SemaphoreResult),
    Acl(AclResult),
    /// The `Idempotency-Key` was first used for a different request (another fingerprint);
    /// nothing was applied.
    IdempotencyMismatch,
}

/// A command whose result type is known: proposing it answers a `Self::Output`.
pub trait Proposal: Into<Command> {
    type Output;

    /// The typed result, or the response as it came when it is of another kind: a stale
    /// fence, or the remembered answer of another request that used the same
    /// `Idempotency-Key`.
    fn output(response: Response) -> Result<Self::Output, Response>;
}

macro_rules! proposals {
    ($($variant:ident($cmd:ty) -> $out:ty),* $(,)?) => {$(
        impl From<$cmd> for Command {
            fn from(c: $cmd) -> Command {
                Command::$variant(c)
            }
        }

        impl Proposal for $cmd {
            type Output = $out;

            fn output(response: Response) -> Result<$out, Response> {
                match response {
                    Response::$variant(r) => Ok(r),
                    other => Err(other),
                }
            }
        }
    )*};
}

proposals! {
    Cluster(ClusterCmd) -> ClusterResult,
    Kv(KvCmd) -> KvResult,
    Lock(LockCmd) -> LockResult,
    Session(SessionCmd) -> SessionResult,
    Cache(CacheCmd) -> CacheResult,
    Queue(QueueCmd) -> QueueResult,
    Channel(ChannelCmd) -> ChannelResult,
    Txn(Txn) -> TxnResult,
    Semaphore(SemaphoreCmd) -> SemaphoreResult,
    Acl(AclCmd) -> AclResult,
}

/// A command applied only while a lock is held with a given fence (or always, without one).
/// Its result is the command's; a stale fence comes back as [`Response::StaleFence`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaybeFenced<P> {
    pub fence: Option<(String, u64)>,
    pub command: P,
}

impl<P: Proposal> From<MaybeFenced<P>> for Command {
    fn from(f: MaybeFenced<P>) -> Command {
        let command = f.command.into();
        match f.fence {
            None => command,
            Some((lock, fence)) => Command::Fenced {
                lock,
                fence,
                command: Box::new(command),
            },
        }
    }
}

impl<P: Proposal> Proposal for MaybeFenced<P> {
    type Output = P::Output;

    fn output(response: Response) -> Result<P::Output, Response> {
        P::output(response)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Tick => write!(f, "tick"),
            Command::Cluster(c) => write!(f, "cluster {c:?}"),
            Command::Kv(KvCmd::Put { key, value, .. }) => {
                write!(f, "put {key} ({} bytes)", value.len())
            }
            Command::Kv(c) => write!(f, "kv {c:?}"),
            Command::Lock(c) => write!(f, "lock {c:?}"),
            Command::Session(SessionCmd::Create { user, .. }) => {
                write!(f, "session create for {user}")
            }
            // Session ids are bearer secrets: never logged.
            Command::Session(SessionCmd::Touch { .. }) => write!(f, "session touch"),
            Command::Session(SessionCmd::Update { .. }) => write!(f, "session update"),
            Command::Session(SessionCmd::Delete { .. }) => write!(f, "session delete"),
            Command::Session(SessionCmd::DeleteUser { user }) => {
                write!(f, "session delete all of {user}")
            }
            Command::Cache(CacheCmd::Set { key, value, .. }) => {
                write!(f, "cache set {key} ({} bytes)", value.len())
            }
            Command::Cache(c) => write!(f, "cache {c:?}"),
            Command::Queue(QueueCmd::Enqueue { queue, .. }) => write!(f, "enqueue {queue}"),
            Command::Queue(c) => write!(f, "queue {c:?}"),
            Command::Channel(ChannelCmd::Publish { channel, data, .. }) => {
                write!(f, "publish {channel} ({} bytes)", data.len())
            }
            Command::Channel(c) => write!(f, "channel {c:?}"),
            Command::Txn(t) => write!(
                f,
                "txn ({} compares, {}/{} ops)",
                t.compare.len(),
                t.success.len(),
                t.failure.len()
            ),
            Command::Fenced {
                lock,
                fence,
                command,
            } => write!(f, "fenced {lock}:{fence} {command}"),
            Command::Semaphore(c) => write!(f, "semaphore {c:?}"),
            // Secret digests are not logged.
            Command::Acl(AclCmd::Bootstrap { accessor_id, .. }) => {
                write!(f, "acl bootstrap {accessor_id}")
            }
            Command::Acl(AclCmd::TokenCreate(t)) => write!(f, "acl token create {}", t.accessor_id),
            Command::Acl(c) => write!(f, "acl {c:?}"),
            Command::Idempotent { command, .. } => write!(f, "idempotent {command}"),
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
