//! Lifecycle: shutdown stops every task the node started, answers or closes what clients
//! have open, closes its ports and RocksDB.

use std::time::Duration;

use anyhow::{Context, Result};
use node::api::model::AcquireRequest;
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
    let api = http::api(&base);
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
    let acquire = |owner: &str, wait_ms: u64| AcquireRequest {
        owner: owner.into(),
        ttl_ms: 60_000,
        wait_ms,
    };
    api.lock_acquire("door", &acquire("a", 0)).await?;
    let waiter = tokio::spawn({
        let api = api.clone();
        let waiting = acquire("b", 60_000);
        async move { api.lock_acquire("door", &waiting).await }
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
    // Each connection is a task of the hub (it reads and writes its socket).
    assert!(tasks.websockets.len() >= 2, "{tasks:?}");

    c.stop(0).await;

    assert_eq!(tasks.len(), 0, "tasks left after shutdown: {tasks:?}");
    // The waiting request was answered (the node is shutting down), not left hanging.
    let answer = waiter.await?;
    let status = answer.as_ref().err().and_then(|e| e.status());
    assert_eq!(status, Some(503), "{answer:?}");
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
        api.lock_get("door").await.ok()
    })
    .await?;
    assert_eq!(lock.holder, "a", "{lock:?}");
    c.shutdown().await;
    Ok(())
}
