//! Key-value history: reading changes from a past revision, and compacting it.

use axum::extract::{RawQuery, State};
use axum::Json;
use base64::Engine;
use raft::command::{KvCmd, KvResult};
use raft::state::KvEventKind;

use super::model::{ChangeKind, CompactRequest, Compacted, KvChange, KvHistory};
use super::{
    list_limit, params, read_barrier_unless_stale, u64_param, JsonBody, ListLimit, ReadConsistency,
    St,
};
use crate::error::{ApiError, ApiResult, BadRequest, ErrorBody, TooLarge, Unsettled};

/// `GET /v1/history?prefix=P&since_revision=R&limit=N`: changes under `P` after revision `R`
/// (as a watch from `R` replays them), in revision order. A page ends at a revision boundary,
/// and `next_since_revision` continues it. `409` with `compact_revision` when changes after
/// `R` have been compacted away.
#[utoipa::path(
    get,
    path = "/v1/history",
    summary = "Key-value changes after a revision",
    description = "Changes (puts, deletes, expiries) under prefix after since_revision (default 0: all kept history), in revision order (keys in order within one revision); a page ends at a revision boundary, so one revision is never split.",
    params(
        ("prefix" = Option<String>, Query, description = "at most 512 bytes"),
        ("since_revision" = Option<u64>, Query, description = "default 0"),
        ListLimit,
        ReadConsistency,
    ),
    responses(
        (status = 200, description = "a page of changes", body = KvHistory),
        (status = 409, description = "conflict: since_revision is below compact_revision (reason compacted, compact_revision)", body = ErrorBody),
        BadRequest, Unsettled,
    )
)]
pub async fn kv_history(State(st): St, RawQuery(q): RawQuery) -> ApiResult<Json<KvHistory>> {
    let p = params(q, &["prefix", "since_revision", "limit", "consistency"])?;
    let prefix = p.get("prefix").cloned().unwrap_or_default();
    if prefix.len() > 512 {
        return Err(ApiError::bad_request("prefix must be at most 512 bytes"));
    }
    let since = u64_param(&p, "since_revision")?.unwrap_or(0);
    let limit = list_limit(&p)?;
    read_barrier_unless_stale(&st, &p).await?;
    let s = st.cluster.state();
    let compacted = |c: raft::state::Compacted| {
        ApiError::conflict(format!(
            "history at or below revision {} has been compacted",
            c.compact_revision
        ))
        .with("reason", "compacted")
        .with("compact_revision", c.compact_revision)
    };
    let mut events = s
        .kv_events_since(&prefix, since.saturating_add(1), limit + 1)
        .map_err(compacted)?;
    let mut next = None;
    if events.len() > limit {
        // End the page at a revision boundary, so that continuing after its last revision
        // neither skips nor repeats a change; one revision (a transaction) is never split.
        let cut = events[limit].revision;
        events.truncate(limit);
        events.retain(|e| e.revision < cut);
        if events.is_empty() {
            events = s
                .kv_events_since(&prefix, cut, usize::MAX)
                .map_err(compacted)?
                .into_iter()
                .take_while(|e| e.revision == cut)
                .collect();
        }
        next = events.last().map(|e| e.revision);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let items = events
        .iter()
        .map(|e| KvChange {
            event: match e.kind {
                KvEventKind::Put => ChangeKind::Put,
                KvEventKind::Delete => ChangeKind::Delete,
            },
            key: e.key.clone(),
            revision: e.revision,
            value: e.value.as_ref().map(|v| b64.encode(v)),
        })
        .collect();
    Ok(Json(KvHistory {
        events: items,
        next_since_revision: next,
        revision: s.meta.revision,
        compact_revision: s.compact_revision(),
    }))
}

/// `POST /v1/cluster/compact {"revision": R}`: drops history at or below `R` (capped at the
/// current revision) on every node.
#[utoipa::path(
    post,
    path = "/v1/cluster/compact",
    summary = "Drop key-value history at or below a revision on every node",
    description = "The revision is capped at the current one. The leader also compacts by itself, keeping the last --kv-history-revisions (10000) revisions.",
    request_body = CompactRequest,
    responses((status = 200, description = "the new compact revision", body = Compacted), BadRequest, TooLarge, Unsettled)
)]
pub async fn compact(
    State(st): St,
    JsonBody(body): JsonBody<CompactRequest>,
) -> ApiResult<Json<Compacted>> {
    match crate::service::propose(
        &st.cluster,
        KvCmd::Compact {
            revision: body.revision,
        },
        None,
    )
    .await?
    {
        KvResult::Compacted { compact_revision } => Ok(Json(Compacted { compact_revision })),
        other => Err(other.into()),
    }
}
