//! Fixtures shared by the integration tests: in-process clusters and real `stackd` processes.
//!
//! # Layout
//! - [`checker`]: history checkers (linearizability of KV registers, lock fences).
//! - [`harness`]: the fault-injection run (clients, nemesis, validity, evidence).
//! - [`history`]: recorded client operations.
//! - [`http`]: a small HTTP client for the API with wait-for-state helpers.
//! - [`inproc`]: clusters of in-process nodes (fast; one tokio runtime).
//! - [`nemesis`]: network partitions on loopback addresses (iptables).
//! - [`process`]: clusters of real `stackd` processes on 127.0.0.1, .2, .3 … (kill -9,
//!   restart, pause).
//! - [`resp`]: a small RESP (Redis protocol) client.
//! - [`workload`]: the clients of a fault run.
//! - [`ws`]: a WebSocket client for `/v1/ws`.

#![forbid(unsafe_code)]

pub mod checker;
pub mod harness;
pub mod history;
pub mod http;
pub mod inproc;
pub mod nemesis;
pub mod process;
pub mod resp;
pub mod standalone;
pub mod workload;
pub mod ws;

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// Ports the tests hand out: below Linux's default ephemeral range (32768-60999), so a socket
/// bound to port 0 anywhere on the machine (a client's source port, another test's endpoint)
/// can never take one between the moment a test picks it and the moment its node binds it.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The next port to try; each is handed out at most once per test process, and each process
/// starts at its own offset so concurrent test binaries rarely try the same ports.
static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);

/// The first of `n` consecutive candidate ports from [`TEST_PORTS`], taken together (none of
/// them is ever a candidate again in this process); `None` when they would wrap past the end.
fn next_ports(n: u32) -> Option<u16> {
    use std::sync::atomic::Ordering::Relaxed;
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let offset = std::process::id().wrapping_mul(7919) % span;
    let _ = NEXT_PORT.compare_exchange(u32::MAX, offset, Relaxed, Relaxed);
    let first = NEXT_PORT.fetch_add(n, Relaxed) % span;
    (first + n <= span).then(|| TEST_PORTS.start + first as u16)
}

/// A free TCP port and a free UDP port on `ip` (the same port, free for both), never handed
/// out before in this process. Bounded; panics if none is found.
pub fn free_addrs(ip: &str) -> (SocketAddr, SocketAddr) {
    for _ in 0..1_000 {
        let Some(port) = next_ports(1) else {
            continue;
        };
        let (Ok(tcp), Ok(udp)) = (TcpListener::bind((ip, port)), UdpSocket::bind((ip, port)))
        else {
            continue;
        };
        return (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    }
    panic!("no free port on {ip} in {TEST_PORTS:?}");
}

/// A free UDP port on `ip` whose next port is free too: a node's cluster address, with its
/// gossip address (port + 1, the default) beside it. Both are taken from the handed-out ports.
/// Bounded; panics if none is found.
pub fn free_cluster_addr(ip: &str) -> SocketAddr {
    for _ in 0..1_000 {
        let Some(port) = next_ports(2) else {
            continue;
        };
        let (Ok(quic), Ok(_gossip)) =
            (UdpSocket::bind((ip, port)), UdpSocket::bind((ip, port + 1)))
        else {
            continue;
        };
        return quic.local_addr().unwrap();
    }
    panic!("no free pair of UDP ports on {ip} in {TEST_PORTS:?}");
}

/// Logs for tests, once per process (`STACKD_TEST_LOG=debug` for more).
pub fn init_logging() {
    let filter = std::env::var("STACKD_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
