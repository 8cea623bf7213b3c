//! Storage engine traits and the on-disk key layout.
//!
//! A node has one engine holding three spaces (see [`Space`]): the Raft logs and votes of
//! every group, the state machines' data, and node-local bookkeeping. This crate never
//! depends on a concrete engine; `cairn-storage-fjall` implements [`Engine`] on fjall and
//! [`MemEngine`] implements it in memory for tests.
//!
//! Durability contract: [`Engine::write`] applies a batch atomically but makes it durable
//! only at the next [`Engine::sync`]; a crash loses a suffix of unsynced batches, never a
//! middle one, and never part of a batch.

pub mod conformance;
pub mod disk;
mod error;
pub mod keys;
mod memory;

pub use error::{Error, Result};
pub use memory::MemEngine;

use std::sync::Arc;

/// The separately kept key spaces of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Raft logs, votes and log metadata of every group.
    Raft,
    /// State machine data: user data under table prefixes, plus per-group applied state.
    Data,
    /// Node-local bookkeeping: which replicas this node hosts, cluster identity.
    Local,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 3] = [Space::Raft, Space::Data, Space::Local];
}

/// One change in a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to the value.
    Put(Space, Vec<u8>, Vec<u8>),
    /// Remove `key` if present.
    Delete(Space, Vec<u8>),
}

/// A set of changes applied atomically by [`Engine::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The changes, applied in order.
    pub ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(space, key.into(), value.into()));
    }

    /// Adds a delete.
    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(space, key.into()));
    }

    /// Appends another batch's changes after this one's.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Whether the batch has no changes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A key and its value as returned by scans.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Longest engine key (fjall's limit, which it enforces with a panic): engines refuse
/// longer keys and bounds with an error instead. Engine keys are a user key behind at most
/// [`keys::STAGING_ROW_PREFIX_LEN`] bytes, hence `cairn_types::MAX_KEY_BYTES_CEILING`.
pub const MAX_ENGINE_KEY: usize = u16::MAX as usize;

/// Longest engine value (fjall's limit).
pub const MAX_ENGINE_VALUE: usize = u32::MAX as usize;

/// Refuses a key, or a scan bound, longer than [`MAX_ENGINE_KEY`].
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_ENGINE_KEY {
        return Err(Error::Engine(format!(
            "a key or bound of {} bytes is over the engine's {MAX_ENGINE_KEY}",
            key.len()
        )));
    }
    Ok(())
}

/// Refuses a scan whose bounds [`check_key`] refuses; true when `[start, end)` holds no
/// key, so the scan has nothing to read.
pub fn empty_scan(start: &[u8], end: Option<&[u8]>) -> Result<bool> {
    check_key(start)?;
    end.map_or(Ok(()), check_key)?;
    Ok(end.is_some_and(|e| e <= start))
}

/// Refuses a batch with an empty or over-long key or an over-long value, before any of it
/// is applied.
pub fn check_batch(batch: &WriteBatch) -> Result<()> {
    for op in &batch.ops {
        let (Op::Put(_, k, _) | Op::Delete(_, k)) = op;
        if k.is_empty() {
            return Err(Error::Engine("a write with an empty key".into()));
        }
        check_key(k)?;
        if let Op::Put(_, _, v) = op
            && v.len() > MAX_ENGINE_VALUE
        {
            return Err(Error::Engine(format!(
                "a value of {} bytes is over the engine's {MAX_ENGINE_VALUE}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// How much one [`Engine::scan_page`] may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimit {
    /// Most pairs.
    pub rows: usize,
    /// The page ends after the pair that brings its bytes (keys, and values when `values`)
    /// to this many, so one read holds about this much whatever the sizes of the values.
    pub bytes: usize,
    /// Whether to return values; without them each pair's value is empty.
    pub values: bool,
}

/// The pairs read by [`Engine::scan_page`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The pairs, in ascending key order.
    pub rows: Vec<KeyValue>,
    /// The byte limit ended the page before the row limit did: more pairs may follow.
    pub cut: bool,
}

impl Page {
    /// Takes `pairs` (in scan order) until `limit` is reached.
    pub fn collect(
        pairs: impl Iterator<Item = Result<KeyValue>>,
        limit: PageLimit,
    ) -> Result<Page> {
        let mut page = Page::default();
        let mut bytes = 0usize;
        for pair in pairs.take(limit.rows) {
            let (k, v) = pair?;
            bytes = bytes.saturating_add(k.len()).saturating_add(v.len());
            page.rows.push((k, v));
            if bytes >= limit.bytes && page.rows.len() < limit.rows {
                page.cut = true;
                break;
            }
        }
        Ok(page)
    }
}

/// An ordered key-value engine with atomic batches and explicit durability.
///
/// Implementations are shared between threads (`Send + Sync`); reads see every batch
/// written before them.
pub trait Engine: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` pairs with `start <= key < end` (no upper bound when `end` is `None`),
    /// in ascending key order.
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>>;

    /// Like [`Engine::scan`] (one point in time, ascending), but also ended by the byte
    /// limit of `limit`, and without values if it says so.
    fn scan_page(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page>;

    /// Up to `limit` pairs with `start <= key < end`, in descending key order.
    fn scan_rev(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>>;

    /// Applies the batch atomically. Durable only after the next [`Engine::sync`].
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Makes every batch written so far durable (fsync).
    fn sync(&self) -> Result<()>;

    /// A consistent read view of the engine as of now: later writes are not visible in it.
    /// Cheap to take; it keeps the versions it sees alive until dropped.
    fn read_view(&self) -> Result<Arc<dyn ReadView>>;

    /// Bytes the engine's files take on disk, if it keeps files.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}

/// A point-in-time view of an [`Engine`] (see [`Engine::read_view`]).
pub trait ReadView: Send + Sync + 'static {
    /// Up to `limit` pairs with `start <= key < end`, in ascending key order, as of the
    /// moment the view was taken.
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>>;

    /// [`Engine::scan_page`] as of the moment the view was taken.
    fn scan_page(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page>;
}

/// The engine as shared by the rest of a node.
pub type SharedEngine = Arc<dyn Engine>;

/// A page of up to `rows` keys without their values: what walking keys needs, whatever the
/// values' sizes.
fn keys_only(rows: usize) -> PageLimit {
    PageLimit {
        rows,
        bytes: usize::MAX,
        values: false,
    }
}

/// Deletes every key of `space` in `[start, end)`, in batches of `chunk` keys, and returns
/// how many were deleted. Not atomic as a whole; each chunk is. A key written meanwhile into
/// the part already passed is deleted too (one last scan from `start` looks for such keys).
pub fn delete_range(
    engine: &dyn Engine,
    space: Space,
    start: &[u8],
    end: Option<&[u8]>,
    chunk: usize,
) -> Result<u64> {
    let mut deleted = 0u64;
    let mut from = start.to_vec();
    loop {
        let found = engine
            .scan_page(space, &from, end, keys_only(chunk.max(1)))?
            .rows;
        let Some((last, _)) = found.last() else {
            if from == start {
                return Ok(deleted);
            }
            // Once more from the start, for keys written behind the scan while it ran.
            from = start.to_vec();
            continue;
        };
        // The next chunk starts at this one's last key, deleted by then: scanning from
        // `start` each time would step over every tombstone written so far, and a large
        // range would cost its square. (Not past the last key: its successor may be longer
        // than a key may be.)
        from = last.clone();
        let mut batch = WriteBatch::new();
        deleted += found.len() as u64;
        for (k, _) in found {
            batch.delete(space, k);
        }
        engine.write(batch)?;
    }
}

/// Counts the keys of `space` in `[start, end)`.
pub fn count_range(
    engine: &dyn Engine,
    space: Space,
    start: &[u8],
    end: Option<&[u8]>,
) -> Result<u64> {
    let mut count = 0u64;
    let scan = |s: &[u8], e: Option<&[u8]>, l| engine.scan_page(space, s, e, l);
    for_each_page(scan, start, end, keys_only(1024), |rows| {
        count += rows.len() as u64;
        Ok::<_, Error>(())
    })?;
    Ok(count)
}

/// Reads `[start, end)` in pages of `limit` through `scan` (an engine's or a read view's
/// `scan_page` of one space) and hands each page's pairs to `f`, in key order, each pair
/// once.
///
/// A page after the first starts at the last key of the one before and leaves that key
/// out: not at its successor, which may be longer than a key may be. The left-out pair's
/// bytes are added to the byte limit, so a large pair cannot fill a page alone.
pub fn for_each_page<E: From<Error>>(
    mut scan: impl FnMut(&[u8], Option<&[u8]>, PageLimit) -> Result<Page>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: PageLimit,
    mut f: impl FnMut(Vec<KeyValue>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let limit = PageLimit {
        rows: limit.rows.max(1),
        ..limit
    };
    let mut from = start.to_vec();
    // The bytes of the pair at `from`, once it has been handed out.
    let mut handed: Option<usize> = None;
    loop {
        let mut l = limit;
        if let Some(b) = handed {
            l.rows = l.rows.saturating_add(1);
            l.bytes = l.bytes.max(1).saturating_add(b);
        }
        let page = scan(&from, end, l)?;
        let mut rows = page.rows;
        // The pair handed out last is the first here, unless it was deleted meanwhile.
        if handed.is_some() && rows.first().is_some_and(|(k, _)| *k == from) {
            let (k, v) = rows.remove(0);
            if rows.is_empty() && page.cut {
                // It grew since and filled the page alone: read again past its new size.
                handed = Some(k.len().saturating_add(v.len()));
                continue;
            }
        }
        rows.truncate(limit.rows);
        let Some((last, v)) = rows.last() else {
            return Ok(());
        };
        handed = Some(last.len().saturating_add(v.len()));
        from = last.clone();
        f(rows)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A [`MemEngine`] that records where each page scan starts.
    #[derive(Default)]
    struct Recording {
        inner: MemEngine,
        starts: Mutex<Vec<Vec<u8>>>,
    }

    impl Engine for Recording {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(space, key)
        }
        fn scan(
            &self,
            space: Space,
            start: &[u8],
            end: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<KeyValue>> {
            Engine::scan(&self.inner, space, start, end, limit)
        }
        fn scan_page(
            &self,
            space: Space,
            start: &[u8],
            end: Option<&[u8]>,
            limit: PageLimit,
        ) -> Result<Page> {
            self.starts.lock().unwrap().push(start.to_vec());
            Engine::scan_page(&self.inner, space, start, end, limit)
        }
        fn scan_rev(
            &self,
            space: Space,
            start: &[u8],
            end: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<KeyValue>> {
            self.inner.scan_rev(space, start, end, limit)
        }
        fn write(&self, batch: WriteBatch) -> Result<()> {
            self.inner.write(batch)
        }
        fn sync(&self) -> Result<()> {
            self.inner.sync()
        }
        fn read_view(&self) -> Result<Arc<dyn ReadView>> {
            self.inner.read_view()
        }
    }

    /// A range of many chunks is deleted whole, keys outside it stay, and each chunk's scan
    /// starts at the last key already deleted, not at the range's start (in an LSM engine,
    /// scanning from the start again steps over every tombstone so far: a cost quadratic
    /// in the range); one last scan from the start looks for keys written behind it.
    #[test]
    fn delete_range_deletes_everything_once_and_never_rescans_what_it_deleted() {
        let e = Recording::default();
        let mut b = WriteBatch::new();
        for i in 0..1000u32 {
            b.put(Space::Data, format!("k{i:04}").into_bytes(), vec![1]);
        }
        b.put(Space::Data, b"a".to_vec(), vec![2]);
        b.put(Space::Data, b"z".to_vec(), vec![3]);
        e.write(b).unwrap();

        let n = delete_range(&e, Space::Data, b"k", Some(b"l"), 64).unwrap();
        assert_eq!(n, 1000);
        let left = Engine::scan(&e, Space::Data, b"", None, 10).unwrap();
        let left: Vec<&[u8]> = left.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(left, vec![&b"a"[..], b"z"]);

        let starts = e.starts.lock().unwrap().clone();
        // 16 chunks (15 of 64 and one of 40), the empty scan past them, and the last one
        // from the start.
        assert_eq!(starts.len(), 18);
        assert_eq!(starts[0], b"k");
        for (i, s) in starts.iter().enumerate().take(17).skip(1) {
            let last_deleted = format!("k{:04}", (i * 64 - 1).min(999)).into_bytes();
            assert_eq!(*s, last_deleted, "scan {i}");
        }
        assert_eq!(starts[17], b"k");
    }

    /// A range ending in a key of the largest length the engine takes is counted and
    /// deleted whole (the next scan never starts past it with a longer key).
    #[test]
    fn delete_range_takes_keys_of_the_largest_length() {
        let e = MemEngine::new();
        let mut b = WriteBatch::new();
        let longest = vec![0xffu8; MAX_ENGINE_KEY];
        b.put(Space::Local, vec![0xff], vec![1]);
        b.put(Space::Local, longest, vec![2]);
        e.write(b).unwrap();
        assert_eq!(count_range(&e, Space::Local, &[0xff], None).unwrap(), 2);
        assert_eq!(delete_range(&e, Space::Local, &[0xff], None, 1).unwrap(), 2);
        assert!(
            Engine::scan(&e, Space::Local, b"", None, 10)
                .unwrap()
                .is_empty()
        );
    }

    /// Pages hand every pair out once, in order, even when each pair alone is past the byte
    /// limit (the pair a page starts at, handed out before, does not fill it) and when that
    /// pair is deleted between two pages.
    #[test]
    fn for_each_page_hands_out_each_pair_once() {
        let e = MemEngine::new();
        let mut b = WriteBatch::new();
        for i in 0..10u8 {
            b.put(Space::Data, vec![b'k', i], vec![i; 100]);
        }
        e.write(b).unwrap();
        let limit = PageLimit {
            rows: 3,
            bytes: 50,
            values: true,
        };
        let mut pages = Vec::new();
        for_each_page(
            |s, end, l| Engine::scan_page(&e, Space::Data, s, end, l),
            b"",
            None,
            limit,
            |rows| {
                pages.push(rows.iter().map(|(k, _)| k[1]).collect::<Vec<_>>());
                Ok::<_, Error>(())
            },
        )
        .unwrap();
        let one_each: Vec<Vec<u8>> = (0..10).map(|i| vec![i]).collect();
        assert_eq!(pages, one_each);

        // No byte budget at all, and each page's last value grown past any budget before
        // the next page is read: still one pair a page, none skipped.
        let mut pages = Vec::new();
        let limit = PageLimit {
            rows: 3,
            bytes: 0,
            values: true,
        };
        for_each_page(
            |s, end, l| Engine::scan_page(&e, Space::Data, s, end, l),
            b"",
            None,
            limit,
            |rows| {
                pages.push(rows.iter().map(|(k, _)| k[1]).collect::<Vec<_>>());
                let mut g = WriteBatch::new();
                if let Some((k, _)) = rows.last() {
                    g.put(Space::Data, k.clone(), vec![0; 10_000]);
                }
                e.write(g)
            },
        )
        .unwrap();
        assert_eq!(pages, one_each);

        // By rows, with the last key of each page deleted before the next page is read.
        let mut seen = Vec::new();
        let limit = PageLimit {
            rows: 4,
            bytes: usize::MAX,
            values: false,
        };
        for_each_page(
            |s, end, l| Engine::scan_page(&e, Space::Data, s, end, l),
            b"",
            None,
            limit,
            |rows| {
                let mut d = WriteBatch::new();
                if let Some((k, _)) = rows.last() {
                    d.delete(Space::Data, k.clone());
                }
                seen.extend(rows.iter().map(|(k, _)| k[1]));
                e.write(d)
            },
        )
        .unwrap();
        assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    }
}
