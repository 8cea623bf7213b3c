//! Half-open key ranges and partition epochs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A half-open range of user keys `[start, end)`; `end == None` means +∞.
/// The empty `start` is -∞ since no key is shorter than the empty key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    /// Inclusive lower bound.
    pub start: Vec<u8>,
    /// Exclusive upper bound, or `None` for an unbounded range.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// The range holding every key.
    pub fn full() -> Self {
        Self::default()
    }

    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// Splits `[-∞, +∞)` at the given sorted, distinct split keys into consecutive ranges.
    pub fn split_all(split_keys: &[Vec<u8>]) -> Vec<KeyRange> {
        let mut out = Vec::with_capacity(split_keys.len() + 1);
        let mut start = Vec::new();
        for k in split_keys {
            out.push(KeyRange {
                start: std::mem::replace(&mut start, k.clone()),
                end: Some(k.clone()),
            });
        }
        out.push(KeyRange { start, end: None });
        out
    }

    /// The two halves `[start, key)` and `[key, end)`, or `None` when `key` is not strictly
    /// inside the range (outside it, or at its start: a half would be empty).
    pub fn split_at(&self, key: &[u8]) -> Option<(KeyRange, KeyRange)> {
        if !self.contains(key) || key == self.start.as_slice() {
            return None;
        }
        let left = KeyRange {
            start: self.start.clone(),
            end: Some(key.to_vec()),
        };
        let right = KeyRange {
            start: key.to_vec(),
            end: self.end.clone(),
        };
        Some((left, right))
    }

    /// The keys both ranges hold, or `None` when they share none.
    pub fn intersect(&self, other: &KeyRange) -> Option<KeyRange> {
        let start = self.start.clone().max(other.start.clone());
        let end = match (&self.end, &other.end) {
            (Some(a), Some(b)) => Some(a.clone().min(b.clone())),
            (a, b) => a.clone().or(b.clone()),
        };
        let r = KeyRange { start, end };
        (r.end.as_ref().is_none_or(|e| *e > r.start)).then_some(r)
    }

    /// Whether the two ranges share a key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let below =
            |a: &KeyRange, b: &KeyRange| a.end.as_deref().is_some_and(|e| e <= b.start.as_slice());
        !below(self, other) && !below(other, self)
    }

    /// Whether this range ends at or before `key` (every key of it is `< key`).
    pub fn ends_at_or_before(&self, key: &[u8]) -> bool {
        self.end.as_deref().is_some_and(|end| end <= key)
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        match &self.end {
            Some(end) => write!(f, "[{:?}, {:?})", show(&self.start), show(end)),
            None => write!(f, "[{:?}, +inf)", show(&self.start)),
        }
    }
}

/// Version of a partition's shape. `version` is bumped by split and merge, `conf_ver` by
/// membership change; a request carrying an older epoch is refused with `EpochMismatch`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Epoch {
    /// Bumped on every membership change.
    pub conf_ver: u64,
    /// Bumped on every split or merge.
    pub version: u64,
}

impl Epoch {
    /// The epoch of a partition made by CreateTable and never changed since.
    pub const INITIAL: Epoch = Epoch {
        conf_ver: 1,
        version: 1,
    };

    /// Whether `self` describes a later shape than `other`: neither counter is behind and
    /// one is ahead. Epochs of one partition only ever grow, so this orders its descriptors.
    pub fn is_newer_than(&self, other: &Epoch) -> bool {
        self.version >= other.version && self.conf_ver >= other.conf_ver && self != other
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.version, self.conf_ver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_all_covers_keyspace_without_gaps() {
        let r = KeyRange::split_all(&[b"g".to_vec(), b"p".to_vec()]);
        assert_eq!(r.len(), 3);
        assert!(r[0].contains(b"") && r[0].contains(b"fzz") && !r[0].contains(b"g"));
        assert!(r[1].contains(b"g") && r[1].contains(b"ozz") && !r[1].contains(b"p"));
        assert!(r[2].contains(b"p") && r[2].contains(b"\xff\xff"));
        assert!(r[0].ends_at_or_before(b"g") && !r[2].ends_at_or_before(b"zzz"));
    }

    #[test]
    fn split_at_refuses_the_start_and_keys_outside() {
        let r = KeyRange {
            start: b"g".to_vec(),
            end: Some(b"p".to_vec()),
        };
        assert_eq!(r.split_at(b"g"), None);
        assert_eq!(r.split_at(b"p"), None);
        assert_eq!(r.split_at(b"a"), None);
        let (a, b) = r.split_at(b"k").unwrap();
        assert_eq!(
            (a.start.as_slice(), a.end.as_deref()),
            (&b"g"[..], Some(&b"k"[..]))
        );
        assert_eq!(
            (b.start.as_slice(), b.end.as_deref()),
            (&b"k"[..], Some(&b"p"[..]))
        );
        assert!(a.overlaps(&r) && b.overlaps(&r) && !a.overlaps(&b));
        assert_eq!(a.intersect(&r), Some(a.clone()));
        assert_eq!(a.intersect(&b), None);
        let (x, y) = KeyRange::full().split_at(b"m").unwrap();
        assert!(!x.overlaps(&y) && y.end.is_none());
    }

    #[test]
    fn epochs_order_by_both_counters() {
        let e = Epoch::INITIAL;
        let split = Epoch { version: 2, ..e };
        let moved = Epoch { conf_ver: 2, ..e };
        assert!(split.is_newer_than(&e) && moved.is_newer_than(&e));
        assert!(!e.is_newer_than(&e) && !e.is_newer_than(&split));
    }
}
