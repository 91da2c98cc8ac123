//! `[[upstream]] buffer_request_body` (nginx's `proxy_request_buffering`, HAProxy's
//! `option http-buffer-request`): a body of known length up to the bound is read whole
//! before a backend is connected, so a slow upload holds no backend; a client that expects
//! `100 Continue` gets it from the proxy; a body that does not come in time is a `408` and
//! never reaches a backend; a larger body streams as before. A chunked body within the bound
//! is read whole too and reaches the backend with a `Content-Length` (nginx's way: backends
//! that answer a chunked upload `411` take it); one past the route's `max_body_bytes` or
//! with bad framing is refused before any backend sees it.

use std::time::Duration;

use crate::support::*;

fn buffering(backend: std::net::SocketAddr, engine: Engine) -> Proxy {
    buffering_with(backend, engine, "")
}

fn buffering_with(backend: std::net::SocketAddr, engine: Engine, route: &str) -> Proxy {
    Config::new()
        .timeout("client_body", "1s")
        .upstream_with("main", &[backend], "buffer_request_body = \"64KiB\"")
        .route("main", route)
        .start(engine)
}

fn chunked_head(extra: &str) -> Vec<u8> {
    format!("POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n{extra}\r\n")
        .into_bytes()
}

/// A chunked body as the backend reads it (without trailers): its payload.
fn read_chunked(conn: &mut LockConn) -> Vec<u8> {
    let mut payload = Vec::new();
    loop {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            line.extend(conn.read_exact(1));
        }
        let size = std::str::from_utf8(&line[..line.len() - 2]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
        if size == 0 {
            assert_eq!(conn.read_exact(2), b"\r\n");
            return payload;
        }
        payload.extend(conn.read_exact(size));
        assert_eq!(conn.read_exact(2), b"\r\n");
    }
}

/// The value of the backend-side head's field `name` (lower-case), if any.
fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn post_head(len: usize, extra: &str) -> Vec<u8> {
    format!("POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len}\r\n{extra}\r\n")
        .into_bytes()
}

both_engines! {
    // Bodies read whole are bounded per shard, not only per connection (found by the
    // session 12 resource review: 60 uploads stopping 100 bytes short pinned a gigabyte).
    // Within limits.buffer_memory a body is buffered; past it the next one streams at once
    // (its backend is asked before its body is in) and is counted; once the first is
    // forwarded its charge is given back and bodies are buffered again.
    fn buffered_bodies_are_bounded_per_shard(engine) {
        let backend = LockStep::bind();
        let proxy = Config::new()
            .timeout("client_body", "10s")
            .limit("buffer_memory", "\"48KiB\"")
            .upstream_with("main", &[backend.addr()], "buffer_request_body = \"64KiB\"")
            .route("main", "")
            .admin("")
            .start_shards(engine, 1);
        // 40 KiB announced, half sent: held, no backend asked.
        let mut first = Client::connect(proxy.addr());
        first.send(&post_head(40_000, ""));
        first.send(&[b'a'; 20_000]);
        assert!(backend.try_accept(Duration::from_millis(300)).is_none(), "the first is buffered");
        // Another 40 KiB would pass 48 KiB: it streams, its head reaches the backend now.
        let mut second = Client::connect(proxy.addr());
        second.send(&post_head(40_000, ""));
        second.send(&[b'b'; 20_000]);
        let mut conn = backend.accept();
        assert!(conn.read_head().starts_with("POST /up HTTP/1.1\r\n"));
        second.send(&[b'b'; 20_000]);
        assert_eq!(conn.read_exact(40_000), vec![b'b'; 40_000]);
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        assert_eq!(second.read_response().status(), 200);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_request_buffer_memory_refused_total", &[]), 1.0);
        // The first completes, is forwarded, and gives its charge back.
        first.send(&[b'a'; 20_000]);
        let mut conn = backend.accept();
        assert!(conn.read_head().starts_with("POST /up HTTP/1.1\r\n"));
        assert_eq!(conn.read_exact(40_000), vec![b'a'; 40_000]);
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        assert_eq!(first.read_response().status(), 200);
        let mut third = Client::connect(proxy.addr());
        third.send(&post_head(40_000, ""));
        third.send(&[b'c'; 20_000]);
        assert!(backend.try_accept(Duration::from_millis(300)).is_none(), "buffered again");
    }

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

    // A chunked body within the bound, in pieces, with an extension and a trailer: the
    // backend is asked only once the last chunk is in, and gets the payload with a
    // `Content-Length`; the request pipelined behind it is served next.
    fn a_chunked_body_within_the_bound_goes_with_a_length(engine) {
        let backend = LockStep::bind();
        let proxy = buffering(backend.addr(), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&chunked_head("Expect: 100-continue\r\n"));
        assert_eq!(c.read_head().expect("a 100 Continue").status, 100);
        c.send(b"1000;name=v\r\n");
        c.send(&[b'a'; 4096]);
        c.send(b"\r\n3\r\nbc");
        assert!(backend.try_accept(Duration::from_millis(300)).is_none(), "connected before the last chunk");
        c.send(b"d\r\n0\r\nX-Sum: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let mut conn = backend.accept();
        let head = conn.read_head();
        assert!(head.starts_with("POST /up HTTP/1.1\r\n"), "{head}");
        assert_eq!(field(&head, "content-length"), Some("4099"), "{head}");
        assert_eq!(field(&head, "transfer-encoding"), None, "{head}");
        assert_eq!(field(&head, "x-sum"), None, "{head}");
        let body = conn.read_exact(4099);
        assert!(body[..4096].iter().all(|&b| b == b'a') && &body[4096..] == b"bcd");
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(c.read_response().status(), 200);
        let next = conn.read_head();
        assert!(next.starts_with("GET /next HTTP/1.1\r\n"), "{next}");
        conn.write(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(c.read_response().status(), 204);
    }

    // An empty chunked body: `Content-Length: 0`.
    fn an_empty_chunked_body_goes_with_length_zero(engine) {
        let backend = LockStep::bind();
        let proxy = buffering(backend.addr(), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&[&chunked_head("")[..], b"0\r\n\r\n"].concat());
        let mut conn = backend.accept();
        let head = conn.read_head();
        assert_eq!(field(&head, "content-length"), Some("0"), "{head}");
        assert_eq!(field(&head, "transfer-encoding"), None, "{head}");
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
    }

    // Past the bound a chunked body streams as it came, still chunked.
    fn a_larger_chunked_body_streams_chunked(engine) {
        let backend = LockStep::bind();
        let proxy = buffering(backend.addr(), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&chunked_head(""));
        c.send(b"20000\r\n");
        c.send(&[b'a'; 1_000]);
        let mut conn = backend.accept();
        let head = conn.read_head();
        assert_eq!(field(&head, "transfer-encoding"), Some("chunked"), "{head}");
        c.send(&[b'a'; 0x20000 - 1_000]);
        c.send(b"\r\n0\r\n\r\n");
        let got = read_chunked(&mut conn);
        assert!(got.len() == 0x20000 && got.iter().all(|&b| b == b'a'), "{} bytes", got.len());
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
    }

    // A chunked body past the route's `max_body_bytes` (the size line says so) and one with
    // bad framing are refused, and no backend ever sees them.
    fn a_chunked_body_too_large_or_malformed_never_reaches_a_backend(engine) {
        let backend = LockStep::bind();
        let proxy = buffering_with(backend.addr(), engine, "max_body_bytes = \"1KiB\"");
        let mut c = Client::connect(proxy.addr());
        c.send(&[&chunked_head("")[..], b"200\r\n", &[b'a'; 512], b"\r\n"].concat());
        c.send(b"401\r\n");
        assert_eq!(c.read_response().status(), 413);
        c.expect_closed();
        let mut c = Client::connect(proxy.addr());
        c.send(&[&chunked_head("")[..], b"5\r\nhello\r\nzz\r\n"].concat());
        assert_eq!(c.read_response().status(), 400);
        c.expect_closed();
        assert_eq!(backend.accepted(), 0);
    }

    // A chunked body that stops coming: 408, no backend.
    fn a_stalled_chunked_body_is_a_408_that_no_backend_sees(engine) {
        let backend = LockStep::bind();
        let proxy = buffering(backend.addr(), engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&[&chunked_head("")[..], b"a\r\nhello"].concat());
        let r = c.read_response();
        assert_eq!(r.status(), 408, "{}", r.head.raw);
        c.expect_closed();
        assert_eq!(backend.accepted(), 0);
    }

    // With no minimum rate only each read is bounded: a chunked body that keeps coming, a
    // chunk every 400 ms for 2.4 s with `client_body = "1s"`, is read whole, as one of known
    // length is (it was a 408 at 1 s).
    fn a_slow_steady_chunked_body_with_no_minimum_rate_is_read_whole(engine) {
        let backend = LockStep::bind();
        let proxy = Config::new()
            .timeout("client_body", "1s")
            .limit("client_body_min_rate", "0")
            .upstream_with("main", &[backend.addr()], "buffer_request_body = \"64KiB\"")
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&chunked_head(""));
        let start = std::time::Instant::now();
        for i in 1..=6 {
            wait_until(start + Duration::from_millis(400 * i));
            c.send(b"1\r\na\r\n");
        }
        c.send(b"0\r\n\r\n");
        let mut conn = backend.accept();
        let head = conn.read_head();
        assert_eq!(field(&head, "content-length"), Some("6"), "{head}");
        assert_eq!(conn.read_exact(6), b"aaaaaa");
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
    }
}
