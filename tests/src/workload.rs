//! The clients of a fault run: each sends one operation at a time to its node and records
//! it (see [`crate::history`]); [`perform`] turns an HTTP answer into an outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::checker::queues::QueueLog;
use crate::history::{Kind, Outcome, Recorder};

/// Shared by the clients and the nemesis.
pub(crate) struct Ctx {
    pub rec: Recorder,
    pub bases: Vec<String>,
    pub key_prefix: String,
    pub timeline: Mutex<Vec<(u64, String)>>,
    /// Each node's life: raised when a fresh node replaces it at its address.
    pub lives: Vec<std::sync::atomic::AtomicU64>,
}

impl Ctx {
    pub fn note(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!("{what}");
        let at = self.rec.now_ns();
        self.timeline.lock().expect("timeline").push((at, what));
    }

    /// Node `node`'s current life (see `lives`).
    pub fn life(&self, node: usize) -> u64 {
        self.lives[node].load(Ordering::SeqCst)
    }

    pub fn key(&self, k: usize) -> String {
        format!("{}{k}", self.key_prefix)
    }

    /// The typed client of node `node`, each request giving up after [`OP_TIMEOUT`].
    pub fn api(&self, node: usize) -> node::api::client::Client {
        node::api::client::Client::with_http(&self.bases[node], http_client(OP_TIMEOUT))
    }
}

/// The client's per-request timeout: longer than the node's 5 s request timeout, so a 504
/// normally arrives before it.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(8);

pub(crate) fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("http client")
}

/// Sends one operation and classifies its answer.
pub(crate) async fn perform(http: &reqwest::Client, base: &str, key: &str, kind: Kind) -> Outcome {
    let url = format!("{base}/v1/kv/{key}");
    let req = match kind {
        Kind::Read => http.get(&url),
        Kind::Write { value } => http.put(&url).body(value.to_string()),
        Kind::Cas { expect, value } => http
            .put(format!("{url}?if_revision={expect}"))
            .body(value.to_string()),
    };
    let resp = match req.send().await {
        Ok(r) => r,
        // Refused before sending: certainly not applied.
        Err(e) if e.is_connect() => {
            return Outcome::Fail {
                reason: format!("connect: {e}"),
            }
        }
        Err(e) if matches!(kind, Kind::Read) => {
            return Outcome::Fail {
                reason: e.to_string(),
            }
        }
        Err(e) => {
            let reason = if e.is_timeout() {
                "client timeout".into()
            } else {
                e.to_string()
            };
            return Outcome::Unknown { reason };
        }
    };
    let status = resp.status().as_u16();
    let revision: Option<u64> = resp
        .headers()
        .get("x-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) if matches!(kind, Kind::Read) => {
            return Outcome::Fail {
                reason: e.to_string(),
            }
        }
        Err(e) => {
            return Outcome::Unknown {
                reason: format!("status {status}, body lost: {e}"),
            }
        }
    };
    let json = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    match (kind, status) {
        (Kind::Read, 200) => {
            let value = std::str::from_utf8(&body).ok().and_then(|s| s.parse().ok());
            match (value, revision) {
                (Some(v), Some(r)) => Outcome::Read {
                    value: Some((v, r)),
                },
                // Not a value any client wrote: keep it, the checker will reject it.
                _ => Outcome::Read {
                    value: Some((u64::MAX, revision.unwrap_or(0))),
                },
            }
        }
        (Kind::Read, 404) if json()["error"]["code"] == "not_found" => {
            Outcome::Read { value: None }
        }
        (Kind::Read, _) => Outcome::Fail {
            reason: format!("status {status}"),
        },
        (_, 200) => match json()["revision"].as_u64() {
            Some(revision) => Outcome::Written { revision },
            None => Outcome::Unknown {
                reason: "200 without a revision".into(),
            },
        },
        (Kind::Cas { .. }, 409) => match json()["error"]["current_revision"].as_u64() {
            Some(current) => Outcome::Conflict { current },
            None => Outcome::Unknown {
                reason: "409 without current_revision".into(),
            },
        },
        (_, 503) => Outcome::Fail {
            reason: "503 unavailable".into(),
        },
        (_, 504) => Outcome::Unknown {
            reason: "504 timeout".into(),
        },
        (_, s) => Outcome::Unknown {
            reason: format!("status {s}: {}", String::from_utf8_lossy(&body)),
        },
    }
}

pub(crate) async fn client(
    ctx: Arc<Ctx>,
    id: usize,
    node: usize,
    keys: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let http = http_client(OP_TIMEOUT);
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // The last revision this client saw per key: compare-and-sets expect it, so many succeed.
    let mut seen: HashMap<String, u64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let key = ctx.key(rng.random_range(0..keys));
        let op_id = ctx.rec.fresh_id();
        let dice: f64 = rng.random();
        let kind = if dice < 0.5 {
            Kind::Read
        } else if dice < 0.8 {
            Kind::Write { value: op_id }
        } else {
            Kind::Cas {
                expect: seen.get(&key).copied().unwrap_or(0),
                value: op_id,
            }
        };
        let idx = ctx.rec.invoke(op_id, id, node, &key, kind);
        let outcome = perform(&http, &ctx.bases[node], &key, kind).await;
        match &outcome {
            Outcome::Read { value } => {
                seen.insert(key.clone(), value.map(|(_, r)| r).unwrap_or(0));
            }
            Outcome::Written { revision } => {
                seen.insert(key.clone(), *revision);
            }
            Outcome::Conflict { current } => {
                seen.insert(key.clone(), *current);
            }
            Outcome::Fail { .. } | Outcome::Unknown { .. } => {}
        }
        let failed = !matches!(
            outcome,
            Outcome::Read { .. } | Outcome::Written { .. } | Outcome::Conflict { .. }
        );
        ctx.rec.complete(idx, outcome);
        if failed {
            // Pace a client whose node is down or cut off instead of spinning on refusals.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the lock clients of a run saw.
#[derive(Default)]
pub(crate) struct LockLog {
    pub grants: Vec<crate::checker::locks::Grant>,
    pub fenced_ok: Vec<crate::checker::locks::FencedWrite>,
    pub fenced_rejected: usize,
}

/// A lock client: acquires the run's lock (waiting up to 1 s, 2 s lease), makes one fenced
/// write while it holds it, then releases. Acquires are retried under one Idempotency-Key, so
/// an answer lost to a fault never leaves a grant nobody recorded twice.
pub(crate) async fn lock_client(
    ctx: Arc<Ctx>,
    id: usize,
    node: usize,
    log: Arc<Mutex<LockLog>>,
    stop: Arc<AtomicBool>,
) {
    let http = http_client(OP_TIMEOUT);
    let lock = format!("{}lock", ctx.key_prefix);
    let key = format!("{}fenced", ctx.key_prefix);
    let base = &ctx.bases[node];
    while !stop.load(Ordering::Relaxed) {
        let op = ctx.rec.fresh_id();
        let call = ctx.rec.now_ns();
        let r = http
            .post(format!("{base}/v1/locks/{lock}/acquire"))
            .header("Idempotency-Key", format!("lock-op-{op}"))
            .json(
                &serde_json::json!({ "owner": format!("c{id}"), "ttl_ms": 2000, "wait_ms": 1000 }),
            )
            .send()
            .await;
        let fence = match r {
            Ok(r) if r.status().as_u16() == 200 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                v["fence"].as_u64()
            }
            _ => None,
        };
        let Some(fence) = fence else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ret = ctx.rec.now_ns();
        log.lock()
            .expect("lock log")
            .grants
            .push(crate::checker::locks::Grant {
                id: op,
                owner: format!("c{id}"),
                fence,
                call,
                ret,
            });
        let wid = ctx.rec.fresh_id();
        let call = ctx.rec.now_ns();
        let r = http
            .put(format!("{base}/v1/kv/{key}?fence={lock}:{fence}"))
            .body(fence.to_string())
            .send()
            .await;
        let ret = ctx.rec.now_ns();
        match r.map(|r| r.status().as_u16()) {
            Ok(200) => {
                log.lock()
                    .expect("lock log")
                    .fenced_ok
                    .push(crate::checker::locks::FencedWrite {
                        id: wid,
                        fence,
                        call,
                        ret,
                    })
            }
            Ok(409) => log.lock().expect("lock log").fenced_rejected += 1,
            _ => {}
        }
        let _ = http
            .post(format!("{base}/v1/locks/{lock}/release"))
            .json(&serde_json::json!({ "fence": fence }))
            .send()
            .await;
    }
}

/// How long a claimed job stays invisible in a fault run: short, so faults that cut a worker
/// off make jobs come back within the run.
pub(crate) const JOB_VISIBILITY: Duration = Duration::from_secs(2);

/// The queue of a run.
pub(crate) fn queue_name(ctx: &Ctx) -> String {
    format!("{}jobs", ctx.key_prefix)
}

/// A producer: enqueues one job at a time on its node, each payload carrying a number of its
/// own, and records which enqueues were acknowledged (with their job id).
pub(crate) async fn queue_producer(
    ctx: Arc<Ctx>,
    node: usize,
    log: Arc<Mutex<QueueLog>>,
    stop: Arc<AtomicBool>,
) {
    let api = ctx.api(node);
    let queue = queue_name(&ctx);
    while !stop.load(Ordering::Relaxed) {
        let n = ctx.rec.fresh_id();
        let req = node::api::model::EnqueueRequest {
            payload: serde_json::json!({ "n": n }),
            delay_ms: None,
            run_at_ms: None,
            priority: 0,
            max_attempts: Some(1000),
            // Retried at once when a lease ends: the run checks delivery, not backoff, and a
            // job whose claims keep failing through a long run would otherwise wait out a
            // backoff grown to minutes before the queue can drain.
            backoff_ms: Some(0),
            unique_key: None,
        };
        let answer = api.enqueue(&queue, &req).await;
        let job = answer.as_ref().ok().and_then(|e| e.id.parse().ok());
        log.lock()
            .expect("queue log")
            .enqueues
            .push(crate::checker::queues::Enqueue { n, job });
        if job.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A worker: claims up to 10 jobs at a time on its node (long-polling), records each
/// delivery, and acks them at once; records the acks its node accepted.
pub(crate) async fn queue_worker(
    ctx: Arc<Ctx>,
    id: usize,
    node: usize,
    log: Arc<Mutex<QueueLog>>,
    stop: Arc<AtomicBool>,
) {
    let api = ctx.api(node);
    let queue = queue_name(&ctx);
    let req = node::api::model::ClaimRequest {
        worker: format!("w{id}"),
        // Up to 10 a claim, so workers keep up with producers over a long run.
        max: 10,
        visibility_ms: Some(JOB_VISIBILITY.as_millis() as u64),
        wait_ms: 500,
        moved: false,
    };
    while !stop.load(Ordering::Relaxed) {
        let call = ctx.rec.now_ns();
        let claimed = api.claim(&queue, &req).await;
        let ret = ctx.rec.now_ns();
        let Ok(claimed) = claimed else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for job in claimed.jobs {
            let Ok(job_id) = job.id.parse::<u64>() else {
                continue;
            };
            log.lock()
                .expect("queue log")
                .deliveries
                .push(crate::checker::queues::Delivery {
                    n: job.payload["n"].as_u64(),
                    job: job_id,
                    lease: job.lease,
                    attempt: job.attempt,
                    call,
                    ret,
                });
            let call = ctx.rec.now_ns();
            let acked = api.ack(&job.id, job.lease).await;
            let ret = ctx.rec.now_ns();
            let mut l = log.lock().expect("queue log");
            match acked {
                Ok(_) => l.acks.push(crate::checker::queues::Ack {
                    job: job_id,
                    lease: job.lease,
                    call,
                    ret,
                }),
                Err(_) => l.acks_refused += 1,
            }
        }
    }
}

/// The sessions a run's session clients share.
pub(crate) const SESSIONS: usize = 3;

/// What the session and cache clients of a run saw.
#[derive(Default)]
pub(crate) struct SessionCacheLog {
    pub sessions: Vec<crate::checker::sessions::SessionOp>,
    pub cache_writes: Vec<crate::checker::sessions::CacheWrite>,
    pub invalidations: Vec<crate::checker::sessions::CacheInvalidation>,
    pub hits: Vec<crate::checker::sessions::CacheHit>,
    pub ttl_writes: Vec<crate::checker::sessions::TtlWrite>,
    pub ttl_misses: Vec<crate::checker::sessions::TtlMiss>,
}

/// Whether a failed write may still have been applied: no answer after sending, a 504 or an
/// answer that is not one.
fn maybe_applied(e: &node::api::client::ApiError) -> bool {
    match e {
        node::api::client::ApiError::Transport(t) => !t.is_connect(),
        node::api::client::ApiError::Api { status, .. } => *status == 504,
        node::api::client::ApiError::Unexpected { .. } => true,
    }
}

/// A session client: a writer merges unique values into field `v` of one of the run's
/// sessions, a reader reads a session (linearizable), one at a time through its node. Writers
/// and readers are apart, so a node that cannot commit (its writes hang until they time out)
/// still reads all along.
pub(crate) async fn session_client(
    ctx: Arc<Ctx>,
    (node, writer): (usize, bool),
    sessions: Arc<Vec<String>>,
    log: Arc<Mutex<SessionCacheLog>>,
    stop: Arc<AtomicBool>,
) {
    use crate::checker::sessions::{FieldOp, SessionOp};
    let api = ctx.api(node);
    let mut rng = StdRng::seed_from_u64(((node as u64) << 1 | writer as u64) ^ 0x5e55);
    while !stop.load(Ordering::Relaxed) {
        let s = rng.random_range(0..sessions.len());
        let call = ctx.rec.now_ns();
        let recorded = if writer {
            let v = ctx.rec.fresh_id();
            let mut data = serde_json::Map::new();
            data.insert("v".into(), v.into());
            match api.session_update(&sessions[s], data).await {
                Ok(_) => Some((FieldOp::Write(v), Some(ctx.rec.now_ns()))),
                Err(e) if maybe_applied(&e) => Some((FieldOp::Write(v), None)),
                Err(_) => None,
            }
        } else {
            match api.session_get(&sessions[s]).await {
                Ok(got) => Some((
                    FieldOp::Read(got.data["v"].as_u64()),
                    Some(ctx.rec.now_ns()),
                )),
                Err(_) => None,
            }
        };
        match recorded {
            Some((op, ret)) => log.lock().expect("session log").sessions.push(SessionOp {
                session: s,
                op,
                call,
                ret,
            }),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Keys of the cache clients, each with a tag of its own: `(key suffix, tag suffix)`.
const CACHE_KEYS: [(usize, usize); 4] = [(0, 0), (1, 0), (2, 1), (3, 1)];

/// A cache client: writes unique values with their key's tag, invalidates a tag, or reads a
/// key, one at a time through its node.
pub(crate) async fn cache_client(
    ctx: Arc<Ctx>,
    node: usize,
    log: Arc<Mutex<SessionCacheLog>>,
    stop: Arc<AtomicBool>,
) {
    use crate::checker::sessions::{CacheHit, CacheInvalidation, CacheWrite};
    let api = ctx.api(node);
    let mut rng = StdRng::seed_from_u64(node as u64 ^ 0xcac4e);
    // An answer at or past the node's request timeout may come from a write the node had not
    // applied yet when it answered; only faster invalidations bind its later reads.
    let applied_within = Duration::from_millis(4_900).as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let (k, t) = CACHE_KEYS[rng.random_range(0..CACHE_KEYS.len())];
        let key = format!("{}cache{k}", ctx.key_prefix);
        let tag = format!("{}tag{t}", ctx.key_prefix);
        let roll = rng.random_range(0..10);
        let call = ctx.rec.now_ns();
        let ok = if roll < 4 {
            let value = ctx.rec.fresh_id();
            let w = node::api::client::CacheWrite {
                tags: vec![tag.clone()],
                ..Default::default()
            };
            let r = api.cache_set(&key, value.to_string(), &w).await;
            let ret = ctx.rec.now_ns();
            r.is_ok().then(|| {
                log.lock()
                    .expect("cache log")
                    .cache_writes
                    .push(CacheWrite {
                        node,
                        value,
                        tag,
                        ret,
                    })
            })
        } else if roll < 6 {
            let life = ctx.life(node);
            let r = api.cache_invalidate(vec![tag.clone()]).await;
            let ret = ctx.rec.now_ns();
            r.is_ok().then(|| {
                // Answered by the node of one life only: not across a replacement.
                if ret - call < applied_within && ctx.life(node) == life {
                    log.lock()
                        .expect("cache log")
                        .invalidations
                        .push(CacheInvalidation {
                            node,
                            life,
                            tag,
                            call,
                            ret,
                        })
                }
            })
        } else {
            let life = ctx.life(node);
            match api.cache_get(&key).await {
                Ok(v) => {
                    let value = std::str::from_utf8(&v.value)
                        .ok()
                        .and_then(|s| s.parse().ok());
                    if let (Some(value), true) = (value, ctx.life(node) == life) {
                        log.lock().expect("cache log").hits.push(CacheHit {
                            node,
                            life,
                            value,
                            call,
                        });
                    }
                    Some(())
                }
                Err(e) => (e.status() == Some(404)).then_some(()),
            }
        };
        if ok.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The TTL of the keys a TTL client writes.
pub(crate) const KEY_TTL: Duration = Duration::from_secs(10);

/// A TTL client: writes a key of its own with [`KEY_TTL`], then reads it (linearizable)
/// through its node every 300 ms until it is gone or a little past its TTL, then starts over
/// with a new key; records each write and each read that found the key absent.
pub(crate) async fn ttl_client(
    ctx: Arc<Ctx>,
    node: usize,
    log: Arc<Mutex<SessionCacheLog>>,
    stop: Arc<AtomicBool>,
) {
    use crate::checker::sessions::{TtlMiss, TtlWrite};
    let api = ctx.api(node);
    let w = node::api::client::KvWrite {
        ttl_ms: Some(KEY_TTL.as_millis() as u64),
        ..Default::default()
    };
    let watch_for = (KEY_TTL + Duration::from_secs(2)).as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{}ttl-n{node}-{}", ctx.key_prefix, ctx.rec.fresh_id());
        let call = ctx.rec.now_ns();
        if api.kv_put_with(&key, "x", &w).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let ret = ctx.rec.now_ns();
        log.lock().expect("ttl log").ttl_writes.push(TtlWrite {
            key: key.clone(),
            call,
            ret,
        });
        while !stop.load(Ordering::Relaxed) && ctx.rec.now_ns() < call + watch_for {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let read_call = ctx.rec.now_ns();
            match api.kv_get(&key).await {
                Err(e) if e.status() == Some(404) => {
                    let read_ret = ctx.rec.now_ns();
                    log.lock().expect("ttl log").ttl_misses.push(TtlMiss {
                        key: key.clone(),
                        call: read_call,
                        ret: read_ret,
                    });
                    break;
                }
                _ => {}
            }
        }
    }
}
