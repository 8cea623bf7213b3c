//! Concurrent writes to one replica share Raft entries.
//!
//! Each proposal costs the leader and every follower a log entry to append, replicate,
//! fsync and apply, whatever it carries. Writes that arrive while [`MAX_IN_FLIGHT`]
//! proposals of this replica are already on their way wait, and the next proposal carries
//! all of them as one [`Command::KvBatch`] entry. A lone write (the common case below
//! saturation) is proposed at once, as before, with no added wait.
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

type Waiter = (KvCommand, oneshot::Sender<Result<()>>);

#[derive(Default)]
struct State {
    /// Driver tasks running (each keeps one proposal in flight).
    drivers: usize,
    /// Writes waiting for a proposal.
    waiting: Vec<Waiter>,
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
        let start = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.waiting.push((cmd, tx));
            let start = s.drivers < MAX_IN_FLIGHT;
            if start {
                s.drivers += 1;
            }
            start
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.drive().await });
        }
        rx.await
            .map_err(|_| Error::Unavailable("the write's proposal was abandoned; retry".into()))?
    }

    /// Takes the next batch: the oldest waiting writes whose callers still wait, up to the
    /// limits. None when nothing waits: the driver then gives up its slot (`holding`).
    fn next_batch(&self, holding: &mut bool) -> Option<Vec<Waiter>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A caller that gave up (its deadline passed) has nobody to answer: skip it rather
        // than apply a write whose client already saw it fail and may have moved on.
        s.waiting.retain(|(_, tx)| !tx.is_closed());
        if s.waiting.is_empty() {
            // Under the same lock as the check, so a write queued now starts a new driver.
            s.drivers -= 1;
            *holding = false;
            return None;
        }
        let mut bytes = 0;
        let mut take = 0;
        for (cmd, _) in &s.waiting {
            if take == MAX_WRITES || (take > 0 && bytes >= MAX_BYTES) {
                break;
            }
            bytes += cmd.op_bytes();
            take += 1;
        }
        Some(s.waiting.drain(..take).collect())
    }

    /// Proposes batches while writes wait.
    async fn drive(&self) {
        // Should the task panic, its slot is given back, so later writes still start one.
        struct Slot<'a>(&'a WriteBatcher, bool);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                if self.1 {
                    let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
                    s.drivers -= 1;
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
            match self.propose(Command::KvBatch(cmds)).await {
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
