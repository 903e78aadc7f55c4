//! Sessions on a 3-node cluster: expiry and sliding touch seen alike on every node, and log
//! out everywhere.

use std::time::Duration;

use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

async fn session_on(http: &reqwest::Client, base: &str, id: &str) -> (u16, Value) {
    let r = http
        .get(format!("{base}/v1/sessions/{id}?consistency=stale"))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn create(http: &reqwest::Client, base: &str, user: &str, ttl_ms: u64) -> String {
    let r = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({ "user": user, "data": { "cart": [1] }, "ttl_ms": ttl_ms }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 22, "128 random bits, URL-safe base64: {id}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_sliding_touch_are_the_same_on_every_node() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();

    tracing::info!("phase: two sessions; one is touched through another node");
    let touched = create(&http, &c.bases[0], "ann", 1500).await;
    let idle = create(&http, &c.bases[1], "ann", 1500).await;
    // Touch every 400 ms through node 3, merging data once.
    let r = http
        .patch(format!("{}/v1/sessions/{touched}", c.bases[2]))
        .json(&json!({ "data": { "theme": "dark", "cart": null } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"], json!({ "theme": "dark" }), "RFC 7396 merge");

    let toucher = {
        let http = http.clone();
        let base = c.bases[2].clone();
        let id = touched.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                let r = http
                    .post(format!("{base}/v1/sessions/{id}/touch"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    tracing::info!("phase: the idle session expires on every node, the touched one lives");
    for base in &c.bases {
        wait_for("idle session gone", Duration::from_secs(10), || async {
            (session_on(&http, base, &idle).await.0 == 404).then_some(())
        })
        .await
        .unwrap();
        let (s, v) = session_on(&http, base, &touched).await;
        assert_eq!(s, 200, "touched session alive on {base}");
        assert_eq!(v["user"], "ann");
        assert_eq!(v["data"], json!({ "theme": "dark" }));
    }
    toucher.await.unwrap();
    // Same record on every node (linearizable reads).
    let mut seen = Vec::new();
    for base in &c.bases {
        let v: Value = http::get_json(&http, &format!("{base}/v1/sessions/{touched}")).await;
        seen.push((
            v["created_at_ms"].clone(),
            v["data"].clone(),
            v["ttl_ms"].clone(),
        ));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");

    tracing::info!("phase: untouched, it expires everywhere too");
    for base in &c.bases {
        wait_for("touched session gone", Duration::from_secs(10), || async {
            (session_on(&http, base, &touched).await.0 == 404).then_some(())
        })
        .await
        .unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_removes_every_session_of_the_user() {
    let c = InprocCluster::start(3).await.unwrap();
    let http = http::client();
    let mut bob = Vec::new();
    for base in &c.bases {
        bob.push(create(&http, base, "bob", 600_000).await);
    }
    let carol = create(&http, &c.bases[0], "carol", 600_000).await;

    // A retried create (same Idempotency-Key, through another node) answers the same id.
    let mut ids = Vec::new();
    for base in &c.bases[..2] {
        let v: Value = http
            .post(format!("{base}/v1/sessions"))
            .header("Idempotency-Key", "login-dave-1")
            .json(&json!({ "user": "dave" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(v["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);

    let v: Value = http::get_json(&http, &format!("{}/v1/sessions?user=bob", c.bases[2])).await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), 3, "{v}");

    let r = http
        .delete(format!("{}/v1/sessions?user=bob", c.bases[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["deleted"], 3);

    for base in &c.bases {
        for id in &bob {
            let r = http
                .get(format!("{base}/v1/sessions/{id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "bob's session {id} on {base}");
        }
        let v: Value = http::get_json(&http, &format!("{base}/v1/sessions?user=bob")).await;
        assert_eq!(v["sessions"], json!([]));
        let r = http
            .get(format!("{base}/v1/sessions/{carol}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "carol is still logged in on {base}");
    }
    c.shutdown().await;
}
