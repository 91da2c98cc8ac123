//! Stages 3 to 7 of the pipeline for one request, top to bottom: *route* the parsed head,
//! *balance* to a backend, check a connection out of the *pool* (or connect), *forward* the
//! head and body, read the upstream's response head, and *respond* to the client, relaying
//! the body with the framing the client can take. Errors map to one status in one place
//! ([`Failure`]); a request that may have reached a backend is never replayed unless it is
//! idempotent and bodiless (the three retry rules in `exchange`).

use std::net::SocketAddr;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::balance::key::cookie_value;
use crate::balance::{request_key, KeySource};
use crate::health::breaker::{Open, Permit, Resource};
use crate::health::Outcome as TryOutcome;
use crate::http::canned::Canned;
use crate::http::encode::{
    client_response_head, response_out_framing, split_target, switching_protocols_head,
    upstream_request_head, OutFraming, UpstreamRequest,
};
use crate::http::parse::{BodyFraming, HeadLimits, Method, RequestHead};
use crate::io::{write_from, write_static, Deadline, IoFail};
use crate::relay::{
    head_read_size, read_response_head, relay_body, BodyPlan, HeadFail, HeadRead, Leg, RelayError,
};
use crate::respond::{breaker_open, cfg_rid_header, linger_close, respond_canned_with};
use crate::route::{has_dot_segment, valid_authority};
use crate::shard::{Forwarding, Pick, ShardCtx};
use crate::splice::{relay_spliced, SplicePlan, SplicedBody};
use crate::stats::{add, bump};
pub use crate::trace::record_refused;
use crate::trace::{log_fields, request_id, RequestId, Trace};
use crate::tunnel::{wants_upgrade, Upgraded};

/// Whether the client connection stays open after an exchange (monolake's contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    KeepAlive,
    Close,
    /// The backend answered 101: the connection becomes a tunnel ([`Client::upgraded`]).
    Upgraded,
}

/// The client side of a connection, owned by [`crate::conn`] and lent to each exchange.
pub struct Client {
    pub stream: TcpStream,
    /// Bytes read from the client; a request head starts at offset 0.
    pub buf: Vec<u8>,
    pub peer: SocketAddr,
    /// The one timer bounding whichever IO step this connection is waiting on.
    pub deadline: Deadline,
    /// Set when the backend accepted an upgrade: [`crate::conn`] then runs the tunnel.
    pub upgraded: Option<Box<Upgraded>>,
}

/// How an exchange that did not complete ends, mapped to what the client sees.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// Answer with a canned status (only possible before any response byte was written).
    Status(Canned),
    /// Close the client connection without a word (it went away, or the response head was
    /// already sent and the body cannot be completed).
    Close,
}

/// How a request body relay ended: `Ok(Ok(()))` sent, `Ok(Err(e))` the upstream write
/// failed (the caller decides on retry rules), `Err` the client's side failed.
fn request_body_sent(
    ctx: &ShardCtx,
    client: &mut Client,
    backend: usize,
    trace: &mut Trace,
    r: Result<u64, RelayError>,
    pos: usize,
) -> Result<Result<(), IoFail>, Failure> {
    match r {
        Ok(n) => {
            add(&ctx.stats.bytes_in, n);
            add(&ctx.stats.backends[backend].bytes_sent, n);
            trace.bytes_in = n;
            client.buf.drain(..pos);
            Ok(Ok(()))
        }
        Err(RelayError::Read(IoFail::Timeout)) => Err(Failure::Status(Canned::RequestTimeout)),
        Err(RelayError::Read(_)) => {
            bump(&ctx.stats.client_aborts);
            Err(Failure::Close)
        }
        Err(RelayError::Framing) => Err(Failure::Status(Canned::BadRequest)),
        Err(RelayError::TooLarge) => Err(Failure::Status(Canned::PayloadTooLarge)),
        Err(RelayError::Write(e)) => Ok(Err(e)),
    }
}

/// The facts of the request the exchange still needs once the head buffer is reused.
#[derive(Clone, Copy)]
struct RequestFacts {
    method: Method,
    minor: u8,
    keep_alive: bool,
    framing: BodyFraming,
    expect_continue: bool,
    head_len: usize,
    /// The client asked to switch protocols and the upgrade will be forwarded.
    upgrade: bool,
}

pub fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}

/// Runs one request through the pipeline. On return the request (head and body) has been
/// removed from `client.buf`, leaving any pipelined bytes that followed it.
pub async fn serve_request(ctx: &ShardCtx, client: &mut Client, head: &RequestHead) -> Outcome {
    let started = Instant::now();
    bump(&ctx.stats.requests);
    let facts = RequestFacts {
        method: head.method(),
        minor: head.minor_version,
        keep_alive: head.wants_keep_alive(),
        framing: head.framing(),
        expect_continue: head.expect_continue,
        head_len: head.head_len,
        upgrade: wants_upgrade(&client.buf, head).is_some(),
    };
    let mut trace = Trace::default();
    let rid = request_id(ctx, client, head);
    // Copied out of the head only for requests that will be logged.
    let log_fields = ctx
        .access
        .as_ref()
        .filter(|log| log.sampled())
        .map(|_| log_fields(&client.buf, head, rid.bytes()));
    let prepared = prepare(ctx, client, head, &facts, &rid, &mut trace);
    // The head has been encoded for the upstream (or refused): from here on the client buffer
    // holds only the body and whatever was pipelined after it.
    client.buf.drain(..facts.head_len);
    let result = match prepared {
        Ok(p) => exchange(ctx, client, p, facts, &rid, &mut trace).await,
        Err(c) => Err(Failure::Status(c)),
    };
    let outcome = match result {
        Ok(o) => o,
        Err(Failure::Close) => {
            // The client got no response, or one cut short.
            trace.aborted = true;
            Outcome::Close
        }
        Err(Failure::Status(c)) => {
            // The body may still be unread: the connection can only be reused if there was none.
            // HTTP/1.0 clients get a close: canned responses carry no `Connection: keep-alive`.
            let body_unread = !facts.framing.is_empty();
            let close = !facts.keep_alive || facts.minor == 0 || body_unread || ctx.draining();
            trace.status = Some(c.status());
            trace.bytes_out = 0;
            let rid_header = cfg_rid_header(ctx, &rid);
            let outcome = respond_canned_with(ctx, client, c, close, rid_header).await;
            if body_unread {
                linger_close(client).await;
            }
            outcome
        }
    };
    let total_us = micros(started);
    ctx.stats.finish_request(
        trace.route,
        if trace.aborted { None } else { trace.status },
        total_us,
    );
    if let (Some(log), Some(fields)) = (&ctx.access, log_fields) {
        let cfg = &ctx.shared.config;
        log.push(
            &fields,
            &crate::observe::access::Outcome {
                client: client.peer.ip(),
                status: trace.status,
                bytes_in: trace.bytes_in,
                bytes_out: trace.bytes_out,
                total_us,
                upstream_us: trace.upstream_us,
                route: trace.route.map(|r| cfg.routes[r].name.as_str()),
                upstream: trace.upstream.map(|u| cfg.upstreams[u].name.as_str()),
                backend: trace.backend.map(|b| ctx.shared.backends[b].address),
            },
            &ctx.stats,
        );
    }
    outcome
}

/// A request routed and encoded for its upstream, ready to send.
struct Prepared {
    upstream: usize,
    /// The hash of the request's key (hash algorithms).
    key: Option<u32>,
    /// The member its sticky cookie names, if valid.
    sticky: Option<usize>,
    /// The upstream request head (kept for a possible retry).
    out: Vec<u8>,
    out_framing: OutFraming,
}

/// Route and encode: everything that needs the parsed head, which lives in the client buffer.
fn prepare(
    ctx: &ShardCtx,
    client: &Client,
    head: &RequestHead,
    facts: &RequestFacts,
    rid: &RequestId,
    trace: &mut Trace,
) -> Result<Prepared, Canned> {
    let shared = &*ctx.shared;
    let buf = &client.buf[..];
    if facts.method == Method::Connect {
        return Err(Canned::MethodNotAllowed);
    }
    let target = split_target(head.target.get(buf));
    let host: &[u8] = match (target.authority, head.host) {
        (Some(a), _) => a,
        (None, Some(h)) => h.get(buf),
        (None, None) => b"",
    };
    let path = target
        .path
        .split(|&b| b == b'?')
        .next()
        .unwrap_or(target.path);
    if !valid_authority(host) || has_dot_segment(path) {
        return Err(Canned::BadRequest);
    }
    let route = shared
        .routes
        .find(host, path, head.method.get(buf), |name| {
            head.header(buf, name)
        });
    let Some(route) = route else {
        return Err(Canned::NotFound);
    };
    trace.route = Some(route.index);
    trace.upstream = Some(route.upstream);
    // Balancing inputs that live in the head: read them now, before the buffer moves on.
    let spec = &shared.config.upstreams[route.upstream].balance;
    let headers = || {
        head.headers
            .iter()
            .map(|h| (h.name.get(buf), h.value.get(buf)))
    };
    let key = spec.hash_key.as_ref().and_then(|k| {
        request_key(
            k,
            KeySource {
                client_ip: client.peer.ip(),
                target: target.path,
                headers: headers(),
            },
        )
    });
    let sticky = spec.sticky.as_ref().and_then(|s| {
        cookie_value(headers(), s.cookie.as_bytes())
            .and_then(|v| shared.tables[route.upstream].sticky_lookup(v))
    });
    if let BodyFraming::Length(n) = facts.framing {
        if n > shared.config.limits.max_body_bytes {
            return Err(Canned::PayloadTooLarge);
        }
    }
    let out_framing = match facts.framing {
        BodyFraming::None => OutFraming::None,
        BodyFraming::Length(n) => OutFraming::Length(n),
        BodyFraming::Chunked | BodyFraming::UntilClose => OutFraming::Chunked,
    };
    let mut out = ctx.take_buffer();
    upstream_request_head(
        buf,
        head,
        &UpstreamRequest {
            target: &target,
            host,
            client_ip: client.peer.ip(),
            framing: out_framing,
            // Generated or trusted, the id replaces every incoming field of its name (a
            // trusted peer's duplicates included).
            set: Some((shared.config.request_id.header.as_bytes(), rid.bytes())),
        },
        &mut out,
    );
    if facts.upgrade {
        if let Some(v) = wants_upgrade(buf, head) {
            // Hop-by-hop, so dropped above; an upgrade is forwarded explicitly.
            out.truncate(out.len() - 2);
            out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
            out.extend_from_slice(v.get(buf));
            out.extend_from_slice(b"\r\n\r\n");
        }
    }
    Ok(Prepared {
        upstream: route.upstream,
        key,
        sticky,
        out,
        out_framing,
    })
}

async fn exchange(
    ctx: &ShardCtx,
    client: &mut Client,
    prepared: Prepared,
    facts: RequestFacts,
    rid: &RequestId,
    trace: &mut Trace,
) -> Result<Outcome, Failure> {
    let cfg = &ctx.shared.config;
    let Prepared {
        upstream: upstream_id,
        key,
        sticky,
        mut out,
        out_framing,
    } = prepared;
    let mut set_cookie = false;
    let head_bytes = out.len();

    // -- balance + pool + send, with the retry rules ----------------------------------------
    // Three kinds of second chances, narrowest first:
    // - a failed connect goes to another backend (nothing was sent; at most
    //   MAX_CONNECT_ATTEMPTS backends, outside `retry.attempts` and the budget);
    // - a pooled connection that died before any response byte is resent once on a fresh
    //   connection (idempotent, bodiless: a keep-alive race, not a backend failure);
    // - the upstream's `retry` policy: an idempotent bodiless request whose try ended in a
    //   listed outcome (reset, timeout, a status) goes to a backend it has not tried, within
    //   `attempts` and the retry budget, and only if such a backend is usable right now.
    let res = &cfg.upstreams[upstream_id].resilience;
    let retry_allowed = facts.method.is_idempotent() && facts.framing.is_empty();
    let first_try = Instant::now();
    ctx.budget_request(upstream_id);
    let mut attempt: u32 = 1;
    let mut fresh_only = false;
    // Backends this request tried (failed connect, or a retried try). Bounded.
    let mut tried: Vec<usize> = Vec::new();
    let mut connect_failures = 0;
    const MAX_CONNECT_ATTEMPTS: usize = 4;
    // A retry's backend, chosen when deciding to retry.
    let mut next: Option<usize> = None;
    let mut ubuf = ctx.take_buffer();
    // Counts this request against the backend it is being sent to, until it returns.
    let mut in_flight: Option<Forwarding<'_>> = None;
    let mut request_permit: Option<Permit> = None;
    let mut sending_at: Option<Instant> = None;
    let (mut upstream, backend, resp_head) = loop {
        let now = Instant::now();
        // The previous try (if any) gives back its breaker permit and in-flight count first.
        drop(request_permit.take());
        drop(in_flight.take());
        let pick = match next.take() {
            Some(b) => Pick::Backend(b),
            None if connect_failures >= MAX_CONNECT_ATTEMPTS => Pick::Exhausted,
            None => {
                let (pick, set) = ctx.pick_backend(upstream_id, &tried, now, key, sticky);
                set_cookie = set;
                pick
            }
        };
        let backend = match pick {
            Pick::Backend(b) => {
                trace.backend = Some(b);
                b
            }
            Pick::NoneUsable | Pick::Exhausted => {
                ctx.give_buffer(out);
                ctx.give_buffer(ubuf);
                return Err(Failure::Status(if pick == Pick::NoneUsable {
                    Canned::ServiceUnavailable
                } else {
                    Canned::BadGateway
                }));
            }
        };
        // Counted against the backend from the pick on (load-aware balancers see it).
        in_flight = Some(ctx.forwarding(backend));
        // Circuit breaker: this shard's share of the backend's limits; open = 503 at once.
        let breaker = &ctx.breakers[backend];
        request_permit = match breaker.try_acquire(Resource::Requests) {
            Ok(p) => Some(p),
            Err(open) => return Err(breaker_open(ctx, backend, open, out, ubuf)),
        };
        let pooled = if fresh_only {
            None
        } else {
            // Always probed: a backend that sent more than its framing said (or answered a
            // request body as a second request) leaves bytes that would otherwise become the
            // next client's response.
            ctx.pool.borrow_mut().checkout(backend, now, true)
        };
        let reused = pooled.is_some();
        let mut upstream = match pooled {
            Some(s) => s,
            None => {
                if let Some(limit) = breaker.limits().max_connections {
                    let b = &ctx.stats.backends[backend];
                    let open = b.in_flight.get() + ctx.pool.borrow().idle_for(backend) as u64;
                    // `in_flight` already counts this request: after this connect there
                    // would be `open` connections.
                    if open > u64::from(limit) {
                        let open = Open {
                            resource: Resource::Connections,
                            limit,
                        };
                        return Err(breaker_open(ctx, backend, open, out, ubuf));
                    }
                }
                let pending = match breaker.try_acquire(Resource::Pending) {
                    Ok(p) => p,
                    Err(open) => return Err(breaker_open(ctx, backend, open, out, ubuf)),
                };
                let connected = ctx.connect(backend).await;
                drop(pending);
                match connected {
                    Ok(s) => s,
                    Err(_) => {
                        tried.push(backend);
                        connect_failures += 1;
                        continue;
                    }
                }
            }
        };

        // `100 Continue` once we know the request will go somewhere.
        if facts.expect_continue
            && facts.minor == 1
            && !facts.framing.is_empty()
            && client.buf.is_empty()
        {
            write_static(
                &mut client.stream,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                &mut client.deadline,
                cfg.timeouts.client_send,
            )
            .await
            .map_err(|_| Failure::Close)?;
        }

        // Head (and for bodies, the body). From here the backend may have the request.
        if let Some(f) = in_flight.as_mut() {
            f.sent = true;
        }
        let sending = *sending_at.insert(Instant::now());
        // This try's bound on the response head: upstream_response, or the retry policy's
        // per-try and total timeouts when they are shorter.
        let try_timeout = res.retry.try_deadline(first_try, sending).map_or(
            cfg.timeouts.upstream_response,
            |d| {
                d.saturating_duration_since(sending)
                    .min(cfg.timeouts.upstream_response)
            },
        );
        let sent = if facts.framing.is_empty() {
            write_from(
                &mut upstream,
                &mut out,
                0,
                head_bytes,
                &mut client.deadline,
                cfg.timeouts.upstream_response,
            )
            .await
        } else if let Some((pipe, len)) = match (facts.framing, out_framing) {
            // Large request bodies of known length are spliced too (client → upstream).
            (BodyFraming::Length(n), OutFraming::Length(_))
                if cfg.splice.enabled && n >= cfg.splice.min_bytes =>
            {
                ctx.pipes.take().map(|p| (p, n))
            }
            _ => None,
        } {
            bump(&ctx.stats.spliced);
            let mut pos = 0;
            let r = relay_spliced(
                &client.stream,
                &client.buf,
                &mut pos,
                &mut upstream,
                &mut out,
                SplicePlan {
                    body: SplicedBody::Length(len),
                    pipe: &pipe,
                },
                &mut Leg::request(&mut client.deadline, &cfg.timeouts, &mut false),
            )
            .await;
            if r.is_ok() {
                ctx.pipes.give(pipe);
                add(&ctx.stats.spliced_bytes, len - pos as u64);
            } else {
                ctx.pipes.discard(pipe);
            }
            request_body_sent(ctx, client, backend, trace, r, pos)?
        } else {
            let mut pos = 0;
            let plan = BodyPlan {
                incoming: facts.framing,
                outgoing: out_framing,
                limit: cfg.limits.max_body_bytes,
                chunk_overhead: cfg.limits.max_header_bytes,
                forward_trailers: false,
            };
            let r = relay_body(
                &mut client.stream,
                &mut client.buf,
                &mut pos,
                &mut upstream,
                &mut out,
                &plan,
                &mut Leg::request(&mut client.deadline, &cfg.timeouts, &mut false),
            )
            .await;
            request_body_sent(ctx, client, backend, trace, r, pos)?
        };
        let how = HeadRead {
            limits: HeadLimits {
                max_header_bytes: cfg.limits.max_header_bytes.max(16384),
                max_headers: cfg.limits.max_headers.max(100),
                max_uri_bytes: cfg.limits.max_uri_bytes,
            },
            timeout: try_timeout,
            upgrade: facts.upgrade,
            max_read: head_read_size(&cfg.splice, ctx.spliced_last[backend].get()),
        };
        let mut any_byte = false;
        let got = match sent {
            Err(e) => Err(HeadFail::Io(e)),
            Ok(()) => {
                read_response_head(
                    &mut upstream,
                    &mut ubuf,
                    &how,
                    &mut client.deadline,
                    &mut any_byte,
                )
                .await
            }
        };
        // What this try amounted to, for outlier detection and the retry policy.
        let outcome = match &got {
            Ok(h) => TryOutcome::Response { status: h.status },
            Err(HeadFail::Io(IoFail::Timeout)) => TryOutcome::Timeout,
            Err(_) => TryOutcome::Reset,
        };
        if let Err(HeadFail::Io(e)) = &got {
            if !matches!(e, IoFail::Timeout) && reused && retry_allowed && !fresh_only && !any_byte
            {
                // The pooled connection died under us before any response byte: the request
                // is idempotent and bodiless, so it is safe to send once more, on a fresh one.
                bump(&ctx.stats.retries);
                fresh_only = true;
                next = Some(backend);
                // A keep-alive race, not the backend's latency.
                if let Some(f) = in_flight.as_mut() {
                    f.sent = false;
                }
                // `out` still holds the head to resend.
                ubuf.clear();
                continue;
            }
        }
        ctx.observe(backend, outcome);
        let wants_retry = retry_allowed
            && attempt < res.retry.attempts
            && res.retry.retries_on(outcome)
            && res.retry.has_time_left(first_try, Instant::now());
        if wants_retry {
            let mut others = tried.clone();
            others.push(backend);
            let (pick, set) = ctx.pick_backend(upstream_id, &others, Instant::now(), key, sticky);
            if let Pick::Backend(b) = pick {
                if ctx.budget_retry(upstream_id) {
                    set_cookie = set;
                    // A reset says nothing about the backend's speed: no latency sample.
                    if outcome == TryOutcome::Reset {
                        if let Some(f) = in_flight.as_mut() {
                            f.sent = false;
                        }
                    }
                    bump(&ctx.stats.retries);
                    if ctx.errors.allow(&ctx.stats) {
                        tracing::info!(shard = ctx.id, backend = %ctx.shared.backends[backend].address, ?outcome, "retrying on another backend");
                    }
                    tried.push(backend);
                    attempt += 1;
                    next = Some(b);
                    fresh_only = false;
                    ubuf.clear();
                    // The connection is dropped: its response (if any) is not read.
                    continue;
                }
            }
        }
        match got {
            Ok(h) => {
                ctx.stats.record_first_byte(micros(sending));
                break (upstream, backend, h);
            }
            Err(HeadFail::Io(IoFail::Timeout)) => {
                ctx.give_buffer(out);
                return Err(Failure::Status(Canned::GatewayTimeout));
            }
            Err(_) => {
                bump(&ctx.stats.upstream_aborts);
                ctx.give_buffer(out);
                return Err(Failure::Status(Canned::BadGateway));
            }
        }
    };
    ctx.stats.upstream_status(backend, resp_head.status);
    trace.status = Some(resp_head.status);
    if resp_head.status == 101 {
        // Switching protocols: send the 101 head and hand both connections to the tunnel.
        out.clear();
        switching_protocols_head(
            &ubuf,
            &resp_head,
            cfg.request_id
                .respond
                .then(|| (cfg.request_id.header.as_bytes(), rid.bytes())),
            &mut out,
        );
        let n = out.len();
        let written = write_from(
            &mut client.stream,
            &mut out,
            0,
            n,
            &mut client.deadline,
            cfg.timeouts.client_send,
        )
        .await;
        ctx.give_buffer(out);
        trace.upstream_us = sending_at.map(micros);
        if written.is_err() {
            bump(&ctx.stats.client_aborts);
            return Err(Failure::Close);
        }
        let early = ubuf[resp_head.head_len..].to_vec();
        ctx.give_buffer(ubuf);
        client.upgraded = Some(Box::new(Upgraded {
            upstream,
            backend,
            early,
        }));
        return Ok(Outcome::Upgraded);
    }

    // -- respond ---------------------------------------------------------------------------
    let in_framing = resp_head.framing(facts.method);
    let (resp_framing, close_delimited) = response_out_framing(in_framing, facts.minor);
    let close = !facts.keep_alive || close_delimited || ctx.draining();
    out.clear();
    client_response_head(
        &ubuf,
        &resp_head,
        resp_framing,
        close,
        facts.minor,
        cfg.request_id
            .respond
            .then(|| (cfg.request_id.header.as_bytes(), rid.bytes())),
        &mut out,
    );
    if set_cookie {
        // A sticky session starts (or moved): name the backend in a cookie, inserted before
        // the head's final empty line.
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"Set-Cookie: ");
        ctx.shared.tables[upstream_id]
            .write_set_cookie(ctx.shared.backends[backend].local, &mut out);
        out.extend_from_slice(b"\r\n\r\n");
    }
    let mut upos = resp_head.head_len;
    // Not pooled: after HEAD (a backend that wrongly sends a body would leave it for the next
    // request to read as its response), and after a body on a method that normally has none
    // (a backend that ignores such a body may parse it as a second request: "CL.0").
    let unusual_body = !facts.framing.is_empty()
        && matches!(
            facts.method,
            Method::Get | Method::Head | Method::Delete | Method::Options | Method::Trace
        );
    let upstream_reusable = !facts.upgrade
        && resp_head.upstream_keep_alive()
        && in_framing != BodyFraming::UntilClose
        && facts.method != Method::Head
        && !unusual_body;
    let mut written = false;
    // Large bodies of known length, and close-delimited ones (their length is unknown), go
    // socket → pipe → socket (splice); the rest is copied.
    let spliced = match (in_framing, resp_framing) {
        (BodyFraming::Length(n), OutFraming::Length(_)) if n >= cfg.splice.min_bytes => {
            Some(SplicedBody::Length(n))
        }
        (BodyFraming::UntilClose, f) => Some(SplicedBody::UntilClose {
            chunked: f == OutFraming::Chunked,
        }),
        _ => None,
    }
    .filter(|_| cfg.splice.enabled);
    ctx.spliced_last[backend].set(spliced.is_some());
    let spliced = spliced.and_then(|body| ctx.pipes.take().map(|p| (p, body)));
    let relayed = if let Some((pipe, body)) = spliced {
        bump(&ctx.stats.spliced);
        let head_read = upos;
        let r = relay_spliced(
            &upstream,
            &ubuf,
            &mut upos,
            &mut client.stream,
            &mut out,
            SplicePlan { body, pipe: &pipe },
            &mut Leg::response(&mut client.deadline, &cfg.timeouts, &mut written),
        )
        .await;
        if let Ok(total) = r {
            ctx.pipes.give(pipe);
            add(&ctx.stats.spliced_bytes, total - (upos - head_read) as u64);
        } else {
            ctx.pipes.discard(pipe);
        }
        r
    } else if in_framing == BodyFraming::None {
        let n = out.len();
        write_from(
            &mut client.stream,
            &mut out,
            0,
            n,
            &mut client.deadline,
            cfg.timeouts.client_send,
        )
        .await
        .map(|_| 0)
        .map_err(RelayError::Write)
    } else {
        let plan = BodyPlan {
            incoming: in_framing,
            outgoing: resp_framing,
            limit: u64::MAX,
            chunk_overhead: cfg.limits.max_header_bytes,
            forward_trailers: true,
        };
        relay_body(
            &mut upstream,
            &mut ubuf,
            &mut upos,
            &mut client.stream,
            &mut out,
            &plan,
            &mut Leg::response(&mut client.deadline, &cfg.timeouts, &mut written),
        )
        .await
    };
    ctx.give_buffer(out);
    trace.upstream_us = sending_at.map(micros);
    drop(in_flight);
    drop(request_permit);
    match relayed {
        Ok(n) => {
            add(&ctx.stats.bytes_out, n);
            add(&ctx.stats.backends[backend].bytes_received, n);
            trace.bytes_out = n;
            if upstream_reusable && upos == ubuf.len() {
                ctx.pool
                    .borrow_mut()
                    .checkin(backend, upstream, Instant::now());
            }
            ctx.give_buffer(ubuf);
            Ok(if close {
                Outcome::Close
            } else {
                Outcome::KeepAlive
            })
        }
        Err(RelayError::Write(_)) => {
            bump(&ctx.stats.client_aborts);
            Err(Failure::Close)
        }
        Err(e) if !written => {
            // Nothing reached the client yet: it can still get a proper status.
            bump(&ctx.stats.upstream_aborts);
            Err(Failure::Status(match e {
                RelayError::Read(IoFail::Timeout) => Canned::GatewayTimeout,
                _ => Canned::BadGateway,
            }))
        }
        Err(_) => {
            // The head is out; the only honest signal left is to close mid-body.
            bump(&ctx.stats.upstream_aborts);
            Err(Failure::Close)
        }
    }
}
