//! Zero-downtime binary upgrade (SIGUSR2): the running process starts its successor, hands
//! it the listening sockets, and drains once the successor is ready. Under steady load (new
//! connections and keep-alive ones) and a burst that fills the accept queues, two upgrades in
//! a row lose no request; a successor that cannot start leaves the old process serving. Both
//! engines.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request on a fresh connection; `Err` says what went wrong.
fn one_shot(addr: SocketAddr, i: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        format!("GET /new/{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    if !text.starts_with("HTTP/1.1 200") || !text.ends_with("o") {
        return Err(format!("bad response: {text:?}"));
    }
    Ok(())
}

struct Load {
    /// Opened to end the load threads; a thread pacing its requests waits on it, so it
    /// ends at once instead of after its pause.
    stop: Gate,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Two threads of new-connection requests and two keep-alive ones (reconnecting when the
/// proxy announces a close), each paced at one request per 5 ms.
fn start_load(addr: SocketAddr) -> Load {
    let stop = Gate::default();
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        threads.push(std::thread::spawn(move || {
            let mut ka: Option<Client> = None;
            let mut i = 0;
            loop {
                i += 1;
                let r = if t < 2 {
                    one_shot(addr, i)
                } else {
                    let c = ka.get_or_insert_with(|| Client::connect(addr));
                    c.send(&get("a", &format!("/ka/{t}/{i}")));
                    match c.try_read_response() {
                        Ok(r) if r.status() == 200 => {
                            if r.has_token("connection", "close") {
                                ka = None;
                            }
                            Ok(())
                        }
                        Ok(r) => Err(format!("keep-alive status {}", r.status())),
                        Err(e) => {
                            ka = None;
                            Err(format!("keep-alive read: {e}"))
                        }
                    }
                };
                match r {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("thread {t} request {i}: {e}")),
                }
                // One request per 5 ms, ending as soon as the test says stop.
                if stop.wait(Duration::from_millis(5)) {
                    break;
                }
            }
        }));
    }
    Load {
        stop,
        done,
        failures,
        threads,
    }
}

/// Opens `n` connections as fast as it can, each with a request, then reads every answer:
/// most wait in the accept queues while the processes change hands.
fn burst(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut conns = Vec::new();
    let mut failures = Vec::new();
    for i in 0..n {
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                let _ = s.write_all(
                    format!("GET /burst/{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                conns.push((i, s));
            }
            Err(e) => failures.push(format!("burst {i} connect: {e}")),
        }
    }
    for (i, mut s) in conns {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) if out.starts_with(b"HTTP/1.1 200") => {}
            Ok(_) => failures.push(format!("burst {i}: {:?}", String::from_utf8_lossy(&out))),
            Err(e) => failures.push(format!("burst {i} read: {e}")),
        }
    }
    failures
}

/// The binary at its own path (a hard link beside the test binary, removed on drop): a
/// proxy started from it upgrades (SIGUSR2) to whatever file is there then.
struct OwnBinary(std::path::PathBuf);

impl Drop for OwnBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A proxy started from its own path, which then holds a shell script running `successor`
/// (written, then renamed over the path): the binary upgrade starts that script.
fn upgrading_to(tag: &str, successor: &str, config: &str, engine: Engine) -> (Proxy, OwnBinary) {
    let dir = std::path::Path::new(BIN).parent().unwrap();
    let bin = dir.join(format!(
        "edgeshard-{tag}-test-{}-{}",
        std::process::id(),
        engine.as_str()
    ));
    let _ = std::fs::remove_file(&bin);
    let own = OwnBinary(bin.clone());
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).unwrap();
    }
    let proxy = Proxy::try_start_binary(&bin, config, engine, 1).unwrap_or_else(|e| panic!("{e}"));
    let script = bin.with_extension("sh");
    std::fs::write(&script, format!("#!/bin/sh\n{successor}\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&script, &bin).unwrap();
    (proxy, own)
}

both_engines! {
    fn two_binary_upgrades_under_load_lose_nothing(engine) {
        let origin = Origin::start("o");
        let mut proxy = Config::single(origin.addr())
            .server("drain_grace", "\"2s\"")
            .admin("")
            .start_shards(engine, 2);
        let addr = proxy.addr();
        let admin = proxy.admin_addr();
        let load = start_load(addr);
        let settle = |load: &Load, more: usize| {
            let target = load.done.load(Ordering::SeqCst) + more;
            let deadline = Instant::now() + Duration::from_secs(30);
            while load.done.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "load stalled: {:?}", load.failures.lock().unwrap());
                std::thread::yield_now();
            }
        };
        settle(&load, 100);

        // Upgrade 1, with a burst queued on the listeners as it happens.
        proxy.signal(libc::SIGUSR2);
        let mut burst_failures = burst(addr, 300);
        let first = successor_pid(&proxy, 1);
        let status = proxy.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "the old process exits 0 after its drain");
        settle(&load, 100);
        // The admin socket was handed over too.
        assert_eq!(admin_get(admin, "/status", None).status, 200);

        // Upgrade 2: the successor upgrades in turn.
        // SAFETY: kill(2) on the successor started above, which is running (it answered).
        unsafe { libc::kill(first as libc::pid_t, libc::SIGUSR2) };
        burst_failures.extend(burst(addr, 300));
        let second = successor_pid(&proxy, 2);
        assert!(wait_pid_exit(first, Duration::from_secs(30)), "the first successor did not exit after handing over");
        settle(&load, 100);

        load.stop.open();
        for t in load.threads {
            t.join().unwrap();
        }
        terminate_pid(second);
        let failures = load.failures.lock().unwrap();
        assert!(failures.is_empty() && burst_failures.is_empty(), "lost requests: {failures:?} {burst_failures:?}\n{}", proxy.output());
        assert!(load.done.load(Ordering::SeqCst) >= 300);
    }

    fn a_successor_that_cannot_start_leaves_the_old_process_serving(engine) {
        let origin = Origin::start("o");
        let mut proxy = Config::single(origin.addr()).start(engine);
        std::fs::write(proxy.config_path(), "[[listener]]\naddress = \"nonsense\"\n").unwrap();
        proxy.signal(libc::SIGUSR2);
        proxy.wait_for_output("binary upgrade failed, still serving", 1, Duration::from_secs(30));
        assert!(proxy.output().contains("listener[0].address"), "the successor's error is in the log:\n{}", proxy.output());
        let mut c = Client::connect(proxy.addr());
        c.send(&get("a", "/after"));
        assert_eq!(c.read_response().status(), 200);
        proxy.assert_alive();
    }

    fn after_an_upgrade_the_admin_address_is_the_new_process_and_a_quit_to_the_old_one_drains(engine) {
        // nginx's recipe: USR2, then QUIT to the old process. The old one stops answering on
        // the admin address at the hand-over (its /ready and /reload would speak for a process
        // on its way out), and the QUIT is a graceful stop: its request in flight completes,
        // and it exits 0.
        let (origin, gate) = held_origin("/slow");
        let mut proxy = Config::single(origin.addr()).admin("").start(engine);
        let admin = proxy.admin_addr();
        let old = proxy.pid();
        let mut c = Client::connect(proxy.addr());
        c.send(&get("a", "/slow"));
        assert!(origin.wait_for(Duration::from_secs(10), |s| s.requests.iter().any(|r| r.path() == "/slow")));
        proxy.signal(libc::SIGUSR2);
        let new = successor_pid(&proxy, 1);
        for _ in 0..20 {
            let r = admin_get(admin, "/status", None);
            assert_eq!(r.status, 200);
            assert!(r.body.contains(&format!("\"pid\":{new}")) || r.body.contains(&format!("\"pid\": {new}")), "old {old}, new {new}: {}", r.body);
        }
        proxy.signal(libc::SIGQUIT);
        proxy.wait_for_output("already draining after the binary upgrade", 1, Duration::from_secs(10));
        gate.open();
        let r = c.read_response();
        assert_eq!(r.status(), 200, "the request in flight at the QUIT completes");
        let status = proxy.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", proxy.output());
        terminate_pid(new);
    }

    fn a_stop_signal_while_the_successor_starts_abandons_the_upgrade(engine) {
        // The successor never says it is ready (the binary at the path the proxy was started
        // from is replaced by a script that sleeps): a SIGTERM meanwhile stops it and drains
        // at once, not after the minute a successor is given.
        let origin = Origin::start("o");
        let config = Config::single(origin.addr()).render();
        let (mut proxy, _bin) = upgrading_to("abandon", "exec sleep 60", &config, engine);
        proxy.signal(libc::SIGUSR2);
        proxy.wait_for_output("SIGUSR2: starting the new binary", 1, Duration::from_secs(10));
        proxy.signal(libc::SIGTERM);
        let status = proxy.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{}", proxy.output());
        assert!(proxy.output().contains("a stop signal came while the new process was starting"), "{}", proxy.output());
    }

    fn a_reload_that_waited_for_an_upgrade_is_refused_by_the_old_process(engine) {
        // A reload asked for while the successor starts waits for the upgrade's outcome;
        // once the successor serves, the old process must not apply it (it is on its way
        // out, and the new one would never see it). The successor here is the real binary,
        // started a second late by a wrapper at the path the proxy was started from.
        let origin = Origin::start("o");
        let config = Config::single(origin.addr()).admin("").render();
        let successor = format!("sleep 1\nexec {BIN} \"$@\"");
        let (mut proxy, _bin) = upgrading_to("late", &successor, &config, engine);
        proxy.signal(libc::SIGUSR2);
        proxy.wait_for_output("SIGUSR2: starting the new binary", 1, Duration::from_secs(10));
        let admin = proxy.admin_addr();
        let waited = std::thread::spawn(move || admin_post(admin, "/reload", None));
        let new = successor_pid(&proxy, 1);
        let r = waited.join().unwrap();
        assert_ne!(r.status, 200, "the old process applied a reload after handing over: {}", r.body);
        assert!(r.body.contains("reload the new process"), "{}", r.body);
        let status = proxy.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{}", proxy.output());
        terminate_pid(new);
    }
}
