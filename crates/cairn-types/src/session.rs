//! Request ids for at-most-once writes, as issued by one client session.

use crate::{ClientId, RequestId};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// Issues [`RequestId`]s for one session and tracks which are still unanswered, so each id
/// carries an honest `first_incomplete`.
#[derive(Debug)]
pub struct Session {
    client: ClientId,
    state: Mutex<(u64, BTreeSet<u64>)>,
}

impl Session {
    /// A session with the given client id.
    pub fn new(client: ClientId) -> Self {
        Self {
            client,
            state: Mutex::new((0, BTreeSet::new())),
        }
    }

    /// The session's client id.
    pub fn client(&self) -> ClientId {
        self.client
    }

    /// Starts a write: a fresh id, counted as outstanding until [`Session::finish`].
    pub fn begin(&self) -> RequestId {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let seq = g.0;
        g.1.insert(seq);
        let first_incomplete = g.1.first().copied().unwrap_or(seq);
        RequestId {
            client: self.client,
            seq,
            first_incomplete,
        }
    }

    /// The id to use when retrying `id`: same seq, refreshed `first_incomplete`.
    pub fn retry(&self, id: RequestId) -> RequestId {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        RequestId {
            first_incomplete: g.1.first().copied().unwrap_or(id.seq).min(id.seq),
            ..id
        }
    }

    /// Ends a write, answered or abandoned. An abandoned write must not be retried later.
    pub fn finish(&self, id: RequestId) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.1.remove(&id.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_incomplete_tracks_oldest_outstanding() {
        let s = Session::new(ClientId(9));
        let a = s.begin();
        let b = s.begin();
        assert_eq!((a.seq, a.first_incomplete), (1, 1));
        assert_eq!((b.seq, b.first_incomplete), (2, 1));
        s.finish(a);
        let c = s.begin();
        assert_eq!(c.first_incomplete, 2);
        assert_eq!(s.retry(b).first_incomplete, 2);
        s.finish(b);
        s.finish(c);
        assert_eq!(s.begin().first_incomplete, 4);
    }
}
