//! The container health checks (the Dockerfile's HEALTHCHECK and the compose file's
//! healthcheck, both `cairn health`) run as written against real nodes: they pass on a
//! serving node, fail on a drained one and on a stopped one, and speak TLS to a secure node
//! when CAIRN_CERTS_DIR is set.

use crate::cluster::{Cluster, wait_for};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The exec-form argv of the Dockerfile's HEALTHCHECK and of the compose healthcheck.
fn health_checks() -> Vec<(&'static str, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let cmd = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .and_then(|s| s.split_once("CMD"))
        .map(|(_, rest)| rest.lines().next().unwrap_or_default().trim().to_string())
        .expect("the Dockerfile has a HEALTHCHECK ... CMD [...]");
    let docker: Vec<String> = serde_json::from_str(&cmd).expect("HEALTHCHECK CMD in exec form");
    let compose = std::fs::read_to_string(root.join("deploy/compose.yaml")).unwrap();
    let test = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("test:"))
        .expect("the compose file has a healthcheck test");
    let compose: Vec<String> = serde_json::from_str(test.trim()).expect("test: [\"CMD\", ...]");
    assert_eq!(
        compose.first().map(String::as_str),
        Some("CMD"),
        "{compose:?}"
    );
    vec![
        ("Dockerfile HEALTHCHECK", docker),
        ("compose healthcheck", compose[1..].to_vec()),
    ]
}

/// Runs a health check as the container would, with the built binary in place of the
/// image's, the node's HTTP address given as the image does (CAIRN_HTTP on a wildcard
/// host) and `certs` as CAIRN_CERTS_DIR; its success and output.
fn run(argv: &[String], http: &str, certs: Option<&Path>) -> (bool, String) {
    assert!(
        argv.first().is_some_and(|b| b.ends_with("cairn")),
        "{argv:?}"
    );
    let port = http.rsplit_once(':').unwrap().1;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(&argv[1..])
        .env("CAIRN_HTTP", format!("0.0.0.0:{port}"))
        .env_remove("CAIRN_CERTS_DIR")
        .env_remove("CAIRN_TOKEN");
    if let Some(d) = certs {
        cmd.env("CAIRN_CERTS_DIR", d);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t72_health_checks_pass_on_serving_nodes_and_fail_on_drained_and_stopped_ones() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    let checks = health_checks();
    for (name, argv) in &checks {
        let (ok, out) = run(argv, &c.nodes[0].http, None);
        assert!(ok && out.contains("node 1: serving"), "{name}: {out}");
    }

    // A drained node answers 503 (its replicas are to move away), and the checks fail.
    cl.set_draining(2, true).await.unwrap();
    let out = wait_for(
        Duration::from_secs(20),
        "node 2 to report draining",
        || async {
            let (ok, out) = run(&checks[0].1, &c.nodes[1].http, None);
            (!ok).then_some(out)
        },
    )
    .await;
    assert!(out.contains("503") && out.contains("draining"), "{out}");
    let (ok, out) = run(&checks[1].1, &c.nodes[1].http, None);
    assert!(!ok && out.contains("draining"), "{out}");
    // Asked through node 1 (as `cairn debug zip` does when it cannot reach node 2), node 2's
    // health says the same: 503 with its reason. An unknown node is a 404.
    let r = reqwest::get(format!("{}/v1/admin/nodes/2/health", c.http(1)))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["node"], 2, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("draining")),
        "{body}"
    );
    let r = reqwest::get(format!("{}/v1/admin/nodes/9/health", c.http(1)))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    cl.set_draining(2, false).await.unwrap();
    wait_for(Duration::from_secs(20), "node 2 to serve again", || async {
        run(&checks[0].1, &c.nodes[1].http, None).0.then_some(())
    })
    .await;

    // A stopped node: nothing answers, and the check says what to look at.
    c.kill9(3);
    for (name, argv) in &checks {
        let (ok, out) = run(argv, &c.nodes[2].http, None);
        assert!(
            !ok && out.contains("cannot reach") && out.contains("--certs-dir"),
            "{name}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t72_health_checks_speak_tls_to_a_secure_node() {
    let c = Cluster::start_secure(3).await;
    let certs = c.certs.clone().unwrap();
    for (name, argv) in health_checks() {
        let (ok, out) = run(&argv, &c.nodes[0].http, Some(&certs));
        assert!(ok && out.contains("node 1: serving"), "{name}: {out}");
        // Without the certificates the check cannot speak to the node, and says why.
        let (ok, out) = run(&argv, &c.nodes[0].http, None);
        assert!(!ok && out.contains("--certs-dir"), "{name}: {out}");
    }
}
