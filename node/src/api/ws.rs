//! `GET /v1/ws`: channel subscriptions with catch-up, publishing, key watches and presence
//! over one WebSocket (JSON text frames; every message is a type of [`super::ws_protocol`]).
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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, CloseFrame, Message, Utf8Bytes, WebSocket,
};
use axum::extract::{Extension, RawQuery, State as AxumState, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use raft::command::{ChannelCmd, ChannelResult};
use raft::state::{ChannelEvent, History, KvEvent, LiveEvent};
use raft::LiveBatch;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use super::ws_protocol::{
    ClientMessage, Event, KvChange, KvEventKind, Push, Recovered, ReplyBody, Request, Revoked,
    ServerMessage,
};
use super::{json_body_limit, params, validate_name, AppState, St};
use crate::auth::{self, Caller, ClientIp, Op, Resource};
use crate::cluster::{now_ms, StateReader};
use crate::error::{ApiError, BadRequest, ErrorBody, ErrorCode};

/// How often a catching-up connection is sent its next page of history.
const CATCH_UP_TICK: Duration = Duration::from_millis(10);
/// How long a closing connection may take to flush its queue and close frame.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection checks whether its token was deleted, expired or lost rights (it
/// reads one counter unless tokens or policies changed).
const AUTH_RECHECK: Duration = Duration::from_millis(200);
/// Most channels and watches on one connection.
pub const WS_SUBSCRIPTIONS_MAX: usize = 1000;
/// Most bytes one read from a client's socket takes. The WebSocket codec zeroes this much of
/// its buffer before every read attempt, and the connection's task polls its socket on every
/// wake-up (each batch of events it is sent), so the default of 128 KiB cost more than the
/// events themselves. Clients send small JSON requests; a larger message (up to twice
/// `limits.max_value_bytes`, as for JSON bodies) is simply read in more pieces.
const WS_READ_BUFFER_BYTES: usize = 8 * 1024;

/// WebSocket (JSON text frames)
#[utoipa::path(
    get,
    path = "/v1/ws",
    description = "Client to server, each with an id echoed in the reply: {op:subscribe, channel, since?, user?} -> {ok, channel, offset (latest on this node), client_id}; {op:unsubscribe, channel} -> {ok, channel}; {op:publish, channel, data} -> {ok, offset}; {op:watch, prefix?, since_revision?} -> {ok, prefix, revision, compact_revision} (error code compacted with compact_revision when since_revision < compact_revision); {op:unwatch, prefix?} -> {ok, prefix}; {op:ping} -> {ok, pong}. A request that fails is answered {id, error:{code, message, ...}}; a frame that is not a valid request (unknown op, missing or unknown field, not JSON) with code bad_request and its id (null when none could be read). Server to client: {type:event, channel, offset, ts_ms, data}; {type:recovered, channel, from, to, complete} after a catch-up requested with since (complete:false when events after since were trimmed by retention); {type:kv, event:put|delete, key, revision, value (base64, null for delete), prefix}; {type:error, error:{code, message, ...}}. Catch-up is paced (ws_catch_up_events_per_sec, default 10000, and at most half the send queue); a client whose send queue passes ws_send_buffer_bytes (default 4 MiB) gets {type:error, error:{code:slow_consumer, limit_bytes}} and close code 1008, and resumes with since. On shutdown: error going_away and close 1001. The server pings every ws.ping_interval_ms (default 15000); a connection from which nothing arrives (no message, no pong) for ws.idle_timeout_ms (default 45000) gets {type:error, error:{code:idle_timeout, limit_ms}} and close 1001. A publish while ws.max_pending_publishes (default 256) publishes of the connection wait for their write is refused with rate_limited (limit, and setting ws.max_pending_publishes). More than ws_max_connections (default 10000) connections: 503.",
    params(
        ("client_id" = Option<String>, Query, description = "default: random; used for presence"),
    ),
    responses(
        (status = 101, description = "switching protocols"),
        BadRequest,
        (status = 503, description = "unavailable: no leader, not ready or overloaded; nothing was applied (Retry-After)", body = ErrorBody),
    )
)]
pub async fn upgrade(
    AxumState(st): St,
    caller: Option<Extension<Caller>>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let p = match params(q, &["client_id", "moved"]) {
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
    if let Err(e) = st.rate.ws_connection(ip) {
        return e.into_response();
    }
    // A busy node sends a new client to a less loaded member, once (`moved=1` stays).
    if p.get("moved").map(String::as_str) != Some("1") {
        if let Some((node, api_addr)) = st.cluster.move_client_to() {
            st.metrics.clients_moved.inc();
            return ws.on_upgrade(move |socket| moved(socket, node, api_addr));
        }
    }
    let Ok(permit) = st.hub.connections.clone().try_acquire_owned() else {
        return ApiError::unavailable("too many WebSocket connections on this node")
            .into_response();
    };
    ws.max_message_size(json_body_limit(&st))
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let hub = st.hub.clone();
            hub.connection(async move {
                let _permit = permit;
                run(st, socket, client_id, caller, ip.to_string()).await;
            })
        })
}

/// Tells a new client which member to connect to instead (`{"type": "moved"}`), and closes
/// with 1013 (try again later).
async fn moved(mut socket: WebSocket, node: u64, api_addr: String) {
    let push = ServerMessage::Push(Push::Moved(super::ws_protocol::Moved { node, api_addr }));
    let _ = socket.send(Message::Text(push.to_text().into())).await;
    let frame = axum::extract::ws::CloseFrame {
        code: 1013,
        reason: "moved".into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// The bounded send queue of one connection.
///
/// The connection's own task queues into `local`, which it drains itself without waking
/// anyone; other tasks (a publish waiting for its write) hold a [`Outbox::shared`] copy that
/// sends through `tx`, which wakes the connection.
#[derive(Clone)]
struct Outbox {
    local: Option<Arc<Mutex<VecDeque<Queued>>>>,
    tx: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
    overflowed: Arc<AtomicBool>,
    limit: usize,
    st: Arc<AppState>,
}

/// A queued message and its size in bytes.
type Queued = (Message, usize);

/// The connection task's ends of an [`Outbox`].
struct Queue {
    local: Arc<Mutex<VecDeque<Queued>>>,
    rx: mpsc::UnboundedReceiver<Queued>,
}

impl Outbox {
    fn new(st: &Arc<AppState>) -> (Self, Queue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let local = Arc::new(Mutex::new(VecDeque::new()));
        let out = Outbox {
            local: Some(local.clone()),
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            overflowed: Arc::new(AtomicBool::new(false)),
            limit: st.cluster.config().ws.send_buffer_bytes,
            st: st.clone(),
        };
        (out, Queue { local, rx })
    }

    /// A copy for another task: what it queues wakes the connection.
    fn shared(&self) -> Outbox {
        Outbox {
            local: None,
            ..self.clone()
        }
    }

    /// Queues a text frame; past the byte bound the connection is marked overflowed instead.
    fn push(&self, text: Utf8Bytes) -> bool {
        let n = text.as_str().len();
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let q = self.queued.load(Ordering::Relaxed);
        if q > 0 && q + n > self.limit {
            self.overflowed.store(true, Ordering::Relaxed);
            return false;
        }
        self.enqueue(Message::Text(text), n);
        true
    }

    fn send(&self, msg: &ServerMessage) -> bool {
        self.push(msg.to_text().into())
    }

    fn reply(&self, id: Value, body: ReplyBody) -> bool {
        self.send(&ServerMessage::reply(id, body))
    }

    fn refuse(&self, id: Value, e: ApiError) -> bool {
        self.send(&ServerMessage::refusal(id, e))
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
        match &self.local {
            Some(local) => local.lock().expect("send queue lock").push_back((msg, n)),
            None => {
                if self.tx.send((msg, n)).is_err() {
                    self.release(n);
                }
            }
        }
    }

    fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.st.metrics.ws_send_buffer_bytes.sub(n as i64);
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

impl CatchUp {
    /// Filling a gap the client did not ask about (a lagging feed, a snapshot install).
    fn gap(from: u64) -> Option<Self> {
        Some(CatchUp {
            from,
            requested: false,
            lost: false,
        })
    }
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

/// Why the server closes a connection.
#[derive(Clone, Copy)]
enum Closing {
    GoingAway,
    SlowConsumer,
    /// Nothing arrived for this many milliseconds (`ws.idle_timeout_ms`).
    IdleTimeout(u64),
}

impl Closing {
    /// The close frame's code and reason.
    fn frame(self) -> CloseFrame {
        let (code, reason) = match self {
            Closing::GoingAway => (1001, "server shutting down"),
            Closing::SlowConsumer => (1008, "slow consumer"),
            Closing::IdleTimeout(_) => (1001, "idle timeout"),
        };
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }

    /// The error sent before the close frame.
    fn error(self, limit: usize) -> ApiError {
        match self {
            Closing::GoingAway => ApiError::new(ErrorCode::GoingAway, "server shutting down"),
            Closing::SlowConsumer => ApiError::new(
                ErrorCode::SlowConsumer,
                format!("the connection's send queue passed {limit} bytes; reconnect and resume each channel from its last offset"),
            )
            .with("limit_bytes", limit),
            Closing::IdleTimeout(ms) => ApiError::new(
                ErrorCode::IdleTimeout,
                format!("nothing arrived from the client (no message, no pong) for {ms} ms (ws.idle_timeout_ms)"),
            )
            .with("limit_ms", ms),
        }
    }
}

struct Conn {
    st: Arc<AppState>,
    out: Outbox,
    client_id: String,
    subs: BTreeMap<String, Sub>,
    watches: BTreeMap<String, Watch>,
    /// Watched services, with the revision last sent.
    services: BTreeMap<String, u64>,
    /// Who authenticated the connection; `None` until an `auth` (access control on).
    caller: Option<Caller>,
    /// The ACL version the caller's rights were last checked at.
    acl_checked: u64,
    /// The client's address, for audit events.
    source: String,
    /// The bucket of messages the client may send (`rate.ws_messages_per_sec`).
    messages: Option<governor::DefaultDirectRateLimiter>,
    /// One permit per publish waiting for its write (`ws.max_pending_publishes`): each runs
    /// in a task of its own, so the connection keeps delivering meanwhile, and this bounds
    /// how many tasks a client can make.
    publishes: Arc<tokio::sync::Semaphore>,
}

async fn run(
    st: Arc<AppState>,
    socket: WebSocket,
    client_id: String,
    caller: Option<Caller>,
    source: String,
) {
    st.metrics.ws_connections.inc();
    // Join the feed first: whatever a later history read misses is still to come on it.
    let feed = st.hub.subscribe();
    let (out, queue) = Outbox::new(&st);
    let mut io = Io {
        socket,
        queue,
        out: out.clone(),
        unflushed: false,
        close_sent: false,
    };
    let mut conn = Conn {
        st: st.clone(),
        out,
        client_id,
        subs: BTreeMap::new(),
        watches: BTreeMap::new(),
        services: BTreeMap::new(),
        caller,
        acl_checked: 0,
        messages: st.rate.ws_messages(),
        source,
        publishes: Arc::new(tokio::sync::Semaphore::new(
            st.cluster.config().ws.max_pending_publishes,
        )),
    };
    if let Some(closing) = conn.serve(&mut io, feed).await {
        io.close(closing).await;
    }
    io.discard();
    conn.leave_all().await;
    st.metrics.ws_connections.dec();
}

impl Queue {
    /// The next message: the connection's own first, then what other tasks sent (`cx` is
    /// woken when they send more).
    fn next(&mut self, cx: &mut Context<'_>) -> Option<Queued> {
        if let Some(m) = self.local.lock().expect("send queue lock").pop_front() {
            return Some(m);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(m) => m,
            Poll::Pending => None,
        }
    }
}

/// A connection's socket and its send queue, both served by the connection's own task: each
/// poll moves what is queued into the socket (as much as it takes, one flush for all of it,
/// so one system call for many messages) and then reads the client's next frame.
struct Io {
    socket: WebSocket,
    queue: Queue,
    out: Outbox,
    /// Messages were handed to the socket since its last flush.
    unflushed: bool,
    /// The close frame was handed to the socket: nothing more is sent.
    close_sent: bool,
}

/// What a poll of [`Io`] found.
enum IoEvent {
    /// A frame from the client, or its end (`None`, an error).
    Frame(Option<Result<Message, axum::Error>>),
    /// The close frame was written, or a write failed: the connection is over.
    Done,
}

impl Io {
    /// Writes what is queued, then reads the client's next frame.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<IoEvent> {
        match self.poll_write(cx) {
            Poll::Ready(()) => Poll::Ready(IoEvent::Done),
            Poll::Pending => self.socket.poll_next_unpin(cx).map(IoEvent::Frame),
        }
    }

    /// Moves queued messages into the socket while it takes them, and flushes them. Ready
    /// once the close frame is written or a write failed; pending while the connection goes
    /// on (woken when more is queued or the socket can take more).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (mut count, mut bytes) = (0u64, 0usize);
        let mut failed = false;
        while !self.close_sent {
            match self.socket.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    failed = true;
                    break;
                }
                Poll::Pending => break,
            }
            let Some((msg, n)) = self.queue.next(cx) else {
                break;
            };
            self.close_sent = matches!(msg, Message::Close(_));
            bytes += n;
            count += 1;
            if self.socket.start_send_unpin(msg).is_err() {
                failed = true;
                break;
            }
            self.unflushed = true;
        }
        if bytes > 0 {
            self.out.release(bytes);
        }
        if count > 0 {
            self.out.st.metrics.ws_messages_sent.inc_by(count);
        }
        if !failed && self.unflushed {
            match self.socket.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => failed = true,
                Poll::Pending => {}
            }
        }
        if failed || (self.close_sent && !self.unflushed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Queues the closing error and close frame, and gives the socket a while to take them.
    async fn close(&mut self, closing: Closing) {
        let out = &self.out;
        let error = closing.error(out.limit);
        let reason = error.code.as_str();
        out.st
            .metrics
            .ws_disconnects
            .with_label_values(&[reason])
            .inc();
        let text = ServerMessage::notice(error).to_text();
        let n = text.len();
        out.enqueue(Message::Text(text.into()), n);
        out.enqueue(Message::Close(Some(closing.frame())), 0);
        debug!(reason, "closing WebSocket");
        let written = std::future::poll_fn(|cx| self.poll_write(cx));
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, written).await;
    }

    /// Drops what is still queued when the connection ends (publishes still waiting on
    /// their write find the queue closed and release their own bytes).
    fn discard(&mut self) {
        self.queue.rx.close();
        let local = std::mem::take(&mut *self.queue.local.lock().expect("send queue lock"));
        for (_, n) in local {
            self.out.release(n);
        }
        while let Ok((_, n)) = self.queue.rx.try_recv() {
            self.out.release(n);
        }
    }
}

impl Conn {
    /// Serves the connection until the client goes (`None`) or the server closes it.
    async fn serve(
        &mut self,
        io: &mut Io,
        mut feed: broadcast::Receiver<LiveBatch>,
    ) -> Option<Closing> {
        let mut pace = tokio::time::interval(CATCH_UP_TICK);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recheck = tokio::time::interval(AUTH_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One future for the whole connection: a new one per turn would join and leave the
        // token's waiters every time. Of a child token: each poll takes the token's lock,
        // which the connection's task alone then touches, not every connection of the node.
        let shutdown = self.st.hub.shutdown.child_token().cancelled_owned();
        tokio::pin!(shutdown);
        // Pings keep a healthy client talking (it answers each with a pong); a connection
        // from which nothing arrives for the idle timeout is closed.
        let (ping_ms, idle_ms) = {
            let ws = &self.st.cluster.config().ws;
            (ws.ping_interval_ms, ws.idle_timeout_ms)
        };
        let mut ping = tokio::time::interval(Duration::from_millis(ping_ms));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        let idle = tokio::time::sleep(Duration::from_millis(idle_ms));
        tokio::pin!(idle);
        loop {
            let catching_up = self.subs.values().any(|s| s.catch_up.is_some())
                || self.watches.values().any(|w| w.catching_up);
            tokio::select! {
                _ = &mut shutdown => return Some(Closing::GoingAway),
                event = std::future::poll_fn(|cx| io.poll(cx)) => match event {
                    IoEvent::Done => return None,
                    IoEvent::Frame(frame) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(idle_ms));
                        if !self.frame(frame).await {
                            return None;
                        }
                    }
                },
                _ = ping.tick() => self.out.enqueue(Message::Ping(Default::default()), 0),
                _ = &mut idle => return Some(Closing::IdleTimeout(idle_ms)),
                batch = feed.recv() => if !self.batch(batch) {
                    return Some(Closing::GoingAway);
                },
                _ = pace.tick(), if catching_up => self.catch_up_step(),
                _ = recheck.tick(), if matches!(self.caller, Some(Caller::Token(_) | Caller::Jwt(_))) => {
                    self.recheck().await
                }
            }
            if self.out.overflowed.load(Ordering::Relaxed) {
                return Some(Closing::SlowConsumer);
            }
        }
    }

    /// One frame from the client; `false` when the client has gone.
    async fn frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> bool {
        match frame {
            Some(Ok(Message::Text(text))) => self.handle(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                let e = ApiError::bad_request("frames must be JSON text");
                self.out.refuse(Value::Null, e);
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
        true
    }

    /// One batch from the feed; `false` when the feed has ended (the node is stopping).
    fn batch(&mut self, batch: Result<LiveBatch, broadcast::error::RecvError>) -> bool {
        match batch {
            Ok(LiveBatch::Events(events)) => self.live(&events),
            Ok(LiveBatch::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
            Err(broadcast::error::RecvError::Closed) => return false,
        }
        true
    }

    async fn handle(&mut self, text: &str) {
        if let Err(e) = crate::rate::ws_message(&self.messages) {
            let id = Request::parse(text).map_or(Value::Null, |r| r.id);
            self.out.refuse(id, e);
            return;
        }
        match Request::parse(text) {
            Ok(Request { id, message }) => {
                if let Err(e) = self.dispatch(id.clone(), message).await {
                    self.out.refuse(id, e);
                }
            }
            Err((id, e)) => {
                self.out.refuse(id, e);
            }
        }
    }

    async fn dispatch(&mut self, id: Value, msg: ClientMessage) -> Result<(), ApiError> {
        let caller = match (&msg, &self.caller) {
            (ClientMessage::Auth { .. } | ClientMessage::Ping {}, _) => Caller::Anyone,
            (_, Some(c)) => c.clone(),
            (_, None) => {
                return Err(ApiError::new(
                    ErrorCode::Unauthenticated,
                    "send {\"op\": \"auth\", \"token\": <token>} first",
                ))
            }
        };
        match msg {
            ClientMessage::Ping {} => {
                self.out.reply(id, ReplyBody::Pong { pong: true });
            }
            ClientMessage::Auth { token } => self.auth(id, &token).await?,
            ClientMessage::Subscribe {
                channel,
                since,
                user,
            } => {
                caller.check(&self.st, Resource::Channels, &channel, Op::Subscribe)?;
                self.subscribe(id, channel, since, user).await?
            }
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(id, channel).await?,
            ClientMessage::Publish { channel, data } => {
                caller.check(&self.st, Resource::Channels, &channel, Op::Publish)?;
                self.publish(id, channel, data)?
            }
            ClientMessage::Watch {
                prefix,
                since_revision,
            } => {
                if !caller.may_all(&self.st, Resource::Kv, &prefix, Op::Read) {
                    return Err(auth::forbidden(Resource::Kv, Op::Read, None));
                }
                self.watch(id, prefix, since_revision)?
            }
            ClientMessage::WatchService {
                service,
                since_revision,
            } => {
                caller.check(&self.st, Resource::Services, &service, Op::Read)?;
                self.watch_service(id, service, since_revision)?
            }
            ClientMessage::UnwatchService { service } => {
                if self.services.remove(&service).is_none() {
                    return Err(ApiError::not_found(format!(
                        "no watch on service {service:?}"
                    )));
                }
                self.out.reply(id, ReplyBody::UnwatchedService { service });
            }
            ClientMessage::Unwatch { prefix } => {
                if self.watches.remove(&prefix).is_none() {
                    return Err(ApiError::not_found(format!("no watch on {prefix:?}")));
                }
                self.out.reply(id, ReplyBody::Unwatched { prefix });
            }
        }
        Ok(())
    }

    /// `auth`: takes the token (with access control off, any token is as good as none).
    async fn auth(&mut self, id: Value, secret: &str) -> Result<(), ApiError> {
        let caller = if self.st.cluster.config().api.insecure_no_auth {
            Caller::Anyone
        } else {
            auth::authenticate(&self.st, secret, now_ms()).map_err(|m| {
                self.st
                    .cluster
                    .audit()
                    .count("auth_failed", "anyone", &self.source);
                ApiError::new(ErrorCode::Unauthenticated, m)
            })?
        };
        let (accessor_id, expires_at_ms) = (caller.actor().to_string(), caller.expires_at_ms());
        self.caller = Some(caller);
        self.acl_checked = 0;
        self.recheck().await;
        self.out.reply(
            id,
            ReplyBody::Authenticated {
                accessor_id,
                expires_at_ms,
            },
        );
        Ok(())
    }

    /// Checks the caller's token again when tokens or policies changed (or it may have
    /// expired): a deleted or expired token ends every subscription and watch with a
    /// `revoked` message; one whose policies no longer allow a subscription or watch ends
    /// that one with a `forbidden` error.
    async fn recheck(&mut self) {
        let Some(caller) = self.caller.clone().filter(|c| !matches!(c, Caller::Anyone)) else {
            return;
        };
        let version = self.st.cluster.state().acl().version();
        let expiring = caller.expires_at_ms().is_some_and(|at| at <= now_ms());
        if version == self.acl_checked && !expiring {
            return;
        }
        self.acl_checked = version;
        let Some(caller) = auth::recheck(&self.st, &caller, now_ms()) else {
            self.leave_all().await;
            self.subs.clear();
            self.watches.clear();
            self.services.clear();
            self.caller = None;
            let revoked = Revoked {
                message: "the token was deleted or expired: subscriptions and watches ended; \
                          send auth with another token"
                    .into(),
            };
            self.out.send(&ServerMessage::Push(Push::Revoked(revoked)));
            return;
        };
        let lost: Vec<String> = self
            .subs
            .keys()
            .filter(|c| !caller.may(&self.st, Resource::Channels, c, Op::Subscribe))
            .cloned()
            .collect();
        for channel in lost {
            if self.subs.remove(&channel).is_some_and(|s| s.present) {
                self.leave(&channel).await;
            }
            let e = auth::forbidden(Resource::Channels, Op::Subscribe, Some(&channel))
                .with("channel", channel);
            self.out.send(&ServerMessage::notice(e));
        }
        let lost: Vec<String> = self
            .watches
            .keys()
            .filter(|p| !caller.may_all(&self.st, Resource::Kv, p, Op::Read))
            .cloned()
            .collect();
        for prefix in lost {
            self.watches.remove(&prefix);
            let e = auth::forbidden(Resource::Kv, Op::Read, None).with("prefix", prefix);
            self.out.send(&ServerMessage::notice(e));
        }
        let lost: Vec<String> = self
            .services
            .keys()
            .filter(|s| !caller.may(&self.st, Resource::Services, s, Op::Read))
            .cloned()
            .collect();
        for service in lost {
            self.services.remove(&service);
            let e = auth::forbidden(Resource::Services, Op::Read, Some(&service))
                .with("service", service);
            self.out.send(&ServerMessage::notice(e));
        }
        self.caller = Some(caller);
    }

    fn check_room(&self) -> Result<(), ApiError> {
        if self.subs.len() + self.watches.len() + self.services.len() >= WS_SUBSCRIPTIONS_MAX {
            return Err(ApiError::limited(format!(
                "at most {WS_SUBSCRIPTIONS_MAX} subscriptions and watches per connection"
            )));
        }
        Ok(())
    }

    async fn subscribe(
        &mut self,
        id: Value,
        channel: String,
        since: Option<u64>,
        user: Option<String>,
    ) -> Result<(), ApiError> {
        validate_name("channel", &channel)?;
        if !self.subs.contains_key(&channel) {
            self.check_room()?;
        }
        if let Some(u) = &user {
            validate_name("user", u)?;
        }
        let latest = self.st.cluster.state().channel_latest_offset(&channel);
        let present = self.subs.get(&channel).is_some_and(|s| s.present);
        let sub = match since {
            // Not clamped to `latest`: a lagging node's feed brings the missing events later,
            // and clamping would send offsets the client already has.
            Some(since) => Sub {
                last_sent: since,
                catch_up: Some(CatchUp {
                    from: since.saturating_add(1),
                    requested: true,
                    lost: false,
                }),
                present,
            },
            None => Sub {
                last_sent: latest,
                catch_up: None,
                present,
            },
        };
        self.subs.insert(channel.clone(), sub);
        if let (Some(user), false) = (user, present) {
            self.join_presence(&channel, user).await?;
        }
        let client_id = self.client_id.clone();
        self.out.reply(
            id,
            ReplyBody::Subscribed {
                channel,
                offset: latest,
                client_id,
            },
        );
        // Start right away rather than on the next tick.
        if since.is_some() {
            self.catch_up_step();
        }
        Ok(())
    }

    async fn join_presence(&mut self, channel: &str, user: String) -> Result<(), ApiError> {
        let command = ChannelCmd::PresenceJoin {
            channel: channel.to_string(),
            client_id: self.client_id.clone(),
            user,
            node_id: self.st.cluster.id,
            incarnation: self.st.hub.incarnation,
            lease_ms: self.st.cluster.config().channels.presence_lease_ms,
        };
        match crate::service::propose(&self.st.cluster, command, None).await {
            Ok(ChannelResult::Present) => {
                self.st.hub.presence_joined();
                if let Some(s) = self.subs.get_mut(channel) {
                    s.present = true;
                }
                Ok(())
            }
            Ok(other) => Err(other.into()),
            Err(e) => Err(e.into()),
        }
    }

    async fn unsubscribe(&mut self, id: Value, channel: String) -> Result<(), ApiError> {
        validate_name("channel", &channel)?;
        let Some(sub) = self.subs.remove(&channel) else {
            return Err(ApiError::not_found(format!(
                "not subscribed to {channel:?}"
            )));
        };
        if sub.present {
            self.leave(&channel).await;
        }
        self.out.reply(id, ReplyBody::Unsubscribed { channel });
        Ok(())
    }

    /// Answered from a task, so the connection keeps delivering while the write commits.
    fn publish(&self, id: Value, channel: String, data: Value) -> Result<(), ApiError> {
        validate_name("channel", &channel)?;
        if data.is_null() {
            return Err(ApiError::bad_request("publish needs data"));
        }
        let Ok(permit) = self.publishes.clone().try_acquire_owned() else {
            let max = self.st.cluster.config().ws.max_pending_publishes;
            return Err(ApiError::limited(format!(
                "{max} publishes of this connection already wait for their write \
                 (ws.max_pending_publishes); wait for their answers"
            ))
            .with("limit", max)
            .with("setting", "ws.max_pending_publishes"));
        };
        let command = super::channels::publish_command(&self.st, channel, &data)?;
        let st = self.st.clone();
        let out = self.out.shared();
        self.st.hub.spawn(async move {
            let _permit = permit;
            match crate::service::propose(&st.cluster, command, None).await {
                Ok(ChannelResult::Published { offset }) => {
                    out.reply(id, ReplyBody::Published { offset })
                }
                Ok(other) => out.refuse(id, other.into()),
                Err(e) => out.refuse(id, e.into()),
            };
        });
        Ok(())
    }

    fn watch(
        &mut self,
        id: Value,
        prefix: String,
        since_revision: Option<u64>,
    ) -> Result<(), ApiError> {
        if prefix.len() > 512 {
            return Err(ApiError::bad_request("prefix must be at most 512 bytes"));
        }
        if !self.watches.contains_key(&prefix) {
            self.check_room()?;
        }
        let (revision, compact_revision) = {
            let s = self.st.cluster.state();
            (s.meta.revision, s.compact_revision())
        };
        // `since_revision` R: every change after R. Replaying needs the history from R + 1.
        let from = since_revision.unwrap_or(revision);
        if from < compact_revision {
            return Err(compacted_error(&prefix, from, compact_revision));
        }
        self.watches.insert(
            prefix.clone(),
            Watch {
                prefix: prefix.clone(),
                sent_through: from,
                catching_up: from < revision,
            },
        );
        let body = ReplyBody::Watching {
            prefix,
            revision,
            compact_revision,
        };
        self.out.reply(id, body);
        if from < revision {
            self.catch_up_step();
        }
        Ok(())
    }

    /// One applied batch from the feed. A channel event's text frame is rendered once for
    /// every connection of the node ([`crate::realtime::Hub::rendered`]).
    fn live(&mut self, events: &Arc<Vec<LiveEvent>>) {
        let mut rendered = None;
        let mut max_revision = None;
        for (i, e) in events.iter().enumerate() {
            match e {
                LiveEvent::Channel { channel, event } => {
                    let Some(sub) = self.subs.get_mut(channel) else {
                        continue;
                    };
                    if event.offset <= sub.last_sent || sub.catch_up.is_some() {
                        // Already sent, or the running catch-up reads it from history.
                        continue;
                    }
                    if event.offset != sub.last_sent.saturating_add(1) {
                        // Something was missed: fill the gap from history, in order.
                        sub.catch_up = CatchUp::gap(sub.last_sent.saturating_add(1));
                        continue;
                    }
                    sub.last_sent = event.offset;
                    let texts = rendered.get_or_insert_with(|| self.st.hub.rendered(events));
                    let text = texts[i].get_or_init(|| event_text(channel, event));
                    if !self.out.push(text.clone()) {
                        return;
                    }
                }
                LiveEvent::Kv(change) => {
                    max_revision = Some(change.revision);
                    if !self.live_kv(change) {
                        return;
                    }
                }
                LiveEvent::Service { service, revision } => {
                    if self
                        .services
                        .get(service)
                        .is_some_and(|sent| sent < revision)
                        && !self.send_service(service)
                    {
                        return;
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

    /// Sends a live key change to every watch it falls under; `false` once the queue is full.
    fn live_kv(&self, change: &KvEvent) -> bool {
        self.watches
            .values()
            .filter(|w| {
                !w.catching_up
                    && change.revision > w.sent_through
                    && change.key.starts_with(&w.prefix)
            })
            .all(|w| self.out.push(kv_text(&w.prefix, change)))
    }

    /// The feed lagged or the state was replaced: every channel re-reads its history past its
    /// last sent offset, every watch the key-value history past its last sent revision.
    fn resync(&mut self) {
        for sub in self.subs.values_mut() {
            if sub.catch_up.is_none() {
                sub.catch_up = CatchUp::gap(sub.last_sent.saturating_add(1));
            }
        }
        for w in self.watches.values_mut() {
            w.catching_up = true;
        }
        let services: Vec<String> = self.services.keys().cloned().collect();
        for service in services {
            let current = self.st.cluster.state().service_revision(&service);
            if self
                .services
                .get(&service)
                .is_some_and(|sent| *sent < current)
                && !self.send_service(&service)
            {
                return;
            }
        }
    }

    /// `watch_service`: the reply, then the instances at once when the service changed after
    /// `since_revision`.
    fn watch_service(
        &mut self,
        id: Value,
        service: String,
        since_revision: Option<u64>,
    ) -> Result<(), ApiError> {
        super::services::validate_ident("service", &service)?;
        if !self.services.contains_key(&service) {
            self.check_room()?;
        }
        let revision = self.st.cluster.state().service_revision(&service);
        let sent = since_revision.unwrap_or(revision);
        self.services.insert(service.clone(), sent);
        self.out.reply(
            id,
            ReplyBody::WatchingService {
                service: service.clone(),
                revision,
            },
        );
        if sent < revision || since_revision == Some(0) {
            self.send_service(&service);
        }
        Ok(())
    }

    /// Pushes `service`'s instances as this node's state holds them now; `false` once the
    /// queue is full.
    fn send_service(&mut self, service: &str) -> bool {
        let alive = crate::checks::alive_members(&self.st.cluster);
        let view = super::services::service_view(&self.st.cluster.state(), service, false, &alive);
        self.services.insert(service.to_string(), view.revision);
        self.out.send(&ServerMessage::Push(Push::Service(view)))
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
            match w.replay(&self.out, &state, budget) {
                Ok(true) => {}
                // The client reads slower than the pace: try again next tick.
                Ok(false) => break,
                Err(e) => {
                    self.out.send(&ServerMessage::notice(e));
                    ended.push(w.prefix.clone());
                }
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
            if sub.catch_up.is_none() {
                continue;
            }
            let page = {
                let s = state.read();
                s.channel_history(channel, sub.last_sent, budget)
            };
            match sub.replay(&self.out, channel, page, &mut budget) {
                Some(true) => {
                    if !sub.end_catch_up(&self.out, channel) {
                        return;
                    }
                }
                Some(false) => {}
                None => return,
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
        let _ = crate::service::propose(&self.st.cluster, command, None).await;
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

impl Sub {
    /// Queues the events of a history page not sent yet. Answers whether the catch-up has
    /// reached the end of the history, or `None` when the queue has no room for more now.
    fn replay(
        &mut self,
        out: &Outbox,
        channel: &str,
        page: Option<History>,
        budget: &mut usize,
    ) -> Option<bool> {
        let Some(h) = page else {
            return Some(true);
        };
        if self.last_sent.saturating_add(1) < h.earliest_offset && self.last_sent < h.latest_offset
        {
            // Trimmed by retention before it could be sent.
            if let Some(cu) = self.catch_up.as_mut() {
                cu.lost = true;
            }
            self.last_sent = h.earliest_offset - 1;
        }
        *budget = budget.saturating_sub(h.events.len());
        for e in &h.events {
            if e.offset <= self.last_sent {
                continue;
            }
            let text = event_text(channel, e);
            if !out.has_room_for_replay(text.as_str().len()) {
                // The client reads slower than the pace: try again next tick.
                return None;
            }
            self.last_sent = e.offset;
            if !out.push(text) {
                return None;
            }
        }
        Some(self.last_sent >= h.latest_offset)
    }

    /// Ends the catch-up, telling the client `recovered` when it asked for one or events
    /// were lost; `false` when the queue is full.
    fn end_catch_up(&mut self, out: &Outbox, channel: &str) -> bool {
        let cu = self.catch_up.take().expect("catching up");
        if !cu.requested && !cu.lost {
            return true;
        }
        out.send(&ServerMessage::Push(Push::Recovered(Recovered {
            channel: channel.to_string(),
            from: cu.from,
            to: self.last_sent,
            complete: !cu.lost,
        })))
    }
}

impl Watch {
    /// Queues the next page of key-value history past `sent_through` (whole revisions);
    /// `false` when the queue has no room for more now, the `compacted` error that ends the
    /// watch when that history is gone.
    fn replay(
        &mut self,
        out: &Outbox,
        state: &StateReader,
        budget: &mut usize,
    ) -> Result<bool, ApiError> {
        let limit = (*budget).max(REVISION_EVENTS_MAX);
        let (page, current) = {
            let s = state.read();
            let page = s.kv_events_since(&self.prefix, self.sent_through.saturating_add(1), limit);
            (page, s.meta.revision)
        };
        let mut events =
            page.map_err(|c| compacted_error(&self.prefix, self.sent_through, c.compact_revision))?;
        let full = events.len() == limit;
        if full {
            // The last revision may continue past the page: leave it for the next one.
            let last = events.last().map(|e| e.revision).unwrap_or(0);
            events.retain(|e| e.revision != last);
        }
        *budget = budget.saturating_sub(events.len());
        for e in &events {
            let text = kv_text(&self.prefix, e);
            if !out.has_room_for_replay(text.as_str().len()) || !out.push(text) {
                return Ok(false);
            }
            self.sent_through = e.revision;
        }
        if !full {
            // Everything up to `current` has been read: the live feed takes over.
            self.sent_through = self.sent_through.max(current);
            self.catching_up = false;
        }
        Ok(true)
    }
}

/// The text frame of a channel event; its `data` is stored as JSON text and sent as it is.
fn event_text(channel: &str, e: &ChannelEvent) -> Utf8Bytes {
    let data = RawValue::from_string(e.data.clone())
        // Stored from a parsed value, so valid JSON; were it not, it goes as a string.
        .or_else(|_| serde_json::value::to_raw_value(&e.data))
        .expect("a string serializes");
    let event = Event {
        channel: channel.to_string(),
        offset: e.offset,
        ts_ms: e.ts_ms,
        data,
    };
    ServerMessage::Push(Push::Event(event)).to_text().into()
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

/// The text frame of a key change, for the watch on `prefix`.
fn kv_text(prefix: &str, c: &KvEvent) -> Utf8Bytes {
    let b64 = base64::engine::general_purpose::STANDARD;
    let change = KvChange {
        event: match c.value {
            Some(_) => KvEventKind::Put,
            None => KvEventKind::Delete,
        },
        key: c.key.clone(),
        revision: c.revision,
        value: c.value.as_ref().map(|v| b64.encode(v)),
        prefix: prefix.to_string(),
    };
    ServerMessage::Push(Push::Kv(change)).to_text().into()
}
