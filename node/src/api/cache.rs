//! `/v1/cache`: a replicated cache read from each node's own applied state.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft::command::{CacheCmd, CacheLimits, CacheResult};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_ms, fenced, idempotency_key, params, read_body, remaining_ms, u64_param, validate_name,
    AppState, JsonBody, Key, St,
};
use crate::error::{ApiError, ApiResult};

/// Longest cache TTL: 30 days.
pub const CACHE_TTL_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// Most tags on one entry, and in one invalidation.
pub const CACHE_TAGS_MAX: usize = 64;

pub(crate) fn limits(st: &AppState) -> CacheLimits {
    CacheLimits {
        max_entries: st.cluster.config.cache.max_entries,
        max_bytes: st.cluster.config.cache.max_bytes,
    }
}

pub(crate) fn check_tags(tags: &[String]) -> ApiResult<()> {
    if tags.len() > CACHE_TAGS_MAX {
        return Err(ApiError::bad_request(format!(
            "at most {CACHE_TAGS_MAX} tags, got {}",
            tags.len()
        ))
        .with("field", "tags"));
    }
    for t in tags {
        validate_name("tag", t)?;
    }
    Ok(())
}

pub async fn set(
    State(st): St,
    Key(key): Key,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["ttl_ms", "tags", "fence"])?;
    let ttl_ms = u64_param(&p, "ttl_ms")?
        .map(|t| check_ms("ttl_ms", t, CACHE_TTL_MS_MAX))
        .transpose()?;
    let tags: Vec<String> = match p.get("tags") {
        Some(t) => t.split(',').map(str::to_string).collect(),
        None => Vec::new(),
    };
    check_tags(&tags)?;
    let idem = idempotency_key(&headers)?;
    let value = read_body(body, st.cluster.config.limits.max_value_bytes).await?;
    let command = fenced(
        &p,
        CacheCmd::Set {
            key,
            value: value.to_vec(),
            ttl_ms,
            tags,
            limits: limits(&st),
        },
    )?;
    match st.cluster.write_visible(command, idem).await? {
        CacheResult::Stored => Ok(Json(json!({ "stored": true }))),
        other => Err(other.into()),
    }
}

pub async fn get(State(st): St, Key(key): Key, RawQuery(q): RawQuery) -> ApiResult<Response> {
    params(q, &[])?;
    let found = {
        let state = st.cluster.state.read().expect("state lock");
        state.cache_get(&key).map(|e| {
            (
                e.value.clone(),
                e.expires_at_ms
                    .map(|at| remaining_ms(at, state.meta.now_ms)),
            )
        })
    };
    let Some((value, expires_in)) = found else {
        st.metrics.cache_misses.inc();
        return Err(ApiError::not_found(format!("cache miss: {key:?}")));
    };
    st.metrics.cache_hits.inc();
    let mut resp = value.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(ms) = expires_in {
        h.insert("x-expires-in-ms", HeaderValue::from(ms));
    }
    Ok(resp)
}

pub async fn delete(
    State(st): St,
    Key(key): Key,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["fence"])?;
    let idem = idempotency_key(&headers)?;
    let command = fenced(&p, CacheCmd::Delete { key })?;
    match st.cluster.write_visible(command, idem).await? {
        CacheResult::Removed(n) => Ok(Json(json!({ "deleted": n > 0 }))),
        other => Err(other.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateBody {
    tags: Vec<String>,
}

pub async fn invalidate(
    State(st): St,
    headers: HeaderMap,
    JsonBody(body): JsonBody<InvalidateBody>,
) -> ApiResult<Json<Value>> {
    if body.tags.is_empty() {
        return Err(ApiError::bad_request("tags must name at least one tag").with("field", "tags"));
    }
    check_tags(&body.tags)?;
    let idem = idempotency_key(&headers)?;
    let command = CacheCmd::Invalidate { tags: body.tags };
    match st.cluster.write_visible(command, idem).await? {
        CacheResult::Removed(n) => Ok(Json(json!({ "invalidated": n }))),
        other => Err(other.into()),
    }
}

pub async fn stats(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let p = params(q, &["digest"])?;
    let digest = match p.get("digest").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "digest must be true or false, got {other:?}"
            )))
        }
    };
    let state = st.cluster.state.read().expect("state lock");
    let c = state.cache_counts();
    let mut out = json!({
        "entries": c.entries,
        "bytes": c.bytes,
        "evictions": c.evictions,
        "hits": st.metrics.cache_hits.get(),
        "misses": st.metrics.cache_misses.get(),
        "max_entries": st.cluster.config.cache.max_entries,
        "max_bytes": st.cluster.config.cache.max_bytes,
        "applied_index": st.cluster.metrics().last_applied.map(|l| l.index).unwrap_or(0),
    });
    if digest {
        out["digest"] = state.cache_digest().into();
    }
    Ok(Json(out))
}
