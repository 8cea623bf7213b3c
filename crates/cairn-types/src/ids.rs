//! Newtype identifiers, so that a node id can never be passed where a partition id is meant.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// One server process. Also its member id inside every Raft group it belongs to.
    NodeId,
    "n"
);
id_type!(
    /// A partition of a table; equal to the id of the Raft group that replicates it.
    PartitionId,
    "p"
);
id_type!(
    /// One replica of one group: openraft's member id inside that group. Allocated by the
    /// metadata group and never reused within a group, so a node that leaves a group and
    /// comes back joins as a new member that no old log entry names (the node it lives on
    /// travels in the member's node data).
    ReplicaId,
    "r"
);
id_type!(
    /// A table; its data lives in the engine under a prefix made of this id.
    TableId,
    "t"
);
id_type!(
    /// A client session, chosen at random by a client (or a router acting for one).
    ClientId,
    "c"
);

/// Replica ids handed out by the metadata group start here. Below it, a replica id is its
/// node's id: the founding members of the metadata group (formed before any metadata
/// exists to allocate from) use their node ids, and node ids are kept below this bound.
pub const FIRST_REPLICA_ID: u64 = 1 << 32;

/// The Raft group that holds the cluster metadata (tables, partitions, nodes).
pub const META_GROUP: PartitionId = PartitionId(0);

/// Identifies one write for at-most-once application: `(client, seq)` is unique, and the
/// client promises that every seq below `first_incomplete` has been answered, so replicas
/// may forget them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The session that issued the write.
    pub client: ClientId,
    /// Sequence number within the session, starting at 1.
    pub seq: u64,
    /// Lowest seq of this session whose answer the client has not yet received.
    pub first_incomplete: u64,
}
