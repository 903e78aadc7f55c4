//! What gossip is told (seeds and this node's metadata) and how the leader reaches each
//! member.

use super::*;

impl Cluster {
    /// Keeps gossip fed: the Raft members as seeds, the removed nodes (ignored), and this
    /// node's metadata. Runs on every node until `shutdown`.
    pub async fn run_gossip_feed(
        self: Arc<Self>,
        inflight: Arc<Semaphore>,
        websockets: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) {
        let _ = self.load.set((inflight.clone(), websockets.clone()));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resolved: BTreeMap<String, std::net::SocketAddr> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let m = self.metrics();
            let members: Vec<(NodeId, String)> = m
                .membership
                .nodes()
                .filter(|(id, _)| *id != self.id)
                .filter_map(|(id, n)| Some((id, derived_gossip_addr(&n.cluster_addr)?)))
                .collect();
            let mut seeds = BTreeMap::new();
            for (id, addr) in members {
                if let Some(a) = resolved.get(&addr) {
                    seeds.insert(id, *a);
                    continue;
                }
                // Host names are resolved once per address, off the hot path.
                if let Ok(Some(a)) = tokio::net::lookup_host(addr.as_str())
                    .await
                    .map(|mut it| it.next())
                {
                    resolved.insert(addr, a);
                    seeds.insert(id, a);
                }
            }
            self.gossip.set_seeds(seeds);
            self.gossip.set_removed(self.peers.removed());
            self.gossip.set_local_meta(NodeMeta {
                api_addr: self.info.api_addr.clone(),
                cluster_addr: self.info.cluster_addr.clone(),
                applied_index: m.applied.unwrap_or(0),
                inflight_requests: self.own_load().0,
                load_avg_1m: load_avg_1m(),
                replication: self.reach_of_members(&m),
                websocket_connections: self.own_load().1,
            });
        }
    }

    /// The members that may take clients, least loaded first: this node and those gossip
    /// sees alive with metadata younger than [`ROUTE_META_MAX_AGE`], each with its load.
    pub fn route_table(&self) -> Vec<(NodeId, NodeMeta)> {
        let members: BTreeSet<NodeId> = self
            .metrics()
            .membership
            .nodes()
            .map(|(id, _)| id)
            .collect();
        let (inflight_requests, websocket_connections) = self.own_load();
        let own = NodeMeta {
            inflight_requests,
            websocket_connections,
            ..self.gossip.local_meta()
        };
        let mut nodes = vec![(self.id, own)];
        for (id, view) in self.gossip.snapshot() {
            if view.liveness != Liveness::Alive || !members.contains(&id) {
                continue;
            }
            if let Some((meta, at)) = view.meta {
                if at.elapsed() <= ROUTE_META_MAX_AGE {
                    nodes.push((id, meta));
                }
            }
        }
        nodes.sort_by_key(|(id, m)| (m.load(), *id));
        nodes
    }

    /// Where a new long-lived client (a WebSocket, a long-poll claim) should go instead of
    /// this node: a member whose load is under three quarters of this node's, when this node
    /// carries more than `api.move_clients_above` (0: never).
    pub fn move_client_to(&self) -> Option<(NodeId, String)> {
        let above = self.config.api.move_clients_above;
        if above == 0 {
            return None;
        }
        let table = self.route_table();
        let own = table.iter().find(|(id, _)| *id == self.id)?.1.load();
        if own <= above {
            return None;
        }
        let (id, meta) = table.into_iter().find(|(id, _)| *id != self.id)?;
        (meta.load().saturating_mul(4) < own.saturating_mul(3)).then_some((id, meta.api_addr))
    }

    /// This node's requests in flight and WebSocket connections, now.
    fn own_load(&self) -> (u64, u64) {
        let Some((inflight, websockets)) = self.load.get() else {
            return (0, 0);
        };
        let busy = |max: usize, s: &Semaphore| max.saturating_sub(s.available_permits()) as u64;
        (
            busy(self.config.api.max_inflight_requests, inflight),
            busy(self.config.ws.max_connections, websockets),
        )
    }

    /// While this node leads: how it reaches each other member (empty otherwise).
    pub fn replication_reach(&self) -> Vec<MemberReach> {
        self.reach_of_members(&self.metrics())
    }

    fn reach_of_members(&self, m: &Metrics) -> Vec<MemberReach> {
        if m.leader != Some(self.id) {
            return Vec::new();
        }
        m.membership
            .nodes()
            .filter(|(id, _)| *id != self.id)
            .map(|(id, _)| {
                let (lag, acked) = replication_of(m, id);
                MemberReach {
                    node: id,
                    lag,
                    acked_ms_ago: acked.map(|d| d.as_millis() as u64),
                }
            })
            .collect()
    }

    /// How the leader reaches each other member: this node's own view while it leads, else
    /// what the leader last published in gossip (its ages brought up to now). `None` without a
    /// known leader or before its gossip arrived.
    pub fn leader_reach(&self) -> Option<(NodeId, Vec<MemberReach>)> {
        let m = self.metrics();
        let leader = m.leader?;
        if leader == self.id {
            return Some((leader, self.reach_of_members(&m)));
        }
        let view = self.gossip.snapshot();
        let (meta, at) = view.get(&leader)?.meta.as_ref()?;
        let age = at.elapsed().as_millis() as u64;
        let reach = meta
            .replication
            .iter()
            .map(|r| MemberReach {
                acked_ms_ago: r.acked_ms_ago.map(|a| a + age),
                ..r.clone()
            })
            .collect();
        Some((leader, reach))
    }
}

/// How far the leader sees `node`: its replication lag (entries of the leader's log it has not
/// acknowledged; `None` when it has acknowledged none yet) and how long ago it last
/// acknowledged a heartbeat or an append (`None`: never). Leader's metrics only.
pub(super) fn replication_of(m: &Metrics, node: NodeId) -> (Option<u64>, Option<Duration>) {
    let last = m.last_log_index.unwrap_or(0);
    let Some(f) = m.followers.as_ref().and_then(|f| f.get(&node)) else {
        return (None, None);
    };
    (f.matched.map(|i| last.saturating_sub(i)), f.acked_ago)
}

/// Whether `node` has replicated the leader's log to within 100 entries and acknowledged the
/// leader within `fresh`. A node that has acknowledged nothing yet is not caught up, however
/// short the log: promoting a voter the leader cannot reach weakens the quorum.
pub(super) fn caught_up(m: &Metrics, node: NodeId, fresh: Duration) -> bool {
    matches!(replication_of(m, node), (Some(lag), Some(ago)) if lag <= 100 && ago <= fresh)
}

/// Metadata older than this is not used to route clients (gossip refreshes it every 250 ms).
pub const ROUTE_META_MAX_AGE: Duration = Duration::from_secs(3);

/// The machine's one-minute load average (Linux `/proc/loadavg`), if the OS reports it.
pub(crate) fn load_avg_1m() -> Option<f32> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
