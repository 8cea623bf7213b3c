//! The metrics an operator graphs and alerts on move as the cluster works and fails.

use crate::cluster::{Cluster, scrape, value, wait_for};
use std::time::Duration;

/// The sum over `nodes` of `name` with `labels` (a node without the series counts 0).
async fn total(c: &Cluster, nodes: &[u64], name: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for &id in nodes {
        if let Some(t) = scrape(c, id).await {
            sum += value(&t, name, labels).unwrap_or(0.0);
        }
    }
    sum
}

/// The node exporting the cluster gauges (the metadata leader) among `nodes`, and its text.
async fn cluster_view(c: &Cluster, nodes: &[u64]) -> Option<(u64, String)> {
    for &id in nodes {
        let t = scrape(c, id).await?;
        if value(&t, "cairn_cluster_partitions", &[]).is_some() {
            return Some((id, t));
        }
    }
    None
}

fn key(i: usize) -> Vec<u8> {
    // Spread over the three partitions (split at "g" and "p").
    let first = [b'a', b'h', b'q'][i % 3];
    format!("{}{i:03}", first as char).into_bytes()
}

/// Requests, Raft traffic, fsyncs, applies, disk and the busiest partitions are counted as a
/// table is written and read; the metadata leader's cluster view reports a killed node as
/// down and its partitions as under-replicated, and both return to zero after a restart;
/// leader changes are counted, and no counter goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t68_metrics_move_with_traffic_and_failures() {
    const KEYS: usize = 60;
    let all = [1, 2, 3];
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("m", 3, vec![b"g".to_vec(), b"p".to_vec()])
        .await
        .unwrap();
    for i in 0..KEYS {
        cl.put("m", &key(i), b"v").await.unwrap();
    }
    for i in 0..KEYS {
        assert_eq!(
            cl.get("m", &key(i)).await.unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }

    let n = KEYS as f64;
    let put_ok = ["op=\"put\"", "outcome=\"ok\""];
    assert!(total(&c, &all, "cairn_requests_total", &put_ok).await >= n);
    let get_ok = ["op=\"get\"", "outcome=\"ok\""];
    assert!(total(&c, &all, "cairn_requests_total", &get_ok).await >= n);
    assert!(
        total(
            &c,
            &all,
            "cairn_request_duration_seconds_count",
            &["op=\"put\""]
        )
        .await
            >= n
    );
    assert!(total(&c, &all, "cairn_raft_proposals_total", &[]).await >= n);
    assert!(total(&c, &all, "cairn_raft_commits_total", &[]).await >= n);
    // The client sends its keyed operations in Batch calls; every write rides a proposal
    // and every linearizable read a ReadIndex round.
    assert!(total(&c, &all, "cairn_batch_operations_sum", &[]).await >= 2.0 * n);
    assert!(total(&c, &all, "cairn_proposal_writes_sum", &[]).await >= n);
    assert!(total(&c, &all, "cairn_read_round_reads_sum", &[]).await >= n);
    // Every write is applied by the three replicas of its partition (followers learn of a
    // commit with the next AppendEntries, so wait for it).
    wait_for(Duration::from_secs(20), "followers to apply", || async {
        (total(&c, &all, "cairn_raft_applied_entries_total", &[]).await >= 3.0 * n).then_some(())
    })
    .await;
    assert!(total(&c, &all, "cairn_raft_append_entries_sent_total", &[]).await >= n);
    assert!(total(&c, &all, "cairn_raft_append_entries_received_total", &[]).await >= n);
    for id in all {
        let t = scrape(&c, id).await.unwrap();
        let at = |name: &str| {
            value(&t, name, &[]).unwrap_or_else(|| panic!("node {id}: no {name}\n{t}"))
        };
        assert!(at("cairn_fsync_duration_seconds_count") > 0.0, "node {id}");
        assert!(at("cairn_fsync_batch_writes_sum") > 0.0, "node {id}");
        assert!(at("cairn_engine_disk_bytes") > 0.0, "node {id}");
        assert_eq!(
            at("cairn_replicas"),
            3.0,
            "node {id} hosts a replica of each partition"
        );
        assert_eq!(at("cairn_fsync_failures_total"), 0.0, "node {id}");
    }
    wait_for(
        Duration::from_secs(20),
        "every partition to have a leader",
        || async { (total(&c, &all, "cairn_leaders", &[]).await == 3.0).then_some(()) },
    )
    .await;

    // The metadata leader's view of the cluster.
    let (meta, _) = wait_for(Duration::from_secs(20), "a clean cluster view", || async {
        let (id, t) = cluster_view(&c, &all).await?;
        let clean = value(&t, "cairn_cluster_partitions", &[]) == Some(3.0)
            && value(&t, "cairn_cluster_nodes", &["state=\"live\""]) == Some(3.0)
            && value(&t, "cairn_cluster_partitions_under_replicated", &[]) == Some(0.0)
            && value(&t, "cairn_cluster_partitions_without_leader", &[]) == Some(0.0);
        clean.then_some((id, t))
    })
    .await;
    assert_eq!(
        value(
            &scrape(&c, meta).await.unwrap(),
            "cairn_metadata_leader",
            &[]
        ),
        Some(1.0)
    );

    // Every node's metrics through any node, as the console fetches them: the text is that
    // node's (its label), the metadata leader's says it leads and another's does not; an
    // unknown node is a 404.
    let other = *all.iter().find(|&&id| id != meta).unwrap();
    for via in all {
        for (id, leads) in [(meta, 1.0), (other, 0.0)] {
            let r = reqwest::get(format!("{}/v1/admin/nodes/{id}/metrics", c.http(via)))
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "node {id}'s metrics through node {via}");
            let t = r.text().await.unwrap();
            let this = format!("node=\"{id}\"");
            assert_eq!(
                value(&t, "cairn_metadata_leader", &[&this]),
                Some(leads),
                "node {id}'s metrics through node {via}:\n{t}"
            );
        }
    }
    let r = reqwest::get(format!("{}/v1/admin/nodes/9/metrics", c.http(1)))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());

    // The busiest partitions, by table name, on the nodes leading them.
    let busy = ["table=\"m\""];
    let mut exported = 0;
    for id in all {
        let t = scrape(&c, id).await.unwrap();
        let leads = value(&t, "cairn_leaders", &[]).unwrap_or(0.0);
        let series = value(&t, "cairn_partition_ops_per_second", &busy);
        assert_eq!(
            series.is_some(),
            leads > 0.0,
            "node {id} leads {leads}:\n{t}"
        );
        exported += usize::from(series.is_some());
    }
    assert!(exported > 0);

    // Kill a node other than the metadata leader, preferring one that leads partitions.
    let mut victim = *all.iter().find(|&&id| id != meta).unwrap();
    for id in all.into_iter().filter(|&id| id != meta) {
        let t = scrape(&c, id).await.unwrap();
        if value(&t, "cairn_leaders", &[]).unwrap_or(0.0) > 0.0 {
            victim = id;
        }
    }
    let led = value(&scrape(&c, victim).await.unwrap(), "cairn_leaders", &[]).unwrap();
    let survivors: Vec<u64> = all.into_iter().filter(|&id| id != victim).collect();
    let changes_before = total(&c, &survivors, "cairn_raft_leader_changes_total", &[]).await;
    let puts_before = total(&c, &survivors, "cairn_requests_total", &put_ok).await;
    c.kill9(victim);
    wait_for(
        Duration::from_secs(30),
        "the node to count as down",
        || async {
            let t = scrape(&c, meta).await?;
            (value(&t, "cairn_cluster_nodes", &["state=\"down\""]) == Some(1.0)
                && value(&t, "cairn_cluster_partitions_under_replicated", &[]) == Some(3.0))
            .then_some(())
        },
    )
    .await;
    // The partitions it led elect new leaders and take writes again.
    for i in 0..3 {
        wait_for(Duration::from_secs(30), "writes after the kill", || async {
            cl.put("m", &key(i), b"w").await.ok()
        })
        .await;
    }
    wait_for(
        Duration::from_secs(30),
        "no partition without a leader",
        || async {
            let t = scrape(&c, meta).await?;
            (value(&t, "cairn_cluster_partitions_without_leader", &[]) == Some(0.0)).then_some(())
        },
    )
    .await;
    if led > 0.0 {
        wait_for(
            Duration::from_secs(20),
            "leader changes to be counted",
            || async {
                (total(&c, &survivors, "cairn_raft_leader_changes_total", &[]).await
                    >= changes_before + led)
                    .then_some(())
            },
        )
        .await;
    }
    assert!(
        total(&c, &survivors, "cairn_requests_total", &put_ok).await >= puts_before + 3.0,
        "counters only grow"
    );

    // Back, and fully replicated again.
    c.restart(victim);
    wait_for(Duration::from_secs(60), "the cluster to heal", || async {
        let t = scrape(&c, meta).await?;
        (value(&t, "cairn_cluster_nodes", &["state=\"down\""]) == Some(0.0)
            && value(&t, "cairn_cluster_partitions_under_replicated", &[]) == Some(0.0))
        .then_some(())
    })
    .await;
}
