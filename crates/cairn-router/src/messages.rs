//! Requests the router sends to the metadata group and to partition replicas. They travel
//! postcard-encoded in the `Internal.Meta` and `Internal.Partition` gRPC calls.

use crate::TableRoute;
use cairn_types::{
    Epoch, NodeDesc, NodeId, OpKind, Operation, PartitionDesc, PartitionId, PartitionLoad,
    PartitionStatus, ReplicaId, RequestId, TableDesc, TableId,
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
        /// Random id of this request, the same on every retry: a retry whose first attempt
        /// made the table is answered that table rather than `AlreadyExists`.
        request_id: u64,
    },
    /// Removes the table `name` of id `id` from the metadata; answers its last descriptor,
    /// or `Done` if that table's drop is recorded already (see `MetaCommand::DropTableIf`).
    DropTable {
        /// Table name.
        name: String,
        /// The id it had when the request began, the same on every retry.
        id: TableId,
    },
    /// A node's liveness beat with the state of its replicas; answers the metadata group's
    /// current voters, so every node keeps up with a metadata member moved elsewhere.
    Heartbeat(Heartbeat),
    /// What a node should open and destroy, given the replicas it hosts.
    Reconcile {
        /// The node asking.
        node: NodeId,
        /// Descriptors of its replicas, as applied there, with their replica ids; `None`
        /// when they are those of its last reconcile that found nothing to do, so that an
        /// idle node does not send a thousand descriptors every few seconds for nothing.
        hosted: Option<Vec<(PartitionDesc, ReplicaId)>>,
        /// Digest of the hosted replicas ([`hosted_digest`]).
        digest: u64,
        /// The id of its metadata replica, if it hosts one.
        meta: Option<ReplicaId>,
    },
    /// Starts moving a partition's replica from one node to another; answers the recorded
    /// operation, which the metadata leader then drives.
    StartMove {
        /// The partition.
        partition: PartitionId,
        /// The node giving its replica up.
        from: NodeId,
        /// The node receiving one.
        to: NodeId,
    },
    /// Running and recent operations.
    Operations,
    /// Reserves a partition id for the right half of a split.
    AllocPartitionId,
    /// Records descriptors as their groups applied them (after a split); older ones are
    /// ignored.
    UpdatePartitions(Vec<PartitionDesc>),
    /// The controller's state and recent decisions.
    ControllerStatus,
    /// Pauses or resumes the controller.
    SetControllerPaused(bool),
    /// Retires a node that holds no replica; its id is never accepted again.
    RemoveNode(NodeId),
    /// Starts or stops draining a node.
    SetDraining {
        /// The node.
        node: NodeId,
        /// Draining from now on, or not.
        draining: bool,
    },
    /// Records a split or a leader transfer that is done, for `cairn admin operations`.
    RecordOperation {
        /// The partition it changed.
        partition: PartitionId,
        /// What it did.
        kind: OpKind,
        /// How it ended, in words.
        step: String,
    },
    /// The route of the table that holds a partition.
    GetPartition(PartitionId),
    /// Registered nodes with liveness and load.
    Nodes,
    /// The metadata members, answered by any node without forwarding (used to join).
    ClusterInfo,
    /// Adds a user with the hash of its token (a new one, or one restored from a backup).
    AddUser {
        /// The user.
        user: cairn_types::User,
        /// SHA-256 of its token.
        token_hash: [u8; 32],
    },
    /// Removes a user.
    RemoveUser(String),
    /// Every user (without token hashes).
    ListUsers,
    /// Who a credential belongs to, if anyone.
    Authenticate(Credential),
    /// One of the asked node's diagnostics, answered by that node without forwarding:
    /// another node's console charts its metrics, and `cairn debug zip` collects a node whose
    /// own HTTP address it cannot reach through one it can.
    NodeDiagnostic(Diagnostic),
    /// Every user with the hash of its token, for a backup (admins only).
    UserRecords,
}

/// What a node tells about itself on its HTTP port, asked of it through another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Diagnostic {
    /// `/metrics`: Prometheus' text format.
    Metrics,
    /// `/debug/logs`: its recent log lines.
    Logs,
    /// `/health`: the JSON a health check reads.
    Health,
}

/// What a caller of a secure cluster showed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Credential {
    /// The SHA-256 of a bearer token.
    Token([u8; 32]),
    /// The user named by a client certificate of the cluster's CA.
    Certificate(String),
}

/// A node's periodic report to the metadata leader: the whole report, or only what changed
/// since a report the leader acknowledged (most seconds, on an idle node, nothing).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node and its addresses.
    pub node: NodeDesc,
    /// This report's number (per node process; a delta names the one it builds on).
    pub seq: u64,
    /// `None`: the whole report. `Some(s)`: what changed since report `s`; a leader that
    /// does not hold report `s` from this node asks for the whole one.
    pub base: Option<u64>,
    /// Leader and term of each replica the node hosts (in a delta: those that changed).
    pub replicas: Vec<PartitionStatus>,
    /// Replicas the node no longer hosts (deltas only).
    pub replicas_gone: Vec<PartitionId>,
    /// Descriptors of the partitions the node leads, as applied there (in a delta: those
    /// that changed); the metadata group records any that are newer than its own
    /// (repairing a lost split record).
    pub led: Vec<PartitionDesc>,
    /// Size and load of the partitions the node leads, when the controller runs (in a
    /// delta: those that changed).
    pub loads: Vec<(PartitionId, PartitionLoad)>,
    /// Partitions whose load the node no longer reports (deltas only).
    pub loads_gone: Vec<PartitionId>,
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
    /// Whether it is being drained.
    pub draining: bool,
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
    /// What to open (with the replicas' nodes) and destroy, for [`MetaRequest::Reconcile`].
    Reconcile {
        /// Replicas to open.
        open: Vec<(PartitionDesc, Vec<NodeDesc>)>,
        /// Replicas to destroy.
        destroy: Vec<PartitionId>,
        /// Whether its metadata replica is no longer a member and must be destroyed.
        destroy_meta: bool,
        /// The request named its replicas by digest only, and the leader cannot vouch that
        /// nothing changed since (it holds no such reconcile, or the metadata changed): send
        /// them.
        send_hosted: bool,
    },
    /// A reserved partition id.
    Id(PartitionId),
    /// An operation as recorded.
    Operation(Operation),
    /// Operations as recorded.
    Operations(Vec<Operation>),
    /// The metadata group's voters with their addresses (for [`MetaRequest::ClusterInfo`]
    /// and heartbeats).
    Cluster(Vec<(NodeId, String)>),
    /// A heartbeat taken: the metadata group's voters, and whether the sender is draining.
    HeartbeatAck {
        /// The metadata group's voters with their addresses.
        members: Vec<(NodeId, String)>,
        /// Whether the sender is being drained (it then tells load balancers to leave it).
        draining: bool,
        /// The heartbeat was a delta from a report this leader does not hold (a new leader,
        /// or a lost acknowledgement): the sender sends its whole report next.
        resend_full: bool,
    },
    /// Nodes (for [`MetaRequest::Nodes`]).
    Nodes(Vec<NodeStatus>),
    /// The controller (for [`MetaRequest::ControllerStatus`]).
    Controller(ControllerStatus),
    /// Users (for [`MetaRequest::ListUsers`]).
    Users(Vec<cairn_types::User>),
    /// The user a credential belongs to (for [`MetaRequest::Authenticate`]).
    Principal(Option<cairn_types::User>),
    /// A node's diagnostic, as its own HTTP port serves it (for
    /// [`MetaRequest::NodeDiagnostic`]).
    Diagnostic(Vec<u8>),
    /// Users with the SHA-256 of their tokens (for [`MetaRequest::UserRecords`]).
    UserRecords(Vec<(cairn_types::User, [u8; 32])>),
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
    /// Reads up to `limit` keys in `[start, end)` ∩ the partition's range, ending after the
    /// row that brings the rows' bytes to `max_bytes`.
    Scan {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end.
        end: Option<Vec<u8>>,
        /// Most rows to return.
        limit: u32,
        /// Bytes of keys (and values, if `values`) after which the page ends.
        max_bytes: u64,
        /// Return values, not only keys.
        values: bool,
        /// Read the local replica without a barrier.
        stale: bool,
    },
    /// Marks the partition dropped through its log (leader only).
    Drop,
    /// Opens the replica on this node if missing; `members` gives the addresses of the
    /// partition's replicas.
    Open {
        /// The partition.
        desc: PartitionDesc,
        /// Its replica nodes.
        members: Vec<NodeDesc>,
        /// This node's replica id in the group.
        replica: ReplicaId,
        /// Form the group with `desc.replicas` if the replica is pristine. Only CreateTable
        /// sets it: a split's right half or a new learner must never start a group.
        bootstrap: bool,
    },
    /// Opens a pristine metadata replica with id `replica` on this node (a move of a
    /// metadata member); the metadata leader then adds it as a learner.
    OpenMeta {
        /// Its member id in the metadata group.
        replica: ReplicaId,
    },
    /// Splits the partition at `key` (leader only); `right` is the new half's id.
    Split {
        /// First key of the right half.
        key: Vec<u8>,
        /// Id reserved in the metadata group.
        right: PartitionId,
    },
    /// Hands leadership to the replica on `to` and waits until it leads (leader only).
    TransferLeader {
        /// The node that should lead.
        to: NodeId,
    },
    /// Adds `replica` on `node` as a learner if it is not a member yet, and answers `Done`
    /// once it has caught up with the leader's log (`Unavailable` while it catches up).
    AddLearner {
        /// The new member id.
        replica: ReplicaId,
        /// The node hosting it.
        node: NodeDesc,
    },
    /// Makes the learner `add` a voter in place of the replica on node `remove` (joint
    /// consensus; a call after a lost answer finishes or confirms the change). Answers the
    /// descriptor as applied. A leader asked to remove itself hands leadership away first
    /// and answers `NotLeader`.
    ReplaceVoter {
        /// The node whose replica leaves the voters.
        remove: NodeId,
        /// The learner that joins them.
        add: ReplicaId,
    },
    /// Removes a learner that has not become a voter (rolling a move back); answers the
    /// descriptor as applied.
    RemoveLearner {
        /// The learner's member id.
        replica: ReplicaId,
    },
    /// Who leads the partition, as this replica knows.
    Leader,
    /// A page of a backup: on the leader with `view` 0, opens a point-in-time view of the
    /// partition after a read barrier; with a view this node holds, reads on in it. Rows
    /// with keys from `from`, ending after the row that brings their bytes to `max_bytes`.
    /// (Last, so that older nodes still decode every other operation.)
    Export {
        /// The view to read on in; 0 opens one.
        view: u64,
        /// Inclusive start, within the partition.
        from: Vec<u8>,
        /// Bytes of keys and values after which the page ends.
        max_bytes: u64,
    },
    /// A digest of this node's replica (not the leader's): the SHA-256 of its rows as of
    /// the last entry it applied, to compare replicas (`cairn admin verify`). (Last, so that
    /// older nodes still decode every other operation.)
    Digest,
}

/// Answers of a partition replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PartitionReply {
    /// Done.
    Done,
    /// A value, if the key exists.
    Value(Option<Vec<u8>>),
    /// Rows in key order.
    Rows {
        /// The rows (values empty unless asked for).
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        /// The byte limit ended them: more rows may follow the last.
        cut: bool,
    },
    /// A leader, if known.
    Leader(Option<NodeId>),
    /// The two halves of a split.
    Split(PartitionDesc, PartitionDesc),
    /// A partition's descriptor as its leader applied it.
    Desc(PartitionDesc),
    /// A page of a backup.
    Export {
        /// The view the rows were read from (to pass on for the next page).
        view: u64,
        /// The rows, values included.
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        /// Where the next page of this view starts; `None`: the partition is done (and the
        /// view dropped).
        next: Option<Vec<u8>>,
        /// The partition's range as the view holds it.
        range: cairn_types::KeyRange,
    },
    /// A replica's digest: what it held as of one applied log entry.
    Digest(ReplicaDigest),
}

/// What one replica of a partition held as of the last entry it applied. Replicas that
/// applied the same entry must hold the same rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDigest {
    /// The index of the last log entry the replica applied.
    pub applied: u64,
    /// The partition's range as of that entry.
    pub range: cairn_types::KeyRange,
    /// Rows in the range.
    pub rows: u64,
    /// SHA-256 of the rows, each key and value with its length, in key order.
    pub sha256: Vec<u8>,
}

/// One decision of the controller and how acting on it went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When, ms since the Unix epoch (the metadata leader's clock).
    pub at_ms: u64,
    /// "split", "move", "transfer" or "report".
    pub kind: String,
    /// The partition (0: the metadata group).
    pub partition: PartitionId,
    /// What exactly, in words.
    pub detail: String,
    /// Why.
    pub why: String,
    /// "done" or what went wrong.
    pub outcome: String,
}

/// The controller as the metadata leader runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// Whether the metadata leader runs a controller (`--controller on`).
    pub enabled: bool,
    /// Whether an operator paused it.
    pub paused: bool,
    /// The metadata leader it runs beside.
    pub leader: NodeId,
    /// Nodes being drained.
    pub draining: Vec<NodeId>,
    /// Recent decisions, newest first.
    pub decisions: Vec<DecisionRecord>,
    /// Size and load of each partition as its leader last reported them.
    pub loads: Vec<(PartitionId, PartitionLoad)>,
}

/// An order-independent digest of a node's hosted replicas (descriptor and replica id), the
/// same for the same set within one build.
pub fn hosted_digest<D: std::borrow::Borrow<PartitionDesc>>(
    hosted: impl IntoIterator<Item = (D, ReplicaId)>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    hosted.into_iter().fold(0u64, |acc, (desc, rid)| {
        let mut h = std::hash::DefaultHasher::new();
        desc.borrow().hash(&mut h);
        rid.hash(&mut h);
        acc.wrapping_add(h.finish())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::KeyRange;

    fn desc(id: u64, conf_ver: u64) -> PartitionDesc {
        PartitionDesc {
            id: PartitionId(id),
            table_id: TableId(1),
            range: KeyRange::default(),
            epoch: Epoch {
                conf_ver,
                version: 1,
            },
            replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
            replica_ids: Default::default(),
        }
    }

    #[test]
    fn hosted_digest_ignores_order_and_sees_every_change() {
        let (a, b) = (desc(1, 1), desc(2, 1));
        let d = hosted_digest([(&a, ReplicaId(10)), (&b, ReplicaId(11))]);
        assert_eq!(d, hosted_digest([(&b, ReplicaId(11)), (&a, ReplicaId(10))]));
        assert_ne!(d, hosted_digest([(&a, ReplicaId(10))]), "a replica gone");
        assert_ne!(
            d,
            hosted_digest([(&a, ReplicaId(10)), (&b, ReplicaId(12))]),
            "a new incarnation"
        );
        let moved = desc(2, 2);
        assert_ne!(
            d,
            hosted_digest([(&a, ReplicaId(10)), (&moved, ReplicaId(11))]),
            "a membership change"
        );
    }
}
