//! The node's most recent log lines, kept in memory for `GET /debug/logs` and
//! `cairn debug zip`: a bug report then carries what the node said without anyone finding
//! where its stderr went.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Bytes of log kept by default (the oldest lines are dropped first).
pub const DEFAULT_LOG_TAIL_BYTES: usize = 4 << 20;

/// A bounded tail of log output; clones share it.
#[derive(Clone, Debug)]
pub struct LogTail {
    inner: Arc<Mutex<Tail>>,
}

#[derive(Debug)]
struct Tail {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    limit: usize,
}

impl LogTail {
    /// A tail keeping about `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Tail {
                chunks: VecDeque::new(),
                bytes: 0,
                limit,
            })),
        }
    }

    /// Appends what the logger wrote (one or more whole lines, as it writes them).
    pub fn push(&self, buf: &[u8]) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let buf = &buf[buf.len().saturating_sub(t.limit)..];
        t.bytes += buf.len();
        t.chunks.push_back(buf.to_vec());
        while t.bytes > t.limit {
            match t.chunks.pop_front() {
                Some(old) => t.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Everything kept, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(t.bytes);
        for c in &t.chunks {
            out.extend_from_slice(c);
        }
        out
    }
}

impl Default for LogTail {
    fn default() -> Self {
        Self::new(DEFAULT_LOG_TAIL_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_within_its_limit() {
        let t = LogTail::new(20);
        t.push(b"first line\n");
        t.push(b"second\n");
        assert_eq!(t.contents(), b"first line\nsecond\n");
        t.push(b"third one\n");
        assert_eq!(t.contents(), b"second\nthird one\n", "the oldest line went");
        t.push(b"a line longer than the whole limit\n");
        let kept = t.contents();
        assert!(kept.len() <= 20 && kept.ends_with(b"limit\n"), "{kept:?}");
    }
}
