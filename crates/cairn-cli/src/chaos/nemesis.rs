//! Faults injected into a spawned cluster on a seeded schedule: kill -9 and restart,
//! SIGSTOP / SIGCONT, network partitions (two-way and one-way, isolating a partition
//! leader, the metadata leader, or a random minority) and packet loss; and changes of the
//! layout made through the admin API while the workload runs: splits at a workload key,
//! replica moves, leader transfers, and nodes added, or drained and removed.
//!
//! Disk faults act on the fault filesystem under each node's data dir: a power cut (kill -9
//! and the loss of everything not fsynced) of one node, a minority or every node; an fsync
//! that fails with EIO (the node must stop without acknowledging); a full disk (writes are
//! refused with DISK_FULL, reads go on, writes resume once space is freed). The nemesis
//! checks what it expects of the nodes itself and reports each miss as a problem.
//!
//! Network faults are iptables rules between the nodes' addresses inside a private network
//! namespace that `cairn chaos` enters at start ([`enter_private_network`]); the rules vanish
//! with it, and the workload's client (at 127.0.0.1) keeps reaching every node.

use super::local::{LocalCluster, node_ip};
use anyhow::{Context, bail};
use cairn_client::Client;
use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::time::{Duration, Instant};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Fault {
    /// kill -9 a node (partition leaders preferred), restart it from its data dir later.
    Crash,
    /// SIGSTOP a node for longer than an election timeout, then SIGCONT.
    Pause,
    /// Cut the network: isolate a partition leader or the metadata leader, one-way or
    /// two-way, or split off a random minority.
    Partition,
    /// Drop a share of the packets between all nodes.
    Loss,
    /// Split the partition holding a random workload key at that key.
    Split,
    /// Transfer a random partition's leadership to another of its replicas.
    Leader,
    /// Move a random replica of a random partition to a node without one, and wait for
    /// the move to finish (or roll back).
    Move,
    /// Add a new node, or drain a node (the controller moves everything off it) and remove
    /// it for good. Runs the nodes with `--controller on`.
    Membership,
    /// Cut the power of one node, of a minority, or of every node at once: kill -9, lose
    /// every write not fsynced, restart from what survived.
    Power,
    /// Cut the power of every node at once (each cut waits until the cluster is back).
    PowerAll,
    /// Cut the power of one node or of a minority, never the same nodes twice in a row.
    PowerMinority,
    /// Make a node's next fsync fail with EIO: the node must stop by itself (it cannot know
    /// what reached the disk); its power is then cut and it restarts.
    FsyncError,
    /// Fill every node's disk below the free-space reserve: writes must fail with DISK_FULL
    /// while reads go on, and resume once space is freed.
    DiskFull,
}

/// The free-space reserve the nodes run with when the disk-full fault is on.
pub(crate) const DISK_RESERVE: u64 = 192 << 20;

impl Fault {
    /// Whether the fault needs iptables in a private network namespace.
    pub(crate) fn is_network(self) -> bool {
        matches!(self, Fault::Partition | Fault::Loss)
    }

    /// Whether the fault needs the nodes' data dirs on fault filesystems.
    pub(crate) fn is_disk(self) -> bool {
        matches!(
            self,
            Fault::Power
                | Fault::PowerAll
                | Fault::PowerMinority
                | Fault::FsyncError
                | Fault::DiskFull
        )
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves this process (and the nodes it will start) into a new, empty network namespace
/// with only loopback, and checks that iptables works there. Must run before any thread
/// starts: a namespace change applies to the calling thread only.
pub(crate) fn enter_private_network() -> anyhow::Result<()> {
    // SAFETY: unshare(2) takes no pointers; it is called while the process has one thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "cannot create a private network namespace: {}. Network faults (partition, loss) \
             need root (CAP_SYS_ADMIN) so that their iptables rules stay inside a namespace of \
             their own: run as root, or leave partition and loss out of --nemesis",
            std::io::Error::last_os_error()
        );
    }
    run("ip", &["link", "set", "lo", "up"])
        .context("cannot bring up loopback in the new namespace (is iproute2 installed?)")?;
    run("iptables", &["-w", "-L", "INPUT", "-n"])
        .context("iptables does not work here; install it with `apt-get install iptables`")?;
    Ok(())
}

fn drop_rule(from: u64, to: u64) -> anyhow::Result<()> {
    let (s, d) = (node_ip(from).to_string(), node_ip(to).to_string());
    run(
        "iptables",
        &["-w", "-A", "INPUT", "-s", &s, "-d", &d, "-j", "DROP"],
    )
}

/// Drops traffic from every node of `a` to every node of `b` (and back when `both`).
fn cut(a: &[u64], b: &[u64], both: bool) -> anyhow::Result<()> {
    for &x in a {
        for &y in b {
            drop_rule(x, y)?;
            if both {
                drop_rule(y, x)?;
            }
        }
    }
    Ok(())
}

fn heal_network() -> anyhow::Result<()> {
    run("iptables", &["-w", "-F", "INPUT"])
}

/// The schedule's state and its log of what it did.
pub(crate) struct Nemesis {
    faults: Vec<Fault>,
    rng: StdRng,
    log: std::fs::File,
    started: Instant,
    client: Client,
    table: String,
    keys: u32,
    /// Faults injected so far.
    pub(crate) injected: u64,
    /// What the nodes did that a fault's expectations rule out (a node acknowledging after
    /// a failed fsync, a write accepted on a full disk, ...): the run fails if any.
    pub(crate) problems: Vec<String>,
    /// The nodes whose power was cut last (a minority cut picks others next time).
    last_power: Vec<u64>,
}

impl Nemesis {
    /// A schedule over `faults`, seeded, logging to `log`.
    pub(crate) fn new(
        faults: Vec<Fault>,
        seed: u64,
        log: std::fs::File,
        started: Instant,
        cluster: &LocalCluster,
        table: &str,
        keys: u32,
    ) -> anyhow::Result<Self> {
        let client = cluster.client()?.with_timeout(Duration::from_secs(3));
        Ok(Self {
            faults,
            rng: StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            log,
            started,
            client,
            table: table.to_string(),
            keys,
            injected: 0,
            problems: Vec::new(),
            last_power: Vec::new(),
        })
    }

    fn problem(&mut self, what: String) {
        self.note(&format!("PROBLEM: {what}"));
        self.problems.push(what);
    }

    fn note(&mut self, what: &str) {
        let line = format!("{:>7.2}s {what}", self.started.elapsed().as_secs_f64());
        eprintln!("  nemesis {line}");
        let _ = writeln!(self.log, "{line}");
    }

    /// The leader of a random partition of the table, as the metadata last heard.
    async fn partition_leader(&mut self) -> Option<u64> {
        let tables = self.client.partitions(&self.table).await.ok()?;
        let leaders: Vec<u64> = tables
            .iter()
            .flat_map(|(_, ps)| ps.iter().filter_map(|p| p.leader))
            .collect();
        leaders.choose(&mut self.rng).copied()
    }

    async fn metadata_leader(&self) -> Option<u64> {
        let nodes = self.client.nodes().await.ok()?;
        nodes.iter().find(|n| n.metadata_leader).map(|n| n.id)
    }

    /// A victim: a partition leader mostly, any running node otherwise.
    async fn victim(&mut self, cluster: &LocalCluster) -> u64 {
        if self.rng.random_bool(0.75)
            && let Some(l) = self.partition_leader().await
            && cluster.running(l)
        {
            return l;
        }
        let members = cluster.members();
        members.choose(&mut self.rng).copied().unwrap_or(1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }

    /// Injects faults until `until`, each followed by a heal and a quiet spell; leaves the
    /// cluster healed, every node running and live.
    pub(crate) async fn run(
        &mut self,
        cluster: &mut LocalCluster,
        until: Instant,
    ) -> anyhow::Result<()> {
        loop {
            let quiet = self.millis(2_000, 4_000);
            tokio::time::sleep(quiet).await;
            // Leave room for the fault and its heal before the workload ends.
            if Instant::now() + Duration::from_secs(12) > until {
                break;
            }
            let Some(&fault) = self.faults.choose(&mut self.rng) else {
                break;
            };
            self.injected += 1;
            match fault {
                Fault::Crash => {
                    let v = self.victim(cluster).await;
                    let down = self.millis(3_000, 8_000);
                    self.note(&format!("crash node {v} (kill -9) for {down:?}"));
                    cluster.crash(v).await?;
                    tokio::time::sleep(down).await;
                    cluster.spawn(v)?;
                    self.note(&format!("restart node {v}"));
                }
                Fault::Pause => {
                    let v = self.victim(cluster).await;
                    // Longer than the largest election timeout (3.2 s).
                    let down = self.millis(5_000, 9_000);
                    self.note(&format!("pause node {v} (SIGSTOP) for {down:?}"));
                    cluster.pause(v, true)?;
                    tokio::time::sleep(down).await;
                    cluster.pause(v, false)?;
                    self.note(&format!("resume node {v} (SIGCONT)"));
                }
                Fault::Partition => {
                    let down = self.millis(5_000, 10_000);
                    let all = cluster.members();
                    let what = self.partition(cluster, &all).await?;
                    self.note(&format!("partition: {what} for {down:?}"));
                    tokio::time::sleep(down).await;
                    heal_network()?;
                    self.note("heal the network");
                }
                Fault::Power | Fault::PowerAll | Fault::PowerMinority => {
                    self.power(cluster, fault).await?
                }
                Fault::FsyncError => self.fsync_error(cluster).await?,
                Fault::DiskFull => self.disk_full(cluster).await?,
                Fault::Split => self.split().await,
                Fault::Membership => self.membership(cluster).await?,
                Fault::Move => self.move_replica(cluster).await,
                Fault::Leader => self.transfer_leader().await,
                Fault::Loss => {
                    let p = self.rng.random_range(10..=30);
                    let down = self.millis(6_000, 10_000);
                    let nodes = "127.0.1.0/24";
                    let prob = format!("0.{p:02}");
                    run(
                        "iptables",
                        &[
                            "-w",
                            "-A",
                            "INPUT",
                            "-s",
                            nodes,
                            "-d",
                            nodes,
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            &prob,
                            "-j",
                            "DROP",
                        ],
                    )?;
                    self.note(&format!("drop {p}% of packets between nodes for {down:?}"));
                    tokio::time::sleep(down).await;
                    heal_network()?;
                    self.note("heal the network");
                }
            }
        }
        self.heal(cluster).await
    }

    /// Cuts the power of one node, a minority or all (as `fault` allows), and restarts them
    /// after 1 to 3 s. After a cut of every node it waits until the cluster is back, so that
    /// the next cut again hits a cluster taking writes.
    async fn power(&mut self, cluster: &mut LocalCluster, fault: Fault) -> anyhow::Result<()> {
        let members: Vec<u64> = cluster.members();
        let shape = match fault {
            Fault::PowerAll => 2,
            Fault::PowerMinority => self.rng.random_range(0..2),
            _ => self.rng.random_range(0..3),
        };
        let minority = (members.len().saturating_sub(1) / 2).max(1);
        let (victims, what) = match shape {
            2 => (members.clone(), "every node"),
            _ => {
                let size = if shape == 0 { 1 } else { minority };
                let mut pick = Vec::new();
                for _ in 0..20 {
                    pick = if size == 1 && self.rng.random_bool(0.75) {
                        vec![self.victim(cluster).await]
                    } else {
                        let mut order = members.clone();
                        order.shuffle(&mut self.rng);
                        order.truncate(size);
                        order.sort_unstable();
                        order
                    };
                    if pick != self.last_power {
                        break;
                    }
                }
                (pick, if size == 1 { "one node" } else { "a minority" })
            }
        };
        self.last_power = victims.clone();
        let down = self.millis(1_000, 3_000);
        let lost = cluster.power_cut(&victims).await?;
        self.note(&format!(
            "power cut of {what} {victims:?} for {down:?}: {lost}"
        ));
        tokio::time::sleep(down).await;
        for &v in &victims {
            cluster.spawn(v)?;
        }
        self.note(&format!("power back on {victims:?}"));
        if victims.len() == members.len() {
            cluster
                .wait_live(Duration::from_secs(60))
                .await
                .context("the cluster did not come back after a power cut of every node")?;
            self.note("every node live again");
        }
        Ok(())
    }

    /// Makes a node's next fsync fail. The node must stop by itself within 30 s without
    /// acknowledging what it could not sync (the history checks the latter); its power is
    /// then cut, since what the failed fsync covered may be lost, and it restarts.
    async fn fsync_error(&mut self, cluster: &mut LocalCluster) -> anyhow::Result<()> {
        let v = self.victim(cluster).await;
        if !cluster.running(v) {
            return Ok(());
        }
        let control = cluster.disk(v)?.control();
        let before = control.failed_fsyncs();
        control.fail_fsyncs(1);
        self.note(&format!("node {v}: its next fsync fails with EIO"));
        let status = cluster.wait_exit(v, Duration::from_secs(30)).await?;
        let failed = control.failed_fsyncs() > before;
        match status {
            Some(s) if failed && !s.success() => self.note(&format!(
                "node {v} stopped by itself after the failed fsync ({s})"
            )),
            Some(s) => self.problem(format!(
                "node {v} exited ({s}) but {}",
                if failed {
                    "with success after a failed fsync"
                } else {
                    "no fsync had failed"
                }
            )),
            None if !failed => {
                // Nothing synced in 30 s (an idle node): not the node's fault. Lift it.
                control.fail_fsyncs(0);
                self.note(&format!("node {v} did not fsync within 30 s; fault lifted"));
                return Ok(());
            }
            None => self.problem(format!(
                "node {v} still runs 30 s after an fsync failed: it must stop"
            )),
        }
        let lost = cluster.power_cut(&[v]).await?;
        self.note(&format!("power cut of node {v}: {lost}"));
        tokio::time::sleep(self.millis(1_000, 3_000)).await;
        cluster.spawn(v)?;
        self.note(&format!("restart node {v}"));
        Ok(())
    }

    /// Leaves every node's disk with less free space than the reserve for 4 to 8 s. A probe
    /// write must fail with DISK_FULL and a probe read succeed meanwhile, and a write must
    /// succeed within 15 s once space is back.
    async fn disk_full(&mut self, cluster: &mut LocalCluster) -> anyhow::Result<()> {
        let probe = format!("{}-probe", self.table);
        match self.client.create_table(&probe, 3, Vec::new()).await {
            Ok(_) => {}
            Err(e) if e.code == cairn_types::ErrorCode::AlreadyExists => {}
            Err(e) => {
                self.note(&format!(
                    "disk full not injected: cannot create {probe}: {e}"
                ));
                return Ok(());
            }
        }
        let ids: Vec<u64> = cluster
            .members()
            .into_iter()
            .filter(|n| cluster.running(*n))
            .collect();
        // Half the reserve left: below it, yet room for the engine meanwhile (a memtable
        // flush, and a journal rotation: fjall sizes each new journal at 64 MiB at once).
        for &id in &ids {
            let c = cluster.disk(id)?.control();
            c.set_budget(Some(c.used_bytes() + DISK_RESERVE / 2));
        }
        let down = self.millis(4_000, 8_000);
        self.note(&format!(
            "disk full on nodes {ids:?}: {} MiB left, below the {} MiB reserve, for {down:?}",
            (DISK_RESERVE / 2) >> 20,
            DISK_RESERVE >> 20
        ));
        let until = Instant::now() + down;
        // Each node measures its disk every 0.5 s.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let (mut refused, mut read) = (None, false);
        while Instant::now() < until && (refused.is_none() || !read) {
            if refused.is_none() {
                match self.client.put(&probe, b"probe", b"full").await {
                    Ok(()) => refused = Some(Err("a write succeeded".to_string())),
                    Err(e) if e.code == cairn_types::ErrorCode::DiskFull => {
                        refused = Some(Ok(e.message.clone()))
                    }
                    Err(_) => {}
                }
            }
            if !read {
                read = self.client.get(&probe, b"probe").await.is_ok();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match refused {
            Some(Ok(msg)) => self.note(&format!("a write was refused: {msg}")),
            Some(Err(e)) => self.problem(format!("on a full disk {e}")),
            None => self.problem("no write was refused with DISK_FULL on a full disk".into()),
        }
        if read {
            self.note("reads work on the full disk");
        } else {
            self.problem("no read succeeded while the disks were full".into());
        }
        tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        for &id in &ids {
            cluster.disk(id)?.control().set_budget(None);
        }
        self.note("disk space freed");
        let back = Instant::now();
        let limit = back + Duration::from_secs(15);
        loop {
            match self.client.put(&probe, b"probe", b"back").await {
                Ok(()) => {
                    self.note(&format!(
                        "writes resumed {:.1} s after space was freed",
                        back.elapsed().as_secs_f64()
                    ));
                    break;
                }
                Err(e) if Instant::now() >= limit => {
                    self.problem(format!("writes did not resume within 15 s: {e}"));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Ok(())
    }

    /// Splits at a random workload key. A refusal (the key already starts a partition) or
    /// a failure during other faults is logged, not fatal: the schedule goes on.
    async fn split(&mut self) {
        let key = cairn_check::workload::key_name(self.rng.random_range(1..self.keys.max(2)));
        match self.client.split(&self.table, key.as_bytes()).await {
            Ok((l, r)) => self.note(&format!(
                "split partition {} at {key:?}: new partition {}",
                l.id, r.id
            )),
            Err(e) => self.note(&format!("split at {key:?} not done: {e}")),
        }
    }

    /// Moves a random replica of a random partition to a running node without one, and
    /// waits (up to 60 s) for the operation to end.
    async fn move_replica(&mut self, cluster: &LocalCluster) {
        let parts: Vec<_> = match self.client.partitions(&self.table).await {
            Ok(t) => t.into_iter().flat_map(|(_, ps)| ps).collect(),
            Err(e) => return self.note(&format!("move not done: {e}")),
        };
        let Some(p) = parts.choose(&mut self.rng).cloned() else {
            return;
        };
        let targets: Vec<u64> = (1..=cluster.nodes.len() as u64)
            .filter(|n| !p.replicas.contains(n) && cluster.running(*n))
            .collect();
        let (Some(&from), Some(&to)) = (
            p.replicas.choose(&mut self.rng),
            targets.choose(&mut self.rng),
        ) else {
            return;
        };
        let op = match self.client.move_replica(p.id, from, to).await {
            Ok(op) => op,
            Err(e) => {
                return self.note(&format!(
                    "move of partition {} from node {from} to node {to} not started: {e}",
                    p.id
                ));
            }
        };
        self.note(&format!(
            "move partition {} from node {from} to node {to} (operation {})",
            p.id, op.id
        ));
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let ops = self.client.operations().await.unwrap_or_default();
            if let Some(o) = ops.iter().find(|o| o.id == op.id && o.state != "running") {
                let (state, id) = (o.state.clone(), o.id);
                return self.note(&format!("operation {id} {state}"));
            }
        }
        self.note(&format!("operation {} still running after 60 s", op.id));
    }

    /// Adds a node, or drains one and removes it, keeping between 4 and 7 nodes. A drain
    /// that does not finish within 60 s is lifted and logged, not fatal.
    async fn membership(&mut self, cluster: &mut LocalCluster) -> anyhow::Result<()> {
        let members = cluster.members();
        let add = members.len() < 5 || (members.len() < 7 && self.rng.random_bool(0.5));
        if add {
            let id = cluster.add()?;
            self.note(&format!("add node {id}"));
            return Ok(());
        }
        // Node 1 stays: the workload's first endpoint.
        let candidates: Vec<u64> = members.iter().copied().filter(|n| *n != 1).collect();
        let Some(&v) = candidates.choose(&mut self.rng) else {
            return Ok(());
        };
        if let Err(e) = self.client.set_draining(v, true).await {
            self.note(&format!("drain node {v} not started: {e}"));
            return Ok(());
        }
        self.note(&format!("drain node {v}"));
        let until = Instant::now() + Duration::from_secs(60);
        let mut empty = false;
        while Instant::now() < until && !empty {
            tokio::time::sleep(Duration::from_millis(500)).await;
            empty = self.client.nodes().await.is_ok_and(|ns| {
                ns.iter()
                    .any(|n| n.id == v && n.replicas == 0 && n.leaders == 0 && !n.metadata_member)
            });
        }
        if !empty {
            let _ = self.client.set_draining(v, false).await;
            self.note(&format!("node {v} not drained within 60 s; undrained"));
            return Ok(());
        }
        match self.client.remove_node(v).await {
            Ok(()) => {
                let stopped = cluster.retire(v).await?;
                self.note(&format!(
                    "remove node {v}{}",
                    if stopped {
                        "; it stopped on its own"
                    } else {
                        "; killed after 20 s"
                    }
                ));
            }
            Err(e) => {
                let _ = self.client.set_draining(v, false).await;
                self.note(&format!("remove node {v} not done: {e}; undrained"));
            }
        }
        Ok(())
    }

    /// Moves a random partition's leadership to another of its replicas.
    async fn transfer_leader(&mut self) {
        let parts: Vec<_> = match self.client.partitions(&self.table).await {
            Ok(t) => t.into_iter().flat_map(|(_, ps)| ps).collect(),
            Err(e) => return self.note(&format!("leader transfer not done: {e}")),
        };
        let Some(p) = parts.choose(&mut self.rng).cloned() else {
            return;
        };
        let others: Vec<u64> = p
            .replicas
            .iter()
            .copied()
            .filter(|r| Some(*r) != p.leader)
            .collect();
        let Some(&to) = others.choose(&mut self.rng) else {
            return;
        };
        match self.client.transfer_leader(p.id, to).await {
            Ok(()) => self.note(&format!(
                "transfer leadership of partition {} to node {to}",
                p.id
            )),
            Err(e) => self.note(&format!(
                "leader transfer of partition {} to node {to} not done: {e}",
                p.id
            )),
        }
    }

    /// Applies one partition, described in the returned text.
    async fn partition(&mut self, cluster: &LocalCluster, all: &[u64]) -> anyhow::Result<String> {
        let others = |v: u64| all.iter().copied().filter(|&x| x != v).collect::<Vec<_>>();
        let shape = self.rng.random_range(0..5);
        Ok(match shape {
            0 | 1 => {
                let (v, whose) = if shape == 0 {
                    (self.victim(cluster).await, "a partition leader")
                } else {
                    match self.metadata_leader().await {
                        Some(l) => (l, "the metadata leader"),
                        None => (self.victim(cluster).await, "a node"),
                    }
                };
                cut(&[v], &others(v), true)?;
                format!("isolate node {v} ({whose}) both ways")
            }
            2 => {
                let v = self.victim(cluster).await;
                cut(&[v], &others(v), false)?;
                format!("node {v} cannot send to the others (one-way)")
            }
            3 => {
                let v = self.victim(cluster).await;
                cut(&others(v), &[v], false)?;
                format!("node {v} cannot hear the others (one-way)")
            }
            _ => {
                let mut order = all.to_vec();
                order.shuffle(&mut self.rng);
                let (minority, majority) = order.split_at(all.len().saturating_sub(1) / 2);
                cut(minority, majority, true)?;
                format!("split {minority:?} from {majority:?}")
            }
        })
    }

    /// Heals the network, resumes and restarts every node, and waits until all are live.
    pub(crate) async fn heal(&mut self, cluster: &mut LocalCluster) -> anyhow::Result<()> {
        if self.faults.iter().any(|f| f.is_network()) {
            heal_network()?;
        }
        cluster.heal_processes()?;
        self.note("healed: network whole, every node running");
        cluster
            .wait_live(Duration::from_secs(60))
            .await
            .context("the cluster did not recover after the faults healed")
    }
}
