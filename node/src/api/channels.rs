//! `/v1/channels`: publish, history and presence. Live delivery is the WebSocket's
//! (`ws.rs`).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use raft::command::{ChannelCmd, ChannelResult};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    idempotency_key, list_limit, params, read_barrier_unless_stale, u64_param, AppState, JsonBody,
    Name, St,
};
use crate::error::{ApiError, ApiResult};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    data: Value,
}

/// The command publishing `data` on `channel`, with the retention configured for its name.
pub(crate) fn publish_command(
    st: &AppState,
    channel: String,
    data: &Value,
) -> ApiResult<ChannelCmd> {
    let data = data.to_string();
    let limit = st.cluster.config.limits.max_value_bytes;
    if data.len() > limit {
        return Err(
            ApiError::too_large(format!("data is over the {limit}-byte limit"))
                .with("limit", limit),
        );
    }
    Ok(ChannelCmd::Publish {
        retention: st.cluster.config.retention_for(&channel),
        channel,
        data,
    })
}

pub async fn publish(
    State(st): St,
    Name(channel): Name,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<Json<Value>> {
    let idem = idempotency_key(&headers)?;
    let command = publish_command(&st, channel, &body.data)?;
    match st.cluster.write(command, idem).await? {
        ChannelResult::Published { offset } => Ok(Json(json!({ "offset": offset }))),
        other => Err(other.into()),
    }
}

pub async fn history(
    State(st): St,
    Name(channel): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["since", "limit", "consistency"])?;
    let since = u64_param(&p, "since")?.unwrap_or(0);
    let limit = list_limit(&p)?;
    read_barrier_unless_stale(&st, &p).await?;
    let h = st
        .cluster
        .state
        .read()
        .expect("state lock")
        .channel_history(&channel, since, limit)
        .ok_or_else(|| ApiError::not_found(format!("no channel {channel:?}")))?;
    let events: Vec<Value> = h
        .events
        .iter()
        .map(|e| {
            json!({
                "offset": e.offset,
                "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
                "ts_ms": e.ts_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "events": events,
        "earliest_offset": h.earliest_offset,
        "latest_offset": h.latest_offset,
    })))
}

pub async fn presence(
    State(st): St,
    Name(channel): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let clients: Vec<Value> = st
        .cluster
        .state
        .read()
        .expect("state lock")
        .presence(&channel)
        .into_iter()
        .map(|c| json!({ "client_id": c.client_id, "user": c.user, "node_id": c.node_id }))
        .collect();
    Ok(Json(json!({ "clients": clients })))
}
