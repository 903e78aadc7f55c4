//! The service registry, health checks run by the cluster and the gateway, with real `stackd`
//! processes and the project's own test app (`tests/src/bin/test-app.rs`) as the instances.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tests::http::{client, send, wait_for};
use tests::process::{ProcCluster, ProcOptions};

/// One instance of the test app, killed when dropped.
struct App {
    child: Child,
    name: String,
    port: u16,
}

impl App {
    fn start(name: &str, delay_ms: u64) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_test-app"))
            .args(["127.0.0.1:0", name, &delay_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning test-app");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("listening line");
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        App {
            child,
            name: name.into(),
            port,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Registers `app` as an instance of `service` with an HTTP check every `interval_ms`, which
/// turns it critical at its first failure.
async fn register(http: &reqwest::Client, base: &str, service: &str, app: &App, interval_ms: u64) {
    register_with(http, base, service, app, interval_ms, 1).await
}

/// [`register`], critical only after `failures` failed checks in a row: for a test that needs
/// its instances to stay healthy on a loaded machine, where one check may take longer than
/// its timeout (the interval, when under 2 s).
async fn register_with(
    http: &reqwest::Client,
    base: &str,
    service: &str,
    app: &App,
    interval_ms: u64,
    failures: u32,
) {
    let (status, body) = send(
        http.put(format!(
            "{base}/v1/services/{service}/instances/{}",
            app.name
        ))
        .json(&json!({
            "address": "127.0.0.1",
            "port": app.port,
            "check": {"type": "http", "path": "/health", "interval_ms": interval_ms,
                      "successes_before_passing": 1, "failures_before_critical": failures},
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn put_route(http: &reqwest::Client, base: &str, name: &str, route: Value) {
    let (status, body) = send(http.put(format!("{base}/v1/routes/{name}")).json(&route)).await;
    assert_eq!(status, 200, "{body}");
}

/// The ids of `service`'s healthy instances, as `base` sees them.
async fn healthy(http: &reqwest::Client, base: &str, service: &str) -> Option<BTreeSet<String>> {
    let (status, body) = send(http.get(format!(
        "{base}/v1/services/{service}?healthy=true&consistency=stale"
    )))
    .await;
    (status == 200).then(|| {
        body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    })
}

async fn wait_healthy(http: &reqwest::Client, base: &str, service: &str, ids: &[&str]) {
    let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    wait_for(
        &format!("{service} healthy: {ids:?}"),
        Duration::from_secs(20),
        || async { (healthy(http, base, service).await.as_ref() == Some(&want)).then_some(()) },
    )
    .await
    .unwrap();
}

/// The instance that answered a GET of `path` through the gateway at `gw` (with `host`).
async fn through(http: &reqwest::Client, gw: &str, host: Option<&str>, path: &str) -> (u16, Value) {
    let mut req = http.get(format!("http://{gw}{path}"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_gateway_reaches_every_instance_with_sticky_routes_websockets_and_limits() {
    let c = ProcCluster::start_with(
        3,
        ProcOptions {
            first_ip: 41,
            gateway: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = client();
    let apps: Vec<App> = ["a", "b", "c"].iter().map(|n| App::start(n, 0)).collect();
    for (i, app) in apps.iter().enumerate() {
        // Registered through different nodes. Sticky clients below stay on their instance
        // only while the set of healthy instances stays the same: one slow check must not
        // turn an instance critical.
        register_with(&http, &c.bases[i], "web", app, 500, 3).await;
    }
    put_route(
        &http,
        &c.bases[0],
        "web",
        json!({"service": "web", "strategy": "round_robin"}),
    )
    .await;
    wait_healthy(&http, &c.bases[2], "web", &["a", "b", "c"]).await;

    // Through every node's gateway, round robin reaches every instance.
    for gw in &c.gateway_addrs {
        let mut seen = BTreeSet::new();
        for _ in 0..9 {
            let (status, body) = through(&http, gw, None, "/hello?x=1").await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["path"], "/hello?x=1");
            seen.insert(body["instance"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 3, "through {gw}: {seen:?}");
    }

    // Forwarding headers, and a request id kept when the client sent one.
    let gw = &c.gateway_addrs[1];
    let (_, body) = through(&http, gw, None, "/").await;
    assert_eq!(body["forwarded_proto"], "http");
    assert_eq!(body["forwarded_host"], gw.as_str());
    assert!(body["forwarded_for"].as_str().unwrap().starts_with("127."));
    assert_eq!(body["request_id"].as_str().unwrap().len(), 32);
    let (_, body) = send(
        http.get(format!("http://{gw}/"))
            .header("x-request-id", "req-7"),
    )
    .await;
    assert_eq!(body["request_id"], "req-7");
    // An address a proxy before the gateway recorded comes first.
    let (_, body) = send(
        http.get(format!("http://{gw}/"))
            .header("x-forwarded-for", "10.0.0.1"),
    )
    .await;
    let forwarded_for = body["forwarded_for"].as_str().unwrap();
    assert!(
        forwarded_for.starts_with("10.0.0.1, 127."),
        "{forwarded_for}"
    );

    // A route changed through one node applies on every node within 1 s.
    put_route(
        &http,
        &c.bases[0],
        "api",
        json!({"service": "web", "host": "api.test", "path_prefix": "/v2", "strip_prefix": true,
               "max_body_bytes": 1000}),
    )
    .await;
    let changed = Instant::now();
    for gw in &c.gateway_addrs {
        let remaining = Duration::from_secs(1).saturating_sub(changed.elapsed());
        wait_for("the new route on every gateway", remaining, || async {
            let (status, body) = through(&http, gw, Some("api.test"), "/v2/items").await;
            (status == 200 && body["path"] == "/items").then_some(())
        })
        .await
        .unwrap();
    }
    // Another host does not match it; the catch-all route serves it as it is.
    let (_, body) = through(&http, gw, Some("other.test"), "/v2/items").await;
    assert_eq!(body["path"], "/v2/items");

    // The route's body limit; a client still sending a body well over it reads the answer.
    for size in [2000, 3 << 20, 3 << 20, 3 << 20] {
        let resp = http
            .post(format!("http://{gw}/v2/upload"))
            .header("host", "api.test")
            .body(vec![b'x'; size])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_large");
    }
    let (status, body) = send(
        http.post(format!("http://{gw}/v2/upload"))
            .header("host", "api.test")
            .body(vec![b'x'; 1000]),
    )
    .await;
    assert_eq!((status, body["body_bytes"].as_u64()), (200, Some(1000)));

    // Sticky: one client (header) stays on one instance while it is healthy.
    put_route(
        &http,
        &c.bases[1],
        "sticky",
        json!({"service": "web", "host": "sticky.test", "strategy": "hash",
               "hash_on": {"header": "x-user"}}),
    )
    .await;
    wait_for("the sticky route", Duration::from_secs(5), || async {
        let (status, _) = through(&http, gw, Some("sticky.test"), "/").await;
        (status == 200).then_some(())
    })
    .await
    .unwrap();
    let mut homes = BTreeMap::new();
    for user in 0..8 {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let (_, body) = send(
                http.get(format!("http://{gw}/"))
                    .header("host", "sticky.test")
                    .header("x-user", format!("user-{user}")),
            )
            .await;
            seen.insert(body["instance"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "user-{user} moved: {seen:?}");
        homes.insert(user, seen.into_iter().next().unwrap());
    }
    let used: BTreeSet<_> = homes.values().collect();
    assert!(used.len() >= 2, "8 users all on one instance: {homes:?}");

    // A WebSocket proxied end to end.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{gw}/ws"))
        .await
        .expect("WebSocket through the gateway");
    for n in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            format!("hi {n}").into(),
        ))
        .await
        .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        let text = reply.into_text().unwrap();
        assert!(text.ends_with(&format!(": hi {n}")), "{text}");
    }

    // No route, and a route to a service without healthy instances.
    put_route(
        &http,
        &c.bases[0],
        "empty",
        json!({"service": "nothing", "host": "empty.test"}),
    )
    .await;
    // Put through node 1, it applies on node 2 (whose gateway this is) a moment later.
    wait_for(
        "503 for a service without instances",
        Duration::from_secs(5),
        || async {
            let (status, body) = through(&http, gw, Some("empty.test"), "/").await;
            (status == 503 && body["error"]["code"] == "unavailable").then_some(())
        },
    )
    .await
    .unwrap();
    let (status, _) = send(http.delete(format!("{}/v1/routes/web", c.bases[2]))).await;
    assert_eq!(status, 200);
    wait_for("the deleted route gone", Duration::from_secs(5), || async {
        let (status, body) = through(&http, gw, Some("nowhere.test"), "/").await;
        (status == 404 && body["error"]["code"] == "not_found").then_some(())
    })
    .await
    .unwrap();
}

/// Each request's start and status (0: no answer).
type Results = Arc<Mutex<Vec<(Instant, u16)>>>;

/// GETs through `gw` on `workers` loops until `stop`; each result with when it started.
fn load(
    gw: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Results, Vec<tokio::task::JoinHandle<()>>) {
    let results = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..workers)
        .map(|_| {
            let (gw, stop, results) = (gw.clone(), stop.clone(), results.clone());
            tokio::spawn(async move {
                let http = client();
                // Bounded: at most 20,000 requests per loop.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    let status = match http.get(format!("http://{gw}/")).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    results.lock().unwrap().push((started, status));
                }
            })
        })
        .collect();
    (results, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_instance_leaves_the_rotation_and_checks_move_off_a_dead_node() {
    let mut c = ProcCluster::start_with(
        3,
        ProcOptions {
            first_ip: 44,
            gateway: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = client();
    let mut apps: Vec<App> = ["a", "b", "c"].iter().map(|n| App::start(n, 0)).collect();
    const INTERVAL_MS: u64 = 500;
    for app in &apps {
        register(&http, &c.bases[0], "web", app, INTERVAL_MS).await;
    }
    put_route(
        &http,
        &c.bases[0],
        "web",
        json!({"service": "web", "retries": 2}),
    )
    .await;
    wait_healthy(&http, &c.bases[0], "web", &["a", "b", "c"]).await;

    // Under load through node 1's gateway, instance c dies.
    let stop = Arc::new(AtomicBool::new(false));
    let (results, tasks) = load(c.gateway_addrs[0].clone(), 4, stop.clone());
    wait_for("load under way", Duration::from_secs(10), || async {
        (results.lock().unwrap().len() > 50).then_some(())
    })
    .await
    .unwrap();
    apps[2].kill();
    let killed = Instant::now();
    // It leaves the rotation within its check interval plus 1 s.
    wait_healthy_within(&http, &c.bases[0], &["a", "b"], INTERVAL_MS + 1_000).await;
    let ejected = Instant::now();
    eprintln!(
        "instance left the rotation {:?} after it died",
        ejected - killed
    );
    let after = results.lock().unwrap().len();
    wait_for(
        "more load after the ejection",
        Duration::from_secs(10),
        || async { (results.lock().unwrap().len() > after + 200).then_some(()) },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let results = results.lock().unwrap().clone();
    let failed_after: Vec<_> = results
        .iter()
        .filter(|(at, status)| *at >= ejected && *status != 200)
        .collect();
    let failed_before = results
        .iter()
        .filter(|(at, status)| *at < ejected && *status != 200)
        .count();
    eprintln!(
        "{} requests, {failed_before} failed before the ejection, {} after",
        results.len(),
        failed_after.len()
    );
    assert!(failed_after.is_empty(), "{failed_after:?}");

    // The node that runs b's check dies: the check moves, and b's death is still seen.
    let first = checked_by(&http, &c.bases[0], "b")
        .await
        .expect("b has a checker");
    let dead = c.index_of(first);
    c.kill9(dead).unwrap();
    let survivor = (0..3).find(|i| *i != dead).unwrap();
    let moved_to = wait_for("b's check moved", Duration::from_secs(20), || async {
        checked_by(&http, &c.bases[survivor], "b")
            .await
            .filter(|n| *n != first)
    })
    .await
    .unwrap();
    eprintln!("b's check moved from node {first} to node {moved_to}");
    apps[1].kill();
    wait_for(
        "b critical after its checker died",
        Duration::from_secs(10),
        || async {
            let h = healthy(&http, &c.bases[survivor], "web").await?;
            (!h.contains("b")).then_some(())
        },
    )
    .await
    .unwrap();
}

/// The node that runs `id`'s check, as `base` sees it.
async fn checked_by(http: &reqwest::Client, base: &str, id: &str) -> Option<u64> {
    let (_, body) = send(http.get(format!("{base}/v1/services/web?consistency=stale"))).await;
    body["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)?["checked_by"]
        .as_u64()
}

/// Waits at most `within_ms` until only `ids` of `web` are healthy.
async fn wait_healthy_within(http: &reqwest::Client, base: &str, ids: &[&str], within_ms: u64) {
    let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    wait_for(
        "the dead instance out of the rotation",
        Duration::from_millis(within_ms),
        || async { (healthy(http, base, "web").await.as_ref() == Some(&want)).then_some(()) },
    )
    .await
    .unwrap();
}

/// Requests per instance of `count` GETs of `path` through `gw`, `workers` at a time.
async fn spread(gw: &str, path: &str, count: usize, workers: usize) -> BTreeMap<String, usize> {
    let per = Arc::new(Mutex::new(BTreeMap::new()));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (gw, path, per) = (gw.to_string(), path.to_string(), per.clone());
            tokio::spawn(async move {
                let http = client();
                for _ in 0..count / workers {
                    let (status, body) = send(http.get(format!("http://{gw}{path}"))).await;
                    assert_eq!(status, 200, "{body}");
                    let name = body["instance"].as_str().unwrap().to_string();
                    *per.lock().unwrap().entry(name).or_insert(0) += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let per = per.lock().unwrap().clone();
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_instance_gets_few_requests_under_peak_ewma_and_a_third_under_round_robin() {
    let c = ProcCluster::start_with(
        1,
        ProcOptions {
            first_ip: 47,
            gateway: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = client();
    let apps = [
        App::start("a", 0),
        App::start("b", 0),
        App::start("slow", 50),
    ];
    for app in &apps {
        register(&http, &c.bases[0], "web", app, 1_000).await;
    }
    for (name, strategy) in [("ewma", "peak_ewma"), ("rr", "round_robin")] {
        put_route(
            &http,
            &c.bases[0],
            name,
            json!({"service": "web", "path_prefix": format!("/{name}"), "strategy": strategy}),
        )
        .await;
    }
    wait_healthy(&http, &c.bases[0], "web", &["a", "b", "slow"]).await;
    let gw = &c.gateway_addrs[0];
    let share = |per: &BTreeMap<String, usize>| {
        let total: usize = per.values().sum();
        per.get("slow").copied().unwrap_or(0) as f64 / total as f64
    };
    let ewma = spread(gw, "/ewma/x", 600, 6).await;
    let rr = spread(gw, "/rr/x", 600, 6).await;
    eprintln!("peak EWMA: {ewma:?}; round robin: {rr:?}");
    assert!(
        share(&ewma) <= 0.20,
        "peak EWMA sent the slow instance {ewma:?}"
    );
    assert!(
        (0.25..=0.42).contains(&share(&rr)),
        "round robin sent the slow instance {rr:?}"
    );
}

/// Every alive node's WebSocket connections, as `base`'s route table shows them.
async fn ws_per_node(http: &reqwest::Client, base: &str) -> BTreeMap<u64, u64> {
    let (_, body) = send(http.get(format!("{base}/v1/cluster/route"))).await;
    body["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    let id = n["id"].as_u64().unwrap();
                    (id, n["websocket_connections"].as_u64().unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A WebSocket opened the way a client does: at `base`, following a `moved` answer once.
/// Answers the connection and the node it ended on.
async fn open_ws(base: &str) -> (tests::ws::WsClient, String) {
    use node::api::ws_protocol::{ClientMessage, Push};
    let mut ws = tests::ws::WsClient::connect(base, "").await.unwrap();
    let first = ws.request(ClientMessage::Ping {}).await;
    if first.is_ok() {
        return (ws, base.to_string());
    }
    let Ok(Push::Moved(m)) = ws.next_msg(Duration::from_secs(5)).await else {
        panic!("a WebSocket at {base} closed without a moved answer: {first:?}");
    };
    let there = format!("http://{}", m.api_addr);
    let mut ws = tests::ws::WsClient::connect(&there, "?moved=1")
        .await
        .unwrap();
    ws.request(ClientMessage::Ping {}).await.unwrap().unwrap();
    (ws, there)
}

/// Opens `n` WebSockets at `base` one after another, each after the route table counts every
/// connection already open (so each meets the nodes' current loads); answers how many ended
/// on each node, and adds them to `open`.
async fn open_clients(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    open: &mut Vec<tests::ws::WsClient>,
) -> BTreeMap<String, usize> {
    let mut on = BTreeMap::new();
    for _ in 0..n {
        let (ws, node) = open_ws(base).await;
        *on.entry(node).or_default() += 1;
        open.push(ws);
        let want = open.len() as u64;
        wait_for(
            "the route table counts every connection",
            Duration::from_secs(10),
            || async {
                (ws_per_node(http, base).await.values().sum::<u64>() == want).then_some(())
            },
        )
        .await
        .unwrap();
    }
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_websockets_spread_back_to_a_restarted_node() {
    let mut c = ProcCluster::start_with(
        3,
        ProcOptions {
            first_ip: 50,
            env: vec![("STACKD_MOVE_CLIENTS_ABOVE".into(), "3".into())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = client();
    let base = c.bases[0].clone();
    // Node 3 is down while the first clients connect, all of them to node 1.
    c.kill9(2).unwrap();
    wait_for(
        "node 3 out of the route table",
        Duration::from_secs(20),
        || async { (ws_per_node(&http, &base).await.len() == 2).then_some(()) },
    )
    .await
    .unwrap();
    let mut open = Vec::new();
    let on = open_clients(&http, &base, 8, &mut open).await;
    eprintln!("with node 3 down: {on:?}");
    assert_eq!(
        on.len(),
        2,
        "8 clients of node 1 spread over nodes 1 and 2: {on:?}"
    );

    // Node 3 restarts; the next clients of node 1 go mostly to it.
    c.restart(2).unwrap();
    wait_for(
        "node 3 back in the route table",
        Duration::from_secs(30),
        || async { (ws_per_node(&http, &base).await.len() == 3).then_some(()) },
    )
    .await
    .unwrap();
    let later = open_clients(&http, &base, 6, &mut open).await;
    let counts = ws_per_node(&http, &base).await;
    eprintln!("after node 3 restarted: new ones {later:?}; per node {counts:?}");
    let node3 = c.bases[2].clone();
    assert!(
        later.get(&node3).copied().unwrap_or(0) >= 3,
        "the restarted node got few of the new clients: {later:?}"
    );
    // The least loaded member is what a client asks for first.
    let api = tests::http::api(&base);
    let table = api.route_table().await.unwrap();
    let least = table.nodes.first().unwrap();
    assert_eq!(
        least.load,
        table.nodes.iter().map(|n| n.load).min().unwrap()
    );
    for ws in open {
        ws.close().await;
    }
}

/// `/metrics` lines of the gateway's series for `instance` (by its `service/id` label).
async fn series_of(base: &str, instance: &str) -> usize {
    let text = tests::http::api(base).metrics().await.unwrap();
    let label = format!("instance=\"{instance}\"");
    text.lines()
        .filter(|l| l.starts_with("stackd_gateway_") && l.contains(&label))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_series_of_a_deregistered_instance_and_a_deleted_route_are_removed() {
    let c = ProcCluster::start_with(
        1,
        ProcOptions {
            first_ip: 61,
            gateway: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = client();
    let base = &c.bases[0];
    let gw = &c.gateway_addrs[0];
    let apps: Vec<App> = ["m1", "m2"].iter().map(|n| App::start(n, 0)).collect();
    for app in &apps {
        register(&http, base, "metered", app, 500).await;
    }
    put_route(
        &http,
        base,
        "metered",
        json!({"service": "metered", "strategy": "round_robin"}),
    )
    .await;
    wait_healthy(&http, base, "metered", &["m1", "m2"]).await;
    for _ in 0..4 {
        let (status, body) = through(&http, gw, None, "/").await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(series_of(base, "metered/m1").await > 0);
    assert!(series_of(base, "metered/m2").await > 0);

    // Deregistered: its series go; the other instance's stay.
    let (status, body) =
        send(http.delete(format!("{base}/v1/services/metered/instances/m1"))).await;
    assert_eq!(status, 200, "{body}");
    wait_for("m1's series removed", Duration::from_secs(10), || async {
        (series_of(base, "metered/m1").await == 0).then_some(())
    })
    .await
    .unwrap();
    assert!(series_of(base, "metered/m2").await > 0);

    // The route deleted: every series under it goes.
    let (status, body) = send(http.delete(format!("{base}/v1/routes/metered"))).await;
    assert_eq!(status, 200, "{body}");
    wait_for(
        "the route's series removed",
        Duration::from_secs(10),
        || async { (series_of(base, "metered/m2").await == 0).then_some(()) },
    )
    .await
    .unwrap();
}

/// A body that arrives too slowly through the gateway is answered 408 within the node's
/// `api.body_read_timeout_ms`, as on the API, and the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_sent_too_slowly_through_the_gateway_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = ProcCluster::start_with(
        1,
        ProcOptions {
            first_ip: 97,
            gateway: true,
            env: vec![("STACKD_BODY_READ_TIMEOUT_MS".into(), "300".into())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let http = client();
    let gw = c.gateway_addrs[0].clone();
    // A route to a service with no instance: every request that gets through is a 503.
    put_route(&http, &c.bases[0], "slow", json!({"service": "nowhere"})).await;
    wait_for(
        "the route in the gateway's table",
        Duration::from_secs(30),
        || async { (through(&http, &gw, None, "/up").await.0 == 503).then_some(()) },
    )
    .await
    .unwrap();

    // 10 of the 100 bytes announced, then nothing.
    let mut tcp = tokio::net::TcpStream::connect(&gw).await.unwrap();
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut got))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    let got = String::from_utf8_lossy(&got).to_string();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    let body: Value = serde_json::from_str(got.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");

    // The gateway still answers.
    assert_eq!(through(&http, &gw, None, "/again").await.0, 503);
}
