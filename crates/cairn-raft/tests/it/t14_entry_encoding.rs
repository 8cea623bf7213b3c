//! How log entries are encoded: what is on disk and on the wire must stay readable.

use cairn_meta::MetaCommand;
use cairn_raft::{Command, KvCommand, KvOp};
use cairn_types::{ClientId, Epoch, RequestId, TableId};
use serde::{Deserialize, Serialize};

/// `Command` as it was when a batch owned its list: logs and snapshots written then are
/// on disk, and nodes still running it send entries of this shape.
#[derive(Serialize, Deserialize)]
enum OwnedCommand {
    Kv(KvCommand),
    Meta(MetaCommand),
    KvBatch(Vec<KvCommand>),
}

fn put(i: u64) -> KvCommand {
    KvCommand {
        request_id: Some(RequestId {
            client: ClientId(7),
            seq: i,
            first_incomplete: 1,
        }),
        epoch: Epoch::INITIAL,
        proposed_at_ms: 1_000 + i,
        op: KvOp::Put {
            table: TableId(3),
            key: format!("k{i}").into_bytes(),
            value: vec![i as u8; 300],
        },
    }
}

fn keys(cmds: &[KvCommand]) -> Vec<Vec<u8>> {
    cmds.iter()
        .map(|c| match &c.op {
            KvOp::Put { key, .. } => key.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// A shared batch is encoded byte for byte as an owned one, both ways, so entries in
/// old logs still decode and a mixed-version cluster still replicates.
#[test]
fn a_batch_encodes_as_it_did_when_it_owned_its_writes() {
    let cmds: Vec<KvCommand> = (1..=3).map(put).collect();
    let old = postcard::to_allocvec(&OwnedCommand::KvBatch(cmds.clone())).unwrap();
    let new = postcard::to_allocvec(&Command::KvBatch(cmds.clone().into())).unwrap();
    assert_eq!(old, new);
    match postcard::from_bytes::<Command>(&old).unwrap() {
        Command::KvBatch(b) => assert_eq!(keys(&b), keys(&cmds)),
        other => panic!("decoded as {other}"),
    }
    match postcard::from_bytes::<OwnedCommand>(&new).unwrap() {
        OwnedCommand::KvBatch(b) => assert_eq!(keys(&b), keys(&cmds)),
        _ => panic!("decoded as another variant"),
    }
}

/// `KvOp` as it was when its keys and values were (de)serialized as sequences of `u8`.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
enum SeqKvOp {
    Put {
        table: TableId,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: TableId,
        key: Vec<u8>,
    },
    Drop,
    Split {
        key: Vec<u8>,
        right: cairn_types::PartitionId,
    },
}

/// Keys and values written as byte strings read and write exactly as the sequences of
/// bytes they were before, so entries already on disk and nodes of earlier builds agree.
#[test]
fn keys_and_values_encode_as_they_did_as_sequences() {
    let value: Vec<u8> = (0..=255).collect();
    let pairs = [
        (
            KvOp::Put {
                table: TableId(3),
                key: b"k".to_vec(),
                value: value.clone(),
            },
            SeqKvOp::Put {
                table: TableId(3),
                key: b"k".to_vec(),
                value,
            },
        ),
        (
            KvOp::Delete {
                table: TableId(9),
                key: Vec::new(),
            },
            SeqKvOp::Delete {
                table: TableId(9),
                key: Vec::new(),
            },
        ),
        (KvOp::Drop, SeqKvOp::Drop),
        (
            KvOp::Split {
                key: vec![0xff; 200],
                right: cairn_types::PartitionId(12),
            },
            SeqKvOp::Split {
                key: vec![0xff; 200],
                right: cairn_types::PartitionId(12),
            },
        ),
    ];
    for (now, before) in pairs {
        let new = postcard::to_allocvec(&now).unwrap();
        assert_eq!(new, postcard::to_allocvec(&before).unwrap(), "{before:?}");
        assert_eq!(postcard::from_bytes::<SeqKvOp>(&new).unwrap(), before);
        let again = postcard::from_bytes::<KvOp>(&postcard::to_allocvec(&before).unwrap()).unwrap();
        assert_eq!(postcard::to_allocvec(&again).unwrap(), new);
    }
    // And the bytes themselves: variant, table, key length and key, value length and value.
    let small = KvOp::Put {
        table: TableId(3),
        key: b"k".to_vec(),
        value: b"vv".to_vec(),
    };
    assert_eq!(
        postcard::to_allocvec(&small).unwrap(),
        [0, 3, 1, b'k', 2, b'v', b'v']
    );
}
