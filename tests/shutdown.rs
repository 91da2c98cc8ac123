//! Graceful shutdown on SIGTERM and SIGQUIT: in-flight requests finish, a request an idle
//! keep-alive client sends as the drain begins is still served (within `server.drain_grace`),
//! and the process exits 0 within `shutdown_timeout`, with 1,000 connections open too.

use crate::support::*;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Waits for the shard to report its listeners closed, then checks that a new connection
/// is refused.
fn wait_until_refused(proxy: &Proxy, within: Duration) {
    proxy.wait_for_output("listeners closed", 1, within);
    let e = TcpStream::connect_timeout(&proxy.addr(), Duration::from_millis(500)).err();
    assert_eq!(
        e.map(|e| e.kind()),
        Some(io::ErrorKind::ConnectionRefused),
        "new connections must be refused once the listeners are closed"
    );
}

/// A response given while draining: complete, announcing the close, then the close.
fn assert_last_response(c: &mut Client, body: &str, what: &str) {
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("{what}: no full response while draining: {e}"));
    assert_eq!(r.status(), 200, "{what}:\n{}", r.head.raw);
    assert_eq!(r.body_str(), body, "{what}");
    assert!(
        r.has_token("connection", "close"),
        "{what}: a response given while draining must carry Connection: close:\n{}",
        r.head.raw
    );
    c.expect_closed_within(Duration::from_secs(10));
}

/// Raises this test process's soft open-file limit towards `want` descriptors (up to the hard
/// limit) and returns how many it may use.
fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the rlimit struct owned here; a failure
    // leaves the limit unchanged and is seen in the value returned.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

fn assert_exit_0(proxy: &mut Proxy, within: Duration) {
    let status = proxy.wait_exit(within);
    assert_eq!(
        status.code(),
        Some(0),
        "edgeshard must exit 0 after SIGTERM; got {status:?}\noutput:\n{}",
        proxy.output()
    );
}

both_engines! {
    fn sigterm_lets_inflight_request_finish_then_exits_0(engine) {
        let backend = LockStep::bind();
        let mut proxy = Config::single(backend.addr()).server("shutdown_timeout", "\"20s\"").start(engine);
        let addr = proxy.addr();
        let mut c = Client::connect(addr);
        c.send(&get("example.com", "/slow"));
        let mut conn = backend.accept();
        let head = conn.read_head();
        assert!(head.starts_with("GET /slow "), "{head:?}");

        proxy.terminate();
        // The listener goes away while the request is still in flight.
        wait_until_refused(&proxy, Duration::from_secs(5));
        assert!(proxy.is_running(), "edgeshard exited before its in-flight request finished");

        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_str(), "done", "the in-flight response must complete");
        // Draining: the response announces the close, and the connection is closed after it.
        assert!(
            r.has_token("connection", "close"),
            "a response finished while draining must carry Connection: close:\n{}",
            r.head.raw
        );
        c.expect_closed_within(Duration::from_secs(10));
        assert_exit_0(&mut proxy, Duration::from_secs(10));
        let e = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::ConnectionRefused));
    }
    fn sigterm_when_idle_exits_0_promptly(engine) {
        let origin = Origin::start("o");
        let mut proxy = Config::single(origin.addr()).server("shutdown_timeout", "\"30s\"").start(engine);
        proxy.terminate();
        assert_exit_0(&mut proxy, Duration::from_secs(5));
    }
    fn sigterm_closes_idle_keepalive_connections(engine) {
        // An idle keep-alive client has nothing in flight: shutdown must not
        // wait for shutdown_timeout because of it.
        let origin = Origin::start("o");
        let mut proxy = Config::single(origin.addr()).server("shutdown_timeout", "\"30s\"").start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/"));
        assert_eq!(c.read_response().status(), 200);
        proxy.terminate();
        c.expect_closed_within(Duration::from_secs(10));
        assert_exit_0(&mut proxy, Duration::from_secs(10));
    }
    fn sigterm_gives_up_on_stuck_request_after_shutdown_timeout(engine) {
        let backend = LockStep::bind();
        let mut proxy = Config::single(backend.addr())
            .server("shutdown_timeout", "\"1s\"")
            .timeout("upstream_response", "60s")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/stuck"));
        let mut conn = backend.accept();
        conn.read_head();
        let t0 = Instant::now();
        proxy.terminate();
        // Taken before SIGTERM: the proxy's 1 s can only start after it, so a correct exit is
        // never earlier than 1 s after t0 (50 ms of slack for timer rounding).
        assert_exit_0(&mut proxy, Duration::from_secs(10));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(950), "exited before shutdown_timeout (1 s): {took:?}");
        // The client connection is gone with the process: closed (EOF or RST) with no
        // response, since the stuck request never got one.
        c.expect_closed_within(Duration::from_secs(5));
        // And the backend connection too.
        assert!(
            conn.read_to_close(Duration::from_secs(5)).is_some(),
            "the proxy's connection to the stuck backend must be closed"
        );
    }
}

/// A proxy (drain grace 5 s) told to stop just after its keep-alive client's first answer:
/// draining has begun (its listeners are closed), the client's connection is still open.
fn idle_client_in_a_drain(engine: Engine) -> (Origin, Proxy, Client) {
    let origin = Origin::start("o");
    let (proxy, c) = idle_client_draining(Config::single(origin.addr()), engine);
    (origin, proxy, c)
}

/// [`idle_client_in_a_drain`] on `config`, whose routes answer `/first`.
fn idle_client_draining(config: Config, engine: Engine) -> (Proxy, Client) {
    let proxy = config
        .server("shutdown_timeout", "\"30s\"")
        .server("drain_grace", "\"5s\"")
        .start(engine);
    let mut c = Client::connect(proxy.addr());
    c.send(&get("example.com", "/first"));
    assert_eq!(c.read_response().status(), 200);
    proxy.terminate();
    wait_until_refused(&proxy, Duration::from_secs(5));
    (proxy, c)
}

both_engines! {
    fn request_sent_as_the_drain_begins_is_served_with_close(engine) {
        // The race wrk saw: a keep-alive client sends its next request just as SIGTERM
        // arrives. Closing idle connections at once would lose it; the grace serves it.
        let (origin, mut proxy, mut c) = idle_client_in_a_drain(engine);
        let before = origin.request_count();
        c.send(&get("example.com", "/after-sigterm"));
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("the request sent after SIGTERM got no response: {e}"));
        assert_eq!(r.status(), 200, "{}", r.head.raw);
        assert!(
            r.has_token("connection", "close"),
            "the last response must carry Connection: close:\n{}",
            r.head.raw
        );
        c.expect_closed_within(Duration::from_secs(10));
        assert_eq!(origin.request_count(), before + 1, "the origin must have served it");
        assert_exit_0(&mut proxy, Duration::from_secs(15));
    }
    // An upgrade asked for during the drain's grace is not offered to the backend: its tunnel
    // would be cut at shutdown_timeout. The client gets 503 with the close, and comes back.
    fn an_upgrade_asked_for_while_draining_gets_503_and_the_close(engine) {
        let (origin, mut proxy, mut c) = idle_client_in_a_drain(engine);
        c.send(b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        let r = c.try_read_response().expect("an answer to the upgrade");
        assert_eq!((r.status(), r.has_token("connection", "close")), (503, true), "{}", r.head.raw);
        c.expect_closed_within(Duration::from_secs(10));
        assert_eq!(origin.request_count(), 1, "the upgrade never reached the origin");
        assert_exit_0(&mut proxy, Duration::from_secs(15));
    }
    // Only a tunnel is refused while draining: an upgrade asked of a route that answers
    // itself (a redirect) gets that answer, with the close, not a 503.
    fn an_upgrade_to_a_redirect_route_while_draining_gets_the_redirect(engine) {
        let origin = Origin::start("o");
        let config = Config::new()
            .upstream("main", &[origin.addr()])
            .route_without_upstream("path_prefix = \"/old/\"\nredirect = { to = \"https://new.example/\", status = 301 }")
            .route("main", "");
        let (mut proxy, mut c) = idle_client_draining(config, engine);
        c.send(b"GET /old/ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        let r = c.try_read_response().expect("an answer to the upgrade");
        assert_eq!((r.status(), r.header("location")), (301, Some("https://new.example/")), "{}", r.head.raw);
        assert!(r.has_token("connection", "close"), "{}", r.head.raw);
        c.expect_closed_within(Duration::from_secs(10));
        assert_exit_0(&mut proxy, Duration::from_secs(15));
    }
    // A response whose head promised keep-alive before the drain and whose body ended after
    // the drain's grace: its client may send its next request at once, and gets a grace of
    // its own to do so (it was closed at once, and that request lost).
    fn a_response_that_ends_after_the_grace_gets_a_grace_of_its_own(engine) {
        let backend = LockStep::bind();
        let origin = Origin::start("o");
        let mut proxy = Config::new()
            .upstream("slow", &[backend.addr()])
            .upstream("main", &[origin.addr()])
            .route("slow", "path_prefix = \"/slow\"")
            .route("main", "")
            .server("shutdown_timeout", "\"30s\"")
            .server("drain_grace", "\"2s\"")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let mut idle = Client::connect(proxy.addr());
        idle.send(&get("example.com", "/"));
        assert_eq!(idle.read_response().status(), 200);
        c.send(&get("example.com", "/slow"));
        let mut conn = backend.accept();
        conn.read_head();
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf");
        let head = c.read_head().expect("the head, before the drain");
        assert!(!head.raw.to_ascii_lowercase().contains("close"), "{}", head.raw);
        proxy.terminate();
        // The idle connection is closed when the drain's grace ends.
        idle.expect_closed_within(Duration::from_secs(10));
        conn.write(b"-rest");
        assert_eq!(c.read_body("GET", &head).expect("the body"), b"half-rest");
        // The next request goes out once the proxy has counted the response's end (and so
        // is waiting for it): without a grace of its own, the connection is closed by then.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the late body counted", |m| {
            m.value("edgeshard_client_bytes_sent_total", &[]) == 10.0
        });
        c.send(&get("example.com", "/next"));
        assert_last_response(&mut c, "o", "the request sent after the late response");
        assert_exit_0(&mut proxy, Duration::from_secs(15));
    }

    fn sigquit_drains_like_sigterm(engine) {
        let backend = LockStep::bind();
        let mut proxy = Config::single(backend.addr()).server("shutdown_timeout", "\"20s\"").start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/slow"));
        let mut conn = backend.accept();
        conn.read_head();
        proxy.signal(libc::SIGQUIT);
        wait_until_refused(&proxy, Duration::from_secs(5));
        assert!(proxy.is_running(), "SIGQUIT must drain, not kill:\n{}", proxy.output());
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
        assert_last_response(&mut c, "done", "in flight at SIGQUIT");
        assert_exit_0(&mut proxy, Duration::from_secs(10));
    }
    fn sigterm_with_1000_connections_answers_every_request(engine) {
        // 1,000 client connections: most idle after one request, 100 mid-request (the head
        // reached the backend, which holds the response until after SIGTERM), and 50 of the
        // idle ones send a request once the drain has begun. The test holds ~1,100
        // descriptors, the proxy ~1,100 (it raises its own limit to the hard one).
        const TOTAL: usize = 1000;
        const HELD: usize = 100;
        const LATE: usize = 50;
        let limit = raise_fd_limit(4096);
        assert!(
            limit >= 1400,
            "this test needs ~1,400 descriptors; RLIMIT_NOFILE allows {limit} (raise the hard limit)"
        );
        let origin = Origin::start("o");
        let hold = LockStep::bind();
        let mut proxy = Config::new()
            .server("shutdown_timeout", "\"30s\"")
            .server("drain_grace", "\"5s\"")
            .limit("max_connections_per_shard", "4096")
            .upstream("fast", &[origin.addr()])
            .upstream("hold", &[hold.addr()])
            .route("hold", "path_prefix = \"/hold/\"")
            .route("fast", "")
            .start(engine);
        let addr = proxy.addr();

        let mut idle: Vec<Client> = (0..TOTAL - HELD)
            .map(|i| {
                let mut c = Client::connect(addr);
                c.send(&get("example.com", &format!("/idle/{i}")));
                assert_eq!(c.read_response().status(), 200, "idle client {i}");
                c
            })
            .collect();
        let mut held: Vec<(Client, LockConn)> = (0..HELD)
            .map(|i| {
                let mut c = Client::connect(addr);
                c.send(&get("example.com", &format!("/hold/{i}")));
                let mut conn = hold.accept();
                let head = conn.read_head();
                assert!(head.starts_with(&format!("GET /hold/{i} ")), "{head:?}");
                (c, conn)
            })
            .collect();

        let t0 = Instant::now();
        proxy.terminate();
        wait_until_refused(&proxy, Duration::from_secs(10));
        // Late requests: the earliest idle clients (long past the proxy's 200 ms hot read,
        // waiting on readiness) and the latest (likely still in it), so both waits are used.
        let late: Vec<usize> = (0..LATE / 2).chain(idle.len() - LATE / 2..idle.len()).collect();
        for &i in &late {
            idle[i].send(&get("example.com", &format!("/late/{i}")));
        }
        for (i, (_, conn)) in held.iter_mut().enumerate() {
            let body = format!("held-{i}");
            conn.write(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        }
        for (i, (c, _)) in held.iter_mut().enumerate() {
            assert_last_response(c, &format!("held-{i}"), &format!("held request {i}"));
        }
        for &i in &late {
            let r = idle[i]
                .try_read_response()
                .unwrap_or_else(|e| panic!("late request {i} (sent while draining) lost: {e}"));
            assert_eq!(r.status(), 200, "late request {i}");
            assert!(r.has_token("connection", "close"), "late request {i}:\n{}", r.head.raw);
        }
        // Every connection, idle or answered, is closed by the proxy: after the grace at the
        // latest.
        for (i, c) in idle.iter_mut().enumerate() {
            match c.read_until_closed(Duration::from_secs(20)) {
                Ok(rest) => assert!(rest.is_empty(), "idle client {i}: unexpected bytes {rest:?}"),
                Err(e) => panic!("idle client {i} not closed: {e}"),
            }
        }
        assert_exit_0(&mut proxy, Duration::from_secs(25));
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(30), "exit took {took:?}, past shutdown_timeout (30 s)");
        let out = proxy.output();
        assert!(!out.contains("still open"), "connections left unfinished:\n{out}");
    }
}

both_engines! {
    fn connections_queued_at_sigterm_are_served(engine) {
        // Shutting a listening socket down resets the connections in its accept queue. With
        // the proxy stopped (SIGSTOP) the kernel completes these handshakes and queues them
        // unaccepted; SIGTERM is then pending when SIGCONT resumes it, so the drain begins
        // with them queued (or some accepted just before: both must be served).
        const QUEUED: usize = 200;
        let origin = Origin::start("o");
        let mut proxy = Config::single(origin.addr())
            .server("shutdown_timeout", "\"30s\"")
            .server("drain_grace", "\"5s\"")
            .start(engine);
        proxy.signal(libc::SIGSTOP);
        let mut clients: Vec<Client> = (0..QUEUED)
            .map(|i| {
                let mut c = Client::connect(proxy.addr());
                c.send(&get("example.com", &format!("/queued/{i}")));
                c
            })
            .collect();
        proxy.signal(libc::SIGTERM);
        proxy.signal(libc::SIGCONT);
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c
                .try_read_response()
                .unwrap_or_else(|e| panic!("queued connection {i} lost at SIGTERM: {e}"));
            assert_eq!(r.status(), 200, "queued connection {i}");
            // Connections the shard took off the queue as SIGCONT resumed it, before the
            // signal thread started the drain, were answered with keep-alive: they are closed
            // after the grace instead. Either way the proxy closes every one.
            if !r.has_token("connection", "close") {
                let rest = c.read_until_closed(Duration::from_secs(20));
                assert!(matches!(&rest, Ok(b) if b.is_empty()), "queued connection {i}: {rest:?}");
            }
        }
        assert_exit_0(&mut proxy, Duration::from_secs(20));
    }
}
