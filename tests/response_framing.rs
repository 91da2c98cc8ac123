//! Invalid response framing from the backend: the client gets 502 (or, once
//! the response head was already forwarded, a truncated response followed by
//! a close), and the proxy keeps serving.

use crate::support::*;
use std::time::Duration;

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
    assert_served(c.read_response());
}

/// The answer to the `/ok` request that follows a bad backend response.
fn assert_served(r: Response) {
    assert_eq!(
        r.status(),
        200,
        "the proxy must keep serving after a bad backend response"
    );
    assert_eq!(r.body_str(), "bad");
}

/// `proxy_stays_up` for a proxy in front of a lock-step backend: the next request gets a
/// fresh backend connection and its answer.
fn proxy_stays_up_on(proxy: &Proxy, backend: &LockStep) {
    let mut c = Client::connect(proxy.addr());
    c.send(&get("example.com", "/ok"));
    let mut conn = backend.accept();
    assert!(conn.read_head().starts_with("GET /ok "));
    conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad");
    assert_served(c.read_response());
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
        // The head and a good first chunk go out, and only once the client has them does the
        // backend send a malformed chunk: too late for a 502, so the client must see its
        // 200 cut short (EOF or RST after "hello"), never a completed message and never the
        // bad bytes.
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.timeout = std::time::Duration::from_secs(10);
        c.send(&get("example.com", "/bad-chunk-later"));
        let mut conn = backend.accept();
        conn.read_head();
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        let (got_first, first) = std::sync::mpsc::channel::<()>();
        let rest = std::thread::spawn(move || {
            let go = first.recv_timeout(std::time::Duration::from_secs(5)).is_ok();
            if go {
                conn.write(b"xyz\r\nworld\r\n0\r\n\r\n");
            }
            go
        });
        let head = c.read_head().unwrap_or_else(|e| panic!("the 200 head must be forwarded: {e}"));
        assert_eq!(head.status, 200, "{}", head.raw);
        let framing = client::response_framing("GET", &head).unwrap();
        let mut body = Vec::new();
        let mut signal = Some(got_first);
        let read = c.read_body_streaming(&framing, &mut |d| {
            body.extend_from_slice(d);
            if body.len() >= 5 {
                if let Some(tx) = signal.take() {
                    let _ = tx.send(());
                }
            }
        });
        assert!(rest.join().unwrap(), "the first chunk never reached the client (got {body:?})");
        match read {
            Err(ClientError::Truncated(_)) | Err(ClientError::Reset) => {}
            Ok(()) => panic!("the bad chunk must cut the response short; the client got a complete body {:?}", String::from_utf8_lossy(&body)),
            Err(ClientError::Malformed(m)) => panic!("the proxy passed the bad chunk on: {m}"),
            Err(e) => panic!("expected the connection to close mid-body, got {e}"),
        }
        assert_eq!(body, b"hello", "exactly the good chunk");
        proxy_stays_up_on(&proxy, &backend);
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
    // A response cut short by its backend ends the client's connection, but not with a
    // reset: closed with pipelined requests unread, the kernel would reset it, and the
    // earlier responses still in the proxy's send queue would never reach the client.
    fn a_response_cut_by_its_backend_leaves_earlier_pipelined_ones_whole(engine) {
        let origin = Origin::with_handler("cut", |req| match req.path() {
            "/short" => Reply::raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"),
            _ => Reply::Default,
        });
        let proxy = Config::single(origin.addr()).admin("").start(engine);
        let mut c = Client::connect(proxy.addr());
        let upload = vec![b'x'; 256 * 1024];
        let len = upload.len().to_string();
        let mut pipelined = get("example.com", "/gen/1048576/cl");
        pipelined.extend_from_slice(&get("example.com", "/short"));
        let post = [("Host", "example.com"), ("Content-Length", len.as_str())];
        pipelined.extend_from_slice(&request("POST", "/echo", &post, &upload));
        c.send(&pipelined);
        // Nothing is read until the cut is counted: most of the first response then waits in
        // the proxy's send queue.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the cut", |m| {
            m.value("edgeshard_upstream_aborts_total", &[]) == 1.0
        });
        let first = c.try_read_response().expect("the first response, whole");
        assert_eq!(first.status(), 200);
        assert!(first.body == pattern::pattern_vec(1 << 20), "the first response's body");
        let cut = c.read_head().expect("the cut response's head");
        assert_eq!(cut.status, 200);
        let rest = c.read_until_closed(Duration::from_secs(10)).expect("a close");
        assert_eq!(rest, b"hello", "the cut body, then the close");
    }

    // To an HTTP/1.0 client a body of unknown length is close-delimited: cut short by its
    // backend, it ends in a reset, as an orderly close would make the part sent look whole.
    fn a_close_delimited_body_cut_short_ends_in_a_reset(engine) {
        use std::io::{Read, Write};
        let origin = Origin::with_handler("cut", |_| {
            Reply::raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n").unwrap();
        let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break "an orderly close",
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "a reset",
                Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&got)),
            }
        };
        let text = String::from_utf8_lossy(&got);
        assert_eq!(end, "a reset", "after {text:?}");
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 200 "), "{text:?}");
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
