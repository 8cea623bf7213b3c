//! Node startup, background loops, shutdown, and the operations the APIs call.

use crate::config::ServerConfig;
use crate::core::{Core, Identity};
use crate::metrics::Metrics;
use crate::transport::NodeTransport;
use anyhow::{Context, bail};
use cairn_proto::net::{Accepted, SharedDialer};
use cairn_raft::{PeerNetwork, Syncer};
use cairn_router::{
    Diagnostic, ListPage, MetaReply, MetaRequest, NodeStatus, PartitionOp, PartitionReply,
    PartitionRequest, Router, Served, TableRoute, Transport,
};
use cairn_storage::{SharedEngine, Space, WriteBatch, keys};
use cairn_storage_fjall::FjallEngine;
use cairn_types::{
    ClientId, DEFAULT_REPLICATION, Error, NodeDesc, NodeId, PartitionDesc, PartitionId, RequestId,
    Result, Session, TableDesc, TableId,
};
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// Partitions a CreateTable opens and waits for at once.
const CREATE_PARALLELISM: usize = 32;

/// What a node runs on besides its configuration.
pub struct Substrate {
    /// Accepted gRPC connections.
    pub grpc: cairn_proto::net::Incoming,
    /// The address gRPC listens on (advertised unless the configuration says otherwise).
    pub grpc_addr: SocketAddr,
    /// The HTTP listener, if the node serves HTTP.
    pub http: Option<tokio::net::TcpListener>,
    /// How to reach peers; `None` for TCP.
    pub dialer: SharedDialer,
    /// TLS for the HTTP listener and proof of a secure node (the gRPC connections and the
    /// dialer already speak it); `None`: insecure.
    pub tls: Option<Arc<cairn_proto::tls::LiveTls>>,
    /// The node's engine.
    pub engine: SharedEngine,
    /// Makes the engine's writes durable.
    pub syncer: Syncer,
}

/// Who served a keyed request, so a client can go straight to the leader next time.
#[derive(Clone, Debug)]
pub struct LeaderHint {
    /// The partition, as the route described it.
    pub partition: PartitionDesc,
    /// The node whose replica answered: the leader, for a linearizable request.
    pub leader: NodeId,
    /// Its gRPC address, when known.
    pub leader_addr: Option<String>,
}

/// A running node.
pub struct Node {
    pub(crate) core: Arc<Core>,
    pub(crate) router: Router<NodeTransport>,
    /// Issues request ids for writes that arrive without one (HTTP, old clients).
    session: Session,
    /// Test-only fault: answers this many applied writes and table drops with `Unavailable`.
    lose_write_replies: AtomicU64,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    fatal: watch::Sender<Option<String>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// When the metadata leader last took this node's heartbeat
    /// ([`crate::supervisor::PeerHealth::now_ms`]; 0: never since start).
    meta_contact_ms: AtomicU64,
    /// Whether the metadata group drains this node, as its last heartbeat answer said.
    draining: AtomicBool,
    /// Recent log output, if the process keeps it.
    log_tail: Option<crate::LogTail>,
    /// TLS on both ports and mutual TLS between nodes.
    pub(crate) secure: bool,
    /// Credentials recently checked (on a secure node).
    pub(crate) auth: crate::auth::AuthCache,
}

/// A node whose heartbeat has not reached the metadata leader for this long says it is not
/// serving (`/health` answers 503), so that load balancers send its clients elsewhere.
const CUT_OFF_AFTER: Duration = Duration::from_secs(5);

/// Longest a stopping node spends handing its leaderships over (a Kubernetes pod has 60 s
/// from SIGTERM; see deploy/).
const HANDOFF_WITHIN: Duration = Duration::from_secs(3);

/// The node to hand a group's leadership to when this node (`me`) stops: the voter on
/// another node that is not down and has matched the most of the leader's log. `None`
/// when `me` does not lead the group or no voter qualifies.
fn handoff_target(
    m: &cairn_raft::typ::Metrics,
    me: NodeId,
    down: impl Fn(u64) -> bool,
) -> Option<NodeId> {
    if m.state != openraft::ServerState::Leader {
        return None;
    }
    let membership = m.membership_config.membership();
    let replication = m.replication.as_ref()?;
    membership
        .voter_ids()
        .filter_map(|rid| {
            let node = membership.get_node(&rid)?.node;
            let matched = replication.get(&rid).cloned().flatten()?.index;
            (node != me.0 && !down(node)).then_some((matched, node))
        })
        .max()
        .map(|(_, node)| NodeId(node))
}

/// The HTTP address to advertise for a node whose HTTP port is bound to `bound` and whose
/// gRPC address is advertised as `advertise`: the bound address, unless it is a wildcard
/// (0.0.0.0 or [::], as in containers), which no other host can dial; then the advertised
/// gRPC host with the bound HTTP port.
fn advertised_http(bound: SocketAddr, advertise: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    match advertise.rsplit_once(':') {
        Some((host, _)) if !host.is_empty() => format!("{host}:{}", bound.port()),
        _ => bound.to_string(),
    }
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}: is another process using the port? pick another with the flag"))
}

async fn load_identity(
    engine: &SharedEngine,
    cfg: &ServerConfig,
    dialer: &SharedDialer,
) -> anyhow::Result<Identity> {
    // Replica ids below FIRST_REPLICA_ID are node ids (the metadata group's founders).
    if cfg.id.0 == 0 || cfg.id.0 >= cairn_types::FIRST_REPLICA_ID {
        bail!(
            "--id {} is out of range: node ids go from 1 to {}",
            cfg.id,
            cairn_types::FIRST_REPLICA_ID - 1
        );
    }
    if let Some(bytes) = engine.get(Space::Local, &keys::local_identity())? {
        let id: Identity = postcard::from_bytes(&bytes)
            .context("the node identity record in the data dir is corrupt")?;
        if id.id != cfg.id {
            bail!(
                "data dir {} belongs to node {} but --id is {}; use the matching id or another data dir",
                cfg.data_dir.display(),
                id.id,
                cfg.id
            );
        }
        return Ok(id);
    }
    let meta_members = if !cfg.initial_cluster.is_empty() {
        if !cfg.join.is_empty() {
            bail!(
                "both --initial-cluster and --join are given (as flags, CAIRN_INITIAL_CLUSTER \
                 and CAIRN_JOIN, or initial-cluster and join in the config file): a new node \
                 either forms a cluster (--initial-cluster, the same on every founding node) or \
                 joins a running one (--join); drop one of them"
            );
        }
        cfg.initial_cluster.clone()
    } else if !cfg.join.is_empty() {
        ask_cluster(&cfg.join, dialer).await?
    } else {
        bail!(
            "data dir {} holds no cluster: start a new cluster with --initial-cluster 1=HOST:PORT,... or join one with --join HOST:PORT",
            cfg.data_dir.display()
        );
    };
    let identity = Identity {
        id: cfg.id,
        meta_members,
    };
    let mut b = WriteBatch::new();
    b.put(
        Space::Local,
        keys::local_identity(),
        postcard::to_allocvec(&identity)?,
    );
    engine.write(b)?;
    engine.sync()?;
    Ok(identity)
}

/// Asks the nodes at `addrs` for the metadata members, for up to 30 s.
async fn ask_cluster(
    addrs: &[String],
    dialer: &SharedDialer,
) -> anyhow::Result<Vec<(NodeId, String)>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer");
    loop {
        for a in addrs {
            let Ok(channel) = cairn_proto::net::lazy_channel(a, dialer, |e| {
                e.connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(5))
            }) else {
                bail!("--join address {a:?} is not HOST:PORT");
            };
            let mut c = cairn_proto::v1::internal_client::InternalClient::new(channel);
            match c
                .meta(crate::transport::encode(&MetaRequest::ClusterInfo))
                .await
            {
                Ok(resp) => {
                    if let Ok(Ok(MetaReply::Cluster(m))) =
                        crate::transport::decode::<Result<MetaReply>>(resp.get_ref())
                    {
                        return Ok(m);
                    }
                }
                Err(e) => {
                    // The source says why: refused, a TLS certificate of another CA, ...
                    let mut why = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        why = format!("{why}: {s}");
                        src = s.source();
                    }
                    last = format!("{a}: {why}");
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no node at {addrs:?} answered within 30 s (last: {last}); check the --join addresses, and on a secure cluster that --certs-dir holds a node certificate of the cluster's CA"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// The lifecycle calls return boxed futures: the body of an `async fn` is compiled again in
// every crate that awaits it, with everything it awaits in turn, and a node's start reaches
// nearly all of its code (the gRPC and HTTP servers, openraft, the engine). Boxed, it is
// compiled here once; before, the `cairn` binary, the simulation and the test clusters each
// compiled it again (about a minute of a clean build apiece on two cores).
impl Node {
    /// Opens the data dir, joins or forms the cluster and starts serving on `cfg.listen`
    /// and `cfg.http`.
    pub fn start(
        cfg: ServerConfig,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<Arc<Node>>> {
        Box::pin(async move {
            let grpc = bind(&cfg.listen, "gRPC").await?;
            let http = bind(&cfg.http, "HTTP").await?;
            Self::open_on(cfg, grpc, http).await
        })
    }

    /// Like [`Node::start`], on listeners bound by the caller (tests bind port 0 first to
    /// learn the addresses of every node before any starts).
    pub fn start_on(
        cfg: ServerConfig,
        grpc: tokio::net::TcpListener,
        http: tokio::net::TcpListener,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<Arc<Node>>> {
        Box::pin(Self::open_on(cfg, grpc, http))
    }

    /// Starts a node on the given substrate: its connections, engine and syncer. Production
    /// uses TCP and fjall ([`Node::start`]); a simulation supplies simulated ones.
    pub fn start_with(
        cfg: ServerConfig,
        sub: Substrate,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<Arc<Node>>> {
        Box::pin(Self::open_with(cfg, sub))
    }

    /// Stops accepting requests, lets in-flight ones finish, stops every group and makes
    /// the engine durable.
    pub fn shutdown(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.stop_all())
    }

    async fn open_on(
        cfg: ServerConfig,
        grpc: tokio::net::TcpListener,
        http: tokio::net::TcpListener,
    ) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
        let engine: SharedEngine = Arc::new(
            FjallEngine::open_for_node(&cfg.data_dir, cfg.id.0).with_context(|| {
                format!(
                    "cannot open the engine in {} (is another node using it?)",
                    cfg.data_dir.display()
                )
            })?,
        );
        let grpc_addr = grpc.local_addr()?;
        let tls = match &cfg.certs_dir {
            Some(dir) => Some(
                cairn_proto::tls::LiveTls::load(dir)
                    .map(Arc::new)
                    .with_context(|| format!("--certs-dir {}: cannot set up TLS", dir.display()))?,
            ),
            None => None,
        };
        let (incoming, dialer): (cairn_proto::net::Incoming, SharedDialer) = match &tls {
            Some(tls) => {
                let accepted = cairn_proto::tls::accept(grpc, tls.grpc());
                let incoming = tokio_stream::wrappers::ReceiverStream::new(accepted).map(
                    move |h: cairn_proto::tls::Handshaken| {
                        Ok(
                            Accepted::new(Box::new(h.stream), Some(grpc_addr), Some(h.remote))
                                .with_peer(h.peer),
                        )
                    },
                );
                let dialer = cairn_proto::tls::TlsDialer::live(tls.client(), cfg.outbound_ip);
                (Box::pin(incoming), Some(Arc::new(dialer)))
            }
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(grpc)
                    .with_nodelay(Some(true))
                    .map(move |s| {
                        s.map(|s| {
                            let remote = s.peer_addr().ok();
                            Accepted::new(Box::new(s), Some(grpc_addr), remote)
                        })
                    });
                (Box::pin(incoming), None)
            }
        };
        let syncer = if cfg.fault_skip_fsync {
            Syncer::skip_fsync(engine.clone()).context("cannot start the sync thread")?
        } else {
            Syncer::start(engine.clone()).context("cannot start the sync thread")?
        };
        Self::open_with(
            cfg,
            Substrate {
                grpc: incoming,
                grpc_addr,
                http: Some(http),
                dialer,
                tls,
                engine,
                syncer,
            },
        )
        .await
    }

    async fn open_with(cfg: ServerConfig, sub: Substrate) -> anyhow::Result<Arc<Node>> {
        cfg.limits.validate()?;
        let Substrate {
            grpc,
            grpc_addr,
            http,
            dialer,
            tls,
            engine,
            syncer,
        } = sub;
        if tls.is_none() {
            tracing::warn!(
                "running INSECURE: no TLS and no authentication; anyone who reaches the ports can read, write and make internal calls. Start with --certs-dir (see `cairn cert`)"
            );
        }
        let identity = load_identity(&engine, &cfg, &dialer).await?;
        let http_addr = http.as_ref().map(|h| h.local_addr()).transpose()?;
        let advertise = cfg
            .advertise
            .clone()
            .unwrap_or_else(|| grpc_addr.to_string());
        let desc = NodeDesc {
            id: cfg.id,
            addr: advertise.clone(),
            http_addr: cfg.advertise_http.clone().unwrap_or_else(|| {
                http_addr
                    .map(|a| advertised_http(a, &advertise))
                    .unwrap_or_default()
            }),
        };

        let peers = PeerNetwork::new(cfg.outbound_ip, dialer).with_raft_stream(cfg.raft_stream);
        for (n, a) in &identity.meta_members {
            peers.set_addr(n.0, a);
        }
        peers.set_addr(cfg.id.0, &advertise);
        let meta = Core::open_meta(
            &engine,
            &syncer,
            &peers,
            cfg.id,
            &identity,
            cfg.snapshot_logs,
        )
        .await?;
        let (splits, split_rx) = tokio::sync::mpsc::unbounded_channel();
        let (log_full, log_full_rx) = tokio::sync::mpsc::unbounded_channel();
        let metrics = Metrics::new(cfg.id.0, peers.metrics(), syncer.metrics());
        let core = Arc::new(Core {
            id: cfg.id,
            desc,
            engine,
            syncer,
            peers,
            limits: cfg.limits,
            snapshot_logs: cfg.snapshot_logs,
            snapshot_log_bytes: cfg.snapshot_log_bytes,
            log_full,
            move_timeout: cfg.move_timeout,
            controller: cfg.controller.clone(),
            controller_log: Default::default(),
            fault_refuse_snapshots: cfg.fault_refuse_snapshots,
            fault_no_raft_stream: cfg.fault_no_raft_stream,
            meta_members: RwLock::new(identity.meta_members),
            meta: RwLock::new(meta),
            replicas: Default::default(),
            destroying: Default::default(),
            lifecycle: Default::default(),
            liveness: Default::default(),
            meta_leader_hint: Default::default(),
            metrics,
            splits,
            disk: Arc::new(crate::disk::DiskGuard::new(&cfg.data_dir, cfg.disk_reserve)),
            quiesce: cfg.quiesce,
            commit_hold: cfg.commit_hold,
            incarnation: cairn_types::entropy::next_u64(),
            peer_health: Default::default(),
            transfers: Default::default(),
            walked: Default::default(),
            retired_duplicates: Default::default(),
            exports: Default::default(),
        });
        core.disk.check(cfg.id.0);
        core.reopen_recorded().await?;
        let (stop, _) = watch::channel(false);
        let client = ClientId(cairn_types::entropy::next_u64() | 1);
        let node = Arc::new(Node {
            log_tail: cfg.log_tail.clone(),
            router: Router::new(NodeTransport { core: core.clone() }),
            core,
            session: Session::new(client),
            lose_write_replies: AtomicU64::new(cfg.fault_lose_write_replies),
            grpc_addr,
            http_addr,
            stop,
            fatal: watch::channel(None).0,
            tasks: Default::default(),
            meta_contact_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            secure: tls.is_some(),
            auth: Default::default(),
        });
        let mut tasks = vec![
            tokio::spawn(crate::grpc::serve(
                node.clone(),
                grpc,
                node.stop.subscribe(),
            )),
            tokio::spawn(heartbeat_loop(node.clone(), node.stop.subscribe())),
            tokio::spawn(reconcile_loop(node.clone(), node.stop.subscribe())),
            tokio::spawn(split_loop(node.clone(), split_rx, node.stop.subscribe())),
            tokio::spawn(crate::moves::executor_loop(
                node.clone(),
                node.stop.subscribe(),
            )),
            tokio::spawn(crate::controller::controller_loop(
                node.clone(),
                node.stop.subscribe(),
            )),
            tokio::spawn(storage_watch(node.clone(), node.stop.subscribe())),
            tokio::spawn(crate::log_bound::keeper_loop(
                node.core.clone(),
                log_full_rx,
                node.stop.subscribe(),
            )),
        ];
        if cfg.quiesce {
            tasks.push(tokio::spawn(crate::supervisor::ping_loop(
                node.clone(),
                node.stop.subscribe(),
            )));
            tasks.push(tokio::spawn(crate::supervisor::supervise_loop(
                node.clone(),
                node.stop.subscribe(),
            )));
        }
        // Off (reserve 0) in a simulation: its blocking statvfs would run outside simulated
        // time.
        if cfg.disk_reserve > 0 {
            tasks.push(tokio::spawn(crate::disk::disk_loop(
                node.core.disk.clone(),
                cfg.id.0,
                node.stop.subscribe(),
            )));
        }
        if let Some(http) = http {
            tasks.push(tokio::spawn(crate::http_serve::serve(
                node.clone(),
                http,
                tls.as_ref().map(|t| t.http()),
                cfg.http_read_timeout,
                node.stop.subscribe(),
            )));
        }
        if let Some(tls) = tls {
            tasks.push(tokio::spawn(reload_certificates(
                tls,
                cfg.certs_reload_interval,
                node.stop.subscribe(),
            )));
        }
        node.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(&mut tasks);
        tracing::info!(node = %cfg.id, grpc = %grpc_addr, http = ?http_addr, "node started");
        Ok(node)
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Turns true when the node starts shutting down (long-lived streams end on it).
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    async fn stop_all(&self) {
        self.hand_off_leaderships().await;
        let _ = self.stop.send(true);
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        for r in self.core.all_replicas() {
            let _ = r.raft.shutdown().await;
        }
        if let Some(m) = self.core.meta() {
            let _ = m.raft.shutdown().await;
        }
        if let Err(e) = self.core.syncer.sync().await {
            tracing::error!("final sync failed: {e}");
        }
        tracing::info!(node = %self.core.id, "node stopped");
    }

    /// Hands each group this node leads (partitions and metadata) to its most caught-up
    /// voter on a live node, all at once, for at most [`HANDOFF_WITHIN`]. Without it a
    /// stopped leader's groups wait out a failover (about 1.5 s for a partition, 2 s for
    /// the metadata group, whose followers keep their leader's lease), as after a crash.
    /// etcd hands its leadership over on a graceful stop too. Best effort: a group that
    /// cannot be handed over in time fails over as before.
    async fn hand_off_leaderships(&self) {
        let me = self.id();
        let target = |m: &cairn_raft::typ::Metrics| {
            handoff_target(m, me, |n| self.core.peer_health.is_down(n))
        };
        let replicas: Vec<_> = self
            .core
            .all_replicas()
            .into_iter()
            .filter_map(|r| target(&r.raft.metrics().borrow_watched()).map(|to| (r, to)))
            .collect();
        let meta = self
            .core
            .meta()
            .and_then(|m| target(&m.raft.metrics().borrow_watched()).map(|to| (m, to)));
        let count = replicas.len() + usize::from(meta.is_some());
        if count == 0 {
            return;
        }
        tracing::info!(groups = count, "stopping: handing leaderships over");
        let started = std::time::Instant::now();
        let partitions = replicas
            .iter()
            .map(|(r, to)| async move { self.core.transfer_leader_in(&r.group(), *to).await });
        let metadata = async {
            match &meta {
                Some((m, to)) => Some(self.core.transfer_leader_in(&m.group(), *to).await),
                None => None,
            }
        };
        let moved = tokio::time::timeout(
            HANDOFF_WITHIN,
            futures::future::join(futures::future::join_all(partitions), metadata),
        )
        .await;
        match moved {
            Ok((parts, meta)) => {
                let failed: Vec<String> = parts
                    .into_iter()
                    .chain(meta)
                    .filter_map(|r| r.err().map(|e| e.to_string()))
                    .collect();
                if failed.is_empty() {
                    tracing::info!(
                        groups = count,
                        ms = started.elapsed().as_millis() as u64,
                        "handed every leadership over"
                    );
                } else {
                    tracing::warn!(
                        "{} of {count} groups were not handed over and will fail over: {}",
                        failed.len(),
                        failed.join("; ")
                    );
                }
            }
            Err(_) => tracing::warn!(
                "handing {count} leaderships over took more than {HANDOFF_WITHIN:?}; the rest \
                 will fail over"
            ),
        }
    }

    /// Why this node should not take client traffic now, if it should not: it has not
    /// reached the metadata group since it started, or not for [`CUT_OFF_AFTER`] (it cannot
    /// learn routes or report liveness; a balancer should prefer its peers), or it is being
    /// drained (it is about to leave).
    pub fn not_serving(&self) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining: its replicas are moving to other nodes".into());
        }
        let last = self.meta_contact_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Some("starting: not yet in contact with the metadata group".into());
        }
        let ago = self.core.peer_health.now_ms().saturating_sub(last);
        (ago > CUT_OFF_AFTER.as_millis() as u64).then(|| {
            format!(
                "cut off: no contact with the metadata group for {:.1} s",
                ago as f64 / 1000.0
            )
        })
    }

    /// Every replica on this node: its descriptor as applied here, the voters of its group
    /// as this replica sees them, and whether it leads.
    pub fn replica_layout(&self) -> Vec<(PartitionDesc, Vec<NodeId>, bool)> {
        let replicas = self.core.replicas.read().unwrap_or_else(|p| p.into_inner());
        replicas
            .values()
            .map(|r| {
                let m = r.raft.metrics().borrow_watched().clone();
                let membership = m.membership_config.membership();
                let voters = membership
                    .voter_ids()
                    .filter_map(|r| membership.get_node(&r).map(|mb| NodeId(mb.node)))
                    .collect();
                let leads = m.state == openraft::ServerState::Leader;
                (r.view.desc(), voters, leads)
            })
            .collect()
    }

    /// The metadata as this node's metadata replica has applied it (`None` on a node that
    /// is not a member). Only the leader's copy is known to be current.
    pub fn metadata(&self) -> Option<Arc<cairn_meta::MetaState>> {
        self.core
            .meta()
            .map(|m| m.state.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Leader and term of every replica on this node, as its Raft group sees them.
    pub fn replica_statuses(&self) -> Vec<cairn_types::PartitionStatus> {
        self.core.replica_statuses()
    }

    /// Partitions this node leads right now.
    pub fn led_partitions(&self) -> Vec<cairn_types::PartitionId> {
        self.core.led_partitions()
    }

    /// Whether this node leads the metadata group right now.
    pub fn is_meta_leader(&self) -> bool {
        self.core
            .meta()
            .is_some_and(|m| m.leader() == Some(self.core.id))
    }

    /// Partition logs this node purged by size since it started (`--snapshot-log-bytes`).
    pub fn log_size_purges(&self) -> u64 {
        self.core.metrics.size_purges().get()
    }

    /// Log purges this node, leading, held back for a replica behind since it started.
    pub fn log_holds(&self) -> u64 {
        self.core.metrics.holds().get()
    }

    /// The node's recent log output (`/debug/logs`), if it keeps it.
    pub(crate) fn recent_logs(&self) -> Option<Vec<u8>> {
        self.log_tail.as_ref().map(crate::LogTail::contents)
    }

    /// Prometheus text for `/metrics`.
    pub(crate) fn metrics_text(&self) -> String {
        // Its own statement: a guard taken inside the struct literal below would live to the
        // end of it, and `duplicate_writes` reads the same lock again. A second read while a
        // writer waits (a replica being opened) blocks for good: the node hung so, with
        // /metrics polled while a 1,000-partition table was being created.
        let replicas = self
            .core
            .replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let raft_log_entries = self.core.raft_log_entries();
        let health = &self.core.peer_health;
        let (leaders, top) = self.core.led_gauges(crate::metrics::TOP_PARTITIONS);
        let replicas_destroying = self
            .core
            .destroying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let gauges = crate::metrics::Gauges {
            replicas,
            leaders,
            replicas_destroying,
            worker_threads: tokio::runtime::Handle::try_current()
                .map_or(0, |h| h.metrics().num_workers()),
            meta_leader: self.is_meta_leader(),
            duplicate_writes: self.core.duplicate_writes(),
            disk_free_bytes: self.core.disk.free_bytes(),
            disk_full: self.core.disk.is_full(),
            disk_full_refusals: self.core.disk.refused(),
            engine_disk_bytes: self.core.engine.disk_bytes(),
            raft_log_entries,
            backup_views: self.core.exports.held(),
            groups_ticking: health.ticking.load(Ordering::Relaxed),
            campaigns: health.campaigns.load(Ordering::Relaxed),
            elections: health.elections.load(Ordering::Relaxed),
            leader_changes: health.leader_changes.load(Ordering::Relaxed),
            peers_down: health.down_count(),
            top,
            cluster: self.core.cluster_gauges(),
        };
        self.core.metrics.render(gauges)
    }

    /// Records the size of one client Batch call.
    pub(crate) fn record_batch(&self, ops: usize) {
        self.core.metrics.batch(ops);
    }

    /// Counts one request of `op`, whether it failed, and how long it took since `started`.
    pub(crate) fn record(&self, op: &str, ok: bool, started: std::time::Instant) {
        self.core.metrics.record(op, ok, started.elapsed());
    }

    /// Creates a table and waits (until `deadline`) for each partition to elect a leader.
    /// `request_id` names the request across retries (0: a fresh one is drawn).
    pub async fn create_table(
        &self,
        name: &str,
        replication: u32,
        split_keys: Vec<Vec<u8>>,
        request_id: u64,
        deadline: Instant,
    ) -> Result<TableRoute> {
        cairn_types::check_split_count(split_keys.len())?;
        let replication = if replication == 0 {
            DEFAULT_REPLICATION
        } else {
            replication
        };
        // The client gives up at the same deadline: answer with a tenth of the time (at
        // most 2 s) to spare, or an answer sent at the last moment arrives after it left.
        let spare =
            (deadline.saturating_duration_since(Instant::now()) / 10).min(Duration::from_secs(2));
        let deadline = deadline - spare;
        let req = MetaRequest::CreateTable {
            name: name.to_string(),
            replication,
            split_keys,
            request_id: if request_id == 0 {
                cairn_types::entropy::next_u64() | 1
            } else {
                request_id
            },
        };
        let MetaReply::Table(route) = self.router.meta(req, deadline).await? else {
            return Err(Error::Internal("create table answered no table".into()));
        };
        self.router.transport().learn(&route.nodes);
        // Partitions open and elect side by side (a bounded number at a time): one after
        // another, a table of a thousand partitions would outlast the client's deadline.
        let nodes = &route.nodes;
        let leaders: Vec<(PartitionId, Option<NodeId>)> =
            futures::stream::iter(route.table.partitions.clone())
                .map(|p: PartitionDesc| async move {
                    // Past the deadline, answer: the nodes open what is left from the
                    // metadata (reconcile), and the caller gets an answer before it gives up.
                    if Instant::now() < deadline {
                        self.open_new_partition(&p, nodes).await;
                    }
                    (p.id, self.wait_leader(&p, deadline).await)
                })
                .buffer_unordered(CREATE_PARALLELISM)
                .collect()
                .await;
        let mut route = route;
        for (p, l) in leaders {
            if let Some(l) = l {
                route.leaders.insert(p, l);
            }
        }
        self.router.cache().insert(route.clone());
        Ok(route)
    }

    /// Opens each replica of a partition CreateTable just recorded, forming its group.
    async fn open_new_partition(&self, p: &PartitionDesc, nodes: &[NodeDesc]) {
        let members: Vec<NodeDesc> = nodes
            .iter()
            .filter(|n| p.replicas.contains(&n.id))
            .cloned()
            .collect();
        let transport = self.router.transport();
        let opens = p.replicas.iter().map(|n| {
            let req = PartitionRequest {
                partition: p.id,
                epoch: p.epoch,
                table: p.table_id,
                op: PartitionOp::Open {
                    desc: p.clone(),
                    members: members.clone(),
                    bootstrap: true,
                    replica: p.replica_on(*n).unwrap_or_default(),
                },
            };
            transport.partition(*n, req)
        });
        for r in futures::future::join_all(opens).await {
            if let Err(e) = r {
                // The replica's node opens it from the metadata when it can.
                tracing::warn!(partition = %p.id, "could not open a replica now: {e}");
            }
        }
    }

    async fn wait_leader(&self, p: &PartitionDesc, deadline: Instant) -> Option<NodeId> {
        loop {
            for n in &p.replicas {
                let req = PartitionRequest {
                    partition: p.id,
                    epoch: p.epoch,
                    table: p.table_id,
                    op: PartitionOp::Leader,
                };
                if let Ok(PartitionReply::Leader(Some(l))) =
                    self.router.transport().partition(*n, req).await
                {
                    return Some(l);
                }
            }
            if Instant::now() + Duration::from_millis(50) > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drops the table `name` (of id `id`, if given): it is unknown to every router at
    /// once; each partition then refuses every request through its own log before this
    /// returns, and its replicas are destroyed by the nodes shortly after. A retry that
    /// finds the table dropped already (its first attempt's answer lost) returns at once:
    /// partitions that attempt could not reach are left to the nodes' reconcile.
    pub async fn drop_table(
        &self,
        name: &str,
        id: Option<TableId>,
        deadline: Instant,
    ) -> Result<()> {
        cairn_types::validate_table_name(name)?;
        // The id is fixed before the first attempt, so that a retry (here, or the client's
        // with the id it sent) never drops a table made again under the name since.
        let id = match id {
            Some(id) => id,
            None => self.router.describe(name, deadline).await?.table.id,
        };
        let req = MetaRequest::DropTable {
            name: name.to_string(),
            id,
        };
        let route = match self.router.meta(req, deadline).await? {
            MetaReply::Table(route) => route,
            // Dropped already: by an attempt of this request whose answer was lost, or by
            // another drop. Either way the table is gone, and its replicas go with it.
            MetaReply::Done => {
                self.router.cache().invalidate(name);
                return Ok(());
            }
            other => {
                return Err(Error::Internal(format!("drop table answered {other:?}")));
            }
        };
        self.router.cache().invalidate(name);
        self.router.transport().learn(&route.nodes);
        for p in &route.table.partitions {
            self.drop_partition(p, route.leaders.get(&p.id).copied(), deadline)
                .await?;
        }
        self.lose_reply("the drop")
    }

    async fn drop_partition(
        &self,
        p: &PartitionDesc,
        hint: Option<NodeId>,
        deadline: Instant,
    ) -> Result<()> {
        let mut next = hint.or_else(|| p.replicas.first().copied());
        let mut gone: BTreeSet<NodeId> = BTreeSet::new();
        let mut turn = 0usize;
        while let Some(target) = next {
            let req = PartitionRequest {
                partition: p.id,
                epoch: p.epoch,
                table: p.table_id,
                op: PartitionOp::Drop,
            };
            next = None;
            match self.router.transport().partition(target, req).await {
                Ok(_) => return Ok(()),
                // The node's reconcile loop already destroyed its replica.
                Err(Error::PartitionNotFound(_)) => {
                    gone.insert(target);
                }
                Err(Error::NotLeader {
                    leader: Some(l), ..
                }) if l != target => next = Some(l),
                Err(e) => tracing::debug!(partition = %p.id, "drop attempt on {target}: {e}"),
            }
            if p.replicas.iter().all(|n| gone.contains(n)) {
                return Ok(());
            }
            if Instant::now() + Duration::from_millis(100) > deadline {
                return Err(Error::Unavailable(format!(
                    "the table is removed from the metadata but {} did not confirm the drop in time; its replicas are removed once it recovers",
                    p.id
                )));
            }
            if next.is_none() {
                turn += 1;
                next = p.replicas.get(turn % p.replicas.len().max(1)).copied();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Every table.
    pub async fn list_tables(&self, deadline: Instant) -> Result<Vec<TableDesc>> {
        self.router.tables(deadline).await
    }

    /// A table with its partitions and leader hints.
    pub async fn describe_table(&self, name: &str, deadline: Instant) -> Result<Arc<TableRoute>> {
        self.router.describe(name, deadline).await
    }

    /// Routes a write to the owner of `key` under a request id: the caller's, or one from
    /// this node's session (finished when the write returns). Answers who served it.
    async fn write(
        &self,
        table: &str,
        key: &[u8],
        given: Option<RequestId>,
        deadline: Instant,
        op: impl Fn(RequestId) -> PartitionOp,
    ) -> Result<LeaderHint> {
        self.core.limits.check_key(key)?;
        // Held to the end of the call, or of the request if its caller goes away first.
        let own;
        let rid = match given {
            Some(rid) => rid,
            None => {
                own = self.session.begin();
                own.id()
            }
        };
        let served = self
            .router
            .keyed_at(table, key, || op(rid), false, deadline)
            .await?;
        self.lose_reply("the write")?;
        Ok(self.hint(served))
    }

    /// Test-only fault (`--fault-lose-write-replies`): while the count lasts, answers a
    /// request that was carried out with `Unavailable`, as if the answer were lost.
    fn lose_reply(&self, what: &str) -> Result<()> {
        let lose = |n: u64| n.checked_sub(1);
        match self
            .lose_write_replies
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, lose)
        {
            Ok(_) => Err(Error::Unavailable(format!(
                "the answer was dropped by fault injection (--fault-lose-write-replies); {what} \
                 was applied"
            ))),
            Err(_) => Ok(()),
        }
    }

    /// The leader hint for a client, from a linearizable request's answer.
    fn hint(&self, served: Served) -> LeaderHint {
        let leader_addr = if served.node == self.core.id {
            Some(self.core.desc.addr.clone())
        } else {
            self.core.peers.addr(served.node.0)
        };
        LeaderHint {
            partition: served.partition,
            leader: served.node,
            leader_addr,
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(
        &self,
        table: &str,
        key: Vec<u8>,
        value: Vec<u8>,
        rid: Option<RequestId>,
        deadline: Instant,
    ) -> Result<LeaderHint> {
        self.core.limits.check_value(&value)?;
        let op = |rid| PartitionOp::Put {
            key: key.clone(),
            value: value.clone(),
            request_id: Some(rid),
        };
        self.write(table, &key, rid, deadline, op).await
    }

    /// Deletes `key` (absent keys are fine).
    pub async fn delete(
        &self,
        table: &str,
        key: Vec<u8>,
        rid: Option<RequestId>,
        deadline: Instant,
    ) -> Result<LeaderHint> {
        let op = |rid| PartitionOp::Delete {
            key: key.clone(),
            request_id: Some(rid),
        };
        self.write(table, &key, rid, deadline, op).await
    }

    /// Reads `key`; linearizable unless `stale`. A linearizable read also answers who
    /// served it.
    pub async fn get(
        &self,
        table: &str,
        key: Vec<u8>,
        stale: bool,
        deadline: Instant,
    ) -> Result<(Option<Vec<u8>>, Option<LeaderHint>)> {
        self.core.limits.check_key(&key)?;
        let (reply, hint) = if stale {
            (self.stale_get(table, &key, deadline).await?, None)
        } else {
            let served = self
                .router
                .keyed_at(
                    table,
                    &key,
                    || PartitionOp::Get {
                        key: key.clone(),
                        stale: false,
                    },
                    false,
                    deadline,
                )
                .await?;
            let reply = served.reply.clone();
            (reply, Some(self.hint(served)))
        };
        match reply {
            PartitionReply::Value(v) => Ok((v, hint)),
            other => Err(Error::Internal(format!("get answered {other:?}"))),
        }
    }

    /// A stale read prefers this node's own replica, then the router's choice.
    async fn stale_get(
        &self,
        table: &str,
        key: &[u8],
        deadline: Instant,
    ) -> Result<PartitionReply> {
        let route = self.router.route(table, deadline).await?;
        if let Some((p, _)) = route.locate(key)
            && self.core.replica(p.id).is_some()
        {
            let req = PartitionRequest {
                partition: p.id,
                epoch: p.epoch,
                table: p.table_id,
                op: PartitionOp::Get {
                    key: key.to_vec(),
                    stale: true,
                },
            };
            if let Ok(r) = self.core.handle_partition(req).await {
                return Ok(r);
            }
        }
        self.router
            .keyed(
                table,
                key,
                || PartitionOp::Get {
                    key: key.to_vec(),
                    stale: true,
                },
                true,
                deadline,
            )
            .await
    }

    /// Lists keys in `[start, end)`, with their values if `values`.
    #[allow(clippy::too_many_arguments)]
    pub async fn list(
        &self,
        table: &str,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        values: bool,
        stale: bool,
        deadline: Instant,
    ) -> Result<ListPage> {
        self.router
            .list(table, start, end, limit, values, stale, deadline)
            .await
    }

    /// A page of a backup of `table` from `at` (see [`cairn_router::ExportCursor`]).
    pub async fn export(
        &self,
        table: &str,
        at: cairn_router::ExportCursor,
        max_bytes: u64,
        deadline: Instant,
    ) -> Result<cairn_router::ExportPage> {
        self.router.export(table, at, max_bytes, deadline).await
    }

    /// What this node's `/health` answers: its status ("serving" or "not serving" with a
    /// reason) as JSON.
    fn health(&self) -> serde_json::Value {
        match self.not_serving() {
            None => {
                serde_json::json!({"status": "serving", "node": self.id().0, "secure": self.secure})
            }
            Some(reason) => serde_json::json!({"status": "not serving", "node": self.id().0,
                "reason": reason, "secure": self.secure}),
        }
    }

    /// One of this node's diagnostics, as its HTTP port serves it.
    pub(crate) fn diagnostic(&self, d: Diagnostic) -> Result<Vec<u8>> {
        match d {
            Diagnostic::Metrics => Ok(self.metrics_text().into_bytes()),
            Diagnostic::Logs => self.recent_logs().ok_or_else(|| {
                Error::NotFound(format!(
                    "node {} keeps no log in memory (it was started without a log tail)",
                    self.id()
                ))
            }),
            Diagnostic::Health => Ok(self.health().to_string().into_bytes()),
        }
    }

    /// Node `id`'s diagnostic `d`, asked of it over the internal service unless it is this
    /// node (one hop, at most 5 s; `deadline` bounds looking up its address): the console
    /// charts every node through the one it was loaded from, and `cairn debug zip` collects
    /// through one node, so both work behind a balancer, a port-forward or a Compose network
    /// whose names the caller cannot resolve.
    pub(crate) async fn diagnostic_of(
        &self,
        id: NodeId,
        d: Diagnostic,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        if id == self.id() {
            return self.diagnostic(d);
        }
        // A node this one shares no group with is looked up in the metadata first.
        if self.core.peers.addr(id.0).is_none() {
            let nodes = self.nodes(deadline).await?;
            let n = nodes
                .iter()
                .find(|n| n.node.id == id)
                .ok_or_else(|| Error::NotFound(format!("the cluster has no node {id}")))?;
            self.core.peers.set_addr(id.0, &n.node.addr);
        }
        match self
            .router
            .transport()
            .meta_of(id, &MetaRequest::NodeDiagnostic(d))
            .await?
        {
            MetaReply::Diagnostic(body) => Ok(body),
            other => Err(Error::Internal(format!(
                "node {id} answered {other:?} for its {d:?}"
            ))),
        }
    }

    /// Nodes with liveness and load, from the metadata leader.
    pub async fn nodes(&self, deadline: Instant) -> Result<Vec<NodeStatus>> {
        match self.router.meta(MetaRequest::Nodes, deadline).await? {
            MetaReply::Nodes(n) => Ok(n),
            other => Err(Error::Internal(format!("nodes answered {other:?}"))),
        }
    }

    /// Engine key counts for a table on this node: a count of every key, so off the
    /// async workers.
    pub(crate) async fn engine_stats(
        &self,
        table: cairn_types::TableId,
        partitions: Vec<cairn_types::PartitionId>,
    ) -> Result<(u64, u64, u64, u32)> {
        let core = self.core.clone();
        self.core
            .syncer
            .blocking(move || Ok(core.engine_stats(table, &partitions)))
            .await
            .map_err(|e| Error::Internal(format!("counting keys: {e}")))?
    }

    /// Opens the replicas the metadata places here and this node lacks, and destroys those
    /// the metadata says to destroy (see [`cairn_meta::Reconcile`]); anything the metadata
    /// does not know yet is left alone.
    ///
    /// `quiet` is the digest of the replicas of the last reconcile that found nothing to do;
    /// while they stay the same, the request names them by digest only.
    async fn reconcile(&self, quiet: &mut Option<u64>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let meta = self.core.meta().map(|m| m.id);
        let digest = self.core.hosted_digest();
        let mut by_digest = *quiet == Some(digest);
        let (open, destroy, destroy_meta) = loop {
            let (hosted, digest) = if by_digest {
                (None, digest)
            } else {
                let hosted = self.core.hosted_descs();
                let digest = cairn_router::hosted_digest(hosted.iter().map(|(d, r)| (d, *r)));
                (Some(hosted), digest)
            };
            let full = hosted.is_some();
            let req = MetaRequest::Reconcile {
                node: self.core.id,
                hosted,
                digest,
                meta,
            };
            let MetaReply::Reconcile {
                open,
                destroy,
                destroy_meta,
                send_hosted,
            } = self.router.meta(req, deadline).await?
            else {
                return Err(Error::Internal("unexpected reply to Reconcile".into()));
            };
            if send_hosted && !full {
                by_digest = false;
                continue;
            }
            let nothing = open.is_empty() && destroy.is_empty() && !destroy_meta;
            *quiet = nothing.then_some(digest);
            break (open, destroy, destroy_meta);
        };
        if destroy_meta {
            self.core.destroy_meta().await?;
        }
        for (desc, members) in &open {
            // A partition never changed since CreateTable whose creator died before opening
            // it: its preferred leader forms the group, as CreateTable would have.
            let bootstrap = desc.replicas.first() == Some(&self.core.id);
            let Some(id) = desc.replica_on(self.core.id) else {
                continue;
            };
            if let Err(e) = self.core.open_replica(desc, members, bootstrap, id).await {
                tracing::warn!(partition = %desc.id, "reconcile could not open replica: {e}");
            }
        }
        for p in destroy {
            self.core.destroy_replica(p).await?;
        }
        Ok(())
    }

    /// Splits the partition of `table` holding `key` so that `key` starts a new partition;
    /// answers the left and right halves once the metadata records them.
    pub async fn split(
        &self,
        table: &str,
        key: Vec<u8>,
        deadline: Instant,
    ) -> Result<(PartitionDesc, PartitionDesc)> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "the split key must not be empty: the empty key starts the table".into(),
            ));
        }
        self.core.limits.check_key(&key)?;
        let route = self.router.describe(table, deadline).await?;
        let Some((p, _)) = route.locate(&key) else {
            return Err(Error::Internal(format!(
                "table {table} has no partition for the key"
            )));
        };
        if p.range.start == key {
            return Err(Error::Conflict(format!(
                "{} already starts at that key; a split key must lie strictly inside a partition",
                p.id
            )));
        }
        let MetaReply::Id(right) = self
            .router
            .meta(MetaRequest::AllocPartitionId, deadline)
            .await?
        else {
            return Err(Error::Internal(
                "unexpected reply to AllocPartitionId".into(),
            ));
        };
        let op = || PartitionOp::Split {
            key: key.clone(),
            right,
        };
        let (left, right_desc) = match self.router.keyed(table, &key, op, false, deadline).await {
            Ok(PartitionReply::Split(l, r)) => (l, r),
            Ok(other) => return Err(Error::Internal(format!("split answered {other:?}"))),
            Err(Error::Conflict(m)) => {
                // An earlier attempt whose answer was lost may have done it already.
                let route = self.router.describe(table, deadline).await?;
                let done = route
                    .table
                    .partitions
                    .iter()
                    .find(|p| p.id == right)
                    .cloned();
                let left = done.as_ref().and_then(|r| {
                    route
                        .table
                        .partitions
                        .iter()
                        .find(|p| p.range.end.as_ref() == Some(&r.range.start))
                        .cloned()
                });
                match (left, done) {
                    (Some(l), Some(r)) => return Ok((l, r)),
                    _ => return Err(Error::Conflict(m)),
                }
            }
            Err(e) => return Err(e),
        };
        // Recorded by this call or, should it fail, by the leaders' next heartbeats.
        if let Err(e) = self
            .router
            .meta(
                MetaRequest::UpdatePartitions(vec![left.clone(), right_desc.clone()]),
                deadline,
            )
            .await
        {
            tracing::warn!(partition = %left.id, "split done, not yet recorded in the metadata: {e}");
        }
        let kind = cairn_types::OpKind::Split {
            key: right_desc.range.start.clone(),
            right: right_desc.id,
        };
        let step = format!(
            "{} {} and {} {}",
            left.id, left.range, right_desc.id, right_desc.range
        );
        self.record_operation(left.id, kind, step, deadline).await;
        self.router.cache().invalidate(table);
        Ok((left, right_desc))
    }

    /// The route of `partition`'s table as the metadata records it, and the partition.
    pub(crate) async fn partition_route(
        &self,
        partition: PartitionId,
        deadline: Instant,
    ) -> Result<(TableRoute, PartitionDesc)> {
        let route = match self
            .router
            .meta(MetaRequest::GetPartition(partition), deadline)
            .await?
        {
            MetaReply::Table(r) => r,
            other => return Err(Error::Internal(format!("unexpected reply {other:?}"))),
        };
        let p = route
            .table
            .partitions
            .iter()
            .find(|p| p.id == partition)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "partition {partition}; `cairn admin partitions` lists them"
                ))
            })?;
        Ok((route, p))
    }

    /// Moves leadership of `partition` to its replica on `to`; returns once `to` leads.
    pub async fn transfer_leader(
        &self,
        partition: PartitionId,
        to: NodeId,
        deadline: Instant,
    ) -> Result<()> {
        let (route, p) = self.partition_route(partition, deadline).await?;
        let nodes = self.nodes(deadline).await?;
        if !nodes.iter().any(|n| n.node.id == to) {
            return Err(Error::NotFound(format!(
                "node {to} is not part of the cluster; `cairn admin nodes` lists the nodes"
            )));
        }
        if !p.replicas.contains(&to) {
            return Err(Error::Conflict(format!(
                "{to} holds no replica of {partition} (its replicas: {}); move a replica there first",
                p.replicas
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let name = route.table.name.clone();
        self.router.cache().insert(route);
        let op = || PartitionOp::TransferLeader { to };
        let pick = |r: &TableRoute| {
            r.table
                .partitions
                .iter()
                .find(|x| x.id == partition)
                .cloned()
        };
        self.router
            .on_partition(&name, pick, op, false, deadline)
            .await?;
        self.router.cache().set_leader(&name, partition, to);
        let kind = cairn_types::OpKind::TransferLeader { to };
        self.record_operation(partition, kind, format!("{to} leads"), deadline)
            .await;
        Ok(())
    }

    /// The controller's state and recent decisions, from the metadata leader.
    pub async fn controller_status(
        &self,
        deadline: Instant,
    ) -> Result<cairn_router::ControllerStatus> {
        match self
            .router
            .meta(MetaRequest::ControllerStatus, deadline)
            .await?
        {
            MetaReply::Controller(s) => Ok(s),
            other => Err(Error::Internal(format!(
                "controller status answered {other:?}"
            ))),
        }
    }

    /// Pauses or resumes the controller; answers its state.
    pub async fn set_controller_paused(
        &self,
        paused: bool,
        deadline: Instant,
    ) -> Result<cairn_router::ControllerStatus> {
        self.router
            .meta(MetaRequest::SetControllerPaused(paused), deadline)
            .await?;
        self.controller_status(deadline).await
    }

    /// Retires `node` for good: it must hold no replica (drained, or down and repaired).
    pub async fn remove_node(&self, node: NodeId, deadline: Instant) -> Result<()> {
        self.router
            .meta(MetaRequest::RemoveNode(node), deadline)
            .await?;
        Ok(())
    }

    /// Why this node stopped serving on its own (it was removed from the cluster), once it
    /// has; the server process exits with it.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Starts or stops draining `node`.
    pub async fn set_draining(
        &self,
        node: NodeId,
        draining: bool,
        deadline: Instant,
    ) -> Result<()> {
        self.router
            .meta(MetaRequest::SetDraining { node, draining }, deadline)
            .await?;
        Ok(())
    }

    /// Records a one-step operation that is done, for `cairn admin operations`. Best effort:
    /// the change itself stands whether or not the record lands.
    async fn record_operation(
        &self,
        partition: PartitionId,
        kind: cairn_types::OpKind,
        step: String,
        deadline: Instant,
    ) {
        let req = MetaRequest::RecordOperation {
            partition,
            kind,
            step,
        };
        if let Err(e) = self.router.meta(req, deadline).await {
            tracing::warn!(%partition, "operation done but not recorded: {e}");
        }
    }
}

async fn heartbeat_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut reporter = crate::heartbeat::Reporter::new(cairn_types::entropy::next_u64());
    loop {
        node.core.observe_meta_role();
        let hb = reporter.heartbeat(node.core.desc.clone(), node.core.current_report());
        let deadline = Instant::now() + HEARTBEAT_EVERY;
        let delivered = node.router.meta(MetaRequest::Heartbeat(hb), deadline).await;
        if delivered.is_ok() {
            let now = node.core.peer_health.now_ms().max(1);
            node.meta_contact_ms.store(now, Ordering::Relaxed);
        }
        let mut again = false;
        match delivered {
            Ok(MetaReply::HeartbeatAck {
                members,
                draining,
                resend_full,
            }) => {
                again = reporter.acknowledged(resend_full);
                node.draining.store(draining, Ordering::Relaxed);
                if let Err(e) = node.core.learn_meta_members(members).await {
                    tracing::warn!("cannot record the metadata members: {e}");
                }
            }
            Ok(_) => reporter.failed(),
            Err(e @ Error::NodeRemoved(_)) => {
                tracing::error!("{e}");
                let _ = node.fatal.send(Some(e.to_string()));
                return;
            }
            Err(e) => {
                reporter.failed();
                tracing::debug!("heartbeat not delivered: {e}");
            }
        }
        if again {
            // The leader wants the whole report: send it now, not a period late.
            continue;
        }
        tokio::select! {
            // Fixed order keeps a simulation repeatable.
            biased;
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn reconcile_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut quiet = None;
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = node.reconcile(&mut quiet).await {
            tracing::debug!("reconcile: {e}");
        }
    }
}

/// Opens the right halves of the splits this node's replicas apply.
async fn split_loop(
    node: Arc<Node>,
    mut splits: tokio::sync::mpsc::UnboundedReceiver<(cairn_types::PartitionId, PartitionDesc)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.changed() => return,
            n = splits.recv() => n,
        };
        let Some((left, right)) = next else { return };
        let core = node.core.clone();
        // Each in its own task: a campaign that waits for slow followers must not hold up
        // the next split's open.
        tokio::spawn(async move { core.open_split(left, right).await });
    }
}

/// Stops the node when its storage fails: a failed fsync reported by the syncer (nothing
/// written since the last good one can be acknowledged, and a retried fsync cannot be
/// trusted), or a group whose Raft stopped on a storage error or a panic (say a write the
/// engine failed with ENOSPC before the disk guard saw it coming). A node that went on with
/// such a group would hold a replica that never answers; restarted, it recovers from what is
/// durable and catches up.
async fn storage_watch(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut failure = node.core.syncer.failure();
    loop {
        let why = tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = failure.wait_for(Option::is_some) => {
                node.core.metrics.fsync_failed();
                r.ok().and_then(|w| w.clone()).unwrap_or_default()
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => match node.core.failed_group() {
                Some(why) => why,
                None => continue,
            },
        };
        tracing::error!("stopping: {why}");
        let _ = node.fatal.send(Some(why));
        return;
    }
}

/// Re-reads the certificates directory on each SIGHUP (`kill -HUP`) and, every `poll`, when
/// its files changed, so that certificates are rotated without a restart (cert-manager and
/// Kubernetes rewrite a mounted Secret's files and signal nobody): new connections use the
/// new files, open ones keep theirs. A directory that fails to load is logged and changes
/// nothing; a half-written rotation (a new certificate beside the old key) is tried again
/// once the files change again.
async fn reload_certificates(
    tls: Arc<cairn_proto::tls::LiveTls>,
    poll: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot watch for SIGHUP ({e}): certificates reload only on restart");
            None
        }
    };
    let mut ticks = poll.map(|p| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut seen = certificate_files_digest(tls.dir());
    loop {
        let why = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            got = async { match hangups.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            } } => match got {
                Some(()) => {
                    // What the signal loads, the next check need not load again.
                    seen = certificate_files_digest(tls.dir());
                    "SIGHUP"
                }
                None => return,
            },
            _ = async { match ticks.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            } } => {
                let now = certificate_files_digest(tls.dir());
                if now == seen {
                    continue;
                }
                seen = now;
                "the certificate files changed"
            }
        };
        match tls.reload() {
            Ok(()) => tracing::info!(
                certs_dir = %tls.dir().display(),
                "{why}: certificates reloaded; new connections use them"
            ),
            Err(e) => tracing::error!(
                certs_dir = %tls.dir().display(),
                "{why}: cannot reload the certificates, still using the ones loaded before: {e}"
            ),
        }
    }
}

/// A digest of the contents of the files a node's TLS is made of (a missing or unreadable
/// file counts as empty), to notice that they changed.
fn certificate_files_digest(dir: &std::path::Path) -> [u8; 32] {
    use cairn_proto::tls::{CA_CERT, NODE_CERT, NODE_KEY};
    let files =
        [CA_CERT, NODE_CERT, NODE_KEY].map(|n| std::fs::read(dir.join(n)).unwrap_or_default());
    crate::auth::digest(files.iter().map(Vec::as_slice))
}

#[cfg(test)]
mod tests {
    use super::advertised_http;

    #[test]
    fn a_wildcard_http_address_is_advertised_with_the_grpc_host() {
        let cases = [
            // A container binds every interface and advertises its name.
            ("0.0.0.0:8001", "cairn-2:7001", "cairn-2:8001"),
            ("[::]:8001", "[fd00::2]:7001", "[fd00::2]:8001"),
            // A specific address is what others dial already.
            ("127.0.0.1:8003", "cairn-2:7001", "127.0.0.1:8003"),
            // Nothing better to say: the bound address stays.
            ("0.0.0.0:8001", "0.0.0.0:7001", "0.0.0.0:8001"),
        ];
        for (bound, advertise, want) in cases {
            let bound = bound.parse().unwrap();
            assert_eq!(
                advertised_http(bound, advertise),
                want,
                "{bound} {advertise}"
            );
        }
    }
}
