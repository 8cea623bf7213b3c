//! Where the replicas of new partitions go: a pure function of the metadata and of which
//! nodes are live, so it can be tested without a cluster.

use crate::MetaState;
use cairn_types::{Error, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Chooses `replication` distinct live nodes for each of `partitions` new partitions.
///
/// Each partition in turn takes the replica set and leader (the first node) that keep the
/// replica counts and the leader counts of the live nodes as even as possible, counting
/// the partitions placed earlier in this call. The search looks at the `2 × replication + 1`
/// least-loaded nodes, so it stays small on large clusters.
pub fn place(
    state: &MetaState,
    live: &BTreeSet<NodeId>,
    partitions: usize,
    replication: u32,
) -> Result<Vec<Vec<NodeId>>, Error> {
    if !matches!(replication, 1 | 3 | 5) {
        return Err(Error::InvalidArgument(format!(
            "replication must be 1, 3 or 5, not {replication}"
        )));
    }
    if live.len() < replication as usize {
        return Err(Error::NotEnoughNodes {
            wanted: replication,
            live: live.len() as u32,
        });
    }
    let mut load: BTreeMap<NodeId, Load> = live.iter().map(|n| (*n, Load::default())).collect();
    for (_, p) in state.partitions() {
        for (i, n) in p.replicas.iter().enumerate() {
            if let Some(l) = load.get_mut(n) {
                l.replicas += 1;
                l.leaders += usize::from(i == 0);
            }
        }
    }
    let r = replication as usize;
    let mut out = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        let mut candidates: Vec<NodeId> = load.keys().copied().collect();
        candidates.sort_by_key(|n| (load[n].replicas, load[n].leaders, *n));
        candidates.truncate(2 * r + 1);
        candidates.sort();
        let mut best: Option<(Score, Vec<NodeId>)> = None;
        for set in subsets(&candidates, r) {
            for (li, leader) in set.iter().enumerate() {
                let score = score_after(&load, &set, *leader);
                if best.as_ref().is_none_or(|(b, _)| score < *b) {
                    let mut chosen = vec![*leader];
                    chosen.extend(
                        set.iter()
                            .enumerate()
                            .filter(|(i, _)| *i != li)
                            .map(|(_, n)| *n),
                    );
                    best = Some((score, chosen));
                }
            }
        }
        let Some((_, chosen)) = best else {
            return Err(Error::NotEnoughNodes {
                wanted: replication,
                live: live.len() as u32,
            });
        };
        for (i, n) in chosen.iter().enumerate() {
            if let Some(l) = load.get_mut(n) {
                l.replicas += 1;
                l.leaders += usize::from(i == 0);
            }
        }
        out.push(chosen);
    }
    Ok(out)
}

#[derive(Clone, Copy, Default)]
struct Load {
    replicas: usize,
    leaders: usize,
}

/// (replica spread, leader spread, sum of squares): smaller is more even.
type Score = (usize, usize, usize);

fn score_after(load: &BTreeMap<NodeId, Load>, set: &[NodeId], leader: NodeId) -> Score {
    let (mut rmin, mut rmax, mut lmin, mut lmax, mut sq) = (usize::MAX, 0, usize::MAX, 0, 0);
    for (n, l) in load {
        let r = l.replicas + usize::from(set.contains(n));
        let d = l.leaders + usize::from(*n == leader);
        rmin = rmin.min(r);
        rmax = rmax.max(r);
        lmin = lmin.min(d);
        lmax = lmax.max(d);
        sq += r * r + d * d;
    }
    (rmax - rmin, lmax - lmin, sq)
}

/// Every `k`-element subset of `items`, in lexicographic order of positions.
fn subsets(items: &[NodeId], k: usize) -> Vec<Vec<NodeId>> {
    let mut out = Vec::new();
    let mut idx: Vec<usize> = (0..k).collect();
    if k == 0 || k > items.len() {
        return out;
    }
    loop {
        out.push(idx.iter().map(|i| items[*i]).collect());
        let Some(pos) = (0..k).rev().find(|&p| idx[p] != p + items.len() - k) else {
            return out;
        };
        idx[pos] += 1;
        for j in pos + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(n: u64) -> BTreeSet<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn spreads_replicas_and_leaders_evenly() {
        let p = place(&MetaState::default(), &live(5), 10, 3).unwrap();
        let mut replicas = BTreeMap::new();
        let mut leaders = BTreeMap::new();
        for nodes in &p {
            let distinct: BTreeSet<_> = nodes.iter().collect();
            assert_eq!(distinct.len(), 3, "replicas on distinct nodes: {nodes:?}");
            *leaders.entry(nodes[0]).or_insert(0) += 1;
            for n in nodes {
                *replicas.entry(*n).or_insert(0) += 1;
            }
        }
        let spread =
            |m: &BTreeMap<NodeId, i32>| m.values().max().unwrap() - m.values().min().unwrap();
        assert_eq!(replicas.values().sum::<i32>(), 30);
        assert!(spread(&replicas) <= 1, "{replicas:?}");
        assert_eq!(
            leaders.len(),
            5,
            "every node leads some partition: {leaders:?}"
        );
        assert!(spread(&leaders) <= 1, "{leaders:?}");
    }

    #[test]
    fn spread_is_at_most_one_for_many_shapes() {
        for nodes in 3..=8u64 {
            for replication in [1u32, 3, 5] {
                if replication as u64 > nodes {
                    continue;
                }
                for partitions in 1..=20 {
                    let p = place(&MetaState::default(), &live(nodes), partitions, replication)
                        .unwrap();
                    let mut r = BTreeMap::new();
                    let mut l = BTreeMap::new();
                    for n in 1..=nodes {
                        r.insert(NodeId(n), 0);
                        l.insert(NodeId(n), 0);
                    }
                    for set in &p {
                        *l.get_mut(&set[0]).unwrap() += 1;
                        for n in set {
                            *r.get_mut(n).unwrap() += 1;
                        }
                    }
                    let spread = |m: &BTreeMap<NodeId, i32>| {
                        m.values().max().unwrap() - m.values().min().unwrap()
                    };
                    assert!(
                        spread(&r) <= 1 && spread(&l) <= 1,
                        "{nodes} nodes, r={replication}, {partitions} parts: {r:?} {l:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_without_enough_live_nodes() {
        assert_eq!(
            place(&MetaState::default(), &live(2), 1, 3),
            Err(Error::NotEnoughNodes { wanted: 3, live: 2 })
        );
        assert!(matches!(
            place(&MetaState::default(), &live(5), 1, 2),
            Err(Error::InvalidArgument(_))
        ));
    }
}
