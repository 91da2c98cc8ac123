//! Criterion micro-benchmarks of balancer picks (placeholder until every algorithm lands).

use criterion::{criterion_group, criterion_main, Criterion};

fn placeholder(c: &mut Criterion) {
    c.bench_function("noop", |b| b.iter(|| std::hint::black_box(1u64)));
}

criterion_group!(benches, placeholder);
criterion_main!(benches);
