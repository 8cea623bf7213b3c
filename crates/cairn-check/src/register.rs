//! Per-key linearizability of registers (put / delete / get).
//!
//! Each key is checked alone. The search (Wing & Gong, with Lowe's memoisation of
//! `(linearized set, state)`) linearizes, one at a time, an operation that no other pending
//! operation must precede: one invoked before every pending completed operation returned.
//! `info` writes may take effect at any time after their invocation, or never; `info` and
//! `fail` reads constrain nothing and are dropped; `fail` writes never happened.

use crate::{EventType, Function, History, Operation};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// Most search steps per key before giving up (reported as a violation of kind
/// "undecided" so a run never passes unchecked).
const STEP_BUDGET: u64 = 5_000_000;

/// A key whose history is not linearizable (or could not be decided).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterViolation {
    /// Table of the key.
    pub table: String,
    /// The key.
    pub key: String,
    /// What went wrong, with the operations involved.
    pub reason: String,
    /// History indexes (0-based lines) of the operations involved.
    pub ops: Vec<usize>,
}

impl fmt::Display for RegisterViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {} (history lines {:?})",
            self.table,
            self.key,
            self.reason,
            self.ops.iter().map(|i| i + 1).collect::<Vec<_>>()
        )
    }
}

#[derive(Clone, Debug)]
struct ROp {
    index: usize,
    f: Function,
    value: Option<String>,
    invoked: u64,
    completed: u64,
    required: bool,
}

/// Checks every key of `history`; returns the violations (empty: linearizable).
pub fn check_registers(history: &History) -> Vec<RegisterViolation> {
    let mut by_key: BTreeMap<(String, String), Vec<&Operation>> = BTreeMap::new();
    for op in &history.ops {
        if let (Some(key), Function::Put | Function::Get | Function::Delete) = (&op.key, op.f) {
            by_key
                .entry((op.table.clone(), key.clone()))
                .or_default()
                .push(op);
        }
    }
    let mut out = Vec::new();
    for ((table, key), ops) in by_key {
        // An `info` put whose value no read returned may be taken as never applied: had
        // it applied, no read saw it, so leaving it out can only make the search easier.
        // (Values are unique per write, as the workload guarantees.)
        let observed: HashSet<&str> = ops
            .iter()
            .filter(|o| o.f == Function::Get && o.outcome == EventType::Ok)
            .filter_map(|o| o.value.as_deref())
            .collect();
        let rops: Vec<ROp> = ops
            .iter()
            .filter(|o| o.outcome != EventType::Fail)
            .filter(|o| {
                !(o.f == Function::Put
                    && o.outcome == EventType::Info
                    && o.value.as_deref().is_none_or(|v| !observed.contains(v)))
            })
            .filter(|o| !(o.f == Function::Get && o.outcome != EventType::Ok))
            .map(|o| ROp {
                index: o.index,
                f: o.f,
                value: o.value.clone(),
                invoked: o.invoked,
                completed: o.completed,
                required: o.outcome == EventType::Ok,
            })
            .collect();
        if let Err((reason, ops)) = check_key(&rops) {
            out.push(RegisterViolation {
                table,
                key,
                reason,
                ops,
            });
        }
    }
    out
}

type Bits = Vec<u64>;

fn set(bits: &mut Bits, i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn has(bits: &Bits, i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn describe(op: &ROp) -> String {
    let v = op
        .value
        .as_deref()
        .map_or("absent".to_string(), |v| format!("{v:?}"));
    let done = if op.required {
        format!("{}", op.completed)
    } else {
        "unknown".into()
    };
    match op.f {
        Function::Put => format!("put {v} [{}, {done}]", op.invoked),
        Function::Delete => format!("delete [{}, {done}]", op.invoked),
        Function::Get => format!("get -> {v} [{}, {done}]", op.invoked),
        Function::List => "list".into(),
    }
}

/// Searches for a linearization of one key's operations.
fn check_key(ops: &[ROp]) -> Result<(), (String, Vec<usize>)> {
    let n = ops.len();
    let required = ops.iter().filter(|o| o.required).count();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Bits, Option<String>)> = HashSet::new();
    // Depth-first search with an explicit stack: (linearized, count of required linearized,
    // state, candidates, next candidate).
    struct Frame {
        lin: Bits,
        done_required: usize,
        state: Option<String>,
        candidates: Vec<usize>,
        next: usize,
    }
    let candidates = |lin: &Bits| -> Vec<usize> {
        let horizon = (0..n)
            .filter(|i| !has(lin, *i) && ops[*i].required)
            .map(|i| ops[i].completed)
            .min()
            .unwrap_or(u64::MAX);
        (0..n)
            .filter(|i| !has(lin, *i) && ops[*i].invoked <= horizon)
            .collect()
    };
    let start = vec![0u64; words];
    let mut stack = vec![Frame {
        candidates: candidates(&start),
        lin: start,
        done_required: 0,
        state: None,
        next: 0,
    }];
    let mut steps = 0u64;
    let mut deepest: (usize, Option<String>, Vec<usize>) = (0, None, Vec::new());
    while let Some(top) = stack.last_mut() {
        if top.done_required == required {
            return Ok(());
        }
        steps += 1;
        if steps > STEP_BUDGET {
            return Err((
                format!("undecided: the search exceeded {STEP_BUDGET} steps"),
                ops.iter().map(|o| o.index).collect(),
            ));
        }
        if top.done_required >= deepest.0 {
            deepest = (top.done_required, top.state.clone(), top.candidates.clone());
        }
        let Some(&c) = top.candidates.get(top.next) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let op = &ops[c];
        let state = match op.f {
            Function::Put => op.value.clone(),
            Function::Delete => None,
            Function::Get if op.value == top.state => top.state.clone(),
            _ => continue,
        };
        let mut lin = top.lin.clone();
        set(&mut lin, c);
        if !seen.insert((lin.clone(), state.clone())) {
            continue;
        }
        let done_required = top.done_required + usize::from(op.required);
        let cands = candidates(&lin);
        stack.push(Frame {
            lin,
            done_required,
            state,
            candidates: cands,
            next: 0,
        });
    }
    let (_, state, stuck) = deepest;
    let shown = state
        .as_deref()
        .map_or("absent".to_string(), |v| format!("{v:?}"));
    let detail: Vec<String> = stuck.iter().map(|i| describe(&ops[*i])).collect();
    Err((
        format!(
            "not linearizable: with the value {shown}, none of these can come next: {}",
            detail.join("; ")
        ),
        stuck.iter().map(|i| ops[*i].index).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_history;

    fn line(p: u64, t: &str, f: &str, key: &str, value: Option<&str>, time: u64) -> String {
        let v = value.map_or("null".to_string(), |v| format!("{v:?}"));
        format!(
            r#"{{"process":{p},"type":"{t}","f":"{f}","table":"t","key":"{key}","value":{v},"time":{time}}}"#
        )
    }

    fn check(lines: &[String]) -> Vec<RegisterViolation> {
        check_registers(&parse_history(&lines.join("\n")).unwrap())
    }

    #[test]
    fn sequential_history_passes() {
        let h = [
            line(1, "invoke", "put", "k", Some("1"), 0),
            line(1, "ok", "put", "k", Some("1"), 10),
            line(1, "invoke", "get", "k", None, 20),
            line(1, "ok", "get", "k", Some("1"), 30),
            line(1, "invoke", "delete", "k", None, 40),
            line(1, "ok", "delete", "k", None, 50),
            line(1, "invoke", "get", "k", None, 60),
            line(1, "ok", "get", "k", None, 70),
        ];
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn stale_read_is_reported() {
        // put 1, put 2 complete; a later read returns 1: a stale read.
        let h = [
            line(1, "invoke", "put", "k", Some("1"), 0),
            line(1, "ok", "put", "k", Some("1"), 10),
            line(1, "invoke", "put", "k", Some("2"), 20),
            line(1, "ok", "put", "k", Some("2"), 30),
            line(2, "invoke", "get", "k", None, 40),
            line(2, "ok", "get", "k", Some("1"), 50),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].key, "k");
        assert!(v[0].reason.contains("get -> \"1\""), "{}", v[0]);
        assert!(v[0].ops.contains(&4), "{:?}", v[0].ops);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = [
            line(1, "invoke", "put", "k", Some("1"), 0),
            line(1, "ok", "put", "k", Some("1"), 10),
            line(1, "invoke", "put", "k", Some("2"), 20),
            line(2, "invoke", "get", "k", None, 21),
            line(2, "ok", "get", "k", Some("1"), 25),
            line(3, "invoke", "get", "k", None, 26),
            line(3, "ok", "get", "k", Some("2"), 28),
            line(1, "ok", "put", "k", Some("2"), 30),
        ];
        assert_eq!(check(&h), vec![]);
        // But once a reader saw 2, a later reader may not go back to 1.
        let mut h2 = h.to_vec();
        h2.push(line(4, "invoke", "get", "k", None, 29));
        h2.push(line(4, "ok", "get", "k", Some("1"), 29));
        assert_eq!(check(&h2).len(), 1);
    }

    #[test]
    fn info_writes_may_or_may_not_happen_but_fail_never_does() {
        let maybe = [
            line(1, "invoke", "put", "k", Some("1"), 0),
            line(1, "info", "put", "k", Some("1"), 10),
            line(2, "invoke", "get", "k", None, 100),
            line(2, "ok", "get", "k", Some("1"), 110),
            line(2, "invoke", "get", "k", None, 120),
            line(2, "ok", "get", "k", Some("1"), 130),
        ];
        assert_eq!(check(&maybe), vec![]);
        let never = [
            line(1, "invoke", "put", "k", Some("1"), 0),
            line(1, "fail", "put", "k", Some("1"), 10),
            line(2, "invoke", "get", "k", None, 100),
            line(2, "ok", "get", "k", Some("1"), 110),
        ];
        assert_eq!(check(&never).len(), 1);
    }

    #[test]
    fn lost_write_is_reported() {
        // An acknowledged put followed by a read of "absent": the write was lost.
        let h = [
            line(1, "invoke", "put", "k", Some("1"), 0),
            line(1, "ok", "put", "k", Some("1"), 10),
            line(2, "invoke", "get", "k", None, 20),
            line(2, "ok", "get", "k", None, 30),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn keys_are_independent_and_many_ops_check_quickly() {
        let mut h = Vec::new();
        let mut t = 0;
        for i in 0..3000u64 {
            let key = format!("k{}", i % 7);
            let v = i.to_string();
            h.push(line(i % 5, "invoke", "put", &key, Some(&v), t));
            h.push(line(i % 5, "ok", "put", &key, Some(&v), t + 5));
            h.push(line(i % 5, "invoke", "get", &key, None, t + 6));
            h.push(line(i % 5, "ok", "get", &key, Some(&v), t + 9));
            t += 10;
        }
        assert_eq!(check(&h), vec![]);
    }
}
