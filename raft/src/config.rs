//! Raft timing and log-retention settings.

use std::sync::Arc;

/// Builds the openraft config from stackd's settings.
///
/// - `heartbeat_interval_ms`: how often the leader heartbeats (default 100).
/// - `election_timeout_ms`: the lower bound of the randomized election timeout; the upper bound
///   is twice that (default 500 → 500..1000 ms).
/// - `snapshot_every_entries`: entries since the last snapshot that trigger a new one.
pub fn raft_config(
    heartbeat_interval_ms: u64,
    election_timeout_ms: u64,
    snapshot_every_entries: u64,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
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
