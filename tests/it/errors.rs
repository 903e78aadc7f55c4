//! Bad input gets the documented error body and never takes a node down.
//!
//! The bad requests are sent as they are (reqwest): they are what the typed client cannot
//! write. Their answers must decode as the documented error body (`ErrorBody`). The requests
//! that set a scene use the typed client.

use node::api::model::{AcquireRequest, ClaimRequest, EnqueueRequest};
use node::error::{ErrorBody, ErrorCode, ErrorDetail};
use serde_json::json;
use tests::http;
use tests::inproc::InprocCluster;

/// Sends `req` and checks the error answer's status, code and message; answers the body's
/// `error` object.
async fn expect_error(req: reqwest::RequestBuilder, status: u16, code: ErrorCode) -> ErrorDetail {
    let resp = req.send().await.expect("request sent");
    assert_eq!(resp.status().as_u16(), status, "status for expected {code}");
    let text = resp.text().await.expect("an error body");
    let body: ErrorBody = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not the documented error body ({e}): {text}"));
    assert_eq!(body.error.code, code, "{text}");
    assert!(!body.error.message.is_empty(), "{text}");
    body.error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_errors_and_the_node_keeps_serving() {
    let c = InprocCluster::start(1).await.unwrap();
    let http = http::client();
    let b = &c.bases[0];

    let long_key = "k".repeat(513);
    expect_error(
        http.put(format!("{b}/v1/kv/{long_key}")).body("x"),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/kv/{long_key}")),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.put(format!("{b}/v1/kv/a%01b")).body("x"),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.put(format!("{b}/v1/kv/a%FFb")).body("x"),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    let ok_key = "k".repeat(512);
    assert_eq!(
        http.put(format!("{b}/v1/kv/{ok_key}"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "512 bytes is allowed"
    );

    let big = vec![b'x'; (1 << 20) + 1];
    let body = expect_error(
        http.put(format!("{b}/v1/kv/big")).body(big),
        413,
        ErrorCode::TooLarge,
    )
    .await;
    assert_eq!(body.limit, Some(1 << 20));
    let max = vec![b'x'; 1 << 20];
    assert_eq!(
        http.put(format!("{b}/v1/kv/max"))
            .body(max)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "1 MiB is allowed"
    );

    for q in [
        "if_revision=abc",
        "if_revision=-1",
        "ttl_ms=0",
        "ttl_ms=1.5",
        "nonsense=1",
        "if_revision=1&if_revision=2",
    ] {
        expect_error(
            http.put(format!("{b}/v1/kv/a?{q}")).body("x"),
            400,
            ErrorCode::BadRequest,
        )
        .await;
    }
    expect_error(
        http.get(format!("{b}/v1/kv/a?consistency=eventual")),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/kv?limit=0")),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/kv?limit=100000")),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/kv/absent")),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(http.get(format!("{b}/v1/nope")), 404, ErrorCode::NotFound).await;
    expect_error(
        http.post(format!("{b}/v1/kv/a")),
        405,
        ErrorCode::MethodNotAllowed,
    )
    .await;
    expect_error(
        http.put(format!("{b}/v1/kv/a"))
            .header("Idempotency-Key", "")
            .body("x"),
        400,
        ErrorCode::BadRequest,
    )
    .await;

    // Still serving.
    let api = http::api(b);
    api.kv_put("after", "ok").await.unwrap();
    assert_eq!(&api.kv_get("after").await.unwrap().value[..], b"ok");
    assert_eq!(api.health().await.unwrap().status, "ok");
    c.shutdown().await;
}

/// Locks, sessions, cache, queues and transactions: every kind of bad input, and the conflict and
/// not-found answers, with their documented bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_to_locks_sessions_cache_queues_and_txn_gets_documented_errors() {
    let c = InprocCluster::start(1).await.unwrap();
    let http = http::client();
    let b = &c.bases[0];
    let post = |path: &str, body: &str| {
        http.post(format!("{b}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
    };

    // Locks.
    for body in [
        "",
        "not json",
        r#"{"owner":"w"}"#,
        r#"{"owner":"","ttl_ms":1000}"#,
        r#"{"owner":"w","ttl_ms":0}"#,
        r#"{"owner":"w","ttl_ms":1000,"wait_ms":600000}"#,
        r#"{"owner":"w","ttl_ms":1000,"colour":"red"}"#,
        r#"{"owner":"w","ttl_ms":"soon"}"#,
    ] {
        expect_error(
            post("/v1/locks/L/acquire", body),
            400,
            ErrorCode::BadRequest,
        )
        .await;
    }
    expect_error(
        http.get(format!("{b}/v1/locks/L")),
        404,
        ErrorCode::NotFound,
    )
    .await;
    let api = http::api(b);
    let acquire = AcquireRequest {
        owner: "w1".into(),
        ttl_ms: 60000,
        wait_ms: 0,
    };
    let fence = api.lock_acquire("L", &acquire).await.unwrap().fence;
    let held = expect_error(
        post("/v1/locks/L/acquire", r#"{"owner":"w2","ttl_ms":1000}"#),
        409,
        ErrorCode::Conflict,
    )
    .await;
    assert_eq!(held.holder.as_deref(), Some("w1"));
    let stale = expect_error(
        post(
            "/v1/locks/L/release",
            &format!(r#"{{"fence":{}}}"#, fence + 1),
        ),
        409,
        ErrorCode::Conflict,
    )
    .await;
    assert_eq!(stale.current_fence, Some(fence));
    expect_error(
        post("/v1/locks/L/renew", r#"{"fence":999,"ttl_ms":1000}"#),
        409,
        ErrorCode::Conflict,
    )
    .await;
    expect_error(
        post("/v1/locks/L/renew", r#"{"fence":1}"#),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    for q in ["fence=L", "fence=L:x", "fence=:1", "fence=L:-1"] {
        expect_error(
            http.put(format!("{b}/v1/kv/f?{q}")).body("x"),
            400,
            ErrorCode::BadRequest,
        )
        .await;
    }
    let stale = expect_error(
        http.put(format!("{b}/v1/kv/f?fence=L:{}", fence + 7))
            .body("x"),
        409,
        ErrorCode::Conflict,
    )
    .await;
    assert_eq!(stale.reason.as_deref(), Some("stale_fence"));
    expect_error(
        http.put(format!("{b}/v1/kv/f?fence=nolock:1")).body("x"),
        409,
        ErrorCode::Conflict,
    )
    .await;

    // Sessions.
    for body in [
        "{}",
        r#"{"user":""}"#,
        r#"{"user":"u","ttl_ms":0}"#,
        r#"{"user":"u","data":[1,2]}"#,
        r#"{"user":"u","data":"text"}"#,
        r#"{"user":"u","extra":1}"#,
    ] {
        expect_error(post("/v1/sessions", body), 400, ErrorCode::BadRequest).await;
    }
    let big = format!(r#"{{"user":"u","data":{{"x":"{}"}}}}"#, "y".repeat(1 << 20));
    expect_error(post("/v1/sessions", &big), 413, ErrorCode::TooLarge).await;
    expect_error(
        http.get(format!("{b}/v1/sessions/nope")),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        http.post(format!("{b}/v1/sessions/nope/touch")),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        http.patch(format!("{b}/v1/sessions/nope"))
            .header("content-type", "application/json")
            .body(r#"{"data":{"a":1}}"#),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        http.delete(format!("{b}/v1/sessions/nope")),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/sessions")),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.delete(format!("{b}/v1/sessions?user=")),
        400,
        ErrorCode::BadRequest,
    )
    .await;

    // Cache.
    for q in ["ttl_ms=0", "ttl_ms=x", "tags=a,,b", "bogus=1"] {
        expect_error(
            http.put(format!("{b}/v1/cache/c?{q}")).body("x"),
            400,
            ErrorCode::BadRequest,
        )
        .await;
    }
    let big = vec![b'x'; (1 << 20) + 1];
    expect_error(
        http.put(format!("{b}/v1/cache/c")).body(big),
        413,
        ErrorCode::TooLarge,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/cache/absent")),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        post("/v1/cache/invalidate", r#"{"tags":[]}"#),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        post("/v1/cache/invalidate", r#"{"tag":"a"}"#),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/cache/stats?digest=maybe")),
        400,
        ErrorCode::BadRequest,
    )
    .await;

    // Transactions.
    for body in [
        "[]",
        r#"{"compare":[{"key":"a"}]}"#,
        r#"{"compare":[{"key":"a","revision":1,"lock":"L","fence":1}]}"#,
        r#"{"success":[{"put":{"key":"a"}}]}"#,
        r#"{"success":[{"put":{"key":"a","value":"not base64!"}}]}"#,
        r#"{"success":[{"put":{"key":"a","text":"1"}},{"delete":{"key":"a"}}]}"#,
        r#"{"success":[{"lock":{"key":"a"}}]}"#,
        r#"{"success":[{"put":{"key":"","text":"x"}}]}"#,
    ] {
        expect_error(post("/v1/txn", body), 400, ErrorCode::BadRequest).await;
    }
    let big = format!(
        r#"{{"success":[{{"put":{{"key":"a","text":"{}"}}}}]}}"#,
        "y".repeat((1 << 20) + 1)
    );
    expect_error(post("/v1/txn", &big), 413, ErrorCode::TooLarge).await;

    // Queues.
    for body in [
        "{}",
        r#"{"payload":1,"max_attempts":0}"#,
        r#"{"payload":1,"max_attempts":100000}"#,
        r#"{"payload":1,"delay_ms":1,"run_at_ms":1}"#,
        r#"{"payload":1,"unique_key":""}"#,
        r#"{"payload":1,"priority":"high"}"#,
        r#"{"payload":1,"colour":1}"#,
    ] {
        expect_error(post("/v1/queues/q/jobs", body), 400, ErrorCode::BadRequest).await;
    }
    let big = format!(r#"{{"payload":"{}"}}"#, "y".repeat(1 << 20));
    expect_error(post("/v1/queues/q/jobs", &big), 413, ErrorCode::TooLarge).await;
    for body in [
        "{}",
        r#"{"worker":"w","max":0}"#,
        r#"{"worker":"w","max":1000}"#,
        r#"{"worker":"w","visibility_ms":0}"#,
        r#"{"worker":"w","wait_ms":600000}"#,
    ] {
        expect_error(post("/v1/queues/q/claim", body), 400, ErrorCode::BadRequest).await;
    }
    expect_error(
        post("/v1/jobs/77/ack", r#"{"lease":1}"#),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        post("/v1/jobs/nope/ack", r#"{"lease":1}"#),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(post("/v1/jobs/1/ack", r#"{}"#), 400, ErrorCode::BadRequest).await;
    expect_error(
        post("/v1/jobs/1/extend", r#"{"lease":1,"visibility_ms":0}"#),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    let job: EnqueueRequest = serde_json::from_value(json!({ "payload": { "x": 1 } })).unwrap();
    let id = api.enqueue("q", &job).await.unwrap().id;
    let claim: ClaimRequest = serde_json::from_value(json!({ "worker": "w" })).unwrap();
    let lease = api.claim("q", &claim).await.unwrap().jobs[0].lease;
    let stale = expect_error(
        post(
            &format!("/v1/jobs/{id}/ack"),
            &format!(r#"{{"lease":{}}}"#, lease + 1),
        ),
        409,
        ErrorCode::Conflict,
    )
    .await;
    assert_eq!(stale.reason.as_deref(), Some("stale_lease"));
    assert_eq!(stale.current_lease, Some(lease));
    for body in [
        "{}",
        r#"{"ids":[],"all":false}"#,
        r#"{"ids":["x"]}"#,
        r#"{"ids":["1"],"all":true}"#,
    ] {
        expect_error(
            post("/v1/queues/q/dead/replay", body),
            400,
            ErrorCode::BadRequest,
        )
        .await;
    }
    expect_error(
        http.put(format!("{b}/v1/queues/q/schedules/s"))
            .header("content-type", "application/json")
            .body(r#"{"cron":"every day"}"#),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.delete(format!("{b}/v1/queues/q/schedules/none")),
        404,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/queues/q/dead?limit=0")),
        400,
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/jobs/999")),
        404,
        ErrorCode::NotFound,
    )
    .await;

    // Still serving, and nothing above was applied.
    assert_eq!(api.kv_get("f").await.unwrap_err().status(), Some(404));
    assert_eq!(api.kv_get("a").await.unwrap_err().status(), Some(404));
    c.shutdown().await;
}

/// Path segments that do not decode to UTF-8 and bodies over the limit are refused with the
/// documented error body on every route, not with the framework's plain-text rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_paths_and_oversized_bodies_get_documented_errors_on_every_route() {
    let c = InprocCluster::start(1).await.unwrap();
    let http = http::client();
    let b = &c.bases[0];
    for req in [
        http.get(format!("{b}/v1/jobs/%FF")),
        http.post(format!("{b}/v1/jobs/%FF/ack"))
            .body(r#"{"lease":1}"#),
        http.post(format!("{b}/v1/jobs/%C0%80/nack"))
            .body(r#"{"lease":1}"#),
        http.post(format!("{b}/v1/jobs/%ED%A0%80/extend"))
            .body(r#"{"lease":1,"visibility_ms":1000}"#),
        http.put(format!("{b}/v1/queues/q/schedules/%FE%FF"))
            .body(r#"{"cron":"* * * * *","payload":1}"#),
        http.delete(format!("{b}/v1/queues/%FF/schedules/s")),
        http.post(format!("{b}/v1/cluster/members/%FF/remove")),
        http.post(format!("{b}/v1/cluster/members/%F4%90%80%80/promote")),
        http.delete(format!("{b}/v1/cluster/tokens/%FF")),
        http.get(format!("{b}/v1/acl/tokens/%FF")),
        http.patch(format!("{b}/v1/acl/tokens/%FF"))
            .header("content-type", "application/json")
            .body("{}"),
        http.delete(format!("{b}/v1/acl/tokens/%C0%80")),
        http.get(format!("{b}/v1/acl/policies/%FF")),
        http.put(format!("{b}/v1/acl/policies/%FE"))
            .header("content-type", "application/json")
            .body(r#"{"rules":[]}"#),
        http.delete(format!("{b}/v1/acl/policies/%ED%A0%80")),
    ] {
        let e = expect_error(req, 400, ErrorCode::BadRequest).await;
        assert!(e.message.contains("UTF-8"), "{}", e.message);
    }
    // The client sending a body over the limit reads the answer, each time: the node reads
    // the rest of the body before answering instead of resetting the connection under it.
    for _ in 0..10 {
        let big = vec![b' '; 3 << 20];
        let e = expect_error(
            http.post(format!("{b}/v1/cluster/tokens")).body(big),
            413,
            ErrorCode::TooLarge,
        )
        .await;
        assert!(e.limit.is_some(), "{e:?}");
    }
    c.shutdown().await;
}
