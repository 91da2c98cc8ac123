//! The response cache's admission filter (part of [`super::store::Store`], consulted when a
//! relayed response is stored in *respond*): a TinyLFU-style frequency sketch. Every lookup of
//! a cached route counts its URL; when storing a response would evict entries, the newcomer is
//! stored only if its URL was asked for at least as often as the least recently used entry's,
//! so a burst of one-off URLs (a crawler, a scan) cannot flush the popular ones. Which policy a
//! route uses is `cache.policy`; why TinyLFU is the default is measured in
//! loadtest/results/2026-12-04-vm/cache-policy.md (`cargo bench --bench cache_policy`).

use std::hash::BuildHasher;

/// A count-min sketch of 4-bit-range counters (saturating at 15) over four rows, halved
/// after `10 × width` recorded accesses so that old popularity fades.
pub struct Sketch {
    rows: [Box<[u8]>; 4],
    mask: usize,
    recorded: u64,
    sample: u64,
}

/// Counters per row for a store of `size` bytes: one per 4 KiB, as a power of two between
/// 1,024 and 1 Mi (4 rows of one byte each: 4 KiB to 4 MiB per store).
pub fn width_for(size: u64) -> usize {
    ((size / 4096) as usize)
        .clamp(1024, 1 << 20)
        .next_power_of_two()
}

const SEEDS: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0x27D4_EB2F_1656_67C5,
];

/// The 64-bit hash the sketch counts a URL under: keyed per process (SipHash), so that a
/// client cannot pick URLs that count as another's.
pub fn hash(url: &[u8]) -> u64 {
    static KEY: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    KEY.hash_one(url)
}

impl Sketch {
    pub fn new(width: usize) -> Sketch {
        let width = width.max(16).next_power_of_two();
        let row = || vec![0u8; width].into_boxed_slice();
        Sketch {
            rows: [row(), row(), row(), row()],
            mask: width - 1,
            recorded: 0,
            sample: 10 * width as u64,
        }
    }

    /// Counters per row.
    pub fn width(&self) -> usize {
        self.mask + 1
    }

    fn index(&self, h: u64, row: usize) -> usize {
        // A different odd multiplier per row, the high bits taken: independent enough slots.
        (h.wrapping_mul(SEEDS[row]) >> 32) as usize & self.mask
    }

    /// Counts one access to the URL hashed `h`.
    pub fn record(&mut self, h: u64) {
        let est = self.estimate(h);
        if est < 15 {
            // Conservative update: only the counters at the minimum grow (fewer collisions).
            for r in 0..4 {
                let i = self.index(h, r);
                if self.rows[r][i] == est {
                    self.rows[r][i] += 1;
                }
            }
        }
        self.recorded += 1;
        if self.recorded >= self.sample {
            self.halve();
        }
    }

    /// How often the URL hashed `h` was recorded (an overestimate at worst, 0..=15).
    pub fn estimate(&self, h: u64) -> u8 {
        (0..4)
            .map(|r| self.rows[r][self.index(h, r)])
            .min()
            .unwrap_or(0)
    }

    fn halve(&mut self) {
        for row in &mut self.rows {
            for c in row.iter_mut() {
                *c >>= 1;
            }
        }
        self.recorded /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // URLs built (probe6-b) so that an unseeded FxHash gives them all one value: keyed, the
    // hash tells them apart, and so do the cache's maps, which use the same std hasher.
    #[test]
    fn urls_built_to_collide_do_not() {
        let keys: [&[u8]; 3] = [
            b"http://a/hostpage/6L@!wolyM0(P*(CCCCCCCCCCCCCCCCY(Ul=hz~O(PK6hGaTTTTTTTTTTTTTTTTT",
            b"http://a/hostpage/6L@!wolyM0(P*(CCCCCCCCCCCCCCCCY(Ul=hz~S66Wys3~TTTTTTTTTTTTTTTTT",
            b"http://a/hostpage/6L@!wolyM0(P*(CCCCCCCCCCCCCCCCY(Ul=hz~UPXAyS,UTTTTTTTTTTTTTTTTT",
        ];
        let h: Vec<u64> = keys.iter().map(|k| hash(k)).collect();
        assert!(h[0] != h[1] && h[1] != h[2] && h[0] != h[2], "{h:x?}");
    }

    #[test]
    fn counts_saturate_and_fade() {
        let mut s = Sketch::new(1024);
        let (a, b) = (hash(b"http://h/a"), hash(b"http://h/b"));
        for _ in 0..5 {
            s.record(a);
        }
        s.record(b);
        assert_eq!(s.estimate(a), 5);
        assert_eq!(s.estimate(b), 1);
        assert_eq!(s.estimate(hash(b"http://h/never")), 0);
        for _ in 0..100 {
            s.record(a);
        }
        assert_eq!(s.estimate(a), 15, "saturates");
        // 10 × width accesses in all halve every counter.
        for i in 0..(10 * 1024) {
            s.record(hash(format!("http://h/{i}").as_bytes()));
        }
        assert!(s.estimate(a) <= 7, "{}", s.estimate(a));
    }

    #[test]
    fn widths_follow_the_size() {
        assert_eq!(width_for(0), 1024);
        assert_eq!(width_for(64 << 20), 16384);
        assert_eq!(width_for(1 << 40), 1 << 20);
    }
}
