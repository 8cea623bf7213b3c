//! `cairn admin verify`: whether every replica of every partition holds the same rows.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use cairn_client::{Client, PartitionInfo, ReplicaDigest};

/// How long one partition's replicas are given to hash it (a node reads its replica whole).
const PARTITION_TIMEOUT: Duration = Duration::from_secs(120);
/// Times a partition is asked again while its replicas stand at different log positions.
const ATTEMPTS: u32 = 10;

/// A partition's range as a replica reports it: start, and end (`None`: unbounded).
type Range = (Vec<u8>, Option<Vec<u8>>);

/// What one round of digests says about a partition.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The replicas compared applied the same entry and hold the same rows; `compared` of
    /// `of` replicas could be compared (the rest are named in `missing`).
    Agree {
        /// The entry.
        applied: u64,
        /// Rows in the partition.
        rows: u64,
        /// Replicas compared.
        compared: usize,
        /// Replicas of the partition.
        of: usize,
        /// Why the others were not compared.
        missing: String,
    },
    /// Replicas that applied the same entry hold different rows: the nodes of each group of
    /// equal digests, the largest first, and whether that group is a strict majority.
    Differ {
        /// The entry.
        applied: u64,
        /// (nodes, rows) of each group.
        groups: Vec<(Vec<u64>, u64)>,
        /// Whether the first group holds more than half of the replicas compared.
        majority: bool,
    },
    /// Not comparable this time, and why.
    Unknown(String),
}

/// Judges one round of digests; also answers whether asking again may compare more (some
/// replicas stood at other entries, rather than failed to answer).
pub(crate) fn judge(digests: &[ReplicaDigest]) -> (Verdict, bool) {
    let of = digests.len();
    let failed: Vec<String> = digests
        .iter()
        .filter_map(|d| d.error.as_ref().map(|e| format!("node {}: {e}", d.node)))
        .collect();
    let answered: Vec<&ReplicaDigest> = digests.iter().filter(|d| d.error.is_none()).collect();
    // The replicas standing at the same entry (and so the same range), the most of them.
    let mut at: BTreeMap<(u64, &Range), Vec<&ReplicaDigest>> = BTreeMap::new();
    for d in &answered {
        at.entry((d.applied, &d.range)).or_default().push(d);
    }
    let best = at
        .into_iter()
        .max_by_key(|((applied, _), ds)| (ds.len(), *applied))
        .map(|((applied, _), ds)| (applied, ds));
    let positions = || {
        let at: Vec<String> = answered
            .iter()
            .map(|d| format!("node {} at entry {}", d.node, d.applied))
            .collect();
        format!(
            "the replicas stand at different log positions ({}): writes are coming in",
            at.join(", ")
        )
    };
    let lagging = answered.len() > best.as_ref().map_or(0, |(_, ds)| ds.len());
    let Some((applied, same)) = best.filter(|(_, ds)| ds.len() >= 2) else {
        return if answered.len() >= 2 {
            (Verdict::Unknown(positions()), true)
        } else if failed.is_empty() {
            (
                Verdict::Unknown("fewer than two replicas answered".into()),
                false,
            )
        } else {
            (Verdict::Unknown(failed.join("; ")), false)
        };
    };
    let mut groups: BTreeMap<(&[u8], u64), Vec<u64>> = BTreeMap::new();
    for d in &same {
        groups.entry((&d.sha256, d.rows)).or_default().push(d.node);
    }
    if groups.len() > 1 {
        let mut groups: Vec<(Vec<u64>, u64)> = groups
            .into_iter()
            .map(|((_, rows), mut nodes)| {
                nodes.sort_unstable();
                (nodes, rows)
            })
            .collect();
        groups.sort_by_key(|(nodes, _)| std::cmp::Reverse(nodes.len()));
        let majority = groups[0].0.len() * 2 > same.len();
        return (
            Verdict::Differ {
                applied,
                groups,
                majority,
            },
            false,
        );
    }
    let mut missing = failed;
    if lagging {
        missing.push(positions());
    }
    let verdict = Verdict::Agree {
        applied,
        rows: same[0].rows,
        compared: same.len(),
        of,
        missing: missing.join("; "),
    };
    (verdict, lagging)
}

/// Compares the replicas of each partition of `table` (every table when `None`).
pub(crate) async fn verify(c: &Client, table: Option<&str>) -> anyhow::Result<ExitCode> {
    let tables = c
        .partitions(table.unwrap_or(""))
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the partitions: {e}"))?;
    let total: usize = tables.iter().map(|(_, p)| p.len()).sum();
    if total == 0 {
        println!("no partitions to verify");
        return Ok(ExitCode::SUCCESS);
    }
    let (mut agree, mut differ, mut unknown) = (0usize, Vec::new(), Vec::new());
    let mut done = 0usize;
    for (name, parts) in &tables {
        for p in parts {
            done += 1;
            let line = match verify_one(c, p).await {
                Ok(Verdict::Agree {
                    applied,
                    rows,
                    compared,
                    of,
                    ..
                }) if compared == of => {
                    agree += 1;
                    format!("{rows} key(s) on {of} replicas agree at entry {applied}")
                }
                Ok(Verdict::Agree {
                    applied,
                    rows,
                    compared,
                    of,
                    missing,
                }) => {
                    unknown.push(p.id);
                    format!(
                        "{compared} of {of} replicas agree at entry {applied} ({rows} key(s)); not compared: {missing}"
                    )
                }
                Ok(Verdict::Differ {
                    applied,
                    groups,
                    majority,
                }) => {
                    let what: Vec<String> = groups
                        .iter()
                        .map(|(nodes, rows)| format!("nodes {nodes:?} hold {rows} key(s)"))
                        .collect();
                    let line = format!(
                        "DIFFER at entry {applied}: {}{}",
                        what.join("; "),
                        if majority { "" } else { " (no majority)" }
                    );
                    differ.push((name.clone(), p.id, groups, majority));
                    line
                }
                Ok(Verdict::Unknown(why)) => {
                    unknown.push(p.id);
                    format!("not compared: {why}")
                }
                Err(e) => {
                    unknown.push(p.id);
                    format!("not compared: {e}")
                }
            };
            println!("[{done}/{total}] {name} partition {}: {line}", p.id);
        }
    }
    println!(
        "{agree} of {total} partition(s) verified: their replicas agree; {} differ; {} not compared",
        differ.len(),
        unknown.len()
    );
    for (name, id, groups, majority) in &differ {
        if *majority {
            let odd: Vec<u64> = groups.iter().skip(1).flat_map(|(n, _)| n.clone()).collect();
            eprintln!(
                "{name} partition {id}: the replica(s) on node(s) {odd:?} differ from the majority. This is a bug: please report it with `cairn debug zip`. To rebuild such a replica from the others, move it to a node without one (`cairn admin move {id} NODE TO`; add a node first if every node holds one)."
            );
        } else {
            eprintln!(
                "{name} partition {id}: no majority of its replicas agrees, so none can be trusted over the others; do not rebuild any of them. This is a bug: please report it with `cairn debug zip`."
            );
        }
    }
    if !unknown.is_empty() {
        eprintln!(
            "partition(s) {unknown:?} could not be compared whole: verify them again once every node is up, or when they take fewer writes"
        );
    }
    Ok(if !differ.is_empty() {
        ExitCode::FAILURE
    } else if !unknown.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Asks for the digests of `p` until its replicas stand at one log position (a partition
/// taking writes rarely does), at most [`ATTEMPTS`] times; a replica that fails to answer
/// is not asked again.
async fn verify_one(c: &Client, p: &PartitionInfo) -> anyhow::Result<Verdict> {
    let mut last = Verdict::Unknown("not asked".into());
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
        let (_, digests) = c
            .verify_partition(p.id, PARTITION_TIMEOUT)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (verdict, again) = judge(&digests);
        last = verdict;
        if !again {
            break;
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(node: u64, applied: u64, rows: u64, hash: u8) -> ReplicaDigest {
        ReplicaDigest {
            node,
            error: None,
            applied,
            rows,
            sha256: vec![hash; 32],
            range: (Vec::new(), None),
        }
    }

    #[test]
    fn replicas_agree_differ_or_cannot_be_compared() {
        let agree = |compared, of, missing: &str| Verdict::Agree {
            applied: 9,
            rows: 5,
            compared,
            of,
            missing: missing.into(),
        };
        assert_eq!(
            judge(&[d(1, 9, 5, 1), d(2, 9, 5, 1), d(3, 9, 5, 1)]),
            (agree(3, 3, ""), false)
        );
        // The odd one out is named after the majority.
        assert_eq!(
            judge(&[d(3, 9, 5, 1), d(2, 9, 6, 2), d(1, 9, 5, 1)]).0,
            Verdict::Differ {
                applied: 9,
                groups: vec![(vec![1, 3], 5), (vec![2], 6)],
                majority: true,
            }
        );
        // Same count, different rows, and no majority of two.
        assert!(matches!(
            judge(&[d(1, 9, 5, 1), d(2, 9, 5, 3)]).0,
            Verdict::Differ {
                majority: false,
                ..
            }
        ));
        // Two at one entry are compared even while the third lags or is down: a difference
        // between them shows, and agreement is partial (asked again only for a lagging one).
        let (v, again) = judge(&[d(1, 9, 5, 1), d(2, 9, 5, 1), d(3, 8, 4, 2)]);
        assert!(again);
        assert!(
            matches!(v, Verdict::Agree { compared: 2, of: 3, ref missing, .. } if missing.contains("node 3 at entry 8"))
        );
        let mut down = d(3, 0, 0, 0);
        down.error = Some("unreachable".into());
        let (v, again) = judge(&[d(1, 9, 5, 1), d(2, 9, 7, 2), down.clone()]);
        assert!(!again);
        assert!(matches!(
            v,
            Verdict::Differ {
                majority: false,
                ..
            }
        ));
        let (v, again) = judge(&[d(1, 9, 5, 1), d(2, 9, 5, 1), down.clone()]);
        assert_eq!((v, again), (agree(2, 3, "node 3: unreachable"), false));
        // Nothing to compare: at different entries (ask again), or too few answers (do not).
        let (v, again) = judge(&[d(1, 9, 5, 1), d(2, 8, 4, 2)]);
        assert!(again && matches!(v, Verdict::Unknown(w) if w.contains("different log positions")));
        let (v, again) = judge(&[d(1, 9, 5, 1), down]);
        assert!(!again && matches!(v, Verdict::Unknown(w) if w.contains("node 3: unreachable")));
        assert!(matches!(judge(&[]), (Verdict::Unknown(_), false)));
    }
}
