//! At the default settings a busy partition's Raft log stays short: entries are purged
//! behind snapshots, so the log (and the disk under it) does not grow with the writes.

use crate::cluster::{Cluster, scrape, value, wait_for, wait_stale_value};
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

/// A follower away while its partition's leader snapshots and purges several times over
/// catches up from the leader's log, not by a whole snapshot (for a big partition, a copy of
/// all of it): the leader purges no further than the follower has matched while the log
/// after that is within [`cairn_server::log_bytes_held`]. First the follower is paused
/// (SIGSTOP), then killed and restarted, as in a rolling restart; each time eight snapshot
/// intervals of small writes go in meanwhile. Once it is back the leader purges the rest
/// of the log it held. Without the hold (openraft purging on its own, or the keeper
/// purging as it would with no replica behind) the follower is sent a snapshot each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t73_a_follower_away_catches_up_from_the_log() {
    const INTERVAL: u64 = 50;
    let writes = 8 * INTERVAL;
    let bound = cairn_server::max_log_held(INTERVAL);
    assert!(
        bound < writes,
        "the bound must be below the writes while away"
    );
    let interval = INTERVAL.to_string();
    let mut c = Cluster::start_with(3, &["--snapshot-logs", &interval]).await;
    let cl = c.client();
    cl.create_table("p", 3, vec![]).await.unwrap();
    cl.put("p", b"k", b"first").await.unwrap();
    let leader = c.leader_of("p").await;
    let follower = c.other_than(leader);
    let via = c.client_of(leader);
    let resumed = c.client_of(follower);
    for (round, restart) in [(0, false), (1, true)] {
        // In step before it goes away: a leader holds no log for a replica whose progress
        // it does not know (one whose replica opened late on a busy machine, or after a
        // change of leader the metadata's hint has not caught up with).
        let had = match round {
            0 => "first".to_string(),
            r => format!("last{}", r - 1),
        };
        c.wait_in_step(leader, follower, "p", b"k", had.as_bytes())
            .await;
        let holds = metric(&c, leader, "cairn_raft_log_holds_total").await;
        let received = metric(&c, follower, "cairn_snapshot_received_bytes_total").await;
        if restart {
            c.kill9(follower);
        } else {
            c.pause(follower);
        }
        let mut latest = BTreeMap::new();
        for i in 0..writes {
            // One at a time, so each write is a proposal and a log entry of its own.
            let (k, v) = (format!("k{:03}", i % 100), format!("v{round}-{i}"));
            via.put("p", k.as_bytes(), v.as_bytes()).await.unwrap();
            latest.insert(k, v);
        }
        // The leader's keeper has run: it held the log, or (had it not) purged it.
        wait_for(
            Duration::from_secs(30),
            "the leader to hold or purge its log with the follower away",
            || async {
                let held = metric(&c, leader, "cairn_raft_log_holds_total").await > holds;
                let purged = metric(&c, leader, "cairn_raft_log_entries").await <= bound as f64;
                (held || purged).then_some(())
            },
        )
        .await;
        // openraft defers a purge while an append to the follower is in flight; those to a
        // paused one time out after a heartbeat interval (150 ms). Stay away well past
        // that, so the leader's purge is not merely deferred until the follower is back.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let received = if restart {
            c.restart(follower);
            0.0 // A restarted node counts from zero.
        } else {
            c.resume(follower);
            received
        };
        let last = format!("last{round}");
        via.put("p", b"k", last.as_bytes()).await.unwrap();
        // The follower has caught up once it has applied the write after its absence.
        wait_stale_value(
            &resumed,
            "p",
            b"k",
            last.as_bytes(),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            metric(&c, follower, "cairn_snapshot_received_bytes_total").await,
            received,
            "round {round}: node {follower} needed a snapshot to catch up:\n{}",
            c.log(follower)
        );
        for (k, v) in &latest {
            let got = resumed.get_stale("p", k.as_bytes()).await.unwrap();
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "round {round}: key {k}");
        }
        // With the follower back, the leader purges what it held.
        wait_for(
            Duration::from_secs(40),
            "the leader's log to be purged below the bound once the follower is back",
            || async {
                let t = scrape(&c, leader).await?;
                (value(&t, "cairn_raft_log_entries", &[])? <= bound as f64).then_some(())
            },
        )
        .await;
    }
}

/// Node `id`'s value of the counter `name` (0 before it counts anything).
async fn metric(c: &Cluster, id: u64, name: &str) -> f64 {
    let t = scrape(c, id).await.expect("metrics");
    value(&t, name, &[]).unwrap_or(0.0)
}

/// A follower away while more log goes to its partition than the partition itself holds
/// catches up by a snapshot, the smaller copy: the leader holds no more log for it than the
/// partition's measured size (at least a quarter of `--snapshot-log-bytes`). Ten keys of
/// 1 KiB are overwritten 300 times while the follower is paused: about 300 KiB of log, within
/// the 512 KiB held for a follower when the size is not known, past the 64 KiB floor, and
/// thirty times the partition's 10 KiB. The leader's log is purged past the follower while
/// it is paused, the snapshot it is sent is smaller than the log it missed, and every value
/// reads back from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t73_a_follower_behind_by_more_than_the_partition_gets_a_snapshot() {
    const LIMIT: u64 = 256 << 10;
    const VALUE: usize = 1 << 10;
    let writes = 300u64;
    let missed = writes * VALUE as u64;
    assert!(missed > cairn_server::log_bytes_kept(LIMIT));
    assert!(missed < cairn_server::log_bytes_held(LIMIT));
    let limit = LIMIT.to_string();
    // The controller measures partition sizes. A split size of 512 KiB is fifty times this
    // test's data (so nothing splits) and has it measure again after 64 KiB of writes.
    let c = Cluster::start_with(
        3,
        &[
            "--snapshot-log-bytes",
            &limit,
            "--snapshot-logs",
            "40",
            "--controller",
            "on",
            "--split-size",
            "512KiB",
            "--split-qps",
            "1000000",
        ],
    )
    .await;
    let cl = c.client();
    cl.create_table("p", 3, vec![]).await.unwrap();
    let leader = c.leader_of("p").await;
    // Written again until measured whole: a measurement taken half way through the first
    // writes stands until 64 KiB more are written.
    wait_for(
        Duration::from_secs(30),
        "the leader to measure the partition",
        || async {
            for i in 0..10u8 {
                cl.put("p", &[b'k', i], &vec![i; VALUE]).await.ok()?;
            }
            let t = scrape(&c, leader).await?;
            (value(&t, "cairn_partition_size_bytes", &["table=\"p\""])? >= 10.0 * VALUE as f64)
                .then_some(())
        },
    )
    .await;
    let follower = c.other_than(leader);
    let received = metric(&c, follower, "cairn_snapshot_received_bytes_total").await;
    let via = c.client_of(leader);
    c.pause(follower);
    for i in 0..writes {
        let v = vec![(i % 251) as u8; VALUE];
        via.put("p", &[b'k', (i % 10) as u8], &v).await.unwrap();
    }
    // The leader purged past the paused follower: snapshots every 40 entries, each purged
    // down to 8 entries behind once the follower is more than the 64 KiB held behind; held
    // for it, the log would keep all 300. openraft carries a purge out once the append in
    // flight to the follower times out.
    wait_for(
        Duration::from_secs(30),
        "the leader's log to be purged past the paused follower",
        || async {
            (metric(&c, leader, "cairn_raft_log_entries").await <= (writes / 2) as f64)
                .then_some(())
        },
    )
    .await;
    c.resume(follower);
    via.put("p", b"last", b"1").await.unwrap();
    let resumed = c.client_of(follower);
    wait_stale_value(&resumed, "p", b"last", b"1", Duration::from_secs(30)).await;
    let sent = metric(&c, follower, "cairn_snapshot_received_bytes_total").await - received;
    assert!(
        sent > 0.0,
        "node {follower} caught up from {missed} bytes of log held for it, not a snapshot of \
         a 10 KiB partition:\n{}",
        c.log(follower)
    );
    assert!(
        sent < missed as f64,
        "the snapshot ({sent} bytes) is larger than the log missed ({missed})"
    );
    for i in writes - 10..writes {
        let got = resumed
            .get_stale("p", &[b'k', (i % 10) as u8])
            .await
            .unwrap();
        assert_eq!(got, Some(vec![(i % 251) as u8; VALUE]), "key k{}", i % 10);
    }
}
