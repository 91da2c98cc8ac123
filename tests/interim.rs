//! Interim (1xx) responses from the backend (RFC 9110 §15.2): relayed to HTTP/1.1 clients, in
//! order and before the final response, without hop-by-hop fields; never to HTTP/1.0 clients;
//! a backend's `100 Continue` never (the proxy answers `Expect: 100-continue` itself, so the
//! client sees exactly one). At most 16 per exchange: one more is a bad response (502 when
//! nothing reached the client yet, and the backend connection is dropped). Once a 1xx went to
//! the client nothing is retried elsewhere, and a backend that then fails before its final
//! head gets the client a 502 (or 504) after the 103s, as HAProxy sends it (until 2026-12-07
//! a bare close, which left the client without a status; session 12 response fuzz). Plain
//! and TLS clients, both engines.

use crate::support::tls::{tls_listener, CertDir, TestCa};
use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\
Connection: x-a\r\nX-A: 1\r\nKeep-Alive: timeout=5\r\nServer: backend-7\r\nX-Powered-By: PHP\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The bound on interim responses per exchange (`relay::MAX_INTERIM`).
const MAX_INTERIM: usize = 16;

fn client(proxy: &Proxy) -> Client {
    let mut c = Client::connect(proxy.addr());
    c.timeout = Duration::from_secs(10);
    c
}

/// The relayed `HINTS`: its `Link`, none of its hop-by-hop fields, nothing naming the backend.
fn assert_hints(r: &Response) {
    assert_eq!(r.status(), 103, "{}", r.head.raw);
    assert!(
        r.head.raw.starts_with("HTTP/1.1 103 Early Hints\r\n"),
        "{}",
        r.head.raw
    );
    assert_eq!(
        r.header("link"),
        Some("</style.css>; rel=preload"),
        "{}",
        r.head.raw
    );
    for gone in [
        "connection",
        "x-a",
        "keep-alive",
        "content-length",
        "transfer-encoding",
        "server",
        "x-powered-by",
    ] {
        assert!(
            r.header(gone).is_none(),
            "{gone} must not be relayed:\n{}",
            r.head.raw
        );
    }
    assert!(r.body.is_empty());
}

both_engines! {
    fn early_hints_reach_the_client_in_order_before_the_final_response(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut c = client(&proxy);
        c.send(&get("example.com", "/page"));
        let mut conn = backend.accept();
        conn.read_head();
        // Relayed as it comes: the client reads it while the backend has sent nothing else.
        conn.write(HINTS);
        assert_hints(&c.read_response());
        // A second one, then the final response at once: they arrive in that order.
        conn.write(b"HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload\r\n\r\n");
        conn.write(OK);
        let second = c.read_response();
        assert_eq!(second.status(), 103, "{}", second.head.raw);
        assert_eq!(second.header("link"), Some("</app.js>; rel=preload"));
        let r = c.read_response();
        assert_eq!(r.status(), 200, "{}", r.head.raw);
        assert_eq!(r.body_str(), "ok");
        // The exchange ended normally: both connections carry the next request.
        c.send(&get("example.com", "/next"));
        let head = conn.read_head();
        assert!(head.starts_with("GET /next "), "{head}");
        conn.write(OK);
        let (info, r) = c.read_final_response("GET");
        assert!(info.is_empty());
        assert_eq!(r.status(), 200);
        assert_eq!(backend.accepted(), 1);
    }

    fn an_http_1_0_client_gets_only_the_final_response(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut c = client(&proxy);
        c.send(b"GET /old HTTP/1.0\r\nHost: example.com\r\n\r\n");
        let mut conn = backend.accept();
        conn.read_head();
        conn.write(HINTS);
        conn.write(b"HTTP/1.1 102 Processing\r\n\r\n");
        conn.write(OK);
        let r = c.read_response();
        assert_eq!(r.status(), 200, "an HTTP/1.0 client gets no 1xx:\n{}", r.head.raw);
        assert_eq!(r.body_str(), "ok");
        c.expect_closed();
    }

    fn an_expect_100_continue_client_sees_exactly_one_100(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut c = client(&proxy);
        c.send(b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        let mut conn = backend.accept();
        let head = conn.read_head();
        assert!(!head.to_ascii_lowercase().contains("expect:"), "{head}");
        let first = c.read_response();
        assert_eq!(first.status(), 100, "the proxy's own 100:\n{}", first.head.raw);
        c.send(b"hello");
        assert_eq!(conn.read_exact(5), b"hello");
        // The backend's own 100 (and another one) is not relayed; a 103 still is.
        conn.write(CONTINUE);
        conn.write(HINTS);
        conn.write(CONTINUE);
        conn.write(OK);
        let (info, r) = c.read_final_response("POST");
        assert_eq!(info.len(), 1, "only the 103 after the proxy's 100: {:?}", info.iter().map(|r| r.status()).collect::<Vec<_>>());
        assert_hints(&info[0]);
        assert_eq!(r.status(), 200);
        // A client that did not ask gets no 100 either.
        c.send(b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
        conn.read_head();
        assert_eq!(conn.read_exact(5), b"hello");
        conn.write(CONTINUE);
        conn.write(OK);
        let (info, r) = c.read_final_response("POST");
        assert!(info.is_empty(), "{:?}", info.iter().map(|r| r.status()).collect::<Vec<_>>());
        assert_eq!(r.status(), 200);
    }

    fn more_interim_responses_than_the_bound_are_a_bad_response(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).admin("").start(engine);
        let mut c = client(&proxy);
        // The bound itself is fine.
        c.send(&get("example.com", "/at-bound"));
        let mut conn = backend.accept();
        conn.read_head();
        conn.write(&CONTINUE.repeat(MAX_INTERIM));
        conn.write(OK);
        let (info, r) = c.read_final_response("GET");
        assert!(info.is_empty());
        assert_eq!(r.status(), 200, "{}", r.head.raw);
        // One more (none of them relayed: nothing reached the client) is a 502.
        c.send(&get("example.com", "/over"));
        conn.read_head();
        conn.write(&CONTINUE.repeat(MAX_INTERIM + 1));
        conn.write(OK);
        let r = c.read_response();
        assert_eq!(r.status(), 502, "{}", r.head.raw);
        // That backend connection is dropped, not pooled: the next request opens another.
        assert!(conn.read_to_close(Duration::from_secs(10)).is_some(), "the backend connection must be closed");
        let mut c = client(&proxy);
        c.send(&get("example.com", "/after"));
        let mut fresh = backend.accept();
        fresh.read_head();
        fresh.write(OK);
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(backend.accepted(), 2);
        // Counted as a bad response from the backend.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the bad response", |m| {
            m.value("edgeshard_upstream_aborts_total", &[]) == 1.0
        });
        // Relayed 103s over the bound: the client has them, then the 502.
        let mut c = client(&proxy);
        c.send(&get("example.com", "/hints"));
        fresh.read_head();
        fresh.write(&HINTS.repeat(MAX_INTERIM + 1));
        fresh.write(OK);
        for _ in 0..MAX_INTERIM {
            assert_hints(&c.read_response());
        }
        assert_eq!(c.read_response().status(), 502);
    }

    fn a_backend_failing_after_a_103_gets_the_client_a_502(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        for then in [&b""[..], b"this is not HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"] {
            let mut c = client(&proxy);
            c.send(&get("example.com", "/fails"));
            let mut conn = backend.accept();
            conn.read_head();
            conn.write(HINTS);
            assert_hints(&c.read_response());
            conn.write(then);
            conn.close();
            if then.starts_with(b"HTTP/1.1 200") {
                // The final head went out; its body is cut short.
                let r = c.read_head().unwrap();
                assert_eq!(r.status, 200);
                let rest = c.read_until_closed(Duration::from_secs(10)).unwrap();
                assert_eq!(rest, b"short");
            } else {
                // The final answer the backend did not give.
                let r = c.read_response();
                assert_eq!(r.status(), 502, "{}", r.head.raw);
            }
        }
    }

    fn nothing_is_retried_on_another_backend_after_a_103(engine) {
        // Round robin from the first backend (one shard): the first request goes to the
        // lock-step backend, which sends a 103 and resets; the policy would retry a reset on
        // the origin.
        let backend = LockStep::bind();
        let origin = Origin::start("other");
        let proxy = Config::new()
            .upstream_with(
                "main",
                &[backend.addr(), origin.addr()],
                "balance = \"round_robin\"\n[upstream.retry]\nattempts = 2\non = [\"reset\", \"503\"]\nmin_retries_per_sec = 100",
            )
            .route("main", "")
            .start(engine);
        let mut c = client(&proxy);
        c.send(&get("example.com", "/once"));
        let mut conn = backend.accept();
        conn.read_head();
        conn.write(HINTS);
        assert_hints(&c.read_response());
        conn.close();
        assert_eq!(c.read_response().status(), 502);
        assert_eq!(origin.head_count(), 0, "the request was replayed on another backend");
    }

    fn early_hints_reach_a_tls_client(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("interim");
        let leaf = ca.leaf(&["a.test"]);
        let cert = dir.write("a.pem", &leaf.cert_pem);
        let key = dir.write("a.key", &leaf.key_pem);
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .start(engine);
        let conn = rustls::ClientConnection::new(
            Arc::new(ca.client_config()),
            "a.test".try_into().unwrap(),
        )
        .unwrap();
        let sock = TcpStream::connect(proxy.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").unwrap();
        let reader = thread::spawn(move || {
            let mut out = Vec::new();
            match tls.read_to_end(&mut out) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => panic!("{e}; got {:?}", String::from_utf8_lossy(&out)),
            }
            String::from_utf8_lossy(&out).into_owned()
        });
        let mut conn = backend.accept();
        conn.read_head();
        conn.write(HINTS);
        conn.write(OK);
        let got = reader.join().unwrap();
        let (hints, last) = got.split_once("\r\n\r\n").unwrap();
        assert_eq!(hints, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload", "{got}");
        assert!(last.starts_with("HTTP/1.1 200 OK\r\n") && last.ends_with("\r\n\r\nok"), "{got}");
    }
}
