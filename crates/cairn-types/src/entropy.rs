//! The one source of randomness of a node, a router and a client: drawn from the OS in
//! production, and from a seed on threads that a deterministic simulation has seeded, so a
//! simulated run repeats exactly.

use std::cell::Cell;

thread_local! {
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// SplitMix64: a bijective mixer, enough for ids and timeouts (not for secrets).
fn splitmix64(x: u64) -> u64 {
    let z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Makes every later draw on this thread follow from `seed` (simulation only).
pub fn seed_thread(seed: u64) {
    SEED.with(|s| s.set(Some(seed)));
}

/// Returns this thread to OS randomness.
pub fn unseed_thread() {
    SEED.with(|s| s.set(None));
}

/// A random 64-bit number.
pub fn next_u64() -> u64 {
    SEED.with(|s| match s.get() {
        Some(x) => {
            let next = splitmix64(x);
            s.set(Some(next));
            next
        }
        None => rand::random(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_repeats_its_draws() {
        seed_thread(42);
        let a: Vec<u64> = (0..4).map(|_| next_u64()).collect();
        seed_thread(42);
        let b: Vec<u64> = (0..4).map(|_| next_u64()).collect();
        seed_thread(43);
        let c: Vec<u64> = (0..4).map(|_| next_u64()).collect();
        unseed_thread();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(next_u64(), next_u64());
    }
}
