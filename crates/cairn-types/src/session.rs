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

    /// Starts a write: a fresh id, counted as outstanding until the returned [`Pending`]
    /// is dropped, whether the write was answered or abandoned (its caller gone).
    #[must_use = "the write ends when its Pending is dropped: hold it until the write returns"]
    pub fn begin(&self) -> Pending<'_> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let seq = g.0;
        g.1.insert(seq);
        let first_incomplete = g.1.first().copied().unwrap_or(seq);
        let id = RequestId {
            client: self.client,
            seq,
            first_incomplete,
        };
        Pending { session: self, id }
    }
}

/// A write of a [`Session`] that has not ended. Dropping it ends it, so a write whose
/// caller went away (a closed connection, a timeout around the call) does not hold the
/// session's `first_incomplete` back for good: every replica would keep the outcome of
/// every later write of the session.
#[derive(Debug)]
#[must_use = "the write ends when its Pending is dropped: hold it until the write returns"]
pub struct Pending<'a> {
    session: &'a Session,
    id: RequestId,
}

impl Pending<'_> {
    /// The write's id as first sent.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The id to send the write with again: same seq, refreshed `first_incomplete`.
    pub fn retry(&self) -> RequestId {
        let g = self.session.state.lock().unwrap_or_else(|p| p.into_inner());
        RequestId {
            first_incomplete: g.1.first().copied().unwrap_or(self.id.seq).min(self.id.seq),
            ..self.id
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // Ended: its caller sends it no more. A copy already on its way is not applied
        // once the floor passed it; nobody waits for its answer either way.
        let mut g = self.session.state.lock().unwrap_or_else(|p| p.into_inner());
        g.1.remove(&self.id.seq);
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
        assert_eq!((a.id().seq, a.id().first_incomplete), (1, 1));
        assert_eq!((b.id().seq, b.id().first_incomplete), (2, 1));
        drop(a);
        let c = s.begin();
        assert_eq!(c.id().first_incomplete, 2);
        assert_eq!(b.retry().first_incomplete, 2);
        drop((b, c));
        assert_eq!(s.begin().id().first_incomplete, 4);
    }

    #[test]
    fn a_write_whose_caller_went_away_does_not_hold_the_floor() {
        use std::future::Future;
        let s = Session::new(ClientId(9));
        let kept = s.begin();
        // A write future dropped mid-call (its connection closed) drops its Pending.
        let mut call = Box::pin(async {
            let _pending = s.begin();
            std::future::pending::<()>().await;
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(call.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.begin().id().first_incomplete, 1);
        drop(call);
        drop(kept);
        assert_eq!(s.begin().id().first_incomplete, 4);
    }
}
