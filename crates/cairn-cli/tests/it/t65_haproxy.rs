//! A real HAProxy (Debian's `haproxy`; `scripts/test.sh` installs it) in front of 3 nodes,
//! configured by `cairn gen haproxy`. Clients (the CLI, the Rust client, curl) know only the
//! balancer's address. A node killed with -9 costs them retries but no error; once it
//! restarts, the balancer's health checks take it back and it gets new connections.

use crate::cluster::{Cluster, free_port, wait_for};
use cairn_client::Client;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The HAProxy process; killed when the test ends, however it ends.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the `cairn` CLI with `--endpoints endpoints`; panics with its stderr on failure.
fn cairn(endpoints: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", endpoints])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cairn {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One curl call, each on a new connection: the HTTP status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// HAProxy's view of its servers: (backend, server) → (status, sessions so far).
async fn servers(stats: &str) -> HashMap<(String, String), (String, u64)> {
    let Ok(r) = reqwest::get(format!("http://{stats}/;csv")).await else {
        return HashMap::new();
    };
    let text = r.text().await.unwrap_or_default();
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(px), Some(sv), Some(st), Some(stot)) =
        (col("pxname"), col("svname"), col("status"), col("stot"))
    else {
        return HashMap::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > stot && f[sv].starts_with('n'))
        .map(|f| {
            (
                (f[px].to_string(), f[sv].to_string()),
                (f[st].to_string(), f[stot].parse().unwrap_or(0)),
            )
        })
        .collect()
}

/// Waits until every server of both backends has `status` ("UP" or "DOWN") for `node`, and
/// "UP" for every other node.
async fn wait_status(stats: &str, nodes: u64, node: u64, status: &str) {
    let what = format!("HAProxy to see n{node} {status} and the other nodes UP");
    wait_for(Duration::from_secs(30), &what, || async {
        let s = servers(stats).await;
        let ok = ["cairn_grpc", "cairn_http"].iter().all(|b| {
            (1..=nodes).all(|n| {
                let want = if n == node { status } else { "UP" };
                s.get(&(b.to_string(), format!("n{n}")))
                    .is_some_and(|(st, _)| st == want)
            })
        });
        ok.then_some(())
    })
    .await;
}

fn sessions(s: &HashMap<(String, String), (String, u64)>, backend: &str, node: u64) -> u64 {
    s.get(&(backend.to_string(), format!("n{node}")))
        .map_or(0, |(_, n)| *n)
}

fn start_haproxy(dir: &Path, cfg: &Path) -> Haproxy {
    let check = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(cfg)
        .output()
        .expect("haproxy is installed (scripts/test.sh installs Debian's package)");
    assert!(
        check.status.success(),
        "haproxy rejects the generated configuration: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
    Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t65_clients_behind_haproxy_ride_out_a_node_kill() {
    let mut c = Cluster::start(3).await;
    c.client().create_table("lb", 3, vec![]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let (grpc, http, stats) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    cairn(
        &c.nodes[0].grpc,
        &[
            "gen",
            "haproxy",
            "--out",
            cfg.to_str().unwrap(),
            "--grpc-bind",
            &grpc,
            "--http-bind",
            &http,
            "--stats-bind",
            &stats,
        ],
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    for n in &c.nodes {
        assert!(text.contains(&n.grpc) && text.contains(&n.http), "{text}");
    }
    let _haproxy = start_haproxy(dir.path(), &cfg);
    wait_status(&stats, 3, 1, "UP").await;

    // Every kind of client, through the balancer only.
    cairn(&grpc, &["put", "lb", "cli", "from-cli"]);
    assert_eq!(cairn(&grpc, &["get", "lb", "cli"]).trim(), "from-cli");
    let url = |k: &str| format!("http://{http}/v1/tables/lb/keys/{k}");
    assert_eq!(
        curl(&["-X", "PUT", "--data-binary", "from-curl", &url("curl")]).0,
        204
    );
    assert_eq!(curl(&[&url("curl")]), (200, "from-curl".to_string()));
    // Behind a balancer the nodes' own addresses may be out of reach: no leader routing.
    let client = Client::new([grpc.clone()])
        .unwrap()
        .with_leader_routing(false)
        .with_timeout(Duration::from_secs(20));
    assert_eq!(
        client.get("lb", b"curl").await.unwrap(),
        Some(b"from-curl".to_vec())
    );

    // A writer keeps going while node 2 dies; each write must succeed (the client may retry).
    let writer = {
        let client = Client::new([grpc.clone()])
            .unwrap()
            .with_leader_routing(false)
            .with_timeout(Duration::from_secs(20));
        tokio::spawn(async move {
            let start = Instant::now();
            let mut acked = 0u32;
            while acked < 300 && start.elapsed() < Duration::from_secs(60) {
                let key = format!("w{acked:04}");
                if let Err(e) = client.put("lb", key.as_bytes(), key.as_bytes()).await {
                    panic!("write {key} through the balancer failed: {e}");
                }
                acked += 1;
            }
            acked
        })
    };
    wait_for(Duration::from_secs(30), "the writer to start", || async {
        client.get("lb", b"w0010").await.ok().flatten().map(|_| ())
    })
    .await;
    c.kill9(2);
    // New connections right after the kill, before the health checks notice: HAProxy
    // sends some to the dead node, is refused and tries another.
    for i in 0..6 {
        let k = format!("after-kill-{i}");
        let (code, body) = curl(&["-X", "PUT", "--data-binary", &k, &url(&k)]);
        assert_eq!(code, 204, "PUT {k} through the balancer: {body}");
        assert_eq!(curl(&[&url(&k)]), (200, k.clone()));
        cairn(&grpc, &["put", "lb", &format!("cli-{k}"), &k]);
    }
    let acked = writer.await.unwrap();
    assert!(acked >= 300, "the writer stopped at {acked} writes");
    wait_status(&stats, 3, 2, "DOWN").await;
    for i in 0..acked {
        let key = format!("w{i:04}");
        assert_eq!(
            client.get("lb", key.as_bytes()).await.unwrap(),
            Some(key.clone().into_bytes()),
            "acknowledged write {key} is missing"
        );
    }

    // Back up: the balancer sends new connections to it again.
    c.restart(2);
    wait_status(&stats, 3, 2, "UP").await;
    let before = servers(&stats).await;
    for i in 0..9 {
        assert_eq!(curl(&[&url("curl")]), (200, "from-curl".to_string()));
        assert_eq!(
            cairn(&grpc, &["get", "lb", &format!("cli-after-kill-{}", i % 6)]).trim(),
            format!("after-kill-{}", i % 6)
        );
    }
    let after = servers(&stats).await;
    for backend in ["cairn_grpc", "cairn_http"] {
        assert!(
            sessions(&after, backend, 2) > sessions(&before, backend, 2),
            "the restarted node got no new {backend} connection: {after:?}"
        );
    }
}
