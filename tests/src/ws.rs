//! A small WebSocket client for `GET /v1/ws`, for tests and their wait helpers.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Pushed messages (events, recovered, kv, errors) read while waiting for a reply.
    pending: VecDeque<Value>,
    next_id: u64,
}

/// What ended a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

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

    async fn read(&mut self, timeout: Duration) -> Result<std::result::Result<Value, Closed>> {
        loop {
            let msg = tokio::time::timeout(timeout, self.stream.next())
                .await
                .context("no WebSocket message in time")?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(Ok(serde_json::from_str(t.as_str())?)),
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Err(Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    }))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Ok(Err(Closed {
                        code: None,
                        reason: e.to_string(),
                    }))
                }
                None => {
                    return Ok(Err(Closed {
                        code: None,
                        reason: "stream ended".into(),
                    }))
                }
            }
        }
    }

    /// Sends `body` with a fresh `id` and returns the reply to it (ok or error).
    pub async fn request(&mut self, mut body: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        body["id"] = json!(id);
        self.stream
            .send(Message::Text(body.to_string().into()))
            .await?;
        loop {
            match self.read(Duration::from_secs(15)).await? {
                Ok(v) if v["id"] == json!(id) => return Ok(v),
                Ok(v) => self.pending.push_back(v),
                Err(c) => bail!("connection closed while waiting for reply {id}: {c:?}"),
            }
        }
    }

    /// Subscribes to `channel` (from `since` when given); fails unless the reply is ok.
    pub async fn subscribe(&mut self, channel: &str, since: Option<u64>) -> Result<Value> {
        let mut body = json!({ "op": "subscribe", "channel": channel });
        if let Some(s) = since {
            body["since"] = json!(s);
        }
        let r = self.request(body).await?;
        if r["ok"] != json!(true) {
            bail!("subscribe refused: {r}");
        }
        Ok(r)
    }

    /// The next pushed message (not a reply), or how the connection ended.
    pub async fn next(&mut self, timeout: Duration) -> Result<std::result::Result<Value, Closed>> {
        if let Some(v) = self.pending.pop_front() {
            return Ok(Ok(v));
        }
        loop {
            match self.read(timeout).await? {
                Ok(v) if v.get("id").is_some() && v.get("type").is_none() => continue,
                other => return Ok(other),
            }
        }
    }

    /// The next pushed message; fails if the connection ended.
    pub async fn next_msg(&mut self, timeout: Duration) -> Result<Value> {
        match self.next(timeout).await? {
            Ok(v) => Ok(v),
            Err(c) => bail!("connection closed: {c:?}"),
        }
    }

    /// Reads `n` channel events (skipping other pushed messages into `others`).
    pub async fn events(&mut self, n: usize, others: &mut Vec<Value>) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self
                .next_msg(Duration::from_secs(15))
                .await
                .with_context(|| format!("after {} of {n} events", out.len()))?;
            if v["type"] == "event" {
                out.push(v);
            } else {
                others.push(v);
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
