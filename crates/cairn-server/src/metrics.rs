//! The node's Prometheus metrics on `GET /metrics`, kept with the `prometheus-client` crate.
//!
//! Counters and histograms are updated where things happen (requests here, Raft traffic and
//! fsyncs in `cairn-raft`); values that are cheaper to read than to track (replicas, disk,
//! the cluster's view on the metadata leader, the busiest partitions) are taken at scrape
//! time by [`Scraped`]. Every series carries the label `node`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Client operations, the label values of `op`.
const OPS: [&str; 9] = [
    "put",
    "get",
    "delete",
    "list",
    "create_table",
    "drop_table",
    "list_tables",
    "describe_table",
    "export",
];

/// Upper bounds of the request latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How many of its led partitions a node exports per-partition series for, busiest first:
/// bounded, so a table of thousands of partitions does not flood the metrics.
pub(crate) const TOP_PARTITIONS: usize = 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpOutcome {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    table: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// One operation's series, resolved once so that recording a request takes no lock.
struct OpSeries {
    ok: Counter,
    error: Counter,
    latency: Histogram,
}

/// Values read at scrape time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gauges {
    /// Replicas hosted.
    pub(crate) replicas: usize,
    /// Replicas led.
    pub(crate) leaders: usize,
    /// Replicas whose keys are still being deleted (destroyed, not yet gone).
    pub(crate) replicas_destroying: usize,
    /// Worker threads of the node's async runtime (`cairn server --threads`).
    pub(crate) worker_threads: usize,
    /// Whether this node leads the metadata group.
    pub(crate) meta_leader: bool,
    /// Duplicates recognised by the hosted replicas since the node started.
    pub(crate) duplicate_writes: u64,
    /// Free bytes on the data disk at the last measure (`u64::MAX`: not measured).
    pub(crate) disk_free_bytes: u64,
    /// Whether the disk is below the reserve (writes refused).
    pub(crate) disk_full: bool,
    /// Writes refused for lack of disk space since the node started.
    pub(crate) disk_full_refusals: u64,
    /// Bytes the engine's files take on disk, if the engine can tell.
    pub(crate) engine_disk_bytes: Option<u64>,
    /// Entries held in the Raft logs of the hosted partition replicas.
    pub(crate) raft_log_entries: u64,
    /// Point-in-time views held for backups in progress.
    pub(crate) backup_views: usize,
    /// Led groups ticking (busy) at the supervisor's last pass; the rest are quiescent.
    pub(crate) groups_ticking: u64,
    /// Campaigns the supervisor started since the node started.
    pub(crate) campaigns: u64,
    /// Elections (term changes) seen on this node's replicas since it started.
    pub(crate) elections: u64,
    /// Leader changes seen on this node's replicas since it started.
    pub(crate) leader_changes: u64,
    /// Peers that count as down.
    pub(crate) peers_down: u64,
    /// The busiest partitions this node leads (at most [`TOP_PARTITIONS`]).
    pub(crate) top: Vec<PartitionGauges>,
    /// The cluster's state, on the metadata leader only.
    pub(crate) cluster: Option<ClusterGauges>,
}

/// One led partition's size and load.
#[derive(Clone, Debug)]
pub(crate) struct PartitionGauges {
    /// Its table's name (or id, if the name is not known here).
    pub(crate) table: String,
    /// Its id.
    pub(crate) partition: u64,
    /// Operations per second.
    pub(crate) ops_per_second: f64,
    /// Approximate bytes of keys and values.
    pub(crate) size_bytes: u64,
    /// Approximate keys.
    pub(crate) keys: u64,
}

/// What the metadata leader knows of the whole cluster.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterGauges {
    /// Registered nodes heard from recently.
    pub(crate) nodes_live: u64,
    /// Registered nodes not heard from.
    pub(crate) nodes_down: u64,
    /// Partitions of all tables.
    pub(crate) partitions: u64,
    /// Partitions with fewer replicas than their table asks for, or a replica on a node
    /// that is down.
    pub(crate) under_replicated: u64,
    /// Partitions no live node reports a leader for.
    pub(crate) without_leader: u64,
}

/// Raft proposals made by this node, and those that committed.
#[derive(Clone)]
pub(crate) struct Proposals {
    proposals: Counter,
    commits: Counter,
    batch_writes: Histogram,
}

impl Proposals {
    /// Counts one proposal, and whether it committed.
    pub(crate) fn proposed(&self, committed: bool) {
        self.proposals.inc();
        if committed {
            self.commits.inc();
        }
    }

    /// Records how many client writes one proposal carried.
    pub(crate) fn carried(&self, writes: usize) {
        self.batch_writes.observe(writes as f64);
    }
}

/// Upper bounds of the buckets of per-call and per-round operation counts.
fn count_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 10)
}

/// The node's metrics registry and the series updated on the request path.
pub(crate) struct Metrics {
    registry: Registry,
    ops: Vec<OpSeries>,
    forwarded: Counter,
    proposals: Proposals,
    batch_ops: Histogram,
    read_round_reads: Histogram,
    fsync_failures: Counter,
    size_purges: Counter,
    holds: Counter,
    scraped: Arc<Scraped>,
    rendering: Mutex<()>,
}

impl Metrics {
    /// The metrics of node `node`, including the Raft counters and fsync histograms that
    /// `raft` and `sync` keep.
    pub(crate) fn new(
        node: u64,
        raft: &cairn_raft::RaftMetrics,
        sync: &cairn_raft::SyncMetrics,
    ) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "cairn",
            [("node".into(), node.to_string().into())].into_iter(),
        );
        let requests = Family::<OpOutcome, Counter>::default();
        let latency = Family::<Op, Histogram>::new_with_constructor(
            (|| Histogram::new(BUCKETS)) as fn() -> Histogram,
        );
        let ops = OPS
            .iter()
            .map(|&op| OpSeries {
                ok: requests.get_or_create_owned(&OpOutcome { op, outcome: "ok" }),
                error: requests.get_or_create_owned(&OpOutcome {
                    op,
                    outcome: "error",
                }),
                latency: latency.get_or_create_owned(&Op { op }),
            })
            .collect();
        registry.register(
            "requests",
            "Client requests handled by this node, by operation and outcome (ok or error)",
            requests,
        );
        registry.register_with_unit(
            "request_duration",
            "Time to answer a client request, by operation",
            Unit::Seconds,
            latency,
        );
        let forwarded = Counter::default();
        registry.register(
            "forwarded_requests",
            "Requests this node passed on to the node leading their partition",
            forwarded.clone(),
        );
        let proposals = Counter::default();
        registry.register(
            "raft_proposals",
            "Commands this node proposed to the Raft groups it leads",
            proposals.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "raft_commits",
            "Proposals committed and applied (the proposer got its answer)",
            commits.clone(),
        );
        let batch_writes = Histogram::new(count_buckets());
        registry.register(
            "proposal_writes",
            "Client writes carried by one Raft proposal (concurrent writes share one)",
            batch_writes.clone(),
        );
        let batch_ops = Histogram::new(count_buckets());
        registry.register(
            "batch_operations",
            "Operations in one client Batch call (concurrent operations of a client share one)",
            batch_ops.clone(),
        );
        let read_round_reads = Histogram::new(count_buckets());
        registry.register(
            "read_round_reads",
            "Linearizable reads answered by one ReadIndex round (one quorum check)",
            read_round_reads.clone(),
        );
        let fsync_failures = Counter::default();
        registry.register(
            "fsync_failures",
            "Failed fsyncs (the node stops at the first)",
            fsync_failures.clone(),
        );
        let size_purges = Counter::default();
        registry.register(
            "raft_log_size_purges",
            "Purges of partition Raft logs asked of openraft because their bytes passed \
             --snapshot-log-bytes (large values), rather than their entry count",
            size_purges.clone(),
        );
        let holds = Counter::default();
        registry.register(
            "raft_log_holds",
            "Purges of partition Raft logs that a leader held back, in part or whole, for a \
             replica behind it (within twice --snapshot-log-bytes), so that it catches up from \
             the log rather than by a snapshot",
            holds.clone(),
        );
        raft.register(&mut registry);
        sync.register(&mut registry);
        let scraped = Arc::new(Scraped::default());
        registry.register_collector(Box::new(scraped.clone()));
        Self {
            registry,
            ops,
            forwarded,
            proposals: Proposals {
                proposals,
                commits,
                batch_writes,
            },
            batch_ops,
            read_round_reads,
            fsync_failures,
            size_purges,
            holds,
            scraped,
            rendering: Mutex::new(()),
        }
    }

    /// Counts a failed fsync (the node stops after it).
    pub(crate) fn fsync_failed(&self) {
        self.fsync_failures.inc();
    }

    /// The count of logs purged by size, for the log keeper.
    pub(crate) fn size_purges(&self) -> Counter {
        self.size_purges.clone()
    }

    /// The count of purges held back for a replica behind, for the log keeper.
    pub(crate) fn holds(&self) -> Counter {
        self.holds.clone()
    }

    /// Counts a request passed on to another node.
    pub(crate) fn forwarded(&self) {
        self.forwarded.inc();
    }

    /// Counts a proposal to a led group, and whether it was committed.
    pub(crate) fn proposed(&self, committed: bool) {
        self.proposals.proposed(committed);
    }

    /// The Raft proposal counters, for a proposer that outlives a request (a write batch).
    pub(crate) fn proposals(&self) -> Proposals {
        self.proposals.clone()
    }

    /// Records the size of one client Batch call.
    pub(crate) fn batch(&self, ops: usize) {
        self.batch_ops.observe(ops as f64);
    }

    /// The histogram of reads per ReadIndex round, for the replicas' read batchers.
    pub(crate) fn read_rounds(&self) -> Histogram {
        self.read_round_reads.clone()
    }

    /// Counts one request of `op`, whether it failed, and how long it took.
    pub(crate) fn record(&self, op: &str, ok: bool, took: Duration) {
        let Some(s) = OPS.iter().position(|o| *o == op).map(|i| &self.ops[i]) else {
            return;
        };
        if ok { &s.ok } else { &s.error }.inc();
        s.latency.observe(took.as_secs_f64());
    }

    /// Renders every metric in the Prometheus text format, with `g` as the scrape-time values.
    pub(crate) fn render(&self, g: Gauges) -> String {
        // One scrape at a time, so each encodes the gauges it was given.
        let _one = self.rendering.lock().unwrap_or_else(|p| p.into_inner());
        *self
            .scraped
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = g;
        let mut text = String::new();
        // Writing to a String cannot fail; a collector error would leave the text cut short,
        // which Prometheus reports as a bad scrape.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        text
    }
}

/// Values taken at scrape time ([`Gauges`]), encoded as constant series.
#[derive(Debug, Default)]
struct Scraped {
    current: Mutex<Gauges>,
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: i64,
) -> Result<(), std::fmt::Error> {
    // Whole numbers print as such, so scripts can do shell arithmetic on them.
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for Scraped {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        encode_gauges(&mut e, &g)
    }
}

/// A per-partition series: name, help, unit and how to read it.
type PartitionSeries = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&PartitionGauges) -> u64,
);

fn encode_gauges(e: &mut DescriptorEncoder, g: &Gauges) -> Result<(), std::fmt::Error> {
    let b = i64::from;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(
        e,
        "replicas",
        "Partition replicas hosted by this node",
        None,
        n(g.replicas as u64),
    )?;
    gauge(
        e,
        "replicas_destroying",
        "Replicas no longer hosted whose log and keys this node is still deleting (after a drop or a move away)",
        None,
        n(g.replicas_destroying as u64),
    )?;
    gauge(
        e,
        "leaders",
        "Partition replicas this node leads",
        None,
        n(g.leaders as u64),
    )?;
    gauge(
        e,
        "runtime_worker_threads",
        "Worker threads of the node's async runtime (cairn server --threads)",
        None,
        n(g.worker_threads as u64),
    )?;
    gauge(
        e,
        "metadata_leader",
        "1 if this node leads the metadata group",
        None,
        b(g.meta_leader),
    )?;
    counter(
        e,
        "duplicate_writes",
        "Retried writes recognised by their request id and not applied again",
        g.duplicate_writes,
    )?;
    if g.disk_free_bytes != u64::MAX {
        gauge(
            e,
            "disk_free",
            "Free bytes on the data disk at the last measure",
            Some(&Unit::Bytes),
            n(g.disk_free_bytes),
        )?;
    }
    gauge(
        e,
        "disk_full",
        "1 while the data disk is below --disk-reserve and writes are refused",
        None,
        b(g.disk_full),
    )?;
    counter(
        e,
        "disk_full_refusals",
        "Writes refused because the data disk was below the reserve",
        g.disk_full_refusals,
    )?;
    if let Some(bytes) = g.engine_disk_bytes {
        gauge(
            e,
            "engine_disk",
            "Bytes the storage engine's files take on disk",
            Some(&Unit::Bytes),
            n(bytes),
        )?;
    }
    gauge(
        e,
        "raft_log_entries",
        "Entries held in the Raft logs of this node's partition replicas (purged behind each snapshot)",
        None,
        n(g.raft_log_entries),
    )?;
    gauge(
        e,
        "backup_views",
        "Point-in-time partition views held for backups in progress (each keeps old versions on disk)",
        None,
        n(g.backup_views as u64),
    )?;
    gauge(
        e,
        "raft_groups_ticking",
        "Led partition groups that are busy and heartbeat; idle ones send nothing",
        None,
        n(g.groups_ticking),
    )?;
    counter(
        e,
        "raft_campaigns",
        "Elections this node's replicas started because their leader was gone or unknown",
        g.campaigns,
    )?;
    counter(
        e,
        "raft_elections",
        "Elections seen by this node's replicas (each new term counts once per replica)",
        g.elections,
    )?;
    counter(
        e,
        "raft_leader_changes",
        "Leader changes seen by this node's replicas",
        g.leader_changes,
    )?;
    gauge(
        e,
        "peers_down",
        "Peer nodes that have not answered a liveness probe recently",
        None,
        n(g.peers_down),
    )?;
    if !g.top.is_empty() {
        let labels = |p: &PartitionGauges| PartitionLabels {
            table: p.table.clone(),
            partition: p.partition.to_string(),
        };
        let mut m = e.encode_descriptor(
            "partition_ops_per_second",
            "Operations per second of the busiest partitions this node leads",
            None,
            MetricType::Gauge,
        )?;
        for p in &g.top {
            ConstGauge::new(p.ops_per_second).encode(m.encode_family(&labels(p))?)?;
        }
        let series: [PartitionSeries; 2] = [
            (
                "partition_size",
                "Approximate bytes of keys and values of the busiest partitions this node leads",
                Some(Unit::Bytes),
                |p| p.size_bytes,
            ),
            (
                "partition_keys",
                "Approximate keys of the busiest partitions this node leads",
                None,
                |p| p.keys,
            ),
        ];
        for (name, help, unit, value) in series {
            let mut m = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            for p in &g.top {
                ConstGauge::new(n(value(p))).encode(m.encode_family(&labels(p))?)?;
            }
        }
    }
    if let Some(c) = &g.cluster {
        let mut m = e.encode_descriptor(
            "cluster_nodes",
            "Registered nodes by liveness, as the metadata leader sees them",
            None,
            MetricType::Gauge,
        )?;
        for (state, v) in [("live", c.nodes_live), ("down", c.nodes_down)] {
            ConstGauge::new(n(v)).encode(m.encode_family(&StateLabel { state })?)?;
        }
        gauge(
            e,
            "cluster_partitions",
            "Partitions of all tables (metadata leader only)",
            None,
            n(c.partitions),
        )?;
        gauge(
            e,
            "cluster_partitions_under_replicated",
            "Partitions short of replicas or with a replica on a down node (metadata leader only)",
            None,
            n(c.under_replicated),
        )?;
        gauge(
            e,
            "cluster_partitions_without_leader",
            "Partitions for which no live node reports a leader (metadata leader only)",
            None,
            n(c.without_leader),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_requests_histograms_raft_counters_and_scrape_time_values() {
        let raft = cairn_raft::RaftMetrics::default();
        let sync = cairn_raft::SyncMetrics::default();
        let m = Metrics::new(1, &raft, &sync);
        m.record("put", true, Duration::from_micros(300));
        m.record("put", false, Duration::from_millis(30));
        m.record("put", true, Duration::from_secs(60));
        m.record("unknown", true, Duration::ZERO);
        m.fsync_failed();
        m.forwarded();
        m.proposed(true);
        m.proposed(false);
        m.proposals().carried(3);
        m.batch(5);
        m.read_rounds().observe(2.0);
        m.size_purges().inc();
        m.holds().inc();
        raft.heartbeats_sent.inc();
        raft.snapshot_sent_bytes.inc_by(4096);
        sync.duration.observe(0.002);
        sync.batch.observe(7.0);
        let g = Gauges {
            replicas: 2,
            leaders: 1,
            replicas_destroying: 5,
            worker_threads: 3,
            meta_leader: true,
            duplicate_writes: 4,
            disk_free_bytes: 1 << 20,
            disk_full: true,
            disk_full_refusals: 3,
            engine_disk_bytes: Some(5000),
            raft_log_entries: 1234,
            backup_views: 2,
            leader_changes: 6,
            top: vec![PartitionGauges {
                table: "t".into(),
                partition: 7,
                ops_per_second: 12.5,
                size_bytes: 100,
                keys: 9,
            }],
            cluster: Some(ClusterGauges {
                nodes_live: 2,
                nodes_down: 1,
                partitions: 3,
                under_replicated: 1,
                without_leader: 0,
            }),
            ..Gauges::default()
        };
        let text = m.render(g);
        let at = |series: &str| {
            sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        assert_eq!(
            at(r#"cairn_requests_total{node="1",op="put",outcome="ok"}"#),
            2.0
        );
        assert_eq!(
            at(r#"cairn_requests_total{node="1",op="put",outcome="error"}"#),
            1.0
        );
        assert_eq!(
            at(r#"cairn_request_duration_seconds_bucket{node="1",op="put",le="0.0005"}"#),
            1.0
        );
        assert_eq!(
            at(r#"cairn_request_duration_seconds_bucket{node="1",op="put",le="0.05"}"#),
            2.0
        );
        assert_eq!(
            at(r#"cairn_request_duration_seconds_bucket{node="1",op="put",le="+Inf"}"#),
            3.0
        );
        assert_eq!(
            at(r#"cairn_request_duration_seconds_count{node="1",op="put"}"#),
            3.0
        );
        assert_eq!(at(r#"cairn_fsync_failures_total{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_raft_log_size_purges_total{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_raft_log_holds_total{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_runtime_worker_threads{node="1"}"#), 3.0);
        assert_eq!(at(r#"cairn_forwarded_requests_total{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_raft_proposals_total{node="1"}"#), 2.0);
        assert_eq!(at(r#"cairn_raft_commits_total{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_raft_heartbeats_sent_total{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_proposal_writes_sum{node="1"}"#), 3.0);
        assert_eq!(at(r#"cairn_proposal_writes_bucket{node="1",le="2"}"#), 0.0);
        assert_eq!(at(r#"cairn_proposal_writes_bucket{node="1",le="4"}"#), 1.0);
        assert_eq!(at(r#"cairn_batch_operations_sum{node="1"}"#), 5.0);
        assert_eq!(at(r#"cairn_read_round_reads_count{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_snapshot_sent_bytes_total{node="1"}"#), 4096.0);
        assert_eq!(at(r#"cairn_fsync_duration_seconds_count{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_fsync_batch_writes_sum{node="1"}"#), 7.0);
        assert_eq!(at(r#"cairn_duplicate_writes_total{node="1"}"#), 4.0);
        assert_eq!(at(r#"cairn_disk_free_bytes{node="1"}"#), 1048576.0);
        assert_eq!(at(r#"cairn_disk_full{node="1"}"#), 1.0);
        assert_eq!(at(r#"cairn_disk_full_refusals_total{node="1"}"#), 3.0);
        assert_eq!(at(r#"cairn_engine_disk_bytes{node="1"}"#), 5000.0);
        assert_eq!(at(r#"cairn_raft_log_entries{node="1"}"#), 1234.0);
        assert_eq!(at(r#"cairn_backup_views{node="1"}"#), 2.0);
        assert_eq!(at(r#"cairn_replicas_destroying{node="1"}"#), 5.0);
        assert_eq!(at(r#"cairn_raft_leader_changes_total{node="1"}"#), 6.0);
        assert_eq!(at(r#"cairn_metadata_leader{node="1"}"#), 1.0);
        assert_eq!(
            at(r#"cairn_partition_ops_per_second{node="1",table="t",partition="7"}"#),
            12.5
        );
        assert_eq!(
            at(r#"cairn_partition_keys{node="1",table="t",partition="7"}"#),
            9.0
        );
        assert_eq!(at(r#"cairn_cluster_nodes{node="1",state="down"}"#), 1.0);
        assert_eq!(
            at(r#"cairn_cluster_partitions_under_replicated{node="1"}"#),
            1.0
        );
        assert!(
            text.contains("# TYPE cairn_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE cairn_request_duration_seconds histogram"),
            "{text}"
        );

        // A node that is not the metadata leader and leads nothing busy exports neither.
        let text = m.render(Gauges {
            disk_free_bytes: u64::MAX,
            ..Gauges::default()
        });
        assert!(!text.contains("cairn_cluster_"), "{text}");
        assert!(!text.contains("cairn_partition_"), "{text}");
        assert!(!text.contains("cairn_disk_free_bytes"), "{text}");
        assert_eq!(
            sample(
                &text,
                r#"cairn_requests_total{node="1",op="put",outcome="ok"}"#
            ),
            Some(2.0),
            "counters keep their values across scrapes"
        );
    }
}
