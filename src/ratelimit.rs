//! Stage 3½ of the pipeline, *admit* by rate: the token buckets of `rate_limit` rules, exact
//! across shards without a lock or a shared write per request.
//!
//! SO_REUSEPORT spreads one client's connections over every shard, so a bucket per shard
//! (rate/N each) admits anything from rate/N to rate depending on how the connections land.
//! Instead each key has **one bucket for the process**, a slot in the [`RateTable`] all shards
//! share, and the shards **lease** tokens from it in small batches ([`Leases`]): a request
//! spends a token its shard already holds (a lookup in a shard-local map, no atomic); only
//! when the lease is spent does the shard take the next batch from the shared slot (one
//! compare-and-swap), and when the slot is empty it remembers until when, so a flood that is
//! being refused touches the shared slot once per token period, not once per request. Tokens
//! are taken from the bucket when leased, so the process never admits more than the bucket
//! gives; a shard can strand at most one unfinished batch, which bounds how far below the
//! rate it can fall. See docs/ARCHITECTURE.md, "Rate limits".
//!
//! The bucket is GCRA (the generic cell rate algorithm, a token bucket kept as one number):
//! the slot holds the *theoretical arrival time* `tat`, the moment the bucket would be full
//! again. `n` tokens are available at `now` when `max(tat, now) + n·T <= now + burst·T`
//! (T = 1 s / rate), and taking them moves `tat` forward by `n·T`.
//!
//! With `rate_limits.store` set, [`crate::ratelimit_store`] also charges each bucket what the
//! other processes of the fleet spent on the same key.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::balance::key::{key_bytes, IpText, KeySource};
use crate::config::{RateKey, RateLimit};
use crate::shard::ShardCtx;

/// Slots probed for a key before one is taken over.
const PROBES: usize = 8;

/// A leased batch is given up after this long unused (its tokens were charged when leased:
/// spending them much later would add to the burst).
const LEASE_NS: u64 = 1_000_000_000;

/// One key's bucket. `tag` is the key's hash (0: never used); `tat` the theoretical arrival
/// time in nanoseconds since [`RateTable::epoch`]; `spent` the tokens taken since the
/// fleet store last read it and `interval` the rule's nanoseconds per token (both only read
/// by the store).
#[repr(align(32))]
pub struct Slot {
    pub(crate) tag: AtomicU64,
    tat: AtomicU64,
    pub(crate) spent: AtomicU64,
    pub(crate) interval: AtomicU64,
}

/// The buckets of every key of every limit, shared by all shards of the process (held by
/// [`crate::snapshot::Published`], so buckets outlive reloads). `rate_limits.max_keys` sets
/// its size (twice that many slots, so probing stays short).
pub struct RateTable {
    pub(crate) slots: Box<[Slot]>,
    mask: usize,
    epoch: Instant,
    /// Mixed into every key's hash: random per process, or, with a fleet store, the same in
    /// every process that shares it (so a key has one name in the store).
    seed: u64,
    /// The fleet store's syncs by result (`ratelimit_store`).
    pub store_ok: AtomicU64,
    pub store_failed: AtomicU64,
}

/// What [`RateTable::take`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Tokens granted (0..=wanted).
    pub granted: u32,
    /// When nothing was granted: nanoseconds until the next token.
    pub wait_ns: u64,
    /// The key displaced another key's bucket (the table was crowded around it).
    pub evicted: bool,
}

impl RateTable {
    /// A table for `max_keys` keys; `fleet_seed`: the seed shared with the other processes
    /// of a fleet store (`None`: a random one).
    pub fn new(max_keys: usize, fleet_seed: Option<u64>) -> RateTable {
        let n = (max_keys.max(8) * 2).next_power_of_two();
        RateTable {
            slots: (0..n)
                .map(|_| Slot {
                    tag: AtomicU64::new(0),
                    tat: AtomicU64::new(0),
                    spent: AtomicU64::new(0),
                    interval: AtomicU64::new(0),
                })
                .collect(),
            mask: n - 1,
            epoch: Instant::now(),
            seed: fleet_seed.unwrap_or_else(|| RandomState::new().hash_one(0u8)),
            store_ok: AtomicU64::new(0),
            store_failed: AtomicU64::new(0),
        }
    }

    /// The table for `config`'s `[rate_limits]`.
    pub fn for_config(cfg: &crate::config::RateLimits) -> RateTable {
        RateTable::new(
            cfg.max_keys,
            cfg.store.as_ref().map(|s| {
                std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default()
                    .hash_one(("edgeshard", s))
            }),
        )
    }

    /// Now, on the table's clock (nanoseconds since it was made).
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The hash a key of `limit` is known by (never 0). Seeded per process (or per fleet), so
    /// a client cannot choose keys that collide.
    pub fn key(&self, limit: &RateLimit, bytes: &[u8]) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        (self.seed, limit.id, bytes).hash(&mut h);
        h.finish() | 1
    }

    /// The slot of `key`: its own, else an unused one or one whose bucket is full (a full
    /// bucket is the same as a new one), else the probed slot nearest to full (evicted).
    fn slot(&self, key: u64, interval: u64, now: u64) -> (&Slot, bool) {
        let start = key as usize & self.mask;
        let mut best: Option<(&Slot, u64)> = None;
        for i in 0..PROBES {
            let s = &self.slots[(start + i) & self.mask];
            let tag = s.tag.load(Ordering::Acquire);
            if tag == key {
                return (s, false);
            }
            let tat = s.tat.load(Ordering::Relaxed);
            if tag == 0 || tat <= now {
                // Taking it over may race with another shard taking it for another key: the
                // loser looks again.
                if s.tag
                    .compare_exchange(tag, key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    s.spent.store(0, Ordering::Relaxed);
                    s.interval.store(interval, Ordering::Relaxed);
                    return (s, false);
                }
                continue;
            }
            if best.is_none_or(|(_, t)| tat < t) {
                best = Some((s, tat));
            }
        }
        // Crowded: the bucket closest to full gives way (its key starts again from full).
        let (s, _) = best.unwrap_or((&self.slots[start], 0));
        s.tag.store(key, Ordering::Release);
        s.tat.store(now, Ordering::Relaxed);
        s.spent.store(0, Ordering::Relaxed);
        s.interval.store(interval, Ordering::Relaxed);
        (s, true)
    }

    /// Takes up to `want` tokens of `key`'s bucket (`limit`'s rate and burst) at `now`.
    pub fn take(&self, limit: &RateLimit, key: u64, want: u32, now: u64) -> Taken {
        let (slot, evicted) = self.slot(key, limit.interval_ns, now);
        let t = limit.interval_ns;
        let capacity = u64::from(limit.burst) * t;
        let mut cur = slot.tat.load(Ordering::Relaxed);
        loop {
            let base = cur.max(now);
            // Tokens available: how many intervals fit between `base` and `now + capacity`.
            let avail = (now + capacity).saturating_sub(base) / t;
            if avail == 0 {
                return Taken {
                    granted: 0,
                    // Until `base + T <= now + capacity` (the bucket may be below empty after
                    // charges from the fleet).
                    wait_ns: (base + t).saturating_sub(now + capacity).max(1),
                    evicted,
                };
            }
            let granted = avail.min(u64::from(want)) as u32;
            let next = base + u64::from(granted) * t;
            match slot
                .tat
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    slot.spent.fetch_add(u64::from(granted), Ordering::Relaxed);
                    return Taken {
                        granted,
                        wait_ns: 0,
                        evicted,
                    };
                }
                Err(now_tat) => cur = now_tat,
            }
        }
    }

    /// Charges `n` tokens that other processes spent on the key with hash `key` (the fleet
    /// store): the bucket may go below empty, and then admits nothing until it has refilled.
    /// The bucket is never pushed further than one minute ahead (a burst from a fleet of many
    /// cannot lock a key out for longer).
    pub fn charge(&self, key: u64, n: u64, interval_ns: u64, now: u64) {
        let start = key as usize & self.mask;
        for i in 0..PROBES {
            let s = &self.slots[(start + i) & self.mask];
            if s.tag.load(Ordering::Acquire) == key {
                let add = n.saturating_mul(interval_ns);
                let _ = s
                    .tat
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                        Some(tat.max(now).saturating_add(add).min(now + 60_000_000_000))
                    });
                return;
            }
        }
    }
}

/// A shard's leased tokens per key.
#[derive(Clone, Copy)]
struct Lease {
    /// Tokens left.
    left: u32,
    /// Table time after which the tokens left are dropped.
    until: u64,
    /// Table time before which the bucket is known to be empty (0: not known empty).
    empty_until: u64,
}

/// Keys a shard keeps leases for; past this the map is pruned.
const MAX_LEASES: usize = 16_384;

/// A shard's side of the rate limits: the tokens it holds per key. Shard-local (a `RefCell`
/// never held across an `.await`).
#[derive(Default)]
pub struct Leases {
    map: RefCell<FxHashMap<u64, Lease>>,
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a token is due (at least 1), for `Retry-After`.
    pub retry_after_s: u64,
    /// The refusal displaced another key in a crowded table.
    pub evicted: bool,
}

impl Leases {
    /// Admits one request of `key` under `limit`, or says when to retry. `shards`: how many
    /// shards share the table (the batch is sized so that all of them together hold at most
    /// half the burst).
    pub fn admit(
        &self,
        table: &RateTable,
        limit: &RateLimit,
        key: u64,
        shards: usize,
    ) -> Result<bool, Limited> {
        let now = table.now_ns();
        let mut map = self.map.borrow_mut();
        if let Some(l) = map.get_mut(&key) {
            if l.left > 0 && now < l.until {
                l.left -= 1;
                return Ok(false);
            }
            if now < l.empty_until {
                return Err(Limited {
                    retry_after_s: secs_up(l.empty_until - now),
                    evicted: false,
                });
            }
        }
        let batch = (limit.burst / (2 * shards.max(1) as u32)).clamp(1, 64);
        let taken = table.take(limit, key, batch, now);
        if map.len() >= MAX_LEASES && !map.contains_key(&key) {
            map.retain(|_, l| (l.left > 0 && now < l.until) || now < l.empty_until);
            if map.len() >= MAX_LEASES {
                map.clear();
            }
        }
        if taken.granted == 0 {
            map.insert(
                key,
                Lease {
                    left: 0,
                    until: 0,
                    empty_until: now + taken.wait_ns,
                },
            );
            return Err(Limited {
                retry_after_s: secs_up(taken.wait_ns),
                evicted: taken.evicted,
            });
        }
        map.insert(
            key,
            Lease {
                left: taken.granted - 1,
                until: now + LEASE_NS,
                empty_until: 0,
            },
        );
        Ok(taken.evicted)
    }
}

/// Whether `limit` admits a request (`src`: its fields): `Ok` also when the request lacks the
/// key the limit counts by; `Err` says how many seconds until it would.
pub fn check<'a, H>(ctx: &ShardCtx, limit: &RateLimit, src: KeySource<'a, H>) -> Result<(), u64>
where
    H: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut ip = IpText::default();
    let bytes: &[u8] = match &limit.key {
        RateKey::Whole => b"",
        RateKey::Request(k) => match key_bytes(k, src, &mut ip) {
            Some(b) => b,
            None => return Ok(()),
        },
    };
    let key = ctx.rates.key(limit, bytes);
    let shards = ctx.shared.accepting.len();
    let r = ctx.leases.admit(&ctx.rates, limit, key, shards);
    let evicted = match r {
        Ok(e) => e,
        Err(l) => l.evicted,
    };
    if evicted {
        crate::stats::bump(&ctx.stats.rate_evictions);
    }
    r.map(|_| ()).map_err(|l| l.retry_after_s)
}

/// Nanoseconds as whole seconds, rounded up, at least 1 (`Retry-After` has no fractions).
fn secs_up(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateKey;

    fn limit(rate: f64, burst: u32) -> RateLimit {
        RateLimit {
            rate,
            burst,
            key: RateKey::Whole,
            interval_ns: (1e9 / rate) as u64,
            id: 7,
        }
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_one_token_per_interval() {
        let t = RateTable::new(16, None);
        let l = limit(10.0, 5); // one token per 100 ms
        let k = t.key(&l, b"a");
        let now = 1_000_000_000;
        assert_eq!(t.take(&l, k, 3, now).granted, 3);
        assert_eq!(t.take(&l, k, 3, now).granted, 2);
        let empty = t.take(&l, k, 3, now);
        assert_eq!(empty.granted, 0);
        assert_eq!(empty.wait_ns, 100_000_000);
        assert_eq!(t.take(&l, k, 3, now + 99_999_999).granted, 0);
        assert_eq!(t.take(&l, k, 3, now + 100_000_000).granted, 1);
        // Long idle: back to a full bucket, never more.
        assert_eq!(t.take(&l, k, 64, now + 60_000_000_000).granted, 5);
    }

    #[test]
    fn keys_and_limits_have_separate_buckets() {
        let t = RateTable::new(16, None);
        let (a, b) = (
            limit(1.0, 1),
            RateLimit {
                id: 8,
                ..limit(1.0, 1)
            },
        );
        let now = 5;
        for (l, bytes) in [(&a, &b"x"[..]), (&a, b"y"), (&b, b"x")] {
            let k = t.key(l, bytes);
            assert_eq!(t.take(l, k, 1, now).granted, 1);
            assert_eq!(t.take(l, k, 1, now).granted, 0);
        }
    }

    #[test]
    fn a_crowded_table_evicts_the_fullest_bucket_and_says_so() {
        let t = RateTable::new(8, None); // 16 slots
        let l = limit(1.0, 1);
        let mut evicted = 0;
        for i in 0..64u32 {
            let k = t.key(&l, &i.to_le_bytes());
            let r = t.take(&l, k, 1, 10);
            assert_eq!(r.granted, 1, "a new key starts full, evicted or not");
            evicted += usize::from(r.evicted);
        }
        assert!(evicted >= 64 - 16, "{evicted}");
    }

    #[test]
    fn shards_leasing_from_one_bucket_admit_the_rate_not_more() {
        // Four shards take turns on one key for 10 simulated seconds at 100/s, burst 20:
        // admitted must be burst + rate * 10 minus at most one batch per shard.
        let t = RateTable::new(16, None);
        let l = limit(100.0, 20);
        let k = t.key(&l, b"client");
        let shards: Vec<Leases> = (0..4).map(|_| Leases::default()).collect();
        let mut admitted = 0u64;
        let end = t.now_ns() + 2_000_000_000;
        let mut i = 0;
        while t.now_ns() < end {
            if shards[i % 4].admit(&t, &l, k, 4).is_ok() {
                admitted += 1;
            }
            i += 1;
        }
        let expect = 20.0 + 100.0 * 2.0;
        let err = (admitted as f64 - expect).abs() / expect;
        assert!(err < 0.1, "admitted {admitted}, expected about {expect}");
    }

    #[test]
    fn a_refused_key_is_answered_locally_until_its_next_token() {
        let t = RateTable::new(16, None);
        let l = limit(1.0, 1);
        let k = t.key(&l, b"c");
        let s = Leases::default();
        assert!(s.admit(&t, &l, k, 1).is_ok());
        let e = s.admit(&t, &l, k, 1).unwrap_err();
        assert_eq!(e.retry_after_s, 1);
        let tat = t.slots.iter().find(|s| s.tag.load(Ordering::Relaxed) == k);
        let before = tat.unwrap().tat.load(Ordering::Relaxed);
        for _ in 0..1000 {
            assert!(s.admit(&t, &l, k, 1).is_err());
        }
        let slot = t.slots.iter().find(|s| s.tag.load(Ordering::Relaxed) == k);
        assert_eq!(slot.unwrap().tat.load(Ordering::Relaxed), before);
        assert_eq!(slot.unwrap().spent.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn charges_from_the_fleet_empty_the_bucket() {
        let t = RateTable::new(16, None);
        let l = limit(10.0, 10);
        let k = t.key(&l, b"k");
        assert_eq!(t.take(&l, k, 1, 0).granted, 1);
        t.charge(k, 20, l.interval_ns, 0);
        // 21 tokens spent from a full 10-token bucket at 0: the next one is due when 12
        // intervals have passed (11 to repay, 1 to earn).
        assert_eq!(t.take(&l, k, 1, 1_100_000_000).granted, 0);
        assert_eq!(t.take(&l, k, 1, 1_200_000_000).granted, 1);
    }
}
