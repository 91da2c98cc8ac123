//! A route's `mirror` (nginx's `mirror`): each request the route forwards is copied to
//! another upstream whose answers are dropped. The client gets the route upstream's answer
//! and never waits on the mirror (one that holds its answer, or is gone, changes nothing for
//! the client); the copy is the request as forwarded, its body included when it is in hand
//! (`buffer_request_body` reads a chunked upload whole first); copies past
//! `max_in_flight`, bodies not in hand and bodies over `max_body` are counted, not sent; a
//! copy is never sent twice unless the main path would resend it; `sample` copies a share.

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
        // Counted once the copy's answer has been read; no copy was sent twice.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "two copies answered", |m| {
            m.value("edgeshard_mirror_requests_total", &[("route", "m"), ("result", "answered")]) == 2.0
        });
        assert_eq!(mirror.request_count(), 2);
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
        let unused = Origin::start("unused");
        let proxy = mirrored(primary.addr(), unused.addr(), "", engine);
        let mut c = Client::connect(proxy.addr());
        c.send(upload);
        assert_eq!(c.read_response_for("POST").status(), 200);
        // Counted before the primary got the request: nothing is on its way to the mirror.
        assert_eq!(copies(&proxy, "unbuffered"), 1.0);
        assert_eq!(primary.request_count(), 1);
        // Nor is a Content-Length body sent after the head, nor one over max_body.
        c.send(b"POST /late HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(c.read_response_for("POST").status(), 100);
        c.send(b"hello");
        assert_eq!(c.read_response_for("POST").status(), 200);
        assert_eq!(primary.last_request().body, b"hello");
        assert_eq!(copies(&proxy, "unbuffered"), 2.0);
        let big = vec![b'x'; 64 * 1024 + 1];
        c.send(&request("POST", "/big", &[("Host", "example.com"), ("Content-Length", &big.len().to_string())], &big));
        assert_eq!(c.read_response_for("POST").status(), 200);
        assert_eq!(copies(&proxy, "too_large"), 1.0);
        assert_eq!(unused.accepted(), 0, "nothing was copied");

        let mirror = Origin::start("shadow");

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

    // A POST copied on a pooled mirror connection that the mirror closes after reading it
    // (no response byte) is not sent again: it reached the mirror, and POST is not
    // idempotent (a keep-alive race resends only what the main path would).
    fn a_copied_post_is_never_sent_twice(engine) {
        let primary = Origin::start("primary");
        let mirror = LockStep::bind();
        let proxy = mirrored(primary.addr(), mirror.addr(), "", engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("POST", "/one", &[("Host", "example.com"), ("Content-Length", "3")], b"one"));
        assert_eq!(c.read_response_for("POST").status(), 200);
        let mut m1 = mirror.accept();
        assert!(m1.read_head().starts_with("POST /one "));
        assert_eq!(m1.read_exact(3), b"one");
        m1.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        // The copy's answer was read: its connection is pooled again.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "first copy answered", |m| {
            m.value("edgeshard_mirror_requests_total", &[("route", "m"), ("result", "answered")]) == 1.0
        });
        c.send(&request("POST", "/two", &[("Host", "example.com"), ("Content-Length", "3")], b"two"));
        assert_eq!(c.read_response_for("POST").status(), 200);
        assert!(m1.read_head().starts_with("POST /two "));
        assert_eq!(m1.read_exact(3), b"two");
        m1.close();
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "second copy failed", |m| {
            m.value("edgeshard_mirror_requests_total", &[("route", "m"), ("result", "failed")]) == 1.0
        });
        assert_eq!(mirror.accepted(), 1, "the POST /two copy was sent to the mirror twice");
    }

    // Pipelined: a POST with its body and a GET in one write. The POST's copy carries its 5
    // body bytes and nothing of the GET; the GET is copied on its own.
    fn a_pipelined_next_request_is_not_part_of_the_copy(engine) {
        let primary = Origin::start("primary");
        let mirror = Origin::start("shadow");
        let proxy = mirrored(primary.addr(), mirror.addr(), "", engine);
        let mut c = Client::connect(proxy.addr());
        let mut both = request("POST", "/p", &[("Host", "example.com"), ("Content-Length", "5")], b"hello");
        both.extend_from_slice(&request("GET", "/g", &[("Host", "example.com")], b""));
        c.send(&both);
        assert_eq!(c.read_response_for("POST").status(), 200);
        assert_eq!(c.read_response_for("GET").status(), 200);
        let got = requests(&mirror, 2);
        let post = got.iter().find(|r| r.method == "POST").unwrap();
        assert_eq!(&post.body[..], b"hello");
        assert!(got.iter().any(|r| r.method == "GET" && r.target == "/g"));
        mirror.assert_no_errors();
    }
}
