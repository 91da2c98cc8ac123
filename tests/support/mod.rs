//! Test harness for the edgeshard integration suite.
//!
//! - `Proxy`: spawns the real binary with a generated config and waits for
//!   its readiness lines on stdout;
//! - `Config` (config.rs): builds config TOML;
//! - `Engine` + `both_engines!`: run a behavioural test on io_uring and epoll;
//! - backends (`origin`, `lockstep`) and a raw client (`client`).
//!
//! No fixed ports (everything binds 127.0.0.1:0), no sleeping to wait for
//! readiness, every wait bounded.
#![allow(dead_code)]

pub mod admin;
pub mod client;
pub mod close;
pub mod config;
pub mod gate;
pub mod lockstep;
pub mod origin;
pub mod pattern;
pub mod prom;
pub mod tls;

#[allow(unused_imports)]
pub use admin::{admin_get, admin_post, admin_raw, admin_request, AdminReply};
pub use client::{chunked, get, request, Client, ClientError, Framing, Response};
pub use close::{read_whole_response, small_window_client, wait_proxy_half_closed};
pub use config::Config;
pub use gate::{held_origin, Gate};
#[allow(unused_imports)]
pub use lockstep::{dead_addr, dead_addrs, LockConn, LockStep, Misbehave, Misbehaviour};
pub use origin::{BodyMode, Origin, Recorded, Reply};
#[allow(unused_imports)]
pub use prom::{parse_prometheus, parse_quick, scrape, scrape_until, Metrics, Sample};

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_edgeshard");
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns once the clock reads `at` or later. For what is itself a moment in time, and
/// nothing else: a cached entry's freshness is its age, so a test that needs an entry fresh
/// or stale waits until a deadline measured from when it was stored; a paced client (a slow
/// sender or reader, whose rate is what the proxy judges) sends or reads at its scheduled
/// times; a load test's clients and reloads run on its planned timeline; `prom::scrape_until`
/// scrapes a proxy that announces no counter update on a schedule up to its deadline. There is no event to wait on, and nothing else can make it so. Waits for the
/// proxy, a backend or a client use readiness signals instead.
pub fn wait_until(at: Instant) {
    while let Some(left) = at
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        thread::park_timeout(left);
    }
}

/// Which engines a run must exercise: the rule shared with the library's unit tests.
#[path = "../../src/test_engines.rs"]
pub mod engines;

/// The io_uring runtime `engines::block_on` runs on here (the proxy under test builds its own).
#[allow(dead_code)]
fn uring_test_runtime(
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
}

pub use engines::TestEngine as Engine;

/// Runs `f` on `engine` if this run exercises it (see `src/test_engines.rs`): a test of an
/// engine that is unavailable fails, one left out by `EDGESHARD_TEST_ENGINES` passes unrun.
pub fn run_on(engine: Engine, f: fn(Engine)) {
    if engines::should_run(engine) {
        f(engine)
    }
}

/// `both_engines!(fn name(engine) { ... })` generates a module `name` with
/// two tests, `name::uring` and `name::epoll`.
macro_rules! both_engines {
    ($(fn $name:ident($engine:ident) $body:block)+) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn body($engine: crate::support::Engine) $body
                #[test]
                fn uring() {
                    crate::support::run_on(crate::support::Engine::Uring, body)
                }
                #[test]
                fn epoll() {
                    crate::support::run_on(crate::support::Engine::Epoll, body)
                }
            }
        )+
    };
}

fn unique_config_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "edgeshard-test-{}-{}-{nanos}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Output captured from the child (bounded: keeps the last 256 KiB).
#[derive(Default)]
struct Captured {
    text: String,
}

impl Captured {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        if self.text.len() > 512 * 1024 {
            let cut = self.text.len() - 256 * 1024;
            let cut = (cut..self.text.len())
                .find(|&i| self.text.is_char_boundary(i))
                .unwrap();
            self.text.drain(..cut);
        }
    }
}

/// Captured output plus a condition variable signalled on every new line, so tests wait for
/// a line instead of polling.
#[derive(Default)]
struct Output {
    text: Mutex<Captured>,
    grew: Condvar,
}

impl Output {
    fn push(&self, s: &str) {
        self.text.lock().unwrap().push(s);
        self.grew.notify_all();
    }
}

/// Waits for a child on its own thread and reports its exit status on a channel: a
/// wait-with-timeout without polling.
pub fn watch_exit(mut child: Child) -> mpsc::Receiver<ExitStatus> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(status);
        }
    });
    rx
}

pub struct Proxy {
    pid: u32,
    exited: mpsc::Receiver<ExitStatus>,
    addrs: Vec<SocketAddr>,
    /// From the `edgeshard: admin on ADDR` line, when the config has an `[admin]` section.
    admin: Option<SocketAddr>,
    config_path: PathBuf,
    output: Arc<Output>,
    pub engine: Engine,
    exit: Option<ExitStatus>,
    /// Successors of a binary upgrade learnt by [`successor_pid`]: killed on drop if still
    /// running (a failed test must not leave them behind).
    successors: Mutex<Vec<u32>>,
}

impl Proxy {
    /// Starts `edgeshard run --config FILE --shards 1 --io-engine ENGINE` and
    /// waits (<= 20 s) for `edgeshard: ready`. Panics with the captured output
    /// if it does not become ready.
    pub fn start(config_toml: &str, engine: Engine) -> Proxy {
        match Self::try_start(config_toml, engine) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_start(config_toml: &str, engine: Engine) -> Result<Proxy, String> {
        Self::try_start_shards(config_toml, engine, 1)
    }

    /// Like `start`, with `--shards N`.
    pub fn start_shards(config_toml: &str, engine: Engine, shards: usize) -> Proxy {
        Self::try_start_shards(config_toml, engine, shards).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start_shards(
        config_toml: &str,
        engine: Engine,
        shards: usize,
    ) -> Result<Proxy, String> {
        Self::try_start_binary(Path::new(BIN), config_toml, engine, shards)
    }

    /// Like `try_start_shards`, running the binary at `bin` (a binary upgrade starts its
    /// successor from the path the process was started from).
    pub fn try_start_binary(
        bin: &Path,
        config_toml: &str,
        engine: Engine,
        shards: usize,
    ) -> Result<Proxy, String> {
        let config_path = unique_config_path();
        std::fs::write(&config_path, config_toml).expect("write temp config");
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args([
                "--shards",
                &shards.to_string(),
                "--io-engine",
                engine.as_str(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let output = Arc::new(Output::default());

        let stderr = child.stderr.take().unwrap();
        let out2 = output.clone();
        // Signalled at stderr's EOF: a process that exits before ready has written its error
        // there, and the message below must not be built before that line is read.
        let (stderr_done, stderr_eof) = mpsc::channel::<()>();
        thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => out2.push(&format!("[stderr] {}", String::from_utf8_lossy(&line))),
                }
            }
            let _ = stderr_done.send(());
        });

        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let out3 = output.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&line).into_owned();
                        out3.push(&format!("[stdout] {s}"));
                        let _ = tx.send(s);
                    }
                }
            }
            // Keep draining is implicit: the loop above runs until EOF.
        });

        let pid = child.id();
        let mut proxy = Proxy {
            pid,
            exited: watch_exit(child),
            addrs: Vec::new(),
            admin: None,
            config_path,
            output,
            engine,
            exit: None,
            successors: Mutex::new(Vec::new()),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "edgeshard ({}) not ready within {READY_TIMEOUT:?}\nconfig:\n{config_toml}\noutput:\n{}",
                    engine.as_str(),
                    proxy.output()
                ));
            }
            match rx.recv_timeout(deadline - now) {
                Ok(line) => {
                    let line = line.trim_end();
                    if let Some(a) = line.strip_prefix("edgeshard: listening on ") {
                        let addr: SocketAddr = a
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}"));
                        assert_ne!(
                            addr.port(),
                            0,
                            "listening line must carry the real bound port: {line:?}"
                        );
                        proxy.addrs.push(addr);
                    } else if let Some(a) = line.strip_prefix("edgeshard: admin on ") {
                        let addr: SocketAddr = a
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("bad admin line {line:?}: {e}"));
                        assert_ne!(
                            addr.port(),
                            0,
                            "admin line must carry the real bound port: {line:?}"
                        );
                        assert!(
                            proxy.admin.is_none(),
                            "two `admin on` lines: {line:?}\noutput:\n{}",
                            proxy.output()
                        );
                        proxy.admin = Some(addr);
                    } else if line.starts_with("edgeshard: ready") {
                        let want = format!("engine={}", engine.as_str());
                        let want_shards = format!("shards={shards}");
                        if !line.split_whitespace().any(|w| w == want_shards) {
                            return Err(format!(
                                "ready line {line:?} does not report {want_shards}\noutput:\n{}",
                                proxy.output()
                            ));
                        }
                        if !line.split_whitespace().any(|w| w == want) {
                            return Err(format!(
                                "ready line {line:?} does not report {want} although --io-engine {} was given\noutput:\n{}",
                                engine.as_str(),
                                proxy.output()
                            ));
                        }
                        if proxy.addrs.is_empty() {
                            return Err(format!(
                                "ready before any `listening on` line\noutput:\n{}",
                                proxy.output()
                            ));
                        }
                        if proxy.admin.is_none()
                            && config_toml.lines().any(|l| l.trim() == "[admin]")
                        {
                            return Err(format!(
                                "the config has an [admin] section but no `edgeshard: admin on ADDR` line came before ready\noutput:\n{}",
                                proxy.output()
                            ));
                        }
                        return Ok(proxy);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting. Collect its status and the rest
                    // of its stderr (both bounded).
                    let status = proxy.wait_exit_timeout(Duration::from_secs(5));
                    let _ = stderr_eof.recv_timeout(Duration::from_secs(5));
                    return Err(format!(
                        "edgeshard ({}) exited before ready: {status:?}\nconfig:\n{config_toml}\noutput:\n{}",
                        engine.as_str(),
                        proxy.output()
                    ));
                }
            }
        }
    }

    /// The first listener's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The admin listener's bound address (the `edgeshard: admin on ADDR` line printed before
    /// `ready`); panics if the proxy printed none.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.unwrap_or_else(|| {
            panic!(
                "edgeshard printed no `edgeshard: admin on ADDR` line (no [admin] section?)\noutput:\n{}",
                self.output()
            )
        })
    }

    /// The admin address if the proxy announced one.
    pub fn try_admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The generated config file the proxy was started with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Sends `signal` (e.g. `libc::SIGUSR1`) to the proxy; panics if it is no longer running.
    pub fn signal(&mut self, signal: i32) {
        self.assert_alive();
        // SAFETY: kill(2) with the pid of our own child, which has not been reaped (checked
        // just above), so the pid cannot have been reused.
        let r = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        assert_eq!(
            r,
            0,
            "kill({}, {signal}) failed: {}",
            self.pid,
            std::io::Error::last_os_error()
        );
    }

    pub fn output(&self) -> String {
        self.output.text.lock().unwrap().text.clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(st.success(), "kill -TERM {} failed: {st:?}", self.pid());
    }

    /// Waits for exit until `timeout`; None if still running.
    pub fn wait_exit_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = match timeout.is_zero() {
                true => self.exited.try_recv().ok(),
                false => self.exited.recv_timeout(timeout).ok(),
            };
        }
        self.exit
    }

    /// Waits until the captured output (stdout and stderr) contains `needle` at least
    /// `count` times; panics with the output after `timeout`.
    pub fn wait_for_output(&self, needle: &str, count: usize, timeout: Duration) {
        self.wait_for_output_where(&format!("{count} x {needle:?}"), timeout, |text| {
            text.matches(needle).count() >= count
        });
    }

    /// Waits until `cond` holds on the captured output (re-checked on every new line);
    /// panics naming `what`, with the output, after `timeout`.
    pub fn wait_for_output_where(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&str) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        let mut text = self.output.text.lock().unwrap();
        while !cond(&text.text) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let out = text.text.clone();
                // Unlocked before panicking, as in `wait_for_output`.
                drop(text);
                panic!("{what}: not seen within {timeout:?}\noutput:\n{out}");
            }
            text = self.output.grew.wait_timeout(text, left).unwrap().0;
        }
    }

    /// Waits for exit; panics with the output if it takes longer than `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit_timeout(timeout) {
            Some(s) => s,
            None => panic!(
                "edgeshard did not exit within {timeout:?}\noutput:\n{}",
                self.output()
            ),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.wait_exit_timeout(Duration::ZERO).is_none()
    }

    /// Panics (with output) if the proxy process has died.
    pub fn assert_alive(&mut self) {
        if let Some(s) = self.wait_exit_timeout(Duration::ZERO) {
            panic!(
                "edgeshard exited unexpectedly: {s:?}\noutput:\n{}",
                self.output()
            );
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.wait_exit_timeout(Duration::ZERO).is_none() {
            // Still running (its exit has not been reaped, so the pid is still ours).
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            let _ = self.wait_exit_timeout(Duration::from_secs(10));
        }
        for pid in self
            .successors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            if !wait_pid_exit(pid, Duration::ZERO) {
                // SAFETY: kill(2) on a successor this proxy started; it was running a moment
                // ago (pid reuse within that moment is not a concern for a test).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_file(&self.config_path);
        if thread::panicking() {
            let out = self.output();
            let tail: String = {
                let start = out.len().saturating_sub(8192);
                let start = (start..out.len())
                    .find(|&i| out.is_char_boundary(i))
                    .unwrap_or(out.len());
                out[start..].to_string()
            };
            eprintln!(
                "---- edgeshard ({}) output tail ----\n{tail}\n---- end ----",
                self.engine.as_str()
            );
        }
    }
}

/// `edgeshard check` on `text` must exit 1 and print a line `FILE.toml: ...` that names
/// `key` and contains every one of `words` (case-insensitive).
pub fn expect_check_error_in(text: &str, key: &str, words: &[&str]) {
    let (code, out) = run_check(text);
    assert_eq!(
        code,
        Some(1),
        "check must exit 1 for:\n{text}\noutput:\n{out}"
    );
    let ok = out.lines().any(|l| {
        l.contains(".toml: ")
            && l.contains(key)
            && words
                .iter()
                .all(|w| l.to_ascii_lowercase().contains(&w.to_ascii_lowercase()))
    });
    assert!(
        ok,
        "check must print `FILE: {key}: ...` mentioning {words:?}; output:\n{out}"
    );
}

/// Reads one HTTP head (a request at a test backend, a response at a test client) a byte at a
/// time, so that nothing after its empty line is consumed, retrying reads interrupted by a
/// signal. `Err` holds what was read when the stream ended or failed before the head did.
pub fn read_head_bytes(s: &mut impl Read) -> Result<Vec<u8>, Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err(head),
        }
    }
    Ok(head)
}

/// Runs `edgeshard check --config FILE`; returns (exit code, stdout+stderr).
pub fn run_check(config_toml: &str) -> (Option<i32>, String) {
    let path = unique_config_path();
    std::fs::write(&path, config_toml).unwrap();
    let r = check_file(&path);
    let _ = std::fs::remove_file(&path);
    r
}

/// Runs `edgeshard check --config PATH` on a file in place; returns (exit code,
/// stdout+stderr). Fails the test if check has not exited within 20 s.
pub fn check_file(path: &std::path::Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check").arg("--config").arg(path);
    match run_bounded(cmd, Duration::from_secs(20)) {
        Ok((status, out)) => (status.code(), out),
        Err(out) => panic!(
            "edgeshard check --config {} did not exit within 20s; output:\n{out}",
            path.display()
        ),
    }
}

/// Runs `cmd` (stdin null, stdout and stderr captured) and waits at most `within` for it to
/// exit: Ok((status, stdout+stderr)), or Err(the output so far) after killing it by PID when
/// it is still running then (a command expected to exit that did not, e.g. a proxy that
/// started by mistake, fails its test instead of hanging it).
pub fn run_bounded(mut cmd: Command, within: Duration) -> Result<(ExitStatus, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let exited = watch_exit(child);
    let status = exited.recv_timeout(within);
    if status.is_err() {
        // Not reaped yet (the watcher has not reported an exit), so the pid is still ours.
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let _ = exited.recv_timeout(Duration::from_secs(10));
    }
    // The pipes close with the process (killed or exited), so the readers end.
    let out = format!("{}{}", t1.join().unwrap(), t2.join().unwrap());
    match status {
        Ok(s) => Ok((s, out)),
        Err(_) => Err(format!(
            "{cmd:?} still running after {within:?}; killed. Its output:\n{}",
            out_tail(&out)
        )),
    }
}

fn out_tail(out: &str) -> String {
    let start = out.len().saturating_sub(8192);
    let start = (start..out.len())
        .find(|&i| out.is_char_boundary(i))
        .unwrap_or(out.len());
    out[start..].to_string()
}

/// One default origin behind a catch-all route.
pub fn proxy_with_origin(engine: Engine) -> (Proxy, Origin) {
    let origin = Origin::start("origin");
    let proxy = Config::single(origin.addr()).start(engine);
    (proxy, origin)
}

/// Sends `raw` and asserts the RFC 9112 rejection: a 400 with
/// `Connection: close`, then the connection is closed, and the origin got
/// no request head at all.
pub fn assert_rejected_400(proxy: &Proxy, origin: &Origin, raw: &[u8]) {
    let mut c = Client::connect(proxy.addr());
    c.send(raw);
    let what = String::from_utf8_lossy(raw).into_owned();
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("expected 400 for {what:?}, got error {e}"));
    assert_eq!(
        r.status(),
        400,
        "request {what:?} must be rejected with 400; got:\n{}",
        r.head.raw
    );
    assert!(
        r.has_token("connection", "close"),
        "400 for {what:?} must carry Connection: close; got:\n{}",
        r.head.raw
    );
    c.expect_closed();
    assert_eq!(
        origin.head_count(),
        0,
        "origin must receive nothing for rejected request {what:?}; it got {:?}",
        origin.heads()
    );
}

/// Like assert_rejected_400, but for body-framing errors where a streaming
/// proxy may already have forwarded the head: the origin must never see a
/// complete request.
pub fn assert_rejected_400_body(proxy: &Proxy, origin: &Origin, raw: &[u8]) {
    let mut c = Client::connect(proxy.addr());
    c.send(raw);
    let what = String::from_utf8_lossy(raw).into_owned();
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("expected 400 for {what:?}, got error {e}"));
    assert_eq!(
        r.status(),
        400,
        "request {what:?} must be rejected with 400; got:\n{}",
        r.head.raw
    );
    assert!(
        r.has_token("connection", "close"),
        "400 for {what:?} must carry Connection: close; got:\n{}",
        r.head.raw
    );
    c.expect_closed();
    assert_eq!(
        origin.request_count(),
        0,
        "origin must not receive a complete request for {what:?}; it got {:?}",
        origin
            .requests()
            .iter()
            .map(|r| r.raw_head.clone())
            .collect::<Vec<_>>()
    );
}

// -- Binary upgrades: successors are not our children; they are watched by pid. --

/// Waits up to `within` for process `pid` (not our child: a successor) to exit.
pub fn wait_pid_exit(pid: u32, within: Duration) -> bool {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        return true; // already gone
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the call; `fd` is ours and closed right after.
    let n = unsafe { libc::poll(&mut p, 1, within.as_millis() as i32) };
    // SAFETY: `fd` came from pidfd_open above and is closed once.
    unsafe { libc::close(fd) };
    n == 1
}

pub fn terminate_pid(pid: u32) {
    // SAFETY: kill(2) on a successor this test caused to be started and has not seen exit.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert!(
        wait_pid_exit(pid, Duration::from_secs(20)),
        "successor {pid} did not exit on SIGTERM"
    );
}

/// The pid of the `n`-th successor, from its predecessor's log line.
pub fn successor_pid(proxy: &Proxy, n: usize) -> u32 {
    let needle = "binary upgrade: the new process serves the listeners";
    proxy.wait_for_output(needle, n, Duration::from_secs(60));
    let out = proxy.output();
    let line = out
        .lines()
        .filter(|l| l.contains(needle))
        .nth(n - 1)
        .unwrap();
    let pid: u32 = line.rsplit("pid=").next().unwrap().trim().parse().unwrap();
    proxy.successors.lock().unwrap().push(pid);
    pid
}
