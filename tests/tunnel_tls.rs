//! Upgraded connections (WebSocket) on a TLS listener, `wss://` terminated by the proxy with a
//! plain backend: the `101` and the bytes after it, both ways (small messages and bulk
//! through many records, bytes sent with the upgrade request and with the `101`), the
//! client's close_notify passed on as a half-close and the backend's end as close_notify, and
//! a quiet tunnel closed at `tunnel_idle`; an upload that goes on while the client leaves
//! its download unread; bytes pipelined behind the upgrade request; a handshake message
//! rustls cannot join ends the tunnel (and, in a first flight, the handshake) instead of
//! spinning. A real rustls client over a std socket. TLS backends: `tunnel_tls_backend.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::pattern::{pattern_slice, BodyCheck};
use crate::support::tls::{tls_listener, CertDir, TestCa};
use crate::support::*;
use crate::tunnel::upgrade_backend_to;

const WAIT: Duration = Duration::from_secs(30);

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A backend that accepts one connection, reads an upgrade request head, answers `101` with
/// `welcome` in the same write, then echoes every read until the proxy half-closes, and
/// answers that with `bye` and its own end.
fn echo_backend() -> SocketAddr {
    upgrade_backend_to("websocket", b"welcome", |mut s| {
        echo(s.try_clone().unwrap());
        let _ = s.write_all(b"bye");
    })
}

/// A backend that answers `101` and hands the socket to `then`.
fn upgrade_backend(then: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
    upgrade_backend_to("websocket", b"", then)
}

fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

const REQ: &[u8] = b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A TLS 1.3 client with ChaCha20 only whose secrets can be taken out, to write records of
/// its own (aws-lc's GCM keys insist on a sequence that starts at 0).
fn extracting_client(ca: &TestCa) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    config
}

fn connect(proxy: SocketAddr, config: Arc<rustls::ClientConfig>) -> Tls {
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(proxy).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.set_write_timeout(Some(WAIT)).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn expect_101(s: &mut impl Read) {
    let head = read_head_bytes(s).unwrap_or_else(|h| panic!("head cut short: {h:?}"));
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

/// Reads until the peer's end (or an error: a reset is an end too) within `within`; false
/// when it is still open then.
fn ends_within(sock: &mut TcpStream, within: Duration) -> bool {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A proxy with one TLS listener in front of `backend`, and a client config that trusts it.
fn tls_proxy(
    backend: SocketAddr,
    timeouts: &[(&str, &str)],
    engine: Engine,
) -> (Proxy, Arc<rustls::ClientConfig>, (CertDir, TestCa)) {
    let ca = TestCa::new("tunnel ca");
    let dir = CertDir::new("tunnel");
    let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
    let mut config = Config::single(backend)
        .only_listener(&tls_listener(&[(&cert, &key)], ""))
        .admin("");
    for (k, v) in timeouts {
        config = config.timeout(k, v);
    }
    let client = Arc::new(ca.client_config());
    (config.start(engine), client, (dir, ca))
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
        let (proxy, config, _certs) = tls_proxy(backend, &[], engine);
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
        let (proxy, config, _certs) = tls_proxy(backend, &[("tunnel_idle", "1s")], engine);
        let mut tls = upgrade(proxy.addr(), &config, b"");
        assert_eq!(read_n(&mut tls, 7), b"welcome");
        let quiet = Instant::now();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
        let waited = quiet.elapsed();
        assert!(waited >= Duration::from_millis(900) && waited < WAIT, "closed after {waited:?}");
    }

    // From the review: bytes pipelined behind the upgrade request in many records of their
    // own (some decrypted in rustls, some ciphertext not fed yet, the rest in the socket
    // when the 101 comes) all reach the backend, in order.
    fn pipelined_records_after_the_upgrade_request_all_arrive(engine) {
        let backend = upgrade_backend(echo);
        let (proxy, config, _certs) = tls_proxy(backend, &[], engine);
        let mut tls = connect(proxy.addr(), config);
        tls.write_all(REQ).unwrap();
        let total = 300 * 4000u64;
        let mut off = 0u64;
        while off < total {
            tls.write_all(pattern_slice(off, 4000)).unwrap();
            off += 4000;
        }
        expect_101(&mut tls);
        let mut check = BodyCheck::new();
        check.update(&read_n(&mut tls, total as usize));
        let (len, _, mismatch) = check.finish();
        assert_eq!((len, mismatch), (total, None));
    }

    // From the review: the client uploads 16 MiB before reading anything while the backend
    // sends 16 MiB: the upload goes on whatever the download's backpressure (it stopped at
    // about 5.6 MB, the client's records for to_client queued behind it).
    fn an_upload_is_not_held_up_by_a_download_the_client_has_not_read_yet(engine) {
        let total: usize = 16 << 20;
        let (tx, rx) = std::sync::mpsc::channel();
        let backend = upgrade_backend(move |s| {
            let mut w = s.try_clone().unwrap();
            thread::spawn(move || {
                let chunk = vec![1u8; 64 * 1024];
                for _ in 0..total / chunk.len() {
                    if w.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
            let mut r = s;
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while let Ok(n @ 1..) = r.read(&mut buf) {
                got += n;
                if got >= total {
                    break;
                }
            }
            let _ = tx.send(got);
        });
        let (proxy, config, _certs) = tls_proxy(backend, &[], engine);
        let mut tls = connect(proxy.addr(), config);
        tls.write_all(REQ).unwrap();
        expect_101(&mut tls);
        let chunk = vec![2u8; 64 * 1024];
        for sent in (0..total).step_by(chunk.len()) {
            if let Err(e) = tls.write_all(&chunk) {
                panic!("the upload stalled after {sent} bytes: {e}");
            }
        }
        tls.flush().unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), total);
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            got += tls.read(&mut buf).unwrap();
        }
    }

    // From the review: a handshake message after the 101 (a KeyUpdate claiming 64 KiB) in
    // fragments past what rustls joins makes every read_tls fail: the tunnel ends at once
    // (it spun at 100 % CPU, its own sends of nothing resetting tunnel_idle).
    fn an_overflowing_handshake_message_ends_the_tls_tunnel(engine) {
        let backend = upgrade_backend(echo);
        let (proxy, _, (_dir, ca)) = tls_proxy(backend, &[("tunnel_idle", "30s")], engine);
        let mut tls = connect(proxy.addr(), Arc::new(extracting_client(&ca)));
        tls.write_all(REQ).unwrap();
        expect_101(&mut tls);
        tls.write_all(b"ping").unwrap();
        assert_eq!(read_n(&mut tls, 4), b"ping");
        let suite = tls.conn.negotiated_cipher_suite().unwrap();
        let rustls::StreamOwned { conn, mut sock } = tls;
        let (mut seq, tx) = conn.dangerous_extract_secrets().unwrap().tx;
        let rustls::ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } = tx else {
            panic!("ChaCha20 was the only suite offered");
        };
        let mut enc = suite.tls13().unwrap().aead_alg.encrypter(key, iv);
        let mut msg = vec![24u8, 0x00, 0xff, 0xff];
        msg.resize(4 + 0xffff, 0);
        let mut wire = Vec::new();
        for frag in msg.chunks(13_200) {
            let plain = rustls::crypto::cipher::OutboundPlainMessage {
                typ: rustls::ContentType::Handshake,
                version: rustls::ProtocolVersion::TLSv1_2,
                payload: rustls::crypto::cipher::OutboundChunks::Single(frag),
            };
            wire.extend(enc.encrypt(plain, seq).unwrap().encode());
            seq += 1;
        }
        sock.write_all(&wire).unwrap();
        assert!(ends_within(&mut sock, Duration::from_secs(10)), "the tunnel is still open");
    }

    // From the review, and older than the tunnel: the same overflow in a first flight (a
    // ClientHello claiming 64 KiB, in plain records: no key needed) wedged the shard in the
    // handshake's read loop. It fails the handshake now, and the shard serves the next one.
    fn an_overflowing_client_hello_does_not_wedge_the_shard(engine) {
        let backend = upgrade_backend(echo);
        let (proxy, config, _certs) = tls_proxy(backend, &[], engine);
        let mut msg = vec![1u8, 0x00, 0xff, 0xff];
        msg.resize(4 + 0xffff, 0);
        let mut wire = Vec::new();
        for frag in msg.chunks(16_384) {
            wire.extend([0x16, 0x03, 0x01]);
            wire.extend((frag.len() as u16).to_be_bytes());
            wire.extend(frag);
        }
        let mut bad = TcpStream::connect(proxy.addr()).unwrap();
        bad.write_all(&wire).unwrap();
        assert!(ends_within(&mut bad, Duration::from_secs(10)), "the handshake is still going on");
        scrape_until(proxy.admin_addr(), None, WAIT, "the failed handshake", |m| {
            m.sum("edgeshard_tls_handshake_failures_total", &[]) >= 1.0
        });
        let mut tls = connect(proxy.addr(), config);
        tls.write_all(REQ).unwrap();
        expect_101(&mut tls);
    }
}
