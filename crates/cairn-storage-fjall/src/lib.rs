//! [`cairn_storage::Engine`] on fjall: one database per node with one keyspace per
//! [`Space`], so the Raft logs of all groups, the state machines' data and the node's own
//! bookkeeping share one journal, and one fsync of it makes all of them durable (group commit).
//!
//! The database is opened with manual journal persistence on the database and on every
//! keyspace: writes are made durable by [`Engine::sync`] (fjall's own workers also fsync the
//! journal when they flush a memtable or start a new journal, which only adds durability).

use cairn_storage::{Engine, Error, KeyValue, Op, Result, Space, WriteBatch};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// A node's fjall database.
pub struct FjallEngine {
    db: Database,
    raft: Keyspace,
    data: Keyspace,
    local: Keyspace,
    /// The database's folder, which holds its journal files (`<id>.jnl`).
    dir: PathBuf,
    /// Held for the whole of a sync, so syncs run one at a time.
    sync_state: std::sync::Mutex<SyncState>,
}

/// What [`Engine::sync`] keeps between calls.
#[derive(Default)]
struct SyncState {
    /// Set by the first failed sync: the kernel may have dropped the pages it could not
    /// write, so no later sync may claim durability.
    failed: Option<String>,
    /// The newest journal file seen, by id, kept open for the next fsync.
    journal: Option<(u64, File)>,
}

/// The id of a journal file named `<id>.jnl`.
fn journal_id(name: &std::ffi::OsStr) -> Option<u64> {
    name.to_str()?.strip_suffix(".jnl")?.parse().ok()
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

/// Most journal bytes kept on disk before fjall flushes the memtables that still hold the
/// oldest journal. fjall starts a new 64 MiB journal at a flush once the current one is
/// full, and deletes a journal only when every keyspace has flushed what it holds. The
/// small `local` keyspace fills its memtable slowly, so with fjall's default of 512 MiB a
/// busy node kept seven or eight journals (about 450 MiB for a few MiB of data).
const JOURNAL_BYTES: u64 = 128 << 20;

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
            .max_journaling_size(JOURNAL_BYTES)
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
            dir: dir.to_path_buf(),
            sync_state: Default::default(),
        })
    }

    /// The journal that receives writes now, or a newer one.
    ///
    /// fjall names journals by increasing id and, before it creates journal `n + 1`,
    /// fsyncs journal `n` under its journal lock (`Writer::rotate`). So once the buffered
    /// bytes have been handed to the kernel, an fsync of the newest journal seen afterwards
    /// makes them durable: either they are in it, or in an older one that rotation synced.
    /// One case breaks that order: a rotation that fails after creating `n + 1` leaves
    /// fjall writing to `n` until it poisons itself. So whenever a sync takes up a newer
    /// journal, the one before it is fsynced too, and the folder (which names the new file).
    fn newest_journal<'a>(&self, state: &'a mut SyncState) -> Result<&'a File> {
        let io =
            |e: std::io::Error| Error::Engine(format!("journal of {}: {e}", self.dir.display()));
        let path = |id: u64| self.dir.join(format!("{id}.jnl"));
        let held = state.journal.as_ref().map(|(id, _)| *id);
        let mut newest = match held {
            Some(id) => id,
            None => {
                let mut max = None;
                for entry in std::fs::read_dir(&self.dir).map_err(io)? {
                    if let Some(id) = journal_id(&entry.map_err(io)?.file_name()) {
                        max = max.max(Some(id));
                    }
                }
                max.ok_or_else(|| Error::Engine(format!("no journal in {}", self.dir.display())))?
            }
        };
        while path(newest + 1).try_exists().map_err(io)? {
            newest += 1;
        }
        if held != Some(newest) {
            if let Some(before) = newest.checked_sub(1) {
                match File::open(path(before)) {
                    Ok(f) => f.sync_all().map_err(io)?,
                    // Deleted: fjall removes a journal only once its memtables are flushed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(e)),
                }
                fsync_dir(&self.dir)?;
            }
            // Read-only is enough: fsync flushes the file, whichever descriptor asks.
            let file = File::open(path(newest)).map_err(io)?;
            state.journal = Some((newest, file));
        }
        match &state.journal {
            Some((_, file)) => Ok(file),
            None => Err(Error::Engine("journal handle missing".into())),
        }
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

    /// Hands the journal's buffered bytes to the kernel under fjall's journal lock, then
    /// fsyncs outside it: `persist(SyncAll)` would hold that lock through the disk flush,
    /// and every write of every group (appends, applies) waits on it meanwhile, blocking a
    /// runtime worker thread.
    fn sync(&self) -> Result<()> {
        let mut state = self
            .sync_state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(why) = &state.failed {
            return Err(Error::Engine(format!(
                "an earlier fsync failed ({why}); nothing written since can be made durable"
            )));
        }
        let synced = self
            .db
            .persist(PersistMode::Buffer)
            .map_err(err)
            .and_then(|()| {
                let file = self.newest_journal(&mut state)?;
                file.sync_all()
                    .map_err(|e| Error::Engine(format!("fsync of the journal: {e}")))
            });
        if let Err(e) = &synced {
            state.failed = Some(e.to_string());
        }
        synced
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

    /// Incompressible bytes, a different run for each `i`: the journal compresses what it can.
    fn noise(i: u64, len: usize) -> Vec<u8> {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    }

    /// A keyspace written rarely must not keep old journals on disk: with fjall's default
    /// cap, one small write to `local` kept every journal after it (seven or eight, about
    /// 450 MiB, on a busy node). The cap makes fjall flush that keyspace and drop them.
    #[test]
    fn a_rarely_written_keyspace_does_not_pin_old_journals() {
        let d = tempfile::tempdir().unwrap();
        let journals = || {
            std::fs::read_dir(d.path())
                .unwrap()
                .filter_map(|e| journal_id(&e.unwrap().file_name()))
                .collect::<Vec<_>>()
        };
        let e = FjallEngine::open(d.path()).unwrap();
        let mut b = WriteBatch::new();
        b.put(Space::Local, b"vote".to_vec(), b"term 1".to_vec());
        e.write(b).unwrap();
        // 200 MiB through the Raft keyspace: past three 64 MiB journals, so past the cap.
        let chunk = 256 << 10;
        for i in 0..(200 << 20) / chunk as u64 {
            let mut b = WriteBatch::new();
            b.put(Space::Raft, i.to_be_bytes().to_vec(), noise(i, chunk));
            e.write(b).unwrap();
            e.sync().unwrap();
        }
        // fjall deletes journals on its worker threads after their memtables are flushed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while journals().len() > 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "old journals stayed on disk: {:?}",
                journals()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            journals().iter().all(|id| *id >= 2),
            "the oldest journals are still there: {:?}",
            journals()
        );
        drop(e);
        let e = FjallEngine::open(d.path()).unwrap();
        assert_eq!(
            e.get(Space::Local, b"vote").unwrap(),
            Some(b"term 1".to_vec())
        );
        assert_eq!(
            e.get(Space::Raft, &0u64.to_be_bytes()).unwrap(),
            Some(noise(0, chunk))
        );
    }

    /// The fsync happens outside fjall's journal lock on a handle of Cairn's own, so it must
    /// follow fjall when it starts a new journal: a sync that fsynced the sealed journal would
    /// leave the writes in the new one undurable. (The power-cut tests show what a missed
    /// fsync loses; the reopen here only shows nothing else went wrong, since closing the
    /// database syncs it.)
    #[test]
    fn sync_follows_the_journal_across_rotations() {
        let d = tempfile::tempdir().unwrap();
        let newest_on_disk = || {
            std::fs::read_dir(d.path())
                .unwrap()
                .filter_map(|e| journal_id(&e.unwrap().file_name()))
                .max()
                .unwrap()
        };
        let e = FjallEngine::open(d.path()).unwrap();
        let first = newest_on_disk();
        let value = |i: u64| noise(i, 256 << 10);
        let put = |i: u64| {
            let mut b = WriteBatch::new();
            b.put(Space::Data, i.to_be_bytes().to_vec(), value(i));
            e.write(b).unwrap();
            e.sync().unwrap();
        };
        // fjall starts a new journal at a memtable flush once the journal passes 64 MB, on
        // a worker thread of its own.
        let writes = 80 * 4;
        for i in 0..writes {
            put(i);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while newest_on_disk() == first {
            assert!(
                std::time::Instant::now() < deadline,
                "fjall never started a new journal: {:?}",
                std::fs::read_dir(d.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        put(writes);
        let synced = e
            .sync_state
            .lock()
            .unwrap()
            .journal
            .as_ref()
            .map(|(id, _)| *id);
        assert_eq!(
            synced,
            Some(newest_on_disk()),
            "the sync fsynced an older journal"
        );
        drop(e);
        let e = FjallEngine::open(d.path()).unwrap();
        for i in 0..=writes {
            let got = e.get(Space::Data, &i.to_be_bytes()).unwrap();
            assert_eq!(got, Some(value(i)), "write {i}");
        }
    }
}
