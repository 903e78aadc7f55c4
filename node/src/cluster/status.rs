//! `GET /v1/cluster`: Raft's figures, every member with its liveness and metadata as this
//! node's gossip sees them and how the leader reaches it, and the autopilot.

use std::collections::BTreeMap;

use raft::{NodeId, NodeInfo};
use transport::{MemberReach, PeerView};

use super::{load_avg_1m, Cluster};
use crate::api::model::{
    Alarm, AuthMode, Autopilot, AutopilotAction, ClusterStatus, Load, Member, MemberRole,
    StorageUse,
};

/// How the leader reaches one member: reachable within the contact window, the age of its
/// last acknowledgement, its replication lag. All `None` when not known here.
type LeaderView = (Option<bool>, Option<u64>, Option<u64>);

impl Cluster {
    /// The cluster as this node sees it; `inflight_requests` is this node's API load.
    pub fn status(&self, inflight_requests: u64) -> ClusterStatus {
        let m = self.metrics();
        let membership = &m.membership;
        let local = LocalFigures {
            applied: m.applied,
            load: Load {
                inflight_requests: Some(inflight_requests),
                load_avg_1m: Some(load_avg_1m()),
            },
            gossip: self.gossip.snapshot(),
        };
        let reach = self.leader_reach();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let role = if membership.is_voter(id) {
                    MemberRole::Voter
                } else {
                    MemberRole::Learner
                };
                self.member(id, node, role, &local, self.leader_view(&reach, id))
            })
            .collect();
        let (cluster_id, revision, compact_revision, storage) = {
            let s = self.state();
            (
                s.meta.cluster_id.clone(),
                s.meta.revision,
                s.compact_revision(),
                StorageUse {
                    data_bytes: s.data_bytes(),
                    quota_bytes: s.quota_bytes(),
                },
            )
        };
        let alarms = if storage.quota_bytes > 0 && storage.data_bytes >= storage.quota_bytes {
            vec![Alarm::Nospace]
        } else {
            Vec::new()
        };
        let view = super::RaftView::of(&m);
        ClusterStatus {
            cluster_id,
            node_id: self.id,
            leader_id: view.leader,
            term: view.term,
            commit_index: view.commit_index,
            applied_index: view.applied_index,
            snapshot_index: view.snapshot_index,
            purged_index: view.purged_index,
            revision,
            compact_revision,
            members,
            autopilot: self.autopilot_status(),
            alarms,
            storage,
            auth: if self.config().api.insecure_no_auth {
                AuthMode::Off
            } else {
                AuthMode::On
            },
        }
    }

    /// The browser origins of the members' APIs (`http://` or, with api.tls_cert or
    /// api.tls_from_cluster_ca, `https://` and their `api_addr`): a page of the admin UI served by one member calls
    /// the others when its own stops answering, so each member accepts them as origins.
    pub fn member_origins(&self) -> Vec<String> {
        let api = &self.config().api;
        let scheme = if api.tls_cert.is_some() || api.tls_from_cluster_ca {
            "https"
        } else {
            "http"
        };
        self.metrics()
            .membership
            .nodes()
            .map(|(_, node)| format!("{scheme}://{}", node.api_addr))
            .collect()
    }

    /// One member: this node's own figures for itself, else what gossip last said of it.
    fn member(
        &self,
        id: NodeId,
        node: &NodeInfo,
        role: MemberRole,
        local: &LocalFigures,
        (leader_reaches, leader_contact_ms_ago, replication_lag): LeaderView,
    ) -> Member {
        let (gossip, gossip_changed_ms_ago, applied_index, load) = if id == self.id {
            ("alive", None, local.applied, local.load.clone())
        } else if let Some(p) = local.gossip.get(&id) {
            let (applied, load) = match &p.meta {
                Some((meta, _)) => (
                    Some(meta.applied_index),
                    Load {
                        inflight_requests: Some(meta.inflight_requests),
                        load_avg_1m: Some(meta.load_avg_1m),
                    },
                ),
                None => (None, Load::default()),
            };
            let age = p.since.elapsed().as_millis() as u64;
            (p.liveness.as_str(), Some(age), applied, load)
        } else {
            // Not heard of in gossip yet (just joined, or this node just started).
            ("unknown", None, None, Load::default())
        };
        Member {
            id,
            api_addr: node.api_addr.clone(),
            cluster_addr: node.cluster_addr.clone(),
            role,
            gossip: gossip.to_string(),
            gossip_changed_ms_ago,
            applied_index,
            load,
            leader_reaches,
            leader_contact_ms_ago,
            replication_lag,
        }
    }

    /// How the leader reaches `id`, from its own view or the one it publishes in gossip.
    fn leader_view(&self, reach: &Option<(NodeId, Vec<MemberReach>)>, id: NodeId) -> LeaderView {
        let fresh = self.contact_window().as_millis() as u64;
        match reach {
            Some((leader, _)) if *leader == id => (Some(true), Some(0), Some(0)),
            Some((_, members)) => match members.iter().find(|r| r.node == id) {
                Some(r) => (
                    Some(r.acked_ms_ago.is_some_and(|a| a <= fresh)),
                    r.acked_ms_ago,
                    r.lag,
                ),
                None => (None, None, None),
            },
            None => (None, None, None),
        }
    }

    fn autopilot_status(&self) -> Autopilot {
        let actions = self
            .autopilot_actions()
            .into_iter()
            .map(|a| AutopilotAction {
                at_ms: a.at_ms,
                action: a.action.to_string(),
                node: a.node,
                reason: a.reason,
            })
            .collect();
        Autopilot {
            target_voters: self.config.raft.target_voters as u64,
            replace_dead: self.config.autopilot.replace_dead,
            dead_grace_ms: self.config.autopilot.dead_grace_ms,
            actions,
        }
    }
}

/// What this node knows first-hand: its own figures, shown for itself instead of its gossip
/// metadata, and its gossip view of the others (read once per status).
struct LocalFigures {
    applied: Option<u64>,
    load: Load,
    gossip: BTreeMap<NodeId, PeerView>,
}
