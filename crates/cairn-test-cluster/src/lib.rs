//! An in-process cluster: N Cairn nodes in one process, each with its own data dir and
//! loopback ports chosen by the OS, for tests that need many nodes but not many processes.
//!
//! Nodes stop gracefully ([`TestCluster::stop`]) and restart from their data dirs on the same
//! ports ([`TestCluster::restart`]). Crashes (kill -9) need real processes: see the end-to-end
//! tests of `cairn-cli`.

use cairn_client::Client;
use cairn_server::{DEFAULT_SNAPSHOT_LOGS, Node, ServerConfig};
use cairn_types::{Limits, NodeId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// One node slot of the cluster.
struct Slot {
    cfg: ServerConfig,
    grpc: SocketAddr,
    http: SocketAddr,
    node: Option<Arc<Node>>,
}

/// Nodes in this process; dropped nodes stop serving when the runtime ends.
pub struct TestCluster {
    slots: Vec<Slot>,
    _dir: tempfile::TempDir,
}

async fn listener(addr: &str) -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(addr).await?)
}

impl TestCluster {
    /// Starts `n` nodes, all members of the metadata group, and waits until all are live.
    pub async fn start(n: u64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut bound = Vec::new();
        for _ in 0..n {
            bound.push((
                listener("127.0.0.1:0").await?,
                listener("127.0.0.1:0").await?,
            ));
        }
        let addrs: Vec<(SocketAddr, SocketAddr)> = bound
            .iter()
            .map(|(g, h)| Ok((g.local_addr()?, h.local_addr()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial: Vec<(NodeId, String)> = addrs
            .iter()
            .enumerate()
            .map(|(i, (g, _))| (NodeId(i as u64 + 1), g.to_string()))
            .collect();
        let mut slots = Vec::new();
        for (i, ((g, h), (ga, ha))) in bound.into_iter().zip(addrs).enumerate() {
            let cfg = ServerConfig {
                id: NodeId(i as u64 + 1),
                data_dir: dir.path().join(format!("node-{}", i + 1)),
                listen: ga.to_string(),
                http: ha.to_string(),
                advertise: None,
                advertise_http: None,
                initial_cluster: initial.clone(),
                join: vec![],
                limits: Limits::default(),
                snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
                snapshot_log_bytes: cairn_server::DEFAULT_SNAPSHOT_LOG_BYTES,
                outbound_ip: None,
                move_timeout: cairn_server::DEFAULT_MOVE_TIMEOUT,
                // The tests here place and move things themselves.
                controller: cairn_server::ControllerConfig {
                    enabled: false,
                    ..Default::default()
                },
                fault_lose_write_replies: 0,
                fault_refuse_snapshots: false,
                fault_no_raft_stream: false,
                log_tail: None,
                certs_dir: None,
                certs_reload_interval: None,
                http_read_timeout: cairn_server::DEFAULT_HTTP_READ_TIMEOUT,
                disk_reserve: 0,
                quiesce: true,
                // Node 1 sends its Raft messages as calls, the others on streams, so every
                // test here runs both transports side by side.
                raft_stream: i != 0,
                // Likewise node 1's partition leaders send commit notices at once.
                commit_hold: if i == 0 {
                    Duration::ZERO
                } else {
                    cairn_server::DEFAULT_COMMIT_HOLD
                },
                fault_skip_fsync: false,
            };
            let node = Node::start_on(cfg.clone(), g, h).await?;
            slots.push(Slot {
                cfg,
                grpc: ga,
                http: ha,
                node: Some(node),
            });
        }
        let c = Self { slots, _dir: dir };
        c.wait_live(n as usize, Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// A client over every node.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.slots.iter().map(|s| s.grpc.to_string()))?)
    }

    /// A client of node `id` only.
    pub fn client_of(&self, id: u64) -> anyhow::Result<Client> {
        Ok(Client::new([self.slot(id)?.grpc.to_string()])?)
    }

    fn slot(&self, id: u64) -> anyhow::Result<&Slot> {
        self.slots
            .get((id as usize).wrapping_sub(1))
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))
    }

    /// The gRPC address of node `id`.
    pub fn grpc(&self, id: u64) -> anyhow::Result<SocketAddr> {
        Ok(self.slot(id)?.grpc)
    }

    /// The HTTP address of node `id`.
    pub fn http(&self, id: u64) -> anyhow::Result<SocketAddr> {
        Ok(self.slot(id)?.http)
    }

    /// The node that leads the metadata group now, if any.
    pub fn meta_leader(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|s| s.node.as_ref())
            .find(|n| n.is_meta_leader())
            .map(|n| n.id().0)
    }

    /// Waits until the metadata leader reports `n` live nodes.
    pub async fn wait_live(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let c = self.client()?.with_timeout(Duration::from_secs(2));
        let start = Instant::now();
        loop {
            if let Ok(nodes) = c.nodes().await
                && nodes.iter().filter(|x| x.live).count() >= n
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                anyhow::bail!("{n} nodes were not live within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops node `id` gracefully (its ports close).
    pub async fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        let slot = self
            .slots
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        if let Some(n) = slot.node.take() {
            n.shutdown().await;
        }
        Ok(())
    }

    /// Restarts node `id` from its data dir on its old ports.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let slot = self
            .slots
            .get_mut((id as usize).wrapping_sub(1))
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        anyhow::ensure!(slot.node.is_none(), "node {id} is running");
        // The old listeners may take a moment to be released after shutdown.
        let start = Instant::now();
        let (g, h) = loop {
            match (
                listener(&slot.grpc.to_string()).await,
                listener(&slot.http.to_string()).await,
            ) {
                (Ok(g), Ok(h)) => break (g, h),
                (g, h) if start.elapsed() > Duration::from_secs(10) => {
                    anyhow::bail!(
                        "cannot re-bind node {id}'s ports: {:?} {:?}",
                        g.err(),
                        h.err()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut cfg = slot.cfg.clone();
        cfg.initial_cluster.clear();
        slot.node = Some(Node::start_on(cfg, g, h).await?);
        Ok(())
    }
}
