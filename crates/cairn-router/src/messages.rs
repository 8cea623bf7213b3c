//! Requests the router sends to the metadata group and to partition replicas. They travel
//! postcard-encoded in the `Internal.Meta` and `Internal.Partition` gRPC calls.

use crate::TableRoute;
use cairn_types::{
    Epoch, NodeDesc, NodeId, PartitionDesc, PartitionId, PartitionStatus, RequestId, TableDesc,
    TableId,
};
use serde::{Deserialize, Serialize};

/// A request served by the metadata group's leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaRequest {
    /// The route of a table: its descriptor and the partition leaders last reported.
    GetTable(String),
    /// Every table.
    ListTables,
    /// Creates a table; the leader chooses the placement.
    CreateTable {
        /// Name.
        name: String,
        /// Replicas per partition.
        replication: u32,
        /// Sorted split keys.
        split_keys: Vec<Vec<u8>>,
    },
    /// Removes a table from the metadata; answers its last descriptor.
    DropTable(String),
    /// A node's liveness beat with the state of its replicas.
    Heartbeat(Heartbeat),
    /// The partitions that should have a replica on the node.
    PartitionsOn(NodeId),
    /// Registered nodes with liveness and load.
    Nodes,
    /// The metadata members, answered by any node without forwarding (used to join).
    ClusterInfo,
}

/// A node's periodic report to the metadata leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node and its addresses.
    pub node: NodeDesc,
    /// Leader and term of each replica the node hosts.
    pub replicas: Vec<PartitionStatus>,
}

/// What a node looks like to the metadata leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Identity and addresses.
    pub node: NodeDesc,
    /// Heartbeat seen recently.
    pub live: bool,
    /// Milliseconds since its last heartbeat, if any was seen by this leader.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Replicas it hosts (according to the metadata).
    pub replicas: u32,
    /// Partitions it leads (according to the reports).
    pub leaders: u32,
    /// Whether it holds a replica of the metadata group.
    pub metadata_member: bool,
    /// Whether it leads the metadata group (it answered this request).
    pub metadata_leader: bool,
}

/// Answers of the metadata leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaReply {
    /// A table route.
    Table(TableRoute),
    /// Every table.
    Tables(Vec<TableDesc>),
    /// Done, nothing to return.
    Done,
    /// Partitions with their replica nodes (for [`MetaRequest::PartitionsOn`]).
    Placements(Vec<(PartitionDesc, Vec<NodeDesc>)>),
    /// The metadata group's members (for [`MetaRequest::ClusterInfo`]).
    Cluster(Vec<(NodeId, String)>),
    /// Nodes (for [`MetaRequest::Nodes`]).
    Nodes(Vec<NodeStatus>),
}

/// A request for one partition replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartitionRequest {
    /// Target partition.
    pub partition: PartitionId,
    /// Its epoch as the router saw it.
    pub epoch: Epoch,
    /// Its table.
    pub table: TableId,
    /// What to do.
    pub op: PartitionOp,
}

/// Operations on a partition replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PartitionOp {
    /// Sets a key (leader only).
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// At-most-once id.
        request_id: Option<RequestId>,
    },
    /// Removes a key (leader only).
    Delete {
        /// Key.
        key: Vec<u8>,
        /// At-most-once id.
        request_id: Option<RequestId>,
    },
    /// Reads a key; linearizable on the leader unless `stale`.
    Get {
        /// Key.
        key: Vec<u8>,
        /// Read the local replica without a barrier.
        stale: bool,
    },
    /// Reads up to `limit` keys in `[start, end)` ∩ the partition's range.
    Scan {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end.
        end: Option<Vec<u8>>,
        /// Most rows to return.
        limit: u32,
        /// Read the local replica without a barrier.
        stale: bool,
    },
    /// Marks the partition dropped through its log (leader only).
    Drop,
    /// Opens the replica on this node if missing (sent after CreateTable and by the
    /// reconcile loop); `members` gives the addresses of the partition's replicas.
    Open {
        /// The partition.
        desc: PartitionDesc,
        /// Its replica nodes.
        members: Vec<NodeDesc>,
    },
    /// Who leads the partition, as this replica knows.
    Leader,
}

/// Answers of a partition replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PartitionReply {
    /// Done.
    Done,
    /// A value, if the key exists.
    Value(Option<Vec<u8>>),
    /// Rows in key order.
    Rows(Vec<(Vec<u8>, Vec<u8>)>),
    /// A leader, if known.
    Leader(Option<NodeId>),
}
