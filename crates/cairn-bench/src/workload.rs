//! YCSB-style workloads: what share of operations are reads, updates, scans and
//! read-modify-writes, and which keys they pick.

use clap::ValueEnum;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

/// A workload, named as in YCSB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// Reads only.
    C,
    /// 95% short sorted scans (List), 5% inserts.
    E,
    /// 50% reads, 50% read-modify-writes.
    F,
    /// Updates only.
    Write,
    /// Only the initial insert of every record.
    Load,
}

/// One operation of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Read one record.
    Read,
    /// Overwrite one record.
    Update,
    /// Write a record (load, and E's inserts).
    Insert,
    /// Read up to `scan_length` records in key order from a start key.
    Scan,
    /// Read a record, then write it back.
    Rmw,
}

impl Op {
    /// Lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Insert => "insert",
            Op::Scan => "scan",
            Op::Rmw => "rmw",
        }
    }
}

impl Workload {
    /// The mix: `(first, percent, second)` draws `first` that often and `second` otherwise.
    fn mix(self) -> (Op, u32, Op) {
        match self {
            Workload::A => (Op::Read, 50, Op::Update),
            Workload::B => (Op::Read, 95, Op::Update),
            Workload::C => (Op::Read, 100, Op::Read),
            Workload::E => (Op::Scan, 95, Op::Insert),
            Workload::F => (Op::Read, 50, Op::Rmw),
            Workload::Write => (Op::Update, 100, Op::Update),
            Workload::Load => (Op::Insert, 100, Op::Insert),
        }
    }

    /// Draws the next operation.
    pub fn next_op(self, rng: &mut impl Rng) -> Op {
        let (first, percent, second) = self.mix();
        if rng.random_range(0..100u32) < percent {
            first
        } else {
            second
        }
    }
}

/// How keys are chosen among the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    /// Every record equally likely.
    Uniform,
    /// A few records hot (Zipf, s = 0.99, as YCSB), scattered over the key space.
    Zipfian,
}

/// Picks record numbers in `0..records`.
pub struct KeyChooser {
    records: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeyChooser {
    /// A chooser over `records` records.
    pub fn new(dist: KeyDist, records: u64) -> Self {
        let records = records.max(1);
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipfian => Zipf::new(records as f64, 0.99).ok(),
        };
        Self { records, zipf }
    }

    /// The next record number.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match &self.zipf {
            None => rng.random_range(0..self.records),
            // Rank 1 is the hottest; scatter ranks so hot records are not neighbours (and
            // not all in the first partition), as YCSB's scrambled zipfian does.
            Some(z) => {
                let rank = (z.sample(rng) as u64).saturating_sub(1);
                fnv(rank) % self.records
            }
        }
    }
}

fn fnv(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The key of record `n`: fixed width so byte order is numeric order.
pub fn record_key(n: u64) -> Vec<u8> {
    format!("user{n:012}").into_bytes()
}

/// A value of `size` random lowercase letters.
///
/// Filled from the generator in one call and then mapped to letters (the small bias of
/// `% 26` does not matter to a load): drawing each byte on its own took more of the load
/// generator's CPU, which the servers share on one machine, than any part of the client.
pub(crate) fn value(rng: &mut impl Rng, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rng.fill(&mut v[..]);
    for b in &mut v {
        *b = b'a' + *b % 26;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn mixes_match_their_names() {
        let mut rng = StdRng::seed_from_u64(1);
        let count = |w: Workload, op: Op, rng: &mut StdRng| {
            (0..10_000).filter(|_| w.next_op(rng) == op).count()
        };
        let reads_a = count(Workload::A, Op::Read, &mut rng);
        assert!((4_500..5_500).contains(&reads_a), "{reads_a}");
        let reads_b = count(Workload::B, Op::Read, &mut rng);
        assert!((9_300..9_700).contains(&reads_b), "{reads_b}");
        assert_eq!(count(Workload::C, Op::Read, &mut rng), 10_000);
        let scans = count(Workload::E, Op::Scan, &mut rng);
        assert!((9_300..9_700).contains(&scans), "{scans}");
        assert_eq!(count(Workload::Write, Op::Update, &mut rng), 10_000);
    }

    #[test]
    fn values_are_letters_of_the_asked_size_and_differ() {
        let mut rng = StdRng::seed_from_u64(3);
        let a = value(&mut rng, 256);
        let b = value(&mut rng, 256);
        assert_eq!(a.len(), 256);
        assert!(a.iter().chain(&b).all(u8::is_ascii_lowercase));
        assert_ne!(a, b);
        // Every letter turns up: the values do not compress to nothing.
        let mut seen = [false; 26];
        for c in value(&mut rng, 4096) {
            seen[usize::from(c - b'a')] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert!(value(&mut rng, 0).is_empty());
    }

    #[test]
    fn zipfian_keys_are_skewed_and_in_range() {
        let mut rng = StdRng::seed_from_u64(2);
        let k = KeyChooser::new(KeyDist::Zipfian, 1000);
        let mut hits = vec![0u32; 1000];
        for _ in 0..20_000 {
            let n = k.next(&mut rng);
            hits[n as usize] += 1;
        }
        hits.sort_unstable();
        let top10: u32 = hits.iter().rev().take(10).sum();
        // Uniform would give the ten hottest about 1% of the draws.
        assert!(top10 > 20_000 / 10, "top ten records got {top10} of 20000");
        assert!(record_key(7) < record_key(10));
    }
}
