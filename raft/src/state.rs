//! The replicated state and its deterministic apply function.
//!
//! `State::apply` is a pure function of (state, request): it reads no clock, draws no random
//! numbers and iterates only ordered maps, so every replica that applies the same log holds the
//! same state. Time comes from the log: each request carries the proposer's wall clock and the
//! replicated clock is `now = max(previous now, stamp)`.
//!
//! The state is kept in memory (reads never touch disk) and written through to the `sm`
//! column family; `load` rebuilds it at start-up.
//!
//! Key layout in the `sm` column family:
//! - `m:state` → [`Meta`]
//! - `k:<key>` → [`KvEntry`]
//! - `i:<idempotency key>` → [`IdemRecord`]

use std::collections::{BTreeMap, BTreeSet};

use openraft::alias::{LogIdOf, StoredMembershipOf};
use serde::{Deserialize, Serialize};
use storage::{codec, Db, SmBatch};

use crate::command::{Command, Request, Response};
use crate::types::TypeConfig;

/// Where [`Meta`] is stored in the `sm` column family.
pub const META_KEY: &[u8] = b"m:state";
const KV_PREFIX: &[u8] = b"k:";
const IDEM_PREFIX: &[u8] = b"i:";

/// How long an `Idempotency-Key` is remembered, on the replicated clock.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Scalars of the state machine, persisted together with every applied batch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// The replicated clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// The global revision: incremented by every key-value change.
    pub revision: u64,
    /// The next node id to hand out (ids are never reused).
    pub next_node_id: u64,
    pub cluster_id: Option<String>,
    pub join_token_sha256: Option<String>,
    pub last_applied: Option<LogIdOf<TypeConfig>>,
    pub last_membership: StoredMembershipOf<TypeConfig>,
}

/// A key's current value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub value: Vec<u8>,
    /// The revision that last wrote the key.
    pub revision: u64,
    /// The revision that created the key (after it was last absent).
    pub create_revision: u64,
    /// Replicated-clock deadline after which the key is gone.
    pub expires_at_ms: Option<u64>,
}

/// The remembered result of a write that carried an `Idempotency-Key`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdemRecord {
    pub expires_at_ms: u64,
    pub response: Response,
}

/// The whole replicated state, in memory.
#[derive(Default, Debug)]
pub struct State {
    pub meta: Meta,
    kv: BTreeMap<String, KvEntry>,
    /// (deadline, key) of every key with a TTL, for expiry in deadline order.
    kv_ttl: BTreeSet<(u64, String)>,
    idem: BTreeMap<String, IdemRecord>,
    idem_ttl: BTreeSet<(u64, String)>,
}

fn prefixed(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key.as_bytes());
    k
}

fn unprefixed(prefix: &[u8], key: &[u8]) -> storage::Result<String> {
    String::from_utf8(key[prefix.len()..].to_vec())
        .map_err(|_| storage::Error::Corrupt("state key is not UTF-8".into()))
}

impl State {
    /// Rebuilds the in-memory state from the `sm` column family.
    pub fn load(db: &Db) -> storage::Result<State> {
        let mut state = State::default();
        if let Some(bytes) = db.sm_get(META_KEY)? {
            state.meta = codec::decode(&bytes)?;
        }
        for (k, v) in db.sm_scan_prefix(KV_PREFIX)? {
            let key = unprefixed(KV_PREFIX, &k)?;
            let entry: KvEntry = codec::decode(&v)?;
            if let Some(at) = entry.expires_at_ms {
                state.kv_ttl.insert((at, key.clone()));
            }
            state.kv.insert(key, entry);
        }
        for (k, v) in db.sm_scan_prefix(IDEM_PREFIX)? {
            let key = unprefixed(IDEM_PREFIX, &k)?;
            let rec: IdemRecord = codec::decode(&v)?;
            state.idem_ttl.insert((rec.expires_at_ms, key.clone()));
            state.idem.insert(key, rec);
        }
        Ok(state)
    }

    /// Writes the scalars into `batch`; called once per applied batch.
    pub fn persist_meta(&self, batch: &mut SmBatch) {
        batch.put(
            META_KEY.to_vec(),
            codec::encode(&self.meta).expect("meta encodes"),
        );
    }

    /// Applies one request and records its writes in `batch`.
    pub fn apply(&mut self, req: &Request, batch: &mut SmBatch) -> Response {
        self.meta.now_ms = self.meta.now_ms.max(req.stamp_ms);
        self.expire(batch);

        if let Some(ikey) = &req.idempotency_key {
            if let Some(rec) = self.idem.get(ikey) {
                return rec.response.clone();
            }
        }
        let response = self.apply_command(&req.command, batch);
        if let Some(ikey) = &req.idempotency_key {
            let rec = IdemRecord {
                expires_at_ms: self.meta.now_ms.saturating_add(IDEMPOTENCY_WINDOW_MS),
                response: response.clone(),
            };
            batch.put(
                prefixed(IDEM_PREFIX, ikey),
                codec::encode(&rec).expect("record encodes"),
            );
            self.idem_ttl.insert((rec.expires_at_ms, ikey.clone()));
            self.idem.insert(ikey.clone(), rec);
        }
        response
    }

    fn apply_command(&mut self, cmd: &Command, batch: &mut SmBatch) -> Response {
        match cmd {
            Command::InitCluster {
                cluster_id,
                join_token_sha256,
            } => {
                if self.meta.cluster_id.is_some() {
                    return Response::Rejected("cluster already initialized".into());
                }
                self.meta.cluster_id = Some(cluster_id.clone());
                self.meta.join_token_sha256 = Some(join_token_sha256.clone());
                // The initializing node is node 1.
                self.meta.next_node_id = self.meta.next_node_id.max(2);
                Response::Done
            }
            Command::AllocateNodeId => {
                let id = self.meta.next_node_id.max(2);
                self.meta.next_node_id = id + 1;
                Response::NodeId(id)
            }
            Command::Put {
                key,
                value,
                if_revision,
                ttl_ms,
            } => {
                let current = self.kv.get(key);
                let current_rev = current.map(|e| e.revision).unwrap_or(0);
                if let Some(expected) = if_revision {
                    if *expected != current_rev {
                        return Response::Conflict {
                            current_revision: current_rev,
                        };
                    }
                }
                let create_revision = current.map(|e| e.create_revision);
                self.meta.revision += 1;
                let revision = self.meta.revision;
                let expires_at_ms = ttl_ms.map(|t| self.meta.now_ms.saturating_add(t));
                let entry = KvEntry {
                    value: value.clone(),
                    revision,
                    create_revision: create_revision.unwrap_or(revision),
                    expires_at_ms,
                };
                self.insert_kv(key.clone(), entry, batch);
                Response::Put { revision }
            }
            Command::Delete { key, if_revision } => {
                let current_rev = self.kv.get(key).map(|e| e.revision).unwrap_or(0);
                if let Some(expected) = if_revision {
                    if *expected != current_rev {
                        return Response::Conflict {
                            current_revision: current_rev,
                        };
                    }
                }
                if current_rev == 0 {
                    return Response::Delete {
                        revision: self.meta.revision,
                        deleted: false,
                    };
                }
                self.meta.revision += 1;
                self.remove_kv(key, batch);
                Response::Delete {
                    revision: self.meta.revision,
                    deleted: true,
                }
            }
            Command::Tick => Response::Done,
        }
    }

    fn insert_kv(&mut self, key: String, entry: KvEntry, batch: &mut SmBatch) {
        if let Some(old) = self.kv.get(&key) {
            if let Some(at) = old.expires_at_ms {
                self.kv_ttl.remove(&(at, key.clone()));
            }
        }
        if let Some(at) = entry.expires_at_ms {
            self.kv_ttl.insert((at, key.clone()));
        }
        batch.put(
            prefixed(KV_PREFIX, &key),
            codec::encode(&entry).expect("entry encodes"),
        );
        self.kv.insert(key, entry);
    }

    fn remove_kv(&mut self, key: &str, batch: &mut SmBatch) {
        if let Some(old) = self.kv.remove(key) {
            if let Some(at) = old.expires_at_ms {
                self.kv_ttl.remove(&(at, key.to_string()));
            }
            batch.delete(prefixed(KV_PREFIX, key));
        }
    }

    /// Removes everything whose deadline is at or before the replicated clock. Each expired
    /// key is a change and takes the next revision, in deadline order.
    fn expire(&mut self, batch: &mut SmBatch) {
        let now = self.meta.now_ms;
        while let Some((at, key)) = self.kv_ttl.first().cloned() {
            if at > now {
                break;
            }
            self.meta.revision += 1;
            self.remove_kv(&key, batch);
        }
        while let Some((at, key)) = self.idem_ttl.first().cloned() {
            if at > now {
                break;
            }
            self.idem_ttl.remove(&(at, key.clone()));
            self.idem.remove(&key);
            batch.delete(prefixed(IDEM_PREFIX, &key));
        }
    }

    /// The earliest deadline still pending, on the replicated clock. The leader proposes a
    /// `Tick` once its wall clock passes it.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let kv = self.kv_ttl.first().map(|(at, _)| *at);
        let idem = self.idem_ttl.first().map(|(at, _)| *at);
        match (kv, idem) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A key's current entry, or `None` when absent or past its deadline on the replicated
    /// clock.
    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.kv.get(key).filter(|e| !self.is_expired(e))
    }

    fn is_expired(&self, e: &KvEntry) -> bool {
        e.expires_at_ms.is_some_and(|at| at <= self.meta.now_ms)
    }

    /// Up to `limit` live keys starting with `prefix` and greater than `after`, in key order;
    /// the flag says whether more remain.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(&String, &KvEntry)>, bool) {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        let mut items = Vec::new();
        let mut more = false;
        for (k, e) in self.kv.range((start, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if self.is_expired(e) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push((k, e));
        }
        (items, more)
    }

    /// Number of live keys.
    pub fn key_count(&self) -> usize {
        self.kv.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(stamp_ms: u64, command: Command) -> Request {
        Request {
            stamp_ms,
            idempotency_key: None,
            command,
        }
    }

    fn put(key: &str, value: &str, if_revision: Option<u64>, ttl_ms: Option<u64>) -> Command {
        Command::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            if_revision,
            ttl_ms,
        }
    }

    #[test]
    fn revisions_grow_and_cas_compares_key_revision() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        assert_eq!(
            s.apply(&req(1, put("a", "1", Some(0), None)), &mut b),
            Response::Put { revision: 1 }
        );
        assert_eq!(
            s.apply(&req(2, put("b", "1", None, None)), &mut b),
            Response::Put { revision: 2 }
        );
        assert_eq!(
            s.apply(&req(3, put("a", "2", Some(0), None)), &mut b),
            Response::Conflict {
                current_revision: 1
            }
        );
        assert_eq!(
            s.apply(&req(3, put("a", "2", Some(1), None)), &mut b),
            Response::Put { revision: 3 }
        );
        assert_eq!(s.get("a").unwrap().value, b"2");
        assert_eq!(s.get("a").unwrap().create_revision, 1);
        assert_eq!(
            s.apply(
                &req(
                    4,
                    Command::Delete {
                        key: "zz".into(),
                        if_revision: None
                    }
                ),
                &mut b
            ),
            Response::Delete {
                revision: 3,
                deleted: false
            }
        );
        assert_eq!(
            s.apply(
                &req(
                    4,
                    Command::Delete {
                        key: "a".into(),
                        if_revision: Some(3)
                    }
                ),
                &mut b
            ),
            Response::Delete {
                revision: 4,
                deleted: true
            }
        );
        assert!(s.get("a").is_none());
    }

    #[test]
    fn ttl_follows_the_replicated_clock_not_the_stamps_order() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        s.apply(&req(1_000, put("t", "x", None, Some(500))), &mut b);
        // A stamp from a leader whose clock is behind never moves the clock backwards.
        s.apply(&req(900, Command::Tick), &mut b);
        assert!(s.get("t").is_some());
        assert_eq!(s.next_deadline_ms(), Some(1_500));
        s.apply(&req(1_499, Command::Tick), &mut b);
        assert!(s.get("t").is_some());
        s.apply(&req(1_500, Command::Tick), &mut b);
        assert!(s.get("t").is_none());
        assert_eq!(
            s.meta.revision, 2,
            "expiry is a change with its own revision"
        );
        assert_eq!(s.next_deadline_ms(), None);
    }

    #[test]
    fn idempotent_retry_applies_once() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        let mut r = req(10, put("k", "v", None, None));
        r.idempotency_key = Some("abc".into());
        let first = s.apply(&r, &mut b);
        let again = s.apply(&r, &mut b);
        assert_eq!(first, again);
        assert_eq!(s.meta.revision, 1);
        // After the window the key is forgotten and a new write applies.
        r.stamp_ms = 10 + IDEMPOTENCY_WINDOW_MS;
        assert_eq!(s.apply(&r, &mut b), Response::Put { revision: 2 });
    }

    #[test]
    fn list_pages_by_prefix_and_skips_expired() {
        let mut s = State::default();
        let mut b = SmBatch::default();
        for k in ["a/1", "a/2", "a/3", "b/1"] {
            s.apply(&req(1, put(k, "v", None, None)), &mut b);
        }
        s.apply(&req(1, put("a/0", "v", None, Some(5))), &mut b);
        s.apply(&req(10, Command::Tick), &mut b);
        let (items, more) = s.list("a/", None, 2);
        assert_eq!(
            items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        assert!(more);
        let (items, more) = s.list("a/", Some("a/2"), 2);
        assert_eq!(
            items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a/3"]
        );
        assert!(!more);
    }
}
