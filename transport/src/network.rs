//! openraft's network over the QUIC transport.
//!
//! The transport never retries by itself. Failing to reach a peer maps to `Unreachable`, so
//! openraft's own backoff applies; an error on an established exchange maps to `Network`
//! (retried at the next heartbeat); an error reported by the remote openraft maps to
//! `Unreachable` too (the remote is shutting down or broken).

use std::future::Future;
use std::sync::Arc;

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

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(RpcRequest::Append(rpc), &option, |r| match r {
            RpcResponse::Append(r) => Ok(r),
            other => Err(other),
        })
        .await
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
