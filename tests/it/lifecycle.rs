//! Lifecycle: shutdown stops every task the node started, answers or closes what clients
//! have open, closes its ports and RocksDB.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;
use tests::ws::{Closed, WsClient};

/// Reads until the server closes the connection; answers how.
async fn closed(ws: &mut WsClient) -> Result<Closed> {
    loop {
        if let Err(c) = ws.next(Duration::from_secs(15)).await? {
            return Ok(c);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_task_and_closes_the_ports() -> Result<()> {
    let mut c = InprocCluster::start(1).await?;
    let base = c.bases[0].clone();
    let http = http::client();
    let node = c.nodes[0].as_ref().context("node 1")?;
    let tasks = node.tasks();
    let api_addr = node.api_addr;
    let cluster_addr = c.configs[0].cluster.addr;
    let gossip_addr = c.configs[0].gossip_addr();

    // Two WebSocket clients on a channel.
    let mut a = WsClient::connect(&base, "").await?;
    a.subscribe("lobby", None).await?;
    let mut b = WsClient::connect(&base, "").await?;
    b.subscribe("lobby", None).await?;

    // A lock held, and a second acquire waiting for it: a request in flight at shutdown.
    let acquire = format!("{base}/v1/locks/door/acquire");
    let held = json!({ "owner": "a", "ttl_ms": 60_000 });
    let (status, body) = http::post_json(&http, &acquire, held, None).await;
    assert_eq!(status, 200, "{body}");
    let waiter = tokio::spawn({
        let http = http.clone();
        let waiting = json!({ "owner": "b", "ttl_ms": 60_000, "wait_ms": 60_000 });
        async move { http::post_json(&http, &acquire, waiting, None).await }
    });
    wait_for(
        "the second acquire in flight",
        Duration::from_secs(10),
        || {
            let n = tasks.requests.len();
            async move { (n >= 1).then_some(()) }
        },
    )
    .await?;
    // Each connection, and its writer.
    assert!(tasks.websockets.len() >= 4, "{tasks:?}");

    c.stop(0).await;

    assert_eq!(tasks.len(), 0, "tasks left after shutdown: {tasks:?}");
    // The waiting request was answered (the node is shutting down), not left hanging.
    let (status, body) = waiter.await?;
    assert_eq!(status, 503, "{body}");
    // The WebSocket clients were told the server is going away.
    for ws in [&mut a, &mut b] {
        assert_eq!(closed(ws).await?.code, Some(1001));
    }
    // The ports are closed: a new API connection is refused; the UDP ports are free.
    let refused = tokio::net::TcpStream::connect(api_addr).await;
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    std::net::UdpSocket::bind(cluster_addr).context("cluster port still bound")?;
    std::net::UdpSocket::bind(gossip_addr).context("gossip port still bound")?;

    // RocksDB was closed: the node restarts from its data dir and still holds the lock.
    c.restart(0).await?;
    let lock = wait_for("the restarted node", Duration::from_secs(30), || async {
        let r = http
            .get(format!("{base}/v1/locks/door"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json::<serde_json::Value>().await.ok()
    })
    .await?;
    assert_eq!(lock["holder"], "a", "{lock}");
    c.shutdown().await;
    Ok(())
}
