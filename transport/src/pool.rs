//! Outgoing connections to peers: one per (address, expected node), reused while it is open,
//! with at most one handshake in flight per peer.
//!
//! A handshake runs in a task of its own, bounded by the connect timeout, and every caller
//! that needs the peer meanwhile waits for that same handshake. A caller that gives up early
//! (a heartbeat allows itself one heartbeat interval) does not abandon the handshake: the next
//! caller finds the connection ready. Without this, each short-lived caller started a handshake
//! and dropped it unfinished, so a peer slower than the shortest caller's deadline (a node that
//! just started, or a busy one) was never reached, and the dropped handshakes made both sides
//! busier still.
//!
//! The handshake tasks are tracked: [`Pool::shutdown`] (when the endpoint stops serving)
//! cancels them and waits for them to end; dropping the pool cancels them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use quinn::{Connection, Endpoint};
use raft::NodeId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::endpoint::explain;
use crate::tls;

/// Which certificate a connection expects the server to present.
pub(crate) type ConnKey = (SocketAddr, Option<NodeId>);

type Handshake = Shared<BoxFuture<'static, Result<Connection, String>>>;

enum Slot {
    Open(Connection),
    Connecting(Handshake),
}

/// What the transport has seen of one peer address, for `/v1/cluster` and the metrics.
#[derive(Clone, Debug, Default)]
pub struct PeerStats {
    /// The node expected at the address, when calls named one.
    pub node: Option<NodeId>,
    /// Handshakes started.
    pub connects: u64,
    /// Handshakes that failed or timed out.
    pub connect_failures: u64,
    /// Handshakes failed in a row since the last one that succeeded.
    pub failing_since_connected: u64,
    /// Open connections dropped because the peer stopped answering.
    pub connections_dropped: u64,
    /// The last connect error and when it happened.
    pub last_error: Option<(String, Instant)>,
    /// When the last handshake succeeded.
    pub last_connected: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<ConnKey, Slot>,
    stats: BTreeMap<SocketAddr, PeerStats>,
}

pub(crate) struct Pool {
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    connect_timeout: Duration,
    /// The QUIC receive window a connection gets once connected (a member's endpoint calls
    /// members only); `None` keeps the endpoint's.
    window: Option<u32>,
    inner: Arc<Mutex<Inner>>,
    handshakes: TaskTracker,
    /// The runtime the pool was made on, where handshakes run: a caller may be on a runtime
    /// of its own (a listener's thread) that ends before the handshake would.
    runtime: tokio::runtime::Handle,
    stop: CancellationToken,
}

impl Pool {
    pub(crate) fn new(
        endpoint: Endpoint,
        client_config: quinn::ClientConfig,
        connect_timeout: Duration,
        window: Option<u32>,
    ) -> Self {
        Self {
            endpoint,
            client_config,
            connect_timeout,
            window,
            inner: Arc::default(),
            handshakes: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            stop: CancellationToken::new(),
        }
    }

    /// Cancels the handshakes under way and waits for their tasks to end; a handshake started
    /// later fails at once.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.handshakes.close();
        self.handshakes.wait().await;
    }

    /// A live connection for `key`: the open one, the handshake under way, or a new handshake.
    /// The error is the reason the handshake failed.
    pub(crate) async fn get(&self, key: ConnKey) -> Result<Connection, String> {
        let handshake = {
            let mut inner = self.inner.lock().expect("pool lock");
            match inner.slots.get(&key) {
                Some(Slot::Open(c)) if c.close_reason().is_none() => return Ok(c.clone()),
                Some(Slot::Connecting(h)) => h.clone(),
                _ => self.start_handshake(&mut inner, key),
            }
        };
        handshake.await
    }

    /// Starts a handshake in its own task and records it in `key`'s slot. The task files its
    /// result: the open connection, or an empty slot so that the next caller tries again.
    fn start_handshake(&self, inner: &mut Inner, key: ConnKey) -> Handshake {
        let (addr, node) = key;
        let stats = inner.stats.entry(addr).or_default();
        stats.connects += 1;
        if node.is_some() {
            stats.node = node;
        }
        let connecting = self.endpoint.connect_with(
            self.client_config.clone(),
            addr,
            &tls::server_name_for(node),
        );
        let timeout = self.connect_timeout;
        let window = self.window;
        let shared = self.inner.clone();
        let stop = self.stop.clone();
        let task = self.handshakes.spawn_on(
            async move {
                let res = match connecting {
                    Err(e) => Err(e.to_string()),
                    Ok(connecting) => {
                        match stop
                            .run_until_cancelled(tokio::time::timeout(timeout, connecting))
                            .await
                        {
                            None => Err("the transport is shutting down".to_string()),
                            Some(Err(_)) => Err("connect timed out".to_string()),
                            Some(Ok(Err(e))) => Err(explain(&e)),
                            Some(Ok(Ok(conn))) => {
                                if let Some(w) = window {
                                    conn.set_receive_window(w.into());
                                }
                                Ok(conn)
                            }
                        }
                    }
                };
                record_handshake(&mut shared.lock().expect("pool lock"), key, &res);
                res
            },
            &self.runtime,
        );
        let handshake: Handshake = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("connect task failed: {e}")))
        }
        .boxed()
        .shared();
        inner.slots.insert(key, Slot::Connecting(handshake.clone()));
        handshake
    }

    /// Drops `conn` from the pool (not any newer connection to the same peer), because the
    /// peer stopped answering on it: the next call connects afresh.
    pub(crate) fn drop_connection(&self, key: ConnKey, conn: &Connection, why: &str) {
        let mut inner = self.inner.lock().expect("pool lock");
        let ours = matches!(inner.slots.get(&key), Some(Slot::Open(c)) if c.stable_id() == conn.stable_id());
        if ours {
            inner.slots.remove(&key);
            inner.stats.entry(key.0).or_default().connections_dropped += 1;
            warn!(addr = %key.0, node = ?key.1, why, "dropping a cluster connection");
            conn.close(0u32.into(), b"peer stopped answering");
        }
    }

    /// Per peer address: what the transport has seen.
    pub(crate) fn stats(&self) -> BTreeMap<SocketAddr, PeerStats> {
        self.inner.lock().expect("pool lock").stats.clone()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Records how a handshake to `key` ended: the open connection in the pool and the peer's
/// statistics, or the failure (and no slot, so the next call connects afresh).
fn record_handshake(inner: &mut Inner, key: ConnKey, res: &Result<Connection, String>) {
    let (addr, node) = key;
    let stats = inner.stats.entry(addr).or_default();
    match res {
        Ok(conn) => {
            if stats.failing_since_connected > 0 {
                info!(
                    %addr, ?node, failures = stats.failing_since_connected,
                    "cluster connection established after failed attempts"
                );
            }
            stats.failing_since_connected = 0;
            stats.last_connected = Some(Instant::now());
            inner.slots.insert(key, Slot::Open(conn.clone()));
        }
        Err(reason) => {
            stats.connect_failures += 1;
            stats.failing_since_connected += 1;
            stats.last_error = Some((reason.clone(), Instant::now()));
            debug!(%addr, ?node, %reason, "cluster connection failed");
            inner.slots.remove(&key);
        }
    }
}
