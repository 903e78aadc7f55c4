//! Sessions on a 3-node cluster: expiry and sliding touch seen alike on every node, and log
//! out everywhere.

use std::time::Duration;

use node::api::client::Client;
use node::api::model::{CreateSessionRequest, SessionCreated};
use reqwest::Method;
use serde_json::{json, Map, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

/// The status of a stale read of session `id` on `api`'s node, and the session if found.
async fn session_on(api: &Client, id: &str) -> (u16, Option<node::api::model::Session>) {
    match api.stale().session_get(id).await {
        Ok(s) => (200, Some(s)),
        Err(e) => (e.status().unwrap_or(0), None),
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

async fn create(api: &Client, user: &str, ttl_ms: u64) -> String {
    let req = CreateSessionRequest {
        user: user.into(),
        data: Some(object(json!({ "cart": [1] }))),
        ttl_ms: Some(ttl_ms),
    };
    let r = api
        .raw_json(Method::POST, "/v1/sessions", &req)
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let id = r.decode::<SessionCreated>().unwrap().id;
    assert_eq!(id.len(), 22, "128 random bits, URL-safe base64: {id}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_sliding_touch_are_the_same_on_every_node() {
    let c = InprocCluster::start(3).await.unwrap();
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();

    tracing::info!("phase: two sessions; one is touched through another node");
    let touched = create(&apis[0], "ann", 1500).await;
    let idle = create(&apis[1], "ann", 1500).await;
    // Touch every 400 ms through node 3, merging data once.
    let v = apis[2]
        .session_update(&touched, object(json!({ "theme": "dark", "cart": null })))
        .await
        .unwrap();
    assert_eq!(v.data, json!({ "theme": "dark" }), "RFC 7396 merge");

    let toucher = {
        let api = apis[2].clone();
        let id = touched.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                api.session_touch(&id).await.unwrap();
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    tracing::info!("phase: the idle session expires on every node, the touched one lives");
    for (api, base) in apis.iter().zip(&c.bases) {
        wait_for("idle session gone", Duration::from_secs(10), || async {
            (session_on(api, &idle).await.0 == 404).then_some(())
        })
        .await
        .unwrap();
        let (s, v) = session_on(api, &touched).await;
        assert_eq!(s, 200, "touched session alive on {base}");
        let v = v.unwrap();
        assert_eq!(v.user, "ann");
        assert_eq!(v.data, json!({ "theme": "dark" }));
    }
    toucher.await.unwrap();
    // Same record on every node (linearizable reads).
    let mut seen = Vec::new();
    for api in &apis {
        let v = api.session_get(&touched).await.unwrap();
        seen.push((v.created_at_ms, v.data, v.ttl_ms));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");

    tracing::info!("phase: untouched, it expires everywhere too");
    for api in &apis {
        wait_for("touched session gone", Duration::from_secs(10), || async {
            (session_on(api, &touched).await.0 == 404).then_some(())
        })
        .await
        .unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_removes_every_session_of_the_user() {
    let c = InprocCluster::start(3).await.unwrap();
    let apis: Vec<Client> = c.bases.iter().map(|b| http::api(b)).collect();
    let mut bob = Vec::new();
    for api in &apis {
        bob.push(create(api, "bob", 600_000).await);
    }
    let carol = create(&apis[0], "carol", 600_000).await;

    // A retried create (same Idempotency-Key, through another node) answers the same id.
    let mut ids = Vec::new();
    for api in &apis[..2] {
        let req = CreateSessionRequest {
            user: "dave".into(),
            data: None,
            ttl_ms: None,
        };
        let v = api
            .idempotent("login-dave-1")
            .session_create(&req)
            .await
            .unwrap();
        ids.push(v.id);
    }
    assert_eq!(ids[0], ids[1]);

    let v = apis[2].sessions("bob").await.unwrap();
    assert_eq!(v.sessions.len(), 3, "{v:?}");

    let v = apis[1].sessions_delete("bob").await.unwrap();
    assert_eq!(v.deleted, 3);

    for (api, base) in apis.iter().zip(&c.bases) {
        for id in &bob {
            let e = api.session_get(id).await.unwrap_err();
            assert_eq!(e.status(), Some(404), "bob's session {id} on {base}");
        }
        let v = api.sessions("bob").await.unwrap();
        assert!(v.sessions.is_empty(), "{v:?}");
        api.session_get(&carol)
            .await
            .unwrap_or_else(|e| panic!("carol is still logged in on {base}: {e:?}"));
    }
    c.shutdown().await;
}
