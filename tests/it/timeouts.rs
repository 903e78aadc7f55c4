//! Slow and stalled clients meet a bound, get a clear answer where one can be sent, and the
//! node stays healthy: the header and body read timeouts, the write timeout (a stalled backup
//! download), the probes' own budget, the WebSocket idle timeout and the bound on publishes
//! waiting per WebSocket.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use node::api::client::Client;
use node::api::ws_protocol::ClientMessage;
use node::error::ErrorCode;
use serde_json::Value;
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;
use tests::ws::WsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// The value of one series of `/metrics` (0 when absent).
async fn metric(api: &Client, series: &str) -> f64 {
    let text = api.metrics().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Reads whatever the server sends until it closes the connection (bounded by [`WAIT`]).
async fn read_to_close(tcp: &mut TcpStream) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.context("the server did not close the connection")?;
    Ok(got)
}

/// The (opcode, payload) of each frame a server sent (unmasked, unfragmented).
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, at) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((opcode, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    frames
}

async fn assert_healthy(api: &Client) {
    api.health().await.expect("/health answers");
    api.kv_put("after", "fine").await.expect("a write succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_head_sent_too_slowly_closes_its_connection() {
    let cluster = InprocCluster::start_with(1, |c| c.api.header_read_timeout_ms = 300)
        .await
        .unwrap();
    let base = cluster.bases[0].clone();
    let api = http::api(&base);

    tracing::info!("phase: a request line and one header, then nothing");
    let mut tcp = TcpStream::connect(addr(&base)).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut tcp).await.unwrap();
    assert!(got.is_empty(), "no answer to a request never read: {got:?}");
    assert!(
        metric(
            &api,
            "stackd_http_connections_closed_total{reason=\"header_timeout\"}"
        )
        .await
            >= 1.0
    );

    tracing::info!("phase: a whole request on a fresh connection is answered");
    let mut tcp = TcpStream::connect(addr(&base)).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut tcp).await.unwrap()).to_string();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_healthy(&api).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_sent_too_slowly_is_answered_408() {
    let cluster = InprocCluster::start_with(1, |c| c.api.body_read_timeout_ms = 300)
        .await
        .unwrap();
    let base = cluster.bases[0].clone();
    let api = http::api(&base);

    tracing::info!("phase: 10 of the 100 bytes announced, then nothing");
    let mut tcp = TcpStream::connect(addr(&base)).await.unwrap();
    tcp.write_all(
        b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let got = String::from_utf8_lossy(&read_to_close(&mut tcp).await.unwrap()).to_string();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    let body: Value = serde_json::from_str(got.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert_eq!(body["error"]["limit_ms"], 300, "{body}");

    tracing::info!("phase: nothing was written, and the node serves");
    assert!(
        api.kv_get("slow").await.is_err(),
        "the slow write was not applied"
    );
    assert_healthy(&api).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_are_answered_while_other_requests_are_shed() {
    let cluster = InprocCluster::start_with(1, |c| {
        c.api.max_inflight_requests = 2;
        c.api.body_read_timeout_ms = 600_000;
    })
    .await
    .unwrap();
    let base = cluster.bases[0].clone();
    let api = http::api(&base);

    tracing::info!("phase: two uploads that never finish hold every in-flight permit");
    let mut uploads = Vec::new();
    for i in 0..2 {
        let mut tcp = TcpStream::connect(addr(&base)).await.unwrap();
        let head =
            format!("PUT /v1/kv/up{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc");
        tcp.write_all(head.as_bytes()).await.unwrap();
        uploads.push(tcp);
    }
    let shed = wait_for("requests shed with 503", WAIT, || async {
        match api.kv_get("k").await {
            Err(e) if http::is_api_error(&e, 503, ErrorCode::Unavailable) => Some(e),
            _ => None,
        }
    })
    .await
    .unwrap();
    tracing::info!(?shed, "phase: probes still answer");
    api.health().await.expect("/health answers under overload");
    api.ready().await.expect("/ready answers under overload");
    let text = api
        .metrics()
        .await
        .expect("/metrics answers under overload");
    assert!(text.contains("stackd_http_requests_total"));

    tracing::info!("phase: the uploads go, requests are served again");
    drop(uploads);
    wait_for("requests served again", WAIT, || async {
        api.kv_put("after", "fine").await.ok()
    })
    .await
    .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_backup_download_is_dropped() {
    let cluster = InprocCluster::start_with(1, |c| c.api.write_timeout_ms = 500)
        .await
        .unwrap();
    let base = cluster.bases[0].clone();
    let api = http::api(&base);

    tracing::info!("phase: 24 MB of values that do not compress");
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..24 {
        let value: Vec<u8> = (0..1_000_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        api.kv_put(&format!("big{i}"), value).await.unwrap();
    }

    tracing::info!("phase: a download that reads nothing");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr(&base).parse().unwrap()).await.unwrap();
    tcp.write_all(b"GET /v1/cluster/backup HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    wait_for("the stalled download dropped", WAIT, || async {
        (metric(
            &api,
            "stackd_http_connections_closed_total{reason=\"write_timeout\"}",
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await
    .unwrap();
    let got = read_to_close(&mut tcp).await.unwrap();
    assert!(
        got.len() < 24_000_000,
        "the connection was cut before the end: {} bytes",
        got.len()
    );

    tracing::info!("phase: a download that reads gets the whole backup");
    let whole = api.backup().await.unwrap().bytes().await.unwrap();
    assert!(whole.len() > 24_000_000, "{} bytes", whole.len());
    node::backup::read(std::io::Cursor::new(whole.to_vec())).expect("a complete backup");
    assert_healthy(&api).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_websocket_is_closed_and_one_that_answers_pings_stays() {
    let cluster = InprocCluster::start_with(1, |c| {
        c.ws.ping_interval_ms = 100;
        c.ws.idle_timeout_ms = 400;
    })
    .await
    .unwrap();
    let base = cluster.bases[0].clone();
    let api = http::api(&base);
    let url = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));

    tracing::info!("phase: one client reads (and so answers pings), one reads nothing");
    let (mut live, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // The silent client is a bare TCP connection after the upgrade: it answers no ping.
    let mut silent = TcpStream::connect(addr(&base)).await.unwrap();
    silent
        .write_all(
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    // Ten pings is two and a half idle timeouts: only the pongs keep `live` open.
    let mut pings = 0;
    while pings < 10 {
        let msg = tokio::time::timeout(WAIT, live.next())
            .await
            .expect("a message in time")
            .expect("the connection stays open")
            .expect("a frame");
        match msg {
            Message::Ping(_) => pings += 1,
            Message::Close(c) => panic!("the live client was closed: {c:?}"),
            _ => {}
        }
    }
    wait_for("the silent client closed", WAIT, || async {
        (metric(&api, "stackd_ws_disconnects_total{reason=\"idle_timeout\"}").await >= 1.0)
            .then_some(())
    })
    .await
    .unwrap();

    tracing::info!("phase: the silent client finds the reason, then the close frame");
    let got = read_to_close(&mut silent).await.unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 101"));
    let frames = server_frames(&got[head_end..]);
    let (error, close) = match &frames[frames.len() - 2..] {
        [(1, error), (8, close)] => (error.clone(), close.clone()),
        other => panic!("not an error then a close frame: {other:?}"),
    };
    let error: Value = serde_json::from_slice(&error).unwrap();
    assert_eq!(error["error"]["code"], "idle_timeout", "{error}");
    assert_eq!(error["error"]["limit_ms"], 400, "{error}");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1001);
    assert!(
        frames[..frames.len() - 2].iter().all(|(op, _)| *op == 9),
        "only pings before"
    );

    tracing::info!("phase: the live client is still served");
    live.send(Message::Text(r#"{"id":1,"op":"ping"}"#.into()))
        .await
        .unwrap();
    let answered = loop {
        match tokio::time::timeout(WAIT, live.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(answered["ok"], true, "{answered}");
    assert_healthy(&api).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_past_the_bound_per_websocket_are_refused() -> Result<()> {
    let mut cluster = InprocCluster::start_with(3, |c| {
        c.ws.max_pending_publishes = 1;
        c.api.request_timeout_ms = 20_000;
    })
    .await?;
    let leader = cluster.leader_index().context("a leader")?;
    let base = cluster.bases[leader].clone();
    let api = http::api(&base);

    tracing::info!("phase: the two other nodes stop, so a publish waits for a quorum");
    for i in 0..3 {
        if i != leader {
            cluster.stop(i).await;
        }
    }
    let mut ws = WsClient::connect(&base, "").await?;
    let waiting = serde_json::json!({"id": 1, "op": "publish", "channel": "c", "data": 1});
    let refused = serde_json::json!({"id": 2, "op": "publish", "channel": "c", "data": 2});
    ws.send_raw(&waiting.to_string()).await?;
    let answer = ws.send_text(&refused.to_string(), &Value::from(2)).await?;
    let node::api::ws_protocol::ServerMessage::Refusal(r) = answer else {
        bail!("the second publish was not refused: {answer:?}");
    };
    assert_eq!(r.error.code, ErrorCode::RateLimited, "{r:?}");
    assert!(
        r.error.message.contains("ws.max_pending_publishes"),
        "{r:?}"
    );

    tracing::info!("phase: the connection and the node still answer");
    let pong = ws.request(ClientMessage::Ping {}).await?;
    assert!(pong.is_ok(), "{pong:?}");
    api.health().await?;
    cluster.shutdown().await;
    Ok(())
}
