//! The node's side of the heartbeat: the whole replica report when the metadata leader has
//! none from this node, otherwise only what changed since the report it acknowledged.
//!
//! A thousand idle partitions used to cost every node a report of a thousand statuses and a
//! third as many descriptors each second, built, encoded, sent and merged again for nothing.
//! A delta names the report it builds on (`base`); the leader applies it only on top of
//! exactly that report, so a lost acknowledgement or a new leader costs one whole report,
//! never a wrong merge.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_raft::leader_node;
use cairn_router::Heartbeat;
use cairn_types::{NodeDesc, NodeId, PartitionDesc, PartitionId, PartitionLoad, PartitionStatus};
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::core::{Core, Replica};

/// Every this many acknowledged deltas the node sends its whole report anyway, so nothing
/// the leader holds can drift for long whatever goes wrong.
pub(crate) const FULL_REPORT_EVERY: u32 = 30;

/// What a node reports about its replicas, keyed by partition.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Report {
    /// Leader and term of each hosted replica.
    pub(crate) replicas: BTreeMap<PartitionId, PartitionStatus>,
    /// Descriptors of the partitions this node leads (shared with the replicas: an idle
    /// node's report copies none).
    pub(crate) led: BTreeMap<PartitionId, Arc<PartitionDesc>>,
    /// Size and load of the partitions this node leads (when the controller runs).
    pub(crate) loads: BTreeMap<PartitionId, PartitionLoad>,
}

impl Report {
    /// Adds one hosted replica whose recorded leader and term are `leader` and `term`; if
    /// it `leads`, also its descriptor and (when the controller runs) its load.
    pub(crate) fn add(
        &mut self,
        core: &Core,
        (id, r): (PartitionId, &Replica),
        leader: Option<NodeId>,
        term: u64,
        leads: bool,
    ) {
        self.replicas.insert(
            id,
            PartitionStatus {
                partition: id,
                leader,
                term,
            },
        );
        if leads {
            let desc = r.view.shared_desc();
            if core.controller.enabled {
                let load = r.stats.load(&desc, core.controller.split_window);
                self.loads.insert(id, load);
            }
            self.led.insert(id, desc);
        }
    }
}

impl Core {
    /// This node's report: the one the group supervisor's last pass made (it walks every
    /// replica's Raft metrics once a second anyway), or, before its first pass or when it does
    /// not run, one made now.
    pub(crate) fn current_report(&self) -> Report {
        if let Some(w) = self
            .walked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|w| w.fresh())
        {
            return w.report.clone();
        }
        self.report()
    }

    /// How many partitions this node leads and the `n` busiest of them by operations per
    /// second, from one pass over the replicas as they are now: a scrape must not show a
    /// leader count and a top list taken a supervisor pass apart (a leader elected in
    /// between was counted but missing from the list).
    pub(crate) fn led_gauges(&self, n: usize) -> (usize, Vec<crate::metrics::PartitionGauges>) {
        let mut loads: Vec<(PartitionId, cairn_types::TableId, PartitionLoad)> = {
            let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
            replicas
                .iter()
                .filter(|(_, r)| r.raft.metrics().borrow_watched().state == ServerState::Leader)
                .map(|(id, r)| {
                    let desc = r.view.shared_desc();
                    let load = r.stats.load(&desc, self.controller.split_window);
                    (*id, desc.table_id, load)
                })
                .collect()
        };
        let led = loads.len();
        loads.sort_by(|a, b| b.2.qps.total_cmp(&a.2.qps).then(a.0.cmp(&b.0)));
        loads.truncate(n);
        // Table names are known where the metadata is; elsewhere the id stands in.
        let meta = self.meta();
        let state = meta
            .as_ref()
            .map(|m| m.state.read().unwrap_or_else(|p| p.into_inner()));
        let top = loads
            .into_iter()
            .map(|(id, table_id, load)| {
                let name = state
                    .as_ref()
                    .and_then(|s| s.tables.values().find(|d| d.id == table_id))
                    .map(|d| d.name.clone());
                crate::metrics::PartitionGauges {
                    table: name.unwrap_or_else(|| table_id.0.to_string()),
                    partition: id.0,
                    ops_per_second: load.qps,
                    size_bytes: load.bytes,
                    keys: load.keys,
                }
            })
            .collect();
        (led, top)
    }

    /// This node's report, in one pass over its replicas.
    pub(crate) fn report(&self) -> Report {
        let mut report = Report::default();
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        for (id, r) in replicas.iter() {
            let (leader, term, leads) = {
                let rx = r.raft.metrics();
                let m = rx.borrow_watched();
                (
                    leader_node(&m),
                    m.current_term,
                    m.state == ServerState::Leader,
                )
            };
            report.add(self, (*id, r), leader, term, leads);
        }
        report
    }
}

/// Tracks which report the metadata leader holds and builds each heartbeat from it.
pub(crate) struct Reporter {
    next_seq: u64,
    /// The last report the leader acknowledged, and its number.
    acked: Option<(u64, Report)>,
    /// Deltas acknowledged since the last whole report.
    deltas_since_full: u32,
    /// The report the heartbeat in flight brings the leader to, and whether it is whole.
    in_flight: Option<(u64, Report, bool)>,
}

impl Reporter {
    /// A reporter whose reports are numbered from `first_seq` (random per process, so a
    /// restarted node's numbers do not meet the ones a leader holds from before).
    pub(crate) fn new(first_seq: u64) -> Self {
        Self {
            next_seq: first_seq,
            acked: None,
            deltas_since_full: 0,
            in_flight: None,
        }
    }

    /// The heartbeat that brings the leader from the acknowledged report to `now`.
    pub(crate) fn heartbeat(&mut self, node: NodeDesc, now: Report) -> Heartbeat {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let base = match &self.acked {
            Some((base, old)) if self.deltas_since_full < FULL_REPORT_EVERY => Some((*base, old)),
            _ => None,
        };
        let hb = match base {
            Some((base, old)) => {
                let (replicas, replicas_gone) = changed(&old.replicas, &now.replicas);
                let (led, _) = changed(&old.led, &now.led);
                let (loads, loads_gone) = changed(&old.loads, &now.loads);
                Heartbeat {
                    node,
                    seq,
                    base: Some(base),
                    replicas: replicas.into_iter().map(|(_, s)| s).collect(),
                    replicas_gone,
                    led: led.into_iter().map(|(_, d)| (*d).clone()).collect(),
                    loads,
                    loads_gone,
                }
            }
            None => Heartbeat {
                node,
                seq,
                base: None,
                replicas: now.replicas.values().cloned().collect(),
                replicas_gone: Vec::new(),
                led: now.led.values().map(|d| (**d).clone()).collect(),
                loads: now.loads.iter().map(|(p, l)| (*p, l.clone())).collect(),
                loads_gone: Vec::new(),
            },
        };
        self.in_flight = Some((seq, now, hb.base.is_none()));
        hb
    }

    /// The leader took the heartbeat in flight; `resend_full` when it wants the whole
    /// report (it held no base for a delta, or could not check every led descriptor).
    /// Returns whether the next heartbeat should go at once: after a refused delta, yes;
    /// after a whole report it could not check, a period later (not in a tight loop).
    pub(crate) fn acknowledged(&mut self, resend_full: bool) -> bool {
        let in_flight = self.in_flight.take();
        match in_flight {
            Some((seq, report, whole)) if !resend_full => {
                self.deltas_since_full = if whole { 0 } else { self.deltas_since_full + 1 };
                self.acked = Some((seq, report));
                false
            }
            in_flight => {
                self.acked = None;
                !in_flight.is_some_and(|(_, _, whole)| whole)
            }
        }
    }

    /// The heartbeat in flight was not delivered, or its outcome is unknown: the next one
    /// builds on the last acknowledged report again (a leader that took this one no longer
    /// holds that base, and asks for the whole report).
    pub(crate) fn failed(&mut self) {
        self.in_flight = None;
    }
}

/// Entries of `new` that are not in `old` or differ there, and keys of `old` gone from `new`.
fn changed<V: PartialEq + Clone>(
    old: &BTreeMap<PartitionId, V>,
    new: &BTreeMap<PartitionId, V>,
) -> (Vec<(PartitionId, V)>, Vec<PartitionId>) {
    let upserts = new
        .iter()
        .filter(|(p, v)| old.get(p) != Some(v))
        .map(|(p, v)| (*p, v.clone()))
        .collect();
    let gone = old
        .keys()
        .filter(|p| !new.contains_key(p))
        .copied()
        .collect();
    (upserts, gone)
}

/// What the metadata leader holds of one node's report.
#[derive(Debug, Default)]
pub(crate) struct HeldReport {
    /// The number of the last report applied.
    seq: u64,
    /// Leader and term of each replica the node hosts.
    pub(crate) replicas: BTreeMap<PartitionId, PartitionStatus>,
    /// Size and load of the partitions it leads.
    pub(crate) loads: BTreeMap<PartitionId, PartitionLoad>,
}

impl HeldReport {
    /// Takes `hb` into what the leader holds of its node (leaving `hb.led` to the caller).
    /// Returns false, changing nothing, for a delta from a report other than the one held:
    /// the node is then asked for its whole report.
    pub(crate) fn take(held: &mut Option<HeldReport>, hb: &mut Heartbeat) -> bool {
        let statuses = std::mem::take(&mut hb.replicas)
            .into_iter()
            .map(|s| (s.partition, s));
        let loads = std::mem::take(&mut hb.loads).into_iter();
        match (hb.base, held.as_mut()) {
            (None, _) => {
                *held = Some(HeldReport {
                    seq: hb.seq,
                    replicas: statuses.collect(),
                    loads: loads.collect(),
                });
                true
            }
            // A retry of the heartbeat already taken.
            (Some(_), Some(h)) if h.seq == hb.seq => true,
            (Some(base), Some(h)) if h.seq == base => {
                for p in &hb.replicas_gone {
                    h.replicas.remove(p);
                }
                h.replicas.extend(statuses);
                for p in &hb.loads_gone {
                    h.loads.remove(p);
                }
                h.loads.extend(loads);
                h.seq = hb.seq;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::{Epoch, KeyRange, NodeId, TableId};

    fn node() -> NodeDesc {
        NodeDesc {
            id: NodeId(1),
            addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
        }
    }

    fn status(p: u64, leader: u64, term: u64) -> PartitionStatus {
        PartitionStatus {
            partition: PartitionId(p),
            leader: Some(NodeId(leader)),
            term,
        }
    }

    fn desc(p: u64, epoch: u64) -> PartitionDesc {
        PartitionDesc {
            id: PartitionId(p),
            table_id: TableId(1),
            range: KeyRange::full(),
            epoch: Epoch {
                conf_ver: 1,
                version: epoch,
            },
            replicas: vec![NodeId(1)],
            replica_ids: BTreeMap::new(),
        }
    }

    fn report(statuses: &[(u64, u64, u64)], led: &[(u64, u64)]) -> Report {
        Report {
            replicas: statuses
                .iter()
                .map(|&(p, l, t)| (PartitionId(p), status(p, l, t)))
                .collect(),
            led: led
                .iter()
                .map(|&(p, e)| (PartitionId(p), Arc::new(desc(p, e))))
                .collect(),
            loads: BTreeMap::new(),
        }
    }

    /// The leader takes `hb` on top of `held`.
    fn take(held: &mut Option<HeldReport>, mut hb: Heartbeat) -> bool {
        HeldReport::take(held, &mut hb)
    }

    #[test]
    fn an_idle_node_sends_its_report_once_then_nothing_until_something_changes() {
        let mut r = Reporter::new(7);
        let mut held = None;
        let first = report(&[(1, 1, 3), (2, 2, 4)], &[(1, 5)]);
        let hb = r.heartbeat(node(), first.clone());
        assert_eq!(hb.base, None);
        assert_eq!(hb.replicas.len(), 2);
        assert!(take(&mut held, hb));
        assert!(!r.acknowledged(false));

        let hb = r.heartbeat(node(), first.clone());
        assert_eq!(hb.base, Some(7));
        assert!(hb.replicas.is_empty() && hb.led.is_empty() && hb.replicas_gone.is_empty());
        assert!(take(&mut held, hb));
        r.acknowledged(false);

        // Partition 2 changed leader, 1 is gone, 3 is new; the leader ends up with exactly
        // what the node hosts.
        let now = report(&[(2, 1, 5), (3, 3, 1)], &[(2, 6)]);
        let hb = r.heartbeat(node(), now.clone());
        assert_eq!(hb.replicas.len(), 2);
        assert_eq!(hb.replicas_gone, vec![PartitionId(1)]);
        assert_eq!(hb.led, vec![desc(2, 6)]);
        assert!(take(&mut held, hb));
        r.acknowledged(false);
        assert_eq!(
            held.as_ref().map(|h| h.replicas.clone()),
            Some(now.replicas)
        );
    }

    #[test]
    fn a_delta_the_leader_cannot_place_brings_the_whole_report() {
        let mut r = Reporter::new(100);
        let a = report(&[(1, 1, 3)], &[]);
        let hb = r.heartbeat(node(), a.clone());
        let mut old_leader = None;
        assert!(take(&mut old_leader, hb));
        r.acknowledged(false);

        // A new leader holds nothing: it refuses the delta and the next report is whole.
        let b = report(&[(1, 2, 4)], &[]);
        let mut new_leader = None;
        assert!(!take(&mut new_leader, r.heartbeat(node(), b.clone())));
        assert!(
            r.acknowledged(true),
            "a refused delta should be followed at once"
        );
        let hb = r.heartbeat(node(), b.clone());
        assert_eq!(hb.base, None);
        assert!(take(&mut new_leader, hb));
        r.acknowledged(false);
        assert_eq!(new_leader.unwrap().replicas, b.replicas);
    }

    #[test]
    fn a_whole_report_the_leader_could_not_check_is_sent_again_a_period_later() {
        let mut r = Reporter::new(1);
        let a = report(&[(1, 1, 1)], &[(1, 1)]);
        assert_eq!(r.heartbeat(node(), a.clone()).base, None);
        assert!(!r.acknowledged(true), "no tight loop of whole reports");
        let hb = r.heartbeat(node(), a);
        assert_eq!(hb.base, None, "the led descriptors go again");
        assert_eq!(hb.led.len(), 1);
    }

    #[test]
    fn a_lost_acknowledgement_never_merges_onto_the_wrong_report() {
        let mut r = Reporter::new(1);
        let mut held = None;
        assert!(take(
            &mut held,
            r.heartbeat(node(), report(&[(1, 1, 1)], &[]))
        ));
        r.acknowledged(false);
        // Applied by the leader but the answer was lost: partition 1 moved to term 2 there.
        assert!(take(
            &mut held,
            r.heartbeat(node(), report(&[(1, 2, 2)], &[]))
        ));
        r.failed();
        // Back at term 1's values, the node's delta from report 1 is empty; applied on top
        // of report 2 it would leave term 2 standing. The leader must refuse it.
        let hb = r.heartbeat(node(), report(&[(1, 1, 1)], &[]));
        assert_eq!(hb.base, Some(1));
        assert!(hb.replicas.is_empty());
        assert!(!take(&mut held, hb));
        assert!(r.acknowledged(true));
        assert!(take(
            &mut held,
            r.heartbeat(node(), report(&[(1, 1, 1)], &[]))
        ));
        assert_eq!(held.unwrap().replicas[&PartitionId(1)], status(1, 1, 1));
    }

    #[test]
    fn a_retried_heartbeat_is_taken_once() {
        let mut r = Reporter::new(1);
        let mut held = None;
        assert!(take(
            &mut held,
            r.heartbeat(node(), report(&[(1, 1, 1)], &[]))
        ));
        r.acknowledged(false);
        let hb = r.heartbeat(node(), report(&[(1, 1, 2)], &[]));
        assert!(take(&mut held, hb.clone()));
        assert!(take(&mut held, hb), "the same delta delivered twice");
        assert_eq!(held.unwrap().replicas[&PartitionId(1)].term, 2);
    }

    #[test]
    fn the_whole_report_goes_out_every_so_often() {
        let mut r = Reporter::new(1);
        let a = report(&[(1, 1, 1)], &[]);
        let mut whole = 0;
        // Whole, then FULL_REPORT_EVERY deltas, twice over, then whole again.
        for _ in 0..(2 * (FULL_REPORT_EVERY + 1) + 1) {
            if r.heartbeat(node(), a.clone()).base.is_none() {
                whole += 1;
            }
            r.acknowledged(false);
        }
        assert_eq!(whole, 3);
    }
}
