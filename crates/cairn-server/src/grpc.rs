//! The gRPC services: `Kv` (clients), `Admin` (operators) and `Internal` (peers).

use crate::auth::Shown;
use crate::node::Node;
use crate::transport::{decode, decode_bytes, encode};
use cairn_proto::v1::{self as pb, Envelope, admin_server, internal_server, kv_server};
use cairn_raft::{RaftRpc, serve_raft_rpc};
use cairn_router::{DEFAULT_DEADLINE, MetaReply, MetaRequest, PartitionRequest, TableRoute};
use cairn_types::Access;
use cairn_types::{
    ClientId, Error, ErrorCode, META_GROUP, PartitionDesc, PartitionId, RequestId, TableId,
};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// Converts an error to a Status whose details carry the stable code and message.
pub(crate) fn status(e: Error) -> Status {
    let code = e.code();
    let grpc = match code {
        ErrorCode::InvalidArgument | ErrorCode::TooLarge => tonic::Code::InvalidArgument,
        ErrorCode::TableNotFound | ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::Conflict => tonic::Code::FailedPrecondition,
        ErrorCode::NodeRemoved => tonic::Code::PermissionDenied,
        ErrorCode::DiskFull => tonic::Code::ResourceExhausted,
        ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorCode::NotEnoughNodes => tonic::Code::FailedPrecondition,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::Internal => tonic::Code::Internal,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
    };
    let message = e.to_string();
    let info = pb::ErrorInfo {
        code: code.as_str().to_string(),
        message: message.clone(),
    };
    Status::with_details(grpc, message, info.encode_to_vec().into())
}

fn deadline(timeout_ms: u64) -> Instant {
    let t = if timeout_ms == 0 {
        DEFAULT_DEADLINE
    } else {
        Duration::from_millis(timeout_ms.min(600_000))
    };
    // Finish a little before the caller gives up, so that a failed attempt still answers
    // (and the route cache still learns from it) instead of being cancelled mid-way.
    Instant::now() + t - (t / 10).min(Duration::from_millis(100))
}

/// The write id of a request from `user` (none on an insecure node). A client draws its
/// own id; on a secure node the id is scoped to the user, so that a user who learned
/// another's client id cannot make that client's writes look like duplicates (and be
/// dropped), nor its own look like that client's.
fn request_id(r: Option<pb::RequestId>, user: Option<&str>) -> Option<RequestId> {
    r.filter(|r| r.client != 0 && r.seq != 0)
        .map(|r| RequestId {
            client: ClientId(user.map_or(r.client, |u| scoped_client(u, r.client))),
            seq: r.seq,
            first_incomplete: r.first_incomplete,
        })
}

/// Client id `client` of user `user`, as the partitions record it.
fn scoped_client(user: &str, client: u64) -> u64 {
    crate::auth::stable_id([user.as_bytes(), &client.to_le_bytes()])
}

pub(crate) fn partition_pb(
    p: &PartitionDesc,
    leader: Option<cairn_types::NodeId>,
) -> pb::Partition {
    pb::Partition {
        id: p.id.0,
        start: p.range.start.clone(),
        has_end: p.range.end.is_some(),
        end: p.range.end.clone().unwrap_or_default(),
        epoch_version: p.epoch.version,
        epoch_conf_ver: p.epoch.conf_ver,
        replicas: p.replicas.iter().map(|n| n.0).collect(),
        leader: leader.map_or(0, |l| l.0),
    }
}

/// The leader hint a keyed response carries (none when the leader's address is unknown).
fn hint_pb(h: crate::node::LeaderHint) -> Option<pb::LeaderHint> {
    let addr = h.leader_addr?;
    let r = h.partition.range;
    Some(pb::LeaderHint {
        partition: h.partition.id.0,
        has_end: r.end.is_some(),
        start: r.start,
        end: r.end.unwrap_or_default(),
        epoch_version: h.partition.epoch.version,
        leader: h.leader.0,
        leader_addr: addr,
    })
}

pub(crate) fn operation_pb(op: &cairn_types::Operation) -> pb::Operation {
    let (from, to) = op.kind.nodes();
    pb::Operation {
        id: op.id,
        kind: op.kind.name().into(),
        partition: op.partition.0,
        state: op.state.name().into(),
        step: op.step.clone(),
        error: op.error.clone().unwrap_or_default(),
        from: from.map_or(0, |n| n.0),
        to: to.map_or(0, |n| n.0),
        started_ms: op.started_ms,
        updated_ms: op.updated_ms,
    }
}

pub(crate) fn controller_pb(s: &cairn_router::ControllerStatus) -> pb::ControllerResponse {
    pb::ControllerResponse {
        enabled: s.enabled,
        paused: s.paused,
        leader: s.leader.0,
        draining: s.draining.iter().map(|n| n.0).collect(),
        decisions: s
            .decisions
            .iter()
            .map(|d| pb::Decision {
                at_ms: d.at_ms,
                kind: d.kind.clone(),
                partition: d.partition.0,
                detail: d.detail.clone(),
                why: d.why.clone(),
                outcome: d.outcome.clone(),
            })
            .collect(),
    }
}

pub(crate) fn table_pb(r: &TableRoute) -> pb::Table {
    pb::Table {
        name: r.table.name.clone(),
        id: r.table.id.0,
        replication: r.table.replication,
        partitions: r
            .table
            .partitions
            .iter()
            .map(|p| partition_pb(p, r.leaders.get(&p.id).copied()))
            .collect(),
    }
}

/// Most operations one Batch call may carry.
const MAX_BATCH_OPS: usize = 1024;

/// Runs operation `index` of a batch the way its unary call would, and says how it went.
/// What a gRPC request showed of its caller: a verified client certificate, a token.
fn shown<T>(req: &Request<T>) -> Shown<'_> {
    Shown {
        certificate: req
            .extensions()
            .get::<cairn_proto::net::ConnInfo>()
            .and_then(|c| c.peer.as_deref()),
        token: Shown::bearer(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        ),
    }
}

/// Refuses the request unless its caller may do `access` (always allowed when insecure);
/// answers the caller's user name on a secure node.
async fn allow<T>(
    node: &Node,
    req: &Request<T>,
    access: Access<'_>,
) -> Result<Option<String>, Status> {
    node.authorize(shown(req), access).await.map_err(status)
}

async fn batch_op(
    node: Arc<Node>,
    user: Option<Arc<cairn_types::User>>,
    index: u32,
    op: pb::BatchOp,
) -> pb::BatchResult {
    use pb::batch_op::Op;
    let started = std::time::Instant::now();
    let mut out = pb::BatchResult {
        index,
        ..Default::default()
    };
    let access = match &op.op {
        Some(Op::Put(r)) => Some(Access::Write(&r.table)),
        Some(Op::Delete(r)) => Some(Access::Write(&r.table)),
        Some(Op::Get(r)) => Some(Access::Read(&r.table)),
        None => None,
    };
    if let (Some(u), Some(access)) = (&user, access)
        && !u.allows(access)
    {
        let e = Error::PermissionDenied(u.refusal(access));
        out.error = Some(pb::ErrorInfo {
            code: e.code().as_str().to_string(),
            message: e.to_string(),
        });
        return out;
    }
    let user = user.as_deref().map(|u| u.name.as_str());
    let (name, res) = match op.op {
        Some(Op::Put(r)) => {
            let res = node
                .put(
                    &r.table,
                    r.key,
                    r.value,
                    request_id(r.request_id, user),
                    deadline(r.timeout_ms),
                )
                .await;
            ("put", res.map(|h| out.leader = hint_pb(h)))
        }
        Some(Op::Delete(r)) => {
            let res = node
                .delete(
                    &r.table,
                    r.key,
                    request_id(r.request_id, user),
                    deadline(r.timeout_ms),
                )
                .await;
            ("delete", res.map(|h| out.leader = hint_pb(h)))
        }
        Some(Op::Get(r)) => {
            let stale = r.consistency == pb::Consistency::Stale as i32;
            let res = node
                .get(&r.table, r.key, stale, deadline(r.timeout_ms))
                .await;
            (
                "get",
                res.map(|(v, h)| {
                    out.found = v.is_some();
                    out.value = v.unwrap_or_default();
                    out.leader = h.and_then(hint_pb);
                }),
            )
        }
        None => (
            "batch",
            Err(Error::InvalidArgument(format!(
                "operation {index} of the batch is empty: set put, get or delete"
            ))),
        ),
    };
    if name != "batch" {
        node.record(name, res.is_ok(), started);
    }
    if let Err(e) = res {
        out.error = Some(pb::ErrorInfo {
            code: e.code().as_str().to_string(),
            message: e.to_string(),
        });
    }
    out
}

struct Kv(Arc<Node>);
struct Admin(Arc<Node>);
struct Internal(Arc<Node>);

impl Kv {
    fn done<T>(
        &self,
        op: &str,
        started: std::time::Instant,
        r: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        self.0.record(op, r.is_ok(), started);
        r.map(Response::new).map_err(status)
    }
}

#[tonic::async_trait]
impl kv_server::Kv for Kv {
    type BatchStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::BatchResult, Status>> + Send + 'static>,
    >;

    async fn batch(
        &self,
        req: Request<pb::BatchRequest>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        use futures::StreamExt;
        // Authenticated once; each operation is then allowed or refused on its own.
        let user = self
            .0
            .authenticate(shown(&req))
            .await
            .map_err(status)?
            .map(Arc::new);
        let ops = req.into_inner().ops;
        if ops.len() > MAX_BATCH_OPS {
            return Err(status(Error::InvalidArgument(format!(
                "a batch carries at most {MAX_BATCH_OPS} operations, not {}; split it",
                ops.len()
            ))));
        }
        self.0.record_batch(ops.len());
        // Every operation runs at once; each answer goes out as soon as it is ready.
        let running: futures::stream::FuturesUnordered<_> = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| batch_op(self.0.clone(), user.clone(), i as u32, op))
            .collect();
        Ok(Response::new(Box::pin(running.map(Ok))))
    }

    async fn create_table(
        &self,
        req: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::CreateTableResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let started = std::time::Instant::now();
        let r = req.into_inner();
        let n = r.split_keys.len() + 1;
        let res = self
            .0
            .create_table(
                &r.name,
                r.replication,
                r.split_keys,
                r.request_id,
                deadline(0) + cairn_types::create_table_time(n),
            )
            .await;
        self.done(
            "create_table",
            started,
            res.map(|t| pb::CreateTableResponse {
                table: Some(table_pb(&t)),
            }),
        )
    }

    async fn drop_table(
        &self,
        req: Request<pb::DropTableRequest>,
    ) -> Result<Response<pb::DropTableResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let started = std::time::Instant::now();
        let req = req.into_inner();
        let id = (req.table_id != 0).then_some(cairn_types::TableId(req.table_id));
        let res = self.0.drop_table(&req.name, id, deadline(0)).await;
        self.done("drop_table", started, res.map(|_| pb::DropTableResponse {}))
    }

    async fn list_tables(
        &self,
        req: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        allow(&self.0, &req, Access::Observe).await?;
        let started = std::time::Instant::now();
        let res = self
            .0
            .list_tables(deadline(0))
            .await
            .map(|ts| pb::ListTablesResponse {
                tables: ts
                    .into_iter()
                    .map(|t| {
                        table_pb(&TableRoute {
                            table: t,
                            leaders: Default::default(),
                            nodes: vec![],
                        })
                    })
                    .collect(),
            });
        self.done("list_tables", started, res)
    }

    async fn describe_table(
        &self,
        req: Request<pb::DescribeTableRequest>,
    ) -> Result<Response<pb::DescribeTableResponse>, Status> {
        allow(&self.0, &req, Access::Observe).await?;
        let started = std::time::Instant::now();
        let res = self
            .0
            .describe_table(&req.into_inner().name, deadline(0))
            .await;
        self.done(
            "describe_table",
            started,
            res.map(|t| pb::DescribeTableResponse {
                table: Some(table_pb(&t)),
            }),
        )
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let user = allow(&self.0, &req, Access::Write(&req.get_ref().table)).await?;
        let started = std::time::Instant::now();
        let r = req.into_inner();
        let res = self
            .0
            .put(
                &r.table,
                r.key,
                r.value,
                request_id(r.request_id, user.as_deref()),
                deadline(r.timeout_ms),
            )
            .await;
        self.done(
            "put",
            started,
            res.map(|h| pb::PutResponse { leader: hint_pb(h) }),
        )
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        allow(&self.0, &req, Access::Read(&req.get_ref().table)).await?;
        let started = std::time::Instant::now();
        let r = req.into_inner();
        let stale = r.consistency == pb::Consistency::Stale as i32;
        let res = self
            .0
            .get(&r.table, r.key, stale, deadline(r.timeout_ms))
            .await;
        self.done(
            "get",
            started,
            res.map(|(v, h)| pb::GetResponse {
                found: v.is_some(),
                value: v.unwrap_or_default(),
                leader: h.and_then(hint_pb),
            }),
        )
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let user = allow(&self.0, &req, Access::Write(&req.get_ref().table)).await?;
        let started = std::time::Instant::now();
        let r = req.into_inner();
        let res = self
            .0
            .delete(
                &r.table,
                r.key,
                request_id(r.request_id, user.as_deref()),
                deadline(r.timeout_ms),
            )
            .await;
        self.done(
            "delete",
            started,
            res.map(|h| pb::DeleteResponse { leader: hint_pb(h) }),
        )
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        allow(&self.0, &req, Access::Read(&req.get_ref().table)).await?;
        let started = std::time::Instant::now();
        let r = req.into_inner();
        let res = crate::http::list_bounds(
            &self.0.core.limits,
            &r.prefix,
            &r.start,
            &r.end,
            &r.cursor,
            r.limit as usize,
        );
        let res = match res {
            Ok((start, end, limit)) => {
                let stale = r.consistency == pb::Consistency::Stale as i32;
                self.0
                    .list(
                        &r.table,
                        start,
                        end,
                        limit,
                        r.values,
                        stale,
                        deadline(r.timeout_ms),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let res = res.map(|page| {
            let has_more = page.next.is_some();
            let cursor = page.next.unwrap_or_default();
            let (keys, values): (Vec<_>, Vec<_>) = page.rows.into_iter().unzip();
            pb::ListResponse {
                keys,
                values: if r.values { values } else { Vec::new() },
                has_more,
                cursor,
            }
        });
        self.done("list", started, res)
    }

    async fn export(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<pb::ExportResponse>, Status> {
        allow(&self.0, &req, Access::Read(&req.get_ref().table)).await?;
        let started = std::time::Instant::now();
        let r = req.into_inner();
        let max_bytes = match r.max_bytes {
            0 => cairn_router::LIST_PAGE_BYTES,
            n => u64::from(n),
        };
        let at = cairn_router::ExportCursor::decode(&r.cursor).and_then(|at| {
            for k in at.keys() {
                self.0
                    .core
                    .limits
                    .check_bound("the export cursor's key", k)?;
            }
            Ok(at)
        });
        let res = match at {
            Ok(at) => {
                self.0
                    .export(&r.table, at, max_bytes, deadline(r.timeout_ms))
                    .await
            }
            Err(e) => Err(e),
        };
        let res = res.map(|page| {
            let (keys, values): (Vec<_>, Vec<_>) = page.rows.into_iter().unzip();
            pb::ExportResponse {
                keys,
                values,
                done: page.next.is_none(),
                cursor: page.next.map(|c| c.encode()).unwrap_or_default(),
                restart: page.restart.encode(),
                partition: page.partition.0,
                partition_done: page.partition_done,
            }
        });
        self.done("export", started, res)
    }
}

#[tonic::async_trait]
impl admin_server::Admin for Admin {
    async fn nodes(
        &self,
        req: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::NodesResponse>, Status> {
        allow(&self.0, &req, Access::Observe).await?;
        let nodes = self.0.nodes(deadline(0)).await.map_err(status)?;
        Ok(Response::new(pb::NodesResponse {
            nodes: nodes
                .into_iter()
                .map(|n| pb::NodeInfo {
                    id: n.node.id.0,
                    addr: n.node.addr,
                    http_addr: n.node.http_addr,
                    live: n.live,
                    replicas: n.replicas,
                    leaders: n.leaders,
                    metadata_member: n.metadata_member,
                    metadata_leader: n.metadata_leader,
                    draining: n.draining,
                    last_heartbeat_ms_ago: n.last_heartbeat_ms_ago.unwrap_or(u64::MAX),
                })
                .collect(),
        }))
    }

    async fn partitions(
        &self,
        req: Request<pb::PartitionsRequest>,
    ) -> Result<Response<pb::PartitionsResponse>, Status> {
        allow(&self.0, &req, Access::Observe).await?;
        let name = req.into_inner().table;
        let d = deadline(0);
        let names: Vec<String> = if name.is_empty() {
            self.0
                .list_tables(d)
                .await
                .map_err(status)?
                .into_iter()
                .map(|t| t.name)
                .collect()
        } else {
            vec![name]
        };
        let mut tables = Vec::new();
        for n in names {
            let r = self.0.describe_table(&n, d).await.map_err(status)?;
            tables.push(pb::TablePartitions {
                table: n,
                partitions: table_pb(&r).partitions,
            });
        }
        Ok(Response::new(pb::PartitionsResponse { tables }))
    }

    async fn engine_stats(
        &self,
        req: Request<pb::EngineStatsRequest>,
    ) -> Result<Response<pb::EngineStatsResponse>, Status> {
        allow(&self.0, &req, Access::Observe).await?;
        let r = req.into_inner();
        let parts: Vec<PartitionId> = r.partitions.into_iter().map(PartitionId).collect();
        let (data_keys, raft_keys, replica_keys, open_replicas) = self
            .0
            .engine_stats(TableId(r.table_id), parts)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EngineStatsResponse {
            data_keys,
            raft_keys,
            replica_keys,
            open_replicas,
        }))
    }

    async fn split(
        &self,
        req: Request<pb::SplitRequest>,
    ) -> Result<Response<pb::SplitResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let r = req.into_inner();
        let (left, right) = self
            .0
            .split(&r.table, r.key, deadline(0))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SplitResponse {
            left: Some(partition_pb(&left, None)),
            right: Some(partition_pb(&right, None)),
        }))
    }

    async fn r#move(
        &self,
        req: Request<pb::MoveRequest>,
    ) -> Result<Response<pb::MoveResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let r = req.into_inner();
        let op = self
            .0
            .move_replica(
                PartitionId(r.partition),
                cairn_types::NodeId(r.from),
                cairn_types::NodeId(r.to),
                deadline(0),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MoveResponse {
            operation: Some(operation_pb(&op)),
        }))
    }

    async fn operations(
        &self,
        req: Request<pb::OperationsRequest>,
    ) -> Result<Response<pb::OperationsResponse>, Status> {
        allow(&self.0, &req, Access::Observe).await?;
        let ops = self.0.operations(deadline(0)).await.map_err(status)?;
        Ok(Response::new(pb::OperationsResponse {
            operations: ops.iter().map(operation_pb).collect(),
        }))
    }

    async fn controller(
        &self,
        req: Request<pb::ControllerRequest>,
    ) -> Result<Response<pb::ControllerResponse>, Status> {
        allow(&self.0, &req, Access::Observe).await?;
        let s = self
            .0
            .controller_status(deadline(0))
            .await
            .map_err(status)?;
        Ok(Response::new(controller_pb(&s)))
    }

    async fn set_controller_paused(
        &self,
        req: Request<pb::SetControllerPausedRequest>,
    ) -> Result<Response<pb::ControllerResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let s = self
            .0
            .set_controller_paused(req.into_inner().paused, deadline(0))
            .await
            .map_err(status)?;
        Ok(Response::new(controller_pb(&s)))
    }

    async fn set_draining(
        &self,
        req: Request<pb::SetDrainingRequest>,
    ) -> Result<Response<pb::SetDrainingResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let r = req.into_inner();
        self.0
            .set_draining(cairn_types::NodeId(r.node), r.draining, deadline(0))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetDrainingResponse {}))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        self.0
            .remove_node(cairn_types::NodeId(req.into_inner().node), deadline(0))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let r = req.into_inner();
        self.0
            .transfer_leader(
                PartitionId(r.partition),
                cairn_types::NodeId(r.to),
                deadline(0),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TransferLeaderResponse {}))
    }

    async fn add_user(
        &self,
        req: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddUserResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let u = req.into_inner().user.unwrap_or_default();
        let role = cairn_types::Role::parse(&u.role).ok_or_else(|| {
            status(Error::InvalidArgument(format!(
                "role {:?}: use admin, readwrite or readonly",
                u.role
            )))
        })?;
        let hash = match u.token_sha256.len() {
            0 => None,
            _ => Some(
                <[u8; 32]>::try_from(u.token_sha256.as_slice()).map_err(|_| {
                    status(Error::InvalidArgument(format!(
                        "token_sha256 of user {:?} has {} bytes; a SHA-256 has 32",
                        u.name,
                        u.token_sha256.len()
                    )))
                })?,
            ),
        };
        let token = self
            .0
            .add_user(&u.name, role, &u.tables, hash)
            .await
            .map_err(status)?
            .unwrap_or_default();
        Ok(Response::new(pb::AddUserResponse { token }))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        let users: Vec<(cairn_types::User, Vec<u8>)> = if req.get_ref().token_hashes {
            let records = self.0.user_records().await.map_err(status)?;
            records.into_iter().map(|(u, h)| (u, h.to_vec())).collect()
        } else {
            let users = self.0.list_users().await.map_err(status)?;
            users.into_iter().map(|u| (u, Vec::new())).collect()
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users
                .into_iter()
                .map(|(u, token_sha256)| pb::User {
                    name: u.name,
                    role: u.role.as_str().to_string(),
                    tables: u.tables,
                    token_sha256,
                })
                .collect(),
        }))
    }

    async fn remove_user(
        &self,
        req: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::RemoveUserResponse>, Status> {
        allow(&self.0, &req, Access::Admin).await?;
        self.0
            .remove_user(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveUserResponse {}))
    }

    async fn verify_partition(
        &self,
        req: Request<pb::VerifyPartitionRequest>,
    ) -> Result<Response<pb::VerifyPartitionResponse>, Status> {
        // Admin only: it reads every replica of the partition whole.
        allow(&self.0, &req, Access::Admin).await?;
        let r = req.into_inner();
        let (p, answers) = self
            .0
            .verify_partition(PartitionId(r.partition), deadline(r.timeout_ms))
            .await
            .map_err(status)?;
        let replicas = answers
            .into_iter()
            .map(|(node, d)| match d {
                Ok(d) => pb::ReplicaDigest {
                    node: node.0,
                    error: String::new(),
                    applied: d.applied,
                    rows: d.rows,
                    sha256: d.sha256,
                    start: d.range.start,
                    has_end: d.range.end.is_some(),
                    end: d.range.end.unwrap_or_default(),
                },
                Err(e) => pb::ReplicaDigest {
                    node: node.0,
                    error: e.to_string(),
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::VerifyPartitionResponse {
            partition: Some(partition_pb(&p, None)),
            replicas,
        }))
    }
}

/// Hands one Raft message to the replica it names and encodes the answer; shared by the
/// unary `Raft` call and `RaftStream`.
async fn handle_raft(node: &Node, rpc: RaftRpc) -> Result<Vec<u8>, Status> {
    if matches!(rpc.msg, cairn_raft::RaftMsg::Ping) {
        return Ok(encode(&Ok::<u64, String>(node.core.incarnation)).payload);
    }
    if node.core.fault_refuse_snapshots && matches!(rpc.msg, cairn_raft::RaftMsg::SnapshotChunk(_))
    {
        return Err(Status::unavailable(
            "refusing snapshots (--fault-refuse-snapshots)",
        ));
    }
    // Out of disk: take no log entries or snapshots (an empty append, a heartbeat, still
    // passes, so this follower does not start elections). The leader retries later.
    let stores = match &rpc.msg {
        cairn_raft::RaftMsg::Append(a) => !a.entries.is_empty(),
        cairn_raft::RaftMsg::SnapshotChunk(_) => true,
        _ => false,
    };
    if stores && node.core.disk.is_full() {
        return Err(Status::resource_exhausted(format!(
            "node {} is out of disk space and takes no log entries until space is freed",
            node.id()
        )));
    }
    let group = PartitionId(rpc.group());
    let raft = if group == META_GROUP {
        node.core.meta().map(|m| (m.raft, m.id.0, None, None))
    } else {
        node.core.replica(group).map(|r| {
            if matches!(rpc.msg, cairn_raft::RaftMsg::Append(_)) {
                // Never equal to `opened_ms`, which means "not heard since opened".
                let now = node.core.peer_health.now_ms().max(r.opened_ms + 1);
                r.heard_ms.store(now, std::sync::atomic::Ordering::Relaxed);
            }
            let shape = r.view.desc().epoch.version;
            (r.raft, r.id.0, Some(shape), Some(r.view))
        })
    };
    let (raft, me, shape, view) = raft.ok_or_else(|| {
        Status::not_found(format!("{group} has no replica on node {}", node.id()))
    })?;
    Ok(serve_raft_rpc(
        &raft,
        me,
        shape,
        view.as_ref(),
        &node.core.engine,
        node.core.peers.metrics(),
        rpc,
    )
    .await)
}

/// Frames one Raft stream may hold at a node, being handled or answered but not yet sent
/// back. Past it the node reads no more of the stream, so HTTP/2's flow control holds back a
/// peer that sends faster than the node answers, or reads no answers, instead of the node's
/// memory growing. Replication keeps a few appends in flight per group, so a node reaches
/// it only when it stalls (a slow disk) with hundreds of groups led by one peer; the peer's
/// other calls go on (see `CONNECTION_WINDOW`).
const STREAM_FRAMES_IN_FLIGHT: usize = 1024;

/// Bytes a connection may carry that the node has not read yet, over all its streams:
/// sixteen streams' windows.
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Answers of one `RaftStream`, in the order they are ready.
type RaftFrames =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::RaftFrame, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl internal_server::Internal for Internal {
    type RaftStreamStream = RaftFrames;

    async fn raft(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let rpc: RaftRpc = decode(req.get_ref()).map_err(status)?;
        let payload = handle_raft(&self.0, rpc).await?;
        Ok(Response::new(Envelope { payload }))
    }

    async fn raft_stream(
        &self,
        req: Request<tonic::Streaming<pb::RaftFrame>>,
    ) -> Result<Response<RaftFrames>, Status> {
        use futures::StreamExt;
        if self.0.core.fault_no_raft_stream {
            return Err(Status::unimplemented(
                "serving no Raft streams (--fault-no-raft-stream)",
            ));
        }
        let mut frames = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_FRAMES_IN_FLIGHT);
        let node = self.0.clone();
        // The stream lives as long as the connection: end both halves when the node stops,
        // or its graceful shutdown would wait on the stream.
        let mut stop = node.stopping();
        let mut stop2 = node.stopping();
        // Every message is handled on its own, as a unary call would be, so a slow one (an
        // append waiting on fsync) holds up no other group's.
        tokio::spawn(async move {
            loop {
                // A frame is read only once its answer has a place to wait in.
                let slot = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    s = tx.clone().reserve_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                let frame = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    f = frames.message() => match f {
                        Ok(Some(f)) => f,
                        _ => break,
                    },
                };
                let node = node.clone();
                tokio::spawn(async move {
                    let answer = match decode_bytes::<RaftRpc>(&frame.payload) {
                        Err(e) => Err(status(e)),
                        Ok(rpc) => handle_raft(&node, rpc).await,
                    };
                    let frame = match answer {
                        Ok(payload) => pb::RaftFrame {
                            id: frame.id,
                            payload,
                            error: String::new(),
                        },
                        Err(s) => pb::RaftFrame {
                            id: frame.id,
                            payload: Vec::new(),
                            error: s.message().to_string(),
                        },
                    };
                    // Sent into the reserved place: if the caller has gone, it is dropped.
                    slot.send(Ok(frame));
                });
            }
        });
        let answers = tokio_stream::wrappers::ReceiverStream::new(rx).take_until(async move {
            let _ = stop2.wait_for(|s| *s).await;
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn partition(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let r: PartitionRequest = decode(req.get_ref()).map_err(status)?;
        let res = self.0.core.handle_partition(r).await;
        Ok(Response::new(encode(&res)))
    }

    async fn meta(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let r: MetaRequest = decode(req.get_ref()).map_err(status)?;
        let res = match r {
            MetaRequest::NodeDiagnostic(d) => self.0.diagnostic(d).map(MetaReply::Diagnostic),
            r => self.0.core.handle_meta(r).await,
        };
        Ok(Response::new(encode(&res)))
    }
}

/// On a secure node, admits to the internal service (Raft traffic, forwarding, snapshots,
/// replica open) only callers whose certificate, verified against the cluster's CA during
/// the handshake, names a node.
fn only_nodes(secure: bool) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        if !secure {
            return Ok(req);
        }
        let peer = req
            .extensions()
            .get::<cairn_proto::net::ConnInfo>()
            .and_then(|c| c.peer.as_deref());
        match peer {
            Some(cairn_proto::tls::NODE_NAME) => Ok(req),
            Some(other) => Err(Status::permission_denied(format!(
                "the internal service is for the cluster's nodes; certificate {other:?} is not a node's"
            ))),
            None => Err(Status::unauthenticated(
                "the internal service needs a node certificate of this cluster's CA",
            )),
        }
    }
}

/// How often a node pings each gRPC connection (an answered ping costs a few bytes).
pub(crate) const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
/// How long a ping may go unanswered before the connection is closed; well above the
/// pauses a busy peer may take (a stalled disk, a stop-the-world).
pub(crate) const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The largest client request a node reads: a Batch of many writes, or one write of the
/// largest value allowed. Anyone who reaches the port may send one, before authentication
/// (the body is read first), so it is far below the 512 MiB peers may send each other; a
/// request over it is refused from its length prefix, before its body is read.
fn kv_request_bytes(limits: &cairn_types::Limits) -> usize {
    limits
        .request_bytes()
        .clamp(KV_REQUEST_BYTES, cairn_proto::MAX_MESSAGE_BYTES)
}

/// The least [`kv_request_bytes`] is, whatever the value limit.
const KV_REQUEST_BYTES: usize = 64 << 20;

/// Serves the three services on `listener` until `stop` turns true, then drains.
pub(crate) async fn serve(
    node: Arc<Node>,
    incoming: cairn_proto::net::Incoming,
    mut stop: watch::Receiver<bool>,
) {
    let max = cairn_proto::MAX_MESSAGE_BYTES;
    let kv_max = kv_request_bytes(&node.core.limits);
    let res = tonic::transport::Server::builder()
        // A node resets many streams at once when a caller gives up on a fan-out (say a
        // CreateTable of a thousand partitions); at h2's default of 20 pending resets the
        // whole connection, and every Raft message on it, would be closed.
        .http2_max_pending_accept_reset_streams(Some(1024))
        // Each stream may hold 1 MiB unread (h2's stream window). With a connection window of
        // the same size, one stream the node stops reading (a Raft stream held back, see
        // `STREAM_FRAMES_IN_FLIGHT`) would stall every other call on that connection: the
        // peer's pings, snapshot chunks and forwarded requests.
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        // A client that vanished without closing (its machine lost, a half-open socket)
        // would keep its connection and socket for good: ping every connection and close
        // it when no answer comes. A live peer or client answers from its h2 layer.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(
            kv_server::KvServer::new(Kv(node.clone()))
                .max_decoding_message_size(kv_max)
                .max_encoding_message_size(max),
        )
        .add_service(admin_server::AdminServer::new(Admin(node.clone())))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            internal_server::InternalServer::new(Internal(node.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            only_nodes(node.secure),
        ))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!("gRPC server stopped: {e}");
    }
}
