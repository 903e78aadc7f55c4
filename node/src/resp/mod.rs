//! The Redis protocol (RESP2 and RESP3) on `resp.addr`, so that unmodified Redis clients use
//! stackd's replicated state through any node: db 0 the cache, db 1 the key-value store, db 2
//! locks, and pub/sub on channels.
//!
//! # Layout
//! - this file: the listener (a bound on connections) and one task per connection, which reads
//!   requests, answers them in order and, while it subscribes, pushes channel messages;
//! - [`codec`]: requests off the wire, replies onto it;
//! - `conn`: a connection's state (protocol version, database, credential, transaction) and
//!   the commands that change it, the handshake among them;
//! - `strings`: the string commands on each database's primitive;
//! - `locks`: db 2, stackd's fenced locks taken as Redis clients take a lock;
//! - `pubsub`: channels and patterns, and who on this node listens to them.
//!
//! Commands on one connection run one at a time, in order: a pipeline's writes are proposed
//! in the order they were sent, as Redis applies them. The databases, what each command
//! means on them and what is not supported are in `docs/redis.md`.

pub mod codec;
mod conn;
mod locks;
mod pubsub;
mod strings;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::api::AppState;
use codec::{Decoder, Limits, ProtocolError, Reply};
use conn::Conn;

/// Replies are sent once this many bytes are waiting, or when no whole request is left.
const FLUSH_BYTES: usize = 64 * 1024;

/// What every connection of the listener shares.
pub(crate) struct Resp {
    st: Arc<AppState>,
    limits: Limits,
    next_client_id: AtomicU64,
    listeners: pubsub::Listeners,
    cursors: strings::Cursors,
    counters: conn::Counters,
}

/// Binds `addr` and answers RESP connections on it until `stop`, on `resp.threads` threads of
/// their own ([`crate::threads`]): a connection is read, answered and written on the thread
/// that accepted it. Each connection is tracked by `tasks` too (the node's requests, which
/// shutdown drains).
pub async fn bind(
    addr: SocketAddr,
    st: Arc<AppState>,
    tasks: TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send)> {
    let config = st.cluster.config().clone();
    let resp = Arc::new(Resp {
        counters: conn::Counters::new(&st.metrics),
        st,
        limits: Limits {
            max_args: config.resp.max_args,
            max_arg_bytes: config.limits.max_value_bytes,
            max_request_bytes: 2 * config.limits.max_value_bytes + 64 * 1024,
        },
        next_client_id: AtomicU64::new(1),
        listeners: pubsub::Listeners::default(),
        cursors: strings::Cursors::default(),
    });
    let slots = Arc::new(Semaphore::new(config.resp.max_connections));
    // Half the cores by default: the other half is the node's own (Raft, the API, applying
    // writes), and a RESP thread that must share its core answers more slowly than one that
    // has it (docs/benchmarks.md).
    let threads = match config.resp.threads {
        0 => (crate::threads::cores() / 2).max(1),
        n => n,
    };
    let serve = move |listener: TcpListener| {
        let (resp, slots, tasks, stop) = (resp.clone(), slots.clone(), tasks.clone(), stop.clone());
        async move { accept(&resp, listener, &slots, &tasks, &stop).await }
    };
    let (bound, ended) = crate::threads::serve_on_threads("RESP", addr, threads, serve).await?;
    info!(addr = %bound, threads, "RESP (Redis protocol) listening");
    Ok((bound, ended))
}

/// One thread's listener: accepts until `stop`, then waits for the connections it accepted.
async fn accept(
    resp: &Arc<Resp>,
    listener: TcpListener,
    slots: &Arc<Semaphore>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    let max = resp.st.cluster.config().resp.max_connections;
    // This thread's connections: they run on its runtime, which must outlive them.
    let here = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    warn!(error = %e, "RESP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            resp.st.metrics.resp_refused.inc();
            here.spawn(tasks.track_future(refuse(stream, max)));
            continue;
        };
        let (resp, stop) = (resp.clone(), stop.clone());
        here.spawn(tasks.track_future(async move {
            let _open = Open::new(&resp);
            serve_connection(&resp, stream, peer, stop).await;
            drop(slot);
        }));
    }
    here.close();
    here.wait().await;
}

/// Counts a connection in `stackd_resp_connections` while it lives, however it ends.
struct Open(prometheus::IntGauge);

impl Open {
    fn new(resp: &Resp) -> Open {
        resp.st.metrics.resp_connections.inc();
        Open(resp.st.metrics.resp_connections.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Answers a connection past `resp.max_connections` with Redis's error and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let mut out = BytesMut::new();
    Reply::err(format!(
        "max number of clients reached ({max}, resp.max_connections)"
    ))
    .encode(2, &mut out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&out)).await;
}

/// Why a connection ends.
enum End {
    /// The client closed it, or `QUIT`.
    Done,
    /// It could not be read or written (reset, or a write blocked past api.write_timeout_ms).
    Io,
    /// Its input could not be framed.
    Protocol,
    /// It subscribes but fell too far behind the channel messages.
    SlowConsumer,
    Stopping,
}

async fn serve_connection(
    resp: &Arc<Resp>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let id = resp.next_client_id.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = stream.into_split();
    let write_timeout =
        std::time::Duration::from_millis(resp.st.cluster.config().api.write_timeout_ms);
    let mut conn = Conn::new(resp.clone(), id, peer);
    let mut decoder = Decoder::new(resp.limits);
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    // One registration for the connection's life, not one per read, with a child of the
    // shared stop token: each poll takes the token's lock, and a child's is the connection's
    // alone, where the shared one would be contended by every connection of every thread.
    let stop = stop.child_token();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    // Every whole request read so far, answered in order; the batch is charged to the
    // caller's rate limits at once. Kept across batches, so a pipeline does not grow it anew.
    let mut batch = Vec::new();
    let end = loop {
        let broken = loop {
            match decoder.decode(&mut input) {
                Ok(Some(args)) => batch.push(conn::Request::new(args)),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if let Some(end) = run_batch(&mut conn, &mut batch, &mut wr, &mut out, write_timeout).await
        {
            break end;
        }
        if let Some(ProtocolError(m)) = broken {
            Reply::err(format!("Protocol error: {m}")).encode(conn.proto(), &mut out);
            let _ = flush(&mut wr, &mut out, write_timeout).await;
            break End::Protocol;
        }
        if !flush(&mut wr, &mut out, write_timeout).await {
            break End::Io;
        }
        tokio::select! {
            read = rd.read_buf(&mut input) => match read {
                Ok(0) => break End::Done,
                Ok(_) => {}
                Err(_) => break End::Io,
            },
            batch = conn.next_live(), if conn.listening() => match batch {
                Ok(batch) => conn.deliver(&batch, &mut out),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Reply::err(format!(
                        "slow consumer: {n} batches of channel messages were not read in time; \
                         the connection is closed"
                    ))
                    .encode(conn.proto(), &mut out);
                    let _ = flush(&mut wr, &mut out, write_timeout).await;
                    break End::SlowConsumer;
                }
                Err(broadcast::error::RecvError::Closed) => break End::Stopping,
            },
            () = &mut stopped => break End::Stopping,
        }
    };
    drop(conn);
    end.log(id, peer);
}

impl End {
    fn log(&self, client: u64, peer: SocketAddr) {
        match self {
            End::Done | End::Stopping => {}
            End::Io => debug!(client, %peer, "RESP connection failed"),
            End::Protocol => debug!(client, %peer, "RESP connection closed: protocol error"),
            End::SlowConsumer => warn!(client, %peer, "RESP subscriber fell behind; closed"),
        }
    }
}

/// Answers a batch of requests in order, writing the replies as `FLUSH_BYTES` of them wait;
/// how the connection ends if one of them ends it (`QUIT`, a failed write).
async fn run_batch(
    conn: &mut Conn,
    batch: &mut Vec<conn::Request>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    out: &mut BytesMut,
    write_timeout: std::time::Duration,
) -> Option<End> {
    conn.prepay(batch);
    let mut end = None;
    for req in batch.drain(..) {
        let reply = conn.run(req).await;
        reply.encode(conn.proto(), out);
        if conn.closing() {
            let _ = flush(wr, out, write_timeout).await;
            end = Some(End::Done);
            break;
        }
        if out.len() >= FLUSH_BYTES && !flush(wr, out, write_timeout).await {
            end = Some(End::Io);
            break;
        }
    }
    conn.end_batch();
    end
}

/// Writes what `out` holds; false when the connection failed or the write stayed blocked past
/// the timeout (the client reads nothing).
async fn flush(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    out: &mut BytesMut,
    timeout: std::time::Duration,
) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = matches!(
        tokio::time::timeout(timeout, wr.write_all(out)).await,
        Ok(Ok(()))
    );
    out.clear();
    ok
}
