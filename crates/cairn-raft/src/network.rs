//! The multi-group Raft network: one gRPC channel per peer node carries the messages of
//! every group. Each message names its group and the replica it is for; a node hands it to
//! its replica of that group only if that is the replica named, so a message meant for a
//! replica the node once had (and destroyed) never reaches a newer one.
//!
//! Messages travel as postcard-encoded [`RaftRpc`] values: by default as frames of one
//! long-lived `Internal.RaftStream` per node pair, many in flight at once, so a message costs
//! no HTTP/2 stream of its own; snapshot chunks, pings and large appends (and everything,
//! with the stream turned off or to a node that lacks it) as unary `Internal.Raft` calls.

use crate::snapshot::{SnapshotChunk, SnapshotData, stage_chunk, staged_complete};
use crate::{Member, TypeConfig, typ};
use cairn_proto::net::{SharedDialer, lazy_channel};
use cairn_proto::v1::internal_client::InternalClient;
use cairn_proto::v1::{Envelope, RaftFrame};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::transport::Channel;

/// A Raft message for one replica of one group.
#[derive(Serialize, Deserialize)]
pub struct RaftRpc {
    /// The group.
    pub group: u64,
    /// The replica (member id) it is for.
    pub to: u64,
    /// The message.
    pub msg: RaftMsg,
}

/// The Raft messages.
#[derive(Serialize, Deserialize)]
pub enum RaftMsg {
    /// AppendEntries (also heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// RequestVote.
    Vote(VoteRequest<TypeConfig>),
    /// PreVote.
    PreVote(VoteRequest<TypeConfig>),
    /// One chunk of a snapshot transfer; the last one installs it.
    SnapshotChunk(SnapshotChunk),
    /// The leader hands leadership to the receiver, which campaigns at once.
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Node-level liveness probe (`group` and `to` unused): the answer is the receiving
    /// process's incarnation, so a restart shows as a new value.
    Ping,
}

impl RaftRpc {
    /// The group the message is for.
    pub fn group(&self) -> u64 {
        self.group
    }
}

/// Handles an incoming message on the replica `raft` (whose member id is `me`) and encodes
/// its answer. A message for another member id is refused: it was meant for an earlier
/// replica of this group on this node.
/// `shape` is the `epoch.version` of the replica's descriptor (none for the metadata group):
/// a snapshot of an older shape (from before a split this replica already knows of) is
/// refused, since it would hand the replica keys that another partition owns now.
/// `view` is the partition replica's (none for the metadata group): a transfer's first
/// chunk clears the staging area only while no install or destroy holds its rows.
pub async fn serve_raft_rpc(
    raft: &typ::Raft,
    me: u64,
    shape: Option<u64>,
    view: Option<&crate::PartitionView>,
    engine: &cairn_storage::SharedEngine,
    metrics: &crate::RaftMetrics,
    rpc: RaftRpc,
) -> Vec<u8> {
    fn enc<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Vec<u8> {
        let r = r.map_err(|e| e.to_string());
        postcard::to_allocvec(&r).unwrap_or_default()
    }
    if rpc.to != me {
        let r: Result<(), String> = Err(format!(
            "group {} has replica {me} on this node, not {}",
            rpc.group, rpc.to
        ));
        return postcard::to_allocvec(&r).unwrap_or_default();
    }
    match rpc.msg {
        RaftMsg::Append(req) => {
            metrics.append_entries_received.inc();
            enc(raft.append_entries(req).await)
        }
        RaftMsg::Vote(req) => enc(raft.vote(req).await),
        RaftMsg::PreVote(req) => enc(raft.pre_vote(req).await),
        RaftMsg::SnapshotChunk(mut c) => {
            metrics.snapshot_received_bytes.inc_by(c.bytes());
            let group = cairn_types::PartitionId(rpc.group);
            let staged = {
                // Its own scope: the lock must be let go before the install below takes it.
                let rows = match (c.seq, view) {
                    (0, Some(v)) => match v.try_rows() {
                        Some(held) if !*held && !v.install_pending() => Some(held),
                        _ => {
                            return enc::<(), String>(Err(format!(
                                "{group} is installing a snapshot or being deleted on this node; a new transfer waits until it is done"
                            )));
                        }
                    },
                    _ => None,
                };
                let staged = stage_chunk(engine, group, &mut c);
                drop(rows);
                staged
            };
            if let Err(e) = staged {
                return enc::<(), _>(Err(format!("cannot stage snapshot chunk: {e}")));
            }
            let Some((vote, meta, rows)) = c.last else {
                return enc::<(), String>(Ok(()));
            };
            // Counted first (it reads every staged row); then, under the rows' lock, the
            // header is still there (a newer transfer's first chunk clears the staging under
            // that lock) and the transfer is marked pending, so that none clears it before
            // the install (a failed install stops the group).
            match staged_complete(engine, group, c.id, rows) {
                Ok(true) => {}
                Ok(false) => {
                    return enc::<(), String>(Err(format!(
                        "snapshot transfer {} of {group} is incomplete (a newer one replaced it?)",
                        c.id
                    )));
                }
                Err(e) => return enc::<(), _>(Err(e.to_string())),
            }
            let held = match view.map(|v| (v, v.try_rows())) {
                Some((v, Some(held))) if !*held => Some((v, held)),
                None => None,
                Some(_) => {
                    return enc::<(), String>(Err(format!(
                        "{group} is installing a snapshot or being deleted on this node; retry"
                    )));
                }
            };
            match engine.get(
                cairn_storage::Space::Local,
                &cairn_storage::keys::staging_header(group, c.id),
            ) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return enc::<(), String>(Err(format!(
                        "snapshot transfer {} of {group} was replaced by a newer one",
                        c.id
                    )));
                }
                Err(e) => return enc::<(), _>(Err(e.to_string())),
            }
            let _pending = held.map(|(v, held)| {
                let p = v.mark_pending();
                drop(held);
                p
            });
            let staged = crate::staged_desc(engine, group, c.id);
            if let (Some(local), Ok(Some(d))) = (shape, &staged)
                && d.epoch.version < local
            {
                return enc::<(), String>(Err(format!(
                    "snapshot of {group} at shape {} is older than this replica's ({local}); send a newer one",
                    d.epoch.version
                )));
            }
            let snapshot = typ::Snapshot {
                meta,
                snapshot: SnapshotData::Staged { group, id: c.id },
            };
            enc(raft.install_full_snapshot(vote, snapshot).await)
        }
        RaftMsg::TransferLeader(req) => enc(raft.handle_transfer_leader(req).await),
        // The node answers pings itself, before looking for a group.
        RaftMsg::Ping => enc::<(), String>(Err("a ping is answered by the node".into())),
    }
}

/// Bytes a peer is given a millisecond to take in, beyond a message's own timeout: to decode
/// it, write it and fsync it on a busy node.
const BYTES_PER_MS: u64 = 8 << 10;

/// The time a message of `bytes` is given: openraft times an append by the heartbeat interval
/// (150 ms) whatever its size, so an append of [`crate::MAX_APPEND_BYTES`] or of one large
/// value could time out on a loaded follower every time it is resent. 8 MiB/s adds 128 ms
/// per MiB, and next to nothing to a small message.
fn ttl_for(ttl: Duration, bytes: usize) -> Duration {
    ttl.saturating_add(Duration::from_millis(bytes as u64 / BYTES_PER_MS))
}

/// Raft messages up to this size go on the node pair's stream; larger ones go as calls of
/// their own, so that one big append does not hold up the small ones queued behind it.
const STREAM_MAX_BYTES: usize = 256 << 10;

#[derive(Default)]
struct Peers {
    addrs: HashMap<u64, String>,
    clients: HashMap<u64, (String, InternalClient<Channel>)>,
    streams: HashMap<u64, (String, Arc<RaftStream>)>,
    /// Nodes that answered, at an address and time, that they have no `RaftStream`: an
    /// older version during a rolling upgrade. They get unary calls until
    /// [`STREAM_RETRY_AFTER`] has passed, when the stream is tried again (the node may have
    /// been upgraded meanwhile).
    unary_only: HashMap<u64, (String, tokio::time::Instant)>,
}

/// How long a node that served no Raft stream gets unary calls before the stream is tried
/// again.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The calls waiting for an answer on one stream.
#[derive(Default)]
struct Waiting {
    closed: bool,
    next: u64,
    calls: BTreeMap<u64, tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>>,
}

/// The frames of `rx` whose call still waits for an answer. A frame whose call gave up (timed
/// out while the peer held the stream back) is not sent: nobody waits for its answer, and it
/// would only queue up here.
fn waited_for(
    rx: tokio::sync::mpsc::UnboundedReceiver<RaftFrame>,
    waiting: Arc<Mutex<Waiting>>,
) -> impl futures::Stream<Item = RaftFrame> + Send + 'static {
    futures::stream::unfold(rx, move |mut rx| {
        let waiting = waiting.clone();
        async move {
            loop {
                let f = rx.recv().await?;
                let waited = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .calls
                    .contains_key(&f.id);
                if waited {
                    return Some((f, rx));
                }
            }
        }
    })
}

/// One open `RaftStream` to a peer: frames go out through `tx`, and a reader task hands
/// each answer to the call waiting for its id.
struct RaftStream {
    tx: tokio::sync::mpsc::UnboundedSender<RaftFrame>,
    waiting: Arc<Mutex<Waiting>>,
}

/// Forgets a call that stopped waiting (timed out or dropped), so its id does not linger.
struct Forget<'a>(&'a Mutex<Waiting>, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .remove(&self.1);
    }
}

impl RaftStream {
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
            || self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closed
    }

    /// Sends one message and waits up to `ttl` for its answer.
    async fn call(&self, payload: Vec<u8>, ttl: Duration) -> Result<Vec<u8>, CallError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let id = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if w.closed {
                return Err(CallError::Failed("its Raft stream closed".into()));
            }
            w.next += 1;
            let id = w.next;
            w.calls.insert(id, answer);
            id
        };
        let _forget = Forget(&self.waiting, id);
        let frame = RaftFrame {
            id,
            payload,
            error: String::new(),
        };
        if self.tx.send(frame).is_err() {
            return Err(CallError::Failed("its Raft stream closed".into()));
        }
        match tokio::time::timeout(ttl, answered).await {
            Err(_) => Err(CallError::TimedOut(ttl)),
            Ok(Err(_)) => Err(CallError::Failed("its Raft stream closed".into())),
            Ok(Ok(r)) => r.map_err(CallError::Failed),
        }
    }
}

/// Why a Raft message got no answer.
enum CallError {
    /// The peer did not answer in time; the connection may be fine (a slow fsync there).
    TimedOut(Duration),
    /// The connection or the peer failed.
    Failed(String),
}

impl CallError {
    /// The error openraft sees for a message to `target`.
    ///
    /// Unreachable makes openraft pause replication to the peer at once (200 ms), so one
    /// slow answer from a busy follower would stall its commits for longer than the delay
    /// itself (seen as 300 ms stalls under write load). A timeout is reported as a
    /// transient network error instead: openraft resends at once and backs off only after
    /// ten in a row.
    fn into_rpc(self, target: u64) -> RPCError<TypeConfig> {
        match self {
            CallError::TimedOut(ttl) => RPCError::Network(NetworkError::new(&Msg(format!(
                "node {target}: timed out after {ttl:?}"
            )))),
            CallError::Failed(why) => {
                RPCError::Unreachable(Unreachable::new(&Msg(format!("node {target}: {why}"))))
            }
        }
    }
}

/// Connections to peer nodes, shared by every group and by request forwarding.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    peers: Arc<RwLock<Peers>>,
    local_ip: Option<IpAddr>,
    dialer: SharedDialer,
    metrics: crate::RaftMetrics,
    stream: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerNetwork {
    /// An empty address book; connections leave from `local_ip` when given, and go through
    /// `dialer` instead of TCP when given (simulation).
    pub fn new(local_ip: Option<IpAddr>, dialer: SharedDialer) -> Self {
        Self {
            local_ip,
            dialer,
            ..Self::default()
        }
    }

    /// Sends Raft messages over one stream per peer node (true) or as one call each.
    pub fn with_raft_stream(mut self, on: bool) -> Self {
        self.stream = on;
        self
    }

    /// The open Raft stream to `node`, opened now if there is none; none if the node's
    /// address is unknown or it serves no streams.
    fn stream(&self, node: u64) -> Option<Arc<RaftStream>> {
        // The stream to the node's current address, if it is still open. Called for every
        // Raft message, so it looks without copying the address.
        let open = |p: &Peers| {
            let addr = p.addrs.get(&node)?;
            p.streams
                .get(&node)
                .filter(|(a, s)| a == addr && !s.is_closed())
                .map(|(_, s)| s.clone())
        };
        let addr = {
            let p = self.peers.read().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = open(&p) {
                return Some(s);
            }
            let addr = p.addrs.get(&node)?;
            if p.unary_only
                .get(&node)
                .is_some_and(|(a, since)| a == addr && since.elapsed() < STREAM_RETRY_AFTER)
            {
                return None;
            }
            addr.clone()
        };
        let mut client = self.client(node)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let stream = Arc::new(RaftStream {
            tx,
            waiting: waiting.clone(),
        });
        {
            let mut p = self.peers.write().unwrap_or_else(|p| p.into_inner());
            // Another call may have opened one meanwhile.
            if let Some(s) = open(&p) {
                return Some(s);
            }
            p.streams.insert(node, (addr.clone(), stream.clone()));
        }
        let peers = self.peers.clone();
        let frames = waited_for(rx, waiting.clone());
        tokio::spawn(async move {
            let why = match client.raft_stream(frames).await {
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    peers
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .unary_only
                        .insert(node, (addr.clone(), tokio::time::Instant::now()));
                    // Once per peer address and retry period: a rolling upgrade passes
                    // through this.
                    tracing::warn!(
                        "node {node} at {addr} serves no Raft streams (an older version?): \
                         sending it one call per Raft message, trying the stream again in {}s",
                        STREAM_RETRY_AFTER.as_secs()
                    );
                    "it serves no Raft streams (an older version?); retrying as calls".into()
                }
                Err(s) => s.message().to_string(),
                Ok(answers) => {
                    let mut answers = answers.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(f)) => {
                                let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                                if let Some(call) = w.calls.remove(&f.id) {
                                    let r = if f.error.is_empty() {
                                        Ok(f.payload)
                                    } else {
                                        Err(f.error)
                                    };
                                    let _ = call.send(r);
                                }
                            }
                            Ok(None) => break "its Raft stream ended".to_string(),
                            Err(s) => break s.message().to_string(),
                        }
                    }
                }
            };
            // Whatever is still waiting will get no answer on this stream; the next call
            // opens a new one.
            let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
            w.closed = true;
            for (_, call) in std::mem::take(&mut w.calls) {
                let _ = call.send(Err(why.clone()));
            }
        });
        Some(stream)
    }

    /// The node's Raft traffic counters (every group's messages go through here).
    pub fn metrics(&self) -> &crate::RaftMetrics {
        &self.metrics
    }

    /// Records (or changes) the gRPC address of `node`.
    pub fn set_addr(&self, node: u64, addr: &str) {
        let mut p = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if p.addrs.get(&node).map(String::as_str) != Some(addr) {
            p.addrs.insert(node, addr.to_string());
        }
    }

    /// Every node whose address is known, in id order (a simulation must repeat it).
    pub fn nodes(&self) -> Vec<u64> {
        let p = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<u64> = p.addrs.keys().copied().collect();
        nodes.sort_unstable();
        nodes
    }

    /// Probes `node`: its incarnation (a random number drawn when its process started), or
    /// why it did not answer within `ttl`.
    pub async fn ping(&self, node: u64, ttl: Duration) -> Result<u64, String> {
        let rpc = RaftRpc {
            group: 0,
            to: 0,
            msg: RaftMsg::Ping,
        };
        self.call::<u64>(node, &rpc, ttl)
            .await
            .map_err(|e| e.to_string())
    }

    /// The known address of `node`.
    pub fn addr(&self, node: u64) -> Option<String> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .addrs
            .get(&node)
            .cloned()
    }

    /// A (lazily connected) client for `node`, if its address is known.
    pub fn client(&self, node: u64) -> Option<InternalClient<Channel>> {
        let addr = self.addr(node)?;
        {
            let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
            if let Some((a, c)) = peers.clients.get(&node)
                && *a == addr
            {
                return Some(c.clone());
            }
        }
        let channel = lazy_channel(&addr, &self.dialer, |e| {
            e.connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .local_address(self.local_ip)
                // A connection to a peer cut off by the network hangs rather than fails; find
                // out within ~3 s so requests stop queueing on it.
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
        })
        .ok()?;
        let client = InternalClient::new(channel)
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);
        let mut p = self.peers.write().unwrap_or_else(|p| p.into_inner());
        p.clients.insert(node, (addr, client.clone()));
        Some(client)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        target: u64,
        rpc: &RaftRpc,
        ttl: Duration,
    ) -> Result<T, RPCError<TypeConfig>> {
        let payload =
            postcard::to_allocvec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = ttl_for(ttl, payload.len());
        if matches!(&rpc.msg, RaftMsg::Append(a) if !a.entries.is_empty()) {
            self.metrics.append_bytes.observe(payload.len() as f64);
        }
        let streamed = self.stream
            && payload.len() <= STREAM_MAX_BYTES
            && !matches!(rpc.msg, RaftMsg::Ping | RaftMsg::SnapshotChunk(_));
        let reply = match streamed.then(|| self.stream(target)).flatten() {
            Some(stream) => stream
                .call(payload, ttl)
                .await
                .map_err(|e| e.into_rpc(target))?,
            None => {
                let mut client = self.client(target).ok_or_else(|| {
                    RPCError::Unreachable(Unreachable::new(&Msg(format!(
                        "no address for node {target}"
                    ))))
                })?;
                let call = client.raft(Envelope { payload });
                match tokio::time::timeout(ttl, call).await {
                    Err(_) => return Err(CallError::TimedOut(ttl).into_rpc(target)),
                    Ok(Err(status)) => {
                        return Err(
                            CallError::Failed(status.message().to_string()).into_rpc(target)
                        );
                    }
                    Ok(Ok(r)) => r.into_inner().payload,
                }
            }
        };
        let decoded: Result<T, String> =
            postcard::from_bytes(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|m| RPCError::Network(NetworkError::new(&Msg(m))))
    }
}

/// The connection of one group's replica to one other member: the node it lives on and
/// its member id, over the node's shared peer connections.
pub struct ReplicaClient {
    peers: PeerNetwork,
    group: u64,
    node: u64,
    replica: u64,
    commit_hold: Duration,
}

impl ReplicaClient {
    fn rpc(&self, msg: RaftMsg) -> RaftRpc {
        RaftRpc {
            group: self.group,
            to: self.replica,
            msg,
        }
    }
}

impl ReplicaClient {
    /// Streams a snapshot built here in chunks, one in flight; the receiver stages them and
    /// installs on the last.
    async fn send_snapshot(
        &self,
        vote: typ::Vote,
        snapshot: typ::Snapshot,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, RPCError<TypeConfig>> {
        let net = |m: String| RPCError::Network(NetworkError::new(&Msg(m)));
        let SnapshotData::View(view) = snapshot.snapshot else {
            return Err(net("only a snapshot built on this node can be sent".into()));
        };
        let id = cairn_types::entropy::next_u64();
        let mut after: Option<Vec<u8>> = None;
        let (mut seq, mut total) = (0u64, 0u64);
        loop {
            let v = view.clone();
            let from = after.clone();
            // Reading a chunk from the engine blocks; keep it off the async workers.
            let rows = tokio::task::spawn_blocking(move || v.rows_after(from.as_deref()))
                .await
                .map_err(|e| net(e.to_string()))?
                .map_err(|e| net(format!("cannot read the snapshot: {e}")))?;
            let last = rows.is_empty();
            total += rows.len() as u64;
            after = rows.last().map(|(k, _)| k.clone()).or(after);
            let chunk = SnapshotChunk {
                id,
                seq,
                header: (seq == 0).then(|| view.header().to_vec()),
                rows,
                last: last.then(|| (vote, snapshot.meta.clone(), total)),
            };
            self.peers.metrics.snapshot_sent_bytes.inc_by(chunk.bytes());
            let rpc = self.rpc(RaftMsg::SnapshotChunk(chunk));
            if last {
                // Installing copies the whole partition: allow it more than one chunk's time.
                let ttl = option.hard_ttl().max(Duration::from_secs(60));
                return self.peers.call(self.node, &rpc, ttl).await;
            }
            self.peers
                .call::<()>(self.node, &rpc, option.hard_ttl())
                .await?;
            seq += 1;
        }
    }
}

impl RaftNetworkV2<TypeConfig> for ReplicaClient {
    type SnapshotData = SnapshotData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        let (hold, folded) = (
            self.commit_hold,
            self.peers.metrics.commit_notices_folded.clone(),
        );
        crate::fold::stream_append_folding(self, input, option, hold, folded)
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let m = &self.peers.metrics;
        if rpc.entries.is_empty() {
            m.heartbeats_sent.inc();
        } else {
            m.append_entries_sent.inc();
        }
        let rpc = self.rpc(RaftMsg::Append(rpc));
        self.peers.call(self.node, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let rpc = self.rpc(RaftMsg::Vote(rpc));
        self.peers.call(self.node, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let rpc = self.rpc(RaftMsg::PreVote(rpc));
        self.peers.call(self.node, &rpc, option.hard_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let rpc = self.rpc(RaftMsg::TransferLeader(req));
        self.peers.call(self.node, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: typ::Vote,
        snapshot: typ::Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = self.send_snapshot(vote, snapshot, option);
        tokio::select! {
            // Fixed order: tokio's random pick would make a simulation unrepeatable.
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r.map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                other => StreamingError::Network(NetworkError::new(&other)),
            }),
        }
    }
}

/// The network factory of one group.
pub struct GroupNetwork {
    /// Shared peer connections.
    pub peers: PeerNetwork,
    /// The group id stamped on every message.
    pub group: u64,
    /// How long a commit notice waits for the group's next append to carry it (zero: it
    /// goes at once); see [`crate::DEFAULT_COMMIT_HOLD`].
    pub commit_hold: Duration,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = ReplicaClient;

    async fn new_client(&mut self, target: u64, member: &Member) -> Self::Network {
        self.peers.set_addr(member.node, &member.addr);
        ReplicaClient {
            peers: self.peers.clone(),
            group: self.group,
            node: member.node,
            replica: target,
            commit_hold: self.commit_hold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose frames go nowhere: `answer` plays the peer.
    fn stream() -> (
        RaftStream,
        tokio::sync::mpsc::UnboundedReceiver<RaftFrame>,
        Arc<Mutex<Waiting>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let s = RaftStream {
            tx,
            waiting: waiting.clone(),
        };
        (s, rx, waiting)
    }

    /// Frames of calls that gave up before their frame went out are not sent; the others
    /// are, in order.
    #[tokio::test]
    async fn frames_of_calls_that_gave_up_are_not_sent() {
        use futures::StreamExt;
        let (s, rx, waiting) = stream();
        let slow = s.call(b"first".to_vec(), Duration::from_millis(1));
        assert!(matches!(slow.await, Err(CallError::TimedOut(_))));
        let (waits, _answered) = tokio::sync::oneshot::channel();
        waiting.lock().unwrap().calls.insert(7, waits);
        s.tx.send(RaftFrame {
            id: 7,
            payload: b"second".to_vec(),
            error: String::new(),
        })
        .unwrap();
        drop(s);
        let sent: Vec<Vec<u8>> = waited_for(rx, waiting).map(|f| f.payload).collect().await;
        assert_eq!(sent, vec![b"second".to_vec()]);
    }

    fn answer(waiting: &Mutex<Waiting>, id: u64, r: Result<Vec<u8>, String>) {
        let call = waiting.lock().unwrap().calls.remove(&id);
        let _ = call.expect("a call waits for this id").send(r);
    }

    #[tokio::test]
    async fn a_slow_answer_is_a_transient_error_and_the_stream_stays_usable() {
        let (s, mut rx, waiting) = stream();
        let ttl = Duration::from_millis(20);
        let slow = s.call(b"first".to_vec(), ttl).await;
        let frame = rx.recv().await.unwrap();
        assert_eq!(frame.payload, b"first");
        let Err(e) = slow else {
            panic!("a call nobody answers must time out")
        };
        assert!(matches!(e, CallError::TimedOut(t) if t == ttl));
        // Openraft backs off at once only for Unreachable; a timeout must not be one.
        match e.into_rpc(2) {
            RPCError::Network(n) => assert!(n.to_string().contains("node 2: timed out")),
            other => panic!("a timeout reported as {other:?}"),
        }
        // The timed-out call forgot its id; the next one on the same stream is answered.
        assert!(waiting.lock().unwrap().calls.is_empty());
        let next = s.call(b"second".to_vec(), Duration::from_secs(30));
        let peer = async {
            let f = rx.recv().await.unwrap();
            answer(&waiting, f.id, Ok(b"ok".to_vec()));
        };
        let (r, ()) = tokio::join!(next, peer);
        assert_eq!(r.ok(), Some(b"ok".to_vec()));
    }

    #[test]
    fn a_large_message_is_given_time_for_its_size() {
        let hb = Duration::from_millis(150);
        // A heartbeat or a small append keeps openraft's timeout (within a millisecond).
        assert!(ttl_for(hb, 200) - hb < Duration::from_millis(1));
        // A capped append of 1 MiB: 128 ms more; one 16 MiB value: 2 s more.
        assert_eq!(ttl_for(hb, 1 << 20), Duration::from_millis(278));
        assert_eq!(ttl_for(hb, 16 << 20), Duration::from_millis(2198));
    }

    #[tokio::test]
    async fn a_failed_peer_or_closed_stream_is_unreachable() {
        let (s, mut rx, waiting) = stream();
        let refused = s.call(b"m".to_vec(), Duration::from_secs(30));
        let peer = async {
            let f = rx.recv().await.unwrap();
            answer(&waiting, f.id, Err("p9 has no replica on node n2".into()));
        };
        let (r, ()) = tokio::join!(refused, peer);
        match r.err().map(|e| e.into_rpc(2)) {
            Some(RPCError::Unreachable(u)) => {
                assert!(u.to_string().contains("node 2: p9 has no replica"))
            }
            other => panic!("a failed call reported as {other:?}"),
        }
        waiting.lock().unwrap().closed = true;
        let closed = s.call(b"m".to_vec(), Duration::from_secs(30)).await;
        assert!(matches!(
            closed.err().map(|e| e.into_rpc(2)),
            Some(RPCError::Unreachable(_))
        ));
    }
}
