//! The workload of `cairn chaos` and of the simulation: concurrent clients run put / get /
//! delete on a small set of keys (registers) and List over a key range, with a unique value
//! per write, and report every operation as an invoke and a completion [`Event`].
//!
//! Time comes from tokio's clock, so under a simulator the history carries simulated time.

use crate::{Event, EventType, Function};
use cairn_client::{Client, ListOptions};
use cairn_types::ErrorCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The name of register `i`.
pub fn key_name(i: u32) -> String {
    format!("k{i:03}")
}

fn event(process: u64, kind: EventType, f: Function, table: &str, started: Instant) -> Event {
    Event {
        process,
        kind,
        f,
        table: table.to_string(),
        key: None,
        value: None,
        start: None,
        end: None,
        keys: None,
        error: None,
        time: started.elapsed().as_nanos() as u64,
    }
}

/// An outcome class for a failed operation: did it certainly not happen?
fn failed(e: &cairn_client::Error, write: bool) -> EventType {
    let definite = !matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal);
    if definite || !write {
        EventType::Fail
    } else {
        EventType::Info
    }
}

/// What the clients of one run share.
pub struct Workload {
    /// The table.
    pub table: String,
    /// Registers: keys `k000` .. `k{keys-1}`.
    pub keys: u32,
    /// Read with `stale` consistency (to show that the checker catches stale reads).
    pub stale: bool,
    /// Time zero of the history.
    pub started: Instant,
    /// No operation starts after this.
    pub deadline: Instant,
    /// Operations left to start, across clients.
    pub budget: AtomicU64,
    /// Where events go.
    pub tx: mpsc::UnboundedSender<Event>,
    /// Longest pause of a client between two operations (a random share of it is taken);
    /// zero for back-to-back operations.
    pub think: std::time::Duration,
}

/// One client: operations until the deadline or the budget, one at a time; after an
/// indeterminate write it goes on as process `process + stride`.
pub async fn run_client(
    ctx: Arc<Workload>,
    client: Client,
    first_process: u64,
    stride: u64,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = first_process;
    let mut n = 0u64;
    let t = &ctx.table;
    while Instant::now() < ctx.deadline {
        let left = ctx
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
        if left.is_err() {
            break;
        }
        n += 1;
        if !ctx.think.is_zero() {
            tokio::time::sleep(ctx.think.mul_f64(rng.random_range(0.0..1.0))).await;
        }
        let key = key_name(rng.random_range(0..ctx.keys));
        let roll: u32 = rng.random_range(0..100);
        let send = |e: Event| {
            let _ = ctx.tx.send(e);
        };
        // A completion event, stamped now.
        let complete = |e: Event| {
            send(Event {
                time: ctx.started.elapsed().as_nanos() as u64,
                ..e
            })
        };
        if roll < 40 {
            let value = format!("{process}-{n}");
            let mut inv = event(process, EventType::Invoke, Function::Put, t, ctx.started);
            inv.key = Some(key.clone());
            inv.value = Some(value.clone());
            send(inv.clone());
            let r = client.put(t, key.as_bytes(), value.as_bytes()).await;
            let (kind, error) = match &r {
                Ok(()) => (EventType::Ok, None),
                Err(e) => (failed(e, true), Some(describe(e))),
            };
            complete(Event { kind, error, ..inv });
            if kind == EventType::Info {
                process += stride;
            }
        } else if roll < 80 {
            let mut inv = event(process, EventType::Invoke, Function::Get, t, ctx.started);
            inv.key = Some(key.clone());
            send(inv.clone());
            let r = if ctx.stale {
                client.get_stale(t, key.as_bytes()).await
            } else {
                client.get(t, key.as_bytes()).await
            };
            let done = match r {
                Ok(v) => Event {
                    kind: EventType::Ok,
                    value: v.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    ..inv.clone()
                },
                Err(e) => Event {
                    kind: failed(&e, false),
                    error: Some(describe(&e)),
                    ..inv.clone()
                },
            };
            complete(done);
        } else if roll < 90 {
            let mut inv = event(process, EventType::Invoke, Function::Delete, t, ctx.started);
            inv.key = Some(key.clone());
            send(inv.clone());
            let (kind, error) = match client.delete(t, key.as_bytes()).await {
                Ok(()) => (EventType::Ok, None),
                Err(e) => (failed(&e, true), Some(describe(&e))),
            };
            complete(Event { kind, error, ..inv });
            if kind == EventType::Info {
                process += stride;
            }
        } else {
            let start = key_name(rng.random_range(0..ctx.keys));
            let mut inv = event(process, EventType::Invoke, Function::List, t, ctx.started);
            inv.start = Some(start.clone());
            send(inv.clone());
            let opts = ListOptions {
                start: start.clone().into_bytes(),
                limit: 1000,
                stale: ctx.stale,
                ..Default::default()
            };
            let done = match client.list(t, &opts).await {
                // A page covers [start, cursor) when it has a cursor (it stopped at a
                // partition boundary), else everything from start.
                Ok(page) => Event {
                    kind: EventType::Ok,
                    end: page
                        .cursor
                        .map(|c| String::from_utf8_lossy(&c).into_owned()),
                    keys: Some(
                        page.keys
                            .iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect(),
                    ),
                    ..inv.clone()
                },
                Err(e) => Event {
                    kind: failed(&e, false),
                    error: Some(describe(&e)),
                    ..inv.clone()
                },
            };
            complete(done);
        }
    }
}

fn describe(e: &cairn_client::Error) -> String {
    format!("{}: {}", e.code.as_str(), e.message)
}

/// The process id of the final reads.
pub const FINAL_PROCESS: u64 = 1_000_000;

/// Reads every key once more, linearizably, after the faults have healed: nothing
/// acknowledged may be lost. Fails if a read fails (the cluster did not recover).
pub async fn final_reads(ctx: &Workload, reader: &Client) -> Result<(), String> {
    for k in 0..ctx.keys {
        let key = key_name(k);
        let mut inv = event(
            FINAL_PROCESS,
            EventType::Invoke,
            Function::Get,
            &ctx.table,
            ctx.started,
        );
        inv.key = Some(key.clone());
        let _ = ctx.tx.send(inv.clone());
        let done = match reader.get(&ctx.table, key.as_bytes()).await {
            Ok(v) => Event {
                kind: EventType::Ok,
                value: v.map(|b| String::from_utf8_lossy(&b).into_owned()),
                time: ctx.started.elapsed().as_nanos() as u64,
                ..inv
            },
            Err(e) => {
                return Err(format!(
                    "final read of {key} failed after the run: {e}; the cluster did not recover"
                ));
            }
        };
        let _ = ctx.tx.send(done);
    }
    Ok(())
}

/// Split keys that cut the registers into three partitions.
pub fn split_keys(keys: u32) -> Vec<Vec<u8>> {
    vec![
        key_name(keys / 3).into_bytes(),
        key_name(2 * keys / 3).into_bytes(),
    ]
}
