//! The controller. On every node it measures the partitions the node leads (their size,
//! for splits by size); beside the metadata leader it also asks the planner
//! ([`cairn_meta::planner::plan`]) what to do, once a second, and does it through the same
//! split, move and transfer paths an operator uses. Moves are recorded operations that the
//! executor drives and a new metadata leader finishes; splits and transfers are single
//! steps. Nothing it needs survives only in memory: a new metadata leader rebuilds its view
//! from heartbeats and the metadata, waiting one grace period first.

use crate::meta_service::LEADER_GRACE;
use crate::node::Node;
use cairn_meta::planner::{ClusterView, Decision, PlannerConfig, load_hot, plan};
use cairn_router::DecisionRecord;
use cairn_types::PartitionId;
use cairn_types::{Error, Result};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the controller plans.
const TICK: Duration = Duration::from_secs(1);

/// Decisions kept for `cairn admin controller status`.
const KEEP_DECISIONS: usize = 50;

/// How long one decision may take before the controller moves on.
const DECISION_DEADLINE: Duration = Duration::from_secs(10);

/// The controller's recent decisions, on the node that made them.
#[derive(Default)]
pub(crate) struct ControllerLog {
    decisions: std::sync::Mutex<VecDeque<DecisionRecord>>,
}

impl ControllerLog {
    fn push(&self, r: DecisionRecord) {
        let mut d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        // A standing report (a hot key, a lost quorum) is logged once, not every second.
        if let Some(last) = d
            .iter()
            .rev()
            .find(|x| x.partition == r.partition && x.kind == r.kind)
            && last.kind == "report"
            && last.why == r.why
        {
            return;
        }
        if d.len() == KEEP_DECISIONS {
            d.pop_front();
        }
        d.push_back(r);
    }

    /// The recent decisions, newest first.
    pub(crate) fn recent(&self) -> Vec<DecisionRecord> {
        let d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        d.iter().rev().cloned().collect()
    }
}

/// Runs the controller on this node until `stop`.
pub(crate) async fn controller_loop(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let cfg = node.core.controller.clone();
    if !cfg.enabled {
        return;
    }
    let planner = PlannerConfig {
        split_size: cfg.split_size,
        split_qps: cfg.split_qps,
        // Half a split's worth: a move for balance is worth copying about a partition.
        balance_bytes: cfg.split_size / 2,
        ..PlannerConfig::default()
    };
    // Consecutive passes each partition was found hot in (`load_hot`).
    let mut hot_passes = BTreeMap::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        node.core.measure_led(cfg.split_size).await;
        if !node.is_meta_leader() {
            hot_passes.clear();
            continue;
        }
        if let Err(e) = node
            .control_once(&planner, cfg.down_after, &mut hot_passes)
            .await
        {
            tracing::debug!("controller: {e}");
        }
    }
}

impl Node {
    /// One pass of the controller on the metadata leader: plan, then act on each decision.
    async fn control_once(
        &self,
        planner: &PlannerConfig,
        down_after: Duration,
        hot_passes: &mut BTreeMap<PartitionId, u32>,
    ) -> Result<()> {
        // A pass that returns early breaks every streak.
        let earlier = std::mem::take(hot_passes);
        let state = self.core.meta_state()?;
        if state.controller_paused {
            return Ok(());
        }
        let (live, down, loads, leaders) = {
            let l = self.core.liveness.lock().unwrap_or_else(|p| p.into_inner());
            // A new leader waits until every live node has reported.
            if l.leading_for().is_none_or(|t| t < LEADER_GRACE) {
                return Ok(());
            }
            (
                l.live_nodes(),
                l.down(state.nodes.keys().copied(), down_after),
                l.loads(),
                l.leaders(),
            )
        };
        let view = ClusterView {
            meta: &state,
            live,
            down,
            draining: state.draining.clone(),
            loads,
            leaders,
            now_ms: crate::core::now_ms(),
            hot_passes: earlier,
        };
        let decisions = plan(&view, planner);
        *hot_passes = load_hot(&view, planner)
            .into_iter()
            .map(|p| (p, view.hot_passes.get(&p).copied().unwrap_or(0) + 1))
            .collect();
        for d in decisions {
            let outcome = match self.act(&state, &d).await {
                Ok(()) => "done".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            let (kind, detail, why) = describe(&d);
            if kind != "report" {
                tracing::info!(partition = %d.partition(), %kind, %detail, %why, %outcome, "controller");
            }
            self.core.controller_log.push(DecisionRecord {
                at_ms: crate::core::now_ms(),
                kind,
                partition: d.partition(),
                detail,
                why,
                outcome,
            });
        }
        Ok(())
    }

    async fn act(&self, state: &cairn_meta::MetaState, d: &Decision) -> Result<()> {
        let deadline = Instant::now() + DECISION_DEADLINE;
        match d {
            Decision::Split { partition, key, .. } => {
                let Some((table, _)) = state.partition(*partition) else {
                    return Err(Error::NotFound(format!("{partition}")));
                };
                self.split(&table.name, key.clone(), deadline).await?;
            }
            Decision::Move {
                partition,
                from,
                to,
                ..
            } => {
                self.move_replica(*partition, *from, *to, deadline).await?;
            }
            Decision::TransferLeader { partition, to, .. } => {
                self.transfer_leader(*partition, *to, deadline).await?;
            }
            Decision::Report { partition, why } => {
                tracing::debug!(%partition, "controller report: {why}");
            }
        }
        Ok(())
    }
}

/// Kind, details and reason of a decision, in words.
fn describe(d: &Decision) -> (String, String, String) {
    match d {
        Decision::Split { key, why, .. } => (
            "split".into(),
            format!("at {:?}", String::from_utf8_lossy(key)),
            why.clone(),
        ),
        Decision::Move { from, to, why, .. } => {
            ("move".into(), format!("{from} -> {to}"), why.clone())
        }
        Decision::TransferLeader { to, why, .. } => {
            ("transfer".into(), format!("to {to}"), why.clone())
        }
        Decision::Report { why, .. } => ("report".into(), String::new(), why.clone()),
    }
}
