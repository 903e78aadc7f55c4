//! Who may join and who may not come back: join tokens (digest and expiry) created after the
//! founding one, and the ids of removed nodes.
//!
//! Kept under its own key (`m:security`) so [`super::Meta`]'s encoding is unchanged.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storage::{codec, Db, SmBatch};

use crate::command::Response;

pub const SECURITY_KEY: &[u8] = b"m:security";

/// An expired token is remembered this long (so a join with it is told "expired"), then
/// forgotten when the next token is created.
pub const EXPIRED_TOKEN_KEPT_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// SHA-256 (hex) of each created join token → its expiry (replicated clock, ms).
    pub join_tokens: BTreeMap<String, u64>,
    /// Ids of nodes removed from the cluster; their certificates are refused.
    pub removed_nodes: BTreeSet<u64>,
}

impl Security {
    pub fn load(db: &Db) -> storage::Result<Self> {
        Ok(match db.sm_get(SECURITY_KEY)? {
            Some(b) => codec::decode(&b)?,
            None => Self::default(),
        })
    }

    fn persist(&self, batch: &mut SmBatch) {
        batch.put(
            SECURITY_KEY.to_vec(),
            codec::encode(self).expect("security state encodes"),
        );
    }

    pub fn create_token(
        &mut self,
        token_sha256: &str,
        expires_at_ms: u64,
        now: u64,
        batch: &mut SmBatch,
    ) -> Response {
        self.join_tokens
            .retain(|_, exp| exp.saturating_add(EXPIRED_TOKEN_KEPT_MS) > now);
        self.join_tokens
            .insert(token_sha256.to_string(), expires_at_ms);
        self.persist(batch);
        Response::Done
    }

    pub fn node_removed(&mut self, id: u64, batch: &mut SmBatch) -> Response {
        if self.removed_nodes.insert(id) {
            self.persist(batch);
        }
        Response::Done
    }
}
