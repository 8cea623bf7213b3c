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
/// How long a view is kept at most, read or not, so that no reader pins old versions for
/// good (a partition is read in minutes: the controller splits it past its size bound).
const VIEW_MAX_AGE: Duration = Duration::from_secs(3600);
/// Views a node holds at most. Each keeps the engine's versions of its moment alive
/// (memory, and disk space compaction cannot reclaim) until it is dropped.
const MAX_VIEWS: usize = 32;

/// A view of one partition, as of the moment an export opened it.
struct View {
    engine: Arc<dyn ReadView>,
    partition: PartitionId,
    table: TableId,
    range: KeyRange,
    opened: Instant,
    used: Instant,
}

impl View {
    fn live(&self) -> bool {
        self.used.elapsed() < VIEW_IDLE && self.opened.elapsed() < VIEW_MAX_AGE
    }
}

/// The views this node holds for exports in progress.
#[derive(Default)]
pub(crate) struct Exports {
    views: Mutex<HashMap<u64, View>>,
}

impl Exports {
    /// The views, those past their time dropped first.
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, View>> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.retain(|_, v| v.live());
        views
    }

    /// Keeps `view`, answering its id.
    fn open(&self, view: View) -> Result<u64> {
        let mut views = self.live();
        if views.len() >= MAX_VIEWS {
            return Err(Error::Unavailable(format!(
                "this node holds {MAX_VIEWS} backup views already (each kept until its partition is read, or {VIEW_IDLE:?} unread); retry when a backup has finished"
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

    /// View `id` of `partition` of `table`, marked as just used.
    fn get(
        &self,
        id: u64,
        partition: PartitionId,
        table: TableId,
    ) -> Result<(Arc<dyn ReadView>, KeyRange)> {
        let mut views = self.live();
        match views.get_mut(&id) {
            // The table too: the caller was allowed to read `table`, and no other.
            Some(v) if v.partition == partition && v.table == table => {
                v.used = Instant::now();
                Ok((v.engine.clone(), v.range.clone()))
            }
            _ => Err(Error::NotFound(format!(
                "the backup view of {partition} is gone (its node restarted, or it went unread \
                 for {VIEW_IDLE:?}); read the partition again from its start"
            ))),
        }
    }

    /// Drops view `id` (its partition has been read to the end).
    fn close(&self, id: u64) {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Drops the views past their time, whether or not anyone asks for a view again.
    pub(crate) fn sweep(&self) {
        drop(self.live());
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
        // Taken after the barrier: every write acknowledged before the request is in it.
        // And before the range is read: a split applied after the view then narrows the
        // range read from it, where the other way round the view could hold writes of the
        // split's right half, which is read on its own.
        let engine = self.engine.read_view()?;
        replica.view.check(epoch, table, None)?;
        let desc = replica.view.desc();
        if !desc.range.contains(&from) {
            return Err(Error::KeyNotInRange(partition));
        }
        let now = Instant::now();
        let id = self.exports.open(View {
            engine: engine.clone(),
            partition,
            table: desc.table_id,
            range: desc.range.clone(),
            opened: now,
            used: now,
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

    /// Reads on in view `view` of `partition` of `table` from `from`.
    pub(crate) fn continue_export(
        &self,
        partition: PartitionId,
        table: TableId,
        view: u64,
        from: &[u8],
        max_bytes: u64,
    ) -> Result<PartitionReply> {
        let (engine, range) = self.exports.get(view, partition, table)?;
        self.export_page(view, engine, table, range, from, max_bytes)
    }

    /// A page of view `id` from `from`; the view is dropped after the partition's last.
    fn export_page(
        &self,
        id: u64,
        engine: Arc<dyn ReadView>,
        table: TableId,
        range: KeyRange,
        from: &[u8],
        max_bytes: u64,
    ) -> Result<PartitionReply> {
        let limit = PageLimit {
            // Every row has a key, so the byte bound bounds the rows too.
            rows: usize::MAX,
            bytes: usize::try_from(max_bytes.clamp(1, cairn_router::LIST_PAGE_BYTES))
                .unwrap_or(usize::MAX),
            values: true,
        };
        let page = cairn_raft::range_page(table, &range, from, None, |s, e| {
            engine.scan_page(Space::Data, s, e, limit)
        })?;
        let rows = page.rows;
        let next = match rows.last() {
            Some((k, _)) if page.cut => Some(keys::successor(k)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::Engine as _;

    fn view(partition: u64, table: u64) -> View {
        let now = Instant::now();
        View {
            engine: cairn_storage::MemEngine::new().read_view().unwrap(),
            partition: PartitionId(partition),
            table: TableId(table),
            range: KeyRange::full(),
            opened: now,
            used: now,
        }
    }

    /// A view is served only for its own partition and table, and not after it is closed.
    #[test]
    fn a_view_is_read_only_as_the_partition_and_table_it_was_opened_for() {
        let e = Exports::default();
        let id = e.open(view(7, 1)).unwrap();
        assert!(e.get(id, PartitionId(7), TableId(1)).is_ok());
        for (p, t) in [(7, 2), (8, 1)] {
            assert!(matches!(
                e.get(id, PartitionId(p), TableId(t)),
                Err(Error::NotFound(_))
            ));
        }
        e.close(id);
        assert!(matches!(
            e.get(id, PartitionId(7), TableId(1)),
            Err(Error::NotFound(_))
        ));
        assert_eq!(e.held(), 0);
    }

    /// A node holds at most [`MAX_VIEWS`]; one closed makes room.
    #[test]
    fn a_node_holds_a_bounded_number_of_views() {
        let e = Exports::default();
        let ids: Vec<u64> = (0..MAX_VIEWS)
            .map(|i| e.open(view(i as u64, 1)).unwrap())
            .collect();
        assert!(matches!(e.open(view(99, 1)), Err(Error::Unavailable(_))));
        e.close(ids[0]);
        assert!(e.open(view(99, 1)).is_ok());
        assert_eq!(e.held(), MAX_VIEWS);
    }

    /// Views past their idle time or their age are swept without being asked for.
    #[test]
    fn views_past_their_time_are_swept() {
        let e = Exports::default();
        let (Some(idle), Some(old)) = (
            Instant::now().checked_sub(VIEW_IDLE),
            Instant::now().checked_sub(VIEW_MAX_AGE),
        ) else {
            return; // A clock too close to its origin to go back that far.
        };
        let mut unread = view(1, 1);
        unread.used = idle;
        let mut aged = view(2, 1);
        aged.opened = old;
        e.open(unread).unwrap();
        e.open(aged).unwrap();
        let fresh = e.open(view(3, 1)).unwrap();
        e.sweep();
        assert_eq!(e.held(), 1);
        assert!(e.get(fresh, PartitionId(3), TableId(1)).is_ok());
    }
}
