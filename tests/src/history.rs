//! A recorded history of client operations against the KV API.
//!
//! Every operation gets a unique id, an invoke time and, once answered, a completion time
//! (nanoseconds on one monotonic clock, from the start of the run) and an outcome. Writes
//! whose outcome is unknown (504, timeout, connection error after sending) stay open for ever:
//! they may take effect at any time after their invoke, or never.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "f")]
pub enum Kind {
    /// `GET /v1/kv/{key}` (linearizable).
    Read,
    /// `PUT /v1/kv/{key}` with a value unique in the history.
    Write { value: u64 },
    /// `PUT /v1/kv/{key}?if_revision=expect` (0: only if absent).
    Cas { expect: u64, value: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Outcome {
    /// A read's answer: the value and its revision, or absent (404).
    Read { value: Option<(u64, u64)> },
    /// 200 to a write: the revision it got.
    Written { revision: u64 },
    /// 409 to a compare-and-set: the key's revision then (0 when absent).
    Conflict { current: u64 },
    /// Certainly not applied (503, connection refused) or a read that failed: no effect.
    Fail { reason: String },
    /// A write that may or may not have been applied (504, timeout, connection lost).
    Unknown { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Unique in the history.
    pub id: u64,
    pub client: usize,
    /// Index of the node the request was sent to.
    pub node: usize,
    pub key: String,
    pub kind: Kind,
    pub invoke_ns: u64,
    /// `None` while pending, and for ever when the outcome is unknown.
    pub complete_ns: Option<u64>,
    pub outcome: Option<Outcome>,
}

impl Op {
    pub fn is_ok(&self) -> bool {
        matches!(
            self.outcome,
            Some(Outcome::Read { .. } | Outcome::Written { .. } | Outcome::Conflict { .. })
        )
    }
}

/// Collects operations from concurrent clients.
pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            next_id: AtomicU64::new(1),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the start of the run on the monotonic clock.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A fresh id, also usable as a value unique in the history.
    pub fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records the invocation; returns the op's index for [`Recorder::complete`].
    pub fn invoke(&self, id: u64, client: usize, node: usize, key: &str, kind: Kind) -> usize {
        let mut ops = self.ops.lock().expect("history lock");
        ops.push(Op {
            id,
            client,
            node,
            key: key.to_string(),
            kind,
            invoke_ns: self.now_ns(),
            complete_ns: None,
            outcome: None,
        });
        ops.len() - 1
    }

    pub fn complete(&self, index: usize, outcome: Outcome) {
        let now = self.now_ns();
        let mut ops = self.ops.lock().expect("history lock");
        let op = &mut ops[index];
        if !matches!(outcome, Outcome::Unknown { .. }) {
            op.complete_ns = Some(now);
        }
        op.outcome = Some(outcome);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history lock").clone()
    }
}
