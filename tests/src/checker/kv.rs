//! The KV register: one key's reads, writes and compare-and-sets, checked for
//! linearizability; a whole history is split by key.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::{check, Entry, Model, Verdict};
use crate::history::{Kind, Op, Outcome};

/// One key. The state is absent or (value, revision); the revision of a write whose outcome
/// was unknown is known only to be above the one before it, until a read or a conflict
/// reveals it.
pub struct Register;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rev {
    Known(u64),
    /// At least this much.
    AtLeast(u64),
}

pub type RegState = Option<(u64, Rev)>;

/// An operation with its observed result (never `Fail`: those had no effect and are dropped).
#[derive(Debug, Clone)]
pub struct RegOp {
    pub kind: Kind,
    pub outcome: Outcome,
}

/// Whether the state's revision can be `n` (0: absent).
fn matches(s: &RegState, n: u64) -> bool {
    match s {
        None => n == 0,
        Some((_, Rev::Known(r))) => n == *r,
        Some((_, Rev::AtLeast(lo))) => n != 0 && n >= *lo,
    }
}

/// Whether a write after state `s` can get `revision` (revisions of a key only grow).
fn grows(s: &RegState, revision: u64) -> bool {
    match s {
        None => revision > 0,
        Some((_, Rev::Known(r))) => revision > *r,
        Some((_, Rev::AtLeast(lo))) => revision > *lo,
    }
}

/// The smallest revision a write after state `s` can get.
fn next_min(s: &RegState) -> u64 {
    match s {
        None => 1,
        Some((_, Rev::Known(r) | Rev::AtLeast(r))) => r + 1,
    }
}

impl Model for Register {
    type State = RegState;
    type Op = RegOp;

    fn init(&self) -> RegState {
        None
    }

    fn step(&self, s: &RegState, op: &RegOp) -> Option<RegState> {
        match (&op.kind, &op.outcome) {
            (Kind::Read, Outcome::Read { value: None }) => s.is_none().then_some(None),
            (
                Kind::Read,
                Outcome::Read {
                    value: Some((v, r)),
                },
            ) => match s {
                Some((sv, _)) if sv == v && matches(s, *r) => Some(Some((*v, Rev::Known(*r)))),
                _ => None,
            },
            (Kind::Write { value }, Outcome::Written { revision }) => {
                grows(s, *revision).then_some(Some((*value, Rev::Known(*revision))))
            }
            (Kind::Write { value }, Outcome::Unknown { .. }) => {
                Some(Some((*value, Rev::AtLeast(next_min(s)))))
            }
            (Kind::Cas { expect, value }, Outcome::Written { revision }) => (matches(s, *expect)
                && *revision > *expect)
                .then_some(Some((*value, Rev::Known(*revision)))),
            (Kind::Cas { expect, .. }, Outcome::Conflict { current }) => {
                if current == expect || !matches(s, *current) {
                    return None;
                }
                Some(s.map(|(v, _)| (v, Rev::Known(*current))))
            }
            // Linearized, an unknown compare-and-set applied; left out, it failed or never ran.
            (Kind::Cas { expect, value }, Outcome::Unknown { .. }) => {
                matches(s, *expect).then_some(Some((*value, Rev::AtLeast(expect + 1))))
            }
            _ => None,
        }
    }
}

/// Each value is written once, so it has one revision, and a revision belongs to one value.
/// A history where reads and writes disagree on that (a write applied twice, a revision
/// reused) is reported before any search.
fn same_value_same_revision(ops: &[&Op]) -> Option<String> {
    let mut rev_of: std::collections::HashMap<u64, (u64, u64)> = Default::default();
    let mut value_of: std::collections::HashMap<u64, (u64, u64)> = Default::default();
    for o in ops {
        let (v, r) = match (&o.kind, &o.outcome) {
            (
                _,
                Some(Outcome::Read {
                    value: Some((v, r)),
                }),
            ) => (*v, *r),
            (
                Kind::Write { value } | Kind::Cas { value, .. },
                Some(Outcome::Written { revision }),
            ) => (*value, *revision),
            _ => continue,
        };
        if let Some((r2, by)) = rev_of.insert(v, (r, o.id)).filter(|(r2, _)| *r2 != r) {
            return Some(format!(
                "value {v} is reported at revision {r} by op {} and at revision {r2} by op {by}",
                o.id
            ));
        }
        if let Some((v2, by)) = value_of.insert(r, (v, o.id)).filter(|(v2, _)| *v2 != v) {
            return Some(format!(
                "revision {r} is reported for value {v} by op {} and for value {v2} by op {by}",
                o.id
            ));
        }
    }
    None
}

/// The result of checking a whole history.
#[derive(Debug)]
pub struct Report {
    pub keys: usize,
    /// Operations that entered the check (definite results and unknown writes).
    pub ops_checked: usize,
    pub unknown: usize,
    /// Keys whose history is not linearizable, with a readable counterexample each.
    pub violations: Vec<(String, String)>,
    /// Keys whose check ran out of time (a failure too).
    pub timeouts: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.timeouts.is_empty()
    }
}

/// Checks every key's sub-history; `budget` is the time allowed for all of them together.
pub fn check_history(ops: &[Op], budget: Duration) -> Report {
    let deadline = Instant::now() + budget;
    let clock = RevisionClock::new(ops);
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        let keep = match &op.outcome {
            Some(Outcome::Fail { .. }) | None => false,
            // A read with no answer changes nothing.
            Some(Outcome::Unknown { .. }) => !matches!(op.kind, Kind::Read),
            Some(_) => true,
        };
        if keep {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    let mut report = Report {
        keys: by_key.len(),
        ops_checked: 0,
        unknown: 0,
        violations: Vec::new(),
        timeouts: Vec::new(),
    };
    for (key, ops) in by_key {
        if let Some(problem) = same_value_same_revision(&ops) {
            report.ops_checked += ops.len();
            report.violations.push((
                key.to_string(),
                format!("key {key:?}: {problem}\n{}", listing(&ops)),
            ));
            continue;
        }
        let ops = prune_unobserved(ops, &clock);
        let entries: Vec<Entry<RegOp>> = ops
            .iter()
            .map(|o| Entry {
                op: RegOp {
                    kind: o.kind,
                    outcome: o.outcome.clone().expect("kept ops have an outcome"),
                },
                call: o.invoke_ns,
                ret: o.complete_ns,
            })
            .collect();
        report.ops_checked += entries.len();
        report.unknown += entries.iter().filter(|e| e.ret.is_none()).count();
        match check(&Register, &entries, deadline) {
            Verdict::Linearizable => {}
            Verdict::Timeout => report.timeouts.push(key.to_string()),
            Verdict::Violation { longest, stuck } => {
                report
                    .violations
                    .push((key.to_string(), explain(key, &ops, &longest, &stuck)));
            }
        }
    }
    report
}

/// The largest revision any operation had reported by a given time, over the whole history
/// (revisions are global: a write invoked after an answer carrying revision R gets more than R).
struct RevisionClock {
    /// (completion time, largest revision reported up to then), by time.
    steps: Vec<(u64, u64)>,
}

impl RevisionClock {
    fn new(ops: &[Op]) -> Self {
        let mut seen: Vec<(u64, u64)> = ops
            .iter()
            .filter_map(|o| {
                let r = match &o.outcome {
                    Some(Outcome::Written { revision }) => *revision,
                    Some(Outcome::Read {
                        value: Some((_, r)),
                    }) => *r,
                    Some(Outcome::Conflict { current }) => *current,
                    _ => return None,
                };
                Some((o.complete_ns?, r))
            })
            .collect();
        seen.sort();
        let mut max = 0;
        for s in seen.iter_mut() {
            max = max.max(s.1);
            s.1 = max;
        }
        Self { steps: seen }
    }

    /// The largest revision reported by an operation completed before `t`.
    fn before(&self, t: u64) -> u64 {
        match self.steps.partition_point(|(at, _)| *at < t) {
            0 => 0,
            i => self.steps[i - 1].1,
        }
    }
}

/// Leaves out writes of unknown outcome that nothing observed, which keeps the search from
/// doubling its work for each of them.
///
/// Values are unique and (checked first) each value has one revision and each revision one
/// value. An operation that observed the state an applied unknown write `u` produced either
/// read its value, or reported or compared against its revision `r`. If `r` belongs to a
/// definite write or to a value some read returned, it is not `u`'s; so it is a revision
/// nobody explains, and `u` can have produced it only if `u` was invoked before the observer
/// completed and after no answer had yet carried a revision of `r` or more. Every unknown
/// write that is neither read nor such a candidate is unobserved, and removing it from a
/// linearization of the real history leaves a linearization: the verdict does not change.
fn prune_unobserved<'a>(ops: Vec<&'a Op>, clock: &RevisionClock) -> Vec<&'a Op> {
    let mut read_values = std::collections::HashSet::new();
    // Revision -> the operations that explain it.
    let mut explained: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    // (revision, the operation that reported or compared it, when that one completed)
    let mut compared = Vec::new();
    for o in &ops {
        let done = o.complete_ns.unwrap_or(u64::MAX);
        match (&o.kind, &o.outcome) {
            (
                _,
                Some(Outcome::Read {
                    value: Some((v, r)),
                }),
            ) => {
                read_values.insert(*v);
                explained.entry(*r).or_default().push(o.id);
            }
            (_, Some(Outcome::Written { revision })) => {
                explained.entry(*revision).or_default().push(o.id);
            }
            (_, Some(Outcome::Conflict { current })) => compared.push((*current, o.id, done)),
            _ => {}
        }
        if let Kind::Cas { expect, .. } = o.kind {
            compared.push((expect, o.id, done));
        }
    }
    let unexplained: Vec<(u64, u64)> = compared
        .into_iter()
        .filter(|(r, id, _)| {
            *r != 0
                && !explained
                    .get(r)
                    .is_some_and(|by| by.iter().any(|x| x != id))
        })
        .map(|(r, _, done)| (r, done))
        .collect();
    ops.into_iter()
        .filter(|o| match (&o.kind, &o.outcome) {
            (Kind::Write { value } | Kind::Cas { value, .. }, Some(Outcome::Unknown { .. })) => {
                read_values.contains(value)
                    || unexplained
                        .iter()
                        .any(|&(r, done)| o.invoke_ns <= done && clock.before(o.invoke_ns) < r)
            }
            _ => true,
        })
        .collect()
}

fn describe(o: &Op) -> String {
    let what = match o.kind {
        Kind::Read => "read".to_string(),
        Kind::Write { value } => format!("write {value}"),
        Kind::Cas { expect, value } => format!("cas if_revision={expect} -> {value}"),
    };
    let result = match &o.outcome {
        Some(Outcome::Read {
            value: Some((v, r)),
        }) => format!("=> {v} (revision {r})"),
        Some(Outcome::Read { value: None }) => "=> absent".into(),
        Some(Outcome::Written { revision }) => format!("=> ok, revision {revision}"),
        Some(Outcome::Conflict { current }) => format!("=> conflict, current revision {current}"),
        Some(Outcome::Unknown { reason }) => format!("=> unknown ({reason})"),
        Some(Outcome::Fail { reason }) => format!("=> failed ({reason})"),
        None => "=> pending".into(),
    };
    let end = o
        .complete_ns
        .map(|t| format!("{:>10.3}", t as f64 / 1e6))
        .unwrap_or_else(|| "         -".into());
    format!(
        "{:>10.3} {end} ms  op {:>6} client {:>2} node {}  {what} {result}",
        o.invoke_ns as f64 / 1e6,
        o.id,
        o.client,
        o.node + 1
    )
}

/// A readable counterexample: the key's operations in invoke order, the longest order the
/// search could justify, and the operations it could not place after it.
fn explain(key: &str, ops: &[&Op], longest: &[usize], stuck: &[usize]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "key {key:?}: no linearization exists.");
    let _ = writeln!(
        s,
        "Longest legal order found ({} of {} operations):",
        longest.len(),
        ops.len()
    );
    for &i in longest {
        let _ = writeln!(s, "  {}", describe(ops[i]));
    }
    let _ = writeln!(s, "None of these can come next:");
    for &i in stuck {
        let _ = writeln!(s, "  {}", describe(ops[i]));
    }
    s.push_str(&listing(ops));
    s
}

/// Every operation of a key in invoke order.
fn listing(ops: &[&Op]) -> String {
    let mut s = String::from(
        "All operations on the key (invoke, complete, id, client, node, op, result):\n",
    );
    let mut sorted: Vec<&&Op> = ops.iter().collect();
    sorted.sort_by_key(|o| o.invoke_ns);
    for o in sorted {
        let _ = writeln!(s, "  {}", describe(o));
    }
    s
}
