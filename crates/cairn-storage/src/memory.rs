//! An in-memory [`Engine`] for tests and simulation. `sync` is a no-op; a "crash" is
//! modelled by [`MemEngine::crash`], which forgets every batch written since the last sync.

use crate::{Engine, KeyValue, Op, Page, PageLimit, Result, Space, WriteBatch};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
struct Inner {
    spaces: BTreeMap<Space, Tree>,
    /// Batches written since the last sync, kept to undo them on a simulated crash.
    unsynced: Vec<WriteBatch>,
    durable: BTreeMap<Space, Tree>,
}

/// A `BTreeMap`-backed engine.
#[derive(Default)]
pub struct MemEngine {
    inner: Mutex<Inner>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn range(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        rev: bool,
    ) -> Vec<KeyValue> {
        if end.is_some_and(|e| e <= start) {
            return Vec::new();
        }
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = g.spaces.get(&space) else {
            return Vec::new();
        };
        let it = t.range::<[u8], _>(bounds(start, end));
        let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        if rev {
            it.rev().take(limit).map(pair).collect()
        } else {
            it.take(limit).map(pair).collect()
        }
    }

    /// Drops every write since the last [`Engine::sync`], as a power loss would.
    pub fn crash(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.spaces = g.durable.clone();
        g.unsynced.clear();
    }
}

impl crate::ReadView for MemEngine {
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        if crate::empty_scan(start, end)? {
            return Ok(Vec::new());
        }
        Ok(self.range(space, start, end, limit, false))
    }

    fn scan_page(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page> {
        Engine::scan_page(self, space, start, end, limit)
    }
}

fn apply(spaces: &mut BTreeMap<Space, Tree>, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            Op::Put(s, k, v) => {
                spaces.entry(*s).or_default().insert(k.clone(), v.clone());
            }
            Op::Delete(s, k) => {
                if let Some(t) = spaces.get_mut(s) {
                    t.remove(k);
                }
            }
        }
    }
}

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

impl Engine for MemEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        crate::check_key(key)?;
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.spaces.get(&space).and_then(|t| t.get(key).cloned()))
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        if crate::empty_scan(start, end)? {
            return Ok(Vec::new());
        }
        Ok(self.range(space, start, end, limit, false))
    }

    fn scan_page(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page> {
        if crate::empty_scan(start, end)? {
            return Ok(Page::default());
        }
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = g.spaces.get(&space) else {
            return Ok(Page::default());
        };
        let pairs = t.range::<[u8], _>(bounds(start, end)).map(|(k, v)| {
            let v = if limit.values { v.clone() } else { Vec::new() };
            Ok((k.clone(), v))
        });
        Page::collect(pairs, limit)
    }

    fn scan_rev(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        if crate::empty_scan(start, end)? {
            return Ok(Vec::new());
        }
        Ok(self.range(space, start, end, limit, true))
    }

    fn read_view(&self) -> Result<std::sync::Arc<dyn crate::ReadView>> {
        // A copy: the memory engine serves tests and simulation, where data is small.
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let view = MemEngine::default();
        {
            let mut v = view.inner.lock().unwrap_or_else(|p| p.into_inner());
            v.spaces = g.spaces.clone();
        }
        Ok(std::sync::Arc::new(view))
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        crate::check_batch(&batch)?;
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        apply(&mut g.spaces, &batch);
        g.unsynced.push(batch);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut g.unsynced);
        for b in &pending {
            apply(&mut g.durable, b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::conformance::run_all(&|| Box::new(MemEngine::new()));
    }

    #[test]
    fn crash_drops_unsynced_suffix() {
        let e = MemEngine::new();
        let mut b = WriteBatch::new();
        b.put(Space::Data, b"a".to_vec(), b"1".to_vec());
        e.write(b).unwrap();
        e.sync().unwrap();
        let mut b = WriteBatch::new();
        b.put(Space::Data, b"b".to_vec(), b"2".to_vec());
        e.write(b).unwrap();
        e.crash();
        assert_eq!(e.get(Space::Data, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(Space::Data, b"b").unwrap(), None);
    }
}
