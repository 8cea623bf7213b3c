//! The route cache: tables with their partitions and leader hints.

use cairn_types::{NodeDesc, NodeId, PartitionDesc, PartitionId, TableDesc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

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
/// updated in place when a replica names the leader.
#[derive(Default)]
pub struct RouteCache {
    tables: RwLock<HashMap<String, TableRoute>>,
}

impl RouteCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached route of `table`.
    pub fn get(&self, table: &str) -> Option<TableRoute> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
            .cloned()
    }

    /// Stores a route fetched from the metadata group.
    pub fn insert(&self, route: TableRoute) {
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
    /// the cached ones and new partitions are added. Returns whether the route changed; if
    /// not, the caller should refresh it from the metadata group.
    pub fn merge(&self, table: &str, descs: &[PartitionDesc]) -> bool {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        t.get_mut(table)
            .is_some_and(|r| r.table.merge_partitions(descs))
    }

    /// Records that `leader` leads `partition` of `table`.
    pub fn set_leader(&self, table: &str, partition: PartitionId, leader: NodeId) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = t.get_mut(table) {
            r.leaders.insert(partition, leader);
        }
    }

    /// Drops the leader hint of `partition` (it proved wrong).
    pub fn clear_leader(&self, table: &str, partition: PartitionId) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = t.get_mut(table) {
            r.leaders.remove(&partition);
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
}
