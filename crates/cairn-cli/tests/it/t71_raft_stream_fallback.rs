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
