//! History events and their pairing into operations.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What an event says about its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The operation starts.
    Invoke,
    /// It completed and took effect.
    Ok,
    /// It certainly took no effect.
    Fail,
    /// Its outcome is unknown (a timeout): it may take effect at any later time.
    Info,
}

/// The operation kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Sets a key to `value`.
    Put,
    /// Reads a key: `value` is what was read (`null` when absent) on `ok`.
    Get,
    /// Removes a key.
    Delete,
    /// Lists keys in `[start, end)`; `keys` holds the result on `ok`.
    List,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The client process; one operation at a time per process.
    pub process: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation kind.
    pub f: Function,
    /// The table.
    pub table: String,
    /// The key (not for List).
    #[serde(default)]
    pub key: Option<String>,
    /// Put: the value written; Get on `ok`: the value read (`None`: absent).
    #[serde(default)]
    pub value: Option<String>,
    /// List: inclusive start.
    #[serde(default)]
    pub start: Option<String>,
    /// List: exclusive end (`None`: unbounded). On an `ok` completion, the end of what the
    /// List actually covered, if less than asked.
    #[serde(default)]
    pub end: Option<String>,
    /// List on `ok`: the keys returned, in the order returned.
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// On `fail` / `info`: the error, `CODE: message`, for whoever reads the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Nanoseconds on one monotonic clock.
    pub time: u64,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Index of the invoke event in the history (to point at it in reports).
    pub index: usize,
    /// The process.
    pub process: u64,
    /// The operation kind.
    pub f: Function,
    /// The table.
    pub table: String,
    /// The key, for put/get/delete.
    pub key: Option<String>,
    /// Put: value written. Get: value read (only meaningful when `outcome` is `Ok`).
    pub value: Option<String>,
    /// List bounds.
    pub start: Option<String>,
    /// List bounds.
    pub end: Option<String>,
    /// List result.
    pub keys: Vec<String>,
    /// Invocation time.
    pub invoked: u64,
    /// Completion time; `u64::MAX` for `info` (it may take effect any time later).
    pub completed: u64,
    /// How it ended.
    pub outcome: EventType,
}

/// A whole history, paired into operations.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Every operation, in invocation order.
    pub ops: Vec<Operation>,
}

/// A malformed history line.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not an event.
    #[error("line {line}: {source}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A completion with no pending invocation of its process.
    #[error("line {line}: process {process} completes an operation it never invoked")]
    Unpaired {
        /// 1-based line number.
        line: usize,
        /// The process.
        process: u64,
    },
}

/// Parses JSON lines and pairs them into a [`History`]. An invocation never completed is
/// treated as `info`.
pub fn parse_history(text: &str) -> Result<History, ParseError> {
    let mut events = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let e: Event = serde_json::from_str(line).map_err(|source| ParseError::Json {
            line: i + 1,
            source,
        })?;
        events.push((i + 1, e));
    }
    let mut pending: HashMap<u64, usize> = HashMap::new();
    let mut ops: Vec<Operation> = Vec::new();
    for (line, e) in events {
        match e.kind {
            EventType::Invoke => {
                pending.insert(e.process, ops.len());
                ops.push(Operation {
                    index: line - 1,
                    process: e.process,
                    f: e.f,
                    table: e.table,
                    key: e.key,
                    value: e.value,
                    start: e.start,
                    end: e.end,
                    keys: Vec::new(),
                    invoked: e.time,
                    completed: u64::MAX,
                    outcome: EventType::Info,
                });
            }
            kind => {
                let i = pending.remove(&e.process).ok_or(ParseError::Unpaired {
                    line,
                    process: e.process,
                })?;
                let op = &mut ops[i];
                op.outcome = kind;
                if kind != EventType::Info {
                    op.completed = e.time;
                }
                if kind == EventType::Ok {
                    if op.f == Function::Get {
                        op.value = e.value;
                    }
                    if op.f == Function::List {
                        op.keys = e.keys.unwrap_or_default();
                        // A page may cover less than asked (it stops at a partition
                        // boundary): the completion's `end` is what it covered.
                        if e.end.is_some() {
                            op.end = e.end;
                        }
                    }
                }
            }
        }
    }
    Ok(History { ops })
}
