//! `cairn playground`: a local cluster of child processes, one command.

use crate::server_cmd::Signals;
use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Flags of `cairn playground`.
#[derive(Args, Debug)]
pub(crate) struct PlaygroundArgs {
    /// Number of nodes (all are metadata members up to 5).
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// gRPC port of node 1; node i uses base+i-1, and HTTP uses base+1000+i-1.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Directory holding each node's data dir and log.
    #[arg(long, default_value = "./cairn-data")]
    data_dir: PathBuf,
    /// Run secure: make a CA, a node certificate and root's client certificate in
    /// DATA_DIR/certs (kept across runs), serve TLS, admit only this CA's nodes to internal
    /// calls and require a token or client certificate of every client.
    #[arg(long)]
    secure: bool,
}

/// A `cairn server` child for node `id` of a local cluster: data in `dir/node-{id}`, output
/// appended to `dir/node-{id}.log`. Callers add their own flags and spawn it.
pub(crate) fn server_command(
    exe: &Path,
    dir: &Path,
    id: u64,
    grpc: &str,
    http: &str,
    cluster: &str,
) -> anyhow::Result<Command> {
    let log_path = dir.join(format!("node-{id}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("server")
        .args(["--id", &id.to_string()])
        .arg("--data-dir")
        .arg(dir.join(format!("node-{id}")))
        .args([
            "--listen",
            grpc,
            "--http",
            http,
            "--initial-cluster",
            cluster,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    Ok(cmd)
}

fn spawn(
    exe: &Path,
    dir: &Path,
    id: u16,
    (grpc, http): (u16, u16),
    cluster: &str,
    certs: Option<&Path>,
    threads: usize,
) -> anyhow::Result<Child> {
    let (grpc, http) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{http}"));
    let mut cmd = server_command(exe, dir, u64::from(id), &grpc, &http, cluster)?;
    cmd.args(["--threads", &threads.to_string()]);
    if let Some(certs) = certs {
        cmd.arg("--certs-dir").arg(certs);
    }
    cmd
        // A Ctrl-C in the terminal reaches the playground, which stops the nodes itself.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start node {id} from {}", exe.display()))
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
}

pub(crate) async fn run(a: PlaygroundArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install_stopping_on_hangup();
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if u32::from(a.base_port) + 1000 + u32::from(a.nodes) > 65535 {
        bail!(
            "--base-port {} leaves no room for {} nodes' ports",
            a.base_port,
            a.nodes
        );
    }
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let dir = a.data_dir.canonicalize()?;
    let exe = std::env::current_exe().context("cannot find the cairn executable")?;
    let members = a.nodes.min(5);
    let cluster: Vec<String> = (1..=members)
        .map(|i| format!("{i}=127.0.0.1:{}", a.base_port + i - 1))
        .collect();
    let cluster = cluster.join(",");
    let resumed = dir.join("node-1").exists();
    let certs = if a.secure {
        let certs = dir.join("certs");
        crate::cert_cmd::make_local_certs(&certs, vec!["127.0.0.1".into(), "localhost".into()])?;
        Some(certs)
    } else {
        None
    };
    // The nodes share this machine's cores: dividing them between the nodes, rather than
    // each running a thread per core, saves CPU on hand-offs between threads.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / usize::from(a.nodes)).clamp(1, 1024);
    let mut children = Vec::new();
    for i in 1..=a.nodes {
        let ports = (a.base_port + i - 1, a.base_port + 1000 + i - 1);
        let certs = certs.as_deref();
        children.push((i, spawn(&exe, &dir, i, ports, &cluster, certs, threads)?));
    }
    let endpoints: Vec<String> = (1..=a.nodes)
        .map(|i| format!("127.0.0.1:{}", a.base_port + i - 1))
        .collect();
    println!(
        "{} Cairn playground: {} nodes, data in {}",
        if resumed { "Resuming" } else { "Starting" },
        a.nodes,
        dir.display()
    );
    let client = crate::client_cmds::connect(&endpoints, certs.as_deref(), None)?
        .with_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let mut ready = false;
    let mut interrupted = false;
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(nodes) = client.nodes().await {
            let live = nodes.iter().filter(|n| n.live).count();
            if live >= usize::from(a.nodes) {
                ready = true;
                break;
            }
            eprint!("\r  waiting for nodes: {live}/{} live", a.nodes);
        } else {
            eprint!(
                "\r  waiting for the metadata group to elect a leader ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
        for (id, c) in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                bail!(
                    "node {id} exited ({status}); see {}",
                    dir.join(format!("node-{id}.log")).display()
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = signals.recv() => {
                interrupted = true;
                break;
            }
        }
    }
    eprintln!();
    if !ready && !interrupted {
        eprintln!(
            "warning: not every node reported live within 60 s; see the logs in {}",
            dir.display()
        );
    }
    println!();
    let scheme = if certs.is_some() { "https" } else { "http" };
    for i in 1..=a.nodes {
        println!(
            "  node {i}: gRPC 127.0.0.1:{}  HTTP {scheme}://127.0.0.1:{}  log {}",
            a.base_port + i - 1,
            a.base_port + 1000 + i - 1,
            dir.join(format!("node-{i}.log")).display()
        );
    }
    let http = a.base_port + 1000;
    // On a secure cluster curl trusts the CA and shows root's client certificate.
    let (curl, cli) = match &certs {
        Some(c) => (
            format!(
                "curl --cacert {0}/ca.crt --cert {0}/client.root.crt --key {0}/client.root.key",
                c.display()
            ),
            format!("cairn --certs-dir {}", c.display()),
        ),
        None => ("curl".to_string(), "cairn".to_string()),
    };
    println!();
    println!("Try:");
    println!(
        "  {curl} -X POST {scheme}://127.0.0.1:{http}/v1/tables -d '{{\"name\":\"demo\",\"split_keys\":[\"m\"]}}'"
    );
    println!("  {curl} -X PUT {scheme}://127.0.0.1:{http}/v1/tables/demo/keys/hello -d 'world'");
    println!("  {curl} {scheme}://127.0.0.1:{http}/v1/tables/demo/keys/hello");
    println!(
        "  {cli} --help   (endpoints: --endpoints {})",
        endpoints.join(",")
    );
    if certs.is_some() {
        println!(
            "  {cli} user add app --role readwrite   (prints a token for --token / CAIRN_TOKEN, and for the console)"
        );
    }
    println!("Console: {scheme}://127.0.0.1:{http}/   Press Ctrl-C to stop all nodes.");

    let mut exited = vec![false; children.len()];
    while !interrupted {
        tokio::select! {
            _ = signals.recv() => interrupted = true,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (k, (id, c)) in children.iter_mut().enumerate() {
                    if !exited[k]
                        && let Ok(Some(status)) = c.try_wait() {
                            exited[k] = true;
                            eprintln!("node {id} exited ({status}); the others keep serving");
                        }
                }
            }
        }
    }
    println!("Stopping {} nodes...", children.len());
    for (_, c) in &children {
        terminate(c);
    }
    for (id, mut c) in children {
        match tokio::time::timeout(Duration::from_secs(20), c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {id} did not stop within 20 s; killing it");
                let _ = c.kill().await;
            }
        }
    }
    println!("Stopped. Run `cairn playground` again to resume with the same data.");
    Ok(ExitCode::SUCCESS)
}
