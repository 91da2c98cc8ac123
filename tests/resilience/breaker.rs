//! Circuit breaking (`[upstream.breaker]`): over a limit, 503 at once.

use super::*;

const OK_KEEP: &[u8] = b"HTTP/1.1 200 OK\r\nX-Backend: lock\r\nContent-Length: 2\r\n\r\nok";
const OK_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nX-Backend: lock\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

both_engines! {
    fn breaker_max_requests_answers_503_at_once_while_a_request_is_in_flight(engine) {
        let lock = LockStep::bind();
        let up = format!("{}\n[upstream.breaker]\nmax_requests = 1\n", backends(&[lock.addr()]));
        let proxy = Proxy::start(&config(true, &up), engine);

        // Request 1 is held at the backend: the one allowed request is in flight.
        let (mut c1, conn) = hold(&proxy, &lock, "/one");

        // Request 2 is over the limit: 503 at once, nothing reaches the backend.
        let t = Instant::now();
        let r = ask_new(proxy.addr(), "/two");
        assert_own_503(&r, "max_requests = 1 with one request in flight");
        // "At once": a proxy that queued it behind the held request would never answer (the
        // test holds request 1 until after this), so any bound works; 5 s is far above the
        // milliseconds a correct answer takes.
        assert!(t.elapsed() < Duration::from_secs(5), "the 503 must come at once; took {:?}", t.elapsed());
        assert_eq!(lock.accepted(), 1, "the rejected request must not reach the backend");

        // Release request 1; the next requests succeed again.
        answer(conn, &mut c1);
        for i in 0..3 {
            let mut c = Client::connect(proxy.addr());
            c.send(&get_req(&format!("/again/{i}")));
            let mut conn = lock.accept();
            assert!(conn.read_head().starts_with(&format!("GET /again/{i} ")));
            conn.write(OK_CLOSE);
            conn.close();
            assert_eq!(served_by(&c.read_response()), "lock", "after the release, request {i} succeeds");
        }
        let b = lock.addr();
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", b), 1.0);
    }
}

both_engines! {
    fn breaker_max_connections_allows_exactly_the_limit(engine) {
        // max_connections = 1 on one shard: the first request may open the one connection
        // (an off-by-one refused it), later ones reuse it; a second concurrent request, which
        // would need a second connection, gets 503 at once.
        let lock = LockStep::bind();
        let up = format!("{}\n[upstream.breaker]\nmax_connections = 1\n", backends(&[lock.addr()]));
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c1, mut conn) = hold(&proxy, &lock, "/one");
        let r = ask_new(proxy.addr(), "/two");
        assert_own_503(&r, "a second connection is over max_connections = 1");
        assert_eq!(lock.accepted(), 1);
        // A keep-alive answer: the proxy pools the one connection.
        conn.write(OK_KEEP);
        assert_eq!(served_by(&c1.read_response()), "lock");
        // Later requests, from new client connections, reuse it: a reuse is not a second
        // connection, so none of them is refused, and the backend accepts no other.
        for i in 0..3 {
            let mut c = Client::connect(proxy.addr());
            c.send(&get_req(&format!("/again/{i}")));
            let head = conn.read_head();
            assert!(head.starts_with(&format!("GET /again/{i} ")), "request {i} on the pooled connection: {head:?}");
            conn.write(OK_KEEP);
            assert_eq!(served_by(&c.read_response()), "lock", "request {i} reuses the one connection");
        }
        assert_eq!(lock.accepted(), 1, "every later request went over the one pooled connection");
        // While the one connection is busy again, a concurrent request is still refused.
        c1.send(&get_req("/held"));
        assert!(conn.read_head().starts_with("GET /held "));
        assert_own_503(&ask_new(proxy.addr(), "/three"), "the one connection is busy");
        answer(conn, &mut c1);
        assert_eq!(lock.accepted(), 1);
        let b = lock.addr();
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", b), 2.0);
    }
}

both_engines! {
    fn breaker_max_connections_counts_open_tunnels(engine) {
        // An upgraded connection (a WebSocket's tunnel) is an open connection to the
        // backend: with max_connections = 1 and a tunnel open, a request that needs a new
        // connection gets 503; once the tunnel ends it is served (found by an adversarial
        // probe: tunnels were counted nowhere, six opened under max_connections = 2).
        let lock = LockStep::bind();
        let up = format!("{}\n[upstream.breaker]\nmax_connections = 1\n", backends(&[lock.addr()]));
        let proxy = Proxy::start(&config(true, &up), engine);
        let mut c1 = Client::connect(proxy.addr());
        c1.send(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
        let mut conn = taken(&lock, "/chat");
        conn.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(c1.read_head().unwrap().status, 101);
        // Bytes through the tunnel: it runs.
        c1.send(b"ping");
        assert_eq!(conn.read_exact(4), b"ping");
        let b = lock.addr();
        assert_eq!(backend_metric(&proxy, "edgeshard_upstream_connections_active", b), 1.0);
        assert_own_503(&ask_new(proxy.addr(), "/two"), "the one connection is a tunnel");
        assert_eq!(lock.accepted(), 1);
        // The tunnel ends (both sides close it): the next request opens the connection.
        conn.close();
        c1.expect_closed();
        drop(c1);
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the tunnel ended", |m| {
            m.value("edgeshard_upstream_connections_active", &[("upstream", "app"), ("backend", &b.to_string())]) == 0.0
        });
        let (mut c, conn) = hold(&proxy, &lock, "/three");
        answer(conn, &mut c);
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", b), 1.0);
    }
}

/// The upstream "app" over `addrs` with one request at a time per backend and a queue of
/// `queue` that waits `wait`.
fn queueing(addrs: &[SocketAddr], queue: u32, wait: &str) -> String {
    let breaker = format!("max_requests = 1\nqueue = {queue}\nqueue_timeout = \"{wait}\"");
    format!("{}\n[upstream.breaker]\n{breaker}\n", backends(addrs))
}

/// The upstream "app": primary `a`, backup `b`, one request at a time each and a queue of 2
/// that waits 60 s.
fn primary_and_backup(a: &LockStep, b: &LockStep) -> String {
    format!(
        "backends = [{{ address = \"{}\" }}, {{ address = \"{}\", backup = true }}]\n\
         [upstream.breaker]\nmax_requests = 1\nqueue = 2\nqueue_timeout = \"60s\"\n",
        a.addr(),
        b.addr()
    )
}

/// Answers the request held on `conn` (and closes it): `c` gets the backend's 200.
fn answer(mut conn: LockConn, c: &mut Client) {
    conn.write(OK_CLOSE);
    conn.close();
    assert_eq!(served_by(&c.read_response()), "lock");
}

/// Drains backend `b` of "app" through the admin API.
fn drain(proxy: &Proxy, b: SocketAddr) {
    backend_action(proxy, b, "drain");
}

/// `POST /upstreams/app/backends/b/what` on the admin API (`drain`, `enable`).
fn backend_action(proxy: &Proxy, b: SocketAddr, what: &str) {
    let path = format!("/upstreams/app/backends/{b}/{what}");
    assert_eq!(admin_post(proxy.admin_addr(), &path, None).status, 200);
}

/// GET `path` from a new client, taken at `lock`: the request holds a place there.
fn hold(proxy: &Proxy, lock: &LockStep, path: &str) -> (Client, LockConn) {
    let mut c = Client::connect(proxy.addr());
    c.send(&get_req(path));
    (c, taken(lock, path))
}

/// The next connection `lock` accepts, whose request must be `GET path`.
fn taken(lock: &LockStep, path: &str) -> LockConn {
    let mut conn = lock.accept();
    let head = conn.read_head();
    assert!(
        head.starts_with(&format!("GET {path} ")),
        "expected GET {path}; the backend got: {head}"
    );
    conn
}

/// `name{upstream="app",backend=b}` on the admin listener's `/metrics`.
fn backend_metric(proxy: &Proxy, name: &str, b: SocketAddr) -> f64 {
    let b = b.to_string();
    metric(proxy, name, &[("upstream", "app"), ("backend", b.as_str())])
}

/// Polls `name{upstream="app",backend=b}` on the admin listener until it reads `want`, for
/// at most 10 s (the proxy counts a queued request as it enters the queue).
fn wait_metric(proxy: &Proxy, name: &str, b: SocketAddr, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend_metric(proxy, name, b) != want {
        assert!(Instant::now() < deadline, "{name} never reached {want}");
        thread::yield_now();
    }
}

both_engines! {
    fn breaker_queue_holds_requests_until_a_place_frees_first_come_first_served(engine) {
        // HAProxy's maxconn and queue: over max_requests, requests wait for a place instead
        // of the 503, in the order they came, up to `queue` of them; one more gets the 503.
        let lock = LockStep::bind();
        let up = queueing(&[lock.addr()], 2, "60s");
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c1, conn) = hold(&proxy, &lock, "/one");
        let mut waiting = Vec::new();
        for (i, path) in ["/two", "/three"].into_iter().enumerate() {
            let mut c = Client::connect(proxy.addr());
            c.send(&get_req(path));
            wait_metric(&proxy, "edgeshard_breaker_queued_total", lock.addr(), i as f64 + 1.0);
            waiting.push(c);
        }
        wait_metric(&proxy, "edgeshard_breaker_waiting", lock.addr(), 2.0);
        // The queue is full: the next gets the proxy's 503, and nothing reached the backend.
        assert_own_503(&ask_new(proxy.addr(), "/four"), "max_requests = 1 and a queue of 2, full");
        assert_eq!(lock.accepted(), 1);
        // Each finishing request lets the next waiting one through, in order.
        answer(conn, &mut c1);
        for (c, path) in waiting.iter_mut().zip(["/two", "/three"]) {
            answer(taken(&lock, path), c);
        }
        let b = lock.addr();
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", b), 1.0);
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_queued_total", b), 2.0);
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_waiting", b), 0.0);
    }

    fn breaker_queue_answers_503_when_the_wait_ends(engine) {
        let lock = LockStep::bind();
        let up = queueing(&[lock.addr()], 1, "300ms");
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c1, conn) = hold(&proxy, &lock, "/one");
        // Not a speed bound: the 503 comes only after the request waited queue_timeout.
        let t = Instant::now();
        assert_own_503(&ask_new(proxy.addr(), "/two"), "a queued request past queue_timeout");
        assert!(t.elapsed() >= Duration::from_millis(300), "answered after {:?}", t.elapsed());
        assert_eq!(lock.accepted(), 1);
        answer(conn, &mut c1);
        // The place the ended wait held in the queue is free again.
        let (mut c, conn) = hold(&proxy, &lock, "/three");
        answer(conn, &mut c);
        let b = lock.addr();
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", b), 1.0);
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_queued_total", b), 1.0);
        // The wait that ended is no longer counted as waiting.
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_waiting", b), 0.0);
    }

    fn breaker_queue_passes_a_full_backend_over_while_another_has_room(engine) {
        // Round robin over two backends, one request each at most: with one backend busy,
        // the next requests all go to the other instead of waiting their turn at the busy
        // one (which would hold them here for the 60 s wait).
        let (a, b) = (LockStep::bind(), LockStep::bind());
        let up = queueing(&[a.addr(), b.addr()], 4, "60s");
        let proxy = Proxy::start(&config(true, &up), engine);
        // One shard's cursor starts at the first backend.
        let (mut c1, held) = hold(&proxy, &a, "/held");
        for i in 0..3 {
            let mut c = Client::connect(proxy.addr());
            c.send(&get_req(&format!("/next/{i}")));
            let mut conn = b.accept();
            assert!(conn.read_head().starts_with(&format!("GET /next/{i} ")));
            answer(conn, &mut c);
        }
        assert_eq!(a.accepted(), 1);
        answer(held, &mut c1);
        for l in [&a, &b] {
            let s = l.addr();
            assert_eq!(backend_metric(&proxy, "edgeshard_breaker_queued_total", s), 0.0);
        }
    }
}

both_engines! {
    fn breaker_queue_a_resend_after_a_stale_pooled_connection_keeps_its_place(engine) {
        // A request holds the one place on a pooled connection that dies unanswered (the
        // keep-alive race): it is resent on a fresh connection (HEALTH.md, Retries 2.). Its
        // place must not go to a request waiting in the queue meanwhile: that turned the
        // resend into the proxy's 503 whenever anything waited.
        let lock = LockStep::bind();
        let up = queueing(&[lock.addr()], 2, "60s");
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c0, mut pooled) = hold(&proxy, &lock, "/warm");
        pooled.write(OK_KEEP);
        assert_eq!(served_by(&c0.read_response()), "lock");
        let mut c1 = Client::connect(proxy.addr());
        c1.send(&get_req("/one"));
        assert!(pooled.read_head().starts_with("GET /one "));
        let mut c2 = Client::connect(proxy.addr());
        c2.send(&get_req("/two"));
        wait_metric(&proxy, "edgeshard_breaker_queued_total", lock.addr(), 1.0);
        pooled.close();
        // The resend keeps its place.
        let fresh = taken(&lock, "/one");
        answer(fresh, &mut c1);
        let conn = taken(&lock, "/two");
        answer(conn, &mut c2);
        let b = lock.addr();
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", b), 0.0);
    }

    fn breaker_queue_keeps_a_backup_out_while_a_primary_is_usable(engine) {
        // `backup`: "Used only when no primary backend is usable" (CONFIG.md). A primary at
        // its max_requests is usable (its request waits); the full-backend pass-over of the
        // queue must not spill requests onto the backup.
        let (a, b) = (LockStep::bind(), LockStep::bind());
        let up = primary_and_backup(&a, &b);
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c1, held) = hold(&proxy, &a, "/held");
        let mut c2 = Client::connect(proxy.addr());
        c2.send(&get_req("/two"));
        // It waits at the primary, or (the spill) goes to the backup.
        let s = a.addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        while backend_metric(&proxy, "edgeshard_breaker_queued_total", s) != 1.0 && b.accepted() == 0 {
            assert!(Instant::now() < deadline, "/two neither waited nor reached a backend");
            thread::yield_now();
        }
        assert_eq!(b.accepted(), 0, "the backup got a request while the primary is usable");
        answer(held, &mut c1);
        let conn = taken(&a, "/two");
        answer(conn, &mut c2);
        assert_eq!(b.accepted(), 0);
    }
}

/// Polls until `edgeshard_breaker_queued_total` summed over `locks` reads `want`, for at most
/// 10 s (which backend a request waits at is the balancer's pick).
fn wait_queued(proxy: &Proxy, locks: &[&LockStep], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = || -> f64 {
        let queued =
            |l: &&LockStep| backend_metric(proxy, "edgeshard_breaker_queued_total", l.addr());
        locks.iter().map(queued).sum()
    };
    while total() != want {
        assert!(
            Instant::now() < deadline,
            "queued requests never reached {want}"
        );
        thread::yield_now();
    }
}

both_engines! {
    fn breaker_queue_a_place_freed_at_any_backend_serves_the_oldest_waiter(engine) {
        // HAProxy's queue is the backend's: whichever server frees a place first serves the
        // oldest waiting request. Round robin holds /one at a and /two at b; /w1 then waits
        // at a (the cursor's turn), /w2 at b. When b frees first, /w1 goes there, not /w2.
        let (a, b) = (LockStep::bind(), LockStep::bind());
        let up = queueing(&[a.addr(), b.addr()], 4, "60s");
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c1, held_a) = hold(&proxy, &a, "/one");
        let (mut c2, held_b) = hold(&proxy, &b, "/two");
        let mut w1 = Client::connect(proxy.addr());
        w1.send(&get_req("/w1"));
        wait_queued(&proxy, &[&a, &b], 1.0);
        let mut w2 = Client::connect(proxy.addr());
        w2.send(&get_req("/w2"));
        wait_queued(&proxy, &[&a, &b], 2.0);
        answer(held_b, &mut c2);
        // The oldest waiter takes b's place.
        let at_b = taken(&b, "/w1");
        answer(held_a, &mut c1);
        let at_a = taken(&a, "/w2");
        for (conn, c) in [(at_b, &mut w1), (at_a, &mut w2)] {
            answer(conn, c);
        }
        for l in [&a, &b] {
            assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", l.addr()), 0.0);
            assert_eq!(backend_metric(&proxy, "edgeshard_breaker_waiting", l.addr()), 0.0);
        }
    }

    fn breaker_queue_a_waiter_is_not_sent_to_a_backend_drained_while_it_waits(engine) {
        // /w waits at a (both backends full); a is drained meanwhile. The place a frees is
        // passed on (nothing else waits, so it goes unused) and /w waits on for b's.
        let (a, b) = (LockStep::bind(), LockStep::bind());
        let up = queueing(&[a.addr(), b.addr()], 4, "60s");
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c1, held_a) = hold(&proxy, &a, "/one");
        let (mut c2, held_b) = hold(&proxy, &b, "/two");
        let mut w = Client::connect(proxy.addr());
        w.send(&get_req("/w"));
        wait_queued(&proxy, &[&a, &b], 1.0);
        drain(&proxy, a.addr());
        answer(held_a, &mut c1);
        answer(held_b, &mut c2);
        // The waiter goes to b.
        let at_b = taken(&b, "/w");
        answer(at_b, &mut w);
        assert_eq!(a.accepted(), 1, "nothing was sent to the drained backend");
    }
}

both_engines! {
    fn breaker_max_requests_passes_a_full_backend_over_while_another_has_room(engine) {
        // nginx's max_conns ("the server is skipped"), HAProxy's full servers: without a
        // queue too, a backend at its max_requests is not picked while another has room, so
        // a request that another backend can serve is not refused. Only when every backend
        // is full does the request get the 503.
        let (a, b) = (LockStep::bind(), LockStep::bind());
        let up = format!("{}\n[upstream.breaker]\nmax_requests = 1\n", backends(&[a.addr(), b.addr()]));
        let proxy = Proxy::start(&config(true, &up), engine);
        // One shard's cursor starts at the first backend.
        let (mut c1, held) = hold(&proxy, &a, "/held");
        for i in 0..3 {
            let mut c = Client::connect(proxy.addr());
            c.send(&get_req(&format!("/next/{i}")));
            let mut conn = b.accept();
            assert!(conn.read_head().starts_with(&format!("GET /next/{i} ")));
            conn.write(OK_CLOSE);
            conn.close();
            assert_eq!(served_by(&c.read_response()), "lock", "request {i} goes to b");
        }
        assert_eq!(a.accepted(), 1);
        for l in [&a, &b] {
            assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", l.addr()), 0.0);
        }
        // Both full: the 503.
        let (mut c2, held_b) = hold(&proxy, &b, "/held-b");
        assert_own_503(&ask_new(proxy.addr(), "/over"), "both backends at max_requests = 1");
        for (conn, c) in [(held, &mut c1), (held_b, &mut c2)] {
            answer(conn, c);
        }
    }
}

both_engines! {
    fn breaker_counts_survive_a_reload_that_changes_its_keys(engine) {
        // A reload that changes a remaining backend's breaker keys keeps what is in flight
        // counted against the new limits. Before, the breaker started afresh: the request
        // held at the backend was forgotten, and max_requests = 1 let a second one through.
        let lock = LockStep::bind();
        let up = |extra: &str| {
            format!("{}\n[upstream.breaker]\nmax_requests = 1\n{extra}", backends(&[lock.addr()]))
        };
        let proxy = Proxy::start(&config(true, &up("")), engine);
        let (mut c1, held) = hold(&proxy, &lock, "/one");
        std::fs::write(proxy.config_path(), config(true, &up("max_pending = 100\n"))).unwrap();
        let r = admin_post(proxy.admin_addr(), "/reload", None);
        assert_eq!(r.status, 200, "POST /reload: {}", r.body);
        assert_own_503(&ask_new(proxy.addr(), "/two"), "the request in flight still holds the place");
        assert_eq!(lock.accepted(), 1);
        answer(held, &mut c1);
        let b = lock.addr();
        assert_eq!(backend_metric(&proxy, "edgeshard_breaker_rejected_total", b), 1.0);
    }
}

both_engines! {
    fn breaker_queue_a_waiter_whose_tier_becomes_unusable_is_picked_again(engine) {
        // /w waits at the one primary, which is drained while it waits: the place it frees
        // is refused, no primary is left that /w may use, and /w is picked again, to the
        // backup (used once no primary is), instead of waiting out its 60 s queue_timeout.
        let (a, b) = (LockStep::bind(), LockStep::bind());
        let up = primary_and_backup(&a, &b);
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c1, held) = hold(&proxy, &a, "/one");
        let mut w = Client::connect(proxy.addr());
        w.send(&get_req("/w"));
        wait_metric(&proxy, "edgeshard_breaker_queued_total", a.addr(), 1.0);
        drain(&proxy, a.addr());
        answer(held, &mut c1);
        // The waiter goes to the backup.
        let at_b = taken(&b, "/w");
        answer(at_b, &mut w);
        assert_eq!(a.accepted(), 1, "nothing was sent to the drained primary");
    }
}

both_engines! {
    fn breaker_queue_a_backend_refused_while_drained_serves_the_waiter_once_back(engine) {
        // A rolling restart: /w waits at a and b (both full); a is drained, so /w refuses the
        // place a frees; a is enabled again (with room), then b is drained and /w refuses b's
        // place too. a is usable and free: /w goes there, rather than waiting out its
        // queue_timeout avoiding the one backend it may use.
        let (a, b) = (LockStep::bind(), LockStep::bind());
        let up = queueing(&[a.addr(), b.addr()], 4, "60s");
        let proxy = Proxy::start(&config(true, &up), engine);
        let (mut c1, held_a) = hold(&proxy, &a, "/one");
        let (mut c2, held_b) = hold(&proxy, &b, "/two");
        let mut w = Client::connect(proxy.addr());
        w.send(&get_req("/w"));
        wait_queued(&proxy, &[&a, &b], 1.0);
        drain(&proxy, a.addr());
        answer(held_a, &mut c1);
        // a's place was handed to /w, refused, and /w waits again (one shard's snapshot).
        let (sa, sb) = (a.addr().to_string(), b.addr().to_string());
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "/w waiting again", |m| {
            let at = |name: &str, s: &str| m.sum(name, &[("upstream", "app"), ("backend", s)]);
            at("edgeshard_upstream_requests_in_flight", &sa) == 0.0
                && at("edgeshard_breaker_waiting", &sa) + at("edgeshard_breaker_waiting", &sb) == 1.0
        });
        backend_action(&proxy, a.addr(), "enable");
        drain(&proxy, b.addr());
        answer(held_b, &mut c2);
        // The waiter goes to a, back with room.
        let at_a = taken(&a, "/w");
        answer(at_a, &mut w);
        assert_eq!(b.accepted(), 1, "nothing was sent to the drained b");
    }
}
