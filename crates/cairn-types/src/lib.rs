//! Cairn's shared vocabulary: identifiers, epochs, key ranges, table and partition
//! descriptors, request limits and the error type every layer speaks.
//!
//! This crate does no I/O; everything here is plain data that travels between the
//! storage, raft, metadata, router, server and client crates.

mod auth;
pub mod entropy;
mod error;
mod ids;
mod limits;
mod model;
mod operation;
mod range;
mod session;

pub use auth::{Access, ROOT_USER, Role, User, validate_user_name};
pub use error::{Error, ErrorCode, MAX_RETRY_PAUSE, Result, retry_pause};
pub use ids::{
    ClientId, FIRST_REPLICA_ID, META_GROUP, NodeId, PartitionId, ReplicaId, RequestId, TableId,
};
pub use limits::{
    CREATE_TIME_PER_PARTITION, Limits, MAX_CREATE_PARTITIONS, MAX_KEY_BYTES_CEILING,
    MAX_VALUE_BYTES_CEILING, check_split_count, create_table_time, validate_table_name,
};
pub use model::{
    DEFAULT_REPLICATION, KeySample, NodeDesc, PartitionDesc, PartitionLoad, PartitionStatus,
    TableDesc, TableState,
};
pub use operation::{KEEP_DROPS, KEEP_FINISHED, OpKind, OpState, Operation};
pub use range::{Epoch, KeyRange};
pub use session::{Pending, Session};
