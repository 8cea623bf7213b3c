//! Bounds the partition Raft logs by bytes as well as by entries.
//!
//! openraft snapshots a group every `--snapshot-logs` entries and purges its log behind the
//! snapshot down to a fifth of that; with large values that is a lot of bytes (600 writes
//! of 1 MB values to ten keys left 600 MiB per node, for 10 MB of data). Each partition log
//! counts the bytes it holds after the last snapshot taken here ([`LogStore::with_byte_limit`]);
//! past `--snapshot-log-bytes` it reports itself, once. The keeper then asks openraft for a
//! snapshot, waits for it, and purges the log down to [`log_bytes_kept`] behind it. A
//! snapshot is a read view of the engine, so this costs little. A follower further behind
//! than the kept bytes catches up by snapshot; openraft defers a purge only while a
//! replication stream is sending the entries.
//!
//! [`LogStore::with_byte_limit`]: cairn_raft::LogStore::with_byte_limit
//! [`log_bytes_kept`]: cairn_raft::log_bytes_kept

use crate::core::{Core, Replica};
use cairn_raft::LogStore;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long the keeper waits for a snapshot it asked for (one of a group that is not
/// applying, say without a quorum, never comes) before it lets the group report again.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// Serves the reports of full logs until `stop`; each group is bounded in a task of its
/// own, so a group whose snapshot does not come holds up no other.
pub(crate) async fn keeper_loop(
    core: Arc<Core>,
    mut full: mpsc::UnboundedReceiver<LogStore>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = core.snapshot_log_bytes;
    let purges = core.metrics.size_purges();
    // Dropped on return, which aborts what is still running.
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            Some(_) = running.join_next(), if !running.is_empty() => {}
            log = full.recv() => {
                let Some(log) = log else { return };
                match core.replica(log.group()) {
                    Some(r) => {
                        running.spawn(bound(r, limit, purges.clone()));
                    }
                    // Not (or no longer) hosted: let it report again should it be.
                    None => log.rearm(0),
                }
            }
        }
    }
}

/// Snapshots `r` if it applied anything since its last snapshot, and purges its log down
/// to a quarter of `limit` bytes behind the snapshot.
async fn bound(r: Replica, limit: u64, purges: Counter) {
    let partition = r.log.group();
    let (before, applied) = {
        let m = r.raft.metrics();
        let m = m.borrow_watched();
        (
            m.snapshot.as_ref().map(|s| s.index),
            m.last_applied.as_ref().map(|a| a.index),
        )
    };
    let snapshot = if applied > before {
        if r.raft.trigger().snapshot().await.is_err() {
            return; // The group has stopped.
        }
        let taken = r
            .raft
            .wait(Some(SNAPSHOT_WAIT))
            .metrics(
                |m| m.snapshot.as_ref().map(|s| s.index) > before,
                "a snapshot to bound the log by bytes",
            )
            .await;
        match taken {
            Ok(m) => m.snapshot.as_ref().map(|s| s.index),
            Err(e) => {
                tracing::debug!(%partition, "no snapshot to bound the log: {e}");
                before
            }
        }
    } else {
        before
    };
    let Some(snapshot) = snapshot else {
        r.log.rearm(0);
        return;
    };
    r.log.rearm(snapshot);
    let Some(upto) = r
        .log
        .purge_point(snapshot, cairn_raft::log_bytes_kept(limit))
    else {
        return;
    };
    let purged = r
        .raft
        .metrics()
        .borrow_watched()
        .purged
        .as_ref()
        .map(|p| p.index);
    if Some(upto) > purged {
        tracing::debug!(%partition, snapshot, upto, "purging the log by size");
        if r.raft.trigger().purge_log(upto).await.is_ok() {
            purges.inc();
        }
    }
}
