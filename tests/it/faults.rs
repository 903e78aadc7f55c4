//! Real processes: kill -9, restarts from the data dir, lost quorum.

use std::collections::BTreeMap;
use std::time::Duration;

use tests::http;
use tests::process::ProcCluster;

/// Writes `n` keys through rotating nodes among `alive`; returns what was acknowledged.
async fn write_some(
    c: &ProcCluster,
    alive: &[usize],
    prefix: &str,
    n: usize,
) -> BTreeMap<String, String> {
    let http = http::client();
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let node = alive[i % alive.len()];
        let (k, v) = (format!("{prefix}-{i}"), format!("value-{i}"));
        if let Ok((200, _)) = http::put(&http, &c.bases[node], &k, &v).await {
            acked.insert(k, v);
        }
    }
    acked
}

async fn assert_all_readable(c: &ProcCluster, nodes: &[usize], acked: &BTreeMap<String, String>) {
    let http = http::client();
    for &n in nodes {
        for (k, v) in acked {
            let (s, text, _) = http::get(&http, &c.bases[n], k).await.unwrap();
            assert_eq!(
                (s, text.as_str()),
                (200, v.as_str()),
                "key {k} on node {}",
                n + 1
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_elects_a_new_leader_and_keeps_acknowledged_writes() {
    let mut c = ProcCluster::start(3).await.unwrap();
    let leader = c.wait_voters(3, &[0, 1, 2]).await.unwrap();
    let acked = write_some(&c, &[0, 1, 2], "before", 30).await;
    assert_eq!(
        acked.len(),
        30,
        "a healthy cluster acknowledges every write"
    );

    tracing::info!(leader, "phase: kill -9 the leader");
    let li = c.index_of(leader);
    c.kill9(li).unwrap();
    let alive: Vec<usize> = (0..3).filter(|i| *i != li).collect();
    let new_leader = c.wait_leader(&alive, Some(leader)).await.unwrap();
    assert_ne!(new_leader, leader);
    assert_all_readable(&c, &alive, &acked).await;
    let more = write_some(&c, &alive, "after", 20).await;
    assert_eq!(more.len(), 20, "two of three nodes still take writes");

    tracing::info!("phase: the killed node restarts from its data dir and catches up");
    c.restart(li).unwrap();
    c.wait_voters(3, &[0, 1, 2]).await.unwrap();
    let http = http::client();
    tests::http::wait_for("restarted node ready", Duration::from_secs(30), || async {
        let r = http
            .get(format!("{}/ready", c.bases[li]))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await
    .unwrap();
    assert_all_readable(&c, &[li], &acked).await;
    assert_all_readable(&c, &[li], &more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_kill9_and_restart_lose_no_acknowledged_write() {
    let mut c = ProcCluster::start(3).await.unwrap();
    let acked = write_some(&c, &[0, 1, 2], "durable", 60).await;
    assert_eq!(acked.len(), 60);
    for i in 0..3 {
        c.kill9(i).unwrap();
    }
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    c.wait_voters(3, &[0, 1, 2]).await.unwrap();
    assert_all_readable(&c, &[0, 1, 2], &acked).await;
}

/// Kills two of three nodes, keeping either the leader or a follower as the survivor, and
/// checks that no write to the survivor is acknowledged.
async fn lost_quorum_case(keep_leader: bool) {
    let mut c = ProcCluster::start(3).await.unwrap();
    let leader = c.index_of(c.wait_voters(3, &[0, 1, 2]).await.unwrap());
    let survivor = if keep_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    for i in 0..3 {
        if i != survivor {
            c.kill9(i).unwrap();
        }
    }
    let http = http::client();
    for n in 0..3 {
        let r = http
            .put(format!("{}/v1/kv/lonely-{n}", c.bases[survivor]))
            .body("x")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(
            status == 503 || status == 504,
            "write without quorum answered {status}"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        let code = body["error"]["code"].as_str().unwrap();
        assert_eq!(
            code,
            if status == 503 {
                "unavailable"
            } else {
                "timeout"
            }
        );
    }
    // Linearizable reads cannot be served without a quorum either.
    let r = http
        .get(format!("{}/v1/kv/lonely-0", c.bases[survivor]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // The process still serves.
    assert_eq!(
        http.get(format!("{}/health", c.bases[survivor]))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    tracing::info!(
        "phase: quorum back; the unacknowledged writes may or may not exist, new ones succeed"
    );
    let dead: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    c.restart(dead[0]).unwrap();
    c.wait_leader(&[survivor, dead[0]], None).await.unwrap();
    let (s, body) = http::put(&http, &c.bases[survivor], "back", "yes")
        .await
        .unwrap();
    assert_eq!(s, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_a_write_to_the_old_leader_is_never_acknowledged() {
    lost_quorum_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_a_write_to_a_follower_is_never_acknowledged() {
    lost_quorum_case(false).await;
}
