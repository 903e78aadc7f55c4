//! The leader's clock: what it stamps proposals with, so time enters the log.
//!
//! A term's first stamp takes the later of this node's wall clock and the replicated clock;
//! every later stamp of the term adds the monotonic time since then. A wall clock that jumps
//! (NTP stepping it, an operator setting it) during the term changes nothing: leases and TTLs
//! keep following the replicated clock at the pace of real time. Stamped by wall clock, a jump
//! forward on the leader would end every lease at once, and a jump back would stop the
//! replicated clock (`now = max(now, stamp)`) until the wall clock caught up again.

use std::sync::Mutex;
use std::time::Instant;

/// The base of the current term's stamps.
#[derive(Debug, Default)]
pub(crate) struct LeaderClock(Mutex<Option<Base>>);

#[derive(Debug, Clone, Copy)]
struct Base {
    term: u64,
    at_ms: u64,
    at: Instant,
}

impl LeaderClock {
    /// The stamp for a proposal of `term`: `wall_ms` and `replicated_ms` are read only when
    /// the term changes (the first stamp of a term sets the base).
    pub(crate) fn stamp(
        &self,
        term: u64,
        wall_ms: impl FnOnce() -> u64,
        replicated_ms: impl FnOnce() -> u64,
    ) -> u64 {
        let mut base = self.0.lock().expect("leader clock lock");
        let b = match *base {
            Some(b) if b.term == term => b,
            _ => {
                let b = Base {
                    term,
                    at_ms: wall_ms().max(replicated_ms()),
                    at: Instant::now(),
                };
                *base = Some(b);
                b
            }
        };
        b.at_ms + b.at.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_follows_its_first_stamp_at_the_pace_of_real_time_whatever_the_wall_clock() {
        let clock = LeaderClock::default();
        let first = clock.stamp(3, || 1_000_000, || 5);
        assert!((1_000_000..1_000_050).contains(&first));
        // The wall clock jumped an hour ahead (or back): the term's stamps do not.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = clock.stamp(3, || 1_000_000 + 3_600_000, || 5);
        assert!(
            (first + 20..first + 100).contains(&later),
            "{first} → {later}"
        );
        // A new term takes the later of the wall clock and the replicated clock.
        assert!(clock.stamp(4, || 10, || 2_000_000) >= 2_000_000);
        assert!(clock.stamp(5, || 3_000_000, || 2_000_000) >= 3_000_000);
    }
}
