//! The controller's decisions: a pure function of the cluster as the metadata leader sees
//! it (metadata, node liveness, partition load, operations in flight, thresholds) that
//! returns what to do next. An executor beside the metadata leader runs the decisions
//! through the split, move and transfer mechanisms; keeping the choice pure lets it be
//! tested over many random clusters without one.
//!
//! Order of concern, each pass: repair replicas on down nodes and drain draining ones
//! (fewest live voters first), then split partitions that are too big or too hot, then even
//! out leader counts, then replica counts, then the bytes the nodes hold. A partition gets
//! at most one decision per pass and none while an operation on it runs or cools down.

use crate::MetaState;
pub use cairn_types::{KeySample, PartitionLoad};
use cairn_types::{META_GROUP, NodeId, OpKind, OpState, PartitionId};
use std::collections::{BTreeMap, BTreeSet};

/// How far above a node's fair share of the load a partition must be to split by load.
const LOAD_SPLIT_MARGIN: f64 = 1.25;
/// Consecutive controller passes a partition must be found hot in ([`load_hot`]) before it
/// splits by load. Nodes report their partitions' rates at different moments: at the start
/// of a burst, one partition's fresh rate beside the others' rates from a quiet second looks
/// like more than a fair share, and a split made on that only adds a Raft group to feed.
pub const LOAD_SPLIT_PASSES: u32 = 3;

/// The controller's thresholds and limits.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerConfig {
    /// A partition above this many bytes splits at its middle key.
    pub split_size: u64,
    /// A partition above this many operations per second (over the window) splits at the
    /// key that halves its load.
    pub split_qps: f64,
    /// Moves in flight in the whole cluster, at most.
    pub max_moves: usize,
    /// Moves in flight from or to one node, at most.
    pub max_moves_per_node: usize,
    /// No new decision on a partition this long after its last operation changed.
    pub cooldown_ms: u64,
    /// A move for byte balance must narrow the gap between two nodes' bytes by at least
    /// this much: copying a replica is not free, and sizes are estimates.
    pub balance_bytes: u64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            split_size: 96 << 20,
            split_qps: 2500.0,
            max_moves: 4,
            max_moves_per_node: 1,
            cooldown_ms: 30_000,
            balance_bytes: 48 << 20,
        }
    }
}

/// The cluster as the planner sees it.
#[derive(Clone, Debug)]
pub struct ClusterView<'a> {
    /// The metadata, operations included.
    pub meta: &'a MetaState,
    /// Nodes heard from recently.
    pub live: BTreeSet<NodeId>,
    /// Nodes not heard from for the down-after period: their replicas are replaced.
    pub down: BTreeSet<NodeId>,
    /// Nodes being drained: everything moves off them.
    pub draining: BTreeSet<NodeId>,
    /// Partition sizes and loads.
    pub loads: BTreeMap<PartitionId, PartitionLoad>,
    /// Partition leaders as nodes report them.
    pub leaders: BTreeMap<PartitionId, NodeId>,
    /// The metadata leader's clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// For each partition, how many consecutive earlier passes found it hot ([`load_hot`]).
    pub hot_passes: BTreeMap<PartitionId, u32>,
}

/// Partitions carrying more than `cfg.split_qps` and more than a node's fair share of the
/// load (the total over the nodes that take load, with a margin). Only those split by load:
/// partitions no bigger than a fair share are spread by moving leaders, and splitting them
/// only adds Raft groups for every node to feed.
pub fn load_hot(view: &ClusterView<'_>, cfg: &PlannerConfig) -> BTreeSet<PartitionId> {
    let targets = view
        .live
        .iter()
        .filter(|n| {
            view.meta.nodes.contains_key(n) && !view.down.contains(n) && !view.draining.contains(n)
        })
        .count();
    // A set, not a lookup per load: a partition's lookup walks every table.
    let known: BTreeSet<PartitionId> = view.meta.partitions().map(|(_, p)| p.id).collect();
    let loads = || {
        view.loads
            .iter()
            .filter(|(p, _)| **p != META_GROUP && known.contains(*p))
    };
    let total_qps: f64 = loads().map(|(_, l)| l.qps).sum();
    let fair_share = total_qps / targets.max(1) as f64;
    loads()
        .filter(|(_, l)| l.qps > cfg.split_qps && l.qps > fair_share * LOAD_SPLIT_MARGIN)
        .map(|(p, _)| *p)
        .collect()
}

/// One thing the controller decided, with the reason it gives in its status.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Split `partition` so that `key` starts a new partition.
    Split {
        /// The partition.
        partition: PartitionId,
        /// The first key of the right half.
        key: Vec<u8>,
        /// Why.
        why: String,
    },
    /// Move `partition`'s replica (or the metadata group's, for partition 0) from a node to
    /// another.
    Move {
        /// The partition.
        partition: PartitionId,
        /// The node giving its replica up.
        from: NodeId,
        /// The node receiving one.
        to: NodeId,
        /// Why.
        why: String,
    },
    /// Hand `partition`'s leadership to its replica on `to`.
    TransferLeader {
        /// The partition.
        partition: PartitionId,
        /// The new leader's node.
        to: NodeId,
        /// Why.
        why: String,
    },
    /// Something an operator must look at, left alone.
    Report {
        /// The partition.
        partition: PartitionId,
        /// What is wrong.
        why: String,
    },
}

impl Decision {
    /// The partition the decision is about.
    pub fn partition(&self) -> PartitionId {
        match self {
            Decision::Split { partition, .. }
            | Decision::Move { partition, .. }
            | Decision::TransferLeader { partition, .. }
            | Decision::Report { partition, .. } => *partition,
        }
    }
}

/// A group the planner may change: a partition, or the metadata group (partition 0).
struct Group {
    id: PartitionId,
    replicas: Vec<NodeId>,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// Decides what to do next. See the module documentation for the order of concerns.
pub fn plan(view: &ClusterView<'_>, cfg: &PlannerConfig) -> Vec<Decision> {
    let meta = view.meta;
    let mut groups: Vec<Group> = meta
        .partitions()
        .map(|(_, p)| Group {
            id: p.id,
            replicas: p.replicas.clone(),
            start: p.range.start.clone(),
            end: p.range.end.clone(),
        })
        .collect();
    if !meta.meta_voters.is_empty() {
        groups.push(Group {
            id: META_GROUP,
            replicas: meta.meta_voters.keys().copied().collect(),
            start: Vec::new(),
            end: None,
        });
    }
    // Nodes that may receive replicas and leadership.
    let targets: BTreeSet<NodeId> = view
        .live
        .iter()
        .filter(|n| {
            meta.nodes.contains_key(n) && !view.down.contains(n) && !view.draining.contains(n)
        })
        .copied()
        .collect();

    // A partition with an operation running gets no decision, nor one that already got
    // one this pass. A partition changed a moment ago (a move or a transfer) cools down
    // before replica balance moves it again; repair, drain, splits and leader balance do
    // not wait for that.
    let mut busy: BTreeSet<PartitionId> = BTreeSet::new();
    let mut cooling: BTreeSet<PartitionId> = BTreeSet::new();
    let mut t = Tally {
        replicas: targets.iter().map(|n| (*n, 0)).collect(),
        bytes: targets.iter().map(|n| (*n, 0)).collect(),
        moving: BTreeMap::new(),
    };
    let mut moves_running = 0;
    // A partition's size as its leader reports it (0 when not reported yet).
    let size = |p: PartitionId| view.loads.get(&p).map_or(0, |l| l.bytes);
    for g in groups.iter().filter(|g| g.id != META_GROUP) {
        for n in &g.replicas {
            if let Some(c) = t.replicas.get_mut(n) {
                *c += 1;
            }
            if let Some(b) = t.bytes.get_mut(n) {
                // Sizes come from leaders' heartbeats: never trusted not to overflow.
                *b = b.saturating_add(size(g.id));
            }
        }
    }
    for op in meta.operations.values() {
        let running = op.state == OpState::Running;
        if running {
            busy.insert(op.partition);
        }
        // A split needs no cool-down: its halves are measured afresh, and a half that is
        // still hot splits again at once.
        if !matches!(op.kind, OpKind::Split { .. })
            && op.updated_ms.saturating_add(cfg.cooldown_ms) > view.now_ms
        {
            cooling.insert(op.partition);
        }
        if let (true, OpKind::Move { from, to, .. }) = (running, &op.kind) {
            // Count moves in flight as if done, so the next pass does not undo or repeat
            // them.
            moves_running += 1;
            let moved = (op.partition, size(op.partition));
            t.note_move(moved, *from, *to);
        }
    }
    let mut out = Vec::new();
    let mut budget = cfg.max_moves.saturating_sub(moves_running);
    let free = |moving: &BTreeMap<NodeId, usize>, n: &NodeId| {
        moving.get(n).copied().unwrap_or(0) < cfg.max_moves_per_node
    };

    // 1. Repair and drain, the groups with the fewest live voters first.
    let mut urgent: Vec<(usize, usize, NodeId)> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        if busy.contains(&g.id) {
            continue;
        }
        let live_voters = g
            .replicas
            .iter()
            .filter(|n| view.live.contains(n) && !view.down.contains(n))
            .count();
        let leaving = g
            .replicas
            .iter()
            .find(|n| view.down.contains(n) || view.draining.contains(n));
        if let Some(n) = leaving {
            urgent.push((live_voters, i, *n));
        }
    }
    urgent.sort();
    for (live_voters, i, from) in urgent {
        let g = &groups[i];
        if live_voters < g.replicas.len() / 2 + 1 {
            out.push(Decision::Report {
                partition: g.id,
                why: format!(
                    "lost its quorum: {live_voters} of {} voters live; left alone",
                    g.replicas.len()
                ),
            });
            busy.insert(g.id);
            continue;
        }
        // A down node does no work, so only a live source counts against its limit.
        if budget == 0 || (!free(&t.moving, &from) && !view.down.contains(&from)) {
            continue;
        }
        let to = targets
            .iter()
            .filter(|n| !g.replicas.contains(n) && free(&t.moving, n))
            .min_by_key(|n| (t.replicas.get(n).copied().unwrap_or(0), **n))
            .copied();
        let Some(to) = to else {
            out.push(Decision::Report {
                partition: g.id,
                why: format!("its replica on {from} must go but no live node can take it"),
            });
            busy.insert(g.id);
            continue;
        };
        let why = if view.down.contains(&from) {
            format!("{from} is down")
        } else {
            format!("{from} is draining")
        };
        t.decide_move(&mut out, &mut busy, (g.id, size(g.id)), (from, to), why);
        budget -= 1;
    }

    // 2. Splits by size, then by load (see [`load_hot`]), once a partition has stayed hot
    // for [`LOAD_SPLIT_PASSES`] passes.
    let hot = load_hot(view, cfg);
    let hot_enough = |p: PartitionId| {
        hot.contains(&p) && view.hot_passes.get(&p).copied().unwrap_or(0) + 1 >= LOAD_SPLIT_PASSES
    };
    for g in groups.iter().filter(|g| g.id != META_GROUP) {
        if busy.contains(&g.id) {
            continue;
        }
        let Some(load) = view.loads.get(&g.id) else {
            continue;
        };
        let inside = |k: &Vec<u8>| *k > g.start && g.end.as_ref().is_none_or(|e| k < e);
        let decision = if load.bytes > cfg.split_size {
            load.size_split_key
                .clone()
                .filter(inside)
                .map(|key| Decision::Split {
                    partition: g.id,
                    key,
                    why: format!("{} bytes, above {}", load.bytes, cfg.split_size),
                })
        } else if hot_enough(g.id) {
            Some(match load.load_split_key.clone().filter(inside) {
                Some(key) => Decision::Split {
                    partition: g.id,
                    key,
                    why: format!("{:.0} ops/s, above {:.0}", load.qps, cfg.split_qps),
                },
                None => Decision::Report {
                    partition: g.id,
                    why: format!("{:.0} ops/s on one key; a split cannot spread it", load.qps),
                },
            })
        } else {
            None
        };
        if let Some(d) = decision {
            busy.insert(g.id);
            out.push(d);
        }
    }

    // 3. Leaders: off draining nodes, then from the node leading most to the one leading
    // fewest, while they differ by more than one. Before replica balance: a transfer is
    // cheap and quick, and the two halves of a hot range split a moment ago (both led by
    // the left half's leader) must not wait behind moves and their cool-down.
    let mut leaders: BTreeMap<NodeId, i64> = targets.iter().map(|n| (*n, 0)).collect();
    for g in groups.iter().filter(|g| g.id != META_GROUP) {
        if let Some(c) = view.leaders.get(&g.id).and_then(|l| leaders.get_mut(l)) {
            *c += 1;
        }
    }
    for g in groups.iter().filter(|g| g.id != META_GROUP) {
        let Some(l) = view.leaders.get(&g.id) else {
            continue;
        };
        if busy.contains(&g.id) || !view.draining.contains(l) {
            continue;
        }
        let to = g
            .replicas
            .iter()
            .filter(|n| targets.contains(n))
            .min_by_key(|n| (leaders.get(n).copied().unwrap_or(0), **n))
            .copied();
        if let Some(to) = to {
            *leaders.entry(to).or_default() += 1;
            out.push(Decision::TransferLeader {
                partition: g.id,
                to,
                why: format!("{l} is draining"),
            });
            busy.insert(g.id);
        }
    }
    while let (Some((&from, &max)), Some((&to, &min))) = (
        leaders.iter().max_by_key(|(n, c)| (**c, **n)),
        leaders.iter().min_by_key(|(n, c)| (**c, **n)),
    ) {
        if max - min <= 1 {
            break;
        }
        let pick = groups.iter().find(|g| {
            g.id != META_GROUP
                && !busy.contains(&g.id)
                && view.leaders.get(&g.id) == Some(&from)
                && g.replicas.contains(&to)
        });
        let Some(g) = pick else { break };
        *leaders.entry(from).or_default() -= 1;
        *leaders.entry(to).or_default() += 1;
        out.push(Decision::TransferLeader {
            partition: g.id,
            to,
            why: format!("{from} leads {max} partitions, {to} leads {min}"),
        });
        busy.insert(g.id);
    }
    // 4. Replica counts: from the fullest node to the emptiest while they differ by more
    // than one, moving the replica that best evens out the two nodes' bytes.
    while budget > 0 {
        let counts: Vec<(i64, NodeId)> = t
            .replicas
            .iter()
            .filter(|(n, _)| targets.contains(n))
            .map(|(n, c)| (*c, *n))
            .collect();
        let (Some(&(max, from)), Some(&(min, to))) = (counts.iter().max(), counts.iter().min())
        else {
            break;
        };
        if max - min <= 1 || !free(&t.moving, &from) || !free(&t.moving, &to) {
            break;
        }
        let skip = |p| busy.contains(&p) || cooling.contains(&p);
        let pick = closest_move(
            &groups,
            skip,
            size,
            (from, t.bytes[&from]),
            (to, t.bytes[&to]),
        );
        let Some((p, _)) = pick else { break };
        let why = format!("{from} holds {max} replicas, {to} holds {min}");
        t.decide_move(&mut out, &mut busy, (p, size(p)), (from, to), why);
        budget -= 1;
    }

    // 5. Bytes: a replica moves from a node holding more bytes to one holding a replica
    // fewer, when that narrows the gap between the two by at least `balance_bytes`: their
    // counts only swap, so count balance holds, and each such move lowers the sum of the
    // squares of the nodes' bytes, so no later one undoes it. Nodes with equal counts are
    // left as they are (a move between them would upset count balance), and so is a node
    // holding a partition whose size no leader has reported yet (its bytes are not known).
    let sized: BTreeSet<NodeId> = targets
        .iter()
        .filter(|n| {
            groups.iter().all(|g| {
                g.id == META_GROUP || !g.replicas.contains(n) || view.loads.contains_key(&g.id)
            })
        })
        .copied()
        .collect();
    'bytes: while budget > 0 {
        let mut free_sized: Vec<NodeId> = sized
            .iter()
            .filter(|n| free(&t.moving, n))
            .copied()
            .collect();
        // Heaviest first.
        free_sized.sort_by_key(|n| (std::cmp::Reverse(t.bytes[n]), *n));
        for &from in &free_sized {
            // Lightest first: once a pair's gap is below the threshold, the rest are too.
            for &to in free_sized.iter().rev() {
                let (bf, bt) = (t.bytes[&from], t.bytes[&to]);
                if bf.saturating_sub(bt) < cfg.balance_bytes.max(1) {
                    break;
                }
                if t.replicas[&from] != t.replicas[&to] + 1 {
                    continue;
                }
                let skip = |p| busy.contains(&p) || cooling.contains(&p);
                let Some((p, left)) = closest_move(&groups, skip, size, (from, bf), (to, bt))
                else {
                    continue;
                };
                if (bf - bt).saturating_sub(left) < cfg.balance_bytes.max(1) {
                    continue;
                }
                let why = format!("{from} holds {bf} bytes, {to} holds {bt}");
                t.decide_move(&mut out, &mut busy, (p, size(p)), (from, to), why);
                budget -= 1;
                continue 'bytes;
            }
        }
        break;
    }

    out
}

/// The key that best halves the load the samples show, for a split by load: a sampled key
/// with about as many sampled requests below it as at or above it. A scan counts against
/// every key strictly inside its range (splitting there would make it cross partitions),
/// so a key that every scan crosses is never chosen. `None` when all the load is on one
/// key, or no key inside `(start, end)` leaves load on both sides.
pub fn load_split_key(samples: &[KeySample], start: &[u8], end: Option<&[u8]>) -> Option<Vec<u8>> {
    let inside = |k: &[u8]| k > start && end.is_none_or(|e| k < e);
    let mut points: Vec<&[u8]> = samples
        .iter()
        .filter_map(|s| match s {
            KeySample::Key(k) => Some(k.as_slice()),
            KeySample::Range(..) => None,
        })
        .collect();
    points.sort();
    let ranges: Vec<(&[u8], Option<&[u8]>)> = samples
        .iter()
        .filter_map(|s| match s {
            KeySample::Range(a, b) => Some((a.as_slice(), b.as_deref())),
            KeySample::Key(_) => None,
        })
        .collect();
    // Scans count as load too: each adds one request at its start.
    let total = points.len() + ranges.len();
    let mut best: Option<(usize, &[u8])> = None;
    let mut candidates: Vec<&[u8]> = points.clone();
    candidates.extend(ranges.iter().map(|(a, _)| *a));
    candidates.sort();
    candidates.dedup();
    for k in candidates.into_iter().filter(|k| inside(k)) {
        let below =
            points.partition_point(|p| *p < k) + ranges.iter().filter(|(a, _)| *a < k).count();
        let above = total - below;
        if below == 0 || above == 0 {
            continue;
        }
        let crossing = ranges
            .iter()
            .filter(|(a, b)| *a < k && b.is_none_or(|b| k < b))
            .count();
        if crossing * 2 > ranges.len().max(1) && crossing > 0 {
            continue; // most scans would cross it
        }
        let cost = below.abs_diff(above) + 2 * crossing;
        if best.is_none_or(|(c, _)| cost < c) {
            best = Some((cost, k));
        }
    }
    best.map(|(_, k)| k.to_vec())
}

/// What each node holds and has in flight, as the decisions so far leave it.
struct Tally {
    /// Partition replicas per node that may take replicas.
    replicas: BTreeMap<NodeId, i64>,
    /// Bytes of those replicas, by the partitions' reported sizes.
    bytes: BTreeMap<NodeId, u64>,
    /// Moves in flight from or to each node.
    moving: BTreeMap<NodeId, usize>,
}

impl Tally {
    /// Counts a move of `group` (of `size` bytes) from `from` to `to` as done.
    fn note_move(&mut self, (group, size): (PartitionId, u64), from: NodeId, to: NodeId) {
        *self.moving.entry(from).or_default() += 1;
        *self.moving.entry(to).or_default() += 1;
        // Only nodes that may take replicas are counted (a move in flight may involve others).
        if group != META_GROUP {
            if let Some(c) = self.replicas.get_mut(&from) {
                *c -= 1;
            }
            if let Some(c) = self.replicas.get_mut(&to) {
                *c += 1;
            }
            if let Some(b) = self.bytes.get_mut(&from) {
                *b = b.saturating_sub(size);
            }
            if let Some(b) = self.bytes.get_mut(&to) {
                *b = b.saturating_add(size);
            }
        }
    }

    /// Decides a move: counts it, adds it to `out` and marks the partition busy.
    fn decide_move(
        &mut self,
        out: &mut Vec<Decision>,
        busy: &mut BTreeSet<PartitionId>,
        moved: (PartitionId, u64),
        (from, to): (NodeId, NodeId),
        why: String,
    ) {
        self.note_move(moved, from, to);
        out.push(Decision::Move {
            partition: moved.0,
            from,
            to,
            why,
        });
        busy.insert(moved.0);
    }
}

/// The gap between two nodes' bytes after moving `size` bytes from the first to the second.
fn gap_after(from: u64, to: u64, size: u64) -> u64 {
    from.saturating_sub(size).abs_diff(to.saturating_add(size))
}

/// Of the partitions on `from` and not on `to` that `skip` allows, the one whose move
/// leaves the two nodes' bytes (`bf`, `bt`) closest, with the gap it leaves.
fn closest_move(
    groups: &[Group],
    skip: impl Fn(PartitionId) -> bool,
    size: impl Fn(PartitionId) -> u64,
    (from, bf): (NodeId, u64),
    (to, bt): (NodeId, u64),
) -> Option<(PartitionId, u64)> {
    groups
        .iter()
        .filter(|g| {
            g.id != META_GROUP
                && !skip(g.id)
                && g.replicas.contains(&from)
                && !g.replicas.contains(&to)
        })
        .map(|g| (g.id, gap_after(bf, bt, size(g.id))))
        .min_by_key(|(_, gap)| *gap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetaCommand;
    use cairn_types::{NodeDesc, ReplicaId};

    /// A small deterministic generator (splitmix64), so every case replays from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A cluster of `nodes` nodes (the first three found the metadata group) holding
    /// `partitions` partitions of 3 replicas, placed at random.
    fn cluster(rng: &mut Rng, nodes: u64, partitions: usize) -> MetaState {
        let placement = (0..partitions)
            .map(|_| {
                let mut set: Vec<NodeId> = Vec::new();
                while set.len() < 3 {
                    let n = NodeId(1 + rng.below(nodes));
                    if !set.contains(&n) {
                        set.push(n);
                    }
                }
                set
            })
            .collect();
        cluster_placed(nodes, placement)
    }

    /// A cluster of `nodes` nodes holding one partition per entry of `placement`, on the
    /// nodes it names.
    fn cluster_placed(nodes: u64, placement: Vec<Vec<NodeId>>) -> MetaState {
        let partitions = placement.len();
        let mut s = MetaState::default();
        for n in 1..=nodes {
            s.apply(&MetaCommand::RegisterNode(NodeDesc {
                id: NodeId(n),
                addr: format!("n{n}"),
                http_addr: String::new(),
            }));
        }
        s.set_meta_voters((1..=3).map(|n| (NodeId(n), ReplicaId(n))).collect());
        let split_keys = (1..partitions)
            .map(|i| format!("k{i:04}").into_bytes())
            .collect();
        let r = s.apply(&MetaCommand::CreateTable {
            name: "t".into(),
            replication: 3,
            split_keys,
            placement,
            request_id: 1,
        });
        assert!(matches!(r, crate::MetaResponse::Table(_)), "{r:?}");
        s
    }

    fn view(s: &MetaState, live: impl IntoIterator<Item = u64>) -> ClusterView<'_> {
        let leaders = s.partitions().map(|(_, p)| (p.id, p.replicas[0])).collect();
        ClusterView {
            meta: s,
            live: live.into_iter().map(NodeId).collect(),
            down: BTreeSet::new(),
            draining: BTreeSet::new(),
            loads: BTreeMap::new(),
            leaders,
            now_ms: 1_000_000,
            // Loads as if they had held for long enough (see `load_splits_wait_for_a_steady_load`).
            hot_passes: s
                .partitions()
                .map(|(_, p)| (p.id, LOAD_SPLIT_PASSES))
                .collect(),
        }
    }

    /// Applies a decision as if its operation had finished at once.
    fn apply(s: &mut MetaState, leaders: &mut BTreeMap<PartitionId, NodeId>, d: &Decision) {
        match d {
            Decision::Move {
                partition,
                from,
                to,
                ..
            } => {
                if *partition == META_GROUP {
                    let rid = s.meta_voters.remove(from).unwrap_or_default();
                    s.meta_voters.insert(*to, rid);
                    return;
                }
                for t in s.tables.values_mut() {
                    for p in t.partitions.iter_mut().filter(|p| p.id == *partition) {
                        let i = p.replicas.iter().position(|n| n == from).unwrap();
                        p.replicas[i] = *to;
                        if leaders.get(partition) == Some(from) {
                            leaders.insert(*partition, p.replicas[(i + 1) % 3]);
                        }
                    }
                }
            }
            Decision::TransferLeader { partition, to, .. } => {
                leaders.insert(*partition, *to);
            }
            Decision::Split { .. } | Decision::Report { .. } => {}
        }
    }

    /// The invariants every plan keeps, whatever the cluster.
    fn check(v: &ClusterView<'_>, plan: &[Decision]) {
        let mut seen = BTreeSet::new();
        let running: BTreeSet<PartitionId> = v
            .meta
            .operations
            .values()
            .filter(|o| o.state == OpState::Running)
            .map(|o| o.partition)
            .collect();
        for d in plan {
            assert!(
                seen.insert(d.partition()),
                "two decisions on one partition: {plan:?}"
            );
            assert!(
                !running.contains(&d.partition()) || matches!(d, Decision::Report { .. }),
                "a decision on a partition with a running operation: {d:?}"
            );
            if let Decision::Move {
                partition,
                from,
                to,
                ..
            } = d
            {
                assert!(v.live.contains(to), "target {to} is not live: {d:?}");
                assert!(!v.down.contains(to) && !v.draining.contains(to), "{d:?}");
                let holders: Vec<NodeId> = if *partition == META_GROUP {
                    v.meta.meta_voters.keys().copied().collect()
                } else {
                    v.meta.partition(*partition).unwrap().1.replicas.clone()
                };
                assert!(holders.contains(from) && !holders.contains(to), "{d:?}");
            }
            if let Decision::TransferLeader { partition, to, .. } = d {
                let p = v.meta.partition(*partition).unwrap().1;
                assert!(p.replicas.contains(to) && v.live.contains(to), "{d:?}");
            }
        }
        let moves = plan
            .iter()
            .filter(|d| matches!(d, Decision::Move { .. }))
            .count();
        assert!(moves <= PlannerConfig::default().max_moves);
    }

    /// Plans and applies each plan (its operations done at once) until a plan is empty,
    /// checking every plan and failing after `rounds` of them; returns the plans made.
    fn settle(
        s: &mut MetaState,
        leaders: &mut BTreeMap<PartitionId, NodeId>,
        nodes: u64,
        loads: &BTreeMap<PartitionId, PartitionLoad>,
        rounds: usize,
        what: &str,
    ) -> Vec<Vec<Decision>> {
        let mut plans = Vec::new();
        loop {
            let mut v = view(s, 1..=nodes);
            v.leaders = leaders.clone();
            v.loads = loads.clone();
            let plan = plan(&v, &PlannerConfig::default());
            check(&v, &plan);
            if plan.is_empty() {
                return plans;
            }
            assert!(
                plans.len() < rounds,
                "{what}: no convergence, last plan {plan:?}"
            );
            for d in &plan {
                apply(s, leaders, d);
            }
            plans.push(plan);
        }
    }

    #[test]
    fn random_clusters_converge_to_balance_without_oscillating() {
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let nodes = 3 + rng.below(5);
            let partitions = 1 + rng.below(40) as usize;
            let mut s = cluster(&mut rng, nodes, partitions);
            let mut leaders = view(&s, 1..=nodes).leaders;
            let cfg = PlannerConfig::default();
            // Odd seeds give partitions sizes (below the split size), so byte balance runs.
            let loads: BTreeMap<PartitionId, PartitionLoad> = s
                .partitions()
                .filter(|_| seed % 2 == 1)
                .map(|(_, p)| {
                    let bytes = rng.below(cfg.split_size);
                    (
                        p.id,
                        PartitionLoad {
                            bytes,
                            ..Default::default()
                        },
                    )
                })
                .collect();
            settle(
                &mut s,
                &mut leaders,
                nodes,
                &loads,
                200,
                &format!("seed {seed}"),
            );
            // Balanced: replica and leader counts within one of each other.
            let mut counts: BTreeMap<NodeId, usize> = (1..=nodes).map(|n| (NodeId(n), 0)).collect();
            for (_, p) in s.partitions() {
                assert_eq!(p.replicas.len(), 3, "seed {seed}: replication changed");
                for n in &p.replicas {
                    *counts.get_mut(n).unwrap() += 1;
                }
            }
            let (lo, hi) = (
                counts.values().min().unwrap(),
                counts.values().max().unwrap(),
            );
            assert!(hi - lo <= 1, "seed {seed}: replica counts {counts:?}");
        }
    }

    #[test]
    fn down_and_draining_nodes_are_emptied_fewest_voters_first() {
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let nodes = 5 + rng.below(3);
            let partitions = 1 + rng.below(30) as usize;
            let mut s = cluster(&mut rng, nodes, partitions);
            let down = NodeId(1 + rng.below(nodes));
            let draining = NodeId(1 + (down.0 % nodes));
            let mut leaders = view(&s, 1..=nodes).leaders;
            let cfg = PlannerConfig::default();
            for _ in 0..300 {
                let mut v = view(&s, (1..=nodes).filter(|n| *n != down.0));
                v.down.insert(down);
                v.draining.insert(draining);
                v.leaders = leaders.clone();
                let plan = plan(&v, &cfg);
                check(&v, &plan);
                if plan.is_empty() {
                    break;
                }
                for d in &plan {
                    apply(&mut s, &mut leaders, d);
                }
            }
            for (_, p) in s.partitions() {
                assert!(
                    !p.replicas.contains(&down) && !p.replicas.contains(&draining),
                    "seed {seed}: {p:?} still on {down} or {draining}"
                );
                assert_ne!(leaders.get(&p.id), Some(&draining), "seed {seed}");
            }
            assert!(
                !s.meta_voters.contains_key(&down),
                "seed {seed}: metadata on {down}"
            );
            assert_eq!(s.meta_voters.len(), 3);
        }
    }

    #[test]
    fn lost_quorum_is_reported_and_left_alone() {
        let mut rng = Rng(7);
        let s = cluster(&mut rng, 5, 1);
        let p = s.partitions().next().unwrap().1.clone();
        let mut v = view(
            &s,
            (1..=5).filter(|n| !p.replicas[..2].contains(&NodeId(*n))),
        );
        v.down.extend(p.replicas[..2].iter().copied());
        let plan = plan(&v, &PlannerConfig::default());
        assert!(
            plan.iter()
                .any(|d| matches!(d, Decision::Report { partition, .. } if *partition == p.id)),
            "{plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|d| matches!(d, Decision::Move { partition, .. } if *partition == p.id))
        );
    }

    #[test]
    fn splits_by_size_and_load_and_a_hot_key_is_only_reported() {
        let mut rng = Rng(3);
        let s = cluster(&mut rng, 3, 3);
        let ids: Vec<PartitionId> = s.partitions().map(|(_, p)| p.id).collect();
        let mut v = view(&s, 1..=3);
        let cfg = PlannerConfig {
            split_size: 1 << 20,
            split_qps: 100.0,
            ..PlannerConfig::default()
        };
        // Too big, with a middle key inside its range (the first partition is ["", k0001)).
        v.loads.insert(
            ids[0],
            PartitionLoad {
                bytes: 2 << 20,
                size_split_key: Some(b"k0000x".to_vec()),
                ..PartitionLoad::default()
            },
        );
        // Too hot, on one key.
        v.loads.insert(
            ids[1],
            PartitionLoad {
                qps: 500.0,
                ..PartitionLoad::default()
            },
        );
        // Too big, but the suggested key is its start: no empty partition is cut.
        v.loads.insert(
            ids[2],
            PartitionLoad {
                bytes: 2 << 20,
                size_split_key: Some(b"k0002".to_vec()),
                ..PartitionLoad::default()
            },
        );
        let plan = plan(&v, &cfg);
        assert!(
            plan.contains(&Decision::Split {
                partition: ids[0],
                key: b"k0000x".to_vec(),
                why: format!("{} bytes, above {}", 2 << 20, 1 << 20),
            }),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .any(|d| matches!(d, Decision::Report { partition, .. } if *partition == ids[1]))
        );
        assert!(
            !plan
                .iter()
                .any(|d| matches!(d, Decision::Split { partition, .. } if *partition == ids[2])),
            "{plan:?}"
        );
    }

    #[test]
    fn load_splits_only_partitions_above_a_fair_share() {
        let mut rng = Rng(5);
        let s = cluster(&mut rng, 3, 3);
        let parts: Vec<_> = s.partitions().map(|(_, p)| p.clone()).collect();
        let cfg = PlannerConfig {
            split_qps: 100.0,
            ..PlannerConfig::default()
        };
        let load = |p: &cairn_types::PartitionDesc, qps: f64| PartitionLoad {
            qps,
            // Load spread over the range, so a split key exists just after its start.
            load_split_key: Some([p.range.start.as_slice(), &[0]].concat()),
            ..PartitionLoad::default()
        };
        let splits = |v: &ClusterView| {
            plan(v, &cfg)
                .into_iter()
                .filter(|d| matches!(d, Decision::Split { .. }))
                .map(|d| d.partition())
                .collect::<Vec<_>>()
        };
        // Three equally hot partitions on three nodes: moving leaders spreads them, and
        // that holds however the leaders stand now.
        let mut v = view(&s, 1..=3);
        for p in &parts {
            v.loads.insert(p.id, load(p, 7000.0));
        }
        v.leaders = parts.iter().map(|p| (p.id, NodeId(1))).collect();
        assert_eq!(splits(&v), vec![], "{:?}", plan(&v, &cfg));
        // One hot partition among idle ones: it splits, the others do not.
        for (i, p) in parts.iter().enumerate() {
            v.loads
                .insert(p.id, load(p, if i == 1 { 7000.0 } else { 150.0 }));
        }
        assert_eq!(splits(&v), vec![parts[1].id], "{:?}", plan(&v, &cfg));
    }

    #[test]
    fn load_splits_wait_for_a_steady_load() {
        let mut rng = Rng(7);
        let s = cluster(&mut rng, 3, 3);
        let parts: Vec<_> = s.partitions().map(|(_, p)| p.clone()).collect();
        let cfg = PlannerConfig {
            split_qps: 100.0,
            ..PlannerConfig::default()
        };
        let mut v = view(&s, 1..=3);
        v.hot_passes.clear();
        // One partition's fresh rate beside two still reported from a quiet second: it
        // looks like the whole load, but only for one report.
        for (i, p) in parts.iter().enumerate() {
            let qps = if i == 0 { 3000.0 } else { 0.0 };
            let load_split_key = Some([p.range.start.as_slice(), &[0]].concat());
            v.loads.insert(
                p.id,
                PartitionLoad {
                    qps,
                    load_split_key,
                    ..PartitionLoad::default()
                },
            );
        }
        assert_eq!(load_hot(&v, &cfg), BTreeSet::from([parts[0].id]));
        let splits = |v: &ClusterView| {
            plan(v, &cfg)
                .into_iter()
                .filter(|d| matches!(d, Decision::Split { .. } | Decision::Report { .. }))
                .count()
        };
        for passes in 0..LOAD_SPLIT_PASSES - 1 {
            v.hot_passes.insert(parts[0].id, passes);
            assert_eq!(splits(&v), 0, "after {passes} earlier hot passes");
        }
        v.hot_passes.insert(parts[0].id, LOAD_SPLIT_PASSES - 1);
        assert_eq!(splits(&v), 1, "hot for {LOAD_SPLIT_PASSES} passes in a row");
        // The others' rates arrive: three equal partitions, none hot.
        for p in &parts {
            v.loads.get_mut(&p.id).expect("inserted above").qps = 3000.0;
        }
        assert!(load_hot(&v, &cfg).is_empty());
    }

    #[test]
    fn load_split_keys_halve_the_load_and_never_cut_a_scan_or_a_hot_key() {
        let key = |k: &str| KeySample::Key(k.as_bytes().to_vec());
        let scan =
            |a: &str, b: &str| KeySample::Range(a.as_bytes().to_vec(), Some(b.as_bytes().to_vec()));
        // Even load on a..h: the middle key.
        let even: Vec<KeySample> = ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .map(|k| key(k))
            .collect();
        assert_eq!(load_split_key(&even, b"", None), Some(b"e".to_vec()));
        // One hot key: nothing to split.
        let hot: Vec<KeySample> = (0..50).map(|_| key("k")).collect();
        assert_eq!(load_split_key(&hot, b"", None), None);
        // A hot key beside a cold one: the hot key goes to its own half.
        let mut skew = hot.clone();
        skew.push(key("a"));
        assert_eq!(load_split_key(&skew, b"", None), Some(b"k".to_vec()));
        // Every scan covers c..f: no split point inside it.
        let mut scans: Vec<KeySample> = (0..20).map(|_| scan("c", "f")).collect();
        scans.extend(["d", "e", "d", "e"].iter().map(|k| key(k)));
        let k = load_split_key(&scans, b"", None);
        assert!(
            k.as_deref()
                .is_none_or(|k| k <= b"c".as_slice() || k >= b"f".as_slice()),
            "{k:?}"
        );
        // Keys outside the partition's range are never chosen; its start is never chosen.
        assert_eq!(load_split_key(&even, b"e", Some(b"g")), Some(b"f".to_vec()));
        assert_eq!(load_split_key(&[], b"", None), None);
    }

    #[test]
    fn running_and_recent_operations_are_left_alone() {
        let mut rng = Rng(11);
        let mut s = cluster(&mut rng, 4, 1);
        let p = s.partitions().next().unwrap().1.clone();
        let spare = (1..=4)
            .map(NodeId)
            .find(|n| !p.replicas.contains(n))
            .unwrap();
        let r = s.apply(&MetaCommand::StartMove {
            partition: p.id,
            from: p.replicas[0],
            to: spare,
            now_ms: 1_000_000,
        });
        assert!(matches!(r, crate::MetaResponse::Operation(_)));
        let mut v = view(&s, 1..=4);
        v.down.insert(p.replicas[1]);
        v.live.remove(&p.replicas[1]);
        let plan = plan(&v, &PlannerConfig::default());
        check(&v, &plan);
        assert!(!plan.iter().any(|d| d.partition() == p.id), "{plan:?}");
    }

    #[test]
    fn a_partition_changed_a_moment_ago_is_not_rebalanced_but_is_repaired() {
        let mut s = MetaState::default();
        for n in 1..=5 {
            s.apply(&MetaCommand::RegisterNode(NodeDesc {
                id: NodeId(n),
                addr: format!("n{n}"),
                http_addr: String::new(),
            }));
        }
        let on = |n: [u64; 3]| n.iter().map(|n| NodeId(*n)).collect::<Vec<_>>();
        s.apply(&MetaCommand::CreateTable {
            name: "t".into(),
            replication: 3,
            split_keys: vec![b"m".to_vec()],
            placement: vec![on([1, 2, 3]), on([1, 2, 3])],
            request_id: 1,
        });
        let ids: Vec<PartitionId> = s.partitions().map(|(_, p)| p.id).collect();
        // Both just had their leadership moved.
        for p in &ids {
            s.apply(&MetaCommand::RecordOperation {
                partition: *p,
                kind: OpKind::TransferLeader { to: NodeId(1) },
                step: "n1 leads".into(),
                now_ms: 1_000_000,
            });
        }
        let v = view(&s, 1..=5);
        let cfg = PlannerConfig::default();
        let moves = |plan: &[Decision]| {
            plan.iter()
                .filter(|d| matches!(d, Decision::Move { .. }))
                .count()
        };
        assert_eq!(moves(&plan(&v, &cfg)), 0, "cooling partitions were moved");
        // Once cooled down, nodes 4 and 5 get replicas.
        let mut later = v.clone();
        later.now_ms += cfg.cooldown_ms;
        assert!(moves(&plan(&later, &cfg)) > 0);
        // A node that goes down is repaired at once, cool-down or not.
        let mut down = v.clone();
        down.live.remove(&NodeId(3));
        down.down.insert(NodeId(3));
        let plan = plan(&down, &cfg);
        check(&down, &plan);
        assert_eq!(moves(&plan), 2, "{plan:?}");
    }

    #[test]
    fn bytes_are_balanced_once_counts_are() {
        const MIB: u64 = 1 << 20;
        let n = |ids: &[u64]| ids.iter().map(|i| NodeId(*i)).collect::<Vec<_>>();
        // Replica counts 4, 4, 4 and 3: balanced. But nodes 1 to 3 hold both 90 MiB
        // partitions (182 MiB each in all) and node 4 holds 3 MiB.
        let mut s = cluster_placed(
            4,
            vec![
                n(&[1, 2, 3]),
                n(&[1, 2, 3]),
                n(&[1, 2, 4]),
                n(&[1, 3, 4]),
                n(&[2, 3, 4]),
            ],
        );
        let sizes = [90, 90, 1, 1, 1];
        let loads: BTreeMap<PartitionId, PartitionLoad> = s
            .partitions()
            .zip(sizes)
            .map(|((_, p), mib)| {
                let load = PartitionLoad {
                    bytes: mib * MIB,
                    ..Default::default()
                };
                (p.id, load)
            })
            .collect();
        let held = |s: &MetaState| {
            let mut b: BTreeMap<NodeId, u64> = BTreeMap::new();
            for (_, p) in s.partitions() {
                for r in &p.replicas {
                    *b.entry(*r).or_default() += loads[&p.id].bytes / MIB;
                }
            }
            b
        };
        assert_eq!(held(&s)[&NodeId(4)], 3);
        let cfg = PlannerConfig::default();
        // While a partition's size is not reported, the nodes holding it (here 1, 2 and 4,
        // which hold the third) are left alone.
        let mut v = view(&s, 1..=4);
        v.loads = loads.clone();
        let third = s.partitions().nth(2).unwrap().1.id;
        v.loads.remove(&third);
        let early = plan(&v, &cfg);
        assert!(
            !early.iter().any(|d| matches!(d, Decision::Move { .. })),
            "a move on sizes not all known: {early:?}"
        );
        let mut leaders = view(&s, 1..=4).leaders;
        let plans = settle(&mut s, &mut leaders, 4, &loads, 20, "four nodes");
        // The first move takes a big partition to node 4, the one holding the fewest bytes.
        let first = plans.first().expect("byte balance moved nothing");
        let to_four = first.iter().find_map(|d| match d {
            Decision::Move { to, why, .. } if *to == NodeId(4) => Some(why.clone()),
            _ => None,
        });
        assert!(
            to_four.as_deref().is_some_and(|w| w.contains("bytes")),
            "{first:?}"
        );
        // Node 4 took a 90 MiB partition from node 1. Nodes 2 and 3 keep 182 MiB: a move
        // from them to node 1 or 4 would either leave the gap as wide or upset the counts.
        let after = held(&s);
        assert_eq!(after[&NodeId(4)], 93, "{after:?}");
        assert!(after.values().all(|b| *b >= 92), "{after:?}");
        // Replica counts stay within one of each other.
        let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (_, p) in s.partitions() {
            for r in &p.replicas {
                *counts.entry(*r).or_default() += 1;
            }
        }
        let (lo, hi) = (
            counts.values().min().unwrap(),
            counts.values().max().unwrap(),
        );
        assert!(hi - lo <= 1, "{counts:?}");
    }
}
