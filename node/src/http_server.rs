//! The API's HTTP server: accepts connections from a listener (plain TCP or TLS) and serves
//! each with hyper's HTTP/1 connection (with upgrades, for WebSockets), with two bounds that
//! `axum::serve` does not set:
//! - the time a client has to send a request's head (`api.header_read_timeout_ms`), from the
//!   moment its connection opens or its previous answer was sent: hyper then closes the
//!   connection (no request was read, so there is nothing to answer; idle keep-alive
//!   connections close the same way);
//! - the time a write to the client may stay blocked (`api.write_timeout_ms`): the
//!   connection's socket fails the write, hyper drops the connection and with it the
//!   response body, which ends whatever produces it (a backup's reader and its RocksDB
//!   snapshot). It stays on the socket after a WebSocket upgrade.
//!
//! The body read timeout is the API's own (`api::observe`), since it is answered with 408.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, trace};

use crate::auth::PeerAddr;
use crate::metrics::Metrics;

/// The connection-level bounds of the API.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub write: Duration,
}

/// Serves `app` on the connections `listener` accepts until `stop`; then stops accepting,
/// lets each connection finish the request it is answering, and returns once all are closed.
pub async fn serve<L>(
    listener: L,
    app: Router,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let service = move |peer: SocketAddr| {
        TowerToHyperService::new(app.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            req
        }))
    };
    serve_with(listener, service, timeouts, metrics, stop).await
}

/// [`serve`] with a hyper service of each connection's own, made from the peer's address.
pub async fn serve_with<L, F, S, B>(
    mut listener: L,
    service: F,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = axum::http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        trace!(%peer, "API connection accepted");
        let mut io = tokio_io_timeout::TimeoutStream::new(io);
        io.set_write_timeout(Some(timeouts.write));
        let service = service(peer);
        // A token of the connection's own: its task checks it on every wake-up, and a child's
        // lock is touched by that task alone, where the shared token's would be contended by
        // every connection of every thread.
        let stop = stop.child_token();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.header_read);
            let conn = builder
                .serve_connection(TokioIo::new(Box::pin(io)), service)
                .with_upgrades();
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                let reason = closed_reason(&e);
                if let Some(reason) = reason {
                    metrics
                        .http_connections_closed
                        .with_label_values(&[reason])
                        .inc();
                }
                debug!(%peer, error = %e, reason, "API connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Which bound closed a connection, if one did.
fn closed_reason(e: &hyper::Error) -> Option<&'static str> {
    if e.is_timeout() {
        return Some("header_timeout");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return Some("write_timeout");
            }
        }
        source = s.source();
    }
    None
}
