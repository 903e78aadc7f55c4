//! The cache and transactions on a 3-node cluster.

use std::time::Duration;

use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

async fn cache_get(http: &reqwest::Client, base: &str, key: &str) -> (u16, String) {
    let r = http
        .get(format!("{base}/v1/cache/{key}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn cache_set(http: &reqwest::Client, base: &str, key: &str, value: &str, tags: &str) {
    let r = http
        .put(format!("{base}/v1/cache/{key}?tags={tags}"))
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn stats(http: &reqwest::Client, base: &str) -> Value {
    http::get_json(http, &format!("{base}/v1/cache/stats?digest=true")).await
}

/// Waits until every node has applied as far as the others, then returns their stats.
async fn converged_stats(c: &InprocCluster, http: &reqwest::Client) -> Vec<Value> {
    wait_for(
        "cache stats to converge",
        Duration::from_secs(10),
        || async {
            let mut all = Vec::new();
            for base in &c.bases {
                all.push(stats(http, base).await);
            }
            let same = all
                .windows(2)
                .all(|w| w[0]["applied_index"] == w[1]["applied_index"]);
            same.then_some(all)
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_write_on_followers_and_tag_invalidation_everywhere() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let leader = c.leader_index().unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    tracing::info!("phase: a follower's cache GET sees the write made through it");
    for i in 0..50 {
        let f = followers[i % 2];
        let key = format!("user:{i}");
        let tags = if i % 2 == 0 { "users,even" } else { "users" };
        cache_set(&http, &c.bases[f], &key, &format!("v{i}"), tags).await;
        assert_eq!(
            cache_get(&http, &c.bases[f], &key).await,
            (200, format!("v{i}")),
            "read-your-write through node {}",
            f + 1
        );
    }
    cache_set(&http, &c.bases[leader], "other", "keep", "misc").await;

    tracing::info!("phase: invalidate a tag through one node; gone on every node");
    let r = http
        .post(format!("{}/v1/cache/invalidate", c.bases[followers[1]]))
        .json(&json!({ "tags": ["even"] }))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["invalidated"], 25);
    let all = converged_stats(&c, &http).await;
    for (n, base) in c.bases.iter().enumerate() {
        for i in 0..50 {
            let expect = if i % 2 == 0 { 404 } else { 200 };
            let (s, _) = cache_get(&http, base, &format!("user:{i}")).await;
            assert_eq!(s, expect, "user:{i} on node {}", n + 1);
        }
        assert_eq!(all[n]["entries"], 26);
    }
    let r = http
        .post(format!("{}/v1/cache/invalidate", c.bases[leader]))
        .json(&json!({ "tags": ["users"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["invalidated"], 25);
    let all = converged_stats(&c, &http).await;
    for s in &all {
        assert_eq!(s["entries"], 1, "{s}");
    }
    let (s, text) = cache_get(&http, &c.bases[followers[0]], "other").await;
    assert_eq!((s, text.as_str()), (200, "keep"));
    let st = stats(&http, &c.bases[followers[0]]).await;
    assert!(st["hits"].as_u64().unwrap() >= 26 && st["misses"].as_u64().unwrap() >= 25);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_leaves_identical_contents_on_every_replica() {
    let c = InprocCluster::start_with(3, |cfg| {
        cfg.cache.max_entries = 40;
        cfg.cache.max_bytes = 2 << 20;
    })
    .await
    .unwrap();
    let http = http::client();
    let mut writers = Vec::new();
    for (n, base) in c.bases.iter().enumerate() {
        let http = http.clone();
        let base = base.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..60 {
                cache_set(&http, &base, &format!("n{n}-{i}"), &"x".repeat(i * 10), "t").await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = converged_stats(&c, &http).await;
    for s in &all {
        assert_eq!(s["entries"], 40, "{s}");
        assert_eq!(s["evictions"], 140, "{s}");
    }
    assert!(
        all.windows(2)
            .all(|w| w[0]["digest"] == w[1]["digest"] && w[0]["bytes"] == w[1]["bytes"]),
        "replicas differ: {all:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_with_a_stale_compare_applies_only_its_failure_branch() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let (s, v) = http::put(&http, &c.bases[1], "balance", "10")
        .await
        .unwrap();
    assert_eq!(s, 200);
    let rev = v["revision"].as_u64().unwrap();
    let (s, _) = http::put(&http, &c.bases[1], "balance", "20")
        .await
        .unwrap();
    assert_eq!(s, 200);

    let txn = |rev: u64| {
        json!({
            "compare": [{ "key": "balance", "revision": rev }],
            "success": [
                { "put": { "key": "balance", "text": "0" } },
                { "put": { "key": "paid", "text": "yes" } },
                { "cache_set": { "key": "receipt", "text": "r1", "tags": ["receipts"] } }
            ],
            "failure": [
                { "put": { "key": "retry", "text": "stale" } },
                { "cache_delete": { "key": "receipt" } }
            ]
        })
    };
    let r = http
        .post(format!("{}/v1/txn", c.bases[2]))
        .json(&txn(rev))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["succeeded"], false, "{v}");
    for base in &c.bases {
        let (s, text, _) = http::get(&http, base, "balance").await.unwrap();
        assert_eq!((s, text.as_str()), (200, "20"), "{base}");
        assert_eq!(http::get(&http, base, "paid").await.unwrap().0, 404);
        assert_eq!(http::get(&http, base, "retry").await.unwrap().1, "stale");
    }
    assert_eq!(cache_get(&http, &c.bases[2], "receipt").await.0, 404);

    tracing::info!("phase: with the current revision the success branch applies at one revision");
    let (_, _, cur) = http::get(&http, &c.bases[0], "balance").await.unwrap();
    let v: Value = http
        .post(format!("{}/v1/txn", c.bases[0]))
        .json(&txn(cur.unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["succeeded"], true, "{v}");
    let txn_rev = v["revision"].as_u64().unwrap();
    for key in ["balance", "paid"] {
        let (_, _, r) = http::get(&http, &c.bases[1], key).await.unwrap();
        assert_eq!(
            r,
            Some(txn_rev),
            "{key} written at the transaction's revision"
        );
    }
    assert_eq!(
        cache_get(&http, &c.bases[0], "receipt").await,
        (200, "r1".into())
    );
    c.shutdown().await;
}
