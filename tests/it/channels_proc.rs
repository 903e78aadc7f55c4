//! Channels across real processes: a client whose node is killed resumes on another node
//! without a gap, and presence drops the clients of a killed node.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use node::api::ws_protocol::{ClientMessage, Push};
use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::process::ProcCluster;
use tests::ws::WsClient;

/// Publishes `count` events to `channel` through the nodes `via` in turn, retrying each with
/// its Idempotency-Key until it is answered, so each is applied exactly once.
async fn publisher(bases: Vec<String>, channel: &str, count: u64, stop: Arc<AtomicBool>) -> u64 {
    let http = http::client();
    let mut published = 0;
    for i in 1..=count {
        let mut attempt = 0;
        loop {
            if stop.load(Ordering::Relaxed) {
                return published;
            }
            let base = &bases[(i as usize + attempt) % bases.len()];
            let (s, _) = http::post_json(
                &http,
                &format!("{base}/v1/channels/{channel}/publish"),
                json!({ "data": { "i": i } }),
                Some(&format!("{channel}-{i}")),
            )
            .await;
            if s == 200 {
                published = i;
                break;
            }
            attempt += 1;
            assert!(attempt < 200, "publish {i} kept failing (status {s})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    published
}

async fn presence(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
) -> Option<BTreeSet<(String, u64)>> {
    let r = http
        .get(format!("{base}/v1/channels/{channel}/presence"))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    Some(
        v["clients"]
            .as_array()?
            .iter()
            .map(|c| {
                (
                    c["user"].as_str().unwrap_or("").to_string(),
                    c["node_id"].as_u64().unwrap_or(0),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_node_is_killed_resumes_on_another_node_and_presence_drops_that_nodes_clients(
) {
    let mut c = ProcCluster::start(3).await.unwrap();
    let http = http::client();
    let leader = c.wait_leader(&[0, 1, 2], None).await.unwrap();
    // The client's node: a follower, so the cluster keeps its leader while the client moves.
    let victim = (0..3).find(|i| c.ids[*i] != leader).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();

    tracing::info!("phase: present clients on every node");
    let mut present = Vec::new();
    for i in 0..3 {
        let mut p = WsClient::connect(&c.bases[i], &format!("?client_id=p{i}"))
            .await
            .unwrap();
        let r = p
            .request(ClientMessage::Subscribe {
                channel: "lobby".into(),
                since: None,
                user: Some(format!("user{i}")),
            })
            .await
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
        present.push(p);
    }
    let all: BTreeSet<(String, u64)> = (0..3).map(|i| (format!("user{i}"), c.ids[i])).collect();
    for i in 0..3 {
        assert_eq!(
            presence(&http, &c.bases[i], "lobby").await.unwrap(),
            all,
            "node {}",
            i + 1
        );
    }

    tracing::info!(
        "phase: a subscriber on node {} while events flow",
        victim + 1
    );
    let mut sub = WsClient::connect(&c.bases[victim], "").await.unwrap();
    sub.subscribe("ticks", Some(0)).await.unwrap();
    const N: u64 = 300;
    let stop = Arc::new(AtomicBool::new(false));
    let pub_bases: Vec<String> = others.iter().map(|i| c.bases[*i].clone()).collect();
    let publishing = tokio::spawn(publisher(pub_bases, "ticks", N, stop.clone()));
    let mut got: Vec<u64> = Vec::new();
    let mut ignored = Vec::new();
    for e in sub.events(50, &mut ignored).await.unwrap() {
        got.push(e.offset);
    }

    tracing::info!("phase: kill -9 node {}", victim + 1);
    c.kill9(victim).unwrap();
    // The client notices its connection ended, then reconnects to the next node of its list.
    loop {
        match sub.next(Duration::from_secs(15)).await.unwrap() {
            Ok(Push::Event(e)) => got.push(e.offset),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let last = *got.last().unwrap();
    tracing::info!(last, "reconnecting to node {}", others[0] + 1);
    let mut sub = WsClient::connect(&c.bases[others[0]], "").await.unwrap();
    sub.subscribe("ticks", Some(last)).await.unwrap();
    while *got.last().unwrap() < N {
        match sub.next(Duration::from_secs(30)).await.unwrap() {
            Ok(Push::Event(e)) => got.push(e.offset),
            Ok(m) => assert!(matches!(m, Push::Recovered(_)), "{m:?}"),
            Err(closed) => panic!("connection to a live node closed: {closed:?}"),
        }
    }
    assert_eq!(publishing.await.unwrap(), N);
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "every event once, in order"
    );

    tracing::info!("phase: presence drops the killed node's client once its lease ends");
    let expected: BTreeSet<(String, u64)> = all
        .iter()
        .filter(|(_, n)| *n != c.ids[victim])
        .cloned()
        .collect();
    for &i in &others {
        wait_for(
            "presence without the killed node",
            Duration::from_secs(30),
            || async { (presence(&http, &c.bases[i], "lobby").await? == expected).then_some(()) },
        )
        .await
        .unwrap();
    }

    tracing::info!("phase: a client that closes leaves presence at once");
    let p = present.remove(others[1]);
    p.close().await;
    let remaining: BTreeSet<(String, u64)> = expected
        .iter()
        .filter(|(_, n)| *n != c.ids[others[1]])
        .cloned()
        .collect();
    wait_for(
        "presence without the closed client",
        Duration::from_secs(10),
        || async {
            (presence(&http, &c.bases[others[0]], "lobby").await? == remaining).then_some(())
        },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
}
