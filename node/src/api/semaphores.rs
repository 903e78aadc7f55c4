//! `/v1/semaphores`: counting semaphores (N of M permits under fenced leases), with blocking
//! acquire served in arrival order on any node.

use axum::extract::{RawQuery, State};
use axum::Json;
use raft::command::{SemaphoreCmd, SemaphoreResult};
use raft::state::MAX_SEMAPHORE_CAPACITY;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::locks::{listed_waiters, LOCK_TTL_MS_MAX, LOCK_WAIT_MS_MAX};
use super::model::LockWaiter;
use super::{
    check_ms, check_wait_ms, name_page, next_name, params, read_barrier_unless_stale, remaining_ms,
    validate_name, IdempotencyKey, ListLimit, Name, NamedWrite, St,
};
use crate::error::{
    ApiError, ApiResult, BadRequest, ErrorBody, ErrorCode, StaleFence, WriteFailures,
};
use crate::service;

/// The `{name}` of a semaphore's routes, as the API reference lists it (read by [`Name`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct SemaphoreName {
    /// semaphore name, 1..=512 bytes of UTF-8, no control characters
    #[allow(dead_code)]
    name: String,
}

fn one() -> u32 {
    1
}

/// `POST /v1/semaphores/{name}/acquire`.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SemaphoreAcquireRequest)]
pub struct AcquireBody {
    /// Who holds the permits (a label shown to others).
    pub holder: String,
    /// Permits wanted, 1..=capacity (default 1).
    #[serde(default = "one")]
    pub permits: u32,
    /// The semaphore's permits, 1..=1,000,000. The first acquire of a semaphore nobody holds
    /// or waits for sets it; while permits are held or waited for, another capacity is 409.
    pub capacity: u32,
    /// Lease length, 1..=86,400,000 ms.
    pub ttl_ms: u64,
    /// How long to wait in the queue when the permits are not free, 0..=60,000 ms (default 0).
    #[serde(default)]
    pub wait_ms: u64,
}

/// `POST /v1/semaphores/{name}/renew`.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SemaphoreRenewRequest)]
pub struct RenewBody {
    pub fence: u64,
    pub ttl_ms: u64,
}

/// `POST /v1/semaphores/{name}/release`.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SemaphoreReleaseRequest)]
pub struct ReleaseBody {
    pub fence: u64,
}

/// A lease of permits.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, ToSchema)]
#[schema(as = SemaphoreGrant)]
pub struct Grant {
    pub fence: u64,
    pub permits: u32,
    pub ttl_ms: u64,
}

impl Grant {
    fn new(fence: u64, permits: u32, ttl_ms: u64) -> Self {
        Grant {
            fence,
            permits,
            ttl_ms,
        }
    }
}

/// The answer of a release.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, ToSchema)]
#[schema(as = SemaphoreReleased)]
pub struct Released {
    pub released: bool,
    /// Permits the lease held, free now.
    pub permits: u32,
}

/// One lease, as `GET /v1/semaphores/{name}` shows it.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, ToSchema)]
pub struct LeaseView {
    pub fence: u64,
    pub holder: String,
    pub permits: u32,
    pub ttl_ms: u64,
    pub expires_in_ms: u64,
}

/// `GET /v1/semaphores/{name}`.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, ToSchema)]
pub struct SemaphoreView {
    pub capacity: u32,
    pub held: u32,
    pub free: u32,
    /// Leases by fence, oldest first.
    pub holders: Vec<LeaseView>,
    /// Callers queued for permits.
    pub waiting: u32,
}

/// `GET /v1/semaphores`: a page of semaphores in name order.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct SemaphoreList {
    pub semaphores: Vec<SemaphoreSummary>,
    /// The last name of the page when more follow (pass it as `after`); null when done.
    pub next: Option<String>,
}

/// A semaphore with permits held or waited for.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct SemaphoreSummary {
    pub name: String,
    pub capacity: u32,
    pub held: u32,
    pub free: u32,
    /// Leases by fence, oldest first.
    pub holders: Vec<LeaseView>,
    /// Callers queued for permits.
    pub waiting: u32,
    /// The first waiters (at most 10), first served first.
    pub next_waiters: Vec<LockWaiter>,
}

/// Semaphores with permits held or waited for, by name prefix, in name order
#[utoipa::path(
    get,
    path = "/v1/semaphores",
    description = "Each with its capacity, its leases (holder, fence, permits, expiry) and its waiters (the count and the first 10). A page may hold fewer than limit semaphores while next is set: pass next as after for the rest.",
    params(
        ("prefix" = Option<String>, Query, description = "at most 512 bytes; every semaphore when absent"),
        ListLimit,
        ("after" = Option<String>, Query, description = "start after this name (the previous page's next)"),
        ("consistency" = Option<String>, Query, description = "linearizable (default) or stale"),
    ),
    responses(
        (status = 200, description = "a page of semaphores", body = SemaphoreList),
        (status = 400, description = "bad_request: unknown parameter, bad limit", body = ErrorBody),
        (status = 503, description = "unavailable: no leader, not ready or overloaded (Retry-After)", body = ErrorBody),
    )
)]
pub async fn list(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<SemaphoreList>> {
    let (prefix, after, limit) = name_page(&st, q).await?;
    let state = st.cluster.state();
    let now = state.meta.now_ms;
    let (entries, more) = state.semaphores_under(&prefix, after.as_deref(), limit);
    let next = next_name(&entries, more);
    // Ended leases and waits stay until the next apply settles them: not shown.
    let semaphores = entries
        .into_iter()
        .filter_map(|(name, s)| {
            let holders = live_holders(s, now);
            let waiting: Vec<_> = s.waiters.iter().filter(|w| w.deadline_ms > now).collect();
            if holders.is_empty() && waiting.is_empty() {
                return None;
            }
            let held = holders.iter().map(|l| l.permits).sum::<u32>();
            Some(SemaphoreSummary {
                name: name.clone(),
                capacity: s.capacity,
                held,
                free: s.capacity.saturating_sub(held),
                holders,
                waiting: u32::try_from(waiting.len()).unwrap_or(u32::MAX),
                next_waiters: listed_waiters(
                    waiting.iter().map(|w| (&w.holder, w.deadline_ms)),
                    now,
                ),
            })
        })
        .collect();
    Ok(Json(SemaphoreList { semaphores, next }))
}

/// Take N of a semaphore's M permits under a lease
#[utoipa::path(
    post,
    path = "/v1/semaphores/{name}/acquire",
    description = "The first acquire of a semaphore nobody holds or waits for sets its capacity. With wait_ms (at most 60000) the caller queues; the queue is served first come, first served and its head is never overtaken. Each lease has its own fence, strictly increasing per semaphore.",
    params(SemaphoreName, IdempotencyKey),
    request_body = AcquireBody,
    responses(
        (status = 200, description = "granted", body = Grant),
        (status = 400, description = "bad_request: permits, capacity, ttl_ms or wait_ms out of range (error.field); nothing was applied", body = ErrorBody),
        (status = 409, description = "conflict: error.reason full (error.free, held, waiting), not_granted (the wait ended) or capacity_mismatch (error.capacity)", body = ErrorBody),
        (status = 429, description = "rate_limited: 1024 leases or 1024 waiters on this semaphore", body = ErrorBody),
        WriteFailures,
    )
)]
pub async fn acquire(State(st): St, req: NamedWrite<AcquireBody>) -> ApiResult<Json<Grant>> {
    let NamedWrite { name, idem, body } = req;
    validate_name("holder", &body.holder)?;
    let ttl_ms = check_ms("ttl_ms", body.ttl_ms, LOCK_TTL_MS_MAX)?;
    check_permits(&body)?;
    check_wait_ms(body.wait_ms, LOCK_WAIT_MS_MAX)?;
    let started = Instant::now();
    let waiter_id = service::waiter_id(idem.as_ref());
    let command = SemaphoreCmd::Acquire {
        name: name.clone(),
        holder: body.holder,
        permits: body.permits,
        capacity: body.capacity,
        ttl_ms,
        wait: service::semaphores::wait(&waiter_id, body.wait_ms),
    };
    let wait = (waiter_id.as_str(), body.wait_ms);
    let result = service::acquire::<service::semaphores::Semaphores>(
        &st.cluster,
        &name,
        command,
        wait,
        idem,
        started,
    )
    .await?;
    match result {
        SemaphoreResult::Granted {
            fence,
            permits,
            ttl_ms,
        } => Ok(Json(Grant::new(fence, permits, ttl_ms))),
        // A wait that ended without a grant: the caller's place in the queue is gone.
        SemaphoreResult::Cancelled | SemaphoreResult::NotFound => Err(ApiError::conflict(
            "the permits were not granted within wait_ms",
        )
        .with("reason", "not_granted")),
        other => Err(refusal(other)),
    }
}

fn check_permits(body: &AcquireBody) -> ApiResult<()> {
    if body.capacity == 0 || body.capacity > MAX_SEMAPHORE_CAPACITY {
        return Err(ApiError::bad_request(format!(
            "capacity must be 1 to {MAX_SEMAPHORE_CAPACITY}, got {}",
            body.capacity
        ))
        .with("field", "capacity"));
    }
    if body.permits == 0 || body.permits > body.capacity {
        return Err(ApiError::bad_request(format!(
            "permits must be 1 to capacity ({}), got {}",
            body.capacity, body.permits
        ))
        .with("field", "permits"));
    }
    Ok(())
}

/// Extend the lease with this fence
#[utoipa::path(
    post,
    path = "/v1/semaphores/{name}/renew",
    params(SemaphoreName, IdempotencyKey),
    request_body = RenewBody,
    responses((status = 200, description = "renewed", body = Grant), BadRequest, StaleFence, WriteFailures)
)]
pub async fn renew(State(st): St, req: NamedWrite<RenewBody>) -> ApiResult<Json<Grant>> {
    let NamedWrite { name, idem, body } = req;
    let ttl_ms = check_ms("ttl_ms", body.ttl_ms, LOCK_TTL_MS_MAX)?;
    let command = SemaphoreCmd::Renew {
        name,
        fence: body.fence,
        ttl_ms,
    };
    match crate::service::propose(&st.cluster, command, idem).await? {
        SemaphoreResult::Granted {
            fence,
            permits,
            ttl_ms,
        } => Ok(Json(Grant::new(fence, permits, ttl_ms))),
        other => Err(refusal(other)),
    }
}

/// Release the permits of the lease with this fence; waiters are served in the same step
#[utoipa::path(
    post,
    path = "/v1/semaphores/{name}/release",
    params(SemaphoreName, IdempotencyKey),
    request_body = ReleaseBody,
    responses((status = 200, description = "released", body = Released), BadRequest, StaleFence, WriteFailures)
)]
pub async fn release(State(st): St, req: NamedWrite<ReleaseBody>) -> ApiResult<Json<Released>> {
    let NamedWrite { name, idem, body } = req;
    let command = SemaphoreCmd::Release {
        name,
        fence: body.fence,
    };
    match crate::service::propose(&st.cluster, command, idem).await? {
        SemaphoreResult::Released { permits } => Ok(Json(Released {
            released: true,
            permits,
        })),
        other => Err(refusal(other)),
    }
}

/// A semaphore's capacity, its current leases and how many wait
#[utoipa::path(
    get,
    path = "/v1/semaphores/{name}",
    params(SemaphoreName, ("consistency" = Option<String>, Query, description = "linearizable (default) or stale")),
    responses(
        (status = 200, description = "the semaphore", body = SemaphoreView),
        (status = 400, description = "bad_request: unknown parameter", body = ErrorBody),
        (status = 404, description = "not_found: no holders or waiters", body = ErrorBody),
        (status = 503, description = "unavailable: no leader, not ready or overloaded (Retry-After)", body = ErrorBody),
    )
)]
pub async fn inspect(
    State(st): St,
    Name(name): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<SemaphoreView>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state();
    let now = state.meta.now_ms;
    let Some(s) = state.semaphore(&name) else {
        return Err(ApiError::not_found(format!(
            "semaphore {name:?} has no holders or waiters"
        )));
    };
    let holders = live_holders(s, now);
    let held = holders.iter().map(|l| l.permits).sum::<u32>();
    Ok(Json(SemaphoreView {
        capacity: s.capacity,
        held,
        free: s.capacity.saturating_sub(held),
        holders,
        waiting: u32::try_from(s.waiters.len()).unwrap_or(u32::MAX),
    }))
}

/// The leases of `s` not ended at `now` (ended ones stay until the next apply settles them).
fn live_holders(s: &raft::state::SemaphoreEntry, now: u64) -> Vec<LeaseView> {
    s.holders
        .iter()
        .filter(|(_, l)| l.expires_at_ms > now)
        .map(|(fence, l)| LeaseView {
            fence: *fence,
            holder: l.holder.clone(),
            permits: l.permits,
            ttl_ms: l.ttl_ms,
            expires_in_ms: remaining_ms(l.expires_at_ms, now),
        })
        .collect()
}

/// The answers of a semaphore write besides its success.
fn refusal(r: SemaphoreResult) -> ApiError {
    match r {
        SemaphoreResult::Full {
            free,
            held,
            waiting,
        } => ApiError::conflict(format!(
            "not enough free permits ({free} free, {held} held, {waiting} waiting)"
        ))
        .with("reason", "full")
        .with("free", free)
        .with("held", held)
        .with("waiting", waiting),
        SemaphoreResult::CapacityMismatch { capacity } => ApiError::conflict(format!(
            "the semaphore's permits are held or waited for under capacity {capacity}"
        ))
        .with("reason", "capacity_mismatch")
        .with("capacity", capacity),
        SemaphoreResult::StaleFence => {
            ApiError::conflict("stale fence: no current lease of this semaphore has this fence")
                .with("reason", "stale_fence")
                .with("current_fence", Value::Null)
        }
        SemaphoreResult::NotFound => ApiError::not_found("no such semaphore lease or waiter"),
        SemaphoreResult::Limited(m) => ApiError::limited(m),
        SemaphoreResult::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::new(ErrorCode::Internal, format!("the write answered {other:?}")),
    }
}

// ---- Typed client ----

/// The calls of these routes in the typed client ([`super::client::Client`]).
mod typed {
    use super::{
        AcquireBody, Grant, ReleaseBody, Released, RenewBody, SemaphoreList, SemaphoreView,
    };
    use crate::api::client::{segment, ApiResult, Client, Path};

    impl Client {
        fn semaphore_path(name: &str, op: &str) -> String {
            format!("/v1/semaphores/{}{op}", segment(name))
        }

        pub async fn semaphore_acquire(&self, name: &str, req: &AcquireBody) -> ApiResult<Grant> {
            self.post(&Self::semaphore_path(name, "/acquire"), req)
                .await
        }

        pub async fn semaphore_renew(
            &self,
            name: &str,
            fence: u64,
            ttl_ms: u64,
        ) -> ApiResult<Grant> {
            let body = RenewBody { fence, ttl_ms };
            self.post(&Self::semaphore_path(name, "/renew"), &body)
                .await
        }

        pub async fn semaphore_release(&self, name: &str, fence: u64) -> ApiResult<Released> {
            let body = ReleaseBody { fence };
            self.post(&Self::semaphore_path(name, "/release"), &body)
                .await
        }

        /// Semaphores held or waited for under `prefix`, at most `limit` of them after `after`.
        pub async fn semaphores(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: Option<u64>,
        ) -> ApiResult<SemaphoreList> {
            self.name_page("/v1/semaphores", prefix, after, limit).await
        }

        pub async fn semaphore_get(&self, name: &str) -> ApiResult<SemaphoreView> {
            self.get(&self.read(Path::new(Self::semaphore_path(name, ""))))
                .await
        }
    }
}
