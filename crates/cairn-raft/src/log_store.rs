//! The Raft log of one group, kept in the node's shared engine, and the [`Syncer`] that makes
//! the appends of all groups durable with one fsync.

use crate::{TypeConfig, typ};
use cairn_storage::{Engine, SharedEngine, Space, WriteBatch, keys};
use cairn_types::PartitionId;
use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, mpsc};

type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Group commit: callers write their batches to the engine themselves (so they are
/// readable at once) and then ask the syncer for durability. One background thread drains
/// every pending request, calls [`Engine::sync`] once, and answers them all.
///
/// A failed fsync poisons the syncer for good: every later request fails too, and
/// [`Syncer::failure`] reports why. After a failed fsync the kernel may already have dropped
/// the dirty pages it could not write, so a retry that "succeeds" proves nothing
/// (PostgreSQL's fsync lesson); the node must stop instead of acknowledging anything more.
#[derive(Clone)]
pub struct Syncer {
    inner: SyncerKind,
    failure: Arc<tokio::sync::watch::Sender<Option<String>>>,
    metrics: crate::SyncMetrics,
}

#[derive(Clone)]
enum SyncerKind {
    Thread(mpsc::Sender<Done>),
    /// Syncs on the caller's thread: for a simulation, where a thread of its own would run
    /// outside simulated time.
    Inline(SharedEngine),
    /// Testing only (`--fault-skip-fsync`): log appends are acknowledged at once without
    /// syncing, so that the power-loss tests can show they catch a store that does this.
    /// Everything else (votes, replica records) still syncs through the inner syncer.
    Skip(mpsc::Sender<Done>),
}

impl Syncer {
    /// Starts the sync thread for `engine`. It stops when every `Syncer` clone is dropped.
    pub fn start(engine: SharedEngine) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Done>();
        let failure = Arc::new(tokio::sync::watch::channel(None).0);
        let report = failure.clone();
        let metrics = crate::SyncMetrics::default();
        let measure = metrics.clone();
        std::thread::Builder::new()
            .name("cairn-syncer".into())
            .spawn(move || {
                let mut poisoned: Option<String> = None;
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let started = std::time::Instant::now();
                    let result = match &poisoned {
                        Some(why) => Err(why.clone()),
                        None => engine.sync().map_err(|e| {
                            let why = format!(
                                "fsync failed ({e}): writes since the last good fsync may be \
                                 lost, and a retry cannot tell; the node stops rather than \
                                 acknowledge them. Check the disk and the kernel log, then \
                                 restart the node: it recovers from what is durable and \
                                 catches up from its peers"
                            );
                            tracing::error!("{why}");
                            poisoned = Some(why.clone());
                            report.send_replace(Some(why.clone()));
                            why
                        }),
                    };
                    if poisoned.is_none() {
                        measure.duration.observe(started.elapsed().as_secs_f64());
                        measure.batch.observe(waiting.len() as f64);
                    }
                    for done in waiting {
                        done(result.clone().map_err(io::Error::other));
                    }
                }
            })?;
        Ok(Self {
            inner: SyncerKind::Thread(tx),
            failure,
            metrics,
        })
    }

    /// A syncer without a thread: each request syncs `engine` at once, on the caller's
    /// thread (no group commit; meant for in-memory engines in simulation).
    pub fn inline(engine: SharedEngine) -> Self {
        Self {
            inner: SyncerKind::Inline(engine),
            failure: Arc::new(tokio::sync::watch::channel(None).0),
            metrics: Default::default(),
        }
    }

    /// Testing only: a syncer whose log appends are acknowledged without fsync (votes and
    /// the node's records still sync). A node running it loses acknowledged writes when its
    /// power is cut; the power-loss tests use it to prove that they notice.
    pub fn skip_fsync(engine: SharedEngine) -> io::Result<Self> {
        tracing::warn!(
            "--fault-skip-fsync: log appends are acknowledged WITHOUT fsync; a power cut \
             loses acknowledged data. Testing only"
        );
        let real = Self::start(engine)?;
        let SyncerKind::Thread(tx) = real.inner else {
            return Err(io::Error::other("the sync thread did not start"));
        };
        Ok(Self {
            inner: SyncerKind::Skip(tx),
            failure: real.failure,
            metrics: real.metrics,
        })
    }

    /// Runs `f`, engine work too long for an async worker (deleting a replica's rows,
    /// copying a snapshot's, counting a table's keys), on
    /// tokio's blocking threads, so that the node's other groups keep their heartbeats and
    /// requests meanwhile. In a simulation it runs at once on the caller's thread, whose
    /// time a thread of its own would run outside.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        match self.inner {
            SyncerKind::Inline(_) => f(),
            SyncerKind::Thread(_) | SyncerKind::Skip(_) => tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| io::Error::other(format!("engine work failed: {e}")))?,
        }
    }

    /// The fsync time and batch-size histograms of the sync thread.
    pub fn metrics(&self) -> &crate::SyncMetrics {
        &self.metrics
    }

    /// Why the syncer stopped making writes durable, once it has (a failed fsync).
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// Calls `done` once everything written to the engine before this call is durable
    /// (the log appends' path).
    pub fn request(&self, done: impl FnOnce(io::Result<()>) + Send + 'static) {
        match &self.inner {
            SyncerKind::Thread(tx) => Self::send(tx, Box::new(done)),
            SyncerKind::Inline(engine) => done(engine.sync().map_err(io::Error::other)),
            SyncerKind::Skip(_) => done(Ok(())),
        }
    }

    fn send(tx: &mpsc::Sender<Done>, done: Done) {
        if let Err(mpsc::SendError(done)) = tx.send(done) {
            done(Err(io::Error::other("the sync thread has stopped")));
        }
    }

    /// Waits until everything written before this call is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        match &self.inner {
            SyncerKind::Thread(t) | SyncerKind::Skip(t) => Self::send(t, done),
            SyncerKind::Inline(engine) => done(engine.sync().map_err(io::Error::other)),
        }
        rx.await
            .map_err(|_| io::Error::other("the sync thread has stopped"))?
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(io::Error::other)
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt record under key {key:02x?}: {e}"),
        )
    })
}

pub(crate) fn read<T: DeserializeOwned>(
    engine: &dyn Engine,
    space: Space,
    key: &[u8],
) -> io::Result<Option<T>> {
    match engine.get(space, key).map_err(io::Error::other)? {
        Some(b) => decode(key, &b).map(Some),
        None => Ok(None),
    }
}

/// Most encoded bytes of entries in one AppendEntries (beyond its first entry, which goes
/// whole). openraft caps a message by entry count only (300), so a follower catching up on
/// 1 MiB values would be sent 300 MiB at once: more than it can take in within the
/// message's timeout, resent whole each time. TiKV caps its messages at 1 MiB the same way.
pub const MAX_APPEND_BYTES: u64 = 1 << 20;

/// Rows a byte-capped read takes from the engine at a time.
const CAPPED_READ_ROWS: usize = 16;

/// Most entries a group keeps in its [`LogCache`].
const CACHE_ENTRIES: usize = 512;
/// Most encoded bytes a group keeps in its [`LogCache`] (1,000 groups: 256 MiB at most).
const CACHE_BYTES: usize = 256 << 10;

/// The newest entries of a group's log, as appended, so that replication to followers and
/// apply do not read back from the engine and decode what was just written (each entry is
/// read once per follower and once more to apply). It always holds a contiguous run of
/// indexes that matches the log in the engine: appends extend it, truncation and purge cut
/// it, and a read it cannot serve whole goes to the engine.
#[derive(Default)]
struct LogCache {
    entries: VecDeque<(typ::Entry, usize)>,
    bytes: usize,
}

impl LogCache {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    fn push(&mut self, entry: typ::Entry, size: usize) {
        if self.next_index() != Some(entry.log_id.index) {
            // Not contiguous (the first append, or one after a read-only restart): start over.
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > CACHE_ENTRIES || self.bytes > CACHE_BYTES {
            match self.entries.pop_front() {
                Some((_, n)) => self.bytes -= n,
                None => break,
            }
        }
    }

    /// Drops entries from index `from` on.
    fn truncate(&mut self, from: u64) {
        while let Some((e, n)) = self.entries.back() {
            if e.log_id.index < from {
                break;
            }
            self.bytes -= n;
            self.entries.pop_back();
        }
    }

    /// Drops entries up to and including index `upto`.
    fn purge(&mut self, upto: u64) {
        while let Some((e, n)) = self.entries.front() {
            if e.log_id.index > upto {
                break;
            }
            self.bytes -= n;
            self.entries.pop_front();
        }
    }

    /// Entries `start..end` if the cache holds every one of them.
    fn get(&self, start: u64, end: u64) -> Option<Vec<typ::Entry>> {
        let (first, next) = (self.first()?, self.next_index()?);
        if start < first || end > next || start > end {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// Most entry sizes a group's [`LogSizes`] remembers (16 bytes each). Forgetting the
/// oldest ones (only with a very large `--snapshot-logs`) makes the bound count fewer bytes.
const SIZES_KEPT: usize = 1 << 16;

/// Where a log past its entry or byte bound reports itself: the node's log keeper.
pub type LogFull = tokio::sync::mpsc::UnboundedSender<LogStore>;

/// When a group's log is due a snapshot and a purge: after `interval` entries, or `limit`
/// bytes, past the last snapshot (bytes count too, as 600 writes of 1 MB values to ten keys
/// would otherwise leave 600 MiB per node, for 10 MB of data). It keeps the encoded size of
/// each entry appended by this process, for the byte bound and the keeper's purge points.
///
/// `mark` is the newest snapshot the keeper took (0 before the first), and `after_mark`
/// the bytes the log holds after it. Once the entries after `mark` pass `interval`, or
/// `after_mark` passes `limit`, and in either case by half a bound more than at the last
/// rearm (so a log that holds entries no snapshot can cover yet, say a follower's not yet
/// committed, reports once per half bound appended rather than on every append), the log
/// reports itself once on `full`. The keeper snapshots the group, calls
/// [`LogStore::rearm`] and purges. Entries written before a restart have no size here: the
/// entry bound still covers them (the mark starts at 0, so a restarted log longer than the
/// interval reports on its first append).
#[derive(Default)]
struct LogSizes {
    sizes: VecDeque<(u64, u64)>,
    mark: u64,
    after_mark: u64,
    /// `after_mark` at the last rearm.
    floor: u64,
    limit: u64,
    /// Entries between snapshots (0: no entry bound).
    interval: u64,
    /// The newest index appended.
    last: u64,
    /// Entries after `mark` at the last rearm.
    entries_floor: u64,
    sent: bool,
    full: Option<LogFull>,
}

impl LogSizes {
    fn drop_back(&mut self, from: u64) {
        self.last = self.last.min(from.saturating_sub(1));
        while let Some(&(i, n)) = self.sizes.back() {
            if i < from {
                break;
            }
            if i > self.mark {
                self.after_mark -= n;
            }
            self.sizes.pop_back();
        }
    }

    /// Records an appended entry; true if the log must report itself now.
    fn push(&mut self, index: u64, size: u64) -> bool {
        if self.limit == 0 && self.interval == 0 {
            return false;
        }
        self.drop_back(index);
        if self.sizes.len() == SIZES_KEPT
            && let Some((i, n)) = self.sizes.pop_front()
            && i > self.mark
        {
            self.after_mark -= n;
        }
        self.sizes.push_back((index, size));
        if index > self.mark {
            self.after_mark += size;
        }
        self.last = index;
        let due = self.limit.max(self.floor.saturating_add(self.limit / 2));
        let by_bytes = self.limit > 0 && self.after_mark > due;
        let due = (self.interval).max(self.entries_floor.saturating_add(self.interval / 2));
        let by_entries = self.interval > 0 && index.saturating_sub(self.mark) > due;
        let full = (by_bytes || by_entries) && !self.sent;
        self.sent |= full;
        full
    }

    fn purge(&mut self, upto: u64) {
        while let Some(&(i, n)) = self.sizes.front() {
            if i > upto {
                break;
            }
            if i > self.mark {
                self.after_mark -= n;
            }
            self.sizes.pop_front();
        }
    }

    fn rearm(&mut self, mark: u64) {
        self.mark = self.mark.max(mark);
        self.after_mark = self
            .sizes
            .iter()
            .rev()
            .take_while(|(i, _)| *i > self.mark)
            .map(|(_, n)| n)
            .sum();
        self.floor = self.after_mark;
        self.entries_floor = self.last.saturating_sub(self.mark);
        self.sent = false;
    }

    /// The newest index to purge so that the entries kept up to `snapshot` hold at most
    /// `keep` bytes; None if they already do (or their sizes are not known).
    fn purge_point(&self, snapshot: u64, keep: u64) -> Option<u64> {
        let mut kept = 0;
        for &(i, n) in self.sizes.iter().rev().skip_while(|(i, _)| *i > snapshot) {
            kept += n;
            if kept > keep {
                return Some(i);
            }
        }
        None
    }

    /// The end (exclusive, at most `end`) of a read from `start` whose entries of known size
    /// hold at most `budget` bytes; it always takes the entry at `start`.
    fn end_within(&self, start: u64, end: u64, budget: u64) -> u64 {
        let from = self.sizes.partition_point(|(i, _)| *i < start);
        let mut total = 0u64;
        for &(i, n) in self.sizes.range(from..) {
            if i >= end {
                break;
            }
            total = total.saturating_add(n);
            if total > budget && i > start {
                return i;
            }
        }
        end
    }

    /// Whether every entry from `start` to `end` (exclusive) has a recorded size: not when
    /// some were written before this process opened the log, nor when some were just
    /// written and their sizes are not recorded yet.
    fn sized(&self, start: u64, end: u64) -> bool {
        self.sizes.front().is_some_and(|(i, _)| *i <= start)
            && self
                .sizes
                .back()
                .is_some_and(|(i, _)| i.saturating_add(1) >= end)
    }

    /// Bytes of the entries after `index` (those whose size is known).
    fn bytes_after(&self, index: u64) -> u64 {
        self.sizes
            .iter()
            .rev()
            .take_while(|(i, _)| *i > index)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The log of one group; also its log reader.
#[derive(Clone)]
pub struct LogStore {
    group: PartitionId,
    engine: SharedEngine,
    syncer: Syncer,
    cache: Arc<Mutex<LogCache>>,
    sizes: Arc<Mutex<LogSizes>>,
}

impl LogStore {
    /// The index of the oldest (or, with `newest`, the newest) entry in the log, if any.
    fn edge_index(&self, newest: bool) -> io::Result<Option<u64>> {
        let first = keys::raft_log(self.group, 0);
        let last = keys::raft_log(self.group, u64::MAX);
        let rows = if newest {
            self.engine.scan_rev(Space::Raft, &first, Some(&last), 1)
        } else {
            self.engine.scan(Space::Raft, &first, Some(&last), 1)
        }
        .map_err(io::Error::other)?;
        Ok(rows.first().and_then(|(k, _)| keys::raft_log_index(k)))
    }
    /// The log of `group` in `engine`.
    pub fn new(group: PartitionId, engine: SharedEngine, syncer: Syncer) -> Self {
        Self {
            group,
            engine,
            syncer,
            cache: Default::default(),
            sizes: Default::default(),
        }
    }

    /// Bounds the log: once it holds more than `entries` entries or `bytes` bytes after the
    /// last snapshot [`Self::rearm`] was told of, it sends itself on `full` (once, until the
    /// next rearm). 0 turns a bound off.
    pub fn with_bounds(self, entries: u64, bytes: u64, full: LogFull) -> Self {
        {
            let mut s = self.sizes();
            s.interval = entries;
            s.limit = bytes;
            s.full = Some(full);
        }
        self
    }

    /// The group whose log this is.
    pub fn group(&self) -> PartitionId {
        self.group
    }

    /// Takes note of a snapshot at `snapshot` (0: none new) and lets the bounds fire again.
    pub fn rearm(&self, snapshot: u64) {
        self.sizes().rearm(snapshot);
    }

    /// Bytes of the entries after `index` whose size this process recorded.
    pub fn bytes_after(&self, index: u64) -> u64 {
        self.sizes().bytes_after(index)
    }

    /// The oldest entry whose size this process recorded (none are before a restart, a
    /// purge, or the last 65,536 entries), if any.
    pub fn first_sized(&self) -> Option<u64> {
        self.sizes().sizes.front().map(|(i, _)| *i)
    }

    /// The newest index to purge so that the entries kept up to `snapshot` hold at most
    /// `keep` bytes, if some must go (counting only entries appended since this process
    /// opened the log).
    pub fn purge_point(&self, snapshot: u64, keep: u64) -> Option<u64> {
        self.sizes().purge_point(snapshot, keep)
    }

    /// Reads the stored entries from `start` to `end` (exclusive). With a `budget` it stops
    /// before the entry that takes their stored bytes past it (the first entry always comes),
    /// scanning a few rows at a time so that large entries past it are never read.
    fn read_stored(
        &self,
        start: u64,
        end: u64,
        budget: Option<u64>,
    ) -> Result<Vec<typ::Entry>, io::Error> {
        let rows_per_scan = if budget.is_some() {
            CAPPED_READ_ROWS
        } else {
            usize::MAX
        };
        let end_key = keys::raft_log(self.group, end);
        let (mut out, mut bytes, mut next) = (Vec::new(), 0u64, start);
        while next < end {
            let rows = self
                .engine
                .scan(
                    Space::Raft,
                    &keys::raft_log(self.group, next),
                    Some(&end_key),
                    rows_per_scan,
                )
                .map_err(io::Error::other)?;
            let Some(last) = rows.last().and_then(|(k, _)| keys::raft_log_index(k)) else {
                break;
            };
            for (k, v) in &rows {
                bytes = bytes.saturating_add(v.len() as u64);
                if budget.is_some_and(|b| bytes > b) && !out.is_empty() {
                    return Ok(out);
                }
                out.push(decode(k, v)?);
            }
            if rows.len() < rows_per_scan {
                break;
            }
            next = last.saturating_add(1);
        }
        Ok(out)
    }

    fn sizes(&self) -> std::sync::MutexGuard<'_, LogSizes> {
        self.sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LogCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, batch: WriteBatch) -> io::Result<()> {
        self.engine.write(batch).map_err(io::Error::other)
    }

    /// Deletes every log entry, the vote and the log metadata of the group.
    pub fn destroy(&self) -> io::Result<u64> {
        *self.cache() = LogCache::default();
        {
            let mut s = self.sizes();
            s.sizes.clear();
            (s.mark, s.after_mark, s.floor, s.sent) = (0, 0, 0, false);
            (s.last, s.entries_floor) = (0, 0);
        }
        let (start, end) = keys::raft_group_range(self.group);
        cairn_storage::delete_range(&*self.engine, Space::Raft, &start, end.as_deref(), 1024)
            .map_err(io::Error::other)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<typ::Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(end) = end
            && let Some(hit) = self.cache().get(start, end)
        {
            return Ok(hit);
        }
        self.read_stored(start, end.unwrap_or(u64::MAX), None)
    }

    /// Entries from `start` holding at most [`MAX_APPEND_BYTES`] (at least one): what
    /// replication sends in one message.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<typ::Entry>, io::Error> {
        let (end, sized) = {
            let s = self.sizes();
            let end = s.end_within(start, end, MAX_APPEND_BYTES);
            (end, s.sized(start, end))
        };
        if let Some(hit) = self.cache().get(start, end) {
            return Ok(hit);
        }
        // Entries of no recorded size (written before this process opened the log, or a
        // moment ago) are counted by their stored bytes as they are read instead.
        self.read_stored(start, end, (!sized).then_some(MAX_APPEND_BYTES))
    }

    async fn read_vote(&mut self) -> Result<Option<typ::Vote>, io::Error> {
        read(&*self.engine, Space::Raft, &keys::raft_vote(self.group))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<typ::LogId> =
            read(&*self.engine, Space::Raft, &keys::raft_purged(self.group))?;
        let first = keys::raft_log(self.group, 0);
        let last = keys::raft_log(self.group, u64::MAX);
        let newest = self
            .engine
            .scan_rev(Space::Raft, &first, Some(&last), 1)
            .map_err(io::Error::other)?;
        let last_log_id = match newest.first() {
            Some((k, v)) => Some(decode::<typ::Entry>(k, v)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &typ::Vote) -> Result<(), io::Error> {
        let mut b = WriteBatch::new();
        b.put(Space::Raft, keys::raft_vote(self.group), encode(vote)?);
        self.write(b)?;
        self.syncer.sync().await
    }

    // No `save_committed`/`read_committed`: persisting the committed id cost an engine write
    // (a journal write syscall) per commit on every replica, and it only saves a restarted
    // replica from waiting for its leader before applying; a lost or absent committed id is
    // never a safety issue (state-machine writes are not fsynced either, and a restarted
    // node never restores leadership).

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = typ::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::new();
        let mut appended = Vec::new();
        for e in entries {
            let bytes = encode(&e)?;
            let size = bytes.len();
            b.put(
                Space::Raft,
                keys::raft_log(self.group, e.log_id.index),
                bytes,
            );
            appended.push((e, size));
        }
        if let Err(e) = self.write(b) {
            // The engine may hold part of the batch: make the cache hold none of it.
            if let Some((first, _)) = appended.first() {
                self.cache().truncate(first.log_id.index);
            }
            return Err(e);
        }
        let mut full = false;
        {
            let mut sizes = self.sizes();
            for (e, size) in &appended {
                full |= sizes.push(e.log_id.index, *size as u64);
            }
            if full && let Some(tx) = &sizes.full {
                let _ = tx.send(self.clone());
            }
        }
        {
            let mut cache = self.cache();
            for (e, size) in appended {
                cache.push(e, size);
            }
        }
        self.syncer.request(move |r| callback.io_completed(r));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<typ::LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.cache().truncate(from);
        self.sizes().drop_back(from);
        let Some(last) = self.edge_index(true)? else {
            return Ok(());
        };
        // Deleting newest-first keeps the log free of holes if we stop half way. The keys
        // are computed (the log has no holes), so no entry is read back only to go.
        let mut b = WriteBatch::new();
        for i in (from..=last).rev() {
            b.delete(Space::Raft, keys::raft_log(self.group, i));
        }
        self.write(b)
    }

    async fn purge(&mut self, log_id: typ::LogId) -> Result<(), io::Error> {
        self.cache().purge(log_id.index);
        self.sizes().purge(log_id.index);
        let mut b = WriteBatch::new();
        b.put(Space::Raft, keys::raft_purged(self.group), encode(&log_id)?);
        // Computed keys from the oldest entry on: reading every purged entry back would
        // fill the block cache with data about to be deleted. The oldest entry is the one
        // after the last purge (a purge deletes up to its id in the same batch that records
        // it); only a log never purged needs a scan, which would otherwise walk over the
        // tombstones of every entry purged before.
        let previous: Option<typ::LogId> =
            read(&*self.engine, Space::Raft, &keys::raft_purged(self.group))?;
        let first = match previous {
            Some(p) => Some(p.index + 1),
            None => self.edge_index(false)?,
        };
        // Nothing past the newest entry: a snapshot far ahead of a short log must not
        // write a tombstone for every index it skipped.
        let last = match first {
            Some(_) => self.edge_index(true)?.map(|l| l.min(log_id.index)),
            None => None,
        };
        if let (Some(first), Some(last)) = (first, last) {
            for i in first..=last {
                b.delete(Space::Raft, keys::raft_log(self.group, i));
            }
        }
        self.write(b)
    }
}

#[cfg(test)]
mod tests {
    use super::LogSizes;

    type Reports = tokio::sync::mpsc::UnboundedReceiver<super::LogStore>;

    /// A log bounded by `limit` bytes only.
    fn sizes(limit: u64) -> (LogSizes, Reports) {
        entries_and_sizes(0, limit)
    }

    /// A log bounded by `interval` entries and by `limit` bytes (0: no byte bound).
    fn entries_and_sizes(interval: u64, limit: u64) -> (LogSizes, Reports) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let s = LogSizes {
            limit,
            interval,
            full: Some(tx),
            ..Default::default()
        };
        (s, rx)
    }

    #[test]
    fn the_limit_fires_once_per_snapshot() {
        let (mut s, _rx) = sizes(100);
        assert!(!s.push(1, 60));
        assert!(s.push(2, 60), "120 bytes since the mark passes 100");
        assert!(!s.push(3, 60), "already sent: not again before a rearm");
        s.rearm(2);
        assert_eq!(s.after_mark, 60, "only entry 3 is after the snapshot");
        assert!(!s.push(4, 30));
        assert!(s.push(5, 30), "60 + 30 + 30 passes 100 again");
    }

    #[test]
    fn truncation_and_purge_take_their_bytes_back() {
        let (mut s, _rx) = sizes(1000);
        for i in 1..=5 {
            s.push(i, 100);
        }
        assert_eq!(s.after_mark, 500);
        // A new leader overwrote 4 and 5.
        s.push(4, 10);
        assert_eq!(s.after_mark, 310);
        s.drop_back(4);
        assert_eq!(s.after_mark, 300);
        s.purge(2);
        assert_eq!(s.after_mark, 100);
        assert_eq!(s.sizes.front().map(|e| e.0), Some(3));
    }

    #[test]
    fn the_purge_point_keeps_at_most_the_budget_behind_the_snapshot() {
        let (mut s, _rx) = sizes(u64::MAX);
        for i in 1..=10 {
            s.push(i, 100);
        }
        // Up to the snapshot at 8, keep at most 250 bytes: 7 and 8; purge through 6.
        assert_eq!(s.purge_point(8, 250), Some(6));
        assert_eq!(s.purge_point(8, 200), Some(6));
        // Everything up to the snapshot fits: nothing to purge.
        assert_eq!(s.purge_point(8, 800), None);
        s.purge(6);
        assert_eq!(s.purge_point(8, 250), None);
        // An unknown snapshot beyond the log keeps counting from the newest entry.
        assert_eq!(s.purge_point(20, 150), Some(9));
    }

    #[test]
    fn a_log_that_cannot_shrink_reports_once_per_half_limit() {
        let (mut s, _rx) = sizes(100);
        for i in 1..=3 {
            s.push(i, 60);
        }
        // No snapshot could cover 1..=3 (not applied yet): 180 bytes stay after the mark.
        s.rearm(0);
        assert_eq!(s.floor, 180);
        assert!(!s.push(4, 10), "190: not yet half a limit more");
        assert!(!s.push(5, 40), "230 is the floor plus exactly half a limit");
        assert!(s.push(6, 1), "231: past the floor plus half a limit");
        assert_eq!(s.bytes_after(2), 111);
        assert_eq!(s.bytes_after(0), 231);
        assert_eq!(s.bytes_after(6), 0);
    }

    #[test]
    fn the_entry_bound_fires_once_per_interval() {
        let (mut s, _rx) = entries_and_sizes(10, 0);
        for i in 1..=10 {
            assert!(!s.push(i, 1), "{i} entries since the mark");
        }
        assert!(s.push(11, 1), "11 entries since the mark pass 10");
        assert!(!s.push(12, 1), "already sent");
        s.rearm(8);
        assert_eq!(s.entries_floor, 4, "9..=12 are after the snapshot");
        assert!(!s.push(18, 1));
        assert!(s.push(19, 1), "11 entries after the snapshot at 8");
        // No snapshot could cover the log: the next report is half an interval on.
        s.rearm(0);
        assert_eq!(s.entries_floor, 11);
        assert!(
            !s.push(24, 1),
            "16 after the mark: the 11 plus exactly half the interval"
        );
        assert!(s.push(25, 1));
        // A log reopened after a restart knows no snapshot: it reports on its first
        // append, so the keeper learns where the snapshot is.
        let (mut s, _rx) = entries_and_sizes(10, 0);
        assert!(s.push(5000, 1));
        // Entries a new leader truncated do not count towards the next report.
        let (mut s, _rx) = entries_and_sizes(10, 0);
        for i in 1..=9 {
            s.push(i, 1);
        }
        s.drop_back(5);
        s.rearm(0);
        assert_eq!(s.entries_floor, 4);
    }

    #[test]
    fn a_capped_read_ends_within_the_budget() {
        let (mut s, _rx) = sizes(u64::MAX);
        for i in 1..=10 {
            s.push(i, 300);
        }
        // 3 × 300 fits 1,000; the fourth would pass it.
        assert_eq!(s.end_within(1, 11, 1000), 4);
        assert_eq!(s.end_within(5, 11, 1000), 8);
        assert_eq!(s.end_within(9, 11, 1000), 11, "the end comes first");
        assert_eq!(s.end_within(2, 4, 1000), 4);
        // An entry larger than the budget goes alone.
        assert_eq!(s.end_within(1, 11, 100), 2);
        assert!(s.sized(1, 11) && s.sized(10, 11));
        assert!(!s.sized(9, 12), "entry 11 has no recorded size yet");
        // Entries of unknown size (before the first recorded) do not count.
        s.purge(6);
        assert_eq!(s.end_within(3, 11, 1000), 10);
        assert!(!s.sized(3, 11), "entries 3 to 6 have no recorded size");
        assert!(s.sized(7, 11));
    }

    #[test]
    fn no_limit_never_fires() {
        let (mut s, _rx) = sizes(0);
        for i in 1..=100 {
            assert!(!s.push(i, 1 << 20));
        }
        assert!(s.sizes.is_empty(), "without a limit no size is kept");
    }
}
