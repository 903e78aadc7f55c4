//! `loadgen`: a load generator for a stackd cluster, and for etcd and Redis so that
//! `benches/compare.sh` drives all three with the same loop.
//!
//! Runs `--connections` concurrent workers, each a sequential request loop
//! against one of the `--targets` (assigned round-robin), for a warmup period
//! followed by a measured period. Reports throughput, latency percentiles and
//! response counts by status, as a human-readable report or (with `--json`) a
//! single JSON line on stdout.
//!
//! ```text
//! loadgen --targets http://127.0.0.1:7001,http://127.0.0.2:7001 \
//!         --connections 64 --duration-secs 10 --workload get --json
//! loadgen --protocol etcd --targets http://127.0.0.2:2379 --workload get
//! loadgen --protocol redis --targets redis://127.0.0.1:6379 --workload get
//! ```
//!
//! # Layout
//! - `Args`, `Protocol`, `Workload`: what to send, and to what.
//! - `Conn`: one worker's connection; turns (put|get, key) into a request of the protocol.
//! - `resp`: the few lines of the Redis protocol (RESP) that `GET` and `SET` need.
//! - `worker`, `preload`, `main`: the measured loop, the key preload and the report.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use clap::{Parser, ValueEnum};
use node::api::client::{ApiError, ApiResult, CacheWrite, Client};
use node::api::model::{AcquireRequest, ClaimRequest, EnqueueRequest};
use tokio::task::JoinSet;

/// Load generator for a stackd cluster (and for etcd and Redis, to compare).
///
/// Spreads `--connections` workers round-robin over `--targets`; each worker
/// issues one request at a time until the deadline. Requests issued during the
/// warmup are not counted. A non-2xx response or a transport error counts as
/// an error and is excluded from the latency statistics.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Comma-separated base URLs of the nodes' HTTP APIs (`redis://host:port` for Redis).
    #[arg(
        long,
        env = "LOADGEN_TARGETS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7001"
    )]
    targets: Vec<String>,

    /// Number of concurrent workers (each a sequential request loop).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,

    /// Length of the measured period, in seconds (after the warmup).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: u64,

    /// Warmup period before measuring, in seconds; its requests are not counted.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,

    /// What to send.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,

    /// Which server speaks at the targets.
    #[arg(long, value_enum, default_value_t = Protocol::Stackd)]
    protocol: Protocol,

    /// Size of the key space: keys are `bench-0` .. `bench-<keys-1>`, picked uniformly.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,

    /// Size of each PUT body, in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,

    /// Per-request timeout, in milliseconds (a timeout counts as an error).
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,

    /// Print a single JSON line on stdout (the human-readable report goes to stderr).
    #[arg(long)]
    json: bool,

    /// stackd: the token secret sent with every request (none: the nodes run without access
    /// control).
    #[arg(long, env = "STACKD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The server at the targets; each maps a put or get of key `bench-<n>` to its own API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// stackd's HTTP API (`/v1/kv/...`, `/v1/cache/...`).
    Stackd,
    /// etcd v3's HTTP/JSON gateway: `POST /v3/kv/put` and `POST /v3/kv/range`, keys and
    /// values base64 in a JSON body (the gateway's own encoding of the gRPC messages).
    Etcd,
    /// Redis (RESP over TCP): `SET` and `GET`.
    Redis,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Stackd => "stackd",
            Protocol::Etcd => "etcd",
            Protocol::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Write `bench-<n>` with a `--value-size` value: stackd `PUT /v1/kv/bench-<n>`,
    /// etcd put, Redis `SET`.
    Put,
    /// Linearizable read; every key is preloaded first. stackd `GET /v1/kv/bench-<n>`,
    /// etcd range (linearizable, the default), Redis `GET`.
    Get,
    /// Read from the receiving node's local state; every key is preloaded first. stackd
    /// `GET /v1/kv/bench-<n>?consistency=stale`, etcd range with `serializable: true`.
    StaleGet,
    /// 50% put, 50% get; every key is preloaded first.
    Mixed,
    /// Cache read; every key is preloaded first. stackd `GET /v1/cache/bench-<n>` (preloaded
    /// with `PUT /v1/cache/bench-<n>`), Redis `GET` (preloaded with `SET`).
    CacheGet,
    /// One lock acquire and its release per operation, on `bench-lock-<n>`: stackd
    /// `POST /v1/locks/{name}/acquire` then `POST /v1/locks/{name}/release` with the fence;
    /// etcd `/v3/lock/lock` then `/v3/lock/unlock` under a lease granted once per worker.
    Lock,
    /// One job end to end per operation (stackd only; BullMQ's counterpart is
    /// `benches/bullmq/jobs.mjs`): enqueue on queue `bench`, claim one job (long-poll up to
    /// 1 s) and ack it.
    Jobs,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::StaleGet => "stale-get",
            Workload::Mixed => "mixed",
            Workload::CacheGet => "cache-get",
            Workload::Lock => "lock",
            Workload::Jobs => "jobs",
        }
    }

    /// Workloads that read keys need them to exist, or every GET is a 404.
    fn needs_preload(self) -> bool {
        !matches!(self, Workload::Put | Workload::Lock | Workload::Jobs)
    }

    /// Whether `protocol` has an operation for this workload.
    fn supported_by(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Stackd => true,
            Protocol::Etcd => !matches!(self, Workload::CacheGet | Workload::Jobs),
            // Redis has one kind of read: a local, in-memory GET.
            Protocol::Redis => matches!(self, Workload::Put | Workload::Get | Workload::CacheGet),
        }
    }
}

/// One request of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

/// Small xorshift64* generator: enough to pick keys, and avoids a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // SplitMix64 step so that nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough value in `0..n` (modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What one worker measured.
#[derive(Default)]
struct Stats {
    /// Latency of each successful request, in microseconds.
    latencies_us: Vec<u64>,
    /// Counted responses by HTTP status code (successes and failures).
    by_status: BTreeMap<u16, u64>,
    /// Counted transport errors (connect, timeout, ...) by kind.
    transport_errors: BTreeMap<&'static str, u64>,
    /// One example error, to make a failing run diagnosable.
    sample_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        for (kind, n) in other.transport_errors {
            *self.transport_errors.entry(kind).or_default() += n;
        }
        if self.sample_error.is_none() {
            self.sample_error = other.sample_error;
        }
    }

    fn errors(&self) -> u64 {
        let bad_status: u64 = self
            .by_status
            .iter()
            .filter(|(status, _)| !(200..300).contains(*status))
            .map(|(_, n)| n)
            .sum();
        bad_status + self.transport_errors.values().sum::<u64>()
    }
}

/// Outcome of a single request.
enum Outcome {
    Status(u16),
    Transport(&'static str, String),
}

fn transport_kind(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else {
        "other"
    }
}

/// The error and its causes: reqwest's own message rarely says what went wrong.
fn error_chain(err: &reqwest::Error) -> String {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    msg
}

/// Sends one HTTP request and reads the whole body (so the connection can be reused).
async fn send(req: reqwest::RequestBuilder) -> Outcome {
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(_) => Outcome::Status(status),
                Err(e) => Outcome::Transport(transport_kind(&e), error_chain(&e)),
            }
        }
        Err(e) => Outcome::Transport(transport_kind(&e), error_chain(&e)),
    }
}

/// The outcome of a stackd call: a success is 200 (every operation measured answers 200),
/// an error answer its status, no answer a transport error.
fn outcome<T>(result: ApiResult<T>) -> Outcome {
    match result {
        Ok(_) => Outcome::Status(200),
        Err(ApiError::Transport(e)) => Outcome::Transport(transport_kind(&e), error_chain(&e)),
        Err(e) => Outcome::Status(e.status().unwrap_or(0)),
    }
}

/// Acquire then release the lock `name`; a failed acquire ends the pair.
async fn lock_pair(client: &Client, name: &str) -> Outcome {
    let acquire = AcquireRequest {
        owner: "loadgen".to_string(),
        ttl_ms: 10_000,
        wait_ms: 0,
    };
    match client.lock_acquire(name, &acquire).await {
        Ok(grant) => outcome(client.lock_release(name, grant.fence).await),
        Err(e) => outcome::<()>(Err(e)),
    }
}

/// Enqueue, claim and ack one job on queue `bench`; a claim that gets no job is a 404.
async fn job_round(client: &Client) -> Outcome {
    let job = EnqueueRequest {
        payload: serde_json::json!({ "n": 1 }),
        delay_ms: None,
        run_at_ms: None,
        priority: 0,
        max_attempts: None,
        backoff_ms: None,
        unique_key: None,
    };
    if let Err(e) = client.enqueue("bench", &job).await {
        return outcome::<()>(Err(e));
    }
    let claim = ClaimRequest {
        worker: "loadgen".to_string(),
        max: 1,
        visibility_ms: None,
        wait_ms: 1000,
        moved: false,
    };
    match client.claim("bench", &claim).await {
        Ok(claimed) => match claimed.jobs.first() {
            Some(job) => outcome(client.ack(&job.id, job.lease).await),
            None => Outcome::Status(404),
        },
        Err(e) => outcome::<()>(Err(e)),
    }
}

/// The value every write sends, in each protocol's encoding. Built once per run.
struct Value {
    raw: &'static [u8],
    /// Base64 of `raw`, as etcd's JSON gateway wants it.
    base64: String,
}

/// One worker's connection to one target.
enum Conn {
    /// stackd: the typed client over the shared keep-alive pool, in which each sequential
    /// worker keeps one connection busy; `name` is the key's name, reused between requests.
    Stackd { client: Client, name: String },
    /// etcd: requests go through the shared client's keep-alive pool too. `lease`: the lock
    /// workload's lease (etcd ties each lock holder to one), granted on first use.
    Etcd {
        client: reqwest::Client,
        target: String,
        lease: Option<String>,
    },
    /// Redis: one TCP connection per worker, opened on first use and after an error.
    Redis {
        addr: String,
        conn: Option<resp::Connection>,
        timeout: Duration,
    },
}

impl Conn {
    fn new(run: &Run, target: &str) -> Conn {
        match run.protocol {
            Protocol::Stackd => {
                let client = Client::with_http(target, run.client.clone());
                let client = match &run.token {
                    Some(t) => client.with_token(t.clone()),
                    None => client,
                };
                let client = if run.workload == Workload::StaleGet {
                    client.stale()
                } else {
                    client
                };
                Conn::Stackd {
                    client,
                    name: String::new(),
                }
            }
            Protocol::Etcd => Conn::Etcd {
                client: run.client.clone(),
                target: target.to_string(),
                lease: None,
            },
            Protocol::Redis => Conn::Redis {
                addr: target.trim_start_matches("redis://").to_string(),
                conn: None,
                timeout: run.timeout,
            },
        }
    }

    async fn call(&mut self, workload: Workload, op: Op, key: u64, value: &Value) -> Outcome {
        match self {
            Conn::Stackd { client, name } => {
                stackd_call(client, name, workload, op, key, value).await
            }
            Conn::Etcd {
                client,
                target,
                lease,
            } if workload == Workload::Lock => etcd_lock_pair(client, target, lease, key).await,
            Conn::Etcd { client, target, .. } => {
                etcd_call(client, target, workload, op, key, value).await
            }
            Conn::Redis {
                addr,
                conn,
                timeout,
            } => redis_call(addr, conn, *timeout, op, key, value).await,
        }
    }
}

/// One stackd operation on key `bench-<key>` (lock `bench-lock-<key>`).
async fn stackd_call(
    client: &Client,
    name: &mut String,
    workload: Workload,
    op: Op,
    key: u64,
    value: &Value,
) -> Outcome {
    use std::fmt::Write;
    name.clear();
    let prefix = if workload == Workload::Lock {
        "bench-lock-"
    } else {
        "bench-"
    };
    let _ = write!(name, "{prefix}{key}");
    match (workload, op) {
        (Workload::Lock, _) => lock_pair(client, name).await,
        (Workload::Jobs, _) => job_round(client).await,
        (Workload::CacheGet, Op::Put) => outcome(
            client
                .cache_set(name, value.raw, &CacheWrite::default())
                .await,
        ),
        (Workload::CacheGet, Op::Get) => outcome(client.cache_get(name).await),
        (_, Op::Put) => outcome(client.kv_put(name, value.raw).await),
        (_, Op::Get) => outcome(client.kv_get(name).await),
    }
}

/// One etcd request through its HTTP/JSON gateway.
async fn etcd_call(
    client: &reqwest::Client,
    target: &str,
    workload: Workload,
    op: Op,
    key: u64,
    value: &Value,
) -> Outcome {
    let key64 = BASE64.encode(format!("bench-{key}"));
    let (path, body) = match op {
        Op::Put => (
            "put",
            format!(r#"{{"key":"{key64}","value":"{}"}}"#, value.base64),
        ),
        Op::Get if workload == Workload::StaleGet => (
            "range",
            format!(r#"{{"key":"{key64}","serializable":true}}"#),
        ),
        Op::Get => ("range", format!(r#"{{"key":"{key64}"}}"#)),
    };
    let req = client
        .post(format!("{target}/v3/kv/{path}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    send(req).await
}

/// Lock then unlock `bench-lock-<key>` through etcd's gateway (`/v3/lock/lock` blocks until
/// the lock is held, `/v3/lock/unlock` deletes the holder's key), under the worker's lease:
/// the counterpart of stackd's acquire and release with a lease. The lease (10 minutes,
/// longer than any run) is granted once per worker and not counted as a pair.
async fn etcd_lock_pair(
    client: &reqwest::Client,
    target: &str,
    lease: &mut Option<String>,
    key: u64,
) -> Outcome {
    let lease_id = match lease {
        Some(id) => id.clone(),
        None => match etcd_json(client, target, "lease/grant", r#"{"TTL":600}"#.into()).await {
            Ok(granted) => match granted["ID"].as_str() {
                Some(id) => lease.insert(id.to_string()).clone(),
                None => return Outcome::Status(502),
            },
            Err(outcome) => return outcome,
        },
    };
    let name = BASE64.encode(format!("bench-lock-{key}"));
    let body = format!(r#"{{"name":"{name}","lease":"{lease_id}"}}"#);
    let held = match etcd_json(client, target, "lock/lock", body).await {
        Ok(held) => held,
        Err(outcome) => return outcome,
    };
    let Some(owner_key) = held["key"].as_str() else {
        return Outcome::Status(502);
    };
    let body = format!(r#"{{"key":"{owner_key}"}}"#);
    match etcd_json(client, target, "lock/unlock", body).await {
        Ok(_) => Outcome::Status(200),
        Err(outcome) => outcome,
    }
}

/// POSTs `body` to etcd's `/v3/<path>` and decodes a 2xx JSON answer; anything else is the
/// outcome to count.
async fn etcd_json(
    client: &reqwest::Client,
    target: &str,
    path: &str,
    body: String,
) -> Result<serde_json::Value, Outcome> {
    let req = client
        .post(format!("{target}/v3/{path}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    let resp = req
        .send()
        .await
        .map_err(|e| Outcome::Transport(transport_kind(&e), error_chain(&e)))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Outcome::Transport(transport_kind(&e), error_chain(&e)))?;
    if !(200..300).contains(&status) {
        return Err(Outcome::Status(status));
    }
    serde_json::from_slice(&bytes).map_err(|_| Outcome::Status(502))
}

/// One Redis command on its worker's connection.
async fn redis_call(
    addr: &str,
    conn: &mut Option<resp::Connection>,
    timeout: Duration,
    op: Op,
    key: u64,
    value: &Value,
) -> Outcome {
    let name = format!("bench-{key}");
    let result = tokio::time::timeout(timeout, async {
        if conn.is_none() {
            *conn = Some(resp::Connection::connect(addr).await?);
        }
        let c = conn.as_mut().expect("just connected");
        match op {
            Op::Put => c.call(&[b"SET", name.as_bytes(), value.raw]).await,
            Op::Get => c.call(&[b"GET", name.as_bytes()]).await,
        }
    })
    .await;
    match result {
        // Mapped onto HTTP statuses so the report reads the same for every protocol.
        Ok(Ok(resp::Reply::Value)) => Outcome::Status(200),
        Ok(Ok(resp::Reply::Nil)) => Outcome::Status(404),
        Ok(Ok(resp::Reply::Error(msg))) => Outcome::Transport("redis", format!("{msg} ({addr})")),
        Ok(Err(e)) => {
            *conn = None;
            let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                "connect"
            } else {
                "other"
            };
            Outcome::Transport(kind, format!("{e} ({addr})"))
        }
        Err(_) => {
            // The reply may still arrive: the connection is out of step, drop it.
            *conn = None;
            Outcome::Transport("timeout", format!("timed out ({addr})"))
        }
    }
}

mod resp_command;

/// Just enough of the Redis protocol (RESP2) for `GET` and `SET`: commands go out as arrays
/// of bulk strings; replies are a simple string, an error, an integer or a bulk string.
mod resp {
    use std::io;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    /// A reply, reduced to what the load generator counts.
    pub enum Reply {
        /// `+OK`, an integer or a bulk string.
        Value,
        /// The nil bulk string (`GET` of a missing key).
        Nil,
        /// An error reply, with its text.
        Error(String),
    }

    pub struct Connection {
        stream: BufReader<TcpStream>,
        out: Vec<u8>,
        line: Vec<u8>,
        body: Vec<u8>,
    }

    impl Connection {
        pub async fn connect(addr: &str) -> io::Result<Connection> {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(Connection {
                stream: BufReader::new(tcp),
                out: Vec::with_capacity(256),
                line: Vec::with_capacity(64),
                body: Vec::new(),
            })
        }

        /// Sends one command and reads its reply.
        pub async fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
            self.out.clear();
            super::resp_command::encode(&mut self.out, args);
            self.stream.get_mut().write_all(&self.out).await?;

            self.line.clear();
            self.stream.read_until(b'\n', &mut self.line).await?;
            let line = self
                .line
                .strip_suffix(b"\r\n")
                .ok_or_else(|| bad("reply line without CRLF"))?;
            let (&kind, rest) = line.split_first().ok_or_else(|| bad("empty reply"))?;
            match kind {
                b'+' | b':' => Ok(Reply::Value),
                b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
                b'$' => {
                    let len: i64 = std::str::from_utf8(rest)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad("bad bulk length"))?;
                    if len < 0 {
                        return Ok(Reply::Nil);
                    }
                    // The body and its trailing CRLF.
                    self.body.resize(len as usize + 2, 0);
                    self.stream.read_exact(&mut self.body).await?;
                    Ok(Reply::Value)
                }
                other => Err(bad(&format!("unexpected reply type {:?}", other as char))),
            }
        }
    }

    fn bad(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_string())
    }
}

/// Shared, read-only configuration of a run.
struct Run {
    client: reqwest::Client,
    protocol: Protocol,
    timeout: Duration,
    targets: Vec<String>,
    workload: Workload,
    keys: u64,
    value: Value,
    /// stackd: the token sent with every request.
    token: Option<String>,
    /// Requests issued before this instant are warmup and not counted.
    measure_start: Instant,
    /// Every worker stops at this instant; requests still in flight are dropped.
    deadline: Instant,
}

/// Pause after a transport error (connection refused, timeout, ...).
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(10);

async fn worker(run: Arc<Run>, id: usize, seed: u64) -> Stats {
    let target = &run.targets[id % run.targets.len()];
    let mut conn = Conn::new(&run, target);
    let deadline = tokio::time::Instant::from_std(run.deadline);
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();

    loop {
        let started = Instant::now();
        if started >= run.deadline {
            break;
        }
        let key = rng.below(run.keys);
        let op = match run.workload {
            Workload::Put | Workload::Lock | Workload::Jobs => Op::Put,
            Workload::Get | Workload::StaleGet | Workload::CacheGet => Op::Get,
            Workload::Mixed if rng.next_u64() & 1 == 0 => Op::Put,
            Workload::Mixed => Op::Get,
        };

        // Bound every loop by the deadline: an unfinished request is not counted.
        let Ok(outcome) =
            tokio::time::timeout_at(deadline, conn.call(run.workload, op, key, &run.value)).await
        else {
            break;
        };
        let elapsed = started.elapsed();
        if let Outcome::Transport(..) = outcome {
            // Back off a little so an unreachable target is not hammered in a
            // busy loop (which would also starve the other workers of CPU).
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + TRANSPORT_BACKOFF))
                .await;
        }
        if started < run.measure_start {
            continue;
        }
        match outcome {
            Outcome::Status(status) => {
                *stats.by_status.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    stats.latencies_us.push(elapsed.as_micros() as u64);
                } else if stats.sample_error.is_none() {
                    stats.sample_error = Some(format!("HTTP {status} from {target}"));
                }
            }
            Outcome::Transport(kind, msg) => {
                *stats.transport_errors.entry(kind).or_default() += 1;
                if stats.sample_error.is_none() {
                    stats.sample_error = Some(format!("{msg} ({target})"));
                }
            }
        }
    }
    stats
}

/// Writes every key once (keys interleaved over `connections` workers), retrying
/// a few times per key; fails if a key cannot be written.
async fn preload(run: Arc<Run>, connections: usize) -> Result<()> {
    const ATTEMPTS: u32 = 3;
    let keys = run.keys;
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    eprintln!("preloading {keys} keys over {connections} connections...");

    // Progress line once a second while the writers run.
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("  preload: {}/{keys}", done.load(Ordering::Relaxed));
            }
        })
    };

    let mut tasks = JoinSet::new();
    for id in 0..connections {
        let run = run.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let target = &run.targets[id % run.targets.len()];
            let mut conn = Conn::new(&run, target);
            for key in (id as u64..keys).step_by(connections) {
                let mut attempt = 1;
                loop {
                    match conn.call(run.workload, Op::Put, key, &run.value).await {
                        Outcome::Status(s) if (200..300).contains(&s) => break,
                        outcome if attempt >= ATTEMPTS => {
                            let why = match outcome {
                                Outcome::Status(s) => format!("HTTP {s}"),
                                Outcome::Transport(_, msg) => msg,
                            };
                            bail!(
                                "preload of key bench-{key} at {target} failed after {ATTEMPTS} attempts: {why}"
                            );
                        }
                        _ => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        });
    }

    let result = async {
        while let Some(res) = tasks.join_next().await {
            res.context("preload task panicked")??;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    progress.abort();
    result?;
    eprintln!(
        "preloaded {keys} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Nearest-rank percentile of a sorted slice, in milliseconds (0 if empty).
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us[idx] as f64 / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `--targets`, trimmed, checked against the protocol.
fn checked_targets(args: &Args) -> Result<Vec<String>> {
    let targets: Vec<String> = args
        .targets
        .iter()
        .map(|t| t.trim().trim_end_matches('/').to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        bail!("--targets must name at least one base URL");
    }
    if !args.workload.supported_by(args.protocol) {
        bail!(
            "workload {} has no {} equivalent",
            args.workload.name(),
            args.protocol.name()
        );
    }
    for t in &targets {
        let ok = match args.protocol {
            Protocol::Stackd | Protocol::Etcd => {
                t.starts_with("http://") || t.starts_with("https://")
            }
            Protocol::Redis => t.starts_with("redis://"),
        };
        if !ok {
            bail!(
                "target {t:?} is not a URL for {} (http://, https:// or redis://)",
                args.protocol.name()
            );
        }
    }
    Ok(targets)
}

/// The run's shared state before its periods are set; builds the one HTTP client and the
/// one body of the run.
fn new_run(args: &Args, targets: Vec<String>) -> Result<Run> {
    let client = reqwest::Client::builder()
        // Each worker keeps its own keep-alive connection; never let the pool evict them.
        .pool_max_idle_per_host(args.connections as usize)
        // Benchmarks target local/cluster addresses; an HTTP(S)_PROXY in the env would skew them.
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .context("building HTTP client")?;

    // One shared body for the whole run, so requests do not copy it.
    let raw: &'static [u8] = Vec::leak(
        (0..args.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
    );
    let value = Value {
        raw,
        base64: BASE64.encode(raw),
    };
    let now = Instant::now();
    Ok(Run {
        client,
        protocol: args.protocol,
        timeout: Duration::from_millis(args.timeout_ms),
        targets,
        workload: args.workload,
        keys: args.keys,
        value,
        token: args.token.clone().filter(|t| !t.is_empty()),
        measure_start: now,
        deadline: now,
    })
}

/// Runs `connections` workers until the run's deadline and merges what they measured.
async fn measure(run: Arc<Run>, connections: usize) -> Result<Stats> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut tasks = JoinSet::new();
    for id in 0..connections {
        tasks.spawn(worker(run.clone(), id, seed.wrapping_add(id as u64)));
    }
    let mut stats = Stats::default();
    while let Some(res) = tasks.join_next().await {
        stats.merge(res.context("worker task panicked")?);
    }
    stats.latencies_us.sort_unstable();
    Ok(stats)
}

/// The figures of a run.
struct Summary {
    ops: u64,
    errors: u64,
    duration_s: f64,
    ops_per_sec: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    /// `status: n` and `kind error: n`.
    responses: Vec<String>,
}

impl Summary {
    /// From the merged stats (latencies sorted) of a measured period of `duration`.
    fn new(stats: &Stats, duration: Duration) -> Summary {
        let ops = stats.latencies_us.len() as u64;
        let duration_s = duration.as_secs_f64();
        let mut responses: Vec<String> = stats
            .by_status
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        responses.extend(
            stats
                .transport_errors
                .iter()
                .map(|(kind, n)| format!("{kind} error: {n}")),
        );
        Summary {
            ops,
            errors: stats.errors(),
            duration_s,
            ops_per_sec: ops as f64 / duration_s,
            p50: percentile_ms(&stats.latencies_us, 50.0),
            p90: percentile_ms(&stats.latencies_us, 90.0),
            p99: percentile_ms(&stats.latencies_us, 99.0),
            max: stats
                .latencies_us
                .last()
                .map_or(0.0, |&us| us as f64 / 1000.0),
            responses,
        }
    }

    /// The human-readable report.
    fn report(&self, args: &Args, targets: &[String]) -> String {
        format!(
            "workload     {protocol} {workload} ({connections} connections, {duration_s:.1} s measured after {warmup} s warmup)\n\
             targets      {targets}\n\
             ops          {ops} ok, {errors} errors\n\
             throughput   {ops_per_sec:.1} ops/s\n\
             latency ms   p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  max {max:.3}\n\
             responses    {responses}",
            protocol = args.protocol.name(),
            workload = args.workload.name(),
            connections = args.connections,
            duration_s = self.duration_s,
            warmup = args.warmup_secs,
            targets = targets.join(", "),
            ops = self.ops,
            errors = self.errors,
            ops_per_sec = self.ops_per_sec,
            p50 = self.p50,
            p90 = self.p90,
            p99 = self.p99,
            max = self.max,
            responses = if self.responses.is_empty() {
                "none".to_string()
            } else {
                self.responses.join(", ")
            },
        )
    }

    /// The `--json` line.
    fn json(&self, args: &Args) -> serde_json::Value {
        serde_json::json!({
            "workload": args.workload.name(),
            "protocol": args.protocol.name(),
            "connections": args.connections as usize,
            "duration_s": self.duration_s,
            "ops": self.ops,
            "errors": self.errors,
            "ops_per_sec": round3(self.ops_per_sec),
            "p50_ms": self.p50,
            "p90_ms": self.p90,
            "p99_ms": self.p99,
            "max_ms": self.max,
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let targets = checked_targets(&args)?;
    let connections = args.connections as usize;
    let mut run = new_run(&args, targets.clone())?;
    if args.workload.needs_preload() {
        let preload_run = Arc::new(run);
        preload(preload_run.clone(), connections).await?;
        run = Arc::into_inner(preload_run).context("preload tasks still hold the run")?;
    }

    let warmup = Duration::from_secs(args.warmup_secs);
    let duration = Duration::from_secs(args.duration_secs);
    let start = Instant::now();
    run.measure_start = start + warmup;
    run.deadline = start + warmup + duration;
    eprintln!(
        "running {} {} with {connections} connections against {} target(s): {}s warmup + {}s measured",
        args.protocol.name(),
        args.workload.name(),
        targets.len(),
        args.warmup_secs,
        args.duration_secs,
    );
    let stats = measure(Arc::new(run), connections).await?;
    let summary = Summary::new(&stats, duration);
    let report = summary.report(&args, &targets);
    if args.json {
        eprintln!("{report}");
        if let Some(e) = &stats.sample_error {
            eprintln!("sample error: {e}");
        }
        println!("{}", summary.json(&args));
    } else {
        println!("{report}");
        if let Some(e) = &stats.sample_error {
            println!("sample error: {e}");
        }
    }
    Ok(())
}
