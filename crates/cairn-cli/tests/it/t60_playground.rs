use crate::cluster::{free_port, reserve, wait_for};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A base port whose gRPC ports (base..base+2) and HTTP ports (base+1000..) are free now
/// and reserved for this test process.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = free_port();
        let rest = [1, 2, 1000, 1001, 1002];
        if rest
            .iter()
            .all(|&d| base.checked_add(d).is_some_and(reserve))
        {
            return base;
        }
    }
    panic!("no free port range found");
}

/// `cairn playground` starts a working cluster, the README's curl tour works against it,
/// Ctrl-C stops it, and a second run resumes the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t60_playground_and_readme_tour() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["playground", "--base-port", &base.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Playground)
            .unwrap()
    };
    let http = format!("http://127.0.0.1:{}", base + 1000);
    let h = reqwest::Client::new();
    let mut pg = start();
    let ready = |h: reqwest::Client, http: String| async move {
        wait_for(
            Duration::from_secs(60),
            "the playground to serve",
            || async {
                let r = h.get(format!("{http}/v1/admin/nodes")).send().await.ok()?;
                let v: serde_json::Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
                let live = v["nodes"]
                    .as_array()?
                    .iter()
                    .filter(|n| n["live"] == true)
                    .count();
                (live == 3).then_some(())
            },
        )
        .await
    };
    ready(h.clone(), http.clone()).await;

    // The README tour, step by step.
    let r = h
        .post(format!("{http}/v1/tables"))
        .body(r#"{"name":"demo","replication":3,"split_keys":["m"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = h
        .put(format!("{http}/v1/tables/demo/keys/hello"))
        .body("world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = h
        .put(format!("{http}/v1/tables/demo/keys/zebra"))
        .body("stripes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let other = format!("http://127.0.0.1:{}", base + 1002);
    let r = h
        .get(format!("{other}/v1/tables/demo/keys/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "world");
    // A List page stops at the partition boundary "m"; its cursor leads to the next one.
    let list = |q: String| {
        let h = h.clone();
        let http = http.clone();
        async move {
            let r = h
                .get(format!("{http}/v1/tables/demo/keys?{q}"))
                .send()
                .await
                .unwrap();
            serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap()
        }
    };
    let v = list("values=true".into()).await;
    assert_eq!(v["keys"], serde_json::json!(["hello"]));
    assert_eq!(v["values"], serde_json::json!(["world"]));
    let cursor = v["cursor"].as_str().unwrap().to_string();
    let v = list(format!("values=true&cursor={cursor}")).await;
    assert_eq!(v["keys"], serde_json::json!(["zebra"]));
    assert_eq!(v["values"], serde_json::json!(["stripes"]));
    assert_eq!(v["cursor"], serde_json::Value::Null);
    let r = h
        .get(format!("{http}/v1/tables/demo"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["partitions"].as_array().unwrap().len(), 2);
    let r = h
        .delete(format!("{http}/v1/tables/demo/keys/zebra"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let metrics = h
        .get(format!("{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("cairn_requests_total"), "{metrics}");
    // The three nodes divide the machine's cores between them.
    let cores = std::thread::available_parallelism().unwrap().get();
    let threads = format!(
        "cairn_runtime_worker_threads{{node=\"1\"}} {}\n",
        (cores / 3).max(1)
    );
    assert!(metrics.contains(&threads), "no {threads} in {metrics}");

    // The CLI against the same cluster.
    let endpoints = format!("127.0.0.1:{base},127.0.0.1:{}", base + 1);
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &endpoints, "get", "demo", "hello"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"world");
    // `list --values --json` exports losslessly: a value that is not UTF-8 (with a tab and
    // a newline in it) comes back byte for byte; a text row stays readable.
    let binary = vec![0xff, 0x00, b'\t', b'\n', b'x'];
    let r = h
        .put(format!("{http}/v1/tables/demo/keys/bin"))
        .body(binary.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "--endpoints",
            &endpoints,
            "list",
            "demo",
            "--values",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bin = rows
        .iter()
        .find(|r| r["key"] == "Ymlu")
        .unwrap_or_else(|| panic!("no base64 row for key bin in {rows:?}"));
    assert_eq!(bin["encoding"], "base64");
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD
        .decode(bin["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(value, binary);
    assert!(
        rows.contains(&serde_json::json!({"key": "hello", "value": "world"})),
        "{rows:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &endpoints, "admin", "nodes"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &endpoints, "get", "nope", "k"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TABLE_NOT_FOUND"));

    // Killing one node leaves a working cluster.
    let node3 = format!("{}/node-3", dir.path().canonicalize().unwrap().display());
    let out = Command::new("pgrep").args(["-f", &node3]).output().unwrap();
    let pid = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    let r = h
        .put(format!("{http}/v1/tables/demo/keys/after-kill"))
        .body("still")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = h
        .get(format!("{http}/v1/tables/demo/keys/after-kill"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "still");

    // Ctrl-C stops every node; the playground exits cleanly.
    assert!(pg.signal("-INT").await.success());

    // Run again: same data.
    let mut pg = start();
    ready(h.clone(), http.clone()).await;
    let r = h
        .get(format!("{http}/v1/tables/demo/keys/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "world");
    let r = h
        .get(format!("{http}/v1/tables/demo/keys/zebra"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = h
        .get(format!("{http}/v1/tables/demo/keys/after-kill"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "still");
    // Closing its terminal (SIGHUP) stops it as cleanly, nodes included.
    assert!(pg.signal("-HUP").await.success());
    assert!(
        h.get(format!("{http}/health")).send().await.is_err(),
        "a node still answers after the playground exited"
    );
}

/// The playground process; on drop (a failed test) it is asked to stop its nodes.
struct Playground(std::process::Child);

impl Playground {
    /// Sends `signal` (`-INT`: Ctrl-C) and waits, at most 60 s, for the playground to exit.
    async fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .unwrap();
        wait_for(Duration::from_secs(60), "the playground to exit", || {
            let s = self.0.try_wait().unwrap();
            async move { s }
        })
        .await
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
        }
    }
}
