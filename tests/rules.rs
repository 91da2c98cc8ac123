//! Per-route rules (issue 18): path rewrites (`strip_prefix`, `rewrite`, `add_prefix`),
//! `upstream_host`, request and response header rules (route and listener, with variables
//! and the security preset) and `redirect`, seen by a real backend and a real client.

use crate::support::*;

both_engines! {
    // What the backend receives: the rewritten path with the client's query.
    fn rewrites_change_the_path_the_backend_receives(engine) {
        let origin = Origin::start("o");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "path_prefix = \"/api/\"\nstrip_prefix = \"/api\"")
            .route("main", "path_prefix = \"/v1/\"\nstrip_prefix = \"/v1/\"\nadd_prefix = \"/v2\"")
            .route("main", "path_prefix = \"/old/\"\nrewrite = { regex = \"^/old/([a-z]+)/(.*)$\", replace = \"/new/$2/$1\" }")
            .route("main", "path_prefix = \"/bad/\"\nrewrite = { regex = \"^/bad/(.*)$\", replace = \"$1\" }")
            .route("main", "path_prefix = \"/host/\"\nupstream_host = \"internal.example:8080\"")
            .route("main", "path_prefix = \"/s.\"\nstrip_prefix = \"/s\"")
            .route("main", "path_prefix = \"/rw/\"\nrewrite = { regex = \"^/rw/([^/]*)-([^/]*)(.*)$\", replace = \"/$1/$2$3\" }")
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for (sent, received) in [
            ("/api/users?id=7&x=%20", "/users?id=7&x=%20"),
            ("/api/", "/"),
            ("/v1/items?q", "/v2/items?q"),
            ("/old/abc/d/e.txt?k=v", "/new/d/e.txt/abc?k=v"),
            ("/old/ABC/x", "/old/ABC/x"),
            ("/plain?a=b", "/plain?a=b"),
            // Never a protocol-relative `//host/...` (a URL-resolving backend's host).
            ("/api//evil.example/x", "/evil.example/x"),
            ("/rw/-x/admin", "/x/admin"),
            ("/rw/-/evil.example", "/evil.example"),
            ("/old/q/", "/new//q"),
        ] {
            c.send(&get("example.com", sent));
            assert_eq!(c.read_response().status(), 200, "{sent}");
            let r = origin.last_request();
            assert_eq!(r.target, received, "{sent}");
            assert_eq!(r.header("Host"), Some("example.com"), "{sent}");
        }
        c.send(&get("example.com", "/host/x?y"));
        assert_eq!(c.read_response().status(), 200);
        let r = origin.last_request();
        assert_eq!(r.target, "/host/x?y");
        assert_eq!(r.header("Host"), Some("internal.example:8080"));
        assert_eq!(r.header("X-Forwarded-Host"), Some("example.com"));
        // A regex that makes no valid path: 500, never forwarded; the connection stays.
        let before = origin.request_count();
        c.send(&get("example.com", "/bad/x"));
        assert_eq!(c.read_response().status(), 500);
        assert_eq!(origin.request_count(), before);
        c.send(&get("example.com", "/api/again"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(origin.last_request().target, "/again");
        // A dot segment made of the request's own dots, plain or encoded (the route matches
        // the decoded path), is the request's fault: 400, never forwarded.
        for sent in ["/s../x", "/s%2e%2e/x", "/s.%2E/x", "/s./x"] {
            let mut c = Client::connect(proxy.addr());
            c.send(&get("example.com", sent));
            assert_eq!(c.read_response().status(), 400, "{sent}");
        }
        assert_eq!(origin.request_count(), before + 1);
    }

    // A route without a path condition also gets targets with no path to rewrite:
    // absolute-form with an empty path, which is `/` (RFC 9110 §4.2.3), rewritten as `/`,
    // and `OPTIONS *` (also what `OPTIONS http://h` becomes), forwarded as `*` (never a 500,
    // never `/v2*`).
    fn rewrites_of_an_empty_path_and_of_asterisk_form(engine) {
        let origin = Origin::start("o");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "host = \"strip.example\"\nstrip_prefix = \"/api\"")
            .route("main", "host = \"add.example\"\nadd_prefix = \"/v2\"")
            .route("main", "host = \"r.example\"\nredirect = { to = \"https://new.example${path}\" }")
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for (line, host, received) in [
            ("GET http://strip.example?q=1", "strip.example", "/?q=1"),
            ("GET http://add.example?q=1", "add.example", "/v2/?q=1"),
            ("GET http://add.example", "add.example", "/v2/"),
            ("OPTIONS *", "strip.example", "*"),
            ("OPTIONS *", "add.example", "*"),
            // The server as a whole in absolute form is asked as `OPTIONS *` (RFC 9112
            // §3.2.4); with a path it stays a path.
            ("OPTIONS http://add.example:8001", "add.example", "*"),
            ("OPTIONS http://strip.example/", "strip.example", "/"),
        ] {
            c.send(format!("{line} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
            assert_eq!(c.read_response().status(), 200, "{line}");
            assert_eq!(origin.last_request().target, received, "{line}");
        }
        // `${path}` of either is the root.
        for line in ["GET http://r.example?q=1", "OPTIONS *"] {
            c.send(format!("{line} HTTP/1.1\r\nHost: r.example\r\n\r\n").as_bytes());
            let r = c.read_response();
            assert_eq!(r.status(), 302, "{line}");
            assert!(r.header("Location").unwrap().starts_with("https://new.example/"), "{line}: {:?}", r.header("Location"));
            assert!(!r.header("Location").unwrap().contains('*'), "{line}");
        }
    }

    // Request rules: set replaces the client's copies, add appends, remove drops; variables
    // describe the request as the client sent it; the listener's rules apply first.
    fn request_header_rules_reach_the_backend(engine) {
        let origin = Origin::start("o");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .only_listener("address = \"127.0.0.1:0\"\nrequest_headers = { set = { \"X-Edge\" = \"listener\", \"X-Both\" = \"listener\" }, add = { \"X-L\" = \"1\" } }")
            .route(
                "main",
                "name = \"api\"\npath_prefix = \"/api/\"\nstrip_prefix = \"/api\"\nrequest_headers = { set = { \"X-Route\" = \"${route}\", \"X-Client\" = \"${client_ip} ${scheme}://${host}${path}?${query}\", \"X-Both\" = \"route\", \"X-Request-Id\" = \"ignored\" }, add = { \"X-Tag\" = \"id=${request_id}\" }, remove = [\"X-Debug\", \"x-l\"] }",
            )
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request(
            "GET",
            "/api/p?q=1",
            &[
                ("Host", "a.example"),
                ("X-Route", "spoofed"),
                ("x-route", "spoofed twice"),
                // What a CGI or WSGI backend reads as X-Route and X-Debug.
                ("X_Route", "spoofed with an underscore"),
                ("X_Debug", "1"),
                ("X-Debug", "1"),
                ("X-Tag", "client"),
                ("X-Other", "kept"),
            ],
            b"",
        ));
        let resp = c.read_response();
        assert_eq!(resp.status(), 200);
        let r = origin.last_request();
        assert_eq!(r.header_all("X-Route"), ["api"], "{}", r.raw_head);
        assert_eq!(
            r.header("X-Client"),
            Some("127.0.0.1 http://a.example/api/p?q=1")
        );
        assert!(!r.has_header("X-Debug"), "{}", r.raw_head);
        assert!(!r.has_header("X_Route") && !r.has_header("X_Debug"), "{}", r.raw_head);
        let rid = r.header("X-Request-Id").expect("request id").to_string();
        assert_eq!(r.header_all("X-Request-Id").len(), 1, "the proxy's id wins: {}", r.raw_head);
        assert_eq!(resp.header("X-Request-Id"), Some(rid.as_str()));
        assert_eq!(r.header_all("X-Tag"), ["client".to_string(), format!("id={rid}")]);
        assert_eq!(r.header("X-Other"), Some("kept"));
        assert_eq!(r.header_all("X-Edge"), ["listener"]);
        // The route's `set` and `remove` also apply to what the listener wrote.
        assert_eq!(r.header_all("X-Both"), ["route"], "{}", r.raw_head);
        assert!(!r.has_header("X-L"), "{}", r.raw_head);
        // Another route: the listener's rules only.
        c.send(&request("GET", "/x", &[("Host", "a.example"), ("X-Debug", "1")], b""));
        assert_eq!(c.read_response().status(), 200);
        let r = origin.last_request();
        assert_eq!(r.header("X-Debug"), Some("1"));
        assert_eq!(r.header_all("X-Both"), ["listener"]);
        assert_eq!(r.header("X-L"), Some("1"));
        assert!(!r.has_header("X-Route"));
    }

    // Response rules and the security preset: the client sees them; the backend's copies of
    // a set or removed name are gone.
    fn response_header_rules_reach_the_client(engine) {
        let origin = Origin::with_handler("o", |_| Reply::Response {
            status: 200,
            headers: vec![
                ("X-Frame-Options".into(), "ALLOW-FROM evil".into()),
                ("X-Secret".into(), "s".into()),
                ("X-Keep".into(), "k".into()),
            ],
            body: b"hi".to_vec(),
            mode: BodyMode::Length,
            close_after: false,
        });
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .only_listener("address = \"127.0.0.1:0\"\nresponse_headers = { add = { \"X-Listener\" = \"${scheme}\" } }")
            .route(
                "main",
                "name = \"sec\"\npath_prefix = \"/sec/\"\nresponse_headers = { preset = \"security\", set = { \"X-Served-By\" = \"${route} for ${client_ip}\" }, add = { \"X-Id\" = \"${request_id}\" }, remove = [\"X-Secret\"] }",
            )
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/sec/a"));
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_str(), "hi");
        assert_eq!(r.header_all("X-Frame-Options"), ["DENY"], "{:?}", r.head);
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(r.header("Referrer-Policy"), Some("strict-origin-when-cross-origin"));
        assert_eq!(r.header("X-Served-By"), Some("sec for 127.0.0.1"));
        assert_eq!(r.header("X-Id"), r.header("X-Request-Id"));
        assert!(r.header("X-Id").is_some_and(|v| !v.is_empty()));
        assert!(r.header("X-Secret").is_none(), "{:?}", r.head);
        assert_eq!(r.header("X-Keep"), Some("k"));
        assert_eq!(r.header("X-Listener"), Some("http"));
        // Without route rules: the backend's fields as they were, plus the listener's.
        c.send(&get("example.com", "/other"));
        let r = c.read_response();
        assert_eq!(r.header("X-Frame-Options"), Some("ALLOW-FROM evil"));
        assert_eq!(r.header("X-Secret"), Some("s"));
        assert!(r.header("X-Content-Type-Options").is_none());
        assert_eq!(r.header("X-Listener"), Some("http"));
    }

    // Every redirect status, with the query kept and dropped; the backend sees none of them.
    fn redirects_answer_with_their_status_and_location(engine) {
        let origin = Origin::start("o");
        let mut cfg = Config::new().upstream("main", &[origin.addr()]);
        for s in [301, 302, 303, 307, 308] {
            cfg = cfg
                .route("main", &format!("path_prefix = \"/k{s}/\"\nredirect = {{ status = {s}, to = \"https://new.example${{path}}\" }}"))
                .route("main", &format!("path_prefix = \"/d{s}/\"\nredirect = {{ status = {s}, to = \"${{scheme}}://${{host}}/moved\", query = false }}"));
        }
        let proxy = cfg
            .route("main", "name = \"r\"\npath_prefix = \"/q/\"\nredirect = { to = \"/elsewhere?from=${route}\" }")
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for (s, reason) in [(301, "Moved Permanently"), (302, "Found"), (303, "See Other"), (307, "Temporary Redirect"), (308, "Permanent Redirect")] {
            c.send(&get("a.example:8080", &format!("/k{s}/x?a=1&b=2")));
            let r = c.read_response();
            assert_eq!(r.status(), s);
            assert_eq!(r.head.reason, reason);
            assert_eq!(r.header("Location"), Some(format!("https://new.example/k{s}/x?a=1&b=2").as_str()));
            c.send(&get("a.example:8080", &format!("/d{s}/x?a=1")));
            let r = c.read_response();
            assert_eq!(r.status(), s);
            assert_eq!(r.header("Location"), Some("http://a.example:8080/moved"));
            // Without a query there is nothing to keep.
            c.send(&get("a.example", &format!("/k{s}/y")));
            assert_eq!(c.read_response().header("Location"), Some(format!("https://new.example/k{s}/y").as_str()));
        }
        // Default status 302; a template with its own query gets the request's after `&`.
        c.send(&get("a.example", "/q/x?z=9"));
        let r = c.read_response();
        assert_eq!(r.status(), 302);
        assert_eq!(r.header("Location"), Some("/elsewhere?from=r&z=9"));
        // What a path or query may carry raw but a URI may not is percent-encoded.
        c.send(&get("a.example", "/k301/caf\u{e9}|?q=<x>\"{}`"));
        let r = c.read_response();
        assert_eq!(
            r.header("Location"),
            Some("https://new.example/k301/caf%C3%A9%7C?q=%3Cx%3E%22%7B%7D%60")
        );
        // A `%` that starts no escape (a query may carry one) is one too.
        c.send(&get("a.example", "/k301/x?q=100%&r=%41"));
        let r = c.read_response();
        assert_eq!(r.header("Location"), Some("https://new.example/k301/x?q=100%25&r=%41"));
        // A target naming ${host} for a request with none (HTTP/1.0): 400, never
        // `http:///evil.example/x`, which a browser reads as host evil.example.
        let mut c10 = Client::connect(proxy.addr());
        c10.send(b"GET /d301/evil.example/x HTTP/1.0\r\n\r\n");
        let r = c10.read_response();
        assert_eq!(r.status(), 400, "{}", r.head.raw);
        assert_eq!(origin.request_count(), 0);
    }
}

#[test]
fn check_refuses_rules_on_framing_fields_and_bad_rewrites() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n[[route]]\nupstream = \"u\"\n";
    for (extra, key, words) in [
        (
            "request_headers = { set = { \"Content-Length\" = \"5\" } }",
            "route[0].request_headers.set.Content-Length",
            &["framing"][..],
        ),
        (
            "response_headers = { add = { \"Transfer-Encoding\" = \"chunked\" } }",
            "route[0].response_headers.add.Transfer-Encoding",
            &["hop-by-hop"][..],
        ),
        (
            "request_headers = { remove = [\"Connection\"] }",
            "route[0].request_headers.remove[0]",
            &["hop-by-hop"][..],
        ),
        (
            "request_headers = { set = { \"X-A\" = \"${nope}\" } }",
            "route[0].request_headers.set.X-A",
            &["unknown variable"][..],
        ),
        (
            "response_headers = { set = { \"X-A\" = \"${path}\" } }",
            "route[0].response_headers.set.X-A",
            &["not known"][..],
        ),
        (
            "response_headers = { preset = \"paranoid\" }",
            "route[0].response_headers.preset",
            &["security"][..],
        ),
        (
            "rewrite = { regex = \"([\", replace = \"/\" }",
            "route[0].rewrite.regex",
            &["invalid regex"][..],
        ),
        (
            "strip_prefix = \"api\"",
            "route[0].strip_prefix",
            &["start with '/'"][..],
        ),
        ("add_prefix = \"/v2/\"", "route[0].add_prefix", &["end"][..]),
        (
            "upstream_host = \"a b\"",
            "route[0].upstream_host",
            &["invalid host"][..],
        ),
        (
            "upstream_host = \"a.example:99999\"",
            "route[0].upstream_host",
            &["1-65535"][..],
        ),
        (
            "upstream_host = \"a.example:80:81\"",
            "route[0].upstream_host",
            &["invalid host"][..],
        ),
        (
            "redirect = { status = 304, to = \"/x\" }",
            "route[0].redirect.status",
            &["301, 302, 303, 307 or 308"][..],
        ),
        (
            "redirect = { to = \"/a b\" }",
            "route[0].redirect.to",
            &["not allowed"][..],
        ),
    ] {
        expect_check_error_in(&format!("{base}{extra}\n"), key, words);
    }
    let listener = "[[listener]]\naddress = \"127.0.0.1:0\"\nresponse_headers = { set = { \"Connection\" = \"close\" } }\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    expect_check_error_in(
        listener,
        "listener[0].response_headers.set.Connection",
        &["hop-by-hop"],
    );
}
