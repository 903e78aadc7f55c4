//! Fence monotonicity for one lock name: "fences for a name strictly increase across grants,
//! leader changes and restarts" (API.md), checked over acquire grants that were answered 200;
//! and fencing: a write made with a fence that a later grant had already superseded must be
//! rejected. The lock clients of a fault run record both (`workload::lock_client`).

/// One answered `POST /v1/locks/{name}/acquire`.
#[derive(Debug, Clone)]
pub struct Grant {
    pub id: u64,
    pub owner: String,
    pub fence: u64,
    /// Invoke and completion times, ns on the run's monotonic clock.
    pub call: u64,
    pub ret: u64,
}

/// Problems found: two grants with one fence, or a grant that completed before another was
/// invoked yet has a fence no smaller than it.
pub fn check_fences(grants: &[Grant]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_fence: Vec<&Grant> = grants.iter().collect();
    by_fence.sort_by_key(|g| g.fence);
    for w in by_fence.windows(2) {
        if w[0].fence == w[1].fence {
            problems.push(format!(
                "fence {} granted twice: op {} ({}) and op {} ({})",
                w[0].fence, w[0].id, w[0].owner, w[1].id, w[1].owner
            ));
        }
    }
    // For each grant, the largest fence among grants that completed before its invoke.
    let mut by_ret: Vec<&Grant> = grants.iter().collect();
    by_ret.sort_by_key(|g| g.ret);
    let mut best: Vec<&Grant> = Vec::with_capacity(by_ret.len());
    for g in &by_ret {
        let keep = match best.last() {
            Some(b) if b.fence >= g.fence => *b,
            _ => g,
        };
        best.push(keep);
    }
    for g in grants {
        let before = by_ret.partition_point(|x| x.ret < g.call);
        if before > 0 {
            let b = best[before - 1];
            if b.fence >= g.fence {
                problems.push(format!(
                    "op {} ({}) got fence {} after op {} ({}) had completed with fence {}",
                    g.id, g.owner, g.fence, b.id, b.owner, b.fence
                ));
            }
        }
    }
    problems
}

/// A write with `?fence=LOCK:fence` that was answered 200.
#[derive(Debug, Clone)]
pub struct FencedWrite {
    pub id: u64,
    pub fence: u64,
    pub call: u64,
    pub ret: u64,
}

/// Problems found: an accepted fenced write invoked after a grant with a higher fence had
/// completed (the stale holder's write got through).
pub fn check_fenced_writes(grants: &[Grant], writes: &[FencedWrite]) -> Vec<String> {
    let mut problems = Vec::new();
    for w in writes {
        if let Some(g) = grants.iter().find(|g| g.fence > w.fence && g.ret < w.call) {
            problems.push(format!(
                "op {}: a write with fence {} was accepted after op {} ({}) had been granted fence {}",
                w.id, w.fence, g.id, g.owner, g.fence
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: u64, fence: u64, call: u64, ret: u64) -> Grant {
        Grant {
            id,
            owner: format!("w{id}"),
            fence,
            call,
            ret,
        }
    }

    #[test]
    fn increasing_fences_pass() {
        assert!(check_fences(&[g(1, 1, 0, 10), g(2, 2, 20, 30), g(3, 5, 40, 50)]).is_empty());
    }

    #[test]
    fn concurrent_grants_may_come_in_any_order() {
        assert!(check_fences(&[g(1, 2, 0, 10), g(2, 1, 5, 30)]).is_empty());
    }

    #[test]
    fn a_smaller_fence_after_a_completed_grant_fails() {
        let p = check_fences(&[g(1, 7, 0, 10), g(2, 3, 20, 30), g(3, 9, 40, 50)]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("op 2"), "{p:?}");
    }

    #[test]
    fn a_stale_fenced_write_that_got_through_fails() {
        let grants = [g(1, 1, 0, 10), g(2, 2, 20, 30)];
        let ok = FencedWrite {
            id: 3,
            fence: 1,
            call: 12,
            ret: 25,
        };
        assert!(check_fenced_writes(&grants, &[ok]).is_empty());
        let stale = FencedWrite {
            id: 4,
            fence: 1,
            call: 40,
            ret: 45,
        };
        let p = check_fenced_writes(&grants, &[stale]);
        assert!(p.len() == 1 && p[0].contains("op 4"), "{p:?}");
    }

    #[test]
    fn a_repeated_fence_fails() {
        let p = check_fences(&[g(1, 4, 0, 10), g(2, 4, 5, 30)]);
        assert!(p.iter().any(|x| x.contains("granted twice")), "{p:?}");
    }
}
