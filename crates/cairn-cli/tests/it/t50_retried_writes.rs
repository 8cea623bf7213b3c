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
