//! Joins and join tokens, the cluster's one-time set-up entry, and the service the
//! transport calls (forwarded writes, read indexes, joins, node keys).

use super::*;
use crate::cluster::reads::local_read_index;

impl Cluster {
    /// The initializing node's one-time cluster setup entry, which also pins its own key.
    pub async fn init_cluster_state(
        &self,
        cluster_id: String,
        token: &str,
    ) -> Result<(), ServiceError> {
        let node_key_sha256 = self
            .tls
            .key_sha256()
            .map_err(|e| ServiceError::Invalid(format!("this node's certificate: {e}")))?;
        let command = ClusterCmd::Found {
            cluster_id,
            join_token_sha256: transport::tls::token_digest(token),
            node_key_sha256,
        };
        // Already initialized (a replayed start-up) is as good as done.
        self.write(command, None).await?;
        Ok(())
    }
}

impl Service for Cluster {
    async fn forward(&self, req: Request) -> Result<Written, ServiceError> {
        let timeout = self.request_timeout();
        match tokio::time::timeout(timeout, self.write_local(req)).await {
            Ok(r) => r,
            Err(_) => Err(ServiceError::Unknown(
                "timed out waiting for the write to commit".into(),
            )),
        }
    }

    async fn read_index(&self) -> Result<LogId, ServiceError> {
        local_read_index(&self.replica, self.request_timeout()).await
    }

    async fn join(
        &self,
        token: String,
        node: NodeInfo,
        public_key: Vec<u8>,
    ) -> Result<JoinGranted, ServiceError> {
        if !self.replica.is_leader() {
            return self.relay_join(token, node, public_key).await;
        }
        // A token created just before a leader change is committed but maybe not applied
        // here yet.
        self.read_barrier().await?;
        let source = node.cluster_addr.clone();
        let actor = format!(
            "join token {}",
            raft::state::token_id(&transport::tls::token_digest(&token))
        );
        let checked = self
            .check_join_token(&token)
            .and_then(|()| self.check_joiner(&node, &public_key));
        let key_sha256 = match checked {
            Ok(k) => k,
            Err(e) => {
                self.audit.record(
                    "join_refused",
                    &actor,
                    &source,
                    serde_json::json!({ "why": e.to_string() }),
                );
                return Err(e);
            }
        };
        // The id and the key its certificate is for are recorded in one entry: a certificate
        // for this id is a member's only with this key.
        let id = match self
            .write(ClusterCmd::AdmitNode { key_sha256 }, None)
            .await?
        {
            ClusterResult::NodeId(id) => id,
            other => {
                return Err(ServiceError::Unknown(format!(
                    "node id allocation answered {other:?}"
                )))
            }
        };
        let cert_der = self
            .tls
            .issue(id, &public_key)
            .map_err(|e| ServiceError::Refused(format!("cannot issue a certificate: {e}")))?;
        info!(node = id, addr = %node.cluster_addr, "admitting node as learner");
        self.add_learner_retrying(id, node).await?;
        self.audit.record(
            "node_joined",
            &actor,
            &source,
            serde_json::json!({ "member": id }),
        );
        Ok(JoinGranted {
            node_id: id,
            cluster_id: self.tls.cluster_id.clone(),
            cert_der,
            ca_cert_der: self.tls.ca_cert_der.clone(),
            ca_key_der: self.tls.ca_key_der.clone(),
        })
    }

    async fn admin(&self, op: AdminOp) -> Result<AdminDone, ServiceError> {
        self.admin_here(op).await
    }

    fn node_keys(&self) -> NodeKeys {
        self.peers.applied()
    }
}

/// What a removed node is told, and prints before it exits.
pub fn removed_message(id: NodeId, cluster_id: &str) -> String {
    format!(
        "node {id} was removed from cluster {cluster_id}; wipe the data dir and join again with \
         a token (`stackd token create`)"
    )
}

impl Cluster {
    /// Whether `token` admits a node now: the founding token, or a created one that has not
    /// expired (on this node's clock).
    fn check_join_token(&self, token: &str) -> Result<(), ServiceError> {
        let digest = transport::tls::token_digest(token);
        let st = self.state.read().expect("state lock");
        if st.meta.cluster_id.is_none() {
            return Err(ServiceError::Unavailable(
                "cluster is still initializing; retry".into(),
            ));
        }
        if st.meta.join_token_sha256.as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        if st.security().revoked_tokens.contains_key(&digest) {
            return Err(ServiceError::Refused("join token revoked".into()));
        }
        match st.security().join_tokens.get(&digest) {
            Some(exp) if *exp > now_ms() => Ok(()),
            Some(_) => Err(ServiceError::Refused("join token expired".into())),
            None => Err(ServiceError::Refused("invalid join token".into())),
        }
    }

    /// The join tokens that admit nodes or were revoked, as this node's applied state has
    /// them (ids only: the cluster keeps no token, only its SHA-256).
    pub fn join_tokens(&self) -> serde_json::Value {
        let st = self.state.read().expect("state lock");
        let now = now_ms();
        let mut tokens = Vec::new();
        if let Some(d) = &st.meta.join_token_sha256 {
            tokens.push(serde_json::json!({
                "id": raft::state::token_id(d),
                "founding": true,
                "expires_at_ms": null,
                "expired": false,
            }));
        }
        for (d, exp) in &st.security().join_tokens {
            tokens.push(serde_json::json!({
                "id": raft::state::token_id(d),
                "founding": false,
                "expires_at_ms": exp,
                "expired": *exp <= now,
            }));
        }
        let revoked: Vec<_> = st
            .security()
            .revoked_tokens
            .iter()
            .map(|(d, at)| serde_json::json!({ "id": raft::state::token_id(d), "revoked_at_ms": at }))
            .collect();
        serde_json::json!({ "tokens": tokens, "revoked": revoked })
    }

    /// Revokes the join token with this id (the founding one included); `Ok(false)` when no
    /// token has that id.
    pub async fn revoke_join_token(&self, token_id: &str) -> Result<bool, ServiceError> {
        let r = self
            .write_visible(
                ClusterCmd::JoinTokenRevoke {
                    token_id: token_id.to_string(),
                },
                None,
            )
            .await?;
        Ok(r == ClusterResult::Done)
    }

    /// Creates a join token valid for `ttl_ms`; answers it, its id and its expiry.
    pub async fn create_join_token(
        &self,
        ttl_ms: u64,
    ) -> Result<(String, String, u64), WriteError> {
        let token = transport::tls::new_join_token(self.tls.ca_fingerprint());
        let token_sha256 = transport::tls::token_digest(&token);
        let id = raft::state::token_id(&token_sha256).to_string();
        let expires_at_ms = now_ms().saturating_add(ttl_ms);
        self.write(
            ClusterCmd::JoinTokenCreate {
                token_sha256,
                expires_at_ms,
            },
            None,
        )
        .await?;
        Ok((token, id, expires_at_ms))
    }

    /// Checks that the members still count this node in: every second while it seems cut off
    /// (no leader known, or not in its own membership), every 10 s otherwise (a removed
    /// learner may never notice). A member that refuses it as removed makes the transport
    /// report it (`Transport::removed`).
    pub async fn watch_membership(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.replica.is_leader() {
                continue;
            }
            let m = self.metrics();
            let membership = &m.membership;
            let cut_off = m.leader.is_none() || membership.node(self.id).is_none();
            if !cut_off && round % 10 != 0 {
                continue;
            }
            let peers: Vec<(NodeId, NodeInfo)> = membership
                .nodes()
                .filter(|(id, _)| *id != self.id)
                .map(|(id, n)| (id, n.clone()))
                .collect();
            for (id, n) in peers {
                let hello = self.transport.call_node(
                    id,
                    &n.cluster_addr,
                    &RpcRequest::Hello,
                    Duration::from_secs(2),
                );
                if let Ok(RpcResponse::Hello) = hello.await {
                    break;
                }
            }
        }
    }
}

impl Cluster {
    /// A join that reached a follower goes on to the leader, over QUIC.
    async fn relay_join(
        &self,
        token: String,
        node: NodeInfo,
        public_key: Vec<u8>,
    ) -> Result<JoinGranted, ServiceError> {
        let Some((leader_id, leader)) = self.leader() else {
            return Err(ServiceError::Unavailable(
                "no leader to admit the node; retry".into(),
            ));
        };
        let relay = RpcRequest::JoinWithKey {
            token,
            node,
            public_key,
        };
        let answer = self
            .transport
            .call_node(
                leader_id,
                &leader.cluster_addr,
                &relay,
                self.request_timeout(),
            )
            .await;
        match answer {
            Ok(RpcResponse::Joined(r)) => r,
            Ok(other) => Err(ServiceError::Unavailable(format!(
                "unexpected answer: {other:?}"
            ))),
            Err(e) => Err(ServiceError::Unavailable(format!(
                "leader unreachable: {e}"
            ))),
        }
    }

    /// Refuses a joiner whose address a member already uses or whose key is malformed or
    /// already a node's, before an id is spent on it; answers the key's digest.
    fn check_joiner(&self, node: &NodeInfo, public_key: &[u8]) -> Result<[u8; 32], ServiceError> {
        let m = self.metrics();
        if let Some((id, _)) = m
            .membership
            .nodes()
            .find(|(_, n)| n.cluster_addr == node.cluster_addr)
        {
            return Err(ServiceError::Refused(format!(
                "node {id} already uses cluster address {}; remove it first or use another address",
                node.cluster_addr
            )));
        }
        let key = transport::tls::key_sha256(public_key)
            .map_err(|e| ServiceError::Refused(e.to_string()))?;
        let st = self.state.read().expect("state lock");
        if let Some((id, _)) = st.security().node_keys.iter().find(|(_, k)| **k == key) {
            return Err(ServiceError::Refused(format!(
                "node {id} was admitted with this key; a joining node makes a key of its own"
            )));
        }
        Ok(key)
    }

    /// Adds the new learner. The id is allocated now; a membership change already under way
    /// (a promotion) only delays the learner, so retry under the same id rather than waste it.
    async fn add_learner_retrying(&self, id: NodeId, node: NodeInfo) -> Result<(), ServiceError> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            match self.replica.add_learner(id, node.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    warn!(node = id, error = %e, "adding learner; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(ServiceError::Unavailable(format!(
                        "adding learner {id} failed: {e}"
                    )))
                }
            }
        }
    }
}
