//! A small HTTP app to register as a service instance in tests and benchmarks.
//!
//! Usage: `test-app ADDR NAME [DELAY_MS]`. Serves:
//! - `GET /health`: 200 `ok`;
//! - `GET /ws`: a WebSocket that answers each text message with `NAME: <message>`;
//! - anything else: 200 with the JSON `{"instance": NAME, "path", "method", "forwarded_for",
//!   "forwarded_host", "forwarded_proto", "request_id", "body_bytes"}`, after DELAY_MS.
//!
//! It prints `listening ADDR` once it accepts connections.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, name) = match &args[..] {
        [addr, name] | [addr, name, _] => (addr.clone(), name.clone()),
        _ => anyhow::bail!("usage: test-app ADDR NAME [DELAY_MS]"),
    };
    let delay = Duration::from_millis(args.get(2).map_or(Ok(0), |d| d.parse())?);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let n1 = name.clone();
    let n2 = name.clone();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/ws",
            get(move |ws: WebSocketUpgrade| async move {
                ws.on_upgrade(move |socket| echo(socket, n1))
            }),
        )
        .fallback(move |req: Request| answer(req, n2.clone(), delay));
    println!("listening {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn echo(mut socket: WebSocket, name: String) {
    while let Some(Ok(msg)) = socket.recv().await {
        if let Message::Text(t) = msg {
            let reply = format!("{name}: {}", t.as_str());
            if socket.send(Message::Text(reply.into())).await.is_err() {
                return;
            }
        }
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn answer(req: Request, name: String, delay: Duration) -> Response {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (parts, body) = req.into_parts();
    let body_bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.len())
        .unwrap_or(0);
    let h = &parts.headers;
    axum::Json(serde_json::json!({
        "instance": name,
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "method": parts.method.as_str(),
        "forwarded_for": header(h, "x-forwarded-for"),
        "forwarded_host": header(h, "x-forwarded-host"),
        "forwarded_proto": header(h, "x-forwarded-proto"),
        "request_id": header(h, "x-request-id"),
        "body_bytes": body_bytes,
    }))
    .into_response()
}
