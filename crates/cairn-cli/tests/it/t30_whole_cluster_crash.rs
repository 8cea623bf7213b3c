use crate::cluster::Cluster;
use std::time::Duration;

/// Kill -9 every node after acknowledged writes and restart them from their data dirs:
/// every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t30_kill_all_nodes_and_restart() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("d", 3, vec![b"m".to_vec()]).await.unwrap();
    let mut expect = Vec::new();
    for i in 0..300 {
        let k = format!("{}{i:03}", if i % 2 == 0 { "a" } else { "z" });
        let v = format!("v{i}");
        cl.put("d", k.as_bytes(), v.as_bytes()).await.unwrap();
        expect.push((k, v));
    }
    cl.delete("d", b"a000").await.unwrap();
    for id in 1..=3 {
        c.kill9(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_live(3).await;
    // Every partition elects a leader after the restart before it answers: room for that
    // on a busy machine.
    let cl = c.client().with_timeout(Duration::from_secs(30));
    for (k, v) in &expect {
        let want = if k == "a000" {
            None
        } else {
            Some(v.clone().into_bytes())
        };
        assert_eq!(cl.get("d", k.as_bytes()).await.unwrap(), want, "{k}");
    }
    // And the cluster still takes writes.
    cl.put("d", b"after", b"restart").await.unwrap();
    assert_eq!(
        cl.get("d", b"after").await.unwrap(),
        Some(b"restart".to_vec())
    );
}

/// SIGTERM stops a node gracefully with exit code 0, and it restarts from its data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t31_graceful_stop_and_restart() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("g", 3, vec![]).await.unwrap();
    cl.put("g", b"k", b"v").await.unwrap();
    assert!(c.stop(2), "node 2 did not exit 0 on SIGTERM:\n{}", c.log(2));
    cl.put("g", b"k2", b"v2").await.unwrap();
    c.restart(2);
    c.wait_live(3).await;
    assert_eq!(
        c.client_of(2)
            .with_timeout(Duration::from_secs(30))
            .get("g", b"k2")
            .await
            .unwrap(),
        Some(b"v2".to_vec())
    );
}

/// A node stopped with SIGTERM first hands every group it leads, the metadata group
/// included, to a replica on another node, so a rolling restart does not make writes wait
/// out a failover; every acknowledged write stays readable through the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t31_graceful_stop_hands_leaderships_over() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("h", 3, vec![]).await.unwrap();
    for i in 0..30 {
        cl.put("h", format!("k{i:02}").as_bytes(), b"before")
            .await
            .unwrap();
    }
    let nodes = cl.nodes().await.unwrap();
    let leader = nodes
        .iter()
        .find(|n| n.metadata_leader)
        .map(|n| n.id)
        .expect("a metadata leader");
    assert!(
        c.stop(leader),
        "node {leader} did not exit 0 on SIGTERM:\n{}",
        c.log(leader)
    );
    let log = c.log(leader);
    assert!(
        log.contains("stopping: handing leaderships over")
            && log.contains("handed every leadership over"),
        "node {leader} led the metadata group but did not hand it over:\n{log}"
    );
    let other = if leader == 1 { 2 } else { 1 };
    let cl = c.client_of(other);
    let after = cl.nodes().await.unwrap();
    let new_leader = after.iter().find(|n| n.metadata_leader).map(|n| n.id);
    assert!(
        new_leader.is_some_and(|n| n != leader),
        "metadata leader after the stop: {new_leader:?} (stopped: {leader})"
    );
    cl.put("h", b"after", b"x").await.unwrap();
    for i in 0..30 {
        assert_eq!(
            cl.get("h", format!("k{i:02}").as_bytes()).await.unwrap(),
            Some(b"before".to_vec()),
            "k{i:02}"
        );
    }
    assert_eq!(cl.get("h", b"after").await.unwrap(), Some(b"x".to_vec()));
}
