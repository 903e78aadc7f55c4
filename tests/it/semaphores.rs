//! Semaphores: N of M permits under fenced leases, through any node; blocking acquires served
//! in arrival order; leases that end free their permits; bad input refused.

use std::time::Duration;

use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

fn url(base: &str, name: &str, op: &str) -> String {
    match op {
        "" => format!("{base}/v1/semaphores/{name}"),
        op => format!("{base}/v1/semaphores/{name}/{op}"),
    }
}

async fn acquire(http: &reqwest::Client, base: &str, name: &str, body: Value) -> (u16, Value) {
    http::post_json(http, &url(base, name, "acquire"), body, None).await
}

/// How many callers wait on `name`, as `base` sees it.
async fn waiting(http: &reqwest::Client, base: &str, name: &str) -> Option<u64> {
    http::get_json(http, &url(base, name, "")).await["waiting"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_are_shared_up_to_capacity_and_fences_grow() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let [a, b, d] = [&c.bases[0], &c.bases[1], &c.bases[2]];

    tracing::info!("phase: 2 + 1 of 3 permits through two nodes, then the semaphore is full");
    let (s, g1) = acquire(
        &http,
        a,
        "pool",
        json!({"holder": "w1", "permits": 2, "capacity": 3, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(s, 200, "{g1}");
    assert_eq!(g1["permits"], 2);
    let (s, g2) = acquire(
        &http,
        b,
        "pool",
        json!({"holder": "w2", "capacity": 3, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(s, 200, "{g2}");
    assert!(g2["fence"].as_u64() > g1["fence"].as_u64(), "{g1} {g2}");
    let (s, full) = acquire(
        &http,
        d,
        "pool",
        json!({"holder": "w3", "capacity": 3, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(s, 409, "{full}");
    assert_eq!(full["error"]["reason"], "full", "{full}");
    assert_eq!(full["error"]["free"], 0, "{full}");

    tracing::info!("phase: every node shows the same holders");
    for base in [a, b, d] {
        let v = http::get_json(&http, &url(base, "pool", "")).await;
        assert_eq!(
            (
                v["capacity"].as_u64(),
                v["held"].as_u64(),
                v["free"].as_u64()
            ),
            (Some(3), Some(3), Some(0)),
            "{v}"
        );
        assert_eq!(v["holders"].as_array().map(Vec::len), Some(2), "{v}");
    }

    tracing::info!("phase: another capacity while permits are held is refused");
    let (s, e) = acquire(
        &http,
        a,
        "pool",
        json!({"holder": "w4", "capacity": 5, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["reason"].as_str()),
        (409, Some("capacity_mismatch")),
        "{e}"
    );
    assert_eq!(e["error"]["capacity"], 3, "{e}");

    tracing::info!("phase: renew, release, and a stale fence");
    let f1 = g1["fence"].as_u64().unwrap();
    let (s, r) = http::post_json(
        &http,
        &url(b, "pool", "renew"),
        json!({"fence": f1, "ttl_ms": 30_000}),
        None,
    )
    .await;
    assert_eq!(
        (s, r["ttl_ms"].as_u64(), r["permits"].as_u64()),
        (200, Some(30_000), Some(2)),
        "{r}"
    );
    let (s, r) = http::post_json(
        &http,
        &url(d, "pool", "release"),
        json!({"fence": f1}),
        None,
    )
    .await;
    assert_eq!(
        (s, r["released"].as_bool(), r["permits"].as_u64()),
        (200, Some(true), Some(2)),
        "{r}"
    );
    let (s, r) = http::post_json(
        &http,
        &url(a, "pool", "release"),
        json!({"fence": f1}),
        None,
    )
    .await;
    assert_eq!(
        (s, r["error"]["reason"].as_str()),
        (409, Some("stale_fence")),
        "{r}"
    );
    let (s, g3) = acquire(
        &http,
        d,
        "pool",
        json!({"holder": "w3", "permits": 2, "capacity": 3, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(s, 200, "{g3}");
    assert!(g3["fence"].as_u64() > g2["fence"].as_u64(), "{g2} {g3}");
    c.shutdown().await;
}

/// Three callers on three nodes queue for one permit in turn; each release grants the next
/// in the order they arrived, and a caller whose wait ends without a grant gets 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_acquires_are_served_in_arrival_order() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let (s, g) = acquire(
        &http,
        &c.bases[0],
        "one",
        json!({"holder": "first", "capacity": 1, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let mut fence = g["fence"].as_u64().unwrap();

    tracing::info!("phase: three callers queue, one after the other");
    let mut waiters = Vec::new();
    for (i, who) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let http2 = http.clone();
        let base = c.bases[i].clone();
        waiters.push(tokio::spawn(async move {
            acquire(
                &http2,
                &base,
                "one",
                json!({"holder": who, "capacity": 1, "ttl_ms": 60_000, "wait_ms": 30_000}),
            )
            .await
        }));
        let n = i as u64 + 1;
        wait_for(
            "the caller to be queued",
            Duration::from_secs(10),
            || async { (waiting(&http, &c.bases[0], "one").await == Some(n)).then_some(()) },
        )
        .await
        .unwrap();
    }

    tracing::info!("phase: each release grants the next caller in arrival order");
    for (i, who) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let (s, r) = http::post_json(
            &http,
            &url(&c.bases[2], "one", "release"),
            json!({"fence": fence}),
            None,
        )
        .await;
        assert_eq!(s, 200, "{r}");
        let (s, g) = waiters.remove(0).await.unwrap();
        assert_eq!(s, 200, "caller {who}: {g}");
        let v = http::get_json(&http, &url(&c.bases[i], "one", "")).await;
        assert_eq!(v["holders"][0]["holder"], who, "{v}");
        assert!(g["fence"].as_u64().unwrap() > fence, "{g}");
        fence = g["fence"].as_u64().unwrap();
    }

    tracing::info!("phase: a wait that ends without a grant answers 409 and leaves no place");
    let (s, e) = acquire(
        &http,
        &c.bases[1],
        "one",
        json!({"holder": "late", "capacity": 1, "ttl_ms": 60_000, "wait_ms": 300}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["reason"].as_str()),
        (409, Some("not_granted")),
        "{e}"
    );
    assert_eq!(waiting(&http, &c.bases[1], "one").await, Some(0));
    c.shutdown().await;
}

/// A lease that is not renewed ends on the replicated clock and its permits serve the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_lease_frees_its_permits_for_the_queue() {
    let c = InprocCluster::start(1).await.unwrap();
    let http = http::client();
    let base = &c.bases[0];
    let (s, g) = acquire(
        &http,
        base,
        "short",
        json!({"holder": "crashed", "permits": 2, "capacity": 2, "ttl_ms": 500}),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let (s, g2) = acquire(
        &http,
        base,
        "short",
        json!({"holder": "next", "permits": 2, "capacity": 2, "ttl_ms": 60_000, "wait_ms": 10_000}),
    )
    .await;
    assert_eq!(
        s, 200,
        "the queued caller is granted once the lease ends: {g2}"
    );
    assert!(g2["fence"].as_u64() > g["fence"].as_u64());
    let v = http::get_json(&http, &url(base, "short", "")).await;
    assert_eq!(v["holders"][0]["holder"], "next", "{v}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_semaphore_requests_get_clear_errors() {
    let c = InprocCluster::start(1).await.unwrap();
    let http = http::client();
    let base = &c.bases[0];
    for (body, field) in [
        (
            json!({"holder": "h", "capacity": 0, "ttl_ms": 1000}),
            "capacity",
        ),
        (
            json!({"holder": "h", "capacity": 2_000_000, "ttl_ms": 1000}),
            "capacity",
        ),
        (
            json!({"holder": "h", "permits": 3, "capacity": 2, "ttl_ms": 1000}),
            "permits",
        ),
        (
            json!({"holder": "h", "permits": 0, "capacity": 2, "ttl_ms": 1000}),
            "permits",
        ),
        (json!({"holder": "h", "capacity": 2, "ttl_ms": 0}), "ttl_ms"),
        (
            json!({"holder": "h", "capacity": 2, "ttl_ms": 1000, "wait_ms": 600_000}),
            "wait_ms",
        ),
    ] {
        let (s, e) = acquire(&http, base, "s", body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["field"], field, "{body}: {e}");
    }
    let (s, e) = acquire(
        &http,
        base,
        "s",
        json!({"holder": "h", "capacity": 2, "ttl_ms": 1000, "extra": 1}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
    let r = http.get(url(base, "nobody", "")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    c.shutdown().await;
}

/// The CLI takes, shows and releases permits through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_acquires_shows_and_releases_permits() {
    let c = InprocCluster::start(1).await.unwrap();
    let addr = c.bases[0].clone();
    // The CLI blocks on its process: keep it off the runtime the node serves from.
    let cli =
        |args: Vec<String>| tokio::task::spawn_blocking(move || tests::process::stackd_ok(&args).0);
    let args = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .map(String::from)
            .chain(["--addr".to_string(), addr.clone()])
            .collect()
    };
    let out = cli(args(
        "semaphore acquire jobs --holder cli --permits 2 --capacity 5 --ttl-ms 60000",
    ))
    .await
    .unwrap();
    let fence: u64 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a fence: {out:?}"));
    let shown = cli(args("semaphore get jobs")).await.unwrap();
    assert!(
        shown.contains("capacity 5  held 2  free 3  waiting 0"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("fence {fence}  cli  2 permits")),
        "{shown}"
    );
    let out = cli(args(&format!("semaphore release jobs --fence {fence}")))
        .await
        .unwrap();
    assert!(
        out.contains(&format!("released jobs:{fence} (2 permits)")),
        "{out}"
    );
    let failed = tokio::task::spawn_blocking({
        let a = args(&format!("semaphore release jobs --fence {fence}"));
        move || tests::process::stackd_fails(&a)
    })
    .await
    .unwrap();
    assert!(
        failed.contains("404") || failed.contains("not_found") || failed.contains("409"),
        "{failed}"
    );
    c.shutdown().await;
}

/// A transaction writes only while a lease is current, and can release it in the same step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holds_on_a_lease_and_releases_it() {
    let c = InprocCluster::start(1).await.unwrap();
    let http = http::client();
    let base = &c.bases[0];
    let (s, g) = acquire(
        &http,
        base,
        "slots",
        json!({"holder": "w", "capacity": 1, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let fence = g["fence"].as_u64().unwrap();
    let txn = |fence: u64| {
        json!({
            "compare": [{"semaphore": "slots", "fence": fence}],
            "success": [{"put": {"key": "report", "text": "done"}},
                        {"semaphore_release": {"semaphore": "slots", "fence": fence}}],
            "failure": [],
        })
    };
    let (s, r) = http::post_json(&http, &format!("{base}/v1/txn"), txn(fence), None).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["succeeded"], true, "{r}");
    assert_eq!(
        r["results"][1],
        json!({"released": true, "permits": 1}),
        "{r}"
    );
    let r = http.get(url(base, "slots", "")).send().await.unwrap();
    assert_eq!(r.status(), 404, "the released semaphore holds nothing");
    tracing::info!("phase: with the lease gone, the compare fails and nothing is written");
    let (s, r) = http::post_json(&http, &format!("{base}/v1/txn"), txn(fence), None).await;
    assert_eq!((s, r["succeeded"].as_bool()), (200, Some(false)), "{r}");
    let (s, bad) = http::post_json(
        &http,
        &format!("{base}/v1/txn"),
        json!({"compare": [{"semaphore": "slots", "lock": "l", "fence": 1}], "success": []}),
        None,
    )
    .await;
    assert_eq!(s, 400, "{bad}");
    c.shutdown().await;
}
