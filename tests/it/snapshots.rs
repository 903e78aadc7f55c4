//! Snapshots: a node that joins after the log was purged catches up from a snapshot, and
//! key-value history is compacted behind `compact_revision`.

use std::time::{Duration, Instant};

use node::api::client::HistoryQuery;
use node::api::model::{ChangeKind, KvHistory, TxnRequest};
use serde_json::json;
use tests::http::{self, wait_for};
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

    // 10,000 writes through all three nodes.
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let api = http::api(&c.bases[w % 3]);
        tasks.push(tokio::spawn(async move {
            for i in (w..WRITES).step_by(WRITERS) {
                let value = format!("value-{i}-{}", "x".repeat(64));
                let r = api.kv_put(&format!("key{i:05}"), value).await;
                assert!(r.is_ok(), "write {i}: {r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // A snapshot now, and the log purged behind it on the leader.
    http::api(&c.bases[0]).snapshot().await.unwrap();
    let leader = c.wait_leader(&[0, 1, 2], None).await.unwrap();
    let lbase = c.bases[c.index_of(leader)].clone();
    let lapi = http::api(&lbase);
    // The leader compacts history past its bound (1,000 revisions, plus 10% slack) by itself.
    let status = wait_for(
        "the leader's log purged and its history compacted",
        Duration::from_secs(30),
        || async {
            let s = lapi.cluster_status().await.unwrap();
            (s.purged_index.unwrap_or(0) > 1000 && s.compact_revision >= (WRITES - 1100) as u64)
                .then_some(s)
        },
    )
    .await
    .unwrap();
    let target = status.commit_index;

    let compacted = status.compact_revision;
    let since_1 = HistoryQuery {
        since_revision: Some(1),
        ..HistoryQuery::default()
    };
    let e = lapi.kv_history(&since_1).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e:?}");
    assert_eq!(e.detail().unwrap().compact_revision, Some(compacted));

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
    let joiner_api = http::api(&joiner.base);
    wait_for(
        "the new node to apply the leader's commit index",
        Duration::from_secs(60),
        || async {
            let s = http::status(&joiner_api).await?;
            (s.applied_index >= target).then_some(())
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
    let (theirs, n) = kv_digest(&lapi).await.unwrap();
    let (mine, m) = kv_digest(&http::api(&joiner.base)).await.unwrap();
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

/// `GET /v1/history` pages through changes after a revision, never splitting one revision
/// (a transaction's writes) across pages, and a manual compaction ends what can be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_end_at_revision_boundaries_and_compaction_ends_them() {
    let c = tests::inproc::InprocCluster::start(1).await.unwrap();
    let api = http::api(&c.bases[0]);
    api.kv_put("h.a", "1").await.unwrap(); // rev 1
    api.kv_put("h.b", "2").await.unwrap(); // rev 2
    let txn: TxnRequest = serde_json::from_value(json!({"compare": [], "success": [
        {"put": {"key": "h.x", "text": "x"}},
        {"put": {"key": "h.y", "text": "y"}}
    ]}))
    .unwrap();
    assert_eq!(api.txn(&txn).await.unwrap().revision, 3);
    api.kv_delete("h.a").await.unwrap(); // rev 4
    api.kv_put("other", "z").await.unwrap(); // rev 5, not under h.

    let page = |since: u64, limit: u64| {
        let q = HistoryQuery {
            prefix: Some("h.".into()),
            since_revision: Some(since),
            limit: Some(limit),
        };
        let api = api.clone();
        async move { api.kv_history(&q).await.unwrap() }
    };
    let seen = |p: &KvHistory| -> Vec<(String, String, u64)> {
        p.events
            .iter()
            .map(|e| {
                let kind = match e.event {
                    ChangeKind::Put => "put",
                    ChangeKind::Delete => "delete",
                };
                (kind.to_string(), e.key.clone(), e.revision)
            })
            .collect()
    };
    let ev = |e: &str, k: &str, r: u64| (e.to_string(), k.to_string(), r);
    let p1 = page(0, 3).await;
    assert_eq!(seen(&p1), vec![ev("put", "h.a", 1), ev("put", "h.b", 2)]);
    assert_eq!(p1.next_since_revision, Some(2));
    let p2 = page(2, 1).await;
    assert_eq!(seen(&p2), vec![ev("put", "h.x", 3), ev("put", "h.y", 3)]);
    assert_eq!(p2.next_since_revision, Some(3));
    let p3 = page(3, 10).await;
    assert_eq!(seen(&p3), vec![ev("delete", "h.a", 4)]);
    assert!(p3.next_since_revision.is_none());
    assert_eq!(p3.revision, 5);

    assert_eq!(api.compact(3).await.unwrap().compact_revision, 3);
    let since_2 = HistoryQuery {
        prefix: Some("h.".into()),
        since_revision: Some(2),
        limit: None,
    };
    let e = api.kv_history(&since_2).await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    let detail = e.detail().unwrap();
    assert_eq!(detail.reason.as_deref(), Some("compacted"));
    assert_eq!(detail.compact_revision, Some(3));
    assert_eq!(seen(&page(3, 10).await), vec![ev("delete", "h.a", 4)]);
    c.shutdown().await;
}

/// A snapshot asked for when the last one already covers every applied entry is answered at
/// once as completed, rather than waiting for a build that would end at the same point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_nothing_new_to_cover_answers_completed() {
    let c = tests::inproc::InprocCluster::start(1).await.unwrap();
    let api = http::api(&c.bases[0]);
    api.kv_put("k", "v".to_string()).await.unwrap();
    let first = api.snapshot().await.unwrap();
    assert!(first.completed, "{first:?}");
    let second = api.snapshot().await.unwrap();
    assert!(second.completed, "{second:?}");
    assert!(
        second.snapshot_index >= first.snapshot_index,
        "{first:?} then {second:?}"
    );
    c.shutdown().await;
}
