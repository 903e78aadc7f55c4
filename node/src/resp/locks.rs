//! db 2: stackd's fenced locks, taken the way Redis clients take a lock:
//! `SET name token NX PX ms` acquires (the token is the owner), `DELIFEQ name token` (or
//! `DELEX name IFEQ token`) releases if the token still holds it, `GET` answers the holder's
//! token, `PTTL`/`TTL` the lease left, and `STACKD.FENCE name token` the fence of the holder's
//! grant, for fenced writes (`?fence=name:F` on the HTTP API).

use bytes::Bytes;
use raft::command::{LockCmd, LockResult, OpResponse, Response};

use super::codec::Reply;
use super::conn::{int, text, Conn, Plan};
use crate::api::locks::LOCK_TTL_MS_MAX;
use crate::auth::{Op as Access, Resource};

const SUPPORTED: &str = "on db 2 (locks) the commands are SET name token NX PX ms (or EX s), \
                         GET, MGET, EXISTS, TTL, PTTL, DELIFEQ name token, DELEX name IFEQ \
                         token and STACKD.FENCE name token";

fn lock_result(r: &[OpResponse]) -> Result<&LockResult, Reply> {
    match r.first() {
        Some(Response::Lock(l)) => Ok(l),
        other => Err(Reply::err(format!("internal: unexpected answer {other:?}"))),
    }
}

/// A lock's owner token: checked like the HTTP API's `owner`.
fn token(arg: &Bytes) -> Result<String, Reply> {
    let t = text(arg, "a lock token")?;
    crate::api::validate_name("token", &t).map_err(super::conn::error_reply)?;
    Ok(t)
}

fn name(arg: &Bytes) -> Result<String, Reply> {
    let n = text(arg, "a lock name")?;
    crate::api::validate_name("lock", &n).map_err(super::conn::error_reply)?;
    Ok(n)
}

/// The lease of `SET name token NX PX ms` (or `EX s`): both options are required.
fn lease(args: &[Bytes]) -> Result<u64, Reply> {
    let (mut nx, mut ttl_ms) = (false, None);
    let mut i = 0;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        match (opt.as_slice(), args.get(i + 1)) {
            (b"NX", _) => nx = true,
            (b"PX" | b"EX", Some(v)) if ttl_ms.is_none() => {
                let n = int(v)?;
                let unit = if opt == b"EX" { 1000 } else { 1 };
                let ms = u64::try_from(n).ok().and_then(|n| n.checked_mul(unit));
                match ms {
                    Some(ms) if (1..=LOCK_TTL_MS_MAX).contains(&ms) => ttl_ms = Some(ms),
                    _ => {
                        return Err(Reply::err(format!(
                            "invalid expire time in 'set' command: a lock's lease is 1 to \
                             {LOCK_TTL_MS_MAX} ms"
                        )))
                    }
                }
                i += 1;
            }
            _ => return Err(Reply::err(SUPPORTED)),
        }
        i += 1;
    }
    match (nx, ttl_ms) {
        (true, Some(ttl_ms)) => Ok(ttl_ms),
        _ => Err(Reply::err(format!(
            "a lock is taken with NX and a lease (PX or EX): {SUPPORTED}"
        ))),
    }
}

impl Conn {
    pub(super) fn plan_lock(&self, command: &str, args: &[Bytes]) -> Result<Plan, Reply> {
        match command {
            "set" => {
                let lock = name(&args[1])?;
                let owner = token(&args[2])?;
                let ttl_ms = lease(&args[3..])?;
                self.may(Resource::Locks, &lock, Access::Write)?;
                let op = LockCmd::Acquire {
                    name: lock,
                    owner,
                    ttl_ms,
                    wait: None,
                };
                Ok(Plan {
                    ops: vec![op.into()],
                    answer: Box::new(|r| match lock_result(r) {
                        Ok(LockResult::Granted { .. }) => Reply::ok(),
                        Ok(LockResult::Held { .. }) => Reply::Nil,
                        Ok(other) => Reply::err(format!("internal: unexpected answer {other:?}")),
                        Err(e) => e,
                    }),
                })
            }
            "delifeq" | "delex" => {
                let lock = name(&args[1])?;
                let owner = match (command, args.len()) {
                    ("delifeq", 3) => token(&args[2])?,
                    ("delex", 4) if args[2].eq_ignore_ascii_case(b"ifeq") => token(&args[3])?,
                    _ => return Err(Reply::err(SUPPORTED)),
                };
                self.may(Resource::Locks, &lock, Access::Write)?;
                let op = LockCmd::ReleaseOwned { name: lock, owner };
                Ok(Plan {
                    ops: vec![op.into()],
                    answer: Box::new(|r| match lock_result(r) {
                        Ok(LockResult::Released) => Reply::Int(1),
                        Ok(LockResult::StaleFence { .. }) => Reply::Int(0),
                        Ok(other) => Reply::err(format!("internal: unexpected answer {other:?}")),
                        Err(e) => e,
                    }),
                })
            }
            _ => Err(Reply::err(SUPPORTED)),
        }
    }

    /// Reads of db 2, linearizable (after a read barrier).
    pub(super) async fn read_lock(&self, command: &str, args: &[Bytes]) -> Result<Reply, Reply> {
        if !matches!(
            command,
            "get" | "mget" | "exists" | "ttl" | "pttl" | "stackd.fence"
        ) {
            return Err(Reply::err(SUPPORTED));
        }
        let names = match command {
            "stackd.fence" => vec![name(&args[1])?],
            _ => args[1..].iter().map(name).collect::<Result<Vec<_>, _>>()?,
        };
        for n in &names {
            self.may(Resource::Locks, n, Access::Read)?;
        }
        self.barrier().await?;
        let state = self.resp.st.cluster.state();
        let now = state.meta.now_ms;
        // A lease past its end may show until the next apply settles it: not held.
        let holders: Vec<_> = names
            .iter()
            .map(|n| {
                state
                    .lock(n)
                    .and_then(|e| e.holder.as_ref())
                    .filter(|h| h.expires_at_ms > now)
            })
            .collect();
        let holder = holders[0];
        Ok(match command {
            "get" => holder.map_or(Reply::Nil, |h| Reply::text(h.owner.clone())),
            "mget" => Reply::Array(
                holders
                    .iter()
                    .map(|h| h.map_or(Reply::Nil, |h| Reply::text(h.owner.clone())))
                    .collect(),
            ),
            "exists" => Reply::Int(holders.iter().filter(|h| h.is_some()).count() as i64),
            "ttl" | "pttl" => match holder {
                None => Reply::Int(-2),
                Some(h) => {
                    let left = crate::api::remaining_ms(h.expires_at_ms, now);
                    let unit = if command == "ttl" { 1000 } else { 1 };
                    Reply::Int(((left + unit / 2) / unit) as i64)
                }
            },
            _ => match holder {
                Some(h) if h.owner.as_bytes() == &args[2][..] => Reply::Int(h.fence as i64),
                _ => Reply::Nil,
            },
        })
    }
}
