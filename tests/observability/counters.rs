//! Counters off the main path: connection limit, 408 for silent clients, pool evictions by
//! reason, pool checks that peeked, responses received through the ring, retries.

use super::*;

both_engines! {
    fn connections_over_the_limit_are_counted_as_rejected(engine) {
        let o = Origin::start("o");
        let proxy = Config::single(o.addr())
            .admin("")
            .limit("max_connections_per_shard", "1")
            .start(engine);
        let mut c1 = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c1, "x.example", "/").status(), 200);
        let mut c2 = Client::connect(proxy.addr());
        c2.expect_closed();
        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "one rejected connection", |m| {
            m.value("edgeshard_connections_rejected_total", &[("reason", "max_connections_per_shard")]) == 1.0
        });
        assert_eq!(m.value("edgeshard_connections_active", &[]), 1.0, "\n{}", m.text);
        assert_eq!(m.value("edgeshard_request_duration_seconds_count", &[]), 1.0);
    }

    fn a_silent_client_is_counted_and_logged_as_408(engine) {
        let dir = TempDir::new("408");
        let log = dir.path("access.log");
        let o = Origin::start("o");
        let proxy = Config::single(o.addr())
            .admin("")
            .timeout("client_header", "300ms")
            .section("log", &access_log_section(&log, "access_format = \"json\""))
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let r = c.read_response();
        assert_eq!(r.status(), 408, "{}", r.head.raw);
        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the 408", |m| {
            m.value("edgeshard_request_duration_seconds_count", &[]) == 1.0
        });
        assert_eq!(m.value("edgeshard_responses_generated_total", &[("status", "408"), ("reason", "timeout")]), 1.0);
        assert_eq!(m.value("edgeshard_route_requests_total", &[("route", "none"), ("class", "4xx")]), 1.0);
        assert_eq!(m.sum("edgeshard_route_requests_total", &[]), 1.0);
        let lines = wait_for_files(dir.root(), Duration::from_secs(10), "the 408 line", || {
            let l = read_lines(&log);
            (!l.is_empty()).then_some(l)
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v = parse_json_line(&lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]));
        assert_eq!(v["status"], 408, "{}", lines[0]);
        assert_eq!((v["method"].as_str(), v["route"].is_null(), v["backend"].is_null()), (Some(""), true, true), "{}", lines[0]);
    }

    fn pool_evictions_are_counted_by_reason(engine) {
        // "idles": an origin whose pooled connection outlives idle_timeout = 1s.
        // "dies": a backend that closes its connection after answering (keep-alive announced).
        // "full": max_idle_per_backend = 1 and two requests in flight at once.
        let idles = Origin::start("idles");
        let dies = LockStep::bind();
        let full = LockStep::bind();
        let proxy = Config::new()
            .admin("")
            .upstream_with("idles", &[idles.addr()], "idle_timeout = \"1s\"")
            .upstream("dies", &[dies.addr()])
            .upstream_with("full", &[full.addr()], "max_idle_per_backend = 1")
            .route("idles", "path_prefix = \"/idles\"")
            .route("dies", "path_prefix = \"/dies\"")
            .route("full", "path_prefix = \"/full\"")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/idles").status(), 200);

        c.send(&get("x.example", "/dies"));
        let mut d = dies.accept();
        d.read_head();
        d.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(c.read_response().body_str(), "ok");
        d.close();

        let mut c2 = Client::connect(proxy.addr());
        c.send(&get("x.example", "/full/1"));
        c2.send(&get("x.example", "/full/2"));
        let (mut f1, mut f2) = (full.accept(), full.accept());
        f1.read_head();
        f2.read_head();
        for f in [&mut f1, &mut f2] {
            f.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(c2.read_response().status(), 200);

        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "one eviction of each kind", |m| {
            let e = |r: &str| m.value("edgeshard_pool_evictions_total", &[("reason", r)]);
            e("idle_timeout") == 1.0 && e("closed_by_backend") == 1.0 && e("pool_full") == 1.0
        });
        let idle = |u: &str, a: SocketAddr| m.value("edgeshard_upstream_connections_idle", &[("upstream", u), ("backend", &a.to_string())]);
        assert_eq!((idle("idles", idles.addr()), idle("dies", dies.addr()), idle("full", full.addr())), (0.0, 0.0, 1.0), "\n{}", m.text);
        assert_eq!(m.value("edgeshard_pool_misses_total", &[]), 4.0);
        assert_eq!(m.value("edgeshard_pool_hits_total", &[]), 0.0);
    }

    // `limits.max_idle_upstream_per_shard` bounds the idle connections of all backends
    // together: at it, a connection returned closes the oldest idle one, whichever its
    // backend (here a's, when b's comes back), instead of keeping both.
    fn the_shard_bound_on_idle_connections_closes_the_oldest(engine) {
        let (a, b) = (Origin::start("a"), Origin::start("b"));
        let proxy = Config::new()
            .upstream("a", &[a.addr()])
            .upstream("b", &[b.addr()])
            .route("a", "host = \"a.example\"")
            .route("b", "host = \"b.example\"")
            .limit("max_idle_upstream_per_shard", "1")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for host in ["a.example", "b.example", "b.example"] {
            assert_eq!(get_on(&mut c, host, "/").status(), 200);
        }
        assert!(a.wait_for(Duration::from_secs(10), |s| s.closed == 1), "a's idle connection was not closed");
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_pool_evictions_total", &[("reason", "shard_full")]), 1.0);
        assert_eq!(m.value("edgeshard_pool_hits_total", &[]), 1.0, "b's connection was kept and reused");
        assert_eq!((a.accepted(), b.accepted()), (1, 1));
    }

    // On io_uring a pooled connection is looked at through the receive posted when it
    // was returned (no syscall); on epoll each check peeks with recv(MSG_PEEK). One client's
    // sequential requests: the shard has always waited in the kernel since the checkin.
    fn pool_checks_peek_only_on_epoll(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).admin("").start(engine);
        let mut c = Client::connect(proxy.addr());
        for i in 0..10 {
            assert_eq!(get_on(&mut c, "x.example", &format!("/{i}")).status(), 200);
        }
        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "ten requests", |m| {
            m.value("edgeshard_request_duration_seconds_count", &[]) == 10.0
        });
        assert_eq!(m.value("edgeshard_pool_hits_total", &[]), 9.0, "\n{}", m.text);
        assert_eq!(origin.accepted(), 1);
        let probes = m.value("edgeshard_pool_probes_total", &[]);
        // Every small response arrives in one of the shard's ring buffers (io_uring: a
        // receive is posted on the fresh connection too, once its request went out).
        let ring = |r: &str| m.value("edgeshard_pool_ring_receives_total", &[("result", r)]);
        match engine {
            Engine::Uring => {
                assert_eq!(probes, 0.0, "\n{}", m.text);
                assert_eq!((ring("buffered"), ring("empty")), (10.0, 0.0), "\n{}", m.text);
            }
            Engine::Epoll => {
                assert!(probes >= 9.0, "{probes} probes\n{}", m.text);
                assert_eq!((ring("buffered"), ring("empty")), (0.0, 0.0), "\n{}", m.text);
            }
        }
    }

    // 40 exchanges await small responses at once (held at the origin, then released): each
    // is received into one of the shard's ring buffers (io_uring), none finds the ring empty
    // and reads with a recv of its own (with 16 buffers, 24 did).
    fn forty_responses_awaited_at_once_each_get_a_ring_buffer(engine) {
        const N: usize = 40;
        let (origin, gate) = held_origin("/held");
        let proxy = Config::single(origin.addr()).admin("").start(engine);
        let mut clients: Vec<Client> = (0..N).map(|_| Client::connect(proxy.addr())).collect();
        for c in &mut clients {
            c.send(&get("x.example", "/held"));
        }
        let all_held = |s: &crate::support::origin::OriginState| s.requests.iter().filter(|r| r.path() == "/held").count() == N;
        assert!(origin.wait_for(Duration::from_secs(10), all_held), "{N} requests reach the origin");
        gate.open();
        for c in &mut clients {
            assert_eq!(c.read_response().status(), 200);
        }
        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "40 requests", |m| {
            m.value("edgeshard_request_duration_seconds_count", &[]) == N as f64
        });
        let ring = |r: &str| m.value("edgeshard_pool_ring_receives_total", &[("result", r)]);
        let expected = match engine {
            Engine::Uring => (N as f64, 0.0),
            Engine::Epoll => (0.0, 0.0),
        };
        assert_eq!((ring("buffered"), ring("empty")), expected, "\n{}", m.text);
    }

    fn retries_are_counted(engine) {
        // A pooled connection that the backend closes after reading the next request (no
        // response byte): the idempotent, bodiless GET is sent once more on a fresh one.
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).admin("").start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("x.example", "/1"));
        let mut a = backend.accept();
        a.read_head();
        a.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
        assert_eq!(c.read_response().body_str(), "1");
        c.send(&get("x.example", "/2"));
        let head = a.read_head();
        assert!(head.starts_with("GET /2 "), "the second request reuses the pooled connection: {head:?}");
        a.close();
        let mut b = backend.accept();
        let head = b.read_head();
        assert!(head.starts_with("GET /2 "), "{head:?}");
        b.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2");
        assert_eq!(c.read_response().body_str(), "2");
        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "two requests", |m| {
            m.value("edgeshard_request_duration_seconds_count", &[]) == 2.0
        });
        assert_eq!(m.value("edgeshard_retries_total", &[]), 1.0, "\n{}", m.text);
        assert_eq!(m.value("edgeshard_pool_hits_total", &[]), 1.0);
        let b = backend.addr().to_string();
        // The retry connects afresh without looking in the pool.
        assert_eq!(m.value("edgeshard_pool_misses_total", &[]), 1.0);
        assert_eq!(m.value("edgeshard_upstream_connects_total", &[("upstream", "main"), ("backend", &b)]), 2.0);
        assert_eq!(m.value("edgeshard_upstream_responses_total", &[("upstream", "main"), ("backend", &b), ("class", "2xx")]), 2.0);
        assert_eq!(m.value("edgeshard_route_requests_total", &[("route", "route0"), ("class", "2xx")]), 2.0);
    }
}
