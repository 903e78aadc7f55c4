//! The API's one error type, mapped to the contract's status and code in one place.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use raft::command::{CacheResult, ChannelResult, KvResult, LockResult, QueueResult, SessionResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use transport::ServiceError;

/// Every `error.code` the server sends, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is malformed or a value is out of range; nothing was applied.
    BadRequest,
    /// 401: no token, or one that is malformed, unknown, deleted or expired
    /// (`WWW-Authenticate: Bearer`).
    Unauthenticated,
    /// 403: the token's policies do not allow the request (`resource` and `access` say what
    /// is missing), or the cluster refused it (e.g. a removed or unknown node).
    Forbidden,
    /// 404: no such key, lock, session, job, schedule, channel, member, token or route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: a compare, fence or lease did not hold, or the lock is held (`reason`,
    /// `current_revision`, `current_fence`, `current_lease`, `holder` tell which).
    Conflict,
    /// 409: history after the requested revision was compacted away (WebSocket watch).
    Compacted,
    /// 408: the request's body did not arrive within `api.body_read_timeout_ms`; nothing was
    /// applied.
    RequestTimeout,
    /// 413: the body or value is over its limit (`limit`).
    TooLarge,
    /// 422: the Idempotency-Key was first used for a different request.
    IdempotencyMismatch,
    /// 429: a replicated bound was reached; nothing was applied (Retry-After).
    RateLimited,
    /// 500: a defect: the write answered something the request does not expect.
    Internal,
    /// 503: no leader, not ready, or overloaded; nothing was applied (Retry-After).
    Unavailable,
    /// 504: no answer in time; the outcome is unknown.
    Timeout,
    /// WebSocket only: the connection's send queue passed `limit_bytes` (close code 1008).
    SlowConsumer,
    /// WebSocket only: the server is shutting down (close code 1001).
    GoingAway,
    /// WebSocket only: nothing arrived from the client (no message, no pong) for
    /// `ws.idle_timeout_ms` (`limit_ms`; close code 1001).
    IdleTimeout,
    /// 507: the storage quota is reached (the NOSPACE alarm) and the write would grow the
    /// state (`used_bytes`, `quota_bytes`); nothing was applied. Reads and deletes go on.
    QuotaExceeded,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::Compacted,
        ErrorCode::TooLarge,
        ErrorCode::IdempotencyMismatch,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::SlowConsumer,
        ErrorCode::GoingAway,
        ErrorCode::RequestTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::QuotaExceeded,
    ];

    /// The code as it appears in `error.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Compacted => "compacted",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::IdempotencyMismatch => "idempotency_mismatch",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::GoingAway => "going_away",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::QuotaExceeded => "quota_exceeded",
        }
    }

    /// The HTTP status an answer with this code has. The WebSocket-only codes never reach
    /// HTTP; they carry the status closest to their meaning.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict | ErrorCode::Compacted => StatusCode::CONFLICT,
            ErrorCode::RequestTimeout | ErrorCode::IdleTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::RateLimited | ErrorCode::SlowConsumer => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable | ErrorCode::GoingAway => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answers any route that waits on the cluster may give besides its own, documented once.
#[derive(utoipa::IntoResponses)]
pub enum Unsettled {
    /// No leader, not ready or overloaded; nothing was applied (Retry-After).
    #[response(
        status = 503,
        description = "unavailable: no leader, not ready or overloaded; nothing was applied (Retry-After)"
    )]
    Unavailable(ErrorBody),
    /// No answer in time; the outcome is unknown.
    #[response(
        status = 504,
        description = "timeout: no answer in time; the outcome is unknown"
    )]
    Timeout(ErrorBody),
}

/// `bad_request`, documented once for the routes whose refusal needs no more words.
#[derive(utoipa::IntoResponses)]
pub enum BadRequest {
    #[response(
        status = 400,
        description = "bad_request: malformed request or value out of range; nothing was applied"
    )]
    BadRequest(ErrorBody),
}

/// `too_large`: a body or value over its size limit.
#[derive(utoipa::IntoResponses)]
pub enum TooLarge {
    #[response(
        status = 413,
        description = "too_large: over the size limit (error.limit)"
    )]
    TooLarge(ErrorBody),
}

/// `not_found`: no such lock, semaphore, session, job, queue or member.
#[derive(utoipa::IntoResponses)]
pub enum NotFound {
    #[response(status = 404, description = "not_found")]
    NotFound(ErrorBody),
}

/// The answers any write may give besides its own, documented once: an `Idempotency-Key`
/// first used for another request, and those of [`Unsettled`].
#[derive(utoipa::IntoResponses)]
pub enum WriteFailures {
    #[response(
        status = 422,
        description = "idempotency_mismatch: this Idempotency-Key was first used for a different request"
    )]
    IdempotencyMismatch(ErrorBody),
    #[response(
        status = 507,
        description = "quota_exceeded: the storage quota is reached (NOSPACE alarm) and the write would grow the state (used_bytes, quota_bytes); nothing was applied"
    )]
    QuotaExceeded(ErrorBody),
    #[response(
        status = 503,
        description = "unavailable: no leader, not ready or overloaded; nothing was applied (Retry-After)"
    )]
    Unavailable(ErrorBody),
    #[response(
        status = 504,
        description = "timeout: no answer in time; the outcome is unknown"
    )]
    Timeout(ErrorBody),
}

/// The body of every error answer (the `Error` schema of `/v1/openapi.json`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `code` and `message`, plus the fields some errors add.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// conflict: `stale_fence`, `stale_lease` or `compacted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// conflict on a key compare: the key's revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<u64>,
    /// conflict, reason stale_fence: the lock's fence, null when it is not held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_fence: Option<u64>,
    /// conflict, reason stale_lease: the job's current lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_lease: Option<u64>,
    /// conflict on a lock: its holder (null: not granted within wait_ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// reason compacted, or code compacted: history starts after this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<u64>,
    /// bad_request: the field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// too_large: the limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Fields a primitive adds to its own refusals, documented with its routes (a semaphore's
    /// `free`, `held`, `waiting`, `capacity`).
    #[serde(flatten)]
    pub more: BTreeMap<String, Value>,
}

/// An error answer: `{"error": {"code", "message", ...extra}}` with the code's status.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }
}

/// `conflict`, with no more words: a change of the cluster's members that Raft refused.
#[derive(utoipa::IntoResponses)]
pub enum Conflict {
    #[response(status = 409, description = "conflict")]
    Conflict(ErrorBody),
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotLeader { .. } => {
                ApiError::unavailable("no leader is known; nothing was applied")
            }
            ServiceError::Unavailable(m) => ApiError::unavailable(m),
            ServiceError::Unknown(m) => ApiError::timeout(m),
            ServiceError::Refused(m) => ApiError::new(ErrorCode::Forbidden, m),
            ServiceError::NotFound(m) => ApiError::not_found(m),
            ServiceError::Conflict(m) => ApiError::conflict(m),
            ServiceError::Invalid(m) => ApiError::bad_request(m),
        }
    }
}

/// A read of a key the state knows but could not serve: `unavailable` (retry) while a snapshot
/// is installed under the state, `internal` when the store failed.
impl From<raft::state::KvReadError> for ApiError {
    fn from(e: raft::state::KvReadError) -> Self {
        use raft::state::KvReadError;
        match e {
            KvReadError::Replaced => {
                ApiError::unavailable("this node is installing a snapshot; try again")
            }
            KvReadError::Store(e) => {
                tracing::error!(error = %e, "reading a key's value");
                ApiError::new(ErrorCode::Internal, format!("reading the value: {e}"))
            }
        }
    }
}

impl From<crate::cluster::WriteError> for ApiError {
    fn from(e: crate::cluster::WriteError) -> Self {
        use crate::cluster::WriteError;
        match e {
            WriteError::Service(e) => e.into(),
            WriteError::StaleFence { current } => ApiError::stale_fence(current),
            WriteError::IdempotencyMismatch => ApiError::new(
                ErrorCode::IdempotencyMismatch,
                "this Idempotency-Key was first used for a different request",
            ),
            WriteError::QuotaExceeded {
                used_bytes,
                quota_bytes,
            } => ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "the storage quota is reached (NOSPACE: {used_bytes} of {quota_bytes} bytes, \
                     limits.quota_bytes); delete data to write again"
                ),
            )
            .with("used_bytes", used_bytes)
            .with("quota_bytes", quota_bytes),
            WriteError::LimitReached { limit, max, what } => ApiError::limited(format!(
                "the cluster already holds {max} {what}, the most {limit} allows; \
                 delete some first"
            ))
            .with("limit", max)
            .with("setting", limit),
        }
    }
}

impl ApiError {
    /// 409: a fence that is not the lock's current one.
    pub fn stale_fence(current: Option<u64>) -> Self {
        ApiError::conflict(match current {
            Some(f) => format!("stale fence: the lock's current fence is {f}"),
            None => "stale fence: the lock is not held".to_string(),
        })
        .with("reason", "stale_fence")
        .with("current_fence", current)
    }

    /// 429: a replicated bound was reached; nothing was applied.
    pub fn limited(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::RateLimited, message)
    }

    /// The JSON body: `{"error": {"code", "message", ...extra}}`.
    pub fn body(self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), self.code.as_str().into());
        error.insert("message".into(), self.message.into());
        error.extend(self.extra);
        json!({ "error": error })
    }
}

/// `conflict` of a write whose fence is not current: a semaphore lease's, or the `fence=LOCK:F`
/// of a cache write.
#[derive(utoipa::IntoResponses)]
pub enum StaleFence {
    #[response(
        status = 409,
        description = "conflict: stale fence (reason stale_fence)"
    )]
    StaleFence(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A rate limit says when its bucket has room again; other refusals: in a second.
        let retry_after_s = self
            .extra
            .get("retry_after_ms")
            .and_then(Value::as_u64)
            .map_or(1, |ms| ms.div_ceil(1000).max(1));
        let mut resp = (status, axum::Json(self.body())).into_response();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// An answer that is a success of the primitive but not the one this request expects: the
/// request and its answer disagree, which is a defect, not a client error.
fn unexpected(answer: impl std::fmt::Debug) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("the write answered {answer:?}"),
    )
}

/// `conflict` of a key's write: its compare or its fence did not hold.
#[derive(utoipa::IntoResponses)]
pub enum CompareFailed {
    #[response(
        status = 409,
        description = "conflict: the compare (error.current_revision) or the fence (reason stale_fence) failed"
    )]
    CompareFailed(ErrorBody),
}

impl From<KvResult> for ApiError {
    fn from(r: KvResult) -> Self {
        match r {
            KvResult::Conflict { current_revision } => ApiError::conflict(format!(
                "compare failed: the key's revision is {current_revision}"
            ))
            .with("current_revision", current_revision),
            other => unexpected(other),
        }
    }
}

/// `conflict` of a lock's renew or release with a fence that is not the holder's.
#[derive(utoipa::IntoResponses)]
pub enum StaleLockFence {
    #[response(
        status = 409,
        description = "conflict: stale fence (reason stale_fence, current_fence)"
    )]
    StaleFence(ErrorBody),
}

impl From<LockResult> for ApiError {
    fn from(r: LockResult) -> Self {
        match r {
            LockResult::Held { holder } | LockResult::Queued { holder } => {
                ApiError::conflict(format!("lock is held by {holder:?}")).with("holder", holder)
            }
            LockResult::StaleFence { current } => ApiError::stale_fence(current),
            LockResult::NotFound => ApiError::not_found("no such lock"),
            LockResult::Limited(m) => ApiError::limited(m),
            other => unexpected(other),
        }
    }
}

impl From<SessionResult> for ApiError {
    fn from(r: SessionResult) -> Self {
        match r {
            SessionResult::NotFound => ApiError::not_found("no such session"),
            SessionResult::Rejected(m) => ApiError::bad_request(m),
            other => unexpected(other),
        }
    }
}

impl From<CacheResult> for ApiError {
    fn from(r: CacheResult) -> Self {
        unexpected(r)
    }
}

/// `conflict` of a job's ack, nack or extend with a lease that is not the job's current one.
#[derive(utoipa::IntoResponses)]
pub enum StaleLease {
    #[response(
        status = 409,
        description = "conflict: stale lease (reason stale_lease, current_lease)"
    )]
    StaleLease(ErrorBody),
}

impl From<QueueResult> for ApiError {
    fn from(r: QueueResult) -> Self {
        match r {
            QueueResult::StaleLease { current } => ApiError::conflict(
                "stale lease: the job was offered again or finished since this claim",
            )
            .with("reason", "stale_lease")
            .with("current_lease", current),
            QueueResult::NotFound => ApiError::not_found("not found"),
            QueueResult::Rejected(m) => ApiError::bad_request(m),
            QueueResult::NotIdle { jobs, schedules } => ApiError::conflict(format!(
                "the queue holds {jobs} jobs and {schedules} schedules; only an idle queue \
                 is deleted (ack or delete its jobs, remove its schedules)"
            ))
            .with("reason", "not_idle"),
            other => unexpected(other),
        }
    }
}

impl From<ChannelResult> for ApiError {
    fn from(r: ChannelResult) -> Self {
        match r {
            ChannelResult::Limited(m) => ApiError::limited(m),
            ChannelResult::NotIdle { present, retained } => ApiError::conflict(format!(
                "{present} clients are present and {retained} events retained on the channel; \
                 only an idle channel is deleted (its retention drops events by age)"
            ))
            .with("reason", "not_idle"),
            other => unexpected(other),
        }
    }
}

/// The innermost cause of `e` as text (`Connection refused (os error 111)` rather than the
/// client's wrapper around it): what a health check's output and a gateway error show.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn codes_serialize_as_their_names() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert!(seen.insert(c), "{c} twice in ALL");
        }
    }
}
