//! Elections and quiescence of partition groups, driven by node-level liveness.
//!
//! A partition group keeps no timers of its own (`cairn_raft::data_group_config`): with a
//! thousand groups on a node, per-group heartbeats and election timers cost more than the
//! traffic. Instead, in the manner of CockroachDB's quiesced ranges:
//!
//! - Each node probes every peer it knows every [`PING_EVERY`] ([`ping_loop`]); a peer not
//!   heard from for [`DOWN_AFTER`] counts as down, and a new incarnation in its answer shows
//!   that it restarted. This one probe per node pair stands in for the heartbeats of every
//!   group the pair shares.
//! - A leader ticks (heartbeats, so followers learn the commit index and keep its lease)
//!   only while its group is busy: its log grew in the last [`QUIESCE_AFTER`], or a
//!   follower has not caught up. An idle group sends nothing.
//! - A voter campaigns (pre-vote first) when it knows no leader for [`LEADERLESS_AFTER`],
//!   when its leader's node is down or restarted since it last heard from it, when its leader
//!   is no longer a voter, when it is itself the recorded leader but does not lead (it
//!   restarted), or when, reopened from disk, it has heard nothing from its recorded leader
//!   since (every node restarted: each follower sees its leader's node up and, having known
//!   no earlier incarnation, cannot tell it restarted). Campaigns are spread by a random
//!   delay so two followers rarely split a vote, and at most [`MAX_CAMPAIGNS_PER_PASS`]
//!   start per pass.
//! - A leader whose follower's node restarted beats for a while even when idle, so the
//!   restarted follower hears from it and does not take the last rule's way.
//!
//! Safety does not rest on any of this: Raft's votes and terms decide leadership, and a
//! follower still refuses votes for a leader lease (1 s) after it last heard from its leader,
//! so a node that merely lost sight of a busy leader cannot depose it. A wrong guess costs an
//! election, never a stale read or a lost write.

use crate::core::Core;
use crate::node::Node;
use cairn_types::{NodeId, PartitionId};
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often each peer is probed. A probe answered late (hundreds of milliseconds on a busy
/// machine) and the wait for the next tick together must stay under [`DOWN_AFTER`]. Probing
/// every 200 ms instead was measured to save little (1,000 idle partitions: 0.082 cores
/// against 0.086), not worth the slower detection.
pub(crate) const PING_EVERY: Duration = Duration::from_millis(100);
/// A probe without an answer after this long failed.
const PING_TTL: Duration = Duration::from_millis(800);
/// A peer without an answered probe for this long counts as down. Not much shorter: on a
/// starved machine a live peer's answer can take hundreds of milliseconds, and an idle
/// group's followers hold no lease against a campaign, so a false alarm moves leaders.
pub(crate) const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// How often the supervisor wakes; it looks at every hosted group then only if a peer went
/// down or restarted, or a group of the last pass is still waiting to campaign.
const WAKE_EVERY: Duration = Duration::from_millis(100);
/// How often it looks at every hosted group regardless (reading a thousand groups' metrics
/// ten times a second would be most of an idle node's work; twice a second was still the
/// largest item of an idle node's profile). A peer down or restarted wakes a pass at once.
const PASS_EVERY: Duration = Duration::from_millis(1000);
/// A leader keeps beating this long after its log last grew.
pub(crate) const QUIESCE_AFTER: Duration = Duration::from_secs(2);
/// A voter that knows no leader for this long campaigns.
const LEADERLESS_AFTER: Duration = Duration::from_millis(400);
/// A voter that has heard nothing from its recorded leader this long after it opened treats
/// the group as leaderless. Longer than a live leader takes to notice the restart and beat
/// ([`RESTART_BEAT_WINDOW_MS`]), so that a live idle leader is not deposed.
const SILENT_LEADER_AFTER_MS: u64 = 2_000;
/// A leader beats (even if idle) while one of its followers' nodes restarted less than this
/// ago: the follower reopens its replicas meanwhile and must hear from its leader.
const RESTART_BEAT_WINDOW_MS: u64 = 1_000;
/// Largest random delay before a campaign, so that followers rarely run at once.
const CAMPAIGN_JITTER_MS: u64 = 150;
/// Most campaigns one pass starts; the rest wait for the next pass ([`WAKE_EVERY`] later).
/// Hundreds of elections at once on a busy node starve the very heartbeats that would
/// settle them, and each late one sets off more.
const MAX_CAMPAIGNS_PER_PASS: usize = 64;
/// Least time between two campaigns for one group (about one election round).
const CAMPAIGN_RETRY: Duration = Duration::from_millis(500);
/// A campaign waits until this long after the voter last heard from its leader: the other
/// voters refuse votes until their lease from that leader has run out, and they heard from
/// it at about the same time (a little later, hence the margin).
const CAMPAIGN_NOT_BEFORE_MS: u64 = cairn_raft::DATA_LEADER_LEASE_MS + 50;
/// A leader lease acked longer ago than this is renewed before a proposal.
const LEASE_MARGIN: Duration = Duration::from_millis(cairn_raft::DATA_LEADER_LEASE_MS / 2);
/// Longest wait for that renewal; the proposal goes ahead (and may be refused) after it.
/// Short: one heartbeat round takes milliseconds when a quorum is up, and callers such as the
/// move executor give an attempt ~330 ms (at 1 s, moves on 5-node simulations never got past
/// their first step).
const LEASE_RENEW_WAIT: Duration = Duration::from_millis(200);
/// A leader still leading this long after it began to hand leadership over is stuck: a
/// transferring leader takes no writes and sends no heartbeats, and nothing here elects on a
/// timer, so the supervisor hands leadership to another live voter instead.
const TRANSFER_GIVEUP: Duration = Duration::from_secs(6);

/// What this node knows of its peers' liveness; times are milliseconds since `origin`.
pub(crate) struct PeerHealth {
    origin: Instant,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Campaigns this node's replicas started.
    pub(crate) campaigns: AtomicU64,
    /// Groups whose leader here is ticking (busy) at the last pass.
    pub(crate) ticking: AtomicU64,
    /// New terms seen on this node's replicas (one per replica per term).
    pub(crate) elections: AtomicU64,
    /// Changes of leader seen on this node's replicas.
    pub(crate) leader_changes: AtomicU64,
}

struct Peer {
    last_ok_ms: u64,
    incarnation: Option<u64>,
    /// When a new incarnation was first seen (a restart); 0 for the first one ever seen.
    restarted_ms: u64,
}

impl Default for PeerHealth {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            peers: Default::default(),
            campaigns: Default::default(),
            ticking: Default::default(),
            elections: Default::default(),
            leader_changes: Default::default(),
        }
    }
}

impl PeerHealth {
    /// Milliseconds since this node started watching its peers.
    pub(crate) fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `node`; it gets [`DOWN_AFTER`] to answer a first probe.
    fn track(&self, node: u64) {
        let now = self.now_ms();
        self.lock().entry(node).or_insert(Peer {
            last_ok_ms: now,
            incarnation: None,
            restarted_ms: 0,
        });
    }

    fn answered(&self, node: u64, incarnation: u64) {
        let now = self.now_ms();
        let mut peers = self.lock();
        let p = peers.entry(node).or_insert(Peer {
            last_ok_ms: now,
            incarnation: None,
            restarted_ms: 0,
        });
        p.last_ok_ms = now;
        if p.incarnation.is_some_and(|i| i != incarnation) {
            p.restarted_ms = now;
        }
        p.incarnation = Some(incarnation);
    }

    /// Whether `node` has not answered a probe for [`DOWN_AFTER`]. A node not yet watched is
    /// not down (it is watched from now on).
    pub(crate) fn is_down(&self, node: u64) -> bool {
        let now = self.now_ms();
        let last_ok = self.lock().get(&node).map(|p| p.last_ok_ms);
        match last_ok {
            Some(t) => now.saturating_sub(t) > DOWN_AFTER.as_millis() as u64,
            None => {
                // The guard above is gone: the lock is not reentrant.
                self.track(node);
                false
            }
        }
    }

    /// Peers watched that count as down now.
    pub(crate) fn down_count(&self) -> u64 {
        let now = self.now_ms();
        let down = DOWN_AFTER.as_millis() as u64;
        self.lock()
            .values()
            .filter(|p| now.saturating_sub(p.last_ok_ms) > down)
            .count() as u64
    }

    /// A value that changes whenever a peer goes down, comes back or restarts.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let now = self.now_ms();
        let down = DOWN_AFTER.as_millis() as u64;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let peers = self.lock();
        let mut v: Vec<_> = peers
            .iter()
            .map(|(n, p)| (*n, now.saturating_sub(p.last_ok_ms) > down, p.incarnation))
            .collect();
        v.sort_unstable();
        v.hash(&mut h);
        h.finish()
    }

    /// Peers seen to restart in the last `window_ms`.
    fn restarted_within(&self, window_ms: u64) -> Vec<u64> {
        let now = self.now_ms();
        self.lock()
            .iter()
            .filter(|(_, p)| p.restarted_ms > 0 && now.saturating_sub(p.restarted_ms) < window_ms)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Whether `node` was seen to restart after `since_ms`.
    fn restarted_after(&self, node: u64, since_ms: u64) -> bool {
        self.lock()
            .get(&node)
            .is_some_and(|p| p.restarted_ms > since_ms)
    }
}

/// A leader refuses writes and membership changes once its quorum lease has run out
/// (openraft: `ForwardReason::LeaseExpired`), and a quiescent leader's lease runs out a
/// second after its last heartbeat. Before proposing, renew it with one heartbeat round if
/// it is close to running out; bounded by [`LEASE_RENEW_WAIT`].
pub(crate) async fn ensure_lease(raft: &cairn_raft::typ::Raft) {
    let now = <openraft::TokioInstant as openraft::Instant>::now();
    if lease_fresh(&raft.metrics().borrow_watched(), now) {
        return;
    }
    // Boxed: renewing is the rare case, and inline its heartbeat and wait would make the
    // future of every write (which holds this one) KiBs larger.
    Box::pin(renew_lease(raft, now)).await;
}

/// Whether a proposal made at `since` needs no lease renewal first.
fn lease_fresh(m: &cairn_raft::typ::Metrics, since: openraft::TokioInstant) -> bool {
    m.state != ServerState::Leader
        || m.membership_config.membership().voter_ids().count() <= 1
        || m.last_quorum_acked
            .as_ref()
            .is_some_and(|t| **t + LEASE_MARGIN > since)
}

/// One heartbeat round, then waits (at most [`LEASE_RENEW_WAIT`]) for a quorum to ack it.
async fn renew_lease(raft: &cairn_raft::typ::Raft, now: openraft::TokioInstant) {
    if raft.trigger().heartbeat().await.is_err() {
        return;
    }
    // Acked after `now` minus the margin means acked by this round (or a concurrent one).
    let _ = raft
        .wait(Some(LEASE_RENEW_WAIT))
        .metrics(
            move |m| lease_fresh(m, now + LEASE_MARGIN),
            "the leader lease renewed",
        )
        .await;
}

/// Probes every known peer every [`PING_EVERY`], at most one probe in flight per peer.
pub(crate) async fn ping_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let core = node.core.clone();
    let mut inflight: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Fixed order: tokio's random pick would make a simulation unrepeatable.
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        for peer in core.peers.nodes() {
            if peer == core.id.0 || inflight.get(&peer).is_some_and(|h| !h.is_finished()) {
                continue;
            }
            core.peer_health.track(peer);
            let core = core.clone();
            inflight.insert(
                peer,
                tokio::spawn(async move {
                    if let Ok(incarnation) = core.peers.ping(peer, PING_TTL).await {
                        core.peer_health.answered(peer, incarnation);
                    }
                }),
            );
        }
    }
    for h in inflight.into_values() {
        h.abort();
    }
}

/// What the supervisor remembers of one hosted group between passes.
#[derive(Default)]
struct GroupState {
    /// The replica this state is about: a replica destroyed and opened again starts afresh.
    replica: u64,
    last_log: Option<u64>,
    /// When the log last grew (or this node began to lead).
    active_ms: u64,
    ticking: bool,
    leading: bool,
    /// Since when this replica has had a reason to campaign, and its random delay.
    want: Option<(u64, u64)>,
    campaigned_ms: Option<u64>,
    leaderless_ms: Option<u64>,
    /// The term and leader at the last pass, to count elections and leader changes (`None`
    /// until the first pass over this replica: what came before it is not counted).
    term_leader: Option<(u64, Option<NodeId>)>,
}

/// What one pass reads of a group's Raft metrics.
struct Seen {
    leading: bool,
    term: u64,
    voter: bool,
    /// The recorded leader's node (if its member is known) and whether it is still a voter.
    leader: Option<(Option<NodeId>, bool)>,
    last_log: Option<u64>,
    lagging: bool,
    /// The recorded leader's node, for the heartbeat's report.
    leader_node: Option<NodeId>,
    /// Why the group's Raft stopped, if it stopped on a storage error or a panic.
    failed: Option<String>,
}

/// What the last full pass found, kept for the heartbeat and the storage watch: reading a
/// thousand groups' metrics once for all three cost a third of reading them three times.
pub(crate) struct Walked {
    /// This node's replica report.
    pub(crate) report: crate::heartbeat::Report,
    /// The first group whose Raft stopped on a failure, described.
    pub(crate) failed: Option<String>,
    /// When the pass made it.
    at: Instant,
}

impl Walked {
    /// Whether it is recent enough to stand for a walk of its own; if the supervisor stopped
    /// walking, its users walk the groups themselves again.
    pub(crate) fn fresh(&self) -> bool {
        self.at.elapsed() < 3 * PASS_EVERY
    }
}

/// Reads what a pass needs without cloning anything: a pass visits every hosted group ten
/// times a second, so this is the whole idle cost of a thousand groups.
fn seen(raft: &cairn_raft::typ::Raft, me: u64) -> Seen {
    let rx = raft.metrics();
    let m = rx.borrow_watched();
    let last_log = m.last_log_index;
    let failed = match &m.running_state {
        Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
        Err(e) => Some(e.to_string()),
    };
    if m.state == ServerState::Leader {
        let lagging = m.replication.as_ref().is_some_and(|rep| {
            rep.values()
                .any(|matched| matched.as_ref().map(|l| l.index) < last_log)
        });
        return Seen {
            leading: true,
            term: m.current_term,
            voter: true,
            leader: None,
            last_log,
            lagging,
            leader_node: cairn_raft::leader_node(&m),
            failed,
        };
    }
    let membership = m.membership_config.membership();
    let is_voter = |r: u64| membership.get_joint_config().iter().any(|c| c.contains(&r));
    let leader = m.current_leader.map(|l| {
        let node = membership.get_node(&l).map(|n| NodeId(n.node));
        (node, is_voter(l))
    });
    Seen {
        leading: false,
        term: m.current_term,
        voter: is_voter(me),
        leader_node: leader.and_then(|(n, _)| n),
        leader,
        last_log,
        lagging: false,
        failed,
    }
}

/// Whether one of the group's members lives on one of `nodes`.
fn has_member_on(raft: &cairn_raft::typ::Raft, nodes: &[u64]) -> bool {
    let rx = raft.metrics();
    let m = rx.borrow_watched();
    m.membership_config
        .membership()
        .nodes()
        .any(|(_, n)| nodes.contains(&n.node))
}

/// Whether this node sees a majority of the group's voters up (itself included). A node cut
/// off from the rest sees every peer down; campaigning then would only win, once the cut
/// heals, an idle group whose followers hold no lease, deposing a healthy leader.
fn quorum_up(core: &Core, raft: &cairn_raft::typ::Raft) -> bool {
    let rx = raft.metrics();
    let m = rx.borrow_watched();
    let membership = m.membership_config.membership();
    membership.get_joint_config().iter().all(|voters| {
        let up = voters
            .iter()
            .filter(|r| {
                membership
                    .get_node(r)
                    .is_some_and(|n| n.node == core.id.0 || !core.peer_health.is_down(n.node))
            })
            .count();
        up * 2 > voters.len()
    })
}

/// A leader that started to hand leadership to `t.target` and still leads: hands it to
/// another voter whose node is up instead (the target is likely down or behind).
fn rescue_transfer(
    core: &Core,
    raft: &cairn_raft::typ::Raft,
    me: u64,
    t: &mut crate::core::Transfer,
    now: u64,
) {
    let target = {
        let rx = raft.metrics();
        let m = rx.borrow_watched();
        let membership = m.membership_config.membership();
        let up = |r: &u64| {
            membership
                .get_node(r)
                .is_some_and(|n| !core.peer_health.is_down(n.node))
        };
        let voters: Vec<u64> = membership.voter_ids().filter(|r| *r != me).collect();
        voters
            .iter()
            .copied()
            .find(|r| *r != t.target && up(r))
            .or_else(|| voters.iter().copied().find(|r| up(r)))
    };
    let Some(target) = target else { return };
    tracing::info!(
        replica = me,
        from = t.target,
        to = target,
        "leader hand-over stuck; handing over to another voter"
    );
    t.started_ms = now;
    t.target = target;
    let raft = raft.clone();
    tokio::spawn(async move {
        let _ = raft.trigger().transfer_leader(target).await;
    });
}

/// Runs the passes of the module doc until `stop`: every [`PASS_EVERY`], and every
/// [`WAKE_EVERY`] while a peer changed or a group waits for a leader.
pub(crate) async fn supervise_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let core = node.core.clone();
    let mut groups: HashMap<PartitionId, GroupState> = HashMap::new();
    let mut tick = tokio::time::interval(WAKE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen_peers, mut urgent, mut last_pass) = (0, true, Instant::now());
    let mut last_walk: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let peers = core.peer_health.fingerprint();
        let walk_due = last_walk.is_none_or(|t| t.elapsed() >= PASS_EVERY);
        if urgent || peers != seen_peers || last_pass.elapsed() >= PASS_EVERY || walk_due {
            seen_peers = peers;
            last_pass = Instant::now();
            // The report and the failure check ride on one pass a second, not on every
            // urgent one: while a table of a thousand partitions forms, passes run ten times
            // a second under the replicas' read lock, which the opening replicas need.
            if walk_due {
                last_walk = Some(Instant::now());
                core.exports.sweep();
            }
            urgent = pass(&core, &mut groups, walk_due);
        }
    }
}

/// Whether a voter should doubt its recorded leader: its replica was reopened from disk and
/// has heard nothing since, [`SILENT_LEADER_AFTER_MS`] on. Only a reopened replica: it may
/// record a leader from before a restart of every node. A fresh replica's first
/// AppendEntries can be late on a busy node (a table of many partitions being made), and
/// deposing its slow but live leader then starts one election after another.
fn silent_since_reopened(recovered: bool, opened_ms: u64, heard_ms: u64, now_ms: u64) -> bool {
    recovered && heard_ms == opened_ms && now_ms.saturating_sub(opened_ms) >= SILENT_LEADER_AFTER_MS
}

/// One look at every hosted group; true if some group waits to campaign or has no leader,
/// so the next wake should look again. With `walk`, it also records what it saw
/// ([`Walked`]).
fn pass(core: &Arc<Core>, groups: &mut HashMap<PartitionId, GroupState>, walk: bool) -> bool {
    // Nothing below waits, so the pass holds the read lock rather than clone every replica.
    let replicas = core.replicas.read().unwrap_or_else(|p| p.into_inner());
    groups.retain(|id, g| replicas.get(id).is_some_and(|r| r.id.0 == g.replica));
    let now = core.peer_health.now_ms();
    let mut ticking = 0;
    let mut urgent = false;
    let mut transfers = core.transfers.lock().unwrap_or_else(|p| p.into_inner());
    transfers.retain(|id, _| replicas.contains_key(id));
    let restarted = core.peer_health.restarted_within(RESTART_BEAT_WINDOW_MS);
    let mut campaigns = 0;
    let mut walked = walk.then(|| Walked {
        report: Default::default(),
        failed: None,
        at: Instant::now(),
    });
    for (&id, r) in replicas.iter() {
        let s = seen(&r.raft, r.id.0);
        if let Some(w) = walked.as_mut() {
            w.report
                .add(core, (id, r), s.leader_node, s.term, s.leading);
            if let (None, Some(e)) = (&w.failed, &s.failed) {
                w.failed = Some(crate::core::failure(id, e));
            }
        }
        let g = groups.entry(id).or_insert_with(|| GroupState {
            replica: r.id.0,
            ..Default::default()
        });

        // A leader beats while its group is busy and falls silent once it is idle; a
        // follower's restart counts as busy, so the follower learns who leads.
        if s.leading
            && (!g.leading
                || g.last_log != s.last_log
                || (!restarted.is_empty() && has_member_on(&r.raft, &restarted)))
        {
            g.active_ms = now;
        }
        g.leading = s.leading;
        g.last_log = s.last_log;
        if let Some((term, leader)) = g.term_leader {
            let health = &core.peer_health;
            health
                .elections
                .fetch_add(s.term.saturating_sub(term), Ordering::Relaxed);
            if s.leader_node.is_some() && s.leader_node != leader {
                health.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
        }
        g.term_leader = Some((s.term, s.leader_node.or(g.term_leader.and_then(|t| t.1))));
        let busy = s.leading
            && (now.saturating_sub(g.active_ms) < QUIESCE_AFTER.as_millis() as u64 || s.lagging);
        if busy != g.ticking {
            r.raft.runtime_config().tick(busy);
            g.ticking = busy;
        }
        ticking += u64::from(busy);

        // A hand-over that never completed leaves a leader that takes no writes.
        if let Some(t) = transfers.get_mut(&id) {
            if !s.leading || t.term != s.term {
                transfers.remove(&id);
            } else {
                urgent = true;
                if now.saturating_sub(t.started_ms) >= TRANSFER_GIVEUP.as_millis() as u64 {
                    rescue_transfer(core, &r.raft, r.id.0, t, now);
                }
            }
        }

        // A voter campaigns when its group has, or may have, lost its leader.
        let heard = r.heard_ms.load(Ordering::Relaxed);
        // The first three conditions can be passing states (an election or a hand-over
        // under way), so they must last a while before they count.
        let (soft, hard) = if s.leading || !s.voter {
            (None, None)
        } else {
            match s.leader {
                None | Some((None, _)) => (Some("no leader known"), None),
                Some((Some(n), _)) if n == core.id => {
                    (Some("recorded as leader but not leading"), None)
                }
                Some((_, false)) => (Some("the leader is no longer a voter"), None),
                Some((Some(n), _)) if core.peer_health.is_down(n.0) => {
                    (None, Some("the leader's node is down"))
                }
                Some((Some(n), _)) if core.peer_health.restarted_after(n.0, heard) => {
                    (None, Some("the leader's node restarted"))
                }
                Some(_) if silent_since_reopened(r.recovered, r.opened_ms, heard, now) => (
                    Some("nothing heard from the leader since this replica opened"),
                    None,
                ),
                Some(_) => (None, None),
            }
        };
        let reason = match soft {
            Some(why) => {
                let since = *g.leaderless_ms.get_or_insert(now);
                (now.saturating_sub(since) >= LEADERLESS_AFTER.as_millis() as u64).then_some(why)
            }
            None => {
                g.leaderless_ms = None;
                hard
            }
        };
        urgent |= g.leaderless_ms.is_some();
        let Some(reason) = reason else {
            g.want = None;
            continue;
        };
        urgent = true;
        let (since, delay) = *g.want.get_or_insert_with(|| {
            (
                now,
                cairn_types::entropy::next_u64() % (CAMPAIGN_JITTER_MS + 1),
            )
        });
        let retry_ok = g
            .campaigned_ms
            .is_none_or(|t| now.saturating_sub(t) >= CAMPAIGN_RETRY.as_millis() as u64);
        let leased = now < heard.saturating_add(CAMPAIGN_NOT_BEFORE_MS);
        if now.saturating_sub(since) < delay
            || !retry_ok
            || leased
            || campaigns >= MAX_CAMPAIGNS_PER_PASS
            || !quorum_up(core, &r.raft)
        {
            continue;
        }
        campaigns += 1;
        g.campaigned_ms = Some(now);
        g.want = None;
        core.peer_health.campaigns.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(partition = %id, reason, "campaigning");
        let raft = r.raft.clone();
        tokio::spawn(async move {
            let _ = raft.trigger().elect(true).await;
        });
    }
    core.peer_health.ticking.store(ticking, Ordering::Relaxed);
    if let Some(w) = walked {
        *core.walked.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
    }
    urgent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_down_and_a_new_incarnation_is_a_restart() {
        let h = PeerHealth::default();
        assert!(!h.is_down(2), "a peer not yet probed gets time to answer");
        h.answered(2, 7);
        tokio::time::advance(DOWN_AFTER / 2).await;
        assert!(!h.is_down(2));
        let up = h.fingerprint();
        tokio::time::advance(DOWN_AFTER).await;
        assert!(h.is_down(2), "no answer for longer than DOWN_AFTER");
        assert_eq!(h.down_count(), 1);
        assert_ne!(h.fingerprint(), up, "going down wakes the supervisor");

        let heard = h.now_ms();
        h.answered(2, 7);
        assert!(!h.is_down(2));
        assert_eq!(h.fingerprint(), up, "back up as before");
        assert!(
            !h.restarted_after(2, heard),
            "the same incarnation is no restart"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        h.answered(2, 8);
        assert!(
            h.restarted_after(2, heard),
            "a new incarnation is a restart"
        );
        assert!(
            !h.restarted_after(2, h.now_ms()),
            "heard from since the restart"
        );
        assert_ne!(h.fingerprint(), up, "a restart wakes the supervisor");
        assert_eq!(
            h.restarted_within(RESTART_BEAT_WINDOW_MS),
            vec![2],
            "its leaders beat for a while"
        );
        tokio::time::advance(Duration::from_millis(RESTART_BEAT_WINDOW_MS)).await;
        assert!(h.restarted_within(RESTART_BEAT_WINDOW_MS).is_empty());
    }

    #[test]
    fn only_a_reopened_replica_doubts_a_silent_leader() {
        let opened = 10_000;
        let later = opened + SILENT_LEADER_AFTER_MS;
        assert!(silent_since_reopened(true, opened, opened, later));
        assert!(
            !silent_since_reopened(true, opened, opened, later - 1),
            "too soon"
        );
        assert!(
            !silent_since_reopened(true, opened, opened + 5, later),
            "it heard from the leader"
        );
        assert!(
            !silent_since_reopened(false, opened, opened, later * 10),
            "a fresh replica waits for its leader however long it takes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_incarnation_is_no_restart() {
        // Every node restarted: each sees its peers' new incarnations for the first time,
        // so none counts as a restart; the voters' silence rule elects instead.
        let h = PeerHealth::default();
        h.answered(2, 9);
        assert!(!h.restarted_after(2, 0));
        assert!(h.restarted_within(RESTART_BEAT_WINDOW_MS).is_empty());
    }
}
