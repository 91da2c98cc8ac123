//! Balancing through the proxy (issue 5): see docs/BALANCING.md. The unit tests in
//! src/balance prove the distributions; these prove them end to end, through the config
//! file, real shards and real backends. Every backend is an `Origin` named after itself, so
//! the `X-Backend` header of a response says who served it.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

mod algorithms;
mod bounded;
mod config_errors;
mod hashing;
mod reloads;
mod sticky;

// ---- helpers -----------------------------------------------------------------------------

/// A whole config: one listener, `[admin]` if asked, then the raw `[[route]]` and
/// `[[upstream]]` tables in `tables`.
fn config_with(admin: bool, tables: &str) -> String {
    let admin = if admin {
        "[admin]\naddress = \"127.0.0.1:0\"\n\n"
    } else {
        ""
    };
    format!(
        "[server]\nshutdown_timeout = \"10s\"\n\n[timeouts]\nupstream_connect = \"2s\"\n\n\
         {admin}[[listener]]\naddress = \"127.0.0.1:0\"\n\n{tables}\n"
    )
}

/// A catch-all route to one upstream "app" whose body (after `name`) is `upstream`.
fn config(admin: bool, upstream: &str) -> String {
    config_with(
        admin,
        &format!("[[route]]\nupstream = \"app\"\n\n[[upstream]]\nname = \"app\"\n{upstream}\n"),
    )
}

/// `backends = [...]` with raw per-backend extras such as `weight = 3` or `backup = true`.
fn backends(list: &[(SocketAddr, &str)]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|(a, extra)| match extra.is_empty() {
            true => format!("{{ address = \"{a}\" }}"),
            false => format!("{{ address = \"{a}\", {extra} }}"),
        })
        .collect();
    format!("backends = [{}]", items.join(", "))
}

fn plain(origins: &[&Origin]) -> String {
    let list: Vec<(SocketAddr, &str)> = origins.iter().map(|o| (o.addr(), "")).collect();
    backends(&list)
}

fn origins(names: &[&str]) -> Vec<Origin> {
    names.iter().map(|n| Origin::start(n)).collect()
}

/// A GET with `Host: t` and `extra` headers.
fn get_with(target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = vec![("Host", "t")];
    h.extend_from_slice(extra);
    request("GET", target, &h, b"")
}

/// Sends one GET on `c` and returns the response.
fn ask(c: &mut Client, target: &str, extra: &[(&str, &str)]) -> Response {
    c.send(&get_with(target, extra));
    c.read_response()
}

/// One GET on a new connection.
fn ask_new(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> Response {
    let mut c = Client::connect(addr);
    ask(&mut c, target, extra)
}

/// The origin that served `r`; panics unless it is a 200 from an origin.
fn served_by(r: &Response) -> String {
    assert_eq!(
        r.status(),
        200,
        "expected a 200 from a backend; got:\n{}",
        r.head.raw
    );
    r.header("x-backend")
        .unwrap_or_else(|| panic!("a 200 without X-Backend:\n{}", r.head.raw))
        .to_string()
}

/// `edgeshard_shard_requests_total` per shard.
fn shard_requests(proxy: &Proxy, shards: usize) -> Vec<f64> {
    let r = admin_get(proxy.admin_addr(), "/metrics", None);
    assert_eq!(r.status, 200, "GET /metrics:\n{}", r.body);
    let m = parse_quick(&r.body);
    (0..shards)
        .map(|i| {
            let s = i.to_string();
            m.value("edgeshard_shard_requests_total", &[("shard", &s)])
        })
        .collect()
}

fn assert_every_shard_served(proxy: &Proxy, shards: usize) {
    let per = shard_requests(proxy, shards);
    assert!(
        per.iter().all(|&n| n > 0.0),
        "the test needs every shard to serve (SO_REUSEPORT spreads new connections); \
         requests per shard: {per:?}"
    );
}

fn count(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// One route `/ALGO/` and one upstream `ALGO` per algorithm, all over the same backends.
fn per_algorithm(admin: bool, list: &str, algos: &[(&str, &str)], extra: &str) -> String {
    let mut t = String::new();
    for (algo, _) in algos {
        t.push_str(&format!(
            "[[route]]\npath_prefix = \"/{algo}/\"\nupstream = \"{algo}\"\n\n"
        ));
    }
    for (algo, more) in algos {
        t.push_str(&format!(
            "[[upstream]]\nname = \"{algo}\"\nbalance = \"{algo}\"\n{more}\n{list}\n{extra}\n\n"
        ));
    }
    config_with(admin, &t)
}
