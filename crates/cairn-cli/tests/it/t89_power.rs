//! Power loss, failing fsync and a full disk, on real processes: `cairn chaos --spawn 3`
//! mounts a fault filesystem (`cairn-faultfs`) under every node's data dir, so that cutting
//! a node's power loses everything it did not fsync, as a real power cut does, which kill -9
//! alone never shows (the kernel keeps a killed process's writes). The workload runs through
//! the faults; the history, with a final read of every key, is checked for linearizability,
//! so an acknowledged write that a power cut lost shows up as a violation.
//!
//! They need root and /dev/fuse. Histories, fault logs and node logs stay in
//! `target/chaos/`. `CAIRN_CHAOS_SEED` changes every schedule's seed.

use std::path::PathBuf;
use std::process::{Command, Output};

fn chaos_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/chaos");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn seed(default: u64) -> u64 {
    std::env::var("CAIRN_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `cairn chaos` on 3 spawned nodes with `faults` for `secs`, plus `extra` flags.
fn run(name: &str, faults: &str, secs: u64, seed: u64, extra: &[&str]) -> (Output, String) {
    let history = chaos_dir().join(format!("{name}.jsonl"));
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["chaos", "--spawn", "3", "--nemesis", faults])
        .args(["--seed", &seed.to_string(), "--duration", &secs.to_string()])
        .args(["--clients", "6", "--keys", "12"])
        .args(["--max-ops", &(secs * 2000).to_string()])
        .args(extra)
        .arg("--history")
        .arg(&history)
        .output()
        .unwrap();
    let faults_log =
        std::fs::read_to_string(history.with_extension("faults.log")).unwrap_or_default();
    (out, faults_log)
}

/// Asserts the run passed the checkers and made progress.
fn assert_passed(name: &str, out: &Output, faults_log: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("linearizable"),
        "{name} failed\nstdout:\n{stdout}\nfaults:\n{faults_log}\nstderr:\n{stderr}"
    );
    let ok: u64 = stdout
        .lines()
        .find_map(|l| l.split(" ok,").next()?.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(ok >= 300, "only {ok} operations succeeded:\n{stdout}");
}

/// Power cuts of every node at once while writes are in flight, at least five in a run:
/// after each restart every acknowledged write is there (the final reads and the checker
/// prove it) and the history is linearizable. (The fault log counts what each disk lost;
/// with every write fsynced before it is acknowledged that is little: what the skip-fsync
/// test below loses is what these cuts would cost a store that cheats.)
#[test]
fn t90_power_cut_of_every_node_loses_no_acknowledged_write() {
    let (out, log) = run("t90-power-all", "power-all", 60, seed(21), &[]);
    assert_passed("t90-power-all", &out, &log);
    let cuts = log
        .lines()
        .filter(|l| l.contains("power cut of every node"))
        .count();
    assert!(cuts >= 5, "only {cuts} power cuts of every node:\n{log}");
}

/// Power cuts of one node, then of another minority, under load: linearizable, nothing
/// acknowledged lost, and the nodes catch up (the run ends with every node live).
#[test]
fn t90_power_cut_of_a_minority_loses_no_acknowledged_write() {
    let (out, log) = run("t90-power-minority", "power-minority", 45, seed(22), &[]);
    assert_passed("t90-power-minority", &out, &log);
    let cuts: Vec<&str> = log.lines().filter(|l| l.contains("power cut of")).collect();
    assert!(cuts.len() >= 4, "only {} power cuts:\n{log}", cuts.len());
    assert!(log.contains("healed"), "{log}");
}

/// The same power cuts against nodes that acknowledge writes without fsync
/// (`--fault-skip-fsync`): the run must catch the loss — the checker reports violations and
/// the run fails. This is what makes the two tests above able to fail.
#[test]
fn t90_power_cuts_catch_a_store_that_skips_fsync() {
    let (out, log) = run(
        "t90-power-skip-fsync",
        "power-all",
        30,
        seed(23),
        &["--fault-skip-fsync"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the run passed although the nodes skipped fsync:\n{stdout}\nfaults:\n{log}"
    );
    assert!(
        stdout.contains("VIOLATION"),
        "the run failed but the checker reported no lost write\nstdout:\n{stdout}\nfaults:\n{log}\nstderr:\n{stderr}"
    );
}

/// An fsync that fails with EIO: the node stops by itself (it cannot know what reached the
/// disk, and a retried fsync proves nothing), never acknowledging the writes it could not
/// sync; the others keep serving; the node restarts after a power cut and catches up.
#[test]
fn t90_failed_fsync_stops_the_node_and_loses_nothing() {
    let (out, log) = run("t90-fsync-error", "fsync-error", 40, seed(24), &[]);
    assert_passed("t90-fsync-error", &out, &log);
    assert!(
        log.contains("stopped by itself after the failed fsync"),
        "no node stopped after a failed fsync:\n{log}"
    );
}

/// A full disk on every node: writes fail with DISK_FULL (HTTP 507 / RESOURCE_EXHAUSTED)
/// and change nothing, reads keep working, and writes resume once space is freed; the
/// nemesis checks each of these and the history shows nothing lost.
#[test]
fn t90_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let (out, log) = run("t90-disk-full", "disk-full", 35, seed(25), &[]);
    assert_passed("t90-disk-full", &out, &log);
    for what in [
        "a write was refused: ",
        "reads work on the full disk",
        "writes resumed",
    ] {
        assert!(log.contains(what), "no {what:?} in the fault log:\n{log}");
    }
}
