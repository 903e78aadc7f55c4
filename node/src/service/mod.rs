//! The client protocols that span more than one proposal, kept out of the HTTP and WebSocket
//! adapters so that every front end runs the same one.
//!
//! # Layout
//! - this file: [`acquire`], the blocking acquire of any leased primitive ([`Queueing`]):
//!   propose with a wait, watch this node's state until the grant shows or the wait ends, then
//!   settle the race between a late grant and the caller giving up through the log;
//! - [`propose`] and [`Answered`]: how each primitive's writes are answered (once committed,
//!   or once this node has applied them too), chosen once per primitive;
//! - one module per primitive with such a protocol: [`locks`], [`semaphores`] (their
//!   [`Queueing`]), [`queues`] (the long-poll claim of jobs).

pub mod locks;
pub mod queues;
pub mod semaphores;

use raft::command::{
    AclCmd, CacheCmd, ChannelCmd, Guarded, IdemKey, KvCmd, LockCmd, MaybeFenced, Proposal,
    QueueCmd, SemaphoreCmd, ServiceCmd, SessionCmd, Txn,
};
use raft::State;
use tokio::time::{Duration, Instant};

use crate::cluster::{Cluster, WriteError};

/// How a primitive's writes are answered.
pub trait Answered: Proposal {
    /// Whether the answer waits until the receiving node has applied the write, so that a read
    /// of that node's state right after sees it. A primitive whose reads are served from the
    /// node's own state (sessions, cache, queues, transactions over them) needs this; one read
    /// through ReadIndex (key-value) or answered from the write's own result does not.
    const READ_YOUR_WRITES: bool;
}

macro_rules! answered {
    ($($cmd:ty => $visible:expr),* $(,)?) => {
        $(impl Answered for $cmd {
            const READ_YOUR_WRITES: bool = $visible;
        })*
    };
}

answered! {
    KvCmd => false,
    LockCmd => false,
    SemaphoreCmd => false,
    ChannelCmd => false,
    SessionCmd => true,
    CacheCmd => true,
    QueueCmd => true,
    Txn => true,
    AclCmd => true,
    // The gateway and discovery on the node that took the write see it when it answers.
    ServiceCmd => true,
}

impl<P: Answered + Into<Guarded>> Answered for MaybeFenced<P> {
    const READ_YOUR_WRITES: bool = P::READ_YOUR_WRITES;
}

/// Proposes `proposal` (forwarded to the leader when this node does not lead) and answers its
/// typed result as the primitive's [`Answered`] says.
pub async fn propose<P: Answered>(
    cluster: &Cluster,
    proposal: P,
    idempotency_key: Option<IdemKey>,
) -> Result<P::Output, WriteError> {
    if P::READ_YOUR_WRITES {
        cluster.write_visible(proposal, idempotency_key).await
    } else {
        cluster.write(proposal, idempotency_key).await
    }
}

/// A leased primitive whose acquire may wait in a queue served in arrival order.
pub trait Queueing {
    type Cmd: Proposal<Output = Self::Result>;
    type Result;

    /// The acquire was queued: its grant will show in the state.
    fn queued(result: &Self::Result) -> bool;

    /// In this node's applied state: `Some(Some(grant))` once `waiter_id` was granted,
    /// `Some(None)` once it no longer waits (its wait ended), `None` while it still waits.
    fn look(state: &State, name: &str, waiter_id: &str) -> Option<Option<Self::Result>>;

    /// Withdraws the queued acquire; answers its grant if it came meanwhile.
    fn cancel(name: &str, waiter_id: &str) -> Self::Cmd;
}

/// The waiter id of a blocking acquire: derived from its (scoped) `Idempotency-Key`, so that a
/// retried request looks for the same place in the queue, else drawn at random (unguessable).
pub fn waiter_id(idempotency_key: Option<&IdemKey>) -> String {
    match idempotency_key {
        Some(k) => format!("idem:{}", k.key),
        None => hex::encode(rand::random::<[u8; 16]>()),
    }
}

/// Proposes `acquire` (queued as `waiter_id` if it waits) and, when it was queued, waits until
/// its grant shows in this node's state or `wait_ms` after `started` has passed; then
/// withdraws it through the log, which answers the grant if it came at the last moment.
///
/// A queued answer to a request that does not wait (`wait_ms` 0: the remembered answer of an
/// earlier request under the same `Idempotency-Key`, which had waited) is settled the same
/// way at once: the grant if it came, else the withdrawal's answer.
pub async fn acquire<Q: Queueing>(
    cluster: &Cluster,
    name: &str,
    acquire: Q::Cmd,
    (waiter_id, wait_ms): (&str, u64),
    idempotency_key: Option<IdemKey>,
    started: Instant,
) -> Result<Q::Result, WriteError> {
    // Visible: the wait below watches this node's state, which must already show the queue.
    let first = cluster.write_visible(acquire, idempotency_key).await?;
    if !Q::queued(&first) {
        return Ok(first);
    }
    let deadline = started + Duration::from_millis(wait_ms);
    let seen = cluster
        .wait_for_state(deadline, |state| Q::look(state, name, waiter_id))
        .await?;
    if let Some(Some(grant)) = seen {
        return Ok(grant);
    }
    cluster.write(Q::cancel(name, waiter_id), None).await
}
