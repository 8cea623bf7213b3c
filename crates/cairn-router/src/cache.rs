//! The route cache: tables with their partitions and leader hints.

use cairn_types::{NodeDesc, NodeId, PartitionDesc, PartitionId, TableDesc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// A table and the partition leaders last reported to the metadata group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableRoute {
    /// The table; its partitions tile the key space in order.
    pub table: TableDesc,
    /// Leader hints by partition.
    pub leaders: BTreeMap<PartitionId, NodeId>,
    /// The nodes hosting the table's replicas, with their addresses.
    pub nodes: Vec<NodeDesc>,
}

impl TableRoute {
    /// The partition owning `key` and the node to try first.
    pub fn locate(&self, key: &[u8]) -> Option<(&PartitionDesc, Option<NodeId>)> {
        let p = self.table.partition_for(key)?;
        Some((p, self.leaders.get(&p.id).copied()))
    }
}

/// Cached routes by table name. Entries are replaced whole on refresh; a leader hint is
/// updated in place when a replica names the leader. Routes are shared, not copied, with
/// the requests that read them: a request takes one reference count, not a copy.
#[derive(Default)]
pub struct RouteCache {
    tables: RwLock<HashMap<String, Arc<TableRoute>>>,
}

impl RouteCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached route of `table`.
    pub fn get(&self, table: &str) -> Option<Arc<TableRoute>> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
            .cloned()
    }

    /// Stores a route fetched from the metadata group.
    pub fn insert(&self, route: TableRoute) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        t.insert(route.table.name.clone(), Arc::new(route));
    }

    /// Stores a route that is already shared.
    pub fn insert_shared(&self, route: Arc<TableRoute>) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        t.insert(route.table.name.clone(), route);
    }

    /// Forgets `table` so the next request fetches it again.
    pub fn invalidate(&self, table: &str) {
        self.tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(table);
    }

    /// Takes in descriptors a replica answered with (`EpochMismatch`): newer ones replace
    /// the cached ones and new partitions are added. Returns whether the route changed and
    /// still tiles the key space; if not (say the replica was split twice and names only its
    /// last right half), the route is dropped and the caller should fetch it again.
    pub fn merge(&self, table: &str, descs: &[PartitionDesc]) -> bool {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let Some(r) = t.get_mut(table) else {
            return false;
        };
        let mut patched = r.table.clone();
        if patched.merge_partitions(descs) && patched.tiles() {
            Arc::make_mut(r).table = patched;
            return true;
        }
        t.remove(table);
        false
    }

    /// Records that `leader` leads `partition` of `table`.
    pub fn set_leader(&self, table: &str, partition: PartitionId, leader: NodeId) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = t.get_mut(table)
            && r.leaders.get(&partition) != Some(&leader)
        {
            Arc::make_mut(r).leaders.insert(partition, leader);
        }
    }

    /// Drops the leader hint of `partition` (it proved wrong).
    pub fn clear_leader(&self, table: &str, partition: PartitionId) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = t.get_mut(table)
            && r.leaders.contains_key(&partition)
        {
            Arc::make_mut(r).leaders.remove(&partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::{Epoch, KeyRange, TableId, TableState};

    fn route() -> TableRoute {
        let parts = KeyRange::split_all(&[b"m".to_vec()])
            .into_iter()
            .enumerate()
            .map(|(i, range)| PartitionDesc {
                id: PartitionId(i as u64 + 1),
                table_id: TableId(1),
                range,
                epoch: Epoch {
                    conf_ver: 1,
                    version: 1,
                },
                replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
                replica_ids: vec![NodeId(1), NodeId(2), NodeId(3)]
                    .into_iter()
                    .map(|n| (n, cairn_types::ReplicaId(n.0)))
                    .collect(),
            })
            .collect();
        let table = TableDesc {
            id: TableId(1),
            name: "t".into(),
            replication: 3,
            state: TableState::Active,
            partitions: parts,
        };
        TableRoute {
            table,
            leaders: BTreeMap::from([(PartitionId(2), NodeId(3))]),
            nodes: vec![],
        }
    }

    #[test]
    fn locate_and_leader_hints() {
        let c = RouteCache::new();
        c.insert(route());
        let r = c.get("t").unwrap();
        assert_eq!(
            r.locate(b"a").map(|(p, l)| (p.id, l)),
            Some((PartitionId(1), None))
        );
        assert_eq!(
            r.locate(b"z").map(|(p, l)| (p.id, l)),
            Some((PartitionId(2), Some(NodeId(3))))
        );
        c.set_leader("t", PartitionId(1), NodeId(2));
        assert_eq!(
            c.get("t").unwrap().leaders.get(&PartitionId(1)),
            Some(&NodeId(2))
        );
        c.clear_leader("t", PartitionId(1));
        assert_eq!(c.get("t").unwrap().leaders.get(&PartitionId(1)), None);
        c.invalidate("t");
        assert!(c.get("t").is_none());
    }

    #[test]
    fn merge_patches_a_split_and_drops_a_route_with_a_gap() {
        let c = RouteCache::new();
        c.insert(route());
        let p2 = c.get("t").unwrap().table.partitions[1].clone();
        let (l, r) = p2.range.split_at(b"t").unwrap();
        let epoch = Epoch {
            version: 2,
            ..p2.epoch
        };
        let left = PartitionDesc {
            range: l,
            epoch,
            ..p2.clone()
        };
        let right = PartitionDesc {
            id: PartitionId(9),
            range: r,
            epoch,
            ..p2.clone()
        };
        assert!(c.merge("t", &[left.clone(), right]));
        let t = c.get("t").unwrap();
        assert_eq!(t.locate(b"x").map(|(p, _)| p.id), Some(PartitionId(9)));
        assert_eq!(t.locate(b"p").map(|(p, _)| p.id), Some(PartitionId(2)));
        // Split again, but only the left half is named: the route would have a gap.
        let (l2, _) = left.range.split_at(b"q").unwrap();
        let left2 = PartitionDesc {
            range: l2,
            epoch: Epoch {
                version: 3,
                ..epoch
            },
            ..left
        };
        assert!(!c.merge("t", &[left2]));
        assert!(c.get("t").is_none());
    }
}
