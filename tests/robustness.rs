//! Robustness: aborted clients, fragmented input, concurrency, several
//! listeners, streaming.

use crate::support::*;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

fn still_serves(proxy: &Proxy) {
    let mut c = Client::connect(proxy.addr());
    c.send(&get("example.com", "/alive"));
    let r = c.read_response();
    assert_eq!(r.status(), 200, "the proxy must keep serving");
    assert_eq!(r.header("x-path"), Some("/alive"));
}

/// A backend that takes one request, answers with `answer` (maybe nothing, or a head and part
/// of a body), then holds the connection and reports when the proxy closes it.
fn holding_backend(answer: &'static [u8]) -> (std::net::SocketAddr, mpsc::Receiver<()>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        if read_head_bytes(&mut s).is_err() || s.write_all(answer).is_err() {
            return;
        }
        let mut b = [0u8; 64];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(());
    });
    (addr, rx)
}

both_engines! {
    fn a_client_that_leaves_frees_its_backend_connection(engine) {
        // The backend holds its answer (nothing yet; or a head and 10 of 1,000 body bytes)
        // and the client goes away (a reset; a close): the exchange notices within about a
        // second (like nginx's proxy_ignore_client_abort off) and closes the backend
        // connection, long before the 30 s upstream_response.
        let cases: [(&'static [u8], bool); 4] = [
            (b"", true),
            (b"", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789", false),
        ];
        for (answer, reset) in cases {
            let (backend, closed) = holding_backend(answer);
            let proxy = Config::single(backend).timeout("upstream_response", "30s").admin("").start(engine);
            let mut c = Client::connect(proxy.addr());
            c.send(&get("example.com", "/held"));
            if !answer.is_empty() {
                assert_eq!(c.read_head().expect("the response head").status, 200);
            }
            if reset {
                socket2::SockRef::from(c.stream()).set_linger(Some(Duration::ZERO)).unwrap();
            }
            drop(c);
            closed
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("backend connection still open 10 s after the client left (reset {reset}, answer {:?})", String::from_utf8_lossy(answer)));
            scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the client's abort", |m| {
                m.value("edgeshard_client_aborts_total", &[]) == 1.0
            });
        }
    }

    fn a_client_that_pipelines_without_pause_does_not_keep_the_shard(engine) {
        // One client pipelines requests the proxy answers itself (a redirect) and reads the
        // answers as fast as they come, on two threads: its connection never waits. On one
        // shard another client's request must still be answered (an epoll shard served the
        // flood alone for as long as it lasted). The bound is liveness, not speed.
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let origin = Origin::start("o");
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "path_prefix = \"/r/\"\nredirect = { status = 302, to = \"/elsewhere\" }")
            .route("main", "")
            .start(engine);
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let flood = std::net::TcpStream::connect(proxy.addr()).unwrap();
        let mut writer = flood.try_clone().unwrap();
        let mut reader = flood;
        let (st, an) = (stop.clone(), answered.clone());
        let w = thread::spawn(move || {
            let batch = b"GET /r/x HTTP/1.1\r\nHost: a\r\n\r\n".repeat(64);
            while !st.load(Ordering::SeqCst) && writer.write_all(&batch).is_ok() {}
        });
        let r = thread::spawn(move || {
            reader.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                an.fetch_add(n, Ordering::SeqCst);
            }
        });
        // The flood is on: its answers are coming.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while answered.load(Ordering::SeqCst) < 1 << 20 {
            assert!(std::time::Instant::now() < deadline, "the flood got no answers");
            thread::yield_now();
        }
        let mut c = Client::connect(proxy.addr());
        c.stream().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.send(&get("example.com", "/meanwhile"));
        let got = c.try_read_response();
        let during = answered.load(Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        let _ = w.join();
        drop(proxy);
        let _ = r.join();
        let got = got.unwrap_or_else(|e| panic!("no answer while another client pipelined ({during} bytes of its answers): {e:?}"));
        assert_eq!(got.status(), 200);
    }

    fn memory_is_given_back_when_connections_end_with_nothing_else_going_on(engine) {
        // A request held at the origin: the shard goes quiet and gives its free memory back
        // meanwhile. Then the response goes out and the connection closes, and nothing else
        // comes: the memory that close freed is given back too (it used to wait for the next
        // accept or request).
        let (origin, gate) = held_origin("/held");
        let proxy = Config::single(origin.addr()).admin("").start(engine);
        let returns = |m: &Metrics| m.value("edgeshard_memory_returns_total", &[]);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/held"));
        assert!(origin.wait_for(Duration::from_secs(10), |s| s.requests.iter().any(|r| r.path() == "/held")));
        let quiet = returns(&scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "a return while the request is held", |m| returns(m) >= 1.0));
        gate.open();
        assert_eq!(c.read_response().status(), 200);
        drop(c);
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "a return after the close", |m| returns(m) > quiet);
    }

    fn client_abort_mid_request_body(engine) {
        let (mut proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"POST /partial HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100000\r\n\r\n0123456789");
        drop(c);
        still_serves(&proxy);
        proxy.assert_alive();
        assert!(!origin.requests().iter().any(|r| r.path() == "/partial"), "an aborted body must never complete");
    }
    // A client that leaves mid-upload: the backend's connection ends with a reset, not an
    // orderly close a server could take for the end of the body (gunicorn ran the app with
    // 14 of 50 bytes in the differential fuzz).
    fn a_body_the_client_cut_short_ends_the_backend_connection_with_a_reset(engine) {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = backend.local_addr().unwrap();
        let (got_part, part) = mpsc::channel();
        let (ended, end) = mpsc::channel();
        thread::spawn(move || {
            use std::io::Read;
            let Ok((mut s, _)) = backend.accept() else { return };
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head and the 14 body bytes sent so far.
            while !buf.ends_with(b"partial body!!") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = got_part.send(());
            let how = match s.read(&mut chunk) {
                Ok(0) => "eof",
                Ok(_) => "more bytes",
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
                Err(_) => "error",
            };
            let _ = ended.send(how);
        });
        let mut proxy = Config::single(addr).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 50\r\n\r\npartial body!!");
        part.recv_timeout(Duration::from_secs(10)).expect("the backend got the start of the body");
        drop(c);
        assert_eq!(end.recv_timeout(Duration::from_secs(10)).unwrap(), "reset");
        proxy.assert_alive();
    }
    fn client_abort_mid_response_body(engine) {
        let (mut proxy, _origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", &format!("/gen/{}/cl", 64u64 << 20)));
        let head = c.read_head().expect("response head");
        assert_eq!(head.status, 200);
        drop(c);
        still_serves(&proxy);
        proxy.assert_alive();
    }
    fn late_response_for_aborted_client_is_not_delivered_to_another(engine) {
        // /wait is held at the origin until the test opens the gate; its
        // client goes away meanwhile. The late response must be discarded,
        // never handed to a later request.
        let gate = Gate::default();
        let g = gate.clone();
        let origin = Origin::with_handler("o", move |req| {
            if req.path() == "/wait" {
                g.wait(Duration::from_secs(10));
                return Reply::status(200, "stale");
            }
            Reply::Default
        });
        let mut proxy = Config::single(origin.addr()).start(engine);
        let mut c1 = Client::connect(proxy.addr());
        c1.send(&get("example.com", "/wait"));
        assert!(origin.wait_for(Duration::from_secs(10), |s| s.requests.iter().any(|r| r.path() == "/wait")));
        drop(c1);
        let mut c2 = Client::connect(proxy.addr());
        c2.send(&get("example.com", "/next"));
        let r = c2.read_response();
        assert_eq!(r.header("x-path"), Some("/next"));
        // Release the late response, then keep using the proxy.
        gate.open();
        for i in 0..5 {
            let path = format!("/after{i}");
            c2.send(&get("example.com", &path));
            let r = c2.read_response();
            assert_ne!(r.body_str(), "stale", "a late response for an aborted client was delivered to request {path}");
            assert_eq!(r.header("x-path"), Some(path.as_str()));
        }
        proxy.assert_alive();
    }
    fn request_head_split_across_many_writes(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        let raw = request("POST", "/split", &[("Host", "example.com"), ("Content-Length", "5"), ("X-Pad", "abcdefgh")], b"hello");
        for b in raw.chunks(1) {
            c.send(b);
        }
        let r = c.read_response_for("POST");
        assert_eq!(r.status(), 200);
        assert_eq!(origin.last_request().body, b"hello");
    }
    fn chunked_body_split_inside_framing(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"POST /split HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
        for piece in [&b"1"[..], b"0", b"\r", b"\nhello", b"world", b"!!!!!!", b"\r", b"\n", b"0\r", b"\n\r", b"\n"] {
            c.send(piece);
        }
        let r = c.read_response_for("POST");
        assert_eq!(r.status(), 200);
        assert_eq!(origin.last_request().body, b"helloworld!!!!!!");
    }
    fn backend_response_trickled_in_pieces(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/trickle"));
        let mut conn = backend.accept();
        conn.read_head();
        for piece in [&b"HTTP/1.1 2"[..], b"00 OK\r\nTransfer-Encoding: chu", b"nked\r\n", b"\r\n5\r", b"\nhel", b"lo\r\n0\r\n", b"\r\n"] {
            conn.write(piece);
        }
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_str(), "hello");
    }
    fn response_is_streamed_not_buffered(engine) {
        // The backend sends the head and half of the body, then waits until the client has
        // received that half before it sends the rest: a proxy that buffers the body (even
        // one that forwards the head at once) never lets the client see the first half, and
        // the backend gives up after 5 s (closing, so the body never completes).
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.timeout = Duration::from_secs(10);
        c.send(&get("example.com", "/stream"));
        let mut conn = backend.accept();
        conn.read_head();
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello ");
        let (first_half_seen, seen) = mpsc::channel::<()>();
        let rest = thread::spawn(move || {
            let go = seen.recv_timeout(Duration::from_secs(5)).is_ok();
            if go {
                conn.write(b"world");
            }
            go
        });
        let head = c.read_head().unwrap_or_else(|e| panic!("the response head must be forwarded before the body completes: {e}"));
        assert_eq!(head.status, 200);
        let framing = client::response_framing("GET", &head).unwrap();
        assert_eq!(framing, Framing::Length(11), "{}", head.raw);
        let mut body = Vec::new();
        let mut signal = Some(first_half_seen);
        let read = c.read_body_streaming(&framing, &mut |d| {
            body.extend_from_slice(d);
            if body.len() >= 6 {
                if let Some(tx) = signal.take() {
                    let _ = tx.send(());
                }
            }
        });
        assert!(
            rest.join().unwrap(),
            "the client did not receive the first half of the body (got {body:?}) within 5 s while the backend held the rest: the proxy buffers the body"
        );
        read.unwrap_or_else(|e| panic!("rest of the streamed body: {e}"));
        assert_eq!(body, b"hello world");
    }
    fn concurrent_clients(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let addr = proxy.addr();
        let threads: Vec<_> = (0..32)
            .map(|t| {
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    for i in 0..20 {
                        let path = format!("/t{t}/r{i}");
                        c.send(&get("example.com", &path));
                        let r = c.read_response();
                        assert_eq!(r.status(), 200);
                        assert_eq!(r.header("x-path"), Some(path.as_str()), "responses must not be mixed up between clients");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client thread failed");
        }
        assert_eq!(origin.request_count(), 32 * 20);
        origin.assert_no_errors();
    }
    fn two_listeners_both_serve(engine) {
        let origin = Origin::start("o");
        let mut cfg = Config::single(origin.addr());
        cfg.listeners = 2;
        let proxy = cfg.start(engine);
        assert_eq!(proxy.addrs().len(), 2, "one `listening on` line per [[listener]]");
        assert_ne!(proxy.addrs()[0], proxy.addrs()[1]);
        for &a in proxy.addrs() {
            let mut c = Client::connect(a);
            c.send(&get("example.com", "/"));
            assert_eq!(c.read_response().status(), 200, "listener {a}");
        }
    }
    fn two_shards_serve_concurrent_clients(engine) {
        let origin = Origin::start("o");
        let proxy = Proxy::start_shards(&Config::single(origin.addr()).render(), engine, 2);
        let addr = proxy.addr();
        let threads: Vec<_> = (0..16)
            .map(|t| {
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    for i in 0..10 {
                        let path = format!("/s{t}/{i}");
                        c.send(&get("example.com", &path));
                        let r = c.read_response();
                        assert_eq!(r.status(), 200);
                        assert_eq!(r.header("x-path"), Some(path.as_str()));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client thread failed");
        }
        assert_eq!(origin.request_count(), 160);
    }
}
