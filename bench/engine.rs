//! Criterion micro-benchmarks of the request path's CPU work, stage by stage: request-head
//! parse (minimal, typical browser, 64 headers), route lookup (10, 1,000 and 100,000 host
//! routes; 10, 1,000 and 10,000 path prefixes on one host), the route map a reload makes,
//! upstream head encode, and pool checkout + checkin. Inputs are built outside the timed
//! loops. Baseline figures live in bench/README.md; balancer picks are `bench/balance.rs`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use edgeshard::config::Config;
use edgeshard::http::encode::{split_target, upstream_request_head, OutFraming, UpstreamRequest};
use edgeshard::http::parse::{parse_request, HeadLimits, Parsed, RequestHead};
use edgeshard::route::RouteTable;
use edgeshard::snapshot::Shared;
use edgeshard::upstream::pool::Pool;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 65536,
    max_headers: 100,
    max_uri_bytes: 8192,
};

fn minimal() -> Vec<u8> {
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()
}

fn browser() -> Vec<u8> {
    b"GET /static/app.js?v=1234 HTTP/1.1\r\nHost: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://www.example.com/\r\nConnection: keep-alive\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark; consent=yes\r\n\
Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\nPriority: u=0, i\r\n\r\n"
        .to_vec()
}

fn many_headers(n: usize) -> Vec<u8> {
    let mut v = b"GET /api/v1/items HTTP/1.1\r\nHost: api.example.com\r\n".to_vec();
    for i in 1..n {
        v.extend_from_slice(format!("X-Header-{i}: value-{i}-abcdefghijklmnop\r\n").as_bytes());
    }
    v.extend_from_slice(b"\r\n");
    v
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_request");
    for (name, input) in [
        ("minimal", minimal()),
        ("browser", browser()),
        ("64_headers", many_headers(64)),
    ] {
        let mut head = RequestHead::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = parse_request(black_box(&input), &LIMITS, &mut head);
                assert!(matches!(r, Ok(Parsed::Complete(()))));
            })
        });
    }
    g.finish();
}

/// One listener, one upstream `u`, and a `[[route]]` to it with each of `routes`' keys.
fn routes_config(routes: impl Iterator<Item = String>) -> Config {
    let mut text = String::from(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n",
    );
    for keys in routes {
        text.push_str(&format!("[[route]]\n{keys}\nupstream = \"u\"\n"));
    }
    Config::parse(&text, Path::new("bench.toml")).expect("bench config")
}

/// N exact-host routes and one wildcard.
fn route_config(n: usize) -> Config {
    routes_config(
        (0..n)
            .map(|i| format!("host = \"host{i}.example.com\""))
            .chain(["host = \"*.wild.example.com\"".to_string()]),
    )
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 100_000] {
        let table = RouteTable::new(&route_config(n));
        let host = format!("host{}.example.com", n / 2);
        g.bench_with_input(BenchmarkId::new("exact_host", n), &host, |b, host| {
            b.iter(|| {
                let r = table.find(black_box(host.as_bytes()), b"/index.html", b"GET", |_| None);
                assert!(r.is_some());
            })
        });
        g.bench_with_input(
            BenchmarkId::new("wildcard_host", n),
            &"a.b.wild.example.com",
            |b, host| b.iter(|| table.find(black_box(host.as_bytes()), b"/", b"GET", |_| None)),
        );
    }
    g.finish();
}

/// N any-host routes `path_prefix = "/svcI/"` and a catch-all, as an API gateway with many
/// paths on one host has them.
fn path_config(n: usize) -> Config {
    routes_config(
        (0..n)
            .map(|i| format!("path_prefix = \"/svc{i}/\""))
            .chain([String::new()]),
    )
}

fn route_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_paths");
    for n in [10usize, 1_000, 10_000] {
        let table = RouteTable::new(&path_config(n));
        let hit = format!("/svc{}/users/42", n / 2);
        g.bench_with_input(BenchmarkId::new("prefix_hit", n), &hit, |b, path| {
            b.iter(|| {
                let r = table.find(
                    b"api.example.com",
                    black_box(path.as_bytes()),
                    b"GET",
                    |_| None,
                );
                assert_eq!(r.map(|r| r.index), Some(n / 2));
            })
        });
        g.bench_with_input(
            BenchmarkId::new("catch_all", n),
            &"/index.html",
            |b, path| {
                b.iter(|| {
                    let r = table.find(
                        b"api.example.com",
                        black_box(path.as_bytes()),
                        b"GET",
                        |_| None,
                    );
                    assert_eq!(r.map(|r| r.index), Some(n));
                })
            },
        );
    }
    g.finish();
}

/// `Shared::route_map` (a reload runs it once, and a shard that skipped a snapshot while its
/// requests wait) between two tables of 40,000 routes, one reversed.
fn reload(c: &mut Criterion) {
    let named = |i: usize| format!("name = \"r{i}\"");
    const N: usize = 40_000;
    let old = Shared::with_shards(routes_config((0..N).map(named)), 1);
    let new = Shared::with_shards(routes_config((0..N).rev().map(named)), 1);
    c.bench_function("reload/route_map/40000", |b| {
        b.iter(|| black_box(new.route_map(black_box(&old))).len())
    });
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_upstream_head");
    for (name, input) in [("minimal", minimal()), ("browser", browser())] {
        let mut head = RequestHead::default();
        assert!(matches!(
            parse_request(&input, &LIMITS, &mut head),
            Ok(Parsed::Complete(()))
        ));
        let mut out = Vec::with_capacity(4096);
        let ip = "192.0.2.7".parse().unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let target = split_target(head.target.get(&input));
                let host = head.host.map(|h| h.get(&input)).unwrap_or(b"");
                let req = UpstreamRequest {
                    target: &target,
                    host,
                    client_ip: ip,
                    keep_forwarded_for: true,
                    framing: OutFraming::None,
                    set: &[],
                    https: false,
                    upstream_host: None,
                    rules: None,
                };
                upstream_request_head(&input, &head, &req, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn pool(c: &mut Criterion) {
    // Real loopback connections in a real runtime; the timed loop is checkout (with its
    // `recv(MSG_PEEK)` liveness probe) + checkin.
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut pool = Pool::new(&[(64, Duration::from_secs(3600))]);
    let mut peers = Vec::new();
    rt.block_on(async {
        for _ in 0..16 {
            let s = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
            peers.push(listener.accept().unwrap().0);
            let s = edgeshard::transport::Transport::Plain(s);
            pool.checkin(0, s, Instant::now(), false);
        }
    });
    let now = Instant::now();
    // Inside the runtime: a checkin asks the runtime which driver it runs (outside one, that
    // panics).
    rt.block_on(async {
        c.bench_function("pool/checkout_checkin", |b| {
            b.iter(|| {
                let s = pool.checkout(0, now).expect("pooled connection");
                pool.checkin(0, s, now, false);
            })
        })
    });
    drop(peers);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = parse, route, route_paths, reload, encode, pool
}
criterion_main!(benches);
