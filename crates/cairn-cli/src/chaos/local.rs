//! A cluster of `cairn server` child processes for `cairn chaos --spawn N`: node i lives at
//! its own address 127.0.1.i, for listening and for its connections to peers, so that
//! firewall rules between address pairs can cut node from node.
//!
//! For the disk faults (power cuts, failing fsync, a full disk) each node's data dir is a
//! [`cairn_faultfs`] mount over `node-N.disk`: what a node has not fsynced is lost when its
//! power is cut.

use crate::playground::server_command;
use anyhow::{Context, bail};
use cairn_client::Client;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Child;

/// The address of node `id` (1-based).
pub(crate) fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, id as u8)
}

/// A port that was free on `ip` a moment ago (the OS picks it), never one handed out
/// before in this process: the OS may give a released port again at once, and a node's
/// gRPC and HTTP ports would then collide.
fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<(Ipv4Addr, u16)>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let l = TcpListener::bind((ip, 0)).with_context(|| format!("cannot bind {ip}:0"))?;
        let port = l.local_addr()?.port();
        if !given.contains(&(ip, port)) {
            given.push((ip, port));
            return Ok(port);
        }
    }
}

/// One node: how to start it again, and its process while it runs.
pub(crate) struct LocalNode {
    /// Node id.
    pub(crate) id: u64,
    /// gRPC address.
    pub(crate) grpc: String,
    http: String,
    child: Option<Child>,
    paused: bool,
    /// The fault filesystem under its data dir, when the run injects disk faults.
    disk: Option<cairn_faultfs::FaultFs>,
}

/// The spawned cluster.
pub(crate) struct LocalCluster {
    exe: PathBuf,
    dir: PathBuf,
    cluster: String,
    /// More `cairn server` flags for every node.
    extra: Vec<String>,
    /// Nodes by id - 1.
    pub(crate) nodes: Vec<LocalNode>,
    /// Nodes retired with remove-node: never started again.
    pub(crate) removed: std::collections::BTreeSet<u64>,
    /// Whether every node's data dir is a fault filesystem.
    fault_fs: bool,
    /// The certificates of a secure cluster (clients trust its CA and show root's).
    pub(crate) certs: Option<PathBuf>,
}

impl LocalCluster {
    /// Starts `n` nodes under `dir` (wiped first), the first `founders` of them (at most 5)
    /// founding the metadata group, with `extra` server flags, and waits until all are live.
    /// With `fault_fs`, each node's data dir is a fault filesystem.
    pub(crate) async fn start(
        n: u64,
        dir: &Path,
        founders: usize,
        extra: Vec<String>,
        fault_fs: bool,
        certs: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        if !(1..=200).contains(&n) {
            bail!("--spawn takes 1 to 200 nodes, not {n}");
        }
        // A run that died with its fault filesystems mounted left them under `dir`, dead;
        // detached here so that the directory can be wiped.
        cairn_faultfs::sweep_orphans();
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let exe = std::env::current_exe().context("cannot find the cairn binary")?;
        let mut nodes = Vec::new();
        for id in 1..=n {
            let ip = node_ip(id);
            nodes.push(LocalNode {
                id,
                grpc: format!("{ip}:{}", free_port(ip)?),
                http: format!("{ip}:{}", free_port(ip)?),
                child: None,
                paused: false,
                disk: None,
            });
        }
        let cluster = nodes
            .iter()
            .take(founders.clamp(1, 5))
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Self {
            exe,
            dir: dir.to_path_buf(),
            cluster,
            extra,
            nodes,
            removed: Default::default(),
            fault_fs,
            certs,
        };
        for id in 1..=n {
            c.spawn(id)?;
        }
        c.wait_live(Duration::from_secs(60)).await?;
        Ok(c)
    }

    /// Comma-separated gRPC endpoints of every node.
    pub(crate) fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.grpc.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&mut self, id: u64) -> anyhow::Result<&mut LocalNode> {
        self.nodes
            .get_mut((id as usize).wrapping_sub(1))
            .with_context(|| format!("no node {id}"))
    }

    /// Adds a node that was not there before (it joins: the metadata founders are known
    /// from the start flags) and returns its id.
    pub(crate) fn add(&mut self) -> anyhow::Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        if id > 250 {
            bail!("no address left for node {id}");
        }
        let ip = node_ip(id);
        self.nodes.push(LocalNode {
            id,
            grpc: format!("{ip}:{}", free_port(ip)?),
            http: format!("{ip}:{}", free_port(ip)?),
            child: None,
            paused: false,
            disk: None,
        });
        self.spawn(id)?;
        Ok(id)
    }

    /// Nodes that are part of the cluster (not removed), running or not.
    pub(crate) fn members(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|n| !self.removed.contains(n))
            .collect()
    }

    /// Marks `id` removed and waits (up to 20 s) for its process to stop on its own, as a
    /// removed node does; kills it after that.
    pub(crate) async fn retire(&mut self, id: u64) -> anyhow::Result<bool> {
        self.removed.insert(id);
        let n = self.node(id)?;
        let Some(mut child) = n.child.take() else {
            return Ok(true);
        };
        let exited = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_ok();
        if !exited {
            child.start_kill().ok();
            child.wait().await.ok();
        }
        Ok(exited)
    }

    /// Starts node `id` from its data dir (new or existing).
    pub(crate) fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let (exe, dir, cluster) = (self.exe.clone(), self.dir.clone(), self.cluster.clone());
        let extra = self.extra.clone();
        let fault_fs = self.fault_fs;
        let n = self.node(id)?;
        if fault_fs && n.disk.is_none() {
            let mount = dir.join(format!("node-{id}"));
            let backing = dir.join(format!("node-{id}.disk"));
            std::fs::create_dir_all(&mount)
                .with_context(|| format!("cannot create {}", mount.display()))?;
            let fs = cairn_faultfs::FaultFs::mount(&backing, &mount).with_context(|| {
                format!(
                    "cannot mount a fault filesystem at {} (disk faults need root and /dev/fuse)",
                    mount.display()
                )
            })?;
            n.disk = Some(fs);
        }
        let child = server_command(&exe, &dir, id, &n.grpc, &n.http, &cluster)?
            .args(["--outbound-ip", &node_ip(id).to_string()])
            .args(&extra)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// Whether node `id` runs (not crashed; it may be paused).
    pub(crate) fn running(&self, id: u64) -> bool {
        self.nodes
            .get((id as usize).wrapping_sub(1))
            .is_some_and(|n| n.child.is_some())
    }

    /// kill -9.
    pub(crate) async fn crash(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.node(id)?;
        if let Some(mut child) = n.child.take() {
            child.start_kill().ok();
            child.wait().await.ok();
        }
        n.paused = false;
        Ok(())
    }

    /// The fault filesystem of node `id`'s data dir.
    pub(crate) fn disk(&self, id: u64) -> anyhow::Result<&cairn_faultfs::FaultFs> {
        self.nodes
            .get((id as usize).wrapping_sub(1))
            .and_then(|n| n.disk.as_ref())
            .with_context(|| format!("node {id} has no fault filesystem"))
    }

    /// Cuts the power of `ids` at once: kill -9 all of them, then drop from each disk
    /// everything not fsynced. Returns what was lost, for the log. They stay down.
    pub(crate) async fn power_cut(&mut self, ids: &[u64]) -> anyhow::Result<String> {
        for &id in ids {
            self.crash(id).await?;
        }
        let mut lost = Vec::new();
        for &id in ids {
            let n = self.node(id)?;
            let disk = n
                .disk
                .as_mut()
                .with_context(|| format!("node {id} has no fault filesystem"))?;
            let cut = disk
                .power_cut()
                .with_context(|| format!("power cut of node {id}'s disk failed"))?;
            let mut names = cut
                .names
                .iter()
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if cut.names.len() > 4 {
                names.push_str(", ...");
            }
            lost.push(format!(
                "node {id} lost {} unsynced bytes in {} files and {} names{}",
                cut.bytes_discarded,
                cut.files_reverted,
                cut.names_reverted,
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" ({names})")
                }
            ));
        }
        Ok(lost.join("; "))
    }

    /// Waits up to `limit` for node `id` to exit by itself; its exit status if it did.
    pub(crate) async fn wait_exit(
        &mut self,
        id: u64,
        limit: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let n = self.node(id)?;
        let Some(child) = n.child.as_mut() else {
            return Ok(None);
        };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => {
                n.child = None;
                Ok(Some(status?))
            }
            Err(_) => Ok(None),
        }
    }

    /// SIGSTOP (`stop`) or SIGCONT.
    pub(crate) fn pause(&mut self, id: u64, stop: bool) -> anyhow::Result<()> {
        let n = self.node(id)?;
        let Some(pid) = n.child.as_ref().and_then(Child::id) else {
            return Ok(());
        };
        let sig = if stop { "-STOP" } else { "-CONT" };
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("kill {sig} {pid} failed");
        }
        n.paused = stop;
        Ok(())
    }

    /// Resumes paused nodes and restarts crashed ones (not removed ones).
    pub(crate) fn heal_processes(&mut self) -> anyhow::Result<()> {
        for id in self.members() {
            if !self.running(id) {
                self.spawn(id)?;
            } else if self.node(id)?.paused {
                self.pause(id, false)?;
            }
        }
        Ok(())
    }

    /// A client of every node (over TLS on a secure cluster).
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        crate::client_cmds::connect(
            self.nodes.iter().map(|n| n.grpc.as_str()),
            self.certs.as_deref(),
            None,
        )
    }

    /// Waits until every node is reported live by the metadata leader.
    pub(crate) async fn wait_live(&self, limit: Duration) -> anyhow::Result<()> {
        let client = self.client()?.with_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + limit;
        let want = self.members().len();
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match client.nodes().await {
                Ok(nodes) if nodes.len() == want && nodes.iter().all(|n| n.live) => {
                    return Ok(());
                }
                Ok(nodes) => {
                    last = format!(
                        "{} of {want} nodes live",
                        nodes.iter().filter(|n| n.live).count(),
                    )
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "the cluster was not live within {limit:?} ({last}); node logs are in {}",
            self.dir.display()
        )
    }

    /// Stops every node (SIGCONT first so a paused node can die) and unmounts the fault
    /// filesystems.
    pub(crate) async fn stop(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            let _ = self.pause(id, false);
            let _ = self.crash(id).await;
        }
        for n in &mut self.nodes {
            if let Some(disk) = n.disk.take()
                && let Err(e) = disk.unmount()
            {
                eprintln!("cannot unmount the fault filesystem of node {}: {e}", n.id);
            }
        }
    }
}
