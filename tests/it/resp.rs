//! The Redis protocol listener: tokens and rights, limits, and hostile input. (Real Redis
//! clients against a 3-node cluster are in `tests/redis/run.sh`.)

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tests::http::{self, wait_for};
use tests::inproc::InprocCluster;
use tests::resp::{RespClient, Value};

fn resp_addr(c: &InprocCluster, i: usize) -> SocketAddr {
    c.configs[i].resp.addr.expect("resp.addr")
}

/// Gives every node a free RESP address on its own IP.
fn with_resp(c: &mut node::config::Config) {
    let ip = c.api.addr.ip().to_string();
    c.resp.addr = Some(tests::free_addrs(&ip).0);
}

async fn admin_call(
    base: &str,
    admin: &str,
    method: reqwest::Method,
    path: &str,
    body: Json,
) -> Json {
    let resp = http::client()
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Json = resp.json().await.unwrap_or(Json::Null);
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

fn ok() -> Value {
    Value::Status("OK".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_needs_a_token_and_checks_its_rights_on_every_command() {
    let c = InprocCluster::start_with(1, |c| {
        with_resp(c);
        c.api.insecure_no_auth = false;
        c.rate.auth_failures_per_min = 0;
    })
    .await
    .unwrap();
    let admin = c.admin_token().unwrap();
    let base = &c.bases[0];
    admin_call(
        base,
        &admin,
        reqwest::Method::PUT,
        "/v1/acl/policies/app",
        json!({"rules": [
            {"resource": "cache", "prefix": "app/", "access": "write"},
            {"resource": "channels", "prefix": "chat/", "access": "subscribe"},
        ]}),
    )
    .await;
    let made = admin_call(
        base,
        &admin,
        reqwest::Method::POST,
        "/v1/acl/tokens",
        json!({"policies": ["app"]}),
    )
    .await;
    let secret = made["secret"].as_str().unwrap();
    let accessor = made["accessor_id"].as_str().unwrap();

    let mut r = RespClient::connect(resp_addr(&c, 0)).await.unwrap();
    let v = r.cmd(&["GET", "app/x"]).await.unwrap();
    assert!(v.is_error_starting("NOAUTH"), "{v:?}");
    let v = r.cmd(&["PING"]).await.unwrap();
    assert!(
        v.is_error_starting("NOAUTH"),
        "PING needs a token too: {v:?}"
    );
    let v = r.cmd(&["AUTH", "not-a-token"]).await.unwrap();
    assert!(v.is_error_starting("WRONGPASS"), "{v:?}");
    // HELLO with AUTH takes a username, ignored.
    let v = r
        .cmd(&["HELLO", "3", "AUTH", "default", secret])
        .await
        .unwrap();
    assert!(matches!(v, Value::Map(_)), "{v:?}");
    assert_eq!(r.cmd(&["SET", "app/x", "1"]).await.unwrap(), ok());
    assert_eq!(
        r.cmd(&["GET", "app/x"]).await.unwrap(),
        Value::Bulk(b"1".to_vec())
    );
    for refused in [
        &["SET", "other", "1"][..],
        &["GET", "other"],
        &["DEL", "app/x", "other"],
        &["SCAN", "0"],
        &["SUBSCRIBE", "news"],
        &["PSUBSCRIBE", "*"],
        &["PUBLISH", "chat/1", "hi"],
    ] {
        let v = r.cmd(refused).await.unwrap();
        assert!(v.is_error_starting("NOPERM"), "{refused:?}: {v:?}");
    }
    let v = r.cmd(&["SCAN", "0", "MATCH", "app/*"]).await.unwrap();
    assert_eq!(
        v,
        Value::Array(vec![
            Value::Bulk(b"0".to_vec()),
            Value::Array(vec![Value::Bulk(b"app/x".to_vec())])
        ])
    );
    // The key-value store (db 1) is another resource: not granted.
    assert_eq!(r.cmd(&["SELECT", "1"]).await.unwrap(), ok());
    let v = r.cmd(&["GET", "app/x"]).await.unwrap();
    assert!(v.is_error_starting("NOPERM"), "{v:?}");
    // A refused write inside MULTI discards the transaction.
    assert_eq!(r.cmd(&["SELECT", "0"]).await.unwrap(), ok());
    assert_eq!(r.cmd(&["MULTI"]).await.unwrap(), ok());
    assert_eq!(
        r.cmd(&["SET", "app/y", "1"]).await.unwrap(),
        Value::Status("QUEUED".into())
    );
    assert!(r
        .cmd(&["SET", "other", "1"])
        .await
        .unwrap()
        .is_error_starting("NOPERM"));
    let v = r.cmd(&["EXEC"]).await.unwrap();
    assert!(v.is_error_starting("EXECABORT"), "{v:?}");
    assert_eq!(r.cmd(&["EXISTS", "app/y"]).await.unwrap(), Value::Int(0));

    // Deleting the token ends its use on open connections at their next command.
    admin_call(
        base,
        &admin,
        reqwest::Method::DELETE,
        &format!("/v1/acl/tokens/{accessor}"),
        Json::Null,
    )
    .await;
    let v = r.cmd(&["GET", "app/x"]).await.unwrap();
    assert!(v.is_error_starting("NOAUTH"), "{v:?}");
    c.shutdown().await;
}

/// A little generator of reproducible random bytes (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// RESP-looking noise: headers, lengths, line ends and command names, mixed with bytes.
    fn input(&mut self) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"*",
            b"$",
            b"\r\n",
            b"\n",
            b"-1",
            b"0",
            b"3",
            b"99999999999",
            b"GET",
            b"SET",
            b"SUBSCRIBE",
            b"MULTI",
            b"EXEC",
            b"\"",
            b"'",
            b"\\x",
            b" ",
            b"k",
            b"*2\r\n$3\r\nGET\r\n",
            b"$1\r\nk\r\n",
            b"HELLO",
            b"3",
            b"SCAN",
            b"MATCH",
            b"[",
            b"*?",
        ];
        let mut out = Vec::new();
        for _ in 0..(self.next() % 24) {
            if self.next().is_multiple_of(5) {
                out.push(self.next() as u8);
            } else {
                out.extend_from_slice(PIECES[(self.next() % PIECES.len() as u64) as usize]);
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_survives_random_input_and_keeps_its_limits() {
    let c = InprocCluster::start_with(1, |c| {
        with_resp(c);
        c.resp.max_connections = 4;
        c.resp.max_args = 16;
        c.limits.max_value_bytes = 1024;
        c.cache.max_bytes = 4096;
    })
    .await
    .unwrap();
    let addr = resp_addr(&c, 0);

    // Random input on 300 connections (a bounded loop); after each, a new connection is
    // answered.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..300 {
        let mut r = RespClient::connect(addr).await.unwrap();
        r.send_raw(&rng.input()).await.unwrap();
        // Whatever it answered, the connection is closed or idle soon.
        r.closed_within(Duration::from_millis(20)).await;
        drop(r);
        if round % 50 == 0 {
            let mut probe = RespClient::connect(addr).await.unwrap();
            assert_eq!(
                probe.cmd(&["PING"]).await.unwrap(),
                Value::Status("PONG".into())
            );
        }
    }

    // An unknown command whose echoed arguments end inside a multi-byte character.
    let mut r = RespClient::connect(addr).await.unwrap();
    let a64 = "a".repeat(64);
    let accents = format!("b{}", "é".repeat(40));
    let v = r.cmd(&["x", &a64, &a64, &a64, &accents]).await.unwrap();
    assert!(v.is_error_starting("ERR unknown command 'x'"), "{v:?}");
    assert_eq!(
        r.cmd(&["PING"]).await.unwrap(),
        Value::Status("PONG".into())
    );
    // A transaction of more than 128 writes is refused while queued, and discarded.
    assert_eq!(r.cmd(&["MULTI"]).await.unwrap(), ok());
    for i in 0..128 {
        let k = format!("tx{i}");
        assert_eq!(
            r.cmd(&["SET", &k, "v"]).await.unwrap(),
            Value::Status("QUEUED".into())
        );
    }
    let v = r.cmd(&["SET", "tx128", "v"]).await.unwrap();
    assert!(v.text().contains("at most 128 writes"), "{v:?}");
    assert!(r
        .cmd(&["EXEC"])
        .await
        .unwrap()
        .is_error_starting("EXECABORT"));
    assert_eq!(r.cmd(&["EXISTS", "tx0"]).await.unwrap(), Value::Int(0));
    // Keys and values of one transaction: at most 2 x limits.max_value_bytes + 64 KiB.
    let value = "v".repeat(1000);
    assert_eq!(r.cmd(&["MULTI"]).await.unwrap(), ok());
    let refused = async {
        for i in 0..128 {
            let v = r.cmd(&["SET", &format!("big{i}"), &value]).await.unwrap();
            if v != Value::Status("QUEUED".into()) {
                return Some((i, v));
            }
        }
        None
    }
    .await;
    let (i, v) = refused.expect("refused before 128 writes");
    assert!(
        i == 67 && v.text().contains("bytes of keys and values"),
        "{i}: {v:?}"
    );
    assert!(r
        .cmd(&["EXEC"])
        .await
        .unwrap()
        .is_error_starting("EXECABORT"));
    drop(r);

    // Malformed framing: a protocol error, then the connection is closed.
    let mut r = RespClient::connect(addr).await.unwrap();
    r.send_raw(b"*1\r\n$x\r\n").await.unwrap();
    let v = r.read().await.unwrap();
    assert!(
        v.is_error_starting("ERR Protocol error: invalid bulk length"),
        "{v:?}"
    );
    assert!(r.closed_within(Duration::from_secs(5)).await);
    // An argument over limits.max_value_bytes, refused from its header.
    let mut r = RespClient::connect(addr).await.unwrap();
    r.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n")
        .await
        .unwrap();
    let v = r.read().await.unwrap();
    assert!(v.text().contains("limits.max_value_bytes"), "{v:?}");
    // Too many arguments, refused from the array's header.
    let mut r = RespClient::connect(addr).await.unwrap();
    r.send_raw(b"*17\r\n").await.unwrap();
    let v = r.read().await.unwrap();
    assert!(v.text().contains("resp.max_args"), "{v:?}");

    // resp.max_connections: the fifth connection is refused, then let in once one closes.
    drop(r);
    let metrics = format!("{}/metrics", c.bases[0]);
    wait_for(
        "the closed connections to end",
        Duration::from_secs(10),
        || async {
            let text = http::client()
                .get(&metrics)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .any(|l| l == "stackd_resp_connections 0")
                .then_some(())
        },
    )
    .await
    .unwrap();
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut r = RespClient::connect(addr).await.unwrap();
        assert_eq!(
            r.cmd(&["PING"]).await.unwrap(),
            Value::Status("PONG".into())
        );
        open.push(r);
    }
    let mut extra = RespClient::connect(addr).await.unwrap();
    let v = extra.read().await.unwrap();
    assert!(v.text().contains("max number of clients reached"), "{v:?}");
    open.pop();
    wait_for(
        "a connection slot to free up",
        Duration::from_secs(10),
        || async {
            let mut r = RespClient::connect(addr).await.ok()?;
            (r.cmd(&["PING"]).await.ok()? == Value::Status("PONG".into())).then_some(())
        },
    )
    .await
    .unwrap();
    drop(open);

    // The node is healthy and serves the API.
    let health = http::client()
        .get(format!("{}/health", c.bases[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    c.shutdown().await;
}

async fn read_n(r: &mut RespClient, n: usize) -> Vec<Value> {
    let mut answers = Vec::new();
    for _ in 0..n {
        answers.push(r.read_within(Duration::from_secs(10)).await.unwrap());
    }
    answers
}

/// Pipelined commands are charged to the token's rate like single ones: a batch within the
/// bucket is answered whole; past it, the commands beyond are refused with `rate_limited`,
/// each on its own, and the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_charged_to_the_tokens_rate() {
    let c = InprocCluster::start_with(1, |c| {
        with_resp(c);
        c.api.insecure_no_auth = false;
        c.rate.token_reads_per_sec = 10;
    })
    .await
    .unwrap();
    let admin = c.admin_token().unwrap();
    let mut r = RespClient::connect(resp_addr(&c, 0)).await.unwrap();
    // AUTH is not charged; SET is a write, a bucket of its own.
    assert_eq!(r.cmd(&["AUTH", &admin]).await.unwrap(), ok());
    assert_eq!(r.cmd(&["SET", "k", "v"]).await.unwrap(), ok());
    let pipeline = |n: usize| "GET k\r\n".repeat(n).into_bytes();
    let started = std::time::Instant::now();
    r.send_raw(&pipeline(5)).await.unwrap();
    let answers = read_n(&mut r, 5).await;
    assert!(
        answers.iter().all(|a| *a == Value::Bulk(b"v".to_vec())),
        "a batch within the bucket is answered whole: {answers:?}"
    );
    r.send_raw(&pipeline(25)).await.unwrap();
    let answers = read_n(&mut r, 25).await;
    let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    let served = answers
        .iter()
        .filter(|a| **a == Value::Bulk(b"v".to_vec()))
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.text().contains("rate_limited"))
        .count();
    assert_eq!(served + refused, 25, "{answers:?}");
    assert!(
        served >= 1 && served <= 5 + refilled,
        "the bucket's 10 less the 5 spent, plus {refilled} refilled: {served} served"
    );
    // The node goes on serving the connection once the bucket refills.
    wait_for("the bucket to refill", Duration::from_secs(10), || {
        let addr = resp_addr(&c, 0);
        let admin = admin.clone();
        async move {
            let mut r = RespClient::connect(addr).await.ok()?;
            r.cmd(&["AUTH", &admin]).await.ok()?;
            (r.cmd(&["GET", "k"]).await.ok()? == Value::Bulk(b"v".to_vec())).then_some(())
        }
    })
    .await
    .unwrap();
    c.shutdown().await;
}
