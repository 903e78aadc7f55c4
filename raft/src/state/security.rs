//! Who may join and who may not come back: join tokens (digest and expiry) created after the
//! founding one, and the ids of removed nodes.
//!
//! Kept under its own key (`m:security`) so [`super::Meta`]'s encoding is unchanged.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use crate::codec;
use crate::command::Response;

/// Which kind of token [`Security::revoke_token`] revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Founding,
    Created,
}

pub const SECURITY_KEY: &[u8] = b"m:security";
/// Revoked join tokens, under their own key so that [`Security`]'s encoding is unchanged.
pub const REVOKED_TOKENS_KEY: &[u8] = b"m:revoked-tokens";

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
}

impl Security {
    pub fn load(db: &Db) -> storage::Result<Self> {
        let mut s: Self = match db.sm_get(SECURITY_KEY)? {
            Some(b) => codec::decode(&b)?,
            None => Self::default(),
        };
        if let Some(b) = db.sm_get(REVOKED_TOKENS_KEY)? {
            s.revoked_tokens = codec::decode(&b)?;
        }
        Ok(s)
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

    /// Revokes the created token with id `token_id` ([`token_id`]), or the founding token
    /// when `founding` (its digest) has that id; answers `NotFound` when neither has. The
    /// caller clears the founding digest from the meta when `Revoked::Founding` comes back.
    pub fn revoke_token(
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
        batch.put(
            REVOKED_TOKENS_KEY.to_vec(),
            codec::encode(&self.revoked_tokens).expect("revoked tokens encode"),
        );
        Some(which)
    }

    pub fn node_removed(&mut self, id: u64, batch: &mut SmBatch) -> Response {
        if self.removed_nodes.insert(id) {
            self.persist(batch);
        }
        Response::Done
    }
}
