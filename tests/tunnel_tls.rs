//! Upgraded connections (WebSocket) on a TLS listener, `wss://` terminated by the proxy with a
//! plain backend: the `101` and the bytes after it, both ways (small messages and bulk
//! through many records, bytes sent with the upgrade request and with the `101`), the
//! client's close_notify passed on as a half-close and the backend's end as close_notify, and
//! a quiet tunnel closed at `tunnel_idle`; an upload that goes on while the client leaves
//! its download unread; bytes pipelined behind the upgrade request; a handshake message
//! rustls cannot join ends the tunnel (and, in a first flight, the handshake) instead of
//! spinning. WebSockets to a TLS backend, from plain and TLS clients. A real rustls client
//! over a std socket; TLS backends made by the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::pattern::{pattern_slice, BodyCheck};
use crate::support::tls::{server_config, tls_listener, CertDir, TestCa};
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

/// A TLS backend (`backend.test`, signed by `ca`) that accepts one connection, reads an
/// upgrade request head, answers `101` with `welcome`, echoes until the proxy's
/// close_notify, then sends `bye` and its own close_notify. Its CA file is written to `dir`.
fn tls_echo_backend(ca: &TestCa, dir: &CertDir) -> (SocketAddr, String) {
    let config = server_config(&ca.leaf(&["backend.test"]));
    let ca_file = dir.write("backend-ca.pem", &ca.pem);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(WAIT)).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        if read_head_bytes(&mut tls).is_err() {
            return;
        }
        let h = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nwelcome";
        if tls.write_all(h).is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        // Ok(0) only for a close_notify: a bare TCP end is an error to a rustls reader.
        while let Ok(n @ 1..) = tls.read(&mut buf) {
            if tls.write_all(&buf[..n]).is_err() {
                return;
            }
        }
        let _ = tls.write_all(b"bye");
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    let upstream = format!(
        "tls = {{ sni = \"backend.test\", ca = \"{}\" }}",
        ca_file.display()
    );
    (addr, upstream)
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

/// A client stream, plain or TLS, that can end its side.
trait ReadWrite: Read + Write {
    /// A TCP half-close, or a TLS close_notify.
    fn half_close(&mut self);
}

impl ReadWrite for TcpStream {
    fn half_close(&mut self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

impl ReadWrite for Tls {
    fn half_close(&mut self) {
        self.conn.send_close_notify();
        self.flush().unwrap();
    }
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

    // A WebSocket to a TLS backend, from a plain client and from a TLS one: the 101 and the
    // bytes with it, messages echoed through both sides' records, and each side's end
    // passed on (the client's close to the backend as close_notify; the backend's
    // close_notify to the client as its end, after its last bytes).
    fn a_websocket_to_a_tls_backend_from_plain_and_tls_clients(engine) {
        for tls_client in [false, true] {
            let ca = TestCa::new("backend ca");
            let dir = CertDir::new("tunnel-up");
            let (backend, upstream) = tls_echo_backend(&ca, &dir);
            let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
            let config = Config::new().upstream_with("main", &[backend], &upstream).route("main", "");
            let config = match tls_client {
                true => config.only_listener(&tls_listener(&[(&cert, &key)], "")),
                false => config,
            };
            let proxy = config.start(engine);
            let mut stream: Box<dyn ReadWrite> = match tls_client {
                true => Box::new(connect(proxy.addr(), Arc::new(ca.client_config()))),
                false => {
                    let s = TcpStream::connect(proxy.addr()).unwrap();
                    s.set_read_timeout(Some(WAIT)).unwrap();
                    Box::new(s)
                }
            };
            stream.write_all(REQ).unwrap();
            expect_101(&mut stream);
            let mut got = [0u8; 7];
            stream.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"welcome");
            let mut off = 0u64;
            for len in [10usize, 100, 20_000, 70_000] {
                stream.write_all(pattern_slice(off, len)).unwrap();
                let mut back = vec![0u8; len];
                stream.read_exact(&mut back).unwrap();
                assert_eq!(&back[..], pattern_slice(off, len), "tls client: {tls_client}");
                off += len as u64;
            }
            stream.half_close();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).expect("the backend's end after its last bytes");
            assert_eq!(rest, b"bye", "tls client: {tls_client}");
        }
    }
}
