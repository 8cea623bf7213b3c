//! `cairn server`: one node, until SIGTERM or Ctrl-C.

use anyhow::Context;
use cairn_server::{Node, ServerConfig, parse_initial_cluster};
use cairn_types::{Limits, NodeId};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `cairn server`; each also reads a `CAIRN_…` environment variable.
#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// A TOML file of these flags, keyed by their names (`data-dir = "/var/lib/cairn"`,
    /// `join = ["10.0.0.2:7001"]`, `quiesce = false`); a flag or `CAIRN_…` variable given
    /// as well wins over the file.
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Unique id of this node (a positive integer).
    #[arg(long, env = "CAIRN_ID")]
    id: u64,
    /// Directory for this node's data; created if missing.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: PathBuf,
    /// gRPC address for clients and peers.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:7001")]
    listen: String,
    /// HTTP address for the JSON API, /metrics and the console.
    #[arg(long, env = "CAIRN_HTTP", default_value = "127.0.0.1:8001")]
    http: String,
    /// gRPC address other nodes and clients should use (default: the listen address).
    #[arg(long, env = "CAIRN_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP address others should use for this node's console, /metrics and /health
    /// (default: --http, with the host of --advertise when --http binds 0.0.0.0 or [::]).
    #[arg(long, env = "CAIRN_ADVERTISE_HTTP")]
    advertise_http: Option<String>,
    /// Form a new cluster whose metadata group is these nodes: `1=HOST:PORT,2=HOST:PORT,...`.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// Join an existing cluster through these nodes: `HOST:PORT[,HOST:PORT...]`.
    #[arg(long, env = "CAIRN_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// Largest key in bytes (at most 65517, the storage engine's limit less Cairn's prefix).
    #[arg(long, env = "CAIRN_MAX_KEY_BYTES", default_value_t = 4096)]
    max_key_bytes: usize,
    /// Largest value in bytes (at most 256 MiB).
    #[arg(long, env = "CAIRN_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    max_value_bytes: usize,
    /// Source IP of connections to peers (default: the kernel's choice); for several nodes
    /// on one host at distinct addresses, e.g. 127.0.1.3.
    #[arg(long, env = "CAIRN_OUTBOUND_IP")]
    outbound_ip: Option<std::net::IpAddr>,
    /// Raft log entries between snapshots of a group; older entries are then purged, all but
    /// a fifth (a leader keeps more for a follower behind: see --snapshot-log-bytes).
    #[arg(long, env = "CAIRN_SNAPSHOT_LOGS", default_value_t = cairn_server::DEFAULT_SNAPSHOT_LOGS)]
    snapshot_logs: u64,
    /// Bytes a partition's Raft log may hold beyond its last snapshot before it snapshots
    /// anyway and purges down to a quarter of this behind the snapshot (e.g. 32MiB, 4MiB),
    /// so large values do not keep a log of --snapshot-logs entries. A leader keeps up to
    /// twice this of log for a follower behind (down, restarting, slow), so it catches up
    /// from the log, but no more than the partition's size as the controller measured it
    /// (at least a quarter of this);
    /// one further behind catches up by snapshot. 0 counts entries only and holds nothing
    /// for a follower behind.
    #[arg(long, env = "CAIRN_SNAPSHOT_LOG_BYTES", default_value = "32MiB", value_parser = cairn_server::parse_size)]
    snapshot_log_bytes: u64,
    /// Seconds after which a replica move whose new replica still does not vote (its
    /// target down, or too slow to catch up) is rolled back.
    #[arg(long, env = "CAIRN_MOVE_TIMEOUT", default_value_t = cairn_server::DEFAULT_MOVE_TIMEOUT.as_secs())]
    move_timeout: u64,
    /// Run the controller beside the metadata leader: split partitions by size and load,
    /// balance replicas and leaders, replace replicas on down nodes, drain nodes. `off`
    /// leaves the layout to the admin commands.
    #[arg(long, env = "CAIRN_CONTROLLER", default_value = "on", value_parser = ["on", "off"])]
    controller: String,
    /// A partition above this size splits at its middle key (e.g. 96MiB, 512KiB).
    #[arg(long, env = "CAIRN_SPLIT_SIZE", default_value = "96MiB", value_parser = cairn_server::parse_size)]
    split_size: u64,
    /// A partition above this many operations per second for --split-window splits where
    /// that halves its load.
    #[arg(long, env = "CAIRN_SPLIT_QPS", default_value_t = 2500.0)]
    split_qps: f64,
    /// Seconds over which a partition's load is averaged.
    #[arg(long, env = "CAIRN_SPLIT_WINDOW", default_value_t = 5)]
    split_window: u64,
    /// Seconds without a heartbeat after which a node is down and its replicas replaced.
    #[arg(long, env = "CAIRN_DOWN_AFTER", default_value_t = 300)]
    down_after: u64,
    /// Free space below which the node refuses writes (DISK_FULL, HTTP 507) and keeps
    /// serving reads, so that the engine and Raft keep room to work; 0 turns it off.
    #[arg(long, env = "CAIRN_DISK_RESERVE", default_value = "256MiB", value_parser = cairn_server::parse_size)]
    disk_reserve: u64,
    /// Quiescent partition groups (on by default): no per-group heartbeats or election
    /// timers; idle groups send nothing and the group supervisor replaces leaders on
    /// node-level liveness (1,000 idle partitions cost ~0.08 cores instead of ~1.2;
    /// failover ~1.2 s instead of ~5.5 s). `--quiesce false` gives every group openraft's
    /// own timers. Give every node the same setting.
    #[arg(long, env = "CAIRN_QUIESCE", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    quiesce: bool,
    /// How Raft messages travel between two nodes: `stream` (the default) sends them as
    /// frames of one long-lived gRPC stream per node pair, many in flight at once; `unary`
    /// makes each message a gRPC call of its own. Nodes of either setting talk to each other.
    #[arg(long, env = "CAIRN_RAFT_TRANSPORT", default_value = "stream", value_parser = ["stream", "unary"])]
    raft_transport: String,
    /// Milliseconds a partition leader holds a commit notice to a follower (an AppendEntries
    /// without entries) waiting for the group's next append to carry it, so that under load
    /// the notice costs no message of its own; a follower then applies up to this much later.
    /// 0 sends notices at once; at most 100, well inside a leader lease.
    #[arg(long, env = "CAIRN_COMMIT_HOLD_MS", default_value_t = cairn_server::DEFAULT_COMMIT_HOLD.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=100))]
    commit_hold_ms: u64,
    /// Worker threads of the node's async runtime (default: one per core). Nodes that share
    /// a machine waste less CPU on hand-offs between threads with the cores divided between
    /// them: `cairn playground` gives each node cores / nodes.
    #[arg(long, env = "CAIRN_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,
    /// Log lines as human-readable text, or as one JSON object per line (`json`: fields
    /// `timestamp`, `level`, `target` and `fields`) for a log shipper.
    #[arg(long, env = "CAIRN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// [testing only] Acknowledge log appends WITHOUT fsync, so that a power cut loses
    /// acknowledged writes: proves the power-loss tests catch a store that does this.
    #[arg(long, env = "CAIRN_FAULT_SKIP_FSYNC")]
    fault_skip_fsync: bool,
    /// With --certs-dir: every this many seconds, reload ca.crt, node.crt and node.key if
    /// they changed (as when cert-manager or Kubernetes rotates a mounted Secret); 0 reloads
    /// them only on SIGHUP.
    #[arg(long, env = "CAIRN_CERTS_RELOAD_INTERVAL", default_value_t = 60)]
    certs_reload_interval: u64,
    /// Seconds the node waits for an HTTP client to send a request's headers (a
    /// connection's first request, and on HTTP/1 each next one, idle time included) or the
    /// next piece of its body. A client silent that long, or trickling its request, is
    /// disconnected, so it cannot hold a socket for good.
    #[arg(long, env = "CAIRN_HTTP_READ_TIMEOUT", default_value_t = cairn_server::DEFAULT_HTTP_READ_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_read_timeout: u64,
    /// [testing only] Abort the process the moment it reaches this point (install-rows: a
    /// snapshot install has copied its first rows; split-applied: a split is applied, its
    /// right half not yet open; destroy-rows: a replica being destroyed has lost its log and
    /// state, not its rows), as if the power went out there.
    #[arg(long, env = "CAIRN_FAULT_CRASH_AT")]
    fault_crash_at: Option<String>,
    /// [testing only] Answer the first N writes (and table drops) this node routes with
    /// UNAVAILABLE after they were applied, as if the answer were lost, to exercise retries.
    #[arg(long, env = "CAIRN_FAULT_LOSE_WRITE_REPLIES", default_value_t = 0)]
    fault_lose_write_replies: u64,
    /// [testing only] Refuse every snapshot sent to this node, so that a replica moved here
    /// never catches up, to exercise the rollback of a move.
    #[arg(long, env = "CAIRN_FAULT_REFUSE_SNAPSHOTS")]
    fault_refuse_snapshots: bool,
    /// [testing only] Serve no Raft streams (answer them UNIMPLEMENTED, as a node of an
    /// older version does), so that peers send this node one call per Raft message.
    #[arg(long, env = "CAIRN_FAULT_NO_RAFT_STREAM")]
    fault_no_raft_stream: bool,
}

pub(crate) async fn run(a: ServerArgs, certs_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,fjall=warn,lsm_tree=warn")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Everything logged goes to stderr and into a tail kept for `cairn debug zip`.
    let tail = cairn_server::LogTail::default();
    let tee = tail.clone();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || Tee(tee.clone()));
    if a.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(ansi).init();
    }
    if let Some(file) = &a.config {
        tracing::info!(config = %file.display(), "flags read from the config file");
    }
    tracing::info!(
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "async runtime started (--threads)"
    );
    if a.id == 0 {
        anyhow::bail!("--id 0 is reserved; use ids from 1");
    }
    match raise_open_files() {
        Ok((now, _)) if now < WANTED_OPEN_FILES => tracing::warn!(
            "this node may hold at most {now} open files and sockets: a burst of client connections \
             could leave none for its data files and its peers. Raise the hard limit to at least \
             {WANTED_OPEN_FILES} (`ulimit -Hn`, LimitNOFILE= in a systemd unit, the container \
             runtime's nofile limit)"
        ),
        Ok((now, was)) if now > was => {
            tracing::info!("open files limit raised from {was} to the hard limit, {now}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("could not read or raise the open files limit: {e}"),
    }
    if let Some(point) = &a.fault_crash_at {
        cairn_server::set_crash_point(point)
            .map_err(|e| anyhow::anyhow!("--fault-crash-at: {e}"))?;
        tracing::warn!(
            "--fault-crash-at {point}: this node aborts when it gets there (testing only)"
        );
    }
    let initial_cluster = match &a.initial_cluster {
        Some(s) => {
            parse_initial_cluster(s).map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?
        }
        None => Vec::new(),
    };
    let cfg = ServerConfig {
        id: NodeId(a.id),
        data_dir: a.data_dir,
        listen: a.listen,
        http: a.http,
        advertise: a.advertise,
        advertise_http: a.advertise_http,
        initial_cluster,
        join: a.join,
        outbound_ip: a.outbound_ip,
        limits: Limits {
            max_key_bytes: a.max_key_bytes,
            max_value_bytes: a.max_value_bytes,
        },
        snapshot_logs: a.snapshot_logs,
        snapshot_log_bytes: a.snapshot_log_bytes,
        move_timeout: std::time::Duration::from_secs(a.move_timeout),
        controller: cairn_server::ControllerConfig {
            enabled: a.controller == "on",
            split_size: a.split_size,
            split_qps: a.split_qps,
            split_window: std::time::Duration::from_secs(a.split_window.max(1)),
            down_after: std::time::Duration::from_secs(a.down_after.max(1)),
        },
        fault_lose_write_replies: a.fault_lose_write_replies,
        fault_refuse_snapshots: a.fault_refuse_snapshots,
        fault_no_raft_stream: a.fault_no_raft_stream,
        disk_reserve: a.disk_reserve,
        quiesce: a.quiesce,
        raft_stream: a.raft_transport == "stream",
        commit_hold: std::time::Duration::from_millis(a.commit_hold_ms),
        fault_skip_fsync: a.fault_skip_fsync,
        log_tail: Some(tail),
        certs_dir,
        http_read_timeout: std::time::Duration::from_secs(a.http_read_timeout),
        certs_reload_interval: (a.certs_reload_interval > 0)
            .then(|| std::time::Duration::from_secs(a.certs_reload_interval)),
    };
    let mut signals = Signals::install();
    let node = Node::start(cfg).await.context("the node could not start")?;
    tokio::spawn(return_freed_memory());
    let mut fatal = node.fatal();
    let why = tokio::select! {
        _ = signals.recv() => None,
        _ = fatal.changed() => fatal.borrow().clone(),
    };
    tracing::info!("stopping: finishing in-flight requests");
    node.shutdown().await;
    match why {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// A log writer that copies each line to stderr and to the node's log tail.
struct Tee(cairn_server::LogTail);

impl std::io::Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = std::io::stderr().write(buf)?;
        self.0.push(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// SIGTERM and Ctrl-C listeners, installed once so no signal is missed between waits.
pub(crate) struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers: from now on SIGTERM and SIGINT no longer kill the process.
    pub(crate) fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: None,
        }
    }

    /// Like [`Signals::install`], and SIGHUP stops too: for the playground, whose secure
    /// nodes take SIGHUP as "reload the certificates", so that closing its terminal still
    /// stops them rather than leaving them running without it.
    pub(crate) fn install_stopping_on_hangup() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            hup: signal(SignalKind::hangup()).ok(),
            ..Self::install()
        }
    }

    /// Waits for SIGTERM or Ctrl-C (or SIGHUP, if it was asked for).
    pub(crate) async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.int) => {}
            _ = one(&mut self.hup) => {}
        }
    }
}

/// Open files (sockets included) below which a node warns at start. CockroachDB asks for
/// 15,000; etcd gets the hard limit from Go's runtime, often 1,048,576.
const WANTED_OPEN_FILES: u64 = 10_000;

/// Raises the soft limit on open files to the hard limit, as Go's runtime does for etcd: the
/// soft limit is often 1,024, which a node's data files, its peers and a few hundred client
/// connections exhaust together. Returns the limit now and before.
fn raise_open_files() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let was = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct; raising the soft limit up to the hard one is
        // always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((lim.rlim_cur, was))
}

/// Hands memory the process freed back to the operating system every few seconds. glibc
/// keeps freed heap pages for reuse; after a burst (a snapshot installed, a compaction) a
/// node would otherwise stay at its peak resident size, about twice its live heap, for good.
async fn return_freed_memory() {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
