//! Replica moves: the membership steps a partition's leader takes, and the executor on the
//! metadata leader that drives each recorded move through them.
//!
//! ```text
//!  StartMove (metadata: op Running, fresh replica id r)
//!   1. open  : node `to` opens a pristine replica r (no seed: it can only catch up from a
//!              snapshot of the leader's current state, streamed in chunks)
//!   2. learn : leader adds r as a learner, answers Done once r has caught up
//!   3. swap  : leader replaces `from`'s replica by r among the voters (joint consensus);
//!              a leader on `from` hands leadership away first
//!   4. record: the new descriptor (conf_ver bumped) goes to the metadata; op Done.
//!              `from`'s reconcile then destroys its replica.
//! ```
//! Every step is idempotent, and the executor reads the operation and the partition afresh
//! before each, so a new metadata leader finishes what an old one started: a group left in
//! a joint configuration is flattened by step 3 run again. A move that makes no progress for
//! `--move-timeout` ([`DEFAULT_MOVE_TIMEOUT`]) before its learner becomes a voter is rolled back (the learner removed).

use crate::core::{Core, GroupRef, Replica, now_ms};
use crate::node::Node;
use cairn_meta::{MetaCommand, MetaResponse};
use cairn_raft::{Member, from_raft, leader_node, member_on};
use cairn_router::{MetaReply, MetaRequest, PartitionOp, PartitionReply, TableRoute, Transport};
use cairn_types::{
    Epoch, Error, META_GROUP, NodeDesc, NodeId, OpKind, OpState, Operation, PartitionId, ReplicaId,
    Result, TableId,
};
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A learner within this many entries of the leader's log counts as caught up.
const CAUGHT_UP_LAG: u64 = 64;

/// How long one call waits for a learner to catch up before answering "not yet".
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// A move whose learner has not become a voter after this long is rolled back, unless
/// the node says otherwise (`--move-timeout`).
pub const DEFAULT_MOVE_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the executor looks for running operations.
const EXECUTOR_TICK: Duration = Duration::from_millis(500);

impl Core {
    fn leader_metrics(&self, g: &GroupRef<'_>) -> Result<cairn_raft::typ::Metrics> {
        let m = g.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return Err(Error::NotLeader {
                partition: g.group,
                leader: leader_node(&m),
            });
        }
        Ok(m)
    }

    /// Step 2 of a move, on the partition's leader.
    pub(crate) async fn add_learner(
        &self,
        replica: &Replica,
        rid: ReplicaId,
        node: NodeDesc,
    ) -> Result<PartitionReply> {
        self.add_learner_to(&replica.group(), rid, node).await?;
        Ok(PartitionReply::Done)
    }

    /// Adds `rid` on `node` as a learner of group `g` (on its leader) and answers once it
    /// has caught up, or `Unavailable` with its progress after [`CATCH_UP_WAIT`].
    pub(crate) async fn add_learner_to(
        &self,
        g: &GroupRef<'_>,
        rid: ReplicaId,
        node: NodeDesc,
    ) -> Result<()> {
        let partition = g.group;
        let m = self.leader_metrics(g)?;
        if m.membership_config.membership().get_node(&rid.0).is_none() {
            // The learner starts from a snapshot of the leader's current state (a new group
            // never has its log from the start, see `seed_group`), so it does not replay
            // history that predates a split.
            self.peers.set_addr(node.id.0, &node.addr);
            let member = Member {
                node: node.id.0,
                addr: node.addr.clone(),
            };
            self.renew_lease(g.raft).await;
            g.raft
                .add_learner(rid.0, member, false)
                .await
                .map_err(|e| from_raft(partition, e))?;
            tracing::info!(%partition, replica = %rid, node = %node.id, "added learner");
        }
        let caught_up = |m: &cairn_raft::typ::Metrics| {
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&rid.0).cloned().flatten())
                .map(|l| l.index);
            matched.is_some_and(|i| i + CAUGHT_UP_LAG >= last)
        };
        let waited = g
            .raft
            .wait(Some(CATCH_UP_WAIT))
            .metrics(caught_up, "learner caught up")
            .await;
        match waited {
            Ok(_) => Ok(()),
            Err(_) => {
                let m = g.raft.metrics().borrow_watched().clone();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&rid.0).cloned().flatten())
                    .map_or(0, |l| l.index);
                Err(Error::Unavailable(format!(
                    "{rid} on {} is catching up with {partition}: at entry {matched} of {}",
                    node.id,
                    m.last_log_index.unwrap_or(0)
                )))
            }
        }
    }

    /// Step 3 of a move, on the partition's leader.
    pub(crate) async fn replace_voter(
        &self,
        replica: &Replica,
        remove: NodeId,
        add: ReplicaId,
    ) -> Result<PartitionReply> {
        self.replace_voter_in(&replica.group(), remove, add).await?;
        Ok(PartitionReply::Desc(replica.view.desc()))
    }

    /// Makes `add` a voter of group `g` in place of the replica on `remove` (on the leader),
    /// and answers once this replica has applied that membership.
    pub(crate) async fn replace_voter_in(
        &self,
        g: &GroupRef<'_>,
        remove: NodeId,
        add: ReplicaId,
    ) -> Result<()> {
        let partition = g.group;
        let m = self.leader_metrics(g)?;
        let membership = m.membership_config.membership().clone();
        let joint = membership.get_joint_config().len() > 1;
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        if let Some(old) = member_on(&membership, remove).filter(|r| *r != add.0) {
            voters.remove(&old);
        }
        voters.insert(add.0);
        let current: BTreeSet<u64> = membership.voter_ids().collect();
        if !joint && current == voters {
            // Done by an earlier call; answer once this replica has applied that
            // membership, not an older one.
            let at = m.membership_config.log_id().as_ref().map(|l| l.index);
            g.raft
                .wait(Some(Duration::from_secs(5)))
                .applied_index_at_least(at, "membership applied")
                .await
                .map_err(|e| Error::Unavailable(format!("{partition}: {e}")))?;
            return Ok(());
        }
        if membership.get_node(&add.0).is_none() {
            return Err(Error::Conflict(format!(
                "{add} is not a member of {partition}; add it as a learner first"
            )));
        }
        if remove == self.id {
            // Leaving the voters as leader would leave the group leaderless until an
            // election; hand leadership to another voter first.
            let to = membership
                .voter_ids()
                .filter(|v| *v != g.me.0)
                .find_map(|v| membership.get_node(&v).map(|n| NodeId(n.node)));
            if let Some(to) = to {
                let _ = self.transfer_leader_in(g, to).await;
            }
            let m = g.raft.metrics().borrow_watched().clone();
            return Err(Error::NotLeader {
                partition,
                leader: leader_node(&m).filter(|l| *l != self.id),
            });
        }
        // Answered once the final membership is applied here.
        self.renew_lease(g.raft).await;
        g.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map_err(|e| from_raft(partition, e))?;
        tracing::info!(%partition, %remove, %add, "replaced a voter");
        Ok(())
    }

    /// Rolls a move back, on the partition's leader: removes a learner that is not a voter.
    pub(crate) async fn remove_learner(
        &self,
        replica: &Replica,
        rid: ReplicaId,
    ) -> Result<PartitionReply> {
        self.remove_learner_from(&replica.group(), rid).await?;
        Ok(PartitionReply::Desc(replica.view.desc()))
    }

    /// Removes the learner `rid` from group `g` (on its leader); refuses if it votes.
    pub(crate) async fn remove_learner_from(&self, g: &GroupRef<'_>, rid: ReplicaId) -> Result<()> {
        let partition = g.group;
        let m = self.leader_metrics(g)?;
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == rid.0) {
            return Err(Error::Conflict(format!(
                "{rid} is already a voter of {partition}; the move can only finish"
            )));
        }
        if membership.get_node(&rid.0).is_some() {
            self.renew_lease(g.raft).await;
            g.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([rid.0])), false)
                .await
                .map_err(|e| from_raft(partition, e))?;
        }
        Ok(())
    }
}

/// How one step of a move ended.
enum Step {
    /// The move is finished (done or rolled back).
    Finished,
    /// Go on with the next step.
    Next,
}

impl Node {
    /// Starts moving `partition`'s replica from `from` to `to`; returns the recorded
    /// operation, which the metadata leader drives.
    pub async fn move_replica(
        &self,
        partition: PartitionId,
        from: NodeId,
        to: NodeId,
        deadline: Instant,
    ) -> Result<Operation> {
        let req = MetaRequest::StartMove {
            partition,
            from,
            to,
        };
        match self.router.meta(req, deadline).await? {
            MetaReply::Operation(op) => Ok(op),
            other => Err(Error::Internal(format!("start move answered {other:?}"))),
        }
    }

    /// Running and recent operations.
    pub async fn operations(&self, deadline: Instant) -> Result<Vec<Operation>> {
        match self.router.meta(MetaRequest::Operations, deadline).await? {
            MetaReply::Operations(ops) => Ok(ops),
            other => Err(Error::Internal(format!("operations answered {other:?}"))),
        }
    }

    /// Runs `op` on the leader of `partition`, retrying on routing errors until `deadline`.
    async fn on_leader(
        &self,
        route: TableRoute,
        partition: PartitionId,
        op: PartitionOp,
        deadline: Instant,
    ) -> Result<PartitionReply> {
        let name = route.table.name.clone();
        self.router.cache().insert(route);
        let pick = |r: &TableRoute| {
            r.table
                .partitions
                .iter()
                .find(|p| p.id == partition)
                .cloned()
        };
        let served = self
            .router
            .on_partition(&name, pick, || op.clone(), false, deadline)
            .await?;
        Ok(served.reply)
    }

    /// Records a step of `op` in the metadata (only while this node leads it).
    async fn note_op(
        &self,
        op: &Operation,
        state: OpState,
        step: &str,
        error: Option<String>,
    ) -> Result<()> {
        let cmd = MetaCommand::UpdateOperation {
            id: op.id,
            state,
            step: step.to_string(),
            error,
            now_ms: now_ms(),
        };
        match self.core.propose_meta(cmd).await? {
            MetaResponse::Refused(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// One pass over a move: every step from where it stands. Errors are retried by the
    /// caller; a step that cannot succeed any more rolls the move back.
    async fn drive_move(&self, op: &Operation) -> Result<Step> {
        let OpKind::Move { from, to, replica } = op.kind else {
            return Err(Error::Internal(format!(
                "operation {} is not a move",
                op.id
            )));
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let route = match self
            .core
            .handle_meta(MetaRequest::GetPartition(op.partition))
            .await
        {
            Ok(MetaReply::Table(r)) => r,
            Err(Error::NotFound(_)) => {
                self.note_op(op, OpState::RolledBack, "the table was dropped", None)
                    .await?;
                return Ok(Step::Finished);
            }
            Ok(other) => return Err(Error::Internal(format!("unexpected reply {other:?}"))),
            Err(e) => return Err(e),
        };
        let Some(desc) = route
            .table
            .partitions
            .iter()
            .find(|p| p.id == op.partition)
            .cloned()
        else {
            return Err(Error::Internal(format!(
                "{} vanished from its route",
                op.partition
            )));
        };
        let state = self.core.meta_state()?;
        let Some(to_desc) = state.nodes.get(&to).cloned() else {
            return Err(Error::NotFound(format!("node {to}")));
        };
        if desc.replica_on(to) == Some(replica) && desc.replica_on(from).is_none() {
            self.note_op(op, OpState::Done, "done", None).await?;
            return Ok(Step::Finished);
        }
        if started_at(op).elapsed() > self.core.move_timeout {
            match self
                .roll_back(op, route.clone(), replica, "gave up: no progress")
                .await?
            {
                Step::Finished => return Ok(Step::Finished),
                // The new replica already votes (perhaps in a joint configuration left by
                // a crash): the move can only go forward; the steps below finish it.
                Step::Next => {}
            }
        }
        // 1. The pristine replica on `to`.
        let members: Vec<NodeDesc> = state
            .nodes
            .values()
            .filter(|n| desc.replicas.contains(&n.id) || n.id == to)
            .cloned()
            .collect();
        self.router.transport().learn(&members);
        self.note_op(op, OpState::Running, "opening the new replica", None)
            .await?;
        let open = cairn_router::PartitionRequest {
            partition: desc.id,
            epoch: desc.epoch,
            table: desc.table_id,
            op: PartitionOp::Open {
                desc: desc.clone(),
                members,
                replica,
                bootstrap: false,
            },
        };
        self.router.transport().partition(to, open).await?;
        // 2. Learner, caught up.
        self.note_op(op, OpState::Running, "catching up", None)
            .await?;
        let learn = PartitionOp::AddLearner {
            replica,
            node: to_desc,
        };
        self.on_leader(route.clone(), desc.id, learn, deadline)
            .await?;
        // 3. Voter in place of `from`.
        self.note_op(op, OpState::Running, "replacing the voter", None)
            .await?;
        let swap = PartitionOp::ReplaceVoter {
            remove: from,
            add: replica,
        };
        let new_desc = match self.on_leader(route, desc.id, swap, deadline).await? {
            PartitionReply::Desc(d) => d,
            other => return Err(Error::Internal(format!("replace voter answered {other:?}"))),
        };
        // 4. Record.
        self.core.record_descs(&[new_desc]).await?;
        self.note_op(op, OpState::Done, "done", None).await?;
        tracing::info!(operation = op.id, partition = %op.partition, %from, %to, "move done");
        Ok(Step::Next)
    }

    /// One pass over a move of a metadata replica. This node leads the metadata group, so
    /// the membership steps run on its own replica; when `from` is this node, the swap hands
    /// leadership away first and the next leader's executor finishes the move.
    async fn drive_meta_move(&self, op: &Operation) -> Result<Step> {
        let OpKind::Move { from, to, replica } = op.kind else {
            return Err(Error::Internal(format!(
                "operation {} is not a move",
                op.id
            )));
        };
        let state = self.core.meta_state()?;
        let Some(to_desc) = state.nodes.get(&to).cloned() else {
            return Err(Error::NotFound(format!("node {to}")));
        };
        if state.meta_voters.get(&to) == Some(&replica) && !state.meta_voters.contains_key(&from) {
            self.note_op(op, OpState::Done, "done", None).await?;
            return Ok(Step::Finished);
        }
        let meta = self.core.meta().ok_or(Error::NotLeader {
            partition: META_GROUP,
            leader: None,
        })?;
        let g = meta.group();
        if started_at(op).elapsed() > self.core.move_timeout {
            match self.core.remove_learner_from(&g, replica).await {
                Ok(()) => {
                    self.note_op(
                        op,
                        OpState::RolledBack,
                        "rolled back",
                        Some("gave up: no progress".into()),
                    )
                    .await?;
                    return Ok(Step::Finished);
                }
                // Already a voter: the move can only go forward.
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // 1. The pristine replica on `to`.
        self.router
            .transport()
            .learn(std::slice::from_ref(&to_desc));
        self.note_op(op, OpState::Running, "opening the new replica", None)
            .await?;
        let open = cairn_router::PartitionRequest {
            partition: META_GROUP,
            epoch: Epoch::default(),
            table: TableId(0),
            op: PartitionOp::OpenMeta { replica },
        };
        self.router.transport().partition(to, open).await?;
        // 2. Learner, caught up.
        self.note_op(op, OpState::Running, "catching up", None)
            .await?;
        self.core.add_learner_to(&g, replica, to_desc).await?;
        // 3. Voter in place of `from`; the state machine records the new voters.
        self.note_op(op, OpState::Running, "replacing the voter", None)
            .await?;
        self.core.replace_voter_in(&g, from, replica).await?;
        self.note_op(op, OpState::Done, "done", None).await?;
        tracing::info!(operation = op.id, %from, %to, "metadata member moved");
        Ok(Step::Next)
    }

    async fn roll_back(
        &self,
        op: &Operation,
        route: TableRoute,
        replica: ReplicaId,
        why: &str,
    ) -> Result<Step> {
        let deadline = Instant::now() + Duration::from_secs(10);
        match self
            .on_leader(
                route,
                op.partition,
                PartitionOp::RemoveLearner { replica },
                deadline,
            )
            .await
        {
            Ok(PartitionReply::Desc(d)) => {
                self.core.record_descs(&[d]).await?;
                self.note_op(op, OpState::RolledBack, "rolled back", Some(why.into()))
                    .await?;
                Ok(Step::Finished)
            }
            // Already a voter: the move can only go forward.
            Err(Error::Conflict(_)) => Ok(Step::Next),
            Ok(other) => Err(Error::Internal(format!(
                "remove learner answered {other:?}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Drives `op` until it finishes or this node stops leading the metadata group.
    async fn run_operation(self: Arc<Self>, op: Operation) {
        let mut pause = Duration::from_millis(100);
        let mut last_error = String::new();
        loop {
            if !self.is_meta_leader() {
                return;
            }
            // Read it afresh: another executor may have finished it.
            let current = match self.core.meta_state() {
                Ok(s) => s.operations.get(&op.id).cloned(),
                Err(_) => return,
            };
            let Some(current) = current.filter(|o| o.state == OpState::Running) else {
                return;
            };
            let driven = if current.partition == META_GROUP {
                self.drive_meta_move(&current).await
            } else {
                self.drive_move(&current).await
            };
            match driven {
                Ok(_) => {
                    let done = self.core.meta_state().ok().and_then(|s| {
                        s.operations
                            .get(&op.id)
                            .map(|o| o.state != OpState::Running)
                    });
                    if done != Some(false) {
                        return;
                    }
                }
                Err(e) => {
                    // Each new kind of failure once at info (a stuck move says why in the
                    // log), repeats at debug.
                    let text = e.to_string();
                    if text != last_error {
                        tracing::info!(operation = op.id, step = %current.step, "move step failed, retrying: {text}");
                        last_error = text;
                    } else {
                        tracing::debug!(operation = op.id, "move step failed, retrying: {e}");
                    }
                    let step = current.step.clone();
                    let _ = self
                        .note_op(&current, OpState::Running, &step, Some(e.to_string()))
                        .await;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// When `op` started, on this node's monotonic clock.
fn started_at(op: &Operation) -> Instant {
    Instant::now()
        .checked_sub(Duration::from_millis(
            now_ms().saturating_sub(op.started_ms),
        ))
        .unwrap_or_else(Instant::now)
}

/// The executor: on the metadata leader, starts a driver for each running operation.
pub(crate) async fn executor_loop(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let driving: Arc<std::sync::Mutex<BTreeSet<u64>>> = Arc::default();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(EXECUTOR_TICK) => {}
        }
        if !node.is_meta_leader() {
            continue;
        }
        let Ok(state) = node.core.meta_state() else {
            continue;
        };
        for op in state
            .operations
            .values()
            .filter(|o| o.state == OpState::Running)
        {
            if !driving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(op.id)
            {
                continue;
            }
            let (node, op, driving) = (node.clone(), op.clone(), driving.clone());
            tokio::spawn(async move {
                let id = op.id;
                node.run_operation(op).await;
                driving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
        }
    }
}
