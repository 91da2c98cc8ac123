//! Stage "balance", tests of every algorithm: distribution over 100,000 requests or keys
//! against the weights (tolerances stated at each test), disruption when a backend leaves and
//! returns, independence from the shard, bounded loads under skew, backups, sticky cookies,
//! and odd inputs that must not panic.

use std::collections::VecDeque;
use std::time::Duration;

use super::*;

/// A shard's balancer over `ms`, as a shard builds it ([`ShardBalancer::with_weights`]).
pub(super) fn balancer(s: &Spec, ms: &[Member], shard: usize) -> ShardBalancer {
    ShardBalancer::with_weights(s, ms.iter().map(|m| (m.weight, m.backup)), shard)
}

const N: usize = 100_000;

fn members(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Member {
            name: format!("10.0.{}.{}:8080", i / 250, i % 250 + 1),
            weight,
            backup: false,
        })
        .collect()
}

pub(super) fn spec(algorithm: Algorithm) -> Spec {
    Spec::new(algorithm)
}

pub(super) fn key(i: usize) -> u32 {
    key_hash(format!("session-{i}").as_bytes())
}

/// Counts of `N` picks, each request finished at once (an idle shard), keyed by `key(i)`.
fn idle_counts(s: &Spec, weights: &[u32], usable: impl Fn(usize) -> bool) -> Vec<usize> {
    let ms = members(weights);
    let table = Table::build(s, &ms);
    let mut b = balancer(s, &ms, 0);
    let mut counts = vec![0; ms.len()];
    for i in 0..N {
        let m = b.pick(&table, Some(key(i)), &usable).expect("a pick");
        b.started(m);
        b.finished(m, Duration::from_millis(1));
        counts[m] += 1;
    }
    counts
}

/// Expected count of each member: `N` × weight share among the usable ones.
fn expected(weights: &[u32], usable: impl Fn(usize) -> bool) -> Vec<f64> {
    let total: u32 = (0..weights.len())
        .filter(|&i| usable(i))
        .map(|i| weights[i])
        .sum();
    (0..weights.len())
        .map(|i| {
            if usable(i) {
                N as f64 * f64::from(weights[i]) / f64::from(total)
            } else {
                0.0
            }
        })
        .collect()
}

fn max_rel_dev(counts: &[usize], exp: &[f64]) -> f64 {
    counts
        .iter()
        .zip(exp)
        .map(|(&c, &e)| {
            if e == 0.0 {
                if c == 0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                (c as f64 / e - 1.0).abs()
            }
        })
        .fold(0.0, f64::max)
}

fn chi_square(counts: &[usize], exp: &[f64]) -> f64 {
    counts
        .iter()
        .zip(exp)
        .filter(|(_, &e)| e > 0.0)
        .map(|(&c, &e)| (c as f64 - e).powi(2) / e)
        .sum()
}

const W10: [u32; 10] = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5];

#[test]
fn round_robin_is_exact_and_ignores_weights() {
    // Tolerance: none; 100,000 picks over 10 members is exactly 10,000 each.
    let counts = idle_counts(&spec(Algorithm::RoundRobin), &W10, |_| true);
    assert!(counts.iter().all(|&c| c == N / 10), "{counts:?}");
    // One member unusable: the 9 others share exactly (100,000 = 9 × 11,111 + 1).
    let counts = idle_counts(&spec(Algorithm::RoundRobin), &W10, |i| i != 3);
    assert!(
        counts.iter().enumerate().all(|(i, &c)| if i == 3 {
            c == 0
        } else {
            (11_111..=11_112).contains(&c)
        }),
        "{counts:?}"
    );
}

#[test]
fn weighted_is_exact_per_period() {
    // Smooth weighted round robin picks each member exactly `weight` times per period of
    // sum(weights) picks. Tolerance: ±1 period, i.e. |count − expected| ≤ weight.
    let w100: Vec<u32> = (0..100).map(|i| 1 + (i % 5) as u32).collect();
    for usable in [&(|_| true) as &dyn Fn(usize) -> bool, &|i| i % 10 != 0] {
        for ws in [&W10[..], &w100] {
            let counts = idle_counts(&spec(Algorithm::Weighted), ws, usable);
            let exp = expected(ws, usable);
            for (i, (&c, &e)) in counts.iter().zip(&exp).enumerate() {
                assert!(
                    (c as f64 - e).abs() <= f64::from(ws[i]),
                    "member {i}: {c} vs {e}"
                );
            }
        }
    }
}

#[test]
fn weighted_without_stored_period_is_nginx_scan() {
    // Weights whose period exceeds the stored schedule: nginx's O(n) scan, exact per period.
    let ws = [10_000, 9_999, 9_998, 9_997, 9_996, 9_995, 9_994];
    let counts = idle_counts(&spec(Algorithm::Weighted), &ws, |_| true);
    let exp = expected(&ws, |_| true);
    // Tolerance: 100,000 picks is 1.43 periods of 69,979: within 1 weight of the share.
    assert!(
        max_rel_dev(&counts, &exp) < 0.01 + 10_000.0 / 14_000.0,
        "{counts:?}"
    );
    assert!(counts.iter().all(|&c| c > 0));
    // nginx's sequence starts 0,1,2,... for nearly equal weights.
    let ms = members(&ws);
    let s = spec(Algorithm::Weighted);
    let table = Table::build(&s, &ms);
    let mut b = balancer(&s, &ms, 0);
    let first: Vec<usize> = (0..7)
        .map(|_| b.pick(&table, None, |_| true).unwrap())
        .collect();
    assert_eq!(first, vec![0, 1, 2, 3, 4, 5, 6]);
}

#[test]
fn picks_aside_leave_the_rotation_alone() {
    // A request's second pick (a retry, a failover, slow start's pick without the ramping
    // member) is made aside: the rotation of first picks is the same with and without it, for
    // the cursor algorithms and nginx's scan (weights past the stored period; also what a hash
    // algorithm does for a request without a key).
    let scan = [10_000, 9_999, 9_998, 9_997, 9_996, 9_995, 9_994];
    for (alg, ws) in [
        (Algorithm::RoundRobin, &W10[..]),
        (Algorithm::Weighted, &W10[..]),
        (Algorithm::Weighted, &scan[..]),
        (Algorithm::ConsistentHash, &scan[..]),
        (Algorithm::LeastConn, &W10[..]),
    ] {
        let ms = members(ws);
        let s = spec(alg);
        let table = Table::build(&s, &ms);
        let (mut plain, mut with_aside) = (balancer(&s, &ms, 0), balancer(&s, &ms, 0));
        for i in 0..1_000 {
            let a = plain.pick(&table, None, |_| true).unwrap();
            let b = with_aside.pick(&table, None, |_| true).unwrap();
            assert_eq!(a, b, "{alg:?} {ws:?}: pick {i}");
            let again = with_aside
                .aside(|bal| bal.pick(&table, None, |m| m != b))
                .unwrap();
            assert_ne!(again, b, "an aside pick honours its filter");
        }
    }
    // Aside picks spread over the others: member 0 of three fails every try, and its
    // retries go to 1 and 2 alike (from the cursor, all went to 1). Tolerance: 3,000 draws
    // of a fair coin, within 10 % of 1,500.
    for alg in [Algorithm::RoundRobin, Algorithm::Weighted] {
        let ms = members(&[1, 1, 1]);
        let s = spec(alg);
        let table = Table::build(&s, &ms);
        let mut b = balancer(&s, &ms, 0);
        let mut retries = [0usize; 3];
        for _ in 0..9_000 {
            if b.pick(&table, None, |_| true) == Some(0) {
                let m = b.aside(|bal| bal.pick(&table, None, |m| m != 0)).unwrap();
                retries[m] += 1;
            }
        }
        assert_eq!(retries[0], 0);
        assert!(
            (1_350..=1_650).contains(&retries[1]),
            "{alg:?}: {retries:?}"
        );
        assert_eq!(retries[1] + retries[2], 3_000, "{alg:?}");
    }
}

#[test]
fn random_follows_weights() {
    // Chi-square against the weight shares; critical values at p = 0.001: 27.88 (9 degrees of
    // freedom, all usable) and 26.12 (8, one unusable). The RNG is seeded, so this is stable.
    let counts = idle_counts(&spec(Algorithm::Random), &W10, |_| true);
    let chi = chi_square(&counts, &expected(&W10, |_| true));
    assert!(chi < 27.88, "chi-square {chi}: {counts:?}");
    let counts = idle_counts(&spec(Algorithm::Random), &W10, |i| i != 4);
    let chi = chi_square(&counts, &expected(&W10, |i| i != 4));
    assert!(
        chi < 26.12 && counts[4] == 0,
        "chi-square {chi}: {counts:?}"
    );
}

#[test]
fn least_conn_idle_follows_weights_exactly() {
    // Idle (every request finished before the next): ties broken by the smooth weighted
    // order, so the shares are exact per period. Tolerance: |count − expected| ≤ weight.
    let counts = idle_counts(&spec(Algorithm::LeastConn), &W10, |_| true);
    let exp = expected(&W10, |_| true);
    for (i, (&c, &e)) in counts.iter().zip(&exp).enumerate() {
        assert!(
            (c as f64 - e).abs() <= f64::from(W10[i]),
            "member {i}: {c} vs {e}"
        );
    }
}

/// `N` requests with at most `window` in flight (the oldest finishes first); `latency(m)` is
/// what member `m` reports. Returns the counts and the largest in-flight spread seen.
fn loaded_counts(
    s: &Spec,
    weights: &[u32],
    window: usize,
    latency: impl Fn(usize) -> Duration,
) -> Vec<usize> {
    let ms = members(weights);
    let table = Table::build(s, &ms);
    let mut b = balancer(s, &ms, 0);
    let mut counts = vec![0; ms.len()];
    let mut open = VecDeque::new();
    for i in 0..N {
        let m = b.pick(&table, Some(key(i)), |_| true).expect("a pick");
        b.started(m);
        counts[m] += 1;
        open.push_back(m);
        if open.len() > window {
            let done = open.pop_front().unwrap_or(0);
            b.finished(done, latency(done));
        }
    }
    counts
}

#[test]
fn least_conn_under_load_keeps_in_flight_per_weight_level() {
    // With requests held, least-conn always raises the lowest in-flight/weight ratio, so the
    // spread between members' ratios never exceeds 1.
    let ms = members(&W10);
    let s = spec(Algorithm::LeastConn);
    let table = Table::build(&s, &ms);
    let mut b = balancer(&s, &ms, 3);
    for _ in 0..1_000 {
        let m = b.pick(&table, None, |_| true).unwrap();
        b.started(m);
        let ratios: Vec<f64> = (0..10)
            .map(|i| f64::from(b.in_flight(i)) / f64::from(W10[i]))
            .collect();
        let spread = ratios.iter().fold(0.0, |a: f64, &r| a.max(r))
            - ratios.iter().fold(f64::MAX, |a: f64, &r| a.min(r));
        assert!(spread <= 1.0, "{ratios:?}");
    }
    // 100,000 requests, 1,000 in flight, oldest finishing first. In-flight counts are whole
    // numbers, so a weight-1 member (33.3 in flight on average here) may hold one request
    // more than its share: tolerance 1/33.3 (3 %) + 1 %.
    let counts = loaded_counts(&s, &W10, 1_000, |_| Duration::from_millis(1));
    let dev = max_rel_dev(&counts, &expected(&W10, |_| true));
    assert!(dev < 0.04, "max deviation {dev}: {counts:?}");
}

#[test]
fn p2c_idle_is_weighted_random() {
    // Idle, every cost ties and the first draw wins: a weighted random pick. Chi-square,
    // 9 degrees of freedom, p = 0.001 critical value 27.88.
    let counts = idle_counts(&spec(Algorithm::P2c), &W10, |_| true);
    let chi = chi_square(&counts, &expected(&W10, |_| true));
    assert!(chi < 27.88, "chi-square {chi}: {counts:?}");
}

#[test]
fn p2c_under_load_follows_weights_and_avoids_slow_backends() {
    // Equal latencies, 100 in flight, oldest finishing first: the draws follow the weights
    // and the cost evens out in-flight per unit of weight. Tolerance: max deviation 5 %.
    let s = spec(Algorithm::P2c);
    let counts = loaded_counts(&s, &W10, 100, |_| Duration::from_millis(1));
    let dev = max_rel_dev(&counts, &expected(&W10, |_| true));
    assert!(dev < 0.05, "max deviation {dev}: {counts:?}");
    // One of 10 equal members answers in 50 ms, the others in 1 ms: it gets under a third
    // of its 10 % share.
    let counts = loaded_counts(&s, &[1; 10], 100, |m| {
        Duration::from_millis(if m == 0 { 50 } else { 1 })
    });
    assert!(
        counts[0] < N / 30,
        "slow member got {}: {counts:?}",
        counts[0]
    );
}

#[test]
fn consistent_hash_spreads_keys_by_weight() {
    // Ketama with 160 points per unit of weight is not exact: each member's share of the
    // ring varies by roughly ±1/sqrt(160 × weight). Tolerance: max deviation 25 %.
    for ws in [&[1u32; 10][..], &W10] {
        let counts = idle_counts(&spec(Algorithm::ConsistentHash), ws, |_| true);
        let dev = max_rel_dev(&counts, &expected(ws, |_| true));
        assert!(dev < 0.25, "max deviation {dev}: {counts:?}");
    }
}

#[test]
fn maglev_spreads_keys_by_weight() {
    // Maglev slot shares differ from the weights by less than 0.1 %; the keys add sampling
    // noise (~1 % at 10,000 keys a member). Tolerance: max deviation 5 %.
    for ws in [&[1u32; 10][..], &W10] {
        let counts = idle_counts(&spec(Algorithm::Maglev), ws, |_| true);
        let dev = max_rel_dev(&counts, &expected(ws, |_| true));
        assert!(dev < 0.05, "max deviation {dev}: {counts:?}");
    }
}

/// Picks of `N` keys over `table` from a fresh shard-0 balancer.
fn mapping(s: &Spec, ms: &[Member], table: &Table, usable: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut b = balancer(s, ms, 0);
    (0..N)
        .map(|i| b.pick(table, Some(key(i)), &usable).expect("a pick"))
        .collect()
}

#[test]
fn removing_one_of_n_moves_about_one_nth_and_adding_it_back_restores() {
    // Bound: the removed member's own share, which the ring's spread can make ~1.25/N, plus 1 %
    // of all keys for the Maglev slots that change hands between remaining members:
    // moved ≤ 1.3/N + 1 %.
    for algorithm in [Algorithm::ConsistentHash, Algorithm::Maglev] {
        for n in [5usize, 10, 50] {
            let s = spec(algorithm);
            let ms = members(&vec![1; n]);
            let gone = n / 2;
            let before = mapping(&s, &ms, &Table::build(&s, &ms), |_| true);
            let after = mapping(&s, &ms, &Table::build_with(&s, &ms, |i| i != gone), |_| {
                true
            });
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let bound = N as f64 * (1.3 / n as f64 + 0.01);
            assert!(
                (moved as f64) <= bound,
                "{algorithm:?} n={n}: moved {moved}, bound {bound}"
            );
            assert!(after.iter().all(|&m| m != gone));
            // Every key of the removed member moved; for ketama, only those.
            let own = before.iter().filter(|&&m| m == gone).count();
            assert!(moved >= own);
            if algorithm == Algorithm::ConsistentHash {
                assert_eq!(moved, own, "ketama moved keys of members still present");
            }
            let back = mapping(&s, &ms, &Table::build(&s, &ms), |_| true);
            assert_eq!(before, back, "{algorithm:?} n={n}: adding the member back");
        }
    }
}

#[test]
fn same_key_same_backend_on_every_shard() {
    for algorithm in [Algorithm::ConsistentHash, Algorithm::Maglev] {
        for bounded in [None, Some(1.25)] {
            let s = Spec {
                bounded_load: bounded,
                ..spec(algorithm)
            };
            let ms = members(&W10);
            let table = Table::build(&s, &ms);
            let mut shards: Vec<ShardBalancer> = (0..8).map(|id| balancer(&s, &ms, id)).collect();
            // Different histories on each shard must not matter (idle, so bounds don't bind).
            for (id, b) in shards.iter_mut().enumerate() {
                for _ in 0..id * 37 {
                    let m = b.pick(&table, None, |_| true).unwrap();
                    b.started(m);
                    b.finished(m, Duration::from_millis(id as u64));
                }
            }
            for i in 0..10_000 {
                let k = Some(key(i));
                let want = shards[0].pick(&table, k, |_| true);
                for b in &mut shards[1..] {
                    assert_eq!(b.pick(&table, k, |_| true), want, "{algorithm:?} key {i}");
                }
            }
        }
    }
}

#[test]
fn bounded_load_keeps_every_backend_under_the_bound_with_skewed_keys() {
    // Half the requests carry one hot key, the rest 1,000 keys; 200 requests in flight, the
    // oldest finishing first. After each pick the picked member must hold at most
    // ceil(c × in-flight × weight / total weight) requests. Without the bound the hot key's
    // member goes far above it (checked, so that the test can fail).
    let hot = key_hash(b"hot");
    for algorithm in [Algorithm::ConsistentHash, Algorithm::Maglev] {
        for ws in [&[1u32; 10][..], &W10] {
            let total: u32 = ws.iter().sum();
            for bounded in [Some(1.25), None] {
                let s = Spec {
                    bounded_load: bounded,
                    ..spec(algorithm)
                };
                let ms = members(ws);
                let table = Table::build(&s, &ms);
                let mut b = balancer(&s, &ms, 0);
                let mut open = VecDeque::new();
                let mut worst = 0.0f64;
                for i in 0..N {
                    let k = if i % 2 == 0 { hot } else { key(i % 1000) };
                    let m = b.pick(&table, Some(k), |_| true).unwrap();
                    b.started(m);
                    open.push_back(m);
                    let in_flight = open.len() as f64;
                    let cap = (1.25 * in_flight * f64::from(ws[m]) / f64::from(total)).ceil();
                    worst = worst.max(f64::from(b.in_flight(m)) / cap);
                    if open.len() >= 200 {
                        let done = open.pop_front().unwrap_or(0);
                        b.finished(done, Duration::from_millis(1));
                    }
                }
                if bounded.is_some() {
                    assert!(
                        worst <= 1.0,
                        "{algorithm:?} {ws:?}: load/bound reached {worst}"
                    );
                } else {
                    assert!(
                        worst > 2.0,
                        "{algorithm:?} {ws:?}: unbounded peak only {worst}"
                    );
                }
            }
        }
    }
}

#[test]
fn backups_only_when_no_primary_is_usable() {
    let mut ms = members(&[1, 2, 1, 1]);
    ms[2].backup = true;
    ms[3].backup = true;
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Weighted,
        Algorithm::Random,
        Algorithm::LeastConn,
        Algorithm::P2c,
        Algorithm::ConsistentHash,
        Algorithm::Maglev,
    ] {
        let s = spec(algorithm);
        let table = Table::build(&s, &ms);
        let mut b = balancer(&s, &ms, 1);
        for i in 0..1_000 {
            let k = (i % 2 == 0).then(|| key(i));
            let p = b.pick(&table, k, |_| true).unwrap();
            assert!(p < 2, "{algorithm:?}: backup {p} picked with primaries up");
            let p = b.pick(&table, k, |m| m != 1).unwrap();
            assert_eq!(p, 0, "{algorithm:?}");
            let p = b.pick(&table, k, |m| m >= 2).unwrap();
            assert!(p >= 2, "{algorithm:?}");
            assert_eq!(b.pick(&table, k, |m| m == 3), Some(3), "{algorithm:?}");
            assert_eq!(b.pick(&table, k, |_| false), None, "{algorithm:?}");
        }
    }
}

#[test]
fn a_preferred_pick_keeps_within_the_tier_a_plain_pick_uses() {
    // A breaker queue's pass-over of full backends: members with room first, but a full
    // primary is still usable, so the backups stay out while one is.
    let mut ms = members(&[1, 2, 1, 1]);
    ms[2].backup = true;
    ms[3].backup = true;
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Weighted,
        Algorithm::Random,
        Algorithm::LeastConn,
        Algorithm::P2c,
    ] {
        let s = spec(algorithm);
        let table = Table::build(&s, &ms);
        let mut b = balancer(&s, &ms, 1);
        for _ in 0..1_000 {
            let all = |_: usize| true;
            // Member 0 full: 1 has room.
            assert_eq!(
                b.pick_preferring(&table, None, all, |m| m != 0),
                Some(1),
                "{algorithm:?}"
            );
            // Both primaries full: one of them, not a backup with room.
            let p = b.pick_preferring(&table, None, all, |m| m >= 2).unwrap();
            assert!(
                p < 2,
                "{algorithm:?}: backup {p} picked with a full primary usable"
            );
            // No primary usable: the backups, those with room first.
            let p = b.pick_preferring(&table, None, |m| m >= 2, |m| m == 3);
            assert_eq!(p, Some(3), "{algorithm:?}");
            assert_eq!(
                b.pick_preferring(&table, None, |_| false, all),
                None,
                "{algorithm:?}"
            );
        }
    }
}

#[test]
fn sticky_cookie_round_trips() {
    let ms = members(&[1; 20]);
    let s = Spec {
        sticky: Some(StickySpec {
            cookie: "srv".into(),
            ttl: Some(Duration::from_secs(3600)),
            secret: None,
            secure: None,
            same_site: None,
        }),
        ..spec(Algorithm::RoundRobin)
    };
    let table = Table::build(&s, &ms);
    for i in 0..ms.len() {
        let v = table.sticky_value(i);
        assert_eq!(v.len(), 16);
        assert!(!v.contains("10.0"), "opaque");
        assert_eq!(table.sticky_lookup(v.as_bytes()), Some(i));
    }
    // Stable across builds, restarts and shards: a fixed function of the name.
    assert_eq!(
        table.sticky_value(0),
        Table::build(&s, &ms[..1]).sticky_value(0)
    );
    assert_eq!(table.sticky_value(0), "b60e50a53dc2a406");
    assert_eq!(table.sticky_value(99), "");
    // With a secret: other values (the public hash of a guessable name no longer matches
    // them), still stable and still found; another secret, other values again.
    let keyed = |k: &str| {
        let spec = Spec {
            sticky: Some(StickySpec {
                secret: Some(k.into()),
                ..s.sticky.clone().unwrap()
            }),
            ..s.clone()
        };
        Table::build(&spec, &ms)
    };
    let (a, b) = (keyed("0123456789abcdef-a"), keyed("0123456789abcdef-b"));
    for i in 0..ms.len() {
        let v = a.sticky_value(i);
        assert_ne!(v, table.sticky_value(i));
        assert_ne!(v, b.sticky_value(i));
        assert_eq!(v, keyed("0123456789abcdef-a").sticky_value(i));
        assert_eq!(a.sticky_lookup(v.as_bytes()), Some(i));
        assert_eq!(b.sticky_lookup(v.as_bytes()), None);
    }
    assert_eq!(table.sticky_lookup(b"garbage"), None);
    assert_eq!(table.sticky_lookup(b"0000000000000000"), None);

    let mut b = balancer(&s, &ms, 0);
    let first = b.pick_sticky(&table, None, None, |_| true).unwrap();
    assert!(first.set_cookie);
    let mut header = Vec::new();
    table.write_set_cookie(first.index, false, &mut header);
    let text = String::from_utf8(header).unwrap();
    let value = text
        .strip_prefix("srv=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert!(text.ends_with("; Max-Age=3600; Path=/; HttpOnly"));
    // To a TLS client it is Secure, unless `secure = false` says otherwise.
    let mut tls = Vec::new();
    table.write_set_cookie(first.index, true, &mut tls);
    assert!(tls.ends_with(b"; HttpOnly; Secure"));
    for shard in 0..4 {
        let mut b = balancer(&s, &ms, shard);
        for _ in 0..10 {
            let p = b.pick_sticky(&table, Some(value.as_bytes()), None, |_| true);
            assert_eq!(
                p,
                Some(StickyPick {
                    index: first.index,
                    set_cookie: false
                })
            );
        }
        // Not usable: another member, and a new cookie.
        let p = b
            .pick_sticky(&table, Some(value.as_bytes()), None, |m| m != first.index)
            .unwrap();
        assert!(p.index != first.index && p.set_cookie);
    }
    // A member left out of the table (down) is not honoured.
    let without = Table::build_with(&s, &ms, |m| m != first.index);
    let p = b
        .pick_sticky(&without, Some(value.as_bytes()), None, |_| true)
        .unwrap();
    assert!(p.index != first.index && p.set_cookie);
}

#[test]
fn sticky_backup_only_while_primaries_are_down() {
    let mut ms = members(&[1, 1, 1]);
    ms[2].backup = true;
    let s = spec(Algorithm::Weighted);
    let table = Table::build(&s, &ms);
    let mut b = balancer(&s, &ms, 0);
    let v = table.sticky_value(2).as_bytes().to_vec();
    let p = b.pick_sticky(&table, Some(&v), None, |_| true).unwrap();
    assert!(
        p.index < 2 && !p.set_cookie,
        "no sticky settings: no cookie"
    );
    let p = b.pick_sticky(&table, Some(&v), None, |m| m == 2).unwrap();
    assert_eq!(p.index, 2);
}

#[test]
fn odd_inputs_do_not_panic() {
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Weighted,
        Algorithm::Random,
        Algorithm::LeastConn,
        Algorithm::P2c,
        Algorithm::ConsistentHash,
        Algorithm::Maglev,
    ] {
        let s = Spec {
            bounded_load: Some(f64::NAN),
            ..spec(algorithm)
        };
        let empty = Table::build(&s, &[]);
        let mut b = balancer(&s, &[], 0);
        assert_eq!(b.pick(&empty, Some(1), |_| true), None);
        b.started(5);
        b.finished(5, Duration::MAX);
        let ms = members(&[0, 3, u32::MAX]);
        let table = Table::build(&s, &ms);
        assert_eq!(
            b.pick(&table, Some(1), |_| true),
            None,
            "table of another length"
        );
        let mut b = balancer(&s, &ms, usize::MAX);
        for i in 0..100 {
            b.finished(0, Duration::ZERO);
            let p = b.pick(&table, Some(key(i)), |_| true).unwrap();
            b.started(p);
            b.finished(p, Duration::MAX);
            assert_eq!(b.pick(&table, Some(key(i)), |_| false), None);
            assert_eq!(b.pick_sticky(&table, Some(b"\xff"), None, |_| false), None);
        }
    }
}
