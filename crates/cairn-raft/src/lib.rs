//! Cairn's Raft glue on openraft.
//!
//! ```text
//!   client_write ──▶ openraft core ──append──▶ LogStore ──write──▶ engine (Space::Raft)
//!                        │                         └──sync request──▶ Syncer thread: one fsync
//!                        │                                              for all groups' appends
//!                        └──apply──▶ GroupStateMachine ──write──▶ engine (Space::Data)
//!   peers ◀── PeerNetwork: one gRPC channel per peer node carries every group's messages
//! ```
//!
//! Every group (the metadata group 0 and one per partition) is an openraft instance of the
//! single [`TypeConfig`]; its member ids are [`cairn_types::NodeId`] values. Log appends of
//! all groups are made durable together by the [`Syncer`] (group commit); nothing is
//! acknowledged before its entry is durable on a majority because openraft only counts an
//! append once the [`Syncer`] has flushed it.

mod command;
mod config;
mod error;
mod log_store;
mod network;
pub mod runtime;
mod state_machine;

pub use command::{Command, KvCommand, KvOp, Reply};
pub use config::{DEFAULT_SNAPSHOT_LOGS, data_group_config, meta_group_config};
pub use error::from_raft;
pub use log_store::{LogStore, Syncer};
pub use network::{GroupNetwork, PeerNetwork, RaftRpc, serve_raft_rpc};
pub use state_machine::{
    GroupStateMachine, PartitionView, SESSION_TTL_MS, SplitSink, split_allowed, split_seed_log_id,
};

openraft::declare_raft_types!(
    /// The openraft type configuration shared by every Cairn group.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
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
    pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;
    /// Metrics published by a replica.
    pub type Metrics = openraft::RaftMetrics<TypeConfig>;
}
