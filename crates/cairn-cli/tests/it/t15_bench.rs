//! `cairn bench` runs every workload against a real cluster and reports what it did (a
//! smoke run so the tool cannot rot; no timing is asserted).

use crate::cluster::Cluster;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_bench_runs_every_workload() {
    let c = Cluster::start(3).await;
    let endpoints = c.endpoints();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 7] = [
        ("load", &["insert"]),
        ("a", &["read", "update"]),
        ("b", &["read"]),
        ("c", &["read"]),
        ("e", &["scan"]),
        ("f", &["read", "rmw"]),
        ("write", &["update"]),
    ];
    for (i, (workload, ops)) in cases.iter().enumerate() {
        let json = dir.path().join(format!("{workload}.json"));
        let mut args = vec![
            "--endpoints",
            &endpoints,
            "bench",
            "--workload",
            workload,
            "--records",
            "200",
            "--ops",
            "400",
            "--duration",
            "20",
            "--clients",
            "4",
            "--distribution",
            if i % 2 == 0 { "uniform" } else { "zipfian" },
        ];
        // The records are there after the first run.
        if i > 0 {
            args.push("--no-load");
        }
        let (stdout, r) = bench_json(&args, &json);
        let expected_ops = if *workload == "load" { 200 } else { 400 };
        assert_eq!(r["total_ops"], expected_ops, "{workload}: {r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{workload}: {r}");
        let kinds: Vec<&str> = r["ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["op"].as_str().unwrap())
            .collect();
        for op in *ops {
            assert!(kinds.contains(op), "{workload} ran no {op}: {r}");
        }
        for o in r["ops"].as_array().unwrap() {
            assert!(o["p50_us"].as_u64().unwrap() <= o["p99_us"].as_u64().unwrap());
            assert!(o["p99_us"].as_u64().unwrap() <= o["max_us"].as_u64().unwrap());
        }
        assert!(stdout.contains("ops/s"), "{stdout}");
        assert!(r["target_ops_per_sec"].is_null(), "closed loop: {r}");
    }
    // Open loop: 40 writes at 100 a second from 2 clients are due over 0.39 s, so the run
    // takes at least that long however fast the cluster answers (each client's 20th write
    // is due 380 ms in), and the report says it kept a schedule.
    let json = dir.path().join("open-loop.json");
    let (stdout, r) = bench_json(
        &[
            "--endpoints",
            &endpoints,
            "bench",
            "--workload",
            "write",
            "--records",
            "200",
            "--no-load",
            "--ops",
            "40",
            "--duration",
            "20",
            "--clients",
            "2",
            "--rate",
            "100",
        ],
        &json,
    );
    assert_eq!(r["total_ops"], 40, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert_eq!(r["target_ops_per_sec"], 100.0, "{r}");
    assert!(
        r["elapsed_secs"].as_f64().unwrap() >= 0.38,
        "ran ahead of the schedule: {r}"
    );
    assert!(
        stdout.contains("open loop: 100 ops/s scheduled"),
        "{stdout}"
    );
    // The table's replication is the bench's to choose: more replicas than live nodes are
    // refused with the flag to change, and one replica makes a table of one.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &endpoints, "bench", "--replication", "5"])
        .args(["--table", "five", "--records", "10", "--ops", "10"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NOT_ENOUGH_NODES") || stderr.contains("live nodes"),
        "{stderr}"
    );
    assert!(stderr.contains("--replication"), "{stderr}");
    let json = dir.path().join("one-replica.json");
    bench_json(
        &[
            "--endpoints",
            &endpoints,
            "bench",
            "--replication",
            "1",
            "--table",
            "one",
            "--workload",
            "write",
            "--records",
            "20",
            "--ops",
            "20",
            "--duration",
            "20",
        ],
        &json,
    );
    let one = c.client().describe_table("one").await.unwrap();
    assert_eq!(one.replication, 1);
    assert!(one.partitions.iter().all(|p| p.replicas.len() == 1));
    // A rate that is not one is refused with what to give instead.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &endpoints, "bench", "--rate", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("operations per second"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The etcd driver is a build feature; without it the tool says how to get it.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &endpoints, "bench", "--driver", "etcd"])
        .output()
        .unwrap();
    if !cfg!(feature = "etcd") {
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--features etcd"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs `cairn ARGS --json JSON`, checks that it succeeded, and returns its output and the
/// JSON result.
fn bench_json(args: &[&str], json: &std::path::Path) -> (String, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cairn {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (stdout, r)
}
