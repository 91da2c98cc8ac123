//! A small threaded HTTP/1.1 origin server that records everything the proxy
//! forwards to it.
//!
//! It parses request heads, request bodies (Content-Length and chunked,
//! streamed through SHA-256), supports keep-alive, counts connections, and
//! answers either with a built-in path-based behaviour (`Reply::Default`) or
//! with whatever the test's handler returns.

#[path = "origin_reply.rs"]
mod reply;

use super::pattern::BodyCheck;
pub use reply::default_reply;
use reply::write_reply;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Request bodies up to this size are kept in `Recorded::body`.
pub const KEEP_BODY: usize = 1 << 20;
const CONN_TIMEOUT: Duration = Duration::from_secs(60);

/// One complete request as received by the origin.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub conn: usize,
    /// 0-based index of this request on its connection.
    pub seq: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub raw_head: String,
    pub chunked: bool,
    pub body_len: u64,
    pub body_sha256: String,
    /// Offset of the first byte differing from the test pattern, if any.
    pub pattern_mismatch: Option<u64>,
    /// The body if it is at most KEEP_BODY bytes, else its first KEEP_BODY bytes.
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Content-Length framing (added automatically).
    Length,
    /// Transfer-Encoding: chunked (added automatically), varied chunk sizes.
    Chunked,
    /// `Connection: close`, no length, body, then close.
    Close,
    /// Headers exactly as given, no body bytes at all (for 204/304/liars).
    Omit,
}

pub enum Reply {
    /// Built-in behaviour, see `default_reply`.
    Default,
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        mode: BodyMode,
        /// Close the connection after the response, without announcing it.
        close_after: bool,
    },
    /// `len` bytes of the test pattern.
    Pattern { len: u64, mode: BodyMode },
    /// Bytes written verbatim, then the connection is closed if `close_after`.
    Raw { bytes: Vec<u8>, close_after: bool },
    /// Never answer; keep the connection open until the peer closes it.
    Hang,
    /// Close the connection without answering.
    Close,
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Response {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
            mode: BodyMode::Length,
            close_after: false,
        }
    }
    pub fn raw(bytes: &[u8]) -> Reply {
        Reply::Raw {
            bytes: bytes.to_vec(),
            close_after: true,
        }
    }
}

#[derive(Default, Debug)]
pub struct OriginState {
    pub accepted: usize,
    pub closed: usize,
    /// Raw request heads, in arrival order (recorded before the body is read).
    pub heads: Vec<String>,
    /// Complete requests (head + body fully received).
    pub requests: Vec<Recorded>,
    /// Protocol violations seen on the proxy->origin side.
    pub errors: Vec<String>,
}

type Handler = Box<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct Shared {
    name: String,
    state: Mutex<OriginState>,
    cv: Condvar,
    handler: Handler,
    stop: AtomicBool,
    next_conn: AtomicUsize,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut OriginState)) {
        let mut s = self.state.lock().unwrap();
        f(&mut s);
        self.cv.notify_all();
    }
}

pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Signalled by the accept thread once it has closed the listening socket.
    listener_closed: mpsc::Receiver<()>,
}

impl Origin {
    /// An origin with the built-in behaviour only.
    pub fn start(name: &str) -> Origin {
        Self::with_handler(name, |_| Reply::Default)
    }

    pub fn with_handler(
        name: &str,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let listener = listen("127.0.0.1:0".parse().unwrap()).expect("bind origin");
        Self::on_listener(name, listener, handler)
    }

    /// An origin with the built-in behaviour on `addr` (`Err`: it cannot be bound).
    pub fn start_at(name: &str, addr: SocketAddr) -> std::io::Result<Origin> {
        let listener = listen(addr)?;
        Ok(Self::on_listener(name, listener, |_| Reply::Default))
    }

    fn on_listener(
        name: &str,
        listener: TcpListener,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: Mutex::new(OriginState::default()),
            cv: Condvar::new(),
            handler: Box::new(handler),
            stop: AtomicBool::new(false),
            next_conn: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        let (closed_tx, listener_closed) = mpsc::channel();
        thread::Builder::new()
            .name(format!("origin-{name}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
                    sh.update(|s| s.accepted += 1);
                    let sh2 = sh.clone();
                    thread::spawn(move || {
                        serve_conn(&sh2, stream, id);
                        sh2.update(|s| s.closed += 1);
                    });
                }
                drop(listener);
                let _ = closed_tx.send(());
            })
            .unwrap();
        Origin {
            addr,
            shared,
            listener_closed,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn accepted(&self) -> usize {
        self.shared.state.lock().unwrap().accepted
    }
    pub fn closed(&self) -> usize {
        self.shared.state.lock().unwrap().closed
    }
    pub fn heads(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().heads.clone()
    }
    pub fn head_count(&self) -> usize {
        self.shared.state.lock().unwrap().heads.len()
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().unwrap().requests.clone()
    }
    pub fn request_count(&self) -> usize {
        self.shared.state.lock().unwrap().requests.len()
    }
    pub fn last_request(&self) -> Recorded {
        self.shared
            .state
            .lock()
            .unwrap()
            .requests
            .last()
            .cloned()
            .expect("origin received no complete request")
    }
    pub fn errors(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().errors.clone()
    }

    /// Panics if the proxy sent the origin anything that is not valid HTTP/1.1.
    pub fn assert_no_errors(&self) {
        let e = self.errors();
        assert!(
            e.is_empty(),
            "origin {} saw protocol violations from the proxy: {e:#?}",
            self.name()
        );
    }

    /// Waits (bounded) until `cond` holds on the state; returns whether it did.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&OriginState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.state.lock().unwrap();
        loop {
            if cond(&s) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self.shared.cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }
}

impl Origin {
    /// Stops accepting and returns once the listening socket is closed, so that a new
    /// connection to the origin's port is refused (connections already accepted are still
    /// served, as by a dropped origin) for as long as the returned socket lives: bound to
    /// the port beside the listener before it closed (both with `SO_REUSEPORT`), it keeps
    /// any other test's listener off the port (a `bind` to port 0 never shares one). Without
    /// it, under load, another test's proxy once listened on the "closed" origin's port.
    /// Panics if the accept thread has not closed the listener within 5 s.
    pub fn close(self) -> socket2::Socket {
        let hold = unlistened(self.addr).expect("hold the origin's port");
        self.stop_accepting();
        let closed = self.listener_closed.recv_timeout(Duration::from_secs(5));
        assert!(
            closed.is_ok(),
            "origin {} ({}) did not close its listener within 5 s",
            self.name(),
            self.addr
        );
        hold
    }

    fn stop_accepting(&self) {
        // Once only: after `close` the port is free, and another test's listener may hold it
        // by the time this origin drops; a second wake-up connect would land there.
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
    }
}

/// A listening socket without `SO_REUSEADDR` (std's `TcpListener::bind` sets it). Then the
/// connections it accepted, and their TIME_WAIT, keep its port from any other bind after the
/// origin closes: with the flag, Linux lets a socket that also has it bind next to everything
/// but a listener, and another test's proxy (binding port 0 with `SO_REUSEADDR`) was once
/// given a just-closed origin's port, so a connect to the "closed" origin succeeded. It has
/// `SO_REUSEPORT`, for [`Origin::close`]'s hold.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = unlistened(addr)?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A socket bound to `addr` with `SO_REUSEPORT` only, not listening.
fn unlistened(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

struct ConnReader {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl ConnReader {
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + (1 << 16), 0);
        let r = loop {
            match self.stream.read(&mut self.buf[old..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match r {
            Ok(n) => {
                self.buf.truncate(old + n);
                Ok(n)
            }
            Err(e) => {
                self.buf.truncate(old);
                Err(e)
            }
        }
    }

    /// Ok(None): clean EOF between requests.
    fn read_head(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            let avail = &self.buf[self.pos..];
            if let Some(i) = avail.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = avail[..i + 4].to_vec();
                self.pos += i + 4;
                return Ok(Some(head));
            }
            if avail.len() > 1 << 20 {
                return Err("request head larger than 1 MiB".into());
            }
            match self.fill() {
                Ok(0) if self.pos == self.buf.len() => return Ok(None),
                Ok(0) => {
                    return Err(format!(
                        "EOF inside request head: {:?}",
                        String::from_utf8_lossy(&self.buf[self.pos..])
                    ))
                }
                Ok(_) => {}
                Err(e) if self.pos == self.buf.len() => {
                    // Reset/timeout while idle between requests: not a protocol error.
                    let _ = e;
                    return Ok(None);
                }
                Err(e) => return Err(format!("read error inside request head: {e}")),
            }
        }
    }

    fn read_line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            let avail = &self.buf[self.pos..];
            if let Some(i) = avail.windows(2).position(|w| w == b"\r\n") {
                let line = avail[..i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if avail.len() > 64 * 1024 {
                return Err("line longer than 64 KiB in chunked body".into());
            }
            match self.fill() {
                Ok(0) => return Err("EOF inside chunked framing".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read error in chunked framing: {e}")),
            }
        }
    }

    fn read_exact_into(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        while n > 0 {
            if self.pos == self.buf.len() {
                match self.fill() {
                    Ok(0) => return Err(format!("EOF with {n} body bytes missing")),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read error with {n} body bytes missing: {e}")),
                }
            }
            let k = ((self.buf.len() - self.pos) as u64).min(n) as usize;
            sink(&self.buf[self.pos..self.pos + k]);
            self.pos += k;
            n -= k as u64;
        }
        Ok(())
    }
}

struct ParsedHead {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

fn parse_request_head(raw: &[u8]) -> Result<ParsedHead, String> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| format!("non-UTF8 request head {:?}", String::from_utf8_lossy(raw)))?;
    let text = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3
        || !(parts[2] == "HTTP/1.1" || parts[2] == "HTTP/1.0")
        || parts[0].is_empty()
    {
        return Err(format!("bad request line {line:?}"));
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.contains('\r') || l.contains('\n') || l.contains('\0') {
            return Err(format!("bare CR/LF/NUL in forwarded header line {l:?}"));
        }
        if l.starts_with(' ') || l.starts_with('\t') {
            return Err(format!("obs-fold forwarded: {l:?}"));
        }
        let Some((n, v)) = l.split_once(':') else {
            return Err(format!("forwarded header line without colon: {l:?}"));
        };
        if n.is_empty()
            || n.bytes()
                .any(|b| b == b' ' || b == b'\t' || b.is_ascii_control())
        {
            return Err(format!("bad forwarded header name {n:?}"));
        }
        headers.push((
            n.to_string(),
            v.trim_matches(|c| c == ' ' || c == '\t').to_string(),
        ));
    }
    Ok(ParsedHead {
        method: parts[0].into(),
        target: parts[1].into(),
        version: parts[2].into(),
        headers,
    })
}

fn header_all<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn serve_conn(sh: &Shared, stream: TcpStream, conn: usize) {
    let _ = stream.set_read_timeout(Some(CONN_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CONN_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut rd = ConnReader {
        stream,
        buf: Vec::with_capacity(1 << 16),
        pos: 0,
    };
    let mut seq = 0usize;
    let err = |seq: usize, msg: String| {
        sh.update(|s| s.errors.push(format!("conn {conn} req {seq}: {msg}")))
    };
    loop {
        let raw = match rd.read_head() {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => return err(seq, e),
        };
        let raw_str = String::from_utf8_lossy(&raw).into_owned();
        sh.update(|s| s.heads.push(raw_str.clone()));
        let head = match parse_request_head(&raw) {
            Ok(h) => h,
            Err(e) => return err(seq, e),
        };
        let te = header_all(&head.headers, "transfer-encoding");
        let cl = header_all(&head.headers, "content-length");
        if !te.is_empty() && !cl.is_empty() {
            return err(
                seq,
                format!("proxy forwarded both Transfer-Encoding and Content-Length:\n{raw_str}"),
            );
        }
        if cl.len() > 1 {
            return err(
                seq,
                format!("proxy forwarded several Content-Length fields:\n{raw_str}"),
            );
        }
        let mut check = BodyCheck::new();
        let mut kept = Vec::new();
        let mut sink = |d: &[u8]| {
            check.update(d);
            if kept.len() < KEEP_BODY {
                let k = (KEEP_BODY - kept.len()).min(d.len());
                kept.extend_from_slice(&d[..k]);
            }
        };
        let chunked;
        if !te.is_empty() {
            let joined = te.join(",").to_ascii_lowercase();
            let codings: Vec<&str> = joined.split(',').map(|t| t.trim()).collect();
            if codings != ["chunked"] {
                return err(
                    seq,
                    format!("unexpected forwarded Transfer-Encoding {joined:?}"),
                );
            }
            chunked = true;
            loop {
                let line = match rd.read_line() {
                    Ok(l) => l,
                    Err(e) => return err(seq, e),
                };
                let size_part = line.split(|&b| b == b';').next().unwrap();
                let s = String::from_utf8_lossy(size_part).into_owned();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) || s.len() > 15 {
                    return err(
                        seq,
                        format!(
                            "bad forwarded chunk size line {:?}",
                            String::from_utf8_lossy(&line)
                        ),
                    );
                }
                let size = u64::from_str_radix(&s, 16).unwrap();
                if size == 0 {
                    loop {
                        match rd.read_line() {
                            Ok(l) if l.is_empty() => break,
                            Ok(_) => {}
                            Err(e) => return err(seq, e),
                        }
                    }
                    break;
                }
                if let Err(e) = rd.read_exact_into(size, &mut sink) {
                    return err(seq, e);
                }
                match rd.read_line() {
                    Ok(l) if l.is_empty() => {}
                    Ok(l) => {
                        return err(
                            seq,
                            format!(
                                "chunk data not followed by CRLF: {:?}",
                                String::from_utf8_lossy(&l)
                            ),
                        )
                    }
                    Err(e) => return err(seq, e),
                }
            }
        } else {
            chunked = false;
            if let Some(v) = cl.first() {
                let Ok(n) = v.parse::<u64>() else {
                    return err(seq, format!("bad forwarded Content-Length {v:?}"));
                };
                if let Err(e) = rd.read_exact_into(n, &mut sink) {
                    return err(seq, e);
                }
            }
        }
        let (body_len, body_sha256, pattern_mismatch) = check.finish();
        let rec = Recorded {
            conn,
            seq,
            method: head.method,
            target: head.target,
            version: head.version,
            headers: head.headers,
            raw_head: raw_str,
            chunked,
            body_len,
            body_sha256,
            pattern_mismatch,
            body: kept,
        };
        sh.update(|s| s.requests.push(rec.clone()));
        seq += 1;
        let client_close = rec.has_token("connection", "close")
            || (rec.version == "HTTP/1.0" && !rec.has_token("connection", "keep-alive"));
        let mut reply = (sh.handler)(&rec);
        if let Reply::Default = reply {
            reply = default_reply(&sh.name, &rec);
        }
        match write_reply(&sh.name, &mut writer, &rec, reply, &mut rd) {
            Ok(true) if !client_close => {}
            _ => {
                let _ = writer.shutdown(Shutdown::Write);
                // Drain what the peer may still send so the close is a FIN, not a RST.
                return;
            }
        }
    }
}
