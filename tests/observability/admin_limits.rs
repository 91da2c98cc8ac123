//! The admin listener against slow clients: a house full of connections that trickle their
//! heads must not lock out `/healthz` (a liveness probe that fails gets the proxy
//! restarted), the oldest unfinished head is closed to admit a new connection at
//! `admin.max_connections`, and the whole head must arrive within `admin.header_timeout`.

use super::*;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;

/// A head that never ends: a field whose value grows by one byte per `trickle`.
const PARTIAL: &[u8] = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

/// `n` connections to `admin`, each sending [`PARTIAL`] and then one more byte every
/// `every`, reconnecting when the admin closes one (as an attacker would), until the
/// returned sender sends or drops. Returns the sender and the thread.
fn trickle(
    admin: SocketAddr,
    n: usize,
    every: Duration,
) -> (mpsc::Sender<()>, thread::JoinHandle<usize>) {
    let open = move |_: usize| {
        let mut s = TcpStream::connect(admin).expect("connect to the admin listener");
        s.write_all(PARTIAL).expect("send a partial head");
        s
    };
    let mut conns: Vec<TcpStream> = (0..n).map(open).collect();
    let (stop, stopped) = mpsc::channel::<()>();
    let t = thread::spawn(move || {
        let mut reconnects = 0;
        // Bounded: 1000 rounds at most, whatever the test does.
        for _ in 0..1000 {
            // The attack's pace: a byte every `every`, until told to stop (at once).
            match stopped.recv_timeout(every) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => break,
            }
            for c in &mut conns {
                if c.write_all(b"a").is_err() {
                    *c = open(0);
                    reconnects += 1;
                }
            }
        }
        reconnects
    });
    (stop, t)
}

/// `GET /healthz` on a fresh connection, answered (200) within `within`, or why not.
fn probe(admin: SocketAddr, within: Duration) -> Result<(), String> {
    let mut c = Client::try_connect(admin).map_err(|e| format!("connect: {e}"))?;
    c.timeout = within;
    c.try_send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    match c.read_until_closed(within) {
        Ok(raw) if raw.starts_with(b"HTTP/1.1 200 ") => Ok(()),
        Ok(raw) => Err(format!("answered {:?}", String::from_utf8_lossy(&raw))),
        Err(e) => Err(format!("{e}")),
    }
}

both_engines! {
    fn admin_probes_get_in_past_a_full_house_of_slow_heads(engine) {
        // BUG (if this fails): with 64 admin connections (the default bound) each sending a
        // byte of head every 200 ms, the admin stopped accepting until one ended (each read
        // reset the 5 s IO timeout; only the 10 s whole-connection cap ended them), so
        // `/healthz` waited in the backlog: measured, 15 of 17 probes with a 1.5 s timeout
        // failed over 30 s. Now a new connection closes the oldest unfinished head at once.
        let o = Origin::start("o");
        let proxy = Config::single(o.addr()).admin("").start(engine);
        let admin = proxy.admin_addr();
        let (stop, attack) = trickle(admin, 64, Duration::from_millis(200));
        // Each probe is answered in milliseconds; 5 s is far above that, and half the 10 s
        // that a probe behind the 64 waited.
        let mut failed = Vec::new();
        for i in 0..5 {
            if let Err(e) = probe(admin, Duration::from_secs(5)) {
                failed.push(format!("probe {i}: {e}"));
            }
        }
        let _ = stop.send(());
        attack.join().unwrap();
        assert!(failed.is_empty(), "/healthz behind 64 slow admin connections: {failed:?}");
        // The proxy itself was never touched.
        let mut c = Client::connect(proxy.addr());
        assert_eq!(get_on(&mut c, "x.example", "/").status(), 200);
    }

    fn admin_at_max_connections_closes_the_oldest_unfinished_head(engine) {
        let o = Origin::start("o");
        // A long header deadline: only the bound can make room here.
        let proxy = Config::single(o.addr())
            .admin("max_connections = 4\nheader_timeout = \"60s\"")
            .start(engine);
        let admin = proxy.admin_addr();
        // Four connections that sent part of a head, accepted in this order (the listen
        // queue is FIFO).
        let mut stalled: Vec<Client> = (0..4)
            .map(|_| {
                let mut c = Client::connect(admin);
                c.send(PARTIAL);
                c
            })
            .collect();
        probe(admin, Duration::from_secs(10)).expect("/healthz at the admin's connection bound");
        // The oldest made room, and was closed without an answer.
        stalled[0].expect_closed_within(Duration::from_secs(10));
        // The others keep their places: the scrape below takes the one the probe left.
        let m = scrape(admin, None);
        assert_eq!(m.value("edgeshard_admin_connections_closed_total", &[("reason", "evicted")]), 1.0);
        assert_eq!(m.value("edgeshard_admin_connections_closed_total", &[("reason", "header_timeout")]), 0.0);
        // A head that completes is still served on a connection that waited.
        stalled[1].send(b"\r\n\r\n");
        let raw = stalled[1].read_until_closed(Duration::from_secs(10)).unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 200 "), "{:?}", String::from_utf8_lossy(&raw));
    }

    fn a_probe_whose_head_waits_is_not_evicted_by_a_connect_flood(engine) {
        // BUG (if this fails): under a flood of silent connections the accept loop admits,
        // and past the bound evicts, faster than a probe's task reads the head that is
        // already in its socket: the probe was the oldest "unfinished" head and was closed
        // unanswered (session 12 review F6: 5 of 18 probes reset at ~20k connections/s).
        // Made certain here: the proxy is stopped while the probe and the flood queue up.
        let o = Origin::start("o");
        let mut proxy = Config::single(o.addr())
            .admin("max_connections = 2\nheader_timeout = \"60s\"")
            .start(engine);
        let admin = proxy.admin_addr();
        proxy.signal(libc::SIGSTOP);
        let mut p = Client::connect(admin);
        p.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let mut silent: Vec<Client> = (0..6).map(|_| Client::connect(admin)).collect();
        proxy.signal(libc::SIGCONT);
        let raw = p.read_until_closed(Duration::from_secs(10));
        assert!(
            matches!(&raw, Ok(b) if b.starts_with(b"HTTP/1.1 200 ")),
            "a probe queued behind nothing but silent connections: {raw:?}"
        );
        // Room was made by closing silent connections (all but the last two admitted).
        for s in &mut silent[..4] {
            s.expect_closed_within(Duration::from_secs(10));
        }
        let m = scrape(admin, None);
        assert!(m.value("edgeshard_admin_connections_closed_total", &[("reason", "evicted")]) >= 4.0);
    }

    fn admin_header_deadline_covers_the_whole_head(engine) {
        // BUG (if this fails): the 5 s timeout applied to each read, so a client sending a
        // byte every 100 ms kept its connection until the 10 s whole-connection cap. Now the
        // whole head must arrive within `admin.header_timeout` (default 2 s) of the accept.
        let o = Origin::start("o");
        let proxy = Config::single(o.addr()).admin("").start(engine);
        let admin = proxy.admin_addr();
        let mut c = Client::connect(admin);
        c.send(PARTIAL);
        let t0 = Instant::now();
        let closed = loop {
            // Bounded: closed (or proven stuck) within 30 s.
            if t0.elapsed() > Duration::from_secs(30) {
                break None;
            }
            if c.try_send(b"a").is_err() || !c.still_open_after(Duration::from_millis(100)) {
                break Some(t0.elapsed());
            }
        };
        let closed = closed.expect("a trickling admin head was never closed");
        // 2 s by default; 7 s is generous above it and short of the old 10 s cap.
        assert!(closed < Duration::from_secs(7), "a trickling head kept for {closed:?}");
        let m = scrape(admin, None);
        assert_eq!(m.value("edgeshard_admin_connections_closed_total", &[("reason", "header_timeout")]), 1.0);
        assert_eq!(admin_get(admin, "/healthz", None).status, 200);
    }
}
