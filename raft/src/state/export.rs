//! The state as records, for backups and restores: what a record means (which one holds the
//! revision, which are key-value entries, which belong to the cluster rather than its data)
//! is this module's business, so a backup never names the state's key layout.

use super::{acl, kv, Meta, COMPACT_KEY, META_KEY, REVOKED_TOKENS_KEY, SECURITY_KEY};
use crate::codec;

/// The figures of an exported state, read from its records (so they come from the same
/// RocksDB snapshot as every record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// The last log index applied to the exported state.
    pub last_applied_index: Option<u64>,
    pub revision: u64,
    pub compact_revision: u64,
}

impl Figures {
    /// Takes the figures a record holds, if it holds any.
    pub fn observe(&mut self, k: &[u8], v: &[u8]) -> codec::Result<()> {
        if k == META_KEY {
            let meta: Meta = codec::decode(v)?;
            self.last_applied_index = meta.last_applied.map(|l| l.index);
            self.revision = meta.revision;
        } else if k == COMPACT_KEY {
            self.compact_revision = codec::decode(v)?;
        }
        Ok(())
    }
}

/// A key-value entry of an exported state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub revision: u64,
}

/// The key-value entry a record holds, when it is one.
pub fn kv_entry(k: &[u8], v: &[u8]) -> codec::Result<Option<KvRecord>> {
    let Some(key) = k.strip_prefix(kv::PREFIX) else {
        return Ok(None);
    };
    let e: kv::KvEntry = codec::decode(v)?;
    Ok(Some(KvRecord {
        key: key.to_vec(),
        value: e.value,
        revision: e.revision,
    }))
}

/// A record as it is imported into the data dir of a new cluster: `None` when it belongs to
/// the old cluster rather than its data (join tokens, removed node ids, the mark that its
/// bootstrap token was made, so the new cluster makes its own), and the state's own
/// record without the old cluster's identity, membership and applied index.
pub fn import(k: &[u8], v: &[u8]) -> codec::Result<Option<Vec<u8>>> {
    if k == SECURITY_KEY || k == REVOKED_TOKENS_KEY || k == acl::BOOTSTRAP_KEY {
        return Ok(None);
    }
    if k != META_KEY {
        return Ok(Some(v.to_vec()));
    }
    let mut meta: Meta = codec::decode(v)?;
    meta.cluster_id = None;
    meta.join_token_sha256 = None;
    meta.last_applied = None;
    meta.last_membership = Default::default();
    codec::encode(&meta).map(Some)
}
