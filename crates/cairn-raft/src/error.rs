//! Turning openraft errors into Cairn's routing and availability errors.

use crate::TypeConfig;
use cairn_types::{Error, NodeId, PartitionId};
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};

/// Maps a failed `client_write` to `NotLeader` (with the leader hint) or `Unavailable`.
pub fn from_client_write(
    group: PartitionId,
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> Error {
    match e.forward_to_leader() {
        Some(f) => Error::NotLeader {
            partition: group,
            leader: f.leader_id.map(NodeId),
        },
        None => Error::Unavailable(format!("{group}: {e}")),
    }
}

/// Maps a failed linearizable read barrier to `NotLeader` or `Unavailable`.
pub fn from_read_error(
    group: PartitionId,
    e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>,
) -> Error {
    match e.forward_to_leader() {
        Some(f) => Error::NotLeader {
            partition: group,
            leader: f.leader_id.map(NodeId),
        },
        None => Error::Unavailable(format!("{group}: {e}")),
    }
}
