//! Stage "balance", `maglev`: Google's Maglev lookup table (Eisenbud et al., NSDI 2016,
//! section 3.4), built once per table and read by every shard; a pick is one array read.
//!
//! The table has a prime number `M` of slots (65,537, or the first prime ≥ 100 × backends
//! when that is larger, so that each backend owns ~M/N slots and the shares stay within about
//! 1 %). Backend `i` has the permutation `(offset + j × skip) mod M` with
//! `offset = h1(name) mod M` and `skip = h2(name) mod (M − 1) + 1`, two seeded 64-bit hashes
//! of its name, so the table depends only on the names, the weights and their order (turns
//! are taken in list order), never on a shard, a host or a start time. Backends take turns
//! claiming their next free preferred slot until the table is full. **Weights** (as Envoy's
//! weighted Maglev): in pass `p` backend `i` takes a turn when `p × weight_i ≥ target_i`, and
//! each turn adds `max weight` to `target_i`, so backends take turns, and own slots, in
//! proportion to their weights.
//!
//! Removing one backend of N and rebuilding moves its keys plus a small fraction of others
//! (the paper's "minimal disruption"); the build is deterministic, so adding it back restores
//! the previous table exactly.

use super::{hash64, mix64};

/// Table size used up to 655 backends (prime).
pub(super) const DEFAULT_SIZE: u64 = 65_537;

/// Seeds of the two name hashes (any fixed values; changing them remaps every key).
const SEED_OFFSET: u64 = 0x6d61_676c_6576_0001;
const SEED_SKIP: u64 = 0x6d61_676c_6576_0002;

#[derive(Debug, Default)]
pub(super) struct Maglev {
    /// Slot → tier position.
    slots: Vec<u32>,
}

impl Maglev {
    /// `names[i]` and `weights[i]` (≥ 1) describe tier position `i`.
    pub fn build(names: &[&str], weights: &[u32]) -> Maglev {
        let n = names.len().min(weights.len());
        if n == 0 {
            return Maglev::default();
        }
        let m = table_size(n);
        let offset: Vec<u64> = names[..n]
            .iter()
            .map(|s| hash64(SEED_OFFSET, s.as_bytes()) % m)
            .collect();
        let skip: Vec<u64> = names[..n]
            .iter()
            .map(|s| hash64(SEED_SKIP, s.as_bytes()) % (m - 1) + 1)
            .collect();
        let max_w = weights[..n].iter().copied().max().unwrap_or(1).max(1);
        let mut next = vec![0u64; n];
        let mut target = vec![0u64; n];
        const EMPTY: u32 = u32::MAX;
        let mut slots = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        let mut pass = 0u64;
        'fill: loop {
            for i in 0..n {
                if pass * u64::from(weights[i].max(1)) < target[i] {
                    continue;
                }
                target[i] += u64::from(max_w);
                // `skip` is coprime with the prime `m`, so the permutation visits every slot
                // once in `m` steps and a free slot is found before `next[i]` reaches `m`.
                while next[i] < m {
                    let c = ((offset[i] + next[i] * skip[i]) % m) as usize;
                    next[i] += 1;
                    if slots[c] == EMPTY {
                        slots[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
            pass += 1;
        }
        Maglev { slots }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot of a key hash: `key × M / 2^32`, a division-free map onto `0..M`.
    #[inline]
    pub fn slot(&self, key: u32) -> usize {
        ((u64::from(key) * self.slots.len() as u64) >> 32) as usize
    }

    /// The slot a pick reads at `step` of its search for key hash `key`: step 0 is the key's
    /// own slot; later steps are slots drawn from `mix64(key, step)`, the same for a key on
    /// every shard and host. Not `slot + step`: a member whose `skip` has a small inverse
    /// modulo `M` owns runs of adjacent slots (up to ~70 in a 4-member table), and a walk
    /// along them would fall back to round robin, moving its keys from pick to pick.
    #[inline]
    pub fn probe(&self, key: u32, step: usize) -> usize {
        if step == 0 {
            return self.slot(key);
        }
        let h = mix64(u64::from(key) | (step as u64) << 32);
        ((u128::from(h) * self.slots.len() as u128) >> 64) as usize
    }

    /// Owner (tier position) of slot `i % len()`; `None` for an empty table.
    #[inline]
    pub fn owner(&self, i: usize) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        self.slots.get(i % n).map(|&o| o as usize)
    }
}

/// 65,537, or the first prime ≥ 100 × `n` when that is larger.
fn table_size(n: usize) -> u64 {
    let want = (n as u64).saturating_mul(100);
    if want <= DEFAULT_SIZE {
        return DEFAULT_SIZE;
    }
    let mut p = want | 1;
    while !is_prime(p) {
        p += 2;
    }
    p
}

fn is_prime(p: u64) -> bool {
    if p < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= p {
        if p % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_prime() {
        assert_eq!(table_size(1), 65_537);
        assert_eq!(table_size(655), 65_537);
        let big = table_size(1000);
        assert!(big >= 100_000 && is_prime(big));
    }

    #[test]
    fn every_slot_filled_in_weight_proportion() {
        let t = Maglev::build(&["a:1", "b:1", "c:1"], &[1, 2, 1]);
        assert_eq!(t.len(), 65_537);
        let mut counts = [0usize; 3];
        for &s in &t.slots {
            counts[s as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 65_537);
        // Turns are taken 1:2:1, so the counts differ from the exact shares by at most one turn.
        assert!((counts[1] as i64 - 32_768).abs() <= 2, "{counts:?}");
        assert!((counts[0] as i64 - 16_384).abs() <= 2, "{counts:?}");
    }
}
