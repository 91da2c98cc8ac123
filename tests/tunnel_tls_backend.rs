//! Upgraded connections (WebSocket) to a TLS backend (`[[upstream]] tls`), from plain and
//! TLS clients: messages both ways through both sides' records, bytes the backend sends
//! with its `101` (more than one read and more than rustls holds) delivered whole and in
//! order, each side's end passed on (close_notify for a half-close, and back), a backend's
//! bare TCP end or reset never passed on as a clean close_notify, and a bad record after the
//! proxy's close_notify ending the tunnel, not the shard. TLS backends made by the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::support::pattern::{pattern_slice, BodyCheck};
use crate::support::tls::{server_config, tls_listener, CertDir, TestCa};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);
const REQ: &[u8] = b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

type Srv = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;
type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS backend (`backend.test`) that accepts connections, reads an upgrade head, answers
/// `101` followed by `early` in the same write, then hands the stream to `then`. Returns its
/// address and the upstream's `tls = {...}`.
fn tls_backend(
    ca: &TestCa,
    dir: &CertDir,
    early: Vec<u8>,
    then: impl Fn(Srv) + Send + Sync + 'static,
) -> (SocketAddr, String) {
    let config = server_config(&ca.leaf(&["backend.test"]));
    let ca_file = dir.write("backend-ca.pem", &ca.pem);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let then = Arc::new(then);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let (config, early, then) = (config.clone(), early.clone(), then.clone());
            thread::spawn(move || {
                s.set_read_timeout(Some(WAIT)).unwrap();
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                if read_head_bytes(&mut tls).is_err() {
                    return;
                }
                let mut h = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
                h.extend_from_slice(&early);
                if tls.write_all(&h).is_err() {
                    return;
                }
                then(tls);
            });
        }
    });
    let upstream = format!(
        "tls = {{ sni = \"backend.test\", ca = \"{}\" }}",
        ca_file.display()
    );
    (addr, upstream)
}

struct Setup {
    proxy: Proxy,
    ca: TestCa,
    _dir: CertDir,
}

fn setup(
    engine: Engine,
    tls_client: bool,
    early: Vec<u8>,
    then: impl Fn(Srv) + Send + Sync + 'static,
) -> Setup {
    let ca = TestCa::new("backend ca");
    let dir = CertDir::new("tunnel-up");
    let (backend, upstream) = tls_backend(&ca, &dir, early, then);
    let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
    let config = Config::new()
        .upstream_with("main", &[backend], &upstream)
        .route("main", "");
    let config = match tls_client {
        true => config.only_listener(&tls_listener(&[(&cert, &key)], "")),
        false => config,
    };
    Setup {
        proxy: config.start(engine),
        ca,
        _dir: dir,
    }
}

fn tls_connect(s: &Setup) -> Tls {
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(s.ca.client_config()), name).unwrap();
    let sock = TcpStream::connect(s.proxy.addr()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.set_write_timeout(Some(WAIT)).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn plain_connect(s: &Setup) -> TcpStream {
    let sock = TcpStream::connect(s.proxy.addr()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.set_write_timeout(Some(WAIT)).unwrap();
    sock
}

fn expect_101(s: &mut impl Read) {
    let head = read_head_bytes(s).unwrap_or_else(|h| panic!("head cut short: {h:?}"));
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
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

both_engines! {
    // A WebSocket to a TLS backend, from a plain client and from a TLS one: the 101 and the
    // bytes with it, messages echoed through both sides' records, the client's end passed
    // on to the backend as close_notify, and the backend's close_notify to the client as
    // its end, after its last bytes.
    fn a_websocket_to_a_tls_backend_from_plain_and_tls_clients(engine) {
        for tls_client in [false, true] {
            let s = setup(engine, tls_client, b"welcome".to_vec(), |mut tls: Srv| {
                let mut buf = vec![0u8; 64 * 1024];
                let end = loop {
                    match tls.read(&mut buf) {
                        Ok(0) => break "close_notify",
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        // A bare TCP end, or anything else.
                        Err(_) => break "cut",
                    }
                };
                let _ = tls.write_all(end.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
            let mut stream: Box<dyn ReadWrite> = match tls_client {
                true => Box::new(tls_connect(&s)),
                false => Box::new(plain_connect(&s)),
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
            assert_eq!(rest, b"close_notify", "tls client: {tls_client}");
        }
    }

    // A TLS backend whose TCP stream ends without close_notify (it crashed, or a FIN was
    // injected between proxy and backend) has been cut, as on the HTTP path: the TLS client
    // gets no close_notify, which would tell it the stream ended whole.
    fn a_tls_backends_bare_fin_is_not_passed_on_as_close_notify(engine) {
        let s = setup(engine, true, b"data".to_vec(), |mut tls: Srv| {
            tls.flush().unwrap();
            // A bare TCP end: no close_notify.
            tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
            let mut b = [0u8; 64];
            while let Ok(1..) = tls.sock.read(&mut b) {}
        });
        let mut tls = tls_connect(&s);
        tls.write_all(REQ).unwrap();
        expect_101(&mut tls);
        let mut got = [0u8; 4];
        tls.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"data");
        let mut rest = Vec::new();
        let end = tls.read_to_end(&mut rest);
        assert!(
            end.is_err(),
            "the backend's truncation reached the client as a clean close_notify ({end:?})"
        );
    }

    // Bytes a TLS backend sends right behind its 101, more than the head read takes and more
    // than rustls holds decrypted (the rest as ciphertext not fed yet, or still in the
    // socket): all reach the client once, in order (early, then rustls' plaintext, then the
    // unfed records).
    fn a_large_early_burst_from_a_tls_backend_arrives_whole(engine) {
        let total = 1 << 20;
        for tls_client in [false, true] {
            let s = setup(engine, tls_client, pattern_slice(0, total).to_vec(), |mut tls: Srv| {
                let _ = tls.flush();
                let mut b = [0u8; 64];
                while let Ok(1..) = tls.read(&mut b) {}
            });
            let mut stream: Box<dyn Read + Send> = if tls_client {
                let mut t = tls_connect(&s);
                t.write_all(REQ).unwrap();
                Box::new(t)
            } else {
                let mut t = plain_connect(&s);
                t.write_all(REQ).unwrap();
                Box::new(t)
            };
            expect_101(&mut stream);
            let mut got = vec![0u8; total];
            stream.read_exact(&mut got).unwrap();
            let mut check = BodyCheck::new();
            check.update(&got);
            let (len, _, mismatch) = check.finish();
            assert_eq!((len, mismatch), (total as u64, None), "tls client: {tls_client}");
        }
    }

    // A plain client half-closes at once; the TLS backend reads the close_notify and then
    // sends 8 MiB and its own close_notify: the client gets all of it, then the end.
    fn a_client_half_close_while_the_tls_backend_keeps_sending(engine) {
        let total = 8 << 20;
        let s = setup(engine, false, Vec::new(), move |mut tls: Srv| {
            let mut b = [0u8; 64];
            match tls.read(&mut b) {
                Ok(0) => {}
                other => panic!("the backend wanted close_notify, got {other:?}"),
            }
            let mut off = 0u64;
            while (off as usize) < total {
                if tls.write_all(pattern_slice(off, 64 * 1024)).is_err() {
                    return;
                }
                off += 64 * 1024;
            }
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        let mut c = plain_connect(&s);
        c.write_all(REQ).unwrap();
        expect_101(&mut c);
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        let mut check = BodyCheck::new();
        check.update(&got);
        let (len, _, mismatch) = check.finish();
        assert_eq!((len, mismatch), (total as u64, None));
    }

    // A TLS backend that resets its connection mid-tunnel: the TLS client must not see a
    // clean close_notify.
    fn a_tls_backend_reset_is_not_a_clean_end(engine) {
        let s = setup(engine, true, b"data".to_vec(), |mut tls: Srv| {
            tls.flush().unwrap();
            let mut b = [0u8; 1];
            // Waits for the client's go-ahead, then resets.
            let _ = tls.read(&mut b);
            socket2::SockRef::from(&tls.sock).set_linger(Some(Duration::ZERO)).unwrap();
        });
        let mut tls = tls_connect(&s);
        tls.write_all(REQ).unwrap();
        expect_101(&mut tls);
        let mut got = [0u8; 4];
        tls.read_exact(&mut got).unwrap();
        tls.write_all(b"x").unwrap();
        let mut rest = Vec::new();
        assert!(tls.read_to_end(&mut rest).is_err(), "a reset read as a clean end");
    }

    // The proxy passed the client's end on to the TLS backend (close_notify); the backend
    // (or anything on the path) then sends a record that does not decrypt. rustls then
    // queues a fatal alert after its close_notify, which its debug assertion refuses
    // (rustls issue 959; Cargo.toml turns it off): the shard went down in debug builds.
    fn a_bad_record_after_close_notify_to_the_backend(engine) {
        let s = setup(engine, false, Vec::new(), |mut tls: Srv| {
            let mut b = [0u8; 64];
            if !matches!(tls.read(&mut b), Ok(0)) {
                return;
            }
            // An application-data record that does not decrypt.
            let mut rec = vec![0x17, 0x03, 0x03, 0x00, 0x40];
            rec.extend([0x5a; 0x40]);
            let _ = tls.sock.write_all(&rec);
            let _ = tls.sock.read(&mut b);
        });
        let mut c = plain_connect(&s);
        c.write_all(REQ).unwrap();
        expect_101(&mut c);
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        // The shard goes on: a second tunnel.
        let mut c = plain_connect(&s);
        c.write_all(REQ).unwrap();
        expect_101(&mut c);
        let out = s.proxy.output();
        assert!(!out.contains("panicked"), "{out}");
    }
}
