//! Simulated runs over many seeds; each must pass the checkers.
//!
//! - `CAIRN_SIM_SEED=N` runs seed N alone (to replay a failure);
//! - `CAIRN_SIM_SEEDS=K` (default 120 per test shard) and `CAIRN_SIM_FIRST=F` choose the seeds
//!   F, F+1, ... for a longer soak, e.g.
//!   `CAIRN_SIM_SEEDS=5000 cargo nextest run -p cairn-sim --release`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use cairn_sim::{SimConfig, run};
use std::path::PathBuf;
use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `seeds`; on a failure saves the history and names the command that replays it.
fn run_seeds(seeds: impl Iterator<Item = u64>) {
    let mut failures = Vec::new();
    let mut ran = 0;
    let t = Instant::now();
    for seed in seeds {
        ran += 1;
        let cfg = SimConfig::new(seed);
        let out = match run(&cfg) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("seed {seed}: {e:#}"));
                continue;
            }
        };
        if !out.violations.is_empty() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sim");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("seed-{seed}.jsonl"));
            std::fs::write(&path, &out.history).unwrap();
            failures.push(format!(
                "seed {seed}: {} violation(s), first: {}\nfaults:\n{}\nhistory: {} \
                 (check it with `cairn check {}`)",
                out.violations.len(),
                out.violations[0],
                out.faults.join("\n"),
                path.display(),
                path.display()
            ));
        } else {
            assert!(
                out.ok_ops > 100,
                "seed {seed}: only {} ok operations",
                out.ok_ops
            );
        }
    }
    eprintln!("{ran} seeds in {:.1} s", t.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {ran} seeds failed; replay one with CAIRN_SIM_SEED=<seed> cargo test -p cairn-sim:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Seeds of shard `shard` of `shards` (so nextest spreads them over the cores).
fn shard(shard: u64, shards: u64) {
    if let Some(seed) = env_u64("CAIRN_SIM_SEED") {
        if shard == 0 {
            run_seeds(std::iter::once(seed));
        }
        return;
    }
    let count = env_u64("CAIRN_SIM_SEEDS").unwrap_or(120);
    let first = env_u64("CAIRN_SIM_FIRST").unwrap_or(1);
    run_seeds((first..first + count * shards).filter(move |s| s % shards == shard));
}

#[test]
fn sim_seeds_shard_0() {
    shard(0, 2);
}

#[test]
fn sim_seeds_shard_1() {
    shard(1, 2);
}

/// The same seed gives the same history, byte for byte: a failing seed replays exactly.
#[test]
fn sim_same_seed_same_history() {
    let cfg = SimConfig::new(env_u64("CAIRN_SIM_SEED").unwrap_or(7));
    let a = run(&cfg).unwrap();
    let b = run(&cfg).unwrap();
    assert_eq!(a.faults, b.faults);
    assert!(
        a.history == b.history,
        "seed {} ran two different ways",
        cfg.seed
    );
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
