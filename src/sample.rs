//! Fractions of requests drawn per shard: the access log's `access_sample` and a route's
//! `mirror.sample`. A xorshift64* generator in a `Cell`: no sharing, no atomics.

use std::cell::Cell;

/// What [`Rng::below`] compares with to draw `fraction` (0 to 1) of its calls.
pub fn threshold(fraction: f64) -> u64 {
    if fraction >= 1.0 {
        u64::MAX
    } else {
        (fraction.max(0.0) * u64::MAX as f64) as u64
    }
}

/// One shard's generator.
pub struct Rng(Cell<u64>);

impl Rng {
    /// A generator for `shard`, `salt` telling its uses apart.
    pub fn new(shard: usize, salt: u64) -> Rng {
        Rng(Cell::new(
            0x9E37_79B9_7F4A_7C15 ^ ((shard as u64 + 1) << 32) ^ salt,
        ))
    }

    /// Whether this call is drawn: always for `threshold(1.0)`, without advancing.
    pub fn below(&self, threshold: u64) -> bool {
        if threshold == u64::MAX {
            return true;
        }
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) < threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_about_the_fraction_asked_for() {
        let rng = Rng::new(0, 0);
        for (fraction, low, high) in [(0.0, 0, 0), (0.25, 2_300, 2_700), (1.0, 10_000, 10_000)] {
            let t = threshold(fraction);
            let n = (0..10_000).filter(|_| rng.below(t)).count();
            assert!((low..=high).contains(&n), "{fraction}: {n}");
        }
    }
}
