//! Observability, access log, the shard's side: after *respond*, one line per request (or a
//! sample), in nginx's `combined` format with extra `key=value` fields, as JSON, or from the
//! operator's template ([`super::template`]). Each shard appends lines to its own buffer and
//! hands full buffers (or, at least every `flush` interval, partial ones) to the writer
//! thread ([`super::log_writer`]) through a bounded queue. A shard never waits for the disk:
//! when the queue is full the buffer's lines are dropped and counted.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::mpsc::TrySendError;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{AccessFormat, AccessLogConfig, Keep};
use crate::http::date::{split_time, MONTHS};
use crate::http::encode::itoa_buf;
use crate::sample::{threshold, Rng};
use crate::stats::{add, Stats};

use super::log_writer::{LogMsg, LogSink};
use super::template::Clock;

/// The request facts a log line needs, copied out of the head before its buffer is reused
/// (only for requests that will be logged).
#[derive(Default)]
pub struct RequestFields {
    data: Vec<u8>,
    method: Range<usize>,
    target: Range<usize>,
    host: Range<usize>,
    referer: Range<usize>,
    user_agent: Range<usize>,
    request_id: Range<usize>,
    /// The user name of an `Authorization: Basic` field (nginx's `$remote_user`).
    user: Range<usize>,
    /// A template's `$http_NAME` fields, in [`Template::headers`] order.
    headers: Vec<Range<usize>>,
    pub minor: u8,
    /// The request head's length in bytes.
    pub head_len: u32,
    /// The sampler chose the request: logged whatever `access_keep_*` say.
    pub sampled: bool,
}

/// The fields [`RequestFields::new`] copies.
pub struct HeadFacts<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub minor: u8,
    pub head_len: usize,
    pub host: &'a [u8],
    pub referer: &'a [u8],
    pub user_agent: &'a [u8],
    pub request_id: &'a [u8],
    pub user: &'a [u8],
}

impl RequestFields {
    fn put(&mut self, v: &[u8]) -> Range<usize> {
        let start = self.data.len();
        self.data.extend_from_slice(v);
        start..self.data.len()
    }

    /// Copies `h`, then each of `headers` (a template's `$http_` fields, empty when absent).
    pub fn new<'h>(h: &HeadFacts<'_>, headers: impl ExactSizeIterator<Item = &'h [u8]>) -> Self {
        let mut f = RequestFields {
            data: Vec::with_capacity(
                h.method.len()
                    + h.target.len()
                    + h.host.len()
                    + h.referer.len()
                    + h.user_agent.len()
                    + h.request_id.len()
                    + h.user.len(),
            ),
            minor: h.minor,
            head_len: u32::try_from(h.head_len).unwrap_or(u32::MAX),
            headers: Vec::with_capacity(headers.len()),
            ..Default::default()
        };
        f.method = f.put(h.method);
        f.target = f.put(h.target);
        f.host = f.put(h.host);
        f.referer = f.put(h.referer);
        f.user_agent = f.put(h.user_agent);
        f.request_id = f.put(h.request_id);
        f.user = f.put(h.user);
        for v in headers {
            let r = f.put(v);
            f.headers.push(r);
        }
        f
    }

    /// Fields of a request refused before its head could be parsed.
    pub fn unparsed() -> RequestFields {
        RequestFields {
            minor: 1,
            ..Default::default()
        }
    }

    fn get(&self, r: &Range<usize>) -> &[u8] {
        &self.data[r.clone()]
    }

    pub fn method(&self) -> &[u8] {
        self.get(&self.method)
    }

    pub fn target(&self) -> &[u8] {
        self.get(&self.target)
    }

    pub fn host(&self) -> &[u8] {
        self.get(&self.host)
    }

    pub fn referer(&self) -> &[u8] {
        self.get(&self.referer)
    }

    pub fn user_agent(&self) -> &[u8] {
        self.get(&self.user_agent)
    }

    pub fn request_id(&self) -> &[u8] {
        self.get(&self.request_id)
    }

    pub fn user(&self) -> &[u8] {
        self.get(&self.user)
    }

    /// The template's `i`th `$http_` field (empty when the request had none).
    pub fn header(&self, i: usize) -> &[u8] {
        self.headers.get(i).map_or(&[], |r| self.get(r))
    }
}

/// The TLS session a request came over.
#[derive(Clone, Copy)]
pub struct TlsFacts<'a> {
    /// `TLSv1.2` or `TLSv1.3`.
    pub protocol: &'static str,
    /// The suite's IANA name as rustls spells it (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: &'static str,
    pub server_name: Option<&'a str>,
}

/// What the exchange learned, for the log line.
pub struct Outcome<'a> {
    pub client: IpAddr,
    /// What the client got; None: closed without a response.
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total_us: u64,
    /// From sending the request upstream to the last response byte relayed.
    pub upstream_us: Option<u64>,
    /// The last try's connect (0 when pooled) and response head times.
    pub upstream_connect_us: Option<u64>,
    pub upstream_header_us: Option<u64>,
    /// The time it waited in breaker queues (0 for a request sent without waiting; None
    /// when none was picked and none waited).
    pub upstream_queue_us: Option<u64>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub backend: Option<SocketAddr>,
    /// The response's `X-Cache` (a route with `cache`).
    pub cache: Option<&'static [u8]>,
    pub tls: Option<TlsFacts<'a>>,
    /// Requests on this connection so far, this one included.
    pub connection_requests: u32,
    /// The connection's peer port (nginx's `$remote_port`).
    pub peer_port: u16,
    /// The status of the last try's backend response, or 502/504 for a last try that got
    /// none (`None`: no backend was tried, or the client left first).
    pub upstream_status: Option<u16>,
    /// The tries before the last one (`backend`), for the lists of `$upstream_addr`,
    /// `$upstream_status` and `$upstream_response_time`.
    pub earlier: &'a [UpstreamTry],
    /// Why the proxy answered itself or the exchange ended early (`$error_reason`).
    pub error: Option<crate::error::Reason>,
}

/// A try of a request that a retry followed (a failed connect, or an answer the retry rule
/// sent to another backend), as nginx lists it in `$upstream_addr`, `$upstream_status` and
/// `$upstream_response_time`.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTry {
    pub address: SocketAddr,
    /// The backend's status, or 502 (connect failed, connection closed, bad head) or 504
    /// (timed out), as nginx writes them.
    pub status: u16,
    /// From the pick (a failed connect) or from the request's first byte sent.
    pub us: u64,
    /// Its connect, from the pick: 0 on a pooled connection, the time spent on a failed one.
    pub connect_us: Option<u64>,
    /// Its response head, from its first byte sent (`None`: no head came).
    pub header_us: Option<u64>,
}

/// One shard's access log: a buffer, a sampler and the queue to the writer.
pub struct AccessLog {
    format: AccessFormat,
    shard: usize,
    /// A request is logged when the next random number is below this (all when u64::MAX).
    sample_below: u64,
    /// Requests logged whatever the sample says.
    keep: Keep,
    rng: Rng,
    buf: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    cap: usize,
    sink: LogSink,
    /// The formatted time of the last second logged: (unix second, combined, ISO 8601).
    clock: RefCell<(u64, String, String)>,
}

impl AccessLog {
    pub fn new(shard: usize, cfg: &AccessLogConfig, sink: LogSink) -> AccessLog {
        let sample_below = threshold(cfg.sample);
        AccessLog {
            format: cfg.format.clone(),
            shard,
            sample_below,
            keep: cfg.keep,
            rng: Rng::new(shard, 0),
            buf: RefCell::new(Vec::with_capacity(cfg.buffer_bytes)),
            lines: Cell::new(0),
            cap: cfg.buffer_bytes,
            sink,
            clock: RefCell::new((u64::MAX, String::new(), String::new())),
        }
    }

    /// The template's `$http_` field names (none for the built-in formats).
    pub fn headers(&self) -> &[Box<[u8]>] {
        match &self.format {
            AccessFormat::Template(t) => &t.headers,
            _ => &[],
        }
    }

    /// Whether lines show the Basic user name (`combined`, or a template with
    /// `$remote_user`).
    pub fn wants_user(&self) -> bool {
        match &self.format {
            AccessFormat::Combined => true,
            AccessFormat::Json => false,
            AccessFormat::Template(t) => t.user,
        }
    }

    /// Whether the request's fields are to be copied: it was sampled, or it may be kept
    /// when it ends ([`AccessLog::writes`]). `Some(sampled)`.
    pub fn takes(&self) -> Option<bool> {
        let sampled = self.sampled();
        (sampled || self.keep.any()).then_some(sampled)
    }

    /// Whether a request ends in a line: sampled, or kept for its status or its time.
    pub fn writes(&self, sampled: bool, status: Option<u16>, total_us: u64) -> bool {
        sampled || self.keep.keeps(status, total_us)
    }

    /// Whether the sampler draws this request.
    pub fn sampled(&self) -> bool {
        self.rng.below(self.sample_below)
    }

    /// Appends one line; hands the buffer over when it is full.
    pub fn push(&self, req: &RequestFields, out: &Outcome<'_>, stats: &Stats) {
        {
            let mut buf = self.buf.borrow_mut();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let mut clock = self.clock.borrow_mut();
            if clock.0 != now.as_secs() {
                *clock = (
                    now.as_secs(),
                    format_combined_time(now.as_secs()),
                    format_iso_time(now.as_secs()),
                );
            }
            match &self.format {
                AccessFormat::Combined => combined_line(&mut buf, &clock.1, req, out),
                AccessFormat::Json => json_line(&mut buf, &clock.2, now.subsec_millis(), req, out),
                AccessFormat::Template(t) => {
                    let clock = Clock {
                        unix: clock.0,
                        millis: now.subsec_millis(),
                        local: &clock.1,
                        iso: &clock.2,
                    };
                    t.render(&mut buf, &clock, self.shard, req, out);
                }
            }
            self.lines.set(self.lines.get() + 1);
        }
        add(&stats.access_lines, 1);
        if self.buf.borrow().len() >= self.cap {
            self.flush(stats);
        }
    }

    /// Hands the buffered lines to the writer without waiting; if its queue is full they
    /// are dropped and counted.
    pub fn flush(&self, stats: &Stats) {
        let lines = self.lines.replace(0);
        if lines == 0 {
            return;
        }
        let full = std::mem::replace(&mut *self.buf.borrow_mut(), Vec::with_capacity(self.cap));
        match self.sink.tx.try_send(LogMsg::Lines(full)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                add(&stats.access_dropped, lines);
            }
        }
    }

    /// At shutdown: hands the rest over, waiting up to `FINAL_WAIT` for room in the queue
    /// (a writer stuck on a full pipe must not hold the process up); then drops and counts.
    pub async fn flush_final(&self, stats: &Stats) {
        const FINAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        let lines = self.lines.replace(0);
        if lines == 0 {
            return;
        }
        let mut msg = LogMsg::Lines(std::mem::take(&mut *self.buf.borrow_mut()));
        let until = std::time::Instant::now() + FINAL_WAIT;
        loop {
            match self.sink.tx.try_send(msg) {
                Ok(()) => return,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < until => {
                    msg = m;
                    monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(_) => {
                    add(&stats.access_dropped, lines);
                    return;
                }
            }
        }
    }
}

pub(super) fn num(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa_buf(n).as_str());
}

/// Seconds with millisecond precision, as nginx's `$request_time` (e.g. `0.003`).
pub(super) fn secs(buf: &mut Vec<u8>, micros: u64) {
    let ms = micros / 1000;
    num(buf, ms / 1000);
    let frac = ms % 1000;
    buf.push(b'.');
    buf.push(b'0' + (frac / 100) as u8);
    buf.push(b'0' + (frac / 10 % 10) as u8);
    buf.push(b'0' + (frac % 10) as u8);
}

/// nginx's escaping for `combined`: `"`, `\`, control and non-ASCII bytes as `\xHH`.
pub(super) fn escaped(buf: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            hex(buf, b);
        } else {
            buf.push(b);
        }
    }
}

/// `\xHH`, as nginx writes a byte it escapes.
fn hex(buf: &mut Vec<u8>, b: u8) {
    buf.extend_from_slice(b"\\x");
    buf.push(b"0123456789ABCDEF"[(b >> 4) as usize]);
    buf.push(b"0123456789ABCDEF"[(b & 0xf) as usize]);
}

/// The Basic user name as `combined` writes it: unquoted in the line, so only token
/// characters stay as they are; anything else (a space, `[`, `"`) is `\xHH`.
pub(super) fn token_escaped(buf: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        let token = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if token {
            buf.push(b);
        } else {
            hex(buf, b);
        }
    }
}

fn dash_or(buf: &mut Vec<u8>, v: &[u8]) {
    if v.is_empty() {
        buf.push(b'-');
    } else {
        escaped(buf, v);
    }
}

fn combined_line(buf: &mut Vec<u8>, time: &str, req: &RequestFields, out: &Outcome<'_>) {
    let _ = write!(buf, "{} - ", out.client);
    match req.user() {
        [] => buf.push(b'-'),
        user => token_escaped(buf, user),
    }
    let _ = write!(buf, " [{time}] \"");
    if req.method.is_empty() {
        // Refused before the request line could be parsed (nginx writes "-" too).
        buf.extend_from_slice(b"-\" ");
    } else {
        escaped(buf, req.get(&req.method));
        buf.push(b' ');
        escaped(buf, req.get(&req.target));
        buf.extend_from_slice(if req.minor == 0 {
            b" HTTP/1.0\" "
        } else {
            b" HTTP/1.1\" "
        });
    }
    match out.status {
        Some(s) => num(buf, u64::from(s)),
        None => buf.extend_from_slice(b"000"),
    }
    buf.push(b' ');
    num(buf, out.bytes_out);
    buf.extend_from_slice(b" \"");
    dash_or(buf, req.referer());
    buf.extend_from_slice(b"\" \"");
    dash_or(buf, req.user_agent());
    buf.extend_from_slice(b"\" rt=");
    secs(buf, out.total_us);
    buf.extend_from_slice(b" urt=");
    match out.upstream_us {
        Some(u) => secs(buf, u),
        None => buf.push(b'-'),
    }
    buf.extend_from_slice(b" route=");
    buf.extend_from_slice(out.route.unwrap_or(crate::config::LOG_NONE).as_bytes());
    buf.extend_from_slice(b" upstream=");
    buf.extend_from_slice(out.upstream.unwrap_or(crate::config::LOG_NONE).as_bytes());
    buf.extend_from_slice(b" backend=");
    match out.backend {
        Some(a) => {
            let _ = write!(buf, "{a}");
        }
        None => buf.push(b'-'),
    }
    buf.extend_from_slice(b" in=");
    num(buf, out.bytes_in);
    buf.extend_from_slice(b" rid=");
    dash_or(buf, req.get(&req.request_id));
    buf.push(b'\n');
}

/// A JSON string: valid UTF-8 stays UTF-8 (as nginx's `escape=json` keeps it), except the
/// line and paragraph separators U+2028/U+2029, which JavaScript reads as line ends; any
/// other byte that is not printable ASCII, in a value that is not UTF-8 too, is `\u00XX`.
fn json_str(buf: &mut Vec<u8>, v: &[u8]) {
    buf.push(b'"');
    json_inner(buf, v);
    buf.push(b'"');
}

/// What [`json_str`] writes between its quotes.
pub(super) fn json_inner(buf: &mut Vec<u8>, v: &[u8]) {
    match std::str::from_utf8(v) {
        Ok(s) if !s.is_ascii() => {
            for c in s.chars() {
                match c {
                    '\u{2028}' => buf.extend_from_slice(b"\\u2028"),
                    '\u{2029}' => buf.extend_from_slice(b"\\u2029"),
                    // C1 controls (NEL is a line end to some readers).
                    '\u{80}'..='\u{9f}' => {
                        let _ = write!(buf, "\\u{:04x}", c as u32);
                    }
                    c if c.is_ascii() => json_byte(buf, c as u8),
                    c => buf.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
        _ => v.iter().for_each(|&b| json_byte(buf, b)),
    }
}

fn json_byte(buf: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => buf.extend_from_slice(b"\\\""),
        b'\\' => buf.extend_from_slice(b"\\\\"),
        0x20..=0x7e => buf.push(b),
        _ => {
            buf.extend_from_slice(b"\\u00");
            buf.push(b"0123456789abcdef"[(b >> 4) as usize]);
            buf.push(b"0123456789abcdef"[(b & 0xf) as usize]);
        }
    }
}

fn json_line(buf: &mut Vec<u8>, time: &str, ms: u32, req: &RequestFields, out: &Outcome<'_>) {
    let _ = write!(
        buf,
        "{{\"time\":\"{time}.{ms:03}Z\",\"client\":\"{}\",\"method\":",
        out.client
    );
    json_str(buf, req.get(&req.method));
    buf.extend_from_slice(b",\"uri\":");
    json_str(buf, req.get(&req.target));
    buf.extend_from_slice(if req.minor == 0 {
        b",\"protocol\":\"HTTP/1.0\",\"host\":"
    } else {
        b",\"protocol\":\"HTTP/1.1\",\"host\":"
    });
    json_str(buf, req.get(&req.host));
    buf.extend_from_slice(b",\"status\":");
    match out.status {
        Some(s) => num(buf, u64::from(s)),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"bytes_in\":");
    num(buf, out.bytes_in);
    buf.extend_from_slice(b",\"bytes_out\":");
    num(buf, out.bytes_out);
    buf.extend_from_slice(b",\"duration_us\":");
    num(buf, out.total_us);
    buf.extend_from_slice(b",\"upstream_us\":");
    match out.upstream_us {
        Some(u) => num(buf, u),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"route\":");
    json_opt(buf, out.route);
    buf.extend_from_slice(b",\"upstream\":");
    json_opt(buf, out.upstream);
    buf.extend_from_slice(b",\"backend\":");
    match out.backend {
        Some(a) => {
            let _ = write!(buf, "\"{a}\"");
        }
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"request_id\":");
    json_str(buf, req.get(&req.request_id));
    buf.extend_from_slice(b",\"referer\":");
    json_str(buf, req.referer());
    buf.extend_from_slice(b",\"user_agent\":");
    json_str(buf, req.user_agent());
    buf.extend_from_slice(b"}\n");
}

fn json_opt(buf: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => json_str(buf, s.as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
}

/// `28/Nov/2026:18:43:09 +0000` (UTC), as nginx's `$time_local` with TZ=UTC.
pub fn format_combined_time(unix: u64) -> String {
    let (y, m, d, hh, mm, ss) = split_time(unix);
    format!(
        "{d:02}/{}/{y}:{hh:02}:{mm:02}:{ss:02} +0000",
        MONTHS[(m - 1) as usize]
    )
}

/// `2026-11-28T18:43:09` (UTC; the caller appends fractions and `Z`).
pub fn format_iso_time(unix: u64) -> String {
    let (y, m, d, hh, mm, ss) = split_time(unix);
    format!("{y}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::observe) fn fields() -> RequestFields {
        RequestFields::new(
            &HeadFacts {
                method: b"GET",
                target: b"/a?\"q\"",
                minor: 1,
                head_len: 40,
                host: b"Example.com:8080",
                referer: b"",
                user_agent: b"curl/8 \xff",
                request_id: b"abc",
                user: b"",
            },
            [&b"v\n1"[..], b""].into_iter(),
        )
    }

    pub(in crate::observe) fn outcome() -> Outcome<'static> {
        Outcome {
            client: "10.0.0.1".parse().unwrap(),
            status: Some(200),
            bytes_in: 0,
            bytes_out: 1234,
            total_us: 1_500,
            upstream_us: Some(1_000),
            upstream_connect_us: Some(0),
            upstream_header_us: Some(1_000),
            upstream_queue_us: Some(12_000),
            route: Some("api"),
            upstream: Some("app"),
            backend: Some("127.0.0.1:9000".parse().unwrap()),
            cache: None,
            tls: None,
            connection_requests: 3,
            peer_port: 40000,
            upstream_status: Some(200),
            earlier: &[],
            error: None,
        }
    }

    #[test]
    fn times() {
        assert_eq!(format_combined_time(0), "01/Jan/1970:00:00:00 +0000");
        // 2026-11-28 18:43:09 UTC
        assert_eq!(
            format_combined_time(1_795_891_389),
            "28/Nov/2026:18:43:09 +0000"
        );
        assert_eq!(format_iso_time(951_782_400), "2000-02-29T00:00:00");
    }

    #[test]
    fn combined_format() {
        let mut buf = Vec::new();
        combined_line(&mut buf, "T", &fields(), &outcome());
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "10.0.0.1 - - [T] \"GET /a?\\x22q\\x22 HTTP/1.1\" 200 1234 \"-\" \"curl/8 \\xFF\" rt=0.001 urt=0.001 route=api upstream=app backend=127.0.0.1:9000 in=0 rid=abc\n"
        );
    }

    #[test]
    fn json_format_is_valid_json() {
        let mut buf = Vec::new();
        json_line(&mut buf, "2026-11-28T18:43:09", 7, &fields(), &outcome());
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["uri"], "/a?\"q\"");
        assert_eq!(v["user_agent"], "curl/8 \u{ff}");
        assert_eq!(v["time"], "2026-11-28T18:43:09.007Z");
        assert_eq!(v["backend"], "127.0.0.1:9000");
        let mut none = outcome();
        none.status = None;
        none.backend = None;
        none.upstream_us = None;
        let mut buf = Vec::new();
        json_line(&mut buf, "t", 0, &fields(), &none);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert!(v["status"].is_null() && v["backend"].is_null());
    }

    #[test]
    fn json_strings_keep_utf8_but_not_line_separators() {
        let line = |v: &[u8]| {
            let mut buf = Vec::new();
            json_str(&mut buf, v);
            buf
        };
        // Valid UTF-8: kept, but for U+2028/U+2029 and control bytes.
        let utf8 = line("caf\u{e9} \u{2028}\u{2029}\n\"".as_bytes());
        assert_eq!(utf8, "\"caf\u{e9} \\u2028\\u2029\\u000a\\\"\"".as_bytes());
        let v: String = serde_json::from_slice(&utf8).unwrap();
        assert_eq!(v, "caf\u{e9} \u{2028}\u{2029}\n\"");
        // C1 controls too: NEL (U+0085) ends a line for some readers.
        assert_eq!(line("a\u{85}b".as_bytes()), b"\"a\\u0085b\"");
        // Not UTF-8: every byte that is not printable ASCII escaped, each on its own.
        assert_eq!(line(b"a\xc3\xff"), b"\"a\\u00c3\\u00ff\"");
    }
}
