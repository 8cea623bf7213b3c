//! End-to-end tests on clusters of real `cairn` processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod cluster;
mod t10_tables_and_keys;
mod t15_bench;
mod t20_leader_crash;
mod t21_quiescence;
mod t30_whole_cluster_crash;
mod t40_bad_input;
mod t50_retried_writes;
mod t60_playground;
mod t62_tls;
mod t63_auth;
mod t64_debug_zip;
mod t65_haproxy;
mod t66_json_logs;
mod t67_config_file;
mod t68_metrics;
mod t69_console;
mod t70_snapshot_and_join;
mod t71_raft_stream_fallback;
mod t72_health_checks;
mod t73_log_purge;
mod t74_log_bytes;
mod t75_silent_connections;
mod t76_backup;
mod t77_verify;
mod t80_pause;
mod t85_split;
mod t87_moves;
mod t88_crash_points;
mod t89_power;
mod t90_chaos;
mod t91_controller;
mod t95_nemesis;
