//! Semaphores: permits under leases, waiters served first come, first served.

use raft::command::{SemaphoreCmd, SemaphoreResult, SemaphoreWait};
use raft::State;

use super::Queueing;

/// Semaphores: permits under leases, waiters served first come, first served.
pub struct Semaphores;

impl Queueing for Semaphores {
    type Cmd = SemaphoreCmd;
    type Result = SemaphoreResult;

    fn queued(result: &SemaphoreResult) -> bool {
        matches!(result, SemaphoreResult::Queued { .. })
    }

    fn look(state: &State, name: &str, waiter_id: &str) -> Option<Option<SemaphoreResult>> {
        let Some(s) = state.semaphore(name) else {
            return Some(None);
        };
        let granted = s
            .holders
            .iter()
            .find(|(_, l)| l.waiter_id.as_deref() == Some(waiter_id));
        if let Some((fence, l)) = granted {
            return Some(Some(SemaphoreResult::Granted {
                fence: *fence,
                permits: l.permits,
                ttl_ms: l.ttl_ms,
            }));
        }
        (!s.waiters.iter().any(|w| w.id == waiter_id)).then_some(None)
    }

    fn cancel(name: &str, waiter_id: &str) -> SemaphoreCmd {
        SemaphoreCmd::CancelWait {
            name: name.to_string(),
            waiter_id: waiter_id.to_string(),
        }
    }
}

/// The wait part of a semaphore acquire, `None` without a wait.
pub fn wait(waiter_id: &str, wait_ms: u64) -> Option<SemaphoreWait> {
    (wait_ms > 0).then(|| SemaphoreWait {
        waiter_id: waiter_id.to_string(),
        wait_ms,
    })
}
