//! Node configuration.

use cairn_types::{Limits, NodeId};
use std::path::PathBuf;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Unique node id.
    pub id: NodeId,
    /// Directory of the node's engine.
    pub data_dir: PathBuf,
    /// gRPC listen address (clients and peers), e.g. `127.0.0.1:7001`; port 0 picks one.
    pub listen: String,
    /// HTTP listen address; port 0 picks one.
    pub http: String,
    /// gRPC address peers and clients should use; default: the bound `listen` address.
    pub advertise: Option<String>,
    /// HTTP address others should use (the console, `cairn debug zip`, `cairn gen
    /// haproxy`); default: the bound `http` address, with the host of the advertised gRPC
    /// address when `http` binds every interface.
    pub advertise_http: Option<String>,
    /// Members of the metadata group when forming a new cluster (`id=host:port`).
    pub initial_cluster: Vec<(NodeId, String)>,
    /// Addresses of existing nodes to join through.
    pub join: Vec<String>,
    /// Source address of connections to peers (default: chosen by the kernel). Set it when
    /// several nodes share a host on distinct addresses, so that firewall rules between
    /// address pairs can tell the nodes apart.
    pub outbound_ip: Option<std::net::IpAddr>,
    /// Key and value size limits.
    pub limits: Limits,
    /// Raft log entries between snapshots of a group ([`crate::DEFAULT_SNAPSHOT_LOGS`]).
    pub snapshot_logs: u64,
    /// Bytes of Raft log since the last snapshot after which a partition group snapshots
    /// and purges by size ([`crate::DEFAULT_SNAPSHOT_LOG_BYTES`]); 0: by entry count only.
    pub snapshot_log_bytes: u64,
    /// A replica move whose new replica is not a voter after this long is rolled back.
    pub move_timeout: std::time::Duration,
    /// The controller's switch and thresholds.
    pub controller: ControllerConfig,
    /// Testing only: answer the first N applied writes (and table drops) routed by this node
    /// with `Unavailable`, as if the answer were lost, so clients retry. 0 in production.
    pub fault_lose_write_replies: u64,
    /// Below this many free bytes on the data disk, the node refuses writes (0: never).
    pub disk_reserve: u64,
    /// Partition groups keep no timers of their own: idle ones fall silent and the group
    /// supervisor elects on node-level liveness (the default; false: openraft's timers).
    pub quiesce: bool,
    /// Raft messages between two nodes go as frames of one long-lived stream (true, the
    /// default) or as one gRPC call each.
    pub raft_stream: bool,
    /// How long a partition leader's commit notice to a follower waits for the group's
    /// next append to carry it (zero: sent at once); [`crate::DEFAULT_COMMIT_HOLD`].
    pub commit_hold: std::time::Duration,
    /// Testing only: acknowledge log appends without fsync, so that power-loss tests can
    /// show they catch lost writes. False in production.
    pub fault_skip_fsync: bool,
    /// Testing only: refuse every snapshot chunk sent to this node, so a new replica here
    /// never catches up (to exercise the rollback of a move). False in production.
    pub fault_refuse_snapshots: bool,
    /// Testing only: serve no Raft streams, answering them UNIMPLEMENTED as a node of an
    /// older version does, so peers must fall back to one call per message. False in
    /// production.
    pub fault_no_raft_stream: bool,
    /// The node's recent log output, served on `GET /debug/logs` (none: not kept).
    pub log_tail: Option<crate::LogTail>,
    /// Directory of `ca.crt`, `node.crt` and `node.key`: TLS on both ports and mutual TLS
    /// between nodes (none: the node runs insecure).
    pub certs_dir: Option<PathBuf>,
    /// How often a secure node looks whether its certificate files changed, and reloads
    /// them if so (none: only on SIGHUP).
    pub certs_reload_interval: Option<std::time::Duration>,
    /// How long the node waits for an HTTP client to send a request's headers (a
    /// connection's first, and on HTTP/1 each next, idle time included) or the next piece of
    /// its body before it disconnects the client.
    pub http_read_timeout: std::time::Duration,
}

/// The controller: whether it runs (beside the metadata leader) and its thresholds. Every
/// node measures its partitions by the same thresholds, so give all nodes the same flags.
#[derive(Clone, Debug, PartialEq)]
pub struct ControllerConfig {
    /// Whether the controller runs at all.
    pub enabled: bool,
    /// A partition above this many bytes splits at its middle key.
    pub split_size: u64,
    /// A partition above this many operations per second over `split_window` splits at
    /// the key that halves its load.
    pub split_qps: f64,
    /// The window over which load is averaged.
    pub split_window: std::time::Duration,
    /// A node not heard from for this long is down: its replicas are replaced.
    pub down_after: std::time::Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            enabled: true,
            split_size: 96 << 20,
            split_qps: 2500.0,
            split_window: std::time::Duration::from_secs(5),
            down_after: std::time::Duration::from_secs(300),
        }
    }
}

/// Parses a size such as `96MiB`, `512KiB`, `1GiB` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n.trim(), *m)))
    .unwrap_or((t, 1));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use bytes or a number with KiB, MiB or GiB"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(NodeId, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            format!("{part:?} is not of the form ID=HOST:PORT (e.g. 1=127.0.0.1:7001)")
        })?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} in {part:?} is not a node id (a positive integer)"))?;
        if id == 0 {
            return Err("node id 0 is reserved; use ids from 1".into());
        }
        if out.iter().any(|(n, _): &(NodeId, String)| n.0 == id) {
            return Err(format!("node id {id} appears twice in the initial cluster"));
        }
        out.push((NodeId(id), addr.trim().to_string()));
    }
    if out.is_empty() {
        return Err("the initial cluster lists no node".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parsing() {
        let c = parse_initial_cluster("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(
            c,
            vec![
                (NodeId(1), "127.0.0.1:7001".into()),
                (NodeId(2), "127.0.0.1:7002".into())
            ]
        );
        assert!(parse_initial_cluster("1:127.0.0.1:7001").is_err());
        assert!(parse_initial_cluster("x=a").is_err());
        assert!(parse_initial_cluster("1=a,1=b").is_err());
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn size_parsing() {
        assert_eq!(parse_size("96MiB"), Ok(96 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("lots").is_err());
    }
}
