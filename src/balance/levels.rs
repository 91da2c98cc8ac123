//! Stage "balance", the least-loaded order of `least_conn` (and the fallback of `p2c` and
//! `bounded_load`): per tier, the distinct load scores of the shard's members in ascending
//! order, each with the bitset of members at that score. `started`/`finished` move one member
//! between levels (a binary search and a short memmove, no allocation: capacity for one level
//! per member is reserved up front); a pick walks the levels from the lowest and, within a
//! level, the members in cyclic order from a start member, and returns the first usable one.
//! A pick therefore checks only as many members as there are unusable ones ahead of the
//! answer, instead of scanning every member.
//!
//! The answer equals that of a scan "lowest score among usable members, first in cyclic order
//! from the start" (the unit test below runs both on random histories).

#[derive(Debug, Default)]
pub(super) struct Levels {
    /// u64 words per bitset: ceil(members / 64).
    words: usize,
    /// Ascending, distinct.
    scores: Vec<u64>,
    /// `words` words per level, parallel to `scores`; bit `i` = member `i`.
    bits: Vec<u64>,
}

impl Levels {
    /// `len` members in all; `members` (those of this tier) start at score 0.
    pub fn new(len: usize, members: impl Iterator<Item = usize>) -> Levels {
        let words = len.div_ceil(64);
        let mut l = Levels {
            words,
            scores: Vec::with_capacity(len + 1),
            bits: Vec::with_capacity((len + 1) * words),
        };
        for i in members {
            l.add(i, 0);
        }
        l
    }

    /// Member `i` moved from score `from` to `to`.
    pub fn moved(&mut self, i: usize, from: u64, to: u64) {
        if from != to {
            self.remove(i, from);
            self.add(i, to);
        }
    }

    fn remove(&mut self, i: usize, score: u64) {
        let w = self.words;
        let Ok(k) = self.scores.binary_search(&score) else {
            return;
        };
        let level = &mut self.bits[k * w..(k + 1) * w];
        level[i / 64] &= !(1u64 << (i % 64));
        if level.iter().all(|&x| x == 0) {
            self.scores.remove(k);
            self.bits.drain(k * w..(k + 1) * w);
        }
    }

    fn add(&mut self, i: usize, score: u64) {
        let w = self.words;
        if i / 64 >= w {
            return;
        }
        let k = match self.scores.binary_search(&score) {
            Ok(k) => k,
            Err(k) => {
                // Within the reserved capacity: a member is in one level at a time.
                self.scores.insert(k, score);
                for j in 0..w {
                    self.bits.insert(k * w + j, 0);
                }
                k
            }
        };
        self.bits[k * w + i / 64] |= 1u64 << (i % 64);
    }

    /// The first usable member of the lowest level that has one, in cyclic member order from
    /// `start`; only members set in `mask` count.
    pub fn first<F: Fn(usize) -> bool>(
        &self,
        mask: &[u64],
        start: usize,
        usable: &F,
    ) -> Option<usize> {
        let w = self.words;
        if w == 0 || mask.len() < w {
            return None;
        }
        let (sw, sb) = ((start / 64) % w, start % 64);
        for level in self.bits.chunks_exact(w) {
            // Word `sw` from bit `sb`, the words after it, the words before it, then word
            // `sw` below bit `sb`.
            for k in 0..=w {
                let wi = if sw + k >= w { sw + k - w } else { sw + k };
                let mut word = level[wi] & mask[wi];
                if k == 0 {
                    word &= !0u64 << sb;
                } else if k == w {
                    word &= !(!0u64 << sb);
                }
                while word != 0 {
                    let m = wi * 64 + word.trailing_zeros() as usize;
                    if usable(m) {
                        return Some(m);
                    }
                    word &= word - 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: a scan for the lowest score among usable members, first from `start`.
    fn scan(scores: &[u64], start: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = scores.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let m = (start + k) % n;
            if usable(m) && best.is_none_or(|b| scores[m] < scores[b]) {
                best = Some(m);
            }
        }
        best
    }

    #[test]
    fn matches_the_scan_on_random_histories() {
        let rng = crate::sample::Rng::seeded(0x1234_5678_9abc_def0);
        let next = || rng.next_u64();
        for n in [1usize, 3, 64, 65, 130] {
            let mut scores = vec![0u64; n];
            let mut levels = Levels::new(n, 0..n);
            let mask = vec![u64::MAX; n.div_ceil(64)];
            for _ in 0..20_000 {
                let i = (next() % n as u64) as usize;
                let to = next() % 6;
                levels.moved(i, scores[i], to);
                scores[i] = to;
                let start = (next() % n as u64) as usize;
                let down = next();
                let usable = |m: usize| (down >> (m % 64)) & 3 != 0;
                assert_eq!(
                    levels.first(&mask, start, &usable),
                    scan(&scores, start, usable)
                );
            }
            assert!(levels.scores.len() <= n);
        }
    }

    #[test]
    fn mask_limits_candidates() {
        let levels = Levels::new(3, 0..3);
        assert_eq!(levels.first(&[0b100], 0, &|_| true), Some(2));
        assert_eq!(levels.first(&[0], 0, &|_| true), None);
        assert_eq!(Levels::new(0, 0..0).first(&[], 0, &|_| true), None);
    }
}
