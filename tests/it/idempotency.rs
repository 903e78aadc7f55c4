//! `Idempotency-Key`: scoped to the caller's credential, bound to the request it was first
//! sent with, and never answered with another caller's answer or a 500.

use node::error::{ErrorBody, ErrorCode};
use serde_json::{json, Value};
use tests::http;
use tests::inproc::InprocCluster;

/// Sends a request with `Idempotency-Key: key` (and `Authorization` when given); answers the
/// status and the JSON body.
async fn send(
    req: reqwest::RequestBuilder,
    key: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = req.header("Idempotency-Key", key);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("an answer");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("a body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// Checks a 422 `idempotency_mismatch` answer with its documented body.
fn mismatch((status, body): (u16, Value)) {
    assert_eq!(status, 422, "{body}");
    let e: ErrorBody = serde_json::from_value(body.clone()).expect("the documented error body");
    assert_eq!(e.error.code, ErrorCode::IdempotencyMismatch, "{body}");
    assert!(
        e.error.message.contains("different request"),
        "{}",
        e.error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_scoped_to_the_caller_and_bound_to_its_request() {
    let c = InprocCluster::start(1).await.unwrap();
    let h = http::client();
    let b = &c.bases[0];
    let sessions = format!("{b}/v1/sessions");
    let victim = Some("Bearer victim-token");
    let eve = Some("Bearer eve-token");

    let (s, v) = send(
        h.post(&sessions),
        "k1",
        victim,
        Some(json!({"user": "victim"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let victim_id = v["id"].as_str().unwrap().to_string();

    // Another credential with the same key is another scope: eve gets her own session.
    let (s, v) = send(h.post(&sessions), "k1", eve, Some(json!({"user": "eve"}))).await;
    assert_eq!(s, 201, "{v}");
    let eve_id = v["id"].as_str().unwrap().to_string();
    assert_ne!(
        eve_id, victim_id,
        "eve must not receive the victim's session"
    );
    let got = http::get_json(&h, &format!("{sessions}/{eve_id}")).await;
    assert_eq!(got["user"], "eve");
    // A credential that never used the key, sending exactly the victim's request, gets its
    // own answer too.
    let (s, v) = send(
        h.post(&sessions),
        "k1",
        Some("Bearer eve-other"),
        Some(json!({"user": "victim"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_ne!(v["id"], victim_id.as_str());
    // Requests without a credential share one scope of their own.
    let (s, v) = send(h.post(&sessions), "k1", None, Some(json!({"user": "anon"}))).await;
    assert_eq!(s, 201, "{v}");
    assert_ne!(v["id"], victim_id.as_str());
    assert_ne!(v["id"], eve_id.as_str());

    // The victim's retry is answered from its first answer.
    let (s, v) = send(
        h.post(&sessions),
        "k1",
        victim,
        Some(json!({"user": "victim"})),
    )
    .await;
    assert_eq!((s, v["id"].as_str()), (201, Some(victim_id.as_str())));

    // The same credential and key with another body: refused, nothing applied.
    mismatch(
        send(
            h.post(&sessions),
            "k1",
            eve,
            Some(json!({"user": "victim"})),
        )
        .await,
    );
    mismatch(
        send(
            h.post(&sessions),
            "k1",
            eve,
            Some(json!({"user": "eve", "ttl_ms": 5})),
        )
        .await,
    );
    let listed = http::get_json(&h, &format!("{sessions}?user=eve")).await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");

    // The key reused for another route, another method or another query: 422, never 500.
    mismatch(send(h.put(format!("{b}/v1/kv/x")), "k1", eve, None).await);
    mismatch(send(h.delete(format!("{sessions}/{eve_id}")), "k1", eve, None).await);
    mismatch(send(h.delete(format!("{sessions}?user=eve")), "k1", eve, None).await);
    mismatch(
        send(
            h.post(format!("{b}/v1/locks/L/acquire")),
            "k1",
            eve,
            Some(json!({"owner": "eve", "ttl_ms": 1000})),
        )
        .await,
    );
    let got = http::get_json(&h, &format!("{sessions}/{eve_id}")).await;
    assert_eq!(got["user"], "eve", "still there: {got}");

    // Requests whose answers are of the same kind are told apart too (once a 500).
    let (s, v) = send(h.put(format!("{b}/v1/kv/a")), "k2", None, None).await;
    assert_eq!(s, 200, "{v}");
    mismatch(send(h.delete(format!("{b}/v1/kv/a")), "k2", None, None).await);
    mismatch(send(h.put(format!("{b}/v1/kv/b")), "k2", None, None).await);
    mismatch(send(h.put(format!("{b}/v1/kv/a?ttl_ms=5")), "k2", None, None).await);
    let (s, v) = send(
        h.post(format!("{b}/v1/locks/M/acquire")),
        "k3",
        None,
        Some(json!({"owner": "w", "ttl_ms": 60000})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let fence = v["fence"].clone();
    mismatch(
        send(
            h.post(format!("{b}/v1/locks/M/release")),
            "k3",
            None,
            Some(json!({"fence": fence})),
        )
        .await,
    );
    mismatch(
        send(
            h.post(format!("{b}/v1/locks/M/renew")),
            "k3",
            None,
            Some(json!({"fence": fence, "ttl_ms": 1000})),
        )
        .await,
    );
    c.shutdown().await;
}

/// An acquire that waited and was queued, replayed under its key: without `wait_ms` it is
/// another request (422), with the same body the wait is settled again (409); either way a
/// JSON answer, never a dropped connection or a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_acquire_replayed_gets_an_answer() {
    let c = InprocCluster::start(1).await.unwrap();
    let h = http::client();
    let b = &c.bases[0];
    for (path, holder, waiter, no_wait) in [
        (
            "locks/Q",
            json!({"owner": "a", "ttl_ms": 60000}),
            json!({"owner": "b", "ttl_ms": 60000, "wait_ms": 300}),
            json!({"owner": "b", "ttl_ms": 60000}),
        ),
        (
            "semaphores/Q",
            json!({"holder": "a", "permits": 1, "capacity": 1, "ttl_ms": 60000}),
            json!({"holder": "b", "permits": 1, "capacity": 1, "ttl_ms": 60000, "wait_ms": 300}),
            json!({"holder": "b", "permits": 1, "capacity": 1, "ttl_ms": 60000}),
        ),
    ] {
        let url = format!("{b}/v1/{path}/acquire");
        let (s, v) = send(h.post(&url), &format!("{path}-a"), None, Some(holder)).await;
        assert_eq!(s, 200, "{path}: {v}");
        let key = format!("{path}-b");
        let (s, v) = send(h.post(&url), &key, None, Some(waiter.clone())).await;
        assert_eq!(s, 409, "{path}: queued, then not granted in time: {v}");
        mismatch(send(h.post(&url), &key, None, Some(no_wait)).await);
        let (s, v) = send(h.post(&url), &key, None, Some(waiter)).await;
        assert_eq!(s, 409, "{path}: the same request settles again: {v}");
        assert_eq!(v["error"]["code"], "conflict", "{path}: {v}");
    }
    c.shutdown().await;
}

/// The blocking-acquire protocol never hands a "queued" answer back as final: a queued answer
/// to a caller that does not wait (the remembered answer of an earlier request that did) is
/// withdrawn at once, and the caller gets the withdrawal's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_answer_to_a_caller_that_does_not_wait_is_withdrawn() {
    use node::service::{self, locks::Locks, semaphores::Semaphores};
    use raft::command::SemaphoreWait;
    use raft::command::{LockCmd, LockResult, LockWait, SemaphoreCmd, SemaphoreResult};

    let c = InprocCluster::start(1).await.unwrap();
    let cluster = c.nodes[0].as_ref().unwrap().cluster.clone();
    let h = http::client();
    let b = &c.bases[0];
    let (s, v) = send(
        h.post(format!("{b}/v1/locks/W/acquire")),
        "hold-lock",
        None,
        Some(json!({"owner": "a", "ttl_ms": 60000})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = send(
        h.post(format!("{b}/v1/semaphores/W/acquire")),
        "hold-semaphore",
        None,
        Some(json!({"holder": "a", "permits": 1, "capacity": 1, "ttl_ms": 60000})),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    let queued_lock = LockCmd::Acquire {
        name: "W".into(),
        owner: "b".into(),
        ttl_ms: 60000,
        wait: Some(LockWait {
            waiter_id: "w1".into(),
            wait_ms: 60000,
        }),
    };
    let started = tokio::time::Instant::now();
    let r = service::acquire::<Locks>(&cluster, "W", queued_lock, ("w1", 0), None, started)
        .await
        .unwrap();
    assert_eq!(
        r,
        LockResult::Held { holder: "a".into() },
        "withdrawn, not granted"
    );
    assert!(cluster.state().lock("W").unwrap().waiters.is_empty());

    let queued_semaphore = SemaphoreCmd::Acquire {
        name: "W".into(),
        holder: "b".into(),
        permits: 1,
        capacity: 1,
        ttl_ms: 60000,
        wait: Some(SemaphoreWait {
            waiter_id: "w2".into(),
            wait_ms: 60000,
        }),
    };
    let r =
        service::acquire::<Semaphores>(&cluster, "W", queued_semaphore, ("w2", 0), None, started)
            .await
            .unwrap();
    assert_eq!(r, SemaphoreResult::Cancelled, "withdrawn, not granted");
    assert!(cluster.state().semaphore("W").unwrap().waiters.is_empty());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "not waited for"
    );
    c.shutdown().await;
}

/// With access control on, two tokens are two scopes: a key one token used is never answered
/// to the other, and a token that reuses its own key for another request gets 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_access_control_each_token_is_its_own_scope() {
    let c = InprocCluster::start_with(1, |c| c.api.insecure_no_auth = false)
        .await
        .unwrap();
    let admin = format!("Bearer {}", c.admin_token().expect("the management token"));
    let h = http::client();
    let b = &c.bases[0];
    let (s, v) = send(
        h.put(format!("{b}/v1/acl/policies/sessions")),
        "policy",
        Some(&admin),
        Some(json!({"rules": [{"resource": "sessions", "access": "write"}]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut tokens = Vec::new();
    for who in ["victim", "eve"] {
        let (s, v) = send(
            h.post(format!("{b}/v1/acl/tokens")),
            &format!("token-{who}"),
            Some(&admin),
            Some(json!({"policies": ["sessions"], "description": who})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        tokens.push(format!("Bearer {}", v["secret"].as_str().unwrap()));
    }
    let (victim, eve) = (Some(tokens[0].as_str()), Some(tokens[1].as_str()));
    let sessions = format!("{b}/v1/sessions");
    let body = || Some(json!({"user": "victim"}));

    let (s, v) = send(h.post(&sessions), "k1", victim, body()).await;
    assert_eq!(s, 201, "{v}");
    let victim_id = v["id"].clone();
    let (s, v) = send(h.post(&sessions), "k1", eve, body()).await;
    assert_eq!(s, 201, "{v}");
    assert_ne!(
        v["id"], victim_id,
        "eve must not receive the victim's session"
    );
    let (s, v) = send(h.post(&sessions), "k1", victim, body()).await;
    assert_eq!((s, &v["id"]), (201, &victim_id), "the victim's retry: {v}");
    mismatch(send(h.post(&sessions), "k1", eve, Some(json!({"user": "eve"}))).await);
    mismatch(
        send(
            h.delete(format!("{sessions}?user=victim")),
            "k1",
            victim,
            None,
        )
        .await,
    );
    c.shutdown().await;
}

/// A JWT user is one scope whichever of its JWTs it sends (a refreshed one keeps its keys);
/// another subject is another scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_user_keeps_its_keys_across_refreshed_jwts() {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    let c = InprocCluster::start_with(1, |c| c.api.insecure_no_auth = false)
        .await
        .unwrap();
    let admin = format!("Bearer {}", c.admin_token().expect("the management token"));
    let h = http::client();
    let b = &c.bases[0];
    let (s, v) = send(
        h.put(format!("{b}/v1/acl/policies/sessions")),
        "policy",
        Some(&admin),
        Some(json!({"rules": [{"resource": "sessions", "access": "write"}]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let secret: [u8; 32] = rand::random();
    let provider = json!({"issuer": "https://auth.example", "audience": "stackd",
        "keys": [{"kid": "k", "alg": "HS256",
            "key": base64::engine::general_purpose::STANDARD.encode(secret)}],
        "policies": ["sessions"]});
    let (s, v) = send(
        h.put(format!("{b}/v1/acl/jwt/app")),
        "provider",
        Some(&admin),
        Some(provider),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = |sub: &str, ttl: u64| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k".into());
        let claims = json!({"sub": sub, "iss": "https://auth.example", "aud": "stackd",
            "exp": now + ttl, "nbf": now - 10});
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret));
        format!("Bearer {}", token.unwrap())
    };
    let (ann, ann_refreshed, eve) = (jwt("ann", 600), jwt("ann", 900), jwt("eve", 600));
    assert_ne!(ann, ann_refreshed);
    let sessions = format!("{b}/v1/sessions");
    let body = || Some(json!({"user": "ann"}));

    let (s, v) = send(h.post(&sessions), "login", Some(&ann), body()).await;
    assert_eq!(s, 201, "{v}");
    let first = v["id"].clone();
    let (s, v) = send(h.post(&sessions), "login", Some(&ann_refreshed), body()).await;
    assert_eq!((s, &v["id"]), (201, &first), "a refreshed JWT's retry: {v}");
    let (s, v) = send(h.post(&sessions), "login", Some(&eve), body()).await;
    assert_eq!(s, 201, "{v}");
    assert_ne!(v["id"], first, "another subject is another scope");
    mismatch(
        send(
            h.post(&sessions),
            "login",
            Some(&ann_refreshed),
            Some(json!({"user": "x"})),
        )
        .await,
    );
    c.shutdown().await;
}
