//! Which node leads each key range, as the nodes last said.
//!
//! Every linearizable keyed answer carries a leader hint: the partition's range, its epoch
//! version and the node that served it. With these the client sends the next request for a
//! key in that range straight to the leader, saving the hop a node takes to forward it.
//! Hints are only hints: a wrong one costs that forwarding hop (the node that receives the
//! request routes it), and any failure forgets the range.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::RwLock;

struct Entry<N> {
    end: Option<Vec<u8>>,
    version: u64,
    node: N,
}

/// One table's ranges by start key.
type Ranges<N> = BTreeMap<Vec<u8>, Entry<N>>;

/// Leader hints by table and key range; `N` is the client's handle on a node.
pub(crate) struct LeaderCache<N> {
    tables: RwLock<HashMap<String, Ranges<N>>>,
}

impl<N> Default for LeaderCache<N> {
    fn default() -> Self {
        Self {
            tables: RwLock::new(HashMap::new()),
        }
    }
}

impl<N: Clone> LeaderCache<N> {
    /// The node that led the range holding `key` when last heard of.
    pub(crate) fn lookup(&self, table: &str, key: &[u8]) -> Option<N> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let (_, e) = tables
            .get(table)?
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        e.end
            .as_deref()
            .is_none_or(|end| key < end)
            .then(|| e.node.clone())
    }

    /// Whether the cache already says that a node matching `is_node` leads the range
    /// starting at `start` at epoch `version` and ending at `end`: most answers repeat what
    /// is known, and this costs a read lock where [`Self::learn`] takes the write lock.
    pub(crate) fn knows(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        version: u64,
        is_node: impl Fn(&N) -> bool,
    ) -> bool {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables
            .get(table)
            .and_then(|m| m.get(start))
            .is_some_and(|e| e.version == version && e.end.as_deref() == end && is_node(&e.node))
    }

    /// Records that `node` leads `[start, end)` at epoch `version`. Cached ranges it
    /// overlaps are dropped, unless one of them is newer (a hint that raced a split).
    pub(crate) fn learn(
        &self,
        table: &str,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        version: u64,
        node: N,
    ) {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let map = match tables.get_mut(table) {
            Some(m) => m,
            None => tables.entry(table.to_string()).or_default(),
        };
        let upper = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        // Ranges are disjoint and sorted: walk back from the hint's end until one ends at
        // or before its start.
        let mut overlapping = Vec::new();
        for (s, e) in map.range::<[u8], _>((Bound::Unbounded, upper)).rev() {
            if e.end.as_deref().is_some_and(|x| x <= start.as_slice()) {
                break;
            }
            if e.version > version {
                return;
            }
            overlapping.push(s.clone());
        }
        for s in overlapping {
            map.remove(&s);
        }
        map.insert(start, Entry { end, version, node });
    }

    /// Forgets the range holding `key` (its leader failed to answer).
    pub(crate) fn forget(&self, table: &str, key: &[u8]) {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let Some(map) = tables.get_mut(table) else {
            return;
        };
        let hit = map
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .filter(|(_, e)| e.end.as_deref().is_none_or(|end| key < end))
            .map(|(s, _)| s.clone());
        if let Some(s) = hit {
            map.remove(&s);
        }
    }

    /// Forgets every range of `table` (it was dropped).
    pub(crate) fn forget_table(&self, table: &str) {
        self.tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn finds_the_range_holding_a_key() {
        let c = LeaderCache::default();
        c.learn("t", k(""), Some(k("m")), 1, 1u64);
        c.learn("t", k("m"), None, 1, 2u64);
        assert!(c.knows("t", b"", Some(b"m"), 1, |n| *n == 1));
        assert!(
            !c.knows("t", b"", Some(b"m"), 1, |n| *n == 2),
            "another leader"
        );
        assert!(
            !c.knows("t", b"", Some(b"m"), 2, |n| *n == 1),
            "another epoch"
        );
        assert!(!c.knows("t", b"", None, 1, |n| *n == 1), "another range");
        assert_eq!(c.lookup("t", b"a"), Some(1));
        assert_eq!(c.lookup("t", b"l"), Some(1));
        assert_eq!(c.lookup("t", b"m"), Some(2));
        assert_eq!(c.lookup("t", b"zzz"), Some(2));
        assert_eq!(c.lookup("other", b"a"), None);
    }

    #[test]
    fn a_gap_is_not_covered() {
        let c = LeaderCache::default();
        c.learn("t", k("c"), Some(k("f")), 1, 1u64);
        assert_eq!(c.lookup("t", b"a"), None);
        assert_eq!(c.lookup("t", b"f"), None);
        assert_eq!(c.lookup("t", b"d"), Some(1));
    }

    #[test]
    fn a_split_replaces_the_whole_range_and_old_hints_do_not_undo_it() {
        let c = LeaderCache::default();
        c.learn("t", k(""), None, 1, 1u64);
        // The partition split at "m" (version 2); its right half is led by node 3.
        c.learn("t", k("m"), None, 2, 3u64);
        assert_eq!(c.lookup("t", b"x"), Some(3));
        // The left half's range is unknown until a hint names it.
        assert_eq!(c.lookup("t", b"a"), None);
        // A late answer from before the split must not bring the whole range back.
        c.learn("t", k(""), None, 1, 1u64);
        assert_eq!(c.lookup("t", b"x"), Some(3));
        assert_eq!(c.lookup("t", b"a"), None);
        c.learn("t", k(""), Some(k("m")), 2, 2u64);
        assert_eq!(c.lookup("t", b"a"), Some(2));
        assert_eq!(c.lookup("t", b"x"), Some(3));
    }

    #[test]
    fn a_new_leader_at_the_same_epoch_replaces_the_old() {
        let c = LeaderCache::default();
        c.learn("t", k("a"), Some(k("b")), 4, 1u64);
        c.learn("t", k("a"), Some(k("b")), 4, 2u64);
        assert_eq!(c.lookup("t", b"a"), Some(2));
    }

    #[test]
    fn forget_drops_one_range_and_forget_table_all() {
        let c = LeaderCache::default();
        c.learn("t", k(""), Some(k("m")), 1, 1u64);
        c.learn("t", k("m"), None, 1, 2u64);
        c.forget("t", b"q");
        assert_eq!(c.lookup("t", b"q"), None);
        assert_eq!(c.lookup("t", b"a"), Some(1));
        c.forget_table("t");
        assert_eq!(c.lookup("t", b"a"), None);
    }
}
