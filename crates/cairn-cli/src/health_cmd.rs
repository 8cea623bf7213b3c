//! `cairn health`: asks one node's `GET /health` whether it serves, over TLS when
//! `--certs-dir` is given, and exits 0 only if it does. Container health checks use it: a
//! plain HTTP request cannot reach a secure node, and the slim image has no curl.

use crate::client_cmds::Conn;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

/// `cairn health`.
#[derive(Args, Debug)]
pub(crate) struct HealthArgs {
    /// The node's HTTP address (its `--http`); a wildcard host (0.0.0.0, [::]) means this
    /// machine.
    #[arg(long, env = "CAIRN_HTTP", default_value = "127.0.0.1:8001")]
    http: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

/// Where to send the request for a node listening on `listen`: a wildcard host becomes
/// loopback, and a bare `:PORT` means loopback too.
fn target(listen: &str) -> String {
    let listen = listen.trim();
    let (host, port) = match listen.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => return listen.to_string(),
    };
    match host {
        "" | "0.0.0.0" => format!("127.0.0.1:{port}"),
        "[::]" | "::" => format!("[::1]:{port}"),
        _ => listen.to_string(),
    }
}

/// What the node said, in one line.
fn describe(body: &serde_json::Value) -> String {
    let node = body
        .get("node")
        .and_then(|n| n.as_u64())
        .map_or("the node".to_string(), |n| format!("node {n}"));
    let status = body.get("status").and_then(|s| s.as_str()).unwrap_or("?");
    match body.get("reason").and_then(|r| r.as_str()) {
        Some(reason) => format!("{node}: {status} ({reason})"),
        None => format!("{node}: {status}"),
    }
}

/// Runs `cairn health`.
pub(crate) async fn run(a: HealthArgs, conn: &Conn) -> anyhow::Result<ExitCode> {
    let addr = target(&a.http);
    let (http, scheme) = conn.http(Duration::from_secs(a.timeout.max(1)))?;
    let url = format!("{scheme}://{addr}/health");
    let resp = match http.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            let hint = if conn.certs_dir.is_some() {
                "is the node running, is this its --http address, and does its certificate \
                 name this host?"
            } else {
                "is the node running and is this its --http address? A secure node needs \
                 --certs-dir (or CAIRN_CERTS_DIR)"
            };
            // reqwest's own message names only the URL; the cause is further down.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            eprintln!("unhealthy: cannot reach {url}: {why}; {hint}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let code = resp.status();
    // An answer that is not JSON (not a Cairn node?) still reports its status code.
    let text = resp.text().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if code.is_success() {
        println!("{}", describe(&body));
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("unhealthy: {} answered {code}: {}", url, describe(&body));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_become_loopback() {
        assert_eq!(target("0.0.0.0:8001"), "127.0.0.1:8001");
        assert_eq!(target(":8001"), "127.0.0.1:8001");
        assert_eq!(target("[::]:8001"), "[::1]:8001");
        assert_eq!(target("node1.example.com:8001"), "node1.example.com:8001");
        assert_eq!(target(" 127.0.0.2:9 "), "127.0.0.2:9");
    }

    #[test]
    fn the_reason_of_a_node_not_serving_is_shown() {
        let body = serde_json::json!({"status": "not serving", "node": 2, "reason": "draining"});
        assert_eq!(describe(&body), "node 2: not serving (draining)");
        let body = serde_json::json!({"status": "serving", "node": 1});
        assert_eq!(describe(&body), "node 1: serving");
    }
}
