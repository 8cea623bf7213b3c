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
    /// Acknowledged operations in each whole 100 ms of the run, in order.
    pub ops_per_100ms: Vec<u32>,
    /// What [`Report::ops_per_100ms`] says about stalls.
    pub windows: Windows,
    /// Open loop (`--rate`): the operations per second scheduled; absent for closed loop.
    pub target_ops_per_sec: Option<f64>,
    /// Open loop: operations overdue by more than 1 ms (`OVERDUE`) when their client came to
    /// them (the previous one was answered late). Every latency counts from when it was due.
    pub late_ops: u64,
}

/// Throughput in 100 ms windows: a stall of a tenth of a second shows as a window well
/// below the median, where a per-second rate or a percentile hides when it happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Windows {
    /// Whole windows in the run.
    pub count: usize,
    /// The median window's operations.
    pub median_ops: u32,
    /// The fewest operations in one window.
    pub min_ops: u32,
    /// Windows with fewer than three quarters of the median's operations. A stall of 30 to
    /// 100 ms that halves the rate leaves about that much in the window it falls in.
    pub slow: usize,
}

impl Windows {
    /// Summarises operations per window.
    pub fn of(ops: &[u32]) -> Self {
        let mut sorted = ops.to_vec();
        sorted.sort_unstable();
        let Some(&min_ops) = sorted.first() else {
            return Self::default();
        };
        let median_ops = sorted[sorted.len() / 2];
        Self {
            count: ops.len(),
            median_ops,
            min_ops,
            slow: ops
                .iter()
                .filter(|&&n| u64::from(n) * 4 < u64::from(median_ops) * 3)
                .count(),
        }
    }
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
            ops_per_100ms: Vec::new(),
            windows: Windows::default(),
            target_ops_per_sec: None,
            late_ops: 0,
        }
    }

    /// Marks the run as open loop at `rate` operations per second, `late` of them overdue.
    pub(crate) fn set_open_loop(&mut self, rate: f64, late: u64) {
        self.target_ops_per_sec = Some(rate);
        self.late_ops = late;
    }

    /// What an open-loop run says about its schedule, if it was one: the rate asked for and
    /// done, the operations that had to wait for their client, and a warning if the clients
    /// could not keep to it.
    fn schedule_line(&self) -> Option<String> {
        let rate = self.target_ops_per_sec?;
        let mut line = format!(
            "open loop: {rate:.0} ops/s scheduled, {:.0} done; {} operations ({:.1}%) were \
             overdue by more than {:?} when their client came to them; latency counts from \
             when each operation was due",
            self.ops_per_sec,
            self.late_ops,
            self.late_ops as f64 * 100.0 / self.total_ops.max(1) as f64,
            crate::OVERDUE,
        );
        // A slow answer makes the next operation of its client overdue, which the latency
        // shows; a run that did not reach the rate measured a queue, not the store at it.
        if self.ops_per_sec < rate * 0.95 {
            line.push_str(&format!(
                "\nwarning: the clients fell behind the schedule: {} clients, one operation in \
                 flight each, cannot keep {rate:.0} ops/s at this latency; raise --clients or \
                 lower --rate",
                self.clients
            ));
        }
        Some(line)
    }

    /// Records the operations acknowledged in each whole 100 ms of the run.
    pub(crate) fn set_windows(&mut self, ops: Vec<u32>) {
        self.windows = Windows::of(&ops);
        self.ops_per_100ms = ops;
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
        if let Some(line) = self.schedule_line() {
            println!("{line}");
        }
        let w = &self.windows;
        if w.count > 0 {
            println!(
                "per 100 ms: median {} ops, fewest {}; {} of {} windows below 3/4 of the median",
                w.median_ops, w.min_ops, w.slow, w.count
            );
        }
        if self.errors.is_empty() {
            println!("errors: none");
        } else {
            for (k, n) in &self.errors {
                println!("errors: {n} {k}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Report, Windows};
    use crate::{BenchArgs, Workload};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn report(clients: u64, total: u64) -> Report {
        let args = Cli::parse_from(["bench", "--clients", &clients.to_string()]).bench;
        let mut r = Report::new(
            &args,
            Workload::Write,
            std::time::Duration::from_secs(1),
            &Default::default(),
            Default::default(),
            Default::default(),
        );
        r.total_ops = total;
        r.ops_per_sec = total as f64;
        r
    }

    #[test]
    fn an_open_loop_run_warns_when_its_clients_fell_behind() {
        assert_eq!(report(4, 1000).schedule_line(), None, "closed loop");
        let mut kept_up = report(4, 960);
        kept_up.set_open_loop(1000.0, 15);
        let line = kept_up.schedule_line().unwrap();
        assert!(
            line.starts_with("open loop: 1000 ops/s scheduled, 960 done; 15 operations (1.6%)"),
            "{line}"
        );
        assert!(!line.contains("warning"), "96% of the rate kept it: {line}");
        let mut behind = report(4, 940);
        behind.set_open_loop(1000.0, 900);
        let line = behind.schedule_line().unwrap();
        assert!(
            line.contains("warning: the clients fell behind") && line.contains("raise --clients"),
            "{line}"
        );
    }

    #[test]
    fn windows_count_the_stalls_below_three_quarters_of_the_median() {
        // Steady at about 1,700 ops per window, with two stalls and a dip that is not one.
        let ops = [1700, 1650, 400, 1720, 1690, 1300, 10, 1710, 1680];
        let w = Windows::of(&ops);
        assert_eq!(w.count, 9);
        assert_eq!(w.median_ops, 1680);
        assert_eq!(w.min_ops, 10);
        assert_eq!(w.slow, 2);
    }

    #[test]
    fn a_run_without_a_whole_window_has_no_summary() {
        assert_eq!(Windows::of(&[]), Windows::default());
    }
}
