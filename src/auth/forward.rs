//! Stage 3b, *authenticate*, for a route's `auth.forward`: before the request is forwarded,
//! a bodiless `GET uri` goes to a backend of the auth service's upstream with the client's
//! header fields (less hop-by-hop and framing ones) and `X-Forwarded-Method`, `-Uri`,
//! `-Host`, `-Proto` and `-For` set by the proxy, as Traefik's forwardAuth and nginx's
//! `auth_request` send them. A 2xx lets the request through, carrying the answer's
//! `copy_headers` fields (client-sent fields of those names are removed either way: they
//! cannot be spoofed); any other status is the client's answer, with the service's fields
//! and its body (a `Content-Length` body up to `max_body`; others are left out). When the
//! service cannot be asked (no usable backend, connect failure, timeout, a malformed
//! answer) the client gets 500, like nginx `auth_request`.
//!
//! It uses the shard's own balancing, pool and connector for that upstream (its backends
//! are balanced, health-checked and pooled like any other); only the exchange itself is
//! this small, since the check has no body, no retries beyond one stale pooled connection,
//! and its answer is never streamed.

use std::time::{Duration, Instant};

use super::{count, Denial, Granted, Mode, Request, SetField, Verdict};
use crate::cache::store::StoredHead;
use crate::config::ForwardAuth;
use crate::health::breaker::{Open, Resource};
use crate::health::Outcome as TryOutcome;
use crate::http::canned::Canned;
use crate::http::fields::{forwarding_claim, never_forwarded, same_field};
use crate::http::parse::{
    parse_response, BodyFraming, HeadLimits, HeaderKind, Method, Parsed, ResponseHead,
};
use crate::io::{read_more, write_from, Deadline, IoFail};
use crate::shard::ShardCtx;
use crate::stats::bump;
use crate::transport::Transport;
use crate::upstream::connect::{Connector, Refused};
use crate::upstream::pool::end_exchange;
use crate::upstream::state::{Pick, PickKey};

/// More interim (1xx) answers than this before the final one is a malformed answer.
const MAX_INTERIM: usize = 4;

/// Why the auth service could not be asked (each answered 500).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no usable backend in the auth service's upstream")]
    NoBackend,
    #[error("cannot connect to the auth service: {0}")]
    Connect(std::io::Error),
    #[error("the auth service did not answer within the timeout")]
    Timeout,
    #[error("the auth service closed the connection or failed: {0:?}")]
    Io(IoFail),
    #[error("the auth service's answer is malformed")]
    Bad,
    #[error("the auth service's breaker is open: {0}")]
    Breaker(Open),
}

/// What the auth service said.
enum Said {
    Allow(Vec<SetField>),
    Refuse {
        status: u16,
        head: Box<StoredHead>,
        body: Vec<u8>,
    },
}

/// Asks the auth service about `req`.
pub async fn check(ctx: &ShardCtx, fa: &ForwardAuth, req: &Request<'_>) -> Result<Granted, Denial> {
    match ask(ctx, fa, req).await {
        Ok(Said::Allow(copied)) => {
            count(&ctx.stats, Mode::Forward, Verdict::Ok);
            Ok(Granted {
                strip_authorization: false,
                copied,
            })
        }
        Ok(Said::Refuse { status, head, body }) => {
            count(&ctx.stats, Mode::Forward, Verdict::Denied);
            Err(Denial::Relayed { status, head, body })
        }
        Err(e) => {
            count(&ctx.stats, Mode::Forward, Verdict::Error);
            if ctx.errors.allow(&ctx.stats) {
                let upstream = &ctx.shared.config.upstreams[fa.upstream].name;
                tracing::warn!(%upstream, error = %e, "forward auth failed");
            }
            Err(Denial::Canned(Canned::InternalServerError, None))
        }
    }
}

async fn ask(ctx: &ShardCtx, fa: &ForwardAuth, req: &Request<'_>) -> Result<Said, AuthError> {
    let shared = &*ctx.shared;
    let deadline = Instant::now() + fa.timeout;
    let (pick, _) = ctx
        .backends
        .pick(shared, fa.upstream, &[], Instant::now(), PickKey::default());
    let Pick::Backend(backend) = pick else {
        return Err(AuthError::NoBackend);
    };
    let mut in_flight = ctx
        .backends
        .forwarding(shared, &ctx.stats.backends[backend], backend);
    // The auth upstream's breaker holds its checks as it holds requests routed to it.
    let _permit = ctx.backends.breakers[backend]
        .try_acquire(Resource::Requests)
        .map_err(|open| breaker_open(ctx, backend, open))?;
    let mut out = ctx.buffer();
    check_request(fa, req, shared.backends[backend].address, &mut out);
    let mut ubuf = ctx.buffer();
    // A pooled connection the backend closed meanwhile fails without an answer: the check
    // is sent once more, on a new connection.
    let mut fresh = false;
    loop {
        let pooled = if fresh {
            None
        } else {
            ctx.pool.borrow_mut().checkout(backend, Instant::now())
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => connect(ctx, backend, deadline).await?,
        };
        in_flight.sent = true;
        ubuf.clear();
        let mut any_byte = false;
        let max_body = fa.max_body;
        let got = exchange(
            ctx,
            &mut conn,
            &mut out,
            &mut ubuf,
            deadline,
            &mut any_byte,
            max_body,
        )
        .await;
        let outcome = match &got {
            Ok((h, _)) => TryOutcome::Response { status: h.status },
            Err(AuthError::Timeout) => TryOutcome::Timeout,
            Err(_) => TryOutcome::Reset,
        };
        if reused && !any_byte && matches!(got, Err(AuthError::Io(_))) {
            fresh = true;
            continue;
        }
        ctx.backends
            .observe(shared, &ctx.stats, &ctx.errors, backend, outcome);
        let (head, reusable) = got?;
        let said = said(fa, &ubuf, &head);
        end_exchange(&ctx.pool, &ctx.backends, backend, conn, reusable);
        // A head that parsed once and not a second time (kept for safety).
        return said.ok_or(AuthError::Bad);
    }
}

async fn connect(
    ctx: &ShardCtx,
    backend: usize,
    deadline: Instant,
) -> Result<Transport, AuthError> {
    let connector = Connector {
        shared: &ctx.shared,
        stats: &ctx.stats,
        errors: &ctx.errors,
        backends: &ctx.backends,
        ends: None,
        room: None,
    };
    let idle = ctx.pool.borrow().idle_for(backend);
    match monoio::time::timeout(left(deadline), connector.connect_within(backend, idle)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(Refused::Failed(e))) => Err(AuthError::Connect(e)),
        Ok(Err(Refused::Breaker(open))) => Err(breaker_open(ctx, backend, open)),
        Err(_) => Err(AuthError::Timeout),
    }
}

/// A breaker limit of the auth upstream was reached: counted as the request path counts it.
fn breaker_open(ctx: &ShardCtx, backend: usize, open: Open) -> AuthError {
    bump(&ctx.stats.backends[backend].breaker_rejected);
    AuthError::Breaker(open)
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Sends the check and reads the final answer's head, and its body when it has a
/// `Content-Length` up to `max_body` (left in `ubuf` after the head). The flag: the
/// connection can be pooled again.
async fn exchange(
    ctx: &ShardCtx,
    conn: &mut Transport,
    out: &mut Vec<u8>,
    ubuf: &mut Vec<u8>,
    deadline: Instant,
    any_byte: &mut bool,
    max_body: usize,
) -> Result<(ResponseHead, bool), AuthError> {
    let io = |e: IoFail| match e {
        IoFail::Timeout => AuthError::Timeout,
        e => AuthError::Io(e),
    };
    let mut dl = Deadline::new();
    let n = out.len();
    write_from(conn, out, 0, n, &mut dl, left(deadline))
        .await
        .map_err(io)?;
    let cfg = &ctx.shared.config;
    let limits = HeadLimits {
        max_header_bytes: cfg.limits.max_header_bytes.max(16384),
        max_headers: cfg.limits.max_headers.max(100),
        max_uri_bytes: cfg.limits.max_uri_bytes,
    };
    let mut interims = 0;
    let head = loop {
        if !ubuf.is_empty() {
            let mut head = ResponseHead::default();
            match parse_response(ubuf, &limits, &mut head) {
                Ok(Parsed::Complete(())) if head.status == 101 => return Err(AuthError::Bad),
                Ok(Parsed::Complete(())) if head.status < 200 => {
                    interims += 1;
                    if interims > MAX_INTERIM {
                        return Err(AuthError::Bad);
                    }
                    ubuf.drain(..head.head_len);
                    continue;
                }
                Ok(Parsed::Complete(())) => break head,
                Ok(Parsed::Partial) => {}
                Err(_) => return Err(AuthError::Bad),
            }
        }
        let t = left(deadline);
        if t.is_zero() {
            return Err(AuthError::Timeout);
        }
        read_more(conn, ubuf, &mut dl, t).await.map_err(io)?;
        *any_byte = true;
    };
    let reusable = read_body(conn, ubuf, &head, max_body, deadline).await?;
    Ok((head, reusable))
}

/// Reads the body of `head` into `ubuf` when it has a `Content-Length` up to `max`;
/// whether the connection can be pooled afterwards.
async fn read_body(
    conn: &mut Transport,
    ubuf: &mut Vec<u8>,
    head: &ResponseHead,
    max: usize,
    deadline: Instant,
) -> Result<bool, AuthError> {
    let len = match head.framing(Method::Get) {
        BodyFraming::None => 0,
        BodyFraming::Length(n) if n <= max as u64 => n as usize,
        _ => return Ok(false),
    };
    let want = head.head_len + len;
    let mut dl = Deadline::new();
    while ubuf.len() < want {
        let t = left(deadline);
        if t.is_zero() {
            return Err(AuthError::Timeout);
        }
        read_more(conn, ubuf, &mut dl, t)
            .await
            .map_err(|e| match e {
                IoFail::Timeout => AuthError::Timeout,
                e => AuthError::Io(e),
            })?;
    }
    // Anything after the answer is not ours: such a connection is not reused.
    Ok(ubuf.len() == want && head.upstream_keep_alive())
}

/// What the answer in `ubuf` (head `head`, body after it if read) says.
fn said(fa: &ForwardAuth, ubuf: &[u8], head: &ResponseHead) -> Option<Said> {
    if (200..300).contains(&head.status) {
        let copied = fa
            .copy_headers
            .iter()
            .map(|name| {
                let mut value = Vec::new();
                for h in head
                    .headers
                    .iter()
                    .filter(|h| h.name.get(ubuf).eq_ignore_ascii_case(name.as_bytes()))
                {
                    if !value.is_empty() {
                        value.extend_from_slice(b", ");
                    }
                    value.extend_from_slice(h.value.get(ubuf));
                }
                (Box::from(name.as_bytes()), value.into_boxed_slice())
            })
            .collect();
        return Some(Said::Allow(copied));
    }
    // Written later through the relay's rules (`auth::answer`), as a backend's head is.
    let kept = StoredHead::new(ubuf[..head.head_len].into())?;
    let body = match head.framing(Method::Get) {
        BodyFraming::Length(n) if ubuf.len() as u64 >= head.head_len as u64 + n => {
            ubuf[head.head_len..head.head_len + n as usize].to_vec()
        }
        _ => Vec::new(),
    };
    Some(Said::Refuse {
        status: head.status,
        head: Box::new(kept),
        body,
    })
}

/// The check request: `GET uri` with the client's end-to-end fields and the proxy's
/// `X-Forwarded-*`. `Host` names the auth service's backend; the client's is in
/// `X-Forwarded-Host`.
/// Fields by which a proxy tells an auth service what it is asked about: auth services
/// decide on them (Authelia reads `X-Original-URL` and `X-Original-Method`, Authentik's
/// outpost `X-Original-URI`, others `X-Real-IP` or `Forwarded`), so a client's own copies
/// never reach the service: `GET /secret` with `X-Original-URL: https://public.example/`
/// would be checked as the public page. Names compare as the backend path compares them
/// ([`same_field`]: a CGI or WSGI service reads `X_Original_URL` as `X-Original-URL`), with
/// every other forwarding claim and `Proxy` (httpoxy) dropped as there.
fn speaks_for_the_proxy(name: &[u8]) -> bool {
    const ORIGINAL: &[u8] = b"x-original-";
    forwarding_claim(name)
        || never_forwarded(name)
        || (name.len() > ORIGINAL.len() && same_field(&name[..ORIGINAL.len()], ORIGINAL))
}

fn check_request(
    fa: &ForwardAuth,
    req: &Request<'_>,
    backend: std::net::SocketAddr,
    out: &mut Vec<u8>,
) {
    let (buf, head) = (req.buf, req.head);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(fa.uri.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(backend.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        let name = h.name.get(buf);
        if h.kind != HeaderKind::Other
            || (!head.conn_tokens.is_empty() && head.named_in_connection(buf, name))
            || speaks_for_the_proxy(name)
            || req.subjects.hides(name)
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(buf));
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, subject)) = req.subjects.verified() {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(subject);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-Method: ");
    out.extend_from_slice(head.method.get(buf));
    out.extend_from_slice(b"\r\nX-Forwarded-Uri: ");
    out.extend_from_slice(req.target);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(if req.https { b"https" } else { b"http" });
    if !req.host.is_empty() {
        out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
        out.extend_from_slice(req.host);
    }
    out.extend_from_slice(b"\r\nX-Forwarded-For: ");
    out.extend_from_slice(req.client_ip.to_string().as_bytes());
    // The same facts under the names nginx `auth_request` setups pass (Authelia, Authentik).
    out.extend_from_slice(b"\r\nX-Original-Method: ");
    out.extend_from_slice(head.method.get(buf));
    // Without a host (an HTTP/1.0 request) there is no URL: `http:///evil.example/x` would
    // name host `evil.example` to a WHATWG parser.
    if !req.host.is_empty() {
        out.extend_from_slice(b"\r\nX-Original-URL: ");
        out.extend_from_slice(if req.https { b"https://" } else { b"http://" });
        out.extend_from_slice(req.host);
        out.extend_from_slice(req.target);
    }
    out.extend_from_slice(b"\r\n\r\n");
}
