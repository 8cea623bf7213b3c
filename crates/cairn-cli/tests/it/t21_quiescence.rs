use crate::cluster::{Cluster, wait_for, wait_stale_value};
use std::time::Duration;

/// Value of the gauge or counter `name` on node `id`, if it answers.
async fn metric(c: &Cluster, id: u64, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("{}/metrics", c.http(id)))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn key(p: usize) -> Vec<u8> {
    format!("k{p:02}").into_bytes()
}

/// Every partition's key reads back `value` and takes a new write, within `timeout`.
async fn every_partition_serves(cl: &cairn_client::Client, parts: usize, value: &str) {
    for p in 0..parts {
        wait_for(Duration::from_secs(20), "a partition to serve", || async {
            let got = cl.get("q", &key(p)).await.ok()?;
            assert_eq!(got.as_deref(), Some(value.as_bytes()), "partition {p}");
            Some(())
        })
        .await;
    }
}

/// With `--quiesce`, partition groups keep no timers of their own: once idle, no leader heartbeats
/// (`cairn_raft_groups_ticking` falls to 0 on every node) and reads and writes still work.
/// Leaders are then replaced through node-level liveness alone: after a kill -9 of the
/// node leading most partitions, and after a restart of a leading node too quick for its
/// peers to see it down, every partition elects a leader again and serves every
/// acknowledged value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t21_idle_groups_fall_silent_and_leaders_are_replaced_through_liveness() {
    const PARTS: usize = 12;
    let mut c = Cluster::start_with(3, &["--quiesce"]).await;
    let cl = c.client();
    let splits = (1..PARTS).map(key).collect();
    cl.create_table("q", 3, splits).await.unwrap();
    for p in 0..PARTS {
        wait_for(Duration::from_secs(20), "the first writes", || async {
            cl.put("q", &key(p), b"v1").await.ok()
        })
        .await;
    }

    // Idle groups fall silent.
    for id in 1..=3 {
        wait_for(
            Duration::from_secs(20),
            "idle groups to stop ticking",
            || async { (metric(&c, id, "cairn_raft_groups_ticking").await? == 0).then_some(()) },
        )
        .await;
    }
    // Quiescent leaders still serve linearizable reads, and a write wakes a group.
    every_partition_serves(&cl, PARTS, "v1").await;
    for p in 0..PARTS {
        cl.put("q", &key(p), b"v2").await.unwrap();
    }

    // Kill the node leading most partitions; the others take over without any group timer.
    let mut leads = Vec::new();
    for id in 1..=3 {
        leads.push((metric(&c, id, "cairn_leaders").await.unwrap_or(0), id));
    }
    let (n, victim) = *leads.iter().max().unwrap();
    assert!(n > 0, "no node leads a partition: {leads:?}");
    c.kill9(victim);
    every_partition_serves(&cl, PARTS, "v2").await;
    for p in 0..PARTS {
        cl.put("q", &key(p), b"v3").await.unwrap();
    }
    let mut campaigns = 0;
    for id in (1..=3).filter(|i| *i != victim) {
        campaigns += metric(&c, id, "cairn_raft_campaigns_total")
            .await
            .unwrap_or(0);
    }
    assert!(campaigns > 0, "the survivors never campaigned");
    c.restart(victim);
    c.wait_live(3).await;
    // Caught up before a leadership goes to it: a transfer to a node still catching up
    // may not finish in the transfer's time.
    let own = c.client_of(victim);
    wait_stale_value(&own, "q", &key(0), b"v3", Duration::from_secs(30)).await;

    // Move some leadership back to the restarted node, then restart it at once: its peers
    // may never see it down, only its new incarnation.
    let info = cl.describe_table("q").await.unwrap();
    let p = &info.partitions[0];
    cl.transfer_leader(p.id, victim).await.unwrap();
    c.kill9(victim);
    c.restart(victim);
    every_partition_serves(&cl, PARTS, "v3").await;
    for p in 0..PARTS {
        cl.put("q", &key(p), b"v4").await.unwrap();
    }
    every_partition_serves(&cl, PARTS, "v4").await;
}
