//! Replication with large entries: a follower that fell far behind on 1 MB values catches up
//! (appends are cut to a byte budget, so no batch exceeds the frame limit).

use std::time::Duration;

use tests::http::wait_for;
use tests::process::ProcCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_paused_through_150_mb_of_1_mb_values_catches_up() {
    let c = ProcCluster::start(3).await.unwrap();
    let leader_id = c.wait_leader(&[0, 1, 2], None).await.unwrap();
    let leader = c.index_of(leader_id);
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let apis = c.apis();
    c.pause(follower, true).unwrap();

    // 150 values of 1,000,000 bytes, each acknowledged by the leader and the other follower.
    const N: usize = 150;
    let value = |i: usize| vec![b'a' + (i % 26) as u8; 1_000_000];
    for i in 0..N {
        apis[leader]
            .kv_put(&format!("big/{i:03}"), value(i))
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e:?}"));
    }

    c.pause(follower, false).unwrap();
    let stale = apis[follower].stale();
    wait_for(
        "the resumed follower to hold every value",
        Duration::from_secs(120),
        || async {
            let last = stale.kv_get(&format!("big/{:03}", N - 1)).await.ok()?;
            (last.value.len() == 1_000_000).then_some(())
        },
    )
    .await
    .map_err(|e| e.context(c.log_tail(follower)))
    .unwrap();
    // Every value is there, in full, on the follower.
    for i in (0..N).step_by(37) {
        let v = stale.kv_get(&format!("big/{i:03}")).await.unwrap();
        assert!(v.value == value(i), "value {i} on the follower");
    }
    // No append was refused for its size.
    let leader_log = c.log(leader);
    assert!(
        !leader_log.contains("over the"),
        "an oversized frame: {}",
        leader_log
            .lines()
            .filter(|l| l.contains("over the"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
