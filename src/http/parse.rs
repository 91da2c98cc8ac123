//! Stage 2 of the pipeline, *parse*: turns the bytes of a request or response head into a
//! [`RequestHead`] / [`ResponseHead`] that points into the read buffer by offsets (no copies),
//! and applies the strict RFC 9112 framing rules that `httparse` leaves to its caller:
//! one Content-Length made of digits, Transfer-Encoding exactly `chunked`, never both, one Host.
//!
//! `httparse` already rejects bare CR, obs-fold, whitespace before the colon and control
//! characters in field values; everything it accepts is re-checked here for meaning.

use std::mem::MaybeUninit;

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
    /// `Content_Length`, `Transfer_Encoding` (any case): valid names of their own, but a
    /// backend that reads `_` as `-` (CGI and WSGI environments do) would see a second
    /// framing field. Never forwarded, either way.
    FramingLookalike,
    Other,
}

impl HeaderKind {
    /// The kind of a field by its name (any case).
    pub fn classify(name: &[u8]) -> HeaderKind {
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
            14 if eq("content_length") => HeaderKind::FramingLookalike,
            15 if eq("x-forwarded-for") => HeaderKind::XForwardedFor,
            16 if eq("proxy-connection") => HeaderKind::ProxyConnection,
            16 if eq("x-forwarded-host") => HeaderKind::XForwardedHost,
            17 if eq("transfer-encoding") => HeaderKind::TransferEncoding,
            17 if eq("transfer_encoding") => HeaderKind::FramingLookalike,
            17 if eq("x-forwarded-proto") => HeaderKind::XForwardedProto,
            _ => HeaderKind::Other,
        }
    }

    /// A response's fields that describe only the connection it came on (RFC 9110 §7.6.1,
    /// with `Upgrade`, whose 101 the proxy writes itself), and lookalikes of the framing
    /// fields: never relayed as they came, nor kept by the cache. A response's
    /// `X-Forwarded-*` are the backend's own end-to-end fields.
    pub fn is_response_hop(self) -> bool {
        matches!(
            self,
            HeaderKind::Connection
                | HeaderKind::KeepAlive
                | HeaderKind::ProxyConnection
                | HeaderKind::Te
                | HeaderKind::TransferEncoding
                | HeaderKind::Upgrade
                | HeaderKind::FramingLookalike
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
    /// True when `name` is listed in this message's Connection header (`_` read as `-`,
    /// as the backends that read them alike do: [`super::fields::same_field`]).
    pub fn named_in_connection(&self, buf: &[u8], name: &[u8]) -> bool {
        self.conn_tokens
            .iter()
            .any(|t| super::fields::same_field(t.get(buf), name))
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
    /// Whether the upstream lets us reuse the connection after this response. Never after an
    /// HTTP/1.0 one, even with `Connection: keep-alive`: the next request on it might carry a
    /// chunked body, which may not go to a server not known to speak HTTP/1.1 (RFC 9112
    /// §6.1, "remembering the version of a prior received response"); a 1.0 server would
    /// read its chunks as requests.
    pub fn upstream_keep_alive(&self) -> bool {
        self.minor_version == 1 && !self.conn_close
    }
    /// True when `name` is listed in this message's Connection header (`_` read as `-`).
    pub fn named_in_connection(&self, buf: &[u8], name: &[u8]) -> bool {
        self.conn_tokens
            .iter()
            .any(|t| super::fields::same_field(t.get(buf), name))
    }
    /// The value of the first field named `name` (compared case-insensitively), if any.
    pub fn header<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(|h| h.value.get(buf))
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
pub(crate) fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
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
    let (mut te_seen, mut auth_seen) = (false, false);
    out.clear();
    conn_tokens.clear();
    for h in raw {
        let name = h.name.as_bytes();
        let kind = HeaderKind::classify(name);
        // httparse already leaves the whitespace around a value out (after the colon, and
        // trailing before the line end): trimming again cost ~25 instructions per field.
        let value = h.value;
        debug_assert_eq!(
            trim_ows(value),
            value,
            "httparse left whitespace in a value"
        );
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
                // `#expectation`: empty members are ignored (RFC 9110 §5.6.1.2), so `Expect:`
                // and `Expect: , 100-continue` ask for nothing else; `100-continue` is the one
                // expectation there is (§10.1.1).
                for member in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if member.eq_ignore_ascii_case(b"100-continue") {
                        *expect_continue = true;
                    } else if !member.is_empty() {
                        return Err(ParseError::Expectation);
                    }
                }
            }
            // One set of credentials (RFC 9110 §11.6.2): with two, what a route's `auth` or
            // its auth service checked and what the backend reads could differ. nginx
            // refuses them too.
            HeaderKind::Other
                if is_request
                    && name.len() == 13
                    && name.eq_ignore_ascii_case(b"authorization") =>
            {
                if auth_seen {
                    return Err(ParseError::Malformed("duplicate Authorization"));
                }
                auth_seen = true;
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

/// Whether the request line's third word is, as far as it arrived, an HTTP-version (RFC 9112
/// §2.3: `HTTP/` DIGIT `.` DIGIT): httparse refuses every version but 1.0 and 1.1 alike, and
/// only a well-formed one it does not speak is 505; any other word there (`GET / x y`, a
/// second PROXY header) is a malformed request line, 400.
fn names_a_version(buf: &[u8]) -> bool {
    let line = request_line(buf);
    let line = &line[..memchr_newline(line).unwrap_or(line.len())];
    let Some(word) = line.splitn(3, |&b| b == b' ').nth(2) else {
        return false;
    };
    let word = word.strip_suffix(b"\r").unwrap_or(word);
    let word = &word[..word.iter().position(|&b| b == b' ').unwrap_or(word.len())];
    // `0` stands for any digit.
    let shape = b"HTTP/0.0";
    word.len() <= shape.len()
        && word.iter().zip(shape).all(|(&b, &s)| match s {
            b'0' => b.is_ascii_digit(),
            s => b == s,
        })
}

/// Where the request line starts: past the empty lines the parser skips (RFC 9112 §2.2).
fn request_line(buf: &[u8]) -> &[u8] {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n');
    &buf[start.unwrap_or(buf.len())..]
}

/// Whether a request head that was refused before it parsed names HEAD as its method
/// (after the empty lines the parser skips): the proxy's answer then carries no content
/// (RFC 9110 §9.3.2), as its answers to parsed HEAD requests do.
pub fn names_head(buf: &[u8]) -> bool {
    request_line(buf).starts_with(b"HEAD ")
}

/// A request line longer than this is refused as 414 whatever its target: a partial head is
/// judged by it before the target is known, so a complete one must be too, or a head would be
/// accepted whole and refused when it arrives in pieces.
fn request_line_too_long(buf: &[u8], limits: &HeadLimits) -> bool {
    memchr_newline(buf).unwrap_or(buf.len()) > limits.max_uri_bytes + 32
}

/// RFC 9112 §3.2: a request target is origin-form (`/path?query`, any method), absolute-form
/// with an `http` or `https` scheme and a non-empty authority (RFC 9110 §4.2.1), asterisk-form
/// (`*`) for OPTIONS only, or authority-form for CONNECT only (which is then refused with 405).
/// Anything else (`foo`, `?x`, `http:/x`, `ftp://a/b`, `*` with GET), and a target with bytes
/// outside [`uri_bytes`], is refused rather than forwarded: a backend that reads `admin/x` as `/admin/x` would serve a path no route matched.
fn target_form_allowed(target: &[u8], method: Method) -> bool {
    if !uri_bytes(target) {
        return false;
    }
    if target.first() == Some(&b'/') {
        return true;
    }
    if target == b"*" {
        return method == Method::Options;
    }
    if method == Method::Connect {
        return true;
    }
    let rest = if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return false;
    };
    // The authority ends at the path or the query; it may not be empty.
    !matches!(rest.first(), None | Some(b'/' | b'?'))
}

/// The target's bytes are ones the proxy can route on and pass on unambiguously (bytes above
/// `0x7e` are admitted, as raw UTF-8 paths are common). Refused anywhere: a fragment (`#`:
/// never sent, RFC 9110 §4.2.5; `/admin#x` would miss a `path = "/admin"` route and reach a
/// backend that drops it). In the path, which is routed on and normalised: `\` (a WHATWG URL
/// parser, Node's `new URL()` among them, reads `/public\..\admin` as `/admin`), `"<>`{}`,
/// which browsers percent-encode there, and a broken escape (`%zz`), which backends decode
/// each their own way. `|` and `^` pass (browsers send them raw in paths). The query is
/// neither routed on nor decoded: what browsers, `fetch` and curl send there raw
/// (`{"a":1}`, `a|b`, `100%`) passes as nginx and HAProxy pass it.
pub(crate) fn uri_bytes(target: &[u8]) -> bool {
    let query = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    if target[query..].contains(&b'#') {
        return false;
    }
    let target = &target[..query];
    let mut i = 0;
    while i < target.len() {
        if !PATH_SPECIAL[usize::from(target[i])] {
            i += 1;
            continue;
        }
        match target[i] {
            b'%' => {
                let hex = |j: usize| target.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            _ => return false,
        }
    }
    true
}

/// The bytes [`uri_bytes`] looks at in a path: `%` (an escape to check) and those it refuses.
/// A table: matching each byte against the list cost ~20 instructions per byte (callgrind).
static PATH_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let special = b"%#\\\"<>`{}";
    let mut i = 0;
    while i < special.len() {
        t[special[i] as usize] = true;
        i += 1;
    }
    t
};

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
        Err(httparse::Error::Version) if !names_a_version(buf) => {
            return Err(ParseError::Malformed("invalid HTTP version"));
        }
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
    if !target_form_allowed(path.as_bytes(), method_kind) {
        return Err(ParseError::Malformed("request target form"));
    }
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
    // RFC 9110 §15: the status codes are 100 to 599; a client may read any other as it likes.
    if !(100..=599).contains(&code) {
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
    head.reason = if !reason.is_empty() {
        Span::of(buf, reason.as_bytes())
    } else {
        // httparse gives an empty reason when it holds obs-text (`Non trouv\xe9`, UTF-8),
        // which RFC 9112 §4 allows and peers relay: taken from the line it has accepted,
        // `HTTP/1.x NNN ` being 13 bytes.
        let line = &buf[..memchr_newline(buf).unwrap_or(0)];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.get(12..) {
            Some([b' ', rest @ ..]) if !rest.is_empty() => Span::of(buf, rest),
            _ => Span::default(),
        }
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
#[path = "parse_tests.rs"]
mod tests;
