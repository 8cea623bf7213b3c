//! `cairn admin verify` on real processes: the replicas of a healthy table agree, and a
//! row slipped into one node's engine behind Raft's back is found, naming that node.

use crate::cluster::{Cluster, wait_for};
use cairn_storage::{Engine, Space, WriteBatch, keys};
use cairn_storage_fjall::FjallEngine;
use cairn_types::TableId;
use std::time::Duration;

/// Runs `cairn admin verify TABLE`; answers its exit code and everything it printed.
async fn verify(c: &Cluster, table: &str) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &c.endpoints(), "admin", "verify", table])
        .env_remove("CAIRN_TOKEN")
        .output();
    let run = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("cairn admin verify finished within two minutes")
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    (run.status.code(), out)
}

/// On 3 nodes, a table of two partitions with 100 keys each: verify finds every replica
/// alike and exits 0. Then node 3 is stopped (verify compares the other two and exits 2), a
/// row is written into its engine in the right
/// partition's range (as a bug or a bad disk would), and it is started again: verify exits
/// 1, says the right partition differs, which nodes hold how many keys, and names node 3;
/// the left partition still agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t77_verify_finds_the_replica_that_differs() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    let t = cl.create_table("v", 3, vec![b"m".to_vec()]).await.unwrap();
    for i in 0..100u32 {
        let v = format!("value {i}");
        cl.put("v", format!("k{i:03}").as_bytes(), v.as_bytes())
            .await
            .unwrap();
        cl.put("v", format!("r{i:03}").as_bytes(), v.as_bytes())
            .await
            .unwrap();
    }
    // The followers apply the last writes a moment after the leader: verify asks again
    // until the replicas stand at one entry.
    let (code, out) = verify(&c, "v").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 of 2 partition(s) verified"), "{out}");
    assert_eq!(
        out.matches("100 key(s) on 3 replicas agree").count(),
        2,
        "{out}"
    );

    assert!(c.stop(3), "node 3 stops cleanly:\n{}", c.log(3));
    // With a node down, two replicas of each partition are compared: they agree, and the
    // exit code says not every replica was.
    let (code, out) = verify(&c, "v").await;
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(out.matches("2 of 3 replicas agree").count(), 2, "{out}");
    {
        let e = FjallEngine::open(&c.dir(3)).unwrap();
        let mut b = WriteBatch::new();
        b.put(
            Space::Data,
            keys::data(TableId(t.id), b"zz planted"),
            b"not through Raft".to_vec(),
        );
        e.write(b).unwrap();
        e.sync().unwrap();
    }
    c.restart(3);
    c.wait_live(3).await;
    let right = t.partitions[1].id;
    let out = wait_for(
        Duration::from_secs(60),
        "verify to see node 3 again",
        || async {
            let (code, out) = verify(&c, "v").await;
            (code == Some(1) && out.contains("1 of 2 partition(s) verified")).then_some(out)
        },
    )
    .await;
    assert!(
        out.contains(&format!("v partition {right}: DIFFER")),
        "{out}"
    );
    assert!(
        out.contains("nodes [1, 2] hold 100 key(s); nodes [3] hold 101 key(s)"),
        "{out}"
    );
    assert!(
        out.contains("node(s) [3] differ from the majority"),
        "{out}"
    );
    assert!(out.contains("1 of 2 partition(s) verified"), "{out}");
}
