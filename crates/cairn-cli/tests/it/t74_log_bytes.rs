//! Large values do not keep a long Raft log: past `--snapshot-log-bytes` of log since its
//! last snapshot a partition snapshots and purges by size, long before the entry count
//! (`--snapshot-logs`) would.

use crate::cluster::{Cluster, scrape, value, wait_for, wait_stale_value};
use cairn_client::Client;
use std::collections::BTreeMap;
use std::time::Duration;

const LIMIT: u64 = 2 << 20;
const VALUE: usize = 256 << 10;

/// Forty writes of 256 KiB values to one partition, one entry each (10 MiB, far below the
/// 1,000 entries of the entry bound, which would keep all forty): on every node the log
/// then holds at most the bytes since the last snapshot plus what is kept behind it, which
/// on a leader with a follower behind is up to [`cairn_server::log_bytes_held`] (in entries:
/// 2 MiB / 256 KiB + 4 MiB / 256 KiB, and a few in flight); every value reads back. With
/// `--snapshot-log-bytes 0` this fails: all forty stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t74_large_values_bound_the_log_by_bytes() {
    let held = cairn_server::log_bytes_held(LIMIT);
    let bound = ((LIMIT + held) / VALUE as u64 + 4) as f64;
    assert!(
        bound < 40.0,
        "the bound must be below the forty entries written"
    );
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
    wait_for(
        Duration::from_secs(30),
        "every node's log to be purged by size below the bound",
        || async {
            for id in 1..=3 {
                let t = scrape(&c, id).await?;
                (value(&t, "cairn_raft_log_entries", &[])? <= bound).then_some(())?;
            }
            Some(())
        },
    )
    .await;
    // The byte bound did it, not the entry bound: the leader's log only gets under the
    // bound by purges by size (a follower that fell far behind may have been sent
    // snapshots instead, which leave it nothing to purge).
    let mut purges = 0.0;
    for id in 1..=3 {
        let t = scrape(&c, id).await.expect("metrics");
        purges += value(&t, "cairn_raft_log_size_purges_total", &[]).unwrap_or(0.0);
    }
    assert!(purges > 0.0, "no log was purged by size");
    for (k, v) in &latest {
        let got = cl.get("big", k.as_bytes()).await.unwrap();
        assert!(got.as_deref() == Some(v.as_slice()), "key {k}: wrong value");
    }
}

/// A follower paused (SIGSTOP) while the leader passes `--snapshot-log-bytes` catches up
/// from the leader's log once it resumes, not by a whole snapshot: the leader purges no
/// further than its slowest follower while that follower is within
/// [`cairn_server::log_bytes_held`] of log behind. Without that hold the keeper purges the
/// entries the follower still needs and it is sent a snapshot. Paused again for longer than
/// the leader holds the log, the follower no longer keeps the leader's log growing: the
/// leader purges by size as usual and the follower catches up by snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t74_a_paused_follower_catches_up_from_the_log() {
    let limit = LIMIT.to_string();
    let c = Cluster::start_with(3, &["--snapshot-log-bytes", &limit]).await;
    let cl = c.client();
    cl.create_table("big", 3, vec![]).await.unwrap();
    cl.put("big", b"k", b"first").await.unwrap();
    let leader = c.leader_of("big").await;
    let follower = c.other_than(leader);
    let before = keeper_runs(&c, leader).await.unwrap_or(0.0);
    let received = pause_in_step(&c, leader, follower).await;
    // 1.5 limits: the leader's log passes the limit and it snapshots and purges, while the
    // follower's lag stays within what the leader holds for it.
    let writes = (LIMIT * 3 / 2) / VALUE as u64 + 1;
    assert!(writes * (VALUE as u64) < cairn_server::log_bytes_held(LIMIT));
    let via = c.client_of(leader);
    for i in 0..writes {
        let v = vec![i as u8; VALUE];
        via.put("big", format!("k{i}").as_bytes(), &v)
            .await
            .unwrap();
    }
    wait_for(
        Duration::from_secs(30),
        "the leader's log to pass the limit with the follower paused",
        || async { (keeper_runs(&c, leader).await? > before).then_some(()) },
    )
    .await;
    // openraft defers a purge while an append to the follower is in flight; those to a
    // paused one time out after a heartbeat interval (150 ms). Stay paused well past that,
    // so the leader's purge is not merely deferred until the follower is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resumed = resume_caught_up_from_the_log(&c, &via, follower, received).await;
    for i in 0..writes {
        let got = resumed
            .get_stale("big", format!("k{i}").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            got,
            Some(vec![i as u8; VALUE]),
            "key k{i} on the resumed follower"
        );
    }

    // Paused again while forty values go in (10 MiB, past the 4 MiB held for it).
    c.pause(follower);
    for i in 0..40u64 {
        let v = vec![(i + 100) as u8; VALUE];
        via.put("big", format!("m{i}").as_bytes(), &v)
            .await
            .unwrap();
    }
    let bound = ((LIMIT + cairn_server::log_bytes_held(LIMIT)) / VALUE as u64 + 4) as f64;
    assert!(
        bound < 40.0,
        "the bound must be below the forty entries written"
    );
    wait_for(
        Duration::from_secs(30),
        "the leader's log to be purged by size below the bound with the follower paused",
        || async {
            let t = scrape(&c, leader).await?;
            (value(&t, "cairn_raft_log_entries", &[])? <= bound).then_some(())
        },
    )
    .await;
    c.resume(follower);
    via.put("big", b"k", b"end").await.unwrap();
    // The follower has caught up once it has applied the write after its pause.
    wait_stale_value(&resumed, "big", b"k", b"end", Duration::from_secs(60)).await;
    let got = resumed.get_stale("big", b"m39").await.unwrap();
    assert_eq!(got, Some(vec![139u8; VALUE]), "key m39 on the follower");
}

/// A follower paused while forty 1 MB values go in (40 MB, within the 64 MiB a leader holds
/// for it at the defaults) catches up from the log, in messages of at most
/// [`cairn_raft::MAX_APPEND_BYTES`] and one entry. openraft alone sends a follower up to 300
/// entries at once: here all forty in one 40 MB message, encoded whole on the leader and
/// decoded whole on the follower (with 1 MiB values up to 300 MiB per message and follower).
/// Without the cap this fails: the leader's largest append is past 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t74_a_follower_behind_by_many_large_values_catches_up_from_the_log() {
    const BIG: usize = 1_000_000;
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("big", 3, vec![]).await.unwrap();
    cl.put("big", b"k", b"first").await.unwrap();
    let leader = c.leader_of("big").await;
    let follower = c.other_than(leader);
    let received = pause_in_step(&c, leader, follower).await;
    let via = c.client_of(leader);
    for i in 0..40u8 {
        via.put("big", format!("k{i}").as_bytes(), &vec![i; BIG])
            .await
            .unwrap();
    }
    let resumed = resume_caught_up_from_the_log(&c, &via, follower, received).await;
    for i in 0..40u8 {
        let got = resumed
            .get_stale("big", format!("k{i}").as_bytes())
            .await
            .unwrap();
        assert!(
            got.as_deref() == Some(vec![i; BIG].as_slice()),
            "key k{i} on the resumed follower: wrong value"
        );
    }
    let t = scrape(&c, leader).await.expect("metrics");
    let sent = value(&t, "cairn_raft_append_bytes_count", &[]).unwrap_or(0.0);
    let within = value(
        &t,
        "cairn_raft_append_bytes_bucket",
        &[r#"le="4.194304e+06""#],
    );
    assert!(sent >= 40.0, "{sent} appends for 40 writes");
    assert_eq!(
        within,
        Some(sent),
        "appends of the leader larger than 4 MiB (of {sent}):\n{}",
        t.lines()
            .filter(|l| l.starts_with("cairn_raft_append_bytes"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Pauses `follower` once `leader` leads and the follower has applied the first write
/// (`k` = "first"), and returns the snapshot bytes it had received. Pausing it any earlier
/// may leave the leader with no match for it (its replica opened after the leader's first
/// appends, say, on a busy machine, or leadership moved since the metadata's hint): a
/// leader holds no log for a replica whose progress it does not know, so the follower
/// would rightly be sent a snapshot.
async fn pause_in_step(c: &Cluster, leader: u64, follower: u64) -> f64 {
    c.wait_in_step(leader, follower, "big", b"k", b"first")
        .await;
    let received = snapshot_bytes_received(c, follower).await;
    c.pause(follower);
    received
}

/// Resumes the paused `follower`, writes once more through `via` and waits until the
/// follower has applied that write (so it has caught up); fails if it was sent a snapshot
/// to get there (its received snapshot bytes moved from `received`). Returns a client of
/// the follower.
async fn resume_caught_up_from_the_log(
    c: &Cluster,
    via: &Client,
    follower: u64,
    received: f64,
) -> Client {
    c.resume(follower);
    via.put("big", b"k", b"last").await.unwrap();
    let resumed = c.client_of(follower);
    wait_stale_value(&resumed, "big", b"k", b"last", Duration::from_secs(60)).await;
    assert_eq!(
        snapshot_bytes_received(c, follower).await,
        received,
        "node {follower} needed a snapshot to catch up:\n{}",
        c.log(follower)
    );
    resumed
}

/// Snapshot bytes node `id` has received (0 before the first).
async fn snapshot_bytes_received(c: &Cluster, id: u64) -> f64 {
    let t = scrape(c, id).await.expect("metrics");
    value(&t, "cairn_snapshot_received_bytes_total", &[]).unwrap_or(0.0)
}

/// Node `id`'s count of log purges by size, done or held back for a replica behind.
async fn keeper_runs(c: &Cluster, id: u64) -> Option<f64> {
    let t = scrape(c, id).await?;
    Some(
        value(&t, "cairn_raft_log_size_purges_total", &[])?
            + value(&t, "cairn_raft_log_holds_total", &[])?,
    )
}
