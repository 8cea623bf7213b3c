//! A secure cluster (`cairn server --certs-dir`): TLS on both ports, plaintext refused, and
//! the internal service (Raft, forwarding, snapshots, replica open) only for nodes with a
//! certificate of the cluster's CA.

use crate::cluster::{Cluster, make_certs, wait_for};
use cairn_proto::v1::Envelope;
use cairn_proto::v1::internal_client::InternalClient;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn cairn(certs: Option<&std::path::Path>, endpoints: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["--endpoints", endpoints]);
    if let Some(d) = certs {
        cmd.arg("--certs-dir").arg(d);
    }
    let out = cmd.args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// curl's exit status and output (`-k` never: the CA is given or nothing is trusted).
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test.sh installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Calls the internal service of the node at `addr` over TLS with `tls`; the gRPC code, or
/// `None` if the connection itself was refused.
async fn call_internal(addr: &str, tls: rustls::ClientConfig) -> Result<(), Option<tonic::Code>> {
    let dialer = cairn_proto::tls::TlsDialer::new(Arc::new(tls), None);
    let channel = cairn_proto::net::lazy_channel(addr, &Some(Arc::new(dialer)), |e| {
        e.connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
    })
    .unwrap();
    match InternalClient::new(channel).meta(Envelope::default()).await {
        Ok(_) => Ok(()),
        // A refused handshake surfaces as a connection error: UNAVAILABLE when the client
        // sees it, UNKNOWN or CANCELLED when TLS 1.3's server alert arrives after the client
        // finished its side and sent the request. None of these comes from the service.
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ) =>
        {
            eprintln!("connection refused: {s}");
            Err(None)
        }
        Err(s) => Err(Some(s.code())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t62_secure_cluster_refuses_plaintext_and_strangers() {
    // The nodes form their cluster over mutual TLS (wait_live asks over TLS).
    let c = Cluster::start_secure(3).await;
    let certs = c.certs.clone().unwrap();
    let endpoints = c.endpoints();
    let cl = c.client();
    cl.create_table("s", 3, Vec::new()).await.unwrap();
    cl.put("s", b"k", b"v1").await.unwrap();
    assert_eq!(
        cl.get("s", b"k").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );

    // The CLI with --certs-dir reads and writes; without it, it is refused and says so.
    let (ok, out) = cairn(Some(&certs), &endpoints, &["put", "s", "cli", "v2"]);
    assert!(ok, "{out}");
    let (ok, out) = cairn(Some(&certs), &endpoints, &["get", "s", "cli"]);
    assert!(ok && out.contains("v2"), "{out}");
    let (ok, out) = cairn(None, &endpoints, &["put", "s", "plain", "x"]);
    assert!(!ok, "a plaintext client wrote: {out}");
    // `cairn bench` takes --certs-dir like every command.
    let (ok, out) = cairn(
        Some(&certs),
        &endpoints,
        &[
            "bench",
            "--workload",
            "write",
            "--records",
            "50",
            "--no-load",
            "--ops",
            "50",
            "--clients",
            "2",
            "--duration",
            "20",
            "--table",
            "benchtls",
        ],
    );
    assert!(ok && out.contains("ops/s"), "{out}");
    assert!(
        !out.contains("errors:") || out.contains("errors: none"),
        "{out}"
    );
    assert!(cl.describe_table("benchtls").await.is_ok());

    // Plaintext gRPC from the Rust client fails too, and wrote nothing.
    let plain = cairn_client::Client::new(endpoints.split(','))
        .unwrap()
        .with_timeout(Duration::from_secs(3));
    assert!(plain.put("s", b"plain", b"x").await.is_err());
    assert_eq!(cl.get("s", b"plain").await.unwrap(), None);

    // HTTP: https with the CA works and says it is secure; plaintext and untrusted fail.
    let https = format!("{}/health", c.http(1));
    let (ok, body) = curl(&["--cacert", certs.join("ca.crt").to_str().unwrap(), &https]);
    assert!(ok && body.contains("\"secure\":true"), "{body}");
    let (ok, body) = curl(&[&https]);
    assert!(!ok, "curl trusted a certificate of an unknown CA: {body}");
    let plain_http = https.replacen("https://", "http://", 1);
    let (ok, body) = curl(&[&plain_http]);
    assert!(!ok, "plaintext HTTP was served: {body}");
    let put = format!("{}/v1/tables/s/keys/h", c.http(2));
    // A write needs a credential on a secure cluster: root's client certificate here.
    let (ok, body) = curl(&[
        "--cacert",
        certs.join("ca.crt").to_str().unwrap(),
        "--cert",
        certs.join("client.root.crt").to_str().unwrap(),
        "--key",
        certs.join("client.root.key").to_str().unwrap(),
        "-X",
        "PUT",
        "--data-binary",
        "over-https",
        "--fail-with-body",
        &put,
    ]);
    assert!(ok, "{body}");
    assert_eq!(
        cl.get("s", b"h").await.unwrap().as_deref(),
        Some(&b"over-https"[..])
    );

    // The internal service: a node's certificate is admitted (the call reaches the handler,
    // which rejects the empty request), a client's certificate is forbidden, a caller
    // without one is unauthenticated, and a node certificate of another CA does not get
    // through the handshake.
    let addr = c.nodes[0].grpc.clone();
    let node_tls = cairn_proto::tls::NodeTls::load(&certs).unwrap();
    let admitted = call_internal(&addr, (*node_tls.client).clone()).await;
    assert!(
        !matches!(
            admitted,
            Err(None | Some(tonic::Code::PermissionDenied | tonic::Code::Unauthenticated))
        ),
        "a node was refused: {admitted:?}"
    );
    let root = cairn_proto::tls::client_config(&certs, "root", b"h2").unwrap();
    assert_eq!(
        call_internal(&addr, root).await,
        Err(Some(tonic::Code::PermissionDenied))
    );
    let anonymous = cairn_proto::tls::client_config(&certs, "nobody", b"h2").unwrap();
    assert_eq!(
        call_internal(&addr, anonymous).await,
        Err(Some(tonic::Code::Unauthenticated))
    );
    // A stranger: trusts this cluster's CA but holds a node certificate of its own CA.
    let other = c.certs.as_ref().unwrap().with_file_name("other-certs");
    make_certs(&other);
    std::fs::copy(certs.join("ca.crt"), other.join("ca.crt")).unwrap();
    let stranger = cairn_proto::tls::NodeTls::load(&other).unwrap();
    assert_eq!(
        call_internal(&addr, (*stranger.client).clone()).await,
        Err(None),
        "a node certificate of another CA got through"
    );

    // A node started with the stranger's certificates asks to join for 30 s, is never let
    // in, and gives up saying why.
    let mut c = c;
    let id = c.join_with(&["--certs-dir", other.to_str().unwrap()]);
    let status = c.wait_exit(id, Duration::from_secs(60)).await;
    assert!(!status.success());
    let log = c.log(id);
    assert!(log.contains("--certs-dir"), "{log}");
    let nodes = cl.nodes().await.unwrap();
    assert!(
        nodes.iter().all(|n| n.id != id),
        "the stranger joined: {nodes:?}"
    );

    // The cluster still serves over TLS.
    wait_for(
        Duration::from_secs(20),
        "a write after all that",
        || async { cl.put("s", b"k", b"v3").await.ok() },
    )
    .await;
}

/// `/health` of node `id` of `c`, asked for by `name` (resolved to loopback): it answers
/// only while the node's certificate carries that name.
fn health_by_name(c: &Cluster, name: &str, id: u64) -> (bool, String) {
    let ca = c.certs.as_ref().unwrap().join("ca.crt");
    let p = c.http(id).rsplit(':').next().unwrap().to_string();
    curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("{name}:{p}:127.0.0.1"),
        &format!("https://{name}:{p}/health"),
    ])
}

/// Reissues the node certificate in `c`'s certificates directory with `name` added.
fn reissue_node_certificate(c: &Cluster, name: &str) {
    crate::cluster::cert(&[
        "create-node",
        "--certs-dir",
        c.certs.as_ref().unwrap().to_str().unwrap(),
        "--overwrite",
        "127.0.0.1",
        "localhost",
        name,
    ]);
}

/// `kill -HUP` makes a node read its certificates directory again: a node certificate
/// reissued with another host name is served on new connections without a restart, and a
/// directory that does not load leaves the node serving the certificate it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t62_sighup_reloads_certificates() {
    // No polling of the files: only the signal reloads them, so node 2 keeps its old one.
    let c = Cluster::start_secure_with(3, &["--certs-reload-interval", "0"]).await;
    let certs = c.certs.clone().unwrap();
    let ca = certs.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let by_name = |id: u64| health_by_name(&c, "reloaded.example", id);
    let (ok, body) = by_name(1);
    assert!(
        !ok,
        "the first certificate already names reloaded.example: {body}"
    );

    reissue_node_certificate(&c, "reloaded.example");
    let hup = |id: u64| {
        let ok = Command::new("kill")
            .args(["-HUP", &c.pid(id).to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP node {id}");
    };
    hup(1);
    wait_for(Duration::from_secs(10), "node 1 to reload", async || {
        c.log(1).contains("certificates reloaded").then_some(())
    })
    .await;
    let (ok, body) = by_name(1);
    assert!(
        ok && body.contains("\"secure\":true"),
        "after SIGHUP: {body}"
    );
    // Node 2 was not told: it still serves the certificate it started with.
    let (ok, body) = by_name(2);
    assert!(
        !ok,
        "node 2 serves the new certificate without a SIGHUP: {body}"
    );
    // The cluster still works with node 1's new certificate (new connections use it).
    let cl = c.client();
    cl.create_table("r", 3, Vec::new()).await.unwrap();
    cl.put("r", b"k", b"v").await.unwrap();
    assert_eq!(cl.get("r", b"k").await.unwrap().as_deref(), Some(&b"v"[..]));

    // A key that does not load: node 2 says so and keeps its certificate.
    std::fs::write(certs.join("node.key"), "not a key").unwrap();
    hup(2);
    wait_for(
        Duration::from_secs(10),
        "node 2 to refuse the reload",
        async || {
            c.log(2)
                .contains("cannot reload the certificates")
                .then_some(())
        },
    )
    .await;
    let (ok, body) = curl(&["--cacert", ca, &format!("{}/health", c.http(2))]);
    assert!(
        ok && body.contains("\"secure\":true"),
        "after a failed reload: {body}"
    );
    assert_eq!(
        c.client_of(2).get("r", b"k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

/// A node looks at its certificate files every `--certs-reload-interval` and reloads them
/// when they changed, with no signal (cert-manager and Kubernetes rewrite a mounted
/// Secret and tell nobody). A rotation caught half-way (a key that does not load) is
/// refused, the node keeps serving, and it reloads once the files are whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t62_changed_certificate_files_reload_without_a_signal() {
    let c = Cluster::start_secure_with(3, &["--certs-reload-interval", "1"]).await;
    let certs = c.certs.clone().unwrap();
    let by_name = |id: u64| health_by_name(&c, "rotated.example", id);
    let reissue = || reissue_node_certificate(&c, "rotated.example");
    let reloads = |id: u64| {
        c.log(id)
            .matches("the certificate files changed: certificates reloaded")
            .count()
    };
    let (ok, body) = by_name(1);
    assert!(
        !ok,
        "the first certificate already names rotated.example: {body}"
    );

    reissue();
    for id in 1..=3 {
        wait_for(
            Duration::from_secs(20),
            &format!("node {id} to serve the rewritten certificate, unsignalled"),
            async || by_name(id).0.then_some(()),
        )
        .await;
        // A poll between the writes of the new certificate and its key is refused and
        // retried, so at least one reload succeeded, maybe after a refusal.
        assert!(reloads(id) >= 1, "node {id}: {}", c.log(id));
    }
    let cl = c.client();
    cl.create_table("r", 3, Vec::new()).await.unwrap();
    cl.put("r", b"k", b"v").await.unwrap();

    // Half a rotation: the key does not load. Each node says so and keeps what it had.
    std::fs::write(certs.join("node.key"), "not a key").unwrap();
    wait_for(
        Duration::from_secs(20),
        "node 2 to refuse the broken key",
        async || {
            c.log(2)
                .contains("the certificate files changed: cannot reload the certificates")
                .then_some(())
        },
    )
    .await;
    let (ok, body) = by_name(2);
    assert!(
        ok && body.contains("\"secure\":true"),
        "node 2 after refusing the files: {body}"
    );
    // The rest of the rotation lands: the node loads the whole files.
    let before = reloads(2);
    reissue();
    wait_for(
        Duration::from_secs(20),
        "node 2 to reload the repaired files",
        async || (reloads(2) > before).then_some(()),
    )
    .await;
    let (ok, body) = by_name(2);
    assert!(ok, "node 2 after the repair: {body}");
    assert_eq!(
        c.client_of(2).get("r", b"k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}
