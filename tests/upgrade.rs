//! Upgraded connections (issue 7): WebSocket through edgeshard with a real client library on
//! both ends, raw-socket checks of the 101 hand-over, early bytes, half-close both ways, a
//! declined upgrade keeping HTTP framing, `h2c` never forwarded, and the tunnel idle timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::tls::{tls_listener, CertDir, TestCa};
use crate::support::{read_head_bytes, Client, Config, Engine, Origin};

/// A backend that answers one upgrade request with 101 and then: sends `early` right after
/// its head, echoes every byte, and when the client half-closes, writes "bye" and closes.
/// The request head it got is sent on the returned channel.
fn upgrade_backend(early: &'static [u8]) -> (SocketAddr, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let Ok(head) = read_head_bytes(&mut s) else {
            return;
        };
        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
        let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\nX-Backend: yes\r\n\r\n".to_vec();
        out.extend_from_slice(early);
        if s.write_all(&out).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.write_all(b"bye");
    });
    (addr, rx)
}

fn upgrade_request(proto: &str) -> Vec<u8> {
    format!("GET /chat HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Upgrade\r\nUpgrade: {proto}\r\n\r\n")
        .into_bytes()
}

fn read_exact_within(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("bytes through the tunnel");
    v
}

/// Reads a response head byte by byte (so that nothing after it is consumed).
fn read_head(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = read_head_bytes(s).unwrap_or_else(|h| panic!("head cut short: {h:?}"));
    String::from_utf8(head).unwrap()
}

fn python_websockets() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success())
}

const WS_SERVER: &str = r#"
import asyncio, websockets
async def echo(ws):
    async for m in ws:
        await ws.send(m)
async def main():
    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None) as srv:
        print(srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(120)
asyncio.run(main())
"#;

const WS_CLIENT: &str = r#"
import asyncio, os, random, ssl, sys, websockets
async def main(url, n, ca):
    random.seed(7)
    tls = {}
    if ca:
        tls = {"ssl": ssl.create_default_context(cafile=ca), "server_hostname": "a.test"}
    async with websockets.connect(url, max_size=None, **tls) as ws:
        for i in range(n):
            big = i % 50 == 0
            size = random.choice([0, 1, 125, 126, 127, 65535, 65536, 70000]) if big else random.randint(0, 300)
            msg = os.urandom(size) if i % 2 else "x" * size
            await ws.send(msg)
            back = await ws.recv()
            if back != msg:
                print("mismatch at message", i, "size", size)
                sys.exit(1)
    print("ok", n)
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
"#;

/// `n` messages through the proxy between the `websockets` library's client and echo server
/// (`tls`: the client speaks wss:// to a TLS listener); each must come back byte-identical.
fn python_echo(engine: Engine, n: usize, tls: bool) {
    assert!(
        python_websockets(),
        "python3 module `websockets` missing: python3 -m pip install websockets (.ci/run does)"
    );
    let mut server = Command::new("python3")
        .args(["-c", WS_SERVER])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = server.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
    }
    let port: u16 = line.trim().parse().expect("server port");
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ca = TestCa::new("ws ca");
    let dir = CertDir::new("ws");
    let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
    let ca_file = dir.write("ca.pem", &ca.pem);
    let config = Config::single(backend);
    let (config, scheme, ca_arg) = match tls {
        true => (
            config.only_listener(&tls_listener(&[(&cert, &key)], "")),
            "wss",
            ca_file.display().to_string(),
        ),
        false => (config, "ws", String::new()),
    };
    let proxy = config.start(engine);
    let url = format!("{scheme}://{}/echo", proxy.addr());
    let mut args = vec![
        "90".to_string(),
        "python3".into(),
        "-c".into(),
        WS_CLIENT.into(),
        url,
        n.to_string(),
    ];
    if tls {
        args.push(ca_arg);
    }
    let out = Command::new("timeout").args(&args).output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("ok {n}")),
        "client: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A backend that answers 101, reads one byte, then resets the connection (SO_LINGER 0).
fn resetting_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        if read_head_bytes(&mut s).is_err() {
            return;
        }
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
        );
        let _ = s.read(&mut [0u8; 1]);
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    addr
}

/// A backend that answers one upgrade request with 101 and `early`, then closes at once
/// (a FIN: it read the whole request head, so nothing is left unread).
fn closing_backend(early: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if read_head_bytes(&mut s).is_err() {
            return;
        }
        let mut out =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
                .to_vec();
        out.extend_from_slice(early);
        let _ = s.write_all(&out);
    });
    addr
}

/// A backend that answers one request with `head` (a 101 of its choosing), then holds the
/// connection until the proxy closes it.
fn answering_backend(head: String) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if read_head_bytes(&mut s).is_err() || s.write_all(head.as_bytes()).is_err() {
            return;
        }
        let _ = s.read(&mut [0u8; 1]);
    });
    addr
}

both_engines! {
    fn a_101_must_name_a_protocol_the_client_offered(engine) {
        // RFC 9110 §7.8 and §15.2.2: a 101 switches to a protocol the request's Upgrade
        // offered, and says which in its own Upgrade. Anything else is a bad response (502),
        // never a tunnel; names compare without regard to case.
        let cases: [(&str, Option<&str>, u16); 6] = [
            ("websocket", Some("h2c"), 502),
            ("websocket", None, 502),
            ("websocket", Some(""), 502),
            ("websocket", Some("websocket, other"), 502),
            ("websocket", Some("WebSocket"), 101),
            ("foo/1, bar/2", Some("bar/2"), 101),
        ];
        for (offer, answer, want) in cases {
            let upgrade = answer.map_or(String::new(), |a| format!("Upgrade: {a}\r\n"));
            let backend = answering_backend(format!(
                "HTTP/1.1 101 Switching Protocols\r\n{upgrade}Connection: Upgrade\r\n\r\n"
            ));
            let proxy = Config::single(backend).start(engine);
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            s.write_all(&upgrade_request(offer)).unwrap();
            let head = read_head(&mut s);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {want} ")),
                "offer {offer:?}, answer {answer:?}: {head}"
            );
        }
        // HTTP/1.0 has no 101 and no upgrade: one from a 1.0 backend is a bad response too.
        let backend = answering_backend(
            "HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_string(),
        );
        let proxy = Config::single(backend).start(engine);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(&upgrade_request("websocket")).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 502 "), "a 1.0 backend's 101: {head}");
    }

    fn several_upgrade_lines_are_one_offer(engine) {
        // RFC 9110 §5.3: field lines of one name are one list. The backend gets the whole
        // offer on one line, and a 101 to the second protocol is agreed.
        let (backend, heads) = upgrade_backend(b"");
        let proxy = Config::single(backend).start(engine);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: foo\r\nUpgrade: echo\r\n\r\n")
            .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let sent = heads.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(sent.contains("\r\nUpgrade: foo, echo\r\n"), "{sent}");
        // `h2c` on any of the lines: not an upgrade the proxy forwards.
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
        let seen = origin.last_request();
        assert!(seen.header("upgrade").is_none(), "{:?}", seen.headers);
    }

    fn backend_reset_ends_the_tunnel_at_once(engine) {
        // An error on one side ends both directions: the client sees its connection closed
        // right away, not after tunnel_idle (30 s here).
        let proxy = Config::single(resetting_backend())
            .timeout("tunnel_idle", "30s")
            .admin("")
            .start(engine);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(&upgrade_request("echo")).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let started = Instant::now();
        s.write_all(b"x").unwrap();
        // "At once": the client's side ends (EOF or RST, no byte) within 5 s, where a proxy
        // that only reacts to tunnel_idle would take 30 s. A correct one takes milliseconds.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "the backend's reset must end the client's side at once; after {:?}: {e} (got {rest:?})",
                started.elapsed()
            ),
        }
        assert!(rest.is_empty(), "no bytes after the 101: {rest:?}");
        // The client keeps its side open and silent: the proxy must still end the whole tunnel
        // (its connection count drops to 0), not wait for the client or tunnel_idle.
        crate::support::scrape_until(
            proxy.admin_addr(),
            None,
            Duration::from_secs(5),
            "edgeshard_connections_active 0 after the backend's reset",
            |m| m.value("edgeshard_connections_active", &[]) == 0.0,
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tunnel outlived the reset: {:?} (tunnel_idle is 30 s)",
            started.elapsed()
        );
        drop(s);
    }

    fn websocket_echo_ten_thousand_messages(engine) {
        // Issue 7: a real WebSocket library on both sides, 10,000 messages of mixed sizes
        // (text and binary, 0 B to 70,000 B, across the 125/126/65535/65536 frame-length
        // boundaries), each echoed back byte-identical through edgeshard.
        python_echo(engine, 10_000, false);
    }

    // The same library's client over wss:// to a TLS listener (the proxy terminates TLS;
    // the backend is plain), 2,000 messages.
    fn websocket_echo_over_tls_with_a_real_client(engine) {
        python_echo(engine, 2_000, true);
    }

    fn upgrade_switches_to_a_tunnel_with_early_bytes_and_half_close(engine) {
        let (backend, heads) = upgrade_backend(b"HELLO");
        let proxy = Config::single(backend).start(engine);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        // Bytes of the new protocol sent right behind the request head must reach the backend.
        let mut req = upgrade_request("echo");
        req.extend_from_slice(b"early-from-client");
        s.write_all(&req).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("\r\nupgrade: echo\r\n"), "{head}");
        assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
        assert!(lower.contains("\r\nx-backend: yes\r\n"), "{head}");
        assert!(!lower.contains("content-length") && !lower.contains("transfer-encoding"), "{head}");
        // What the backend got: the upgrade, explicitly.
        let got = heads.recv_timeout(Duration::from_secs(10)).unwrap().to_ascii_lowercase();
        assert!(got.contains("\r\nupgrade: echo\r\n"), "{got}");
        assert!(got.contains("\r\nconnection: upgrade\r\n"), "{got}");
        // The backend's early bytes, then the client's early bytes echoed.
        assert_eq!(read_exact_within(&mut s, 5), b"HELLO");
        assert_eq!(read_exact_within(&mut s, 17), b"early-from-client");
        // Data both ways, larger than one relay buffer.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let sender = {
            let big = big.clone();
            thread::spawn(move || w.write_all(&big).unwrap())
        };
        assert_eq!(read_exact_within(&mut s, big.len()), big);
        sender.join().unwrap();
        // Half-close from the client: the backend sees EOF, still answers, then closes.
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
    }

    fn declined_upgrade_keeps_http_framing(engine) {
        // The origin answers an upgrade request with a plain 200: the connection stays HTTP,
        // so a second request on it works.
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&upgrade_request("websocket"));
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        c.send(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
        let reqs = origin.requests();
        assert!(reqs[0].has_token("connection", "upgrade"), "{}", reqs[0].raw_head);
        assert_eq!(reqs[0].header("upgrade"), Some("websocket"));
        assert_eq!(reqs[1].path(), "/second");
        assert!(!reqs[1].has_header("upgrade"));
    }

    fn h2c_and_bodies_are_not_upgraded(engine) {
        let origin = Origin::start("o");
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&upgrade_request("h2c"));
        assert_eq!(c.read_response().status(), 200);
        let r = origin.last_request();
        assert!(!r.has_header("upgrade"), "h2c must not be forwarded: {}", r.raw_head);
        assert!(!r.has_token("connection", "upgrade"), "{}", r.raw_head);
        // An upgrade request with a body is forwarded as plain HTTP.
        c.send(b"POST /u HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(c.read_response().status(), 200);
        let r = origin.last_request();
        assert!(!r.has_header("upgrade"), "{}", r.raw_head);
        // HTTP/1.0 cannot upgrade.
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET /old HTTP/1.0\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(c.read_response().status(), 200);
        assert!(!origin.last_request().has_header("upgrade"));
    }

    fn backend_close_reaches_the_client_and_idle_tunnels_close(engine) {
        // 1. A backend that closes right after its 101 + early bytes: the client gets them,
        //    then EOF, long before tunnel_idle (30 s here, so only the backend's close can
        //    end it within the client's 10 s read timeout).
        let backend = closing_backend(b"HELLO");
        let mut proxy = Config::single(backend)
            .timeout("tunnel_idle", "30s")
            .start(engine);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(&upgrade_request("echo")).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.read_to_end(&mut rest)
            .expect("the backend's close must reach the client (EOF) well before tunnel_idle");
        assert_eq!(rest, b"HELLO", "the early bytes, then EOF");
        proxy.assert_alive();
        drop(s);

        // 2. A second tunnel with no traffic (the backend echoes and waits, never closes) is
        //    closed after tunnel_idle: not before it, and well within the read timeout.
        let (backend, _heads) = upgrade_backend(b"");
        let idle = Duration::from_millis(300);
        let mut proxy = Config::single(backend)
            .timeout("tunnel_idle", "300ms")
            .start(engine);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        // Taken before the request: the proxy's idle clock starts after it sent the 101, so
        // the close can never come less than `idle` after this instant.
        let started = Instant::now();
        s.write_all(&upgrade_request("echo")).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let mut rest = Vec::new();
        // 5 s: over 15x tunnel_idle, and under the backend's own 10 s read timeout (after
        // which it would close by itself and mask a proxy that never closes idle tunnels).
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_to_end(&mut rest)
            .expect("an idle tunnel must be closed after tunnel_idle (300 ms), within 5 s");
        let waited = started.elapsed();
        assert!(rest.is_empty(), "no bytes on an idle tunnel: {rest:?} after {waited:?}");
        assert!(
            waited >= idle - Duration::from_millis(10),
            "closed before tunnel_idle ({idle:?}): {waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "idle tunnel not closed: {waited:?}");
        proxy.assert_alive();
    }
}
