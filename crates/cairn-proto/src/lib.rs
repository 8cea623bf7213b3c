//! Cairn's gRPC services and messages, generated from `proto/cairn.proto`.
//!
//! Three services share each node's gRPC port: `Kv` (the client API), `Admin` (inspection)
//! and `Internal` (node to node: Raft traffic, routed partition requests and metadata
//! requests, framed as postcard payloads in an [`v1::Envelope`]).

pub mod net;
pub mod tls;

/// Generated code for package `cairn.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("cairn.v1");
}

/// The largest gRPC message a node accepts or sends: a 1 MiB value plus framing, and Raft
/// batches and snapshots well above that.
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;
