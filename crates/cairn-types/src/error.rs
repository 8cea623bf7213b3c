//! The error vocabulary shared by replicas, routers, servers and clients.
//!
//! Routing errors (`NotLeader`, `EpochMismatch`, `KeyNotInRange`, `PartitionNotFound`)
//! carry their hints as fields; the router acts on them and the client normally never sees
//! them. [`Error::is_retryable`] separates what a retry may fix from what it cannot.

use crate::{Epoch, NodeId, PartitionDesc, PartitionId};
use serde::{Deserialize, Serialize};

/// Result alias using [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a Cairn request can fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The request is malformed; retrying it unchanged cannot succeed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Key longer than the configured limit.
    #[error("key is {len} bytes; the limit is {max} bytes (the servers' --max-key-bytes)")]
    KeyTooLarge {
        /// Length of the refused key.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Value longer than the configured limit.
    #[error(
        "value is {len} bytes; the limit is {max} bytes (the servers' --max-value-bytes); split \
         larger values over several keys"
    )]
    ValueTooLarge {
        /// Length of the refused value.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// No such table (or it is being dropped).
    #[error("table {0:?} not found; `cairn table list` shows the tables")]
    TableNotFound(String),
    /// A table of that name exists already.
    #[error("table {0:?} already exists")]
    AlreadyExists(String),
    /// Too few live nodes to place the replicas asked for.
    #[error(
        "replication {wanted} needs {wanted} live nodes but only {live} are live; start more nodes or lower the replication"
    )]
    NotEnoughNodes {
        /// Replicas asked for.
        wanted: u32,
        /// Live nodes known to the metadata group.
        live: u32,
    },
    /// This replica is not the leader of its group; `leader` is a hint.
    #[error("{partition} is not led by this node (leader hint: {leader:?})")]
    NotLeader {
        /// The partition asked for.
        partition: PartitionId,
        /// The leader as this replica knows it.
        leader: Option<NodeId>,
    },
    /// The request was routed with an old view of the partition.
    #[error("{partition} epoch mismatch: request had {requested}, replica has {current}")]
    EpochMismatch {
        /// The partition asked for.
        partition: PartitionId,
        /// Epoch the request carried.
        requested: Epoch,
        /// Epoch of the replica.
        current: Epoch,
        /// The replica's own descriptor and, after a split, the halves it knows of, so a
        /// router can patch its cache without asking the metadata group.
        descs: Vec<PartitionDesc>,
    },
    /// The key lies outside the range of the partition the request was sent to.
    #[error("key not in the range of {0}")]
    KeyNotInRange(PartitionId),
    /// The node holds no replica of that partition (any more).
    #[error("{0} has no replica on this node")]
    PartitionNotFound(PartitionId),
    /// No answer could be had within the deadline; the operation may or may not have
    /// happened if it was a write.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No partition, node or operation of that id (tables have [`Error::TableNotFound`]).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request contradicts the cluster's current state (an operation on that partition
    /// is running, a split key at a partition's start, a replica already on the node).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The node was removed from the cluster (`cairn admin remove-node`): its id is never
    /// accepted again.
    #[error(
        "node {0} was removed from the cluster and its id is retired; start a new node with a new --id and an empty data dir"
    )]
    NodeRemoved(crate::NodeId),
    /// The node that would have to store the write is below its free-space reserve; the
    /// write was refused before it was proposed, so it did not happen.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// A bug or a storage failure; details are in the node's log.
    #[error("internal error: {0}")]
    Internal(String),
    /// A secure cluster got a request with no credential it accepts.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but its role does not allow the request; nothing was done.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A user of that name exists already. (Last: errors travel between nodes encoded by
    /// variant index, so new variants go at the end.)
    #[error(
        "user {0:?} already exists; `cairn user remove {0}` first to give it a new token or role"
    )]
    UserExists(String),
}

/// Stable, machine-readable error codes used on HTTP and gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// See [`Error::InvalidArgument`].
    InvalidArgument,
    /// See [`Error::KeyTooLarge`] and [`Error::ValueTooLarge`].
    TooLarge,
    /// See [`Error::TableNotFound`].
    TableNotFound,
    /// See [`Error::AlreadyExists`].
    AlreadyExists,
    /// See [`Error::NotEnoughNodes`].
    NotEnoughNodes,
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::NodeRemoved`].
    NodeRemoved,
    /// See [`Error::DiskFull`].
    DiskFull,
    /// Any routing error that outlived the request deadline, and [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Internal`].
    Internal,
    /// See [`Error::Unauthenticated`].
    Unauthenticated,
    /// See [`Error::PermissionDenied`].
    PermissionDenied,
}

impl ErrorCode {
    /// The upper-case code string used on the wire, e.g. `TABLE_NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::TooLarge => "TOO_LARGE",
            Self::TableNotFound => "TABLE_NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::NotEnoughNodes => "NOT_ENOUGH_NODES",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
            Self::NodeRemoved => "NODE_REMOVED",
            Self::DiskFull => "DISK_FULL",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
        }
    }

    /// The HTTP status that fits the code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::TooLarge => 413,
            Self::TableNotFound | Self::NotFound => 404,
            Self::AlreadyExists | Self::Conflict => 409,
            Self::NodeRemoved => 410,
            // Insufficient Storage.
            Self::DiskFull => 507,
            Self::NotEnoughNodes | Self::Unavailable => 503,
            Self::Internal => 500,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
        }
    }

    /// Parses a code string as produced by [`ErrorCode::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "INVALID_ARGUMENT" => Self::InvalidArgument,
            "TOO_LARGE" => Self::TooLarge,
            "TABLE_NOT_FOUND" => Self::TableNotFound,
            "ALREADY_EXISTS" => Self::AlreadyExists,
            "NOT_ENOUGH_NODES" => Self::NotEnoughNodes,
            "NOT_FOUND" => Self::NotFound,
            "CONFLICT" => Self::Conflict,
            "NODE_REMOVED" => Self::NodeRemoved,
            "DISK_FULL" => Self::DiskFull,
            "UNAVAILABLE" => Self::Unavailable,
            "INTERNAL" => Self::Internal,
            "UNAUTHENTICATED" => Self::Unauthenticated,
            "PERMISSION_DENIED" => Self::PermissionDenied,
            _ => return None,
        })
    }
}

impl Error {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::KeyTooLarge { .. } | Self::ValueTooLarge { .. } => ErrorCode::TooLarge,
            Self::TableNotFound(_) => ErrorCode::TableNotFound,
            Self::AlreadyExists(_) | Self::UserExists(_) => ErrorCode::AlreadyExists,
            Self::NotEnoughNodes { .. } => ErrorCode::NotEnoughNodes,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::NodeRemoved(_) => ErrorCode::NodeRemoved,
            Self::DiskFull(_) => ErrorCode::DiskFull,
            Self::NotLeader { .. }
            | Self::EpochMismatch { .. }
            | Self::KeyNotInRange(_)
            | Self::PartitionNotFound(_)
            | Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
        }
    }

    /// Whether the router should refresh its routes and try again.
    pub fn is_routing(&self) -> bool {
        matches!(
            self,
            Self::NotLeader { .. }
                | Self::EpochMismatch { .. }
                | Self::KeyNotInRange(_)
                | Self::PartitionNotFound(_)
        )
    }

    /// Whether a retry (after a route refresh or backoff) may succeed.
    pub fn is_retryable(&self) -> bool {
        self.is_routing() || matches!(self, Self::Unavailable(_))
    }
}

/// Longest pause between two attempts of one request, in the client and in a node's router.
///
/// A request waiting out a failover (about a second) reaches the new leader at its first
/// retry after the election, so this pause adds to every failover as clients see it: at
/// 250 ms `bench/failover.sh` measured 1.33–1.85 s, at 100 ms 1.19–1.30 s. A retry is one
/// small call, and etcd's client retries every 25 ms.
pub const MAX_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Pause before retry `attempt` (from 0): `first`, doubling, then a steady
/// [`MAX_RETRY_PAUSE`].
pub fn retry_pause(first: std::time::Duration, attempt: u32) -> std::time::Duration {
    (first * (1u32 << attempt.min(4))).min(MAX_RETRY_PAUSE)
}

#[cfg(test)]
mod retry_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_pauses_double_then_hold_at_the_cap() {
        let ms = |a| retry_pause(Duration::from_millis(20), a).as_millis();
        assert_eq!(
            (0..7).map(ms).collect::<Vec<_>>(),
            [20, 40, 80, 100, 100, 100, 100]
        );
        assert_eq!(
            retry_pause(Duration::from_millis(25), u32::MAX),
            MAX_RETRY_PAUSE
        );
    }
}
