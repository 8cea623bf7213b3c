//! Routing with retry on stale routes until the request deadline.

use crate::{
    MetaReply, MetaRequest, PartitionOp, PartitionReply, PartitionRequest, RouteCache, TableRoute,
};
use cairn_types::{Error, NodeId, PartitionDesc, Result, TableDesc};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Default time a request may take, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// How the router reaches the metadata group and partition replicas.
pub trait Transport: Send + Sync + 'static {
    /// Sends a request to the metadata leader (finding it is the transport's job).
    fn meta(&self, req: MetaRequest) -> impl Future<Output = Result<MetaReply>> + Send;
    /// Learns node addresses from a route.
    fn learn(&self, nodes: &[cairn_types::NodeDesc]);
    /// Sends a request to the replica of a partition on `node`.
    fn partition(
        &self,
        node: NodeId,
        req: PartitionRequest,
    ) -> impl Future<Output = Result<PartitionReply>> + Send;
}

/// One page of a List.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Keys and values in byte order.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether keys may remain after the last row.
    pub more: bool,
}

/// Routes table and key requests to partition leaders.
pub struct Router<T> {
    transport: T,
    cache: RouteCache,
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((20u64 << attempt.min(5)).min(500))
}

impl<T: Transport> Router<T> {
    /// A router with an empty cache.
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            cache: RouteCache::new(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The route cache.
    pub fn cache(&self) -> &RouteCache {
        &self.cache
    }

    /// Sends a metadata request, retrying retryable failures until `deadline`.
    pub async fn meta(&self, req: MetaRequest, deadline: Instant) -> Result<MetaReply> {
        let mut attempt = 0;
        loop {
            match self.transport.meta(req.clone()).await {
                Err(e) if e.is_retryable() && Instant::now() + backoff(attempt) < deadline => {
                    tracing::debug!("metadata request retry: {e}");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) if e.is_retryable() => {
                    return Err(Error::Unavailable(format!("metadata group: {e}")));
                }
                other => return other,
            }
        }
    }

    /// The route of `table`, from the cache or the metadata group.
    pub async fn route(&self, table: &str, deadline: Instant) -> Result<TableRoute> {
        cairn_types::validate_table_name(table)?;
        if let Some(r) = self.cache.get(table) {
            return Ok(r);
        }
        match self
            .meta(MetaRequest::GetTable(table.to_string()), deadline)
            .await?
        {
            MetaReply::Table(r) => {
                self.transport.learn(&r.nodes);
                self.cache.insert(r.clone());
                Ok(r)
            }
            other => Err(Error::Internal(format!(
                "unexpected metadata reply {other:?}"
            ))),
        }
    }

    /// Runs `op` on the leader of the partition that owns `key` (or, with `key == None`,
    /// on the partition `pick` chooses from the route), retrying on routing errors.
    async fn on_partition(
        &self,
        table: &str,
        pick: impl Fn(&TableRoute) -> Option<PartitionDesc>,
        op: impl Fn() -> PartitionOp,
        stale_ok: bool,
        deadline: Instant,
    ) -> Result<PartitionReply> {
        let mut attempt: u32 = 0;
        let mut last_err: Error;
        let mut skip = 0usize;
        loop {
            let route = self.route(table, deadline).await?;
            let Some(part) = pick(&route) else {
                return Err(Error::Internal(format!(
                    "table {table} has no partition for the request"
                )));
            };
            let hint = route.leaders.get(&part.id).copied();
            // Try the hinted leader first, then the other replicas in turn.
            let mut order: Vec<NodeId> = hint.into_iter().collect();
            order.extend(part.replicas.iter().copied().filter(|n| Some(*n) != hint));
            let Some(target) = order.get(skip % order.len().max(1)).copied() else {
                return Err(Error::Internal(format!("{} has no replicas", part.id)));
            };
            let req = PartitionRequest {
                partition: part.id,
                epoch: part.epoch,
                table: part.table_id,
                op: op(),
            };
            let res = self.transport.partition(target, req).await;
            match res {
                Ok(r) => {
                    if !stale_ok && hint != Some(target) {
                        self.cache.set_leader(table, part.id, target);
                    }
                    return Ok(r);
                }
                Err(Error::NotLeader {
                    leader: Some(l), ..
                }) if l != target => {
                    self.cache.set_leader(table, part.id, l);
                    skip = 0;
                    last_err = Error::Unavailable(format!("{} leader moved to {l}", part.id));
                }
                Err(
                    e @ (Error::EpochMismatch { .. }
                    | Error::KeyNotInRange(_)
                    | Error::PartitionNotFound(_)),
                ) => {
                    self.cache.invalidate(table);
                    last_err = e;
                }
                Err(e) if e.is_retryable() => {
                    self.cache.clear_leader(table, part.id);
                    skip += 1;
                    last_err = e;
                }
                Err(e) => return Err(e),
            }
            let pause = backoff(attempt);
            if Instant::now() + pause >= deadline {
                return Err(Error::Unavailable(format!(
                    "{table}: no answer before the deadline; last error: {last_err}"
                )));
            }
            if attempt > 0 || skip > 0 {
                tokio::time::sleep(pause).await;
            }
            attempt += 1;
        }
    }

    /// Runs a keyed operation on the partition owning `key`.
    pub async fn keyed(
        &self,
        table: &str,
        key: &[u8],
        op: impl Fn() -> PartitionOp,
        stale_ok: bool,
        deadline: Instant,
    ) -> Result<PartitionReply> {
        self.on_partition(
            table,
            |r| r.locate(key).map(|(p, _)| p.clone()),
            op,
            stale_ok,
            deadline,
        )
        .await
    }

    /// Lists up to `limit` rows with keys in `[start, end)`, walking partitions in order;
    /// each partition's part is read linearizably unless `stale`.
    pub async fn list(
        &self,
        table: &str,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        stale: bool,
        deadline: Instant,
    ) -> Result<ListPage> {
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut from = start;
        loop {
            let want = limit - rows.len();
            // Ask one more row than needed so we know whether more remain.
            let reply = self
                .keyed(
                    table,
                    &from,
                    || PartitionOp::Scan {
                        start: from.clone(),
                        end: end.clone(),
                        limit: want as u32 + 1,
                        stale,
                    },
                    stale,
                    deadline,
                )
                .await?;
            let PartitionReply::Rows(mut got) = reply else {
                return Err(Error::Internal("scan answered without rows".into()));
            };
            if got.len() > want {
                got.truncate(want);
                rows.extend(got);
                return Ok(ListPage { rows, more: true });
            }
            rows.extend(got);
            // Continue in the next partition, if any and if the range goes on.
            let route = self.route(table, deadline).await?;
            let Some((part, _)) = route.locate(&from) else {
                return Ok(ListPage { rows, more: false });
            };
            let Some(next) = part.range.end.clone() else {
                return Ok(ListPage { rows, more: false });
            };
            if end.as_ref().is_some_and(|e| *e <= next) {
                return Ok(ListPage { rows, more: false });
            }
            if rows.len() == limit {
                return Ok(ListPage { rows, more: true });
            }
            from = next;
        }
    }

    /// Every partition's descriptor of `table`, fresh from the metadata group.
    pub async fn describe(&self, table: &str, deadline: Instant) -> Result<TableRoute> {
        self.cache.invalidate(table);
        self.route(table, deadline).await
    }

    /// Every table.
    pub async fn tables(&self, deadline: Instant) -> Result<Vec<TableDesc>> {
        match self.meta(MetaRequest::ListTables, deadline).await? {
            MetaReply::Tables(t) => Ok(t),
            other => Err(Error::Internal(format!(
                "unexpected metadata reply {other:?}"
            ))),
        }
    }
}
