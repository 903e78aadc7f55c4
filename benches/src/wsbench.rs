//! `wsbench`: WebSocket fan-out benchmark. Connects `--subscribers` WebSocket clients spread
//! round-robin over `--targets`, all subscribed to one channel, while `--publishers` HTTP loops
//! publish events carrying their send time. Reports publishes per second, delivered messages
//! per second (all subscribers together) and the publish-to-delivery latency (p50/p99).
//!
//! ```text
//! wsbench --targets http://127.0.0.1:7001,http://127.0.0.2:7001,http://127.0.0.3:7001 \
//!         --subscribers 1000 --publishers 4 --duration-secs 10
//! ```
//!
//! Latency is measured on one machine's wall clock (publisher and subscribers share it), from
//! just before the publish request is sent to the moment a subscriber reads the event. Only
//! events published in the measured period count; a few seconds are allowed for stragglers.
//!
//! # Layout
//! - `Args`: what to run.
//! - `Hist` (`hist.rs`): a log-bucketed latency histogram (2% resolution) kept per
//!   subscriber, merged.
//! - `subscriber`, `publisher`: the clients; a subscriber speaks the server's own message
//!   types ([`node::api::ws_protocol`]).
//! - `main` and the steps it runs in turn (`start_subscribers`, `wait_subscribed`,
//!   `publish_all`, `collect`), then `report`.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use node::api::ws_protocol::{ClientMessage, Event, Request, ServerMessage};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

mod hist;
use hist::{now_us, Hist};

/// WebSocket fan-out benchmark for a stackd cluster.
#[derive(Debug, Parser)]
#[command(name = "wsbench", version)]
struct Args {
    /// Comma-separated base URLs of the nodes' HTTP APIs.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:7001")]
    targets: Vec<String>,
    /// WebSocket subscribers, spread round-robin over the targets.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Concurrent HTTP publish loops (round-robin over the targets).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Pause between two publishes of one loop, in ms (0: as fast as answers come).
    #[arg(long, default_value_t = 0)]
    publish_interval_ms: u64,
    /// Measured period, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// The channel.
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Print one JSON line instead of a report.
    #[arg(long)]
    json: bool,
    /// A token secret, sent as `Authorization: Bearer` with every upgrade and publish (for a
    /// cluster with access control on).
    #[arg(long, env = "STACKD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The publish time carried in an event's data: `{"t":<µs>}`.
#[derive(Deserialize)]
struct Sent {
    t: u64,
}

/// The publish time of an event frame. Read straight into an [`Event`], cheaper than a whole
/// [`ServerMessage`]: a subscriber reads one per delivered message.
fn sent_at(text: &str) -> Option<u64> {
    let event: Event = serde_json::from_str(text).ok()?;
    serde_json::from_str::<Sent>(event.data.get())
        .ok()
        .map(|s| s.t)
}

/// Most bytes one read from a socket takes.
const READ_BUFFER_BYTES: usize = 8 * 1024;

struct Window {
    start_us: u64,
    end_us: u64,
}

async fn subscriber(
    base: String,
    token: Option<String>,
    channel: String,
    window: Arc<Window>,
    ready: Arc<AtomicU64>,
    stop_at_us: u64,
) -> Result<(Hist, u64)> {
    let url = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));
    // The codec zeroes `read_buffer_size` bytes before each read: the 128 KiB default would
    // cost the client more than the events it reads.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let mut request = url.as_str().into_client_request()?;
    if let Some(t) = &token {
        let bearer = format!("Bearer {t}").parse()?;
        request.headers_mut().insert(AUTHORIZATION, bearer);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let subscribe = ClientMessage::Subscribe {
        channel,
        since: None,
        user: None,
    };
    let sub = serde_json::to_string(&Request::new(1, subscribe))?;
    ws.send(Message::Text(sub.into())).await?;
    let mut hist = Hist::new();
    let mut late = 0;
    let mut subscribed = false;
    let stop = tokio::time::sleep(Duration::from_micros(stop_at_us.saturating_sub(now_us())));
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            _ = &mut stop => break,
            m = ws.next() => match m {
                None => bail!("connection to {base} ended"),
                Some(m) => m?,
            },
        };
        let Message::Text(text) = msg else { continue };
        if !subscribed {
            match ServerMessage::parse(text.as_str()) {
                Ok(ServerMessage::Reply(_)) => {
                    subscribed = true;
                    ready.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(ServerMessage::Refusal(_)) => bail!("subscribe refused: {}", text.as_str()),
                _ => {}
            }
        }
        let Some(t) = sent_at(text.as_str()) else {
            continue;
        };
        if t >= window.start_us && t < window.end_us {
            let now = now_us();
            hist.record(now.saturating_sub(t));
            if now > window.end_us + 1_000_000 {
                late += 1;
            }
        }
    }
    Ok((hist, late))
}

async fn publisher(
    http: reqwest::Client,
    targets: Vec<String>,
    offset: usize,
    channel: String,
    window: Arc<Window>,
    interval: Duration,
) -> (u64, u64) {
    let mut measured = 0;
    let mut errors = 0;
    let mut i = offset;
    loop {
        let t = now_us();
        if t >= window.end_us {
            break;
        }
        let base = &targets[i % targets.len()];
        i += 1;
        let body = format!(r#"{{"data":{{"t":{t}}}}}"#);
        let ok = http
            .post(format!("{base}/v1/channels/{channel}/publish"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if !ok {
            errors += 1;
        } else if t >= window.start_us {
            measured += 1;
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    (measured, errors)
}

/// What the run measured.
struct Outcome {
    published: u64,
    errors: u64,
    hist: Hist,
    late: u64,
    failed: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    // An empty token (`STACKD_TOKEN=`) is none, as for loadgen.
    args.token = args.token.filter(|t| !t.is_empty());
    let ready = Arc::new(AtomicU64::new(0));
    // A simple fixed schedule keeps the code small: everyone subscribes within the first
    // `connect_secs`, warm-up follows, then the measured period.
    let connect_secs = 10 + args.subscribers as u64 / 200;
    let t0 = now_us();
    let window = Arc::new(Window {
        start_us: t0 + (connect_secs + args.warmup_secs) * 1_000_000,
        end_us: t0 + (connect_secs + args.warmup_secs + args.duration_secs) * 1_000_000,
    });
    let mut subs = start_subscribers(&args, &window, &ready).await;
    wait_subscribed(&args, &mut subs, &ready, t0, connect_secs).await?;
    // Publishing starts with the warm-up.
    let warm_start = window.start_us - args.warmup_secs * 1_000_000;
    tokio::time::sleep(Duration::from_micros(warm_start.saturating_sub(now_us()))).await;
    let (published, errors) = publish_all(&args, &window).await?;
    let (hist, late, failed) = collect(subs).await?;
    report(
        &args,
        &Outcome {
            published,
            errors,
            hist,
            late,
            failed,
        },
    );
    Ok(())
}

type Subscribers = JoinSet<Result<(Hist, u64)>>;

/// Connects the subscribers, spreading the handshakes a little.
async fn start_subscribers(
    args: &Args,
    window: &Arc<Window>,
    ready: &Arc<AtomicU64>,
) -> Subscribers {
    let stop_at = window.end_us + 3_000_000;
    let mut subs = JoinSet::new();
    for i in 0..args.subscribers {
        let base = args.targets[i % args.targets.len()].clone();
        subs.spawn(subscriber(
            base,
            args.token.clone(),
            args.channel.clone(),
            window.clone(),
            ready.clone(),
            stop_at,
        ));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    subs
}

/// Waits until every subscriber is subscribed; fails after `connect_secs` from `t0`.
/// A subscriber that fails meanwhile (refused, unreachable) ends the wait with its error.
async fn wait_subscribed(
    args: &Args,
    subs: &mut Subscribers,
    ready: &AtomicU64,
    t0: u64,
    connect_secs: u64,
) -> Result<()> {
    while (ready.load(Ordering::Relaxed) as usize) < args.subscribers {
        if let Some(done) = subs.try_join_next() {
            done?.context("a subscriber failed before every subscriber was subscribed")?;
        }
        if now_us() > t0 + connect_secs * 1_000_000 {
            bail!(
                "only {} of {} subscribers were subscribed after {connect_secs} s",
                ready.load(Ordering::Relaxed),
                args.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the publish loops to the end of the window: (publishes measured, errors).
async fn publish_all(args: &Args, window: &Arc<Window>) -> Result<(u64, u64)> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = &args.token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse()?,
        );
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut pubs = JoinSet::new();
    for p in 0..args.publishers {
        pubs.spawn(publisher(
            http.clone(),
            args.targets.clone(),
            p,
            args.channel.clone(),
            window.clone(),
            Duration::from_millis(args.publish_interval_ms),
        ));
    }
    let (mut published, mut errors) = (0u64, 0u64);
    while let Some(r) = pubs.join_next().await {
        let (m, e) = r?;
        published += m;
        errors += e;
    }
    Ok((published, errors))
}

/// Merges the subscribers' histograms: (histogram, late deliveries, failed subscribers).
async fn collect(mut subs: Subscribers) -> Result<(Hist, u64, u64)> {
    let mut hist = Hist::new();
    let mut late = 0;
    let mut failed = 0;
    while let Some(r) = subs.join_next().await {
        match r? {
            Ok((h, l)) => {
                hist.merge(&h);
                late += l;
            }
            Err(e) => {
                failed += 1;
                eprintln!("subscriber failed: {e:#}");
            }
        }
    }
    Ok((hist, late, failed))
}

/// Prints the report (`--json`: one JSON line); `benches/ws.sh` and the docs read it.
fn report(args: &Args, o: &Outcome) {
    let secs = args.duration_secs as f64;
    let delivered = o.hist.count();
    let expected = o.published * (args.subscribers as u64 - o.failed);
    if args.json {
        let out = serde_json::json!({
            "subscribers": args.subscribers,
            "nodes": args.targets.len(),
            "publishers": args.publishers,
            "publishes_per_sec": o.published as f64 / secs,
            "delivered_per_sec": delivered as f64 / secs,
            "delivered": delivered,
            "expected": expected,
            "late_over_1s": o.late,
            "failed_subscribers": o.failed,
            "publish_errors": o.errors,
            // The keys `benches/compare.sh` reads: delivered messages as its ops.
            "ops_per_sec": delivered as f64 / secs,
            "errors": o.errors + o.failed,
            "p50_ms": o.hist.quantile_ms(0.50),
            "p99_ms": o.hist.quantile_ms(0.99),
            "max_bucket_ms": o.hist.quantile_ms(1.0),
        });
        println!("{out}");
    } else {
        println!(
            "{} subscribers on {} nodes, {} publishers, {} s measured\n\
             publishes/s {:.0}  delivered msgs/s {:.0}  ({} of {} expected)\n\
             publish-to-delivery p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  publish errors {}",
            args.subscribers,
            args.targets.len(),
            args.publishers,
            args.duration_secs,
            o.published as f64 / secs,
            delivered as f64 / secs,
            delivered,
            expected,
            o.hist.quantile_ms(0.5),
            o.hist.quantile_ms(0.99),
            o.hist.quantile_ms(1.0),
            o.errors
        );
    }
}
