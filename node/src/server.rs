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
use transport::{tls, ClusterTls, Limits, Network, RpcRequest, RpcResponse, Transport};

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

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub cluster: Arc<Cluster>,
    pub api_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Starts a node from `config`: restarts the member in the data dir, or starts a new
    /// cluster, or joins one (`--join`).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let db = Db::open(&config.data_dir.join("db")).context("opening RocksDB")?;
        let tls_dir = config.data_dir.join("tls");
        let info = NodeInfo {
            api_addr: config.advertise_api_addr.clone(),
            cluster_addr: config.advertise_cluster_addr.clone(),
        };

        let existing: Option<Identity> = db
            .meta_get(IDENTITY_KEY)?
            .map(|b| codec::decode(&b))
            .transpose()?;
        let (identity, tls, founding_token) = match existing {
            Some(id) => {
                if config.join.is_some() {
                    warn!(
                        "--join is ignored: the data dir already holds node {}",
                        id.node_id
                    );
                }
                let tls = ClusterTls::load(&tls_dir)?
                    .context("data dir has an identity but no TLS credentials")?;
                info!(node_id = id.node_id, cluster_id = %id.cluster_id, "restarting member from its data dir");
                let token = std::fs::read_to_string(config.data_dir.join(JOIN_TOKEN_FILE)).ok();
                (id, tls, token.filter(|_| id_is_founder(&db)))
            }
            None => match (&config.join, &config.token) {
                (Some(join), Some(token)) => {
                    let accepted = join_cluster(join, token, &info).await?;
                    let tls = ClusterTls {
                        cert_der: accepted.cert_der,
                        key_der: accepted.key_der,
                    };
                    tls.save(&tls_dir)?;
                    let id = Identity {
                        node_id: accepted.node_id,
                        cluster_id: accepted.cluster_id,
                    };
                    db.meta_put_sync(IDENTITY_KEY, &codec::encode(&id)?)?;
                    info!(node_id = id.node_id, cluster_id = %id.cluster_id, "joined cluster");
                    (id, tls, None)
                }
                _ => {
                    let tls = ClusterTls::generate()?;
                    tls.save(&tls_dir)?;
                    let token = tls::new_join_token(tls.fingerprint());
                    let cluster_id = hex::encode(rand::random::<[u8; 8]>());
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
            config.heartbeat_interval_ms,
            config.election_timeout_ms,
            config.snapshot_every_entries,
        )?;
        let log_store = LogStore::new(db.clone());
        let sm = StateMachine::open(db.clone(), &config.data_dir.join("snapshots"))?;
        let state = sm.state();
        let live = sm.live_sender();
        let transport = Transport::bind(config.cluster_addr, &tls, Limits::default())
            .with_context(|| format!("binding cluster address {}", config.cluster_addr))?;
        let raft = raft::Raft::new(
            identity.node_id,
            raft_config,
            Network::new(transport.clone()),
            log_store,
            sm,
        )
        .await
        .context("starting raft")?;

        let cluster = Cluster::new(
            identity.node_id,
            info.clone(),
            raft.clone(),
            state,
            transport.clone(),
            tls,
            config.clone(),
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
            seal_restored_state(&raft, identity.node_id, &config.data_dir).await?;
            let path = config.data_dir.join(JOIN_TOKEN_FILE);
            if !path.exists() {
                std::fs::write(&path, format!("{token}\n"))?;
                println!(
                    "stackd: new cluster {} started. Join another node to it with:\n  stackd serve --data-dir <DIR> --api-addr <IP:PORT> --cluster-addr <IP:PORT> --join {} --token {}",
                    identity.cluster_id, info.cluster_addr, token
                );
            }
        }

        // A restart after a restore that stopped before sealing finishes it now.
        seal_restored_state(&raft, identity.node_id, &config.data_dir).await?;
        tasks.push(tokio::spawn(
            cluster.clone().run_leader_tasks(shutdown.clone()),
        ));

        let listener = tokio::net::TcpListener::bind(config.api_addr)
            .await
            .with_context(|| format!("binding API address {}", config.api_addr))?;
        let api_addr = listener.local_addr()?;
        let hub = crate::realtime::Hub::new(live, config.ws_max_connections, shutdown.clone());
        tasks.push(tokio::spawn(
            hub.clone().run_presence(cluster.clone(), shutdown.clone()),
        ));
        let app = api::router(Arc::new(AppState {
            cluster: cluster.clone(),
            metrics: Arc::new(Metrics::new()),
            inflight: Arc::new(Semaphore::new(config.max_inflight_requests)),
            hub,
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
        Ok(Node {
            cluster,
            api_addr,
            shutdown,
            tasks,
        })
    }

    /// Stops in order: stop accepting API requests, stop background work, shut Raft down,
    /// close the transport. RocksDB closes when the last handle drops.
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
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        info!("shutting down raft");
        if let Err(e) = self.cluster.raft.shutdown().await {
            warn!(error = %e, "raft shutdown failed");
        }
        info!("node stopped");
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
) -> anyhow::Result<transport::JoinAccepted> {
    let fp = tls::token_fingerprint(token).context("bad --token")?;
    let t = Transport::joining(fp, Limits::default())?;
    let req = RpcRequest::Join {
        token: token.to_string(),
        node: info.clone(),
    };
    let mut last_err = String::new();
    for attempt in 1..=30 {
        match t.call(join, &req, Duration::from_secs(10)).await {
            Ok(RpcResponse::Join(Ok(a))) => return Ok(a),
            Ok(RpcResponse::Join(Err(transport::ServiceError::Refused(m)))) => {
                bail!("join refused by {join}: {m}")
            }
            Ok(RpcResponse::Join(Err(e))) => last_err = e.to_string(),
            Ok(RpcResponse::Refused(m)) => bail!("join refused by {join}: {m}"),
            Ok(other) => bail!("unexpected answer from {join}: {other:?}"),
            Err(transport::Error::Connect { reason, .. }) if reason.contains("certificate") => {
                bail!(
                    "{join} is not the cluster named in the token (certificate mismatch): {reason}"
                )
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
