//! The response cache's collapsed misses (issue 18): concurrent misses for one key on one
//! shard wait for one upstream fetch, and stop waiting as soon as that fetch is known not
//! to be stored.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::cache::{cached, reply, x_cache};
use crate::support::*;

both_engines! {
    // 100 concurrent misses for one key on one shard: one upstream request, 99 hits. The
    // backend holds its answer until a later request (sent after all 100) reaches it, so the
    // others arrive while the first fetch is in flight.
    fn concurrent_misses_collapse_into_one_fetch(engine) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g = gate.clone();
        let origin = Origin::with_handler("o", move |r| {
            let (open, cv) = &*g;
            if r.path() == "/marker" {
                *open.lock().unwrap() = true;
                cv.notify_all();
            } else {
                let guard = open.lock().unwrap();
                let _ = cv.wait_timeout_while(guard, Duration::from_secs(10), |o| !*o).unwrap();
            }
            reply(&[("Cache-Control", "max-age=100")], "shared", false)
        });
        let proxy = cached(&origin, "", engine);
        let mut clients: Vec<Client> = (0..100).map(|_| Client::connect(proxy.addr())).collect();
        for c in &mut clients {
            c.send(&get("example.com", "/hot"));
        }
        let mut marker = Client::connect(proxy.addr());
        marker.send(&get("example.com", "/marker"));
        assert_eq!(marker.read_response().status(), 200);
        let mut results = Vec::new();
        for c in &mut clients {
            let r = c.read_response();
            assert_eq!((r.status(), r.body_str()), (200, "shared".into()));
            results.push(x_cache(&r));
        }
        let hot = origin.requests().iter().filter(|r| r.path() == "/hot").count();
        assert_eq!(hot, 1, "one upstream request for 100 concurrent misses");
        assert_eq!(results.iter().filter(|x| *x == "MISS").count(), 1);
        assert_eq!(results.iter().filter(|x| *x == "HIT").count(), 99);
    }

    // The entry is stored once its body has gone through to the client that asked first;
    // a client that stops reading holds that relay. The requests waiting on it stop
    // waiting once one write to that client has been held 200 ms, and fetch for
    // themselves, not after the lock's 5 s (nginx's proxy_cache_lock fills at the
    // backend's pace).
    fn waiters_go_on_when_the_first_client_stops_reading(engine) {
        let big = vec![b'x'; 32 << 20];
        let origin = Origin::with_handler("o", move |_| Reply::Response {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=100".into())],
            body: big.clone(),
            mode: BodyMode::Length,
            close_after: false,
        });
        let proxy = cached(&origin, "size = \"256MiB\", max_object = \"64MiB\"", engine);
        let mut leader = Client::connect(proxy.addr());
        leader.send(&get("example.com", "/big"));
        let head = leader.read_head().expect("the leader's head");
        assert_eq!(head.status, 200);
        // The leader reads no more: the relay to it stops once the socket buffers fill.
        let mut waiter = Client::connect(proxy.addr());
        let asked = Instant::now();
        waiter.send(&get("example.com", "/big"));
        let r = waiter.read_head().expect("the waiter's head");
        let waited = asked.elapsed();
        assert_eq!(r.status, 200);
        // Hundreds of milliseconds; the lock's bound is a fixed 5 s (no config key sets it),
        // and either way the waiter fetches for itself: only the clock tells them apart. The
        // bound lies halfway, seconds from both.
        let bound = Duration::from_millis(2500);
        assert!(waited < bound, "the waiter waited for the leader's client: {waited:?}");
        assert_eq!(origin.request_count(), 2, "the waiter fetched for itself");
        drop(leader);
    }

    // A response that turns out larger than `max_object` ends the fetch for the requests
    // waiting on its key as soon as its body passes the bound (nothing will be stored), not
    // at its relay's end: a large chunked download held every other request for its URL
    // until the download ended or the 5 s lock bound passed.
    fn waiters_go_on_once_the_fetch_outgrows_max_object(engine) {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = backend.local_addr().unwrap();
        let gate = Gate::default();
        let g = gate.clone();
        std::thread::spawn(move || {
            for (i, conn) in backend.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                let g = g.clone();
                std::thread::spawn(move || {
                    while read_head_bytes(&mut conn).is_ok() {
                        let cc = "HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\n";
                        if i == 0 {
                            // 20,000 bytes now (past the 8 KiB bound), the end when the gate opens.
                            let mut out = format!("{cc}Transfer-Encoding: chunked\r\n\r\n4e20\r\n").into_bytes();
                            out.extend(std::iter::repeat_n(b'x', 20_000));
                            out.extend_from_slice(b"\r\n");
                            if conn.write_all(&out).is_err() {
                                return;
                            }
                            g.wait(Duration::from_secs(20));
                            let _ = conn.write_all(b"0\r\n\r\n");
                        } else if conn.write_all(format!("{cc}Content-Length: 6\r\n\r\nsecond").as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = Config::new()
            .upstream("main", &[addr])
            .route("main", "cache = { max_object = \"8KiB\" }")
            .start(engine);
        let mut leader = Client::connect(proxy.addr());
        leader.send(&get("example.com", "/big"));
        let head = leader.read_head().expect("the big response's head");
        assert_eq!(head.status, 200);
        let mut waiter = Client::connect(proxy.addr());
        let asked = Instant::now();
        waiter.send(&get("example.com", "/big"));
        let r = waiter.read_response();
        let waited = asked.elapsed();
        assert_eq!((r.status(), r.body_str()), (200, "second".into()));
        // Milliseconds when it goes on at once; the lock's bound is a fixed 5 s (as above:
        // the bound lies halfway).
        let bound = Duration::from_millis(2500);
        assert!(waited < bound, "the waiter waited for the leader's relay: {waited:?}");
        gate.open();
        let body = leader.read_body("GET", &head).expect("the big body");
        assert_eq!(body.len(), 20_000);
        // The small response the waiter fetched was stored.
        assert_eq!(x_cache(&waiter_fetch(&proxy)), "HIT");
    }
}

fn waiter_fetch(proxy: &Proxy) -> Response {
    let mut c = Client::connect(proxy.addr());
    c.send(&get("example.com", "/big"));
    c.read_response()
}
