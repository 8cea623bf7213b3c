use crate::cluster::{Cluster, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

/// A node that was down while the group took several snapshots catches up: its stale
/// reads then return the latest values, deletes included. (openraft keeps the log a down
/// follower still needs, so it catches up from the log; snapshot transfer and install are
/// covered by cairn-raft's snapshot round-trip test and openraft's storage suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t70_lagging_replica_catches_up_across_snapshots() {
    let mut c = Cluster::start_with(3, &["--snapshot-logs", "50"]).await;
    let cl = c.client();
    cl.create_table("s", 3, vec![]).await.unwrap();
    cl.put("s", b"gone", b"soon").await.unwrap();
    let leader = c.leader_of("s").await;
    let down = c.other_than(leader);
    c.kill9(down);
    let mut latest = BTreeMap::new();
    for i in 0..400 {
        let (k, v) = (format!("k{:02}", i % 40), format!("v{i}"));
        cl.put("s", k.as_bytes(), v.as_bytes()).await.unwrap();
        latest.insert(k, v);
    }
    cl.delete("s", b"gone").await.unwrap();
    c.restart(down);
    let own = c.client_of(down);
    for (k, v) in &latest {
        wait_for(
            Duration::from_secs(30),
            "the restarted node to catch up",
            || async {
                let got = own.get_stale("s", k.as_bytes()).await.ok()?;
                (got.as_deref() == Some(v.as_bytes())).then_some(())
            },
        )
        .await;
    }
    assert_eq!(own.get_stale("s", b"gone").await.unwrap(), None);
}

/// A node added with `--join` registers, is placed replicas of new tables, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t71_join_a_running_cluster() {
    let mut c = Cluster::start(3).await;
    let id = c.join();
    c.wait_live(4).await;
    let cl = c.client();
    let t = cl
        .create_table("j", 3, vec![b"f".to_vec(), b"m".to_vec(), b"t".to_vec()])
        .await
        .unwrap();
    let on_new = t
        .partitions
        .iter()
        .filter(|p| p.replicas.contains(&id))
        .count();
    assert_eq!(
        on_new, 3,
        "12 replicas over 4 nodes put 3 on the new node: {t:?}"
    );
    let via_new = c.client_of(id);
    for k in ["a", "g", "n", "z"] {
        via_new.put("j", k.as_bytes(), k.as_bytes()).await.unwrap();
        assert_eq!(
            cl.get("j", k.as_bytes()).await.unwrap(),
            Some(k.as_bytes().to_vec())
        );
    }
    let nodes = cl.nodes().await.unwrap();
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes
            .iter()
            .any(|n| n.id == id && n.live && !n.metadata_member)
    );
}
