//! The cache and transactions on a 3-node cluster.

use std::time::Duration;

use node::api::client::{CacheWrite, Client};
use node::api::model::{CacheStats, TxnRequest};
use serde_json::json;
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

/// A cache read through `api`'s node: (200, value) or (the error's status, "").
async fn cache_get(api: &Client, key: &str) -> (u16, String) {
    match api.cache_get(key).await {
        Ok(v) => (200, String::from_utf8(v.value.to_vec()).unwrap()),
        Err(e) => (e.status().expect("an answer"), String::new()),
    }
}

async fn cache_set(api: &Client, key: &str, value: &str, tags: &str) {
    let w = CacheWrite {
        tags: vec![tags.to_string()],
        ..CacheWrite::default()
    };
    let r = api.cache_set(key, value.to_string(), &w).await;
    assert!(r.is_ok(), "{r:?}");
}

async fn stats(api: &Client) -> CacheStats {
    api.cache_stats(true).await.unwrap()
}

/// Waits until every node has applied as far as the others, then returns their stats.
async fn converged_stats(apis: &[Client]) -> Vec<CacheStats> {
    wait_for(
        "cache stats to converge",
        Duration::from_secs(10),
        || async {
            let mut all = Vec::new();
            for api in apis {
                all.push(stats(api).await);
            }
            let same = all
                .windows(2)
                .all(|w| w[0].applied_index == w[1].applied_index);
            same.then_some(all)
        },
    )
    .await
    .unwrap()
}

fn apis(c: &InprocCluster) -> Vec<Client> {
    c.bases.iter().map(|b| http::api(b)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_write_on_followers_and_tag_invalidation_everywhere() {
    let c = InprocCluster::start(3).await.unwrap();
    let apis = apis(&c);
    let leader = c.leader_index().unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    tracing::info!("phase: a follower's cache GET sees the write made through it");
    for i in 0..50 {
        let f = followers[i % 2];
        let key = format!("user:{i}");
        let tags = if i % 2 == 0 { "users,even" } else { "users" };
        cache_set(&apis[f], &key, &format!("v{i}"), tags).await;
        assert_eq!(
            cache_get(&apis[f], &key).await,
            (200, format!("v{i}")),
            "read-your-write through node {}",
            f + 1
        );
    }
    cache_set(&apis[leader], "other", "keep", "misc").await;

    tracing::info!("phase: invalidate a tag through one node; gone on every node");
    let v = apis[followers[1]]
        .cache_invalidate(vec!["even".into()])
        .await
        .unwrap();
    assert_eq!(v.invalidated, 25);
    let all = converged_stats(&apis).await;
    for (n, api) in apis.iter().enumerate() {
        for i in 0..50 {
            let expect = if i % 2 == 0 { 404 } else { 200 };
            let (s, _) = cache_get(api, &format!("user:{i}")).await;
            assert_eq!(s, expect, "user:{i} on node {}", n + 1);
        }
        assert_eq!(all[n].entries, 26);
    }
    let v = apis[leader]
        .cache_invalidate(vec!["users".into()])
        .await
        .unwrap();
    assert_eq!(v.invalidated, 25);
    let all = converged_stats(&apis).await;
    for s in &all {
        assert_eq!(s.entries, 1, "{s:?}");
    }
    let (s, text) = cache_get(&apis[followers[0]], "other").await;
    assert_eq!((s, text.as_str()), (200, "keep"));
    let st = stats(&apis[followers[0]]).await;
    assert!(st.hits >= 26 && st.misses >= 25);
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
    let apis = apis(&c);
    let mut writers = Vec::new();
    for (n, api) in apis.iter().enumerate() {
        let api = api.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..60 {
                cache_set(&api, &format!("n{n}-{i}"), &"x".repeat(i * 10), "t").await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = converged_stats(&apis).await;
    for s in &all {
        assert_eq!(s.entries, 40, "{s:?}");
        assert_eq!(s.evictions, 140, "{s:?}");
    }
    assert!(
        all.iter().all(|s| s.digest.is_some())
            && all
                .windows(2)
                .all(|w| w[0].digest == w[1].digest && w[0].bytes == w[1].bytes),
        "replicas differ: {all:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_with_a_stale_compare_applies_only_its_failure_branch() {
    let c = InprocCluster::start(3).await.unwrap();
    let apis = apis(&c);
    let rev = apis[1].kv_put("balance", "10").await.unwrap().revision;
    apis[1].kv_put("balance", "20").await.unwrap();

    let txn = |rev: u64| -> TxnRequest {
        serde_json::from_value(json!({
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
        }))
        .unwrap()
    };
    let v = apis[2].txn(&txn(rev)).await.unwrap();
    assert!(!v.succeeded, "{v:?}");
    for (api, base) in apis.iter().zip(&c.bases) {
        let got = api.kv_get("balance").await.unwrap();
        assert_eq!(&got.value[..], b"20", "{base}");
        assert_eq!(api.kv_get("paid").await.unwrap_err().status(), Some(404));
        assert_eq!(&api.kv_get("retry").await.unwrap().value[..], b"stale");
    }
    assert_eq!(cache_get(&apis[2], "receipt").await.0, 404);

    tracing::info!("phase: with the current revision the success branch applies at one revision");
    let cur = apis[0].kv_get("balance").await.unwrap().revision;
    let v = apis[0].txn(&txn(cur)).await.unwrap();
    assert!(v.succeeded, "{v:?}");
    let txn_rev = v.revision;
    for key in ["balance", "paid"] {
        let r = apis[1].kv_get(key).await.unwrap().revision;
        assert_eq!(r, txn_rev, "{key} written at the transaction's revision");
    }
    assert_eq!(cache_get(&apis[0], "receipt").await, (200, "r1".into()));
    c.shutdown().await;
}
