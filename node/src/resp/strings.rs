//! The string commands, on the selected database's primitive: db 0 the cache (reads from this
//! node's applied state; writes answered once this node applied them), db 1 the key-value
//! store (reads linearizable, by ReadIndex).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use raft::command::{
    CacheCmd, CacheCond, CacheResult, CacheTtl, Command, KvCmd, KvResult, Op, OpResponse, Response,
    Txn,
};

use super::codec::Reply;
use super::conn::{error_reply, int, text, Conn, Db, Plan};
use super::pubsub::{glob_match, literal_prefix};
use crate::api::cache::CACHE_TTL_MS_MAX;
use crate::auth::Op as Access;
use crate::cluster::now_ms;

/// A key found by a read: its value and the milliseconds it has left (`None`: no TTL).
type Found = (Bytes, Option<u64>);

/// Values up to this size are copied out of the cache rather than shared.
const COPIED_VALUE_BYTES: usize = 1024;

/// A cache value for a reply: a small one copied (a fresh allocation the thread owns), a
/// larger one shared. Sharing costs two atomic updates of a count that other readers' cores
/// touch too, and a cache miss to reach it; for a small value that is more than the copy.
fn shared_or_copied(value: &Bytes) -> Bytes {
    if value.len() <= COPIED_VALUE_BYTES {
        Bytes::copy_from_slice(value)
    } else {
        value.clone()
    }
}

/// Longest TTL of a key of the key-value store set over RESP: 100 years.
const KV_TTL_MS_MAX: u64 = 100 * 365 * 24 * 60 * 60 * 1000;
/// Most keys one `SCAN` call examines (`COUNT` is capped to it).
const SCAN_COUNT_MAX: usize = 1000;
/// `SCAN` cursors this node remembers; the oldest is forgotten past it.
const CURSORS_MAX: usize = 10_000;

/// The node's `SCAN` cursors: a cursor is a number (clients parse it as one), standing for the
/// key the scan stopped after. Any connection to this node may continue a scan; a cursor
/// unknown here (forgotten, or from another node) is refused.
#[derive(Default)]
pub(crate) struct Cursors(Mutex<CursorTable>);

#[derive(Default)]
struct CursorTable {
    next: u64,
    after: HashMap<u64, (Db, String)>,
    order: VecDeque<u64>,
}

impl Cursors {
    fn remember(&self, db: Db, after: String) -> u64 {
        let mut t = self.0.lock().expect("cursor table");
        if t.next == 0 {
            t.next = u64::from(rand::random::<u32>()) + 1;
        }
        let id = t.next;
        t.next += 1;
        t.after.insert(id, (db, after));
        t.order.push_back(id);
        while t.order.len() > CURSORS_MAX {
            if let Some(old) = t.order.pop_front() {
                t.after.remove(&old);
            }
        }
        id
    }

    fn recall(&self, db: Db, id: u64) -> Option<String> {
        let t = self.0.lock().expect("cursor table");
        t.after
            .get(&id)
            .filter(|(d, _)| *d == db)
            .map(|(_, k)| k.clone())
    }
}

/// The options of a `SET`.
#[derive(Clone, Copy)]
struct SetOptions {
    only: Option<CacheCond>,
    get: bool,
    ttl: CacheTtl,
}

/// `SET` on db 1 (the key-value store): `NX` and a TTL, not `XX`, `GET` or `KEEPTTL`.
fn kv_set(k: String, value: Vec<u8>, options: SetOptions) -> Result<Plan, Reply> {
    let SetOptions { only, get, ttl } = options;
    if get || only == Some(CacheCond::Present) || ttl == CacheTtl::Keep {
        return Err(Reply::err(
            "SET with XX, GET or KEEPTTL is supported on db 0 (the cache) only; \
             on db 1 (the key-value store) use NX, EX, PX, EXAT or PXAT",
        ));
    }
    let ttl_ms = match ttl {
        CacheTtl::In(ms) => Some(ms),
        CacheTtl::At(at) => Some(at.saturating_sub(now_ms()).max(1)),
        _ => None,
    };
    if ttl_ms.is_some_and(|t| t > KV_TTL_MS_MAX) {
        return Err(Reply::err(
            "invalid expire time in 'set' command: keys live at most 100 years",
        ));
    }
    let op = KvCmd::Put {
        key: k,
        value,
        if_revision: only.map(|_| 0),
        ttl_ms,
    };
    Ok(plan(vec![op.into()], |r| match kv_result(r) {
        Ok(KvResult::Put { .. }) => Reply::ok(),
        Ok(KvResult::Conflict { .. }) => Reply::Nil,
        Ok(other) => Reply::err(format!("internal: unexpected answer {other:?}")),
        Err(e) => e,
    }))
}

fn key(arg: &Bytes) -> Result<String, Reply> {
    key_str(arg).map(str::to_string)
}

/// A key argument, checked, borrowed from the request (a read needs no copy of it).
fn key_str(arg: &Bytes) -> Result<&str, Reply> {
    let k =
        std::str::from_utf8(arg).map_err(|_| Reply::err("a key must be UTF-8 text in stackd"))?;
    crate::api::validate_name("key", k).map_err(error_reply)?;
    Ok(k)
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

fn not_on_kv(command: &str) -> Reply {
    Reply::err(format!(
        "{} is supported on db 0 (the cache) only: the key-value store has no such atomic \
         command (see docs/redis.md)",
        command.to_ascii_uppercase()
    ))
}

/// The TTL of an `EX`/`PX`/`EXAT`/`PXAT` option, in milliseconds (relative or absolute).
fn expiry_ms(value: &Bytes, unit_ms: u64, command: &str) -> Result<u64, Reply> {
    let bad = || Reply::err(format!("invalid expire time in '{command}' command"));
    let n = int(value)?;
    if n <= 0 {
        return Err(bad());
    }
    (n as u64).checked_mul(unit_ms).ok_or_else(bad)
}

fn cache_ttl_ok(ttl_ms: u64, command: &str) -> Result<u64, Reply> {
    if ttl_ms > CACHE_TTL_MS_MAX {
        return Err(Reply::err(format!(
            "invalid expire time in '{command}' command: cache entries live at most 30 days \
             ({CACHE_TTL_MS_MAX} ms)"
        )));
    }
    Ok(ttl_ms)
}

/// `OpResponse` of a cache or key-value operation, or the reply of an unexpected one.
fn cache_result(r: &[OpResponse]) -> Result<&CacheResult, Reply> {
    match r.first() {
        Some(Response::Cache(c)) => Ok(c),
        other => Err(Reply::err(format!("internal: unexpected answer {other:?}"))),
    }
}

fn kv_result(r: &[OpResponse]) -> Result<&KvResult, Reply> {
    match r.first() {
        Some(Response::Kv(k)) => Ok(k),
        other => Err(Reply::err(format!("internal: unexpected answer {other:?}"))),
    }
}

fn plan(ops: Vec<Op>, answer: impl FnOnce(&[OpResponse]) -> Reply + Send + Sync + 'static) -> Plan {
    Plan {
        ops,
        answer: Box::new(answer),
    }
}

/// Removed entries or deleted keys, summed over the results of deletes.
fn removed(results: &[OpResponse]) -> Reply {
    let n: u64 = results
        .iter()
        .map(|r| match r {
            Response::Cache(CacheResult::Removed(n)) => *n,
            Response::Kv(KvResult::Delete { deleted: true, .. }) => 1,
            _ => 0,
        })
        .sum();
    Reply::Int(n as i64)
}

impl Conn {
    fn writable(&self, k: &str) -> Result<(), Reply> {
        self.may(self.db.resource(), k, Access::Write)
    }

    fn readable(&self, k: &str) -> Result<(), Reply> {
        self.may(self.db.resource(), k, Access::Read)
    }

    fn cache_limits(&self) -> raft::command::CacheLimits {
        crate::api::cache::limits(&self.resp.st)
    }

    /// The log operations of a write command and how their results answer it; checks the
    /// arguments and the caller's rights first.
    pub(super) fn plan(&self, name: &str, args: &[Bytes]) -> Result<Plan, Reply> {
        if self.db == Db::Locks {
            return self.plan_lock(name, args);
        }
        match name {
            "set" => self.plan_set(args),
            "del" | "unlink" => self.plan_del(args),
            "mset" => self.plan_mset(args),
            "incr" | "decr" | "incrby" | "decrby" => self.plan_incr(name, args),
            "expire" | "pexpire" => self.plan_expire(name, args),
            "persist" => self.plan_persist(name, args),
            "delifeq" | "delex" => self.plan_delifeq(name, args),
            _ => Err(Reply::err(format!("internal: {name} is not a write"))),
        }
    }

    /// The key of a command db 0 (the cache) alone has, once the caller may write it.
    fn cache_key(&self, name: &str, args: &[Bytes]) -> Result<String, Reply> {
        if self.db != Db::Cache {
            return Err(not_on_kv(name));
        }
        let k = key(&args[1])?;
        self.writable(&k)?;
        Ok(k)
    }

    /// `DEL`/`UNLINK` of one or more keys, each once.
    fn plan_del(&self, args: &[Bytes]) -> Result<Plan, Reply> {
        let mut keys = args[1..].iter().map(key).collect::<Result<Vec<_>, _>>()?;
        // A key named twice is deleted once, as in Redis.
        keys.sort();
        keys.dedup();
        let mut ops = Vec::with_capacity(keys.len());
        for k in keys {
            self.writable(&k)?;
            ops.push(match self.db {
                Db::Cache => CacheCmd::Delete { key: k }.into(),
                Db::Kv | Db::Locks => KvCmd::Delete {
                    key: k,
                    if_revision: None,
                }
                .into(),
            });
        }
        Ok(plan(ops, removed))
    }

    /// `MSET key value [key value ...]`: one transaction; a key named twice takes its last value.
    fn plan_mset(&self, args: &[Bytes]) -> Result<Plan, Reply> {
        if args.len().is_multiple_of(2) {
            return Err(Reply::err("wrong number of arguments for 'mset' command"));
        }
        // A key named twice takes its last value, as in Redis.
        let mut pairs = std::collections::BTreeMap::new();
        for pair in args[1..].chunks(2) {
            let k = key(&pair[0])?;
            self.writable(&k)?;
            pairs.insert(k, &pair[1]);
        }
        let ops = pairs
            .into_iter()
            .map(|(k, v)| self.put(k, v.to_vec()))
            .collect();
        Ok(plan(ops, |_| Reply::ok()))
    }

    /// `INCR`, `DECR`, `INCRBY`, `DECRBY` on db 0: atomic in the state machine.
    fn plan_incr(&self, name: &str, args: &[Bytes]) -> Result<Plan, Reply> {
        let k = self.cache_key(name, args)?;
        let by = match name {
            "incr" => 1,
            "decr" => -1,
            "incrby" => int(&args[2])?,
            _ => int(&args[2])?
                .checked_neg()
                .ok_or_else(|| Reply::err("decrement would overflow"))?,
        };
        let op = CacheCmd::Incr {
            key: k,
            by,
            limits: self.cache_limits(),
        };
        Ok(plan(vec![op.into()], |r| match cache_result(r) {
            Ok(CacheResult::Counter(n)) => Reply::Int(*n),
            Ok(CacheResult::NotInteger) => Reply::err("value is not an integer or out of range"),
            Ok(CacheResult::Overflow) => Reply::err("increment or decrement would overflow"),
            Ok(other) => Reply::err(format!("internal: unexpected answer {other:?}")),
            Err(e) => e,
        }))
    }

    /// `EXPIRE`/`PEXPIRE key ttl` on db 0: a TTL in the past deletes the key.
    fn plan_expire(&self, name: &str, args: &[Bytes]) -> Result<Plan, Reply> {
        let k = self.cache_key(name, args)?;
        if args.len() > 3 {
            return Err(Reply::err(format!(
                "{} options NX, XX, GT and LT are not supported",
                name.to_ascii_uppercase()
            )));
        }
        let n = int(&args[2])?;
        let unit = if name == "expire" { 1000 } else { 1 };
        if n <= 0 {
            // As in Redis: a TTL in the past deletes the key.
            return Ok(plan(vec![CacheCmd::Delete { key: k }.into()], removed));
        }
        let ttl_ms = (n as u64)
            .checked_mul(unit)
            .ok_or_else(|| Reply::err(format!("invalid expire time in '{name}' command")))?;
        let op = CacheCmd::Expire {
            key: k,
            ttl_ms: Some(cache_ttl_ok(ttl_ms, name)?),
        };
        Ok(plan(vec![op.into()], touched))
    }

    /// `PERSIST key` on db 0.
    fn plan_persist(&self, name: &str, args: &[Bytes]) -> Result<Plan, Reply> {
        let k = self.cache_key(name, args)?;
        // Answers 0 for a key without a TTL, as Redis does (decided in apply).
        let op = CacheCmd::Expire {
            key: k,
            ttl_ms: None,
        };
        Ok(plan(vec![op.into()], touched))
    }

    /// `DELIFEQ key value` and `DELEX key [IFEQ value]` on db 0: deletes only while the value is the one given.
    fn plan_delifeq(&self, name: &str, args: &[Bytes]) -> Result<Plan, Reply> {
        let k = self.cache_key(name, args)?;
        let value = match (name, args.len()) {
            ("delifeq", 3) => args[2].to_vec(),
            ("delex", 4) if args[2].eq_ignore_ascii_case(b"ifeq") => args[3].to_vec(),
            // DELEX key: a plain delete.
            ("delex", 2) => return Ok(plan(vec![CacheCmd::Delete { key: k }.into()], removed)),
            ("delex", _) => {
                return Err(Reply::err(
                    "DELEX supports the IFEQ condition only (DELEX key IFEQ value)",
                ))
            }
            _ => return Err(syntax()),
        };
        let op = CacheCmd::DeleteIfEq { key: k, value };
        Ok(plan(vec![op.into()], removed))
    }

    /// A plain write of `value` under `k`, with no TTL.
    fn put(&self, k: String, value: Vec<u8>) -> Op {
        match self.db {
            Db::Cache => CacheCmd::Set {
                key: k,
                value,
                ttl_ms: None,
                tags: Vec::new(),
                limits: self.cache_limits(),
            }
            .into(),
            Db::Kv | Db::Locks => KvCmd::Put {
                key: k,
                value,
                if_revision: None,
                ttl_ms: None,
            }
            .into(),
        }
    }

    /// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT t | PXAT t | KEEPTTL]`.
    fn plan_set(&self, args: &[Bytes]) -> Result<Plan, Reply> {
        let k = key(&args[1])?;
        let value = args[2].to_vec();
        let options = self.set_options(&args[3..])?;
        let SetOptions { only, get, ttl } = options;
        self.writable(&k)?;
        if get {
            self.readable(&k)?;
        }
        match self.db {
            Db::Cache => {
                if let CacheTtl::In(ms) = ttl {
                    cache_ttl_ok(ms, "set")?;
                }
                let op = CacheCmd::SetIf {
                    key: k,
                    value,
                    ttl,
                    only,
                    return_previous: get,
                    limits: self.cache_limits(),
                };
                Ok(plan(vec![op.into()], move |r| match cache_result(r) {
                    Ok(CacheResult::Written { previous, .. }) if get => previous
                        .clone()
                        .map_or(Reply::Nil, |p| Reply::Bulk(Bytes::from(p.into_vec()))),
                    Ok(CacheResult::Written { written: true, .. }) => Reply::ok(),
                    Ok(CacheResult::Written { written: false, .. }) => Reply::Nil,
                    Ok(other) => Reply::err(format!("internal: unexpected answer {other:?}")),
                    Err(e) => e,
                }))
            }
            Db::Kv | Db::Locks => kv_set(k, value, options),
        }
    }

    /// `SET`'s options after the value: `NX`/`XX`, `GET`, and one of `KEEPTTL`, `EX`, `PX`,
    /// `EXAT`, `PXAT`.
    fn set_options(&self, args: &[Bytes]) -> Result<SetOptions, Reply> {
        let mut o = SetOptions {
            only: None,
            get: false,
            ttl: CacheTtl::None,
        };
        let mut i = 0;
        while i < args.len() {
            let opt = args[i].to_ascii_uppercase();
            let next = args.get(i + 1);
            match (opt.as_slice(), next) {
                (b"NX", _) if o.only.is_none() => o.only = Some(CacheCond::Absent),
                (b"XX", _) if o.only.is_none() => o.only = Some(CacheCond::Present),
                (b"GET", _) => o.get = true,
                (b"KEEPTTL", _) if o.ttl == CacheTtl::None => o.ttl = CacheTtl::Keep,
                (b"EX" | b"PX" | b"EXAT" | b"PXAT", Some(v)) if o.ttl == CacheTtl::None => {
                    let unit = if opt.starts_with(b"E") { 1000 } else { 1 };
                    let ms = expiry_ms(v, unit, "set")?;
                    o.ttl = if opt.ends_with(b"AT") {
                        if ms.saturating_sub(now_ms()) > CACHE_TTL_MS_MAX && self.db == Db::Cache {
                            cache_ttl_ok(u64::MAX, "set")?;
                        }
                        CacheTtl::At(ms)
                    } else {
                        CacheTtl::In(ms)
                    };
                    i += 1;
                }
                _ => return Err(syntax()),
            }
            i += 1;
        }
        Ok(o)
    }

    /// Proposes a planned write: one operation as itself, several as one transaction.
    pub(super) async fn apply(&self, plan: Plan) -> Result<Reply, Reply> {
        let cluster = &self.resp.st.cluster;
        let fail = |e: crate::cluster::WriteError| error_reply(e.into());
        let mut ops = plan.ops;
        if ops.len() > 1 {
            let max_value_bytes = self.resp.st.cluster.config().limits.max_value_bytes;
            super::conn::TxnBudget::default().add(&ops, max_value_bytes)?;
        }
        let results: Vec<OpResponse> = match ops.len() {
            0 => Vec::new(),
            1 => match ops.pop().expect("one") {
                Command::Cache(c) => vec![Response::Cache(
                    crate::service::propose(cluster, c, None)
                        .await
                        .map_err(fail)?,
                )],
                Command::Kv(k) => vec![Response::Kv(
                    crate::service::propose(cluster, k, None)
                        .await
                        .map_err(fail)?,
                )],
                Command::Lock(l) => vec![Response::Lock(
                    crate::service::propose(cluster, l, None)
                        .await
                        .map_err(fail)?,
                )],
                other => self.txn(vec![other]).await?,
            },
            _ => self.txn(ops).await?,
        };
        Ok((plan.answer)(&results))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Vec<OpResponse>, Reply> {
        let txn = Txn {
            compare: Vec::new(),
            success: ops,
            failure: Vec::new(),
        };
        let r = crate::service::propose(&self.resp.st.cluster, txn, None)
            .await
            .map_err(|e| error_reply(e.into()))?;
        Ok(r.results)
    }

    /// Waits until this node's state is linearizable for a read of the key-value store.
    pub(super) async fn barrier(&self) -> Result<(), Reply> {
        if self.db != Db::Cache {
            self.resp
                .st
                .cluster
                .read_barrier()
                .await
                .map_err(|e| error_reply(e.into()))?;
        }
        Ok(())
    }

    /// A read command.
    pub(super) async fn read(&self, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
        if self.db == Db::Locks {
            return self.read_lock(name, args).await;
        }
        if name == "stackd.fence" {
            return Err(Reply::err(
                "STACKD.FENCE answers a lock's fence: SELECT 2 (locks) first",
            ));
        }
        match name {
            "get" | "mget" | "exists" | "ttl" | "pttl" => {
                // The first key apart: a single-key read allocates nothing for its keys.
                let first = key_str(&args[1])?;
                let rest = args[2..]
                    .iter()
                    .map(key_str)
                    .collect::<Result<Vec<_>, _>>()?;
                for k in std::iter::once(&first).chain(&rest) {
                    self.readable(k)?;
                }
                self.barrier().await?;
                let state = self.resp.st.cluster.state();
                let mut found = std::iter::once(first)
                    .chain(rest)
                    .map(|k| self.lookup(&state, k));
                Ok(match name {
                    "get" => found
                        .next()
                        .expect("one key")?
                        .map_or(Reply::Nil, |(v, _)| Reply::Bulk(v)),
                    "mget" => Reply::Array(
                        found
                            .map(|f| Ok(f?.map_or(Reply::Nil, |(v, _)| Reply::Bulk(v))))
                            .collect::<Result<_, Reply>>()?,
                    ),
                    "exists" => {
                        let mut n = 0;
                        for f in found {
                            n += i64::from(f?.is_some());
                        }
                        Reply::Int(n)
                    }
                    _ => {
                        let unit = if name == "ttl" { 1000 } else { 1 };
                        Reply::Int(match found.next().expect("one key")? {
                            None => -2,
                            Some((_, None)) => -1,
                            Some((_, Some(ms))) => ((ms + unit / 2) / unit) as i64,
                        })
                    }
                })
            }
            "scan" => self.scan(args).await,
            "dbsize" => {
                self.barrier().await?;
                let state = self.resp.st.cluster.state();
                Ok(Reply::Int(match self.db {
                    Db::Cache => state.cache_counts().entries as i64,
                    Db::Kv | Db::Locks => state.key_count() as i64,
                }))
            }
            _ => Err(Reply::err(format!("internal: {name} is not a read"))),
        }
    }

    /// A key's value and time left, from this node's state.
    fn lookup(&self, state: &raft::State, k: &str) -> Result<Option<Found>, Reply> {
        let found = match self.db {
            Db::Cache => state
                .cache_get(k)
                .map(|e| (shared_or_copied(&e.value), e.expires_at_ms)),
            Db::Kv | Db::Locks => state
                .get(k)
                .map_err(|e| Reply::err(e.to_string()))?
                .map(|e| (Bytes::from(e.value), e.expires_at_ms)),
        };
        let now = state.meta.now_ms;
        Ok(found.map(|(value, at)| (value, at.map(|at| crate::api::remaining_ms(at, now)))))
    }

    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE string]`: keys in key order, at most
    /// `COUNT` examined per call (default 10). Every key present for the whole scan is
    /// returned once.
    async fn scan(&self, args: &[Bytes]) -> Result<Reply, Reply> {
        let cursor = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| Reply::err("invalid cursor"))?;
        let ScanOptions {
            pattern,
            count,
            only_strings,
        } = scan_options(&args[2..])?;
        let prefix = pattern.as_deref().map(literal_prefix).unwrap_or("");
        let resource = self.db.resource();
        let allowed = self
            .caller()
            .is_some_and(|c| c.may_all(&self.resp.st, resource, prefix, Access::Read));
        if !allowed {
            return Err(Reply::Error(format!(
                "NOPERM this token may not read every key under {prefix:?}: give MATCH a \
                 pattern whose literal prefix it may read"
            )));
        }
        let after =
            match cursor {
                0 => None,
                c => Some(self.resp.cursors.recall(self.db, c).ok_or_else(|| {
                    Reply::err("invalid cursor: unknown to this node, or expired")
                })?),
            };
        self.barrier().await?;
        let (keys, more) = self.keys_page(prefix, after.as_deref(), count);
        let next = match (more, keys.last()) {
            (true, Some(last)) => self.resp.cursors.remember(self.db, last.clone()),
            _ => 0,
        };
        let matched = keys
            .into_iter()
            .filter(|k| {
                only_strings
                    && pattern
                        .as_ref()
                        .is_none_or(|p| glob_match(p.as_bytes(), k.as_bytes()))
            })
            .map(Reply::text)
            .collect();
        Ok(Reply::Array(vec![
            Reply::text(next.to_string()),
            Reply::Array(matched),
        ]))
    }

    /// Up to `count` of the database's keys under `prefix` after `after`, in key order, and
    /// whether more remain.
    fn keys_page(&self, prefix: &str, after: Option<&str>, count: usize) -> (Vec<String>, bool) {
        let state = self.resp.st.cluster.state();
        match self.db {
            Db::Cache => {
                let (items, more) = state.cache_list(prefix, after, count);
                let keys = items.into_iter().map(|(k, _)| k.to_string()).collect();
                (keys, more)
            }
            Db::Kv | Db::Locks => {
                let (items, more) = state.kv_keys(prefix, after, count);
                (items.into_iter().map(str::to_string).collect(), more)
            }
        }
    }
}

/// The options of a `SCAN`.
struct ScanOptions {
    pattern: Option<String>,
    count: usize,
    only_strings: bool,
}

/// `SCAN`'s options after the cursor: `MATCH pattern`, `COUNT n` (default 10), `TYPE type`.
fn scan_options(args: &[Bytes]) -> Result<ScanOptions, Reply> {
    let mut o = ScanOptions {
        pattern: None,
        count: 10,
        only_strings: true,
    };
    for pair in args.chunks(2) {
        let [opt, v] = pair else {
            return Err(syntax());
        };
        match opt.to_ascii_uppercase().as_slice() {
            b"MATCH" => o.pattern = Some(text(v, "a pattern")?),
            b"COUNT" => {
                let n = int(v)?;
                if n < 1 {
                    return Err(syntax());
                }
                o.count = (n as usize).min(SCAN_COUNT_MAX);
            }
            b"TYPE" => o.only_strings = v.eq_ignore_ascii_case(b"string"),
            _ => return Err(syntax()),
        }
    }
    Ok(o)
}

fn touched(r: &[OpResponse]) -> Reply {
    match cache_result(r) {
        Ok(CacheResult::Touched(t)) => Reply::Int(i64::from(*t)),
        Ok(other) => Reply::err(format!("internal: unexpected answer {other:?}")),
        Err(e) => e,
    }
}
