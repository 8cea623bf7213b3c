//! The request router that runs on every node.
//!
//! A client request names a table and a key; the router finds the partition that owns the
//! key in its [`RouteCache`], sends the request to that partition's leader (a hint), and on
//! a routing error (`NotLeader{hint}`, `EpochMismatch`, `KeyNotInRange`,
//! `PartitionNotFound`) updates or refreshes the route from the metadata group and tries
//! again, until the request's deadline. Clients never see a wrong answer because a route
//! was stale: replicas check the epoch and range of every request.

mod cache;
mod export;
mod messages;
mod router;

pub use cache::{RouteCache, TableRoute};
pub use export::{ExportCursor, ExportPage};
pub use messages::{
    ControllerStatus, Credential, DecisionRecord, Diagnostic, Heartbeat, MetaReply, MetaRequest,
    NodeStatus, PartitionOp, PartitionReply, PartitionRequest, ReplicaDigest, hosted_digest,
};
pub use router::{DEFAULT_DEADLINE, LIST_PAGE_BYTES, ListPage, Router, Served, Transport};
