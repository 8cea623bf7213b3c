//! List consistency: what a List must and must not return.
//!
//! For a List over `[start, end)` invoked at `t0` and answered at `t1`:
//! - a key is *surely present* if a put of it completed before `t0` and every delete of it
//!   that may have happened before `t1` returned before that put began (so no order of the
//!   operations puts a delete after it);
//! - a key is *surely absent* if it was never put before `t1`, or a delete of it completed
//!   before `t0` and every put that may have happened before `t1` returned before that
//!   delete began;
//! - keys come back in strict byte order (so no duplicates) and inside the range.
//!
//! Surely-present keys must be in the result, surely-absent keys must not. This is weaker
//! than linearizability of the whole List but needs no search, and catches lost and
//! resurrected keys and broken paging.

use crate::{EventType, Function, History, Operation};
use std::collections::BTreeMap;
use std::fmt;

/// A List that broke one of the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListViolation {
    /// History index (0-based line) of the List's invocation.
    pub op: usize,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for ListViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "list at history line {}: {}", self.op + 1, self.reason)
    }
}

fn in_range(key: &str, start: Option<&str>, end: Option<&str>) -> bool {
    start.is_none_or(|s| key >= s) && end.is_none_or(|e| key < e)
}

/// Checks every completed List of `history`.
pub fn check_lists(history: &History) -> Vec<ListViolation> {
    // Writes by (table, key).
    let mut writes: BTreeMap<(&str, &str), Vec<&Operation>> = BTreeMap::new();
    for op in &history.ops {
        if let (Some(k), Function::Put | Function::Delete) = (&op.key, op.f)
            && op.outcome != EventType::Fail
        {
            writes
                .entry((op.table.as_str(), k.as_str()))
                .or_default()
                .push(op);
        }
    }
    let mut out = Vec::new();
    for list in history
        .ops
        .iter()
        .filter(|o| o.f == Function::List && o.outcome == EventType::Ok)
    {
        let (t0, t1) = (list.invoked, list.completed);
        let (start, end) = (list.start.as_deref(), list.end.as_deref());
        if let Some(w) = list.keys.windows(2).find(|w| w[0] >= w[1]) {
            out.push(ListViolation {
                op: list.index,
                reason: format!("keys out of order or repeated: {:?} then {:?}", w[0], w[1]),
            });
        }
        if let Some(k) = list.keys.iter().find(|k| !in_range(k, start, end)) {
            out.push(ListViolation {
                op: list.index,
                reason: format!("key {k:?} is outside the listed range"),
            });
        }
        for ((table, key), ops) in &writes {
            if *table != list.table || !in_range(key, start, end) {
                continue;
            }
            let returned = list.keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok();
            let of = |f: Function| ops.iter().filter(move |o| o.f == f);
            // Writes that may have taken effect before the List answered.
            let may = |o: &&&Operation| o.invoked < t1;
            // `a` surely comes after `b` in every linearization: `b` returned before `a` began.
            let after = |a: &Operation, b: &Operation| {
                b.outcome == EventType::Ok && b.completed < a.invoked
            };
            // Surely present: some put returned before the List began and every delete that
            // may have happened surely came before that put.
            let surely_present = of(Function::Put)
                .filter(|p| p.outcome == EventType::Ok && p.completed < t0)
                .any(|p| of(Function::Delete).filter(may).all(|d| after(p, d)));
            // Surely absent: never put before the List ended, or some delete returned before
            // the List began and every put that may have happened surely came before it.
            let surely_absent = !of(Function::Put).any(|p| p.invoked < t1)
                || of(Function::Delete)
                    .filter(|d| d.outcome == EventType::Ok && d.completed < t0)
                    .any(|d| of(Function::Put).filter(may).all(|p| after(d, p)));
            if surely_present && !returned {
                out.push(ListViolation {
                    op: list.index,
                    reason: format!(
                        "key {key:?} was written before the List and not deleted, but is missing"
                    ),
                });
            }
            if surely_absent && returned {
                out.push(ListViolation {
                    op: list.index,
                    reason: format!("key {key:?} was deleted (or never written) before the List, but was returned"),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_history;

    fn w(p: u64, t: &str, f: &str, key: &str, time: u64) -> String {
        format!(
            r#"{{"process":{p},"type":"{t}","f":"{f}","table":"t","key":"{key}","value":"v","time":{time}}}"#
        )
    }

    fn l(p: u64, t: &str, keys: Option<&[&str]>, time: u64) -> String {
        let keys = keys.map_or("null".to_string(), |k| serde_json::to_string(k).unwrap());
        format!(
            r#"{{"process":{p},"type":"{t}","f":"list","table":"t","start":"a","end":"z","keys":{keys},"time":{time}}}"#
        )
    }

    fn check(lines: &[String]) -> Vec<ListViolation> {
        check_lists(&parse_history(&lines.join("\n")).unwrap())
    }

    #[test]
    fn present_absent_and_racing_keys() {
        let base = vec![
            w(1, "invoke", "put", "b", 0),
            w(1, "ok", "put", "b", 1),
            w(1, "invoke", "put", "c", 2),
            w(1, "ok", "put", "c", 3),
            w(1, "invoke", "delete", "c", 4),
            w(1, "ok", "delete", "c", 5),
            w(2, "invoke", "put", "d", 9),
        ];
        let mut ok = base.clone();
        ok.push(l(3, "invoke", None, 10));
        ok.push(l(3, "ok", Some(&["b"]), 20));
        assert_eq!(check(&ok), vec![]);
        let mut racing = base.clone();
        racing.push(l(3, "invoke", None, 10));
        racing.push(l(3, "ok", Some(&["b", "d"]), 20));
        assert_eq!(
            check(&racing),
            vec![],
            "d was being written during the List"
        );
        let mut lost = base.clone();
        lost.push(l(3, "invoke", None, 10));
        lost.push(l(3, "ok", Some(&[]), 20));
        assert_eq!(check(&lost).len(), 1);
        let mut resurrected = base.clone();
        resurrected.push(l(3, "invoke", None, 10));
        resurrected.push(l(3, "ok", Some(&["b", "c"]), 20));
        assert_eq!(check(&resurrected).len(), 1);
        let mut disorder = base;
        disorder.push(l(3, "invoke", None, 10));
        disorder.push(l(3, "ok", Some(&["b", "b"]), 20));
        assert_eq!(check(&disorder).len(), 1);
    }
}
