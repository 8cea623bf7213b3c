//! Turning openraft errors into Cairn's routing and availability errors.

use crate::TypeConfig;
use cairn_types::{Error, NodeId, PartitionId};
use openraft::TryAsRef;
use openraft::error::{ForwardToLeader, RaftError};

/// Maps a failed `client_write` or read barrier to `NotLeader` (with the leader hint) or
/// `Unavailable`.
pub fn from_raft<E>(group: PartitionId, e: RaftError<TypeConfig, E>) -> Error
where
    E: std::error::Error + TryAsRef<ForwardToLeader<TypeConfig>>,
{
    match e.forward_to_leader() {
        Some(f) => Error::NotLeader {
            partition: group,
            // The member id is a replica id; the hint names the node it lives on.
            leader: f.leader_node.as_ref().map(|m| NodeId(m.node)),
        },
        None => Error::Unavailable(format!("{group}: {e}")),
    }
}
