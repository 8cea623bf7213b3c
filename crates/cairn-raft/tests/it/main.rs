//! Tests of the Raft glue against openraft's storage suite and Cairn's own rules.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod t10_openraft_suite;
mod t12_log_cache;
mod t14_entry_encoding;
mod t20_state_machine;
