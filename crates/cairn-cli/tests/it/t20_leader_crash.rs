use crate::cluster::{Cluster, wait_for};
use std::time::{Duration, Instant};

/// Kill -9 the leader of a partition while a client writes: writes resume through the
/// other nodes within 10 s, no acknowledged write is lost, and the killed node, restarted
/// from its data dir alone, catches up so a stale read from it returns the latest values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_kill_partition_leader_during_writes() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("w", 3, vec![]).await.unwrap();
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..200 {
        let (k, v) = (format!("key{:03}", i % 50), format!("value-{i}"));
        cl.put("w", k.as_bytes(), v.as_bytes()).await.unwrap();
        acked.push((k, v));
    }
    let leader = wait_for(
        Duration::from_secs(10),
        "a leader to be reported",
        || async { cl.describe_table("w").await.ok()?.partitions[0].leader },
    )
    .await;
    c.kill9(leader);
    let killed_at = Instant::now();

    // Writes continue; the first acknowledged one after the kill comes within 10 s.
    let mut first_after: Option<Duration> = None;
    for i in 200..400 {
        let (k, v) = (format!("key{:03}", i % 50), format!("value-{i}"));
        match cl.put("w", k.as_bytes(), v.as_bytes()).await {
            Ok(()) => {
                first_after.get_or_insert(killed_at.elapsed());
                acked.push((k, v));
            }
            Err(e) => assert!(
                killed_at.elapsed() < Duration::from_secs(10),
                "write failed 10 s after the kill: {e}"
            ),
        }
    }
    let resumed = first_after.expect("no write succeeded after the leader was killed");
    assert!(
        resumed < Duration::from_secs(10),
        "writes resumed only after {resumed:?}"
    );

    // Nothing acknowledged is lost: the last acknowledged value of every key is read back.
    let mut latest = std::collections::BTreeMap::new();
    for (k, v) in &acked {
        latest.insert(k.clone(), v.clone());
    }
    for (k, v) in &latest {
        assert_eq!(
            cl.get("w", k.as_bytes()).await.unwrap(),
            Some(v.clone().into_bytes()),
            "{k}"
        );
    }

    // The restarted node catches up; its own stale reads then return the latest values.
    c.restart(leader);
    let own = c.client_of(leader);
    for (k, v) in &latest {
        wait_for(
            Duration::from_secs(30),
            "the restarted node to catch up",
            || async {
                let got = own.get_stale("w", k.as_bytes()).await.ok()?;
                (got.as_deref() == Some(v.as_bytes())).then_some(())
            },
        )
        .await;
    }
}
