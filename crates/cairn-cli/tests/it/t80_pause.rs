use crate::cluster::{Cluster, wait_stale_value};
use std::time::{Duration, Instant};

/// SIGSTOP the leader of a partition longer than the election timeout: the others elect a
/// new leader and keep serving; after SIGCONT the old leader steps down, serves no stale
/// read, and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t80_paused_leader_is_replaced_and_catches_up() {
    let c = Cluster::start(3).await;
    let cl = c.client();
    cl.create_table("p", 3, vec![]).await.unwrap();
    cl.put("p", b"k", b"before").await.unwrap();
    let leader = c.leader_of("p").await;
    c.pause(leader);
    let paused_at = Instant::now();
    // Writes through the other nodes go on once a new leader is elected.
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    // Attempts against the paused leader hang until they time out: room for several.
    let via = c.client_of(others[0]).with_timeout(Duration::from_secs(30));
    via.put("p", b"k", b"during").await.unwrap();
    let took = paused_at.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "a write took {took:?} with the leader paused"
    );
    // Keep it paused past the election timeout either way, then wake it.
    let rest = Duration::from_secs(6).saturating_sub(paused_at.elapsed());
    tokio::time::sleep(rest).await;
    c.resume(leader);
    // A linearizable read through the old leader never returns the overwritten value.
    let old = c.client_of(leader);
    for _ in 0..20 {
        let got = old.get("p", b"k").await.unwrap();
        assert_eq!(
            got,
            Some(b"during".to_vec()),
            "a stale read through the resumed node"
        );
    }
    cl.put("p", b"k", b"after").await.unwrap();
    wait_stale_value(&old, "p", b"k", b"after", Duration::from_secs(30)).await;
}
