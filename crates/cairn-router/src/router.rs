//! Routing with retry on stale routes until the request deadline.

use crate::{
    MetaReply, MetaRequest, PartitionOp, PartitionReply, PartitionRequest, RouteCache, TableRoute,
};
use cairn_types::{Error, NodeId, PartitionDesc, Result, TableDesc};

/// The smallest key after `k`.
fn successor(k: &[u8]) -> Vec<u8> {
    let mut s = k.to_vec();
    s.push(0);
    s
}
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Default time a request may take, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Bytes of keys and values after which a List page ends (with a cursor), whatever its
/// `limit`: a page of 10,000 values of 1 MiB would hold 10 GiB in the serving nodes.
pub const LIST_PAGE_BYTES: u64 = 4 << 20;

/// Longest single attempt, so a hung replica (an isolated leader waiting for a quorum it
/// cannot reach) leaves time to try another.
const MAX_ATTEMPT: Duration = Duration::from_secs(2);

/// An attempt may take half of the time left, but at least this (or what is left).
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// Runs one attempt for at most half the time left (within [`MIN_ATTEMPT`] ..
/// [`MAX_ATTEMPT`]) and never past `deadline`, so a hung replica leaves time for another.
///
/// A combinator, not an `async fn` or block: those keep `f` twice in their state (as an
/// argument or capture, and again as the future awaited), and every request's future holds
/// this one.
pub(crate) fn bounded<T>(
    deadline: Instant,
    f: impl Future<Output = Result<T>>,
) -> impl Future<Output = Result<T>> {
    use futures::FutureExt;
    let left = deadline.saturating_duration_since(Instant::now());
    let budget = (left / 2).clamp(MIN_ATTEMPT, MAX_ATTEMPT).min(left);
    tokio::time::timeout(budget, f).map(move |r| {
        r.unwrap_or_else(|_| Err(Error::Unavailable(format!("no answer within {budget:?}"))))
    })
}

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

/// One page of a List: rows from one partition, read in one linearizable read (or one
/// stale read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Keys and values in byte order.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the next page starts (inclusive), or `None` after the last page. A page can be
    /// short, even empty, and still have a next page: pages stop at partition boundaries.
    pub next: Option<Vec<u8>>,
}

/// A partition's answer and who gave it.
#[derive(Clone, Debug)]
pub struct Served {
    /// The partition as the route described it when the request was sent.
    pub partition: PartitionDesc,
    /// The node whose replica answered (for a linearizable request, the leader).
    pub node: NodeId,
    /// The answer.
    pub reply: PartitionReply,
}

/// Routes table and key requests to partition leaders.
pub struct Router<T> {
    transport: T,
    cache: RouteCache,
}

/// Pause before retry `attempt`: 20 ms, doubling, then [`cairn_types::MAX_RETRY_PAUSE`].
fn backoff(attempt: u32) -> Duration {
    cairn_types::retry_pause(Duration::from_millis(20), attempt)
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
            match bounded(deadline, self.transport.meta(req.clone())).await {
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
    pub async fn route(&self, table: &str, deadline: Instant) -> Result<Arc<TableRoute>> {
        cairn_types::validate_table_name(table)?;
        if let Some(r) = self.cache.get(table) {
            return Ok(r);
        }
        // Boxed: a cache miss is rare, and inline its metadata call would make every
        // request's future (which holds this one) several KiB larger.
        Box::pin(self.fetch(table, deadline)).await
    }

    /// The route of `table` from the metadata group (a linearizable read there), which
    /// then replaces the cached one.
    async fn fetch(&self, table: &str, deadline: Instant) -> Result<Arc<TableRoute>> {
        match self
            .meta(MetaRequest::GetTable(table.to_string()), deadline)
            .await?
        {
            MetaReply::Table(r) => {
                self.transport.learn(&r.nodes);
                let r = Arc::new(r);
                self.cache.insert_shared(r.clone());
                Ok(r)
            }
            other => Err(Error::Internal(format!(
                "unexpected metadata reply {other:?}"
            ))),
        }
    }

    /// Runs `op` on the leader of the partition that owns `key` (or, with `key == None`,
    /// on the partition `pick` chooses from the route), retrying on routing errors.
    pub async fn on_partition(
        &self,
        table: &str,
        pick: impl Fn(&TableRoute) -> Option<PartitionDesc>,
        op: impl Fn() -> PartitionOp,
        stale_ok: bool,
        deadline: Instant,
    ) -> Result<Served> {
        let mut attempt: u32 = 0;
        let mut last_err: Error;
        let mut skip = 0usize;
        let mut uncertain = false;
        loop {
            let route = self.route(table, deadline).await?;
            let Some(part) = pick(&route) else {
                // A route caught between a split's halves (one recorded, the other not yet):
                // fetch it again until the metadata has both.
                self.cache.invalidate(table);
                last_err = Error::Unavailable(format!(
                    "the route of table {table} has a gap where a split is being recorded"
                ));
                let pause = backoff(attempt);
                if Instant::now() + pause >= deadline {
                    return Err(last_err);
                }
                tokio::time::sleep(pause).await;
                attempt += 1;
                continue;
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
            let res = bounded(deadline, self.transport.partition(target, req)).await;
            match res {
                Ok(r) => {
                    if !stale_ok && hint != Some(target) {
                        self.cache.set_leader(table, part.id, target);
                    }
                    return Ok(Served {
                        partition: part,
                        node: target,
                        reply: r,
                    });
                }
                Err(Error::NotLeader {
                    leader: Some(l), ..
                }) if l != target => {
                    self.cache.set_leader(table, part.id, l);
                    skip = 0;
                    last_err = Error::Unavailable(format!("{} leader moved to {l}", part.id));
                }
                Err(Error::EpochMismatch { ref descs, .. }) if self.cache.merge(table, descs) => {
                    // The replica told us the current shape (a split): no metadata trip.
                    last_err =
                        Error::Unavailable(format!("{} changed shape; route patched", part.id));
                    skip = 0;
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
                    // A timeout or a lost answer: the attempt may have been applied.
                    uncertain |= matches!(e, Error::Unavailable(_));
                    last_err = e;
                }
                // A refusal of a client write (say DISK_FULL) after an attempt that may have
                // been applied does not prove the write did not happen. (Admin steps keep
                // their errors: callers read a Conflict as "already done".)
                Err(e)
                    if uncertain
                        && matches!(op(), PartitionOp::Put { .. } | PartitionOp::Delete { .. }) =>
                {
                    return Err(Error::Unavailable(format!(
                        "{table}: an earlier attempt got no answer and may have been applied; \
                         the last attempt failed with {e}"
                    )));
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
        Ok(self
            .keyed_at(table, key, op, stale_ok, deadline)
            .await?
            .reply)
    }

    /// [`Router::keyed`], also saying which partition and node answered.
    pub async fn keyed_at(
        &self,
        table: &str,
        key: &[u8],
        op: impl Fn() -> PartitionOp,
        stale_ok: bool,
        deadline: Instant,
    ) -> Result<Served> {
        let pick = |r: &TableRoute| r.locate(key).map(|(p, _)| p.clone());
        self.on_partition(table, pick, op, stale_ok, deadline).await
    }

    /// Lists up to `limit` rows with keys in `[start, end)` from the partition owning
    /// `start`, in one read: linearizable unless `stale`. The page also ends after about
    /// [`LIST_PAGE_BYTES`]; values are read only if `values`.
    #[allow(clippy::too_many_arguments)]
    pub async fn list(
        &self,
        table: &str,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        values: bool,
        stale: bool,
        deadline: Instant,
    ) -> Result<ListPage> {
        if end.as_ref().is_some_and(|e| *e <= start) {
            return Ok(ListPage::default());
        }
        // One row more than asked tells whether the partition has more.
        let op = || PartitionOp::Scan {
            start: start.clone(),
            end: end.clone(),
            limit: limit as u32 + 1,
            max_bytes: LIST_PAGE_BYTES,
            values,
            stale,
        };
        let Served {
            partition: part,
            reply,
            ..
        } = self
            .on_partition(
                table,
                |r| r.locate(&start).map(|(p, _)| p.clone()),
                op,
                stale,
                deadline,
            )
            .await?;
        let PartitionReply::Rows { mut rows, cut } = reply else {
            return Err(Error::Internal("scan answered without rows".into()));
        };
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(k, _)| successor(k))
        } else if cut {
            rows.last().map(|(k, _)| successor(k))
        } else {
            // The partition is exhausted; go on in the next one if the range does.
            part.range
                .end
                .clone()
                .filter(|pe| end.as_ref().is_none_or(|e| pe < e))
        };
        Ok(ListPage { rows, next })
    }

    /// Every partition's descriptor of `table`, fresh from the metadata group.
    pub async fn describe(&self, table: &str, deadline: Instant) -> Result<Arc<TableRoute>> {
        cairn_types::validate_table_name(table)?;
        self.cache.invalidate(table);
        // Not read through the cache: a request that fetched the route before a drop could
        // put the old one back between the invalidation and this read.
        self.fetch(table, deadline).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport whose calls each hold `BIG` bytes across an await, as a gRPC call does.
    struct Heavy;

    const BIG: usize = 4096;

    async fn hold_big<R>(r: R) -> R {
        let buf = [7u8; BIG];
        tokio::task::yield_now().await;
        std::hint::black_box(&buf);
        r
    }

    impl Transport for Heavy {
        async fn meta(&self, _req: MetaRequest) -> Result<MetaReply> {
            hold_big(Err(Error::Unavailable("no metadata here".into()))).await
        }
        fn learn(&self, _nodes: &[cairn_types::NodeDesc]) {}
        async fn partition(&self, _node: NodeId, _req: PartitionRequest) -> Result<PartitionReply> {
            hold_big(Ok(PartitionReply::Done)).await
        }
    }

    /// Every read and write on a node runs inside this future, allocated and moved whole,
    /// so it must hold one attempt's state once (not twice, as an `async fn` timeout did)
    /// and a route-cache miss's metadata call not at all (it is boxed).
    #[test]
    fn a_keyed_request_holds_the_transports_attempt_once() {
        let router = Router::new(Heavy);
        let get = || PartitionOp::Get {
            key: b"k".to_vec(),
            stale: false,
        };
        let fut = router.keyed_at("t", b"k", get, false, Instant::now());
        let size = std::mem::size_of_val(&fut);
        assert!(
            (BIG..BIG + 2048).contains(&size),
            "a keyed request's future is {size} bytes for a transport attempt of {BIG}"
        );
    }
}
