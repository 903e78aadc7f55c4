//! The gateway's connections to instances: HTTP/1.1 connections (hyper's connection API),
//! kept per gateway thread and per instance address, reused once their previous exchange is
//! over.
//!
//! Each gateway thread has its own pool, so a connection is only ever used, and driven, by the
//! thread that made it: no lock, no hand-off between threads. A connection goes back to the
//! pool as soon as its response head is read; it is taken again only once hyper says it is
//! ready for another request (the previous body has been read to the end), so a pool holds
//! both idle connections and ones still streaming a body. A request that finds none ready
//! opens a new connection. Connections idle longer than [`IDLE_TIMEOUT`] are closed, and at
//! most [`MAX_IDLE_PER_ADDRESS`] are kept per address.
//!
//! A request that a pooled connection could not send (the instance closed it while it sat in
//! the pool) is sent again on another connection: it never reached the instance. A request
//! for which no connection could be opened is handed back with the error, so the caller can
//! send it to another instance without having kept a copy.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections kept per instance address and gateway thread; more are closed once their
/// exchange ends.
pub const MAX_IDLE_PER_ADDRESS: usize = 256;

/// How often a pool drops the connections idle past [`IDLE_TIMEOUT`] or closed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A request body: the gateway reads request bodies whole (for retries).
pub type OutBody = Full<Bytes>;

/// Why an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, or not within the connect
    /// timeout): the request did not reach the instance, and is handed back (`unsent`).
    #[error("connecting: {error}")]
    Connect {
        #[source]
        error: std::io::Error,
        unsent: Box<Request<OutBody>>,
    },
    /// The exchange failed after the request may have been sent.
    #[error("{0}")]
    Request(#[source] hyper::Error),
}

struct Idle {
    sender: SendRequest<OutBody>,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    by_address: HashMap<String, VecDeque<Idle>>,
    swept: Option<Instant>,
    /// The tasks driving this thread's connections: each ends when its connection closes,
    /// is upgraded (the tunnel then owns it), or is dropped from the pool idle.
    drivers: TaskTracker,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

impl Pool {
    /// A connection to `address` that is ready for a request, if one is pooled.
    fn take(&mut self, address: &str, now: Instant) -> Option<SendRequest<OutBody>> {
        if self.swept.is_none_or(|t| now - t >= SWEEP_EVERY) {
            self.swept = Some(now);
            self.by_address.retain(|_, idle| {
                idle.retain(|c| !c.sender.is_closed() && now - c.since < IDLE_TIMEOUT);
                !idle.is_empty()
            });
        }
        let idle = self.by_address.get_mut(address)?;
        // Oldest first: the longer ago a connection came back, the likelier its body is done.
        for _ in 0..idle.len() {
            let c = idle.pop_front()?;
            if c.sender.is_closed() || now - c.since >= IDLE_TIMEOUT {
                continue;
            }
            if c.sender.is_ready() {
                return Some(c.sender);
            }
            idle.push_back(c);
        }
        None
    }

    fn put(&mut self, address: &str, sender: SendRequest<OutBody>, now: Instant) {
        let idle = self.by_address.entry(address.to_string()).or_default();
        if idle.len() < MAX_IDLE_PER_ADDRESS {
            idle.push_back(Idle { sender, since: now });
        }
    }
}

/// Why [`connect`] gave no connection.
enum Unconnected {
    /// No TCP connection (refused, unreachable, or not within the connect timeout).
    Tcp(std::io::Error),
    /// The TCP connection opened but hyper's handshake failed.
    Handshake(hyper::Error),
}

/// Opens a connection to `address` within `connect_timeout`; its task runs on this thread's
/// runtime until the connection closes (after an upgrade, until the tunnel ends).
async fn connect(
    address: &str,
    connect_timeout: Duration,
) -> Result<SendRequest<OutBody>, Unconnected> {
    let stream = match tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect(address),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Unconnected::Tcp(e)),
        Err(_) => {
            return Err(Unconnected::Tcp(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {} ms", connect_timeout.as_millis()),
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(Unconnected::Handshake)?;
    let address = address.to_string();
    let driver = async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%address, error = %e, "connection to an instance ended");
        }
    };
    POOL.with_borrow(|p| p.drivers.spawn(driver));
    Ok(sender)
}

/// Closes this thread's pooled connections and waits for every connection it made to end;
/// called once the thread's requests are answered.
pub async fn close() {
    let drivers = POOL.with_borrow_mut(|p| {
        p.by_address.clear();
        p.drivers.close();
        p.drivers.clone()
    });
    drivers.wait().await;
}

/// Sends `req` (origin-form URI, `Host` set) to the instance at `address` on a pooled
/// connection of this thread, or a new one. When no connection could be opened, the error
/// hands `req` back.
pub async fn send(
    address: &str,
    connect_timeout: Duration,
    mut req: Request<OutBody>,
) -> Result<Response<Incoming>, SendError> {
    loop {
        let pooled = POOL.with_borrow_mut(|p| p.take(address, Instant::now()));
        let fresh = pooled.is_none();
        let mut sender = match pooled {
            Some(s) => s,
            None => match connect(address, connect_timeout).await {
                Ok(s) => s,
                Err(Unconnected::Tcp(error)) => {
                    return Err(SendError::Connect {
                        error,
                        unsent: Box::new(req),
                    })
                }
                Err(Unconnected::Handshake(e)) => return Err(SendError::Request(e)),
            },
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                // An upgraded connection is the tunnel's now.
                if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                    POOL.with_borrow_mut(|p| p.put(address, sender, Instant::now()));
                }
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                // Not sent: a pooled connection the instance had closed. Another one.
                Some(unsent) if !fresh => req = unsent,
                _ => return Err(SendError::Request(e.into_error())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server on a free port that answers each request `ok`, closing each connection after
    /// `per_connection` requests; counts the connections it accepted.
    async fn server(per_connection: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_connection {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    // Closed without a `Connection: close`, as an instance closing an idle
                    // keep-alive connection does.
                });
            }
        });
        (address, accepted)
    }

    async fn get(address: &str) -> Result<String, SendError> {
        let req = Request::builder()
            .uri("/")
            .header(hyper::header::HOST, address)
            .body(OutBody::new(Bytes::new()))
            .unwrap();
        let resp = send(address, Duration::from_secs(1), req).await?;
        use http_body_util::BodyExt as _;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_connection_serves_requests_one_after_another() {
        let (address, accepted) = server(usize::MAX).await;
        for _ in 0..20 {
            assert_eq!(get(&address).await.unwrap(), "ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the connection was reused"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pooled_connection_the_instance_closed_is_replaced() {
        // Each connection serves one request, then the instance closes it: every next request
        // finds the pooled connection closed (or closing) and must still be answered.
        let (address, accepted) = server(1).await;
        for i in 0..30 {
            assert_eq!(get(&address).await.unwrap(), "ok", "request {i}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 30);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = get(&address).await.unwrap_err();
        // The request comes back as it was given, to be sent elsewhere.
        let SendError::Connect { unsent, .. } = e else {
            panic!("not a connect error: {e}");
        };
        assert_eq!(unsent.uri(), "/");
        assert_eq!(unsent.headers()[hyper::header::HOST], address.as_str());
    }
}
