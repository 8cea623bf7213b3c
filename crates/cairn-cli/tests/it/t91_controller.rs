//! The controller on real processes: a table that grows splits on its own and spreads over
//! the nodes.

use crate::cluster::{Cluster, chaos_passed, history_path, list_all, spawn_chaos, wait_for};
use cairn_client::Client;
use std::collections::BTreeMap;
use std::time::Duration;

/// Every key of `table`, page by page, as List returns them.
fn loaded_key(i: u32) -> Vec<u8> {
    format!("v/{i:05}").into_bytes()
}

/// With `--split-size 1MiB`, a one-partition table loaded with 32 MiB splits on its own
/// into at least 16 partitions, and the controller spreads their replicas and leaders over
/// the 4 nodes, while the chaos workload runs on the same table: its history is
/// linearizable, every loaded key reads back, and List returns every key once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t91_a_growing_table_splits_and_spreads_on_its_own() {
    let c = Cluster::start_with(4, &["--controller", "on", "--split-size", "1MiB"]).await;
    let cl = c.client().with_timeout(Duration::from_secs(30));
    cl.create_table("grow", 3, vec![]).await.unwrap();
    let path = history_path("t91-growth.jsonl");
    let mut run = spawn_chaos(
        &c.endpoints(),
        &[
            "--table",
            "grow",
            "--duration",
            "25",
            "--clients",
            "4",
            "--keys",
            "16",
            "--seed",
            "91",
            "--max-ops",
            "1000000",
        ],
        &path,
    );
    // 32 MiB: 8,192 values of 4 KiB, 32 writes at a time.
    const N: u32 = 8192;
    let value = vec![b'x'; 4096];
    for batch in (0..N).collect::<Vec<_>>().chunks(32) {
        let keys: Vec<Vec<u8>> = batch.iter().map(|i| loaded_key(*i)).collect();
        let puts = keys.iter().map(|k| cl.put("grow", k, &value));
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
    }
    let t = wait_for(
        Duration::from_secs(120),
        "the table to split into 16 partitions whose replicas spread over every node and \
         whose leaders spread over at least 3",
        || {
            let cl = &cl;
            async move {
                let t = cl.describe_table("grow").await.ok()?;
                let mut replicas: BTreeMap<u64, usize> = BTreeMap::new();
                for p in &t.partitions {
                    for n in &p.replicas {
                        *replicas.entry(*n).or_default() += 1;
                    }
                }
                let spread = replicas.len() == 4 && replicas.values().all(|n| *n >= 4);
                // Splits leave the new halves led where their parent was; the controller
                // moves leaders afterwards, so wait for that too rather than sample it.
                let leaders: std::collections::BTreeSet<u64> =
                    t.partitions.iter().filter_map(|p| p.leader).collect();
                (t.partitions.len() >= 16 && spread && leaders.len() >= 3).then_some(t)
            }
        },
    )
    .await;
    chaos_passed(&mut run, &path).await;
    for w in t.partitions.windows(2) {
        assert_eq!(w[0].end.as_deref(), Some(w[1].start.as_slice()));
    }

    for batch in (0..N).collect::<Vec<_>>().chunks(64) {
        let keys: Vec<Vec<u8>> = batch.iter().map(|i| loaded_key(*i)).collect();
        let gets = keys.iter().map(|k| cl.get("grow", k));
        for (i, r) in batch.iter().zip(futures::future::join_all(gets).await) {
            assert_eq!(r.unwrap().as_deref(), Some(value.as_slice()), "key {i}");
        }
    }
    let keys = list_all(&cl, "grow").await;
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys out of order or repeated"
    );
    let loaded: Vec<Vec<u8>> = keys.into_iter().filter(|k| k.starts_with(b"v/")).collect();
    assert_eq!(loaded, (0..N).map(loaded_key).collect::<Vec<_>>());
}

/// Replica counts per node, and which nodes hold metadata replicas, as the metadata says.
async fn layout(cl: &Client, table: &str) -> Option<(Vec<cairn_client::PartitionInfo>, Vec<u64>)> {
    let t = cl.describe_table(table).await.ok()?;
    let members = cl
        .nodes()
        .await
        .ok()?
        .into_iter()
        .filter(|n| n.metadata_member)
        .map(|n| n.id)
        .collect();
    Some((t.partitions, members))
}

/// With `--down-after 5s` on 5 nodes (3 metadata members), a node holding replicas and a
/// metadata replica is killed for good under the chaos workload: within 30 s after it is
/// declared down, every partition and the metadata group have 3 voters again, none on the
/// dead node; the history is linearizable and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t92_dead_node_is_repaired() {
    let mut c = Cluster::start_with(3, &["--controller", "on", "--down-after", "5"]).await;
    c.join();
    c.join();
    c.wait_live(5).await;
    let cl = c.client().with_timeout(Duration::from_secs(30));
    let splits = ["g", "n", "t"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    cl.create_table("rep", 3, splits).await.unwrap();
    let path = history_path("t92-repair.jsonl");
    let mut run = spawn_chaos(
        &c.endpoints(),
        &[
            "--table",
            "rep",
            "--duration",
            "30",
            "--clients",
            "4",
            "--keys",
            "16",
            "--seed",
            "92",
            "--max-ops",
            "1000000",
        ],
        &path,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (parts, _) = layout(&cl, "rep").await.unwrap();
    // A metadata member that holds replicas (node 1 founded the metadata group).
    let dead = 1;
    assert!(parts.iter().any(|p| p.replicas.contains(&dead)));
    c.kill9(dead);
    let (parts, members) = wait_for(
        Duration::from_secs(90),
        "every group back at 3 voters, none on the dead node",
        || {
            let cl = &cl;
            async move {
                let (parts, members) = layout(cl, "rep").await?;
                let whole = parts
                    .iter()
                    .all(|p| p.replicas.len() == 3 && !p.replicas.contains(&dead))
                    && members.len() == 3
                    && !members.contains(&dead);
                whole.then_some((parts, members))
            }
        },
    )
    .await;
    println!("repaired: {parts:?}, metadata members {members:?}");
    chaos_passed(&mut run, &path).await;

    // The dead node comes back (the controller paused, so nothing new goes there): its old
    // replicas never serve and are destroyed, and reads through it see the latest writes.
    let t = cl.describe_table("rep").await.unwrap();
    cl.set_controller_paused(true).await.unwrap();
    for i in 0..20u32 {
        cl.put(
            "rep",
            format!("{}x{i}", ["a", "h", "o", "u"][i as usize % 4]).as_bytes(),
            b"after",
        )
        .await
        .unwrap();
    }
    c.restart(dead);
    let back = c.client_of(dead).with_timeout(Duration::from_secs(30));
    let ids: Vec<u64> = t.partitions.iter().map(|p| p.id).collect();
    wait_for(
        Duration::from_secs(30),
        "the returning node's old replicas to be destroyed",
        || {
            let back = &back;
            let ids = &ids;
            async move {
                let s = back.engine_stats(t.id, ids).await.ok()?;
                (s.data_keys == 0 && s.open_replicas == 0 && s.replica_keys == 0).then_some(())
            }
        },
    )
    .await;
    for i in 0..20u32 {
        let k = format!("{}x{i}", ["a", "h", "o", "u"][i as usize % 4]);
        assert_eq!(
            back.get("rep", k.as_bytes()).await.unwrap(),
            Some(b"after".to_vec()),
            "{k}"
        );
    }
    cl.set_controller_paused(false).await.unwrap();
}

/// A drained node ends up with no replica, no leadership and no metadata replica, under
/// the chaos workload, and nothing is lost; remove-node then retires it: a node holding
/// replicas is refused, and the retired node's process, restarted, is refused with a
/// clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t93_drained_node_is_emptied() {
    let mut c = Cluster::start_with(3, &["--controller", "on"]).await;
    c.join();
    c.wait_live(4).await;
    let cl = c.client().with_timeout(Duration::from_secs(30));
    let splits = ["g", "n", "t"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    cl.create_table("dr", 3, splits).await.unwrap();
    let path = history_path("t93-drain.jsonl");
    let mut run = spawn_chaos(
        &c.endpoints(),
        &[
            "--table",
            "dr",
            "--duration",
            "25",
            "--clients",
            "4",
            "--keys",
            "16",
            "--seed",
            "93",
            "--max-ops",
            "1000000",
        ],
        &path,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drained = 2;
    cl.set_draining(drained, true).await.unwrap();
    assert!(
        cl.nodes()
            .await
            .unwrap()
            .iter()
            .any(|n| n.id == drained && n.draining)
    );
    wait_for(
        Duration::from_secs(60),
        "the drained node to be empty",
        || {
            let cl = &cl;
            async move {
                let (parts, members) = layout(cl, "dr").await?;
                let empty = parts
                    .iter()
                    .all(|p| !p.replicas.contains(&drained) && p.leader != Some(drained))
                    && parts.iter().all(|p| p.replicas.len() == 3)
                    && !members.contains(&drained)
                    && members.len() == 3;
                empty.then_some(())
            }
        },
    )
    .await;
    chaos_passed(&mut run, &path).await;
    let status = cl.controller().await.unwrap();
    assert!(status.enabled && !status.paused && status.draining == vec![drained]);
    // The moves are recorded in the metadata (the decisions' log is the leader's memory,
    // and draining the metadata leader's node moves the leadership).
    let ops = cl.operations().await.unwrap();
    assert!(
        ops.iter()
            .any(|o| o.kind == "move" && o.from == drained && o.state == "done"),
        "{ops:?}"
    );

    // A node that holds replicas cannot be removed; the drained one can, for good: its
    // process stops with a clear error, and so does a restart under its id.
    let err = cl.remove_node(3).await.unwrap_err();
    assert_eq!(err.code, cairn_types::ErrorCode::Conflict, "{err}");
    cl.remove_node(drained).await.unwrap();
    for round in 0..2 {
        let status = c.wait_exit(drained, Duration::from_secs(30)).await;
        assert!(!status.success(), "round {round}: {status}");
        assert!(
            c.log(drained).contains("was removed from the cluster"),
            "round {round}: {}",
            c.log(drained)
        );
        c.restart(drained);
    }
    assert!(!cl.nodes().await.unwrap().iter().any(|n| n.id == drained));
    let _ = c.wait_exit(drained, Duration::from_secs(30)).await;
    // Undrain lifts a drain.
    cl.set_draining(4, true).await.unwrap();
    assert_eq!(cl.controller().await.unwrap().draining, vec![4]);
    cl.set_draining(4, false).await.unwrap();
    assert!(cl.controller().await.unwrap().draining.is_empty());
}

/// A zipfian write load on a one-partition table of 5 nodes crosses `--split-qps`: the
/// partition is split while the 20 s load runs, and the halves end up led by different
/// nodes. Prints how long the split took and the throughput the benchmark saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t92_hot_range_splits_and_spreads() {
    let c = Cluster::start_with(
        5,
        &[
            "--controller",
            "on",
            "--split-qps",
            "200",
            "--split-window",
            "2",
        ],
    )
    .await;
    let cl = c.client().with_timeout(Duration::from_secs(30));
    cl.create_table("hot", 3, vec![]).await.unwrap();
    let started = std::time::Instant::now();
    let bench = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "--endpoints",
            &c.endpoints(),
            "bench",
            "--workload",
            "write",
        ])
        .args([
            "--distribution",
            "zipfian",
            "--table",
            "hot",
            "--records",
            "2000",
        ])
        .args(["--duration", "20", "--clients", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let split_after = wait_for(
        Duration::from_secs(20),
        "the hot partition to split",
        || {
            let cl = &cl;
            async move {
                let t = cl.describe_table("hot").await.ok()?;
                (t.partitions.len() >= 2).then(|| started.elapsed())
            }
        },
    )
    .await;
    let t = wait_for(
        Duration::from_secs(20),
        "the halves to be led by different nodes",
        || {
            let cl = &cl;
            async move {
                let t = cl.describe_table("hot").await.ok()?;
                let leaders: std::collections::BTreeSet<u64> =
                    t.partitions.iter().filter_map(|p| p.leader).collect();
                (t.partitions.len() >= 2 && leaders.len() >= 2).then_some(t)
            }
        },
    )
    .await;
    let out = bench.wait_with_output().unwrap();
    // Progress lines: "   write   3.0 s   5702 ops   1903 ops/s   0 errors".
    let rates: Vec<f64> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.trim_start().starts_with("write") && l.contains("ops/s"))
        .filter_map(|l| l.split_whitespace().nth(5)?.parse().ok())
        .collect();
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len().max(1) as f64;
    println!(
        "split {:.1} s after the load started; {} partitions led by {:?}",
        split_after.as_secs_f64(),
        t.partitions.len(),
        t.partitions.iter().map(|p| p.leader).collect::<Vec<_>>()
    );
    println!(
        "write throughput: first 2 s {:.0} ops/s, last 5 s {:.0} ops/s (second by second: {rates:?})",
        mean(&rates[..rates.len().min(2)]),
        mean(&rates[rates.len().saturating_sub(5)..])
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    for w in t.partitions.windows(2) {
        assert_eq!(w[0].end.as_deref(), Some(w[1].start.as_slice()));
    }
}

/// A 3-node cluster holding 30 partitions gets 2 more nodes: under the chaos workload the
/// controller spreads replicas and leaders until every node's replica count and leader
/// count are within one of the mean; the history is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t99_scale_out_balances() {
    let mut c = Cluster::start_with(3, &["--controller", "on"]).await;
    let cl = c.client().with_timeout(Duration::from_secs(30));
    let splits = (1..30u32)
        .map(|i| format!("k{i:03}").into_bytes())
        .collect();
    cl.create_table("wide", 3, splits).await.unwrap();
    let path = history_path("t99-scale-out.jsonl");
    let mut run = spawn_chaos(
        &c.endpoints(),
        &[
            "--table",
            "wide",
            "--duration",
            "40",
            "--clients",
            "4",
            "--keys",
            "32",
            "--seed",
            "99",
            "--max-ops",
            "1000000",
        ],
        &path,
    );
    c.join();
    c.join();
    let counts = wait_for(
        Duration::from_secs(150),
        "replicas and leaders within one of the mean on 5 nodes",
        || {
            let cl = &cl;
            async move {
                let nodes = cl.nodes().await.ok()?;
                if nodes.len() != 5 || nodes.iter().any(|n| !n.live) {
                    return None;
                }
                let t = cl.describe_table("wide").await.ok()?;
                let mut replicas: BTreeMap<u64, i64> = nodes.iter().map(|n| (n.id, 0)).collect();
                let mut leaders = replicas.clone();
                for p in &t.partitions {
                    for n in &p.replicas {
                        *replicas.get_mut(n)? += 1;
                    }
                    *leaders.get_mut(&p.leader?)? += 1;
                }
                // 90 replicas and 30 leaders over 5 nodes: 18 and 6 each.
                let even =
                    |m: &BTreeMap<u64, i64>, mean: i64| m.values().all(|c| (c - mean).abs() <= 1);
                (even(&replicas, 18) && even(&leaders, 6)).then_some((replicas, leaders))
            }
        },
    )
    .await;
    println!(
        "replicas per node {:?}, leaders per node {:?}",
        counts.0, counts.1
    );
    chaos_passed(&mut run, &path).await;
}
