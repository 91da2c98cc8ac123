//! Criterion micro-benchmarks of balancer picks (`edgeshard::balance`): one
//! `ShardBalancer::pick` of every algorithm over 100 backends (weights 1..=5), with every
//! backend usable and with every tenth unusable; the hash algorithms with and without
//! `bounded_load`; and the per-request helpers (key hash, sticky lookup). The `usable`
//! closure reads a precomputed `Vec<bool>` in both cases, as the shard's check reads its
//! per-backend state. Tables, balancers and 1,024 key hashes are built outside the timed
//! loops. Results: bench/README.md, "Balancer picks".

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use edgeshard::balance::{key_hash, Algorithm, Member, ShardBalancer, Spec, StickySpec, Table};

const BACKENDS: usize = 100;

fn members() -> Vec<Member> {
    (0..BACKENDS)
        .map(|i| Member {
            name: format!("10.1.{}.{}:8080", i / 200, i % 200 + 1),
            weight: 1 + (i % 5) as u32,
            backup: false,
        })
        .collect()
}

fn picks(c: &mut Criterion) {
    let ms = members();
    let keys: Vec<u32> = (0..1024)
        .map(|i| key_hash(format!("user-{i}").as_bytes()))
        .collect();
    let all = vec![true; BACKENDS];
    let some: Vec<bool> = (0..BACKENDS).map(|i| i % 10 != 0).collect();
    let algorithms = [
        ("round_robin", Algorithm::RoundRobin, None),
        ("weighted", Algorithm::Weighted, None),
        ("random", Algorithm::Random, None),
        ("least_conn", Algorithm::LeastConn, None),
        ("p2c", Algorithm::P2c, None),
        ("consistent_hash", Algorithm::ConsistentHash, None),
        (
            "consistent_hash_bounded",
            Algorithm::ConsistentHash,
            Some(1.25),
        ),
        ("maglev", Algorithm::Maglev, None),
        ("maglev_bounded", Algorithm::Maglev, Some(1.25)),
    ];
    let mut g = c.benchmark_group("balance_pick");
    for (name, algorithm, bounded_load) in algorithms {
        let spec = Spec {
            bounded_load,
            ..Spec::new(algorithm)
        };
        let table = Table::build(&spec, &ms);
        for (case, up) in [("all_usable", &all), ("10pct_unusable", &some)] {
            let mut b =
                ShardBalancer::with_weights(&spec, ms.iter().map(|m| (m.weight, m.backup)), 0);
            // Some load, so that least_conn, p2c and the bounds compare real numbers: 3
            // requests in flight per backend on average, latencies 1..=4 ms.
            for i in 0..3 * BACKENDS {
                let m = b
                    .pick(&table, Some(keys[i % keys.len()]), |j| up[j])
                    .unwrap();
                b.started(m);
                if i % 2 == 0 {
                    b.finished(m, Duration::from_millis(1 + (i % 4) as u64));
                    b.started(m);
                }
            }
            let mut n = 0usize;
            g.bench_function(BenchmarkId::new(name, case), |bench| {
                bench.iter(|| {
                    n = n.wrapping_add(1);
                    let key = keys[n & 1023];
                    b.pick(&table, black_box(Some(key)), |j| up[j])
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("balance_helpers");
    let spec = Spec {
        sticky: Some(StickySpec {
            cookie: "srv".into(),
            ttl: Some(Duration::from_secs(3600)),
            secret: None,
            secure: None,
            same_site: None,
        }),
        ..Spec::new(Algorithm::Weighted)
    };
    let table = Table::build(&spec, &ms);
    let value = table.sticky_value(57).as_bytes().to_vec();
    g.bench_function("sticky_lookup", |bench| {
        bench.iter(|| table.sticky_lookup(black_box(&value)))
    });
    g.bench_function("key_hash_32_bytes", |bench| {
        bench.iter(|| key_hash(black_box(b"0123456789abcdef0123456789abcdef")))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = picks
}
criterion_main!(benches);
