//! Channels: per-channel event histories with offsets, and presence.
//!
//! Each channel numbers its events from 1 without gaps. History is trimmed from the oldest
//! end only, so the retained events are always one contiguous run of offsets
//! `earliest..=latest`; the bounds (count and age) travel in each publish, and age is measured
//! on the replicated clock, so every replica trims the same events at the same log position.
//! A channel's last offset is kept even when its history is empty, so offsets never repeat.
//!
//! Presence is replicated too: an entry (channel, client, node) lives while its node's lease
//! does. Each node renews its lease while it has present clients; when a lease ends on the
//! replicated clock (a dead node stops renewing) apply removes that node's entries. A lease
//! carries the node process's incarnation: a restarted node's first join or heartbeat drops
//! what its previous process left behind.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use storage::{Db, SmBatch};

use super::primitive::{put_record, Cx, Deadlines, Part, Primitive};
use super::{prefixed, unprefixed, LiveEvent};
use crate::codec;

/// `ch:<channel>` → [`ChannelMeta`].
const CHANNEL_PREFIX: &[u8] = b"ch:";
/// `ce:<channel>\0<offset, 8 bytes big-endian>` → [`ChannelEvent`]. Names contain no control
/// characters, so `\0` ends the channel name.
const EVENT_PREFIX: &[u8] = b"ce:";
/// `pr:<node id BE><channel>\0<client id>` → user.
const PRESENCE_PREFIX: &[u8] = b"pr:";
/// `pl:<node id BE>` → [`NodeLease`].
const LEASE_PREFIX: &[u8] = b"pl:";

/// Most present clients on one channel; a join past it is refused (429).
pub const PRESENCE_PER_CHANNEL_MAX: usize = 10_000;

/// A channel or presence command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelCmd {
    /// Appends an event (JSON text) to a channel's history under the next offset. The
    /// retention travels in the entry so every replica trims the same events, whatever its
    /// own configuration says.
    Publish {
        channel: String,
        data: String,
        retention: ChannelRetention,
    },
    /// A client connected to node `node_id` is present on `channel`. Renews the node's
    /// presence lease like [`ChannelCmd::PresenceHeartbeat`].
    PresenceJoin {
        channel: String,
        client_id: String,
        user: String,
        node_id: u64,
        incarnation: u64,
        lease_ms: u64,
    },
    PresenceLeave {
        channel: String,
        client_id: String,
        node_id: u64,
    },
    /// Renews node `node_id`'s presence lease to `lease_ms` from now. `incarnation` is drawn by
    /// the node's process at start: a new one drops the entries of the previous process.
    /// When a lease ends on the replicated clock, the node's entries are removed.
    PresenceHeartbeat {
        node_id: u64,
        incarnation: u64,
        lease_ms: u64,
    },
    /// Forgets an idle channel (no client present, no event retained), so it no longer counts
    /// against `limits.max_channels`. A later publish starts it again at offset 1.
    Delete { channel: String },
}

/// How much history a channel keeps: at most `max_events` events, none older than
/// `max_age_ms` on the replicated clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRetention {
    pub max_events: u64,
    pub max_age_ms: u64,
}

/// The result of a [`ChannelCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelResult {
    /// An event was appended under this offset.
    Published { offset: u64 },
    /// A presence join or lease renewal was recorded.
    Present,
    /// How many presence entries a leave removed (0 or 1).
    Left(u64),
    /// A bound was reached (present clients on one channel); nothing was applied.
    Limited(String),
    /// The channel was deleted.
    Deleted,
    /// There is no such channel.
    NotFound,
    /// The channel is not idle: `present` clients are present and `retained` events retained.
    NotIdle { present: u64, retained: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEvent {
    pub offset: u64,
    /// JSON text.
    pub data: String,
    /// The replicated clock when the event was applied.
    pub ts_ms: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct ChannelMeta {
    last_offset: u64,
    /// The retention of the latest publish; it also governs trimming by age in between.
    retention: ChannelRetention,
}

#[derive(Debug)]
struct Channel {
    meta: ChannelMeta,
    events: VecDeque<ChannelEvent>,
    /// This channel's entry in `Channels::aging`.
    aging_at: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NodeLease {
    incarnation: u64,
    expires_at_ms: u64,
}

/// A page of a channel's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub events: Vec<ChannelEvent>,
    /// The oldest retained offset; `latest + 1` when nothing is retained.
    pub earliest_offset: u64,
    /// The last offset published, 0 when none.
    pub latest_offset: u64,
}

/// A channel as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: String,
    /// The last offset published, 0 when none.
    pub latest_offset: u64,
    /// The oldest retained offset; `latest + 1` when nothing is retained.
    pub earliest_offset: u64,
    /// Events retained.
    pub retained: u64,
    /// When the last retained event was published (replicated clock), if any is retained.
    pub last_published_ms: Option<u64>,
    /// Clients present, across the nodes.
    pub present: u64,
}

/// One present client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    pub client_id: String,
    pub user: String,
    pub node_id: u64,
}

#[derive(Default, Debug)]
pub(super) struct Channels {
    channels: BTreeMap<String, Channel>,
    /// When the oldest event of each channel ages out.
    aging: Deadlines<String>,
    /// (channel, client id, node id) → user.
    presence: BTreeMap<(String, String, u64), String>,
    /// (node id, channel, client id): a node's entries, removed together when its lease ends.
    by_node: BTreeSet<(u64, String, String)>,
    leases: BTreeMap<u64, NodeLease>,
    /// Each node's lease end.
    lease_ends: Deadlines<u64>,
}

fn event_key(channel: &str, offset: u64) -> Vec<u8> {
    let mut k = prefixed(EVENT_PREFIX, channel);
    k.push(0);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn presence_key(node_id: u64, channel: &str, client_id: &str) -> Vec<u8> {
    let mut k = PRESENCE_PREFIX.to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    k.extend_from_slice(channel.as_bytes());
    k.push(0);
    k.extend_from_slice(client_id.as_bytes());
    k
}

fn lease_key(node_id: u64) -> Vec<u8> {
    let mut k = LEASE_PREFIX.to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    k
}

fn corrupt(what: &str) -> storage::Error {
    storage::Error::Corrupt(format!("bad {what} key in the state machine"))
}

impl Part for Channels {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Channels> {
        let mut c = Channels::default();
        for (k, v) in db.sm_scan_prefix(CHANNEL_PREFIX)? {
            let name = unprefixed(CHANNEL_PREFIX, &k)?;
            let meta: ChannelMeta = codec::decode(&v)?;
            c.channels.insert(
                name,
                Channel {
                    meta,
                    events: VecDeque::new(),
                    aging_at: None,
                },
            );
        }
        for (k, v) in db.sm_scan_prefix(EVENT_PREFIX)? {
            let rest = &k[EVENT_PREFIX.len()..];
            if rest.len() < 9 || rest[rest.len() - 9] != 0 {
                return Err(corrupt("channel event"));
            }
            let name = String::from_utf8(rest[..rest.len() - 9].to_vec())
                .map_err(|_| corrupt("channel event"))?;
            let event: ChannelEvent = codec::decode(&v)?;
            let ch = c
                .channels
                .get_mut(&name)
                .ok_or_else(|| corrupt("channel event without its channel"))?;
            // Keys sort by offset (big-endian), so events arrive in order.
            ch.events.push_back(event);
        }
        let names: Vec<String> = c.channels.keys().cloned().collect();
        for name in names {
            c.index_aging(&name);
        }
        for (k, v) in db.sm_scan_prefix(LEASE_PREFIX)? {
            let id: [u8; 8] = k[LEASE_PREFIX.len()..]
                .try_into()
                .map_err(|_| corrupt("presence lease"))?;
            let node_id = u64::from_be_bytes(id);
            let lease: NodeLease = codec::decode(&v)?;
            c.lease_ends.insert(lease.expires_at_ms, node_id);
            c.leases.insert(node_id, lease);
        }
        for (k, v) in db.sm_scan_prefix(PRESENCE_PREFIX)? {
            let rest = &k[PRESENCE_PREFIX.len()..];
            if rest.len() < 9 {
                return Err(corrupt("presence"));
            }
            let node_id = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            let text = std::str::from_utf8(&rest[8..]).map_err(|_| corrupt("presence"))?;
            let (channel, client_id) = text.split_once('\0').ok_or_else(|| corrupt("presence"))?;
            let user: String = codec::decode(&v)?;
            c.presence
                .insert((channel.into(), client_id.into(), node_id), user);
            c.by_node
                .insert((node_id, channel.into(), client_id.into()));
        }
        Ok(c)
    }

    fn expire(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        while let Some(name) = self.aging.first_due(now) {
            self.trim(&name, now, cx.batch);
            self.index_aging(&name);
        }
        while let Some(node_id) = self.lease_ends.pop_due(now) {
            self.leases.remove(&node_id);
            cx.batch.delete(lease_key(node_id));
            self.drop_node(node_id, cx.batch);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.aging
            .next()
            .into_iter()
            .chain(self.lease_ends.next())
            .min()
    }
}

impl Primitive for Channels {
    type Cmd = ChannelCmd;
    type Output = ChannelResult;

    fn apply(&mut self, cmd: &ChannelCmd, cx: &mut Cx<'_>) -> ChannelResult {
        let now = cx.now();
        match cmd {
            ChannelCmd::Publish {
                channel,
                data,
                retention,
            } => {
                let event = self.publish(channel, data, *retention, now, cx.batch);
                let offset = event.offset;
                cx.emit(|| LiveEvent::Channel {
                    channel: channel.clone(),
                    event,
                });
                ChannelResult::Published { offset }
            }
            ChannelCmd::PresenceJoin {
                channel,
                client_id,
                user,
                node_id,
                incarnation,
                lease_ms,
            } => {
                self.renew(*node_id, *incarnation, *lease_ms, now, cx.batch);
                self.join(channel, client_id, user, *node_id, cx.batch)
            }
            ChannelCmd::PresenceLeave {
                channel,
                client_id,
                node_id,
            } => self.leave(channel, client_id, *node_id, cx.batch),
            ChannelCmd::PresenceHeartbeat {
                node_id,
                incarnation,
                lease_ms,
            } => {
                self.renew(*node_id, *incarnation, *lease_ms, now, cx.batch);
                ChannelResult::Present
            }
            ChannelCmd::Delete { channel } => self.delete(channel, now, cx.batch),
        }
    }

    fn in_txn(cmd: &ChannelCmd) -> bool {
        matches!(cmd, ChannelCmd::Publish { .. })
    }
}

impl Channels {
    fn delete(&mut self, name: &str, now: u64, batch: &mut SmBatch) -> ChannelResult {
        if !self.channels.contains_key(name) {
            return ChannelResult::NotFound;
        }
        // Events past their age are gone already for readers; drop them before judging.
        self.trim(name, now, batch);
        self.index_aging(name);
        let present = self.present_count(name);
        let retained = self.channels.get(name).map_or(0, |c| c.events.len() as u64);
        if present > 0 || retained > 0 {
            return ChannelResult::NotIdle { present, retained };
        }
        self.channels.remove(name);
        batch.delete(prefixed(CHANNEL_PREFIX, name));
        ChannelResult::Deleted
    }

    /// Re-indexes when `channel`'s oldest event ages out.
    fn index_aging(&mut self, name: &str) {
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        let at = ch
            .events
            .front()
            .map(|first| first.ts_ms.saturating_add(ch.meta.retention.max_age_ms));
        if at == ch.aging_at {
            return;
        }
        if let Some(old) = std::mem::replace(&mut ch.aging_at, at) {
            self.aging.remove(old, &name.to_string());
        }
        if let Some(at) = at {
            self.aging.insert(at, name.to_string());
        }
    }

    fn save_meta(&self, name: &str, batch: &mut SmBatch) {
        if let Some(ch) = self.channels.get(name) {
            put_record(batch, prefixed(CHANNEL_PREFIX, name), &ch.meta);
        }
    }

    /// Drops the oldest events of `name` past its count or age bound.
    fn trim(&mut self, name: &str, now: u64, batch: &mut SmBatch) {
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        let r = ch.meta.retention;
        while let Some(first) = ch.events.front() {
            let over_count = ch.events.len() as u64 > r.max_events;
            let too_old = first.ts_ms.saturating_add(r.max_age_ms) <= now;
            if !over_count && !too_old {
                break;
            }
            batch.delete(event_key(name, first.offset));
            ch.events.pop_front();
        }
    }

    /// Appends an event; answers it.
    fn publish(
        &mut self,
        name: &str,
        data: &str,
        retention: ChannelRetention,
        now: u64,
        batch: &mut SmBatch,
    ) -> ChannelEvent {
        let ch = self.channels.entry(name.to_string()).or_insert(Channel {
            meta: ChannelMeta {
                last_offset: 0,
                retention,
            },
            events: VecDeque::new(),
            aging_at: None,
        });
        ch.meta.last_offset += 1;
        ch.meta.retention = retention;
        let event = ChannelEvent {
            offset: ch.meta.last_offset,
            data: data.to_string(),
            ts_ms: now,
        };
        put_record(batch, event_key(name, event.offset), &event);
        ch.events.push_back(event.clone());
        self.save_meta(name, batch);
        self.trim(name, now, batch);
        self.index_aging(name);
        event
    }

    /// Renews `node_id`'s lease; a new incarnation first drops the previous process's entries.
    fn renew(
        &mut self,
        node_id: u64,
        incarnation: u64,
        lease_ms: u64,
        now: u64,
        batch: &mut SmBatch,
    ) {
        if let Some(old) = self.leases.get(&node_id).copied() {
            self.lease_ends.remove(old.expires_at_ms, &node_id);
            if old.incarnation != incarnation {
                self.drop_node(node_id, batch);
            }
        }
        let lease = NodeLease {
            incarnation,
            expires_at_ms: now.saturating_add(lease_ms),
        };
        self.lease_ends.insert(lease.expires_at_ms, node_id);
        self.leases.insert(node_id, lease);
        put_record(batch, lease_key(node_id), &lease);
    }

    fn drop_node(&mut self, node_id: u64, batch: &mut SmBatch) {
        let start = (node_id, String::new(), String::new());
        let entries: Vec<(u64, String, String)> = self
            .by_node
            .range(start..)
            .take_while(|(n, _, _)| *n == node_id)
            .cloned()
            .collect();
        for (n, channel, client) in entries {
            self.by_node.remove(&(n, channel.clone(), client.clone()));
            batch.delete(presence_key(n, &channel, &client));
            self.presence.remove(&(channel, client, n));
        }
    }

    /// Records a present client; the caller has renewed its node's lease.
    fn join(
        &mut self,
        channel: &str,
        client_id: &str,
        user: &str,
        node_id: u64,
        batch: &mut SmBatch,
    ) -> ChannelResult {
        let key = (channel.to_string(), client_id.to_string(), node_id);
        if !self.presence.contains_key(&key)
            && self.present(channel).len() >= PRESENCE_PER_CHANNEL_MAX
        {
            return ChannelResult::Limited(format!(
                "channel {channel:?} has {PRESENCE_PER_CHANNEL_MAX} present clients"
            ));
        }
        put_record(batch, presence_key(node_id, channel, client_id), &user);
        self.by_node
            .insert((node_id, channel.to_string(), client_id.to_string()));
        self.presence.insert(key, user.to_string());
        ChannelResult::Present
    }

    fn leave(
        &mut self,
        channel: &str,
        client_id: &str,
        node_id: u64,
        batch: &mut SmBatch,
    ) -> ChannelResult {
        let removed = self
            .presence
            .remove(&(channel.to_string(), client_id.to_string(), node_id))
            .is_some();
        if removed {
            self.by_node
                .remove(&(node_id, channel.to_string(), client_id.to_string()));
            batch.delete(presence_key(node_id, channel, client_id));
        }
        ChannelResult::Left(u64::from(removed))
    }

    /// Events after offset `since`, at most `limit`; `None` for a channel never published.
    pub(super) fn history(&self, name: &str, since: u64, limit: usize) -> Option<History> {
        let ch = self.channels.get(name)?;
        let latest = ch.meta.last_offset;
        let earliest = ch.events.front().map(|e| e.offset).unwrap_or(latest + 1);
        // Offsets are contiguous, so the first event after `since` is found by arithmetic
        // (`since` comes from a client: any u64).
        let skip =
            usize::try_from(since.saturating_add(1).saturating_sub(earliest)).unwrap_or(usize::MAX);
        let events = ch.events.iter().skip(skip).take(limit).cloned().collect();
        Some(History {
            events,
            earliest_offset: earliest,
            latest_offset: latest,
        })
    }

    /// The last offset of `name`, 0 for a channel never published.
    pub(super) fn latest_offset(&self, name: &str) -> u64 {
        self.channels
            .get(name)
            .map(|c| c.meta.last_offset)
            .unwrap_or(0)
    }

    /// Present clients of `channel`, by client id.
    pub(super) fn present(&self, channel: &str) -> Vec<Presence> {
        let start = (channel.to_string(), String::new(), 0);
        self.presence
            .range(start..)
            .take_while(|((c, _, _), _)| c == channel)
            .map(|((_, client, node), user)| Presence {
                client_id: client.clone(),
                user: user.clone(),
                node_id: *node,
            })
            .collect()
    }

    /// Channels published or with clients present, by name from `prefix` (after `after`).
    pub(super) fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ChannelSummary>, bool) {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        // Names of both maps, merged in order: the published channels, and the channels with
        // someone present (presence is keyed by channel first).
        let mut names: std::collections::BTreeSet<&String> = self
            .channels
            .range::<String, _>((start.clone(), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit + 1)
            .collect();
        let pres_start = match &start {
            Bound::Excluded(a) => {
                Bound::Excluded((a.clone(), String::from('\u{10FFFF}'), u64::MAX))
            }
            Bound::Included(p) => Bound::Included((p.clone(), String::new(), 0)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut last: Option<&String> = None;
        for ((c, _, _), _) in self.presence.range((pres_start, Bound::Unbounded)) {
            if !c.starts_with(prefix) || names.len() > limit && names.last().is_some_and(|l| c > *l)
            {
                break;
            }
            if last != Some(c) {
                names.insert(c);
                last = Some(c);
            }
        }
        let more = names.len() > limit;
        let items = names
            .into_iter()
            .filter(|n| !matches!(&start, Bound::Excluded(a) if *n <= a))
            .take(limit)
            .map(|name| {
                let ch = self.channels.get(name);
                let latest = ch.map_or(0, |c| c.meta.last_offset);
                ChannelSummary {
                    name: name.clone(),
                    latest_offset: latest,
                    earliest_offset: ch
                        .and_then(|c| c.events.front())
                        .map_or(latest + 1, |e| e.offset),
                    retained: ch.map_or(0, |c| c.events.len() as u64),
                    last_published_ms: ch.and_then(|c| c.events.back()).map(|e| e.ts_ms),
                    present: self.present_count(name),
                }
            })
            .collect();
        (items, more)
    }

    fn present_count(&self, channel: &str) -> u64 {
        let start = (channel.to_string(), String::new(), 0);
        self.presence
            .range(start..)
            .take_while(|((c, _, _), _)| c == channel)
            .count() as u64
    }

    pub(super) fn has_channel(&self, name: &str) -> bool {
        self.channels.contains_key(name)
    }

    pub(super) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub(super) fn retained_events(&self) -> usize {
        self.channels.values().map(|c| c.events.len()).sum()
    }
}
