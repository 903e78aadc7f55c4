//! `/v1/cache`: a replicated cache read from each node's own applied state.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft::command::{CacheCmd, CacheLimits, CacheResult};

use super::model::{CacheStats, Deleted, InvalidateRequest, Invalidated, Stored};
use super::{
    check_ms, fenced, params, read_body, remaining_ms, u64_param, validate_name, AppState,
    Idempotency, IdempotencyKey, JsonBody, Key, KeyParam, St,
};
use crate::error::{
    ApiError, ApiResult, BadRequest, ErrorBody, StaleFence, TooLarge, WriteFailures,
};

/// Longest cache TTL: 30 days.
pub const CACHE_TTL_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// Most tags on one entry, and in one invalidation.
pub const CACHE_TAGS_MAX: usize = 64;

pub(crate) fn limits(st: &AppState) -> CacheLimits {
    CacheLimits {
        max_entries: st.cluster.config().cache.max_entries,
        max_bytes: st.cluster.config().cache.max_bytes,
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

/// Store a cache entry (body = raw bytes); the answer comes once this node has applied it
#[utoipa::path(
    put,
    path = "/v1/cache/{key}",
    params(
        KeyParam,
        ("ttl_ms" = Option<u64>, Query, minimum = 1, maximum = 2592000000u64, description = "at most 30 days"),
        ("tags" = Option<String>, Query, description = "comma-separated, at most 64"),
        ("fence" = Option<String>, Query, description = "LOCK:F: apply only while lock LOCK is held with fence F, else 409 with reason stale_fence and current_fence"),
        IdempotencyKey,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the raw value"),
    responses((status = 200, description = "stored", body = Stored), BadRequest, StaleFence, TooLarge, WriteFailures)
)]
pub async fn set(
    State(st): St,
    Key(key): Key,
    RawQuery(q): RawQuery,
    Idempotency(idem): Idempotency,
    body: Body,
) -> ApiResult<Json<Stored>> {
    let p = params(q, &["ttl_ms", "tags", "fence"])?;
    let ttl_ms = u64_param(&p, "ttl_ms")?
        .map(|t| check_ms("ttl_ms", t, CACHE_TTL_MS_MAX))
        .transpose()?;
    let tags: Vec<String> = match p.get("tags") {
        Some(t) => t.split(',').map(str::to_string).collect(),
        None => Vec::new(),
    };
    check_tags(&tags)?;
    let value = read_body(body, st.cluster.config().limits.max_value_bytes).await?;
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
    match crate::service::propose(&st.cluster, command, idem).await? {
        CacheResult::Stored => Ok(Json(Stored { stored: true })),
        other => Err(other.into()),
    }
}

/// Read a cache entry from this node's applied state
#[utoipa::path(
    get,
    path = "/v1/cache/{key}",
    description = "Header X-Expires-In-Ms when the entry has a TTL.",
    params(KeyParam),
    responses(
        (status = 200, description = "the raw bytes", content_type = "application/octet-stream", body = Vec<u8>, headers(("X-Expires-In-Ms" = u64, description = "time left, when the entry has a TTL"))),
        (status = 404, description = "not_found: a miss", body = ErrorBody),
        BadRequest,
    )
)]
pub async fn get(State(st): St, Key(key): Key, RawQuery(q): RawQuery) -> ApiResult<Response> {
    params(q, &[])?;
    let found = {
        let state = st.cluster.state();
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

/// Remove a cache entry
#[utoipa::path(
    delete,
    path = "/v1/cache/{key}",
    params(
        KeyParam,
        ("fence" = Option<String>, Query, description = "LOCK:F: apply only while lock LOCK is held with fence F, else 409 with reason stale_fence and current_fence"),
        IdempotencyKey,
    ),
    responses((status = 200, description = "whether it existed", body = Deleted), BadRequest, StaleFence, WriteFailures)
)]
pub async fn delete(
    State(st): St,
    Key(key): Key,
    RawQuery(q): RawQuery,
    Idempotency(idem): Idempotency,
) -> ApiResult<Json<Deleted>> {
    let p = params(q, &["fence"])?;
    let command = fenced(&p, CacheCmd::Delete { key })?;
    match crate::service::propose(&st.cluster, command, idem).await? {
        CacheResult::Removed(n) => Ok(Json(Deleted { deleted: n > 0 })),
        other => Err(other.into()),
    }
}

/// Remove every entry carrying any of the tags, in order with the writes around it
#[utoipa::path(
    post,
    path = "/v1/cache/invalidate",
    params(IdempotencyKey),
    request_body = InvalidateRequest,
    responses((status = 200, description = "how many entries were removed", body = Invalidated), BadRequest, TooLarge, WriteFailures)
)]
pub async fn invalidate(
    State(st): St,
    Idempotency(idem): Idempotency,
    JsonBody(body): JsonBody<InvalidateRequest>,
) -> ApiResult<Json<Invalidated>> {
    if body.tags.is_empty() {
        return Err(ApiError::bad_request("tags must name at least one tag").with("field", "tags"));
    }
    check_tags(&body.tags)?;
    let command = CacheCmd::Invalidate { tags: body.tags };
    match crate::service::propose(&st.cluster, command, idem).await? {
        CacheResult::Removed(n) => Ok(Json(Invalidated { invalidated: n })),
        other => Err(other.into()),
    }
}

/// Cache figures
#[utoipa::path(
    get,
    path = "/v1/cache/stats",
    description = "entries, bytes, evictions (replicated, equal on every node), hits and misses (this node), max_entries, max_bytes, applied_index; digest with ?digest=true.",
    params(
        ("digest" = Option<bool>, Query, description = "add a digest of the content"),
    ),
    responses((status = 200, description = "stats", body = CacheStats), BadRequest)
)]
pub async fn stats(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<CacheStats>> {
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
    let state = st.cluster.state();
    let c = state.cache_counts();
    Ok(Json(CacheStats {
        entries: c.entries,
        bytes: c.bytes,
        evictions: c.evictions,
        hits: st.metrics.cache_hits.get(),
        misses: st.metrics.cache_misses.get(),
        max_entries: st.cluster.config().cache.max_entries,
        max_bytes: st.cluster.config().cache.max_bytes,
        applied_index: st.cluster.raft_view().applied_index,
        digest: digest.then(|| state.cache_digest()),
    }))
}

// ---- Typed client ----

/// The calls of these routes in the typed client ([`super::client::Client`]).
mod typed {
    use super::{CacheStats, Deleted, InvalidateRequest, Invalidated, Stored};
    use crate::api::client::{
        header_u64, segment, ApiResult, CacheValue, CacheWrite, Client, Path,
    };
    use reqwest::Method;

    impl Client {
        fn cache_path(key: &str) -> String {
            format!("/v1/cache/{}", segment(key))
        }

        /// A read of this node's cache: a miss is `ApiError::Api` with `NotFound`.
        pub async fn cache_get(&self, key: &str) -> ApiResult<CacheValue> {
            let req = self.request(Method::GET, format_args!("/v1/cache/{}", segment(key)));
            let resp = self.send(req).await?;
            let expires_in_ms = header_u64(&resp, "x-expires-in-ms");
            Ok(CacheValue {
                value: resp.bytes().await?,
                expires_in_ms,
            })
        }

        pub async fn cache_set(
            &self,
            key: &str,
            value: impl Into<reqwest::Body>,
            w: &CacheWrite,
        ) -> ApiResult<Stored> {
            let tags = (!w.tags.is_empty()).then(|| w.tags.join(","));
            let path = Path::new(Self::cache_path(key))
                .opt("ttl_ms", w.ttl_ms)
                .opt("tags", tags)
                .opt("fence", w.fence.as_ref());
            self.call(self.request(Method::PUT, &path.0).body(value))
                .await
        }

        pub async fn cache_delete(&self, key: &str) -> ApiResult<Deleted> {
            self.delete(&Self::cache_path(key)).await
        }

        pub async fn cache_invalidate(&self, tags: Vec<String>) -> ApiResult<Invalidated> {
            let body = InvalidateRequest { tags };
            self.post("/v1/cache/invalidate", &body).await
        }

        /// Cache figures; with `digest`, a digest of the content.
        pub async fn cache_stats(&self, digest: bool) -> ApiResult<CacheStats> {
            let path = Path::new("/v1/cache/stats".into()).opt("digest", digest.then_some(true));
            self.get(&path.0).await
        }
    }
}
