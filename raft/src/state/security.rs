//! Who may join and who may not come back: join tokens (digest and expiry) created after the
//! founding one, the key each node was admitted with, and the ids of removed nodes.
//!
//! Kept under its own key (`m:security`) so [`super::Meta`]'s encoding is unchanged.
//!
//! Node keys: the founding node pins its own key when it founds the cluster
//! ([`ClusterCmd::Found`]), and a joining node's key is pinned in the same entry that
//! allocates its id ([`ClusterCmd::AdmitNode`], proposed by the leader that admits it with a
//! valid join token and signs its certificate). A certificate naming node N is a member's
//! only if its key is the one pinned for N, so holding the CA key (every member does) lets no
//! one act as another node, or as a node the cluster never admitted.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use super::primitive::{put_record, Cx, Part, Primitive};
use crate::codec;

/// A change to the cluster's identity and who may join it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCmd {
    /// The first entry of a new cluster, proposed once by the node that initialized it.
    /// Proposed by earlier builds only (now [`ClusterCmd::Found`]); applied as before.
    Init {
        cluster_id: String,
        join_token_sha256: String,
    },
    /// Allocates the next node id; ids are never reused. Proposed by earlier builds only
    /// (now [`ClusterCmd::AdmitNode`]); applied as before, pinning no key.
    AllocateNodeId,
    /// Records a join token (by its SHA-256) that admits nodes until `expires_at_ms` (on the
    /// proposer's clock when the token was made).
    JoinTokenCreate {
        token_sha256: String,
        expires_at_ms: u64,
    },
    /// Records that node `id` was removed: its certificate is refused from now on.
    NodeRemoved { id: u64 },
    /// Revokes the join token whose id (the first 16 hex digits of its SHA-256) is
    /// `token_id`, the founding token included: it admits no one from now on.
    JoinTokenRevoke { token_id: String },
    /// The first entry of a new cluster (replaces [`ClusterCmd::Init`]): also pins the key of
    /// the founding node, node 1.
    Found {
        cluster_id: String,
        join_token_sha256: String,
        /// SHA-256 of node 1's public key (its certificate's SubjectPublicKeyInfo).
        node_key_sha256: [u8; 32],
    },
    /// Allocates the next node id for a node admitted with a valid join token, pinning the
    /// key its certificate is issued for (replaces [`ClusterCmd::AllocateNodeId`]).
    AdmitNode {
        /// SHA-256 of the node's public key (its certificate's SubjectPublicKeyInfo).
        key_sha256: [u8; 32],
    },
    /// Puts the cluster's limits in force. Proposed by the leader when its `limits` settings
    /// differ from those in force, so every replica decides with the same figures.
    SetLimits(ClusterLimits),
}

/// The cluster-wide limits apply checks (0: none). Refusals: [`Response::QuotaExceeded`]
/// past `quota_bytes`, [`Response::LimitReached`] past a count.
///
/// [`Response::QuotaExceeded`]: crate::command::Response::QuotaExceeded
/// [`Response::LimitReached`]: crate::command::Response::LimitReached
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLimits {
    /// Bytes of key-value keys and values past which growing writes are refused.
    pub quota_bytes: u64,
    pub max_keys: u64,
    pub max_queues: u64,
    pub max_jobs_per_queue: u64,
    pub max_schedules: u64,
    pub max_channels: u64,
    pub max_sessions_per_user: u64,
    /// Access-control tokens (`POST /v1/acl/tokens`).
    pub max_tokens: u64,
    /// Join tokens made after the founding one, counted until they expire.
    pub max_join_tokens: u64,
    /// Callers queued for locks, all locks together.
    pub max_lock_waiters: u64,
}

/// The result of a [`ClusterCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterResult {
    Done,
    NodeId(u64),
    /// The cluster is already initialized.
    AlreadyInitialized,
    /// No join token has that id.
    NotFound,
}

/// Which kind of token [`Security::revoke_token`] revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Founding,
    Created,
}

pub const SECURITY_KEY: &[u8] = b"m:security";
/// Revoked join tokens, under their own key so that [`Security`]'s encoding is unchanged.
pub const REVOKED_TOKENS_KEY: &[u8] = b"m:revoked-tokens";
/// The pinned node keys, under their own key so that [`Security`]'s encoding is unchanged.
pub const NODE_KEYS_KEY: &[u8] = b"m:node-keys";

/// A join token's public id: the first 16 hex digits of its SHA-256.
pub fn token_id(token_sha256: &str) -> &str {
    token_sha256.get(..16).unwrap_or(token_sha256)
}

/// An expired token is remembered this long (so a join with it is told "expired"), then
/// forgotten when the next token is created.
pub const EXPIRED_TOKEN_KEPT_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// SHA-256 (hex) of each created join token → its expiry (replicated clock, ms).
    pub join_tokens: BTreeMap<String, u64>,
    /// Ids of nodes removed from the cluster; their certificates are refused.
    pub removed_nodes: BTreeSet<u64>,
    /// SHA-256 (hex) of each revoked join token → when it was revoked (replicated clock, ms);
    /// kept [`EXPIRED_TOKEN_KEPT_MS`] so that a join with it is told "revoked". Persisted
    /// under [`REVOKED_TOKENS_KEY`].
    #[serde(skip)]
    pub revoked_tokens: BTreeMap<String, u64>,
    /// Node id → SHA-256 of the public key the node was admitted with (its certificate's
    /// SubjectPublicKeyInfo); kept after a removal, since ids are never reused. Persisted
    /// under [`NODE_KEYS_KEY`].
    #[serde(skip)]
    pub node_keys: BTreeMap<u64, [u8; 32]>,
    /// The limits in force. Persisted under [`LIMITS_KEY`].
    #[serde(skip)]
    pub limits: ClusterLimits,
}

/// Where the limits in force are kept.
pub const LIMITS_KEY: &[u8] = b"m:limits";

impl Part for Security {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Self> {
        let mut s: Self = match db.sm_get(SECURITY_KEY)? {
            Some(b) => codec::decode(&b)?,
            None => Self::default(),
        };
        if let Some(b) = db.sm_get(REVOKED_TOKENS_KEY)? {
            s.revoked_tokens = codec::decode(&b)?;
        }
        if let Some(b) = db.sm_get(NODE_KEYS_KEY)? {
            s.node_keys = codec::decode(&b)?;
        }
        if let Some(b) = db.sm_get(LIMITS_KEY)? {
            s.limits = codec::decode(&b)?;
        }
        Ok(s)
    }

    /// Expired and revoked tokens are forgotten when the next token is created or revoked.
    fn expire(&mut self, _cx: &mut Cx<'_>) {}

    fn next_deadline(&self) -> Option<u64> {
        None
    }
}

impl Security {
    /// Join tokens that still admit nodes at `now`.
    pub(super) fn live_join_tokens(&self, now: u64) -> usize {
        self.join_tokens.values().filter(|at| **at > now).count()
    }

    fn persist(&self, batch: &mut SmBatch) {
        put_record(batch, SECURITY_KEY.to_vec(), self);
    }

    fn pin_key(&mut self, id: u64, key_sha256: [u8; 32], batch: &mut SmBatch) {
        self.node_keys.insert(id, key_sha256);
        put_record(batch, NODE_KEYS_KEY.to_vec(), &self.node_keys);
    }

    fn create_token(
        &mut self,
        token_sha256: &str,
        expires_at_ms: u64,
        now: u64,
        batch: &mut SmBatch,
    ) {
        self.join_tokens
            .retain(|_, exp| exp.saturating_add(EXPIRED_TOKEN_KEPT_MS) > now);
        self.join_tokens
            .insert(token_sha256.to_string(), expires_at_ms);
        self.persist(batch);
    }

    /// Revokes the created token with id `token_id` ([`token_id`]), or the founding token
    /// when `founding` (its digest) has that id; answers `NotFound` when neither has. The
    /// caller clears the founding digest from the meta when `Revoked::Founding` comes back.
    fn revoke_token(
        &mut self,
        token_id_wanted: &str,
        founding: Option<&str>,
        now: u64,
        batch: &mut SmBatch,
    ) -> Option<Revoked> {
        let (digest, which) = if let Some(d) = founding.filter(|d| token_id(d) == token_id_wanted) {
            (d.to_string(), Revoked::Founding)
        } else {
            let d = self
                .join_tokens
                .keys()
                .find(|d| token_id(d) == token_id_wanted)?
                .clone();
            self.join_tokens.remove(&d);
            self.persist(batch);
            (d, Revoked::Created)
        };
        self.revoked_tokens
            .retain(|_, at| at.saturating_add(EXPIRED_TOKEN_KEPT_MS) > now);
        self.revoked_tokens.insert(digest, now);
        put_record(batch, REVOKED_TOKENS_KEY.to_vec(), &self.revoked_tokens);
        Some(which)
    }
}

impl Primitive for Security {
    type Cmd = ClusterCmd;
    type Output = ClusterResult;

    fn apply(&mut self, cmd: &ClusterCmd, cx: &mut Cx<'_>) -> ClusterResult {
        let now = cx.now();
        match cmd {
            ClusterCmd::Init {
                cluster_id,
                join_token_sha256,
            } => init(cx, cluster_id, join_token_sha256),
            ClusterCmd::Found {
                cluster_id,
                join_token_sha256,
                node_key_sha256,
            } => {
                let r = init(cx, cluster_id, join_token_sha256);
                if r == ClusterResult::Done {
                    self.pin_key(FOUNDER, *node_key_sha256, cx.batch);
                }
                r
            }
            ClusterCmd::AllocateNodeId => ClusterResult::NodeId(allocate_id(cx)),
            ClusterCmd::AdmitNode { key_sha256 } => {
                let id = allocate_id(cx);
                self.pin_key(id, *key_sha256, cx.batch);
                ClusterResult::NodeId(id)
            }
            ClusterCmd::JoinTokenCreate {
                token_sha256,
                expires_at_ms,
            } => {
                self.create_token(token_sha256, *expires_at_ms, now, cx.batch);
                ClusterResult::Done
            }
            ClusterCmd::NodeRemoved { id } => {
                if self.removed_nodes.insert(*id) {
                    self.persist(cx.batch);
                }
                ClusterResult::Done
            }
            ClusterCmd::JoinTokenRevoke { token_id } => {
                let founding = cx.meta.join_token_sha256.clone();
                match self.revoke_token(token_id, founding.as_deref(), now, cx.batch) {
                    Some(Revoked::Founding) => {
                        // The meta is persisted with every applied batch.
                        cx.meta.join_token_sha256 = None;
                        ClusterResult::Done
                    }
                    Some(Revoked::Created) => ClusterResult::Done,
                    None => ClusterResult::NotFound,
                }
            }
            ClusterCmd::SetLimits(limits) => {
                self.limits = *limits;
                put_record(cx.batch, LIMITS_KEY.to_vec(), limits);
                ClusterResult::Done
            }
        }
    }
}

/// The node that founds a cluster.
pub const FOUNDER: u64 = 1;

/// Records the cluster's identity and founding token, once.
fn init(cx: &mut Cx<'_>, cluster_id: &str, join_token_sha256: &str) -> ClusterResult {
    if cx.meta.cluster_id.is_some() {
        return ClusterResult::AlreadyInitialized;
    }
    cx.meta.cluster_id = Some(cluster_id.to_string());
    cx.meta.join_token_sha256 = Some(join_token_sha256.to_string());
    cx.meta.next_node_id = cx.meta.next_node_id.max(FOUNDER + 1);
    ClusterResult::Done
}

/// The next node id; ids are never reused.
fn allocate_id(cx: &mut Cx<'_>) -> u64 {
    let id = cx.meta.next_node_id.max(FOUNDER + 1);
    cx.meta.next_node_id = id + 1;
    id
}
