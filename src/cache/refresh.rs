//! The response cache's background fetches: the revalidation of a stale entry (RFC 5861
//! `stale-while-revalidate`), started by the request that was answered with it, and the
//! whole object behind a ranged miss ([`super::Lookup::RangeMiss`]), started by the request
//! whose range is forwarded. Each is a task of the shard, beside its connections, started
//! between *route* and *forward* ([`spawn`]). It runs the steps of
//! *balance, pool and forward* on its own, with no client: one backend picked by the
//! upstream's balancer (counted in flight, within its breaker's request permits), a pooled
//! connection or a new one (a pooled one that fails before any response byte is tried
//! once more on a new connection; a `proxy_protocol` header names the proxy's own
//! connection, there being no client), the conditional request written, the response head
//! read within `upstream_response` (interim responses dropped). A `304` refreshes the entry
//! ([`Fill::not_modified`]); another response is stored when it may be, its body read into
//! memory up to `max_object` within `upstream_response` more ([`Fill::admit`], then the
//! fill's store step); a failure or a 5xx keeps the stale entry. One such task per key at a time (it holds the key's in-flight claim)
//! and at most `background_revalidations` per route on a shard (it holds a slot).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Fill, ShardCache, Whole};
use crate::forward::Prepared;
use crate::health::breaker::Resource;
use crate::health::Outcome as TryOutcome;
use crate::http::parse::{parse_response, HeadLimits, Method, Parsed, ResponseHead};
use crate::io::{read_more, write_from, Deadline, IoFail};
use crate::relay::{Incoming, MAX_INTERIM};
use crate::shard::ShardCtx;
use crate::stats::bump;
use crate::transport::Transport;
use crate::upstream::connect::{Connector, Refused};
use crate::upstream::state::{Pick, PickKey};

/// Starts the background revalidation `fill` claimed, with the request `prepared` for the
/// client that got the stale entry (made conditional here). Nothing starts when the shard
/// has moved to another configuration since, or is draining (the fill drops: the claim is released).
pub fn spawn(ctx: &ShardCtx, fill: Box<Fill<'_>>, prepared: Prepared<'_>) {
    let mut head = prepared.out.to_vec();
    fill.condition(&mut head);
    start(ctx, *fill, prepared.upstream, prepared.key, head);
}

/// Starts the whole-object fetch a ranged miss's `fill` holds when the response head `head`
/// (in `buf`) shows the object may be stored ([`Fill::take_whole`]). Called from
/// [`super::settle`], outside the request's future (inline there, its temporaries took 336
/// bytes of every request's future).
pub fn start_whole(ctx: &ShardCtx, fill: &mut Fill<'_>, buf: &[u8], head: &ResponseHead) {
    if let Some(whole) = fill.take_whole(buf, head) {
        let Whole {
            fill,
            head,
            upstream,
            key,
        } = *whole;
        start(ctx, *fill, upstream, key, head);
    }
}

fn start(ctx: &ShardCtx, fill: Fill<'_>, upstream: usize, key: PickKey, head: Vec<u8>) {
    let Some(current) = ctx
        .current()
        .filter(|c| Arc::ptr_eq(&c.shared, &ctx.shared) && !c.draining())
    else {
        return;
    };
    let state = fill.detach();
    monoio::spawn(async move {
        let fill = state.attach(&current.cache);
        run(&current, fill, upstream, key, head).await;
    });
}

/// Why the exchange gave no response head.
struct Failed {
    outcome: TryOutcome,
    /// Some response byte came (a pooled connection that did not fail at once).
    any_byte: bool,
}

async fn run(ctx: &ShardCtx, mut fill: Fill<'_>, upstream: usize, key: PickKey, head: Vec<u8>) {
    let revalidation = fill.stale.is_some();
    // Its age counts from now: a whole object's fetch waited for its range's head.
    fill.request_sent = Instant::now();
    if fetch(ctx, &mut fill, upstream, key, head).await.is_err() && revalidation {
        // The stale entry stays, for its windows.
        ShardCache::bump(&fill.cache.revalidations_failed);
    }
}

/// One revalidation exchange; `Err` when it gave no usable answer.
async fn fetch(
    ctx: &ShardCtx,
    fill: &mut Fill<'_>,
    upstream: usize,
    key: PickKey,
    head: Vec<u8>,
) -> Result<(), ()> {
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
    let _permit = ctx.backends.breakers[backend]
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
        match exchange(ctx, &mut conn, &head, &mut ubuf, wait).await {
            // A keep-alive race: once more on a new connection.
            Err(f) if reused && !f.any_byte && !fresh => fresh = true,
            Err(f) => {
                let o = f.outcome;
                ctx.backends
                    .observe(shared, &ctx.stats, &ctx.errors, backend, o);
                return Err(());
            }
            Ok(resp) => {
                let o = TryOutcome::Response {
                    status: resp.status,
                };
                ctx.backends
                    .observe(shared, &ctx.stats, &ctx.errors, backend, o);
                ctx.stats.upstream_status(backend, resp.status);
                let reusable = answer(ctx, fill, &mut conn, &mut ubuf, &resp, wait).await?;
                if reusable {
                    let small = ctx.backends.receives(backend);
                    ctx.pool
                        .borrow_mut()
                        .checkin(backend, conn, Instant::now(), small);
                }
                return Ok(());
            }
        }
    }
}

/// Writes the request head and reads the response head into `ubuf`.
async fn exchange(
    ctx: &ShardCtx,
    conn: &mut Transport,
    head: &[u8],
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
    // A copy per try: a write that times out loses its buffer.
    let mut out = head.to_vec();
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

/// What the revalidation does with the response `resp` (head in `ubuf`): a `304` refreshes
/// the entry, a 5xx is a failure, another response replaces it (stored when it may be).
/// `Ok(true)`: the connection may be pooled again.
async fn answer(
    ctx: &ShardCtx,
    fill: &mut Fill<'_>,
    conn: &mut Transport,
    ubuf: &mut Vec<u8>,
    resp: &ResponseHead,
    wait: Duration,
) -> Result<bool, ()> {
    let cfg = &ctx.shared.config;
    let framing = resp.framing(Method::Get);
    if resp.status == 304 {
        let _ = fill.not_modified(ubuf, resp);
        return Ok(resp.upstream_keep_alive() && ubuf.len() == resp.head_len);
    }
    if matches!(resp.status, 500 | 502 | 503 | 504) {
        return Err(());
    }
    fill.admit(ubuf, resp, framing);
    let Some(tee) = fill.tee() else {
        // Not stored (and the stale entry is gone): the body is not read.
        return Ok(false);
    };
    let mut body = Incoming::new(framing, cfg.limits.max_header_bytes);
    let mut pos = resp.head_len;
    let mut dl = Deadline::new();
    // The whole body within `upstream_response` too: a backend that trickles it does not
    // hold a background slot for longer.
    let deadline = Instant::now() + wait;
    let complete = loop {
        while !body.done && pos < ubuf.len() {
            let ((from, to), used) = body.step(&ubuf[pos..]).map_err(drop)?;
            if used == 0 {
                // The decoder keeps what it cannot use yet: never happens; never spins.
                return Err(());
            }
            tee.push(&ubuf[pos + from..pos + to]);
            pos += used;
            if tee.overflow {
                break;
            }
        }
        if body.done || tee.overflow {
            break body.done;
        }
        ubuf.clear();
        pos = 0;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || read_more(conn, ubuf, &mut dl, left).await.is_err() {
            break false;
        }
    };
    let reusable = complete && resp.upstream_keep_alive() && pos == ubuf.len();
    fill.keep(complete);
    Ok(reusable)
}
