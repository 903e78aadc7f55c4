//! Who is a member: the check the transport makes before it serves a peer or calls one
//! (`transport::admission`), and the key sync that lets a node whose state lags (or that just
//! joined and holds no state yet) learn the keys of members it does not know.
//!
//! A peer's certificate names node N and holds a key. It is a member's if N was not removed
//! and the key is the one the cluster pinned for N when it admitted N (`ClusterCmd::Found`,
//! `ClusterCmd::AdmitNode`). The applied state decides; what it does not hold yet (a node
//! admitted after this node's last applied entry) is asked of members this node does know,
//! whose certificates pass the same check, or, on a node that knows no member yet, of the
//! member it joined through (remembered in the data dir), trusted as it was for the join: by
//! the CA its token names.
//! Members never change a pinned key, so what is learnt only adds to what the state will say.

use super::*;

/// How often, at most, the key sync asks members.
const KEY_SYNC_EVERY: Duration = Duration::from_millis(500);
/// How long one member has to answer the key sync.
const KEY_SYNC_TIMEOUT: Duration = Duration::from_secs(2);

/// The member check of this node, over its applied state.
pub struct Peers {
    state: Arc<RwLock<State>>,
    /// The cluster address this node joined through, if it joined.
    joined_through: Option<String>,
    /// Keys and removals members told this node of, for nodes its state does not know yet.
    learned: Mutex<NodeKeys>,
    /// Set when a peer's certificate named a node of unknown key: the key sync should run.
    wanted: tokio::sync::Notify,
}

impl Peers {
    pub fn new(state: Arc<RwLock<State>>, joined_through: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            state,
            joined_through,
            learned: Mutex::new(NodeKeys::default()),
            wanted: tokio::sync::Notify::new(),
        })
    }

    /// The node keys and removed nodes of the applied state.
    pub fn applied(&self) -> NodeKeys {
        let st = self.state.read().expect("state lock");
        NodeKeys {
            keys: st.security().node_keys.clone(),
            removed: st.security().removed_nodes.clone(),
        }
    }

    /// Keeps what a member said of nodes this node does not know: their keys (a key already
    /// known is never replaced) and their removals.
    pub fn learn(&self, told: NodeKeys) {
        let applied = self.applied();
        let mut learned = self.learned.lock().expect("learned keys lock");
        for (id, key) in told.keys {
            if !applied.keys.contains_key(&id) {
                learned.keys.entry(id).or_insert(key);
            }
        }
        learned.removed.extend(told.removed);
    }

    /// Every node this node knows was removed.
    pub fn removed(&self) -> BTreeSet<NodeId> {
        let mut removed = self
            .learned
            .lock()
            .expect("learned keys lock")
            .removed
            .clone();
        removed.extend(
            self.state
                .read()
                .expect("state lock")
                .security()
                .removed_nodes
                .iter()
                .copied(),
        );
        removed
    }

    /// Resolves when a peer named a node of unknown key since the last call.
    async fn wanted(&self) {
        self.wanted.notified().await
    }
}

impl PeerCheck for Peers {
    fn check_peer(&self, peer: &Peer) -> Result<(), Refusal> {
        let id = peer.id.node_id;
        let (removed, pinned) = {
            let st = self.state.read().expect("state lock");
            let security = st.security();
            (
                security.removed_nodes.contains(&id),
                security.node_keys.get(&id).copied(),
            )
        };
        let learned = self.learned.lock().expect("learned keys lock");
        if removed || learned.removed.contains(&id) {
            return Err(Refusal::Removed(removed_message(id, &peer.id.cluster_id)));
        }
        match pinned.or_else(|| learned.keys.get(&id).copied()) {
            Some(key) if key == peer.key_sha256 => Ok(()),
            Some(_) => Err(Refusal::NotMember(format!(
                "the certificate naming node {id} is not for the key node {id} was admitted \
                 with"
            ))),
            None => {
                drop(learned);
                self.wanted.notify_one();
                Err(Refusal::NotMember(format!(
                    "node {id} is not a member this node knows of"
                )))
            }
        }
    }
}

/// A cluster founded by an earlier build pinned no node keys: its members' certificates would
/// all be refused, so a node does not serve such a data dir, and says what to do.
pub fn check_node_keys(state: &State) -> Result<(), String> {
    if state.meta.cluster_id.is_some() && state.security().node_keys.is_empty() {
        return Err(
            "this data dir belongs to a cluster founded by an earlier stackd, which \
                    did not record its members' keys: take a backup with that build (`stackd \
                    backup`) and restore it into a new cluster with this one (`stackd restore`)"
                .into(),
        );
    }
    Ok(())
}

impl Cluster {
    /// The member check this node's transport uses.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// Runs the key sync until `shutdown`: each time a peer's certificate names a node of
    /// unknown key, and at most every 500 ms, asks a member for the node keys.
    pub async fn sync_node_keys(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.peers.wanted() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Some(told) = self.fetch_node_keys().await {
                self.peers.learn(told);
            }
            tokio::select! {
                _ = tokio::time::sleep(KEY_SYNC_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The node keys as the first member that answers has them: a member this node knows
    /// (its certificate checked), or, knowing none, the member it joined through.
    async fn fetch_node_keys(&self) -> Option<NodeKeys> {
        let members: Vec<(NodeId, String)> = self
            .metrics()
            .membership
            .nodes()
            .filter(|(id, _)| *id != self.id)
            .map(|(id, n)| (id, n.cluster_addr.clone()))
            .collect();
        let ask = RpcRequest::NodeKeys;
        for (id, addr) in &members {
            let answer = self
                .transport
                .call_node(*id, addr, &ask, KEY_SYNC_TIMEOUT)
                .await;
            match answer {
                Ok(RpcResponse::NodeKeys(keys)) => return Some(keys),
                other => debug!(node = id, answer = ?other.map(|_| ()), "key sync: no keys"),
            }
        }
        let join = self
            .peers
            .joined_through
            .as_ref()
            .filter(|_| members.is_empty())?;
        match self.transport.call(join, &ask, KEY_SYNC_TIMEOUT).await {
            Ok(RpcResponse::NodeKeys(keys)) => Some(keys),
            other => {
                debug!(%join, answer = ?other.map(|_| ()), "key sync: no keys");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use raft::command::ClusterCmd;
    use transport::tls::PeerId;

    use super::*;

    fn peer(node_id: NodeId, key: u8) -> Peer {
        Peer {
            id: PeerId {
                cluster_id: "c1".into(),
                node_id,
            },
            key_sha256: [key; 32],
        }
    }

    fn refused(peers: &Peers, node: NodeId, key: u8) -> String {
        match peers.check_peer(&peer(node, key)) {
            Ok(()) => panic!("node {node} with key {key} must be refused"),
            Err(Refusal::Removed(m)) => format!("removed: {m}"),
            Err(Refusal::NotMember(m)) => m,
        }
    }

    fn applied(commands: impl IntoIterator<Item = ClusterCmd>) -> State {
        let mut st = State::default();
        let mut batch = storage::SmBatch::default();
        for command in commands {
            let req = Request {
                stamp_ms: 1,
                idempotency_key: None,
                command: command.into(),
            };
            st.apply(&req, &mut batch);
        }
        st
    }

    #[test]
    fn a_data_dir_of_a_cluster_that_pinned_no_keys_is_not_served() {
        assert!(
            check_node_keys(&State::default()).is_ok(),
            "not founded yet"
        );
        let legacy = applied([ClusterCmd::Init {
            cluster_id: "c1".into(),
            join_token_sha256: "t".into(),
        }]);
        let err = check_node_keys(&legacy).unwrap_err();
        assert!(err.contains("earlier stackd"), "{err}");
        let founded = applied([ClusterCmd::Found {
            cluster_id: "c1".into(),
            join_token_sha256: "t".into(),
            node_key_sha256: [1; 32],
        }]);
        assert!(check_node_keys(&founded).is_ok());
    }

    #[test]
    fn a_member_is_a_node_not_removed_with_the_key_it_was_admitted_with() {
        let commands = [
            ClusterCmd::Found {
                cluster_id: "c1".into(),
                join_token_sha256: "t".into(),
                node_key_sha256: [1; 32],
            },
            ClusterCmd::AdmitNode {
                key_sha256: [2; 32],
            },
            ClusterCmd::AdmitNode {
                key_sha256: [3; 32],
            },
            ClusterCmd::NodeRemoved { id: 3 },
        ];
        let peers = Peers::new(Arc::new(RwLock::new(applied(commands))), None);
        assert!(peers.check_peer(&peer(1, 1)).is_ok());
        assert!(peers.check_peer(&peer(2, 2)).is_ok());
        let m = refused(&peers, 2, 9);
        assert!(
            m.contains("is not for the key node 2 was admitted with"),
            "{m}"
        );
        let m = refused(&peers, 3, 3);
        assert!(
            m.starts_with("removed: node 3 was removed from cluster c1"),
            "{m}"
        );
        assert!(
            peers.wanted().now_or_never().is_none(),
            "known nodes need no key sync"
        );
        let m = refused(&peers, 4, 4);
        assert_eq!(m, "node 4 is not a member this node knows of");
        assert!(peers.wanted().now_or_never().is_some(), "the key sync runs");

        // A member tells of node 4 and of node 2's removal; a key the state pinned stays.
        peers.learn(NodeKeys {
            keys: BTreeMap::from([(4, [4; 32]), (1, [9; 32])]),
            removed: BTreeSet::from([2]),
        });
        assert!(peers.check_peer(&peer(4, 4)).is_ok());
        assert!(peers.check_peer(&peer(1, 1)).is_ok());
        assert!(refused(&peers, 1, 9).contains("not for the key"));
        assert!(refused(&peers, 2, 2).starts_with("removed: node 2"));
        assert_eq!(peers.removed(), BTreeSet::from([2, 3]));
        // What it answers a member is its applied state only.
        assert_eq!(
            peers.applied().keys.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
