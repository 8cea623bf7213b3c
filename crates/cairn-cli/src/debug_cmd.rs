//! `cairn debug zip`: one file with what a bug report needs — every node's recent logs,
//! metrics and health, and the cluster's nodes, tables, controller and operations.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `cairn debug …`.
#[derive(Args, Debug)]
pub(crate) struct DebugArgs {
    #[command(subcommand)]
    cmd: DebugCmd,
}

#[derive(Subcommand, Debug)]
enum DebugCmd {
    /// Collect every node's recent logs, metrics and health and the cluster's state into
    /// one zip file for a bug report. Nodes that do not answer are listed in MANIFEST.txt.
    Zip {
        /// The file to write, e.g. cairn-debug.zip.
        output: PathBuf,
        /// How long to wait for each answer, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// The HTTP address of one node to collect everything through, e.g. the
        /// 127.0.0.1:8001 of a `kubectl port-forward`. By default each node is asked at the
        /// HTTP address it advertises, and one that cannot be reached there is asked through
        /// a node that could.
        #[arg(long, value_name = "HOST:PORT")]
        via: Option<String>,
    },
}

/// What is collected of each node: its own HTTP path, the name of the same diagnostic
/// asked through another node (`/v1/admin/nodes/{id}/{name}`), and the file in the zip.
const NODE_FILES: [(&str, &str, &str); 3] = [
    ("/health", "health", "health.json"),
    ("/metrics", "metrics", "metrics.txt"),
    ("/debug/logs", "logs", "logs.txt"),
];

/// What the zip is made of: a path inside it and its bytes.
type Entry = (String, Vec<u8>);

/// Collects the files: node by node, then the cluster's state from the first node that
/// answers. Failures are collected, not fatal: a down node is what the report is about.
struct Collector {
    http: reqwest::Client,
    entries: Vec<Entry>,
    problems: Vec<String>,
}

/// Why a file did not come.
struct Failure {
    /// Nobody answered: the connection failed or timed out, or the node asked through
    /// another did not answer it (503). The node's other files would fail the same way.
    unreached: bool,
    message: String,
}

impl Collector {
    async fn get(&self, base: &str, path: &str) -> Result<Vec<u8>, Failure> {
        let url = format!("{base}{path}");
        let unreached = |e: reqwest::Error| Failure {
            unreached: true,
            message: format!("{url}: {e}"),
        };
        let resp = self.http.get(&url).send().await.map_err(unreached)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(unreached)?;
        // /health answers 503 with a body worth keeping (so does a node's health asked
        // through another node); a 503 that says the node could not be asked is an error.
        let health = path.ends_with("/health")
            && serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v.get("status").is_some());
        if status.is_success() || health {
            Ok(body.to_vec())
        } else {
            Err(Failure {
                unreached: status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "{url}: HTTP {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ),
            })
        }
    }

    /// Fetches `path` from `base` into `name`; true if it came.
    async fn fetch(&mut self, base: &str, path: &str, name: String) -> bool {
        match self.get(base, path).await {
            Ok(body) => {
                self.entries.push((name, body));
                true
            }
            Err(e) => {
                self.problems.push(e.message);
                false
            }
        }
    }

    /// Fetches node `id`'s files from `base`: from the node itself, or through the node at
    /// `base` when `through`. Answers the files that came and why the others did not.
    async fn node_files(
        &mut self,
        base: &str,
        id: u64,
        through: bool,
    ) -> (Vec<&'static str>, Vec<String>) {
        let (mut got, mut errors) = (Vec::new(), Vec::new());
        for (own, name, file) in NODE_FILES {
            let path = if through {
                format!("/v1/admin/nodes/{id}/{name}")
            } else {
                own.to_string()
            };
            match self.get(base, &path).await {
                Ok(body) => {
                    self.entries.push((format!("nodes/{id}/{file}"), body));
                    got.push(file);
                }
                Err(e) => {
                    errors.push(e.message);
                    // A node that did not answer will not answer the rest, and each try
                    // may wait the whole timeout. (A refusal, 401 or 403, goes on: logs
                    // need admin where metrics do not.)
                    if e.unreached {
                        break;
                    }
                }
            }
        }
        (got, errors)
    }
}

/// What was collected of one node, and through which node if not from itself.
struct NodeResult {
    got: Vec<&'static str>,
    through: Option<String>,
}

/// The files that came, for the progress line.
fn said(got: &[&str]) -> String {
    if got.is_empty() {
        "no answer".to_string()
    } else {
        got.join(", ")
    }
}

fn http_base(addr: &str, scheme: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("{scheme}://{addr}")
    }
}

pub(crate) async fn run(a: DebugArgs, conn: &crate::client_cmds::Conn) -> anyhow::Result<ExitCode> {
    let DebugCmd::Zip {
        output,
        timeout,
        via,
    } = a.cmd;
    let endpoints = conn.endpoints.as_str();
    let client = conn.client()?;
    let nodes = client.nodes().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot list the cluster's nodes through {endpoints}: {e}; pass --endpoints \
             (or CAIRN_ENDPOINTS) with the gRPC address of a live node"
        )
    })?;
    let (http, scheme) = conn
        .http(Duration::from_secs(timeout.max(1)))
        .context("cannot make an HTTP client")?;
    let mut c = Collector {
        http,
        entries: Vec::new(),
        problems: Vec::new(),
    };
    let mut manifest = format!(
        "cairn debug zip\ncairn version: {}\ncollected at: {} (seconds since 1970)\nendpoints: {endpoints}\n\nnodes:\n",
        env!("CARGO_PKG_VERSION"),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let mut results: Vec<NodeResult> = Vec::with_capacity(nodes.len());
    let mut answering = Vec::new();
    if let Some(via) = &via {
        // The caller reaches this one node only: everything comes through it.
        let base = http_base(via, scheme);
        for n in &nodes {
            eprint!("node {} through {base}: ", n.id);
            let (got, errors) = c.node_files(&base, n.id, true).await;
            eprintln!("{}", said(&got));
            c.problems.extend(errors);
            results.push(NodeResult {
                got,
                through: Some(base.clone()),
            });
        }
        answering.push(base);
    } else {
        let mut unreached = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let base = http_base(&n.http_addr, scheme);
            eprint!("node {} ({base}): ", n.id);
            let (got, errors) = c.node_files(&base, n.id, false).await;
            eprintln!("{}", said(&got));
            if got.is_empty() {
                unreached.push((i, errors));
            } else {
                c.problems.extend(errors);
                answering.push(base);
            }
            results.push(NodeResult { got, through: None });
        }
        // A node whose advertised address this machine cannot reach (a Compose or
        // Kubernetes name, a private network) may still answer the nodes that answered.
        for (i, mut failures) in unreached {
            let n = &nodes[i];
            for base in &answering {
                eprint!("node {} through {base}: ", n.id);
                let (got, errors) = c.node_files(base, n.id, true).await;
                eprintln!("{}", said(&got));
                if !got.is_empty() {
                    results[i] = NodeResult {
                        got,
                        through: Some(base.clone()),
                    };
                    // Reached after all: only what this node could not fetch matters.
                    failures = errors;
                    break;
                }
                failures.extend(errors);
            }
            c.problems.extend(failures);
        }
    }
    for (n, r) in nodes.iter().zip(&results) {
        let _ = writeln!(
            manifest,
            "  node {} grpc {} http {} live {} metadata {}: {}",
            n.id,
            n.addr,
            n.http_addr,
            n.live,
            if n.metadata_leader {
                "leader"
            } else if n.metadata_member {
                "member"
            } else {
                "-"
            },
            match (&r.through, r.got.is_empty()) {
                (_, true) => "NOT REACHED".to_string(),
                (Some(b), false) => format!("{} (through {b})", r.got.join(", ")),
                (None, false) => r.got.join(", "),
            }
        );
    }

    eprint!("cluster state: ");
    let mut cluster_from = None;
    for base in &answering {
        if c.fetch(base, "/v1/admin/nodes", "cluster/nodes.json".into())
            .await
        {
            cluster_from = Some(base.clone());
            break;
        }
    }
    if let Some(base) = &cluster_from {
        for (path, file) in [
            ("/v1/admin/controller", "cluster/controller.json"),
            ("/v1/admin/operations", "cluster/operations.json"),
            ("/v1/tables", "cluster/tables.json"),
        ] {
            c.fetch(base, path, file.into()).await;
        }
        let tables: Vec<String> = c
            .entries
            .iter()
            .find(|(n, _)| n == "cluster/tables.json")
            .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| {
                v["tables"].as_array().map(|t| {
                    t.iter()
                        .filter_map(|t| t["name"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default();
        for t in &tables {
            c.fetch(
                base,
                &format!("/v1/tables/{t}"),
                format!("cluster/tables/{t}.json"),
            )
            .await;
        }
        eprintln!("from {base}, {} tables", tables.len());
        let _ = writeln!(manifest, "\ncluster state from: {base}");
    } else {
        eprintln!("no node answered");
        let _ = writeln!(manifest, "\ncluster state: NO NODE ANSWERED");
        if via.is_none() {
            // The usual cause: the nodes advertise names of a container network or a
            // cluster's DNS, which this machine cannot resolve.
            eprintln!(
                "hint: no node answered at the HTTP address it advertises; if you reach a \
                 node's HTTP port another way (a published port, kubectl port-forward), pass \
                 it as --via HOST:PORT"
            );
        }
    }
    if !c.problems.is_empty() {
        let _ = writeln!(manifest, "\nnot collected:");
        for p in &c.problems {
            let _ = writeln!(manifest, "  {p}");
        }
    }
    c.entries
        .insert(0, ("MANIFEST.txt".into(), manifest.into_bytes()));

    let files = c.entries.len();
    write_zip(&output, c.entries).with_context(|| format!("cannot write {}", output.display()))?;
    let size = std::fs::metadata(&output).map_or(0, |m| m.len());
    println!(
        "wrote {} ({files} files, {size} bytes){}",
        output.display(),
        if c.problems.is_empty() {
            String::new()
        } else {
            format!(
                "; {} items could not be collected, see MANIFEST.txt",
                c.problems.len()
            )
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `entries` under a `cairn-debug/` folder in a new zip file at `path`.
fn write_zip(path: &std::path::Path, entries: Vec<Entry>) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in entries {
        zip.start_file(format!("cairn-debug/{name}"), opts)?;
        zip.write_all(&body)?;
    }
    zip.finish()?.sync_all()?;
    Ok(())
}
