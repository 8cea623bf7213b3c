//! Backup pages: point-in-time views of partitions, held here for the exports reading them
//! (see `cairn_router::ExportCursor`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_router::PartitionReply;
use cairn_storage::{PageLimit, ReadView, Space, keys};
use cairn_types::{Epoch, Error, KeyRange, PartitionId, Result, TableId};

use crate::core::{Core, Replica};

/// How long a view may go unread before it is dropped: its reader has gone away.
const VIEW_IDLE: Duration = Duration::from_secs(60);
/// Views a node holds at most. Each keeps the engine's versions of its moment alive
/// (memory, and disk space compaction cannot reclaim) until it is dropped.
const MAX_VIEWS: usize = 32;

/// A view of one partition, as of the moment an export opened it.
struct View {
    engine: Arc<dyn ReadView>,
    partition: PartitionId,
    table: TableId,
    range: KeyRange,
    used: Instant,
}

/// The views this node holds for exports in progress.
#[derive(Default)]
pub(crate) struct Exports {
    views: Mutex<HashMap<u64, View>>,
}

impl Exports {
    /// Keeps `view`, answering its id.
    fn open(&self, view: View) -> Result<u64> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.retain(|_, v| v.used.elapsed() < VIEW_IDLE);
        if views.len() >= MAX_VIEWS {
            return Err(Error::Unavailable(format!(
                "this node holds {MAX_VIEWS} backup views already; retry when a backup has finished"
            )));
        }
        // Random, so that a cursor cannot name another reader's view by guessing.
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 && !views.contains_key(&id) {
                break id;
            }
        };
        views.insert(id, view);
        Ok(id)
    }

    /// View `id` of `partition`, marked as just used.
    fn get(
        &self,
        id: u64,
        partition: PartitionId,
    ) -> Result<(Arc<dyn ReadView>, TableId, KeyRange)> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.retain(|_, v| v.used.elapsed() < VIEW_IDLE);
        match views.get_mut(&id) {
            Some(v) if v.partition == partition => {
                v.used = Instant::now();
                Ok((v.engine.clone(), v.table, v.range.clone()))
            }
            _ => Err(Error::NotFound(format!(
                "the backup view of {partition} is gone (its node restarted, or it went unread \
                 for {VIEW_IDLE:?}); read the partition again from its start"
            ))),
        }
    }

    fn close(&self, id: u64) {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Views held now.
    pub(crate) fn held(&self) -> usize {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Core {
    /// Opens a view of `replica`'s partition after a read barrier (it must lead), and
    /// reads its first page from `from`.
    pub(crate) async fn open_export(
        &self,
        replica: &Replica,
        partition: PartitionId,
        epoch: Epoch,
        table: TableId,
        from: Vec<u8>,
        max_bytes: u64,
    ) -> Result<PartitionReply> {
        self.read_barrier(replica, partition).await?;
        replica.view.check(epoch, table, None)?;
        let desc = replica.view.desc();
        if !desc.range.contains(&from) {
            return Err(Error::KeyNotInRange(partition));
        }
        // Taken after the barrier: every write acknowledged before the request is in it.
        let engine = self.engine.read_view()?;
        let id = self.exports.open(View {
            engine: engine.clone(),
            partition,
            table: desc.table_id,
            range: desc.range.clone(),
            used: Instant::now(),
        })?;
        self.export_page(
            id,
            engine,
            desc.table_id,
            desc.range.clone(),
            &from,
            max_bytes,
        )
    }

    /// Reads on in view `view` of `partition` from `from`.
    pub(crate) fn continue_export(
        &self,
        partition: PartitionId,
        view: u64,
        from: &[u8],
        max_bytes: u64,
    ) -> Result<PartitionReply> {
        let (engine, table, range) = self.exports.get(view, partition)?;
        self.export_page(view, engine, table, range, from, max_bytes)
    }

    fn export_page(
        &self,
        id: u64,
        engine: Arc<dyn ReadView>,
        table: TableId,
        range: KeyRange,
        from: &[u8],
        max_bytes: u64,
    ) -> Result<PartitionReply> {
        let lo = from.max(range.start.as_slice());
        let (s, e) = keys::data_range(table, lo, range.end.as_deref());
        let limit = PageLimit {
            // Every row has a key, so the byte bound bounds the rows too.
            rows: usize::MAX,
            bytes: usize::try_from(max_bytes.clamp(1, cairn_router::LIST_PAGE_BYTES))
                .unwrap_or(usize::MAX),
            values: true,
        };
        let page = engine.scan_page(Space::Data, &s, e.as_deref(), limit)?;
        let rows: Vec<(Vec<u8>, Vec<u8>)> = page
            .rows
            .into_iter()
            .map(|(k, v)| (keys::user_key(&k).to_vec(), v))
            .collect();
        let next = match rows.last() {
            Some((k, _)) if page.cut => {
                let mut n = k.clone();
                n.push(0);
                Some(n)
            }
            _ => None,
        };
        if next.is_none() {
            self.exports.close(id);
        }
        Ok(PartitionReply::Export {
            view: id,
            rows,
            next,
            range,
        })
    }
}
