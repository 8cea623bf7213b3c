//! What a partition leader measures for the controller: requests per second over the split
//! window, a sample of recent request keys (to choose where to split by load), and the
//! partition's size and middle key.
//!
//! Size is measured by a scan of the partition's range on the leader, in the background
//! and paced, never on the request path: when the leader first leads it, after the
//! partition's shape changed (a split), and once an eighth of the split size, or a quarter
//! of the partition's own size when that is more, has been written since the last
//! measurement. A partition that is not written is not scanned again.

use crate::core::Core;
use cairn_storage::{Space, keys};
use cairn_types::{KeySample, PartitionDesc, PartitionId, PartitionLoad};
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Request keys kept per partition for choosing a load split point.
const SAMPLES: usize = 512;

/// Longest key kept in a sample. A prefix serves to choose a split point as well, and a node
/// hosting thousands of replicas keeps [`SAMPLES`] of them for each.
const SAMPLE_KEY_BYTES: usize = 256;

/// `sample` with its keys cut to [`SAMPLE_KEY_BYTES`]: a key or a range's start to its
/// prefix, a range's end to the first key past its prefix (so the range only grows).
fn bounded(sample: KeySample) -> KeySample {
    let cut = |mut k: Vec<u8>| {
        k.truncate(SAMPLE_KEY_BYTES);
        k
    };
    match sample {
        KeySample::Key(k) => KeySample::Key(cut(k)),
        KeySample::Range(a, b) => {
            let b = match b {
                Some(b) if b.len() > SAMPLE_KEY_BYTES => {
                    b.get(..SAMPLE_KEY_BYTES).and_then(keys::prefix_end)
                }
                b => b,
            };
            KeySample::Range(cut(a), b)
        }
    }
}

/// Rows read per step of a size measurement; the scan yields between steps.
const MEASURE_ROWS: usize = 512;

/// The middle-key index keeps one key per this many bytes scanned.
const INDEX_EVERY: u64 = 64 << 10;

/// Load and size of one hosted replica, as measured while this node leads it.
#[derive(Default)]
pub(crate) struct ReplicaStats {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    window_start: Option<Instant>,
    ops_in_window: u64,
    writes_in_window: u64,
    bytes_in_window: u64,
    qps: f64,
    write_qps: f64,
    write_bps: f64,
    samples: VecDeque<KeySample>,
    written: u64,
    measured: Option<Measured>,
    /// The last answer of `load`, for the partition version it was made for; cleared by
    /// anything that changes it. An idle partition's load is then not worked out anew
    /// (its samples copied, its split key searched) for every heartbeat.
    load: Option<(u64, PartitionLoad)>,
}

#[derive(Clone)]
struct Measured {
    bytes: u64,
    keys: u64,
    middle: Option<Vec<u8>>,
    version: u64,
}

impl ReplicaStats {
    /// Counts one request (a write when `write`, of `written` bytes), keeping its key among
    /// the samples.
    pub(crate) fn record(&self, sample: KeySample, write: bool, written: u64, window: Duration) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.load = None;
        let now = Instant::now();
        let start = *s.window_start.get_or_insert(now);
        let elapsed = now.duration_since(start);
        if elapsed >= window {
            let secs = elapsed.as_secs_f64();
            s.qps = s.ops_in_window as f64 / secs;
            s.write_qps = s.writes_in_window as f64 / secs;
            s.write_bps = s.bytes_in_window as f64 / secs;
            s.ops_in_window = 0;
            s.writes_in_window = 0;
            s.bytes_in_window = 0;
            s.window_start = Some(now);
        }
        s.ops_in_window += 1;
        s.writes_in_window += u64::from(write);
        s.bytes_in_window += written;
        s.written += written;
        if s.samples.len() == SAMPLES {
            s.samples.pop_front();
        }
        s.samples.push_back(bounded(sample));
    }

    /// What the controller is told, for a partition of shape `desc`.
    pub(crate) fn load(&self, desc: &PartitionDesc, window: Duration) -> PartitionLoad {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A window with no request since it ended still counts as quiet.
        if let Some(start) = s.window_start
            && start.elapsed() >= window * 2
        {
            s.qps = 0.0;
            s.write_qps = 0.0;
            s.write_bps = 0.0;
            s.ops_in_window = 0;
            s.writes_in_window = 0;
            s.bytes_in_window = 0;
            s.window_start = None;
            s.load = None;
        }
        if let Some((version, load)) = &s.load
            && *version == desc.epoch.version
        {
            return load.clone();
        }
        let samples: Vec<KeySample> = s.samples.iter().cloned().collect();
        let m = s
            .measured
            .clone()
            .filter(|m| m.version == desc.epoch.version);
        let load = PartitionLoad {
            bytes: m.as_ref().map_or(0, |m| m.bytes),
            keys: m.as_ref().map_or(0, |m| m.keys),
            qps: s.qps,
            write_qps: s.write_qps,
            write_bytes_per_sec: s.write_bps,
            size_split_key: m.and_then(|m| m.middle),
            load_split_key: cairn_meta::planner::load_split_key(
                &samples,
                &desc.range.start,
                desc.range.end.as_deref(),
            ),
        };
        s.load = Some((desc.epoch.version, load.clone()));
        load
    }

    /// The partition's bytes as last measured for its shape `version`, if they were.
    pub(crate) fn measured_bytes(&self, version: u64) -> Option<u64> {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.measured
            .as_ref()
            .filter(|m| m.version == version)
            .map(|m| m.bytes)
    }

    /// Drops the measurement of a partition this node no longer leads: writes under another
    /// leader are not counted in `written`, so it would be stale when this node leads again.
    fn forget_measured(&self) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.measured.take().is_some() {
            s.load = None;
        }
    }

    /// Whether the size should be measured again: after `rewrite_after` bytes written, or
    /// a quarter of the partition's size when that is more. A measurement reads the whole
    /// partition, so one that grows past the split size without splitting (the controller
    /// paused, no key to split at) would otherwise be read whole every `rewrite_after`
    /// bytes, a cost growing with the square of its size; this way a partition is read
    /// about five times for the bytes written to it, whatever its size.
    fn stale(&self, version: u64, rewrite_after: u64) -> bool {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &s.measured {
            None => true,
            Some(m) => m.version != version || s.written >= rewrite_after.max(m.bytes / 4),
        }
    }

    fn set_measured(&self, m: Measured) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.measured
            .as_ref()
            .is_some_and(|old| old.version != m.version)
        {
            // The shape changed (a split): the load seen before was the old range's.
            s.samples.clear();
            s.ops_in_window = 0;
            s.qps = 0.0;
            s.window_start = None;
        }
        s.written = 0;
        s.measured = Some(m);
        s.load = None;
    }
}

impl Core {
    /// Measures the size of every led partition whose measurement is stale, one at a time.
    pub(crate) async fn measure_led(&self, split_size: u64) {
        let rewrite_after = (split_size / 8).max(64 << 10);
        // Picked under the read lock without copying a replica: on an idle node none is
        // stale, and cloning every led replica each pass was a visible part of its work.
        let stale: Vec<(PartitionId, Arc<ReplicaStats>, Arc<PartitionDesc>)> = {
            let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
            replicas
                .iter()
                .filter_map(|(p, r)| {
                    if r.raft.metrics().borrow_watched().state != ServerState::Leader {
                        r.stats.forget_measured();
                        return None;
                    }
                    let desc = r.view.shared_desc();
                    r.stats
                        .stale(desc.epoch.version, rewrite_after)
                        .then(|| (*p, r.stats.clone(), desc))
                })
                .collect()
        };
        for (p, stats, desc) in stale {
            match self.measure(&desc).await {
                Ok(m) => stats.set_measured(m),
                Err(e) => tracing::debug!(partition = %p, "size not measured: {e}"),
            }
        }
    }

    /// Scans `desc`'s range in steps: its bytes, keys and the key that halves its bytes.
    async fn measure(&self, desc: &PartitionDesc) -> cairn_types::Result<Measured> {
        let (start, end) =
            keys::data_range(desc.table_id, &desc.range.start, desc.range.end.as_deref());
        let (mut bytes, mut count) = (0u64, 0u64);
        let mut index: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next_index = 0u64;
        let mut from = start;
        loop {
            let rows = self
                .engine
                .scan(Space::Data, &from, end.as_deref(), MEASURE_ROWS)?;
            let done = rows.len() < MEASURE_ROWS;
            for (k, v) in &rows {
                if bytes >= next_index {
                    index.push((bytes, keys::user_key(k).to_vec()));
                    next_index = bytes + INDEX_EVERY;
                }
                bytes += (k.len() + v.len()) as u64;
                count += 1;
            }
            match rows.last() {
                Some((k, _)) if !done => {
                    from = k.clone();
                    from.push(0);
                }
                _ => break,
            }
            tokio::task::yield_now().await;
        }
        // The first indexed key past half the bytes, if it lies strictly inside the range.
        let middle = index
            .iter()
            .find(|(at, _)| *at >= bytes / 2)
            .map(|(_, k)| k.clone())
            .filter(|k| *k > desc.range.start);
        Ok(Measured {
            bytes,
            keys: count,
            middle,
            version: desc.epoch.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition is measured again after 1/8 of the split size written, or after a
    /// quarter of its own size when that is more; a split (a new version) always asks for
    /// a new measurement.
    #[test]
    fn a_large_partition_is_measured_again_after_a_quarter_of_its_size() {
        let stats = ReplicaStats::default();
        let split = 96u64 << 20;
        let every = split / 8;
        assert!(stats.stale(1, every), "never measured");
        let measured = |bytes: u64| Measured {
            bytes,
            keys: 1,
            middle: None,
            version: 1,
        };
        stats.set_measured(measured(40 << 20));
        stats.record(
            KeySample::Key(b"k".to_vec()),
            true,
            every - 1,
            Duration::from_secs(10),
        );
        assert!(!stats.stale(1, every));
        stats.record(
            KeySample::Key(b"k".to_vec()),
            true,
            1,
            Duration::from_secs(10),
        );
        assert!(stats.stale(1, every), "12 MiB written into 40 MiB");

        stats.set_measured(measured(1 << 30));
        stats.record(
            KeySample::Key(b"k".to_vec()),
            true,
            200 << 20,
            Duration::from_secs(10),
        );
        assert!(!stats.stale(1, every), "200 MiB written into 1 GiB");
        assert!(stats.stale(2, every), "split since");
        stats.record(
            KeySample::Key(b"k".to_vec()),
            true,
            56 << 20,
            Duration::from_secs(10),
        );
        assert!(stats.stale(1, every), "256 MiB written into 1 GiB");
    }

    #[test]
    fn samples_keep_a_bounded_prefix_and_ranges_only_grow() {
        let long = vec![b'k'; 4096];
        let KeySample::Key(k) = bounded(KeySample::Key(long.clone())) else {
            panic!("a key stays a key")
        };
        assert_eq!(k, long[..SAMPLE_KEY_BYTES]);
        let end = [vec![b'a'; 300], vec![b'z']].concat();
        let KeySample::Range(a, b) = bounded(KeySample::Range(long.clone(), Some(end.clone())))
        else {
            panic!("a range stays a range")
        };
        assert_eq!(a.len(), SAMPLE_KEY_BYTES);
        let b = b.unwrap();
        assert!(
            b.len() <= SAMPLE_KEY_BYTES && b > end,
            "the end moves up, not down"
        );
        let KeySample::Range(_, b) = bounded(KeySample::Range(vec![], Some(vec![0xff; 300])))
        else {
            panic!("a range stays a range")
        };
        assert_eq!(
            b, None,
            "no prefix end: the range runs to the partition's end"
        );
        let short = KeySample::Range(b"a".to_vec(), Some(b"b".to_vec()));
        assert_eq!(bounded(short.clone()), short);
    }
}
