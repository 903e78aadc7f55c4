//! The messages of `GET /v1/ws` (JSON text frames), shared by the server ([`super::ws`]) and
//! every Rust client (tests, `wsbench`).
//!
//! A client sends a [`Request`]: an optional `id`, echoed in the answer, and a
//! [`ClientMessage`] tagged by `op`. The server sends [`ServerMessage`]s: a [`Reply`] to a
//! request (`id`, `ok: true` and the op's fields), a [`Refusal`] of one (`id` and `error`),
//! or a [`Push`] tagged by `type` (channel events, the end of a catch-up, key changes and
//! errors not tied to a request).
//!
//! ```text
//! → {"id":1,"op":"subscribe","channel":"chat","since":41,"user":"ann"}
//! ← {"id":1,"ok":true,"channel":"chat","offset":57,"client_id":"a1b2…"}
//! ← {"type":"event","channel":"chat","offset":42,"ts_ms":…,"data":{…}}
//! ← {"type":"recovered","channel":"chat","from":42,"to":57,"complete":true}
//! → {"id":2,"op":"nope"}
//! ← {"id":2,"error":{"code":"bad_request","message":"…"}}
//! ```

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorCode};

/// A client's message: the op and its fields, with the `id` the answer echoes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Any JSON value; answers carry it back (`null` when it was left out).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub id: Value,
    #[serde(flatten)]
    pub message: ClientMessage,
}

/// What a client asks, tagged by `op`; each op takes exactly these fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Events of `channel`: with `since`, the retained ones after that offset first, then
    /// `recovered`; with `user`, joins the channel's presence. Answered by
    /// [`ReplyBody::Subscribed`].
    Subscribe {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Answered by [`ReplyBody::Unsubscribed`]; `not_found` when not subscribed.
    Unsubscribe { channel: String },
    /// Answered by [`ReplyBody::Published`] once the event is committed.
    Publish { channel: String, data: Value },
    /// Every key put and delete under `prefix` (default: every key) after `since_revision`
    /// (default: from now). Answered by [`ReplyBody::Watching`], or `compacted`.
    Watch {
        #[serde(default)]
        prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_revision: Option<u64>,
    },
    /// Answered by [`ReplyBody::Unwatched`]; `not_found` when not watching.
    Unwatch {
        #[serde(default)]
        prefix: String,
    },
    /// The instances of `service` (all, with their status) each time the service changes;
    /// with `since_revision`, at once too when the service changed after it (0: the current
    /// instances at once). Answered by [`ReplyBody::WatchingService`].
    WatchService {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_revision: Option<u64>,
    },
    /// Answered by [`ReplyBody::UnwatchedService`]; `not_found` when not watching.
    UnwatchService { service: String },
    /// Answered by [`ReplyBody::Pong`]. (A struct variant: a unit one would take any field.)
    Ping {},
    /// Authenticates the connection with a token secret: the first message when access
    /// control is on (and no `Authorization` header came with the upgrade). Sent again with a
    /// fresh token, it replaces the old one; subscriptions the new token still allows go on.
    /// Answered by [`ReplyBody::Authenticated`].
    Auth { token: String },
}

impl Request {
    pub fn new(id: impl Into<Value>, message: ClientMessage) -> Self {
        Self {
            id: id.into(),
            message,
        }
    }

    /// Reads one client frame. A frame that is not a valid request is answered with the
    /// returned error, and with its `id` when one could be read.
    pub fn parse(text: &str) -> Result<Self, (Value, ApiError)> {
        serde_json::from_str(text).map_err(|e| {
            /// Only the id of a frame that is not a valid request.
            #[derive(Deserialize)]
            struct IdOnly {
                #[serde(default)]
                id: Value,
            }
            let id = serde_json::from_str::<IdOnly>(text)
                .map(|m| m.id)
                .unwrap_or(Value::Null);
            (id, ApiError::bad_request(format!("bad message: {e}")))
        })
    }
}

/// Every message the server sends: a reply, a refusal, or a push.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ServerMessage {
    Reply(Reply),
    Refusal(Refusal),
    Push(Push),
}

/// The answer to a request that succeeded: `{"id", "ok": true, ...the op's fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: Value,
    /// Always `true`.
    pub ok: bool,
    #[serde(flatten)]
    pub body: ReplyBody,
}

/// The fields of a reply, by op (told apart by which fields they have).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplyBody {
    /// To `subscribe`: `offset` is the channel's latest offset on this node; `client_id`
    /// the connection's presence id.
    Subscribed {
        channel: String,
        offset: u64,
        client_id: String,
    },
    /// To `watch`: the node's revision and compact revision when the watch started.
    Watching {
        prefix: String,
        revision: u64,
        compact_revision: u64,
    },
    /// To `watch_service`: the service's revision when the watch started.
    WatchingService { service: String, revision: u64 },
    /// To `unwatch_service`.
    UnwatchedService { service: String },
    /// To `publish`: the event's offset.
    Published { offset: u64 },
    /// To `unsubscribe`.
    Unsubscribed { channel: String },
    /// To `unwatch`.
    Unwatched { prefix: String },
    /// To `ping`: always `true`.
    Pong { pong: bool },
    /// To `auth`: the token's accessor id (`anyone` with access control off) and expiry.
    Authenticated {
        accessor_id: String,
        expires_at_ms: Option<u64>,
    },
}

/// The answer to a request that failed, or to a frame that is not a request:
/// `{"id", "error": {"code", "message", ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub id: Value,
    pub error: WsError,
}

/// A message not tied to a request, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push {
    Event(Event),
    Recovered(Recovered),
    Kv(KvChange),
    /// This node is busy: connect to `api_addr` (node `node`) instead, adding `moved=1` to
    /// the URL. The connection then closes with 1013.
    Moved(Moved),
    /// A watched service changed: its instances now.
    Service(crate::api::services::ServiceView),
    /// The connection is closing (`slow_consumer`, `going_away`), a watch ended
    /// (`compacted`), or a subscription or watch ended because the token's policies no longer
    /// allow it (`forbidden`, with `channel` or `prefix`).
    Error(Notice),
    /// The connection's token was deleted or expired: every subscription and watch has ended;
    /// the connection stays open for an `auth` with another token.
    Revoked(Revoked),
}

/// `{"type": "moved", "node", "api_addr"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub node: u64,
    pub api_addr: String,
}

/// `{"type": "revoked", "message"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    pub message: String,
}

/// One event of a subscribed channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub channel: String,
    pub offset: u64,
    pub ts_ms: u64,
    /// The JSON published, as it was stored.
    pub data: Box<RawValue>,
}

/// A catch-up ended: events `from..=to` were replayed; `complete` is false when retention
/// dropped some of them first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovered {
    pub channel: String,
    pub from: u64,
    pub to: u64,
    pub complete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvEventKind {
    Put,
    Delete,
}

/// One key change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvChange {
    pub event: KvEventKind,
    pub key: String,
    pub revision: u64,
    /// Base64 of the value put; `null` for a delete.
    pub value: Option<String>,
    /// The watch it belongs to.
    pub prefix: String,
}

/// An error not tied to a request: `{"type": "error", "error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub error: WsError,
}

/// `code` and `message`, plus the fields some errors add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsError {
    pub code: ErrorCode,
    pub message: String,
    /// `slow_consumer`: the send queue's bound in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// `compacted`: the key-value history starts after this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<u64>,
    /// `compacted`: the watch's prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The fields an error of the HTTP API adds (`reason`, `limit`, ...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl From<ApiError> for WsError {
    fn from(e: ApiError) -> Self {
        let mut other = e.extra;
        let mut take_u64 = |key: &str| match other.get(key).and_then(Value::as_u64) {
            Some(n) => {
                other.remove(key);
                Some(n)
            }
            None => None,
        };
        let limit_bytes = take_u64("limit_bytes");
        let compact_revision = take_u64("compact_revision");
        let prefix = match other.remove("prefix") {
            Some(Value::String(p)) => Some(p),
            Some(v) => {
                other.insert("prefix".into(), v);
                None
            }
            None => None,
        };
        Self {
            code: e.code,
            message: e.message,
            limit_bytes,
            compact_revision,
            prefix,
            other,
        }
    }
}

impl ServerMessage {
    pub fn reply(id: Value, body: ReplyBody) -> Self {
        Self::Reply(Reply { id, ok: true, body })
    }

    pub fn refusal(id: Value, error: impl Into<WsError>) -> Self {
        Self::Refusal(Refusal {
            id,
            error: error.into(),
        })
    }

    pub fn notice(error: impl Into<WsError>) -> Self {
        Self::Push(Push::Error(Notice {
            error: error.into(),
        }))
    }

    /// The JSON text frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("protocol messages serialize")
    }

    /// Reads a server frame.
    pub fn parse(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// The id of a reply or refusal; `None` for a push.
    pub fn id(&self) -> Option<&Value> {
        match self {
            Self::Reply(r) => Some(&r.id),
            Self::Refusal(r) => Some(&r.id),
            Self::Push(_) => None,
        }
    }
}

// Told apart by their fields: `type` (a push), else `error` (a refusal), else a reply. The
// derived forms cannot read an event's `data` ([`RawValue`]) through a tagged or untagged
// enum, so each variant is read from a `Value`.
impl<'de> Deserialize<'de> for ServerMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let r = if v.get("type").is_some() {
            Push::from_value(v).map(Self::Push)
        } else if v.get("error").is_some() {
            Refusal::deserialize(v).map(Self::Refusal)
        } else {
            Reply::deserialize(v).map(Self::Reply)
        };
        r.map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Push {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Push::from_value(Value::deserialize(d)?).map_err(D::Error::custom)
    }
}

impl Push {
    fn from_value(v: Value) -> serde_json::Result<Self> {
        match v.get("type").and_then(Value::as_str) {
            Some("event") => Event::deserialize(v).map(Push::Event),
            Some("recovered") => Recovered::deserialize(v).map(Push::Recovered),
            Some("kv") => KvChange::deserialize(v).map(Push::Kv),
            Some("error") => Notice::deserialize(v).map(Push::Error),
            Some("revoked") => Revoked::deserialize(v).map(Push::Revoked),
            Some("moved") => Moved::deserialize(v).map(Push::Moved),
            Some("service") => crate::api::services::ServiceView::deserialize(v).map(Push::Service),
            other => Err(serde_json::Error::custom(format!(
                "unknown message type {other:?}"
            ))),
        }
    }
}

impl Event {
    /// `data` as a JSON value.
    pub fn data_value(&self) -> Value {
        serde_json::from_str(self.data.get()).expect("RawValue holds valid JSON")
    }
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (&self.channel, self.offset, self.ts_ms, self.data.get())
            == (&o.channel, o.offset, o.ts_ms, o.data.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client(v: Value) -> Result<Request, (Value, ApiError)> {
        Request::parse(&v.to_string())
    }

    #[test]
    fn every_op_reads_with_its_fields_and_writes_back_the_same() {
        let cases = [
            json!({"id": 1, "op": "subscribe", "channel": "chat", "since": 41, "user": "ann"}),
            json!({"id": "a", "op": "subscribe", "channel": "chat"}),
            json!({"id": 2, "op": "unsubscribe", "channel": "chat"}),
            json!({"id": 3, "op": "publish", "channel": "chat", "data": {"text": "hi"}}),
            json!({"id": 4, "op": "watch", "prefix": "config/", "since_revision": 7}),
            json!({"id": 5, "op": "unwatch", "prefix": "config/"}),
            json!({"id": 6, "op": "ping"}),
            json!({"op": "ping"}),
            json!({"id": 7, "op": "auth", "token": "secret"}),
        ];
        for v in cases {
            let r = client(v.clone()).unwrap_or_else(|(_, e)| panic!("{v}: {}", e.message));
            assert_eq!(serde_json::to_value(&r).unwrap(), v);
        }
        let r = client(json!({"id": 9, "op": "watch"})).unwrap();
        assert_eq!(
            r.message,
            ClientMessage::Watch {
                prefix: String::new(),
                since_revision: None
            }
        );
    }

    #[test]
    fn a_bad_frame_is_refused_as_bad_request_with_its_id_when_it_has_one() {
        for (v, id, says) in [
            (
                json!({"id": 7, "op": "nope"}),
                json!(7),
                "unknown variant `nope`",
            ),
            (
                json!({"id": 8, "op": "subscribe"}),
                json!(8),
                "missing field `channel`",
            ),
            (
                json!({"id": 9, "op": "publish", "channel": "c"}),
                json!(9),
                "missing field `data`",
            ),
            (
                json!({"id": 10, "op": "ping", "channel": "c"}),
                json!(10),
                "unknown field `channel`",
            ),
            (json!({"id": 11}), json!(11), "missing field `op`"),
            (
                json!({"op": "subscribe", "channel": 3}),
                Value::Null,
                "invalid type",
            ),
            (json!([1, 2]), Value::Null, ""),
        ] {
            let (got_id, e) = client(v.clone()).expect_err("refused");
            assert_eq!(got_id, id, "{v}");
            assert_eq!(e.code, ErrorCode::BadRequest, "{v}");
            assert!(e.message.contains(says), "{v}: {}", e.message);
        }
        let (id, e) = Request::parse("{not json").expect_err("refused");
        assert_eq!((id, e.code), (Value::Null, ErrorCode::BadRequest));
    }

    #[test]
    fn server_messages_have_the_documented_shapes_and_read_back() {
        let raw = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        let cases = [
            (
                ServerMessage::reply(
                    json!(1),
                    ReplyBody::Subscribed {
                        channel: "c".into(),
                        offset: 4,
                        client_id: "x".into(),
                    },
                ),
                json!({"id": 1, "ok": true, "channel": "c", "offset": 4, "client_id": "x"}),
            ),
            (
                ServerMessage::reply(
                    json!(2),
                    ReplyBody::Watching {
                        prefix: "p/".into(),
                        revision: 9,
                        compact_revision: 3,
                    },
                ),
                json!({"id": 2, "ok": true, "prefix": "p/", "revision": 9, "compact_revision": 3}),
            ),
            (
                ServerMessage::reply(json!(3), ReplyBody::Published { offset: 5 }),
                json!({"id": 3, "ok": true, "offset": 5}),
            ),
            (
                ServerMessage::reply(
                    json!(4),
                    ReplyBody::Unsubscribed {
                        channel: "c".into(),
                    },
                ),
                json!({"id": 4, "ok": true, "channel": "c"}),
            ),
            (
                ServerMessage::reply(
                    json!(5),
                    ReplyBody::Unwatched {
                        prefix: "p/".into(),
                    },
                ),
                json!({"id": 5, "ok": true, "prefix": "p/"}),
            ),
            (
                ServerMessage::reply(Value::Null, ReplyBody::Pong { pong: true }),
                json!({"id": null, "ok": true, "pong": true}),
            ),
            (
                ServerMessage::refusal(
                    json!(6),
                    ApiError::not_found("no")
                        .with("reason", "r")
                        .with("prefix", "p/"),
                ),
                json!({"id": 6, "error": {"code": "not_found", "message": "no", "prefix": "p/", "reason": "r"}}),
            ),
            (
                ServerMessage::Push(Push::Event(Event {
                    channel: "c".into(),
                    offset: 7,
                    ts_ms: 8,
                    data: raw,
                })),
                json!({"type": "event", "channel": "c", "offset": 7, "ts_ms": 8, "data": {"n": 1}}),
            ),
            (
                ServerMessage::Push(Push::Recovered(Recovered {
                    channel: "c".into(),
                    from: 1,
                    to: 7,
                    complete: false,
                })),
                json!({"type": "recovered", "channel": "c", "from": 1, "to": 7, "complete": false}),
            ),
            (
                ServerMessage::Push(Push::Kv(KvChange {
                    event: KvEventKind::Delete,
                    key: "p/k".into(),
                    revision: 9,
                    value: None,
                    prefix: "p/".into(),
                })),
                json!({"type": "kv", "event": "delete", "key": "p/k", "revision": 9, "value": null, "prefix": "p/"}),
            ),
            (
                ServerMessage::notice(
                    ApiError::new(ErrorCode::SlowConsumer, "slow").with("limit_bytes", 10),
                ),
                json!({"type": "error", "error": {"code": "slow_consumer", "message": "slow", "limit_bytes": 10}}),
            ),
        ];
        for (msg, wire) in cases {
            let text = msg.to_text();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), wire);
            let back = ServerMessage::parse(&text).unwrap();
            assert_eq!(back.to_text(), text, "{wire}");
        }
    }
}
