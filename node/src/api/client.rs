//! A typed client of the HTTP API: one method per operation, each answering the type the
//! server answers with (from [`super::model`], or the route module that defines it), or an [`ApiError`]
//! parsed from the error body. The CLI, `loadgen` and the tests use it.
//!
//! All methods share one path: a request is built by [`Client::request`], sent by
//! [`Client::send`] (which turns an error answer into [`ApiError::Api`]) and decoded by
//! [`Client::call`]. [`Client::raw`] sends any bytes and returns the status and body as they
//! are, for checks of malformed input.

use std::borrow::Cow;
use std::fmt::Display;

use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::model::{
    ClusterStatus, CompactRequest, Compacted, Consistency, JoinTokens, KvDeleted, KvHistory,
    KvList, Leader, Promoted, Removed, Revision, SnapshotTaken, Status, TokenCreated, TokenRequest,
    TokenRevoked, TransferRequest, TxnRequest, TxnResponse,
};
use crate::error::{ErrorBody, ErrorCode, ErrorDetail};

/// The body of an answer, as reqwest hands it over (no copy).
pub type Bytes = axum::body::Bytes;

/// A failed call: the server's error answer, an answer that is not what the operation
/// returns, or no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An error answer: its status and `error.code`, `error.message`, and the whole `error`
    /// object (`detail`: the fields some errors add, such as `current_revision`).
    #[error("{} {code}: {message}{}", status_line(*status), extras(detail))]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        detail: Box<ErrorDetail>,
    },
    /// An answer that is neither the operation's success body nor an error body.
    #[error("{} unexpected answer: {body}", status_line(*status))]
    Unexpected { status: u16, body: String },
    /// No answer: the connection failed, timed out or broke off.
    #[error("request failed")]
    Transport(#[from] reqwest::Error),
}

impl ApiError {
    /// The HTTP status of an answer; `None` when there was no answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Api { status, .. } | ApiError::Unexpected { status, .. } => Some(*status),
            ApiError::Transport(_) => None,
        }
    }

    /// `error.code` of an error answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The `error` object of an error answer.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            ApiError::Api { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// Reads an answer that is not a success.
    async fn from_answer(resp: Response) -> ApiError {
        let status = resp.status().as_u16();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return ApiError::Transport(e),
        };
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => ApiError::Api {
                status,
                code: error.code,
                message: error.message.clone(),
                detail: Box::new(error),
            },
            Err(_) => ApiError::Unexpected {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
        }
    }
}

fn status_line(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status) {
        Ok(s) => s.to_string(),
        Err(_) => status.to_string(),
    }
}

/// ` (k=v, ...)`: the fields of the error besides code and message.
fn extras(detail: &ErrorDetail) -> String {
    let Ok(Value::Object(fields)) = serde_json::to_value(detail) else {
        return String::new();
    };
    let extra: Vec<String> = fields
        .iter()
        .filter(|(k, _)| *k != "code" && *k != "message")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join(", "))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A key's value and revision (`GET /v1/kv/{key}`).
#[derive(Debug, Clone)]
pub struct KvValue {
    pub value: Bytes,
    /// `X-Revision`.
    pub revision: u64,
    /// `X-Expires-In-Ms`, when the key was written with a TTL.
    pub expires_in_ms: Option<u64>,
}

/// A cached value (`GET /v1/cache/{key}`).
#[derive(Debug, Clone)]
pub struct CacheValue {
    pub value: Bytes,
    /// `X-Expires-In-Ms`, when the entry has a TTL.
    pub expires_in_ms: Option<u64>,
}

/// The conditions of a key write; each is left out when `None`.
#[derive(Debug, Clone, Default)]
pub struct KvWrite {
    /// Apply only if the key's revision is this (0: only if absent).
    pub if_revision: Option<u64>,
    /// Puts only: the key expires this long after the write.
    pub ttl_ms: Option<u64>,
    /// `LOCK:F`: apply only while lock LOCK is held with fence F.
    pub fence: Option<String>,
}

/// A page of keys to list (`GET /v1/kv`).
#[derive(Debug, Clone, Default)]
pub struct KvListQuery {
    pub prefix: Option<String>,
    pub limit: Option<u64>,
    pub after: Option<String>,
}

/// A page of key-value history (`GET /v1/history`).
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub prefix: Option<String>,
    pub since_revision: Option<u64>,
    pub limit: Option<u64>,
}

/// A cache write (`PUT /v1/cache/{key}`).
#[derive(Debug, Clone, Default)]
pub struct CacheWrite {
    pub ttl_ms: Option<u64>,
    /// Tags, for invalidation.
    pub tags: Vec<String>,
    /// `LOCK:F`.
    pub fence: Option<String>,
}

/// Any request and its answer as they are (`raw`).
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl RawAnswer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as an answer type.
    pub fn decode<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }
}

/// `HOST:PORT` or a URL, as a base URL without a trailing slash.
pub fn base_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    }
}

/// A key or name as one path segment, percent-encoded (borrowed when nothing needs it).
pub fn segment(s: &str) -> Cow<'_, str> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20"),
    )
}

/// A path with its query, built from optional parameters.
pub(super) struct Path(pub(super) String);

impl Path {
    pub(super) fn new(path: String) -> Self {
        Path(path)
    }

    pub(super) fn opt(mut self, name: &str, value: Option<impl Display>) -> Self {
        if let Some(v) = value {
            let sep = if self.0.contains('?') { '&' } else { '?' };
            let v = v.to_string();
            let v: String = form_urlencoded::byte_serialize(v.as_bytes()).collect();
            self.0.push_str(&format!("{sep}{name}={v}"));
        }
        self
    }
}

/// One node's API. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    idempotency_key: Option<String>,
    consistency: Option<Consistency>,
    /// Sent as `Authorization: Bearer <token>`.
    token: Option<String>,
}

impl Client {
    /// A client of the node at `addr` (`HOST:PORT` or a URL), without proxy.
    pub fn new(addr: &str) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        Self::with_http(addr, http)
    }

    /// A client of the node at `addr` over `http` (its timeouts, its connection pool).
    pub fn with_http(addr: &str, http: reqwest::Client) -> Self {
        Client {
            http,
            base: base_url(addr),
            idempotency_key: None,
            consistency: None,
            token: None,
        }
    }

    /// This client, sending `token` (a token secret) with every request.
    pub fn with_token(self, token: impl Into<String>) -> Self {
        Client {
            token: Some(token.into()),
            ..self
        }
    }

    /// This client, talking to the node at `api_addr` (`HOST:PORT`) with the same scheme,
    /// token and settings.
    pub fn at(&self, api_addr: &str) -> Self {
        let scheme = if self.base.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        Client {
            base: format!("{scheme}://{api_addr}"),
            ..self.clone()
        }
    }

    /// The members that may take clients, least loaded first (`GET /v1/cluster/route`).
    pub async fn route_table(&self) -> ApiResult<crate::api::ops::RouteTable> {
        self.get("/v1/cluster/route").await
    }

    /// This client moved to the least loaded member, or as it is when the table is empty or
    /// cannot be read (an older node, a network error): a connection starts where it may.
    pub async fn least_loaded(&self) -> Self {
        match self.route_table().await {
            Ok(t) => match t.nodes.first() {
                Some(n) if !self.base.ends_with(n.api_addr.as_str()) => self.at(&n.api_addr),
                _ => self.clone(),
            },
            Err(_) => self.clone(),
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:7001`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// This client, sending `Idempotency-Key: key` with every request.
    pub fn idempotent(&self, key: impl Into<String>) -> Self {
        Client {
            idempotency_key: Some(key.into()),
            ..self.clone()
        }
    }

    /// This client, reading the answering node's state as it is (`consistency=stale`) on
    /// every read that takes `consistency`.
    pub fn stale(&self) -> Self {
        Client {
            consistency: Some(Consistency::Stale),
            ..self.clone()
        }
    }

    // ---- Plumbing ----

    /// A request to `path` (and its query) under the base URL, the URL built in one string.
    pub(super) fn request(&self, method: Method, path: impl Display) -> RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match &self.idempotency_key {
            Some(k) => req.header("Idempotency-Key", k),
            None => req,
        }
    }

    /// The `consistency` parameter this client sets, if any.
    pub(super) fn consistency(&self) -> Option<&'static str> {
        self.consistency.map(|c| match c {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        })
    }

    /// A read's path: `consistency` added when this client sets it.
    pub(super) fn read(&self, path: Path) -> String {
        path.opt("consistency", self.consistency()).0
    }

    /// Sends a request; an answer that is not a success becomes [`ApiError`].
    pub(super) async fn send(&self, req: RequestBuilder) -> ApiResult<Response> {
        let resp = req.send().await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(ApiError::from_answer(resp).await)
        }
    }

    /// Sends a request and decodes its JSON answer.
    pub(super) async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> ApiResult<T> {
        let resp = self.send(req).await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Unexpected {
            status,
            body: format!("{e}: {}", String::from_utf8_lossy(&body)),
        })
    }

    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str) -> ApiResult<T> {
        self.call(self.request(Method::GET, path)).await
    }

    /// A page of the listing by name at `path`: names under `prefix`, at most `limit` of them
    /// after `after`.
    pub(super) async fn name_page<T: DeserializeOwned>(
        &self,
        path: &str,
        prefix: &str,
        after: Option<&str>,
        limit: Option<u64>,
    ) -> ApiResult<T> {
        let path = Path::new(path.into())
            .opt("prefix", Some(prefix))
            .opt("after", after)
            .opt("limit", limit);
        self.get(&self.read(path)).await
    }

    pub(super) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> ApiResult<T> {
        self.call(self.request(method, path).json(body)).await
    }

    pub(super) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> ApiResult<T> {
        self.json(Method::POST, path, body).await
    }

    pub(super) async fn delete<T: DeserializeOwned>(&self, path: &str) -> ApiResult<T> {
        self.call(self.request(Method::DELETE, path)).await
    }

    /// Any request, sent as it is (`body` with `content_type` when given); answers the status,
    /// headers and body whatever they are. For checks of malformed input.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> ApiResult<RawAnswer> {
        let mut req = self.request(method, path);
        if let Some((content_type, bytes)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = req.send().await?;
        Ok(RawAnswer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await?,
        })
    }

    /// [`Client::raw`] with a JSON body: for checks of the status of a well-formed request.
    pub async fn raw_json(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> ApiResult<RawAnswer> {
        let bytes = serde_json::to_vec(body).expect("a serializable body");
        self.raw(method, path, Some(("application/json", bytes)))
            .await
    }

    // ---- Health ----

    pub async fn health(&self) -> ApiResult<Status> {
        self.get("/health").await
    }

    /// `GET /ready`: 503 (`ApiError::Api`) with the reason when not ready.
    pub async fn ready(&self) -> ApiResult<Status> {
        self.get("/ready").await
    }

    /// `GET /metrics`, the Prometheus text.
    pub async fn metrics(&self) -> ApiResult<String> {
        let resp = self.send(self.request(Method::GET, "/metrics")).await?;
        Ok(resp.text().await?)
    }

    /// `GET /v1/openapi.json`.
    pub async fn openapi(&self) -> ApiResult<Value> {
        self.get("/v1/openapi.json").await
    }

    // ---- Key-value ----

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{}", segment(key))
    }

    /// A read of `key`; built without an intermediate path string, as it is a hot path of
    /// `loadgen`.
    pub async fn kv_get(&self, key: &str) -> ApiResult<KvValue> {
        let (sep, consistency) = match self.consistency() {
            Some(c) => ("?consistency=", c),
            None => ("", ""),
        };
        let req = self.request(
            Method::GET,
            format_args!("/v1/kv/{}{sep}{consistency}", segment(key)),
        );
        let resp = self.send(req).await?;
        let revision = header_u64(&resp, "x-revision").unwrap_or(0);
        let expires_in_ms = header_u64(&resp, "x-expires-in-ms");
        Ok(KvValue {
            value: resp.bytes().await?,
            revision,
            expires_in_ms,
        })
    }

    pub async fn kv_put(&self, key: &str, value: impl Into<reqwest::Body>) -> ApiResult<Revision> {
        let req = self.request(Method::PUT, format_args!("/v1/kv/{}", segment(key)));
        self.call(req.body(value)).await
    }

    pub async fn kv_put_with(
        &self,
        key: &str,
        value: impl Into<reqwest::Body>,
        w: &KvWrite,
    ) -> ApiResult<Revision> {
        let path = Path::new(Self::kv_path(key))
            .opt("if_revision", w.if_revision)
            .opt("ttl_ms", w.ttl_ms)
            .opt("fence", w.fence.as_ref());
        self.call(self.request(Method::PUT, &path.0).body(value))
            .await
    }

    pub async fn kv_delete(&self, key: &str) -> ApiResult<KvDeleted> {
        self.delete(&Self::kv_path(key)).await
    }

    /// A delete under `w.if_revision` and `w.fence` (`w.ttl_ms` is not sent).
    pub async fn kv_delete_with(&self, key: &str, w: &KvWrite) -> ApiResult<KvDeleted> {
        let path = Path::new(Self::kv_path(key))
            .opt("if_revision", w.if_revision)
            .opt("fence", w.fence.as_ref());
        self.delete(&path.0).await
    }

    pub async fn kv_list(&self, q: &KvListQuery) -> ApiResult<KvList> {
        let path = Path::new("/v1/kv".into())
            .opt("prefix", q.prefix.as_ref())
            .opt("limit", q.limit)
            .opt("after", q.after.as_ref());
        self.get(&self.read(path)).await
    }

    pub async fn kv_history(&self, q: &HistoryQuery) -> ApiResult<KvHistory> {
        let path = Path::new("/v1/history".into())
            .opt("prefix", q.prefix.as_ref())
            .opt("since_revision", q.since_revision)
            .opt("limit", q.limit);
        self.get(&self.read(path)).await
    }

    pub async fn compact(&self, revision: u64) -> ApiResult<Compacted> {
        self.post("/v1/cluster/compact", &CompactRequest { revision })
            .await
    }

    pub async fn txn(&self, txn: &TxnRequest) -> ApiResult<TxnResponse> {
        self.post("/v1/txn", txn).await
    }

    // ---- Cluster ----

    pub async fn cluster_status(&self) -> ApiResult<ClusterStatus> {
        self.get("/v1/cluster").await
    }

    /// A digest of the answering node's whole state (`GET /v1/cluster/digest`).
    pub async fn state_digest(&self) -> ApiResult<crate::api::model::StateDigest> {
        self.get("/v1/cluster/digest").await
    }

    pub async fn remove_member(&self, id: u64) -> ApiResult<Removed> {
        let path = format!("/v1/cluster/members/{id}/remove");
        self.call(self.request(Method::POST, &path)).await
    }

    pub async fn promote_member(&self, id: u64) -> ApiResult<Promoted> {
        let path = format!("/v1/cluster/members/{id}/promote");
        self.call(self.request(Method::POST, &path)).await
    }

    pub async fn transfer_leader(&self, to: u64) -> ApiResult<Leader> {
        self.post("/v1/cluster/leader/transfer", &TransferRequest { to })
            .await
    }

    pub async fn snapshot(&self) -> ApiResult<SnapshotTaken> {
        self.call(self.request(Method::POST, "/v1/cluster/snapshot"))
            .await
    }

    /// A new join token, valid for `ttl_ms` (the server's default when `None`).
    pub async fn create_token(&self, ttl_ms: Option<u64>) -> ApiResult<TokenCreated> {
        self.post("/v1/cluster/tokens", &TokenRequest { ttl_ms })
            .await
    }

    pub async fn tokens(&self) -> ApiResult<JoinTokens> {
        self.get("/v1/cluster/tokens").await
    }

    pub async fn revoke_token(&self, id: &str) -> ApiResult<TokenRevoked> {
        self.delete(&format!("/v1/cluster/tokens/{}", segment(id)))
            .await
    }

    /// `GET /v1/cluster/backup`: the answer, to read as a stream (`Response::chunk`).
    pub async fn backup(&self) -> ApiResult<Response> {
        self.send(self.request(Method::GET, "/v1/cluster/backup"))
            .await
    }
}

pub(super) fn header_u64(resp: &Response, name: &str) -> Option<u64> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
