//! Gossip membership: SWIM failure detection (foca) over UDP, and each node's small changing
//! metadata (addresses, load, applied index). This is the only module that names `foca`.
//!
//! Every packet is `[version][kind][payload][tag]`, the tag being HMAC-SHA256 (keyed with
//! [`crate::ClusterTls::gossip_key`]) over everything before it. A packet whose tag does not
//! verify is dropped before any decoding and counted ([`GossipStats::dropped_unauthenticated`]).
//! `kind` is a SWIM message (handed to foca) or a metadata record (kept per node, newest wins).
//!
//! Gossip only observes: it never changes the Raft membership. The node seeds it with the Raft
//! members' gossip addresses ([`Gossip::set_seeds`]) and reads a snapshot ([`Gossip::snapshot`]).
//!
//! Removed nodes ([`Gossip::set_removed`]) are ignored by identity: a SWIM packet whose sender
//! is one is dropped before foca reads it (and counted, [`GossipStats::dropped_removed`]), so
//! is its metadata, and one that another member still gossips alive is declared down again. The gossip key is still
//! theirs, though (it derives from the CA key every member holds): a removed node can read the
//! cluster's gossip, and send packets under another node's identity (see ARCHITECTURE.md,
//! "Node identity").
//!
//! # Timings (LAN)
//! A node probes one member every [`PROBE_PERIOD`] (500 ms) and waits [`PROBE_RTT`] (150 ms)
//! for the answer before asking 3 others to probe indirectly; a member that answered neither
//! by the end of the period is `suspect`, and `down` [`SUSPECT_TO_DOWN`] (1.5 s) later unless
//! it refutes. Updates also travel every 200 ms to 3 random members. A killed node is thus
//! seen `down` everywhere within about 2 to 3.5 s. A false suspicion (a stalled process) is
//! refuted as soon as the suspect hears of it; a node declared `down` that is in fact alive
//! rejoins under a new generation of its identity.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{
    AccumulatingRuntime, Codec, Config, Foca, Identity, Member, OwnedNotification, PeriodicParams,
    PostcardCodec,
};
use hmac::{Hmac, Mac};
use raft::NodeId;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::error::Result;

/// How often each node probes one member.
pub const PROBE_PERIOD: Duration = Duration::from_millis(500);
/// How long a direct probe may take before indirect probes start.
pub const PROBE_RTT: Duration = Duration::from_millis(150);
/// How long a member stays `suspect` before it is declared `down`.
pub const SUSPECT_TO_DOWN: Duration = Duration::from_millis(1500);
/// How often each node sends its metadata to every member it sees alive.
pub const META_INTERVAL: Duration = Duration::from_millis(500);
/// How often a node announces itself to the seeds it does not see alive.
const SEED_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// Largest SWIM payload foca produces or accepts (under a typical MTU once sealed).
const MAX_SWIM_PAYLOAD: usize = 1400;
const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 2;
/// Largest datagram read: a sealed SWIM payload or metadata record.
const MAX_DATAGRAM: usize = 2048;
/// Timers foca asked for that have not fired yet; far above what a cluster needs.
const TIMER_QUEUE: usize = 4096;

/// What a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SWIM message for foca.
    Swim = 0,
    /// A [`MetaRecord`].
    Meta = 1,
}

/// Why a packet was dropped before it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Too short, unknown version or kind.
    Malformed,
    /// The tag does not verify: not from this cluster, or altered on the way.
    Unauthenticated,
}

/// Seals `payload` as a packet of `kind`: header, payload, HMAC-SHA256 tag.
pub fn seal(key: &[u8; 32], kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(payload);
    let mut mac = new_mac(key);
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

/// Checks a packet's tag (in constant time) and returns its kind and payload.
pub fn open<'a>(
    key: &[u8; 32],
    packet: &'a [u8],
) -> std::result::Result<(Kind, &'a [u8]), Rejected> {
    if packet.len() < HEADER_LEN + TAG_LEN {
        return Err(Rejected::Malformed);
    }
    let (body, tag) = packet.split_at(packet.len() - TAG_LEN);
    let mut mac = new_mac(key);
    mac.update(body);
    mac.verify_slice(tag)
        .map_err(|_| Rejected::Unauthenticated)?;
    let kind = match (body[0], body[1]) {
        (VERSION, 0) => Kind::Swim,
        (VERSION, 1) => Kind::Meta,
        _ => return Err(Rejected::Malformed),
    };
    Ok((kind, &body[HEADER_LEN..]))
}

fn new_mac(key: &[u8; 32]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// A node's identity in gossip. Foca tells identities apart by node id (`addr`); a restarted
/// node, or one that learns it was declared down, comes back under a higher `generation`,
/// which wins over the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipId {
    pub node: NodeId,
    /// Where this node receives gossip.
    pub addr: SocketAddr,
    /// Wall-clock milliseconds when the process started, plus one per rejoin.
    pub generation: u64,
}

impl Identity for GossipId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// The small, changing facts a node publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub api_addr: String,
    pub cluster_addr: String,
    /// Highest log index applied to the node's state machine.
    pub applied_index: u64,
    /// HTTP requests the node is handling.
    pub inflight_requests: u64,
    /// One-minute load average of the node's machine, where the OS reports it.
    pub load_avg_1m: Option<f32>,
    /// Published by the leader only: how it reaches each other member.
    pub replication: Vec<MemberReach>,
    /// WebSocket connections the node serves. Last, so a build without it reads a record
    /// of this one (postcard leaves trailing bytes unread); this build reads that build's
    /// records as having none ([`decode_meta`]).
    pub websocket_connections: u64,
}

impl NodeMeta {
    /// The work a node carries, by which clients are routed: requests in flight plus open
    /// WebSocket connections.
    pub fn load(&self) -> u64 {
        self.inflight_requests
            .saturating_add(self.websocket_connections)
    }
}

/// How the leader reaches one member, as the leader publishes it in gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReach {
    pub node: NodeId,
    /// Entries of the leader's log the member has not acknowledged (`None`: none acknowledged).
    pub lag: Option<u64>,
    /// Milliseconds since the member last acknowledged a heartbeat or an append (`None`:
    /// never).
    pub acked_ms_ago: Option<u64>,
}

/// One metadata packet; `(generation, seq)` orders the records of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetaRecord {
    node: NodeId,
    generation: u64,
    seq: u64,
    meta: NodeMeta,
}

/// A metadata record of a build whose `NodeMeta` ended with `replication`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetaRecordV1 {
    node: NodeId,
    generation: u64,
    seq: u64,
    meta: NodeMetaV1,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeMetaV1 {
    api_addr: String,
    cluster_addr: String,
    applied_index: u64,
    inflight_requests: u64,
    load_avg_1m: Option<f32>,
    replication: Vec<MemberReach>,
}

/// A metadata packet's record, of this build or of one before `websocket_connections`
/// (read as none), so members of both builds see each other's metadata during an upgrade.
fn decode_meta(payload: &[u8]) -> raft::codec::Result<MetaRecord> {
    raft::codec::decode::<MetaRecord>(payload).or_else(|e| {
        let Ok(r) = raft::codec::decode::<MetaRecordV1>(payload) else {
            return Err(e);
        };
        let m = r.meta;
        Ok(MetaRecord {
            node: r.node,
            generation: r.generation,
            seq: r.seq,
            meta: NodeMeta {
                api_addr: m.api_addr,
                cluster_addr: m.cluster_addr,
                applied_index: m.applied_index,
                inflight_requests: m.inflight_requests,
                load_avg_1m: m.load_avg_1m,
                replication: m.replication,
                websocket_connections: 0,
            },
        })
    })
}

/// A member's liveness as this node's SWIM view has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Suspect,
    Down,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
        }
    }
}

/// What this node knows of one other node.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub liveness: Liveness,
    /// When `liveness` last changed on this node.
    pub since: Instant,
    /// The latest metadata received from the node, and when.
    pub meta: Option<(NodeMeta, Instant)>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GossipStats {
    pub packets_received: u64,
    pub packets_sent: u64,
    /// Packets dropped because their tag did not verify.
    pub dropped_unauthenticated: u64,
    /// Packets dropped because they were too short or of an unknown version or kind.
    pub dropped_malformed: u64,
    /// Authentic packets dropped because their sender is a removed node.
    pub dropped_removed: u64,
}

/// Where gossip listens and who it is.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    pub node_id: NodeId,
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Address other nodes send to (the bind address unless it is unspecified).
    pub advertise: SocketAddr,
    /// From [`crate::ClusterTls::gossip_key`].
    pub key: [u8; 32],
}

enum Cmd {
    Seeds(BTreeMap<NodeId, SocketAddr>),
    Removed(BTreeSet<NodeId>),
}

#[derive(Default)]
struct Shared {
    view: Mutex<BTreeMap<NodeId, PeerView>>,
    local_meta: Mutex<NodeMeta>,
    received: AtomicU64,
    sent: AtomicU64,
    unauthenticated: AtomicU64,
    malformed: AtomicU64,
    removed: AtomicU64,
}

/// A running gossip member. Cheap to share; the protocol runs in the task [`Gossip::start`]
/// spawned, which leaves the cluster when `shutdown` is cancelled.
pub struct Gossip {
    node_id: NodeId,
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
}

impl Gossip {
    /// Binds the UDP socket and starts the protocol task.
    pub async fn start(
        config: GossipConfig,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Gossip>, tokio::task::JoinHandle<()>)> {
        let socket = UdpSocket::bind(config.bind).await?;
        let shared = Arc::new(Shared::default());
        let (cmds, cmd_rx) = mpsc::channel(16);
        let gossip = Arc::new(Gossip {
            node_id: config.node_id,
            shared: shared.clone(),
            cmds,
        });
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let id = GossipId {
            node: config.node_id,
            addr: config.advertise,
            generation,
        };
        info!(node = config.node_id, bind = %config.bind, advertise = %config.advertise, "gossip listening");
        let task = Runner::new(id, config.key, socket, shared, cmd_rx);
        Ok((gossip, tokio::spawn(task.run(shutdown))))
    }

    /// The Raft members' gossip addresses: gossip announces itself to those it does not see
    /// alive, so a node finds the cluster (and rejoins it) without other configuration.
    pub fn set_seeds(&self, seeds: BTreeMap<NodeId, SocketAddr>) {
        let mut seeds = seeds;
        seeds.remove(&self.node_id);
        // A full queue only delays the update to the next call.
        let _ = self.cmds.try_send(Cmd::Seeds(seeds));
    }

    /// The nodes removed from the cluster: their gossip is ignored from now on, and they are
    /// down in this node's view.
    pub fn set_removed(&self, removed: BTreeSet<NodeId>) {
        // A full queue only delays the update to the next call.
        let _ = self.cmds.try_send(Cmd::Removed(removed));
    }

    /// What this node publishes about itself from now on.
    pub fn set_local_meta(&self, meta: NodeMeta) {
        *self.shared.local_meta.lock().expect("gossip meta lock") = meta;
    }

    /// What this node publishes about itself.
    pub fn local_meta(&self) -> NodeMeta {
        self.shared
            .local_meta
            .lock()
            .expect("gossip meta lock")
            .clone()
    }

    /// This node's view of every other node gossip has heard of.
    pub fn snapshot(&self) -> BTreeMap<NodeId, PeerView> {
        self.shared.view.lock().expect("gossip view lock").clone()
    }

    pub fn stats(&self) -> GossipStats {
        GossipStats {
            packets_received: self.shared.received.load(Ordering::Relaxed),
            packets_sent: self.shared.sent.load(Ordering::Relaxed),
            dropped_unauthenticated: self.shared.unauthenticated.load(Ordering::Relaxed),
            dropped_malformed: self.shared.malformed.load(Ordering::Relaxed),
            dropped_removed: self.shared.removed.load(Ordering::Relaxed),
        }
    }
}

/// SWIM settings for a LAN; see the module documentation.
fn swim_config() -> Config {
    let mut c = Config::simple();
    c.probe_period = PROBE_PERIOD;
    c.probe_rtt = PROBE_RTT;
    c.num_indirect_probes = NonZeroUsize::new(3).expect("non-zero");
    c.max_transmissions = NonZeroU8::new(6).expect("non-zero");
    c.suspect_to_down_after = SUSPECT_TO_DOWN;
    c.max_packet_size = NonZeroUsize::new(MAX_SWIM_PAYLOAD).expect("non-zero");
    c.notify_down_members = true;
    c.periodic_gossip = Some(PeriodicParams {
        frequency: Duration::from_millis(200),
        num_members: NonZeroUsize::new(3).expect("non-zero"),
    });
    c.periodic_announce = Some(PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::new(1).expect("non-zero"),
    });
    c.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::new(2).expect("non-zero"),
    });
    c
}

type Swim = Foca<GossipId, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>;

/// The protocol task: owns foca, the socket and the timers.
struct Runner {
    foca: Swim,
    runtime: AccumulatingRuntime<GossipId>,
    key: [u8; 32],
    socket: UdpSocket,
    shared: Arc<Shared>,
    cmds: mpsc::Receiver<Cmd>,
    timers_tx: mpsc::Sender<foca::Timer<GossipId>>,
    timers_rx: mpsc::Receiver<foca::Timer<GossipId>>,
    /// The tasks that hand foca's timers back when due; stopped and awaited when gossip ends.
    timer_tasks: TaskTracker,
    timers_stop: CancellationToken,
    seeds: BTreeMap<NodeId, SocketAddr>,
    /// Nodes removed from the cluster: ignored, and down.
    removed: BTreeSet<NodeId>,
    metas: BTreeMap<NodeId, (u64, u64, NodeMeta, Instant)>,
    meta_seq: u64,
}

impl Runner {
    fn new(
        id: GossipId,
        key: [u8; 32],
        socket: UdpSocket,
        shared: Arc<Shared>,
        cmds: mpsc::Receiver<Cmd>,
    ) -> Self {
        let (timers_tx, timers_rx) = mpsc::channel(TIMER_QUEUE);
        Self {
            foca: Foca::new(
                id,
                swim_config(),
                rand::rngs::StdRng::from_os_rng(),
                PostcardCodec,
            ),
            runtime: AccumulatingRuntime::new(),
            key,
            socket,
            shared,
            cmds,
            timers_tx,
            timers_rx,
            timer_tasks: TaskTracker::new(),
            timers_stop: CancellationToken::new(),
            seeds: BTreeMap::new(),
            removed: BTreeSet::new(),
            metas: BTreeMap::new(),
            meta_seq: 0,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        // The timer tasks stop however this task ends.
        let _stop_timers = self.timers_stop.clone().drop_guard();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut meta_tick = tokio::time::interval(META_INTERVAL);
        let mut announce_tick = tokio::time::interval(SEED_ANNOUNCE_INTERVAL);
        for t in [&mut meta_tick, &mut announce_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_packet(&buf[..n], from),
                    Err(e) => debug!(error = %e, "gossip receive failed"),
                },
                Some(timer) = self.timers_rx.recv() => {
                    if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                        debug!(error = %e, "gossip timer");
                    }
                }
                Some(cmd) = self.cmds.recv() => match cmd {
                    Cmd::Seeds(seeds) => {
                        let new = seeds != self.seeds;
                        self.seeds = seeds;
                        if new {
                            self.announce_to_missing_seeds();
                        }
                    }
                    Cmd::Removed(removed) => self.set_removed(removed),
                },
                _ = meta_tick.tick() => self.send_meta(),
                _ = announce_tick.tick() => self.announce_to_missing_seeds(),
            }
            self.drain();
            self.refresh_view();
        }
        info!("leaving gossip");
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            debug!(error = %e, "leaving gossip");
        }
        self.drain();
        self.timers_stop.cancel();
        self.timer_tasks.close();
        self.timer_tasks.wait().await;
    }

    /// Takes the removed nodes: from now on their packets are dropped, and those gossip holds
    /// are declared down (to the others too) and leave the view.
    fn set_removed(&mut self, removed: BTreeSet<NodeId>) {
        if self.removed != removed {
            self.metas.retain(|node, _| !removed.contains(node));
            self.removed = removed;
            self.down_removed();
        }
    }

    /// Declares down every removed node gossip holds as active, e.g. because a member that
    /// has not applied the removal yet still gossips it alive.
    fn down_removed(&mut self) {
        let down: Vec<Member<GossipId>> = self
            .foca
            .iter_members()
            .filter(|m| self.removed.contains(&m.id().node))
            .map(|m| Member::new(m.id().clone(), m.incarnation(), foca::State::Down))
            .collect();
        if down.is_empty() {
            return;
        }
        let nodes: Vec<NodeId> = down.iter().map(|m| m.id().node).collect();
        info!(?nodes, "gossip: removed nodes are down");
        if let Err(e) = self
            .foca
            .apply_many(down.into_iter(), true, &mut self.runtime)
        {
            debug!(error = %e, "gossip: declaring removed nodes down");
        }
    }

    fn on_packet(&mut self, packet: &[u8], from: SocketAddr) {
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        match open(&self.key, packet) {
            Ok((Kind::Swim, payload)) => {
                // The sender, read before foca takes it for alive.
                let sender: Option<foca::Header<GossipId>> =
                    PostcardCodec.decode_header(payload).ok();
                if let Some(node) = sender.map(|h| h.src.node) {
                    if self.removed.contains(&node) {
                        self.dropped_from_removed(node, from);
                        return;
                    }
                }
                if let Err(e) = self.foca.handle_data(payload, &mut self.runtime) {
                    debug!(%from, error = %e, "gossip message ignored");
                }
                self.down_removed();
            }
            Ok((Kind::Meta, payload)) => match decode_meta(payload) {
                Ok(r) if self.removed.contains(&r.node) => self.dropped_from_removed(r.node, from),
                Ok(r) => self.on_meta(r),
                Err(e) => debug!(%from, error = %e, "gossip metadata ignored"),
            },
            Err(Rejected::Unauthenticated) => {
                let n = self.shared.unauthenticated.fetch_add(1, Ordering::Relaxed);
                // Once, then every 1000th: a misconfigured node must not flood the log.
                if n.is_multiple_of(1000) {
                    warn!(%from, dropped = n + 1, "dropped gossip packets that failed authentication");
                }
            }
            Err(Rejected::Malformed) => {
                self.shared.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn dropped_from_removed(&self, node: NodeId, from: SocketAddr) {
        let n = self.shared.removed.fetch_add(1, Ordering::Relaxed);
        // Once, then every 1000th: a removed node that keeps sending must not flood the log.
        if n.is_multiple_of(1000) {
            warn!(node, %from, dropped = n + 1, "dropped gossip packets from a removed node");
        }
    }

    fn on_meta(&mut self, r: MetaRecord) {
        if r.node == self.foca.identity().node {
            return;
        }
        let newer = self
            .metas
            .get(&r.node)
            .is_none_or(|(g, s, _, _)| (r.generation, r.seq) > (*g, *s));
        if newer {
            self.metas
                .insert(r.node, (r.generation, r.seq, r.meta, Instant::now()));
        }
    }

    /// Sends this node's metadata straight to every member it sees active. Direct sends cost
    /// N² small packets per interval, nothing for clusters of tens of nodes, and make a
    /// change visible everywhere within one interval.
    fn send_meta(&mut self) {
        self.meta_seq += 1;
        let me = self.foca.identity().clone();
        let record = MetaRecord {
            node: me.node,
            generation: me.generation,
            seq: self.meta_seq,
            meta: self
                .shared
                .local_meta
                .lock()
                .expect("gossip meta lock")
                .clone(),
        };
        let Ok(payload) = raft::codec::encode(&record) else {
            return;
        };
        let packet = seal(&self.key, Kind::Meta, &payload);
        let targets: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for to in targets {
            self.send(&packet, to);
        }
    }

    fn announce_to_missing_seeds(&mut self) {
        let active: Vec<NodeId> = self.foca.iter_members().map(|m| m.id().node).collect();
        let missing: Vec<(NodeId, SocketAddr)> = self
            .seeds
            .iter()
            .filter(|(id, _)| !active.contains(id))
            .map(|(id, a)| (*id, *a))
            .collect();
        for (node, addr) in missing {
            // Generation 0: an announce is accepted by whichever generation of `node` runs.
            let dst = GossipId {
                node,
                addr,
                generation: 0,
            };
            if let Err(e) = self.foca.announce(dst, &mut self.runtime) {
                debug!(node, error = %e, "gossip announce");
            }
        }
    }

    fn send(&self, packet: &[u8], to: SocketAddr) {
        // Gossip is lossy by design: a full socket buffer drops the packet like the network
        // would.
        match self.socket.try_send_to(packet, to) {
            Ok(_) => {
                self.shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => debug!(%to, error = %e, "gossip send failed"),
        }
    }

    /// Carries out what foca asked for: packets, timers, notifications.
    fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let packet = seal(&self.key, Kind::Swim, &data);
            self.send(&packet, to.addr);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let tx = self.timers_tx.clone();
            let fire = async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(timer).await;
            };
            let stop = self.timers_stop.clone();
            self.timer_tasks.spawn(stop.run_until_cancelled_owned(fire));
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    info!(node = id.node, addr = %id.addr, generation = id.generation, "gossip: member up")
                }
                OwnedNotification::MemberDown(id) => {
                    warn!(node = id.node, addr = %id.addr, "gossip: member down")
                }
                OwnedNotification::Rejoin(id) => {
                    info!(
                        generation = id.generation,
                        "gossip: rejoined under a new generation"
                    )
                }
                OwnedNotification::Defunct => warn!("gossip: declared down by the cluster"),
                other => debug!(notification = ?other, "gossip"),
            }
        }
    }

    /// Publishes foca's member states (and the metadata received) as the shared view.
    fn refresh_view(&mut self) {
        let now = Instant::now();
        let mut view = self.shared.view.lock().expect("gossip view lock");
        let mut seen = Vec::new();
        for m in self.foca.iter_membership_state() {
            let liveness = match m.state() {
                foca::State::Alive => Liveness::Alive,
                foca::State::Suspect => Liveness::Suspect,
                foca::State::Down => Liveness::Down,
            };
            let node = m.id().node;
            seen.push(node);
            let entry = view.entry(node).or_insert(PeerView {
                liveness,
                since: now,
                meta: None,
            });
            if entry.liveness != liveness {
                entry.liveness = liveness;
                entry.since = now;
            }
        }
        // A removed node leaves the view.
        view.retain(|node, _| !self.removed.contains(node));
        // Foca forgets a down member after a day; it stays down here.
        for (node, v) in view.iter_mut() {
            if !seen.contains(node) && v.liveness != Liveness::Down {
                v.liveness = Liveness::Down;
                v.since = now;
            }
        }
        for (node, (_, _, meta, at)) in &self.metas {
            if let Some(v) = view.get_mut(node) {
                v.meta = Some((meta.clone(), *at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_of_the_build_before_and_of_this_one_read_each_other() {
        let reach = vec![MemberReach {
            node: 2,
            lag: Some(1),
            acked_ms_ago: Some(30),
        }];
        let old = MetaRecordV1 {
            node: 3,
            generation: 7,
            seq: 9,
            meta: NodeMetaV1 {
                api_addr: "a:1".into(),
                cluster_addr: "c:1".into(),
                applied_index: 42,
                inflight_requests: 5,
                load_avg_1m: Some(0.5),
                replication: reach.clone(),
            },
        };
        let r = decode_meta(&raft::codec::encode(&old).unwrap()).unwrap();
        assert_eq!((r.node, r.generation, r.seq), (3, 7, 9));
        assert_eq!(r.meta.applied_index, 42);
        assert_eq!(r.meta.replication, reach);
        assert_eq!(r.meta.websocket_connections, 0);
        // A node of the build before reads this build's records, without the new field.
        let new = MetaRecord {
            meta: NodeMeta {
                websocket_connections: 11,
                ..r.meta.clone()
            },
            ..r
        };
        let read_by_old: MetaRecordV1 =
            raft::codec::decode(&raft::codec::encode(&new).unwrap()).unwrap();
        assert_eq!(read_by_old.meta.inflight_requests, 5);
        assert_eq!(
            decode_meta(&raft::codec::encode(&new).unwrap())
                .unwrap()
                .meta
                .websocket_connections,
            11
        );
    }

    #[test]
    fn a_sealed_packet_opens_with_the_same_key_only() {
        let key = [7u8; 32];
        let packet = seal(&key, Kind::Swim, b"probe");
        assert_eq!(open(&key, &packet), Ok((Kind::Swim, &b"probe"[..])));
        let packet = seal(&key, Kind::Meta, b"");
        assert_eq!(open(&key, &packet), Ok((Kind::Meta, &b""[..])));

        let other = [8u8; 32];
        assert_eq!(open(&other, &packet), Err(Rejected::Unauthenticated));
    }

    #[test]
    fn an_altered_or_truncated_packet_is_rejected() {
        let key = [1u8; 32];
        let packet = seal(&key, Kind::Swim, b"some swim message");
        for i in 0..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(&key, &bad),
                Err(Rejected::Unauthenticated),
                "flipped bit in byte {i} must not verify"
            );
        }
        assert_eq!(
            open(&key, &packet[..packet.len() - 1]),
            Err(Rejected::Unauthenticated)
        );
        assert_eq!(open(&key, &packet[..10]), Err(Rejected::Malformed));
        assert_eq!(open(&key, &[]), Err(Rejected::Malformed));
    }

    #[test]
    fn an_authentic_packet_of_an_unknown_kind_is_malformed() {
        let key = [2u8; 32];
        let mut body = vec![VERSION, 9, 1, 2, 3];
        let mut mac = new_mac(&key);
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(open(&key, &body), Err(Rejected::Malformed));
    }

    #[test]
    fn a_newer_generation_wins_and_renewal_moves_forward() {
        let a = GossipId {
            node: 3,
            addr: "127.0.0.3:7102".parse().unwrap(),
            generation: 10,
        };
        let b = a.renew().unwrap();
        assert_eq!(b.generation, 11);
        assert_eq!(a.addr(), b.addr());
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
    }

    fn local(node: NodeId, key: [u8; 32]) -> GossipConfig {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        GossipConfig {
            node_id: node,
            bind: addr,
            advertise: addr,
            key,
        }
    }

    async fn start(
        node: NodeId,
        key: [u8; 32],
        stop: &CancellationToken,
    ) -> (Arc<Gossip>, SocketAddr) {
        // Bind first to learn the port, then advertise it.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let mut cfg = local(node, key);
        cfg.bind = addr;
        cfg.advertise = addr;
        let (g, _) = Gossip::start(cfg, stop.clone()).await.unwrap();
        (g, addr)
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn members_see_each_other_and_their_metadata_and_a_stopped_one_goes_down() {
        let key = [5u8; 32];
        let stop_a = CancellationToken::new();
        let stop_b = CancellationToken::new();
        let (a, addr_a) = start(1, key, &stop_a).await;
        let (b, _) = start(2, key, &stop_b).await;
        b.set_local_meta(NodeMeta {
            api_addr: "b-api".into(),
            applied_index: 42,
            ..Default::default()
        });
        b.set_seeds(BTreeMap::from([(1, addr_a)]));
        wait_until("a sees b alive with its metadata", || {
            a.snapshot().get(&2).is_some_and(|v| {
                v.liveness == Liveness::Alive
                    && v.meta.as_ref().is_some_and(|(m, _)| m.applied_index == 42)
            })
        })
        .await;
        wait_until("b sees a alive", || {
            b.snapshot()
                .get(&1)
                .is_some_and(|v| v.liveness == Liveness::Alive)
        })
        .await;

        // A node that leaves is down at once.
        stop_b.cancel();
        wait_until("a sees b down", || {
            a.snapshot()
                .get(&2)
                .is_some_and(|v| v.liveness == Liveness::Down)
        })
        .await;
        stop_a.cancel();
    }

    #[tokio::test]
    async fn a_removed_node_is_ignored_and_down_though_it_holds_the_key() {
        let key = [5u8; 32];
        let stop = CancellationToken::new();
        let (a, addr_a) = start(1, key, &stop).await;
        let (b, addr_b) = start(2, key, &stop).await;
        let (gone, _) = start(3, key, &stop).await;
        b.set_seeds(BTreeMap::from([(1, addr_a)]));
        gone.set_seeds(BTreeMap::from([(1, addr_a), (2, addr_b)]));
        gone.set_local_meta(NodeMeta {
            api_addr: "gone-api".into(),
            ..Default::default()
        });
        let alive = |g: &Gossip, n: NodeId| {
            g.snapshot()
                .get(&n)
                .is_some_and(|v| v.liveness == Liveness::Alive)
        };
        wait_until("a sees 2 and 3 alive", || alive(&a, 2) && alive(&a, 3)).await;

        // Node 3 is removed: the members drop what it sends, and its entry.
        a.set_removed(BTreeSet::from([3]));
        b.set_removed(BTreeSet::from([3]));
        wait_until("a and b drop node 3's packets", || {
            a.stats().dropped_removed >= 2 && b.stats().dropped_removed >= 2
        })
        .await;
        for g in [&a, &b] {
            assert!(!g.snapshot().contains_key(&3), "{:?}", g.snapshot());
        }
        // It keeps sending, with the key, and never comes back; node 2 stays alive.
        let dropped = a.stats().dropped_removed;
        wait_until("more packets from node 3", || {
            a.stats().dropped_removed > dropped + 3
        })
        .await;
        assert!(!a.snapshot().contains_key(&3));
        assert!(alive(&a, 2) && alive(&b, 1));
        stop.cancel();
    }

    #[tokio::test]
    async fn a_node_with_another_key_is_never_admitted_and_is_counted() {
        let stop = CancellationToken::new();
        let (a, addr_a) = start(1, [5u8; 32], &stop).await;
        let (intruder, _) = start(2, [6u8; 32], &stop).await;
        intruder.set_seeds(BTreeMap::from([(1, addr_a)]));
        wait_until("a drops the intruder's packets", || {
            a.stats().dropped_unauthenticated >= 2
        })
        .await;
        assert!(a.snapshot().is_empty(), "{:?}", a.snapshot());
        stop.cancel();
    }
}
