//! Snapshots that are never whole in memory.
//!
//! ```text
//!  leader:   build = header (applied state, sessions) + engine read view   (O(1), no copy)
//!            send  = header, then rows read from the view in chunks of CHUNK_BYTES,
//!                    one chunk in flight (each waits for its answer)
//!  follower: stage = each chunk written to the engine under keys::staging_*
//!            last chunk: check the row count, then install:
//!              1. sync the engine (the staged snapshot is durable)
//!              2. write the "installing" marker (which staged snapshot, into which range)
//!              3. delete the replica's range and copy the staged rows in, batch by batch
//!              4. one batch: sessions, applied state and descriptor; marker removed
//!              5. drop the staged copy
//! ```
//! A crash between 2 and 4 leaves the marker: the next open finishes steps 3–5 from the
//! durable staged copy, so a replica is never left with a mix of old and new state. A build
//! never fails silently: a read error is an error of the send.

use crate::log_store::read;
use crate::typ;
use cairn_storage::{KeyValue, PageLimit, ReadView, SharedEngine, Space, WriteBatch, keys};
use cairn_types::{KeyRange, PartitionId, TableId};
use serde::{Deserialize, Serialize};
use std::io;
use std::sync::Arc;

/// Largest amount of row data in one chunk of a snapshot transfer.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Rows written per batch while installing (and about [`CHUNK_BYTES`] of them: one row past
/// it at most).
const INSTALL_ROWS: usize = 1024;

/// The data of a snapshot.
#[derive(Clone)]
pub enum SnapshotData {
    /// Built on this node: the header and a read view pinned at the snapshot's log position.
    View(Arc<ViewSnapshot>),
    /// Received from a leader and staged in this node's engine.
    Staged {
        /// The group it belongs to.
        group: PartitionId,
        /// The transfer id it was staged under.
        id: u64,
    },
}

/// A snapshot built on this node. Holding it costs a read view of the engine (the versions
/// it sees stay alive), not a copy of the data.
pub struct ViewSnapshot {
    pub(crate) header: Vec<u8>,
    view: Arc<dyn ReadView>,
    /// Engine keys of the partition's data, `[start, end)`; empty for the metadata group.
    range: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

impl ViewSnapshot {
    pub(crate) fn new(
        header: Vec<u8>,
        view: Arc<dyn ReadView>,
        data: Option<(TableId, &KeyRange)>,
    ) -> Self {
        let range = data.map(|(t, r)| keys::data_range(t, &r.start, r.end.as_deref()));
        Self {
            header,
            view,
            range,
        }
    }

    /// The serialized header (applied state and sessions, or the metadata).
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The rows (user keys) after `after`, up to about [`CHUNK_BYTES`]; empty at the end.
    pub fn rows_after(&self, after: Option<&[u8]>) -> io::Result<Vec<KeyValue>> {
        let Some((start, end)) = &self.range else {
            return Ok(Vec::new());
        };
        let from = match after {
            Some(k) => keys::successor(&keys::data(table_of(start), k)),
            None => start.clone(),
        };
        // Bounded by bytes as it is read: a chunk of large values must stay far below the
        // largest message a peer accepts.
        let limit = PageLimit {
            rows: usize::MAX,
            bytes: CHUNK_BYTES,
            values: true,
        };
        let page = self
            .view
            .scan_page(Space::Data, &from, end.as_deref(), limit)
            .map_err(io::Error::other)?;
        Ok(page
            .rows
            .into_iter()
            .map(|(k, v)| (keys::user_key(&k).to_vec(), v))
            .collect())
    }
}

/// The table id inside an engine data key.
fn table_of(data_key: &[u8]) -> TableId {
    let id = data_key
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes);
    TableId(id)
}

/// One chunk of a snapshot transfer.
#[derive(Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The transfer, chosen by the sender; a new one replaces whatever was staged before.
    pub id: u64,
    /// Position of the chunk in the transfer, from 0.
    pub seq: u64,
    /// The header, in the first chunk.
    pub header: Option<Vec<u8>>,
    /// Rows, by user key.
    pub rows: Vec<KeyValue>,
    /// In the last chunk: the vote and snapshot meta to install with, and how many rows the
    /// transfer carried in all.
    pub last: Option<(typ::Vote, typ::SnapshotMeta, u64)>,
}

impl SnapshotChunk {
    /// The bytes of data it carries: header, keys and values.
    pub fn bytes(&self) -> u64 {
        let rows: usize = self.rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        (rows + self.header.as_ref().map_or(0, Vec::len)) as u64
    }
}

/// Writes a chunk into the staging area of `group`, taking its header and rows (not
/// copying them). The first chunk of a transfer drops anything staged before for the group
/// (an abandoned transfer).
pub fn stage_chunk(
    engine: &SharedEngine,
    group: PartitionId,
    c: &mut SnapshotChunk,
) -> io::Result<()> {
    if c.seq == 0 {
        let (s, e) = keys::staging_group_range(group);
        cairn_storage::delete_range(&**engine, Space::Local, &s, e.as_deref(), INSTALL_ROWS)
            .map_err(io::Error::other)?;
    }
    let mut b = WriteBatch::new();
    if let Some(h) = c.header.take() {
        b.put(Space::Local, keys::staging_header(group, c.id), h);
    }
    for (k, v) in std::mem::take(&mut c.rows) {
        b.put(Space::Local, keys::staging_row(group, c.id, &k), v);
    }
    engine.write(b).map_err(io::Error::other)
}

/// Whether staged transfer `id` holds its header and exactly `rows` rows.
pub fn staged_complete(
    engine: &SharedEngine,
    group: PartitionId,
    id: u64,
    rows: u64,
) -> io::Result<bool> {
    if engine
        .get(Space::Local, &keys::staging_header(group, id))
        .map_err(io::Error::other)?
        .is_none()
    {
        return Ok(false);
    }
    let (s, e) = keys::staging_rows_range(group, id);
    let n = cairn_storage::count_range(&**engine, Space::Local, &s, e.as_deref())
        .map_err(io::Error::other)?;
    Ok(n == rows)
}

/// Stages a snapshot built on this node (a local install, as in tests) like a received one.
pub(crate) fn stage_view(
    engine: &SharedEngine,
    group: PartitionId,
    v: &ViewSnapshot,
) -> io::Result<u64> {
    let id = cairn_types::entropy::next_u64();
    let mut seq = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let rows = v.rows_after(after.as_deref())?;
        let done = rows.is_empty();
        after = rows.last().map(|(k, _)| k.clone()).or(after);
        let mut chunk = SnapshotChunk {
            id,
            seq,
            header: (seq == 0).then(|| v.header.clone()),
            rows,
            last: None,
        };
        stage_chunk(engine, group, &mut chunk)?;
        if done {
            return Ok(id);
        }
        seq += 1;
    }
}

/// The marker of an install in progress (public so tests can leave one behind as a crash
/// would).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Installing {
    /// The staged transfer being installed.
    pub id: u64,
    /// The replica's table.
    pub table: TableId,
    /// The user-key range replaced.
    pub range: KeyRange,
    /// The applied state to record once the rows are in (encoded).
    pub applied: Vec<u8>,
}

/// The staged header of transfer `id`, decoded.
pub(crate) fn staged_header<T: serde::de::DeserializeOwned>(
    engine: &SharedEngine,
    group: PartitionId,
    id: u64,
) -> io::Result<T> {
    read(&**engine, Space::Local, &keys::staging_header(group, id))?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{group}: staged snapshot {id} has no header (replaced by a newer transfer?)"),
        )
    })
}

/// Steps 3–5 of an install whose marker is written: replaces the range by the staged rows,
/// then `finish` adds the bookkeeping to the final batch (which also drops the marker).
pub(crate) fn copy_staged(
    engine: &SharedEngine,
    group: PartitionId,
    m: &Installing,
    finish: impl FnOnce(&mut WriteBatch) -> io::Result<()>,
) -> io::Result<u64> {
    let (s, e) = keys::data_range(m.table, &m.range.start, m.range.end.as_deref());
    cairn_storage::delete_range(&**engine, Space::Data, &s, e.as_deref(), INSTALL_ROWS)
        .map_err(io::Error::other)?;
    let (rs, re) = keys::staging_rows_range(group, m.id);
    let mut copied = 0u64;
    let limit = PageLimit {
        rows: INSTALL_ROWS,
        bytes: CHUNK_BYTES,
        values: true,
    };
    let scan = |s: &[u8], e: Option<&[u8]>, l| engine.scan_page(Space::Local, s, e, l);
    cairn_storage::for_each_page(scan, &rs, re.as_deref(), limit, |rows| {
        let mut b = WriteBatch::new();
        for (k, v) in rows {
            let user = k.get(keys::STAGING_ROW_PREFIX_LEN..).unwrap_or_default();
            if m.range.contains(user) {
                b.put(Space::Data, keys::data(m.table, user), v);
                copied += 1;
            }
        }
        engine.write(b)?;
        crate::fault::crash_point("install-rows");
        crate::fault::hold_point("install-rows");
        Ok::<_, cairn_storage::Error>(())
    })
    .map_err(io::Error::other)?;
    let mut last = WriteBatch::new();
    finish(&mut last)?;
    last.delete(Space::Data, keys::group_installing(group));
    engine.write(last).map_err(io::Error::other)?;
    let (s, e) = keys::staging_group_range(group);
    cairn_storage::delete_range(&**engine, Space::Local, &s, e.as_deref(), INSTALL_ROWS)
        .map_err(io::Error::other)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::MemEngine;
    use cairn_types::MAX_KEY_BYTES_CEILING;

    /// An install copies every staged row once, over several batches, even when the keys
    /// are the longest a node may be set to take (a batch must not start past the engine's
    /// key limit) and some pages fill by bytes, others by rows.
    #[test]
    fn an_install_copies_rows_of_the_longest_keys() {
        let engine: SharedEngine = Arc::new(MemEngine::new());
        let group = PartitionId(7);
        let long = |i: u8| {
            let mut k = vec![b'k'; MAX_KEY_BYTES_CEILING];
            k[MAX_KEY_BYTES_CEILING - 1] = i;
            k
        };
        // 1,500 short rows (more than a batch of rows), then 70 of the longest keys (more
        // than a chunk of bytes).
        let mut rows: Vec<KeyValue> = (0..1500u32)
            .map(|i| (format!("a{i:05}").into_bytes(), i.to_be_bytes().to_vec()))
            .collect();
        rows.extend((0..70u8).map(|i| (long(i), vec![i])));
        let mut chunk = SnapshotChunk {
            id: 11,
            seq: 0,
            header: Some(b"header".to_vec()),
            rows: rows.clone(),
            last: None,
        };
        stage_chunk(&engine, group, &mut chunk).unwrap();
        let m = Installing {
            id: 11,
            table: TableId(3),
            range: KeyRange::full(),
            applied: Vec::new(),
        };
        let copied = copy_staged(&engine, group, &m, |_| Ok(())).unwrap();
        assert_eq!(copied, rows.len() as u64);
        let (s, e) = keys::data_range(TableId(3), b"", None);
        let got = engine
            .scan(Space::Data, &s, e.as_deref(), usize::MAX)
            .unwrap();
        let got: Vec<KeyValue> = got
            .into_iter()
            .map(|(k, v)| (keys::user_key(&k).to_vec(), v))
            .collect();
        assert_eq!(got, rows);
        let (s, e) = keys::staging_group_range(group);
        assert_eq!(
            cairn_storage::count_range(&*engine, Space::Local, &s, e.as_deref()).unwrap(),
            0,
            "the staged copy is dropped"
        );
    }
}
