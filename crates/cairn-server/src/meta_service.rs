//! Requests served by the metadata group's leader: table routes, table creation and
//! removal, node heartbeats and liveness.

use crate::core::Core;
use crate::heartbeat::HeldReport;
use cairn_meta::{MetaCommand, MetaResponse, MetaState, placement};
use cairn_raft::{Command, Reply, from_raft};
use cairn_router::{Credential, Heartbeat, MetaReply, MetaRequest, NodeStatus, TableRoute};
use cairn_types::{
    Error, META_GROUP, NodeId, PartitionId, ReplicaId, Result, TableDesc, validate_table_name,
};
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A node counts as live this long after its last heartbeat.
pub(crate) const LIVENESS_WINDOW: Duration = Duration::from_secs(5);

/// A new metadata leader has seen no heartbeat yet; after this long (more than two
/// heartbeat periods) every live node has reached it, so placement can trust what it saw.
pub(crate) const LEADER_GRACE: Duration = Duration::from_millis(2500);

/// Liveness and replica reports as seen by this metadata replica while it leads.
#[derive(Default)]
pub(crate) struct Liveness {
    seen: BTreeMap<NodeId, Instant>,
    /// Each node's replica statuses and loads, as its heartbeats brought them.
    reports: BTreeMap<NodeId, HeldReport>,
    /// When this replica last became leader; before any heartbeat arrives, every
    /// registered node is given the benefit of the doubt for one window.
    leader_since: Option<Instant>,
    /// The metadata term this table belongs to; a new term starts it afresh, since what an
    /// earlier tenure saw may be stale.
    term: u64,
    /// Each node's last reconcile that found nothing to do.
    reconciled: BTreeMap<NodeId, Reconciled>,
}

/// A reconcile that found nothing to do: the same replicas (by digest) and metadata replica,
/// checked against this very metadata state, would find nothing again.
struct Reconciled {
    digest: u64,
    meta: Option<ReplicaId>,
    /// The state it was checked against. Weak, so that it neither keeps an old copy alive
    /// nor makes the next change copy the state; it still keeps the allocation, so any
    /// change (copy-on-write moves the state to a new one) or snapshot makes a new address.
    state: std::sync::Weak<MetaState>,
}

impl Reconciled {
    /// Whether a reconcile of the replicas `digest` and metadata replica `meta` against
    /// `state` would again find nothing to do.
    fn vouches(&self, digest: u64, meta: Option<ReplicaId>, state: &Arc<MetaState>) -> bool {
        self.digest == digest
            && self.meta == meta
            && std::ptr::eq(self.state.as_ptr(), Arc::as_ptr(state))
    }
}

impl Liveness {
    fn live(&self, node: NodeId) -> bool {
        match self.seen.get(&node) {
            Some(t) => t.elapsed() < LIVENESS_WINDOW,
            None => self
                .leader_since
                .is_some_and(|t| t.elapsed() < LEADER_GRACE),
        }
    }

    /// Nodes of `registered` not heard from for `after`: since their last heartbeat, or
    /// since this replica became leader for a node it has not heard from at all.
    pub(crate) fn down(
        &self,
        registered: impl Iterator<Item = NodeId>,
        after: Duration,
    ) -> BTreeSet<NodeId> {
        registered
            .filter(|n| match self.seen.get(n) {
                Some(t) => t.elapsed() >= after,
                None => self.leader_since.is_some_and(|t| t.elapsed() >= after),
            })
            .collect()
    }

    /// Forgets what a removed node reported.
    pub(crate) fn forget(&mut self, node: NodeId) {
        self.seen.remove(&node);
        self.reports.remove(&node);
        self.reconciled.remove(&node);
    }

    /// Nodes heard from within the liveness window.
    pub(crate) fn live_nodes(&self) -> BTreeSet<NodeId> {
        self.seen
            .iter()
            .filter(|(_, t)| t.elapsed() < LIVENESS_WINDOW)
            .map(|(n, _)| *n)
            .collect()
    }

    /// How long this replica has led, if it leads.
    pub(crate) fn leading_for(&self) -> Option<Duration> {
        self.leader_since.map(|t| t.elapsed())
    }

    /// Size and load of each partition as its leader reported them.
    pub(crate) fn loads(&self) -> BTreeMap<PartitionId, cairn_types::PartitionLoad> {
        let leaders = self.leaders();
        let mut out = BTreeMap::new();
        for (node, report) in &self.reports {
            for (p, l) in &report.loads {
                if leaders.get(p) == Some(node) {
                    out.insert(*p, l.clone());
                }
            }
        }
        out
    }

    /// Leader hints: for each partition, the leader in the report with the highest term.
    pub(crate) fn leaders(&self) -> BTreeMap<PartitionId, NodeId> {
        let mut best: BTreeMap<PartitionId, (u64, NodeId)> = BTreeMap::new();
        for report in self.reports.values() {
            for r in report.replicas.values() {
                if let Some(l) = r.leader {
                    let e = best.entry(r.partition).or_insert((r.term, l));
                    if r.term > e.0 {
                        *e = (r.term, l);
                    }
                }
            }
        }
        best.into_iter().map(|(p, (_, l))| (p, l)).collect()
    }
}

impl Core {
    /// The cluster's state for `/metrics`, if this node leads the metadata group: nodes by
    /// liveness, and partitions short of replicas or without a leader.
    pub(crate) fn cluster_gauges(&self) -> Option<crate::metrics::ClusterGauges> {
        let m = self.meta()?;
        if m.leader() != Some(self.id) {
            return None;
        }
        let state = m.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        let l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        let leaders = l.leaders();
        let mut g = crate::metrics::ClusterGauges::default();
        for n in state.nodes.keys() {
            if l.live(*n) {
                g.nodes_live += 1;
            } else {
                g.nodes_down += 1;
            }
        }
        for (t, p) in state.partitions() {
            g.partitions += 1;
            if p.replicas.len() < t.replication as usize || p.replicas.iter().any(|n| !l.live(*n)) {
                g.under_replicated += 1;
            }
            if !leaders.get(&p.id).is_some_and(|n| l.live(*n)) {
                g.without_leader += 1;
            }
        }
        Some(g)
    }

    fn meta_replica(&self) -> Result<crate::core::MetaReplica> {
        self.meta().ok_or(Error::NotLeader {
            partition: META_GROUP,
            leader: *self
                .meta_leader_hint
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        })
    }

    /// Confirms this replica leads the metadata group and has applied everything committed.
    async fn meta_barrier(&self) -> Result<Arc<MetaState>> {
        let m = self.meta_replica()?;
        m.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| from_raft(META_GROUP, e))?;
        self.note_leadership();
        Ok(m.state.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Records that this replica leads the metadata group in its current term.
    fn note_leadership(&self) {
        let Some(m) = self.meta() else { return };
        let term = m.raft.metrics().borrow_watched().current_term;
        let mut l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        if l.term != term || l.leader_since.is_none() {
            *l = Liveness {
                term,
                leader_since: Some(Instant::now()),
                ..Liveness::default()
            };
        }
    }

    /// Forgets leader-only state when this replica is not the leader.
    pub(crate) fn observe_meta_role(&self) {
        if let Some(m) = self.meta() {
            let leader = m.leader();
            *self
                .meta_leader_hint
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = leader;
            if leader != Some(self.id) {
                let mut l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
                *l = Liveness::default();
            }
        }
    }

    /// The metadata as applied by this node's replica (current only on the leader).
    pub(crate) fn meta_state(&self) -> Result<Arc<MetaState>> {
        Ok(self
            .meta_replica()?
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    pub(crate) async fn propose_meta(&self, cmd: MetaCommand) -> Result<MetaResponse> {
        let m = self.meta_replica()?;
        let written = m.raft.client_write(Command::Meta(cmd)).await;
        self.metrics.proposed(written.is_ok());
        match written {
            Ok(resp) => match resp.data {
                Reply::Meta(r) => Ok(r),
                other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
            },
            Err(e) => Err(from_raft(META_GROUP, e)),
        }
    }

    /// Proposes a command that answers a table, and returns that table's route.
    async fn propose_table_change(&self, cmd: MetaCommand) -> Result<MetaReply> {
        match self.propose_meta(cmd).await? {
            MetaResponse::Table(t) => {
                let state = self
                    .meta_replica()?
                    .state
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                Ok(MetaReply::Table(self.route_of(&state, t)))
            }
            MetaResponse::Done => Ok(MetaReply::Done),
            MetaResponse::Refused(e) => Err(e),
            other => Err(Error::Internal(format!(
                "a table change answered {other:?}"
            ))),
        }
    }

    fn route_of(&self, state: &MetaState, table: TableDesc) -> TableRoute {
        let leaders = self
            .liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leaders();
        let ids: BTreeSet<NodeId> = table
            .partitions
            .iter()
            .flat_map(|p| p.replicas.iter().copied())
            .collect();
        let nodes = ids
            .iter()
            .filter_map(|n| state.nodes.get(n).cloned())
            .collect();
        let leaders = leaders
            .into_iter()
            .filter(|(p, _)| table.partitions.iter().any(|x| x.id == *p))
            .collect();
        TableRoute {
            table,
            leaders,
            nodes,
        }
    }

    /// Serves a metadata request; refuses with `NotLeader` unless this node leads group 0.
    pub(crate) async fn handle_meta(&self, req: MetaRequest) -> Result<MetaReply> {
        match req {
            MetaRequest::ClusterInfo => Ok(MetaReply::Cluster(self.meta_members())),
            // The node's internal service answers it before it gets here (the diagnostics
            // are the node's, not the metadata group's).
            MetaRequest::NodeDiagnostic(_) => Err(Error::InvalidArgument(
                "a node's diagnostics are asked of that node's internal service".into(),
            )),
            MetaRequest::GetTable(name) => {
                let state = self.meta_barrier().await?;
                let table = state
                    .tables
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| Error::TableNotFound(name.clone()))?;
                Ok(MetaReply::Table(self.route_of(&state, table)))
            }
            MetaRequest::ListTables => Ok(MetaReply::Tables(
                self.meta_barrier()
                    .await?
                    .tables
                    .values()
                    .cloned()
                    .collect(),
            )),
            MetaRequest::CreateTable {
                name,
                replication,
                split_keys,
                request_id,
            } => {
                validate_table_name(&name)?;
                cairn_meta::validate_split_keys(&split_keys)?;
                for k in &split_keys {
                    self.limits.check_key(k)?;
                }
                let state = self.meta_barrier().await?;
                if let Some(t) = state.created_by(&name, request_id) {
                    return Ok(MetaReply::Table(self.route_of(&state, t.clone())));
                }
                if state.tables.contains_key(&name) {
                    return Err(Error::AlreadyExists(name));
                }
                // Right after an election the liveness table is still filling; wait for it
                // rather than place replicas on nodes that may be down.
                let settle = {
                    let l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
                    l.leader_since
                        .map(|t| LEADER_GRACE.saturating_sub(t.elapsed()))
                };
                if let Some(wait) = settle.filter(|w| !w.is_zero()) {
                    tokio::time::sleep(wait).await;
                }
                let live: BTreeSet<NodeId> = {
                    let l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
                    // Nothing new goes to a draining node.
                    state
                        .nodes
                        .keys()
                        .copied()
                        .filter(|n| l.live(*n) && !state.draining.contains(n))
                        .collect()
                };
                let placement = placement::place(&state, &live, split_keys.len() + 1, replication)?;
                self.disk.check_writable(self.id.0)?;
                let cmd = MetaCommand::CreateTable {
                    name,
                    replication,
                    split_keys,
                    placement,
                    request_id,
                };
                self.propose_table_change(cmd).await
            }
            MetaRequest::DropTable { name, id } => {
                let now_ms = crate::core::now_ms();
                self.propose_table_change(MetaCommand::DropTableIf { name, id, now_ms })
                    .await
            }
            MetaRequest::Heartbeat(hb) => self.heartbeat(hb).await,
            MetaRequest::Reconcile {
                node,
                hosted,
                digest,
                meta,
            } => {
                let Some(hosted) = hosted else {
                    return self.reconcile_unchanged(node, digest, meta);
                };
                let state = self.meta_barrier().await?;
                let rec = state.reconcile(node, &hosted);
                let destroy_meta = meta.is_some_and(|r| state.meta_replica_stale(node, r));
                {
                    let mut l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
                    if rec.open.is_empty() && rec.destroy.is_empty() && !destroy_meta {
                        let state = Arc::downgrade(&state);
                        let done = Reconciled {
                            digest,
                            meta,
                            state,
                        };
                        l.reconciled.insert(node, done);
                    } else {
                        l.reconciled.remove(&node);
                    }
                }
                let open = rec
                    .open
                    .into_iter()
                    .map(|p| {
                        let members = p
                            .replicas
                            .iter()
                            .filter_map(|n| state.nodes.get(n).cloned())
                            .collect();
                        (p, members)
                    })
                    .collect();
                Ok(MetaReply::Reconcile {
                    open,
                    destroy: rec.destroy,
                    destroy_meta,
                    send_hosted: false,
                })
            }
            MetaRequest::StartMove {
                partition,
                from,
                to,
            } => {
                let state = self.meta_barrier().await?;
                let live = {
                    let l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
                    l.live(to)
                };
                if state.nodes.contains_key(&to) && !live {
                    return Err(Error::Unavailable(format!(
                        "node {to} is not live (no heartbeat in {LIVENESS_WINDOW:?}); start it or move to another node"
                    )));
                }
                let cmd = MetaCommand::StartMove {
                    partition,
                    from,
                    to,
                    now_ms: crate::core::now_ms(),
                };
                match self.propose_meta(cmd).await? {
                    MetaResponse::Operation(op) => {
                        tracing::info!(operation = op.id, %partition, %from, %to, "move started");
                        Ok(MetaReply::Operation(op))
                    }
                    MetaResponse::Refused(e) => Err(e),
                    other => Err(Error::Internal(format!("unexpected answer {other:?}"))),
                }
            }
            MetaRequest::Operations => {
                let state = self.meta_barrier().await?;
                Ok(MetaReply::Operations(
                    state.operations.values().rev().cloned().collect(),
                ))
            }
            MetaRequest::AllocPartitionId => {
                match self
                    .propose_meta(MetaCommand::AllocPartitionIds { count: 1 })
                    .await?
                {
                    MetaResponse::Ids(first) => Ok(MetaReply::Id(PartitionId(first))),
                    MetaResponse::Refused(e) => Err(e),
                    other => Err(Error::Internal(format!("unexpected answer {other:?}"))),
                }
            }
            MetaRequest::UpdatePartitions(descs) => {
                self.meta_barrier().await?;
                self.record_descs(&descs).await?;
                Ok(MetaReply::Done)
            }
            MetaRequest::ControllerStatus => {
                let state = self.meta_barrier().await?;
                Ok(MetaReply::Controller(cairn_router::ControllerStatus {
                    enabled: self.controller.enabled,
                    paused: state.controller_paused,
                    leader: self.id,
                    draining: state.draining.iter().copied().collect(),
                    decisions: self.controller_log.recent(),
                    loads: self
                        .liveness
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .loads()
                        .into_iter()
                        .collect(),
                }))
            }
            MetaRequest::AddUser { user, token_hash } => {
                cairn_types::validate_user_name(&user.name)?;
                // Two users of one token would be one user to `Authenticate`. A new token is
                // random; a token hash from a backup may be one this cluster already holds.
                // Checked here, not in the state machine (where replicas of different builds
                // would disagree), so two such adds at once could both pass: best effort
                // against a mistake, only admins can add users.
                if let Some(other) = self
                    .meta_barrier()
                    .await?
                    .users
                    .values()
                    .find(|e| e.token_hash == token_hash && e.user.name != user.name)
                {
                    return Err(Error::AlreadyExists(format!(
                        "user {} has that token already; a user needs a token of its own",
                        other.user.name
                    )));
                }
                match self
                    .propose_meta(MetaCommand::AddUser(cairn_meta::UserEntry {
                        user,
                        token_hash,
                    }))
                    .await?
                {
                    MetaResponse::Refused(e) => Err(e),
                    _ => Ok(MetaReply::Done),
                }
            }
            MetaRequest::RemoveUser(name) => {
                match self.propose_meta(MetaCommand::RemoveUser { name }).await? {
                    MetaResponse::Refused(e) => Err(e),
                    _ => Ok(MetaReply::Done),
                }
            }
            MetaRequest::ListUsers => Ok(MetaReply::Users(
                self.meta_barrier()
                    .await?
                    .users
                    .values()
                    .map(|e| e.user.clone())
                    .collect(),
            )),
            MetaRequest::UserRecords => Ok(MetaReply::UserRecords(
                self.meta_barrier()
                    .await?
                    .users
                    .values()
                    .map(|e| (e.user.clone(), e.token_hash))
                    .collect(),
            )),
            MetaRequest::Authenticate(credential) => {
                let state = self.meta_barrier().await?;
                Ok(MetaReply::Principal(match credential {
                    Credential::Token(hash) => state
                        .users
                        .values()
                        .find(|e| e.token_hash == hash)
                        .map(|e| e.user.clone()),
                    Credential::Certificate(name) if name == cairn_types::ROOT_USER => {
                        Some(cairn_types::User::root())
                    }
                    Credential::Certificate(name) => state.users.get(&name).map(|e| e.user.clone()),
                }))
            }
            MetaRequest::SetControllerPaused(paused) => {
                self.meta_barrier().await?;
                match self
                    .propose_meta(MetaCommand::SetControllerPaused { paused })
                    .await?
                {
                    MetaResponse::Refused(e) => Err(e),
                    _ => Ok(MetaReply::Done),
                }
            }
            MetaRequest::RemoveNode(node) => {
                self.meta_barrier().await?;
                match self.propose_meta(MetaCommand::RemoveNode { node }).await? {
                    MetaResponse::Refused(e) => Err(e),
                    _ => {
                        tracing::info!(%node, "node removed from the cluster");
                        let mut l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
                        l.forget(node);
                        Ok(MetaReply::Done)
                    }
                }
            }
            MetaRequest::SetDraining { node, draining } => {
                self.meta_barrier().await?;
                match self
                    .propose_meta(MetaCommand::SetDraining { node, draining })
                    .await?
                {
                    MetaResponse::Refused(e) => Err(e),
                    _ => Ok(MetaReply::Done),
                }
            }
            MetaRequest::RecordOperation {
                partition,
                kind,
                step,
            } => {
                let cmd = MetaCommand::RecordOperation {
                    partition,
                    kind,
                    step,
                    now_ms: crate::core::now_ms(),
                };
                match self.propose_meta(cmd).await? {
                    MetaResponse::Operation(op) => Ok(MetaReply::Operation(op)),
                    MetaResponse::Refused(e) => Err(e),
                    other => Err(Error::Internal(format!("unexpected answer {other:?}"))),
                }
            }
            MetaRequest::GetPartition(id) => {
                let state = self.meta_barrier().await?;
                let table = state.partition(id).map(|(t, _)| t.clone()).ok_or_else(|| {
                    Error::NotFound(format!(
                        "partition {id}; `cairn table describe` lists a table's partitions"
                    ))
                })?;
                Ok(MetaReply::Table(self.route_of(&state, table)))
            }
            MetaRequest::Nodes => {
                let state = self.meta_barrier().await?;
                let l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
                let leaders = l.leaders();
                let members: BTreeSet<NodeId> = if state.meta_voters.is_empty() {
                    self.meta_members().iter().map(|(n, _)| *n).collect()
                } else {
                    state.meta_voters.keys().copied().collect()
                };
                let nodes = state
                    .nodes
                    .values()
                    .map(|n| NodeStatus {
                        node: n.clone(),
                        live: l.live(n.id),
                        last_heartbeat_ms_ago: l
                            .seen
                            .get(&n.id)
                            .map(|t| t.elapsed().as_millis() as u64),
                        replicas: state
                            .partitions()
                            .filter(|(_, p)| p.replicas.contains(&n.id))
                            .count() as u32,
                        leaders: leaders.values().filter(|x| **x == n.id).count() as u32,
                        metadata_member: members.contains(&n.id),
                        draining: state.draining.contains(&n.id),
                        metadata_leader: n.id == self.id,
                    })
                    .collect();
                Ok(MetaReply::Nodes(nodes))
            }
        }
    }

    /// Records the descriptors of `descs` that are newer than `state`'s.
    pub(crate) async fn record_descs(&self, descs: &[cairn_types::PartitionDesc]) -> Result<()> {
        // Compared under the read lock: cloning the whole metadata (a thousand partitions)
        // for every heartbeat was a good part of an idle cluster's work.
        let newer: Vec<_> = {
            let m = self.meta_replica()?;
            let state = m.state.read().unwrap_or_else(|p| p.into_inner());
            state.newer_descs(descs).into_iter().cloned().collect()
        };
        if newer.is_empty() {
            return Ok(());
        }
        for d in &newer {
            tracing::info!(partition = %d.id, epoch = %d.epoch, range = %d.range, "recording partition");
        }
        match self
            .propose_meta(MetaCommand::UpdatePartitions { descs: newer })
            .await?
        {
            MetaResponse::Refused(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// A reconcile that names the node's replicas by digest only: nothing to do if its last
    /// reconcile here found nothing with the same replicas against the same metadata, else
    /// the node is asked to send them. No ReadIndex round: "nothing to do" from a leader
    /// deposed without knowing it makes the node do nothing, which is always safe.
    fn reconcile_unchanged(
        &self,
        node: NodeId,
        digest: u64,
        meta: Option<ReplicaId>,
    ) -> Result<MetaReply> {
        let m = self.meta_replica()?;
        let leader = m.leader();
        if leader != Some(self.id) {
            return Err(Error::NotLeader {
                partition: META_GROUP,
                leader,
            });
        }
        let state = m.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        let l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        let same = l
            .reconciled
            .get(&node)
            .is_some_and(|r| r.vouches(digest, meta, &state));
        Ok(MetaReply::Reconcile {
            open: Vec::new(),
            destroy: Vec::new(),
            destroy_meta: false,
            send_hosted: !same,
        })
    }

    async fn heartbeat(&self, mut hb: Heartbeat) -> Result<MetaReply> {
        let m = self.meta_replica()?;
        let leader = m.leader();
        if leader != Some(self.id) {
            return Err(Error::NotLeader {
                partition: META_GROUP,
                leader,
            });
        }
        self.note_leadership();
        let (known, draining) = {
            let state = m.state.read().unwrap_or_else(|p| p.into_inner());
            if state.removed.contains(&hb.node.id) {
                return Err(Error::NodeRemoved(hb.node.id));
            }
            (
                state.nodes.get(&hb.node.id).cloned(),
                state.draining.contains(&hb.node.id),
            )
        };
        if known.as_ref() != Some(&hb.node) {
            match self
                .propose_meta(MetaCommand::RegisterNode(hb.node.clone()))
                .await?
            {
                MetaResponse::Refused(e) => return Err(e),
                _ => tracing::info!(node = %hb.node.id, addr = %hb.node.addr, "registered node"),
            }
        }
        let taken = {
            let mut l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
            l.seen.insert(hb.node.id, Instant::now());
            let mut held = l.reports.remove(&hb.node.id);
            let taken = HeldReport::take(&mut held, &mut hb);
            if let Some(held) = held {
                l.reports.insert(hb.node.id, held);
            }
            taken
        };
        let ack = |resend_full| MetaReply::HeartbeatAck {
            members: m.voters(),
            draining,
            resend_full,
        };
        if !taken {
            // The whole report follows at once, with every led descriptor in it.
            return Ok(ack(true));
        }
        // A led descriptor of a table this replica has not applied yet (a leader still
        // catching up) cannot be checked; were it acknowledged, the node would not send it
        // again until it changed. Ask for the whole report instead.
        let placed = {
            let state = m.state.read().unwrap_or_else(|p| p.into_inner());
            hb.led
                .iter()
                .all(|d| state.table_by_id(d.table_id).is_some())
        };
        // A leader's descriptor newer than the record repairs a split record that was lost.
        self.record_descs(&hb.led).await?;
        Ok(ack(!placed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_reconcile_holds_only_until_the_metadata_or_the_replicas_change() {
        let mut current = Arc::new(MetaState::default());
        let done = Reconciled {
            digest: 7,
            meta: Some(ReplicaId(3)),
            state: Arc::downgrade(&current),
        };
        let held = current.clone();
        assert!(done.vouches(7, Some(ReplicaId(3)), &current));
        assert!(
            !done.vouches(8, Some(ReplicaId(3)), &current),
            "replicas changed"
        );
        assert!(!done.vouches(7, None, &current), "metadata replica gone");
        // Applying a command, as the state machine does: copied while a reader holds it...
        Arc::make_mut(&mut current).controller_paused = true;
        assert!(
            !done.vouches(7, Some(ReplicaId(3)), &current),
            "any change to the metadata makes a new state"
        );
        // ... and moved to a new allocation (not copied) when only the weak reference is left.
        let mut alone = held;
        let before = Reconciled {
            digest: 7,
            meta: None,
            state: Arc::downgrade(&alone),
        };
        assert!(before.vouches(7, None, &alone));
        Arc::make_mut(&mut alone).controller_paused = true;
        assert!(
            !before.vouches(7, None, &alone),
            "a change with no other reader still makes a new address"
        );
        let snapshot = Arc::new((*alone).clone());
        assert!(
            !done.vouches(7, Some(ReplicaId(3)), &snapshot),
            "an installed snapshot is a new state even when equal"
        );
    }
}
