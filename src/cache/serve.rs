//! Stage 7, *respond*, for an answer from the cache: the stored response written to the client without
//! contacting a backend. Its head goes through the same rewrite as a relayed one
//! ([`client_response_head`]: hop-by-hop fields dropped, `hide_response_headers`, the
//! proxy's `Server`, the request id, HSTS, the listener's and route's `response_headers`),
//! with `Age` (RFC 9111 §4.2.3) and `X-Cache` (`HIT`, or `STALE` / `REVALIDATED` for an
//! entry served stale or just revalidated); a conditional request it satisfies gets
//! `304 Not Modified` and no body, a `GET` for one byte range `206 Partial Content` with
//! that part (or `416`, [`super::range`]), a `HEAD` the head alone. On a route with
//! `compress`, a whole body is coded for a client that takes one of its codings, as a
//! relayed one is (the cache keeps identity bodies).

use super::body::Body;
use super::store::StoredHead;
use super::{Hit, Part};
use crate::client::{Client, Outcome};
use crate::compress::{
    self,
    stream::{send_compressed, Encoder},
};
use crate::config::{Algorithm, CompressConfig};
use crate::forward::RequestFacts;
use crate::http::canned::Canned;
use crate::http::encode::{client_response_head, itoa_buf, response_out_framing, OutFraming};
use crate::http::parse::{BodyFraming, HeaderKind, Method, ResponseHead};
use crate::io::{write_from, write_head_and_shared, IoFail};
use crate::relay::{Leg, RelayError};
use crate::respond::{
    cfg_rid_header, proxy_fields, respond_canned_with, response_rewrite, response_vars, route_pages,
};
use crate::shard::ShardCtx;
use crate::splice::send_file;
use crate::stats::add;
use crate::trace::{RequestId, Trace};

/// Writes the hit to the client.
pub async fn serve(
    ctx: &ShardCtx,
    client: &mut Client,
    hit: Hit,
    facts: &RequestFacts,
    rid: &RequestId,
    trace: &mut Trace,
) -> Outcome {
    let cfg = &ctx.shared.config;
    let entry = &hit.entry;
    trace.cache = Some(hit.x_cache);
    // A range only for a GET (RFC 9110 §14.2: a HEAD ignores it).
    let part = if facts.method == Method::Get {
        hit.part
    } else {
        Part::Whole
    };
    // The stored head, or a 304, 206 or 416 made from it.
    let restated;
    let status_line: Option<&[u8]> = match part {
        _ if hit.not_modified => Some(b"HTTP/1.1 304 Not Modified\r\n"),
        Part::Whole => None,
        Part::Bytes { .. } => Some(b"HTTP/1.1 206 Partial Content\r\n"),
        Part::Unsatisfiable => Some(b"HTTP/1.1 416 Range Not Satisfiable\r\n"),
    };
    // A 416 describes no representation: none of the stored one's metadata goes with it
    // (its validators and freshness would let a downstream cache take it for the object).
    let dropped: &[&[u8]] = match part {
        Part::Unsatisfiable if !hit.not_modified => &[
            b"etag",
            b"last-modified",
            b"content-type",
            b"content-encoding",
            b"cache-control",
            b"expires",
            b"accept-ranges",
        ],
        _ => &[],
    };
    let stored: &StoredHead = match status_line {
        None => &entry.head,
        Some(line) => match restate(&entry.head, line, dropped) {
            Some(h) => {
                restated = h;
                &restated
            }
            // The stored head parsed; its fields under another status line do too. Kept
            // for safety all the same.
            None => {
                trace.status = Some(502);
                let close = !facts.keep_alive || ctx.draining();
                let rid = cfg_rid_header(ctx, rid);
                let pages = route_pages(ctx, trace.route());
                let answer = respond_canned_with(
                    ctx,
                    client,
                    Canned::BadGateway,
                    close,
                    facts.method == Method::Head,
                    rid.as_slice(),
                    pages,
                );
                let own = Box::pin(answer).await;
                trace.bytes_out = own.body;
                return own.outcome;
            }
        },
    };
    let (source, head) = (&stored.bytes[..], &stored.parsed);
    let mut age = itoa_buf(
        entry
            .age(crate::clock::now())
            .min(super::policy::SENT_AGE_MAX),
    );
    let len = entry.body.len() as u64;
    let mut range_value = Vec::new();
    let mut set: [(&[u8], &[u8]); 6] = [(b"", b""); 6];
    set[0] = (b"Age", age.as_str());
    set[1] = (b"X-Cache", hit.x_cache);
    let mut n_set = 2;
    if let Some(v) = part.content_range(len, &mut range_value) {
        set[2] = (b"Content-Range", v);
        n_set = 3;
    }
    let listener = client.listener.clone();
    let n_set = proxy_fields(cfg, &listener, rid, &mut set, n_set);
    let route = trace.route().map(|i| &cfg.routes[i]);
    let vars = response_vars(facts, rid, crate::tls::client_facts(client).0, route);
    let rw = response_rewrite(cfg, &ctx.date, &listener, route, &set[..n_set], &vars);
    // What of the body goes out: all of it, a range, or nothing (a 416).
    let (from, to) = match part {
        Part::Whole => (0, len),
        Part::Bytes { start, end } => (start, end),
        Part::Unsatisfiable => (0, 0),
    };
    let with_body = !hit.not_modified && facts.method != Method::Head && to > from;
    // 304 and 204 carry no body and no Content-Length (RFC 9110 §8.6).
    let framing = if hit.not_modified || entry.status == 204 {
        OutFraming::None
    } else {
        OutFraming::Length(to - from)
    };
    let close = !facts.keep_alive || ctx.draining();
    let mut out = ctx.buffer();
    trace.status = Some(head.status);
    // The route's `compress`, when the stored response is one it codes: coded for a client
    // that takes a coding, when whole and an encoder fits; else `Vary` all the same.
    let codable = with_body
        .then(|| codable(ctx, trace, source, head, len))
        .flatten();
    let limit = cfg.limits.compress_memory;
    let coding = (part == Part::Whole)
        .then(|| trace.compress.zip(codable))
        .flatten()
        .and_then(|(alg, cc)| Some((alg, cc, compress::loan(&ctx.stats, limit, alg, cc)?)));
    if let Some(coding) = coding {
        // Chunked, or close-delimited to an HTTP/1.0 client.
        let (framing, close_delimited) = response_out_framing(BodyFraming::Chunked, facts.minor);
        let close = close || close_delimited;
        client_response_head(source, head, framing, close, facts.minor, rw, &mut out);
        compress::rewrite_head(&mut out, coding.0);
        let chunked = framing == OutFraming::Chunked;
        let sent = Box::pin(send_coded(
            ctx,
            client,
            &entry.body,
            &mut out,
            coding,
            chunked,
        ))
        .await;
        return finished(ctx, trace, sent.ok(), close);
    }
    client_response_head(source, head, framing, close, facts.minor, rw, &mut out);
    if codable.is_some() {
        // Sent uncoded (a client that takes no coding, a range, no encoder memory): a
        // cache in front must still tell the variants apart.
        compress::add_vary(&mut out);
    }
    let n = out.len();
    let t = cfg.timeouts.client_send;
    let (stream, dl) = (&mut client.stream, &mut client.deadline);
    let written = match (&entry.body, stream.plain()) {
        _ if !with_body => write_from(stream, &mut out, 0, n, dl, t).await,
        // In memory: in one vectored write with the head, never copied behind it.
        (Body::Memory(b), _) => {
            let body = from as usize..to as usize;
            write_head_and_shared(stream, &mut out, 0..n, b.clone(), body, dl, t).await
        }
        // In the body file, to a plain socket: sent by the kernel from the file's pages.
        (Body::File(e), Some(sock)) => {
            let mut sent = false;
            // No backend: the upstream bound is never waited on.
            let mut leg = Leg::response(dl, cfg, cfg.timeouts.upstream_response, &mut sent);
            send_file(
                sock,
                &mut client.nonblocking,
                &out[..n],
                e.fd(),
                e.off + from,
                (to - from) as usize,
                &mut leg,
            )
            .await
            .map_err(|e| match e {
                RelayError::Write(f) | RelayError::Read(f) => f,
                // Below `client_send_min_rate`: a slow reader, like a timeout.
                _ => IoFail::Timeout,
            })
        }
        // To a TLS client: read into the buffer a piece at a time (the first behind the
        // head), then encrypted: a slow reader holds one piece, not the whole body.
        (Body::File(e), None) => {
            let body = from as usize..to as usize;
            Box::pin(send_pieces(stream, &mut out, e, body, dl, t)).await
        }
    };
    let body = if with_body { to - from } else { 0 };
    finished(ctx, trace, written.ok().map(|()| body), close)
}

/// How the connection goes on after a hit whose body bytes sent are `sent` (`None`: the
/// write failed, the response is cut), counted.
fn finished(ctx: &ShardCtx, trace: &mut Trace, sent: Option<u64>, close: bool) -> Outcome {
    let Some(body) = sent else {
        trace.aborted = true;
        return Outcome::Cut;
    };
    add(&ctx.stats.bytes_out, body);
    trace.bytes_out = body;
    if close {
        Outcome::Close
    } else {
        Outcome::KeepAlive
    }
}

/// The route's `compress`, when the stored response is one it codes ([`compress::applies`]).
fn codable<'c>(
    ctx: &'c ShardCtx,
    trace: &Trace,
    source: &[u8],
    head: &ResponseHead,
    len: u64,
) -> Option<&'c CompressConfig> {
    let cc = ctx
        .shared
        .config
        .routes
        .get(trace.route()?)?
        .compress
        .as_deref()?;
    compress::applies(cc, source, head, BodyFraming::Length(len)).then_some(cc)
}

/// Writes `out` (the coded hit's head) and the stored `body` coded for the client
/// ([`compress::stream::send_compressed`]); counts it per algorithm. The coded bytes sent.
async fn send_coded(
    ctx: &ShardCtx,
    client: &mut Client,
    body: &Body,
    out: &mut Vec<u8>,
    (alg, cc, _loan): (Algorithm, &CompressConfig, compress::Loan<'_>),
    chunked: bool,
) -> Result<u64, RelayError> {
    let cfg = &ctx.shared.config;
    let enc = Encoder::new(alg, cc).map_err(|e| RelayError::Read(IoFail::Io(e)))?;
    let read = |r: std::ops::Range<usize>, buf: &mut Vec<u8>| match body {
        Body::Memory(b) => {
            buf.extend_from_slice(&b[r]);
            Ok(())
        }
        Body::File(e) => e.read_into(r, buf),
    };
    let mut sent = false;
    // No backend: the upstream bound is never waited on.
    let up = cfg.timeouts.upstream_response;
    let mut leg = Leg::response(&mut client.deadline, cfg, up, &mut sent);
    let stream = &mut client.stream;
    let coded = send_compressed(stream, out, (body.len(), &read), chunked, enc, &mut leg).await?;
    ctx.stats.compressed(alg, coded.bytes_in, coded.bytes_out);
    Ok(coded.bytes_out)
}

/// How much of a body-file extent a TLS hit reads at a time ([`send_pieces`]).
const PIECE: usize = 64 * 1024;

/// Writes `out` (the head) and the bytes `body` of the extent `e` behind it, `PIECE` bytes
/// read at a time, each write within `t`.
async fn send_pieces(
    stream: &mut crate::transport::Transport,
    out: &mut Vec<u8>,
    e: &super::body::Extent,
    body: std::ops::Range<usize>,
    dl: &mut crate::io::Deadline,
    t: std::time::Duration,
) -> Result<(), IoFail> {
    let mut done = body.start;
    loop {
        let to = (done + PIECE).min(body.end);
        e.read_into(done..to, out).map_err(IoFail::Io)?;
        let n = out.len();
        write_from(stream, out, 0, n, dl, t).await?;
        done = to;
        if done >= body.end {
            return Ok(());
        }
        out.clear();
    }
}

/// The stored head's fields under another status line (`line`, CRLF-ended), CRLF-ended
/// whatever the backend's lines were; no `Trailer` (a hit, sent with a length, has none),
/// nor the fields named in `dropped` (lower case).
fn restate(stored: &StoredHead, line: &[u8], dropped: &[&[u8]]) -> Option<StoredHead> {
    let (bytes, parsed) = (&stored.bytes, &stored.parsed);
    let mut h = Vec::with_capacity(bytes.len() + 32);
    h.extend_from_slice(line);
    for f in parsed.headers.iter().filter(|f| {
        f.kind != HeaderKind::Trailer
            && !dropped
                .iter()
                .any(|d| f.name.get(bytes).eq_ignore_ascii_case(d))
    }) {
        h.extend_from_slice(f.name.get(bytes));
        h.extend_from_slice(b": ");
        h.extend_from_slice(f.value.get(bytes));
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    StoredHead::new(h.into())
}
