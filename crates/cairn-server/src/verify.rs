//! Replica digests: what `cairn admin verify` compares across a partition's replicas, as
//! `etcdctl endpoint hashkv` does across etcd's members.

use std::time::Duration;

use tokio::time::Instant;

use cairn_router::{PartitionOp, PartitionReply, PartitionRequest, ReplicaDigest};
use cairn_storage::{PageLimit, ReadView, Space, keys};
use cairn_types::{Error, NodeId, PartitionDesc, PartitionId, Result};
use sha2::{Digest, Sha256};

use crate::core::Core;
use crate::node::Node;

/// How much of a partition one engine read takes while hashing it.
const DIGEST_PAGE: PageLimit = PageLimit {
    rows: 4096,
    bytes: 4 << 20,
    values: true,
};

/// One replica hashed at a time on a node: a hash reads the replica whole and cannot be
/// stopped once started, so callers that gave up and asked again must not pile scans up.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

impl Core {
    /// The digest of this node's replica of `partition`, from one read view of the engine:
    /// its rows and the entry it last applied are of the same moment. Hashing runs on a
    /// blocking thread, as a partition may hold gigabytes.
    pub(crate) async fn replica_digest(&self, partition: PartitionId) -> Result<PartitionReply> {
        let permit = HASHING
            .acquire()
            .await
            .map_err(|e| Error::Internal(format!("hashing {partition}: {e}")))?;
        let engine = self.engine.clone();
        let d = tokio::task::spawn_blocking(move || {
            let _held = permit;
            let view = engine.read_view()?;
            digest(&*view, partition)
        })
        .await
        .map_err(|e| Error::Internal(format!("the digest of {partition} stopped: {e}")))??;
        Ok(PartitionReply::Digest(d))
    }
}

/// The digest of replica `partition` in `view`.
fn digest(view: &dyn ReadView, partition: PartitionId) -> Result<ReplicaDigest> {
    let storage = |e: cairn_storage::Error| Error::Internal(format!("{partition}: {e}"));
    let Some((applied, desc)) = cairn_raft::applied_in_view(view, partition)
        .map_err(|e| Error::Internal(format!("{partition}: {e}")))?
    else {
        return Err(Error::Unavailable(format!(
            "the replica of {partition} here is installing a snapshot, has applied nothing \
             yet, or belongs to a dropped table; verify it again in a moment"
        )));
    };
    let (start, end) =
        keys::data_range(desc.table_id, &desc.range.start, desc.range.end.as_deref());
    let mut hash = Sha256::new();
    let mut rows = 0u64;
    let scan = |s: &[u8], e: Option<&[u8]>, l| view.scan_page(Space::Data, s, e, l);
    cairn_storage::for_each_page(scan, &start, end.as_deref(), DIGEST_PAGE, |page| {
        for (k, v) in &page {
            // Lengths first, so that no two different sets of rows hash alike.
            hash.update((k.len() as u64).to_be_bytes());
            hash.update(k);
            hash.update((v.len() as u64).to_be_bytes());
            hash.update(v);
        }
        rows += page.len() as u64;
        Ok::<_, cairn_storage::Error>(())
    })
    .map_err(storage)?;
    Ok(ReplicaDigest {
        applied,
        range: desc.range,
        rows,
        sha256: hash.finalize().to_vec(),
    })
}

impl Node {
    /// Each replica's digest of `partition`, asked of every replica's node at once, with
    /// the partition's descriptor as the metadata records it. A replica that cannot answer
    /// (its node down, a snapshot being installed) answers its error.
    pub async fn verify_partition(
        &self,
        partition: PartitionId,
        deadline: Instant,
    ) -> Result<(PartitionDesc, Vec<(NodeId, Result<ReplicaDigest>)>)> {
        let (_, p) = self.partition_route(partition, deadline).await?;
        let asks = p.replicas.iter().map(|n| {
            let req = PartitionRequest {
                partition,
                epoch: p.epoch,
                table: p.table_id,
                op: PartitionOp::Digest,
            };
            async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let ask = self.router.transport().partition_within(*n, req, left);
                let answer = tokio::time::timeout(left, ask).await.unwrap_or_else(|_| {
                    Err(Error::Unavailable(format!(
                        "{n} did not answer within {:?}",
                        left.max(Duration::from_millis(1))
                    )))
                });
                let digest = answer.and_then(|reply| match reply {
                    PartitionReply::Digest(d) => Ok(d),
                    other => Err(Error::Internal(format!("{n} answered {other:?}"))),
                });
                (*n, digest)
            }
        });
        let answers = futures::future::join_all(asks).await;
        Ok((p, answers))
    }
}
