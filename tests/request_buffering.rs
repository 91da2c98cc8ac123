//! `[[upstream]] buffer_request_body` (nginx's `proxy_request_buffering`, HAProxy's
//! `option http-buffer-request`): a body of known length up to the bound is read whole
//! before a backend is connected, so a slow upload holds no backend; a client that expects
//! `100 Continue` gets it from the proxy; a body that does not come in time is a `408` and
//! never reaches a backend; a larger body streams as before.

use std::time::Duration;

use crate::support::*;

fn buffering(backend: std::net::SocketAddr, engine: Engine) -> Proxy {
    Config::new()
        .timeout("client_body", "1s")
        .upstream_with("main", &[backend], "buffer_request_body = \"64KiB\"")
        .route("main", "")
        .start(engine)
}

fn post_head(len: usize, extra: &str) -> Vec<u8> {
    format!("POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len}\r\n{extra}\r\n")
        .into_bytes()
}

both_engines! {
    fn a_body_within_the_bound_reaches_the_backend_whole(engine) {
        let backend = LockStep::bind();
        let proxy = buffering(backend.addr(), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&post_head(10_000, ""));
        c.send(&[b'a'; 5_000]);
        // Half the body is in: no backend is asked yet (one was at once before).
        assert!(backend.try_accept(Duration::from_millis(300)).is_none(), "connected before the body was whole");
        c.send(&[b'b'; 5_000]);
        let mut conn = backend.accept();
        assert!(conn.read_head().starts_with("POST /up HTTP/1.1\r\n"));
        let body = conn.read_exact(10_000);
        assert!(body[..5_000].iter().all(|&b| b == b'a') && body[5_000..].iter().all(|&b| b == b'b'));
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(c.read_response().status(), 200);
    }

    // The proxy answers `Expect: 100-continue` itself: the backend is asked only once the
    // body is in.
    fn the_proxy_sends_100_continue_and_then_reads_the_body(engine) {
        let backend = LockStep::bind();
        let proxy = buffering(backend.addr(), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&post_head(100, "Expect: 100-continue\r\n"));
        let interim = c.read_head().expect("a 100 Continue");
        assert_eq!(interim.status, 100);
        assert_eq!(backend.accepted(), 0, "a backend was asked before the body");
        c.send(&[b'x'; 100]);
        let mut conn = backend.accept();
        conn.read_head();
        assert_eq!(conn.read_exact(100), vec![b'x'; 100]);
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
    }

    // A body that stops coming: 408 after client_body, and no backend ever saw it.
    fn a_stalled_body_is_a_408_that_no_backend_sees(engine) {
        let backend = LockStep::bind();
        let proxy = buffering(backend.addr(), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&post_head(1_000, ""));
        c.send(&[b'a'; 10]);
        let r = c.read_response();
        assert_eq!(r.status(), 408, "{}", r.head.raw);
        c.expect_closed();
        assert_eq!(backend.accepted(), 0);
    }

    // Over the bound the body streams: the backend is connected before it has all come.
    fn a_larger_body_streams(engine) {
        let backend = LockStep::bind();
        let proxy = buffering(backend.addr(), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&post_head(100_000, ""));
        c.send(&[b'a'; 1_000]);
        let mut conn = backend.accept();
        assert!(conn.read_head().starts_with("POST /up "));
        c.send(&[b'a'; 99_000]);
        assert_eq!(conn.read_exact(100_000).len(), 100_000);
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
    }
}
