//! The access log: one valid line per request under load (JSON and combined), the exact
//! fields of each kind of request, sampling, and rotation with SIGUSR1.

use super::*;
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Waits until every client connection is closed and returns the final request count; then
/// until the access log has exactly that many lines (they are flushed every 50 ms).
fn settle(admin: SocketAddr, logs: &[&Path]) -> (Metrics, Vec<String>) {
    let m = scrape_until(
        admin,
        None,
        Duration::from_secs(15),
        "no client connection open",
        |m| m.value("edgeshard_connections_active", &[]) == 0.0,
    );
    let want = m.value("edgeshard_request_duration_seconds_count", &[]) as usize;
    let dir = logs[0].parent().unwrap();
    let lines = wait_for_files(
        dir,
        Duration::from_secs(15),
        &format!("{want} access-log lines"),
        || {
            let lines: Vec<String> = logs.iter().flat_map(|p| read_lines(p)).collect();
            (lines.len() >= want).then_some(lines)
        },
    );
    let m = scrape(admin, None);
    (m, lines)
}

both_engines! {
    fn access_log_json_has_one_valid_line_per_request_under_wrk(engine) {
        let dir = TempDir::new("json");
        let log = dir.path("access.log");
        let o = Origin::start("o");
        let proxy = Config::single(o.addr())
            .admin("")
            .section("log", &access_log_section(&log, "access_format = \"json\""))
            .start_shards(engine, 2);
        let done = wrk(&format!("http://{}/wrk", proxy.addr()), 8, 2);
        assert!(done > 100, "wrk completed only {done} requests");
        let (m, lines) = settle(proxy.admin_addr(), &[&log]);
        let total = m.value("edgeshard_requests_total", &[]);
        assert_eq!(m.value("edgeshard_access_log_dropped_total", &[]), 0.0, "lines dropped\n{}", m.text);
        assert_eq!(lines.len() as f64, total, "one line per request (edgeshard_requests_total)");
        assert_eq!(m.value("edgeshard_access_log_lines_total", &[]), total);
        assert!(lines.len() as u64 >= done, "{} lines for {done} completed requests", lines.len());
        let host = proxy.addr().to_string();
        let backend = o.addr().to_string();
        let mut ids = HashSet::new();
        let mut ok = 0u64;
        for (i, line) in lines.iter().enumerate() {
            let v = parse_json_line(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", i + 1));
            assert_eq!(v["method"], "GET", "{line}");
            assert_eq!(v["uri"], "/wrk", "{line}");
            assert_eq!(v["protocol"], "HTTP/1.1", "{line}");
            assert_eq!(v["host"], host.as_str(), "{line}");
            assert_eq!(v["client"], "127.0.0.1", "{line}");
            assert_eq!(v["route"], "route0", "an unnamed route is named route<index>: {line}");
            assert_eq!(v["upstream"], "main", "{line}");
            assert_eq!(v["backend"], backend.as_str(), "{line}");
            assert_eq!(v["bytes_in"], 0, "{line}");
            let rid = v["request_id"].as_str().unwrap();
            assert!(is_hex32(rid), "request id {rid:?}: {line}");
            assert!(ids.insert(rid.to_string()), "request id {rid} logged twice");
            if v["status"] == 200 {
                ok += 1;
                assert_eq!(v["bytes_out"], 1, "{line}");
                let (d, u) = (v["duration_us"].as_u64().unwrap(), v["upstream_us"].as_u64().expect("upstream_us"));
                assert!(u <= d, "upstream_us {u} > duration_us {d}: {line}");
            }
        }
        assert!(ok >= done, "{ok} lines with status 200 for {done} completed requests");
        o.assert_no_errors();
    }

    fn access_log_combined_lines_under_wrk_match_the_format(engine) {
        let dir = TempDir::new("combined-wrk");
        let log = dir.path("access.log");
        let o = Origin::start("o");
        let proxy = Config::single(o.addr())
            .admin("")
            .section("log", &access_log_section(&log, "access_format = \"combined\""))
            .start(engine);
        let done = wrk(&format!("http://{}/w?x=1", proxy.addr()), 4, 1);
        let (m, lines) = settle(proxy.admin_addr(), &[&log]);
        assert_eq!(lines.len() as f64, m.value("edgeshard_requests_total", &[]));
        assert_eq!(m.value("edgeshard_access_log_dropped_total", &[]), 0.0);
        assert!(lines.len() as u64 >= done);
        for (i, line) in lines.iter().enumerate() {
            let c = parse_combined(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", i + 1));
            assert_eq!(c.request, Some(("GET".into(), "/w?x=1".into(), "HTTP/1.1".into())), "{line}");
            assert_eq!((c.route.as_str(), c.upstream.as_str()), ("route0", "main"), "{line}");
            assert_eq!(c.backend, o.addr().to_string(), "{line}");
            assert!(is_hex32(&c.rid), "{line}");
        }
    }

    fn access_log_combined_fields_for_each_kind_of_request(engine) {
        let dir = TempDir::new("combined");
        let log = dir.path("access.log");
        let o = Origin::start("combined");
        let proxy = Config::new()
            .admin("")
            .upstream("web", &[o.addr()])
            .route("web", "name = \"site\"\nhost = \"c.example\"")
            .section("log", &access_log_section(&log, ""))
            .start(engine);
        let addr = proxy.addr();
        let mut c = Client::connect(addr);
        // 1. A GET whose Referer and User-Agent need escaping (a quote, a backslash, UTF-8),
        // with a Basic user name (nginx's `$remote_user`, as sent) that needs it too.
        c.send("GET /c/1?q=x HTTP/1.1\r\nHost: c.example\r\nAuthorization: Basic dSJzZXI6cHc=\r\nReferer: http://r.example/\"p\"\r\nUser-Agent: ua\\1 caf\u{e9}\r\n\r\n".as_bytes());
        let r1 = c.read_response();
        assert_eq!(r1.status(), 200);
        // 2. A POST with a body.
        c.send(&request("POST", "/c/post", &[("Host", "c.example"), ("Content-Length", "10")], b"0123456789"));
        let r2 = c.read_response();
        assert_eq!(r2.status(), 200);
        // 3. Unrouted.
        let r3 = get_on(&mut c, "elsewhere.example", "/nope");
        assert_eq!(r3.status(), 404);
        // 4. HTTP/1.0.
        let mut c10 = Client::connect(addr);
        c10.send(b"GET /c/10 HTTP/1.0\r\nHost: c.example\r\n\r\n");
        let r4 = c10.read_response();
        assert_eq!(r4.status(), 200);
        // 5. Refused before parsing.
        let mut bad = Client::connect(addr);
        bad.send(b"GET / HTTP/1.1\r\nHost: c.example\r\nHost: c.example\r\n\r\n");
        assert_eq!(bad.read_response().status(), 400);
        let lines = wait_for_files(dir.root(), Duration::from_secs(10), "5 access-log lines", || {
            let l = read_lines(&log);
            (l.len() >= 5).then_some(l)
        });
        assert_eq!(lines.len(), 5, "{lines:#?}");
        let p: Vec<Combined> = lines
            .iter()
            .map(|l| parse_combined(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let rid = |r: &Response| r.header("x-request-id").expect("X-Request-Id in the response").to_string();
        let backend = o.addr().to_string();

        let l = &p[0];
        assert_eq!(l.client.to_string(), "127.0.0.1");
        assert_eq!(l.user, "u\\x22ser", "{}", lines[0]);
        assert_eq!(l.request, Some(("GET".into(), "/c/1?q=x".into(), "HTTP/1.1".into())), "{}", lines[0]);
        assert_eq!((l.status, l.bytes), (200, 8), "{}", lines[0]);
        assert_eq!(l.referer, "http://r.example/\\x22p\\x22", "{}", lines[0]);
        assert_eq!(l.user_agent, "ua\\x5C1 caf\\xC3\\xA9", "{}", lines[0]);
        let (rt, urt): (f64, f64) = (l.rt.parse().unwrap(), l.urt.parse().unwrap());
        assert!(urt <= rt, "urt {urt} > rt {rt}: {}", lines[0]);
        assert_eq!((l.route.as_str(), l.upstream.as_str(), l.backend.as_str()), ("site", "web", backend.as_str()));
        assert_eq!((l.bytes_in, l.rid.clone()), (0, rid(&r1)), "{}", lines[0]);
        let now = access_time_now();
        assert!(l.time[..11] == now[..11] || l.time[..11] == access_time_yesterday()[..11], "time {:?} is not today ({now:?})", l.time);

        let l = &p[1];
        assert_eq!(l.request, Some(("POST".into(), "/c/post".into(), "HTTP/1.1".into())));
        assert_eq!((l.status, l.bytes, l.bytes_in), (200, 8, 10), "{}", lines[1]);
        assert_eq!((l.referer.as_str(), l.user_agent.as_str()), ("-", "-"));
        assert_eq!(l.rid, rid(&r2));
        assert_eq!(l.user, "-");

        let l = &p[2];
        assert_eq!(l.request, Some(("GET".into(), "/nope".into(), "HTTP/1.1".into())));
        // The proxy's own answer counts its body ("not found\n"), as nginx's does.
        assert_eq!((l.status, l.bytes, l.bytes_in), (404, 10, 0), "{}", lines[2]);
        assert_eq!((l.urt.as_str(), l.route.as_str(), l.upstream.as_str(), l.backend.as_str()), ("-", "-", "-", "-"), "{}", lines[2]);
        assert!(is_hex32(&l.rid), "{}", lines[2]);

        let l = &p[3];
        assert_eq!(l.request, Some(("GET".into(), "/c/10".into(), "HTTP/1.0".into())), "{}", lines[3]);
        assert_eq!(l.rid, rid(&r4));

        let l = &p[4];
        assert_eq!(l.request, None, "a refused head is logged with request \"-\": {}", lines[4]);
        assert_eq!((l.status, l.bytes, l.bytes_in), (400, 12, 0), "{}", lines[4]);
        assert_eq!((l.route.as_str(), l.backend.as_str()), ("-", "-"));
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_access_log_lines_total", &[]), 5.0);
    }

    fn access_log_pipelined_requests_get_one_line_each_in_order(engine) {
        let dir = TempDir::new("pipelined");
        let log = dir.path("access.log");
        let o = Origin::start("o");
        let proxy = Config::single(o.addr())
            .section("log", &access_log_section(&log, "access_format = \"json\""))
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let mut burst = Vec::new();
        for i in 0..5 {
            burst.extend_from_slice(&get("p.example", &format!("/pipe/{i}")));
        }
        c.send(&burst);
        let ids: Vec<String> = (0..5)
            .map(|_| c.read_response().header("x-request-id").expect("X-Request-Id").to_string())
            .collect();
        let lines = wait_for_files(dir.root(), Duration::from_secs(10), "5 lines", || {
            let l = read_lines(&log);
            (l.len() >= 5).then_some(l)
        });
        assert_eq!(lines.len(), 5);
        for (i, l) in lines.iter().enumerate() {
            let v = parse_json_line(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(v["uri"], format!("/pipe/{i}"), "{l}");
            assert_eq!(v["request_id"], ids[i].as_str(), "{l}");
        }
    }

    fn access_log_sampling_logs_about_the_configured_fraction(engine) {
        let dir = TempDir::new("sample");
        let log = dir.path("access.log");
        let o = Origin::start("o");
        let proxy = Config::single(o.addr())
            .admin("")
            .section("log", &access_log_section(&log, "access_format = \"json\"\naccess_sample = 0.5"))
            .start(engine);
        let n = 400;
        let mut cs: Vec<Client> = (0..4).map(|_| Client::connect(proxy.addr())).collect();
        for i in 0..n {
            assert_eq!(get_on(&mut cs[i % 4], "s.example", &format!("/s/{i}")).status(), 200);
        }
        drop(cs);
        let m = scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "all requests", |m| {
            m.value("edgeshard_requests_total", &[]) == n as f64 && m.value("edgeshard_connections_active", &[]) == 0.0
        });
        let logged = m.value("edgeshard_access_log_lines_total", &[]) as usize;
        let lines = wait_for_files(dir.root(), Duration::from_secs(10), "the sampled lines", || {
            let l = read_lines(&log);
            (l.len() >= logged).then_some(l)
        });
        assert_eq!(lines.len(), logged, "edgeshard_access_log_lines_total counts the lines written");
        // Binomial(400, 0.5): sd 10; 150..=250 is five sd either way.
        assert!((150..=250).contains(&lines.len()), "access_sample = 0.5 logged {} of {n}", lines.len());
        let mut seen = HashSet::new();
        for l in &lines {
            let v = parse_json_line(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(seen.insert(v["uri"].as_str().unwrap().to_string()), "a request logged twice: {l}");
        }
    }

    // `access_sample = 0` with keep rules: only errors (a 404, a refused head's 400) and slow
    // requests (a backend that holds its head past `access_keep_slower_than`) leave a line,
    // HAProxy's `option dontlog-normal`; fast 200s leave none.
    fn access_log_keeps_errors_and_slow_requests_while_sampling_none(engine) {
        let dir = TempDir::new("keep");
        let log = dir.path("access.log");
        let (origin, gate) = held_origin("/slow");
        let keep = "access_format = '$status $uri'\naccess_sample = 0\naccess_keep_status = 400\naccess_keep_slower_than = \"150ms\"";
        let proxy = Config::new()
            .upstream("web", &[origin.addr()])
            .route("web", "path_prefix = \"/\"\nhost = \"site.example\"")
            .section("log", &access_log_section(&log, keep))
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "site.example", "/fast").status(), 200);
        assert_eq!(get_on(&mut c, "other.example", "/nowhere").status(), 404);
        c.send(&get("site.example", "/slow"));
        assert!(origin.wait_for(Duration::from_secs(10), |s| s.requests.iter().any(|r| r.path() == "/slow")));
        wait_until(Instant::now() + Duration::from_millis(200));
        gate.open();
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(get_on(&mut c, "site.example", "/fast2").status(), 200);
        let mut bad = Client::connect(proxy.addr());
        bad.send(b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n");
        assert_eq!(bad.read_response().status(), 400);
        // The shard writes in order: once the last request's line is there, so are the others.
        let lines = wait_for_files(dir.root(), Duration::from_secs(10), "the kept lines", || {
            let l = read_lines(&log);
            l.iter().any(|l| l.starts_with("400 ")).then_some(l)
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(&lines[..2], ["404 /nowhere", "200 /slow"]);
        assert!(lines[2].starts_with("400 "), "{lines:?}");
    }

    fn access_log_rotation_with_sigusr1_loses_no_line(engine) {
        let dir = TempDir::new("rotate");
        let log = dir.path("access.log");
        let old = dir.path("access.log.1");
        let o = Origin::start("o");
        let mut proxy = Config::single(o.addr())
            .admin("")
            .section("log", &access_log_section(&log, "access_format = \"json\""))
            .start_shards(engine, 2);
        let addr = proxy.addr();
        let stop = Arc::new(AtomicBool::new(false));
        // Stops the client threads however this test ends.
        let _stop_guard = StopOnDrop(stop.clone());
        let ids = Arc::new(Mutex::new(Vec::<String>::new()));
        let clients: Vec<_> = (0..2)
            .map(|t| {
                let (stop, ids) = (stop.clone(), ids.clone());
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let r = get_on(&mut c, "r.example", &format!("/t{t}/{i}"));
                        assert_eq!(r.status(), 200);
                        ids.lock().unwrap().push(r.header("x-request-id").expect("X-Request-Id").to_string());
                        i += 1;
                        if i % 50 == 0 {
                            // New connections now and then, so both shards log.
                            c = Client::connect(addr);
                        }
                    }
                })
            })
            .collect();
        wait_for_files(dir.root(), Duration::from_secs(10), "traffic in the access log", || (read_lines(&log).len() >= 200).then_some(()));
        std::fs::rename(&log, &old).unwrap();
        proxy.signal(libc::SIGUSR1);
        proxy.wait_for_output("access log reopened", 1, Duration::from_secs(10));
        wait_for_files(dir.root(), Duration::from_secs(10), "lines in the reopened file", || (read_lines(&log).len() >= 200).then_some(()));
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().expect("client thread");
        }
        let ids = std::mem::take(&mut *ids.lock().unwrap());
        let (m, lines) = settle(proxy.admin_addr(), &[&old, &log]);
        let total = m.value("edgeshard_requests_total", &[]) as usize;
        assert_eq!(total, ids.len(), "every request the clients sent was answered");
        assert_eq!(lines.len(), total, "log.1 + log: one line per request");
        let mut logged = HashSet::new();
        for l in &lines {
            let v = parse_json_line(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(logged.insert(v["request_id"].as_str().unwrap().to_string()), "logged twice: {l}");
        }
        let answered: HashSet<String> = ids.into_iter().collect();
        assert_eq!(logged, answered, "the logged ids are exactly the ids the clients got");
        assert!(read_lines(&old).len() >= 200 && read_lines(&log).len() >= 200);
        assert_eq!(m.value("edgeshard_access_log_dropped_total", &[]), 0.0);
    }

    fn access_log_is_complete_after_a_graceful_shutdown(engine) {
        let dir = TempDir::new("shutdown");
        let log = dir.path("access.log");
        let backend = LockStep::bind();
        let o = Origin::start("o");
        let mut proxy = Config::new()
            .upstream("slow", &[backend.addr()])
            .upstream("fast", &[o.addr()])
            .route("slow", "name = \"slow\"\npath_prefix = \"/slow\"")
            .route("fast", "name = \"fast\"")
            .server("shutdown_timeout", "\"20s\"")
            // Flushed only by the one-second tick or at shutdown.
            .section("log", &format!("access = \"{}\"\naccess_format = \"json\"\naccess_flush = \"10s\"", log.display()))
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for i in 0..3 {
            assert_eq!(get_on(&mut c, "x.example", &format!("/f/{i}")).status(), 200);
        }
        let mut held = Client::connect(proxy.addr());
        held.send(&get("x.example", "/slow"));
        let mut conn = backend.accept();
        conn.read_head();
        proxy.terminate();
        proxy.wait_for_output("listeners closed", 1, Duration::from_secs(10));
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate");
        assert_eq!(held.read_response().body_str(), "late");
        let st = proxy.wait_exit(Duration::from_secs(15));
        assert_eq!(st.code(), Some(0), "{}", proxy.output());
        let lines = read_lines(&log);
        let uris: Vec<String> = lines
            .iter()
            .map(|l| parse_json_line(l).unwrap_or_else(|e| panic!("{e}: {l}"))["uri"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(uris, ["/f/0", "/f/1", "/f/2", "/slow"], "every line, the drained request's included, is written before exit");
    }

    fn sigusr1_without_an_access_log_is_harmless(engine) {
        let o = Origin::start("o");
        let mut proxy = Config::single(o.addr()).admin("").start(engine);
        proxy.signal(libc::SIGUSR1);
        proxy.signal(libc::SIGUSR1);
        // Observable: the admin answers after the signals were delivered, and so does the proxy.
        assert_eq!(admin_get(proxy.admin_addr(), "/healthz", None).status, 200);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/").status(), 200);
        proxy.assert_alive();
    }

    fn an_access_log_that_cannot_be_opened_stops_start_up_naming_it(engine) {
        let o = Origin::start("o");
        let cfg = Config::single(o.addr()).section("log", "access = \"/nonexistent-edgeshard-dir/access.log\"").render();
        let err = Proxy::try_start(&cfg, engine).err().expect("start-up must fail");
        assert!(err.contains(": log.access: cannot open the access log /nonexistent-edgeshard-dir/access.log: "), "names the file, the key and the path: {err}");
    }

    fn access_log_to_stdout(engine) {
        let o = Origin::start("o");
        let proxy = Config::single(o.addr()).section("log", "access = \"stdout\"\naccess_flush = \"50ms\"").start(engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/to-stdout").status(), 200);
        proxy.wait_for_output("\"GET /to-stdout HTTP/1.1\" 200 1 ", 1, Duration::from_secs(10));
        let out = proxy.output();
        let line = out.lines().find(|l| l.contains("/to-stdout")).unwrap();
        let line = line.strip_prefix("[stdout] ").unwrap_or_else(|| panic!("the access log goes to stdout: {line:?}"));
        parse_combined(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    fn access_log_fields_cannot_be_split_by_a_spaced_upstream_name(engine) {
        // `upstream=NAME` is written unescaped in the combined format, so names that could
        // add a field (spaces) are refused by the configuration check.
        let _ = engine;
        let o = Origin::start("o");
        let text = Config::new()
            .upstream("api v2", &[o.addr()])
            .route("api v2", "name = \"api\"")
            .render();
        let (code, out) = crate::support::run_check(&text);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("upstream[0].name") && out.contains("without spaces"), "{out}");
    }

    fn access_log_drops_and_counts_lines_instead_of_stalling(engine) {
        // The log goes to a pipe that nobody reads: the writer blocks once the pipe is full,
        // the queue (1 buffer) fills, and from then on shards drop lines instead of waiting.
        let dir = TempDir::new("fifo");
        let fifo = dir.path("access.fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        use std::os::unix::fs::OpenOptionsExt;
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let o = Origin::start("o");
        let proxy = Config::single(o.addr())
            .admin("")
            .section("log", &format!("access = \"{}\"\naccess_buffer = \"4KiB\"\naccess_queue = 1\naccess_flush = \"50ms\"", fifo.display()))
            .start(engine);
        let n = 3000;
        let t0 = Instant::now();
        let mut cs: Vec<Client> = (0..4).map(|_| Client::connect(proxy.addr())).collect();
        for i in 0..n {
            assert_eq!(get_on(&mut cs[i % 4], "x.example", &format!("/p/{i}")).status(), 200);
        }
        let took = t0.elapsed();
        drop(cs);
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "dropped lines", |m| {
            m.value("edgeshard_access_log_dropped_total", &[]) > 0.0
                && m.value("edgeshard_access_log_lines_total", &[]) == n as f64
        });
        assert!(took < Duration::from_secs(60), "a blocked access log slowed requests down: {took:?}");
        // Now read the pipe: what was not dropped arrives, complete lines only.
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        wait_on_fd(reader.as_fd(), Duration::from_secs(15), "written + dropped == formatted", || {}, || {
            loop {
                match std::io::Read::read(&mut &reader, &mut buf) {
                    Ok(0) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(_) => break,
                }
            }
            let m = scrape(proxy.admin_addr(), None);
            let written = got.iter().filter(|&&b| b == b'\n').count() as f64;
            (written + m.value("edgeshard_access_log_dropped_total", &[]) == n as f64).then_some(())
        });
        assert!(got.ends_with(b"\n"), "only whole lines reach the log");
        for l in String::from_utf8(got).unwrap().lines() {
            parse_combined(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        }
    }
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Today's date as the combined format writes it (`28/Nov/2026:...`), and yesterday's (a
/// test running across midnight UTC).
fn access_time_now() -> String {
    combined_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

fn access_time_yesterday() -> String {
    combined_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 86_400,
    )
}

fn combined_date(unix: u64) -> String {
    // Howard Hinnant's days-to-civil.
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!("{d:02}/{}/{y}", MONTHS[(m - 1) as usize])
}
