//! Access control, route by route: the test walks the router's own route table
//! (`node::api::ROUTES`), so a route added to it is tried here with no token, a malformed
//! token, an expired one, a deleted one, a token whose policies lack the route's right, and one
//! that has it: 401, 401, 401, 401, 403 and the route's own answer. A route without a sample
//! request below fails the test.

use std::collections::BTreeMap;
use std::time::Duration;

use node::api::ROUTES;
use node::auth::{Need, Op, Resource};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;

/// A node with access control on, and its bootstrap management token.
async fn secure_node() -> (InprocCluster, String) {
    let c = InprocCluster::start_with(1, |c| {
        c.api.insecure_no_auth = false;
        // These tests fail authentication on purpose, hundreds of times.
        c.rate.auth_failures_per_min = 0;
    })
    .await
    .unwrap();
    let token = c
        .admin_token()
        .expect("the founding node wrote its bootstrap token");
    (c, token)
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = match b {
                Value::String(raw) => req.body(raw.clone()),
                other => req.json(other),
            };
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// `call` with a bearer secret, answering the JSON of a success.
    async fn ok(&self, method: Method, path: &str, secret: &str, body: Value) -> Value {
        let body = (!body.is_null()).then_some(body);
        let (status, v) = self
            .call(method.clone(), path, Some(&bearer(secret)), body.as_ref())
            .await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// A new token carrying `policies` (and `ttl_ms`), made with `admin`: its secret and
    /// accessor id.
    async fn token(&self, admin: &str, policies: &[&str], ttl_ms: Option<u64>) -> (String, String) {
        let mut body = json!({"policies": policies});
        if let Some(t) = ttl_ms {
            body["ttl_ms"] = json!(t);
        }
        let v = self.ok(Method::POST, "/v1/acl/tokens", admin, body).await;
        (
            v["secret"].as_str().unwrap().to_string(),
            v["accessor_id"].as_str().unwrap().to_string(),
        )
    }

    async fn policy(&self, admin: &str, name: &str, rules: Value) {
        self.ok(
            Method::PUT,
            &format!("/v1/acl/policies/{name}"),
            admin,
            json!({ "rules": rules }),
        )
        .await;
    }
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// What a sample request expects from a caller with the right.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A 2xx.
    Success,
    /// The handler's own refusal with this status (the request is well-formed but the state
    /// does not allow it, e.g. removing the only voter): proves the request got past access
    /// control.
    Handler(u16),
}

/// One request per route, in terms of the state `setup` made.
struct Sample {
    path: String,
    body: Option<Value>,
    expect: Expect,
    /// For routes that need only a token (their handler checks each write): the right a
    /// caller needs for this request.
    right: Option<(Resource, Op)>,
}

/// What `setup` made, for the samples to refer to.
#[derive(Default)]
struct Made {
    ids: BTreeMap<&'static str, String>,
    nums: BTreeMap<&'static str, u64>,
}

/// State for the samples: keys, leases, sessions, jobs, schedules, tokens, policies.
async fn setup(api: &Api, admin: &str) -> Made {
    let mut m = Made::default();
    let t = admin;
    api.ok(Method::PUT, "/v1/kv/k1", t, json!("v")).await;
    for (name, key) in [("l1", "lock1"), ("l2", "lock2")] {
        let g = api
            .ok(
                Method::POST,
                &format!("/v1/locks/{name}/acquire"),
                t,
                json!({"owner": "w", "ttl_ms": 60000}),
            )
            .await;
        m.nums.insert(key, g["fence"].as_u64().unwrap());
    }
    for (name, key) in [("s1", "sem1"), ("s2", "sem2")] {
        let g = api
            .ok(
                Method::POST,
                &format!("/v1/semaphores/{name}/acquire"),
                t,
                json!({"holder": "w", "permits": 1, "capacity": 2, "ttl_ms": 60000}),
            )
            .await;
        m.nums.insert(key, g["fence"].as_u64().unwrap());
    }
    for key in ["session1", "session2"] {
        let s = api
            .ok(Method::POST, "/v1/sessions", t, json!({"user": "u1"}))
            .await;
        m.ids.insert(key, s["id"].as_str().unwrap().to_string());
    }
    for _ in 0..3 {
        api.ok(Method::POST, "/v1/queues/qa/jobs", t, json!({"payload": 1}))
            .await;
    }
    api.ok(Method::POST, "/v1/queues/q1/jobs", t, json!({"payload": 1}))
        .await;
    let claimed = api
        .ok(
            Method::POST,
            "/v1/queues/qa/claim",
            t,
            json!({"worker": "w", "max": 3, "visibility_ms": 60000}),
        )
        .await;
    let jobs = claimed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3, "{claimed}");
    for (i, key) in ["ack", "nack", "extend"].into_iter().enumerate() {
        m.ids
            .insert(key, jobs[i]["id"].as_str().unwrap().to_string());
        m.nums.insert(key, jobs[i]["lease"].as_u64().unwrap());
    }
    api.ok(
        Method::PUT,
        "/v1/queues/q1/schedules/old",
        t,
        json!({"cron": "0 0 * * *", "payload": 1}),
    )
    .await;
    api.ok(Method::PUT, "/v1/cache/c1", t, json!("v")).await;
    api.ok(
        Method::POST,
        "/v1/channels/ch1/publish",
        t,
        json!({"data": 1}),
    )
    .await;
    let join = api
        .ok(Method::POST, "/v1/cluster/tokens", t, Value::Null)
        .await;
    m.ids
        .insert("join", join["id"].as_str().unwrap().to_string());
    for name in ["p1", "p2"] {
        api.ok(
            Method::PUT,
            &format!("/v1/acl/jwt/{name}"),
            t,
            hs256_provider(),
        )
        .await;
    }
    api.ok(
        Method::PUT,
        "/v1/services/web/instances/i1",
        t,
        json!({"address": "127.0.0.1", "port": 9, "check": {"type": "ttl", "ttl_ms": 60000}}),
    )
    .await;
    api.ok(
        Method::PUT,
        "/v1/services/web/instances/i2",
        t,
        json!({"address": "127.0.0.1", "port": 9}),
    )
    .await;
    for name in ["r1", "r2"] {
        api.ok(
            Method::PUT,
            &format!("/v1/routes/{name}"),
            t,
            json!({"service": "web"}),
        )
        .await;
    }
    api.policy(t, "spare", json!([])).await;
    api.policy(t, "doomed", json!([])).await;
    for key in ["token-read", "token-patch", "token-delete"] {
        let (_, accessor) = api.token(t, &[], None).await;
        m.ids.insert(key, accessor);
    }
    m
}

fn sample(method: &str, template: &str, m: &Made) -> Option<Sample> {
    let ok = |path: &str, body: Option<Value>| Sample {
        path: path.to_string(),
        body,
        expect: Expect::Success,
        right: None,
    };
    let id = |k: &str| m.ids[k].clone();
    let num = |k: &str| m.nums[k];
    let s = match (method, template) {
        ("get", "/v1/kv") => ok("/v1/kv", None),
        ("get", "/v1/kv/{key}") => ok("/v1/kv/k1", None),
        ("put", "/v1/kv/{key}") => ok("/v1/kv/k2", Some(json!("x"))),
        ("delete", "/v1/kv/{key}") => ok("/v1/kv/k3", None),
        ("post", "/v1/txn") => Sample {
            right: Some((Resource::Kv, Op::Write)),
            ..ok(
                "/v1/txn",
                Some(
                    json!({"compare": [], "success": [{"put": {"key": "t1", "value": "eA=="}}], "failure": []}),
                ),
            )
        },
        ("get", "/v1/history") => ok("/v1/history", None),
        ("get", "/v1/locks") => ok("/v1/locks?prefix=l", None),
        ("get", "/v1/locks/{name}") => ok("/v1/locks/l1", None),
        ("post", "/v1/locks/{name}/acquire") => ok(
            "/v1/locks/la/acquire",
            Some(json!({"owner": "w", "ttl_ms": 1000})),
        ),
        ("post", "/v1/locks/{name}/renew") => ok(
            "/v1/locks/l1/renew",
            Some(json!({"fence": num("lock1"), "ttl_ms": 60000})),
        ),
        ("post", "/v1/locks/{name}/release") => {
            ok("/v1/locks/l2/release", Some(json!({"fence": num("lock2")})))
        }
        ("get", "/v1/semaphores") => ok("/v1/semaphores?prefix=s", None),
        ("get", "/v1/semaphores/{name}") => ok("/v1/semaphores/s1", None),
        ("post", "/v1/semaphores/{name}/acquire") => ok(
            "/v1/semaphores/sa/acquire",
            Some(json!({"holder": "w", "permits": 1, "capacity": 1, "ttl_ms": 1000})),
        ),
        ("post", "/v1/semaphores/{name}/renew") => ok(
            "/v1/semaphores/s1/renew",
            Some(json!({"fence": num("sem1"), "ttl_ms": 60000})),
        ),
        ("post", "/v1/semaphores/{name}/release") => ok(
            "/v1/semaphores/s2/release",
            Some(json!({"fence": num("sem2")})),
        ),
        ("post", "/v1/sessions") => Sample {
            right: Some((Resource::Sessions, Op::Write)),
            ..ok("/v1/sessions", Some(json!({"user": "u2"})))
        },
        ("get", "/v1/sessions") => ok("/v1/sessions?user=u1", None),
        ("delete", "/v1/sessions") => ok("/v1/sessions?user=u3", None),
        ("get", "/v1/sessions/{id}") => ok(&format!("/v1/sessions/{}", id("session1")), None),
        ("patch", "/v1/sessions/{id}") => ok(
            &format!("/v1/sessions/{}", id("session1")),
            Some(json!({"data": {"a": 1}})),
        ),
        ("delete", "/v1/sessions/{id}") => ok(&format!("/v1/sessions/{}", id("session2")), None),
        ("post", "/v1/sessions/{id}/touch") => {
            ok(&format!("/v1/sessions/{}/touch", id("session1")), None)
        }
        ("get", "/v1/queues") => ok("/v1/queues", None),
        ("get", "/v1/queues/{name}") => ok("/v1/queues/q1", None),
        // q1 holds jobs: the handler's refusal shows the request got past access control.
        ("delete", "/v1/queues/{name}") => Sample {
            expect: Expect::Handler(409),
            ..ok("/v1/queues/q1", None)
        },
        ("post", "/v1/queues/{name}/jobs") => ok("/v1/queues/q1/jobs", Some(json!({"payload": 2}))),
        ("post", "/v1/queues/{name}/claim") => ok(
            "/v1/queues/q1/claim",
            Some(json!({"worker": "w", "max": 1})),
        ),
        ("get", "/v1/queues/{name}/dead") => ok("/v1/queues/q1/dead", None),
        ("get", "/v1/queues/{name}/jobs") => ok("/v1/queues/q1/jobs?state=ready", None),
        ("post", "/v1/queues/{name}/dead/delete") => {
            ok("/v1/queues/q1/dead/delete", Some(json!({"all": true})))
        }
        ("post", "/v1/queues/{name}/dead/replay") => {
            ok("/v1/queues/q1/dead/replay", Some(json!({"all": true})))
        }
        ("get", "/v1/queues/{name}/schedules") => ok("/v1/queues/q1/schedules", None),
        ("put", "/v1/queues/{queue}/schedules/{name}") => ok(
            "/v1/queues/q1/schedules/new",
            Some(json!({"cron": "0 0 * * *", "payload": 1})),
        ),
        ("delete", "/v1/queues/{queue}/schedules/{name}") => {
            ok("/v1/queues/q1/schedules/old", None)
        }
        ("get", "/v1/jobs/{id}") => ok(&format!("/v1/jobs/{}", id("ack")), None),
        ("post", "/v1/jobs/{id}/ack") => ok(
            &format!("/v1/jobs/{}/ack", id("ack")),
            Some(json!({"lease": num("ack")})),
        ),
        ("post", "/v1/jobs/{id}/nack") => ok(
            &format!("/v1/jobs/{}/nack", id("nack")),
            Some(json!({"lease": num("nack")})),
        ),
        ("post", "/v1/jobs/{id}/extend") => ok(
            &format!("/v1/jobs/{}/extend", id("extend")),
            Some(json!({"lease": num("extend"), "visibility_ms": 60000})),
        ),
        ("get", "/v1/cache/stats") => ok("/v1/cache/stats", None),
        ("post", "/v1/cache/invalidate") => {
            ok("/v1/cache/invalidate", Some(json!({"tags": ["t"]})))
        }
        ("get", "/v1/cache/{key}") => ok("/v1/cache/c1", None),
        ("put", "/v1/cache/{key}") => ok("/v1/cache/c2", Some(json!("x"))),
        ("delete", "/v1/cache/{key}") => ok("/v1/cache/c3", None),
        ("post", "/v1/channels/{name}/publish") => {
            ok("/v1/channels/ch1/publish", Some(json!({"data": 2})))
        }
        ("get", "/v1/channels") => ok("/v1/channels?prefix=ch", None),
        // ch1 retains events: the handler's refusal shows the request got past access control.
        ("delete", "/v1/channels/{name}") => Sample {
            expect: Expect::Handler(409),
            ..ok("/v1/channels/ch1", None)
        },
        ("get", "/v1/channels/{name}/history") => ok("/v1/channels/ch1/history", None),
        ("get", "/v1/channels/{name}/presence") => ok("/v1/channels/ch1/presence", None),
        // A plain GET is not an upgrade: the handler's own answer. The WebSocket's checks of
        // each subscription are tested with a real socket.
        ("get", "/v1/ws") => Sample {
            expect: Expect::Handler(400),
            ..ok("/v1/ws", None)
        },
        ("get", "/v1/client.js") => ok("/v1/client.js", None),
        ("get", "/demo/") => ok("/demo/", None),
        ("post", "/v1/acl/tokens") => ok("/v1/acl/tokens", Some(json!({"description": "x"}))),
        ("get", "/v1/acl/tokens") => ok("/v1/acl/tokens", None),
        ("get", "/v1/acl/tokens/self") => ok("/v1/acl/tokens/self", None),
        ("get", "/v1/acl/tokens/{id}") => ok(&format!("/v1/acl/tokens/{}", id("token-read")), None),
        ("patch", "/v1/acl/tokens/{id}") => ok(
            &format!("/v1/acl/tokens/{}", id("token-patch")),
            Some(json!({"description": "changed"})),
        ),
        ("delete", "/v1/acl/tokens/{id}") => {
            ok(&format!("/v1/acl/tokens/{}", id("token-delete")), None)
        }
        ("get", "/v1/acl/policies") => ok("/v1/acl/policies", None),
        ("get", "/v1/acl/policies/{name}") => ok("/v1/acl/policies/spare", None),
        ("put", "/v1/acl/policies/{name}") => ok(
            "/v1/acl/policies/new",
            Some(json!({"rules": [{"resource": "kv", "access": "read"}]})),
        ),
        ("delete", "/v1/acl/policies/{name}") => ok("/v1/acl/policies/doomed", None),
        ("get", "/v1/acl/jwt") => ok("/v1/acl/jwt", None),
        ("get", "/v1/audit") => ok("/v1/audit", None),
        ("get", "/v1/acl/jwt/{name}") => ok("/v1/acl/jwt/p1", None),
        ("put", "/v1/acl/jwt/{name}") => ok("/v1/acl/jwt/p3", Some(hs256_provider())),
        ("delete", "/v1/acl/jwt/{name}") => ok("/v1/acl/jwt/p2", None),
        ("get", "/v1/cluster") => ok("/v1/cluster", None),
        // One node: nothing to remove, promote or hand over to.
        ("post", "/v1/cluster/members/{id}/remove") => Sample {
            expect: Expect::Handler(404),
            ..ok("/v1/cluster/members/99/remove", None)
        },
        ("post", "/v1/cluster/members/{id}/promote") => Sample {
            expect: Expect::Handler(404),
            ..ok("/v1/cluster/members/99/promote", None)
        },
        ("post", "/v1/cluster/leader/transfer") => Sample {
            expect: Expect::Handler(400),
            ..ok("/v1/cluster/leader/transfer", Some(json!({"to": 99})))
        },
        ("post", "/v1/cluster/snapshot") => ok("/v1/cluster/snapshot", None),
        ("post", "/v1/cluster/compact") => ok("/v1/cluster/compact", Some(json!({"revision": 1}))),
        ("get", "/v1/cluster/backup") => ok("/v1/cluster/backup", None),
        ("get", "/v1/cluster/digest") => ok("/v1/cluster/digest", None),
        ("post", "/v1/cluster/tokens") => ok("/v1/cluster/tokens", None),
        ("get", "/v1/cluster/tokens") => ok("/v1/cluster/tokens", None),
        ("delete", "/v1/cluster/tokens/{id}") => {
            ok(&format!("/v1/cluster/tokens/{}", id("join")), None)
        }
        ("get", "/v1/node/samples") => ok("/v1/node/samples", None),
        ("get", "/v1/cluster/route") => ok("/v1/cluster/route", None),
        ("get", "/v1/services") => ok("/v1/services", None),
        ("get", "/v1/services/{name}") => ok("/v1/services/web", None),
        ("put", "/v1/services/{name}/instances/{id}") => ok(
            "/v1/services/web/instances/i3",
            Some(json!({"address": "127.0.0.1", "port": 9})),
        ),
        ("delete", "/v1/services/{name}/instances/{id}") => {
            ok("/v1/services/web/instances/i2", None)
        }
        ("post", "/v1/services/{name}/instances/{id}/heartbeat") => {
            ok("/v1/services/web/instances/i1/heartbeat", None)
        }
        ("get", "/v1/routes") => ok("/v1/routes", None),
        ("get", "/v1/routes/{name}") => ok("/v1/routes/r1", None),
        ("put", "/v1/routes/{name}") => ok("/v1/routes/r3", Some(json!({"service": "web"}))),
        ("delete", "/v1/routes/{name}") => ok("/v1/routes/r2", None),
        ("get", "/ui") => ok("/ui", None),
        ("get", "/ui/") => ok("/ui/", None),
        ("get", "/ui/{file}") => ok("/ui/app.js", None),
        ("get", "/v1/openapi.json") => ok("/v1/openapi.json", None),
        ("get", "/health") => ok("/health", None),
        ("get", "/ready") => ok("/ready", None),
        ("get", "/metrics") => ok("/metrics", None),
        _ => return None,
    };
    Some(s)
}

/// A JWT provider with one HS256 key.
fn hs256_provider() -> Value {
    json!({"keys": [{"alg": "HS256", "key": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]})
}

fn access_word(op: Op) -> &'static str {
    op.as_str()
}

/// A policy name for a right.
fn policy_name(resource: Resource, op: Op) -> String {
    format!("{}-{}", resource.as_str(), access_word(op))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_by_the_token_it_is_sent() {
    let (c, admin) = secure_node().await;
    let api = Api {
        http: http::client(),
        base: c.bases[0].clone(),
    };

    // A policy and a token per right the routes need, a token that lacks them all (its one
    // rule is about something no route touches), an expired token and a deleted one.
    let mut rights: Vec<(Resource, Op)> = Vec::new();
    let made = setup(&api, &admin).await;
    let samples: Vec<_> = ROUTES
        .iter()
        .map(|(method, template, need)| {
            let s = sample(method, template, &made).unwrap_or_else(|| {
                panic!("{method} {template} has no sample request in tests/it/access.rs")
            });
            let right = match need {
                Need::Right { resource, op, .. } => Some((*resource, *op)),
                Need::Metrics => Some((Resource::Cluster, Op::Read)),
                Need::Token => s.right,
                Need::Open | Need::Upgrade => None,
            };
            if let Some(r) = right {
                if !rights.contains(&r) {
                    rights.push(r);
                }
            }
            (method, template, need, s, right)
        })
        .collect();
    // The routes anyone may call are these and only these.
    let open: Vec<String> = ROUTES
        .iter()
        .filter(|(_, _, need)| *need == Need::Open)
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        open,
        [
            "get /v1/client.js",
            "get /demo/",
            "get /ui",
            "get /ui/",
            "get /ui/{file}",
            "get /v1/openapi.json",
            "get /health",
            "get /ready"
        ],
        "routes open to anyone"
    );
    let mut holders = BTreeMap::new();
    for (resource, op) in &rights {
        let name = policy_name(*resource, *op);
        api.policy(
            &admin,
            &name,
            json!([{"resource": resource.as_str(), "access": access_word(*op)}]),
        )
        .await;
        let (secret, _) = api.token(&admin, &[&name], None).await;
        holders.insert(name, secret);
    }
    api.policy(
        &admin,
        "unrelated",
        json!([{"resource": "kv", "name": "unrelated", "access": "write"}]),
    )
    .await;
    let (lacking, _) = api.token(&admin, &["unrelated"], None).await;
    let (expired, _) = api.token(&admin, &["unrelated"], Some(1)).await;
    let (deleted, deleted_id) = api.token(&admin, &["unrelated"], None).await;
    api.ok(
        Method::DELETE,
        &format!("/v1/acl/tokens/{deleted_id}"),
        &admin,
        Value::Null,
    )
    .await;
    wait_for(
        "the 1 ms token to expire",
        Duration::from_secs(5),
        || async {
            let (s, _) = api
                .call(
                    Method::GET,
                    "/v1/acl/tokens/self",
                    Some(&bearer(&expired)),
                    None,
                )
                .await;
            (s == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await
    .unwrap();

    let refusals = [
        ("no token", None),
        ("a malformed token", Some("Basic dXNlcjpwYXNz".to_string())),
        ("an empty bearer", Some("Bearer ".to_string())),
        ("an expired token", Some(bearer(&expired))),
        ("a deleted token", Some(bearer(&deleted))),
    ];
    for (method, template, need, s, right) in &samples {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let what = format!("{method} {template}");
        if **need != Need::Open {
            for (how, auth) in &refusals {
                if **need == Need::Upgrade && auth.is_none() {
                    // The token may come in the socket's first message (tested there).
                    continue;
                }
                let (status, v) = api
                    .call(m.clone(), &s.path, auth.as_deref(), s.body.as_ref())
                    .await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} with {how}: {v}");
                assert_eq!(v["error"]["code"], "unauthenticated", "{what} with {how}");
            }
        }
        if right.is_some() {
            let (status, v) = api
                .call(m.clone(), &s.path, Some(&bearer(&lacking)), s.body.as_ref())
                .await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{what} without the right: {v}"
            );
            assert_eq!(v["error"]["code"], "forbidden", "{what}");
        }
        // The caller with the right: the route's own answer.
        let auth = match right {
            Some((r, o)) => Some(bearer(&holders[&policy_name(*r, *o)])),
            None if **need == Need::Open => None,
            None => Some(bearer(&lacking)),
        };
        let (status, v) = api
            .call(m.clone(), &s.path, auth.as_deref(), s.body.as_ref())
            .await;
        match s.expect {
            Expect::Success => assert!(status.is_success(), "{what} with the right: {status} {v}"),
            Expect::Handler(code) => {
                assert_eq!(status.as_u16(), code, "{what} with the right: {v}")
            }
        }
    }
    c.shutdown().await;
}

/// The WebSocket takes its token in its first message, checks every subscription and
/// publish, keeps the connection open after a refusal, and ends the subscriptions of a token
/// deleted while they are live with a `revoked` message within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_checks_each_subscription_and_ends_them_when_the_token_goes() {
    use node::api::ws_protocol::{ClientMessage, Push, ReplyBody};
    use node::error::ErrorCode;
    use tests::ws::WsClient;

    let (c, admin) = secure_node().await;
    let api = Api {
        http: http::client(),
        base: c.bases[0].clone(),
    };
    api.policy(
        &admin,
        "chat",
        json!([{"resource": "channels", "prefix": "chat/", "access": "subscribe"}]),
    )
    .await;
    let (secret, accessor) = api.token(&admin, &["chat"], None).await;

    let mut ws = WsClient::connect(&c.bases[0], "").await.unwrap();
    let sub = |ch: &str| ClientMessage::Subscribe {
        channel: ch.into(),
        since: None,
        user: None,
    };
    let e = ws.request(sub("chat/1")).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
    let auth = |t: &str| ClientMessage::Auth { token: t.into() };
    let e = ws.request(auth("not-a-token")).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
    match ws.request(auth(&secret)).await.unwrap() {
        Ok(ReplyBody::Authenticated { accessor_id, .. }) => assert_eq!(accessor_id, accessor),
        other => panic!("auth: {other:?}"),
    }
    let e = ws.request(sub("news")).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
    let publish = ClientMessage::Publish {
        channel: "chat/1".into(),
        data: json!(1),
    };
    let e = ws.request(publish).await.unwrap().unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Forbidden,
        "subscribe does not grant publish: {e:?}"
    );
    // Refusals leave the connection open: the allowed subscription works.
    ws.subscribe("chat/1", None).await.unwrap();
    api.ok(
        Method::POST,
        "/v1/channels/chat%2F1/publish",
        &admin,
        json!({"data": "hello"}),
    )
    .await;
    match ws.next_msg(Duration::from_secs(10)).await.unwrap() {
        Push::Event(e) => assert_eq!(e.data_value(), json!("hello")),
        other => panic!("expected the event, got {other:?}"),
    }

    api.ok(
        Method::DELETE,
        &format!("/v1/acl/tokens/{accessor}"),
        &admin,
        Value::Null,
    )
    .await;
    match ws.next_msg(Duration::from_secs(1)).await {
        Ok(Push::Revoked(r)) => assert!(r.message.contains("deleted"), "{r:?}"),
        other => panic!("expected revoked within 1 s of the delete, got {other:?}"),
    }
    // Still open, no longer authenticated.
    let e = ws.request(sub("chat/1")).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
    ws.close().await;
    c.shutdown().await;
}

/// Pages of other sites: a request that may change something, or a WebSocket upgrade, from an
/// origin not allowed is refused; the node's own pages and allowed origins go through (the
/// allowed ones with CORS headers); a JSON route refuses a form's content type; every answer
/// carries the security headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sites_pages_cannot_use_a_browsers_access() {
    let c = InprocCluster::start_with(1, |c| {
        c.api.allowed_origins = "https://app.example.com".parse().unwrap();
    })
    .await
    .unwrap();
    let base = &c.bases[0];
    let host = base.trim_start_matches("http://");
    let http = http::client();
    let post = |origin: &str, ct: &str| {
        http.post(format!("{base}/v1/locks/l/acquire"))
            .header("origin", origin)
            .header("content-type", ct)
            .body(r#"{"owner":"w","ttl_ms":1000}"#)
    };

    let resp = post("https://evil.example", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.example"),
        "{v}"
    );

    let resp = post(&format!("http://{host}"), "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the node's own page");

    let resp = post("https://app.example.com", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CONFLICT,
        "allowed, and the lock is held"
    );
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );

    // A form (or any non-JSON type) cannot carry a JSON body.
    let resp = post(
        &format!("http://{host}"),
        "application/x-www-form-urlencoded",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{v}"
    );

    // A preflight from an allowed origin is answered; one from another origin gets no grant.
    let preflight = |origin: &str| {
        http.request(Method::OPTIONS, format!("{base}/v1/kv/a"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let no = preflight("https://evil.example").await.unwrap();
    assert!(no.headers().get("access-control-allow-origin").is_none());

    // A WebSocket upgrade from another site is refused before it opens.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{host}/v1/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("a foreign origin's upgrade must be refused: {other:?}"),
    }
    let mut req = format!("ws://{host}/v1/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{host}").parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("same origin opens");

    // Security headers, on an answer and on an error.
    for path in ["/health", "/v1/nope"] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        let h = resp.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
    }
    c.shutdown().await;
}

/// The admin UI served by one member calls another when its own stops answering: every node
/// lets the members' API origins through (CORS and the `Origin` check) and names them in the
/// UI's policy, while an origin that is no member is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_api_origins_may_call_every_member() {
    let c = InprocCluster::start(2).await.unwrap();
    let http = http::client();
    let (one, two) = (&c.bases[0], &c.bases[1]);
    let acquire = |origin: &str| {
        http.post(format!("{one}/v1/locks/ui/acquire"))
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(r#"{"owner":"w","ttl_ms":1000}"#)
            .send()
    };

    tracing::info!("a page of node 2 writes through node 1");
    let resp = acquire(two).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], two.as_str());
    let preflight = |origin: &str| {
        http.request(Method::OPTIONS, format!("{one}/v1/kv/a"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight(two).await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], two.as_str());

    tracing::info!("a page of another address on the same host is refused");
    let other = "http://127.0.0.1:9";
    let resp = acquire(other).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let no = preflight(other).await.unwrap();
    assert!(no.headers().get("access-control-allow-origin").is_none());

    tracing::info!("the UI's policy: its own scripts only, connections to the members");
    let resp = http.get(format!("{one}/ui/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    for base in &c.bases {
        assert!(csp.contains(base.as_str()), "{csp} names {base}");
        assert!(csp.contains(&base.replace("http://", "ws://")), "{csp}");
    }
    assert!(!csp.contains(other), "{csp}");
    let js = http.get(format!("{one}/ui/app.js")).send().await.unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let deep = http.get(format!("{one}/ui/keys/a")).send().await.unwrap();
    assert_eq!(
        deep.status(),
        StatusCode::OK,
        "a page of the UI's own routes"
    );
    let missing = http.get(format!("{one}/ui/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    c.shutdown().await;
}

/// A token that writes faster than its bucket allows gets 429 with Retry-After while another
/// token goes on; failed authentications from one address and a WebSocket client's messages
/// are bounded the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_stop_one_caller_and_not_the_others() {
    use node::api::ws_protocol::ClientMessage;
    use node::error::ErrorCode;
    use tests::ws::WsClient;

    let c = InprocCluster::start_with(1, |c| {
        c.api.insecure_no_auth = false;
        c.rate.token_writes_per_sec = 5;
        c.rate.auth_failures_per_min = 3;
        c.rate.ws_messages_per_sec = 5;
    })
    .await
    .unwrap();
    let admin = c.admin_token().unwrap();
    let api = Api {
        http: http::client(),
        base: c.bases[0].clone(),
    };
    api.policy(&admin, "kv", json!([{"resource": "kv", "access": "write"}]))
        .await;
    let (a, _) = api.token(&admin, &["kv"], None).await;
    let (b, _) = api.token(&admin, &["kv"], None).await;

    let mut limited = None;
    for i in 0..50 {
        let resp = api
            .http
            .put(format!("{}/v1/kv/k{i}", api.base))
            .header("authorization", bearer(&a))
            .body("x")
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = limited.expect("50 writes at once pass a bucket of 5 per second");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    // Another token, at the same moment, is not affected.
    let (status, v) = api
        .call(
            Method::PUT,
            "/v1/kv/other",
            Some(&bearer(&b)),
            Some(&json!("y")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Guessing tokens: after 3 failures a minute from this address, 429 rather than 401.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (s, _) = api
            .call(Method::GET, "/v1/kv/k0", Some("Bearer guess"), None)
            .await;
        statuses.push(s.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);

    // A WebSocket client's messages: refused past the bucket, the connection stays.
    let mut ws = WsClient::connect(&c.bases[0], "").await.unwrap();
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(e) = ws.request(ClientMessage::Ping {}).await.unwrap() {
            assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "20 messages at once pass a bucket of 5 per second"
    );
    ws.close().await;
    c.shutdown().await;
}

/// The audit log: each security event once, with its actor, source and node, also when the
/// events are made on different nodes around a leader change; failed authentications rolled
/// up per source; readable with `read` on `acl` only, also live on the WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_are_audited_once_each_across_a_leader_change() {
    use node::api::ws_protocol::{ClientMessage, Push};
    use tests::ws::WsClient;

    // Four nodes: three voters and a standby to promote and remove. The standby joins once
    // the three voters are in, so it is node 4 (the calls below go to nodes 1 to 3).
    let mut c = InprocCluster::start_with(3, |c| c.api.insecure_no_auth = false)
        .await
        .unwrap();
    c.join_node().await.unwrap();
    let admin = c.admin_token().unwrap();
    wait_for("node 4 as the standby", Duration::from_secs(30), || async {
        let status = http::api(&c.bases[0])
            .with_token(admin.clone())
            .cluster_status()
            .await
            .ok()?;
        status
            .members
            .iter()
            .any(|m| m.id == 4 && matches!(m.role, node::api::model::MemberRole::Learner))
            .then_some(())
    })
    .await
    .unwrap();
    let api = |i: usize| Api {
        http: http::client(),
        base: c.bases[i].clone(),
    };
    let admin_id = api(0)
        .ok(Method::GET, "/v1/acl/tokens/self", &admin, Value::Null)
        .await["accessor_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ws = WsClient::connect(&c.bases[2], "").await.unwrap();
    ws.request(ClientMessage::Auth {
        token: admin.clone(),
    })
    .await
    .unwrap()
    .unwrap();
    let subscribed_at = ws.subscribe("$audit", None).await.unwrap();
    // Read as an app does, all along (which also answers the server's pings): the steps below
    // can take longer than the idle timeout on a busy machine.
    let (live_tx, mut live_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match ws.next(Duration::from_secs(3600)).await {
                Ok(Ok(Push::Event(e))) => {
                    let kind = e.data_value()["kind"].as_str().unwrap().to_string();
                    if live_tx.send((e.offset, kind)).is_err() {
                        break;
                    }
                }
                Ok(Ok(_)) => continue,
                Ok(Err(closed)) => panic!("the audit subscription ended: {closed:?}"),
                Err(e) => panic!("reading the audit subscription: {e:#}"),
            }
        }
        ws
    });

    api(0)
        .policy(&admin, "p", json!([{"resource": "kv", "access": "read"}]))
        .await;
    let (secret, accessor) = api(1).token(&admin, &["p"], None).await;
    // A token without read on acl sees no audit log.
    let (s, _) = api(1)
        .call(Method::GET, "/v1/audit", Some(&bearer(&secret)), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api(1)
        .call(
            Method::POST,
            "/v1/channels/$audit/publish",
            Some(&bearer(&admin)),
            Some(&json!({"data": 1})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "no one publishes to the audit stream"
    );
    api(1)
        .ok(
            Method::PATCH,
            &format!("/v1/acl/tokens/{accessor}"),
            &admin,
            json!({"description": "renamed"}),
        )
        .await;
    api(2)
        .ok(
            Method::DELETE,
            &format!("/v1/acl/tokens/{accessor}"),
            &admin,
            Value::Null,
        )
        .await;
    for _ in 0..3 {
        let (s, _) = api(0)
            .call(Method::GET, "/v1/kv/a", Some("Bearer wrong"), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let jwt_key =
        json!({"kid": "k1", "alg": "HS256", "key": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"});
    api(2)
        .ok(
            Method::PUT,
            "/v1/acl/jwt/app",
            &admin,
            json!({"issuer": "https://auth.example", "audience": "stackd", "keys": [jwt_key]}),
        )
        .await;
    api(0)
        .ok(Method::DELETE, "/v1/acl/jwt/app", &admin, Value::Null)
        .await;
    let join_token = api(1)
        .ok(Method::POST, "/v1/cluster/tokens", &admin, json!({}))
        .await;
    api(2)
        .ok(
            Method::DELETE,
            &format!("/v1/cluster/tokens/{}", join_token["id"].as_str().unwrap()),
            &admin,
            Value::Null,
        )
        .await;
    // The standby: promoted, then removed.
    let standby = http::api(&c.bases[0])
        .with_token(admin.clone())
        .cluster_status()
        .await
        .unwrap()
        .members
        .iter()
        .find(|m| matches!(m.role, node::api::model::MemberRole::Learner))
        .expect("a standby")
        .id;
    for op in ["promote", "remove"] {
        api(1)
            .ok(
                Method::POST,
                &format!("/v1/cluster/members/{standby}/{op}"),
                &admin,
                json!({}),
            )
            .await;
    }
    // Leadership moves; the next events are made through the new leader and a follower.
    let status = http::api(&c.bases[0])
        .with_token(admin.clone())
        .cluster_status()
        .await
        .unwrap();
    let leader = status.leader_id.unwrap();
    let to = status
        .members
        .iter()
        .map(|m| m.id)
        .find(|id| *id != leader)
        .unwrap();
    api(0)
        .ok(
            Method::POST,
            "/v1/cluster/leader/transfer",
            &admin,
            json!({"to": to}),
        )
        .await;
    api((leader - 1) as usize)
        .ok(Method::DELETE, "/v1/acl/policies/p", &admin, Value::Null)
        .await;
    let (s, _) = api(1)
        .call(
            Method::GET,
            "/v1/cluster/backup",
            Some(&bearer(&admin)),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // A join with a wrong secret, through node 1, which is a follower now or relays to the
    // leader that decides.
    let founding = std::fs::read_to_string(c.configs[0].data_dir().join("join-token")).unwrap();
    let (prefix, _) = founding.trim().rsplit_once('.').unwrap();
    let err = tests::inproc::refused_join(
        "127.0.0.9",
        &c.configs[0].advertise_cluster_addr(),
        &format!("{prefix}.{}", "00".repeat(16)),
        "a wrong join token must not join",
    )
    .await;
    assert!(err.contains("join token"), "{err}");

    let leader_after = http::api(&c.bases[0])
        .with_token(admin.clone())
        .cluster_status()
        .await
        .unwrap()
        .leader_id
        .unwrap();
    let expected = [
        "token_updated",
        "jwt_provider_set",
        "jwt_provider_deleted",
        "join_token_created",
        "join_token_revoked",
        "member_promoted",
        "member_removed",
        "join_refused",
        "policy_set",
        "token_created",
        "token_deleted",
        "leader_transferred",
        "policy_deleted",
        "backup_downloaded",
        "auth_failed",
    ];
    let events = wait_for(
        "every event in the audit log",
        Duration::from_secs(30),
        || async {
            let v = api(2)
                .ok(Method::GET, "/v1/audit?limit=1000", &admin, Value::Null)
                .await;
            let events = v["events"].as_array().unwrap().clone();
            let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
            expected.iter().all(|k| kinds.contains(k)).then_some(events)
        },
    )
    .await
    .unwrap();
    for kind in expected {
        let of_kind: Vec<&Value> = events.iter().filter(|e| e["kind"] == kind).collect();
        assert_eq!(of_kind.len(), 1, "{kind} once: {of_kind:?}");
        let e = of_kind[0];
        assert!(
            e["node"].as_u64().is_some_and(|n| (1..=3).contains(&n)),
            "{e}"
        );
        assert!(e["at_ms"].as_u64().unwrap() > 0, "{e}");
        assert!(!e["source"].as_str().unwrap().is_empty(), "{e}");
        if kind == "auth_failed" {
            assert_eq!(e["actor"], "anyone");
            assert_eq!(e["count"], 3, "rolled up: {e}");
            assert_eq!(e["node"], 1, "{e}");
        } else if kind == "join_refused" {
            assert!(
                e["actor"].as_str().unwrap().starts_with("join token "),
                "{e}"
            );
            assert!(
                e["source"].as_str().unwrap().starts_with("127.0.0.9:"),
                "{e}"
            );
            assert_eq!(e["node"], leader_after, "decided by the leader: {e}");
        } else {
            assert_eq!(e["actor"], admin_id.as_str(), "{e}");
        }
    }
    let by_kind = |k: &str| events.iter().find(|e| e["kind"] == k).unwrap();
    assert_eq!(by_kind("token_created")["node"], 2);
    assert_eq!(by_kind("token_deleted")["node"], 3);
    assert_eq!(
        by_kind("token_deleted")["detail"]["accessor_id"],
        accessor.as_str()
    );
    assert_eq!(by_kind("policy_deleted")["node"], leader);
    assert_eq!(
        by_kind("token_updated")["detail"]["accessor_id"],
        accessor.as_str()
    );
    for kind in ["member_promoted", "member_removed"] {
        assert_eq!(by_kind(kind)["detail"]["member"], standby, "{kind}");
        assert_eq!(by_kind(kind)["node"], 2, "{kind}");
    }

    // The two joins that formed the cluster, recorded by the leader that admitted them.
    let joined: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "node_joined")
        .collect();
    assert_eq!(joined.len(), 3, "{joined:?}");
    for e in &joined {
        assert!(
            e["actor"].as_str().unwrap().starts_with("join token "),
            "{e}"
        );
    }

    // Live on the WebSocket, in the order written, from the subscription on.
    let events: Vec<&Value> = events
        .iter()
        .filter(|e| e["offset"].as_u64().unwrap() > subscribed_at)
        .collect();
    let mut live = Vec::new();
    while live.len() < events.len() {
        let (offset, kind) = tokio::time::timeout(Duration::from_secs(10), live_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("live events so far: {live:?}, written: {events:?}"))
            .expect("the reader ended");
        assert!(
            offset > subscribed_at,
            "{offset} is not after {subscribed_at}"
        );
        live.push(kind);
    }
    drop(live_rx);
    let written: Vec<String> = events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(live, written);
    reader.abort();
    c.shutdown().await;
}

/// The API over TLS: https and wss with the configured certificate, and nothing in the clear on
/// that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_tls_when_given_a_certificate() {
    node::install_crypto_provider();
    let dir = tempfile::TempDir::new().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut config = tests::inproc::config(&dir.path().join("data"), "127.0.0.1", None);
    config.api.insecure_no_auth = false;
    config.api.tls_cert = Some(cert_path.clone());
    config.api.tls_key = Some(key_path);
    let node = node::server::Node::start(config.clone()).await.unwrap();
    let addr = config.advertise_api_addr();
    let token = std::fs::read_to_string(dir.path().join("data/bootstrap-token"))
        .unwrap()
        .trim()
        .to_string();

    let https = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let api =
        node::api::client::Client::with_http(&format!("https://{addr}"), https).with_token(token);
    wait_for("the node over https", Duration::from_secs(30), || async {
        api.kv_put("over-tls", "x").await.ok()
    })
    .await
    .unwrap();
    assert_eq!(&api.kv_get("over-tls").await.unwrap().value[..], b"x");
    // Plain HTTP on the TLS port gets no answer.
    let plain = http::client()
        .get(format!("http://{addr}/health"))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP must not be served on the TLS port"
    );
    node.shutdown().await;
}

/// The API over TLS with certificates the nodes issue themselves from the cluster CA: a client
/// that trusts the CA file in the data dir reaches every node, by its address and by an extra
/// name, with curl-like clients and the CLI; one that does not is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_tls_from_the_cluster_ca() {
    use tests::process::{run_stackd, stackd_ok};
    use tests::standalone::Standalone;
    let dir = tempfile::TempDir::new().unwrap();
    let (d1, d2) = (dir.path().join("n1"), dir.path().join("n2"));
    let n1 = Standalone::spawn("127.0.0.1", &d1, None, &["--api-tls-from-cluster-ca"]).unwrap();
    let join_token = wait_for("the join token", Duration::from_secs(30), || async {
        std::fs::read_to_string(d1.join("join-token")).ok()
    })
    .await
    .unwrap();
    let n2 = Standalone::spawn(
        "127.0.0.2",
        &d2,
        Some((&n1.cluster_addr, join_token.trim())),
        &[
            "--api-tls-from-cluster-ca",
            "--api-tls-names",
            "stackd.test",
        ],
    )
    .unwrap();
    let https_of = |n: &Standalone| n.base.replace("http://", "https://");
    let ca_file = d1.join("api-ca.pem");
    let ca = wait_for("the CA file", Duration::from_secs(30), || async {
        std::fs::read(&ca_file).ok()
    })
    .await
    .unwrap();
    let addr2 = n2.base.trim_start_matches("http://").to_string();
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("stackd.test", addr2.parse().unwrap())
        .build()
        .unwrap();
    for n in [&n1, &n2] {
        let url = format!("{}/ready", https_of(n));
        wait_for(
            "the node ready over https",
            Duration::from_secs(60),
            || async {
                let r = trusting.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await
        .map_err(|e| e.context(n.log_text()))
        .unwrap();
    }
    // Both nodes' certificates chain to the one CA; node 2's also names stackd.test.
    assert_eq!(std::fs::read(d2.join("api-ca.pem")).unwrap(), ca);
    let port2 = addr2.rsplit_once(':').unwrap().1;
    let r = trusting
        .get(format!("https://stackd.test:{port2}/health"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // Without the CA, the certificate is refused; plain HTTP gets no answer.
    assert!(http::client()
        .get(format!("{}/health", https_of(&n1)))
        .send()
        .await
        .is_err());
    let plain = http::client()
        .get(format!("{}/health", n1.base))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // The CLI with --ca-cert writes through one node and reads through the other.
    let ca_arg = ca_file.to_str().unwrap();
    stackd_ok(&[
        "kv",
        "put",
        "tls-key",
        "v1",
        "--addr",
        &https_of(&n2),
        "--ca-cert",
        ca_arg,
    ]);
    let (out, _) = stackd_ok(&[
        "kv",
        "get",
        "tls-key",
        "--addr",
        &https_of(&n1),
        "--ca-cert",
        ca_arg,
    ]);
    assert_eq!(out.trim(), "v1");
    let (ok, _, stderr) = run_stackd(&["kv", "get", "tls-key", "--addr", &https_of(&n1)]);
    assert!(!ok, "a node certificate of an unknown CA must be refused");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}
