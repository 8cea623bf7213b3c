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
        replica_ids: vec![NodeId(1)]
            .into_iter()
            .map(|n| (n, cairn_types::ReplicaId(n.0)))
            .collect(),
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

/// Writes applied out of order behind a slow one stay deduplicated when the client's
/// `first_incomplete` moves past some of them: what is at or above it is still known to be
/// applied, and what is below it is stale.
#[tokio::test]
async fn t20_seqs_above_the_floor_stay_known_when_it_moves() {
    let engine: SharedEngine = Arc::new(MemEngine::new());
    let (mut sm, view) = open(&engine, KeyRange::full());
    // Seq 1 is slow: 2 to 6 apply first, each on its own key.
    let first: Vec<_> = (2..=6)
        .map(|seq| put(seq, &format!("k{seq}"), "v", Some((5, seq, 1)), 0))
        .chain([put(7, "k1", "v", Some((5, 1, 1)), 0)])
        .collect();
    apply(&mut sm, first).await;
    // The client has seen 1 to 4 answered; 5 and 6 are applied but not yet answered.
    apply(&mut sm, vec![put(8, "k7", "v", Some((5, 7, 5)), 0)]).await;
    // Copies of 5 and 6 (still at or above the floor) and of 3 (below it) change nothing.
    apply(
        &mut sm,
        vec![
            put(9, "k5", "copy", Some((5, 5, 1)), 0),
            put(10, "k6", "copy", Some((5, 6, 5)), 0),
            put(11, "k3", "copy", Some((5, 3, 1)), 0),
        ],
    )
    .await;
    for k in ["k3", "k5", "k6"] {
        assert_eq!(
            view.get(&engine, k.as_bytes()).unwrap(),
            Some(b"v".to_vec()),
            "{k}"
        );
    }
    // A new seq still applies.
    apply(&mut sm, vec![put(12, "k8", "new", Some((5, 8, 5)), 0)]).await;
    assert_eq!(view.get(&engine, b"k8").unwrap(), Some(b"new".to_vec()));
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
            T,
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
            T,
            Some(b"b")
        ),
        Err(Error::EpochMismatch { .. })
    ));
    // A request naming another table never reaches this partition's data.
    assert!(matches!(
        view.check(Epoch::INITIAL, TableId(4), Some(b"b")),
        Err(Error::PartitionNotFound(_))
    ));
    assert!(
        view.check(
            Epoch {
                conf_ver: 1,
                version: 1
            },
            T,
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
    let snap = build(&mut sm).await;
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
    assert_eq!(
        view.scan(&dst, b"", None, rows(1000)).unwrap().rows.len(),
        100
    );
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

fn split(index: u64, key: &str, right: u64, version: u64) -> typ::Entry {
    let cmd = KvCommand {
        request_id: None,
        epoch: Epoch {
            conf_ver: 1,
            version,
        },
        proposed_at_ms: 0,
        op: KvOp::Split {
            key: key.as_bytes().to_vec(),
            right: PartitionId(right),
        },
    };
    typ::Entry {
        log_id: openraft::testing::log_id::<cairn_raft::TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Kv(cmd)),
    }
}

fn membership(index: u64) -> typ::Entry {
    let member = cairn_raft::Member {
        node: 1,
        addr: "n1:7001".into(),
    };
    let m = typ::Membership::new(
        vec![std::collections::BTreeSet::from([1u64])],
        std::collections::BTreeMap::from([(1u64, member)]),
    )
    .unwrap();
    typ::Entry {
        log_id: openraft::testing::log_id::<cairn_raft::TypeConfig>(1, 1, index),
        payload: EntryPayload::Membership(m),
    }
}

/// A split applied from the log shrinks the left descriptor, seeds the right half's group
/// (descriptor, membership, sessions, a last-applied id no leader can precede) and hands it
/// to the node; a stale epoch, a key at the start and writes routed with the old epoch are
/// refused.
#[tokio::test]
async fn t25_split_seeds_the_right_half() {
    let engine: SharedEngine = Arc::new(MemEngine::new());
    let (sm, left) = open(&engine, KeyRange::full());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sm = sm.on_split(tx, cairn_types::ReplicaId(1));
    apply(
        &mut sm,
        vec![
            membership(1),
            put(2, "a", "1", Some((5, 1, 1)), 0),
            put(3, "q", "2", Some((5, 2, 1)), 0),
        ],
    )
    .await;
    assert_eq!(
        left.desc().epoch,
        Epoch::INITIAL,
        "the first membership bumps nothing"
    );
    apply(&mut sm, vec![split(4, "m", 20, 1)]).await;
    let d = left.desc();
    assert_eq!(d.range.end.as_deref(), Some(&b"m"[..]));
    assert_eq!(
        d.epoch,
        Epoch {
            conf_ver: 1,
            version: 2
        }
    );
    let (from, right) = rx
        .try_recv()
        .expect("the right half was handed to the node");
    assert_eq!(from, PartitionId(9));
    assert_eq!(
        (
            right.id,
            right.range.start.as_slice(),
            right.range.end.clone()
        ),
        (PartitionId(20), &b"m"[..], None)
    );
    assert_eq!(
        (right.epoch, right.replicas.clone()),
        (d.epoch, d.replicas.clone())
    );
    // Writes routed before the split are refused at apply and do not land.
    apply(&mut sm, vec![put(5, "z", "late", None, 0)]).await;
    assert_eq!(left.get(&engine, b"z").unwrap(), None);
    assert!(matches!(
        left.check(Epoch::INITIAL, T, Some(b"b")),
        Err(Error::EpochMismatch { ref descs, .. }) if descs.len() == 2 && descs[1].id == PartitionId(20)
    ));
    // A second split with the old epoch, or at the left's start, changes nothing.
    apply(&mut sm, vec![split(6, "g", 21, 1), split(7, "", 21, 2)]).await;
    assert!(rx.try_recv().is_err());
    assert_eq!(left.desc(), d);
    // The right half opens from its seed: applied id, membership, data and sessions.
    let (mut rsm, rview) = GroupStateMachine::partition(engine.clone(), right.clone()).unwrap();
    let (applied, m) = rsm.applied_state().await.unwrap();
    assert_eq!(applied, Some(cairn_raft::split_seed_log_id()));
    assert_eq!(m.membership().voter_ids().collect::<Vec<_>>(), vec![1]);
    assert_eq!(rview.desc(), right);
    assert_eq!(rview.get(&engine, b"q").unwrap(), Some(b"2".to_vec()));
    let retry = |index| {
        let mut e = put(index, "q", "retried", Some((5, 2, 1)), 0);
        if let EntryPayload::Normal(Command::Kv(c)) = &mut e.payload {
            c.epoch.version = 2;
        }
        e
    };
    apply(&mut rsm, vec![retry(1)]).await;
    assert_eq!(
        rview.get(&engine, b"q").unwrap(),
        Some(b"2".to_vec()),
        "a retry across the split applies once"
    );
    // The left's snapshot holds only the left's keys.
    let snap = build(&mut sm).await;
    let dst: SharedEngine = Arc::new(MemEngine::new());
    let (mut other, view) = open(&dst, KeyRange::full());
    other
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(view.desc(), d);
    assert_eq!(view.scan(&dst, b"", None, rows(100)).unwrap().rows.len(), 1);
}

/// A snapshot of large values goes in chunks of about `CHUNK_BYTES` (one row over at
/// most), not in one message as large as the partition: a chunk past what a peer accepts
/// could never be sent, and the follower would never catch up.
#[tokio::test]
async fn t26_snapshot_chunks_of_large_values_stay_small() {
    use cairn_raft::snapshot::{CHUNK_BYTES, SnapshotData};
    let src: SharedEngine = Arc::new(MemEngine::new());
    let (mut sm, _) = open(&src, KeyRange::full());
    let big = "x".repeat(512 << 10);
    let entries: Vec<_> = (1..=24u64)
        .map(|i| put(i, &format!("k{i:02}"), &big, None, 0))
        .collect();
    apply(&mut sm, entries).await;
    let snap = build(&mut sm).await;
    let SnapshotData::View(view) = &snap.snapshot else {
        panic!("a built snapshot is a view")
    };
    let (mut after, mut keys) = (None::<Vec<u8>>, Vec::new());
    loop {
        let rows = view.rows_after(after.as_deref()).unwrap();
        let Some((last, _)) = rows.last() else { break };
        after = Some(last.clone());
        let bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(
            bytes <= CHUNK_BYTES + big.len() + 64,
            "a chunk of {bytes} bytes"
        );
        keys.extend(rows.into_iter().map(|(k, v)| {
            assert_eq!(v, big.as_bytes());
            k
        }));
    }
    let want: Vec<Vec<u8>> = (1..=24).map(|i| format!("k{i:02}").into_bytes()).collect();
    assert_eq!(keys, want, "every row once, in order");
}

/// A snapshot is read in chunks of bounded size from a read view taken when it was built
/// (later writes do not leak in), staged chunk by chunk on the receiver and installed; an
/// install cut short by a crash after its marker is finished from the staged copy at the
/// next open, so the replica ends with the snapshot's state, never a mix.
#[tokio::test]
async fn t26_streamed_snapshot_and_interrupted_install() {
    use cairn_raft::snapshot::{Installing, SnapshotChunk, SnapshotData, stage_chunk};
    use cairn_storage::{Space, WriteBatch, keys};
    let src: SharedEngine = Arc::new(MemEngine::new());
    let (mut sm, _) = open(&src, KeyRange::full());
    let big = "x".repeat(4096);
    let entries: Vec<_> = (1..=1500u64)
        .map(|i| put(i, &format!("k{i:05}"), &big, Some((5, i, i)), 0))
        .collect();
    apply(&mut sm, entries).await;
    let snap = build(&mut sm).await;
    // Written after the build: not in the snapshot.
    apply(&mut sm, vec![put(1501, "late", "v", None, 0)]).await;
    let SnapshotData::View(view) = &snap.snapshot else {
        panic!("a built snapshot is a view")
    };
    let first = view.rows_after(None).unwrap();
    let bytes: usize = first.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(first.len() < 1500 && bytes <= cairn_raft::snapshot::CHUNK_BYTES + 8192);

    // Stage it on another engine the way the network does, then crash mid-install: the
    // marker is durable, the range holds junk from the old state and a half copy.
    let dst: SharedEngine = Arc::new(MemEngine::new());
    let group = PartitionId(9);
    let (mut after, mut seq, mut total) = (None::<Vec<u8>>, 0u64, 0u64);
    loop {
        let rows = view.rows_after(after.as_deref()).unwrap();
        total += rows.len() as u64;
        let last = rows.is_empty();
        after = rows.last().map(|(k, _)| k.clone()).or(after);
        let mut c = SnapshotChunk {
            id: 77,
            seq,
            header: (seq == 0).then(|| view.header().to_vec()),
            rows,
            last: None,
        };
        stage_chunk(&dst, group, &mut c).unwrap();
        if last {
            break;
        }
        seq += 1;
    }
    assert_eq!(total, 1500);
    assert!(seq >= 2, "more than one chunk: {seq}");
    let (applied_at, _) = sm.applied_state().await.unwrap();
    let (mut other, _) = open(&dst, KeyRange::full());
    apply(&mut other, vec![put(1, "junk", "old", None, 0)]).await;
    let marker = Installing {
        id: 77,
        table: T,
        range: KeyRange::full(),
        applied: {
            // The applied state the install would record: the snapshot's.
            let fresh: SharedEngine = Arc::new(MemEngine::new());
            let (mut f, _) = open(&fresh, KeyRange::full());
            f.install_snapshot(&snap.meta, snap.snapshot.clone())
                .await
                .unwrap();
            fresh
                .get(Space::Data, &keys::group_applied(group))
                .unwrap()
                .unwrap()
        },
    };
    let mut b = WriteBatch::new();
    b.put(
        Space::Data,
        keys::group_installing(group),
        postcard::to_allocvec(&marker).unwrap(),
    );
    b.put(Space::Data, keys::data(T, b"k00001"), b"half".to_vec());
    dst.write(b).unwrap();
    drop(other);
    let (mut reopened, view2) = open(&dst, KeyRange::full());
    assert_eq!(view2.get(&dst, b"junk").unwrap(), None);
    assert_eq!(view2.get(&dst, b"late").unwrap(), None);
    assert_eq!(
        view2.get(&dst, b"k00001").unwrap(),
        Some(big.clone().into_bytes())
    );
    assert_eq!(
        view2.scan(&dst, b"", None, rows(5000)).unwrap().rows.len(),
        1500
    );
    let (applied, _) = reopened.applied_state().await.unwrap();
    assert_eq!(applied, snap.meta.last_log_id);
    assert!(applied < applied_at);
    assert_eq!(
        dst.get(Space::Data, &keys::group_installing(group))
            .unwrap(),
        None
    );
    let (s, e) = keys::staging_group_range(group);
    assert_eq!(
        dst.scan(Space::Local, &s, e.as_deref(), 10).unwrap().len(),
        0
    );
    // The sessions came too: a late copy of seq 1500 is not applied again.
    apply(
        &mut reopened,
        vec![put(1501, "k01500", "again", Some((5, 1500, 1500)), 0)],
    )
    .await;
    assert_eq!(view2.get(&dst, b"k01500").unwrap(), Some(big.into_bytes()));
}

/// One entry carrying the writes of `entries` as a batch.
fn batch(index: u64, entries: Vec<typ::Entry>) -> typ::Entry {
    let cmds = entries
        .into_iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(Command::Kv(c)) => c,
            _ => unreachable!("put() makes Kv entries"),
        })
        .collect();
    typ::Entry {
        log_id: openraft::testing::log_id::<cairn_raft::TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::KvBatch(cmds)),
    }
}

/// The writes of a batch entry apply as if each had its own entry: a duplicate inside the
/// batch applies once, a key outside the range is refused without stopping the others, and
/// the session (stored once for the batch) still refuses retries after a restart.
#[tokio::test]
async fn t27_a_batch_applies_each_write_on_its_own() {
    let engine: SharedEngine = Arc::new(MemEngine::new());
    let range = KeyRange {
        start: b"a".to_vec(),
        end: Some(b"m".to_vec()),
    };
    {
        let (mut sm, view) = open(&engine, range.clone());
        apply(
            &mut sm,
            vec![batch(
                1,
                vec![
                    put(0, "b", "first", Some((5, 1, 1)), 0),
                    put(0, "q", "outside", Some((5, 2, 1)), 0),
                    put(0, "b", "retry of 1", Some((5, 1, 1)), 0),
                    put(0, "c", "third", Some((5, 3, 1)), 0),
                    put(0, "d", "no id", None, 0),
                ],
            )],
        )
        .await;
        assert_eq!(view.get(&engine, b"b").unwrap(), Some(b"first".to_vec()));
        assert_eq!(view.get(&engine, b"c").unwrap(), Some(b"third".to_vec()));
        assert_eq!(view.get(&engine, b"d").unwrap(), Some(b"no id".to_vec()));
        assert_eq!(
            engine
                .get(
                    cairn_storage::Space::Data,
                    &cairn_storage::keys::data(T, b"q")
                )
                .unwrap(),
            None
        );
        assert_eq!(view.duplicates(), 1);
    }
    let (mut sm, view) = open(&engine, range);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));
    apply(
        &mut sm,
        vec![
            put(2, "c", "late retry of 3", Some((5, 3, 1)), 0),
            put(3, "b", "late retry of 1", Some((5, 1, 1)), 0),
        ],
    )
    .await;
    assert_eq!(view.get(&engine, b"b").unwrap(), Some(b"first".to_vec()));
    assert_eq!(view.get(&engine, b"c").unwrap(), Some(b"third".to_vec()));
}

/// A snapshot of `sm` as it stands.
async fn build(sm: &mut GroupStateMachine) -> typ::Snapshot {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// A page limit of `n` rows, with values, and no byte limit to speak of.
fn rows(n: usize) -> cairn_storage::PageLimit {
    cairn_storage::PageLimit {
        rows: n,
        bytes: usize::MAX,
        values: true,
    }
}
