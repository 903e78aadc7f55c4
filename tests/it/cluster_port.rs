//! The cluster port before anything is decoded: a node without a certificate may only ask to
//! join, and its other frames are refused unread, its connection closed; nodes without a
//! certificate cannot take the members' connections; a member's frame nested deeper than
//! commands nest is refused without exhausting the stack. In each case the node serves on.

use std::time::Duration;

use node::server::Node;
use raft::codec;
use tempfile::TempDir;
use tests::http::{self, wait_for};
use tests::inproc::{config, InprocCluster};
use transport::{Limits, RpcRequest, RpcResponse, Transport};

use crate::security::{credentials, endpoint};

const ONLY_JOIN: &str = "only join is allowed without a node certificate";

/// A forwarded write whose command is a fence around a fence around …, 100,000 deep, as raw
/// bytes (no value of the command type nests like this).
fn nested_write() -> Vec<u8> {
    // Write (variant 6) of Request { stamp_ms: 0, idempotency_key: None, command }.
    let mut bytes = vec![codec::FORMAT_VERSION, 6, 0, 0];
    for _ in 0..100_000 {
        // Fenced (variant 9) { lock: "L", fence: 0, command: … }
        bytes.extend_from_slice(&[9, 1, b'L', 0]);
    }
    // Tick.
    bytes.push(0);
    bytes
}

/// Puts a key through node `base` and reads it back.
async fn serves(base: &str, key: &str) {
    let api = http::api(base);
    api.kv_put(key, "fine").await.unwrap();
    assert_eq!(&api.kv_get(key).await.unwrap().value[..], b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_only_a_join_is_read_and_anything_else_closes_the_connection() {
    let c = InprocCluster::start(1).await.unwrap();
    let addr = c.configs[0].advertise_cluster_addr();
    let creds = credentials(c.configs[0].data_dir());
    // A node that is not a member: it trusts the cluster CA, and has no certificate.
    let outsider = Transport::joining(
        creds.ca_fingerprint(),
        "127.0.0.1".parse().unwrap(),
        Limits::default(),
    )
    .unwrap();
    let t = Duration::from_secs(5);
    let hello = codec::encode(&RpcRequest::Hello).unwrap();
    let garbage = vec![0xffu8; 100];
    let nested = nested_write();
    let frames: [(&str, u32, &[u8]); 4] = [
        ("a member's request", hello.len() as u32, &hello),
        ("garbage", garbage.len() as u32, &garbage),
        (
            "a frame announcing 64 MiB, 10 bytes of it sent",
            64 << 20,
            b"ten bytes!",
        ),
        (
            "a forwarded write nested 100,000 deep",
            nested.len() as u32,
            &nested,
        ),
    ];
    for (what, announce, body) in frames {
        tracing::info!(what, "phase: a frame from a node without a certificate");
        let conn = outsider.connection(&addr, None).await.unwrap();
        match outsider.call_raw(&addr, None, announce, body, t).await {
            Ok(RpcResponse::Refused(m)) => assert!(m.contains(ONLY_JOIN), "{what}: {m}"),
            // The close may overtake the answer; it gives the same reason.
            Err(e) => assert!(e.to_string().contains(ONLY_JOIN), "{what}: {e}"),
            Ok(other) => panic!("{what}: answered {other:?}"),
        }
        let closed = wait_for("the connection closed", t, || async {
            conn.close_reason().map(|r| r.to_string())
        })
        .await
        .unwrap();
        assert!(closed.contains(ONLY_JOIN), "{what}: {closed}");
    }

    tracing::info!("phase: the node serves on, and a node with a token joins");
    serves(&c.bases[0], "after-outsiders").await;
    let token = std::fs::read_to_string(c.configs[0].data_dir().join("join-token")).unwrap();
    let d = TempDir::new().unwrap();
    let joined = Node::start(config(
        d.path(),
        "127.0.0.2",
        Some((addr, token.trim().to_string())),
    ))
    .await
    .expect("a join is still served");
    assert_eq!(joined.cluster.id, 2);
    joined.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_frame_nested_100_000_deep_is_refused_and_the_node_serves_on() {
    let c = InprocCluster::start(1).await.unwrap();
    let addr = c.configs[0].advertise_cluster_addr();
    // Node 1's own credentials: a member's certificate, with the key the cluster pinned.
    let member = endpoint("127.0.0.1", &credentials(c.configs[0].data_dir()));
    let t = Duration::from_secs(10);
    let nested = nested_write();
    let answer = member
        .call_raw(&addr, Some(1), nested.len() as u32, &nested, t)
        .await
        .unwrap();
    let RpcResponse::Refused(why) = answer else {
        panic!("answered {answer:?}");
    };
    assert!(
        why.starts_with("bad request: codec: cannot decode"),
        "{why}"
    );

    // The connection and the node serve on.
    let hello = member
        .call_node(1, &addr, &RpcRequest::Hello, t)
        .await
        .unwrap();
    assert!(matches!(hello, RpcResponse::Hello), "{hello:?}");
    serves(&c.bases[0], "after-nesting").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_certificate_cannot_crowd_the_members_out() {
    let c = InprocCluster::start(1).await.unwrap();
    let addr = c.configs[0].advertise_cluster_addr();
    let creds = credentials(c.configs[0].data_dir());
    let limit = Limits::default().max_joining_connections;
    let t = Duration::from_secs(5);
    tracing::info!(
        limit,
        "phase: idle connections without a certificate, up to the limit"
    );
    let mut idle = Vec::new();
    for _ in 0..limit {
        let outsider = Transport::joining(
            creds.ca_fingerprint(),
            "127.0.0.1".parse().unwrap(),
            Limits::default(),
        )
        .unwrap();
        let conn = outsider.connection(&addr, None).await.unwrap();
        idle.push((outsider, conn));
    }
    tracing::info!("phase: one more is closed; a member still gets in");
    let extra = Transport::joining(
        creds.ca_fingerprint(),
        "127.0.0.1".parse().unwrap(),
        Limits::default(),
    )
    .unwrap();
    // The refusal travels in a CONNECTION_CLOSE packet, which QUIC does not retransmit. If the
    // client never sees it, the connection ends by its idle timeout (5 s) instead, still
    // unserved (a served one stays open on keep-alives); it is dialled again then, a few times.
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let conn = extra.connection(&addr, None).await.unwrap();
        let closed = wait_for("the extra connection closed", 2 * t, || async {
            conn.close_reason().map(|r| r.to_string())
        })
        .await
        .unwrap();
        let refused = closed.contains("too many joining nodes");
        reasons.push(closed);
        if refused {
            break;
        }
    }
    assert!(
        reasons
            .last()
            .is_some_and(|r| r.contains("too many joining nodes")),
        "{reasons:?}"
    );
    assert!(idle.iter().all(|(_, c)| c.close_reason().is_none()));
    let member = endpoint("127.0.0.1", &creds);
    let hello = member
        .call_node(1, &addr, &RpcRequest::Hello, t)
        .await
        .unwrap();
    assert!(matches!(hello, RpcResponse::Hello), "{hello:?}");

    tracing::info!("phase: once they leave, a node without a certificate gets in again");
    drop(idle);
    let again = wait_for("a connection without a certificate served", t, || async {
        let answer = extra
            .call(&addr, &RpcRequest::Hello, Duration::from_secs(1))
            .await;
        matches!(answer, Ok(RpcResponse::Refused(m)) if m.contains(ONLY_JOIN)).then_some(())
    })
    .await;
    assert!(again.is_ok(), "{again:?}");
    serves(&c.bases[0], "after-crowd").await;
    c.shutdown().await;
}
