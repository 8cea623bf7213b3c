//! How this node's router reaches the metadata leader and partition replicas: in-process
//! when they are local, over the peer's `Internal` gRPC service otherwise.

use crate::core::Core;
use cairn_proto::v1::Envelope;
use cairn_router::{MetaReply, MetaRequest, PartitionReply, PartitionRequest, Transport};
use cairn_types::{Error, NodeDesc, NodeId, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Per-call limit for one hop; the router's deadline bounds the whole request.
const HOP_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn encode<T: Serialize>(v: &T) -> Envelope {
    Envelope {
        payload: postcard::to_allocvec(v).unwrap_or_default(),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(e: &Envelope) -> Result<T> {
    decode_bytes(&e.payload)
}

/// Decodes an internal message carried outside an [`Envelope`] (a `RaftStream` frame).
pub(crate) fn decode_bytes<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    postcard::from_bytes(payload)
        .map_err(|err| Error::InvalidArgument(format!("malformed internal message: {err}")))
}

/// The router's transport on a node.
#[derive(Clone)]
pub(crate) struct NodeTransport {
    pub(crate) core: Arc<Core>,
}

impl NodeTransport {
    /// Asks node `node` itself (not the metadata leader) a request its internal service
    /// answers without forwarding, such as its diagnostics.
    pub(crate) async fn meta_of(&self, node: NodeId, req: &MetaRequest) -> Result<MetaReply> {
        let env = encode(req);
        self.remote(node, HOP_TIMEOUT, |mut c| async move { c.meta(env).await })
            .await
    }

    /// [`Transport::partition`] with `hop` as the per-hop limit: longer for the rare
    /// request a replica takes long over (hashing a whole replica).
    pub(crate) async fn partition_within(
        &self,
        node: NodeId,
        req: PartitionRequest,
        hop: Duration,
    ) -> Result<PartitionReply> {
        if node == self.core.id {
            return self.core.handle_partition(req).await;
        }
        self.core.metrics.forwarded();
        let env = encode(&req);
        // Boxed: a gRPC call's future is KiBs, and inline it would grow every request's
        // future, forwarded or not (each one is allocated and moved whole).
        Box::pin(self.remote(node, hop, |mut c| async move { c.partition(env).await })).await
    }

    /// Calls node `node`'s internal service, allowing the call `hop`.
    async fn remote<T: DeserializeOwned, F, Fut>(
        &self,
        node: NodeId,
        hop: Duration,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(
            cairn_proto::v1::internal_client::InternalClient<tonic::transport::Channel>,
        ) -> Fut,
        Fut: std::future::Future<
                Output = std::result::Result<tonic::Response<Envelope>, tonic::Status>,
            >,
    {
        let client = self
            .core
            .peers
            .client(node.0)
            .ok_or_else(|| Error::Unavailable(format!("no address known for node {node}")))?;
        match tokio::time::timeout(hop, call(client)).await {
            Err(_) => Err(Error::Unavailable(format!(
                "node {node} did not answer within {hop:?}"
            ))),
            Ok(Err(status)) => Err(Error::Unavailable(format!(
                "node {node}: {}",
                status.message()
            ))),
            Ok(Ok(resp)) => decode::<std::result::Result<T, Error>>(resp.get_ref())?,
        }
    }
}

impl Transport for NodeTransport {
    async fn meta(&self, req: MetaRequest) -> Result<MetaReply> {
        let hint = *self
            .core
            .meta_leader_hint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut candidates: Vec<NodeId> = hint.into_iter().collect();
        candidates.extend(
            self.core
                .meta_members()
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| Some(*n) != hint),
        );
        let mut last = Error::Unavailable("the cluster lists no metadata member".into());
        let mut tried = Vec::new();
        let mut i = 0;
        while i < candidates.len() && tried.len() < candidates.len() + 2 {
            let node = candidates[i];
            i += 1;
            if tried.contains(&node) {
                continue;
            }
            tried.push(node);
            let res = if node == self.core.id && self.core.meta().is_some() {
                self.core.handle_meta(req.clone()).await
            } else {
                let env = encode(&req);
                self.remote(node, HOP_TIMEOUT, |mut c| async move { c.meta(env).await })
                    .await
            };
            match res {
                Err(Error::NotLeader {
                    leader: Some(l), ..
                }) => {
                    *self
                        .core
                        .meta_leader_hint
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(l);
                    if !tried.contains(&l) {
                        candidates.insert(i, l);
                    }
                    last = Error::Unavailable(format!("metadata leader moved to {l}"));
                }
                Err(e) if e.is_retryable() => last = e,
                other => {
                    if other.is_ok() {
                        *self
                            .core
                            .meta_leader_hint
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(node);
                    }
                    return other;
                }
            }
        }
        Err(last)
    }

    fn learn(&self, nodes: &[NodeDesc]) {
        for n in nodes {
            self.core.peers.set_addr(n.id.0, &n.addr);
        }
    }

    async fn partition(&self, node: NodeId, req: PartitionRequest) -> Result<PartitionReply> {
        self.partition_within(node, req, HOP_TIMEOUT).await
    }
}
