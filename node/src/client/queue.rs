//! `stackd queue …` and `stackd worker`: job queues from the command line.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::{print_json, Target};
use crate::api::client::Client;
use crate::api::model::{
    ClaimRequest, ClaimedJob, EnqueueRequest, NackRequest, ReplayRequest, ScheduleRequest,
};

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
    /// Delete an idle queue (no jobs, no schedules), so it no longer counts against
    /// limits.max_queues.
    Delete {
        queue: String,
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
    match cmd {
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
            let req = EnqueueRequest {
                payload: json_arg(&payload)?,
                delay_ms,
                run_at_ms,
                priority,
                max_attempts,
                backoff_ms,
                unique_key,
            };
            outln!("{}", target.client()?.enqueue(&queue, &req).await?.id);
            Ok(())
        }
        QueueCmd::Claim {
            queue,
            worker,
            max,
            visibility_ms,
            wait_ms,
            target,
        } => {
            let req = ClaimRequest {
                worker,
                max,
                visibility_ms: Some(visibility_ms),
                wait_ms,
                moved: false,
            };
            print_json(&target.client()?.claim(&queue, &req).await?)
        }
        cmd => run_job_op(cmd).await,
    }
}

/// The commands on one job: ack, nack, extend, show.
async fn run_job_op(cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::Ack { id, lease, target } => print_json(&target.client()?.ack(&id, lease).await?),
        QueueCmd::Nack {
            id,
            lease,
            error,
            retry_in_ms,
            target,
        } => {
            let req = NackRequest {
                lease,
                error,
                retry_in_ms,
            };
            print_json(&target.client()?.nack(&id, &req).await?)
        }
        QueueCmd::Extend {
            id,
            lease,
            visibility_ms,
            target,
        } => print_json(&target.client()?.extend(&id, lease, visibility_ms).await?),
        QueueCmd::Job { id, target } => print_json(&target.client()?.job(&id).await?),
        cmd => run_queue_op(cmd).await,
    }
}

/// The commands on a whole queue: stats, dead letters, schedules.
async fn run_queue_op(cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::Stats { queue, target } => match queue {
            Some(name) => print_json(&target.client()?.queue_stats(&name).await?),
            None => print_json(&target.client()?.queues().await?),
        },
        QueueCmd::Dead { queue, target } => print_json(&target.client()?.dead(&queue, None).await?),
        QueueCmd::Replay {
            queue,
            ids,
            all,
            target,
        } => {
            let req = if all {
                ReplayRequest { ids: None, all }
            } else {
                ReplayRequest {
                    ids: Some(ids),
                    all,
                }
            };
            print_json(&target.client()?.replay(&queue, &req).await?)
        }
        QueueCmd::Schedule {
            queue,
            name,
            cron,
            payload,
            target,
        } => {
            let req = ScheduleRequest {
                cron,
                payload: json_arg(&payload)?,
                priority: 0,
                max_attempts: None,
            };
            print_json(&target.client()?.schedule_set(&queue, &name, &req).await?)
        }
        QueueCmd::Unschedule {
            queue,
            name,
            target,
        } => print_json(&target.client()?.schedule_delete(&queue, &name).await?),
        QueueCmd::Delete { queue, target } => {
            print_json(&target.client()?.queue_delete(&queue).await?)
        }
        QueueCmd::Schedules { queue, target } => {
            print_json(&target.client()?.schedules(&queue).await?)
        }
        QueueCmd::Enqueue { .. }
        | QueueCmd::Claim { .. }
        | QueueCmd::Ack { .. }
        | QueueCmd::Nack { .. }
        | QueueCmd::Extend { .. }
        | QueueCmd::Job { .. } => unreachable!("dispatched by run"),
    }
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
    // Long-polls go to the least loaded member; a busy one may send them elsewhere.
    let mut client = cmd.target.client()?.least_loaded().await;
    let mut moved = false;
    let cmd = Arc::new(cmd);
    let slots = Arc::new(Semaphore::new(cmd.concurrency.max(1) as usize));
    let jobs_running = TaskTracker::new();
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
        let req = ClaimRequest {
            worker: cmd.name.clone(),
            max: free as u32,
            visibility_ms: Some(cmd.visibility_ms),
            wait_ms: 5000,
            moved,
        };
        let claimed = tokio::select! {
            _ = &mut stop => break,
            c = client.claim(&cmd.queue, &req) => c,
        };
        let jobs = match claimed {
            Ok(c) => c.jobs,
            Err(e) if e.detail().and_then(|d| d.reason.as_deref()) == Some("moved") => {
                let to = e.detail().and_then(|d| d.more.get("api_addr")?.as_str());
                if let Some(addr) = to.map(str::to_string) {
                    eprintln!(
                        "stackd worker: {} is busy; claiming from {addr}",
                        client.base()
                    );
                    client = client.at(&addr);
                    moved = true;
                }
                continue;
            }
            Err(e) => {
                eprintln!("stackd worker: claim failed: {e:#}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for job in jobs {
            let permit = slots.clone().acquire_owned().await?;
            let (client, cmd) = (client.clone(), cmd.clone());
            jobs_running.spawn(async move {
                if let Err(e) = run_job(&client, &cmd, &job).await {
                    eprintln!("stackd worker: job {:?}: {e:#}", job.id);
                }
                drop(permit);
            });
        }
    }
    eprintln!("stackd worker: stopping; waiting for running jobs");
    jobs_running.close();
    jobs_running.wait().await;
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

async fn run_job(client: &Client, cmd: &WorkerCmd, job: &ClaimedJob) -> anyhow::Result<()> {
    let id = job.id.as_str();
    let mut child = tokio::process::Command::new(&cmd.command[0])
        .args(&cmd.command[1..])
        .env("STACKD_JOB_ID", id)
        .env("STACKD_JOB_ATTEMPT", job.attempt.to_string())
        .env("STACKD_QUEUE", &cmd.queue)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.command[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(job.payload.to_string().as_bytes()).await;
    }
    let mut every = tokio::time::interval(Duration::from_millis((cmd.visibility_ms / 3).max(1)));
    every.tick().await;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s?,
            _ = every.tick() => {
                if let Err(e) = client.extend(id, job.lease, cmd.visibility_ms).await {
                    eprintln!("stackd worker: job {id}: cannot extend ({e:#}); it may run again elsewhere");
                }
            }
        }
    };
    if status.success() {
        client.ack(id, job.lease).await?;
    } else {
        let req = NackRequest {
            lease: job.lease,
            error: Some(format!("command exited with {status}")),
            retry_in_ms: None,
        };
        client.nack(id, &req).await?;
    }
    Ok(())
}
