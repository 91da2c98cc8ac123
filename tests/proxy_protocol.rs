//! PROXY protocol (issue 16). On listeners: behind an L4 balancer the header's source
//! address is the connection's peer, so the appended `X-Forwarded-For` hop, route and
//! listener `allow`/`deny` all see the real client; only trusted peers may send one, and a
//! connection without a valid header is closed unanswered and counted. To upstreams: every
//! new connection starts with a header naming the client (probes: the proxy's own).

use crate::support::tls::{tls_listener, CertDir, TestCa};
use crate::support::*;
use std::io::{Read, Write};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

const V1: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 80\r\n";

/// A v2 PROXY header for TCP over IPv6 from `[2001:db8::7]:4711`, with an ALPN TLV.
fn v2_ipv6() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x21".to_vec();
    let mut block = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&4711u16.to_be_bytes());
    block.extend_from_slice(&80u16.to_be_bytes());
    block.extend_from_slice(&[0x01, 0, 8]);
    block.extend_from_slice(b"http/1.1");
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(&block);
    h
}

/// A v2 LOCAL header (the balancer's own health check).
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

fn counted(admin: std::net::SocketAddr, want: &[(&str, f64)]) {
    scrape_until(
        admin,
        None,
        Duration::from_secs(5),
        "PROXY protocol results counted",
        |m| {
            want.iter()
                .all(|(r, n)| m.value("edgeshard_proxy_protocol_total", &[("result", r)]) == *n)
        },
    );
}

/// Trusts 127.0.0.1 (the tests' balancer); `/open/` is for everyone, the rest only for the
/// documentation networks the headers name.
fn behind_balancer(origin: &Origin, listener_extra: &str) -> Config {
    Config::new()
        .server("trusted_proxies", "[\"127.0.0.1\"]")
        .only_listener(&format!(
            "address = \"127.0.0.1:0\"\nproxy_protocol = true\n{listener_extra}"
        ))
        .upstream("main", &[origin.addr()])
        .route("main", "path_prefix = \"/open/\"")
        .route("main", "allow = [\"192.0.2.0/24\", \"2001:db8::/32\"]")
        .admin("")
}

both_engines! {
    // The header's source is the peer: it is the hop appended to X-Forwarded-For and what a
    // route's allow list admits, whether the request comes in the header's write or later.
    fn the_header_source_is_the_client(engine) {
        let origin = Origin::start("o");
        let proxy = behind_balancer(&origin, "").start(engine);
        let v2 = v2_ipv6();
        for (header, client) in [(V1, "192.0.2.7"), (&v2[..], "2001:db8::7")] {
            // Header and request in one write.
            let mut c = Client::connect(proxy.addr());
            let mut bytes = header.to_vec();
            bytes.extend_from_slice(&get("e.example", "/a"));
            c.send(&bytes);
            assert_eq!(c.read_response().status(), 200, "{client}");
            assert_eq!(origin.last_request().header_all("x-forwarded-for"), [client]);
            // Keep-alive: the next request on the connection has the same client.
            c.send(&get("e.example", "/b"));
            assert_eq!(c.read_response().status(), 200);
            assert_eq!(origin.last_request().header_all("x-forwarded-for"), [client]);
            // The header in two writes, then the request in a third.
            let mut c = Client::connect(proxy.addr());
            c.send(&header[..7]);
            c.send(&header[7..]);
            c.send(&get("e.example", "/c"));
            assert_eq!(c.read_response().status(), 200, "{client}, separate writes");
            assert_eq!(origin.last_request().header_all("x-forwarded-for"), [client]);
        }
        // An IPv4 client named in IPv6 form (a dual-stack balancer) is that IPv4 client.
        let mut c = Client::connect(proxy.addr());
        c.send(b"PROXY TCP6 ::ffff:192.0.2.8 ::1 4711 80\r\n");
        c.send(&get("e.example", "/mapped"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(origin.last_request().header_all("x-forwarded-for"), ["192.0.2.8"]);
        // A source outside the allow list is refused by the route.
        let mut c = Client::connect(proxy.addr());
        c.send(b"PROXY TCP4 203.0.113.9 198.51.100.1 4711 80\r\n");
        c.send(&get("e.example", "/d"));
        assert_eq!(c.read_response().status(), 403);
        c.send(&get("e.example", "/open/d"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(origin.last_request().header_all("x-forwarded-for"), ["203.0.113.9"]);
        // LOCAL (and UNKNOWN): the balancer itself is the client.
        for header in [V2_LOCAL, b"PROXY UNKNOWN\r\n"] {
            let mut c = Client::connect(proxy.addr());
            c.send(header);
            c.send(&get("e.example", "/open/health"));
            assert_eq!(c.read_response().status(), 200);
            assert_eq!(origin.last_request().header_all("x-forwarded-for"), ["127.0.0.1"]);
            c.send(&get("e.example", "/private"));
            assert_eq!(c.read_response().status(), 403);
            // The balancer is trusted, but an L4 balancer writes no X-Forwarded-For: on its
            // own connection the field is the client's claim, and is not believed.
            c.send(&request("GET", "/private", &[("Host", "e.example"), ("X-Forwarded-For", "192.0.2.7")], b""));
            assert_eq!(c.read_response().status(), 403, "a forged X-Forwarded-For was believed");
            c.send(&request("GET", "/open/xff", &[("Host", "e.example"), ("X-Forwarded-For", "192.0.2.7")], b""));
            assert_eq!(c.read_response().status(), 200);
            assert_eq!(origin.last_request().header_all("x-forwarded-for"), ["127.0.0.1"]);
        }
        assert_eq!(origin.request_count(), 12);
        counted(proxy.admin_addr(), &[("v1", 5.0), ("v2", 2.0), ("local", 1.0), ("bad", 0.0)]);
    }

    // A listener's allow list sees the header's source, not the balancer's address.
    fn a_listener_list_checks_the_header_source(engine) {
        let origin = Origin::start("o");
        let proxy = behind_balancer(&origin, "allow = [\"192.0.2.0/24\"]").start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(V1);
        c.send(&get("e.example", "/open/a"));
        assert_eq!(c.read_response().status(), 200);
        let mut c = Client::connect(proxy.addr());
        c.send(b"PROXY TCP4 203.0.113.9 198.51.100.1 4711 80\r\n");
        let r = c.read_response();
        assert_eq!(r.status(), 403);
        c.expect_closed();
        assert_eq!(origin.request_count(), 1);
    }

    // Without a valid header nothing is answered: the peer is a balancer, not a browser.
    fn a_missing_or_bad_header_closes_unanswered(engine) {
        let origin = Origin::start("o");
        let proxy = behind_balancer(&origin, "").start(engine);
        let v2 = v2_ipv6();
        let mut wrong_version = v2.clone();
        wrong_version[12] = 0x11;
        let mut too_long = b"PROXY TCP4 ".to_vec();
        too_long.resize(200, b'1');
        for bad in [
            get("e.example", "/open/a"),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 99999\r\n".to_vec(),
            b"PROXY TCP4 2001:db8::7 198.51.100.1 4711 80\r\n".to_vec(),
            too_long,
            wrong_version,
        ] {
            let mut c = Client::connect(proxy.addr());
            // A refusal may come before the whole write does: then the rest is reset.
            let _ = c.try_send(&bad);
            c.expect_closed();
        }
        assert_eq!(origin.request_count(), 0);
        counted(proxy.admin_addr(), &[("bad", 5.0), ("v1", 0.0), ("v2", 0.0)]);
    }

    fn a_header_cut_short_times_out(engine) {
        let origin = Origin::start("o");
        let proxy = behind_balancer(&origin, "").timeout("client_header", "300ms").start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&V1[..20]);
        c.expect_closed_within(Duration::from_secs(5));
        counted(proxy.admin_addr(), &[("timeout", 1.0)]);
    }

    // Only a trusted peer may name the client: anyone else is closed, header or not.
    fn an_untrusted_peer_is_closed(engine) {
        let origin = Origin::start("o");
        let proxy = behind_balancer(&origin, "")
            .server("trusted_proxies", "[\"10.0.0.0/8\"]")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let mut bytes = V1.to_vec();
        bytes.extend_from_slice(&get("e.example", "/open/a"));
        let _ = c.try_send(&bytes);
        c.expect_closed();
        assert_eq!(origin.request_count(), 0);
        counted(proxy.admin_addr(), &[("untrusted", 1.0), ("v1", 0.0)]);
    }

    // On a TLS listener the header comes before the ClientHello, which is not lost.
    fn a_tls_listener_reads_the_header_before_the_handshake(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("proxyproto");
        let leaf = ca.leaf(&["a.test"]);
        let cert = dir.write("a.pem", &leaf.cert_pem);
        let key = dir.write("a.key", &leaf.key_pem);
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr())
            .server("trusted_proxies", "[\"127.0.0.1\"]")
            .only_listener(&format!("{}\nproxy_protocol = true", tls_listener(&[(&cert, &key)], "")))
            .start(engine);
        let conn = rustls::ClientConnection::new(
            Arc::new(ca.client_config()),
            "a.test".try_into().unwrap(),
        )
        .unwrap();
        let mut sock = std::net::TcpStream::connect(proxy.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        sock.write_all(V1).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = Vec::new();
        match tls.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
            Err(e) => panic!("{e}"),
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(origin.last_request().header_all("x-forwarded-for"), ["192.0.2.7"]);
    }
}

both_engines! {
    // v2 to the backend, behind a v1 balancer: the backend learns the balancer's client, on
    // every request, each on a new connection (one that named a client is never reused).
    fn upstreams_are_told_the_client_on_each_new_connection(engine) {
        let backend = LockStep::bind();
        let proxy = Config::new()
            .server("trusted_proxies", "[\"127.0.0.1\"]")
            .only_listener("address = \"127.0.0.1:0\"\nproxy_protocol = true")
            .upstream_with("main", &[backend.addr()], "proxy_protocol = \"v2\"")
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(V1);
        // Each backend connection is kept open: a pooled one would be reused if it could be.
        let mut open = Vec::new();
        for path in ["/a", "/b"] {
            c.send(&get("e.example", path));
            let mut b = backend.accept();
            let head = b.read_exact(16);
            assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n");
            assert_eq!(&head[12..], [0x21, 0x11, 0, 12], "v2 PROXY, TCP over IPv4, 12 bytes");
            let mut want = vec![192, 0, 2, 7, 127, 0, 0, 1];
            want.extend_from_slice(&4711u16.to_be_bytes());
            want.extend_from_slice(&proxy.addr().port().to_be_bytes());
            assert_eq!(b.read_exact(12), want);
            let req = b.read_head();
            assert!(req.starts_with(&format!("GET {path} HTTP/1.1\r\n")), "{req}");
            b.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            assert_eq!(c.read_response().status(), 200);
            open.push(b);
        }
        assert_eq!(backend.accepted(), 2);
    }

    // v1 from a plain listener names the TCP peer; health probes send `PROXY UNKNOWN`.
    fn v1_to_upstreams_and_probes(engine) {
        let backend = LockStep::bind();
        let proxy = Config::new()
            .upstream_with("main", &[backend.addr()], "proxy_protocol = \"v1\"")
            .route("main", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("e.example", "/a"));
        let mut b = backend.accept();
        let line = format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            c.stream().local_addr().unwrap().port(),
            proxy.addr().port()
        );
        assert_eq!(String::from_utf8(b.read_exact(line.len())).unwrap(), line);
        assert!(b.read_head().starts_with("GET /a HTTP/1.1\r\n"));
        b.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(c.read_response().status(), 200);

        let probed = LockStep::bind();
        let proxy = Config::new()
            .upstream_with(
                "main",
                &[probed.addr()],
                "proxy_protocol = \"v1\"\n[upstream.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"",
            )
            .route("main", "")
            .start(engine);
        let mut p = probed.accept();
        assert_eq!(p.read_exact(15), b"PROXY UNKNOWN\r\n");
        drop(proxy);
    }
}

#[test]
fn upstream_proxy_protocol_is_v1_or_v2() {
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"u\"\n\n[[upstream]]\nname = \"u\"\nproxy_protocol = \"v3\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    expect_check_error_in(text, "upstream[0].proxy_protocol", &["v1", "v2"]);
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\n[[route]]\nupstream = \"u\"\n\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    expect_check_error_in(
        text,
        "listener[0].proxy_protocol",
        &["server.trusted_proxies"],
    );
}
