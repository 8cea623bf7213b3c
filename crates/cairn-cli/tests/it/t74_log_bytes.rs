//! Large values do not keep a long Raft log: past `--snapshot-log-bytes` of log since its
//! last snapshot a partition snapshots and purges by size, long before the entry count
//! (`--snapshot-logs`) would.

use crate::cluster::{Cluster, scrape, value, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

const LIMIT: u64 = 2 << 20;
const VALUE: usize = 256 << 10;

/// Forty writes of 256 KiB values to one partition, one entry each (10 MiB, far below the
/// 1,000 entries of the entry policy, which would keep all forty): on every node the log
/// then holds at most the bytes since the last snapshot plus the quarter kept behind it
/// (in entries: 2 MiB / 256 KiB + 512 KiB / 256 KiB, and a few in flight), yet still some
/// entries; every value reads back. With `--snapshot-log-bytes 0` this fails: all forty stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t74_large_values_bound_the_log_by_bytes() {
    let kept = cairn_server::log_bytes_kept(LIMIT);
    let bound = ((LIMIT + kept) / VALUE as u64 + 4) as f64;
    let limit = LIMIT.to_string();
    let c = Cluster::start_with(3, &["--snapshot-log-bytes", &limit]).await;
    let cl = c.client();
    cl.create_table("big", 3, vec![]).await.unwrap();
    let mut latest = BTreeMap::new();
    for i in 0..40u32 {
        // One at a time, so each write is a proposal and a log entry of its own.
        let k = format!("k{}", i % 8);
        let v: Vec<u8> = i
            .to_be_bytes()
            .iter()
            .copied()
            .cycle()
            .take(VALUE)
            .collect();
        cl.put("big", k.as_bytes(), &v).await.unwrap();
        latest.insert(k, v);
    }
    let held = wait_for(
        Duration::from_secs(30),
        "every node's log to be purged by size below the bound",
        || async {
            let mut held = Vec::new();
            for id in 1..=3 {
                let t = scrape(&c, id).await?;
                held.push(value(&t, "cairn_raft_log_entries", &[])?);
            }
            held.iter().all(|h| *h <= bound).then_some(held)
        },
    )
    .await;
    for (id, h) in (1..=3).zip(&held) {
        // The tail kept behind the snapshot is still there for a lagging follower.
        assert!(*h > 0.0, "node {id}: no log entry left at all");
        let t = scrape(&c, id).await.expect("metrics");
        let purges = value(&t, "cairn_raft_log_size_purges_total", &[]).unwrap_or(0.0);
        assert!(purges > 0.0, "node {id}: the log was not purged by size");
    }
    for (k, v) in &latest {
        let got = cl.get("big", k.as_bytes()).await.unwrap();
        assert!(got.as_deref() == Some(v.as_slice()), "key {k}: wrong value");
    }
}
