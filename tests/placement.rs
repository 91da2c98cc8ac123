//! Shard placement as an operator checks it from outside: one thread pinned per CPU, one
//! listening socket per shard, io_uring instances only on the io_uring engine, and clear
//! start-up errors for CPU lists that cannot work.

use crate::support::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

/// How long a start-up that must fail may take before the test kills it and fails: a refused
/// start exits in milliseconds, so 20 s is only ever reached by a proxy that started.
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// (thread name, Cpus_allowed_list) for every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let dir = entry.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        out.push((comm.trim().to_string(), cpus));
    }
    out
}

/// Targets of the process's fd symlinks, e.g. "socket:[123]" or "anon_inode:[io_uring]".
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Inodes of TCP sockets listening on `port` (from /proc/net/tcp and tcp6).
fn listening_inodes(port: u16) -> HashSet<String> {
    let mut inodes = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f[3] == "0A" {
                inodes.insert(f[9].to_string());
            }
        }
    }
    inodes
}

fn allowed_cpus() -> Vec<usize> {
    // This test process's own mask, as the proxy will see it.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

both_engines! {
    fn one_pinned_thread_and_one_listener_per_shard(engine) {
        let cpus = allowed_cpus();
        let shards = cpus.len().min(2);
        let origin = Origin::start("o");
        let cfg = Config::single(origin.addr()).render();
        let proxy = Proxy::start_shards(&cfg, engine, shards);
        let pid = proxy.pid();

        let shard_threads: Vec<(String, String)> = threads(pid)
            .into_iter()
            .filter(|(name, _)| name.starts_with("shard-"))
            .collect();
        assert_eq!(shard_threads.len(), shards, "{shard_threads:?}");
        for (i, cpu) in cpus.iter().take(shards).enumerate() {
            let name = format!("shard-{i}");
            let t = shard_threads.iter().find(|(n, _)| *n == name).expect("shard thread");
            assert_eq!(t.1, cpu.to_string(), "{name} must be pinned to CPU {cpu} alone");
        }

        let fds = fd_targets(pid);
        let listening = listening_inodes(proxy.addr().port());
        // Distinct sockets: main also holds a duplicate descriptor of each, kept for the
        // binary upgrade (upgrade::Handoff).
        let ours: std::collections::BTreeSet<&str> = fds
            .iter()
            .filter_map(|t| t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')))
            .filter(|inode| listening.contains(*inode))
            .collect();
        assert_eq!(ours.len(), shards, "one SO_REUSEPORT listening socket per shard; fds: {fds:?}");

        let rings = fds.iter().filter(|t| t.contains("io_uring")).count();
        match engine {
            Engine::Uring => assert!(rings >= shards, "each shard owns an io_uring; fds: {fds:?}"),
            Engine::Epoll => assert_eq!(rings, 0, "the epoll engine opens no io_uring; fds: {fds:?}"),
        }

        // And it serves.
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/"));
        assert_eq!(c.read_response().status(), 200);
    }
}

fn run_fails_with(args: &[&str], words: &[&str]) {
    // One file per call: tests run in parallel threads of one process.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let origin = Origin::start("o");
    let path = std::env::temp_dir().join(format!(
        "edgeshard-placement-{}-{n}.toml",
        std::process::id()
    ));
    std::fs::write(&path, Config::single(origin.addr()).render()).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run").arg("--config").arg(&path).args(args);
    // A refused start exits in milliseconds; one that starts by mistake runs until killed.
    let r = run_bounded(cmd, EXIT_WITHIN);
    let _ = std::fs::remove_file(&path);
    let (status, text) = r.unwrap_or_else(|e| {
        panic!("{args:?} must fail at start-up, but edgeshard kept running: {e}")
    });
    assert_eq!(
        status.code(),
        Some(1),
        "{args:?} must fail with exit 1:\n{text}"
    );
    assert!(!text.contains("edgeshard: ready"), "{text}");
    for w in words {
        assert!(
            text.contains(w),
            "{args:?}: the error should mention {w:?}:\n{text}"
        );
    }
}

#[test]
fn cpu_that_does_not_exist_is_a_clear_error() {
    run_fails_with(&["--cpus", "4095"], &["CPU 4095", "not allowed"]);
}

#[test]
fn malformed_cpu_list_is_a_clear_error() {
    run_fails_with(&["--cpus", "1-x"], &["--cpus"]);
}

#[test]
fn more_shards_than_cpus_is_a_clear_error() {
    let n = (allowed_cpus().len() + 1).to_string();
    run_fails_with(&["--shards", &n], &["--shards"]);
}

// The error names every process with a copy of the listening socket, not the first one
// found: here this test process and a child that inherited the socket as its stdin (as a
// forked child holds every descriptor until its exec closes them, or nginx's workers their
// master's).
#[test]
fn port_in_use_is_a_clear_error() {
    // A listener without SO_REUSEPORT holds the port, so the proxy cannot share it.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let copy = std::os::fd::OwnedFd::from(holder.try_clone().unwrap());
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(std::process::Stdio::from(copy))
        .spawn()
        .unwrap();
    let origin = Origin::start("o");
    let cfg = Config::single(origin.addr())
        .render()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = std::env::temp_dir().join(format!("edgeshard-inuse-{}.toml", std::process::id()));
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(&path);
    let r = run_bounded(cmd, EXIT_WITHIN);
    let _ = std::fs::remove_file(&path);
    let _ = child.kill();
    let _ = child.wait();
    let (status, text) = r.unwrap_or_else(|e| {
        panic!("a port in use must fail the start-up, but edgeshard kept running: {e}")
    });
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("already in use"), "{text}");
    // Named as a reload names it: the file and the key.
    let key = format!("{}: listener[0].address: ", path.display());
    assert!(text.contains(&key), "the error must name {key:?}:\n{text}");
    for who in [
        format!("process {} ", std::process::id()),
        format!("process {} (sleep)", child.id()),
    ] {
        assert!(text.contains(&who), "the error must name {who:?}:\n{text}");
    }
    drop(holder);
}

both_engines! {
    fn a_second_edgeshard_on_the_same_address_refuses_to_start(engine) {
        // Both would set SO_REUSEPORT, so without the check the second would bind too and
        // silently take part of the first's connections.
        let origin = Origin::start("o");
        let first = Config::single(origin.addr()).start(engine);
        let addr = first.addr();
        let cfg = Config::single(origin.addr())
            .render()
            .replace("address = \"127.0.0.1:0\"", &format!("address = \"{addr}\""));
        let path = std::env::temp_dir().join(format!("edgeshard-second-{}-{}.toml", std::process::id(), engine.as_str()));
        std::fs::write(&path, cfg).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--io-engine", engine.as_str(), "--config"]).arg(&path);
        let r = run_bounded(cmd, EXIT_WITHIN);
        let _ = std::fs::remove_file(&path);
        let (status, text) = r.unwrap_or_else(|e| panic!("a second edgeshard kept running on {addr}: {e}"));
        assert_eq!(status.code(), Some(1), "{text}");
        let pid = format!("process {} (edgeshard)", first.pid());
        assert!(text.contains(&pid), "the refusal must name {pid:?}:\n{text}");
    }
}

both_engines! {
    // `server.huge_pages`: off unless asked for, as an operator reads it in /proc/PID/status
    // (`THP_enabled`, the kernel's per-process switch that `PR_SET_THP_DISABLE` sets).
    fn huge_pages_are_off_unless_asked_for(engine) {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            eprintln!("skipped: MIMALLOC_ALLOW_THP is set in the environment");
            return;
        }
        let origin = Origin::start("o");
        let thp = |p: &Proxy| -> String {
            let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("THP_enabled:"))
                .unwrap_or_else(|| panic!("no THP_enabled line in /proc/{}/status", p.pid()))
                .trim()
                .to_string()
        };
        let default = Config::single(origin.addr()).start(engine);
        assert_eq!(thp(&default), "0", "huge pages are off by default");
        // Off before mimalloc's constructor reserved its first arena: not one huge page, even
        // from before `main` (two were, when `main` turned them off).
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", default.pid())).unwrap();
        let huge = rollup.lines().find_map(|l| l.strip_prefix("AnonHugePages:")).map(str::trim);
        assert_eq!(huge, Some("0 kB"), "{rollup}");
        let on = Config::single(origin.addr()).server("huge_pages", "true").start(engine);
        assert_eq!(thp(&on), "1", "huge_pages = true turns them on");
        let mut c = Client::connect(on.addr());
        c.send(&get("example.com", "/"));
        assert_eq!(c.read_response().status(), 200);
    }
}
