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
}
