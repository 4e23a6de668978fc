//! Weighted choice of a destination, and the random numbers it uses.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// The index chosen among `weights` for the uniform random number `random`: index `i` with
/// probability `weights[i] / sum(weights)`. A single entry is always chosen (its weight is
/// ignored, as Istio does); entries of weight 0 never are, unless all are 0 (then the first).
pub fn pick(weights: &[u32], random: u64) -> usize {
    if weights.len() <= 1 {
        return 0;
    }
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return 0;
    }
    let mut point = random % total;
    for (i, &weight) in weights.iter().enumerate() {
        let weight = u64::from(weight);
        if point < weight {
            return i;
        }
        point -= weight;
    }
    weights.len() - 1
}

thread_local! {
    /// The VM's generator state (a VM runs on one thread), seeded on first use.
    static STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A seed from the platform's randomness: std's hasher keys come from `random_get` on WASI
/// (the host reads `/dev/urandom`) and from the OS elsewhere.
fn seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

/// One step of SplitMix64: the next state and its output.
pub fn splitmix64(state: u64) -> (u64, u64) {
    let state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (state, z ^ (z >> 31))
}

/// A uniformly distributed random number (SplitMix64, seeded once per VM).
pub fn random() -> u64 {
    STATE.with(|cell| {
        let state = cell.get().unwrap_or_else(seed);
        let (next, out) = splitmix64(state);
        cell.set(Some(next));
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_the_weights() {
        assert_eq!(pick(&[], 7), 0);
        assert_eq!(pick(&[0], 7), 0, "a single destination takes everything");
        assert_eq!(pick(&[0, 0], 7), 0);
        // 80/20: 0..80 → first, 80..100 → second.
        assert_eq!(pick(&[80, 20], 0), 0);
        assert_eq!(pick(&[80, 20], 79), 0);
        assert_eq!(pick(&[80, 20], 80), 1);
        assert_eq!(pick(&[80, 20], 99), 1);
        assert_eq!(pick(&[80, 20], 100), 0, "modulo the total");
        assert_eq!(pick(&[0, 100], 5), 1, "weight 0 gets nothing");
        assert_eq!(pick(&[1, 1, 2], 3), 2, "relative weights");
        let mut counts = [0usize; 3];
        for r in 0..1000 {
            counts[pick(&[25, 0, 75], r)] += 1;
        }
        assert_eq!(counts, [250, 0, 750]);
    }

    #[test]
    fn random_numbers_spread_evenly() {
        let mut counts = [0usize; 2];
        for _ in 0..10_000 {
            counts[pick(&[50, 50], random())] += 1;
        }
        assert!((4_700..=5_300).contains(&counts[0]), "{counts:?}");
        assert_ne!(random(), random());
        assert_eq!(splitmix64(0).1, 0xe220_a839_7b1d_cdaf, "the reference sequence");
    }
}
