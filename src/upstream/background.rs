//! Stages 4 to 6, *balance, pool and forward*, for a request the shard sends on its own,
//! with no client: a cache refresh ([`crate::cache::refresh`]) or a route's mirrored copy
//! ([`crate::mirror`]). One backend picked by the upstream's balancer (counted in flight,
//! within its breaker's request permits), a pooled connection or a new one (a pooled one
//! that fails before any response byte is tried once more on a new connection; a
//! `proxy_protocol` header names the proxy's own connection, there being no client), the
//! request written, the response head read within `upstream_response` (interim responses
//! dropped). A pooled connection reset before any response byte is a keep-alive race: the
//! request goes once more on a new connection, only when the caller says it may be resent
//! (idempotent and bodiless, the main path's rule). No retry on another backend.
//! What the body of the response becomes is the caller's; [`Exchanged::finish`] pools the
//! connection again when the caller read the response whole.

use std::time::{Duration, Instant};

use crate::health::breaker::{Permit, Resource};
use crate::health::Outcome as TryOutcome;
use crate::http::parse::{parse_response, BodyFraming, HeadLimits, Parsed, ResponseHead};
use crate::io::{read_more, write_from, Deadline, IoFail};
use crate::relay::{Incoming, MAX_INTERIM};
use crate::shard::ShardCtx;
use crate::stats::bump;
use crate::transport::Transport;
use crate::upstream::connect::{Connector, Refused};
use crate::upstream::pool::end_exchange;
use crate::upstream::state::{Forwarding, Pick, PickKey};

/// A response head from one backend, with the connection it came on and what counts the
/// request against that backend (released when this drops).
pub struct Exchanged<'a> {
    pub backend: usize,
    pub conn: Transport,
    /// The head, and whatever of the body came with it.
    pub ubuf: Vec<u8>,
    pub head: ResponseHead,
    _in_flight: Forwarding<'a>,
    _permit: Permit,
}

/// How a response body read by [`Exchanged::read_body`] ended.
pub struct BodyEnd {
    /// The body ended (not cut short by the caller, the deadline or the backend).
    pub complete: bool,
    /// Complete, with nothing after it, from a backend that keeps the connection open.
    pub reusable: bool,
}

impl Exchanged<'_> {
    /// Reads the response body to its end, within `wait` for the whole of it (a backend that
    /// trickles it holds the caller no longer), handing each piece of payload to `take`;
    /// `take` returning `false` stops the read there. `Err`: its framing is broken.
    pub async fn read_body(
        &mut self,
        ctx: &ShardCtx,
        framing: BodyFraming,
        wait: Duration,
        mut take: impl FnMut(&[u8]) -> bool,
    ) -> Result<BodyEnd, ()> {
        let mut body = Incoming::new(framing, ctx.shared.config.limits.max_header_bytes);
        let mut pos = self.head.head_len;
        let mut dl = Deadline::new();
        let deadline = Instant::now() + wait;
        let complete = loop {
            let mut more = true;
            while more && !body.done && pos < self.ubuf.len() {
                let ((from, to), used) = body.step(&self.ubuf[pos..]).map_err(drop)?;
                if used == 0 {
                    // The decoder keeps what it cannot use yet: never happens; never spins.
                    return Err(());
                }
                more = take(&self.ubuf[pos + from..pos + to]);
                pos += used;
            }
            if body.done || !more {
                break body.done;
            }
            self.ubuf.clear();
            pos = 0;
            let left = deadline.saturating_duration_since(Instant::now());
            let conn = &mut self.conn;
            if left.is_zero()
                || read_more(conn, &mut self.ubuf, &mut dl, left)
                    .await
                    .is_err()
            {
                break false;
            }
        };
        let reusable = complete && self.head.upstream_keep_alive() && pos == self.ubuf.len();
        Ok(BodyEnd { complete, reusable })
    }

    /// Ends the exchange: the connection goes back to the pool when the caller read the
    /// response whole from a backend that keeps it open (`reusable`).
    pub fn finish(self, ctx: &ShardCtx, reusable: bool) {
        end_exchange(&ctx.pool, &ctx.backends, self.backend, self.conn, reusable);
    }
}

/// Why a try gave no response head.
struct Failed {
    outcome: TryOutcome,
    /// Some response byte came (a pooled connection that did not fail at once).
    any_byte: bool,
}

/// Sends `request` (head, and body if any) to a backend of `upstream` and reads the response
/// head; `Err` when none came (no backend, its breaker, a failed connect, a timeout, a reset
/// or a malformed head: each counted where the proxy's own requests count it). `resend`:
/// the request may go once more after a pooled connection's reset (see above).
pub async fn exchange<'a>(
    ctx: &'a ShardCtx,
    upstream: usize,
    key: PickKey,
    mut request: Vec<u8>,
    resend: bool,
) -> Result<Exchanged<'a>, ()> {
    let shared = &*ctx.shared;
    let (pick, _) = ctx
        .backends
        .pick(shared, upstream, &[], Instant::now(), key);
    let Pick::Backend(backend) = pick else {
        return Err(());
    };
    let mut in_flight = ctx
        .backends
        .forwarding(shared, &ctx.stats.backends[backend], backend);
    let permit = ctx.backends.breakers[backend]
        .try_acquire(Resource::Requests)
        .map_err(|_| bump(&ctx.stats.backends[backend].breaker_rejected))?;
    let mut fresh = false;
    loop {
        let pooled = match fresh {
            true => None,
            false => ctx.pool.borrow_mut().checkout(backend, Instant::now()),
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let connector = Connector {
                    shared,
                    stats: &ctx.stats,
                    errors: &ctx.errors,
                    backends: &ctx.backends,
                    ends: None,
                    room: None,
                };
                let idle = ctx.pool.borrow().idle_for(backend);
                match connector.connect_within(backend, idle).await {
                    Ok(c) => c,
                    Err(Refused::Breaker(_)) => {
                        bump(&ctx.stats.backends[backend].breaker_rejected);
                        return Err(());
                    }
                    Err(Refused::Failed(_)) => return Err(()),
                }
            }
        };
        in_flight.sent = true;
        let mut ubuf = Vec::new();
        let wait = shared.config.upstream_response(upstream);
        // A write that times out loses its buffer: a copy when a resend may follow.
        let out = match resend && !fresh {
            true => request.clone(),
            false => std::mem::take(&mut request),
        };
        match one_try(ctx, &mut conn, out, &mut ubuf, wait).await {
            // A keep-alive race: once more on a new connection (never a timeout: the
            // backend may be working on it).
            Err(f)
                if resend && reused && !f.any_byte && !fresh && f.outcome == TryOutcome::Reset =>
            {
                fresh = true
            }
            Err(f) => {
                let o = f.outcome;
                ctx.backends
                    .observe(shared, &ctx.stats, &ctx.errors, backend, o);
                return Err(());
            }
            Ok(head) => {
                let o = TryOutcome::Response {
                    status: head.status,
                };
                ctx.backends
                    .observe(shared, &ctx.stats, &ctx.errors, backend, o);
                ctx.stats.upstream_status(backend, head.status);
                return Ok(Exchanged {
                    backend,
                    conn,
                    ubuf,
                    head,
                    _in_flight: in_flight,
                    _permit: permit,
                });
            }
        }
    }
}

/// Writes the request and reads the response head into `ubuf`.
async fn one_try(
    ctx: &ShardCtx,
    conn: &mut Transport,
    mut out: Vec<u8>,
    ubuf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<ResponseHead, Failed> {
    let cfg = &ctx.shared.config;
    let mut dl = Deadline::new();
    let fail = |e: IoFail, any_byte| Failed {
        outcome: match e {
            IoFail::Timeout => TryOutcome::Timeout,
            _ => TryOutcome::Reset,
        },
        any_byte,
    };
    let n = out.len();
    write_from(conn, &mut out, 0, n, &mut dl, timeout)
        .await
        .map_err(|e| fail(e, false))?;
    let limits = HeadLimits {
        max_header_bytes: cfg.limits.max_header_bytes.max(16384),
        max_headers: cfg.limits.max_headers.max(100),
        max_uri_bytes: cfg.limits.max_uri_bytes,
    };
    let deadline = Instant::now() + timeout;
    let (mut any_byte, mut interims) = (false, 0);
    let bad = Failed {
        outcome: TryOutcome::Reset,
        any_byte: true,
    };
    loop {
        if !ubuf.is_empty() {
            let mut resp = ResponseHead::default();
            match parse_response(ubuf, &limits, &mut resp) {
                Ok(Parsed::Complete(())) if resp.status >= 200 => return Ok(resp),
                // Interim responses go nowhere (there is no client); a 101 was not asked for.
                Ok(Parsed::Complete(())) if resp.status != 101 && interims < MAX_INTERIM => {
                    interims += 1;
                    ubuf.drain(..resp.head_len);
                    continue;
                }
                Ok(Parsed::Partial) => {}
                _ => return Err(bad),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(IoFail::Timeout, any_byte));
        }
        read_more(conn, ubuf, &mut dl, left)
            .await
            .map_err(|e| fail(e, any_byte))?;
        any_byte = true;
    }
}
