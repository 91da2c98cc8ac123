//! The access log written from an operator's template (`access_format` as a line of
//! `$variables`, nginx's `log_format`): the values real requests leave behind on a plain
//! listener with a cache (MISS then HIT), a Basic user name and a chosen request field, and
//! over TLS with JSON escaping (protocol, suite, SNI); a retried request lists each try, as
//! nginx does.

use super::*;
use crate::cache::reply;
use crate::support::tls::{tls_get, tls_listener, CertDir, TestCa};
use std::sync::Arc;

/// Waits for `n` lines in `log`.
fn lines(dir: &TempDir, log: &Path, n: usize) -> Vec<String> {
    wait_for_files(
        dir.root(),
        Duration::from_secs(10),
        &format!("{n} lines"),
        || {
            let l = read_lines(log);
            (l.len() >= n).then_some(l)
        },
    )
}

both_engines! {
    fn access_log_template_writes_what_each_request_did(engine) {
        let dir = TempDir::new("template");
        let log = dir.path("access.log");
        let origin = Origin::with_handler("o", |_| reply(&[("Cache-Control", "max-age=100")], "twelve bytes", false));
        let format = r#"access_format = '$remote_addr $remote_user "$request" $status $body_bytes_sent cache=$upstream_cache_status up=$upstream_addr route=$route/$upstream_name trace="$http_x_trace" host=$host uri=$uri args=$args n=$connection_requests len=$request_length rid=$request_id $scheme us=$upstream_status'"#;
        let proxy = Config::new()
            .upstream("web", &[origin.addr()])
            .route("web", "name = \"cached\"\ncache = { size = \"1MiB\" }")
            .section("log", &access_log_section(&log, format))
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let first = request("GET", "/p?a=1", &[("Host", "Ex.Example:80"), ("X-Trace", "t\"1")], b"");
        c.send(&first);
        let r1 = c.read_response();
        assert_eq!((r1.status(), r1.header("X-Cache")), (200, Some("MISS")));
        c.send(&request("GET", "/p?a=1", &[("Host", "ex.example")], b""));
        let r2 = c.read_response();
        assert_eq!((r2.status(), r2.header("X-Cache")), (200, Some("HIT")));
        assert_eq!(origin.request_count(), 1);
        // The answer to a request with credentials is not stored; its user is logged (as
        // nginx's $remote_user: as sent).
        let third = request("GET", "/auth", &[("Host", "ex.example"), ("Authorization", "Basic dXNlcjpwdw==")], b"");
        c.send(&third);
        let r3 = c.read_response();
        assert_eq!((r3.status(), r3.header("X-Cache")), (200, Some("BYPASS")));
        let l = lines(&dir, &log, 3);
        let rid = |r: &Response| r.header("x-request-id").unwrap().to_string();
        let up = origin.addr();
        assert_eq!(
            l[0],
            format!("127.0.0.1 - \"GET /p?a=1 HTTP/1.1\" 200 12 cache=MISS up={up} route=cached/web trace=\"t\\x221\" host=ex.example uri=/p args=a=1 n=1 len={} rid={} http us=200", first.len(), rid(&r1)),
        );
        let len2 = request("GET", "/p?a=1", &[("Host", "ex.example")], b"").len();
        assert_eq!(
            l[1],
            format!("127.0.0.1 - \"GET /p?a=1 HTTP/1.1\" 200 12 cache=HIT up=- route=cached/web trace=\"-\" host=ex.example uri=/p args=a=1 n=2 len={len2} rid={} http us=-", rid(&r2)),
        );
        assert_eq!(
            l[2],
            format!("127.0.0.1 user \"GET /auth HTTP/1.1\" 200 12 cache=BYPASS up={up} route=cached/web trace=\"-\" host=ex.example uri=/auth args=- n=3 len={} rid={} http us=200", third.len(), rid(&r3)),
        );
    }

    // `$error_reason` tells apart what the status alone does not (operator review, session
    // 13; HAProxy's termination state): a 503 for no usable backend, a 502 for a refused
    // connect, a 504, the proxy's own refusals, a malformed head; unset when a response was
    // relayed.
    fn access_log_error_reason_says_why_the_proxy_answered(engine) {
        let dir = TempDir::new("reason");
        let log = dir.path("access.log");
        let origin = Origin::start("o");
        let (slow, gone) = (LockStep::bind(), LockStep::bind());
        let gone_addr = gone.addr();
        drop(gone);
        let proxy = Config::new()
            .timeout("upstream_response", "300ms")
            .upstream("web", &[origin.addr()])
            .upstream("slow", &[slow.addr()])
            .upstream("gone", &[gone_addr])
            .route("web", "path_prefix = \"/ok\"")
            .route("web", "path_prefix = \"/no\"\ndeny = [\"127.0.0.0/8\"]")
            .route("slow", "path_prefix = \"/slow\"")
            .route("gone", "path_prefix = \"/gone\"")
            .section("log", &access_log_section(&log, "access_format = '$status $error_reason'"))
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/ok").status(), 200);
        assert_eq!(get_on(&mut c, "x.example", "/no").status(), 403);
        assert_eq!(get_on(&mut c, "x.example", "/missing").status(), 404);
        assert_eq!(get_on(&mut c, "x.example", "/gone").status(), 502);
        c.send(&get("x.example", "/slow"));
        let _held = slow.accept();
        assert_eq!(c.read_response().status(), 504);
        admin_post(proxy.admin_addr(), &format!("/upstreams/web/backends/{}/drain", origin.addr()), None);
        assert_eq!(get_on(&mut c, "x.example", "/ok").status(), 503);
        let mut bad = Client::connect(proxy.addr());
        bad.send(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
        assert_eq!(bad.read_response().status(), 400);
        let l = lines(&dir, &log, 7);
        assert_eq!(l[..6], ["200 -", "403 forbidden", "404 no_route", "502 connect_failed", "504 upstream_timeout", "503 no_usable_backend"]);
        assert_eq!(l[6], "400 bad_request");
    }

    fn a_route_with_access_log_off_writes_no_line(engine) {
        let dir = TempDir::new("route-off");
        let log = dir.path("access.log");
        let o = Origin::start("o");
        let proxy = Config::new()
            .admin("")
            .upstream("web", &[o.addr()])
            .route("web", "name = \"probe\"\npath = \"/healthz\"\naccess_log = false")
            .route("web", "name = \"site\"")
            .section("log", &access_log_section(&log, "access_format = '$route $request_uri'"))
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for path in ["/a", "/healthz", "/healthz", "/b"] {
            assert_eq!(get_on(&mut c, "x.example", path).status(), 200);
        }
        // The shard writes its lines in order: once /b is there, a /healthz line would be too.
        let l = lines(&dir, &log, 2);
        assert_eq!(l, ["site /a", "site /b"]);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_access_log_lines_total", &[]), 2.0);
        assert_eq!(m.value("edgeshard_requests_total", &[]), 4.0);
    }

    fn access_log_template_in_json_names_the_tls_session(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("template-tls");
        let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
        let logs = TempDir::new("template-tls-log");
        let log = logs.path("access.log");
        let origin = Origin::start("origin");
        let format = r#"access_format = '{"p":"$ssl_protocol","c":"$ssl_cipher","sni":"$ssl_server_name","s":$status,"ua":"$http_user_agent","cache":"$upstream_cache_status","t":$request_time,"sc":"$scheme","us":$upstream_status}'
access_escape = "json""#;
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .section("log", &access_log_section(&log, format))
            .start(engine);
        let seen = tls_get(proxy.addr(), &Arc::new(ca.client_config()), "a.test", "/").unwrap();
        assert!(seen.response.starts_with("HTTP/1.1 200"), "{}", seen.response);
        let l = lines(&logs, &log, 1);
        let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap_or_else(|e| panic!("{e}: {}", l[0]));
        assert_eq!(v["p"], "TLSv1.3", "{}", l[0]);
        assert!(v["c"].as_str().unwrap().starts_with("TLS13_"), "{}", l[0]);
        assert_eq!((&v["sni"], &v["s"], &v["ua"], &v["cache"]), (&"a.test".into(), &200.into(), &"".into(), &"".into()), "{}", l[0]);
        assert!(v["t"].as_f64().is_some(), "{}", l[0]);
        assert_eq!((&v["sc"], &v["us"]), (&"https".into(), &200.into()), "{}", l[0]);
    }

    // A connect that fails, a 503 the retry rule sends on, then a 200: `$upstream_addr`,
    // `$upstream_status` and `$upstream_response_time` list the three tries in order (round
    // robin on one shard starts at the first backend). A request whose every try fails ends
    // with nginx's 502 for the last, whether no backend was left to try or the connects
    // allowed were spent.
    fn a_retried_request_logs_every_try(engine) {
        let dir = TempDir::new("tries");
        let log = dir.path("access.log");
        let dead = dead_addr();
        let four = dead_addrs::<4>();
        let busy = Origin::with_handler("busy", |_| Reply::Response {
            status: 503,
            headers: vec![],
            body: b"busy".to_vec(),
            mode: BodyMode::Length,
            close_after: false,
        });
        let ok = Origin::start("ok");
        let retry = "balance = \"round_robin\"\nretry = { attempts = 3, budget = 1.0 }";
        let format = r#"access_format = '$status $upstream_addr|$upstream_status|$upstream_response_time|$upstream_connect_time|$upstream_header_time'"#;
        let proxy = Config::new()
            .upstream_with("web", &[dead, busy.addr(), ok.addr()], retry)
            .upstream_with("gone", &[dead], "")
            .route("gone", "path = \"/gone\"")
            .upstream_with("four", &four, "")
            .route("four", "path = \"/four\"")
            .route("web", "")
            .section("log", &access_log_section(&log, format))
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/x", &[("Host", "t")], b""));
        assert_eq!(c.read_response().status(), 200);
        c.send(&request("GET", "/gone", &[("Host", "t")], b""));
        assert_eq!(c.read_response().status(), 502);
        // Four failed connects: the last one ends the request (MAX_CONNECTS).
        c.send(&request("GET", "/four", &[("Host", "t")], b""));
        assert_eq!(c.read_response().status(), 502);
        let l = lines(&dir, &log, 3);
        let f: Vec<&str> = l[0].split('|').collect();
        assert_eq!(f[0], format!("200 {dead}, {}, {}", busy.addr(), ok.addr()));
        assert_eq!(f[1], "502, 503, 200");
        let times = |list: &str| list.split(", ").map(|t| t.parse::<f64>().ok()).collect::<Vec<_>>();
        // Response and connect times for each try; no head from the dead backend.
        assert!(times(f[2]).len() == 3 && times(f[2]).iter().all(Option::is_some), "{}", l[0]);
        assert!(times(f[3]).len() == 3 && times(f[3]).iter().all(Option::is_some), "{}", l[0]);
        let header = times(f[4]);
        assert!(header.len() == 3 && header[0].is_none() && header[1..].iter().all(Option::is_some), "{}", l[0]);
        let f1: Vec<&str> = l[1].split('|').collect();
        assert_eq!(&f1[..2], [format!("502 {dead}").as_str(), "502"], "{}", l[1]);
        assert!(f1[2].parse::<f64>().is_ok() && f1[3].parse::<f64>().is_ok(), "{}", l[1]);
        assert_eq!(f1[4], "-", "{}", l[1]);
        let fields: Vec<&str> = l[2].split('|').collect();
        let mut tried: Vec<String> = fields[0].trim_start_matches("502 ").split(", ").map(String::from).collect();
        tried.sort();
        let mut want: Vec<String> = four.iter().map(|a| a.to_string()).collect();
        want.sort();
        assert_eq!(tried, want, "{}", l[2]);
        assert_eq!(fields[1], "502, 502, 502, 502", "{}", l[2]);
        let times: Vec<&str> = fields[2].split(", ").collect();
        assert!(times.len() == 4 && times.iter().all(|t| t.parse::<f64>().is_ok()), "{}", l[2]);
    }

    // `$upstream_header_time` is the wait for the backend's head (this backend holds it 200 ms
    // past its arrival: at least that), `$upstream_connect_time` the connect, 0 on a pooled
    // connection, as nginx logs them.
    fn header_and_connect_times_are_logged(engine) {
        let dir = TempDir::new("times");
        let log = dir.path("access.log");
        let (origin, gate) = held_origin("/slow");
        let format = r#"access_format = '$uri $upstream_connect_time $upstream_header_time $upstream_response_time'"#;
        let proxy = Config::new()
            .upstream("web", &[origin.addr()])
            .route("web", "")
            .section("log", &access_log_section(&log, format))
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/slow", &[("Host", "t")], b""));
        assert!(origin.wait_for(Duration::from_secs(10), |s| !s.requests.is_empty()));
        wait_until(Instant::now() + Duration::from_millis(200));
        gate.open();
        assert_eq!(c.read_response().status(), 200);
        c.send(&request("GET", "/fast", &[("Host", "t")], b""));
        assert_eq!(c.read_response().status(), 200);
        let l = lines(&dir, &log, 2);
        let f: Vec<&str> = l[0].split(' ').collect();
        let secs: Vec<f64> = f[1..].iter().map(|t| t.parse().unwrap()).collect();
        assert!(secs[1] >= 0.2 && secs[2] >= secs[1], "{}", l[0]);
        let f: Vec<&str> = l[1].split(' ').collect();
        assert_eq!((f[0], f[1]), ("/fast", "0.000"), "a pooled connection: {}", l[1]);
    }

    // `$upstream_queue_time`, HAProxy's `Tw`: the time in the breaker's queue. A request
    // refused when its wait ended waited at least queue_timeout; one sent without waiting
    // waited 0; one refused with the queue full, never picked, has none. (The wait is 3 s,
    // far more than /three needs to arrive once a scrape shows /two queued.)
    fn queue_time_is_logged(engine) {
        let dir = TempDir::new("queue");
        let log = dir.path("access.log");
        let lock = LockStep::bind();
        let breaker = "[upstream.breaker]\nmax_requests = 1\nqueue = 1\nqueue_timeout = \"3s\"\n";
        let format = r#"access_format = '$uri $status $upstream_queue_time'"#;
        let proxy = Config::new()
            .upstream_with("web", &[lock.addr()], breaker)
            .route("web", "")
            .admin("")
            .section("log", &access_log_section(&log, format))
            .start(engine);
        let mut c1 = Client::connect(proxy.addr());
        c1.send(&request("GET", "/one", &[("Host", "t")], b""));
        let mut held = lock.accept();
        assert!(held.read_head().starts_with("GET /one "));
        let mut c2 = Client::connect(proxy.addr());
        c2.send(&request("GET", "/two", &[("Host", "t")], b""));
        let b = lock.addr().to_string();
        let labels = [("upstream", "web"), ("backend", b.as_str())];
        // A quick scrape (scrape_until also runs the Python parser, seconds on a busy host).
        let deadline = Instant::now() + Duration::from_secs(10);
        let queued = || parse_quick(&admin_get(proxy.admin_addr(), "/metrics", None).body);
        while queued().value("edgeshard_breaker_queued_total", &labels) != 1.0 {
            assert!(Instant::now() < deadline, "/two never queued");
            thread::yield_now();
        }
        let mut c3 = Client::connect(proxy.addr());
        c3.send(&request("GET", "/three", &[("Host", "t")], b""));
        assert_eq!(c3.read_response().status(), 503);
        assert_eq!(c2.read_response().status(), 503);
        held.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        held.close();
        assert_eq!(c1.read_response().status(), 200);
        let l = lines(&dir, &log, 3);
        let of = |uri: &str| -> Vec<String> {
            let line = l.iter().find(|l| l.starts_with(&format!("{uri} "))).unwrap();
            line.split(' ').map(str::to_string).collect()
        };
        assert_eq!(of("/three")[1..], ["503", "-"], "refused at once, never picked");
        let two = of("/two");
        assert_eq!(two[1], "503");
        assert!(two[2].parse::<f64>().unwrap() >= 3.0, "waited its queue_timeout: {two:?}");
        assert_eq!(of("/one")[1..], ["200", "0.000"], "sent without waiting");
    }
}
