//! The HTTP/JSON API, metrics and console, on the node's `--http` address.
//!
//! Keys in paths and query strings are percent-encoded bytes (a `+` is a literal plus).
//! Every error is `{"error":{"code":"…","message":"…"}}` with a fitting status; bad input
//! never yields a 500.

use crate::auth::Shown;
use crate::node::Node;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use cairn_router::{DEFAULT_DEADLINE, Diagnostic, TableRoute};
use cairn_storage::keys::prefix_end;
use cairn_types::{
    Access, ClientId, DEFAULT_REPLICATION, Error, NodeId, PartitionDesc, PartitionId, RequestId,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Default and largest page sizes of List.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

struct ApiError(Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        error_response(status, code, self.0.to_string())
    }
}

/// The one shape of every HTTP error: `{"error": {"code": ..., "message": ...}}`.
fn error_response(status: StatusCode, code: cairn_types::ErrorCode, message: String) -> Response {
    let body = json!({"error": {"code": code.as_str(), "message": message}});
    (status, Json(body)).into_response()
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

type ApiResult = Result<Response, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(Error::InvalidArgument(msg.into()))
}

/// Decodes percent-encoding strictly: every `%` must start two hex digits.
pub(crate) fn percent_decode(s: &str) -> Result<Vec<u8>, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(v) => out.push(v),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "invalid percent-encoding at byte {i} of {s:?}: '%' must be followed by two hex digits"
                    )));
                }
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The table and (for key routes) the key of a `/v1/tables/{table}[/keys/{key}]` path,
/// decoded from the raw path so any byte string can be a key.
fn path_parts(uri: &Uri) -> Result<(String, Option<Vec<u8>>), ApiError> {
    let rest = uri.path().strip_prefix("/v1/tables/").unwrap_or_default();
    let (table, key) = match rest.split_once('/') {
        Some((t, k)) => (t, k.strip_prefix("keys/")),
        None => (rest, None),
    };
    let table = String::from_utf8(percent_decode(table)?).map_err(|_| {
        bad("table names are ASCII: use 1 to 128 characters from A-Z a-z 0-9 _ . -")
    })?;
    let key = key.map(percent_decode).transpose()?;
    Ok((table, key))
}

fn table_name(uri: &Uri) -> Result<String, ApiError> {
    Ok(path_parts(uri)?.0)
}

fn query(uri: &Uri) -> Result<HashMap<String, Vec<u8>>, ApiError> {
    let mut out = HashMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(
            String::from_utf8_lossy(&percent_decode(k)?).into_owned(),
            percent_decode(v)?,
        );
    }
    Ok(out)
}

fn deadline() -> Instant {
    Instant::now() + DEFAULT_DEADLINE
}

/// `[start, end)` and a page size.
pub(crate) type ListBounds = (Vec<u8>, Option<Vec<u8>>, usize);

/// Turns List parameters into `[start, end)` and a limit; shared with gRPC.
pub(crate) fn list_bounds(
    limits: &cairn_types::Limits,
    prefix: &[u8],
    start: &[u8],
    end: &[u8],
    cursor: &[u8],
    limit: usize,
) -> Result<ListBounds, Error> {
    for (name, bound) in [
        ("prefix", prefix),
        ("start", start),
        ("end", end),
        ("cursor", cursor),
    ] {
        limits.check_bound(name, bound)?;
    }
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        l if l > MAX_LIMIT => {
            return Err(Error::InvalidArgument(format!(
                "limit {l} is above the maximum of {MAX_LIMIT}; page with the cursor"
            )));
        }
        l => l,
    };
    let mut lo = start.to_vec();
    let mut hi = if end.is_empty() {
        None
    } else {
        Some(end.to_vec())
    };
    if !prefix.is_empty() {
        lo = lo.max(prefix.to_vec());
        hi = match (hi, prefix_end(prefix)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if !cursor.is_empty() {
        lo = lo.max(cursor.to_vec());
    }
    Ok((lo, hi, limit))
}

fn partition_json(p: &PartitionDesc, leader: Option<NodeId>) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    json!({
        "id": p.id.0,
        "start": text(&p.range.start),
        "end": p.range.end.as_deref().map(text),
        "epoch": {"version": p.epoch.version, "conf_ver": p.epoch.conf_ver},
        "replicas": p.replicas.iter().map(|n| n.0).collect::<Vec<_>>(),
        "leader": leader.map(|n| n.0),
    })
}

fn table_json(r: &TableRoute) -> Value {
    json!({
        "name": r.table.name,
        "id": r.table.id.0,
        "replication": r.table.replication,
        "partitions": r.table.partitions.iter()
            .map(|p| partition_json(p, r.leaders.get(&p.id).copied()))
            .collect::<Vec<_>>(),
    })
}

/// Parses an admin request body, saying what was expected when it is malformed.
fn admin_body<T: serde::de::DeserializeOwned>(body: &[u8], example: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| bad(format!("malformed JSON body: {e}; expected {example}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    table: String,
    key: String,
    #[serde(default)]
    encoding: Option<String>,
}

async fn split(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: SplitBody = admin_body(&body, r#"{"table":"t","key":"m"}"#)?;
    let key = match req.encoding.as_deref() {
        None | Some("utf-8") => req.key.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(&req.key)
            .map_err(|e| bad(format!("key is not base64: {e}")))?,
        Some(other) => return Err(bad(format!("encoding {other:?} is not utf-8 or base64"))),
    };
    let started = std::time::Instant::now();
    let res = node.split(&req.table, key, deadline()).await;
    node.record("split", res.is_ok(), started);
    let (left, right) = res?;
    Ok(
        Json(json!({"partitions": [partition_json(&left, None), partition_json(&right, None)]}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    partition: u64,
    from: u64,
    to: u64,
}

fn operation_json(op: &cairn_types::Operation) -> Value {
    let mut v = json!({
        "id": op.id, "kind": op.kind.name(), "partition": op.partition.0, "state": op.state.name(),
        "step": op.step, "error": op.error,
        "started_ms": op.started_ms, "updated_ms": op.updated_ms,
    });
    match &op.kind {
        cairn_types::OpKind::Move { from, to, replica } => {
            v["from"] = json!(from.0);
            v["to"] = json!(to.0);
            v["replica"] = json!(replica.0);
        }
        cairn_types::OpKind::Split { right, .. } => v["right"] = json!(right.0),
        cairn_types::OpKind::TransferLeader { to } => v["to"] = json!(to.0),
        cairn_types::OpKind::DropTable { name, .. } => v["table"] = json!(name),
    }
    v
}

async fn move_replica(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: MoveBody = admin_body(&body, r#"{"partition":7,"from":3,"to":4}"#)?;
    let started = std::time::Instant::now();
    let res = node
        .move_replica(
            PartitionId(req.partition),
            NodeId(req.from),
            NodeId(req.to),
            deadline(),
        )
        .await;
    node.record("move", res.is_ok(), started);
    let op = res?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"operation": op.id, "details": operation_json(&op)})),
    )
        .into_response())
}

fn controller_json(s: &cairn_router::ControllerStatus) -> Value {
    let decisions: Vec<Value> = s
        .decisions
        .iter()
        .map(|d| {
            json!({"at_ms": d.at_ms, "kind": d.kind, "partition": d.partition.0, "detail": d.detail,
                   "why": d.why, "outcome": d.outcome})
        })
        .collect();
    let loads: Vec<Value> = s
        .loads
        .iter()
        .map(|(p, l)| {
            json!({"partition": p.0, "bytes": l.bytes, "keys": l.keys, "qps": l.qps,
                   "write_qps": l.write_qps, "write_bytes_per_sec": l.write_bytes_per_sec})
        })
        .collect();
    json!({"enabled": s.enabled, "paused": s.paused, "leader": s.leader.0,
           "draining": s.draining.iter().map(|n| n.0).collect::<Vec<_>>(), "decisions": decisions,
           "partitions": loads})
}

async fn controller(State(node): State<Arc<Node>>) -> ApiResult {
    let s = node.controller_status(deadline()).await?;
    Ok(Json(controller_json(&s)).into_response())
}

async fn pause_controller(State(node): State<Arc<Node>>) -> ApiResult {
    let s = node.set_controller_paused(true, deadline()).await?;
    Ok(Json(controller_json(&s)).into_response())
}

async fn resume_controller(State(node): State<Arc<Node>>) -> ApiResult {
    let s = node.set_controller_paused(false, deadline()).await?;
    Ok(Json(controller_json(&s)).into_response())
}

fn node_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        bad(format!(
            "{id:?} is not a node id; `cairn admin nodes` lists them"
        ))
    })
}

async fn drain(State(node): State<Arc<Node>>, Path(id): Path<String>) -> ApiResult {
    let id = node_id(&id)?;
    node.set_draining(NodeId(id), true, deadline()).await?;
    Ok(Json(json!({"node": id, "draining": true})).into_response())
}

async fn undrain(State(node): State<Arc<Node>>, Path(id): Path<String>) -> ApiResult {
    let id = node_id(&id)?;
    node.set_draining(NodeId(id), false, deadline()).await?;
    Ok(Json(json!({"node": id, "draining": false})).into_response())
}

async fn remove_node(State(node): State<Arc<Node>>, Path(id): Path<String>) -> ApiResult {
    let id = node_id(&id)?;
    node.remove_node(NodeId(id), deadline()).await?;
    Ok(Json(json!({"node": id, "removed": true})).into_response())
}

async fn operations(State(node): State<Arc<Node>>) -> ApiResult {
    let ops = node.operations(deadline()).await?;
    Ok(
        Json(json!({"operations": ops.iter().map(operation_json).collect::<Vec<_>>()}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    partition: u64,
    to: u64,
}

async fn transfer_leader(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let req: TransferBody = admin_body(&body, r#"{"partition":7,"to":2}"#)?;
    let started = std::time::Instant::now();
    let res = node
        .transfer_leader(PartitionId(req.partition), NodeId(req.to), deadline())
        .await;
    node.record("transfer_leader", res.is_ok(), started);
    res?;
    Ok(Json(json!({"partition": req.partition, "leader": req.to})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTable {
    name: String,
    #[serde(default)]
    replication: Option<u32>,
    #[serde(default)]
    split_keys: Vec<String>,
}

/// Header naming one logical write across retries (as in the IETF draft and Stripe's API).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The user a request was authorized as, put in its extensions by [`require_access`]
/// (absent on an insecure node).
#[derive(Clone)]
struct Caller(String);

/// The name an `Idempotency-Key` is scoped to: the caller's user, or nobody when the node is
/// insecure.
fn scope(caller: &Option<axum::Extension<Caller>>) -> &[u8] {
    caller.as_ref().map_or(&[], |c| c.0.0.as_bytes())
}

/// A stable 64-bit id for the request `parts` that user `scope` sent with
/// `Idempotency-Key: key`. The request's own parts are in it, so a key reused for a
/// different request is a different write instead of one silently taken for a retry; and
/// so is the user, so that one user's key can never pass another's write off as a retry
/// (which would answer it as done without applying it).
fn idempotency_id(scope: &[u8], key: &[u8], parts: &[&[u8]]) -> u64 {
    // An insecure node has no users: its ids stay what they were before keys were scoped,
    // so a retry through a node of the previous version is still recognised.
    let scope = (!scope.is_empty()).then_some(scope);
    crate::auth::stable_id(scope.into_iter().chain([key]).chain(parts.iter().copied()))
}

/// The request's `Idempotency-Key`, checked: one header of 16 to 255 visible ASCII
/// characters. Keys are shared by every client, so a short one could be another client's.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&[u8]>, ApiError> {
    let mut all = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(bad("send one Idempotency-Key header, not several"));
    }
    let k = v.as_bytes();
    if k.len() < 16 || k.len() > 255 || !k.iter().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "Idempotency-Key must be 16 to 255 visible ASCII characters, for example a UUID",
        ));
    }
    Ok(Some(k))
}

/// The write id of a PUT or DELETE carrying an `Idempotency-Key`: each partition applies
/// the write with this id once (it remembers the id for 10 minutes after applying it), so
/// a retry through any node within that time is answered as the first attempt was and
/// never overwrites a newer value.
fn write_id(
    scope: &[u8],
    headers: &HeaderMap,
    parts: &[&[u8]],
) -> Result<Option<RequestId>, ApiError> {
    Ok(idempotency_key(headers)?.map(|k| RequestId {
        client: ClientId(idempotency_id(scope, k, parts)),
        seq: 1,
        first_incomplete: 1,
    }))
}

async fn create_table(
    State(node): State<Arc<Node>>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    // A retried create with the same key is answered the table its first attempt made.
    let request_id = idempotency_key(&headers)?.map_or(0, |k| {
        idempotency_id(scope(&caller), k, &[b"create", &body])
    });
    let req: CreateTable = serde_json::from_slice(&body).map_err(|e| {
        bad(format!("malformed JSON body: {e}; expected {{\"name\":\"t\",\"replication\":3,\"split_keys\":[\"m\"]}}"))
    })?;
    let splits: Vec<Vec<u8>> = req.split_keys.into_iter().map(String::into_bytes).collect();
    let time = cairn_types::create_table_time(splits.len() + 1);
    let started = std::time::Instant::now();
    let res = node
        .create_table(
            &req.name,
            req.replication.unwrap_or(DEFAULT_REPLICATION),
            splits,
            request_id,
            deadline() + time,
        )
        .await;
    node.record("create_table", res.is_ok(), started);
    Ok((StatusCode::CREATED, Json(table_json(&res?))).into_response())
}

async fn list_tables(State(node): State<Arc<Node>>) -> ApiResult {
    let started = std::time::Instant::now();
    let res = node.list_tables(deadline()).await;
    node.record("list_tables", res.is_ok(), started);
    let tables: Vec<Value> = res?
        .into_iter()
        .map(|t| json!({"name": t.name, "replication": t.replication, "partitions": t.partitions.len()}))
        .collect();
    Ok(Json(json!({ "tables": tables })).into_response())
}

async fn describe_table(State(node): State<Arc<Node>>, uri: Uri) -> ApiResult {
    let name = table_name(&uri)?;
    let started = std::time::Instant::now();
    let res = node.describe_table(&name, deadline()).await;
    node.record("describe_table", res.is_ok(), started);
    Ok(Json(table_json(&*res?)).into_response())
}

async fn drop_table(State(node): State<Arc<Node>>, uri: Uri) -> ApiResult {
    let name = table_name(&uri)?;
    // `?id=` (the id a describe showed) makes a retried DELETE safe: it drops only the
    // table of that id, and answers 204 once that table's drop is recorded.
    let id = match query(&uri)?.get("id") {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|id| *id > 0)
                .map(cairn_types::TableId)
                .ok_or_else(|| {
                    bad("id must be the table's numeric id (GET /v1/tables/{t} shows it)")
                })?,
        ),
    };
    let started = std::time::Instant::now();
    let res = node.drop_table(&name, id, deadline()).await;
    node.record("drop_table", res.is_ok(), started);
    res?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn table_and_key(uri: &Uri) -> Result<(String, Vec<u8>), ApiError> {
    let (table, key) = path_parts(uri)?;
    Ok((table, key.unwrap_or_default()))
}

async fn put_key(
    State(node): State<Arc<Node>>,
    caller: Option<axum::Extension<Caller>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (table, key) = table_and_key(&uri)?;
    let parts: [&[u8]; 4] = [b"put", table.as_bytes(), &key, &body];
    let rid = write_id(scope(&caller), &headers, &parts)?;
    let started = std::time::Instant::now();
    let res = node.put(&table, key, body.to_vec(), rid, deadline()).await;
    node.record("put", res.is_ok(), started);
    res?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether a read's `consistency` parameter asks for a stale read; anything but
/// `linearizable` (the default) or `stale` is refused rather than read as the default.
fn stale_read(q: &HashMap<String, Vec<u8>>) -> Result<bool, ApiError> {
    match q.get("consistency").map(|v| v.as_slice()) {
        None | Some(b"linearizable") => Ok(false),
        Some(b"stale") => Ok(true),
        Some(_) => Err(bad(
            "consistency must be linearizable (the default) or stale",
        )),
    }
}

async fn get_key(State(node): State<Arc<Node>>, uri: Uri) -> ApiResult {
    let (table, key) = table_and_key(&uri)?;
    let q = query(&uri)?;
    let stale = stale_read(&q)?;
    let started = std::time::Instant::now();
    let res = node.get(&table, key, stale, deadline()).await;
    node.record("get", res.is_ok(), started);
    match res?.0 {
        Some(v) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response()),
        None => Ok((
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "KEY_NOT_FOUND", "message": "no value under that key"}})),
        )
            .into_response()),
    }
}

async fn delete_key(
    State(node): State<Arc<Node>>,
    caller: Option<axum::Extension<Caller>>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    let (table, key) = table_and_key(&uri)?;
    let parts: [&[u8]; 3] = [b"delete", table.as_bytes(), &key];
    let rid = write_id(scope(&caller), &headers, &parts)?;
    let started = std::time::Instant::now();
    let res = node.delete(&table, key, rid, deadline()).await;
    node.record("delete", res.is_ok(), started);
    res?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_keys(State(node): State<Arc<Node>>, uri: Uri) -> ApiResult {
    let table = table_name(&uri)?;
    let q = query(&uri)?;
    let arg = |k: &str| q.get(k).cloned().unwrap_or_default();
    let limit = match q.get("limit") {
        None => 0,
        Some(l) => std::str::from_utf8(l)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| bad("limit must be a number from 1 to 10000"))?,
    };
    let cursor = match q.get("cursor") {
        Some(c) if !c.is_empty() => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|_| bad("cursor is not one this server returned; pass the cursor from the previous page unchanged"))?,
        _ => Vec::new(),
    };
    let values = match q.get("values").map(|v| v.as_slice()) {
        None | Some(b"false") | Some(b"0") => false,
        Some(b"true") | Some(b"1") => true,
        Some(_) => return Err(bad("values must be true or false")),
    };
    let stale = stale_read(&q)?;
    let force_b64 = match q.get("encoding").map(|v| v.as_slice()) {
        None | Some(b"utf-8") => false,
        Some(b"base64") => true,
        Some(_) => {
            return Err(bad(
                "encoding must be utf-8 (the default: base64 only for a page holding a key or \
                 value that is not UTF-8) or base64",
            ));
        }
    };
    let (start, end, limit) = list_bounds(
        &node.core.limits,
        &arg("prefix"),
        &arg("start"),
        &arg("end"),
        &cursor,
        limit,
    )?;
    let started = std::time::Instant::now();
    let res = node
        .list(&table, start, end, limit, values, stale, deadline())
        .await;
    node.record("list", res.is_ok(), started);
    let page = res?;
    let b64 = force_b64
        || page.rows.iter().any(|(k, v)| {
            std::str::from_utf8(k).is_err() || (values && std::str::from_utf8(v).is_err())
        });
    let show = |b: &[u8]| {
        if b64 {
            base64::engine::general_purpose::STANDARD.encode(b)
        } else {
            String::from_utf8_lossy(b).into_owned()
        }
    };
    let cursor = page
        .next
        .as_ref()
        .map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k));
    let mut body = json!({
        "keys": page.rows.iter().map(|(k, _)| show(k)).collect::<Vec<_>>(),
        "cursor": cursor,
    });
    if values {
        body["values"] = json!(page.rows.iter().map(|(_, v)| show(v)).collect::<Vec<_>>());
    }
    if b64 {
        body["encoding"] = json!("base64");
    }
    Ok(Json(body).into_response())
}

async fn nodes(State(node): State<Arc<Node>>) -> ApiResult {
    let nodes: Vec<Value> = node
        .nodes(deadline())
        .await?
        .into_iter()
        .map(|n| {
            json!({"id": n.node.id.0, "addr": n.node.addr, "http_addr": n.node.http_addr, "live": n.live,
                   "replicas": n.replicas, "leaders": n.leaders, "metadata_member": n.metadata_member, "metadata_leader": n.metadata_leader,
                   "draining": n.draining,
                   "last_heartbeat_ms_ago": n.last_heartbeat_ms_ago})
        })
        .collect();
    Ok(Json(json!({ "nodes": nodes })).into_response())
}

/// 200 while the node serves; 503 with the reason while it should get no traffic, so that
/// a load balancer's health check takes it out.
async fn health(State(node): State<Arc<Node>>) -> Response {
    diagnostic_response(Diagnostic::Health, node.diagnostic(Diagnostic::Health))
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    diagnostic_response(Diagnostic::Metrics, node.diagnostic(Diagnostic::Metrics))
}

/// How long a node waits for another node's diagnostic: less than `cairn debug zip`'s default
/// timeout (10 s), so that the caller hears which node did not answer.
const DIAGNOSTIC_WAIT: Duration = Duration::from_secs(5);

/// Node `id`'s `/metrics`, `/debug/logs` or `/health`, fetched through this node (the
/// console's charts of every node; `cairn debug zip` when it cannot reach a node itself).
/// Three fixed routes rather than one `{what}` parameter: a parameter is percent-decoded
/// and the access check reads the raw path, so `lo%67s` would pass as an observer's request.
async fn node_diagnostic(node: Arc<Node>, id: String, d: Diagnostic) -> Response {
    let id = match node_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let body = node
        .diagnostic_of(NodeId(id), d, Instant::now() + DIAGNOSTIC_WAIT)
        .await;
    diagnostic_response(d, body)
}

async fn node_metrics(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    node_diagnostic(node, id, Diagnostic::Metrics).await
}

async fn node_logs(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    node_diagnostic(node, id, Diagnostic::Logs).await
}

async fn node_health(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    node_diagnostic(node, id, Diagnostic::Health).await
}

/// The HTTP answer for a diagnostic, the same whichever node it was asked through: health
/// is 503 while the node does not serve (its body says why).
fn diagnostic_response(d: Diagnostic, body: cairn_types::Result<Vec<u8>>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return ApiError(e).into_response(),
    };
    match d {
        Diagnostic::Metrics => (
            [
                (
                    header::CONTENT_TYPE,
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
                // A page of another origin may chart it.
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            ],
            body,
        )
            .into_response(),
        Diagnostic::Logs => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        Diagnostic::Health => {
            let serving = serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v["status"] == "serving");
            let status = if serving {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// A browser's CORS preflight for `/metrics`, for a page of another origin that sends a
/// token in `Authorization`.
async fn metrics_preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "authorization"),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// The node's recent log lines, oldest first (for `cairn debug zip`).
async fn debug_logs(State(node): State<Arc<Node>>) -> Response {
    diagnostic_response(Diagnostic::Logs, node.diagnostic(Diagnostic::Logs))
}

/// uPlot (npm `uplot`, MIT), vendored for the console's charts: see `assets/README.md`.
async fn uplot_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        include_str!("../assets/uplot.iife.min.js"),
    )
        .into_response()
}

async fn uplot_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        include_str!("../assets/uplot.min.css"),
    )
        .into_response()
}

async fn console() -> Html<&'static str> {
    Html(include_str!("console.html"))
}

async fn empty_key() -> ApiError {
    bad("key must not be empty")
}

async fn not_found() -> ApiError {
    ApiError(Error::InvalidArgument(
        "no such endpoint; see the README for the HTTP API".into(),
    ))
}

/// Unknown fields are refused: a misspelt `tables` would otherwise make a user of every table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddUserBody {
    name: String,
    role: String,
    #[serde(default)]
    tables: String,
}

/// `POST /v1/admin/users {"name","role","tables"}` → `{"token"}` (shown only now).
async fn add_user(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let b: AddUserBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "body must be {{\"name\",\"role\",\"tables\"}}: {e}"
        ))
    })?;
    let role = cairn_types::Role::parse(&b.role).ok_or_else(|| {
        bad(format!(
            "role {:?}: use admin, readwrite or readonly",
            b.role
        ))
    })?;
    let token = node
        .add_user(&b.name, role, &b.tables, None)
        .await?
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": b.name, "token": token})),
    )
        .into_response())
}

async fn list_users(State(node): State<Arc<Node>>) -> ApiResult {
    let users: Vec<Value> = node
        .list_users()
        .await?
        .into_iter()
        .map(|u| json!({"name": u.name, "role": u.role.as_str(), "tables": u.tables}))
        .collect();
    Ok(Json(json!({ "users": users })).into_response())
}

async fn remove_user(State(node): State<Arc<Node>>, Path(name): Path<String>) -> ApiResult {
    node.remove_user(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What an HTTP request needs (owned: a table name comes from the path).
enum Need {
    /// Open to anyone: the health check a load balancer makes, the console's page (its data
    /// calls carry a token), a browser's CORS preflight.
    Nothing,
    Observe,
    Admin,
    Read(String),
    Write(String),
}

impl Need {
    /// What a request of `method` on `path` needs.
    fn of(method: &axum::http::Method, path: &str) -> Need {
        use axum::http::Method;
        let read = matches!(*method, Method::GET | Method::HEAD);
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            [""] | ["health"] | ["assets", ..] => Need::Nothing,
            ["metrics"] if *method == Method::OPTIONS => Need::Nothing,
            ["metrics"] => Need::Observe,
            ["v1", "admin", "users", ..] => Need::Admin,
            // Logs can hold keys and names from error messages: they need what
            // /debug/logs on the node itself needs.
            ["v1", "admin", "nodes", _, "logs"] => Need::Admin,
            ["v1", "admin", ..] | ["v1", "tables"] | ["v1", "tables", _] if read => Need::Observe,
            ["v1", "tables", table, "keys", ..] => {
                let table = String::from_utf8_lossy(&percent_decode(table).unwrap_or_default())
                    .into_owned();
                if read {
                    Need::Read(table)
                } else {
                    Need::Write(table)
                }
            }
            _ => Need::Admin,
        }
    }

    fn access(&self) -> Option<Access<'_>> {
        Some(match self {
            Need::Nothing => return None,
            Need::Observe => Access::Observe,
            Need::Admin => Access::Admin,
            Need::Read(t) => Access::Read(t),
            Need::Write(t) => Access::Write(t),
        })
    }
}

/// Refuses a request on a secure node unless its token or client certificate allows it.
async fn require_access(
    State(node): State<Arc<Node>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let need = Need::of(req.method(), req.uri().path());
    let Some(access) = need.access() else {
        return next.run(req).await;
    };
    let certificate = req
        .extensions()
        .get::<axum::extract::ConnectInfo<HttpPeer>>()
        .and_then(|c| c.0.certificate.clone());
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let shown = Shown {
        certificate: certificate.as_deref(),
        token: Shown::bearer(token.as_deref()),
    };
    match node.authorize(shown, access).await {
        Ok(user) => {
            if let Some(name) = user {
                req.extensions_mut().insert(Caller(name));
            }
            next.run(req).await
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// axum answers a body past the request limit (413) and a method a path does not take (405)
/// in plain text or with no body; the API promises JSON errors, so those are rewritten
/// (keeping the status and the `Allow` header).
async fn json_errors(
    State(limits): State<(usize, usize)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Kept for a 405's message; both clones are cheap (a shared buffer, a known method).
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let mut resp = next.run(req).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (code, message) = match resp.status() {
        _ if json => return resp,
        StatusCode::PAYLOAD_TOO_LARGE => (
            cairn_types::ErrorCode::TooLarge,
            format!(
                "the request body is over the {} bytes a request may carry; values are limited \
                 to {} bytes (the servers' --max-value-bytes)",
                limits.0, limits.1
            ),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            cairn_types::ErrorCode::InvalidArgument,
            format!(
                "{} does not take {method}; see the README for the HTTP API",
                uri.path()
            ),
        ),
        _ => return resp,
    };
    let allow = resp.headers_mut().remove(header::ALLOW);
    let mut out = error_response(resp.status(), code, message);
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// The HTTP routes of a node.
pub(crate) fn app(node: Arc<Node>) -> Router {
    let body_limit = node.core.limits.request_bytes();
    Router::new()
        .route("/", get(console))
        .route("/health", get(health))
        .route("/metrics", get(metrics).options(metrics_preflight))
        .route("/debug/logs", get(debug_logs))
        .route("/assets/uplot.iife.min.js", get(uplot_js))
        .route("/assets/uplot.min.css", get(uplot_css))
        .route("/v1/admin/nodes", get(nodes))
        .route("/v1/admin/split", axum::routing::post(split))
        .route(
            "/v1/admin/transfer-leader",
            axum::routing::post(transfer_leader),
        )
        .route("/v1/admin/move", axum::routing::post(move_replica))
        .route("/v1/admin/operations", get(operations))
        .route("/v1/admin/controller", get(controller))
        .route("/v1/admin/controller/pause", post(pause_controller))
        .route("/v1/admin/controller/resume", post(resume_controller))
        .route("/v1/admin/nodes/{id}/metrics", get(node_metrics))
        .route("/v1/admin/nodes/{id}/logs", get(node_logs))
        .route("/v1/admin/nodes/{id}/health", get(node_health))
        .route("/v1/admin/nodes/{id}/drain", post(drain))
        .route("/v1/admin/nodes/{id}/undrain", post(undrain))
        .route("/v1/admin/nodes/{id}", axum::routing::delete(remove_node))
        .route("/v1/tables", get(list_tables).post(create_table))
        .route("/v1/tables/{table}", get(describe_table).delete(drop_table))
        .route("/v1/tables/{table}/keys", get(list_keys))
        .route(
            "/v1/tables/{table}/keys/{key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route(
            "/v1/tables/{table}/keys/",
            get(empty_key).put(empty_key).delete(empty_key),
        )
        .route("/v1/admin/users", get(list_users).post(add_user))
        .route("/v1/admin/users/{name}", axum::routing::delete(remove_user))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            require_access,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            (body_limit, node.core.limits.max_value_bytes),
            json_errors,
        ))
        .with_state(node)
}

/// Who is at the other end of an HTTP connection: the user its TLS client certificate
/// names, if it showed one.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpPeer {
    pub(crate) certificate: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::Limits;

    #[test]
    fn a_node_log_needs_admin_whichever_node_serves_it() {
        use axum::http::Method;
        let need = |m: &Method, p: &str| match Need::of(m, p) {
            Need::Nothing => "nothing",
            Need::Observe => "observe",
            Need::Admin => "admin",
            Need::Read(_) => "read",
            Need::Write(_) => "write",
        };
        let cases = [
            (Method::GET, "/health", "nothing"),
            (Method::GET, "/metrics", "observe"),
            (Method::GET, "/debug/logs", "admin"),
            (Method::GET, "/v1/admin/nodes/2/health", "observe"),
            (Method::GET, "/v1/admin/nodes/2/metrics", "observe"),
            (Method::GET, "/v1/admin/nodes/2/logs", "admin"),
            (Method::POST, "/v1/admin/nodes/2/drain", "admin"),
        ];
        for (m, p, want) in cases {
            assert_eq!(need(&m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("a%2Fb%ff").unwrap(), b"a/b\xff".to_vec());
        assert_eq!(
            percent_decode("plain+text").unwrap(),
            b"plain+text".to_vec()
        );
        assert!(percent_decode("bad%zz").is_err());
        assert!(percent_decode("cut%4").is_err());
    }

    #[test]
    fn list_bounds_combine_prefix_start_and_cursor() {
        let (s, e, l) = list_bounds(&Limits::default(), b"user/", b"", b"", b"", 0).unwrap();
        assert_eq!(
            (s, e, l),
            (b"user/".to_vec(), Some(b"user0".to_vec()), 1000)
        );
        let (s, _, _) =
            list_bounds(&Limits::default(), b"user/", b"", b"", b"user/7\0", 10).unwrap();
        assert_eq!(s, b"user/7\0".to_vec());
        assert!(list_bounds(&Limits::default(), b"", b"", b"", b"", 10_001).is_err());
        // A bound longer than any key is refused before it reaches the engine.
        let long = vec![b'a'; Limits::default().max_key_bytes + 2];
        let err = list_bounds(&Limits::default(), b"", b"", &long, b"", 10).unwrap_err();
        assert!(err.to_string().contains("end is 4098 bytes"), "{err}");
    }
}
