//! Stage 6 of the pipeline, *forward* (heads): writes the request head sent upstream and the
//! response heads sent to the client (interim 1xx ones and the final one), straight from the
//! parsed offsets into an output buffer. Hop-by-hop fields and every field named in
//! `Connection` are dropped; the proxy writes its own framing and X-Forwarded-* / Via fields.

use std::io::Write;
use std::net::IpAddr;

use super::date::DateCache;
use super::fields::{forwarding_claim, never_forwarded, same_field};
use super::parse::{BodyFraming, Header, HeaderKind, RequestHead, ResponseHead};
use crate::rules::Fields;

/// How the body will be written on the outgoing side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFraming {
    /// No body follows.
    None,
    /// `Content-Length: n`, bytes copied as they are.
    Length(u64),
    /// `Transfer-Encoding: chunked`, payload re-encoded in chunks.
    Chunked,
    /// No framing header; the body ends when the proxy closes the connection.
    Close,
}

/// Where the request target and Host come from.
pub struct Target<'a> {
    /// origin-form path and query to send (absolute-form is reduced to this).
    pub path: &'a [u8],
    /// Authority from an absolute-form target, which overrides Host (RFC 9112 §3.2.2).
    pub authority: Option<&'a [u8]>,
}

/// Splits an absolute-form target (`http://host:port/p?q`) into authority and path.
pub fn split_target(target: &[u8]) -> Target<'_> {
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        Some(&target[7..])
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        Some(&target[8..])
    } else {
        None
    };
    match rest {
        None => Target {
            path: target,
            authority: None,
        },
        Some(rest) => {
            let end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            Target {
                path: if path.is_empty() { b"/" } else { path },
                authority: Some(authority),
            }
        }
    }
}

/// Headers the proxy sets itself, each replacing any field of its name: (name, value). An
/// empty value only removes the field (a header that is set only for some clients, such as
/// the mTLS subject, is still never taken from the client).
pub type SetHeader<'a> = &'a [(&'a [u8], &'a [u8])];

#[inline]
fn replaced(set: SetHeader<'_>, name: &[u8]) -> bool {
    set.iter().any(|(n, _)| same_field(n, name))
}

fn write_set(set: SetHeader<'_>, out: &mut Vec<u8>) {
    for (n, v) in set.iter().filter(|(_, v)| !v.is_empty()) {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
}

/// What the upstream request head is written from, besides the client's parsed head.
#[derive(Clone, Copy)]
pub struct UpstreamRequest<'a> {
    /// The client's target, split by [`split_target`]: its path is sent.
    pub target: &'a Target<'a>,
    /// The Host value to send.
    pub host: &'a [u8],
    /// Appended to X-Forwarded-For: the peer (the hop this proxy saw).
    pub client_ip: IpAddr,
    /// The incoming X-Forwarded-For is kept (the peer is a trusted proxy); otherwise only
    /// `client_ip` is sent, and the peer's other forwarding claims (`Forwarded`,
    /// `X-Forwarded-Port`, `-Prefix`, `-Server`, ...) are dropped too.
    pub keep_forwarded_for: bool,
    /// How the body will be written.
    pub framing: OutFraming,
    /// Fields the proxy sets (the request id, the mTLS subject), replacing any incoming
    /// field of their names.
    pub set: SetHeader<'a>,
    /// The client spoke TLS to us: `X-Forwarded-Proto: https`.
    pub https: bool,
    /// A route's `upstream_host`: the Host sent instead of `host` (which X-Forwarded-Host
    /// still carries).
    pub upstream_host: Option<&'a [u8]>,
    /// The listener's and route's `request_headers`, when either has any.
    pub rules: Option<Fields<'a>>,
}

/// Writes the request head for the upstream: the client's head (`buf`, `head`) as `req`
/// says.
pub fn upstream_request_head(
    buf: &[u8],
    head: &RequestHead,
    req: &UpstreamRequest<'_>,
    out: &mut Vec<u8>,
) {
    let UpstreamRequest {
        target,
        host,
        client_ip,
        keep_forwarded_for,
        framing,
        set,
        https,
        upstream_host,
        rules,
    } = *req;
    out.extend_from_slice(head.method.get(buf));
    out.push(b' ');
    if target.path.first() == Some(&b'?') {
        // `http://host?q` has an empty path: origin-form needs the `/`.
        out.push(b'/');
    }
    out.extend_from_slice(target.path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(upstream_host.unwrap_or(host));
    out.extend_from_slice(b"\r\n");
    let mut has_xff = false;
    // From a trusted proxy, the scheme and host its client used (the first of each).
    let (mut proto, mut fwd_host): (Option<&[u8]>, Option<&[u8]>) = (None, None);
    let mut fields = FieldCopy::new(buf);
    for h in &head.headers {
        match h.kind {
            HeaderKind::Other => {
                let name = h.name.get(buf);
                if (!keep_forwarded_for && forwarding_claim(name))
                    || spells_own_forwarded(name)
                    || never_forwarded(name)
                    || (!head.conn_tokens.is_empty() && head.named_in_connection(buf, name))
                    || replaced(set, name)
                    || rules.is_some_and(|r| r.drops(name))
                {
                    continue;
                }
                fields.push(h, out);
            }
            HeaderKind::XForwardedFor => has_xff = keep_forwarded_for,
            HeaderKind::XForwardedProto if keep_forwarded_for => {
                proto = proto.or(Some(h.value.get(buf)).filter(|v| valid_proto(v)));
            }
            HeaderKind::XForwardedHost if keep_forwarded_for => {
                fwd_host = fwd_host.or(Some(h.value.get(buf)).filter(|v| !v.is_empty()));
            }
            // Host is written above; the rest are hop-by-hop or replaced below.
            _ => {}
        }
    }
    fields.finish(out);
    // All X-Forwarded-For lines (from a trusted proxy) merge into one, in order, with the
    // peer appended.
    out.extend_from_slice(b"X-Forwarded-For: ");
    if has_xff {
        for h in head
            .headers
            .iter()
            .filter(|h| h.kind == HeaderKind::XForwardedFor)
        {
            let v = h.value.get(buf);
            if !v.is_empty() {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
    }
    write_ip(client_ip, out);
    match proto {
        Some(p) => {
            out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        None if https => out.extend_from_slice(b"\r\nX-Forwarded-Proto: https\r\n"),
        None => out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\n"),
    }
    let fwd_host = fwd_host.unwrap_or(host);
    if !fwd_host.is_empty() {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(fwd_host);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Via: 1.1 edgeshard\r\n");
    write_set(set, out);
    if let Some(r) = rules {
        r.write(set, out);
    }
    write_framing(framing, out);
    out.extend_from_slice(b"\r\n");
}

/// A scheme a trusted proxy may pass on in `X-Forwarded-Proto`: `http` or `https`, in any
/// case (anything else, a list included, is replaced by the proxy's own).
fn valid_proto(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"http") || v.eq_ignore_ascii_case(b"https")
}

/// A name the proxy writes (`X-Forwarded-For`, `-Proto`, `-Host`) spelled with `_`: never
/// forwarded, whoever sent it (a backend that reads `_` as `-` would see two values, one
/// the proxy did not vouch for). The `-` spellings are [`HeaderKind`]s, not `Other`.
fn spells_own_forwarded(name: &[u8]) -> bool {
    matches!(name.len(), 15..=17)
        && [
            &b"x-forwarded-for"[..],
            b"x-forwarded-proto",
            b"x-forwarded-host",
        ]
        .iter()
        .any(|n| same_field(name, n))
}

fn write_framing(framing: OutFraming, out: &mut Vec<u8>) {
    match framing {
        OutFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            let mut b = itoa_buf(n);
            out.extend_from_slice(b.as_str());
            out.extend_from_slice(b"\r\n");
        }
        OutFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        OutFraming::None | OutFraming::Close => {}
    }
}

/// Turns an upstream request head written by [`upstream_request_head`] with
/// [`OutFraming::Chunked`] into one with `Content-Length: n`: the framing field is the last
/// one it writes. For a chunked body read whole and decoded (`forward/buffer.rs`). False,
/// and `out` unchanged, when `out` does not end that way.
pub fn reframe_with_length(out: &mut Vec<u8>, n: u64) -> bool {
    const CHUNKED: &[u8] = b"\r\nTransfer-Encoding: chunked\r\n\r\n";
    if !out.ends_with(CHUNKED) {
        return false;
    }
    out.truncate(out.len() - CHUNKED.len() + 2);
    write_framing(OutFraming::Length(n), out);
    out.extend_from_slice(b"\r\n");
    true
}

/// Decides how a response body is written to the client, given how it arrives and the
/// client's HTTP version; returns the outgoing framing and whether the client connection
/// must close afterwards because the body is close-delimited.
pub fn response_out_framing(incoming: BodyFraming, client_minor: u8) -> (OutFraming, bool) {
    match (incoming, client_minor) {
        (BodyFraming::None, _) => (OutFraming::None, false),
        (BodyFraming::Length(n), _) => (OutFraming::Length(n), false),
        (BodyFraming::Chunked | BodyFraming::UntilClose, 1) => (OutFraming::Chunked, false),
        // Never send chunked to an HTTP/1.0 client: close-delimit instead.
        (BodyFraming::Chunked | BodyFraming::UntilClose, _) => (OutFraming::Close, true),
    }
}

/// What the proxy changes in a forwarded response head beyond its hop-by-hop fields: `set`
/// (the request id, HSTS, the proxy's own `Server`) replaces any field of its name from the
/// upstream; the backend's `Server`, `X-Powered-By` and the `hide` names
/// (`server.hide_response_headers`, lowercase) are removed; with `date`, a `Date` is added
/// when the backend sent none (RFC 9110 §6.6.1: a recipient with a clock must add one).
#[derive(Clone, Copy)]
pub struct Rewrite<'a> {
    pub set: SetHeader<'a>,
    pub hide: &'a [Box<str>],
    pub date: Option<&'a DateCache>,
    /// The listener's and route's `response_headers`, when either has any: fields they
    /// remove or set are dropped, theirs written after `set` (whose names win).
    pub rules: Option<Fields<'a>>,
}

/// Which trailer fields of a response go to the client: none its head did not show (the
/// backend's `Server` and `X-Powered-By`, the `hide` names, those the proxy or the rules set
/// or remove, those its `Connection` named), in any spelling with `_` for `-`.
pub struct TrailerFilter<'a> {
    pub rw: Rewrite<'a>,
    /// The names the head's `Connection` listed (copied: the head's buffer is reused for the
    /// body).
    pub named: Vec<Box<[u8]>>,
}

impl TrailerFilter<'_> {
    pub fn keeps(&self, name: &[u8]) -> bool {
        let rw = &self.rw;
        !(same_field(name, b"server")
            || same_field(name, b"x-powered-by")
            || rw.hide.iter().any(|n| same_field(name, n.as_bytes()))
            || replaced(rw.set, name)
            || rw.rules.is_some_and(|r| r.drops(name))
            || self.named.iter().any(|n| same_field(n, name)))
    }
}

impl<'a> Rewrite<'a> {
    /// Only `set`: what the unit tests and the fuzz checks (`fuzz_checks.rs`) build.
    pub fn set(set: SetHeader<'a>) -> Rewrite<'a> {
        Rewrite {
            set,
            hide: &[],
            date: None,
            rules: None,
        }
    }
}

/// Writes the response head for the client.
pub fn client_response_head(
    buf: &[u8],
    head: &ResponseHead,
    framing: OutFraming,
    close: bool,
    client_minor: u8,
    rw: Rewrite<'_>,
    out: &mut Vec<u8>,
) {
    status_line(buf, head, out);
    // A body-less response keeps the upstream's Content-Length (HEAD, 304), except 204.
    let keep_length = framing == OutFraming::None && head.status != 204;
    let has_date = copy_response_fields(buf, head, rw, out, |kind| match kind {
        HeaderKind::Upgrade => Some(false),
        HeaderKind::ContentLength => Some(keep_length),
        // `Trailer` announces fields after a chunked body: none follow a length or a close.
        // (Otherwise the usual rules: `hide_response_headers`, the backend's `Connection`.)
        HeaderKind::Trailer if matches!(framing, OutFraming::Length(_) | OutFraming::Close) => {
            Some(false)
        }
        _ => None,
    });
    if let (false, Some(date)) = (has_date, rw.date) {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(&date.now());
        out.extend_from_slice(b"\r\n");
    }
    write_set(rw.set, out);
    if let Some(r) = rw.rules {
        r.write(rw.set, out);
    }
    write_framing(framing, out);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the `101 Switching Protocols` head for the client: the backend's fields except
/// hop-by-hop ones, with its `Upgrade` kept and `Connection: upgrade`; `rw` as in
/// [`client_response_head`] (no `Date` is added to a 1xx).
pub fn switching_protocols_head(
    buf: &[u8],
    head: &ResponseHead,
    rw: Rewrite<'_>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    copy_response_fields(buf, head, rw, out, |kind| match kind {
        HeaderKind::Upgrade => Some(true),
        HeaderKind::ContentLength => Some(false),
        _ => None,
    });
    write_set(rw.set, out);
    if let Some(r) = rw.rules {
        r.write(rw.set, out);
    }
    out.extend_from_slice(b"Connection: upgrade\r\n\r\n");
}

/// `HTTP/1.1 <code> <upstream reason>`: the status line of every relayed response.
fn status_line(buf: &[u8], head: &ResponseHead, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa_buf(u64::from(head.status));
    out.extend_from_slice(code.as_str());
    out.push(b' ');
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");
}

/// Writes an interim (1xx, not 101) response head for the client: the backend's status,
/// reason and fields, by the rules of [`client_response_head`] (hop-by-hop fields and those
/// named in `Connection` dropped, the backend's identity hidden: `hide` as in [`Rewrite`]),
/// with no framing (an interim response has no body, so `Content-Length` goes too) and no
/// `Connection` field of the proxy's own.
pub fn interim_response_head(
    buf: &[u8],
    head: &ResponseHead,
    hide: &[Box<str>],
    out: &mut Vec<u8>,
) {
    status_line(buf, head, out);
    let rw = Rewrite {
        set: &[],
        hide,
        date: None,
        rules: None,
    };
    copy_response_fields(buf, head, rw, out, |kind| match kind {
        HeaderKind::Upgrade | HeaderKind::ContentLength => Some(false),
        _ => None,
    });
    out.extend_from_slice(b"\r\n");
}

/// Copies the upstream's response fields to the client head: hop-by-hop fields
/// ([`HeaderKind::is_response_hop`]), those named in `Connection`, and those [`Rewrite`]
/// removes or replaces are dropped; `decide` settles the kinds that depend on the response
/// (Some(keep)), None = the default rule. Returns whether the upstream sent a `Date`.
fn copy_response_fields(
    buf: &[u8],
    head: &ResponseHead,
    rw: Rewrite<'_>,
    out: &mut Vec<u8>,
    decide: impl Fn(HeaderKind) -> Option<bool>,
) -> bool {
    let mut has_date = false;
    let mut fields = FieldCopy::new(buf);
    for h in &head.headers {
        let keep = decide(h.kind).unwrap_or_else(|| match h.kind {
            k if k.is_response_hop() => false,
            _ => {
                let name = h.name.get(buf);
                // `_` for `-` too: a client that reads them alike must not see `x_powered_by`.
                let eq = |s: &[u8]| same_field(name, s);
                // Length first: one comparison at most for most fields.
                let (date, shown) = match name.len() {
                    4 if eq(b"date") => (true, true),
                    6 if eq(b"server") => (false, false),
                    12 if eq(b"x-powered-by") => (false, false),
                    _ => (false, !rw.hide.iter().any(|n| eq(n.as_bytes()))),
                };
                let keep = shown
                    && (head.conn_tokens.is_empty() || !head.named_in_connection(buf, name))
                    && !replaced(rw.set, name)
                    && !rw.rules.is_some_and(|r| r.drops(name));
                // A `Date` the backend named in `Connection` is gone: the proxy adds its own.
                has_date |= date && keep;
                keep
            }
        });
        if keep {
            fields.push(h, out);
        }
    }
    fields.finish(out);
    has_date
}

/// Writes forwarded fields as `name: value\r\n`. A field whose bytes in `buf` already have
/// that form is not written piece by piece: fields in that form that follow each other in
/// `buf` go out as one copy of their bytes, so the output is the same as writing each one
/// (four copies per field cost ~60 instructions; a typical response's fields are two runs).
/// Pending bytes are written by the next field not in that form, or by [`FieldCopy::finish`],
/// which must be called before anything else is written to `out`.
struct FieldCopy<'b> {
    buf: &'b [u8],
    /// The pending run of `buf`, `start..end` (empty: none).
    start: usize,
    end: usize,
}

impl<'b> FieldCopy<'b> {
    fn new(buf: &'b [u8]) -> Self {
        FieldCopy {
            buf,
            start: 0,
            end: 0,
        }
    }

    #[inline]
    fn push(&mut self, h: &Header, out: &mut Vec<u8>) {
        let (name, value) = (h.name.start as usize, h.value.start as usize);
        let (name_end, value_end) = (h.name.end as usize, h.value.end as usize);
        let as_written = value == name_end + 2
            && self.buf.get(name_end..value) == Some(b": ")
            && self.buf.get(value_end..value_end + 2) == Some(b"\r\n");
        if as_written {
            if self.end == name && self.start < self.end {
                self.end = value_end + 2;
            } else {
                self.finish(out);
                (self.start, self.end) = (name, value_end + 2);
            }
            return;
        }
        self.finish(out);
        out.extend_from_slice(&self.buf[name..name_end]);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&self.buf[value..value_end]);
        out.extend_from_slice(b"\r\n");
    }

    /// Writes the pending run, if any.
    #[inline]
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.start < self.end {
            out.extend_from_slice(&self.buf[self.start..self.end]);
        }
        (self.start, self.end) = (0, 0);
    }
}

/// Writes an IP address; IPv4 by hand, since `fmt` costs ~400 instructions per request.
pub fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            // Into a stack buffer, then one copy: four `extend_from_slice` calls cost ~300
            // instructions per request (callgrind).
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A small stack buffer holding a decimal number.
pub struct NumBuf {
    bytes: [u8; 20],
    start: usize,
}

impl NumBuf {
    pub fn as_str(&mut self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

pub fn itoa_buf(mut n: u64) -> NumBuf {
    let mut b = NumBuf {
        bytes: [0; 20],
        start: 20,
    };
    loop {
        b.start -= 1;
        b.bytes[b.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
