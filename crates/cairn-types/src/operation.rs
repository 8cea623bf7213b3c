//! Operations recorded in the metadata group: layout changes (what is being changed, how
//! far it got and how it ended) and table drops. At most one runs per partition. The
//! metadata leader's executor drives each running operation one idempotent step at a time,
//! so a new leader picks up where the old one stopped.

use crate::{NodeId, PartitionId, ReplicaId, TableId};
use serde::{Deserialize, Serialize};

/// How many finished layout operations the metadata keeps for `cairn admin operations`.
pub const KEEP_FINISHED: usize = 100;

/// How many table drops the metadata keeps beside them: a retried DropTable, or a late
/// retry of the CreateTable that made a dropped table, is recognised while its drop is kept
/// (a split or transfer storm does not push drops out, as they are counted apart).
pub const KEEP_DROPS: usize = 1000;

/// What an operation changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// Moves the replica of a partition from one node to another: a learner with a fresh
    /// replica id on `to` catches up, then replaces `from` among the voters.
    Move {
        /// The node giving up its replica.
        from: NodeId,
        /// The node receiving the new replica.
        to: NodeId,
        /// The new replica's member id.
        replica: ReplicaId,
    },
    /// Split the partition at `key`; `right` is the new right half. A split is one command
    /// in the partition's log, so it is recorded once done.
    Split {
        /// The first key of the right half.
        key: Vec<u8>,
        /// The right half.
        right: PartitionId,
    },
    /// Handed the partition's leadership to its replica on `to`; recorded once done.
    TransferLeader {
        /// The new leader's node.
        to: NodeId,
    },
    /// Dropped the table `name` (the operation's table; its partition is the table's
    /// first). Recorded once done; a retry of the drop recognises its table by it, and a
    /// late retry of the CreateTable that made the table does not make it again.
    DropTable {
        /// The table's name.
        name: String,
        /// The id of the CreateTable request that made it (0: not known).
        created_by: u64,
    },
}

impl OpKind {
    /// The nodes an operation moves something from and to, where that applies.
    pub fn nodes(&self) -> (Option<NodeId>, Option<NodeId>) {
        match self {
            OpKind::Move { from, to, .. } => (Some(*from), Some(*to)),
            OpKind::Split { .. } => (None, None),
            OpKind::TransferLeader { to } => (None, Some(*to)),
            OpKind::DropTable { .. } => (None, None),
        }
    }

    /// A short name for listings.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Move { .. } => "move",
            OpKind::Split { .. } => "split",
            OpKind::TransferLeader { .. } => "transfer",
            OpKind::DropTable { .. } => "drop",
        }
    }
}

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpState {
    /// Being driven by the metadata leader.
    Running,
    /// Finished as asked.
    Done,
    /// Given up and undone: the partition is as it was before.
    RolledBack,
}

impl OpState {
    /// The lower-case name used in listings and the API.
    pub fn name(self) -> &'static str {
        match self {
            OpState::Running => "running",
            OpState::Done => "done",
            OpState::RolledBack => "rolled_back",
        }
    }
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Id, unique in the cluster's lifetime.
    pub id: u64,
    /// What it changes.
    pub kind: OpKind,
    /// The partition it changes.
    pub partition: PartitionId,
    /// That partition's table.
    pub table: TableId,
    /// Where it stands.
    pub state: OpState,
    /// The step it is at (or ended at), in words.
    pub step: String,
    /// The last error seen, if any (a running operation retries).
    pub error: Option<String>,
    /// When it was started, ms since the Unix epoch (the proposing leader's clock).
    pub started_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
}
