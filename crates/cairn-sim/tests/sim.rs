//! Simulated runs over many seeds; each must pass the checkers.
//!
//! Every seed runs in a process of its own (this test binary, re-run for one seed), so that
//! nothing a previous seed left in the process — tokio's global task ids decide the order
//! in which a crashed host's tasks are dropped — can change what a seed does: a seed that
//! fails in CI replays exactly alone.
//!
//! - `CAIRN_SIM_SEED=N cargo nextest run -p cairn-sim sim_seed` replays seed N (or
//!   `cargo run -p cairn-sim --example replay -- N`);
//! - `CAIRN_SIM_SEEDS=K` (default 20 per shard, four shards: 80 seeds, which keeps CI under
//!   its 30 minutes) and `CAIRN_SIM_FIRST=F` choose the seeds F, F+1, ... for a longer
//!   soak, e.g.
//!   `CAIRN_SIM_SEEDS=5000 cargo nextest run -p cairn-sim --release`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use cairn_sim::{SimConfig, run};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn sim_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sim");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One seed, in this process: `CAIRN_SIM_SEED` (default 1). On a violation the history is
/// saved and the test fails naming it. `CAIRN_SIM_HISTORY` also saves a passing history.
#[test]
fn sim_seed() {
    // `RUST_LOG=info` shows the nodes' logs (simulated time is not in the stamps).
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let seed = env_u64("CAIRN_SIM_SEED").unwrap_or(1);
    let out = run(&SimConfig::new(seed)).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
    if let Ok(path) = std::env::var("CAIRN_SIM_HISTORY") {
        std::fs::write(path, &out.history).unwrap();
    }
    if !out.violations.is_empty() {
        let path = sim_dir().join(format!("seed-{seed}.jsonl"));
        std::fs::write(&path, &out.history).unwrap();
        panic!(
            "seed {seed}: {} violation(s), first: {}\nfaults:\n{}\nhistory: {} (check it with \
             `cairn check {}`)",
            out.violations.len(),
            out.violations[0],
            out.faults.join("\n"),
            path.display(),
            path.display()
        );
    }
    if let Some(ops) = out
        .faults
        .iter()
        .find(|f| f.starts_with("operations recorded"))
    {
        eprintln!("seed {seed}: {ops}");
    }
    assert!(
        out.ok_ops > 100,
        "seed {seed}: only {} operations succeeded",
        out.ok_ops
    );
}

/// Runs `seed` in a child process; `Err` carries what it printed.
fn run_child(seed: u64, history: Option<&PathBuf>) -> Result<(), String> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["sim_seed", "--exact", "--nocapture", "--test-threads", "1"])
        .env("CAIRN_SIM_SEED", seed.to_string());
    if let Some(h) = history {
        cmd.env("CAIRN_SIM_HISTORY", h);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Shards of the seeds: 4 × 20 = the 80 seeds 1..=80 each CI run (`CAIRN_SIM_SEEDS` per shard; longer runs: the README).
const SHARDS: u64 = 4;

/// Seeds of shard `shard` of `shards` (so nextest spreads them over the cores).
fn shard(shard: u64, shards: u64) {
    if std::env::var("CAIRN_SIM_SEED").is_ok() {
        return; // `sim_seed` runs that one.
    }
    let count = env_u64("CAIRN_SIM_SEEDS").unwrap_or(20);
    let first = env_u64("CAIRN_SIM_FIRST").unwrap_or(1);
    let t = Instant::now();
    let mut failures = Vec::new();
    let seeds: Vec<u64> = (first..first + count * shards)
        .filter(|s| s % shards == shard)
        .collect();
    for &seed in &seeds {
        if let Err(out) = run_child(seed, None) {
            failures.push(format!("---- seed {seed}\n{out}"));
        }
    }
    eprintln!(
        "{} seeds in {:.1} s",
        seeds.len(),
        t.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed; replay one with CAIRN_SIM_SEED=<seed> cargo nextest run -p \
         cairn-sim sim_seed\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

// Four shards, two at a time (`.config/nextest.toml`): each seed is one single-threaded
// process, so a pair keeps both cores busy.
#[test]
fn sim_seeds_shard_0() {
    shard(0, SHARDS);
}

#[test]
fn sim_seeds_shard_1() {
    shard(1, SHARDS);
}

#[test]
fn sim_seeds_shard_2() {
    shard(2, SHARDS);
}

#[test]
fn sim_seeds_shard_3() {
    shard(3, SHARDS);
}

/// The same seed gives the same history, byte for byte: a failing seed replays exactly.
#[test]
fn sim_same_seed_same_history() {
    let seed = env_u64("CAIRN_SIM_SEED").unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_child(seed, Some(&a)).unwrap();
    run_child(seed, Some(&b)).unwrap();
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(!a.is_empty());
    assert!(a == b, "seed {seed} ran two different ways");
}

/// The checker can fail: with reads sent as stale reads while leaders are cut off, some
/// seed among the first few yields a history the checker rejects.
#[test]
fn sim_checker_catches_stale_reads() {
    let caught = (1..=20).find(|&seed| {
        let mut cfg = SimConfig::new(seed);
        cfg.stale_reads = true;
        !run(&cfg).unwrap().violations.is_empty()
    });
    assert!(
        caught.is_some(),
        "20 seeds of stale reads under partitions and no violation found"
    );
    eprintln!("stale reads caught on seed {caught:?}");
}

/// A follower cut off for several election timeouts rejoins without deposing any leader:
/// pre-vote keeps its term from growing while it is away. Without pre-vote every partition
/// stalled for seconds after each partition healed (found by `cairn chaos --nemesis
/// partition`).
#[test]
fn sim_isolated_follower_rejoins_without_elections() {
    let (node, before, after) = cairn_sim::isolated_follower_rejoins(3).unwrap();
    assert_eq!(
        before, after,
        "node n{node} came back and the leaders or their terms changed"
    );
}
