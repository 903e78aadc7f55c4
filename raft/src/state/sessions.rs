//! User sessions: JSON data with a sliding expiry on the replicated clock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use super::prefixed;
use super::primitive::{put_record, records, Cx, Deadlines, Part, Primitive};

const PREFIX: &[u8] = b"s:";

/// Largest session data after a merge, in bytes of JSON text.
pub const MAX_SESSION_DATA_BYTES: usize = 1 << 20;

/// A session command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCmd {
    /// Creates a session. `id` is drawn by the proposer (unguessable) and carried here.
    Create {
        id: String,
        user: String,
        /// JSON object text.
        data: String,
        ttl_ms: u64,
    },
    /// Slides a session's expiry to `ttl_ms` from now.
    Touch {
        id: String,
    },
    /// Merges `patch` (JSON object text, RFC 7396 merge patch) into the session data and
    /// slides its expiry.
    Update {
        id: String,
        patch: String,
    },
    Delete {
        id: String,
    },
    /// Deletes every session of `user` (log out everywhere).
    DeleteUser {
        user: String,
    },
}

/// The result of a [`SessionCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionResult {
    /// A session was created with this id (a retried create answers the first id).
    Created {
        id: String,
        expires_in_ms: u64,
    },
    /// The session exists (touched or updated) and expires this long after apply.
    Alive {
        expires_in_ms: u64,
    },
    /// How many sessions were deleted.
    Deleted(u64),
    NotFound,
    /// The command cannot apply (e.g. a patch that is not JSON).
    Rejected(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub user: String,
    /// A JSON object, as text.
    pub data: String,
    pub created_at_ms: u64,
    /// The sliding window: each touch or update moves the expiry to `ttl_ms` from then.
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
}

#[derive(Default, Debug)]
pub(super) struct Sessions {
    entries: BTreeMap<String, SessionEntry>,
    by_user: BTreeSet<(String, String)>,
    ttl: Deadlines<String>,
}

impl Part for Sessions {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Sessions> {
        let mut s = Sessions::default();
        for (id, entry) in records::<SessionEntry>(db, PREFIX)? {
            s.index(&id, &entry);
            s.entries.insert(id, entry);
        }
        Ok(s)
    }

    fn expire(&mut self, cx: &mut Cx<'_>) {
        while let Some(id) = self.ttl.first_due(cx.now()) {
            self.remove(&id, cx.batch);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.ttl.next()
    }
}

impl Primitive for Sessions {
    type Cmd = SessionCmd;
    type Output = SessionResult;

    fn apply(&mut self, cmd: &SessionCmd, cx: &mut Cx<'_>) -> SessionResult {
        let now = cx.now();
        match cmd {
            SessionCmd::Create {
                id,
                user,
                data,
                ttl_ms,
            } => self.create(id, user, data, *ttl_ms, now, cx.batch),
            SessionCmd::Touch { id } => self.touch(id, None, now, cx.batch),
            SessionCmd::Update { id, patch } => self.touch(id, Some(patch), now, cx.batch),
            SessionCmd::Delete { id } => {
                if self.remove(id, cx.batch) {
                    SessionResult::Deleted(1)
                } else {
                    SessionResult::NotFound
                }
            }
            SessionCmd::DeleteUser { user } => {
                let ids = self.ids_of(user);
                for id in &ids {
                    self.remove(id, cx.batch);
                }
                SessionResult::Deleted(ids.len() as u64)
            }
        }
    }
}

impl Sessions {
    fn index(&mut self, id: &str, e: &SessionEntry) {
        self.by_user.insert((e.user.clone(), id.to_string()));
        self.ttl.insert(e.expires_at_ms, id.to_string());
    }

    fn unindex(&mut self, id: &str, e: &SessionEntry) {
        self.by_user.remove(&(e.user.clone(), id.to_string()));
        self.ttl.remove(e.expires_at_ms, &id.to_string());
    }

    fn store(&mut self, id: &str, entry: SessionEntry, batch: &mut SmBatch) {
        if let Some(old) = self.entries.remove(id) {
            self.unindex(id, &old);
        }
        self.index(id, &entry);
        put_record(batch, prefixed(PREFIX, id), &entry);
        self.entries.insert(id.to_string(), entry);
    }

    fn remove(&mut self, id: &str, batch: &mut SmBatch) -> bool {
        let Some(old) = self.entries.remove(id) else {
            return false;
        };
        self.unindex(id, &old);
        batch.delete(prefixed(PREFIX, id));
        true
    }

    fn create(
        &mut self,
        id: &str,
        user: &str,
        data: &str,
        ttl_ms: u64,
        now: u64,
        batch: &mut SmBatch,
    ) -> SessionResult {
        if self.entries.contains_key(id) {
            // Ids are 128 random bits: a clash means a replayed proposal, not a new session.
            return SessionResult::Rejected("session id already exists".into());
        }
        let entry = SessionEntry {
            user: user.to_string(),
            data: data.to_string(),
            created_at_ms: now,
            ttl_ms,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        self.store(id, entry, batch);
        SessionResult::Created {
            id: id.to_string(),
            expires_in_ms: ttl_ms,
        }
    }

    /// Slides the expiry and, with `patch`, merges it into the data.
    fn touch(
        &mut self,
        id: &str,
        patch: Option<&str>,
        now: u64,
        batch: &mut SmBatch,
    ) -> SessionResult {
        let Some(mut entry) = self.entries.get(id).cloned() else {
            return SessionResult::NotFound;
        };
        if let Some(patch) = patch {
            match merge_patch(&entry.data, patch) {
                Ok(data) if data.len() > MAX_SESSION_DATA_BYTES => {
                    return SessionResult::Rejected(format!(
                        "merged session data would be {} bytes, over {MAX_SESSION_DATA_BYTES}",
                        data.len()
                    ))
                }
                Ok(data) => entry.data = data,
                Err(e) => return SessionResult::Rejected(e),
            }
        }
        entry.expires_at_ms = now.saturating_add(entry.ttl_ms);
        let expires_in_ms = entry.ttl_ms;
        self.store(id, entry, batch);
        SessionResult::Alive { expires_in_ms }
    }

    pub(super) fn get(&self, id: &str, now: u64) -> Option<&SessionEntry> {
        self.entries.get(id).filter(|e| e.expires_at_ms > now)
    }

    pub(super) fn count_of(&self, user: &str) -> usize {
        let start = (user.to_string(), String::new());
        self.by_user
            .range(start..)
            .take_while(|(u, _)| u == user)
            .count()
    }

    pub(super) fn ids_of(&self, user: &str) -> Vec<String> {
        let start = (user.to_string(), String::new());
        self.by_user
            .range(start..)
            .take_while(|(u, _)| u == user)
            .map(|(_, id)| id.clone())
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// RFC 7396 merge patch of two JSON object texts.
fn merge_patch(data: &str, patch: &str) -> Result<String, String> {
    let mut target: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("stored data is not JSON: {e}"))?;
    let patch: serde_json::Value =
        serde_json::from_str(patch).map_err(|e| format!("patch is not JSON: {e}"))?;
    merge(&mut target, patch);
    Ok(target.to_string())
}

fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    use serde_json::Value;
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let obj = target.as_object_mut().expect("object");
    for (k, v) in patch {
        if v.is_null() {
            obj.remove(&k);
        } else {
            merge(obj.entry(k).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_patch;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let out = merge_patch(
            r#"{"a":"b","c":{"d":"e","f":"g"}}"#,
            r#"{"a":"z","c":{"f":null},"n":[1]}"#,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":"z","c":{"d":"e"},"n":[1]}),
            "{out}"
        );
    }
}
