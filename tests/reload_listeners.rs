//! Listeners on hot reload (issue 15): with two shards, a reload that adds a listener opens
//! it on every shard and one that removes a listener closes it (new connections refused,
//! connections it accepted served to their end), while a listener that remains keeps its
//! sockets and open connections; an address that another socket holds refuses the whole
//! reload with its key path and changes nothing; a binary upgrade after such reloads hands
//! the successor the listeners in force; a listener keeps its own settings wherever a
//! reload moves it in the file; moving a listener to an address that overlaps it (the same
//! port, a wildcard on one side) is refused with both key paths and changes nothing; an
//! added TLS listener completes handshakes on every shard, with its HSTS header; a refused
//! reload leaves the certificates in force alone; while the process drains, a reload
//! that adds or removes a listener is refused, naming each; and a reload's new settings of a
//! listener (a deny) reach the next request of its open connections. Both engines.

use crate::support::tls::{tls_get, tls_listener, CertDir, TestCa};
use crate::support::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// New connections per check: the kernel spreads them over the shards' sockets by their
/// ports, so 16 reach both shards (all on one: 1 in 32,768) and a shard that does not
/// accept on a listener fails the check.
const CONNECTIONS: usize = 16;

/// The file: `[admin]` on a free port, then one `[[listener]]` per body, and a catch-all
/// route to `origin`.
fn file(origin: SocketAddr, listeners: &[String]) -> String {
    let mut s = String::from("[admin]\naddress = \"127.0.0.1:0\"\n");
    for l in listeners {
        s.push_str(&format!("\n[[listener]]\n{l}\n"));
    }
    s.push_str(&format!(
        "\n[[route]]\nupstream = \"u\"\n\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"{origin}\" }}]\n"
    ));
    s
}

fn plain(a: SocketAddr) -> String {
    format!("address = \"{a}\"")
}

/// A TLS listener on `a` serving `cert`/`key`, with `extra` keys in its `tls` table.
fn tls(a: SocketAddr, cert: &std::path::Path, key: &std::path::Path, extra: &str) -> String {
    tls_listener(&[(cert, key)], extra).replace("127.0.0.1:0", &a.to_string())
}

/// The `edgeshard_tls_certificate_reloads_total{result="ok"}` of `listener[i].tls`.
fn certificate_reloads(admin: SocketAddr, i: usize) -> f64 {
    let key = format!("listener[{i}].tls");
    scrape(admin, None).value(
        "edgeshard_tls_certificate_reloads_total",
        &[("listener", key.as_str()), ("result", "ok")],
    )
}

fn redirecting(a: SocketAddr, port: u16) -> String {
    format!("address = \"{a}\"\nredirect_https = {{ port = {port} }}")
}

/// `edgeshard reload --admin ADDR`: (exit code, stdout and stderr).
fn reload_cli(admin: SocketAddr) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["reload", "--admin", &admin.to_string()]);
    let (status, out) = run_bounded(cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    (status.code(), out)
}

fn reload_ok(proxy: &Proxy, text: &str) {
    std::fs::write(proxy.config_path(), text).unwrap();
    let (code, out) = reload_cli(proxy.admin_addr());
    assert_eq!(
        code,
        Some(0),
        "edgeshard reload must succeed: {out}\nproxy output:\n{}",
        proxy.output()
    );
}

/// One request on `c`: its status and `Location`.
fn ask(c: &mut Client, path: &str, close: bool) -> (u16, Option<String>) {
    let conn = if close { "close" } else { "keep-alive" };
    c.send(&request(
        "GET",
        path,
        &[("Host", "a.test"), ("Connection", conn)],
        b"",
    ));
    let r = c.read_response();
    if r.status() == 200 {
        assert_eq!(r.body_str(), "o", "answered by the origin");
    }
    (r.status(), r.header("location").map(str::to_owned))
}

/// `CONNECTIONS` new connections to `addr`, one request each: every one is answered with
/// `status` (and, for a redirect, `location`).
fn serves(addr: SocketAddr, status: u16, location: Option<&str>) {
    for i in 0..CONNECTIONS {
        let mut c =
            Client::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr} ({i}): {e}"));
        let (got, loc) = ask(&mut c, "/p", true);
        assert_eq!(got, status, "{addr}, connection {i}");
        assert_eq!(loc.as_deref(), location, "{addr}, connection {i}");
    }
}

/// Waits until a connect to `addr` is refused (a deadline, not a sleep: each try is a
/// connect); panics naming `what` if it is still accepted after 10 s.
fn refused(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            other => assert!(
                Instant::now() < deadline,
                "{what}: {addr} still takes connections ({other:?})"
            ),
        }
    }
}

both_engines! {
    fn a_reload_opens_an_added_listener_and_closes_a_removed_one(engine) {
        let o = Origin::start("o");
        let [a] = dead_addrs();
        let proxy = Proxy::start_shards(&file(o.addr(), &[plain(a)]), engine, 2);
        // Drawn once the proxy listens, so never one of its own ports (its admin's, drawn by
        // the kernel too).
        let [b] = dead_addrs();
        assert_eq!(proxy.addr(), a);
        // A keep-alive connection on A, open through both reloads.
        let mut kept = Client::connect(a);
        assert_eq!(ask(&mut kept, "/before", false).0, 200);

        // B added: every shard accepts on it; A keeps serving, its open connection too.
        reload_ok(&proxy, &file(o.addr(), &[plain(a), plain(b)]));
        serves(b, 200, None);
        serves(a, 200, None);
        assert_eq!(ask(&mut kept, "/after-add", false).0, 200);
        let accepted = o.accepted();

        // A removed: new connections to it are refused; the one it accepted is served.
        reload_ok(&proxy, &file(o.addr(), &[plain(b)]));
        refused(a, "a removed listener");
        assert_eq!(ask(&mut kept, "/after-remove", false).0, 200);
        serves(b, 200, None);
        proxy.wait_for_output("reload: stopped listening on", 1, Duration::from_secs(5));
        // No shard accepted on a listener its configuration did not have.
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_connections_rejected_total", &[("reason", "listener_not_in_force")]), 0.0);
        // The origin's pooled connections survived both reloads.
        assert!(o.accepted() <= accepted + 2, "{} new origin connections", o.accepted() - accepted);
    }

    fn a_listener_that_cannot_be_bound_refuses_the_whole_reload(engine) {
        let o = Origin::start("o");
        // Another socket (the test's own) listens here; bound first, so that A and B cannot be
        // its port.
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap();
        let [a] = dead_addrs();
        let proxy = Proxy::start_shards(&file(o.addr(), &[plain(a)]), engine, 2);
        // Drawn once the proxy listens, so never one of its own ports (its admin's, drawn by
        // the kernel too).
        let [b] = dead_addrs();
        let admin = proxy.admin_addr();

        // B can be bound, the held address cannot: refused as a whole, with the key path.
        std::fs::write(proxy.config_path(), file(o.addr(), &[plain(a), plain(b), plain(taken)])).unwrap();
        let (code, out) = reload_cli(admin);
        assert_eq!(code, Some(1), "the reload must be refused: {out}");
        assert!(out.contains("listener[2].address") && out.contains("already in use"), "the error names the key path and why: {out}");
        let key = format!("{}: listener[2].address", proxy.config_path().display());
        assert!(out.contains(&key), "and the file, as the configuration's own errors do: {out}");
        // The log line may reach the captured output a moment after the CLI's answer.
        proxy.wait_for_output("listener[2].address", 1, Duration::from_secs(5));
        // Nothing changed: A serves, B (bound on the way) was closed again.
        serves(a, 200, None);
        refused(b, "a listener of a refused reload");
        let m = scrape(admin, None);
        assert_eq!(m.value("edgeshard_config_reloads_total", &[("result", "failed")]), 1.0);
        assert_eq!(m.value("edgeshard_config_generation", &[]), 0.0);

        // Without the held address the same change goes through.
        reload_ok(&proxy, &file(o.addr(), &[plain(a), plain(b)]));
        serves(b, 200, None);
        serves(a, 200, None);
        drop(held);
    }

    fn an_upgrade_after_reloads_hands_over_the_listeners_in_force(engine) {
        let o = Origin::start("o");
        let [a, c] = dead_addrs();
        let mut proxy = Proxy::start_shards(&file(o.addr(), &[plain(a), plain(c)]), engine, 2);
        // Drawn once the proxy listens, so never one of its own ports (its admin's, drawn by
        // the kernel too).
        let [b] = dead_addrs();
        // B added, C removed; then a binary upgrade.
        reload_ok(&proxy, &file(o.addr(), &[plain(a), plain(b)]));
        serves(b, 200, None);
        refused(c, "a removed listener");
        proxy.signal(libc::SIGUSR2);
        proxy.wait_for_output_where("the upgrade's outcome", Duration::from_secs(60), |o| {
            o.contains("binary upgrade failed") || o.contains("the new process serves the listeners")
        });
        assert!(!proxy.output().contains("binary upgrade failed"), "{}", proxy.output());
        let next = successor_pid(&proxy, 1);
        assert_eq!(proxy.wait_exit(Duration::from_secs(30)).code(), Some(0), "the old process exits 0 after its drain");
        // The successor serves on both, every shard of it (B's sockets were handed over: had
        // they not been, it would have found B taken by its predecessor and not started).
        serves(a, 200, None);
        serves(b, 200, None);
        refused(c, "a listener removed before the upgrade");
        assert!(
            !proxy.output().contains("not in this configuration"),
            "the removed listener was not handed over:\n{}",
            proxy.output()
        );
        terminate_pid(next);
    }

    fn a_moved_listener_keeps_its_own_settings(engine) {
        let o = Origin::start("o");
        let [a, b] = dead_addrs();
        let proxy = Proxy::start_shards(&file(o.addr(), &[plain(a), redirecting(b, 8443)]), engine, 2);
        let to_8443 = "https://a.test:8443/p";
        serves(b, 301, Some(to_8443));
        let mut on_a = Client::connect(a);
        let mut on_b = Client::connect(b);
        assert_eq!(ask(&mut on_a, "/p", false), (200, None));
        assert_eq!(ask(&mut on_b, "/p", false), (301, Some(to_8443.into())));

        // The same listeners in the other order: each keeps its settings.
        reload_ok(&proxy, &file(o.addr(), &[redirecting(b, 8443), plain(a)]));
        serves(a, 200, None);
        serves(b, 301, Some(to_8443));
        assert_eq!(ask(&mut on_a, "/p", false), (200, None));
        assert_eq!(ask(&mut on_b, "/p", false), (301, Some(to_8443.into())));

        // The settings swapped: new connections get the new ones, and so does the next
        // request of an open one.
        reload_ok(&proxy, &file(o.addr(), &[plain(b), redirecting(a, 9443)]));
        serves(a, 301, Some("https://a.test:9443/p"));
        serves(b, 200, None);
        assert_eq!(ask(&mut on_a, "/p", false), (301, Some("https://a.test:9443/p".into())));
        assert_eq!(ask(&mut on_b, "/p", false), (200, None));
    }

    // A reload that denies a client reaches its open connections, as nginx's old workers
    // close theirs: the next request on each gets 403 and a close, whether it was parked
    // idle (plain) or waiting in its task (TLS), and a client the list still admits is
    // served on. Found by the probe7 review: a denied client kept its connection for good.
    fn a_reload_that_denies_a_client_reaches_its_open_connections(engine) {
        let o = Origin::start("o");
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("reload-deny");
        let leaf = ca.leaf(&["a.test"]);
        let cert = dir.write("a.pem", &leaf.cert_pem);
        let key = dir.write("a.key", &leaf.key_pem);
        let [a, b, c] = dead_addrs();
        let listeners = |deny: &str| {
            vec![
                format!("{}\n{deny}", plain(a)),
                format!("{}\n{deny}", tls(b, &cert, &key, "")),
                plain(c),
            ]
        };
        let proxy = Proxy::start(&file(o.addr(), &listeners("")), engine);
        let mut on_a = Client::connect(a);
        let mut on_c = Client::connect(c);
        assert_eq!(ask(&mut on_a, "/p", false), (200, None));
        assert_eq!(ask(&mut on_c, "/p", false), (200, None));
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(ca.client_config()), "a.test".try_into().unwrap()).unwrap();
        let sock = TcpStream::connect(b).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut on_b = rustls::StreamOwned::new(conn, sock);
        let mut ask_tls = |what: &str| {
            use std::io::{Read, Write};
            on_b.write_all(b"GET /p HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = on_b.read(&mut buf).unwrap_or(0);
                assert!(n > 0, "{what}: closed before a response: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&got).into_owned()
        };
        assert!(ask_tls("before").starts_with("HTTP/1.1 200"));
        // The plain connections idle in the parking lot, the TLS one in its task.
        scrape_until(proxy.admin_addr(), None, Duration::from_secs(10), "all three idle", |m| {
            m.value("edgeshard_connections_idle", &[]) == 3.0
        });

        reload_ok(&proxy, &file(o.addr(), &listeners("deny = [\"127.0.0.1\"]")));
        on_a.send(&get("a.test", "/p"));
        assert_eq!(on_a.read_response().status(), 403, "a parked connection of a denied client");
        on_a.expect_closed();
        let answer = ask_tls("after");
        assert!(answer.starts_with("HTTP/1.1 403"), "an open TLS connection of a denied client: {answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{answer}");
        assert_eq!(ask(&mut on_c, "/p", false), (200, None), "the listener without the deny");
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_access_denied_total", &[("scope", "listener")]), 2.0);
    }

    fn a_listener_moved_to_an_overlapping_address_is_refused_and_nothing_changes(engine) {
        let o = Origin::start("o");
        // A free port, on the wildcard address. Free on 127.0.0.1 when picked, it can be
        // taken by another test's listener before the proxy binds it: then another port.
        let wildcard_on = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
        let (proxy, port) = (0..5)
            .find_map(|_| {
                let port = dead_addr().port();
                let config = file(o.addr(), &[plain(wildcard_on(port))]);
                Proxy::try_start_shards(&config, engine, 2).ok().map(|p| (p, port))
            })
            .expect("a free wildcard port within 5 tries");
        let wildcard = wildcard_on(port);
        let loopback = SocketAddr::from(([127, 0, 0, 1], port));
        // 127.0.0.2 reaches the wildcard listener, never one on 127.0.0.1 only.
        let other = SocketAddr::from(([127, 0, 0, 2], port));
        let admin = proxy.admin_addr();

        std::fs::write(proxy.config_path(), file(o.addr(), &[plain(loopback)])).unwrap();
        let (code, out) = reload_cli(admin);
        assert_eq!(code, Some(1), "the reload must be refused: {out}");
        let why = format!("listener[0].address: {loopback} overlaps listener[0].address ({wildcard}) in force");
        assert!(out.contains(&why), "the error names both key paths: {out}");
        assert!(out.contains("remove the old one in one reload and add the new one in the next"), "and what to do: {out}");
        assert!(!out.contains(&format!("process {}", proxy.pid())), "not blamed on the proxy itself: {out}");
        // Nothing changed: the wildcard listener serves, on every address.
        serves(loopback, 200, None);
        serves(other, 200, None);
        let m = scrape(admin, None);
        assert_eq!(m.value("edgeshard_config_reloads_total", &[("result", "failed")]), 1.0);
        assert_eq!(m.value("edgeshard_config_generation", &[]), 0.0);

        // In two steps it goes through: the old one removed, then the new one added.
        let spare = dead_addr();
        reload_ok(&proxy, &file(o.addr(), &[plain(spare)]));
        refused(loopback, "the removed wildcard listener");
        reload_ok(&proxy, &file(o.addr(), &[plain(spare), plain(loopback)]));
        serves(loopback, 200, None);
        refused(other, "a listener on 127.0.0.1 only");
    }

    fn a_reload_adds_a_tls_listener_served_by_every_shard(engine) {
        let o = Origin::start("o");
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("reload-add");
        let leaf = ca.leaf(&["a.test"]);
        let cert = dir.write("a.pem", &leaf.cert_pem);
        let key = dir.write("a.key", &leaf.key_pem);
        let [a] = dead_addrs();
        let proxy = Proxy::start_shards(&file(o.addr(), &[plain(a)]), engine, 2);
        // Drawn once the proxy listens, so never one of its own ports (its admin's, drawn by
        // the kernel too).
        let [b] = dead_addrs();

        reload_ok(&proxy, &file(o.addr(), &[plain(a), tls(b, &cert, &key, "hsts = \"max-age=600\"")]));
        let client = std::sync::Arc::new(ca.client_config());
        for i in 0..CONNECTIONS {
            let seen = tls_get(b, &client, "a.test", "/p")
                .unwrap_or_else(|e| panic!("TLS connection {i} to the added listener: {e}"));
            assert_eq!(seen.leaf, leaf.der, "connection {i}: the configured certificate");
            let head = seen.response.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "connection {i}: {}", seen.response);
            assert!(head.contains("\r\nstrict-transport-security: max-age=600\r\n"), "connection {i}: HSTS: {}", seen.response);
            assert!(seen.response.ends_with("\r\n\r\no"), "answered by the origin: {}", seen.response);
        }
        serves(a, 200, None);
    }

    fn a_refused_reload_leaves_the_certificates_in_force_alone(engine) {
        let o = Origin::start("o");
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("reload-refused");
        let leaf = ca.leaf(&["a.test"]);
        let cert = dir.write("a.pem", &leaf.cert_pem);
        let key = dir.write("a.key", &leaf.key_pem);
        // Bound before `t` is picked, so that `t` cannot be the port just freed.
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap();
        let t = dead_addr();
        let kept = tls(t, &cert, &key, "");
        let proxy = Proxy::start_shards(&file(o.addr(), std::slice::from_ref(&kept)), engine, 2);
        let admin = proxy.admin_addr();

        // The TLS listener is kept (same address, position and settings): a reload would
        // re-read its certificates in place, but this one is refused at the bind.
        std::fs::write(proxy.config_path(), file(o.addr(), &[kept.clone(), plain(taken)])).unwrap();
        let (code, out) = reload_cli(admin);
        assert_eq!(code, Some(1), "the reload must be refused: {out}");
        assert_eq!(certificate_reloads(admin, 0), 0.0, "a refused reload re-read the certificates in force");

        // A reload that goes through does re-read them.
        reload_ok(&proxy, &file(o.addr(), &[kept]));
        assert_eq!(certificate_reloads(admin, 0), 1.0);
        drop(held);
    }

    fn a_reload_while_the_process_drains_may_not_change_listeners(engine) {
        let backend = LockStep::bind();
        let [a] = dead_addrs();
        let mut proxy = Proxy::start_shards(&file(backend.addr(), &[plain(a)]), engine, 2);
        // Drawn once the proxy listens, so never one of its own ports (its admin's, drawn by
        // the kernel too).
        let [b] = dead_addrs();
        let admin = proxy.admin_addr();
        // A request in flight keeps the process draining (and its admin API up).
        let mut c = Client::connect(a);
        c.send(&request("GET", "/slow", &[("Host", "a.test")], b""));
        let mut up = backend.accept();
        up.read_head();
        proxy.signal(libc::SIGTERM);
        // Each shard says so once it has been told to stop, which is after the reloader knew.
        proxy.wait_for_output("listeners closed; draining", 2, Duration::from_secs(10));

        std::fs::write(proxy.config_path(), file(backend.addr(), &[plain(a), plain(b)])).unwrap();
        let (code, out) = reload_cli(admin);
        assert_eq!(code, Some(1), "the reload must be refused: {out}");
        assert!(out.contains(&format!("listener[1].address: {b} would be added, but this process is stopping")), "{out}");
        std::fs::write(proxy.config_path(), file(backend.addr(), &[plain(b)])).unwrap();
        let (code, out) = reload_cli(admin);
        assert_eq!(code, Some(1), "the reload must be refused: {out}");
        assert!(out.contains(&format!("listener[0].address: {a} (in force) would be removed, but this process is stopping")), "{out}");
        assert!(out.contains(&format!("listener[0].address: {b} would be added")), "{out}");

        up.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\no");
        assert_eq!(c.read_response().status(), 200, "the request in flight is answered");
        assert_eq!(proxy.wait_exit(Duration::from_secs(30)).code(), Some(0));
    }
}
