//! The gateway: every node can proxy HTTP/1.1 and WebSocket upgrades to the healthy
//! instances of registered services, by the routes of `/v1/routes` (`gateway.addr`).
//!
//! # Layout
//! - this file: the listener, the route table (rebuilt whenever the registry's revision
//!   changes, so a route or an instance change applies on every node as soon as it has
//!   applied the entry) and the proxying of one request;
//! - [`balance`]: what this node knows of each instance (requests in flight, peak-EWMA
//!   latency, failures, ejection) and each strategy's choice.
//!
//! # One request
//! The route is the one whose host matches (a route with a host wins over one without) and
//! whose path prefix is the longest. Its instances are those passing and not draining, less
//! those ejected by outlier detection (all of them when every one is ejected: a guess beats a
//! certain 503). The request body is read whole, up to the route's `max_body_bytes` (413
//! past it) and within `api.body_read_timeout_ms` (408 after), so an idempotent request
//! (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) whose connection fails can be sent to another
//! instance, up to `retries` times. The response
//! streams back. `X-Forwarded-For`, `-Proto`, `-Host` and `X-Request-Id` (kept when the
//! client sent one) are set; hop-by-hop headers are not passed on.

pub mod balance;
mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use raft::state::{HashOn, Route};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use balance::{Picker, Upstream};

use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Requests proxied at once on one node; further ones get 503.
pub const MAX_INFLIGHT: usize = 10_000;

thread_local! {
    /// This thread's request ids: a random 64-bit prefix and a count.
    static REQUEST_IDS: std::cell::Cell<(u64, u64)> = std::cell::Cell::new((rand::random(), 0));
}

/// A new request id: 32 hex digits, unique across the gateway's threads and nodes (a random
/// prefix per thread, then a count), without a random draw per request.
fn request_id() -> HeaderValue {
    let (prefix, n) = REQUEST_IDS.get();
    REQUEST_IDS.set((prefix, n.wrapping_add(1)));
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&prefix.to_be_bytes());
    id[8..].copy_from_slice(&n.to_be_bytes());
    let mut hex = [0u8; 32];
    hex::encode_to_slice(id, &mut hex).expect("32 digits for 16 bytes");
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}

/// The `class` label of `stackd_gateway_requests_total`, by status class (1xx to 5xx).
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `kind` label of `stackd_gateway_errors_total`.
const ERROR_KINDS: [&str; 4] = ["connect", "request", "timeout", "5xx"];

/// The metric series of one instance under one route, looked up once per table build rather
/// than by label on every request.
struct Series {
    /// Requests answered, by status class (1xx to 5xx).
    classes: [prometheus::IntCounter; 5],
    latency: prometheus::Histogram,
    connect: prometheus::IntCounter,
    request: prometheus::IntCounter,
    timeout: prometheus::IntCounter,
    server_error: prometheus::IntCounter,
}

impl Series {
    /// Removes every series of `instance` under `route` (those [`Series::new`] makes, and the
    /// counts of requests not proxied, under instance `none`).
    fn remove(m: &Metrics, route: &str, instance: &str) {
        for class in CLASSES {
            let _ = m
                .gateway_requests
                .remove_label_values(&[route, instance, class]);
        }
        let _ = m.gateway_latency.remove_label_values(&[route, instance]);
        for kind in ERROR_KINDS {
            let _ = m
                .gateway_errors
                .remove_label_values(&[route, instance, kind]);
        }
    }

    fn new(m: &Metrics, route: &str, instance: &str) -> Series {
        let class = |c: &str| m.gateway_requests.with_label_values(&[route, instance, c]);
        let [connect, request, timeout, server_error] =
            ERROR_KINDS.map(|k| m.gateway_errors.with_label_values(&[route, instance, k]));
        Series {
            classes: CLASSES.map(class),
            latency: m.gateway_latency.with_label_values(&[route, instance]),
            connect,
            request,
            timeout,
            server_error,
        }
    }
}

/// A route as the gateway serves it.
struct Compiled {
    name: String,
    route: Route,
    /// The instances that take requests (passing, not draining).
    upstreams: Vec<Arc<Upstream>>,
    /// The metric series of each of `upstreams`, in the same order.
    series: Vec<Series>,
    picker: Picker,
}

#[derive(Default)]
struct Table {
    revision: u64,
    /// Host routes first, then by longest prefix.
    routes: Vec<Compiled>,
}

/// The gateway of one node.
pub struct Gateway {
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    table: RwLock<Arc<Table>>,
    /// Each instance's figures, kept across table rebuilds (by `service/id` and authority).
    upstreams: std::sync::Mutex<HashMap<(String, String), Arc<Upstream>>>,
    /// The (route, instance) pairs whose metric series exist, so the series of a route or an
    /// instance that is gone are removed rather than kept for the life of the process.
    series_made: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    inflight: Arc<tokio::sync::Semaphore>,
    /// WebSocket tunnels: tracked with the node's requests, ended at shutdown.
    tunnels: tokio_util::task::TaskTracker,
    stop: CancellationToken,
}

impl Gateway {
    pub fn new(
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        tunnels: tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> Arc<Gateway> {
        let gw = Arc::new(Gateway {
            cluster,
            metrics,
            tunnels,
            stop,
            table: RwLock::new(Arc::new(Table::default())),
            upstreams: Default::default(),
            series_made: Default::default(),
            inflight: Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT)),
        });
        gw.rebuild();
        gw
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds the route table from this node's state.
    fn rebuild(&self) {
        let state = self.cluster.state();
        let revision = state.registry_revision();
        let mut known = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let mut used: HashMap<(String, String), Arc<Upstream>> = HashMap::new();
        // The (route, instance) pairs whose metric series stay: while the route exists and the
        // instance is registered (a critical instance keeps its counts), and the route's
        // requests not proxied (instance `none`).
        let mut keep: std::collections::HashSet<(String, String)> = Default::default();
        let mut routes: Vec<Compiled> = state
            .routes()
            .iter()
            .map(|(name, route)| {
                keep.insert((name.clone(), "none".to_string()));
                let upstreams: Vec<Arc<Upstream>> = state
                    .service_instances(&route.service)
                    .into_iter()
                    .filter_map(|i| {
                        let key = format!("{}/{}", i.spec.service, i.spec.id);
                        keep.insert((name.clone(), key.clone()));
                        i.routable().then_some((i, key))
                    })
                    .map(|(i, key)| {
                        let id = (key.clone(), authority(&i.spec.address, i.spec.port));
                        let u = known
                            .get(&id)
                            .filter(|u| u.weight == i.spec.weight)
                            .cloned()
                            .unwrap_or_else(|| {
                                Arc::new(Upstream::new(key, id.1.clone(), i.spec.weight))
                            });
                        used.insert(id, u.clone());
                        u
                    })
                    .collect();
                let series = upstreams
                    .iter()
                    .map(|u| Series::new(&self.metrics, name, &u.key))
                    .collect();
                Compiled {
                    name: name.clone(),
                    route: route.clone(),
                    upstreams,
                    series,
                    picker: Picker::default(),
                }
            })
            .collect();
        drop(state);
        self.drop_stale_series(&known, &keep, &routes);
        *known = used;
        drop(known);
        routes.sort_by(|a, b| {
            (b.route.host.is_some(), b.route.path_prefix.len())
                .cmp(&(a.route.host.is_some(), a.route.path_prefix.len()))
                .then_with(|| a.name.cmp(&b.name))
        });
        *self.table.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Table { revision, routes });
    }

    /// Removes the metric series of instances and routes that are gone (all but `keep`),
    /// and records those `routes` made.
    fn drop_stale_series(
        &self,
        known: &HashMap<(String, String), Arc<Upstream>>,
        keep: &std::collections::HashSet<(String, String)>,
        routes: &[Compiled],
    ) {
        let instances: std::collections::HashSet<&str> =
            keep.iter().map(|(_, i)| i.as_str()).collect();
        for key in known.keys() {
            if !instances.contains(key.0.as_str()) {
                let _ = self
                    .metrics
                    .gateway_ejections
                    .remove_label_values(&[&key.0]);
            }
        }
        let mut made = self.series_made.lock().unwrap_or_else(|p| p.into_inner());
        made.retain(|(route, instance)| {
            let kept = keep.contains(&(route.clone(), instance.clone()));
            if !kept {
                Series::remove(&self.metrics, route, instance);
            }
            kept
        });
        made.extend(
            routes
                .iter()
                .flat_map(|r| r.upstreams.iter().map(|u| (r.name.clone(), u.key.clone())))
                .chain(routes.iter().map(|r| (r.name.clone(), "none".to_string()))),
        );
    }

    /// Rebuilds the table whenever the registry's revision changes, until `stop`. It waits on
    /// the registry's own watch: a wait on the state would wake it for every applied batch.
    async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut registry = self.cluster.replica().registry_changes();
        loop {
            let revision = *registry.borrow_and_update();
            if revision != self.table().revision {
                self.rebuild();
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = registry.changed() => if r.is_err() {
                    return;
                },
            }
        }
    }
}

/// Binds `addr` once per gateway thread (`threads`, 0 = one per core); the future serves the
/// gateway until `stop`, with the API's connection bounds (`timeouts`: a client's request head
/// and a blocked write). Each thread accepts on its own socket ([`crate::threads`]) and keeps
/// its own connections to the instances: a proxied request never changes threads. WebSocket
/// tunnels run on `tunnels` and end at `stop` too.
pub async fn bind(
    addr: SocketAddr,
    threads: usize,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    timeouts: crate::http_server::Timeouts,
    tunnels: tokio_util::task::TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send)> {
    let threads = match threads {
        0 => crate::threads::cores(),
        n => n,
    };
    let gw = Gateway::new(cluster, metrics.clone(), tunnels, stop.clone());
    let serve = {
        let (gw, stop) = (gw.clone(), stop.clone());
        move |listener: tokio::net::TcpListener| {
            let (gw, metrics, stop) = (gw.clone(), metrics.clone(), stop.clone());
            async move {
                // Small answers go out at once rather than waiting for an ACK (Nagle).
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let service = move |peer: SocketAddr| {
                    let gw = gw.clone();
                    // Made once per connection: each of its requests forwards the same address.
                    let client_ip = HeaderValue::try_from(peer.ip().to_string())
                        .expect("an IP address is a valid header value");
                    hyper::service::service_fn(move |req| proxy(gw.clone(), client_ip.clone(), req))
                };
                crate::http_server::serve_with(listener, service, timeouts, metrics, stop).await;
                pool::close().await;
            }
        }
    };
    let (bound, threads_ended) =
        crate::threads::serve_on_threads("gateway", addr, threads, serve).await?;
    info!(addr = %bound, threads, "gateway listening");
    let serve = async move {
        // Each thread ends on `stop`, once the requests under way are answered.
        tokio::join!(threads_ended, gw.follow(stop.clone()));
    };
    Ok((bound, serve))
}

/// `host:port` of an instance (an IPv6 address in brackets).
fn authority(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn error(status: StatusCode, code: crate::error::ErrorCode, message: String) -> Response {
    let mut r = ApiError::new(code, message).into_response();
    *r.status_mut() = status;
    r
}

// Named once rather than parsed from a string on every request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that belong to one connection and are not passed on (RFC 9110, 7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, and those the `Connection` header names. One pass over
/// the message's few names finds them, rather than a lookup for each name that could be one.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let connection = headers.get_all(header::CONNECTION);
    let named_by_connection = |name: &HeaderName| {
        connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
    };
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k) || named_by_connection(k))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The request's host, lowercased (copied only when it is not already), without port.
fn host_of<B>(req: &Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn class(status: StatusCode) -> &'static str {
    CLASSES[class_index(status)]
}

fn class_index(status: StatusCode) -> usize {
    (status.as_u16() / 100).clamp(1, 5) as usize - 1
}

/// Answers one request of a gateway connection from `client_ip`.
async fn proxy(
    gw: Arc<Gateway>,
    client_ip: HeaderValue,
    req: Request<Incoming>,
) -> Result<Response, std::convert::Infallible> {
    Ok(answer(&gw, &client_ip, req).await)
}

async fn answer(gw: &Gateway, client_ip: &HeaderValue, req: Request<Incoming>) -> Response {
    let Ok(_permit) = gw.inflight.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::error::ErrorCode::Unavailable,
            "the gateway has too many requests in flight".into(),
        );
    };
    let table = gw.table();
    let host = host_of(&req);
    let path = req.uri().path();
    let Some(r) = table.routes.iter().find(|r| {
        r.route
            .host
            .as_deref()
            .is_none_or(|h| Some(h) == host.as_deref())
            && path.starts_with(&r.route.path_prefix)
    }) else {
        return error(
            StatusCode::NOT_FOUND,
            crate::error::ErrorCode::NotFound,
            format!("no route for {}{path}", host.unwrap_or_default()),
        );
    };
    let started = Instant::now();
    match forward(gw, r, client_ip, req).await {
        Ok((resp, i)) => {
            r.series[i].classes[class_index(resp.status())].inc();
            resp
        }
        Err(resp) => {
            gw.metrics
                .gateway_requests
                .with_label_values(&[&r.name, "none", class(resp.status())])
                .inc();
            debug!(route = %r.name, status = %resp.status(), elapsed_ms = started.elapsed().as_millis() as u64, "not proxied");
            resp
        }
    }
}

/// Sends `req` by route `r`: the instance's response and its index in the route, or the
/// gateway's own error. An idempotent request that could not reach an instance is tried on
/// another, up to the route's `retries`.
async fn forward(
    gw: &Gateway,
    r: &Compiled,
    client_ip: &HeaderValue,
    req: Request<Incoming>,
) -> Result<(Response, usize), Response> {
    let route = &r.route;
    let (mut parts, body) = req.into_parts();
    let upgrade = is_upgrade(&parts.headers);
    let mut on_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let body = read_body(gw, route, body).await?;
    let hash_key = hash_key(route, &parts.headers);
    let headers = headers_sent_on(std::mem::take(&mut parts.headers), upgrade, client_ip);
    let cannot_send = |e: axum::http::Error| {
        error(
            StatusCode::BAD_REQUEST,
            crate::error::ErrorCode::BadRequest,
            format!("the request cannot be sent on: {e}"),
        )
    };
    let uri = upstream_uri(route, &parts.uri).map_err(|e| cannot_send(e.into()))?;
    let attempts = 1 + if is_idempotent(&parts.method) && !upgrade {
        route.retries
    } else {
        0
    };
    // `Host` is the client's, or, when it sent none, that of the instance it goes to.
    let host_added = !headers.contains_key(header::HOST);
    let mut out = Some(outgoing(&parts.method, uri, headers, &body).map_err(cannot_send)?);
    let mut tried: Vec<&Arc<Upstream>> = Vec::new();
    let mut last_error = None;
    for _ in 0..attempts {
        // Only a request that never reached an instance comes back to be sent again.
        let Some(mut req) = out.take() else { break };
        let now = Instant::now();
        let Some((u, index)) = pick(r, &tried, hash_key.as_deref(), now) else {
            break;
        };
        tried.push(u);
        if host_added {
            if let Ok(v) = HeaderValue::try_from(u.authority.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        match exchange(gw, r, index, req, now).await {
            Exchange::Answered(resp) => return Ok((sent_back(gw, resp, on_upgrade.take()), index)),
            Exchange::Failed { message, unsent } => {
                last_error = Some(message);
                out = unsent;
            }
            Exchange::TimedOut(resp) => return Err(resp),
        }
    }
    let status = if tried.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    };
    let message =
        last_error.unwrap_or_else(|| format!("service {} has no healthy instance", route.service));
    Err(error(status, crate::error::ErrorCode::Unavailable, message))
}

/// The request's body, read whole (for retries). A body over the route's limit is read and
/// dropped (up to 16 MiB past it) before the 413, so a client still sending reads the answer
/// instead of a reset connection; it must arrive within `api.body_read_timeout_ms`, as on the
/// API.
async fn read_body(
    gw: &Gateway,
    route: &Route,
    body: Incoming,
) -> Result<axum::body::Bytes, Response> {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return Ok(axum::body::Bytes::new());
    }
    let too_large = || {
        ApiError::too_large(format!(
            "the request body is over this route's {}-byte limit",
            route.max_body_bytes
        ))
    };
    let limit = route.max_body_bytes as usize;
    crate::api::read_request_body(gw.cluster.config(), Body::new(body), limit, too_large)
        .await
        .map_err(IntoResponse::into_response)
}

/// What the route's `hash_on` picks an instance by, if the request has it.
fn hash_key(route: &Route, headers: &HeaderMap) -> Option<String> {
    match &route.hash_on {
        Some(HashOn::Header(h)) => headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        Some(HashOn::Cookie(c)) => cookie(headers, c),
        None => None,
    }
}

/// The client's headers as they are sent on: without hop-by-hop ones (but an upgrade's),
/// with `X-Forwarded-For`/`-Proto`/`-Host` and an `X-Request-Id` if the client sent none.
fn headers_sent_on(mut headers: HeaderMap, upgrade: bool, client_ip: &HeaderValue) -> HeaderMap {
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    let host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut headers);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = upgrade_to {
            headers.insert(header::UPGRADE, u);
        }
    }
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            let ip = client_ip.to_str().unwrap_or_default();
            HeaderValue::try_from(format!("{prev}, {ip}")).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, request_id());
    }
    headers
}

/// The path and query the instance is asked for: the request's, less the route's prefix
/// when the route strips it.
fn upstream_uri(
    route: &Route,
    uri: &axum::http::Uri,
) -> Result<axum::http::Uri, axum::http::uri::InvalidUri> {
    let strip = route.strip_prefix && route.path_prefix != "/";
    if !strip && uri.scheme().is_none() && uri.authority().is_none() {
        // Already a path and query alone: sent on as it came (its bytes are shared).
        return Ok(uri.clone());
    }
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let path = if strip {
        let rest = &pq[route.path_prefix.len().min(pq.len())..];
        if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        }
    } else {
        pq.to_string()
    };
    axum::http::Uri::try_from(path)
}

/// The route's next instance, by its strategy, among those not `tried` yet (those not ejected
/// first), with its index in the route.
fn pick<'a>(
    r: &'a Compiled,
    tried: &[&Arc<Upstream>],
    hash_key: Option<&str>,
    now: Instant,
) -> Option<(&'a Arc<Upstream>, usize)> {
    let fresh: Vec<&Arc<Upstream>> = r
        .upstreams
        .iter()
        .filter(|u| !tried.iter().any(|t| Arc::ptr_eq(t, u)))
        .collect();
    let mut candidates: Vec<&Arc<Upstream>> =
        fresh.iter().copied().filter(|u| !u.ejected(now)).collect();
    if candidates.is_empty() {
        candidates = fresh;
    }
    if candidates.is_empty() {
        return None;
    }
    let u = r.picker.pick(r.route.strategy, &candidates, hash_key, now);
    let index = r
        .upstreams
        .iter()
        .position(|x| Arc::ptr_eq(x, u))
        .expect("picked among the route's instances");
    Some((u, index))
}

/// The request to send on (an error when the path or a header cannot be sent); its `Host`
/// is the client's, if it sent one.
fn outgoing(
    method: &Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: &axum::body::Bytes,
) -> Result<hyper::Request<pool::OutBody>, axum::http::Error> {
    let mut out = hyper::Request::builder()
        .method(method.clone())
        .uri(uri)
        .version(hyper::Version::HTTP_11);
    if let Some(h) = out.headers_mut() {
        *h = headers;
    }
    out.body(pool::OutBody::new(body.clone()))
}

/// How one exchange with an instance ended.
enum Exchange {
    /// The instance answered (any status).
    Answered(hyper::Response<Incoming>),
    /// It could not be reached (the request comes back `unsent`, to be sent to another), or
    /// failed mid-exchange (`unsent` is `None`: the request may have reached it).
    Failed {
        message: String,
        unsent: Option<hyper::Request<pool::OutBody>>,
    },
    /// It did not answer within the route's `request_timeout_ms`: the gateway's 504.
    TimedOut(Response),
}

/// Sends `out` to the route's instance `index` and records the outcome: its latency and
/// failures (which may eject it) and the metric series.
async fn exchange(
    gw: &Gateway,
    r: &Compiled,
    index: usize,
    out: hyper::Request<pool::OutBody>,
    sent_at: Instant,
) -> Exchange {
    use std::sync::atomic::Ordering::Relaxed;
    let (u, series, route) = (&r.upstreams[index], &r.series[index], &r.route);
    let connect_timeout = Duration::from_millis(route.connect_timeout_ms);
    u.outstanding.fetch_add(1, Relaxed);
    let sent = tokio::time::timeout(
        Duration::from_millis(route.request_timeout_ms),
        pool::send(&u.authority, connect_timeout, out),
    )
    .await;
    u.outstanding.fetch_sub(1, Relaxed);
    let done = Instant::now();
    let ejected = |now_ejected: bool| {
        if now_ejected {
            gw.metrics
                .gateway_ejections
                .with_label_values(&[&u.key])
                .inc();
        }
    };
    match sent {
        Ok(Ok(resp)) => {
            let rtt = done - sent_at;
            let failed = resp.status().is_server_error();
            ejected(u.observe(rtt, failed, done));
            if failed {
                series.server_error.inc();
            }
            series.latency.observe(rtt.as_secs_f64());
            Exchange::Answered(resp)
        }
        Ok(Err(e)) => {
            ejected(u.fail(done));
            let message = format!("instance {}: {}", u.key, crate::error::root_cause(&e));
            let unsent = match e {
                pool::SendError::Connect { unsent, .. } => {
                    series.connect.inc();
                    Some(*unsent)
                }
                pool::SendError::Request(_) => {
                    series.request.inc();
                    None
                }
            };
            Exchange::Failed { message, unsent }
        }
        Err(_) => {
            ejected(u.fail(done));
            series.timeout.inc();
            Exchange::TimedOut(error(
                StatusCode::GATEWAY_TIMEOUT,
                crate::error::ErrorCode::Timeout,
                format!(
                    "instance {} did not answer within {} ms",
                    u.key, route.request_timeout_ms
                ),
            ))
        }
    }
}

/// The instance's answer as sent to the client: without hop-by-hop headers, or, for a
/// `101 Switching Protocols`, the head alone while a tunnel joins the two upgraded
/// connections.
fn sent_back(
    gw: &Gateway,
    mut resp: hyper::Response<Incoming>,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = on_upgrade {
            let server_side = hyper::upgrade::on(&mut resp);
            let stop = gw.stop.clone();
            gw.tunnels.spawn(async move {
                tokio::select! {
                    () = tunnel(client_side, server_side) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        let (p, _) = resp.into_parts();
        return Response::from_parts(p, Body::empty());
    }
    let (mut p, b) = resp.into_parts();
    strip_hop_by_hop(&mut p.headers);
    Response::from_parts(p, Body::new(b))
}

/// Copies bytes both ways between an upgraded client connection and an instance's.
async fn tunnel(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    let (client, server) = match tokio::try_join!(client, server) {
        Ok(both) => both,
        Err(e) => return debug!(error = %e, "upgrade not completed"),
    };
    let mut client = TokioIo::new(client);
    let mut server = TokioIo::new(server);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        debug!(error = %e, "upgraded connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::try_from(*k).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_not_sent_on() {
        let mut h = headers(&[
            ("host", "app.test"),
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-end-to-end", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-end-to-end"]);
        // With none of them, every header stays.
        let mut plain = headers(&[("host", "app.test"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn forwarding_headers_are_added_and_a_client_request_id_kept() {
        let ip = HeaderValue::from_static("127.0.0.9");
        let h = headers_sent_on(headers(&[("host", "app.test")]), false, &ip);
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.test");
        assert_eq!(h["x-request-id"].len(), 32);
        let h = headers_sent_on(
            headers(&[("x-forwarded-for", "10.0.0.1"), ("x-request-id", "req-7")]),
            false,
            &ip,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-request-id"], "req-7");
    }
}
