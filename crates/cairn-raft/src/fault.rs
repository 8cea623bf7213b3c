//! Testing only: crash points and hold points. A node started with `--fault-crash-at POINT`
//! aborts the moment it reaches that point, as if its power went out right there, so that a
//! test can cut the disk's power too and check what a restart recovers. A point a test
//! holds ([`hold`]) stops every thread that reaches it until the test releases it, so that
//! the test can look at a node in the middle of a long operation. Unset in production.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

static CRASH_AT: OnceLock<String> = OnceLock::new();

/// The points a node can be told to crash at.
pub const CRASH_POINTS: [&str; 3] = [
    // A snapshot install has copied its first batch of rows over the old state.
    "install-rows",
    // A split is applied on this replica, before its right half opens.
    "split-applied",
    // A replica being destroyed has lost its log and state, not yet its rows.
    "destroy-rows",
];

/// Makes the process abort at `point` (one of [`CRASH_POINTS`]); set once, at start.
pub fn set_crash_point(point: &str) -> Result<(), String> {
    if !CRASH_POINTS.contains(&point) {
        return Err(format!(
            "unknown crash point {point:?}; the points are {}",
            CRASH_POINTS.join(", ")
        ));
    }
    CRASH_AT
        .set(point.to_string())
        .map_err(|_| "a crash point is set already".to_string())
}

/// Aborts the process if it was told to crash at `point`.
pub(crate) fn crash_point(point: &str) {
    if CRASH_AT.get().is_some_and(|p| p == point) {
        eprintln!("crash point {point} reached (--fault-crash-at): aborting");
        std::process::abort();
    }
}

/// Points held by a test, and how many times each was reached.
#[derive(Default)]
struct Holds {
    held: HashSet<&'static str>,
    reached: HashMap<&'static str, usize>,
}

/// Whether any point was ever held: reaching a point costs one load otherwise.
static ANY_HELD: AtomicBool = AtomicBool::new(false);
static HOLDS: Mutex<Option<Holds>> = Mutex::new(None);
static RELEASED: Condvar = Condvar::new();

fn holds() -> std::sync::MutexGuard<'static, Option<Holds>> {
    HOLDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Testing only: every thread that reaches `point` from now on waits there until the answer
/// is dropped or released (so a test that fails lets its nodes go). The process's nodes all
/// share it. Counts the point's arrivals from 0 again.
#[must_use = "the point is released when this is dropped"]
pub fn hold(point: &'static str) -> Held {
    ANY_HELD.store(true, Ordering::SeqCst);
    let mut h = holds();
    let h = h.get_or_insert_with(Default::default);
    h.held.insert(point);
    h.reached.insert(point, 0);
    Held(point)
}

/// A point held ([`hold`]) until this is dropped.
pub struct Held(&'static str);

impl Held {
    /// Lets the threads waiting at the point go on, and those that reach it later pass.
    pub fn release(self) {}
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(h) = holds().as_mut() {
            h.held.remove(self.0);
        }
        RELEASED.notify_all();
    }
}

/// How many times a thread reached `point` since it was last held.
pub fn reached(point: &'static str) -> usize {
    holds()
        .as_ref()
        .and_then(|h| h.reached.get(point).copied())
        .unwrap_or(0)
}

/// Waits here (blocking the thread) while a test holds `point`.
pub(crate) fn hold_point(point: &'static str) {
    if !ANY_HELD.load(Ordering::SeqCst) {
        return;
    }
    let mut guard = holds();
    let Some(h) = guard.as_mut() else { return };
    *h.reached.entry(point).or_default() += 1;
    while guard.as_ref().is_some_and(|h| h.held.contains(point)) {
        guard = RELEASED.wait(guard).unwrap_or_else(|p| p.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_point_stops_its_thread_until_released() {
        let held = hold("destroy-rows");
        let t = std::thread::spawn(|| {
            hold_point("destroy-rows");
            reached("destroy-rows")
        });
        let start = std::time::Instant::now();
        while reached("destroy-rows") == 0 {
            assert!(
                start.elapsed().as_secs() < 30,
                "the thread never reached the point"
            );
            std::thread::yield_now();
        }
        assert!(!t.is_finished(), "the thread passed a held point");
        held.release();
        assert_eq!(t.join().unwrap(), 1);
        // Released: passing it does not wait.
        hold_point("destroy-rows");
        assert_eq!(reached("destroy-rows"), 2);
    }
}
