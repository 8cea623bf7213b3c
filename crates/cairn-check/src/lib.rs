//! Checkers for histories of Cairn operations.
//!
//! A history is a sequence of JSON lines in the Jepsen style (see [`Event`]): each
//! operation is an `invoke` by a process followed by its completion, `ok` (it happened),
//! `fail` (it certainly did not happen) or `info` (unknown: it may have happened, at any
//! time after its invocation). Checkers:
//!
//! - [`check_registers`]: every key of every table, taken alone, is a linearizable register
//!   (put, delete, get). Keys are independent (P-compositionality), so each key's history is
//!   searched on its own with a Wing–Gong / Lowe style search.
//! - [`check_lists`]: every List saw each key that was surely present for its whole run, saw
//!   no key that was surely absent for its whole run, and returned keys in strict byte
//!   order.
//!
//! A workload runner (not in this crate) produces the histories; these functions only
//! judge them.

mod history;
mod list;
mod register;
pub mod workload;

pub use history::{Event, EventType, Function, History, Operation, parse_history};
pub use list::{ListViolation, check_lists};
pub use register::{RegisterViolation, check_registers};
