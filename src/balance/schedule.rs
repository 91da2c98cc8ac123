//! Stage "balance", weighted orders: nginx's smooth weighted round robin (SWRR) precomputed
//! as one period of its sequence, so that a `weighted` pick is an array read instead of a scan
//! of every backend. The same schedule serves weighted random draws (each position appears
//! `weight / gcd` times in it) and the weighted tie-break of `least_conn`.
//!
//! nginx's SWRR, from all `current` weights at zero: add each weight to its `current`, pick
//! the largest (the first on a tie), subtract the total weight from it. After `W` picks
//! (`W` = sum of the weights) every backend has been picked exactly `weight` times and every
//! `current` is back at zero, so the sequence is periodic with period `W`. Dividing all weights
//! by their gcd scales every `current` by the same factor and gives the same sequence, with a
//! shorter period. Periods longer than [`MAX_SCHEDULE`] are not stored; those tables pick by
//! the O(n) scan, which is nginx's algorithm itself.

/// Longest schedule stored (entries of 4 bytes: 256 KiB). 100 backends of weight ≤ 655, or any
/// weights with a small enough gcd-reduced sum, fit.
pub(super) const MAX_SCHEDULE: u64 = 1 << 16;

/// Weighted orders over the positions `0..weights.len()` of one tier.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    /// One period of nginx's SWRR sequence (tier positions); empty when the period is longer
    /// than [`MAX_SCHEDULE`].
    pub seq: Vec<u32>,
    /// `cum[i]` = sum of the weights of positions `0..=i`: weighted draws without `seq`.
    pub cum: Vec<u64>,
    /// Sum of the weights.
    pub total: u64,
}

impl Schedule {
    /// `weights` are ≥ 1 (the table clamps them).
    pub fn build(weights: &[u32]) -> Schedule {
        let mut total = 0u64;
        let cum = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        let g = weights
            .iter()
            .fold(0u64, |g, &w| gcd(g, u64::from(w)))
            .max(1);
        let period = total / g;
        let seq = if period > 0 && period <= MAX_SCHEDULE {
            let reduced: Vec<i64> = weights.iter().map(|&w| (u64::from(w) / g) as i64).collect();
            smooth_sequence(&reduced, period as usize)
        } else {
            Vec::new()
        };
        Schedule { seq, cum, total }
    }

    /// A weighted random position for the random number `r`, or `None` for an empty tier.
    pub fn draw(&self, r: u64) -> Option<usize> {
        if !self.seq.is_empty() {
            let i = below(r, self.seq.len() as u64) as usize;
            return self.seq.get(i).map(|&p| p as usize);
        }
        if self.total == 0 {
            return None;
        }
        let x = below(r, self.total);
        let p = self.cum.partition_point(|&c| c <= x);
        (p < self.cum.len()).then_some(p)
    }
}

/// `len` picks of nginx's SWRR from all-zero state over `weights` (tier positions).
fn smooth_sequence(weights: &[i64], len: usize) -> Vec<u32> {
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Maps a uniform 64-bit `r` onto `0..n` (Lemire's multiply-shift; the bias is below 2^-40
/// for the sizes used here).
pub(super) fn below(r: u64, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_documented_sequence() {
        // nginx's example in ngx_http_upstream_round_robin.c: weights 5,1,1 give a a b a c a a.
        let s = Schedule::build(&[5, 1, 1]);
        assert_eq!(s.seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn gcd_reduction_keeps_the_sequence() {
        let a = Schedule::build(&[3, 2, 1]);
        let b = Schedule::build(&[300, 200, 100]);
        assert_eq!(a.seq, b.seq);
        assert_eq!(b.total, 600);
    }

    #[test]
    fn long_periods_are_not_stored_but_draw() {
        let s = Schedule::build(&[10_000, 9_999, 9_998, 9_997, 9_996, 9_995, 9_994]);
        assert!(s.seq.is_empty());
        assert_eq!(s.draw(0), Some(0));
        assert_eq!(s.draw(u64::MAX), Some(6));
        assert_eq!(Schedule::build(&[]).draw(7), None);
    }
}
