//! `stackd queue …` and `stackd worker`: job queues from the command line.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::{client, key_path, send_json, Target};

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Add a job; prints its id.
    Enqueue {
        queue: String,
        /// The job's payload, as JSON (default null).
        #[arg(default_value = "null")]
        payload: String,
        /// Run no earlier than this many ms from now.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Run no earlier than this time (ms since the Unix epoch).
        #[arg(long)]
        run_at_ms: Option<u64>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i64,
        /// Claims before the job moves to the dead list.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Base of the exponential retry delay.
        #[arg(long)]
        backoff_ms: Option<u64>,
        /// While a job with this key is queued, answer its id instead of adding another.
        #[arg(long)]
        unique_key: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Claim jobs; prints them as JSON (each with the lease to ack, nack or extend with).
    Claim {
        queue: String,
        #[arg(long)]
        worker: String,
        #[arg(long, default_value_t = 1)]
        max: u32,
        #[arg(long, default_value_t = 30_000)]
        visibility_ms: u64,
        /// Wait up to this long for a job when none is ready.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Mark a claimed job done.
    Ack {
        id: String,
        #[arg(long)]
        lease: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Give a claimed job back: retried after its backoff (or --retry-in-ms), or dead.
    Nack {
        id: String,
        #[arg(long)]
        lease: u64,
        #[arg(long)]
        error: Option<String>,
        #[arg(long)]
        retry_in_ms: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Keep a claimed job invisible to others for longer.
    Extend {
        id: String,
        #[arg(long)]
        lease: u64,
        #[arg(long)]
        visibility_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Show one job.
    Job {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Ready, delayed, in-flight, dead and completed counts (all queues when none is named).
    Stats {
        queue: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List dead jobs with their last error.
    Dead {
        queue: String,
        #[command(flatten)]
        target: Target,
    },
    /// Move dead jobs back to the queue (the given ids, or --all).
    Replay {
        queue: String,
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Enqueue a job at every due time of a cron expression (UTC; 5 fields, or 6 with seconds).
    Schedule {
        queue: String,
        name: String,
        #[arg(long)]
        cron: String,
        #[arg(long, default_value = "null")]
        payload: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a cron schedule.
    Unschedule {
        queue: String,
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// List a queue's cron schedules.
    Schedules {
        queue: String,
        #[command(flatten)]
        target: Target,
    },
}

fn json_arg(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{text:?} is not JSON"))
}

pub async fn run(cmd: QueueCmd) -> anyhow::Result<()> {
    let http = client();
    let q = |name: &str| format!("/v1/queues/{}", key_path(name));
    let v = match cmd {
        QueueCmd::Enqueue {
            queue,
            payload,
            delay_ms,
            run_at_ms,
            priority,
            max_attempts,
            backoff_ms,
            unique_key,
            target,
        } => {
            let mut body = json!({ "payload": json_arg(&payload)?, "priority": priority });
            let fields = [
                ("delay_ms", delay_ms.map(Value::from)),
                ("run_at_ms", run_at_ms.map(Value::from)),
                ("max_attempts", max_attempts.map(Value::from)),
                ("backoff_ms", backoff_ms.map(Value::from)),
                ("unique_key", unique_key.map(Value::from)),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let v = send_json(
                http.post(target.url(&format!("{}/jobs", q(&queue))))
                    .json(&body),
            )
            .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
            return Ok(());
        }
        QueueCmd::Claim {
            queue,
            worker,
            max,
            visibility_ms,
            wait_ms,
            target,
        } => {
            send_json(http.post(target.url(&format!("{}/claim", q(&queue)))).json(&json!({
                "worker": worker, "max": max, "visibility_ms": visibility_ms, "wait_ms": wait_ms,
            })))
            .await?
        }
        QueueCmd::Ack { id, lease, target } => {
            send_json(
                http.post(target.url(&format!("/v1/jobs/{}/ack", key_path(&id))))
                    .json(&json!({ "lease": lease })),
            )
            .await?
        }
        QueueCmd::Nack {
            id,
            lease,
            error,
            retry_in_ms,
            target,
        } => {
            let mut body = json!({ "lease": lease });
            if let Some(e) = error {
                body["error"] = e.into();
            }
            if let Some(r) = retry_in_ms {
                body["retry_in_ms"] = r.into();
            }
            send_json(
                http.post(target.url(&format!("/v1/jobs/{}/nack", key_path(&id))))
                    .json(&body),
            )
            .await?
        }
        QueueCmd::Extend {
            id,
            lease,
            visibility_ms,
            target,
        } => {
            send_json(
                http.post(target.url(&format!("/v1/jobs/{}/extend", key_path(&id))))
                    .json(&json!({ "lease": lease, "visibility_ms": visibility_ms })),
            )
            .await?
        }
        QueueCmd::Job { id, target } => {
            send_json(http.get(target.url(&format!("/v1/jobs/{}", key_path(&id))))).await?
        }
        QueueCmd::Stats { queue, target } => {
            let path = match &queue {
                Some(name) => q(name),
                None => "/v1/queues".to_string(),
            };
            send_json(http.get(target.url(&path))).await?
        }
        QueueCmd::Dead { queue, target } => {
            send_json(http.get(target.url(&format!("{}/dead", q(&queue))))).await?
        }
        QueueCmd::Replay {
            queue,
            ids,
            all,
            target,
        } => {
            let body = if all {
                json!({ "all": true })
            } else {
                json!({ "ids": ids })
            };
            send_json(
                http.post(target.url(&format!("{}/dead/replay", q(&queue))))
                    .json(&body),
            )
            .await?
        }
        QueueCmd::Schedule {
            queue,
            name,
            cron,
            payload,
            target,
        } => {
            send_json(
                http.put(target.url(&format!("{}/schedules/{}", q(&queue), key_path(&name))))
                    .json(&json!({ "cron": cron, "payload": json_arg(&payload)? })),
            )
            .await?
        }
        QueueCmd::Unschedule {
            queue,
            name,
            target,
        } => {
            send_json(
                http.delete(target.url(&format!("{}/schedules/{}", q(&queue), key_path(&name)))),
            )
            .await?
        }
        QueueCmd::Schedules { queue, target } => {
            send_json(http.get(target.url(&format!("{}/schedules", q(&queue))))).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Run a shell command for each job of a queue.
///
/// Each job's payload (JSON) is written to the command's stdin, and STACKD_JOB_ID,
/// STACKD_JOB_ATTEMPT and STACKD_QUEUE are set. Exit status 0 acks the job; any other status
/// nacks it (it is retried after its backoff, or moves to the dead list). While a command
/// runs, its job's visibility is extended every third of --visibility-ms. Ctrl-C or SIGTERM
/// stops claiming and waits for running commands.
#[derive(Args, Debug)]
pub struct WorkerCmd {
    queue: String,
    /// Worker name, shown on claimed jobs.
    #[arg(long, default_value = "stackd-worker")]
    name: String,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    #[arg(long, default_value_t = 30_000)]
    visibility_ms: u64,
    #[command(flatten)]
    target: Target,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true)]
    command: Vec<String>,
}

pub async fn worker(cmd: WorkerCmd) -> anyhow::Result<()> {
    let http = client();
    let cmd = Arc::new(cmd);
    let slots = Arc::new(Semaphore::new(cmd.concurrency.max(1) as usize));
    let claim_url = cmd
        .target
        .url(&format!("/v1/queues/{}/claim", key_path(&cmd.queue)));
    eprintln!(
        "stackd worker: {} on queue {} runs {:?}",
        cmd.name, cmd.queue, cmd.command
    );
    let mut stop = std::pin::pin!(stop_signal());
    loop {
        // Claim only as many jobs as there are free slots.
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                _ = &mut stop => break,
                p = slots.clone().acquire_owned() => drop(p),
            }
            continue;
        }
        let claim = send_json(http.post(&claim_url).json(&json!({
            "worker": cmd.name, "max": free, "visibility_ms": cmd.visibility_ms, "wait_ms": 5000,
        })));
        let v = tokio::select! {
            _ = &mut stop => break,
            v = claim => v,
        };
        let jobs = match v {
            Ok(v) => v["jobs"].as_array().cloned().unwrap_or_default(),
            Err(e) => {
                eprintln!("stackd worker: claim failed: {e:#}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for job in jobs {
            let permit = slots.clone().acquire_owned().await?;
            let (http, cmd) = (http.clone(), cmd.clone());
            tokio::spawn(async move {
                if let Err(e) = run_job(&http, &cmd, &job).await {
                    eprintln!("stackd worker: job {}: {e:#}", job["id"]);
                }
                drop(permit);
            });
        }
    }
    eprintln!("stackd worker: stopping; waiting for running jobs");
    let _ = slots.acquire_many(cmd.concurrency.max(1)).await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_job(http: &reqwest::Client, cmd: &WorkerCmd, job: &Value) -> anyhow::Result<()> {
    let id = job["id"].as_str().context("job without id")?;
    let lease = job["lease"].as_u64().context("job without lease")?;
    let mut child = tokio::process::Command::new(&cmd.command[0])
        .args(&cmd.command[1..])
        .env("STACKD_JOB_ID", id)
        .env("STACKD_JOB_ATTEMPT", job["attempt"].to_string())
        .env("STACKD_QUEUE", &cmd.queue)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.command[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(job["payload"].to_string().as_bytes()).await;
    }
    let job_url = |op: &str| cmd.target.url(&format!("/v1/jobs/{}/{op}", key_path(id)));
    let mut every = tokio::time::interval(Duration::from_millis((cmd.visibility_ms / 3).max(1)));
    every.tick().await;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s?,
            _ = every.tick() => {
                let r = send_json(http.post(job_url("extend"))
                    .json(&json!({ "lease": lease, "visibility_ms": cmd.visibility_ms }))).await;
                if let Err(e) = r {
                    eprintln!("stackd worker: job {id}: cannot extend ({e:#}); it may run again elsewhere");
                }
            }
        }
    };
    if status.success() {
        send_json(http.post(job_url("ack")).json(&json!({ "lease": lease }))).await?;
    } else {
        send_json(
            http.post(job_url("nack"))
                .json(&json!({ "lease": lease, "error": format!("command exited with {status}") })),
        )
        .await?;
    }
    Ok(())
}
