//! A small ring of this node's recent figures, one sample every [`SAMPLE_INTERVAL`] for the
//! last 15 minutes, served as JSON at `GET /v1/node/samples` for the admin UI's charts. It
//! lives in memory only: a restarted node starts a new ring.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::api::AppState;

/// How often a sample is taken.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes.
pub const SAMPLES_KEPT: usize = 180;
/// Request latencies kept per interval for the p99; past it the rest are not counted in it.
const LATENCIES_MAX: usize = 20_000;

/// One sample: rates over the interval before `at_ms`, gauges at `at_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeSample {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// HTTP requests answered per second (WebSocket frames not counted).
    pub requests_per_sec: f64,
    /// Of those, reads (GET of the data routes: keys, locks, queues, channels, cluster…).
    pub reads_per_sec: f64,
    /// Of those, writes (every other method on the `/v1` routes).
    pub writes_per_sec: f64,
    /// Of those, the rest: WebSocket upgrades, the admin UI's files, health, readiness,
    /// metrics, unknown routes.
    pub other_per_sec: f64,
    /// 99th percentile of the HTTP request latencies of the interval, ms; null without
    /// requests.
    pub p99_latency_ms: Option<f64>,
    /// Raft log entries applied per second on this node.
    pub raft_applied_per_sec: f64,
    /// Mean and longest write-ahead log sync (fsync) of the Raft log's appends over the
    /// interval, ms; null without a sync.
    pub fsync_mean_ms: Option<f64>,
    pub fsync_max_ms: Option<f64>,
    /// WebSocket connections open.
    pub ws_connections: u64,
    /// HTTP requests in flight.
    pub inflight_requests: u64,
    /// Resident memory of the process, bytes; null where the platform does not tell.
    pub memory_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeSamples {
    pub node_id: u64,
    /// ms between samples.
    pub interval_ms: u64,
    /// Oldest first; at most 180 (15 minutes).
    pub samples: Vec<NodeSample>,
}

/// The class of a route in the request rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    Read,
    Write,
    Other,
}

impl RouteClass {
    /// The class of a request to `route` (the matched path template) with `method`.
    pub fn of(route: &str, method: &str) -> RouteClass {
        let api = route.starts_with("/v1/")
            && !matches!(route, "/v1/ws" | "/v1/client.js" | "/v1/openapi.json");
        match (api, method) {
            (false, _) => RouteClass::Other,
            (true, "GET" | "HEAD") => RouteClass::Read,
            (true, _) => RouteClass::Write,
        }
    }
}

/// What requests add between samples, and the ring.
#[derive(Default)]
pub struct Samples {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    ring: Mutex<VecDeque<NodeSample>>,
}

impl Samples {
    /// Counts one answered request.
    pub fn observe(&self, class: RouteClass, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match class {
            RouteClass::Read => self.reads.fetch_add(1, Ordering::Relaxed),
            RouteClass::Write => self.writes.fetch_add(1, Ordering::Relaxed),
            RouteClass::Other => 0,
        };
        let mut l = self.latencies_us.lock().expect("no panic holds it");
        if l.len() < LATENCIES_MAX {
            l.push(elapsed.as_micros().min(u32::MAX as u128) as u32);
        }
    }

    pub fn list(&self) -> Vec<NodeSample> {
        self.ring
            .lock()
            .expect("no panic holds it")
            .iter()
            .cloned()
            .collect()
    }

    fn push(&self, s: NodeSample) {
        let mut ring = self.ring.lock().expect("no panic holds it");
        if ring.len() == SAMPLES_KEPT {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// Takes a sample every [`SAMPLE_INTERVAL`] until `shutdown`.
    pub async fn run(st: Arc<AppState>, shutdown: CancellationToken) {
        let samples = &st.metrics.samples;
        let mut last = Instant::now();
        let mut last_applied = st.cluster.raft_view().applied_index;
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let secs = last.elapsed().as_secs_f64().max(0.001);
            last = Instant::now();
            let requests = samples.requests.swap(0, Ordering::Relaxed);
            let reads = samples.reads.swap(0, Ordering::Relaxed);
            let writes = samples.writes.swap(0, Ordering::Relaxed);
            let syncs = st.db.sync_times().take();
            let per_sec = |n: u64| n as f64 / secs;
            let mut lat =
                std::mem::take(&mut *samples.latencies_us.lock().expect("no panic holds it"));
            let applied = st.cluster.raft_view().applied_index;
            let config = st.cluster.config();
            samples.push(NodeSample {
                at_ms: crate::cluster::now_ms(),
                requests_per_sec: per_sec(requests),
                reads_per_sec: per_sec(reads),
                writes_per_sec: per_sec(writes),
                other_per_sec: per_sec(requests.saturating_sub(reads + writes)),
                p99_latency_ms: p99(&mut lat).map(|us| us as f64 / 1000.0),
                raft_applied_per_sec: applied.saturating_sub(last_applied) as f64 / secs,
                fsync_mean_ms: (syncs.count > 0)
                    .then(|| syncs.total_us as f64 / syncs.count as f64 / 1000.0),
                fsync_max_ms: (syncs.count > 0).then(|| syncs.max_us as f64 / 1000.0),
                ws_connections: (config.ws.max_connections - st.hub.connections.available_permits())
                    as u64,
                inflight_requests: (config.api.max_inflight_requests
                    - st.inflight.available_permits()) as u64,
                memory_rss_bytes: rss_bytes(),
            });
            last_applied = applied;
        }
    }
}

/// The 99th percentile (nearest rank) of `v`, or None when empty.
fn p99(v: &mut [u32]) -> Option<u32> {
    if v.is_empty() {
        return None;
    }
    let rank = (v.len() * 99).div_ceil(100).max(1) - 1;
    Some(*v.select_nth_unstable(rank).1)
}

/// Resident set size from `/proc/self/statm` (Linux; pages of 4 KiB).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(p99(&mut v), Some(99));
        assert_eq!(p99(&mut [7]), Some(7));
        assert_eq!(p99(&mut []), None);
    }

    #[test]
    fn routes_are_classed_as_reads_writes_or_other() {
        assert_eq!(RouteClass::of("/v1/kv/{key}", "GET"), RouteClass::Read);
        assert_eq!(RouteClass::of("/v1/kv/{key}", "PUT"), RouteClass::Write);
        assert_eq!(
            RouteClass::of("/v1/queues/{name}/claim", "POST"),
            RouteClass::Write
        );
        assert_eq!(RouteClass::of("/v1/ws", "GET"), RouteClass::Other);
        assert_eq!(RouteClass::of("/ui/{file}", "GET"), RouteClass::Other);
        assert_eq!(RouteClass::of("unmatched", "POST"), RouteClass::Other);
    }

    #[test]
    fn the_ring_keeps_the_last_15_minutes() {
        let s = Samples::default();
        for i in 0..(SAMPLES_KEPT as u64 + 5) {
            s.push(NodeSample {
                at_ms: i,
                requests_per_sec: 0.0,
                reads_per_sec: 0.0,
                writes_per_sec: 0.0,
                other_per_sec: 0.0,
                p99_latency_ms: None,
                raft_applied_per_sec: 0.0,
                fsync_mean_ms: None,
                fsync_max_ms: None,
                ws_connections: 0,
                inflight_requests: 0,
                memory_rss_bytes: None,
            });
        }
        let l = s.list();
        assert_eq!(l.len(), SAMPLES_KEPT);
        assert_eq!(l[0].at_ms, 5);
    }
}
