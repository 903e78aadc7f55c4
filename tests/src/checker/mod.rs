//! History checkers.
//!
//! # Layout
//! - this module: the [`Model`] trait and a Wing–Gong linearizability search in the style of
//!   Porcupine (linked list of call and return events, backtracking, a cache of
//!   (linearized set, state) pairs), with a time budget. [`brute_force`] is the slow reference
//!   it is tested against.
//! - [`kv`]: the KV register model (read, write, compare-and-set on one key) and the check of a
//!   whole recorded history, split by key.
//! - [`convergence`]: every node holds the same KV state after healing.
//! - [`locks`]: fence monotonicity for a lock workload (synthetic histories until the lock API
//!   exists).
//! - [`sessions`]: a session field as a register (linearizable through any node), and the
//!   cache's tag invalidation as seen through the node that answered it.
//! - [`queues`]: the job queue's promises (no acknowledged enqueue lost, no phantom job,
//!   redeliveries explained by leases, no ack on a stale lease).
//!
//! A lock workload adds a `Model` for one lock name (acquire, renew, release with fences) next
//! to [`kv::Register`] and splits its history by name, exactly as [`kv::check_history`] does.

pub mod convergence;
pub mod kv;
pub mod locks;
pub mod queues;
pub mod sessions;

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification: what one operation does to the state, if it can happen there.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Op: Debug;
    fn init(&self) -> Self::State;
    /// The state after `op` (with its observed result) when it is legal in `state`.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation of a history: when it was invoked and, if its outcome is known, when it
/// returned. An operation with an unknown outcome (`ret: None`) may take effect at any time
/// after its call, or never.
#[derive(Debug, Clone)]
pub struct Entry<O> {
    pub op: O,
    pub call: u64,
    pub ret: Option<u64>,
}

/// The answer of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `longest` is the longest legal prefix the search found (indexes into
    /// the entries, in linearization order); `stuck` the definite operations it could not
    /// place after it.
    Violation {
        longest: Vec<usize>,
        stuck: Vec<usize>,
    },
    /// The time budget ran out: counts as a failure.
    Timeout,
}

/// Searches for a linearization of `entries` under `model` until `deadline`.
pub fn check<M: Model>(model: &M, entries: &[Entry<M::Op>], deadline: Instant) -> Verdict {
    let n = entries.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events: node 0 is the head, 2n + 1 the tail; call of op i and its return in between.
    // Unknown outcomes return "at infinity", after every definite return.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in entries.iter().enumerate() {
        events.push((e.call, false, i));
        events.push((e.ret.unwrap_or(u64::MAX), true, i));
    }
    // Calls before returns at equal times: such operations count as concurrent.
    events.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    let head = 0;
    let tail = 2 * n + 1;
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|i| i.wrapping_sub(1)).collect();
    next[tail] = usize::MAX;
    let mut node_op = vec![usize::MAX; tail + 1];
    let mut node_is_ret = vec![false; tail + 1];
    let mut ret_node = vec![0; n];
    let mut call_node = vec![0; n];
    for (k, &(_, is_ret, i)) in events.iter().enumerate() {
        let node = k + 1;
        node_op[node] = i;
        node_is_ret[node] = is_ret;
        if is_ret {
            ret_node[i] = node;
        } else {
            call_node[i] = node;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, c: usize, r: usize| {
        for x in [c, r] {
            let (p, q) = (prev[x], next[x]);
            next[p] = q;
            prev[q] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, c: usize, r: usize| {
        for x in [r, c] {
            let (p, q) = (prev[x], next[x]);
            next[p] = x;
            prev[q] = x;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state = model.init();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut entry = next[head];
    let mut steps: u64 = 0;
    loop {
        steps += 1;
        if steps.is_multiple_of(4096) && Instant::now() > deadline {
            return Verdict::Timeout;
        }
        if entry == tail {
            return Verdict::Linearizable;
        }
        let i = node_op[entry];
        if !node_is_ret[entry] {
            if let Some(s) = model.step(&state, &entries[i].op) {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin.clone(), s.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, s)));
                    linearized = lin;
                    lift(&mut next, &mut prev, entry, ret_node[i]);
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(c, _)| node_op[c]).collect();
                    }
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // Every entry before this one is a call. If this return is at infinity, every
            // definite operation is linearized; the remaining unknown ones never took effect.
            if entries[i].ret.is_none() {
                return Verdict::Linearizable;
            }
            let Some((c, s)) = stack.pop() else {
                let placed: HashSet<usize> = longest.iter().copied().collect();
                let mut stuck: Vec<usize> = (0..n)
                    .filter(|j| !placed.contains(j) && entries[*j].ret.is_some())
                    .collect();
                stuck.sort_by_key(|&j| entries[j].ret);
                stuck.truncate(5);
                return Verdict::Violation { longest, stuck };
            };
            let j = node_op[c];
            state = s;
            linearized[j / 64] &= !(1 << (j % 64));
            unlift(&mut next, &mut prev, c, ret_node[j]);
            entry = next[c];
        }
    }
}

/// Tries every order (exponential): the reference for [`check`] on small histories.
pub fn brute_force<M: Model>(model: &M, entries: &[Entry<M::Op>]) -> bool {
    fn go<M: Model>(
        model: &M,
        entries: &[Entry<M::Op>],
        placed: &mut Vec<bool>,
        state: &M::State,
    ) -> bool {
        let remaining_definite = entries
            .iter()
            .enumerate()
            .any(|(i, e)| !placed[i] && e.ret.is_some());
        if !remaining_definite {
            return true;
        }
        for x in 0..entries.len() {
            if placed[x] {
                continue;
            }
            // x may go next unless a definite unplaced operation returned before x was called.
            let blocked = entries
                .iter()
                .enumerate()
                .any(|(y, e)| !placed[y] && y != x && e.ret.is_some_and(|r| r < entries[x].call));
            if blocked {
                continue;
            }
            if let Some(s) = model.step(state, &entries[x].op) {
                placed[x] = true;
                let ok = go(model, entries, placed, &s);
                placed[x] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    go(
        model,
        entries,
        &mut vec![false; entries.len()],
        &model.init(),
    )
}
