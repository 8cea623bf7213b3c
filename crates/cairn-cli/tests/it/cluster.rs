//! A cluster of real `cairn server` processes on loopback, for end-to-end tests.

use cairn_client::Client;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where histories are kept for CI to collect.
pub fn history_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/chaos");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Starts `cairn chaos` against `endpoints` with `args`, writing its history to `history`.
pub fn spawn_chaos(endpoints: &str, args: &[&str], history: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", endpoints, "chaos"])
        .args(args)
        .arg("--history")
        .arg(history)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (up to 120 s) for a `cairn chaos` run, asserts that its history passed the
/// checkers, and returns what it printed.
pub async fn chaos_passed(run: &mut Child, history: &std::path::Path) -> String {
    let status = wait_for(Duration::from_secs(120), "the workload to finish", || {
        let s = run.try_wait().unwrap();
        async move { s }
    })
    .await;
    let mut out = String::new();
    std::io::Read::read_to_string(run.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        status.success(),
        "history {} failed the check:\n{out}",
        history.display()
    );
    assert!(out.contains("linearizable"), "{out}");
    out
}

/// A free loopback port, as the OS hands it out.
/// Every key of `table` with its value, in order, page by page (linearizable reads).
pub async fn list_all_values(c: &cairn_client::Client, table: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rows = Vec::new();
    let mut opts = cairn_client::ListOptions {
        limit: 97,
        values: true,
        ..Default::default()
    };
    loop {
        let page = c.list(table, &opts).await.unwrap();
        rows.extend(page.keys.into_iter().zip(page.values));
        match page.cursor {
            Some(cur) => opts.cursor = cur,
            None => return rows,
        }
    }
}

/// Every key of `table`, in order.
pub async fn list_all(c: &cairn_client::Client, table: &str) -> Vec<Vec<u8>> {
    list_all_values(c, table)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// A free port on 127.0.0.1 that stays this test process's until it exits.
///
/// Ports come from below the kernel's ephemeral range, so that no outgoing connection (of
/// this test or of another running beside it) takes a node's port while the node is down
/// between a kill and a restart (seen in CI: a restarted node could not listen on its own
/// HTTP port). Test processes share a lock file per port, so two never pick the same one.
pub fn free_port() -> u16 {
    let (low, high) = reservable_range();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut seed = (u64::from(std::process::id()) << 32 | u64::from(now.subsec_nanos())) | 1;
    for _ in 0..10_000 {
        // xorshift: a different sequence per process, no dependency needed.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = low + (seed % u64::from(high - low)) as u16;
        if reserve(port) {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// Reserves `port` for this process if it is below the ephemeral range, no other test
/// process holds it and nothing listens on it; the reservation is a lock on a file named
/// after the port, freed when the process exits however it exits.
pub fn reserve(port: u16) -> bool {
    static HELD: std::sync::Mutex<Vec<(u16, std::fs::File)>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = reservable_range();
    let mut held = HELD.lock().unwrap();
    if !(low..high).contains(&port) || held.iter().any(|(p, _)| *p == port) {
        return false;
    }
    let dir = std::env::temp_dir().join("cairn-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .unwrap();
    if file.try_lock().is_err() || TcpListener::bind(("127.0.0.1", port)).is_err() {
        return false;
    }
    held.push((port, file));
    true
}

/// The ports tests may take: below the kernel's ephemeral range (`ip_local_port_range`).
fn reservable_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(
        ephemeral_low > 12_000,
        "the ephemeral port range starts at {ephemeral_low}: tests need the ports below it free"
    );
    (10_000, ephemeral_low)
}

/// Runs `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `timeout` until a stale read of `key` through `c` returns `want`: the node
/// `c` talks to has applied the write of it.
pub async fn wait_stale_value(c: &Client, table: &str, key: &[u8], want: &[u8], timeout: Duration) {
    let what = format!(
        "a stale read of {table}/{} to return the written value",
        String::from_utf8_lossy(key)
    );
    wait_for(timeout, &what, || async {
        (c.get_stale(table, key).await.ok()?.as_deref() == Some(want)).then_some(())
    })
    .await
}

/// Node `id`'s `/metrics` text, if it answers.
pub async fn scrape(c: &Cluster, id: u64) -> Option<String> {
    reqwest::get(format!("{}/metrics", c.http(id)))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The sum of the series of `name` whose labels include every one of `labels` (`k="v"`),
/// or `None` if there is no such series.
pub fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some((series, v)) = rest.rsplit_once(' ') else {
            continue;
        };
        if !(series.is_empty() || series.starts_with('{')) {
            continue;
        }
        if labels.iter().all(|l| series.contains(l))
            && let Ok(v) = v.parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

pub struct NodeProc {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    dir: PathBuf,
    child: Option<Child>,
    /// The fault filesystem under the data dir ([`Cluster::start_fault_fs`]).
    disk: Option<cairn_faultfs::FaultFs>,
}

/// Child processes of the built `cairn` binary, each with its own data dir and log.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    cluster_flag: String,
    extra: Vec<String>,
    tmp: tempfile::TempDir,
    /// Whether each node runs under libfaketime with a wall clock of its own
    /// ([`Cluster::set_clock`]).
    faketime: bool,
    /// The certificates directory of a secure cluster ([`Cluster::start_secure`]).
    pub certs: Option<PathBuf>,
}

/// Runs `cairn cert` with `args`, failing the test if it fails.
pub fn cert(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("cert")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cairn cert {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA, a node certificate for 127.0.0.1 and root's client certificate in `dir`.
pub fn make_certs(dir: &std::path::Path) {
    let d = dir.to_str().unwrap();
    cert(&["create-ca", "--certs-dir", d]);
    cert(&["create-node", "--certs-dir", d, "127.0.0.1", "localhost"]);
    cert(&["create-client", "--certs-dir", d, "root"]);
}

/// A client over `endpoints` that speaks TLS with the certificates in `dir` (root's
/// client certificate if it is there).
pub fn tls_client<I: IntoIterator<Item = String>>(endpoints: I, dir: &std::path::Path) -> Client {
    let tls = cairn_proto::tls::client_config(dir, "root", b"h2").unwrap();
    let dialer = cairn_proto::tls::TlsDialer::new(std::sync::Arc::new(tls), None);
    Client::with_dialer(endpoints, Some(std::sync::Arc::new(dialer))).unwrap()
}

/// Debian's libfaketime (package `faketime`; scripts/test.sh installs it).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl Cluster {
    /// Starts `n` nodes (all metadata members) and waits until every one is live.
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Starts `n` nodes with extra `cairn server` flags.
    pub async fn start_with(n: u64, extra: &[&str]) -> Cluster {
        Self::start_opts(n, extra, false, false).await
    }

    /// Starts `n` secure nodes: certificates made by `cairn cert` in the cluster's temp
    /// dir, TLS on every port, mutual TLS between nodes; the cluster's clients use them.
    pub async fn start_secure(n: u64) -> Cluster {
        Self::start_opts_with(n, &[], false, false, true).await
    }

    /// [`Cluster::start_secure`] with extra `cairn server` flags.
    pub async fn start_secure_with(n: u64, extra: &[&str]) -> Cluster {
        Self::start_opts_with(n, extra, false, false, true).await
    }

    /// Starts `n` nodes whose data dirs are fault filesystems: [`Cluster::power_cut`]
    /// loses what a node did not fsync. Needs root and /dev/fuse.
    pub async fn start_fault_fs(n: u64, extra: &[&str]) -> Cluster {
        Self::start_opts(n, extra, false, true).await
    }

    /// The fault controls of node `id`'s disk (EIO on fsync, an ENOSPC budget).
    pub fn disk_control(&self, id: u64) -> cairn_faultfs::Control {
        self.nodes[(id - 1) as usize]
            .disk
            .as_ref()
            .expect("the cluster runs on fault filesystems")
            .control()
    }

    /// Cuts node `id`'s power: kill -9 (if it still runs), then its disk loses everything
    /// not fsynced. Returns the bytes lost.
    pub fn power_cut(&mut self, id: u64) -> u64 {
        self.kill9(id);
        let disk = self.nodes[(id - 1) as usize]
            .disk
            .as_mut()
            .expect("the cluster runs on fault filesystems");
        disk.power_cut().unwrap().bytes_discarded
    }

    /// Starts `n` nodes whose wall clocks the test can move ([`Cluster::set_clock`]);
    /// their monotonic clocks run true, as a stepped wall clock leaves them.
    pub async fn start_faketime(n: u64) -> Cluster {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install Debian's faketime package (scripts/test.sh does)"
        );
        Self::start_opts(n, &[], true, false).await
    }

    /// Sets node `id`'s wall clock offset, in libfaketime's syntax (`+5h`, `-30m`, `+0`).
    /// Nodes re-read it at every clock reading.
    pub fn set_clock(&self, id: u64, offset: &str) {
        std::fs::write(self.tmp.path().join(format!("clock-{id}")), offset).unwrap();
    }

    async fn start_opts(n: u64, extra: &[&str], faketime: bool, fault_fs: bool) -> Cluster {
        Self::start_opts_with(n, extra, faketime, fault_fs, false).await
    }

    async fn start_opts_with(
        n: u64,
        extra: &[&str],
        faketime: bool,
        fault_fs: bool,
        secure: bool,
    ) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let certs = secure.then(|| {
            let dir = tmp.path().join("certs");
            make_certs(&dir);
            dir
        });
        let nodes: Vec<NodeProc> = (1..=n)
            .map(|id| NodeProc {
                id,
                grpc: format!("127.0.0.1:{}", free_port()),
                http: format!("127.0.0.1:{}", free_port()),
                dir: tmp.path().join(format!("node-{id}")),
                child: None,
                disk: fault_fs.then(|| {
                    let mount = tmp.path().join(format!("node-{id}"));
                    std::fs::create_dir_all(&mount).unwrap();
                    cairn_faultfs::FaultFs::mount(
                        &tmp.path().join(format!("node-{id}.disk")),
                        &mount,
                    )
                    .unwrap_or_else(|e| {
                        panic!("cannot mount a fault filesystem (needs root and /dev/fuse): {e}")
                    })
                }),
            })
            .collect();
        let cluster_flag = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        // Tests change the layout by hand unless they ask for the controller.
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.iter().any(|f| f == "--controller") {
            extra.extend(["--controller".to_string(), "off".to_string()]);
        }
        let mut c = Cluster {
            nodes,
            cluster_flag,
            extra,
            tmp,
            faketime,
            certs,
        };
        for id in 1..=n {
            if faketime {
                c.set_clock(id, "+0");
            }
            c.spawn(id);
        }
        c.wait_live(n as usize).await;
        c
    }

    /// Starts node `id`'s process with `flags` after the common ones.
    fn launch(&mut self, id: u64, flags: &[String]) {
        let n = &self.nodes[(id - 1) as usize];
        assert!(n.child.is_none(), "node {id} is running");
        let log_path = self.tmp.path().join(format!("node-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let filter = std::env::var("CAIRN_TEST_LOG")
            .unwrap_or_else(|_| "info,openraft=warn,fjall=warn,lsm_tree=warn".into());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        if self.faketime {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env(
                    "FAKETIME_TIMESTAMP_FILE",
                    self.tmp.path().join(format!("clock-{id}")),
                )
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .args([
                "server",
                "--id",
                &id.to_string(),
                "--listen",
                &n.grpc,
                "--http",
                &n.http,
            ])
            .arg("--data-dir")
            .arg(&n.dir)
            .args(flags)
            .args(&self.extra)
            .args(
                self.certs
                    .as_ref()
                    .filter(|_| !flags.iter().any(|f| f == "--certs-dir"))
                    .map(|d| vec!["--certs-dir".into(), d.clone().into_os_string()])
                    .unwrap_or_default(),
            )
            .env("CAIRN_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.nodes[(id - 1) as usize].child = Some(child);
    }

    fn spawn(&mut self, id: u64) {
        let flags = ["--initial-cluster".to_string(), self.cluster_flag.clone()];
        self.launch(id, &flags);
    }

    /// Waits until the metadata leader reports `n` live nodes.
    pub async fn wait_live(&self, n: usize) {
        let c = self.client();
        wait_for(Duration::from_secs(60), "nodes to be live", || async {
            let nodes = c.nodes().await.ok()?;
            (nodes.iter().filter(|x| x.live).count() >= n).then_some(())
        })
        .await;
    }

    /// The node leading `table`'s first partition, once the metadata knows one (10 s).
    pub async fn leader_of(&self, table: &str) -> u64 {
        let c = self.client();
        wait_for(Duration::from_secs(10), "a leader", || async {
            c.describe_table(table).await.ok()?.partitions[0].leader
        })
        .await
    }

    /// Waits until node `leader` leads the cluster's one partition (the `cairn_leaders` gauge,
    /// read live, not the metadata's hint, which lags a change by a heartbeat) and node
    /// `follower` has applied the write of `key` = `want` to `table`, so that the leader
    /// knows how far the follower is (a new leader knows none of it until it hears from it).
    /// The leader is not looked for again: should leadership move, this times out.
    pub async fn wait_in_step(
        &self,
        leader: u64,
        follower: u64,
        table: &str,
        key: &[u8],
        want: &[u8],
    ) {
        let own = self.client_of(follower);
        let what = format!("node {leader} to lead and node {follower} to be in step");
        wait_for(Duration::from_secs(30), &what, || async {
            let gauge = async |id, name| value(&scrape(self, id).await?, name, &[]);
            (gauge(leader, "cairn_leaders").await? == 1.0).then_some(())?;
            (gauge(follower, "cairn_leaders").await? == 0.0).then_some(())?;
            // Its own replica open, or a stale read through it would be another node's.
            (gauge(follower, "cairn_replicas").await? >= 1.0).then_some(())?;
            (own.get_stale(table, key).await.ok()?.as_deref() == Some(want)).then_some(())
        })
        .await
    }

    /// A node other than `id` (with 3 replicas on 3 nodes, a follower of a group `id` leads).
    pub fn other_than(&self, id: u64) -> u64 {
        (1..=self.nodes.len() as u64)
            .find(|n| *n != id)
            .expect("a cluster of more than one node")
    }

    /// A client over every node.
    pub fn client(&self) -> Client {
        let endpoints = self.nodes.iter().map(|n| n.grpc.clone());
        match &self.certs {
            Some(dir) => tls_client(endpoints, dir),
            None => Client::new(endpoints).unwrap(),
        }
    }

    /// A client of a secure cluster that shows no client certificate, only `token` if given.
    pub fn token_client(&self, token: Option<&str>) -> Client {
        let certs = self.certs.as_ref().expect("a secure cluster");
        // "nobody" has no certificate in the directory: the client shows only the token.
        let tls = cairn_proto::tls::client_config(certs, "nobody", b"h2").unwrap();
        let dialer = cairn_proto::tls::TlsDialer::new(std::sync::Arc::new(tls), None);
        Client::with_auth(
            self.nodes.iter().map(|n| n.grpc.clone()),
            Some(std::sync::Arc::new(dialer)),
            token,
        )
        .unwrap()
        .with_timeout(Duration::from_secs(30))
    }

    /// Every node's gRPC address, comma-separated, for `cairn --endpoints`.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.grpc.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client talking only to node `id`.
    pub fn client_of(&self, id: u64) -> Client {
        let endpoint = [self.nodes[(id - 1) as usize].grpc.clone()];
        match &self.certs {
            Some(dir) => tls_client(endpoint, dir),
            None => Client::new(endpoint).unwrap(),
        }
    }

    /// The HTTP base URL of node `id` (https on a secure cluster).
    pub fn http(&self, id: u64) -> String {
        let scheme = if self.certs.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.nodes[(id - 1) as usize].http)
    }

    /// The process id of running node `id`.
    pub fn pid(&self, id: u64) -> u32 {
        self.nodes[(id - 1) as usize]
            .child
            .as_ref()
            .expect("node is running")
            .id()
    }

    /// Stops node `id` with SIGSTOP: it holds its connections and answers nothing.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// Lets node `id` run again after [`Cluster::pause`] (SIGCONT).
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, sig: &str) {
        let pid = self.pid(id).to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} of node {id} (pid {pid}) failed");
    }

    /// Sends SIGKILL to node `id` and reaps it.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.nodes[(id - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts node `id` from its data dir alone: no cluster flags.
    pub fn restart(&mut self, id: u64) {
        self.launch(id, &[]);
    }

    /// Restarts node `id` with extra server flags (e.g. a crash point).
    pub fn restart_with(&mut self, id: u64, flags: &[&str]) {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        self.launch(id, &flags);
    }

    /// Adds a new node that joins through node 1 with `--join`; returns its id.
    pub fn join(&mut self) -> u64 {
        self.join_with(&[])
    }

    /// Like [`Cluster::join`], with extra server flags for the new node.
    pub fn join_with(&mut self, extra: &[&str]) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        self.nodes.push(NodeProc {
            id,
            grpc: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            dir: self.tmp.path().join(format!("node-{id}")),
            child: None,
            disk: None,
        });
        let mut flags = vec!["--join".to_string(), self.nodes[0].grpc.clone()];
        flags.extend(extra.iter().map(|s| s.to_string()));
        self.launch(id, &flags);
        id
    }

    /// Sends SIGTERM to node `id` and waits for it to exit; returns whether it exited 0.
    pub fn stop(&mut self, id: u64) -> bool {
        let Some(mut c) = self.nodes[(id - 1) as usize].child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.success();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for node `id` to exit on its own; returns its exit status.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.nodes[(id - 1) as usize].child;
        let status = wait_for(timeout, "the node to exit", || {
            let s = child.as_mut().and_then(|c| c.try_wait().unwrap());
            async move { s }
        })
        .await;
        *child = None;
        status
    }

    /// The data dir of node `id`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.nodes[(id - 1) as usize].dir.clone()
    }

    /// The log of node `id`, for failure messages.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() || std::env::var_os("CAIRN_KEEP_LOGS").is_some() {
            // Keep the logs of a failed test where a developer can read them.
            let keep = std::env::temp_dir().join(format!("cairn-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for n in &self.nodes {
                let _ = std::fs::copy(
                    self.tmp.path().join(format!("node-{}.log", n.id)),
                    keep.join(format!("node-{}.log", n.id)),
                );
            }
            eprintln!("node logs kept in {}", keep.display());
        }
    }
}

/// Ports handed to nodes lie below the ephemeral range, are never handed out twice, and a
/// port another holder reserved is refused.
#[test]
fn free_ports_are_reserved_and_outside_the_ephemeral_range() {
    let (low, high) = reservable_range();
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    for (i, p) in ports.iter().enumerate() {
        assert!((low..high).contains(p), "port {p} is outside {low}..{high}");
        assert!(!ports[..i].contains(p), "port {p} was handed out twice");
        assert!(!reserve(*p), "port {p} was reserved again");
    }
    assert!(!reserve(high), "a port in the ephemeral range was reserved");
}
