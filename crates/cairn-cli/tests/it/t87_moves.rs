//! Replica moves on real processes: under a checked workload, through crashes of the
//! metadata leader and of the target, and with a moved-away node coming back.

use crate::cluster::{Cluster, chaos_passed, history_path, spawn_chaos, wait_for};
use cairn_client::{Client, OperationInfo, PartitionInfo};
use std::time::Duration;

/// Waits until operation `id` is no longer running and returns it; on timeout the panic
/// names the step it was stuck at and its last error.
pub(crate) async fn finished(c: &Client, id: u64, within: Duration) -> OperationInfo {
    let deadline = std::time::Instant::now() + within;
    let mut last = None;
    loop {
        if let Ok(ops) = c.operations().await {
            last = ops.into_iter().find(|o| o.id == id);
            if let Some(o) = last.as_ref().filter(|o| o.state != "running") {
                return o.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "operation {id} still running after {within:?}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn partition(c: &Client, table: &str) -> PartitionInfo {
    c.describe_table(table).await.unwrap().partitions[0].clone()
}

/// Waits until node `id` holds no key, no raft entry and no replica of the table.
pub(crate) async fn wait_gone(cl: &Cluster, id: u64, table_id: u64, p: u64) {
    let c = cl.client_of(id);
    wait_for(
        Duration::from_secs(30),
        "the old replica to be destroyed",
        || {
            let c = &c;
            async move {
                let s = c.engine_stats(table_id, &[p]).await.ok()?;
                (s.data_keys == 0
                    && s.raft_keys == 0
                    && s.replica_keys == 0
                    && s.open_replicas == 0)
                    .then_some(())
            }
        },
    )
    .await;
}

/// On 6 nodes, every replica of a partition moves to the three other nodes, one at a time,
/// while the chaos workload runs: the history is linearizable, nothing is lost, the
/// partition ends on the new nodes with a newer `conf_ver`, and the old nodes' engines hold
/// no key of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t87_moves_under_load() {
    let mut c = Cluster::start(3).await;
    for _ in 0..3 {
        c.join();
    }
    c.wait_live(6).await;
    let cl = c.client();
    let t = cl.create_table("moves", 3, vec![]).await.unwrap();
    let before = t.partitions[0].clone();
    let path = history_path("t87-moves.jsonl");
    let mut run = spawn_chaos(
        &c.endpoints(),
        &[
            "--table",
            "moves",
            "--duration",
            "20",
            "--clients",
            "6",
            "--keys",
            "16",
            "--seed",
            "87",
        ],
        &path,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = before.replicas.clone();
    let new: Vec<u64> = (1..=6).filter(|n| !old.contains(n)).collect();
    for (from, to) in old.iter().zip(&new) {
        let op = cl.move_replica(before.id, *from, *to).await.unwrap();
        let end = finished(&cl, op.id, Duration::from_secs(60)).await;
        assert_eq!(end.state, "done", "{end:?}");
    }
    chaos_passed(&mut run, &path).await;

    let after = partition(&cl, "moves").await;
    let mut got = after.replicas.clone();
    got.sort();
    assert_eq!(got, new);
    assert!(after.epoch.1 > before.epoch.1, "conf_ver {:?}", after.epoch);
    for n in old {
        wait_gone(&c, n, t.id, before.id).await;
    }
}

/// A move survives the crash of the metadata leader that drives it and of its target while
/// the target catches up: each move ends done or rolled back, the group keeps exactly three
/// voters, and every acknowledged key is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t88_moves_survive_crashes() {
    let mut c = Cluster::start(4).await;
    let cl = c.client();
    cl.create_table("crash", 3, vec![]).await.unwrap();
    let value = vec![b'v'; 1024];
    for i in 0..1500u32 {
        cl.put("crash", format!("k{i:05}").as_bytes(), &value)
            .await
            .unwrap();
    }
    // Kill -9 the metadata leader right after the move starts, restart it after a while.
    let p = partition(&cl, "crash").await;
    let spare = (1..=4).find(|n| !p.replicas.contains(n)).unwrap();
    let from = p.replicas[1];
    let op = cl.move_replica(p.id, from, spare).await.unwrap();
    let meta_leader = cl
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.metadata_leader)
        .unwrap()
        .id;
    c.kill9(meta_leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.restart(meta_leader);
    let end = finished(&cl, op.id, Duration::from_secs(90)).await;
    assert!(end.state == "done" || end.state == "rolled_back", "{end:?}");
    let p = partition(&cl, "crash").await;
    assert_eq!(p.replicas.len(), 3, "a joint configuration remained: {p:?}");

    // Kill -9 the target while it catches up; it restarts and the move goes on.
    let spare = (1..=4).find(|n| !p.replicas.contains(n)).unwrap();
    let from = p.replicas[2];
    let op = cl.move_replica(p.id, from, spare).await.unwrap();
    c.kill9(spare);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.restart(spare);
    let end = finished(&cl, op.id, Duration::from_secs(90)).await;
    assert!(end.state == "done" || end.state == "rolled_back", "{end:?}");
    let p = partition(&cl, "crash").await;
    assert_eq!(p.replicas.len(), 3, "a joint configuration remained: {p:?}");

    for i in (0..1500u32).step_by(7) {
        assert_eq!(
            cl.get("crash", format!("k{i:05}").as_bytes())
                .await
                .unwrap(),
            Some(value.clone()),
            "k{i:05} lost"
        );
    }
}

/// A node that was down while its replica moved away comes back: its stale replica never
/// takes leadership from the group and is destroyed, and the data is all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t89_node_back_after_its_replica_moved() {
    let mut c = Cluster::start(4).await;
    let cl = c.client();
    let t = cl.create_table("back", 3, vec![]).await.unwrap();
    for i in 0..200u32 {
        cl.put("back", format!("k{i:03}").as_bytes(), b"1")
            .await
            .unwrap();
    }
    let p = wait_for(Duration::from_secs(10), "a leader to be reported", || {
        let cl = &cl;
        async move { Some(partition(cl, "back").await).filter(|p| p.leader.is_some()) }
    })
    .await;
    let leader = p.leader.unwrap();
    let away = *p.replicas.iter().find(|n| **n != leader).unwrap();
    let spare = (1..=4).find(|n| !p.replicas.contains(n)).unwrap();
    c.kill9(away);
    let op = cl.move_replica(p.id, away, spare).await.unwrap();
    assert_eq!(
        finished(&cl, op.id, Duration::from_secs(60)).await.state,
        "done"
    );
    for i in 0..200u32 {
        cl.put("back", format!("k{i:03}").as_bytes(), b"2")
            .await
            .unwrap();
    }
    let before = partition(&cl, "back").await;
    c.restart(away);
    wait_gone(&c, away, t.id, p.id).await;
    let after = partition(&cl, "back").await;
    assert_eq!(after.replicas, before.replicas);
    assert!(!after.replicas.contains(&away));
    for i in 0..200u32 {
        assert_eq!(
            cl.get("back", format!("k{i:03}").as_bytes()).await.unwrap(),
            Some(b"2".to_vec())
        );
    }
}

/// The partition leader is killed -9 while a split of its partition is in flight: the
/// split either happened or not, the table's partitions still tile the key space, no write
/// is lost, and the same split can be asked for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t84_leader_killed_mid_split() {
    let mut c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("sk", 3, vec![]).await.unwrap();
    for i in 0..300u32 {
        cl.put("sk", format!("k{i:03}").as_bytes(), b"1")
            .await
            .unwrap();
    }
    let p = wait_for(Duration::from_secs(10), "a leader to be reported", || {
        let cl = &cl;
        async move { Some(partition(cl, "sk").await).filter(|p| p.leader.is_some()) }
    })
    .await;
    let leader = p.leader.unwrap();
    // Ask a node other than the leader, so the request outlives the kill.
    let asker = *p.replicas.iter().find(|n| **n != leader).unwrap();
    let url = format!("{}/v1/admin/split", c.http(asker));
    let split = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body(r#"{"table":"sk","key":"k150"}"#)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    c.kill9(leader);
    let status = split.await.unwrap();
    c.restart(leader);
    // Whatever the answer, the layout is whole and every key is there.
    let t = wait_for(Duration::from_secs(30), "the metadata to settle", || {
        let cl = &cl;
        async move {
            let t = cl.describe_table("sk").await.ok()?;
            let tiles = t.partitions.first().is_some_and(|p| p.start.is_empty())
                && t.partitions.last().is_some_and(|p| p.end.is_none())
                && t.partitions
                    .windows(2)
                    .all(|w| w[0].end.as_deref() == Some(w[1].start.as_slice()));
            tiles.then_some(t)
        }
    })
    .await;
    assert!(t.partitions.len() <= 2, "{t:?}");
    if status.as_ref().is_ok_and(|s| *s == 200) {
        assert_eq!(
            t.partitions.len(),
            2,
            "a split answered 200 but is not recorded"
        );
    }
    for i in 0..300u32 {
        assert_eq!(
            cl.get("sk", format!("k{i:03}").as_bytes()).await.unwrap(),
            Some(b"1".to_vec()),
            "k{i:03} lost"
        );
    }
    // Asked again: done now, or refused because it was done before.
    match cl.split("sk", b"k150").await {
        Ok((l, r)) => assert_eq!(r.start, b"k150".to_vec(), "{l:?} {r:?}"),
        Err(e) => assert_eq!(e.code, cairn_types::ErrorCode::Conflict, "{e}"),
    }
    let t = cl.describe_table("sk").await.unwrap();
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.partitions[1].start, b"k150".to_vec());
}

/// A metadata member is replaced by a new node while the chaos workload runs. The member
/// that leaves is the metadata leader (the hardest case: leadership moves first). No client
/// sees an error beyond retries and the history is linearizable; every node learns the new
/// members; the old member's metadata replica is destroyed; the new member votes (the
/// metadata group still serves with the old member and another founder down); and the old
/// member, restarted, finds the metadata group through the members it learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t83_metadata_member_replaced_under_load() {
    let mut c = Cluster::start(3).await;
    let new = c.join();
    c.wait_live(4).await;
    let cl = c.client();
    cl.create_table("mm", 3, vec![]).await.unwrap();
    let path = history_path("t83-metadata-move.jsonl");
    let mut run = spawn_chaos(
        &c.endpoints(),
        &[
            "--table",
            "mm",
            "--duration",
            "15",
            "--clients",
            "6",
            "--keys",
            "16",
            "--seed",
            "83",
        ],
        &path,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = cl
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.metadata_leader)
        .unwrap()
        .id;
    let op = cl.move_replica(0, old, new).await.unwrap();
    let end = finished(&cl, op.id, Duration::from_secs(60)).await;
    assert_eq!(end.state, "done", "{end:?}");
    chaos_passed(&mut run, &path).await;

    let mut members: Vec<u64> = (1..=3).filter(|n| *n != old).collect();
    members.push(new);
    let listed = cl
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.metadata_member)
        .map(|n| n.id)
        .collect::<Vec<_>>();
    assert_eq!(listed, members);
    // The old member's metadata log and state are gone.
    wait_gone(&c, old, 0, 0).await;

    // With the old member and one more founder down, the remaining founder and the new
    // member form a quorum: the new member votes.
    let down = members[0];
    c.kill9(old);
    c.kill9(down);
    let survivor = c.client_of(new).with_timeout(Duration::from_secs(30));
    let tables = survivor.list_tables().await.unwrap();
    assert!(tables.iter().any(|t| t.name == "mm"), "{tables:?}");

    // The old member restarts as a plain node and reaches the metadata group.
    c.restart(old);
    let back = c.client_of(old).with_timeout(Duration::from_secs(30));
    let tables = back.list_tables().await.unwrap();
    assert!(tables.iter().any(|t| t.name == "mm"), "{tables:?}");
    let listed = back
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.metadata_member)
        .map(|n| n.id)
        .collect::<Vec<_>>();
    assert_eq!(listed, members);
}

/// A move whose new replica can never catch up (its node refuses snapshots) is rolled back
/// after `--move-timeout`: the learner leaves the group, the partition keeps its voters and
/// its data, the target destroys its replica, and the next move of the partition works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t82_stuck_move_rolls_back() {
    let mut c = Cluster::start_with(3, &["--move-timeout", "5"]).await;
    let stuck = c.join_with(&["--fault-refuse-snapshots"]);
    let good = c.join();
    c.wait_live(5).await;
    let cl = c.client();
    let t = cl.create_table("rb", 3, vec![]).await.unwrap();
    for i in 0..100u32 {
        cl.put("rb", format!("k{i:03}").as_bytes(), b"1")
            .await
            .unwrap();
    }
    let p = partition(&cl, "rb").await;
    let from = p.replicas[1];
    let op = cl.move_replica(p.id, from, stuck).await.unwrap();
    let end = finished(&cl, op.id, Duration::from_secs(60)).await;
    assert_eq!(end.state, "rolled_back", "{end:?}");
    let after = partition(&cl, "rb").await;
    assert_eq!(after.replicas, p.replicas);
    assert!(
        after.epoch.1 > p.epoch.1,
        "the learner was never added: {after:?}"
    );
    wait_gone(&c, stuck, t.id, p.id).await;

    let op = cl.move_replica(p.id, from, good).await.unwrap();
    let end = finished(&cl, op.id, Duration::from_secs(60)).await;
    assert_eq!(end.state, "done", "{end:?}");
    for i in 0..100u32 {
        assert_eq!(
            cl.get("rb", format!("k{i:03}").as_bytes()).await.unwrap(),
            Some(b"1".to_vec())
        );
    }
}
