//! A raw HTTP/1.1 client: writes exact bytes, parses responses strictly.
//!
//! Every read is bounded by a deadline (socket read timeouts); nothing here
//! sleeps to synchronise.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Default inactivity deadline for a single read/write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub enum ClientError {
    /// Clean EOF before the first byte of a response.
    Closed,
    /// ECONNRESET / ECONNABORTED.
    Reset,
    /// The deadline passed.
    Timeout,
    /// The bytes received are not a valid HTTP/1.1 response.
    Malformed(String),
    /// The connection ended in the middle of a response.
    Truncated(String),
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// No body by rule (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Delimited by connection close.
    Close,
}

#[derive(Debug, Clone)]
pub struct Head {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub raw: String,
}

impl Head {
    /// First value of a header (case-insensitive name).
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

    /// True if the comma-separated list header `name` contains `token`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub framing: Framing,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.head.header_all(name)
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.head.has_token(name, token)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    pub timeout: Duration,
    /// Total bytes received on this connection.
    pub received: u64,
}

fn find_crlfcrlf(data: &[u8]) -> Option<usize> {
    data.windows(4).position(|w| w == b"\r\n\r\n")
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect to proxy {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(1 << 16),
            pos: 0,
            timeout: IO_TIMEOUT,
            received: 0,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, data: &[u8]) {
        self.try_send(data)
            .unwrap_or_else(|e| panic!("client write of {} bytes failed: {e}", data.len()));
    }

    pub fn try_send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Bytes buffered but not yet consumed by a parse.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes into the buffer. Ok(0) = EOF.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ClientError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout);
        }
        let remaining = (deadline - now).max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(remaining))
            .map_err(ClientError::Io)?;
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
                self.received += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.buf.truncate(old);
                Err(match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        ClientError::Reset
                    }
                    _ => ClientError::Io(e),
                })
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Reads and parses one response head (may be 1xx).
    pub fn read_head(&mut self) -> Result<Head, ClientError> {
        let deadline = self.deadline();
        loop {
            if let Some(i) = find_crlfcrlf(&self.buf[self.pos..]) {
                let raw = self.buf[self.pos..self.pos + i + 4].to_vec();
                self.pos += i + 4;
                return parse_head(&raw);
            }
            if self.buf.len() - self.pos > 1 << 20 {
                return Err(ClientError::Malformed(
                    "response head larger than 1 MiB".into(),
                ));
            }
            match self.fill(deadline)? {
                0 if self.pos == self.buf.len() => return Err(ClientError::Closed),
                0 => {
                    return Err(ClientError::Truncated(format!(
                        "EOF inside response head: {:?}",
                        String::from_utf8_lossy(&self.buf[self.pos..])
                    )))
                }
                _ => {}
            }
        }
    }

    /// Reads one complete response to a request with `method`, passing body
    /// bytes to `sink`. 1xx heads are returned as-is (no body).
    pub fn read_response_streaming(
        &mut self,
        method: &str,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(Head, Framing), ClientError> {
        let head = self.read_head()?;
        let framing = response_framing(method, &head)?;
        self.read_body_streaming(&framing, sink)?;
        Ok((head, framing))
    }

    /// Reads the body that follows an already-read head.
    pub fn read_body(&mut self, method: &str, head: &Head) -> Result<Vec<u8>, ClientError> {
        let framing = response_framing(method, head)?;
        let mut body = Vec::new();
        self.read_body_streaming(&framing, &mut |d| body.extend_from_slice(d))?;
        Ok(body)
    }

    pub fn read_body_streaming(
        &mut self,
        framing: &Framing,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        match *framing {
            Framing::None | Framing::Length(0) => {}
            Framing::Length(n) => self.read_exact_into(n, sink)?,
            Framing::Chunked => self.read_chunked_into(sink)?,
            Framing::Close => loop {
                if self.pos < self.buf.len() {
                    sink(&self.buf[self.pos..]);
                    self.pos = self.buf.len();
                }
                let deadline = self.deadline();
                match self.fill(deadline) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            },
        }
        Ok(())
    }

    fn read_exact_into(
        &mut self,
        mut n: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let total = n;
        while n > 0 {
            if self.pos == self.buf.len() {
                let deadline = self.deadline();
                if self.fill(deadline)? == 0 {
                    return Err(ClientError::Truncated(format!(
                        "EOF after {} of {} body bytes",
                        total - n,
                        total
                    )));
                }
            }
            let avail = ((self.buf.len() - self.pos) as u64).min(n) as usize;
            sink(&self.buf[self.pos..self.pos + avail]);
            self.pos += avail;
            n -= avail as u64;
        }
        Ok(())
    }

    fn read_line(&mut self, what: &str) -> Result<Vec<u8>, ClientError> {
        let deadline = self.deadline();
        loop {
            if let Some(i) = find_crlf(&self.buf[self.pos..]) {
                let line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > 64 * 1024 {
                return Err(ClientError::Malformed(format!(
                    "{what} line longer than 64 KiB"
                )));
            }
            if self.fill(deadline)? == 0 {
                return Err(ClientError::Truncated(format!(
                    "EOF while reading {what} line"
                )));
            }
        }
    }

    fn read_chunked_into(&mut self, sink: &mut dyn FnMut(&[u8])) -> Result<(), ClientError> {
        loop {
            let line = self.read_line("chunk-size")?;
            let size_part = line.split(|&b| b == b';').next().unwrap();
            let size_str = std::str::from_utf8(size_part)
                .map_err(|_| ClientError::Malformed(format!("non-UTF8 chunk size {line:?}")))?;
            if size_str.is_empty() || !size_str.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ClientError::Malformed(format!(
                    "bad chunk-size line {:?}",
                    String::from_utf8_lossy(&line)
                )));
            }
            let size = u64::from_str_radix(size_str, 16)
                .map_err(|_| ClientError::Malformed(format!("chunk size overflow {size_str:?}")))?;
            if size == 0 {
                // trailer section
                loop {
                    let t = self.read_line("trailer")?;
                    if t.is_empty() {
                        return Ok(());
                    }
                }
            }
            self.read_exact_into(size, sink)?;
            let crlf = self.read_line("chunk-data CRLF")?;
            if !crlf.is_empty() {
                return Err(ClientError::Malformed(
                    "chunk data not followed by CRLF".into(),
                ));
            }
        }
    }

    pub fn try_read_response_for(&mut self, method: &str) -> Result<Response, ClientError> {
        let mut body = Vec::new();
        let (head, framing) =
            self.read_response_streaming(method, &mut |d| body.extend_from_slice(d))?;
        Ok(Response {
            head,
            framing,
            body,
        })
    }

    pub fn try_read_response(&mut self) -> Result<Response, ClientError> {
        self.try_read_response_for("GET")
    }

    /// Reads one response (may be 1xx) to a GET; panics on any error.
    pub fn read_response(&mut self) -> Response {
        self.read_response_for("GET")
    }

    pub fn read_response_for(&mut self, method: &str) -> Response {
        match self.try_read_response_for(method) {
            Ok(r) => r,
            Err(e) => panic!(
                "reading response (to {method}) failed: {e}; pending bytes: {:?}",
                self.pending_str()
            ),
        }
    }

    /// Reads responses until a non-1xx one; returns (informational, final).
    pub fn read_final_response(&mut self, method: &str) -> (Vec<Response>, Response) {
        let mut info = Vec::new();
        loop {
            let r = self.read_response_for(method);
            if (100..200).contains(&r.status()) {
                info.push(r);
                if info.len() > 10 {
                    panic!("more than 10 informational responses");
                }
            } else {
                return (info, r);
            }
        }
    }

    fn pending_str(&self) -> String {
        String::from_utf8_lossy(&self.buf[self.pos..])
            .chars()
            .take(300)
            .collect()
    }

    /// Reads until EOF/RST within `within`; returns the unconsumed bytes seen.
    /// Err(Timeout) if the peer keeps the connection open.
    pub fn read_until_closed(&mut self, within: Duration) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline) {
                Ok(0) => break,
                Ok(_) => {}
                Err(ClientError::Reset) => break,
                Err(e) => return Err(e),
            }
        }
        let rest = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        Ok(rest)
    }

    /// Asserts that the peer closes (EOF or RST) within `within` without
    /// sending any further bytes.
    pub fn expect_closed_within(&mut self, within: Duration) {
        match self.read_until_closed(within) {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => panic!(
                "expected connection close, but got {} more bytes first: {:?}",
                rest.len(),
                String::from_utf8_lossy(&rest[..rest.len().min(300)])
            ),
            Err(ClientError::Timeout) => {
                panic!("expected connection close within {within:?}, but it stayed open")
            }
            Err(e) => panic!("expected connection close, got error {e}"),
        }
    }

    pub fn expect_closed(&mut self) {
        self.expect_closed_within(Duration::from_secs(10));
    }

    /// True if the connection is still open (no EOF, no data) after `wait`.
    /// Used only where the test asserts that something does NOT happen.
    pub fn still_open_after(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        match self.fill(deadline) {
            Err(ClientError::Timeout) => true,
            Ok(0) | Err(ClientError::Reset) => false,
            Ok(_) => panic!(
                "unexpected bytes while checking the connection is idle: {:?}",
                self.pending_str()
            ),
            Err(e) => panic!("error while checking the connection is idle: {e}"),
        }
    }
}

pub fn parse_head(raw: &[u8]) -> Result<Head, ClientError> {
    let text = std::str::from_utf8(raw).map_err(|_| {
        ClientError::Malformed(format!(
            "non-UTF8 response head: {:?}",
            String::from_utf8_lossy(raw)
        ))
    })?;
    let body = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    let mut lines = body.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let code = parts.next().unwrap_or("");
    let reason = parts.next().unwrap_or("").to_string();
    if !(version == "HTTP/1.1" || version == "HTTP/1.0") {
        return Err(ClientError::Malformed(format!(
            "bad status line {status_line:?}"
        )));
    }
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ClientError::Malformed(format!(
            "bad status code in {status_line:?}"
        )));
    }
    let status: u16 = code.parse().unwrap();
    let mut headers = Vec::new();
    for line in lines {
        if line.contains('\r') || line.contains('\n') {
            return Err(ClientError::Malformed(format!(
                "bare CR/LF in response header line {line:?}"
            )));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ClientError::Malformed(format!(
                "response header line without colon: {line:?}"
            )));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b == b' ' || b == b'\t' || b.is_ascii_control())
        {
            return Err(ClientError::Malformed(format!(
                "bad response header name {name:?}"
            )));
        }
        headers.push((
            name.to_string(),
            value.trim_matches(|c| c == ' ' || c == '\t').to_string(),
        ));
    }
    Ok(Head {
        version,
        status,
        reason,
        headers,
        raw: text.to_string(),
    })
}

/// Body framing of a response per RFC 9112 section 6.3 (strict: invalid or
/// conflicting framing from the proxy is an error).
pub fn response_framing(method: &str, head: &Head) -> Result<Framing, ClientError> {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304
    {
        return Ok(Framing::None);
    }
    let te = head.header_all("transfer-encoding");
    let cl = head.header_all("content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err(ClientError::Malformed(format!(
            "proxy sent both Transfer-Encoding and Content-Length:\n{}",
            head.raw
        )));
    }
    if !te.is_empty() {
        let codings: Vec<String> = te
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        if codings.last().map(|s| s.as_str()) == Some("chunked") {
            if codings.iter().filter(|c| *c == "chunked").count() > 1 {
                return Err(ClientError::Malformed(format!(
                    "chunked applied twice:\n{}",
                    head.raw
                )));
            }
            return Ok(Framing::Chunked);
        }
        return Ok(Framing::Close);
    }
    if cl.len() > 1 {
        return Err(ClientError::Malformed(format!(
            "proxy sent several Content-Length fields:\n{}",
            head.raw
        )));
    }
    if let Some(v) = cl.first() {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ClientError::Malformed(format!("bad Content-Length {v:?}")));
        }
        let n = v
            .parse::<u64>()
            .map_err(|_| ClientError::Malformed(format!("bad Content-Length {v:?}")))?;
        return Ok(Framing::Length(n));
    }
    Ok(Framing::Close)
}

/// Builds a request: request line, the given header lines verbatim, a blank
/// line, then `body` verbatim. Nothing is added automatically.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut v = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    for (n, val) in headers {
        v.extend_from_slice(format!("{n}: {val}\r\n").as_bytes());
    }
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(body);
    v
}

/// `GET target HTTP/1.1` with just a Host header.
pub fn get(host: &str, target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// Chunked encoding of `body`, cycling through `sizes` for chunk sizes.
pub fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 8 + 16);
    let mut off = 0;
    let mut i = 0;
    while off < body.len() {
        let n = sizes[i % sizes.len()].max(1).min(body.len() - off);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&body[off..off + n]);
        out.extend_from_slice(b"\r\n");
        off += n;
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
