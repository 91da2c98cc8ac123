//! Message semantics: HTTP/1.0 clients, bodiless responses, Expect:
//! 100-continue, pipelining, Connection: close.

use crate::support::*;
use std::time::Duration;

both_engines! {
    fn http10_without_keepalive_is_closed_after_response(engine) {
        let (proxy, _origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET /a HTTP/1.0\r\nHost: example.com\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_str(), "origin");
        c.expect_closed();
    }
    fn http10_with_keepalive_stays_open(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        for i in 0..3 {
            c.send(format!("GET /k{i} HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n").as_bytes());
            let r = c.read_response();
            assert_eq!(r.status(), 200, "request {i}");
            assert_eq!(r.body_str(), "origin");
            assert!(
                matches!(r.framing, Framing::Length(_)),
                "a kept-alive HTTP/1.0 response needs Content-Length; got:\n{}",
                r.head.raw
            );
            assert!(
                r.has_token("connection", "keep-alive"),
                "HTTP/1.0 keep-alive must be confirmed with Connection: keep-alive; got:\n{}",
                r.head.raw
            );
        }
        assert_eq!(origin.request_count(), 3);
    }
    fn chunked_response_to_http10_client_is_unchunked_then_closed(engine) {
        let (proxy, _origin) = proxy_with_origin(engine);
        let len = 100_000u64;
        let mut c = Client::connect(proxy.addr());
        c.send(format!("GET /gen/{len}/chunked HTTP/1.0\r\nHost: example.com\r\n\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert!(
            r.header("transfer-encoding").is_none(),
            "an HTTP/1.0 client must never get Transfer-Encoding; got:\n{}",
            r.head.raw
        );
        assert_eq!(r.body.len() as u64, len, "framing {:?}", r.framing);
        assert_eq!(pattern::sha256_hex(&r.body), pattern::expected_sha256(len));
        if r.framing != Framing::Close {
            c.expect_closed();
        }
    }
    fn chunked_response_to_http10_keepalive_client(engine) {
        // With keep-alive requested, the proxy cannot chunk, so it must either
        // close-delimit (and close) or know the length; either way the body
        // must be intact and unchunked.
        let (proxy, _origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET /gen/5000/chunked HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert!(r.header("transfer-encoding").is_none(), "got:\n{}", r.head.raw);
        assert_eq!(r.body, pattern::pattern_vec(5000));
    }
    fn head_response_has_no_body(engine) {
        let (proxy, _origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"HEAD /x HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let r = c.read_response_for("HEAD");
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("content-length"), Some("6"), "HEAD keeps the backend's Content-Length");
        // If any body bytes leaked, the next response would not parse.
        c.send(&get("example.com", "/after-head"));
        let r = c.read_response();
        assert_eq!(r.status(), 200, "response after HEAD:\n{}", r.head.raw);
        assert_eq!(r.header("x-path"), Some("/after-head"));
    }
    fn head_of_large_resource_has_no_body(engine) {
        let (proxy, _origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"HEAD /gen/100000/cl HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let r = c.read_response_for("HEAD");
        assert_eq!(r.status(), 200);
        c.send(&get("example.com", "/after-head"));
        let r = c.read_response();
        assert_eq!(r.header("x-path"), Some("/after-head"));
    }
    fn no_content_204_with_lying_content_length_has_no_body(engine) {
        let origin = Origin::with_handler("o", |req| match req.path() {
            "/204" => Reply::Response {
                status: 204,
                headers: vec![("Content-Length".into(), "5".into())],
                body: vec![],
                mode: BodyMode::Omit,
                close_after: false,
            },
            _ => Reply::Default,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.timeout = Duration::from_secs(5);
        c.send(&get("example.com", "/204"));
        let r = c.read_response();
        assert_eq!(r.status(), 204);
        c.send(&get("example.com", "/after"));
        let r = c.read_response();
        assert_eq!(r.status(), 200, "response after 204:\n{}", r.head.raw);
        assert_eq!(r.header("x-path"), Some("/after"));
    }
    fn not_modified_304_with_content_length_has_no_body(engine) {
        let origin = Origin::with_handler("o", |req| match req.path() {
            "/304" => Reply::Response {
                status: 304,
                headers: vec![("Content-Length".into(), "1234".into()), ("ETag".into(), "\"v1\"".into())],
                body: vec![],
                mode: BodyMode::Omit,
                close_after: false,
            },
            _ => Reply::Default,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.timeout = Duration::from_secs(5);
        c.send(&request("GET", "/304", &[("Host", "example.com"), ("If-None-Match", "\"v1\"")], b""));
        let r = c.read_response();
        assert_eq!(r.status(), 304);
        assert_eq!(r.header("etag"), Some("\"v1\""));
        c.send(&get("example.com", "/after"));
        let r = c.read_response();
        assert_eq!(r.status(), 200, "response after 304:\n{}", r.head.raw);
        assert_eq!(r.header("x-path"), Some("/after"));
    }
    fn expect_100_continue(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.timeout = Duration::from_secs(5);
        c.send(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        let first = c.try_read_response().unwrap_or_else(|e| {
            panic!("expected `100 Continue` before sending the body, got {e}")
        });
        assert_eq!(first.status(), 100, "got:\n{}", first.head.raw);
        c.send(b"hello");
        let (_, r) = c.read_final_response("POST");
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_str(), "hello");
        assert_eq!(origin.last_request().body, b"hello");
    }
    fn pipelined_requests_answered_in_order(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        let mut batch = Vec::new();
        batch.extend_from_slice(&get("example.com", "/p1"));
        batch.extend_from_slice(&request("POST", "/p2", &[("Host", "example.com"), ("Content-Length", "3")], b"abc"));
        batch.extend_from_slice(&get("example.com", "/p3"));
        c.send(&batch);
        for (i, want) in ["/p1", "/p2", "/p3"].iter().enumerate() {
            let r = c.read_response();
            assert_eq!(r.status(), 200, "pipelined response {i}");
            assert_eq!(r.header("x-path"), Some(*want), "pipelined responses must come back in order");
        }
        let paths: Vec<String> = origin.requests().iter().map(|r| r.target.clone()).collect();
        assert_eq!(paths, vec!["/p1", "/p2", "/p3"]);
        assert_eq!(origin.requests()[1].body, b"abc");
    }
    fn connection_close_from_client_is_honoured(engine) {
        let (proxy, _origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("GET", "/", &[("Host", "example.com"), ("Connection", "close")], b""));
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert!(r.has_token("connection", "close"), "the proxy should announce the close:\n{}", r.head.raw);
        c.expect_closed();
    }
    fn backend_connection_close_does_not_close_client(engine) {
        // The backend closes its side after each response; the client's
        // connection to the proxy stays usable.
        let origin = Origin::with_handler("o", |req| Reply::Response {
            status: 200,
            headers: vec![("X-Path".into(), req.target.clone())],
            body: b"bye".to_vec(),
            mode: BodyMode::Close,
            close_after: true,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        for i in 0..3 {
            c.send(&get("example.com", &format!("/c{i}")));
            let r = c.read_response();
            assert_eq!(r.status(), 200, "request {i}");
            assert_eq!(r.body_str(), "bye", "request {i}");
            assert_eq!(r.header("x-path"), Some(format!("/c{i}").as_str()), "request {i}");
            // An HTTP/1.1 client gets the close-delimited body re-framed (chunked), and the
            // client connection is neither close-delimited nor announced as closing.
            assert_eq!(
                r.framing,
                Framing::Chunked,
                "request {i}: a close-delimited backend body must be re-framed for an HTTP/1.1 client; got:\n{}",
                r.head.raw
            );
            assert!(
                !r.has_token("connection", "close"),
                "request {i}: the backend's close must not close the client connection; got:\n{}",
                r.head.raw
            );
        }
        // One backend connection per request (each was closed by the backend), all on the
        // one client connection.
        assert_eq!(origin.accepted(), 3, "one backend connection per request");
    }
}
