//! The admin listener: `/status`, `/healthz`, `/ready` (also while draining), backend drain
//! and enable, the token, and robustness against bad admin clients.

use super::*;
use std::io::Write;
use std::net::TcpStream;

fn drain_path(upstream: &str, backend: SocketAddr, action: &str) -> String {
    format!("/upstreams/{upstream}/backends/{backend}/{action}")
}

/// The `/status` entry of one backend.
fn backend_status(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let s = admin_get(admin, "/status", None).json();
    s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|u| u["backends"].as_array().unwrap().iter())
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in /status: {s:#}"))
}

/// New connections, one GET each (so that both shards serve some); returns the X-Backend of
/// each response.
fn spread(proxy: SocketAddr, n: usize, host: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut c = Client::connect(proxy);
            let r = get_on(&mut c, host, &format!("/spread/{i}"));
            assert_eq!(r.status(), 200, "{}", r.head.raw);
            r.header("x-backend").unwrap_or("?").to_string()
        })
        .collect()
}

both_engines! {
    fn status_reports_process_config_shards_and_backends(engine) {
        let o = Origin::start("o");
        let started = Instant::now();
        let proxy = Config::new()
            .admin("")
            .upstream("web", &[o.addr()])
            .route("web", "name = \"site\"")
            .start_shards(engine, 2);
        let admin = proxy.admin_addr();
        let mut c = Client::connect(proxy.addr());
        for i in 0..3 {
            assert_eq!(get_on(&mut c, "s.example", &format!("/{i}")).status(), 200);
        }
        // `c` stays open: one active connection.
        // `requests` counts a request when its shard starts on it, before its response goes
        // out, and /status is answered on that shard's own thread afterwards: all three are in.
        let s = admin_get(admin, "/status", None).json();
        assert_eq!(s["requests"], 3, "{s:#}");
        assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(s["pid"], proxy.pid());
        let up = s["uptime_seconds"].as_f64().expect("uptime_seconds is a number");
        assert!(up >= 0.0 && up <= started.elapsed().as_secs_f64() + 1.0, "uptime {up}");
        assert_eq!(s["ready"], true);
        let cfg = &s["config"];
        let path = std::fs::canonicalize(proxy.config_path()).unwrap();
        assert_eq!(cfg["path"], path.display().to_string(), "{s:#}");
        let text = std::fs::read(proxy.config_path()).unwrap();
        assert_eq!(cfg["version"], format!("{:08x}", crc32fast::hash(&text)), "config.version is the CRC-32 of the file");
        let loaded = cfg["loaded_at"].as_str().expect("loaded_at is a string");
        assert!(loaded.len() == 20 && loaded.ends_with('Z') && loaded.as_bytes()[10] == b'T', "loaded_at {loaded:?}");
        assert_eq!(s["connections_active"], 1, "{s:#}");

        let shards = s["shards"].as_array().expect("shards");
        assert_eq!(shards.len(), 2, "{s:#}");
        let mut req_sum = 0;
        for (i, sh) in shards.iter().enumerate() {
            assert_eq!(sh["id"], i, "{s:#}");
            assert!(sh["cpu"].is_u64(), "{s:#}");
            assert_eq!(sh["io_engine"], engine.as_str(), "{s:#}");
            assert_eq!(sh["accepting"], true, "{s:#}");
            req_sum += sh["requests"].as_u64().expect("shard requests");
            assert!(sh["connections_active"].is_u64(), "{s:#}");
        }
        assert_eq!(req_sum, 3, "shard requests sum to the total: {s:#}");
        assert_ne!(shards[0]["cpu"], shards[1]["cpu"], "two shards on two CPUs: {s:#}");

        let ups = s["upstreams"].as_array().expect("upstreams");
        assert_eq!(ups.len(), 1, "{s:#}");
        assert_eq!(ups[0]["name"], "web");
        let bs = ups[0]["backends"].as_array().unwrap();
        assert_eq!(bs.len(), 1, "{s:#}");
        let b = &bs[0];
        assert_eq!(b["address"], o.addr().to_string());
        assert_eq!(b["weight"], 1);
        assert_eq!(b["state"], "up");
        assert_eq!(b["in_flight"], 0);
        assert_eq!(b["idle_connections"], 1, "one pooled connection after keep-alive requests on one shard: {s:#}");
        assert_eq!(b["responses"], 3);
    }

    fn status_spells_the_balancer_as_the_config_does(engine) {
        // BUG (if this fails): /status writes the balancer as its Rust enum name lower-cased
        // (format!("{:?}", ...).to_lowercase()), so round_robin comes out as "roundrobin" and
        // least_conn as "leastconn": values the config does not accept.
        let o = Origin::start("o");
        let proxy = Config::new()
            .admin("")
            .upstream_with("rr", &[o.addr()], "balance = \"round_robin\"")
            .upstream_with("w", &[o.addr()], "balance = \"weighted\"")
            .upstream_with("lc", &[o.addr()], "balance = \"least_conn\"")
            .route("rr", "")
            .start(engine);
        let s = admin_get(proxy.admin_addr(), "/status", None).json();
        let balance: Vec<String> = s["upstreams"].as_array().unwrap().iter().map(|u| u["balance"].as_str().unwrap_or("?").to_string()).collect();
        assert_eq!(balance, ["round_robin", "weighted", "least_conn"], "{s:#}");
    }

    fn healthz_and_ready_answer_and_ready_turns_503_while_draining(engine) {
        let backend = LockStep::bind();
        let mut proxy = Config::single(backend.addr())
            .admin("")
            .server("shutdown_timeout", "\"20s\"")
            .start(engine);
        let admin = proxy.admin_addr();
        let h = admin_get(admin, "/healthz", None);
        assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
        assert_eq!(admin_get(admin, "/ready", None).status, 200);
        assert_eq!(admin_get(admin, "/status", None).json()["ready"], true);

        // A request in flight keeps the proxy draining.
        let mut c = Client::connect(proxy.addr());
        c.send(&get("x.example", "/held"));
        let mut conn = backend.accept();
        conn.read_head();
        proxy.terminate();
        proxy.wait_for_output("listeners closed", 1, Duration::from_secs(10));
        assert!(proxy.is_running(), "exited with a request in flight");

        // The admin still answers while draining.
        let r = admin_get(admin, "/ready", None);
        assert_eq!(r.status, 503, "/ready while draining: {}\n{}", r.head.raw, r.body);
        assert_eq!(admin_get(admin, "/healthz", None).status, 200, "still alive while draining");
        let s = admin_get(admin, "/status", None).json();
        assert_eq!(s["ready"], false, "{s:#}");
        assert_eq!(s["shards"][0]["accepting"], false, "{s:#}");
        assert_eq!(s["upstreams"][0]["backends"][0]["in_flight"], 1, "{s:#}");
        let m = scrape(admin, None);
        assert_eq!(m.sum("edgeshard_shard_accepting", &[]), 0.0);
        assert_eq!(m.value("edgeshard_upstream_requests_in_flight", &[("upstream", "main"), ("backend", &backend.addr().to_string())]), 1.0);
        assert_eq!(m.value("edgeshard_connections_active", &[]), 1.0);

        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
        let r = c.read_response();
        assert_eq!((r.status(), r.body_str().as_str()), (200, "done"));
        let st = proxy.wait_exit(Duration::from_secs(10));
        assert_eq!(st.code(), Some(0), "{}", proxy.output());
    }

    fn drain_moves_new_requests_off_a_backend_and_enable_brings_it_back(engine) {
        let x = LockStep::bind();
        let y = Origin::start("y");
        let proxy = Config::new()
            .admin("")
            .upstream("pool", &[x.addr(), y.addr()])
            .route("pool", "")
            .start_shards(engine, 2);
        let admin = proxy.admin_addr();
        let (mut held, mut conn) = hold_at(proxy.addr(), &x, &y, "d.example");

        let r = admin_post(admin, &drain_path("pool", x.addr(), "drain"), None);
        assert_eq!(r.status, 200, "{}\n{}", r.head.raw, r.body);
        let j = r.json();
        assert_eq!(j["upstream"], "pool");
        assert_eq!(j["backend"], x.addr().to_string());
        assert_eq!(j["state"], "drained");
        assert_eq!(j["in_flight"], 1, "the held request is still in flight: {j:#}");
        assert_eq!(backend_status(admin, x.addr())["state"], "drained");
        let m = scrape(admin, None);
        let xs = x.addr().to_string();
        assert_eq!(m.value("edgeshard_backend_drained", &[("upstream", "pool"), ("backend", &xs)]), 1.0);
        assert_eq!(m.value("edgeshard_backend_up", &[("upstream", "pool"), ("backend", &xs)]), 0.0);
        // Draining twice is fine and changes nothing.
        assert_eq!(admin_post(admin, &drain_path("pool", x.addr(), "drain"), None).json()["state"], "drained");

        // New connections, spread over both shards: none reaches x.
        let got = spread(proxy.addr(), 40, "d.example");
        assert!(got.iter().all(|b| b == "y"), "a drained backend got new requests: {got:?}");
        assert_eq!(x.accepted(), 1, "the drained backend got a new connection");
        let m = scrape(admin, None);
        let shard = |i: &str| m.value("edgeshard_shard_requests_total", &[("shard", i)]);
        assert!(shard("0") > 0.0 && shard("1") > 0.0, "40 connections should reach both shards\n{}", m.text);

        // The held request completes in full.
        let body = "held-response-body".repeat(100);
        conn.write(format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        let r = held.read_response();
        assert_eq!((r.status(), r.body_str()), (200, body), "the in-flight request on a drained backend must complete");
        // The shard releases the request after its last write completes, which the client may
        // see first: wait for the gauge (nothing announces the release).
        let x_addr = x.addr().to_string();
        scrape_until(admin, None, Duration::from_secs(10), "in_flight back to 0", |m| {
            m.value("edgeshard_upstream_requests_in_flight", &[("upstream", "pool"), ("backend", &x_addr)]) == 0.0
        });
        assert_eq!(backend_status(admin, x.addr())["in_flight"], 0);

        // Enable: x gets traffic again (a new connection, since it answered Connection: close).
        let r = admin_post(admin, &drain_path("pool", x.addr(), "enable"), None);
        assert_eq!((r.status, r.json()["state"].clone()), (200, "up".into()), "{}", r.body);
        let (mut c, mut conn) = hold_at(proxy.addr(), &x, &y, "d.example");
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(c.read_response().body_str(), "ok");
        assert_eq!(backend_status(admin, x.addr())["state"], "up");

        // Every backend drained: 503 at once, counted as no_backend.
        for b in [x.addr(), y.addr()] {
            assert_eq!(admin_post(admin, &drain_path("pool", b, "drain"), None).status, 200);
        }
        let before = y.request_count();
        let mut c = Client::connect(proxy.addr());
        let r = get_on(&mut c, "d.example", "/none-left");
        assert_eq!(r.status(), 503, "{}", r.head.raw);
        assert_eq!(y.request_count(), before);
        let m = scrape_until(admin, None, Duration::from_secs(10), "the 503", |m| {
            m.value("edgeshard_responses_generated_total", &[("status", "503"), ("reason", "no_backend")]) == 1.0
        });
        assert_eq!(m.sum("edgeshard_backend_drained", &[]), 2.0);
        y.assert_no_errors();
    }

    fn drain_api_refuses_unknown_backends_and_wrong_methods(engine) {
        let o = Origin::start("o");
        let proxy = Config::new().admin("").upstream("u", &[o.addr()]).route("u", "").start(engine);
        let admin = proxy.admin_addr();
        let other = dead_addr();
        for path in [
            drain_path("u", other, "drain"),
            drain_path("nope", o.addr(), "drain"),
            drain_path("u", o.addr(), "explode"),
            "/upstreams/u/backends/not-an-address/drain".to_string(),
            format!("/upstreams/u/backends/{}", o.addr()),
        ] {
            let r = admin_post(admin, &path, None);
            assert_eq!(r.status, 404, "POST {path}: {}\n{}", r.head.raw, r.body);
        }
        let r = admin_get(admin, &drain_path("u", o.addr(), "drain"), None);
        assert_eq!(r.status, 405, "GET on drain: {}", r.head.raw);
        assert_eq!(admin_get(admin, "/nothing-here", None).status, 404);
        assert_eq!(admin_post(admin, "/metrics", None).status, 405);
        // Nothing was drained by any of that.
        assert_eq!(backend_status(admin, o.addr())["state"], "up");
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/").status(), 200);
    }

    fn admin_token_guards_everything_but_health_probes(engine) {
        let o = Origin::start("o");
        let proxy = Config::new()
            .admin("token = \"s3cret\"")
            .upstream("u", &[o.addr()])
            .route("u", "")
            .start(engine);
        let admin = proxy.admin_addr();
        let drain = drain_path("u", o.addr(), "drain");
        for (method, path) in [("GET", "/metrics"), ("GET", "/status"), ("POST", drain.as_str())] {
            for token in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
                let r = admin_request(admin, method, path, token);
                assert_eq!(r.status, 401, "{method} {path} with {token:?}: {}", r.head.raw);
                assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{}", r.head.raw);
            }
        }
        assert_eq!(backend_status_with(admin, o.addr(), "s3cret")["state"], "up", "an unauthorised drain changed nothing");
        // Probes need no token.
        assert_eq!(admin_get(admin, "/healthz", None).status, 200);
        assert_eq!(admin_get(admin, "/ready", None).status, 200);
        let t = Some("s3cret");
        assert_eq!(admin_get(admin, "/status", t).status, 200);
        scrape(admin, t);
        assert_eq!(admin_post(admin, &drain, t).status, 200);
        assert_eq!(backend_status_with(admin, o.addr(), "s3cret")["state"], "drained");
    }

    // A web page open in the operator's browser can make it send a "simple" POST to the
    // admin address (no answer needed to purge or reload), or rebind a name of its own to
    // it and read `/status`: such requests carry an Origin, a Sec-Fetch-Site other than
    // `none`, or (reaching an admin without a token) a Host that names a site; browsers
    // send neither of the first two on a plain-http page's GET. They are refused; tools and
    // a URL typed into the browser are not, and the liveness and readiness probes answer
    // whatever the Host (services probe them by name). With a token, the Host is not looked
    // at: Prometheus scrapes by name with the token.
    fn admin_refuses_requests_made_by_web_pages(engine) {
        let o = Origin::start("o");
        let proxy = Config::single(o.addr()).admin("").start(engine);
        let admin = proxy.admin_addr();
        let drain = drain_path("main", o.addr(), "drain");
        let ask = |admin: std::net::SocketAddr, method: &str, path: &str, fields: &str| {
            let req = format!("{method} {path} HTTP/1.1\r\n{fields}Content-Length: 0\r\n\r\n");
            let raw = admin_raw(admin, req.as_bytes()).unwrap();
            String::from_utf8_lossy(&raw).into_owned()
        };
        let host = format!("Host: {admin}\r\n");
        let rebound = format!("Host: rebind.evil.example:{}\r\n", admin.port());
        for fields in [
            format!("{host}Origin: http://evil.example\r\nContent-Type: text/plain\r\n"),
            format!("{host}Origin: null\r\n"),
            format!("{host}Sec-Fetch-Site: cross-site\r\n"),
            format!("{host}Sec-Fetch-Site: same-origin\r\n"),
            rebound.clone(),
            "Host: rebind.evil.example\r\n".to_string(),
        ] {
            for (method, path) in [("POST", drain.as_str()), ("POST", "/reload"), ("GET", "/metrics"), ("GET", "/status")] {
                let text = ask(admin, method, path, &fields);
                assert!(text.starts_with("HTTP/1.1 403 "), "{method} {path} with {fields:?}:\n{text}");
            }
        }
        assert_eq!(backend_status(admin, o.addr())["state"], "up", "a refused drain changed nothing");
        for fields in [
            host.clone(),
            format!("Host: localhost:{}\r\n", admin.port()),
            format!("Host: LOCALHOST.:{}\r\n", admin.port()),
            "Host: [::1]:9901\r\n".to_string(),
            "Host: 127.0.0.1\r\n".to_string(),
            String::new(),
            format!("{host}Sec-Fetch-Site: none\r\n"),
        ] {
            let text = ask(admin, "GET", "/metrics", &fields);
            assert!(text.starts_with("HTTP/1.1 200 "), "{fields:?}:\n{text}");
        }
        // Probes by a service name.
        for path in ["/healthz", "/ready"] {
            let text = ask(admin, "GET", path, "Host: edgeshard:9901\r\n");
            assert!(text.starts_with("HTTP/1.1 200 "), "{path}:\n{text}");
        }
        assert!(ask(admin, "POST", &drain, &host).starts_with("HTTP/1.1 200 "));
        assert_eq!(backend_status(admin, o.addr())["state"], "drained");
        // With a token, a name is fine (Prometheus scraping `edge1.internal:9901`).
        let proxy = Config::single(o.addr()).admin("token = \"s3cret\"").start(engine);
        let named = "Host: edge1.internal:9901\r\nAuthorization: Bearer s3cret\r\n".to_string();
        assert!(ask(proxy.admin_addr(), "GET", "/metrics", &named).starts_with("HTTP/1.1 200 "));
        let page = format!("{named}Origin: http://evil.example\r\n");
        assert!(ask(proxy.admin_addr(), "GET", "/metrics", &page).starts_with("HTTP/1.1 403 "));
    }

    fn admin_token_scheme_is_case_insensitive(engine) {
        // BUG (if this fails): RFC 9110 section 11.1: the auth-scheme is case-insensitive;
        // "authorization: bearer s3cret" is a valid credential but admin::authorized only
        // strips the exact prefix "Bearer ".
        let o = Origin::start("o");
        let proxy = Config::single(o.addr()).admin("token = \"s3cret\"").start(engine);
        let raw = admin_raw(proxy.admin_addr(), b"GET /status HTTP/1.1\r\nHost: a\r\nAuthorization: bearer s3cret\r\n\r\n").unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200 "), "lower-case `bearer` scheme refused:\n{text}");
        // Two credentials, the good one first or second: which counts would be a guess.
        for two in [
            &b"Authorization: Bearer s3cret\r\nAuthorization: Bearer wrong\r\n"[..],
            b"Authorization: Bearer wrong\r\nAuthorization: Bearer s3cret\r\n",
        ] {
            let mut req = b"GET /status HTTP/1.1\r\nHost: a\r\n".to_vec();
            req.extend_from_slice(two);
            req.extend_from_slice(b"\r\n");
            let raw = admin_raw(proxy.admin_addr(), &req).unwrap();
            let text = String::from_utf8_lossy(&raw);
            assert!(text.starts_with("HTTP/1.1 400 "), "two Authorization fields:\n{text}");
        }
    }

    fn admin_survives_garbage_oversized_heads_and_silent_clients(engine) {
        let o = Origin::start("o");
        // A header deadline far beyond the timings below, so that only serving connections
        // concurrently keeps them short.
        let proxy = Config::single(o.addr()).admin("header_timeout = \"30s\"").start(engine);
        let admin = proxy.admin_addr();
        // A client that connects and says nothing, held open for the whole test.
        let silent = TcpStream::connect(admin).unwrap();
        // A client that sends half a head and stops.
        let mut half = TcpStream::connect(admin).unwrap();
        half.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n").unwrap();
        let t0 = Instant::now();
        let h = admin_get(admin, "/healthz", None);
        assert_eq!(h.status, 200);
        // Milliseconds when served concurrently; an admin that served connections one at a
        // time would wait for the silent one's 30 s header deadline. 3 s: far above the
        // first, far short of the second.
        assert!(t0.elapsed() < Duration::from_secs(3), "a silent admin client delayed others: {:?}", t0.elapsed());

        // Garbage.
        for junk in [&b"\x00\x01\x02garbage\r\n\r\n"[..], b"GET\r\n\r\n", b"NOT HTTP AT ALL\r\n\r\n"] {
            let raw = admin_raw(admin, junk).expect("garbage gets an answer and a close");
            let text = String::from_utf8_lossy(&raw);
            assert!(text.starts_with("HTTP/1.1 400 "), "{junk:?} -> {text:?}");
        }
        // An oversized head (32 KiB of headers): refused (431, or a reset once it stops
        // reading), never served.
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: a\r\n".to_vec();
        while big.len() < 32 * 1024 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let mut c = Client::connect(admin);
        let _ = c.try_send(&big);
        match c.read_until_closed(Duration::from_secs(10)) {
            Ok(raw) => {
                let text = String::from_utf8_lossy(&raw);
                assert!(raw.is_empty() || text.starts_with("HTTP/1.1 431 "), "oversized head -> {text:?}");
            }
            Err(ClientError::Reset) => {}
            Err(e) => panic!("oversized admin head: {e}"),
        }
        // HTTP/1.0, and a request arriving in pieces.
        let raw = admin_raw(admin, b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200 "), "{raw:?}");
        let mut c = Client::connect(admin);
        for piece in [&b"GET /hea"[..], b"lthz HTTP/1.1\r\nHo", b"st: 127.0.0.1\r\n", b"\r\n"] {
            c.send(piece);
        }
        let raw = c.read_until_closed(Duration::from_secs(10)).unwrap();
        assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200 "), "{raw:?}");
        // Everything still answered, promptly, with the silent client still connected.
        // Timed: the two plain requests (milliseconds; 3 s is far above that, and short of the
        // 30 s header deadline that a request stuck behind a bad client would wait for). The
        // scrape is not timed: its Python parse alone takes most of a second in a debug run.
        let t0 = Instant::now();
        assert_eq!(admin_get(admin, "/healthz", None).status, 200);
        assert_eq!(admin_get(admin, "/status", None).status, 200);
        assert!(t0.elapsed() < Duration::from_secs(3), "admin slow after bad clients: {:?}", t0.elapsed());
        scrape(admin, None);
        drop(silent);
        drop(half);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/").status(), 200);
    }

    fn admin_head_request_gets_no_body(engine) {
        // BUG (if this fails): admin::handle writes the body for HEAD too (it routes HEAD like
        // GET and always appends r.body). RFC 9110 section 9.3.2: a HEAD response has no
        // content; the extra bytes are garbage to the client (curl -I: "Excess found").
        let o = Origin::start("o");
        let proxy = Config::single(o.addr()).admin("").start(engine);
        for path in ["/healthz", "/ready", "/status", "/metrics"] {
            let raw = admin_raw(proxy.admin_addr(), format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).unwrap();
            let text = String::from_utf8_lossy(&raw);
            let end = text.find("\r\n\r\n").unwrap_or_else(|| panic!("HEAD {path}: no head in {text:?}"));
            assert!(text.starts_with("HTTP/1.1 200 "), "HEAD {path}: {text:?}");
            assert_eq!(&text[end + 4..], "", "HEAD {path} must have no body; got {} bytes after the head", raw.len() - end - 4);
        }
    }

    fn admin_connection_limit_does_not_refuse_probes(engine) {
        // BUG (if this fails): past `admin.max_connections` (64 by default) the admin once
        // accepted and dropped the connection at once, so 64 idle TCP connections made every
        // /healthz and /ready probe fail with an empty reply. Now the new connection closes
        // the oldest one that has not sent its head (admin_limits.rs tests that in detail).
        let o = Origin::start("o");
        let proxy = Config::single(o.addr()).admin("").start(engine);
        let admin = proxy.admin_addr();
        let silent: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(admin).unwrap()).collect();
        // The 65th is accepted after them (the accept queue is FIFO) and must get an answer:
        // at once, or at worst once the silent ones reach their header deadline (2 s).
        let mut c = Client::connect(admin);
        c.timeout = Duration::from_secs(12);
        c.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let got = c.read_until_closed(Duration::from_secs(12));
        let text = match &got {
            Ok(raw) => String::from_utf8_lossy(raw).into_owned(),
            Err(e) => format!("{e}"),
        };
        assert!(text.starts_with("HTTP/1.1 200 "), "/healthz with 64 idle admin connections open: {text:?}");
        drop(silent);
    }
}

fn backend_status_with(admin: SocketAddr, addr: SocketAddr, token: &str) -> serde_json::Value {
    let s = admin_get(admin, "/status", Some(token)).json();
    s["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in /status: {s:#}"))
}
