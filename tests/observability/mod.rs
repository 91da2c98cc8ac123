//! Observability (issue 4): `/metrics` parsed by Prometheus's own parser, `/status`,
//! `/healthz`, `/ready`, backend drain/enable, admin token and robustness, the access log
//! (formats, sampling, rotation under load), request ids, the error-log rate limit, and the
//! config checks of `[admin]`, `[log]` and `[request_id]`.
//!
//! Helpers shared by the submodules live here.

use crate::support::*;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod access_log;
mod access_syslog;
mod access_template;
mod admin;
mod admin_limits;
mod counters;
mod errors;
mod metrics;
mod request_id;
mod weights;

/// A directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "edgeshard-obs-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn root(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Re-checks `f` each time `fd` becomes readable (after `drain`), until it returns Some;
/// panics naming `what` if that has not happened within `within`. Nothing here sleeps: the
/// wait is poll(2) on the descriptor, bounded by what is left of the deadline.
fn wait_on_fd<T>(
    fd: BorrowedFd<'_>,
    within: Duration,
    what: &str,
    mut drain: impl FnMut(),
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("{what}: not reached within {within:?}");
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd that outlives the call, and `fd` is open for it
        // (borrowed from its owner). Exercised by every access-log test.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        drain();
    }
}

/// Waits until `f` (which reads files in `dir`) returns Some, re-checking it whenever a file
/// in `dir` is created, written, closed or moved in (inotify); at most `within`. The watch is
/// set before the first check, so no write between a check and the wait is missed.
fn wait_for_files<T>(dir: &Path, within: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: inotify_init1 takes flags only; the new descriptor is owned right below.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    assert!(
        raw >= 0,
        "inotify_init1: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a descriptor this function just opened and nothing else owns.
    let inotify = unsafe { OwnedFd::from_raw_fd(raw) };
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mask = libc::IN_CREATE | libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO;
    // SAFETY: `path` is a NUL-terminated string alive for the call; `inotify` is open.
    let wd = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), mask) };
    assert!(
        wd >= 0,
        "inotify_add_watch {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    let drain = || {
        let mut events = [0u8; 4096];
        // SAFETY: reads at most `events.len()` bytes into `events`, which outlives the call;
        // the descriptor is non-blocking, so this stops at -1 (EAGAIN) once it is empty.
        while unsafe {
            libc::read(
                inotify.as_raw_fd(),
                events.as_mut_ptr().cast(),
                events.len(),
            )
        } > 0
        {}
    };
    wait_on_fd(inotify.as_fd(), within, what, drain, f)
}

/// The complete lines of a file (a missing file has none; a last line without its newline
/// is left out: the writer may be in the middle of it).
fn read_lines(path: &Path) -> Vec<String> {
    let text = match std::fs::read(path) {
        Ok(b) => {
            String::from_utf8(b).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()))
        }
        Err(_) => return Vec::new(),
    };
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|l| l.trim_end_matches('\n').to_string())
        .collect()
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `[log]` writing the access log to `path`, flushed every 50 ms, with extra raw lines.
fn access_log_section(path: &Path, extra: &str) -> String {
    format!(
        "access = \"{}\"\naccess_flush = \"50ms\"\n{extra}",
        path.display()
    )
}

/// One GET on `c`, returning the response (panics on a transport error).
fn get_on(c: &mut Client, host: &str, path: &str) -> Response {
    c.send(&get(host, path));
    c.read_response()
}

/// Holds one request in flight at the lock-step backend `x`, whose upstream also has the
/// origin `y` (round robin). Sends on one connection until a request reaches `x` (within two
/// requests, since round robin alternates on a shard); returns the client waiting for its
/// response and the backend side of the held request, its head already read.
fn hold_at(proxy: SocketAddr, x: &LockStep, y: &Origin, host: &str) -> (Client, LockConn) {
    let mut c = Client::connect(proxy);
    for attempt in 0..2 {
        let before = y.request_count();
        c.send(&get(host, &format!("/hold/{attempt}")));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(mut conn) = x.try_accept(Duration::from_millis(20)) {
                let head = conn.read_head();
                assert!(
                    head.starts_with(&format!("GET /hold/{attempt} ")),
                    "{head:?}"
                );
                return (c, conn);
            }
            if y.request_count() > before {
                let r = c.read_response();
                assert_eq!(r.status(), 200, "{}", r.head.raw);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "request {attempt} reached neither backend within 10 s"
            );
        }
    }
    panic!("two requests on one connection never reached the lock-step backend (round robin?)");
}

/// Runs wrk against `url` (bounded); returns the number of requests wrk completed.
fn wrk(url: &str, connections: u32, seconds: u32) -> u64 {
    let child = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk is installed (.ci/run installs it)");
    let pid = child.id();
    // wrk's exit is signalled through a channel by the thread that waits for it.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(u64::from(seconds) + 20)) {
        Ok(out) => out.expect("wrk output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("wrk did not finish in time");
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("Non-2xx"), "wrk got errors:\n{text}");
    text.lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .and_then(|(n, _)| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no `N requests in` in wrk's output:\n{text}"))
}

/// A parsed `combined` access-log line.
#[derive(Debug)]
struct Combined {
    client: IpAddr,
    /// The Basic user name, `-` without one.
    user: String,
    time: String,
    /// None for `"-"` (refused before the request line was parsed).
    request: Option<(String, String, String)>,
    status: u16,
    bytes: u64,
    referer: String,
    user_agent: String,
    rt: String,
    urt: String,
    route: String,
    upstream: String,
    backend: String,
    bytes_in: u64,
    rid: String,
}

/// A quoted field: printable ASCII, no raw `"`, backslashes only as `\xHH`.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let rest = s.strip_prefix('"').ok_or("expected a quote")?;
    let end = rest.find('"').ok_or("unterminated quoted field")?;
    let inner = &rest[..end];
    let b = inner.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !(0x20..0x7f).contains(&b[i]) {
            return Err(format!("unescaped byte {:#x} in {inner:?}", b[i]));
        }
        if b[i] == b'\\' {
            let ok = b.len() >= i + 4
                && b[i + 1] == b'x'
                && b[i + 2].is_ascii_hexdigit()
                && b[i + 3].is_ascii_hexdigit();
            if !ok {
                return Err(format!("bad escape in {inner:?}"));
            }
            i += 4;
        } else {
            i += 1;
        }
    }
    Ok((inner.to_string(), &rest[end + 1..]))
}

fn seconds_field(v: &str) -> bool {
    match v.split_once('.') {
        Some((s, ms)) => {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && ms.len() == 3
                && ms.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// `28/Nov/2026:18:43:09 +0000`
fn combined_time_ok(t: &str) -> bool {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    t.len() == 26
        && digits(0..2)
        && b[2] == b'/'
        && MONTHS.contains(&&t[3..6])
        && b[6] == b'/'
        && digits(7..11)
        && b[11] == b':'
        && digits(12..14)
        && b[14] == b':'
        && digits(15..17)
        && b[17] == b':'
        && digits(18..20)
        && &t[20..] == " +0000"
}

/// Parses one combined line strictly:
/// `IP - - [TIME] "REQUEST" STATUS BYTES "REFERER" "UA" rt=S urt=S|- route=R upstream=U
/// backend=B in=N rid=ID`.
fn parse_combined(line: &str) -> Result<Combined, String> {
    let (ip, rest) = line.split_once(" - ").ok_or("no ` - `")?;
    let client: IpAddr = ip.parse().map_err(|e| format!("client {ip:?}: {e}"))?;
    let (user, rest) = rest.split_once(" [").ok_or("no ` [`")?;
    let (time, rest) = rest.split_once("] ").ok_or("no `] `")?;
    if !combined_time_ok(time) {
        return Err(format!("bad time {time:?}"));
    }
    let (req, rest) = quoted(rest)?;
    let request = if req == "-" {
        None
    } else {
        let parts: Vec<&str> = req.split(' ').collect();
        match parts.as_slice() {
            [m, t, p]
                if !m.is_empty() && !t.is_empty() && (*p == "HTTP/1.1" || *p == "HTTP/1.0") =>
            {
                Some((m.to_string(), t.to_string(), p.to_string()))
            }
            _ => return Err(format!("bad request field {req:?}")),
        }
    };
    let rest = rest.strip_prefix(' ').ok_or("no space after the request")?;
    let mut it = rest.splitn(3, ' ');
    let status: u16 = it
        .next()
        .and_then(|s| (s.len() == 3).then_some(s))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status")?;
    let bytes: u64 = it.next().and_then(|s| s.parse().ok()).ok_or("bad bytes")?;
    let rest = it.next().ok_or("line ends after bytes")?;
    let (referer, rest) = quoted(rest)?;
    let rest = rest.strip_prefix(' ').ok_or("no space after the referer")?;
    let (user_agent, rest) = quoted(rest)?;
    let rest = rest
        .strip_prefix(' ')
        .ok_or("no space after the user agent")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let keys = ["rt", "urt", "route", "upstream", "backend", "in", "rid"];
    if fields.len() != keys.len() {
        return Err(format!(
            "expected {keys:?} after the user agent, got {rest:?}"
        ));
    }
    let mut vals = Vec::new();
    for (f, k) in fields.iter().zip(keys) {
        let v = f
            .strip_prefix(k)
            .and_then(|v| v.strip_prefix('='))
            .ok_or_else(|| format!("expected {k}=..., got {f:?}"))?;
        if v.is_empty() {
            return Err(format!("empty {k}"));
        }
        vals.push(v.to_string());
    }
    if !seconds_field(&vals[0]) {
        return Err(format!("bad rt {:?}", vals[0]));
    }
    if vals[1] != "-" && !seconds_field(&vals[1]) {
        return Err(format!("bad urt {:?}", vals[1]));
    }
    if vals[4] != "-" {
        vals[4]
            .parse::<SocketAddr>()
            .map_err(|e| format!("bad backend {:?}: {e}", vals[4]))?;
    }
    let bytes_in: u64 = vals[5]
        .parse()
        .map_err(|_| format!("bad in {:?}", vals[5]))?;
    Ok(Combined {
        client,
        user: user.to_string(),
        time: time.to_string(),
        request,
        status,
        bytes,
        referer,
        user_agent,
        rt: vals[0].clone(),
        urt: vals[1].clone(),
        route: vals[2].clone(),
        upstream: vals[3].clone(),
        backend: vals[4].clone(),
        bytes_in,
        rid: vals[6].clone(),
    })
}

const JSON_KEYS: [&str; 17] = [
    "time",
    "client",
    "method",
    "uri",
    "protocol",
    "host",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_us",
    "upstream_us",
    "route",
    "upstream",
    "backend",
    "request_id",
    "referer",
    "user_agent",
];

/// `2026-11-28T18:43:09.123Z`
fn iso_ms_ok(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    t.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

/// Parses one JSON access-log line and checks its keys and their types.
fn parse_json_line(line: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let obj = v.as_object().ok_or("not an object")?;
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    let mut want = JSON_KEYS.to_vec();
    want.sort();
    if keys != want {
        return Err(format!("keys {keys:?}, expected {want:?}"));
    }
    let time = v["time"].as_str().ok_or("time is not a string")?;
    if !iso_ms_ok(time) {
        return Err(format!("bad time {time:?}"));
    }
    v["client"]
        .as_str()
        .and_then(|c| c.parse::<IpAddr>().ok())
        .ok_or("client is not an IP")?;
    for k in [
        "method",
        "uri",
        "protocol",
        "host",
        "request_id",
        "referer",
        "user_agent",
    ] {
        if !v[k].is_string() {
            return Err(format!("{k} is not a string"));
        }
    }
    for k in ["bytes_in", "bytes_out", "duration_us"] {
        if !v[k].is_u64() {
            return Err(format!("{k} is not an unsigned integer"));
        }
    }
    if !(v["status"].is_u64() || v["status"].is_null()) {
        return Err("status is neither a number nor null".into());
    }
    if !(v["upstream_us"].is_u64() || v["upstream_us"].is_null()) {
        return Err("upstream_us is neither a number nor null".into());
    }
    for k in ["route", "upstream", "backend"] {
        if !(v[k].is_string() || v[k].is_null()) {
            return Err(format!("{k} is neither a string nor null"));
        }
    }
    Ok(v)
}
