use crate::cluster::{Cluster, wait_for};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Kill -9 the leader of a partition while a client writes: writes resume through the
/// other nodes within 10 s, no acknowledged write is lost, and the killed node, restarted
/// from its data dir alone, catches up so a stale read from it returns the latest values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_kill_partition_leader_during_writes() {
    let mut c = Cluster::start(3).await;
    let cl = Arc::new(c.client());
    cl.create_table("w", 3, vec![]).await.unwrap();
    let leader = wait_for(
        Duration::from_secs(10),
        "a leader to be reported",
        || async { cl.describe_table("w").await.ok()?.partitions[0].leader },
    )
    .await;

    // One writer, unique keys, running until told to stop (bounded to 2,000 writes).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (cl, stop) = (cl.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked: Vec<(usize, Instant)> = Vec::new();
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = format!("key{i:05}");
                if cl
                    .put("w", k.as_bytes(), format!("value-{i}").as_bytes())
                    .await
                    .is_ok()
                {
                    acked.push((i, Instant::now()));
                }
            }
            acked
        })
    };
    // Let some writes land, then kill the leader under the writer's feet.
    wait_for(
        Duration::from_secs(30),
        "writes before the kill",
        || async {
            let page = cl
                .list(
                    "w",
                    &cairn_client::ListOptions {
                        limit: 100,
                        ..Default::default()
                    },
                )
                .await
                .ok()?;
            (page.keys.len() >= 50).then_some(())
        },
    )
    .await;
    c.kill9(leader);
    let killed_at = Instant::now();
    // Keep writing until writes have clearly resumed (or 20 s have passed).
    while killed_at.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listed = cl
            .list(
                "w",
                &cairn_client::ListOptions {
                    limit: 10_000,
                    ..Default::default()
                },
            )
            .await;
        if listed.is_ok_and(|p| p.keys.len() >= 150) && killed_at.elapsed() > Duration::from_secs(1)
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let first_after = acked
        .iter()
        .map(|(_, t)| *t)
        .find(|t| *t > killed_at)
        .expect("no write was acknowledged after the kill");
    let gap = first_after - killed_at;
    eprintln!("first write acknowledged {gap:?} after the kill");
    assert!(
        gap < Duration::from_secs(10),
        "writes resumed only {gap:?} after the kill"
    );

    // Nothing acknowledged is lost.
    for (i, _) in &acked {
        let k = format!("key{i:05}");
        assert_eq!(
            cl.get("w", k.as_bytes()).await.unwrap(),
            Some(format!("value-{i}").into_bytes()),
            "{k}"
        );
    }

    // The restarted node catches up; its own stale reads then return the latest values.
    c.restart(leader);
    let own = c.client_of(leader);
    for (i, _) in &acked {
        let (k, v) = (format!("key{i:05}"), format!("value-{i}"));
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
