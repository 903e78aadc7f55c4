//! Snapshots: a node that joins after the log was purged catches up from a snapshot, and
//! key-value history is compacted behind `compact_revision`.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::http::{self, get_json, post_json, wait_for};
use tests::process::{ProcCluster, ProcOptions};
use tests::standalone::{kv_digest, Standalone};

const WRITES: usize = 10_000;
const WRITERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_a_log_purge_catches_up_from_a_snapshot() {
    let c = ProcCluster::start_with(
        3,
        ProcOptions {
            env: vec![
                ("STACKD_SNAPSHOT_EVERY_ENTRIES".into(), "2000".into()),
                ("STACKD_KV_HISTORY_REVISIONS".into(), "1000".into()),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = http::client();

    // 10,000 writes through all three nodes.
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let http = http.clone();
        let base = c.bases[w % 3].clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..WRITES).step_by(WRITERS) {
                let (status, _) = http::put(
                    &http,
                    &base,
                    &format!("key{i:05}"),
                    &format!("value-{i}-{}", "x".repeat(64)),
                )
                .await
                .unwrap();
                assert_eq!(status, 200, "write {i}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // A snapshot now, and the log purged behind it on the leader.
    let (status, snap) = post_json(
        &http,
        &format!("{}/v1/cluster/snapshot", c.bases[0]),
        json!({}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{snap}");
    let leader = c.wait_leader(&[0, 1, 2], None).await.unwrap();
    let lbase = c.bases[c.index_of(leader)].clone();
    let status = wait_for(
        "the leader's log purged",
        Duration::from_secs(30),
        || async {
            let s = get_json(&http, &format!("{lbase}/v1/cluster")).await;
            (s["purged_index"].as_u64().unwrap_or(0) > 1000).then_some(s)
        },
    )
    .await
    .unwrap();
    let target = status["commit_index"].as_u64().unwrap();

    // Compaction kept only the last 1,000 revisions of history (plus slack).
    let compacted = status["compact_revision"].as_u64().unwrap();
    assert!(
        compacted >= (WRITES - 1100) as u64,
        "compact_revision {compacted}"
    );
    let (code, body) = {
        let r = http
            .get(format!("{lbase}/v1/history?since_revision=1"))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["compact_revision"], compacted);

    // A new node joins and must be served a snapshot (its first log entries are gone).
    let token = std::fs::read_to_string(c.root().join("node1").join("join-token")).unwrap();
    let dir = c.root().join("node4");
    let start = Instant::now();
    let joiner = Standalone::spawn(
        "127.0.0.4",
        &dir,
        Some((&c.cluster_addrs[0], token.trim())),
        &[],
    )
    .unwrap();
    wait_for(
        "the new node to apply the leader's commit index",
        Duration::from_secs(60),
        || async {
            let s = http::cluster(&http, &joiner.base).await?;
            (s["applied_index"].as_u64()? >= target).then_some(())
        },
    )
    .await
    .map_err(|e| e.context(joiner.log_text()))
    .unwrap();
    let caught_up = start.elapsed();
    assert!(
        joiner.log_text().contains("snapshot installed"),
        "the new node caught up without a snapshot:\n{}",
        joiner.log_text()
    );

    // It serves all the data, identical to the leader's.
    let (theirs, n) = kv_digest(&http, &lbase).await.unwrap();
    let (mine, m) = kv_digest(&http, &joiner.base).await.unwrap();
    assert_eq!(n, WRITES);
    assert_eq!((mine, m), (theirs, n));
    let snapshot_bytes = std::fs::metadata(
        c.root()
            .join(format!("node{}", c.index_of(leader) + 1))
            .join("snapshots")
            .join("snapshot.bin"),
    )
    .map(|m| m.len())
    .unwrap_or(0);
    eprintln!(
        "snapshot catch-up: {WRITES} keys, snapshot of {:.1} MiB, new node caught up in {:.2} s",
        snapshot_bytes as f64 / 1048576.0,
        caught_up.as_secs_f64()
    );
}
