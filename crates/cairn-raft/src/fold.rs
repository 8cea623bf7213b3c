//! Replication to one follower, with commit notices folded into the group's next append.
//!
//! Once a leader commits, openraft sends each follower an AppendEntries without entries to
//! carry the new commit index. Under load the group's next append follows within a round,
//! carrying the same commit index and more. At 64 clients on three partitions there were 1.5
//! such notices per proposal beside the 2 appends (`bench/ab.sh`, 2026-12-06): each one a
//! round trip through both nodes' Raft cores.
//!
//! Here a request without entries waits up to a short hold for the group's next request. If
//! that one comes from the same leader with the same `prev_log_id`, only it is sent, and its
//! answer also answers the one folded into it. The leader loses nothing by it:
//! - The follower's answer to the later request says what its answer to the folded one would
//!   have said: `prev_log_id` matches, or the same conflict, or the same higher vote.
//! - openraft times its leader lease from when a request was made. The folded request was
//!   made before the one the follower actually answered, so the lease it extends is the
//!   shorter, safe side.
//!
//! Only the follower hears of the commit up to the hold later, which delays its own apply,
//! not any answer: the leader acknowledges writes on its commit and serves linearizable
//! reads itself. A heartbeat or a probe is the last request of its stream, so it is never
//! held.

use crate::TypeConfig;
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::RPCError;
use openraft::network::{NetAppend, RPCOption};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use std::time::Duration;

type Request = AppendEntriesRequest<TypeConfig>;
type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// How long a commit notice of a partition group waits for the group's next append by
/// default: a few of a loaded round's fractions of a millisecond, and far below a leader
/// lease (750 ms), so a follower's apply lags its leader by at most this.
pub const DEFAULT_COMMIT_HOLD: Duration = Duration::from_millis(2);

/// The state of one stream of AppendEntries to one follower.
struct Fold<'s, N, S> {
    net: &'s mut N,
    input: S,
    option: RPCOption,
    hold: Duration,
    folded: Counter,
    /// Taken from the input while holding a notice, not sent yet.
    next: Option<Request>,
    input_done: bool,
    /// Answers owed to openraft, in the order of its requests.
    owed: VecDeque<Answer>,
    /// An error or a partial success ends the stream, as openraft's sequential one does.
    stopped: bool,
}

/// Sends `input` to the follower behind `net` one request at a time, as openraft's
/// `stream_append_sequential` does, except that a request without entries waits up to `hold`
/// for the next one to fold into (a zero `hold` folds nothing). `folded` counts the requests
/// that were answered without being sent.
pub(crate) fn stream_append_folding<'s, N, S>(
    net: &'s mut N,
    input: S,
    option: RPCOption,
    hold: Duration,
    folded: Counter,
) -> BoxFuture<'s, Result<BoxStream<'s, Answer>, RPCError<TypeConfig>>>
where
    N: NetAppend<TypeConfig>,
    S: Stream<Item = Request> + Send + Unpin + 'static,
{
    let state = Fold {
        net,
        input,
        option,
        hold,
        folded,
        next: None,
        input_done: false,
        owed: VecDeque::new(),
        stopped: false,
    };
    let answers: BoxStream<'s, Answer> = Box::pin(futures::stream::unfold(state, step));
    Box::pin(async move { Ok(answers) })
}

/// The next answer: an owed one, or the answer to the next request sent.
async fn step<N, S>(mut st: Fold<'_, N, S>) -> Option<(Answer, Fold<'_, N, S>)>
where
    N: NetAppend<TypeConfig>,
    S: Stream<Item = Request> + Send + Unpin + 'static,
{
    if let Some(a) = st.owed.pop_front() {
        return Some((a, st));
    }
    if st.stopped {
        return None;
    }
    let mut req = match st.next.take() {
        Some(r) => r,
        None if st.input_done => return None,
        None => st.input.next().await?,
    };
    // Notices folded into `req`. Only one with `req`'s `prev_log_id` folds, so that is each
    // one's whole range.
    let mut folded = 0usize;
    if !st.hold.is_zero() && req.entries.is_empty() {
        let until = tokio::time::Instant::now() + st.hold;
        while req.entries.is_empty() {
            // A timeout drops only this `next()`: the input keeps the request it is making.
            match tokio::time::timeout_at(until, st.input.next()).await {
                Ok(Some(later))
                    if later.vote == req.vote && later.prev_log_id == req.prev_log_id =>
                {
                    folded += 1;
                    req = later;
                }
                Ok(Some(later)) => {
                    st.next = Some(later);
                    break;
                }
                Ok(None) => {
                    st.input_done = true;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    let prev = req.prev_log_id;
    let last = req.entries.last().map(|e| e.log_id).or(prev);
    let resp = match st.net.append_entries(req, st.option.clone()).await {
        Ok(r) => r,
        Err(e) => {
            st.stopped = true;
            return Some((Err(e), st));
        }
    };
    let result = resp.into_stream_result(prev, last);
    match &result {
        Ok(matched) => {
            st.folded.inc_by(folded as u64);
            // Each folded notice covered only `prev`, which the follower matched.
            st.owed.extend((0..folded).map(|_| Ok(Ok(prev))));
            st.stopped = *matched != last;
        }
        // The folded notices had this request's leader and `prev_log_id`: the first of them
        // meets this same refusal, and the stream ends there.
        Err(_) => st.stopped = true,
    }
    st.owed.push_back(Ok(result));
    let a = st.owed.pop_front()?;
    Some((a, st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::{Entry, LogId, Vote};
    use openraft::EntryPayload;
    use openraft::raft::{AppendEntriesResponse, StreamAppendError};
    use openraft::vote::RaftLeaderId;
    use std::sync::{Arc, Mutex};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(openraft::vote::leader_id_adv::LeaderId::new(term, 1), index)
    }

    fn req(term: u64, prev: u64, entries: u64, commit: u64) -> Request {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: Some(log_id(term, prev)),
            leader_commit: Some(log_id(term, commit)),
            entries: (prev + 1..=prev + entries)
                .map(|i| Entry {
                    log_id: log_id(term, i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    /// A follower that records what reaches it and answers from a script (Success when
    /// the script runs out).
    #[derive(Default)]
    struct Follower {
        got: Arc<Mutex<Vec<Request>>>,
        script: VecDeque<AppendEntriesResponse<TypeConfig>>,
    }

    impl NetAppend<TypeConfig> for Follower {
        async fn append_entries(
            &mut self,
            rpc: Request,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
            self.got.lock().unwrap().push(rpc);
            Ok(self
                .script
                .pop_front()
                .unwrap_or(AppendEntriesResponse::Success))
        }
    }

    async fn run(
        f: &mut Follower,
        input: Vec<(Duration, Request)>,
        hold: Duration,
    ) -> (Vec<Answer>, u64) {
        // Requests come as a leader makes them: each after its own pause.
        let input = Box::pin(futures::stream::iter(input).then(|(pause, r)| async move {
            tokio::time::sleep(pause).await;
            r
        }));
        let folded = Counter::default();
        let out = stream_append_folding(
            f,
            input,
            RPCOption::new(Duration::from_secs(1)),
            hold,
            folded.clone(),
        );
        let answers = out.await.unwrap().collect::<Vec<_>>().await;
        (answers, folded.get())
    }

    fn matched(a: &Answer) -> Option<u64> {
        match a {
            Ok(Ok(m)) => m.as_ref().map(|l| l.index),
            other => panic!("expected a match, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_notice_rides_on_the_next_append_and_is_answered_in_order() {
        let mut f = Follower::default();
        let ms = Duration::from_millis;
        let (answers, folded) = run(
            &mut f,
            vec![
                (ms(0), req(2, 10, 3, 10)), // entries 11..=13
                (ms(0), req(2, 13, 0, 13)), // commit notice
                (ms(1), req(2, 13, 2, 13)), // entries 14..=15, 1 ms later
            ],
            ms(2),
        )
        .await;
        let sent = f.got.lock().unwrap();
        assert_eq!(sent.len(), 2, "the notice must not be sent on its own");
        assert_eq!(sent[1].entries.len(), 2);
        assert_eq!(sent[1].leader_commit.as_ref().map(|l| l.index), Some(13));
        // One answer per request, in order.
        let m: Vec<_> = answers.iter().map(matched).collect();
        assert_eq!(m, vec![Some(13), Some(13), Some(15)]);
        assert_eq!(folded, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_with_nothing_behind_it_goes_out_after_the_hold() {
        let mut f = Follower::default();
        let ms = Duration::from_millis;
        let start = tokio::time::Instant::now();
        let (answers, folded) = run(
            &mut f,
            vec![(ms(0), req(2, 13, 0, 13)), (ms(50), req(2, 13, 1, 13))],
            ms(2),
        )
        .await;
        let sent = f.got.lock().unwrap();
        assert_eq!(sent.len(), 2, "a notice must not wait longer than the hold");
        assert!(sent[0].entries.is_empty());
        assert_eq!(folded, 0);
        let m: Vec<_> = answers.iter().map(matched).collect();
        assert_eq!(m, vec![Some(13), Some(14)]);
        assert_eq!(start.elapsed(), ms(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_is_sent_at_once_and_nothing_folds_without_a_hold() {
        let ms = Duration::from_millis;
        // A heartbeat is its stream's only request.
        let mut f = Follower::default();
        let start = tokio::time::Instant::now();
        let (answers, _) = run(&mut f, vec![(ms(0), req(2, 13, 0, 13))], ms(2)).await;
        assert_eq!(start.elapsed(), ms(0));
        assert_eq!(answers.iter().map(matched).collect::<Vec<_>>(), [Some(13)]);

        let mut f = Follower::default();
        let (answers, folded) = run(
            &mut f,
            vec![(ms(0), req(2, 13, 0, 13)), (ms(0), req(2, 13, 1, 13))],
            Duration::ZERO,
        )
        .await;
        assert_eq!(f.got.lock().unwrap().len(), 2);
        assert_eq!(answers.len(), 2);
        assert_eq!(folded, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_answers_the_folded_notice_and_ends_the_stream() {
        let ms = Duration::from_millis;
        let higher = Vote::new_committed(3, 2);
        let mut f = Follower {
            script: [AppendEntriesResponse::HigherVote(higher)].into(),
            ..Follower::default()
        };
        let (answers, folded) = run(
            &mut f,
            vec![
                (ms(0), req(2, 13, 0, 13)),
                (ms(1), req(2, 13, 1, 13)),
                (ms(1), req(2, 14, 1, 13)),
            ],
            ms(2),
        )
        .await;
        assert_eq!(f.got.lock().unwrap().len(), 1);
        assert_eq!(folded, 0, "a refused notice was not answered by a match");
        assert_eq!(answers.len(), 1, "the stream ends at the first refusal");
        assert!(matches!(
            &answers[0],
            Ok(Err(StreamAppendError::HigherVote(v))) if *v == higher
        ));

        // A conflict names the folded notice's own prev_log_id.
        let mut f = Follower {
            script: [AppendEntriesResponse::Conflict].into(),
            ..Follower::default()
        };
        let (answers, _) = run(
            &mut f,
            vec![(ms(0), req(2, 13, 0, 13)), (ms(1), req(2, 13, 1, 13))],
            ms(2),
        )
        .await;
        assert_eq!(answers.len(), 1);
        assert!(matches!(&answers[0], Ok(Err(StreamAppendError::Conflict(l))) if l.index == 13));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_success_answers_the_folded_notice_and_ends_the_stream() {
        let ms = Duration::from_millis;
        let mut f = Follower {
            script: [AppendEntriesResponse::PartialSuccess(Some(log_id(2, 14)))].into(),
            ..Follower::default()
        };
        let (answers, folded) = run(
            &mut f,
            vec![
                (ms(0), req(2, 13, 0, 13)),
                (ms(1), req(2, 13, 2, 13)), // entries 14..=15, only 14 taken
                (ms(0), req(2, 15, 1, 13)),
            ],
            ms(2),
        )
        .await;
        assert_eq!(f.got.lock().unwrap().len(), 1);
        assert_eq!(folded, 1);
        let m: Vec<_> = answers.iter().map(matched).collect();
        assert_eq!(
            m,
            vec![Some(13), Some(14)],
            "openraft resends from 14 in a new stream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_of_another_leader_or_point_is_not_folded() {
        let ms = Duration::from_millis;
        let mut f = Follower::default();
        let (answers, folded) = run(
            &mut f,
            vec![
                (ms(0), req(2, 13, 0, 13)),
                (ms(1), req(3, 13, 1, 13)), // a new term
                (ms(0), req(3, 14, 0, 14)),
                (ms(1), req(3, 10, 1, 14)), // another prev_log_id
            ],
            ms(2),
        )
        .await;
        assert_eq!(f.got.lock().unwrap().len(), 4);
        assert_eq!(folded, 0);
        let m: Vec<_> = answers.iter().map(matched).collect();
        assert_eq!(m, vec![Some(13), Some(14), Some(14), Some(11)]);
    }
}
