use crate::cluster::{Cluster, free_port};
use cairn_types::ErrorCode;

/// `cairn server --config FILE`: the file's keys set the node's flags, a flag typed as well
/// wins over the file, and a misspelt key stops the node with a message naming the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t67_config_file_sets_flags_and_typed_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    std::fs::write(
        &file,
        "log_format = \"json\"\nmax-value-bytes = 100\nmax-key-bytes = 50\n",
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let c = Cluster::start_with(1, &["--config", file_arg, "--max-value-bytes", "300"]).await;
    let cl = c.client();
    cl.create_table("c", 1, vec![]).await.unwrap();
    // The typed --max-value-bytes 300, not the file's 100.
    cl.put("c", b"k", &[b'v'; 200]).await.unwrap();
    assert_eq!(
        cl.put("c", b"k", &[b'w'; 301]).await.unwrap_err().code,
        ErrorCode::TooLarge
    );
    // The file's max-key-bytes.
    assert_eq!(
        cl.put("c", &[b'k'; 51], b"v").await.unwrap_err().code,
        ErrorCode::TooLarge
    );
    assert_eq!(cl.get("c", b"k").await.unwrap(), Some(vec![b'v'; 200]));
    // The file's log format.
    let log = c.log(1);
    let first = log.lines().next().expect("the node logged nothing");
    let line: serde_json::Value = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("log-format from the file not applied ({e}): {first}"));
    assert!(line["level"].is_string(), "{first}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = 1\ndatadir = \"/tmp/x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["server", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a bad config file must stop the node"
    );
    assert!(
        stderr.contains("unknown key `datadir`") && stderr.contains("data-dir"),
        "{stderr}"
    );
}

/// A new node told both to form a cluster and to join one stops and says to drop one of
/// them, rather than silently ignoring `--join`; one given a key limit past what the storage
/// engine holds stops and gives the range, rather than failing on the first long key.
#[test]
fn t67_conflicting_or_impossible_flags_are_refused() {
    let stderr = refused(&["--join", "127.0.0.1:1"]);
    assert!(
        stderr.contains("--initial-cluster and --join") && stderr.contains("drop one"),
        "{stderr}"
    );
    let stderr = refused(&["--max-key-bytes", "100000"]);
    assert!(
        stderr.contains("--max-key-bytes 100000") && stderr.contains("use 1 to 65517"),
        "{stderr}"
    );
}

/// Starts a one-node cluster with `extra` flags, expects it to exit with an error within
/// 30 s, and returns its stderr.
fn refused(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["server", "--id", "1", "--listen", &grpc, "--http", &http])
        .arg("--data-dir")
        .arg(dir.path().join("node-1"))
        .args(["--initial-cluster", &format!("1={grpc}")])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node started with {extra:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

/// A node started with a soft limit of 512 open files raises it to the hard limit (here
/// 4,096), as etcd's runtime does, and warns that 4,096 is too few to be safe under a burst
/// of client connections.
#[cfg(target_os = "linux")]
#[test]
fn t67_a_node_raises_its_open_files_limit() {
    // Setting a hard limit of 4,096 needs one at least that high (or root).
    let hard: Option<u64> = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        })
        .and_then(|h| h.parse().ok());
    if hard.is_none_or(|h| h < 4096) {
        eprintln!("skipped: the hard limit on open files here is {hard:?}, below 4096");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            r#"ulimit -n 4096 && ulimit -Sn 512 && exec "$0" "$@""#,
        ])
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .args(["server", "--id", "1", "--listen", &grpc, "--http", &http])
        .arg("--data-dir")
        .arg(dir.path().join("node-1"))
        .args(["--initial-cluster", &format!("1={grpc}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("node started")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen.join("\n");
    assert!(seen.contains("node started"), "{seen}");
    let open_files = limits
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap();
    assert_eq!(open_files, "Max open files 4096 4096 files");
    assert!(
        seen.contains("at most 4096 open files") && seen.contains("ulimit -Hn"),
        "no warning about the limit: {seen}"
    );
}
