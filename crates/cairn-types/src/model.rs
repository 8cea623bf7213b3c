//! Descriptors of tables, partitions and nodes as the metadata group records them.

use crate::{Epoch, KeyRange, NodeId, PartitionId, TableId};
use serde::{Deserialize, Serialize};

/// Replication factor used when a table is created without one.
pub const DEFAULT_REPLICATION: u32 = 3;

/// Lifecycle of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableState {
    /// Serving requests.
    Active,
    /// Deleted for clients; its replicas are being destroyed.
    Dropping,
}

/// A named table and its partitions, in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDesc {
    /// Numeric id; prefix of the table's data in every engine.
    pub id: TableId,
    /// Unique name, see [`crate::validate_table_name`].
    pub name: String,
    /// Number of replicas of each partition (1, 3 or 5).
    pub replication: u32,
    /// Whether the table is serving or being dropped.
    pub state: TableState,
    /// Partitions ordered by range start; their ranges tile the whole key space.
    pub partitions: Vec<PartitionDesc>,
}

impl TableDesc {
    /// The partition whose range contains `key`.
    pub fn partition_for(&self, key: &[u8]) -> Option<&PartitionDesc> {
        self.partitions.iter().find(|p| p.range.contains(key))
    }
}

/// One partition: a key range of one table replicated by one Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDesc {
    /// Partition id, equal to its Raft group id.
    pub id: PartitionId,
    /// The table it belongs to.
    pub table_id: TableId,
    /// User keys `[start, end)` it owns.
    pub range: KeyRange,
    /// Shape version; see [`Epoch`].
    pub epoch: Epoch,
    /// Nodes holding a replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
}

/// A node as registered in the metadata group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDesc {
    /// Unique id given with `--id`.
    pub id: NodeId,
    /// gRPC address for clients and peers.
    pub addr: String,
    /// HTTP address (API, metrics, console).
    pub http_addr: String,
}

/// What a node reports about one of its replicas, and what describe/admin show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: PartitionId,
    /// Leader as last reported, if any.
    pub leader: Option<NodeId>,
    /// Raft term of that report.
    pub term: u64,
}
