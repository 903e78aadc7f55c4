//! `/v1/queues` and `/v1/jobs`: job queues with leases, retries, dead letters and cron.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use raft::command::{Enqueue, QueueCmd, QueueResult, ScheduleSpec};
use raft::state::{Job, JobState};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::{Duration, Instant};

use super::{
    check_ms, idempotency_key, list_limit, params, read_barrier_unless_stale, remaining_ms,
    validate_name, AppState, JsonBody, Name, St,
};
use crate::error::{ApiError, ApiResult};

/// Longest delay and visibility: 365 days and 12 hours.
pub const DELAY_MS_MAX: u64 = 365 * 24 * 60 * 60 * 1000;
pub const VISIBILITY_MS_MAX: u64 = 12 * 60 * 60 * 1000;
/// Longest claim long-poll, most jobs per claim, most attempts.
pub const CLAIM_WAIT_MS_MAX: u64 = 60 * 1000;
pub const CLAIM_MAX: u32 = 100;
pub const MAX_ATTEMPTS_MAX: u32 = 1000;
/// Defaults: 3 attempts, 1 s backoff base, 30 s visibility.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 3;
pub const BACKOFF_MS_DEFAULT: u64 = 1000;
pub const VISIBILITY_MS_DEFAULT: u64 = 30_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    pub(crate) payload: Value,
    pub(crate) delay_ms: Option<u64>,
    pub(crate) run_at_ms: Option<u64>,
    #[serde(default)]
    pub(crate) priority: i64,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) backoff_ms: Option<u64>,
    pub(crate) unique_key: Option<String>,
}

/// Checks an enqueue and turns it into the replicated form (also used by `/v1/txn`).
pub(crate) fn enqueue_job(st: &AppState, b: EnqueueBody) -> ApiResult<Enqueue> {
    let payload = b.payload.to_string();
    let limit = st.cluster.config.limits.max_value_bytes;
    if payload.len() > limit {
        return Err(
            ApiError::too_large(format!("payload is over the {limit}-byte limit"))
                .with("limit", limit),
        );
    }
    if b.delay_ms.is_some() && b.run_at_ms.is_some() {
        return Err(ApiError::bad_request(
            "give delay_ms or run_at_ms, not both",
        ));
    }
    if let Some(d) = b.delay_ms {
        if d > DELAY_MS_MAX {
            return Err(
                ApiError::bad_request(format!("delay_ms must be at most {DELAY_MS_MAX}"))
                    .with("field", "delay_ms"),
            );
        }
    }
    let max_attempts = b.max_attempts.unwrap_or(MAX_ATTEMPTS_DEFAULT);
    if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_MAX {
        return Err(
            ApiError::bad_request(format!("max_attempts must be 1 to {MAX_ATTEMPTS_MAX}"))
                .with("field", "max_attempts"),
        );
    }
    let backoff_ms = b.backoff_ms.unwrap_or(BACKOFF_MS_DEFAULT);
    if backoff_ms > raft::state::BACKOFF_MAX_MS {
        return Err(ApiError::bad_request(format!(
            "backoff_ms must be at most {}",
            raft::state::BACKOFF_MAX_MS
        )));
    }
    if let Some(u) = &b.unique_key {
        validate_name("unique_key", u)?;
    }
    Ok(Enqueue {
        payload,
        delay_ms: b.delay_ms,
        run_at_ms: b.run_at_ms,
        priority: b.priority,
        max_attempts,
        backoff_ms,
        unique_key: b.unique_key,
    })
}

pub async fn enqueue(
    State(st): St,
    Name(queue): Name,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EnqueueBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = enqueue_job(&st, body)?;
    let idem = idempotency_key(&headers)?;
    match st
        .cluster
        .write_visible(QueueCmd::Enqueue { queue, job }, idem)
        .await?
    {
        QueueResult::Enqueued { id, existing } => {
            let status = if existing {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((
                status,
                Json(json!({ "id": id.to_string(), "existing": existing })),
            ))
        }
        other => Err(other.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    worker: String,
    #[serde(default = "one")]
    max: u32,
    visibility_ms: Option<u64>,
    #[serde(default)]
    wait_ms: u64,
}

fn one() -> u32 {
    1
}

pub async fn claim(
    State(st): St,
    Name(queue): Name,
    JsonBody(body): JsonBody<ClaimBody>,
) -> ApiResult<Json<Value>> {
    validate_name("worker", &body.worker)?;
    if body.max == 0 || body.max > CLAIM_MAX {
        return Err(
            ApiError::bad_request(format!("max must be 1 to {CLAIM_MAX}")).with("field", "max"),
        );
    }
    let visibility_ms = check_ms(
        "visibility_ms",
        body.visibility_ms.unwrap_or(VISIBILITY_MS_DEFAULT),
        VISIBILITY_MS_MAX,
    )?;
    if body.wait_ms > CLAIM_WAIT_MS_MAX {
        return Err(
            ApiError::bad_request(format!("wait_ms must be at most {CLAIM_WAIT_MS_MAX}"))
                .with("field", "wait_ms"),
        );
    }
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms);
    loop {
        let command = QueueCmd::Claim {
            queue: queue.clone(),
            worker: body.worker.clone(),
            max: body.max,
            visibility_ms,
        };
        // Not retried under an Idempotency-Key: a claim that timed out leaves jobs leased
        // until their visibility ends, when they are offered again.
        let jobs = match st.cluster.write_visible(command, None).await? {
            QueueResult::Claimed(jobs) => jobs,
            other => return Err(other.into()),
        };
        if !jobs.is_empty() || Instant::now() >= deadline {
            let jobs: Vec<Value> = jobs
                .into_iter()
                .map(|j| {
                    json!({
                        "id": j.id.to_string(),
                        "payload": serde_json::from_str::<Value>(&j.payload).unwrap_or(Value::Null),
                        "attempt": j.attempt,
                        "lease": j.lease,
                    })
                })
                .collect();
            return Ok(Json(json!({ "jobs": jobs })));
        }
        // Long-poll on this node's state until a job is ready, then claim again.
        let ready = st
            .cluster
            .wait_for_state(deadline, |s| s.queue_has_ready(&queue).then_some(()))
            .await?;
        if ready.is_none() {
            return Ok(Json(json!({ "jobs": [] })));
        }
    }
}

fn job_id(id: &str) -> ApiResult<u64> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no job {id:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    lease: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    lease: u64,
    error: Option<String>,
    retry_in_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    lease: u64,
    visibility_ms: u64,
}

async fn job_write(st: &AppState, command: QueueCmd, answer: Value) -> ApiResult<Json<Value>> {
    match st.cluster.write_visible(command, None).await? {
        QueueResult::Done => Ok(Json(answer)),
        QueueResult::NotFound => Err(ApiError::not_found("no such job (acked jobs are gone)")),
        other => Err(other.into()),
    }
}

pub async fn ack(
    State(st): St,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<AckBody>,
) -> ApiResult<Json<Value>> {
    let id = job_id(&id)?;
    job_write(
        &st,
        QueueCmd::Ack { id, lease: b.lease },
        json!({ "acked": true }),
    )
    .await
}

pub async fn nack(
    State(st): St,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<NackBody>,
) -> ApiResult<Json<Value>> {
    let id = job_id(&id)?;
    if let Some(r) = b.retry_in_ms {
        if r > DELAY_MS_MAX {
            return Err(ApiError::bad_request("retry_in_ms is too large"));
        }
    }
    let error = b.error.map(|e| e.chars().take(4096).collect());
    job_write(
        &st,
        QueueCmd::Nack {
            id,
            lease: b.lease,
            error,
            retry_in_ms: b.retry_in_ms,
        },
        json!({ "nacked": true }),
    )
    .await
}

pub async fn extend(
    State(st): St,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ExtendBody>,
) -> ApiResult<Json<Value>> {
    let id = job_id(&id)?;
    let visibility_ms = check_ms("visibility_ms", b.visibility_ms, VISIBILITY_MS_MAX)?;
    job_write(
        &st,
        QueueCmd::Extend {
            id,
            lease: b.lease,
            visibility_ms,
        },
        json!({ "extended": true, "visibility_ms": visibility_ms }),
    )
    .await
}

/// A read with no parameters but `consistency`.
async fn read(st: &AppState, q: Option<String>) -> ApiResult<()> {
    read_barrier_unless_stale(st, &params(q, &["consistency"])?).await
}

fn state_name(j: &Job, now: u64) -> &'static str {
    match j.state {
        JobState::Waiting if j.due_ms > now => "delayed",
        JobState::Waiting => "ready",
        JobState::InFlight => "in_flight",
        JobState::Dead => "dead",
    }
}

fn job_json(id: u64, j: &Job, now: u64) -> Value {
    json!({
        "id": id.to_string(),
        "queue": j.queue,
        "payload": serde_json::from_str::<Value>(&j.payload).unwrap_or(Value::Null),
        "state": state_name(j, now),
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "priority": j.priority,
        "due_in_ms": remaining_ms(j.due_ms, now),
        "created_at_ms": j.created_at_ms,
        "last_error": j.last_error,
        "worker": j.worker,
        "unique_key": j.unique_key,
    })
}

pub async fn get_job(
    State(st): St,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = job_id(&id)?;
    read(&st, q).await?;
    let state = st.cluster.state.read().expect("state lock");
    match state.job(id) {
        Some(j) => Ok(Json(job_json(id, j, state.meta.now_ms))),
        None => Err(ApiError::not_found(format!(
            "no job {id} (completed jobs are removed)"
        ))),
    }
}

pub async fn stats(
    State(st): St,
    Name(queue): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    read(&st, q).await?;
    let state = st.cluster.state.read().expect("state lock");
    let s = state.queue_stats(&queue).unwrap_or_default();
    Ok(Json(json!({
        "ready": s.ready,
        "delayed": s.delayed,
        "in_flight": s.in_flight,
        "dead": s.dead,
        "completed": s.completed,
    })))
}

pub async fn list_queues(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    read(&st, q).await?;
    let state = st.cluster.state.read().expect("state lock");
    let queues: Vec<Value> = state
        .queue_names()
        .into_iter()
        .filter_map(|name| {
            let s = state.queue_stats(&name)?;
            Some(json!({
                "queue": name, "ready": s.ready, "delayed": s.delayed,
                "in_flight": s.in_flight, "dead": s.dead, "completed": s.completed,
            }))
        })
        .collect();
    Ok(Json(json!({ "queues": queues })))
}

pub async fn dead(
    State(st): St,
    Name(queue): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["consistency", "limit"])?;
    let limit = list_limit(&p)?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state.read().expect("state lock");
    let now = state.meta.now_ms;
    let jobs: Vec<Value> = state
        .dead_jobs(&queue, limit)
        .into_iter()
        .map(|(id, j)| job_json(id, j, now))
        .collect();
    Ok(Json(json!({ "jobs": jobs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

pub async fn replay(
    State(st): St,
    Name(queue): Name,
    headers: HeaderMap,
    JsonBody(b): JsonBody<ReplayBody>,
) -> ApiResult<Json<Value>> {
    let ids = match (b.ids, b.all) {
        (Some(ids), false) => {
            if ids.is_empty() || ids.len() > 1000 {
                return Err(ApiError::bad_request("ids must list 1 to 1000 job ids"));
            }
            Some(
                ids.iter()
                    .map(|i| {
                        i.parse::<u64>().map_err(|_| {
                            ApiError::bad_request(format!("{i:?} is not a job id"))
                                .with("field", "ids")
                        })
                    })
                    .collect::<ApiResult<Vec<u64>>>()?,
            )
        }
        (None, true) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give either {\"ids\": [...]} or {\"all\": true}",
            ))
        }
    };
    let idem = idempotency_key(&headers)?;
    match st
        .cluster
        .write_visible(QueueCmd::Replay { queue, ids }, idem)
        .await?
    {
        QueueResult::Count(n) => Ok(Json(json!({ "replayed": n }))),
        other => Err(other.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    cron: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    priority: i64,
    max_attempts: Option<u32>,
}

pub async fn set_schedule(
    State(st): St,
    Path((queue, name)): Path<(String, String)>,
    JsonBody(b): JsonBody<ScheduleBody>,
) -> ApiResult<Json<Value>> {
    validate_name("queue", &queue)?;
    validate_name("name", &name)?;
    if let Err(e) = raft::state::next_fire_ms(&b.cron, 0) {
        return Err(ApiError::bad_request(e).with("field", "cron"));
    }
    let payload = b.payload.to_string();
    if payload.len() > st.cluster.config.limits.max_value_bytes {
        return Err(ApiError::too_large("payload is over the value limit"));
    }
    let max_attempts = b.max_attempts.unwrap_or(MAX_ATTEMPTS_DEFAULT);
    if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_MAX {
        return Err(ApiError::bad_request(format!(
            "max_attempts must be 1 to {MAX_ATTEMPTS_MAX}"
        )));
    }
    let spec = ScheduleSpec {
        cron: b.cron,
        payload,
        priority: b.priority,
        max_attempts,
    };
    match st
        .cluster
        .write_visible(QueueCmd::ScheduleSet { queue, name, spec }, None)
        .await?
    {
        QueueResult::Scheduled { next_at_ms } => Ok(Json(json!({ "next_at_ms": next_at_ms }))),
        other => Err(other.into()),
    }
}

pub async fn delete_schedule(
    State(st): St,
    Path((queue, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    validate_name("queue", &queue)?;
    validate_name("name", &name)?;
    match st
        .cluster
        .write_visible(QueueCmd::ScheduleDelete { queue, name }, None)
        .await?
    {
        QueueResult::Count(_) => Ok(Json(json!({ "deleted": true }))),
        QueueResult::NotFound => Err(ApiError::not_found("no such schedule")),
        other => Err(other.into()),
    }
}

pub async fn list_schedules(
    State(st): St,
    Name(queue): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    read(&st, q).await?;
    let state = st.cluster.state.read().expect("state lock");
    let schedules: Vec<Value> = state
        .schedules(&queue)
        .into_iter()
        .map(|(name, s)| {
            json!({
                "name": name,
                "cron": s.cron,
                "payload": serde_json::from_str::<Value>(&s.payload).unwrap_or(Value::Null),
                "next_at_ms": s.next_at_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "schedules": schedules })))
}
