//! The console at `/`, driven by a real headless Chromium (Debian's `chromium`;
//! `scripts/test.sh` installs it): it shows the cluster's nodes, its tables with their
//! partitions and leaders, and a screenshot is kept under `target/console/`.

use crate::cluster::{Cluster, wait_for};
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `args` (a fresh profile, no network beyond the
/// page), and returns its stdout; fails the test after a minute.
async fn chromium(url: &str, args: &[&str]) -> String {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/test.sh, which installs Debian's chromium"
    );
    let profile = tempfile::tempdir().unwrap();
    let run = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            // Without these Chromium tries to reach Google's hosts, which a closed test
            // network refuses.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Virtual time: the page's fetches and its first refreshes run before the dump.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium finished within a minute")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `html` without its `<script>` elements (whose templates name the same attributes).
fn rendered(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(start) = rest.find("<script") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</script>") {
            Some(end) => rest = &rest[start + end + "</script>".len()..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Every value of attribute `attr` in `html`, in order.
fn attrs<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let pat = format!("{attr}=\"");
    html.match_indices(&pat)
        .filter_map(|(i, _)| {
            let rest = &html[i + pat.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// Where the screenshot goes: the workspace's `target/console/`.
fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("console.png")
}

/// A 3-node cluster with a table of three partitions: the console served by node 2 lists the
/// three nodes as live, the table and each partition with the leader the cluster reports;
/// after node 3 is killed it shows node 3 down. A screenshot is saved under
/// `target/console/console.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t69_console_in_chromium_shows_nodes_tables_and_leaders() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("orders", 3, vec![b"h".to_vec(), b"q".to_vec()])
        .await
        .unwrap();
    for k in ["apple", "kiwi", "zucchini"] {
        cl.put("orders", k.as_bytes(), b"1").await.unwrap();
    }
    // The leaders as the cluster reports them (all three known to the metadata).
    let reported = || async {
        let t: serde_json::Value = reqwest::get(format!("{}/v1/tables/orders", c.http(1)))
            .await
            .ok()?
            .text()
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())?;
        let parts = t["partitions"].as_array()?;
        let leaders: Vec<(u64, u64)> = parts
            .iter()
            .filter_map(|p| Some((p["id"].as_u64()?, p["leader"].as_u64()?)))
            .collect();
        (leaders.len() == 3).then_some(leaders)
    };
    wait_for(Duration::from_secs(20), "three leaders", reported).await;

    // Rendered again should a leader move between the page's read and ours (the
    // controller balances leaders after a table is made).
    let url = format!("{}/", c.http(2));
    let dom = wait_for(
        Duration::from_secs(60),
        "the page to show the partitions and leaders the cluster reports",
        || async {
            let dom = rendered(&chromium(&url, &["--dump-dom"]).await);
            let rows: Vec<(u64, u64)> = attrs(&dom, "data-partition")
                .iter()
                .zip(attrs(&dom, "data-leader"))
                .filter_map(|(p, l)| Some((p.parse().ok()?, l.parse().ok()?)))
                .collect();
            let leaders = reported().await;
            let same = leaders.as_ref() == Some(&rows);
            eprintln!("page: {rows:?}; cluster: {leaders:?}");
            same.then_some(dom)
        },
    )
    .await;
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page never loaded its data:\n{dom}"
    );
    assert_eq!(attrs(&dom, "data-node"), ["1", "2", "3"], "{dom}");
    assert_eq!(attrs(&dom, "data-table"), ["orders"], "{dom}");
    assert!(
        !dom.contains("class=\"down\""),
        "no node is down yet:\n{dom}"
    );
    // Every node's metrics come through node 2, the page's node.
    assert!(
        !dom.contains("metrics not fetched"),
        "a node's metrics could not be fetched through node 2:\n{dom}"
    );

    // A killed node shows as down.
    c.kill9(3);
    wait_for(
        Duration::from_secs(30),
        "node 3 to count as down",
        || async {
            let n: serde_json::Value = reqwest::get(format!("{}/v1/admin/nodes", c.http(1)))
                .await
                .ok()?
                .text()
                .await
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())?;
            let down = n["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["id"] == 3 && n["live"] == false);
            down.then_some(())
        },
    )
    .await;
    let dom = rendered(&chromium(&url, &["--dump-dom"]).await);
    assert!(
        dom.contains("<tr data-node=\"3\" class=\"down\""),
        "node 3 is shown down:\n{dom}"
    );

    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1100",
        ],
    )
    .await;
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "a screenshot of the console at {}",
        shot.display()
    );
}
