//! Cluster operations: remove or promote a member, transfer leadership, take a snapshot.
//!
//! They change Raft itself, so they run on the leader (`Cluster::admin`): any other node
//! forwards them there over the cluster's QUIC connection, as it forwards writes. Also here,
//! and served by the node that receives them: the backup stream and join tokens.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft::NodeId;
use transport::{AdminDone, AdminOp};

use super::model::{
    JoinTokens, Leader, Promoted, Removed, SnapshotTaken, StateDigest, TokenCreated, TokenRequest,
    TokenRevoked, TransferRequest,
};
use super::{json_body_limit, JsonBody, PathParams, St};
use crate::audit::Who;
use crate::error::{
    ApiError, ApiResult, BadRequest, Conflict, ErrorCode, NotFound, TooLarge, Unsettled,
};
use serde_json::{json, Value};

/// One member that may take clients, with its load.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema, PartialEq)]
pub struct NodeLoad {
    pub id: NodeId,
    /// Where clients reach its API.
    pub api_addr: String,
    /// Requests in flight plus WebSocket connections: what clients are routed by.
    pub load: u64,
    pub inflight_requests: u64,
    pub websocket_connections: u64,
    pub load_avg_1m: Option<f32>,
}

/// `GET /v1/cluster/route`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RouteTable {
    /// Least loaded first.
    pub nodes: Vec<NodeLoad>,
}

/// The members that may take clients, least loaded first
#[utoipa::path(
    get,
    path = "/v1/cluster/route",
    description = "This node and the members its gossip sees alive (metadata at most 3 s old). Clients connect to the first; a node above api.move_clients_above sends new WebSockets and long-poll claims to a less loaded one. Any valid token may read it.",
    responses((status = 200, description = "the members by load", body = RouteTable))
)]
pub async fn route(State(st): St) -> Json<RouteTable> {
    let nodes = st
        .cluster
        .route_table()
        .into_iter()
        .map(|(id, m)| NodeLoad {
            id,
            load: m.load(),
            api_addr: m.api_addr,
            inflight_requests: m.inflight_requests,
            websocket_connections: m.websocket_connections,
            load_avg_1m: m.load_avg_1m,
        })
        .collect();
    Json(RouteTable { nodes })
}

/// The `{id}` of a member's routes: the node id, read from the path and listed in the API
/// reference.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct MemberId {
    /// node id
    id: u64,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for MemberId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let PathParams(id) = PathParams::<String>::from_request_parts(parts, state).await?;
        let id = id
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{id:?} is not a node id")))?;
        Ok(MemberId { id })
    }
}

/// Runs `op`, a removal or a promotion, on the leader; once it answers that it did it,
/// records `event` for the member. The member's id.
async fn change_member(
    st: &super::AppState,
    who: &Who,
    op: AdminOp,
    event: &str,
) -> ApiResult<NodeId> {
    let done = st.cluster.admin(op.clone()).await?;
    match (op, done) {
        (AdminOp::RemoveMember(_), AdminDone::Removed(id))
        | (AdminOp::PromoteMember(_), AdminDone::Promoted(id)) => {
            who.record(&st.cluster, event, json!({ "member": id }));
            Ok(id)
        }
        (_, other) => Err(unexpected(other)),
    }
}

/// Remove a voter or learner
#[utoipa::path(
    post,
    path = "/v1/cluster/members/{id}/remove",
    description = "Runs on the leader; another node forwards it there. The last voter cannot be removed.",
    params(MemberId),
    responses((status = 200, description = "removed", body = Removed), BadRequest, NotFound, Conflict, Unsettled)
)]
pub async fn remove(State(st): St, who: Who, member: MemberId) -> ApiResult<Json<Removed>> {
    let op = AdminOp::RemoveMember(member.id);
    let removed = change_member(&st, &who, op, "member_removed").await?;
    Ok(Json(Removed { removed }))
}

/// Make a learner a voter
#[utoipa::path(
    post,
    path = "/v1/cluster/members/{id}/promote",
    params(MemberId),
    responses((status = 200, description = "promoted", body = Promoted), BadRequest, NotFound, Conflict, Unsettled)
)]
pub async fn promote(State(st): St, who: Who, member: MemberId) -> ApiResult<Json<Promoted>> {
    let op = AdminOp::PromoteMember(member.id);
    let promoted = change_member(&st, &who, op, "member_promoted").await?;
    Ok(Json(Promoted { promoted }))
}

/// Hand leadership to another voter and wait until it leads
#[utoipa::path(
    post,
    path = "/v1/cluster/leader/transfer",
    request_body = TransferRequest,
    responses((status = 200, description = "the new leader", body = Leader), BadRequest, Unsettled)
)]
pub async fn transfer(
    State(st): St,
    who: Who,
    JsonBody(body): JsonBody<TransferRequest>,
) -> ApiResult<Json<Leader>> {
    match st.cluster.admin(AdminOp::TransferLeader(body.to)).await? {
        AdminDone::Leader(leader_id) => {
            who.record(
                &st.cluster,
                "leader_transferred",
                json!({ "leader": leader_id }),
            );
            Ok(Json(Leader { leader_id }))
        }
        other => Err(unexpected(other)),
    }
}

/// Build a snapshot on the leader now and wait for it (up to 60 s)
#[utoipa::path(
    post,
    path = "/v1/cluster/snapshot",
    description = "The log behind a snapshot is purged, keeping the last min(snapshot_every_entries, 1000) entries. When the current snapshot already covers every applied entry, it is the answer at once (completed: true).",
    responses((status = 200, description = "the snapshot", body = SnapshotTaken), Unsettled)
)]
pub async fn snapshot(State(st): St) -> ApiResult<Json<SnapshotTaken>> {
    match st.cluster.admin(AdminOp::Snapshot).await? {
        AdminDone::Snapshot { index, completed } => Ok(Json(SnapshotTaken {
            snapshot_index: index,
            completed,
        })),
        other => Err(unexpected(other)),
    }
}

/// An operation answered with another operation's result: a defect, not a client error.
fn unexpected(done: AdminDone) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("the operation answered {done:?}"),
    )
}

/// `GET /v1/cluster/digest`: a digest of this node's whole state (every primitive), to tell
/// whether members hold the same state: compare digests of the same applied index.
#[utoipa::path(
    get,
    path = "/v1/cluster/digest",
    summary = "A digest of this node's whole state",
    description = "The SHA-256 of every record of this node's applied state (every primitive), read from one RocksDB snapshot, with the applied index it covers. Members at the same applied index answer the same digest. It reads the whole state: meant for checks, not for every request.",
    responses((status = 200, description = "the digest", body = StateDigest))
)]
pub async fn digest(State(st): St) -> ApiResult<Json<StateDigest>> {
    let db = st.db.clone();
    let node_id = st.cluster.id;
    let made = st
        .requests
        .spawn_blocking(move || crate::backup::digest(&db))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let (summary, sha) =
        made.map_err(|e| ApiError::new(ErrorCode::Internal, format!("reading the state: {e}")))?;
    Ok(Json(StateDigest {
        node_id,
        applied_index: summary.last_applied_index,
        revision: summary.revision,
        records: summary.records,
        sha256: hex::encode(sha),
    }))
}

/// `GET /v1/cluster/backup`: a consistent copy of the state as a checksummed stream (format in
/// `node::backup`). It is read from this node after a read barrier, so it holds every write
/// acknowledged before the request, and from one RocksDB snapshot, so it is one applied point.
#[utoipa::path(
    get,
    path = "/v1/cluster/backup",
    summary = "Stream a consistent backup",
    description = "Every write acknowledged before the request, read from one RocksDB snapshot of the answering node after a read barrier. Format: magic `STACKD-BACKUP\\n`, a JSON header, length-prefixed state records, a JSON trailer {records, last_applied_index, revision, compact_revision} and the SHA-256 of everything before it. A failure mid-stream breaks the transfer rather than ending it short. `stackd restore` loads it into an empty data dir.",
    responses((status = 200, description = "the backup stream", content_type = "application/octet-stream", body = Vec<u8>), Unsettled)
)]
pub async fn backup(State(st): St, who: Who) -> ApiResult<Response> {
    st.cluster.read_barrier().await?;
    who.record(&st.cluster, "backup_downloaded", Value::Null);
    let header = crate::backup::Header {
        format: 1,
        cluster_id: st.cluster.state().meta.cluster_id.clone(),
        node_id: st.cluster.id,
        created_ms: crate::cluster::now_ms(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let db = st.db.clone();
    // Tracked with the requests: shutdown waits for the stream (it ends once the client is gone).
    st.requests.spawn_blocking(move || {
        let result =
            crate::backup::write(&db, &header, |chunk| tx.blocking_send(Ok(chunk)).is_ok());
        match result {
            Ok(summary) => tracing::info!(
                records = summary.records,
                revision = summary.revision,
                "backup streamed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "backup failed");
                // Ends the body with an error, so the client sees a broken transfer rather
                // than a short file.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream_from(rx));
    Ok((
        [
            ("content-type", "application/octet-stream"),
            (
                "content-disposition",
                "attachment; filename=\"stackd-backup.bin\"",
            ),
        ],
        body,
    )
        .into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---- Join tokens ----

/// Longest lifetime of a created join token: one year.
pub const MAX_TOKEN_TTL_MS: u64 = 365 * 24 * 3600 * 1000;
/// Lifetime of a created join token when none is given: 24 hours.
pub const DEFAULT_TOKEN_TTL_MS: u64 = 24 * 3600 * 1000;

/// `POST /v1/cluster/tokens`: a new join token, valid for `ttl_ms`.
#[utoipa::path(
    post,
    path = "/v1/cluster/tokens",
    summary = "Create a join token for `stackd serve --join … --token`",
    description = "It admits nodes until expires_at_ms (ms since the Unix epoch). The cluster keeps only its SHA-256.",
    request_body = TokenRequest,
    responses(
        (status = 201, description = "the token; id is the first 16 hex digits of its SHA-256", body = TokenCreated),
        BadRequest, TooLarge, Unsettled,
    )
)]
pub async fn create_token(State(st): St, who: Who, body: Body) -> ApiResult<Response> {
    // An empty body takes the defaults, so this is not a `JsonBody`.
    let limit = json_body_limit(&st);
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::too_large(format!("body is over the {limit}-byte limit")).with("limit", limit)
    })?;
    let body: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?
    };
    let ttl_ms = body.ttl_ms.unwrap_or(DEFAULT_TOKEN_TTL_MS);
    if ttl_ms == 0 || ttl_ms > MAX_TOKEN_TTL_MS {
        return Err(ApiError::bad_request(format!(
            "ttl_ms must be between 1 and {MAX_TOKEN_TTL_MS}"
        )));
    }
    let (token, id, expires_at_ms) = st.cluster.create_join_token(ttl_ms).await?;
    who.record(
        &st.cluster,
        "join_token_created",
        json!({ "id": id, "expires_at_ms": expires_at_ms }),
    );
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token,
            id,
            expires_at_ms,
        }),
    )
        .into_response())
}

/// `GET /v1/cluster/tokens`: the join tokens (by id) that admit nodes, and those revoked.
#[utoipa::path(
    get,
    path = "/v1/cluster/tokens",
    summary = "The join tokens by id, from this node's applied state, and those revoked",
    responses((status = 200, description = "the tokens", body = JoinTokens))
)]
pub async fn list_tokens(State(st): St) -> ApiResult<Json<JoinTokens>> {
    serde_json::from_value(st.cluster.join_tokens())
        .map(Json)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("join tokens: {e}")))
}

/// `DELETE /v1/cluster/tokens/{id}`: revokes a join token, the founding one included.
#[utoipa::path(
    delete,
    path = "/v1/cluster/tokens/{id}",
    summary = "Revoke a join token (the founding one included)",
    description = "Joins with it are refused from then on; members that joined with it stay.",
    params(
        ("id" = String, Path, pattern = "^[0-9a-f]{16}$", description = "token id: 16 lowercase hex digits"),
    ),
    responses((status = 200, description = "revoked", body = TokenRevoked), BadRequest, NotFound, Unsettled)
)]
pub async fn revoke_token(
    State(st): St,
    who: Who,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<TokenRevoked>> {
    if id.len() != 16
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::bad_request(
            "a token id is 16 lowercase hex digits (see GET /v1/cluster/tokens)",
        ));
    }
    if st.cluster.revoke_join_token(&id).await? {
        who.record(&st.cluster, "join_token_revoked", json!({ "id": id }));
        Ok(Json(TokenRevoked { id, revoked: true }))
    } else {
        Err(ApiError::not_found(format!(
            "no join token {id} (a revoked one cannot be revoked again)"
        )))
    }
}
