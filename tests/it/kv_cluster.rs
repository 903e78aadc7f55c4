//! Key-value behaviour on a 3-node in-process cluster.

use std::time::Duration;

use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_followers_are_read_on_every_node() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let leader = c.leader_index().unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    tracing::info!("phase: write through each follower, read back on every node");
    let mut last_rev = 0;
    for (n, &f) in followers.iter().enumerate() {
        let key = format!("k{n}");
        let (s, body) = http::put(&http, &c.bases[f], &key, &format!("v{n}"))
            .await
            .unwrap();
        assert_eq!(s, 200, "{body}");
        let rev = body["revision"].as_u64().unwrap();
        assert!(rev > last_rev, "revisions grow: {rev} after {last_rev}");
        last_rev = rev;
        // Linearizable reads right after the acknowledgement, on every node.
        for base in &c.bases {
            let (s, text, xrev) = http::get(&http, base, &key).await.unwrap();
            assert_eq!(
                (s, text.as_str(), xrev),
                (200, format!("v{n}").as_str(), Some(rev)),
                "read on {base}"
            );
        }
    }

    tracing::info!("phase: compare-and-set");
    let f = followers[0];
    let (s, body) = http::put(&http, &c.bases[f], "k0", "x").await.unwrap();
    assert_eq!(s, 200);
    let cur = body["revision"].as_u64().unwrap();
    let r = http
        .put(format!("{}/v1/kv/k0?if_revision={}", c.bases[f], cur - 1))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(body["error"]["current_revision"], cur);
    let r = http
        .put(format!("{}/v1/kv/k0?if_revision={cur}", c.bases[f]))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .put(format!("{}/v1/kv/fresh?if_revision=0", c.bases[f]))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "if_revision=0 creates an absent key");
    let r = http
        .put(format!("{}/v1/kv/fresh?if_revision=0", c.bases[f]))
        .body("2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "if_revision=0 refuses a present key");

    tracing::info!("phase: delete and list");
    let r = http
        .delete(format!("{}/v1/kv/fresh", c.bases[f]))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["deleted"], true);
    let (s, _, _) = http::get(&http, &c.bases[leader], "fresh").await.unwrap();
    assert_eq!(s, 404);
    let list: serde_json::Value = http
        .get(format!("{}/v1/kv?prefix=k&limit=1", c.bases[f]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["key"], "k0");
    assert_eq!(list["next"], "k0");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_keys_disappear_on_every_node_by_the_replicated_clock() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let r = http
        .put(format!("{}/v1/kv/session?ttl_ms=1500", c.bases[1]))
        .body("s")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for base in &c.bases {
        let (s, _, _) = http::get(&http, base, "session").await.unwrap();
        assert_eq!(s, 200, "present right after the write on {base}");
    }
    // Each node decides expiry from its applied state (the replicated clock), so a stale
    // local read is the honest check that every replica dropped it.
    for base in &c.bases {
        wait_for(
            &format!("expiry on {base}"),
            Duration::from_secs(10),
            || async {
                let r = http
                    .get(format!("{base}/v1/kv/session?consistency=stale"))
                    .send()
                    .await
                    .ok()?;
                (r.status() == 404).then_some(())
            },
        )
        .await
        .unwrap();
    }
    // The replicated clock, not the node's wall clock, decided: every node applied the same
    // expiry revision.
    let revs: Vec<u64> = futures_revisions(&http, &c.bases).await;
    assert!(
        revs.windows(2).all(|w| w[0] == w[1]),
        "same revision everywhere after expiry: {revs:?}"
    );
    c.shutdown().await;
}

async fn futures_revisions(http: &reqwest::Client, bases: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    for b in bases {
        let v: serde_json::Value = http
            .get(format!("{b}/v1/kv?limit=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.push(v["revision"].as_u64().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_applies_a_retried_write_once() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let send = || {
        http.put(format!("{}/v1/kv/counter", c.bases[2]))
            .header("Idempotency-Key", "req-1")
            .body("1")
            .send()
    };
    let a: serde_json::Value = send().await.unwrap().json().await.unwrap();
    let b: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(a, b, "the retry gets the first answer");
    let (_, _, rev) = http::get(&http, &c.bases[0], "counter").await.unwrap();
    assert_eq!(rev, a["revision"].as_u64(), "applied once");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_log_purge_catches_up_from_a_snapshot() {
    let mut c = InprocCluster::start_with(1, |cfg| cfg.raft.snapshot_every_entries = 100)
        .await
        .unwrap();
    let http = http::client();
    tracing::info!("phase: 600 writes so snapshots are taken and the log is purged");
    for i in 0..600 {
        let (s, body) = http::put(
            &http,
            &c.bases[0],
            &format!("snap-{i:04}"),
            &format!("v{i}"),
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "{body}");
    }
    let m = c.nodes[0].as_ref().unwrap().cluster.raft_view();
    wait_for(
        "a purged log behind a snapshot",
        Duration::from_secs(20),
        || async {
            let m = c.nodes[0].as_ref().unwrap().cluster.raft_view();
            m.purged_index.is_some_and(|p| p > 100).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {m:?}"));

    tracing::info!("phase: a new node joins and must be sent the snapshot");
    let j = c.join_node().await.unwrap();
    let base = c.bases[j].clone();
    wait_for(
        "the new node to hold every key",
        Duration::from_secs(30),
        || async {
            let v: serde_json::Value = http
                .get(format!(
                    "{base}/v1/kv?prefix=snap-&limit=1000&consistency=stale"
                ))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["items"].as_array()?.len() == 600).then_some(())
        },
    )
    .await
    .unwrap();
    let (s, text, _) = http::get(&http, &base, "snap-0000").await.unwrap();
    assert_eq!((s, text.as_str()), (200, "v0"));
    let snap = c.nodes[j]
        .as_ref()
        .unwrap()
        .cluster
        .raft_view()
        .snapshot_index;
    assert!(snap.is_some(), "the joined node installed a snapshot");
    c.shutdown().await;
}
