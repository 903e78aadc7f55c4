//! The HTTP API of API.md: key-value state, cluster status, health, readiness, metrics.
//!
//! # Layout
//! - this file: the router, shared extractors and parameter checks, key-value and cluster
//!   handlers;
//! - [`locks`], [`sessions`], [`cache`], [`queues`], [`txn`]: the other primitives;
//! - [`history`]: key-value history reads and compaction;
//! - [`ops`]: cluster operations (remove, promote, transfer leadership, snapshot), the backup
//!   stream and join tokens.
//! - [`channels`], [`ws`]: channels (publish, history, presence) and the WebSocket API;
//!   `/v1/client.js` and `/demo/` serve the browser client and its demo page.

mod cache;
mod channels;
mod history;
mod locks;
mod ops;
mod queues;
mod sessions;
mod txn;
mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use raft::command::{KvCmd, KvResult, MaybeFenced, Proposal};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::cluster::Cluster;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::metrics::Metrics;

/// Shared by every handler.
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
    pub inflight: Arc<Semaphore>,
    pub hub: Arc<crate::realtime::Hub>,
    /// The node's RocksDB, for streaming backups.
    pub db: storage::Db,
}

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/kv", get(list_kv))
        .route("/v1/kv/{key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route("/v1/txn", post(txn::txn))
        .route("/v1/history", get(history::kv_history))
        .route("/v1/locks/{name}", get(locks::inspect))
        .route("/v1/locks/{name}/acquire", post(locks::acquire))
        .route("/v1/locks/{name}/renew", post(locks::renew))
        .route("/v1/locks/{name}/release", post(locks::release))
        .route(
            "/v1/sessions",
            post(sessions::create)
                .get(sessions::list)
                .delete(sessions::delete_user),
        )
        .route(
            "/v1/sessions/{id}",
            get(sessions::get)
                .patch(sessions::update)
                .delete(sessions::delete),
        )
        .route("/v1/sessions/{id}/touch", post(sessions::touch))
        .route("/v1/queues", get(queues::list_queues))
        .route("/v1/queues/{name}", get(queues::stats))
        .route("/v1/queues/{name}/jobs", post(queues::enqueue))
        .route("/v1/queues/{name}/claim", post(queues::claim))
        .route("/v1/queues/{name}/dead", get(queues::dead))
        .route("/v1/queues/{name}/dead/replay", post(queues::replay))
        .route("/v1/queues/{name}/schedules", get(queues::list_schedules))
        .route(
            "/v1/queues/{queue}/schedules/{name}",
            axum::routing::put(queues::set_schedule).delete(queues::delete_schedule),
        )
        .route("/v1/jobs/{id}", get(queues::get_job))
        .route("/v1/jobs/{id}/ack", post(queues::ack))
        .route("/v1/jobs/{id}/nack", post(queues::nack))
        .route("/v1/jobs/{id}/extend", post(queues::extend))
        .route("/v1/cache/stats", get(cache::stats))
        .route("/v1/cache/invalidate", post(cache::invalidate))
        .route(
            "/v1/cache/{key}",
            get(cache::get).put(cache::set).delete(cache::delete),
        )
        // --- Channels, WebSocket, browser client ---
        .route("/v1/channels/{name}/publish", post(channels::publish))
        .route("/v1/channels/{name}/history", get(channels::history))
        .route("/v1/channels/{name}/presence", get(channels::presence))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/client.js", get(client_js))
        .route("/demo/", get(demo_page))
        // --- end channels ---
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/cluster/members/{id}/remove", post(ops::remove))
        .route("/v1/cluster/members/{id}/promote", post(ops::promote))
        .route("/v1/cluster/leader/transfer", post(ops::transfer))
        .route("/v1/cluster/snapshot", post(ops::snapshot))
        .route("/v1/cluster/compact", post(history::compact))
        .route("/v1/cluster/backup", get(ops::backup))
        // Join tokens.
        .route(
            "/v1/cluster/tokens",
            post(ops::create_token).get(ops::list_tokens),
        )
        .route("/v1/cluster/tokens/{id}", delete(ops::revoke_token))
        .route("/v1/openapi.json", get(openapi))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and times every request, and sheds load past `max_inflight_requests`.
async fn observe(State(st): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let Ok(_permit) = st.inflight.clone().try_acquire_owned() else {
        return ApiError::unavailable("too many requests in flight").into_response();
    };
    let start = Instant::now();
    let resp = next.run(req).await;
    st.metrics.observe_request(
        &route,
        method.as_str(),
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("method {method} is not allowed here"),
    )
}

/// The `{key}` path segment, percent-decoded and validated; a bad one is a JSON 400.
pub struct Key(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Key {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::bad_request(format!("bad key: {}", e.body_text())).with("field", "key")
            })?;
        validate_key(&key)?;
        Ok(Key(key))
    }
}

/// Query parameters, rejecting unknown names and repeated ones.
pub(crate) fn params(raw: Option<String>, allowed: &[&str]) -> ApiResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?} (allowed: {})",
                allowed.join(", ")
            )));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter {k:?} given twice"
            )));
        }
    }
    Ok(out)
}

pub(crate) fn u64_param(p: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    p.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be a non-negative integer, got {v:?}"))
            })
        })
        .transpose()
}

/// Keys: 1..=512 bytes of UTF-8 without control characters.
pub fn validate_key(key: &str) -> ApiResult<()> {
    validate_name("key", key)
}

/// Keys and names (locks, owners, users, tags): 1..=512 bytes of UTF-8 without control
/// characters.
pub fn validate_name(field: &str, value: &str) -> ApiResult<()> {
    if value.is_empty() || value.len() > 512 {
        return Err(ApiError::bad_request(format!(
            "{field} must be 1 to 512 bytes, got {}",
            value.len()
        ))
        .with("field", field));
    }
    if value.chars().any(char::is_control) {
        return Err(
            ApiError::bad_request(format!("{field} must not contain control characters"))
                .with("field", field),
        );
    }
    Ok(())
}

/// A `{name}` or `{id}` path segment, percent-decoded and checked like a key.
pub struct Name(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Key(name) = Key::from_request_parts(parts, state).await?;
        Ok(Name(name))
    }
}

/// A JSON request body of at most `max_value_bytes` plus 64 KiB; malformed JSON, unknown
/// fields and wrong types are 400, an oversized body 413.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let limit = json_body_limit(st);
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::too_large(format!("body is over the {limit}-byte limit"))
                    .with("limit", limit)
            })?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request("a JSON body is required"));
        }
        // Every body is an object; serde would otherwise also read a struct from an array.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
    }
}

pub(crate) fn json_body_limit(st: &AppState) -> usize {
    st.cluster.config.limits.max_value_bytes * 2 + 64 * 1024
}

/// Time left until `deadline_ms` on the replicated clock, estimated with this node's wall
/// clock too: the replicated clock only moves when entries apply.
pub(crate) fn remaining_ms(deadline_ms: u64, replicated_now_ms: u64) -> u64 {
    deadline_ms.saturating_sub(replicated_now_ms.max(crate::cluster::now_ms()))
}

/// A `ttl_ms`-like duration that must lie in `1..=max`.
pub(crate) fn check_ms(field: &str, value: u64, max: u64) -> ApiResult<u64> {
    if value == 0 || value > max {
        return Err(
            ApiError::bad_request(format!("{field} must be 1 to {max} ms, got {value}"))
                .with("field", field),
        );
    }
    Ok(value)
}

/// `fence=LOCK:F`: wraps `command` so it applies only while lock LOCK is held with fence F.
pub(crate) fn fenced<P: Proposal>(
    p: &HashMap<String, String>,
    command: P,
) -> ApiResult<MaybeFenced<P>> {
    let Some(spec) = p.get("fence") else {
        return Ok(MaybeFenced {
            fence: None,
            command,
        });
    };
    let bad = || {
        ApiError::bad_request(format!(
            "fence must be LOCK:FENCE (e.g. jobs-lock:42), got {spec:?}"
        ))
        .with("field", "fence")
    };
    let (lock, fence) = spec.rsplit_once(':').ok_or_else(bad)?;
    let fence: u64 = fence.parse().map_err(|_| bad())?;
    validate_name("lock", lock)?;
    Ok(MaybeFenced {
        fence: Some((lock.to_string(), fence)),
        command,
    })
}

/// Every read is linearizable unless its query says `consistency=stale`: then this node's
/// state is read as it is. Call once the other parameters are checked, right before reading.
pub(crate) async fn read_barrier_unless_stale(
    st: &AppState,
    p: &HashMap<String, String>,
) -> ApiResult<()> {
    match p.get("consistency").map(String::as_str) {
        None | Some("linearizable") => Ok(st.cluster.read_barrier().await?),
        Some("stale") => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be linearizable or stale, got {other:?}"
        ))),
    }
}

/// `limit` of a listing: 1 to 1000, 100 when absent.
pub(crate) fn list_limit(p: &HashMap<String, String>) -> ApiResult<usize> {
    match u64_param(p, "limit")? {
        None => Ok(LIST_LIMIT_DEFAULT),
        Some(n) if n >= 1 && n as usize <= LIST_LIMIT_MAX => Ok(n as usize),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be 1 to {LIST_LIMIT_MAX}, got {n}"
        ))),
    }
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            if s.is_empty() || s.len() > 256 {
                return Err(ApiError::bad_request(
                    "Idempotency-Key must be 1 to 256 characters",
                ));
            }
            Ok(Some(s.to_string()))
        }
    }
}

async fn put_kv(
    State(st): St,
    Key(key): Key,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["if_revision", "ttl_ms", "fence"])?;
    let if_revision = u64_param(&p, "if_revision")?;
    let ttl_ms = u64_param(&p, "ttl_ms")?;
    if ttl_ms == Some(0) {
        return Err(ApiError::bad_request("ttl_ms must be at least 1"));
    }
    let idem = idempotency_key(&headers)?;
    let limit = st.cluster.config.limits.max_value_bytes;
    let value = read_body(body, limit).await?;
    let command = fenced(
        &p,
        KvCmd::Put {
            key,
            value: value.to_vec(),
            if_revision,
            ttl_ms,
        },
    )?;
    match st.cluster.write(command, idem).await? {
        KvResult::Put { revision } => Ok(Json(json!({ "revision": revision }))),
        other => Err(other.into()),
    }
}

async fn delete_kv(
    State(st): St,
    Key(key): Key,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["if_revision", "fence"])?;
    let if_revision = u64_param(&p, "if_revision")?;
    let idem = idempotency_key(&headers)?;
    let command = fenced(&p, KvCmd::Delete { key, if_revision })?;
    match st.cluster.write(command, idem).await? {
        KvResult::Delete { revision, deleted } => {
            Ok(Json(json!({ "revision": revision, "deleted": deleted })))
        }
        other => Err(other.into()),
    }
}

pub(crate) async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::too_large(format!("value is over the {limit}-byte limit")).with("limit", limit)
    })
}

async fn get_kv(State(st): St, Key(key): Key, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let found = st
        .cluster
        .state
        .read()
        .expect("state lock")
        .get(&key)
        .map(|e| (e.value.clone(), e.revision));
    let Some((value, revision)) = found else {
        return Err(ApiError::not_found(format!("no key {key:?}")));
    };
    let mut resp = value.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("x-revision", HeaderValue::from(revision));
    Ok(resp)
}

const LIST_LIMIT_DEFAULT: usize = 100;
const LIST_LIMIT_MAX: usize = 1000;

async fn list_kv(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let p = params(q, &["prefix", "limit", "after", "consistency"])?;
    let prefix = p.get("prefix").cloned().unwrap_or_default();
    if prefix.len() > 512 {
        return Err(ApiError::bad_request("prefix must be at most 512 bytes"));
    }
    let limit = list_limit(&p)?;
    read_barrier_unless_stale(&st, &p).await?;
    let st_lock = st.cluster.state.read().expect("state lock");
    let (items, more) = st_lock.list(&prefix, p.get("after").map(String::as_str), limit);
    let b64 = base64::engine::general_purpose::STANDARD;
    let next = if more {
        items.last().map(|(k, _)| (*k).clone())
    } else {
        None
    };
    let items: Vec<Value> = items
        .iter()
        .map(|(k, e)| json!({ "key": k, "value": b64.encode(&e.value), "revision": e.revision }))
        .collect();
    Ok(Json(
        json!({ "items": items, "next": next, "revision": st_lock.meta.revision }),
    ))
}

async fn cluster_status(State(st): St) -> Json<Value> {
    let c = &st.cluster;
    let m = c.metrics();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let (cluster_id, revision, compact_revision) = {
        let s = c.state.read().expect("state lock");
        (
            s.meta.cluster_id.clone(),
            s.meta.revision,
            s.compact_revision(),
        )
    };
    // Liveness and metadata as this node's gossip sees them (itself: alive, local figures).
    let view = c.gossip.snapshot();
    let local_load = json!({
        "inflight_requests": c.config.api.max_inflight_requests - st.inflight.available_permits(),
        "load_avg_1m": crate::cluster::load_avg_1m(),
    });
    // How the leader reaches each member: its own view, or the one it publishes in gossip.
    let reach = c.leader_reach();
    let fresh = c.contact_window().as_millis() as u64;
    let leader_view = |id: u64| -> (Value, Value, Value) {
        match &reach {
            Some((leader, _)) if *leader == id => (json!(true), json!(0), json!(0)),
            Some((_, members)) => match members.iter().find(|r| r.node == id) {
                Some(r) => (
                    json!(r.acked_ms_ago.is_some_and(|a| a <= fresh)),
                    json!(r.acked_ms_ago),
                    json!(r.lag),
                ),
                None => (Value::Null, Value::Null, Value::Null),
            },
            None => (Value::Null, Value::Null, Value::Null),
        }
    };
    let members: Vec<Value> = membership
        .nodes()
        .map(|(id, node)| {
            let role = if voters.contains(id) {
                "voter"
            } else {
                "learner"
            };
            let (gossip, age_ms, applied, load) = if *id == c.id {
                (
                    "alive",
                    None,
                    m.last_applied.map(|l| l.index),
                    local_load.clone(),
                )
            } else if let Some(p) = view.get(id) {
                let (applied, load) = match &p.meta {
                    Some((meta, _)) => (
                        Some(meta.applied_index),
                        json!({
                            "inflight_requests": meta.inflight_requests,
                            "load_avg_1m": meta.load_avg_1m,
                        }),
                    ),
                    None => (None, json!({})),
                };
                (
                    p.liveness.as_str(),
                    Some(p.since.elapsed().as_millis() as u64),
                    applied,
                    load,
                )
            } else {
                // Not heard of in gossip yet (just joined, or this node just started).
                ("unknown", None, None, json!({}))
            };
            let (leader_reaches, leader_contact_ms_ago, replication_lag) = leader_view(*id);
            json!({
                "id": id,
                "api_addr": node.api_addr,
                "cluster_addr": node.cluster_addr,
                "role": role,
                "gossip": gossip,
                "gossip_changed_ms_ago": age_ms,
                "applied_index": applied,
                "load": load,
                "leader_reaches": leader_reaches,
                "leader_contact_ms_ago": leader_contact_ms_ago,
                "replication_lag": replication_lag,
            })
        })
        .collect();
    Json(json!({
        "cluster_id": cluster_id,
        "node_id": c.id,
        "leader_id": m.current_leader,
        "term": m.current_term,
        "commit_index": m.local_committed.map(|l| l.index).unwrap_or(0),
        "applied_index": m.last_applied.map(|l| l.index).unwrap_or(0),
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        "revision": revision,
        "compact_revision": compact_revision,
        "members": members,
        "autopilot": {
            "target_voters": c.config.raft.target_voters,
            "replace_dead": c.config.autopilot.replace_dead,
            "dead_grace_ms": c.config.autopilot.dead_grace_ms,
            "actions": c.autopilot_actions(),
        },
    }))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready means able to serve a linearizable request now (see `Cluster::check_ready`).
async fn ready(State(st): St) -> Result<Json<Value>, ApiError> {
    match st.cluster.check_ready().await {
        Ok(()) => Ok(Json(json!({ "status": "ready" }))),
        Err(transport::ServiceError::Unavailable(why)) => {
            Err(ApiError::unavailable(format!("not ready: {why}")))
        }
        Err(e) => Err(ApiError::unavailable(format!("not ready: {e}"))),
    }
}

async fn metrics(State(st): St) -> Response {
    let body = st.metrics.render(&st.cluster);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn client_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/stackd.js"),
    )
        .into_response()
}

async fn demo_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("assets/demo.html"),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::OPENAPI_JSON,
    )
        .into_response()
}
