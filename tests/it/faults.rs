//! Real processes: kill -9, restarts from the data dir, lost quorum.

use std::collections::BTreeMap;
use std::time::Duration;

use node::error::ErrorCode;
use tests::http;
use tests::process::ProcCluster;

/// Writes `n` keys through rotating nodes among `alive`; returns what was acknowledged.
async fn write_some(
    c: &ProcCluster,
    alive: &[usize],
    prefix: &str,
    n: usize,
) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let node = alive[i % alive.len()];
        let (k, v) = (format!("{prefix}-{i}"), format!("value-{i}"));
        if http::api(&c.bases[node])
            .kv_put(&k, v.clone())
            .await
            .is_ok()
        {
            acked.insert(k, v);
        }
    }
    acked
}

async fn assert_all_readable(c: &ProcCluster, nodes: &[usize], acked: &BTreeMap<String, String>) {
    for &n in nodes {
        let api = http::api(&c.bases[n]);
        for (k, v) in acked {
            let r = api.kv_get(k).await;
            let got = r.as_ref().map(|g| &g.value[..]).map_err(|e| e.status());
            assert_eq!(got, Ok(v.as_bytes()), "key {k} on node {}", n + 1);
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
    let restarted = http::api(&c.bases[li]);
    tests::http::wait_for("restarted node ready", Duration::from_secs(30), || async {
        restarted.ready().await.ok().map(drop)
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
    let api = http::api(&c.bases[survivor]);
    for n in 0..3 {
        let e = api.kv_put(&format!("lonely-{n}"), "x").await.unwrap_err();
        assert!(
            http::is_api_error(&e, 503, ErrorCode::Unavailable)
                || http::is_api_error(&e, 504, ErrorCode::Timeout),
            "write without quorum answered {e:?}"
        );
    }
    // Linearizable reads cannot be served without a quorum either.
    let e = api.kv_get("lonely-0").await.unwrap_err();
    assert_eq!(e.status(), Some(503));
    // The process still serves.
    assert_eq!(api.health().await.unwrap().status, "ok");

    tracing::info!(
        "phase: quorum back; the unacknowledged writes may or may not exist, new ones succeed"
    );
    let dead: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    c.restart(dead[0]).unwrap();
    c.wait_leader(&[survivor, dead[0]], None).await.unwrap();
    api.kv_put("back", "yes").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_a_write_to_the_old_leader_is_never_acknowledged() {
    lost_quorum_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_a_write_to_a_follower_is_never_acknowledged() {
    lost_quorum_case(false).await;
}

/// The leader's disk fills up under writes: it stops acknowledging (a write is answered only
/// once a majority has it on disk) and exits with a message saying why, the other two go on;
/// restarted on the still full disk it stops again with the same message, and once its disk
/// has room it catches up and serves every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_with_a_clear_message_and_recovers_once_it_has_room() {
    use tests::process::ProcOptions;
    const DISK: u64 = 96 << 20;
    const VALUE: usize = 256 << 10;
    let opts = ProcOptions {
        first_ip: 91,
        small_disk: Some((0, DISK)),
        ..Default::default()
    };
    let mut c = ProcCluster::start_with(3, opts).await.unwrap();
    let leader = c.wait_voters(3, &[0, 1, 2]).await.unwrap();
    assert_eq!(
        c.index_of(leader),
        0,
        "the founder leads, on the small disk"
    );

    tracing::info!("phase: 256 KiB values through node 2 until well past node 1's disk");
    let api = http::api(&c.bases[1]);
    let value = "v".repeat(VALUE);
    let mut acked = BTreeMap::new();
    for i in 0..2_000 {
        let key = format!("fill-{i:04}");
        if api.kv_put(&key, value.clone()).await.is_ok() {
            acked.insert(key, value.clone());
        }
        if (acked.len() * VALUE) as u64 > DISK + (64 << 20) {
            break;
        }
    }
    assert!(
        (acked.len() * VALUE) as u64 > DISK,
        "the other two go on acknowledging: {} writes",
        acked.len()
    );
    let why = "raft stopped on an error";
    let exited = c.wait_exit(0, Duration::from_secs(60)).await.unwrap();
    assert!(!exited.success(), "node 1 exits with an error status");
    assert!(c.log(0).contains(why), "{}", c.log_tail(0));

    tracing::info!("phase: restarted on the full disk, it stops again, saying why");
    let before = c.log(0).matches(why).count();
    c.restart(0).unwrap();
    let again = c.wait_exit(0, Duration::from_secs(60)).await.unwrap();
    assert!(!again.success());
    assert!(c.log(0).matches(why).count() > before, "{}", c.log_tail(0));

    tracing::info!("phase: with room, it catches up and serves every acknowledged write");
    c.grow_disk(0, 4 << 30).unwrap();
    c.restart(0).unwrap();
    c.wait_ready(0, Duration::from_secs(120)).await.unwrap();
    assert_all_readable(&c, &[0, 1, 2], &acked).await;
}

/// The leader's fsyncs start failing (libfiu): it must not acknowledge a write it could not
/// make durable; it stops with a message saying why, the other two go on, and restarted with
/// working fsyncs it catches up and serves every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_fsync_fails_stops_with_a_clear_message_and_loses_nothing() {
    use tests::process::ProcOptions;
    let opts = ProcOptions {
        first_ip: 94,
        fiu: Some(0),
        ..Default::default()
    };
    let mut c = ProcCluster::start_with(3, opts).await.unwrap();
    let leader = c.wait_voters(3, &[0, 1, 2]).await.unwrap();
    assert_eq!(c.index_of(leader), 0, "the founder leads, under libfiu");
    let mut acked = write_some(&c, &[0, 1, 2], "before", 30).await;
    assert_eq!(acked.len(), 30);

    tracing::info!("phase: node 1's fsyncs fail; writes go on through nodes 1 and 2");
    c.fail_fsync(0, true).unwrap();
    let api = http::api(&c.bases[1]);
    for i in 0..200 {
        let (k, v) = (format!("during-{i}"), format!("value-{i}"));
        if api.kv_put(&k, v.clone()).await.is_ok() {
            acked.insert(k, v);
        }
        if acked.len() >= 130 {
            break;
        }
    }
    assert!(acked.len() >= 130, "the other two go on acknowledging");
    let exited = c.wait_exit(0, Duration::from_secs(60)).await.unwrap();
    assert!(!exited.success(), "node 1 exits with an error status");
    assert!(
        c.log(0).contains("raft stopped on an error"),
        "{}",
        c.log_tail(0)
    );

    tracing::info!("phase: restarted with working fsyncs, it catches up");
    c.restart(0).unwrap();
    c.wait_ready(0, Duration::from_secs(60)).await.unwrap();
    assert_all_readable(&c, &[0, 1, 2], &acked).await;
}
