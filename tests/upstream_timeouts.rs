//! An upstream's own `connect_timeout` and `response_timeout` (HAProxy's per-backend
//! `timeout connect` / `timeout server`, nginx's per-location `proxy_connect_timeout` /
//! `proxy_read_timeout`): a long-poll or report upstream waits longer than `[timeouts]`
//! allows the rest, and a flaky one can be given up on sooner.

use std::net::{SocketAddr, TcpStream};

use crate::support::*;

/// A listening socket whose accept queue is full: a connect to it is never answered (the
/// kernel drops its SYNs), as to a host that went away. The held connections and the
/// listener are returned to keep it so.
fn blackhole() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    // Fill the queue: connects complete until it is full, then one hangs (non-blocking here).
    for _ in 0..8 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        held.push(TcpStream::from(s));
    }
    (addr, sock, held)
}

both_engines! {
    // The global bound is 500 ms; the `slow` upstream's own is 30 s. Its request is sent
    // first, so when the other request's 504 comes the global bound has passed for both:
    // the slow upstream's request is still waiting, and is answered when its backend is.
    fn an_upstreams_response_timeout_replaces_the_global_one(engine) {
        let (slow, plain) = (LockStep::bind(), LockStep::bind());
        let proxy = Config::new()
            .timeout("upstream_response", "500ms")
            .upstream_with("slow", &[slow.addr()], "response_timeout = \"30s\"")
            .upstream("plain", &[plain.addr()])
            .route("slow", "host = \"slow.test\"")
            .route("plain", "")
            .start(engine);
        let mut waiting = Client::connect(proxy.addr());
        waiting.send(&get("slow.test", "/poll"));
        let mut on_slow = slow.accept();
        assert!(on_slow.read_head().starts_with("GET /poll "));
        let mut hurried = Client::connect(proxy.addr());
        hurried.send(&get("other.test", "/x"));
        let mut on_plain = plain.accept();
        assert!(on_plain.read_head().starts_with("GET /x "));
        assert_eq!(hurried.read_response().status(), 504, "the global bound");
        // Logged as nginx logs it ("upstream timed out ... while reading response header").
        let line = format!("backend={} route=", plain.addr());
        proxy.wait_for_output(&line, 1, std::time::Duration::from_secs(10));
        proxy.wait_for_output("upstream timed out while the response head was awaited", 1, std::time::Duration::from_secs(10));
        on_slow.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate");
        let r = waiting.read_response();
        assert_eq!((r.status(), r.body_str()), (200, "late".to_string()), "{}", r.head.raw);
    }

    // The global connect bound is 60 s; the upstream's own is 300 ms: a backend that does
    // not answer the SYN gets the error at once, not after a minute (the client would give
    // up after 10 s).
    fn an_upstreams_connect_timeout_replaces_the_global_one(engine) {
        let (addr, _listener, _held) = blackhole();
        let proxy = Config::new()
            .timeout("upstream_connect", "60s")
            .upstream_with("gone", &[addr], "connect_timeout = \"300ms\"")
            .route("gone", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/"));
        let r = c.read_response();
        assert!(matches!(r.status(), 502 | 504), "{}", r.head.raw);
    }
}

#[test]
fn bad_upstream_timeouts_name_the_key() {
    let dir = crate::support::tls::CertDir::new("upstream-timeouts");
    for (extra, key) in [
        ("connect_timeout = \"0s\"", "upstream[0].connect_timeout"),
        (
            "response_timeout = \"soon\"",
            "upstream[0].response_timeout",
        ),
    ] {
        let text = Config::new()
            .upstream_with("u", &[dead_addr()], extra)
            .route("u", "")
            .render();
        let file = dir.write("edgeshard.toml", &text);
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{extra}: {said}");
        assert!(said.contains(key), "{extra}: {said}");
    }
}
