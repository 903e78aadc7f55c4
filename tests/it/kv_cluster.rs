//! Key-value behaviour on a 3-node in-process cluster.

use std::time::Duration;

use node::api::client::{KvListQuery, KvWrite};
use node::error::ErrorCode;
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_followers_are_read_on_every_node() {
    let c = InprocCluster::start(3).await.unwrap();
    let leader = c.leader_index().unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    tracing::info!("phase: write through each follower, read back on every node");
    let mut last_rev = 0;
    for (n, &f) in followers.iter().enumerate() {
        let key = format!("k{n}");
        let rev = http::api(&c.bases[f])
            .kv_put(&key, format!("v{n}"))
            .await
            .unwrap()
            .revision;
        assert!(rev > last_rev, "revisions grow: {rev} after {last_rev}");
        last_rev = rev;
        // Linearizable reads right after the acknowledgement, on every node.
        for base in &c.bases {
            let got = http::api(base).kv_get(&key).await.unwrap();
            assert_eq!(
                (&got.value[..], got.revision),
                (format!("v{n}").as_bytes(), rev),
                "read on {base}"
            );
        }
    }

    tracing::info!("phase: compare-and-set");
    let f = http::api(&c.bases[followers[0]]);
    let cur = f.kv_put("k0", "x").await.unwrap().revision;
    let if_revision = |r: u64| KvWrite {
        if_revision: Some(r),
        ..KvWrite::default()
    };
    let e = f
        .kv_put_with("k0", "y", &if_revision(cur - 1))
        .await
        .unwrap_err();
    assert!(http::is_api_error(&e, 409, ErrorCode::Conflict), "{e:?}");
    assert_eq!(e.detail().unwrap().current_revision, Some(cur));
    f.kv_put_with("k0", "y", &if_revision(cur)).await.unwrap();
    f.kv_put_with("fresh", "1", &if_revision(0))
        .await
        .expect("if_revision=0 creates an absent key");
    let e = f
        .kv_put_with("fresh", "2", &if_revision(0))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "if_revision=0 refuses a present key");

    tracing::info!("phase: delete and list");
    assert!(f.kv_delete("fresh").await.unwrap().deleted);
    let e = http::api(&c.bases[leader])
        .kv_get("fresh")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    let list = f
        .kv_list(&KvListQuery {
            prefix: Some("k".into()),
            limit: Some(1),
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].key, "k0");
    assert_eq!(list.next.as_deref(), Some("k0"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_keys_disappear_on_every_node_by_the_replicated_clock() {
    let c = InprocCluster::start(3).await.unwrap();
    let ttl = KvWrite {
        ttl_ms: Some(1500),
        ..KvWrite::default()
    };
    http::api(&c.bases[1])
        .kv_put_with("session", "s", &ttl)
        .await
        .unwrap();
    for base in &c.bases {
        http::api(base)
            .kv_get("session")
            .await
            .unwrap_or_else(|e| panic!("present right after the write on {base}: {e:?}"));
    }
    // Each node decides expiry from its applied state (the replicated clock), so a stale
    // local read is the honest check that every replica dropped it.
    for base in &c.bases {
        let stale = http::api(base).stale();
        wait_for(
            &format!("expiry on {base}"),
            Duration::from_secs(10),
            || async {
                let r = stale.kv_get("session").await;
                matches!(r, Err(e) if e.status() == Some(404)).then_some(())
            },
        )
        .await
        .unwrap();
    }
    // The replicated clock, not the node's wall clock, decided: every node applied the same
    // expiry revision.
    let revs: Vec<u64> = futures_revisions(&c.bases).await;
    assert!(
        revs.windows(2).all(|w| w[0] == w[1]),
        "same revision everywhere after expiry: {revs:?}"
    );
    c.shutdown().await;
}

async fn futures_revisions(bases: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    let one = KvListQuery {
        limit: Some(1),
        ..KvListQuery::default()
    };
    for b in bases {
        out.push(http::api(b).kv_list(&one).await.unwrap().revision);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_applies_a_retried_write_once() {
    let c = InprocCluster::start(3).await.unwrap();
    let api = http::api(&c.bases[2]).idempotent("req-1");
    let a = api.kv_put("counter", "1").await.unwrap();
    let b = api.kv_put("counter", "1").await.unwrap();
    assert_eq!(a.revision, b.revision, "the retry gets the first answer");
    let got = http::api(&c.bases[0]).kv_get("counter").await.unwrap();
    assert_eq!(got.revision, a.revision, "applied once");
    c.shutdown().await;
}

/// A log of large entries is snapshotted (and purged) by its size, long before the count of
/// entries between snapshots is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_large_entries_is_snapshotted_by_its_size() {
    let c = InprocCluster::start_with(1, |cfg| {
        cfg.raft.snapshot_every_entries = 1_000_000;
        cfg.raft.snapshot_every_log_bytes = 1 << 20;
    })
    .await
    .unwrap();
    let api = http::api(&c.bases[0]);
    let view = || c.nodes[0].as_ref().unwrap().cluster.raft_view();
    assert_eq!(view().snapshot_index, None, "no snapshot before the writes");
    // 24 values of 100 KB: about 2.4 MB of log in 24 entries (and a few of the cluster's).
    for i in 0..24 {
        api.kv_put(&format!("big-{i:02}"), vec![b'x'; 100_000])
            .await
            .unwrap();
    }
    let last = api.kv_get("big-23").await.unwrap().revision;
    wait_for(
        "a snapshot by log size",
        Duration::from_secs(20),
        || async { view().snapshot_index.filter(|i| *i > 10).map(|_| ()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", view()));
    let v = view();
    assert!(
        v.snapshot_index.unwrap() < 1000,
        "far fewer entries than the count policy's: {v:?} (last revision {last})"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_log_purge_catches_up_from_a_snapshot() {
    let mut c = InprocCluster::start_with(1, |cfg| cfg.raft.snapshot_every_entries = 100)
        .await
        .unwrap();
    let first = http::api(&c.bases[0]);
    tracing::info!("phase: 600 writes so snapshots are taken and the log is purged");
    for i in 0..600 {
        first
            .kv_put(&format!("snap-{i:04}"), format!("v{i}"))
            .await
            .unwrap();
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
    let joined = http::api(&c.bases[j]);
    let all = KvListQuery {
        prefix: Some("snap-".into()),
        limit: Some(1000),
        after: None,
    };
    wait_for(
        "the new node to hold every key",
        Duration::from_secs(30),
        || async {
            let v = joined.stale().kv_list(&all).await.ok()?;
            (v.items.len() == 600).then_some(())
        },
    )
    .await
    .unwrap();
    let got = joined.kv_get("snap-0000").await.unwrap();
    assert_eq!(&got.value[..], b"v0");
    let snap = c.nodes[j]
        .as_ref()
        .unwrap()
        .cluster
        .raft_view()
        .snapshot_index;
    assert!(snap.is_some(), "the joined node installed a snapshot");
    c.shutdown().await;
}
