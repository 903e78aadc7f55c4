//! The replicated commands and their results.
//!
//! Each primitive has its own command and result type, defined with the primitive in
//! [`crate::state`]; [`Command`] and [`Response`] hold one variant per primitive. A
//! [`Proposal`] names the result type of a command, so a proposer gets that type back.
//!
//! Persisted in the Raft log: append enum variants only, never reorder or remove them.
//!
//! # Nesting
//! A fenced command guards one [`Guarded`] command, which cannot be fenced itself; a
//! transaction holds [`Op`]s, which are neither transactions nor fenced. The types nest no
//! deeper than that ([`NotNested`] fills the places where nesting stops), so decoding a
//! command from a peer or the log descends at most three levels, whatever the bytes say, and
//! a command that could not be decoded cannot be built. The same holds for results: a
//! transaction's results are [`OpResponse`]s, which hold no transaction result.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::state::acl::{AclCmd, AclResult};
pub use crate::state::cache::{CacheCmd, CacheCond, CacheLimits, CacheResult, CacheTtl};
pub use crate::state::channels::{ChannelCmd, ChannelResult, ChannelRetention};
pub use crate::state::kv::{KvCmd, KvResult};
pub use crate::state::locks::{LockCmd, LockResult, LockWait};
pub use crate::state::queues::{Claimed, Enqueue, QueueCmd, QueueResult, ScheduleSpec};
pub use crate::state::security::{ClusterCmd, ClusterResult};
pub use crate::state::semaphores::{SemaphoreCmd, SemaphoreResult, SemaphoreWait};
pub use crate::state::services::{ServiceCmd, ServiceResult};
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
///
/// `F` is what a fenced command holds and `T` what a transaction variant holds; with the
/// defaults this is a command as proposed. [`Guarded`] and [`Op`] are the commands nested in
/// it (see "Nesting" above); all three encode alike, variant for variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command<F = Box<Guarded>, T = Txn, I = Box<Keyed>> {
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
    Txn(T),
    /// Applies `command` only while lock `lock` is held with fence `fence`.
    Fenced {
        lock: String,
        fence: u64,
        command: F,
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
        command: I,
    },
    /// The service registry and the gateway's routes.
    Service(ServiceCmd),
}

/// What an idempotency key covers: any command but one under a key.
pub type Keyed = Command<Box<Guarded>, Txn, NotNested>;

impl Command {
    /// This command as one an idempotency key may cover; `Err` (itself) when it is already
    /// under a key.
    #[allow(clippy::result_large_err)] // either way the same command, moved, not copied
    pub fn keyed(self) -> Result<Keyed, Command> {
        Ok(match self {
            Command::Tick => Command::Tick,
            Command::Cluster(c) => Command::Cluster(c),
            Command::Kv(c) => Command::Kv(c),
            Command::Lock(c) => Command::Lock(c),
            Command::Session(c) => Command::Session(c),
            Command::Cache(c) => Command::Cache(c),
            Command::Queue(c) => Command::Queue(c),
            Command::Channel(c) => Command::Channel(c),
            Command::Txn(t) => Command::Txn(t),
            Command::Fenced {
                lock,
                fence,
                command,
            } => Command::Fenced {
                lock,
                fence,
                command,
            },
            Command::Semaphore(c) => Command::Semaphore(c),
            Command::Acl(c) => Command::Acl(c),
            Command::Service(c) => Command::Service(c),
            keyed @ Command::Idempotent { .. } => return Err(keyed),
        })
    }
}

/// Whether a command can grow the stored data: while the storage quota is reached (the
/// `NOSPACE` alarm), such a command is refused. Key-value puts, job enqueues, schedules,
/// channel publishes, new sessions and session updates grow it; deletes, claims, acks and
/// nacks, replays, lock and semaphore operations, ticks, cluster and ACL changes do not (or
/// hardly), and cache writes evict within the cache's own bounds (as publishes to reserved
/// channels do within their retention), so they all pass: the
/// state can be shrunk, and what holds it together keeps running.
pub trait Grows {
    fn grows(&self) -> bool;
}

impl Grows for NotNested {
    fn grows(&self) -> bool {
        match *self {}
    }
}

impl<C: Grows> Grows for Box<C> {
    fn grows(&self) -> bool {
        (**self).grows()
    }
}

impl Grows for Txn {
    fn grows(&self) -> bool {
        self.success.iter().chain(&self.failure).any(Grows::grows)
    }
}

impl<F: Grows, T: Grows, I: Grows> Grows for Command<F, T, I> {
    fn grows(&self) -> bool {
        match self {
            Command::Kv(KvCmd::Put { .. })
            | Command::Queue(QueueCmd::Enqueue { .. } | QueueCmd::ScheduleSet { .. })
            | Command::Session(SessionCmd::Create { .. } | SessionCmd::Update { .. }) => true,
            // Reserved channels (`$audit`) hold the node's own records, bounded by their
            // retention: security events are still written when the quota is reached.
            Command::Channel(ChannelCmd::Publish { channel, .. }) => !channel.starts_with('$'),
            Command::Txn(t) => t.grows(),
            Command::Fenced { command, .. } => command.grows(),
            Command::Idempotent { command, .. } => command.grows(),
            _ => false,
        }
    }
}

/// Something a command may add that a count limit bounds ([`crate::state::ClusterLimits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adds<'a> {
    Key(&'a str),
    Job {
        queue: &'a str,
    },
    Schedule {
        queue: &'a str,
        name: &'a str,
    },
    Channel(&'a str),
    Session {
        user: &'a str,
    },
    Token {
        accessor_id: &'a str,
    },
    JoinToken,
    /// A blocking acquire, which queues its caller while the lock is held.
    LockWaiter {
        lock: &'a str,
    },
}

/// What a command may add, for the count limits: each write of a transaction, the command
/// under a fence or an idempotency key.
pub trait Additions {
    fn additions<'a>(&'a self, out: &mut Vec<Adds<'a>>);
}

impl Additions for NotNested {
    fn additions<'a>(&'a self, _: &mut Vec<Adds<'a>>) {
        match *self {}
    }
}

impl<C: Additions> Additions for Box<C> {
    fn additions<'a>(&'a self, out: &mut Vec<Adds<'a>>) {
        (**self).additions(out)
    }
}

impl Additions for Txn {
    fn additions<'a>(&'a self, out: &mut Vec<Adds<'a>>) {
        for op in self.success.iter().chain(&self.failure) {
            op.additions(out);
        }
    }
}

impl<F: Additions, T: Additions, I: Additions> Additions for Command<F, T, I> {
    fn additions<'a>(&'a self, out: &mut Vec<Adds<'a>>) {
        match self {
            Command::Kv(KvCmd::Put { key, .. }) => out.push(Adds::Key(key)),
            Command::Queue(QueueCmd::Enqueue { queue, .. }) => out.push(Adds::Job { queue }),
            Command::Queue(QueueCmd::ScheduleSet { queue, name, .. }) => {
                out.push(Adds::Schedule { queue, name })
            }
            Command::Channel(ChannelCmd::Publish { channel, .. }) if !channel.starts_with('$') => {
                out.push(Adds::Channel(channel))
            }
            Command::Session(SessionCmd::Create { user, .. }) => out.push(Adds::Session { user }),
            Command::Acl(AclCmd::TokenCreate(t)) => out.push(Adds::Token {
                accessor_id: &t.accessor_id,
            }),
            Command::Cluster(ClusterCmd::JoinTokenCreate { .. }) => out.push(Adds::JoinToken),
            Command::Lock(LockCmd::Acquire {
                name,
                wait: Some(_),
                ..
            }) => out.push(Adds::LockWaiter { lock: name }),
            Command::Txn(t) => t.additions(out),
            Command::Fenced { command, .. } => command.additions(out),
            Command::Idempotent { command, .. } => command.additions(out),
            _ => {}
        }
    }
}

/// What a fence guards: any command but a fenced one or one under a key.
pub type Guarded = Command<NotNested, Txn, NotNested>;

/// What a transaction holds: a command that is neither a transaction, fenced nor under a key.
pub type Op = Command<NotNested, NotNested, NotNested>;

/// The content of a transaction or fenced variant where commands do not nest (in a fenced
/// command, in a transaction). It has no values, so such a command cannot be built, and
/// decoding one fails as soon as its variant is read, before anything it would hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotNested {}

impl Serialize for NotNested {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        match *self {}
    }
}

impl<'de> Deserialize<'de> for NotNested {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "commands do not nest there: a fenced command holds no fenced command, and a \
             transaction neither a transaction nor a fenced command",
        ))
    }
}

impl fmt::Display for NotNested {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
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
    pub results: Vec<OpResponse>,
}

/// The result of one of a transaction's [`Op`]s: a response that holds no transaction result.
pub type OpResponse = Response<NotNested>;

/// The result of applying one [`Request`]; `T` is what a transaction's result holds (see
/// "Nesting" above).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response<T = TxnResult> {
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
    Txn(T),
    Semaphore(SemaphoreResult),
    Acl(AclResult),
    /// The `Idempotency-Key` was first used for a different request (another fingerprint);
    /// nothing was applied.
    IdempotencyMismatch,
    Service(ServiceResult),
    /// The command would grow the state while the storage quota is reached (the `NOSPACE`
    /// alarm); nothing was applied.
    QuotaExceeded {
        used_bytes: u64,
        quota_bytes: u64,
    },
    /// The command would make one more of something the cluster already holds its limit of
    /// (`limit` names the setting, `what` the thing); nothing was applied.
    LimitReached {
        limit: String,
        max: u64,
        what: String,
    },
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

        impl From<$cmd> for Guarded {
            fn from(c: $cmd) -> Guarded {
                Guarded::$variant(c)
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
    Service(ServiceCmd) -> ServiceResult,
}

/// The commands a transaction may name (its [`Op`]s): every primitive's.
macro_rules! ops {
    ($($variant:ident($cmd:ty)),* $(,)?) => {$(
        impl From<$cmd> for Op {
            fn from(c: $cmd) -> Op {
                Op::$variant(c)
            }
        }
    )*};
}

ops! {
    Cluster(ClusterCmd),
    Kv(KvCmd),
    Lock(LockCmd),
    Session(SessionCmd),
    Cache(CacheCmd),
    Queue(QueueCmd),
    Channel(ChannelCmd),
    Semaphore(SemaphoreCmd),
    Acl(AclCmd),
    Service(ServiceCmd),
}

/// A command applied only while a lock is held with a given fence (or always, without one).
/// Its result is the command's; a stale fence comes back as [`Response::StaleFence`]. The
/// command is one a fence may guard (`Into<Guarded>`), so fences do not nest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaybeFenced<P> {
    pub fence: Option<(String, u64)>,
    pub command: P,
}

impl<P: Proposal + Into<Guarded>> From<MaybeFenced<P>> for Command {
    fn from(f: MaybeFenced<P>) -> Command {
        match f.fence {
            None => f.command.into(),
            Some((lock, fence)) => Command::Fenced {
                lock,
                fence,
                command: Box::new(f.command.into()),
            },
        }
    }
}

impl<P: Proposal + Into<Guarded>> Proposal for MaybeFenced<P> {
    type Output = P::Output;

    fn output(response: Response) -> Result<P::Output, Response> {
        P::output(response)
    }
}

impl fmt::Display for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "txn ({} compares, {}/{} ops)",
            self.compare.len(),
            self.success.len(),
            self.failure.len()
        )
    }
}

impl<F: fmt::Display, T: fmt::Display, I: fmt::Display> fmt::Display for Command<F, T, I> {
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
            Command::Cache(
                CacheCmd::Set { key, value, .. } | CacheCmd::SetIf { key, value, .. },
            ) => {
                write!(f, "cache set {key} ({} bytes)", value.len())
            }
            Command::Cache(CacheCmd::DeleteIfEq { key, .. }) => {
                write!(f, "cache delete {key} if equal")
            }
            Command::Cache(c) => write!(f, "cache {c:?}"),
            Command::Queue(QueueCmd::Enqueue { queue, .. }) => write!(f, "enqueue {queue}"),
            Command::Queue(c) => write!(f, "queue {c:?}"),
            Command::Channel(ChannelCmd::Publish { channel, data, .. }) => {
                write!(f, "publish {channel} ({} bytes)", data.len())
            }
            Command::Channel(c) => write!(f, "channel {c:?}"),
            Command::Txn(t) => t.fmt(f),
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
            Command::Service(c) => write!(f, "service {c:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// The command type as it was before nesting was bounded: every level could hold any
    /// command. It pins the encoding, and builds the nested commands peers may still send.
    #[derive(Serialize)]
    #[allow(dead_code)] // Variants that only hold their wire index.
    enum Unbounded {
        Tick,
        Cluster(ClusterCmd),
        Kv(KvCmd),
        Lock(LockCmd),
        Session(SessionCmd),
        Cache(CacheCmd),
        Queue(QueueCmd),
        Channel(ChannelCmd),
        Txn(UnboundedTxn),
        Fenced {
            lock: String,
            fence: u64,
            command: Box<Unbounded>,
        },
        Semaphore(SemaphoreCmd),
        Acl(AclCmd),
    }

    #[derive(Serialize)]
    struct UnboundedTxn {
        compare: Vec<Compare>,
        success: Vec<Unbounded>,
        failure: Vec<Unbounded>,
    }

    fn put(key: &str) -> KvCmd {
        KvCmd::Put {
            key: key.into(),
            value: b"v".to_vec(),
            if_revision: None,
            ttl_ms: None,
        }
    }

    fn fenced(command: Unbounded) -> Unbounded {
        Unbounded::Fenced {
            lock: "L".into(),
            fence: 7,
            command: Box::new(command),
        }
    }

    fn txn(success: Vec<Unbounded>) -> Unbounded {
        Unbounded::Txn(UnboundedTxn {
            compare: vec![Compare::Fence {
                lock: "L".into(),
                fence: 7,
            }],
            success,
            failure: vec![Unbounded::Tick],
        })
    }

    fn decode(u: &Unbounded) -> codec::Result<Command> {
        codec::decode(&codec::encode(u).unwrap())
    }

    #[test]
    fn bounded_commands_encode_as_before() {
        let ops: Vec<Op> = vec![put("a").into(), Op::Tick];
        let bounded: Vec<Command> = vec![
            Command::Tick,
            put("k").into(),
            MaybeFenced {
                fence: Some(("L".into(), 7)),
                command: put("k"),
            }
            .into(),
            Command::Txn(Txn {
                compare: vec![],
                success: ops.clone(),
                failure: vec![],
            }),
            MaybeFenced {
                fence: Some(("L".into(), 7)),
                command: Txn {
                    compare: vec![],
                    success: ops,
                    failure: vec![],
                },
            }
            .into(),
        ];
        let before = [
            Unbounded::Tick,
            Unbounded::Kv(put("k")),
            fenced(Unbounded::Kv(put("k"))),
            Unbounded::Txn(UnboundedTxn {
                compare: vec![],
                success: vec![Unbounded::Kv(put("a")), Unbounded::Tick],
                failure: vec![],
            }),
            fenced(Unbounded::Txn(UnboundedTxn {
                compare: vec![],
                success: vec![Unbounded::Kv(put("a")), Unbounded::Tick],
                failure: vec![],
            })),
        ];
        for (b, u) in bounded.iter().zip(&before) {
            let bytes = codec::encode(u).unwrap();
            assert_eq!(codec::encode(b).unwrap(), bytes, "{b}");
            assert_eq!(&codec::decode::<Command>(&bytes).unwrap(), b);
        }
        // The variants the nesting guard sits in keep their wire index.
        assert_eq!(codec::encode(&before[3]).unwrap()[1], 8);
        assert_eq!(codec::encode(&before[2]).unwrap()[1], 9);
    }

    #[test]
    fn nested_fences_and_transactions_do_not_decode() {
        let nested = [
            (
                "a fence in a fence",
                fenced(fenced(Unbounded::Kv(put("k")))),
            ),
            ("a transaction in a transaction", txn(vec![txn(vec![])])),
            (
                "a fence in a transaction",
                txn(vec![fenced(Unbounded::Tick)]),
            ),
            (
                "a fence in a transaction in a fence",
                fenced(txn(vec![fenced(Unbounded::Tick)])),
            ),
        ];
        for (what, u) in &nested {
            let err = decode(u).expect_err(what);
            assert!(matches!(err, codec::Error::Decode(_)), "{what}: {err}");
        }
        // One level of each is what apply takes.
        assert!(decode(&fenced(txn(vec![Unbounded::Kv(put("k"))]))).is_ok());
    }

    #[test]
    fn a_hundred_thousand_nested_fences_are_refused_without_descending() {
        // Built as raw bytes: Fenced (variant 9) { lock: "L", fence: 0, command: ... } around
        // a Tick, 100,000 levels deep. Decoding it recursively would overflow the stack.
        let mut bytes = vec![codec::FORMAT_VERSION];
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[9, 1, b'L', 0]);
        }
        bytes.push(0);
        let err = codec::decode::<Command>(&bytes).unwrap_err();
        assert!(matches!(err, codec::Error::Decode(_)), "{err}");
        let one_level = [codec::FORMAT_VERSION, 9, 1, b'L', 0, 0];
        assert!(matches!(
            codec::decode::<Command>(&one_level).unwrap(),
            Command::Fenced { .. }
        ));
        // The same inside a forwarded write's request.
        let mut req = vec![codec::FORMAT_VERSION, 1, 0];
        req.extend_from_slice(&bytes[1..]);
        assert!(codec::decode::<Request>(&req).is_err());
    }

    #[test]
    fn a_transaction_result_holds_no_transaction_result() {
        let inner = Response::<TxnResult>::Txn(TxnResult {
            succeeded: true,
            revision: 1,
            results: vec![],
        });
        // Built like the nested one below, a result of plain results decodes.
        let plain = (true, 2u64, vec![Response::<TxnResult>::Done]);
        let mut bytes = codec::encode(&plain).unwrap();
        bytes.insert(1, 10);
        assert!(matches!(
            codec::decode::<Response>(&bytes).unwrap(),
            Response::Txn(r) if r.results == [Response::Done]
        ));
        let outer = (true, 2u64, vec![inner]);
        let mut bytes = codec::encode(&outer).unwrap();
        // `Response::Txn` (variant 10) around that tuple, encoded as a `TxnResult`.
        bytes.insert(1, 10);
        assert!(codec::decode::<Response>(&bytes).is_err());
        bytes.remove(1);
        assert!(codec::decode::<TxnResult>(&bytes).is_err());
    }
}
