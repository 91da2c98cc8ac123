//! The checks behind the fuzz targets in `fuzz/`, kept in the crate so that the targets
//! (nightly-only libFuzzer, run by hand) and the corpus replay in `tests/fuzz_corpus.rs`
//! (stable, run by `cargo test`) assert exactly the same things. Each function takes arbitrary
//! bytes and panics when an invariant does not hold; it must never panic otherwise.
//!
//! Not part of the proxy: hidden from the documentation.

use std::path::Path;

use crate::http::chunked::{ChunkedDecoder, ChunkedError};
use crate::http::parse::{
    parse_request, parse_response, HeadLimits, ParseError, Parsed, RequestHead, ResponseHead,
};

/// The limits each head is parsed under: the defaults, small ones that the fuzzer reaches
/// easily, and degenerate ones (zero and one).
pub const LIMITS: [HeadLimits; 4] = [
    HeadLimits {
        max_header_bytes: 16384,
        max_headers: 100,
        max_uri_bytes: 8192,
    },
    HeadLimits {
        max_header_bytes: 96,
        max_headers: 3,
        max_uri_bytes: 16,
    },
    HeadLimits {
        max_header_bytes: 0,
        max_headers: 0,
        max_uri_bytes: 0,
    },
    HeadLimits {
        max_header_bytes: 1,
        max_headers: 1,
        max_uri_bytes: 1,
    },
];

/// One parse's outcome, comparable across buffers: spans are offsets, so a head parsed from a
/// prefix that holds it whole equals the head parsed from the whole input.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete { head_len: usize, head: String },
    Partial,
    Error(ParseError),
}

/// Parses a request head; asserts that every span lies inside the head.
pub fn request_outcome(buf: &[u8], limits: &HeadLimits, head: &mut RequestHead) -> Outcome {
    match parse_request(buf, limits, head) {
        Ok(Parsed::Complete(())) => {
            let n = head.head_len;
            assert!(n <= buf.len(), "head_len {n} > input {}", buf.len());
            assert!(n <= limits.max_header_bytes, "head_len {n} over the limit");
            assert!(
                head.target.len() <= limits.max_uri_bytes,
                "target over the limit"
            );
            assert!(head.headers.len() <= limits.max_headers.max(1));
            let mut spans = vec![head.method, head.target];
            spans.extend(head.host);
            spans.extend(head.conn_tokens.iter().copied());
            for h in &head.headers {
                spans.push(h.name);
                spans.push(h.value);
            }
            for s in spans {
                assert!(
                    s.start <= s.end && s.end as usize <= n,
                    "span {s:?} outside 0..{n}"
                );
            }
            assert!(!head.method.is_empty());
            Outcome::Complete {
                head_len: n,
                head: format!("{head:?}"),
            }
        }
        Ok(Parsed::Partial) => Outcome::Partial,
        Err(e) => Outcome::Error(e),
    }
}

/// Parses a response head; asserts that every span lies inside the head.
pub fn response_outcome(buf: &[u8], limits: &HeadLimits, head: &mut ResponseHead) -> Outcome {
    match parse_response(buf, limits, head) {
        Ok(Parsed::Complete(())) => {
            let n = head.head_len;
            assert!(n <= buf.len(), "head_len {n} > input {}", buf.len());
            assert!(n <= limits.max_header_bytes, "head_len {n} over the limit");
            assert!((100..=999).contains(&head.status));
            assert!(!(head.chunked && head.content_length.is_some()));
            assert!(head.headers.len() <= limits.max_headers.max(1));
            let mut spans = vec![head.reason];
            spans.extend(head.conn_tokens.iter().copied());
            for h in &head.headers {
                spans.push(h.name);
                spans.push(h.value);
            }
            for s in spans {
                assert!(
                    s.start <= s.end && s.end as usize <= n,
                    "span {s:?} outside 0..{n}"
                );
            }
            Outcome::Complete {
                head_len: n,
                head: format!("{head:?}"),
            }
        }
        Ok(Parsed::Partial) => Outcome::Partial,
        Err(e) => Outcome::Error(e),
    }
}

/// The cut points tried for an input: a few fixed ones and one derived from its bytes.
fn cuts(data: &[u8]) -> Vec<usize> {
    let len = data.len();
    if len == 0 {
        return vec![0];
    }
    let h = data
        .iter()
        .fold(0usize, |h, &b| h.wrapping_mul(31).wrapping_add(b as usize));
    let mut v = vec![0, 1, len / 2, len - 1, h % len];
    // Just before and at the end of the line structure: where the head completes.
    if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
        v.extend([p + 3, p + 4]);
    }
    v.retain(|&c| c <= len);
    v.sort_unstable();
    v.dedup();
    v
}

/// What a prefix may give, knowing what the whole input gave: a complete head is Partial on
/// every prefix shorter than it and the same head on every longer one; an error on a prefix is
/// an error on the whole (more bytes never make a refused head acceptable).
fn assert_prefix_consistent(whole: &Outcome, cut: usize, part: &Outcome) {
    match (whole, part) {
        (Outcome::Complete { head_len, .. }, Outcome::Partial) if cut < *head_len => {}
        (Outcome::Complete { head_len, .. }, p) if cut < *head_len => {
            panic!("prefix {cut} of a head of {head_len} gave {p:?}")
        }
        (w @ Outcome::Complete { .. }, p) => {
            assert_eq!(w, p, "prefix {cut} holding the whole head differs")
        }
        (_, Outcome::Complete { .. }) => panic!("prefix {cut} complete, whole input {whole:?}"),
        (Outcome::Partial, Outcome::Error(e)) => {
            panic!("prefix {cut} refused ({e:?}) but the whole input is Partial")
        }
        (_, _) => {}
    }
}

/// Fuzz target `request_head`.
pub fn request_head(data: &[u8]) {
    // One head reused across parses, as a connection does: leftovers must not leak through.
    let mut reused = RequestHead::default();
    for limits in &LIMITS {
        let whole = request_outcome(data, limits, &mut RequestHead::default());
        assert_eq!(whole, request_outcome(data, limits, &mut reused), "reuse");
        for cut in cuts(data) {
            let part = request_outcome(&data[..cut], limits, &mut reused);
            assert_prefix_consistent(&whole, cut, &part);
        }
    }
}

/// Fuzz target `response_head`.
pub fn response_head(data: &[u8]) {
    let mut reused = ResponseHead::default();
    for limits in &LIMITS {
        let whole = response_outcome(data, limits, &mut ResponseHead::default());
        assert_eq!(whole, response_outcome(data, limits, &mut reused), "reuse");
        for cut in cuts(data) {
            let part = response_outcome(&data[..cut], limits, &mut reused);
            assert_prefix_consistent(&whole, cut, &part);
        }
    }
}

/// The result of decoding a body: payload, trailers, bytes consumed (0 after an error), done,
/// or the error.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub payload: Vec<u8>,
    pub trailers: Vec<u8>,
    pub consumed: usize,
    pub done: bool,
    pub error: Option<ChunkedError>,
}

/// Drives a decoder over `body` delivered in pieces of the given sizes (the last piece takes
/// the rest), the way the relay does: each piece until consumed or done.
pub fn decode_in_pieces(body: &[u8], max_overhead: usize, sizes: &[usize]) -> Decoded {
    let mut d = ChunkedDecoder::new(max_overhead);
    let mut out = Decoded {
        payload: Vec::new(),
        trailers: Vec::new(),
        consumed: 0,
        done: false,
        error: None,
    };
    let mut start = 0;
    let mut sizes = sizes.iter();
    while start < body.len() && !d.is_done() {
        let end = match sizes.next() {
            Some(&n) => (start + n.max(1)).min(body.len()),
            None => body.len(),
        };
        let piece = &body[start..end];
        let mut pos = 0;
        while pos < piece.len() && !d.is_done() {
            match d.decode(&piece[pos..]) {
                Ok(step) => {
                    let rest = piece.len() - pos;
                    assert!(
                        step.consumed <= rest,
                        "consumed {} of {rest}",
                        step.consumed
                    );
                    let (a, b) = step.data;
                    assert!(
                        a <= b && b <= step.consumed,
                        "data {a}..{b} of {}",
                        step.consumed
                    );
                    assert!(step.consumed > 0 || step.done, "no progress");
                    assert_eq!(step.done, d.is_done());
                    out.payload.extend_from_slice(&piece[pos + a..pos + b]);
                    pos += step.consumed;
                }
                Err(e) => {
                    // How far the failing call read is not reported, so `consumed` stays 0:
                    // the position of the error would depend on where the pieces were cut.
                    out.error = Some(e);
                    out.trailers = d.trailers;
                    return out;
                }
            }
        }
        start += pos;
        if pos < piece.len() {
            break;
        }
    }
    out.consumed = start;
    out.done = d.is_done();
    out.trailers = d.trailers;
    assert!(out.payload.len() <= out.consumed, "more payload than input");
    assert!(out.payload.len() + out.trailers.len() <= body.len());
    out
}

/// Fuzz target `chunked`: the first byte picks the framing budget, the next 8 the piece sizes;
/// the body decodes the same whole, byte by byte and in those pieces.
pub fn chunked(data: &[u8]) {
    let (budget, sizes, body) = match data {
        [b, s @ ..] if s.len() >= 8 => (*b, &s[..8], &s[8..]),
        _ => (0, &[][..], data),
    };
    let max_overhead = [0, 1, 16, 64, 1024, 1 << 16][budget as usize % 6];
    let sizes: Vec<usize> = sizes.iter().map(|&s| s as usize % 32 + 1).collect();
    let whole = decode_in_pieces(body, max_overhead, &[]);
    let pieces = decode_in_pieces(body, max_overhead, &sizes.repeat(body.len() / 8 + 1));
    assert_eq!(whole, pieces, "pieces {sizes:?}");
    if body.len() <= 4096 {
        let bytes = decode_in_pieces(body, max_overhead, &vec![1; body.len()]);
        assert_eq!(whole, bytes, "byte by byte");
    }
    if whole.error.is_none() {
        assert!(whole.done || whole.consumed == body.len());
    }
}

/// Fuzz target `config`: any text is a configuration or an error, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(text, Path::new("fuzz.toml"));
    }
}

/// Fuzz target `proxy_protocol`: [`crate::proxy_protocol::parse`] never panics and never
/// claims more bytes than it was given; fed through [`crate::proxy_protocol::Taken`] as the
/// bytes arrive in the pieces [`cuts`] gives (as `conn::serve` peeks and takes them), it ends
/// with the same header, having taken exactly its bytes, or refuses when the whole is refused.
pub fn proxy_protocol(data: &[u8]) {
    use crate::proxy_protocol::{parse, Step, Taken};
    let whole = parse(data);
    if let Ok(Some(h)) = &whole {
        assert!(h.len <= data.len(), "a header longer than its input");
    }
    let mut arrivals = cuts(data);
    arrivals.push(data.len());
    arrivals.sort_unstable();
    arrivals.dedup();
    let mut taken = Taken::default();
    let mut pos = 0;
    let mut end = None;
    for arrived in arrivals {
        if arrived <= pos {
            continue;
        }
        match taken.offer(&data[pos..arrived]) {
            Ok(Step::More(k)) => {
                assert!(k <= arrived - pos, "took more than was waiting");
                pos += k;
            }
            Ok(Step::Done(h, k)) => {
                pos += k;
                end = Some(Ok(h));
                break;
            }
            Err(e) => {
                end = Some(Err(e));
                break;
            }
        }
    }
    match (&whole, end) {
        (Ok(Some(h)), Some(Ok(got))) => {
            assert_eq!(*h, got, "the header depends on how its bytes arrived");
            assert_eq!(pos, h.len, "took {pos} bytes of a {}-byte header", h.len);
        }
        (Err(_), Some(Err(_))) => {}
        (Ok(None), None) => {}
        (w, e) => panic!("whole input: {w:?}, in pieces: {e:?}"),
    }
}

/// Limits for parsing what the proxy wrote: its own fields come on top of the input's.
const WRITTEN: HeadLimits = HeadLimits {
    max_header_bytes: 1 << 20,
    max_headers: 512,
    max_uri_bytes: 1 << 20,
};

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What the proxy wrote (`out`) parsed back as one complete head, of exactly its bytes.
fn assert_one_head(parsed: Result<Parsed<()>, ParseError>, head_len: usize, out: &[u8]) {
    assert!(
        matches!(parsed, Ok(Parsed::Complete(()))),
        "the written head does not parse ({:?}):\n{}",
        parsed.map(|_| ()),
        lossy(out)
    );
    assert_eq!(head_len, out.len(), "bytes after the head:\n{}", lossy(out));
}

/// Fuzz target `forward_request`: a request head the parser accepts and the router does not
/// refuse ([`crate::route::routing_input`]; CONNECT is refused with 405) is written for the
/// backend ([`upstream_request_head`]) as one well-formed HTTP/1.1 head that parses back
/// whole: the same method, an origin-form target (or `*`), exactly one Host with the routed
/// host, the same body framing written once, no hop-by-hop field and nothing the client's
/// `Connection` named, and every other field either the client's, byte for byte, or one of the
/// proxy's own.
pub fn forward_request(data: &[u8]) {
    use crate::http::encode::{split_target, upstream_request_head, OutFraming, UpstreamRequest};
    use crate::http::parse::{BodyFraming, HeaderKind, Method};
    let mut head = RequestHead::default();
    if !matches!(
        parse_request(data, &LIMITS[0], &mut head),
        Ok(Parsed::Complete(()))
    ) || head.method() == Method::Connect
    {
        return;
    }
    let target = split_target(head.target.get(data));
    let Some((host, _)) = crate::route::routing_input(&target, head.host.map(|h| h.get(data)))
    else {
        return;
    };
    let framing = match head.framing() {
        BodyFraming::None => OutFraming::None,
        BodyFraming::Length(n) => OutFraming::Length(n),
        BodyFraming::Chunked | BodyFraming::UntilClose => OutFraming::Chunked,
    };
    let own: &[(&[u8], &[u8])] = &[(b"X-Request-Id", b"0123456789abcdef")];
    for keep_forwarded_for in [false, true] {
        let mut out = Vec::new();
        let req = UpstreamRequest {
            target: &target,
            host,
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            keep_forwarded_for,
            framing,
            set: own,
            https: false,
            upstream_host: None,
            rules: None,
        };
        upstream_request_head(data, &head, &req, &mut out);
        let mut sent = RequestHead::default();
        let parsed = parse_request(&out, &WRITTEN, &mut sent);
        assert_one_head(parsed, sent.head_len, &out);
        assert_eq!(sent.method.get(&out), head.method.get(data));
        assert_eq!(sent.minor_version, 1);
        let t = sent.target.get(&out);
        assert!(
            t.first() == Some(&b'/') || (t == b"*" && sent.method() == Method::Options),
            "target {:?} is not origin-form",
            lossy(t)
        );
        assert_eq!(
            sent.host.map(|h| h.get(&out)),
            Some(host),
            "{}",
            lossy(&out)
        );
        let want = match framing {
            OutFraming::Length(n) => BodyFraming::Length(n),
            OutFraming::Chunked => BodyFraming::Chunked,
            OutFraming::None | OutFraming::Close => BodyFraming::None,
        };
        assert_eq!(sent.framing(), want, "{}", lossy(&out));
        let from_client = |name: &[u8], value: &[u8]| {
            head.headers
                .iter()
                .any(|h| h.name.get(data) == name && h.value.get(data) == value)
        };
        for h in &sent.headers {
            let (name, value) = (h.name.get(&out), h.value.get(&out));
            match h.kind {
                HeaderKind::Host
                | HeaderKind::ContentLength
                | HeaderKind::TransferEncoding
                | HeaderKind::XForwardedFor
                | HeaderKind::XForwardedProto
                | HeaderKind::XForwardedHost => {}
                // The proxy's own fields belong to its hop: a client's `Connection: Via`
                // does not remove them.
                HeaderKind::Other
                    if name == b"Via" || own.iter().any(|(n, v)| *n == name && *v == value) => {}
                HeaderKind::Other => {
                    assert!(
                        !head.named_in_connection(data, name),
                        "{:?} was named in Connection",
                        lossy(name)
                    );
                    assert!(
                        from_client(name, value),
                        "{:?}: {:?} is neither the client's nor the proxy's",
                        lossy(name),
                        lossy(value)
                    );
                }
                k => panic!("hop-by-hop {k:?} forwarded:\n{}", lossy(&out)),
            }
        }
    }
}

/// Fuzz target `forward_response`: a final response head the parser accepts is written for
/// the client ([`client_response_head`](crate::http::encode::client_response_head)), for a
/// GET from an HTTP/1.1 and an HTTP/1.0 client and for a HEAD, as one well-formed head that
/// parses back whole with the same status, the framing [`response_out_framing`]
/// (crate::http::encode::response_out_framing) chose written once (never chunked to 1.0),
/// `Connection: close` when the body is close-delimited, and no hop-by-hop field but the proxy's
/// own `Connection`.
pub fn forward_response(data: &[u8]) {
    use crate::http::encode::{client_response_head, response_out_framing, OutFraming, Rewrite};
    use crate::http::parse::{HeaderKind, Method};
    let mut head = ResponseHead::default();
    if !matches!(
        parse_response(data, &LIMITS[0], &mut head),
        Ok(Parsed::Complete(()))
    ) || (100..200).contains(&head.status)
    {
        return;
    }
    for (method, minor) in [(Method::Get, 1), (Method::Get, 0), (Method::Head, 1)] {
        let (framing, close) = response_out_framing(head.framing(method), minor);
        let mut out = Vec::new();
        let own: &[(&[u8], &[u8])] = &[(b"X-Request-Id", b"0123456789abcdef")];
        client_response_head(
            data,
            &head,
            framing,
            close,
            minor,
            Rewrite::set(own),
            &mut out,
        );
        let mut sent = ResponseHead::default();
        let parsed = parse_response(&out, &WRITTEN, &mut sent);
        assert_one_head(parsed, sent.head_len, &out);
        assert_eq!(sent.status, head.status);
        match framing {
            OutFraming::Length(n) => {
                assert_eq!((sent.content_length, sent.chunked), (Some(n), false))
            }
            OutFraming::Chunked => {
                assert_eq!(minor, 1, "chunked to an HTTP/1.0 client");
                assert_eq!((sent.content_length, sent.chunked), (None, true));
            }
            OutFraming::Close => {
                assert_eq!((sent.content_length, sent.chunked), (None, false));
                assert!(
                    sent.conn_close,
                    "a close-delimited body without Connection: close"
                );
            }
            // A HEAD or 304 answer may keep the backend's Content-Length; never chunked.
            OutFraming::None => assert!(!sent.chunked, "{}", lossy(&out)),
        }
        let connection: Vec<&[u8]> = sent
            .headers
            .iter()
            .filter(|h| h.kind == HeaderKind::Connection)
            .map(|h| h.value.get(&out))
            .collect();
        assert!(
            matches!(connection[..], [] | [b"close"] | [b"keep-alive"]),
            "Connection is the proxy's own or none:\n{}",
            lossy(&out)
        );
        for h in &sent.headers {
            match h.kind {
                HeaderKind::Connection
                | HeaderKind::ContentLength
                | HeaderKind::TransferEncoding
                | HeaderKind::Other
                | HeaderKind::Host
                | HeaderKind::XForwardedFor
                | HeaderKind::XForwardedProto
                | HeaderKind::XForwardedHost
                | HeaderKind::Expect
                // End to end (RFC 9110 §6.6.2): it announces the trailers that are relayed.
                | HeaderKind::Trailer => {}
                k => panic!("hop-by-hop {k:?} relayed:\n{}", lossy(&out)),
            }
            let proxys = own.iter().any(|(n, _)| *n == h.name.get(&out));
            if h.kind == HeaderKind::Other && !proxys {
                assert!(
                    !head.named_in_connection(data, h.name.get(&out)),
                    "{:?} was named in Connection",
                    lossy(h.name.get(&out))
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The first `chunked` run stopped on its seed `trailer-fold` (`0\r\n folded\r\n\r\n`):
    /// the check compared how far the decoder had got when it failed, which depends on where
    /// the pieces were cut (a failing call does not report it). The decoder was right; the
    /// check no longer compares that position.
    #[test]
    fn chunked_error_position_does_not_depend_on_pieces() {
        for budget in 0..6u8 {
            for size in 1..=8u8 {
                let mut data = vec![budget];
                data.extend([size; 8]);
                data.extend_from_slice(b"0\r\n folded\r\n\r\n");
                super::chunked(&data);
            }
        }
    }

    #[test]
    fn checks_accept_empty_and_tiny_inputs() {
        for data in [&b""[..], b"\r", b"\n", b"G", b"\r\n\r\n", b"0"] {
            super::request_head(data);
            super::response_head(data);
            super::chunked(data);
            super::config(data);
        }
    }
}
