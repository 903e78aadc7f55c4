//! The node's side of real time: the feed of applied events that WebSocket connections
//! subscribe to, connection limits, and this node's presence lease.
//!
//! Every node fans out from its own applied log: the state machine broadcasts each applied
//! batch's channel events and key-value changes ([`raft::LiveBatch`]) and every connection
//! filters them for its subscriptions. The leader only orders the writes; delivery costs it
//! nothing beyond its own connections.
//!
//! An event fanned out to many connections is serialized once: the first connection that
//! sends it renders its text frame into the batch's slot ([`Hub::rendered`]), the others
//! share that text.
//!
//! Every WebSocket task (a connection, a publish it waits on) belongs to the hub's
//! tracker: shutdown closes the connections and waits for those tasks ([`Hub::drain`]).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use raft::command::ChannelCmd;
use raft::state::LiveEvent;
use raft::LiveBatch;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::cluster::Cluster;

pub struct Hub {
    live: broadcast::Sender<LiveBatch>,
    /// Drawn once per process: a restarted node's presence replaces its previous process's.
    pub incarnation: u64,
    /// Cancelled when the node drains its WebSockets: connections close with 1001 (going away).
    pub shutdown: CancellationToken,
    /// Cancelled when tasks outlive the drain: they are dropped where they are.
    abandon: CancellationToken,
    /// Every WebSocket connection and the publishes it waits on.
    pub tasks: TaskTracker,
    /// WebSocket connections still allowed on this node.
    pub connections: Arc<Semaphore>,
    /// Present clients connected to this node; while any, the node renews its lease.
    present_here: AtomicUsize,
    /// The text frames of the latest batches' events, rendered once for every connection.
    rendered: Mutex<VecDeque<(Weak<Vec<LiveEvent>>, Rendered)>>,
}

/// One text frame per event of a batch, each rendered by the first connection that sends it.
pub type Rendered = Arc<[OnceLock<Utf8Bytes>]>;

/// Batches whose rendered frames are kept; a connection further behind renders its own.
const RENDERED_BATCHES: usize = 64;

impl Hub {
    pub fn new(live: broadcast::Sender<LiveBatch>, max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            live,
            incarnation: rand::random::<u64>() | 1,
            shutdown: CancellationToken::new(),
            abandon: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connections: Arc::new(Semaphore::new(max_connections)),
            present_here: AtomicUsize::new(0),
            rendered: Mutex::new(VecDeque::with_capacity(RENDERED_BATCHES)),
        })
    }

    /// Runs a connection as one of the hub's tasks (its caller is the task axum spawns for an
    /// upgraded connection): counted until it ends, and dropped if it outlives the drain.
    pub fn connection<F>(&self, conn: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .track_future(abandonable(conn, self.abandon.clone()))
    }

    /// Spawns a task of a connection (a publish it waits on) on the hub's tracker, which
    /// shutdown waits for; it is dropped if it outlives the drain.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(abandonable(task, self.abandon.clone()));
    }

    /// Closes every connection (1001, going away) and waits up to `within` for the hub's
    /// tasks to end; tasks left then are dropped, with a warning, and get `abandon_within`
    /// more to go.
    pub async fn drain(&self, within: Duration, abandon_within: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
        {
            return;
        }
        warn!(
            tasks = self.tasks.len(),
            "WebSocket tasks did not stop within {within:?}; dropping them"
        );
        self.abandon.cancel();
        if tokio::time::timeout(abandon_within, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(tasks = self.tasks.len(), "WebSocket tasks still running");
        }
    }

    /// Every batch this node applies from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }

    /// The shared text frames of `batch`'s events (slots filled on first use).
    pub fn rendered(&self, batch: &Arc<Vec<LiveEvent>>) -> Rendered {
        let mut recent = self.rendered.lock().expect("rendered lock");
        // A live `Weak` keeps its allocation: an equal pointer is this very batch.
        if let Some((_, r)) = recent
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(batch)))
        {
            return r.clone();
        }
        let r: Rendered = (0..batch.len()).map(|_| OnceLock::new()).collect();
        if recent.len() == RENDERED_BATCHES {
            recent.pop_front();
        }
        recent.push_back((Arc::downgrade(batch), r.clone()));
        r
    }

    pub fn presence_joined(&self) {
        self.present_here.fetch_add(1, Ordering::Relaxed);
    }

    pub fn presence_left(&self) {
        self.present_here.fetch_sub(1, Ordering::Relaxed);
    }

    /// Renews this node's presence lease every third of `presence_lease_ms` while it has
    /// present clients. A node that stops renewing loses its clients' presence when the
    /// lease ends on the replicated clock (the leader's tick removes them).
    pub async fn run_presence(self: Arc<Self>, cluster: Arc<Cluster>, shutdown: CancellationToken) {
        let lease_ms = cluster.config().channels.presence_lease_ms;
        let mut tick = tokio::time::interval(Duration::from_millis(lease_ms / 3));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.present_here.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let command = ChannelCmd::PresenceHeartbeat {
                node_id: cluster.id,
                incarnation: self.incarnation,
                lease_ms,
            };
            match cluster.write(command, None).await {
                Ok(_) => debug!("presence lease renewed"),
                Err(e) => warn!(error = %e, "presence lease renewal failed"),
            }
        }
    }
}

/// `task`, ended early (dropped) when `abandon` is cancelled.
async fn abandonable<F: Future<Output = ()>>(task: F, abandon: CancellationToken) {
    tokio::select! {
        _ = task => {}
        _ = abandon.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::state::ChannelEvent;

    fn batch(offset: u64) -> Arc<Vec<LiveEvent>> {
        let event = ChannelEvent {
            offset,
            data: "1".into(),
            ts_ms: 0,
        };
        Arc::new(vec![LiveEvent::Channel {
            channel: "c".into(),
            event,
        }])
    }

    #[test]
    fn a_batch_is_rendered_once_for_every_connection_while_it_is_recent() {
        let (live, _) = broadcast::channel(4);
        let hub = Hub::new(live, 1);
        let first = batch(1);
        let a = hub.rendered(&first);
        a[0].get_or_init(|| "frame 1".into());
        let b = hub.rendered(&first);
        assert!(Arc::ptr_eq(&a, &b), "the same slots for the same batch");
        assert_eq!(b[0].get().map(|t| t.as_str()), Some("frame 1"));
        let other = hub.rendered(&batch(2));
        assert!(other[0].get().is_none(), "another batch has its own slots");
        for i in 0..RENDERED_BATCHES as u64 {
            hub.rendered(&batch(3 + i));
        }
        let again = hub.rendered(&first);
        assert!(!Arc::ptr_eq(&a, &again), "an old batch is rendered anew");
        assert!(again[0].get().is_none());
    }
}
