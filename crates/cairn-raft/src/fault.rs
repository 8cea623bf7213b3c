//! Testing only: crash points. A node started with `--fault-crash-at POINT` aborts the
//! moment it reaches that point, as if its power went out right there, so that a test can
//! cut the disk's power too and check what a restart recovers. Unset in production.

use std::sync::OnceLock;

static CRASH_AT: OnceLock<String> = OnceLock::new();

/// The points a node can be told to crash at.
pub const CRASH_POINTS: [&str; 2] = [
    // A snapshot install has copied its first batch of rows over the old state.
    "install-rows",
    // A split is applied on this replica, before its right half opens.
    "split-applied",
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
