//! Locks: one holder, waiters served in log order.

use raft::command::{LockCmd, LockResult, LockWait};
use raft::State;

use super::Queueing;

/// Locks: one holder, waiters served in log order.
pub struct Locks;

impl Queueing for Locks {
    type Cmd = LockCmd;
    type Result = LockResult;

    fn queued(result: &LockResult) -> bool {
        matches!(result, LockResult::Queued { .. })
    }

    fn look(state: &State, name: &str, waiter_id: &str) -> Option<Option<LockResult>> {
        let Some(l) = state.lock(name) else {
            return Some(None);
        };
        if let Some(h) = l.holder.as_ref() {
            if h.waiter_id.as_deref() == Some(waiter_id) {
                return Some(Some(LockResult::Granted {
                    fence: h.fence,
                    ttl_ms: h.ttl_ms,
                }));
            }
        }
        (!l.waiters.iter().any(|w| w.id == waiter_id)).then_some(None)
    }

    fn cancel(name: &str, waiter_id: &str) -> LockCmd {
        LockCmd::CancelWait {
            name: name.to_string(),
            waiter_id: waiter_id.to_string(),
        }
    }
}

/// The wait part of a lock acquire, `None` without a wait.
pub fn wait(waiter_id: &str, wait_ms: u64) -> Option<LockWait> {
    (wait_ms > 0).then(|| LockWait {
        waiter_id: waiter_id.to_string(),
        wait_ms,
    })
}
