//! Cairn's shared vocabulary: identifiers, epochs, key ranges, table and partition
//! descriptors, request limits and the error type every layer speaks.
//!
//! This crate does no I/O; everything here is plain data that travels between the
//! storage, raft, metadata, router, server and client crates.

mod error;
mod ids;
mod limits;
mod model;
mod range;
mod session;

pub use error::{Error, ErrorCode, Result};
pub use ids::{ClientId, NodeId, PartitionId, RequestId, TableId, META_GROUP};
pub use limits::{validate_table_name, Limits};
pub use model::{
    NodeDesc, PartitionDesc, PartitionStatus, TableDesc, TableState, DEFAULT_REPLICATION,
};
pub use range::{Epoch, KeyRange};
pub use session::Session;
