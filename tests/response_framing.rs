//! Invalid response framing from the backend: the client gets 502 (or, once
//! the response head was already forwarded, a truncated response followed by
//! a close), and the proxy keeps serving.

use crate::support::*;

fn bad_backend() -> Origin {
    Origin::with_handler("bad", |req| {
        match req.path() {
        "/cl-te" => Reply::raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        "/te-cl" => Reply::raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        "/two-cl" => Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        "/bad-cl" => Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello"),
        "/bad-chunk" => Reply::raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        "/bad-chunk-later" => Reply::raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nxyz\r\nworld\r\n0\r\n\r\n",
        ),
        "/garbage" => Reply::raw(b"this is not HTTP at all\r\n\r\n"),
        "/bad-header" => Reply::raw(b"HTTP/1.1 200 OK\r\nX-Bad : v\r\nContent-Length: 2\r\n\r\nok"),
        "/obs-fold" => Reply::raw(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
        _ => Reply::Default,
    }
    })
}

/// Asserts the client sees either a 502, or (if the proxy had already sent the head) a
/// response whose body never completes validly: the connection is closed (EOF or RST) before
/// a valid end of message. Never a complete response, never the backend's invalid framing
/// passed through (`Malformed`), never a connection left hanging. After a 502 the connection
/// is either closed, as announced by `Connection: close`, or usable for the next request.
fn expect_502_or_truncated(proxy: &Proxy, path: &str) {
    let mut c = Client::connect(proxy.addr());
    // A correct proxy answers or closes in milliseconds; 5 s only bounds a hang.
    c.timeout = std::time::Duration::from_secs(5);
    c.send(&get("example.com", path));
    match c.try_read_response() {
        Ok(r) if r.status() == 502 => {
            assert!(
                r.framing != Framing::Close || r.body.len() < 4096,
                "502 for {path} should be a short error"
            );
            if r.has_token("connection", "close") {
                c.expect_closed_within(std::time::Duration::from_secs(5));
            } else {
                // Kept alive: nothing of the bad response may be left on the connection.
                c.send(&get("example.com", "/ok"));
                let next = c.try_read_response().unwrap_or_else(|e| {
                    panic!("{path}: the 502 did not announce a close, but the next request on the connection failed: {e}")
                });
                assert_eq!(next.status(), 200, "{path}: the request after the 502:\n{}", next.head.raw);
                assert_eq!(next.body_str(), "bad");
            }
        }
        Ok(r) => panic!(
            "backend response with invalid framing ({path}) must give 502 or a truncated response; \
             the client got a complete {} response:\n{}\nbody: {:?}",
            r.status(),
            r.head.raw,
            r.body_str()
        ),
        // Truncated: EOF inside the message; Reset: RST. Either way the connection is closed.
        Err(ClientError::Truncated(_)) | Err(ClientError::Reset) => {}
        Err(ClientError::Malformed(m)) => panic!(
            "{path}: the proxy passed the backend's invalid framing on to the client: {m}"
        ),
        Err(ClientError::Closed) => {
            panic!("{path}: the proxy closed the connection without any response (expected 502)")
        }
        Err(ClientError::Timeout) => panic!(
            "{path}: no complete response and no close within {:?}: a truncated response must end with a close",
            c.timeout
        ),
        Err(e) => panic!("{path}: expected 502, got {e}"),
    }
}

fn proxy_stays_up(proxy: &Proxy) {
    let mut c = Client::connect(proxy.addr());
    c.send(&get("example.com", "/ok"));
    let r = c.read_response();
    assert_eq!(
        r.status(),
        200,
        "the proxy must keep serving after a bad backend response"
    );
    assert_eq!(r.body_str(), "bad");
}

fn check(engine: Engine, path: &str, strict_502: bool) {
    let origin = bad_backend();
    let proxy = Config::single(origin.addr()).start(engine);
    if strict_502 {
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", path));
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("{path}: expected a 502 response, got {e}"));
        assert_eq!(
            r.status(),
            502,
            "invalid backend response head ({path}) must give 502; got:\n{}",
            r.head.raw
        );
    } else {
        expect_502_or_truncated(&proxy, path);
    }
    proxy_stays_up(&proxy);
}

both_engines! {
    fn backend_cl_and_te_gives_502(engine) {
        check(engine, "/cl-te", true);
    }
    fn backend_te_and_cl_gives_502(engine) {
        check(engine, "/te-cl", true);
    }
    fn backend_two_different_cl_gives_502(engine) {
        check(engine, "/two-cl", true);
    }
    fn backend_negative_cl_gives_502(engine) {
        check(engine, "/bad-cl", true);
    }
    fn backend_garbage_gives_502(engine) {
        check(engine, "/garbage", true);
    }
    fn backend_space_before_colon_gives_502(engine) {
        check(engine, "/bad-header", true);
    }
    fn backend_obs_fold_gives_502(engine) {
        check(engine, "/obs-fold", true);
    }
    fn backend_bad_first_chunk_gives_502_or_truncation(engine) {
        check(engine, "/bad-chunk", false);
    }
    fn backend_bad_later_chunk_truncates(engine) {
        check(engine, "/bad-chunk-later", false);
    }
    fn backend_closes_before_response_gives_502(engine) {
        let origin = Origin::with_handler("bad", |req| match req.path() {
            "/close" => Reply::Close,
            _ => Reply::Default,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/close"));
        let r = c.read_response();
        assert_eq!(r.status(), 502);
        proxy_stays_up(&proxy);
    }
    fn backend_truncated_cl_body_is_not_completed(engine) {
        // The backend promises 100 bytes, sends 5 and closes: the client must
        // not receive a complete-looking response.
        let origin = Origin::with_handler("bad", |req| match req.path() {
            "/short" => Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"),
            _ => Reply::Default,
        });
        let proxy = Config::single(origin.addr()).start(engine);
        expect_502_or_truncated(&proxy, "/short");
        proxy_stays_up(&proxy);
    }
}
