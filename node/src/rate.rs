//! Request rates, per node: token buckets (governor's GCRA) per token and per client IP, for
//! failed authentication per IP, and for WebSocket connections per IP and messages per
//! connection. Past a bucket the answer is 429 `rate_limited` with `Retry-After`. The buckets
//! are this node's own: a client that spreads its requests over N nodes gets N times the rate.
//! Settings in `[rate]` (0 turns a limit off).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::config::RateConfig;
use crate::error::ApiError;

/// Most keys (tokens or addresses) a bucket table holds before the idle ones are dropped.
const KEYS_BEFORE_SWEEP: usize = 10_000;

/// A table of buckets by key, or no limit.
struct Buckets<K: std::hash::Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    checks: AtomicU64,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new(quota: Option<Quota>) -> Self {
        Buckets {
            limiter: quota.map(DefaultKeyedRateLimiter::keyed),
            checks: AtomicU64::new(0),
        }
    }

    /// `Ok`, or how long until the key's bucket has room again.
    /// The limiter, if the bucket has one, after a sweep now and then: buckets that refilled
    /// are dropped, so the table stays bounded by the keys active in the last moments.
    fn limiter(&self) -> Option<&DefaultKeyedRateLimiter<K>> {
        let l = self.limiter.as_ref()?;
        if self.checks.fetch_add(1, Ordering::Relaxed) & 1023 == 0 && l.len() > KEYS_BEFORE_SWEEP {
            l.retain_recent();
        }
        Some(l)
    }

    fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(l) = self.limiter() else {
            return Ok(());
        };
        l.check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Whether `n` cells at once are allowed; when not (also when `n` is over the burst), none
    /// is charged.
    fn check_n(&self, key: &K, n: NonZeroU32) -> bool {
        self.limiter()
            .is_none_or(|l| matches!(l.check_key_n(key, n), Ok(Ok(()))))
    }
}

fn per_second(n: u64) -> Option<Quota> {
    NonZeroU32::new(n.min(u32::MAX as u64) as u32).map(Quota::per_second)
}

fn per_minute(n: u64) -> Option<Quota> {
    NonZeroU32::new(n.min(u32::MAX as u64) as u32).map(Quota::per_minute)
}

/// The node's buckets.
pub struct RateLimits {
    token_reads: Buckets<String>,
    token_writes: Buckets<String>,
    ip_requests: Buckets<IpAddr>,
    auth_failures: Buckets<IpAddr>,
    ws_connections: Buckets<IpAddr>,
    ws_messages_per_sec: u64,
}

impl RateLimits {
    pub fn new(c: &RateConfig) -> Self {
        RateLimits {
            token_reads: Buckets::new(per_second(c.token_reads_per_sec)),
            token_writes: Buckets::new(per_second(c.token_writes_per_sec)),
            ip_requests: Buckets::new(per_second(c.ip_requests_per_sec)),
            auth_failures: Buckets::new(per_minute(c.auth_failures_per_min)),
            ws_connections: Buckets::new(per_second(c.ws_connections_per_sec)),
            ws_messages_per_sec: c.ws_messages_per_sec,
        }
    }

    /// Every request from `ip`.
    pub fn request(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.ip_requests
            .check(&ip)
            .map_err(|w| limited(w, "requests from this address"))
    }

    /// A request made with the token `accessor_id`: reads (GET, HEAD) and writes counted apart.
    pub fn token(&self, accessor_id: &str, write: bool) -> Result<(), ApiError> {
        let (b, what) = self.token_bucket(write);
        b.check(&accessor_id.to_string())
            .map_err(|w| limited(w, what))
    }

    /// `n` requests at once made with the token `accessor_id` (a batch of pipelined commands):
    /// whether all are allowed; when not (also when `n` is over the bucket's burst), none is
    /// charged.
    pub fn token_n(&self, accessor_id: &str, write: bool, n: u32) -> bool {
        NonZeroU32::new(n).is_none_or(|n| {
            self.token_bucket(write)
                .0
                .check_n(&accessor_id.to_string(), n)
        })
    }

    /// The bucket of a token's reads or writes, and what it counts.
    fn token_bucket(&self, write: bool) -> (&Buckets<String>, &'static str) {
        if write {
            (&self.token_writes, "writes with this token")
        } else {
            (&self.token_reads, "reads with this token")
        }
    }

    /// A failed authentication from `ip`: `Err` once there were too many.
    pub fn auth_failed(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.auth_failures
            .check(&ip)
            .map_err(|w| limited(w, "failed authentications from this address"))
    }

    /// A WebSocket connection opened from `ip`.
    pub fn ws_connection(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.ws_connections
            .check(&ip)
            .map_err(|w| limited(w, "WebSocket connections from this address"))
    }

    /// A bucket for one WebSocket connection's messages, or none without a limit.
    pub fn ws_messages(&self) -> Option<DefaultDirectRateLimiter> {
        per_second(self.ws_messages_per_sec).map(DefaultDirectRateLimiter::direct)
    }
}

/// Checks one message against a connection's bucket.
pub fn ws_message(bucket: &Option<DefaultDirectRateLimiter>) -> Result<(), ApiError> {
    match bucket {
        None => Ok(()),
        Some(b) => b.check().map_err(|n| {
            limited(
                n.wait_time_from(DefaultClock::default().now()),
                "messages on this connection",
            )
        }),
    }
}

/// 429 with `retry_after_ms`; the HTTP answer adds `Retry-After` (whole seconds, at least 1).
fn limited(wait: Duration, what: &str) -> ApiError {
    let ms = wait.as_millis().max(1) as u64;
    ApiError::limited(format!("too many {what} on this node: retry in {ms} ms"))
        .with("retry_after_ms", ms)
}
