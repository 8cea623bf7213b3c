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

/// One `Batch` call: each operation is answered on its own (a refused one fails alone), a
/// keyed answer names the partition's range and the node that led it, and an oversized
/// batch is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t30_batch_answers_each_operation_on_its_own() {
    use cairn_proto::v1::{self as pb, batch_op::Op, kv_client::KvClient};
    let c = TestCluster::start(3).await.unwrap();
    let cl = c.client().unwrap();
    cl.create_table("b", 3, vec![b"m".to_vec()]).await.unwrap();
    let mut kv = KvClient::connect(format!("http://{}", c.grpc(1).unwrap()))
        .await
        .unwrap();
    let put = |table: &str, key: &str| pb::BatchOp {
        op: Some(Op::Put(pb::PutRequest {
            table: table.into(),
            key: key.into(),
            value: b"1".to_vec(),
            ..Default::default()
        })),
    };
    let get = |key: &str| pb::BatchOp {
        op: Some(Op::Get(pb::GetRequest {
            table: "b".into(),
            key: key.into(),
            ..Default::default()
        })),
    };
    async fn run(
        kv: &mut KvClient<tonic::transport::Channel>,
        ops: Vec<pb::BatchOp>,
    ) -> Vec<pb::BatchResult> {
        let n = ops.len();
        let mut stream = kv
            .batch(pb::BatchRequest { ops })
            .await
            .unwrap()
            .into_inner();
        let mut out = vec![None; n];
        while let Some(r) = stream.message().await.unwrap() {
            let i = r.index as usize;
            assert!(out[i].is_none(), "operation {i} answered twice");
            out[i] = Some(r);
        }
        out.into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| panic!("operation {i} not answered")))
            .collect()
    }
    let code = |r: &pb::BatchResult| r.error.as_ref().map(|e| e.code.clone());

    let out = run(
        &mut kv,
        vec![
            put("b", "apple"),
            put("nope", "x"),
            put("b", "zebra"),
            pb::BatchOp { op: None },
        ],
    )
    .await;
    assert_eq!(code(&out[0]), None, "{out:?}");
    assert_eq!(code(&out[1]).as_deref(), Some("TABLE_NOT_FOUND"), "{out:?}");
    assert_eq!(code(&out[2]), None, "{out:?}");
    assert_eq!(
        code(&out[3]).as_deref(),
        Some("INVALID_ARGUMENT"),
        "{out:?}"
    );

    // The hints name each key's partition and its leader.
    let t = cl.describe_table("b").await.unwrap();
    for (r, key) in [
        (&out[0], b"apple".as_slice()),
        (&out[2], b"zebra".as_slice()),
    ] {
        let h = r
            .leader
            .as_ref()
            .unwrap_or_else(|| panic!("no hint: {r:?}"));
        let p = t
            .partitions
            .iter()
            .find(|p| p.start.as_slice() <= key && p.end.as_deref().is_none_or(|e| key < e))
            .unwrap();
        assert_eq!(h.partition, p.id, "{h:?} {p:?}");
        assert_eq!(
            (h.start.clone(), h.has_end.then(|| h.end.clone())),
            (p.start.clone(), p.end.clone())
        );
        assert!(p.replicas.contains(&h.leader), "{h:?} {p:?}");
        assert_eq!(h.leader_addr, c.grpc(h.leader).unwrap().to_string());
    }

    // Reads in a batch see the writes acknowledged before it.
    let out = run(&mut kv, vec![get("apple"), get("zebra"), get("absent")]).await;
    let seen: Vec<_> = out
        .iter()
        .map(|r| (code(r), r.found, r.value.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (None, true, b"1".to_vec()),
            (None, true, b"1".to_vec()),
            (None, false, vec![]),
        ]
    );

    let e = kv
        .batch(pb::BatchRequest {
            ops: vec![get("apple"); 1025],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}

/// A CreateTable retried with the same request id, through another node, is answered the
/// table its first attempt made; another request for the same name gets ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t31_retried_create_table_is_answered_its_table() {
    use cairn_proto::v1::{self as pb, kv_client::KvClient};
    let c = TestCluster::start(3).await.unwrap();
    let req = |request_id: u64| pb::CreateTableRequest {
        name: "r".into(),
        replication: 3,
        split_keys: vec![b"m".to_vec()],
        request_id,
    };
    let mut first = KvClient::connect(format!("http://{}", c.grpc(1).unwrap()))
        .await
        .unwrap();
    let mut other = KvClient::connect(format!("http://{}", c.grpc(2).unwrap()))
        .await
        .unwrap();
    let made = first.create_table(req(42)).await.unwrap().into_inner();
    let again = other.create_table(req(42)).await.unwrap().into_inner();
    let id = |t: &pb::CreateTableResponse| t.table.as_ref().map(|t| t.id);
    assert!(id(&made).is_some(), "{made:?}");
    assert_eq!(id(&again), id(&made), "the retry made another table");
    let refused = other.create_table(req(43)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    let tables = c.client().unwrap().list_tables().await.unwrap();
    assert_eq!(tables.len(), 1, "{tables:?}");
}

/// Polls `path` on `addr` until the answer starts with `status`, or panics after 30 s.
async fn wait_http(addr: std::net::SocketAddr, path: &str, status: &str, body_has: &str) {
    let start = Instant::now();
    loop {
        let body = http_get(addr, path).await;
        if body.starts_with(status) && body.contains(body_has) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{path} on {addr} never answered {status} with {body_has:?}; last: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/health` tells a load balancer when to leave a node alone: 503 with the reason while
/// it is drained, 200 again once it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t40_health_answers_503_while_a_node_is_drained() {
    let c = TestCluster::start(3).await.unwrap();
    let cl = c.client().unwrap();
    let addr = c.http(3).unwrap();
    wait_http(addr, "/health", "HTTP/1.1 200", "\"serving\"").await;
    cl.set_draining(3, true).await.unwrap();
    wait_http(addr, "/health", "HTTP/1.1 503", "draining").await;
    // Its peers still serve.
    wait_http(c.http(1).unwrap(), "/health", "HTTP/1.1 200", "\"serving\"").await;
    cl.set_draining(3, false).await.unwrap();
    wait_http(addr, "/health", "HTTP/1.1 200", "\"serving\"").await;
}

/// `cairn_replicas_destroying` of the node whose metrics are `text`.
fn destroying(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("cairn_replicas_destroying{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `n` nodes on a runtime of one thread of their own (as `--threads 1` runs a node), so that
/// a node blocking its worker stalls all of them, and not the test's clock. They stop when
/// the sender is dropped or sent to.
struct OneThread {
    grpc: Vec<std::net::SocketAddr>,
    http: Vec<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OneThread {
    async fn start(n: u64) -> Self {
        let (addrs_tx, addrs_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let c = TestCluster::start(n).await.unwrap();
                let grpc: Vec<_> = (1..=n).map(|i| c.grpc(i).unwrap()).collect();
                let http: Vec<_> = (1..=n).map(|i| c.http(i).unwrap()).collect();
                addrs_tx.send((grpc, http)).unwrap();
                let _ = stop_rx.await;
                drop(c);
            });
        });
        let (grpc, http) = addrs_rx.await.unwrap();
        Self {
            grpc,
            http,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn client(&self) -> cairn_client::Client {
        cairn_client::Client::new(self.grpc.iter().map(|a| a.to_string()))
            .unwrap()
            .with_timeout(Duration::from_secs(30))
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Waits until `point` was reached `n` times.
async fn wait_reached(point: &'static str, n: usize, what: &str) {
    let start = Instant::now();
    while cairn_raft::fault::reached(point) < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: reached {} of {n} times within 60 s (a node doing it on its async worker \
             stalls the others)",
            cairn_raft::fault::reached(point)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node deletes a destroyed replica's keys off its async workers: while every node is
/// held in the middle of deleting its replica of a dropped table (all three nodes on one
/// thread, as `--threads 1` runs a node), another table still takes writes and reads and
/// the nodes answer HTTP; the metric shows the deletes pending, and they finish once let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_a_node_serves_while_it_deletes_a_dropped_table() {
    const POINT: &str = "destroy-rows";
    let nodes = OneThread::start(3).await;
    let http = nodes.http.clone();
    let cl = nodes.client();
    cl.create_table("big", 3, vec![]).await.unwrap();
    for i in 0..200u32 {
        cl.put("big", format!("k{i:04}").as_bytes(), &[7u8; 256])
            .await
            .unwrap();
    }
    cl.create_table("other", 3, vec![]).await.unwrap();
    cl.put("other", b"k", b"v1").await.unwrap();

    let held = cairn_raft::fault::hold(POINT);
    cl.drop_table("big").await.unwrap();
    // Every node's reconcile destroys its replica, and each stops at the point.
    wait_reached(POINT, 3, "deleting the dropped table's replicas").await;
    // Held there, the nodes serve.
    cl.put("other", b"k", b"v2").await.unwrap();
    assert_eq!(cl.get("other", b"k").await.unwrap(), Some(b"v2".to_vec()));
    let e = cl.get("big", b"k0000").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TableNotFound, "{e}");
    for a in &http {
        let text = http_get(*a, "/metrics").await;
        assert_eq!(destroying(&text), Some(1), "node at {a}: {text}");
    }

    held.release();
    for a in &http {
        let start = Instant::now();
        while destroying(&http_get(*a, "/metrics").await) != Some(0) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "node at {a} still deleting 60 s after it was let go"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A table of the same name starts empty.
    cl.create_table("big", 3, vec![]).await.unwrap();
    assert_eq!(cl.get("big", b"k0000").await.unwrap(), None);
    assert_eq!(cl.get("other", b"k").await.unwrap(), Some(b"v2".to_vec()));
    nodes.stop();
}

/// A node installs a snapshot off its async workers: while the node receiving a moved
/// replica is held in the middle of replacing its rows (all four nodes on one thread),
/// another table takes writes and reads, and a stale read there is refused rather than
/// served from the half-copied rows; let go, the move completes and every row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t51_a_node_serves_while_it_installs_a_snapshot() {
    const POINT: &str = "install-rows";
    let nodes = OneThread::start(4).await;
    let cl = nodes.client();
    cl.create_table("big", 3, vec![]).await.unwrap();
    // More rows than an install copies in one batch, so the hold finds them half copied.
    for i in 0..1300u32 {
        cl.put("big", format!("k{i:04}").as_bytes(), &[7u8; 256])
            .await
            .unwrap();
    }
    cl.create_table("other", 3, vec![]).await.unwrap();
    cl.put("other", b"k", b"v1").await.unwrap();
    let p = cl.describe_table("big").await.unwrap().partitions[0].clone();
    let to = (1..=4).find(|n| !p.replicas.contains(n)).unwrap();
    let from = *p.replicas.iter().find(|&&n| Some(n) != p.leader).unwrap();

    let held = cairn_raft::fault::hold(POINT);
    let op = cl.move_replica(p.id, from, to).await.unwrap();
    wait_reached(POINT, 1, "installing the moved replica's snapshot").await;
    // Held there, the nodes serve.
    cl.put("other", b"k", b"v2").await.unwrap();
    assert_eq!(cl.get("other", b"k").await.unwrap(), Some(b"v2".to_vec()));
    assert_eq!(cl.get("big", b"k0123").await.unwrap(), Some(vec![7u8; 256]));
    // A stale read through the installing node never sees the half-copied rows: it is
    // refused (UNAVAILABLE) or served whole by another replica.
    let at_to = cairn_client::Client::new([nodes.grpc[to as usize - 1].to_string()])
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    match at_to.get_stale("big", b"k1299").await {
        Ok(v) => assert_eq!(v, Some(vec![7u8; 256])),
        Err(e) => assert_eq!(e.code, ErrorCode::Unavailable, "{e}"),
    }

    held.release();
    let start = Instant::now();
    loop {
        let ops = cl.operations().await.unwrap();
        let o = ops.iter().find(|o| o.id == op.id).unwrap();
        if o.state == "done" {
            break;
        }
        // A move keeps its last error while it retries; only a roll-back ends it.
        assert!(
            o.state != "rolled_back" && start.elapsed() < Duration::from_secs(90),
            "the move did not complete within 90 s of being let go: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = cl.describe_table("big").await.unwrap().partitions[0].clone();
    assert!(
        p.replicas.contains(&to) && !p.replicas.contains(&from),
        "{p:?}"
    );
    // The new replica holds every row: count the table's keys in that node's engine, and
    // read them all (through the leader).
    let table_id = cl.describe_table("big").await.unwrap().id;
    let at_to = at_to.with_timeout(Duration::from_secs(30));
    let start = Instant::now();
    loop {
        let s = at_to.engine_stats(table_id, &[p.id]).await.unwrap();
        if s.data_keys == 1300 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node {to} holds {} of the 1300 keys",
            s.data_keys
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opts = cairn_client::ListOptions {
        limit: 2000,
        ..Default::default()
    };
    let page = cl.list("big", &opts).await.unwrap();
    assert_eq!(page.keys.len(), 1300);
    assert_eq!(page.keys[123], b"k0123");
    nodes.stop();
}
