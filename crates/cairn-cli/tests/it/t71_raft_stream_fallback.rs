//! A node that serves no Raft streams (a node of an older version, met during a rolling
//! upgrade) still takes its part in every group: its peers find out from the UNIMPLEMENTED
//! answer and send it one call per Raft message instead.

use crate::cluster::{Cluster, wait_for};
use std::time::Duration;

fn key(i: usize) -> Vec<u8> {
    // Spread over the three partitions (split at "h" and "q").
    format!("{}{i:03}", ["c", "k", "t"][i % 3]).into_bytes()
}

fn value(i: usize, round: u32) -> Vec<u8> {
    format!("v{round}-{i}").into_bytes()
}

/// Node 3 is restarted as a node without Raft streams; the cluster keeps writing, and with
/// node 1 then killed every group needs node 3's vote and log to go on: each write of the
/// last round is read back, and the peers said that they fell back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t71_peers_of_a_node_without_raft_streams_fall_back_to_calls() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("s", 3, vec![b"h".to_vec(), b"q".to_vec()])
        .await
        .unwrap();
    for i in 0..30 {
        cl.put("s", &key(i), &value(i, 1)).await.unwrap();
    }

    assert!(c.stop(3), "node 3 did not stop cleanly:\n{}", c.log(3));
    c.restart_with(3, &["--fault-no-raft-stream"]);
    c.wait_live(3).await;
    for i in 0..30 {
        cl.put("s", &key(i), &value(i, 2)).await.unwrap();
    }
    let said = "serves no Raft streams";
    wait_for(
        Duration::from_secs(20),
        "a peer of node 3 to fall back to calls",
        async || (c.log(1).contains(said) || c.log(2).contains(said)).then_some(()),
    )
    .await;

    // Without node 1, nothing commits unless node 3 took the appends sent to it as calls.
    c.kill9(1);
    let cl = c.client_of(2);
    for i in 0..30 {
        wait_for(
            Duration::from_secs(30),
            "a write with node 1 down",
            async || cl.put("s", &key(i), &value(i, 3)).await.ok(),
        )
        .await;
    }
    for i in 0..30 {
        assert_eq!(
            cl.get("s", &key(i)).await.unwrap().as_deref(),
            Some(&value(i, 3)[..]),
            "key {i} after node 1 was killed\nnode 3's log:\n{}",
            c.log(3)
        );
    }
}

/// A Raft stream whose answers nobody reads (a stuck or hostile peer) is held back once a
/// node has about a thousand frames of it waiting, beyond what HTTP/2's windows hold, rather
/// than read into the node's memory for good; once its answers are read, every frame sent is
/// answered, here with the error of a frame that is not a Raft message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t71_a_stream_whose_answers_are_not_read_is_held_back() {
    use cairn_proto::v1::RaftFrame;
    use cairn_proto::v1::internal_client::InternalClient;
    use futures::{SinkExt, StreamExt};

    let c = Cluster::start(1).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.endpoints()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (mut tx, rx) = futures::channel::mpsc::channel::<RaftFrame>(1);
    let mut answers = InternalClient::new(channel.clone())
        .raft_stream(rx)
        .await
        .unwrap()
        .into_inner();
    // Bytes that do not decode as a Raft message. The client's window takes about 17,000
    // of the node's answers before the node has to hold any; 100,000 is far past that.
    let frame = |id| RaftFrame {
        id,
        payload: vec![0xff; 64],
        error: String::new(),
    };
    let mut sent = 0u64;
    let held = loop {
        if sent == 100_000 {
            break false;
        }
        match tokio::time::timeout(Duration::from_secs(5), tx.send(frame(sent))).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => panic!("the stream closed after {sent} frames: {e}"),
            Err(_) => break true,
        }
    };
    assert!(
        held,
        "the node read all {sent} frames of a stream whose answers nobody read"
    );
    assert!(sent >= 1024, "held back after only {sent} frames");
    // The peer's other calls on the same connection still go through.
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        InternalClient::new(channel.clone()).meta(cairn_proto::v1::Envelope::default()),
    )
    .await;
    assert!(
        other.is_ok(),
        "a call on the held stream's connection got no answer in 10 s"
    );

    // The frame whose send timed out may have gone too. Ending the stream ends the answers
    // once every frame read is answered.
    drop(tx);
    let mut ids = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(a) = answers.next().await {
            let a = a.unwrap();
            assert!(!a.error.is_empty(), "frame {} was not refused", a.id);
            ids.push(a.id);
        }
    })
    .await;
    assert!(read.is_ok(), "{} answers in 60 s", ids.len());
    ids.sort_unstable();
    let n = ids.len() as u64;
    assert!(
        (n == sent || n == sent + 1) && ids.iter().copied().eq(0..n),
        "{n} answers to {sent} frames, not one each"
    );
}
