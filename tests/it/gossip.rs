//! Gossip membership and autopilot on real processes: every node sees the same members and
//! liveness, a killed node is `down` everywhere within seconds, and the leader's autopilot
//! replaces a dead voter with a spare when told to.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use node::api::client::Client;
use node::api::model::{ClusterStatus, MemberRole};
use tests::http::{self, wait_for};
use tests::process::{ProcCluster, ProcOptions};

/// What a user compares across nodes in `GET /v1/cluster`: leader, voters, learners, and
/// each member's gossip state.
#[derive(Debug, PartialEq, Eq)]
struct View {
    leader: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    gossip: BTreeMap<u64, String>,
}

fn view(s: &ClusterStatus) -> Option<View> {
    let ids = |voter: bool| -> Vec<u64> {
        s.members
            .iter()
            .filter(|m| matches!(m.role, MemberRole::Voter) == voter)
            .map(|m| m.id)
            .collect()
    };
    Some(View {
        leader: s.leader_id?,
        voters: ids(true),
        learners: ids(false),
        gossip: s.members.iter().map(|m| (m.id, m.gossip.clone())).collect(),
    })
}

/// Waits until the nodes `on` all report the same view, with every member alive and its
/// metadata (applied index) known; returns that view.
async fn wait_same_view_all_alive(c: &ProcCluster, on: &[usize], members: usize) -> View {
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();
    wait_for(
        "the same members, leader and gossip states (all alive) on every node",
        Duration::from_secs(30),
        || async {
            let mut first: Option<View> = None;
            for &i in on {
                let s = http::status(&apis[i]).await?;
                let complete = s.members.iter().all(|m| m.applied_index.is_some());
                let v = view(&s)?;
                if !complete || v.gossip.len() != members || v.gossip.values().any(|g| g != "alive")
                {
                    return None;
                }
                match &first {
                    None => first = Some(v),
                    Some(f) if *f != v => return None,
                    Some(_) => {}
                }
            }
            first
        },
    )
    .await
    .unwrap()
}

/// Waits until every node in `on` reports node `id` with gossip state `state`; returns how
/// long that took from `since`.
async fn wait_gossip_state(
    c: &ProcCluster,
    on: &[usize],
    id: u64,
    state: &str,
    since: Instant,
) -> Duration {
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();
    wait_for(
        &format!("node {id} {state} in gossip on every remaining node"),
        Duration::from_secs(20),
        || async {
            for &i in on {
                let s = http::status(&apis[i]).await?;
                let m = s.members.iter().find(|m| m.id == id)?;
                if m.gossip != state {
                    return None;
                }
            }
            Some(since.elapsed())
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_shows_the_same_members_and_gossip_states_after_joins() {
    // Node 1 founds the cluster; four more join one at a time: 3 voters, 2 learners.
    let c = ProcCluster::start(5).await.unwrap();
    let all: Vec<usize> = (0..5).collect();
    tracing::info!("phase: every node agrees on members, leader and liveness");
    let v = wait_same_view_all_alive(&c, &all, 5).await;
    assert_eq!(v.voters.len(), 3, "{v:?}");
    assert_eq!(v.learners.len(), 2, "{v:?}");
    println!("cluster view on all 5 nodes: {v:?}");

    tracing::info!("phase: a packet with a wrong tag is dropped and counted");
    let api = http::api(&c.bases[2]);
    let target = &c.cluster_addrs[2];
    let (host, port) = target.rsplit_once(':').unwrap();
    let gossip_addr = format!("{host}:{}", port.parse::<u16>().unwrap() + 1);
    let sock = std::net::UdpSocket::bind(format!("{host}:0")).unwrap();
    let mut forged = vec![1u8, 0];
    forged.extend_from_slice(b"not a real swim message");
    forged.extend_from_slice(&[0u8; 32]);
    let dropped = |text: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("stackd_gossip_dropped_packets_total{reason=\"unauthenticated\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let before = dropped(&api.metrics().await.unwrap());
    sock.send_to(&forged, &gossip_addr).unwrap();
    wait_for(
        "the forged packet counted as unauthenticated",
        Duration::from_secs(10),
        || async {
            let text = api.metrics().await.ok()?;
            (dropped(&text) > before).then_some(())
        },
    )
    .await
    .unwrap();
    // The cluster is unaffected.
    let again = wait_same_view_all_alive(&c, &all, 5).await;
    assert_eq!(again.gossip, v.gossip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_down_everywhere_within_seconds_and_alive_after_restart() {
    let mut c = ProcCluster::start(3).await.unwrap();
    let all = [0usize, 1, 2];
    wait_same_view_all_alive(&c, &all, 3).await;
    let mut detections = Vec::new();
    for round in 0..3 {
        let leader = c.wait_voters(3, &all).await.unwrap();
        // A follower, a different one each round where possible.
        let victim = (0..3)
            .map(|k| (round + k) % 3)
            .find(|i| c.ids[*i] != leader)
            .unwrap();
        let id = c.ids[victim];
        let rest: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
        tracing::info!(round, id, "phase: kill -9 and wait for down everywhere");
        c.kill9(victim).unwrap();
        let t0 = Instant::now();
        let took = wait_gossip_state(&c, &rest, id, "down", t0).await;
        println!("round {round}: node {id} down on every remaining node after {took:?}");
        detections.push(took);

        tracing::info!(round, id, "phase: restart and wait for alive everywhere");
        c.restart(victim).unwrap();
        let t1 = Instant::now();
        let back = wait_gossip_state(&c, &all, id, "alive", t1).await;
        println!("round {round}: node {id} alive again everywhere {back:?} after restart");
        wait_same_view_all_alive(&c, &all, 3).await;
    }
    detections.sort();
    println!(
        "gossip detection of a killed node: median {:?}, all {:?}",
        detections[detections.len() / 2],
        detections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_replaces_a_dead_voter_with_the_spare() {
    replace_a_dead_voter(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_on_a_new_leader_replaces_the_dead_old_leader() {
    replace_a_dead_voter(true).await;
}

/// 3 voters and a spare learner, autopilot on with a 2 s grace: `kill -9` a voter (the leader
/// when `kill_leader`); the dead voter is replaced and the cluster takes writes.
async fn replace_a_dead_voter(kill_leader: bool) {
    let opts = ProcOptions {
        target_voters: 3,
        env: vec![
            ("STACKD_AUTOPILOT_REPLACE_DEAD".into(), "true".into()),
            ("STACKD_AUTOPILOT_DEAD_GRACE_MS".into(), "2000".into()),
        ],
        ..Default::default()
    };
    // 3 voters and 1 learner (the spare).
    let mut c = ProcCluster::start_with(4, opts).await.unwrap();
    let all = [0usize, 1, 2, 3];
    let v = wait_same_view_all_alive(&c, &all, 4).await;
    assert_eq!((v.voters.len(), v.learners.len()), (3, 1), "{v:?}");
    let spare = v.learners[0];
    let dead = if kill_leader {
        v.leader
    } else {
        *v.voters.iter().find(|id| **id != v.leader).unwrap()
    };
    let victim = c.index_of(dead);
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();

    tracing::info!(dead, "phase: kill -9 a voter");
    c.kill9(victim).unwrap();
    let t0 = Instant::now();
    let took = wait_gossip_state(&c, &rest, dead, "down", t0).await;
    println!("voter {dead} down on every remaining node after {took:?}");

    tracing::info!(dead, spare, "phase: autopilot replaces the dead voter");
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();
    let after = wait_for(
        "3 alive voters without the dead one on every remaining node",
        Duration::from_secs(40),
        || async {
            let mut first: Option<View> = None;
            for &i in &rest {
                let v = view(&http::status(&apis[i]).await?)?;
                if v.voters.len() != 3
                    || v.voters.contains(&dead)
                    || v.gossip.contains_key(&dead)
                    || v.gossip.values().any(|g| g != "alive")
                    || v.leader == dead
                    || first.as_ref().is_some_and(|f| *f != v)
                {
                    return None;
                }
                first = Some(v);
            }
            first
        },
    )
    .await
    .unwrap();
    println!(
        "voter {dead} replaced {:?} after the kill: {after:?}",
        t0.elapsed()
    );
    assert!(after.voters.contains(&spare), "{after:?}");
    assert!(after.learners.is_empty(), "{after:?}");

    // The leader says what it did (it records an action once its change has committed,
    // which every node may apply a moment before the leader's call returns).
    let leader = c.index_of(after.leader);
    wait_for(
        "the leader to list both autopilot actions",
        Duration::from_secs(10),
        || async {
            let s = http::status(&apis[leader]).await?;
            let actions: Vec<(String, u64)> = s
                .autopilot
                .actions
                .iter()
                .map(|a| (a.action.clone(), a.node))
                .collect();
            (actions.contains(&("add_voter".into(), spare))
                && actions.contains(&("remove_voter".into(), dead)))
            .then_some(())
        },
    )
    .await
    .unwrap();

    tracing::info!("phase: the cluster still takes writes");
    apis[rest[0]].kv_put("after-replace", "ok").await.unwrap();
    let got = apis[rest[1]].kv_get("after-replace").await.unwrap();
    assert_eq!(&got.value[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_down_and_rejoins_gossip_when_it_resumes() {
    let c = ProcCluster::start(3).await.unwrap();
    let all = [0usize, 1, 2];
    wait_same_view_all_alive(&c, &all, 3).await;
    let leader = c.wait_voters(3, &all).await.unwrap();
    let victim = (0..3).find(|i| c.ids[*i] != leader).unwrap();
    let id = c.ids[victim];
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();

    tracing::info!(id, "phase: SIGSTOP until gossip calls it down");
    c.pause(victim, true).unwrap();
    let t0 = Instant::now();
    let took = wait_gossip_state(&c, &rest, id, "down", t0).await;
    println!("paused node {id} down on the others after {took:?}");

    tracing::info!(
        id,
        "phase: SIGCONT; it learns it was declared down and rejoins"
    );
    c.pause(victim, false).unwrap();
    let t1 = Instant::now();
    let back = wait_gossip_state(&c, &all, id, "alive", t1).await;
    println!("resumed node {id} alive again everywhere after {back:?}");
    wait_same_view_all_alive(&c, &all, 3).await;
}
