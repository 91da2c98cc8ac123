//! Stage 7 of the pipeline, *respond*: response compression for routes with `compress`.
//! After routing, [`negotiate`] reads the request's `Accept-Encoding` (q-values, `*`,
//! `identity`) into the coding the client takes best among the route's algorithms (nothing
//! is read or kept for a route without `compress`). When the response head arrives,
//! [`applies`] decides whether this response is compressed (status, media type, length, no
//! `Content-Encoding`, `Cache-Control: no-transform` or `Content-Range`); then the client head
//! is rewritten by [`rewrite_head`] (`Content-Encoding`, `Vary: Accept-Encoding`, weak
//! `ETag`) and the body streams through an encoder ([`stream::relay_compressed`]), always
//! copied, never spliced. The encoders a shard holds at once are bounded in bytes
//! (`limits.compress_memory`, [`Loan`]): beyond it a response is sent uncompressed.

pub mod stream;

use crate::config::{Algorithm, CompressConfig};
use crate::http::parse::{BodyFraming, HeaderKind, RequestHead, ResponseHead};

/// A q-value in thousandths (RFC 9110 §12.4.2: `0` to `1` with up to three decimals).
type Q = u16;

/// Parses a qvalue: `0`, `0.5`, `1`, `1.000`; None when malformed.
fn parse_q(v: &[u8]) -> Option<Q> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut q: Q = match int {
        b"0" => 0,
        b"1" => 1000,
        _ => return None,
    };
    let mut scale = 100;
    for d in frac {
        q += Q::from(d - b'0') * scale;
        scale /= 10;
    }
    (q <= 1000).then_some(q)
}

/// One element of `Accept-Encoding`: its coding name (trimmed) and q-value (1 when absent);
/// None for an element with a malformed q (ignored, as if not listed).
fn element(e: &[u8]) -> Option<(&[u8], Q)> {
    let mut parts = e.split(|&b| b == b';');
    let name = parts.next().unwrap_or_default().trim_ascii();
    let mut q = 1000;
    for p in parts {
        let p = p.trim_ascii();
        if p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q=") {
            q = parse_q(p[2..].trim_ascii())?;
        }
    }
    Some((name, q))
}

/// The coding to use for a client whose `Accept-Encoding` field values are `fields`: of
/// `algorithms` (in order of preference), the one with the highest q-value above 0, a tie
/// going to the first. A coding not named gets the `*` element's q, else is not acceptable.
/// No field at all: None (any coding would be allowed, but clients that send none mostly
/// cannot decode one). `x-gzip` counts as `gzip` (RFC 9110 §8.4.1.3).
pub fn negotiate<'a>(
    fields: impl Iterator<Item = &'a [u8]>,
    algorithms: &[Algorithm],
) -> Option<Algorithm> {
    let mut named: [Option<Q>; 3] = [None; 3];
    let mut star = None;
    for field in fields {
        for e in field.split(|&b| b == b',') {
            let Some((name, q)) = element(e) else {
                continue;
            };
            if name == b"*" {
                star = Some(q);
                continue;
            }
            let alg = Algorithm::ALL.into_iter().find(|a| {
                name.eq_ignore_ascii_case(a.token().as_bytes())
                    || (*a == Algorithm::Gzip && name.eq_ignore_ascii_case(b"x-gzip"))
            });
            if let Some(a) = alg {
                named[a.index()] = Some(q);
            }
        }
    }
    let mut best: Option<(Algorithm, Q)> = None;
    for &a in algorithms {
        let q = named[a.index()].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((a, q));
        }
    }
    best.map(|(a, _)| a)
}

/// [`negotiate`] over a request head's `Accept-Encoding` fields.
pub fn negotiate_request(
    buf: &[u8],
    head: &RequestHead,
    cfg: &CompressConfig,
) -> Option<Algorithm> {
    let fields = head
        .headers
        .iter()
        .filter(|h| {
            h.kind == HeaderKind::Other && h.name.get(buf).eq_ignore_ascii_case(b"accept-encoding")
        })
        .map(|h| h.value.get(buf));
    negotiate(fields, &cfg.algorithms)
}

/// Statuses whose bodies are compressed: the successful full representations and the
/// common error pages (as nginx's gzip: 200, 403, 404), never a 206 or another partial one.
fn compressible_status(status: u16) -> bool {
    matches!(status, 200 | 201 | 203 | 403 | 404 | 410)
}

/// Whether `list` (a comma-separated field value) holds `token`, case-insensitively.
fn lists(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',').any(|t| {
        let t = t.trim_ascii();
        let t = t.split(|&b| b == b'=').next().unwrap_or_default();
        t.eq_ignore_ascii_case(token)
    })
}

/// Whether the media type of `content_type` (parameters ignored) is one of `types`
/// (`type/subtype`, or `type/*`; lowercase).
fn type_matches(content_type: &[u8], types: &[Box<str>]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    types.iter().any(|t| {
        let t = t.as_bytes();
        match t.strip_suffix(b"*") {
            Some(prefix) => {
                media.len() > prefix.len() && media[..prefix.len()].eq_ignore_ascii_case(prefix)
            }
            None => media.eq_ignore_ascii_case(t),
        }
    })
}

/// Whether this response is compressed: it has a body (`framing`: not HEAD, 204, 304) of a
/// compressible status, a known length of at least `min_length` or an unknown one, a
/// `Content-Type` in `types`, and no `Content-Encoding` (other than `identity`),
/// `Content-Range`, or `Cache-Control: no-transform` (RFC 9110 §7.7).
pub fn applies(
    cfg: &CompressConfig,
    buf: &[u8],
    head: &ResponseHead,
    framing: BodyFraming,
) -> bool {
    match framing {
        BodyFraming::None => return false,
        BodyFraming::Length(n) if n < cfg.min_length || n == 0 => return false,
        _ => {}
    }
    if !compressible_status(head.status) {
        return false;
    }
    let mut typed = false;
    for h in &head.headers {
        if h.kind != HeaderKind::Other {
            continue;
        }
        let name = h.name.get(buf);
        let value = h.value.get(buf);
        let eq = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            12 if eq(b"content-type") => typed = type_matches(value, &cfg.types),
            13 if eq(b"content-range") => return false,
            13 if eq(b"cache-control") && lists(value, b"no-transform") => return false,
            16 if eq(b"content-encoding")
                && !value.trim_ascii().eq_ignore_ascii_case(b"identity") =>
            {
                return false
            }
            _ => {}
        }
    }
    typed
}

/// Adds `Accept-Encoding` to the `Vary` of a client response head in `out` (ending in its
/// empty line): to the first `Vary` field, or as a field of its own; nothing when some
/// `Vary` is `*` or already lists it. Every response a route could code carries it, coded
/// or not (nginx's `gzip_vary`): a cache in front would otherwise keep one client's
/// variant for all.
pub fn add_vary(out: &mut Vec<u8>) {
    let Some(body) = out.len().checked_sub(2) else {
        return;
    };
    let mut first_vary_end = None;
    let mut at = 0;
    for (i, line) in out[..body].split_inclusive(|&b| b == b'\n').enumerate() {
        let start = at;
        at += line.len();
        let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
        if i == 0 || !line[..colon].eq_ignore_ascii_case(b"vary") {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        if lists(value, b"*") || lists(value, b"accept-encoding") {
            return;
        }
        // Before its line end (CRLF: the head was written by the proxy).
        first_vary_end.get_or_insert(start + line.len() - 2);
    }
    match first_vary_end {
        Some(end) => {
            out.splice(end..end, b", Accept-Encoding".iter().copied());
        }
        None => {
            out.splice(body..body, b"Vary: Accept-Encoding\r\n".iter().copied());
        }
    }
}

/// Rewrites a client response head in `out` (ending in its empty line) for a body coded
/// with `alg`: adds `Content-Encoding`, adds `Accept-Encoding` to `Vary` ([`add_vary`]), and
/// weakens a strong `ETag` (the coded body is not byte-for-byte the representation the tag
/// names: RFC 9110 §8.8.3). A backend `Content-Encoding: identity` is dropped, and so are
/// digests of the uncoded bytes (`Content-Digest` and `Repr-Digest`, RFC 9530, and the
/// obsolete `Content-MD5`): a client that checks one would refuse the coded body. `Trailer`
/// goes with the trailers it announced.
pub fn rewrite_head(out: &mut Vec<u8>, alg: Algorithm) {
    add_vary(out);
    let Some(body) = out.len().checked_sub(2) else {
        return;
    };
    let old = std::mem::take(out);
    out.reserve(old.len() + 64);
    let mut lines = old[..body].split_inclusive(|&b| b == b'\n');
    if let Some(status) = lines.next() {
        out.extend_from_slice(status);
    }
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"etag") && value.starts_with(b"\"") {
            out.extend_from_slice(b"ETag: W/");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            // Only `identity` gets here (`applies`): the coding replaces it.
        } else if [&b"content-digest"[..], b"repr-digest", b"content-md5"]
            .iter()
            .any(|d| name.eq_ignore_ascii_case(d))
        {
            // Digests of the uncoded bytes.
        } else if name.eq_ignore_ascii_case(b"trailer") {
            // The backend's trailer fields are dropped (they describe the uncoded body): none
            // is announced.
        } else if name.eq_ignore_ascii_case(b"accept-ranges") {
            // Ranges are served over the identity body (a Range request is not compressed):
            // offsets into this coded one would fetch the wrong bytes (nginx drops it too).
        } else {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"Content-Encoding: ");
    out.extend_from_slice(alg.token().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// One compressing response's charge against the shard's `limits.compress_memory`
/// ([`stream::Encoder::memory`]), given back when it drops.
pub type Loan<'s> = crate::stats::Charge<'s>;

/// The charge for an encoder of `alg` at `cfg`'s level, if the shard's bytes in encoders
/// (`stats.compress_memory`) stay within `limit` with it; else `None`, counted in
/// `stats.compress_memory_refused` (the response goes uncoded).
pub fn loan<'s>(
    stats: &'s crate::stats::Stats,
    limit: u64,
    alg: Algorithm,
    cfg: &CompressConfig,
) -> Option<Loan<'s>> {
    let memory = stream::Encoder::memory(alg, cfg);
    let loan = crate::stats::Charge::take(&stats.compress_memory, limit, memory);
    if loan.is_none() {
        crate::stats::bump(&stats.compress_memory_refused);
    }
    loan
}

#[cfg(test)]
mod tests;
