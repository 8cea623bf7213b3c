//! The replicated metadata state and its commands.

use crate::{KEEP_DROPS, KEEP_FINISHED, OpKind, OpState, Operation};
use cairn_types::{
    Epoch, Error, FIRST_REPLICA_ID, KeyRange, META_GROUP, NodeDesc, NodeId, PartitionDesc,
    PartitionId, ReplicaId, TableDesc, TableId, TableState, validate_table_name,
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
    /// Next replica id to hand out (from [`FIRST_REPLICA_ID`]).
    pub next_replica_id: u64,
    /// Tables by name.
    pub tables: BTreeMap<String, TableDesc>,
    /// Registered nodes.
    pub nodes: BTreeMap<NodeId, NodeDesc>,
    /// Running operations and the most recent finished ones, by id.
    pub operations: BTreeMap<u64, Operation>,
    /// Next operation id to hand out.
    pub next_operation_id: u64,
    /// The metadata group's voters: each node's replica id, as of the last membership
    /// change applied from the metadata log (see [`MetaState::set_meta_voters`]).
    pub meta_voters: BTreeMap<NodeId, ReplicaId>,
    /// Whether an operator paused the controller.
    pub controller_paused: bool,
    /// Nodes being drained: the controller moves every replica and leadership off them.
    pub draining: std::collections::BTreeSet<NodeId>,
    /// Retired node ids (`cairn admin remove-node`), never accepted again.
    pub removed: std::collections::BTreeSet<NodeId>,
    /// The id of the CreateTable request that made each table, so that a retry of that
    /// very request (its first answer lost) is answered the table, not `AlreadyExists`.
    pub create_requests: BTreeMap<String, u64>,
    /// Users of a secure cluster by name, each with the SHA-256 of its token (the token
    /// itself is shown once, when the user is added, and kept nowhere).
    pub users: BTreeMap<String, UserEntry>,
}

/// A user and the hash of its bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// The user.
    pub user: cairn_types::User,
    /// SHA-256 of the user's token.
    pub token_hash: [u8; 32],
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
        /// The request's id: the client's (random, or from an HTTP `Idempotency-Key`), or
        /// one the node drew at random.
        request_id: u64,
    },
    /// Removes a table: from this command on it is unknown to every router. Proposed by
    /// builds before [`MetaCommand::DropTableIf`]; still applied from their logs.
    DropTable {
        /// Table name.
        name: String,
    },
    /// Reserves `count` partition ids (for the right halves of splits); answers the first.
    AllocPartitionIds {
        /// How many ids.
        count: u64,
    },
    /// Records descriptors reported by partition groups (after a split, or by a leader's
    /// heartbeat): each replaces the recorded one only if its epoch is newer, and unknown
    /// partitions of a live table are added. Descriptors of unknown tables are ignored.
    UpdatePartitions {
        /// The descriptors, as applied by their groups.
        descs: Vec<PartitionDesc>,
    },
    /// Starts moving `partition`'s replica from node `from` to node `to`, with a fresh
    /// replica id. Refused while another operation on the partition runs.
    StartMove {
        /// The partition.
        partition: PartitionId,
        /// The node giving its replica up.
        from: NodeId,
        /// The node receiving one.
        to: NodeId,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: u64,
    },
    /// Pauses or resumes the controller.
    SetControllerPaused {
        /// Paused from now on, or not.
        paused: bool,
    },
    /// Starts or stops draining a node.
    SetDraining {
        /// The node.
        node: NodeId,
        /// Draining from now on, or not.
        draining: bool,
    },
    /// Retires a node that holds no replica: its id is never accepted again.
    RemoveNode {
        /// The node.
        node: NodeId,
    },
    /// Records an operation that finished in one step (a split, a leader transfer).
    RecordOperation {
        /// The partition it changed.
        partition: PartitionId,
        /// What it did.
        kind: OpKind,
        /// How it ended, in words.
        step: String,
        /// The proposer's clock.
        now_ms: u64,
    },
    /// Records progress or the end of an operation.
    UpdateOperation {
        /// The operation.
        id: u64,
        /// Its new state.
        state: OpState,
        /// The step reached.
        step: String,
        /// The last error, if any.
        error: Option<String>,
        /// The proposer's clock.
        now_ms: u64,
    },
    /// Adds a user; refused if the name is taken.
    AddUser(UserEntry),
    /// Removes a user: its token stops working.
    RemoveUser {
        /// The user's name.
        name: String,
    },
    /// Removes the table `name` if its id is `id`, the id the request resolved before its
    /// first attempt, and records the drop as a finished operation: a retry of a drop that
    /// happened never drops a table made again under the name since. Answers
    /// [`MetaResponse::Done`] when that table was dropped already (the drop is among the
    /// last [`KEEP_DROPS`] drops kept: by that first attempt, or by another drop). Any
    /// other id is refused: with `NotFound` naming the table's id when the name is taken,
    /// with `TableNotFound` when it is not.
    DropTableIf {
        /// Table name.
        name: String,
        /// The id the table must have.
        id: TableId,
        /// The proposer's clock, ms since the Unix epoch.
        now_ms: u64,
    },
}

/// The outcome of applying a [`MetaCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Applied; nothing to return.
    Done,
    /// The table as created or as it was when dropped.
    Table(TableDesc),
    /// The first of the ids reserved by [`MetaCommand::AllocPartitionIds`].
    Ids(u64),
    /// The operation as started or updated.
    Operation(Operation),
    /// Refused; nothing changed.
    Refused(Error),
}

impl MetaState {
    /// Applies one command deterministically. A refused command changes nothing.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaResponse {
        match cmd {
            MetaCommand::RegisterNode(node) => {
                if self.removed.contains(&node.id) {
                    return MetaResponse::Refused(Error::NodeRemoved(node.id));
                }
                self.nodes.insert(node.id, node.clone());
                MetaResponse::Done
            }
            MetaCommand::RemoveNode { node } => match self.remove_node(*node) {
                Ok(()) => MetaResponse::Done,
                Err(e) => MetaResponse::Refused(e),
            },
            MetaCommand::CreateTable {
                name,
                replication,
                split_keys,
                placement,
                request_id,
            } => {
                if let Some(t) = self.created_by(name, *request_id) {
                    return MetaResponse::Table(t.clone());
                }
                // A late retry of a create whose table was dropped since must not make it
                // again: the request was carried out once, and the drop came after.
                if *request_id != 0
                    && self.operations.values().any(|op| {
                        matches!(&op.kind, OpKind::DropTable { name: n, created_by }
                            if n == name && created_by == request_id)
                    })
                {
                    return MetaResponse::Refused(Error::Conflict(format!(
                        "table {name:?} was made by this very request and dropped since; it was \
                         not made again (a new request, or a new Idempotency-Key, makes it)"
                    )));
                }
                match self.create_table(name, *replication, split_keys, placement) {
                    Ok(t) => {
                        self.create_requests.insert(name.clone(), *request_id);
                        MetaResponse::Table(t)
                    }
                    Err(e) => MetaResponse::Refused(e),
                }
            }
            MetaCommand::DropTable { name } => self.drop_table(name),
            MetaCommand::DropTableIf { name, id, now_ms } => match self.tables.get(name) {
                Some(t) if t.id == *id => {
                    let first = t.partitions.first().map_or(PartitionId(0), |p| p.id);
                    let created_by = self.create_requests.get(name).copied().unwrap_or(0);
                    let dropped = self.drop_table(name);
                    let kind = OpKind::DropTable {
                        name: name.clone(),
                        created_by,
                    };
                    let step = format!("dropped table {name} (id {})", id.0);
                    self.record_done(kind, first, *id, step, *now_ms);
                    dropped
                }
                // Ids are never reused: a recorded drop of this very table means it is gone.
                _ if self.dropped(name, *id) => MetaResponse::Done,
                Some(t) => MetaResponse::Refused(Error::NotFound(format!(
                    "table {name:?} has id {}, not {}; nothing was dropped",
                    t.id.0, id.0
                ))),
                None => MetaResponse::Refused(Error::TableNotFound(name.clone())),
            },
            MetaCommand::AllocPartitionIds { count } => {
                self.next_partition_id = self.next_partition_id.max(1);
                let first = self.next_partition_id;
                match first.checked_add(*count) {
                    Some(next) => {
                        self.next_partition_id = next;
                        MetaResponse::Ids(first)
                    }
                    None => MetaResponse::Refused(Error::Internal(format!(
                        "no {count} partition ids are left after {first}"
                    ))),
                }
            }
            MetaCommand::StartMove {
                partition,
                from,
                to,
                now_ms,
            } => match self.start_move(*partition, *from, *to, *now_ms) {
                Ok(op) => MetaResponse::Operation(op),
                Err(e) => MetaResponse::Refused(e),
            },
            MetaCommand::SetControllerPaused { paused } => {
                self.controller_paused = *paused;
                MetaResponse::Done
            }
            MetaCommand::AddUser(entry) => {
                let name = &entry.user.name;
                if self.users.contains_key(name) {
                    return MetaResponse::Refused(Error::UserExists(name.clone()));
                }
                self.users.insert(name.clone(), entry.clone());
                MetaResponse::Done
            }
            MetaCommand::RemoveUser { name } => match self.users.remove(name) {
                Some(_) => MetaResponse::Done,
                None => MetaResponse::Refused(Error::NotFound(format!(
                    "user {name}; `cairn user list` shows the users"
                ))),
            },
            MetaCommand::SetDraining { node, draining } => {
                if !self.nodes.contains_key(node) {
                    return MetaResponse::Refused(Error::NotFound(format!(
                        "node {node} is not part of the cluster; `cairn admin nodes` lists the nodes"
                    )));
                }
                if *draining {
                    self.draining.insert(*node);
                } else {
                    self.draining.remove(node);
                }
                MetaResponse::Done
            }
            MetaCommand::RecordOperation {
                partition,
                kind,
                step,
                now_ms,
            } => {
                // Drops are recorded by their own command only: a record of one vouches
                // for retries.
                if matches!(kind, OpKind::DropTable { .. }) {
                    return MetaResponse::Refused(Error::InvalidArgument(
                        "a drop is recorded by DropTable only".into(),
                    ));
                }
                let table = self.partition(*partition).map_or(TableId(0), |(t, _)| t.id);
                let op = self.record_done(kind.clone(), *partition, table, step.clone(), *now_ms);
                MetaResponse::Operation(op)
            }
            MetaCommand::UpdateOperation {
                id,
                state,
                step,
                error,
                now_ms,
            } => {
                let Some(op) = self.operations.get_mut(id) else {
                    return MetaResponse::Refused(Error::NotFound(format!("operation {id}")));
                };
                if op.state != OpState::Running {
                    // A late update from a deposed executor: the outcome is final, and the
                    // refusal stops that executor before its next step.
                    return MetaResponse::Refused(Error::Conflict(format!(
                        "operation {id} already ended ({})",
                        op.state.name()
                    )));
                }
                op.state = *state;
                op.step = step.clone();
                op.error = error.clone();
                op.updated_ms = *now_ms;
                let op = op.clone();
                self.forget_old_operations();
                MetaResponse::Operation(op)
            }
            MetaCommand::UpdatePartitions { descs } => {
                for t in self.tables.values_mut() {
                    t.merge_partitions(descs);
                }
                if let Some(max) = descs.iter().map(|d| d.id.0).max() {
                    self.next_partition_id = self.next_partition_id.max(max.saturating_add(1));
                }
                MetaResponse::Done
            }
        }
    }

    fn remove_node(&mut self, node: NodeId) -> Result<(), Error> {
        if self.removed.contains(&node) {
            return Ok(());
        }
        if !self.nodes.contains_key(&node) {
            return Err(Error::NotFound(format!(
                "node {node} is not part of the cluster; `cairn admin nodes` lists the nodes"
            )));
        }
        let held = self.partitions_on(node).len();
        if held > 0 || self.meta_voters.contains_key(&node) {
            return Err(Error::Conflict(format!(
                "node {node} still holds {held} replica(s){}; drain it first (`cairn admin drain {node}`), or wait until the controller has replaced the replicas of a down node",
                if self.meta_voters.contains_key(&node) {
                    " and a metadata replica"
                } else {
                    ""
                }
            )));
        }
        if let Some(op) = self.operations.values().find(|o| {
            o.state == OpState::Running
                && matches!(o.kind, OpKind::Move { from, to, .. } if from == node || to == node)
        }) {
            return Err(Error::Conflict(format!(
                "operation {} still moves a replica to or from node {node}; wait for it",
                op.id
            )));
        }
        self.nodes.remove(&node);
        self.draining.remove(&node);
        self.removed.insert(node);
        Ok(())
    }

    /// Records the metadata group's voters; its state machine calls this when it applies a
    /// membership entry, so every replica records the same voters at the same log position.
    pub fn set_meta_voters(&mut self, voters: BTreeMap<NodeId, ReplicaId>) {
        self.meta_voters = voters;
    }

    /// Whether `node`'s metadata replica `replica` is stale and must be destroyed: it is not
    /// a voter any more, and no running move is adding it. Never while the voters are unknown.
    pub fn meta_replica_stale(&self, node: NodeId, replica: ReplicaId) -> bool {
        if self.meta_voters.is_empty() || self.meta_voters.get(&node) == Some(&replica) {
            return false;
        }
        let adding = self.running_on(META_GROUP).is_some_and(|op| {
            matches!(op.kind, OpKind::Move { to, replica: r, .. } if to == node && r == replica)
        });
        !adding
    }

    /// Checks and records a move of `partition`'s replica (of the metadata group's seat for
    /// partition 0) from `from` to `to`. Partitions and the metadata group share every
    /// check; only who holds the group differs (replicas, or the metadata voters).
    fn start_move(
        &mut self,
        partition: PartitionId,
        from: NodeId,
        to: NodeId,
        now_ms: u64,
    ) -> Result<Operation, Error> {
        let meta = partition == META_GROUP;
        let (table, holders): (TableId, Vec<NodeId>) = if meta {
            (TableId(0), self.meta_voters.keys().copied().collect())
        } else {
            let Some((table, p)) = self.partition(partition) else {
                return Err(Error::NotFound(format!(
                    "partition {partition}; `cairn table describe` lists a table's partitions"
                )));
            };
            (table.id, p.replicas.clone())
        };
        for n in [from, to] {
            if !self.nodes.contains_key(&n) {
                return Err(Error::NotFound(format!(
                    "node {n} is not part of the cluster; `cairn admin nodes` lists the nodes"
                )));
            }
        }
        if from == to {
            return Err(Error::InvalidArgument(
                "a move needs two different nodes".into(),
            ));
        }
        let group = if meta {
            "the metadata group".to_string()
        } else {
            partition.to_string()
        };
        if !holders.contains(&from) {
            return Err(Error::Conflict(if meta {
                format!("{from} is not a metadata member; `cairn admin nodes` lists the members")
            } else {
                format!("{from} holds no replica of {group}")
            }));
        }
        if holders.contains(&to) {
            return Err(Error::Conflict(if meta {
                format!("{to} is already a metadata member")
            } else {
                format!("{to} already holds a replica of {group}")
            }));
        }
        if self.draining.contains(&to) {
            return Err(Error::Conflict(format!(
                "{to} is draining; `cairn admin undrain {to}` first or move elsewhere"
            )));
        }
        if let Some(op) = self.running_on(partition) {
            return Err(Error::Conflict(format!(
                "operation {} ({}) on {group} is still running; wait for it (`cairn admin operations`)",
                op.id,
                op.kind.name()
            )));
        }
        Ok(self.record_move(partition, table, from, to, now_ms))
    }

    fn record_move(
        &mut self,
        partition: PartitionId,
        table: TableId,
        from: NodeId,
        to: NodeId,
        now_ms: u64,
    ) -> Operation {
        let replica = self.alloc_replica_id();
        self.next_operation_id = self.next_operation_id.max(1);
        let op = Operation {
            id: self.next_operation_id,
            kind: OpKind::Move { from, to, replica },
            partition,
            table,
            state: OpState::Running,
            step: "started".into(),
            error: None,
            started_ms: now_ms,
            updated_ms: now_ms,
        };
        self.next_operation_id += 1;
        self.operations.insert(op.id, op.clone());
        op
    }

    /// The running operation on `partition`, if any.
    pub fn running_on(&self, partition: PartitionId) -> Option<&Operation> {
        self.operations
            .values()
            .find(|o| o.partition == partition && o.state == OpState::Running)
    }

    fn forget_old_operations(&mut self) {
        // Drops and layout operations are kept apart (see [`KEEP_DROPS`]).
        let is_drop = |o: &Operation| matches!(o.kind, OpKind::DropTable { .. });
        for drops in [false, true] {
            let finished: Vec<u64> = self
                .operations
                .values()
                .filter(|o| o.state != OpState::Running && is_drop(o) == drops)
                .map(|o| o.id)
                .collect();
            let keep = if drops { KEEP_DROPS } else { KEEP_FINISHED };
            for id in finished.iter().take(finished.len().saturating_sub(keep)) {
                self.operations.remove(id);
            }
        }
    }

    /// A fresh replica id.
    pub fn alloc_replica_id(&mut self) -> ReplicaId {
        self.next_replica_id = self.next_replica_id.max(FIRST_REPLICA_ID);
        let id = ReplicaId(self.next_replica_id);
        self.next_replica_id += 1;
        id
    }

    /// The table with id `id`.
    pub fn table_by_id(&self, id: TableId) -> Option<&TableDesc> {
        self.tables.values().find(|t| t.id == id)
    }

    /// The partition `id` with its table.
    pub fn partition(&self, id: PartitionId) -> Option<(&TableDesc, &PartitionDesc)> {
        self.partitions().find(|(_, p)| p.id == id)
    }

    /// Which descriptors of `descs` are news to the metadata: a newer epoch than recorded,
    /// or a partition not recorded yet, of a table that exists.
    pub fn newer_descs<'a>(&self, descs: &'a [PartitionDesc]) -> Vec<&'a PartitionDesc> {
        descs
            .iter()
            .filter(|d| {
                let Some(t) = self.table_by_id(d.table_id) else {
                    return false;
                };
                match t.partitions.iter().find(|p| p.id == d.id) {
                    Some(p) => d.epoch.is_newer_than(&p.epoch),
                    None => true,
                }
            })
            .collect()
    }

    /// What `node`, hosting the replicas `hosted` (their descriptors as applied there, and
    /// their replica ids), should open and destroy. See [`Reconcile`].
    pub fn reconcile(&self, node: NodeId, hosted: &[(PartitionDesc, ReplicaId)]) -> Reconcile {
        let mut out = Reconcile::default();
        // One index rather than a scan of the table per hosted replica: a node holding a
        // thousand replicas of one table made that a million comparisons every pass.
        let recorded: std::collections::HashMap<PartitionId, &PartitionDesc> =
            self.partitions().map(|(_, p)| (p.id, p)).collect();
        for (h, rid) in hosted {
            if self.table_by_id(h.table_id).is_none() {
                // Table ids are never reused: the table was dropped.
                out.destroy.push(h.id);
                continue;
            }
            let Some(p) = recorded.get(&h.id).copied() else {
                continue; // A split's right half not recorded yet.
            };
            // The learner a running move is adding here.
            let adding = self.running_on(p.id).is_some_and(|op| {
                matches!(op.kind, OpKind::Move { to, replica, .. } if to == node && replica == *rid)
            });
            let stale = match p.replica_on(node) {
                // An older incarnation of this node's replica (it left and came back).
                Some(current) => current != *rid,
                // Removed by a membership change the metadata has recorded: the record is
                // newer, or as new and the replica itself no longer lists this node.
                None => {
                    p.epoch.conf_ver > h.epoch.conf_ver
                        || (p.epoch.conf_ver == h.epoch.conf_ver && !h.replicas.contains(&node))
                }
            };
            if stale && !adding {
                out.destroy.push(h.id);
            }
        }
        // A set, not a scan per partition: with a thousand replicas on a node the scans
        // made this the largest part of an idle node's work.
        let hosted_ids: std::collections::HashSet<PartitionId> =
            hosted.iter().map(|(h, _)| h.id).collect();
        for (_, p) in self
            .partitions()
            .filter(|(_, p)| p.replicas.contains(&node))
        {
            if hosted_ids.contains(&p.id) {
                continue;
            }
            // A hosted replica whose range still covers this one (it has not applied the
            // split that made it) will create it when it does; opening it now would put two
            // replicas on one range of this node.
            let overlaps = hosted.iter().any(|(h, _)| {
                h.table_id == p.table_id && h.id != p.id && h.range.overlaps(&p.range)
            });
            if !overlaps {
                out.open.push(p.clone());
            }
        }
        out
    }

    /// Records an operation that finished in one step, and forgets the oldest finished ones.
    fn record_done(
        &mut self,
        kind: OpKind,
        partition: PartitionId,
        table: TableId,
        step: String,
        now_ms: u64,
    ) -> Operation {
        self.next_operation_id = self.next_operation_id.max(1);
        let op = Operation {
            id: self.next_operation_id,
            kind,
            partition,
            table,
            state: OpState::Done,
            step,
            error: None,
            started_ms: now_ms,
            updated_ms: now_ms,
        };
        self.next_operation_id += 1;
        self.operations.insert(op.id, op.clone());
        self.forget_old_operations();
        op
    }

    /// Whether a drop of the table `name` of id `id` is among the recorded operations.
    fn dropped(&self, name: &str, id: TableId) -> bool {
        self.operations.values().any(|op| {
            op.table == id && matches!(&op.kind, OpKind::DropTable { name: n, .. } if n == name)
        })
    }

    /// Removes the table `name`, answering it as it was.
    fn drop_table(&mut self, name: &str) -> MetaResponse {
        match self.tables.remove(name) {
            Some(t) => {
                self.create_requests.remove(name);
                MetaResponse::Table(t)
            }
            None => MetaResponse::Refused(Error::TableNotFound(name.to_string())),
        }
    }

    /// The table `name` if the CreateTable request `request_id` made it (a retry of it).
    pub fn created_by(&self, name: &str, request_id: u64) -> Option<&TableDesc> {
        match self.create_requests.get(name) {
            Some(id) if *id == request_id && request_id != 0 => self.tables.get(name),
            _ => None,
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
                let replica_ids = replicas
                    .iter()
                    .map(|n| (*n, self.alloc_replica_id()))
                    .collect();
                PartitionDesc {
                    id: pid,
                    table_id: id,
                    range,
                    epoch: Epoch {
                        conf_ver: 1,
                        version: 1,
                    },
                    replicas: replicas.clone(),
                    replica_ids,
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

/// What a node should do to match the metadata ([`MetaState::reconcile`]).
///
/// A replica is destroyed only when the metadata says so: its table is gone, or its
/// partition has a newer membership (`conf_ver`) without this node. A replica the metadata
/// does not know yet (the right half of a split whose record has not landed) is left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {
    /// Partitions placed on the node that it does not host; opened without bootstrapping.
    pub open: Vec<PartitionDesc>,
    /// Hosted replicas to stop and delete.
    pub destroy: Vec<PartitionId>,
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

    /// Each call is a new request, as from a different client.
    fn create(s: &mut MetaState, name: &str, splits: &[&str]) -> MetaResponse {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        create_as(s, name, splits, id)
    }

    fn create_as(s: &mut MetaState, name: &str, splits: &[&str], request_id: u64) -> MetaResponse {
        let split_keys: Vec<Vec<u8>> = splits.iter().map(|k| k.as_bytes().to_vec()).collect();
        let placement = vec![vec![NodeId(1)]; split_keys.len() + 1];
        s.apply(&MetaCommand::CreateTable {
            name: name.into(),
            replication: 1,
            split_keys,
            placement,
            request_id,
        })
    }

    #[test]
    fn a_retried_create_is_answered_its_table_and_another_is_refused() {
        let mut s = MetaState::default();
        let MetaResponse::Table(t) = create_as(&mut s, "t", &["m"], 77) else {
            panic!("refused")
        };
        let after_first = s.clone();
        // The same request again (its first answer was lost): the same table, nothing new.
        assert_eq!(
            create_as(&mut s, "t", &["m"], 77),
            MetaResponse::Table(t.clone())
        );
        assert_eq!(s, after_first);
        assert_eq!(s.created_by("t", 77), Some(&t));
        // Another request for the same name is refused.
        assert_eq!(
            create_as(&mut s, "t", &["m"], 78),
            MetaResponse::Refused(Error::AlreadyExists("t".into()))
        );
        // Once dropped and made again by another request, the old id no longer matches.
        s.apply(&MetaCommand::DropTable { name: "t".into() });
        assert!(matches!(
            create_as(&mut s, "t", &[], 79),
            MetaResponse::Table(_)
        ));
        assert_eq!(
            create_as(&mut s, "t", &["m"], 77),
            MetaResponse::Refused(Error::AlreadyExists("t".into()))
        );
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

    #[test]
    fn a_drop_by_id_never_drops_the_table_made_again_under_its_name() {
        let mut s = MetaState::default();
        let id_of = |r: MetaResponse| match r {
            MetaResponse::Table(t) => t.id,
            other => panic!("no table: {other:?}"),
        };
        let first = id_of(create(&mut s, "t", &[]));
        let other = id_of(create(&mut s, "u", &[]));
        let drop_if = |s: &mut MetaState, name: &str, id: TableId| {
            s.apply(&MetaCommand::DropTableIf {
                name: name.into(),
                id,
                now_ms: 5,
            })
        };
        // The id of another table, or one never handed out: refused, saying the table's
        // id, nothing dropped.
        let other_id = |want: TableId| {
            let m = format!(
                "table \"t\" has id {}, not {}; nothing was dropped",
                first.0, want.0
            );
            MetaResponse::Refused(Error::NotFound(m))
        };
        for wrong in [other, TableId(99), TableId(0)] {
            assert_eq!(drop_if(&mut s, "t", wrong), other_id(wrong));
        }
        assert_eq!(s.tables.len(), 2);
        // The right id drops it, answering the table as it was, and records the drop.
        assert_eq!(id_of(drop_if(&mut s, "t", first)), first);
        let op = s.operations.values().last().expect("the drop recorded");
        assert!(matches!(&op.kind, OpKind::DropTable { name, .. } if name == "t"));
        assert_eq!((op.table, op.state), (first, OpState::Done));
        // Another dropped table's id (say, mistyped) is refused: nothing is said done.
        assert!(matches!(
            drop_if(&mut s, "u", first),
            MetaResponse::Refused(Error::NotFound(_))
        ));
        assert_eq!(
            drop_if(&mut s, "none", first),
            MetaResponse::Refused(Error::TableNotFound("none".into()))
        );
        // Made again under the name: a late retry of that drop answers done and leaves the
        // new table alone.
        let again = id_of(create(&mut s, "t", &[]));
        assert_ne!(again, first);
        let before = s.clone();
        assert_eq!(drop_if(&mut s, "t", first), MetaResponse::Done);
        assert_eq!(s, before, "the new table stays");
        assert_eq!(id_of(drop_if(&mut s, "t", again)), again);
        // With the name free, the late retry still answers done.
        assert_eq!(drop_if(&mut s, "t", first), MetaResponse::Done);
        assert!(s.tables.contains_key("u"));
    }

    #[test]
    fn drops_are_kept_apart_from_layout_operations() {
        let mut s = MetaState::default();
        let MetaResponse::Table(t) = create(&mut s, "t", &[]) else {
            panic!("not created");
        };
        let (name, id) = ("t".to_string(), t.id);
        s.apply(&MetaCommand::DropTableIf {
            name,
            id,
            now_ms: 1,
        });
        let transfer = |s: &mut MetaState| {
            s.apply(&MetaCommand::RecordOperation {
                partition: PartitionId(9),
                kind: OpKind::TransferLeader { to: NodeId(2) },
                step: "done".into(),
                now_ms: 2,
            })
        };
        for _ in 0..KEEP_FINISHED + 50 {
            assert!(matches!(transfer(&mut s), MetaResponse::Operation(_)));
        }
        assert_eq!(
            s.operations.len(),
            KEEP_FINISHED + 1,
            "100 transfers and the drop"
        );
        assert!(
            s.dropped("t", id),
            "a storm of transfers pushed the drop out"
        );
        // A drop is not recorded any other way.
        let forged = s.apply(&MetaCommand::RecordOperation {
            partition: PartitionId(9),
            kind: OpKind::DropTable {
                name: "x".into(),
                created_by: 1,
            },
            step: "done".into(),
            now_ms: 3,
        });
        assert!(matches!(
            forged,
            MetaResponse::Refused(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_late_create_retry_does_not_make_a_dropped_table_again() {
        let mut s = MetaState::default();
        let MetaResponse::Table(t) = create_as(&mut s, "t", &[], 42) else {
            panic!("not created");
        };
        let dropped = s.apply(&MetaCommand::DropTableIf {
            name: "t".into(),
            id: t.id,
            now_ms: 5,
        });
        assert!(matches!(dropped, MetaResponse::Table(_)));
        let before = s.clone();
        assert!(matches!(
            create_as(&mut s, "t", &[], 42),
            MetaResponse::Refused(Error::Conflict(_))
        ));
        assert_eq!(s, before, "the late retry made nothing");
        // Another request makes the table again.
        assert!(matches!(
            create_as(&mut s, "t", &[], 43),
            MetaResponse::Table(_)
        ));
    }
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;

    fn table(s: &mut MetaState, name: &str, splits: &[&str], nodes: &[u64]) -> TableDesc {
        let split_keys: Vec<Vec<u8>> = splits.iter().map(|k| k.as_bytes().to_vec()).collect();
        let placement = vec![nodes.iter().map(|n| NodeId(*n)).collect(); split_keys.len() + 1];
        match s.apply(&MetaCommand::CreateTable {
            name: name.into(),
            replication: nodes.len() as u32,
            split_keys,
            placement,
            request_id: 1,
        }) {
            MetaResponse::Table(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn split_records_take_newer_epochs_and_allocate_ids() {
        let mut s = MetaState::default();
        let t = table(&mut s, "t", &[], &[1, 2, 3]);
        let MetaResponse::Ids(right) = s.apply(&MetaCommand::AllocPartitionIds { count: 1 }) else {
            panic!("no ids")
        };
        assert_eq!(right, 2);
        let p = t.partitions[0].clone();
        let (l, r) = p.range.split_at(b"m").unwrap();
        let epoch = Epoch {
            version: 2,
            ..p.epoch
        };
        let left = PartitionDesc {
            range: l,
            epoch,
            ..p.clone()
        };
        let rightd = PartitionDesc {
            id: PartitionId(right),
            range: r,
            epoch,
            ..p.clone()
        };
        assert_eq!(s.newer_descs(std::slice::from_ref(&p)).len(), 0);
        assert_eq!(s.newer_descs(&[left.clone(), rightd.clone()]).len(), 2);
        s.apply(&MetaCommand::UpdatePartitions {
            descs: vec![left.clone(), rightd.clone()],
        });
        assert!(s.tables["t"].tiles());
        assert_eq!(s.tables["t"].partitions, vec![left.clone(), rightd]);
        // A late, older report changes nothing.
        s.apply(&MetaCommand::UpdatePartitions { descs: vec![p] });
        assert_eq!(s.tables["t"].partitions[0], left);
        // Ids never go back, even past ids reported from outside the counter.
        let MetaResponse::Ids(next) = s.apply(&MetaCommand::AllocPartitionIds { count: 1 }) else {
            panic!("no ids")
        };
        assert_eq!(next, 3);
    }

    #[test]
    fn a_reported_id_at_the_end_of_the_range_exhausts_ids_without_a_panic() {
        let mut s = MetaState::default();
        let t = table(&mut s, "t", &[], &[1]);
        let far = PartitionDesc {
            id: PartitionId(u64::MAX),
            ..t.partitions[0].clone()
        };
        s.apply(&MetaCommand::UpdatePartitions { descs: vec![far] });
        assert_eq!(s.next_partition_id, u64::MAX);
        let r = s.apply(&MetaCommand::AllocPartitionIds { count: 2 });
        assert!(
            matches!(r, MetaResponse::Refused(Error::Internal(_))),
            "{r:?}"
        );
        assert_eq!(
            s.next_partition_id,
            u64::MAX,
            "a refused allocation takes nothing"
        );
    }

    #[test]
    fn reconcile_destroys_only_what_metadata_says() {
        let mut s = MetaState::default();
        let t = table(&mut s, "t", &[], &[1, 2, 3]);
        let p = t.partitions[0].clone();
        let on =
            |d: &PartitionDesc, n: u64| (d.clone(), d.replica_on(NodeId(n)).unwrap_or_default());
        // The right half of a split not yet recorded: unknown to the metadata, kept.
        let (l, r) = p.range.split_at(b"m").unwrap();
        let epoch = Epoch {
            version: 2,
            ..p.epoch
        };
        let left = PartitionDesc {
            range: l,
            epoch,
            ..p.clone()
        };
        let right = PartitionDesc {
            id: PartitionId(99),
            range: r,
            epoch,
            ..p.clone()
        };
        let rec = s.reconcile(NodeId(1), &[on(&left, 1), on(&right, 1)]);
        assert_eq!(rec, Reconcile::default());
        // A node that lags behind the split does not get the right half opened beside it.
        s.apply(&MetaCommand::UpdatePartitions {
            descs: vec![left.clone(), right.clone()],
        });
        assert_eq!(s.reconcile(NodeId(2), &[on(&p, 2)]), Reconcile::default());
        // A node that hosts nothing opens both halves.
        assert_eq!(
            s.reconcile(NodeId(3), &[]).open,
            vec![left.clone(), right.clone()]
        );
        // A move of node 1's replica to node 4: the learner on node 4 is kept while the move
        // runs, an unrelated replica there is not.
        for n in 1..=4 {
            s.apply(&MetaCommand::RegisterNode(NodeDesc {
                id: NodeId(n),
                addr: format!("n{n}"),
                http_addr: String::new(),
            }));
        }
        let MetaResponse::Operation(op) = s.apply(&MetaCommand::StartMove {
            partition: left.id,
            from: NodeId(1),
            to: NodeId(4),
            now_ms: 0,
        }) else {
            panic!("move refused")
        };
        let OpKind::Move {
            replica: new_rid, ..
        } = op.kind
        else {
            panic!("not a move")
        };
        assert_eq!(
            s.reconcile(NodeId(4), &[(left.clone(), new_rid)]).destroy,
            vec![]
        );
        assert_eq!(
            s.reconcile(NodeId(4), &[(left.clone(), ReplicaId(5))])
                .destroy,
            vec![left.id]
        );
        // A second move of the same partition waits for the first.
        assert!(matches!(
            s.apply(&MetaCommand::StartMove {
                partition: left.id,
                from: NodeId(2),
                to: NodeId(4),
                now_ms: 0
            }),
            MetaResponse::Refused(Error::Conflict(_))
        ));
        // Done: a newer membership without node 1 destroys its replica; node 4's stays.
        let mut replica_ids = left.replica_ids.clone();
        replica_ids.remove(&NodeId(1));
        replica_ids.insert(NodeId(4), new_rid);
        let moved = PartitionDesc {
            epoch: Epoch {
                conf_ver: 4,
                ..epoch
            },
            replicas: vec![NodeId(2), NodeId(3), NodeId(4)],
            replica_ids,
            ..left.clone()
        };
        s.apply(&MetaCommand::UpdatePartitions {
            descs: vec![moved.clone()],
        });
        s.apply(&MetaCommand::UpdateOperation {
            id: op.id,
            state: OpState::Done,
            step: "done".into(),
            error: None,
            now_ms: 1,
        });
        assert_eq!(
            s.reconcile(NodeId(1), &[on(&left, 1), on(&right, 1)])
                .destroy,
            vec![left.id]
        );
        // Node 1 saw its own removal applied: as new as the record, without node 1.
        assert_eq!(
            s.reconcile(
                NodeId(1),
                &[(moved.clone(), left.replica_on(NodeId(1)).unwrap())]
            )
            .destroy,
            vec![left.id]
        );
        assert_eq!(
            s.reconcile(NodeId(4), &[(moved.clone(), new_rid)]).destroy,
            vec![]
        );
        // A replica whose node is listed under a newer replica id is an old incarnation.
        assert_eq!(
            s.reconcile(NodeId(4), &[(left.clone(), ReplicaId(5))])
                .destroy,
            vec![left.id]
        );
        // A dropped table: every replica of it goes.
        s.apply(&MetaCommand::DropTable { name: "t".into() });
        assert_eq!(
            s.reconcile(NodeId(2), &[on(&moved, 2), on(&right, 2)])
                .destroy,
            vec![left.id, right.id]
        );
    }
}

#[cfg(test)]
mod meta_move_tests {
    use super::*;

    fn cluster() -> MetaState {
        let mut s = MetaState::default();
        for n in 1..=4 {
            s.apply(&MetaCommand::RegisterNode(NodeDesc {
                id: NodeId(n),
                addr: format!("n{n}"),
                http_addr: String::new(),
            }));
        }
        s.set_meta_voters((1..=3).map(|n| (NodeId(n), ReplicaId(n))).collect());
        s
    }

    fn start(s: &mut MetaState, from: u64, to: u64) -> MetaResponse {
        s.apply(&MetaCommand::StartMove {
            partition: META_GROUP,
            from: NodeId(from),
            to: NodeId(to),
            now_ms: 0,
        })
    }

    #[test]
    fn a_metadata_move_is_checked_like_any_other() {
        let mut s = cluster();
        let before = s.clone();
        // Not a member, already a member, unknown node, same node: refused, nothing changes.
        assert!(matches!(
            start(&mut s, 4, 1),
            MetaResponse::Refused(Error::Conflict(_))
        ));
        assert!(matches!(
            start(&mut s, 1, 2),
            MetaResponse::Refused(Error::Conflict(_))
        ));
        assert!(matches!(
            start(&mut s, 1, 9),
            MetaResponse::Refused(Error::NotFound(_))
        ));
        assert!(matches!(
            start(&mut s, 1, 1),
            MetaResponse::Refused(Error::InvalidArgument(_))
        ));
        assert_eq!(s, before);
        // Nothing new goes to a draining node, the metadata seat included.
        s.draining.insert(NodeId(4));
        assert!(matches!(
            start(&mut s, 1, 4),
            MetaResponse::Refused(Error::Conflict(_))
        ));
        s.draining.remove(&NodeId(4));
        assert_eq!(s, before);
        let MetaResponse::Operation(op) = start(&mut s, 1, 4) else {
            panic!("refused")
        };
        assert_eq!((op.partition, op.table), (META_GROUP, TableId(0)));
        // One at a time.
        assert!(matches!(
            start(&mut s, 2, 4),
            MetaResponse::Refused(Error::Conflict(_))
        ));
    }

    #[test]
    fn only_a_replica_that_left_the_metadata_group_is_destroyed() {
        let mut s = cluster();
        // Voters are never destroyed, nor is anything while the voters are unknown.
        assert!(!s.meta_replica_stale(NodeId(1), ReplicaId(1)));
        assert!(!MetaState::default().meta_replica_stale(NodeId(1), ReplicaId(1)));
        let MetaResponse::Operation(op) = start(&mut s, 1, 4) else {
            panic!("refused")
        };
        let OpKind::Move { replica, .. } = op.kind else {
            panic!("not a move")
        };
        assert!(replica.0 >= FIRST_REPLICA_ID);
        // The learner a running move opened is kept; any other replica on that node is not.
        assert!(!s.meta_replica_stale(NodeId(4), replica));
        assert!(s.meta_replica_stale(NodeId(4), ReplicaId(replica.0 + 1)));
        // Once the voters change, the replica that left is destroyed, the new one kept.
        s.set_meta_voters(BTreeMap::from([
            (NodeId(2), ReplicaId(2)),
            (NodeId(3), ReplicaId(3)),
            (NodeId(4), replica),
        ]));
        assert!(s.meta_replica_stale(NodeId(1), ReplicaId(1)));
        s.apply(&MetaCommand::UpdateOperation {
            id: op.id,
            state: OpState::Done,
            step: "done".into(),
            error: None,
            now_ms: 1,
        });
        assert!(!s.meta_replica_stale(NodeId(4), replica));
    }
}

#[cfg(test)]
mod node_state_tests {
    use super::*;

    #[test]
    fn only_an_empty_node_is_removed_and_its_id_is_never_accepted_again() {
        let mut s = MetaState::default();
        for n in 1..=4 {
            s.apply(&MetaCommand::RegisterNode(NodeDesc {
                id: NodeId(n),
                addr: format!("n{n}"),
                http_addr: String::new(),
            }));
        }
        s.set_meta_voters((1..=3).map(|n| (NodeId(n), ReplicaId(n))).collect());
        s.apply(&MetaCommand::CreateTable {
            name: "t".into(),
            replication: 3,
            split_keys: vec![],
            placement: vec![vec![NodeId(2), NodeId(3), NodeId(4)]],
            request_id: 1,
        });
        let remove =
            |s: &mut MetaState, n: u64| s.apply(&MetaCommand::RemoveNode { node: NodeId(n) });
        let before = s.clone();
        // Holds replicas; holds a metadata replica; unknown.
        assert!(matches!(
            remove(&mut s, 4),
            MetaResponse::Refused(Error::Conflict(_))
        ));
        assert!(matches!(
            remove(&mut s, 1),
            MetaResponse::Refused(Error::Conflict(_))
        ));
        assert!(matches!(
            remove(&mut s, 9),
            MetaResponse::Refused(Error::NotFound(_))
        ));
        assert_eq!(s, before);
        // Empty: removed, and then refused for good.
        s.meta_voters.remove(&NodeId(1));
        s.apply(&MetaCommand::SetDraining {
            node: NodeId(1),
            draining: true,
        });
        assert_eq!(remove(&mut s, 1), MetaResponse::Done);
        assert!(!s.nodes.contains_key(&NodeId(1)) && !s.draining.contains(&NodeId(1)));
        assert_eq!(remove(&mut s, 1), MetaResponse::Done);
        let again = s.apply(&MetaCommand::RegisterNode(NodeDesc {
            id: NodeId(1),
            addr: "n1".into(),
            http_addr: String::new(),
        }));
        assert_eq!(again, MetaResponse::Refused(Error::NodeRemoved(NodeId(1))));
        // Moves to a draining node are refused.
        let p = s.tables["t"].partitions[0].id;
        s.apply(&MetaCommand::RegisterNode(NodeDesc {
            id: NodeId(5),
            addr: "n5".into(),
            http_addr: String::new(),
        }));
        s.apply(&MetaCommand::SetDraining {
            node: NodeId(5),
            draining: true,
        });
        let r = s.apply(&MetaCommand::StartMove {
            partition: p,
            from: NodeId(2),
            to: NodeId(5),
            now_ms: 0,
        });
        assert!(
            matches!(&r, MetaResponse::Refused(Error::Conflict(m)) if m.contains("draining")),
            "{r:?}"
        );
    }
}
