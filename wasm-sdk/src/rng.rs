//! Random numbers for filters (weights, jitter, sampling), seeded from the host's randomness (WASI
//! `random_get`, through std's `RandomState`) once per VM.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher, RandomState};

thread_local! {
    static KEYS: RandomState = RandomState::new();
    static COUNTER: Cell<u64> = const { Cell::new(0) };
}

/// A uniformly distributed random number: SipHash, keyed randomly, of a per-VM counter.
pub fn next_u64() -> u64 {
    let n = COUNTER.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n
    });
    let mut hasher = KEYS.with(|k| k.build_hasher());
    hasher.write_u64(n);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_differ_and_spread() {
        let draws: Vec<u64> = (0..1000).map(|_| super::next_u64()).collect();
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert_eq!(distinct.len(), 1000);
        let low = draws.iter().filter(|d| **d < u64::MAX / 2).count();
        assert!((400..600).contains(&low), "{low} of 1000 in the lower half");
    }
}
