//! Graceful shutdown on SIGTERM.

use crate::support::*;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Waits for the shard to report its listeners closed, then checks that a new connection
/// is refused.
fn wait_until_refused(proxy: &Proxy, within: Duration) {
    proxy.wait_for_output("listeners closed", 1, within);
    let e = TcpStream::connect_timeout(&proxy.addr(), Duration::from_millis(500)).err();
    assert_eq!(
        e.map(|e| e.kind()),
        Some(io::ErrorKind::ConnectionRefused),
        "new connections must be refused once the listeners are closed"
    );
}

fn assert_exit_0(proxy: &mut Proxy, within: Duration) {
    let status = proxy.wait_exit(within);
    assert_eq!(
        status.code(),
        Some(0),
        "edgeshard must exit 0 after SIGTERM; got {status:?}\noutput:\n{}",
        proxy.output()
    );
}

both_engines! {
    fn sigterm_lets_inflight_request_finish_then_exits_0(engine) {
        let backend = LockStep::bind();
        let mut proxy = Config::single(backend.addr()).server("shutdown_timeout", "\"20s\"").start(engine);
        let addr = proxy.addr();
        let mut c = Client::connect(addr);
        c.send(&get("example.com", "/slow"));
        let mut conn = backend.accept();
        let head = conn.read_head();
        assert!(head.starts_with("GET /slow "), "{head:?}");

        proxy.terminate();
        // The listener goes away while the request is still in flight.
        wait_until_refused(&proxy, Duration::from_secs(5));
        assert!(proxy.is_running(), "edgeshard exited before its in-flight request finished");

        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_str(), "done", "the in-flight response must complete");
        // Draining: the response announces the close, and the connection is closed after it.
        assert!(
            r.has_token("connection", "close"),
            "a response finished while draining must carry Connection: close:\n{}",
            r.head.raw
        );
        c.expect_closed_within(Duration::from_secs(10));
        assert_exit_0(&mut proxy, Duration::from_secs(10));
        let e = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::ConnectionRefused));
    }
    fn sigterm_when_idle_exits_0_promptly(engine) {
        let origin = Origin::start("o");
        let mut proxy = Config::single(origin.addr()).server("shutdown_timeout", "\"30s\"").start(engine);
        proxy.terminate();
        assert_exit_0(&mut proxy, Duration::from_secs(5));
    }
    fn sigterm_closes_idle_keepalive_connections(engine) {
        // An idle keep-alive client has nothing in flight: shutdown must not
        // wait for shutdown_timeout because of it.
        let origin = Origin::start("o");
        let mut proxy = Config::single(origin.addr()).server("shutdown_timeout", "\"30s\"").start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/"));
        assert_eq!(c.read_response().status(), 200);
        proxy.terminate();
        c.expect_closed_within(Duration::from_secs(10));
        assert_exit_0(&mut proxy, Duration::from_secs(10));
    }
    fn sigterm_gives_up_on_stuck_request_after_shutdown_timeout(engine) {
        let backend = LockStep::bind();
        let mut proxy = Config::single(backend.addr())
            .server("shutdown_timeout", "\"1s\"")
            .timeout("upstream_response", "60s")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/stuck"));
        let mut conn = backend.accept();
        conn.read_head();
        let t0 = Instant::now();
        proxy.terminate();
        // Taken before SIGTERM: the proxy's 1 s can only start after it, so a correct exit is
        // never earlier than 1 s after t0 (50 ms of slack for timer rounding).
        assert_exit_0(&mut proxy, Duration::from_secs(10));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(950), "exited before shutdown_timeout (1 s): {took:?}");
        // The client connection is gone with the process: closed (EOF or RST) with no
        // response, since the stuck request never got one.
        c.expect_closed_within(Duration::from_secs(5));
        // And the backend connection too.
        assert!(
            conn.read_to_close(Duration::from_secs(5)).is_some(),
            "the proxy's connection to the stuck backend must be closed"
        );
    }
}
