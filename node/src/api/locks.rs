//! `/v1/locks`: leases with fencing tokens, and blocking acquire served on any node.

use axum::extract::{RawQuery, State};
use axum::Json;
use raft::command::{LockCmd, LockResult};
use serde_json::Value;
use tokio::time::Instant;

use super::model::{
    AcquireRequest, Grant, LockInfo, LockList, LockSummary, LockWaiter, ReleaseRequest, Released,
    RenewRequest, Renewed,
};
use super::{
    check_ms, check_wait_ms, name_page, next_name, params, read_barrier_unless_stale, remaining_ms,
    validate_name, IdempotencyKey, ListLimit, Name, NamedWrite, ReadConsistency, St,
};
use crate::error::{
    ApiError, ApiResult, BadRequest, ErrorBody, NotFound, StaleLockFence, TooLarge, Unsettled,
    WriteFailures,
};
use crate::service;

/// The `{name}` of a lock's routes, as the API reference lists it (read by [`Name`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct LockName {
    /// lock name, 1..=512 bytes of UTF-8, no control characters
    #[allow(dead_code)]
    name: String,
}

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

/// Acquire a lock with a lease
#[utoipa::path(
    post,
    path = "/v1/locks/{name}/acquire",
    description = "With wait_ms (at most 60000) the caller queues and is served in arrival order. Fences strictly increase per name.",
    params(LockName, IdempotencyKey),
    request_body = AcquireRequest,
    responses(
        (status = 200, description = "granted", body = Grant),
        (status = 409, description = "conflict: still held after wait_ms (error.holder)", body = ErrorBody),
        (status = 422, description = "idempotency_mismatch: this Idempotency-Key was first used for a different request", body = ErrorBody),
        (status = 429, description = "rate_limited: 1024 callers already wait for this lock", body = ErrorBody),
        BadRequest, TooLarge, Unsettled,
    )
)]
pub async fn acquire(State(st): St, req: NamedWrite<AcquireRequest>) -> ApiResult<Json<Grant>> {
    let NamedWrite { name, idem, body } = req;
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

/// Extend the lease of the holder with this fence
#[utoipa::path(
    post,
    path = "/v1/locks/{name}/renew",
    params(LockName, IdempotencyKey),
    request_body = RenewRequest,
    responses((status = 200, description = "renewed", body = Renewed), BadRequest, NotFound, StaleLockFence, WriteFailures)
)]
pub async fn renew(State(st): St, req: NamedWrite<RenewRequest>) -> ApiResult<Json<Renewed>> {
    let NamedWrite { name, idem, body } = req;
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

/// Release a lock; the next waiter is granted in the same step
#[utoipa::path(
    post,
    path = "/v1/locks/{name}/release",
    params(LockName, IdempotencyKey),
    request_body = ReleaseRequest,
    responses((status = 200, description = "released", body = Released), BadRequest, NotFound, StaleLockFence, WriteFailures)
)]
pub async fn release(State(st): St, req: NamedWrite<ReleaseRequest>) -> ApiResult<Json<Released>> {
    let NamedWrite { name, idem, body } = req;
    let command = LockCmd::Release {
        name,
        fence: body.fence,
    };
    match crate::service::propose(&st.cluster, command, idem).await? {
        LockResult::Released => Ok(Json(Released { released: true })),
        other => Err(other.into()),
    }
}

/// Who holds the lock
#[utoipa::path(
    get,
    path = "/v1/locks/{name}",
    params(LockName, ReadConsistency),
    responses(
        (status = 200, description = "the holder", body = LockInfo),
        (status = 404, description = "not_found: the lock is not held", body = ErrorBody),
        BadRequest, Unsettled,
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

/// Waiters a listing shows per lock or semaphore.
pub(crate) const LISTED_WAITERS: usize = 10;

/// The first [`LISTED_WAITERS`] of `waiting` (who waits, and until when), as a listing shows
/// them.
pub(crate) fn listed_waiters<'a>(
    waiting: impl Iterator<Item = (&'a String, u64)>,
    now: u64,
) -> Vec<LockWaiter> {
    waiting
        .take(LISTED_WAITERS)
        .map(|(owner, deadline_ms)| LockWaiter {
            owner: owner.clone(),
            gives_up_in_ms: remaining_ms(deadline_ms, now),
        })
        .collect()
}

/// Locks held or waited for, by name prefix, in name order
#[utoipa::path(
    get,
    path = "/v1/locks",
    description = "Each with its holder, fence, lease and expiry, and its waiters (the count and the first 10). A page may hold fewer than limit locks while next is set: pass next as after for the rest.",
    params(
        ("prefix" = Option<String>, Query, description = "at most 512 bytes; every lock when absent"),
        ListLimit,
        ("after" = Option<String>, Query, description = "start after this name (the previous page's next)"),
        ReadConsistency,
    ),
    responses((status = 200, description = "a page of locks", body = LockList), BadRequest, Unsettled)
)]
pub async fn list(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<LockList>> {
    let (prefix, after, limit) = name_page(&st, q).await?;
    let state = st.cluster.state();
    let now = state.meta.now_ms;
    let (entries, more) = state.locks_under(&prefix, after.as_deref(), limit);
    let next = next_name(&entries, more);
    // An ended lease or wait stays in the state until the next apply settles it: not shown.
    let locks = entries
        .into_iter()
        .filter_map(|(name, l)| {
            let holder = l.holder.as_ref().filter(|h| h.expires_at_ms > now);
            let waiting: Vec<_> = l.waiters.iter().filter(|w| w.deadline_ms > now).collect();
            if holder.is_none() && waiting.is_empty() {
                return None;
            }
            Some(LockSummary {
                name: name.clone(),
                holder: holder.map(|h| h.owner.clone()),
                fence: holder.map(|h| h.fence),
                ttl_ms: holder.map(|h| h.ttl_ms),
                expires_in_ms: holder.map(|h| remaining_ms(h.expires_at_ms, now)),
                waiters: waiting.len() as u64,
                next_waiters: listed_waiters(
                    waiting.iter().map(|w| (&w.owner, w.deadline_ms)),
                    now,
                ),
            })
        })
        .collect();
    Ok(Json(LockList { locks, next }))
}

// ---- Typed client ----

/// The calls of these routes in the typed client ([`super::client::Client`]).
mod typed {
    use super::{
        AcquireRequest, Grant, LockInfo, LockList, ReleaseRequest, Released, RenewRequest, Renewed,
    };
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

        /// Locks held or waited for under `prefix`, at most `limit` of them after `after`.
        pub async fn locks(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: Option<u64>,
        ) -> ApiResult<LockList> {
            self.name_page("/v1/locks", prefix, after, limit).await
        }

        pub async fn lock_get(&self, name: &str) -> ApiResult<LockInfo> {
            self.get(&self.read(Path::new(Self::lock_path(name, ""))))
                .await
        }
    }
}
