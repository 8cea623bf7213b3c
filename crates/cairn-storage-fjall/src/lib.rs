//! [`cairn_storage::Engine`] on fjall: one database per node with one keyspace per
//! [`Space`], so the Raft logs of all groups, the state machines' data and the node's own
//! bookkeeping share one journal, and one `persist` makes all of them durable (group commit).
//!
//! The database is opened with manual journal persistence on the database and on every
//! keyspace: nothing is made durable implicitly, only by [`Engine::sync`].

use cairn_storage::{Engine, Error, KeyValue, Op, Result, Space, WriteBatch};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::ops::Bound;
use std::path::Path;

/// A node's fjall database.
pub struct FjallEngine {
    db: Database,
    raft: Keyspace,
    data: Keyspace,
    local: Keyspace,
    /// Set by the first failed sync: the kernel may have dropped the pages it could not
    /// write, so no later sync may claim durability.
    sync_failed: std::sync::Mutex<Option<String>>,
}

fn err(e: fjall::Error) -> Error {
    Error::Engine(e.to_string())
}

/// Largest memtable of a keyspace before it is sealed and flushed. A keyspace may hold the
/// active one and a few sealed ones waiting for their flush.
const MEMTABLE_BYTES: u64 = 4 << 20;

/// Target size of a table written by compaction. While a compaction runs, lsm-tree keeps
/// every input block alive until its output table is finished (the index keys share the
/// blocks' buffers), so this bounds the memory a compaction holds; the default of 64 MiB
/// made a node's heap grow by that much when a large snapshot was installed.
const TABLE_BYTES: u64 = 8 << 20;

/// The block cache shared by all keyspaces.
const CACHE_BYTES: u64 = 32 << 20;

/// fsyncs directory `dir`, making the names created in it durable.
fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Engine(format!("cannot fsync directory {}: {e}", dir.display())))
}

/// Creates `dir` and any missing parents, fsyncing each parent after it gains an entry, so
/// the directory survives a power cut.
fn create_durable_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        create_durable_dir(p)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => {
            return Err(Error::Engine(format!(
                "cannot create {}: {e}",
                dir.display()
            )));
        }
    }
    match parent {
        Some(p) => fsync_dir(p),
        None => Ok(()),
    }
}

impl FjallEngine {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        create_durable_dir(dir)?;
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(CACHE_BYTES)
            .worker_threads(2)
            .open()
            .map_err(err)?;
        let open = |name: &str| {
            db.keyspace(name, || {
                // Small memtables: a node's memory must not grow with a burst of writes (a
                // snapshot being staged and installed writes a whole partition at once).
                let leveled =
                    fjall::compaction::Leveled::default().with_table_target_size(TABLE_BYTES);
                KeyspaceCreateOptions::default()
                    .manual_journal_persist(true)
                    .max_memtable_size(MEMTABLE_BYTES)
                    .compaction_strategy(std::sync::Arc::new(leveled))
            })
            .map_err(err)
        };
        let (raft, data, local) = (open("raft")?, open("data")?, open("local")?);
        // fjall creates a folder per keyspace but does not fsync the folder holding them;
        // after a power cut a keyspace created since would be gone with every write in it
        // (found by the power-cut tests' fault filesystem, which keeps only what was synced).
        let keyspaces = dir.join("keyspaces");
        if keyspaces.is_dir() {
            fsync_dir(&keyspaces)?;
        }
        fsync_dir(dir)?;
        Ok(Self {
            raft,
            data,
            local,
            db,
            sync_failed: std::sync::Mutex::new(None),
        })
    }

    fn space(&self, s: Space) -> &Keyspace {
        match s {
            Space::Raft => &self.raft,
            Space::Data => &self.data,
            Space::Local => &self.local,
        }
    }

    fn range(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        rev: bool,
    ) -> Result<Vec<KeyValue>> {
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let it = self.space(space).range::<&[u8], _>(range(start, end));
        if rev {
            Self::collect(it.rev(), limit)
        } else {
            Self::collect(it, limit)
        }
    }

    fn collect(iter: impl Iterator<Item = fjall::Guard>, limit: usize) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        for g in iter.take(limit) {
            let (k, v) = g.into_inner().map_err(err)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

fn range<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

impl Engine for FjallEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.space(space).get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        self.range(space, start, end, limit, false)
    }

    fn scan_rev(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        self.range(space, start, end, limit, true)
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = fjall::OwnedWriteBatch::with_capacity(self.db.clone(), batch.ops.len());
        for op in batch.ops {
            match op {
                Op::Put(s, k, v) => b.insert(self.space(s), k, v),
                Op::Delete(s, k) => b.remove(self.space(s), k),
            }
        }
        b.commit().map_err(err)
    }

    fn sync(&self) -> Result<()> {
        let mut failed = self
            .sync_failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(why) = &*failed {
            return Err(Error::Engine(format!(
                "an earlier fsync failed ({why}); nothing written since can be made durable"
            )));
        }
        self.db.persist(PersistMode::SyncAll).map_err(|e| {
            let e = err(e);
            *failed = Some(e.to_string());
            e
        })
    }

    fn read_view(&self) -> Result<std::sync::Arc<dyn cairn_storage::ReadView>> {
        Ok(std::sync::Arc::new(FjallView {
            snapshot: self.db.snapshot(),
            raft: self.raft.clone(),
            data: self.data.clone(),
            local: self.local.clone(),
        }))
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.db.disk_space().ok()
    }
}

/// A fjall snapshot across the three keyspaces.
struct FjallView {
    snapshot: fjall::Snapshot,
    raft: Keyspace,
    data: Keyspace,
    local: Keyspace,
}

impl cairn_storage::ReadView for FjallView {
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        use fjall::Readable;
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let ks = match space {
            Space::Raft => &self.raft,
            Space::Data => &self.data,
            Space::Local => &self.local,
        };
        let it = self.snapshot.range::<&[u8], _>(ks, range(start, end));
        FjallEngine::collect(it, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dirs = std::sync::Mutex::new(Vec::new());
        cairn_storage::conformance::run_all(&|| {
            let d = tempfile::tempdir().unwrap();
            let e = FjallEngine::open(d.path()).unwrap();
            dirs.lock().unwrap().push(d);
            Box::new(e)
        });
    }

    #[test]
    fn synced_writes_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let e = FjallEngine::open(d.path()).unwrap();
            let mut b = WriteBatch::new();
            b.put(Space::Raft, b"log".to_vec(), b"entry".to_vec());
            b.put(Space::Data, b"k".to_vec(), b"v".to_vec());
            e.write(b).unwrap();
            e.sync().unwrap();
        }
        let e = FjallEngine::open(d.path()).unwrap();
        assert_eq!(e.get(Space::Raft, b"log").unwrap(), Some(b"entry".to_vec()));
        assert_eq!(e.get(Space::Data, b"k").unwrap(), Some(b"v".to_vec()));
    }
}
