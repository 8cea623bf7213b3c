//! In-process multi-node tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use cairn_test_cluster::TestCluster;
use cairn_types::ErrorCode;
use std::time::{Duration, Instant};

async fn wait_meta_leader(c: &TestCluster, not: Option<u64>) -> u64 {
    let start = Instant::now();
    loop {
        if let Some(l) = c.meta_leader()
            && Some(l) != not
        {
            return l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no metadata leader elected within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When the metadata leader stops, the others elect a new one that knows which nodes are
/// live: a table that needs the stopped node is refused, one that fits is created, existing
/// tables keep serving, and the old leader rejoins on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t10_metadata_leader_failover() {
    let mut c = TestCluster::start(3).await.unwrap();
    let cl = c.client().unwrap();
    cl.create_table("before", 3, vec![]).await.unwrap();
    cl.put("before", b"k", b"v").await.unwrap();

    let old = wait_meta_leader(&c, None).await;
    c.stop(old).await.unwrap();
    let new = wait_meta_leader(&c, Some(old)).await;
    assert_ne!(new, old);
    let e = cl.create_table("after", 3, vec![]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotEnoughNodes, "{e}");
    let t = cl
        .create_table("after", 1, vec![b"m".to_vec()])
        .await
        .unwrap();
    assert!(
        t.partitions.iter().all(|p| !p.replicas.contains(&old)),
        "{t:?}"
    );
    cl.put("after", b"x", b"1").await.unwrap();
    cl.put("before", b"k", b"v2").await.unwrap();
    assert_eq!(cl.get("before", b"k").await.unwrap(), Some(b"v2".to_vec()));
    let names: Vec<String> = cl
        .list_tables()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["after".to_string(), "before".to_string()]);

    c.restart(old).await.unwrap();
    c.wait_live(3, Duration::from_secs(30)).await.unwrap();
    let own = c.client_of(old).unwrap();
    assert_eq!(own.get("before", b"k").await.unwrap(), Some(b"v2".to_vec()));
    cl.create_table("later", 3, vec![]).await.unwrap();
}

/// The HTTP API and the gRPC API see the same data, through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_http_and_grpc_agree() {
    let c = TestCluster::start(3).await.unwrap();
    let cl = c.client().unwrap();
    cl.create_table("h", 3, vec![]).await.unwrap();
    cl.put("h", b"from-grpc", b"1").await.unwrap();
    let addr = c.http(2).unwrap();
    // A minimal HTTP/1.1 exchange over a raw socket keeps this crate free of an HTTP client.
    let body = http_get(addr, "/v1/tables/h/keys/from-grpc").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("\r\n\r\n1"), "{body}");
    let body = http_get(addr, "/v1/tables/h/keys/absent").await;
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
