//! `/v1/services` (the service registry) and `/v1/routes` (the gateway's routes).
//!
//! Instances are registered here, through the CLI or from the config file; HTTP and TCP checks
//! are run by the cluster (`crate::checks`), TTL checks are fed by heartbeats. Routes tell the
//! gateway of every node (`crate::gateway`) where requests go.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::Json;
use raft::command::{ServiceCmd, ServiceResult};
use raft::state::{Check, Damping, HashOn, Instance, InstanceSpec, Route, Strategy};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    params, read_barrier_unless_stale, u64_param, Idempotency, IdempotencyKey, JsonBody, Name,
    NamedWrite, PathParams, St,
};
use crate::error::{ApiError, ApiResult, BadRequest, ErrorBody, NotFound, WriteFailures};

/// Check interval when not given: 10 s (100 ms to 1 h).
pub const CHECK_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Check timeout when not given: 2 s, or the interval if shorter (at most 60 s).
pub const CHECK_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Failures in a row that turn a passing instance critical, when not given.
pub const FAILURES_BEFORE_CRITICAL_DEFAULT: u32 = 1;
/// Successes in a row that turn a critical instance passing, when not given: flap damping.
pub const SUCCESSES_BEFORE_PASSING_DEFAULT: u32 = 2;
/// How long an instance may stay critical before it is removed, when not given: 1 hour.
pub const DEREGISTER_CRITICAL_AFTER_MS_DEFAULT: u64 = 3_600_000;
/// Longest drain of a deregistered instance: 1 hour.
pub const DRAIN_MS_MAX: u64 = 3_600_000;
/// Most tags and metadata entries of an instance.
pub const MAX_TAGS: usize = 32;
/// Route defaults: connect timeout 1 s, request timeout 30 s, 1 retry, 10 MiB bodies.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1_000;
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
pub const RETRIES_DEFAULT: u32 = 1;
pub const MAX_BODY_BYTES_DEFAULT: u64 = 10 << 20;
/// Largest body a route may allow: 1 GiB.
pub const MAX_BODY_BYTES_MAX: u64 = 1 << 30;

/// A health check as the API reads and shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// `http` (GET the path), `tcp` (connect) or `ttl` (the instance heartbeats).
    #[serde(rename = "type")]
    pub kind: String,
    /// `http`: the path to GET (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http`: the status that passes (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// `http`, `tcp`: 100..=3,600,000 ms (default 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// `http`, `tcp`: 1..=60,000 ms and at most the interval (default 2,000 or the interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `ttl`: 1,000..=86,400,000 ms without a heartbeat before the instance turns critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// `http`, `tcp`: 1..=10 failures in a row turn it critical (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_before_critical: Option<u32>,
    /// `http`, `tcp`: 1..=10 successes in a row turn it passing again (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successes_before_passing: Option<u32>,
}

/// `PUT /v1/services/{name}/instances/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Host name or IP address the gateway and checks connect to.
    pub address: String,
    pub port: u16,
    /// At most 32, each 1..=256 bytes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// At most 32 entries; keys 1..=128 bytes, values at most 512.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// 1..=1,000 (default 1): relative share under the weighted strategy.
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub check: Option<CheckBody>,
    /// 0 (never) or 1..=604,800,000 ms (default 3,600,000).
    #[serde(default)]
    pub deregister_critical_after_ms: Option<u64>,
}

/// A registered instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct InstanceView {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub weight: u32,
    pub check: Option<CheckBody>,
    /// `passing` or `critical`.
    pub status: String,
    /// The check's last output (why the status is what it is).
    pub output: String,
    /// When the status last changed (ms since the Unix epoch, replicated clock).
    pub status_since_ms: u64,
    /// Deregistered with a drain: it gets no new requests and goes away at `draining_until_ms`.
    pub draining_until_ms: Option<u64>,
    pub deregister_critical_after_ms: u64,
    pub registered_at_ms: u64,
    /// The registry revision of the instance's last change.
    pub revision: u64,
    /// The node that runs the instance's http or tcp check, as the answering node sees the
    /// alive members (null for ttl checks and instances without a check).
    pub checked_by: Option<u64>,
}

/// `GET /v1/services/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ServiceView {
    pub service: String,
    /// The service's revision: a watch from it misses nothing.
    pub revision: u64,
    pub instances: Vec<InstanceView>,
}

/// One service in `GET /v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub revision: u64,
    pub instances: usize,
    /// Instances that may take requests (passing, not draining).
    pub healthy: usize,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<ServiceSummary>,
    /// The registry's revision.
    pub revision: u64,
}

/// The registry's revision after a change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegistryRevision {
    pub revision: u64,
}

/// `hash_on` of a route: one of `header` or `cookie`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HashOnBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// `PUT /v1/routes/{name}`, and a route as shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    /// The service whose healthy instances serve the route.
    pub service: String,
    /// Matches the request's host (port ignored, case-insensitive); absent: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Matches paths that start with it (default `/`); the longest matching prefix wins.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// `round_robin`, `weighted`, `least_request`, `peak_ewma` (default: power of two choices
    /// on peak-EWMA latency) or `hash` (sticky; needs `hash_on`).
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default)]
    pub hash_on: Option<HashOnBody>,
    /// 1..=60,000 ms (default 1,000).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Until the instance's response headers: 1..=3,600,000 ms (default 30,000).
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Other instances tried when connecting fails, idempotent methods only: 0..=5 (default 1).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Largest request body: 0..=1 GiB (default 10 MiB); more is 413.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Removes `path_prefix` from the path sent on (default false).
    #[serde(default)]
    pub strip_prefix: Option<bool>,
}

/// A route with its name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RouteView {
    pub name: String,
    #[serde(flatten)]
    pub route: RouteBody,
}

/// `GET /v1/routes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RouteList {
    pub routes: Vec<RouteView>,
}

/// Service names, instance ids and route names: 1..=128 of `A-Z a-z 0-9 . _ -`, so they fit
/// in host names, metric labels and paths as they are.
pub fn validate_ident(field: &str, value: &str) -> ApiResult<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{field} must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', got {value:?}"
        ))
        .with("field", field))
    }
}

fn bad(field: &str, message: String) -> ApiError {
    ApiError::bad_request(message).with("field", field)
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> ApiResult<T> {
    if value < min || value > max {
        return Err(bad(
            field,
            format!("{field} must be {min} to {max}, got {value}"),
        ));
    }
    Ok(value)
}

fn text(field: &str, value: &str, min: usize, max: usize) -> ApiResult<()> {
    if value.len() < min || value.len() > max || value.chars().any(char::is_control) {
        return Err(bad(
            field,
            format!("{field} must be {min} to {max} bytes without control characters"),
        ));
    }
    Ok(())
}

/// The check of a registration, validated, with its defaults.
pub fn check_from(body: &CheckBody) -> ApiResult<Check> {
    match body.kind.as_str() {
        "http" | "tcp" => probe_check_from(body),
        "ttl" => ttl_check_from(body),
        other => Err(bad(
            "check.type",
            format!("check.type must be http, tcp or ttl, got {other:?}"),
        )),
    }
}

/// The 400 of a check field `set` on a check of another kind than `kinds`.
fn only_for(field: &str, set: bool, kinds: &str) -> ApiResult<()> {
    if set {
        return Err(bad(
            field,
            format!("check.{field} applies to {kinds} checks only"),
        ));
    }
    Ok(())
}

/// An `http` or `tcp` check: the node probes the instance.
fn probe_check_from(body: &CheckBody) -> ApiResult<Check> {
    let interval_ms = in_range(
        "check.interval_ms",
        body.interval_ms.unwrap_or(CHECK_INTERVAL_MS_DEFAULT),
        100,
        3_600_000,
    )?;
    let timeout_ms = in_range(
        "check.timeout_ms",
        body.timeout_ms
            .unwrap_or(CHECK_TIMEOUT_MS_DEFAULT.min(interval_ms)),
        1,
        interval_ms.min(60_000),
    )?;
    let damping = Damping {
        failures_before_critical: in_range(
            "check.failures_before_critical",
            body.failures_before_critical
                .unwrap_or(FAILURES_BEFORE_CRITICAL_DEFAULT),
            1,
            10,
        )?,
        successes_before_passing: in_range(
            "check.successes_before_passing",
            body.successes_before_passing
                .unwrap_or(SUCCESSES_BEFORE_PASSING_DEFAULT),
            1,
            10,
        )?,
    };
    only_for("ttl_ms", body.ttl_ms.is_some(), "ttl")?;
    if body.kind == "tcp" {
        only_for("path", body.path.is_some(), "http")?;
        only_for("expect_status", body.expect_status.is_some(), "http")?;
        return Ok(Check::Tcp {
            interval_ms,
            timeout_ms,
            damping,
        });
    }
    let path = body.path.clone().unwrap_or_else(|| "/".into());
    text("check.path", &path, 1, 1024)?;
    if !path.starts_with('/') || path.contains(' ') {
        return Err(bad(
            "check.path",
            "check.path must start with '/' and hold no spaces".into(),
        ));
    }
    let expect_status = match body.expect_status {
        None => 0,
        Some(s) => in_range("check.expect_status", s, 100, 599)?,
    };
    Ok(Check::Http {
        path,
        expect_status,
        interval_ms,
        timeout_ms,
        damping,
    })
}

/// A `ttl` check: the instance reports, and is critical once `ttl_ms` passes without a report.
fn ttl_check_from(body: &CheckBody) -> ApiResult<Check> {
    for (field, set) in [
        ("path", body.path.is_some()),
        ("expect_status", body.expect_status.is_some()),
        ("interval_ms", body.interval_ms.is_some()),
        ("timeout_ms", body.timeout_ms.is_some()),
        (
            "failures_before_critical",
            body.failures_before_critical.is_some(),
        ),
        (
            "successes_before_passing",
            body.successes_before_passing.is_some(),
        ),
    ] {
        only_for(field, set, "http and tcp")?;
    }
    let Some(ttl_ms) = body.ttl_ms else {
        return Err(bad("check.ttl_ms", "a ttl check needs ttl_ms".into()));
    };
    Ok(Check::Ttl {
        ttl_ms: in_range("check.ttl_ms", ttl_ms, 1_000, 86_400_000)?,
    })
}

fn check_body(check: &Check) -> CheckBody {
    match check {
        Check::Http {
            path,
            expect_status,
            interval_ms,
            timeout_ms,
            damping,
        } => CheckBody {
            kind: "http".into(),
            path: Some(path.clone()),
            expect_status: (*expect_status != 0).then_some(*expect_status),
            interval_ms: Some(*interval_ms),
            timeout_ms: Some(*timeout_ms),
            failures_before_critical: Some(damping.failures_before_critical),
            successes_before_passing: Some(damping.successes_before_passing),
            ..CheckBody::default()
        },
        Check::Tcp {
            interval_ms,
            timeout_ms,
            damping,
        } => CheckBody {
            kind: "tcp".into(),
            interval_ms: Some(*interval_ms),
            timeout_ms: Some(*timeout_ms),
            failures_before_critical: Some(damping.failures_before_critical),
            successes_before_passing: Some(damping.successes_before_passing),
            ..CheckBody::default()
        },
        Check::Ttl { ttl_ms } => CheckBody {
            kind: "ttl".into(),
            ttl_ms: Some(*ttl_ms),
            ..CheckBody::default()
        },
    }
}

/// A registration, validated, with its defaults.
pub fn instance_spec(service: &str, id: &str, b: &RegisterRequest) -> ApiResult<InstanceSpec> {
    validate_ident("service", service)?;
    validate_ident("id", id)?;
    text("address", &b.address, 1, 253)?;
    if b.address
        .contains(|c: char| c.is_whitespace() || "/?#@".contains(c))
    {
        return Err(bad(
            "address",
            "address must be a host name or an IP address".into(),
        ));
    }
    if b.port == 0 {
        return Err(bad("port", "port must be 1 to 65535".into()));
    }
    if b.tags.len() > MAX_TAGS || b.meta.len() > MAX_TAGS {
        return Err(bad(
            "tags",
            format!("at most {MAX_TAGS} tags and {MAX_TAGS} meta entries"),
        ));
    }
    for t in &b.tags {
        text("tags", t, 1, 256)?;
    }
    for (k, v) in &b.meta {
        text("meta", k, 1, 128)?;
        text("meta", v, 0, 512)?;
    }
    Ok(InstanceSpec {
        service: service.to_string(),
        id: id.to_string(),
        address: b.address.clone(),
        port: b.port,
        tags: b.tags.clone(),
        meta: b.meta.clone(),
        weight: in_range("weight", b.weight.unwrap_or(1), 1, 1000)?,
        check: b.check.as_ref().map(check_from).transpose()?,
        deregister_critical_after_ms: match b
            .deregister_critical_after_ms
            .unwrap_or(DEREGISTER_CRITICAL_AFTER_MS_DEFAULT)
        {
            0 => 0,
            ms => in_range("deregister_critical_after_ms", ms, 1, 604_800_000)?,
        },
    })
}

pub fn instance_view(i: &Instance, checked_by: Option<u64>) -> InstanceView {
    let s = &i.spec;
    InstanceView {
        service: s.service.clone(),
        id: s.id.clone(),
        address: s.address.clone(),
        port: s.port,
        tags: s.tags.clone(),
        meta: s.meta.clone(),
        weight: s.weight,
        check: s.check.as_ref().map(check_body),
        status: i.status.as_str().into(),
        output: i.output.clone(),
        status_since_ms: i.status_since_ms,
        draining_until_ms: i.draining_until_ms,
        deregister_critical_after_ms: s.deregister_critical_after_ms,
        registered_at_ms: i.registered_at_ms,
        revision: i.revision,
        checked_by,
    }
}

/// A service's instances as `GET /v1/services/{name}` shows them, from one state read;
/// `alive` are the members that may run checks (see `crate::checks::owner`).
pub fn service_view(
    state: &raft::State,
    service: &str,
    healthy_only: bool,
    alive: &std::collections::BTreeSet<u64>,
) -> ServiceView {
    ServiceView {
        service: service.to_string(),
        revision: state.service_revision(service),
        instances: state
            .service_instances(service)
            .into_iter()
            .filter(|i| !healthy_only || i.routable())
            .map(|i| {
                let runs = i.spec.check.as_ref().is_some_and(|c| c.is_run_by_cluster());
                let key = (i.spec.service.clone(), i.spec.id.clone());
                instance_view(i, runs.then(|| crate::checks::owner(&key, alive)).flatten())
            })
            .collect(),
    }
}

const STRATEGIES: [(&str, Strategy); 5] = [
    ("round_robin", Strategy::RoundRobin),
    ("weighted", Strategy::Weighted),
    ("least_request", Strategy::LeastRequest),
    ("peak_ewma", Strategy::PeakEwma),
    ("hash", Strategy::Hash),
];

pub fn strategy_name(s: Strategy) -> &'static str {
    STRATEGIES
        .iter()
        .find(|(_, x)| *x == s)
        .map(|(n, _)| *n)
        .unwrap_or("peak_ewma")
}

/// A route's balancing strategy by name (peak EWMA when none is given).
fn strategy_from(name: Option<&str>) -> ApiResult<Strategy> {
    let Some(name) = name else {
        return Ok(Strategy::PeakEwma);
    };
    STRATEGIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            bad(
                "strategy",
                format!(
                    "strategy must be one of round_robin, weighted, least_request, \
                     peak_ewma, hash; got {name:?}"
                ),
            )
        })
}

/// What a `hash` route hashes on: one header or one cookie.
fn hash_on_from(body: Option<&HashOnBody>) -> ApiResult<Option<HashOn>> {
    match body {
        None => Ok(None),
        Some(HashOnBody {
            header: Some(h),
            cookie: None,
        }) => {
            text("hash_on.header", h, 1, 128)?;
            axum::http::HeaderName::try_from(h.as_str())
                .map_err(|_| bad("hash_on.header", format!("{h:?} is not a header name")))?;
            Ok(Some(HashOn::Header(h.to_ascii_lowercase())))
        }
        Some(HashOnBody {
            header: None,
            cookie: Some(c),
        }) => {
            text("hash_on.cookie", c, 1, 128)?;
            Ok(Some(HashOn::Cookie(c.clone())))
        }
        Some(_) => Err(bad(
            "hash_on",
            "hash_on names exactly one of header or cookie".into(),
        )),
    }
}

/// A route, validated, with its defaults.
pub fn route_from(b: &RouteBody) -> ApiResult<Route> {
    validate_ident("service", &b.service)?;
    let host = match &b.host {
        None => None,
        Some(h) => {
            text("host", h, 1, 253)?;
            if h.contains(|c: char| c.is_whitespace() || "/:?#@".contains(c)) {
                return Err(bad("host", "host must be a host name, without port".into()));
            }
            Some(h.to_ascii_lowercase())
        }
    };
    let path_prefix = b.path_prefix.clone().unwrap_or_else(|| "/".into());
    text("path_prefix", &path_prefix, 1, 1024)?;
    if !path_prefix.starts_with('/') || path_prefix.contains(['?', '#', ' ']) {
        return Err(bad(
            "path_prefix",
            "path_prefix must start with '/' and hold no '?', '#' or space".into(),
        ));
    }
    let strategy = strategy_from(b.strategy.as_deref())?;
    let hash_on = hash_on_from(b.hash_on.as_ref())?;
    if (strategy == Strategy::Hash) != hash_on.is_some() {
        return Err(bad(
            "hash_on",
            "hash_on is given with strategy hash, and only then".into(),
        ));
    }
    Ok(Route {
        host,
        path_prefix,
        service: b.service.clone(),
        strategy,
        hash_on,
        connect_timeout_ms: in_range(
            "connect_timeout_ms",
            b.connect_timeout_ms.unwrap_or(CONNECT_TIMEOUT_MS_DEFAULT),
            1,
            60_000,
        )?,
        request_timeout_ms: in_range(
            "request_timeout_ms",
            b.request_timeout_ms.unwrap_or(REQUEST_TIMEOUT_MS_DEFAULT),
            1,
            3_600_000,
        )?,
        retries: in_range("retries", b.retries.unwrap_or(RETRIES_DEFAULT), 0, 5)?,
        max_body_bytes: in_range(
            "max_body_bytes",
            b.max_body_bytes.unwrap_or(MAX_BODY_BYTES_DEFAULT),
            0,
            MAX_BODY_BYTES_MAX,
        )?,
        strip_prefix: b.strip_prefix.unwrap_or(false),
    })
}

pub fn route_body(r: &Route) -> RouteBody {
    RouteBody {
        service: r.service.clone(),
        host: r.host.clone(),
        path_prefix: Some(r.path_prefix.clone()),
        strategy: Some(strategy_name(r.strategy).into()),
        hash_on: r.hash_on.as_ref().map(|h| match h {
            HashOn::Header(h) => HashOnBody {
                header: Some(h.clone()),
                cookie: None,
            },
            HashOn::Cookie(c) => HashOnBody {
                header: None,
                cookie: Some(c.clone()),
            },
        }),
        connect_timeout_ms: Some(r.connect_timeout_ms),
        request_timeout_ms: Some(r.request_timeout_ms),
        retries: Some(r.retries),
        max_body_bytes: Some(r.max_body_bytes),
        strip_prefix: Some(r.strip_prefix),
    }
}

fn answer(r: ServiceResult, what: &str) -> ApiResult<Json<RegistryRevision>> {
    match r {
        ServiceResult::Done { revision } => Ok(Json(RegistryRevision { revision })),
        ServiceResult::NotFound => Err(ApiError::not_found(format!("no such {what}"))),
        ServiceResult::NotTtl => Err(ApiError::conflict(
            "the instance has no ttl check: its status comes from its own check",
        )
        .with("reason", "not_ttl")),
        ServiceResult::Limited { limit, max } => Err(ApiError::limited(format!(
            "the registry holds at most {max} {limit}"
        ))
        .with("limit", limit)
        .with("max", max)),
    }
}

/// Register an instance of a service, or replace its registration
#[utoipa::path(
    put,
    path = "/v1/services/{name}/instances/{id}",
    description = "An instance without a check is passing while registered; an http or tcp check is run by one node of the cluster (chosen by rendezvous hashing over the alive members) and the instance starts critical until it passes; a ttl check starts passing and needs a heartbeat within each ttl_ms. Re-registering with the same check keeps the status.",
    params(
        ("name" = String, Path, description = "service name: 1..=128 of A-Z a-z 0-9 . _ -"),
        ("id" = String, Path, description = "instance id: 1..=128 of A-Z a-z 0-9 . _ -"),
        IdempotencyKey,
    ),
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "registered", body = RegistryRevision),
        (status = 429, description = "rate_limited: the registry is full (10,000 instances)", body = ErrorBody),
        BadRequest, WriteFailures,
    )
)]
pub async fn register(
    State(st): St,
    PathParams((service, id)): PathParams<(String, String)>,
    Idempotency(idem): Idempotency,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> ApiResult<Json<RegistryRevision>> {
    let spec = instance_spec(&service, &id, &body)?;
    let r = crate::service::propose(&st.cluster, ServiceCmd::Register(spec), idem).await?;
    answer(r, "instance")
}

/// The `{name}` and `{id}` of an instance's routes, as the API reference lists them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct InstanceName {
    /// service name
    #[allow(dead_code)]
    name: String,
    /// instance id
    #[allow(dead_code)]
    id: String,
}

/// Deregister an instance, at once or after a drain
#[utoipa::path(
    delete,
    path = "/v1/services/{name}/instances/{id}",
    params(
        InstanceName,
        ("drain_ms" = Option<u64>, Query, description = "0..=3,600,000 (default 0): the instance gets no new requests and is removed after this long"),
        IdempotencyKey,
    ),
    responses((status = 200, description = "deregistered, or draining", body = RegistryRevision), BadRequest, NotFound, WriteFailures)
)]
pub async fn deregister(
    State(st): St,
    PathParams((service, id)): PathParams<(String, String)>,
    RawQuery(q): RawQuery,
    Idempotency(idem): Idempotency,
) -> ApiResult<Json<RegistryRevision>> {
    let p = params(q, &["drain_ms"])?;
    let drain_ms = in_range(
        "drain_ms",
        u64_param(&p, "drain_ms")?.unwrap_or(0),
        0,
        DRAIN_MS_MAX,
    )?;
    let cmd = ServiceCmd::Deregister {
        service,
        id,
        drain_ms,
    };
    answer(
        crate::service::propose(&st.cluster, cmd, idem).await?,
        "instance",
    )
}

/// Pass an instance's ttl check for another ttl_ms
#[utoipa::path(
    post,
    path = "/v1/services/{name}/instances/{id}/heartbeat",
    params(InstanceName),
    responses(
        (status = 200, description = "passing", body = RegistryRevision),
        (status = 409, description = "conflict (reason not_ttl): the instance has no ttl check", body = ErrorBody),
        NotFound, WriteFailures,
    )
)]
pub async fn heartbeat(
    State(st): St,
    PathParams((service, id)): PathParams<(String, String)>,
) -> ApiResult<Json<RegistryRevision>> {
    let cmd = ServiceCmd::Heartbeat { service, id };
    answer(
        crate::service::propose(&st.cluster, cmd, None).await?,
        "instance",
    )
}

/// Every service with instances, with how many are healthy
#[utoipa::path(
    get,
    path = "/v1/services",
    params(("consistency" = Option<String>, Query, description = "linearizable (default) or stale")),
    responses((status = 200, description = "the services, by name", body = ServiceList), BadRequest)
)]
pub async fn list(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<ServiceList>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state();
    let services = state
        .services()
        .iter()
        .map(|(name, revision)| {
            let instances = state.service_instances(name);
            ServiceSummary {
                name: name.clone(),
                revision: *revision,
                instances: instances.len(),
                healthy: instances.iter().filter(|i| i.routable()).count(),
            }
        })
        .collect();
    Ok(Json(ServiceList {
        services,
        revision: state.registry_revision(),
    }))
}

/// A service's instances (all, or only the healthy ones)
#[utoipa::path(
    get,
    path = "/v1/services/{name}",
    description = "A service without instances answers an empty list, not 404: discovery asks for names that may have no instance yet.",
    params(
        ("name" = String, Path, description = "service name"),
        ("healthy" = Option<bool>, Query, description = "true: only instances that take requests (passing, not draining)"),
        ("consistency" = Option<String>, Query, description = "linearizable (default) or stale"),
    ),
    responses((status = 200, description = "the service", body = ServiceView), BadRequest)
)]
pub async fn get(
    State(st): St,
    Name(service): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ServiceView>> {
    validate_ident("service", &service)?;
    let p = params(q, &["healthy", "consistency"])?;
    let healthy = match p.get("healthy").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(bad(
                "healthy",
                format!("healthy must be true or false, got {other:?}"),
            ))
        }
    };
    read_barrier_unless_stale(&st, &p).await?;
    let alive = crate::checks::alive_members(&st.cluster);
    let view = service_view(&st.cluster.state(), &service, healthy, &alive);
    Ok(Json(view))
}

/// Create or replace a gateway route; every node's gateway applies it at once
#[utoipa::path(
    put,
    path = "/v1/routes/{name}",
    params(
        ("name" = String, Path, description = "route name: 1..=128 of A-Z a-z 0-9 . _ -"),
        IdempotencyKey,
    ),
    request_body = RouteBody,
    responses(
        (status = 200, description = "stored", body = RegistryRevision),
        (status = 429, description = "rate_limited: 1,000 routes already", body = ErrorBody),
        BadRequest, WriteFailures,
    )
)]
pub async fn put_route(
    State(st): St,
    req: NamedWrite<RouteBody>,
) -> ApiResult<Json<RegistryRevision>> {
    let NamedWrite { name, idem, body } = req;
    validate_ident("name", &name)?;
    let route = route_from(&body)?;
    let cmd = ServiceCmd::PutRoute { name, route };
    answer(
        crate::service::propose(&st.cluster, cmd, idem).await?,
        "route",
    )
}

/// The `{name}` of a gateway route's routes, as the API reference lists it (read by [`Name`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RouteName {
    /// route name
    #[allow(dead_code)]
    name: String,
}

/// Delete a gateway route
#[utoipa::path(
    delete,
    path = "/v1/routes/{name}",
    params(RouteName, IdempotencyKey),
    responses((status = 200, description = "deleted", body = RegistryRevision), NotFound, WriteFailures)
)]
pub async fn delete_route(
    State(st): St,
    Name(name): Name,
    Idempotency(idem): Idempotency,
) -> ApiResult<Json<RegistryRevision>> {
    let cmd = ServiceCmd::DeleteRoute { name };
    answer(
        crate::service::propose(&st.cluster, cmd, idem).await?,
        "route",
    )
}

/// Every gateway route, by name
#[utoipa::path(
    get,
    path = "/v1/routes",
    params(("consistency" = Option<String>, Query, description = "linearizable (default) or stale")),
    responses((status = 200, description = "the routes", body = RouteList), BadRequest)
)]
pub async fn list_routes(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<RouteList>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let routes = st
        .cluster
        .state()
        .routes()
        .iter()
        .map(|(name, r)| RouteView {
            name: name.clone(),
            route: route_body(r),
        })
        .collect();
    Ok(Json(RouteList { routes }))
}

/// One gateway route
#[utoipa::path(
    get,
    path = "/v1/routes/{name}",
    params(RouteName, ("consistency" = Option<String>, Query, description = "linearizable (default) or stale")),
    responses((status = 200, description = "the route", body = RouteView), BadRequest, NotFound)
)]
pub async fn get_route(
    State(st): St,
    Name(name): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<RouteView>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state();
    let r = state
        .routes()
        .get(&name)
        .ok_or_else(|| ApiError::not_found("no such route"))?;
    Ok(Json(RouteView {
        name,
        route: route_body(r),
    }))
}

// ---- Typed client ----

/// The calls of these routes in the typed client ([`super::client::Client`]).
mod typed {
    use super::{
        RegisterRequest, RegistryRevision, RouteBody, RouteList, RouteView, ServiceList,
        ServiceView,
    };
    use crate::api::client::{segment, ApiResult, Client, Path};

    impl Client {
        fn instance_path(service: &str, id: &str, op: &str) -> String {
            format!(
                "/v1/services/{}/instances/{}{op}",
                segment(service),
                segment(id)
            )
        }

        pub async fn service_register(
            &self,
            service: &str,
            id: &str,
            req: &RegisterRequest,
        ) -> ApiResult<RegistryRevision> {
            self.json(
                reqwest::Method::PUT,
                &Self::instance_path(service, id, ""),
                req,
            )
            .await
        }

        /// Deregisters at once, or after `drain_ms` without new requests.
        pub async fn service_deregister(
            &self,
            service: &str,
            id: &str,
            drain_ms: Option<u64>,
        ) -> ApiResult<RegistryRevision> {
            let path = Path::new(Self::instance_path(service, id, "")).opt("drain_ms", drain_ms);
            self.delete(&path.0).await
        }

        pub async fn service_heartbeat(
            &self,
            service: &str,
            id: &str,
        ) -> ApiResult<RegistryRevision> {
            self.post(
                &Self::instance_path(service, id, "/heartbeat"),
                &serde_json::json!({}),
            )
            .await
        }

        pub async fn services(&self) -> ApiResult<ServiceList> {
            self.get(&self.read(Path::new("/v1/services".into()))).await
        }

        pub async fn service(&self, service: &str, healthy: bool) -> ApiResult<ServiceView> {
            let path = Path::new(format!("/v1/services/{}", segment(service)))
                .opt("healthy", healthy.then_some("true"));
            self.get(&self.read(path)).await
        }

        pub async fn route_put(
            &self,
            name: &str,
            route: &RouteBody,
        ) -> ApiResult<RegistryRevision> {
            self.json(
                reqwest::Method::PUT,
                &format!("/v1/routes/{}", segment(name)),
                route,
            )
            .await
        }

        pub async fn route_delete(&self, name: &str) -> ApiResult<RegistryRevision> {
            self.delete(&format!("/v1/routes/{}", segment(name))).await
        }

        pub async fn routes(&self) -> ApiResult<RouteList> {
            self.get(&self.read(Path::new("/v1/routes".into()))).await
        }

        pub async fn route(&self, name: &str) -> ApiResult<RouteView> {
            self.get(&self.read(Path::new(format!("/v1/routes/{}", segment(name)))))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(json: serde_json::Value) -> ApiResult<Route> {
        route_from(&serde_json::from_value(json).unwrap())
    }

    #[test]
    fn routes_get_defaults_and_clear_errors() {
        let r = route(serde_json::json!({"service": "web"})).unwrap();
        assert_eq!(r.strategy, Strategy::PeakEwma);
        assert_eq!(r.path_prefix, "/");
        assert_eq!(r.max_body_bytes, MAX_BODY_BYTES_DEFAULT);
        let e = route(serde_json::json!({"service": "web", "strategy": "random"})).unwrap_err();
        assert!(
            e.message.contains("strategy must be one of"),
            "{}",
            e.message
        );
        let e = route(serde_json::json!({"service": "web", "strategy": "hash"})).unwrap_err();
        assert!(e.message.contains("hash_on"), "{}", e.message);
        let e = route(serde_json::json!({"service": "a/b"})).unwrap_err();
        assert!(e.message.contains("service must be"), "{}", e.message);
        let r = route(serde_json::json!({"service": "web", "strategy": "hash",
            "hash_on": {"cookie": "sid"}, "host": "App.Example"}))
        .unwrap();
        assert_eq!(r.hash_on, Some(HashOn::Cookie("sid".into())));
        assert_eq!(r.host.as_deref(), Some("app.example"));
    }

    #[test]
    fn checks_get_defaults_and_refuse_fields_of_other_kinds() {
        let c = check_from(&CheckBody {
            kind: "http".into(),
            interval_ms: Some(1_000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(check_body(&c).timeout_ms, Some(1_000));
        assert_eq!(check_body(&c).path.as_deref(), Some("/"));
        let e = check_from(&CheckBody {
            kind: "ttl".into(),
            interval_ms: Some(1_000),
            ttl_ms: Some(5_000),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.message.contains("interval_ms applies to"),
            "{}",
            e.message
        );
        let e = check_from(&CheckBody {
            kind: "ping".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.message.contains("http, tcp or ttl"), "{}", e.message);
        let e = check_from(&CheckBody {
            kind: "http".into(),
            interval_ms: Some(1_000),
            timeout_ms: Some(2_000),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.message.contains("timeout_ms must be 1 to 1000"),
            "{}",
            e.message
        );
    }
}
