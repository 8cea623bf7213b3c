//! At the default settings a busy partition's Raft log stays short: entries are purged
//! behind snapshots, so the log (and the disk under it) does not grow with the writes.

use crate::cluster::{Cluster, scrape, value, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

/// Writes to one partition, one proposal each, more than twice the entries between two
/// snapshots: on every node the partition's log then holds at most the entries since the
/// last snapshot, the tail kept behind it and one purge batch (the old default of 5,000
/// entries between snapshots kept all of them), and every value reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t73_a_busy_partitions_log_is_purged_at_the_defaults() {
    let bound = cairn_server::max_log_held(cairn_server::DEFAULT_SNAPSHOT_LOGS) as f64;
    let writes = 2 * cairn_server::DEFAULT_SNAPSHOT_LOGS as usize + 500;
    let all = [1, 2, 3];
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("p", 3, vec![]).await.unwrap();
    let mut latest = BTreeMap::new();
    for i in 0..writes {
        // One at a time, so each write is a proposal and a log entry of its own.
        let (k, v) = (format!("k{:03}", i % 300), format!("v{i}"));
        cl.put("p", k.as_bytes(), v.as_bytes()).await.unwrap();
        latest.insert(k, v);
    }
    let held = wait_for(
        Duration::from_secs(30),
        "every node's log to be purged below the bound",
        || async {
            let mut held = Vec::new();
            for id in all {
                let t = scrape(&c, id).await?;
                held.push(value(&t, "cairn_raft_log_entries", &[])?);
            }
            held.iter().all(|h| *h <= bound).then_some(held)
        },
    )
    .await;
    for (id, h) in all.iter().zip(&held) {
        // The tail kept behind the snapshot is still there for a lagging follower.
        assert!(*h > 0.0, "node {id}: no log entry left at all");
    }
    for (k, v) in &latest {
        assert_eq!(
            cl.get("p", k.as_bytes()).await.unwrap().as_deref(),
            Some(v.as_bytes()),
            "key {k}"
        );
    }
}
