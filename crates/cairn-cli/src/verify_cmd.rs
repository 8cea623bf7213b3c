//! `cairn admin verify`: whether every replica of every partition holds the same rows.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use cairn_client::{Client, PartitionInfo, ReplicaDigest};

/// How long one partition's replicas are given to hash it (a node reads its replica whole).
const PARTITION_TIMEOUT: Duration = Duration::from_secs(120);
/// Times a partition is asked again while its replicas stand at different log positions.
const ATTEMPTS: u32 = 10;

/// What one round of digests says about a partition.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Every replica applied the same entry and holds the same rows.
    Agree {
        /// The entry.
        applied: u64,
        /// Rows in the partition.
        rows: u64,
    },
    /// Replicas that applied the same entry hold different rows: the nodes of each group
    /// of equal digests, the largest group first.
    Differ {
        /// The entry.
        applied: u64,
        /// (nodes, rows) of each group.
        groups: Vec<(Vec<u64>, u64)>,
    },
    /// Not comparable this time, and why.
    Unknown(String),
}

/// Judges one round of digests.
pub(crate) fn judge(digests: &[ReplicaDigest]) -> Verdict {
    if let Some(d) = digests.iter().find(|d| d.error.is_some()) {
        return Verdict::Unknown(format!(
            "node {}: {}",
            d.node,
            d.error.as_deref().unwrap_or_default()
        ));
    }
    let Some(first) = digests.first() else {
        return Verdict::Unknown("no replica answered".into());
    };
    if digests
        .iter()
        .any(|d| d.applied != first.applied || d.range != first.range)
    {
        let at: Vec<String> = digests
            .iter()
            .map(|d| format!("node {} at entry {}", d.node, d.applied))
            .collect();
        return Verdict::Unknown(format!(
            "the replicas stand at different log positions ({}): writes are coming in",
            at.join(", ")
        ));
    }
    let mut groups: BTreeMap<(&[u8], u64), Vec<u64>> = BTreeMap::new();
    for d in digests {
        groups.entry((&d.sha256, d.rows)).or_default().push(d.node);
    }
    if groups.len() == 1 {
        return Verdict::Agree {
            applied: first.applied,
            rows: first.rows,
        };
    }
    let mut groups: Vec<(Vec<u64>, u64)> = groups
        .into_iter()
        .map(|((_, rows), mut nodes)| {
            nodes.sort_unstable();
            (nodes, rows)
        })
        .collect();
    groups.sort_by_key(|(nodes, _)| std::cmp::Reverse(nodes.len()));
    Verdict::Differ {
        applied: first.applied,
        groups,
    }
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
                Ok(Verdict::Agree { applied, rows }) => {
                    agree += 1;
                    format!(
                        "{rows} key(s) on {} replicas agree at entry {applied}",
                        p.replicas.len()
                    )
                }
                Ok(Verdict::Differ { applied, groups }) => {
                    let what: Vec<String> = groups
                        .iter()
                        .map(|(nodes, rows)| format!("nodes {nodes:?} hold {rows} key(s)"))
                        .collect();
                    differ.push((name.clone(), p.id, groups));
                    format!("DIFFER at entry {applied}: {}", what.join("; "))
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
    if !differ.is_empty() {
        for (name, id, groups) in &differ {
            let odd: Vec<u64> = groups.iter().skip(1).flat_map(|(n, _)| n.clone()).collect();
            eprintln!(
                "{name} partition {id}: the replica(s) on node(s) {odd:?} differ from the rest. This is a bug: please report it with `cairn debug zip`. To rebuild such a replica from the others, move it away and back (`cairn admin move {id} FROM TO`)."
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    if !unknown.is_empty() {
        eprintln!(
            "partition(s) {unknown:?} could not be compared: verify again when they take fewer writes, or once every node is up"
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks for the digests of `p` until its replicas stand at one log position (a partition
/// taking writes rarely does), at most [`ATTEMPTS`] times.
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
        last = judge(&digests);
        if !matches!(last, Verdict::Unknown(_)) {
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
        assert_eq!(
            judge(&[d(1, 9, 5, 1), d(2, 9, 5, 1), d(3, 9, 5, 1)]),
            Verdict::Agree {
                applied: 9,
                rows: 5
            }
        );
        // The odd one out is named after the majority.
        assert_eq!(
            judge(&[d(3, 9, 5, 1), d(2, 9, 6, 2), d(1, 9, 5, 1)]),
            Verdict::Differ {
                applied: 9,
                groups: vec![(vec![1, 3], 5), (vec![2], 6)]
            }
        );
        // Same count, different rows.
        assert!(matches!(
            judge(&[d(1, 9, 5, 1), d(2, 9, 5, 3)]),
            Verdict::Differ { .. }
        ));
        // Different entries applied: not comparable.
        assert!(matches!(
            judge(&[d(1, 9, 5, 1), d(2, 8, 4, 2)]),
            Verdict::Unknown(w) if w.contains("different log positions")
        ));
        let mut down = d(3, 0, 0, 0);
        down.error = Some("node 3 is unreachable".into());
        assert!(matches!(
            judge(&[d(1, 9, 5, 1), down]),
            Verdict::Unknown(w) if w.contains("node 3")
        ));
        assert!(matches!(judge(&[]), Verdict::Unknown(_)));
    }
}
