//! The API's one error type, mapped to the contract's status and code in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use raft::command::{CacheResult, ChannelResult, KvResult, LockResult, QueueResult, SessionResult};
use serde_json::{json, Map, Value};
use transport::ServiceError;

/// An error answer: `{"error": {"code", "message", ...extra}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotLeader { .. } => {
                ApiError::unavailable("no leader is known; nothing was applied")
            }
            ServiceError::Unavailable(m) => ApiError::unavailable(m),
            ServiceError::Unknown(m) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", m),
            ServiceError::Refused(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            ServiceError::NotFound(m) => ApiError::not_found(m),
            ServiceError::Conflict(m) => ApiError::conflict(m),
            ServiceError::Invalid(m) => ApiError::bad_request(m),
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
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                "this Idempotency-Key was first used for a different request",
            ),
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
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
    }

    /// The JSON body: `{"error": {"code", "message", ...extra}}`.
    pub fn body(self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        error.extend(self.extra);
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut resp = (status, axum::Json(self.body())).into_response();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// An answer that is a success of the primitive but not the one this request expects: the
/// request and its answer disagree, which is a defect, not a client error.
fn unexpected(answer: impl std::fmt::Debug) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the write answered {answer:?}"),
    )
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
            other => unexpected(other),
        }
    }
}

impl From<ChannelResult> for ApiError {
    fn from(r: ChannelResult) -> Self {
        match r {
            ChannelResult::Limited(m) => ApiError::limited(m),
            other => unexpected(other),
        }
    }
}
