//! Raft timing for the two kinds of group.
//!
//! Idle groups are not free (see DESIGN.md: 300 groups at a 50 ms heartbeat burned 1.5
//! cores), so data groups beat every 400 ms and elect after 1.6–3.2 s of silence. The
//! metadata group is one group, so it can afford a faster beat.

use openraft::{Config, SnapshotPolicy};
use std::sync::Arc;

fn build(
    heartbeat_ms: u64,
    election_min_ms: u64,
    election_max_ms: u64,
    snapshot_logs: u64,
) -> Arc<Config> {
    let cfg = Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_min_ms,
        election_timeout_max: election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_logs.max(1)),
        // Keep some log behind the snapshot so a briefly lagging follower catches up from
        // the log rather than a whole snapshot.
        max_in_snapshot_log_to_keep: (snapshot_logs / 5).max(1),
        purge_batch_size: 256,
        install_snapshot_timeout: 10_000,
        // State machine writes are not fsynced on apply and the committed log id is not
        // persisted, so a leader restarted with leadership restored could serve reads from
        // a state machine that lost applied entries (found by the kill-all-nodes test: a
        // deleted key came back). A restarted node must win a fresh election instead.
        enable_leader_restore: Some(false),
        // A node cut off by a partition must not bump its term while away: on healing it
        // would depose every healthy leader of its groups (seen as a multi-second stall
        // after each partition in `cairn chaos --nemesis partition`).
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    // The values above are constants that satisfy validate(); fall back to defaults
    // rather than panic should a future openraft tighten its rules.
    Arc::new(cfg.validate().unwrap_or_default())
}

/// Entries between snapshots when nothing else is configured.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 5000;

/// Configuration of a partition group that snapshots every `snapshot_logs` entries.
///
/// Failover takes about the leader lease (openraft's: the largest election timeout) plus
/// one election timeout, since followers refuse votes while the lease runs: 400 ms beats and
/// 1.6–3.2 s timeouts give 4–6 s.
pub fn data_group_config(snapshot_logs: u64) -> Arc<Config> {
    build(400, 1600, 3200, snapshot_logs)
}

/// Configuration of the metadata group that snapshots every `snapshot_logs` entries.
pub fn meta_group_config(snapshot_logs: u64) -> Arc<Config> {
    build(250, 1000, 2000, snapshot_logs)
}
