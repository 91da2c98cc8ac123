//! Header rewriting: hop-by-hop removal, X-Forwarded-*, Via.

use crate::support::*;

fn forward(engine: Engine, headers: &[(&str, &str)]) -> Recorded {
    let (proxy, origin) = proxy_with_origin(engine);
    let mut c = Client::connect(proxy.addr());
    c.send(&request("GET", "/h", headers, b""));
    let r = c.read_response();
    assert_eq!(r.status(), 200);
    origin.assert_no_errors();
    origin.last_request()
}

/// All values of a (possibly repeated) list header, split on commas.
fn list(rec: &Recorded, name: &str) -> Vec<String> {
    rec.header_all(name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

both_engines! {
    fn hop_by_hop_headers_removed(engine) {
        let rec = forward(engine, &[
            ("Host", "h.example"),
            ("Connection", "keep-alive, X-Foo, x-other"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "X-T"),
            ("X-Foo", "secret"),
            ("X-Other", "secret2"),
            ("X_Other", "secret3"),
            ("X-Bar", "kept"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ]);
        let h = &rec.raw_head;
        for name in ["keep-alive", "te", "upgrade", "proxy-connection", "trailer", "x-foo", "x-other", "x_other"] {
            assert!(!rec.has_header(name), "hop-by-hop header {name} must be removed; forwarded head:\n{h}");
        }
        // The proxy may announce its own connection management upstream, but
        // nothing of the client's Connection header may survive.
        for tok in list(&rec, "connection") {
            let t = tok.to_ascii_lowercase();
            assert!(t == "keep-alive" || t == "close", "forwarded Connection must only carry the proxy's own keep-alive/close; got {tok:?} in:\n{h}");
        }
        assert_eq!(rec.header("x-bar"), Some("kept"), "end-to-end header must be kept:\n{h}");
        assert_eq!(rec.header("proxy-authorization"), Some("Basic Zm9vOmJhcg=="), "Proxy-Authorization is kept per the contract:\n{h}");
    }
    fn repeated_end_to_end_headers_kept_in_order(engine) {
        let rec = forward(engine, &[
            ("Host", "h.example"),
            ("X-Multi", "one"),
            ("Accept", "text/plain"),
            ("X-Multi", "two"),
        ]);
        assert_eq!(list(&rec, "x-multi"), vec!["one", "two"], "forwarded head:\n{}", rec.raw_head);
        assert_eq!(rec.header("accept"), Some("text/plain"));
    }
    // From a trusted proxy the chain is kept and the peer appended; from anyone else the
    // incoming field is replaced (tests/access.rs has the rest of the client identity).
    fn x_forwarded_for_appended_only_for_trusted_proxies(engine) {
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .server("trusted_proxies", "[\"127.0.0.1\"]")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/h", &[("Host", "h.example"), ("X-Forwarded-For", "10.0.0.1, 10.0.0.2")], b""));
        assert_eq!(c.read_response().status(), 200);
        let rec = origin.last_request();
        assert_eq!(
            list(&rec, "x-forwarded-for"),
            vec!["10.0.0.1", "10.0.0.2", "127.0.0.1"],
            "the peer must be appended to a trusted X-Forwarded-For; forwarded head:\n{}",
            rec.raw_head
        );
        let rec = forward(engine, &[("Host", "h.example"), ("X-Forwarded-For", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(list(&rec, "x-forwarded-for"), vec!["127.0.0.1"], "forwarded head:\n{}", rec.raw_head);
    }
    // A trusted proxy in front (a CDN that terminated TLS) says which scheme and host its
    // client used: kept, where an untrusted client's are replaced. `_` spellings of the
    // proxy's own fields are dropped from anyone (a backend that reads `_` as `-` would see
    // two values).
    fn a_trusted_proxys_forwarded_scheme_and_host_are_kept(engine) {
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .server("trusted_proxies", "[\"127.0.0.1\"]")
            .start(engine);
        let sent = [
            ("Host", "origin.internal"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "www.example"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("X_Forwarded_For", "9.9.9.9"),
            ("X_Forwarded_Host", "evil.example"),
        ];
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/h", &sent, b""));
        assert_eq!(c.read_response().status(), 200);
        let rec = origin.last_request();
        let h = &rec.raw_head;
        assert_eq!(rec.header_all("x-forwarded-proto"), ["https"], "{h}");
        assert_eq!(rec.header_all("x-forwarded-host"), ["www.example"], "{h}");
        assert_eq!(list(&rec, "x-forwarded-for"), vec!["1.1.1.1", "127.0.0.1"], "{h}");
        assert!(!h.contains("X_Forwarded"), "{h}");
        // Not a scheme: the proxy's own.
        c.send(&request("GET", "/h", &[("Host", "a"), ("X-Forwarded-Proto", "https, http")], b""));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(origin.last_request().header_all("x-forwarded-proto"), ["http"]);
        // From an untrusted client: the proxy's own.
        let rec = forward(engine, &sent);
        let h = &rec.raw_head;
        assert_eq!(rec.header_all("x-forwarded-proto"), ["http"], "{h}");
        assert_eq!(rec.header_all("x-forwarded-host"), ["origin.internal"], "{h}");
        assert!(!h.contains("X_Forwarded") && !h.contains("9.9.9.9"), "{h}");
    }
    fn x_forwarded_for_added(engine) {
        let rec = forward(engine, &[("Host", "h.example")]);
        assert_eq!(list(&rec, "x-forwarded-for"), vec!["127.0.0.1"], "forwarded head:\n{}", rec.raw_head);
    }
    fn x_forwarded_proto_host_and_via_added(engine) {
        let rec = forward(engine, &[("Host", "h.example:8080")]);
        let h = &rec.raw_head;
        assert_eq!(rec.header("x-forwarded-proto"), Some("http"), "forwarded head:\n{h}");
        assert_eq!(rec.header("x-forwarded-host"), Some("h.example:8080"), "forwarded head:\n{h}");
        assert!(
            list(&rec, "via").iter().any(|v| v == "1.1 edgeshard"),
            "Via: 1.1 edgeshard must be added; forwarded head:\n{h}"
        );
    }
    fn via_appended_to_existing(engine) {
        let rec = forward(engine, &[("Host", "h.example"), ("Via", "1.0 upstream-cache")]);
        let via = list(&rec, "via");
        assert_eq!(via, vec!["1.0 upstream-cache", "1.1 edgeshard"], "forwarded head:\n{}", rec.raw_head);
    }
    fn response_hop_by_hop_headers_removed(engine) {
        // RFC 9110 7.6.1 applies to responses too.
        let origin = Origin::with_handler("o", |_| Reply::Response {
            status: 200,
            headers: vec![
                ("Connection".into(), "X-Resp-Private".into()),
                ("X-Resp-Private".into(), "1".into()),
                ("Keep-Alive".into(), "timeout=5".into()),
                ("X-Resp-Public".into(), "2".into()),
            ],
            body: b"ok".to_vec(),
            mode: BodyMode::Length,
            close_after: false,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("h.example", "/"));
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_str(), "ok");
        assert!(r.header("x-resp-private").is_none(), "header named in the backend's Connection must be removed:\n{}", r.head.raw);
        assert!(r.header("keep-alive").is_none(), "backend Keep-Alive must be removed:\n{}", r.head.raw);
        assert_eq!(r.header("x-resp-public"), Some("2"));
        // A chunked response's `Trailer` is relayed with its chunks, unless the backend's
        // own `Connection` names it.
        let origin = Origin::with_handler("o", |r| Reply::Response {
            status: 200,
            headers: if r.path() == "/named" {
                vec![("Connection".into(), "Trailer".into()), ("Trailer".into(), "X-T".into())]
            } else {
                vec![("Trailer".into(), "X-T".into())]
            },
            body: b"chunks".to_vec(),
            mode: BodyMode::Chunked,
            close_after: false,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("h.example", "/kept"));
        assert_eq!(c.read_response().header("trailer"), Some("X-T"));
        c.send(&get("h.example", "/named"));
        let r = c.read_response();
        assert_eq!(r.body_str(), "chunks");
        assert!(r.header("trailer").is_none(), "named in Connection:\n{}", r.head.raw);
    }
}

/// An IMF-fixdate, e.g. `Fri, 04 Dec 2026 03:45:09 GMT`.
fn is_http_date(v: &str) -> bool {
    let b = v.as_bytes();
    v.len() == 29 && &b[3..5] == b", " && v.ends_with(" GMT") && b[19] == b':' && b[22] == b':'
}

/// Every header line of a response, for checks that no field names a backend.
fn head_text(r: &Response) -> String {
    r.head
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\n"))
        .collect()
}

both_engines! {
    // Hide the backends: their Server, X-Powered-By and configured fields never reach a
    // client; the proxy's own Server is sent when configured; a Date is added when the
    // backend sent none and kept when it did.
    fn backend_identity_is_hidden_and_date_added(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr())
            .server("server_header", "\"edge\"")
            .server("hide_response_headers", "[\"X-Backend\"]")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/a"));
        let mut up = backend.accept();
        up.read_head();
        up.write(b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.1 (internal-7)\r\nX-Powered-By: PHP/8.1\r\nX-Backend: app-3\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok");
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.header_all("Server"), ["edge"], "{:?}", r.head);
        assert!(r.header("X-Powered-By").is_none(), "{:?}", r.head);
        assert!(r.header("X-Backend").is_none(), "{:?}", r.head);
        assert_eq!(r.header("X-Kept"), Some("1"));
        let dates = r.header_all("Date");
        assert!(dates.len() == 1 && is_http_date(dates[0]), "{dates:?}");

        c.send(&get("example.com", "/b"));
        up.read_head();
        up.write(b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.header_all("Date"), ["Sun, 06 Nov 1994 08:49:37 GMT"], "the backend's Date is kept");

        // `_` spellings are the same fields to many clients: hidden too. A Date the backend
        // named in its Connection is dropped, and the proxy's own is sent instead.
        c.send(&get("example.com", "/c"));
        up.read_head();
        up.write(b"HTTP/1.1 200 OK\r\nConnection: date\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nx_powered_by: PHP/8\r\nx_backend: app-3\r\nContent-Length: 0\r\n\r\n");
        let r = c.read_response();
        assert!(r.header("x_powered_by").is_none() && r.header("x_backend").is_none(), "{:?}", r.head);
        let dates = r.header_all("Date");
        assert!(dates.len() == 1 && is_http_date(dates[0]) && !dates[0].contains("2001"), "{dates:?}");

        // A chunked response's trailer fields are cleaned as its head is: none of the
        // backend's identity, nothing its Connection named, nothing the proxy sets; and none
        // RFC 9110 §6.5.1 keeps out of trailers (a cookie, a redirect, caching: session 12's
        // response fuzz found them relayed, where nginx drops them and HAProxy refuses).
        c.send(b"GET /d HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
        up.read_head();
        up.write(b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nServer: Apache/2.4\r\nX-Powered-By: PHP/7\r\nX-Backend: 127.0.0.1:1\r\nX_Secret: s\r\nX-Request-Id: backend-id\r\nSet-Cookie: session=evil\r\nLocation: https://evil.example/\r\nCache-Control: max-age=86400\r\nX-Kept: 1\r\n\r\n");
        let got = c.read_until_closed(std::time::Duration::from_secs(10)).expect("the response, then a close");
        let got = String::from_utf8_lossy(&got).into_owned();
        let trailer = got.split_once("\r\n0\r\n").map(|(_, t)| t).unwrap_or_else(|| panic!("{got:?}"));
        assert_eq!(trailer, "X-Kept: 1\r\n\r\n", "the client's trailer section: {got:?}");
    }

    fn without_server_header_no_server_field_is_sent(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/a"));
        let mut up = backend.accept();
        up.read_head();
        up.write(b"HTTP/1.1 200 OK\r\nserver: nginx/1.22.1\r\nContent-Length: 0\r\n\r\n");
        let r = c.read_response();
        assert!(r.header("Server").is_none(), "{:?}", r.head);
        // The proxy's own answers carry a Date and no Server either.
        c.send(b"GET /x HTTP/1.1\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status(), 400);
        assert!(r.header("Server").is_none(), "{:?}", r.head);
        assert!(is_http_date(r.header("Date").unwrap_or("")), "{:?}", r.head);
    }

    // The proxy's own error answers name no backend: a refused connection (502) and a
    // backend that never answers (504).
    fn error_answers_carry_a_date_and_name_no_backend(engine) {
        let dead = dead_addr();
        let proxy = Config::single(dead)
            .server("server_header", "\"edge\"")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/a"));
        let r = c.read_response();
        assert_eq!(r.status(), 502);
        let port = dead.port().to_string();
        let all = format!("{}{}", head_text(&r), r.body_str());
        assert!(!all.contains(&port) && !all.contains("127.0.0.1"), "{all}");
        assert!(is_http_date(r.header("Date").unwrap_or("")), "{:?}", r.head);
        assert_eq!(r.header_all("Server"), ["edge"]);

        let silent = LockStep::bind();
        let proxy = Config::single(silent.addr())
            .timeout("upstream_response", "300ms")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/slow"));
        let mut up = silent.accept();
        up.read_head();
        let r = c.read_response();
        assert_eq!(r.status(), 504);
        let port = silent.addr().port().to_string();
        let all = format!("{}{}", head_text(&r), r.body_str());
        assert!(!all.contains(&port) && !all.contains("127.0.0.1"), "{all}");
        assert!(is_http_date(r.header("Date").unwrap_or("")), "{:?}", r.head);
    }
}
