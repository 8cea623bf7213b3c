//! Linearizable reads of one replica share ReadIndex rounds.
//!
//! A round (the leader confirms with a quorum that it still leads, then waits until its
//! state machine has applied everything committed when it asked) answers every read that
//! was waiting when the round began. Reads that arrive while a round runs wait for the
//! next one, which starts as soon as the current one ends. A read is therefore never
//! answered by a round that began before it arrived, which is what keeps it linearizable;
//! under load, one round serves many reads instead of one quorum round trip each.

use cairn_types::{Error, Result};
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Default)]
struct State {
    /// A driver task is running rounds.
    running: bool,
    /// Reads waiting for the next round.
    waiting: Vec<oneshot::Sender<Result<()>>>,
}

/// Batches the read barriers of one replica.
#[derive(Default)]
pub(crate) struct ReadBatcher {
    state: Mutex<State>,
    /// Where the number of reads each round answers is recorded, if anywhere.
    sizes: Option<Histogram>,
}

impl ReadBatcher {
    /// A batcher recording the reads of each round in `sizes`.
    pub(crate) fn new(sizes: Histogram) -> Self {
        Self {
            state: Mutex::default(),
            sizes: Some(sizes),
        }
    }

    /// Waits for a ReadIndex round that begins after this call; `round` runs one (the
    /// batcher calls it from a task of its own, so a caller that gives up does not strand
    /// the others).
    pub(crate) async fn barrier<F, Fut>(self: &Arc<Self>, round: F) -> Result<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.waiting.push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.drive(round).await });
        }
        rx.await
            .map_err(|_| Error::Unavailable("the read round was abandoned; retry".into()))?
    }

    /// Runs rounds while reads wait, each for the reads waiting when it began.
    async fn drive<F, Fut>(&self, round: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        loop {
            let batch = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.waiting.is_empty() {
                    s.running = false;
                    return;
                }
                std::mem::take(&mut s.waiting)
            };
            if let Some(h) = &self.sizes {
                h.observe(batch.len() as f64);
            }
            let r = round().await;
            for tx in batch {
                let _ = tx.send(r.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Every read is answered after a whole round that began after it arrived, and reads
    /// that arrive during a round share the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_share_rounds_that_begin_after_they_arrive() {
        const READS: u64 = 200;
        let b = Arc::new(ReadBatcher::default());
        // A logical clock orders arrivals, round beginnings and ends, and answers.
        let clock = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(AtomicU64::new(0));
        let rounds: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let mut tasks = Vec::new();
        for i in 0..READS {
            let (b, clock, rounds) = (b.clone(), clock.clone(), rounds.clone());
            let arrivals = arrivals.clone();
            tasks.push(tokio::spawn(async move {
                let arrived = clock.fetch_add(1, Ordering::SeqCst);
                arrivals.fetch_add(1, Ordering::SeqCst);
                let (c2, r2, a2) = (clock.clone(), rounds.clone(), arrivals.clone());
                b.barrier(move || {
                    let (clock, rounds, arrivals) = (c2.clone(), r2.clone(), a2.clone());
                    async move {
                        let began = clock.fetch_add(1, Ordering::SeqCst);
                        // The first round lasts until every read has arrived, so the rest
                        // must share what follows.
                        while arrivals.load(Ordering::SeqCst) < READS {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        let ended = clock.fetch_add(1, Ordering::SeqCst);
                        rounds.lock().unwrap().push((began, ended));
                        Ok(())
                    }
                })
                .await
                .unwrap();
                let answered = clock.fetch_add(1, Ordering::SeqCst);
                let ok = rounds
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|&(b, e)| b > arrived && e < answered);
                assert!(
                    ok,
                    "read {i} was answered without a round begun after it arrived"
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // The first round, the one that served every read waiting at its end, and at most
        // one more for a read caught between arriving and queueing.
        let n = rounds.lock().unwrap().len();
        assert!((1..=3).contains(&n), "{n} rounds for {READS} reads");
    }

    /// A failed round fails the reads that waited for it, and the next read starts afresh.
    #[tokio::test]
    async fn a_failed_round_fails_its_reads() {
        let b = Arc::new(ReadBatcher::default());
        let r = b
            .barrier(|| async { Err(Error::Unavailable("no quorum".into())) })
            .await;
        assert_eq!(r, Err(Error::Unavailable("no quorum".into())));
        assert_eq!(b.barrier(|| async { Ok(()) }).await, Ok(()));
    }
}
