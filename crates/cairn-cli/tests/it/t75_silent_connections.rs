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
