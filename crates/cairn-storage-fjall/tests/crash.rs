//! Crash test of the production engine: a child process writes batches to a fjall engine
//! (syncing every other one and reporting each sync) until it is killed with SIGKILL; the
//! reopened engine must hold every batch reported synced, each batch whole or not at all,
//! and no batch without every batch before it. The simulation runs on the in-memory
//! engine, so this is what stands behind fjall's side of the same [`Engine`] contract.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use cairn_storage::{Engine, Space, WriteBatch};
use cairn_storage_fjall::FjallEngine;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const KEYS_PER_BATCH: u64 = 4;

fn key(batch: u64, j: u64) -> Vec<u8> {
    format!("b{batch:08}-{j}").into_bytes()
}

fn value(batch: u64, j: u64) -> Vec<u8> {
    // Big enough that the journal rolls over a few times during the run.
    let mut v = format!("value of {batch}/{j} ").into_bytes();
    v.resize(2048, b'x');
    v
}

/// The child: writes until killed. Run only by `fjall_survives_kill9`.
#[test]
#[ignore = "child process of fjall_survives_kill9"]
fn crash_child() {
    let dir = std::env::var("CAIRN_CRASH_DIR").expect("run by fjall_survives_kill9");
    let e = FjallEngine::open(std::path::Path::new(&dir)).unwrap();
    let mut out = std::io::stdout().lock();
    for batch in 0.. {
        let mut b = WriteBatch::new();
        for j in 0..KEYS_PER_BATCH {
            b.put(Space::Data, key(batch, j), value(batch, j));
        }
        e.write(b).unwrap();
        if batch % 2 == 0 {
            e.sync().unwrap();
            writeln!(out, "synced {batch}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn fjall_survives_kill9() {
    let base = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let dir = base.path().join(format!("round-{round}"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--ignored", "--nocapture"])
            .env("CAIRN_CRASH_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different point each round.
        let kill_after = 200 + round * 150;
        let mut last_synced = None;
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("synced ") {
                let n: u64 = n.parse().unwrap();
                last_synced = Some(n);
                if n >= kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last_synced = last_synced.expect("the child reported no sync");

        let e = FjallEngine::open(&dir).unwrap();
        let present = |batch: u64| {
            let found: Vec<bool> = (0..KEYS_PER_BATCH)
                .map(|j| match e.get(Space::Data, &key(batch, j)).unwrap() {
                    Some(v) => {
                        assert_eq!(v, value(batch, j), "batch {batch} key {j} corrupt");
                        true
                    }
                    None => false,
                })
                .collect();
            assert!(
                found.iter().all(|&f| f) || found.iter().all(|&f| !f),
                "round {round}: batch {batch} survived in part: {found:?}"
            );
            found[0]
        };
        for batch in 0..=last_synced {
            assert!(
                present(batch),
                "round {round}: batch {batch} was synced (last synced {last_synced}) but is lost"
            );
        }
        // Beyond the last sync, whatever survived is a prefix.
        let mut batch = last_synced + 1;
        while present(batch) {
            batch += 1;
        }
        for later in batch + 1..batch + 50 {
            assert!(
                !present(later),
                "round {round}: batch {later} survived without batch {batch}"
            );
        }
    }
}
