//! Raft timing and log-retention settings.

use std::sync::Arc;

use crate::replica::Timing;

/// Builds the openraft config from stackd's timing (see [`Timing`]; defaults: heartbeat
/// 100 ms, election timeout 500..1000 ms).
pub fn raft_config(timing: &Timing) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let Timing {
        heartbeat_interval_ms,
        election_timeout_ms,
        snapshot_every_entries,
    } = *timing;
    let config = openraft::Config {
        cluster_name: "stackd".into(),
        heartbeat_interval: heartbeat_interval_ms,
        election_timeout_min: election_timeout_ms,
        election_timeout_max: election_timeout_ms * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every_entries),
        // Entries kept behind a snapshot so a briefly lagging follower catches up from the log.
        max_in_snapshot_log_to_keep: snapshot_every_entries.min(1000),
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}
