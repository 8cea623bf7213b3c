//! The multi-group Raft network: one gRPC channel per peer node carries the messages of
//! every group (openraft-multi's [`GroupRouter`] binds a group id to each message).
//!
//! Messages travel as postcard-encoded [`RaftRpc`] values inside the `Internal.Raft` call.

use crate::{TypeConfig, typ};
use cairn_proto::net::{SharedDialer, lazy_channel};
use cairn_proto::v1::Envelope;
use cairn_proto::v1::internal_client::InternalClient;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use openraft_multi::{GroupNetworkAdapter, GroupRouter};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::transport::Channel;

/// A Raft message for one group.
#[derive(Serialize, Deserialize)]
pub enum RaftRpc {
    /// AppendEntries (also heartbeats).
    Append(u64, AppendEntriesRequest<TypeConfig>),
    /// RequestVote.
    Vote(u64, VoteRequest<TypeConfig>),
    /// PreVote.
    PreVote(u64, VoteRequest<TypeConfig>),
    /// A whole snapshot.
    Snapshot(u64, typ::Vote, typ::SnapshotMeta, Vec<u8>),
    /// The leader hands leadership to the receiver, which campaigns at once.
    TransferLeader(u64, TransferLeaderRequest<TypeConfig>),
}

impl RaftRpc {
    /// The group the message is for.
    pub fn group(&self) -> u64 {
        match self {
            RaftRpc::Append(g, _)
            | RaftRpc::Vote(g, _)
            | RaftRpc::PreVote(g, _)
            | RaftRpc::Snapshot(g, ..)
            | RaftRpc::TransferLeader(g, _) => *g,
        }
    }
}

/// Handles an incoming message on the replica `raft` and encodes its answer.
pub async fn serve_raft_rpc(raft: &typ::Raft, rpc: RaftRpc) -> Vec<u8> {
    fn enc<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Vec<u8> {
        let r = r.map_err(|e| e.to_string());
        postcard::to_allocvec(&r).unwrap_or_default()
    }
    match rpc {
        RaftRpc::Append(_, req) => enc(raft.append_entries(req).await),
        RaftRpc::Vote(_, req) => enc(raft.vote(req).await),
        RaftRpc::PreVote(_, req) => enc(raft.pre_vote(req).await),
        RaftRpc::Snapshot(_, vote, meta, data) => enc(raft
            .install_full_snapshot(
                vote,
                typ::Snapshot {
                    meta,
                    snapshot: data,
                },
            )
            .await),
        RaftRpc::TransferLeader(_, req) => enc(raft.handle_transfer_leader(req).await),
    }
}

#[derive(Default)]
struct Peers {
    addrs: HashMap<u64, String>,
    clients: HashMap<u64, (String, InternalClient<Channel>)>,
}

/// Connections to peer nodes, shared by every group and by request forwarding.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    peers: Arc<RwLock<Peers>>,
    local_ip: Option<IpAddr>,
    dialer: SharedDialer,
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

    /// Records (or changes) the gRPC address of `node`.
    pub fn set_addr(&self, node: u64, addr: &str) {
        let mut p = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if p.addrs.get(&node).map(String::as_str) != Some(addr) {
            p.addrs.insert(node, addr.to_string());
        }
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
        let unreachable = |m: String| RPCError::Unreachable(Unreachable::new(&Msg(m)));
        let mut client = self
            .client(target)
            .ok_or_else(|| unreachable(format!("no address for node {target}")))?;
        let payload =
            postcard::to_allocvec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let call = client.raft(Envelope { payload });
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "node {target}: timed out after {ttl:?}"
                )));
            }
            Ok(Err(status)) => {
                return Err(unreachable(format!("node {target}: {}", status.message())));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let decoded: Result<T, String> = postcard::from_bytes(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|m| RPCError::Network(NetworkError::new(&Msg(m))))
    }
}

impl GroupRouter<TypeConfig, u64> for PeerNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &self,
        target: u64,
        group_id: u64,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(target, &RaftRpc::Append(group_id, rpc), option.hard_ttl())
            .await
    }

    async fn vote(
        &self,
        target: u64,
        group_id: u64,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(target, &RaftRpc::Vote(group_id, rpc), option.hard_ttl())
            .await
    }

    async fn pre_vote(
        &self,
        target: u64,
        group_id: u64,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(target, &RaftRpc::PreVote(group_id, rpc), option.hard_ttl())
            .await
    }

    async fn transfer_leader(
        &self,
        target: u64,
        group_id: u64,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            target,
            &RaftRpc::TransferLeader(group_id, req),
            option.hard_ttl(),
        )
        .await
    }

    async fn full_snapshot(
        &self,
        target: u64,
        group_id: u64,
        vote: typ::Vote,
        snapshot: typ::Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc = RaftRpc::Snapshot(group_id, vote, snapshot.meta, snapshot.snapshot);
        tokio::select! {
            // Fixed order: tokio's random pick would make a simulation unrepeatable.
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.call::<SnapshotResponse<TypeConfig>>(target, &rpc, option.hard_ttl()) => r.map_err(|e| match e {
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
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = GroupNetworkAdapter<TypeConfig, u64, PeerNetwork>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        self.peers.set_addr(target, &node.addr);
        GroupNetworkAdapter::new(self.peers.clone(), target, self.group)
    }
}
