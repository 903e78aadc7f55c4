//! Listeners served on threads of their own: each thread runs a single-threaded runtime that
//! accepts on its own socket (all bound to one address with SO_REUSEPORT, the kernel spreading
//! new connections over them) and answers the connections it accepted, as each nginx worker
//! does. A connection never changes threads: no work stealing, no wake-up of another core
//! between reading a request and writing its answer. The gateway and the Redis protocol
//! listener run this way; the node's other work stays on the main runtime.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};

/// This machine's cores (as the process may use them).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Binds `addr` once per thread (`threads` of them, at least one) and starts the threads, each
/// running `serve` on its own listener until that future ends; `what` names the listener in
/// errors and thread names (`{what}-{i}`). Answers the bound address and a future that ends
/// once every thread has.
pub async fn serve_on_threads<F, Fut>(
    what: &'static str,
    addr: SocketAddr,
    threads: usize,
    serve: F,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()> + Send)>
where
    F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()>,
{
    let sockets = bind_sockets(addr, threads)
        .with_context(|| format!("binding the {what} address {addr}"))?;
    let bound = sockets[0].local_addr()?;
    let mut ended = Vec::with_capacity(sockets.len());
    let mut listening = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.into_iter().enumerate() {
        let (done, rx) = tokio::sync::oneshot::channel::<()>();
        ended.push(rx);
        let (ready, rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        listening.push(rx);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("starting a {what} thread's runtime"))?;
        let serve = serve.clone();
        std::thread::Builder::new()
            .name(format!("{what}-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    // The socket registers with this thread's runtime, so it listens here.
                    match socket.listen(1024) {
                        Ok(listener) => {
                            let _ = ready.send(Ok(()));
                            serve(listener).await;
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                });
                drop(done);
            })
            .with_context(|| format!("starting a {what} thread"))?;
    }
    for rx in listening {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(e).with_context(|| format!("listening on the {what} address {bound}"))
            }
            Err(_) => anyhow::bail!("a {what} thread ended before it listened"),
        }
    }
    let all_ended = async move {
        futures::future::join_all(ended).await;
    };
    Ok((bound, all_ended))
}

/// `n` sockets bound to `addr` (its port chosen once when it is 0), one per thread.
///
/// SO_REUSEPORT would also let another process of the same user bind the same address and
/// silently take a share of its connections (a second node started with the same address,
/// say). So the address is first bound plainly, which fails when anything holds it, and
/// released just before the sockets bind it; the same plain bind then fails for anyone who
/// comes later.
fn bind_sockets(addr: SocketAddr, n: usize) -> std::io::Result<Vec<TcpSocket>> {
    let free = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..n.max(1)).map(|_| reuse_port_socket(free)).collect()
}

/// A socket bound to `addr` that the other sockets of [`bind_sockets`] bind too.
fn reuse_port_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn an_address_in_use_is_refused_whoever_holds_it() {
        let sockets = bind_sockets("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let bound = sockets[0].local_addr().unwrap();
        assert_eq!(
            sockets[1].local_addr().unwrap(),
            bound,
            "one port for every thread"
        );
        let _listening: Vec<_> = sockets.into_iter().map(|s| s.listen(16).unwrap()).collect();
        let e = bind_sockets(bound, 2).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind_sockets(plain.local_addr().unwrap(), 1).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    }
}
