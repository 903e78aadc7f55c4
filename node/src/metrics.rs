//! Prometheus metrics, exported at `/metrics`.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use transport::Liveness;

use crate::cluster::Cluster;

/// The `method` label of a request: a standard method by name, any other as `other`.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// Every metric of the node, in one table: its field, its type, and how it is made (name,
/// help, labels). Each is registered as it is made.
macro_rules! metrics {
    ($($(#[$doc:meta])* $vis:vis $field:ident: $ty:ty = $make:ident($($arg:expr),* $(,)?);)*) => {
        pub struct Metrics {
            registry: Registry,
            /// The recent figures of `GET /v1/node/samples`.
            pub samples: crate::samples::Samples,
            $($(#[$doc])* $vis $field: $ty,)*
        }

        impl Metrics {
            pub fn new() -> Self {
                let registry = Registry::new();
                Self {
                    $($field: register(&registry, $make($($arg),*)),)*
                    registry,
                    samples: Default::default(),
                }
            }
        }
    };
}

metrics! {
    requests: IntCounterVec = counter_vec(
        "stackd_http_requests_total",
        "HTTP requests by route, method and status",
        &["route", "method", "status"],
    );
    latency: HistogramVec = histogram_vec(
        "stackd_http_request_duration_seconds",
        "HTTP request latency by route and method",
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        &["route", "method"],
    );
    /// API connections closed by a bound, by reason (`header_timeout`, `write_timeout`).
    pub http_connections_closed: IntCounterVec = counter_vec(
        "stackd_http_connections_closed_total",
        "API connections this node closed because a client was too slow, by reason \
         (header_timeout: no complete request head within api.header_read_timeout_ms; \
         write_timeout: a write blocked for api.write_timeout_ms)",
        &["reason"],
    );
    /// Requests the gateway answered, by route, instance (`service/id`, or `none` when no
    /// instance was reached) and status class (`2xx` … `5xx`).
    pub gateway_requests: IntCounterVec = counter_vec(
        "stackd_gateway_requests_total",
        "Gateway requests by route, instance and status class",
        &["route", "instance", "class"],
    );
    /// Time until the instance's response headers, by route and instance.
    pub gateway_latency: HistogramVec = histogram_vec(
        "stackd_gateway_request_duration_seconds",
        "Gateway latency until the instance's response headers, by route and instance",
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        &["route", "instance"],
    );
    /// Failed attempts to an instance by kind: `connect`, `timeout`, `5xx`.
    pub gateway_errors: IntCounterVec = counter_vec(
        "stackd_gateway_upstream_errors_total",
        "Gateway attempts that failed, by route, instance and kind (connect, timeout, 5xx)",
        &["route", "instance", "kind"],
    );
    /// Instances taken out of rotation by outlier detection.
    pub gateway_ejections: IntCounterVec = counter_vec(
        "stackd_gateway_ejections_total",
        "Instances ejected by the gateway's outlier detection",
        &["instance"],
    );
    /// Health checks this node ran (the http and tcp checks it owns), by result.
    pub health_checks: IntCounterVec = counter_vec(
        "stackd_health_checks_total",
        "Health checks this node ran, by result (passed, failed)",
        &["result"],
    );
    /// New WebSockets and long-poll claims sent to a less loaded member.
    pub clients_moved: IntCounter = counter(
        "stackd_clients_moved_total",
        "New WebSocket connections and long-poll claims sent to a less loaded member",
    );
    term: IntGauge = gauge("stackd_raft_term", "Current Raft term");
    leader_id: IntGauge = gauge("stackd_raft_leader_id", "Id of the known leader, 0 when none");
    is_leader: IntGauge = gauge("stackd_raft_is_leader", "1 when this node is the leader");
    last_log_index: IntGauge =
        gauge("stackd_raft_last_log_index", "Index of the last entry in the local log");
    commit_index: IntGauge = gauge("stackd_raft_commit_index", "Highest index known committed");
    applied_index: IntGauge =
        gauge("stackd_raft_applied_index", "Highest index applied to the state machine");
    kv_revision: IntGauge = gauge("stackd_kv_revision", "Current global key-value revision");
    kv_keys: IntGauge = gauge("stackd_kv_keys", "Number of keys held");
    data_bytes: IntGauge = gauge(
        "stackd_data_bytes",
        "Bytes of key-value keys and values held, as the storage quota counts them",
    );
    quota_bytes: IntGauge = gauge(
        "stackd_quota_bytes",
        "The storage quota in force (limits.quota_bytes), 0 when none",
    );
    alarm: IntGaugeVec = gauge_vec(
        "stackd_alarm",
        "1 while the cluster's alarm is raised (NOSPACE: the storage quota is reached)",
        &["alarm"],
    );
    sessions: IntGauge = gauge("stackd_sessions", "Live sessions");
    cache_entries: IntGauge = gauge("stackd_cache_entries", "Entries in the cache");
    cache_bytes: IntGauge = gauge("stackd_cache_bytes", "Bytes of keys and values in the cache");
    cache_evictions: IntGauge = gauge(
        "stackd_cache_evictions",
        "Entries evicted to stay within the cache bounds, since the cluster began",
    );
    /// Cache reads served by this node (each node serves its own).
    pub cache_hits: IntCounter =
        counter("stackd_cache_hits_total", "Cache reads that hit, on this node");
    pub cache_misses: IntCounter =
        counter("stackd_cache_misses_total", "Cache reads that missed, on this node");
    queue_jobs: IntGaugeVec = gauge_vec(
        "stackd_queue_jobs",
        "Jobs by queue and state (completed: since created)",
        &["queue", "state"],
    );
    // --- gossip and autopilot ---
    gossip_packets: IntCounterVec = counter_vec(
        "stackd_gossip_packets_total",
        "Gossip datagrams by direction (received, sent)",
        &["direction"],
    );
    gossip_dropped: IntCounterVec = counter_vec(
        "stackd_gossip_dropped_packets_total",
        "Gossip datagrams dropped unread, by reason (unauthenticated: the HMAC tag did not verify; malformed; removed: sent by a removed node)",
        &["reason"],
    );
    gossip_members: IntGaugeVec = gauge_vec(
        "stackd_gossip_members",
        "Other nodes by liveness, as this node's gossip sees them",
        &["state"],
    );
    autopilot_actions: IntCounterVec = counter_vec(
        "stackd_autopilot_actions_total",
        "Membership changes made by this node's autopilot while leading, by action",
        &["action"],
    );
    // --- cluster transport and replication ---
    cluster_connects: IntCounterVec = counter_vec(
        "stackd_cluster_connects_total",
        "QUIC handshakes this node started towards a peer, by peer address, node id \
         (empty when any member would do) and result (ok, failed)",
        &["peer_addr", "node", "result"],
    );
    cluster_connections_dropped: IntCounterVec = counter_vec(
        "stackd_cluster_connections_dropped_total",
        "Open cluster connections dropped because the peer sent nothing back during a call",
        &["peer_addr", "node"],
    );
    replication_lag: IntGaugeVec = gauge_vec(
        "stackd_replication_lag_entries",
        "While this node leads: entries of its log each member has not acknowledged \
         (-1: none acknowledged yet)",
        &["node"],
    );
    replication_contact_age: GaugeVec = float_gauge_vec(
        "stackd_replication_contact_age_seconds",
        "While this node leads: seconds since each member last acknowledged a \
         heartbeat or an append (-1: never)",
        &["node"],
    );
    // --- Channels and WebSocket ---
    channels: IntGauge = gauge("stackd_channels", "Channels ever published");
    channel_events: IntGauge = gauge(
        "stackd_channel_events_retained",
        "Channel events held in history, all channels together",
    );
    /// Open WebSocket connections on this node.
    pub ws_connections: IntGauge =
        gauge("stackd_ws_connections", "Open WebSocket connections on this node");
    /// Bytes queued for WebSocket clients on this node, all connections together (each is
    /// bounded by `ws_send_buffer_bytes`).
    pub ws_send_buffer_bytes: IntGauge = gauge(
        "stackd_ws_send_buffer_bytes",
        "Bytes queued for WebSocket clients on this node, all connections together",
    );
    /// WebSocket messages sent by this node (replies, events, key changes).
    pub ws_messages_sent: IntCounter =
        counter("stackd_ws_messages_sent_total", "WebSocket messages sent by this node");
    /// WebSocket connections closed by the server, by reason.
    pub ws_disconnects: IntCounterVec = counter_vec(
        "stackd_ws_disconnects_total",
        "WebSocket connections closed by the server, by reason",
        &["reason"],
    );
    // --- The Redis protocol ---
    /// Open RESP connections on this node.
    pub resp_connections: IntGauge =
        gauge("stackd_resp_connections", "Open RESP (Redis protocol) connections on this node");
    /// RESP connections refused at `resp.max_connections`.
    pub resp_refused: IntCounter = counter(
        "stackd_resp_connections_refused_total",
        "RESP connections refused because resp.max_connections were open",
    );
    /// RESP commands answered, by command (a supported command's name, else `unknown`) and
    /// outcome (`ok`, `error`).
    pub resp_commands: IntCounterVec = counter_vec(
        "stackd_resp_commands_total",
        "RESP commands answered by this node, by command and outcome",
        &["command", "outcome"],
    );
}

fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric name is registered once");
    metric
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram_vec(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric")
}

impl Metrics {
    /// Brings the cluster transport's per-peer counters and, on the leader, the replication
    /// gauges up to date.
    fn refresh_replication(&self, cluster: &Cluster) {
        for (addr, p) in cluster.transport().peer_stats() {
            let addr = addr.to_string();
            let node = p.node.map(|n| n.to_string()).unwrap_or_default();
            let ok = p.connects - p.connect_failures;
            raise_to(&self.cluster_connects, &[&addr, &node, "ok"], ok);
            raise_to(
                &self.cluster_connects,
                &[&addr, &node, "failed"],
                p.connect_failures,
            );
            raise_to(
                &self.cluster_connections_dropped,
                &[&addr, &node],
                p.connections_dropped,
            );
        }
        self.replication_lag.reset();
        self.replication_contact_age.reset();
        // Empty unless this node leads.
        for r in cluster.replication_reach() {
            let node = r.node.to_string();
            self.replication_lag
                .with_label_values(&[&node])
                .set(r.lag.map_or(-1, |l| l as i64));
            self.replication_contact_age
                .with_label_values(&[&node])
                .set(r.acked_ms_ago.map_or(-1.0, |a| a as f64 / 1000.0));
        }
    }

    /// Brings the gossip and autopilot figures up to date (counters only move forward).
    fn refresh_gossip(&self, cluster: &Cluster) {
        let raise = |c: &IntCounterVec, label: &str, to: u64| raise_to(c, &[label], to);
        let s = cluster.gossip().stats();
        raise(&self.gossip_packets, "received", s.packets_received);
        raise(&self.gossip_packets, "sent", s.packets_sent);
        raise(
            &self.gossip_dropped,
            "unauthenticated",
            s.dropped_unauthenticated,
        );
        raise(&self.gossip_dropped, "malformed", s.dropped_malformed);
        raise(&self.gossip_dropped, "removed", s.dropped_removed);
        let view = cluster.gossip().snapshot();
        for l in [Liveness::Alive, Liveness::Suspect, Liveness::Down] {
            let n = view.values().filter(|p| p.liveness == l).count();
            self.gossip_members
                .with_label_values(&[l.as_str()])
                .set(n as i64);
        }
        for a in ["promote", "add_voter", "remove_voter"] {
            raise(&self.autopilot_actions, a, cluster.autopilot_total(a));
        }
    }

    /// Counts and times one request. Every label comes from a fixed set, so a client cannot
    /// make series: the route is a template of the route table (or `unmatched`), the method
    /// one of [`method_label`]'s, the status one the server sends.
    pub fn observe_request(
        &self,
        route: &str,
        method: &str,
        status: axum::http::StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        self.samples
            .observe(crate::samples::RouteClass::of(route, method), elapsed);
        self.requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// Refreshes the Raft and state gauges, then renders everything in the text format.
    pub fn render(&self, cluster: &Cluster) -> String {
        let m = cluster.raft_view();
        self.term.set(m.term as i64);
        self.leader_id.set(m.leader.unwrap_or(0) as i64);
        self.is_leader.set((m.leader == Some(cluster.id)) as i64);
        self.last_log_index.set(m.last_log_index as i64);
        self.commit_index.set(m.commit_index as i64);
        self.applied_index.set(m.applied_index as i64);
        {
            let st = cluster.state();
            self.kv_revision.set(st.meta.revision as i64);
            self.kv_keys.set(st.key_count() as i64);
            self.data_bytes.set(st.data_bytes() as i64);
            self.quota_bytes.set(st.quota_bytes() as i64);
            self.alarm
                .with_label_values(&["NOSPACE"])
                .set(st.nospace() as i64);
            self.sessions.set(st.session_count() as i64);
            let c = st.cache_counts();
            self.cache_entries.set(c.entries as i64);
            self.cache_bytes.set(c.bytes as i64);
            self.cache_evictions.set(c.evictions as i64);
            let (channels, events) = st.channel_counts();
            self.channels.set(channels as i64);
            self.channel_events.set(events as i64);
            self.queue_jobs.reset();
            for q in st.queue_names() {
                if let Some(s) = st.queue_stats(&q) {
                    for (state, n) in [
                        ("ready", s.ready),
                        ("delayed", s.delayed),
                        ("in_flight", s.in_flight),
                        ("dead", s.dead),
                        ("completed", s.completed),
                    ] {
                        self.queue_jobs
                            .with_label_values(&[&q, state])
                            .set(n as i64);
                    }
                }
            }
        }
        self.refresh_gossip(cluster);
        self.refresh_replication(cluster);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// Raises the counter with `labels` to `to`, a total kept elsewhere (counters only move
/// forward).
fn raise_to(c: &IntCounterVec, labels: &[&str], to: u64) {
    let c = c.with_label_values(labels);
    c.inc_by(to.saturating_sub(c.get()));
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_labels_come_from_a_fixed_set() {
        let m = Metrics::new();
        for method in ["GET", "POST", "FOO", "get", "X-RANDOM-1", "X-RANDOM-2"] {
            m.observe_request(
                "unmatched",
                method,
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                Duration::from_millis(1),
            );
        }
        let text = {
            let mut buf = Vec::new();
            TextEncoder::new()
                .encode(&m.registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(text.contains(r#"method="other""#), "{text}");
        for made_up in ["FOO", "get", "X-RANDOM"] {
            let label = format!("method=\"{made_up}");
            assert!(!text.contains(&label), "{made_up} became a label: {text}");
        }
        assert_eq!(method_label("DELETE"), "DELETE");
    }
}
