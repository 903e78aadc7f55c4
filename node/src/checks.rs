//! Health checks run by the cluster.
//!
//! Every node runs [`run`]. Each HTTP or TCP check belongs to exactly one of the members
//! gossip sees alive (this node included), chosen by rendezvous hashing of the instance over
//! those members: when the owner dies, gossip marks it down within a few seconds and every
//! node computes the same new owner, which starts checking at once. Two nodes whose views
//! differ for a moment may both check an instance; both propose the same status, so that only
//! costs a duplicate check.
//!
//! The owner keeps each check's streak of results in memory and proposes
//! [`ServiceCmd::SetStatus`] only when the streak reaches the check's damping threshold and
//! the status differs from the replicated one: a stable registry writes nothing to the log,
//! and an instance that flaps between single failures and successes does not flap in the
//! registry.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use raft::command::ServiceCmd;
use raft::state::{Check, Damping, Health};
use raft::NodeId;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cluster::Cluster;

/// How often the runner looks for due checks and registry changes.
const TICK: Duration = Duration::from_millis(100);
/// Most checks running at once on one node.
pub const MAX_CONCURRENT_CHECKS: usize = 256;

type Key = (String, String);

/// One check this node owns.
struct Owned {
    check: Check,
    target: String,
    port: u16,
    next_due: Instant,
    running: bool,
    /// Consecutive results of the same kind: positive successes, negative failures.
    streak: i64,
    /// A status proposal is under way.
    proposing: bool,
}

/// The node among `alive` that runs the check of `key`: the highest hash of (instance, node).
pub fn owner(key: &Key, alive: &BTreeSet<NodeId>) -> Option<NodeId> {
    let instance = format!("{}/{}", key.0, key.1);
    alive.iter().copied().max_by_key(|node| {
        crate::gateway::balance::rendezvous(instance.as_bytes(), &node.to_be_bytes())
    })
}

/// The members this node's gossip sees alive, itself included.
pub fn alive_members(cluster: &Cluster) -> BTreeSet<NodeId> {
    let mut alive: BTreeSet<NodeId> = cluster
        .gossip()
        .snapshot()
        .into_iter()
        .filter(|(_, v)| v.liveness == transport::Liveness::Alive)
        .map(|(id, _)| id)
        .collect();
    alive.insert(cluster.id);
    alive
}

enum Done {
    Checked { key: Key, ok: bool, output: String },
    Proposed { key: Key },
}

/// Runs the checks this node owns until `stop`, counting each in `metrics`.
pub async fn run(
    cluster: Arc<Cluster>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    let passed = metrics.health_checks.with_label_values(&["passed"]);
    let failed = metrics.health_checks.with_label_values(&["failed"]);
    let http = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1)
        .build()
    {
        Ok(c) => c,
        Err(e) => return warn!(error = %e, "health checks cannot start: no HTTP client"),
    };
    let mut owned: HashMap<Key, Owned> = HashMap::new();
    let mut seen: Option<(u64, BTreeSet<NodeId>)> = None;
    let mut work: JoinSet<Done> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            Some(done) = work.join_next(), if !work.is_empty() => {
                match done {
                    Ok(Done::Checked { key, ok, output }) => {
                        if ok { passed.inc() } else { failed.inc() }
                        settle(&cluster, &mut owned, &mut work, key, ok, output)
                    }
                    Ok(Done::Proposed { key }) => {
                        if let Some(o) = owned.get_mut(&key) {
                            o.proposing = false;
                        }
                    }
                    Err(e) => warn!(error = %e, "a health check task failed"),
                }
                continue;
            }
        }
        // Ownership is recomputed only when the registry or the alive members change.
        let alive = alive_members(&cluster);
        let revision = cluster.state().registry_revision();
        if seen.as_ref() != Some(&(revision, alive.clone())) {
            refresh(&cluster, &alive, &mut owned);
            seen = Some((revision, alive));
        }
        let now = Instant::now();
        for (key, o) in owned.iter_mut() {
            if o.running || o.next_due > now || work.len() >= MAX_CONCURRENT_CHECKS {
                continue;
            }
            o.running = true;
            o.next_due = now + Duration::from_millis(interval_ms(&o.check));
            let probe = probe(http.clone(), o.check.clone(), o.target.clone(), o.port);
            let key = key.clone();
            work.spawn(async move {
                let (ok, output) = probe.await;
                Done::Checked { key, ok, output }
            });
        }
    }
}

fn interval_ms(check: &Check) -> u64 {
    match check {
        Check::Http { interval_ms, .. } | Check::Tcp { interval_ms, .. } => *interval_ms,
        Check::Ttl { ttl_ms } => *ttl_ms,
    }
}

fn damping(check: &Check) -> Damping {
    match check {
        Check::Http { damping, .. } | Check::Tcp { damping, .. } => *damping,
        Check::Ttl { .. } => Damping {
            failures_before_critical: 1,
            successes_before_passing: 1,
        },
    }
}

/// Brings the owned checks in line with the registry and the alive members: new ones start
/// now, changed ones start over, others are dropped.
fn refresh(cluster: &Cluster, alive: &BTreeSet<NodeId>, owned: &mut HashMap<Key, Owned>) {
    let state = cluster.state();
    let mut mine: HashMap<Key, (Check, String, u16)> = HashMap::new();
    for inst in state.all_instances() {
        let Some(check) = inst.spec.check.as_ref().filter(|c| c.is_run_by_cluster()) else {
            continue;
        };
        let key = (inst.spec.service.clone(), inst.spec.id.clone());
        if owner(&key, alive) == Some(cluster.id) {
            mine.insert(
                key,
                (check.clone(), inst.spec.address.clone(), inst.spec.port),
            );
        }
    }
    drop(state);
    owned.retain(|key, o| {
        matches!(mine.get(key), Some((c, t, p)) if *c == o.check && *t == o.target && *p == o.port)
    });
    for (key, (check, target, port)) in mine {
        owned.entry(key).or_insert_with(|| {
            debug!(?check, "health check taken over");
            Owned {
                check,
                target,
                port,
                next_due: Instant::now(),
                running: false,
                streak: 0,
                proposing: false,
            }
        });
    }
}

/// Counts one result and proposes the status once the streak reaches the damping threshold
/// and differs from the replicated status.
fn settle(
    cluster: &Arc<Cluster>,
    owned: &mut HashMap<Key, Owned>,
    work: &mut JoinSet<Done>,
    key: Key,
    ok: bool,
    output: String,
) {
    let Some(o) = owned.get_mut(&key) else {
        return;
    };
    o.running = false;
    o.streak = match (ok, o.streak) {
        (true, s) if s > 0 => s + 1,
        (true, _) => 1,
        (false, s) if s < 0 => s - 1,
        (false, _) => -1,
    };
    let d = damping(&o.check);
    let wanted = if o.streak >= i64::from(d.successes_before_passing) {
        Health::Passing
    } else if -o.streak >= i64::from(d.failures_before_critical) {
        Health::Critical
    } else {
        return;
    };
    let current = cluster
        .state()
        .instance(&key.0, &key.1)
        .map(|i| (i.status, i.output == raft::state::NOT_CHECKED));
    // Written when the status changes, and once after the first result (the output says why).
    if current.is_none_or(|(c, unchecked)| c == wanted && !unchecked) || o.proposing {
        return;
    }
    o.proposing = true;
    let cluster = cluster.clone();
    work.spawn(async move {
        let cmd = ServiceCmd::SetStatus {
            service: key.0.clone(),
            id: key.1.clone(),
            status: wanted,
            output,
        };
        if let Err(e) = crate::service::propose(&cluster, cmd, None).await {
            // The next result tries again.
            debug!(error = %e, "health status not written");
        }
        Done::Proposed { key }
    });
}

/// Registers the config file's `[[services]]` (validated with the config), retrying each
/// every second until it is written or `stop`: a node registers them once it reaches a leader.
pub async fn register_configured(
    cluster: Arc<Cluster>,
    entries: Vec<crate::config::ServiceEntry>,
    stop: CancellationToken,
) {
    for e in entries {
        let spec = match crate::api::services::instance_spec(&e.service, &e.id, &e.instance) {
            Ok(spec) => spec,
            Err(err) => {
                warn!(service = %e.service, id = %e.id, error = %err.message, "not registered");
                continue;
            }
        };
        loop {
            let cmd = ServiceCmd::Register(spec.clone());
            match crate::service::propose(&cluster, cmd, None).await {
                Ok(_) => {
                    tracing::info!(service = %e.service, id = %e.id, "registered from the config file");
                    break;
                }
                Err(err) => debug!(error = %err, "registration not written yet"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Runs one check: whether it passed, and what it saw.
async fn probe(http: reqwest::Client, check: Check, target: String, port: u16) -> (bool, String) {
    let host = if target.contains(':') {
        format!("[{target}]")
    } else {
        target
    };
    match check {
        Check::Http {
            path,
            expect_status,
            timeout_ms,
            ..
        } => {
            let url = format!("http://{host}:{port}{path}");
            let sent = http
                .get(&url)
                .timeout(Duration::from_millis(timeout_ms))
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let ok = if expect_status == 0 {
                        (200..300).contains(&status)
                    } else {
                        status == expect_status
                    };
                    (ok, format!("HTTP GET {path}: {status}"))
                }
                Err(e) if e.is_timeout() => (
                    false,
                    format!("HTTP GET {path}: timed out after {timeout_ms} ms"),
                ),
                Err(e) => (
                    false,
                    format!("HTTP GET {path}: {}", crate::error::root_cause(&e)),
                ),
            }
        }
        Check::Tcp { timeout_ms, .. } => {
            let addr = format!("{host}:{port}");
            let connect = tokio::time::timeout(
                Duration::from_millis(timeout_ms),
                tokio::net::TcpStream::connect(addr.as_str()),
            );
            match connect.await {
                Ok(Ok(_)) => (true, format!("TCP connect to {addr}: ok")),
                Ok(Err(e)) => (false, format!("TCP connect to {addr}: {e}")),
                Err(_) => (
                    false,
                    format!("TCP connect to {addr}: timed out after {timeout_ms} ms"),
                ),
            }
        }
        Check::Ttl { .. } => (true, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_moves_only_for_the_checks_of_a_node_that_left() {
        let all: BTreeSet<NodeId> = [1, 2, 3].into();
        let without_2: BTreeSet<NodeId> = [1, 3].into();
        let keys: Vec<Key> = (0..300).map(|i| ("web".into(), format!("i{i}"))).collect();
        let mut per_node = HashMap::new();
        for k in &keys {
            let before = owner(k, &all).unwrap();
            *per_node.entry(before).or_insert(0) += 1;
            let after = owner(k, &without_2).unwrap();
            if before != 2 {
                assert_eq!(before, after, "a check of a node that stayed moved");
            } else {
                assert_ne!(after, 2);
            }
        }
        // Spread over every node (each has about a third).
        for n in [1, 2, 3] {
            assert!(per_node[&n] > 50, "{per_node:?}");
        }
    }
}
