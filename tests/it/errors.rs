//! Bad input gets the documented error body and never takes a node down.

use serde_json::Value;
use tests::http;
use tests::inproc::InprocCluster;

/// Sends `req` and checks the error answer's status, code and message.
async fn expect_error(req: reqwest::RequestBuilder, status: u16, code: &str) -> Value {
    let resp = req.send().await.expect("request sent");
    assert_eq!(resp.status().as_u16(), status, "status for expected {code}");
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
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
        "bad_request",
    )
    .await;
    expect_error(
        http.get(format!("{b}/v1/kv/{long_key}")),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        http.put(format!("{b}/v1/kv/a%01b")).body("x"),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        http.put(format!("{b}/v1/kv/a%FFb")).body("x"),
        400,
        "bad_request",
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
        "too_large",
    )
    .await;
    assert_eq!(body["error"]["limit"], 1 << 20);
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
            "bad_request",
        )
        .await;
    }
    expect_error(
        http.get(format!("{b}/v1/kv/a?consistency=eventual")),
        400,
        "bad_request",
    )
    .await;
    expect_error(http.get(format!("{b}/v1/kv?limit=0")), 400, "bad_request").await;
    expect_error(
        http.get(format!("{b}/v1/kv?limit=100000")),
        400,
        "bad_request",
    )
    .await;
    expect_error(http.get(format!("{b}/v1/kv/absent")), 404, "not_found").await;
    expect_error(http.get(format!("{b}/v1/nope")), 404, "not_found").await;
    expect_error(http.post(format!("{b}/v1/kv/a")), 405, "method_not_allowed").await;
    expect_error(
        http.put(format!("{b}/v1/kv/a"))
            .header("Idempotency-Key", "")
            .body("x"),
        400,
        "bad_request",
    )
    .await;

    // Still serving.
    let (s, body) = http::put(&http, b, "after", "ok").await.unwrap();
    assert_eq!(s, 200, "{body}");
    let (s, text, _) = http::get(&http, b, "after").await.unwrap();
    assert_eq!((s, text.as_str()), (200, "ok"));
    assert_eq!(
        http.get(format!("{b}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    c.shutdown().await;
}
