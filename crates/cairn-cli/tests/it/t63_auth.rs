//! Users, tokens and roles on a secure cluster: unauthenticated and forbidden requests are
//! refused (gRPC UNAUTHENTICATED / PERMISSION_DENIED, HTTP 401 / 403) and change nothing.

use crate::cluster::{Cluster, cert, wait_for};
use cairn_proto::v1::{PutRequest, RequestId, kv_client::KvClient};
use cairn_types::ErrorCode;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn cairn(certs: &Path, endpoints: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", endpoints])
        .arg("--certs-dir")
        .arg(certs)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// curl's HTTP status and body, trusting the cluster's CA.
fn curl(certs: &Path, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(certs.join("ca.crt"))
        .args(args)
        .output()
        .expect("curl is installed (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn code<T: std::fmt::Debug>(r: cairn_client::Result<T>) -> ErrorCode {
    r.expect_err("the request was allowed").code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t63_tokens_and_roles_allow_only_what_they_say() {
    let c = Cluster::start_secure(3).await;
    let certs = c.certs.clone().unwrap();
    let endpoints = c.endpoints();
    // root's client certificate is admin.
    let root = c.client();
    root.create_table("app_t", 3, Vec::new()).await.unwrap();
    root.create_table("other", 3, Vec::new()).await.unwrap();
    root.put("app_t", b"k", b"v0").await.unwrap();
    root.put("other", b"k", b"o0").await.unwrap();

    let ro = cairn(
        &certs,
        &endpoints,
        &["user", "add", "ro", "--role", "readonly"],
    );
    let ro = ro.trim().to_string();
    let app = cairn(
        &certs,
        &endpoints,
        &[
            "user",
            "add",
            "app",
            "--role",
            "readwrite",
            "--tables",
            "app_",
        ],
    );
    let app = app.trim().to_string();
    assert!(ro.starts_with("cairn_") && app.starts_with("cairn_") && ro != app);
    let listed = cairn(&certs, &endpoints, &["user", "list"]);
    assert!(
        listed.contains("ro") && listed.contains("readonly"),
        "{listed}"
    );
    assert!(
        listed.contains("app_*") && listed.contains("readwrite"),
        "{listed}"
    );
    assert!(
        !listed.contains(&ro) && !listed.contains(&app),
        "tokens listed: {listed}"
    );

    // No credential: refused, nothing written.
    let anon = c.token_client(None);
    assert_eq!(
        code(anon.put("app_t", b"k", b"anon").await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code(anon.get("app_t", b"k").await),
        ErrorCode::Unauthenticated
    );
    let forged = c.token_client(Some("cairn_not-a-token"));
    assert_eq!(
        code(forged.get("app_t", b"k").await),
        ErrorCode::Unauthenticated
    );

    // readonly reads everything and writes nothing.
    let reader = c.token_client(Some(&ro));
    assert_eq!(
        reader.get("other", b"k").await.unwrap().as_deref(),
        Some(&b"o0"[..])
    );
    assert_eq!(
        code(reader.put("app_t", b"k", b"ro").await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(reader.delete("app_t", b"k").await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(reader.create_table("ro_t", 3, Vec::new()).await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(code(reader.list_users().await), ErrorCode::PermissionDenied);

    // readwrite on app_ tables writes those only.
    let writer = c.token_client(Some(&app));
    writer.put("app_t", b"k", b"v1").await.unwrap();
    assert_eq!(
        code(writer.put("other", b"k", b"app").await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(writer.get("other", b"k").await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(writer.drop_table("app_t").await),
        ErrorCode::PermissionDenied
    );

    // A backup page is a read: of the tables a user may read, and only those; a cursor
    // of a readable table does not open another.
    let page = writer.export("app_t", &[], 0).await.unwrap();
    assert_eq!(page.keys, vec![b"k".to_vec()]);
    assert_eq!(page.values, vec![b"v1".to_vec()]);
    assert_eq!(
        code(writer.export("other", &[], 0).await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(writer.export("other", &page.restart, 0).await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        code(anon.export("app_t", &[], 0).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        reader.export("other", &[], 0).await.unwrap().values,
        vec![b"o0".to_vec()]
    );

    // HTTP: 401 without a token, 403 for a forbidden one, and the write did not happen.
    let key = format!("{}/v1/tables/app_t/keys/k", c.http(1));
    let (status, body) = curl(&certs, &[&key]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("UNAUTHENTICATED"), "{body}");
    let ro_auth = format!("Authorization: Bearer {ro}");
    let (status, body) = curl(&certs, &["-H", &ro_auth, &key]);
    assert_eq!((status, body.as_str()), (200, "v1"));
    // The console's way to another node's metrics (node 1 asks node 2 over mutual TLS):
    // open to a readonly token, not to a request without one.
    let other = format!("{}/v1/admin/nodes/2/metrics", c.http(1));
    let (status, body) = curl(&certs, &["-H", &ro_auth, &other]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("cairn_metadata_leader{node=\"2\"}"), "{body}");
    let (status, body) = curl(&certs, &[&other]);
    assert_eq!(status, 401, "{body}");
    // Another node's log needs admin, as /debug/logs does, however the path is spelled.
    for logs in ["logs", "%6Cogs", "lo%67s"] {
        let url = format!("{}/v1/admin/nodes/2/{logs}", c.http(1));
        let (status, body) = curl(&certs, &["-H", &ro_auth, &url]);
        assert_ne!(
            status, 200,
            "a readonly token read node 2's log as {logs}: {body}"
        );
        assert!(!body.contains("node started"), "{body}");
    }
    let url = format!("{}/v1/admin/nodes/2/logs", c.http(1));
    assert_eq!(curl(&certs, &["-H", &ro_auth, &url]).0, 403);
    let (status, body) = curl(
        &certs,
        &[
            "-H",
            &ro_auth,
            "-X",
            "PUT",
            "--data-binary",
            "http-ro",
            &key,
        ],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("PERMISSION_DENIED"), "{body}");
    let users = format!("{}/v1/admin/users", c.http(2));
    assert_eq!(curl(&certs, &["-H", &ro_auth, &users]).0, 403);
    let metrics = format!("{}/metrics", c.http(3));
    assert_eq!(curl(&certs, &[&metrics]).0, 401);
    assert_eq!(curl(&certs, &["-H", &ro_auth, &metrics]).0, 200);
    // The console of one node charts the others' metrics with its token (CORS preflight).
    let (status, _) = curl(&certs, &["-X", "OPTIONS", "-D", "-", &metrics]);
    assert_eq!(status, 204);
    // root's client certificate is admin over HTTP too: it adds a user there.
    let cert = certs.join("client.root.crt");
    let key_file = certs.join("client.root.key");
    let add_user = |body: &str| {
        curl(
            &certs,
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key_file.to_str().unwrap(),
                "-X",
                "POST",
                "--data",
                body,
                &users,
            ],
        )
    };
    // A misspelt field is refused, not dropped: "table" for "tables" would otherwise make a
    // user of every table.
    let (status, body) = add_user(r#"{"name":"typo","role":"readonly","table":"app_"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown field"), "{body}");
    let (status, body) = add_user(r#"{"name":"web","role":"readwrite","tables":"app_"}"#);
    assert_eq!(status, 201, "{body}");
    let web: serde_json::Value = serde_json::from_str(&body).unwrap();
    // A second user of the same name is refused, and the error says what to do.
    let (status, again) = add_user(r#"{"name":"web","role":"admin"}"#);
    assert_eq!(status, 409, "{again}");
    assert!(
        again.contains("ALREADY_EXISTS") && again.contains("cairn user remove web"),
        "{again}"
    );
    let web_token = web["token"].as_str().unwrap().to_string();
    let (status, body) = curl(
        &certs,
        &[
            "-H",
            &format!("Authorization: Bearer {web_token}"),
            "-X",
            "PUT",
            "--data-binary",
            "v2",
            &key,
        ],
    );
    assert!((200..300).contains(&status), "{status} {body}");
    assert_eq!(
        root.get("app_t", b"k").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(
        root.get("other", b"k").await.unwrap().as_deref(),
        Some(&b"o0"[..])
    );

    // An Idempotency-Key is the user's own: `app` retrying its write is recognised (a newer
    // value stays), but `web` sending the same request with the same key makes a write of
    // its own instead of being answered as app's retry and dropped.
    let idem = format!("{}/v1/tables/app_t/keys/idem", c.http(2));
    let put_as = |token: &str| {
        curl(
            &certs,
            &[
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                "Idempotency-Key: t63-shared-key-0001",
                "-X",
                "PUT",
                "--data-binary",
                "first",
                &idem,
            ],
        )
    };
    let (status, body) = put_as(&app);
    assert_eq!(status, 204, "{body}");
    root.put("app_t", b"idem", b"newer").await.unwrap();
    let (status, body) = put_as(&app);
    assert_eq!(status, 204, "app's retry: {body}");
    assert_eq!(
        root.get("app_t", b"idem").await.unwrap().as_deref(),
        Some(&b"newer"[..]),
        "a retry of app's write was applied again over a newer value"
    );
    let (status, body) = put_as(&web_token);
    assert_eq!(status, 204, "web's write: {body}");
    assert_eq!(
        root.get("app_t", b"idem").await.unwrap().as_deref(),
        Some(&b"first"[..]),
        "web's write under app's Idempotency-Key was taken for app's retry and not applied"
    );

    // The same over gRPC, where the client draws its own write id: web reusing app's id
    // (learned somehow) neither has its write dropped as app's duplicate nor touches app's.
    let tls = cairn_proto::tls::client_config(&certs, "nobody", b"h2").unwrap();
    let dialer: cairn_proto::net::SharedDialer = Some(Arc::new(cairn_proto::tls::TlsDialer::new(
        Arc::new(tls),
        None,
    )));
    let channel = cairn_proto::net::lazy_channel(&c.nodes[0].grpc, &dialer, |e| e).unwrap();
    let raw_put = |token: &str, value: &[u8]| {
        let mut req = tonic::Request::new(PutRequest {
            table: "app_t".into(),
            key: b"grpc-idem".to_vec(),
            value: value.to_vec(),
            request_id: Some(RequestId {
                client: 0xC0FFEE,
                seq: 1,
                first_incomplete: 1,
            }),
            timeout_ms: 0,
        });
        let auth = format!("Bearer {token}").parse().unwrap();
        req.metadata_mut().insert("authorization", auth);
        let mut kv = KvClient::new(channel.clone());
        async move { kv.put(req).await.map(drop) }
    };
    raw_put(&app, b"app").await.unwrap();
    root.put("app_t", b"grpc-idem", b"newer").await.unwrap();
    raw_put(&app, b"app").await.unwrap();
    assert_eq!(
        root.get("app_t", b"grpc-idem").await.unwrap().as_deref(),
        Some(&b"newer"[..]),
        "a retry of app's gRPC write was applied again over a newer value"
    );
    raw_put(&web_token, b"web").await.unwrap();
    assert_eq!(
        root.get("app_t", b"grpc-idem").await.unwrap().as_deref(),
        Some(&b"web"[..]),
        "web's gRPC write with app's write id was taken for app's duplicate and not applied"
    );

    // A removed user's token stops working (at once on the node that removed it, within
    // the cache's few seconds elsewhere).
    cairn(&certs, &endpoints, &["user", "remove", "ro"]);
    wait_for(
        Duration::from_secs(20),
        "the removed token to be refused",
        || async {
            (reader.get("other", b"k").await.err()?.code == ErrorCode::Unauthenticated)
                .then_some(())
        },
    )
    .await;
    let listed = cairn(&certs, &endpoints, &["user", "list"]);
    assert!(!listed.contains("readonly"), "{listed}");
}

/// `cairn --user NAME ...` with the cluster's certificates: success and all output.
fn cairn_as(certs: &Path, endpoints: &str, user: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", endpoints, "--user", user])
        .arg("--certs-dir")
        .arg(certs)
        .args(args)
        .env_remove("CAIRN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The CLI's `--user` presents that user's client certificate: refused while the user does
/// not exist, then allowed exactly what its role allows; a user without a certificate is
/// named in the error with the command that makes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t63_cli_user_presents_that_users_certificate() {
    let c = Cluster::start_secure(3).await;
    let certs = c.certs.clone().unwrap();
    let endpoints = c.endpoints();
    let root = c.client();
    root.create_table("t", 3, Vec::new()).await.unwrap();
    root.put("t", b"k", b"v0").await.unwrap();
    cert(&[
        "create-client",
        "--certs-dir",
        certs.to_str().unwrap(),
        "reader",
    ]);

    let (ok, out) = cairn_as(&certs, &endpoints, "reader", &["get", "t", "k"]);
    assert!(!ok && out.contains("does not exist"), "{out}");

    cairn(
        &certs,
        &endpoints,
        &["user", "add", "reader", "--role", "readonly"],
    );
    // A node remembers a refusal for a second before it asks the metadata group again.
    let out = wait_for(Duration::from_secs(20), "reader to be let in", || async {
        let (ok, out) = cairn_as(&certs, &endpoints, "reader", &["get", "t", "k"]);
        ok.then_some(out)
    })
    .await;
    assert!(out.contains("v0"), "{out}");
    // Every node soon knows the user (a refusal remembered by another node lasts a second).
    let out = wait_for(
        Duration::from_secs(20),
        "the put to meet the role",
        || async {
            let (ok, out) = cairn_as(&certs, &endpoints, "reader", &["put", "t", "k", "v1"]);
            (ok || !out.contains("does not exist")).then_some(out)
        },
    )
    .await;
    assert!(out.to_lowercase().contains("permission"), "{out}");
    assert_eq!(
        root.get("t", b"k").await.unwrap().as_deref(),
        Some(&b"v0"[..])
    );

    let (ok, out) = cairn_as(&certs, &endpoints, "ghost", &["get", "t", "k"]);
    assert!(!ok && out.contains("create-client"), "{out}");
}
