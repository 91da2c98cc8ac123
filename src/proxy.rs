//! Stages 3 to 7 of the pipeline for one request, top to bottom: the *request filter*
//! (checks a route cannot make), *route* the parsed head and encode it for its upstream
//! (`prepare`), *balance, pool and forward* ([`crate::forward`]), *respond*
//! ([`crate::respond`]), and *log* (counters and the access log). A failure at any stage is a
//! [`ProxyError`], answered in one place ([`ProxyError::answer`]).

use crate::admission::client_address;
use crate::auth::{self, Granted};
use crate::balance::key::cookie_value;
use crate::balance::{request_key, KeySource};
use crate::cache::{self, Settled};
use crate::client::{Client, Outcome};
use crate::clock::micros_total;
use crate::config::RouteResponse;
use crate::error::{Answer, Kind, ProxyError, Side, Stage};
use crate::forward::{read_whole_body, Forward, Prepared, RequestFacts};
use crate::http::canned::Canned;
use crate::http::encode::{split_target, upstream_request_head, OutFraming, UpstreamRequest};
use crate::http::parse::{BodyFraming, Method, RequestHead};
use crate::linger::linger_close;
use crate::respond::{
    cfg_rid_header, relay_response, respond_canned_with, respond_own, route_pages, Field, Respond,
};
use crate::route::{match_path, normalize_path, routing_input};
use crate::rules::{location, path_and_query, rewrite_target, Fields, Vars};
use crate::shard::ShardCtx;
use crate::stats::bump;
use crate::trace::{log_fields, request_id, RequestId, Trace};
use crate::tunnel::{wants_upgrade, write_offer};
use crate::upstream::state::PickKey;

/// Runs one request through the pipeline. On return the request (head and body) has been
/// removed from `client.buf`, leaving any pipelined bytes that followed it.
pub async fn serve_request(ctx: &ShardCtx, client: &mut Client, head: &RequestHead) -> Outcome {
    let started = crate::clock::now();
    bump(&ctx.stats.requests);
    let mut facts = RequestFacts {
        method: head.method(),
        minor: head.minor_version,
        keep_alive: head.wants_keep_alive(),
        framing: head.framing(),
        expect_continue: head.expect_continue,
        head_len: head.head_len,
        // On a TLS listener too: the tunnel's client side is then crate::tunnel_tls.
        upgrade: wants_upgrade(&client.buf, head),
        client_ip: client_address(
            &ctx.shared.config.trusted_proxies,
            client.peer.ip(),
            client.forwarded_trusted,
            &client.buf,
            head,
        ),
    };
    // The connection's last request (limits.max_requests_per_connection,
    // timeouts.client_keepalive_time): every answer to it says `Connection: close` (an
    // upgrade's 101 cannot; its connection ends with its tunnel).
    if let Some(why) = client.served.count(&ctx.shared.config, started) {
        if facts.keep_alive && !facts.upgrade {
            bump(&ctx.stats.retired[why as usize]);
            facts.keep_alive = false;
        }
    }
    let mut trace = Trace::default();
    let rid = request_id(ctx, client, head);
    // Copied out of the head only for requests that may be logged.
    let log_fields = ctx.access.as_ref().and_then(|log| {
        let sampled = log.takes()?;
        let mut fields = log_fields(log, &client.buf, head, rid.bytes());
        fields.sampled = sampled;
        Some(fields)
    });
    // The listener's rate limit first: it counts every request on the listener, redirected
    // or routed (even one that finds no route).
    let listener_limit = client.listener.rate_limit.as_ref().and_then(|limit| {
        let counter = &ctx.stats.limited_listener;
        limited(ctx, client, limit, counter, head, &facts)
    });
    let redirect = (client.listener.redirect_https.as_ref())
        .filter(|r| crate::rules::redirected(&client.buf, head, r));
    let prepared = match (listener_limit, redirect) {
        (Some(answer), _) => Ok(answer),
        // CONNECT names no resource to redirect to: refused as on any listener.
        (None, Some(_)) if facts.method == Method::Connect => Err(Canned::MethodNotAllowed),
        (None, Some(r)) => crate::rules::https_location(&client.buf, head, r.port).map(|loc| {
            let c = if r.status == 308 {
                Canned::PermanentRedirect
            } else {
                Canned::MovedPermanently
            };
            Plan::Answer(c, b"Location", loc)
        }),
        (None, None) => plan(ctx, client, head, &facts, &rid, &mut trace).await,
    };
    // The head has been encoded for the upstream (or refused): from here on the client buffer
    // holds only the body and whatever was pipelined after it.
    client.buf.drain(..facts.head_len);
    // Stages 4 to 7: forward the routed request, relay the answer.
    let result = match prepared {
        Ok(Plan::Answer(c, name, value)) => {
            let body_unread = !facts.framing.is_empty();
            let close = !facts.keep_alive || facts.minor == 0 || body_unread || ctx.draining();
            trace.status = Some(c.status());
            trace.error = Some(ProxyError::refused(c).reason());
            let head_only = facts.method == Method::Head;
            let rid_header = cfg_rid_header(ctx, &rid);
            let fields = [(name, &value[..]), rid_header.unwrap_or((b"", b""))];
            let n = if rid_header.is_some() { 2 } else { 1 };
            let own = Box::pin(respond_canned_with(
                ctx,
                client,
                c,
                close,
                head_only,
                &fields[..n],
                route_pages(ctx, trace.route()),
            ))
            .await;
            trace.bytes_out = own.body;
            let mut outcome = own.outcome;
            if body_unread {
                outcome = close_lingering(ctx, client).await;
            }
            Ok(Exchanged {
                outcome,
                early: false,
            })
        }
        Ok(Plan::Respond(answer)) => Box::pin(respond_here(ctx, client, answer, &facts, &rid))
            .await
            .map(|(outcome, body)| {
                trace.status = Some(answer.status);
                trace.bytes_out = body;
                Exchanged {
                    outcome,
                    early: false,
                }
            }),
        Ok(Plan::Deny(denial)) => {
            let body_unread = !facts.framing.is_empty();
            let close = !facts.keep_alive || facts.minor == 0 || body_unread || ctx.draining();
            trace.status = Some(denial.status());
            trace.error = Some(denial.reason());
            let route = trace.route().map(|i| &ctx.shared.config.routes[i]);
            let answer = auth::answer(ctx, client, &denial, close, &facts, &rid, route);
            let own = Box::pin(answer).await;
            trace.bytes_out = own.body;
            let mut outcome = own.outcome;
            if body_unread {
                outcome = close_lingering(ctx, client).await;
            }
            Ok(Exchanged {
                outcome,
                early: false,
            })
        }
        Ok(Plan::Cached(hit)) => Ok(Exchanged {
            outcome: cache::serve(ctx, client, hit, &facts, &rid, &mut trace).await,
            early: false,
        }),
        Ok(Plan::Forward(p, mut fill)) => match Forward::new(ctx)
            .forward(client, p, facts, &mut trace)
            .await
        {
            Ok(answered) => {
                let early = answered.early;
                trace.upstream_status = Some(answered.head.status);
                let respond = Respond::new(ctx);
                // The cache's revalidation: its 304 (or a 5xx within stale-if-error) is
                // answered with the stored entry, not relayed.
                match cache::settle(ctx, fill.as_deref_mut(), &respond, answered, &mut trace) {
                    Settled::Hit(hit) => Ok(Exchanged {
                        outcome: cache::serve(ctx, client, hit, &facts, &rid, &mut trace).await,
                        early: false,
                    }),
                    Settled::Unusable => Err(ProxyError::upstream(Kind::Framing, Stage::Head)),
                    Settled::Relay(answered) => {
                        let (f, t) = (fill.as_deref_mut(), &mut trace);
                        let relayed =
                            relay_response(&respond, client, answered, &facts, &rid, t, f).await;
                        // The relay watched the client: a failure after it left is the
                        // client's, not the backend's.
                        let left = client.deadline.unwatch();
                        let relayed = relayed.map_err(|e| if left { e.client_left() } else { e });
                        if let Some(fill) = fill {
                            // Stored only when relayed whole.
                            fill.finish(relayed.is_ok());
                        }
                        relayed.map(|outcome| Exchanged { outcome, early })
                    }
                }
            }
            // The cache's stale-if-error: a stale entry instead of the error.
            Err(e) => match fill.as_mut().and_then(|f| f.stale_on_error(Some(&e))) {
                Some(hit) => {
                    e.count(&ctx.stats);
                    let outcome = cache::serve(ctx, client, hit, &facts, &rid, &mut trace).await;
                    Ok(Exchanged {
                        outcome,
                        early: false,
                    })
                }
                None => Err(e),
            },
        },
        Err(c) => Err(ProxyError::refused(c)),
    };
    let outcome = match result {
        Ok(Exchanged { outcome, early }) => {
            if early {
                // The backend answered before the whole body: the rest is read and dropped
                // for a bounded time, so the close does not reset the response away.
                close_lingering(ctx, client).await
            } else {
                outcome
            }
        }
        Err(e) => match e.answer() {
            Answer::Close => {
                e.count(&ctx.stats);
                trace.error = Some(e.reason());
                // The client got no response, or one cut short.
                trace.aborted = true;
                if e.side == Side::Upstream && facts.minor == 1 {
                    // Cut by the backend: the client's response has a length or is chunked,
                    // so an orderly close reads as the truncation it is. Closed with
                    // pipelined requests unread, the kernel would answer them with a reset
                    // that destroys the earlier responses still in flight.
                    close_lingering(ctx, client).await
                } else {
                    if e.side == Side::Upstream {
                        // An HTTP/1.0 client's body may be close-delimited: an orderly
                        // close would make the part it got look whole.
                        client.stream.reset_on_close();
                    }
                    Outcome::Cut
                }
            }
            Answer::Status(c) => {
                e.count(&ctx.stats);
                trace.error = Some(e.reason());
                if e.side == Side::Upstream {
                    crate::observe::errors::upstream_failed(ctx, &e, &trace);
                }
                // The body may still be unread: the connection can only be reused if there was
                // none. HTTP/1.0 clients get a close: canned responses carry no
                // `Connection: keep-alive`.
                let body_unread = !facts.framing.is_empty();
                let close = !facts.keep_alive || facts.minor == 0 || body_unread || ctx.draining();
                trace.status = Some(c.status());
                let rid_header = cfg_rid_header(ctx, &rid);
                let own = Box::pin(respond_canned_with(
                    ctx,
                    client,
                    c,
                    close,
                    facts.method == Method::Head,
                    rid_header.as_slice(),
                    route_pages(ctx, trace.route()),
                ))
                .await;
                trace.bytes_out = own.body;
                if body_unread {
                    close_lingering(ctx, client).await
                } else {
                    own.outcome
                }
            }
        },
    };
    let total_us = micros_total(started);
    ctx.stats.finish_request(
        trace.route(),
        if trace.aborted { None } else { trace.status },
        total_us,
    );
    let cfg = &ctx.shared.config;
    let logged = |r: usize| cfg.routes[r].access_log;
    if let (Some(log), Some(fields)) = (&ctx.access, log_fields) {
        let status = if trace.aborted { None } else { trace.status };
        if !trace.route().is_none_or(logged) || !log.writes(fields.sampled, status, total_us) {
            return outcome;
        }
        log.push(
            &fields,
            &crate::observe::access::Outcome {
                client: facts.client_ip,
                status: trace.status,
                bytes_in: trace.bytes_in,
                bytes_out: trace.bytes_out,
                total_us,
                upstream_us: trace.upstream_us,
                route: trace.route().map(|r| cfg.routes[r].name.as_str()),
                upstream: trace
                    .upstream
                    .map(|u| cfg.upstreams[u as usize].name.as_str()),
                backend: trace
                    .backend
                    .map(|b| ctx.shared.backends[b as usize].address),
                upstream_connect_us: trace.upstream_connect_us.map(u64::from),
                upstream_header_us: trace.upstream_header_us.map(u64::from),
                // A request sent to a backend that did not wait waited 0 (HAProxy's `Tw`).
                upstream_queue_us: match (trace.queued_us, trace.backend) {
                    (0, None) => None,
                    (us, _) => Some(u64::from(us)),
                },
                cache: trace.cache,
                tls: crate::tls::log_facts(client),
                connection_requests: client.served.requests(),
                peer_port: client.peer.port(),
                upstream_status: trace.upstream_status,
                earlier: trace.earlier(),
                error: trace.error,
            },
            &ctx.stats,
        );
    }
    outcome
}

/// The largest request body a route's `respond` reads (and drops) to keep the connection:
/// a beacon's or a form's. A larger one, or one of unknown length, is left unread and the
/// connection closes after the answer.
const RESPOND_DISCARD_MAX: u64 = 64 << 10;

/// A route's `respond`: the body read and dropped when it is small, then the answer (with
/// the request id and the listener's HSTS), then a close when the body was not read. Says
/// how the connection goes on and the body bytes sent.
async fn respond_here(
    ctx: &ShardCtx,
    client: &mut Client,
    answer: &RouteResponse,
    facts: &RequestFacts,
    rid: &RequestId,
) -> Result<(Outcome, u64), ProxyError> {
    let mut body_unread = !facts.framing.is_empty();
    // A client waiting for `100 Continue` gets the answer instead (RFC 9110 §10.1.1).
    if let (BodyFraming::Length(n), false) = (facts.framing, facts.expect_continue) {
        if n <= RESPOND_DISCARD_MAX {
            read_whole_body(client, n, &ctx.shared.config).await?;
            client.buf.drain(..n as usize);
            body_unread = false;
        }
    }
    let close = !facts.keep_alive || facts.minor == 0 || body_unread || ctx.draining();
    let head_only = facts.method == Method::Head;
    let mut fields: [Field<'_>; 2] = [(b"", b""); 2];
    let mut n = 0;
    if let Some(f) = cfg_rid_header(ctx, rid) {
        fields[n] = f;
        n += 1;
    }
    if let Some(f) = crate::respond::hsts(&client.listener) {
        fields[n] = f;
        n += 1;
    }
    let (stream, deadline, extra) = (&mut client.stream, &mut client.deadline, &fields[..n]);
    let bytes = answer.bytes(close);
    let own = respond_own(ctx, stream, deadline, bytes, close, head_only, extra).await;
    if body_unread {
        return Ok((close_lingering(ctx, client).await, own.body));
    }
    Ok((own.outcome, own.body))
}

/// Route, authenticate (the route's `auth`, when it has one) and encode: everything that
/// needs the parsed head, which lives in the client buffer (read, never changed, while an
/// auth check is awaited).
async fn plan<'a>(
    ctx: &'a ShardCtx,
    client: &Client,
    head: &RequestHead,
    facts: &RequestFacts,
    rid: &RequestId,
    trace: &mut Trace,
) -> Result<Plan<'a>, Canned> {
    let routed = route(ctx, client, head, facts, trace)?;
    if let Some(limit) = &ctx.shared.config.routes[routed.index].rate_limit {
        if let Some(answer) = limited(ctx, client, limit, &ctx.stats.limited_route, head, facts) {
            return Ok(answer);
        }
    }
    if let Some(answer) = &ctx.shared.config.routes[routed.index].respond {
        return Ok(Plan::Respond(answer));
    }
    let rules = &ctx.shared.config.routes[routed.index].rules;
    if let Some(r) = &rules.redirect {
        let vars = vars(ctx, client, facts, rid, &routed);
        return match location(r, &vars) {
            Some(to) => Ok(Plan::Answer(r.status, b"Location", to)),
            None => Err(Canned::BadRequest),
        };
    }
    // A tunnel started now would be cut at shutdown_timeout, and a 101 cannot say
    // `Connection: close`: the client is told to come back (to the successor, after a binary
    // upgrade) instead. A route that answers itself (above) still does, with the close.
    if facts.upgrade && ctx.draining() {
        return Err(Canned::ServiceUnavailable);
    }
    let granted = match &ctx.shared.config.routes[routed.index].auth {
        None => Granted::default(),
        Some(a) => {
            let req = auth::Request {
                buf: &client.buf,
                head,
                host: routed.host,
                target: routed.target.path,
                client_ip: facts.client_ip,
                https: crate::tls::client_facts(client).0,
                subjects: crate::tls::Subjects::of(client, &ctx.shared),
            };
            // Boxed: only routes with auth run it, and its subrequest's timers (monoio's,
            // 128-byte aligned) would over-align every request's future (src/alloc.rs).
            match Box::pin(auth::check(ctx, a, &req)).await {
                Ok(g) => g,
                Err(denial) => return Ok(Plan::Deny(denial)),
            }
        }
    };
    // The route's cache: a fresh hit is the answer; a miss is forwarded with its fill.
    let route_cfg = &ctx.shared.config.routes[routed.index];
    let fill = match &route_cfg.cache {
        None => None,
        Some(cfg) => {
            let req = cache::Request {
                buf: &client.buf,
                head,
                method: facts.method,
                https: crate::tls::client_facts(client).0,
                host: routed.host,
                target: routed.target.path,
                unusual: !facts.framing.is_empty() || facts.upgrade,
                proxied_fields: route_cfg.auth.is_some()
                    || route_cfg.rules.request.is_some()
                    || client.listener.request_headers.is_some()
                    || crate::tls::client_facts(client).1.is_some(),
                trusted_forwarding: client.forwarded_trusted,
                own_fields: &ctx.shared.own_fields,
            };
            let config = &ctx.shared.config;
            let u = routed.upstream.ok_or(Canned::InternalServerError)?;
            let wait = config.upstream_connect(u) + config.upstream_response(u);
            let name = &ctx.shared.config.routes[routed.index].name;
            match cache::lookup(&ctx.cache, name, cfg, &req, wait).await {
                cache::Lookup::Hit(hit) => return Ok(Plan::Cached(hit)),
                cache::Lookup::Stale(hit, refresh) => {
                    // stale-while-revalidate: the stale entry now, its revalidation (this
                    // request as it would be forwarded) in the background.
                    if let Some(fill) = refresh {
                        if let Ok(p) = prepare(ctx, client, head, facts, rid, &routed, &granted) {
                            cache::refresh::spawn(ctx, fill, p);
                        }
                    }
                    return Ok(Plan::Cached(hit));
                }
                // RFC 9111 §5.2.1.7: nothing stored fits, and the client wants nothing else.
                cache::Lookup::Miss(fill) if fill.only_if_cached() => {
                    return Err(Canned::GatewayTimeout)
                }
                cache::Lookup::Miss(fill) => Some(fill),
                // A part on a miss: the whole object fetched in the background (the request
                // as it would be forwarded, without its Range), the part forwarded now.
                cache::Lookup::RangeMiss(mut fill, whole) => {
                    if let Ok(p) = prepare(ctx, client, head, facts, rid, &routed, &granted) {
                        let mut out = p.out.to_vec();
                        whole.condition(&mut out);
                        fill.defer_whole(whole, out, p.upstream, p.key);
                    }
                    Some(fill)
                }
            }
        }
    };
    prepare(ctx, client, head, facts, rid, &routed, &granted).map(|mut p| {
        // A stale entry's revalidation: conditional on the entry, not the client.
        if let Some(f) = &fill {
            f.condition(&mut p.out);
        }
        Plan::Forward(p, fill)
    })
}

/// What routing found, for the stages after it.
struct Routed<'b> {
    /// Index into the configured routes.
    index: usize,
    /// Index into the configured upstreams (`None`: the route answers itself).
    upstream: Option<usize>,
    target: crate::http::encode::Target<'b>,
    host: &'b [u8],
    /// The path the route matched: the target's, normalised
    /// ([`crate::route::normalize_path`]); owned only when that changed it.
    path: std::borrow::Cow<'b, [u8]>,
}

/// Route: the request's route, once its `allow`/`deny` admits the client.
fn route<'b>(
    ctx: &ShardCtx,
    client: &'b Client,
    head: &RequestHead,
    facts: &RequestFacts,
    trace: &mut Trace,
) -> Result<Routed<'b>, Canned> {
    let shared = &*ctx.shared;
    let buf = &client.buf[..];
    if facts.method == Method::Connect {
        return Err(Canned::MethodNotAllowed);
    }
    let raw = head.target.get(buf);
    let mut target = split_target(raw);
    // `OPTIONS http://h:8001` (an empty path, which `split_target` gives as `/`): the server
    // as a whole, which the last proxy asks as `OPTIONS *` (RFC 9112 §3.2.4).
    if facts.method == Method::Options && target.path == b"/" && !raw.ends_with(b"/") {
        target.path = b"*";
    }
    let Some((host, path)) = routing_input(&target, head.host.map(|h| h.get(buf))) else {
        return Err(Canned::BadRequest);
    };
    let route = shared
        .routes
        .find(host, &match_path(&path), head.method.get(buf), |name| {
            // An mTLS subject header is the verified one, whatever the client sent.
            if let Some(verified) = crate::tls::Subjects::of(client, shared).field(name) {
                return verified;
            }
            // A field the request's `Connection` names is not forwarded: it routes nothing.
            let hop = !head.conn_tokens.is_empty() && head.named_in_connection(buf, name);
            (!hop).then(|| head.header(buf, name)).flatten()
        });
    let Some(route) = route else {
        return Err(Canned::NotFound);
    };
    // Set before the access check: a refusal is this route's (its label, its error pages).
    trace.set_route(route.index);
    let access = &shared.config.routes[route.index].access;
    if !access.is_open() && !access.admits(facts.client_ip) {
        bump(&ctx.stats.denied_route);
        return Err(Canned::Forbidden);
    }
    trace.upstream = route.upstream.map(|u| u as u32);
    if let Some(cc) = &shared.config.routes[route.index].compress {
        trace.compress = crate::compress::negotiate_request(buf, head, cc);
    }
    Ok(Routed {
        index: route.index,
        upstream: route.upstream,
        target,
        host,
        path,
    })
}

/// Encode: the routed request's head for its upstream, with what its auth check granted.
fn prepare<'a>(
    ctx: &'a ShardCtx,
    client: &Client,
    head: &RequestHead,
    facts: &RequestFacts,
    rid: &RequestId,
    routed: &Routed<'_>,
    granted: &Granted,
) -> Result<Prepared<'a>, Canned> {
    let shared = &*ctx.shared;
    let buf = &client.buf[..];
    let (route, target, host) = (routed, &routed.target, routed.host);
    // Every route that does not answer itself names an upstream (the configuration's check).
    let upstream = route.upstream.ok_or(Canned::InternalServerError)?;
    let headers = || crate::tls::Subjects::of(client, shared).fields(buf, head);
    // Balancing inputs that live in the head: read them now, before the buffer moves on.
    let spec = &shared.config.upstreams[upstream].balance;
    let key = spec.hash_key.as_ref().and_then(|k| {
        request_key(
            k,
            KeySource {
                client_ip: facts.client_ip,
                target: target.path,
                headers: headers(),
            },
        )
    });
    let sticky = spec.sticky.as_ref().and_then(|s| {
        cookie_value(headers(), s.cookie.as_bytes())
            .and_then(|v| shared.tables[upstream].sticky_lookup(v))
    });
    let body_limit = shared.config.routes[route.index].max_body_bytes;
    if let BodyFraming::Length(n) = facts.framing {
        if n > body_limit {
            return Err(Canned::PayloadTooLarge);
        }
    }
    let out_framing = match facts.framing {
        BodyFraming::None => OutFraming::None,
        BodyFraming::Length(n) => OutFraming::Length(n),
        BodyFraming::Chunked | BodyFraming::UntilClose => OutFraming::Chunked,
    };
    let rid_field: (&[u8], &[u8]) = (shared.config.request_id.header.as_bytes(), rid.bytes());
    let (https, subject) = crate::tls::client_facts(client);
    let set = [rid_field, subject.unwrap_or((b"", b""))];
    let n_set = if subject.is_some() { 2 } else { 1 };
    // With auth: what it copied or strips (an empty value only removes the client's).
    let mut with_auth: Vec<(&[u8], &[u8])> = Vec::new();
    // Where this listener writes no subject, another's subject header is still the proxy's:
    // a client's copy is removed.
    let foreign_subjects = subject.is_none() && !shared.tls.subject_headers.is_empty();
    if granted.strip_authorization || !granted.copied.is_empty() || foreign_subjects {
        with_auth.extend_from_slice(&set[..n_set]);
        if foreign_subjects {
            let names = shared.tls.subject_headers.iter();
            with_auth.extend(names.map(|h| (h.as_bytes(), &b""[..])));
        }
        if granted.strip_authorization {
            with_auth.push((b"Authorization", b""));
        }
        with_auth.extend(granted.copied.iter().map(|(n, v)| (&n[..], &v[..])));
    }
    let set = if with_auth.is_empty() {
        &set[..n_set]
    } else {
        &with_auth[..]
    };
    // The route's rules: a rewritten target, its Host, header rules with their variables.
    let route_cfg = &shared.config.routes[route.index];
    let rewritten = match &route_cfg.rules.rewrite {
        // A rule rewrites the path the route matched: `strip_prefix = "/api"` strips it from
        // `//api/x` too, which the route matched as `/api/x`. `OPTIONS *` has no path to
        // rewrite and goes as it came.
        Some(rw) if target.path != b"*" => Some(
            rewrite_target(
                rw,
                &matched_target(
                    target.path,
                    matches!(route.path, std::borrow::Cow::Owned(_)).then_some(&*route.path),
                ),
                shared.config.limits.max_uri_bytes,
            )
            .map_err(|e| match e {
                crate::rules::RewriteError::Invalid => Canned::InternalServerError,
                crate::rules::RewriteError::InvalidRequest => Canned::BadRequest,
                crate::rules::RewriteError::TooLong => Canned::UriTooLong,
            })?,
        ),
        _ => None,
    };
    let sent = crate::http::encode::Target {
        path: rewritten.as_deref().unwrap_or(target.path),
        authority: target.authority,
    };
    let vars;
    let rules = match (&client.listener.request_headers, &route_cfg.rules.request) {
        (None, None) => None,
        (l, r) => {
            vars = self::vars(ctx, client, facts, rid, routed);
            Fields::of(l.as_deref(), r.as_deref(), &vars)
        }
    };
    let mut out = ctx.buffer();
    upstream_request_head(
        buf,
        head,
        &UpstreamRequest {
            target: &sent,
            host,
            client_ip: client.peer.ip(),
            // X-Forwarded-For from anyone but a trusted proxy is a claim nobody vouches for:
            // it is replaced by the peer's address.
            keep_forwarded_for: client.forwarded_trusted,
            framing: out_framing,
            // Generated or trusted, the id replaces every incoming field of its name (a
            // trusted peer's duplicates included); so does the mTLS subject, whose field a
            // client can never set.
            set,
            https,
            upstream_host: route_cfg.rules.upstream_host.as_deref().map(str::as_bytes),
            rules,
        },
        &mut out,
    );
    if facts.upgrade {
        // Hop-by-hop, so dropped above; an upgrade is forwarded explicitly.
        let end = out.len() - 2;
        out.truncate(end);
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        write_offer(buf, head, &mut out);
        out.extend_from_slice(b"\r\n\r\n");
    }
    Ok(Prepared {
        upstream,
        key: PickKey { hash: key, sticky },
        out,
        out_framing,
        body_limit,
    })
}

/// A rate limit's answer when its bucket for this request is empty: `429` with the seconds
/// until it has a token again.
fn limited(
    ctx: &ShardCtx,
    client: &Client,
    limit: &crate::config::RateLimit,
    counter: &std::cell::Cell<u64>,
    head: &RequestHead,
    facts: &RequestFacts,
) -> Option<Plan<'static>> {
    let buf = &client.buf[..];
    // `path` and `uri` count the path as routes compare it: `/rp/%62`, `//rp/b` and
    // `/rp%2Fb` are the bucket of `/rp/b`, not fresh ones. Other keys do not read it.
    let raw = split_target(head.target.get(buf)).path;
    let reads_path = matches!(
        limit.key,
        crate::config::RateKey::Request(
            crate::balance::HashKey::Path | crate::balance::HashKey::Uri
        )
    );
    let path = path_and_query(raw).0;
    let normalized = reads_path.then(|| normalize_path(path));
    let compared = normalized.as_deref().map(match_path);
    let target = matched_target(raw, compared.as_deref().filter(|&p| p != path));
    let src = KeySource {
        client_ip: facts.client_ip,
        target: &target,
        headers: crate::tls::Subjects::of(client, &ctx.shared).fields(buf, head),
    };
    crate::ratelimit::check(ctx, limit, src).err().map(|secs| {
        bump(counter);
        Plan::Answer(
            Canned::TooManyRequests,
            b"Retry-After",
            secs.to_string().into_bytes(),
        )
    })
}

/// `target` (path and query) with its path replaced by the `normalised` one, if any.
fn matched_target<'t>(target: &'t [u8], normalised: Option<&[u8]>) -> std::borrow::Cow<'t, [u8]> {
    match normalised {
        None => std::borrow::Cow::Borrowed(target),
        Some(path) => {
            let query = &target[path_and_query(target).0.len()..];
            std::borrow::Cow::Owned([path, query].concat())
        }
    }
}

/// The template variables of a routed request (for its redirect or request header rules).
fn vars<'b>(
    ctx: &'b ShardCtx,
    client: &Client,
    facts: &RequestFacts,
    rid: &'b RequestId,
    routed: &Routed<'b>,
) -> Vars<'b> {
    let (path, query) = path_and_query(routed.target.path);
    // `http://host?q` has an empty path, which is `/` (RFC 9110 §4.2.3); `OPTIONS *` is
    // about the server, whose root a redirect of it names.
    let path = if path.is_empty() || path == b"*" {
        &b"/"[..]
    } else {
        path
    };
    Vars {
        client_ip: facts.client_ip,
        request_id: rid.bytes(),
        host: routed.host,
        https: crate::tls::client_facts(client).0,
        path,
        query,
        route: &ctx.shared.config.routes[routed.index].name,
    }
}

/// What the head asks of the pipeline.
enum Plan<'a> {
    /// Forward it to a backend (with the route's cache, the fill that may store the answer).
    Forward(Prepared<'a>, Option<Box<cache::Fill<'a>>>),
    /// A fresh response from the route's cache is the answer.
    Cached(cache::Hit),
    /// The route's auth refused it: this is the answer.
    Deny(auth::Denial),
    /// Answer it here with this status and one more field: `redirect_https`'s or a route
    /// `redirect`'s `Location`, a rate limit's `Retry-After`.
    Answer(Canned, &'static [u8], Vec<u8>),
    /// The route's `respond` is the answer.
    Respond(&'a RouteResponse),
}

/// How a forwarded request ended for the client connection.
struct Exchanged {
    outcome: Outcome,
    /// The backend answered before the whole request body (see [`crate::forward`]).
    early: bool,
}

/// Closes after a response the client may still be sending a body behind ([`linger_close`],
/// which also ends a TLS client's side with close_notify): the connection is then done
/// with, and the keep-alive loop only drops it ([`Outcome::Cut`]: not a second lingering
/// read, which doubled the time a client that keeps sending was held).
async fn close_lingering(ctx: &ShardCtx, client: &mut Client) -> Outcome {
    Box::pin(linger_close(ctx, client)).await;
    Outcome::Cut
}
