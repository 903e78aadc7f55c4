//! The QUIC endpoint of a node: outgoing calls over cached connections, and the server loop
//! that answers one request per bi-stream.
//!
//! The server loop runs each incoming connection, and each request on it, in a task of its
//! own, all tracked: when the loop stops, the endpoint is closed and these tasks are cancelled
//! and awaited, so none outlives the endpoint (or keeps the node's Raft handle, and with it
//! RocksDB, open). At most `Limits::max_connections` connections are served at once, each
//! with at most `Limits::max_concurrent_streams` requests in progress (one, for a connection
//! without a node certificate). What a peer may ask, and when its bytes are read and decoded,
//! is [`crate::admission`]'s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use quinn::{Connection, Endpoint};
use raft::network::{
    AppendRequest, PeerAnswer, PeerRpc, Snapshot, SnapshotMeta, SnapshotResponse, Vote,
};
use raft::{LogId, NodeId, NodeInfo, Replica, Request};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{PeerCheck, Refusal};
use crate::error::{Error, Result};
use crate::frame;
use crate::pool::{PeerStats, Pool};
use crate::rpc::{
    self, AdminDone, AdminOp, JoinGranted, NodeKeys, RpcRequest, RpcResponse, ServiceError, Written,
};
use crate::tls::{self, ClusterTls, Peer};

/// Limits of the transport, each with a documented default.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest single frame from a member (an append batch, a forwarded write): default
    /// 64 MiB. A frame's buffer grows as its bytes arrive, never from its announced length.
    pub max_frame_bytes: usize,
    /// Largest frame from a connection without a node certificate, which may only ask to
    /// join (a join request is a few hundred bytes): default 16 KiB.
    pub max_join_frame_bytes: usize,
    /// QUIC connection receive window (bytes a peer may send that were not read yet) of a
    /// connection without a node certificate, or whose certificate is not a member's; every
    /// connection starts with it: default 64 KiB.
    pub join_window_bytes: u32,
    /// QUIC connection receive window of a member connection, set once the peer's
    /// certificate passed the member check (on a request of its own): default 16 MiB.
    pub member_window_bytes: u32,
    /// Largest snapshot accepted from a leader: default 8 GiB.
    pub max_snapshot_bytes: u64,
    /// Snapshot chunk size on the wire: default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Concurrent streams a peer may open on one connection, and requests served at once on
    /// one connection: default 1024.
    pub max_concurrent_streams: u32,
    /// Incoming connections (members and joining nodes) served at once: default 1024; a
    /// connection beyond it is refused.
    pub max_connections: usize,
    /// Of those, connections without a node certificate (joining nodes): default 64; one
    /// beyond it is closed once its handshake shows it has no certificate.
    pub max_joining_connections: usize,
    /// How long a node without a certificate has to send its whole request: default 10 s.
    pub join_request_timeout: Duration,
    /// Connection attempt timeout: default 3 s.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 << 20,
            max_join_frame_bytes: 16 << 10,
            join_window_bytes: 64 << 10,
            member_window_bytes: 16 << 20,
            max_snapshot_bytes: 8 << 30,
            snapshot_chunk_bytes: 1 << 20,
            max_concurrent_streams: 1024,
            max_connections: 1024,
            max_joining_connections: 64,
            join_request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

fn transport_config(limits: &Limits) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Keep-alives keep idle member connections open and detect dead peers within the idle
    // timeout.
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    t.max_idle_timeout(Some(
        Duration::from_secs(5)
            .try_into()
            .expect("valid idle timeout"),
    ));
    // Members sit on one network. QUIC's default first guess of the round trip (333 ms) puts
    // the first retransmission of a lost handshake packet a second later; a leader that dials
    // a node that is just binding its port (it was admitted a moment before) would wait that
    // long. 100 ms retries after about a third of a second; the estimate adapts after the
    // first exchange.
    t.initial_rtt(Duration::from_millis(100));
    t.max_concurrent_bidi_streams(limits.max_concurrent_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    // What a peer may make this node buffer before it is known to be a member; raised for
    // members once they are (see `Limits`).
    t.receive_window(limits.join_window_bytes.into());
    Arc::new(t)
}

/// What a node serves to its peers besides the Raft RPCs themselves.
pub trait Service: Send + Sync + 'static {
    /// Applies a write forwarded by a follower (this node should be the leader).
    fn forward(&self, req: Request) -> impl Future<Output = Result<Written, ServiceError>> + Send;
    /// The leader's read index for a follower's linearizable read.
    fn read_index(&self) -> impl Future<Output = Result<LogId, ServiceError>> + Send;
    /// Admits a new node that presents a join token and its public key.
    fn join(
        &self,
        token: String,
        node: NodeInfo,
        public_key: Vec<u8>,
    ) -> impl Future<Output = Result<JoinGranted, ServiceError>> + Send;
    /// Runs an operation on Raft itself, forwarded by a member (this node should lead).
    fn admin(&self, op: AdminOp) -> impl Future<Output = Result<AdminDone, ServiceError>> + Send;
    /// The node keys pinned and the nodes removed in this node's applied state.
    fn node_keys(&self) -> NodeKeys;
}

/// A node's QUIC endpoint.
pub struct Transport {
    endpoint: Endpoint,
    pool: Pool,
    limits: Limits,
    /// Who is a member, for the peers this node serves and those it calls (`None` on a
    /// joining node's client-only endpoint, which serves no one and trusts the CA its token
    /// names).
    peers: Option<Arc<dyn PeerCheck>>,
    /// Set when a member answers that this node was removed from the cluster.
    removed: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// Peers refused at the TLS handshake, and the last reason.
    refused: AtomicU64,
    last_refusal: Mutex<Option<String>>,
}

impl Transport {
    /// Binds the cluster address as a member: serves peers and calls them with the cluster
    /// certificate; `peers` says who the members are.
    pub fn bind(
        addr: SocketAddr,
        tls: &ClusterTls,
        limits: Limits,
        peers: Arc<dyn PeerCheck>,
    ) -> Result<Arc<Self>> {
        let tc = transport_config(&limits);
        let endpoint = Endpoint::server(tls.server_config(tc.clone())?, addr)?;
        let client_config = tls.client_config(tc)?;
        Ok(Arc::new(Self::new(
            endpoint,
            client_config,
            limits,
            Some(peers),
        )))
    }

    fn new(
        endpoint: Endpoint,
        client_config: quinn::ClientConfig,
        limits: Limits,
        peers: Option<Arc<dyn PeerCheck>>,
    ) -> Self {
        // A member's outgoing connections reach members (checked before each call).
        let window = peers.as_ref().map(|_| limits.member_window_bytes);
        Self {
            pool: Pool::new(
                endpoint.clone(),
                client_config,
                limits.connect_timeout,
                window,
            ),
            endpoint,
            limits,
            peers,
            removed: Arc::new(tokio::sync::watch::channel(None).0),
            refused: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
        }
    }

    /// A client-only endpoint for a node that is not a member yet, pinning the cluster by the
    /// CA certificate fingerprint in its join token. It binds a free port on `local_ip` (the
    /// IP the node will listen on), so it can never hold the port the node binds next on
    /// another address of the machine.
    pub fn joining(
        fingerprint: [u8; 32],
        local_ip: std::net::IpAddr,
        limits: Limits,
    ) -> Result<Arc<Self>> {
        let tc = transport_config(&limits);
        let endpoint = Endpoint::client(SocketAddr::new(local_ip, 0))?;
        let client_config = tls::join_client_config(fingerprint, tc)?;
        Ok(Arc::new(Self::new(endpoint, client_config, limits, None)))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Becomes `Some(reason)` once a member answers that this node was removed.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.removed.subscribe()
    }

    /// Where a member's answer that this node was removed is recorded.
    pub(crate) fn removed_sender(&self) -> Arc<tokio::sync::watch::Sender<Option<String>>> {
        self.removed.clone()
    }

    /// How many incoming connections failed the TLS handshake (a certificate of another CA
    /// or cluster), and the last reason.
    pub fn refused_handshakes(&self) -> (u64, Option<String>) {
        (
            self.refused.load(Ordering::Relaxed),
            self.last_refusal.lock().expect("refusal lock").clone(),
        )
    }

    async fn resolve(addr: &str) -> Result<SocketAddr> {
        tokio::net::lookup_host(addr)
            .await
            .map_err(|e| Error::Connect {
                addr: addr.into(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| Error::Connect {
                addr: addr.into(),
                reason: "no address".into(),
            })
    }

    /// A live connection to `addr`, reusing the open one or the handshake under way. With
    /// `node`, the server must present that node's certificate; without, any member's.
    pub async fn connection(&self, addr: &str, node: Option<NodeId>) -> Result<Connection> {
        let sa = Self::resolve(addr).await?;
        self.pooled(sa, addr, node).await
    }

    /// The pool's connection to `sa` (resolved from `addr`, which errors name).
    async fn pooled(&self, sa: SocketAddr, addr: &str, node: Option<NodeId>) -> Result<Connection> {
        self.pool
            .get((sa, node))
            .await
            .map_err(|reason| Error::Connect {
                addr: addr.into(),
                reason,
            })
    }

    /// Per peer address: connection attempts and failures seen by this node.
    pub fn peer_stats(&self) -> std::collections::BTreeMap<SocketAddr, PeerStats> {
        self.pool.stats()
    }

    /// One request/response exchange on a new bi-stream to any member at `addr`: its
    /// certificate must chain to the cluster CA (the one a joining node's token names), and
    /// nothing more is checked. `timeout` bounds the exchange; connecting has its own limit
    /// (`Limits::connect_timeout`).
    pub async fn call(
        &self,
        addr: &str,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse> {
        self.exchange(addr, None, req, timeout).await
    }

    /// Like [`call`](Self::call), to node `node`: the server must present its certificate,
    /// and on a member's endpoint pass the member check (the key the cluster pinned for it)
    /// before anything is sent.
    pub async fn call_node(
        &self,
        node: NodeId,
        addr: &str,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse> {
        self.exchange(addr, Some(node), req, timeout).await
    }

    async fn exchange(
        &self,
        addr: &str,
        node: Option<NodeId>,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse> {
        let sa = Self::resolve(addr).await?;
        let conn = self.pooled(sa, addr, node).await?;
        if node.is_some() {
            self.check_server(&conn)?;
        }
        let heard_before = conn.stats().udp_rx.datagrams;
        let started = std::time::Instant::now();
        let fut = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            match frame::write_msg(&mut send, req, self.limits.max_frame_bytes).await {
                Ok(()) => send.finish().map_err(|e| Error::Read(e.to_string()))?,
                // The peer stopped reading: it refused the request unread, and its answer
                // says why.
                Err(Error::Write(quinn::WriteError::Stopped(_))) => {}
                Err(e) => return Err(e),
            }
            frame::read_msg::<RpcResponse>(&mut recv, self.limits.max_frame_bytes).await
        };
        let res = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(timeout.as_millis() as u64)),
        };
        if res.is_err()
            && started.elapsed() >= SILENT_PEER
            && conn.stats().udp_rx.datagrams == heard_before
        {
            // Nothing at all came back on the connection for a while: the peer may have
            // restarted behind a connection that still looks open until its idle timeout, so
            // connect afresh next time. A peer that answered anything (if only
            // acknowledgements) is alive, merely slow: its connection stays, since
            // reconnecting would add a handshake to its load and drop other calls under way;
            // so does one only briefly silent (a heartbeat's short timeout elapsing while the
            // peer is busy must not cut a large append under way on the same connection).
            self.pool
                .drop_connection((sa, node), &conn, "no packet from the peer during a call");
        }
        self.check_removed(res)
    }

    /// Sends one frame whose length prefix announces `announce` bytes and which holds `body`
    /// (not necessarily an encoded request), then reads the answer; the stream is finished
    /// only if `body` is the whole frame. For tests of what a node does with frames it must
    /// refuse (malformed, oversized, of a kind the peer may not send). Checks nothing of the
    /// server but its certificate.
    pub async fn call_raw(
        &self,
        addr: &str,
        node: Option<NodeId>,
        announce: u32,
        body: &[u8],
        timeout: Duration,
    ) -> Result<RpcResponse> {
        let conn = self.connection(addr, node).await?;
        let fut = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            let sent = async {
                send.write_all(&announce.to_be_bytes()).await?;
                send.write_all(body).await
            };
            match sent.await {
                Ok(()) | Err(quinn::WriteError::Stopped(_)) => {}
                Err(e) => return Err(e.into()),
            }
            if announce as usize == body.len() {
                let _ = send.finish();
            }
            frame::read_msg::<RpcResponse>(&mut recv, self.limits.max_frame_bytes).await
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(timeout.as_millis() as u64)),
        }
    }

    /// On a member's endpoint: whether the server of `conn` (its certificate already checked
    /// against the CA and the node dialled) is a member.
    fn check_server(&self, conn: &Connection) -> Result<()> {
        let Some(peers) = &self.peers else {
            return Ok(());
        };
        let peer =
            peer_of(conn).ok_or_else(|| Error::Tls("the peer sent no certificate".into()))?;
        peers.check_peer(&peer).map_err(|r| {
            debug!(peer = %peer, reason = %r, "not calling a peer that is not a member");
            Error::Refused(r.reason().to_string())
        })
    }

    fn check_removed(&self, res: Result<RpcResponse>) -> Result<RpcResponse> {
        check_removed(&self.removed, res)
    }

    /// Opens a stream to node `node` at `addr`, whose server passed the member check.
    pub(crate) async fn open_to(
        &self,
        node: NodeId,
        addr: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let conn = self.connection(addr, Some(node)).await?;
        self.check_server(&conn)?;
        Ok(conn.open_bi().await?)
    }

    /// Sends a snapshot to `addr` in chunks and returns the receiver's answer.
    pub async fn send_snapshot(
        &self,
        node: NodeId,
        addr: &str,
        vote: Vote,
        snapshot: Snapshot,
    ) -> Result<RpcResponse> {
        use tokio::io::AsyncReadExt;
        let (mut send, mut recv) = self.open_to(node, addr).await?;
        let total_bytes = snapshot.snapshot.len();
        // Read from the snapshot file a chunk at a time: never held whole.
        let mut data = snapshot.snapshot.into_reader()?;
        let head = RpcRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            total_bytes,
        };
        frame::write_msg(&mut send, &head, self.limits.max_frame_bytes).await?;
        let mut chunk = vec![0u8; self.limits.snapshot_chunk_bytes];
        let mut sent = 0u64;
        while sent < total_bytes {
            let n = data.read(&mut chunk).await?;
            if n == 0 {
                return Err(Error::Read(format!(
                    "the snapshot file ended after {sent} of {total_bytes} bytes"
                )));
            }
            frame::write_raw(&mut send, &chunk[..n], self.limits.max_frame_bytes).await?;
            sent += n as u64;
        }
        send.finish().map_err(|e| Error::Read(e.to_string()))?;
        self.check_removed(
            frame::read_msg::<RpcResponse>(&mut recv, self.limits.max_frame_bytes).await,
        )
    }

    /// Serves peers until `shutdown`: Raft RPCs go to `raft`, the rest to `service`. Then
    /// closes the endpoint, and returns once every connection and request task has stopped
    /// (see the module documentation). On a joining node's client-only endpoint, it serves
    /// no one.
    pub async fn serve<S: Service>(
        self: Arc<Self>,
        raft: Replica,
        service: Arc<S>,
        shutdown: CancellationToken,
    ) {
        info!(addr = ?self.endpoint.local_addr().ok(), "cluster transport listening");
        let tasks = TaskTracker::new();
        // The tasks stop at `shutdown`, or if this future is dropped before it ends.
        let shutdown = shutdown.child_token();
        let _stop_tasks = shutdown.clone().drop_guard();
        let connections = Arc::new(Semaphore::new(self.limits.max_connections));
        let joining = Arc::new(Semaphore::new(self.limits.max_joining_connections));
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => i,
                _ = shutdown.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                warn!(
                    remote = %incoming.remote_address(),
                    limit = self.limits.max_connections,
                    "refused a cluster connection: too many connections"
                );
                incoming.refuse();
                continue;
            };
            let this = self.clone();
            let raft = raft.clone();
            let service = service.clone();
            let conn_tasks = tasks.clone();
            let shutdown = shutdown.clone();
            let joining = joining.clone();
            tasks.spawn(async move {
                let _permit = permit;
                this.accept_connection(incoming, &joining, raft, service, conn_tasks, shutdown)
                    .await;
            });
        }
        self.endpoint.close(0u32.into(), b"shutting down");
        // Every task ends at `shutdown`; none can answer on the closed endpoint anyway.
        tasks.close();
        tasks.wait().await;
        self.pool.shutdown().await;
        info!("cluster transport stopped");
    }

    /// Completes an incoming connection's handshake and serves it (see
    /// [`Self::serve_connection`]); a node without a certificate takes one of the `joining`
    /// connections' share, or is refused.
    async fn accept_connection<S: Service>(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        joining: &Arc<Semaphore>,
        raft: Replica,
        service: Arc<S>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let remote = incoming.remote_address();
        let handshake = std::future::IntoFuture::into_future(incoming);
        let conn = match shutdown.run_until_cancelled(handshake).await {
            None => return,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                self.refused_handshake(remote, &e);
                return;
            }
        };
        // A peer that presented a certificate passed the CA and cluster checks.
        let peer = peer_of(&conn);
        // Nodes without a certificate have a share of the connections of their own, so they
        // cannot crowd the members out.
        let _joining = match peer {
            Some(_) => None,
            None => match joining.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    warn!(
                        %remote,
                        limit = self.limits.max_joining_connections,
                        "refused a connection without a certificate: too many"
                    );
                    conn.close(REFUSED.into(), b"too many joining nodes; retry");
                    return;
                }
            },
        };
        self.serve_connection(conn, peer, raft, service, tasks, shutdown)
            .await;
    }

    fn refused_handshake(&self, remote: SocketAddr, e: &quinn::ConnectionError) {
        let reason = explain(e);
        match e {
            // Handshake failures: a certificate this node does not accept, or the peer did not
            // accept this node's.
            quinn::ConnectionError::TransportError(_)
            | quinn::ConnectionError::ConnectionClosed(_) => {
                warn!(%remote, %reason, "refused a cluster connection");
                self.refused.fetch_add(1, Ordering::Relaxed);
                *self.last_refusal.lock().expect("refusal lock") = Some(reason);
            }
            _ => debug!(%remote, %reason, "incoming connection failed"),
        }
    }

    /// Whether the peer of an incoming connection is a member (always refused on a
    /// client-only endpoint).
    fn check_client(&self, peer: &Peer) -> std::result::Result<(), Refusal> {
        match &self.peers {
            Some(peers) => peers.check_peer(peer),
            None => Err(Refusal::NotMember("this node serves no one".into())),
        }
    }

    /// Accepts `conn`'s streams until it closes, each request served in a task of `tasks`.
    async fn serve_connection<S: Service>(
        self: Arc<Self>,
        conn: Connection,
        peer: Option<Peer>,
        raft: Replica,
        service: Arc<S>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        // A node without a certificate asks one thing (to join), once.
        let at_once = match peer {
            Some(_) => self.limits.max_concurrent_streams as usize,
            None => 1,
        };
        let in_progress = Arc::new(Semaphore::new(at_once));
        // Whether the connection has the member window (its peer passed the member check).
        let widened = Arc::new(AtomicBool::new(false));
        loop {
            // QUIC already bounds the streams open at once; this bounds the requests whose
            // answer is still being worked out, even if the peer gave up on their stream.
            let permit = tokio::select! {
                p = in_progress.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = conn.closed() => return,
                _ = shutdown.cancelled() => return,
            };
            let stream = tokio::select! {
                s = conn.accept_bi() => s,
                _ = shutdown.cancelled() => return,
            };
            let Ok((send, recv)) = stream else {
                return;
            };
            let this = self.clone();
            let raft = raft.clone();
            let service = service.clone();
            let peer = peer.clone();
            let conn = conn.clone();
            let widened = widened.clone();
            tasks.spawn(shutdown.clone().run_until_cancelled_owned(async move {
                let _permit = permit;
                let from = (peer.as_ref(), &conn, &*widened);
                this.serve_stream(from, &raft, &*service, send, recv).await;
            }));
        }
    }

    /// One request on a stream of `conn` from `peer` (`None`: a node without a certificate),
    /// answered on the same stream; or the stream of appends a member opens.
    async fn serve_stream<S: Service>(
        self: &Arc<Self>,
        (peer, conn, widened): (Option<&Peer>, &Connection, &AtomicBool),
        raft: &Replica,
        service: &S,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let (resp, close) = match peer {
            Some(p) => match self
                .serve_member(p, (conn, widened), raft, service, &mut recv)
                .await
            {
                Served::Answer(resp) => (resp, false),
                Served::AppendStream => {
                    self.serve_append_stream(p.clone(), raft, send, recv).await;
                    return;
                }
            },
            None => self.serve_joiner(service, &mut recv).await,
        };
        let _ = recv.stop(0u32.into());
        if let Err(e) = frame::write_msg(&mut send, &resp, self.limits.max_frame_bytes).await {
            debug!(error = %e, "writing response failed");
            return;
        }
        let _ = send.finish();
        if !close {
            // Wait until the peer has read the answer before the stream is dropped.
            let _ = send.stopped().await;
            return;
        }
        // A node without a certificate asked for something else than to join: it is told
        // why, then its connection is closed.
        let _ = tokio::time::timeout(REFUSAL_READ_WITHIN, send.stopped()).await;
        if let RpcResponse::Refused(reason) = &resp {
            conn.close(REFUSED.into(), reason.as_bytes());
        }
    }

    /// One request of a peer that presented a node certificate: checked to be a member's
    /// before its frame is read, then read, decoded and dispatched. The first request that
    /// passes gives the connection (`conn`, with whether that happened) the member window.
    async fn serve_member<S: Service>(
        &self,
        peer: &Peer,
        (conn, widened): (&Connection, &AtomicBool),
        raft: &Replica,
        service: &S,
        recv: &mut quinn::RecvStream,
    ) -> Served {
        match self.check_client(peer) {
            Ok(()) => {
                if !widened.swap(true, Ordering::Relaxed) {
                    conn.set_receive_window(self.limits.member_window_bytes.into());
                }
            }
            Err(Refusal::Removed(reason)) => {
                warn!(%peer, %reason, "refused a request from a removed node");
                return Served::Answer(RpcResponse::Removed(reason));
            }
            Err(Refusal::NotMember(reason)) => {
                debug!(%peer, %reason, "refused a request from a peer that is not a member");
                return Served::Answer(RpcResponse::Refused(reason));
            }
        }
        Served::Answer(
            match frame::read_msg::<RpcRequest>(recv, self.limits.max_frame_bytes).await {
                Ok(RpcRequest::AppendStream) => return Served::AppendStream,
                Ok(req) => self.dispatch(req, raft, service, recv).await,
                // An earlier version of the link tells an unknown request by these words.
                Err(e) => RpcResponse::Refused(format!("bad request: {e}")),
            },
        )
    }

    /// A leader's append stream (see [`RpcRequest::AppendStream`]): its appends go to the
    /// replica as they arrive, and their answers back in order. It ends when the leader
    /// finishes it, at the first append refused, when the peer stops being a member, or at
    /// shutdown.
    async fn serve_append_stream(
        self: &Arc<Self>,
        peer: Peer,
        raft: &Replica,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let limit = self.limits.max_frame_bytes;
        let this = self.clone();
        let input = futures::stream::unfold((recv, Vec::new()), move |(mut recv, mut buf)| {
            let this = this.clone();
            let peer = peer.clone();
            async move {
                let next = frame::next_msg::<AppendRequest>(&mut recv, limit, &mut buf).await;
                if let Err(refusal) = this.check_client(&peer) {
                    debug!(%peer, reason = %refusal.reason(), "append stream of a peer that is no longer a member ended");
                    return None;
                }
                match next {
                    Ok(Some(req)) => Some((req, (recv, buf))),
                    Ok(None) => None,
                    Err(e) => {
                        debug!(%peer, error = %e, "append stream: reading failed");
                        None
                    }
                }
            }
        });
        let answers = raft.stream_append(input);
        tokio::pin!(answers);
        while let Some(answer) = answers.next().await {
            let last = !matches!(answer, Ok(Ok(_)));
            let answer = RpcResponse::StreamAppend(answer);
            if let Err(e) = frame::write_msg(&mut send, &answer, limit).await {
                debug!(error = %e, "append stream: answering failed");
                return;
            }
            if last {
                break;
            }
        }
        let _ = send.finish();
        let _ = tokio::time::timeout(STREAM_END_READ_WITHIN, send.stopped()).await;
    }

    /// One request of a peer without a certificate: a join, or nothing. Its frame is read
    /// within the join limit and decoded only if its first bytes say it is a join. The flag
    /// says the connection is to be closed after the answer.
    async fn serve_joiner<S: Service>(
        &self,
        service: &S,
        recv: &mut quinn::RecvStream,
    ) -> (RpcResponse, bool) {
        let refuse = |why: String| {
            debug!(reason = %why, "refused a request from a node without a certificate");
            (RpcResponse::Refused(why), true)
        };
        let read = frame::read_raw(recv, self.limits.max_join_frame_bytes);
        let bytes = match tokio::time::timeout(self.limits.join_request_timeout, read).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return refuse(format!("bad request: {e}; {ONLY_JOIN}")),
            Err(_) => return refuse(format!("request not received in time; {ONLY_JOIN}")),
        };
        if !rpc::is_join(&bytes) {
            return refuse(ONLY_JOIN.into());
        }
        match raft::codec::decode::<RpcRequest>(&bytes) {
            Ok(RpcRequest::JoinWithKey {
                token,
                node,
                public_key,
            }) => {
                let res = service.join(token, node, public_key).await;
                if let Err(e) = &res {
                    warn!(error = %e, "join refused");
                }
                (RpcResponse::Joined(res), false)
            }
            Ok(_) => refuse(ONLY_JOIN.into()),
            Err(e) => refuse(format!("bad join request: {e}")),
        }
    }

    /// Reads a snapshot of `total_bytes` that follows the request on its stream and installs
    /// it; refuses one over the size limit, or whose stream breaks or runs long.
    async fn install_snapshot(
        &self,
        raft: &Replica,
        vote: Vote,
        meta: SnapshotMeta,
        total_bytes: u64,
        recv: &mut quinn::RecvStream,
    ) -> std::result::Result<SnapshotResponse, String> {
        if total_bytes > self.limits.max_snapshot_bytes {
            return Err(format!(
                "snapshot of {total_bytes} bytes is over the {}-byte limit",
                self.limits.max_snapshot_bytes
            ));
        }
        let receiving = |e: std::io::Error| format!("receiving a snapshot: {e}");
        // Written to a file as the chunks arrive, never held whole; removed if cut short.
        let mut sink = raft
            .receive_snapshot(&meta, total_bytes)
            .await
            .map_err(receiving)?;
        let mut chunk = Vec::new();
        while sink.remaining() > 0 {
            frame::read_into(recv, self.limits.max_frame_bytes, &mut chunk)
                .await
                .map_err(|e| format!("snapshot stream broken: {e}"))?;
            sink.write(&chunk).await.map_err(receiving)?;
        }
        let data = sink.finish().await.map_err(receiving)?;
        raft.install_snapshot(vote, meta, data).await
    }

    /// Runs a member's request.
    async fn dispatch<S: Service>(
        &self,
        req: RpcRequest,
        raft: &Replica,
        service: &S,
        recv: &mut quinn::RecvStream,
    ) -> RpcResponse {
        match req {
            RpcRequest::Append(r) => wire(raft.answer(PeerRpc::Append(r)).await),
            RpcRequest::Vote(r) => wire(raft.answer(PeerRpc::Vote(r)).await),
            RpcRequest::PreVote(r) => wire(raft.answer(PeerRpc::PreVote(r)).await),
            RpcRequest::TransferLeader(r) => wire(raft.answer(PeerRpc::TransferLeader(r)).await),
            RpcRequest::Snapshot {
                vote,
                meta,
                total_bytes,
            } => RpcResponse::Snapshot(
                self.install_snapshot(raft, vote, meta, total_bytes, recv)
                    .await,
            ),
            RpcRequest::Write(r) => RpcResponse::Write(service.forward(r).await),
            RpcRequest::ReadIndex => RpcResponse::ReadIndex(service.read_index().await),
            // A member relays a join that reached it to the leader.
            RpcRequest::JoinWithKey {
                token,
                node,
                public_key,
            } => {
                let res = service.join(token, node, public_key).await;
                if let Err(e) = &res {
                    warn!(error = %e, "join refused");
                }
                RpcResponse::Joined(res)
            }
            RpcRequest::Hello => RpcResponse::Hello,
            RpcRequest::Admin(op) => RpcResponse::Admin(service.admin(op).await),
            RpcRequest::NodeKeys => RpcResponse::NodeKeys(service.node_keys()),
            // Served by `serve_append_stream`, before dispatch.
            RpcRequest::AppendStream => {
                RpcResponse::Refused("an append stream is not a single request".into())
            }
        }
    }
}

/// A member's answer that this node was removed from the cluster is recorded in `removed`
/// and becomes [`Error::Removed`].
pub(crate) fn check_removed(
    removed: &tokio::sync::watch::Sender<Option<String>>,
    res: Result<RpcResponse>,
) -> Result<RpcResponse> {
    if let Ok(RpcResponse::Removed(reason)) = &res {
        warn!(%reason, "a member says this node was removed from the cluster");
        removed.send_replace(Some(reason.clone()));
        return Err(Error::Removed(reason.clone()));
    }
    res
}

/// What a member's stream carried: one request, answered; or an append stream, served.
enum Served {
    Answer(RpcResponse),
    AppendStream,
}

/// A replica's answer as it travels.
fn wire(answer: PeerAnswer) -> RpcResponse {
    match answer {
        PeerAnswer::Append(r) => RpcResponse::Append(r),
        PeerAnswer::Vote(r) => RpcResponse::Vote(r),
        PeerAnswer::TransferLeader(r) => RpcResponse::TransferLeader(r),
    }
}

/// What a node without a certificate is told when it asks anything but to join.
const ONLY_JOIN: &str = "not a cluster member: only join is allowed without a node certificate";
/// The QUIC application error code a connection is closed with when its peer asked for
/// something it may not.
const REFUSED: u32 = 1;
/// How long the end of an append stream waits for the leader to read its last answers.
const STREAM_END_READ_WITHIN: Duration = Duration::from_secs(5);
/// How long a refusal waits for the peer to read it before the connection is closed.
const REFUSAL_READ_WITHIN: Duration = Duration::from_secs(1);
/// How long a call must have heard nothing from its peer before the connection is dropped as
/// possibly stale (see `exchange`).
const SILENT_PEER: Duration = Duration::from_secs(1);

/// The identity and key in the certificate a connected peer presented, if any.
fn peer_of(conn: &Connection) -> Option<Peer> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::peer_of_cert(certs.first()?.as_ref()).ok()
}

/// A connection error in words: a TLS refusal by the peer says so and where to look.
pub(crate) fn explain(e: &quinn::ConnectionError) -> String {
    if let quinn::ConnectionError::ConnectionClosed(close) = e {
        let code = u64::from(close.error_code);
        if (0x100..0x200).contains(&code) {
            let alert = code - 0x100;
            return format!(
                "the peer refused the TLS handshake (alert {alert}): it does not accept this \
                 node's certificate (signed by another cluster's CA, or for another cluster); \
                 its log says why"
            );
        }
    }
    e.to_string()
}
