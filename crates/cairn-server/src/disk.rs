//! Free space on the node's data disk. Below the reserve (`--disk-reserve`) the node refuses
//! writes it would lead (`DISK_FULL`, HTTP 507, gRPC RESOURCE_EXHAUSTED) and log entries and
//! snapshots other leaders send it, and keeps serving reads; it takes writes again as soon
//! as space returns.
//!
//! Refusing early is the point: the engine's flushes and compactions and Raft's own entries
//! (votes, elections) still need room, and a write the engine fails half way with ENOSPC
//! stops the group that made it. Refusing an AppendEntries is always safe for Raft: the
//! leader sees a follower that does not answer, replicates to the others, and retries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often the free space is measured.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The node's view of its data disk.
pub(crate) struct DiskGuard {
    dir: PathBuf,
    reserve: u64,
    full: AtomicBool,
    free: AtomicU64,
    refused: AtomicU64,
}

impl DiskGuard {
    /// A guard of the disk holding `dir`, refusing writes below `reserve` free bytes
    /// (0 turns it off).
    pub(crate) fn new(dir: &Path, reserve: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            reserve,
            full: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
            refused: AtomicU64::new(0),
        }
    }

    /// Measures once, and logs a change between full and not full.
    pub(crate) fn check(&self, node: u64) {
        if self.reserve == 0 {
            return;
        }
        let free = match cairn_storage::disk::available(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot measure free space of {}: {e}", self.dir.display());
                return;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let full = free < self.reserve;
        let was = self.full.swap(full, Ordering::AcqRel);
        if full && !was {
            tracing::error!(
                node,
                free,
                reserve = self.reserve,
                "disk full: {} has {} free, below the reserve of {} (--disk-reserve); this node \
                 refuses writes until space is freed; reads go on",
                self.dir.display(),
                human(free),
                human(self.reserve)
            );
        } else if was && !full {
            tracing::warn!(
                node,
                free,
                "disk space is back ({} free): this node takes writes again",
                human(free)
            );
        }
    }

    /// Whether the disk is below the reserve.
    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Fails with `DISK_FULL` when the disk is below the reserve (and counts the refusal).
    pub(crate) fn check_writable(&self, node: u64) -> cairn_types::Result<()> {
        if !self.is_full() {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(cairn_types::Error::DiskFull(format!(
            "node {node} is out of disk space ({} free, below its reserve of {}); the write \
             was not applied. Free space on that node (or add disk, or move partitions off \
             it); writes resume by themselves, reads work meanwhile",
            human(self.free.load(Ordering::Relaxed)),
            human(self.reserve)
        )))
    }

    /// Free bytes at the last measure (`u64::MAX` before the first or when turned off).
    pub(crate) fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Writes refused for lack of space since the node started.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

fn human(b: u64) -> String {
    if b == u64::MAX {
        return "unknown".into();
    }
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Measures the disk every half second until `stop`.
pub(crate) async fn disk_loop(
    guard: std::sync::Arc<DiskGuard>,
    node: u64,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let g = guard.clone();
        // statvfs may block on a slow or hung filesystem: not on a runtime thread.
        let _ = tokio::task::spawn_blocking(move || g.check(node)).await;
        tokio::select! {
            biased;
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_the_reserve_and_resumes_above() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let g = DiskGuard::new(dir.path(), u64::MAX - 1);
        g.check(1);
        assert!(g.is_full(), "no disk has 16 EiB free");
        let e = g.check_writable(1).err().map(|e| e.code());
        assert_eq!(e, Some(cairn_types::ErrorCode::DiskFull));
        assert_eq!(g.refused(), 1);
        let g2 = DiskGuard::new(dir.path(), 1);
        g2.check(1);
        assert!(!g2.is_full());
        assert!(g2.check_writable(1).is_ok());
        let off = DiskGuard::new(dir.path(), 0);
        off.check(1);
        assert!(!off.is_full());
    }
}
