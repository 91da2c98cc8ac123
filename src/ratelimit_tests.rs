//! Tests of the rate-limit table ([`super`]): buckets, eviction, leases, fleet names.

use super::*;
use crate::config::RateKey;

fn limit(rate: f64, burst: u32) -> RateLimit {
    RateLimit {
        rate,
        burst,
        key: RateKey::Whole,
        interval_ns: (1e9 / rate) as u64,
        ipv6_prefix: 64,
        id: 7,
    }
}

const SEC: u64 = 1_000_000_000;

#[test]
fn a_new_table_starts_with_every_slot_unused() {
    let t = RateTable::new(1000, false);
    assert_eq!(t.slots.len(), 2048);
    let zero = |a: &AtomicU64| a.load(Ordering::Relaxed) == 0;
    assert!(t.slots.iter().all(|s| zero(&s.tag)
        && zero(&s.tat)
        && zero(&s.rule)
        && zero(&s.spent)
        && zero(&s.name)));
}

#[test]
fn a_full_bucket_gives_its_burst_then_one_token_per_interval() {
    let t = RateTable::new(16, false);
    let l = limit(10.0, 5); // one token per 100 ms
    let k = t.key(&l, b"a");
    let now = SEC;
    assert_eq!(t.take(&l, k, 3, now).granted, 3);
    assert_eq!(t.take(&l, k, 3, now).granted, 2);
    let empty = t.take(&l, k, 3, now);
    assert_eq!(empty.granted, 0);
    assert_eq!(empty.wait_ns, 100_000_000);
    assert_eq!(t.take(&l, k, 3, now + 99_999_999).granted, 0);
    assert_eq!(t.take(&l, k, 3, now + 100_000_000).granted, 1);
    // Long idle: back to a full bucket, never more.
    assert_eq!(t.take(&l, k, 64, now + 60 * SEC).granted, 5);
}

#[test]
fn keys_and_limits_have_separate_buckets() {
    let t = RateTable::new(16, false);
    let (a, b) = (
        limit(1.0, 1),
        RateLimit {
            id: 8,
            ..limit(1.0, 1)
        },
    );
    for (l, bytes) in [(&a, &b"x"[..]), (&a, b"y"), (&b, b"x")] {
        let k = t.key(l, bytes);
        assert_eq!(t.take(l, k, 1, 5).granted, 1);
        assert_eq!(t.take(l, k, 1, 5).granted, 0);
    }
}

#[test]
fn a_drained_key_keeps_its_slot_when_an_earlier_one_frees_up() {
    // The review's case: two keys in one probe window, the first refills, the second
    // (drained) must not be given a new full bucket in the first's slot.
    let t = RateTable::new(8, false);
    let l = limit(1.0, 10);
    let keys: Vec<Key> = (0..200u32).map(|i| t.key(&l, &i.to_le_bytes())).collect();
    let (a, b) = keys
        .iter()
        .flat_map(|a| keys.iter().map(move |b| (*a, *b)))
        .find(|(a, b)| a != b && (a.tag as usize & t.mask) == (b.tag as usize & t.mask))
        .expect("two keys with one home slot");
    assert_eq!(t.take(&l, a, 10, SEC).granted, 10);
    assert_eq!(t.take(&l, b, 10, SEC).granted, 10);
    // 20 s later a's bucket is full again (its slot is free); b asks 1 s after draining.
    assert_eq!(
        t.take(&l, b, 10, 2 * SEC).granted,
        1,
        "b keeps its own, drained bucket"
    );
}

#[test]
fn a_crowded_table_evicts_the_fullest_bucket_and_says_so() {
    let t = RateTable::new(8, false); // 16 slots
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
    // Four shards take turns on one key, 1,000 requests per simulated second for 10 s at
    // 100/s, burst 20: admitted must be burst + rate x 10, give or take one batch each.
    let t = RateTable::new(16, false);
    let l = limit(100.0, 20);
    let k = t.key(&l, b"client");
    let shards: Vec<Leases> = (0..4).map(|_| Leases::default()).collect();
    let mut admitted = 0u64;
    for i in 0..10_000u64 {
        let now = SEC + i * 1_000_000;
        if shards[i as usize % 4].admit(&t, &l, k, 4, now).is_ok() {
            admitted += 1;
        }
    }
    let expect = 20 + 100 * 10;
    assert!(
        admitted.abs_diff(expect) <= 8,
        "admitted {admitted}, expected {expect}"
    );
}

#[test]
fn unspent_leases_go_back_to_the_bucket() {
    // Two shards lease 5 each of a 20-token bucket; one stops. After its lease expires
    // the other can still take the whole bucket's worth: nothing is stranded.
    let t = RateTable::new(16, false);
    let l = limit(1.0, 20);
    let k = t.key(&l, b"k");
    let (a, b) = (Leases::default(), Leases::default());
    assert!(a.admit(&t, &l, k, 2, SEC).is_ok()); // a holds 4 more
    let mut n = 1;
    while b.admit(&t, &l, k, 2, SEC).is_ok() {
        n += 1;
    }
    assert_eq!(n, 16, "a's 4 unspent tokens are held");
    // a's lease expires; its next request gives the 4 back and takes one.
    let later = SEC + LEASE_NS;
    assert!(a.admit(&t, &l, k, 2, later).is_ok());
    let mut more = 1;
    while a.admit(&t, &l, k, 2, later).is_ok() {
        more += 1;
    }
    // 1 token refilled in the second, plus the 4 given back.
    assert_eq!(more, 5);
}

#[test]
fn the_sweep_gives_back_leases_whose_key_went_elsewhere() {
    // A leases a batch for one request; the key's burst then lands on B only. Once A's
    // lease has expired and A swept, B gets the whole bucket back, A never asked again.
    let t = RateTable::new(16, false);
    let l = limit(0.01, 100);
    let k = t.key(&l, b"k");
    let (a, b) = (Leases::default(), Leases::default());
    assert!(a.admit(&t, &l, k, 2, SEC).is_ok()); // a holds 24 more
    a.sweep(&t, SEC + 1);
    let burst = |at| {
        (0..200)
            .take_while(|_| b.admit(&t, &l, k, 2, at).is_ok())
            .count()
    };
    assert_eq!(burst(SEC + 1), 75, "a's unexpired lease is held");
    // B's refusals ask the bucket again a lease period after the first one.
    let later = SEC + 1 + LEASE_NS;
    a.sweep(&t, later);
    assert_eq!(burst(later), 24, "a's 24 unspent tokens came back");
    assert!(a.map.borrow().is_empty());
}

#[test]
fn a_refused_key_is_answered_locally_until_its_next_token() {
    let t = RateTable::new(16, false);
    let l = limit(1.0, 1);
    let k = t.key(&l, b"c");
    let s = Leases::default();
    assert!(s.admit(&t, &l, k, 1, SEC).is_ok());
    let e = s.admit(&t, &l, k, 1, SEC).unwrap_err();
    assert_eq!(e.retry_after_s, 1);
    let slot = t.find(k.tag).unwrap();
    let before = slot.tat.load(Ordering::Relaxed);
    for i in 0..1000 {
        assert!(s.admit(&t, &l, k, 1, SEC + i).is_err());
    }
    assert_eq!(slot.tat.load(Ordering::Relaxed), before);
    assert_eq!(slot.spent.load(Ordering::Relaxed), 1);
}

#[test]
fn charges_from_the_fleet_empty_the_bucket_and_never_refill_it() {
    let t = RateTable::new(16, true);
    let l = limit(10.0, 10);
    let k = t.key(&l, b"k");
    assert_ne!(k.name, 0, "a fleet key has a name");
    assert_eq!(t.take(&l, k, 1, 0).granted, 1);
    t.charge(k.tag, 20, 0);
    // 21 tokens spent from a full 10-token bucket at 0: the next one is due when 12
    // intervals have passed (11 to repay, 1 to earn).
    assert_eq!(t.take(&l, k, 1, 1_100_000_000).granted, 0);
    assert_eq!(t.take(&l, k, 1, 1_200_000_000).granted, 1);
    // A bucket that takes 100 s to refill, drained: a charge must not give any back.
    let slow = RateLimit {
        id: 9,
        ..limit(1.0, 100)
    };
    let k = t.key(&slow, b"k");
    assert_eq!(t.take(&slow, k, 100, 0).granted, 100);
    t.charge(k.tag, 1, 0);
    assert_eq!(t.take(&slow, k, 100, 0).granted, 0);
    // Charges stop a minute beyond the capacity.
    t.charge(k.tag, 1_000_000, 0);
    assert_eq!(t.take(&slow, k, 1, 161 * SEC).granted, 1);
}

#[test]
fn eviction_takes_the_fullest_bucket_also_with_a_long_capacity() {
    // One token per 1000 s, burst 1000: capacity 10^15 ns. A bucket owed more than 2^48 ns
    // (282 tokens here) overflows `(tat - now) << 16` in `slot` and looks nearly full.
    let t = RateTable::new(8, false); // 16 slots, windows of 8
    let l = limit(0.001, 1000);
    let now = SEC;
    let keys: Vec<Key> = (0..4000u32).map(|i| t.key(&l, &i.to_le_bytes())).collect();
    let home = |k: &Key| k.tag as usize & t.mask;
    let h = home(&keys[0]);
    let same: Vec<Key> = keys
        .iter()
        .copied()
        .filter(|k| home(k) == h)
        .take(9)
        .collect();
    assert_eq!(same.len(), 9);
    // The window h..h+8 filled: the first key drained by 282 tokens (28 % owed), the
    // other seven by 100 (10 % owed).
    assert_eq!(t.take(&l, same[0], 282, now).granted, 282);
    for k in &same[1..8] {
        assert_eq!(t.take(&l, *k, 100, now).granted, 100);
    }
    // A ninth key must take over one of the 10 %-owed buckets, not the 28 %-owed one.
    assert!(t.take(&l, same[8], 1, now).evicted);
    let left = t.take(&l, same[0], 1000, now).granted;
    assert_eq!(
        left, 718,
        "the most drained bucket was evicted and refilled ({left} tokens instead of 718)"
    );
}

/// `fleet_key("s3cret")`: SipHash-1-3 is fixed, so every build computes this.
const PINNED: [u8; 16] = [
    58, 96, 117, 158, 48, 149, 187, 85, 217, 244, 60, 222, 86, 72, 188, 238,
];

#[test]
fn fleet_names_are_fixed() {
    // The value every process of a fleet must compute, whatever its build.
    assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(&[b"a", b"bc"]), fnv1a(&[b"a", b"bc"]));
    assert_ne!(fnv1a(&[b"a", b"bc"]), fnv1a(&[b"ab", b"c"]));
    // Keyed by the store's password: the same in every process that has it, another
    // with another password, and pinned (builds apart must agree).
    let l = limit(1.0, 1);
    let with = |password: Option<&str>| {
        let mut t = RateTable::new(16, true);
        t.fleet_key = password.map(fleet_key);
        t.key(&l, b"victim").name
    };
    assert_eq!(with(Some("s3cret")), with(Some("s3cret")));
    assert_ne!(with(Some("s3cret")), with(Some("other")));
    assert_ne!(with(Some("s3cret")), with(None));
    assert_eq!(with(None), fnv1a(&[&l.id.to_le_bytes(), b"victim"]));
    assert_eq!(fleet_key("s3cret"), PINNED);
}
