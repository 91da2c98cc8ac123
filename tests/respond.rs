//! `[[route]] respond`: a route that answers itself (nginx's `return`, HAProxy's
//! `http-request return`) with its status, body or file and type, under `HEAD` and on
//! keep-alive connections, with no upstream named and no backend contacted; a small request
//! body is dropped, any other closes the connection after the answer. A `redirect` route
//! needs no upstream either.

use crate::support::tls::CertDir;
use crate::support::*;
use std::time::Duration;

fn ask(c: &mut Client, method: &str, path: &str) -> Response {
    c.send(&request(method, path, &[("Host", "example.com")], b""));
    c.read_response_for(method)
}

both_engines! {
    fn a_route_answers_itself_and_no_backend_is_asked(engine) {
        let dir = CertDir::new("respond");
        let page = dir.write("maintenance.html", "<p>back at six</p>\n");
        let origin = Origin::start("o");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route_without_upstream("path = \"/robots.txt\"\nrespond = { body = \"User-agent: *\\nDisallow: /\\n\", headers = { \"Cache-Control\" = \"max-age=86400\" } }")
            .route_without_upstream(&format!("path_prefix = \"/old/\"\nrespond = {{ status = 503, file = \"{}\" }}", page.display()))
            .route_without_upstream("path = \"/beacon\"\nrespond = { status = 204 }")
            .route_without_upstream("path = \"/gone\"\nrespond = { status = 410, body = \"{}\", content_type = \"application/json\" }")
            .route_without_upstream("path_prefix = \"/moved/\"\nredirect = { to = \"https://new.example${path}\" }")
            .route("main", "")
            .admin("")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let r = ask(&mut c, "GET", "/robots.txt");
        // Its body is counted as sent, and the request under its route.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the answer counted", |m| {
            m.value("edgeshard_client_bytes_sent_total", &[]) == 26.0
                && m.value("edgeshard_route_requests_total", &[("route", "route0"), ("class", "2xx")]) == 1.0
        });
        assert_eq!(r.status(), 200, "{}", r.head.raw);
        assert_eq!(r.body_str(), "User-agent: *\nDisallow: /\n");
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
        assert!(r.header("Date").is_some() && r.header("X-Request-Id").is_some(), "{}", r.head.raw);
        assert!(r.header("Connection").is_none(), "{}", r.head.raw);
        assert_eq!(r.header("Cache-Control"), Some("max-age=86400"));
        // The same connection goes on, through every kind of answer.
        let r = ask(&mut c, "HEAD", "/robots.txt");
        assert_eq!((r.status(), r.header("Content-Length")), (200, Some("26")));
        assert!(r.body.is_empty());
        let r = ask(&mut c, "GET", "/old/page?x=1");
        assert_eq!((r.status(), r.header("Content-Type")), (503, Some("text/html; charset=utf-8")));
        assert_eq!(r.body_str(), "<p>back at six</p>\n");
        let r = ask(&mut c, "GET", "/beacon");
        assert_eq!(r.status(), 204, "{}", r.head.raw);
        assert!(r.header("Content-Length").is_none() && r.header("Content-Type").is_none(), "{}", r.head.raw);
        let r = ask(&mut c, "DELETE", "/gone");
        assert_eq!((r.status(), r.header("Content-Type")), (410, Some("application/json")));
        assert_eq!(r.body_str(), "{}");
        let r = ask(&mut c, "GET", "/moved/a");
        assert_eq!((r.status(), r.header("Location")), (302, Some("https://new.example/moved/a")));
        let r = ask(&mut c, "GET", "/app");
        assert_eq!(r.status(), 200, "other routes forward: {}", r.head.raw);
        let paths: Vec<String> = origin.requests().iter().map(|r| r.path().to_string()).collect();
        assert_eq!(paths, ["/app"], "only the forwarding route reached the backend");
    }
    // A small body of known length (a beacon's) is read and dropped, and the connection goes
    // on; a larger one, a chunked one, or one the client holds back for `100 Continue` is
    // left unread, so the connection closes after the answer (its bytes cannot be told from a
    // next request). No body ever reaches a backend.
    fn bodies_sent_to_an_answering_route_are_dropped_or_close_the_connection(engine) {
        let origin = Origin::start("o");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route_without_upstream("path = \"/beacon\"\nrespond = { status = 204 }")
            .route("main", "")
            .start(engine);
        let post = |c: &mut Client, headers: &[(&str, &str)], body: &[u8]| {
            let mut all = vec![("Host", "example.com")];
            all.extend_from_slice(headers);
            c.send(&request("POST", "/beacon", &all, body));
            c.read_response()
        };
        let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let mut c = Client::connect(proxy.addr());
        for body in [&smuggled[..], &pattern::pattern_vec(64 << 10)] {
            let n = body.len().to_string();
            let r = post(&mut c, &[("Content-Length", &n)], body);
            assert_eq!(r.status(), 204);
            assert!(r.header("Connection").is_none(), "{n} bytes are dropped, the connection kept: {}", r.head.raw);
        }
        // Pipelined behind a dropped body: the next request is served.
        c.send(&get("example.com", "/after"));
        assert_eq!(c.read_response().status(), 200);
        let big = pattern::pattern_vec((64 << 10) + 1);
        let n = big.len().to_string();
        for (headers, body) in [
            (vec![("Content-Length", n.as_str())], big.clone()),
            (vec![("Transfer-Encoding", "chunked")], chunked(smuggled, &[8])),
            (vec![("Content-Length", "45"), ("Expect", "100-continue")], Vec::new()),
        ] {
            let mut c = Client::connect(proxy.addr());
            let r = post(&mut c, &headers, &body);
            assert_eq!(r.status(), 204, "{headers:?}");
            assert_eq!(r.header("Connection"), Some("close"), "{headers:?}: {}", r.head.raw);
            c.expect_closed();
        }
        let paths: Vec<String> = origin.requests().iter().map(|r| r.path().to_string()).collect();
        assert_eq!(paths, ["/after"], "no body is a request");
    }
}
