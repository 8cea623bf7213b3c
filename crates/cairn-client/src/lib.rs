//! Rust client for Cairn.
//!
//! A [`Client`] takes several node endpoints and spreads requests over them round-robin.
//! Keyed reads and writes go straight to the partition's leader once the client has heard
//! which node leads it (every answer says so), saving the hop a node takes to forward
//! them. Concurrent reads and writes bound for one node share a streamed `Batch` call. An
//! endpoint that fails to answer is set aside for a moment and the request moves
//! to the next one; retryable errors are retried with backoff until the request's deadline
//! (default 10 s). Writes carry a request id from the client's session, so a retried write
//! is applied at most once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_client::Error> {
//! let c = cairn_client::Client::new(["127.0.0.1:7001", "127.0.0.1:7002"])?;
//! c.create_table("users", 3, vec![b"m".to_vec()]).await?;
//! c.put("users", b"alice", b"1").await?;
//! assert_eq!(c.get("users", b"alice").await?, Some(b"1".to_vec()));
//! # Ok(()) }
//! ```

mod batch;
mod error;
mod leaders;

pub use error::{Error, Result};

use cairn_proto::net::{SharedDialer, lazy_channel};
use cairn_proto::v1::{self as pb, admin_client::AdminClient, kv_client::KvClient};
use cairn_types::entropy;
use cairn_types::{ClientId, ErrorCode, RequestId, Session};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A connection to a node that adds the client's bearer token (if any) to every call.
pub(crate) type Chan = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer TOKEN` to each call.
#[derive(Clone, Default)]
pub(crate) struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Default time a call may take, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an endpoint that failed is skipped.
const COOLDOWN: Duration = Duration::from_secs(1);
/// How long a node that held a request without answering is passed over.
const HUNG_COOLDOWN: Duration = Duration::from_secs(5);
/// Shortest time one attempt gets before the client tries another node.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);
/// How long a node learned from a leader hint (not one of the endpoints) is skipped after
/// it failed: it may be unreachable from here (say, behind a load balancer).
const DISCOVERED_COOLDOWN: Duration = Duration::from_secs(30);
/// Most nodes learned from leader hints that the client keeps connections to.
const MAX_DISCOVERED: usize = 256;

struct Node {
    addr: String,
    channel: Chan,
    down_until: Mutex<Option<Instant>>,
    /// Learned from a leader hint rather than given as an endpoint.
    discovered: bool,
    batcher: Arc<batch::Batcher>,
}

impl Node {
    fn is_up(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t <= now)
    }
}

/// Where a keyed request goes: its table and key, for the leader cache.
#[derive(Clone, Copy)]
struct Keyed<'a> {
    table: &'a str,
    key: &'a [u8],
}

/// A table as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// Name.
    pub name: String,
    /// Numeric id.
    pub id: u64,
    /// Replicas per partition.
    pub replication: u32,
    /// Partitions in key order.
    pub partitions: Vec<PartitionInfo>,
}

/// A partition as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition id.
    pub id: u64,
    /// Inclusive start key.
    pub start: Vec<u8>,
    /// Exclusive end key; `None` is unbounded.
    pub end: Option<Vec<u8>>,
    /// Epoch as `(version, conf_ver)`.
    pub epoch: (u64, u64),
    /// Replica node ids.
    pub replicas: Vec<u64>,
    /// Leader node id, if known.
    pub leader: Option<u64>,
}

/// What one replica of a partition held as of the last log entry it applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaDigest {
    /// The replica's node.
    pub node: u64,
    /// Why the replica could not answer (its node down, a snapshot being installed); the
    /// fields below are then empty.
    pub error: Option<String>,
    /// The index of the last log entry it applied.
    pub applied: u64,
    /// Rows in its range.
    pub rows: u64,
    /// SHA-256 of its rows in key order.
    pub sha256: Vec<u8>,
    /// The partition's range as of that entry: start, and end (`None`: unbounded).
    pub range: (Vec<u8>, Option<Vec<u8>>),
}

/// A layout operation as the metadata records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationInfo {
    /// Operation id.
    pub id: u64,
    /// What it does ("move", "split", "transfer" or "drop").
    pub kind: String,
    /// The partition it changes.
    pub partition: u64,
    /// "running", "done" or "rolled_back".
    pub state: String,
    /// The step it is at, in words.
    pub step: String,
    /// The last error seen, if any.
    pub error: Option<String>,
    /// The node giving its replica up (0 where that does not apply).
    pub from: u64,
    /// The node receiving a replica or leadership (0 where that does not apply).
    pub to: u64,
}

/// The controller as the metadata leader runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    /// Whether it runs (`--controller on` on the metadata leader).
    pub enabled: bool,
    /// Whether an operator paused it.
    pub paused: bool,
    /// The metadata leader it runs beside.
    pub leader: u64,
    /// Nodes being drained.
    pub draining: Vec<u64>,
    /// Recent decisions, newest first.
    pub decisions: Vec<DecisionInfo>,
}

/// One decision of the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionInfo {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// "split", "move", "transfer" or "report".
    pub kind: String,
    /// The partition (0: the metadata group).
    pub partition: u64,
    /// What exactly.
    pub detail: String,
    /// Why.
    pub why: String,
    /// "done" or what went wrong.
    pub outcome: String,
}

fn controller_info(r: pb::ControllerResponse) -> ControllerInfo {
    ControllerInfo {
        enabled: r.enabled,
        paused: r.paused,
        leader: r.leader,
        draining: r.draining,
        decisions: r
            .decisions
            .into_iter()
            .map(|d| DecisionInfo {
                at_ms: d.at_ms,
                kind: d.kind,
                partition: d.partition,
                detail: d.detail,
                why: d.why,
                outcome: d.outcome,
            })
            .collect(),
    }
}

fn operation_info(o: pb::Operation) -> OperationInfo {
    OperationInfo {
        id: o.id,
        kind: o.kind,
        partition: o.partition,
        state: o.state,
        step: o.step,
        error: (!o.error.is_empty()).then_some(o.error),
        from: o.from,
        to: o.to,
    }
}

/// Options of [`Client::list`].
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only keys with this prefix.
    pub prefix: Vec<u8>,
    /// Only keys `>= start`.
    pub start: Vec<u8>,
    /// Only keys `< end` (empty: no bound).
    pub end: Vec<u8>,
    /// Page size (0: 1000; at most 10000).
    pub limit: u32,
    /// Resume after the page that returned this cursor.
    pub cursor: Vec<u8>,
    /// Also return values.
    pub values: bool,
    /// Allow a stale read.
    pub stale: bool,
}

/// One page of [`Client::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in byte order.
    pub keys: Vec<Vec<u8>>,
    /// Values, when asked for.
    pub values: Vec<Vec<u8>>,
    /// Pass to the next call to continue; `None` after the last page.
    pub cursor: Option<Vec<u8>>,
}

/// A user as a backup keeps it ([`Client::user_records`], [`Client::restore_user`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRecord {
    /// The user's name.
    pub name: String,
    /// `admin`, `readwrite` or `readonly`.
    pub role: String,
    /// The prefix of the tables it may use (empty: all).
    pub tables: String,
    /// The SHA-256 of its token (the token itself is kept nowhere).
    pub token_sha256: [u8; 32],
}

/// One page of [`Client::export`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportPage {
    /// Keys in byte order, all from one partition.
    pub keys: Vec<Vec<u8>>,
    /// Their values.
    pub values: Vec<Vec<u8>>,
    /// Pass to the next call to continue; `None` after the table's last page.
    pub cursor: Option<Vec<u8>>,
    /// The cursor that reads this page's partition again from its start, in a new view.
    pub restart: Vec<u8>,
    /// The partition the rows came from.
    pub partition: u64,
    /// This page is its partition's last: `cursor` starts the next partition.
    pub partition_done: bool,
}

/// Engine key counts of one table on one node (see [`Client::engine_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// User data keys of the table.
    pub data_keys: u64,
    /// Raft log and vote keys of the given partitions.
    pub raft_keys: u64,
    /// Replica bookkeeping keys of the given partitions.
    pub replica_keys: u64,
    /// How many of the given partitions have an open replica.
    pub open_replicas: u32,
}

/// A node's status as shown by [`Client::nodes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: u64,
    /// gRPC address.
    pub addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// Heartbeat seen recently.
    pub live: bool,
    /// Replicas hosted.
    pub replicas: u32,
    /// Partitions led.
    pub leaders: u32,
    /// Member of the metadata group.
    pub metadata_member: bool,
    /// Leads the metadata group.
    pub metadata_leader: bool,
    /// Whether it is being drained.
    pub draining: bool,
}

/// A Cairn client; cheap to share between tasks (`&Client` is enough).
pub struct Client {
    nodes: Vec<Arc<Node>>,
    next: AtomicUsize,
    session: Session,
    timeout: Duration,
    dialer: SharedDialer,
    bearer: Bearer,
    /// Send keyed requests to the leader named by earlier answers.
    leader_routing: bool,
    leaders: leaders::LeaderCache<Arc<Node>>,
    /// Nodes learned from leader hints, by address.
    discovered: RwLock<HashMap<String, Arc<Node>>>,
}

fn partition_info(p: pb::Partition) -> PartitionInfo {
    PartitionInfo {
        id: p.id,
        start: p.start,
        end: p.has_end.then_some(p.end),
        epoch: (p.epoch_version, p.epoch_conf_ver),
        replicas: p.replicas,
        leader: (p.leader != 0).then_some(p.leader),
    }
}

fn table_info(t: Option<pb::Table>) -> Result<TableInfo> {
    let t =
        t.ok_or_else(|| Error::new(ErrorCode::Internal, "the server answered without a table"))?;
    Ok(TableInfo {
        name: t.name,
        id: t.id,
        replication: t.replication,
        partitions: t.partitions.into_iter().map(partition_info).collect(),
    })
}

fn to_pb(id: RequestId) -> pb::RequestId {
    pb::RequestId {
        client: id.client.0,
        seq: id.seq,
        first_incomplete: id.first_incomplete,
    }
}

impl Client {
    /// A client for the given `host:port` endpoints. Connections are made lazily.
    pub fn new<I, S>(endpoints: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_dialer(endpoints, None)
    }

    /// Like [`Client::new`], connecting through `dialer` instead of TCP when given (used by
    /// the deterministic simulation).
    pub fn with_dialer<I, S>(endpoints: I, dialer: SharedDialer) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_auth(endpoints, dialer, None)
    }

    /// Like [`Client::with_dialer`], sending `token` (a secure cluster's bearer token, from
    /// `cairn user add`) with every call; pair it with a TLS dialer
    /// ([`cairn_proto::tls::TlsDialer`]).
    pub fn with_auth<I, S>(endpoints: I, dialer: SharedDialer, token: Option<&str>) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let bearer = match token {
            Some(t) => Bearer(Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    "the token holds characters a header cannot carry; copy it again from `cairn user add`",
                )
            })?)),
            None => Bearer(None),
        };
        let mut nodes = Vec::new();
        for e in endpoints {
            let addr = e.as_ref().trim().trim_start_matches("http://").to_string();
            if addr.is_empty() {
                continue;
            }
            nodes.push(Arc::new(Self::dial(addr, &dialer, &bearer, false)?));
        }
        if nodes.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "no endpoints given; pass HOST:PORT of one or more nodes",
            ));
        }
        let start = entropy::next_u64() as usize % nodes.len();
        let client = ClientId(entropy::next_u64() | 1);
        Ok(Self {
            nodes,
            next: AtomicUsize::new(start),
            session: Session::new(client),
            timeout: DEFAULT_TIMEOUT,
            dialer,
            bearer,
            leader_routing: true,
            leaders: leaders::LeaderCache::default(),
            discovered: RwLock::new(HashMap::new()),
        })
    }

    fn dial(
        addr: String,
        dialer: &SharedDialer,
        bearer: &Bearer,
        discovered: bool,
    ) -> Result<Node> {
        let channel = lazy_channel(&addr, dialer, |e| {
            e.connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
        })
        .map_err(|err| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("endpoint {addr:?} is not HOST:PORT: {err}"),
            )
        })?;
        let channel = InterceptedService::new(channel, bearer.clone());
        Ok(Node {
            addr,
            batcher: Arc::new(batch::Batcher::new(channel.clone())),
            channel,
            down_until: Mutex::new(None),
            discovered,
        })
    }

    /// Whether keyed requests go to the leader named by earlier answers (the default), or
    /// only to the given endpoints (say, when the nodes' own addresses are not reachable
    /// from the client and it talks to a load balancer).
    pub fn with_leader_routing(mut self, on: bool) -> Self {
        self.leader_routing = on;
        self
    }

    /// The node at `addr`: an endpoint, or one learned from a hint (connected lazily).
    fn node_at(&self, addr: &str) -> Option<Arc<Node>> {
        if let Some(n) = self.nodes.iter().find(|n| n.addr == addr) {
            return Some(n.clone());
        }
        if let Some(n) = self
            .discovered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
        {
            return Some(n.clone());
        }
        let mut d = self.discovered.write().unwrap_or_else(|p| p.into_inner());
        if d.len() >= MAX_DISCOVERED {
            return None;
        }
        let node = Arc::new(Self::dial(addr.to_string(), &self.dialer, &self.bearer, true).ok()?);
        Some(d.entry(addr.to_string()).or_insert(node).clone())
    }

    /// Takes in the leader hint of a keyed answer.
    fn learn(&self, table: &str, hint: Option<pb::LeaderHint>) {
        let Some(h) = hint.filter(|h| self.leader_routing && !h.leader_addr.is_empty()) else {
            return;
        };
        let end = h.has_end.then_some(h.end);
        if self
            .leaders
            .knows(table, &h.start, end.as_deref(), h.epoch_version, |n| {
                n.addr == h.leader_addr
            })
        {
            return;
        }
        let Some(node) = self.node_at(&h.leader_addr) else {
            return;
        };
        self.leaders
            .learn(table, h.start, end, h.epoch_version, node);
    }

    /// Sets the time a call may take, retries included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    fn pick(&self) -> &Arc<Node> {
        let n = self.nodes.len();
        let now = Instant::now();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let node = &self.nodes[i];
            if node.is_up(now) {
                return node;
            }
        }
        // Every endpoint failed recently: try the next one anyway.
        &self.nodes[self.next.fetch_add(1, Ordering::Relaxed) % n]
    }

    /// Runs `call` on endpoints in turn until it succeeds, fails for good, or the
    /// deadline passes.
    async fn retry<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(Chan, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut call = call;
        self.retry_as(|n: Arc<Node>, d| call(n.channel.clone(), d), false, None)
            .await
    }

    /// [`Client::retry`]; for a `write`, a definite refusal (say DISK_FULL) after an
    /// attempt whose outcome is unknown is reported as UNAVAILABLE: that earlier attempt may
    /// have been applied, so "it did not happen" would be a lie.
    /// With `keyed`, an attempt goes to the range's leader when the client knows it.
    async fn retry_as<T, F, Fut>(&self, call: F, write: bool, keyed: Option<Keyed<'_>>) -> Result<T>
    where
        F: FnMut(Arc<Node>, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.retry_full(self.timeout, call, write, keyed, false)
            .await
    }

    /// [`Client::retry`] with its own overall `timeout`, of which an attempt may take all.
    async fn retry_within<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T>
    where
        F: FnMut(Arc<Node>, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.retry_full(timeout, call, false, None, true).await
    }

    async fn retry_full<T, F, Fut>(
        &self,
        timeout: Duration,
        mut call: F,
        write: bool,
        keyed: Option<Keyed<'_>>,
        whole_budget: bool,
    ) -> Result<T>
    where
        F: FnMut(Arc<Node>, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut attempt = 0u32;
        let mut uncertain = false;
        loop {
            let led = keyed
                .filter(|_| self.leader_routing)
                .and_then(|k| self.leaders.lookup(k.table, k.key))
                .filter(|n| n.is_up(Instant::now()));
            let node = match &led {
                Some(n) => n,
                None => self.pick(),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            // A node cut off from the cluster can hold a request until the deadline; one
            // attempt gets half of the time left (at least 1 s) so another node can be tried.
            let budget = if whole_budget {
                left
            } else {
                (left / 2).max(MIN_ATTEMPT).min(left)
            };
            let sent = Instant::now();
            let err = match tokio::time::timeout(budget, call(node.clone(), budget)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(status)) => Error::from_status(&status, &node.addr),
                Err(_) => Error::new(
                    ErrorCode::Unavailable,
                    format!("{} did not answer in time", node.addr),
                ),
            };
            if !err.is_retryable() {
                if write && uncertain {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the write may or may not have been applied: an earlier attempt \
                             got no answer, and the last one failed with {err}"
                        ),
                    ));
                }
                return Err(err);
            }
            // Any failed attempt may have reached a leader (even a broken connection may
            // have carried the request), so later refusals are not proof.
            uncertain = true;
            if let (Some(_), Some(k)) = (&led, keyed) {
                self.leaders.forget(k.table, k.key);
            }
            // A node that refused the connection, or held the request for (nearly) all of its
            // budget — typically one cut off from its peers — is passed over for a while.
            let hung = sent.elapsed() >= budget.mul_f32(0.8);
            if err.is_transport() || hung {
                let pause = if node.discovered {
                    DISCOVERED_COOLDOWN
                } else if hung {
                    HUNG_COOLDOWN
                } else {
                    COOLDOWN
                };
                *node.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + pause);
            }
            let pause = cairn_types::retry_pause(Duration::from_millis(25), attempt);
            if Instant::now() + pause >= deadline {
                return Err(err.timed_out(timeout));
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    fn kv(ch: Chan) -> KvClient<Chan> {
        KvClient::new(ch)
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
    }

    /// Creates a table with `replication` replicas per partition (0: the default of 3)
    /// and partitions split at `split_keys`.
    pub async fn create_table(
        &self,
        name: &str,
        replication: u32,
        split_keys: Vec<Vec<u8>>,
    ) -> Result<TableInfo> {
        // One id for every retry: the metadata group answers a retry whose first attempt
        // made the table with that table, and any other request with ALREADY_EXISTS.
        let req = pb::CreateTableRequest {
            name: name.to_string(),
            replication,
            split_keys,
            request_id: entropy::next_u64() | 1,
        };
        let timeout = self.timeout + cairn_types::create_table_time(req.split_keys.len() + 1);
        // The node answers by its deadline (the same as this one), so the first attempt gets
        // the whole of it: giving up half-way would cancel a CreateTable almost done.
        let resp = self
            .retry_within(timeout, |n: Arc<Node>, _| {
                let r = req.clone();
                async move { Self::kv(n.channel.clone()).create_table(r).await }
            })
            .await?;
        table_info(resp.into_inner().table)
    }

    /// Drops a table and all of its data.
    ///
    /// The table's id is read first and sent with every attempt: a retry after an attempt
    /// with no definite answer (its drop may have happened) succeeds once that table's drop
    /// is recorded (the metadata keeps the last 1,000), and never drops a table made again
    /// under the name since. Dropping a table that does not exist fails with
    /// TABLE_NOT_FOUND.
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let started = Instant::now();
        let id = self.describe_table(name).await?.id;
        let req = pb::DropTableRequest {
            name: name.to_string(),
            table_id: id,
        };
        // One timeout for the describe and the drop (at least a second for the drop).
        let left = self
            .timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        let call = |n: Arc<Node>, _| {
            let r = req.clone();
            async move { Self::kv(n.channel.clone()).drop_table(r).await }
        };
        // As a write: a refusal after an attempt that may have dropped it is UNAVAILABLE,
        // not a definite "no".
        let r = self.retry_full(left, call, true, None, false).await;
        self.leaders.forget_table(name);
        r.map(|_| ())
    }

    /// Every table.
    pub async fn list_tables(&self) -> Result<Vec<TableInfo>> {
        let resp = self
            .retry(|ch, _| {
                let r = pb::ListTablesRequest {};
                async move { Self::kv(ch).list_tables(r).await }
            })
            .await?;
        resp.into_inner()
            .tables
            .into_iter()
            .map(|t| table_info(Some(t)))
            .collect()
    }

    /// A table with its partitions and their leaders.
    pub async fn describe_table(&self, name: &str) -> Result<TableInfo> {
        let req = pb::DescribeTableRequest {
            name: name.to_string(),
        };
        let resp = self
            .retry(|ch, _| {
                let r = req.clone();
                async move { Self::kv(ch).describe_table(r).await }
            })
            .await?;
        table_info(resp.into_inner().table)
    }

    async fn write<T, F, Fut>(&self, keyed: Keyed<'_>, mut call: F) -> Result<T>
    where
        F: FnMut(Arc<Node>, pb::RequestId, u64) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        // Ends when this call does, or when its caller drops it (a timeout around it).
        let pending = self.session.begin();
        self.retry_as(
            |node, left| {
                let rid = to_pb(pending.retry());
                call(node, rid, left.as_millis() as u64)
            },
            true,
            Some(keyed),
        )
        .await
    }

    /// Sends `op` to `node` in its next batch.
    async fn batched(
        node: Arc<Node>,
        op: pb::batch_op::Op,
        bytes: usize,
    ) -> std::result::Result<pb::BatchResult, tonic::Status> {
        let op = pb::BatchOp { op: Some(op) };
        node.batcher.submit(op, bytes).await
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let resp = self
            .write(Keyed { table, key }, |node, rid, ms| {
                let op = pb::batch_op::Op::Put(pb::PutRequest {
                    table: table.to_string(),
                    key: key.to_vec(),
                    value: value.to_vec(),
                    request_id: Some(rid),
                    timeout_ms: ms,
                });
                Self::batched(node, op, key.len() + value.len())
            })
            .await?;
        self.learn(table, resp.leader);
        Ok(())
    }

    /// Removes `key`; removing an absent key is not an error.
    pub async fn delete(&self, table: &str, key: &[u8]) -> Result<()> {
        let resp = self
            .write(Keyed { table, key }, |node, rid, ms| {
                let op = pb::batch_op::Op::Delete(pb::DeleteRequest {
                    table: table.to_string(),
                    key: key.to_vec(),
                    request_id: Some(rid),
                    timeout_ms: ms,
                });
                Self::batched(node, op, key.len())
            })
            .await?;
        self.learn(table, resp.leader);
        Ok(())
    }

    async fn get_with(
        &self,
        table: &str,
        key: &[u8],
        consistency: pb::Consistency,
    ) -> Result<Option<Vec<u8>>> {
        // Stale reads may be served by any replica: they stay spread over the endpoints.
        let keyed = (consistency == pb::Consistency::Linearizable).then_some(Keyed { table, key });
        let resp = self
            .retry_as(
                |node, left| {
                    let op = pb::batch_op::Op::Get(pb::GetRequest {
                        table: table.to_string(),
                        key: key.to_vec(),
                        consistency: consistency as i32,
                        timeout_ms: left.as_millis() as u64,
                    });
                    Self::batched(node, op, key.len())
                },
                false,
                keyed,
            )
            .await?;
        self.learn(table, resp.leader);
        Ok(resp.found.then_some(resp.value))
    }

    /// Reads `key` linearizably.
    pub async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(table, key, pb::Consistency::Linearizable)
            .await
    }

    /// Reads `key` from whichever replica answers, possibly stale.
    pub async fn get_stale(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(table, key, pb::Consistency::Stale).await
    }

    /// One page of keys in byte order.
    pub async fn list(&self, table: &str, opts: &ListOptions) -> Result<ListPage> {
        let consistency = if opts.stale {
            pb::Consistency::Stale
        } else {
            pb::Consistency::Linearizable
        };
        let resp = self
            .retry(|ch, left| {
                let r = pb::ListRequest {
                    table: table.to_string(),
                    prefix: opts.prefix.clone(),
                    start: opts.start.clone(),
                    end: opts.end.clone(),
                    limit: opts.limit,
                    cursor: opts.cursor.clone(),
                    values: opts.values,
                    consistency: consistency as i32,
                    timeout_ms: left.as_millis() as u64,
                };
                async move { Self::kv(ch).list(r).await }
            })
            .await?
            .into_inner();
        Ok(ListPage {
            keys: resp.keys,
            values: resp.values,
            cursor: resp.has_more.then_some(resp.cursor),
        })
    }

    /// A page of a backup of `table` from `cursor` (empty: its start), of about
    /// `max_bytes` of keys and values (0: 4 MiB). Each partition is read from one view, as
    /// of one moment. A `NotFound` error means that view is gone: drop the partition's rows
    /// read so far and go on from the last page's `restart`.
    pub async fn export(&self, table: &str, cursor: &[u8], max_bytes: u32) -> Result<ExportPage> {
        let resp = self
            .retry(|ch, left| {
                let r = pb::ExportRequest {
                    table: table.to_string(),
                    cursor: cursor.to_vec(),
                    max_bytes,
                    timeout_ms: left.as_millis() as u64,
                };
                async move { Self::kv(ch).export(r).await }
            })
            .await?
            .into_inner();
        Ok(ExportPage {
            keys: resp.keys,
            values: resp.values,
            cursor: (!resp.done).then_some(resp.cursor),
            restart: resp.restart,
            partition: resp.partition,
            partition_done: resp.partition_done,
        })
    }

    /// Registered nodes with liveness and load.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let resp = self
            .retry(|ch, _| {
                let r = pb::NodesRequest {};
                async move { AdminClient::new(ch).nodes(r).await }
            })
            .await?;
        Ok(resp
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| NodeInfo {
                id: n.id,
                addr: n.addr,
                http_addr: n.http_addr,
                live: n.live,
                replicas: n.replicas,
                leaders: n.leaders,
                metadata_member: n.metadata_member,
                metadata_leader: n.metadata_leader,
                draining: n.draining,
            })
            .collect())
    }

    /// Partitions of `table` (or of every table when empty), by table name.
    pub async fn partitions(&self, table: &str) -> Result<Vec<(String, Vec<PartitionInfo>)>> {
        let req = pb::PartitionsRequest {
            table: table.to_string(),
        };
        let resp = self
            .retry(|ch, _| {
                let r = req.clone();
                async move { AdminClient::new(ch).partitions(r).await }
            })
            .await?;
        Ok(resp
            .into_inner()
            .tables
            .into_iter()
            .map(|t| {
                (
                    t.table,
                    t.partitions.into_iter().map(partition_info).collect(),
                )
            })
            .collect())
    }

    /// Splits the partition of `table` holding `key` so that `key` starts a new partition;
    /// answers the left and right halves.
    pub async fn split(&self, table: &str, key: &[u8]) -> Result<(PartitionInfo, PartitionInfo)> {
        let req = pb::SplitRequest {
            table: table.to_string(),
            key: key.to_vec(),
        };
        let attempts = std::cell::Cell::new(0u32);
        let res = self
            .retry(|ch, _| {
                attempts.set(attempts.get() + 1);
                let r = req.clone();
                async move { AdminClient::new(ch).split(r).await }
            })
            .await;
        match res {
            Ok(resp) => {
                let r = resp.into_inner();
                match (r.left, r.right) {
                    (Some(l), Some(r)) => Ok((partition_info(l), partition_info(r))),
                    _ => Err(Error::new(
                        ErrorCode::Internal,
                        "the server answered a split without its halves",
                    )),
                }
            }
            // An earlier attempt whose answer was lost may have made this very split. The
            // metadata records the right half shortly after the partition applied the split,
            // so look for it until the deadline.
            Err(e) if e.code == ErrorCode::Conflict && attempts.get() > 1 => {
                let deadline = Instant::now() + self.timeout;
                loop {
                    let t = self.describe_table(table).await?;
                    let right = t.partitions.iter().position(|p| p.start == key);
                    match right {
                        Some(i) if i > 0 => {
                            return Ok((t.partitions[i - 1].clone(), t.partitions[i].clone()));
                        }
                        _ if Instant::now() >= deadline => return Err(e),
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Starts moving `partition`'s replica from node `from` to node `to`; returns the
    /// operation at once ([`Client::operations`] shows its progress).
    pub async fn move_replica(&self, partition: u64, from: u64, to: u64) -> Result<OperationInfo> {
        let req = pb::MoveRequest {
            partition,
            from,
            to,
        };
        let r = self
            .retry(|ch, _| async move { AdminClient::new(ch).r#move(req).await })
            .await?
            .into_inner();
        r.operation.map(operation_info).ok_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                "the server answered a move without its operation",
            )
        })
    }

    /// Running and recent operations, newest first.
    pub async fn operations(&self) -> Result<Vec<OperationInfo>> {
        let r = self
            .retry(|ch, _| async move {
                AdminClient::new(ch)
                    .operations(pb::OperationsRequest {})
                    .await
            })
            .await?
            .into_inner();
        Ok(r.operations.into_iter().map(operation_info).collect())
    }

    /// The controller's state and recent decisions.
    pub async fn controller(&self) -> Result<ControllerInfo> {
        let r = self
            .retry(|ch, _| async move {
                AdminClient::new(ch)
                    .controller(pb::ControllerRequest {})
                    .await
            })
            .await?
            .into_inner();
        Ok(controller_info(r))
    }

    /// Pauses (`true`) or resumes the controller; returns its state.
    pub async fn set_controller_paused(&self, paused: bool) -> Result<ControllerInfo> {
        let req = pb::SetControllerPausedRequest { paused };
        let r = self
            .retry(|ch, _| async move { AdminClient::new(ch).set_controller_paused(req).await })
            .await?
            .into_inner();
        Ok(controller_info(r))
    }

    /// Retires node `node` for good (it must hold no replica).
    pub async fn remove_node(&self, node: u64) -> Result<()> {
        let req = pb::RemoveNodeRequest { node };
        self.retry(|ch, _| async move { AdminClient::new(ch).remove_node(req).await })
            .await?;
        Ok(())
    }

    /// Adds a user of a secure cluster with `role` (`admin`, `readwrite`, `readonly`),
    /// limited to tables starting with `tables` (empty: all); answers its token, which the
    /// cluster shows only this once.
    pub async fn add_user(&self, name: &str, role: &str, tables: &str) -> Result<String> {
        let req = pb::AddUserRequest {
            user: Some(pb::User {
                name: name.into(),
                role: role.into(),
                tables: tables.into(),
                token_sha256: Vec::new(),
            }),
        };
        // A retry after a lost answer is refused ALREADY_EXISTS (the token was never seen):
        // remove the user and add it again.
        let r = self
            .retry(|ch, _| {
                let req = req.clone();
                async move { AdminClient::new(ch).add_user(req).await }
            })
            .await?;
        Ok(r.into_inner().token)
    }

    /// Every user with the SHA-256 of its token, as a backup keeps them (admins only).
    pub async fn user_records(&self) -> Result<Vec<UserRecord>> {
        let r = self
            .retry(|ch, _| async move {
                AdminClient::new(ch)
                    .list_users(pb::ListUsersRequest { token_hashes: true })
                    .await
            })
            .await?;
        let mut records = Vec::new();
        for u in r.into_inner().users {
            let Ok(token_sha256) = <[u8; 32]>::try_from(u.token_sha256.as_slice()) else {
                // A node of an older build ignores the request's `token_hashes`.
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!(
                        "the cluster answered user {:?} without its token hash: its nodes are older than this client; upgrade them first",
                        u.name
                    ),
                ));
            };
            records.push(UserRecord {
                name: u.name,
                role: u.role,
                tables: u.tables,
                token_sha256,
            });
        }
        Ok(records)
    }

    /// Adds user `u` with the token it had (a restore): its old token works, and no new
    /// one is made. Refused ALREADY_EXISTS if a user of that name, or of that token, exists.
    pub async fn restore_user(&self, u: &UserRecord) -> Result<()> {
        let req = pb::AddUserRequest {
            user: Some(pb::User {
                name: u.name.clone(),
                role: u.role.clone(),
                tables: u.tables.clone(),
                token_sha256: u.token_sha256.to_vec(),
            }),
        };
        let r = self
            .retry(|ch, _| {
                let req = req.clone();
                async move { AdminClient::new(ch).add_user(req).await }
            })
            .await?;
        if !r.into_inner().token.is_empty() {
            // A node of an older build ignored the hash and made a new token.
            return Err(Error::new(
                ErrorCode::Internal,
                format!(
                    "the cluster gave user {:?} a new token instead of its saved one: its nodes are older than this client; upgrade them, then `cairn user remove {}` and restore again",
                    u.name, u.name
                ),
            ));
        }
        Ok(())
    }

    /// Users of a secure cluster: `(name, role, table prefix)`.
    pub async fn list_users(&self) -> Result<Vec<(String, String, String)>> {
        let r = self
            .retry(|ch, _| async move {
                AdminClient::new(ch)
                    .list_users(pb::ListUsersRequest {
                        token_hashes: false,
                    })
                    .await
            })
            .await?;
        Ok(r.into_inner()
            .users
            .into_iter()
            .map(|u| (u.name, u.role, u.tables))
            .collect())
    }

    /// Removes a user; its token stops working within seconds.
    pub async fn remove_user(&self, name: &str) -> Result<()> {
        let req = pb::RemoveUserRequest { name: name.into() };
        self.retry(|ch, _| {
            let req = req.clone();
            async move { AdminClient::new(ch).remove_user(req).await }
        })
        .await?;
        Ok(())
    }

    /// Starts (`true`) or stops draining node `node`.
    pub async fn set_draining(&self, node: u64, draining: bool) -> Result<()> {
        let req = pb::SetDrainingRequest { node, draining };
        self.retry(|ch, _| async move { AdminClient::new(ch).set_draining(req).await })
            .await?;
        Ok(())
    }

    /// Moves leadership of `partition` to its replica on node `to`; returns once it leads.
    pub async fn transfer_leader(&self, partition: u64, to: u64) -> Result<()> {
        let req = pb::TransferLeaderRequest { partition, to };
        self.retry(|ch, _| async move { AdminClient::new(ch).transfer_leader(req).await })
            .await?;
        Ok(())
    }

    /// Each replica's digest of `partition`, with the partition as the metadata records
    /// it. A node hashes its replica whole, so a large partition is given `timeout`.
    pub async fn verify_partition(
        &self,
        partition: u64,
        timeout: Duration,
    ) -> Result<(PartitionInfo, Vec<ReplicaDigest>)> {
        let req = pb::VerifyPartitionRequest {
            partition,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let r = self
            .retry_within(timeout, |n: Arc<Node>, _| async move {
                AdminClient::new(n.channel.clone())
                    .verify_partition(req)
                    .await
            })
            .await?
            .into_inner();
        let p = r.partition.ok_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                "the server answered without the partition",
            )
        })?;
        let replicas = r
            .replicas
            .into_iter()
            .map(|d| ReplicaDigest {
                node: d.node,
                error: (!d.error.is_empty()).then_some(d.error),
                applied: d.applied,
                rows: d.rows,
                sha256: d.sha256,
                range: (d.start, d.has_end.then_some(d.end)),
            })
            .collect();
        Ok((partition_info(p), replicas))
    }

    /// Engine key counts for a table on the node behind the first endpoint.
    pub async fn engine_stats(&self, table_id: u64, partitions: &[u64]) -> Result<EngineStats> {
        let node = &self.nodes[0];
        let req = pb::EngineStatsRequest {
            table_id,
            partitions: partitions.to_vec(),
        };
        let r = AdminClient::new(node.channel.clone())
            .engine_stats(req)
            .await
            .map_err(|s| Error::from_status(&s, &node.addr))?
            .into_inner();
        Ok(EngineStats {
            data_keys: r.data_keys,
            raft_keys: r.raft_keys,
            replica_keys: r.replica_keys,
            open_replicas: r.open_replicas,
        })
    }
}
