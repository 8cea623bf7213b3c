//! Concurrent writes to one replica share Raft entries.
//!
//! Each proposal costs the leader and every follower a log entry to append, replicate,
//! fsync and apply, whatever it carries. Writes that arrive while [`MAX_IN_FLIGHT`]
//! proposals of this replica are already on their way wait, and the next proposal carries
//! all of them as one [`Command::KvBatch`] entry; so do writes that arrive while a proposal
//! has been started but has not yet taken its writes, which keeps the operations of one
//! client `Batch` in one entry. A lone write (the common case below saturation) is proposed
//! at once, as before, with no added wait.
//!
//! A batch changes nothing a client relies on: every write in it keeps its own request id
//! (deduplicated on its own at apply), its own epoch and range check and its own answer; a
//! batch that does not commit fails each of its writes with the same error, and each is
//! retried like a single write would be. Nothing is atomic across the writes of a batch.

use cairn_raft::{Command, KvCommand, Reply, from_raft, typ};
use cairn_types::{Error, PartitionId, Result};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Proposals of one replica in flight at once before writes start to queue.
const MAX_IN_FLIGHT: usize = 2;
/// Most writes in one batch.
const MAX_WRITES: usize = 256;
/// A batch stops growing once its keys and values reach this many bytes (so an entry is at
/// most this plus one value).
const MAX_BYTES: usize = 64 * 1024;
/// Waiting writes past which a new one first drops those whose callers gave up.
const PRUNE_AT: usize = 4 * MAX_WRITES;

type Waiter = (KvCommand, oneshot::Sender<Result<()>>);

#[derive(Default)]
struct State {
    /// Driver tasks running (each keeps one proposal in flight).
    drivers: usize,
    /// A driver was started and has not taken its first batch yet: writes queue for it
    /// rather than start another. The operations of one client batch arrive one after
    /// another; starting a second driver on the second of them split the batch over two
    /// proposals (2,868 proposals for 1,965 client batches at 64 clients), each paying a
    /// proposal's fixed cost.
    starting: bool,
    /// Writes waiting for a proposal.
    waiting: Vec<Waiter>,
    /// Waiting writes past which [`State::queue`] prunes (doubling, so pruning a queue of
    /// live writes costs a constant per write).
    prune_at: usize,
}

impl State {
    /// Queues `w`; true if the caller must start a driver for it.
    fn queue(&mut self, w: Waiter) -> bool {
        // While proposals hang (a leader cut off from its quorum), callers give up and are
        // retried as new writes, each holding its value: drop the abandoned ones as they
        // pile up, not only when a proposal returns and the next batch is taken.
        if self.waiting.len() >= self.prune_at.max(PRUNE_AT) {
            self.waiting.retain(|(_, tx)| !tx.is_closed());
            self.prune_at = self.waiting.len() * 2;
        }
        self.waiting.push(w);
        let start = !self.starting && self.drivers < MAX_IN_FLIGHT;
        if start {
            self.drivers += 1;
            self.starting = true;
        }
        start
    }

    /// Takes the next batch for a driver: the oldest waiting writes whose callers still
    /// wait, up to the limits. None when nothing waits: the driver then ends, and its slot
    /// is given back under the same lock as the check, so a write queued next starts one.
    fn take(&mut self) -> Option<Vec<Waiter>> {
        // Whichever driver takes now takes everything queued so far; a write queued after
        // this may start the next one.
        self.starting = false;
        // A caller that gave up (its deadline passed) has nobody to answer: skip it rather
        // than apply a write whose client already saw it fail and may have moved on.
        self.waiting.retain(|(_, tx)| !tx.is_closed());
        if self.waiting.is_empty() {
            self.prune_at = 0;
            self.drivers -= 1;
            return None;
        }
        let mut bytes = 0;
        let mut take = 0;
        for (cmd, _) in &self.waiting {
            if take == MAX_WRITES || (take > 0 && bytes >= MAX_BYTES) {
                break;
            }
            bytes += cmd.op_bytes();
            take += 1;
        }
        Some(self.waiting.drain(..take).collect())
    }

    /// Gives back the slot of a driver that ended without [`State::take`] doing it.
    fn release(&mut self) {
        self.drivers -= 1;
        self.starting = false;
    }
}

/// Batches the puts and deletes proposed to one replica.
pub(crate) struct WriteBatcher {
    raft: typ::Raft,
    partition: PartitionId,
    proposals: crate::metrics::Proposals,
    state: Mutex<State>,
}

impl WriteBatcher {
    /// A batcher proposing to `raft`, the replica of `partition`.
    pub(crate) fn new(
        raft: typ::Raft,
        partition: PartitionId,
        proposals: crate::metrics::Proposals,
    ) -> Self {
        Self {
            raft,
            partition,
            proposals,
            state: Mutex::default(),
        }
    }

    /// Proposes `cmd` (a put or a delete) and answers once it is applied. The proposal runs
    /// in a task of its own, so a caller that gives up strands no other write.
    pub(crate) async fn write(self: &Arc<Self>, cmd: KvCommand) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let start = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue((cmd, tx));
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.drive().await });
        }
        rx.await
            .map_err(|_| Error::Unavailable("the write's proposal was abandoned; retry".into()))?
    }

    /// The next batch to propose; None ends the driver (see [`State::take`]).
    fn next_batch(&self, holding: &mut bool) -> Option<Vec<Waiter>> {
        let batch = self.state.lock().unwrap_or_else(|p| p.into_inner()).take();
        *holding = batch.is_some();
        batch
    }

    /// Proposes batches while writes wait.
    async fn drive(&self) {
        // Should the task panic, its slot is given back, so later writes still start one.
        struct Slot<'a>(&'a WriteBatcher, bool);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                if self.1 {
                    let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
                    s.release();
                }
            }
        }
        let mut slot = Slot(self, true);
        while let Some(mut batch) = self.next_batch(&mut slot.1) {
            self.proposals.carried(batch.len());
            if batch.len() == 1 {
                let Some((cmd, tx)) = batch.pop() else { break };
                let r = self.propose(Command::Kv(cmd)).await.and_then(|r| match r {
                    Reply::Kv(r) => r,
                    other => Err(unexpected(other)),
                });
                let _ = tx.send(r);
                continue;
            }
            let (cmds, txs): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            match self.propose(Command::KvBatch(cmds.into())).await {
                Ok(Reply::KvBatch(answers)) if answers.len() == txs.len() => {
                    for (tx, r) in txs.into_iter().zip(answers) {
                        let _ = tx.send(r);
                    }
                }
                Ok(other) => {
                    let e = unexpected(other);
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn propose(&self, cmd: Command) -> Result<Reply> {
        let written = self.raft.client_write(cmd).await;
        self.proposals.proposed(written.is_ok());
        written
            .map(|r| r.data)
            .map_err(|e| from_raft(self.partition, e))
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Internal(format!("unexpected reply {reply:?} to a write"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_raft::KvOp;

    fn put(key: &str) -> (Waiter, oneshot::Receiver<Result<()>>) {
        let (tx, rx) = oneshot::channel();
        let cmd = KvCommand {
            request_id: None,
            epoch: Default::default(),
            proposed_at_ms: 0,
            op: KvOp::Put {
                table: Default::default(),
                key: key.as_bytes().to_vec(),
                value: vec![0; 8],
            },
        };
        ((cmd, tx), rx)
    }

    fn keys(batch: &[Waiter]) -> Vec<String> {
        batch
            .iter()
            .map(|(c, _)| match &c.op {
                KvOp::Put { key, .. } => String::from_utf8_lossy(key).into_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn writes_abandoned_while_proposals_hang_do_not_pile_up() {
        let mut s = State::default();
        // Each attempt's caller gives up (its receiver dropped) and a retry queues anew,
        // while no proposal returns to take a batch.
        let mut live = Vec::new();
        for i in 0..10 * PRUNE_AT {
            let (w, rx) = put(&format!("k{i}"));
            s.queue(w);
            if i % 100 == 0 {
                live.push(rx);
            }
        }
        assert!(
            s.waiting.len() <= PRUNE_AT + live.len(),
            "{} waiting",
            s.waiting.len()
        );
        // Writes whose callers still wait are all kept.
        s.waiting.retain(|(_, tx)| !tx.is_closed());
        assert_eq!(s.waiting.len(), live.len());
    }

    #[test]
    fn writes_arriving_together_go_in_one_proposal() {
        let mut s = State::default();
        let mut rxs = Vec::new();
        let mut starts = 0;
        for k in ["a", "b", "c", "d"] {
            let (w, rx) = put(k);
            rxs.push(rx);
            starts += usize::from(s.queue(w));
        }
        // Only the first write starts a driver; the rest wait for it, not for a second one.
        assert_eq!(starts, 1);
        let batch = s.take().expect("four writes wait");
        assert_eq!(keys(&batch), ["a", "b", "c", "d"]);

        // A write after the driver took its batch starts the second proposal in flight...
        let (w, _rx) = put("e");
        assert!(s.queue(w));
        // ...and one queued while that driver has not taken yet waits for it.
        let (w, _rx2) = put("f");
        assert!(!s.queue(w));
        assert_eq!(keys(&s.take().expect("two wait")), ["e", "f"]);
        // Two proposals in flight: a third write waits for one of the drivers.
        let (w, _rx3) = put("g");
        assert!(!s.queue(w));
        assert_eq!(s.drivers, 2);
        assert_eq!(keys(&s.take().expect("one waits")), ["g"]);
        // Nothing left: the driver ends and gives its slot back.
        assert!(s.take().is_none());
        assert_eq!(s.drivers, 1);
        drop(rxs);
    }

    #[test]
    fn abandoned_writes_are_skipped_and_a_released_slot_starts_again() {
        let mut s = State::default();
        let (w, rx) = put("gone");
        assert!(s.queue(w));
        drop(rx);
        let (w, _rx) = put("kept");
        assert!(!s.queue(w));
        assert_eq!(keys(&s.take().expect("one caller still waits")), ["kept"]);
        // A driver that died (a panic) gives its slot back, and the next write starts one.
        s.release();
        assert_eq!(s.drivers, 0);
        let (w, _rx) = put("next");
        assert!(s.queue(w));
    }
}
