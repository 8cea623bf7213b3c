//! Deterministic simulation of a whole Cairn cluster in one process.
//!
//! Nodes (with their metadata group, partition groups and routers) and clients run as
//! [turmoil] hosts: the network and the clock are simulated, every node keeps its data in
//! an in-memory engine that survives a host crash up to its last sync, and every random
//! choice — the fault schedule, the workload, Raft's election timeouts, client and node
//! ids — follows from one seed. A run injects faults (crash and restart, partitions that
//! isolate a partition leader or the metadata leader, one-way cuts, connection loss and
//! message delay), heals, reads every key once more and checks the history with
//! `cairn-check`. Meanwhile an operator host changes the layout through the admin API:
//! splits at workload keys, replica moves and metadata member moves (on five nodes, three of
//! them founding the metadata group) and leader transfers. After the
//! run, the layout is checked too ([`check_layout`]): the metadata replicas are on its
//! recorded voters, ranges tile the key space, every
//! group's voters match the metadata and its replication factor, no node hosts overlapping
//! replicas, and no operation is stuck.
//!
//! `CAIRN_SIM_SEED=N cargo test -p cairn-sim` replays seed N.

mod net;

use anyhow::{Context, bail};
use cairn_check::workload::{Workload, final_reads, run_client, split_keys};
use cairn_check::{Event, check_lists, check_registers, parse_history};
use cairn_client::Client;
use cairn_server::{Node, ServerConfig, Substrate, Syncer};
use cairn_storage::{MemEngine, SharedEngine};
use cairn_types::{Limits, NodeId, PartitionId};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// gRPC port of every simulated node.
const PORT: u16 = 7001;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed everything follows from.
    pub seed: u64,
    /// Nodes (all in the metadata group).
    pub nodes: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Registers.
    pub keys: u32,
    /// Simulated seconds of workload (faults come and go meanwhile).
    pub workload_secs: u64,
    /// Inject faults.
    pub faults: bool,
    /// Raft entries between snapshots (small, so snapshots and log purges happen).
    pub snapshot_logs: u64,
    /// Bytes of Raft log that make a partition snapshot and purge by size (small, so the
    /// log keeper purges by size as well as by entries).
    pub snapshot_log_bytes: u64,
    /// Most operations in the run; clients pause between operations to spread them over
    /// the faults (simulated time costs nothing, operations cost real CPU).
    pub max_ops: u64,
    /// Longest pause of a client between operations.
    pub think: Duration,
    /// Read with `stale` consistency: the checker must then find violations (self-test).
    pub stale_reads: bool,
    /// Split and transfer leadership through the admin API while the workload runs.
    pub layout_changes: bool,
    /// Nodes run with `--quiesce` (`CAIRN_SIM_QUIESCE=1`): partition groups under the group
    /// supervisor instead of their own timers.
    pub quiesce: bool,
    /// Raft messages travel on one stream per node pair (`CAIRN_SIM_RAFT_STREAM=0`: one
    /// call each).
    pub raft_stream: bool,
}

impl SimConfig {
    /// The default run for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            // Every fourth seed runs five nodes (majority/minority splits of 2 and 3).
            nodes: if seed.is_multiple_of(4) { 5 } else { 3 },
            clients: 4,
            keys: 8,
            workload_secs: 20,
            faults: true,
            snapshot_logs: 100,
            snapshot_log_bytes: 1 << 10,
            max_ops: 800,
            think: Duration::from_millis(200),
            stale_reads: false,
            layout_changes: true,
            // CAIRN_SIM_QUIESCE=0 runs the groups on openraft's own timers instead.
            quiesce: std::env::var("CAIRN_SIM_QUIESCE").map_or(true, |v| v != "0"),
            raft_stream: std::env::var("CAIRN_SIM_RAFT_STREAM").map_or(true, |v| v != "0"),
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct SimOutcome {
    /// The history, as JSON lines.
    pub history: String,
    /// The faults injected and healed, with simulated times.
    pub faults: Vec<String>,
    /// Operations completed `ok`.
    pub ok_ops: usize,
    /// Checker findings; empty when the history is linearizable.
    pub violations: Vec<String>,
}

fn host(id: u64) -> String {
    format!("n{id}")
}

type Registry = Rc<RefCell<BTreeMap<u64, Arc<Node>>>>;

/// How many nodes found the metadata group.
const META_MEMBERS: u64 = 3;

/// Registers node `id` as a turmoil host whose software is a Cairn node over `engine`.
fn add_node(
    sim: &mut turmoil::Sim<'_>,
    cfg: &SimConfig,
    id: u64,
    engine: Arc<MemEngine>,
    registry: Registry,
) {
    // Three metadata members however many nodes, as an operator would run it, so that
    // metadata members can move to the other nodes.
    let members: Vec<(NodeId, String)> = (1..=cfg.nodes.min(META_MEMBERS))
        .map(|n| (NodeId(n), format!("{}:{PORT}", host(n))))
        .collect();
    let server = ServerConfig {
        id: NodeId(id),
        data_dir: Default::default(),
        listen: format!("0.0.0.0:{PORT}"),
        http: String::new(),
        advertise: Some(format!("{}:{PORT}", host(id))),
        advertise_http: None,
        initial_cluster: members,
        join: Vec::new(),
        outbound_ip: None,
        limits: Limits::default(),
        snapshot_logs: cfg.snapshot_logs,
        snapshot_log_bytes: cfg.snapshot_log_bytes,
        move_timeout: cairn_server::DEFAULT_MOVE_TIMEOUT,
        // The controller runs in every seed, with thresholds the small workload crosses:
        // it splits hot partitions and balances replicas and leaders beside the faults.
        controller: cairn_server::ControllerConfig {
            enabled: true,
            split_size: 64 << 10,
            split_qps: 40.0,
            split_window: Duration::from_secs(2),
            down_after: Duration::from_secs(20),
        },
        fault_lose_write_replies: 0,
        fault_refuse_snapshots: false,
        fault_no_raft_stream: false,
        log_tail: None,
        certs_dir: None,
        certs_reload_interval: None,
        http_read_timeout: cairn_server::DEFAULT_HTTP_READ_TIMEOUT,
        disk_reserve: 0,
        quiesce: cfg.quiesce,
        raft_stream: cfg.raft_stream,
        commit_hold: cairn_server::DEFAULT_COMMIT_HOLD,
        fault_skip_fsync: false,
    };
    sim.host(host(id), move || {
        let engine = engine.clone();
        let server = server.clone();
        let registry = registry.clone();
        async move {
            // A restarted host finds only what its previous life synced.
            engine.crash();
            let (grpc, grpc_addr) = net::listen(PORT).await?;
            let shared: SharedEngine = engine;
            let sub = Substrate {
                grpc,
                grpc_addr,
                http: None,
                dialer: Some(Arc::new(net::SimDialer)),
                tls: None,
                engine: shared.clone(),
                syncer: Syncer::inline(shared),
            };
            let node = Node::start_with(server, sub)
                .await
                .map_err(|e| format!("node {id} did not start: {e:#}"))?;
            registry.borrow_mut().insert(id, node);
            std::future::pending::<()>().await;
            Ok(())
        }
    });
}

/// A fault in force, and how long it lasts.
struct Active {
    undo: Undo,
    until: Duration,
}

enum Undo {
    Restart(Vec<u64>),
    Repair(Vec<(u64, u64)>),
    RepairOneWay(Vec<(u64, u64)>),
    NoLoss(Vec<(u64, u64)>),
    Release(Vec<(u64, u64)>),
}

struct Nemesis {
    rng: StdRng,
    nodes: u64,
    log: Vec<String>,
    registry: Registry,
}

impl Nemesis {
    fn note(&mut self, at: Duration, what: String) {
        self.log.push(format!("{:>8.3}s {what}", at.as_secs_f64()));
    }

    /// A partition leader mostly, the metadata leader sometimes, else any node.
    fn victim(&mut self, meta: bool) -> u64 {
        let reg = self.registry.borrow();
        let leaders: Vec<u64> = reg
            .iter()
            .filter(|(_, n)| {
                if meta {
                    n.is_meta_leader()
                } else {
                    !n.led_partitions().is_empty()
                }
            })
            .map(|(id, _)| *id)
            .collect();
        drop(reg);
        match leaders.choose(&mut self.rng) {
            Some(&l) if self.rng.random_bool(0.8) => l,
            _ => self.rng.random_range(1..=self.nodes),
        }
    }

    fn others(&self, v: u64) -> Vec<u64> {
        (1..=self.nodes).filter(|&n| n != v).collect()
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) -> Active {
        let lasts = Duration::from_millis(self.rng.random_range(1_000..8_000));
        let until = now + lasts;
        let kind = self.rng.random_range(0..9);
        let undo = match kind {
            0 => {
                let v = self.victim(false);
                sim.crash(host(v));
                self.registry.borrow_mut().remove(&v);
                self.note(now, format!("crash n{v} for {lasts:?}"));
                Undo::Restart(vec![v])
            }
            7 => {
                // Every node at once: only what each synced survives.
                let all: Vec<u64> = (1..=self.nodes).collect();
                for &v in &all {
                    sim.crash(host(v));
                }
                self.registry.borrow_mut().clear();
                self.note(now, format!("crash every node for {lasts:?}"));
                Undo::Restart(all)
            }
            8 => {
                let mut order: Vec<u64> = (1..=self.nodes).collect();
                order.shuffle(&mut self.rng);
                let (minority, majority) = order.split_at((order.len() - 1) / 2);
                let mut pairs = Vec::new();
                for &a in minority {
                    for &b in majority {
                        sim.partition(host(a), host(b));
                        pairs.push((a, b));
                    }
                }
                self.note(
                    now,
                    format!("split {minority:?} from {majority:?} for {lasts:?}"),
                );
                Undo::Repair(pairs)
            }
            1 | 2 => {
                let meta = kind == 2;
                let v = self.victim(meta);
                let pairs: Vec<(u64, u64)> = self.others(v).into_iter().map(|o| (v, o)).collect();
                for &(a, b) in &pairs {
                    sim.partition(host(a), host(b));
                }
                let whose = if meta {
                    "metadata leader?"
                } else {
                    "a leader?"
                };
                self.note(now, format!("isolate n{v} ({whose}) for {lasts:?}"));
                Undo::Repair(pairs)
            }
            3 => {
                let v = self.victim(false);
                let pairs: Vec<(u64, u64)> = if self.rng.random_bool(0.5) {
                    self.others(v).into_iter().map(|o| (v, o)).collect()
                } else {
                    self.others(v).into_iter().map(|o| (o, v)).collect()
                };
                for &(a, b) in &pairs {
                    sim.partition_oneway(host(a), host(b));
                }
                self.note(now, format!("one-way cut {pairs:?} for {lasts:?}"));
                Undo::RepairOneWay(pairs)
            }
            4 => {
                let mut pairs = Vec::new();
                for a in 1..=self.nodes {
                    for b in a + 1..=self.nodes {
                        pairs.push((a, b));
                    }
                }
                let p = self.rng.random_range(0.01..0.1);
                for &(a, b) in &pairs {
                    sim.set_link_fail_rate(host(a), host(b), p);
                }
                self.note(now, format!("lose messages (rate {p:.3}) for {lasts:?}"));
                Undo::NoLoss(pairs)
            }
            _ => {
                let v = self.victim(false);
                let pairs: Vec<(u64, u64)> = self.others(v).into_iter().map(|o| (v, o)).collect();
                for &(a, b) in &pairs {
                    sim.hold(host(a), host(b));
                }
                self.note(now, format!("delay all messages of n{v} for {lasts:?}"));
                Undo::Release(pairs)
            }
        };
        Active { undo, until }
    }

    fn undo(&mut self, sim: &mut turmoil::Sim<'_>, undo: Undo, now: Duration) {
        match undo {
            Undo::Restart(nodes) => {
                for &v in &nodes {
                    sim.bounce(host(v));
                }
                self.note(now, format!("restart {nodes:?}"));
            }
            Undo::Repair(pairs) => {
                for (a, b) in pairs {
                    sim.repair(host(a), host(b));
                }
                self.note(now, "repair".into());
            }
            Undo::RepairOneWay(pairs) => {
                for (a, b) in pairs {
                    sim.repair_oneway(host(a), host(b));
                }
                self.note(now, "repair one-way".into());
            }
            Undo::NoLoss(pairs) => {
                for (a, b) in pairs {
                    sim.set_link_fail_rate(host(a), host(b), 0.0);
                }
                self.note(now, "stop losing messages".into());
            }
            Undo::Release(pairs) => {
                for (a, b) in pairs {
                    sim.release(host(a), host(b));
                }
                self.note(now, "release held messages".into());
            }
        }
    }
}

/// Leader and term of each partition, as its leader reports them.
pub type Terms = BTreeMap<PartitionId, (NodeId, u64)>;

fn leader_terms(registry: &Registry) -> Terms {
    let mut terms = Terms::new();
    for (&id, node) in registry.borrow().iter() {
        for s in node.replica_statuses() {
            if s.leader == Some(NodeId(id)) {
                terms.insert(s.partition, (NodeId(id), s.term));
            }
        }
    }
    terms
}

fn step_for(sim: &mut turmoil::Sim<'_>, d: Duration) -> anyhow::Result<()> {
    let until = sim.elapsed() + d;
    while sim.elapsed() < until {
        sim.step()
            .map_err(|e| anyhow::anyhow!("simulation failed: {e}"))?;
    }
    Ok(())
}

/// Regression scenario for pre-vote: on five nodes with a table of three partitions, a node
/// that leads nothing is cut off from its peers for 12 s (several election timeouts), then
/// the network heals. Returns the node and every partition's leader and term before the cut
/// and 10 s after the heal; with pre-vote they are the same (the node did not inflate its
/// term while away and so deposes no leader when it returns).
pub fn isolated_follower_rejoins(seed: u64) -> anyhow::Result<(u64, Terms, Terms)> {
    cairn_types::entropy::seed_thread(seed);
    let result = (|| {
        let mut cfg = SimConfig::new(seed);
        cfg.nodes = 5;
        let mut sim = builder(&cfg, Duration::from_secs(120)).build();
        let registry: Registry = Rc::default();
        for id in 1..=cfg.nodes {
            add_node(
                &mut sim,
                &cfg,
                id,
                Arc::new(MemEngine::new()),
                registry.clone(),
            );
        }
        let endpoints: Vec<String> = (1..=cfg.nodes)
            .map(|n| format!("{}:{PORT}", host(n)))
            .collect();
        let keys = cfg.keys;
        sim.client("client", async move {
            let admin = Client::with_dialer(&endpoints, Some(Arc::new(net::SimDialer)))?
                .with_timeout(Duration::from_secs(60));
            admin.create_table("sim", 3, split_keys(keys)).await?;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        });
        step_for(&mut sim, Duration::from_secs(25))?;
        let before = leader_terms(&registry);
        if before.len() != 3 {
            bail!("expected 3 partition leaders after 25 s, found {before:?}");
        }
        let busy: Vec<u64> = registry
            .borrow()
            .iter()
            .filter(|(_, n)| n.is_meta_leader() || !n.led_partitions().is_empty())
            .map(|(id, _)| *id)
            .collect();
        let Some(v) = (1..=cfg.nodes).find(|n| !busy.contains(n)) else {
            bail!("every node leads something; pick another seed");
        };
        for o in (1..=cfg.nodes).filter(|&o| o != v) {
            sim.partition(host(v), host(o));
        }
        step_for(&mut sim, Duration::from_secs(12))?;
        for o in (1..=cfg.nodes).filter(|&o| o != v) {
            sim.repair(host(v), host(o));
        }
        step_for(&mut sim, Duration::from_secs(10))?;
        Ok((v, before, leader_terms(&registry)))
    })();
    cairn_types::entropy::unseed_thread();
    result
}

fn builder(cfg: &SimConfig, length: Duration) -> turmoil::Builder {
    let mut b = turmoil::Builder::new();
    b.rng_seed(cfg.seed)
        .simulation_duration(length)
        .tick_duration(Duration::from_millis(2))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(1 << 16);
    b
}

/// Runs one simulation and checks its history.
pub fn run(cfg: &SimConfig) -> anyhow::Result<SimOutcome> {
    // Every draw of the nodes, routers and clients on this thread follows from the seed
    // (all turmoil hosts run on this one thread).
    cairn_types::entropy::seed_thread(cfg.seed);
    let result = simulate(cfg);
    cairn_types::entropy::unseed_thread();
    result
}

fn simulate(cfg: &SimConfig) -> anyhow::Result<SimOutcome> {
    let workload = Duration::from_secs(cfg.workload_secs);
    let mut sim = builder(cfg, workload + Duration::from_secs(240)).build();
    let registry: Registry = Rc::default();
    for id in 1..=cfg.nodes {
        add_node(
            &mut sim,
            cfg,
            id,
            Arc::new(MemEngine::new()),
            registry.clone(),
        );
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let endpoints: Vec<String> = (1..=cfg.nodes)
        .map(|n| format!("{}:{PORT}", host(n)))
        .collect();
    let client_cfg = cfg.clone();
    let client_error: Rc<RefCell<Option<String>>> = Rc::default();
    let client_error2 = client_error.clone();
    sim.client("client", async move {
        let r = drive(client_cfg, endpoints, tx).await;
        if let Err(e) = &r {
            *client_error2.borrow_mut() = Some(format!("{e:#}"));
        }
        r.map_err(|e| e.to_string().into())
    });

    let operator_log: Rc<RefCell<Vec<String>>> = Rc::default();
    if cfg.layout_changes && cfg.faults {
        let endpoints: Vec<String> = (1..=cfg.nodes)
            .map(|n| format!("{}:{PORT}", host(n)))
            .collect();
        let (ocfg, olog) = (cfg.clone(), operator_log.clone());
        sim.client("operator", async move {
            operate(ocfg, endpoints, olog).await;
            Ok(())
        });
    }
    let mut nemesis = Nemesis {
        rng: StdRng::seed_from_u64(cfg.seed ^ 0x006e_656d_6573_6973),
        nodes: cfg.nodes,
        log: Vec::new(),
        registry: registry.clone(),
    };
    // Let the cluster form and the table appear before the first fault.
    let mut next_fault = Duration::from_secs(12);
    let faults_end = Duration::from_secs(8) + workload;
    let mut active: Option<Active> = None;
    let mut healed = false;
    loop {
        let done = match sim.step() {
            Ok(d) => d,
            Err(e) => {
                let why = client_error
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| e.to_string());
                bail!(
                    "simulation failed at {:?}: {why}\nfaults:\n{}",
                    sim.elapsed(),
                    nemesis.log.join("\n")
                );
            }
        };
        if done {
            break;
        }
        let now = sim.elapsed();
        if let Some(a) = active.take_if(|a| now >= a.until) {
            nemesis.undo(&mut sim, a.undo, now);
            next_fault = now + Duration::from_millis(nemesis.rng.random_range(500..3_000));
        }
        if cfg.faults && active.is_none() && now >= next_fault && now < faults_end {
            active = Some(nemesis.inject(&mut sim, now));
        }
        if now >= faults_end && !healed {
            if let Some(a) = active.take() {
                nemesis.undo(&mut sim, a.undo, now);
            }
            healed = true;
        }
    }

    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let mut history = String::new();
    for e in &events {
        history.push_str(&serde_json::to_string(e)?);
        history.push('\n');
    }
    let parsed = parse_history(&history).context("the simulation wrote a malformed history")?;
    let ok_ops = parsed
        .ops
        .iter()
        .filter(|o| o.outcome == cairn_check::EventType::Ok)
        .count();
    let mut violations: Vec<String> = check_registers(&parsed)
        .iter()
        .map(|v| v.to_string())
        .chain(check_lists(&parsed).iter().map(|v| v.to_string()))
        .collect();
    violations.extend(check_layout(&registry.borrow()));
    let mut faults = nemesis.log;
    faults.extend(operator_log.borrow().iter().cloned());
    faults.push(operations_summary(&registry.borrow()));
    Ok(SimOutcome {
        history,
        faults,
        ok_ops,
        violations,
    })
}

/// The client host: creates the table, runs the workload, then reads every key once more.
async fn drive(
    cfg: SimConfig,
    endpoints: Vec<String>,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let dialer: cairn_proto::net::SharedDialer = Some(Arc::new(net::SimDialer));
    let admin = Client::with_dialer(&endpoints, dialer.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_timeout(Duration::from_secs(60));
    let table = "sim";
    admin
        .create_table(table, 3, split_keys(cfg.keys))
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the table: {e}"))?;
    let started = tokio::time::Instant::now();
    let ctx = Arc::new(Workload {
        table: table.into(),
        keys: cfg.keys,
        stale: cfg.stale_reads,
        started,
        deadline: started + Duration::from_secs(cfg.workload_secs),
        budget: AtomicU64::new(cfg.max_ops),
        tx,
        think: cfg.think,
    });
    let mut tasks = Vec::new();
    for c in 0..cfg.clients {
        let client = Client::with_dialer(&endpoints, dialer.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_timeout(Duration::from_secs(5));
        tasks.push(tokio::spawn(run_client(
            ctx.clone(),
            client,
            c,
            cfg.clients,
            cfg.seed.wrapping_mul(1000) + c,
        )));
    }
    for t in tasks {
        t.await?;
    }
    let reader = Client::with_dialer(&endpoints, dialer)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_timeout(Duration::from_secs(60));
    final_reads(&ctx, &reader)
        .await
        .map_err(|e| anyhow::anyhow!(e))
}

/// The operator host: every few seconds of the workload, splits the table at a random
/// workload key or moves a random partition's leadership to another replica; then waits for
/// the metadata to settle (heartbeats record what a failed call did not). Outcomes go to
/// `log`; refusals and failures under faults are expected and only logged.
async fn operate(cfg: SimConfig, endpoints: Vec<String>, log: Rc<RefCell<Vec<String>>>) {
    let dialer: cairn_proto::net::SharedDialer = Some(Arc::new(net::SimDialer));
    let Ok(client) = Client::with_dialer(&endpoints, dialer) else {
        return;
    };
    let client = client.with_timeout(Duration::from_secs(10));
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6f70_6572_6174_6f72);
    let started = tokio::time::Instant::now();
    let note = |what: String| {
        log.borrow_mut().push(format!(
            "{:>8.3}s operator: {what}",
            started.elapsed().as_secs_f64()
        ))
    };
    // The table appears a few seconds in; faults come and go until 8 s past the workload's
    // length, and so do layout changes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let until = started + Duration::from_secs(cfg.workload_secs + 8);
    while tokio::time::Instant::now() < until {
        let starts: Vec<Vec<u8>> = match client.describe_table("sim").await {
            Ok(t) => t.partitions.into_iter().map(|p| p.start).collect(),
            Err(_) => Vec::new(),
        };
        let candidates: Vec<String> = (1..cfg.keys)
            .map(cairn_check::workload::key_name)
            .filter(|k| !starts.iter().any(|s| s == k.as_bytes()))
            .collect();
        let roll = rng.random_range(0..10);
        if roll == 9 && cfg.nodes > 3 {
            move_meta_member(&client, &mut rng, &note).await;
        } else if roll >= 7 && cfg.nodes > 3 {
            move_one(&client, &cfg, &mut rng, &note).await;
        } else if roll < 4
            && let Some(key) = candidates.choose(&mut rng).cloned()
        {
            match client.split("sim", key.as_bytes()).await {
                Ok((l, r)) => note(format!("split p{} at {key:?} into p{}", l.id, r.id)),
                Err(e) => note(format!("split at {key:?} not done: {e}")),
            }
        } else {
            let parts = client.describe_table("sim").await.map(|t| t.partitions);
            if let Some(p) = parts.ok().and_then(|ps| ps.choose(&mut rng).cloned()) {
                let others: Vec<u64> = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| Some(*r) != p.leader)
                    .collect();
                if let Some(&to) = others.choose(&mut rng) {
                    match client.transfer_leader(p.id, to).await {
                        Ok(()) => note(format!("leadership of p{} to n{to}", p.id)),
                        Err(e) => note(format!("leadership of p{} to n{to} not moved: {e}", p.id)),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
    }
    // Let heartbeats repair any record a failed call left behind before the checks.
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// Moves a random replica of a random partition to a node without one and waits (in
/// simulated time) for the operation to end.
async fn move_one(client: &Client, cfg: &SimConfig, rng: &mut StdRng, note: &impl Fn(String)) {
    let Ok(t) = client.describe_table("sim").await else {
        return;
    };
    let Some(p) = t.partitions.choose(rng).cloned() else {
        return;
    };
    let targets: Vec<u64> = (1..=cfg.nodes)
        .filter(|n| !p.replicas.contains(n))
        .collect();
    let (Some(&from), Some(&to)) = (p.replicas.choose(rng), targets.choose(rng)) else {
        return;
    };
    let op = match client.move_replica(p.id, from, to).await {
        Ok(op) => op,
        Err(e) => return note(format!("move p{} n{from}->n{to} not started: {e}", p.id)),
    };
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ops = client.operations().await.unwrap_or_default();
        if let Some(o) = ops.iter().find(|o| o.id == op.id && o.state != "running") {
            return note(format!("move p{} n{from}->n{to}: {}", p.id, o.state));
        }
    }
    note(format!("move p{} n{from}->n{to} still running", p.id));
}

/// Moves a random metadata member to a random node that is not one and waits (in
/// simulated time) for the operation to end.
async fn move_meta_member(client: &Client, rng: &mut StdRng, note: &impl Fn(String)) {
    let Ok(nodes) = client.nodes().await else {
        return;
    };
    let (members, others): (Vec<_>, Vec<_>) = nodes.iter().partition(|n| n.metadata_member);
    let (Some(from), Some(to)) = (members.choose(rng), others.choose(rng)) else {
        return;
    };
    let (from, to) = (from.id, to.id);
    let op = match client.move_replica(0, from, to).await {
        Ok(op) => op,
        Err(e) => return note(format!("metadata move n{from}->n{to} not started: {e}")),
    };
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ops = client.operations().await.unwrap_or_default();
        if let Some(o) = ops.iter().find(|o| o.id == op.id && o.state != "running") {
            return note(format!("metadata move n{from}->n{to}: {}", o.state));
        }
    }
    note(format!("metadata move n{from}->n{to} still running"));
}

/// How many operations of each kind the metadata recorded (the operator's and the
/// controller's), for the fault log.
fn operations_summary(nodes: &BTreeMap<u64, Arc<Node>>) -> String {
    let Some(meta) = nodes
        .values()
        .find(|n| n.is_meta_leader())
        .and_then(|n| n.metadata())
    else {
        return "operations: no metadata leader".into();
    };
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for op in meta.operations.values() {
        *kinds.entry(op.kind.name()).or_default() += 1;
    }
    let partitions: usize = meta.tables.values().map(|t| t.partitions.len()).sum();
    let purges: u64 = nodes.values().map(|n| n.log_size_purges()).sum();
    let holds: u64 = nodes.values().map(|n| n.log_holds()).sum();
    format!(
        "operations recorded: {kinds:?}; {partitions} partitions at the end; \
         {purges} partition logs purged by size and {holds} purges held for a replica \
         behind, on the nodes running at the end"
    )
}

/// Checks the layout the nodes hold after a run: the metadata group's replicas are on its
/// recorded voters, as many as founded it; each table's partitions tile the key space; every partition has a leader whose group's voters are the metadata's replicas, as
/// many as the replication factor; and no node hosts two replicas of overlapping ranges.
pub fn check_layout(nodes: &BTreeMap<u64, Arc<Node>>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(meta) = nodes
        .values()
        .find(|n| n.is_meta_leader())
        .and_then(|n| n.metadata())
    else {
        return vec!["layout: no metadata leader after the run".into()];
    };
    let layouts: BTreeMap<u64, _> = nodes
        .iter()
        .map(|(id, n)| (*id, n.replica_layout()))
        .collect();
    for op in meta.operations.values() {
        if op.state == cairn_types::OpState::Running {
            out.push(format!(
                "layout: operation {} on {} is stuck at {:?}",
                op.id, op.partition, op.step
            ));
        }
    }
    // The metadata group: exactly its recorded voters host a metadata replica.
    let hosting: Vec<u64> = nodes
        .iter()
        .filter(|(_, n)| n.metadata().is_some())
        .map(|(id, _)| *id)
        .collect();
    let voters: Vec<u64> = meta.meta_voters.keys().map(|n| n.0).collect();
    if hosting != voters || voters.len() as u64 != META_MEMBERS.min(nodes.len() as u64) {
        out.push(format!(
            "layout: metadata voters {voters:?} but metadata replicas on {hosting:?}"
        ));
    }
    for t in meta.tables.values() {
        if !t.tiles() {
            out.push(format!(
                "layout: table {} does not tile the key space: {:?}",
                t.name, t.partitions
            ));
        }
        for p in &t.partitions {
            let leader = layouts
                .values()
                .flatten()
                .find(|(d, _, leads)| d.id == p.id && *leads);
            let Some((d, voters, _)) = leader else {
                out.push(format!("layout: {} has no leader", p.id));
                continue;
            };
            let mut want = p.replicas.clone();
            want.sort();
            let mut got = voters.clone();
            got.sort();
            if got != want || got.len() != t.replication as usize {
                out.push(format!(
                    "layout: {} voters {got:?} but metadata lists {want:?} (replication {})",
                    p.id, t.replication
                ));
            }
            if d.epoch != p.epoch || d.range != p.range {
                out.push(format!(
                    "layout: {} leader has {} {} but metadata records {} {}",
                    p.id, d.epoch, d.range, p.epoch, p.range
                ));
            }
        }
    }
    for (id, layout) in &layouts {
        for (i, (a, _, _)) in layout.iter().enumerate() {
            for (b, _, _) in &layout[i + 1..] {
                if a.table_id == b.table_id && a.range.overlaps(&b.range) {
                    out.push(format!(
                        "layout: n{id} hosts overlapping {} {} and {} {}",
                        a.id, a.range, b.id, b.range
                    ));
                }
            }
        }
    }
    out
}
