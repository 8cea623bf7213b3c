//! `cairn bench`: a YCSB-style load generator.
//!
//! Clients run a workload ([`Workload`]) against Cairn or etcd ([`Driver`]): each client
//! issues one operation, waits for the answer, records its latency in an HdrHistogram and
//! issues the next, until the operation count or the duration runs out. Closed loop by
//! default: the next operation goes as soon as the last is answered, so the run finds the
//! store's throughput. With `--rate`, open loop: operations are due on a fixed schedule
//! ([`Pace`]), so two stores can be compared at the same load below saturation (CPU per
//! operation, latency), and a stall shows in the latencies of the operations it delayed.
//! Every workload except `load` first inserts the records it reads (unless `--no-load`).

mod driver;
mod report;
mod workload;

pub use driver::{Consistency, Driver, DriverKind, OpError};
pub use report::{OpStats, Report};
pub use workload::{KeyChooser, KeyDist, Op, Workload, record_key};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Flags of `cairn bench`.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// The workload: YCSB a, b, c, e, f, or write (updates only) or load (inserts only).
    #[arg(long, short, value_enum, default_value = "a")]
    pub workload: Workload,
    /// The store to drive.
    #[arg(long, value_enum, default_value = "cairn")]
    pub driver: DriverKind,
    /// Records in the data set.
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Operations to run (the run stops at whichever of --ops and --duration comes first).
    #[arg(long, default_value_t = 1_000_000)]
    pub ops: u64,
    /// Longest run, in seconds (the load before it not counted).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Concurrent clients, each with one operation in flight.
    #[arg(long, short, default_value_t = 16)]
    pub clients: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// How records are picked.
    #[arg(long, value_enum, default_value = "uniform")]
    pub distribution: KeyDist,
    /// Records per scan (workload e).
    #[arg(long, default_value_t = 10)]
    pub scan_length: u32,
    /// Table (Cairn) or key prefix (etcd).
    #[arg(long, default_value = "bench")]
    pub table: String,
    /// Partitions of the table when Cairn creates it.
    #[arg(long, default_value_t = 3)]
    pub partitions: u64,
    /// Replicas per partition when Cairn creates the table (at most the live nodes).
    #[arg(long, default_value_t = 3)]
    pub replication: u32,
    /// Read consistency.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: Consistency,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Do not insert the records first (they are there from an earlier run).
    #[arg(long)]
    pub no_load: bool,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Timeout of one operation, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub op_timeout_ms: u64,
    /// Open loop: operations per second over all clients, on a fixed schedule. Each
    /// operation's latency counts from when it was due, so time spent waiting behind a slow
    /// one counts too. Without it, clients run closed loop (as fast as answers come).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
}

/// Parses `--rate`: a positive, finite number of operations per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate: give operations per second as a positive number, e.g. 5000"
        )),
    }
}

/// One client's schedule in an open-loop run: its `k`-th operation is due at
/// `first + k * every`.
#[derive(Clone, Copy, Debug)]
struct Pace {
    first: Instant,
    every: Duration,
}

impl Pace {
    /// The schedule of client `client` of `clients` sharing `rate` operations per second
    /// from `start`: each runs at `rate / clients`, and their first operations are spread
    /// over one interval so that the clients do not fire together. An interval is at most
    /// a day (a slower client's run is over before its second operation anyway), so that
    /// no sum of instants overflows.
    fn for_client(start: Instant, rate: f64, client: u64, clients: u64) -> Self {
        let clients = clients.max(1);
        let every = Duration::try_from_secs_f64(clients as f64 / rate)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(86_400));
        let first = start + every.mul_f64(client as f64 / clients as f64);
        Self { first, every }
    }

    /// When operation `k` is due.
    fn due(&self, k: u32) -> Instant {
        self.first + self.every * k
    }
}

/// How late a client may come to an operation before it counts as overdue: an answer a few
/// microseconds after the next operation was due is the schedule's grain, not the store
/// holding the client up (the latency counts from when it was due either way).
pub(crate) const OVERDUE: Duration = Duration::from_millis(1);

/// When an operation due at `due` counts as started, given that its client came to it at
/// `ready` (the previous operation answered) and, if it had to wait for `due`, woke at
/// `woke`. A client that came late was held up by the store: the operation started when it
/// was due, and the wait is part of its latency (no coordinated omission). A client that
/// came early started when it woke: a timer firing late is the load generator's delay.
/// The flag says whether it was overdue by more than [`OVERDUE`].
fn open_loop_start(due: Instant, ready: Instant, woke: Instant) -> (Instant, bool) {
    if ready >= due {
        (due, ready > due + OVERDUE)
    } else {
        (woke, false)
    }
}

/// Split keys that cut the records into `partitions` even ranges.
fn splits(records: u64, partitions: u64) -> Vec<Vec<u8>> {
    (1..partitions.max(1))
        .map(|i| record_key(records * i / partitions))
        .collect()
}

struct Shared {
    workload: Workload,
    keys: KeyChooser,
    value_size: usize,
    scan_length: u32,
    deadline: Instant,
    budget: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    started: Instant,
    /// Microseconds into the run of the latest acknowledged operation.
    last_ack_us: AtomicU64,
    /// The longest time without an acknowledged operation so far and when it ended, in
    /// microseconds into the run.
    gap: std::sync::Mutex<(u64, u64)>,
    /// Every gap of at least [`LISTED_GAP_US`].
    gaps: std::sync::Mutex<Vec<report::Gap>>,
    /// Acknowledged operations per [`WINDOW_US`] of the run, by when they were answered.
    windows: Vec<AtomicU32>,
    /// Open loop: operations overdue by more than [`OVERDUE`] when their client came to them.
    late: AtomicU64,
}

/// Length of a window of [`Shared::windows`]: short enough to show a stall of a tenth of a
/// second that a per-second rate hides.
const WINDOW_US: u64 = 100_000;

/// Windows kept: the first hour of a phase.
const MAX_WINDOWS: u64 = 36_000;

/// Gaps without an acknowledged operation at least this long are listed in the report.
const LISTED_GAP_US: u64 = 100_000;

impl Shared {
    /// Notes an acknowledged operation for the gap measures.
    fn acked(&self) {
        let now = self.started.elapsed().as_micros() as u64;
        if let Some(w) = self.windows.get((now / WINDOW_US) as usize) {
            w.fetch_add(1, Ordering::Relaxed);
        }
        let prev = self.last_ack_us.fetch_max(now, Ordering::Relaxed);
        if now <= prev {
            return;
        }
        let gap = now - prev;
        {
            let mut g = self.gap.lock().unwrap_or_else(|p| p.into_inner());
            if gap > g.0 {
                *g = (gap, now);
            }
        }
        if gap >= LISTED_GAP_US {
            // Wall-clock times, so a script can line a gap up with the moment it killed a node.
            let end = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
            gaps.push(report::Gap {
                start_unix_ms: end.saturating_sub(gap / 1000),
                end_unix_ms: end,
            });
        }
    }
}

type Latencies = BTreeMap<Op, Histogram<u64>>;

/// Slowest latency a histogram holds, in microseconds.
const MAX_MICROS: u64 = 60_000_000;

/// One client: operations until the budget or the deadline runs out.
async fn worker(
    sh: Arc<Shared>,
    mut driver: Driver,
    seed: u64,
    pace: Option<Pace>,
    next_insert: Arc<AtomicU64>,
    empty: Histogram<u64>,
) -> (Latencies, BTreeMap<String, u64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lat: Latencies = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut k = 0u32;
    while Instant::now() < sh.deadline {
        let started = match pace {
            None => Instant::now(),
            Some(p) => {
                let due = p.due(k);
                k = k.saturating_add(1);
                if due >= sh.deadline {
                    break;
                }
                let ready = Instant::now();
                if ready < due {
                    tokio::time::sleep_until(due).await;
                }
                let (started, late) = open_loop_start(due, ready, Instant::now());
                if late {
                    sh.late.fetch_add(1, Ordering::Relaxed);
                }
                started
            }
        };
        if sh
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_err()
        {
            break;
        }
        let op = sh.workload.next_op(&mut rng);
        let result = match op {
            Op::Read => driver
                .get(&record_key(sh.keys.next(&mut rng)))
                .await
                .map(|_| ()),
            Op::Update => {
                let v = workload::value(&mut rng, sh.value_size);
                driver.put(&record_key(sh.keys.next(&mut rng)), &v).await
            }
            Op::Insert => {
                let n = next_insert.fetch_add(1, Ordering::Relaxed);
                let v = workload::value(&mut rng, sh.value_size);
                driver.put(&record_key(n), &v).await
            }
            Op::Scan => {
                let start = record_key(sh.keys.next(&mut rng));
                let len = rand::Rng::random_range(&mut rng, 1..=sh.scan_length.max(1));
                driver.scan(&start, len).await.map(|_| ())
            }
            Op::Rmw => {
                let key = record_key(sh.keys.next(&mut rng));
                match driver.get(&key).await {
                    Ok(_) => {
                        let v = workload::value(&mut rng, sh.value_size);
                        driver.put(&key, &v).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let micros = started.elapsed().as_micros().max(1) as u64;
        match result {
            Ok(()) => {
                sh.acked();
                let _ = lat
                    .entry(op)
                    .or_insert_with(|| empty.clone())
                    .record(micros.min(MAX_MICROS));
            }
            Err(e) => {
                *errors
                    .entry(format!("{} {}", op.name(), e.kind))
                    .or_default() += 1;
                sh.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        sh.done.fetch_add(1, Ordering::Relaxed);
    }
    (lat, errors)
}

/// Runs `phase` (the load or the workload) with `clients` workers, open loop at `rate`
/// operations per second if given; prints progress.
async fn phase(
    args: &BenchArgs,
    driver: &Driver,
    workload: Workload,
    ops: u64,
    duration: Duration,
    rate: Option<f64>,
    next_insert: Arc<AtomicU64>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let sh = Arc::new(Shared {
        workload,
        keys: KeyChooser::new(args.distribution, args.records),
        value_size: args.value_size,
        scan_length: args.scan_length,
        deadline: started + duration,
        budget: AtomicU64::new(ops),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        started,
        last_ack_us: AtomicU64::new(0),
        gap: Default::default(),
        gaps: Default::default(),
        windows: (0..(duration.as_micros() as u64)
            .div_ceil(WINDOW_US)
            .min(MAX_WINDOWS))
            .map(|_| AtomicU32::new(0))
            .collect(),
        late: AtomicU64::new(0),
    });
    let clients = args.clients.max(1);
    // 1 µs .. 60 s at 3 significant digits.
    let empty = Histogram::new_with_bounds(1, MAX_MICROS, 3)?;
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(worker(
            sh.clone(),
            driver.clone(),
            args.seed.wrapping_mul(10_007).wrapping_add(c),
            rate.map(|r| Pace::for_client(started, r, c, clients)),
            next_insert.clone(),
            empty.clone(),
        )));
    }
    let progress = tokio::spawn({
        let sh = sh.clone();
        let name = format!("{workload:?}").to_lowercase();
        async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = sh.done.load(Ordering::Relaxed);
                eprintln!(
                    "  {name:>5} {:>6.1} s {done:>10} ops {:>9} ops/s  {} errors",
                    started.elapsed().as_secs_f64(),
                    done - last,
                    sh.errors.load(Ordering::Relaxed)
                );
                last = done;
            }
        }
    });
    let mut lat: Latencies = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let (l, e) = t.await.context("a benchmark client failed")?;
        for (op, h) in l {
            let _ = lat.entry(op).or_insert_with(|| empty.clone()).add(&h);
        }
        for (k, n) in e {
            *errors.entry(k).or_default() += n;
        }
    }
    progress.abort();
    let (gap, end) = *sh.gap.lock().unwrap_or_else(|p| p.into_inner());
    let gap = (Duration::from_micros(gap), Duration::from_micros(end));
    let mut r = Report::new(args, workload, started.elapsed(), &lat, errors, gap);
    if let Some(rate) = rate {
        r.set_open_loop(rate, sh.late.load(Ordering::Relaxed));
    }
    r.gaps = std::mem::take(&mut *sh.gaps.lock().unwrap_or_else(|p| p.into_inner()));
    // Only whole windows: the last one is cut short by the end of the run.
    let whole = (r.elapsed_secs * 1e6) as u64 / WINDOW_US;
    r.set_windows(
        sh.windows
            .iter()
            .take(whole as usize)
            .map(|w| w.load(Ordering::Relaxed))
            .collect(),
    );
    Ok(r)
}

/// Runs the benchmark `args` describes against `endpoints` (Cairn through `cairn` when
/// given, a client with TLS and credentials); prints and returns the report.
pub async fn run(
    args: &BenchArgs,
    endpoints: &[String],
    cairn: Option<cairn_client::Client>,
) -> anyhow::Result<Report> {
    let driver = Driver::connect(
        args.driver,
        endpoints,
        cairn,
        (&args.table, args.replication),
        splits(args.records, args.partitions),
        args.consistency,
        Duration::from_millis(args.op_timeout_ms),
    )
    .await?;
    let next_insert = Arc::new(AtomicU64::new(0));
    // Six hours bound the load as a phase; the record count bounds it in practice.
    let load_limit = Duration::from_secs(6 * 3600);
    if args.workload == Workload::Load {
        let r = phase(
            args,
            &driver,
            Workload::Load,
            args.records.min(args.ops),
            Duration::from_secs(args.duration).min(load_limit),
            args.rate,
            next_insert,
        )
        .await?;
        r.print();
        return finish(args, r);
    }
    if !args.no_load {
        eprintln!("loading {} records ...", args.records);
        let r = phase(
            args,
            &driver,
            Workload::Load,
            args.records,
            load_limit,
            None,
            next_insert.clone(),
        )
        .await?;
        eprintln!("loaded {} records in {:.1} s", r.total_ops, r.elapsed_secs);
    }
    // Inserts of workload e go after the loaded records.
    next_insert.store(args.records, Ordering::Relaxed);
    let r = phase(
        args,
        &driver,
        args.workload,
        args.ops,
        Duration::from_secs(args.duration),
        args.rate,
        next_insert,
    )
    .await?;
    r.print();
    finish(args, r)
}

fn finish(args: &BenchArgs, r: Report) -> anyhow::Result<Report> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&r)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("result written to {}", path.display());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_a_positive_number() {
        assert_eq!(parse_rate("2500"), Ok(2500.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-10", "NaN", "inf", "fast", ""] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains("operations per second"), "{bad}: {e}");
        }
    }

    #[test]
    fn clients_share_the_rate_and_start_spread_over_one_interval() {
        let t0 = Instant::now();
        // 4 clients at 1,000 ops/s: each one every 4 ms, their first ones 1 ms apart.
        let pace: Vec<Pace> = (0..4).map(|c| Pace::for_client(t0, 1000.0, c, 4)).collect();
        for (c, p) in pace.iter().enumerate() {
            assert_eq!(p.every, Duration::from_millis(4));
            assert_eq!(p.due(0), t0 + Duration::from_millis(c as u64));
            assert_eq!(p.due(250), t0 + Duration::from_millis(1000 + c as u64));
        }
        // Over any second, the clients together have 1,000 operations due.
        let due_in_first_second = pace
            .iter()
            .map(|p| {
                (0..)
                    .take_while(|&k| p.due(k) < t0 + Duration::from_secs(1))
                    .count()
            })
            .sum::<usize>();
        assert_eq!(due_in_first_second, 1000);
        // A rate so low that an interval would not fit a Duration is capped, not a panic.
        let slow = Pace::for_client(t0, f64::MIN_POSITIVE, 3, u64::MAX);
        assert_eq!(slow.every, Duration::from_secs(86_400));
    }

    #[test]
    fn an_overdue_operation_counts_from_when_it_was_due() {
        let due = Instant::now() + Duration::from_millis(10);
        let ms = Duration::from_millis(1);
        // Its client was still waiting for the previous answer: the wait is latency.
        assert_eq!(
            open_loop_start(due, due + 3 * ms, due + 3 * ms),
            (due, true)
        );
        // Ready exactly on time, or a few microseconds late: started when due, yet not
        // counted as overdue.
        assert_eq!(open_loop_start(due, due, due), (due, false));
        let us = Duration::from_micros(20);
        assert_eq!(open_loop_start(due, due + us, due + us), (due, false));
        // Early, and the timer woke the client late: that delay is the load generator's.
        assert_eq!(
            open_loop_start(due, due - 5 * ms, due + ms),
            (due + ms, false)
        );
    }
}
