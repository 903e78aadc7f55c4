//! What the gateway knows of each instance it sends requests to, and how a route picks one.
//!
//! The figures are this node's own (requests in flight, latency, failures): every node
//! balances by what it sees, as Envoy and Linkerd do, with nothing replicated.
//!
//! - Peak EWMA: an exponentially weighted moving average of response times that jumps up to
//!   any slower response at once and decays back with a time constant of [`DECAY`]; its cost
//!   is that estimate times (requests in flight + 1). Two instances are drawn at random and
//!   the cheaper one serves (power of two choices), so a slow instance gets few requests
//!   without a herd on the fastest one.
//! - Outlier ejection: [`EJECT_AFTER_FAILURES`] failures in a row (connect errors, timeouts,
//!   5xx answers) take an instance out of rotation for 1 s, doubling with each ejection up to
//!   [`EJECTION_MAX`]; a success after the ejection ends starts the count over.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use raft::state::Strategy;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Time constant of the latency estimate's decay.
pub const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an instance nothing was measured on yet.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// Failures in a row that eject an instance.
pub const EJECT_AFTER_FAILURES: u32 = 5;
/// First ejection; each next one doubles, up to [`EJECTION_MAX`].
pub const EJECTION_BASE: Duration = Duration::from_secs(1);
pub const EJECTION_MAX: Duration = Duration::from_secs(30);

/// One instance as this node's gateway sees it.
#[derive(Debug)]
pub struct Upstream {
    /// `service/id`: the metric label and the hash key.
    pub key: String,
    /// `host:port` requests go to.
    pub authority: String,
    pub weight: u32,
    pub outstanding: AtomicU64,
    failures: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    /// Latency estimate in nanoseconds, and when it was last updated.
    ewma_ns: f64,
    stamp: Instant,
    measured: bool,
    ejected_until: Option<Instant>,
    ejections: u32,
}

impl Upstream {
    pub fn new(key: String, authority: String, weight: u32) -> Upstream {
        Upstream {
            key,
            authority,
            weight,
            outstanding: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            health: Mutex::new(Health {
                ewma_ns: 0.0,
                stamp: Instant::now(),
                measured: false,
                ejected_until: None,
                ejections: 0,
            }),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ejected(&self, now: Instant) -> bool {
        self.health().ejected_until.is_some_and(|t| t > now)
    }

    /// The peak-EWMA cost: the decayed latency estimate times (in flight + 1).
    pub fn cost(&self, now: Instant) -> f64 {
        let h = self.health();
        let estimate = if h.measured {
            let elapsed = now.saturating_duration_since(h.stamp).as_secs_f64();
            h.ewma_ns * (-elapsed / DECAY.as_secs_f64()).exp()
        } else {
            DEFAULT_RTT.as_nanos() as f64
        };
        let in_flight = self.outstanding.load(Ordering::Relaxed) as f64;
        estimate.max(1.0) * (in_flight + 1.0)
    }

    /// Counts a response (its headers arrived after `rtt`); `failed` for a 5xx.
    pub fn observe(&self, rtt: Duration, failed: bool, now: Instant) -> bool {
        {
            let mut h = self.health();
            let rtt_ns = rtt.as_nanos() as f64;
            if !h.measured || rtt_ns > h.ewma_ns {
                h.ewma_ns = rtt_ns;
            } else {
                let elapsed = now.saturating_duration_since(h.stamp).as_secs_f64();
                let w = (-elapsed / DECAY.as_secs_f64()).exp();
                h.ewma_ns = h.ewma_ns * w + rtt_ns * (1.0 - w);
            }
            h.measured = true;
            h.stamp = now;
        }
        if failed {
            self.fail(now)
        } else {
            self.succeed(now);
            false
        }
    }

    /// Counts a failure; answers whether it ejected the instance.
    pub fn fail(&self, now: Instant) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < EJECT_AFTER_FAILURES {
            return false;
        }
        let mut h = self.health();
        if h.ejected_until.is_some_and(|t| t > now) {
            return false;
        }
        h.ejections = h.ejections.saturating_add(1);
        let backoff = EJECTION_BASE
            .saturating_mul(1 << (h.ejections - 1).min(16))
            .min(EJECTION_MAX);
        h.ejected_until = Some(now + backoff);
        self.failures.store(0, Ordering::Relaxed);
        true
    }

    fn succeed(&self, now: Instant) {
        self.failures.store(0, Ordering::Relaxed);
        let mut h = self.health();
        if h.ejected_until.is_some_and(|t| t <= now) {
            h.ejected_until = None;
            h.ejections = 0;
        }
    }
}

/// A route's choice among its instances; the round-robin position is the route's own.
#[derive(Debug, Default)]
pub struct Picker {
    next: AtomicUsize,
}

impl Picker {
    /// Picks one of `candidates` (not empty) by `strategy`; `hash_key` is the sticky value of
    /// a hash route (none: the request carries no such header or cookie).
    pub fn pick<'a>(
        &self,
        strategy: Strategy,
        candidates: &[&'a std::sync::Arc<Upstream>],
        hash_key: Option<&str>,
        now: Instant,
    ) -> &'a std::sync::Arc<Upstream> {
        let n = candidates.len();
        match strategy {
            _ if n == 1 => candidates[0],
            Strategy::RoundRobin => candidates[self.next.fetch_add(1, Ordering::Relaxed) % n],
            Strategy::Weighted => {
                let total: u64 = candidates.iter().map(|u| u64::from(u.weight)).sum();
                let mut at = rand::random_range(0..total.max(1));
                for u in candidates {
                    let w = u64::from(u.weight);
                    if at < w {
                        return u;
                    }
                    at -= w;
                }
                candidates[n - 1]
            }
            Strategy::LeastRequest => {
                // Ties go round robin, so equal instances share the load.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| candidates[(start + i) % n])
                    .min_by_key(|u| u.outstanding.load(Ordering::Relaxed))
                    .expect("not empty")
            }
            Strategy::Hash => match hash_key {
                Some(k) => candidates
                    .iter()
                    .copied()
                    .max_by_key(|u| rendezvous(k.as_bytes(), u.key.as_bytes()))
                    .expect("not empty"),
                None => p2c(candidates, now),
            },
            Strategy::PeakEwma => p2c(candidates, now),
        }
    }
}

/// Power of two choices on peak-EWMA cost.
fn p2c<'a>(
    candidates: &[&'a std::sync::Arc<Upstream>],
    now: Instant,
) -> &'a std::sync::Arc<Upstream> {
    let n = candidates.len();
    let a = rand::random_range(0..n);
    let mut b = rand::random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    let (a, b) = (candidates[a], candidates[b]);
    if b.cost(now) < a.cost(now) {
        b
    } else {
        a
    }
}

/// The rendezvous (highest random weight) score of `member` for `key`: each key goes to the
/// member with the highest score, so removing a member moves only its own keys. Sticky routes
/// (key: the header or cookie value, member: the instance) and the choice of the node that runs
/// a health check (`crate::checks::owner`) both use it.
pub fn rendezvous(key: &[u8], member: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(key);
    h.update([0]);
    h.update(member);
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ups(n: usize) -> Vec<Arc<Upstream>> {
        (0..n)
            .map(|i| Arc::new(Upstream::new(format!("web/{i}"), format!("h:{i}"), 1)))
            .collect()
    }

    #[test]
    fn peak_ewma_avoids_a_slow_instance() {
        let u = ups(3);
        let now = Instant::now();
        u[0].observe(Duration::from_millis(50), false, now);
        u[1].observe(Duration::from_millis(1), false, now);
        u[2].observe(Duration::from_millis(1), false, now);
        let c: Vec<&Arc<Upstream>> = u.iter().collect();
        let p = Picker::default();
        let slow = (0..1000)
            .filter(|_| p.pick(Strategy::PeakEwma, &c, None, now).key == "web/0")
            .count();
        assert_eq!(
            slow, 0,
            "a 50 ms instance never beats two 1 ms ones when idle"
        );
    }

    #[test]
    fn failures_in_a_row_eject_with_growing_backoff() {
        let u = ups(1).pop().unwrap();
        let t0 = Instant::now();
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            assert!(!u.fail(t0));
        }
        assert!(u.fail(t0));
        assert!(u.ejected(t0 + Duration::from_millis(999)));
        assert!(!u.ejected(t0 + EJECTION_BASE));
        let t1 = t0 + EJECTION_BASE;
        for _ in 0..EJECT_AFTER_FAILURES {
            u.fail(t1);
        }
        // The second ejection lasts twice as long.
        assert!(u.ejected(t1 + Duration::from_millis(1_999)));
        assert!(!u.ejected(t1 + 2 * EJECTION_BASE));
        // A success after it ends starts over.
        u.observe(Duration::from_millis(1), false, t1 + 2 * EJECTION_BASE);
        assert!(!u.ejected(t1 + 2 * EJECTION_BASE));
    }

    #[test]
    fn hashing_is_sticky_and_moves_only_the_keys_of_a_removed_instance() {
        let u = ups(3);
        let now = Instant::now();
        let p = Picker::default();
        let all: Vec<&Arc<Upstream>> = u.iter().collect();
        let two: Vec<&Arc<Upstream>> = u.iter().take(2).collect();
        for user in 0..200 {
            let k = format!("user-{user}");
            let first = p.pick(Strategy::Hash, &all, Some(&k), now).key.clone();
            assert_eq!(p.pick(Strategy::Hash, &all, Some(&k), now).key, first);
            let after = &p.pick(Strategy::Hash, &two, Some(&k), now).key;
            if first != "web/2" {
                assert_eq!(*after, first);
            }
        }
    }
}
