//! The metadata of a Cairn cluster and the pure logic that changes it.
//!
//! The metadata group (Raft group 0) replicates a [`MetaState`]: the tables with their
//! partitions, and the registered nodes. Every change is a [`MetaCommand`] applied by
//! [`MetaState::apply`], a deterministic function, so every metadata replica reaches the
//! same state at the same log position. Decisions that depend on more than the state
//! (which nodes are live) are made by the metadata leader *before* proposing, by pure
//! functions such as [`placement::place`], and travel inside the command.

pub mod placement;
pub mod planner;
mod state;

pub use cairn_types::{KEEP_DROPS, KEEP_FINISHED, OpKind, OpState, Operation};
pub use state::{MetaCommand, MetaResponse, MetaState, Reconcile, UserEntry, validate_split_keys};
