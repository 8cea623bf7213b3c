//! Where the replicas of new partitions go: a pure function of the metadata and of which
//! nodes are live, so it can be tested without a cluster.

use crate::MetaState;
use cairn_types::{Error, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Chooses `replication` distinct live nodes for each of `partitions` new partitions.
///
/// Replicas go to the nodes holding the fewest replicas (counting those already placed in
/// this call); the first node of each list, the preferred leader, is the chosen node leading
/// the fewest partitions, so replicas and leaders both spread evenly. Ties break by node id.
pub fn place(
    state: &MetaState,
    live: &BTreeSet<NodeId>,
    partitions: usize,
    replication: u32,
) -> Result<Vec<Vec<NodeId>>, Error> {
    if !matches!(replication, 1 | 3 | 5) {
        return Err(Error::InvalidArgument(format!("replication must be 1, 3 or 5, not {replication}")));
    }
    if live.len() < replication as usize {
        return Err(Error::NotEnoughNodes { wanted: replication, live: live.len() as u32 });
    }
    let mut replicas: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, 0)).collect();
    let mut leaders = replicas.clone();
    for (_, p) in state.partitions() {
        for (i, n) in p.replicas.iter().enumerate() {
            if let Some(c) = replicas.get_mut(n) {
                *c += 1;
            }
            if i == 0 {
                if let Some(c) = leaders.get_mut(n) {
                    *c += 1;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        let mut by_load: Vec<NodeId> = replicas.keys().copied().collect();
        by_load.sort_by_key(|n| (replicas[n], leaders[n], *n));
        let mut chosen: Vec<NodeId> = by_load.into_iter().take(replication as usize).collect();
        chosen.sort_by_key(|n| (leaders[n], replicas[n], *n));
        for (i, n) in chosen.iter().enumerate() {
            *replicas.entry(*n).or_default() += 1;
            if i == 0 {
                *leaders.entry(*n).or_default() += 1;
            }
        }
        out.push(chosen);
    }
    Ok(out)
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
        assert!(replicas.values().all(|c| *c == 6), "{replicas:?}");
        assert!(leaders.values().all(|c| *c == 2), "{leaders:?}");
    }

    #[test]
    fn refuses_without_enough_live_nodes() {
        assert_eq!(
            place(&MetaState::default(), &live(2), 1, 3),
            Err(Error::NotEnoughNodes { wanted: 3, live: 2 })
        );
        assert!(matches!(place(&MetaState::default(), &live(5), 1, 2), Err(Error::InvalidArgument(_))));
    }
}
