//! Upgraded connections (WebSocket) on a TLS listener, `wss://` terminated by the proxy with a
//! plain backend: the `101` and the bytes after it, both ways (small messages and bulk
//! through many records, bytes sent with the upgrade request and with the `101`), the
//! client's close_notify passed on as a half-close and the backend's end as close_notify, and
//! a quiet tunnel closed at `tunnel_idle`. A real rustls client over a std socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::pattern::{pattern_slice, BodyCheck};
use crate::support::tls::{tls_listener, CertDir, TestCa};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A backend that accepts one connection, reads an upgrade request head, answers `101` with
/// `welcome` in the same write, then echoes every read until the proxy half-closes, and
/// answers that with `bye` and its own end.
fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        if read_head_bytes(&mut s).is_err() {
            return;
        }
        let h = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nwelcome";
        if s.write_all(h).is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = s.write_all(b"bye");
    });
    addr
}

/// A proxy with one TLS listener in front of `backend`, and a client config that trusts it.
fn tls_proxy(
    backend: SocketAddr,
    timeouts: &[(&str, &str)],
    engine: Engine,
) -> (Proxy, Arc<rustls::ClientConfig>, CertDir) {
    let ca = TestCa::new("tunnel ca");
    let dir = CertDir::new("tunnel");
    let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
    let mut config = Config::single(backend)
        .only_listener(&tls_listener(&[(&cert, &key)], ""))
        .admin("");
    for (k, v) in timeouts {
        config = config.timeout(k, v);
    }
    (config.start(engine), Arc::new(ca.client_config()), dir)
}

/// Connects over TLS and sends an upgrade request with `early` right behind its head, in
/// one write; returns the stream after the `101` head.
fn upgrade(proxy: SocketAddr, config: &Arc<rustls::ClientConfig>, early: &[u8]) -> Tls {
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let sock = TcpStream::connect(proxy).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.set_write_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut req = b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    req.extend_from_slice(early);
    tls.write_all(&req).unwrap();
    let head = read_head_bytes(&mut tls).unwrap_or_else(|h| panic!("head cut short: {h:?}"));
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    tls
}

fn read_n(tls: &mut Tls, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tls.read_exact(&mut got).unwrap();
    got
}

both_engines! {
    // Small messages one at a time, then 4 MiB through many records in 64 KiB steps, each
    // echoed whole; the bytes sent with the upgrade request and with the 101 arrive first.
    // The client's close_notify reaches the backend as its end, and the backend's end
    // reaches the client as a close_notify after its last bytes (a clean EOF, not a cut).
    fn a_websocket_over_tls_moves_both_ways_and_ends_with_close_notify(engine) {
        let backend = echo_backend();
        let (proxy, config, _dir) = tls_proxy(backend, &[], engine);
        let mut tls = upgrade(proxy.addr(), &config, b"early");
        assert_eq!(read_n(&mut tls, 7), b"welcome");
        assert_eq!(read_n(&mut tls, 5), b"early", "sent with the upgrade request");
        for i in 0..50u32 {
            let msg = format!("message {i}");
            tls.write_all(msg.as_bytes()).unwrap();
            assert_eq!(read_n(&mut tls, msg.len()), msg.as_bytes());
        }
        let total = 4u64 << 20;
        let step = 64 * 1024;
        let mut check = BodyCheck::new();
        let mut off = 0u64;
        while off < total {
            tls.write_all(pattern_slice(off, step)).unwrap();
            check.update(&read_n(&mut tls, step));
            off += step as u64;
        }
        let (len, _, mismatch) = check.finish();
        assert_eq!((len, mismatch), (total, None));
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).expect("a close_notify after the backend's last bytes");
        assert_eq!(rest, b"bye");
        // Counted as plaintext, both ways.
        scrape_until(proxy.admin_addr(), None, WAIT, "the tunnel's bytes", |m| {
            m.value("edgeshard_client_bytes_received_total", &[]) >= total as f64
                && m.value("edgeshard_client_bytes_sent_total", &[]) >= total as f64
        });
    }

    // A tunnel with no byte either way for tunnel_idle is closed (the client sees its end).
    fn a_quiet_tls_tunnel_is_closed_at_tunnel_idle(engine) {
        let backend = echo_backend();
        let (proxy, config, _dir) = tls_proxy(backend, &[("tunnel_idle", "1s")], engine);
        let mut tls = upgrade(proxy.addr(), &config, b"");
        assert_eq!(read_n(&mut tls, 7), b"welcome");
        let quiet = Instant::now();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
        let waited = quiet.elapsed();
        assert!(waited >= Duration::from_millis(900) && waited < WAIT, "closed after {waited:?}");
    }
}
