//! The autopilot: the leader turns gossip's verdicts into one membership change at a time.

use super::*;

/// Autopilot actions kept for `GET /v1/cluster`.
pub(super) const AUTOPILOT_LOG_LEN: usize = 32;

/// One membership change the leader's autopilot made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AutopilotAction {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// `promote` (a caught-up learner, voters below target), `add_voter` (a learner added to
    /// replace a dead voter) or `remove_voter` (a dead voter removed).
    pub action: &'static str,
    pub node: NodeId,
    pub reason: String,
}

impl Cluster {
    /// One step of replacing a voter that gossip has seen down for longer than the grace
    /// period, while this node leads (see [`plan_replacement`] for the rules). Adding the
    /// spare and removing the dead voter are two passes, 500 ms apart: one membership change
    /// at a time.
    pub(super) async fn replace_dead_voter(&self) {
        let m = self.metrics();
        let membership = &m.membership;
        if membership.is_joint() {
            return;
        }
        let seen: BTreeMap<NodeId, (Liveness, Duration)> = self
            .gossip
            .snapshot()
            .into_iter()
            .map(|(id, p)| (id, (p.liveness, p.since.elapsed())))
            .collect();
        let voters = membership.voters().clone();
        let learners: BTreeSet<NodeId> = membership.learners().collect();
        let ready: BTreeSet<NodeId> = learners
            .iter()
            .copied()
            .filter(|l| caught_up(&m, *l, self.contact_window()))
            .collect();
        let grace = Duration::from_millis(self.config.autopilot.dead_grace_ms);
        let Some(step) = plan_replacement(
            self.id,
            &voters,
            &learners,
            &ready,
            &seen,
            self.config.raft.target_voters,
            grace,
        ) else {
            return;
        };
        let timeout = Duration::from_millis(self.config.api.request_timeout_ms * 2);
        let (change, action, node, reason) = describe(step, &seen);
        // A removed voter is not kept as a learner: it is dead, and a spare it is not.
        match tokio::time::timeout(timeout, self.replica.change_membership(change)).await {
            Ok(Ok(_)) => {
                info!(node, action, "autopilot: membership changed");
                self.record(action, node, reason);
            }
            Ok(Err(e)) => warn!(node, action, error = %e, "autopilot: membership change failed"),
            Err(_) => warn!(node, action, "autopilot: membership change timed out"),
        }
    }

    pub(super) fn record(&self, action: &'static str, node: NodeId, reason: String) {
        *self
            .autopilot_totals
            .lock()
            .expect("autopilot totals lock")
            .entry(action)
            .or_default() += 1;
        let mut log = self.autopilot.lock().expect("autopilot log lock");
        if log.len() == AUTOPILOT_LOG_LEN {
            log.pop_front();
        }
        log.push_back(AutopilotAction {
            at_ms: now_ms(),
            action,
            node,
            reason,
        });
    }

    /// How many `action`s the autopilot made on this node since it started.
    pub fn autopilot_total(&self, action: &str) -> u64 {
        self.autopilot_totals
            .lock()
            .expect("autopilot totals lock")
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// The autopilot's recent membership changes on this node, oldest first.
    pub fn autopilot_actions(&self) -> Vec<AutopilotAction> {
        self.autopilot
            .lock()
            .expect("autopilot log lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// The membership change of `step`, its action name, its node and why, logged.
fn describe(
    step: Step,
    seen: &BTreeMap<NodeId, (Liveness, Duration)>,
) -> (MembershipChange, &'static str, NodeId, String) {
    let down_ms = |n: &NodeId| seen.get(n).map_or(0, |(_, d)| d.as_millis()) as u64;
    match step {
        Step::AddVoter { node, replaces } => {
            let down_ms = down_ms(&replaces);
            info!(
                node,
                replaces, down_ms, "autopilot: adding a learner as voter to replace a dead voter"
            );
            (
                MembershipChange::AddVoter(node),
                "add_voter",
                node,
                format!("replaces voter {replaces}, down in gossip for {down_ms} ms"),
            )
        }
        Step::RemoveVoter { node } => {
            let down_ms = down_ms(&node);
            info!(node, down_ms, "autopilot: removing dead voter");
            (
                MembershipChange::RemoveVoter(node),
                "remove_voter",
                node,
                format!("down in gossip for {down_ms} ms"),
            )
        }
    }
}

/// One membership change the autopilot wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Make learner `node` a voter, to replace dead voter `replaces`.
    AddVoter { node: NodeId, replaces: NodeId },
    /// Remove dead voter `node`.
    RemoveVoter { node: NodeId },
}

/// The autopilot's next step about dead voters, if any, from the leader's facts: `me` (the
/// leader, always alive), the voter and learner sets, the learners caught up with the log
/// (`ready`), and what gossip has seen of each node (liveness and for how long).
///
/// - Dead means `down` for at least `grace`; `suspect` or never seen is not dead.
/// - The voter down longest is handled first.
/// - Every change needs a majority of alive voters in the current set (else it could not
///   commit, and nothing is done).
/// - Voters at or below `target`: an alive, caught-up learner is added first; without one
///   nothing happens (the cluster never shrinks by itself).
/// - Voters above `target`: the dead voter is removed, if the alive voters are a majority of
///   the remaining set too.
pub(super) fn plan_replacement(
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    ready: &BTreeSet<NodeId>,
    seen: &BTreeMap<NodeId, (Liveness, Duration)>,
    target: usize,
    grace: Duration,
) -> Option<Step> {
    let alive = |id: NodeId| id == me || seen.get(&id).is_some_and(|(l, _)| *l != Liveness::Down);
    let (dead, _) = voters
        .iter()
        .filter(|v| **v != me)
        .filter_map(|v| match seen.get(v) {
            Some((Liveness::Down, d)) if *d >= grace => Some((*v, *d)),
            _ => None,
        })
        .max_by_key(|(_, d)| *d)?;
    let alive_voters = voters.iter().filter(|v| alive(**v)).count();
    if alive_voters * 2 <= voters.len() {
        // Checked every pass while it lasts: debug, not warn. `/v1/cluster` shows it.
        debug!(
            dead,
            alive_voters,
            voters = voters.len(),
            "autopilot: a voter is down but the alive voters are no majority; not changing membership"
        );
        return None;
    }
    if voters.len() > target {
        // The dead voter is not among the alive ones, so they stay as many in a set one
        // smaller.
        let remaining = voters.len() - 1;
        return (alive_voters * 2 > remaining).then_some(Step::RemoveVoter { node: dead });
    }
    let spare = learners
        .iter()
        .copied()
        .find(|l| ready.contains(l) && seen.get(l).is_some_and(|(s, _)| *s == Liveness::Alive));
    match spare {
        // The new set has one more voter, and it is alive: still a majority.
        Some(node) => Some(Step::AddVoter {
            node,
            replaces: dead,
        }),
        None => {
            debug!(
                dead,
                "autopilot: a voter is down but no caught-up alive learner can replace it"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn seen(facts: &[(NodeId, Liveness, u64)]) -> BTreeMap<NodeId, (Liveness, Duration)> {
        facts
            .iter()
            .map(|(id, l, secs)| (*id, (*l, Duration::from_secs(*secs))))
            .collect()
    }

    use Liveness::{Alive, Down, Suspect};

    #[test]
    fn a_voter_down_past_the_grace_period_is_replaced_by_a_ready_spare_then_removed() {
        let facts = seen(&[(2, Alive, 100), (3, Down, 31), (4, Alive, 100)]);
        let plan = |voters: &[NodeId], learners: &[NodeId]| {
            plan_replacement(
                1,
                &set(voters),
                &set(learners),
                &set(&[4]),
                &facts,
                3,
                GRACE,
            )
        };
        assert_eq!(
            plan(&[1, 2, 3], &[4]),
            Some(Step::AddVoter {
                node: 4,
                replaces: 3
            })
        );
        // Next pass: voters above target, the dead one goes.
        assert_eq!(
            plan(&[1, 2, 3, 4], &[]),
            Some(Step::RemoveVoter { node: 3 })
        );
        // Done: nothing more.
        assert_eq!(plan(&[1, 2, 4], &[]), None);
    }

    #[test]
    fn nothing_happens_within_the_grace_period_or_without_a_verdict_or_a_spare() {
        let v = set(&[1, 2, 3]);
        let l = set(&[4]);
        let ready = set(&[4]);
        let run = |facts: &[(NodeId, Liveness, u64)], ready: &BTreeSet<NodeId>| {
            plan_replacement(1, &v, &l, ready, &seen(facts), 3, GRACE)
        };
        assert_eq!(
            run(&[(2, Alive, 9), (3, Down, 29), (4, Alive, 9)], &ready),
            None,
            "within grace"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (3, Suspect, 99), (4, Alive, 9)], &ready),
            None,
            "suspect is no verdict"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (4, Alive, 9)], &ready),
            None,
            "never seen is no verdict"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (3, Down, 99), (4, Alive, 9)], &set(&[])),
            None,
            "the spare has not caught up"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (3, Down, 99), (4, Suspect, 9)], &ready),
            None,
            "the spare is not alive"
        );
        assert_eq!(
            run(&[(2, Alive, 9), (3, Down, 99)], &ready),
            None,
            "gossip has not seen the spare"
        );
        // The leader never judges itself.
        assert_eq!(
            plan_replacement(
                1,
                &v,
                &l,
                &ready,
                &seen(&[(1, Down, 99), (2, Alive, 9), (3, Alive, 9), (4, Alive, 9)]),
                3,
                GRACE
            ),
            None
        );
    }

    #[test]
    fn no_change_is_made_without_a_majority_of_alive_voters() {
        // 3 voters, 2 dead: the leader alone is no majority.
        let facts = seen(&[(2, Down, 99), (3, Down, 99), (4, Alive, 9)]);
        assert_eq!(
            plan_replacement(
                1,
                &set(&[1, 2, 3]),
                &set(&[4]),
                &set(&[4]),
                &facts,
                3,
                GRACE
            ),
            None
        );
        // 4 voters above a target of 3, 2 of them dead: 2 of 4 is no majority either.
        let facts = seen(&[(2, Alive, 9), (3, Down, 99), (4, Down, 99)]);
        assert_eq!(
            plan_replacement(
                1,
                &set(&[1, 2, 3, 4]),
                &set(&[]),
                &set(&[]),
                &facts,
                3,
                GRACE
            ),
            None
        );
        // 5 voters, 2 dead: 3 of 5 alive; a spare joins (4 of 6), then the dead go one by
        // one, the one down longest first.
        let facts = seen(&[
            (2, Alive, 9),
            (3, Alive, 9),
            (4, Down, 40),
            (5, Down, 90),
            (6, Alive, 9),
        ]);
        let plan = |voters: &[NodeId], learners: &[NodeId]| {
            plan_replacement(
                1,
                &set(voters),
                &set(learners),
                &set(&[6]),
                &facts,
                5,
                GRACE,
            )
        };
        assert_eq!(
            plan(&[1, 2, 3, 4, 5], &[6]),
            Some(Step::AddVoter {
                node: 6,
                replaces: 5
            })
        );
        assert_eq!(
            plan(&[1, 2, 3, 4, 5, 6], &[]),
            Some(Step::RemoveVoter { node: 5 })
        );
        // 4 alive of the 5 that remain: the second dead voter is below target with no
        // spare left, so it stays until one joins.
        assert_eq!(plan(&[1, 2, 3, 4, 6], &[]), None);
    }
}
