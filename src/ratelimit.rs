//! Stage 3½ of the pipeline, *admit* by rate: the token buckets of `rate_limit` rules, exact
//! across shards without a lock or a shared write per request.
//!
//! SO_REUSEPORT spreads one client's connections over every shard, so a bucket per shard
//! (rate/N each) admits anything from rate/N to rate depending on how the connections land.
//! Instead each key has **one bucket for the process**, a slot in the [`RateTable`] all shards
//! share, and the shards **lease** tokens from it in small batches ([`Leases`]): a request
//! spends a token its shard already holds (a lookup in a shard-local map, no atomic); only
//! when the lease is spent does the shard take the next batch from the shared slot (one
//! compare-and-swap), and when the slot is empty it remembers until when (at most a second),
//! so a flood that is being refused touches the shared slot at most once per token period or
//! second, not once per request. Tokens are taken from the bucket when leased, so the process
//! never admits more than the bucket gives; a shard can strand at most one unfinished batch,
//! for at most about two seconds (its sweeper gives expired leases back), which bounds how
//! far below the rate it can fall. See docs/ARCHITECTURE.md, "Rate limits".
//!
//! The bucket is GCRA (the generic cell rate algorithm, a token bucket kept as one number):
//! the slot holds the *theoretical arrival time* `tat`, the moment the bucket would be full
//! again. `n` tokens are available at `now` when `max(tat, now) + n·T <= now + burst·T`
//! (T = 1 s / rate), and taking them moves `tat` forward by `n·T`.
//!
//! With `rate_limits.store` set, [`crate::ratelimit_store`] also charges each bucket what the
//! other processes of the fleet spent on the same key.

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::balance::key::{IpText, KeySource};
use crate::config::{RateKey, RateLimit};
use crate::ratelimit_keys::for_each_value;
use crate::shard::ShardCtx;

/// Slots probed for a key before one is taken over.
const PROBES: usize = 8;

/// A leased batch is given back after this long unused (its tokens were charged when leased:
/// spending them much later would add to the burst).
const LEASE_NS: u64 = 1_000_000_000;

/// The furthest ahead charges from the fleet push a bucket beyond its own capacity (a burst
/// from a fleet of many cannot lock a key out for longer).
const MAX_DEBT_NS: u64 = 60_000_000_000;

/// A key as the table knows it: `tag`, its hash seeded at random per process (where it
/// lives; a client cannot choose keys that collide), and `name`, the same key's name in the
/// fleet store (a fixed hash every process computes alike; 0 without a store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub tag: u64,
    pub name: u64,
}

/// One key's bucket. `tag` is the key's hash (0: never used); `tat` the theoretical arrival
/// time in nanoseconds since [`RateTable::epoch`]; `rule` its rule's nanoseconds per token
/// (low 40 bits) and burst (high 24 bits); `spent` the tokens taken since the fleet store last
/// read it, and `name` the key's name there (both only used with a store).
pub struct Slot {
    pub(crate) tag: AtomicU64,
    tat: AtomicU64,
    pub(crate) rule: AtomicU64,
    pub(crate) spent: AtomicU64,
    pub(crate) name: AtomicU64,
}

/// `rule` packing: the interval (at most 10^12 ns, rate >= 0.001/s) and the burst (at most
/// 10^6), as checked by the config.
fn pack_rule(limit: &RateLimit) -> u64 {
    (limit.interval_ns & ((1 << 40) - 1)) | (u64::from(limit.burst) << 40)
}

/// (nanoseconds per token, capacity in nanoseconds) of a packed rule.
pub(crate) fn unpack_rule(rule: u64) -> (u64, u64) {
    let interval = rule & ((1 << 40) - 1);
    (interval, (rule >> 40) * interval)
}

/// The buckets of every key of every limit, shared by all shards of the process (held by
/// [`crate::snapshot::Published`], so buckets outlive reloads). `rate_limits.max_keys` sets
/// its size (twice that many slots, so probing stays short).
pub struct RateTable {
    pub(crate) slots: Box<[Slot]>,
    mask: usize,
    epoch: Instant,
    /// Mixed into every key's tag: random per process.
    seed: RandomState,
    /// A fleet store is configured: keys get a `name`.
    fleet: bool,
    /// With a password on the store, names are keyed by it ([`RateTable::key`]).
    fleet_key: Option<[u8; 16]>,
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

/// FNV-1a, 64 bits: a hash whose value is fixed forever (std's `DefaultHasher` may change
/// between Rust releases), so processes of a fleet built apart name a key alike.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The key of fleet names, from the store's password, which every process of the fleet
/// shares: without it, names are FNV-1a, whose second preimages anyone can compute, so a
/// client choosing its key's value (a `header:` or `query:` key) could name another's and
/// have its spending charged to that key on the other processes.
fn fleet_key(password: &str) -> [u8; 16] {
    use std::hash::Hasher;
    let half = |salt: u64| {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(salt, !salt);
        h.write(password.as_bytes());
        h.finish().to_le_bytes()
    };
    let (a, b) = (half(0x6564_6765_7368_6172), half(0x666c_6565_746b_6579));
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a);
    k[8..].copy_from_slice(&b);
    k
}

/// `n` unused slots (n > 0), zeroed by the allocator.
fn zeroed_slots(n: usize) -> Box<[Slot]> {
    let layout = std::alloc::Layout::array::<Slot>(n).expect("rate table size");
    // SAFETY: `layout` has a non-zero size (n > 0, a `Slot` is 40 bytes). A `Slot` is five
    // `AtomicU64`s, for which all-zero bytes are a valid value (0), the state every slot
    // starts in; the block has `Slot`'s layout for `n` of them, so the global allocator frees
    // it with the same layout when the box drops. Exercised by every test below.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<Slot>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n))
    }
}

impl RateTable {
    /// A table for `max_keys` keys; `fleet`: a fleet store is configured (keys get names).
    pub fn new(max_keys: usize, fleet: bool) -> RateTable {
        let n = (max_keys.max(8) * 2).next_power_of_two();
        // Zeroed by the allocator, not slot by slot: a fresh block from the OS is already
        // zero, so the slots no key has used cost no resident memory (the default table,
        // 131,072 slots, is 5.2 MB, made whether or not any rate limit is configured, since a
        // reload may add one).
        let slots = zeroed_slots(n);
        RateTable {
            slots,
            mask: n - 1,
            epoch: Instant::now(),
            seed: RandomState::new(),
            fleet,
            fleet_key: None,
            store_ok: AtomicU64::new(0),
            store_failed: AtomicU64::new(0),
        }
    }

    /// The table for `config`'s `[rate_limits]`.
    pub fn for_config(cfg: &crate::config::RateLimits) -> RateTable {
        let mut t = RateTable::new(cfg.max_keys, cfg.store.is_some());
        let password = cfg.store.as_ref().and_then(|s| s.password.as_deref());
        t.fleet_key = password.map(fleet_key);
        t
    }

    /// Now, on the table's clock (nanoseconds since it was made).
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// How a key of `limit` is known (its tag is never 0).
    pub fn key(&self, limit: &RateLimit, bytes: &[u8]) -> Key {
        Key {
            tag: self.seed.hash_one((limit.id, bytes)) | 1,
            name: match (self.fleet, &self.fleet_key) {
                (false, _) => 0,
                (true, None) => fnv1a(&[&limit.id.to_le_bytes(), bytes]),
                (true, Some(k)) => {
                    use std::hash::Hasher;
                    let mut h = siphasher::sip::SipHasher13::new_with_key(k);
                    h.write(&limit.id.to_le_bytes());
                    h.write(bytes);
                    h.finish()
                }
            },
        }
    }

    /// The slot of `key`: its own if any of the probed slots has it; else an unused one or
    /// one whose bucket is full (a full bucket is the same as a new one); else the probed
    /// bucket nearest to full for its own rule (evicted: that key starts again from full).
    fn slot(&self, key: Key, limit: &RateLimit, now: u64) -> (&Slot, bool) {
        let start = key.tag as usize & self.mask;
        let probe = |i: usize| &self.slots[(start + i) & self.mask];
        loop {
            // Its own first, in the whole window: a free slot earlier in the window must not
            // give a drained key a new, full bucket.
            let mut free: Option<(&Slot, u64)> = None;
            let mut fullest: Option<(&Slot, u64, u64)> = None;
            for i in 0..PROBES {
                let s = probe(i);
                let tag = s.tag.load(Ordering::Acquire);
                if tag == key.tag {
                    return (s, false);
                }
                let tat = s.tat.load(Ordering::Relaxed);
                if tag == 0 || tat <= now {
                    free = free.or(Some((s, tag)));
                } else {
                    // Share of the capacity still to refill, in parts per 2^16.
                    let (_, cap) = unpack_rule(s.rule.load(Ordering::Relaxed));
                    let owed = ((u128::from(tat - now) << 16) / u128::from(cap.max(1))) as u64;
                    if fullest.is_none_or(|(_, _, o)| owed < o) {
                        fullest = Some((s, tag, owed));
                    }
                }
            }
            let (s, old, evicted) = match (free, fullest) {
                (Some((s, old)), _) => (s, old, false),
                (None, Some((s, old, _))) => (s, old, true),
                // Not possible (each probed slot is free or occupied): the first one then.
                (None, None) => (probe(0), probe(0).tag.load(Ordering::Acquire), true),
            };
            // Another shard may take the same slot at the same moment: the loser looks again.
            if s.tag
                .compare_exchange(old, key.tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                s.rule.store(pack_rule(limit), Ordering::Relaxed);
                s.name.store(key.name, Ordering::Relaxed);
                s.spent.store(0, Ordering::Relaxed);
                if evicted {
                    s.tat.store(now, Ordering::Relaxed);
                }
                return (s, evicted);
            }
        }
    }

    /// Takes up to `want` tokens of `key`'s bucket (`limit`'s rate and burst) at `now`.
    pub fn take(&self, limit: &RateLimit, key: Key, want: u32, now: u64) -> Taken {
        let (slot, evicted) = self.slot(key, limit, now);
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

    /// The slot `tag` lives in, if it still does.
    fn find(&self, tag: u64) -> Option<&Slot> {
        let start = tag as usize & self.mask;
        (0..PROBES)
            .map(|i| &self.slots[(start + i) & self.mask])
            .find(|s| s.tag.load(Ordering::Acquire) == tag)
    }

    /// Gives back `n` leased tokens a shard did not spend (they were charged when leased).
    fn give_back(&self, key: Key, n: u32, interval_ns: u64) {
        if let Some(s) = self.find(key.tag) {
            let back = u64::from(n) * interval_ns;
            let _ = s
                .tat
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                    Some(tat.saturating_sub(back))
                });
            let _ = s
                .spent
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(u64::from(n)))
                });
        }
    }

    /// Charges `n` tokens that other processes spent on the key in slot `tag` (the fleet
    /// store): the bucket may go below empty, and then admits nothing until it has refilled,
    /// at most [`MAX_DEBT_NS`] beyond its capacity. Never gives tokens back.
    pub fn charge(&self, tag: u64, n: u64, now: u64) {
        if let Some(s) = self.find(tag) {
            let (interval, capacity) = unpack_rule(s.rule.load(Ordering::Relaxed));
            let add = n.saturating_mul(interval);
            let limit = now.saturating_add(capacity).saturating_add(MAX_DEBT_NS);
            let _ = s
                .tat
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                    Some(tat.max(tat.max(now).saturating_add(add).min(limit)))
                });
        }
    }
}

/// A shard's leased tokens per key.
#[derive(Clone, Copy)]
struct Lease {
    key: Key,
    /// Tokens left.
    left: u32,
    /// Table time after which the tokens left are given back; for a refusal (`left` 0), when
    /// the bucket's next token was due (what `Retry-After` says).
    until: u64,
    /// Table time before which the bucket is taken as empty without asking it (0: not known
    /// empty): the next token's time, at most a lease period ahead, so tokens another shard
    /// gives back meanwhile are found within a second, not when this shard's wait ends.
    empty_until: u64,
    /// The rule's nanoseconds per token (to give tokens back).
    interval: u64,
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
    /// Admits one request of `key` under `limit` at `now` (table time), or says when to
    /// retry. `shards`: how many shards share the table (the batch is sized so that all of
    /// them together hold at most half the burst). `Ok(true)`: admitted, and the key evicted
    /// another from the table.
    pub fn admit(
        &self,
        table: &RateTable,
        limit: &RateLimit,
        key: Key,
        shards: usize,
        now: u64,
    ) -> Result<bool, Limited> {
        let mut map = self.map.borrow_mut();
        if let Some(l) = map.get_mut(&key.tag) {
            if l.left > 0 && now < l.until {
                l.left -= 1;
                return Ok(false);
            }
            if now < l.empty_until {
                return Err(Limited {
                    retry_after_s: secs_up(l.until.saturating_sub(now)),
                    evicted: false,
                });
            }
            if l.left > 0 {
                // Expired unspent: back to the bucket, so no shard strands tokens.
                table.give_back(l.key, l.left, l.interval);
                l.left = 0;
            }
        }
        let batch = (limit.burst / (2 * shards.max(1) as u32)).clamp(1, 64);
        let taken = table.take(limit, key, batch, now);
        if map.len() >= MAX_LEASES && !map.contains_key(&key.tag) {
            map.retain(|_, l| {
                let keep = (l.left > 0 && now < l.until) || now < l.empty_until;
                if !keep && l.left > 0 {
                    table.give_back(l.key, l.left, l.interval);
                }
                keep
            });
            // Still mostly full: start over (giving everything back), rather than scan the
            // whole map again for the next new key.
            if map.len() >= MAX_LEASES * 3 / 4 {
                for l in map.values().filter(|l| l.left > 0) {
                    table.give_back(l.key, l.left, l.interval);
                }
                map.clear();
            }
        }
        let lease = |left, until, empty_until| Lease {
            key,
            left,
            until,
            empty_until,
            interval: limit.interval_ns,
        };
        if taken.granted == 0 {
            let recheck = now + taken.wait_ns.min(LEASE_NS);
            map.insert(key.tag, lease(0, now + taken.wait_ns, recheck));
            return Err(Limited {
                retry_after_s: secs_up(taken.wait_ns),
                evicted: taken.evicted,
            });
        }
        map.insert(key.tag, lease(taken.granted - 1, now + LEASE_NS, 0));
        Ok(taken.evicted)
    }

    /// Gives back every lease that expired unspent and forgets the ended ones (the shard's
    /// sweeper, every second): a batch a shard leased for a key whose requests went on on
    /// other shards went back only when that key next came to this shard, so a burst landing
    /// elsewhere after a quiet spell found a quarter of it missing (76 of 100 with 2 shards,
    /// a later 429 saying 98 s; found by an adversarial probe).
    pub fn sweep(&self, table: &RateTable, now: u64) {
        self.map.borrow_mut().retain(|_, l| {
            if now < l.until || now < l.empty_until {
                return true;
            }
            if l.left > 0 {
                table.give_back(l.key, l.left, l.interval);
            }
            false
        });
    }
}

/// Whether `limit` admits a request (`src`: its fields): `Ok` also when the request lacks the
/// key the limit counts by; `Err` says how many seconds until it would. A request carrying
/// its key more than once counts against each value ([`crate::ratelimit_keys`]).
pub fn check<'a, H>(ctx: &ShardCtx, limit: &RateLimit, src: KeySource<'a, H>) -> Result<(), u64>
where
    H: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut ip = IpText::default();
    match &limit.key {
        RateKey::Whole => admit_one(ctx, limit, b""),
        RateKey::Request(k) => {
            let src = KeySource {
                client_ip: crate::admission::client_prefix(src.client_ip, limit.ipv6_prefix),
                ..src
            };
            let mut wait = None;
            let counted = for_each_value(k, src, &mut ip, |v| {
                if let Err(s) = admit_one(ctx, limit, v) {
                    wait = wait.max(Some(s));
                }
            });
            // More keys than any client has: refused as over its limits (a second's wait).
            if counted.is_err() {
                return Err(1);
            }
            wait.map_or(Ok(()), Err)
        }
    }
}

/// One bucket's answer for the request: its key's bytes are `bytes`.
fn admit_one(ctx: &ShardCtx, limit: &RateLimit, bytes: &[u8]) -> Result<(), u64> {
    let key = ctx.rates.key(limit, bytes);
    let shards = ctx.shared.accepting.len();
    let r = ctx
        .leases
        .admit(&ctx.rates, limit, key, shards, ctx.rates.now_ns());
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
#[path = "ratelimit_tests.rs"]
mod tests;
