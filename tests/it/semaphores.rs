//! Semaphores: N of M permits under fenced leases, through any node; blocking acquires served
//! in arrival order; leases that end free their permits; bad input refused.

use std::time::Duration;

use node::api::client::{ApiResult, Client};
use node::api::model::TxnRequest;
use node::api::semaphores::{AcquireBody, Grant, Released};
use node::error::{ErrorBody, ErrorCode};
use reqwest::Method;
use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

/// Acquires `name` through `api` with the acquire body written as JSON.
async fn acquire(api: &Client, name: &str, body: Value) -> ApiResult<Grant> {
    let body: AcquireBody = serde_json::from_value(body).expect("an acquire body");
    api.semaphore_acquire(name, &body).await
}

/// `error.reason` of a failed call.
fn reason<T: std::fmt::Debug>(r: &ApiResult<T>) -> Option<&str> {
    r.as_ref().err()?.detail()?.reason.as_deref()
}

/// How many callers wait on `name`, as `api`'s node sees it.
async fn waiting(api: &Client, name: &str) -> Option<u32> {
    Some(api.semaphore_get(name).await.ok()?.waiting)
}

fn apis(c: &InprocCluster) -> Vec<Client> {
    c.bases.iter().map(|b| http::api(b)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_are_shared_up_to_capacity_and_fences_grow() {
    let c = InprocCluster::start(3).await.unwrap();
    let apis = apis(&c);
    let [a, b, d] = [&apis[0], &apis[1], &apis[2]];

    tracing::info!("phase: 2 + 1 of 3 permits through two nodes, then the semaphore is full");
    let g1 = acquire(
        a,
        "pool",
        json!({"holder": "w1", "permits": 2, "capacity": 3, "ttl_ms": 60_000}),
    )
    .await
    .unwrap();
    assert_eq!(g1.permits, 2);
    let g2 = acquire(
        b,
        "pool",
        json!({"holder": "w2", "capacity": 3, "ttl_ms": 60_000}),
    )
    .await
    .unwrap();
    assert!(g2.fence > g1.fence, "{g1:?} {g2:?}");
    let full = acquire(
        d,
        "pool",
        json!({"holder": "w3", "capacity": 3, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(
        full.as_ref().err().and_then(|e| e.status()),
        Some(409),
        "{full:?}"
    );
    assert_eq!(reason(&full), Some("full"), "{full:?}");
    assert_eq!(
        full.as_ref()
            .unwrap_err()
            .detail()
            .unwrap()
            .more
            .get("free"),
        Some(&json!(0)),
        "{full:?}"
    );

    tracing::info!("phase: every node shows the same holders");
    for api in [a, b, d] {
        let v = api.semaphore_get("pool").await.unwrap();
        assert_eq!((v.capacity, v.held, v.free), (3, 3, 0), "{v:?}");
        assert_eq!(v.holders.len(), 2, "{v:?}");
    }

    tracing::info!("phase: another capacity while permits are held is refused");
    let e = acquire(
        a,
        "pool",
        json!({"holder": "w4", "capacity": 5, "ttl_ms": 60_000}),
    )
    .await;
    assert_eq!(
        (e.as_ref().err().and_then(|e| e.status()), reason(&e)),
        (Some(409), Some("capacity_mismatch")),
        "{e:?}"
    );
    assert_eq!(
        e.as_ref()
            .unwrap_err()
            .detail()
            .unwrap()
            .more
            .get("capacity"),
        Some(&json!(3)),
        "{e:?}"
    );

    tracing::info!("phase: renew, release, and a stale fence");
    let f1 = g1.fence;
    let r = b.semaphore_renew("pool", f1, 30_000).await.unwrap();
    assert_eq!((r.ttl_ms, r.permits), (30_000, 2), "{r:?}");
    let r = d.semaphore_release("pool", f1).await.unwrap();
    assert_eq!(
        r,
        Released {
            released: true,
            permits: 2
        }
    );
    let r = a.semaphore_release("pool", f1).await;
    assert_eq!(
        (r.as_ref().err().and_then(|e| e.status()), reason(&r)),
        (Some(409), Some("stale_fence")),
        "{r:?}"
    );
    let g3 = acquire(
        d,
        "pool",
        json!({"holder": "w3", "permits": 2, "capacity": 3, "ttl_ms": 60_000}),
    )
    .await
    .unwrap();
    assert!(g3.fence > g2.fence, "{g2:?} {g3:?}");
    c.shutdown().await;
}

/// Three callers on three nodes queue for one permit in turn; each release grants the next
/// in the order they arrived, and a caller whose wait ends without a grant gets 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_acquires_are_served_in_arrival_order() {
    let c = InprocCluster::start(3).await.unwrap();
    let apis = apis(&c);
    let g = acquire(
        &apis[0],
        "one",
        json!({"holder": "first", "capacity": 1, "ttl_ms": 60_000}),
    )
    .await
    .unwrap();
    let mut fence = g.fence;

    tracing::info!("phase: three callers queue, one after the other");
    let mut waiters = Vec::new();
    for (i, who) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let api = apis[i].clone();
        waiters.push(tokio::spawn(async move {
            acquire(
                &api,
                "one",
                json!({"holder": who, "capacity": 1, "ttl_ms": 60_000, "wait_ms": 30_000}),
            )
            .await
        }));
        let n = i as u32 + 1;
        wait_for(
            "the caller to be queued",
            Duration::from_secs(10),
            || async { (waiting(&apis[0], "one").await == Some(n)).then_some(()) },
        )
        .await
        .unwrap();
    }

    tracing::info!("phase: each release grants the next caller in arrival order");
    for (i, who) in ["w1", "w2", "w3"].into_iter().enumerate() {
        apis[2].semaphore_release("one", fence).await.unwrap();
        let g = waiters
            .remove(0)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("caller {who}: {e:?}"));
        let v = apis[i].semaphore_get("one").await.unwrap();
        assert_eq!(v.holders[0].holder, who, "{v:?}");
        assert!(g.fence > fence, "{g:?}");
        fence = g.fence;
    }

    tracing::info!("phase: a wait that ends without a grant answers 409 and leaves no place");
    let e = acquire(
        &apis[1],
        "one",
        json!({"holder": "late", "capacity": 1, "ttl_ms": 60_000, "wait_ms": 300}),
    )
    .await;
    assert_eq!(
        (e.as_ref().err().and_then(|e| e.status()), reason(&e)),
        (Some(409), Some("not_granted")),
        "{e:?}"
    );
    assert_eq!(waiting(&apis[1], "one").await, Some(0));
    c.shutdown().await;
}

/// A lease that is not renewed ends on the replicated clock and its permits serve the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_lease_frees_its_permits_for_the_queue() {
    let c = InprocCluster::start(1).await.unwrap();
    let api = http::api(&c.bases[0]);
    let g = acquire(
        &api,
        "short",
        json!({"holder": "crashed", "permits": 2, "capacity": 2, "ttl_ms": 500}),
    )
    .await
    .unwrap();
    let g2 = acquire(
        &api,
        "short",
        json!({"holder": "next", "permits": 2, "capacity": 2, "ttl_ms": 60_000, "wait_ms": 10_000}),
    )
    .await
    .unwrap_or_else(|e| panic!("the queued caller is granted once the lease ends: {e:?}"));
    assert!(g2.fence > g.fence);
    let v = api.semaphore_get("short").await.unwrap();
    assert_eq!(v.holders[0].holder, "next", "{v:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_semaphore_requests_get_clear_errors() {
    let c = InprocCluster::start(1).await.unwrap();
    let api = http::api(&c.bases[0]);
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
        let e = acquire(&api, "s", body.clone()).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{body}: {e:?}");
        assert_eq!(
            e.detail().unwrap().field.as_deref(),
            Some(field),
            "{body}: {e:?}"
        );
    }
    // An unknown field cannot be written with the typed body: sent as it is.
    let r = api
        .raw_json(
            Method::POST,
            "/v1/semaphores/s/acquire",
            &json!({"holder": "h", "capacity": 2, "ttl_ms": 1000, "extra": 1}),
        )
        .await
        .unwrap();
    let e: ErrorBody = r.decode().unwrap_or_else(|e| panic!("{e}: {}", r.json()));
    assert_eq!(
        (r.status, e.error.code),
        (400, ErrorCode::BadRequest),
        "{e:?}"
    );
    let e = api.semaphore_get("nobody").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
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
    let api = http::api(&c.bases[0]);
    let g = acquire(
        &api,
        "slots",
        json!({"holder": "w", "capacity": 1, "ttl_ms": 60_000}),
    )
    .await
    .unwrap();
    let fence = g.fence;
    let txn = |fence: u64| -> TxnRequest {
        serde_json::from_value(json!({
            "compare": [{"semaphore": "slots", "fence": fence}],
            "success": [{"put": {"key": "report", "text": "done"}},
                        {"semaphore_release": {"semaphore": "slots", "fence": fence}}],
            "failure": [],
        }))
        .unwrap()
    };
    let r = api.txn(&txn(fence)).await.unwrap();
    assert!(r.succeeded, "{r:?}");
    assert_eq!(
        serde_json::to_value(&r.results[1]).unwrap(),
        json!({"released": true, "permits": 1}),
        "{r:?}"
    );
    let e = api.semaphore_get("slots").await.unwrap_err();
    assert_eq!(
        e.status(),
        Some(404),
        "the released semaphore holds nothing"
    );
    tracing::info!("phase: with the lease gone, the compare fails and nothing is written");
    let r = api.txn(&txn(fence)).await.unwrap();
    assert!(!r.succeeded, "{r:?}");
    let bad: TxnRequest = serde_json::from_value(
        json!({"compare": [{"semaphore": "slots", "lock": "l", "fence": 1}], "success": []}),
    )
    .unwrap();
    let e = api.txn(&bad).await.unwrap_err();
    assert!(http::is_api_error(&e, 400, ErrorCode::BadRequest), "{e:?}");
    c.shutdown().await;
}
