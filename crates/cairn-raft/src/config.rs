//! Raft timing for the two kinds of group.
//!
//! Idle groups are not free when each one keeps its own timers (DESIGN.md: 1,000 partitions
//! at a 400 ms beat burned 1.73 cores doing nothing). With `cairn server --quiesce` (the
//! default; `--quiesce false` turns it off) partition groups keep none of their own:
//! openraft's tick, and with it its heartbeats and election timer, starts switched off.
//! The node's group supervisor (`cairn-server`, `supervisor.rs`) turns a leader's tick on
//! while the group is busy and campaigns for a follower when node-level liveness says its
//! leader is gone, so an idle group costs nothing and failover takes about one leader lease. The metadata group is one
//! group; it always keeps openraft's own timers.

use openraft::{Config, SnapshotPolicy};
use std::sync::Arc;

/// Entries purged at once in the metadata group: openraft waits until this many can go.
const PURGE_BATCH: u64 = 256;

/// Entries kept behind a snapshot when the log is purged (a fifth of the interval).
pub fn log_entries_kept(snapshot_logs: u64) -> u64 {
    (snapshot_logs / 5).max(1)
}

/// Entries a partition may append between its log's report and the keeper's purge (the
/// snapshot the keeper waits for, and the purge itself, are not instant).
const PURGE_SLACK: u64 = 256;

/// Most entries a partition's log holds once its purges have caught up and no replica is
/// behind (one that is behind holds up to [`log_bytes_held`] more): those since the last
/// snapshot, the ones kept behind it, and those appended while the keeper purges.
pub fn max_log_held(snapshot_logs: u64) -> u64 {
    snapshot_logs.max(1) + log_entries_kept(snapshot_logs) + PURGE_SLACK
}

/// Who decides when a group snapshots and how far its log is purged.
#[derive(Clone, Copy)]
enum Purges {
    /// openraft: every `snapshot_logs` entries, keeping a fifth of them behind.
    Openraft,
    /// The node's log keeper (`cairn-server`, `log_bound.rs`), when the log reports itself.
    Keeper,
}

fn build(
    heartbeat_ms: u64,
    election_min_ms: u64,
    election_max_ms: u64,
    snapshot_logs: u64,
    supervised: bool,
    purges: Purges,
) -> Arc<Config> {
    let (snapshot_policy, max_in_snapshot_log_to_keep) = match purges {
        Purges::Openraft => (
            SnapshotPolicy::LogsSinceLast(snapshot_logs.max(1)),
            // Keep some log behind the snapshot so a briefly lagging follower catches up
            // from the log rather than a whole snapshot.
            log_entries_kept(snapshot_logs),
        ),
        // openraft neither snapshots nor purges on its own: its purge would not wait for a
        // follower behind (it only defers while entries are in flight), so a follower down
        // for a few seconds on a busy partition would need a whole snapshot.
        Purges::Keeper => (SnapshotPolicy::Never, u64::MAX),
    };
    let cfg = Config {
        enable_tick: !supervised,
        enable_elect: !supervised,
        cluster_name: "cairn".into(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_min_ms,
        election_timeout_max: election_max_ms,
        snapshot_policy,
        max_in_snapshot_log_to_keep,
        purge_batch_size: PURGE_BATCH,
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
///
/// A snapshot here is a read view of the engine (nothing is copied), and it is what lets
/// the log behind it be purged, down to a fifth of this ([`log_entries_kept`]). The Raft
/// keyspace's memtable holds 3–5 s of a busy node's appends, so an entry purged within
/// that is dropped with its tombstone when the memtable flushes and never reaches a table.
/// At 5,000 (openraft's default) an entry lived about 20 s under 64-client writes: every
/// entry was flushed and compacted before its purge, and over a minute of writes on one
/// cluster throughput fell by a fifth and p99 rose by a third; at 1,000 both hold
/// (docs/benchmarks.md, twentieth run). On a leader, a follower further behind than the
/// fifth kept is held for (up to [`log_bytes_held`]) before it is sent a snapshot.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 1000;

/// Bytes a partition's log may hold after its last snapshot before the group snapshots
/// anyway, whatever its entry count: a thousand entries of 1 MiB values would otherwise
/// hold a gigabyte of log per replica (TiKV bounds its Raft logs by size the same way). The
/// log is then purged down to [`log_bytes_kept`] behind the snapshot (more kept on a leader
/// with a follower behind: [`log_bytes_held`]). Logs of small entries stay under it: the
/// 1,456 entries the entry interval allows are 25 MB at 17 KB each (256-client write
/// batches). `--snapshot-log-bytes` sets it; 0 leaves the bound to the entry count, and
/// holds nothing for a follower behind.
pub const DEFAULT_SNAPSHOT_LOG_BYTES: u64 = 32 << 20;

/// Bytes of log kept behind a snapshot that the byte limit `snapshot_log_bytes` took (a
/// quarter of it, as the entry interval keeps a fifth of its entries); openraft defers a
/// purge while a replication stream is sending the entries.
pub fn log_bytes_kept(snapshot_log_bytes: u64) -> u64 {
    snapshot_log_bytes / 4
}

/// Most bytes of log a leader holds for its slowest follower under the byte limit
/// `snapshot_log_bytes` (twice the limit), whichever bound took the snapshot, so that a
/// follower briefly behind (paused, restarting, slow) catches up from the log rather than
/// by a whole snapshot; one further behind is sent a snapshot. The keeper holds no more
/// than the partition's own size (a snapshot is then the smaller catch-up), but at least
/// [`log_bytes_kept`].
pub fn log_bytes_held(snapshot_log_bytes: u64) -> u64 {
    snapshot_log_bytes.saturating_mul(2)
}

/// Configuration of a partition group. It neither snapshots nor purges its log on its own:
/// its log reports itself past `--snapshot-logs` entries or `--snapshot-log-bytes` bytes,
/// and the node's log keeper (`cairn-server`, `log_bound.rs`) snapshots and purges it.
///
/// With `supervised`, its tick starts off and nothing elects on its own (see the module
/// doc). While ticking, a leader beats every 150 ms; followers refuse votes for a leader
/// lease of [`DATA_LEADER_LEASE_MS`] (openraft's lease is the largest election timeout)
/// after they last heard from their leader, which bounds failover from below and keeps a
/// node that merely lost sight of a busy leader from deposing it.
///
/// Without it (the default), each group keeps openraft's own timers: 400 ms beats and
/// 1.6–3.2 s election timeouts, so failover takes about the 3.2 s lease plus one election
/// timeout (4–6 s), and idle groups cost CPU in proportion to their number.
pub fn data_group_config(supervised: bool) -> Arc<Config> {
    if supervised {
        build(150, 400, DATA_LEADER_LEASE_MS, 0, true, Purges::Keeper)
    } else {
        build(400, 1600, 3200, 0, false, Purges::Keeper)
    }
}

/// How long a supervised partition group's follower refuses to vote after it last heard
/// from its leader (and a leader that has not heard from a quorum for as long refuses writes).
pub const DATA_LEADER_LEASE_MS: u64 = 750;

/// Configuration of the metadata group that snapshots every `snapshot_logs` entries.
pub fn meta_group_config(snapshot_logs: u64) -> Arc<Config> {
    build(250, 1000, 2000, snapshot_logs, false, Purges::Openraft)
}
