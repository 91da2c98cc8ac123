//! Upstream connection pooling and retry safety; client connections parked while idle.

use crate::support::*;
use std::time::Duration;

/// A backend that answers every request head on every connection with an HTTP/1.0
/// keep-alive response, reading no body; returns the connections it accepted so far.
fn http10_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                while read_head_bytes(&mut s).is_ok() {
                    let ok =
                        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

both_engines! {
    // RFC 9112 §6.1: a chunked body may go only to a server known to speak HTTP/1.1. A
    // backend that answered in HTTP/1.0 (keep-alive or not) gets no further request on that
    // connection, so a chunked upload never reaches a server that would read its chunks as
    // requests.
    fn a_connection_that_answered_in_http_1_0_is_not_reused(engine) {
        let (backend, accepted) = http10_backend();
        let proxy = Config::single(backend).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/first"));
        assert_eq!(c.read_response().body_str(), "ok");
        c.send(b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n17\r\nGET /admin HTTP/1.0\r\n\r\n\r\n0\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "a new connection for the upload");
    }

    fn upstream_connections_reused_over_10000_requests(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        let req = get("example.com", "/ka");
        for i in 0..10_000 {
            c.send(&req);
            let r = c.read_response();
            assert_eq!(r.status(), 200, "request {i}");
            assert_eq!(r.body, b"origin", "request {i}");
        }
        assert_eq!(origin.request_count(), 10_000);
        let conns = origin.accepted();
        assert!(conns <= 4, "10,000 sequential requests opened {conns} backend connections (want <= 4)");
        origin.assert_no_errors();
    }
    fn upstream_connections_shared_across_client_connections(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        for i in 0..50 {
            let mut c = Client::connect(proxy.addr());
            c.send(&get("example.com", "/ka"));
            assert_eq!(c.read_response().status(), 200, "client connection {i}");
        }
        let conns = origin.accepted();
        assert!(conns <= 4, "50 sequential client connections opened {conns} backend connections (want <= 4)");
    }
    fn idle_pooled_connection_closed_by_backend_is_not_used(engine) {
        // /first is answered as keep-alive but the backend then closes the
        // connection; the next GET must still succeed (the proxy detects the
        // dead pooled connection, or safely retries the idempotent GET).
        let origin = Origin::with_handler("o", |req| match req.path() {
            "/first" => Reply::Response {
                status: 200,
                headers: vec![],
                body: b"first".to_vec(),
                mode: BodyMode::Length,
                close_after: true,
            },
            _ => Reply::Default,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/first"));
        let r = c.read_response();
        assert_eq!(r.body_str(), "first");
        assert!(
            origin.wait_for(Duration::from_secs(5), |s| s.closed >= 1),
            "origin did not close its first connection"
        );
        c.send(&get("example.com", "/second"));
        let r = c.read_response();
        assert_eq!(r.status(), 200, "GET after the backend closed the pooled connection:\n{}", r.head.raw);
        assert_eq!(r.header("x-path"), Some("/second"));
        // And a fresh client connection too.
        let mut c2 = Client::connect(proxy.addr());
        c2.send(&get("example.com", "/third"));
        assert_eq!(c2.read_response().status(), 200);
    }
    fn post_is_not_replayed_after_backend_failure(engine) {
        // The backend reads the whole POST, then closes without answering.
        let origin = Origin::with_handler("o", |req| match (req.method.as_str(), req.path()) {
            ("POST", "/fail") => Reply::Close,
            _ => Reply::Default,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("POST", "/fail", &[("Host", "example.com"), ("Content-Length", "3")], b"abc"));
        let r = c.read_response_for("POST");
        assert_eq!(r.status(), 502, "got:\n{}", r.head.raw);
        let posts = |o: &Origin| o.requests().iter().filter(|r| r.method == "POST").count();
        assert_eq!(posts(&origin), 1, "the POST must reach the backend exactly once (never replayed)");
        // Later traffic does not replay it either.
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/ok"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(posts(&origin), 1, "the POST must never be replayed");
    }
    fn post_on_stale_pooled_connection_reaches_backend_at_most_once(engine) {
        let origin = Origin::with_handler("o", |req| match req.path() {
            "/first" => Reply::Response {
                status: 200,
                headers: vec![],
                body: b"first".to_vec(),
                mode: BodyMode::Length,
                close_after: true,
            },
            _ => Reply::Default,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/first"));
        assert_eq!(c.read_response().body_str(), "first");
        assert!(origin.wait_for(Duration::from_secs(5), |s| s.closed >= 1));
        c.send(&request("POST", "/p", &[("Host", "example.com"), ("Content-Length", "3")], b"abc"));
        let r = c.read_response_for("POST");
        let posts = origin.requests().iter().filter(|r| r.method == "POST").count();
        assert!(posts <= 1, "the POST reached the backend {posts} times");
        if r.status() == 200 {
            assert_eq!(posts, 1);
        } else {
            assert_eq!(r.status(), 502, "got:\n{}", r.head.raw);
        }
    }

    // Idle client connections leave their tasks for the shard's parking lot after the hot
    // window (crate::park): each must come back for its next request, in any order, and a
    // client closing a parked connection must free it (the lot sees the close).
    fn parked_connections_resume_and_close(engine) {
        const N: usize = 100;
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).admin("").start(engine);
        let mut clients: Vec<Client> = (0..N)
            .map(|i| {
                let mut c = Client::connect(proxy.addr());
                c.send(&get("example.com", &format!("/a{i}")));
                assert_eq!(c.read_response().status(), 200);
                c
            })
            .collect();
        // Every connection past its 200 ms hot window, parked: what the proxy reports, not a
        // sleep (a late timer would send the requests on hot connections and test nothing).
        let all_parked = || {
            scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "all parked", |m| {
                m.value("edgeshard_connections_idle", &[]) == N as f64
            })
        };
        for round in 0..2 {
            all_parked();
            for i in (0..N).rev() {
                clients[i].send(&get("example.com", &format!("/b{round}-{i}")));
            }
            for (i, c) in clients.iter_mut().enumerate() {
                let r = c.read_response();
                assert_eq!(r.status(), 200, "round {round}, client {i}");
                assert!(!r.has_token("connection", "close"), "round {round}, client {i}");
            }
        }
        let paths: std::collections::HashSet<String> =
            origin.requests().iter().map(|r| r.path().to_string()).collect();
        assert_eq!(paths.len(), 3 * N, "every request reached the origin once");
        all_parked();
        clients.truncate(N / 2);
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "closed parked connections freed", |m| {
            m.value("edgeshard_connections_active", &[]) == (N / 2) as f64
        });
        // The rest are still served.
        for c in clients.iter_mut() {
            c.send(&get("example.com", "/c"));
            assert_eq!(c.read_response().status(), 200);
        }
    }

    // More exchanges waiting for their responses than a shard keeps read buffers for (64):
    // those past the free list wait for the response without a buffer and take one when it
    // is readable (a fresh shard's list is empty, so here every exchange starts that way).
    // Answered in reverse order, with 64 KiB bodies, each client gets its own response.
    fn exchanges_past_the_buffer_list_wait_for_their_responses_without_one(engine) {
        const N: usize = 80;
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut clients: Vec<Client> = (0..N)
            .map(|i| {
                let mut c = Client::connect(proxy.addr());
                c.send(&get("example.com", &format!("/r{i}")));
                c
            })
            .collect();
        // Every request reaches the backend before any is answered.
        let mut ups: Vec<(usize, LockConn)> = (0..N)
            .map(|_| {
                let mut up = backend.accept();
                let head = up.read_head();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let i: usize = path.trim_start_matches("/r").parse().unwrap_or(usize::MAX);
                assert!(i < N, "unexpected head {head:?}");
                (i, up)
            })
            .collect();
        ups.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, up) in ups.iter_mut() {
            let body = vec![b'a' + (*i % 26) as u8; 65536];
            let mut resp = format!("HTTP/1.1 200 OK\r\nX-I: {i}\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            resp.extend_from_slice(&body);
            up.write(&resp);
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c.read_response();
            assert_eq!(r.status(), 200, "request {i}");
            assert_eq!(r.header("X-I"), Some(i.to_string().as_str()), "request {i}");
            assert_eq!(r.body.len(), 65536, "request {i}");
            assert!(r.body.iter().all(|&b| b == b'a' + (i % 26) as u8), "request {i}: another response's bytes");
        }
    }
}

/// A client that sends `first` (its response has a body of `LEN` bytes) and then `then`,
/// which waits unread in the socket. The close must not be a reset, which would destroy the
/// end of the body still in the proxy's send buffer (RFC 9112 §9.6): the whole body arrives,
/// then the close.
/// - Not `queued`: `then` is sent once the proxy has read `first` (the origin has it), while
///   the response is relayed, and the client reads nothing until the proxy has let go of
///   the connection.
/// - `queued`: `then` is sent once the whole response was queued and the proxy, which had
///   seen nothing more, has half-closed (`wait_proxy_half_closed`), and the client then
///   reads it all. The proxy waits up to 20 s for
///   each read (`lingering_timeout`; no loaded machine takes that long to send `then`), and
///   lets go once its response is taken, not after those 20 s.
fn the_response_survives_the_close(
    engine: Engine,
    path: &'static str,
    first: &str,
    then: &[u8],
    queued: bool,
) {
    use std::io::Write;
    // Unless `queued`, the origin holds the response until `then` is sent: the bytes come
    // while the response is under way (a loaded machine made this test race the close).
    let (origin, gate) = held_origin(path);
    let mut config = Config::new()
        .upstream("main", &[origin.addr()])
        .route("main", "")
        .admin("");
    if queued {
        gate.open();
        config = config.timeout("lingering_timeout", "20s");
    }
    let proxy = config.start(engine);
    let mut s = small_window_client(proxy.addr());
    s.write_all(first.as_bytes()).unwrap();
    let ended = |m: &Metrics| m.value("edgeshard_connections_active", &[]) == 0.0;
    let what = if queued { "queued" } else { "under way" };
    if queued {
        // The proxy's half-close: it looked for unread bytes before it, so `then` comes
        // after that look (the count of the response, an earlier signal, left it to chance
        // which close ran: a shard slower than the client took the lingering one).
        let client = s.local_addr().unwrap();
        wait_proxy_half_closed(proxy.addr(), client, Duration::from_secs(10));
        s.write_all(then).unwrap();
        read_whole_response(&mut s, LEN, what);
        let admin = proxy.admin_addr();
        scrape_until(
            admin,
            None,
            Duration::from_secs(10),
            "the connection ended",
            ended,
        );
    } else {
        assert!(origin.wait_for(Duration::from_secs(10), |o| !o.requests.is_empty()));
        s.write_all(then).unwrap();
        gate.open();
        let admin = proxy.admin_addr();
        scrape_until(
            admin,
            None,
            Duration::from_secs(20),
            "the connection ended",
            ended,
        );
        read_whole_response(&mut s, LEN, what);
    }
}

const LEN: usize = 400_000;

both_engines! {
    // An HTTP/1.0 client that keeps alive gets a close-delimited body, so the proxy closes
    // after it; its next request, pipelined, is read and dropped before the close.
    fn a_pipelined_request_does_not_reset_a_response_the_proxy_closes(engine) {
        let one = format!("GET /gen/{LEN}/chunked HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n");
        the_response_survives_the_close(engine, "/gen/400000/chunked", &one, one.as_bytes(), false);
    }

    // A client that asked for the close and sends more anyway (a confused pipeliner).
    fn bytes_sent_after_asking_for_the_close_do_not_reset_the_response(engine) {
        let one = format!("GET /gen/{LEN}/cl HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        the_response_survives_the_close(engine, "/gen/400000/cl", &one, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", false);
    }

    // The same, sent once the whole response was queued: the proxy, which had seen nothing
    // more, closes in stages and reads while the response is in flight (RFC 9112 §9.6);
    // it dropped the connection, and the bytes arriving after drew the kernel's reset (as
    // they do from nginx, whose lingering close looks only at what has arrived).
    fn bytes_sent_once_the_response_is_queued_do_not_reset_it(engine) {
        let one = format!("GET /gen/{LEN}/cl HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        the_response_survives_the_close(engine, "/gen/400000/cl", &one, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", true);
    }
}

/// A proxy whose lingering bounds are `lingering_timeout` and `lingering_time`, and a client
/// with a small receive buffer that has asked for `LEN` bytes with `Connection: close` and
/// reads nothing yet: most of the response waits in the proxy's send queue as it closes.
fn closing_with_the_response_in_flight(
    engine: Engine,
    lingering_timeout: &str,
    lingering_time: &str,
    limits: &[(&str, &str)],
) -> (Origin, Proxy, std::net::TcpStream) {
    use std::io::Write;
    let origin = Origin::start("o");
    let mut config = Config::single(origin.addr())
        .timeout("lingering_timeout", lingering_timeout)
        .timeout("lingering_time", lingering_time)
        .admin("");
    for (key, raw) in limits {
        config = config.limit(key, raw);
    }
    let proxy = config.start(engine);
    let mut s = small_window_client(proxy.addr());
    let req = format!("GET /gen/{LEN}/cl HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    (origin, proxy, s)
}

both_engines! {
    // A client that takes the whole response and keeps its socket open (it does not close,
    // and sends nothing): the close after the response ends once the client has acknowledged
    // it (`SIOCOUTQ` at 0, looked at every 100 ms), not after `lingering_timeout` (60 s here;
    // the 20 s deadline is far from both).
    fn a_client_that_takes_the_response_and_stays_is_let_go_at_once(engine) {
        let (_origin, proxy, mut s) = closing_with_the_response_in_flight(engine, "60s", "60s", &[]);
        read_whole_response(&mut s, LEN, "a client that stays");
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(20), "the connection let go", |m| {
            m.value("edgeshard_connections_active", &[]) == 0.0
        });
        drop(s);
    }

    // A client that reads nothing and sends nothing: the close waits `lingering_timeout`
    // (1 s) after the half-close, not `lingering_time` (60 s), and the close is orderly
    // (nothing was left unread): once the proxy has let go, the kernel still delivers the
    // whole response, then the end.
    fn a_client_that_never_reads_is_let_go_after_lingering_timeout(engine) {
        let (_origin, proxy, mut s) = closing_with_the_response_in_flight(engine, "1s", "60s", &[]);
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(20), "the connection let go", |m| {
            m.value("edgeshard_connections_active", &[]) == 0.0
        });
        read_whole_response(&mut s, LEN, "a client that never reads");
    }

    // A client that reads nothing and keeps sending (a byte before each scrape, every 25 ms,
    // far inside `lingering_timeout`, 60 s): `lingering_time` (1 s) ends the close all the
    // same. The bytes start once the proxy has half-closed, so this is the close after a
    // complete response, not the lingering close of a client that had sent more.
    fn lingering_time_bounds_a_client_that_keeps_sending(engine) {
        use std::io::Write;
        let (_origin, proxy, s) = closing_with_the_response_in_flight(engine, "60s", "1s", &[]);
        wait_proxy_half_closed(proxy.addr(), s.local_addr().unwrap(), Duration::from_secs(10));
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(20), "the connection let go", |m| {
            // Once the proxy has closed, this byte draws a reset and later writes fail.
            let _ = (&s).write(b"x");
            m.value("edgeshard_connections_active", &[]) == 0.0
        });
    }

    // At a connection limit with no idle connection, a close in stages whose response is
    // still in flight keeps its place, as any connection with a response in flight does
    // (crate::reclaim): reclaimed, a byte its client then sent would draw the reset that
    // destroys the end of the response. The new client is closed at accept; once the
    // closing client has taken its response, the close ends and the next client is served.
    // The shard's bound and the process's (a second path in `worker::admit`).
    fn a_close_in_flight_keeps_its_place_at_the_connection_limit(engine) {
        for limit in ["max_connections_per_shard", "max_connections"] {
            let limits = [(limit, "1")];
            let (_origin, proxy, mut s) = closing_with_the_response_in_flight(engine, "60s", "60s", &limits);
            wait_proxy_half_closed(proxy.addr(), s.local_addr().unwrap(), Duration::from_secs(10));
            let m = scrape(proxy.admin_addr(), None);
            assert_eq!(m.value("edgeshard_connections_closing", &[]), 1.0, "{limit}: the close in its register");
            let mut c = Client::connect(proxy.addr());
            c.send(&get("t", "/refused"));
            let raw = c.read_until_closed(Duration::from_secs(10));
            assert!(matches!(&raw, Ok(b) if b.is_empty()) || raw.is_err(), "{limit}: {raw:?}");
            let m = scrape(proxy.admin_addr(), None);
            assert_eq!(m.value("edgeshard_connections_rejected_total", &[("reason", limit)]), 1.0, "{limit}");
            assert_eq!(m.value("edgeshard_connections_reclaimed_total", &[]), 0.0, "{limit}");
            read_whole_response(&mut s, LEN, limit);
            scrape_until(proxy.admin_addr(), None, Duration::from_secs(20), "the close ended", |m| {
                m.value("edgeshard_connections_closing", &[]) == 0.0
            });
            let mut c = Client::connect(proxy.addr());
            c.send(&get("t", "/next"));
            assert_eq!(c.read_response().status(), 200, "{limit}");
        }
    }
}

both_engines! {
    // At the limit an idle keep-alive connection makes room before a close whose response is
    // still in flight: closing an idle connection costs its client nothing (RFC 9112 §9.5),
    // while a reclaimed close whose client then sends more bytes (junk, or a request after
    // its `Connection: close`) draws the reset that destroys the end of its response (found
    // by a soak at `max_connections_per_shard = 64`: 19-23 responses cut per run).
    fn at_the_limit_an_idle_connection_goes_before_a_closing_one(engine) {
        use std::io::Write;
        for limit in ["max_connections_per_shard", "max_connections"] {
            let limits = [(limit, "2")];
            let (_origin, proxy, mut s) = closing_with_the_response_in_flight(engine, "60s", "60s", &limits);
            wait_proxy_half_closed(proxy.addr(), s.local_addr().unwrap(), Duration::from_secs(10));
            let mut idle = Client::connect(proxy.addr());
            idle.send(&get("t", "/idle"));
            assert_eq!(idle.read_response().status(), 200, "{limit}");
            scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the connection parked", |m| {
                m.value("edgeshard_connections_idle", &[]) == 1.0
            });
            let mut c = Client::connect(proxy.addr());
            c.send(&get("t", "/next"));
            assert_eq!(c.read_response().status(), 200, "{limit}");
            idle.expect_closed_within(Duration::from_secs(10));
            // The closing client sends more, and still gets its whole response.
            s.write_all(b"GET /more HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            read_whole_response(&mut s, LEN, limit);
            let m = scrape(proxy.admin_addr(), None);
            assert_eq!(m.value("edgeshard_connections_reclaimed_total", &[]), 1.0, "{limit}");
        }
    }
}

both_engines! {
    // limits.max_requests_per_connection (nginx's keepalive_requests): the response to the
    // connection's last request says `Connection: close` and the connection ends after it.
    // The count survives the parking lot (the connection is parked before its last request),
    // and a new connection starts afresh.
    fn a_connection_closes_after_its_last_request(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr())
            .limit("max_requests_per_connection", "3")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for i in 1..=3 {
            if i == 3 {
                scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the connection parked", |m| {
                    m.value("edgeshard_connections_idle", &[]) == 1.0
                });
            }
            c.send(&get("example.com", &format!("/r{i}")));
            let r = c.read_response();
            assert_eq!(r.status(), 200, "request {i}");
            assert_eq!(r.has_token("connection", "close"), i == 3, "request {i}:\n{}", r.head.raw);
        }
        c.expect_closed_within(Duration::from_secs(10));
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_connections_retired_total", &[("reason", "requests")]), 1.0);
        assert_eq!(m.value("edgeshard_connections_retired_total", &[("reason", "keepalive_time")]), 0.0);
        let mut fresh = Client::connect(proxy.addr());
        fresh.send(&get("example.com", "/again"));
        assert!(!fresh.read_response().has_token("connection", "close"));
    }

    // A client that pipelines past its connection's last request gets every response up to
    // it, whole, and then the close: the request that followed is never forwarded.
    fn requests_pipelined_past_the_last_one_are_not_forwarded(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr())
            .limit("max_requests_per_connection", "2")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let mut burst = Vec::new();
        for i in 1..=4 {
            burst.extend_from_slice(&get("example.com", &format!("/p{i}")));
        }
        c.send(&burst);
        assert!(!c.read_response().has_token("connection", "close"));
        let last = c.read_response();
        assert_eq!((last.status(), last.has_token("connection", "close")), (200, true));
        assert_eq!(last.header("x-path"), Some("/p2"));
        c.expect_closed_within(Duration::from_secs(10));
        let paths: Vec<String> = origin.requests().iter().map(|r| r.path().to_string()).collect();
        assert_eq!(paths, ["/p1", "/p2"]);
    }

    // timeouts.client_keepalive_time (nginx's keepalive_time): a connection open that long
    // closes after the response to its next request. The age counts from the accept, across
    // the parking lot.
    fn a_connection_older_than_keepalive_time_closes_after_its_next_response(engine) {
        const AGE: Duration = Duration::from_secs(1);
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr())
            .timeout("client_keepalive_time", "1s")
            .admin("")
            .start(engine);
        let opened = std::time::Instant::now();
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/young"));
        let r = c.read_response();
        // (A machine stalled past AGE here has nothing to show for the young request.)
        if opened.elapsed() < AGE {
            assert!(!r.has_token("connection", "close"), "{}", r.head.raw);
        }
        // The deadline is what is exercised: past it, the connection is an old one. Counted
        // from the first answer, which the proxy sent after its accept (the proxy's own clock
        // starts there, possibly well after `opened` on a loaded machine).
        wait_until(std::time::Instant::now() + AGE + Duration::from_millis(50));
        c.send(&get("example.com", "/old"));
        let r = c.read_response();
        assert_eq!((r.status(), r.has_token("connection", "close")), (200, true), "{}", r.head.raw);
        c.expect_closed_within(Duration::from_secs(10));
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_connections_retired_total", &[("reason", "keepalive_time")]), 1.0);
    }
}
