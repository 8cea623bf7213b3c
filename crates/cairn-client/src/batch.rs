//! Concurrent keyed operations bound for one node share a `Batch` call.
//!
//! An operation is queued for its node. If fewer than [`MAX_FLUSHERS`] batches are being
//! sent, it goes out at once, alone or with whatever else is queued; otherwise it waits
//! for the next batch. So one client alone pays one call per operation, and many
//! concurrent ones share calls: the saving in encoding, HTTP/2 framing and wake-ups, on the
//! client and on the node, is most of what one operation costs.
//!
//! The node answers each operation as soon as it is done, so an operation waiting out a
//! failover holds up no other; a batch still answering after [`HOLD`] no longer keeps the
//! next one from going.

use crate::Chan;
use cairn_proto::v1::{self as pb, kv_client::KvClient};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::Status;

/// Batches being sent to one node at a time (more wait and go together). One, not two:
/// at 64 clients the batches double in size and a read costs the servers a fifth less
/// (35.5 → 28.5 µs, 43 → 53 k reads/s; writes 139 → 111 µs, 11.1 → 14.1 k/s, p99 lower
/// too), and [`HOLD`] still bounds how long a slow batch delays the next.
const MAX_FLUSHERS: usize = 1;
/// Most operations in one batch.
const MAX_OPS: usize = 256;
/// Most key and value bytes in one batch (a batch still takes at least one operation).
const MAX_BYTES: usize = 1 << 20;
/// How long a batch that is still answering keeps the next one waiting.
const HOLD: Duration = Duration::from_millis(5);
/// Most times the sender yields, after a batch is answered, while the queue still grows.
/// Without it, the callers a batch answered resubmitted only after the next batch had left,
/// so at 64 clients two cohorts alternated, about 12 operations a batch out of 21 in
/// flight per node. Yielding makes it about 15: `bench/ab.sh`, 64 clients, medians, writes
/// 7,367 → 8,830 ops/s (173 → 149 server µs each, 5 pairs), reads 35.1k → 42.8k (3 pairs).
const MAX_YIELDS: usize = 8;

type Outcome = Result<pb::BatchResult, Status>;

struct Pending {
    op: pb::BatchOp,
    bytes: usize,
    tx: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct State {
    pending: Vec<Pending>,
    flushers: usize,
}

/// The batching queue of one node.
pub(crate) struct Batcher {
    channel: Chan,
    state: Mutex<State>,
}

impl Batcher {
    /// A queue sending over `channel`.
    pub(crate) fn new(channel: Chan) -> Self {
        Self {
            channel,
            state: Mutex::new(State::default()),
        }
    }

    /// Sends `op` (about `bytes` of keys and values) in the next batch and waits for its
    /// outcome; a refusal comes back as a Status carrying the node's error details.
    pub(crate) async fn submit(self: &Arc<Self>, op: pb::BatchOp, bytes: usize) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.pending.push(Pending { op, bytes, tx });
            let start = s.flushers < MAX_FLUSHERS;
            if start {
                s.flushers += 1;
            }
            start
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.flush().await });
        }
        let r = rx
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the batch carrying it was dropped")))?;
        match &r.error {
            Some(info) => Err(Status::with_details(
                tonic::Code::Unknown,
                info.message.clone(),
                info.encode_to_vec().into(),
            )),
            None => Ok(r),
        }
    }

    /// Sends batches while operations wait.
    async fn flush(self: Arc<Self>) {
        loop {
            let batch = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.pending.is_empty() {
                    s.flushers -= 1;
                    return;
                }
                take_batch(&mut s.pending)
            };
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let me = self.clone();
            tokio::spawn(async move {
                me.send(batch).await;
                let _ = done_tx.send(());
            });
            let _ = tokio::time::timeout(HOLD, done_rx).await;
            // The callers just answered are waking up, and most will submit again at once:
            // let them, so that they go in the next batch rather than the one after.
            let mut queued = self.queued();
            for _ in 0..MAX_YIELDS {
                tokio::task::yield_now().await;
                let now = self.queued();
                if now == queued {
                    break;
                }
                queued = now;
            }
        }
    }

    /// Operations waiting for the next batch.
    fn queued(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .len()
    }

    /// Sends one batch and hands each answer to its waiter as it arrives.
    async fn send(&self, batch: Vec<Pending>) {
        let mut ops = Vec::with_capacity(batch.len());
        let mut txs = Vec::with_capacity(batch.len());
        for p in batch {
            ops.push(p.op);
            txs.push(Some(p.tx));
        }
        let mut client = KvClient::new(self.channel.clone())
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);
        let mut stream = match client.batch(pb::BatchRequest { ops }).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                for tx in txs.into_iter().flatten() {
                    let _ = tx.send(Err(status.clone()));
                }
                return;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(r)) => {
                    if let Some(tx) = txs.get_mut(r.index as usize).and_then(Option::take) {
                        let _ = tx.send(Ok(r));
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    for tx in txs.iter_mut().filter_map(Option::take) {
                        let _ = tx.send(Err(status.clone()));
                    }
                    return;
                }
            }
        }
        for tx in txs.into_iter().flatten() {
            let _ = tx.send(Err(Status::unavailable(
                "the node ended the batch without answering this operation",
            )));
        }
    }
}

/// Takes the oldest operations whose callers still wait, up to [`MAX_OPS`] and
/// [`MAX_BYTES`] (at least one).
fn take_batch(pending: &mut Vec<Pending>) -> Vec<Pending> {
    // A caller that went away (a timeout around its call) has nobody to answer.
    pending.retain(|p| !p.tx.is_closed());
    let mut bytes = 0;
    let mut n = 0;
    for p in pending.iter() {
        if n == MAX_OPS || (n > 0 && bytes + p.bytes > MAX_BYTES) {
            break;
        }
        bytes += p.bytes;
        n += 1;
    }
    pending.drain(..n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(bytes: usize) -> (Pending, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let p = Pending {
            op: pb::BatchOp::default(),
            bytes,
            tx,
        };
        (p, rx)
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes_and_keep_order() {
        let mut waiting = Vec::new();
        let mut queue = |sizes: &[usize]| -> Vec<Pending> {
            sizes
                .iter()
                .map(|b| {
                    let (p, rx) = pending(*b);
                    waiting.push(rx);
                    p
                })
                .collect()
        };
        let mut q = queue(&[10; 300]);
        assert_eq!(take_batch(&mut q).len(), MAX_OPS);
        assert_eq!(q.len(), 300 - MAX_OPS);
        let mut q = queue(&[MAX_BYTES / 2, MAX_BYTES / 2, 1]);
        assert_eq!(take_batch(&mut q).len(), 2);
        assert_eq!(take_batch(&mut q).len(), 1);
        // One operation larger than the limit still goes, alone.
        let mut q = queue(&[MAX_BYTES * 2, 1]);
        assert_eq!(take_batch(&mut q).len(), 1);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn operations_whose_callers_went_away_are_not_sent() {
        let (gone, _) = pending(10);
        let (kept, _rx) = pending(10);
        let mut q = vec![gone, kept];
        assert_eq!(take_batch(&mut q).len(), 1);
        assert!(q.is_empty());
    }
}
