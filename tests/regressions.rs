//! Regressions found by review of the request path; each test names the finding it covers.

use crate::support::*;
use std::time::Duration;

both_engines! {
    // A backend that sends bytes after a complete response must not have them delivered to
    // the next client: pooled connections are probed at checkout.
    fn stray_bytes_on_pooled_connection_never_reach_another_client(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);

        let mut c1 = Client::connect(proxy.addr());
        c1.send(&get("example.com", "/poison"));
        let mut first = backend.accept();
        first.read_head();
        first.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let r = c1.read_response();
        assert_eq!(r.body_str(), "ok");
        // The pooled connection now carries a second, unsolicited response.
        first.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET");

        let mut c2 = Client::connect(proxy.addr());
        c2.send(&get("example.com", "/victim"));
        let mut second = backend
            .try_accept(Duration::from_secs(5))
            .expect("the poisoned connection must be dropped and a fresh one opened");
        let head = second.read_head();
        assert!(head.starts_with("GET /victim "), "{head:?}");
        second.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh");
        let r = c2.read_response();
        assert_eq!(r.body_str(), "fresh", "a stray response was delivered to another client");
    }

    // A GET with a body may be parsed by a backend as two requests ("CL.0"); the upstream
    // connection it used is not pooled.
    // So is one that carried a body on a method the proxy does not know: a backend may read
    // `get` as GET (methods are case-sensitive, but not everywhere), or ignore the body of a
    // method it does not serve.
    fn get_with_body_does_not_pool_its_upstream_connection(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(c.read_response().status(), 200);
        c.send(&get("example.com", "/b"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(origin.accepted(), 2, "the connection that carried a GET body was reused");
        c.send(b"get /c HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(c.read_response().status(), 200);
        c.send(&get("example.com", "/d"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(origin.accepted(), 3, "the connection that carried a `get` body was reused");
    }

    // A head dripped one byte per write is still parsed correctly (the parser only runs when
    // the end of the head may have arrived).
    fn head_dripped_byte_by_byte(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        let req = b"GET /drip HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n";
        for b in req.iter() {
            c.send(std::slice::from_ref(b));
        }
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(origin.last_request().path(), "/drip");
        // And a bad head dripped the same way is still refused.
        let mut c = Client::connect(proxy.addr());
        for b in b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".iter() {
            let _ = c.try_send(std::slice::from_ref(b));
        }
        assert_eq!(c.read_response().status(), 400);
    }

    // Requests on keep-alive connections that went cold (idle past the hot window) are read
    // completely: no byte is lost when the hot read is cancelled.
    fn request_after_idle_window_is_intact(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).admin("").start(engine);
        let mut c = Client::connect(proxy.addr());
        for i in 0..3 {
            // Past the 200 ms hot window, as the proxy reports: each request after the
            // first arrives on a cold connection (a late timer would test a hot one).
            if i > 0 {
                scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "cold", |m| {
                    m.value("edgeshard_connections_idle", &[]) == 1.0
                });
            }
            c.send(&get("example.com", &format!("/r{i}")));
            assert_eq!(c.read_response().status(), 200);
        }
        let paths: Vec<String> = origin.requests().iter().map(|r| r.path().to_string()).collect();
        assert_eq!(paths, vec!["/r0", "/r1", "/r2"]);
    }

    // Host values outside RFC 9110 / 3986 authority syntax, and dot segments that a backend
    // would normalise past the route table, are refused with 400 and never forwarded.
    fn invalid_host_and_dot_segments_are_refused(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: user@internal\r\n\r\n",
            b"GET http://user@internal/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /api/../admin HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /api/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n",
            // Cut at the last `:` here, at the first by nginx: two virtual hosts.
            b"GET / HTTP/1.1\r\nHost: secret.example:80:81\r\n\r\n",
            b"GET http://secret.example:1:/ HTTP/1.1\r\nHost: a\r\n\r\n",
            // `\` is `/` to a WHATWG URL parser (Node's `new URL()`): `/admin/x` there.
            b"GET /public\\..\\admin/x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\\admin/x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n",
            // Names that miss their routes here and are `app.example` to a WHATWG URL parser,
            // or have an empty label (nginx refuses both).
            b"GET / HTTP/1.1\r\nHost: app.exampl%65\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: app.example..\r\n\r\n",
            b"GET http://.app.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let mut c = Client::connect(proxy.addr());
            c.send(raw);
            let r = c.read_response();
            assert_eq!(r.status(), 400, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(origin.request_count(), 0, "a refused request reached the backend");
    }

    // What browsers, Node's fetch and curl send raw (`|` and `^` in a path; `{}`, `|`, `"`, a
    // lone `%` in a query, which is neither routed on nor decoded) reaches the backend byte
    // for byte, as through nginx and HAProxy.
    fn browser_targets_pass_as_sent(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let targets = [
            "/maps?markers=color:red|label:S",
            "/search?filter={%22a%22:1}&raw={\"b\":2}",
            "/q?x=100%&sel=a^b&t=`y`",
            "/p|x^y",
        ];
        let mut c = Client::connect(proxy.addr());
        for t in targets {
            c.send(format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            assert_eq!(c.read_response().status(), 200, "{t}");
        }
        let seen: Vec<String> = origin.requests().iter().map(|r| r.target.clone()).collect();
        assert_eq!(seen, targets);
    }

    // `/%61dmin/x`, `//admin/x`, `/admin%2Fx`, `/admin%5Cx` and `/admin;p/x` are `/admin/x` to a
    // backend that decodes escapes, merges slashes or removes path parameters: they meet the `/admin/` route's rules (here a 403), not the
    // catch-all's, and a rewrite of that route applies to them; the target goes on as received.
    fn encoded_and_doubled_paths_meet_the_routes_rules(engine) {
        let admin = Origin::start("admin");
        let open = Origin::start("open");
        let proxy = Config::new()
            .upstream("admin", &[admin.addr()])
            .upstream("open", &[open.addr()])
            .route("admin", "path_prefix = \"/admin/\"\ndeny = [\"127.0.0.0/8\"]")
            .route("admin", "path_prefix = \"/api/\"\nstrip_prefix = \"/api\"")
            .route("open", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let respelled = ["/%61dmin/x", "//admin/x", "/%61%64%6D%69%6E/", "/admin//x", "/admin%2Fx"];
        // `%5C` too: IIS and ASP.NET read a decoded `\` as `/`; and path parameters, which
        // Tomcat, Jetty and Spring remove (`/admin;x/y` is their `/admin/y`).
        let params = ["/admin;x/y", "/admin;/y", "/admin;a=b;c/"];
        for path in respelled.into_iter().chain(["/admin%5Cx", "/admin%5cx"]).chain(params) {
            c.send(&get("example.com", path));
            assert_eq!(c.read_response().status(), 403, "{path}");
        }
        for (path, sent) in [("//api/%76?q=1", "/v?q=1"), ("/%61pi/v", "/v")] {
            c.send(&get("example.com", path));
            let r = c.read_response();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.header("x-backend"), Some("admin"), "{path}");
            assert_eq!(admin.last_request().target, sent, "{path}");
        }
        // Forwarded as received: what other routes match, with their escapes and slashes.
        for (path, sent) in [("/other%2Fx", "/other%2Fx"), ("//other//x", "//other//x")] {
            c.send(&get("example.com", path));
            let r = c.read_response();
            assert_eq!(r.header("x-backend"), Some("open"), "{path}");
            assert_eq!(open.last_request().target, sent, "{path}");
        }
        assert_eq!(admin.request_count(), 2, "only the two /api/ requests");
    }

    // A fragment, or a dot segment between encoded slashes or backslashes or before path
    // parameters that a backend would resolve (`/a%2F..%2Fadmin` is `/admin` to a decoding one,
    // `/x/..%5Cadmin` to IIS,
    // `/public/..;/admin` to Tomcat), is refused with 400 and never forwarded.
    fn fragments_and_dot_segments_between_encoded_slashes_are_refused(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        for target in [
            "/admin#x",
            "/a%2F..%2Fadmin",
            "/a%2f%2E%2e%2Fadmin",
            "/%2e%2e//admin",
            "/public/..;/admin",
            "/x/..%5Cadmin",
            "/x%5C..%5Cadmin",
            "/x/%2e%2e%5cadmin",
            // A path parameter with an encoded slash: `//admin/secret` to Tomcat, which
            // drops the parameter before decoding; `/;/x/admin/secret` to a decoding one.
            "/;%2Fx/admin/secret",
            "/api/;%5Cx/admin/k",
        ] {
            let mut c = Client::connect(proxy.addr());
            c.send(&get("example.com", target));
            assert_eq!(c.read_response().status(), 400, "{target}");
        }
        assert_eq!(origin.request_count(), 0, "a refused request reached the backend");
    }

    // A refused request whose body is still arriving gets its 413 (no reset destroys it).
    fn refused_body_gets_its_response_before_close(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).limit("max_body_bytes", "1024").start(engine);
        let mut c = Client::connect(proxy.addr());
        let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'x', 200_000));
        let _ = c.try_send(&req);
        let r = c.read_response();
        assert_eq!(r.status(), 413);
        c.expect_closed();
    }
}
