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

/// A free TCP port and a free UDP port on `ip` (the OS picks; a tiny race with other
/// processes is possible and harmless in practice).
pub fn free_addrs(ip: &str) -> (SocketAddr, SocketAddr) {
    let tcp = TcpListener::bind((ip, 0))
        .expect("bind tcp")
        .local_addr()
        .unwrap();
    let udp = UdpSocket::bind((ip, 0))
        .expect("bind udp")
        .local_addr()
        .unwrap();
    (tcp, udp)
}

/// A free UDP port on `ip` whose next port is free too: a node's cluster address, with its
/// gossip address (port + 1, the default) beside it. Bounded; panics if none is found.
pub fn free_cluster_addr(ip: &str) -> SocketAddr {
    for _ in 0..100 {
        let a = UdpSocket::bind((ip, 0)).expect("bind udp");
        let addr = a.local_addr().unwrap();
        if addr.port() == u16::MAX {
            continue;
        }
        if UdpSocket::bind((ip, addr.port() + 1)).is_ok() {
            return addr;
        }
    }
    panic!("no free pair of UDP ports on {ip}");
}

/// Logs for tests, once per process (`STACKD_TEST_LOG=debug` for more).
pub fn init_logging() {
    let filter = std::env::var("STACKD_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
