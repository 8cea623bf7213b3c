//! The log store's cache of recent entries answers exactly what the engine holds, through
//! appends past its bound, truncation (a follower's conflicting suffix) and purge.

use cairn_raft::{Command, KvCommand, KvOp, LogStore, MAX_APPEND_BYTES, Syncer, TypeConfig, typ};
use cairn_storage::{MemEngine, SharedEngine};
use cairn_types::{Epoch, PartitionId, TableId};
use openraft::EntryPayload;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use std::sync::Arc;

fn entry(term: u64, index: u64) -> typ::Entry {
    entry_with(
        term,
        index,
        format!("term {term} index {index}").into_bytes(),
    )
}

fn entry_with(term: u64, index: u64, value: Vec<u8>) -> typ::Entry {
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
            value,
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

/// A follower catching up is sent at most [`MAX_APPEND_BYTES`] of entries per message (one
/// entry larger than that goes alone), whether the entries come from the cache, with sizes
/// recorded on append, or from the engine after a restart, with no sizes known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_replication_reads_are_capped_in_bytes() {
    const VALUE: usize = 300 << 10;
    let engine: SharedEngine = Arc::new(MemEngine::new());
    let syncer = Syncer::inline(engine.clone());
    let (full, _reports) = tokio::sync::mpsc::unbounded_channel();
    let mut log = LogStore::new(PartitionId(5), engine.clone(), syncer.clone()).with_bounds(
        1000,
        64 << 20,
        full,
    );
    let mut entries: Vec<_> = (1..=10)
        .map(|i| entry_with(1, i, vec![i as u8; VALUE]))
        .collect();
    // Entry 11 alone is twice the cap.
    entries.push(entry_with(1, 11, vec![11; 2 * MAX_APPEND_BYTES as usize]));
    log.append(entries, IOFlushed::noop()).await.unwrap();

    let mut restarted = LogStore::new(PartitionId(5), engine.clone(), syncer.clone());
    for (name, store) in [("appended here", &mut log), ("reopened", &mut restarted)] {
        let first = store.limited_get_log_entries(1, 12).await.unwrap();
        let indexes: Vec<u64> = first.iter().map(|e| e.log_id.index).collect();
        // Three 300 KiB values fit 1 MiB; a fourth would not.
        assert_eq!(indexes, vec![1, 2, 3], "{name}");
        let rest = store.limited_get_log_entries(9, 12).await.unwrap();
        let indexes: Vec<u64> = rest.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![9, 10], "{name}: entry 11 would pass the cap");
        let big = store.limited_get_log_entries(11, 12).await.unwrap();
        assert_eq!(big.len(), 1, "{name}: an entry past the cap goes alone");
        assert_eq!(summary(&big)[0].0, 11);
    }
}
