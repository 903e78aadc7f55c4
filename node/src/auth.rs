//! Who may call what: every route declares what it needs ([`Need`], in the route table of
//! [`crate::api`]), and [`authorize`] checks the request's bearer token against the replicated
//! tokens and policies ([`raft::state::acl`]) before the handler runs.
//!
//! A token is sent as `Authorization: Bearer <secret>`. No token, a malformed one, an unknown
//! (never made, or deleted) one and an expired one answer 401 `unauthenticated`; a valid token
//! whose policies lack the right answers 403 `forbidden`. The check reads this node's applied
//! state, so a change to tokens or policies takes effect on each node as soon as it applies the
//! entry (the replication delay, milliseconds on a healthy cluster).
//!
//! With `api.insecure_no_auth` every request is let through as [`Caller::Anyone`].

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use raft::command::{Command, Compare, Guarded, NotNested, ServiceCmd, Txn};
use raft::state::acl::{Grant, Token};

use crate::jwt::JwtCaller;
pub use raft::state::acl::{Op, Resource};
use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::cluster::now_ms;
use crate::error::{ApiError, ErrorCode};

/// Where a route finds the name its right is checked on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A path parameter, e.g. `{key}`.
    Path(&'static str),
    /// A query parameter naming one thing, e.g. `user` (absent: checked as the empty name,
    /// which only rules for every name match).
    Query(&'static str),
    /// A query parameter holding a prefix the route lists under (absent: every name): every
    /// name under it must be allowed.
    Prefix(&'static str),
    /// Every name of the resource (statistics, cluster operations, management).
    All,
    /// The queue of the job whose id is this path parameter.
    JobQueue(&'static str),
    /// The user of the session whose id is this path parameter.
    SessionUser(&'static str),
}

/// What a route needs from its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health, readiness, the API reference and the browser client.
    Open,
    /// A valid token; the handler checks each thing the request touches (a transaction's
    /// writes, the WebSocket's subscriptions).
    Token,
    /// `/metrics`: open when `api.metrics_open`, else `read` on `cluster`.
    Metrics,
    /// The WebSocket upgrade: a token in the `Authorization` header, or in the connection's
    /// first message (browsers cannot set headers on an upgrade); each subscription, watch
    /// and publish is checked.
    Upgrade,
    /// `op` on the name `target` gives, of `resource`.
    Right {
        resource: Resource,
        op: Op,
        target: Target,
    },
}

impl Need {
    /// The right this need asks for, if one.
    pub fn right(self) -> Option<(Resource, Op, Target)> {
        match self {
            Need::Right {
                resource,
                op,
                target,
            } => Some((resource, op, target)),
            Need::Metrics => Some((Resource::Cluster, Op::Read, Target::All)),
            Need::Open | Need::Token | Need::Upgrade => None,
        }
    }
}

/// `read` on `resource` at `target`.
pub const fn read(resource: Resource, target: Target) -> Need {
    Need::Right {
        resource,
        op: Op::Read,
        target,
    }
}

/// `write` on `resource` at `target`.
pub const fn write(resource: Resource, target: Target) -> Need {
    Need::Right {
        resource,
        op: Op::Write,
        target,
    }
}

/// A channel operation on the channel named by the `{name}` path parameter.
pub const fn channel(op: Op) -> Need {
    Need::Right {
        resource: Resource::Channels,
        op,
        target: Target::Path("name"),
    }
}

/// Who is calling, as [`authorize`] found: put in the request's extensions for handlers that
/// check more than their route's need.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Authentication is off (`api.insecure_no_auth`): everything is allowed.
    Anyone,
    Token(Arc<Token>),
    /// A JWT of a provider ([`crate::jwt`]).
    Jwt(Arc<JwtCaller>),
}

impl Caller {
    /// What the caller holds; `None` when everything is allowed (auth off).
    pub fn grant(&self) -> Option<Grant<'_>> {
        match self {
            Caller::Anyone => None,
            Caller::Token(t) => Some(Grant::of(t)),
            Caller::Jwt(j) => Some(Grant {
                management: false,
                policies: &j.policies,
                rules: &j.rules,
            }),
        }
    }

    /// When the credential stops being accepted, if it expires.
    pub fn expires_at_ms(&self) -> Option<u64> {
        match self {
            Caller::Anyone => None,
            Caller::Token(t) => t.expires_at_ms,
            Caller::Jwt(j) => Some(j.expires_at_ms),
        }
    }

    /// Whether the caller may do `op` on `name` of `resource`, by the policies as they are now.
    /// The reserved channels (`$audit`) are read with `read` on `acl`.
    pub fn may(&self, st: &AppState, resource: Resource, name: &str, op: Op) -> bool {
        if reserved(resource, name) {
            return self.may_all(st, Resource::Acl, "", Op::Read);
        }
        match self.grant() {
            None => true,
            Some(g) => st.cluster.state().acl().grants(g, resource, name, op),
        }
    }

    /// [`Caller::may`], or the 403 that says what is missing.
    pub fn check(
        &self,
        st: &AppState,
        resource: Resource,
        name: &str,
        op: Op,
    ) -> Result<(), ApiError> {
        if self.may(st, resource, name, op) {
            Ok(())
        } else {
            Err(forbidden(resource, op, Some(name)))
        }
    }

    /// [`Caller::may`] for every name under `prefix` (a watch, a listing).
    pub fn may_all(&self, st: &AppState, resource: Resource, prefix: &str, op: Op) -> bool {
        match self.grant() {
            None => true,
            Some(g) => st
                .cluster
                .state()
                .acl()
                .grants_prefix(g, resource, prefix, op),
        }
    }

    /// Who the caller is, for logs and rate limits: the token's accessor id,
    /// `jwt:<provider>:<sub>`, or `anyone`.
    pub fn actor(&self) -> &str {
        match self {
            Caller::Anyone => "anyone",
            Caller::Token(t) => &t.accessor_id,
            Caller::Jwt(j) => &j.actor,
        }
    }
}

/// SHA-256 (hex) of a token secret, as the replicated state holds it.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new token secret: 256 random bits, hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// A new accessor id: 128 random bits, hex.
pub fn new_accessor_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Why a request was refused: 401 (with `WWW-Authenticate: Bearer`) or 403.
#[derive(Debug)]
pub enum Refusal {
    Unauthenticated(String),
    Forbidden(ApiError),
}

impl Refusal {
    /// The error as the API sends it (also over the WebSocket).
    pub fn error(self) -> ApiError {
        match self {
            Refusal::Unauthenticated(m) => ApiError::new(ErrorCode::Unauthenticated, m),
            Refusal::Forbidden(e) => e,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let unauthenticated = matches!(self, Refusal::Unauthenticated(_));
        let mut resp = self.error().into_response();
        if unauthenticated {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// 403: the token's policies do not allow `op` on `name` (every name when `None`).
pub fn forbidden(resource: Resource, op: Op, name: Option<&str>) -> ApiError {
    let on = match name {
        Some(n) if !n.is_empty() => format!("{} {n:?}", resource.as_str()),
        _ => format!("every name of {}", resource.as_str()),
    };
    ApiError::new(
        ErrorCode::Forbidden,
        format!("the token's policies do not allow {} on {on}", op.as_str()),
    )
    .with("resource", resource.as_str())
    .with("access", op.as_str())
}

/// The bearer secret of a request: `Err` with the 401 message when missing or malformed.
pub fn bearer(headers: &HeaderMap) -> Result<&str, &'static str> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Err("a token is required: send Authorization: Bearer <token>");
    };
    let v = v
        .to_str()
        .map_err(|_| "the Authorization header is not visible ASCII")?;
    match v.split_once(' ') {
        Some((scheme, secret))
            if scheme.eq_ignore_ascii_case("bearer") && !secret.trim().is_empty() =>
        {
            Ok(secret.trim())
        }
        _ => Err("the Authorization header must be `Bearer <token>`"),
    }
}

/// Whether `token` is still what the state holds under its accessor id (not deleted, not
/// replaced) and not expired at `now_ms`; answers the current one.
pub fn still_valid(st: &AppState, token: &Token, now_ms: u64) -> Option<Arc<Token>> {
    let state = st.cluster.state();
    let cur = state.acl().token(&token.accessor_id)?;
    if cur.secret_sha256 != token.secret_sha256 || cur.expired(now_ms) {
        return None;
    }
    Some(cur.clone())
}

/// The caller a bearer value names: a JWT of a provider, or a token (see [`resolve`]); the
/// error is the 401 message.
pub fn authenticate(st: &AppState, bearer: &str, now_ms: u64) -> Result<Caller, String> {
    authenticate_in(&st.cluster.state(), bearer, now_ms)
}

/// [`authenticate`] against `state`, already read.
fn authenticate_in(state: &raft::State, bearer: &str, now_ms: u64) -> Result<Caller, String> {
    if crate::jwt::looks_like_jwt(bearer) {
        return crate::jwt::verify(state.acl().providers(), bearer, now_ms).map(Caller::Jwt);
    }
    resolve_in(state, bearer, now_ms)
        .map(Caller::Token)
        .map_err(str::to_string)
}

/// Whether `caller`'s credential is still accepted (see [`still_valid`]; a JWT is verified
/// again against the providers as they are now); answers the caller as it is now.
pub fn recheck(st: &AppState, caller: &Caller, now_ms: u64) -> Option<Caller> {
    match caller {
        Caller::Anyone => Some(Caller::Anyone),
        Caller::Token(t) => still_valid(st, t, now_ms).map(Caller::Token),
        Caller::Jwt(j) => {
            let state = st.cluster.state();
            crate::jwt::verify(state.acl().providers(), &j.jwt, now_ms)
                .ok()
                .map(Caller::Jwt)
        }
    }
}

/// The token of `secret`, if it is current (made, not deleted, not expired at `now_ms`).
pub fn resolve(st: &AppState, secret: &str, now_ms: u64) -> Result<Arc<Token>, &'static str> {
    resolve_in(&st.cluster.state(), secret, now_ms)
}

fn resolve_in(state: &raft::State, secret: &str, now_ms: u64) -> Result<Arc<Token>, &'static str> {
    let digest = secret_digest(secret);
    let Some(token) = state.acl().token_by_secret(&digest) else {
        return Err("the token is not known: it was never made, or it was deleted");
    };
    if token.expired(now_ms) {
        return Err("the token has expired");
    }
    Ok(token.clone())
}

/// What [`caller`] looks at in a request.
pub struct Asked<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// Path parameters, percent-decoded (empty when one is not UTF-8: the route's own
    /// extractor refuses it, and here it names nothing, so only rules for every name allow).
    pub params: &'a [(String, String)],
}

/// The caller of a request on a route that needs `need` (or `None` when the route is open),
/// or the 401 or 403 answer.
pub fn caller(st: &AppState, asked: &Asked<'_>, need: Need) -> Result<Option<Caller>, Refusal> {
    if st.cluster.config().api.insecure_no_auth {
        return Ok(Some(Caller::Anyone));
    }
    if need == Need::Open || (need == Need::Metrics && st.cluster.config().api.metrics_open) {
        return Ok(None);
    }
    if need == Need::Upgrade && asked.headers.get(header::AUTHORIZATION).is_none() {
        return Ok(None);
    }
    let secret = bearer(asked.headers).map_err(|m| Refusal::Unauthenticated(m.to_string()))?;
    // One read of the state for the credential and its rights.
    let state = st.cluster.state();
    let found = authenticate_in(&state, secret, now_ms()).map_err(Refusal::Unauthenticated)?;
    if let (Some((resource, op, target)), Some(grant)) = (need.right(), found.grant()) {
        let acl = state.acl();
        let refused = match name_of(&state, asked, target) {
            Named::One(name) if reserved(resource, &name) => {
                (!acl.grants_prefix(grant, Resource::Acl, "", Op::Read)).then_some(Some(name))
            }
            Named::One(name) => (!acl.grants(grant, resource, &name, op)).then_some(Some(name)),
            Named::Under(prefix) => {
                (!acl.grants_prefix(grant, resource, &prefix, op)).then_some(None)
            }
        };
        if let Some(name) = refused {
            return Err(Refusal::Forbidden(forbidden(resource, op, name.as_deref())));
        }
    }
    Ok(Some(found))
}

/// A reserved channel (`$audit`): no one publishes to it, readers need `read` on `acl`.
fn reserved(resource: Resource, name: &str) -> bool {
    resource == Resource::Channels && name.starts_with('$')
}

enum Named {
    One(String),
    Under(String),
}

fn name_of(state: &raft::State, asked: &Asked<'_>, target: Target) -> Named {
    let path = |p: &str| -> String {
        asked
            .params
            .iter()
            .find(|(k, _)| k == p)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let query = |q: &str| -> String {
        asked
            .query
            .and_then(|s| {
                form_urlencoded::parse(s.as_bytes())
                    .find(|(k, _)| k == q)
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default()
    };
    match target {
        Target::Path(p) => Named::One(path(p)),
        Target::Query(q) => Named::One(query(q)),
        Target::Prefix(q) => Named::Under(query(q)),
        Target::All => Named::Under(String::new()),
        Target::JobQueue(p) => Named::One(
            path(p)
                .parse::<u64>()
                .ok()
                .and_then(|id| state.job(id))
                .map(|j| j.queue.clone())
                .unwrap_or_default(),
        ),
        Target::SessionUser(p) => Named::One(
            state
                .session(&path(p))
                .map(|s| s.user.clone())
                .unwrap_or_default(),
        ),
    }
}

/// The client's address, as [`authorize`] found it, for handlers.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub std::net::IpAddr);

/// The client's address (the TCP peer), or unspecified when the router runs without one
/// (in-process tests).
pub fn client_ip(ext: &axum::http::Extensions) -> std::net::IpAddr {
    ext.get::<axum::extract::ConnectInfo<PeerAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0 .0.ip())
}

/// The TCP peer of a connection, over plain TCP or TLS (the API's connect info, put in each
/// request by `http_server`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The access check of every route (run by `api::admit`): finds the caller (see [`caller`])
/// and hands it to the handler in the request's extensions, or answers the refusal.
pub async fn authorize(st: &AppState, need: Need, req: Request) -> Result<Request, Response> {
    let (mut parts, body) = req.into_parts();
    // Path parameters name what a right covers; with access control off nothing reads them.
    let params: Vec<(String, String)> = if st.cluster.config().api.insecure_no_auth {
        Vec::new()
    } else {
        match RawPathParams::from_request_parts(&mut parts, &()).await {
            Ok(p) => p
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Err(_) => Vec::new(),
        }
    };
    let asked = Asked {
        headers: &parts.headers,
        query: parts.uri.query(),
        params: &params,
    };
    let ip = client_ip(&parts.extensions);
    if let Err(e) = st.rate.request(ip) {
        st.cluster
            .audit()
            .count("rate_limited", "anyone", &ip.to_string());
        return Err(e.into_response());
    }
    let found = caller(st, &asked, need);
    let write = !matches!(parts.method, Method::GET | Method::HEAD);
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(ClientIp(ip));
    match found {
        Ok(Some(c)) => {
            if !matches!(c, Caller::Anyone) {
                if let Err(e) = st.rate.token(c.actor(), write) {
                    st.cluster
                        .audit()
                        .count("rate_limited", c.actor(), &ip.to_string());
                    return Err(e.into_response());
                }
            }
            req.extensions_mut().insert(c);
            Ok(req)
        }
        Ok(None) => Ok(req),
        Err(refusal @ Refusal::Unauthenticated(_)) => {
            st.cluster
                .audit()
                .count("auth_failed", "anyone", &ip.to_string());
            Err(match st.rate.auth_failed(ip) {
                Ok(()) => refusal.into_response(),
                Err(limited) => limited.into_response(),
            })
        }
        Err(refusal) => Err(refusal.into_response()),
    }
}

/// The rights a replicated write needs: `(resource, name, op)`, where a `None` name means
/// every name of the resource. Used where a route cannot say in advance (a transaction's
/// writes and compares). Takes a command of any nesting level (a transaction's ops, a fenced
/// command's).
pub fn rights_of<F: Rights, T: Rights, I: Rights>(
    cmd: &Command<F, T, I>,
) -> Vec<(Resource, Option<String>, Op)> {
    use raft::command::{CacheCmd, ChannelCmd, KvCmd, LockCmd, QueueCmd, SemaphoreCmd};
    let one = |r, name: &str, op| vec![(r, Some(name.to_string()), op)];
    match cmd {
        Command::Kv(KvCmd::Put { key, .. } | KvCmd::Delete { key, .. }) => {
            one(Resource::Kv, key, Op::Write)
        }
        Command::Cache(
            CacheCmd::Set { key, .. }
            | CacheCmd::Delete { key, .. }
            | CacheCmd::SetIf { key, .. }
            | CacheCmd::Incr { key, .. }
            | CacheCmd::Expire { key, .. }
            | CacheCmd::DeleteIfEq { key, .. },
        ) => one(Resource::Cache, key, Op::Write),
        Command::Queue(QueueCmd::Enqueue { queue, .. }) => one(Resource::Queues, queue, Op::Write),
        Command::Channel(ChannelCmd::Publish { channel, .. }) => {
            one(Resource::Channels, channel, Op::Publish)
        }
        Command::Semaphore(SemaphoreCmd::Release { name, .. }) => {
            one(Resource::Semaphores, name, Op::Write)
        }
        Command::Lock(LockCmd::Release { name, .. } | LockCmd::ReleaseOwned { name, .. }) => {
            one(Resource::Locks, name, Op::Write)
        }
        Command::Fenced { lock, command, .. } => {
            let mut v = command.rights();
            v.push((Resource::Locks, Some(lock.clone()), Op::Read));
            v
        }
        Command::Txn(t) => t.rights(),
        Command::Idempotent { command, .. } => command.rights(),
        // Any other write: the right on every name of its kind.
        other => vec![(resource_of(other), None, Op::Write)],
    }
}

/// The rights a transaction needs: `read` on what it compares, and each write's own.
pub fn rights_of_txn(t: &Txn) -> Vec<(Resource, Option<String>, Op)> {
    let mut v: Vec<_> = t
        .compare
        .iter()
        .map(|c| match c {
            Compare::Revision { key, .. } => (Resource::Kv, Some(key.clone()), Op::Read),
            Compare::Fence { lock, .. } => (Resource::Locks, Some(lock.clone()), Op::Read),
            Compare::SemaphoreFence { semaphore, .. } => {
                (Resource::Semaphores, Some(semaphore.clone()), Op::Read)
            }
        })
        .collect();
    for op in t.success.iter().chain(&t.failure) {
        v.extend(rights_of(op));
    }
    v
}

/// What a transaction or fenced command holds, for [`rights_of`].
pub trait Rights {
    fn rights(&self) -> Vec<(Resource, Option<String>, Op)>;
}

impl Rights for Box<Guarded> {
    fn rights(&self) -> Vec<(Resource, Option<String>, Op)> {
        rights_of(&**self)
    }
}

impl Rights for Box<raft::command::Keyed> {
    fn rights(&self) -> Vec<(Resource, Option<String>, Op)> {
        rights_of(&**self)
    }
}

impl Rights for Txn {
    fn rights(&self) -> Vec<(Resource, Option<String>, Op)> {
        rights_of_txn(self)
    }
}

impl Rights for NotNested {
    fn rights(&self) -> Vec<(Resource, Option<String>, Op)> {
        match *self {}
    }
}

fn resource_of<F, T, I>(cmd: &Command<F, T, I>) -> Resource {
    match cmd {
        Command::Kv(_) | Command::Txn(_) => Resource::Kv,
        Command::Lock(_) | Command::Fenced { .. } => Resource::Locks,
        Command::Semaphore(_) => Resource::Semaphores,
        Command::Session(_) => Resource::Sessions,
        Command::Cache(_) => Resource::Cache,
        Command::Queue(_) => Resource::Queues,
        Command::Channel(_) => Resource::Channels,
        Command::Acl(_) => Resource::Acl,
        Command::Service(ServiceCmd::PutRoute { .. } | ServiceCmd::DeleteRoute { .. }) => {
            Resource::Routes
        }
        Command::Service(_) => Resource::Services,
        Command::Tick | Command::Cluster(_) => Resource::Cluster,
        // Reached only through `rights_of`, which asks the keyed command itself.
        Command::Idempotent { .. } => Resource::Kv,
    }
}

impl Caller {
    /// Checks every right of `rights` (see [`rights_of`]); the first one missing is the 403.
    pub fn check_all(
        &self,
        st: &AppState,
        rights: Vec<(Resource, Option<String>, Op)>,
    ) -> Result<(), ApiError> {
        let Some(grant) = self.grant() else {
            return Ok(());
        };
        let state = st.cluster.state();
        let acl = state.acl();
        for (resource, name, op) in rights {
            let ok = match &name {
                Some(n) => acl.grants(grant, resource, n, op),
                None => acl.grants_prefix(grant, resource, "", op),
            };
            if !ok {
                return Err(forbidden(resource, op, name.as_deref()));
            }
        }
        Ok(())
    }
}
