//! The service registry through any node: registration with the CLI and the API, TTL checks
//! fed by heartbeats, drains, watches over the WebSocket that resume from a revision, and bad
//! input refused.

use std::time::Duration;

use node::api::services::ServiceView;
use node::api::ws_protocol::{ClientMessage, Push, ReplyBody};
use serde_json::{json, Value};
use tests::http::{self, send, wait_for};
use tests::inproc::InprocCluster;
use tests::process::{stackd_fails, stackd_ok};
use tests::ws::WsClient;

/// The next service push of `ws`, skipping nothing else (a watch is all it has).
async fn next_service(ws: &mut WsClient) -> ServiceView {
    match ws.next_msg(Duration::from_secs(10)).await.unwrap() {
        Push::Service(v) => v,
        other => panic!("expected a service push, got {other:?}"),
    }
}

fn ids(v: &ServiceView) -> Vec<(String, String)> {
    v.instances
        .iter()
        .map(|i| (i.id.clone(), i.status.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_from_a_revision_and_ttl_instances_follow_their_heartbeats() {
    let c = InprocCluster::start(3).await.unwrap();
    let web = http::client();
    let api = http::api(&c.bases[0]);

    // Registered with the CLI through node 2, with a TTL check.
    stackd_ok(&[
        "service",
        "register",
        "web",
        "w1",
        "--address",
        "127.0.0.1",
        "--port",
        "9",
        "--tag",
        "blue",
        "--meta",
        "zone=a",
        "--check",
        "ttl",
        "--ttl-ms",
        "1000",
        "--addr",
        &c.bases[1],
    ]);
    let (out, _) = stackd_ok(&["service", "get", "web", "--addr", &c.bases[2]]);
    assert!(out.contains("w1  127.0.0.1:9  passing"), "{out}");

    // A watch through node 3 from revision 0: the instances at once.
    let mut ws = WsClient::connect(&c.bases[2], "").await.unwrap();
    let reply = ws
        .request(ClientMessage::WatchService {
            service: "web".into(),
            since_revision: Some(0),
        })
        .await
        .unwrap()
        .unwrap();
    let ReplyBody::WatchingService { revision, .. } = reply else {
        panic!("{reply:?}")
    };
    let first = next_service(&mut ws).await;
    assert_eq!(first.revision, revision);
    assert_eq!(ids(&first), [("w1".into(), "passing".into())]);
    assert_eq!(first.instances[0].tags, ["blue"]);
    assert_eq!(first.instances[0].meta["zone"], "a");

    // Without heartbeats, w1 turns critical on the replicated clock: pushed.
    let critical = next_service(&mut ws).await;
    assert_eq!(ids(&critical), [("w1".into(), "critical".into())]);
    assert!(critical.revision > first.revision);
    assert_eq!(critical.instances[0].output, "TTL expired: no heartbeat");
    // A heartbeat makes it passing again.
    api.service_heartbeat("web", "w1").await.unwrap();
    let passing = next_service(&mut ws).await;
    assert_eq!(ids(&passing), [("w1".into(), "passing".into())]);
    // Registered again without a check: passing for as long as it is registered.
    let (status, body) = send(
        web.put(format!("{}/v1/services/web/instances/w1", c.bases[1]))
            .json(&json!({"address": "127.0.0.1", "port": 9})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let unchecked = next_service(&mut ws).await;
    assert!(unchecked.instances[0].check.is_none());
    ws.close().await;

    // Changes while nobody watched are sent at once to a watch that resumes from the last
    // revision it saw.
    let seen = unchecked.revision;
    let (status, body) = send(
        web.put(format!("{}/v1/services/web/instances/w2", c.bases[0]))
            .json(&json!({"address": "127.0.0.1", "port": 10, "weight": 5})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut ws = WsClient::connect(&c.bases[1], "").await.unwrap();
    ws.request(ClientMessage::WatchService {
        service: "web".into(),
        since_revision: Some(seen),
    })
    .await
    .unwrap()
    .unwrap();
    let resumed = next_service(&mut ws).await;
    assert!(resumed
        .instances
        .iter()
        .any(|i| i.id == "w2" && i.weight == 5));
    assert!(resumed.revision > seen);
    // Resuming from the current revision sends nothing until the next change.
    let mut quiet = WsClient::connect(&c.bases[0], "").await.unwrap();
    quiet
        .request(ClientMessage::WatchService {
            service: "web".into(),
            since_revision: Some(resumed.revision),
        })
        .await
        .unwrap()
        .unwrap();

    // A drain keeps the instance, out of the healthy list, then removes it.
    api.service_deregister("web", "w2", Some(300))
        .await
        .unwrap();
    let draining = next_service(&mut ws).await;
    let w2 = draining.instances.iter().find(|i| i.id == "w2").unwrap();
    assert!(w2.draining_until_ms.is_some());
    assert_eq!(next_service(&mut quiet).await.revision, draining.revision);
    let healthy = api.service("web", true).await.unwrap();
    assert!(healthy.instances.iter().all(|i| i.id != "w2"));
    let gone = next_service(&mut ws).await;
    assert!(gone.instances.iter().all(|i| i.id != "w2"), "{gone:?}");

    // Deregistering the last one empties the service: listed no more, watchers told.
    stackd_ok(&["service", "deregister", "web", "w1", "--addr", &c.bases[0]]);
    let empty = next_service(&mut ws).await;
    assert!(empty.instances.is_empty());
    let list = api.services().await.unwrap();
    assert!(list.services.iter().all(|s| s.name != "web"));
    ws.close().await;
    quiet.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_and_routes_are_refused_with_the_field() {
    let c = InprocCluster::start(1).await.unwrap();
    let web = http::client();
    let base = &c.bases[0];
    let put = |path: &str, body: Value| web.put(format!("{base}{path}")).json(&body);
    let cases = [
        (
            "/v1/services/we b/instances/a",
            json!({"address": "h", "port": 1}),
            "service",
        ),
        (
            "/v1/services/web/instances/a",
            json!({"address": "h", "port": 0}),
            "port",
        ),
        (
            "/v1/services/web/instances/a",
            json!({"address": "a b", "port": 1}),
            "address",
        ),
        (
            "/v1/services/web/instances/a",
            json!({"address": "h", "port": 1, "check": {"type": "ping"}}),
            "check.type",
        ),
        (
            "/v1/services/web/instances/a",
            json!({"address": "h", "port": 1, "check": {"type": "ttl"}}),
            "check.ttl_ms",
        ),
        (
            "/v1/services/web/instances/a",
            json!({"address": "h", "port": 1, "check": {"type": "http", "interval_ms": 50}}),
            "check.interval_ms",
        ),
        (
            "/v1/services/web/instances/a",
            json!({"address": "h", "port": 1, "weight": 0}),
            "weight",
        ),
        (
            "/v1/routes/r",
            json!({"service": "web", "strategy": "fastest"}),
            "strategy",
        ),
        (
            "/v1/routes/r",
            json!({"service": "web", "strategy": "hash"}),
            "hash_on",
        ),
        (
            "/v1/routes/r",
            json!({"service": "web", "path_prefix": "api"}),
            "path_prefix",
        ),
        (
            "/v1/routes/r",
            json!({"service": "web", "retries": 9}),
            "retries",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = send(put(path, body.clone())).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
        assert_eq!(answer["error"]["field"], field, "{path} {body}: {answer}");
    }
    // Unknown fields are refused, not ignored.
    let (status, answer) = send(put(
        "/v1/services/web/instances/a",
        json!({"address": "h", "port": 1, "colour": "red"}),
    ))
    .await;
    assert_eq!(status, 400, "{answer}");

    // A heartbeat needs a ttl check; unknown instances and routes are 404.
    let (status, _) = send(put(
        "/v1/services/web/instances/a",
        json!({"address": "h", "port": 1}),
    ))
    .await;
    assert_eq!(status, 200);
    let (status, answer) =
        send(web.post(format!("{base}/v1/services/web/instances/a/heartbeat"))).await;
    assert_eq!(
        (status, answer["error"]["reason"].as_str()),
        (409, Some("not_ttl"))
    );
    let (status, _) = send(web.delete(format!("{base}/v1/services/web/instances/zz"))).await;
    assert_eq!(status, 404);
    let (status, _) = send(web.delete(format!("{base}/v1/routes/zz"))).await;
    assert_eq!(status, 404);
    let (status, answer) = send(web.delete(format!(
        "{base}/v1/services/web/instances/a?drain_ms=99999999"
    )))
    .await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (400, Some("drain_ms"))
    );

    // The CLI says why too, and the node is still there.
    let err = stackd_fails(&[
        "route",
        "put",
        "r",
        "--service",
        "web",
        "--strategy",
        "hash",
        "--addr",
        base,
    ]);
    assert!(err.contains("hash_on"), "{err}");
    stackd_ok(&[
        "route",
        "put",
        "r",
        "--service",
        "web",
        "--strategy",
        "hash",
        "--hash-cookie",
        "sid",
        "--addr",
        base,
    ]);
    let (out, _) = stackd_ok(&["route", "list", "--addr", base]);
    assert!(out.contains("r  */  -> web  hash"), "{out}");
    wait_for("the node healthy", Duration::from_secs(5), || async {
        http::api(base).ready().await.ok()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registers_the_services_of_its_config_file() {
    let c = InprocCluster::start_with(1, |config| {
        let toml = "[[services]]\nservice = \"api\"\nid = \"api-1\"\naddress = \"127.0.0.1\"\n\
                    port = 9\ntags = [\"v2\"]\ncheck = { type = \"ttl\", ttl_ms = 60000 }\n";
        config.services = node::config::Config::from_toml(toml).unwrap().services;
    })
    .await
    .unwrap();
    let api = http::api(&c.bases[0]);
    let view = wait_for(
        "the configured instance",
        Duration::from_secs(10),
        || async {
            api.service("api", false)
                .await
                .ok()
                .filter(|v| !v.instances.is_empty())
        },
    )
    .await
    .unwrap();
    assert_eq!(view.instances[0].id, "api-1");
    assert_eq!(view.instances[0].tags, ["v2"]);
    assert_eq!(view.instances[0].status, "passing");
}

/// Health checks this node ran with this `result` ("" for all), from its `/metrics`.
async fn checks_run(base: &str, result: &str) -> u64 {
    let text = http::api(base).metrics().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("stackd_health_checks_total{") && l.contains(result))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_registry_of_a_thousand_checked_instances_writes_nothing() {
    use futures::StreamExt;
    const INSTANCES: usize = 1_000;
    let c = InprocCluster::start(3).await.unwrap();
    let web = http::client();
    // The app: a port that accepts connections (every instance checks it by TCP connect).
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = app.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        while let Ok((conn, _)) = app.accept().await {
            drop(conn);
        }
    });
    let base = c.bases[0].clone();
    futures::stream::iter(0..INSTANCES)
        .map(|i| {
            let (web, base) = (web.clone(), base.clone());
            async move {
                let (status, body) = send(
                    web.put(format!("{base}/v1/services/web/instances/i{i}"))
                        // Every 2 s, with 2 s to connect and 3 failures in a row before
                        // critical: the three nodes share this test's two threads with the
                        // app and 500 checks a second, and a check starved of CPU past a
                        // shorter timeout would flip an instance that is up.
                        .json(&json!({"address": "127.0.0.1", "port": port,
                            "check": {"type": "tcp", "interval_ms": 2000,
                                      "timeout_ms": 2000, "failures_before_critical": 3,
                                      "successes_before_passing": 1}})),
                )
                .await;
                assert_eq!(status, 200, "{body}");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let api = http::api(&base);
    wait_for(
        "every instance passing",
        Duration::from_secs(60),
        || async {
            let v = api.service("web", true).await.ok()?;
            (v.instances.len() == INSTANCES).then_some(())
        },
    )
    .await
    .unwrap();
    // Every node runs its share of the checks; three more rounds of all of them write nothing.
    let applied = |s: node::api::model::ClusterStatus| s.applied_index;
    let before = applied(api.cluster_status().await.unwrap());
    let mut ran = 0;
    for b in &c.bases {
        ran += checks_run(b, "").await;
    }
    let shares = wait_for(
        "three more rounds of checks",
        Duration::from_secs(30),
        || async {
            let mut shares = Vec::new();
            for b in &c.bases {
                shares.push(checks_run(b, "").await);
            }
            (shares.iter().sum::<u64>() >= ran + 3 * INSTANCES as u64).then_some(shares)
        },
    )
    .await
    .unwrap();
    let after = applied(api.cluster_status().await.unwrap());
    let mut failed = 0;
    for b in &c.bases {
        failed += checks_run(b, "failed").await;
    }
    eprintln!(
        "checks run per node: {shares:?} ({failed} failed); applied index {before} -> {after}"
    );
    assert_eq!(after, before, "a stable registry wrote to the log");
    assert!(
        shares.iter().all(|n| *n > 0),
        "a node ran no check: {shares:?}"
    );
    accept.abort();
}
