//! How a replica reaches the others: openraft's network over a [`Link`] the node provides (the
//! QUIC transport), and the Raft messages that cross it.
//!
//! Appends to a follower travel on one long-lived stream per replication session
//! ([`Link::append_stream`]): each is sent as soon as openraft makes it, without waiting for
//! the answers to those before it, and the answers come back in order. A heartbeat (a stream
//! of one append) and a peer that does not know append streams (an earlier version) take one
//! call per append instead.
//!
//! The link never retries by itself. Failing to reach a peer maps to `Unreachable`, so
//! openraft's own backoff applies; an error on an established exchange maps to `Network`
//! (retried at the next heartbeat); an error reported by the remote Raft maps to
//! `Unreachable` too (the remote is shutting down or broken).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory};
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
/// A follower's answer to one append of a stream: how far its log now matches the leader's,
/// or why it refused (a conflict, or a higher vote).
pub type StreamAppendResult = openraft::raft::StreamAppendResult<TypeConfig>;
/// The appends of a stream, as openraft makes them.
pub type AppendInput = BoxStream<'static, AppendRequest>;
/// The answers of an append stream, one per append sent, in order; an error of the remote
/// Raft travels as text.
pub type AppendAnswers = BoxStream<'static, Result<Result<StreamAppendResult, String>, LinkError>>;

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
    /// The peer refused the kind of exchange (an earlier version that does not know it).
    #[error("unsupported by the peer: {0}")]
    Unsupported(String),
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

    /// Opens a stream of appends to node `to` at `addr`: each append of `input` is sent as soon
    /// as it is made, and the answers come back in order, one per append. The stream ends when
    /// `input` ends and every answer has come, or at the first error. Fails with
    /// [`LinkError::Unsupported`] when the peer does not serve append streams.
    fn append_stream(
        &self,
        to: NodeId,
        addr: &str,
        input: AppendInput,
    ) -> impl Future<Output = Result<AppendAnswers, LinkError>> + Send;

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
            streams: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// The network client towards one peer.
pub(crate) struct Peer<L> {
    link: Arc<L>,
    target: NodeId,
    addr: String,
    /// Whether the peer serves append streams; set to false when it refuses one, for the
    /// rest of this replication (a new leader or membership makes a new `Peer`).
    streams: Arc<AtomicBool>,
}

fn to_rpc_error(e: LinkError) -> RPCError<TypeConfig> {
    match e {
        LinkError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
        LinkError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
        LinkError::Unsupported(m) => RPCError::Unreachable(Unreachable::from_string(m)),
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

/// `req` as consecutive appends of at most `budget` bytes of entries each (one entry at least),
/// with the entries' count and bytes: each starts where the one before ended, so the follower
/// takes them as if they were one.
fn split_append(req: AppendRequest, budget: usize) -> Vec<(AppendRequest, usize, usize)> {
    let mut parts = Vec::new();
    let AppendRequest {
        vote,
        mut prev_log_id,
        leader_commit,
        mut entries,
    } = req;
    loop {
        let (fit, bytes) = entries_within(&entries, budget);
        let rest = entries.split_off(fit);
        let last = entries.last().map(|e| e.log_id).or(prev_log_id);
        parts.push((
            AppendRequest {
                vote,
                prev_log_id,
                leader_commit,
                entries,
            },
            fit,
            bytes,
        ));
        if rest.is_empty() {
            return parts;
        }
        prev_log_id = last;
        entries = rest;
    }
}

/// What the answer side of an append stream expects next: the parts an append was split into
/// and the time its answers get.
struct Expected {
    parts: usize,
    within: Duration,
}

/// The answers to openraft's appends, from the answers to the parts sent: an append is
/// answered once all its parts are (with the last part's answer), or at the first part refused
/// or lost, which ends the stream.
fn combined_answers(
    answers: AppendAnswers,
    expected: tokio::sync::mpsc::UnboundedReceiver<Expected>,
    streams: Arc<AtomicBool>,
) -> BoxStream<'static, Result<StreamAppendResult, RPCError<TypeConfig>>> {
    Box::pin(futures::stream::unfold(
        Some((answers, expected)),
        move |state| {
            let streams = streams.clone();
            async move {
                let (mut answers, mut expected) = state?;
                let next = tokio::select! {
                    biased;
                    e = expected.recv() => e,
                    // No append is waiting for its answer: an answer now, or the end, means the
                    // exchange broke.
                    a = answers.next() => {
                        let e = match a {
                            Some(Err(e)) => e,
                            _ => LinkError::Network(
                                "the append stream ended with no append waiting".into(),
                            ),
                        };
                        return Some((Err(link_failed(e, &streams)), None));
                    }
                };
                // No more appends (openraft ended its stream), and every one was answered.
                let Expected { parts, within } = next?;
                // One part at least.
                let mut answer = next_answer(&mut answers, within, &streams).await;
                for _ in 1..parts {
                    if !matches!(answer, Ok(Ok(_))) {
                        break;
                    }
                    answer = next_answer(&mut answers, within, &streams).await;
                }
                let go_on = matches!(answer, Ok(Ok(_)));
                Some((answer, go_on.then_some((answers, expected))))
            }
        },
    ))
}

/// A link error of an append stream; a peer that does not serve them is sent single appends
/// from then on.
fn link_failed(e: LinkError, streams: &AtomicBool) -> RPCError<TypeConfig> {
    if let LinkError::Unsupported(why) = &e {
        if streams.swap(false, Ordering::Relaxed) {
            tracing::info!(%why, "the peer does not serve append streams: sending single appends");
        }
    }
    to_rpc_error(e)
}

/// The next answer of an append stream, waited for up to `within`.
async fn next_answer(
    answers: &mut AppendAnswers,
    within: Duration,
    streams: &AtomicBool,
) -> Result<StreamAppendResult, RPCError<TypeConfig>> {
    match tokio::time::timeout(within, answers.next()).await {
        Err(_) => Err(to_rpc_error(LinkError::Network(format!(
            "no answer to an append within {} ms",
            within.as_millis()
        )))),
        Ok(None) => Err(to_rpc_error(LinkError::Network(
            "the append stream ended before its answers".into(),
        ))),
        Ok(Some(Err(e))) => Err(link_failed(e, streams)),
        Ok(Some(Ok(Err(remote_error)))) => Err(remote(remote_error)),
        Ok(Some(Ok(Ok(r)))) => Ok(r),
    }
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

    /// Appends on one stream, pipelined (see the module documentation).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendRequest> + OptionalSend + Unpin + 'static,
    {
        // A heartbeat is a stream of one append: one call, no stream to set up.
        if input.size_hint().1 == Some(1) || !self.streams.load(Ordering::Relaxed) {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let (expect, expected) = tokio::sync::mpsc::unbounded_channel();
            let ttl = option.hard_ttl();
            let parts: AppendInput = Box::pin(input.flat_map(move |req| {
                let parts = split_append(req, APPEND_BATCH_BYTES);
                let (entries, bytes) = parts
                    .iter()
                    .fold((0, 0), |(e, b), (_, pe, pb)| (e + pe, b + pb));
                // Unsent only if the answer side is gone, and with it the stream.
                let _ = expect.send(Expected {
                    parts: parts.len(),
                    within: append_timeout(ttl, entries, bytes),
                });
                futures::stream::iter(parts.into_iter().map(|(part, _, _)| part))
            }));
            let answers = self
                .link
                .append_stream(self.target, &self.addr, parts)
                .await
                .map_err(|e| link_failed(e, &self.streams))?;
            Ok(combined_answers(answers, expected, self.streams.clone()))
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
            bytes = snapshot.snapshot.len(),
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

    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderIdExt;

    use super::{append_timeout, entries_within, split_append, AppendRequest, LogId};
    use crate::command::{Command, KvCmd, Request};
    use crate::types::TypeConfig;

    type Entry = openraft::alias::EntryOf<TypeConfig>;
    type Leader = openraft::alias::LeaderIdOf<TypeConfig>;

    fn log_id(index: u64) -> LogId {
        LogId::new(Leader::new_committed(2, 1), index)
    }

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
    fn a_large_append_goes_as_consecutive_parts_that_fit() {
        let req = AppendRequest {
            leader_commit: Some(log_id(9)),
            ..append(5, 14, 1000)
        };
        // The entries are of one size.
        let one = super::entries_within(&req.entries[..1], usize::MAX).1;
        assert_eq!(entries_within(&req.entries, usize::MAX), (10, 10 * one));
        let parts = split_append(req.clone(), 3 * one + one / 2);
        assert_eq!(
            parts.iter().map(|p| p.1).collect::<Vec<_>>(),
            [3, 3, 3, 1],
            "three entries fit in each part"
        );
        let mut prev = Some(log_id(4));
        for (part, n, _) in &parts {
            assert_eq!(
                part.prev_log_id, prev,
                "each part starts where the last ended"
            );
            assert_eq!(part.leader_commit, Some(log_id(9)));
            assert_eq!(part.vote, req.vote);
            assert_eq!(part.entries.len(), *n);
            prev = part.entries.last().map(|e| e.log_id);
        }
        assert_eq!(prev, Some(log_id(14)));
        // What fits, and a heartbeat, go whole.
        assert_eq!(split_append(req.clone(), usize::MAX).len(), 1);
        let heartbeat = AppendRequest {
            entries: Vec::new(),
            ..req
        };
        let parts = split_append(heartbeat, 10);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0.prev_log_id, Some(log_id(4)));
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

    /// A peer for the tests of `Peer::stream_append`: it records the last index of each append
    /// it receives, and answers none before it has received `hold` of them.
    struct FakeLink {
        streams: bool,
        hold: usize,
        received: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    }

    /// The last position an append covers (its `prev_log_id` when it carries no entry).
    fn last_log_id(req: &AppendRequest) -> Option<LogId> {
        req.entries.last().map(|e| e.log_id).or(req.prev_log_id)
    }

    fn last_index(req: &AppendRequest) -> u64 {
        last_log_id(req).map_or(0, |l| l.index)
    }

    impl super::Link for FakeLink {
        async fn call(
            &self,
            _to: u64,
            _addr: &str,
            rpc: super::PeerRpc,
            _timeout: Duration,
        ) -> Result<super::PeerAnswer, super::LinkError> {
            let super::PeerRpc::Append(req) = rpc else {
                panic!("only appends are sent here")
            };
            self.received.lock().unwrap().push(last_index(&req));
            Ok(super::PeerAnswer::Append(Ok(
                super::AppendResponse::Success,
            )))
        }

        async fn append_stream(
            &self,
            _to: u64,
            _addr: &str,
            mut input: super::AppendInput,
        ) -> Result<super::AppendAnswers, super::LinkError> {
            use futures::StreamExt;
            if !self.streams {
                return Err(super::LinkError::Unsupported(
                    "bad request: unknown variant".into(),
                ));
            }
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (received, hold) = (self.received.clone(), self.hold);
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Some(req) = input.next().await {
                    received.lock().unwrap().push(last_index(&req));
                    held.push(last_log_id(&req));
                    if received.lock().unwrap().len() >= hold {
                        for last in held.drain(..) {
                            let _ = tx.send(Ok(Ok(Ok(last))));
                        }
                    }
                }
            });
            Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|a| (a, rx))
            })))
        }

        async fn send_snapshot(
            &self,
            _to: u64,
            _addr: &str,
            _vote: super::Vote,
            _snapshot: super::Snapshot,
        ) -> Result<Result<super::SnapshotResponse, String>, super::LinkError> {
            unreachable!("no snapshots here")
        }
    }

    fn peer(link: FakeLink) -> super::Peer<FakeLink> {
        super::Peer {
            link: std::sync::Arc::new(link),
            target: 2,
            addr: "127.0.0.2:1".into(),
            streams: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// An append of entries `from..=to` (below 100: their keys are of one length) with values
    /// of `big` bytes each, after entry `from - 1`.
    fn append(from: u64, to: u64, big: usize) -> AppendRequest {
        AppendRequest {
            vote: openraft::alias::VoteOf::<TypeConfig>::new_committed(2, 1),
            prev_log_id: Some(log_id(from - 1)),
            leader_commit: None,
            entries: (from..=to)
                .map(|i| {
                    Entry::new_normal(
                        log_id(i),
                        Request {
                            stamp_ms: 1,
                            idempotency_key: None,
                            command: Command::Kv(KvCmd::Put {
                                key: format!("k{i:02}"),
                                value: vec![1; big],
                                if_revision: None,
                                ttl_ms: None,
                            }),
                        },
                    )
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn appends_go_out_before_the_answers_to_those_before_them() {
        use futures::StreamExt;
        use openraft::network::v2::RaftNetworkV2;
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // The peer answers nothing before it has all four parts: one call at a time would
        // never get an answer.
        let mut p = peer(FakeLink {
            streams: true,
            hold: 4,
            received: received.clone(),
        });
        // The second append holds 6 MiB: it goes as two parts, and is answered once.
        let appends = vec![
            append(1, 3, 1000),
            append(4, 9, 1 << 20),
            append(10, 10, 1000),
        ];
        let option = openraft::network::RPCOption::new(Duration::from_secs(5));
        let answers: Vec<_> = tokio::time::timeout(Duration::from_secs(10), async {
            p.stream_append(futures::stream::iter(appends), option)
                .await
                .unwrap()
                .collect()
                .await
        })
        .await
        .expect("answered");
        let answers: Vec<u64> = answers
            .into_iter()
            .map(|a| a.unwrap().unwrap().unwrap().index)
            .collect();
        assert_eq!(answers, [3, 9, 10], "one answer per append, in order");
        assert_eq!(
            *received.lock().unwrap(),
            [3, 6, 9, 10],
            "parts of at most 4 MiB"
        );
    }

    #[tokio::test]
    async fn a_peer_that_refuses_streams_is_sent_one_append_per_call() {
        use futures::StreamExt;
        use openraft::network::v2::RaftNetworkV2;
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut p = peer(FakeLink {
            streams: false,
            hold: 0,
            received: received.clone(),
        });
        let option = openraft::network::RPCOption::new(Duration::from_secs(5));
        let appends = || futures::stream::iter(vec![append(1, 2, 10), append(3, 3, 10)]);
        let refused = p.stream_append(appends(), option.clone()).await.is_err();
        assert!(refused, "the refusal fails the first stream");
        let answers: Vec<_> = p
            .stream_append(appends(), option)
            .await
            .unwrap()
            .collect()
            .await;
        let answers: Vec<u64> = answers
            .into_iter()
            .map(|a| a.unwrap().unwrap().unwrap().index)
            .collect();
        assert_eq!(answers, [2, 3]);
        assert_eq!(*received.lock().unwrap(), [2, 3]);
    }
}
