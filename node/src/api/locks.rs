//! `/v1/locks`: leases with fencing tokens, and blocking acquire served on any node.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use raft::command::{LockCmd, LockResult, LockWait};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{
    check_ms, idempotency_key, params, read_barrier_unless_stale, remaining_ms, validate_name,
    AppState, JsonBody, Name, St,
};
use crate::error::{ApiError, ApiResult};

/// Longest lease: one day.
pub const LOCK_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Longest blocking acquire: one minute.
pub const LOCK_WAIT_MS_MAX: u64 = 60 * 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    owner: String,
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    fence: u64,
    ttl_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    fence: u64,
}

fn granted(fence: u64, owner: &str, ttl_ms: u64) -> Json<Value> {
    Json(json!({ "fence": fence, "owner": owner, "ttl_ms": ttl_ms }))
}

pub async fn acquire(
    State(st): St,
    Name(name): Name,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AcquireBody>,
) -> ApiResult<Json<Value>> {
    validate_name("owner", &body.owner)?;
    let ttl_ms = check_ms("ttl_ms", body.ttl_ms, LOCK_TTL_MS_MAX)?;
    if body.wait_ms > LOCK_WAIT_MS_MAX {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {LOCK_WAIT_MS_MAX}, got {}",
            body.wait_ms
        ))
        .with("field", "wait_ms"));
    }
    let idem = idempotency_key(&headers)?;
    // A retried request (same Idempotency-Key) must look for the same place in the queue.
    let wait = (body.wait_ms > 0).then(|| LockWait {
        waiter_id: match &idem {
            Some(k) => format!("idem:{k}"),
            None => hex::encode(rand::random::<[u8; 16]>()),
        },
        wait_ms: body.wait_ms,
    });
    let started = Instant::now();
    let command = LockCmd::Acquire {
        name: name.clone(),
        owner: body.owner.clone(),
        ttl_ms,
        wait: wait.clone(),
    };
    // Visible: the wait below watches this node's state, which must already show the queue.
    match st.cluster.write_visible(command, idem).await? {
        LockResult::Granted { fence, ttl_ms } => Ok(granted(fence, &body.owner, ttl_ms)),
        LockResult::Queued { .. } => {
            let wait = wait.expect("queued only when waiting");
            let deadline = started + Duration::from_millis(wait.wait_ms);
            wait_for_grant(&st, &name, &body.owner, &wait.waiter_id, deadline).await
        }
        other => Err(other.into()),
    }
}

/// Long-polls this node's applied state until the queued acquire is granted or its wait ends,
/// then settles the outcome through the log (the grant may race the caller giving up).
async fn wait_for_grant(
    st: &Arc<AppState>,
    name: &str,
    owner: &str,
    waiter_id: &str,
    deadline: Instant,
) -> ApiResult<Json<Value>> {
    // Some(Some(grant)) once granted, Some(None) once no longer queued (wait ended).
    let seen = st
        .cluster
        .wait_for_state(deadline, |state| {
            let Some(l) = state.lock(name) else {
                return Some(None);
            };
            if let Some(h) = l.holder.as_ref() {
                if h.waiter_id.as_deref() == Some(waiter_id) {
                    return Some(Some((h.fence, h.ttl_ms)));
                }
            }
            (!l.waiters.iter().any(|w| w.id == waiter_id)).then_some(None)
        })
        .await;
    if let Ok(Some(Some((fence, ttl_ms)))) = seen {
        return Ok(granted(fence, owner, ttl_ms));
    }
    let cancel = LockCmd::CancelWait {
        name: name.to_string(),
        waiter_id: waiter_id.to_string(),
    };
    match st.cluster.write(cancel, None).await? {
        LockResult::Granted { fence, ttl_ms } => Ok(granted(fence, owner, ttl_ms)),
        LockResult::NotFound => Err(
            ApiError::conflict("the lock was not granted within wait_ms")
                .with("holder", Value::Null),
        ),
        other => Err(other.into()),
    }
}

pub async fn renew(
    State(st): St,
    Name(name): Name,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RenewBody>,
) -> ApiResult<Json<Value>> {
    let ttl_ms = check_ms("ttl_ms", body.ttl_ms, LOCK_TTL_MS_MAX)?;
    let idem = idempotency_key(&headers)?;
    let command = LockCmd::Renew {
        name,
        fence: body.fence,
        ttl_ms,
    };
    match st.cluster.write(command, idem).await? {
        LockResult::Granted { fence, ttl_ms } => {
            Ok(Json(json!({ "fence": fence, "ttl_ms": ttl_ms })))
        }
        other => Err(other.into()),
    }
}

pub async fn release(
    State(st): St,
    Name(name): Name,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ReleaseBody>,
) -> ApiResult<Json<Value>> {
    let idem = idempotency_key(&headers)?;
    let command = LockCmd::Release {
        name,
        fence: body.fence,
    };
    match st.cluster.write(command, idem).await? {
        LockResult::Released => Ok(Json(json!({ "released": true }))),
        other => Err(other.into()),
    }
}

pub async fn inspect(
    State(st): St,
    Name(name): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state.read().expect("state lock");
    let now = state.meta.now_ms;
    let held = state
        .lock(&name)
        .and_then(|l| l.holder.as_ref().map(|h| (h, l.waiters.len())))
        .filter(|(h, _)| h.expires_at_ms > now);
    let Some((h, waiters)) = held else {
        return Err(ApiError::not_found(format!("lock {name:?} is not held")));
    };
    Ok(Json(json!({
        "holder": h.owner,
        "fence": h.fence,
        "expires_in_ms": remaining_ms(h.expires_at_ms, now),
        "ttl_ms": h.ttl_ms,
        "waiters": waiters,
    })))
}
