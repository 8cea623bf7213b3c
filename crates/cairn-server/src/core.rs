//! The replicas a node hosts and the requests they serve.

use crate::metrics::Metrics;
use cairn_meta::MetaState;
use cairn_raft::{
    Command, GroupNetwork, GroupStateMachine, KvCommand, KvOp, LogStore, Member, PartitionView,
    PeerNetwork, ReplicaRecord, Reply, SplitSink, Syncer, data_group_config, from_raft,
    group_is_pristine, leader_node, member_on, meta_group_config, seed_group, split_allowed, typ,
};
use cairn_router::{PartitionOp, PartitionReply, PartitionRequest};
use cairn_storage::{SharedEngine, Space, WriteBatch, keys};
use cairn_types::{
    Error, KeySample, Limits, META_GROUP, NodeDesc, NodeId, PartitionDesc, PartitionId,
    PartitionStatus, ReplicaId, Result,
};
use openraft::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Campaigns for leadership of a new group at once rather than after an election timeout,
/// retrying for a few seconds while the other replicas are still opening theirs.
async fn campaign(raft: &typ::Raft) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        if raft.metrics().borrow_watched().current_leader.is_some() {
            return;
        }
        // A group that shut down (its replica closed, the node stopping) answers both calls
        // at once; retrying would spin until the deadline (forever under a paused clock, as
        // simulation seed 8 found).
        if raft.trigger().elect(false).await.is_err() {
            return;
        }
        let led = raft
            .wait(Some(Duration::from_millis(300)))
            .metrics(|m| m.current_leader.is_some(), "a new group elected")
            .await;
        if !matches!(led, Err(openraft::metrics::WaitError::Timeout(..))) {
            return;
        }
    }
}

/// One hosted replica of a partition.
#[derive(Clone)]
pub(crate) struct Replica {
    /// This replica's member id in its group.
    pub(crate) id: ReplicaId,
    pub(crate) raft: typ::Raft,
    pub(crate) view: PartitionView,
    pub(crate) log: LogStore,
    /// Load and size measured while this node leads it.
    pub(crate) stats: Arc<crate::stats::ReplicaStats>,
    /// Stamps this replica's proposals while it leads.
    pub(crate) clock: Arc<GroupClock>,
    /// When an AppendEntries last reached this replica ([`PeerHealth::now_ms`]), so the
    /// supervisor can tell whether its leader's node restarted since.
    ///
    /// [`PeerHealth::now_ms`]: crate::supervisor::PeerHealth::now_ms
    pub(crate) heard_ms: Arc<std::sync::atomic::AtomicU64>,
    /// When this replica was opened ([`PeerHealth::now_ms`]): `heard_ms` still equal to it
    /// means no AppendEntries has reached it since.
    ///
    /// [`PeerHealth::now_ms`]: crate::supervisor::PeerHealth::now_ms
    pub(crate) opened_ms: u64,
    /// Whether the group had Raft state on this node's disk when the replica opened (it
    /// was reopened after a restart), as opposed to a replica made fresh here.
    pub(crate) recovered: bool,
    /// Shares ReadIndex rounds between concurrent linearizable reads.
    reads: Arc<crate::reads::ReadBatcher>,
    /// Shares Raft entries between concurrent puts and deletes.
    writes: Arc<crate::writes::WriteBatcher>,
}

/// The clock a leader stamps its proposals with ([`KvCommand::proposed_at_ms`]): this
/// process's monotonic clock, shifted so that it never runs behind the group time already
/// applied. It never reads the wall clock, so a wall clock stepped by hours (NTP, an
/// operator, a VM resumed) does not move it; after a change of leader the group time goes on
/// from where the applied writes left it.
pub(crate) struct GroupClock {
    /// Where this replica's monotonic clock starts (its opening). Per replica, not per
    /// process, so that a simulation's runs in one process each start from zero.
    origin: tokio::time::Instant,
    offset_ms: std::sync::atomic::AtomicU64,
}

impl Default for GroupClock {
    fn default() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            offset_ms: Default::default(),
        }
    }
}

impl GroupClock {
    /// The time to stamp a proposal with, given the group time of the last applied write.
    pub(crate) fn now_ms(&self, applied_ms: u64) -> u64 {
        let mono = self.origin.elapsed().as_millis() as u64;
        let behind = applied_ms.saturating_sub(mono);
        let offset = self
            .offset_ms
            .fetch_max(behind, std::sync::atomic::Ordering::AcqRel)
            .max(behind);
        mono.saturating_add(offset)
    }
}

impl Replica {
    /// This replica's group, for the membership steps shared with the metadata group.
    pub(crate) fn group(&self) -> GroupRef<'_> {
        GroupRef {
            raft: &self.raft,
            group: self.view.desc().id,
            me: self.id,
        }
    }
}

/// A hosted replica's Raft handle, its group and its member id: what leader transfer and
/// the membership steps of a move need, for a partition and for the metadata group alike.
pub(crate) struct GroupRef<'a> {
    pub(crate) raft: &'a typ::Raft,
    pub(crate) group: PartitionId,
    pub(crate) me: ReplicaId,
}

/// The metadata group replica, on the nodes that are members of it.
#[derive(Clone)]
pub(crate) struct MetaReplica {
    /// This replica's member id in the metadata group (a founder's is its node id).
    pub(crate) id: ReplicaId,
    pub(crate) raft: typ::Raft,
    pub(crate) state: Arc<RwLock<Arc<MetaState>>>,
}

impl MetaReplica {
    /// This replica's group, for the membership steps shared with partitions.
    pub(crate) fn group(&self) -> GroupRef<'_> {
        GroupRef {
            raft: &self.raft,
            group: META_GROUP,
            me: self.id,
        }
    }

    /// The node leading the metadata group, as this replica sees it.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        leader_node(&self.raft.metrics().borrow_watched())
    }

    /// The group's voters with their addresses, as this replica sees them.
    pub(crate) fn voters(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|r| {
                membership
                    .get_node(&r)
                    .map(|n| (NodeId(n.node), n.addr.clone()))
            })
            .collect()
    }
}

/// What a node records about itself in its engine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) id: NodeId,
    pub(crate) meta_members: Vec<(NodeId, String)>,
}

/// The state shared by every part of a node.
pub(crate) struct Core {
    pub(crate) id: NodeId,
    pub(crate) desc: NodeDesc,
    pub(crate) engine: SharedEngine,
    pub(crate) syncer: Syncer,
    pub(crate) peers: PeerNetwork,
    pub(crate) limits: Limits,
    pub(crate) snapshot_logs: u64,
    /// Bytes of log since a partition replica's last snapshot that make it snapshot and
    /// purge by size (0: off); see [`crate::log_bound`].
    pub(crate) snapshot_log_bytes: u64,
    /// Where partition logs past that many bytes report themselves to the log keeper.
    pub(crate) log_full: cairn_raft::LogFull,
    /// When a move that makes no progress is rolled back.
    pub(crate) move_timeout: Duration,
    /// The controller's switch and thresholds.
    pub(crate) controller: crate::config::ControllerConfig,
    /// The controller's recent decisions (on the metadata leader).
    pub(crate) controller_log: crate::controller::ControllerLog,
    /// Testing only: refuse incoming snapshot chunks.
    pub(crate) fault_refuse_snapshots: bool,
    /// Testing only: answer Raft streams UNIMPLEMENTED (an older node).
    pub(crate) fault_no_raft_stream: bool,
    /// This node's metadata replica; a move can open one or take it away at run time.
    pub(crate) meta: RwLock<Option<MetaReplica>>,
    /// The metadata group's voters as last heard (persisted in the identity record), so
    /// requests reach the metadata group after its members changed.
    pub(crate) meta_members: RwLock<Vec<(NodeId, String)>>,
    pub(crate) replicas: RwLock<BTreeMap<PartitionId, Replica>>,
    /// Replicas taken out of `replicas` whose log, state and rows are still being deleted:
    /// no replica of the same partition, or of a range overlapping theirs, opens until then.
    pub(crate) destroying: Mutex<BTreeMap<PartitionId, Arc<PartitionDesc>>>,
    /// Serializes replica creation with the start of a destruction (its removal from
    /// `replicas` into `destroying`).
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    pub(crate) liveness: Mutex<crate::meta_service::Liveness>,
    pub(crate) meta_leader_hint: Mutex<Option<NodeId>>,
    pub(crate) metrics: Metrics,
    /// Where replicas report the right halves of the splits they apply.
    pub(crate) splits: SplitSink,
    /// Free space on the data disk; below the reserve, writes are refused.
    pub(crate) disk: Arc<crate::disk::DiskGuard>,
    /// Partition groups run without timers of their own, under the group supervisor.
    pub(crate) quiesce: bool,
    /// How long a partition leader's commit notice waits for the next append to carry it.
    pub(crate) commit_hold: Duration,
    /// Drawn at start; a peer that sees it change knows this node restarted.
    pub(crate) incarnation: u64,
    /// Liveness of the peers, for the group supervisor.
    pub(crate) peer_health: crate::supervisor::PeerHealth,
    /// Leader hand-overs started here and not seen to complete, by partition.
    pub(crate) transfers: Mutex<std::collections::HashMap<PartitionId, Transfer>>,
    /// What the group supervisor's last pass over the replicas found.
    pub(crate) walked: Mutex<Option<crate::supervisor::Walked>>,
    /// Retried writes recognised by replicas since destroyed here.
    pub(crate) retired_duplicates: std::sync::atomic::AtomicU64,
    /// Point-in-time views held for backups in progress.
    pub(crate) exports: crate::export::Exports,
}

/// Takes a partition out of [`Core::destroying`] when dropped, however its destroy ended.
struct Unmark<'a>(&'a Core, PartitionId);

impl Drop for Unmark<'_> {
    fn drop(&mut self) {
        self.0
            .destroying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Why a node stops when `group`'s Raft stopped on `error`, and what the operator checks.
pub(crate) fn failure(group: PartitionId, error: &str) -> String {
    format!(
        "{group} on this node stopped on a storage failure ({error}); the node stops so that it \
         is restarted and recovers from what is durable. Check the disk (space, errors in the \
         kernel log)"
    )
}

/// A hand-over of leadership a partition leader started (see the group supervisor).
pub(crate) struct Transfer {
    /// When it started ([`crate::supervisor::PeerHealth::now_ms`]).
    pub(crate) started_ms: u64,
    /// The leader's term then; a later term means the hand-over is over.
    pub(crate) term: u64,
    /// The replica leadership goes to.
    pub(crate) target: u64,
}

/// How long a transfer of leadership may take before the caller hears an error.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn io_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// Starts this node's replica `id` of the metadata group on what the engine holds.
async fn start_meta_raft(
    engine: &SharedEngine,
    syncer: &Syncer,
    peers: &PeerNetwork,
    id: ReplicaId,
    snapshot_logs: u64,
) -> Result<MetaReplica> {
    let (sm, state) = GroupStateMachine::meta(engine.clone(), META_GROUP).map_err(io_err)?;
    let sm = sm.count_applied(peers.metrics().applied_entries.clone());
    let log = LogStore::new(META_GROUP, engine.clone(), syncer.clone());
    // The metadata group is not on the write path, and nodes route by what their metadata
    // replicas have applied: its commit notices go at once.
    let net = GroupNetwork {
        peers: peers.clone(),
        group: META_GROUP.0,
        commit_hold: Duration::ZERO,
    };
    let raft = typ::Raft::new(id.0, meta_group_config(snapshot_logs), net, log, sm)
        .await
        .map_err(io_err)?;
    Ok(MetaReplica { id, raft, state })
}

/// Which metadata replica the engine says this node hosts: `None` if it never recorded
/// one, `Some(None)` if its replica was removed.
fn meta_seat(engine: &SharedEngine) -> Result<Option<Option<ReplicaId>>> {
    match engine.get(Space::Local, &keys::local_meta_replica())? {
        None => Ok(None),
        Some(b) => postcard::from_bytes(&b)
            .map(Some)
            .map_err(|e| Error::Internal(format!("corrupt metadata replica record: {e}"))),
    }
}

fn write_meta_seat(b: &mut WriteBatch, seat: Option<ReplicaId>) -> Result<()> {
    b.put(
        Space::Local,
        keys::local_meta_replica(),
        postcard::to_allocvec(&seat).map_err(io_err)?,
    );
    Ok(())
}

impl Core {
    /// Opens the metadata replica this node hosts: the one it recorded, or at a founding
    /// member's first start, a founder's replica (its node id as replica id), which forms
    /// the group with the other founders.
    pub(crate) async fn open_meta(
        engine: &SharedEngine,
        syncer: &Syncer,
        peers: &PeerNetwork,
        id: NodeId,
        identity: &Identity,
        snapshot_logs: u64,
    ) -> Result<Option<MetaReplica>> {
        let founding = match meta_seat(engine)? {
            Some(None) => return Ok(None),
            Some(Some(rid)) => {
                let m = start_meta_raft(engine, syncer, peers, rid, snapshot_logs).await?;
                return Ok(Some(m));
            }
            None => identity.meta_members.iter().any(|(n, _)| *n == id),
        };
        if !founding {
            return Ok(None);
        }
        // A founder's replica id is its node id (no metadata exists yet to allocate from).
        let rid = ReplicaId(id.0);
        let mut b = WriteBatch::new();
        write_meta_seat(&mut b, Some(rid))?;
        engine.write(b)?;
        engine.sync()?;
        let m = start_meta_raft(engine, syncer, peers, rid, snapshot_logs).await?;
        if !m.raft.is_initialized().await.map_err(io_err)? {
            let members: BTreeMap<u64, Member> = identity
                .meta_members
                .iter()
                .map(|(n, a)| {
                    let m = Member {
                        node: n.0,
                        addr: a.clone(),
                    };
                    (n.0, m)
                })
                .collect();
            // Every founder initializes with the same membership; openraft allows it.
            if let Err(e) = m.raft.initialize(members).await {
                tracing::info!("metadata group already initialized: {e}");
            }
        }
        Ok(Some(m))
    }

    /// This node's metadata replica, if it hosts one.
    pub(crate) fn meta(&self) -> Option<MetaReplica> {
        self.meta.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The metadata group's voters: as this node's replica sees them, or as last heard.
    pub(crate) fn meta_members(&self) -> Vec<(NodeId, String)> {
        if let Some(m) = self.meta() {
            let voters = m.voters();
            if !voters.is_empty() {
                return voters;
            }
        }
        self.meta_members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adopts the metadata voters a metadata leader reported, and records them so a restart
    /// still finds the metadata group.
    pub(crate) async fn learn_meta_members(&self, members: Vec<(NodeId, String)>) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        {
            let mut cur = self.meta_members.write().unwrap_or_else(|p| p.into_inner());
            if *cur == members {
                return Ok(());
            }
            cur.clone_from(&members);
        }
        for (n, a) in &members {
            if *n != self.id {
                self.peers.set_addr(n.0, a);
            }
        }
        let identity = Identity {
            id: self.id,
            meta_members: members.clone(),
        };
        let mut b = WriteBatch::new();
        b.put(
            Space::Local,
            keys::local_identity(),
            postcard::to_allocvec(&identity).map_err(io_err)?,
        );
        self.engine.write(b)?;
        self.syncer.sync().await.map_err(io_err)?;
        tracing::info!(members = ?members.iter().map(|(n, _)| n.0).collect::<Vec<_>>(), "metadata members changed");
        Ok(())
    }

    /// Opens a pristine metadata replica `rid` (a move of a metadata member to this node);
    /// it catches up from a snapshot the metadata leader sends.
    pub(crate) async fn open_meta_replica(&self, rid: ReplicaId) -> Result<()> {
        let _guard = self.lifecycle.lock().await;
        if let Some(m) = self.meta() {
            if m.id == rid {
                return Ok(());
            }
            return Err(Error::Conflict(format!(
                "node {} still hosts metadata replica {}, not {rid}; it is destroyed once it is no longer a member",
                self.id, m.id
            )));
        }
        if meta_seat(&self.engine)? != Some(Some(rid)) {
            // Whatever an earlier replica here left (a destroy cut short) must not leak
            // into the new one.
            self.wipe_meta_state().await?;
        }
        let mut b = WriteBatch::new();
        write_meta_seat(&mut b, Some(rid))?;
        self.engine.write(b)?;
        self.syncer.sync().await.map_err(io_err)?;
        let m = start_meta_raft(
            &self.engine,
            &self.syncer,
            &self.peers,
            rid,
            self.snapshot_logs,
        )
        .await?;
        *self.meta.write().unwrap_or_else(|p| p.into_inner()) = Some(m);
        tracing::info!(replica = %rid, "opened a metadata replica");
        Ok(())
    }

    /// Stops this node's metadata replica and deletes its log and state: the metadata
    /// says it is no longer a member.
    pub(crate) async fn destroy_meta(&self) -> Result<()> {
        let _guard = self.lifecycle.lock().await;
        let Some(m) = self.meta.write().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        if let Err(e) = m.raft.shutdown().await {
            tracing::warn!("metadata replica shutdown: {e}");
        }
        // The record goes first: a crash before the deletes below must not reopen it.
        let mut b = WriteBatch::new();
        write_meta_seat(&mut b, None)?;
        self.engine.write(b)?;
        self.syncer.sync().await.map_err(io_err)?;
        self.wipe_meta_state().await?;
        *self.liveness.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
        tracing::info!(replica = %m.id, "destroyed the metadata replica: no longer a member");
        Ok(())
    }

    async fn wipe_meta_state(&self) -> Result<()> {
        LogStore::new(META_GROUP, self.engine.clone(), self.syncer.clone())
            .destroy()
            .map_err(io_err)?;
        GroupStateMachine::destroy_state(&self.engine, META_GROUP).map_err(io_err)?;
        self.syncer.sync().await.map_err(io_err)?;
        Ok(())
    }

    /// Replicas recorded in the engine by an earlier run.
    pub(crate) fn recorded_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        let (s, e) = keys::local_replicas_range();
        let rows = self
            .engine
            .scan(Space::Local, &s, e.as_deref(), usize::MAX)?;
        rows.into_iter()
            .map(|(k, v)| {
                postcard::from_bytes(&v).map_err(|err| {
                    Error::Internal(format!("corrupt replica record {k:02x?}: {err}"))
                })
            })
            .collect()
    }

    /// Opens the replica of `desc` if this node does not host it yet. With `bootstrap` (only
    /// CreateTable's first open, and reconcile's open of a never-changed partition on its
    /// preferred leader), a pristine replica forms the group with `desc.replicas`; any other
    /// replica waits to be reached by its group's leader.
    pub(crate) async fn open_replica(
        &self,
        desc: &PartitionDesc,
        members: &[NodeDesc],
        bootstrap: bool,
        id: ReplicaId,
    ) -> Result<Replica> {
        let hosted = |r: Replica| {
            if r.id == id {
                Ok(r)
            } else {
                Err(Error::Conflict(format!(
                    "this node still hosts replica {} of {}, not {id}; it is destroyed once the metadata records its removal",
                    r.id, desc.id
                )))
            }
        };
        if let Some(r) = self.replica(desc.id) {
            return hosted(r);
        }
        let _guard = self.lifecycle.lock().await;
        if let Some(r) = self.replica(desc.id) {
            return hosted(r);
        }
        // Replicas on one node never overlap: destroying one must never touch another's
        // keys. A stale replica still covering this range goes first (reconcile).
        // Looked at in place: creating a table opens each of its replicas in turn, and a
        // copy of every hosted descriptor per open costs the square of their number.
        let overlapping = {
            let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
            replicas.values().map(|r| r.view.shared_desc()).find(|h| {
                h.table_id == desc.table_id && h.id != desc.id && h.range.overlaps(&desc.range)
            })
        };
        if let Some(h) = overlapping {
            return Err(Error::Conflict(format!(
                "this node hosts {} {} which overlaps {} {}; retry once it is split or destroyed",
                h.id, h.range, desc.id, desc.range
            )));
        }
        // Nor one whose keys a destroy still deletes.
        let destroying = {
            let destroying = self.destroying.lock().unwrap_or_else(|p| p.into_inner());
            destroying
                .values()
                .find(|d| {
                    d.id == desc.id
                        || (d.table_id == desc.table_id && d.range.overlaps(&desc.range))
                })
                .cloned()
        };
        if let Some(d) = destroying {
            return Err(Error::Conflict(format!(
                "this node is still deleting its earlier replica of {} {}; {} {} opens once that is done",
                d.id, d.range, desc.id, desc.range
            )));
        }
        for m in members {
            self.peers.set_addr(m.id.0, &m.addr);
        }
        let record = ReplicaRecord {
            desc: desc.clone(),
            replica: id,
        };
        let record = postcard::to_allocvec(&record).map_err(io_err)?;
        let mut b = WriteBatch::new();
        b.put(Space::Local, keys::local_replica(desc.id), record);
        let pristine = group_is_pristine(&self.engine, desc.id).map_err(io_err)?;
        // Only CreateTable forms a group, by seeding each initial replica with the same
        // starting state; every other replica waits to be reached by its leader.
        let seeded = bootstrap && desc.epoch == cairn_types::Epoch::INITIAL && pristine;
        if seeded {
            let voters: BTreeSet<u64> = desc.replica_ids.values().map(|r| r.0).collect();
            let nodes: BTreeMap<u64, Member> = desc
                .replica_ids
                .iter()
                .map(|(n, r)| {
                    let addr = members
                        .iter()
                        .find(|m| m.id == *n)
                        .map(|m| m.addr.clone())
                        .or_else(|| self.peers.addr(n.0))
                        .unwrap_or_default();
                    (r.0, Member { node: n.0, addr })
                })
                .collect();
            let membership = typ::Membership::new(vec![voters], nodes)
                .map_err(|e| Error::Internal(format!("{}: {e}", desc.id)))?;
            seed_group(&mut b, desc, membership).map_err(io_err)?;
        }
        self.engine.write(b)?;
        self.syncer.sync().await.map_err(io_err)?;

        let (sm, view) =
            GroupStateMachine::partition(self.engine.clone(), desc.clone()).map_err(io_err)?;
        let sm = sm
            .on_split(self.splits.clone(), id)
            .count_applied(self.peers.metrics().applied_entries.clone())
            .work_on(self.syncer.clone());
        // With 0 entries, small entries would never reach the byte bound: at least one.
        let log = LogStore::new(desc.id, self.engine.clone(), self.syncer.clone()).with_bounds(
            self.snapshot_logs.max(1),
            self.snapshot_log_bytes,
            self.log_full.clone(),
        );
        let net = GroupNetwork {
            peers: self.peers.clone(),
            group: desc.id.0,
            commit_hold: self.commit_hold,
        };
        let raft = typ::Raft::new(id.0, data_group_config(self.quiesce), net, log.clone(), sm)
            .await
            .map_err(io_err)?;
        if seeded && desc.replicas.first() == Some(&self.id) {
            // The preferred leader campaigns at once, so leaders spread as placement chose.
            let raft = raft.clone();
            tokio::spawn(async move { campaign(&raft).await });
        }
        let opened_ms = self.peer_health.now_ms();
        let writes = Arc::new(crate::writes::WriteBatcher::new(
            raft.clone(),
            desc.id,
            self.metrics.proposals(),
        ));
        let replica = Replica {
            id,
            raft,
            view,
            log,
            stats: Default::default(),
            clock: Default::default(),
            heard_ms: Arc::new(opened_ms.into()),
            opened_ms,
            recovered: !pristine,
            reads: Arc::new(crate::reads::ReadBatcher::new(self.metrics.read_rounds())),
            writes,
        };
        self.replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(desc.id, replica.clone());
        tracing::info!(partition = %desc.id, range = %desc.range, "opened replica");
        Ok(replica)
    }

    /// Reopens the replicas recorded in the engine (after a restart).
    pub(crate) async fn reopen_recorded(&self) -> Result<()> {
        for r in self.recorded_replicas()? {
            if let Err(e) = self.open_replica(&r.desc, &[], false, r.replica).await {
                tracing::error!(partition = %r.desc.id, "cannot reopen replica: {e}");
            }
        }
        Ok(())
    }

    /// Stops the replica of `partition` and deletes its log, state and data.
    ///
    /// The deletes (one per key of the partition: seconds for a large one) run off the
    /// async workers, so the node's other groups keep serving meanwhile; until they are
    /// done, [`Core::open_replica`] refuses the partition and ranges overlapping it.
    pub(crate) async fn destroy_replica(self: &Arc<Self>, partition: PartitionId) -> Result<()> {
        let (r, counted) = {
            let _guard = self.lifecycle.lock().await;
            let mut replicas = self.replicas.write().unwrap_or_else(|p| p.into_inner());
            let Some(r) = replicas.remove(&partition) else {
                return Ok(());
            };
            // Under the lock, so that no reading of the counter misses these.
            let counted = r.view.duplicates();
            self.retired_duplicates
                .fetch_add(counted, std::sync::atomic::Ordering::Relaxed);
            // With the removal, under the lifecycle lock: an open sees one or the other.
            self.destroying
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(partition, r.view.shared_desc());
            (r, counted)
        };
        // A task of its own: once started, the deletes finish and the partition is unmarked
        // even should the caller stop waiting.
        let core = self.clone();
        tokio::spawn(async move {
            let _unmark = Unmark(&core, partition);
            core.delete_replica(partition, r, counted).await
        })
        .await
        .map_err(|e| Error::Internal(format!("destroying {partition}: {e}")))?
    }

    /// The rest of [`Core::destroy_replica`], once `r` is out of the hosted replicas. An
    /// error leaves the replica's record, so the next start reopens it and reconcile
    /// destroys it again.
    async fn delete_replica(&self, partition: PartitionId, r: Replica, counted: u64) -> Result<()> {
        if let Err(e) = r.raft.shutdown().await {
            tracing::warn!("{partition}: shutdown: {e}");
        }
        // Any applied between its removal and the shutdown.
        self.retired_duplicates.fetch_add(
            r.view.duplicates().saturating_sub(counted),
            std::sync::atomic::Ordering::Relaxed,
        );
        let desc = r.view.desc();
        let (engine, log, view) = (self.engine.clone(), r.log.clone(), r.view.clone());
        let n = self
            .syncer
            .blocking(move || {
                // After a snapshot install the group may still be running (a shutdown does
                // not wait for it), and before any that would start.
                let _destroying = view.destroying();
                Ok(log.destroy()? + GroupStateMachine::destroy(&engine, &desc)?)
            })
            .await
            .map_err(io_err)?;
        // The record goes last: a crash before this reopens the replica, and reconcile
        // destroys it again.
        let mut b = WriteBatch::new();
        b.delete(Space::Local, keys::local_replica(partition));
        self.engine.write(b)?;
        self.syncer.sync().await.map_err(io_err)?;
        tracing::info!(%partition, keys = n, "destroyed replica");
        Ok(())
    }

    /// The first hosted group whose Raft stopped on a storage error or a panic, described.
    /// A group stopped on purpose (a replica destroyed, the node shutting down) is fine.
    pub(crate) fn failed_group(&self) -> Option<String> {
        let failed = |group: PartitionId, raft: &typ::Raft| {
            // Borrowed, not cloned: this can run every second over every hosted group.
            let rx = raft.metrics();
            let m = rx.borrow_watched();
            match &m.running_state {
                Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
                Err(e) => Some(failure(group, &e.to_string())),
            }
        };
        if let Some(m) = self.meta()
            && let Some(why) = failed(META_GROUP, &m.raft)
        {
            return Some(why);
        }
        // The group supervisor's last pass looked at every partition group.
        if let Some(w) = self
            .walked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|w| w.fresh())
        {
            return w.failed.clone();
        }
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        replicas.iter().find_map(|(id, r)| failed(*id, &r.raft))
    }

    /// Every replica on this node, as they are now (a copy: the map's lock is not held).
    pub(crate) fn all_replicas(&self) -> Vec<Replica> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn replica(&self, partition: PartitionId) -> Option<Replica> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .cloned()
    }

    /// Opens the right half of a split this node applied. If this node leads the left half,
    /// the right half campaigns at once rather than after an election timeout, retrying
    /// while the other replicas have not applied the split yet.
    pub(crate) async fn open_split(&self, left: PartitionId, right: PartitionDesc) {
        let Some(id) = right.replica_on(self.id) else {
            return;
        };
        let r = match self.open_replica(&right, &[], false, id).await {
            Ok(r) => r,
            Err(e) => {
                // The seed is recorded; the next start or reconcile opens it.
                tracing::error!(partition = %right.id, "cannot open the right half of a split: {e}");
                return;
            }
        };
        let Some(l) = self.replica(left) else { return };
        if l.raft.metrics().borrow_watched().state != ServerState::Leader {
            return;
        }
        // Followers learn that the split committed with the next append; send it now.
        let _ = l.raft.trigger().heartbeat().await;
        campaign(&r.raft).await;
    }

    /// Descriptors of every hosted replica, as applied here, with their replica ids.
    pub(crate) fn hosted_descs(&self) -> Vec<(PartitionDesc, ReplicaId)> {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        replicas.values().map(|r| (r.view.desc(), r.id)).collect()
    }

    /// Digest of what [`Core::hosted_descs`] would answer, without copying a descriptor.
    pub(crate) fn hosted_digest(&self) -> u64 {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        cairn_router::hosted_digest(replicas.values().map(|r| (r.view.shared_desc(), r.id)))
    }

    /// Leader and term of every hosted replica.
    pub(crate) fn replica_statuses(&self) -> Vec<PartitionStatus> {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        replicas
            .iter()
            .map(|(id, r)| {
                let rx = r.raft.metrics();
                let m = rx.borrow_watched();
                PartitionStatus {
                    partition: *id,
                    leader: leader_node(&m),
                    term: m.current_term,
                }
            })
            .collect()
    }

    /// Retried writes this node's replicas recognised and did not apply again, since the
    /// process started: those of the hosted replicas and of the ones destroyed here, so that
    /// the counter never goes back when a replica moves away.
    pub(crate) fn duplicate_writes(&self) -> u64 {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        let hosted: u64 = replicas.values().map(|r| r.view.duplicates()).sum();
        hosted
            + self
                .retired_duplicates
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries held in the Raft logs of the partition replicas here: appended and not yet
    /// purged behind a snapshot.
    pub(crate) fn raft_log_entries(&self) -> u64 {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        replicas
            .values()
            .map(|r| {
                let rx = r.raft.metrics();
                let m = rx.borrow_watched();
                let first = m.purged.as_ref().map_or(0, |p| p.index + 1);
                m.last_log_index
                    .map_or(0, |last| (last + 1).saturating_sub(first))
            })
            .sum()
    }

    /// Partitions whose replica here is the leader right now.
    pub(crate) fn led_partitions(&self) -> Vec<PartitionId> {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        replicas
            .iter()
            .filter(|(_, r)| r.raft.metrics().borrow_watched().state == ServerState::Leader)
            .map(|(p, _)| *p)
            .collect()
    }

    async fn write(
        &self,
        replica: &Replica,
        partition: PartitionId,
        epoch: cairn_types::Epoch,
        op: KvOp,
        rid: Option<cairn_types::RequestId>,
    ) -> Result<PartitionReply> {
        // Deletes and drops pass: they are how space is freed (as etcd allows them under
        // its NOSPACE alarm); their entries are small beside the reserve.
        if matches!(op, KvOp::Put { .. }) {
            self.disk.check_writable(self.id.0)?;
        }
        let cmd = KvCommand {
            request_id: rid,
            epoch,
            proposed_at_ms: replica.clock.now_ms(replica.view.applied_time_ms()),
            op,
        };
        self.renew_lease(&replica.raft).await;
        if matches!(cmd.op, KvOp::Put { .. } | KvOp::Delete { .. }) {
            return replica
                .writes
                .write(cmd)
                .await
                .map(|()| PartitionReply::Done);
        }
        // A drop (the only other op here) is rare: boxed, so the future of every write,
        // which holds this one, does not carry a proposal's few KiB.
        let written = Box::pin(replica.raft.client_write(Command::Kv(cmd))).await;
        self.metrics.proposed(written.is_ok());
        match written {
            Ok(resp) => match resp.data {
                Reply::Kv(Ok(())) => Ok(PartitionReply::Done),
                Reply::Kv(Err(e)) => Err(e),
                other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
            },
            Err(e) => Err(from_raft(partition, e)),
        }
    }

    /// Waits until `replica` leads and has applied everything committed before the call.
    pub(crate) async fn read_barrier(
        &self,
        replica: &Replica,
        partition: PartitionId,
    ) -> Result<()> {
        let raft = replica.raft.clone();
        replica
            .reads
            .barrier(move || {
                let raft = raft.clone();
                async move {
                    raft.ensure_linearizable(ReadPolicy::ReadIndex)
                        .await
                        .map(|_| ())
                        .map_err(|e| from_raft(partition, e))
                }
            })
            .await
    }

    /// Renews a quiescent leader's lease before a proposal (see
    /// [`crate::supervisor::ensure_lease`]); without `--quiesce`, leaders keep beating.
    pub(crate) async fn renew_lease(&self, raft: &typ::Raft) {
        if self.quiesce {
            crate::supervisor::ensure_lease(raft).await;
        }
    }

    /// Proposes a split of `replica` at `key` into a new partition `right`.
    async fn split(
        &self,
        replica: &Replica,
        epoch: cairn_types::Epoch,
        table: cairn_types::TableId,
        key: Vec<u8>,
        right: PartitionId,
    ) -> Result<PartitionReply> {
        let desc = replica.view.check(epoch, table, None)?;
        self.disk.check_writable(self.id.0)?;
        if desc.range.split_at(&key).is_none() {
            return Err(Error::Conflict(format!(
                "the split key must lie strictly inside {} {}: after its start and before its end",
                desc.id, desc.range
            )));
        }
        let membership = replica
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone();
        split_allowed(&membership)?;
        let cmd = KvCommand {
            request_id: None,
            epoch,
            proposed_at_ms: replica.clock.now_ms(replica.view.applied_time_ms()),
            op: KvOp::Split { key, right },
        };
        self.renew_lease(&replica.raft).await;
        // A drop (the only other op here) is rare: boxed, so the future of every write,
        // which holds this one, does not carry a proposal's few KiB.
        let written = Box::pin(replica.raft.client_write(Command::Kv(cmd))).await;
        self.metrics.proposed(written.is_ok());
        match written {
            Ok(resp) => match resp.data {
                Reply::Split(Ok((l, r))) => {
                    tracing::info!(left = %l.id, right = %r.id, at = ?String::from_utf8_lossy(&r.range.start), "split partition");
                    Ok(PartitionReply::Split(l, r))
                }
                Reply::Split(Err(e)) => Err(e),
                other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
            },
            Err(e) => Err(from_raft(desc.id, e)),
        }
    }

    /// Hands leadership of `replica` to `to` and waits until `to` leads.
    pub(crate) async fn transfer_leader(
        &self,
        replica: &Replica,
        to: NodeId,
    ) -> Result<PartitionReply> {
        self.transfer_leader_in(&replica.group(), to).await?;
        Ok(PartitionReply::Leader(Some(to)))
    }

    /// Hands leadership of group `g` to its voter on node `to` and waits until it leads.
    pub(crate) async fn transfer_leader_in(&self, g: &GroupRef<'_>, to: NodeId) -> Result<()> {
        let m = g.raft.metrics().borrow_watched().clone();
        if leader_node(&m) == Some(to) {
            return Ok(());
        }
        if m.state != ServerState::Leader {
            return Err(Error::NotLeader {
                partition: g.group,
                leader: leader_node(&m),
            });
        }
        let membership = m.membership_config.membership();
        let target = member_on(membership, to).filter(|r| membership.voter_ids().any(|v| v == *r));
        let Some(target) = target else {
            let voters: Vec<u64> = membership
                .voter_ids()
                .filter_map(|r| membership.get_node(&r).map(|n| n.node))
                .collect();
            return Err(Error::Conflict(format!(
                "{to} holds no voting replica of {}; its voters are on nodes {voters:?}",
                g.group
            )));
        };
        if g.group != META_GROUP {
            self.transfers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    g.group,
                    Transfer {
                        started_ms: self.peer_health.now_ms(),
                        term: m.current_term,
                        target,
                    },
                );
        }
        g.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| Error::Unavailable(format!("{}: {e}", g.group)))?;
        g.raft
            .wait(Some(TRANSFER_TIMEOUT))
            .metrics(|m| m.current_leader == Some(target), "leadership transferred")
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "{} did not hand leadership to {to} within {TRANSFER_TIMEOUT:?} ({e}); is {to} live and caught up?",
                    g.group
                ))
            })?;
        tracing::info!(partition = %g.group, %to, "transferred leadership");
        Ok(())
    }

    /// Serves a request for a partition replica hosted here.
    pub(crate) async fn handle_partition(&self, req: PartitionRequest) -> Result<PartitionReply> {
        // Opening a replica is rare and its future large: boxed, so that the future of
        // every read and write (which holds this one) stays small.
        if let PartitionOp::OpenMeta { replica } = &req.op {
            Box::pin(self.open_meta_replica(*replica)).await?;
            return Ok(PartitionReply::Done);
        }
        if let PartitionOp::Open {
            desc,
            members,
            bootstrap,
            replica,
        } = &req.op
        {
            Box::pin(self.open_replica(desc, members, *bootstrap, *replica)).await?;
            return Ok(PartitionReply::Done);
        }
        // A backup page of a view held here is read whatever became of the replica since.
        if let PartitionOp::Export {
            view,
            from,
            max_bytes,
        } = &req.op
            && *view != 0
        {
            return self.continue_export(req.partition, req.table, *view, from, *max_bytes);
        }
        let PartitionRequest {
            partition,
            epoch,
            table,
            op,
        } = req;
        let replica = self
            .replica(partition)
            .ok_or(Error::PartitionNotFound(partition))?;
        match op {
            PartitionOp::Put {
                key,
                value,
                request_id,
            } => {
                self.limits.check_key(&key)?;
                self.limits.check_value(&value)?;
                replica.view.check(epoch, table, Some(&key))?;
                let written = (key.len() + value.len()) as u64;
                self.note_load(&replica, KeySample::Key(key.clone()), true, written);
                let op = KvOp::Put { table, key, value };
                self.write(&replica, partition, epoch, op, request_id).await
            }
            PartitionOp::Delete { key, request_id } => {
                self.limits.check_key(&key)?;
                replica.view.check(epoch, table, Some(&key))?;
                self.note_load(
                    &replica,
                    KeySample::Key(key.clone()),
                    true,
                    key.len() as u64,
                );
                let op = KvOp::Delete { table, key };
                self.write(&replica, partition, epoch, op, request_id).await
            }
            PartitionOp::Drop => {
                if replica.view.desc().table_id != table {
                    return Err(Error::PartitionNotFound(partition));
                }
                self.write(&replica, partition, epoch, KvOp::Drop, None)
                    .await
            }
            PartitionOp::Get { key, stale } => {
                self.limits.check_key(&key)?;
                if !stale {
                    self.read_barrier(&replica, partition).await?;
                }
                // Not from rows a snapshot install is replacing (a follower's stale read).
                let installs = replica.view.read_begin()?;
                replica.view.check(epoch, table, Some(&key))?;
                self.note_load(&replica, KeySample::Key(key.clone()), false, 0);
                let value = replica.view.get(&self.engine, &key)?;
                replica.view.read_end(installs)?;
                Ok(PartitionReply::Value(value))
            }
            PartitionOp::Scan {
                start,
                end,
                limit,
                max_bytes,
                values,
                stale,
            } => {
                if !stale {
                    self.read_barrier(&replica, partition).await?;
                }
                let installs = replica.view.read_begin()?;
                replica.view.check(epoch, table, None)?;
                let desc = replica.view.desc();
                if !desc.range.contains(&start) {
                    return Err(Error::KeyNotInRange(partition));
                }
                self.note_load(
                    &replica,
                    KeySample::Range(start.clone(), end.clone()),
                    false,
                    0,
                );
                let limit = cairn_storage::PageLimit {
                    rows: limit as usize,
                    bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                    values,
                };
                let page = replica
                    .view
                    .scan(&self.engine, &start, end.as_deref(), limit)?;
                replica.view.read_end(installs)?;
                Ok(PartitionReply::Rows {
                    rows: page.rows,
                    cut: page.cut,
                })
            }
            PartitionOp::Leader => Ok(PartitionReply::Leader(leader_node(
                &replica.raft.metrics().borrow_watched(),
            ))),
            PartitionOp::Open { .. } | PartitionOp::OpenMeta { .. } => Ok(PartitionReply::Done),
            PartitionOp::Split { key, right } => {
                self.limits.check_key(&key)?;
                Box::pin(self.split(&replica, epoch, table, key, right)).await
            }
            PartitionOp::TransferLeader { to } => {
                Box::pin(self.transfer_leader(&replica, to)).await
            }
            PartitionOp::AddLearner { replica: rid, node } => {
                Box::pin(self.add_learner(&replica, rid, node)).await
            }
            PartitionOp::ReplaceVoter { remove, add } => {
                Box::pin(self.replace_voter(&replica, remove, add)).await
            }
            PartitionOp::RemoveLearner { replica: rid } => {
                Box::pin(self.remove_learner(&replica, rid)).await
            }
            // Pages of a view held here were served above, before the replica lookup.
            PartitionOp::Export {
                from, max_bytes, ..
            } => {
                Box::pin(self.open_export(&replica, partition, epoch, table, from, max_bytes)).await
            }
            PartitionOp::Digest => self.replica_digest(partition).await,
        }
    }

    /// Counts a request for the controller's load measurements (only when it runs).
    fn note_load(&self, replica: &Replica, sample: KeySample, write: bool, written: u64) {
        if self.controller.enabled {
            replica
                .stats
                .record(sample, write, written, self.controller.split_window);
        }
    }

    /// Counts engine keys this node holds for `table` (its data) and for `partitions`
    /// (their raft logs and replica state), and how many of those replicas are open.
    pub(crate) fn engine_stats(
        &self,
        table: cairn_types::TableId,
        partitions: &[PartitionId],
    ) -> Result<(u64, u64, u64, u32)> {
        let (s, e) = keys::data_range(table, b"", None);
        let data = cairn_storage::count_range(&*self.engine, Space::Data, &s, e.as_deref())?;
        let (mut raft, mut state, mut open) = (0, 0, 0);
        for g in partitions {
            let (s, e) = keys::raft_group_range(*g);
            raft += cairn_storage::count_range(&*self.engine, Space::Raft, &s, e.as_deref())?;
            let (s, e) = keys::group_state_range(*g);
            state += cairn_storage::count_range(&*self.engine, Space::Data, &s, e.as_deref())?;
            state += u64::from(
                self.engine
                    .get(Space::Local, &keys::local_replica(*g))?
                    .is_some(),
            );
            open += u32::from(self.replica(*g).is_some());
        }
        Ok((data, raft, state, open))
    }
}
