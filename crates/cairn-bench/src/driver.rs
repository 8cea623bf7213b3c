//! The stores a benchmark can drive, behind one set of operations.

use clap::ValueEnum;
use serde::Serialize;
use std::sync::Arc;

/// Which store to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Cairn, through its native gRPC client.
    Cairn,
    /// etcd v3, through the etcd-client crate (build with `--features etcd`).
    Etcd,
}

/// Read consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Linearizable reads (both stores' default).
    Linearizable,
    /// Cairn's `stale` reads; etcd's serializable reads.
    Stale,
}

/// A failed operation, by kind (for the error counts of a report).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct OpError {
    /// Short class of the error, e.g. `UNAVAILABLE`.
    pub kind: String,
    /// What the store said.
    pub message: String,
}

/// A handle one worker uses; cheap to clone.
// etcd's client is held inline: a run has one driver per worker, so its size does not matter.
#[cfg_attr(feature = "etcd", allow(clippy::large_enum_variant))]
#[derive(Clone)]
pub enum Driver {
    /// Cairn: the client and the table.
    Cairn {
        /// Shared client (it balances over the endpoints).
        client: Arc<cairn_client::Client>,
        /// Table name.
        table: String,
        /// Send reads as stale reads.
        stale: bool,
    },
    /// etcd: a KV client; keys are prefixed with the table name and `/`.
    #[cfg(feature = "etcd")]
    Etcd {
        /// KV client (one clone per worker).
        kv: etcd_client::KvClient,
        /// Key prefix.
        prefix: Vec<u8>,
        /// Serializable reads.
        serializable: bool,
    },
}

fn cairn_err(e: cairn_client::Error) -> OpError {
    OpError {
        kind: e.code.as_str().to_string(),
        message: e.message,
    }
}

#[cfg(feature = "etcd")]
fn etcd_err(e: etcd_client::Error) -> OpError {
    let kind = match &e {
        etcd_client::Error::GRpcStatus(s) => format!("ETCD_{:?}", s.code()).to_uppercase(),
        _ => "ETCD_CLIENT".to_string(),
    };
    OpError {
        kind,
        message: e.to_string(),
    }
}

impl Driver {
    /// Connects to `endpoints` and prepares `table` (Cairn: created with `replication`
    /// replicas and partitions split at `splits` if missing). Cairn is driven through `cairn`
    /// when given (a client with the caller's TLS and credentials), else a plaintext client.
    pub async fn connect(
        kind: DriverKind,
        endpoints: &[String],
        cairn: Option<cairn_client::Client>,
        (table, replication): (&str, u32),
        splits: Vec<Vec<u8>>,
        consistency: Consistency,
        op_timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        match kind {
            DriverKind::Cairn => {
                let client = match cairn {
                    Some(c) => c,
                    None => cairn_client::Client::new(endpoints)
                        .map_err(|e| anyhow::anyhow!("bad --endpoints: {e}"))?,
                }
                .with_timeout(op_timeout);
                match client.create_table(table, replication, splits).await {
                    Ok(_) => {}
                    Err(e) if e.code == cairn_types::ErrorCode::AlreadyExists => {}
                    Err(e) if e.code == cairn_types::ErrorCode::NotEnoughNodes => anyhow::bail!(
                        "cannot create table {table}: {e} (cairn bench --replication N sets it)"
                    ),
                    Err(e) => anyhow::bail!(
                        "cannot create table {table}: {e} (is a cluster running at {}?)",
                        endpoints.join(",")
                    ),
                }
                Ok(Driver::Cairn {
                    client: Arc::new(client),
                    table: table.to_string(),
                    stale: consistency == Consistency::Stale,
                })
            }
            #[cfg(feature = "etcd")]
            DriverKind::Etcd => {
                let _ = (splits, cairn);
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(op_timeout);
                let client = etcd_client::Client::connect(endpoints, Some(opts))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot reach etcd at {}: {e} (is an etcd cluster running there?)",
                            endpoints.join(",")
                        )
                    })?;
                Ok(Driver::Etcd {
                    kv: client.kv_client(),
                    prefix: format!("{table}/").into_bytes(),
                    serializable: consistency == Consistency::Stale,
                })
            }
            #[cfg(not(feature = "etcd"))]
            DriverKind::Etcd => anyhow::bail!(
                "this cairn was built without the etcd driver: build with \
                 `cargo build --release --features etcd` (needs protoc: \
                 apt-get install protobuf-compiler), or run bench/compare-etcd.sh"
            ),
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        match self {
            Driver::Cairn { client, table, .. } => {
                client.put(table, key, value).await.map_err(cairn_err)
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd { kv, prefix, .. } => {
                let k = [prefix.as_slice(), key].concat();
                kv.put(k, value, None).await.map(|_| ()).map_err(etcd_err)
            }
        }
    }

    /// Reads `key`; whether it was found.
    pub async fn get(&mut self, key: &[u8]) -> Result<bool, OpError> {
        match self {
            Driver::Cairn {
                client,
                table,
                stale,
            } => {
                let r = if *stale {
                    client.get_stale(table, key).await
                } else {
                    client.get(table, key).await
                };
                r.map(|v| v.is_some()).map_err(cairn_err)
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd {
                kv,
                prefix,
                serializable,
            } => {
                let k = [prefix.as_slice(), key].concat();
                let opts = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                kv.get(k, opts)
                    .await
                    .map(|r| !r.kvs().is_empty())
                    .map_err(etcd_err)
            }
        }
    }

    /// Reads up to `limit` records in key order from `start`; how many came back.
    pub async fn scan(&mut self, start: &[u8], limit: u32) -> Result<usize, OpError> {
        match self {
            Driver::Cairn {
                client,
                table,
                stale,
            } => {
                let opts = cairn_client::ListOptions {
                    start: start.to_vec(),
                    limit,
                    values: true,
                    stale: *stale,
                    ..Default::default()
                };
                client
                    .list(table, &opts)
                    .await
                    .map(|p| p.keys.len())
                    .map_err(cairn_err)
            }
            #[cfg(feature = "etcd")]
            Driver::Etcd {
                kv,
                prefix,
                serializable,
            } => {
                let k = [prefix.as_slice(), start].concat();
                let mut end = prefix.clone();
                if let Some(last) = end.last_mut() {
                    *last += 1; // the end of the prefix range: "table0" after "table/"
                }
                let mut opts = etcd_client::GetOptions::new()
                    .with_range(end)
                    .with_limit(i64::from(limit));
                if *serializable {
                    opts = opts.with_serializable();
                }
                kv.get(k, Some(opts))
                    .await
                    .map(|r| r.kvs().len())
                    .map_err(etcd_err)
            }
        }
    }
}
