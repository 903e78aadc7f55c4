//! One RESP connection: its state, the command table, and the commands about the connection
//! itself (the handshake, `SELECT`, transactions).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use raft::command::{Compare, Op, OpResponse, Txn};

use super::codec::Reply;
use super::pubsub::Subscriptions;
use super::Resp;
use crate::auth::{Caller, Op as Access, Resource};
use crate::cluster::now_ms;
use crate::error::{ApiError, ErrorCode};

/// The databases a connection selects: each is one of stackd's primitives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Db {
    /// db 0: the replicated cache, read from this node's memory.
    Cache = 0,
    /// db 1: the key-value store, read linearizably.
    Kv = 1,
    /// db 2: locks, as Redis clients take them (`SET name token NX PX ms`), with fences.
    Locks = 2,
}

impl Db {
    pub(super) fn resource(self) -> Resource {
        match self {
            Db::Cache => Resource::Cache,
            Db::Kv => Resource::Kv,
            Db::Locks => Resource::Locks,
        }
    }
}

/// How a command may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// About the connection: allowed before `AUTH`.
    Handshake,
    /// About the connection, once authenticated.
    Connection,
    /// Reads data.
    Read,
    /// Writes data through the log: may be queued in `MULTI`.
    Write,
    /// Pub/sub: allowed while a RESP2 connection subscribes.
    PubSub,
}

/// A supported command: its name (lower case), its arity as Redis gives it (N: exactly N
/// words with the name; -N: at least N) and its [`Kind`].
pub(super) struct Spec {
    pub name: &'static str,
    pub arity: i32,
    pub kind: Kind,
}

macro_rules! commands {
    ($($name:literal $arity:literal $kind:ident),* $(,)?) => {
        /// Every supported command, in the order of `docs/redis.md`.
        pub(super) const COMMANDS: &[Spec] = &[$(Spec { name: $name, arity: $arity, kind: Kind::$kind }),*];
    };
}

commands! {
    "ping" -1 Connection, "echo" 2 Connection, "hello" -1 Handshake, "auth" -2 Handshake,
    "client" -2 Connection, "select" 2 Connection, "info" -1 Connection,
    "command" -1 Connection, "quit" -1 Handshake, "reset" 1 Handshake,
    "get" 2 Read, "set" -3 Write, "del" -2 Write, "unlink" -2 Write, "exists" -2 Read,
    "expire" -3 Write, "pexpire" -3 Write, "ttl" 2 Read, "pttl" 2 Read, "persist" 2 Write,
    "mget" -2 Read, "mset" -3 Write, "incr" 2 Write, "incrby" 3 Write, "decr" 2 Write,
    "decrby" 3 Write, "scan" -2 Read, "dbsize" 1 Read, "delifeq" 3 Write, "delex" -2 Write,
    "publish" 3 Write, "subscribe" -2 PubSub, "unsubscribe" -1 PubSub,
    "psubscribe" -2 PubSub, "punsubscribe" -1 PubSub,
    "multi" 1 Connection, "exec" 1 Connection, "discard" 1 Connection,
    "watch" -2 Connection, "unwatch" 1 Connection,
    "stackd.fence" 3 Read,
}

/// The supported command named `name` (in any case), with its place in [`COMMANDS`].
fn spec(name: &[u8]) -> Option<(usize, &'static Spec)> {
    COMMANDS
        .iter()
        .enumerate()
        .find(|(_, s)| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// A decoded request and its command's entry in [`COMMANDS`] (`None` for an unknown
/// command), looked up once.
pub(super) struct Request {
    found: Option<(usize, &'static Spec)>,
    args: Vec<Bytes>,
}

impl Request {
    pub(super) fn new(args: Vec<Bytes>) -> Request {
        Request {
            found: spec(&args[0]),
            args,
        }
    }
}

/// The counters of `stackd_resp_commands_total`, made once: one (ok, error) pair per command of
/// [`COMMANDS`], then one for unknown commands.
pub(super) struct Counters(Vec<[prometheus::IntCounter; 2]>);

impl Counters {
    pub(super) fn new(metrics: &crate::metrics::Metrics) -> Counters {
        let pair = |name: &str| {
            ["ok", "error"].map(|o| metrics.resp_commands.with_label_values(&[name, o]))
        };
        let mut all: Vec<_> = COMMANDS.iter().map(|s| pair(s.name)).collect();
        all.push(pair("unknown"));
        Counters(all)
    }
}

impl Spec {
    fn arity_ok(&self, n: usize) -> bool {
        if self.arity >= 0 {
            n == self.arity as usize
        } else {
            n >= (-self.arity) as usize
        }
    }
}

/// The queued writes of `MULTI`, planned as they were queued, and whether one was refused
/// while queueing.
#[derive(Default)]
struct Multi {
    queued: Vec<Plan>,
    refused: bool,
    budget: TxnBudget,
}

/// Most keys one connection `WATCH`es, and most operations in one transaction of the log (an
/// `MSET`, a `DEL` of several keys, a `MULTI`): the HTTP API's bound.
pub(super) const TXN_OPS_MAX: usize = crate::api::txn::TXN_OPS_MAX;

/// What one transaction of the log holds so far, against the HTTP API's bounds: at most
/// [`TXN_OPS_MAX`] operations, keys and values of at most `2 × limits.max_value_bytes + 64 KiB`
/// in all (as a transaction's JSON body), each key of the key-value store written once, and no
/// conditional write of it (the transaction's compares are its `WATCH`es).
#[derive(Default)]
pub(super) struct TxnBudget {
    ops: usize,
    bytes: usize,
    kv_keys: std::collections::BTreeSet<String>,
}

impl TxnBudget {
    pub(super) fn add(&mut self, ops: &[Op], max_value_bytes: usize) -> Result<(), Reply> {
        use raft::command::{CacheCmd, Command, KvCmd};
        let max_bytes = 2 * max_value_bytes + 64 * 1024;
        for op in ops {
            self.ops += 1;
            self.bytes += match op {
                Command::Cache(
                    CacheCmd::Set { key, value, .. } | CacheCmd::SetIf { key, value, .. },
                )
                | Command::Kv(KvCmd::Put { key, value, .. }) => key.len() + value.len(),
                _ => 64,
            };
            if let Command::Kv(
                KvCmd::Put {
                    key, if_revision, ..
                }
                | KvCmd::Delete { key, if_revision },
            ) = op
            {
                if if_revision.is_some() {
                    return Err(Reply::err(
                        "SET NX inside a transaction is not supported on db 1: WATCH the key \
                         instead",
                    ));
                }
                if !self.kv_keys.insert(key.clone()) {
                    return Err(Reply::err(format!(
                        "key {key:?} is written twice in one transaction"
                    )));
                }
            }
        }
        if self.ops > TXN_OPS_MAX {
            return Err(Reply::err(format!(
                "a transaction holds at most {TXN_OPS_MAX} writes"
            )));
        }
        if self.bytes > max_bytes {
            return Err(Reply::err(format!(
                "a transaction holds at most {max_bytes} bytes of keys and values \
                 (2 x limits.max_value_bytes + 64 KiB)"
            )));
        }
        Ok(())
    }
}

/// How the results of a planned write's operations answer it.
pub(super) type Answer = Box<dyn FnOnce(&[OpResponse]) -> Reply + Send + Sync>;

/// A planned write: the log operations it proposes, and how their results answer it.
pub(super) struct Plan {
    pub ops: Vec<Op>,
    pub answer: Answer,
}

pub(super) struct Conn {
    pub(super) resp: Arc<Resp>,
    id: u64,
    peer: SocketAddr,
    proto: u8,
    pub(super) db: Db,
    caller: Option<Caller>,
    name: Option<Bytes>,
    closing: bool,
    pub(super) subs: Subscriptions,
    multi: Option<Multi>,
    /// `WATCH`ed keys of the key-value store and the revision each had.
    watched: Vec<(String, u64)>,
    /// The access-control version the caller's credential was last checked at: checked
    /// again when tokens, policies or providers change, or once it expires.
    acl_checked: Option<u64>,
    /// The time and access-control version the current batch of pipelined commands is
    /// checked at, read once when its first command needs them (see [`Conn::authenticated`]).
    batch_at: Option<(u64, u64)>,
    /// Reads and writes of the current batch of pipelined commands already charged to the
    /// caller's rate limits (see [`Conn::prepay`]).
    prepaid: [u32; 2],
}

/// The text of an argument that must be UTF-8 (a key, a channel, a name).
pub(super) fn text(arg: &Bytes, what: &str) -> Result<String, Reply> {
    String::from_utf8(arg.to_vec())
        .map_err(|_| Reply::err(format!("{what} must be UTF-8 text in stackd")))
}

/// An integer argument, with Redis's error (no `+` sign, as in Redis).
pub(super) fn int(arg: &Bytes) -> Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Reply::err("value is not an integer or out of range"))
}

/// An API error as the Redis error a client expects.
pub(super) fn error_reply(e: ApiError) -> Reply {
    match e.code {
        ErrorCode::QuotaExceeded => Reply::Error(format!("OOM {}", e.message)),
        ErrorCode::Forbidden => Reply::Error(format!("NOPERM {}", e.message)),
        ErrorCode::Unauthenticated => Reply::Error(format!("NOAUTH {}", e.message)),
        code => {
            let code = serde_json::to_value(code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            Reply::err(format!("{code}: {}", e.message))
        }
    }
}

impl Drop for Conn {
    /// However the connection ends (a panic included), its subscriptions leave the counts.
    fn drop(&mut self) {
        self.subs.clear(&self.resp.listeners);
    }
}

impl Conn {
    pub(super) fn new(resp: Arc<Resp>, id: u64, peer: SocketAddr) -> Conn {
        let caller = resp
            .st
            .cluster
            .config()
            .api
            .insecure_no_auth
            .then_some(Caller::Anyone);
        Conn {
            resp,
            id,
            peer,
            proto: 2,
            db: Db::Cache,
            caller,
            name: None,
            closing: false,
            subs: Subscriptions::default(),
            multi: None,
            watched: Vec::new(),
            acl_checked: None,
            batch_at: None,
            prepaid: [0, 0],
        }
    }

    pub(super) fn proto(&self) -> u8 {
        self.proto
    }

    pub(super) fn closing(&self) -> bool {
        self.closing
    }

    pub(super) fn caller(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    /// `Ok` when the caller may do `op` on `name` of `resource`, else the `NOPERM` reply.
    pub(super) fn may(&self, resource: Resource, name: &str, op: Access) -> Result<(), Reply> {
        match &self.caller {
            Some(c) if c.may(&self.resp.st, resource, name, op) => Ok(()),
            _ => Err(Reply::Error(format!(
                "NOPERM this token has no {} access to {} {name:?}",
                op.as_str(),
                resource_name(resource)
            ))),
        }
    }

    /// Runs one command and answers it.
    pub(super) async fn run(&mut self, req: Request) -> Reply {
        let Request { found, args } = req;
        let Some((index, spec)) = found else {
            self.refuse_in_multi();
            self.count(COMMANDS.len(), false);
            let mut start: String = args[1..]
                .iter()
                .take(8)
                .map(|a| format!("'{}' ", String::from_utf8_lossy(&a[..a.len().min(64)])))
                .collect();
            let mut end = start.len().min(256);
            while !start.is_char_boundary(end) {
                end -= 1;
            }
            start.truncate(end);
            return Reply::err(format!(
                "unknown command '{}', with args beginning with: {start}",
                String::from_utf8_lossy(&args[0][..args[0].len().min(64)])
            ));
        };
        let reply = self.checked(spec, args).await;
        self.count(index, !reply.is_error());
        reply
    }

    /// Charges the caller's rate limits once for a batch of pipelined commands, rather than
    /// once per command; what a command then takes from [`Conn::authenticated`] is already
    /// paid. When a bucket has not room for the whole batch, nothing is charged and each
    /// command is charged (and refused) on its own. What a batch leaves unused is dropped by
    /// [`Conn::end_batch`].
    pub(super) fn prepay(&mut self, batch: &[Request]) {
        let Some(caller) = self
            .caller
            .as_ref()
            .filter(|c| !matches!(c, Caller::Anyone))
        else {
            return;
        };
        let mut counts = [0u32; 2];
        for (_, s) in batch.iter().filter_map(|r| r.found) {
            if s.kind != Kind::Handshake {
                counts[usize::from(s.kind == Kind::Write)] += 1;
            }
        }
        for (write, n) in [(false, counts[0]), (true, counts[1])] {
            if n > 1 && self.resp.st.rate.token_n(caller.actor(), write, n) {
                self.prepaid[usize::from(write)] = n;
            }
        }
    }

    /// A new caller (or none): its credential is checked afresh and nothing is prepaid for it.
    fn set_caller(&mut self, caller: Option<Caller>) {
        self.caller = caller;
        self.acl_checked = None;
        self.prepaid = [0, 0];
    }

    /// Drops what the batch's charge left unused, and the time it was checked at.
    pub(super) fn end_batch(&mut self) {
        self.prepaid = [0, 0];
        self.batch_at = None;
    }

    fn count(&self, index: usize, ok: bool) {
        self.resp.counters.0[index][usize::from(!ok)].inc();
    }

    fn refuse_in_multi(&mut self) {
        if let Some(m) = &mut self.multi {
            m.refused = true;
        }
    }

    async fn checked(&mut self, spec: &'static Spec, args: Vec<Bytes>) -> Reply {
        if !spec.arity_ok(args.len()) {
            self.refuse_in_multi();
            return Reply::err(format!(
                "wrong number of arguments for '{}' command",
                spec.name
            ));
        }
        if spec.kind != Kind::Handshake {
            if let Err(r) = self.authenticated(spec) {
                self.refuse_in_multi();
                return r;
            }
        }
        if self.proto == 2
            && self.subs.active()
            && !matches!(spec.kind, Kind::PubSub)
            && !matches!(spec.name, "ping" | "quit" | "reset")
        {
            return Reply::err(format!(
                "Can't execute '{}': only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT / RESET \
                 are allowed in this context",
                spec.name
            ));
        }
        if self.multi.is_some()
            && !matches!(
                spec.name,
                "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
            )
        {
            return self.queue(spec, args);
        }
        self.dispatch(spec, args).await
    }

    /// Checks the caller's credential (still valid, not expired) and its request rate.
    ///
    /// The commands of one batch (those read together off the connection) are checked at the
    /// time and access-control version its first command read, as an HTTP request is checked
    /// once when it arrives: a token deleted or expiring while a pipeline runs is refused from
    /// the next batch on. Reading them once per batch keeps the state's lock and the clock
    /// out of each pipelined command.
    fn authenticated(&mut self, spec: &Spec) -> Result<(), Reply> {
        let st = &self.resp.st;
        let Some(caller) = &self.caller else {
            return Err(Reply::Error("NOAUTH Authentication required.".into()));
        };
        if !matches!(caller, Caller::Anyone) {
            let (now, version) = *self
                .batch_at
                .get_or_insert_with(|| (now_ms(), st.cluster.state().acl().version()));
            let expired = caller.expires_at_ms().is_some_and(|at| at <= now);
            // Read before the check: a change made after it moves the version past this.
            if self.acl_checked != Some(version) || expired {
                match crate::auth::recheck(st, caller, now) {
                    Some(c) => {
                        self.acl_checked = Some(version);
                        self.caller = Some(c);
                    }
                    None => {
                        self.set_caller(None);
                        return Err(Reply::Error(
                            "NOAUTH the token expired or was deleted; AUTH again".into(),
                        ));
                    }
                }
            }
            let write = spec.kind == Kind::Write;
            let prepaid = &mut self.prepaid[usize::from(write)];
            if *prepaid > 0 {
                *prepaid -= 1;
            } else {
                let caller = self.caller.as_ref().expect("set above");
                st.rate.token(caller.actor(), write).map_err(error_reply)?;
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, spec: &'static Spec, args: Vec<Bytes>) -> Reply {
        let r: Result<Reply, Reply> = match spec.name {
            "ping" => Ok(self.ping(&args)),
            "echo" => Ok(Reply::Bulk(args[1].clone())),
            "hello" => self.hello(&args),
            "auth" => self.auth(&args[1..]),
            "client" => self.client(&args),
            "select" => self.select(&args[1]),
            "info" => Ok(self.info()),
            "command" => Ok(command(&args)),
            "quit" => {
                self.closing = true;
                Ok(Reply::ok())
            }
            "reset" => Ok(self.reset()),
            "multi" => self.multi(),
            "exec" => self.exec().await,
            "discard" => self.discard(),
            "watch" => self.watch(&args[1..]).await,
            "unwatch" => {
                self.watched.clear();
                Ok(Reply::ok())
            }
            "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" => {
                self.pubsub(spec.name, &args[1..])
            }
            "publish" => self.publish(&args[1], &args[2]).await,
            _ if spec.kind == Kind::Write => match self.plan(spec.name, &args) {
                Ok(plan) => self.apply(plan).await,
                Err(r) => Err(r),
            },
            _ => self.read(spec.name, &args).await,
        };
        r.unwrap_or_else(|e| e)
    }

    fn ping(&self, args: &[Bytes]) -> Reply {
        let msg = args.get(1);
        if self.proto == 2 && self.subs.active() {
            return Reply::Array(vec![
                Reply::text("pong"),
                Reply::Bulk(msg.cloned().unwrap_or_default()),
            ]);
        }
        match msg {
            Some(m) => Reply::Bulk(m.clone()),
            None => Reply::Status("PONG"),
        }
    }

    /// `HELLO [protover [AUTH username password] [SETNAME name]]`.
    fn hello(&mut self, args: &[Bytes]) -> Result<Reply, Reply> {
        let mut proto = self.proto;
        if let Some(v) = args.get(1) {
            proto = match int(v) {
                Ok(2) => 2,
                Ok(3) => 3,
                Ok(_) => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
                Err(_) => {
                    return Err(Reply::err(
                        "Protocol version is not an integer or out of range",
                    ))
                }
            };
        }
        let mut i = 2;
        let mut setname = None;
        while i < args.len() {
            match args[i].to_ascii_lowercase().as_slice() {
                b"auth" if i + 2 < args.len() => {
                    self.auth(&args[i + 1..i + 3])?;
                    i += 3;
                }
                b"setname" if i + 1 < args.len() => {
                    setname = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => {
                    return Err(Reply::err(format!(
                        "syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&args[i])
                    )))
                }
            }
        }
        if self.caller.is_none() {
            return Err(Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time"
                    .into(),
            ));
        }
        self.proto = proto;
        if setname.is_some() {
            self.name = setname;
        }
        Ok(Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (Reply::text("version"), Reply::text(REDIS_VERSION)),
            (Reply::text("proto"), Reply::Int(i64::from(self.proto))),
            (Reply::text("id"), Reply::Int(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(vec![])),
        ]))
    }

    /// `AUTH [username] password`: the password is a stackd token (its secret) or a JWT of a
    /// configured provider; the username is ignored (any, `default` included).
    fn auth(&mut self, args: &[Bytes]) -> Result<Reply, Reply> {
        if args.len() > 2 {
            return Err(Reply::err("syntax error"));
        }
        let st = &self.resp.st;
        if st.cluster.config().api.insecure_no_auth {
            self.caller = Some(Caller::Anyone);
            return Ok(Reply::ok());
        }
        let secret = String::from_utf8_lossy(&args[args.len() - 1]).into_owned();
        match crate::auth::authenticate(st, &secret, now_ms()) {
            Ok(caller) => {
                self.set_caller(Some(caller));
                Ok(Reply::ok())
            }
            Err(why) => {
                tracing::debug!(client = self.id, peer = %self.peer, why, "RESP AUTH refused");
                if let Err(e) = st.rate.auth_failed(self.peer.ip()) {
                    self.closing = true;
                    return Err(error_reply(e));
                }
                Err(Reply::Error(
                    "WRONGPASS invalid username-password pair or user is disabled.".into(),
                ))
            }
        }
    }

    fn client(&mut self, args: &[Bytes]) -> Result<Reply, Reply> {
        let sub = args[1].to_ascii_lowercase();
        match (sub.as_slice(), args.len()) {
            (b"setname", 3) => {
                if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                    return Err(Reply::err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    ));
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                Ok(Reply::ok())
            }
            (b"getname", 2) => Ok(self.name.clone().map_or(Reply::Nil, Reply::Bulk)),
            (b"id", 2) => Ok(Reply::Int(self.id as i64)),
            // Client libraries name themselves; nothing here depends on it.
            (b"setinfo", 4) => Ok(Reply::ok()),
            (b"info", 2) => Ok(Reply::text(format!(
                "id={} addr={} name={} db={} resp={}\n",
                self.id,
                self.peer,
                self.name
                    .as_ref()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default(),
                self.db as u8,
                self.proto
            ))),
            _ => Err(Reply::err(format!(
                "unknown subcommand or wrong number of arguments for 'client|{}' command; \
                 supported: SETNAME, GETNAME, ID, SETINFO, INFO",
                String::from_utf8_lossy(&args[1])
            ))),
        }
    }

    fn select(&mut self, arg: &Bytes) -> Result<Reply, Reply> {
        self.db = match int(arg)? {
            0 => Db::Cache,
            1 => Db::Kv,
            2 => Db::Locks,
            _ => {
                return Err(Reply::err(
                    "DB index is out of range: db 0 is the cache, db 1 the key-value store, \
                     db 2 locks",
                ))
            }
        };
        Ok(Reply::ok())
    }

    fn info(&self) -> Reply {
        let state = self.resp.st.cluster.state();
        let cache = state.cache_counts();
        let text = format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nstackd_version:{}\r\nredis_mode:standalone\r\n\
             process_id:{}\r\ntcp_port:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n\
             # Replication\r\nrole:master\r\n\r\n# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0\r\n\
             db1:keys={},expires=0,avg_ttl=0\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            self.resp
                .st
                .cluster
                .config()
                .resp
                .addr
                .map_or(0, |a| a.port()),
            self.resp.st.metrics.resp_connections.get(),
            cache.entries,
            state.key_count(),
        );
        Reply::text(text)
    }

    fn reset(&mut self) -> Reply {
        self.subs.clear(&self.resp.listeners);
        self.multi = None;
        self.watched.clear();
        self.proto = 2;
        self.db = Db::Cache;
        self.name = None;
        if !self.resp.st.cluster.config().api.insecure_no_auth {
            self.set_caller(None);
        }
        Reply::Status("RESET")
    }

    fn multi(&mut self) -> Result<Reply, Reply> {
        if self.multi.is_some() {
            return Err(Reply::err("MULTI calls can not be nested"));
        }
        self.multi = Some(Multi::default());
        Ok(Reply::ok())
    }

    fn discard(&mut self) -> Result<Reply, Reply> {
        if self.multi.take().is_none() {
            return Err(Reply::err("DISCARD without MULTI"));
        }
        self.watched.clear();
        Ok(Reply::ok())
    }

    /// Queues a command of `MULTI`: only writes, which become one transaction of the log.
    fn queue(&mut self, spec: &Spec, args: Vec<Bytes>) -> Reply {
        if self.db == Db::Locks {
            self.refuse_in_multi();
            return Reply::err("transactions are not supported on db 2 (locks)");
        }
        if spec.kind != Kind::Write || spec.name == "publish" {
            self.refuse_in_multi();
            return Reply::err(format!(
                "'{}' inside MULTI is not supported: a transaction holds writes of the current \
                 database only (see docs/redis.md)",
                spec.name
            ));
        }
        // Planned now, so that a bad argument aborts the transaction at EXEC as in Redis.
        let max_value_bytes = self.resp.st.cluster.config().limits.max_value_bytes;
        let planned = self.plan(spec.name, &args).and_then(|plan| {
            let m = self.multi.as_mut().expect("in MULTI");
            m.budget.add(&plan.ops, max_value_bytes)?;
            m.queued.push(plan);
            Ok(())
        });
        match planned {
            Ok(()) => Reply::Status("QUEUED"),
            Err(r) => {
                self.refuse_in_multi();
                r
            }
        }
    }

    /// `EXEC`: the queued writes as one transaction, guarded by the `WATCH`ed revisions.
    async fn exec(&mut self) -> Result<Reply, Reply> {
        let Some(multi) = self.multi.take() else {
            return Err(Reply::err("EXEC without MULTI"));
        };
        let watched = std::mem::take(&mut self.watched);
        if multi.refused {
            return Err(Reply::Error(
                "EXECABORT Transaction discarded because of previous errors.".into(),
            ));
        }
        let mut ops = Vec::new();
        let mut answers = Vec::new();
        for plan in multi.queued {
            answers.push((plan.ops.len(), plan.answer));
            ops.extend(plan.ops);
        }
        let txn = Txn {
            compare: watched
                .into_iter()
                .map(|(key, revision)| Compare::Revision { key, revision })
                .collect(),
            success: ops,
            failure: Vec::new(),
        };
        let result = crate::service::propose(&self.resp.st.cluster, txn, None)
            .await
            .map_err(|e| error_reply(e.into()))?;
        if !result.succeeded {
            return Ok(Reply::NilArray);
        }
        let mut results = result.results.as_slice();
        let mut replies = Vec::with_capacity(answers.len());
        for (n, answer) in answers {
            let (mine, rest) = results.split_at(n.min(results.len()));
            results = rest;
            replies.push(answer(mine));
        }
        Ok(Reply::Array(replies))
    }

    /// `WATCH key…`: on the key-value store, `EXEC` applies only if none of the keys changed
    /// since (compared by revision in the transaction).
    async fn watch(&mut self, keys: &[Bytes]) -> Result<Reply, Reply> {
        if self.multi.is_some() {
            return Err(Reply::err("WATCH inside MULTI is not allowed"));
        }
        if self.db != Db::Kv {
            return Err(Reply::err(
                "WATCH compares key revisions: it is supported on db 1 (the key-value store) \
                 only",
            ));
        }
        let keys = keys
            .iter()
            .map(|k| text(k, "a key"))
            .collect::<Result<Vec<_>, _>>()?;
        if self.watched.len() + keys.len() > TXN_OPS_MAX {
            return Err(Reply::err(format!(
                "a connection WATCHes at most {TXN_OPS_MAX} keys"
            )));
        }
        for k in &keys {
            self.may(Resource::Kv, k, Access::Read)?;
        }
        self.barrier().await?;
        let state = self.resp.st.cluster.state();
        for k in keys {
            let revision = state.kv_revision(&k);
            self.watched.push((k, revision));
        }
        Ok(Reply::ok())
    }
}

/// The Redis version whose commands and replies the listener follows, as `HELLO` and `INFO`
/// report it (clients pick features by it).
pub(super) const REDIS_VERSION: &str = "7.2.0";

fn resource_name(r: Resource) -> &'static str {
    match r {
        Resource::Kv => "key",
        Resource::Cache => "cache key",
        Resource::Locks => "lock",
        Resource::Channels => "channel",
        _ => "name",
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND DOCS` (empty: no docs are
/// served) and `COMMAND LIST`.
fn command(args: &[Bytes]) -> Reply {
    let info = |s: &Spec| {
        let flags = match s.kind {
            Kind::Write => vec![Reply::Status("write")],
            Kind::Read => vec![Reply::Status("readonly")],
            Kind::PubSub => vec![Reply::Status("pubsub")],
            Kind::Handshake | Kind::Connection => vec![Reply::Status("fast")],
        };
        let keyed =
            matches!(s.kind, Kind::Read | Kind::Write) && s.name != "dbsize" && s.name != "scan";
        let last = if matches!(s.name, "del" | "unlink" | "exists" | "mget" | "mset") {
            -1
        } else {
            i64::from(keyed)
        };
        let step = if s.name == "mset" {
            2
        } else {
            i64::from(keyed)
        };
        Reply::Array(vec![
            Reply::text(s.name),
            Reply::Int(i64::from(s.arity)),
            Reply::Array(flags),
            Reply::Int(i64::from(keyed)),
            Reply::Int(last),
            Reply::Int(step),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
        ])
    };
    let sub = args.get(1).map(|a| a.to_ascii_lowercase());
    match sub.as_deref() {
        None => Reply::Array(COMMANDS.iter().map(info).collect()),
        Some(b"count") => Reply::Int(COMMANDS.len() as i64),
        Some(b"list") => Reply::Array(COMMANDS.iter().map(|s| Reply::text(s.name)).collect()),
        Some(b"info") => Reply::Array(
            args[2..]
                .iter()
                .map(|n| spec(n).map_or(Reply::Nil, |(_, s)| info(s)))
                .collect(),
        ),
        Some(b"docs") => Reply::Map(vec![]),
        Some(other) => Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(other)
        )),
    }
}
