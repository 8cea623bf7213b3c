//! Cairn's Raft glue on openraft.
//!
//! ```text
//!   client_write ──▶ openraft core ──append──▶ LogStore ──write──▶ engine (Space::Raft)
//!                        │                         └──sync request──▶ Syncer thread: one fsync
//!                        │                                              for all groups' appends
//!                        └──apply──▶ GroupStateMachine ──write──▶ engine (Space::Data)
//!   peers ◀── PeerNetwork: one gRPC channel per peer node carries every group's messages
//!   snapshots: a header + an engine read view, sent in chunks, staged, installed (`snapshot`)
//! ```
//!
//! Every group (the metadata group 0 and one per partition) is an openraft instance of the
//! single [`TypeConfig`]; its member ids are [`cairn_types::ReplicaId`] values, never reused
//! within a group, and each member's [`Member`] data names the node it lives on, so there is
//! still one connection per node pair. Log appends of
//! all groups are made durable together by the [`Syncer`] (group commit); nothing is
//! acknowledged before its entry is durable on a majority because openraft only counts an
//! append once the [`Syncer`] has flushed it.

mod command;
mod config;
mod error;
pub mod fault;
mod fold;
mod log_store;
pub mod metrics;
mod network;
pub mod runtime;
pub mod snapshot;
mod state_machine;

pub use command::{Command, KvCommand, KvOp, Reply};
pub use config::{
    DATA_LEADER_LEASE_MS, DEFAULT_SNAPSHOT_LOG_BYTES, DEFAULT_SNAPSHOT_LOGS, data_group_config,
    log_bytes_held, log_bytes_kept, log_entries_kept, max_log_held, meta_group_config,
};
pub use error::from_raft;
pub use fold::DEFAULT_COMMIT_HOLD;
pub use log_store::{LogFull, LogStore, MAX_APPEND_BYTES, Syncer};
pub use metrics::{RaftMetrics, SyncMetrics};
pub use network::{GroupNetwork, PeerNetwork, RaftMsg, RaftRpc, serve_raft_rpc};

/// A group member's node data: where the replica lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The node hosting the replica.
    pub node: u64,
    /// That node's gRPC address.
    pub addr: String,
}

/// The node that hosts the leader, as `metrics` knows it.
pub fn leader_node(metrics: &typ::Metrics) -> Option<cairn_types::NodeId> {
    let leader = metrics.current_leader?;
    metrics
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|m| cairn_types::NodeId(m.node))
}

/// The replica id of `node`'s member in `membership` (voter or learner).
pub fn member_on(membership: &typ::Membership, node: cairn_types::NodeId) -> Option<u64> {
    membership
        .nodes()
        .find(|(_, m)| m.node == node.0)
        .map(|(id, _)| *id)
}
pub use state_machine::{
    GroupStateMachine, MAX_SESSIONS, PartitionView, ReplicaRecord, SESSION_TTL_MS, SplitSink,
    applied_in_view, group_is_pristine, range_page, seed_group, split_allowed, split_seed_log_id,
    staged_desc,
};

openraft::declare_raft_types!(
    /// The openraft type configuration shared by every Cairn group.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = Member,
        AsyncRuntime = runtime::CairnRuntime,
);

/// Short names for openraft types instantiated with [`TypeConfig`].
pub mod typ {
    use super::{GroupStateMachine, TypeConfig};

    /// A running group replica.
    pub type Raft = openraft::Raft<TypeConfig, GroupStateMachine>;
    /// A log entry.
    pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
    /// A log id.
    pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
    /// A vote.
    pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
    /// A membership configuration.
    pub type Membership = openraft::Membership<
        openraft::type_config::alias::NodeIdOf<TypeConfig>,
        openraft::type_config::alias::NodeOf<TypeConfig>,
    >;
    /// Membership as stored with the log id that set it.
    pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
    /// A snapshot with its bytes.
    pub type Snapshot =
        openraft::type_config::alias::SnapshotOf<TypeConfig, crate::snapshot::SnapshotData>;
    /// Metrics published by a replica.
    pub type Metrics = openraft::RaftMetrics<TypeConfig>;
}
