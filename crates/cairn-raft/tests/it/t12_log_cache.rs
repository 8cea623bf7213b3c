//! The log store's cache of recent entries answers exactly what the engine holds, through
//! appends past its bound, truncation (a follower's conflicting suffix) and purge.

use cairn_raft::{Command, KvCommand, KvOp, LogStore, Syncer, TypeConfig, typ};
use cairn_storage::{MemEngine, SharedEngine};
use cairn_types::{Epoch, PartitionId, TableId};
use openraft::EntryPayload;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use std::sync::Arc;

fn entry(term: u64, index: u64) -> typ::Entry {
    let cmd = KvCommand {
        request_id: None,
        epoch: Epoch {
            conf_ver: 1,
            version: 1,
        },
        proposed_at_ms: index,
        op: KvOp::Put {
            table: TableId(1),
            key: format!("k{index:05}").into_bytes(),
            value: format!("term {term} index {index}").into_bytes(),
        },
    };
    typ::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(term, 1, index),
        payload: EntryPayload::Normal(Command::Kv(cmd)),
    }
}

async fn append(log: &mut LogStore, term: u64, indexes: std::ops::Range<u64>) {
    let entries: Vec<_> = indexes.map(|i| entry(term, i)).collect();
    log.append(entries, IOFlushed::noop()).await.unwrap();
}

/// (index, term, value) of each entry, to compare logs read two ways.
fn summary(entries: &[typ::Entry]) -> Vec<(u64, u64, String)> {
    entries
        .iter()
        .map(|e| {
            let value = match &e.payload {
                EntryPayload::Normal(Command::Kv(KvCommand {
                    op: KvOp::Put { value, .. },
                    ..
                })) => String::from_utf8_lossy(value).into_owned(),
                _ => String::new(),
            };
            (e.log_id.index, e.log_id.leader_id.term, value)
        })
        .collect()
}

/// Reads `range` from the store (cache first) and from a fresh store on the same engine (no
/// cache, so straight from the engine), and checks they agree and have the expected terms.
async fn check(
    log: &mut LogStore,
    engine: &SharedEngine,
    syncer: &Syncer,
    range: std::ops::Range<u64>,
    term_of: impl Fn(u64) -> u64,
) {
    let cached = log.try_get_log_entries(range.clone()).await.unwrap();
    let mut fresh = LogStore::new(PartitionId(5), engine.clone(), syncer.clone());
    let stored = fresh.try_get_log_entries(range.clone()).await.unwrap();
    assert_eq!(summary(&cached), summary(&stored), "range {range:?}");
    let want: Vec<_> = range
        .clone()
        .map(|i| (i, term_of(i), format!("term {} index {i}", term_of(i))))
        .collect();
    assert_eq!(summary(&cached), want, "range {range:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_log_cache_agrees_with_the_engine() {
    let engine: SharedEngine = Arc::new(MemEngine::new());
    let syncer = Syncer::inline(engine.clone());
    let mut log = LogStore::new(PartitionId(5), engine.clone(), syncer.clone());

    // More than the cache holds (512 entries), in batches like a busy leader's.
    for start in (1..3001).step_by(100) {
        append(&mut log, 1, start..start + 100).await;
    }
    check(&mut log, &engine, &syncer, 1..3001, |_| 1).await; // mostly from the engine
    check(&mut log, &engine, &syncer, 2900..3001, |_| 1).await; // from the cache
    check(&mut log, &engine, &syncer, 2400..2600, |_| 1).await; // across its first entry

    // A new leader overwrites the suffix from 2,950 on with entries of term 2.
    log.truncate_after(Some(openraft::testing::log_id::<TypeConfig>(1, 1, 2949)))
        .await
        .unwrap();
    let after = log.try_get_log_entries(2940..3001).await.unwrap();
    assert_eq!(
        after.len(),
        10,
        "the truncated suffix is gone from the cache too"
    );
    append(&mut log, 2, 2950..2980).await;
    let term = |i: u64| if i >= 2950 { 2 } else { 1 };
    check(&mut log, &engine, &syncer, 2900..2980, term).await;
    let past_end = log.try_get_log_entries(2970..3001).await.unwrap();
    assert_eq!(past_end.len(), 10, "nothing beyond the new last entry");

    // A snapshot covers up to 2,960: the purged entries are gone from both.
    log.purge(openraft::testing::log_id::<TypeConfig>(2, 1, 2960))
        .await
        .unwrap();
    assert!(
        log.try_get_log_entries(2955..2961)
            .await
            .unwrap()
            .is_empty()
    );
    check(&mut log, &engine, &syncer, 2961..2980, term).await;

    // Appends after the purge extend what the cache holds.
    append(&mut log, 2, 2980..2990).await;
    check(&mut log, &engine, &syncer, 2961..2990, term).await;
}
