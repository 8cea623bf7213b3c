use cairn_raft::{Command, GroupStateMachine, KvCommand, KvOp, SESSION_TTL_MS, typ};
use cairn_storage::{MemEngine, SharedEngine};
use cairn_types::{
    ClientId, Epoch, Error, KeyRange, NodeId, PartitionDesc, PartitionId, RequestId, TableId,
};
use openraft::EntryPayload;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use std::sync::Arc;

const T: TableId = TableId(3);

fn desc(range: KeyRange) -> PartitionDesc {
    PartitionDesc {
        id: PartitionId(9),
        table_id: T,
        range,
        epoch: Epoch {
            conf_ver: 1,
            version: 1,
        },
        replicas: vec![NodeId(1)],
    }
}

fn put(index: u64, key: &str, value: &str, rid: Option<(u64, u64, u64)>, at_ms: u64) -> typ::Entry {
    let cmd = KvCommand {
        request_id: rid.map(|(c, seq, fi)| RequestId {
            client: ClientId(c),
            seq,
            first_incomplete: fi,
        }),
        epoch: Epoch {
            conf_ver: 1,
            version: 1,
        },
        proposed_at_ms: at_ms,
        op: KvOp::Put {
            table: T,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        },
    };
    typ::Entry {
        log_id: openraft::testing::log_id::<cairn_raft::TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Kv(cmd)),
    }
}

async fn apply(sm: &mut GroupStateMachine, entries: Vec<typ::Entry>) {
    let items: Vec<Result<_, std::io::Error>> =
        entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(futures::stream::iter(items)).await.unwrap();
}

fn open(engine: &SharedEngine, range: KeyRange) -> (GroupStateMachine, cairn_raft::PartitionView) {
    GroupStateMachine::partition(engine.clone(), desc(range)).unwrap()
}

/// A write applied twice under one request id changes the data once: a late copy cannot
/// overwrite a newer value, and neither can a copy older than the client's
/// `first_incomplete`.
#[tokio::test]
async fn t20_duplicate_request_ids_apply_once() {
    let engine: SharedEngine = Arc::new(MemEngine::new());
    let (mut sm, view) = open(&engine, KeyRange::full());
    apply(
        &mut sm,
        vec![
            put(1, "k", "old", Some((5, 1, 1)), 0),
            put(2, "k", "new", Some((5, 2, 1)), 0),
        ],
    )
    .await;
    apply(&mut sm, vec![put(3, "k", "old", Some((5, 1, 1)), 0)]).await;
    assert_eq!(view.get(&engine, b"k").unwrap(), Some(b"new".to_vec()));
    // The client has seen 1 and 2 answered: every copy of them is stale from now on.
    apply(
        &mut sm,
        vec![
            put(4, "x", "1", Some((5, 3, 3)), 0),
            put(5, "k", "old", Some((5, 2, 1)), 0),
        ],
    )
    .await;
    assert_eq!(view.get(&engine, b"k").unwrap(), Some(b"new".to_vec()));
    // Another client's seq 1 is its own.
    apply(&mut sm, vec![put(6, "k", "other", Some((6, 1, 1)), 0)]).await;
    assert_eq!(view.get(&engine, b"k").unwrap(), Some(b"other".to_vec()));
}

/// Sessions survive a reopen of the state machine (a node restart).
#[tokio::test]
async fn t21_sessions_survive_restart() {
    let engine: SharedEngine = Arc::new(MemEngine::new());
    {
        let (mut sm, _) = open(&engine, KeyRange::full());
        apply(
            &mut sm,
            vec![
                put(1, "k", "old", Some((5, 1, 1)), 0),
                put(2, "k", "new", Some((5, 2, 1)), 0),
            ],
        )
        .await;
    }
    let (mut sm, view) = open(&engine, KeyRange::full());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(2));
    apply(&mut sm, vec![put(3, "k", "old", Some((5, 1, 1)), 0)]).await;
    assert_eq!(view.get(&engine, b"k").unwrap(), Some(b"new".to_vec()));
}

/// Idle sessions expire after the TTL (by proposal time), so the table stays bounded.
#[tokio::test]
async fn t22_idle_sessions_expire() {
    let engine: SharedEngine = Arc::new(MemEngine::new());
    let (mut sm, view) = open(&engine, KeyRange::full());
    apply(&mut sm, vec![put(1, "k", "v1", Some((5, 1, 1)), 1_000)]).await;
    let later = 1_000 + SESSION_TTL_MS + 61_000;
    apply(&mut sm, vec![put(2, "z", "v", Some((6, 1, 1)), later)]).await;
    // Client 5's session is gone: a copy of its seq 1 is applied again.
    apply(
        &mut sm,
        vec![put(3, "k", "v1-again", Some((5, 1, 1)), later)],
    )
    .await;
    assert_eq!(view.get(&engine, b"k").unwrap(), Some(b"v1-again".to_vec()));
}

/// A write whose key is outside the partition's range is refused at apply time.
#[tokio::test]
async fn t23_out_of_range_write_is_refused() {
    let engine: SharedEngine = Arc::new(MemEngine::new());
    let (_, view) = open(
        &engine,
        KeyRange {
            start: b"a".to_vec(),
            end: Some(b"m".to_vec()),
        },
    );
    assert!(matches!(
        view.check(
            Epoch {
                conf_ver: 1,
                version: 1
            },
            Some(b"q")
        ),
        Err(Error::KeyNotInRange(_))
    ));
    assert!(matches!(
        view.check(
            Epoch {
                conf_ver: 1,
                version: 2
            },
            Some(b"b")
        ),
        Err(Error::EpochMismatch { .. })
    ));
    assert!(
        view.check(
            Epoch {
                conf_ver: 1,
                version: 1
            },
            Some(b"b")
        )
        .is_ok()
    );
}

/// A snapshot carries the data and sessions of the partition and installs on an empty
/// replica, replacing whatever it had.
#[tokio::test]
async fn t24_snapshot_round_trip() {
    let src: SharedEngine = Arc::new(MemEngine::new());
    let (mut sm, _) = open(&src, KeyRange::full());
    let mut entries = Vec::new();
    for i in 1..=100u64 {
        entries.push(put(
            i,
            &format!("k{i:03}"),
            &format!("v{i}"),
            Some((5, i, i)),
            0,
        ));
    }
    apply(&mut sm, entries).await;
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(100));

    let dst: SharedEngine = Arc::new(MemEngine::new());
    let (mut other, view) = open(&dst, KeyRange::full());
    apply(&mut other, vec![put(1, "stale", "x", None, 0)]).await;
    other
        .install_snapshot(&snap.meta, snap.snapshot.clone())
        .await
        .unwrap();
    assert_eq!(view.get(&dst, b"stale").unwrap(), None);
    assert_eq!(view.get(&dst, b"k050").unwrap(), Some(b"v50".to_vec()));
    assert_eq!(view.scan(&dst, b"", None, 1000).unwrap().len(), 100);
    // The sessions came along: a late copy of seq 100 does not apply again.
    apply(
        &mut other,
        vec![put(101, "k100", "late", Some((5, 100, 100)), 0)],
    )
    .await;
    assert_eq!(view.get(&dst, b"k100").unwrap(), Some(b"v100".to_vec()));
    let (applied, _) = other.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(101));
}
