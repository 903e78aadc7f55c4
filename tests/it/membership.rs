//! Joining: the token decides who gets in, and a refused node learns why.

use node::server::Node;
use tempfile::TempDir;
use tests::inproc::{config, InprocCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_with_a_clear_error() {
    let c = InprocCluster::start(1).await.unwrap();
    let good = std::fs::read_to_string(c.configs[0].data_dir.join("join-token")).unwrap();
    let good = good.trim();
    let join = c.configs[0].advertise_cluster_addr.clone();

    // Right cluster fingerprint, wrong secret: the cluster refuses.
    let (prefix, _) = good.rsplit_once('.').unwrap();
    let wrong_secret = format!("{prefix}.00000000000000000000000000000000");
    let d = TempDir::new().unwrap();
    let err = Node::start(config(
        d.path(),
        "127.0.0.2",
        Some((join.clone(), wrong_secret)),
    ))
    .await
    .err()
    .expect("a wrong secret must not join");
    assert!(format!("{err:#}").contains("invalid join token"), "{err:#}");

    // A token naming another cluster's certificate: the joiner refuses to talk.
    let other = format!("stk1.{}.{}", "ab".repeat(32), "cd".repeat(16));
    let d = TempDir::new().unwrap();
    let err = Node::start(config(d.path(), "127.0.0.3", Some((join.clone(), other))))
        .await
        .err()
        .expect("a foreign certificate must not be trusted");
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");

    // Garbage is rejected before any connection.
    let d = TempDir::new().unwrap();
    let err = Node::start(config(
        d.path(),
        "127.0.0.4",
        Some((join, "nonsense".into())),
    ))
    .await
    .err()
    .expect("a malformed token must not join");
    assert!(format!("{err:#}").contains("token"), "{err:#}");

    // The cluster still has exactly its one member.
    let m = c.nodes[0].as_ref().unwrap().cluster.metrics();
    assert_eq!(m.membership_config.membership().nodes().count(), 1);
    c.shutdown().await;
}
