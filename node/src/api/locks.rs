//! `/v1/locks`: leases with fencing tokens, and blocking acquire served on any node.

use axum::extract::{RawQuery, State};
use axum::Json;
use raft::command::{LockCmd, LockResult};
use serde_json::Value;
use tokio::time::Instant;

use super::model::{
    AcquireRequest, Consistency, Grant, LockInfo, ReleaseRequest, Released, RenewRequest, Renewed,
};
use super::{
    check_ms, check_wait_ms, params, read_barrier_unless_stale, remaining_ms, validate_name,
    Idempotency, IdempotencyKey, JsonBody, Name, St,
};
use crate::error::{
    ApiError, ApiResult, BadRequest, ErrorBody, NotFound, TooLarge, Unsettled, WriteFailures,
};
use crate::service;

/// Longest lease: one day.
pub const LOCK_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Longest blocking acquire: one minute.
pub const LOCK_WAIT_MS_MAX: u64 = 60 * 1000;

fn granted(fence: u64, owner: &str, ttl_ms: u64) -> Json<Grant> {
    Json(Grant {
        fence,
        owner: owner.to_string(),
        ttl_ms,
    })
}

#[utoipa::path(
    post,
    path = "/v1/locks/{name}/acquire",
    summary = "Acquire a lock with a lease",
    description = "With wait_ms (at most 60000) the caller queues and is served in arrival order. Fences strictly increase per name.",
    params(
        ("name" = String, Path, description = "lock name, 1..=512 bytes of UTF-8, no control characters"),
        IdempotencyKey,
    ),
    request_body = AcquireRequest,
    responses(
        (status = 200, description = "granted", body = Grant),
        BadRequest,
        (status = 409, description = "conflict: still held after wait_ms (error.holder)", body = ErrorBody),
        TooLarge,
        (status = 422, description = "idempotency_mismatch: this Idempotency-Key was first used for a different request", body = ErrorBody),
        (status = 429, description = "rate_limited: 1024 callers already wait for this lock", body = ErrorBody),
        Unsettled,
    )
)]
pub async fn acquire(
    State(st): St,
    Name(name): Name,
    Idempotency(idem): Idempotency,
    JsonBody(body): JsonBody<AcquireRequest>,
) -> ApiResult<Json<Grant>> {
    validate_name("owner", &body.owner)?;
    let ttl_ms = check_ms("ttl_ms", body.ttl_ms, LOCK_TTL_MS_MAX)?;
    check_wait_ms(body.wait_ms, LOCK_WAIT_MS_MAX)?;
    let started = Instant::now();
    // A retried request (same Idempotency-Key) looks for the same place in the queue.
    let waiter_id = service::waiter_id(idem.as_ref());
    let command = LockCmd::Acquire {
        name: name.clone(),
        owner: body.owner.clone(),
        ttl_ms,
        wait: service::locks::wait(&waiter_id, body.wait_ms),
    };
    let wait = (waiter_id.as_str(), body.wait_ms);
    let result =
        service::acquire::<service::locks::Locks>(&st.cluster, &name, command, wait, idem, started)
            .await?;
    match result {
        LockResult::Granted { fence, ttl_ms } => Ok(granted(fence, &body.owner, ttl_ms)),
        // The wait ended and the lock went to nobody meanwhile.
        LockResult::NotFound => Err(
            ApiError::conflict("the lock was not granted within wait_ms")
                .with("holder", Value::Null),
        ),
        other => Err(other.into()),
    }
}

#[utoipa::path(
    post,
    path = "/v1/locks/{name}/renew",
    summary = "Extend the lease of the holder with this fence",
    params(
        ("name" = String, Path, description = "lock name, 1..=512 bytes of UTF-8, no control characters"),
        IdempotencyKey,
    ),
    request_body = RenewRequest,
    responses(
        (status = 200, description = "renewed", body = Renewed),
        BadRequest,
        NotFound,
        (status = 409, description = "conflict: stale fence (reason stale_fence, current_fence)", body = ErrorBody),
        WriteFailures,
    )
)]
pub async fn renew(
    State(st): St,
    Name(name): Name,
    Idempotency(idem): Idempotency,
    JsonBody(body): JsonBody<RenewRequest>,
) -> ApiResult<Json<Renewed>> {
    let ttl_ms = check_ms("ttl_ms", body.ttl_ms, LOCK_TTL_MS_MAX)?;
    let command = LockCmd::Renew {
        name,
        fence: body.fence,
        ttl_ms,
    };
    match crate::service::propose(&st.cluster, command, idem).await? {
        LockResult::Granted { fence, ttl_ms } => Ok(Json(Renewed { fence, ttl_ms })),
        other => Err(other.into()),
    }
}

#[utoipa::path(
    post,
    path = "/v1/locks/{name}/release",
    summary = "Release a lock; the next waiter is granted in the same step",
    params(
        ("name" = String, Path, description = "lock name, 1..=512 bytes of UTF-8, no control characters"),
        IdempotencyKey,
    ),
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "released", body = Released),
        BadRequest,
        NotFound,
        (status = 409, description = "conflict: stale fence (reason stale_fence, current_fence)", body = ErrorBody),
        WriteFailures,
    )
)]
pub async fn release(
    State(st): St,
    Name(name): Name,
    Idempotency(idem): Idempotency,
    JsonBody(body): JsonBody<ReleaseRequest>,
) -> ApiResult<Json<Released>> {
    let command = LockCmd::Release {
        name,
        fence: body.fence,
    };
    match crate::service::propose(&st.cluster, command, idem).await? {
        LockResult::Released => Ok(Json(Released { released: true })),
        other => Err(other.into()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/locks/{name}",
    summary = "Who holds the lock",
    params(
        ("name" = String, Path, description = "lock name, 1..=512 bytes of UTF-8, no control characters"),
        ("consistency" = Option<Consistency>, Query, description = "linearizable (default) or stale: read this node's state as it is"),
    ),
    responses(
        (status = 200, description = "the holder", body = LockInfo),
        BadRequest,
        (status = 404, description = "not_found: the lock is not held", body = ErrorBody),
        Unsettled,
    )
)]
pub async fn inspect(
    State(st): St,
    Name(name): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<LockInfo>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state();
    let now = state.meta.now_ms;
    let held = state
        .lock(&name)
        .and_then(|l| l.holder.as_ref().map(|h| (h, l.waiters.len())))
        .filter(|(h, _)| h.expires_at_ms > now);
    let Some((h, waiters)) = held else {
        return Err(ApiError::not_found(format!("lock {name:?} is not held")));
    };
    Ok(Json(LockInfo {
        holder: h.owner.clone(),
        fence: h.fence,
        expires_in_ms: remaining_ms(h.expires_at_ms, now),
        ttl_ms: h.ttl_ms,
        waiters: waiters as u64,
    }))
}

// ---- Typed client ----

/// The calls of these routes in the typed client ([`super::client::Client`]).
mod typed {
    use super::{AcquireRequest, Grant, LockInfo, ReleaseRequest, Released, RenewRequest, Renewed};
    use crate::api::client::{segment, ApiResult, Client, Path};

    impl Client {
        fn lock_path(name: &str, op: &str) -> String {
            format!("/v1/locks/{}{op}", segment(name))
        }

        pub async fn lock_acquire(&self, name: &str, req: &AcquireRequest) -> ApiResult<Grant> {
            self.post(&Self::lock_path(name, "/acquire"), req).await
        }

        pub async fn lock_renew(&self, name: &str, fence: u64, ttl_ms: u64) -> ApiResult<Renewed> {
            let body = RenewRequest { fence, ttl_ms };
            self.post(&Self::lock_path(name, "/renew"), &body).await
        }

        pub async fn lock_release(&self, name: &str, fence: u64) -> ApiResult<Released> {
            let body = ReleaseRequest { fence };
            self.post(&Self::lock_path(name, "/release"), &body).await
        }

        pub async fn lock_get(&self, name: &str) -> ApiResult<LockInfo> {
            self.get(&self.read(Path::new(Self::lock_path(name, ""))))
                .await
        }
    }
}
