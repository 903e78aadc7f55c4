//! The endpoint as the [`Link`] a replica reaches its peers by: each Raft message one call,
//! a snapshot sent in chunks.

use std::time::Duration;

use raft::network::{Snapshot, SnapshotResponse, Vote};
use raft::{Link, LinkError, NodeId, PeerAnswer, PeerRpc};

use crate::endpoint::Transport;
use crate::error::Error;
use crate::rpc::{RpcRequest, RpcResponse};

/// Failing to reach a peer (or being refused by it) delivered nothing; anything else broke an
/// exchange under way.
fn link_error(e: Error) -> LinkError {
    match e {
        Error::Connect { .. } | Error::Refused(_) | Error::Tls(_) | Error::Removed(_) => {
            LinkError::Unreachable(e.to_string())
        }
        other => LinkError::Network(other.to_string()),
    }
}

fn unexpected(resp: RpcResponse) -> LinkError {
    match resp {
        RpcResponse::Refused(m) => LinkError::Unreachable(format!("peer refused: {m}")),
        other => LinkError::Network(format!("unexpected response: {other:?}")),
    }
}

impl Link for Transport {
    async fn call(
        &self,
        to: NodeId,
        addr: &str,
        rpc: PeerRpc,
        timeout: Duration,
    ) -> Result<PeerAnswer, LinkError> {
        let req = match rpc {
            PeerRpc::Append(r) => RpcRequest::Append(r),
            PeerRpc::Vote(r) => RpcRequest::Vote(r),
            PeerRpc::PreVote(r) => RpcRequest::PreVote(r),
            PeerRpc::TransferLeader(r) => RpcRequest::TransferLeader(r),
        };
        match self.call_node(to, addr, &req, timeout).await {
            Ok(RpcResponse::Append(r)) => Ok(PeerAnswer::Append(r)),
            Ok(RpcResponse::Vote(r)) => Ok(PeerAnswer::Vote(r)),
            Ok(RpcResponse::TransferLeader(r)) => Ok(PeerAnswer::TransferLeader(r)),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(link_error(e)),
        }
    }

    async fn send_snapshot(
        &self,
        to: NodeId,
        addr: &str,
        vote: Vote,
        snapshot: Snapshot,
    ) -> Result<Result<SnapshotResponse, String>, LinkError> {
        match Transport::send_snapshot(self, to, addr, vote, snapshot).await {
            Ok(RpcResponse::Snapshot(r)) => Ok(r),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(link_error(e)),
        }
    }
}
