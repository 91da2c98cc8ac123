//! Who gets in (issue 16): listeners' and routes' `allow`/`deny` lists (403, counted), and the
//! client address they are checked against: the peer, or, behind a proxy listed in
//! `server.trusted_proxies`, the address its `X-Forwarded-For` names.

use crate::support::*;
use std::net::TcpStream;
use std::time::Duration;

fn denied(admin: std::net::SocketAddr, scope: &str, n: f64) {
    scrape_until(
        admin,
        None,
        Duration::from_secs(5),
        "access denials counted",
        |m| m.value("edgeshard_access_denied_total", &[("scope", scope)]) == n,
    );
}

/// The descriptor numbers process `pid` has open.
fn descriptors(pid: u32) -> Vec<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Sets process `pid`'s soft RLIMIT_NOFILE to `soft`, or back to its hard limit (`None`).
/// RLIMIT_NOFILE bounds descriptor numbers, and a new descriptor takes the lowest free one.
fn set_soft_nofile(pid: u32, soft: Option<u64>) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on the proxy's pid, reading its limit into `old`, which we own.
    let got = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(got, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft.unwrap_or(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, setting a soft limit at most the hard one.
    let set = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

both_engines! {
    // Forwarding claims other than X-Forwarded-For (Forwarded, X-Forwarded-Port, ...) are
    // believed like it: kept from a trusted proxy, dropped from anyone else (a backend that
    // builds links from `Forwarded: host=` would otherwise take a client's word, and a cache
    // would keep that answer for everyone).
    fn forwarding_claims_only_from_trusted_proxies(engine) {
        let origin = Origin::start("o");
        // With the client-address names "client IP" code reads first (PHP's HTTP_CLIENT_IP,
        // HTTP_X_FORWARDED).
        let claims = [("Host", "e.example"), ("Forwarded", "host=evil.example"), ("X-Forwarded-Port", "8443"), ("X-Forwarded-Prefix", "/evil"),
            ("Client-IP", "6.6.6.6"), ("X-Forwarded", "for=6.6.6.6"), ("X-Originating-IP", "6.6.6.6")];
        for (trusted, kept) in [("[\"10.0.0.0/8\"]", false), ("[\"127.0.0.1\"]", true)] {
            let proxy = Config::single(origin.addr()).server("trusted_proxies", trusted).start(engine);
            let mut c = Client::connect(proxy.addr());
            c.send(&request("GET", "/x", &claims, b""));
            assert_eq!(c.read_response().status(), 200);
            let rec = origin.last_request();
            for name in ["forwarded", "x-forwarded-port", "x-forwarded-prefix", "client-ip", "x-forwarded", "x-originating-ip"] {
                assert_eq!(rec.has_header(name), kept, "{name} from a trusted={kept} peer: {}", rec.raw_head);
            }
        }
    }

    fn route_lists_answer_403_and_the_backend_never_sees_the_request(engine) {
        let origin = Origin::start("o");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "path_prefix = \"/in/\"\nallow = [\"127.0.0.1/32\"]")
            .route("main", "path_prefix = \"/out/\"\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\"]")
            .route("main", "path_prefix = \"/deny/\"\ndeny = [\"127.0.0.0/8\"]")
            .route("main", "")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for (path, status) in [("/in/a", 200), ("/out/a", 403), ("/deny/a", 403), ("/open", 200)] {
            c.send(&get("example.com", path));
            let r = c.read_response();
            assert_eq!(r.status(), status, "{path}");
            if status == 403 {
                assert!(r.header("Connection").is_none(), "a 403 keeps the connection: {:?}", r.head);
            }
        }
        let seen: Vec<String> = origin.requests().iter().map(|r| r.path().to_string()).collect();
        assert_eq!(seen, ["/in/a", "/open"]);
        denied(proxy.admin_addr(), "route", 2.0);
    }

    fn a_listener_list_refuses_before_reading_anything(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr())
            .only_listener("address = \"127.0.0.1:0\"\ndeny = [\"127.0.0.1\"]")
            .admin("")
            .start(engine);
        // Nothing sent: the answer comes anyway, then the close.
        let mut c = Client::connect(proxy.addr());
        let r = c.read_response();
        assert_eq!(r.status(), 403);
        assert!(r.has_token("Connection", "close"), "{:?}", r.head);
        c.expect_closed();
        // A request sent at once gets the same.
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/x"));
        assert_eq!(c.read_response().status(), 403);
        c.expect_closed();
        assert_eq!(origin.request_count(), 0);
        denied(proxy.admin_addr(), "listener", 2.0);
    }

    fn a_listener_allow_list_lets_its_networks_in(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr())
            .only_listener("address = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/x"));
        assert_eq!(c.read_response().status(), 200);
    }

    // Behind a trusted proxy the client is the address X-Forwarded-For names: that is what a
    // route's list sees, and the chain is passed on with the peer appended.
    fn behind_a_trusted_proxy_the_forwarded_client_is_checked(engine) {
        let origin = Origin::start("o");
        let proxy = Config::new()
            .server("trusted_proxies", "[\"127.0.0.1\", \"10.9.0.0/16\"]")
            .upstream("main", &[origin.addr()])
            .route("main", "allow = [\"203.0.113.0/24\"]")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/a", &[("Host", "e.example"), ("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.9.1.1")], b""));
        assert_eq!(c.read_response().status(), 200);
        let xff = origin.last_request().header("x-forwarded-for").map(str::to_string);
        assert_eq!(xff.as_deref(), Some("6.6.6.6, 203.0.113.7, 10.9.1.1, 127.0.0.1"));
        // The rightmost untrusted hop decides: a forged entry to its left does not.
        c.send(&request("GET", "/b", &[("Host", "e.example"), ("X-Forwarded-For", "203.0.113.7, 6.6.6.6")], b""));
        assert_eq!(c.read_response().status(), 403);
        // Without the field the client is the proxy itself, which is not allowed.
        c.send(&get("e.example", "/c"));
        assert_eq!(c.read_response().status(), 403);
        assert_eq!(origin.request_count(), 1);
    }

    // A reload that takes a peer out of trusted_proxies reaches its open connections: from
    // their next request its X-Forwarded-For is a claim again (found by the session 12
    // review: a forged address kept passing a route's allow on a connection opened before).
    fn a_reload_that_untrusts_a_proxy_reaches_its_open_connections(engine) {
        let origin = Origin::start("o");
        let config = |trusted: &str| {
            Config::new()
                .server("trusted_proxies", trusted)
                .upstream("main", &[origin.addr()])
                .route("main", "allow = [\"10.0.0.0/8\"]")
                .admin("")
        };
        let proxy = config("[\"127.0.0.1\"]").start(engine);
        let xff = [("Host", "e.example"), ("X-Forwarded-For", "10.1.1.1")];
        let mut conns = [Client::connect(proxy.addr()), Client::connect(proxy.addr())];
        for c in &mut conns {
            c.send(&request("GET", "/a", &xff, b""));
            assert_eq!(c.read_response().status(), 200);
        }
        // Both idle, parked past the hot window.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "both idle", |m| {
            m.value("edgeshard_connections_idle", &[]) == 2.0
        });
        std::fs::write(proxy.config_path(), config("[]").render()).unwrap();
        let r = admin_post(proxy.admin_addr(), "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        for c in &mut conns {
            c.send(&request("GET", "/b", &xff, b""));
            assert_eq!(c.read_response().status(), 403, "no longer believed");
        }
        assert_eq!(origin.request_count(), 2);
        // And the other way: trusted again, believed again on the same connections.
        std::fs::write(proxy.config_path(), config("[\"127.0.0.1\"]").render()).unwrap();
        assert_eq!(admin_post(proxy.admin_addr(), "/reload", None).status, 200);
        for c in &mut conns {
            c.send(&request("GET", "/c", &xff, b""));
            assert_eq!(c.read_response().status(), 200);
        }
    }

    // From a peer that is not a trusted proxy, X-Forwarded-For is a claim: it neither admits
    // the request nor reaches the backend.
    fn an_untrusted_peer_cannot_claim_another_address(engine) {
        let origin = Origin::start("o");
        let proxy = Config::new()
            .server("trusted_proxies", "[\"10.0.0.0/8\"]")
            .upstream("main", &[origin.addr()])
            .route("main", "path_prefix = \"/private/\"\nallow = [\"203.0.113.0/24\"]")
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/private/a", &[("Host", "e.example"), ("X-Forwarded-For", "203.0.113.7")], b""));
        assert_eq!(c.read_response().status(), 403);
        c.send(&request("GET", "/open", &[("Host", "e.example"), ("X-Forwarded-For", "203.0.113.7")], b""));
        assert_eq!(c.read_response().status(), 200);
        let rec = origin.last_request();
        assert_eq!(rec.header_all("x-forwarded-for"), ["127.0.0.1"], "{}", rec.raw_head);
    }
}

/// Opens `n` connections from 127.0.0.1, each sending the start of a head (a connection
/// that sends nothing may be reclaimed for a new one at a limit; one mid-head is not), waits
/// until the proxy has taken all of them in (accepted, and `refused` of them closed at accept
/// for `reason`), then completes one request with `Connection: close` on each. Returns how
/// many were answered.
fn answered_of(proxy: &Proxy, n: usize, reason: &str, refused: f64) -> usize {
    let mut conns: Vec<Client> = (0..n)
        .map(|_| {
            let mut c = Client::connect(proxy.addr());
            let _ = c.try_send(b"GET / HTTP/1.1\r\n");
            c
        })
        .collect();
    scrape_until(
        proxy.admin_addr(),
        None,
        Duration::from_secs(10),
        "connections taken in",
        |m| {
            m.value("edgeshard_connections_accepted_total", &[]) >= n as f64
                && m.value(
                    "edgeshard_connections_rejected_total",
                    &[("reason", reason)],
                ) == refused
        },
    );
    let mut answered = 0;
    for c in &mut conns {
        let _ = c.try_send(b"Host: e.example\r\nConnection: close\r\n\r\n");
        if let Ok(bytes) = c.read_until_closed(Duration::from_secs(5)) {
            answered += usize::from(bytes.starts_with(b"HTTP/1.1 200 "));
        }
    }
    answered
}

both_engines! {
    // Connections from one address are bounded across all shards together (SO_REUSEPORT
    // spreads them; a per-shard count would let twice as many in), and a closed one frees
    // its place.
    fn connections_per_client_are_bounded_across_shards(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr())
            .limit("max_connections_per_client", "4")
            .admin("")
            .start_shards(engine, 2);
        assert_eq!(answered_of(&proxy, 8, "max_connections_per_client", 4.0), 4);
        // The four answered connections closed: their places are free again.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "connections closed", |m| {
            m.value("edgeshard_connections_active", &[]) == 0.0
        });
        let mut c = Client::connect(proxy.addr());
        c.send(&get("e.example", "/again"));
        assert_eq!(c.read_response().status(), 200);
    }

    // At a connection limit the shard's longest-idle keep-alive connection is closed to make
    // room (nginx reuses idle connections when out of worker_connections): the new client is
    // served, not reset, and the other idle ones stay (found by the probe7 review: five idle
    // sockets locked every new client out for client_idle).
    fn idle_connections_make_room_at_the_connection_limits(engine) {
        for limit in ["max_connections_per_shard", "max_connections"] {
            let origin = Origin::start("o");
            let proxy = Config::single(origin.addr()).limit(limit, "3").admin("").start(engine);
            let mut idle: Vec<Client> = (0..3)
                .map(|i| {
                    let mut c = Client::connect(proxy.addr());
                    c.send(&get("e.example", &format!("/idle{i}")));
                    assert_eq!(c.read_response().status(), 200);
                    c
                })
                .collect();
            scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "three idle connections parked", |m| {
                m.value("edgeshard_connections_idle", &[]) == 3.0
            });
            let mut fresh = Client::connect(proxy.addr());
            fresh.send(&get("e.example", "/new"));
            assert_eq!(fresh.read_response().status(), 200, "{limit}: a new client at the limit");
            let closed = idle[0].read_until_closed(Duration::from_secs(5));
            assert!(closed.as_ref().is_ok_and(|b| b.is_empty()), "{limit}: the longest idle was not closed silently: {closed:?}");
            for c in &mut idle[1..] {
                c.send(&get("e.example", "/again"));
                assert_eq!(c.read_response().status(), 200, "{limit}");
            }
            let m = scrape(proxy.admin_addr(), None);
            assert_eq!(m.value("edgeshard_connections_reclaimed_total", &[]), 1.0, "{limit}");
            assert_eq!(m.value("edgeshard_connections_rejected_total", &[("reason", limit)]), 0.0, "{limit}");
        }
    }

    // Out of descriptors before any connection bound (found by the session 12 resource
    // review: 19,950 silent connections under a 20,000 descriptor limit locked out every
    // client and the admin listener). By default a shard's bound is half the descriptors,
    // so it closes silent connections for new ones before `accept` fails; and with a bound
    // set above the limit, an `accept` that fails for want of descriptors closes one too.
    fn a_flood_of_silent_connections_does_not_exhaust_the_descriptors(engine) {
        for bound in [None, Some("1000000")] {
            let origin = Origin::start("o");
            // Silent connections are not closed by their own timeout within the test.
            let mut config = Config::single(origin.addr()).admin("").timeout("client_header", "120s");
            if let Some(b) = bound {
                config = config.limit("max_connections_per_shard", b);
            }
            let proxy = config.start(engine);
            // Descriptors in use now, plus room for a few connections, then a reload so
            // the default bound is taken from the lowered limit.
            let open = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid())).unwrap().count() as u64;
            let limit = libc::rlimit { rlim_cur: open + 60, rlim_max: open + 60 };
            // SAFETY: prlimit on the proxy's pid, reading nothing back (null old limit).
            let set = unsafe { libc::prlimit(proxy.pid() as i32, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
            assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
            assert_eq!(admin_post(proxy.admin_addr(), "/reload", None).status, 200);
            // Twice as many silent connections as there are descriptors left.
            let silent: Vec<TcpStream> = (0..120).filter_map(|_| TcpStream::connect(proxy.addr()).ok()).collect();
            assert!(silent.len() >= 100);
            // A client that sends its request gets in (retrying a connection that was
            // closed unanswered, as a client whose connection was reclaimed would).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let served = loop {
                let got = Client::try_connect(proxy.addr()).ok().and_then(|mut c| {
                    c.timeout = Duration::from_secs(3);
                    c.try_send(&get("e.example", "/in")).ok()?;
                    c.try_read_response().ok()
                });
                if got.as_ref().is_some_and(|r| r.status() == 200) || std::time::Instant::now() > deadline {
                    break got.map(|r| r.status());
                }
            };
            assert_eq!(served, Some(200), "{bound:?}: a new client gets in");
            drop(silent);
            let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(20), "reclaimed", |m| {
                m.value("edgeshard_connections_reclaimed_total", &[]) > 0.0
            });
            assert!(m.value("edgeshard_connections_reclaimed_total", &[]) > 0.0, "{bound:?}");
        }
    }

    // Out of descriptors, idle pooled upstream connections are closed before any client's
    // (session 12 session review F2): an accept with a client waiting, then the upstream
    // connect its request needs, each close the shard's oldest idle pooled connection, and
    // the idle and the silent client connections all stay open.
    fn out_of_descriptors_pooled_connections_go_before_clients(engine) {
        let (a, b) = (Origin::start("a"), Origin::start("b"));
        let proxy = Config::new()
            .upstream("a", &[a.addr()])
            .upstream("b", &[b.addr()])
            .route("a", "host = \"a.example\"")
            .route("b", "host = \"b.example\"")
            .limit("max_connections_per_shard", "1000000")
            .timeout("client_header", "120s")
            .admin("")
            .start(engine);
        // One idle pooled connection to each backend, a's the older.
        let mut kept = Client::connect(proxy.addr());
        for host in ["a.example", "b.example"] {
            kept.send(&get(host, "/warm"));
            assert_eq!(kept.read_response().status(), 200);
        }
        let fds = || descriptors(proxy.pid());
        let set_soft = |soft: Option<u64>| set_soft_nofile(proxy.pid(), soft);
        // Every descriptor taken by four silent clients: the limit bounds descriptor numbers
        // (a new one takes the lowest free), so it is set where four numbers are free below.
        let open = fds();
        let limit = (0..).find(|&l| l - open.iter().filter(|&&fd| fd < l).count() as u64 == 4).unwrap();
        set_soft(Some(limit));
        let mut silent: Vec<Client> = (0..4).map(|_| Client::connect(proxy.addr())).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fds().len() < open.len() + 4 {
            assert!(std::time::Instant::now() < deadline, "the silent clients were not accepted");
            std::thread::yield_now();
        }
        let mut fresh = Client::connect(proxy.addr());
        fresh.send(&get("a.example", "/new"));
        assert_eq!(fresh.read_response().status(), 200, "a new client out of descriptors");
        // Every client connection is still open: each is served in turn on the connection
        // the new client's request left in the pool.
        for c in std::iter::once(&mut kept).chain(silent.iter_mut()) {
            c.send(&get("a.example", "/again"));
            assert_eq!(c.read_response().status(), 200, "a client connection was closed");
        }
        set_soft(None);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_pool_evictions_total", &[("reason", "out_of_descriptors")]), 2.0);
        assert_eq!(m.value("edgeshard_connections_reclaimed_total", &[]), 0.0);
    }

    // Out of descriptors with several clients queued (review 13): each accept closes one
    // idle pooled connection and the next accept follows within a turn or two. The 50 ms
    // `reclaim::ROOM_WAIT` is a wait for the close just made, not for one made for a client
    // already accepted: were it kept across a successful accept, each further queued client
    // would wait it out (1 accept per 50 ms, 20 a second, for the whole queue).
    fn out_of_descriptors_a_queue_of_clients_is_not_accepted_one_per_room_wait(engine) {
        let (origin, release) = held_origin("/hold");
        let proxy = Config::new()
            .upstream("a", &[origin.addr()])
            .route("a", "")
            .limit("max_connections_per_shard", "1000000")
            .timeout("client_header", "120s")
            .admin("")
            .start(engine);
        // 24 idle pooled connections: 24 requests at once, each held by the origin.
        let mut warm: Vec<Client> = (0..24).map(|_| Client::connect(proxy.addr())).collect();
        for c in &mut warm {
            c.send(&get("a.example", "/hold"));
        }
        // All 24 held at the origin at once, each on a connection of its own: then released.
        let all_in = origin.wait_for(Duration::from_secs(10), |s| s.heads.len() == 24);
        assert!(all_in, "the 24 requests did not all reach the origin");
        release.open();
        for c in &mut warm {
            assert_eq!(c.read_response().status(), 200);
        }
        assert_eq!(origin.accepted(), 24);
        let fds = || descriptors(proxy.pid());
        let set_soft = |soft: Option<u64>| set_soft_nofile(proxy.pid(), soft);
        // No descriptor free: the limit is the lowest free number.
        let open = fds();
        let limit = (0..).find(|l| !open.contains(l)).unwrap();
        set_soft(Some(limit));
        // 16 clients queued at once, each needing a descriptor at its accept (each accept
        // closes an idle pooled connection: 8 or more stay). Their requests go one at a time,
        // so that each finds a pooled connection: 16 at once would need 16, and those past
        // the pooled ones would fail to connect for want of a descriptor (502), as they do in
        // nginx (a full run of the suite on a loaded host ordered them so).
        let started = std::time::Instant::now();
        let mut fresh: Vec<Client> = (0..16).map(|_| Client::connect(proxy.addr())).collect();
        for c in &mut fresh {
            c.send(&get("a.example", "/new"));
            assert_eq!(c.read_response().status(), 200, "a queued client out of descriptors");
        }
        let took = started.elapsed();
        set_soft(None);
        let m = scrape(proxy.admin_addr(), None);
        // One accept per ROOM_WAIT took 15 x 50 ms = 750 ms at least (768 ms and 729 ms
        // measured before the fix, under 100 ms after); a speed is not asserted here (this
        // host is shared), only that every queued client is served and no client is closed.
        eprintln!("16 queued clients out of descriptors served in {took:?}");
        // (A descriptor the proxy had open when the limit was set, and closed since, may
        // have made room for one of them.)
        let evicted = m.value("edgeshard_pool_evictions_total", &[("reason", "out_of_descriptors")]);
        assert!((12.0..=16.0).contains(&evicted), "{evicted}");
        assert_eq!(m.value("edgeshard_connections_reclaimed_total", &[]), 0.0);
    }

    // Without a parked connection, the connection that has waited longest in its own task
    // makes room: here new connections that have not sent their first request (nginx's
    // reusable connections include them), so connections that open and say nothing cannot
    // lock clients out. The oldest is closed silently (no 408: it asked nothing); a
    // connection sending its head, however slowly, is not closed.
    fn silent_new_connections_make_room_at_the_connection_limits(engine) {
        for limit in ["max_connections_per_shard", "max_connections"] {
            let origin = Origin::start("o");
            let proxy = Config::single(origin.addr()).limit(limit, "3").admin("").start(engine);
            let mut slow = Client::connect(proxy.addr());
            slow.send(b"GET /slow HTTP/1.1\r\n");
            let mut silent: Vec<Client> = (0..2).map(|_| Client::connect(proxy.addr())).collect();
            scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "two silent connections waiting", |m| {
                m.value("edgeshard_connections_idle", &[]) == 2.0
            });
            let mut fresh = Client::connect(proxy.addr());
            fresh.send(&get("e.example", "/new"));
            assert_eq!(fresh.read_response().status(), 200, "{limit}: a new client at the limit");
            let closed = silent[0].read_until_closed(Duration::from_secs(5));
            assert!(closed.as_ref().is_ok_and(|b| b.is_empty()), "{limit}: the longest silent was not closed silently: {closed:?}");
            silent[1].send(&get("e.example", "/late"));
            assert_eq!(silent[1].read_response().status(), 200, "{limit}: the younger silent one");
            slow.send(b"Host: e.example\r\n\r\n");
            assert_eq!(slow.read_response().status(), 200, "{limit}: the one sending its head");
            let m = scrape(proxy.admin_addr(), None);
            assert_eq!(m.value("edgeshard_connections_reclaimed_total", &[]), 1.0, "{limit}");
            assert_eq!(m.value("edgeshard_connections_rejected_total", &[("reason", limit)]), 0.0, "{limit}");
        }
    }

    fn the_process_total_is_bounded(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr())
            .limit("max_connections", "3")
            .admin("")
            .start_shards(engine, 2);
        assert_eq!(answered_of(&proxy, 5, "max_connections", 2.0), 3);
    }
}
