//! `/v1/queues` and `/v1/jobs`: job queues with leases, retries, dead letters and cron.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use raft::command::{Enqueue, IdemKey, QueueCmd, QueueResult, ScheduleSpec};
use raft::state::{Job, JobListState, JobState};
use serde_json::Value;
use tokio::time::{Duration, Instant};

use super::model::{
    AckRequest, Acked, ClaimRequest, Claimed, ClaimedJob, DeleteDeadRequest, Deleted, DeletedCount,
    EnqueueRequest, Enqueued, ExtendRequest, Extended, JobInfo, JobList, JobStateName, NackRequest,
    Nacked, NextFire, QueueList, QueueStats, QueueSummary, ReplayRequest, Replayed, ScheduleInfo,
    ScheduleList, ScheduleRequest,
};
use super::{
    check_ms, list_limit, params, read_barrier_unless_stale, remaining_ms, validate_name, AppState,
    IdempotencyKey, JsonBody, ListLimit, Name, NamedWrite, PathParams, ReadConsistency, St,
};
use crate::error::{
    ApiError, ApiResult, BadRequest, ErrorBody, NotFound, StaleLease, TooLarge, Unsettled,
    WriteFailures,
};
use crate::service;

/// The `{name}` of a queue's routes, as the API reference lists it (read by [`Name`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct QueueName {
    /// queue name, 1..=512 bytes of UTF-8, no control characters
    #[allow(dead_code)]
    name: String,
}

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

/// Checks an enqueue and turns it into the replicated form (also used by `/v1/txn`).
pub(crate) fn enqueue_job(st: &AppState, b: EnqueueRequest) -> ApiResult<Enqueue> {
    let payload = b.payload.to_string();
    let limit = st.cluster.config().limits.max_value_bytes;
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

/// Enqueue a job
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/jobs",
    description = "Claims order: priority (higher first), due time, enqueue order.",
    params(QueueName, IdempotencyKey),
    request_body = EnqueueRequest,
    responses(
        (status = 201, description = "enqueued", body = Enqueued),
        (status = 200, description = "a queued job has this unique_key: existing true, its id", body = Enqueued),
        BadRequest, TooLarge, WriteFailures,
    )
)]
pub async fn enqueue(
    State(st): St,
    req: NamedWrite<EnqueueRequest>,
) -> ApiResult<(StatusCode, Json<Enqueued>)> {
    let job = enqueue_job(&st, req.body)?;
    let command = QueueCmd::Enqueue {
        queue: req.name,
        job,
    };
    match crate::service::propose(&st.cluster, command, req.idem).await? {
        QueueResult::Enqueued { id, existing } => {
            let status = if existing {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((
                status,
                Json(Enqueued {
                    id: id.to_string(),
                    existing,
                }),
            ))
        }
        other => Err(other.into()),
    }
}

/// Claim ready jobs, each with a lease; long-polls up to wait_ms on any node
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/claim",
    params(QueueName),
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "the claimed jobs (maybe none)", body = Claimed),
        (status = 503, description = "unavailable; with reason moved (and node, api_addr): this node is above api.move_clients_above, long-poll there with moved: true", body = ErrorBody),
        BadRequest, TooLarge, Unsettled,
    )
)]
pub async fn claim(
    State(st): St,
    Name(queue): Name,
    JsonBody(body): JsonBody<ClaimRequest>,
) -> ApiResult<Json<Claimed>> {
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
    if body.wait_ms > 0 && !body.moved {
        if let Some((node, api_addr)) = st.cluster.move_client_to() {
            st.metrics.clients_moved.inc();
            return Err(ApiError::unavailable(format!(
                "this node is busy: long-poll at node {node} ({api_addr}) with moved: true"
            ))
            .with("reason", "moved")
            .with("node", node)
            .with("api_addr", api_addr));
        }
    }
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms);
    let jobs = service::queues::claim(
        &st.cluster,
        &queue,
        &body.worker,
        body.max,
        visibility_ms,
        deadline,
    )
    .await?
    .map_err(ApiError::from)?;
    let jobs = jobs
        .into_iter()
        .map(|j| ClaimedJob {
            id: j.id.to_string(),
            payload: serde_json::from_str::<Value>(&j.payload).unwrap_or(Value::Null),
            attempt: j.attempt,
            lease: j.lease,
        })
        .collect();
    Ok(Json(Claimed { jobs }))
}

/// The `{id}` of a job's routes, as the API reference lists it (read by [`job_id`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct JobId {
    /// job id (a u64, as a string)
    #[allow(dead_code)]
    id: String,
}

fn job_id(id: &str) -> ApiResult<u64> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no job {id:?}")))
}

async fn job_write<T>(st: &AppState, command: QueueCmd, answer: T) -> ApiResult<Json<T>> {
    match crate::service::propose(&st.cluster, command, None).await? {
        QueueResult::Done => Ok(Json(answer)),
        QueueResult::NotFound => Err(ApiError::not_found("no such job (acked jobs are gone)")),
        other => Err(other.into()),
    }
}

/// Complete a claimed job
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/ack",
    params(JobId),
    request_body = AckRequest,
    responses((status = 200, description = "acked", body = Acked), BadRequest, NotFound, StaleLease, TooLarge, Unsettled)
)]
pub async fn ack(
    State(st): St,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<AckRequest>,
) -> ApiResult<Json<Acked>> {
    let command = QueueCmd::Ack {
        id: job_id(&id)?,
        lease: b.lease,
    };
    job_write(&st, command, Acked { acked: true }).await
}

/// Fail a claimed job
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/nack",
    description = "Retried after its backoff (or retry_in_ms), or dead after max_attempts claims.",
    params(JobId),
    request_body = NackRequest,
    responses((status = 200, description = "nacked", body = Nacked), BadRequest, NotFound, StaleLease, TooLarge, Unsettled)
)]
pub async fn nack(
    State(st): St,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<NackRequest>,
) -> ApiResult<Json<Nacked>> {
    let id = job_id(&id)?;
    if let Some(r) = b.retry_in_ms {
        if r > DELAY_MS_MAX {
            return Err(ApiError::bad_request("retry_in_ms is too large"));
        }
    }
    let error = b.error.map(|e| e.chars().take(4096).collect());
    let command = QueueCmd::Nack {
        id,
        lease: b.lease,
        error,
        retry_in_ms: b.retry_in_ms,
    };
    job_write(&st, command, Nacked { nacked: true }).await
}

/// Keep a claimed job invisible for visibility_ms more
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/extend",
    params(JobId),
    request_body = ExtendRequest,
    responses((status = 200, description = "extended", body = Extended), BadRequest, NotFound, StaleLease, TooLarge, Unsettled)
)]
pub async fn extend(
    State(st): St,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<ExtendRequest>,
) -> ApiResult<Json<Extended>> {
    let id = job_id(&id)?;
    let visibility_ms = check_ms("visibility_ms", b.visibility_ms, VISIBILITY_MS_MAX)?;
    let command = QueueCmd::Extend {
        id,
        lease: b.lease,
        visibility_ms,
    };
    let answer = Extended {
        extended: true,
        visibility_ms,
    };
    job_write(&st, command, answer).await
}

/// A read with no parameters but `consistency`: the state to read, once the read may go on.
async fn read(
    st: &AppState,
    q: Option<String>,
) -> ApiResult<std::sync::RwLockReadGuard<'_, raft::State>> {
    read_barrier_unless_stale(st, &params(q, &["consistency"])?).await?;
    Ok(st.cluster.state())
}

fn state_name(j: &Job, now: u64) -> JobStateName {
    match j.state {
        JobState::Waiting if j.due_ms > now => JobStateName::Delayed,
        JobState::Waiting => JobStateName::Ready,
        JobState::InFlight => JobStateName::InFlight,
        JobState::Dead => JobStateName::Dead,
    }
}

fn job_info(id: u64, j: &Job, now: u64) -> JobInfo {
    JobInfo {
        id: id.to_string(),
        queue: j.queue.clone(),
        payload: serde_json::from_str::<Value>(&j.payload).unwrap_or(Value::Null),
        state: state_name(j, now),
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        priority: j.priority,
        due_in_ms: remaining_ms(j.due_ms, now),
        created_at_ms: j.created_at_ms,
        last_error: j.last_error.clone(),
        worker: j.worker.clone(),
        unique_key: j.unique_key.clone(),
    }
}

/// A job that is not yet completed
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    params(JobId, ReadConsistency),
    responses((status = 200, description = "the job", body = JobInfo), BadRequest, NotFound, Unsettled)
)]
pub async fn get_job(
    State(st): St,
    PathParams(id): PathParams<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<JobInfo>> {
    let id = job_id(&id)?;
    let state = read(&st, q).await?;
    match state.job(id) {
        Some(j) => Ok(Json(job_info(id, j, state.meta.now_ms))),
        None => Err(ApiError::not_found(format!(
            "no job {id} (completed jobs are removed)"
        ))),
    }
}

/// Job counts of a queue
#[utoipa::path(
    get,
    path = "/v1/queues/{name}",
    params(QueueName, ReadConsistency),
    responses((status = 200, description = "counts", body = QueueStats), BadRequest, Unsettled)
)]
pub async fn stats(
    State(st): St,
    Name(queue): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<QueueStats>> {
    let state = read(&st, q).await?;
    let s = state.queue_stats(&queue).unwrap_or_default();
    Ok(Json(QueueStats {
        ready: s.ready,
        delayed: s.delayed,
        in_flight: s.in_flight,
        dead: s.dead,
        completed: s.completed,
    }))
}

/// Every queue with its counts
#[utoipa::path(
    get,
    path = "/v1/queues",
    params(ReadConsistency),
    responses((status = 200, description = "the queues", body = QueueList), BadRequest, Unsettled)
)]
pub async fn list_queues(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<QueueList>> {
    let state = read(&st, q).await?;
    let queues = state
        .queue_names()
        .into_iter()
        .filter_map(|name| {
            let s = state.queue_stats(&name)?;
            Some(QueueSummary {
                queue: name,
                ready: s.ready,
                delayed: s.delayed,
                in_flight: s.in_flight,
                dead: s.dead,
                completed: s.completed,
            })
        })
        .collect();
    Ok(Json(QueueList { queues }))
}

/// Dead jobs with their last error
#[utoipa::path(
    get,
    path = "/v1/queues/{name}/dead",
    params(QueueName, ListLimit, ReadConsistency),
    responses((status = 200, description = "dead jobs", body = JobList), BadRequest, Unsettled)
)]
pub async fn dead(
    State(st): St,
    Name(queue): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<JobList>> {
    let p = params(q, &["consistency", "limit"])?;
    let limit = list_limit(&p)?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state();
    let now = state.meta.now_ms;
    let jobs = state
        .dead_jobs(&queue, limit)
        .into_iter()
        .map(|(id, j)| job_info(id, j, now))
        .collect();
    Ok(Json(JobList { jobs }))
}

/// Jobs of a queue by state
#[utoipa::path(
    get,
    path = "/v1/queues/{name}/jobs",
    description = "Ready jobs in the order a claim takes them, delayed ones by due time, in-flight and dead ones by id; without state, the ready, delayed, in-flight and dead jobs in that order, limit in all.",
    params(
        QueueName,
        ("state" = Option<JobStateName>, Query, description = "ready, delayed, in_flight or dead; every state when absent"),
        ListLimit,
        ReadConsistency,
    ),
    responses((status = 200, description = "jobs", body = JobList), BadRequest, Unsettled)
)]
pub async fn list_jobs(
    State(st): St,
    Name(queue): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<JobList>> {
    let p = params(q, &["state", "limit", "consistency"])?;
    let state_filter = match p.get("state").map(String::as_str) {
        None => None,
        Some("ready") => Some(JobListState::Ready),
        Some("delayed") => Some(JobListState::Delayed),
        Some("in_flight") => Some(JobListState::InFlight),
        Some("dead") => Some(JobListState::Dead),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state must be ready, delayed, in_flight or dead, got {other:?}"
            ))
            .with("field", "state"))
        }
    };
    let limit = list_limit(&p)?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state();
    let now = state.meta.now_ms;
    let jobs = state
        .jobs(&queue, state_filter, limit)
        .into_iter()
        .map(|(id, j)| job_info(id, j, now))
        .collect();
    Ok(Json(JobList { jobs }))
}

/// Job ids of a replay or delete: `{ids: [...]}` (1 to 1000) or `{all: true}` (`None`).
fn job_selection(ids: Option<Vec<String>>, all: bool) -> ApiResult<Option<Vec<u64>>> {
    match (ids, all) {
        (Some(ids), false) => {
            if ids.is_empty() || ids.len() > 1000 {
                return Err(ApiError::bad_request("ids must list 1 to 1000 job ids"));
            }
            Ok(Some(
                ids.iter()
                    .map(|i| {
                        i.parse::<u64>().map_err(|_| {
                            ApiError::bad_request(format!("{i:?} is not a job id"))
                                .with("field", "ids")
                        })
                    })
                    .collect::<ApiResult<Vec<u64>>>()?,
            ))
        }
        (None, true) => Ok(None),
        _ => Err(ApiError::bad_request(
            "give either {\"ids\": [...]} or {\"all\": true}",
        )),
    }
}

/// Proposes a delete or a replay of dead jobs; how many it moved or deleted.
async fn dead_jobs_write(
    st: &AppState,
    command: QueueCmd,
    idem: Option<IdemKey>,
) -> ApiResult<u64> {
    match crate::service::propose(&st.cluster, command, idem).await? {
        QueueResult::Count(n) => Ok(n),
        other => Err(other.into()),
    }
}

/// Delete dead jobs for good
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/dead/delete",
    description = "The listed ids that are dead jobs of this queue (others are left alone), or every dead job with all; answers how many went.",
    params(QueueName, IdempotencyKey),
    request_body = DeleteDeadRequest,
    responses((status = 200, description = "how many dead jobs were deleted", body = DeletedCount), BadRequest, TooLarge, WriteFailures)
)]
pub async fn delete_dead(
    State(st): St,
    req: NamedWrite<DeleteDeadRequest>,
) -> ApiResult<Json<DeletedCount>> {
    let ids = job_selection(req.body.ids, req.body.all)?;
    let command = QueueCmd::DeleteDead {
        queue: req.name,
        ids,
    };
    let deleted = dead_jobs_write(&st, command, req.idem).await?;
    Ok(Json(DeletedCount { deleted }))
}

/// Move dead jobs back with fresh attempts
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/dead/replay",
    params(QueueName, IdempotencyKey),
    request_body = ReplayRequest,
    responses((status = 200, description = "how many jobs moved", body = Replayed), BadRequest, TooLarge, WriteFailures)
)]
pub async fn replay(State(st): St, req: NamedWrite<ReplayRequest>) -> ApiResult<Json<Replayed>> {
    let ids = job_selection(req.body.ids, req.body.all)?;
    let command = QueueCmd::Replay {
        queue: req.name,
        ids,
    };
    let replayed = dead_jobs_write(&st, command, req.idem).await?;
    Ok(Json(Replayed { replayed }))
}

/// The `{queue}` and `{name}` of a schedule's routes, as the API reference lists them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ScheduleName {
    /// queue name
    #[allow(dead_code)]
    queue: String,
    /// schedule name
    #[allow(dead_code)]
    name: String,
}

/// Create or replace a cron schedule
#[utoipa::path(
    put,
    path = "/v1/queues/{queue}/schedules/{name}",
    description = "UTC; 5 fields, or 6 with seconds. Each due time enqueues one job, whichever node leads; after downtime the 100 most recent missed due times fire once each.",
    params(ScheduleName),
    request_body = ScheduleRequest,
    responses((status = 200, description = "the next due time", body = NextFire), BadRequest, TooLarge, Unsettled)
)]
pub async fn set_schedule(
    State(st): St,
    PathParams((queue, name)): PathParams<(String, String)>,
    JsonBody(b): JsonBody<ScheduleRequest>,
) -> ApiResult<Json<NextFire>> {
    validate_name("queue", &queue)?;
    validate_name("name", &name)?;
    // A cheap check with this node's clock; apply decides on the replicated one.
    match raft::state::next_fire_ms(&b.cron, crate::cluster::now_ms()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(ApiError::bad_request(format!(
                "the cron expression has no due time in the next {} days",
                raft::state::CRON_HORIZON_DAYS
            ))
            .with("field", "cron"))
        }
        Err(e) => return Err(ApiError::bad_request(e).with("field", "cron")),
    }
    let payload = b.payload.to_string();
    if payload.len() > st.cluster.config().limits.max_value_bytes {
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
    match crate::service::propose(
        &st.cluster,
        QueueCmd::ScheduleSet { queue, name, spec },
        None,
    )
    .await?
    {
        QueueResult::Scheduled { next_at_ms } => Ok(Json(NextFire { next_at_ms })),
        other => Err(other.into()),
    }
}

/// Delete an idle queue
#[utoipa::path(
    delete,
    path = "/v1/queues/{name}",
    description = "Forgets a queue that holds no job (in any state) and no schedule, with its count of completed jobs, so it no longer counts against limits.max_queues. A queue that is not idle: 409 conflict, reason not_idle.",
    params(("name" = String, Path, description = "queue name")),
    responses(
        (status = 200, description = "deleted", body = Deleted),
        (status = 409, description = "conflict: the queue holds jobs or schedules (reason not_idle)", body = ErrorBody),
        BadRequest, NotFound, Unsettled,
    )
)]
pub async fn delete_queue(
    State(st): St,
    PathParams(queue): PathParams<String>,
) -> ApiResult<Json<Deleted>> {
    validate_name("queue", &queue)?;
    match crate::service::propose(&st.cluster, QueueCmd::DeleteQueue { queue }, None).await? {
        QueueResult::Count(_) => Ok(Json(Deleted { deleted: true })),
        QueueResult::NotFound => Err(ApiError::not_found("no such queue")),
        other => Err(other.into()),
    }
}

/// Remove a schedule
#[utoipa::path(
    delete,
    path = "/v1/queues/{queue}/schedules/{name}",
    params(ScheduleName),
    responses((status = 200, description = "removed", body = Deleted), BadRequest, NotFound, Unsettled)
)]
pub async fn delete_schedule(
    State(st): St,
    PathParams((queue, name)): PathParams<(String, String)>,
) -> ApiResult<Json<Deleted>> {
    validate_name("queue", &queue)?;
    validate_name("name", &name)?;
    match crate::service::propose(&st.cluster, QueueCmd::ScheduleDelete { queue, name }, None)
        .await?
    {
        QueueResult::Count(_) => Ok(Json(Deleted { deleted: true })),
        QueueResult::NotFound => Err(ApiError::not_found("no such schedule")),
        other => Err(other.into()),
    }
}

/// Cron schedules of the queue
#[utoipa::path(
    get,
    path = "/v1/queues/{name}/schedules",
    params(QueueName, ReadConsistency),
    responses((status = 200, description = "schedules", body = ScheduleList), BadRequest, Unsettled)
)]
pub async fn list_schedules(
    State(st): St,
    Name(queue): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ScheduleList>> {
    let state = read(&st, q).await?;
    let schedules = state
        .schedules(&queue)
        .into_iter()
        .map(|(name, s)| ScheduleInfo {
            name: name.to_string(),
            cron: s.cron.clone(),
            payload: serde_json::from_str::<Value>(&s.payload).unwrap_or(Value::Null),
            next_at_ms: s.next_at_ms,
        })
        .collect();
    Ok(Json(ScheduleList { schedules }))
}

// ---- Typed client ----

/// The calls of these routes in the typed client ([`super::client::Client`]).
mod typed {
    use super::{
        AckRequest, Acked, ClaimRequest, Claimed, DeleteDeadRequest, Deleted, DeletedCount,
        EnqueueRequest, Enqueued, ExtendRequest, Extended, JobInfo, JobList, NackRequest, Nacked,
        NextFire, QueueList, QueueStats, ReplayRequest, Replayed, ScheduleList, ScheduleRequest,
    };
    use crate::api::client::{segment, ApiResult, Client, Path};
    use reqwest::Method;

    impl Client {
        fn queue_path(queue: &str, op: &str) -> String {
            format!("/v1/queues/{}{op}", segment(queue))
        }

        fn job_path(id: &str, op: &str) -> String {
            format!("/v1/jobs/{}{op}", segment(id))
        }

        pub async fn enqueue(&self, queue: &str, req: &EnqueueRequest) -> ApiResult<Enqueued> {
            self.post(&Self::queue_path(queue, "/jobs"), req).await
        }

        pub async fn claim(&self, queue: &str, req: &ClaimRequest) -> ApiResult<Claimed> {
            self.post(&Self::queue_path(queue, "/claim"), req).await
        }

        pub async fn ack(&self, id: &str, lease: u64) -> ApiResult<Acked> {
            let body = AckRequest { lease };
            self.post(&Self::job_path(id, "/ack"), &body).await
        }

        pub async fn nack(&self, id: &str, req: &NackRequest) -> ApiResult<Nacked> {
            self.post(&Self::job_path(id, "/nack"), req).await
        }

        pub async fn extend(
            &self,
            id: &str,
            lease: u64,
            visibility_ms: u64,
        ) -> ApiResult<Extended> {
            let body = ExtendRequest {
                lease,
                visibility_ms,
            };
            self.post(&Self::job_path(id, "/extend"), &body).await
        }

        pub async fn job(&self, id: &str) -> ApiResult<JobInfo> {
            self.get(&self.read(Path::new(Self::job_path(id, ""))))
                .await
        }

        pub async fn queue_stats(&self, queue: &str) -> ApiResult<QueueStats> {
            self.get(&self.read(Path::new(Self::queue_path(queue, ""))))
                .await
        }

        pub async fn queues(&self) -> ApiResult<QueueList> {
            self.get(&self.read(Path::new("/v1/queues".into()))).await
        }

        /// Dead jobs of `queue` (at most `limit` when given).
        pub async fn dead(&self, queue: &str, limit: Option<u64>) -> ApiResult<JobList> {
            let path = Path::new(Self::queue_path(queue, "/dead")).opt("limit", limit);
            self.get(&self.read(path)).await
        }

        /// Jobs of `queue` in `state` (`ready`, `delayed`, `in_flight`, `dead`; every state
        /// when `None`), at most `limit`.
        pub async fn jobs(
            &self,
            queue: &str,
            state: Option<&str>,
            limit: Option<u64>,
        ) -> ApiResult<JobList> {
            let path = Path::new(Self::queue_path(queue, "/jobs"))
                .opt("state", state)
                .opt("limit", limit);
            self.get(&self.read(path)).await
        }

        pub async fn delete_dead(
            &self,
            queue: &str,
            req: &DeleteDeadRequest,
        ) -> ApiResult<DeletedCount> {
            self.post(&Self::queue_path(queue, "/dead/delete"), req)
                .await
        }

        pub async fn replay(&self, queue: &str, req: &ReplayRequest) -> ApiResult<Replayed> {
            self.post(&Self::queue_path(queue, "/dead/replay"), req)
                .await
        }

        fn schedule_path(queue: &str, name: &str) -> String {
            format!(
                "{}/{}",
                Self::queue_path(queue, "/schedules"),
                segment(name)
            )
        }

        pub async fn schedule_set(
            &self,
            queue: &str,
            name: &str,
            req: &ScheduleRequest,
        ) -> ApiResult<NextFire> {
            self.json(Method::PUT, &Self::schedule_path(queue, name), req)
                .await
        }

        /// Deletes an idle queue.
        pub async fn queue_delete(&self, queue: &str) -> ApiResult<Deleted> {
            self.delete(&Self::queue_path(queue, "")).await
        }

        pub async fn schedule_delete(&self, queue: &str, name: &str) -> ApiResult<Deleted> {
            self.delete(&Self::schedule_path(queue, name)).await
        }

        pub async fn schedules(&self, queue: &str) -> ApiResult<ScheduleList> {
            let path = Path::new(Self::queue_path(queue, "/schedules"));
            self.get(&self.read(path)).await
        }
    }
}
