//! DNS service discovery (issue 15): a backend written as `HOST:PORT` follows its name. A real
//! DNS server (dnsmasq, answering from a hosts file with a 1 s TTL) first points the name at
//! origin A (127.0.0.3), then at origin B (127.0.0.4, same port); the proxy follows within
//! the TTL plus one re-resolve. Then dnsmasq stops: the proxy keeps the last good answer
//! (requests still reach B) and counts the failed resolutions. A name that gains an address
//! keeps the pooled connection of the one that stays (applied like a reload); a name that does
//! not resolve stops start-up, and refuses a reload without changing anything. An SRV name
//! (`{ srv = "_http._tcp.NAME" }`) gives the port and follows its target's address. A
//! reload refused after it resolved a new name leaves the DNS thread idle. Answers that change
//! within `min_ttl` of an update go in force together, in the next.
//!
//! dnsmasq needs a fixed port: the test binds 127.0.0.2:0 over UDP, reads the port the kernel
//! chose, closes the socket and passes that port. Another process could take the port in
//! between (a tiny race); dnsmasq then fails to start and the test says so.

use crate::support::*;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "app.edgeshard.test";
const DNS_IP: &str = "127.0.0.2";

struct Dnsmasq {
    child: Child,
    port: u16,
    hosts: std::path::PathBuf,
}

impl Dnsmasq {
    fn start(hosts_line: &str) -> Dnsmasq {
        Self::start_with(hosts_line, &[])
    }

    fn start_with(hosts_line: &str, extra: &[String]) -> Dnsmasq {
        let port = UdpSocket::bind((DNS_IP, 0))
            .expect("bind 127.0.0.2:0")
            .local_addr()
            .unwrap()
            .port();
        let hosts =
            std::env::temp_dir().join(format!("edgeshard-dns-{}-{port}.hosts", std::process::id()));
        std::fs::write(&hosts, hosts_line).unwrap();
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--user=root",
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                "--bind-interfaces",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--listen-address={DNS_IP}"))
            .arg(format!("--port={port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq-base; tests/run.sh installs it)");
        let d = Dnsmasq { child, port, hosts };
        // Each query waits (up to 200 ms) for dnsmasq's answer on its socket: that is the
        // pace, and the answer is the readiness signal.
        let deadline = Instant::now() + Duration::from_secs(10);
        while query_a(d.addr()).is_none() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq does not answer on {} (port taken in between?)",
                d.addr()
            );
        }
        d
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(DNS_IP.parse().unwrap(), self.port)
    }

    /// Points the name elsewhere: rewrite the hosts file, SIGHUP (dnsmasq re-reads it).
    fn point_to(&self, ip: &str) {
        self.point_to_all(&[ip]);
    }

    fn point_to_all(&self, ips: &[&str]) {
        let lines: String = ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
        std::fs::write(&self.hosts, lines).unwrap();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.hosts);
    }
}

/// One A query for [`NAME`]: the first address of the answer, if any came.
fn query_a(server: SocketAddr) -> Option<[u8; 4]> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in NAME.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    s.send_to(&q, server).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    let answers = u16::from_be_bytes([buf[6], buf[7]]);
    if n < q.len() || answers == 0 {
        return None;
    }
    // The answer: a name pointer (2), type, class (4), TTL (4), length (2), then the address.
    let at = q.len() + 12;
    buf.get(at..at + 4).map(|a| [a[0], a[1], a[2], a[3]])
}

/// Two origins on the same port, one on 127.0.0.3 and one on 127.0.0.4.
fn origins() -> (Origin, Origin) {
    for _ in 0..50 {
        let a = Origin::start_at("A", "127.0.0.3:0".parse().unwrap()).expect("bind 127.0.0.3");
        let port = a.addr().port();
        if let Ok(b) = Origin::start_at("B", SocketAddr::from(([127, 0, 0, 4], port))) {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.3 and 127.0.0.4");
}

fn config(dns: &Dnsmasq, port: u16) -> String {
    format!(
        r#"[[listener]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[dns]
servers = ["{}"]
min_ttl = "100ms"
max_ttl = "1s"

[[route]]
upstream = "app"

[[upstream]]
name = "app"
balance = "round_robin"
backends = [{{ address = "{NAME}:{port}" }}]
"#,
        dns.addr()
    )
}

fn backend_of(proxy: &Proxy) -> Option<String> {
    let mut c = Client::try_connect(proxy.addr()).ok()?;
    c.send(&get("dns.test", "/"));
    let r = c.try_read_response().ok()?;
    r.header("x-backend").map(str::to_owned)
}

/// Waits for the proxy to announce its first DNS update (`dns: backends updated`, logged
/// once every shard has switched), then until a request is answered by `want` (a few
/// requests: with several backends the balancer reaches each in turn); how long that took.
fn until_backend(proxy: &Proxy, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    proxy.wait_for_output("dns: backends updated", 1, within);
    let mut got = None;
    for _ in 0..8 {
        got = backend_of(proxy);
        if got.as_deref() == Some(want) {
            return started.elapsed();
        }
    }
    panic!(
        "no answer from {want} after the DNS update (last: {got:?})\n{}",
        proxy.output()
    );
}

/// A DNS server of the test's own on 127.0.0.1: answers every A query with 127.0.0.1 (TTL
/// 1 s) and AAAA with no record over UDP until [`FakeDns::silence`], then answers nothing and
/// counts the queries. Its TCP port (the proxy's resolver asks both) accepts and never answers.
struct FakeDns {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
    unanswered: Arc<AtomicUsize>,
    /// A queries answered so far for names whose first label starts with `a`, and from which
    /// one on every A answer carries 127.0.0.5 too.
    a_queries: Arc<AtomicUsize>,
    moved_from: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    _tcp: TcpListener,
}

impl FakeDns {
    fn start() -> FakeDns {
        let (udp, tcp) = (0..50)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let tcp = TcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, tcp))
            })
            .expect("a port free over UDP and TCP");
        let addr = udp.local_addr().unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let silent: Arc<AtomicBool> = Arc::default();
        let unanswered: Arc<AtomicUsize> = Arc::default();
        let a_queries: Arc<AtomicUsize> = Arc::default();
        let moved_from = Arc::new(AtomicUsize::new(usize::MAX));
        let stop: Arc<AtomicBool> = Arc::default();
        let (s, u, st) = (
            Arc::clone(&silent),
            Arc::clone(&unanswered),
            Arc::clone(&stop),
        );
        let (aq, mf) = (Arc::clone(&a_queries), Arc::clone(&moved_from));
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if s.load(Ordering::Relaxed) {
                    u.fetch_add(1, Ordering::Relaxed);
                } else if let Some(answer) = dns_answer(&buf[..n], |label, a| {
                    let from = mf.load(Ordering::Relaxed);
                    match a && label.starts_with(b"a") {
                        true => aq.fetch_add(1, Ordering::Relaxed) >= from,
                        false => a && aq.load(Ordering::Relaxed) > from,
                    }
                }) {
                    let _ = udp.send_to(&answer, from);
                }
            }
        });
        FakeDns {
            addr,
            silent,
            unanswered,
            a_queries,
            moved_from,
            stop,
            _tcp: tcp,
        }
    }

    /// Every name's A answer gains 127.0.0.5 from the next round of the `names` names whose
    /// first label starts with `a` on: the proxy asks each of them once per round, so that
    /// round's first A query is the next multiple of `names` (no round is split between the
    /// two answers).
    fn move_all_at_next_round(&self, names: usize) {
        let asked = self.a_queries.load(Ordering::Relaxed);
        self.moved_from
            .store(asked.div_ceil(names) * names, Ordering::Relaxed);
    }

    fn silence(&self) {
        self.silent.store(true, Ordering::Relaxed);
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The answer to one query: its question, and for type A one record, 127.0.0.1, TTL 1 s (and a
/// second, 127.0.0.5, when `moved(first label, is A)` says so); a name with a `missing` label
/// does not exist (NXDOMAIN).
fn dns_answer(q: &[u8], moved: impl FnOnce(&[u8], bool) -> bool) -> Option<Vec<u8>> {
    let mut at = 12;
    let mut missing = false;
    while *q.get(at)? != 0 {
        let len = usize::from(q[at]);
        missing |= q.get(at + 1..at + 1 + len)? == b"missing";
        at += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(at + 1)?, *q.get(at + 2)?]);
    let question = q.get(12..at + 5)?;
    let a = qtype == 1 && !missing;
    let rcode = if missing { 0x83 } else { 0x80 };
    let first = q.get(13..13 + usize::from(*q.get(12)?))?;
    let two = moved(first, a);
    let records = u8::from(a) + u8::from(two);
    let mut r = vec![q[0], q[1], 0x81, rcode, 0, 1, 0, records, 0, 0, 0, 0];
    r.extend_from_slice(question);
    if a {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 127, 0, 0, 1]);
    }
    if two {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 127, 0, 0, 5]);
    }
    Some(r)
}

/// The CPU time (clock ticks, user and system) the `dns` thread of process `pid` has used.
fn dns_thread_ticks(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the proxy's threads");
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // `TID (COMM) STATE ...`: utime and stime are the 12th and 13th fields after COMM.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if head.ends_with("(dns") {
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            return f.iter().sum();
        }
    }
    panic!("process {pid} has no dns thread");
}

both_engines! {
    fn backends_follow_their_name_and_keep_the_last_answer(engine) {
        let (a, b) = origins();
        let port = a.addr().port();
        let mut dns = Dnsmasq::start(&format!("127.0.0.3 {NAME}\n"));
        let config = config(&dns, port);
        let proxy = Proxy::start(&config, engine);
        assert_eq!(backend_of(&proxy).as_deref(), Some("A"), "{}", proxy.output());

        // The name moves to B: followed within the TTL (1 s) plus one re-resolve (the
        // answer is asked again when its TTL ends). `until_backend`'s 10 s deadline is the
        // bound: seconds from that, and far below the default `max_ttl` (5 min) that a proxy
        // ignoring the TTL would wait. That it re-resolved is counted just below.
        dns.point_to("127.0.0.4");
        let took = until_backend(&proxy, "B", Duration::from_secs(10));
        eprintln!("dns: the proxy followed the name in {took:?}");
        let m = scrape(proxy.admin_addr(), None);
        assert!(m.value("edgeshard_dns_resolutions_total", &[("result", "ok")]) >= 2.0);
        let failed = m.value("edgeshard_dns_resolutions_total", &[("result", "failed")]);
        assert_eq!(failed, 0.0);

        // The server goes away: the last good answer stays, the failures are counted.
        dns.stop();
        proxy.wait_for_output("dns: resolution failed", 2, Duration::from_secs(20));
        let m = scrape(proxy.admin_addr(), None);
        assert!(m.value("edgeshard_dns_resolutions_total", &[("result", "failed")]) >= 2.0);
        for _ in 0..20 {
            assert_eq!(backend_of(&proxy).as_deref(), Some("B"), "{}", proxy.output());
        }
        assert!(proxy.output().contains(NAME), "the failure is logged with the name");
        assert!(a.request_count() >= 1);
        assert!(b.request_count() >= 21);
    }

    fn a_new_address_keeps_the_pool_of_the_one_that_stays(engine) {
        let (a, b) = origins();
        let dns = Dnsmasq::start(&format!("127.0.0.3 {NAME}\n"));
        let proxy = Proxy::start(&config(&dns, a.addr().port()), engine);
        for _ in 0..3 {
            assert_eq!(backend_of(&proxy).as_deref(), Some("A"), "{}", proxy.output());
        }
        assert_eq!(a.accepted(), 1, "one pooled connection to A");
        // The name gains B: applied like a reload, A's pooled connection is carried over.
        dns.point_to_all(&["127.0.0.3", "127.0.0.4"]);
        until_backend(&proxy, "B", Duration::from_secs(10));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            seen.insert(backend_of(&proxy).unwrap_or_default());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(a.accepted(), 1, "A's pooled connection survived the DNS change");
        assert!(b.accepted() >= 1);
    }

    fn a_reload_with_a_name_that_does_not_resolve_changes_nothing(engine) {
        let (a, _b) = origins();
        let dns = Dnsmasq::start(&format!("127.0.0.3 {NAME}\n"));
        let good = config(&dns, a.addr().port());
        let proxy = Proxy::start(&good, engine);
        assert_eq!(backend_of(&proxy).as_deref(), Some("A"));
        let bad = good.replace(&format!("{NAME}:"), "missing.edgeshard.test:");
        std::fs::write(proxy.config_path(), bad).unwrap();
        let r = admin_request(proxy.admin_addr(), "POST", "/reload", None);
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(r.body.contains("missing.edgeshard.test"), "{}", r.body);
        assert_eq!(backend_of(&proxy).as_deref(), Some("A"));
        // The same file with the name back reloads fine and keeps following it.
        std::fs::write(proxy.config_path(), &good).unwrap();
        let r = admin_request(proxy.admin_addr(), "POST", "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        dns.point_to("127.0.0.4");
        until_backend(&proxy, "B", Duration::from_secs(10));
    }

    fn an_srv_name_gives_the_port_and_follows_its_target(engine) {
        let (a, _b) = origins();
        let port = a.addr().port();
        let srv = format!("_http._tcp.{NAME}");
        let dns = Dnsmasq::start_with(
            &format!("127.0.0.3 {NAME}\n"),
            &[format!("--srv-host={srv},{NAME},{port}")],
        );
        // The port comes from the SRV record only.
        let config = config(&dns, port).replace(
            &format!("{{ address = \"{NAME}:{port}\" }}"),
            &format!("{{ srv = \"{srv}\" }}"),
        );
        assert!(config.contains("srv ="), "{config}");
        let proxy = Proxy::start(&config, engine);
        assert_eq!(backend_of(&proxy).as_deref(), Some("A"), "{}", proxy.output());
        // The SRV record's target moves to B: followed like a host name.
        dns.point_to("127.0.0.4");
        until_backend(&proxy, "B", Duration::from_secs(10));
    }

    fn a_name_that_does_not_resolve_stops_start_up(engine) {
        let dns = Dnsmasq::start(&format!("127.0.0.3 {NAME}\n"));
        let config = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[dns]\nservers = [\"{}\"]\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"missing.edgeshard.test:80\" }}]\n",
            dns.addr()
        );
        let err = Proxy::try_start(&config, engine).err().expect("start-up must fail");
        assert!(err.contains("missing.edgeshard.test"), "{err}");
        assert!(err.contains("upstream[0] (u): host name"), "the error says where the name is written: {err}");
    }

    fn a_silent_dns_server_holds_up_no_reload_admin_call_or_stop(engine) {
        // Re-resolving waits on the server (2 s per try) with no lock that a reload, the
        // admin API or a stop needs: a reload during it answered only when it gave up (16 s
        // with two names), and a SIGTERM was acted on after it (found by an adversarial
        // probe). Here 48 names, three rounds of the 16 asked at once (6 s each): a call held
        // behind the silent server would wait 6 to 18 s, against the 4 s allowed below, which
        // is seconds from that and from the well under a second each call takes.
        let origin = Origin::start("o");
        let dns = FakeDns::start();
        let port = origin.addr().port();
        let backends: Vec<String> =
            (0..48).map(|i| format!("{{ address = \"n{i}.{NAME}:{port}\" }}")).collect();
        let config = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [dns]\nservers = [\"{}\"]\nmin_ttl = \"100ms\"\nmax_ttl = \"1s\"\n\
             [[route]]\nupstream = \"app\"\n[[upstream]]\nname = \"app\"\n\
             backends = [{}]\n",
            dns.addr,
            backends.join(", ")
        );
        let mut proxy = Proxy::start(&config, engine);
        assert_eq!(backend_of(&proxy).as_deref(), Some("o"), "{}", proxy.output());
        dns.silence();
        let deadline = Instant::now() + Duration::from_secs(10);
        while dns.unanswered.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no re-resolve reached the server");
            std::thread::yield_now();
        }
        // A resolution waits on the silent server now.
        let quick = Duration::from_secs(4);
        let t = Instant::now();
        let r = admin_request(proxy.admin_addr(), "POST", "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let h = admin_request(proxy.admin_addr(), "GET", "/healthz", None);
        assert_eq!(h.status, 200, "{}", h.body);
        assert!(t.elapsed() < quick, "reload and /healthz took {:?} behind DNS", t.elapsed());
        assert_eq!(backend_of(&proxy).as_deref(), Some("o"), "the last good answer serves");
        let t = Instant::now();
        proxy.signal(libc::SIGTERM);
        let status = proxy.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", proxy.output());
        assert!(t.elapsed() < quick, "stopped {:?} after SIGTERM", t.elapsed());
    }
}

both_engines! {
    fn changed_answers_go_in_force_at_most_once_per_min_ttl(engine) {
        // Each DNS update rebuilds the configuration and switches every shard. 2,000 names
        // with 1 s TTLs made 2 to 6 updates a second (scale review): every round of
        // re-resolutions that changed an answer made one, and names resolved at different
        // times (here: added by two reloads) are asked in rounds of their own. Now an update
        // goes out at once after a quiet `min_ttl`, and the answers that change within the
        // next `min_ttl` go in force together when it has passed: three groups of names whose
        // answers change one after the other make two updates, not three.
        let origin = Origin::start("o");
        let dns = FakeDns::start();
        let port = origin.addr().port();
        let file = |groups: &[&str]| {
            let backends: Vec<String> = groups
                .iter()
                .flat_map(|g| (0..10).map(move |i| format!("{{ address = \"{g}{i}.{NAME}:{port}\" }}")))
                .collect();
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
                 [dns]\nservers = [\"{}\"]\nmin_ttl = \"3s\"\nmax_ttl = \"3s\"\n\
                 [[route]]\nupstream = \"app\"\n[[upstream]]\nname = \"app\"\nbackends = [{}]\n",
                dns.addr,
                backends.join(", ")
            )
        };
        let proxy = Proxy::start(&file(&["a"]), engine);
        assert_eq!(backend_of(&proxy).as_deref(), Some("o"), "{}", proxy.output());
        // Groups b and c are resolved by these reloads: each is asked in a round of its own,
        // a reload's time after the one before.
        for groups in [&["a", "b"][..], &["a", "b", "c"]] {
            std::fs::write(proxy.config_path(), file(groups)).unwrap();
            let r = admin_request(proxy.admin_addr(), "POST", "/reload", None);
            assert_eq!(r.status, 200, "{}", r.body);
        }
        // From group a's next round on, every answer gains 127.0.0.5: a's round changes 10
        // answers (in force at once), then b's and c's, within the 3 s after it (together).
        dns.move_all_at_next_round(10);
        proxy.wait_for_output("dns: backends updated", 2, Duration::from_secs(30));
        let out = proxy.output();
        let names: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("dns: backends updated"))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("names=")))
            .collect();
        assert_eq!(names, ["names=10", "names=20"], "{out}");
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_dns_answer_changes_total", &[]), 30.0, "{out}");
        assert_eq!(m.value("edgeshard_dns_updates_total", &[]), 2.0, "{out}");
        assert_eq!(backend_of(&proxy).as_deref(), Some("o"), "{}", proxy.output());
    }

    fn a_refused_reload_leaves_the_dns_thread_idle(engine) {
        // A reload refused after it had resolved a new name (another name does not resolve,
        // or an added listener's port is taken) kept that answer, which nothing refreshed:
        // once its TTL passed, the DNS thread found it due forever and spun at 100 % CPU
        // (found by a review).
        let origin = Origin::start("o");
        let dns = FakeDns::start();
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let file = |extra_listener: &str, backends: &str| {
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n{extra_listener}[admin]\naddress = \"127.0.0.1:0\"\n\
                 [dns]\nservers = [\"{}\"]\nmin_ttl = \"100ms\"\nmax_ttl = \"1s\"\n\
                 [[route]]\nupstream = \"app\"\n[[upstream]]\nname = \"app\"\nbackends = [{backends}]\n",
                dns.addr
            )
        };
        let port = origin.addr().port();
        let good = file("", &format!("{{ address = \"{NAME}:{port}\" }}"));
        let proxy = Proxy::start(&good, engine);
        assert_eq!(backend_of(&proxy).as_deref(), Some("o"), "{}", proxy.output());
        let new_name = format!("{{ address = \"{NAME}:{port}\" }}, {{ address = \"new.edgeshard.test:{port}\" }}");
        // Refused on a name that does not resolve, then on a port that is taken; each after
        // `new.edgeshard.test` was resolved.
        let refusals = [
            (
                file("", &format!("{new_name}, {{ address = \"missing.edgeshard.test:{port}\" }}")),
                "missing.edgeshard.test",
            ),
            (
                file(
                    &format!("[[listener]]\naddress = \"{}\"\n", taken.local_addr().unwrap()),
                    &new_name,
                ),
                "listener[1].address",
            ),
        ];
        for (text, why) in refusals {
            std::fs::write(proxy.config_path(), text).unwrap();
            let r = admin_request(proxy.admin_addr(), "POST", "/reload", None);
            assert_eq!(r.status, 422, "{}", r.body);
            assert!(r.body.contains(why), "{why}: {}", r.body);
        }
        let refused = Instant::now();
        // The refused file's answer (TTL at most 1 s) is due from a second on. Measured over
        // two seconds after that (a measurement window, not a synchronisation): the thread
        // re-resolves the one name in force about twice, a few ticks at most; a spinning
        // thread takes most of a core (100 ticks a second).
        wait_until(refused + Duration::from_millis(1500));
        let before = dns_thread_ticks(proxy.pid());
        wait_until(refused + Duration::from_millis(3500));
        let used = dns_thread_ticks(proxy.pid()) - before;
        eprintln!("dns: the thread used {used} ticks in the 2 s after the refused reloads");
        assert!(used < 30, "the dns thread used {used} ticks in 2 s after a refused reload");
        assert_eq!(backend_of(&proxy).as_deref(), Some("o"), "{}", proxy.output());
    }
}

#[test]
fn new_names_of_a_reload_are_asked_at_once() {
    // A reload resolves the names it adds before it is put in force, on the admin thread:
    // one after the other, a silent server cost each its ~6 s (three names, an 18 s reload
    // and an admin API and a stop held that long; found by a review). They are asked at
    // once: three new names take about what one takes, well under twice. A ratio of two
    // reloads against the same silent server, not a time bound.
    let origin = Origin::start("o");
    let dns = FakeDns::start();
    let port = origin.addr().port();
    let file = |names: &[&str]| {
        let mut backends = vec![format!("{{ address = \"{NAME}:{port}\" }}")];
        backends.extend(
            names
                .iter()
                .map(|n| format!("{{ address = \"{n}:{port}\" }}")),
        );
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [dns]\nservers = [\"{}\"]\n\
             [[route]]\nupstream = \"app\"\n[[upstream]]\nname = \"app\"\nbackends = [{}]\n",
            dns.addr,
            backends.join(", ")
        )
    };
    let proxy = Proxy::start(&file(&[]), Engine::Epoll);
    assert_eq!(
        backend_of(&proxy).as_deref(),
        Some("o"),
        "{}",
        proxy.output()
    );
    dns.silence();
    let refused_after = |names: &[&str]| {
        std::fs::write(proxy.config_path(), file(names)).unwrap();
        let t = Instant::now();
        let r = admin_request(proxy.admin_addr(), "POST", "/reload", None);
        assert_eq!(r.status, 422, "{}", r.body);
        for n in names {
            assert!(r.body.contains(n), "{n}: {}", r.body);
        }
        t.elapsed()
    };
    let one = refused_after(&["one.edgeshard.test"]);
    let three = refused_after(&["a.edgeshard.test", "b.edgeshard.test", "c.edgeshard.test"]);
    eprintln!("dns: one new name refused after {one:?}, three after {three:?}");
    assert!(
        three < one * 2,
        "three names took {three:?}, one {one:?}: asked one after another"
    );
}
