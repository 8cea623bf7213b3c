//! Snapshots the partition groups and purges their Raft logs.
//!
//! A partition group neither snapshots nor purges on its own (`cairn_raft::data_group_config`).
//! Its log reports itself past `--snapshot-logs` entries or `--snapshot-log-bytes` bytes
//! after the last snapshot ([`LogStore::with_bounds`]; bytes count too, as 600 writes of 1 MB
//! values to ten keys would otherwise leave 600 MiB per node, for 10 MB of data). The
//! keeper then asks openraft for a snapshot, waits for it, and purges the log down to a
//! fifth of the entry interval ([`log_entries_kept`]) or a quarter of the byte limit
//! ([`log_bytes_kept`]) behind it, whichever keeps less. A snapshot is a read view of the
//! engine, so this costs little.
//!
//! openraft's own purge defers only while entries are being sent, so a follower briefly
//! down, restarting or slow would find the entries it needs purged and be sent a whole
//! snapshot: for a big partition, a copy of all of it. A leader therefore purges no further
//! than its slowest replica has matched while the log after that is within
//! [`log_bytes_held`] (twice the byte limit), and purges the rest once the replica has
//! caught up; past that the replica is sent a snapshot (TiKV holds its Raft log for a
//! follower behind the same way, up to a size).
//!
//! [`LogStore::with_bounds`]: cairn_raft::LogStore::with_bounds
//! [`log_entries_kept`]: cairn_raft::log_entries_kept
//! [`log_bytes_kept`]: cairn_raft::log_bytes_kept
//! [`log_bytes_held`]: cairn_raft::log_bytes_held

use crate::core::{Core, Replica};
use cairn_raft::LogStore;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::metrics::counter::Counter;
use std::collections::{BTreeMap, HashMap};
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
    let keep = Keep {
        entries: cairn_raft::log_entries_kept(core.snapshot_logs),
        bytes: core.snapshot_log_bytes,
    };
    let counts = Counts {
        purges: core.metrics.size_purges(),
        holds: core.metrics.holds(),
    };
    // Dropped on return, which aborts what is still running.
    let mut running = tokio::task::JoinSet::new();
    let mut by_group = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            Some(_) = running.join_next(), if !running.is_empty() => {
                by_group.retain(|_, task: &mut tokio::task::AbortHandle| !task.is_finished());
            }
            log = full.recv() => {
                let Some(log) = log else { return };
                match core.replica(log.group()) {
                    Some(r) => {
                        let task = running.spawn(bound(r, keep, counts.clone()));
                        // A group's newer report supersedes its task still waiting (for a
                        // snapshot, or for a replica behind to catch up), so a follower
                        // down for long keeps one task per group, not one per report.
                        if let Some(old) = by_group.insert(log.group(), task) {
                            old.abort();
                        }
                    }
                    // Not (or no longer) hosted: let it report again should it be.
                    None => {
                        if let Some(task) = by_group.remove(&log.group()) {
                            task.abort();
                        }
                        log.rearm(0);
                    }
                }
            }
        }
    }
}

/// What the keeper keeps behind a snapshot.
#[derive(Clone, Copy)]
struct Keep {
    /// Entries ([`cairn_raft::log_entries_kept`]).
    entries: u64,
    /// The byte limit (`--snapshot-log-bytes`; 0: none), of which a quarter is kept and
    /// twice is held for a replica behind.
    bytes: u64,
}

/// What the keeper counts: purges by size asked of openraft, and purges held back for a
/// replica behind.
#[derive(Clone)]
struct Counts {
    purges: Counter,
    holds: Counter,
}

/// Snapshots `r` if it applied anything since its last snapshot, and purges its log down
/// to what `keep` says behind the snapshot, or on a leader no further than a replica behind
/// needs (see the module doc).
async fn bound(r: Replica, keep: Keep, counts: Counts) {
    let partition = r.log.group();
    // Whatever ends this task before it takes note of a snapshot (the group stopped, a
    // newer report, a panic), the log must be able to report again: nothing else would
    // snapshot or purge it.
    let mut rearm = Rearm(Some(r.log.clone()));
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
                "a snapshot to bound the log",
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
        return;
    };
    rearm.0 = None;
    r.log.rearm(snapshot);
    let by_entries = snapshot.checked_sub(keep.entries);
    let by_bytes = (keep.bytes > 0)
        .then(|| {
            r.log
                .purge_point(snapshot, cairn_raft::log_bytes_kept(keep.bytes))
        })
        .flatten();
    let Some(upto) = by_entries.max(by_bytes) else {
        return;
    };
    // Only purges the byte bound takes further than the entry bound count as by size.
    let size_purges = (by_bytes > by_entries).then_some(&counts.purges);
    let size = r.stats.measured_bytes(r.view.shared_desc().epoch.version);
    let held = held_bytes(keep.bytes, size);
    let allowed = |r: &Replica| {
        let slowest = slowest_match(r.raft.metrics().borrow_watched().replication.as_ref());
        hold_for(slowest, upto, held, r.log.first_sized(), |i| {
            r.log.bytes_after(i)
        })
    };
    let now = allowed(&r);
    if now >= Some(upto) {
        purge(&r, now, size_purges).await;
        return;
    }
    tracing::debug!(%partition, snapshot, upto, "holding the log for a replica behind");
    counts.holds.inc();
    purge(&r, now, size_purges).await;
    // Once the replica has caught up, purge the rest: an idle partition would otherwise
    // keep the held log until another interval's worth of writes. No timeout: the log's
    // next report replaces this task, and one that leaves off leading stops the wait.
    let caught_up = r
        .raft
        .wait(None)
        .metrics(
            |m| slowest_match(m.replication.as_ref()).is_none_or(|s| s >= Some(upto)),
            "the replicas to catch up past the purge point",
        )
        .await;
    if caught_up.is_ok() {
        purge(&r, allowed(&r), size_purges).await;
    }
}

/// Lets a log report itself again when dropped holding it (see [`bound`]).
struct Rearm(Option<LogStore>);

impl Drop for Rearm {
    fn drop(&mut self) {
        if let Some(log) = self.0.take() {
            log.rearm(0);
        }
    }
}

/// Purges `r`'s log through `upto` if that is past what is purged already, and counts the
/// purge in `counted` if given.
async fn purge(r: &Replica, upto: Option<u64>, counted: Option<&Counter>) {
    let purged = r
        .raft
        .metrics()
        .borrow_watched()
        .purged
        .as_ref()
        .map(|p| p.index);
    let Some(upto) = upto.filter(|u| Some(*u) > purged) else {
        return;
    };
    tracing::debug!(partition = %r.log.group(), upto, "purging the log");
    if r.raft.trigger().purge_log(upto).await.is_ok()
        && let Some(c) = counted
    {
        c.inc();
    }
}

/// On a leader, the index the slowest replica it replicates to (a follower, or a learner
/// being added) has matched: `Some(None)` when that is not known (a new leader knows no
/// replica's progress until it hears from it, a new learner has matched nothing); `None`
/// off a leader.
fn slowest_match(
    replication: Option<&BTreeMap<u64, Option<cairn_raft::typ::LogId>>>,
) -> Option<Option<u64>> {
    replication?
        .values()
        .map(|m| m.as_ref().map(|l| l.index))
        .min()
}

/// Bytes of log a leader holds for a replica behind under the byte limit `limit`:
/// [`cairn_raft::log_bytes_held`], but no more than the partition's own bytes (`partition`,
/// as last measured; not known counts as large), as a snapshot of it is then the smaller
/// catch-up (CockroachDB truncates a range's Raft log past the range's size the same way),
/// and no less than the quarter of the limit kept behind a snapshot anyway.
fn held_bytes(limit: u64, partition: Option<u64>) -> u64 {
    let most = cairn_raft::log_bytes_held(limit);
    partition.map_or(most, |p| p.clamp(cairn_raft::log_bytes_kept(limit), most))
}

/// How far a purge meant to reach `upto` may go without cutting off the slowest replica
/// (`slowest`, from [`slowest_match`]): no further than what it has matched while the log
/// after that (`bytes_after`) is within `held` bytes, so it catches up from the log. Past
/// that it is sent a snapshot, as openraft would; so is a replica behind the oldest entry
/// whose size is known (`first_sized`), which is behind a purge already or behind a
/// restart of this node, as far as the log can tell. `None` when nothing may be purged.
fn hold_for(
    slowest: Option<Option<u64>>,
    upto: u64,
    held: u64,
    first_sized: Option<u64>,
    bytes_after: impl Fn(u64) -> u64,
) -> Option<u64> {
    let Some(matched) = slowest else {
        return Some(upto); // Not a leader: no one reads this log.
    };
    let needs = matched.map_or(0, |m| m + 1);
    let sized = first_sized.is_some_and(|f| f <= needs);
    if matched >= Some(upto) || !sized || bytes_after(matched.unwrap_or(0)) > held {
        return Some(upto);
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::{held_bytes, hold_for};

    #[test]
    fn a_replica_is_held_for_no_further_than_the_partition_holds() {
        let mib = 1 << 20;
        // 32 MiB limit: 8 MiB kept behind a snapshot, at most 64 MiB held.
        let limit = 32 * mib;
        assert_eq!(held_bytes(limit, None), 64 * mib, "size not known");
        assert_eq!(held_bytes(limit, Some(20 * mib)), 20 * mib);
        assert_eq!(
            held_bytes(limit, Some(5 << 30)),
            64 * mib,
            "a large partition"
        );
        assert_eq!(held_bytes(limit, Some(1000)), 8 * mib, "a small one");
        assert_eq!(held_bytes(0, Some(1000)), 0, "no byte limit: nothing held");
    }

    #[test]
    fn a_replica_behind_holds_the_purge_within_the_held_bytes() {
        // Sizes known from index 0; 10 bytes per entry after index i: (100 - i) * 10.
        let after = |i: u64| 100u64.saturating_sub(i) * 10;
        let all = Some(0);
        // Off a leader, or with every replica past the purge point: purge as asked.
        assert_eq!(hold_for(None, 90, 500, all, after), Some(90));
        assert_eq!(hold_for(Some(Some(95)), 90, 500, all, after), Some(90));
        assert_eq!(hold_for(Some(Some(90)), 90, 500, all, after), Some(90));
        // A replica at 60 (400 bytes behind): purge only what it has.
        assert_eq!(hold_for(Some(Some(60)), 90, 500, all, after), Some(60));
        // One at 40 (600 bytes behind, past the 500 held): it is sent a snapshot.
        assert_eq!(hold_for(Some(Some(40)), 90, 500, all, after), Some(90));
        // One whose progress is not known: nothing is purged while the whole log is
        // within the held bytes.
        assert_eq!(hold_for(Some(None), 90, 1000, all, after), None);
        assert_eq!(hold_for(Some(None), 90, 500, all, after), Some(90));
        // Sizes known only from 61 (a purge through 60, or a restart): a replica at 60 is
        // still held for, one at 50 (or unknown) is behind that and gets a snapshot, as
        // the log cannot tell how far behind it is.
        let from61 = Some(61);
        assert_eq!(hold_for(Some(Some(60)), 90, 500, from61, after), Some(60));
        assert_eq!(hold_for(Some(Some(50)), 90, 500, from61, after), Some(90));
        assert_eq!(hold_for(Some(None), 90, 1000, from61, after), Some(90));
        // No sizes at all: purge as asked.
        assert_eq!(hold_for(Some(Some(60)), 90, 500, None, after), Some(90));
    }
}
