//! `/v1/sessions`: user sessions with JSON data and a sliding expiry.

use std::collections::HashMap;

use axum::extract::{Extension, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use raft::command::{IdemKey, SessionCmd, SessionResult};
use raft::state::SessionEntry;
use serde_json::{Map, Value};

use super::model::{
    CreateSessionRequest, Deleted, DeletedCount, Session, SessionCreated, SessionList,
    UpdateSessionRequest,
};
use super::{
    check_ms, params, read_barrier_unless_stale, remaining_ms, validate_name, Idempotency,
    IdempotencyKey, JsonBody, Name, NamedWrite, ReadConsistency, St,
};
use crate::auth::{Caller, Op, Resource};
use crate::error::{ApiError, ApiResult, BadRequest, NotFound, TooLarge, Unsettled, WriteFailures};

/// The `{id}` of a session's routes, as the API reference lists it (read by [`Name`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct SessionId {
    /// session id
    #[allow(dead_code)]
    id: String,
}

/// Session lifetime when `ttl_ms` is not given: 30 minutes.
pub const SESSION_TTL_MS_DEFAULT: u64 = 30 * 60 * 1000;
/// Longest session lifetime: 30 days.
pub const SESSION_TTL_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// Most sessions listed for one user.
const LIST_MAX: usize = 1000;

fn data_text(st: &super::AppState, data: &Map<String, Value>) -> ApiResult<String> {
    let text = Value::Object(data.clone()).to_string();
    let limit = st.cluster.config().limits.max_value_bytes;
    if text.len() > limit {
        return Err(
            ApiError::too_large(format!("session data is over the {limit}-byte limit"))
                .with("limit", limit),
        );
    }
    Ok(text)
}

/// 128 random bits, URL-safe: drawn here, on the node that proposes, and carried in the log.
fn new_session_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

fn session(id: &str, s: &SessionEntry, now: u64) -> Session {
    Session {
        id: id.to_string(),
        user: s.user.clone(),
        data: serde_json::from_str(&s.data).unwrap_or(Value::Null),
        created_at_ms: s.created_at_ms,
        expires_in_ms: remaining_ms(s.expires_at_ms, now),
        ttl_ms: s.ttl_ms,
    }
}

/// Create a session (id: 128 random bits, URL-safe base64)
#[utoipa::path(
    post,
    path = "/v1/sessions",
    params(IdempotencyKey),
    request_body = CreateSessionRequest,
    responses((status = 201, description = "created", body = SessionCreated), BadRequest, TooLarge, WriteFailures)
)]
pub async fn create(
    State(st): St,
    Extension(caller): Extension<Caller>,
    Idempotency(idem): Idempotency,
    JsonBody(body): JsonBody<CreateSessionRequest>,
) -> ApiResult<(StatusCode, Json<SessionCreated>)> {
    validate_name("user", &body.user)?;
    caller.check(&st, Resource::Sessions, &body.user, Op::Write)?;
    let ttl_ms = check_ms(
        "ttl_ms",
        body.ttl_ms.unwrap_or(SESSION_TTL_MS_DEFAULT),
        SESSION_TTL_MS_MAX,
    )?;
    let data = data_text(&st, &body.data.unwrap_or_default())?;
    let command = SessionCmd::Create {
        id: new_session_id(),
        user: body.user,
        data,
        ttl_ms,
    };
    match crate::service::propose(&st.cluster, command, idem).await? {
        SessionResult::Created { id, expires_in_ms } => Ok((
            StatusCode::CREATED,
            Json(SessionCreated { id, expires_in_ms }),
        )),
        other => Err(other.into()),
    }
}

/// A live session
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    params(SessionId, ReadConsistency),
    responses((status = 200, description = "the session", body = Session), BadRequest, NotFound, Unsettled)
)]
pub async fn get(State(st): St, Name(id): Name, RawQuery(q): RawQuery) -> ApiResult<Json<Session>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    current(&st, &id)
}

/// The session as this node holds it (after a read barrier, or after a write it applied).
fn current(st: &super::AppState, id: &str) -> ApiResult<Json<Session>> {
    let state = st.cluster.state();
    match state.session(id) {
        Some(s) => Ok(Json(session(id, s, state.meta.now_ms))),
        None => Err(ApiError::not_found("no such session (or it expired)")),
    }
}

/// Slide the expiry to ttl_ms from now
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/touch",
    params(SessionId, IdempotencyKey),
    responses((status = 200, description = "the session", body = Session), BadRequest, NotFound, WriteFailures)
)]
pub async fn touch(
    State(st): St,
    Name(id): Name,
    Idempotency(idem): Idempotency,
) -> ApiResult<Json<Session>> {
    slide(&st, SessionCmd::Touch { id: id.clone() }, &id, idem).await
}

/// Proposes a touch or an update of session `id`; the session as it then is.
async fn slide(
    st: &super::AppState,
    command: SessionCmd,
    id: &str,
    idem: Option<IdemKey>,
) -> ApiResult<Json<Session>> {
    match crate::service::propose(&st.cluster, command, idem).await? {
        SessionResult::Alive { .. } => current(st, id),
        SessionResult::NotFound => Err(ApiError::not_found("no such session (or it expired)")),
        other => Err(other.into()),
    }
}

/// Merge data (RFC 7396: null removes a field) and slide the expiry
#[utoipa::path(
    patch,
    path = "/v1/sessions/{id}",
    params(SessionId, IdempotencyKey),
    request_body = UpdateSessionRequest,
    responses((status = 200, description = "the session", body = Session), BadRequest, NotFound, TooLarge, WriteFailures)
)]
pub async fn update(
    State(st): St,
    req: NamedWrite<UpdateSessionRequest>,
) -> ApiResult<Json<Session>> {
    let patch = data_text(&st, &req.body.data)?;
    let command = SessionCmd::Update {
        id: req.name.clone(),
        patch,
    };
    slide(&st, command, &req.name, req.idem).await
}

/// End the session
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    params(SessionId, IdempotencyKey),
    responses((status = 200, description = "ended", body = Deleted), BadRequest, NotFound, WriteFailures)
)]
pub async fn delete(
    State(st): St,
    Name(id): Name,
    Idempotency(idem): Idempotency,
) -> ApiResult<Json<Deleted>> {
    match crate::service::propose(&st.cluster, SessionCmd::Delete { id }, idem).await? {
        SessionResult::Deleted(_) => Ok(Json(Deleted { deleted: true })),
        SessionResult::NotFound => Err(ApiError::not_found("no such session (or it expired)")),
        other => Err(other.into()),
    }
}

/// The required, checked `user` query parameter.
fn user_param(p: &HashMap<String, String>) -> ApiResult<String> {
    let Some(user) = p.get("user") else {
        return Err(
            ApiError::bad_request("the user query parameter is required").with("field", "user"),
        );
    };
    validate_name("user", user)?;
    Ok(user.clone())
}

/// A user's sessions (at most 1000)
#[utoipa::path(
    get,
    path = "/v1/sessions",
    params(
        ("user" = String, Query, description = "the user"),
        ReadConsistency,
    ),
    responses((status = 200, description = "the sessions", body = SessionList), BadRequest, Unsettled)
)]
pub async fn list(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<SessionList>> {
    let p = params(q, &["user", "consistency"])?;
    let user = user_param(&p)?;
    read_barrier_unless_stale(&st, &p).await?;
    let state = st.cluster.state();
    let now = state.meta.now_ms;
    let sessions = state
        .sessions_of(&user)
        .iter()
        .take(LIST_MAX)
        .map(|(id, s)| session(id, s, now))
        .collect();
    Ok(Json(SessionList { sessions }))
}

/// Log a user out everywhere
#[utoipa::path(
    delete,
    path = "/v1/sessions",
    params(
        ("user" = String, Query, description = "the user"),
        IdempotencyKey,
    ),
    responses((status = 200, description = "how many sessions ended", body = DeletedCount), BadRequest, WriteFailures)
)]
pub async fn delete_user(
    State(st): St,
    RawQuery(q): RawQuery,
    Idempotency(idem): Idempotency,
) -> ApiResult<Json<DeletedCount>> {
    let user = user_param(&params(q, &["user"])?)?;
    match crate::service::propose(&st.cluster, SessionCmd::DeleteUser { user }, idem).await? {
        SessionResult::Deleted(n) => Ok(Json(DeletedCount { deleted: n })),
        other => Err(other.into()),
    }
}

// ---- Typed client ----

/// The calls of these routes in the typed client ([`super::client::Client`]).
mod typed {
    use super::{
        CreateSessionRequest, Deleted, DeletedCount, Map, Session, SessionCreated, SessionList,
        UpdateSessionRequest,
    };
    use crate::api::client::{segment, ApiResult, Client, Path};
    use reqwest::Method;
    use serde_json::Value;

    impl Client {
        fn session_path(id: &str, op: &str) -> String {
            format!("/v1/sessions/{}{op}", segment(id))
        }

        pub async fn session_create(
            &self,
            req: &CreateSessionRequest,
        ) -> ApiResult<SessionCreated> {
            self.post("/v1/sessions", req).await
        }

        pub async fn session_get(&self, id: &str) -> ApiResult<Session> {
            self.get(&self.read(Path::new(Self::session_path(id, ""))))
                .await
        }

        pub async fn session_touch(&self, id: &str) -> ApiResult<Session> {
            let req = self.request(Method::POST, Self::session_path(id, "/touch"));
            self.call(req).await
        }

        pub async fn session_update(
            &self,
            id: &str,
            data: Map<String, Value>,
        ) -> ApiResult<Session> {
            let body = UpdateSessionRequest { data };
            self.json(Method::PATCH, &Self::session_path(id, ""), &body)
                .await
        }

        pub async fn session_delete(&self, id: &str) -> ApiResult<Deleted> {
            self.delete(&Self::session_path(id, "")).await
        }

        /// The sessions of `user`.
        pub async fn sessions(&self, user: &str) -> ApiResult<SessionList> {
            let path = Path::new("/v1/sessions".into()).opt("user", Some(user));
            self.get(&self.read(path)).await
        }

        /// Ends every session of `user`.
        pub async fn sessions_delete(&self, user: &str) -> ApiResult<DeletedCount> {
            self.delete(&Path::new("/v1/sessions".into()).opt("user", Some(user)).0)
                .await
        }
    }
}
