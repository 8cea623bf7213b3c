//! The state machine of a group: a partition's key-value data with its write sessions and
//! its descriptor, or (for group 0) the cluster metadata.
//!
//! A partition's descriptor (range, epoch, table, replicas) is state of its own group: it
//! is applied from the log (splits and membership changes), persisted with the applied log
//! id and carried in snapshots, so every replica agrees on it at every log position. The
//! descriptor a replica was opened with only seeds a replica that has applied nothing.
//!
//! A split is an entry in the partition's log. Applying it shrinks the left descriptor and,
//! in the same write batch, seeds the right half's group on this node: its descriptor, its
//! membership (the left's), a copy of the write sessions, and a last-applied log id of
//! [`split_seed_log_id`], with an empty log. openraft reads that as a log purged up to the
//! seed, so a replica that missed the split can only catch up by snapshot.
//!
//! State is persistent: each batch of applied entries is written to the engine in one atomic
//! batch together with the new last-applied log id, so after a crash the state and the
//! applied id agree and openraft re-applies the rest from the log. Writes here are not
//! fsynced on their own; the journal orders them before any later log sync.

use crate::log_store::{decode, encode, read};
use crate::snapshot::{
    Installing, SnapshotData, ViewSnapshot, copy_staged, stage_view, staged_header,
};
use crate::{Command, KvCommand, KvOp, Reply, TypeConfig, typ};
use cairn_meta::MetaState;
use cairn_storage::{SharedEngine, Space, WriteBatch, keys};
use cairn_types::{ClientId, Epoch, Error, NodeId, PartitionDesc, PartitionId, ReplicaId, TableId};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, RwLock};

/// A write session is forgotten after this long without writes, in group time (monotonic
/// time carried in the entries, see [`KvCommand::proposed_at_ms`]; a wall clock that jumps
/// cannot expire a session early). A client retry arriving later than this may apply twice;
/// request deadlines are far shorter.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;

/// The most write sessions a partition keeps. Each `Idempotency-Key` is a session, so a high
/// rate of distinct keys would otherwise grow a partition's sessions (memory, the snapshot
/// header, a split's batch) without bound within the TTL. Past this, a new session first
/// makes the partition forget the longest-idle tenth: retries of those may apply again, as
/// after the TTL. At the default load-split threshold (2,500 writes a second) a partition
/// reaches it only when nearly every write carries a new key for about seven minutes.
pub const MAX_SESSIONS: usize = 1_000_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Session {
    /// Every seq below this has ended at the client (answered, or abandoned by a caller
    /// that went away); a copy arriving now is stale and is not applied.
    first_incomplete: u64,
    /// Applied seqs at or above `first_incomplete`.
    applied: BTreeSet<u64>,
    last_write_ms: u64,
}

impl Session {
    /// Whether the session is still kept at `now_ms` of group time: written within the TTL.
    fn live_at(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_write_ms) < SESSION_TTL_MS
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<typ::LogId>,
    membership: typ::StoredMembership,
    dropped: bool,
    /// The partition's descriptor as of `last_applied` (`None` for the metadata group, and
    /// for a partition replica that has applied nothing yet).
    desc: Option<PartitionDesc>,
    /// The right half made by the last split, reported with `EpochMismatch` so routers
    /// learn both halves at once.
    last_split: Option<PartitionDesc>,
}

/// The last-applied log id a split gives the right half's new group on every replica. It
/// is the same everywhere (a leader appends after it), and at term 0 so any leader of the
/// new group outranks it.
pub fn split_seed_log_id() -> typ::LogId {
    use openraft::vote::RaftLeaderId;
    typ::LogId::new(openraft::vote::leader_id_adv::LeaderId::new(0, 0), 0)
}

/// What the rest of the node may read of a partition replica: its descriptor and whether
/// its table was dropped, plus its data in the engine.
#[derive(Clone)]
pub struct PartitionView {
    /// Shared, so that a heartbeat can hold the descriptor without copying it.
    desc: Arc<RwLock<Arc<PartitionDesc>>>,
    last_split: Arc<RwLock<Option<PartitionDesc>>>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
    duplicates: Arc<std::sync::atomic::AtomicU64>,
    /// The group's time (see [`KvCommand::proposed_at_ms`]) as of the last applied write.
    time_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The rows' lock. Held while a snapshot install replaces the rows, while a destroy
    /// deletes them (and sets it), while an apply writes, while a new snapshot transfer
    /// clears the staging area and while a last chunk marks its transfer pending: none of
    /// them runs beside another, no install or apply writes after a destroy, and no transfer
    /// deletes the rows an install copies.
    destroyed: Arc<Mutex<bool>>,
    /// Counts snapshot installs' starts and ends (odd while one replaces the rows and the
    /// replica's state): a read that saw it change, or odd, is refused.
    installs: Arc<std::sync::atomic::AtomicU64>,
    /// Set from the check of a transfer's last chunk until its install returns: a newer
    /// transfer's first chunk may not clear the staging area meanwhile.
    pending: Arc<std::sync::atomic::AtomicBool>,
    /// Set as a destroy begins, before it waits for `destroyed`: applies stop writing.
    gone: Arc<std::sync::atomic::AtomicBool>,
}

impl PartitionView {
    fn new(desc: PartitionDesc, last_split: Option<PartitionDesc>) -> Self {
        Self {
            desc: Arc::new(RwLock::new(Arc::new(desc))),
            last_split: Arc::new(RwLock::new(last_split)),
            dropped: Default::default(),
            duplicates: Default::default(),
            time_ms: Default::default(),
            destroyed: Default::default(),
            installs: Default::default(),
            pending: Default::default(),
            gone: Default::default(),
        }
    }

    /// The rows' lock for an apply's write, or none once the replica is being destroyed.
    /// Waits without blocking the thread: a transfer's first chunk may hold it a moment.
    async fn rows_for_apply(&self) -> Option<std::sync::MutexGuard<'_, bool>> {
        loop {
            if self.gone.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            // Its own scope: no guard may be held across the wait below.
            {
                if let Some(held) = self.try_rows() {
                    return (!*held).then_some(held);
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// Marks a transfer checked complete as about to be installed (call it holding
    /// [`Self::try_rows`]): until the answer is dropped, no newer transfer clears the
    /// staging.
    pub(crate) fn mark_pending(&self) -> PendingInstall {
        self.pending
            .store(true, std::sync::atomic::Ordering::Release);
        PendingInstall(self.pending.clone())
    }

    /// Whether a transfer's last chunk was checked and its install has not returned.
    pub(crate) fn install_pending(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The install count a read starts from, or an error while an install runs.
    pub fn read_begin(&self) -> Result<u64, Error> {
        let n = self.installs.load(std::sync::atomic::Ordering::Acquire);
        if n % 2 == 1 {
            return Err(self.installing_error());
        }
        Ok(n)
    }

    /// Checks that no install started since [`Self::read_begin`] answered `n`: what was
    /// read is then all from one state.
    pub fn read_end(&self, n: u64) -> Result<(), Error> {
        if self.installs.load(std::sync::atomic::Ordering::Acquire) != n {
            return Err(self.installing_error());
        }
        Ok(())
    }

    fn installing_error(&self) -> Error {
        // Its rows are part old, part new; a stale read would see neither state.
        Error::Unavailable(format!(
            "{} is installing a snapshot on this node; retry, or read from the leader",
            self.shared_desc().id
        ))
    }

    /// The rows' lock if nothing holds it (no install, destroy, staging clean-up or apply
    /// under way), for a snapshot transfer's first and last chunks. Never blocks.
    pub(crate) fn try_rows(&self) -> Option<std::sync::MutexGuard<'_, bool>> {
        match self.destroyed.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Marks the replica destroyed, once a snapshot install in progress is done; hold the
    /// answer while deleting its rows. Blocks: call it off the async workers.
    pub fn destroying(&self) -> std::sync::MutexGuard<'_, bool> {
        self.gone.store(true, std::sync::atomic::Ordering::Release);
        let mut held = self.destroyed.lock().unwrap_or_else(|p| p.into_inner());
        *held = true;
        held
    }

    /// The group's time as of the last applied write, in ms: a new leader's proposals
    /// start from here (never from its wall clock).
    pub fn applied_time_ms(&self) -> u64 {
        self.time_ms.load(std::sync::atomic::Ordering::Acquire)
    }

    fn note_time(&self, ms: u64) {
        self.time_ms
            .fetch_max(ms, std::sync::atomic::Ordering::AcqRel);
    }

    /// Recovers the group time from the sessions (their newest write) after an open or
    /// a snapshot install.
    fn recover_time(&self, sessions: &HashMap<ClientId, Session>) {
        self.note_time(
            sessions
                .values()
                .map(|s| s.last_write_ms)
                .max()
                .unwrap_or(0),
        );
    }

    fn set_desc(&self, desc: PartitionDesc) {
        *self.desc.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(desc);
    }

    /// Writes this replica recognised as retries of applied writes and did not apply
    /// again, since it was opened.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The descriptor as of the last applied entry.
    pub fn desc(&self) -> PartitionDesc {
        (**self.desc.read().unwrap_or_else(|p| p.into_inner())).clone()
    }

    /// The same descriptor, shared rather than copied.
    pub fn shared_desc(&self) -> Arc<PartitionDesc> {
        self.desc.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the table was dropped (the replica refuses everything).
    pub fn dropped(&self) -> bool {
        self.dropped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The descriptors a router should learn when its epoch is stale: this one and the
    /// right half of the last split.
    pub fn current_descs(&self) -> Vec<PartitionDesc> {
        let mut out = vec![self.desc()];
        out.extend(
            self.last_split
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        );
        out
    }

    /// Checks that a request of `table` routed with `epoch` for `key` belongs here.
    pub fn check(
        &self,
        epoch: Epoch,
        table: TableId,
        key: Option<&[u8]>,
    ) -> Result<Arc<PartitionDesc>, Error> {
        // Shared, not copied: every applied write and every request checks its partition.
        let desc = self.shared_desc();
        if self.dropped() || table != desc.table_id {
            // A partition id belongs to one table forever; a request naming another table
            // was routed with a view this replica has nothing to do with.
            return Err(Error::PartitionNotFound(desc.id));
        }
        if epoch.version != desc.epoch.version {
            return Err(Error::EpochMismatch {
                partition: desc.id,
                requested: epoch,
                current: desc.epoch,
                descs: self.current_descs(),
            });
        }
        if let Some(k) = key
            && !desc.range.contains(k)
        {
            return Err(Error::KeyNotInRange(desc.id));
        }
        Ok(desc)
    }
}

enum Kind {
    Partition {
        view: PartitionView,
        sessions: HashMap<ClientId, Session>,
        last_expiry_ms: u64,
    },
    Meta {
        state: Arc<RwLock<Arc<MetaState>>>,
    },
}

/// What a snapshot carries besides the rows of the partition's range.
#[derive(Serialize, Deserialize)]
enum SnapshotHeader {
    Partition {
        applied: Applied,
        sessions: Vec<(ClientId, Session)>,
    },
    Meta {
        applied: Applied,
        // Boxed: the metadata is much larger than a partition's header.
        state: Box<MetaState>,
    },
}

/// Receives `(left, right half)` for every split this replica applies, once the right
/// half's seed is written, so the node can open that replica.
pub type SplitSink = tokio::sync::mpsc::UnboundedSender<(PartitionId, PartitionDesc)>;

/// The state machine of one group.
pub struct GroupStateMachine {
    group: PartitionId,
    engine: SharedEngine,
    applied: Applied,
    kind: Kind,
    splits: Option<SplitSink>,
    /// This replica's member id; a split's right half gets the same on this node.
    me: ReplicaId,
    /// Counts applied entries for the node's metrics.
    applied_count: Option<prometheus_client::metrics::counter::Counter>,
    /// Runs a snapshot install's copy off the async workers (none: on the caller's thread).
    work: Option<crate::Syncer>,
}

/// What a node records about each replica it hosts (under [`keys::local_replica`]), so it
/// reopens them after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// The descriptor it was opened with (the applied one rules once it has applied any).
    pub desc: PartitionDesc,
    /// Its member id in the group.
    pub replica: ReplicaId,
}

impl GroupStateMachine {
    fn with(group: PartitionId, engine: SharedEngine, applied: Applied, kind: Kind) -> Self {
        Self {
            group,
            engine,
            applied,
            kind,
            splits: None,
            me: ReplicaId::default(),
            applied_count: None,
            work: None,
        }
    }

    /// Copies installed snapshots through `syncer` ([`crate::Syncer::blocking`]): a
    /// partition's install rewrites every row, seconds that would hold up the node's other
    /// groups on an async worker.
    pub fn work_on(mut self, syncer: crate::Syncer) -> Self {
        self.work = Some(syncer);
        self
    }

    /// Runs `f` through `work` (see [`Self::work_on`]).
    async fn blocking<T: Send + 'static>(
        work: &Option<crate::Syncer>,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        match work {
            Some(s) => s.blocking(f).await,
            None => f(),
        }
    }

    /// Adds every applied entry to `counter` (the node's `cairn_raft_applied_entries_total`).
    pub fn count_applied(mut self, counter: prometheus_client::metrics::counter::Counter) -> Self {
        self.applied_count = Some(counter);
        self
    }

    /// Sends the right half of each applied split to `sink`; `me` is this replica's member
    /// id, which the right half's replica on this node keeps.
    pub fn on_split(mut self, sink: SplitSink, me: ReplicaId) -> Self {
        self.splits = Some(sink);
        self.me = me;
        self
    }

    /// Opens the state machine of a partition replica, recovering its applied state. `desc`
    /// seeds a replica that has applied nothing; after that the applied descriptor rules.
    pub fn partition(
        engine: SharedEngine,
        desc: PartitionDesc,
    ) -> io::Result<(Self, PartitionView)> {
        let group = desc.id;
        // A crash in the middle of a snapshot install: finish it from the staged copy.
        if let Some(m) = read::<Installing>(&*engine, Space::Data, &keys::group_installing(group))?
        {
            let rows = finish_partition_install(&engine, group, &m)?;
            tracing::info!(%group, rows, "finished a snapshot install interrupted by a crash");
        }
        let mut applied: Applied =
            read(&*engine, Space::Data, &keys::group_applied(group))?.unwrap_or_default();
        let desc = applied.desc.clone().unwrap_or(desc);
        applied.desc = Some(desc.clone());
        let view = PartitionView::new(desc, applied.last_split.clone());
        view.dropped
            .store(applied.dropped, std::sync::atomic::Ordering::Release);
        let sessions = load_sessions(&engine, group)?;
        view.recover_time(&sessions);
        let kind = Kind::Partition {
            view: view.clone(),
            sessions,
            last_expiry_ms: 0,
        };
        Ok((Self::with(group, engine, applied, kind), view))
    }

    /// Opens the state machine of the metadata group, recovering its state.
    pub fn meta(
        engine: SharedEngine,
        group: PartitionId,
    ) -> io::Result<(Self, Arc<RwLock<Arc<MetaState>>>)> {
        let applied: Applied =
            read(&*engine, Space::Data, &keys::group_applied(group))?.unwrap_or_default();
        let state: MetaState =
            read(&*engine, Space::Data, &keys::group_meta_state(group))?.unwrap_or_default();
        let state = Arc::new(RwLock::new(Arc::new(state)));
        let kind = Kind::Meta {
            state: state.clone(),
        };
        Ok((Self::with(group, engine, applied, kind), state))
    }

    /// Deletes the replica's state-machine bookkeeping, any snapshot staged for it, and the
    /// user data of its range.
    /// As many engine writes as the range has keys: run it off the async workers
    /// ([`crate::Syncer::blocking`]).
    pub fn destroy(engine: &SharedEngine, desc: &PartitionDesc) -> io::Result<u64> {
        let mut n = Self::destroy_state(engine, desc.id)?;
        crate::fault::crash_point("destroy-rows");
        crate::fault::hold_point("destroy-rows");
        let (s, e) = keys::data_range(desc.table_id, &desc.range.start, desc.range.end.as_deref());
        n += cairn_storage::delete_range(&**engine, Space::Data, &s, e.as_deref(), 1024)
            .map_err(io::Error::other)?;
        Ok(n)
    }

    /// Deletes a group's state-machine bookkeeping and any snapshot staged for it (for the
    /// metadata group, the whole replica besides its log).
    pub fn destroy_state(engine: &SharedEngine, group: PartitionId) -> io::Result<u64> {
        let (s, e) = keys::staging_group_range(group);
        cairn_storage::delete_range(&**engine, Space::Local, &s, e.as_deref(), 1024)
            .map_err(io::Error::other)?;
        let (s, e) = keys::group_state_range(group);
        cairn_storage::delete_range(&**engine, Space::Data, &s, e.as_deref(), 1024)
            .map_err(io::Error::other)
    }

    /// Applies a write into `batch`. A session it changes is only noted in `dirty`: the
    /// caller stores each changed session once per applied batch, since one client's many
    /// concurrent writes commonly land in the same batch.
    /// Sessions idle past the TTL are expired at most once a minute of group time; past
    /// `max_sessions`, a new session first makes the partition forget the idlest tenth.
    #[allow(clippy::too_many_arguments)]
    fn apply_kv(
        group: PartitionId,
        view: &PartitionView,
        sessions: &mut HashMap<ClientId, Session>,
        last_expiry_ms: &mut u64,
        max_sessions: usize,
        dirty: &mut HashSet<ClientId>,
        cmd: &KvCommand,
        batch: &mut WriteBatch,
    ) -> Result<(), Error> {
        view.note_time(cmd.proposed_at_ms);
        if cmd.proposed_at_ms.saturating_sub(*last_expiry_ms) > 60_000 {
            *last_expiry_ms = cmd.proposed_at_ms;
            Self::expire_sessions(group, sessions, cmd.proposed_at_ms, batch);
        }
        let (table, key) = match &cmd.op {
            KvOp::Put { table, key, .. } | KvOp::Delete { table, key } => (*table, key.as_slice()),
            KvOp::Drop => {
                view.dropped
                    .store(true, std::sync::atomic::Ordering::Release);
                return Ok(());
            }
            KvOp::Split { .. } => {
                return Err(Error::Internal("a split reached the write path".into()));
            }
        };
        view.check(cmd.epoch, table, Some(key))?;
        if let Some(rid) = cmd.request_id {
            let now = cmd.proposed_at_ms;
            // When a replica last swept is its own (it starts again at 0 when the replica
            // opens), so what it decides must not depend on it, or replicas would disagree
            // about a retry: a session past the TTL counts as gone, swept or not, and the
            // cap counts only sessions within it, which every replica holds alike.
            if sessions.len() >= max_sessions
                && !sessions.get(&rid.client).is_some_and(|s| s.live_at(now))
            {
                *last_expiry_ms = now;
                Self::expire_sessions(group, sessions, now, batch);
                if sessions.len() >= max_sessions {
                    Self::forget_idlest(group, sessions, max_sessions - max_sessions / 10, batch);
                }
            }
            let s = sessions.entry(rid.client).or_default();
            if !s.live_at(now) {
                *s = Session::default();
            }
            if rid.seq < s.first_incomplete || s.applied.contains(&rid.seq) {
                // A retry of a write that was applied (applying it again could overwrite
                // a newer value), or a late copy of one its client abandoned.
                view.duplicates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            s.applied.insert(rid.seq);
            s.first_incomplete = s.first_incomplete.max(rid.first_incomplete);
            // Only the seqs now below the floor go, from the front: `retain` walked the
            // whole set for every write, and a client with hundreds of writes in flight keeps
            // hundreds here (1.1% of all samples in a 256-client write profile).
            while s
                .applied
                .first()
                .is_some_and(|&seq| seq < s.first_incomplete)
            {
                s.applied.pop_first();
            }
            s.last_write_ms = s.last_write_ms.max(cmd.proposed_at_ms);
            dirty.insert(rid.client);
        }
        match &cmd.op {
            KvOp::Put { table, key, value } => {
                batch.put(Space::Data, keys::data(*table, key), value.clone())
            }
            KvOp::Delete { table, key } => batch.delete(Space::Data, keys::data(*table, key)),
            KvOp::Drop | KvOp::Split { .. } => {}
        }
        Ok(())
    }

    /// Applies a split at `key`: shrinks this replica's descriptor and seeds the right
    /// half's group in `batch`. Refused (changing nothing) when the epoch is stale, the key
    /// is not strictly inside the range, or a membership change is under way.
    #[allow(clippy::too_many_arguments)]
    fn apply_split(
        engine: &SharedEngine,
        me: ReplicaId,
        applied: &mut Applied,
        view: &PartitionView,
        sessions: &HashMap<ClientId, Session>,
        epoch: Epoch,
        key: &[u8],
        right: PartitionId,
        batch: &mut WriteBatch,
    ) -> io::Result<Result<(PartitionDesc, PartitionDesc, bool), Error>> {
        let desc = view.desc();
        if let Err(e) = view.check(epoch, desc.table_id, None) {
            return Ok(Err(e));
        }
        let membership = applied.membership.membership().clone();
        if let Err(e) = split_allowed(&membership) {
            return Ok(Err(e));
        }
        let Some((lr, rr)) = desc.range.split_at(key) else {
            return Ok(Err(Error::Conflict(format!(
                "split key is not strictly inside {} {}: a split needs a key after the partition's start and before its end",
                desc.id, desc.range
            ))));
        };
        let epoch = Epoch {
            version: desc.epoch.version + 1,
            conf_ver: desc.epoch.conf_ver,
        };
        let left = PartitionDesc {
            range: lr,
            epoch,
            ..desc.clone()
        };
        let right_desc = PartitionDesc {
            id: right,
            range: rr,
            epoch,
            ..desc
        };
        // A right-half replica that already exists here (it caught up by snapshot before
        // this replica applied the split) is further along than any seed: leave it. A
        // replica that was not a voter when the split was proposed (a learner catching up
        // through it) is no member of the right half and seeds nothing.
        let voter = membership.voter_ids().any(|v| v == me.0);
        let seed = voter
            && engine
                .get(Space::Local, &keys::local_replica(right))
                .map_err(io::Error::other)?
                .is_none();
        if seed {
            let record = ReplicaRecord {
                desc: right_desc.clone(),
                replica: me,
            };
            batch.put(Space::Local, keys::local_replica(right), encode(&record)?);
            seed_group(batch, &right_desc, membership)?;
            for (client, s) in sessions {
                batch.put(Space::Data, keys::group_session(right, *client), encode(s)?);
            }
        }
        view.set_desc(left.clone());
        *view.last_split.write().unwrap_or_else(|p| p.into_inner()) = Some(right_desc.clone());
        applied.desc = Some(left.clone());
        applied.last_split = Some(right_desc.clone());
        Ok(Ok((left, right_desc, seed)))
    }

    /// Keeps the descriptor's replicas and `conf_ver` in step with an applied membership.
    fn apply_membership(applied: &mut Applied, view: &PartitionView, m: &typ::Membership) {
        let mut desc = view.desc();
        // Member ids are replica ids; the node each lives on is in its member data.
        let members: Vec<(cairn_types::NodeId, cairn_types::ReplicaId)> = m
            .voter_ids()
            .filter_map(|r| {
                m.get_node(&r)
                    .map(|mb| (cairn_types::NodeId(mb.node), cairn_types::ReplicaId(r)))
            })
            .collect();
        let voters: Vec<cairn_types::NodeId> = members.iter().map(|(n, _)| *n).collect();
        // The group's first membership is the one the descriptor was created with.
        if applied.membership.log_id().is_some() && applied.membership.membership() != m {
            desc.epoch.conf_ver += 1;
        }
        // Keep the existing order (the first replica is the preferred leader), then add new
        // voters.
        let mut replicas: Vec<_> = desc
            .replicas
            .iter()
            .copied()
            .filter(|n| voters.contains(n))
            .collect();
        replicas.extend(
            voters
                .iter()
                .copied()
                .filter(|n| !desc.replicas.contains(n)),
        );
        desc.replicas = replicas;
        desc.replica_ids = members.into_iter().collect();
        applied.desc = Some(desc.clone());
        view.set_desc(desc);
    }

    fn expire_sessions(
        group: PartitionId,
        sessions: &mut HashMap<ClientId, Session>,
        now_ms: u64,
        batch: &mut WriteBatch,
    ) {
        sessions.retain(|client, s| {
            let keep = s.live_at(now_ms);
            if !keep {
                batch.delete(Space::Data, keys::group_session(group, *client));
            }
            keep
        });
    }

    /// Forgets the longest-idle sessions until `keep` remain. Ties of idle time go by client
    /// id, so every replica forgets the same ones.
    fn forget_idlest(
        group: PartitionId,
        sessions: &mut HashMap<ClientId, Session>,
        keep: usize,
        batch: &mut WriteBatch,
    ) {
        let excess = sessions.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let mut by_idle: Vec<(u64, ClientId)> = sessions
            .iter()
            .map(|(c, s)| (s.last_write_ms, *c))
            .collect();
        by_idle.select_nth_unstable(excess - 1);
        let newest = by_idle[..excess]
            .iter()
            .map(|(ms, _)| *ms)
            .max()
            .unwrap_or(0);
        for (_, client) in &by_idle[..excess] {
            sessions.remove(client);
            batch.delete(Space::Data, keys::group_session(group, *client));
        }
        tracing::info!(
            "{group} reached its most write sessions and forgot the {excess} idle longest \
             (idle since {newest} ms of group time or earlier): a retry of their writes may apply again"
        );
    }

    /// A snapshot of the current state: its header and a read view of the engine. Nothing
    /// is copied, so taking it does not hold up applying.
    fn snapshot_view(&self) -> io::Result<typ::Snapshot> {
        let applied = self.applied.clone();
        let view = self.engine.read_view().map_err(io::Error::other)?;
        let (header, data) = match &self.kind {
            Kind::Partition {
                view: pv, sessions, ..
            } => {
                let desc = pv.desc();
                let sessions = sessions.iter().map(|(c, s)| (*c, s.clone())).collect();
                let h = encode(&SnapshotHeader::Partition { applied, sessions })?;
                (h, Some(desc))
            }
            Kind::Meta { state } => {
                let state = Box::new(MetaState::clone(
                    &state.read().unwrap_or_else(|p| p.into_inner()),
                ));
                (encode(&SnapshotHeader::Meta { applied, state })?, None)
            }
        };
        let snap = ViewSnapshot::new(header, view, data.as_ref().map(|d| (d.table_id, &d.range)));
        Ok(typ::Snapshot {
            meta: typ::SnapshotMeta {
                last_log_id: self.applied.last_applied,
                last_membership: self.applied.membership.clone(),
            },
            snapshot: SnapshotData::View(Arc::new(snap)),
        })
    }
}

/// Finishes a partition install whose marker is written (see [`crate::snapshot`]): the
/// rows, then the staged sessions and the marker's applied state in one batch.
fn finish_partition_install(
    engine: &SharedEngine,
    group: PartitionId,
    m: &Installing,
) -> io::Result<u64> {
    let header: SnapshotHeader = staged_header(engine, group, m.id)?;
    let SnapshotHeader::Partition { sessions, .. } = header else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{group}: a metadata snapshot staged for a partition"),
        ));
    };
    let (ss, se) = keys::group_sessions_range(group);
    let old = engine
        .scan(Space::Data, &ss, se.as_deref(), usize::MAX)
        .map_err(io::Error::other)?;
    copy_staged(engine, group, m, |b| {
        for (k, _) in old {
            b.delete(Space::Data, k);
        }
        for (c, s) in &sessions {
            b.put(Space::Data, keys::group_session(group, *c), encode(s)?);
        }
        b.put(Space::Data, keys::group_applied(group), m.applied.clone());
        Ok(())
    })
}

/// The descriptor carried by staged snapshot `id` of `group`, if it is a partition's.
pub fn staged_desc(
    engine: &SharedEngine,
    group: PartitionId,
    id: u64,
) -> io::Result<Option<PartitionDesc>> {
    Ok(match staged_header::<SnapshotHeader>(engine, group, id)? {
        SnapshotHeader::Partition { applied, .. } => applied.desc,
        SnapshotHeader::Meta { .. } => None,
    })
}

/// The write sessions of `group` as stored.
fn load_sessions(
    engine: &SharedEngine,
    group: PartitionId,
) -> io::Result<HashMap<ClientId, Session>> {
    let (start, end) = keys::group_sessions_range(group);
    let mut sessions = HashMap::new();
    for (k, v) in engine
        .scan(Space::Data, &start, end.as_deref(), usize::MAX)
        .map_err(io::Error::other)?
    {
        let client = k
            .get(k.len().saturating_sub(8)..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        if let Some(c) = client {
            sessions.insert(ClientId(c), decode(&k, &v)?);
        }
    }
    Ok(sessions)
}

/// Writes into `batch` the starting state of a new partition group: its descriptor and
/// `membership` as applied at [`split_seed_log_id`], with an empty log. openraft reads this
/// as a group whose log was purged up to the seed, so the group comes up formed on every
/// replica that has the seed, and a replica without it (a learner added later) can only
/// catch up by snapshot, never by replaying the group's history from its start.
pub fn seed_group(
    batch: &mut WriteBatch,
    desc: &PartitionDesc,
    membership: typ::Membership,
) -> io::Result<()> {
    let seed_id = split_seed_log_id();
    let seeded = Applied {
        last_applied: Some(seed_id),
        membership: typ::StoredMembership::new(Some(seed_id), membership),
        dropped: false,
        desc: Some(desc.clone()),
        last_split: None,
    };
    batch.put(Space::Data, keys::group_applied(desc.id), encode(&seeded)?);
    Ok(())
}

/// Whether the engine holds any state of `group` (applied state, vote or log): a replica
/// without any is pristine and may be seeded.
pub fn group_is_pristine(engine: &SharedEngine, group: PartitionId) -> io::Result<bool> {
    let applied = engine
        .get(Space::Data, &keys::group_applied(group))
        .map_err(io::Error::other)?;
    let (s, e) = keys::raft_group_range(group);
    let raft = engine
        .scan(Space::Raft, &s, e.as_deref(), 1)
        .map_err(io::Error::other)?;
    Ok(applied.is_none() && raft.is_empty())
}

/// Where partition replica `group` stood in `view`: the index of the last entry it applied
/// and its descriptor as of that entry, read at the same moment as its data (apply writes
/// them in one batch). `None` before it applied anything, once its table was dropped, and
/// while it installs a snapshot (the view may hold part of the snapshot's rows).
pub fn applied_in_view(
    view: &dyn cairn_storage::ReadView,
    group: PartitionId,
) -> io::Result<Option<(u64, PartitionDesc)>> {
    let get = |k: Vec<u8>| -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let end = keys::successor(&k);
        let found = view
            .scan(Space::Data, &k, Some(&end), 1)
            .map_err(io::Error::other)?;
        Ok(found.into_iter().next())
    };
    if get(keys::group_installing(group))?.is_some() {
        return Ok(None);
    }
    let Some((k, v)) = get(keys::group_applied(group))? else {
        return Ok(None);
    };
    let a: Applied = decode(&k, &v)?;
    Ok(match (a.last_applied, a.desc) {
        (Some(id), Some(desc)) if !a.dropped => Some((id.index, desc)),
        _ => None,
    })
}

/// Refuses a split while the group changes its membership: a joint configuration or a
/// learner would be copied into the right half, which has no way to finish the change.
pub fn split_allowed(m: &typ::Membership) -> Result<(), Error> {
    if m.get_joint_config().len() > 1 || m.learner_ids().next().is_some() {
        return Err(Error::Conflict(
            "a membership change of this partition is in progress; split it when the change is done".into(),
        ));
    }
    Ok(())
}

/// Hands out the snapshot (a header and an engine read view) taken when the builder was
/// made; a view that could not be taken is an error, never an empty snapshot.
pub struct SnapshotBuilder {
    snapshot: Result<typ::Snapshot, String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<typ::Snapshot, io::Error> {
        self.snapshot.clone().map_err(io::Error::other)
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<typ::LogId>, typ::StoredMembership), io::Error> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = WriteBatch::new();
        let mut responders = Vec::new();
        let mut meta_changed = false;
        let mut opened = Vec::new();
        let mut count = 0;
        let mut dirty = HashSet::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            count += 1;
            self.applied.last_applied = Some(entry.log_id);
            let reply = match &entry.payload {
                EntryPayload::Blank => Reply::None,
                EntryPayload::Membership(m) => {
                    match &self.kind {
                        Kind::Partition { view, .. } => {
                            Self::apply_membership(&mut self.applied, view, m)
                        }
                        Kind::Meta { state } => {
                            // The metadata records its own group's voters, so the operation
                            // that moves a metadata replica can see when it is done.
                            let voters = m
                                .voter_ids()
                                .filter_map(|r| {
                                    m.get_node(&r).map(|n| (NodeId(n.node), ReplicaId(r)))
                                })
                                .collect();
                            Arc::make_mut(&mut state.write().unwrap_or_else(|p| p.into_inner()))
                                .set_meta_voters(voters);
                            meta_changed = true;
                        }
                    }
                    self.applied.membership =
                        typ::StoredMembership::new(Some(entry.log_id), m.clone());
                    Reply::None
                }
                EntryPayload::Normal(cmd) => match (&mut self.kind, cmd) {
                    (
                        Kind::Partition { view, sessions, .. },
                        Command::Kv(KvCommand {
                            epoch,
                            op: KvOp::Split { key, right },
                            ..
                        }),
                    ) => {
                        let r = Self::apply_split(
                            &self.engine,
                            self.me,
                            &mut self.applied,
                            view,
                            sessions,
                            *epoch,
                            key,
                            *right,
                            &mut batch,
                        )?;
                        Reply::Split(r.map(|(left, right, seeded)| {
                            if seeded {
                                opened.push(right.clone());
                            }
                            (left, right)
                        }))
                    }
                    (
                        Kind::Partition {
                            view,
                            sessions,
                            last_expiry_ms,
                        },
                        Command::Kv(c),
                    ) => {
                        let r = Self::apply_kv(
                            self.group,
                            view,
                            sessions,
                            last_expiry_ms,
                            MAX_SESSIONS,
                            &mut dirty,
                            c,
                            &mut batch,
                        );
                        if matches!(c.op, KvOp::Drop) {
                            self.applied.dropped = true;
                        }
                        Reply::Kv(r)
                    }
                    (
                        Kind::Partition {
                            view,
                            sessions,
                            last_expiry_ms,
                        },
                        Command::KvBatch(cmds),
                    ) => Reply::KvBatch(
                        cmds.iter()
                            .map(|c| match c.op {
                                KvOp::Put { .. } | KvOp::Delete { .. } => Self::apply_kv(
                                    self.group,
                                    view,
                                    sessions,
                                    last_expiry_ms,
                                    MAX_SESSIONS,
                                    &mut dirty,
                                    c,
                                    &mut batch,
                                ),
                                // Drops and splits change the replica itself: never batched.
                                KvOp::Drop | KvOp::Split { .. } => Err(Error::Internal(format!(
                                    "{} cannot apply a {} inside a batch",
                                    self.group,
                                    Command::Kv(c.clone())
                                ))),
                            })
                            .collect(),
                    ),
                    (Kind::Meta { state }, Command::Meta(c)) => {
                        meta_changed = true;
                        // Copy-on-write: readers hold the last state as an `Arc` (cheap to
                        // take), and only a change made while one is held copies it.
                        Reply::Meta(
                            Arc::make_mut(&mut state.write().unwrap_or_else(|p| p.into_inner()))
                                .apply(c),
                        )
                    }
                    (_, other) => Reply::Kv(Err(Error::Internal(format!(
                        "{} cannot apply {other}: wrong kind of group",
                        self.group
                    )))),
                },
            };
            responders.push((responder, reply));
        }
        if let Kind::Partition { sessions, .. } = &self.kind {
            for client in dirty {
                // A session expired later in this batch stays deleted.
                if let Some(s) = sessions.get(&client) {
                    batch.put(
                        Space::Data,
                        keys::group_session(self.group, client),
                        encode(s)?,
                    );
                }
            }
        }
        if let (true, Kind::Meta { state }) = (meta_changed, &self.kind) {
            let s = encode(&**state.read().unwrap_or_else(|p| p.into_inner()))?;
            batch.put(Space::Data, keys::group_meta_state(self.group), s);
        }
        batch.put(
            Space::Data,
            keys::group_applied(self.group),
            encode(&self.applied)?,
        );
        // A destroyed replica's group may still apply what was queued before its shutdown:
        // nothing of it may outlive the destroy (a later replica of the partition here
        // would start from it). The group committed these entries, so the answers stand.
        let rows = match &self.kind {
            Kind::Partition { view, .. } => Some(view.rows_for_apply().await),
            Kind::Meta { .. } => None,
        };
        let destroyed = matches!(rows, Some(None));
        if !destroyed {
            self.engine.write(batch).map_err(io::Error::other)?;
        }
        drop(rows);
        if destroyed {
            opened.clear();
        }
        if let Some(c) = &self.applied_count {
            c.inc_by(count);
        }
        if !opened.is_empty() {
            crate::fault::crash_point("split-applied");
        }
        if let Some(sink) = &self.splits {
            for right in opened {
                // The node is shutting down when nobody listens; the seed is on disk and the
                // replica opens at the next start.
                let _ = sink.send((self.group, right));
            }
        }
        // Answer only once the state is readable, so a client that reads after its write
        // returns sees it.
        for (responder, reply) in responders {
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The trait gives no way to fail here, so a failed copy travels to build_snapshot,
        // which reports it.
        let snapshot = self.snapshot_view().map_err(|e| {
            tracing::error!(group = %self.group, "cannot take a snapshot of the state: {e}");
            format!("{}: cannot take a snapshot of the state: {e}", self.group)
        });
        SnapshotBuilder { snapshot }
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn install_snapshot(
        &mut self,
        meta: &typ::SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let id = match &snapshot {
            SnapshotData::Staged { group, id } if *group == self.group => *id,
            SnapshotData::Staged { group, .. } => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: a snapshot staged for {group}", self.group),
                ));
            }
            SnapshotData::View(v) => stage_view(&self.engine, self.group, v)?,
        };
        let header: SnapshotHeader = staged_header(&self.engine, self.group, id)?;
        match (header, &mut self.kind) {
            (SnapshotHeader::Partition { applied, .. }, Kind::Partition { view, sessions, .. }) => {
                let local = view.desc();
                let desc = applied.desc.clone().unwrap_or_else(|| local.clone());
                // Touch only keys both descriptors own: outside the local range may lie
                // another replica's data (a right half that caught up first), and outside
                // the snapshot's this replica no longer owns anything.
                let Some(range) = desc.range.intersect(&local.range) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "snapshot of {} for range {} shares no key with the local range {}",
                            desc.id, desc.range, local.range
                        ),
                    ));
                };
                let applied = Applied {
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                    desc: Some(desc.clone()),
                    ..applied
                };
                let marker = Installing {
                    id,
                    table: desc.table_id,
                    range,
                    applied: encode(&applied)?,
                };
                let (engine, group, destroyed, installs) = (
                    self.engine.clone(),
                    self.group,
                    view.destroyed.clone(),
                    view.installs.clone(),
                );
                let installed = Self::blocking(&self.work, move || {
                    let gone = destroyed.lock().unwrap_or_else(|p| p.into_inner());
                    if *gone {
                        return Ok(None);
                    }
                    // A newer transfer's first chunk clears the staging area under this
                    // lock: had one come since the last chunk was checked, this would copy
                    // nothing. Fail before the old rows go.
                    if engine
                        .get(Space::Local, &keys::staging_header(group, marker.id))
                        .map_err(io::Error::other)?
                        .is_none()
                    {
                        return Err(io::Error::other(format!(
                            "{group}: staged snapshot {} was cleared by a newer transfer before it was installed",
                            marker.id
                        )));
                    }
                    // Odd until the replica's state below is updated too (a failed install
                    // stops the group, and the node).
                    installs.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    // The staged copy is durable before the old state starts to go.
                    engine.sync().map_err(io::Error::other)?;
                    let mut b = WriteBatch::new();
                    b.put(Space::Data, keys::group_installing(group), encode(&marker)?);
                    engine.write(b).map_err(io::Error::other)?;
                    let rows = finish_partition_install(&engine, group, &marker)?;
                    Ok(Some((rows, load_sessions(&engine, group)?)))
                })
                .await?;
                let Some((rows, loaded)) = installed else {
                    tracing::info!(group = %self.group, "replica destroyed meanwhile: snapshot not installed");
                    return Ok(());
                };
                *sessions = loaded;
                view.recover_time(sessions);
                view.dropped
                    .store(applied.dropped, std::sync::atomic::Ordering::Release);
                view.set_desc(desc);
                *view.last_split.write().unwrap_or_else(|p| p.into_inner()) =
                    applied.last_split.clone();
                // Even again: reads may go on, from the new state.
                view.installs
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                self.applied = applied;
                tracing::info!(group = %self.group, last_log_id = ?meta.last_log_id, rows, "installed snapshot");
            }
            (
                SnapshotHeader::Meta {
                    applied,
                    state: snap_state,
                },
                Kind::Meta { state },
            ) => {
                let applied = Applied {
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                    ..applied
                };
                let mut b = WriteBatch::new();
                b.put(
                    Space::Data,
                    keys::group_meta_state(self.group),
                    encode(&snap_state)?,
                );
                b.put(
                    Space::Data,
                    keys::group_applied(self.group),
                    encode(&applied)?,
                );
                self.engine.write(b).map_err(io::Error::other)?;
                let (s, e) = keys::staging_group_range(self.group);
                cairn_storage::delete_range(&*self.engine, Space::Local, &s, e.as_deref(), 1024)
                    .map_err(io::Error::other)?;
                *state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(*snap_state);
                self.applied = applied;
                tracing::info!(group = %self.group, last_log_id = ?meta.last_log_id, "installed snapshot");
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot of the wrong kind of group",
                ));
            }
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<typ::Snapshot>, io::Error> {
        // A fresh view of the current state (it costs no copy): an older snapshot could
        // predate a split and carry keys this partition no longer owns to a replica that
        // opened with the split's descriptor. A replica that applied nothing has none.
        if self.applied.last_applied.is_none() {
            return Ok(None);
        }
        self.snapshot_view().map(Some)
    }
}

/// A transfer checked complete and not yet installed ([`PartitionView::mark_pending`]);
/// dropped once its install returns, whatever the outcome.
pub(crate) struct PendingInstall(Arc<std::sync::atomic::AtomicBool>);

impl Drop for PendingInstall {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Reads of a partition's data, used by the node after a read barrier.
impl PartitionView {
    /// The value of `key` in the partition's table.
    pub fn get(&self, engine: &SharedEngine, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let desc = self.desc();
        Ok(engine.get(Space::Data, &keys::data(desc.table_id, key))?)
    }

    /// A page of the pairs with user keys in `[start, end)` ∩ the partition's range.
    pub fn scan(
        &self,
        engine: &SharedEngine,
        start: &[u8],
        end: Option<&[u8]>,
        limit: cairn_storage::PageLimit,
    ) -> Result<cairn_storage::Page, Error> {
        let desc = self.desc();
        range_page(desc.table_id, &desc.range, start, end, |s, e| {
            engine.scan_page(Space::Data, s, e, limit)
        })
    }
}

/// A page of table `table`'s pairs with user keys in `[start, end)` ∩ `range`, read by
/// `scan_page` (of the engine, or of a view of it) between the engine keys it is given.
pub fn range_page(
    table: TableId,
    range: &cairn_types::KeyRange,
    start: &[u8],
    end: Option<&[u8]>,
    scan_page: impl FnOnce(&[u8], Option<&[u8]>) -> cairn_storage::Result<cairn_storage::Page>,
) -> Result<cairn_storage::Page, Error> {
    let lo = start.max(range.start.as_slice());
    let hi = match (end, range.end.as_deref()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (s, e) = keys::data_range(table, lo, hi);
    let mut page = scan_page(&s, e.as_deref())?;
    for (k, _) in &mut page.rows {
        *k = keys::user_key(k).to_vec();
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::Op;
    use cairn_types::{KeyRange, RequestId};

    fn view() -> PartitionView {
        PartitionView::new(
            PartitionDesc {
                id: PartitionId(9),
                table_id: TableId(1),
                range: KeyRange::full(),
                epoch: Epoch {
                    conf_ver: 1,
                    version: 1,
                },
                replicas: vec![NodeId(1)],
                replica_ids: [(NodeId(1), ReplicaId(1))].into_iter().collect(),
            },
            None,
        )
    }

    fn put(client: u64, seq: u64, at_ms: u64) -> KvCommand {
        KvCommand {
            request_id: Some(RequestId {
                client: ClientId(client),
                seq,
                first_incomplete: seq,
            }),
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            proposed_at_ms: at_ms,
            op: KvOp::Put {
                table: TableId(1),
                key: b"k".to_vec(),
                value: client.to_le_bytes().to_vec(),
            },
        }
    }

    fn session(last_write_ms: u64) -> Session {
        Session {
            first_incomplete: 1,
            applied: BTreeSet::new(),
            last_write_ms,
        }
    }

    /// Applies `cmd` as a replica would, with a cap of `cap` sessions: the batch it wrote.
    fn apply(
        sessions: &mut HashMap<ClientId, Session>,
        last_expiry: &mut u64,
        cap: usize,
        view: &PartitionView,
        cmd: &KvCommand,
    ) -> WriteBatch {
        let mut batch = WriteBatch::new();
        GroupStateMachine::apply_kv(
            PartitionId(9),
            view,
            sessions,
            last_expiry,
            cap,
            &mut HashSet::new(),
            cmd,
            &mut batch,
        )
        .unwrap();
        batch
    }

    fn sorted(sessions: &HashMap<ClientId, Session>) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = sessions.keys().copied().collect();
        ids.sort();
        ids
    }

    /// A partition holding the most sessions it keeps forgets the longest-idle tenth when a
    /// new client writes, on disk as in memory, and still recognises a retry of a session it
    /// kept.
    #[test]
    fn a_full_partition_forgets_its_idlest_sessions() {
        let (view, cap) = (view(), 1000);
        // Client c last wrote at c ms: clients 0.. are the idlest; none is past the TTL.
        let mut sessions: HashMap<ClientId, Session> =
            (0..cap as u64).map(|c| (ClientId(c), session(c))).collect();
        let now = cap as u64;
        let mut last_expiry = now;
        let batch = apply(
            &mut sessions,
            &mut last_expiry,
            cap,
            &view,
            &put(u64::MAX, 1, now),
        );
        let forgotten = cap / 10;
        assert_eq!(sessions.len(), cap - forgotten + 1);
        assert!(sessions.contains_key(&ClientId(u64::MAX)));
        assert!(!sessions.contains_key(&ClientId(forgotten as u64 - 1)));
        assert!(sessions.contains_key(&ClientId(forgotten as u64)));
        let deleted: HashSet<Vec<u8>> = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Delete(Space::Data, k) => Some(k.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted.len(), forgotten);
        assert!(deleted.contains(&keys::group_session(PartitionId(9), ClientId(0))));
        assert!(!deleted.contains(&keys::group_session(
            PartitionId(9),
            ClientId(forgotten as u64)
        )));

        // A retry of the newcomer's write is still a duplicate: nothing is written.
        let retry = apply(
            &mut sessions,
            &mut last_expiry,
            cap,
            &view,
            &put(u64::MAX, 1, now + 1),
        );
        assert!(retry.ops.is_empty(), "a kept session's retry applied again");
        assert_eq!(view.duplicates(), 1);
    }

    /// Two replicas, one of which has swept its sessions past the TTL and one of which has
    /// not yet (sweeps run on each replica's own clock), decide alike: a retry of an expired
    /// session's write applies on both, and the cap forgets the same sessions on both.
    #[test]
    fn replicas_that_swept_apart_decide_alike() {
        let cap = 1000;
        let now = SESSION_TTL_MS + 10_000;
        // 989 live sessions on both; ten past the TTL left only on `a`.
        let live: HashMap<ClientId, Session> = (0..989u64)
            .map(|c| (ClientId(c), session(now - 5_000 + c)))
            .collect();
        let mut a = live.clone();
        for c in 0..10u64 {
            let mut s = session(0);
            s.applied.insert(1);
            a.insert(ClientId(1_000_000 + c), s);
        }
        let mut b = live;
        let (view_a, view_b) = (view(), view());
        // Neither sweeps on its clock during the test.
        let (mut exp_a, mut exp_b) = (now, now);
        let live_ids = |m: &HashMap<ClientId, Session>, at: u64| {
            let mut ids: Vec<ClientId> = m
                .iter()
                .filter(|(_, s)| s.live_at(at))
                .map(|(c, _)| *c)
                .collect();
            ids.sort();
            ids
        };
        let mut both = |cmd: KvCommand| {
            let wa = apply(&mut a, &mut exp_a, cap, &view_a, &cmd);
            let wb = apply(&mut b, &mut exp_b, cap, &view_b, &cmd);
            let puts = |w: &WriteBatch| w.ops.iter().any(|op| matches!(op, Op::Put(..)));
            assert!(puts(&wb), "{cmd:?} was not applied");
            assert!(
                puts(&wa),
                "a replica that had not swept took {cmd:?} for a retry"
            );
            let at = cmd.proposed_at_ms;
            assert_eq!(live_ids(&a, at), live_ids(&b, at), "after {cmd:?}");
            b.len()
        };
        // A retry, 10 minutes on, of a write whose session expired.
        both(put(1_000_000, 1, now));
        // New clients: both reach 1,000 live sessions at the same write and forget alike.
        let sizes: Vec<usize> = (0..20)
            .map(|i| both(put(2_000_000 + i, 1, now + 1 + i)))
            .collect();
        assert!(sizes.iter().all(|&n| n <= cap), "{sizes:?}");
        assert!(
            sizes.contains(&(cap - cap / 10 + 1)),
            "nothing forgotten: {sizes:?}"
        );
        assert_eq!(view_a.duplicates(), 0);
    }

    /// Every replica forgets the same sessions, whatever order its map iterates them in
    /// (each map has its own random seed), even when many share their last write time (a
    /// batch's writes do).
    #[test]
    fn replicas_forget_the_same_sessions() {
        let kept = |seed_order: bool| {
            let ids: Vec<u64> = if seed_order {
                (0..1000).collect()
            } else {
                (0..1000).rev().collect()
            };
            let mut sessions: HashMap<ClientId, Session> = ids
                .iter()
                .map(|&c| (ClientId(c * 7919 % 1000), session(c / 100)))
                .collect();
            GroupStateMachine::forget_idlest(
                PartitionId(1),
                &mut sessions,
                450,
                &mut WriteBatch::new(),
            );
            sorted(&sessions)
        };
        let a = kept(true);
        assert_eq!(a.len(), 450);
        assert_eq!(a, kept(false));
    }

    /// A replica's applied entry and descriptor are read from a view as written; a replica
    /// installing a snapshot, dropped, or that applied nothing has none to compare.
    #[test]
    fn applied_in_view_reads_the_entry_and_descriptor_or_none() {
        use cairn_storage::{Engine, MemEngine};
        use openraft::vote::RaftLeaderId;
        let e = MemEngine::new();
        let group = PartitionId(9);
        let at = |e: &MemEngine| applied_in_view(&*e.read_view().unwrap(), group).unwrap();
        assert_eq!(at(&e), None, "nothing applied");
        let desc = view().desc();
        let mut a = Applied {
            last_applied: Some(typ::LogId::new(
                openraft::vote::leader_id_adv::LeaderId::new(3, 1),
                42,
            )),
            desc: Some(desc.clone()),
            ..Applied::default()
        };
        let write = |e: &MemEngine, k: Vec<u8>, v: Vec<u8>| {
            let mut b = WriteBatch::new();
            b.put(Space::Data, k, v);
            e.write(b).unwrap();
        };
        write(&e, keys::group_applied(group), encode(&a).unwrap());
        assert_eq!(at(&e), Some((42, desc)));
        write(&e, keys::group_installing(group), vec![1]);
        assert_eq!(at(&e), None, "a snapshot being installed");
        let mut b = WriteBatch::new();
        b.delete(Space::Data, keys::group_installing(group));
        e.write(b).unwrap();
        a.dropped = true;
        write(&e, keys::group_applied(group), encode(&a).unwrap());
        assert_eq!(at(&e), None, "a dropped table");
    }
}
