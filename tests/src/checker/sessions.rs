//! Sessions, the cache and TTLs under faults.
//!
//! - Sessions: a field of a session's data, merged by `PATCH` and read by linearizable `GET`s
//!   through any node, is a register: each read returns the last acknowledged merge (or one
//!   whose answer was lost), checked with the linearizability search of [`super::check`].
//! - Cache: the cache is read from each node's own memory, and a write or an invalidation is
//!   answered once the receiving node has applied it. So a read through a node, sent after an
//!   invalidation of a tag answered by that same node, never returns an entry of that tag
//!   whose write was answered before the invalidation was sent.
//! - TTLs: a key written with a TTL expires on the replicated clock, which the leader stamps
//!   at the pace of real time; so a read never finds it gone before the TTL has passed since
//!   the write was sent (a wall clock that jumps must not end it early).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{check, Entry, Model, Verdict};

/// One session operation: a merge of a unique value into the checked field, or a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    Write(u64),
    /// What the read found (`None`: the field is absent).
    Read(Option<u64>),
}

/// A recorded session operation (`ret: None`: a merge whose outcome is unknown). Failed
/// operations (certainly not applied, or reads without an answer) are not recorded.
#[derive(Debug, Clone)]
pub struct SessionOp {
    pub session: usize,
    pub op: FieldOp,
    pub call: u64,
    pub ret: Option<u64>,
}

/// A register without revisions: the field's value.
struct Field;

impl Model for Field {
    type State = Option<u64>;
    type Op = FieldOp;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(&self, s: &Option<u64>, op: &FieldOp) -> Option<Option<u64>> {
        match op {
            FieldOp::Write(v) => Some(Some(*v)),
            FieldOp::Read(r) => (r == s).then_some(*s),
        }
    }
}

/// Checks each session's history; answers the operations checked and one line per session
/// whose history has no linearization (or whose check ran out of `budget`).
pub fn check_sessions(ops: &[SessionOp], budget: Duration) -> (usize, Vec<String>) {
    let mut by_session: BTreeMap<usize, Vec<Entry<FieldOp>>> = BTreeMap::new();
    for o in ops {
        by_session.entry(o.session).or_default().push(Entry {
            op: o.op,
            call: o.call,
            ret: o.ret,
        });
    }
    let deadline = Instant::now() + budget;
    let mut problems = Vec::new();
    for (session, entries) in &by_session {
        match check(&Field, entries, deadline) {
            Verdict::Linearizable => {}
            Verdict::Violation { stuck, .. } => problems.push(format!(
                "session {session}: no order of its {} operations explains what was read; first unplaced: {:?}",
                entries.len(),
                stuck.iter().map(|&i| &entries[i]).collect::<Vec<_>>()
            )),
            Verdict::Timeout => problems.push(format!(
                "session {session}: the check of its {} operations ran out of time",
                entries.len()
            )),
        }
    }
    (ops.len(), problems)
}

/// A cache write answered by `node`: a unique value with one tag.
#[derive(Debug, Clone)]
pub struct CacheWrite {
    pub node: usize,
    pub value: u64,
    pub tag: String,
    pub ret: u64,
}

/// An invalidation of `tag` answered by `node` in its life `life` (a node replaced by a fresh
/// one at its address starts a new life: the fresh node's state is not the old one's).
#[derive(Debug, Clone)]
pub struct CacheInvalidation {
    pub node: usize,
    pub life: u64,
    pub tag: String,
    pub call: u64,
    pub ret: u64,
}

/// A cache hit read through `node` in its life `life`.
#[derive(Debug, Clone)]
pub struct CacheHit {
    pub node: usize,
    pub life: u64,
    pub value: u64,
    pub call: u64,
}

/// Each hit is checked against the invalidations answered by the same node (in the same life)
/// before the read was sent: none of them may have been sent after the hit's write was
/// answered.
pub fn check_cache(
    writes: &[CacheWrite],
    invalidations: &[CacheInvalidation],
    hits: &[CacheHit],
) -> Vec<String> {
    let by_value: BTreeMap<u64, &CacheWrite> = writes.iter().map(|w| (w.value, w)).collect();
    let mut answered_by: BTreeMap<(usize, u64, &str), Vec<&CacheInvalidation>> = BTreeMap::new();
    for i in invalidations {
        answered_by
            .entry((i.node, i.life, &i.tag))
            .or_default()
            .push(i);
    }
    let mut problems = Vec::new();
    for h in hits {
        let Some(w) = by_value.get(&h.value) else {
            // A write whose answer was lost: when it applied is unknown.
            continue;
        };
        let Some(answered) = answered_by.get(&(h.node, h.life, w.tag.as_str())) else {
            continue;
        };
        if let Some(i) = answered.iter().find(|i| i.call > w.ret && i.ret < h.call) {
            problems.push(format!(
                "node {} (life {}) served value {} of tag {} in a read sent at {:.3} s, after it \
                 answered at {:.3} s an invalidation of that tag sent {:.1} ms after the write \
                 was answered",
                h.node + 1,
                h.life,
                h.value,
                w.tag,
                h.call as f64 / 1e9,
                i.ret as f64 / 1e9,
                (i.call - w.ret) as f64 / 1e6
            ));
        }
    }
    problems
}

/// A key written with [`crate::workload::KEY_TTL`].
#[derive(Debug, Clone)]
pub struct TtlWrite {
    pub key: String,
    pub call: u64,
    pub ret: u64,
}

/// A read, sent after the key's write was answered, that found it gone.
#[derive(Debug, Clone)]
pub struct TtlMiss {
    pub key: String,
    pub call: u64,
    pub ret: u64,
}

/// Each miss must complete no earlier than `ttl_ns` after its key's write was sent.
pub fn check_ttls(writes: &[TtlWrite], misses: &[TtlMiss], ttl_ns: u64) -> Vec<String> {
    let sent: BTreeMap<&str, u64> = writes.iter().map(|w| (w.key.as_str(), w.call)).collect();
    misses
        .iter()
        .filter_map(|m| {
            let call = *sent.get(m.key.as_str())?;
            (m.ret < call + ttl_ns).then(|| {
                format!(
                    "key {} was gone {:.1} s after its write was sent, with a TTL of {:.1} s",
                    m.key,
                    (m.ret - call) as f64 / 1e9,
                    ttl_ns as f64 / 1e9
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: FieldOp, call: u64, ret: Option<u64>) -> SessionOp {
        SessionOp {
            session: 0,
            op,
            call,
            ret,
        }
    }

    #[test]
    fn a_read_of_the_last_merge_passes_and_a_stale_one_is_caught() {
        let ok = [
            op(FieldOp::Write(1), 0, Some(1)),
            op(FieldOp::Write(2), 2, Some(3)),
            op(FieldOp::Read(Some(2)), 4, Some(5)),
        ];
        assert!(check_sessions(&ok, Duration::from_secs(1)).1.is_empty());
        let mut stale = ok.to_vec();
        stale.push(op(FieldOp::Read(Some(1)), 6, Some(7)));
        assert_eq!(check_sessions(&stale, Duration::from_secs(1)).1.len(), 1);
        // A merge of unknown outcome may explain a later read of its value, or never apply.
        let mut unknown = ok.to_vec();
        unknown.push(op(FieldOp::Write(3), 6, None));
        unknown.push(op(FieldOp::Read(Some(2)), 8, Some(9)));
        unknown.push(op(FieldOp::Read(Some(3)), 10, Some(11)));
        assert!(check_sessions(&unknown, Duration::from_secs(1))
            .1
            .is_empty());
    }

    #[test]
    fn a_key_gone_before_its_ttl_is_caught() {
        let w = TtlWrite {
            key: "k".into(),
            call: 100,
            ret: 200,
        };
        let miss = |ret| TtlMiss {
            key: "k".into(),
            call: ret - 10,
            ret,
        };
        assert!(check_ttls(std::slice::from_ref(&w), &[miss(1_100)], 1_000).is_empty());
        assert_eq!(check_ttls(&[w], &[miss(900)], 1_000).len(), 1);
    }

    #[test]
    fn a_hit_after_its_tag_was_invalidated_on_that_node_is_caught() {
        let w = CacheWrite {
            node: 0,
            value: 7,
            tag: "t".into(),
            ret: 10,
        };
        let inv = |node, call, ret| CacheInvalidation {
            node,
            life: 0,
            tag: "t".into(),
            call,
            ret,
        };
        let hit = |node, call| CacheHit {
            node,
            life: 0,
            value: 7,
            call,
        };
        let writes = [w];
        // Invalidated after the write, answered before the read: the hit is a bug.
        assert_eq!(
            check_cache(&writes, &[inv(0, 11, 12)], &[hit(0, 13)]).len(),
            1
        );
        // Another node's invalidation, one concurrent with the write, or with the read: fine.
        assert!(check_cache(&writes, &[inv(1, 11, 12)], &[hit(0, 13)]).is_empty());
        assert!(check_cache(&writes, &[inv(0, 9, 12)], &[hit(0, 13)]).is_empty());
        assert!(check_cache(&writes, &[inv(0, 11, 14)], &[hit(0, 13)]).is_empty());
        // The same address, but a fresh node in place of the one that answered.
        let fresh = CacheHit {
            life: 1,
            ..hit(0, 13)
        };
        assert!(check_cache(&writes, &[inv(0, 11, 12)], &[fresh]).is_empty());
    }
}
