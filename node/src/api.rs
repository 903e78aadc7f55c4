//! The HTTP API of API.md: key-value state, cluster status, health, readiness, metrics.
//!
//! # Layout
//! - this file: the router, shared extractors and parameter checks, key-value and cluster
//!   handlers;
//! - [`locks`], [`sessions`], [`cache`], [`queues`], [`txn`]: the other primitives;
//! - [`history`]: key-value history reads and compaction;
//! - [`idempotency`]: the `Idempotency-Key` of writes, scoped and bound to its request;
//! - [`ops`]: cluster operations (remove, promote, transfer leadership, snapshot), the backup
//!   stream and join tokens.
//! - [`channels`], [`ws`]: channels (publish, history, presence) and the WebSocket API;
//!   `/v1/client.js` and `/demo/` serve the browser client and its demo page;
//! - [`ui`]: the admin UI's files at `/ui/`;
//! - `browser`: CORS, the `Origin` check and the security headers of every answer.

pub mod acl;
mod browser;
pub(crate) mod cache;
pub(crate) mod channels;
pub mod client;
pub(crate) mod history;
pub(crate) mod idempotency;
pub(crate) mod locks;
pub mod model;
pub(crate) mod ops;
pub(crate) mod queues;
pub mod semaphores;
pub mod services;
pub(crate) mod sessions;
pub(crate) mod txn;
pub(crate) mod ui;
pub(crate) mod ws;
pub mod ws_protocol;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use raft::command::{KvCmd, KvResult, MaybeFenced, Proposal};
use tokio::sync::Semaphore;

use crate::auth::Resource::{
    Acl, Cache, Channels, Cluster as ClusterOps, Kv, Locks, Queues, Routes, Semaphores, Services,
    Sessions,
};
use crate::auth::Target::{All, JobQueue, Path as Param, Prefix, Query, SessionUser};
use crate::auth::{channel, read, write, Need, Op};
use crate::cluster::Cluster;
use crate::error::{
    ApiError, ApiResult, BadRequest, CompareFailed, ErrorBody, ErrorCode, NotFound, TooLarge,
    Unsettled, WriteFailures,
};
use crate::metrics::Metrics;
use model::{ClusterStatus, Consistency, KvDeleted, KvItem, KvList, Revision, Status};

pub use idempotency::Idempotency;
pub(crate) use idempotency::IdempotencyKey;

/// Shared by every handler.
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
    pub inflight: Arc<Semaphore>,
    /// The separate budget of `/health`, `/ready` and `/metrics` (`api.max_inflight_probes`),
    /// so they are answered while other requests are shed.
    pub probes: Arc<Semaphore>,
    pub hub: Arc<crate::realtime::Hub>,
    /// The node's RocksDB, for streaming backups.
    pub db: storage::Db,
    /// The node's request tasks: every request, and work that outlives its handler (a
    /// backup's stream), is tracked here, so shutdown waits for it.
    pub requests: tokio_util::task::TaskTracker,
    /// Cancelled when requests outlive shutdown's patience: they are answered 503.
    pub abandon: tokio_util::sync::CancellationToken,
    /// Request rates per token, address and WebSocket connection.
    pub rate: Arc<crate::rate::RateLimits>,
}

type St = State<Arc<AppState>>;

/// Every route as `method path => handler, need`: `router()` is built from this table and
/// [`ROUTES`] lists it, so the OpenAPI test compares the document with the routes served and
/// the access test tries every route with every kind of token. `need` is what the caller must
/// hold ([`crate::auth::Need`]); a route cannot be added without saying.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path, $need:expr;)*) => {
        /// (method, path template, need) of every route, in the order of the table.
        pub const ROUTES: &[(&str, &str, Need)] = &[$((stringify!($method), $path, $need)),*];

        fn add_routes(r: Router<Arc<AppState>>, st: &Arc<AppState>) -> Router<Arc<AppState>> {
            r$(.route(
                $path,
                axum::routing::$method($handler)
                    .route_layer(middleware::from_fn_with_state((st.clone(), $need), admit)),
            ))*
        }

        /// The operation of every route, from its handler's `#[utoipa::path]`: the paths of
        /// the API reference (`crate::openapi`).
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($handler),*))]
        pub struct RouteDoc;
    };
}

routes! {
    get "/v1/kv" => list_kv, read(Kv, Prefix("prefix"));
    get "/v1/kv/{key}" => get_kv, read(Kv, Param("key"));
    put "/v1/kv/{key}" => put_kv, write(Kv, Param("key"));
    delete "/v1/kv/{key}" => delete_kv, write(Kv, Param("key"));
    post "/v1/txn" => txn::txn, Need::Token;
    get "/v1/history" => history::kv_history, read(Kv, Prefix("prefix"));
    get "/v1/locks" => locks::list, read(Locks, Prefix("prefix"));
    get "/v1/locks/{name}" => locks::inspect, read(Locks, Param("name"));
    post "/v1/locks/{name}/acquire" => locks::acquire, write(Locks, Param("name"));
    post "/v1/locks/{name}/renew" => locks::renew, write(Locks, Param("name"));
    post "/v1/locks/{name}/release" => locks::release, write(Locks, Param("name"));
    get "/v1/semaphores" => semaphores::list, read(Semaphores, Prefix("prefix"));
    get "/v1/semaphores/{name}" => semaphores::inspect, read(Semaphores, Param("name"));
    post "/v1/semaphores/{name}/acquire" => semaphores::acquire, write(Semaphores, Param("name"));
    post "/v1/semaphores/{name}/renew" => semaphores::renew, write(Semaphores, Param("name"));
    post "/v1/semaphores/{name}/release" => semaphores::release, write(Semaphores, Param("name"));
    post "/v1/sessions" => sessions::create, Need::Token;
    get "/v1/sessions" => sessions::list, read(Sessions, Query("user"));
    delete "/v1/sessions" => sessions::delete_user, write(Sessions, Query("user"));
    get "/v1/sessions/{id}" => sessions::get, read(Sessions, SessionUser("id"));
    patch "/v1/sessions/{id}" => sessions::update, write(Sessions, SessionUser("id"));
    delete "/v1/sessions/{id}" => sessions::delete, write(Sessions, SessionUser("id"));
    post "/v1/sessions/{id}/touch" => sessions::touch, write(Sessions, SessionUser("id"));
    get "/v1/queues" => queues::list_queues, read(Queues, All);
    get "/v1/queues/{name}" => queues::stats, read(Queues, Param("name"));
    delete "/v1/queues/{name}" => queues::delete_queue, write(Queues, Param("name"));
    post "/v1/queues/{name}/jobs" => queues::enqueue, write(Queues, Param("name"));
    get "/v1/queues/{name}/jobs" => queues::list_jobs, read(Queues, Param("name"));
    post "/v1/queues/{name}/claim" => queues::claim, write(Queues, Param("name"));
    get "/v1/queues/{name}/dead" => queues::dead, read(Queues, Param("name"));
    post "/v1/queues/{name}/dead/replay" => queues::replay, write(Queues, Param("name"));
    post "/v1/queues/{name}/dead/delete" => queues::delete_dead, write(Queues, Param("name"));
    get "/v1/queues/{name}/schedules" => queues::list_schedules, read(Queues, Param("name"));
    put "/v1/queues/{queue}/schedules/{name}" => queues::set_schedule, write(Queues, Param("queue"));
    delete "/v1/queues/{queue}/schedules/{name}" => queues::delete_schedule, write(Queues, Param("queue"));
    get "/v1/jobs/{id}" => queues::get_job, read(Queues, JobQueue("id"));
    post "/v1/jobs/{id}/ack" => queues::ack, write(Queues, JobQueue("id"));
    post "/v1/jobs/{id}/nack" => queues::nack, write(Queues, JobQueue("id"));
    post "/v1/jobs/{id}/extend" => queues::extend, write(Queues, JobQueue("id"));
    get "/v1/cache/stats" => cache::stats, read(Cache, All);
    post "/v1/cache/invalidate" => cache::invalidate, write(Cache, All);
    get "/v1/cache/{key}" => cache::get, read(Cache, Param("key"));
    put "/v1/cache/{key}" => cache::set, write(Cache, Param("key"));
    delete "/v1/cache/{key}" => cache::delete, write(Cache, Param("key"));
    // The service registry and the gateway's routes.
    get "/v1/services" => services::list, read(Services, All);
    get "/v1/services/{name}" => services::get, read(Services, Param("name"));
    put "/v1/services/{name}/instances/{id}" => services::register, write(Services, Param("name"));
    delete "/v1/services/{name}/instances/{id}" => services::deregister, write(Services, Param("name"));
    post "/v1/services/{name}/instances/{id}/heartbeat" => services::heartbeat, write(Services, Param("name"));
    get "/v1/routes" => services::list_routes, read(Routes, All);
    get "/v1/routes/{name}" => services::get_route, read(Routes, Param("name"));
    put "/v1/routes/{name}" => services::put_route, write(Routes, Param("name"));
    delete "/v1/routes/{name}" => services::delete_route, write(Routes, Param("name"));
    // Channels, WebSocket, browser client.
    get "/v1/channels" => channels::list, read(Channels, Prefix("prefix"));
    delete "/v1/channels/{name}" => channels::delete, channel(Op::Write);
    post "/v1/channels/{name}/publish" => channels::publish, channel(Op::Publish);
    get "/v1/channels/{name}/history" => channels::history, channel(Op::History);
    get "/v1/channels/{name}/presence" => channels::presence, channel(Op::Presence);
    get "/v1/ws" => ws::upgrade, Need::Upgrade;
    get "/v1/client.js" => client_js, Need::Open;
    get "/demo/" => demo_page, Need::Open;
    // The admin UI: static files; its data comes from the routes above, with the user's token.
    get "/ui" => ui::redirect, Need::Open;
    get "/ui/" => ui::index, Need::Open;
    get "/ui/{file}" => ui::file, Need::Open;
    // Access control.
    post "/v1/acl/tokens" => acl::create_token, write(Acl, All);
    get "/v1/acl/tokens" => acl::list_tokens, read(Acl, All);
    get "/v1/acl/tokens/self" => acl::token_self, Need::Token;
    get "/v1/acl/tokens/{id}" => acl::get_token, read(Acl, All);
    patch "/v1/acl/tokens/{id}" => acl::update_token, write(Acl, All);
    delete "/v1/acl/tokens/{id}" => acl::delete_token, write(Acl, All);
    get "/v1/acl/policies" => acl::list_policies, read(Acl, All);
    get "/v1/acl/policies/{name}" => acl::get_policy, read(Acl, All);
    put "/v1/acl/policies/{name}" => acl::set_policy, write(Acl, All);
    delete "/v1/acl/policies/{name}" => acl::delete_policy, write(Acl, All);
    get "/v1/acl/jwt" => acl::list_providers, read(Acl, All);
    get "/v1/audit" => acl::audit, read(Acl, All);
    get "/v1/acl/jwt/{name}" => acl::get_provider, read(Acl, All);
    put "/v1/acl/jwt/{name}" => acl::set_provider, write(Acl, All);
    delete "/v1/acl/jwt/{name}" => acl::delete_provider, write(Acl, All);
    // Cluster operations.
    get "/v1/cluster" => cluster_status, read(ClusterOps, All);
    get "/v1/cluster/route" => ops::route, Need::Token;
    post "/v1/cluster/members/{id}/remove" => ops::remove, write(ClusterOps, All);
    post "/v1/cluster/members/{id}/promote" => ops::promote, write(ClusterOps, All);
    post "/v1/cluster/leader/transfer" => ops::transfer, write(ClusterOps, All);
    post "/v1/cluster/snapshot" => ops::snapshot, write(ClusterOps, All);
    post "/v1/cluster/compact" => history::compact, write(ClusterOps, All);
    get "/v1/cluster/backup" => ops::backup, write(ClusterOps, All);
    get "/v1/cluster/digest" => ops::digest, read(ClusterOps, All);
    post "/v1/cluster/tokens" => ops::create_token, write(ClusterOps, All);
    get "/v1/cluster/tokens" => ops::list_tokens, read(ClusterOps, All);
    delete "/v1/cluster/tokens/{id}" => ops::revoke_token, write(ClusterOps, All);
    get "/v1/node/samples" => node_samples, read(ClusterOps, All);
    get "/v1/openapi.json" => openapi, Need::Open;
    get "/health" => health, Need::Open;
    get "/ready" => ready, Need::Open;
    get "/metrics" => metrics, Need::Metrics;
}

/// The API: every route of the table behind [`admit`], and every request behind
/// [`front`] and CORS. Each layer costs every request a boxed service clone and future, so
/// the per-request work sits in these two.
pub fn router(state: Arc<AppState>) -> Router {
    add_routes(Router::new(), &state)
        .fallback(ui::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), front))
        .layer(browser::cors(&state))
        .with_state(state)
}

/// In front of every route's handler: the access check (`auth::authorize`), then, once the
/// caller is let in, a request with an Idempotency-Key is read and fingerprinted for the
/// `Idempotency` extractor.
async fn admit(
    State((st, need)): State<(Arc<AppState>, Need)>,
    req: Request,
    next: Next,
) -> Response {
    let req = match crate::auth::authorize(&st, need, req).await {
        Ok(req) => req,
        Err(refused) => return refused,
    };
    match idempotency::with_fingerprint(&st, req).await {
        Ok(req) => next.run(req).await,
        Err(refused) => refused,
    }
}

/// In front of every request: the `Origin` check of the browser rules, then the request is
/// tracked among the node's requests (one still running when shutdown gives up on it is
/// answered 503) and observed ([`observe`]); every answer gets the security headers.
async fn front(State(st): St, req: Request, next: Next) -> Response {
    if let Some(refused) = browser::refused_origin(&st, &req) {
        return browser::with_headers(refused);
    }
    let answer = st.requests.track_future(async {
        // Biased, the request first: one answered at its first poll never registers with
        // the shared token (a lock shared by every request).
        tokio::select! {
            biased;
            answer = observe(&st, req, next) => answer,
            _ = st.abandon.cancelled() => {
                ApiError::unavailable("the node is shutting down").into_response()
            }
        }
    });
    browser::with_headers(answer.await)
}

/// The routes answered from their own budget (`AppState::probes`): health, readiness and
/// metrics must answer while the node sheds other requests.
const PROBE_ROUTES: [&str; 3] = ["/health", "/ready", "/metrics"];

/// Counts and times every request, sheds load past `max_inflight_requests` (probes past
/// `max_inflight_probes`), and reads the body within `body_read_timeout_ms`.
async fn observe(st: &AppState, req: Request, next: Next) -> Response {
    // The route's template (shared, not copied) labels the request's metrics.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let start = Instant::now();
    let resp = if PROBE_ROUTES.contains(&route) {
        match st.probes.clone().try_acquire_owned() {
            Ok(_permit) => next.run(req).await,
            Err(_) => {
                ApiError::unavailable("too many health, readiness and metrics requests in flight")
                    .into_response()
            }
        }
    } else {
        let Ok(_permit) = st.inflight.clone().try_acquire_owned() else {
            return ApiError::unavailable("too many requests in flight").into_response();
        };
        match read_whole_body(st, req).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        }
    };
    st.metrics
        .observe_request(route, method.as_str(), resp.status(), start.elapsed());
    resp
}

/// How many bytes past the limit a body over it is still read, and thrown away, before the
/// 413 answer: a client stopped while it sends sees its connection reset and loses the answer,
/// so one that sends a body somewhat over the limit reads why it was refused. Past this,
/// the connection is closed.
const DISCARD_BYTES: usize = 16 << 20;

/// Reads the request's whole body (at most the JSON body limit, which bounds every body a
/// route takes) before the handler runs, within `api.body_read_timeout_ms` of the request
/// being let in: a client that sends its body slowly, or not at all, holds an in-flight
/// permit that long at most, then gets 408 request_timeout. A request with an empty body
/// (every GET) passes at once.
async fn read_whole_body(st: &AppState, req: Request) -> ApiResult<Request> {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return Ok(Request::from_parts(parts, body));
    }
    let limit = json_body_limit(st);
    let too_large =
        || ApiError::too_large(format!("body is over the {limit}-byte limit")).with("limit", limit);
    let bytes = read_request_body(st.cluster.config(), body, limit, too_large).await?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// A request's whole body, of at most `limit` bytes, within `api.body_read_timeout_ms`
/// (else 408 request_timeout). A body over the limit gets `too_large` once it has been read
/// (up to [`DISCARD_BYTES`] past the limit); one that cannot be read, 400. The API's bodies
/// and the gateway's are read this way.
pub(crate) async fn read_request_body(
    config: &crate::config::Config,
    body: Body,
    limit: usize,
    too_large: impl FnOnce() -> ApiError,
) -> ApiResult<Bytes> {
    let within = Duration::from_millis(config.api.body_read_timeout_ms);
    match tokio::time::timeout(within, read_within(body, limit)).await {
        Ok(Ok(Some(bytes))) => Ok(bytes),
        Ok(Ok(None)) => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "the body could not be read: {e}"
        ))),
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the body did not arrive within {} ms (api.body_read_timeout_ms)",
                within.as_millis()
            ),
        )
        .with("limit_ms", within.as_millis() as u64)),
    }
}

/// The body's bytes, or `None` when there are more than `limit` (the rest is then read and
/// dropped, up to [`DISCARD_BYTES`] past the limit).
async fn read_within(mut body: Body, limit: usize) -> Result<Option<Bytes>, axum::Error> {
    use http_body_util::BodyExt as _;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        seen += data.len();
        if seen > limit.saturating_add(DISCARD_BYTES) {
            break;
        }
        if seen <= limit {
            chunks.push(data);
        } else {
            chunks.clear();
        }
    }
    if seen > limit {
        return Ok(None);
    }
    Ok(Some(match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    }))
}

pub(crate) async fn not_found() -> ApiError {
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
            let takes = if allowed.is_empty() {
                "this request takes none".to_string()
            } else {
                format!("allowed: {}", allowed.join(", "))
            };
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?} ({takes})"
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
    if has_control(value) {
        return Err(
            ApiError::bad_request(format!("{field} must not contain control characters"))
                .with("field", field),
        );
    }
    Ok(())
}

/// Whether `s` holds a control character (`char::is_control`: U+0000-U+001F, U+007F and
/// U+0080-U+009F), read byte by byte: in UTF-8 the last range is 0xC2 then 0x80-0x9F, and no
/// other character's encoding holds a byte under 0x20 or 0x7F.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c < 0x20 || c == 0x7f || (c == 0xc2 && b.get(i + 1).is_some_and(|n| *n < 0xa0))
    })
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

/// Path parameters as `T` (a `String`, or a tuple of them), percent-decoded; a segment that
/// does not decode to UTF-8 is a JSON 400 like any other bad input.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PathParams<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(PathParams(t)),
            Err(e) => Err(ApiError::bad_request(format!(
                "bad path: {}",
                e.body_text()
            ))),
        }
    }
}

/// A JSON request body of at most `max_value_bytes` plus 64 KiB; malformed JSON, unknown
/// fields and wrong types are 400, an oversized body 413. A `Content-Type` other than JSON
/// (`application/json` or `*/*+json`) is 400, so an HTML form (or a page's "simple" request)
/// cannot send one.
pub struct JsonBody<T>(pub T);

/// Whether a request's `Content-Type`, if it has one, says JSON.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let essence = ct
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::bad_request(
                "the body must be sent with Content-Type: application/json",
            ));
        }
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

/// What a write to one named thing carries, read in this order: the `{name}` or `{id}` of its
/// path, checked as [`Name`]; its [`Idempotency`] key; its [`JsonBody`].
pub struct NamedWrite<T> {
    pub name: String,
    pub idem: Option<raft::command::IdemKey>,
    pub body: T,
}

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Arc<AppState>> for NamedWrite<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        use axum::extract::FromRequestParts;
        let (mut parts, body) = req.into_parts();
        let Name(name) = Name::from_request_parts(&mut parts, st).await?;
        let Idempotency(idem) = Idempotency::from_request_parts(&mut parts, st).await?;
        let JsonBody(body) = JsonBody::from_request(Request::from_parts(parts, body), st).await?;
        Ok(NamedWrite { name, idem, body })
    }
}

pub(crate) fn json_body_limit(st: &AppState) -> usize {
    st.cluster.config().limits.max_value_bytes * 2 + 64 * 1024
}

/// Time left until `deadline_ms` on the replicated clock, estimated with this node's wall
/// clock too: the replicated clock only moves when entries apply.
pub(crate) fn remaining_ms(deadline_ms: u64, replicated_now_ms: u64) -> u64 {
    deadline_ms.saturating_sub(replicated_now_ms.max(crate::cluster::now_ms()))
}

/// How long a blocking call may wait (`wait_ms`), at most `max`; 0 is no wait.
pub(crate) fn check_wait_ms(value: u64, max: u64) -> ApiResult<u64> {
    if value > max {
        return Err(
            ApiError::bad_request(format!("wait_ms must be at most {max}, got {value}"))
                .with("field", "wait_ms"),
        );
    }
    Ok(value)
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

/// The `consistency` query parameter of a read, as the API reference lists it (read by
/// [`read_barrier_unless_stale`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadConsistency {
    /// linearizable (default) or stale: read this node's state as it is
    #[allow(dead_code)]
    consistency: Option<Consistency>,
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

/// The `limit` query parameter of a listing, as the API reference lists it (read by
/// [`list_limit`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListLimit {
    /// 1 to 1000, default 100
    #[param(minimum = 1, maximum = 1000)]
    #[allow(dead_code)]
    limit: Option<u64>,
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

/// The checked `prefix`, `after` and `limit` of a listing by name, once the read may go on
/// (after its barrier unless it says `consistency=stale`).
pub(crate) async fn name_page(
    st: &AppState,
    q: Option<String>,
) -> ApiResult<(String, Option<String>, usize)> {
    let p = params(q, &["prefix", "limit", "after", "consistency"])?;
    let page = prefix_page(&p)?;
    read_barrier_unless_stale(st, &p).await?;
    Ok(page)
}

/// The `next` of a page of a listing by name: its last name, when more follow.
pub(crate) fn next_name<N: AsRef<str>, T>(page: &[(N, T)], more: bool) -> Option<String> {
    if more {
        page.last().map(|(name, _)| name.as_ref().to_string())
    } else {
        None
    }
}

/// `prefix` (at most 512 bytes, empty when absent), `after` and `limit` of a listing by name.
pub(crate) fn prefix_page(
    p: &HashMap<String, String>,
) -> ApiResult<(String, Option<String>, usize)> {
    let prefix = p.get("prefix").cloned().unwrap_or_default();
    if prefix.len() > 512 {
        return Err(ApiError::bad_request("prefix must be at most 512 bytes"));
    }
    Ok((prefix, p.get("after").cloned(), list_limit(p)?))
}

/// The `{key}` of a key's or a cache entry's routes, as the API reference lists it (read by [`Key`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct KeyParam {
    /// 1..=512 bytes of UTF-8, no control characters; percent-encode '/'
    #[allow(dead_code)]
    key: String,
}

/// Write a key (body = raw value, at most max_value_bytes, default 1 MiB)
#[utoipa::path(
    put,
    path = "/v1/kv/{key}",
    params(
        KeyParam,
        ("if_revision" = Option<u64>, Query, description = "apply only if the key's revision is this (0 = only if absent)"),
        ("ttl_ms" = Option<u64>, Query, minimum = 1, description = "the key expires this long after the write"),
        ("fence" = Option<String>, Query, description = "LOCK:F: apply only while lock LOCK is held with fence F, else 409 with reason stale_fence and current_fence"),
        IdempotencyKey,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the raw value"),
    responses((status = 200, description = "written", body = Revision), BadRequest, CompareFailed, TooLarge, WriteFailures)
)]
async fn put_kv(
    State(st): St,
    Key(key): Key,
    RawQuery(q): RawQuery,
    Idempotency(idem): Idempotency,
    body: Body,
) -> ApiResult<Json<Revision>> {
    let p = params(q, &["if_revision", "ttl_ms", "fence"])?;
    let if_revision = u64_param(&p, "if_revision")?;
    let ttl_ms = u64_param(&p, "ttl_ms")?;
    if ttl_ms == Some(0) {
        return Err(ApiError::bad_request("ttl_ms must be at least 1"));
    }
    let limit = st.cluster.config().limits.max_value_bytes;
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
    match crate::service::propose(&st.cluster, command, idem).await? {
        KvResult::Put { revision } => Ok(Json(Revision { revision })),
        other => Err(other.into()),
    }
}

/// Delete a key
#[utoipa::path(
    delete,
    path = "/v1/kv/{key}",
    params(
        KeyParam,
        ("if_revision" = Option<u64>, Query, description = "apply only if the key's revision is this"),
        ("fence" = Option<String>, Query, description = "LOCK:F: apply only while lock LOCK is held with fence F, else 409 with reason stale_fence and current_fence"),
        IdempotencyKey,
    ),
    responses(
        (status = 200, description = "deleted (or absent: deleted false)", body = KvDeleted),
        BadRequest, CompareFailed, WriteFailures,
    )
)]
async fn delete_kv(
    State(st): St,
    Key(key): Key,
    RawQuery(q): RawQuery,
    Idempotency(idem): Idempotency,
) -> ApiResult<Json<KvDeleted>> {
    let p = params(q, &["if_revision", "fence"])?;
    let if_revision = u64_param(&p, "if_revision")?;
    let command = fenced(&p, KvCmd::Delete { key, if_revision })?;
    match crate::service::propose(&st.cluster, command, idem).await? {
        KvResult::Delete { revision, deleted } => Ok(Json(KvDeleted { revision, deleted })),
        other => Err(other.into()),
    }
}

pub(crate) async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::too_large(format!("value is over the {limit}-byte limit")).with("limit", limit)
    })
}

/// Read a key: raw bytes with header X-Revision
#[utoipa::path(
    get,
    path = "/v1/kv/{key}",
    params(KeyParam, ReadConsistency),
    responses(
        (status = 200, description = "the value", content_type = "application/octet-stream", body = Vec<u8>, headers(("X-Revision" = u64, description = "the key's revision"), ("X-Expires-In-Ms" = u64, description = "time left until the key expires, when it was written with ttl_ms"))),
        BadRequest, NotFound, Unsettled,
    )
)]
async fn get_kv(State(st): St, Key(key): Key, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state();
    let now = state.meta.now_ms;
    let found = state.get(&key)?.map(|e| {
        let expires_in_ms = e.expires_at_ms.map(|at| remaining_ms(at, now));
        (e.value, e.revision, expires_in_ms)
    });
    drop(state);
    let Some((value, revision, expires_in_ms)) = found else {
        return Err(ApiError::not_found(format!("no key {key:?}")));
    };
    let mut resp = value.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("x-revision", HeaderValue::from(revision));
    if let Some(ms) = expires_in_ms {
        h.insert("x-expires-in-ms", HeaderValue::from(ms));
    }
    Ok(resp)
}

const LIST_LIMIT_DEFAULT: usize = 100;
const LIST_LIMIT_MAX: usize = 1000;

/// List keys by prefix, in key order
#[utoipa::path(
    get,
    path = "/v1/kv",
    params(
        ("prefix" = Option<String>, Query, description = "at most 512 bytes"),
        ListLimit,
        ("after" = Option<String>, Query, description = "start after this key (the previous page's next)"),
        ReadConsistency,
    ),
    responses((status = 200, description = "a page of keys; value is base64", body = KvList), BadRequest, Unsettled)
)]
async fn list_kv(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<KvList>> {
    let (prefix, after, limit) = name_page(&st, q).await?;
    let st_lock = st.cluster.state();
    let (items, more) = st_lock.list(&prefix, after.as_deref(), limit)?;
    let revision = st_lock.meta.revision;
    drop(st_lock);
    let b64 = base64::engine::general_purpose::STANDARD;
    let next = next_name(&items, more);
    let items = items
        .into_iter()
        .map(|(key, e)| KvItem {
            key,
            value: b64.encode(&e.value),
            revision: e.revision,
        })
        .collect();
    Ok(Json(KvList {
        items,
        next,
        revision,
    }))
}

/// Cluster status as this node sees it
#[utoipa::path(
    get,
    path = "/v1/cluster",
    description = "Raft facts, every member with its liveness and metadata from this node's gossip view, and the autopilot.",
    responses((status = 200, description = "status", body = ClusterStatus))
)]
async fn cluster_status(State(st): St) -> Json<ClusterStatus> {
    let c = &st.cluster;
    let inflight = c.config().api.max_inflight_requests - st.inflight.available_permits();
    Json(c.status(inflight as u64))
}

/// This node's figures of the last 15 minutes, one sample every 5 s (the admin UI's charts)
#[utoipa::path(
    get,
    path = "/v1/node/samples",
    description = "Kept in memory by each node: requests/s (all, and split into reads, writes and the rest), p99 latency, Raft entries applied/s, Raft log fsync latency (mean and longest), WebSocket connections, requests in flight, resident memory.",
    responses((status = 200, description = "the samples, oldest first", body = crate::samples::NodeSamples))
)]
async fn node_samples(State(st): St) -> Json<crate::samples::NodeSamples> {
    Json(crate::samples::NodeSamples {
        node_id: st.cluster.id,
        interval_ms: crate::samples::SAMPLE_INTERVAL.as_millis() as u64,
        samples: st.metrics.samples.list(),
    })
}

/// 200 while the process serves
#[utoipa::path(
    get,
    path = "/health",
    responses((status = 200, description = "ok", body = Status))
)]
async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Ready means able to serve a linearizable request now (see `Cluster::check_ready`).
#[utoipa::path(
    get,
    path = "/ready",
    summary = "200 when the node can serve a linearizable request now",
    description = "It knows a leader and reaches it, the leader confirms its leadership with a quorum (a ReadIndex round), and the node has applied up to that index; else 503 with the reason. Answers within about one second.",
    responses(
        (status = 200, description = "ready", body = Status),
        (status = 503, description = "unavailable: no leader, not ready or overloaded; nothing was applied (Retry-After)", body = ErrorBody),
    )
)]
async fn ready(State(st): St) -> Result<Json<Status>, ApiError> {
    match st.cluster.check_ready().await {
        Ok(()) => Ok(Json(Status {
            status: "ready".into(),
        })),
        Err(transport::ServiceError::Unavailable(why)) => {
            Err(ApiError::unavailable(format!("not ready: {why}")))
        }
        Err(e) => Err(ApiError::unavailable(format!("not ready: {e}"))),
    }
}

/// Prometheus text format
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "metrics", content_type = "text/plain", body = String))
)]
async fn metrics(State(st): St) -> Response {
    let body = st.metrics.render(&st.cluster);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// stackd.js: dependency-free browser client
#[utoipa::path(
    get,
    path = "/v1/client.js",
    description = "Stackd.Client: subscribe, publish, watch; reconnects with backoff to the next node of its list and resumes by offset and revision.",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String))
)]
async fn client_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/stackd.js"),
    )
        .into_response()
}

/// Demo page: a live counter of channel demo, updated in every open window
#[utoipa::path(
    get,
    path = "/demo/",
    responses((status = 200, description = "HTML", content_type = "text/html", body = String))
)]
async fn demo_page() -> Response {
    const PAGE: &str = include_str!("assets/demo.html");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                browser::demo_page_policy(PAGE),
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// This document
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    responses((status = 200, description = "OpenAPI 3.1", body = Object))
)]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: usize, each: usize) -> Body {
        let chunks = (0..parts).map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![i as u8; each])));
        Body::from_stream(futures::stream::iter(chunks.collect::<Vec<_>>()))
    }

    #[test]
    fn unknown_query_parameters_are_named_with_what_the_request_takes() {
        let err = |raw: &str, allowed: &[&str]| {
            params(Some(raw.to_string()), allowed).unwrap_err().message
        };
        assert_eq!(
            err("ttl_ms=1", &["consistency"]),
            "unknown query parameter \"ttl_ms\" (allowed: consistency)"
        );
        assert_eq!(
            err("ttl_ms=1", &[]),
            "unknown query parameter \"ttl_ms\" (this request takes none)"
        );
        assert_eq!(err("a=1&a=2", &["a"]), "query parameter \"a\" given twice");
        let ok = params(Some("a=1&b=x%20y".to_string()), &["a", "b"]).unwrap();
        assert_eq!(ok["b"], "x y");
    }

    #[test]
    fn control_characters_are_found_as_char_is_control_finds_them() {
        // Every character of the first three planes' boundaries and ranges around the
        // control ones, alone and between others.
        let chars = (0u32..0x800)
            .chain(0xfff0..0x10010)
            .chain(0x10fff0..0x110000)
            .filter_map(char::from_u32);
        for c in chars {
            for s in [
                c.to_string(),
                format!("a{c}"),
                format!("{c}é"),
                format!("{c}\u{a0}"),
            ] {
                let expected = s.chars().any(char::is_control);
                assert_eq!(has_control(&s), expected, "{s:?}");
            }
        }
        assert!(validate_name("key", "user:1/é").is_ok());
        assert!(validate_name("key", "a\u{9f}b").is_err());
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole_and_one_over_it_is_drained() {
        let whole = read_within(chunked(3, 10), 30).await.unwrap().unwrap();
        assert_eq!(whole.len(), 30);
        assert_eq!(&whole[..], &[[0u8; 10], [1; 10], [2; 10]].concat()[..]);
        assert_eq!(
            read_within(chunked(1, 30), 30)
                .await
                .unwrap()
                .unwrap()
                .len(),
            30
        );
        assert!(read_within(chunked(4, 10), 30).await.unwrap().is_none());
        // Over the discard bound the reading stops: the stream is not read to its end.
        let endless = futures::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1 << 20]))
        });
        assert!(read_within(Body::from_stream(endless), 30)
            .await
            .unwrap()
            .is_none());
    }
}
