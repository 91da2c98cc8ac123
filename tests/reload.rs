//! Hot reload (issue 15): under 60 s of steady load (`EDGESHARD_RELOAD_SECS` changes it), ten
//! reloads that move a route between upstreams and add and remove a backend, through all three
//! triggers (`POST /reload`, `edgeshard reload`, SIGHUP), and two binary upgrades (SIGUSR2)
//! among them, with no failed request, each reload in effect within a second and the pooled
//! connections to the unchanged backend kept; an invalid file changes nothing and is
//! reported with its key path; settings read at start only are reported against what the
//! process runs, and a file without the admin token does not turn the admin API's
//! authentication off. Listener changes: tests/reload_listeners.rs.

use crate::support::*;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const RELOADS: usize = 10;

struct Backends {
    stable: SocketAddr,
    x: SocketAddr,
    x2: SocketAddr,
    y: SocketAddr,
}

/// Generation `k`'s file: `/s/` always goes to `stable`; `/m/` goes to `uy` on odd `k`, to
/// `ux` on even ones, and `ux` has a second backend `X2` when `k % 4 == 2`.
fn config(b: &Backends, k: usize) -> String {
    let moving = if k % 2 == 1 { "uy" } else { "ux" };
    let ux = if k % 4 == 2 {
        format!("{{ address = \"{}\" }}, {{ address = \"{}\" }}", b.x, b.x2)
    } else {
        format!("{{ address = \"{}\" }}", b.x)
    };
    format!(
        r#"[[listener]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[[route]]
path_prefix = "/s/"
upstream = "stable"

[[route]]
path_prefix = "/m/"
upstream = "{moving}"

[[upstream]]
name = "stable"
backends = [{{ address = "{}" }}]

[[upstream]]
name = "ux"
balance = "round_robin"
backends = [{ux}]

[[upstream]]
name = "uy"
backends = [{{ address = "{}" }}]
"#,
        b.stable, b.y
    )
}

/// Which origins may answer `/m/` in generation `k`.
fn expected(k: usize) -> &'static [&'static str] {
    match (k % 2, k % 4) {
        (1, _) => &["Y"],
        (_, 2) => &["X", "X2"],
        _ => &["X"],
    }
}

/// One `/m/` answer: when its request started and its response ended, and who answered.
struct Seen {
    started: Instant,
    finished: Instant,
    backend: String,
}

fn reload_cli(admin: SocketAddr) -> std::process::Output {
    Command::new(BIN)
        .args(["reload", "--admin", &admin.to_string()])
        .output()
        .expect("run edgeshard reload")
}

/// One request on `c`: the answering backend and whether the proxy closes the connection
/// after it (a draining process does), or why it failed.
fn one(c: &mut Client, path: &str, keep_alive: bool) -> Result<(String, bool), String> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    c.try_send(&request(
        "GET",
        path,
        &[("Host", "reload.test"), ("Connection", conn)],
        b"",
    ))
    .map_err(|e| format!("send: {e}"))?;
    let r = c.try_read_response().map_err(|e| format!("read: {e}"))?;
    if r.status() != 200 {
        return Err(format!("status {}: {}", r.status(), r.head.raw));
    }
    Ok((
        r.header("x-backend").unwrap_or("?").to_owned(),
        r.has_token("connection", "close"),
    ))
}

both_engines! {
    fn reloads_under_load_drop_nothing_and_keep_pools(engine) {
        let stable = Origin::start("S");
        let x = Origin::start("X");
        let x2 = Origin::start("X2");
        let y = Origin::start("Y");
        let b = Backends { stable: stable.addr(), x: x.addr(), x2: x2.addr(), y: y.addr() };
        let mut proxy = Proxy::start_shards(&config(&b, 0), engine, 2);
        let addr = proxy.addr();
        let admin = proxy.admin_addr();
        let secs: u64 = std::env::var("EDGESHARD_RELOAD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        let run = Duration::from_secs(secs);

        // Four clients at a bounded rate (one request per 10 ms each): two keep one
        // connection open, two open a new connection per request. They alternate paths.
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let counts = Arc::new(Mutex::new(0usize));
        let clients: Vec<_> = (0..4)
            .map(|t| {
                let (stop, seen, failures, counts) =
                    (stop.clone(), seen.clone(), failures.clone(), counts.clone());
                thread::spawn(move || {
                    let keep_alive = t < 2;
                    let mut conn: Option<Client> = None;
                    let mut next = Instant::now();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        // Pacing, not synchronisation: a steady request rate.
                        wait_until(next);
                        next += Duration::from_millis(10);
                        n += 1;
                        let path = if n % 2 == 0 { "/s/x" } else { "/m/x" };
                        let started = Instant::now();
                        let c = match conn.take() {
                            Some(c) => c,
                            None => match Client::try_connect(addr) {
                                Ok(c) => c,
                                Err(e) => {
                                    failures.lock().unwrap().push(format!("connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        let mut c = c;
                        match one(&mut c, path, keep_alive) {
                            Ok((backend, closing)) => {
                                *counts.lock().unwrap() += 1;
                                if path == "/m/x" {
                                    seen.lock().unwrap().push(Seen {
                                        started,
                                        finished: Instant::now(),
                                        backend,
                                    });
                                }
                                // A client honours `Connection: close` (the draining process
                                // of an upgrade sends it) by opening a new connection.
                                if keep_alive && !closing {
                                    conn = Some(c);
                                }
                            }
                            Err(e) => failures
                                .lock()
                                .unwrap()
                                .push(format!("client {t} request {n} {path}: {e}")),
                        }
                    }
                })
            })
            .collect();

        // Ten reloads spread over the run; the first after a second of warm-up, once the
        // pools hold the connections the load needs.
        let begin = Instant::now();
        let gap = run / (RELOADS as u32 + 1);
        // (generation, when its reload was asked for, when it returned).
        let mut at = vec![(0usize, begin, begin)];
        // New connections to the unchanged backend are counted over spans of reloads within
        // one process: from just before a span's first reload to just before the next
        // upgrade (or the end). An upgrade's new process fills its own pools, which is not a
        // reload losing them.
        let mut span_start: Option<usize> = None;
        let mut grown = 0;
        let stable_before = stable.accepted();
        // Two binary upgrades on the way (SIGUSR2, after reloads 3 and 7): the configuration
        // in force is the file's, so every window's expectation holds across them. `pid` is
        // the process serving now.
        let mut pid = proxy.pid();
        let mut upgrades = 0;
        let mut reloads_in_this_process = 0usize;
        for k in 1..=RELOADS {
            // The run's schedule: reload k at its planned moment.
            wait_until(begin + gap * k as u32);
            if span_start.is_none() {
                span_start = Some(stable.accepted());
            }
            let asked = Instant::now();
            std::fs::write(proxy.config_path(), config(&b, k)).unwrap();
            match k % 3 {
                0 => {
                    // SAFETY: kill(2) on the serving process: the proxy, or the successor it
                    // started (watched until it exits; it has not).
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
                    proxy.wait_for_output("configuration reloaded", k, Duration::from_secs(5));
                }
                1 => {
                    let r = admin_post(admin, "/reload", None);
                    assert_eq!(r.status, 200, "POST /reload: {}", r.body);
                    assert_eq!(r.json()["result"], "ok", "{}", r.body);
                }
                _ => {
                    let out = reload_cli(admin);
                    assert!(
                        out.status.success(),
                        "edgeshard reload: {:?}\n{}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            at.push((k, asked, Instant::now()));
            reloads_in_this_process += 1;
            if k == 3 || k == 7 {
                if let Some(s) = span_start.take() {
                    grown += stable.accepted() - s;
                }
                // SAFETY: as above.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR2) };
                upgrades += 1;
                let next = successor_pid(&proxy, upgrades);
                assert!(wait_pid_exit(pid, Duration::from_secs(30)), "process {pid} did not exit after handing over");
                pid = next;
                reloads_in_this_process = 0;
            }
        }
        // The load runs for the planned time, then stops.
        let end = begin + run;
        wait_until(end);
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let stable_after = stable.accepted();
        if let Some(s) = span_start.take() {
            grown += stable_after - s;
        }

        let failures = failures.lock().unwrap();
        let total = *counts.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed across {RELOADS} reloads; first: {:?}\noutput:\n{}",
            failures.len(),
            total + failures.len(),
            &failures[..failures.len().min(5)],
            proxy.output()
        );
        // Each reload in effect within a second: every /m/ request that started a second or
        // more after reload k returned, and was answered before reload k+1 was asked for, was
        // answered by generation k's upstream; each such window saw answers (so the check is
        // not vacuous). A request that overlaps the next reload may see either.
        let seen = seen.lock().unwrap();
        for (i, &(k, _, t)) in at.iter().enumerate() {
            let from = t + Duration::from_secs(1);
            let to = at.get(i + 1).map_or(end, |n| n.1);
            let window: Vec<&Seen> =
                seen.iter().filter(|s| s.started >= from && s.finished < to).collect();
            assert!(!window.is_empty(), "no /m/ answers between reload {k} + 1 s and the next");
            let want = expected(k);
            for s in &window {
                assert!(
                    want.contains(&s.backend.as_str()),
                    "reload {k}: /m/ answered by {} {:?} after the reload, expected one of {want:?}",
                    s.backend,
                    s.started - t
                );
            }
            if want.len() == 2 {
                assert!(
                    window.iter().any(|s| s.backend == "X2"),
                    "reload {k} added X2 but it answered nothing"
                );
            }
        }
        // The unchanged backend's pooled connections survived the reloads: fewer new
        // connections to it during them than there were reloads (losing the pool on a reload
        // costs at least one per shard per reload: 20 or more).
        eprintln!(
            "reload test ({}): {total} requests in {secs} s, {RELOADS} reloads, {upgrades} upgrades, stable backend connections {stable_before} -> {stable_after}, {grown} of them during reloads",
            engine.as_str()
        );
        assert!(
            grown < RELOADS,
            "{grown} new connections to the unchanged backend during {RELOADS} reloads ({stable_before} before the first): pooled connections were not kept"
        );
        // The admin socket followed the upgrades: the last process counts its own reloads.
        let m = scrape(admin, None);
        assert_eq!(
            m.value("edgeshard_config_reloads_total", &[("result", "ok")]),
            reloads_in_this_process as f64
        );
        assert_eq!(upgrades, 2);
        assert_eq!(proxy.wait_exit(Duration::from_secs(5)).code(), Some(0), "the first process exits 0 after its upgrade");
        terminate_pid(pid);
    }

    fn invalid_reloads_change_nothing_and_say_why(engine) {
        let a = Origin::start("A");
        let b = Origin::start("B");
        let good = |to: SocketAddr| {
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"u\"\n\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"{to}\" }}]\n"
            )
        };
        let mut proxy = Proxy::start(&good(a.addr()), engine);
        let admin = proxy.admin_addr();
        let body = |proxy: &Proxy| {
            let mut c = Client::connect(proxy.addr());
            c.send(&get("reload.test", "/"));
            c.read_response().body_str()
        };
        assert_eq!(body(&proxy), "A");

        // A route naming an upstream that does not exist, and the backend changed too: the
        // reload is refused as a whole, with the key path.
        let bad = good(b.addr()).replace("upstream = \"u\"\n\n[[upstream]]", "upstream = \"nope\"\n\n[[upstream]]");
        std::fs::write(proxy.config_path(), &bad).unwrap();
        let out = reload_cli(admin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "edgeshard reload must fail: {stderr}");
        assert!(stderr.contains("route[0].upstream"), "the error names its key path: {stderr}");
        assert_eq!(body(&proxy), "A", "a refused reload changes nothing");

        // SIGHUP with the same file: logged with the key path, and the proxy keeps serving.
        proxy.signal(libc::SIGHUP);
        proxy.wait_for_output_where("SIGHUP reload refused", Duration::from_secs(5), |o| {
            o.matches("reload failed").count() >= 2 && o.contains("route[0].upstream")
        });
        assert_eq!(body(&proxy), "A");
        proxy.assert_alive();

        // And a good file then takes effect.
        std::fs::write(proxy.config_path(), good(b.addr())).unwrap();
        let r = admin_post(admin, "/reload", None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(body(&proxy), "B");
        let m = scrape(admin, None);
        assert_eq!(m.value("edgeshard_config_reloads_total", &[("result", "failed")]), 2.0);
        assert_eq!(m.value("edgeshard_config_reloads_total", &[("result", "ok")]), 1.0);
        assert_eq!(m.value("edgeshard_config_generation", &[]), 1.0);
    }
}

both_engines! {
    fn restart_only_settings_are_compared_with_what_the_process_runs(engine) {
        let a = Origin::start("A");
        let base = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"u\"\n\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"{}\" }}]\n",
            a.addr()
        );
        let proxy = Proxy::start(&base, engine);
        let admin = proxy.admin_addr();
        let reload = |text: &str| {
            std::fs::write(proxy.config_path(), text).unwrap();
            admin_post(admin, "/reload", None)
        };
        let debug = format!("[log]\nlevel = \"debug\"\n\n{base}");
        // A changed log level is not applied, and says so: on this reload and on the next with
        // the same file (the process still logs at "info"); going back to the file the process
        // started with has nothing to report.
        for _ in 0..2 {
            let r = reload(&debug);
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(r.body.contains("log.level"), "{}", r.body);
        }
        let r = reload(&base);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["not_applied"], serde_json::json!([]), "{}", r.body);

        // A user that does not exist is refused as `check` refuses it; one that does is a
        // change for the next start.
        let r = reload(&format!("[server]\nuser = \"edgeshard-no-such-user-4711\"\n\n{base}"));
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(r.body.contains("server.user"), "{}", r.body);
        let r = reload(&format!("[server]\nuser = \"root\"\n\n{base}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("server.user"), "{}", r.body);
    }
}

both_engines! {
    fn a_reload_keeps_the_admin_token_the_process_started_with(engine) {
        // The admin socket stays bound where it started; a reloaded file that dropped the
        // token (or all of `[admin]`) used to open it to anyone (found by a review).
        let a = Origin::start("A");
        let text = |admin: &str| {
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n\n{admin}[[route]]\nupstream = \"u\"\n\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"{}\" }}]\n",
                a.addr()
            )
        };
        let proxy = Proxy::start(
            &text("[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n\n"),
            engine,
        );
        let admin = proxy.admin_addr();
        let drain = format!("/upstreams/u/backends/{}/drain", a.addr());
        assert_eq!(admin_post(admin, &drain, None).status, 401);
        for (what, section) in [
            ("no token", format!("[admin]\naddress = \"{admin}\"\n\n")),
            ("no [admin]", String::new()),
            ("another token", format!("[admin]\naddress = \"{admin}\"\ntoken = \"other\"\n\n")),
        ] {
            std::fs::write(proxy.config_path(), text(&section)).unwrap();
            let r = admin_post(admin, "/reload", Some("s3cret"));
            assert_eq!(r.status, 200, "{what}: {}", r.body);
            let notes = r.json()["not_applied"].to_string();
            let d = admin_post(admin, &drain, None);
            assert_eq!(d.status, 401, "{what}: a drain without the token: {}", d.body);
            assert_eq!(admin_get(admin, "/metrics", Some("other")).status, 401, "{what}");
            assert_eq!(admin_get(admin, "/metrics", Some("s3cret")).status, 200, "{what}");
            // And the answer said the admin settings wait for a restart.
            assert!(notes.contains("admin (address, token)"), "{what}: {}", r.body);
        }
        // Nothing was drained: the backend still answers.
        let mut c = Client::connect(proxy.addr());
        c.send(&get("reload.test", "/"));
        assert_eq!(c.read_response().body_str(), "A");
    }
}

both_engines! {
    fn the_reload_command_reads_token_file_and_wants_the_admin_apis_answer(engine) {
        let a = Origin::start("A");
        // The token file sits beside the configuration, named relative to it: read from there
        // by the proxy and by `edgeshard reload --config`, whatever their working directory.
        let name = format!("edgeshard-token-{}-{}.txt", std::process::id(), engine.as_str());
        let token = std::env::temp_dir().join(&name);
        std::fs::write(&token, "s3cret\n").unwrap();
        let text = |admin: &str| {
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"{admin}\"\ntoken_file = \"{name}\"\n\n[[route]]\nupstream = \"u\"\n\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"{}\" }}]\n",
                a.addr()
            )
        };
        let proxy = Proxy::start(&text("127.0.0.1:0"), engine);
        let admin = proxy.admin_addr();
        assert_eq!(admin_post(admin, "/reload", Some("s3cret")).status, 200);
        std::fs::write(proxy.config_path(), text(&admin.to_string())).unwrap();
        let out = Command::new(BIN)
            .current_dir("/")
            .args(["reload", "--config", proxy.config_path().to_str().unwrap()])
            .output()
            .expect("run edgeshard reload");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");

        // A 200 from something that is not the admin API (here the listener, whose backend
        // answers) reloads nothing and is not reported as a reload.
        let out = Command::new(BIN)
            .args(["reload", "--admin", &proxy.addr().to_string(), "--token", "s3cret"])
            .output()
            .expect("run edgeshard reload");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("not as edgeshard's admin API"), "{stderr}");
        std::fs::remove_file(&token).ok();
    }
}
