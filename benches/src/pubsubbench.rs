//! `pubsubbench`: Redis pub/sub fan-out benchmark, for stackd's RESP listener and Redis alike.
//! Connects `--subscribers` RESP clients spread round-robin over `--targets`, all subscribed to
//! one channel, while `--publishers` loops `PUBLISH` messages carrying their send time through
//! `--publish-to`. Reports delivered messages per second (all subscribers together) and the
//! publish-to-delivery latency (p50/p99); the JSON line has `loadgen`'s fields, with
//! `ops_per_sec` the delivered messages per second.
//!
//! ```text
//! pubsubbench --targets 127.0.0.1:6379,127.0.0.2:6379 --publish-to 127.0.0.1:6379 \
//!             --subscribers 100 --publishers 4 --duration-secs 10 --password "$TOKEN"
//! ```
//!
//! Only messages published in the measured period count; a few seconds are allowed for
//! stragglers. Latency is measured on this machine's wall clock.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod hist;
use hist::{now_us, Hist};

mod resp_command;

/// Redis pub/sub fan-out benchmark.
#[derive(Debug, Parser)]
#[command(name = "pubsubbench", version)]
struct Args {
    /// Comma-separated HOST:PORT of the servers the subscribers connect to (round-robin).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:6379")]
    targets: Vec<String>,
    /// HOST:PORT the publishers connect to.
    #[arg(long, default_value = "127.0.0.1:6379")]
    publish_to: String,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Concurrent publish loops, each on its own connection, one PUBLISH at a time.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Sent with AUTH on every connection (a stackd token).
    #[arg(long, env = "PUBSUB_PASSWORD")]
    password: Option<String>,
    /// Print one JSON line instead of a report.
    #[arg(long)]
    json: bool,
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    resp_command::encode(&mut out, args);
    out
}

/// One reply, flattened: its bulk strings and integers as text, in order.
async fn reply(io: &mut BufReader<TcpStream>, out: &mut Vec<Vec<u8>>) -> Result<()> {
    let mut pending = 1usize;
    let mut line = Vec::new();
    while pending > 0 {
        pending -= 1;
        line.clear();
        if io.read_until(b'\n', &mut line).await? == 0 {
            bail!("connection closed");
        }
        let text = std::str::from_utf8(&line)?.trim_end();
        let (kind, rest) = text.split_at(1);
        match kind {
            "*" | ">" => pending += rest.parse::<usize>()?,
            "$" => {
                let mut b = vec![0; rest.parse::<usize>()? + 2];
                io.read_exact(&mut b).await?;
                b.truncate(b.len() - 2);
                out.push(b);
            }
            ":" | "+" => out.push(rest.as_bytes().to_vec()),
            "-" => bail!("server error: {rest}"),
            other => bail!("unexpected reply type {other:?}"),
        }
    }
    Ok(())
}

async fn connect(addr: &str, password: Option<&str>) -> Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let mut io = BufReader::new(s);
    if let Some(p) = password {
        io.get_mut()
            .write_all(&command(&[b"AUTH", p.as_bytes()]))
            .await?;
        reply(&mut io, &mut Vec::new()).await?;
    }
    Ok(io)
}

/// Reads messages until `done`; records the latency of those sent in `[start, end)`.
async fn subscriber(
    addr: String,
    args: Arc<Args>,
    ready: Arc<AtomicU64>,
    window: (u64, u64),
    done: Arc<AtomicBool>,
) -> Result<(Hist, u64)> {
    let mut io = connect(&addr, args.password.as_deref()).await?;
    io.get_mut()
        .write_all(&command(&[b"SUBSCRIBE", args.channel.as_bytes()]))
        .await?;
    let mut parts = Vec::new();
    reply(&mut io, &mut parts).await?;
    ready.fetch_add(1, Ordering::SeqCst);
    let (mut hist, mut counted) = (Hist::new(), 0u64);
    while !done.load(Ordering::Relaxed) {
        parts.clear();
        match tokio::time::timeout(Duration::from_millis(200), reply(&mut io, &mut parts)).await {
            Err(_) => continue,
            Ok(r) => r?,
        }
        let sent: Option<u64> = parts
            .last()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|t| t.parse().ok());
        if let Some(t) = sent.filter(|t| (window.0..window.1).contains(t)) {
            hist.record(now_us().saturating_sub(t));
            counted += 1;
        }
    }
    Ok((hist, counted))
}

/// Publishes until `end_us`; answers how many publishes were answered.
async fn publisher(args: Arc<Args>, end_us: u64) -> Result<u64> {
    let mut io = connect(&args.publish_to, args.password.as_deref()).await?;
    let mut n = 0;
    let mut parts = Vec::new();
    while now_us() < end_us {
        let t = now_us().to_string();
        io.get_mut()
            .write_all(&command(&[
                b"PUBLISH",
                args.channel.as_bytes(),
                t.as_bytes(),
            ]))
            .await?;
        parts.clear();
        reply(&mut io, &mut parts).await?;
        n += 1;
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let ready = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = now_us() + 5_000_000 + args.warmup_secs * 1_000_000;
    let end = start + args.duration_secs * 1_000_000;
    let mut subs = tokio::task::JoinSet::new();
    for i in 0..args.subscribers {
        let addr = args.targets[i % args.targets.len()].clone();
        subs.spawn(subscriber(
            addr,
            args.clone(),
            ready.clone(),
            (start, end),
            done.clone(),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ready.load(Ordering::SeqCst) < args.subscribers as u64 {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "only {} subscribers ready after 5 s",
                ready.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pubs = tokio::task::JoinSet::new();
    for _ in 0..args.publishers {
        pubs.spawn(publisher(args.clone(), end));
    }
    let mut published = 0;
    while let Some(r) = pubs.join_next().await {
        published += r??;
    }
    // Stragglers: messages in flight when the publishers stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::SeqCst);
    let (mut hist, mut delivered) = (Hist::new(), 0u64);
    while let Some(r) = subs.join_next().await {
        let (h, n) = r??;
        hist.merge(&h);
        delivered += n;
    }
    let secs = args.duration_secs as f64;
    let (p50, p99) = (hist.quantile_ms(0.5), hist.quantile_ms(0.99));
    if args.json {
        println!(
            "{}",
            serde_json::json!({"ops_per_sec": delivered as f64 / secs, "p50_ms": p50,
                "p99_ms": p99, "errors": 0, "published": published})
        );
    } else {
        println!(
            "{} subscribers, {} publishers: {:.0} delivered msgs/s (p50 {p50:.2} ms, p99 \
             {p99:.2} ms); {published} publishes in {:.0} s with warm-up",
            args.subscribers,
            args.publishers,
            delivered as f64 / secs,
            secs + args.warmup_secs as f64 + 5.0
        );
    }
    Ok(())
}
