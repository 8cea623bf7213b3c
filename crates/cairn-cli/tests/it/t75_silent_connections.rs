use crate::cluster::Cluster;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gRPC client that opens a connection and then goes silent, as one whose machine was
/// lost without closing its socket, is pinged, does not answer, and is disconnected, so
/// dead clients do not hold a node's connections and sockets for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t75_a_silent_grpc_connection_is_closed() {
    let c = Cluster::start(1).await;
    let mut s = tokio::net::TcpStream::connect(c.endpoints()).await.unwrap();
    // HTTP/2's preface and an empty SETTINGS frame, then nothing: no acknowledgement of
    // the node's SETTINGS or of its pings.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the node kept a silent connection open for 120 s"
    );
    // A client that answers the pings is served as before.
    let cl = c.client();
    cl.create_table("t", 1, vec![]).await.unwrap();
    cl.put("t", b"k", b"v").await.unwrap();
    assert_eq!(cl.get("t", b"k").await.unwrap(), Some(b"v".to_vec()));
}

/// Reads `s` until the node closes it, at most `within`: what it sent (none: still open).
async fn read_until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

/// An HTTP client that connects and says nothing, one that stops halfway through its
/// headers (a slowloris), one that stops halfway through its body, and one left idle on its
/// keep-alive connection after an answer are each disconnected after
/// `--http-read-timeout`, so they do not hold a node's sockets for good; a request sent in
/// time is answered, before and after, and the cut write wrote nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t75_silent_or_slow_http_connections_are_closed() {
    let c = Cluster::start_with(1, &["--http-read-timeout", "2"]).await;
    let addr = c.http(1).trim_start_matches("http://").to_string();
    let open = || tokio::net::TcpStream::connect(addr.clone());
    // The node closes each after about 2 s; without the timeouts it never does.
    let bound = Duration::from_secs(20);
    let cl = c.client();
    cl.create_table("t", 1, vec![]).await.unwrap();

    let mut silent = open().await.unwrap();
    let mut slow = open().await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: cairn\r\nAcc")
        .await
        .unwrap();
    let mut cut = open().await.unwrap();
    cut.write_all(
        b"PUT /v1/tables/t/keys/k HTTP/1.1\r\nHost: cairn\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let mut idle = open().await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: cairn\r\n\r\n")
        .await
        .unwrap();

    let (silent, slow, cut, idle) = tokio::join!(
        read_until_closed(&mut silent, bound),
        read_until_closed(&mut slow, bound),
        read_until_closed(&mut cut, bound),
        read_until_closed(&mut idle, bound),
    );
    assert_eq!(
        silent.as_deref(),
        Some(&b""[..]),
        "a silent connection stayed open"
    );
    assert!(
        slow.is_some(),
        "a connection with half its headers stayed open"
    );
    let cut = cut.expect("a connection with half its body stayed open");
    assert!(
        !cut.starts_with(b"HTTP/1.1 2"),
        "a write with half its body succeeded: {}",
        String::from_utf8_lossy(&cut)
    );
    assert_eq!(cl.get("t", b"k").await.unwrap(), None);
    let idle = idle.expect("an idle keep-alive connection stayed open");
    assert!(
        idle.starts_with(b"HTTP/1.1 200"),
        "the request sent in time was not answered: {}",
        String::from_utf8_lossy(&idle)
    );

    // A new connection is served as before.
    let mut fresh = open().await.unwrap();
    fresh
        .write_all(b"GET /health HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut fresh, bound).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
