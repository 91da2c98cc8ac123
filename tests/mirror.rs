//! A route's `mirror` (nginx's `mirror`): each request the route forwards is copied to
//! another upstream whose answers are dropped. The client gets the route upstream's answer
//! and never waits on the mirror (one that holds its answer, or is gone, changes nothing for
//! the client); the copy is the request as forwarded, its body included when it is in hand
//! (`buffer_request_body` reads a chunked upload whole first); copies past
//! `max_in_flight` and bodies not in hand are counted, not sent; `sample` copies a share.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;

fn mirrored(primary: SocketAddr, mirror: SocketAddr, extra: &str, engine: Engine) -> Proxy {
    mirrored_with(primary, mirror, extra, "", engine)
}

fn mirrored_with(
    primary: SocketAddr,
    mirror: SocketAddr,
    extra: &str,
    upstream: &str,
    engine: Engine,
) -> Proxy {
    Config::new()
        .upstream_with("main", &[primary], upstream)
        .upstream("shadow", &[mirror])
        .route(
            "main",
            &format!("name = \"m\"\nmirror = {{ upstream = \"shadow\" {extra} }}"),
        )
        .admin("")
        .start(engine)
}

fn copies(proxy: &Proxy, result: &str) -> f64 {
    let m = scrape(proxy.admin_addr(), None);
    m.value(
        "edgeshard_mirror_requests_total",
        &[("route", "m"), ("result", result)],
    )
}

/// Waits (bounded) until the origin has `n` complete requests; returns them.
fn requests(origin: &Origin, n: usize) -> Vec<Recorded> {
    let got = origin.wait_for(Duration::from_secs(10), |s| s.requests.len() >= n);
    assert!(
        got,
        "{} requests at {}: {:?}",
        n,
        origin.name(),
        origin.requests()
    );
    origin.requests()
}

both_engines! {
    // A GET and a POST with its body: the client gets the primary's answers; the mirror gets
    // the same requests as forwarded (rewritten head, X-Forwarded-For, the body), once each.
    fn requests_are_copied_to_the_mirror(engine) {
        let primary = Origin::start("primary");
        let mirror = Origin::with_handler("shadow", |_| Reply::status(503, "shadow"));
        let proxy = mirrored(primary.addr(), mirror.addr(), "", engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/a?x=1", &[("Host", "example.com"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1")], b""));
        let r = c.read_response_for("GET");
        assert_eq!(r.status(), 200, "the primary's answer, not the mirror's 503");
        c.send(&request("POST", "/b", &[("Host", "example.com"), ("Content-Length", "5")], b"hello"));
        assert_eq!(c.read_response_for("POST").status(), 200);
        let got = requests(&mirror, 2);
        let sent = primary.requests();
        assert_eq!(got.len(), 2);
        let get = got.iter().find(|r| r.method == "GET").expect("the GET copied");
        let post = got.iter().find(|r| r.method == "POST").expect("the POST copied");
        assert_eq!(get.target, "/a?x=1");
        assert_eq!(get.header("Host"), Some("example.com"));
        assert_eq!(get.header("X-Hop"), None, "hop-by-hop fields are not copied");
        assert_eq!(get.header("X-Forwarded-For"), sent[0].header("X-Forwarded-For"));
        assert_eq!(get.header("X-Request-Id"), sent[0].header("X-Request-Id"), "the same request");
        assert_eq!((post.target.as_str(), &post.body[..]), ("/b", &b"hello"[..]));
        // Counted once the copy's answer has been read.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "two copies answered", |m| {
            m.value("edgeshard_mirror_requests_total", &[("route", "m"), ("result", "answered")]) == 2.0
        });
        mirror.assert_no_errors();
        primary.assert_no_errors();
    }

    // A mirror that holds its answer delays nobody: the client's requests are answered while
    // the copy waits (the test would block in its read if they waited on it), and with
    // `max_in_flight = 1` the next copies are counted busy and not sent. A mirror that is
    // gone is a failed copy, and the client still gets its answer.
    fn a_held_or_dead_mirror_never_reaches_the_client(engine) {
        let primary = Origin::start("primary");
        let (mirror, gate) = held_origin("/held");
        let proxy = mirrored(primary.addr(), mirror.addr(), ", max_in_flight = 1", engine);
        let mut c = Client::connect(proxy.addr());
        for _ in 0..3 {
            c.send(&request("GET", "/held", &[("Host", "example.com")], b""));
            assert_eq!(c.read_response_for("GET").status(), 200);
        }
        assert_eq!(copies(&proxy, "busy"), 2.0);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_mirror_in_flight", &[("route", "m")]), 1.0);
        gate.open();
        assert_eq!(requests(&mirror, 1).len(), 1);
        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the copy answered", |m| {
            m.value("edgeshard_mirror_requests_total", &[("route", "m"), ("result", "answered")]) == 1.0
        });
        assert_eq!(m.value("edgeshard_mirror_in_flight", &[("route", "m")]), 0.0);
        assert_eq!(mirror.request_count(), 1, "busy copies are never sent");

        let dead = dead_addr();
        let proxy = mirrored(primary.addr(), dead, "", engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/x", &[("Host", "example.com")], b""));
        assert_eq!(c.read_response_for("GET").status(), 200);
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the copy failed", |m| {
            m.value("edgeshard_mirror_requests_total", &[("route", "m"), ("result", "failed")]) == 1.0
        });
    }

    // A chunked upload streams to the primary: its body is not in hand, so it is not copied
    // (counted unbuffered). With the upstream's buffer_request_body it is read whole first,
    // and the mirror gets it with a Content-Length, as the primary does.
    fn a_body_is_copied_only_when_it_is_in_hand(engine) {
        let upload = b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let primary = Origin::start("primary");
        let mirror = Origin::start("shadow");
        let proxy = mirrored(primary.addr(), mirror.addr(), "", engine);
        let mut c = Client::connect(proxy.addr());
        c.send(upload);
        assert_eq!(c.read_response_for("POST").status(), 200);
        assert_eq!(copies(&proxy, "unbuffered"), 1.0);
        assert_eq!(primary.request_count(), 1);

        let buffering = "buffer_request_body = \"64KiB\"";
        let proxy = mirrored_with(primary.addr(), mirror.addr(), "", buffering, engine);
        let mut c = Client::connect(proxy.addr());
        c.send(upload);
        assert_eq!(c.read_response_for("POST").status(), 200);
        let got = requests(&mirror, 1);
        assert_eq!((got[0].chunked, &got[0].body[..]), (false, &b"hello"[..]));
        assert_eq!(got[0].header("Content-Length"), Some("5"));
        assert_eq!(copies(&proxy, "unbuffered"), 0.0);
        mirror.assert_no_errors();
    }

    // `sample = 0.25` copies about a quarter of the requests; each copy reuses the mirror's
    // pooled connection (the copy's answer was read to its end).
    fn a_sample_copies_a_share_on_pooled_connections(engine) {
        let primary = Origin::start("primary");
        let mirror = Origin::start("shadow");
        let proxy = mirrored(primary.addr(), mirror.addr(), ", sample = 0.25", engine);
        let mut c = Client::connect(proxy.addr());
        for _ in 0..200 {
            c.send(&request("GET", "/s", &[("Host", "example.com")], b""));
            assert_eq!(c.read_response_for("GET").status(), 200);
        }
        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "no copy under way", |m| {
            m.value("edgeshard_mirror_in_flight", &[("route", "m")]) == 0.0
        });
        let n = m.value("edgeshard_mirror_requests_total", &[("route", "m"), ("result", "answered")]);
        assert!((20.0..=80.0).contains(&n), "{n} of 200 copied");
        assert_eq!(mirror.request_count() as f64, n);
        assert!(mirror.accepted() < 10, "{} connections for {n} copies", mirror.accepted());
    }
}
