//! Stage 2 of the pipeline, *parse*: turns the bytes of a request or response head into a
//! [`RequestHead`] / [`ResponseHead`] that points into the read buffer by offsets (no copies),
//! and applies the strict RFC 9112 framing rules that `httparse` leaves to its caller:
//! one Content-Length made of digits, Transfer-Encoding exactly `chunked`, never both, one Host.
//!
//! `httparse` already rejects bare CR, obs-fold, whitespace before the colon and control
//! characters in field values; everything it accepts is re-checked here for meaning.

use std::mem::MaybeUninit;
use std::ops::Range;

/// A byte range into the buffer the head was parsed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Span {
        // Both slices come from the same allocation: httparse returns sub-slices of `buf`.
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
    #[inline]
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The headers the proxy gives meaning to; everything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Other,
}

impl HeaderKind {
    fn classify(name: &[u8]) -> HeaderKind {
        // Length first keeps this to one or two comparisons for common headers.
        let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        match name.len() {
            2 if eq("te") => HeaderKind::Te,
            4 if eq("host") => HeaderKind::Host,
            6 if eq("expect") => HeaderKind::Expect,
            7 if eq("trailer") => HeaderKind::Trailer,
            7 if eq("upgrade") => HeaderKind::Upgrade,
            10 if eq("connection") => HeaderKind::Connection,
            10 if eq("keep-alive") => HeaderKind::KeepAlive,
            14 if eq("content-length") => HeaderKind::ContentLength,
            15 if eq("x-forwarded-for") => HeaderKind::XForwardedFor,
            16 if eq("proxy-connection") => HeaderKind::ProxyConnection,
            16 if eq("x-forwarded-host") => HeaderKind::XForwardedHost,
            17 if eq("transfer-encoding") => HeaderKind::TransferEncoding,
            17 if eq("x-forwarded-proto") => HeaderKind::XForwardedProto,
            _ => HeaderKind::Other,
        }
    }

    /// Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded; the proxy writes its own
    /// framing. X-Forwarded-* are replaced by the proxy's own values.
    pub fn is_hop_by_hop(self) -> bool {
        !matches!(
            self,
            HeaderKind::Host | HeaderKind::Other | HeaderKind::XForwardedFor
        )
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub name: Span,
    pub value: Span,
    pub kind: HeaderKind,
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body ends when the upstream closes.
    UntilClose,
}

impl BodyFraming {
    /// No body bytes follow the head.
    pub fn is_empty(self) -> bool {
        matches!(self, BodyFraming::None | BodyFraming::Length(0))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Connect,
    Patch,
    Other,
}

impl Method {
    fn parse(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
    /// RFC 9110 §9.2.2: safe to repeat.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// Why a head was refused; [`crate::http::canned`] maps each to a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed syntax or ambiguous framing: 400 (request) or 502 (response).
    Malformed(&'static str),
    /// More header fields than allowed: 431.
    TooManyHeaders,
    /// Head larger than allowed: 431.
    HeadTooLarge,
    /// Request target longer than allowed: 414.
    UriTooLong,
    /// Not HTTP/1.0 or HTTP/1.1: 505.
    Version,
    /// An Expect other than 100-continue: 417.
    Expectation,
}

pub enum Parsed<T> {
    Complete(T),
    Partial,
}

/// Upper bound on header fields a head may carry; `limits.max_headers` is validated against it.
pub const MAX_HEADERS_CAP: usize = 512;

#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
}

/// A parsed request head. Every span points into the buffer it was parsed from.
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: Span,
    pub method_kind: Option<Method>,
    pub target: Span,
    pub minor_version: u8,
    pub headers: Vec<Header>,
    /// Bytes of the head including the final empty line.
    pub head_len: usize,
    pub host: Option<Span>,
    pub framing: Option<BodyFraming>,
    pub conn_close: bool,
    pub conn_keep_alive: bool,
    pub expect_continue: bool,
    /// Header names listed in `Connection`, removed before forwarding.
    pub conn_tokens: Vec<Span>,
}

impl RequestHead {
    pub fn method(&self) -> Method {
        self.method_kind.unwrap_or(Method::Other)
    }
    pub fn framing(&self) -> BodyFraming {
        self.framing.unwrap_or(BodyFraming::None)
    }
    /// Whether the client asked for the connection to stay open after this exchange.
    pub fn wants_keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.conn_keep_alive && !self.conn_close
        } else {
            !self.conn_close
        }
    }
    /// True when `name` is listed in this message's Connection header.
    pub fn named_in_connection(&self, buf: &[u8], name: &[u8]) -> bool {
        self.conn_tokens
            .iter()
            .any(|t| t.get(buf).eq_ignore_ascii_case(name))
    }
    /// The value of the first field named `name` (compared case-insensitively), if any.
    pub fn header<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(|h| h.value.get(buf))
    }
}

/// A parsed response head.
#[derive(Debug, Default)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Span,
    pub minor_version: u8,
    pub headers: Vec<Header>,
    pub head_len: usize,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub conn_close: bool,
    pub conn_keep_alive: bool,
    pub conn_tokens: Vec<Span>,
}

impl ResponseHead {
    /// RFC 9112 §6.3: how this response's body is delimited, given the request method.
    pub fn framing(&self, request_method: Method) -> BodyFraming {
        if request_method == Method::Head
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            BodyFraming::None
        } else if self.chunked {
            BodyFraming::Chunked
        } else if let Some(n) = self.content_length {
            BodyFraming::Length(n)
        } else {
            BodyFraming::UntilClose
        }
    }
    /// Whether the upstream lets us reuse the connection after this response.
    pub fn upstream_keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            // RFC 9112 §6.1: Transfer-Encoding in a 1.0 message is faulty framing; the body is
            // decoded, but the connection is closed afterwards.
            self.conn_keep_alive && !self.conn_close && !self.chunked
        } else {
            !self.conn_close
        }
    }
    pub fn named_in_connection(&self, buf: &[u8], name: &[u8]) -> bool {
        self.conn_tokens
            .iter()
            .any(|t| t.get(buf).eq_ignore_ascii_case(name))
    }
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    // 1*DIGIT only: no sign, no spaces inside, no hex, at most 19 digits so it fits in u64.
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Iterates the comma-separated elements of a list header, trimmed, skipping empty ones.
fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

/// Shared header pass for requests and responses: classify each field and collect framing.
struct FieldScan {
    content_length: Option<u64>,
    chunked: bool,
    conn_close: bool,
    conn_keep_alive: bool,
}

fn scan_fields(
    buf: &[u8],
    raw: &[httparse::Header<'_>],
    out: &mut Vec<Header>,
    conn_tokens: &mut Vec<Span>,
    host: &mut Option<Span>,
    expect_continue: &mut bool,
    is_request: bool,
) -> Result<FieldScan, ParseError> {
    let mut scan = FieldScan {
        content_length: None,
        chunked: false,
        conn_close: false,
        conn_keep_alive: false,
    };
    let mut te_seen = false;
    out.clear();
    conn_tokens.clear();
    for h in raw {
        let name = h.name.as_bytes();
        let kind = HeaderKind::classify(name);
        let value = trim_ows(h.value);
        let value_span = Span::of(buf, value);
        match kind {
            HeaderKind::ContentLength => {
                if scan.content_length.is_some() {
                    return Err(ParseError::Malformed("duplicate Content-Length"));
                }
                scan.content_length = Some(
                    parse_content_length(value)
                        .ok_or(ParseError::Malformed("invalid Content-Length"))?,
                );
            }
            HeaderKind::TransferEncoding => {
                // Only a single `chunked` coding is accepted: anything else (gzip, chunked twice,
                // a coding after chunked) is a framing we would have to guess at.
                for item in list_items(value) {
                    if te_seen || !item.eq_ignore_ascii_case(b"chunked") {
                        return Err(ParseError::Malformed("unsupported Transfer-Encoding"));
                    }
                    te_seen = true;
                }
                if !te_seen {
                    return Err(ParseError::Malformed("empty Transfer-Encoding"));
                }
                scan.chunked = true;
            }
            HeaderKind::Connection => {
                for item in list_items(value) {
                    if item.eq_ignore_ascii_case(b"close") {
                        scan.conn_close = true;
                    } else if item.eq_ignore_ascii_case(b"keep-alive") {
                        scan.conn_keep_alive = true;
                    } else {
                        conn_tokens.push(Span::of(buf, item));
                    }
                }
            }
            HeaderKind::Host if is_request => {
                if host.is_some() {
                    return Err(ParseError::Malformed("duplicate Host"));
                }
                *host = Some(value_span);
            }
            HeaderKind::Expect if is_request => {
                if value.eq_ignore_ascii_case(b"100-continue") {
                    *expect_continue = true;
                } else {
                    return Err(ParseError::Expectation);
                }
            }
            _ => {}
        }
        out.push(Header {
            name: Span::of(buf, name),
            value: value_span,
            kind,
        });
    }
    if scan.chunked && scan.content_length.is_some() {
        return Err(ParseError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(scan)
}

fn map_httparse(e: httparse::Error) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        httparse::Error::Version => ParseError::Version,
        httparse::Error::HeaderName => ParseError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => ParseError::Malformed("invalid header value"),
        httparse::Error::NewLine => ParseError::Malformed("invalid line ending"),
        httparse::Error::Status => ParseError::Malformed("invalid status"),
        httparse::Error::Token => ParseError::Malformed("invalid token"),
    }
}

/// A request line longer than this is refused as 414 whatever its target: a partial head is
/// judged by it before the target is known, so a complete one must be too, or a head would be
/// accepted whole and refused when it arrives in pieces.
fn request_line_too_long(buf: &[u8], limits: &HeadLimits) -> bool {
    memchr_newline(buf).unwrap_or(buf.len()) > limits.max_uri_bytes + 32
}

/// When the head is not yet complete, decide whether it can still become valid within limits.
fn check_partial(buf: &[u8], limits: &HeadLimits) -> Result<(), ParseError> {
    if request_line_too_long(buf, limits) {
        Err(ParseError::UriTooLong)
    } else if buf.len() >= limits.max_header_bytes {
        Err(ParseError::HeadTooLarge)
    } else {
        Ok(())
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Partial` when more bytes are needed and the limits still allow them.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<Parsed<()>, ParseError> {
    // Uninitialised header slots: initialising 512 of them would cost more than the parse.
    let mut storage: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CAP] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP];
    let headers = &mut storage[..limits.max_headers.clamp(1, MAX_HEADERS_CAP)];
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, headers) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
        Err(e) => return Err(map_httparse(e)),
    };
    let head_len = match status {
        httparse::Status::Partial => {
            check_partial(buf, limits)?;
            return Ok(Parsed::Partial);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > limits.max_header_bytes {
        return Err(ParseError::HeadTooLarge);
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ParseError::Malformed("incomplete request line"));
    };
    if path.len() > limits.max_uri_bytes || request_line_too_long(buf, limits) {
        return Err(ParseError::UriTooLong);
    }
    if version > 1 {
        return Err(ParseError::Version);
    }
    let mut host = None;
    let mut expect_continue = false;
    let scan = scan_fields(
        buf,
        req.headers,
        &mut head.headers,
        &mut head.conn_tokens,
        &mut host,
        &mut expect_continue,
        true,
    )?;
    if version == 1 && host.is_none() {
        return Err(ParseError::Malformed("missing Host"));
    }
    if version == 0 && scan.chunked {
        // RFC 9112 §6.1: a 1.0 message with Transfer-Encoding has faulty framing.
        return Err(ParseError::Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    let method_kind = Method::parse(method.as_bytes());
    head.method = Span::of(buf, method.as_bytes());
    head.method_kind = Some(method_kind);
    head.target = Span::of(buf, path.as_bytes());
    head.minor_version = version;
    head.head_len = head_len;
    head.host = host;
    head.framing = Some(if scan.chunked {
        BodyFraming::Chunked
    } else {
        match scan.content_length {
            None => BodyFraming::None,
            // Length(0) is kept so that `Content-Length: 0` is forwarded (POST needs it).
            Some(n) => BodyFraming::Length(n),
        }
    });
    head.conn_close = scan.conn_close;
    head.conn_keep_alive = scan.conn_keep_alive;
    head.expect_continue = expect_continue;
    Ok(Parsed::Complete(()))
}

/// Parses a response head from the start of `buf`.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut ResponseHead,
) -> Result<Parsed<()>, ParseError> {
    let mut storage: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CAP] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP];
    let headers = &mut storage[..limits.max_headers.clamp(1, MAX_HEADERS_CAP)];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers);
    let head_len = match parsed.map_err(map_httparse)? {
        httparse::Status::Partial => {
            if buf.len() >= limits.max_header_bytes {
                return Err(ParseError::HeadTooLarge);
            }
            return Ok(Parsed::Partial);
        }
        httparse::Status::Complete(n) => n,
    };
    // As for a request: a head over the limit is refused whether it arrived whole or in pieces.
    if head_len > limits.max_header_bytes {
        return Err(ParseError::HeadTooLarge);
    }
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err(ParseError::Malformed("incomplete status line"));
    };
    if version > 1 {
        return Err(ParseError::Version);
    }
    if !(100..=999).contains(&code) {
        return Err(ParseError::Malformed("invalid status code"));
    }
    let reason = resp.reason.unwrap_or("");
    let mut ignored_host = None;
    let mut ignored_expect = false;
    let scan = scan_fields(
        buf,
        resp.headers,
        &mut head.headers,
        &mut head.conn_tokens,
        &mut ignored_host,
        &mut ignored_expect,
        false,
    )?;
    head.status = code;
    head.reason = if reason.is_empty() {
        Span::default()
    } else {
        Span::of(buf, reason.as_bytes())
    };
    head.minor_version = version;
    head.head_len = head_len;
    head.content_length = scan.content_length;
    head.chunked = scan.chunked;
    head.conn_close = scan.conn_close;
    head.conn_keep_alive = scan.conn_keep_alive;
    Ok(Parsed::Complete(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 16384,
        max_headers: 100,
        max_uri_bytes: 8192,
    };

    fn req(bytes: &[u8]) -> Result<RequestHead, ParseError> {
        let mut head = RequestHead::default();
        match parse_request(bytes, &LIMITS, &mut head)? {
            Parsed::Complete(()) => Ok(head),
            Parsed::Partial => panic!("partial: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    /// Every prefix of a valid head is Partial; the whole is Complete with the same result.
    fn split_everywhere(bytes: &[u8]) -> RequestHead {
        for cut in 0..bytes.len() {
            let mut head = RequestHead::default();
            match parse_request(&bytes[..cut], &LIMITS, &mut head) {
                Ok(Parsed::Partial) => {}
                other => panic!("prefix {cut} gave {:?}", other.map(|_| ())),
            }
        }
        req(bytes).expect("complete head")
    }

    #[test]
    fn typical_get_split_at_every_byte() {
        let raw =
            b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
        let head = split_everywhere(raw);
        assert_eq!(head.method(), Method::Get);
        assert_eq!(head.target.get(raw), b"/a/b?c=d");
        assert_eq!(head.host.unwrap().get(raw), b"example.com");
        assert_eq!(head.framing(), BodyFraming::None);
        assert_eq!(head.head_len, raw.len());
        assert!(head.wants_keep_alive());
    }

    /// Request heads of many shapes: methods, target forms, versions, header spellings,
    /// Content-Length / chunked / none, Connection and Expect, with a body or a pipelined
    /// request after them. Each is valid; the expected method, target and framing come along.
    fn generated_heads() -> Vec<(Vec<u8>, &'static str, &'static str, BodyFraming)> {
        const METHODS: &[&str] = &[
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "PURGE",
        ];
        const TARGETS: &[&str] = &[
            "/",
            "/a/b?c=d&e=%20f",
            "*",
            "http://example.com:8080/x?y",
            "/very/long/path/with/many/segments/and-a-query?k=v&k2=v2#frag",
        ];
        const SHAPES: &[&str] = &[
            "",
            "User-Agent: t\r\nAccept: */*\r\n",
            "x-lower: v\r\nX-UPPER: V\r\n",
            "X-Tight:v\r\nX-Padded:   v  \t\r\n",
            "X-Empty:\r\nX-Empty-Space: \r\n",
            "X-Tab: a\tb\r\nX-Obs: café\r\n",
            "Connection: close\r\n",
            "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n",
            "Expect: 100-continue\r\n",
            "Cookie: a=1; b=2\r\nCookie: c=3\r\nX-Forwarded-For: 1.2.3.4\r\n",
        ];
        const FRAMING: &[(&str, BodyFraming, &str)] = &[
            ("", BodyFraming::None, ""),
            ("Content-Length: 0\r\n", BodyFraming::Length(0), ""),
            ("Content-Length: 5\r\n", BodyFraming::Length(5), "hello"),
            (
                "content-length:12345\r\n",
                BodyFraming::Length(12345),
                "abc",
            ),
            (
                "Transfer-Encoding: chunked\r\n",
                BodyFraming::Chunked,
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                "Transfer-Encoding: CHUNKED\r\n",
                BodyFraming::Chunked,
                "0\r\n\r\n",
            ),
        ];
        let mut out = Vec::new();
        for (i, method) in METHODS.iter().enumerate() {
            for (j, target) in TARGETS.iter().enumerate() {
                for (k, shape) in SHAPES.iter().enumerate() {
                    let (framing, want, body) = FRAMING[(i + j + k) % FRAMING.len()];
                    let version = if (i + k) % 5 == 0 { "1.0" } else { "1.1" };
                    if version == "1.0" && want == BodyFraming::Chunked {
                        continue;
                    }
                    let host = match (version, k % 3) {
                        ("1.0", 0) => String::new(),
                        (_, 1) => "host: example.com:8080\r\n".into(),
                        _ => "Host: example.com\r\n".into(),
                    };
                    // The Host, the framing and the other fields in an order that varies.
                    let fields = match (i + j) % 3 {
                        0 => format!("{host}{shape}{framing}"),
                        1 => format!("{shape}{framing}{host}"),
                        _ => format!("{framing}{host}{shape}"),
                    };
                    let after = if j % 2 == 0 {
                        body
                    } else {
                        "GET /next HTTP/1.1\r\n"
                    };
                    let raw = format!("{method} {target} HTTP/{version}\r\n{fields}\r\n{after}");
                    out.push((raw.into_bytes(), *method, *target, want));
                }
            }
        }
        out
    }

    /// Any generated head split at any byte boundary parses as it does whole: cut in two
    /// pieces (a fresh head each time), and fed byte by byte into one reused head, as a
    /// connection does. Prefixes shorter than the head are Partial; longer ones, with part
    /// of the body or of the next request after it, give the same head.
    #[test]
    fn generated_heads_split_at_every_byte() {
        let heads = generated_heads();
        assert!(heads.len() > 300);
        for (raw, method, target, framing) in &heads {
            let whole = req(raw).expect("valid head");
            assert_eq!(whole.method.get(raw), method.as_bytes());
            assert_eq!(whole.target.get(raw), target.as_bytes());
            assert_eq!(whole.framing(), *framing);
            let n = whole.head_len;
            assert!(raw[..n].ends_with(b"\r\n\r\n"));
            let want = format!("{whole:?}");
            let mut reused = RequestHead::default();
            for cut in 0..=raw.len() {
                // Two pieces: the first alone, then both.
                let mut first = RequestHead::default();
                let r = parse_request(&raw[..cut], &LIMITS, &mut first);
                // Byte by byte: the buffer grows by one byte per parse.
                let b = parse_request(&raw[..cut], &LIMITS, &mut reused);
                for (r, head) in [(r, &first), (b, &reused)] {
                    match r {
                        Ok(Parsed::Partial) if cut < n => {}
                        Ok(Parsed::Complete(())) if cut >= n => {
                            assert_eq!(format!("{head:?}"), want, "cut {cut}")
                        }
                        other => panic!(
                            "{:?} cut {cut} gave {:?}",
                            String::from_utf8_lossy(raw),
                            other.map(|_| ())
                        ),
                    }
                }
            }
            assert_eq!(format!("{:?}", req(raw).unwrap()), want);
        }
    }

    /// Found writing the `request_head` fuzz target's split check: a request line longer than
    /// `max_uri_bytes + 32` (a long method, a short target) was refused with 414 while it
    /// arrived, but accepted when the whole head came in one read.
    #[test]
    fn long_request_line_is_refused_whole_and_in_pieces() {
        let small = HeadLimits {
            max_header_bytes: 96,
            max_headers: 3,
            max_uri_bytes: 16,
        };
        let raw = format!("{} / HTTP/1.0\r\n\r\n", "M".repeat(40));
        let mut head = RequestHead::default();
        assert_eq!(
            parse_request(&raw.as_bytes()[..50], &small, &mut head).err(),
            Some(ParseError::UriTooLong)
        );
        assert_eq!(
            parse_request(raw.as_bytes(), &small, &mut head).err(),
            Some(ParseError::UriTooLong)
        );
        // At the limit the line is accepted, whole and in every piece.
        let raw = format!("{} /{} HTTP/1.0\r\n\r\n", "M".repeat(21), "a".repeat(15));
        assert_eq!(raw.find('\n'), Some(small.max_uri_bytes + 32));
        for cut in 0..raw.len() {
            assert!(matches!(
                parse_request(&raw.as_bytes()[..cut], &small, &mut head),
                Ok(Parsed::Partial)
            ));
        }
        assert!(matches!(
            parse_request(raw.as_bytes(), &small, &mut head),
            Ok(Parsed::Complete(()))
        ));
    }

    /// Found writing the `response_head` fuzz target's split check: a head over the limit was
    /// refused when it arrived in pieces but accepted when it came in one read.
    #[test]
    fn response_head_over_limit_is_refused_whole_and_in_pieces() {
        let small = HeadLimits {
            max_header_bytes: 64,
            max_headers: 10,
            max_uri_bytes: 16,
        };
        let raw = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(60));
        let mut head = ResponseHead::default();
        assert_eq!(
            parse_response(&raw.as_bytes()[..64], &small, &mut head).err(),
            Some(ParseError::HeadTooLarge)
        );
        assert_eq!(
            parse_response(raw.as_bytes(), &small, &mut head).err(),
            Some(ParseError::HeadTooLarge)
        );
        let raw = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(64 - 24));
        assert_eq!(raw.len(), 64);
        assert!(matches!(
            parse_response(raw.as_bytes(), &small, &mut head),
            Ok(Parsed::Complete(()))
        ));
    }

    #[test]
    fn framing_rules() {
        let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.framing(), BodyFraming::Length(5));
        let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing(), BodyFraming::Chunked);
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
            b"GET\r/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(req(bad), Err(ParseError::Malformed(_))),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits_map_to_statuses() {
        let small = HeadLimits {
            max_header_bytes: 64,
            max_headers: 2,
            max_uri_bytes: 16,
        };
        let mut head = RequestHead::default();
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(20));
        assert_eq!(
            parse_request(long_uri.as_bytes(), &small, &mut head).err(),
            Some(ParseError::UriTooLong)
        );
        let unfinished_uri = format!("GET /{}", "a".repeat(60));
        assert_eq!(
            parse_request(unfinished_uri.as_bytes(), &small, &mut head).err(),
            Some(ParseError::UriTooLong)
        );
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(
            parse_request(many, &small, &mut head).err(),
            Some(ParseError::TooManyHeaders)
        );
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nA: {}\r\n", "x".repeat(80));
        assert_eq!(
            parse_request(big.as_bytes(), &small, &mut head).err(),
            Some(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn connection_tokens_and_versions() {
        let raw = b"GET / HTTP/1.0\r\nConnection: keep-alive, X-Foo\r\n\r\n";
        let h = req(raw).unwrap();
        assert!(h.wants_keep_alive());
        assert!(h.named_in_connection(raw, b"x-foo"));
        let h = req(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.wants_keep_alive());
        let h = req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.wants_keep_alive());
        assert!(matches!(
            req(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"),
            Err(ParseError::Expectation)
        ));
        let h =
            req(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap();
        assert!(h.expect_continue);
    }

    #[test]
    fn header_by_name_is_the_first_match_in_any_case() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Id: one\r\nx-id: two\r\nEmpty:\r\n\r\n";
        let h = req(raw).unwrap();
        assert_eq!(h.header(raw, b"x-id"), Some(&b"one"[..]));
        assert_eq!(h.header(raw, b"X-ID"), Some(&b"one"[..]));
        assert_eq!(h.header(raw, b"empty"), Some(&b""[..]));
        assert_eq!(h.header(raw, b"x-i"), None);
        assert_eq!(h.header(raw, b"referer"), None);
    }

    #[test]
    fn response_framing_split_at_every_byte() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y\r\n\r\n";
        for cut in 0..raw.len() {
            let mut head = ResponseHead::default();
            assert!(matches!(
                parse_response(&raw[..cut], &LIMITS, &mut head),
                Ok(Parsed::Partial)
            ));
        }
        let mut head = ResponseHead::default();
        assert!(matches!(
            parse_response(raw, &LIMITS, &mut head),
            Ok(Parsed::Complete(()))
        ));
        assert_eq!(head.framing(Method::Get), BodyFraming::Length(12));
        assert_eq!(head.framing(Method::Head), BodyFraming::None);
        assert_eq!(head.reason.get(raw), b"OK");

        let mut head = ResponseHead::default();
        let raw = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";
        assert!(parse_response(raw, &LIMITS, &mut head).is_ok());
        assert_eq!(head.framing(Method::Get), BodyFraming::None);
        let raw = b"HTTP/1.0 200 OK\r\n\r\n";
        assert!(parse_response(raw, &LIMITS, &mut head).is_ok());
        assert_eq!(head.framing(Method::Get), BodyFraming::UntilClose);
        assert!(!head.upstream_keep_alive());
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(parse_response(raw, &LIMITS, &mut head).is_err());
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_response(raw, &LIMITS, &mut head).is_err());
    }
}
