//! Operations on Raft itself (remove or promote a member, transfer leadership, snapshot):
//! asked of any node, run on the leader, reached over the one forwarding path writes take.

use super::*;

impl Cluster {
    /// Runs `op` on the leader: here when this node leads, else forwarded over QUIC.
    pub async fn admin(&self, op: AdminOp) -> Result<AdminDone, ServiceError> {
        if self.replica.is_leader() {
            return self.admin_here(op).await;
        }
        let Some((leader_id, leader)) = self.leader() else {
            return Err(ServiceError::Unavailable(
                "no leader is known; nothing was done".into(),
            ));
        };
        let timeout = self.request_timeout() * 2;
        let answer = self
            .transport
            .call_node(
                leader_id,
                &leader.cluster_addr,
                &RpcRequest::Admin(op),
                timeout,
            )
            .await;
        match answer {
            Ok(RpcResponse::Admin(r)) => r,
            Ok(other) => Err(ServiceError::Unknown(format!(
                "unexpected answer from the leader: {other:?}"
            ))),
            // Never sent: certainly not done.
            Err(transport::Error::Connect { reason, .. }) => Err(ServiceError::Unavailable(
                format!("cannot reach the leader: {reason}; nothing was done"),
            )),
            Err(e) => Err(ServiceError::Unknown(format!(
                "forwarding to the leader failed; the operation may or may not have happened: {e}"
            ))),
        }
    }

    /// Runs `op` on this node, which must lead.
    pub(super) async fn admin_here(&self, op: AdminOp) -> Result<AdminDone, ServiceError> {
        if !self.replica.is_leader() {
            return Err(ServiceError::NotLeader {
                leader: self.leader(),
            });
        }
        match op {
            AdminOp::RemoveMember(id) => self.remove_member(id).await,
            AdminOp::PromoteMember(id) => self.promote_member(id).await,
            AdminOp::TransferLeader(to) => self.transfer_to(to).await,
            AdminOp::Snapshot => self.snapshot_now().await,
        }
    }

    async fn remove_member(&self, id: NodeId) -> Result<AdminDone, ServiceError> {
        let membership = self.metrics().membership;
        if membership.node(id).is_none() {
            return Err(ServiceError::NotFound(format!("node {id} is not a member")));
        }
        // A joint configuration, or a membership entry not committed yet (a learner just
        // added): Raft takes no other change until it is done.
        if !membership.is_settled() {
            return Err(ServiceError::Conflict(
                "a membership change is in progress; retry".into(),
            ));
        }
        let voters = membership.voters();
        if voters.contains(&id) && voters.len() == 1 {
            return Err(ServiceError::Conflict(
                "cannot remove the last voter".into(),
            ));
        }
        let change = if voters.contains(&id) {
            MembershipChange::RemoveVoter(id)
        } else {
            MembershipChange::RemoveLearner(id)
        };
        self.replica
            .change_membership(change)
            .await
            .map_err(membership_failed)?;
        info!(node = id, "member removed");
        // Recorded once it is out of the membership (a removed leader must still reach the
        // others to commit the change): from now on its certificate is refused and, when it
        // calls, it is told it was removed.
        self.write(ClusterCmd::NodeRemoved { id }, None)
            .await
            .map_err(|e| {
                ServiceError::Unavailable(format!(
                    "node {id} left the membership, but recording its removal failed ({e}); \
                     its certificate is still accepted"
                ))
            })?;
        Ok(AdminDone::Removed(id))
    }

    async fn promote_member(&self, id: NodeId) -> Result<AdminDone, ServiceError> {
        let membership = self.metrics().membership;
        if membership.node(id).is_none() {
            return Err(ServiceError::NotFound(format!("node {id} is not a member")));
        }
        if membership.is_voter(id) {
            return Err(ServiceError::Conflict(format!(
                "node {id} is already a voter"
            )));
        }
        self.replica
            .change_membership(MembershipChange::AddVoter(id))
            .await
            .map_err(membership_failed)?;
        Ok(AdminDone::Promoted(id))
    }

    async fn transfer_to(&self, to: NodeId) -> Result<AdminDone, ServiceError> {
        if !self.metrics().membership.is_voter(to) {
            return Err(ServiceError::Invalid(format!("node {to} is not a voter")));
        }
        if to == self.id {
            return Ok(AdminDone::Leader(to));
        }
        Ok(AdminDone::Leader(self.transfer_leadership(to).await?))
    }

    /// A snapshot is local to each node; taken on the leader it also lets the log be purged.
    /// When the snapshot already covers every applied entry, it is the answer: a build would
    /// end at the same point, which Raft does not count as a new snapshot.
    async fn snapshot_now(&self) -> Result<AdminDone, ServiceError> {
        let m = self.metrics();
        let before = m.snapshot;
        if before.is_some() && before == m.applied {
            return Ok(AdminDone::Snapshot {
                index: before,
                completed: true,
            });
        }
        self.replica
            .snapshot()
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let waited = self
            .replica
            .wait_until(
                Duration::from_secs(60),
                move |m| m.snapshot != before,
                "snapshot built",
            )
            .await;
        Ok(AdminDone::Snapshot {
            index: self.metrics().snapshot,
            completed: waited.is_ok(),
        })
    }
}

fn membership_failed(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Unavailable(format!("membership change failed: {e}"))
}
