//! Pub/sub on stackd channels: `PUBLISH` appends to a channel through the log, so a message
//! published on one node reaches subscribers on every node; `SUBSCRIBE` and `PSUBSCRIBE`
//! listen to the events this node applies.
//!
//! A channel event's data is JSON: a message (UTF-8 text) is published as a JSON string, and
//! delivered as that string's text; an event published through the HTTP or WebSocket API with
//! other JSON is delivered as its JSON text.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use raft::state::LiveEvent;
use raft::state_machine::LiveBatch;
use tokio::sync::broadcast;

use super::codec::Reply;
use super::conn::{error_reply, text, Conn};
use crate::auth::{Caller, Op as Access, Resource};
use crate::cluster::now_ms;

/// Most channels and patterns one connection listens to.
pub(super) const SUBSCRIPTIONS_MAX: usize = 1024;

/// How many connections of this node listen to each channel and pattern: `PUBLISH` answers
/// the receivers on the node that took it (as Redis Cluster does), not the whole cluster's.
#[derive(Default)]
pub(crate) struct Listeners {
    channels: Mutex<HashMap<String, usize>>,
    patterns: Mutex<HashMap<String, usize>>,
}

fn add(map: &Mutex<HashMap<String, usize>>, name: &str) {
    *map.lock()
        .expect("listeners")
        .entry(name.to_string())
        .or_default() += 1;
}

fn remove(map: &Mutex<HashMap<String, usize>>, name: &str) {
    let mut m = map.lock().expect("listeners");
    if let Some(n) = m.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            m.remove(name);
        }
    }
}

impl Listeners {
    fn receivers(&self, channel: &str) -> usize {
        let direct = self
            .channels
            .lock()
            .expect("listeners")
            .get(channel)
            .copied()
            .unwrap_or(0);
        let by_pattern: usize = self
            .patterns
            .lock()
            .expect("listeners")
            .iter()
            .filter(|(p, _)| glob_match(p.as_bytes(), channel.as_bytes()))
            .map(|(_, n)| n)
            .sum();
        direct + by_pattern
    }
}

/// A connection's channels and patterns, and its feed of applied events while it has any.
#[derive(Default)]
pub(crate) struct Subscriptions {
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
    live: Option<broadcast::Receiver<LiveBatch>>,
}

impl Subscriptions {
    pub(super) fn active(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    fn count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    pub(super) fn clear(&mut self, listeners: &Listeners) {
        for c in std::mem::take(&mut self.channels) {
            remove(&listeners.channels, &c);
        }
        for p in std::mem::take(&mut self.patterns) {
            remove(&listeners.patterns, &p);
        }
        self.live = None;
    }
}

/// Whether `s` matches the Redis glob `pattern`: `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and `\`
/// escapes. Runs in time proportional to both lengths' product at worst (no recursion).
pub(super) fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, s[i]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == s[i]).then_some(p + 2),
            Some(&c) => (c == s[i]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                i += 1;
            }
            (None, Some((sp, si))) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at `start` against `c`: where the pattern goes on if it matches.
fn class(pattern: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut p = start + 1;
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut matched = false;
    while p < pattern.len() && pattern[p] != b']' {
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            matched |= pattern[p + 1] == c;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' && pattern[p + 2] != b']' {
            let (a, b) = (pattern[p], pattern[p + 2]);
            matched |= a.min(b) <= c && c <= a.max(b);
            p += 3;
        } else {
            matched |= pattern[p] == c;
            p += 1;
        }
    }
    // An unclosed class runs to the pattern's end, as in Redis.
    (matched != negate).then_some((p + 1).min(pattern.len()))
}

/// The part of a glob pattern before its first special character: every name it matches
/// starts with it.
pub(super) fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// A message as a subscriber receives it: the text of a JSON string, else the JSON itself.
fn payload(data: &str) -> Bytes {
    match serde_json::from_str::<String>(data) {
        Ok(s) => Bytes::from(s),
        Err(_) => Bytes::copy_from_slice(data.as_bytes()),
    }
}

impl Conn {
    pub(super) fn listening(&self) -> bool {
        self.subs.live.is_some()
    }

    /// The next batch of applied events (pending while the connection subscribes to nothing).
    pub(super) async fn next_live(&mut self) -> Result<LiveBatch, broadcast::error::RecvError> {
        match &mut self.subs.live {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Pushes the messages of `batch` this connection listens to onto `out`. A connection
    /// whose token was deleted or expired meanwhile gets an error instead, and stops listening.
    pub(super) fn deliver(&mut self, batch: &LiveBatch, out: &mut BytesMut) {
        let LiveBatch::Events(events) = batch else {
            // A snapshot replaced the state: what was published in between is not replayed
            // (pub/sub delivers at most once, as in Redis; channel history has it).
            return;
        };
        let mut checked = false;
        for e in events.iter() {
            let LiveEvent::Channel { channel, event } = e else {
                continue;
            };
            let direct = self.subs.channels.contains(channel);
            let patterns: Vec<&String> = self
                .subs
                .patterns
                .iter()
                .filter(|p| glob_match(p.as_bytes(), channel.as_bytes()))
                .collect();
            if !direct && patterns.is_empty() {
                continue;
            }
            if !checked {
                checked = true;
                if let Some(caller) = self.caller().filter(|c| !matches!(c, Caller::Anyone)) {
                    if crate::auth::recheck(&self.resp.st, caller, now_ms()).is_none() {
                        Reply::Error("NOAUTH the token expired or was deleted; AUTH again".into())
                            .encode(self.proto(), out);
                        self.subs.clear(&self.resp.listeners);
                        return;
                    }
                }
            }
            let data = payload(&event.data);
            if direct {
                Reply::Push(vec![
                    Reply::text("message"),
                    Reply::text(channel.clone()),
                    Reply::Bulk(data.clone()),
                ])
                .encode(self.proto(), out);
            }
            for p in patterns {
                Reply::Push(vec![
                    Reply::text("pmessage"),
                    Reply::text(p.clone()),
                    Reply::text(channel.clone()),
                    Reply::Bulk(data.clone()),
                ])
                .encode(self.proto(), out);
            }
        }
    }

    /// `SUBSCRIBE`, `PSUBSCRIBE`, `UNSUBSCRIBE`, `PUNSUBSCRIBE`: one confirmation per name.
    pub(super) fn pubsub(
        &mut self,
        command: &'static str,
        names: &[Bytes],
    ) -> Result<Reply, Reply> {
        let names = names
            .iter()
            .map(|n| {
                let n = text(n, "a channel")?;
                crate::api::validate_name("channel", &n).map_err(error_reply)?;
                Ok(n)
            })
            .collect::<Result<Vec<_>, Reply>>()?;
        let pattern = command.starts_with('p');
        let replies = if command.ends_with("unsubscribe") {
            self.unsubscribe(command, pattern, names)
        } else {
            self.subscribe(command, pattern, names)?
        };
        Ok(Reply::Many(replies))
    }

    /// The connection's channels (or patterns) and who on this node listens to each.
    fn names_and_counts(
        &mut self,
        pattern: bool,
    ) -> (&mut BTreeSet<String>, &Mutex<HashMap<String, usize>>) {
        if pattern {
            (&mut self.subs.patterns, &self.resp.listeners.patterns)
        } else {
            (&mut self.subs.channels, &self.resp.listeners.channels)
        }
    }

    /// The confirmation of one (un)subscription: the command, the name, how many remain.
    fn confirmation(&self, command: &'static str, name: String) -> Reply {
        Reply::Push(vec![
            Reply::text(command),
            Reply::text(name),
            Reply::Int(self.subs.count()),
        ])
    }

    /// `UNSUBSCRIBE`/`PUNSUBSCRIBE` of `names`, or of every channel (pattern) when none.
    fn unsubscribe(
        &mut self,
        command: &'static str,
        pattern: bool,
        names: Vec<String>,
    ) -> Vec<Reply> {
        let names: Vec<String> = if names.is_empty() {
            self.names_and_counts(pattern).0.iter().cloned().collect()
        } else {
            names
        };
        if names.is_empty() {
            // Nothing to leave: one confirmation with no name and, as Redis answers, the
            // count of subscriptions of the other kind still held.
            return vec![Reply::Push(vec![
                Reply::text(command),
                Reply::Nil,
                Reply::Int(self.subs.count()),
            ])];
        }
        let mut replies = Vec::with_capacity(names.len());
        for n in names {
            let (set, map) = self.names_and_counts(pattern);
            if set.remove(&n) {
                remove(map, &n);
            }
            replies.push(self.confirmation(command, n));
        }
        if !self.subs.active() {
            self.subs.live = None;
        }
        replies
    }

    /// `SUBSCRIBE`/`PSUBSCRIBE` of `names`, once the caller may listen to each.
    fn subscribe(
        &mut self,
        command: &'static str,
        pattern: bool,
        names: Vec<String>,
    ) -> Result<Vec<Reply>, Reply> {
        for n in &names {
            if pattern {
                let prefix = literal_prefix(n);
                let allowed = self.caller().is_some_and(|c| {
                    c.may_all(&self.resp.st, Resource::Channels, prefix, Access::Subscribe)
                });
                if !allowed {
                    return Err(Reply::Error(format!(
                        "NOPERM this token may not subscribe to every channel under {prefix:?}"
                    )));
                }
            } else {
                self.may(Resource::Channels, n, Access::Subscribe)?;
            }
        }
        let new: BTreeSet<&String> = names.iter().collect();
        if self.subs.count() as usize + new.len() > SUBSCRIPTIONS_MAX {
            return Err(Reply::err(format!(
                "a connection listens to at most {SUBSCRIPTIONS_MAX} channels and patterns"
            )));
        }
        // Listen before confirming: a message published after the confirmation is delivered.
        if self.subs.live.is_none() {
            self.subs.live = Some(self.resp.st.hub.subscribe());
        }
        let mut replies = Vec::with_capacity(names.len());
        for n in names {
            let (set, map) = self.names_and_counts(pattern);
            if set.insert(n.clone()) {
                add(map, &n);
            }
            replies.push(self.confirmation(command, n));
        }
        Ok(replies)
    }

    /// `PUBLISH channel message`: appended to the channel through the log; answers how many
    /// connections of this node listen to it.
    pub(super) async fn publish(
        &mut self,
        channel: &Bytes,
        message: &Bytes,
    ) -> Result<Reply, Reply> {
        let channel = text(channel, "a channel")?;
        crate::api::validate_name("channel", &channel).map_err(error_reply)?;
        let message = std::str::from_utf8(message)
            .map_err(|_| Reply::err("a message must be UTF-8 text: stackd channels carry JSON"))?;
        self.may(Resource::Channels, &channel, Access::Publish)?;
        let cmd = crate::api::channels::publish_command(
            &self.resp.st,
            channel.clone(),
            &serde_json::Value::String(message.to_string()),
        )
        .map_err(error_reply)?;
        crate::service::propose(&self.resp.st.cluster, cmd, None)
            .await
            .map_err(|e| error_reply(e.into()))?;
        Ok(Reply::Int(self.resp.listeners.receivers(&channel) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_does() {
        let yes = [
            ("*", ""),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("news.*", "news.sport"),
            ("a\\*b", "a*b"),
            ("*a*b*c*", "xxaxxbxxcxx"),
        ];
        for (p, s) in yes {
            assert!(glob_match(p.as_bytes(), s.as_bytes()), "{p} ~ {s}");
        }
        let no = [
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "axb"),
            ("news.*", "new.sport"),
            ("abc", "abcd"),
        ];
        for (p, s) in no {
            assert!(!glob_match(p.as_bytes(), s.as_bytes()), "{p} !~ {s}");
        }
        // Many stars against a long miss stays quick (no exponential backtracking).
        let p = "*a".repeat(50);
        assert!(!glob_match(p.as_bytes(), "a".repeat(49).as_bytes()));
        assert_eq!(literal_prefix("user:*:name"), "user:");
        assert_eq!(literal_prefix("plain"), "plain");
    }
}
