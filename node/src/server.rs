//! Starting and stopping a node: identity, storage, Raft, transport, API and background work.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::async_runtime::WatchReceiver;
use raft::{LogStore, NodeId, NodeInfo, StateMachine};
use serde::{Deserialize, Serialize};
use storage::{codec, Db};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use transport::tls::NodeKey;
use transport::{
    tls, ClusterTls, Gossip, GossipConfig, Limits, Network, RpcRequest, RpcResponse, Transport,
};

use crate::api::{self, AppState};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;

/// Who this node is, persisted in its data dir before it takes part in any cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    node_id: NodeId,
    cluster_id: String,
}

const IDENTITY_KEY: &str = "node_identity";
const JOIN_TOKEN_FILE: &str = "join-token";
/// Written when the cluster answered that this node was removed; holds the message.
const REMOVED_FILE: &str = "removed";

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub cluster: Arc<Cluster>,
    pub api_addr: std::net::SocketAddr,
    removed: tokio::sync::watch::Receiver<Option<String>>,
    data_dir: std::path::PathBuf,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Gossip stops last, so the others see this node leave only once it has.
    gossip_shutdown: CancellationToken,
    gossip_task: tokio::task::JoinHandle<()>,
    /// Owns the WebSocket connections and their tasks.
    hub: Arc<crate::realtime::Hub>,
}

impl Node {
    /// Starts a node from `config`: restarts the member in the data dir, or starts a new
    /// cluster, or joins one (`--join`). A config that [`Config::validate`] refuses is an
    /// error.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.validate()?;
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
        let db = Db::open(&config.data_dir().join("db")).context("opening RocksDB")?;
        let tls_dir = config.data_dir().join("tls");
        let info = NodeInfo {
            api_addr: config.advertise_api_addr(),
            cluster_addr: config.advertise_cluster_addr(),
        };

        let existing: Option<Identity> = db
            .meta_get(IDENTITY_KEY)?
            .map(|b| codec::decode(&b))
            .transpose()?;
        let (identity, tls, founding_token) = match existing {
            Some(id) => {
                if config.cluster.join.is_some() {
                    warn!(
                        "--join is ignored: the data dir already holds node {}",
                        id.node_id
                    );
                }
                let tls = ClusterTls::load(&tls_dir)?.context(
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
                let token = std::fs::read_to_string(config.data_dir().join(JOIN_TOKEN_FILE)).ok();
                (id, tls, token.filter(|_| id_is_founder(&db)))
            }
            None => match (&config.cluster.join, &config.cluster.token) {
                (Some(join), Some(token)) => {
                    // The node's private key is made here and never leaves it; the leader
                    // signs a certificate for its public half.
                    let key = NodeKey::generate()?;
                    let granted = join_cluster(join, token, &info, &key.public_key).await?;
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
                    tls.save(&tls_dir)?;
                    let id = Identity {
                        node_id: granted.node_id,
                        cluster_id: granted.cluster_id,
                    };
                    db.meta_put_sync(IDENTITY_KEY, &codec::encode(&id)?)?;
                    info!(node_id = id.node_id, cluster_id = %id.cluster_id, "joined cluster");
                    (id, tls, None)
                }
                _ => {
                    let cluster_id = hex::encode(rand::random::<[u8; 8]>());
                    let tls = ClusterTls::found(&cluster_id, 1)?;
                    tls.save(&tls_dir)?;
                    let token = tls::new_join_token(tls.ca_fingerprint());
                    let id = Identity {
                        node_id: 1,
                        cluster_id,
                    };
                    db.meta_put_sync("founder", b"1")?;
                    db.meta_put_sync(IDENTITY_KEY, &codec::encode(&id)?)?;
                    info!(cluster_id = %id.cluster_id, "starting a new cluster as node 1");
                    (id, tls, Some(token))
                }
            },
        };

        let raft_config = raft::config::raft_config(
            config.raft.heartbeat_interval_ms,
            config.raft.election_timeout_ms,
            config.raft.snapshot_every_entries,
        )?;
        let log_store = LogStore::new(db.clone());
        let sm = StateMachine::open(db.clone(), &config.data_dir().join("snapshots"))?;
        let state = sm.state();
        let live = sm.live_sender();
        let transport = Transport::bind(config.cluster.addr, &tls, Limits::default())
            .with_context(|| format!("binding cluster address {}", config.cluster.addr))?;
        let raft = raft::Raft::new(
            identity.node_id,
            raft_config,
            Network::new(transport.clone()),
            log_store,
            sm,
        )
        .await
        .context("starting raft")?;

        let gossip_advertise = tokio::net::lookup_host(config.advertise_gossip_addr().as_str())
            .await
            .ok()
            .and_then(|mut a| a.next())
            .with_context(|| {
                format!(
                    "resolving the advertised gossip address {}",
                    config.advertise_gossip_addr()
                )
            })?;
        let gossip_shutdown = CancellationToken::new();
        let (gossip, gossip_task) = Gossip::start(
            GossipConfig {
                node_id: identity.node_id,
                bind: config.gossip_addr(),
                advertise: gossip_advertise,
                key: tls.gossip_key(),
            },
            gossip_shutdown.clone(),
        )
        .await
        .with_context(|| format!("binding gossip address {}", config.gossip_addr()))?;
        // Until the node is fully started, a failed start also stops gossip.
        let gossip_guard = gossip_shutdown.clone().drop_guard();
        let cluster = Cluster::new(
            identity.node_id,
            info.clone(),
            raft.clone(),
            state,
            transport.clone(),
            tls,
            config.clone(),
            gossip,
        );
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(transport.clone().serve(
            raft.clone(),
            cluster.clone(),
            shutdown.clone(),
        )));

        let uninitialized_state = cluster
            .state
            .read()
            .expect("state lock")
            .meta
            .cluster_id
            .is_none();
        if let Some(token) = founding_token.as_ref().filter(|_| uninitialized_state) {
            if !raft.is_initialized().await? {
                raft.initialize(std::collections::BTreeMap::from([(
                    identity.node_id,
                    info.clone(),
                )]))
                .await
                .context("initializing the cluster")?;
            }
            cluster
                .init_cluster_state(identity.cluster_id.clone(), token)
                .await
                .map_err(|e| anyhow::anyhow!("recording the cluster's join token: {e}"))?;
            seal_restored_state(&raft, identity.node_id, config.data_dir()).await?;
            let path = config.data_dir().join(JOIN_TOKEN_FILE);
            if !path.exists() {
                // Written whole under another name, then renamed: whoever waits for the file
                // (scripts joining more nodes) never reads it empty or cut short.
                let partial = path.with_extension("partial");
                std::fs::write(&partial, format!("{token}\n"))?;
                std::fs::rename(&partial, &path)?;
                println!(
                    "stackd: new cluster {} started. Join another node to it with:\n  stackd serve --data-dir <DIR> --api-addr <IP:PORT> --cluster-addr <IP:PORT> --join {} --token {}",
                    identity.cluster_id, info.cluster_addr, token
                );
            }
        }

        // A restart after a restore that stopped before sealing finishes it now.
        seal_restored_state(&raft, identity.node_id, config.data_dir()).await?;
        tasks.push(tokio::spawn(
            cluster.clone().run_leader_tasks(shutdown.clone()),
        ));
        let inflight = Arc::new(Semaphore::new(config.api.max_inflight_requests));
        tasks.push(tokio::spawn(
            cluster
                .clone()
                .run_gossip_feed(inflight.clone(), shutdown.clone()),
        ));
        tasks.push(tokio::spawn(
            cluster.clone().watch_membership(shutdown.clone()),
        ));
        let removed = transport.removed();
        {
            // Remember a removal, so a restart from this data dir stops at once. Shutdown
            // records it too, so it does not hang on this task having run first.
            let mut removed = removed.clone();
            let data_dir = config.data_dir().to_path_buf();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
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
            }));
        }

        let listener = tokio::net::TcpListener::bind(config.api.addr)
            .await
            .with_context(|| format!("binding API address {}", config.api.addr))?;
        let api_addr = listener.local_addr()?;
        let hub = crate::realtime::Hub::new(live, config.ws.max_connections);
        tasks.push(tokio::spawn(
            hub.clone().run_presence(cluster.clone(), shutdown.clone()),
        ));
        let app = api::router(Arc::new(AppState {
            cluster: cluster.clone(),
            metrics: Arc::new(Metrics::new()),
            inflight,
            hub: hub.clone(),
            db: db.clone(),
        }));
        let api_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            info!(addr = %api_addr, "HTTP API listening");
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(api_shutdown.cancelled_owned())
                .await
            {
                warn!(error = %e, "HTTP API stopped with an error");
            }
        }));
        gossip_guard.disarm();
        Ok(Node {
            cluster,
            api_addr,
            removed,
            data_dir: config.data_dir().to_path_buf(),
            shutdown,
            tasks,
            gossip_shutdown,
            gossip_task,
            hub,
        })
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

    /// Stops in order: stop accepting API requests, stop background work, shut Raft down,
    /// leave gossip, close the transport. RocksDB closes when the last handle drops.
    pub async fn shutdown(self) {
        // A leader hands over first, so the cluster does not wait out an election timeout.
        if self.cluster.raft.is_leader() {
            if let Some(to) = self.cluster.best_successor() {
                info!(to, "shutting down: transferring leadership");
                match self.cluster.transfer_leadership(to).await {
                    Ok(leader) => info!(leader, "leadership transferred"),
                    Err(e) => warn!(error = %e, "leadership transfer failed; shutting down anyway"),
                }
            }
        }
        info!("shutting down: stopping API and background tasks");
        self.shutdown.cancel();
        info!("shutting down: draining WebSockets");
        self.hub
            .drain(Duration::from_secs(5), Duration::from_secs(1))
            .await;
        for mut t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                // Dropping a task that did not stop releases what it holds (the API's
                // handle on RocksDB among them), so the data dir can be opened again.
                warn!("a background task did not stop within 5 s; aborting it");
                t.abort();
                let _ = t.await;
            }
        }
        let removal = self.removed.borrow().clone();
        if let Some(why) = removal {
            record_removal(&self.data_dir, &why);
        }
        let reads = self.cluster.read_rounds();
        reads.close();
        if tokio::time::timeout(Duration::from_secs(5), reads.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = reads.len(),
                "ReadIndex rounds did not stop within 5 s"
            );
        }
        info!("shutting down raft");
        if let Err(e) = self.cluster.raft.shutdown().await {
            warn!(error = %e, "raft shutdown failed");
        }
        info!("leaving gossip");
        self.gossip_shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.gossip_task).await;
        info!("node stopped");
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
    public_key: &[u8],
) -> anyhow::Result<transport::JoinGranted> {
    let fp = tls::token_fingerprint(token).context("bad --token")?;
    let t = Transport::joining(fp, Limits::default())?;
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

/// After `stackd restore`, the restored state sits in the state machine but in no log entry, so
/// a node joining by log replay would miss it. Before the first node admits anyone, it takes a
/// snapshot (which holds the restored state) and purges the log behind it: every later member
/// starts from that snapshot. Then the marker left by the restore is removed.
async fn seal_restored_state(
    raft: &raft::Raft,
    id: raft::NodeId,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let marker = data_dir.join(crate::backup::RESTORED_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    let wait = Some(Duration::from_secs(30));
    raft.wait(wait)
        .metrics(
            |m| m.current_leader == Some(id) && m.last_applied.is_some(),
            "the restored node leads",
        )
        .await
        .context("waiting for the restored node to lead")?;
    raft.trigger()
        .snapshot()
        .await
        .context("snapshotting the restored state")?;
    let applied = raft
        .metrics()
        .borrow_watched()
        .last_applied
        .map(|l| l.index);
    let m = raft
        .wait(wait)
        .metrics(
            |m| m.snapshot.map(|l| l.index) >= applied,
            "a snapshot of the restored state",
        )
        .await
        .context("waiting for the snapshot of the restored state")?;
    let upto = m.snapshot.map(|l| l.index).unwrap_or(0);
    raft.trigger()
        .purge_log(upto)
        .await
        .context("purging the log behind the restored state")?;
    raft.wait(wait)
        .metrics(
            |m| m.purged.map(|l| l.index) >= Some(upto),
            "the log purged behind the restored state",
        )
        .await
        .context("waiting for the log purge")?;
    std::fs::remove_file(&marker)?;
    info!(snapshot_index = upto, "restored state sealed in a snapshot");
    Ok(())
}
