//! Every on-disk key is built here, so the layout can be read in one place.
//!
//! ```text
//! Space::Raft   <group:u64be> 0x01 <index:u64be>      log entry
//!               <group:u64be> 0x02                    vote
//!               <group:u64be> 0x03                    committed log id
//!               <group:u64be> 0x04                    last purged log id
//! Space::Data   0x01 <table:u64be> <user key>         user data of a table
//!               0x02 <group:u64be> 0x01               applied state of a group's state machine
//!               0x02 <group:u64be> 0x02 <client:u64be> write session (at-most-once table)
//!               0x02 <group:u64be> 0x03               metadata state (group 0 only)
//!               0x02 <group:u64be> 0x04               snapshot install in progress
//! Space::Local  0x01 <group:u64be>                    replica hosted by this node
//!               0x02                                  node identity
//!               0x03 <group:u64be> <id:u64be> 0x00    staged snapshot: header
//!               0x03 <group:u64be> <id:u64be> 0x01 <user key>   staged snapshot: a row
//! ```
//! A table's data is one contiguous range, so a partition `[start, end)` of it is one range
//! too and a split moves no bytes.

use cairn_types::{ClientId, PartitionId, TableId};

const DATA_USER: u8 = 0x01;
const DATA_GROUP: u8 = 0x02;
const GROUP_APPLIED: u8 = 0x01;
const GROUP_SESSION: u8 = 0x02;
const GROUP_META: u8 = 0x03;
const GROUP_INSTALLING: u8 = 0x04;
const RAFT_LOG: u8 = 0x01;
const RAFT_VOTE: u8 = 0x02;
const RAFT_COMMITTED: u8 = 0x03;
const RAFT_PURGED: u8 = 0x04;
const LOCAL_REPLICA: u8 = 0x01;
const LOCAL_IDENTITY: u8 = 0x02;
const LOCAL_STAGING: u8 = 0x03;
const LOCAL_META_REPLICA: u8 = 0x04;

fn with_u64(prefix: &[u8], v: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8 + 9);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&v.to_be_bytes());
    k
}

/// The smallest key greater than `key` in byte order.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// The smallest key greater than every key starting with `prefix`, or `None` if no such
/// key exists (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut k = prefix.to_vec();
    while let Some(last) = k.pop() {
        if last < 0xff {
            k.push(last + 1);
            return Some(k);
        }
    }
    None
}

/// Raft log entry `index` of `group`.
pub fn raft_log(group: PartitionId, index: u64) -> Vec<u8> {
    let mut k = with_u64(&[], group.0);
    k.push(RAFT_LOG);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Decodes the index from a key made by [`raft_log`].
pub fn raft_log_index(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn raft_meta(group: PartitionId, tag: u8) -> Vec<u8> {
    let mut k = with_u64(&[], group.0);
    k.push(tag);
    k
}

/// The vote of `group`.
pub fn raft_vote(group: PartitionId) -> Vec<u8> {
    raft_meta(group, RAFT_VOTE)
}

/// The committed log id of `group`.
pub fn raft_committed(group: PartitionId) -> Vec<u8> {
    raft_meta(group, RAFT_COMMITTED)
}

/// The last purged log id of `group`.
pub fn raft_purged(group: PartitionId) -> Vec<u8> {
    raft_meta(group, RAFT_PURGED)
}

/// `[start, end)` covering every Raft key of `group`.
pub fn raft_group_range(group: PartitionId) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = with_u64(&[], group.0);
    let end = prefix_end(&start);
    (start, end)
}

/// The engine key of `user_key` in `table`.
pub fn data(table: TableId, user_key: &[u8]) -> Vec<u8> {
    let mut k = with_u64(&[DATA_USER], table.0);
    k.extend_from_slice(user_key);
    k
}

/// Length of the prefix that [`data`] puts before the user key.
pub const DATA_PREFIX_LEN: usize = 9;

/// `[start, end)` of engine keys for user keys `[start, end)` of `table`
/// (`end == None`: to the end of the table).
pub fn data_range(table: TableId, start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Option<Vec<u8>>) {
    let s = data(table, start);
    let e = match end {
        Some(e) => Some(data(table, e)),
        None => prefix_end(&with_u64(&[DATA_USER], table.0)),
    };
    (s, e)
}

/// The user key inside an engine key made by [`data`].
pub fn user_key(engine_key: &[u8]) -> &[u8] {
    engine_key.get(DATA_PREFIX_LEN..).unwrap_or_default()
}

fn group_key(group: PartitionId, tag: u8) -> Vec<u8> {
    let mut k = with_u64(&[DATA_GROUP], group.0);
    k.push(tag);
    k
}

/// The applied state (last applied log id, membership, partition descriptor) of `group`.
pub fn group_applied(group: PartitionId) -> Vec<u8> {
    group_key(group, GROUP_APPLIED)
}

/// The write session of `client` in `group`.
pub fn group_session(group: PartitionId, client: ClientId) -> Vec<u8> {
    let mut k = group_key(group, GROUP_SESSION);
    k.extend_from_slice(&client.0.to_be_bytes());
    k
}

/// `[start, end)` of every session of `group`.
pub fn group_sessions_range(group: PartitionId) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = group_key(group, GROUP_SESSION);
    let end = prefix_end(&start);
    (start, end)
}

/// The metadata state held by the metadata group's state machine.
pub fn group_meta_state(group: PartitionId) -> Vec<u8> {
    group_key(group, GROUP_META)
}

/// `[start, end)` of every state-machine bookkeeping key of `group` (not its user data).
pub fn group_state_range(group: PartitionId) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = with_u64(&[DATA_GROUP], group.0);
    let end = prefix_end(&start);
    (start, end)
}

/// The record of a replica of `group` hosted by this node.
pub fn local_replica(group: PartitionId) -> Vec<u8> {
    with_u64(&[LOCAL_REPLICA], group.0)
}

/// `[start, end)` of every replica record.
pub fn local_replicas_range() -> (Vec<u8>, Option<Vec<u8>>) {
    (vec![LOCAL_REPLICA], prefix_end(&[LOCAL_REPLICA]))
}

/// Marks that a snapshot install into `group` is under way (which staged snapshot, into
/// which range), so a crash in the middle finishes it at the next start.
pub fn group_installing(group: PartitionId) -> Vec<u8> {
    group_key(group, GROUP_INSTALLING)
}

fn staging(group: PartitionId, id: u64) -> Vec<u8> {
    let mut k = with_u64(&[LOCAL_STAGING], group.0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The header of staged snapshot `id` of `group`.
pub fn staging_header(group: PartitionId, id: u64) -> Vec<u8> {
    let mut k = staging(group, id);
    k.push(0x00);
    k
}

/// A row (by user key) of staged snapshot `id` of `group`.
pub fn staging_row(group: PartitionId, id: u64, user_key: &[u8]) -> Vec<u8> {
    let mut k = staging(group, id);
    k.push(0x01);
    k.extend_from_slice(user_key);
    k
}

/// Length of the prefix that [`staging_row`] puts before the user key.
pub const STAGING_ROW_PREFIX_LEN: usize = 18;

/// `[start, end)` of the rows of staged snapshot `id` of `group`.
pub fn staging_rows_range(group: PartitionId, id: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = staging_row(group, id, b"");
    let end = prefix_end(&start);
    (start, end)
}

/// `[start, end)` of everything staged for `group`.
pub fn staging_group_range(group: PartitionId) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = with_u64(&[LOCAL_STAGING], group.0);
    let end = prefix_end(&start);
    (start, end)
}

/// The node identity record.
pub fn local_identity() -> Vec<u8> {
    vec![LOCAL_IDENTITY]
}

/// Which metadata replica this node hosts (absent before the first start).
pub fn local_meta_replica() -> Vec<u8> {
    vec![LOCAL_META_REPLICA]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index_and_group() {
        let g = PartitionId(7);
        assert!(raft_log(g, 9) < raft_log(g, 10));
        assert!(raft_log(g, u64::MAX) < raft_log(PartitionId(8), 0));
        assert_eq!(raft_log_index(&raft_log(g, 42)), Some(42));
        let (s, e) = raft_group_range(g);
        for k in [raft_log(g, 0), raft_vote(g), raft_purged(g)] {
            assert!(k >= s && Some(k) < e);
        }
    }

    #[test]
    fn table_data_is_contiguous_and_ordered() {
        let t = TableId(3);
        assert!(data(t, b"a") < data(t, b"b"));
        assert!(data(t, b"\xff\xff") < data(TableId(4), b""));
        let (s, e) = data_range(t, b"", None);
        assert!(data(t, b"zzz") >= s && Some(data(t, b"zzz")) < e);
        assert_eq!(user_key(&data(t, b"hello")), b"hello");
    }

    #[test]
    fn the_longest_user_key_fits_the_engine_behind_every_prefix() {
        let longest = vec![0xffu8; cairn_types::MAX_KEY_BYTES_CEILING];
        assert!(
            staging_row(PartitionId(u64::MAX), u64::MAX, &longest).len() <= crate::MAX_ENGINE_KEY
        );
        // A List bound may be one byte longer (a page's cursor).
        let bound = successor(&longest);
        assert!(data(TableId(u64::MAX), &bound).len() <= crate::MAX_ENGINE_KEY);
    }

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(successor(b"a"), b"a\0".to_vec());
    }
}
