//! Fault schedules on real processes: `cairn chaos --spawn 5 --nemesis ...` starts five
//! nodes at their own addresses, runs the workload while faults come and go, heals, reads
//! every key once more and checks the whole history. Network faults run in a private network
//! namespace with iptables, so these tests need root; without it they fail and say why.
//!
//! Histories, fault logs and node logs stay in `target/chaos/` for CI to keep.
//! `CAIRN_CHAOS_SEED` and `CAIRN_CHAOS_SECS` change the seed and the length of every schedule.

use std::path::PathBuf;
use std::process::Command;

fn chaos_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/chaos");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one schedule and asserts it passed the checkers with faults actually injected and
/// a real amount of work done.
fn schedule(name: &str, faults: &str, default_seed: u64) {
    schedule_with(name, faults, default_seed, &[]);
}

/// [`schedule`] with more `cairn chaos` flags.
fn schedule_with(name: &str, faults: &str, default_seed: u64, flags: &[&str]) {
    let seed = env_u64("CAIRN_CHAOS_SEED", default_seed);
    // 30 s in CI: five schedules run one after another, alone on the machine; longer soaks
    // run with CAIRN_CHAOS_SECS (the README).
    let secs = env_u64("CAIRN_CHAOS_SECS", 30);
    let history = chaos_dir().join(format!("{name}.jsonl"));
    eprintln!("schedule {name}: --nemesis {faults} --seed {seed} for {secs} s");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["chaos", "--spawn", "5", "--nemesis", faults])
        .args(["--seed", &seed.to_string(), "--duration", &secs.to_string()])
        .args(["--clients", "8", "--keys", "16"])
        .args(flags)
        .args(["--max-ops", &(secs * 2000).to_string()])
        .arg("--history")
        .arg(&history)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schedule {name} (seed {seed}) failed; history {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        history.display()
    );
    assert!(stdout.contains("linearizable"), "{stdout}");
    let faults_log = std::fs::read_to_string(history.with_extension("faults.log")).unwrap();
    let injected = faults_log
        .lines()
        .filter(|l| !l.contains("heal") && !l.contains("restart") && !l.contains("resume"))
        .count();
    assert!(
        injected >= (secs / 20) as usize,
        "only {injected} faults in {secs} s:\n{faults_log}"
    );
    // "N operations: A ok, ..." — the workload made progress through the faults.
    let ok: u64 = stdout
        .lines()
        .find_map(|l| l.split(" ok,").next()?.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(ok >= 20 * secs, "only {ok} operations succeeded:\n{stdout}");
}

#[test]
fn t95_crash_and_pause_schedule_is_linearizable() {
    schedule("t95-crash-pause", "crash,pause", 11);
}

#[test]
fn t96_partition_schedule_is_linearizable() {
    schedule("t96-partition", "partition", 12);
}

/// On a secure cluster: TLS between clients and nodes, mutual TLS between nodes (a node's
/// restart, a cut connection and lost packets all go through new handshakes).
#[test]
fn t97_mixed_schedule_with_packet_loss_on_a_secure_cluster_is_linearizable() {
    schedule_with(
        "t97-mixed-secure",
        "partition,loss,crash,pause",
        13,
        &["--secure"],
    );
}

/// Splits, replica moves and leader transfers through the admin API, mixed with crashes and
/// partitions.
#[test]
fn t98_layout_changes_with_crashes_and_partitions_are_linearizable() {
    schedule("t98-layout", "split,move,leader,crash,partition", 14);
}

/// Nodes added, and drained and removed for good, with the controller running, mixed with
/// crashes and layout changes.
#[test]
fn t94_membership_changes_with_crashes_are_linearizable() {
    schedule("t94-membership", "membership,crash,split,leader", 15);
}
