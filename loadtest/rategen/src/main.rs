//! rategen: open-loop HTTP/1.1 keep-alive load generator (coordinated-omission corrected).
//!
//! Request i is *intended* to be sent at `start + i / rate`. Request i belongs to connection
//! `i % connections` (round robin, so every connection offers rate/connections). A connection has
//! at most one request outstanding (no pipelining): if it is still busy (or reconnecting) when the
//! slot of its next request comes, that request waits in the connection's queue. Latency is
//! measured from the intended send time to the last byte of the response, so waiting in the queue
//! counts (the wrk2 correction for coordinated omission). Latencies go to an HdrHistogram (µs).
//!
//! One thread, one epoll loop, non-blocking sockets; the schedule is driven by a periodic
//! timerfd (absolute CLOCK_MONOTONIC), so sends are not rounded to epoll's millisecond timeout.
//! About four syscalls per request: send, read, timerfd read and epoll_wait (the last two shared
//! when several requests are due at one wake-up).
//!
//! usage: rategen --url http://127.0.0.1:PORT/PATH --rate R --duration S --connections C
//!                [--host H] [--cpus LIST] [--timeout S]
//!
//! Runs for `duration` seconds of schedule, then waits at most `timeout` seconds for the requests
//! still outstanding or queued (those left are `unfinished`), prints one line
//! `RESULT rate=.. sent=.. completed=.. errors=.. non2xx=.. p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=.. ...`
//! on stdout and exits. Only loopback addresses are accepted.
//!
//! Error accounting: `err_connect` (failed connects, retried every 10 ms), `err_read` (connection
//! reset/closed or malformed response while a request was outstanding), `err_write`, `timeouts`
//! (no complete response `timeout` seconds after the request was written; such a request is
//! recorded in the histogram at its age when it timed out, the connection is reopened),
//! `unfinished` (still queued or outstanding at the end). `errors` is their sum. Requests that end
//! in connect/read/write errors are not recorded in the histogram (like wrk).

use std::collections::VecDeque;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;

use hdrhistogram::Histogram;

const TIMER_TOKEN: u64 = u64::MAX;
const MAX_HEAD: usize = 64 * 1024;
const RETRY_NS: u64 = 10_000_000;

// ------------------------------------------------------------------------------------------
// arguments

struct Args {
    addr: SocketAddr,
    path: String,
    host: String,
    rate: f64,
    duration: f64,
    conns: usize,
    cpus: Vec<usize>,
    timeout: f64,
}

fn usage(msg: &str) -> ! {
    eprintln!("rategen: {msg}");
    eprintln!(
        "usage: rategen --url http://127.0.0.1:PORT/PATH --rate REQ_PER_S --duration SECONDS \
         --connections C [--host HOST] [--cpus 0,1|0-3] [--timeout SECONDS (default 5)]"
    );
    std::process::exit(2);
}

fn parse_cpus(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| x.trim().parse::<usize>().unwrap_or_else(|_| usage("bad --cpus"));
        if let Some((a, b)) = part.split_once('-') {
            v.extend(num(a)..=num(b));
        } else {
            v.push(num(part));
        }
    }
    v
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let (mut url, mut rate, mut duration, mut conns) = (None, None, None, None);
    let (mut host, mut cpus, mut timeout) = (None, Vec::new(), 5.0f64);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--url" => url = Some(val()),
            "--rate" => rate = Some(val().parse::<f64>().unwrap_or_else(|_| usage("bad --rate"))),
            "--duration" => duration = Some(val().parse::<f64>().unwrap_or_else(|_| usage("bad --duration"))),
            "--connections" | "-c" => {
                conns = Some(val().parse::<usize>().unwrap_or_else(|_| usage("bad --connections")))
            }
            "--host" => host = Some(val()),
            "--cpus" => cpus = parse_cpus(&val()),
            "--timeout" => timeout = val().parse::<f64>().unwrap_or_else(|_| usage("bad --timeout")),
            "-h" | "--help" => usage("help"),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let url = url.unwrap_or_else(|| usage("--url is required"));
    let rate = rate.unwrap_or_else(|| usage("--rate is required"));
    let duration = duration.unwrap_or_else(|| usage("--duration is required"));
    let conns = conns.unwrap_or_else(|| usage("--connections is required"));
    if !(rate > 0.0 && rate <= 10_000_000.0) {
        usage("--rate must be in (0, 1e7]");
    }
    if !(duration > 0.0 && duration <= 3600.0) {
        usage("--duration must be in (0, 3600]");
    }
    if conns == 0 || conns > 100_000 {
        usage("--connections must be in [1, 100000]");
    }
    if !(timeout > 0.0 && timeout <= 600.0) {
        usage("--timeout must be in (0, 600]");
    }
    let rest = url.strip_prefix("http://").unwrap_or_else(|| usage("only http:// URLs"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let with_port = if authority.rsplit_once(':').map_or(false, |(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| usage(&format!("cannot resolve {authority}")));
    if !addr.ip().is_loopback() {
        usage(&format!("{} is not a loopback address (rategen is for local benchmarks only)", addr.ip()));
    }
    Args { addr, path, host: host.unwrap_or_else(|| authority.to_string()), rate, duration, conns, cpus, timeout }
}

// ------------------------------------------------------------------------------------------
// small libc helpers

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn die(msg: &str) -> ! {
    eprintln!("rategen: {msg}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

fn pin(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            die("sched_setaffinity");
        }
    }
}

/// Non-blocking connect. Ok(true): connected, Ok(false): in progress (wait for EPOLLOUT).
fn connect_nb(addr: &SocketAddr) -> Result<(RawFd, bool), i32> {
    unsafe {
        let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let rc = match addr.ip() {
            IpAddr::V4(ip) => {
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: addr.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
                    sin_zero: [0; 8],
                };
                libc::connect(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32)
            }
            IpAddr::V6(ip) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = addr.port().to_be();
                sa.sin6_addr.s6_addr = ip.octets();
                libc::connect(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32)
            }
        };
        if rc == 0 {
            return Ok((fd, true));
        }
        let e = errno();
        if e == libc::EINPROGRESS {
            return Ok((fd, false));
        }
        libc::close(fd);
        Err(e)
    }
}

fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut err as *mut _ as *mut libc::c_void, &mut len)
    };
    err
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------------------------------------
// response parsing (one response at a time; no pipelining)

#[derive(Clone, Copy, PartialEq)]
enum Parse {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailer,
    UntilClose,
}

enum Step {
    More,
    Done,
    Bad(&'static str),
}

#[derive(PartialEq, Clone, Copy)]
enum State {
    Connecting,
    Ready,
    Down { retry_at: u64 },
}

struct Conn {
    fd: RawFd,
    state: State,
    queue: VecDeque<u64>,         // intended send times (abs ns) waiting for this connection
    inflight: Option<(u64, u64)>, // (intended, written at)
    woff: usize,                  // bytes of the request written so far
    want_out: bool,               // EPOLLOUT registered
    rbuf: Vec<u8>,
    parse: Parse,
    status: u16,
    close_after: bool,
}

impl Conn {
    /// Advance the parser over rbuf.
    fn advance(&mut self) -> Step {
        loop {
            match self.parse {
                Parse::Head => {
                    let Some(end) = find(&self.rbuf, b"\r\n\r\n") else {
                        return if self.rbuf.len() > MAX_HEAD { Step::Bad("response head too large") } else { Step::More };
                    };
                    let head = &self.rbuf[..end];
                    let mut lines = head.split(|&b| b == b'\n');
                    let sl = lines.next().unwrap_or(b"");
                    if !sl.starts_with(b"HTTP/1.") || sl.len() < 12 {
                        return Step::Bad("bad status line");
                    }
                    let status = std::str::from_utf8(&sl[9..12]).ok().and_then(|s| s.parse::<u16>().ok());
                    let Some(status) = status else { return Step::Bad("bad status code") };
                    let http10 = sl.starts_with(b"HTTP/1.0");
                    let (mut clen, mut chunked, mut close, mut keep) = (None, false, false, false);
                    for l in lines {
                        let l = l.strip_suffix(b"\r").unwrap_or(l);
                        let Some(c) = l.iter().position(|&b| b == b':') else { continue };
                        let name = &l[..c];
                        let v = std::str::from_utf8(&l[c + 1..]).unwrap_or("").trim().to_ascii_lowercase();
                        if name.eq_ignore_ascii_case(b"content-length") {
                            match v.parse::<u64>() {
                                Ok(n) => clen = Some(n),
                                Err(_) => return Step::Bad("bad content-length"),
                            }
                        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                            chunked = v.split(',').any(|t| t.trim() == "chunked");
                        } else if name.eq_ignore_ascii_case(b"connection") {
                            close |= v.split(',').any(|t| t.trim() == "close");
                            keep |= v.split(',').any(|t| t.trim() == "keep-alive");
                        }
                    }
                    self.rbuf.drain(..end + 4);
                    if (100..200).contains(&status) {
                        continue; // interim response: the real one follows
                    }
                    self.status = status;
                    self.close_after = close || (http10 && !keep);
                    self.parse = if status == 204 || status == 304 {
                        return Step::Done;
                    } else if chunked {
                        Parse::ChunkSize
                    } else if let Some(n) = clen {
                        if n == 0 {
                            return Step::Done;
                        }
                        Parse::Length(n)
                    } else {
                        self.close_after = true;
                        Parse::UntilClose
                    };
                }
                Parse::Length(rem) | Parse::ChunkData(rem) => {
                    let take = (rem as usize).min(self.rbuf.len());
                    self.rbuf.drain(..take);
                    let left = rem - take as u64;
                    let chunk = matches!(self.parse, Parse::ChunkData(_));
                    if left > 0 {
                        self.parse = if chunk { Parse::ChunkData(left) } else { Parse::Length(left) };
                        return Step::More;
                    }
                    if !chunk {
                        return Step::Done;
                    }
                    self.parse = Parse::ChunkEnd;
                }
                Parse::ChunkEnd => {
                    if self.rbuf.len() < 2 {
                        return Step::More;
                    }
                    if &self.rbuf[..2] != b"\r\n" {
                        return Step::Bad("bad chunk terminator");
                    }
                    self.rbuf.drain(..2);
                    self.parse = Parse::ChunkSize;
                }
                Parse::ChunkSize => {
                    let Some(e) = find(&self.rbuf, b"\r\n") else {
                        return if self.rbuf.len() > 1024 { Step::Bad("chunk size line too long") } else { Step::More };
                    };
                    let line = std::str::from_utf8(&self.rbuf[..e]).unwrap_or("");
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let Ok(n) = u64::from_str_radix(hex, 16) else { return Step::Bad("bad chunk size") };
                    self.rbuf.drain(..e + 2);
                    self.parse = if n == 0 { Parse::Trailer } else { Parse::ChunkData(n) };
                }
                Parse::Trailer => {
                    let Some(e) = find(&self.rbuf, b"\r\n") else {
                        return if self.rbuf.len() > MAX_HEAD { Step::Bad("trailer too large") } else { Step::More };
                    };
                    self.rbuf.drain(..e + 2);
                    if e == 0 {
                        return Step::Done;
                    }
                }
                Parse::UntilClose => {
                    self.rbuf.clear();
                    return Step::More;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// the generator

#[derive(Default)]
struct Counters {
    sent: u64,
    completed: u64,
    non2xx: u64,
    err_connect: u64,
    err_read: u64,
    err_write: u64,
    timeouts: u64,
    reconnects: u64,
}

struct Gen {
    ep: RawFd,
    addr: SocketAddr,
    req: Vec<u8>,
    conns: Vec<Conn>,
    hist: Histogram<u64>,
    lag: Histogram<u64>,
    c: Counters,
    scratch: Vec<u8>,
    timeout_ns: u64,
    last_error: String,
}

impl Gen {
    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) {
        let mut ev = libc::epoll_event { events, u64: token };
        if unsafe { libc::epoll_ctl(self.ep, op, fd, &mut ev) } != 0 && op != libc::EPOLL_CTL_DEL {
            die("epoll_ctl");
        }
    }

    fn open(&mut self, i: usize, now: u64) {
        match connect_nb(&self.addr) {
            Ok((fd, done)) => {
                let c = &mut self.conns[i];
                c.fd = fd;
                c.rbuf.clear();
                c.parse = Parse::Head;
                c.close_after = false;
                c.woff = 0;
                if done {
                    c.state = State::Ready;
                    c.want_out = false;
                    self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, i as u64);
                    self.try_send(i, now);
                } else {
                    c.state = State::Connecting;
                    c.want_out = true;
                    self.ctl(libc::EPOLL_CTL_ADD, fd, (libc::EPOLLIN | libc::EPOLLOUT) as u32, i as u64);
                }
            }
            Err(e) => {
                self.c.err_connect += 1;
                self.last_error = format!("connect: {}", std::io::Error::from_raw_os_error(e));
                self.conns[i].state = State::Down { retry_at: now + RETRY_NS };
            }
        }
    }

    /// Close the connection; the outstanding request (if any) is lost (the caller counts it).
    /// `retry_at`: None = reconnect at once; Some(t) = reconnect from `maintain` at t (used on the
    /// write-error path, so open -> send -> write error -> open cannot recurse).
    fn close(&mut self, i: usize, now: u64, retry_at: Option<u64>) {
        let fd = self.conns[i].fd;
        if fd >= 0 {
            self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
            unsafe { libc::close(fd) };
        }
        let c = &mut self.conns[i];
        c.fd = -1;
        c.inflight = None;
        c.want_out = false;
        c.state = State::Down { retry_at: retry_at.unwrap_or(now) };
        self.c.reconnects += 1;
        if retry_at.is_none() {
            self.open(i, now);
        }
    }

    fn set_out(&mut self, i: usize, want: bool) {
        if self.conns[i].want_out != want {
            self.conns[i].want_out = want;
            let ev = if want { libc::EPOLLIN | libc::EPOLLOUT } else { libc::EPOLLIN } as u32;
            self.ctl(libc::EPOLL_CTL_MOD, self.conns[i].fd, ev, i as u64);
        }
    }

    /// Send the next queued request if the connection is idle.
    fn try_send(&mut self, i: usize, now: u64) {
        let c = &mut self.conns[i];
        if c.state != State::Ready || c.inflight.is_some() {
            return;
        }
        let Some(intended) = c.queue.pop_front() else { return };
        c.inflight = Some((intended, now));
        c.woff = 0;
        c.parse = Parse::Head;
        self.c.sent += 1;
        self.flush(i, now);
    }

    /// Write the rest of the outstanding request.
    fn flush(&mut self, i: usize, now: u64) {
        loop {
            let c = &mut self.conns[i];
            if c.inflight.is_none() || c.woff >= self.req.len() {
                self.set_out(i, false);
                return;
            }
            let buf = &self.req[c.woff..];
            let n = unsafe {
                libc::send(c.fd, buf.as_ptr() as *const libc::c_void, buf.len(), libc::MSG_NOSIGNAL)
            };
            if n >= 0 {
                c.woff += n as usize;
                continue;
            }
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            if e == libc::EAGAIN {
                self.set_out(i, true);
                return;
            }
            self.c.err_write += 1;
            self.last_error = format!("write: {}", std::io::Error::from_raw_os_error(e));
            self.close(i, now, Some(now));
            return;
        }
    }

    fn complete(&mut self, i: usize, now: u64) {
        let c = &mut self.conns[i];
        let (intended, _) = c.inflight.take().expect("complete without request");
        let status = c.status;
        let close_after = c.close_after || !c.rbuf.is_empty();
        self.hist.saturating_record((now.saturating_sub(intended) / 1000).max(1));
        self.c.completed += 1;
        if !(200..300).contains(&status) {
            self.c.non2xx += 1;
        }
        if close_after {
            self.close(i, now, None);
        } else {
            self.try_send(i, now);
        }
    }

    fn readable(&mut self, i: usize, now: u64) {
        loop {
            let fd = self.conns[i].fd;
            let n = unsafe { libc::read(fd, self.scratch.as_mut_ptr() as *mut libc::c_void, self.scratch.len()) };
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                if e == libc::EAGAIN {
                    return;
                }
                if self.conns[i].inflight.is_some() {
                    self.c.err_read += 1;
                    self.last_error = format!("read: {}", std::io::Error::from_raw_os_error(e));
                }
                self.close(i, now, None);
                return;
            }
            if n == 0 {
                // EOF: completes a read-until-close response, otherwise an error if a request was out
                let c = &self.conns[i];
                if c.inflight.is_some() {
                    if c.parse == Parse::UntilClose {
                        self.complete(i, now); // closes and reconnects
                        return;
                    }
                    self.c.err_read += 1;
                    self.last_error = "read: connection closed by peer".into();
                }
                self.close(i, now, None);
                return;
            }
            let short = (n as usize) < self.scratch.len();
            let c = &mut self.conns[i];
            if c.inflight.is_none() {
                self.c.err_read += 1;
                self.last_error = "read: data without outstanding request".into();
                self.close(i, now, None);
                return;
            }
            c.rbuf.extend_from_slice(&self.scratch[..n as usize]);
            match c.advance() {
                Step::More => {
                    if short {
                        return; // socket drained; level-triggered epoll reports more data
                    }
                }
                Step::Done => {
                    self.complete(i, now);
                    if short || self.conns[i].inflight.is_none() || self.conns[i].fd != fd {
                        return; // drained, idle now or reopened: epoll reports anything further
                    }
                }
                Step::Bad(why) => {
                    self.c.err_read += 1;
                    self.last_error = format!("response: {why}");
                    self.close(i, now, None);
                    return;
                }
            }
        }
    }

    fn event(&mut self, i: usize, ev: u32, now: u64) {
        if self.conns[i].fd < 0 {
            return;
        }
        if self.conns[i].state == State::Connecting {
            if ev & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                return;
            }
            let err = so_error(self.conns[i].fd);
            if err != 0 || ev & libc::EPOLLHUP as u32 != 0 {
                self.c.err_connect += 1;
                self.last_error = format!("connect: {}", std::io::Error::from_raw_os_error(err));
                self.close(i, now, Some(now + RETRY_NS));
                return;
            }
            self.conns[i].state = State::Ready;
            self.set_out(i, false);
            self.try_send(i, now);
            return;
        }
        if ev & libc::EPOLLOUT as u32 != 0 {
            self.flush(i, now);
            if self.conns[i].fd < 0 {
                return;
            }
        }
        if ev & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            self.readable(i, now);
        }
    }

    /// Retries of closed connections and request timeouts.
    fn maintain(&mut self, now: u64) {
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Down { retry_at } if now >= retry_at => self.open(i, now),
                State::Ready => {
                    if let Some((intended, sent)) = self.conns[i].inflight {
                        if now.saturating_sub(sent) >= self.timeout_ns {
                            self.c.timeouts += 1;
                            self.hist.saturating_record((now.saturating_sub(intended) / 1000).max(1));
                            self.last_error = "timeout".into();
                            self.close(i, now, None);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn pending(&self) -> u64 {
        self.conns.iter().map(|c| c.queue.len() as u64 + c.inflight.is_some() as u64).sum()
    }
}

fn main() {
    let a = parse_args();
    pin(&a.cpus);
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    let req = format!("GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rategen\r\n\r\n", a.path, a.host).into_bytes();
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        die("epoll_create1");
    }
    let conns = (0..a.conns)
        .map(|_| Conn {
            fd: -1,
            state: State::Down { retry_at: 0 },
            queue: VecDeque::new(),
            inflight: None,
            woff: 0,
            want_out: false,
            rbuf: Vec::with_capacity(4096),
            parse: Parse::Head,
            status: 0,
            close_after: false,
        })
        .collect();
    let hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram");
    let lag = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram");
    let mut g = Gen {
        ep,
        addr: a.addr,
        req,
        conns,
        hist,
        lag,
        c: Counters::default(),
        scratch: vec![0u8; 64 * 1024],
        timeout_ns: (a.timeout * 1e9) as u64,
        last_error: String::new(),
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let wait = |g: &mut Gen, events: &mut Vec<libc::epoll_event>, ms: i32| -> usize {
        let n = unsafe { libc::epoll_wait(g.ep, events.as_mut_ptr(), events.len() as i32, ms) };
        if n < 0 {
            if errno() == libc::EINTR {
                return 0;
            }
            die("epoll_wait");
        }
        n as usize
    };

    // connect everything before the clock starts (at most 5 s)
    let t_conn = now_ns();
    for i in 0..a.conns {
        g.open(i, t_conn);
    }
    loop {
        let now = now_ns();
        let ready = g.conns.iter().filter(|c| c.state == State::Ready).count();
        if ready == a.conns {
            break;
        }
        if now > t_conn + 5_000_000_000 {
            eprintln!("rategen: only {ready}/{} connections to {} after 5 s ({})", a.conns, a.addr, g.last_error);
            println!("RESULT rate={:.1} sent=0 completed=0 errors={} non2xx=0 failed=connect", a.rate, a.conns - ready);
            std::process::exit(1);
        }
        let n = wait(&mut g, &mut events, 10);
        let now = now_ns();
        for k in 0..n {
            let (tok, ev) = (events[k].u64, events[k].events);
            g.event(tok as usize, ev, now);
        }
        g.maintain(now);
    }
    g.c.err_connect = 0; // start-up connects are not part of the measurement
    g.c.reconnects = 0;

    // schedule: request i at start + i * interval
    // integer-ns interval, so the periodic timer and the schedule never drift apart
    let ival = ((1e9 / a.rate).round() as u64).max(100);
    let rate = 1e9 / ival as f64;
    let total = ((a.duration * 1e9) as u64) / ival;
    let start = now_ns() + 10_000_000;
    let end = start + (a.duration * 1e9) as u64;
    let drain_deadline = end + g.timeout_ns + 100_000_000;
    let tfd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if tfd < 0 {
        die("timerfd_create");
    }
    let ns_ts = |ns: u64| libc::timespec { tv_sec: (ns / 1_000_000_000) as _, tv_nsec: (ns % 1_000_000_000) as _ };
    let spec = libc::itimerspec { it_interval: ns_ts(ival), it_value: ns_ts(start) };
    if unsafe { libc::timerfd_settime(tfd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) } != 0 {
        die("timerfd_settime");
    }
    // (a periodic timerfd is only re-armed when its counter is read: it must be read on every wake)
    g.ctl(libc::EPOLL_CTL_ADD, tfd, libc::EPOLLIN as u32, TIMER_TOKEN);
    let mut timer_on = true;
    let mut next_i: u64 = 0;
    let mut next_maint = start;
    let last_done;
    loop {
        let now = now_ns();
        // hand out every request whose slot has come
        while next_i < total {
            let t = start + next_i * ival;
            if t > now {
                break;
            }
            let i = (next_i % a.conns as u64) as usize;
            g.conns[i].queue.push_back(t);
            g.lag.saturating_record(((now - t) / 1000).max(1));
            next_i += 1;
            g.try_send(i, now);
        }
        if next_i >= total && timer_on {
            g.ctl(libc::EPOLL_CTL_DEL, tfd, 0, 0);
            timer_on = false;
        }
        if now >= next_maint {
            g.maintain(now);
            next_maint = now + 1_000_000;
        }
        if next_i >= total {
            let p = g.pending();
            if p == 0 || now >= drain_deadline {
                last_done = now;
                break;
            }
        }
        let n = wait(&mut g, &mut events, if timer_on { 100 } else { 1 });
        let now = now_ns();
        for k in 0..n {
            let (tok, ev) = (events[k].u64, events[k].events);
            if tok == TIMER_TOKEN {
                let mut buf = [0u8; 8];
                unsafe { libc::read(tfd, buf.as_mut_ptr() as *mut libc::c_void, 8) };
            } else {
                g.event(tok as usize, ev, now);
            }
        }
    }
    let unfinished = g.pending();
    for i in 0..g.conns.len() {
        if g.conns[i].fd >= 0 {
            unsafe { libc::close(g.conns[i].fd) };
        }
    }
    unsafe { libc::close(tfd) };

    let c = &g.c;
    let errors = c.err_connect + c.err_read + c.err_write + c.timeouts + unfinished;
    let h = &g.hist;
    let q = |p: f64| if h.len() > 0 { h.value_at_quantile(p) } else { 0 };
    let elapsed = (last_done - start) as f64 / 1e9;
    let line = format!(
        "RESULT rate={:.1} duration_s={:.3} connections={} scheduled={} sent={} completed={} errors={} non2xx={} \
         err_connect={} err_read={} err_write={} timeouts={} unfinished={} reconnects={} achieved_rps={:.1} \
         p50_us={} p90_us={} p99_us={} p999_us={} max_us={} mean_us={:.1} lag_p99_us={} lag_max_us={} elapsed_s={:.3}",
        rate,
        a.duration,
        a.conns,
        total,
        c.sent,
        c.completed,
        errors,
        c.non2xx,
        c.err_connect,
        c.err_read,
        c.err_write,
        c.timeouts,
        unfinished,
        c.reconnects,
        c.completed as f64 / a.duration,
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        h.max(),
        if h.len() > 0 { h.mean() } else { 0.0 },
        if g.lag.len() > 0 { g.lag.value_at_quantile(0.99) } else { 0 },
        g.lag.max(),
        elapsed,
    );
    if errors > 0 && !g.last_error.is_empty() {
        eprintln!("rategen: last error: {}", g.last_error);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
