use crate::cluster::{Cluster, chaos_passed, history_path, spawn_chaos};
use std::process::Command;
use std::time::Duration;

/// A concurrent workload runs while a node is killed -9 and restarted; the recorded history
/// passes the checkers. Then a stale read injected into that same history is caught, so the
/// checker is known to be able to fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t90_history_under_a_crash_is_linearizable_and_checker_catches_stale_read() {
    let mut c = Cluster::start(3).await;
    let path = history_path("t90-crash.jsonl");
    let endpoints = c.endpoints();
    let mut run = spawn_chaos(
        &endpoints,
        &["--duration", "12", "--clients", "6", "--seed", "7"],
        &path,
    );
    // Fault schedule: crash node 2 after 4 s, restart it after 8 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.kill9(2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.restart(2);
    chaos_passed(&mut run, &path).await;

    // Inject a stale read: a read, after the run, of a value that was overwritten before it.
    let text = std::fs::read_to_string(&path).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ok_puts: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "ok" && e["f"] == "put")
        .collect();
    let (old, newer) = ok_puts
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            ok_puts[i + 1..]
                .iter()
                .find(|b| b["key"] == a["key"])
                .map(|b| (*a, *b))
        })
        .expect("some key was written twice");
    assert_ne!(old["value"], newer["value"]);
    let end = events
        .iter()
        .map(|e| e["time"].as_u64().unwrap())
        .max()
        .unwrap();
    let key = old["key"].as_str().unwrap();
    let mut stale = text.clone();
    for (kind, t) in [("invoke", end + 1), ("ok", end + 2)] {
        let value = if kind == "ok" {
            old["value"].clone()
        } else {
            serde_json::Value::Null
        };
        let e = serde_json::json!({"process": 9_999_999, "type": kind, "f": "get", "table": "chaos",
                                   "key": key, "value": value, "time": t});
        stale.push_str(&format!("{e}\n"));
    }
    let bad = history_path("t90-injected-stale-read.jsonl");
    std::fs::write(&bad, stale).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the checker missed an injected stale read:\n{text}"
    );
    assert!(text.contains("VIOLATION") && text.contains(key), "{text}");
}
