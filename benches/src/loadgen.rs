//! `loadgen`: an HTTP load generator for a stackd cluster.
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
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use tokio::task::JoinSet;

/// HTTP load generator for a stackd cluster.
///
/// Spreads `--connections` workers round-robin over `--targets`; each worker
/// issues one request at a time until the deadline. Requests issued during the
/// warmup are not counted. A non-2xx response or a transport error counts as
/// an error and is excluded from the latency statistics.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Comma-separated base URLs of the nodes' HTTP APIs.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// `PUT /v1/kv/bench-<n>` with a `--value-size` body.
    Put,
    /// `GET /v1/kv/bench-<n>` (linearizable read); every key is preloaded first.
    Get,
    /// `GET /v1/kv/bench-<n>?consistency=stale`; every key is preloaded first.
    StaleGet,
    /// 50% put, 50% get; every key is preloaded first.
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::StaleGet => "stale-get",
            Workload::Mixed => "mixed",
        }
    }

    /// Workloads that read keys need them to exist, or every GET is a 404.
    fn needs_preload(self) -> bool {
        self != Workload::Put
    }
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

fn key_url(target: &str, key: u64, workload: Workload) -> String {
    match workload {
        Workload::StaleGet => format!("{target}/v1/kv/bench-{key}?consistency=stale"),
        _ => format!("{target}/v1/kv/bench-{key}"),
    }
}

/// Sends one request and reads the whole body (so the connection can be reused).
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

/// Shared, read-only configuration of a run.
struct Run {
    client: reqwest::Client,
    targets: Vec<String>,
    workload: Workload,
    keys: u64,
    value: &'static [u8],
    /// Requests issued before this instant are warmup and not counted.
    measure_start: Instant,
    /// Every worker stops at this instant; requests still in flight are dropped.
    deadline: Instant,
}

/// Pause after a transport error (connection refused, timeout, ...).
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(10);

async fn worker(run: Arc<Run>, id: usize, seed: u64) -> Stats {
    let target = &run.targets[id % run.targets.len()];
    let deadline = tokio::time::Instant::from_std(run.deadline);
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();

    loop {
        let started = Instant::now();
        if started >= run.deadline {
            break;
        }
        let key = rng.below(run.keys);
        let put = match run.workload {
            Workload::Put => true,
            Workload::Get | Workload::StaleGet => false,
            Workload::Mixed => rng.next_u64() & 1 == 0,
        };
        let url = key_url(target, key, run.workload);
        let req = if put {
            run.client.put(url).body(run.value)
        } else {
            run.client.get(url)
        };

        // Bound every loop by the deadline: an unfinished request is not counted.
        let Ok(outcome) = tokio::time::timeout_at(deadline, send(req)).await else {
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

/// PUTs every key once (keys interleaved over `connections` workers), retrying
/// a few times per key; fails if a key cannot be written.
async fn preload(
    client: &reqwest::Client,
    targets: &[String],
    connections: usize,
    keys: u64,
    value: &'static [u8],
) -> Result<()> {
    const ATTEMPTS: u32 = 3;
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
        let client = client.clone();
        let target = targets[id % targets.len()].clone();
        let done = done.clone();
        tasks.spawn(async move {
            for key in (id as u64..keys).step_by(connections) {
                let url = key_url(&target, key, Workload::Put);
                let mut attempt = 1;
                loop {
                    match send(client.put(&url).body(value)).await {
                        Outcome::Status(s) if (200..300).contains(&s) => break,
                        outcome if attempt >= ATTEMPTS => {
                            let why = match outcome {
                                Outcome::Status(s) => format!("HTTP {s}"),
                                Outcome::Transport(_, msg) => msg,
                            };
                            bail!("preload PUT {url} failed after {ATTEMPTS} attempts: {why}");
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

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();

    let targets: Vec<String> = args
        .targets
        .iter()
        .map(|t| t.trim().trim_end_matches('/').to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        bail!("--targets must name at least one base URL");
    }
    for t in &targets {
        if !(t.starts_with("http://") || t.starts_with("https://")) {
            bail!("target {t:?} is not an http:// or https:// URL");
        }
    }
    let connections = args.connections as usize;

    let client = reqwest::Client::builder()
        // Each worker keeps its own keep-alive connection; never let the pool evict them.
        .pool_max_idle_per_host(connections)
        // Benchmarks target local/cluster addresses; an HTTP(S)_PROXY in the env would skew them.
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .context("building HTTP client")?;

    // One shared body for the whole run, so requests do not copy it.
    let value: &'static [u8] = Vec::leak(
        (0..args.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
    );

    if args.workload.needs_preload() {
        preload(&client, &targets, connections, args.keys, value).await?;
    }

    let warmup = Duration::from_secs(args.warmup_secs);
    let duration = Duration::from_secs(args.duration_secs);
    let start = Instant::now();
    let run = Arc::new(Run {
        client,
        targets: targets.clone(),
        workload: args.workload,
        keys: args.keys,
        value,
        measure_start: start + warmup,
        deadline: start + warmup + duration,
    });
    eprintln!(
        "running {} with {connections} connections against {} target(s): {}s warmup + {}s measured",
        args.workload.name(),
        targets.len(),
        args.warmup_secs,
        args.duration_secs,
    );

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
    let ops = stats.latencies_us.len() as u64;
    let errors = stats.errors();
    let duration_s = duration.as_secs_f64();
    let ops_per_sec = ops as f64 / duration_s;
    let p50 = percentile_ms(&stats.latencies_us, 50.0);
    let p90 = percentile_ms(&stats.latencies_us, 90.0);
    let p99 = percentile_ms(&stats.latencies_us, 99.0);
    let max = stats
        .latencies_us
        .last()
        .map_or(0.0, |&us| us as f64 / 1000.0);

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
    let report = format!(
        "workload     {workload} ({connections} connections, {duration_s:.1} s measured after {warmup} s warmup)\n\
         targets      {targets}\n\
         ops          {ops} ok, {errors} errors\n\
         throughput   {ops_per_sec:.1} ops/s\n\
         latency ms   p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  max {max:.3}\n\
         responses    {responses}",
        workload = args.workload.name(),
        warmup = args.warmup_secs,
        targets = targets.join(", "),
        responses = if responses.is_empty() {
            "none".to_string()
        } else {
            responses.join(", ")
        },
    );

    if args.json {
        eprintln!("{report}");
        if let Some(e) = &stats.sample_error {
            eprintln!("sample error: {e}");
        }
        let line = serde_json::json!({
            "workload": args.workload.name(),
            "connections": connections,
            "duration_s": duration_s,
            "ops": ops,
            "errors": errors,
            "ops_per_sec": round3(ops_per_sec),
            "p50_ms": p50,
            "p90_ms": p90,
            "p99_ms": p99,
            "max_ms": max,
        });
        println!("{line}");
    } else {
        println!("{report}");
        if let Some(e) = &stats.sample_error {
            println!("sample error: {e}");
        }
    }
    Ok(())
}
