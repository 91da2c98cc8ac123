//! The one pseudo-random generator of the process (not for secrets): per shard or per task,
//! in a `Cell`, so no sharing and no atomics. It draws balancers' random picks
//! ([`crate::balance`]), slow start's admissions, health-check jitter, and the sampled work:
//! the access log's `access_sample` and a route's `mirror.sample`.

use std::cell::Cell;

/// What [`Rng::below`] compares with to draw `fraction` (0 to 1) of its calls.
pub fn threshold(fraction: f64) -> u64 {
    if fraction >= 1.0 {
        u64::MAX
    } else {
        (fraction.max(0.0) * u64::MAX as f64) as u64
    }
}

/// wyrand: one add and one 64×64→128 multiply per draw, good enough for load balancing
/// and sampling (it passes BigCrush and PractRand).
#[derive(Debug)]
pub struct Rng(Cell<u64>);

impl Rng {
    /// A generator started from `seed`: the same seed, the same draws.
    pub fn seeded(seed: u64) -> Rng {
        Rng(Cell::new(seed))
    }

    /// A generator for `shard`, `salt` telling its uses apart.
    pub fn new(shard: usize, salt: u64) -> Rng {
        Rng::seeded(0x9E37_79B9_7F4A_7C15 ^ ((shard as u64 + 1) << 32) ^ salt)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        let s = self.0.get().wrapping_add(0xa076_1d64_78bd_642f);
        self.0.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether this call is drawn: always for `threshold(1.0)`, without advancing.
    pub fn below(&self, threshold: u64) -> bool {
        threshold == u64::MAX || self.next_u64() < threshold
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

    #[test]
    fn is_deterministic_and_uniform_enough() {
        let (a, b) = (Rng::seeded(42), Rng::seeded(42));
        let xs: Vec<f64> = (0..10_000).map(|_| a.unit()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert_eq!(xs[..3], [b.unit(), b.unit(), b.unit()]);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        let low = xs.iter().filter(|&&x| x < 0.1).count();
        assert!((800..1200).contains(&low), "{low}");
        // Seeds next to each other start apart.
        assert_ne!(Rng::new(0, 0).next_u64(), Rng::new(1, 0).next_u64());
    }
}
