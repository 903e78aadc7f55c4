//! openraft's network over the QUIC transport.
//!
//! The transport never retries by itself. Failing to reach a peer maps to `Unreachable`, so
//! openraft's own backoff applies; an error on an established exchange maps to `Network`
//! (retried at the next heartbeat); an error reported by the remote openraft maps to
//! `Unreachable` too (the remote is shutting down or broken).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use raft::{NodeId, NodeInfo, SnapshotData, TypeConfig};

use crate::endpoint::Transport;
use crate::error::Error;
use crate::rpc::{RpcRequest, RpcResponse};

/// Creates one [`Peer`] per replication target.
#[derive(Clone)]
pub struct Network {
    transport: Arc<Transport>,
}

impl Network {
    pub fn new(transport: Arc<Transport>) -> Self {
        Self { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer {
            transport: self.transport.clone(),
            target,
            addr: node.cluster_addr.clone(),
        }
    }
}

/// The network client towards one peer.
pub struct Peer {
    transport: Arc<Transport>,
    target: NodeId,
    addr: String,
}

fn to_rpc_error(e: Error) -> RPCError<TypeConfig> {
    match e {
        Error::Connect { .. } | Error::Refused(_) | Error::Tls(_) | Error::Removed(_) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

fn unexpected(resp: RpcResponse) -> RPCError<TypeConfig> {
    match resp {
        RpcResponse::Refused(m) => {
            RPCError::Unreachable(Unreachable::from_string(format!("peer refused: {m}")))
        }
        other => RPCError::Network(NetworkError::from_string(format!(
            "unexpected response: {other:?}"
        ))),
    }
}

/// A vote and a pre-vote are answered alike.
fn vote_answer(r: RpcResponse) -> Result<Result<VoteResponse<TypeConfig>, String>, RpcResponse> {
    match r {
        RpcResponse::Vote(r) => Ok(r),
        other => Err(other),
    }
}

fn remote(e: String) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(format!("remote raft error: {e}")))
}

impl Peer {
    async fn call(
        &self,
        req: RpcRequest,
        option: &RPCOption,
    ) -> Result<RpcResponse, RPCError<TypeConfig>> {
        self.transport
            .call_node(self.target, &self.addr, &req, option.hard_ttl())
            .await
            .map_err(to_rpc_error)
    }

    /// Sends one openraft RPC and takes its answer out of the response `pick` expects.
    async fn raft_call<T>(
        &self,
        req: RpcRequest,
        option: &RPCOption,
        pick: fn(RpcResponse) -> Result<Result<T, String>, RpcResponse>,
    ) -> Result<T, RPCError<TypeConfig>> {
        match pick(self.call(req, option).await?) {
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
        let len = raft::codec::encoded_len(e).unwrap_or(usize::MAX / 2);
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

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let (fit, bytes) = entries_within(&rpc.entries, APPEND_BATCH_BYTES);
        let cut = (fit < rpc.entries.len()).then(|| {
            rpc.entries.truncate(fit);
            rpc.entries.last().map(|e| e.log_id)
        });
        let option = RPCOption::new(append_timeout(option.hard_ttl(), fit, bytes));
        let answer = self
            .raft_call(RpcRequest::Append(rpc), &option, |r| match r {
                RpcResponse::Append(r) => Ok(r),
                other => Err(other),
            })
            .await?;
        Ok(match (answer, cut) {
            // The entries sent were taken; openraft sends the rest next.
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(last)
            }
            (answer, _) => answer,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(RpcRequest::Vote(rpc), &option, vote_answer)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(RpcRequest::PreVote(rpc), &option, vote_answer)
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(RpcRequest::TransferLeader(req), &option, |r| match r {
            RpcResponse::TransferLeader(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tracing::info!(
            target = self.target,
            bytes = snapshot.snapshot.get_ref().len(),
            "sending snapshot"
        );
        let send = self
            .transport
            .send_snapshot(self.target, &self.addr, vote, snapshot);
        tokio::pin!(cancel);
        let resp = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            r = send => r.map_err(|e| StreamingError::from(to_rpc_error(e)))?,
        };
        match resp {
            RpcResponse::Snapshot(r) => r.map_err(|e| StreamingError::from(remote(e))),
            other => Err(StreamingError::from(unexpected(other))),
        }
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
