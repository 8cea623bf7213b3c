//! Descriptors of tables, partitions and nodes as the metadata group records them.

use crate::{Epoch, KeyRange, NodeId, PartitionId, ReplicaId, TableId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Replication factor used when a table is created without one.
pub const DEFAULT_REPLICATION: u32 = 3;

/// Lifecycle of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableState {
    /// Serving requests.
    Active,
    /// Deleted for clients; its replicas are being destroyed.
    Dropping,
}

/// A named table and its partitions, in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDesc {
    /// Numeric id; prefix of the table's data in every engine.
    pub id: TableId,
    /// Unique name, see [`crate::validate_table_name`].
    pub name: String,
    /// Number of replicas of each partition (1, 3 or 5).
    pub replication: u32,
    /// Whether the table is serving or being dropped.
    pub state: TableState,
    /// Partitions ordered by range start; their ranges tile the whole key space (for a
    /// moment after a lost split record, an older descriptor may overlap newer ones until
    /// the partition's leader reports it; lookups prefer the newest).
    pub partitions: Vec<PartitionDesc>,
}

impl TableDesc {
    /// The partition whose range contains `key` (the newest, should two overlap).
    ///
    /// Every request looks one up, so it is a binary search by range start: the partition
    /// starting last at or before `key` owns it when it contains it. Ranges only ever split,
    /// and a split's left half keeps its id and start, so a descriptor overlapping it (left
    /// over from a lost split record) is an older, wider one that starts earlier. Only when that partition does not contain `key` (a
    /// gap a newer descriptor will fill) is every descriptor looked at.
    pub fn partition_for(&self, key: &[u8]) -> Option<&PartitionDesc> {
        let after = self
            .partitions
            .partition_point(|p| p.range.start.as_slice() <= key);
        match after.checked_sub(1).map(|i| &self.partitions[i]) {
            Some(p) if p.range.contains(key) => Some(p),
            _ => self
                .partitions
                .iter()
                .filter(|p| p.range.contains(key))
                .max_by_key(|p| p.epoch.version),
        }
    }

    /// Takes in descriptors of this table's partitions: a known partition is replaced by a
    /// descriptor with a newer epoch, an unknown one is added. Older or equal descriptors
    /// and other tables' partitions are ignored. Returns whether anything changed.
    pub fn merge_partitions(&mut self, descs: &[PartitionDesc]) -> bool {
        let mut changed = false;
        for d in descs.iter().filter(|d| d.table_id == self.id) {
            match self.partitions.iter_mut().find(|p| p.id == d.id) {
                Some(p) if d.epoch.is_newer_than(&p.epoch) => {
                    *p = d.clone();
                    changed = true;
                }
                Some(_) => {}
                None => {
                    self.partitions.push(d.clone());
                    changed = true;
                }
            }
        }
        if changed {
            self.partitions
                .sort_by(|a, b| (&a.range.start, a.id).cmp(&(&b.range.start, b.id)));
        }
        changed
    }

    /// Whether the partitions tile the key space: sorted, no gap, no overlap.
    pub fn tiles(&self) -> bool {
        let mut next: Option<&[u8]> = Some(b"");
        for p in &self.partitions {
            if next != Some(p.range.start.as_slice()) {
                return false;
            }
            next = p.range.end.as_deref();
        }
        next.is_none()
    }
}

/// One partition: a key range of one table replicated by one Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionDesc {
    /// Partition id, equal to its Raft group id.
    pub id: PartitionId,
    /// The table it belongs to.
    pub table_id: TableId,
    /// User keys `[start, end)` it owns.
    pub range: KeyRange,
    /// Shape version; see [`Epoch`].
    pub epoch: Epoch,
    /// Nodes holding a voting replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The replica id (the group's member id) of each node's replica.
    pub replica_ids: BTreeMap<NodeId, ReplicaId>,
}

impl PartitionDesc {
    /// The id of `node`'s replica, if it holds one.
    pub fn replica_on(&self, node: NodeId) -> Option<ReplicaId> {
        self.replica_ids.get(&node).copied()
    }
}

/// A node as registered in the metadata group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDesc {
    /// Unique id given with `--id`.
    pub id: NodeId,
    /// gRPC address for clients and peers.
    pub addr: String,
    /// HTTP address (API, metrics, console).
    pub http_addr: String,
}

/// Size and load of one partition, as its leader measures and reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionLoad {
    /// Approximate bytes of its keys and values.
    pub bytes: u64,
    /// Approximate number of keys.
    pub keys: u64,
    /// Operations per second over the last split window, reads and writes.
    pub qps: f64,
    /// Of those, writes per second.
    pub write_qps: f64,
    /// Bytes written per second (keys and values) over the same window.
    pub write_bytes_per_sec: f64,
    /// The key that halves its size, if known.
    pub size_split_key: Option<Vec<u8>>,
    /// The key that halves its load; `None` when one key carries it (a hot spot that no
    /// split can spread) or too little is known.
    pub load_split_key: Option<Vec<u8>>,
}

/// A recent request to a partition, as sampled for choosing where to split by load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySample {
    /// A read or write of one key.
    Key(Vec<u8>),
    /// A scan from a key to an end (`None`: the partition's end).
    Range(Vec<u8>, Option<Vec<u8>>),
}

/// What a node reports about one of its replicas, and what describe/admin show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: PartitionId,
    /// Leader as last reported, if any.
    pub leader: Option<NodeId>,
    /// Raft term of that report.
    pub term: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyRange;

    fn part(id: u64, start: &str, end: Option<&str>, version: u64) -> PartitionDesc {
        PartitionDesc {
            id: PartitionId(id),
            table_id: TableId(1),
            range: KeyRange {
                start: start.as_bytes().to_vec(),
                end: end.map(|e| e.as_bytes().to_vec()),
            },
            epoch: Epoch {
                conf_ver: 1,
                version,
            },
            replicas: vec![NodeId(1)],
            replica_ids: BTreeMap::from([(NodeId(1), ReplicaId(7))]),
        }
    }

    #[test]
    fn merge_takes_newer_descriptors_and_lookups_prefer_them() {
        let mut t = TableDesc {
            id: TableId(1),
            name: "t".into(),
            replication: 1,
            state: TableState::Active,
            partitions: vec![part(1, "", None, 1)],
        };
        assert!(t.tiles());
        // The right half is reported before the left: for a moment they overlap.
        assert!(t.merge_partitions(&[part(2, "m", None, 2)]));
        assert!(!t.tiles());
        assert_eq!(t.partition_for(b"q").map(|p| p.id), Some(PartitionId(2)));
        assert_eq!(t.partition_for(b"a").map(|p| p.id), Some(PartitionId(1)));
        // An older or equal report changes nothing; the left's newer one completes the split.
        assert!(!t.merge_partitions(&[part(2, "m", None, 2), part(1, "", None, 1)]));
        assert!(t.merge_partitions(&[part(1, "", Some("m"), 2)]));
        assert!(t.tiles());
        let ids: Vec<u64> = t.partitions.iter().map(|p| p.id.0).collect();
        assert_eq!(ids, vec![1, 2]);
        // Other tables' partitions are ignored.
        let mut other = part(9, "", None, 5);
        other.table_id = TableId(2);
        assert!(!t.merge_partitions(&[other]));
    }

    /// The binary search finds what looking at every descriptor finds (the newest that
    /// contains the key): in a tiling of many partitions, at their bounds, and while a lost
    /// split record leaves an older, wider descriptor under newer ones, gaps included.
    #[test]
    fn partition_for_agrees_with_every_descriptor_looked_at() {
        let newest = |t: &TableDesc, key: &[u8]| {
            t.partitions
                .iter()
                .filter(|p| p.range.contains(key))
                .max_by_key(|p| p.epoch.version)
                .map(|p| p.id)
        };
        let starts: Vec<String> = (0..1000).map(|i| format!("k{:04}", i * 7)).collect();
        let mut tiled = TableDesc {
            id: TableId(1),
            name: "t".into(),
            replication: 1,
            state: TableState::Active,
            partitions: Vec::new(),
        };
        for (i, s) in std::iter::once("")
            .chain(starts.iter().map(String::as_str))
            .enumerate()
        {
            let end = starts.get(i).map(String::as_str);
            tiled.partitions.push(part(i as u64 + 1, s, end, 1));
        }
        assert!(tiled.tiles());
        // Partition 3, [k0007, k0014), split at k0010 (it keeps its id and start, the
        // right half is 5000), then 5000 split at k0012 (its right half 5001). Only 5000's
        // last descriptor has come in: 3's old one still spans all three, and k0012..k0014
        // is covered by it alone until 5001 is known.
        let mut overlapped = tiled.clone();
        overlapped.merge_partitions(&[part(5000, "k0010", Some("k0012"), 3)]);
        for t in [&tiled, &overlapped] {
            let mut probes: Vec<Vec<u8>> = vec![b"".to_vec(), b"a".to_vec(), vec![0xff; 8]];
            for i in 0..7000 {
                probes.push(format!("k{i:04}").into_bytes());
                probes.push(format!("k{i:04}\0").into_bytes());
            }
            for key in &probes {
                assert_eq!(
                    t.partition_for(key).map(|p| p.id),
                    newest(t, key),
                    "key {:?}",
                    String::from_utf8_lossy(key)
                );
            }
        }
        let owner = |key: &[u8]| overlapped.partition_for(key).map(|p| p.id.0);
        assert_eq!(
            owner(b"k0011"),
            Some(5000),
            "the newer, narrower descriptor"
        );
        assert_eq!(owner(b"k0008"), Some(3));
        assert_eq!(
            owner(b"k0013"),
            Some(3),
            "the old, wider descriptor fills the gap"
        );
    }
}
