//! The audit log: security events, each with its actor (a token's accessor id, a JWT's
//! `jwt:<provider>:<sub>`, or `anyone`), source address, node and time, written to the
//! structured log (target `audit`) and to a replicated stream, the reserved channel
//! [`AUDIT_CHANNEL`]: read with `GET /v1/audit`, live by subscribing to it on the WebSocket,
//! both with `read` on `acl`.
//!
//! Events are queued ([`AuditLog::record`]) and proposed by one task per node, each under an
//! idempotency key of its own, retried under that key until committed: an event is recorded
//! once, also when a retry crosses a leader change. Failed authentications and rate-limit trips
//! are counted per source (and limit) and written as one event per source every
//! [`ROLLUP_EVERY`], with their `count`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::command::{ChannelCmd, ChannelRetention};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::cluster::{now_ms, Cluster};

/// The channel the audit stream is kept in. Names starting with `$` are reserved: no client
/// publishes to them.
pub const AUDIT_CHANNEL: &str = "$audit";
/// Events kept in the stream, and for how long.
pub const AUDIT_KEEP_EVENTS: u64 = 100_000;
pub const AUDIT_KEEP_MS: u64 = 90 * 24 * 3600 * 1000;
/// Events waiting to be written on one node; past it, new ones go to the log only (counted).
pub const AUDIT_QUEUE_MAX: usize = 10_000;
/// How often counted events (failed authentications, rate-limit trips) are written.
pub const ROLLUP_EVERY: Duration = Duration::from_secs(10);

/// One security event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// e.g. `auth_failed`, `rate_limited`, `token_created`, `policy_set`, `member_removed`,
    /// `backup_downloaded`, `restored`.
    pub kind: String,
    pub actor: String,
    /// The client's address, or `cluster` for what a node did on its own.
    pub source: String,
    /// The node that saw it.
    pub node: u64,
    /// When (ms since the Unix epoch, on that node's clock).
    pub at_ms: u64,
    /// How many of these, for counted events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// What the event was about (a token's accessor id, a member id, ...).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// The node's queue of events to write.
pub struct AuditLog {
    node: u64,
    tx: mpsc::Sender<AuditEvent>,
    rx: Mutex<Option<mpsc::Receiver<AuditEvent>>>,
    /// (kind, source, actor) → count since the last rollup.
    counted: Mutex<BTreeMap<(String, String, String), u64>>,
    dropped: AtomicU64,
}

impl AuditLog {
    pub fn new(node: u64) -> Self {
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE_MAX);
        AuditLog {
            node,
            tx,
            rx: Mutex::new(Some(rx)),
            counted: Mutex::new(BTreeMap::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Records an event: logged now, written to the stream by [`AuditLog::run`].
    pub fn record(&self, kind: &str, actor: &str, source: &str, detail: Value) {
        let e = AuditEvent {
            kind: kind.into(),
            actor: actor.into(),
            source: source.into(),
            node: self.node,
            at_ms: now_ms(),
            count: None,
            detail,
        };
        self.queue(e);
    }

    fn queue(&self, e: AuditEvent) {
        info!(target: "audit", kind = %e.kind, actor = %e.actor, source = %e.source, count = ?e.count, detail = %e.detail, "security event");
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an event of a kind that comes in bursts; written once per source every
    /// [`ROLLUP_EVERY`].
    pub fn count(&self, kind: &str, actor: &str, source: &str) {
        let mut c = self.counted.lock().expect("audit counts");
        // Bounded: past this many sources in one period, they are counted under one.
        let key = if c.len() >= 10_000 {
            (kind.to_string(), "(many)".to_string(), "(many)".to_string())
        } else {
            (kind.to_string(), source.to_string(), actor.to_string())
        };
        *c.entry(key).or_default() += 1;
    }

    /// Events the queue had no room for.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn roll_up(&self) {
        let counted = std::mem::take(&mut *self.counted.lock().expect("audit counts"));
        for ((kind, source, actor), n) in counted {
            self.queue(AuditEvent {
                kind,
                actor,
                source,
                node: self.node,
                at_ms: now_ms(),
                count: Some(n),
                detail: Value::Null,
            });
        }
    }

    /// Writes queued events to the stream until `stop`; then writes what is left, once.
    pub async fn run(self: Arc<Self>, cluster: Arc<Cluster>, stop: CancellationToken) {
        let Some(mut rx) = self.rx.lock().expect("audit queue").take() else {
            return;
        };
        let mut tick = tokio::time::interval(ROLLUP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.roll_up(),
                Some(e) = rx.recv() => write(&cluster, &e, &stop).await,
            }
        }
        // What is left gets one try each (`stop` is cancelled): shutdown does not wait on a
        // cluster that cannot commit.
        self.roll_up();
        while let Ok(e) = rx.try_recv() {
            write(&cluster, &e, &stop).await;
        }
    }
}

/// The publish that writes `e`.
pub fn publish_command(e: &AuditEvent) -> ChannelCmd {
    ChannelCmd::Publish {
        channel: AUDIT_CHANNEL.into(),
        data: serde_json::to_string(e).expect("audit events serialize"),
        retention: ChannelRetention {
            max_events: AUDIT_KEEP_EVENTS,
            max_age_ms: AUDIT_KEEP_MS,
        },
    }
}

/// Proposes one event under its own idempotency key until it is committed (a few tries over
/// about half a minute; then it stays in the structured log only).
async fn write(cluster: &Cluster, e: &AuditEvent, stop: &CancellationToken) {
    let key = crate::api::idempotency::own_key(
        &format!("audit:{}", hex::encode(rand::random::<[u8; 16]>())),
        &publish_command(e),
    );
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=8 {
        match crate::service::propose(cluster, publish_command(e), Some(key.clone())).await {
            Ok(_) => return,
            Err(err) if attempt == 8 => {
                warn!(error = %err, kind = %e.kind, "audit event not written to the stream");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}

/// Writes `e` now and waits until it is committed, under an idempotency key made from `seed`:
/// a retry of the same event with the same seed (after a crash, say) is answered as the first
/// write and not recorded twice. For events a node records before it serves anyone, where the
/// queue of [`AuditLog::run`] could lose them to a crash.
pub async fn write_committed(cluster: &Cluster, e: &AuditEvent, seed: &str) -> anyhow::Result<()> {
    info!(target: "audit", kind = %e.kind, actor = %e.actor, source = %e.source, detail = %e.detail, "security event");
    let cmd = publish_command(e);
    let key = crate::api::idempotency::own_key(&format!("audit:{seed}"), &cmd);
    crate::service::propose(cluster, cmd, Some(key))
        .await
        .map(|_| ())
        .map_err(|err| anyhow::anyhow!("recording the {} audit event: {err}", e.kind))
}

/// Who made a request, for its audit event: the caller's actor and the client's address
/// (as [`crate::auth::authorize`] found them).
#[derive(Debug, Clone)]
pub struct Who {
    pub actor: String,
    pub source: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let actor = parts
            .extensions
            .get::<crate::auth::Caller>()
            .map_or("anyone", |c| c.actor())
            .to_string();
        let source = parts
            .extensions
            .get::<crate::auth::ClientIp>()
            .map_or_else(|| "unknown".to_string(), |ip| ip.0.to_string());
        Ok(Who { actor, source })
    }
}

impl Who {
    /// Records `kind` with `detail` as this caller's.
    pub fn record(&self, cluster: &Cluster, kind: &str, detail: Value) {
        cluster
            .audit()
            .record(kind, &self.actor, &self.source, detail);
    }
}
