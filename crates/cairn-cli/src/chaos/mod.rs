//! `cairn chaos`: a concurrent workload that records a Jepsen-style history and checks it,
//! and `cairn check`: the checkers alone, on a saved history.
//!
//! Each client runs put / get / delete on a small set of keys (registers) and List over a
//! key range, with a unique value per write. Every operation is one `invoke` line and one
//! `ok` / `fail` / `info` line; an operation whose outcome is unknown (a timeout, a lost
//! answer) is `info` and its client continues under a new process id, as Jepsen does.
//!
//! With `--spawn N` it starts its own cluster of N nodes ([`local`]) and, with `--nemesis`,
//! injects faults into it while the workload runs ([`nemesis`]).

mod local;
pub(crate) mod nemesis;

use crate::client_cmds::connect;
use anyhow::Context;
use cairn_check::workload::{Workload, final_reads, run_client, split_keys};
use cairn_check::{Event, EventType, check_lists, check_registers, parse_history};
use cairn_types::ErrorCode;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Flags of `cairn chaos`.
#[derive(Args, Debug)]
pub(crate) struct ChaosArgs {
    /// Table to use; created (3 partitions, replication 3) if missing.
    #[arg(long, default_value = "chaos")]
    table: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Keys (registers) the clients share.
    #[arg(long, default_value_t = 12)]
    keys: u32,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Most operations in all (the run stops at whichever limit comes first).
    #[arg(long, default_value_t = 20_000)]
    max_ops: u64,
    /// Timeout of one operation, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    op_timeout_ms: u64,
    /// Where to write the history (JSON lines).
    #[arg(long, default_value = "target/chaos/history.jsonl")]
    history: PathBuf,
    /// Seed of the operation mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Send reads as stale reads (for checking that the checker catches stale reads).
    #[arg(long)]
    stale_reads: bool,
    /// Start a cluster of this many nodes (at 127.0.1.1, 127.0.1.2, ...) instead of using
    /// --endpoints; their data dirs and logs go next to the history.
    #[arg(long, default_value_t = 0)]
    spawn: u64,
    /// Faults to inject into the spawned cluster, comma-separated. Network faults run in a
    /// private network namespace and need root and iptables.
    #[arg(long, value_enum, value_delimiter = ',', requires = "spawn")]
    nemesis: Vec<nemesis::Fault>,
    /// [testing only] Start the nodes with --fault-skip-fsync (they acknowledge writes they
    /// never synced): with power cuts the run must then report lost writes.
    #[arg(long, requires = "spawn")]
    fault_skip_fsync: bool,
    /// Run the spawned cluster secure: certificates made next to the history, TLS on every
    /// port, mutual TLS between nodes; the clients show root's client certificate.
    #[arg(long, requires = "spawn")]
    secure: bool,
}

impl ChaosArgs {
    /// Whether the run needs a private network namespace (entered before any thread starts).
    pub(crate) fn needs_private_network(&self) -> bool {
        self.spawn > 0 && self.nemesis.iter().any(|f| f.is_network())
    }
}

/// Flags of `cairn check`.
#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// A history written by `cairn chaos`.
    history: PathBuf,
}

/// Runs the workload (against a spawned cluster under faults, or the given endpoints),
/// writes the history, then checks it.
pub(crate) async fn chaos(
    a: ChaosArgs,
    conn: &crate::client_cmds::Conn,
) -> anyhow::Result<ExitCode> {
    if a.spawn == 0 {
        return workload(&a, &conn.endpoints, conn.certs_dir.as_deref(), None).await;
    }
    let stem = a
        .history
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "history".into());
    let dir = a.history.with_file_name(format!("{stem}-nodes"));
    eprintln!(
        "starting {} nodes in {} (logs: node-N.log)",
        a.spawn,
        dir.display()
    );
    // The controller runs in every spawned cluster, so its decisions (leader and replica
    // balance, splits, drains) meet the faults too. Adding and removing nodes also needs
    // metadata members to move to: three founders then, as an operator would run it.
    let membership = a.nemesis.contains(&nemesis::Fault::Membership);
    let founders = if membership { 3 } else { 5 };
    // Small thresholds, so that the workload (several hundred operations per second over a
    // few partitions) makes the controller split by load during the run.
    let mut extra: Vec<String> = [
        "--controller",
        "on",
        "--split-qps",
        "200",
        "--split-window",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if a.nemesis.contains(&nemesis::Fault::DiskFull) {
        extra.push("--disk-reserve".into());
        extra.push(nemesis::DISK_RESERVE.to_string());
    }
    if a.fault_skip_fsync {
        extra.push("--fault-skip-fsync".into());
    }
    let fault_fs = a.nemesis.iter().any(|f| f.is_disk());
    // Outside the nodes' dir, which a start wipes.
    let certs = a
        .secure
        .then(|| dir.with_file_name(format!("{stem}-certs")));
    if let Some(certs) = &certs {
        // Every address a node may get, with room for the nodes a membership fault adds.
        let hosts = (1..=(a.spawn + 16).min(250))
            .map(|id| local::node_ip(id).to_string())
            .collect();
        if certs.exists() {
            std::fs::remove_dir_all(certs)
                .with_context(|| format!("cannot clear {}", certs.display()))?;
        }
        crate::cert_cmd::make_local_certs(certs, hosts)?;
        extra.push("--certs-dir".into());
        extra.push(certs.display().to_string());
        eprintln!("secure cluster: certificates in {}", certs.display());
    }
    let mut cluster =
        local::LocalCluster::start(a.spawn, &dir, founders, extra, fault_fs, certs.clone()).await?;
    let endpoints = cluster.endpoints();
    let result = if a.nemesis.is_empty() {
        workload(&a, &endpoints, certs.as_deref(), None).await
    } else {
        let faults_path = a.history.with_extension("faults.log");
        let log = std::fs::File::create(&faults_path)
            .with_context(|| format!("cannot write {}", faults_path.display()))?;
        let mut nemesis = nemesis::Nemesis::new(
            a.nemesis.clone(),
            a.seed,
            log,
            Instant::now(),
            &cluster,
            &a.table,
            a.keys,
        )?;
        let r = workload(
            &a,
            &endpoints,
            certs.as_deref(),
            Some((&mut nemesis, &mut cluster)),
        )
        .await;
        eprintln!(
            "{} faults injected; their log is {}",
            nemesis.injected,
            faults_path.display()
        );
        if !nemesis.problems.is_empty() {
            for p in &nemesis.problems {
                println!("PROBLEM {p}");
            }
            println!(
                "{} problem(s): the nodes did not behave as the faults require",
                nemesis.problems.len()
            );
        }
        match r {
            Ok(_) if !nemesis.problems.is_empty() => Ok(ExitCode::FAILURE),
            r => r,
        }
    };
    // Once the faults are healed, every replica must hold the same rows: a divergence the
    // history may not show (a replica that lost an entry it acknowledged, or applied one
    // twice, while the others answered the reads).
    let result = match result {
        Ok(code) => {
            println!(
                "replicas of {}, compared as `cairn admin verify` does:",
                a.table
            );
            let eps: Vec<&str> = endpoints.split(',').collect();
            let verified = match connect(&eps, certs.as_deref(), None) {
                Ok(client) => crate::verify_cmd::verify(&client, Some(&a.table)).await,
                Err(e) => Err(e),
            };
            // Exit 2 (not every replica compared: one still catching up) is no fault, nor
            // is a cluster that could not be asked (the history above is the verdict);
            // either way the nodes are stopped below.
            Ok(match verified {
                Ok(v) if v == ExitCode::FAILURE => {
                    println!("PROBLEM replicas that applied the same entry hold different rows");
                    ExitCode::FAILURE
                }
                Ok(_) => code,
                Err(e) => {
                    println!("replicas not compared: {e:#}");
                    code
                }
            })
        }
        e => e,
    };
    cluster.stop().await;
    if matches!(&result, Ok(code) if *code != ExitCode::SUCCESS) {
        let faults: Vec<String> = a
            .nemesis
            .iter()
            .filter_map(clap::ValueEnum::to_possible_value)
            .map(|v| v.get_name().to_string())
            .collect();
        println!(
            "run the same schedule again: cairn chaos --spawn {} --nemesis {}{} --seed {} \
             --duration {} --clients {} --keys {} (fault timing is real time, so a rerun \
             repeats the choices, not the exact interleaving)",
            a.spawn,
            faults.join(","),
            if a.fault_skip_fsync {
                " --fault-skip-fsync"
            } else {
                ""
            },
            a.seed,
            a.duration,
            a.clients,
            a.keys
        );
    }
    result
}

type Faults<'a> = Option<(&'a mut nemesis::Nemesis, &'a mut local::LocalCluster)>;

async fn workload(
    a: &ChaosArgs,
    endpoints: &str,
    certs: Option<&std::path::Path>,
    faults: Faults<'_>,
) -> anyhow::Result<ExitCode> {
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let admin = connect(&endpoints, certs, None)?;
    match admin.create_table(&a.table, 3, split_keys(a.keys)).await {
        Ok(_) => {}
        Err(e) if e.code == ErrorCode::AlreadyExists => {}
        Err(e) => anyhow::bail!("cannot create table {}: {e}", a.table),
    }
    if let Some(dir) = a.history.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = std::fs::File::create(&a.history)
        .with_context(|| format!("cannot write {}", a.history.display()))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut out = std::io::BufWriter::new(file);
        let mut lines = 0;
        while let Some(e) = rx.blocking_recv() {
            serde_json::to_writer(&mut out, &e)?;
            out.write_all(b"\n")?;
            lines += 1;
        }
        out.flush()?;
        Ok(lines)
    });
    let started = tokio::time::Instant::now();
    let ctx = Arc::new(Workload {
        table: a.table.clone(),
        keys: a.keys.max(1),
        stale: a.stale_reads,
        started,
        deadline: started + Duration::from_secs(a.duration),
        budget: AtomicU64::new(a.max_ops),
        think: Duration::ZERO,
        tx: tx.clone(),
    });
    let timeout = Duration::from_millis(a.op_timeout_ms);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let client = connect(&endpoints, certs, None)?.with_timeout(timeout);
        tasks.push(tokio::spawn(run_client(
            ctx.clone(),
            client,
            c,
            a.clients.max(1),
            a.seed.wrapping_mul(1000) + c,
        )));
    }
    let progress = tokio::spawn({
        let ctx = ctx.clone();
        let max = a.max_ops;
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let left = ctx.budget.load(std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "  {:>5.1} s, {} operations",
                    ctx.started.elapsed().as_secs_f64(),
                    max - left
                );
            }
        }
    });
    let run_faults = async {
        match faults {
            Some((nemesis, cluster)) => nemesis.run(cluster, ctx.deadline.into_std()).await,
            None => Ok(()),
        }
    };
    let run_clients = async {
        for t in tasks {
            t.await?;
        }
        anyhow::Ok(())
    };
    let (f, c) = tokio::join!(run_faults, run_clients);
    progress.abort();
    c?;
    f?;
    // Final reads, after the faults have healed: every key once more, linearizably.
    let reader = connect(&endpoints, certs, None)?.with_timeout(Duration::from_secs(30));
    final_reads(&ctx, &reader)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    drop(ctx);
    drop(tx);
    let lines = writer.await??;
    eprintln!("history: {lines} events in {}", a.history.display());
    check_file(&a.history)
}

/// `cairn check`.
pub(crate) fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    check_file(&a.history)
}

fn check_file(path: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let history = parse_history(&text)
        .with_context(|| format!("{} is not a valid history", path.display()))?;
    let count = |k: EventType| history.ops.iter().filter(|o| o.outcome == k).count();
    println!(
        "{} operations: {} ok, {} fail, {} info",
        history.ops.len(),
        count(EventType::Ok),
        count(EventType::Fail),
        count(EventType::Info)
    );
    let registers = check_registers(&history);
    let lists = check_lists(&history);
    const SHOWN: usize = 20;
    let all: Vec<String> = registers
        .iter()
        .map(|v| v.to_string())
        .chain(lists.iter().map(|v| v.to_string()))
        .collect();
    for v in all.iter().take(SHOWN) {
        println!("VIOLATION {v}");
    }
    if all.len() > SHOWN {
        println!("... and {} more", all.len() - SHOWN);
    }
    if registers.is_empty() && lists.is_empty() {
        println!("linearizable: every key's history and every List check out");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} violation(s); the history is kept in {}; re-check it with `cairn check {}`",
            registers.len() + lists.len(),
            path.display(),
            path.display()
        );
        Ok(ExitCode::FAILURE)
    }
}
