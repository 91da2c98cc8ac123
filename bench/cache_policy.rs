//! Hit ratios of the response cache's store (`edgeshard::cache::store::Store`, the code the
//! shards run) on replayed synthetic workloads: which admission policy (`cache.policy`), and
//! which layout across shards. Not a timing benchmark: every run replays the same seeded
//! traces and prints the same figures (loadtest/results/2026-12-04-vm/cache-policy.md).
//!
//! `cargo bench --bench cache_policy` (about a minute in release).

use std::rc::Rc;
use std::time::Instant;

use edgeshard::cache::store::{Entry, Store, StoredHead};
use edgeshard::config::CachePolicy;

const KEYS: usize = 100_000;
const REQUESTS: usize = 1_000_000;

/// xorshift64*: the traces' only randomness, seeded, so every run is the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Rank → key sampler for a Zipf law of exponent `s` over `KEYS` keys.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(KEYS);
        let mut sum = 0.0;
        for k in 1..=KEYS {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        cdf.iter_mut().for_each(|c| *c /= sum);
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(KEYS - 1)
    }
}

/// A key's body size: log-uniform from 1 KiB to 32 KiB, fixed per key.
fn body_size(key: u64) -> usize {
    let mut r = Rng(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (1024.0 * 32f64.powf(r.unit())) as usize
}

#[derive(Clone, Copy)]
enum Workload {
    /// Zipf over fixed popularity.
    Zipf(f64),
    /// Zipf 0.9 with a share of requests for URLs never asked for again (a crawler, a scan).
    Scan(f64),
    /// Zipf 0.9 whose popular keys change every 100,000 requests (recency pays).
    Shifting,
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::Zipf(s) => format!("zipf {s}"),
            Workload::Scan(p) => format!("zipf 0.9 + {:.0} % one-off URLs", p * 100.0),
            Workload::Shifting => "zipf 0.9, popularity shifting every 100k".into(),
        }
    }

    fn trace(self) -> Vec<u64> {
        let mut rng = Rng(0x5EED_CAC4E);
        let zipf = Zipf::new(match self {
            Workload::Zipf(s) => s,
            _ => 0.9,
        });
        let mut one_off = KEYS as u64;
        (0..REQUESTS)
            .map(|i| match self {
                Workload::Scan(p) if rng.unit() < p => {
                    one_off += 1;
                    one_off
                }
                Workload::Shifting => {
                    let epoch = (i / 100_000) as u64;
                    (zipf.sample(&mut rng) as u64 + epoch * 7_919) % KEYS as u64
                }
                _ => zipf.sample(&mut rng) as u64,
            })
            .collect()
    }
}

fn entry(key: u64) -> Entry {
    let head = StoredHead::new(Box::from(&b"HTTP/1.1 200 OK\r\n\r\n"[..])).expect("a head");
    Entry {
        status: 200,
        head: Rc::new(head),
        body: vec![0u8; body_size(key)].into(),
        stored: Instant::now(),
        initial_age: 0,
        lifetime: u64::MAX,
        etag: None,
        last_modified: None,
        windows: (0, 0),
    }
}

#[derive(Default)]
struct Outcome {
    hits: u64,
    requests: u64,
    hit_bytes: u64,
    bytes: u64,
    /// Largest total held by all the stores together.
    held: u64,
}

impl Outcome {
    fn ratio(&self) -> f64 {
        self.hits as f64 / self.requests as f64
    }

    fn byte_ratio(&self) -> f64 {
        self.hit_bytes as f64 / self.bytes as f64
    }
}

/// Where a request goes among `stores`: a random shard (SO_REUSEPORT spreads connections), or
/// the shard that owns the key.
#[derive(Clone, Copy, PartialEq)]
enum Spread {
    Random,
    Owner,
}

fn replay(trace: &[u64], stores: &mut [Store], spread: Spread) -> Outcome {
    let mut out = Outcome::default();
    let mut rng = Rng(0xD15_7A7C);
    let none: Rc<[Box<[u8]>]> = Rc::from(Vec::new());
    for &k in trace {
        let shard = match spread {
            Spread::Random => (rng.next() % stores.len() as u64) as usize,
            Spread::Owner => (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % stores.len(),
        };
        let store = &mut stores[shard];
        let url = format!("http://example.com/o/{k}");
        let size = body_size(k) as u64;
        out.requests += 1;
        out.bytes += size;
        store.record(url.as_bytes());
        if store.get(url.as_bytes()).is_some() {
            out.hits += 1;
            out.hit_bytes += size;
        } else {
            store.insert(url.as_bytes(), url.len(), none.clone(), entry(k));
        }
        if out.requests % 10_000 == 0 {
            out.held = out.held.max(stores.iter().map(Store::bytes).sum());
        }
    }
    out
}

fn main() {
    let mib = 1u64 << 20;
    let workloads = [
        Workload::Zipf(0.8),
        Workload::Zipf(1.0),
        Workload::Scan(0.3),
        Workload::Shifting,
    ];
    let total: u64 = (0..KEYS as u64).map(|k| body_size(k) as u64).sum();
    println!(
        "{KEYS} keys ({} MiB of bodies), {REQUESTS} requests per workload\n",
        total / mib
    );

    println!("## Policy: one store, hit ratio (byte hit ratio)\n");
    println!("| workload | size | lru | tinylfu |");
    println!("|---|---|---|---|");
    let traces: Vec<Vec<u64>> = workloads.iter().map(|w| w.trace()).collect();
    for (w, trace) in workloads.iter().zip(&traces) {
        for size in [16 * mib, 64 * mib, 256 * mib] {
            let cell = |policy| {
                let o = replay(trace, &mut [Store::new(size, policy)], Spread::Random);
                format!("{:.3} ({:.3})", o.ratio(), o.byte_ratio())
            };
            println!(
                "| {} | {} MiB | {} | {} |",
                w.name(),
                size / mib,
                cell(CachePolicy::Lru),
                cell(CachePolicy::TinyLfu)
            );
        }
    }

    println!("\n## Layout: N shards, `cache.size` = 64 MiB, tinylfu\n");
    println!("| workload | shards | per shard, size each (today) | held MiB | per shard, size / N each | held MiB | key owned by one shard, size / N each | held MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let size = 64 * mib;
    for (w, trace) in workloads.iter().zip(&traces).take(3) {
        for n in [2usize, 8] {
            let stores = |each: u64| -> Vec<Store> {
                (0..n)
                    .map(|_| Store::new(each, CachePolicy::TinyLfu))
                    .collect()
            };
            let today = replay(trace, &mut stores(size), Spread::Random);
            let split = replay(trace, &mut stores(size / n as u64), Spread::Random);
            let owner = replay(trace, &mut stores(size / n as u64), Spread::Owner);
            println!(
                "| {} | {n} | {:.3} | {} | {:.3} | {} | {:.3} | {} |",
                w.name(),
                today.ratio(),
                today.held / mib,
                split.ratio(),
                split.held / mib,
                owner.ratio(),
                owner.held / mib
            );
        }
    }
}
