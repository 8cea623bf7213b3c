//! A Cairn node.
//!
//! ```text
//!            clients (gRPC Kv / HTTP)          peers (gRPC Internal)
//!                     │                               │
//!                 ┌───▼────────┐   Transport   ┌──────▼──────────┐
//!                 │   Router   │──────────────▶│ Core            │
//!                 │ route cache│  local or RPC │  replicas: one  │
//!                 └────────────┘               │  openraft group │
//!                                              │  per partition  │
//!                                              │  + metadata grp │
//!                                              └──────┬──────────┘
//!                                                     ▼
//!                                         one engine (fjall), one syncer
//! ```
//!
//! [`Node::start`] opens the engine, recovers the replicas recorded in it, joins or forms
//! the cluster, and serves gRPC and HTTP until [`Node::shutdown`]. Background tasks send
//! heartbeats to the metadata leader and reconcile the local replicas with the metadata.

// The batch handler's future nests the whole request path; its layout needs more depth
// than the default 128 in release builds.
#![recursion_limit = "256"]

mod auth;
mod config;
mod controller;
mod core;
mod disk;
mod export;
mod grpc;
mod heartbeat;
mod http;
mod http_serve;
mod log_bound;
mod logs;
mod meta_service;
mod metrics;
mod moves;
mod node;
mod reads;
mod stats;
mod supervisor;
mod transport;
mod verify;
mod writes;

pub use auth::AUTH_TTL;
pub use cairn_raft::DEFAULT_COMMIT_HOLD;
pub use cairn_raft::Syncer;
pub use cairn_raft::fault::set_crash_point;
pub use cairn_raft::{
    DEFAULT_SNAPSHOT_LOG_BYTES, DEFAULT_SNAPSHOT_LOGS, log_bytes_held, log_bytes_kept, max_log_held,
};
pub use config::{ControllerConfig, ServerConfig, parse_initial_cluster, parse_size};
pub use http_serve::DEFAULT_HTTP_READ_TIMEOUT;
pub use logs::{DEFAULT_LOG_TAIL_BYTES, LogTail};
pub use moves::DEFAULT_MOVE_TIMEOUT;
pub use node::{LeaderHint, Node, Substrate};
