//! `/v1/channels`: publish, history and presence. Live delivery is the WebSocket's
//! (`ws.rs`).

use axum::extract::{RawQuery, State};
use axum::{Extension, Json};
use raft::command::{ChannelCmd, ChannelResult};
use serde_json::Value;

use super::model::{
    ChannelEvent, ChannelHistory, ChannelList, ChannelSummary, Deleted, Presence, PresentClient,
    PublishRequest, Published,
};
use super::{
    list_limit, name_page, params, read_barrier_unless_stale, u64_param, AppState, IdempotencyKey,
    ListLimit, Name, NamedWrite, ReadConsistency, St,
};
use crate::auth::{Caller, Op, Resource};
use crate::error::{ApiError, ApiResult, BadRequest, ErrorBody, NotFound, TooLarge, Unsettled};

/// The `{name}` of a channel's routes, as the API reference lists it (read by [`Name`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ChannelName {
    /// channel name, 1..=512 bytes of UTF-8, no control characters
    #[allow(dead_code)]
    name: String,
}

/// The command publishing `data` on `channel`, with the retention configured for its name.
pub(crate) fn publish_command(
    st: &AppState,
    channel: String,
    data: &Value,
) -> ApiResult<ChannelCmd> {
    if channel.starts_with('$') {
        return Err(ApiError::bad_request(
            "channel names starting with $ are reserved (the audit log is $audit)",
        ));
    }
    let data = data.to_string();
    let limit = st.cluster.config().limits.max_value_bytes;
    if data.len() > limit {
        return Err(
            ApiError::too_large(format!("data is over the {limit}-byte limit"))
                .with("limit", limit),
        );
    }
    Ok(ChannelCmd::Publish {
        retention: st.cluster.config().retention_for(&channel),
        channel,
        data,
    })
}

/// Publish an event on a channel
#[utoipa::path(
    post,
    path = "/v1/channels/{name}/publish",
    description = "It gets the channel's next offset (offsets start at 1, never repeat). Retention (count and age, by channel-name prefix: --channel-retention, default 1000 events for 24 h) travels with the publish.",
    params(ChannelName, IdempotencyKey),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "published", body = Published),
        (status = 422, description = "idempotency_mismatch: this Idempotency-Key was first used for a different request", body = ErrorBody),
        (status = 429, description = "rate_limited: a replicated bound was reached; nothing was applied (Retry-After)", body = ErrorBody),
        BadRequest, TooLarge, Unsettled,
    )
)]
pub async fn publish(State(st): St, req: NamedWrite<PublishRequest>) -> ApiResult<Json<Published>> {
    let command = publish_command(&st, req.name, &req.body.data)?;
    match crate::service::propose(&st.cluster, command, req.idem).await? {
        ChannelResult::Published { offset } => Ok(Json(Published { offset })),
        other => Err(other.into()),
    }
}

/// Delete an idle channel
#[utoipa::path(
    delete,
    path = "/v1/channels/{name}",
    description = "Forgets a channel with no client present and no event retained (its retention dropped them all), so it no longer counts against limits.max_channels. A later publish starts it again at offset 1: a client resuming from an older offset sees latest_offset below it. A channel that is not idle: 409 conflict, reason not_idle. Needs write access to the channel.",
    params(("name" = String, Path, description = "channel name")),
    responses(
        (status = 200, description = "deleted", body = Deleted),
        (status = 409, description = "conflict: clients are present or events are retained (reason not_idle)", body = ErrorBody),
        BadRequest, NotFound, Unsettled,
    )
)]
pub async fn delete(State(st): St, Name(channel): Name) -> ApiResult<Json<Deleted>> {
    if channel.starts_with('$') {
        return Err(ApiError::bad_request(
            "channel names starting with $ are reserved (the audit log is $audit)",
        ));
    }
    match crate::service::propose(&st.cluster, ChannelCmd::Delete { channel }, None).await? {
        ChannelResult::Deleted => Ok(Json(Deleted { deleted: true })),
        ChannelResult::NotFound => Err(ApiError::not_found("no such channel")),
        other => Err(other.into()),
    }
}

/// Retained events after offset since, oldest first
#[utoipa::path(
    get,
    path = "/v1/channels/{name}/history",
    description = "earliest_offset..=latest_offset is the retained range (earliest = latest + 1 when nothing is retained); since + 1 < earliest_offset means events were trimmed.",
    params(
        ChannelName,
        ("since" = Option<u64>, Query, description = "last offset already seen (default 0)"),
        ListLimit,
        ReadConsistency,
    ),
    responses((status = 200, description = "events", body = ChannelHistory), BadRequest, NotFound, Unsettled)
)]
pub async fn history(
    State(st): St,
    Name(channel): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ChannelHistory>> {
    let p = params(q, &["since", "limit", "consistency"])?;
    let since = u64_param(&p, "since")?.unwrap_or(0);
    let limit = list_limit(&p)?;
    read_barrier_unless_stale(&st, &p).await?;
    let h = st
        .cluster
        .state()
        .channel_history(&channel, since, limit)
        .ok_or_else(|| ApiError::not_found(format!("no channel {channel:?}")))?;
    let events = h
        .events
        .iter()
        .map(|e| ChannelEvent {
            offset: e.offset,
            data: serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
            ts_ms: e.ts_ms,
        })
        .collect();
    Ok(Json(ChannelHistory {
        events,
        earliest_offset: h.earliest_offset,
        latest_offset: h.latest_offset,
    }))
}

/// Clients present on the channel across the cluster
#[utoipa::path(
    get,
    path = "/v1/channels/{name}/presence",
    description = "WebSocket subscribers that gave a user. A node's clients disappear when the node closes them or presence_lease_ms (default 6 s) after the node stops renewing its lease.",
    params(ChannelName, ReadConsistency),
    responses((status = 200, description = "present clients", body = Presence), BadRequest, Unsettled)
)]
pub async fn presence(
    State(st): St,
    Name(channel): Name,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Presence>> {
    let p = params(q, &["consistency"])?;
    read_barrier_unless_stale(&st, &p).await?;
    let clients = st
        .cluster
        .state()
        .presence(&channel)
        .into_iter()
        .map(|c| PresentClient {
            client_id: c.client_id,
            user: c.user,
            node_id: c.node_id,
        })
        .collect();
    Ok(Json(Presence { clients }))
}

/// Channels published to or with clients present, by name prefix, in name order
#[utoipa::path(
    get,
    path = "/v1/channels",
    description = "Each with its offsets, its retained events, when it was last published to, and how many clients are present. The reserved channels ($audit) are listed only to a token that may read acl.",
    params(
        ("prefix" = Option<String>, Query, description = "at most 512 bytes; every channel when absent"),
        ListLimit,
        ("after" = Option<String>, Query, description = "start after this name (the previous page's next)"),
        ReadConsistency,
    ),
    responses((status = 200, description = "a page of channels", body = ChannelList), BadRequest, Unsettled)
)]
pub async fn list(
    State(st): St,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ChannelList>> {
    let (prefix, after, limit) = name_page(&st, q).await?;
    let reserved_too = caller.may_all(&st, Resource::Acl, "", Op::Read);
    let (page, more) = st
        .cluster
        .state()
        .channels_under(&prefix, after.as_deref(), limit);
    let next = if more {
        page.last().map(|c| c.name.clone())
    } else {
        None
    };
    let channels = page
        .into_iter()
        .filter(|c| reserved_too || !c.name.starts_with('$'))
        .map(|c| ChannelSummary {
            name: c.name,
            latest_offset: c.latest_offset,
            earliest_offset: c.earliest_offset,
            retained: c.retained,
            last_published_ms: c.last_published_ms,
            present: c.present,
        })
        .collect();
    Ok(Json(ChannelList { channels, next }))
}

// ---- Typed client ----

/// The calls of these routes in the typed client ([`super::client::Client`]).
mod typed {
    use super::{ChannelHistory, ChannelList, Deleted, Presence, PublishRequest, Published};
    use crate::api::client::{segment, ApiResult, Client, Path};
    use serde_json::Value;

    impl Client {
        fn channel_path(name: &str, op: &str) -> String {
            format!("/v1/channels/{}{op}", segment(name))
        }

        pub async fn publish(&self, channel: &str, data: Value) -> ApiResult<Published> {
            let body = PublishRequest { data };
            self.post(&Self::channel_path(channel, "/publish"), &body)
                .await
        }

        /// Channels under `prefix`, at most `limit` of them after `after`.
        pub async fn channels(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: Option<u64>,
        ) -> ApiResult<ChannelList> {
            self.name_page("/v1/channels", prefix, after, limit).await
        }

        /// Events after offset `since` (all retained when `None`), at most `limit`.
        pub async fn channel_history(
            &self,
            channel: &str,
            since: Option<u64>,
            limit: Option<u64>,
        ) -> ApiResult<ChannelHistory> {
            let path = Path::new(Self::channel_path(channel, "/history"))
                .opt("since", since)
                .opt("limit", limit);
            self.get(&self.read(path)).await
        }

        /// Deletes an idle channel.
        pub async fn channel_delete(&self, channel: &str) -> ApiResult<Deleted> {
            self.delete(&Self::channel_path(channel, "")).await
        }

        pub async fn presence(&self, channel: &str) -> ApiResult<Presence> {
            let path = Path::new(Self::channel_path(channel, "/presence"));
            self.get(&self.read(path)).await
        }
    }
}
