//! The replicated metadata state and its commands.

use cairn_types::{
    Epoch, Error, KeyRange, NodeDesc, NodeId, PartitionDesc, PartitionId, TableDesc, TableId,
    TableState, validate_table_name,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the metadata group records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// Next table id to hand out (ids start at 1).
    pub next_table_id: u64,
    /// Next partition id to hand out (0 is the metadata group itself).
    pub next_partition_id: u64,
    /// Tables by name.
    pub tables: BTreeMap<String, TableDesc>,
    /// Registered nodes.
    pub nodes: BTreeMap<NodeId, NodeDesc>,
}

/// A change to the metadata, proposed through the metadata group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds or updates a node's addresses.
    RegisterNode(NodeDesc),
    /// Creates a table. `placement[i]` lists the nodes of partition `i` (preferred leader
    /// first); there is one more partition than split keys.
    CreateTable {
        /// Table name.
        name: String,
        /// Replicas per partition.
        replication: u32,
        /// Sorted, distinct split keys.
        split_keys: Vec<Vec<u8>>,
        /// Replica nodes of each partition.
        placement: Vec<Vec<NodeId>>,
    },
    /// Removes a table: from this command on it is unknown to every router.
    DropTable {
        /// Table name.
        name: String,
    },
}

/// The outcome of applying a [`MetaCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Applied; nothing to return.
    Done,
    /// The table as created or as it was when dropped.
    Table(TableDesc),
    /// Refused; nothing changed.
    Refused(Error),
}

impl MetaState {
    /// Applies one command deterministically. A refused command changes nothing.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaResponse {
        match cmd {
            MetaCommand::RegisterNode(node) => {
                self.nodes.insert(node.id, node.clone());
                MetaResponse::Done
            }
            MetaCommand::CreateTable {
                name,
                replication,
                split_keys,
                placement,
            } => match self.create_table(name, *replication, split_keys, placement) {
                Ok(t) => MetaResponse::Table(t),
                Err(e) => MetaResponse::Refused(e),
            },
            MetaCommand::DropTable { name } => match self.tables.remove(name) {
                Some(t) => MetaResponse::Table(t),
                None => MetaResponse::Refused(Error::TableNotFound(name.clone())),
            },
        }
    }

    fn create_table(
        &mut self,
        name: &str,
        replication: u32,
        split_keys: &[Vec<u8>],
        placement: &[Vec<NodeId>],
    ) -> Result<TableDesc, Error> {
        validate_table_name(name)?;
        if self.tables.contains_key(name) {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        validate_split_keys(split_keys)?;
        if placement.len() != split_keys.len() + 1
            || placement.iter().any(|p| p.len() != replication as usize)
        {
            return Err(Error::Internal(format!(
                "placement of {} partitions does not fit {} split keys and replication {replication}",
                placement.len(),
                split_keys.len()
            )));
        }
        self.next_table_id = self.next_table_id.max(1);
        self.next_partition_id = self.next_partition_id.max(1);
        let id = TableId(self.next_table_id);
        self.next_table_id += 1;
        let partitions = KeyRange::split_all(split_keys)
            .into_iter()
            .zip(placement)
            .map(|(range, replicas)| {
                let pid = PartitionId(self.next_partition_id);
                self.next_partition_id += 1;
                PartitionDesc {
                    id: pid,
                    table_id: id,
                    range,
                    epoch: Epoch {
                        conf_ver: 1,
                        version: 1,
                    },
                    replicas: replicas.clone(),
                }
            })
            .collect();
        let table = TableDesc {
            id,
            name: name.to_string(),
            replication,
            state: TableState::Active,
            partitions,
        };
        self.tables.insert(name.to_string(), table.clone());
        Ok(table)
    }

    /// Every partition of every table, with its table.
    pub fn partitions(&self) -> impl Iterator<Item = (&TableDesc, &PartitionDesc)> {
        self.tables
            .values()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
    }

    /// The partitions that have a replica on `node`.
    pub fn partitions_on(&self, node: NodeId) -> Vec<PartitionDesc> {
        self.partitions()
            .filter(|(_, p)| p.replicas.contains(&node))
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// Split keys must be non-empty, strictly increasing (so distinct).
pub fn validate_split_keys(split_keys: &[Vec<u8>]) -> Result<(), Error> {
    if split_keys.iter().any(|k| k.is_empty()) {
        return Err(Error::InvalidArgument(
            "split keys must not be empty".into(),
        ));
    }
    if split_keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::InvalidArgument(
            "split keys must be distinct and sorted".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(s: &mut MetaState, name: &str, splits: &[&str]) -> MetaResponse {
        let split_keys: Vec<Vec<u8>> = splits.iter().map(|k| k.as_bytes().to_vec()).collect();
        let placement = vec![vec![NodeId(1)]; split_keys.len() + 1];
        s.apply(&MetaCommand::CreateTable {
            name: name.into(),
            replication: 1,
            split_keys,
            placement,
        })
    }

    #[test]
    fn create_assigns_ids_and_ranges() {
        let mut s = MetaState::default();
        let MetaResponse::Table(t) = create(&mut s, "t", &["g", "p"]) else {
            panic!("refused")
        };
        assert_eq!(t.id, TableId(1));
        let ids: Vec<_> = t.partitions.iter().map(|p| p.id.0).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(t.partition_for(b"h").map(|p| p.id), Some(PartitionId(2)));
        let MetaResponse::Table(t2) = create(&mut s, "u", &[]) else {
            panic!("refused")
        };
        assert_eq!((t2.id, t2.partitions[0].id), (TableId(2), PartitionId(4)));
    }

    #[test]
    fn refusals_change_nothing() {
        let mut s = MetaState::default();
        create(&mut s, "t", &[]);
        let before = s.clone();
        assert_eq!(
            create(&mut s, "t", &[]),
            MetaResponse::Refused(Error::AlreadyExists("t".into()))
        );
        assert!(matches!(
            create(&mut s, "bad name", &[]),
            MetaResponse::Refused(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            create(&mut s, "x", &["b", "a"]),
            MetaResponse::Refused(Error::InvalidArgument(_))
        ));
        assert_eq!(s, before);
        assert!(matches!(
            s.apply(&MetaCommand::DropTable { name: "t".into() }),
            MetaResponse::Table(_)
        ));
        assert_eq!(
            s.apply(&MetaCommand::DropTable { name: "t".into() }),
            MetaResponse::Refused(Error::TableNotFound("t".into()))
        );
    }
}
