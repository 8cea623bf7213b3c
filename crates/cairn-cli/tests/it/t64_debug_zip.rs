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
    let (mut zip, stderr) = debug_zip(&c, dir.path(), &[]).await;
    assert!(
        stderr.contains("node 3") && stderr.contains("no answer"),
        "{stderr}"
    );

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

/// Runs `cairn debug zip` against `c` with `extra` arguments; answers the zip and stderr.
async fn debug_zip(
    c: &Cluster,
    dir: &std::path::Path,
    extra: &[&str],
) -> (zip::ZipArchive<std::fs::File>, String) {
    let out = dir.join(format!("report-{}.zip", extra.len()));
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &c.endpoints(), "debug", "zip"])
        .arg(&out)
        .args(["--timeout", "5"])
        .args(extra)
        .output();
    let run = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("debug zip finished within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("wrote"), "{stdout}");
    let zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    (zip, stderr)
}

/// Asserts the zip holds node `id`'s own files (its metrics carry its label) and that the
/// manifest says they came through another node exactly when `through`.
fn assert_node_collected(zip: &mut zip::ZipArchive<std::fs::File>, id: u64, through: bool) {
    let manifest = entry(zip, "MANIFEST.txt").unwrap();
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("node {id} ")))
        .unwrap_or_else(|| panic!("no line for node {id}:\n{manifest}"));
    assert!(!line.contains("NOT REACHED"), "{manifest}");
    assert_eq!(line.contains("(through "), through, "{manifest}");
    let metrics = entry(zip, &format!("nodes/{id}/metrics.txt")).unwrap();
    assert!(
        metrics.contains(&format!("node=\"{id}\"")),
        "node {id}'s metrics are another node's:\n{metrics}"
    );
    let logs = entry(zip, &format!("nodes/{id}/logs.txt")).unwrap();
    assert!(
        logs.lines()
            .any(|l| l.contains("node started") && l.contains(&format!("node=n{id} "))),
        "node {id}'s logs are another node's:\n{logs}"
    );
    let health: serde_json::Value =
        serde_json::from_str(&entry(zip, &format!("nodes/{id}/health.json")).unwrap()).unwrap();
    assert_eq!(health["node"], id, "{health}");
    assert_eq!(health["status"], "serving", "{health}");
}

/// A node whose advertised HTTP address the caller cannot reach (a Compose or Kubernetes
/// name; here a port nothing listens on) is collected through a node that answered; and
/// with `--via` (one port-forwarded node) every node is collected through that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t64_debug_zip_reaches_nodes_through_another_node() {
    let mut c = Cluster::start(3).await;
    let unreachable = format!("127.0.0.1:{}", crate::cluster::free_port());
    let hidden = c.join_with(&["--advertise-http", &unreachable]);
    c.wait_live(4).await;
    let dir = tempfile::tempdir().unwrap();

    let (mut zip, stderr) = debug_zip(&c, dir.path(), &[]).await;
    assert!(
        stderr.contains(&format!("node {hidden} (http://{unreachable}): no answer")),
        "{stderr}"
    );
    for id in 1..=3 {
        assert_node_collected(&mut zip, id, false);
    }
    assert_node_collected(&mut zip, hidden, true);

    let via = c.http(2);
    let (mut zip, _) = debug_zip(&c, dir.path(), &["--via", &via]).await;
    for id in 1..=hidden {
        assert_node_collected(&mut zip, id, true);
    }
    let nodes: serde_json::Value =
        serde_json::from_str(&entry(&mut zip, "cluster/nodes.json").unwrap()).unwrap();
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(4), "{nodes}");
}
