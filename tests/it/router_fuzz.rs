//! The router under random and hostile requests: every answer is a success or the documented
//! error body, never a 500, a panic or a hang.
//!
//! Requests go through `node::api::router` in-process (`tower::ServiceExt::oneshot`) against a
//! running single-node cluster with access control on, so a case costs what its handler costs;
//! most carry the management token, the others none, another or a malformed one. Routes come from
//! `node::api::ROUTES`; path parameters, query strings, headers and bodies are drawn from a
//! seeded RNG: plausible values, so that requests reach the state, and hostile ones (empty,
//! huge, percent-encoded garbage and non-UTF-8, control characters, `..`, numbers at and past
//! the ends of their range, wrong JSON types, deep nesting, binary). Bodies that create state
//! draw their names from a small set, so the state stays small; ids, fences and leases that
//! successes answer are drawn again, so requests also reach sessions, held locks and claimed
//! jobs ([`Learned`]).
//!
//! `STACKD_FUZZ_SEED` repeats a run (the seed is printed), `STACKD_FUZZ_CASES` sets its length
//! (default 100,000), `STACKD_FUZZ_CONCURRENCY` how many cases run at once (default 16):
//! `STACKD_FUZZ_SEED=42 cargo test --workspace --test it -- router_fuzz --nocapture`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use futures::{FutureExt, StreamExt};
use node::error::{ErrorBody, ErrorCode};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tests::http::wait_for;
use tests::inproc::InprocCluster;
use tower::ServiceExt;

/// One generated request, kept as parts so a failure can be printed.
struct Case {
    n: u64,
    method: Method,
    uri: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    /// The route it was built from (method, template), for the tallies.
    route: (&'static str, &'static str),
}

impl Case {
    fn describe(&self) -> String {
        let mut s = format!("#{} {} {}", self.n, self.method, self.uri);
        for (name, value) in &self.headers {
            let v = String::from_utf8_lossy(value);
            let v: String = v.chars().take(120).collect();
            let _ = write!(s, "\n  {name}: {v}");
        }
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(400).collect();
        let _ = write!(s, "\n  body ({} bytes): {shown}", self.body.len());
        s
    }

    /// Whether the URI and the headers are valid HTTP (the server never sees others).
    fn sendable(&self) -> bool {
        self.uri.parse::<Uri>().is_ok()
            && self
                .headers
                .iter()
                .all(|(_, v)| HeaderValue::from_bytes(v).is_ok())
    }

    fn request(&self) -> Option<Request<Body>> {
        let uri: Uri = self.uri.parse().ok()?;
        let mut req = Request::builder().method(self.method.clone()).uri(uri);
        for (name, value) in &self.headers {
            let value = HeaderValue::from_bytes(value).ok()?;
            req = req.header(HeaderName::from_static(name), value);
        }
        req.body(Body::from(self.body.clone())).ok()
    }
}

/// Routes whose successes cost more than the others (a snapshot, a backup stream) or leave
/// state that every later call rewrites (join tokens): each is given only this many successes,
/// then no more requests.
const SUCCESS_CAPS: &[(&str, &str, u64)] = &[
    ("post", "/v1/cluster/snapshot", 10),
    ("get", "/v1/cluster/backup", 20),
    ("post", "/v1/cluster/tokens", 50),
    ("post", "/v1/acl/tokens", 200),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_answers_random_and_hostile_requests_with_successes_or_documented_errors() {
    let seed = std::env::var("STACKD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let cases: u64 = std::env::var("STACKD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let concurrency: usize = std::env::var("STACKD_FUZZ_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    println!("router fuzz: seed {seed} (repeat with STACKD_FUZZ_SEED={seed}), {cases} cases");

    let c = InprocCluster::start_with(1, |c| c.api.insecure_no_auth = false)
        .await
        .unwrap();
    let admin = c
        .admin_token()
        .expect("the founding node's management token");
    let app = node::api::router(c.nodes[0].as_ref().unwrap().api_state());
    let learned = Arc::new(Learned::default());
    let mut rng = Gen {
        rng: StdRng::seed_from_u64(seed),
        learned: learned.clone(),
        admin,
    };
    let started = Instant::now();
    let generated = (0..cases).map(|n| generate(&mut rng, n));
    type Outcome<'a> = (u16, (&'a str, &'a str), Option<(String, String)>, Duration);
    let outcomes: Vec<Outcome> = futures::stream::iter(generated)
        .map(|case| {
            let app = app.clone();
            let learned = &learned;
            async move {
                let sent = Instant::now();
                let (status, failure) = run(app, &case, learned).await;
                if (200..300).contains(&status) {
                    learned.succeeded(case.route);
                }
                let failure = failure.map(|f| (f, case.describe()));
                (status, case.route, failure, sent.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut by_status = BTreeMap::<u16, u64>::new();
    // Bad answers by route and kind (the reason's first words), with a count and an example.
    let mut failures = BTreeMap::<String, (u64, String)>::new();
    for (status, (method, template), failure, _) in &outcomes {
        *by_status.entry(*status).or_default() += 1;
        if let Some((why, case)) = failure {
            let kind: String = why.chars().take(60).collect();
            let f = failures
                .entry(format!("{method} {template}: {kind}"))
                .or_insert((0, format!("{why}\n{case}")));
            f.0 += 1;
        }
    }
    // Pseudo statuses: 1 no answer in time, 2 a panic.
    println!(
        "router fuzz: {} cases in {:.1} s; by status {:?}",
        outcomes.len(),
        elapsed.as_secs_f64(),
        by_status
    );
    let reached = outcomes
        .iter()
        .filter(|(s, _, _, _)| (200..300).contains(s))
        .map(|(_, r, _, _)| *r)
        .collect::<BTreeSet<_>>();
    let never: Vec<String> = node::api::ROUTES
        .iter()
        .filter(|(m, p, _)| !reached.contains(&(*m, *p)))
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    println!(
        "router fuzz: {} of {} routes answered a success at least once; never: {}",
        reached.len(),
        node::api::ROUTES.len(),
        never.join(", ")
    );
    let mut unavailable = BTreeMap::<(&str, &str), u64>::new();
    let mut slowest = BTreeMap::<(&str, &str), Duration>::new();
    for (status, route, _, took) in &outcomes {
        if *status >= 500 {
            *unavailable.entry(*route).or_default() += 1;
        }
        let s = slowest.entry(*route).or_default();
        *s = (*s).max(*took);
    }
    let mut slowest: Vec<_> = slowest.into_iter().collect();
    slowest.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
    println!("router fuzz: 503/504 by route: {unavailable:?}");
    println!(
        "router fuzz: slowest answers: {:?}",
        &slowest[..slowest.len().min(6)]
    );

    // The node still serves: ready again once the run's last writes have settled (its
    // readiness check is a read round, which a machine loaded by other tests can delay).
    let ready = wait_for(
        "the node to be ready after the run",
        Duration::from_secs(15),
        || {
            let app = app.clone();
            async move {
                let r = app
                    .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;
    assert!(ready.is_ok(), "seed {seed}: {ready:?}");
    drop(app);
    c.shutdown().await;
    let report: Vec<String> = failures
        .iter()
        .map(|(kind, (n, example))| format!("{n} x {kind}\n  e.g. {example}"))
        .collect();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} kinds of bad answers (repeat with STACKD_FUZZ_SEED={seed}):\n{}",
        failures.len(),
        report.join("\n\n")
    );
}

/// Sends one case; answers its status (or 1: no answer in time, 2: a panic) and what is wrong
/// with the answer.
async fn run(app: axum::Router, case: &Case, learned: &Learned) -> (u16, Option<String>) {
    let req = case.request().expect("generated requests are valid HTTP");
    let sent = AssertUnwindSafe(app.oneshot(req)).catch_unwind();
    let resp = match tokio::time::timeout(Duration::from_secs(30), sent).await {
        Err(_) => return (1, Some("no answer within 30 s".into())),
        Ok(Err(panic)) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return (2, Some(format!("the handler panicked: {why}")));
        }
        Ok(Ok(Ok(resp))) => resp,
        Ok(Ok(Err(never))) => match never {},
    };
    let status = resp.status().as_u16();
    let head = case.method == Method::HEAD;
    // `/ui` (which a mangled `/ui/…` path can become) is documented as a 308 to `/ui/`.
    let to_ui = resp
        .headers()
        .get(axum::http::header::LOCATION)
        .is_some_and(|l| l == "/ui/");
    let body = match axum::body::to_bytes(resp.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => return (status, Some(format!("{status}: the body broke off: {e}"))),
    };
    if (200..300).contains(&status) {
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            learned.learn(&v, 0);
        }
        return (status, None);
    }
    if status == 308 && to_ui {
        return (status, None);
    }
    if !(400..500).contains(&status) && status != 503 && status != 504 {
        let text = String::from_utf8_lossy(&body);
        return (status, Some(format!("status {status}: {text}")));
    }
    if head {
        return (status, None);
    }
    let text = String::from_utf8_lossy(&body);
    let parsed: Result<ErrorBody, _> = serde_json::from_slice(&body);
    let failure = match parsed {
        Err(e) => Some(format!("{status}: not the error body ({e}): {text}")),
        Ok(b) if b.error.message.is_empty() => Some(format!("{status}: no message: {text}")),
        Ok(b) if b.error.code.status().as_u16() != status => Some(format!(
            "{status}: code {} has another status: {text}",
            b.error.code
        )),
        Ok(b) if b.error.code == ErrorCode::Internal => Some(format!("{status}: {text}")),
        Ok(_) => None,
    };
    (status, failure)
}

// ---- Generation ----

/// Ids, fences and leases that successes answered, so that later requests can name them (a
/// session, a held lock's fence, a claimed job's lease): requests drawn with the same seed
/// are the same but for these values, which depend on the answers.
#[derive(Default)]
struct Learned {
    /// Routes that reached their cap of successes ([`SUCCESS_CAPS`]).
    capped: Mutex<BTreeSet<(&'static str, &'static str)>>,
    successes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    ids: Mutex<VecDeque<String>>,
    /// By the field that answered them.
    numbers: Mutex<BTreeMap<String, VecDeque<u64>>>,
}

/// Keeps `x` among the last [`Learned::KEPT`] values of `q`.
fn keep<T>(q: &Mutex<VecDeque<T>>, x: T) {
    let mut q = q.lock().unwrap();
    if q.len() == Learned::KEPT {
        q.pop_front();
    }
    q.push_back(x);
}

impl Learned {
    const KEPT: usize = 8;

    fn succeeded(&self, route: (&'static str, &'static str)) {
        let mut successes = self.successes.lock().unwrap();
        let n = successes.entry(route).or_default();
        *n += 1;
        if SUCCESS_CAPS
            .iter()
            .any(|(m, p, cap)| (*m, *p) == route && *n >= *cap)
        {
            self.capped.lock().unwrap().insert(route);
        }
    }

    fn keep_number(&self, field: &str, n: u64) {
        let mut numbers = self.numbers.lock().unwrap();
        let q = numbers.entry(field.to_string()).or_default();
        if q.len() == Self::KEPT {
            q.pop_front();
        }
        q.push_back(n);
    }

    fn learn(&self, v: &Value, depth: u32) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("id", Value::String(id)) => match id.parse::<u64>() {
                            Ok(n) => self.keep_number("id", n),
                            Err(_) => keep(&self.ids, encode(id.as_bytes())),
                        },
                        ("fence" | "lease" | "revision", Value::Number(n)) => {
                            if let Some(n) = n.as_u64() {
                                self.keep_number(k, n);
                            }
                        }
                        _ if depth < 3 => self.learn(x, depth + 1),
                        _ => {}
                    }
                }
            }
            Value::Array(items) if depth < 3 => {
                for x in items.iter().take(8) {
                    self.learn(x, depth + 1);
                }
            }
            _ => {}
        }
    }
}

/// The seeded RNG, with what successes taught and the management token.
struct Gen {
    rng: StdRng,
    learned: Arc<Learned>,
    admin: String,
}

impl Gen {
    /// A learned id: a session's or a token's, or a job's.
    fn learned_id(&mut self) -> Option<String> {
        if self.rng.random_bool(0.5) {
            return self.learned_number("id").map(|n| n.to_string());
        }
        let ids = self.learned.ids.lock().unwrap();
        let i = self.rng.random_range(0..ids.len().max(1));
        ids.get(i).cloned()
    }

    fn learned_number(&mut self, field: &str) -> Option<u64> {
        let numbers = self.learned.numbers.lock().unwrap();
        let q = numbers.get(field)?;
        let i = self.rng.random_range(0..q.len().max(1));
        q.get(i).copied()
    }
}

impl rand::RngCore for Gen {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.rng.fill_bytes(dst)
    }
}

fn pick<T: Clone>(rng: &mut Gen, items: &[T]) -> T {
    items.choose(rng).expect("not empty").clone()
}

/// Percent-encodes every byte outside the unreserved set.
fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// Names that plausible requests share, so that they meet each other's state.
const NAMES: &[&str] = &["a", "b", "L", "Q", "jobs", "w1", "1", "2"];

/// A path parameter, as it appears in the URI.
fn segment(rng: &mut Gen) -> String {
    match rng.random_range(0..20) {
        0..=4 => pick(rng, NAMES).to_string(),
        5..=7 => rng
            .learned_id()
            .unwrap_or_else(|| pick(rng, NAMES).to_string()),
        8 => String::new(),
        9 => "x".repeat(rng.random_range(500..3000)),
        10 => {
            let n = rng.random_range(1..12);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            encode(&bytes)
        }
        11 => pick(
            rng,
            &["..", ".", "%2e%2e", "%2F", "a%2Fb", "%2F..%2F..%2Fetc"],
        )
        .into(),
        12 => pick(rng, &["%00", "%01", "a%0Ab", "%7F", "%1B%5B31m", "%09"]).into(),
        13 => pick(
            rng,
            &[
                "%FF",
                "%C0%80",
                "%ED%A0%80",
                "%E2%82",
                "%F4%90%80%80",
                "%FE%FF",
            ],
        )
        .into(),
        14 => pick(
            rng,
            &[
                "18446744073709551615",
                "18446744073709551616",
                "-1",
                "0",
                "00",
                "1e3",
                "0x10",
            ],
        )
        .into(),
        15 => pick(
            rng,
            &["%", "%%", "%zz", "%2", "stats", "%E2%82%AC", "%F0%9F%92%A9"],
        )
        .into(),
        16 => encode("é ü \u{202e} ☃".as_bytes()),
        _ => {
            let a = segment(rng);
            let b = segment(rng);
            format!("{a}{b}")
        }
    }
}

fn path(rng: &mut Gen, template: &str) -> String {
    let mut out = String::new();
    for seg in template.split('/').skip(1) {
        out.push('/');
        if seg.starts_with('{') {
            out.push_str(&segment(rng));
        } else {
            out.push_str(seg);
        }
    }
    if template.ends_with('/') && !out.ends_with('/') {
        out.push('/');
    }
    match rng.random_range(0..40) {
        0 => out.push('/'),
        1 => out = out.replacen('/', "//", 1),
        2 => {
            let _ = write!(out, "/{}", segment(rng));
        }
        3 => out = format!("/{}", segment(rng)),
        4 => {
            if let Some((head, _)) = out.rsplit_once('/') {
                out = if head.is_empty() {
                    "/".into()
                } else {
                    head.into()
                };
            }
        }
        _ => {}
    }
    out
}

const QUERY_NAMES: &[&str] = &[
    "since",
    "limit",
    "prefix",
    "after",
    "consistency",
    "ttl_ms",
    "if_revision",
    "fence",
    "tags",
    "user",
    "since_revision",
    "client_id",
    "digest",
];

fn query_value(rng: &mut Gen) -> String {
    match rng.random_range(0..12) {
        0 => pick(rng, &["0", "1", "2", "10", "100", "1000", "60000"]).into(),
        1 => pick(
            rng,
            &[
                "18446744073709551615",
                "18446744073709551614",
                "18446744073709551616",
                "9223372036854775808",
                "-1",
                "-9223372036854775808",
                "1.5",
                "1e3",
                "+1",
                " 1",
            ],
        )
        .into(),
        2 => "9".repeat(rng.random_range(20..400)),
        3 => pick(rng, &["linearizable", "stale", "eventual", ""]).into(),
        4 => pick(
            rng,
            &[
                "L:1",
                "L:0",
                ":",
                "L:",
                ":1",
                "a:b:c",
                "L:18446744073709551615",
                "L:-1",
                "L:x",
            ],
        )
        .into(),
        5 => pick(
            rng,
            &["%FF", "%C0%80", "%00", "a%0Ab", "%", "%zz", "%E2%82"],
        )
        .into(),
        6 => encode(pick(rng, NAMES).as_bytes()),
        7 => "t,".repeat(rng.random_range(1..300)),
        8 => segment(rng),
        9 => String::new(),
        10 => "a".repeat(rng.random_range(400..5000)),
        _ => encode(
            &(0..rng.random_range(1..20))
                .map(|_| rng.random())
                .collect::<Vec<u8>>(),
        ),
    }
}

/// The query parameters a route reads.
fn query_names(method: &str, template: &str) -> &'static [&'static str] {
    match (method, template) {
        ("put", "/v1/kv/{key}") => &["if_revision", "ttl_ms", "fence"],
        ("delete", "/v1/kv/{key}") => &["if_revision", "fence"],
        ("get", "/v1/kv") => &["prefix", "limit", "after", "consistency"],
        ("get", "/v1/history") => &["prefix", "since_revision", "limit", "consistency"],
        ("get", "/v1/channels/{name}/history") => &["since", "limit", "consistency"],
        ("get", "/v1/queues/{name}/dead") => &["limit", "consistency"],
        ("get", "/v1/queues/{name}/jobs") => &["state", "limit", "consistency"],
        ("get", "/v1/locks") | ("get", "/v1/semaphores") | ("get", "/v1/channels") => {
            &["prefix", "limit", "after", "consistency"]
        }
        ("put", "/v1/cache/{key}") => &["ttl_ms", "tags", "fence"],
        ("delete", "/v1/cache/{key}") => &["fence"],
        ("get", "/v1/cache/stats") => &["digest"],
        ("get", "/v1/sessions") => &["user", "consistency"],
        ("delete", "/v1/sessions") => &["user"],
        ("get", "/v1/ws") => &["client_id"],
        ("get", _) => &["consistency"],
        _ => &[],
    }
}

/// A plausible value for a query parameter, or `None` to draw any.
fn plausible_query_value(rng: &mut Gen, name: &str) -> Option<String> {
    Some(match name {
        "user" | "prefix" | "after" | "client_id" | "tags" => pick(rng, NAMES).into(),
        "consistency" => pick(rng, &["linearizable", "stale"]).into(),
        "fence" => format!(
            "L:{}",
            rng.learned_number("fence")
                .unwrap_or(rng.random_range(0..5))
        ),
        "if_revision" | "since_revision" | "since" => rng
            .learned_number("revision")
            .unwrap_or(rng.random_range(0..5))
            .to_string(),
        "limit" | "ttl_ms" => pick(rng, &["1", "10", "100", "1000"]).into(),
        "state" => pick(rng, &["ready", "delayed", "in_flight", "dead"]).into(),
        _ => return None,
    })
}

fn query(rng: &mut Gen, method: &str, template: &str) -> Option<String> {
    if rng.random_bool(0.3) {
        return None;
    }
    let own = query_names(method, template);
    let n = rng.random_range(0..4);
    let mut parts = Vec::new();
    for _ in 0..n {
        let name = match rng.random_range(0..10) {
            0..=5 if !own.is_empty() => pick(rng, own).to_string(),
            9 => segment(rng),
            _ => pick(rng, QUERY_NAMES).to_string(),
        };
        let plausible = rng
            .random_bool(0.6)
            .then(|| plausible_query_value(rng, &name))
            .flatten();
        parts.push(match (plausible, rng.random_range(0..10)) {
            (Some(v), _) => format!("{name}={}", encode(v.as_bytes())),
            (None, 0) => name,
            (None, 1) => format!("{name}="),
            (None, 2) => format!("{name}={}={}", query_value(rng), query_value(rng)),
            (None, _) => format!("{name}={}", query_value(rng)),
        });
    }
    if rng.random_bool(0.05) {
        parts.push(pick(rng, &["&", "&&", "=", "==", ";", "%26"]).into());
    }
    if rng.random_bool(0.1) && !parts.is_empty() {
        let again = pick(rng, &parts);
        parts.push(again);
    }
    Some(parts.join("&"))
}

fn header_bytes(rng: &mut Gen, len: usize) -> Vec<u8> {
    // Anything a header value may hold: visible ASCII, space, tab and obs-text.
    (0..len)
        .map(|_| loop {
            let b: u8 = rng.random();
            if b == b'\t' || (b >= 0x20 && b != 0x7f) {
                break b;
            }
        })
        .collect()
}

fn headers(rng: &mut Gen, route_path: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut h = Vec::new();
    match rng.random_range(0..10) {
        0..=4 => h.push(("content-type", b"application/json".to_vec())),
        5 => h.push((
            "content-type",
            pick(
                rng,
                &[
                    &b"text/plain"[..],
                    b"application/octet-stream",
                    b"application/json; charset=utf-16",
                    b"multipart/form-data; boundary=x",
                    b"",
                ],
            )
            .to_vec(),
        )),
        6 => h.push(("content-type", header_bytes(rng, 30))),
        _ => {}
    }
    match rng.random_range(0..20) {
        0..=3 => h.push(("idempotency-key", pick(rng, &["k1", "k2", "k3"]).into())),
        4 => h.push(("idempotency-key", Vec::new())),
        5 => h.push(("idempotency-key", vec![b'k'; rng.random_range(200..400)])),
        6 => h.push(("idempotency-key", header_bytes(rng, 16))),
        7 => h.push(("idempotency-key", "\u{e9}t\u{e9}".as_bytes().to_vec())),
        _ => {}
    }
    // Mostly the management token, so that requests get past the access check.
    let admin = rng.admin.clone();
    match rng.random_range(0..24) {
        0..=17 => h.push(("authorization", format!("Bearer {admin}").into_bytes())),
        18 => h.push(("authorization", pick(rng, &["Bearer a", "Bearer b"]).into())),
        19 => {
            let odd = pick(
                rng,
                &[
                    format!("bearer {admin}"),
                    format!("Bearer  {admin}"),
                    format!("Bearer {admin}x"),
                    format!("Basic {admin}"),
                    "Bearer".to_string(),
                    "Bearer ".to_string(),
                ],
            );
            h.push(("authorization", odd.into_bytes()));
        }
        20 => h.push(("authorization", header_bytes(rng, 40))),
        21 => h.push(("authorization", vec![b'A'; 20_000])),
        _ => {}
    }
    if rng.random_bool(0.1) {
        let origin: Vec<u8> = match rng.random_range(0..3) {
            0 => b"http://evil.example".to_vec(),
            1 => b"null".to_vec(),
            _ => header_bytes(rng, 20),
        };
        h.push(("origin", origin));
    }
    if route_path == "/v1/ws" || rng.random_bool(0.02) {
        h.push(("connection", b"upgrade".to_vec()));
        h.push(("upgrade", b"websocket".to_vec()));
        h.push(("sec-websocket-version", b"13".to_vec()));
        h.push(("sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==".to_vec()));
    }
    h
}

/// What a JSON field holds, for plausible and hostile values.
#[derive(Clone, Copy)]
enum Kind {
    Name,
    /// A duration: ttl_ms, visibility_ms, delay_ms, backoff_ms.
    Ms,
    /// wait_ms: kept short so that waiting cases do not stall the run.
    Wait,
    /// fences, leases, revisions, node ids, times; plausible values are often ones learned
    /// from answers under this field name.
    Num(&'static str),
    /// permits, capacity, max, max_attempts.
    Small,
    Priority,
    Bool,
    Any,
    Data,
    Tags,
    Ids,
    Cron,
    Compare,
    Ops,
}

/// A JSON number or value past what its field takes (or of another type), as JSON text.
fn hostile(rng: &mut Gen) -> String {
    pick(
        rng,
        &[
            "18446744073709551615",
            "18446744073709551616",
            "340282366920938463463374607431768211456",
            "9223372036854775807",
            "-9223372036854775808",
            "-1",
            "0",
            "-0",
            "1.5",
            "1e400",
            "-1e400",
            "4294967295",
            "4294967296",
            "null",
            "true",
            "\"1\"",
            "\"\"",
            "[]",
            "{}",
            "[1,2]",
            "{\"a\":1}",
        ],
    )
    .into()
}

fn string(rng: &mut Gen) -> String {
    let s: String = match rng.random_range(0..11) {
        0..=6 => pick(rng, NAMES).into(),
        7 => String::new(),
        8 => "n".repeat(rng.random_range(500..1500)),
        9 => pick(
            rng,
            &[
                "a\u{0}b",
                "\n",
                "\u{7f}",
                "\u{202e}x",
                "..",
                "a/b",
                "\u{fffd}",
            ],
        )
        .into(),
        _ => (0..rng.random_range(1..20))
            .map(|_| char::from_u32(rng.random_range(0..0x11000)).unwrap_or('?'))
            .collect(),
    };
    serde_json::to_string(&s).unwrap()
}

fn any(rng: &mut Gen, depth: u32) -> String {
    let top = if depth > 2 { 5 } else { 8 };
    match rng.random_range(0..top) {
        0 => "null".into(),
        1 => pick(rng, &["true", "false"]).into(),
        2 => rng.random_range(-1000i64..1000).to_string(),
        3 => hostile(rng),
        4 => string(rng),
        5 => {
            let items: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| any(rng, depth + 1))
                .collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let items: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| format!("{}:{}", string(rng), any(rng, depth + 1)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

fn value(rng: &mut Gen, kind: Kind) -> String {
    if rng.random_bool(0.1) {
        return hostile(rng);
    }
    match kind {
        Kind::Name => string(rng),
        Kind::Ms => pick(
            rng,
            &["1", "10", "100", "1000", "60000", "3600000", "86400000"],
        )
        .into(),
        Kind::Wait => pick(rng, &["0", "0", "0", "1", "20", "100"]).into(),
        Kind::Num(field) => match rng.learned_number(field) {
            Some(n) if rng.random_bool(0.6) => n.to_string(),
            _ => rng.random_range(0..12).to_string(),
        },
        Kind::Small => pick(rng, &["1", "1", "2", "3", "8", "1024", "1025"]).into(),
        Kind::Priority => rng.random_range(-5i64..5).to_string(),
        Kind::Bool => pick(rng, &["true", "false"]).into(),
        Kind::Any => any(rng, 0),
        Kind::Data => {
            if rng.random_bool(0.1) {
                return any(rng, 0);
            }
            let items: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| format!("{}:{}", string(rng), any(rng, 1)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Kind::Tags | Kind::Ids => {
            let n = if rng.random_bool(0.02) {
                rng.random_range(900..1200)
            } else {
                rng.random_range(0..4)
            };
            let items: Vec<String> = (0..n)
                .map(|_| match kind {
                    Kind::Ids if rng.random_bool(0.7) => format!("\"{}\"", rng.random_range(0..30)),
                    _ => string(rng),
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        Kind::Cron => serde_json::to_string(pick(
            rng,
            &[
                "* * * * *",
                "0 8 * * *",
                "*/5 * * * * *",
                "0 0 30 2 *",
                "0 0 31 4 *",
                "0 0 29 2 1",
                "59 23 31 12 *",
                "@yearly",
                "@reboot",
                "",
                "99 99 99 99 99",
                "* * * * * * *",
                "*/0 * * * *",
                "0-59/1000000 * * * *",
                "L W # ? *",
                "0 0 ? * 5#5",
                "0 0 L * *",
                "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20 * * * *",
            ],
        ))
        .unwrap(),
        Kind::Compare => {
            let items: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| match rng.random_range(0..5) {
                    0 => format!(
                        r#"{{"key":{},"revision":{}}}"#,
                        string(rng),
                        value(rng, Kind::Num("revision"))
                    ),
                    1 => format!(
                        r#"{{"lock":{},"fence":{}}}"#,
                        string(rng),
                        value(rng, Kind::Num("fence"))
                    ),
                    2 => format!(
                        r#"{{"semaphore":{},"fence":{}}}"#,
                        string(rng),
                        value(rng, Kind::Num("fence"))
                    ),
                    3 => format!(
                        r#"{{"key":{},"lock":{},"revision":{}}}"#,
                        string(rng),
                        string(rng),
                        value(rng, Kind::Num("revision"))
                    ),
                    _ => any(rng, 1),
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        Kind::Ops => {
            let n = if rng.random_bool(0.02) {
                rng.random_range(100..2000)
            } else {
                rng.random_range(0..4)
            };
            let items: Vec<String> = (0..n).map(|_| txn_op(rng)).collect();
            format!("[{}]", items.join(","))
        }
    }
}

fn txn_op(rng: &mut Gen) -> String {
    let fields: &[(&str, Kind)] = match rng.random_range(0..9) {
        0 => return format!(r#"{{"put":{}}}"#, txn_value(rng)),
        1 => return format!(r#"{{"cache_set":{}}}"#, txn_value(rng)),
        2 => &[("key", Kind::Name)],
        3 => &[("tags", Kind::Tags)],
        4 => &[
            ("queue", Kind::Name),
            ("payload", Kind::Any),
            ("delay_ms", Kind::Ms),
            ("priority", Kind::Priority),
            ("unique_key", Kind::Name),
        ],
        5 => &[("channel", Kind::Name), ("data", Kind::Any)],
        6 => &[("semaphore", Kind::Name), ("fence", Kind::Num("fence"))],
        7 => return any(rng, 1),
        _ => &[("key", Kind::Name)],
    };
    let op = pick(
        rng,
        &[
            "delete",
            "cache_delete",
            "cache_invalidate",
            "enqueue",
            "publish",
            "semaphore_release",
            "put",
        ],
    );
    format!(r#"{{"{op}":{}}}"#, object(rng, fields))
}

fn txn_value(rng: &mut Gen) -> String {
    let mut fields = vec![
        ("key", Kind::Name),
        ("ttl_ms", Kind::Ms),
        ("tags", Kind::Tags),
    ];
    fields.push(if rng.random_bool(0.5) {
        ("text", Kind::Name)
    } else {
        ("value", Kind::Name)
    });
    object(rng, &fields)
}

/// A JSON object with (most of) `fields`, sometimes one more that no route takes.
fn object(rng: &mut Gen, fields: &[(&str, Kind)]) -> String {
    let mut items = Vec::new();
    for (name, kind) in fields {
        if rng.random_bool(0.85) {
            items.push(format!("\"{name}\":{}", value(rng, *kind)));
        }
    }
    if rng.random_bool(0.05) {
        items.push(format!("{}:{}", string(rng), any(rng, 1)));
    }
    if rng.random_bool(0.03) && !items.is_empty() {
        let again = pick(rng, &items);
        items.push(again);
    }
    format!("{{{}}}", items.join(","))
}

/// The fields of a route's JSON body; `None` for a route whose body is raw bytes or none.
fn fields(method: &str, template: &str) -> Option<&'static [(&'static str, Kind)]> {
    use Kind::*;
    Some(match (method, template) {
        ("post", "/v1/txn") => &[("compare", Compare), ("success", Ops), ("failure", Ops)],
        ("post", "/v1/locks/{name}/acquire") => {
            &[("owner", Name), ("ttl_ms", Ms), ("wait_ms", Wait)]
        }
        ("post", "/v1/locks/{name}/renew") | ("post", "/v1/semaphores/{name}/renew") => {
            &[("fence", Num("fence")), ("ttl_ms", Ms)]
        }
        ("post", "/v1/locks/{name}/release") | ("post", "/v1/semaphores/{name}/release") => {
            &[("fence", Num("fence"))]
        }
        ("post", "/v1/semaphores/{name}/acquire") => &[
            ("holder", Name),
            ("permits", Small),
            ("capacity", Small),
            ("ttl_ms", Ms),
            ("wait_ms", Wait),
        ],
        ("post", "/v1/sessions") => &[("user", Name), ("data", Data), ("ttl_ms", Ms)],
        ("patch", "/v1/sessions/{id}") => &[("data", Data)],
        ("post", "/v1/queues/{name}/jobs") => &[
            ("payload", Any),
            ("delay_ms", Ms),
            ("run_at_ms", Num("run_at_ms")),
            ("priority", Priority),
            ("max_attempts", Small),
            ("backoff_ms", Ms),
            ("unique_key", Name),
        ],
        ("post", "/v1/queues/{name}/claim") => &[
            ("worker", Name),
            ("max", Small),
            ("visibility_ms", Ms),
            ("wait_ms", Wait),
        ],
        ("post", "/v1/queues/{name}/dead/replay") | ("post", "/v1/queues/{name}/dead/delete") => {
            &[("ids", Ids), ("all", Bool)]
        }
        ("put", "/v1/queues/{queue}/schedules/{name}") => &[
            ("cron", Cron),
            ("payload", Any),
            ("priority", Priority),
            ("max_attempts", Small),
        ],
        ("post", "/v1/jobs/{id}/ack") => &[("lease", Num("lease"))],
        ("post", "/v1/jobs/{id}/nack") => &[
            ("lease", Num("lease")),
            ("error", Name),
            ("retry_in_ms", Ms),
        ],
        ("post", "/v1/jobs/{id}/extend") => &[("lease", Num("lease")), ("visibility_ms", Ms)],
        ("post", "/v1/cache/invalidate") => &[("tags", Tags)],
        ("post", "/v1/channels/{name}/publish") => &[("data", Any)],
        ("post", "/v1/cluster/leader/transfer") => &[("to", Num("to"))],
        ("post", "/v1/cluster/compact") => &[("revision", Num("revision"))],
        ("post", "/v1/cluster/tokens") => &[("ttl_ms", Ms)],
        _ => return None,
    })
}

fn body(rng: &mut Gen, method: &str, template: &str) -> Vec<u8> {
    let own = fields(method, template);
    match rng.random_range(0..100) {
        0..=49 => match own {
            Some(f) => object(rng, f).into_bytes(),
            // A raw value (a key or a cache entry), or nothing.
            None => match rng.random_range(0..3) {
                0 => Vec::new(),
                1 => string(rng).into_bytes(),
                _ => (0..rng.random_range(0..300))
                    .map(|_| rng.random())
                    .collect(),
            },
        },
        50..=59 => Vec::new(),
        60..=67 => any(rng, 0).into_bytes(),
        68..=75 => (0..rng.random_range(1..600))
            .map(|_| rng.random())
            .collect(),
        76..=81 => {
            // Cut short.
            let whole = object(rng, own.unwrap_or(&[("data", Kind::Any)]));
            let cut = rng.random_range(0..whole.len().max(1));
            whole.as_bytes()[..cut].to_vec()
        }
        82..=85 => {
            let depth = rng.random_range(100..20_000);
            let (open, close) = pick(rng, &[("[", "]"), ("{\"a\":", "}")]);
            let mut s = open.repeat(depth);
            if rng.random_bool(0.5) {
                s.push('1');
                s.push_str(&close.repeat(depth));
            }
            s.into_bytes()
        }
        86 => {
            // Large: up to past the largest limit (2 MiB + 64 KiB) now and then.
            let n = if rng.random_bool(0.05) {
                rng.random_range((2 << 20)..(3 << 20))
            } else {
                rng.random_range(1000..300_000)
            };
            match rng.random_range(0..3) {
                0 => vec![b'x'; n],
                1 => format!("{{\"data\":\"{}\"}}", "y".repeat(n)).into_bytes(),
                _ => format!("{{\"data\":[{}0]}}", "1,".repeat(n / 2)).into_bytes(),
            }
        }
        _ => {
            // Another route's body.
            let (m, t, _) = pick(rng, node::api::ROUTES);
            match fields(m, t) {
                Some(f) => object(rng, f).into_bytes(),
                None => Vec::new(),
            }
        }
    }
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW",
];

/// The next case: a valid HTTP request to a route that has not reached its cap.
fn generate(rng: &mut Gen, n: u64) -> Case {
    loop {
        let (route_method, template, _) = pick(rng, node::api::ROUTES);
        if rng
            .learned
            .capped
            .lock()
            .unwrap()
            .contains(&(route_method, template))
        {
            continue;
        }
        let case = case(rng, n, route_method, template);
        if case.sendable() {
            return case;
        }
    }
}

fn case(rng: &mut Gen, n: u64, route_method: &'static str, template: &'static str) -> Case {
    let method = if rng.random_bool(0.85) {
        route_method.to_ascii_uppercase()
    } else {
        pick(rng, METHODS).to_string()
    };
    let mut uri = path(rng, template);
    if let Some(q) = query(rng, route_method, template) {
        uri.push('?');
        uri.push_str(&q);
    }
    Case {
        n,
        method: Method::from_bytes(method.as_bytes()).expect("a method"),
        uri,
        headers: headers(rng, template),
        body: body(rng, route_method, template),
        route: (route_method, template),
    }
}
