//! Bulk traffic through upgraded tunnels (spliced when a read fills the copy buffer): 64 MiB
//! both ways at once arrives byte-identical and mostly spliced, small messages after a bulk
//! phase still arrive (copied again) and an idle tunnel still closes, a half-close in the
//! middle of bulk is passed on exactly while the other direction flows on, a backend
//! reset mid-bulk ends the tunnel at once on both sides, a half-closed tunnel whose other
//! side goes quiet ends after `tunnel_half_closed`, and an open tunnel's bytes are counted
//! as they move.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::pattern::{pattern_slice, BodyCheck, MAX_SLICE};
use crate::support::{read_head_bytes, scrape, scrape_until, Config};

/// Generous bound on any single wait; a hang fails the test instead of blocking it.
const WAIT: Duration = Duration::from_secs(60);

fn spliced_bytes(admin: SocketAddr) -> f64 {
    scrape(admin, None).value("edgeshard_spliced_bytes_total", &[])
}

/// A backend that accepts one connection, reads an upgrade request head, answers 101 and
/// hands the socket to `then` (on the accepting thread).
fn upgrade_backend(then: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
    upgrade_backend_to("bulk", b"", then)
}

/// The same, switching to `protocol`, with `after` in the write of the 101 head (bytes of
/// the new protocol that come with it).
pub(crate) fn upgrade_backend_to(
    protocol: &'static str,
    after: &'static [u8],
    then: impl FnOnce(TcpStream) + Send + 'static,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        if read_head_bytes(&mut s).is_err() {
            return;
        }
        let mut h = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: Upgrade\r\n\r\n").into_bytes();
        h.extend_from_slice(after);
        if s.write_all(&h).is_ok() {
            then(s);
        }
    });
    addr
}

/// Connects through the proxy and upgrades; returns the socket right after the 101 head.
fn upgraded(proxy: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /bulk HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: bulk\r\n\r\n")
        .unwrap();
    let head = read_head_bytes(&mut s).unwrap_or_else(|h| panic!("head cut short: {h:?}"));
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s
}

/// Writes pattern bytes `from..to` (absolute offsets) to `w`.
fn send_pattern(w: &mut TcpStream, from: u64, to: u64) -> std::io::Result<()> {
    let mut off = from;
    while off < to {
        let n = ((to - off) as usize).min(MAX_SLICE);
        w.write_all(pattern_slice(off, n))?;
        off += n as u64;
    }
    Ok(())
}

/// Reads `r` to EOF, checking the bytes against the pattern; returns (length, first
/// mismatch).
fn read_checked(r: &mut TcpStream) -> std::io::Result<(u64, Option<u64>)> {
    let mut check = BodyCheck::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf)? {
            0 => break,
            n => check.update(&buf[..n]),
        }
    }
    let (len, _, mismatch) = check.finish();
    Ok((len, mismatch))
}

/// Runs `f` on a thread; its result comes back on a channel, received within WAIT.
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

both_engines! {
    fn bulk_both_ways_at_once_is_spliced(engine) {
        const N: u64 = 64 << 20;
        // The backend streams N bytes and half-closes while reading the client's N bytes.
        let (tx, from_client) = mpsc::channel();
        let backend = upgrade_backend(move |mut s| {
            let mut w = s.try_clone().unwrap();
            let writer = spawn(move || {
                send_pattern(&mut w, 0, N).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let _ = tx.send(read_checked(&mut s).unwrap());
            writer.recv_timeout(WAIT).unwrap();
        });
        let proxy = Config::single(backend).admin("").start(engine);
        let mut s = upgraded(proxy.addr());
        let mut w = s.try_clone().unwrap();
        let writer = spawn(move || {
            send_pattern(&mut w, 0, N).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        assert_eq!(read_checked(&mut s).unwrap(), (N, None), "backend -> client");
        writer.recv_timeout(WAIT).unwrap();
        assert_eq!(from_client.recv_timeout(WAIT).unwrap(), (N, None), "client -> backend");
        // Only the reads that detect bulk are copied (16 KiB each, once per burst that
        // follows a small one): most of the 128 MiB went through pipes.
        let spliced = spliced_bytes(proxy.admin_addr());
        assert!(spliced > 0.8 * (2 * N) as f64, "spliced {spliced} of {}", 2 * N);
    }

    fn small_messages_after_bulk_then_idle_close(engine) {
        const BULK: u64 = 8 << 20;
        const MSG: usize = 10;
        // An echo backend.
        let backend = upgrade_backend(|mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let proxy = Config::single(backend)
            // Longer than a scrape of /metrics (about 0.6 s in a debug build).
            .timeout("tunnel_idle", "2s")
            .admin("")
            .start(engine);
        let mut s = upgraded(proxy.addr());
        // Bulk phase: BULK bytes out and their echo back, at the same time.
        let mut w = s.try_clone().unwrap();
        let writer = spawn(move || send_pattern(&mut w, 0, BULK).unwrap());
        let mut back = vec![0u8; BULK as usize];
        s.read_exact(&mut back).unwrap();
        writer.recv_timeout(WAIT).unwrap();
        assert!(back == crate::support::pattern::pattern_vec(BULK as usize), "bulk echo differs");
        let after_bulk = spliced_bytes(proxy.admin_addr());
        assert!(after_bulk > BULK as f64, "bulk phase spliced only {after_bulk}");
        // Small messages, one at a time: each arrives whole (copied again; at most the first
        // one per direction, read while still in splice mode, goes through a pipe).
        // `quiet` is taken before each write: after the loop it precedes the tunnel's last
        // traffic (that message and its echo), so a correct idle close is never less than
        // tunnel_idle after it.
        let mut quiet = Instant::now();
        for i in 0..200u32 {
            let msg = format!("{i:0width$}", width = MSG);
            quiet = Instant::now();
            s.write_all(msg.as_bytes()).unwrap();
            let mut got = [0u8; MSG];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, msg.as_bytes());
        }
        let small_spliced = spliced_bytes(proxy.admin_addr()) - after_bulk;
        assert!(small_spliced <= (2 * MSG) as f64, "small messages spliced: {small_spliced}");
        // Then silence (since the last echo): the tunnel closes after tunnel_idle.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        let waited = quiet.elapsed();
        assert!(rest.is_empty(), "{rest:?}");
        assert!(waited >= Duration::from_millis(2000 - 20), "closed before tunnel_idle (2 s): {waited:?}");
        assert!(waited < Duration::from_secs(12), "idle tunnel not closed: {waited:?}");
    }

    fn half_close_in_the_middle_of_bulk(engine) {
        // The client sends N bytes and shuts its write side while the backend streams; the
        // backend sees exactly N bytes then EOF, and keeps sending after it (M bytes in all).
        const N: u64 = (20 << 20) + 123;
        const M: u64 = 32 << 20;
        let (tx, from_client) = mpsc::channel();
        let backend = upgrade_backend(move |mut s| {
            let mut w = s.try_clone().unwrap();
            let first = spawn(move || {
                send_pattern(&mut w, 0, M / 2).unwrap();
                w
            });
            let got = read_checked(&mut s).unwrap();
            let _ = tx.send(got);
            let mut w = first.recv_timeout(WAIT).unwrap();
            // The second half only after the client's EOF arrived.
            send_pattern(&mut w, M / 2, M).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let proxy = Config::single(backend).start(engine);
        let mut s = upgraded(proxy.addr());
        let mut w = s.try_clone().unwrap();
        let writer = spawn(move || {
            send_pattern(&mut w, 0, N).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let reader = spawn(move || read_checked(&mut s).unwrap());
        writer.recv_timeout(WAIT).unwrap();
        assert_eq!(from_client.recv_timeout(WAIT).unwrap(), (N, None), "client -> backend");
        assert_eq!(reader.recv_timeout(WAIT).unwrap(), (M, None), "backend -> client");
    }

    fn backend_reset_mid_bulk_ends_both_sides(engine) {
        // Bulk both ways; the backend resets after reading 4 MiB. The client's reader must
        // see the end and its writer an error (the proxy closed the socket), well before
        // tunnel_idle (30 s).
        let backend = upgrade_backend(|mut s| {
            let stop = Arc::new(AtomicBool::new(false));
            let mut w = s.try_clone().unwrap();
            let writer = {
                let stop = stop.clone();
                spawn(move || {
                    let mut off = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && send_pattern(&mut w, off, off + (1 << 20)).is_ok()
                    {
                        off += 1 << 20;
                    }
                })
            };
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0usize;
            while got < 4 << 20 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            // The writer's handle goes first (it stops after its current 1 MiB), then this
            // one: with SO_LINGER 0 (and unread bytes queued) the close is a reset.
            stop.store(true, Ordering::Relaxed);
            writer.recv_timeout(WAIT).unwrap();
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        });
        let proxy = Config::single(backend).timeout("tunnel_idle", "30s").start(engine);
        let started = Instant::now();
        let mut s = upgraded(proxy.addr());
        let mut w = s.try_clone().unwrap();
        let writer = spawn(move || {
            let mut off = 0u64;
            loop {
                if let Err(e) = send_pattern(&mut w, off, off + (1 << 20)) {
                    return e;
                }
                off += 1 << 20;
            }
        });
        let reader = spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n as u64,
                }
            }
        });
        let got = reader.recv_timeout(WAIT).expect("client reader still blocked");
        let err = writer.recv_timeout(WAIT).expect("client writer still blocked");
        assert!(
            !matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "writer timed out instead of seeing the close: {err}"
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "tunnel outlived the reset: {took:?}, read {got}");
    }
}

both_engines! {
    // timeouts.tunnel_half_closed (HAProxy's `timeout client-fin`): once the client has
    // half-closed, a backend that neither answers nor closes holds the tunnel that long, not
    // tunnel_idle (an hour here). What it sends meanwhile still arrives, and restarts the bound.
    fn a_half_closed_tunnel_ends_after_tunnel_half_closed(engine) {
        const BOUND: Duration = Duration::from_millis(500);
        let (tx, backend_saw) = mpsc::channel();
        let (done, test_done) = mpsc::channel::<()>();
        let backend = upgrade_backend(move |mut s| {
            let mut got = Vec::new();
            let read = s.read_to_end(&mut got).map(|_| got);
            let late = Instant::now();
            s.write_all(b"late").unwrap();
            let _ = tx.send((read, late));
            // Silent and open, until the test has seen the client side end.
            let _ = test_done.recv_timeout(WAIT);
        });
        let proxy = Config::single(backend)
            .timeout("tunnel_idle", "1h")
            .timeout("tunnel_half_closed", "500ms")
            .start(engine);
        let mut s = upgraded(proxy.addr());
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"hello").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (read, late) = backend_saw.recv_timeout(WAIT).unwrap();
        assert_eq!(read.unwrap(), b"hello", "the client's bytes, then its EOF");
        let mut rest = Vec::new();
        let end = s.read_to_end(&mut rest);
        let waited = late.elapsed();
        let _ = done.send(());
        assert!(end.is_ok(), "the tunnel outlived tunnel_half_closed: {end:?} after {waited:?}");
        assert_eq!(rest, b"late");
        // The proxy's bound runs from when it relayed "late", after `late` was taken.
        assert!(waited >= BOUND - Duration::from_millis(20), "closed before tunnel_half_closed: {waited:?}");
    }

    // A tunnel's bytes are counted as they move, the bytes sent with the upgrade request
    // and with the 101 included: a long-lived WebSocket shows in the byte counters while it
    // is open (they were counted at its end, and its first bytes never).
    fn tunnel_bytes_are_counted_while_it_is_open(engine) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = l.local_addr().unwrap();
        thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(WAIT)).unwrap();
            let Ok(head) = read_head_bytes(&mut s) else { return };
            assert!(head.starts_with(b"GET /ws "));
            let h = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: bulk\r\nConnection: Upgrade\r\n\r\nhello";
            if s.write_all(h).is_err() {
                return;
            }
            let mut buf = vec![0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        let proxy = Config::single(backend).admin("").start(engine);
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: bulk\r\n\r\nearly").unwrap();
        let head = read_head_bytes(&mut s).unwrap_or_else(|h| panic!("head cut short: {h:?}"));
        assert!(head.starts_with(b"HTTP/1.1 101 "));
        // "hello" from the 101's write, then the echo of "early".
        let mut got = [0u8; 10];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"helloearly");
        s.write_all(&[b'x'; 1000]).unwrap();
        let mut echo = vec![0u8; 1000];
        s.read_exact(&mut echo).unwrap();
        let up = [("upstream", "main"), ("backend", &*backend.to_string())];
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "the open tunnel's bytes counted", |m| {
            m.value("edgeshard_client_bytes_received_total", &[]) == 1005.0
                && m.value("edgeshard_client_bytes_sent_total", &[]) == 1010.0
                && m.value("edgeshard_upstream_bytes_sent_total", &up) == 1005.0
                && m.value("edgeshard_upstream_bytes_received_total", &up) == 1010.0
        });
        // Still open: it echoes.
        s.write_all(b"!").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"!");
    }
}
