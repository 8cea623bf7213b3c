//! What goes into the Raft logs and what applying it answers.

use cairn_meta::{MetaCommand, MetaResponse};
use cairn_types::{Epoch, Error, PartitionDesc, PartitionId, RequestId, TableId};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The application payload of a log entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// A write to a partition group.
    Kv(KvCommand),
    /// A change to the metadata (group 0 only).
    Meta(MetaCommand),
    /// Concurrent puts and deletes to one partition proposed as one entry: each is checked,
    /// deduplicated and answered on its own, as if it had its own entry, in this order.
    /// Shared, so that handing the entry to each follower and to apply copies no key or
    /// value (encoded as the list itself).
    KvBatch(Arc<[KvCommand]>),
}

/// A write to one partition, as proposed by its leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KvCommand {
    /// Set for client writes that must apply at most once.
    pub request_id: Option<RequestId>,
    /// The partition epoch the router believed; checked again at apply time.
    pub epoch: Epoch,
    /// The group's time at proposal, in ms: the leader's monotonic clock, shifted so that it
    /// never runs behind the time of the writes the group applied before. It drives session
    /// expiry deterministically (every replica sees the same value) and never comes from a
    /// wall clock, so a wall clock jumped forward by hours cannot expire a session whose
    /// client is still retrying (which would apply the retry twice).
    pub proposed_at_ms: u64,
    /// The change.
    pub op: KvOp,
}

impl KvCommand {
    /// The bytes of key and value it carries (what a batch of writes is sized by).
    pub fn op_bytes(&self) -> usize {
        match &self.op {
            KvOp::Put { key, value, .. } => key.len() + value.len(),
            KvOp::Delete { key, .. } | KvOp::Split { key, .. } => key.len(),
            KvOp::Drop => 0,
        }
    }
}

/// The change a [`KvCommand`] makes.
///
/// Keys and values are (de)serialized as byte strings, not as sequences of `u8`: postcard
/// writes both the same way (a length, then the bytes), but a sequence goes through serde
/// one byte at a time, which cost a few percent of a node's CPU under write load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum KvOp {
    /// Sets a key.
    Put {
        /// Table the partition belongs to.
        table: TableId,
        /// User key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Removes a key (absent keys are fine).
    Delete {
        /// Table the partition belongs to.
        table: TableId,
        /// User key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The table was dropped: refuse every request from this log position on.
    Drop,
    /// Splits the partition at `key`: from this log position on it keeps `[start, key)` and
    /// the new partition `right` (a new group on the same replicas) owns `[key, end)`.
    Split {
        /// First key of the right half; strictly inside the range.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Id of the right half, allocated by the metadata group.
        right: PartitionId,
    },
}

/// The answer of applying one entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to a [`KvCommand`].
    Kv(Result<(), Error>),
    /// Answer to a split: the left and the right half.
    Split(Result<(PartitionDesc, PartitionDesc), Error>),
    /// Answer to a [`MetaCommand`].
    Meta(MetaResponse),
    /// Answers to a [`Command::KvBatch`], one per write, in its order.
    KvBatch(Vec<Result<(), Error>>),
    /// Blank and membership entries answer nothing.
    None,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Kv(c) => match &c.op {
                KvOp::Put { table, key, value } => {
                    write!(f, "put {table} key={}B value={}B", key.len(), value.len())
                }
                KvOp::Delete { table, key } => write!(f, "delete {table} key={}B", key.len()),
                KvOp::Drop => write!(f, "drop"),
                KvOp::Split { key, right } => write!(f, "split at {}B into {right}", key.len()),
            },
            Command::Meta(m) => write!(f, "meta {m:?}"),
            Command::KvBatch(b) => write!(f, "batch of {} writes", b.len()),
        }
    }
}
