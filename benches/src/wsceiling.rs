//! `wsceiling`: the ceiling row of the WebSocket fan-out benchmark. A minimal broadcast server
//! on the same WebSocket stack as stackd (axum's WebSocket, that is tokio-tungstenite), with
//! nothing else: no replication, no history, no access control, no send queue bounds.
//!
//! It speaks just enough of stackd's API for `wsbench` to drive it unchanged:
//! `GET /v1/ws` takes `{"op": "subscribe"}` requests (any channel: there is one) and
//! `POST /v1/channels/{channel}/publish` with `{"data": ...}` sends the event to every
//! connection at once, in stackd's event shape.
//!
//! ```text
//! wsceiling --listen 127.0.0.1:7101
//! wsbench --targets http://127.0.0.1:7101 --subscribers 1000 --publishers 4
//! ```
//!
//! Each connection is one task that waits on the socket and on a broadcast receiver and
//! writes each event as it comes; an event is serialized once and its bytes shared.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use node::api::ws_protocol::{ClientMessage, Event, Push, ReplyBody, Request, ServerMessage};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

/// Most bytes one read from a socket takes (as stackd: the codec zeroes this much per read).
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Events a connection may fall behind before it misses some (`broadcast` lag).
const BACKLOG: usize = 4096;

/// A minimal WebSocket broadcast server, the ceiling for stackd's fan-out.
#[derive(Debug, Parser)]
#[command(name = "wsceiling", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7101")]
    listen: String,
}

struct Hub {
    events: broadcast::Sender<Utf8Bytes>,
    offset: AtomicU64,
}

#[derive(Deserialize)]
struct Publish {
    data: Box<RawValue>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let hub = Arc::new(Hub {
        events: broadcast::channel(BACKLOG).0,
        offset: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/ws", get(upgrade))
        .route("/v1/channels/{channel}/publish", post(publish))
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publish(
    State(hub): State<Arc<Hub>>,
    Path(channel): Path<String>,
    Json(p): Json<Publish>,
) -> (StatusCode, Json<serde_json::Value>) {
    let offset = hub.offset.fetch_add(1, Ordering::Relaxed) + 1;
    let event = ServerMessage::Push(Push::Event(Event {
        channel,
        offset,
        ts_ms: node::cluster::now_ms(),
        data: p.data,
    }));
    // No receiver is not an error: the event is simply not delivered.
    let _ = hub.events.send(event.to_text().into());
    (
        StatusCode::OK,
        Json(serde_json::json!({ "offset": offset })),
    )
}

async fn upgrade(State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade) -> axum::response::Response {
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| serve(socket, hub.events.subscribe()))
}

/// Serves one connection until either side ends it.
async fn serve(mut socket: WebSocket, mut events: broadcast::Receiver<Utf8Bytes>) {
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = answer(&text) {
                        if socket.send(Message::Text(reply)).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            event = events.recv() => match event {
                Ok(text) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The reply to a client's request: subscriptions succeed, anything else is ignored.
fn answer(text: &str) -> Option<Utf8Bytes> {
    let Ok(Request {
        id,
        message: ClientMessage::Subscribe { channel, .. },
    }) = Request::parse(text)
    else {
        return None;
    };
    let body = ReplyBody::Subscribed {
        channel,
        offset: 0,
        client_id: String::new(),
    };
    Some(ServerMessage::reply(id, body).to_text().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribe_is_answered_with_a_subscribed_reply_and_other_frames_are_ignored() {
        let reply = answer(r#"{"id": 7, "op": "subscribe", "channel": "bench"}"#).unwrap();
        match ServerMessage::parse(reply.as_str()).unwrap() {
            ServerMessage::Reply(r) => {
                assert_eq!(r.id, serde_json::json!(7));
                assert!(
                    matches!(r.body, ReplyBody::Subscribed { ref channel, .. } if channel == "bench")
                );
            }
            other => panic!("not a reply: {other:?}"),
        }
        assert!(answer("not json").is_none());
        assert!(answer(r#"{"id": 1, "op": "ping"}"#).is_none());
    }
}
