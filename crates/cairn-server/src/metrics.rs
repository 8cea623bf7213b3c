//! Counters and latency histograms exported in Prometheus text format on `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Client operations, the label values of `op`.
const OPS: [&str; 8] = [
    "put",
    "get",
    "delete",
    "list",
    "create_table",
    "drop_table",
    "list_tables",
    "describe_table",
];

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One operation's counters; `buckets[i]` counts requests no slower than `BUCKETS[i]`
/// (non-cumulative; cumulated when rendered).
#[derive(Default)]
struct OpStats {
    requests: AtomicU64,
    errors: AtomicU64,
    micros_sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

/// Point-in-time values rendered beside the counters.
pub(crate) struct Gauges {
    /// This node's id.
    pub(crate) node: u64,
    /// Replicas hosted.
    pub(crate) replicas: usize,
    /// Replicas led.
    pub(crate) leaders: usize,
    /// Whether this node leads the metadata group.
    pub(crate) meta_leader: bool,
    /// Duplicates recognised by the hosted replicas since they opened.
    pub(crate) duplicate_writes: u64,
    /// Free bytes on the data disk at the last measure.
    pub(crate) disk_free_bytes: u64,
    /// Whether the disk is below the reserve (writes refused).
    pub(crate) disk_full: bool,
    /// Writes refused for lack of disk space since the node started.
    pub(crate) disk_full_refusals: u64,
    /// Led groups ticking (busy) at the supervisor's last pass; the rest are quiescent.
    pub(crate) groups_ticking: u64,
    /// Campaigns the supervisor started since the node started.
    pub(crate) campaigns: u64,
    /// Peers that count as down.
    pub(crate) peers_down: u64,
}

/// Request counters and latency histograms of a node.
#[derive(Default)]
pub(crate) struct Metrics {
    ops: [OpStats; OPS.len()],
    fsync_failures: AtomicU64,
}

impl Metrics {
    /// Counts a failed fsync (the node stops after it).
    pub(crate) fn fsync_failed(&self) {
        self.fsync_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request of `op`, whether it failed, and how long it took.
    pub(crate) fn record(&self, op: &str, ok: bool, took: Duration) {
        let Some(i) = OPS.iter().position(|o| *o == op) else {
            return;
        };
        let s = &self.ops[i];
        s.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        s.micros_sum
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|le| secs <= *le) {
            s.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Renders the counters plus the given gauges.
    pub(crate) fn render(&self, g: &Gauges) -> String {
        let node = g.node;
        let mut s = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP cairn_requests_total Client requests handled by this node, by operation."
        );
        let _ = writeln!(s, "# TYPE cairn_requests_total counter");
        for (op, st) in OPS.iter().zip(&self.ops) {
            let _ = writeln!(
                s,
                "cairn_requests_total{{node=\"{node}\",op=\"{op}\"}} {}",
                load(&st.requests)
            );
        }
        let _ = writeln!(
            s,
            "# HELP cairn_request_errors_total Client requests that returned an error, by operation."
        );
        let _ = writeln!(s, "# TYPE cairn_request_errors_total counter");
        for (op, st) in OPS.iter().zip(&self.ops) {
            let _ = writeln!(
                s,
                "cairn_request_errors_total{{node=\"{node}\",op=\"{op}\"}} {}",
                load(&st.errors)
            );
        }
        let _ = writeln!(
            s,
            "# HELP cairn_request_duration_seconds Time to answer a client request, by operation."
        );
        let _ = writeln!(s, "# TYPE cairn_request_duration_seconds histogram");
        for (op, st) in OPS.iter().zip(&self.ops) {
            let mut cumulative = 0;
            for (le, b) in BUCKETS.iter().zip(&st.buckets) {
                cumulative += load(b);
                let _ = writeln!(
                    s,
                    "cairn_request_duration_seconds_bucket{{node=\"{node}\",op=\"{op}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = load(&st.requests);
            let _ = writeln!(
                s,
                "cairn_request_duration_seconds_bucket{{node=\"{node}\",op=\"{op}\",le=\"+Inf\"}} {count}"
            );
            let sum = load(&st.micros_sum) as f64 / 1e6;
            let _ = writeln!(
                s,
                "cairn_request_duration_seconds_sum{{node=\"{node}\",op=\"{op}\"}} {sum}"
            );
            let _ = writeln!(
                s,
                "cairn_request_duration_seconds_count{{node=\"{node}\",op=\"{op}\"}} {count}"
            );
        }
        let mut one = |name: &str, kind: &str, help: &str, value: Option<u64>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            if let Some(v) = value {
                let _ = writeln!(s, "{name}{{node=\"{node}\"}} {v}");
            }
        };
        one(
            "cairn_replicas",
            "gauge",
            "Partition replicas hosted by this node.",
            Some(g.replicas as u64),
        );
        one(
            "cairn_leaders",
            "gauge",
            "Partition replicas this node leads.",
            Some(g.leaders as u64),
        );
        one(
            "cairn_metadata_leader",
            "gauge",
            "1 if this node leads the metadata group.",
            Some(u64::from(g.meta_leader)),
        );
        one(
            "cairn_duplicate_writes_total",
            "counter",
            "Retried writes recognised by their request id and not applied again.",
            Some(g.duplicate_writes),
        );
        one(
            "cairn_disk_free_bytes",
            "gauge",
            "Free bytes on the data disk at the last measure.",
            (g.disk_free_bytes != u64::MAX).then_some(g.disk_free_bytes),
        );
        one(
            "cairn_disk_full",
            "gauge",
            "1 while the data disk is below --disk-reserve and writes are refused.",
            Some(u64::from(g.disk_full)),
        );
        one(
            "cairn_disk_full_refusals_total",
            "counter",
            "Writes refused because the data disk was below the reserve.",
            Some(g.disk_full_refusals),
        );
        one(
            "cairn_raft_groups_ticking",
            "gauge",
            "Led partition groups that are busy and heartbeat; idle ones send nothing.",
            Some(g.groups_ticking),
        );
        one(
            "cairn_raft_campaigns_total",
            "counter",
            "Elections this node's replicas started because their leader was gone or unknown.",
            Some(g.campaigns),
        );
        one(
            "cairn_peers_down",
            "gauge",
            "Peer nodes that have not answered a liveness probe recently.",
            Some(g.peers_down),
        );
        one(
            "cairn_fsync_failures_total",
            "counter",
            "Failed fsyncs (the node stops at the first).",
            Some(self.fsync_failures.load(Ordering::Relaxed)),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_errors() {
        let m = Metrics::default();
        m.record("put", true, Duration::from_micros(300));
        m.record("put", false, Duration::from_millis(30));
        m.record("put", true, Duration::from_secs(60));
        m.record("unknown", true, Duration::ZERO);
        let g = Gauges {
            node: 1,
            replicas: 2,
            leaders: 1,
            meta_leader: true,
            duplicate_writes: 4,
            disk_free_bytes: 1 << 20,
            disk_full: true,
            disk_full_refusals: 3,
            groups_ticking: 0,
            campaigns: 0,
            peers_down: 0,
        };
        m.fsync_failed();
        let text = m.render(&g);
        assert!(text.contains("cairn_disk_full{node=\"1\"} 1"), "{text}");
        assert!(
            text.contains("cairn_disk_full_refusals_total{node=\"1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("cairn_disk_free_bytes{node=\"1\"} 1048576"),
            "{text}"
        );
        assert!(
            text.contains("cairn_fsync_failures_total{node=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cairn_duplicate_writes_total{node=\"1\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("cairn_requests_total{node=\"1\",op=\"put\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("cairn_request_errors_total{node=\"1\",op=\"put\"} 1"),
            "{text}"
        );
        assert!(text.contains("op=\"put\",le=\"0.0005\"} 1"), "{text}");
        assert!(text.contains("op=\"put\",le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("op=\"put\",le=\"10\"} 2"), "{text}");
        assert!(text.contains("op=\"put\",le=\"+Inf\"} 3"), "{text}");
        assert!(
            text.contains("cairn_metadata_leader{node=\"1\"} 1"),
            "{text}"
        );
    }
}
