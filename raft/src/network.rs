//! How a replica reaches the others: openraft's network over a [`Link`] the node provides (the
//! QUIC transport), and the Raft messages that cross it.
//!
//! The link never retries by itself. Failing to reach a peer maps to `Unreachable`, so
//! openraft's own backoff applies; an error on an established exchange maps to `Network`
//! (retried at the next heartbeat); an error reported by the remote Raft maps to
//! `Unreachable` too (the remote is shutting down or broken).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::OptionalSend;
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, NodeInfo, SnapshotData, TypeConfig};

/// A position in the log (term and index), as a read index travels between nodes.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A node's vote, sent with a snapshot.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// What a snapshot covers (its last log position and membership).
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot: its meta and its bytes.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type AppendRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;

/// A Raft message from one replica to another (a snapshot goes by [`Link::send_snapshot`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRpc {
    Append(AppendRequest),
    Vote(VoteRequest),
    PreVote(VoteRequest),
    TransferLeader(TransferLeaderRequest),
}

/// A replica's answer to a [`PeerRpc`]; an error of the remote Raft travels as text. A vote
/// and a pre-vote are answered alike.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerAnswer {
    Append(Result<AppendResponse, String>),
    Vote(Result<VoteResponse, String>),
    TransferLeader(Result<TransferLeaderResponse, String>),
}

/// Why a [`Link`] call brought no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer could not be reached, or refused the call: nothing was delivered.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The exchange broke or timed out once under way.
    #[error("network: {0}")]
    Network(String),
}

/// The node's way to reach a peer's replica: one message and its answer per call.
pub trait Link: Send + Sync + 'static {
    /// Sends `rpc` to node `to` at `addr` and waits up to `timeout` for its answer.
    fn call(
        &self,
        to: NodeId,
        addr: &str,
        rpc: PeerRpc,
        timeout: Duration,
    ) -> impl Future<Output = Result<PeerAnswer, LinkError>> + Send;

    /// Sends a whole snapshot to node `to` at `addr`; answers the receiver's installation.
    fn send_snapshot(
        &self,
        to: NodeId,
        addr: &str,
        vote: Vote,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<Result<SnapshotResponse, String>, LinkError>> + Send;
}

/// Creates one [`Peer`] per replication target.
pub(crate) struct Network<L> {
    link: Arc<L>,
}

impl<L> Network<L> {
    pub(crate) fn new(link: Arc<L>) -> Self {
        Self { link }
    }
}

impl<L: Link> RaftNetworkFactory<TypeConfig> for Network<L> {
    type Network = Peer<L>;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer<L> {
        Peer {
            link: self.link.clone(),
            target,
            addr: node.cluster_addr.clone(),
        }
    }
}

/// The network client towards one peer.
pub(crate) struct Peer<L> {
    link: Arc<L>,
    target: NodeId,
    addr: String,
}

fn to_rpc_error(e: LinkError) -> RPCError<TypeConfig> {
    match e {
        LinkError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
        LinkError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
    }
}

fn unexpected(answer: PeerAnswer) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!(
        "unexpected answer: {answer:?}"
    )))
}

/// A vote and a pre-vote are answered alike.
fn vote_answer(a: PeerAnswer) -> Result<Result<VoteResponse, String>, PeerAnswer> {
    match a {
        PeerAnswer::Vote(r) => Ok(r),
        other => Err(other),
    }
}

fn remote(e: String) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(format!("remote raft error: {e}")))
}

impl<L: Link> Peer<L> {
    /// Sends one message and takes its answer out of the variant `pick` expects.
    async fn raft_call<T>(
        &self,
        rpc: PeerRpc,
        option: &RPCOption,
        pick: fn(PeerAnswer) -> Result<Result<T, String>, PeerAnswer>,
    ) -> Result<T, RPCError<TypeConfig>> {
        let answer = self
            .link
            .call(self.target, &self.addr, rpc, option.hard_ttl())
            .await
            .map_err(to_rpc_error)?;
        match pick(answer) {
            Ok(answer) => answer.map_err(remote),
            Err(other) => Err(unexpected(other)),
        }
    }
}

/// The most entry bytes one append carries. openraft batches appends by count only (up to
/// `max_payload_entries`); with large values such a batch may exceed the frame limit, and a
/// follower that fell behind would be sent the same oversized batch forever. A batch past this
/// is cut to the entries that fit (at least one), and the answer says how far it got.
pub const APPEND_BATCH_BYTES: usize = 4 << 20;

/// The least time an append carrying entries gets, and the rate its bytes are allowed at on
/// top. openraft suggests the heartbeat interval (100 ms by default) as every append's timeout;
/// an append of large entries, or to a follower whose disk is slow, takes longer, and cut at
/// that timeout it would be sent again and cut again, forever.
pub const APPEND_MIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const APPEND_MIN_BYTES_PER_SEC: u64 = 1 << 20;

/// How many of `entries`, from the first, fit in `budget` bytes (at least one, when there is
/// one), and their size.
fn entries_within<E: serde::Serialize>(entries: &[E], budget: usize) -> (usize, usize) {
    let mut bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = crate::codec::encoded_len(e).unwrap_or(usize::MAX / 2);
        if i > 0 && bytes + len > budget {
            return (i, bytes);
        }
        bytes += len;
    }
    (entries.len(), bytes)
}

/// The time an append of `bytes` of entries gets: openraft's suggestion, or more for entries.
fn append_timeout(suggested: Duration, entries: usize, bytes: usize) -> Duration {
    if entries == 0 {
        return suggested;
    }
    let transfer = Duration::from_millis(bytes as u64 * 1000 / APPEND_MIN_BYTES_PER_SEC);
    suggested.max(APPEND_MIN_TIMEOUT + transfer)
}

impl<L: Link> RaftNetworkV2<TypeConfig> for Peer<L> {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendRequest,
        option: RPCOption,
    ) -> Result<AppendResponse, RPCError<TypeConfig>> {
        let (fit, bytes) = entries_within(&rpc.entries, APPEND_BATCH_BYTES);
        let cut = (fit < rpc.entries.len()).then(|| {
            rpc.entries.truncate(fit);
            rpc.entries.last().map(|e| e.log_id)
        });
        let option = RPCOption::new(append_timeout(option.hard_ttl(), fit, bytes));
        let answer = self
            .raft_call(PeerRpc::Append(rpc), &option, |r| match r {
                PeerAnswer::Append(r) => Ok(r),
                other => Err(other),
            })
            .await?;
        Ok(match (answer, cut) {
            // The entries sent were taken; openraft sends the rest next.
            (AppendResponse::Success, Some(last)) => AppendResponse::PartialSuccess(last),
            (answer, _) => answer,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RPCError<TypeConfig>> {
        self.raft_call(PeerRpc::Vote(rpc), &option, vote_answer)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RPCError<TypeConfig>> {
        self.raft_call(PeerRpc::PreVote(rpc), &option, vote_answer)
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse, RPCError<TypeConfig>> {
        self.raft_call(PeerRpc::TransferLeader(req), &option, |r| match r {
            PeerAnswer::TransferLeader(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError<TypeConfig>> {
        tracing::info!(
            target = self.target,
            bytes = snapshot.snapshot.get_ref().len(),
            "sending snapshot"
        );
        let send = self
            .link
            .send_snapshot(self.target, &self.addr, vote, snapshot);
        tokio::pin!(cancel);
        let resp = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            r = send => r.map_err(|e| StreamingError::from(to_rpc_error(e)))?,
        };
        resp.map_err(|e| StreamingError::from(remote(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{append_timeout, entries_within};

    #[test]
    fn an_append_is_cut_to_the_entries_that_fit_and_carries_at_least_one() {
        let entries: Vec<Vec<u8>> = (0..10).map(|_| vec![7u8; 1000]).collect();
        // Each encodes to 1,003 bytes (a format byte, a length, the bytes).
        assert_eq!(entries_within(&entries, 100_000), (10, 10_030));
        assert_eq!(entries_within(&entries, 3_500), (3, 3_009));
        assert_eq!(
            entries_within(&entries, 10),
            (1, 1_003),
            "one entry goes even when over"
        );
        assert_eq!(entries_within::<Vec<u8>>(&[], 10), (0, 0));
    }

    #[test]
    fn an_append_gets_time_for_its_bytes() {
        let hb = Duration::from_millis(100);
        assert_eq!(
            append_timeout(hb, 0, 0),
            hb,
            "a heartbeat keeps its timeout"
        );
        assert_eq!(append_timeout(hb, 1, 100), Duration::from_secs(1));
        assert_eq!(
            append_timeout(hb, 4, 4 << 20),
            Duration::from_secs(5),
            "4 MiB at 1 MiB/s on top of the second"
        );
    }
}
