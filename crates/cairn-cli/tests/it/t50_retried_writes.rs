use crate::cluster::Cluster;
use cairn_proto::v1::{GetRequest, PutRequest, RequestId, kv_client::KvClient};

fn put(key: &[u8], value: &[u8], seq: u64, first_incomplete: u64) -> PutRequest {
    PutRequest {
        table: "r".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        request_id: Some(RequestId {
            client: 0xC0FFEE,
            seq,
            first_incomplete,
        }),
        timeout_ms: 0,
    }
}

/// A write retried after a timeout is applied once: a late copy of an applied write,
/// arriving after a newer write to the same key, does not overwrite the newer value,
/// whichever node it arrives through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t50_late_retry_does_not_overwrite() {
    let c = Cluster::start(3).await;
    c.client().create_table("r", 3, vec![]).await.unwrap();
    let mut n1 = KvClient::connect(format!("http://{}", c.nodes[0].grpc))
        .await
        .unwrap();
    let mut n3 = KvClient::connect(format!("http://{}", c.nodes[2].grpc))
        .await
        .unwrap();

    // Write 1 is applied, but its answer is lost to the client (as after a timeout): the
    // client only knows it may or may not have happened.
    let _lost_answer = n1.put(put(b"k", b"old", 1, 1)).await;
    // The client, still waiting on write 1, issues write 2 (newer value).
    n1.put(put(b"k", b"new", 2, 1)).await.unwrap();
    // Now the client retries write 1, through another node.
    n3.put(put(b"k", b"old", 1, 1)).await.unwrap();
    let get = |mut c: KvClient<tonic::transport::Channel>| async move {
        c.get(GetRequest {
            table: "r".into(),
            key: b"k".to_vec(),
            consistency: 0,
            timeout_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
    };
    assert_eq!(get(n1.clone()).await.value, b"new");

    // Once the client reports seq 1 answered (first_incomplete = 3), an even later copy is
    // refused as stale, too.
    n1.put(put(b"k2", b"x", 3, 3)).await.unwrap();
    n3.put(put(b"k", b"old", 1, 1)).await.unwrap();
    assert_eq!(get(n3.clone()).await.value, b"new");
}

/// Sum of `cairn_duplicate_writes_total` reported by node `id`.
async fn duplicates(c: &Cluster, id: u64) -> u64 {
    let text = reqwest::get(format!("{}/metrics", c.http(id)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("cairn_duplicate_writes_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A write whose answer is lost (forced by fault injection on every node) is retried by
/// the client with the same request id and applied once: the replicas recognise the retry,
/// and a later write is not undone by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t51_client_retry_after_lost_answer_applies_once() {
    let c = Cluster::start_with(3, &["--fault-lose-write-replies", "1"]).await;
    let cl = c.client();
    cl.create_table("r", 3, vec![]).await.unwrap();
    let before: u64 = duplicates(&c, 1).await + duplicates(&c, 2).await + duplicates(&c, 3).await;
    assert_eq!(before, 0);
    // The first write through each node has its answer dropped after it was applied; the
    // client sees UNAVAILABLE, retries elsewhere, and finally gets the answer.
    cl.put("r", b"k", b"first").await.unwrap();
    cl.put("r", b"k", b"second").await.unwrap();
    cl.put("r", b"k", b"third").await.unwrap();
    assert_eq!(cl.get("r", b"k").await.unwrap(), Some(b"third".to_vec()));
    // Every replica applied each retried copy as a duplicate, not as a write.
    for id in 1..=3 {
        assert!(duplicates(&c, id).await >= 1, "node {id} saw no duplicate");
    }
}
