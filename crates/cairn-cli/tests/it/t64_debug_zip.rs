//! `cairn debug zip`: one file for a bug report, collected even when a node is down.

use crate::cluster::Cluster;
use std::io::Read;

/// The text of `name` inside the zip at `path`.
fn entry(zip: &mut zip::ZipArchive<std::fs::File>, name: &str) -> Option<String> {
    let mut f = zip.by_name(&format!("cairn-debug/{name}")).ok()?;
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    Some(s)
}

/// With node 3 killed, `cairn debug zip` still succeeds: it holds the live nodes' logs
/// (their startup line), metrics and health, the cluster's nodes, tables (each described),
/// controller and operations, and a manifest naming node 3 as not reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t64_debug_zip_collects_logs_metrics_and_state_despite_a_dead_node() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("dbg", 3, vec![b"m".to_vec()])
        .await
        .unwrap();
    cl.put("dbg", b"k", b"v").await.unwrap();
    c.kill9(3);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.zip");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &c.endpoints(), "debug", "zip"])
        .arg(&out)
        .args(["--timeout", "5"])
        .output();
    let run = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("debug zip finished within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("wrote"), "{stdout}");
    assert!(
        stderr.contains("node 3") && stderr.contains("no answer"),
        "{stderr}"
    );

    let mut zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let manifest = entry(&mut zip, "MANIFEST.txt").unwrap();
    assert!(
        manifest
            .lines()
            .any(|l| l.contains("node 3") && l.contains("NOT REACHED")),
        "{manifest}"
    );
    for id in [1, 2] {
        let logs = entry(&mut zip, &format!("nodes/{id}/logs.txt")).unwrap();
        assert!(logs.contains("node started"), "node {id} logs:\n{logs}");
        let metrics = entry(&mut zip, &format!("nodes/{id}/metrics.txt")).unwrap();
        assert!(metrics.contains("cairn_requests_total{"), "{metrics}");
        let health = entry(&mut zip, &format!("nodes/{id}/health.json")).unwrap();
        assert!(!health.is_empty());
    }
    assert!(entry(&mut zip, "nodes/3/logs.txt").is_none());
    let nodes: serde_json::Value =
        serde_json::from_str(&entry(&mut zip, "cluster/nodes.json").unwrap()).unwrap();
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(3), "{nodes}");
    let table: serde_json::Value =
        serde_json::from_str(&entry(&mut zip, "cluster/tables/dbg.json").unwrap()).unwrap();
    assert_eq!(
        table["partitions"].as_array().map(Vec::len),
        Some(2),
        "{table}"
    );
    for f in ["cluster/controller.json", "cluster/operations.json"] {
        assert!(entry(&mut zip, f).is_some(), "{f}");
    }
}
