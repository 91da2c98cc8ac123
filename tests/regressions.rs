//! Regressions found by review of the request path; each test names the finding it covers.

use crate::support::*;
use std::time::Duration;

both_engines! {
    // A backend that sends bytes after a complete response must not have them delivered to
    // the next client: pooled connections are probed at checkout.
    fn stray_bytes_on_pooled_connection_never_reach_another_client(engine) {
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);

        let mut c1 = Client::connect(proxy.addr());
        c1.send(&get("example.com", "/poison"));
        let mut first = backend.accept();
        first.read_head();
        first.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let r = c1.read_response();
        assert_eq!(r.body_str(), "ok");
        // The pooled connection now carries a second, unsolicited response.
        first.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET");

        let mut c2 = Client::connect(proxy.addr());
        c2.send(&get("example.com", "/victim"));
        let mut second = backend
            .try_accept(Duration::from_secs(5))
            .expect("the poisoned connection must be dropped and a fresh one opened");
        let head = second.read_head();
        assert!(head.starts_with("GET /victim "), "{head:?}");
        second.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh");
        let r = c2.read_response();
        assert_eq!(r.body_str(), "fresh", "a stray response was delivered to another client");
    }

    // A GET with a body may be parsed by a backend as two requests ("CL.0"); the upstream
    // connection it used is not pooled.
    fn get_with_body_does_not_pool_its_upstream_connection(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(c.read_response().status(), 200);
        c.send(&get("example.com", "/b"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(origin.accepted(), 2, "the connection that carried a GET body was reused");
    }

    // A head dripped one byte per write is still parsed correctly (the parser only runs when
    // the end of the head may have arrived).
    fn head_dripped_byte_by_byte(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        let req = b"GET /drip HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n";
        for b in req.iter() {
            c.send(std::slice::from_ref(b));
        }
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(origin.last_request().path(), "/drip");
        // And a bad head dripped the same way is still refused.
        let mut c = Client::connect(proxy.addr());
        for b in b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".iter() {
            let _ = c.try_send(std::slice::from_ref(b));
        }
        assert_eq!(c.read_response().status(), 400);
    }

    // Requests on keep-alive connections that went cold (idle past the hot window) are read
    // completely: no byte is lost when the hot read is cancelled.
    fn request_after_idle_window_is_intact(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        for i in 0..3 {
            c.send(&get("example.com", &format!("/r{i}")));
            assert_eq!(c.read_response().status(), 200);
            // Past the 200 ms hot window: the next request arrives on a cold connection.
            // (A deadline, not a readiness signal, is what is being exercised here.)
            std::thread::park_timeout(Duration::from_millis(300));
        }
        let paths: Vec<String> = origin.requests().iter().map(|r| r.path().to_string()).collect();
        assert_eq!(paths, vec!["/r0", "/r1", "/r2"]);
    }
}
