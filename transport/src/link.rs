//! The endpoint as the [`Link`] a replica reaches its peers by: each Raft message one call,
//! appends on a stream, a snapshot sent in chunks.

use std::time::Duration;

use futures::StreamExt;
use raft::network::{AppendRequest, Snapshot, SnapshotResponse, Vote};
use raft::{AppendAnswers, AppendInput, Link, LinkError, NodeId, PeerAnswer, PeerRpc};
use tokio_util::task::AbortOnDropHandle;

use crate::endpoint::{self, Transport};
use crate::error::Error;
use crate::frame;
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

/// How a node refuses a request it cannot decode (as every version since the first does).
const BAD_REQUEST: &str = "bad request: ";

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

    async fn append_stream(
        &self,
        to: NodeId,
        addr: &str,
        input: AppendInput,
    ) -> Result<AppendAnswers, LinkError> {
        let limit = self.limits().max_frame_bytes;
        let (mut send, recv) = self.open_to(to, addr).await.map_err(link_error)?;
        frame::write_msg(&mut send, &RpcRequest::AppendStream, limit)
            .await
            .map_err(link_error)?;
        // Appends go out as openraft makes them, in a task of their own that ends with the
        // answers' stream (or when `input` ends, finishing the stream).
        let sender = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut input = input;
            while let Some(req) = input.next().await {
                if let Err(e) = frame::write_msg::<AppendRequest>(&mut send, &req, limit).await {
                    tracing::debug!(error = %e, "append stream: sending failed");
                    return;
                }
            }
            let _ = send.finish();
        }));
        let removed = self.removed_sender();
        let answers = futures::stream::unfold(Some((recv, sender, Vec::new())), move |state| {
            let removed = removed.clone();
            async move {
                let (mut recv, sender, mut buf) = state?;
                let read = match frame::next_msg::<RpcResponse>(&mut recv, limit, &mut buf).await {
                    // The follower finished the stream after its last answer.
                    Ok(None) => return None,
                    Ok(Some(r)) => Ok(r),
                    Err(e) => Err(e),
                };
                let answer = match endpoint::check_removed(&removed, read) {
                    Ok(RpcResponse::StreamAppend(a)) => Ok(a),
                    // An earlier version could not read the request; other refusals (a
                    // peer that does not know this node yet) are answered as for any call.
                    Ok(RpcResponse::Refused(m)) if m.starts_with(BAD_REQUEST) => {
                        Err(LinkError::Unsupported(m))
                    }
                    Ok(other) => Err(unexpected(other)),
                    Err(e) => Err(link_error(e)),
                };
                let go_on = answer.is_ok();
                Some((answer, go_on.then_some((recv, sender, buf))))
            }
        });
        Ok(Box::pin(answers))
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
