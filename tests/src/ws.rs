//! A small WebSocket client for `GET /v1/ws`, for tests and their wait helpers. It speaks the
//! server's own message types ([`node::api::ws_protocol`]).

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use node::api::ws_protocol::{
    ClientMessage, Event, Push, ReplyBody, Request, ServerMessage, WsError,
};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Pushed messages (events, recovered, kv, errors) read while waiting for a reply.
    pending: VecDeque<Push>,
    next_id: u64,
}

/// What ended a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

/// The answer to a request: the reply's fields, or the error it was refused with.
pub type Answer = std::result::Result<ReplyBody, WsError>;

impl WsClient {
    /// Connects to `base` (`http://IP:PORT`), with `query` appended to `/v1/ws` when given.
    pub async fn connect(base: &str, query: &str) -> Result<Self> {
        let url = format!("{}/v1/ws{}", base.replacen("http://", "ws://", 1), query);
        let (stream, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .context("WebSocket connect timed out")?
        .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            stream,
            pending: VecDeque::new(),
            next_id: 1,
        })
    }

    async fn read(
        &mut self,
        timeout: Duration,
    ) -> Result<std::result::Result<ServerMessage, Closed>> {
        loop {
            let msg = tokio::time::timeout(timeout, self.stream.next())
                .await
                .context("no WebSocket message in time")?;
            let closed = |code, reason| Ok(Err(Closed { code, reason }));
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let m = ServerMessage::parse(t.as_str())
                        .with_context(|| format!("not a server message: {}", t.as_str()))?;
                    return Ok(Ok(m));
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code));
                    return closed(
                        code,
                        frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return closed(None, e.to_string()),
                None => return closed(None, "stream ended".into()),
            }
        }
    }

    /// Sends `message` with a fresh `id` and returns the answer to it (reply or refusal).
    pub async fn request(&mut self, message: ClientMessage) -> Result<Answer> {
        let id = Value::from(self.next_id);
        self.next_id += 1;
        let text = serde_json::to_string(&Request::new(id.clone(), message))?;
        match self.send_text(&text, &id).await? {
            ServerMessage::Reply(r) => Ok(Ok(r.body)),
            ServerMessage::Refusal(r) => Ok(Err(r.error)),
            ServerMessage::Push(p) => bail!("a push answered request {id}: {p:?}"),
        }
    }

    /// Sends the text frame `text` as it is, without waiting for its answer.
    pub async fn send_raw(&mut self, text: &str) -> Result<()> {
        self.stream.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends the text frame `text` as it is and returns the answer carrying `id` (`null` for
    /// a frame the server could not read an id from).
    pub async fn send_text(&mut self, text: &str, id: &Value) -> Result<ServerMessage> {
        self.stream.send(Message::Text(text.into())).await?;
        loop {
            match self.read(Duration::from_secs(15)).await? {
                Ok(ServerMessage::Push(p)) => self.pending.push_back(p),
                Ok(m) if m.id() == Some(id) => return Ok(m),
                Ok(m) => bail!("an answer to another request while waiting for {id}: {m:?}"),
                Err(c) => bail!("connection closed while waiting for reply {id}: {c:?}"),
            }
        }
    }

    /// Subscribes to `channel` (from `since` when given); fails unless the reply is ok.
    /// Answers the channel's latest offset on that node.
    pub async fn subscribe(&mut self, channel: &str, since: Option<u64>) -> Result<u64> {
        let message = ClientMessage::Subscribe {
            channel: channel.to_string(),
            since,
            user: None,
        };
        match self.request(message).await? {
            Ok(ReplyBody::Subscribed { offset, .. }) => Ok(offset),
            other => bail!("subscribe refused: {other:?}"),
        }
    }

    /// The next pushed message (not a reply), or how the connection ended.
    pub async fn next(&mut self, timeout: Duration) -> Result<std::result::Result<Push, Closed>> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(Ok(p));
        }
        loop {
            match self.read(timeout).await? {
                Ok(ServerMessage::Push(p)) => return Ok(Ok(p)),
                Ok(_) => continue,
                Err(c) => return Ok(Err(c)),
            }
        }
    }

    /// The next pushed message; fails if the connection ended.
    pub async fn next_msg(&mut self, timeout: Duration) -> Result<Push> {
        match self.next(timeout).await? {
            Ok(p) => Ok(p),
            Err(c) => bail!("connection closed: {c:?}"),
        }
    }

    /// Reads `n` channel events (skipping other pushed messages into `others`).
    pub async fn events(&mut self, n: usize, others: &mut Vec<Push>) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        while out.len() < n {
            let p = self
                .next_msg(Duration::from_secs(15))
                .await
                .with_context(|| format!("after {} of {n} events", out.len()))?;
            match p {
                Push::Event(e) => out.push(e),
                other => others.push(other),
            }
        }
        Ok(out)
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// The close code for a slow consumer (policy violation).
pub const SLOW_CONSUMER_CLOSE: u16 = 1008;

pub fn is_policy(code: Option<u16>) -> bool {
    code == Some(u16::from(CloseCode::Policy))
}
