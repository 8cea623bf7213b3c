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

use anyhow::Context;
use cairn_check::{Event, EventType, Function, check_lists, check_registers, parse_history};
use cairn_client::{Client, ListOptions};
use cairn_types::ErrorCode;
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
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

fn key_name(i: u32) -> String {
    format!("k{i:03}")
}

fn event(process: u64, kind: EventType, f: Function, table: &str, started: Instant) -> Event {
    Event {
        process,
        kind,
        f,
        table: table.to_string(),
        key: None,
        value: None,
        start: None,
        end: None,
        keys: None,
        time: started.elapsed().as_nanos() as u64,
    }
}

/// An outcome class for a failed operation: did it certainly not happen?
fn failed(e: &cairn_client::Error, write: bool) -> EventType {
    let definite = !matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal);
    if definite || !write {
        EventType::Fail
    } else {
        EventType::Info
    }
}

struct Ctx {
    table: String,
    keys: u32,
    stale: bool,
    started: Instant,
    deadline: Instant,
    budget: std::sync::atomic::AtomicU64,
    tx: mpsc::UnboundedSender<Event>,
}

async fn run_client(ctx: Arc<Ctx>, client: Client, first_process: u64, stride: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = first_process;
    let mut n = 0u64;
    let t = &ctx.table;
    while Instant::now() < ctx.deadline {
        let left = ctx.budget.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |b| b.checked_sub(1),
        );
        if left.is_err() {
            break;
        }
        n += 1;
        let key = key_name(rng.random_range(0..ctx.keys));
        let roll: u32 = rng.random_range(0..100);
        let send = |e: Event| {
            let _ = ctx.tx.send(e);
        };
        // A completion event, stamped now.
        let complete = |e: Event| {
            send(Event {
                time: ctx.started.elapsed().as_nanos() as u64,
                ..e
            })
        };
        if roll < 40 {
            let value = format!("{process}-{n}");
            let mut inv = event(process, EventType::Invoke, Function::Put, t, ctx.started);
            inv.key = Some(key.clone());
            inv.value = Some(value.clone());
            send(inv.clone());
            let r = client.put(t, key.as_bytes(), value.as_bytes()).await;
            let kind = match &r {
                Ok(()) => EventType::Ok,
                Err(e) => failed(e, true),
            };
            complete(Event { kind, ..inv });
            if kind == EventType::Info {
                process += stride;
            }
        } else if roll < 80 {
            let mut inv = event(process, EventType::Invoke, Function::Get, t, ctx.started);
            inv.key = Some(key.clone());
            send(inv.clone());
            let r = if ctx.stale {
                client.get_stale(t, key.as_bytes()).await
            } else {
                client.get(t, key.as_bytes()).await
            };
            let done = match r {
                Ok(v) => Event {
                    kind: EventType::Ok,
                    value: v.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    ..inv.clone()
                },
                Err(e) => Event {
                    kind: failed(&e, false),
                    ..inv.clone()
                },
            };
            complete(done);
        } else if roll < 90 {
            let mut inv = event(process, EventType::Invoke, Function::Delete, t, ctx.started);
            inv.key = Some(key.clone());
            send(inv.clone());
            let kind = match client.delete(t, key.as_bytes()).await {
                Ok(()) => EventType::Ok,
                Err(e) => failed(&e, true),
            };
            complete(Event { kind, ..inv });
            if kind == EventType::Info {
                process += stride;
            }
        } else {
            let start = key_name(rng.random_range(0..ctx.keys));
            let mut inv = event(process, EventType::Invoke, Function::List, t, ctx.started);
            inv.start = Some(start.clone());
            send(inv.clone());
            let opts = ListOptions {
                start: start.clone().into_bytes(),
                limit: 1000,
                stale: ctx.stale,
                ..Default::default()
            };
            let done = match client.list(t, &opts).await {
                // A page covers [start, cursor) when it has a cursor (it stopped at a
                // partition boundary), else everything from start.
                Ok(page) => Event {
                    kind: EventType::Ok,
                    end: page
                        .cursor
                        .map(|c| String::from_utf8_lossy(&c).into_owned()),
                    keys: Some(
                        page.keys
                            .iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect(),
                    ),
                    ..inv.clone()
                },
                Err(e) => Event {
                    kind: failed(&e, false),
                    ..inv.clone()
                },
            };
            complete(done);
        }
    }
}

/// Runs the workload (against a spawned cluster under faults, or the given endpoints),
/// writes the history, then checks it.
pub(crate) async fn chaos(a: ChaosArgs, endpoints: &str) -> anyhow::Result<ExitCode> {
    if a.spawn == 0 {
        return workload(&a, endpoints, None).await;
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
    let mut cluster = local::LocalCluster::start(a.spawn, &dir).await?;
    let endpoints = cluster.endpoints();
    let result = if a.nemesis.is_empty() {
        workload(&a, &endpoints, None).await
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
        )?;
        let r = workload(&a, &endpoints, Some((&mut nemesis, &mut cluster))).await;
        eprintln!(
            "{} faults injected; their log is {}",
            nemesis.injected,
            faults_path.display()
        );
        r
    };
    cluster.stop().await;
    if matches!(&result, Ok(code) if *code != ExitCode::SUCCESS) {
        let faults: Vec<String> = a
            .nemesis
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect();
        println!(
            "run the same schedule again: cairn chaos --spawn {} --nemesis {} --seed {} \
             --duration {} --clients {} --keys {} (fault timing is real time, so a rerun \
             repeats the choices, not the exact interleaving)",
            a.spawn,
            faults.join(","),
            a.seed,
            a.duration,
            a.clients,
            a.keys
        );
    }
    result
}

type Faults<'a> = Option<(&'a mut nemesis::Nemesis, &'a mut local::LocalCluster)>;

async fn workload(a: &ChaosArgs, endpoints: &str, faults: Faults<'_>) -> anyhow::Result<ExitCode> {
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let admin = Client::new(&endpoints).map_err(|e| anyhow::anyhow!("{e}"))?;
    let splits = vec![
        key_name(a.keys / 3).into_bytes(),
        key_name(2 * a.keys / 3).into_bytes(),
    ];
    match admin.create_table(&a.table, 3, splits).await {
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
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        table: a.table.clone(),
        keys: a.keys.max(1),
        stale: a.stale_reads,
        started,
        deadline: started + Duration::from_secs(a.duration),
        budget: std::sync::atomic::AtomicU64::new(a.max_ops),
        tx: tx.clone(),
    });
    let timeout = Duration::from_millis(a.op_timeout_ms);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let client = Client::new(&endpoints)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_timeout(timeout);
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
            Some((nemesis, cluster)) => nemesis.run(cluster, ctx.deadline).await,
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
    let reader = Client::new(&endpoints)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_timeout(Duration::from_secs(30));
    let final_process = 1_000_000;
    for k in 0..ctx.keys {
        let key = key_name(k);
        let mut inv = event(
            final_process,
            EventType::Invoke,
            Function::Get,
            &a.table,
            started,
        );
        inv.key = Some(key.clone());
        let _ = tx.send(inv.clone());
        let done = match reader.get(&a.table, key.as_bytes()).await {
            Ok(v) => Event {
                kind: EventType::Ok,
                value: v.map(|b| String::from_utf8_lossy(&b).into_owned()),
                ..inv
            },
            Err(e) => anyhow::bail!(
                "final read of {key} failed after the run: {e}; the cluster did not recover"
            ),
        };
        let _ = tx.send(Event {
            time: started.elapsed().as_nanos() as u64,
            ..done
        });
    }
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
