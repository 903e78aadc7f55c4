//! The history checker, and fault-injection runs checked by it (see `tests::harness`).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::checker::kv::{check_history, RegOp, Register};
use tests::checker::{brute_force, check, Entry, Verdict};
use tests::harness::{self, Fault, RunConfig};
use tests::history::{Kind, Op, Outcome};

/// A small history on one key: operations with random overlapping intervals, answered by a
/// real register in the order of random points inside those intervals; some writes have an
/// unknown outcome (applied or not), and some answers are then corrupted.
fn random_history(rng: &mut StdRng) -> Vec<Op> {
    let n = rng.random_range(1..=7);
    let mut ops = Vec::new();
    for i in 0..n {
        let call = rng.random_range(0..30u64);
        let ret = call + rng.random_range(0..12u64);
        let point = rng.random_range(call..=ret);
        let dice: f64 = rng.random();
        let kind = if dice < 0.4 {
            Kind::Read
        } else if dice < 0.75 {
            Kind::Write { value: i + 1 }
        } else {
            Kind::Cas {
                expect: 0,
                value: i + 1,
            }
        };
        ops.push((
            point,
            Op {
                id: i + 1,
                client: i as usize,
                node: 0,
                key: "k".into(),
                kind,
                invoke_ns: call,
                complete_ns: Some(ret),
                outcome: None,
            },
        ));
    }
    ops.sort_by_key(|(p, _)| *p);
    let mut state: Option<(u64, u64)> = None;
    let mut revision = 0;
    for (_, op) in ops.iter_mut() {
        let unknown = !matches!(op.kind, Kind::Read) && rng.random_bool(0.3);
        if let Kind::Cas { value, .. } = op.kind {
            let current = state.map(|(_, r)| r).unwrap_or(0);
            let expect = match rng.random_range(0..3) {
                0 => current,
                1 => 0,
                _ => current.saturating_sub(1),
            };
            op.kind = Kind::Cas { expect, value };
        }
        if unknown && rng.random_bool(0.5) {
            // Never applied.
            op.outcome = Some(Outcome::Unknown {
                reason: "test".into(),
            });
            op.complete_ns = None;
            continue;
        }
        let outcome = match op.kind {
            Kind::Read => Outcome::Read { value: state },
            Kind::Write { value } => {
                revision += rng.random_range(1..=3);
                state = Some((value, revision));
                Outcome::Written { revision }
            }
            Kind::Cas { expect, value } => {
                let current = state.map(|(_, r)| r).unwrap_or(0);
                if current == expect {
                    revision += rng.random_range(1..=3);
                    state = Some((value, revision));
                    Outcome::Written { revision }
                } else {
                    Outcome::Conflict { current }
                }
            }
        };
        if unknown {
            op.outcome = Some(Outcome::Unknown {
                reason: "test".into(),
            });
            op.complete_ns = None;
        } else {
            op.outcome = Some(outcome);
        }
    }
    let mut ops: Vec<Op> = ops.into_iter().map(|(_, o)| o).collect();
    if rng.random_bool(0.4) {
        let i = rng.random_range(0..ops.len());
        let bump = rng.random_range(1..=3);
        ops[i].outcome = match ops[i].outcome.take() {
            Some(Outcome::Read {
                value: Some((v, r)),
            }) => Some(match rng.random_range(0..3) {
                0 => Outcome::Read { value: None },
                1 => Outcome::Read {
                    value: Some((v % n + 1, r)),
                },
                _ => Outcome::Read {
                    value: Some((v, r + bump)),
                },
            }),
            Some(Outcome::Read { value: None }) => Some(Outcome::Read {
                value: Some((rng.random_range(1..=n), rng.random_range(1..=6))),
            }),
            Some(Outcome::Written { revision }) => Some(Outcome::Written {
                revision: revision.saturating_sub(bump),
            }),
            Some(Outcome::Conflict { current }) => Some(Outcome::Conflict {
                current: current + bump,
            }),
            other => other,
        };
    }
    ops
}

fn entries(ops: &[Op]) -> Vec<Entry<RegOp>> {
    ops.iter()
        .map(|o| Entry {
            op: RegOp {
                kind: o.kind,
                outcome: o.outcome.clone().unwrap(),
            },
            call: o.invoke_ns,
            ret: o.complete_ns,
        })
        .collect()
}

fn consistent_revisions(ops: &[Op]) -> bool {
    let mut pairs = std::collections::BTreeSet::new();
    for o in ops {
        match (&o.kind, &o.outcome) {
            (_, Some(Outcome::Read { value: Some(p) })) => {
                pairs.insert(*p);
            }
            (
                Kind::Write { value } | Kind::Cas { value, .. },
                Some(Outcome::Written { revision }),
            ) => {
                pairs.insert((*value, *revision));
            }
            _ => {}
        }
    }
    let values: std::collections::BTreeSet<u64> = pairs.iter().map(|p| p.0).collect();
    let revisions: std::collections::BTreeSet<u64> = pairs.iter().map(|p| p.1).collect();
    values.len() == pairs.len() && revisions.len() == pairs.len()
}

#[test]
fn checker_agrees_with_brute_force_on_small_random_histories() {
    let mut rng = StdRng::seed_from_u64(20261122);
    let (mut yes, mut no) = (0, 0);
    for round in 0..5000 {
        let ops = random_history(&mut rng);
        let e = entries(&ops);
        let expected = brute_force(&Register, &e);
        let far = Instant::now() + Duration::from_secs(10);
        let got = check(&Register, &e, far);
        assert_eq!(
            got == Verdict::Linearizable,
            expected,
            "round {round}: search says {got:?}, brute force {expected}\n{ops:#?}"
        );
        // The whole-history check agrees too, except that it also rejects histories where
        // one value has two revisions or one revision two values (which the register model
        // alone need not notice), and leaves out unknown writes nobody observed.
        let report = check_history(&ops, Duration::from_secs(10));
        if consistent_revisions(&ops) {
            assert_eq!(report.ok(), expected, "round {round}: {report:?}\n{ops:#?}");
        } else {
            assert!(!report.ok(), "round {round}: {report:?}\n{ops:#?}");
        }
        if expected {
            yes += 1
        } else {
            no += 1
        }
    }
    // Both verdicts are exercised.
    assert!(yes > 1000 && no > 1000, "{yes} linearizable, {no} not");
}

fn op(id: u64, kind: Kind, call: u64, ret: Option<u64>, outcome: Outcome) -> Op {
    Op {
        id,
        client: id as usize,
        node: 0,
        key: "k".into(),
        kind,
        invoke_ns: call,
        complete_ns: ret,
        outcome: Some(outcome),
    }
}

#[test]
fn a_stale_read_is_reported_with_a_readable_counterexample() {
    let ops = vec![
        op(
            1,
            Kind::Write { value: 1 },
            0,
            Some(10),
            Outcome::Written { revision: 1 },
        ),
        op(
            2,
            Kind::Write { value: 2 },
            20,
            Some(30),
            Outcome::Written { revision: 2 },
        ),
        op(
            3,
            Kind::Read,
            40,
            Some(50),
            Outcome::Read {
                value: Some((1, 1)),
            },
        ),
    ];
    let report = check_history(&ops, Duration::from_secs(5));
    assert_eq!(report.violations.len(), 1);
    let text = &report.violations[0].1;
    assert!(text.contains("read => 1 (revision 1)"), "{text}");
    assert!(text.contains("Longest legal order found (2 of 3"), "{text}");
}

#[test]
fn an_unknown_write_may_take_effect_late_or_never() {
    let w = |id, ret, outcome| op(id, Kind::Write { value: id }, 0, ret, outcome);
    let read = |id, call, v| {
        op(
            id,
            Kind::Read,
            call,
            Some(call + 5),
            Outcome::Read { value: v },
        )
    };
    let unknown = Outcome::Unknown {
        reason: "504".into(),
    };
    // Late: seen long after the client gave up on it.
    let late = vec![
        w(1, None, unknown.clone()),
        read(2, 100, None),
        read(3, 200, Some((1, 4))),
    ];
    assert!(check_history(&late, Duration::from_secs(5)).ok());
    // Never: nobody sees it.
    let never = vec![w(1, None, unknown.clone()), read(2, 100, None)];
    assert!(check_history(&never, Duration::from_secs(5)).ok());
    // But once seen it cannot be undone.
    let undone = vec![
        w(1, None, unknown),
        read(2, 100, Some((1, 4))),
        read(3, 200, None),
    ];
    assert!(!check_history(&undone, Duration::from_secs(5)).ok());
}

fn input_rules() -> String {
    let out = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn partitions_remove_their_rules_and_those_of_dead_runs() {
    // A rule as a run that died without cleaning up would leave it (no such pid).
    let stale = "stackd-nemesis-4000000-1";
    let add = |args: &[&str]| {
        let ok = std::process::Command::new("iptables")
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "iptables {args:?}");
    };
    add(&[
        "-I",
        "INPUT",
        "-s",
        "127.0.0.251",
        "-d",
        "127.0.0.252",
        "-p",
        "udp",
        "-m",
        "comment",
        "--comment",
        stale,
        "-j",
        "DROP",
    ]);
    let tag;
    {
        let p = tests::nemesis::Partitions::new().unwrap();
        tag = p.tag().to_string();
        assert!(!input_rules().contains(stale), "stale rule removed");
        p.split(&[
            vec!["127.0.0.251".into()],
            vec!["127.0.0.252".into(), "127.0.0.253".into()],
        ])
        .unwrap();
        assert_eq!(input_rules().matches(tag.as_str()).count(), 4);
        assert_eq!(p.heal().unwrap(), 4);
        p.cut(&[("127.0.0.251".into(), "127.0.0.252".into())])
            .unwrap();
        assert!(input_rules().contains(tag.as_str()));
    }
    assert!(
        !input_rules().contains(tag.as_str()),
        "rules removed on drop"
    );
}

fn assert_passed(report: &harness::RunReport) {
    println!("{}", report.summary());
    assert!(report.passed(), "{}", report.summary());
}

/// The short run of the test suite: 3 nodes, every fault once (leader isolated, minority
/// partition, bridge, kill -9 and restart, pause, kill -9 of every node), under a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_run_keeps_the_kv_linearizable_and_the_nodes_converge() {
    let report = harness::run(RunConfig::short()).await.unwrap();
    assert_passed(&report);
}

/// The checkers' own test: nodes that serve "linearizable" reads from local state without
/// ReadIndex (`STACKD_UNSAFE_STALE_READS=1`) must be caught once the leader is isolated (it
/// keeps answering reads with values the majority has since overwritten), by the key-value
/// checker and by the session checker alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_run_catches_stale_reads_of_a_deliberately_unsafe_build() {
    let cfg = RunConfig {
        faults: vec![Fault::IsolateLeader],
        first_ip: 21,
        hold: Duration::from_secs(5),
        keys: 4,
        unsafe_stale_reads: true,
        ..RunConfig::short()
    };
    let report = harness::run(cfg).await.unwrap();
    println!("{}", report.summary());
    // The run is meaningful when the leader really was cut off and replaced; the final reads
    // of the validity check may themselves be stale on this build, so they are not required.
    assert!(
        report.faults.iter().any(|f| f.effective) && report.warmup_rate >= 20.0,
        "{}",
        report.summary()
    );
    let check = report.check.as_ref().expect("the history was checked");
    assert!(
        !check.violations.is_empty(),
        "stale reads went unnoticed:\n{}",
        report.summary()
    );
    assert!(
        report.session_violations > 0,
        "stale session reads went unnoticed:\n{}",
        report.summary()
    );
    assert!(
        report.artifacts.is_some(),
        "a failed run saves its evidence"
    );
}

/// The queue checker's own test: nodes that drop every fifth job after answering its enqueue
/// (`STACKD_UNSAFE_LOSE_JOBS=5`) must be caught losing acknowledged jobs, while the history of
/// everything else stays clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_run_catches_lost_jobs_of_a_deliberately_unsafe_build() {
    let cfg = RunConfig {
        faults: vec![Fault::Kill],
        first_ip: 71,
        unsafe_lose_jobs: Some(5),
        ..RunConfig::short()
    };
    let report = harness::run(cfg).await.unwrap();
    println!("{}", report.summary());
    assert!(report.valid(), "{}", report.summary());
    assert!(report.linearizable(), "{}", report.summary());
    let lost = report
        .problems
        .iter()
        .filter(|p| p.contains("acknowledged as enqueued and never delivered"))
        .count();
    let enqueued = report
        .queue
        .as_ref()
        .expect("the queue was checked")
        .enqueued;
    assert!(
        lost > 0 && lost * 5 <= enqueued + 5,
        "{lost} lost jobs of {enqueued}:\n{}",
        report.summary()
    );
    assert_eq!(
        lost,
        report.problems.len(),
        "only lost jobs are reported:\n{}",
        report.summary()
    );
}

/// The long run, one command (see README "Fault injection"):
/// `STACKD_FAULTS_SECS=1800 STACKD_FAULTS_NODES=5 cargo test --workspace -- --ignored long_fault_run --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run on demand with the STACKD_FAULTS_* knobs"]
async fn long_fault_run() {
    let base = RunConfig {
        nodes: 5,
        duration: Duration::from_secs(1800),
        check_budget: Duration::from_secs(600),
        ..RunConfig::short()
    };
    let report = harness::run(base.from_env().unwrap()).await.unwrap();
    assert_passed(&report);
}
