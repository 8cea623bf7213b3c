//! Counters of a node's Raft traffic and log durability, shared by every group on the node
//! and exported by the server on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Raft traffic of every group on one node. Clones share the same counters.
#[derive(Clone, Debug)]
pub struct RaftMetrics {
    /// AppendEntries calls sent carrying entries.
    pub append_entries_sent: Counter,
    /// Encoded bytes of each AppendEntries sent carrying entries.
    pub append_bytes: Histogram,
    /// AppendEntries calls sent without entries (heartbeats and commit notices).
    pub heartbeats_sent: Counter,
    /// Commit notices (AppendEntries without entries) not sent because the group's next
    /// append carried them.
    pub commit_notices_folded: Counter,
    /// AppendEntries calls received, with or without entries.
    pub append_entries_received: Counter,
    /// Snapshot bytes (keys and values) sent to peers.
    pub snapshot_sent_bytes: Counter,
    /// Snapshot bytes (keys and values) received from peers.
    pub snapshot_received_bytes: Counter,
    /// Log entries applied by the state machines of this node's replicas.
    pub applied_entries: Counter,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        Self {
            append_entries_sent: Counter::default(),
            // 1 KiB to 64 MiB: a single write's append up to a follower's catch-up.
            append_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 9)),
            heartbeats_sent: Counter::default(),
            commit_notices_folded: Counter::default(),
            append_entries_received: Counter::default(),
            snapshot_sent_bytes: Counter::default(),
            snapshot_received_bytes: Counter::default(),
            applied_entries: Counter::default(),
        }
    }
}

impl RaftMetrics {
    /// Registers the counters under `registry` (which adds the `cairn_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "raft_append_entries_sent",
            "AppendEntries calls sent with entries, all groups",
            self.append_entries_sent.clone(),
        );
        registry.register_with_unit(
            "raft_append",
            "Encoded size of each AppendEntries sent with entries, all groups",
            Unit::Bytes,
            self.append_bytes.clone(),
        );
        registry.register(
            "raft_heartbeats_sent",
            "AppendEntries calls sent without entries (heartbeats and commit notices), all groups",
            self.heartbeats_sent.clone(),
        );
        registry.register(
            "raft_commit_notices_folded",
            "Commit notices not sent because the group's next append carried them, all groups",
            self.commit_notices_folded.clone(),
        );
        registry.register(
            "raft_append_entries_received",
            "AppendEntries calls received, with or without entries, all groups",
            self.append_entries_received.clone(),
        );
        registry.register_with_unit(
            "snapshot_received",
            "Snapshot bytes received from peers",
            Unit::Bytes,
            self.snapshot_received_bytes.clone(),
        );
        registry.register_with_unit(
            "snapshot_sent",
            "Snapshot bytes sent to peers",
            Unit::Bytes,
            self.snapshot_sent_bytes.clone(),
        );
        registry.register(
            "raft_applied_entries",
            "Log entries applied by this node's replicas, leaders and followers",
            self.applied_entries.clone(),
        );
    }
}

/// What the sync thread measures: how long each fsync took and how many waiting log writes
/// it made durable at once (group commit).
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// Seconds per fsync.
    pub duration: Histogram,
    /// Log writes made durable by one fsync.
    pub batch: Histogram,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self {
            // 50 µs to ~3.3 s.
            duration: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
            // 1 to 4096 writes.
            batch: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

impl SyncMetrics {
    /// Registers the histograms under `registry` (which adds the `cairn_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "fsync_duration",
            "Time of one fsync of the node's engine",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "fsync_batch_writes",
            "Log writes made durable by one fsync (group commit)",
            self.batch.clone(),
        );
    }
}
