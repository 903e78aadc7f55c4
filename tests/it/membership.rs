//! Joining: the token decides who gets in, and a refused node learns why.

use tests::inproc::{refused_join, InprocCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_with_a_clear_error() {
    let c = InprocCluster::start(1).await.unwrap();
    let good = std::fs::read_to_string(c.configs[0].data_dir().join("join-token")).unwrap();
    let good = good.trim();
    let join = c.configs[0].advertise_cluster_addr();

    // Right cluster fingerprint, wrong secret: the cluster refuses.
    let (prefix, _) = good.rsplit_once('.').unwrap();
    let wrong_secret = format!("{prefix}.00000000000000000000000000000000");
    let err = refused_join(
        "127.0.0.2",
        &join,
        &wrong_secret,
        "a wrong secret must not join",
    )
    .await;
    assert!(err.contains("invalid join token"), "{err}");

    // A token naming another cluster's certificate: the joiner refuses to talk.
    let other = format!("stk1.{}.{}", "ab".repeat(32), "cd".repeat(16));
    let err = refused_join(
        "127.0.0.3",
        &join,
        &other,
        "a foreign certificate must not be trusted",
    )
    .await;
    assert!(err.contains("certificate"), "{err}");

    // Garbage is rejected before any connection.
    let err = refused_join(
        "127.0.0.4",
        &join,
        "nonsense",
        "a malformed token must not join",
    )
    .await;
    assert!(err.contains("token"), "{err}");

    // The cluster still has exactly its one member.
    let status = c.nodes[0].as_ref().unwrap().cluster.status(0);
    assert_eq!(status.members.len(), 1);
    c.shutdown().await;
}

/// Leadership transfer and member removal from the command line, on real processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leadership_and_remove_a_member_from_the_cli() {
    use tests::http::{self, wait_for};
    use tests::process::{stackd_fails, stackd_ok, ProcCluster};

    let c = ProcCluster::start(3).await.unwrap();
    let apis: Vec<_> = c.bases.iter().map(|b| http::api(b)).collect();
    let all = [0usize, 1, 2];
    let leader = c.wait_voters(3, &all).await.unwrap();
    let to = (1..=3u64).find(|id| *id != leader).unwrap();
    let via = &c.api_addrs[(to as usize) % 3]; // any node; followers relay to the leader

    let (stdout, _) = stackd_ok(&["cluster", "transfer-leader", &to.to_string(), "--addr", via]);
    assert_eq!(stdout.trim(), format!("leader is node {to}"));
    for api in &apis {
        wait_for(
            "every node sees the new leader",
            std::time::Duration::from_secs(10),
            || async {
                let s = http::status(api).await?;
                (s.leader_id? == to).then_some(())
            },
        )
        .await
        .unwrap();
    }

    let gone = (1..=3u64).find(|id| *id != to).unwrap();
    stackd_ok(&[
        "cluster",
        "remove",
        &gone.to_string(),
        "--addr",
        &c.api_addrs[to as usize - 1],
    ]);
    let stays: Vec<usize> = (1..=3u64)
        .filter(|id| *id != gone)
        .map(|id| id as usize - 1)
        .collect();
    for &i in &stays {
        wait_for(
            "two members left",
            std::time::Duration::from_secs(10),
            || async {
                let s = http::status(&apis[i]).await?;
                let ids: Vec<u64> = s.members.iter().map(|m| m.id).collect();
                (ids.len() == 2 && !ids.contains(&gone)).then_some(())
            },
        )
        .await
        .unwrap();
    }
    // The two that stay still take writes.
    apis[stays[0]].kv_put("after-remove", "ok").await.unwrap();

    // Removing the same node again, or a node that never existed, is a clear 404.
    let stderr = stackd_fails(&["cluster", "remove", "42", "--addr", &c.api_addrs[stays[0]]]);
    assert!(stderr.contains("not_found"), "{stderr}");
}
