//! What a run measured: throughput and latency percentiles per operation, errors by kind.

use crate::workload::{Op, Workload};
use crate::{BenchArgs, Consistency, DriverKind, KeyDist};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies of one operation kind, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct OpStats {
    /// Operation kind.
    pub op: &'static str,
    /// Successful operations.
    pub count: u64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Median.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Store driven.
    pub driver: DriverKind,
    /// Workload run.
    pub workload: Workload,
    /// Concurrent clients.
    pub clients: u64,
    /// Records.
    pub records: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Key distribution.
    pub distribution: KeyDist,
    /// Read consistency.
    pub consistency: Consistency,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// Successful operations of every kind.
    pub total_ops: u64,
    /// Successful operations per second, all kinds.
    pub ops_per_sec: f64,
    /// Per operation kind.
    pub ops: Vec<OpStats>,
    /// Failed operations by operation and error kind.
    pub errors: BTreeMap<String, u64>,
    /// Longest time without any acknowledged operation, in milliseconds, and when it
    /// ended (seconds into the run): after a leader is killed, the failover as clients see it.
    pub longest_gap_ms: f64,
    /// When the longest gap ended, in seconds since the run started.
    pub longest_gap_end_s: f64,
    /// Every time of 100 ms or more without an acknowledged operation, in wall-clock time.
    pub gaps: Vec<Gap>,
}

/// A time without any acknowledged operation.
#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    /// When the last acknowledgement before it came (Unix milliseconds).
    pub start_unix_ms: u64,
    /// When the first acknowledgement after it came (Unix milliseconds).
    pub end_unix_ms: u64,
}

impl Report {
    pub(crate) fn new(
        args: &BenchArgs,
        workload: Workload,
        elapsed: Duration,
        lat: &BTreeMap<Op, Histogram<u64>>,
        errors: BTreeMap<String, u64>,
        gap: (Duration, Duration),
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ops: Vec<OpStats> = lat
            .iter()
            .map(|(op, h)| OpStats {
                op: op.name(),
                count: h.len(),
                ops_per_sec: h.len() as f64 / secs,
                p50_us: h.value_at_quantile(0.50),
                p95_us: h.value_at_quantile(0.95),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
            })
            .collect();
        let total_ops = ops.iter().map(|o| o.count).sum();
        Self {
            driver: args.driver,
            workload,
            clients: args.clients,
            records: args.records,
            value_size: args.value_size,
            distribution: args.distribution,
            consistency: args.consistency,
            elapsed_secs: secs,
            total_ops,
            ops_per_sec: total_ops as f64 / secs,
            ops,
            errors,
            longest_gap_ms: gap.0.as_secs_f64() * 1000.0,
            longest_gap_end_s: gap.1.as_secs_f64(),
            gaps: Vec::new(),
        }
    }

    /// The highest p99 over the operation kinds, in microseconds.
    pub fn p99_us(&self) -> u64 {
        self.ops.iter().map(|o| o.p99_us).max().unwrap_or(0)
    }

    /// Prints the report as a table.
    pub fn print(&self) {
        println!(
            "{:?} workload {:?}: {} clients, {} records of {} B, {:?} keys, {:?} reads",
            self.driver,
            self.workload,
            self.clients,
            self.records,
            self.value_size,
            self.distribution,
            self.consistency
        );
        println!(
            "{} operations in {:.1} s: {:.0} ops/s",
            self.total_ops, self.elapsed_secs, self.ops_per_sec
        );
        println!(
            "{:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "count", "ops/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        let ms = |us: u64| us as f64 / 1000.0;
        for o in &self.ops {
            println!(
                "{:<8} {:>10} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                o.op,
                o.count,
                o.ops_per_sec,
                ms(o.p50_us),
                ms(o.p95_us),
                ms(o.p99_us),
                ms(o.p999_us),
                ms(o.max_us)
            );
        }
        println!(
            "longest time without an acknowledged operation: {:.0} ms (ended {:.1} s into the run)",
            self.longest_gap_ms, self.longest_gap_end_s
        );
        if self.errors.is_empty() {
            println!("errors: none");
        } else {
            for (k, n) in &self.errors {
                println!("errors: {n} {k}");
            }
        }
    }
}
