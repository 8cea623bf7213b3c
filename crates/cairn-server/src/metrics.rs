//! Counters exported in Prometheus text format on `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request and error counters of a node.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: [AtomicU64; OPS.len()],
    errors: [AtomicU64; OPS.len()],
}

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

impl Metrics {
    /// Counts one request of `op` and whether it failed.
    pub(crate) fn record(&self, op: &str, ok: bool) {
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
            if !ok {
                self.errors[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Renders the counters plus the given gauges.
    pub(crate) fn render(
        &self,
        node: u64,
        replicas: usize,
        leaders: usize,
        meta_leader: bool,
    ) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP cairn_requests_total Client requests handled by this node, by operation."
        );
        let _ = writeln!(s, "# TYPE cairn_requests_total counter");
        for (i, op) in OPS.iter().enumerate() {
            let _ = writeln!(
                s,
                "cairn_requests_total{{node=\"{node}\",op=\"{op}\"}} {}",
                self.requests[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP cairn_request_errors_total Client requests that returned an error, by operation."
        );
        let _ = writeln!(s, "# TYPE cairn_request_errors_total counter");
        for (i, op) in OPS.iter().enumerate() {
            let _ = writeln!(
                s,
                "cairn_request_errors_total{{node=\"{node}\",op=\"{op}\"}} {}",
                self.errors[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP cairn_replicas Partition replicas hosted by this node.\n# TYPE cairn_replicas gauge"
        );
        let _ = writeln!(s, "cairn_replicas{{node=\"{node}\"}} {replicas}");
        let _ = writeln!(
            s,
            "# HELP cairn_leaders Partition replicas this node leads.\n# TYPE cairn_leaders gauge"
        );
        let _ = writeln!(s, "cairn_leaders{{node=\"{node}\"}} {leaders}");
        let _ = writeln!(
            s,
            "# HELP cairn_metadata_leader 1 if this node leads the metadata group.\n# TYPE cairn_metadata_leader gauge"
        );
        let _ = writeln!(
            s,
            "cairn_metadata_leader{{node=\"{node}\"}} {}",
            u8::from(meta_leader)
        );
        s
    }
}
