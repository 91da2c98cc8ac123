//! Stage 7 of the pipeline, *respond*: relay a backend's response to the client
//! ([`relay_response`]: the head rewritten for the client, the body copied or spliced with
//! the framing the client can take, the upstream connection pooled again when it can be, or
//! an upgrade's 101 and the hand-over to the tunnel), or answer on the proxy's own behalf:
//! canned responses and a route's `respond` (with the request id when configured), the
//! status for a refused head. How the connection then closes is `linger.rs`.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::cache::Fill;
use crate::client::{Client, Outcome, Transport};
use crate::clock::micros;
use crate::compress::{
    self,
    stream::{relay_compressed, Encoder},
};
use crate::config::{error_page, Algorithm, CompressConfig, Config, ErrorPage};
use crate::error::{Kind, ProxyError, Side, Stage};
use crate::forward::{Answered, RequestFacts};
use crate::http::canned::Canned;
use crate::http::date::DateCache;
use crate::http::encode::{
    client_response_head, response_out_framing, switching_protocols_head, OutFraming, Rewrite,
    TrailerFilter,
};
use crate::http::parse::{BodyFraming, Method, ParseError, ResponseHead};
use crate::io::{write_from, Deadline, IoFail};
use crate::observe::errors::ErrorLimiter;
use crate::relay::{relay_body, BodyPlan, Leg, RelayError};
use crate::rules::{Fields, Vars};
use crate::shard::ShardCtx;
use crate::snapshot::Shared;
use crate::splice::{relay_spliced, PipeLoan, PipePool, SplicePlan, SplicedBody};
use crate::stats::{add, bump, Stats};
use crate::trace::{RequestId, Trace};
use crate::tunnel::Upgraded;
use crate::tunnel::{offered_upgrade, switch_agreed};
use crate::upstream::pool::{end_exchange, Pool};
use crate::upstream::state::Backends;

/// What relaying a response uses from the shard (its configuration is `shared.config`: a
/// field of its own would make every request's future a word larger).
pub struct Respond<'a> {
    pub shared: &'a Shared,
    pub stats: &'a Stats,
    pub pool: &'a RefCell<Pool>,
    pub pipes: &'a PipePool,
    pub backends: &'a Backends,
    pub date: &'a DateCache,
    /// The error log's budget (`log.error_rate`), for a backend that breaks a body off.
    pub errors: &'a ErrorLimiter,
    /// The shard is draining: the client connection closes after this response.
    pub draining: bool,
}

impl<'a> Respond<'a> {
    pub fn new(ctx: &'a ShardCtx) -> Respond<'a> {
        Respond {
            shared: &ctx.shared,
            stats: &ctx.stats,
            pool: &ctx.pool,
            pipes: &ctx.pipes,
            backends: &ctx.backends,
            date: &ctx.date,
            errors: &ctx.errors,
            draining: ctx.draining(),
        }
    }
}

/// Relays the backend's answer to the client. `Outcome::Upgraded` leaves both connections in
/// [`Client::upgraded`] for the tunnel. With `fill` (a route with a `cache`), the response
/// carries `X-Cache`, and one the cache stores is copied, never spliced, its body teed into
/// the fill.
pub async fn relay_response(
    r: &Respond<'_>,
    client: &mut Client,
    answered: Answered<'_>,
    facts: &RequestFacts,
    rid: &RequestId,
    trace: &mut Trace,
    mut fill: Option<&mut Fill<'_>>,
) -> Result<Outcome, ProxyError> {
    let cfg = &r.shared.config;
    let Answered {
        mut upstream,
        backend,
        head,
        mut ubuf,
        mut out,
        set_cookie,
        sending,
        early,
        interim,
        guards,
    } = answered;
    r.stats.upstream_status(backend, head.status);
    trace.status = Some(head.status);
    // Fields the proxy sets on the response: the request id (when returned), on a TLS
    // listener with `hsts` Strict-Transport-Security, and its own `Server` when configured
    // (each replacing the backend's).
    let mut set: [(&[u8], &[u8]); 4] = [(b"", b""); 4];
    let mut n_set = 0;
    let x_cache = fill
        .as_deref_mut()
        .map(|f| f.admit(&ubuf, &head, head.framing(facts.method)));
    trace.cache = x_cache;
    if let Some(v) = x_cache {
        set[n_set] = (b"X-Cache", v);
        n_set += 1;
    }
    let teeing = fill.as_deref_mut().is_some_and(|f| f.tee().is_some());
    let listener = client.listener.clone();
    n_set = proxy_fields(cfg, &listener, rid, &mut set, n_set);
    // The listener's and route's `response_headers` (variables known after the request
    // head is gone: no host, path or query).
    let route = trace.route().map(|i| &cfg.routes[i]);
    let vars = response_vars(facts, rid, crate::tls::client_facts(client).0, route);
    let rw = response_rewrite(cfg, r.date, &listener, route, &set[..n_set], &vars);
    // `out` still holds the head sent upstream, with the protocols the client offered.
    if head.status == 101 && !switch_agreed(offered_upgrade(&out), &ubuf, &head) {
        // After interim heads too: the final answer is still to come (a 502).
        return Err(ProxyError::upstream(Kind::Framing, Stage::Head));
    }
    out.clear();
    if head.status == 101 {
        trace.upstream_us = Some(micros(sending));
        let up = Upgraded {
            upstream,
            backend,
            early: ubuf[head.head_len..].to_vec(),
        };
        return Box::pin(switch_protocols(
            cfg, client, up, &head, &ubuf, &mut out, rw,
        ))
        .await;
    }

    let in_framing = head.framing(facts.method);
    // A route with `compress` and a response that qualifies: `Vary: Accept-Encoding`, and
    // for a client that accepts one of its codings, coded, chunked (or close-delimited for
    // HTTP/1.0), never spliced.
    let codable = trace
        .route()
        .and_then(|i| cfg.routes[i].compress.as_deref())
        .filter(|cc| compress::applies(cc, &ubuf, &head, in_framing));
    // The encoder's memory, within the shard's `limits.compress_memory`; beyond it the
    // response goes as it came (and may be stored). The loan moves into the (boxed) relay.
    let limit = r.shared.config.limits.compress_memory;
    let loan = trace
        .compress
        .zip(codable)
        .and_then(|(alg, cc)| compress::loan(r.stats, limit, alg, cc));
    let coding = trace.compress.zip(codable).filter(|_| loan.is_some());
    let (resp_framing, close_delimited) = match coding {
        None => response_out_framing(in_framing, facts.minor),
        Some(_) => response_out_framing(BodyFraming::Chunked, facts.minor),
    };
    // An early answer leaves the request body unread: the connection cannot carry another.
    let close = !facts.keep_alive || close_delimited || r.draining || early;
    client_response_head(&ubuf, &head, resp_framing, close, facts.minor, rw, &mut out);
    match coding {
        Some((alg, _)) => compress::rewrite_head(&mut out, alg),
        None if codable.is_some() => compress::add_vary(&mut out),
        None => {}
    }
    if set_cookie {
        // A sticky session starts (or moved): name the backend in a cookie, inserted before
        // the head's final empty line.
        let info = &r.shared.backends[backend];
        let end = out.len() - 2;
        out.truncate(end);
        out.extend_from_slice(b"Set-Cookie: ");
        let tls = client.stream.plain().is_none();
        r.shared.tables[info.upstream].write_set_cookie(info.local, tls, &mut out);
        out.extend_from_slice(b"\r\n\r\n");
    }
    let mut upos = head.head_len;
    // Not pooled: after HEAD (a backend that wrongly sends a body would leave it for the next
    // request to read as its response), after a body on a method that normally has none or
    // on one the proxy does not know (a backend that ignores such a body, or reads `get` as
    // GET, may parse it as a second request: "CL.0"), and after an early answer (the backend
    // did not read the whole body).
    let unusual_body = !facts.framing.is_empty()
        && matches!(
            facts.method,
            Method::Get
                | Method::Head
                | Method::Delete
                | Method::Options
                | Method::Trace
                | Method::Other
        );
    let upstream_reusable = !facts.upgrade
        && head.upstream_keep_alive()
        && in_framing != BodyFraming::UntilClose
        && facts.method != Method::Head
        && !unusual_body
        && !early;
    // A client that leaves while the backend's body stalls ends the relay (as for the head).
    watch_client(client);
    // Interim responses relayed before this head count as written: a failure closes.
    let mut written = interim;
    // Each wait for the backend: its upstream's `response_timeout`.
    let wait = cfg.upstream_response(r.shared.backends[backend].upstream);
    // Compressed, or teed into the cache: copied, never spliced.
    let spliced = match coding.is_some() || teeing {
        true => None,
        false => splice_choice(
            r,
            client,
            upstream.plain().is_some(),
            backend,
            in_framing,
            resp_framing,
        ),
    };
    // The body bytes the backend sent, when they differ from those the client got.
    let mut received = None;
    let relayed = match (coding, spliced) {
        (Some(coding), _) => {
            let up = Upstream {
                conn: &mut upstream,
                ubuf: &mut ubuf,
                pos: &mut upos,
                wait,
            };
            let chunked = resp_framing == OutFraming::Chunked;
            // A response being stored is teed as it came, before the encoder: the cache
            // keeps identity bodies, and codes its hits for each client.
            let tee = fill.and_then(Fill::tee);
            let coded = Box::pin(compressed_response(
                r,
                client,
                up,
                &mut out,
                (coding, loan),
                (in_framing, chunked, tee),
                &mut written,
            ))
            .await;
            coded.map(|c| {
                received = Some(c.bytes_in);
                c.bytes_out
            })
        }
        (None, Some(spliced)) => {
            // (`None` here; dropped before the await so that the request's future does not
            // hold its room: conn::tests::idle_connection_future_is_small.)
            drop(loan);
            let up = Upstream {
                conn: &mut upstream,
                ubuf: &mut ubuf,
                pos: &mut upos,
                wait,
            };
            Box::pin(splice_response(
                r,
                client,
                up,
                &mut out,
                spliced,
                &mut written,
            ))
            .await
        }
        (None, None) if in_framing == BodyFraming::None => {
            drop(loan);
            let n = out.len();
            let t = cfg.timeouts.client_send;
            write_from(&mut client.stream, &mut out, 0, n, &mut client.deadline, t)
                .await
                .map(|_| 0)
                .map_err(RelayError::Write)
        }
        (None, None) => {
            drop(loan);
            let plan = BodyPlan {
                incoming: in_framing,
                outgoing: resp_framing,
                limit: u64::MAX,
                chunk_overhead: cfg.limits.max_header_bytes,
                // Its trailer fields go as the head's did ([`TrailerFilter`]: its
                // `Connection` names copied, as the read buffer is reused for the body).
                // (No closure: one borrowing `rw` would keep it in every request's future.)
                trailers: if resp_framing == OutFraming::Chunked {
                    let named = head.conn_tokens.iter().map(|t| t.get(&ubuf).into());
                    Some(Box::new(TrailerFilter {
                        rw,
                        named: named.collect(),
                    }))
                } else {
                    None
                },
            };
            let mut leg = Leg::response(&mut client.deadline, cfg, wait, &mut written);
            leg.tee = fill.and_then(Fill::tee);
            let dst = &mut client.stream;
            let (up, ub, pos) = (&mut upstream, &mut ubuf, &mut upos);
            relay_body(up, ub, pos, dst, &mut out, &plan, &mut leg).await
        }
    };
    trace.upstream_us = Some(micros(sending));
    drop(guards);
    match relayed {
        Ok(n) => {
            add(&r.stats.bytes_out, n);
            add(
                &r.stats.backends[backend].bytes_received,
                received.unwrap_or(n),
            );
            trace.bytes_out = n;
            let reusable = upstream_reusable && upos == ubuf.len();
            end_exchange(r.pool, r.backends, backend, upstream, reusable);
            Ok(if close {
                Outcome::Close
            } else {
                Outcome::KeepAlive
            })
        }
        Err(e) => {
            if let RelayError::Read(IoFail::Io(why)) = &e {
                let route = trace.route().map_or("", |i| cfg.routes[i].name.as_str());
                let at = r.shared.backends[backend].address;
                crate::observe::errors::body_failed(r.errors, r.stats, at, route, why);
            }
            let (side, kind) = match e {
                RelayError::Write(_) => (Side::Client, Kind::Closed),
                RelayError::TooSlow => (Side::Client, Kind::TooSlow),
                RelayError::Read(IoFail::Timeout) => (Side::Upstream, Kind::Timeout),
                RelayError::Read(_) => (Side::Upstream, Kind::Closed),
                RelayError::Framing | RelayError::TooLarge => (Side::Upstream, Kind::Framing),
            };
            Err(ProxyError {
                sent: true,
                ..ProxyError::new(side, kind, Stage::Body).with_responded(written)
            })
        }
    }
}

/// The 101 head to the client, then both connections are handed to the tunnel
/// ([`Client::upgraded`]).
async fn switch_protocols(
    cfg: &Config,
    client: &mut Client,
    up: Upgraded,
    head: &ResponseHead,
    ubuf: &[u8],
    out: &mut Vec<u8>,
    rw: Rewrite<'_>,
) -> Result<Outcome, ProxyError> {
    switching_protocols_head(ubuf, head, rw, out);
    let n = out.len();
    let t = cfg.timeouts.client_send;
    if write_from(&mut client.stream, out, 0, n, &mut client.deadline, t)
        .await
        .is_err()
    {
        return Err(ProxyError::client(Kind::Closed, Stage::Body));
    }
    client.upgraded = Some(Box::new(up));
    Ok(Outcome::Upgraded)
}

/// [`crate::io::Deadline::watch`] the client's socket; [`crate::proxy`] unwatches once the
/// relay is over (here, the client's use after the relay would grow the request's future).
fn watch_client(client: &mut Client) {
    client.deadline.watch(client.stream.tcp().as_raw_fd());
}

/// What writing one of the proxy's own answers did: whether the connection goes on, and the
/// body bytes sent (the access log's `$body_bytes_sent`; counted in the metrics already).
pub struct Own {
    pub outcome: Outcome,
    pub body: u64,
}

/// Writes a canned response and says whether the connection must close afterwards.
pub async fn respond_canned(ctx: &ShardCtx, client: &mut Client, c: Canned, close: bool) -> Own {
    respond_canned_with(ctx, client, c, close, false, &[], &[]).await
}

/// The `error_pages` of route `route` (none without a route).
pub fn route_pages(ctx: &ShardCtx, route: Option<usize>) -> &[ErrorPage] {
    route.map_or(&[], |r| &ctx.shared.config.routes[r].error_pages)
}

/// The request-id field for the proxy's own answers, when ids are returned to clients.
pub fn cfg_rid_header<'a>(ctx: &'a ShardCtx, rid: &'a RequestId) -> Option<(&'a [u8], &'a [u8])> {
    let cfg = &ctx.shared.config.request_id;
    cfg.respond.then(|| (cfg.header.as_bytes(), rid.bytes()))
}

/// A header field a canned answer carries: (name, value).
pub type Field<'a> = (&'a [u8], &'a [u8]);

/// Adds to `set` (its first `n` filled) the fields the proxy writes on every response it
/// sends, relayed or from the cache, each replacing the backend's: the request id when ids
/// are returned, the listener's `hsts`, its own `Server` when configured. Returns the count.
pub fn proxy_fields<'a>(
    cfg: &'a Config,
    listener: &'a crate::client::ListenerSide,
    rid: &'a RequestId,
    set: &mut [Field<'a>],
    mut n: usize,
) -> usize {
    let mut push = |f: Field<'a>| {
        set[n] = f;
        n += 1;
    };
    if cfg.request_id.respond {
        push((cfg.request_id.header.as_bytes(), rid.bytes()));
    }
    if let Some(f) = hsts(listener) {
        push(f);
    }
    if let Some(server) = cfg.response.server.as_deref() {
        push((b"Server", server.as_bytes()));
    }
    n
}

/// The listener's `tls.hsts` as a field: on every response of a TLS listener that has one,
/// relayed, from the cache, or the proxy's own.
pub fn hsts(listener: &crate::client::ListenerSide) -> Option<Field<'_>> {
    let h = listener.tls.as_ref()?.hsts.as_deref()?;
    Some((b"Strict-Transport-Security", h.as_bytes()))
}

/// What a response the proxy relays or answers from its cache or its auth check goes
/// through ([`Rewrite`]): the proxy's own fields `set`, `server.hide_response_headers`, a
/// `Date` when it has none, and the listener's and route's `response_headers`.
pub fn response_rewrite<'a>(
    cfg: &'a Config,
    date: &'a DateCache,
    listener: &'a crate::client::ListenerSide,
    route: Option<&'a crate::config::RouteConfig>,
    set: &'a [Field<'a>],
    vars: &'a Vars<'a>,
) -> Rewrite<'a> {
    let route_rules = route.and_then(|r| r.rules.response.as_deref());
    Rewrite {
        set,
        hide: &cfg.response.hide,
        date: Some(date),
        rules: Fields::of(listener.response_headers.as_deref(), route_rules, vars),
    }
}

/// The variables of response header rules: what is known once the request head is gone (no
/// host, path or query).
pub fn response_vars<'a>(
    facts: &RequestFacts,
    rid: &'a RequestId,
    https: bool,
    route: Option<&'a crate::config::RouteConfig>,
) -> Vars<'a> {
    Vars {
        client_ip: facts.client_ip,
        request_id: rid.bytes(),
        host: b"",
        https,
        path: b"",
        query: b"",
        route: route.map_or("", |r| r.name.as_str()),
    }
}

/// [`respond_canned`] with more header fields (the request id, `Location`, `Retry-After`,
/// `WWW-Authenticate`) in the head; `head_only`: the answer to a `HEAD` (the same head, no
/// body: the client would read a body as the start of the next response). `pages`: the
/// route's `error_pages`, which come before `server.error_pages`.
pub async fn respond_canned_with(
    ctx: &ShardCtx,
    client: &mut Client,
    c: Canned,
    close: bool,
    head_only: bool,
    extra: &[Field<'_>],
    pages: &[ErrorPage],
) -> Own {
    ctx.stats.canned(c);
    let close = close || c.forces_close();
    let server = &ctx.shared.config.response.error_pages;
    let bytes = error_page(pages, c.status(), close)
        .or_else(|| error_page(server, c.status(), close))
        .unwrap_or_else(|| c.bytes(close));
    // On a TLS listener with `hsts`, the proxy's own answers carry it too (nginx's
    // `add_header ... always`): a refusal or an error page is the site's answer as well.
    let mut fields: [Field<'_>; 3] = [(b"", b""); 3];
    debug_assert!(
        extra.len() <= 2,
        "respond_canned_with takes at most two fields"
    );
    let n = extra.len().min(2);
    fields[..n].copy_from_slice(&extra[..n]);
    let n = match hsts(&client.listener) {
        Some(f) => {
            fields[n] = f;
            n + 1
        }
        None => n,
    };
    let (stream, deadline) = (&mut client.stream, &mut client.deadline);
    respond_own(ctx, stream, deadline, bytes, close, head_only, &fields[..n]).await
}

/// Writes a whole response of the proxy's own (a canned answer, an error page, a route's
/// `respond`: `bytes`, with the fields [`canned_head`] adds), or only its head. It takes the
/// client's stream and deadline, not the client, so `extra` may borrow the rest of it.
pub async fn respond_own(
    ctx: &ShardCtx,
    stream: &mut Transport,
    deadline: &mut Deadline,
    bytes: &[u8],
    close: bool,
    head_only: bool,
    extra: &[Field<'_>],
) -> Own {
    let mut out = ctx.buffer();
    let server = ctx.shared.config.response.server.as_deref();
    canned_head(bytes, server, &ctx.date.now(), extra, &mut out);
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").map(|e| e + 4);
    if head_only {
        if let Some(end) = head_end {
            out.truncate(end);
        }
    }
    let body = (out.len() - head_end.unwrap_or(out.len())) as u64;
    write_own(ctx, stream, deadline, &mut out, close, body).await
}

/// Writes `out`, one of the proxy's own answers whose last `body` bytes are its body, within
/// `client_send`: how the connection goes on, and the body bytes sent (0 when cut), counted.
pub async fn write_own(
    ctx: &ShardCtx,
    stream: &mut Transport,
    deadline: &mut Deadline,
    out: &mut Vec<u8>,
    close: bool,
    body: u64,
) -> Own {
    let n = out.len();
    let t = ctx.shared.config.timeouts.client_send;
    let outcome = match write_from(stream, out, 0, n, deadline, t).await {
        Ok(()) if !close => Outcome::KeepAlive,
        Ok(()) => Outcome::Close,
        Err(_) => Outcome::Cut,
    };
    let body = if outcome == Outcome::Cut { 0 } else { body };
    crate::stats::add(&ctx.stats.bytes_out, body);
    Own { outcome, body }
}

/// A canned response with the fields that vary added after its status line: the proxy's
/// `Server` (when configured), `Date`, and `extra`.
fn canned_head(
    bytes: &[u8],
    server: Option<&str>,
    date: &[u8],
    extra: &[Field<'_>],
    out: &mut Vec<u8>,
) {
    let status_end = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(0, |i| i + 2);
    out.extend_from_slice(&bytes[..status_end]);
    if let Some(server) = server {
        out.extend_from_slice(b"Server: ");
        out.extend_from_slice(server.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    for (name, value) in extra {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&bytes[status_end..]);
}

/// Maps a request-head parse error to its status.
pub fn parse_error_status(e: ParseError) -> Canned {
    match e {
        ParseError::Malformed(_) => Canned::BadRequest,
        ParseError::TooManyHeaders | ParseError::HeadTooLarge => Canned::HeadersTooLarge,
        ParseError::UriTooLong => Canned::UriTooLong,
        ParseError::Version => Canned::VersionNotSupported,
        ParseError::Expectation => Canned::ExpectationFailed,
    }
}

/// The backend connection a response body is read from: bytes already read sit in
/// `ubuf[*pos..]`.
struct Upstream<'u> {
    conn: &'u mut Transport,
    ubuf: &'u mut Vec<u8>,
    pos: &'u mut usize,
    /// Its upstream's `response_timeout`: the bound on each wait for it.
    wait: Duration,
}

/// Streams the response body through the encoder for `alg` ([`compress::stream`]), after
/// `out` (the client's head, already rewritten), teeing it uncoded into `tee` when it is
/// being stored; counts it per algorithm.
#[allow(clippy::too_many_arguments)]
async fn compressed_response(
    r: &Respond<'_>,
    client: &mut Client,
    up: Upstream<'_>,
    out: &mut Vec<u8>,
    ((alg, cc), _loan): ((Algorithm, &CompressConfig), Option<compress::Loan<'_>>),
    (in_framing, chunked, tee): (BodyFraming, bool, Option<&mut crate::cache::Tee>),
    written: &mut bool,
) -> Result<compress::stream::Coded, RelayError> {
    let enc = Encoder::new(alg, cc).map_err(|e| RelayError::Read(IoFail::Io(e)))?;
    let framing = (in_framing, chunked, r.shared.config.limits.max_header_bytes);
    let mut leg = Leg::response(&mut client.deadline, &r.shared.config, up.wait, written);
    leg.tee = tee;
    let coded = relay_compressed(
        up.conn,
        up.ubuf,
        up.pos,
        &mut client.stream,
        out,
        framing,
        enc,
        &mut leg,
    )
    .await?;
    r.stats.compressed(alg, coded.bytes_in, coded.bytes_out);
    Ok(coded)
}

/// Whether the response body goes socket → pipe → socket (splice): large bodies of known
/// length and close-delimited ones (their length is unknown), when the client side is plain
/// TCP and a pipe is free. Records on the backend whether its body qualified.
fn splice_choice<'p>(
    r: &Respond<'p>,
    client: &Client,
    upstream_plain: bool,
    backend: usize,
    in_framing: BodyFraming,
    resp_framing: OutFraming,
) -> Option<(PipeLoan<'p>, SplicedBody)> {
    let cfg = &r.shared.config;
    let spliced = match (in_framing, resp_framing) {
        (BodyFraming::Length(n), OutFraming::Length(_)) if n >= cfg.splice.min_bytes => {
            Some(SplicedBody::Length(n))
        }
        (BodyFraming::UntilClose, f) => Some(SplicedBody::UntilClose {
            chunked: f == OutFraming::Chunked,
        }),
        _ => None,
    }
    .filter(|_| cfg.splice.enabled && client.stream.plain().is_some() && upstream_plain);
    r.backends.spliced_last[backend].set(spliced.is_some());
    spliced.and_then(|body| r.pipes.lend().map(|p| (p, body)))
}

/// Splices the response body after `out` (the client's head) through `pipe`. Returns the
/// body bytes relayed.
async fn splice_response(
    r: &Respond<'_>,
    client: &mut Client,
    up: Upstream<'_>,
    out: &mut Vec<u8>,
    (pipe, body): (PipeLoan<'_>, SplicedBody),
    written: &mut bool,
) -> Result<u64, RelayError> {
    // Only plain transports are spliced (`splice_choice`); a TLS side is copied.
    let (Transport::Plain(tcp), Some(up_tcp)) = (&mut client.stream, up.conn.plain()) else {
        return Err(RelayError::Write(IoFail::Io(std::io::Error::other(
            "splice needs plain sockets",
        ))));
    };
    bump(&r.stats.spliced);
    let head_read = *up.pos;
    let res = relay_spliced(
        up_tcp,
        up.ubuf,
        up.pos,
        tcp,
        out,
        SplicePlan {
            body,
            pipe: pipe.pipe(),
        },
        &mut Leg::response(&mut client.deadline, &r.shared.config, up.wait, written),
    )
    .await;
    if let Ok(total) = res {
        pipe.give_back();
        add(&r.stats.spliced_bytes, total - (*up.pos - head_read) as u64);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_answers_carry_date_server_and_extra_after_the_status_line() {
        let mut out = Vec::new();
        let date = crate::http::date::http_date(784_111_777);
        let bytes = Canned::PermanentRedirect.bytes(true);
        canned_head(
            bytes,
            Some("edge"),
            &date,
            &[(b"Location", b"https://a/"), (b"Retry-After", b"1")],
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 308 Permanent Redirect");
        assert_eq!(lines[1], "Server: edge");
        assert_eq!(lines[2], "Date: Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(lines[3], "Location: https://a/");
        assert_eq!(lines[4], "Retry-After: 1");
        assert!(lines.contains(&"Connection: close"), "{head}");
        let original = std::str::from_utf8(bytes).unwrap();
        assert!(original.ends_with(body), "the body is unchanged");

        let mut out = Vec::new();
        canned_head(Canned::NotFound.bytes(false), None, &date, &[], &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("Server:"), "{text}");
        assert_eq!(text.matches("Date: ").count(), 1, "{text}");
    }
}
