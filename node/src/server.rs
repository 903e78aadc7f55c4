//! Starting and stopping a node.
//!
//! Start-up runs in stages, each logged by name: identity, storage, transport, raft, gossip,
//! cluster, background and API. Every task the node starts is owned by one of its
//! [`NodeTasks`] trackers; shutdown stops them group by group, bounded, and names what did not
//! stop. No task is detached.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use raft::{codec, LogStore, NodeId, NodeInfo, Replica, StateMachine};
use serde::{Deserialize, Serialize};
use storage::Db;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use transport::tls::NodeKey;
use transport::{
    tls, ClusterTls, Gossip, GossipConfig, Limits, RpcRequest, RpcResponse, Transport,
};

use crate::api::{self, AppState};
use crate::cluster::{Cluster, Peers};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::realtime::Hub;

/// Who this node is, persisted in its data dir before it takes part in any cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    node_id: NodeId,
    cluster_id: String,
}

const IDENTITY_KEY: &str = "node_identity";
/// The cluster address a node joined through: whom the key sync asks while the node knows no
/// member yet (`cluster::Peers`), also after a restart.
const JOINED_THROUGH_KEY: &str = "joined_through";
const JOIN_TOKEN_FILE: &str = "join-token";
/// The founding node's management token (mode 0600).
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";
/// Written when the cluster answered that this node was removed; holds the message.
const REMOVED_FILE: &str = "removed";
/// How long shutdown waits for each group of tasks before it gives up on them.
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// How long tasks given up on get to end once told to drop what they were doing.
const ABANDON_WITHIN: Duration = Duration::from_secs(1);

/// The trackers that own every task of a node, by what the tasks do. Clones share the
/// trackers, so a clone taken before [`Node::shutdown`] shows what is left after it.
#[derive(Clone, Default, Debug)]
pub struct NodeTasks {
    /// The node's long-running duties (the HTTP server, the cluster RPC server, the leader's
    /// tasks, gossip and its feed, the membership and removal watchers, the presence lease).
    pub background: TaskTracker,
    /// HTTP requests being answered.
    pub requests: TaskTracker,
    /// WebSocket connections, their writers and the publishes they wait on (the [`Hub`]'s).
    pub websockets: TaskTracker,
    /// ReadIndex rounds (the [`Cluster`]'s).
    pub reads: TaskTracker,
}

impl NodeTasks {
    /// Tasks still running, in every group.
    pub fn len(&self) -> usize {
        self.background.len() + self.requests.len() + self.websockets.len() + self.reads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub cluster: Arc<Cluster>,
    pub api_addr: std::net::SocketAddr,
    /// What the API's handlers share (see [`Node::api_state`]).
    api: Arc<AppState>,
    removed: tokio::sync::watch::Receiver<Option<String>>,
    data_dir: std::path::PathBuf,
    life: Lifecycle,
}

/// What the identity stage settled: the node's RocksDB (which keeps the identity), who the
/// node is and its keys.
struct Member {
    db: Db,
    identity: Identity,
    tls: ClusterTls,
    info: NodeInfo,
    /// The founding join token, on the founding node.
    founding_token: Option<String>,
    /// The cluster address this node joined through, on a node that joined.
    joined_through: Option<String>,
}

/// What the storage stage loaded.
struct Stores {
    log_store: LogStore,
    sm: StateMachine,
}

/// What the gossip stage started.
struct GossipMember {
    gossip: Arc<Gossip>,
    task: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Node {
    /// Starts a node from `config`: restarts the member in the data dir, or starts a new
    /// cluster, or joins one (`--join`). A config that [`Config::validate`] refuses is an
    /// error. A start that fails part-way stops what it had started.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
        let member = stage_identity(&config).await?;
        let stores = stage_storage(&config, &member.db)?;
        let state = stores.sm.state();
        let peers = Peers::new(state.clone(), member.joined_through.clone());
        let transport = stage_transport(&config, &member.tls, peers.clone())?;
        let hub = Hub::new(stores.sm.live_sender(), config.ws.max_connections);
        let replica = stage_raft(&config, &member, stores, &transport).await?;
        let gossip = match stage_gossip(&config, &member).await {
            Ok(g) => g,
            Err(e) => {
                let _ = replica.shutdown().await;
                return Err(e);
            }
        };
        let (cluster, mut life, identity, founding_token) = assemble(
            &config, member, replica, state, &transport, hub, gossip, peers,
        );
        let removed = transport.removed();
        let started = async {
            stage_cluster(
                &config,
                &cluster,
                &identity,
                founding_token,
                &transport,
                &mut life,
            )
            .await?;
            stage_background(&config, &cluster, &removed, &mut life);
            stage_api(&config, &cluster, &mut life).await
        };
        match started.await {
            Ok((api_addr, api)) => Ok(Node {
                cluster,
                api_addr,
                api,
                removed,
                data_dir: config.data_dir().to_path_buf(),
                life,
            }),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "start-up failed; stopping what started");
                life.stop(|| {}).await;
                Err(e)
            }
        }
    }

    /// The state the API's handlers share: `api::router(node.api_state())` answers requests
    /// in-process as this node's HTTP listener does. Drop every clone before
    /// [`Node::shutdown`], which waits for the node's RocksDB handles to close.
    pub fn api_state(&self) -> Arc<AppState> {
        self.api.clone()
    }

    /// The trackers owning this node's tasks (see [`NodeTasks`]).
    pub fn tasks(&self) -> NodeTasks {
        self.life.tasks.clone()
    }

    /// Waits until Raft stops on an error of its own (a storage write failed: a full disk, an
    /// I/O error); returns the message the process should stop with. Such a node can no longer
    /// take part, and answering requests with a dead Raft would only hide it.
    pub async fn raft_failed(&self) -> String {
        let e = self.cluster.replica().failure().await;
        tracing::error!(error = %e, "raft stopped on an error; this node stops");
        format!(
            "raft stopped on an error: {e}. This node stops; check its data dir's disk (free \
             space, I/O errors) and start it again: it catches up from the others"
        )
    }

    /// Waits until a member answers that this node was removed from the cluster; returns the
    /// message saying so (the process should then stop: it can no longer take part).
    pub async fn removed(&self) -> String {
        let mut r = self.removed.clone();
        let why = match r.wait_for(|r| r.is_some()).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => return std::future::pending().await,
        };
        why
    }

    /// Stops in order: stop accepting API requests (and finish those under way), drain the
    /// WebSockets, stop the background tasks, shut Raft down, leave gossip, close RocksDB.
    /// Each group of tasks gets a bounded time; what does not stop in it is named in a warning
    /// and dropped.
    pub async fn shutdown(self) {
        // A leader hands over first, so the cluster does not wait out an election timeout.
        if self.cluster.is_leader() {
            if let Some(to) = self.cluster.best_successor() {
                info!(to, "shutting down: transferring leadership");
                match self.cluster.transfer_leadership(to).await {
                    Ok(leader) => info!(leader, "leadership transferred"),
                    Err(e) => warn!(error = %e, "leadership transfer failed; shutting down anyway"),
                }
            }
        }
        let Node {
            cluster,
            removed,
            data_dir,
            life,
            api,
            ..
        } = self;
        drop(api);
        // Reads asked for from now on fail as unavailable; the rounds under way finish and
        // the stop below waits for them.
        cluster.refuse_new_reads();
        drop(cluster);
        life.stop(|| {
            let removal = removed.borrow().clone();
            if let Some(why) = removal {
                record_removal(&data_dir, &why);
            }
        })
        .await;
        info!("node stopped");
    }
}

/// The cluster glue over what the stages made, and the [`Lifecycle`] that will stop it all.
#[allow(clippy::too_many_arguments)]
fn assemble(
    config: &Config,
    member: Member,
    replica: Replica,
    state: Arc<std::sync::RwLock<raft::State>>,
    transport: &Arc<Transport>,
    hub: Arc<Hub>,
    gossip: GossipMember,
    peers: Arc<Peers>,
) -> (Arc<Cluster>, Lifecycle, Identity, Option<String>) {
    let Member {
        db,
        identity,
        tls,
        info,
        founding_token,
        ..
    } = member;
    let cluster = Cluster::new(
        identity.node_id,
        info,
        replica,
        state,
        transport.clone(),
        tls,
        config.clone(),
        gossip.gossip,
        peers,
    );
    let life = Lifecycle::new(&cluster, hub, gossip.shutdown, gossip.task, db);
    (cluster, life, identity, founding_token)
}

/// Identity: the data dir (and the checks that stop a removed node or an unfinished restore
/// before it touches its state), RocksDB (which keeps the identity), and who the node is:
/// restarted from the data dir, joined through a member, or the founder of a new cluster.
async fn stage_identity(config: &Config) -> anyhow::Result<Member> {
    info!(data_dir = %config.data_dir().display(), "start-up stage: identity");
    check_data_dir(config)?;
    let db = Db::open_with(&config.data_dir().join("db"), config.store_memory())
        .context("opening RocksDB")?;
    let info = NodeInfo {
        api_addr: config.advertise_api_addr(),
        cluster_addr: config.advertise_cluster_addr(),
    };
    let existing: Option<Identity> = db
        .meta_get(IDENTITY_KEY)?
        .map(|b| codec::decode(&b))
        .transpose()?;
    let (identity, tls, founding_token) = match existing {
        Some(id) => restart_identity(config, &db, id)?,
        None => match (&config.cluster.join, &config.cluster.token) {
            (Some(join), Some(token)) => joined_identity(config, &db, &info, join, token).await?,
            _ => founder_identity(config, &db)?,
        },
    };
    let joined_through = db
        .meta_get(JOINED_THROUGH_KEY)?
        .map(|addr| String::from_utf8_lossy(&addr).into_owned());
    Ok(Member {
        db,
        identity,
        tls,
        info,
        founding_token,
        joined_through,
    })
}

/// Creates the data dir; refuses a node that learnt it was removed, or a restore that did
/// not finish.
fn check_data_dir(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(config.data_dir())
        .with_context(|| format!("creating data dir {}", config.data_dir().display()))?;
    // A node that learnt it was removed stops here, before touching its state.
    if let Ok(why) = std::fs::read_to_string(config.data_dir().join(REMOVED_FILE)) {
        bail!("{}", why.trim());
    }
    if config
        .data_dir()
        .join(crate::backup::RESTORE_INCOMPLETE)
        .exists()
    {
        bail!(
            "a restore into {} did not finish: delete the dir and run `stackd restore` again",
            config.data_dir().display()
        );
    }
    Ok(())
}

type Settled = (Identity, ClusterTls, Option<String>);

/// A member restarting from its data dir: its identity and certificate must agree.
fn restart_identity(config: &Config, db: &Db, id: Identity) -> anyhow::Result<Settled> {
    if config.cluster.join.is_some() {
        warn!(
            "--join is ignored: the data dir already holds node {}",
            id.node_id
        );
    }
    let tls = ClusterTls::load(&config.data_dir().join("tls"))?.context(
        "data dir has an identity but no node certificate (made by an earlier \
         version?): wipe the data dir and join again with a token",
    )?;
    if tls.node_id != id.node_id || tls.cluster_id != id.cluster_id {
        bail!(
            "the node certificate names node {} of cluster {}, the data dir node {} \
             of cluster {}",
            tls.node_id,
            tls.cluster_id,
            id.node_id,
            id.cluster_id
        );
    }
    info!(node_id = id.node_id, cluster_id = %id.cluster_id, "restarting member from its data dir");
    let token_file = config.data_dir().join(JOIN_TOKEN_FILE);
    tighten_join_token(&token_file);
    let token = std::fs::read_to_string(&token_file).ok();
    Ok((id, tls, token.filter(|_| id_is_founder(db))))
}

/// A new node joining through a member with a token.
async fn joined_identity(
    config: &Config,
    db: &Db,
    info: &NodeInfo,
    join: &str,
    token: &str,
) -> anyhow::Result<Settled> {
    // The node's private key is made here and never leaves it; the leader signs a
    // certificate for its public half.
    let key = NodeKey::generate()?;
    let local_ip = config.cluster.addr.ip();
    let granted = join_cluster(join, token, info, local_ip, &key.public_key).await?;
    let tls = ClusterTls::joined(
        granted.ca_cert_der,
        granted.ca_key_der,
        granted.cert_der,
        key,
    )
    .context("the cluster's answer to the join")?;
    if tls.node_id != granted.node_id || tls.cluster_id != granted.cluster_id {
        bail!("the certificate the cluster issued does not name this node");
    }
    tls.save(&config.data_dir().join("tls"))?;
    let id = Identity {
        node_id: granted.node_id,
        cluster_id: granted.cluster_id,
    };
    db.meta_put_sync(JOINED_THROUGH_KEY, join.as_bytes())?;
    db.meta_put_sync(IDENTITY_KEY, &codec::encode(&id)?)?;
    info!(node_id = id.node_id, cluster_id = %id.cluster_id, "joined cluster");
    Ok((id, tls, None))
}

/// A new node founding a new cluster as node 1, with a new CA and founding join token.
fn founder_identity(config: &Config, db: &Db) -> anyhow::Result<Settled> {
    let cluster_id = hex::encode(rand::random::<[u8; 8]>());
    let tls = ClusterTls::found(&cluster_id, 1)?;
    tls.save(&config.data_dir().join("tls"))?;
    let token = tls::new_join_token(tls.ca_fingerprint());
    let id = Identity {
        node_id: 1,
        cluster_id,
    };
    db.meta_put_sync("founder", b"1")?;
    db.meta_put_sync(IDENTITY_KEY, &codec::encode(&id)?)?;
    info!(cluster_id = %id.cluster_id, "starting a new cluster as node 1");
    Ok((id, tls, Some(token)))
}

/// Storage: the Raft log store and the state machine, loaded from RocksDB and the
/// snapshot dir.
fn stage_storage(config: &Config, db: &Db) -> anyhow::Result<Stores> {
    info!("start-up stage: storage");
    let log_store = LogStore::new(db.clone());
    let sm = StateMachine::open(db.clone(), &config.data_dir().join("snapshots"))?;
    crate::cluster::check_node_keys(&sm.state().read().expect("state lock"))
        .map_err(anyhow::Error::msg)?;
    Ok(Stores { log_store, sm })
}

/// Transport: the QUIC endpoint on the cluster address, with the node's TLS identity; `peers`
/// says who is a member.
fn stage_transport(
    config: &Config,
    tls: &ClusterTls,
    peers: Arc<Peers>,
) -> anyhow::Result<Arc<Transport>> {
    info!(addr = %config.cluster.addr, "start-up stage: transport");
    Transport::bind(config.cluster.addr, tls, Limits::default(), peers)
        .with_context(|| format!("binding cluster address {}", config.cluster.addr))
}

/// Raft: this node's replica over the stores, reaching its peers through the transport.
async fn stage_raft(
    config: &Config,
    member: &Member,
    stores: Stores,
    transport: &Arc<Transport>,
) -> anyhow::Result<Replica> {
    info!(node_id = member.identity.node_id, "start-up stage: raft");
    let timing = raft::replica::Timing {
        heartbeat_interval_ms: config.raft.heartbeat_interval_ms,
        election_timeout_ms: config.raft.election_timeout_ms,
        snapshot_every_entries: config.raft.snapshot_every_entries,
    };
    Replica::start(
        member.identity.node_id,
        timing,
        transport.clone(),
        stores.log_store,
        stores.sm,
    )
    .await
    .context("starting raft")
}

/// Gossip: this node's member of the cluster's gossip, on the gossip address.
async fn stage_gossip(config: &Config, member: &Member) -> anyhow::Result<GossipMember> {
    info!(addr = %config.gossip_addr(), "start-up stage: gossip");
    let advertise = tokio::net::lookup_host(config.advertise_gossip_addr().as_str())
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| {
            format!(
                "resolving the advertised gossip address {}",
                config.advertise_gossip_addr()
            )
        })?;
    let shutdown = CancellationToken::new();
    let gossip_config = GossipConfig {
        node_id: member.identity.node_id,
        bind: config.gossip_addr(),
        advertise,
        key: member.tls.gossip_key(),
    };
    let (gossip, task) = Gossip::start(gossip_config, shutdown.clone())
        .await
        .with_context(|| format!("binding gossip address {}", config.gossip_addr()))?;
    Ok(GossipMember {
        gossip,
        task,
        shutdown,
    })
}

/// Cluster: serves cluster RPCs; on the founding node's first start, initializes the
/// cluster; seals a restored state.
async fn stage_cluster(
    config: &Config,
    cluster: &Arc<Cluster>,
    identity: &Identity,
    founding_token: Option<String>,
    transport: &Arc<Transport>,
    life: &mut Lifecycle,
) -> anyhow::Result<()> {
    info!("start-up stage: cluster");
    let rpc = transport.clone().serve(
        cluster.replica().clone(),
        cluster.clone(),
        life.background.clone(),
    );
    life.spawn("cluster RPC server", rpc);
    let uninitialized_state = cluster.state().meta.cluster_id.is_none();
    if let Some(token) = founding_token.as_ref().filter(|_| uninitialized_state) {
        found_cluster(config, cluster, identity, token).await?;
    }
    // A restart after a restore that stopped before sealing finishes it now.
    seal_restored_state(cluster, config.data_dir()).await
}

/// The founding node's first start: initializes Raft with this node alone, records the
/// founding join token in the cluster state and writes it to the data dir.
async fn found_cluster(
    config: &Config,
    cluster: &Cluster,
    identity: &Identity,
    token: &str,
) -> anyhow::Result<()> {
    let replica = cluster.replica();
    if !replica.is_initialized().await? {
        let members = std::collections::BTreeMap::from([(identity.node_id, cluster.info.clone())]);
        replica
            .initialize(members)
            .await
            .context("initializing the cluster")?;
    }
    cluster
        .init_cluster_state(identity.cluster_id.clone(), token)
        .await
        .map_err(|e| anyhow::anyhow!("recording the cluster's join token: {e}"))?;
    seal_restored_state(cluster, config.data_dir()).await?;
    let path = config.data_dir().join(JOIN_TOKEN_FILE);
    if !path.exists() {
        write_private(&path, &format!("{token}\n"))?;
        println!(
            "stackd: new cluster {} started. Join another node to it with:\n  stackd serve --data-dir <DIR> --api-addr <IP:PORT> --cluster-addr <IP:PORT> --join {} --token {}",
            identity.cluster_id, cluster.info.cluster_addr, token
        );
    }
    bootstrap_acl(config, cluster).await
}

/// The founding node's first management token: made once, written with mode 0600 into the
/// data dir as `bootstrap-token` before it is recorded (so a crash in between records the same
/// one on the next start), and printed once.
async fn bootstrap_acl(config: &Config, cluster: &Cluster) -> anyhow::Result<()> {
    if cluster.state().acl().bootstrapped() {
        return Ok(());
    }
    let path = config.data_dir().join(BOOTSTRAP_TOKEN_FILE);
    let (secret, new) = match std::fs::read_to_string(&path) {
        Ok(s) => (s.trim().to_string(), false),
        Err(_) => {
            let secret = crate::auth::new_secret();
            write_private(&path, &format!("{secret}\n"))?;
            (secret, true)
        }
    };
    let cmd = raft::command::AclCmd::Bootstrap {
        accessor_id: crate::auth::new_accessor_id(),
        secret_sha256: crate::auth::secret_digest(&secret),
    };
    cluster
        .write(cmd, None)
        .await
        .map_err(|e| anyhow::anyhow!("recording the bootstrap token: {e}"))?;
    if new {
        println!(
            "stackd: the management token (every right; kept in {}, mode 0600):\n  export STACKD_TOKEN={secret}",
            path.display()
        );
    }
    Ok(())
}

/// Writes `text` to `path` readable by its owner only: created under another name with mode
/// 0600, then renamed, so it is never readable by others nor seen half-written.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// A join token file written by an earlier build, readable by others, is made readable by its
/// owner only.
fn tighten_join_token(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => info!(path = %path.display(), "join token file made readable by its owner only"),
        Err(e) => {
            warn!(error = %e, path = %path.display(), "cannot restrict the join token file to its owner")
        }
    }
}

/// Background: the leader's duties, the gossip feed, the membership and removal watchers
/// and the presence lease.
fn stage_background(
    config: &Config,
    cluster: &Arc<Cluster>,
    removed: &tokio::sync::watch::Receiver<Option<String>>,
    life: &mut Lifecycle,
) {
    info!("start-up stage: background tasks");
    let stop = life.background.clone();
    life.spawn(
        "leader tasks",
        cluster.clone().run_leader_tasks(stop.clone()),
    );
    life.spawn(
        "gossip feed",
        cluster.clone().run_gossip_feed(
            life.inflight.clone(),
            life.hub.connections.clone(),
            stop.clone(),
        ),
    );
    life.spawn(
        "membership watch",
        cluster.clone().watch_membership(stop.clone()),
    );
    life.spawn("key sync", cluster.clone().sync_node_keys(stop.clone()));
    if !config.services.is_empty() {
        let entries = config.services.clone();
        life.spawn(
            "service registrations",
            crate::checks::register_configured(cluster.clone(), entries, stop.clone()),
        );
    }
    let data_dir = config.data_dir().to_path_buf();
    life.spawn(
        "removal watch",
        remember_removal(removed.clone(), data_dir, stop.clone()),
    );
    life.spawn(
        "audit log",
        cluster.audit().clone().run(cluster.clone(), stop.clone()),
    );
    let replica = cluster.replica().clone();
    let limit = config.raft.snapshot_every_log_bytes;
    let by_size = stop.clone();
    life.spawn("snapshots by log size", async move {
        let every = Duration::from_secs(1);
        by_size
            .run_until_cancelled(replica.snapshot_by_log_bytes(limit, every))
            .await;
    });
    let presence = life.hub.clone().run_presence(cluster.clone(), stop);
    life.spawn("presence lease", presence);
}

/// Remembers a removal, so a restart from this data dir stops at once. Shutdown records it
/// too, so it does not hang on this task having run first.
async fn remember_removal(
    mut removed: tokio::sync::watch::Receiver<Option<String>>,
    data_dir: std::path::PathBuf,
    stop: CancellationToken,
) {
    tokio::select! {
        // A removal already reported wins over a shutdown under way.
        biased;
        r = removed.wait_for(|r| r.is_some()) => {
            if let Ok(why) = r {
                let why = why.clone().unwrap_or_default();
                record_removal(&data_dir, &why);
            }
        }
        _ = stop.cancelled() => {}
    }
}

/// API: the HTTP listener and the routes (the WebSocket API among them).
async fn stage_api(
    config: &Config,
    cluster: &Arc<Cluster>,
    life: &mut Lifecycle,
) -> anyhow::Result<(std::net::SocketAddr, Arc<AppState>)> {
    info!(addr = %config.api.addr, "start-up stage: API");
    if config.api.insecure_no_auth {
        warn!(
            "AUTHENTICATION IS OFF (api.insecure_no_auth): anyone who reaches {} owns the cluster",
            config.api.addr
        );
    }
    let listener = tokio::net::TcpListener::bind(config.api.addr)
        .await
        .with_context(|| format!("binding API address {}", config.api.addr))?;
    let api_addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        cluster: cluster.clone(),
        metrics: Arc::new(Metrics::new()),
        inflight: life.inflight.clone(),
        probes: Arc::new(Semaphore::new(config.api.max_inflight_probes)),
        hub: life.hub.clone(),
        db: life.db.clone(),
        requests: life.tasks.requests.clone(),
        abandon: life.abandon_requests.clone(),
        rate: Arc::new(crate::rate::RateLimits::new(&config.rate)),
    });
    life.tasks.background.spawn(crate::samples::Samples::run(
        state.clone(),
        life.background.clone(),
    ));
    let app = api::router(state.clone());
    let stop = life.stop_accepting.clone();
    let timeouts = crate::http_server::Timeouts {
        header_read: Duration::from_millis(config.api.header_read_timeout_ms),
        write: Duration::from_millis(config.api.write_timeout_ms),
    };
    let metrics = state.metrics.clone();
    let tls = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(cert), Some(key)) => Some(crate::api_tls::server_config(cert, key)?),
        _ if config.api.tls_from_cluster_ca => Some(cluster_ca_tls(config, cluster)?),
        _ => None,
    };
    let tasks = life.tasks.background.clone();
    let api = serve_api(listener, tls, app, timeouts, metrics, stop, tasks);
    life.api_task = Some(life.tasks.background.spawn(api));
    // Here rather than with the other duties: it counts its checks in the API's metrics.
    life.spawn(
        "health checks",
        crate::checks::run(
            cluster.clone(),
            state.metrics.clone(),
            life.background.clone(),
        ),
    );
    stage_proxies(config, cluster, &state, timeouts, life).await?;
    Ok((api_addr, state))
}

/// Serves the API on `listener` (over TLS when `tls` is given, its handshakes tasks of
/// `tasks`) until `stop`.
async fn serve_api(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    timeouts: crate::http_server::Timeouts,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let api_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match tls {
        Some(tls) => {
            info!(addr = %api_addr, "HTTPS API listening (TLS)");
            let listener =
                match crate::api_tls::TlsListener::new(listener, tls, stop.clone(), &tasks) {
                    Ok(l) => l,
                    Err(e) => return warn!(error = %e, "HTTPS API did not start"),
                };
            crate::http_server::serve(listener, app, timeouts, metrics, stop).await
        }
        None => {
            info!(addr = %api_addr, "HTTP API listening");
            crate::http_server::serve(listener, app, timeouts, metrics, stop).await
        }
    }
}

/// The gateway and the Redis protocol's listener, when configured.
async fn stage_proxies(
    config: &Config,
    cluster: &Arc<Cluster>,
    state: &Arc<AppState>,
    timeouts: crate::http_server::Timeouts,
    life: &mut Lifecycle,
) -> anyhow::Result<()> {
    if let Some(addr) = config.gateway.addr {
        let (_, serve) = crate::gateway::bind(
            addr,
            config.gateway.threads,
            cluster.clone(),
            state.metrics.clone(),
            timeouts,
            life.tasks.requests.clone(),
            life.stop_accepting.clone(),
        )
        .await?;
        life.tasks.background.spawn(serve);
    }
    if let Some(addr) = config.resp.addr {
        let (_, serve) = crate::resp::bind(
            addr,
            state.clone(),
            life.tasks.requests.clone(),
            life.stop_accepting.clone(),
        )
        .await?;
        life.tasks.background.spawn(serve);
    }
    Ok(())
}

/// What a started node runs, and the signals that stop it, in the order shutdown uses them.
struct Lifecycle {
    /// Cancelled first: the HTTP server stops accepting and finishes the requests under way.
    stop_accepting: CancellationToken,
    /// Cancelled when requests outlive [`STOP_WITHIN`]: they are answered 503.
    abandon_requests: CancellationToken,
    /// The WebSocket connections, drained second.
    hub: Arc<Hub>,
    /// Cancelled third: the background duties stop.
    background: CancellationToken,
    /// The HTTP server (stopped first), once the API stage started it.
    api_task: Option<JoinHandle<()>>,
    /// The background duties, by name.
    duties: Vec<(&'static str, JoinHandle<()>)>,
    tasks: NodeTasks,
    inflight: Arc<Semaphore>,
    replica: Replica,
    /// Gossip stops last, so the others see this node leave only once it has.
    gossip_shutdown: CancellationToken,
    /// Spawned by the transport; counted among the background tasks while it runs.
    gossip_task: JoinHandle<()>,
    gossip_counted: TaskTrackerToken,
    db: Db,
}

impl Lifecycle {
    fn new(
        cluster: &Cluster,
        hub: Arc<Hub>,
        gossip_shutdown: CancellationToken,
        gossip_task: JoinHandle<()>,
        db: Db,
    ) -> Self {
        let tasks = NodeTasks {
            websockets: hub.tasks.clone(),
            reads: cluster.read_rounds().clone(),
            ..NodeTasks::default()
        };
        Lifecycle {
            stop_accepting: CancellationToken::new(),
            abandon_requests: CancellationToken::new(),
            hub,
            background: CancellationToken::new(),
            api_task: None,
            duties: Vec::new(),
            gossip_counted: tasks.background.token(),
            tasks,
            inflight: Arc::new(Semaphore::new(cluster.config().api.max_inflight_requests)),
            replica: cluster.replica().clone(),
            gossip_shutdown,
            gossip_task,
            db,
        }
    }

    /// Starts a background duty, stopped by [`Lifecycle::background`].
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.duties.push((name, self.tasks.background.spawn(task)));
    }

    /// Stops everything in order, logging each step; `quiet` runs once no task of the node
    /// is left, before Raft shuts down.
    async fn stop(self, quiet: impl FnOnce()) {
        info!("shutting down: stopping accepting API requests");
        self.stop_accepting.cancel();
        if let Some(mut api) = self.api_task {
            if tokio::time::timeout(STOP_WITHIN, &mut api).await.is_err() {
                warn!(
                    requests = self.tasks.requests.len(),
                    "HTTP requests still running after {STOP_WITHIN:?}; answering them 503"
                );
                self.abandon_requests.cancel();
                stop_task("HTTP server", api, ABANDON_WITHIN).await;
            }
        }
        drain("HTTP requests", &self.tasks.requests, ABANDON_WITHIN).await;
        info!("shutting down: draining WebSockets");
        self.hub.drain(STOP_WITHIN, ABANDON_WITHIN).await;
        info!("shutting down: stopping background tasks");
        self.background.cancel();
        for (name, task) in self.duties {
            stop_task(name, task, STOP_WITHIN).await;
        }
        drain("ReadIndex rounds", &self.tasks.reads, STOP_WITHIN).await;
        quiet();
        info!("shutting down: raft");
        if let Err(e) = self.replica.shutdown().await {
            warn!(error = %e, "raft shutdown failed");
        }
        info!("shutting down: leaving gossip");
        self.gossip_shutdown.cancel();
        stop_task("gossip", self.gossip_task, Duration::from_secs(2)).await;
        drop(self.gossip_counted);
        drain("background tasks", &self.tasks.background, ABANDON_WITHIN).await;
        // RocksDB closes as its last handle drops: the state machine's and the log store's
        // go with Raft, the API's with the HTTP server's last connection; this is the node's
        // own. Shutdown returns once it is closed, so the data dir can be opened again at once.
        info!("shutting down: closing RocksDB");
        let db = self.db.downgrade();
        drop(self.db);
        wait_closed(db).await;
    }
}

/// Waits (up to [`STOP_WITHIN`]) until no handle of RocksDB is left, which closes it; a
/// handle that outlives that is named in a warning. Nothing signals the last drop, so this
/// looks every 10 ms.
async fn wait_closed(db: storage::WeakDb) {
    let deadline = tokio::time::Instant::now() + STOP_WITHIN;
    while db.upgrade().is_some() {
        if tokio::time::Instant::now() >= deadline {
            warn!(
                "RocksDB is still open {STOP_WITHIN:?} after the node stopped: a task outlived it"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits up to `within` for a task to end; aborts it, with a warning naming it, if it does
/// not. Dropping a task that did not stop releases what it holds (RocksDB handles among
/// them), so the data dir can be opened again.
async fn stop_task(name: &str, mut task: JoinHandle<()>, within: Duration) {
    if tokio::time::timeout(within, &mut task).await.is_err() {
        warn!(
            task = name,
            "{name} did not stop within {within:?}; aborting it"
        );
        task.abort();
        let _ = task.await;
    }
}

/// Closes `tracker` and waits up to `within` for its tasks to end; warns, naming `what`, if
/// some are left.
async fn drain(what: &str, tracker: &TaskTracker, within: Duration) {
    tracker.close();
    if tokio::time::timeout(within, tracker.wait()).await.is_err() {
        warn!(
            tasks = tracker.len(),
            "{what} did not stop within {within:?}"
        );
    }
}

/// Writes the removal message into the data dir (once), where the next start finds it.
fn record_removal(data_dir: &std::path::Path, why: &str) {
    let path = data_dir.join(REMOVED_FILE);
    if path.exists() {
        return;
    }
    tracing::error!("{why}");
    if let Err(e) = std::fs::write(&path, format!("{why}\n")) {
        warn!(error = %e, path = %path.display(), "cannot record the removal in the data dir");
    }
}

fn id_is_founder(db: &Db) -> bool {
    matches!(db.meta_get("founder"), Ok(Some(_)))
}

/// Asks a member to admit this node; retries while the cluster has no leader.
async fn join_cluster(
    join: &str,
    token: &str,
    info: &NodeInfo,
    local_ip: std::net::IpAddr,
    public_key: &[u8],
) -> anyhow::Result<transport::JoinGranted> {
    let fp = tls::token_fingerprint(token).context("bad --token")?;
    let t = Transport::joining(fp, local_ip, Limits::default())?;
    let req = RpcRequest::JoinWithKey {
        token: token.to_string(),
        node: info.clone(),
        public_key: public_key.to_vec(),
    };
    let mut last_err = String::new();
    for attempt in 1..=30 {
        match t.call(join, &req, Duration::from_secs(10)).await {
            Ok(RpcResponse::Joined(Ok(a))) => return Ok(a),
            Ok(RpcResponse::Joined(Err(transport::ServiceError::Refused(m)))) => {
                bail!("join refused by {join}: {m}")
            }
            Ok(RpcResponse::Joined(Err(e))) => last_err = e.to_string(),
            Ok(RpcResponse::Refused(m)) => bail!("join refused by {join}: {m}"),
            Ok(other) => bail!("unexpected answer from {join}: {other:?}"),
            Err(transport::Error::Connect { reason, .. }) if reason.contains("certificate") => {
                bail!("join refused: {join} is not the cluster named in the token: {reason}")
            }
            Err(e) => last_err = e.to_string(),
        }
        info!(attempt, error = %last_err, "join not accepted yet; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("could not join through {join}: {last_err}")
}

/// TLS for the API with a certificate from the cluster CA (`api.tls_from_cluster_ca`); writes
/// the CA's certificate to the data dir for clients to trust.
fn cluster_ca_tls(
    config: &Config,
    cluster: &Arc<Cluster>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let advertised = config.advertise_api_addr();
    let host = advertised
        .rsplit_once(':')
        .map_or(advertised.as_str(), |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
    let unspecified = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    if !unspecified && !names.iter().any(|n| n == host) {
        names.push(host.to_string());
    }
    for n in &config.api.tls_names.0 {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let pem = crate::api_tls::pem_certificate(&cluster.ca_cert_der());
    std::fs::write(config.data_dir().join(crate::api_tls::API_CA_FILE), pem)
        .context("writing the API CA certificate")?;
    crate::api_tls::cluster_ca_config(cluster.clone(), names)
}

/// After `stackd restore`, the restored state sits in the state machine but in no log entry, so
/// a node joining by log replay would miss it. Before the first node admits anyone, it takes a
/// snapshot (which holds the restored state) and purges the log behind it: every later member
/// starts from that snapshot. The restore is recorded in the audit log (once, also when a crash
/// repeats this), then the marker left by the restore is removed.
async fn seal_restored_state(cluster: &Cluster, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let marker = data_dir.join(crate::backup::RESTORED_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    let (replica, id) = (cluster.replica(), cluster.id);
    let marker_bytes = std::fs::read(&marker).context("reading the restore marker")?;
    let restored_ms = std::fs::metadata(&marker)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let wait = Duration::from_secs(30);
    replica
        .wait_until(
            wait,
            move |m| m.leader == Some(id) && m.applied.is_some(),
            "the restored node leads",
        )
        .await
        .context("waiting for the restored node to lead")?;
    replica
        .snapshot()
        .await
        .context("snapshotting the restored state")?;
    let applied = replica.metrics().applied;
    let m = replica
        .wait_until(
            wait,
            move |m| m.snapshot >= applied,
            "a snapshot of the restored state",
        )
        .await
        .context("waiting for the snapshot of the restored state")?;
    let upto = m.snapshot.unwrap_or(0);
    replica
        .purge_log(upto)
        .await
        .context("purging the log behind the restored state")?;
    replica
        .wait_until(
            wait,
            move |m| m.purged >= Some(upto),
            "the log purged behind the restored state",
        )
        .await
        .context("waiting for the log purge")?;
    let event = crate::audit::AuditEvent {
        kind: "restored".into(),
        actor: "stackd restore".into(),
        source: "local".into(),
        node: id,
        at_ms: restored_ms,
        count: None,
        detail: serde_json::from_slice(&marker_bytes).unwrap_or(serde_json::Value::Null),
    };
    let seed = format!(
        "restore:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&marker_bytes))
    );
    crate::audit::write_committed(cluster, &event, &seed).await?;
    std::fs::remove_file(&marker)?;
    info!(snapshot_index = upto, "restored state sealed in a snapshot");
    Ok(())
}
