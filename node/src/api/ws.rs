//! `GET /v1/ws`: channel subscriptions with catch-up, publishing, key watches and presence
//! over one WebSocket (JSON text frames, shapes in API.md).
//!
//! Each connection reads the node's feed of applied batches ([`crate::realtime::Hub`]) and
//! keeps, per subscribed channel, the last offset it sent. The feed is joined when the
//! connection opens, before any history is read, so an event is either already in the
//! history a catch-up reads or still to come on the feed: nothing falls in between. Events
//! at or below the last sent offset are dropped (no duplicate); an event past the next
//! offset means something was missed (a lagging feed, a snapshot install) and the channel
//! catches up from history again (no gap). Catch-ups are paced per connection
//! (`ws_catch_up_events_per_sec`) and fill at most half the send queue, so a replay goes as
//! fast as the client reads and never disconnects it by itself.
//!
//! Every message to the client goes through a send queue bounded in bytes
//! (`ws_send_buffer_bytes`). A client that lets it fill is sent a final `slow_consumer` error
//! and a close frame (1008), then dropped; it reconnects and resumes from its last offsets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocket};
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use raft::command::{ChannelCmd, ChannelResult};
use raft::LiveBatch;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use super::{json_body_limit, params, validate_name, AppState, St};
use crate::error::{ApiError, ErrorBody, ErrorCode};

/// How often a catching-up connection is sent its next page of history.
const CATCH_UP_TICK: Duration = Duration::from_millis(10);
/// How long a closing connection may take to flush its queue and close frame.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most messages written to a socket before one flush.
const WRITE_BATCH_MAX: usize = 256;
/// Most channels and watches on one connection.
pub const WS_SUBSCRIPTIONS_MAX: usize = 1000;

#[utoipa::path(
    get,
    path = "/v1/ws",
    summary = "WebSocket (JSON text frames)",
    description = "Client to server, each with an id echoed in the reply: {op:subscribe, channel, since?, user?} -> {ok, channel, offset (latest on this node), client_id}; {op:unsubscribe, channel}; {op:publish, channel, data} -> {ok, offset}; {op:watch, prefix, since_revision?} -> {ok, prefix, revision, compact_revision} (error code compacted with compact_revision when since_revision < compact_revision); {op:unwatch, prefix}; {op:ping} -> {ok, pong}. Server to client: {type:event, channel, offset, ts_ms, data}; {type:recovered, channel, from, to, complete} after a catch-up requested with since (complete:false when events after since were trimmed by retention); {type:kv, event:put|delete, key, revision, value (base64, null for delete), prefix}; {type:error, error:{code, message, ...}}. Catch-up is paced (ws_catch_up_events_per_sec, default 10000, and at most half the send queue); a client whose send queue passes ws_send_buffer_bytes (default 4 MiB) gets {type:error, error:{code:slow_consumer, limit_bytes}} and close code 1008, and resumes with since. On shutdown: error going_away and close 1001. More than ws_max_connections (default 10000) connections: 503.",
    params(
        ("client_id" = Option<String>, Query, description = "default: random; used for presence"),
    ),
    responses(
        (status = 101, description = "switching protocols"),
        (status = 400, description = "bad_request: malformed request or value out of range; nothing was applied", body = ErrorBody),
        (status = 503, description = "unavailable: no leader, not ready or overloaded; nothing was applied (Retry-After)", body = ErrorBody),
    )
)]
pub async fn upgrade(
    State(st): St,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let p = match params(q, &["client_id"]) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::bad_request(format!("not a WebSocket upgrade: {e}")).into_response()
        }
    };
    let client_id = match p.get("client_id") {
        Some(c) => match validate_name("client_id", c) {
            Ok(()) => c.clone(),
            Err(e) => return e.into_response(),
        },
        None => hex::encode(rand::random::<[u8; 8]>()),
    };
    let Ok(permit) = st.hub.connections.clone().try_acquire_owned() else {
        return ApiError::unavailable("too many WebSocket connections on this node")
            .into_response();
    };
    ws.max_message_size(json_body_limit(&st))
        .on_upgrade(move |socket| {
            let hub = st.hub.clone();
            hub.connection(async move {
                let _permit = permit;
                run(st, socket, client_id).await;
            })
        })
}

/// The bounded send queue of one connection.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::UnboundedSender<(Message, usize)>,
    queued: Arc<AtomicUsize>,
    overflowed: Arc<AtomicBool>,
    limit: usize,
    st: Arc<AppState>,
}

impl Outbox {
    /// Queues `text`; past the byte bound the connection is marked overflowed instead.
    fn push(&self, text: String) -> bool {
        let n = text.len();
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let q = self.queued.load(Ordering::Relaxed);
        if q > 0 && q + n > self.limit {
            self.overflowed.store(true, Ordering::Relaxed);
            return false;
        }
        self.enqueue(Message::Text(text.into()), n);
        true
    }

    /// Whether a catch-up may queue `n` more bytes: it fills at most half the queue, so a
    /// replay is paced by how fast the client reads and never overflows it by itself.
    fn has_room_for_replay(&self, n: usize) -> bool {
        let q = self.queued.load(Ordering::Relaxed);
        q == 0 || q + n <= self.limit / 2
    }

    /// Queues past the bound: the final error and close frame.
    fn enqueue(&self, msg: Message, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.st.metrics.ws_send_buffer_bytes.add(n as i64);
        if self.tx.send((msg, n)).is_err() {
            self.release(n);
        }
    }

    fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.st.metrics.ws_send_buffer_bytes.sub(n as i64);
    }

    fn reply(&self, id: &Value, mut body: Value) -> bool {
        body["id"] = id.clone();
        body["ok"] = json!(true);
        self.push(body.to_string())
    }

    fn error(&self, id: &Value, e: ApiError) -> bool {
        let mut err = e.body();
        err["id"] = id.clone();
        self.push(err.to_string())
    }
}

/// A subscribed channel.
struct Sub {
    /// The last offset sent (or, before a catch-up, the `since` the client gave).
    last_sent: u64,
    catch_up: Option<CatchUp>,
    /// Joined presence under the connection's client id.
    present: bool,
}

struct CatchUp {
    /// The first offset the catch-up should deliver.
    from: u64,
    /// The client asked for it (`since`): it is told `recovered` when it ends.
    requested: bool,
    /// Events were trimmed by retention before they could be sent.
    lost: bool,
}

struct Watch {
    prefix: String,
    /// Every change at or below this revision has been sent (or predates the watch).
    sent_through: u64,
    /// Replaying the key-value history past `sent_through`; live changes wait for it.
    catching_up: bool,
}

/// Most changes one revision holds (a transaction's ops); a replay page never splits one.
const REVISION_EVENTS_MAX: usize = 2 * super::txn::TXN_OPS_MAX;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMsg {
    #[serde(default)]
    id: Value,
    op: String,
    channel: Option<String>,
    since: Option<u64>,
    data: Option<Value>,
    prefix: Option<String>,
    since_revision: Option<u64>,
    /// On subscribe: join the channel's presence as this user.
    user: Option<String>,
}

struct Conn {
    st: Arc<AppState>,
    out: Outbox,
    client_id: String,
    subs: BTreeMap<String, Sub>,
    watches: BTreeMap<String, Watch>,
}

async fn run(st: Arc<AppState>, socket: WebSocket, client_id: String) {
    st.metrics.ws_connections.inc();
    // Join the feed first: whatever a later history read misses is still to come on it.
    let mut feed = st.hub.subscribe();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Message, usize)>();
    let out = Outbox {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        overflowed: Arc::new(AtomicBool::new(false)),
        limit: st.cluster.config().ws.send_buffer_bytes,
        st: st.clone(),
    };
    let writer_out = out.clone();
    let mut writer = st.hub.spawn(async move {
        // Everything queued is written with one flush: one system call for many messages.
        let mut batch = Vec::new();
        'write: while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < WRITE_BATCH_MAX {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let bytes: usize = batch.iter().map(|(_, n)| n).sum();
            let close = batch.iter().any(|(m, _)| matches!(m, Message::Close(_)));
            let count = batch.len() as u64;
            for (msg, _) in batch.drain(..) {
                if sink.feed(msg).await.is_err() {
                    writer_out.release(bytes);
                    break 'write;
                }
            }
            let flushed = sink.flush().await;
            writer_out.release(bytes);
            if flushed.is_err() || close {
                break;
            }
            writer_out.st.metrics.ws_messages_sent.inc_by(count);
        }
        // Whatever is still queued is dropped with the connection.
        while let Ok((_, n)) = rx.try_recv() {
            writer_out.release(n);
        }
    });
    let mut conn = Conn {
        st: st.clone(),
        out: out.clone(),
        client_id,
        subs: BTreeMap::new(),
        watches: BTreeMap::new(),
    };
    let mut pace = tokio::time::interval(CATCH_UP_TICK);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = st.hub.shutdown.clone();
    let close: Option<(u16, ErrorCode, &str)> = loop {
        let catching_up = conn.subs.values().any(|s| s.catch_up.is_some())
            || conn.watches.values().any(|w| w.catching_up);
        tokio::select! {
            _ = shutdown.cancelled() => break Some((1001, ErrorCode::GoingAway, "server shutting down")),
            _ = &mut writer => break None,
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => conn.handle(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => {
                    conn.out.error(&Value::Null, ApiError::bad_request("frames must be JSON text"));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
            batch = feed.recv() => match batch {
                Ok(LiveBatch::Events(events)) => conn.live(&events),
                Ok(LiveBatch::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => conn.resync(),
                Err(broadcast::error::RecvError::Closed) => {
                    break Some((1001, ErrorCode::GoingAway, "server shutting down"))
                }
            },
            _ = pace.tick(), if catching_up => conn.catch_up_step(),
        }
        if out.overflowed.load(Ordering::Relaxed) {
            break Some((1008, ErrorCode::SlowConsumer, "slow consumer"));
        }
    };
    if let Some((code, reason, text)) = close {
        let reason = reason.as_str();
        st.metrics.ws_disconnects.with_label_values(&[reason]).inc();
        let limit = out.limit;
        let err = if reason == ErrorCode::SlowConsumer.as_str() {
            json!({"type": "error", "error": {
                "code": reason,
                "message": format!("the connection's send queue passed {limit} bytes; reconnect and resume each channel from its last offset"),
                "limit_bytes": limit,
            }})
        } else {
            json!({"type": "error", "error": {"code": reason, "message": text}})
        }
        .to_string();
        let n = err.len();
        out.enqueue(Message::Text(err.into()), n);
        out.enqueue(
            Message::Close(Some(CloseFrame {
                code,
                reason: text.into(),
            })),
            0,
        );
        debug!(reason, "closing WebSocket");
        if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    } else {
        writer.abort();
    }
    conn.leave_all().await;
    st.metrics.ws_connections.dec();
}

impl Conn {
    async fn handle(&mut self, text: &str) {
        let msg: ClientMsg = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                self.out.error(
                    &Value::Null,
                    ApiError::bad_request(format!("bad message: {e}")),
                );
                return;
            }
        };
        let id = msg.id.clone();
        if let Err(e) = self.dispatch(msg).await {
            self.out.error(&id, e);
        }
    }

    async fn dispatch(&mut self, msg: ClientMsg) -> Result<(), ApiError> {
        let id = msg.id.clone();
        match msg.op.as_str() {
            "ping" => {
                self.out.reply(&id, json!({ "pong": true }));
            }
            "subscribe" => {
                let channel = required_channel(&msg)?;
                self.subscribe(&id, channel, msg.since, msg.user).await?;
            }
            "unsubscribe" => {
                let channel = required_channel(&msg)?;
                let Some(sub) = self.subs.remove(&channel) else {
                    return Err(ApiError::not_found(format!(
                        "not subscribed to {channel:?}"
                    )));
                };
                if sub.present {
                    self.leave(&channel).await;
                }
                self.out.reply(&id, json!({ "channel": channel }));
            }
            "publish" => {
                let channel = required_channel(&msg)?;
                let data = msg
                    .data
                    .ok_or_else(|| ApiError::bad_request("publish needs data"))?;
                let command = super::channels::publish_command(&self.st, channel, &data)?;
                // Answered from a task so the connection keeps delivering while it commits.
                let st = self.st.clone();
                let out = self.out.clone();
                self.st.hub.spawn(async move {
                    match st.cluster.write(command, None).await {
                        Ok(ChannelResult::Published { offset }) => {
                            out.reply(&id, json!({ "offset": offset }));
                        }
                        Ok(other) => {
                            out.error(&id, other.into());
                        }
                        Err(e) => {
                            out.error(&id, e.into());
                        }
                    }
                });
            }
            "watch" => {
                let prefix = msg.prefix.clone().unwrap_or_default();
                if prefix.len() > 512 {
                    return Err(ApiError::bad_request("prefix must be at most 512 bytes"));
                }
                self.watch(&id, prefix, msg.since_revision)?;
            }
            "unwatch" => {
                let prefix = msg.prefix.clone().unwrap_or_default();
                if self.watches.remove(&prefix).is_none() {
                    return Err(ApiError::not_found(format!("no watch on {prefix:?}")));
                }
                self.out.reply(&id, json!({ "prefix": prefix }));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown op {other:?} (subscribe, unsubscribe, publish, watch, unwatch, ping)"
                )))
            }
        }
        Ok(())
    }

    fn check_room(&self) -> Result<(), ApiError> {
        if self.subs.len() + self.watches.len() >= WS_SUBSCRIPTIONS_MAX {
            return Err(ApiError::limited(format!(
                "at most {WS_SUBSCRIPTIONS_MAX} subscriptions and watches per connection"
            )));
        }
        Ok(())
    }

    async fn subscribe(
        &mut self,
        id: &Value,
        channel: String,
        since: Option<u64>,
        user: Option<String>,
    ) -> Result<(), ApiError> {
        if !self.subs.contains_key(&channel) {
            self.check_room()?;
        }
        if let Some(u) = &user {
            validate_name("user", u)?;
        }
        let latest = self.st.cluster.state().channel_latest_offset(&channel);
        let was_present = self.subs.get(&channel).is_some_and(|s| s.present);
        let sub = match since {
            // Not clamped to `latest`: a lagging node's feed brings the missing events later,
            // and clamping would send offsets the client already has.
            Some(since) => Sub {
                last_sent: since,
                catch_up: Some(CatchUp {
                    from: since + 1,
                    requested: true,
                    lost: false,
                }),
                present: was_present,
            },
            None => Sub {
                last_sent: latest,
                catch_up: None,
                present: was_present,
            },
        };
        self.subs.insert(channel.clone(), sub);
        if let (Some(user), false) = (user, was_present) {
            let command = ChannelCmd::PresenceJoin {
                channel: channel.clone(),
                client_id: self.client_id.clone(),
                user,
                node_id: self.st.cluster.id,
                incarnation: self.st.hub.incarnation,
                lease_ms: self.st.cluster.config().channels.presence_lease_ms,
            };
            match self.st.cluster.write(command, None).await {
                Ok(ChannelResult::Present) => {
                    self.st.hub.presence_joined();
                    if let Some(s) = self.subs.get_mut(&channel) {
                        s.present = true;
                    }
                }
                Ok(other) => return Err(other.into()),
                Err(e) => return Err(e.into()),
            }
        }
        self.out.reply(
            id,
            json!({ "channel": channel, "offset": latest, "client_id": self.client_id }),
        );
        // Start right away rather than on the next tick.
        if since.is_some() {
            self.catch_up_step();
        }
        Ok(())
    }

    fn watch(
        &mut self,
        id: &Value,
        prefix: String,
        since_revision: Option<u64>,
    ) -> Result<(), ApiError> {
        if !self.watches.contains_key(&prefix) {
            self.check_room()?;
        }
        let (revision, compact) = {
            let s = self.st.cluster.state();
            (s.meta.revision, s.compact_revision())
        };
        // `since_revision` R: every change after R. Replaying needs the history from R + 1.
        let from = since_revision.unwrap_or(revision);
        if from < compact {
            return Err(compacted_error(&prefix, from, compact));
        }
        self.watches.insert(
            prefix.clone(),
            Watch {
                prefix: prefix.clone(),
                sent_through: from,
                catching_up: from < revision,
            },
        );
        self.out.reply(
            id,
            json!({ "prefix": prefix, "revision": revision, "compact_revision": compact }),
        );
        if from < revision {
            self.catch_up_step();
        }
        Ok(())
    }

    /// One applied batch from the feed.
    fn live(&mut self, events: &[raft::state::LiveEvent]) {
        use raft::state::LiveEvent;
        let mut max_revision = None;
        for e in events {
            match e {
                LiveEvent::Channel { channel, event } => {
                    let Some(sub) = self.subs.get_mut(channel) else {
                        continue;
                    };
                    if event.offset <= sub.last_sent || sub.catch_up.is_some() {
                        // Already sent, or the running catch-up reads it from history.
                        continue;
                    }
                    if event.offset == sub.last_sent + 1 {
                        sub.last_sent = event.offset;
                        if !self.out.push(event_json(channel, event)) {
                            return;
                        }
                    } else {
                        // Something was missed: fill the gap from history, in order.
                        sub.catch_up = Some(CatchUp {
                            from: sub.last_sent + 1,
                            requested: false,
                            lost: false,
                        });
                    }
                }
                LiveEvent::Kv(change) => {
                    max_revision = Some(change.revision);
                    for w in self.watches.values() {
                        if !w.catching_up
                            && change.revision > w.sent_through
                            && change.key.starts_with(&w.prefix)
                            && !self.out.push(kv_json(&w.prefix, change))
                        {
                            return;
                        }
                    }
                }
            }
        }
        // A batch holds whole revisions (a transaction applies in one entry).
        if let Some(r) = max_revision {
            for w in self.watches.values_mut().filter(|w| !w.catching_up) {
                w.sent_through = w.sent_through.max(r);
            }
        }
    }

    /// The feed lagged or the state was replaced: every channel re-reads its history past its
    /// last sent offset, every watch the key-value history past its last sent revision.
    fn resync(&mut self) {
        for sub in self.subs.values_mut() {
            if sub.catch_up.is_none() {
                sub.catch_up = Some(CatchUp {
                    from: sub.last_sent + 1,
                    requested: false,
                    lost: false,
                });
            }
        }
        for w in self.watches.values_mut() {
            w.catching_up = true;
        }
    }

    /// Replays the next page of key-value history to catching-up watches. A watch whose
    /// history was compacted meanwhile ends with a `compacted` error; the client watches again.
    fn watch_catch_up_step(&mut self, budget: &mut usize) {
        let state = self.st.cluster.state_reader();
        let mut ended = Vec::new();
        for w in self.watches.values_mut().filter(|w| w.catching_up) {
            if *budget == 0 {
                break;
            }
            let limit = (*budget).max(REVISION_EVENTS_MAX);
            let (page, current) = {
                let s = state.read();
                (
                    s.kv_events_since(&w.prefix, w.sent_through + 1, limit),
                    s.meta.revision,
                )
            };
            let mut events = match page {
                Ok(e) => e,
                Err(c) => {
                    let err = compacted_error(&w.prefix, w.sent_through, c.compact_revision);
                    let mut body = err.body();
                    body["type"] = json!("error");
                    self.out.push(body.to_string());
                    ended.push(w.prefix.clone());
                    continue;
                }
            };
            let full = events.len() == limit;
            if full {
                // The last revision may continue past the page: leave it for the next one.
                let last = events.last().map(|e| e.revision).unwrap_or(0);
                events.retain(|e| e.revision != last);
            }
            *budget = budget.saturating_sub(events.len());
            for e in &events {
                let text = kv_json(&w.prefix, e);
                if !self.out.has_room_for_replay(text.len()) {
                    return;
                }
                if !self.out.push(text) {
                    return;
                }
                w.sent_through = e.revision;
            }
            if !full {
                // Everything up to `current` has been read: the live feed takes over.
                w.sent_through = w.sent_through.max(current);
                w.catching_up = false;
            }
        }
        for prefix in ended {
            self.watches.remove(&prefix);
        }
    }

    /// Sends the next page of history to catching-up channels, within the connection's pace.
    fn catch_up_step(&mut self) {
        let per_sec = self.st.cluster.config().ws.catch_up_events_per_sec;
        let mut budget = ((per_sec as u128 * CATCH_UP_TICK.as_millis()) / 1000).max(1) as usize;
        self.watch_catch_up_step(&mut budget);
        let state = self.st.cluster.state_reader();
        for (channel, sub) in self.subs.iter_mut() {
            if budget == 0 {
                break;
            }
            let Some(cu) = sub.catch_up.as_mut() else {
                continue;
            };
            let page = {
                let s = state.read();
                s.channel_history(channel, sub.last_sent, budget)
            };
            let done = match page {
                None => true,
                Some(h) => {
                    if sub.last_sent + 1 < h.earliest_offset && sub.last_sent < h.latest_offset {
                        // Trimmed by retention before it could be sent.
                        cu.lost = true;
                        sub.last_sent = h.earliest_offset - 1;
                    }
                    budget = budget.saturating_sub(h.events.len());
                    for e in &h.events {
                        if e.offset <= sub.last_sent {
                            continue;
                        }
                        let text = event_json(channel, e);
                        if !self.out.has_room_for_replay(text.len()) {
                            // The client reads slower than the pace: try again next tick.
                            return;
                        }
                        sub.last_sent = e.offset;
                        if !self.out.push(text) {
                            return;
                        }
                    }
                    sub.last_sent >= h.latest_offset
                }
            };
            if done {
                let cu = sub.catch_up.take().expect("catching up");
                if cu.requested || cu.lost {
                    let msg = json!({
                        "type": "recovered",
                        "channel": channel,
                        "from": cu.from,
                        "to": sub.last_sent,
                        "complete": !cu.lost,
                    });
                    if !self.out.push(msg.to_string()) {
                        return;
                    }
                }
            }
        }
    }

    async fn leave(&self, channel: &str) {
        let command = ChannelCmd::PresenceLeave {
            channel: channel.to_string(),
            client_id: self.client_id.clone(),
            node_id: self.st.cluster.id,
        };
        // A leave that fails is cleaned up when this node's lease ends.
        let _ = self.st.cluster.write(command, None).await;
        self.st.hub.presence_left();
    }

    async fn leave_all(&mut self) {
        let present: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.present)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in present {
            self.leave(&channel).await;
        }
    }
}

fn required_channel(msg: &ClientMsg) -> Result<String, ApiError> {
    let channel = msg
        .channel
        .clone()
        .ok_or_else(|| ApiError::bad_request(format!("{} needs a channel", msg.op)))?;
    validate_name("channel", &channel)?;
    Ok(channel)
}

fn event_json(channel: &str, e: &raft::state::ChannelEvent) -> String {
    // `data` is stored as JSON text and embedded as it is.
    format!(
        r#"{{"type":"event","channel":{},"offset":{},"ts_ms":{},"data":{}}}"#,
        Value::String(channel.to_string()),
        e.offset,
        e.ts_ms,
        e.data
    )
}

fn compacted_error(prefix: &str, since: u64, compact: u64) -> ApiError {
    ApiError::new(
        ErrorCode::Compacted,
        format!(
            "changes under {prefix:?} after revision {since} are compacted (history starts after {compact}); watch from a later revision"
        ),
    )
    .with("prefix", prefix)
    .with("compact_revision", compact)
}

fn kv_json(prefix: &str, c: &raft::state::KvEvent) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "type": "kv",
        "event": if c.value.is_some() { "put" } else { "delete" },
        "key": c.key,
        "revision": c.revision,
        "value": c.value.as_ref().map(|v| b64.encode(v)),
        "prefix": prefix,
    })
    .to_string()
}
