//! Request mirroring (nginx's `mirror`), beside stage 6 *forward*: a route's `mirror` sends
//! a copy of the requests it forwards (all, or a `sample` of them) to another upstream and
//! drops the answers. The forward step calls [`copy`] once the request's body is in hand
//! (after `buffer_request_body` read it); the copy is a task of the shard that runs
//! *balance, pool and forward* on its own ([`background::exchange`]), so the client's
//! request never waits on it and nothing of the mirror reaches the client. The copy is the
//! request as it goes to the route's upstream (its head rewritten, hop-by-hop fields gone,
//! `X-Forwarded-*` written), sent once: after a pooled connection's reset, only an
//! idempotent bodiless copy goes again, as on the main path.
//!
//! Not copied, each counted: a request past `max_in_flight` copies under way on the shard
//! for the route (`busy`), one whose body is larger than `max_body` (`too_large`), and one
//! whose body is not whole in hand (`unbuffered`: a body still streaming, chunked or longer
//! than what was read with the head; an upstream's `buffer_request_body` reads it first).
//! Upgrades (WebSocket) are never copied, and nothing is while the shard drains. So a
//! route's copies hold at most `max_in_flight` times head and `max_body` (twice while one is
//! written) per shard. The copy's response is read to its end (up to [`DRAIN_MAX`], within
//! `upstream_response`) so that its connection is pooled again.

use std::rc::Rc;
use std::sync::Arc;

use crate::forward::{Prepared, RequestFacts};
use crate::http::parse::{BodyFraming, Method};
use crate::shard::ShardCtx;
use crate::stats::{bump, RouteStats};
use crate::upstream::background::{self, Exchanged};
use crate::upstream::state::PickKey;

/// How many [`Copied`] results there are.
pub const RESULTS: usize = 5;

/// The largest response body a copy reads to pool its connection again; past it the
/// connection closes.
pub const DRAIN_MAX: u64 = 1 << 20;

/// What became of a request the route's `mirror` would copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// The mirror answered (whatever its status; its backend's counters say which).
    Answered,
    /// Sent, or not, but no response came: no backend, a breaker, a failed connect, a
    /// timeout, a reset.
    Failed,
    /// Not copied: `max_in_flight` copies were under way.
    Busy,
    /// Not copied: the body was not whole in hand.
    Unbuffered,
    /// Not copied: the body is larger than `max_body`.
    TooLarge,
}

impl Copied {
    pub const ALL: [Copied; RESULTS] = [
        Copied::Answered,
        Copied::Failed,
        Copied::Busy,
        Copied::Unbuffered,
        Copied::TooLarge,
    ];

    /// The `result` label of `edgeshard_mirror_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Copied::Answered => "answered",
            Copied::Failed => "failed",
            Copied::Busy => "busy",
            Copied::Unbuffered => "unbuffered",
            Copied::TooLarge => "too_large",
        }
    }
}

/// Starts the copy of the request `prepared` (the head for the route's upstream) to
/// `route`'s mirror, when it has one and this request is drawn. `body` is the client
/// buffer: it starts with the request body, whole when [`copy`] can send it.
pub fn copy(
    ctx: &ShardCtx,
    route: usize,
    prepared: &Prepared<'_>,
    facts: &RequestFacts,
    body: &[u8],
) {
    let config = &ctx.shared.config;
    let Some(mirror) = &config.routes[route].mirror else {
        return;
    };
    if facts.upgrade || !ctx.draws.below(mirror.sample_below) {
        return;
    }
    let stats = &ctx.stats.routes[route];
    let body = match facts.framing {
        BodyFraming::None => &[][..],
        BodyFraming::Length(n) if n > mirror.max_body => {
            return count(stats, Copied::TooLarge);
        }
        BodyFraming::Length(n) if body.len() as u64 >= n => &body[..n as usize],
        _ => return count(stats, Copied::Unbuffered),
    };
    if stats.mirror_in_flight.get() >= mirror.max_in_flight as u64 {
        return count(stats, Copied::Busy);
    }
    // The configuration in force now: a request that began before a reload is copied to the
    // mirror upstream of that name in the new one (its indices may differ).
    let Some(current) = ctx.current().filter(|c| !c.draining()) else {
        return;
    };
    let name = &config.upstreams[mirror.upstream].name;
    let upstreams = &current.shared.config.upstreams;
    let Some(upstream) = (match Arc::ptr_eq(&current.shared, &ctx.shared) {
        true => Some(mirror.upstream),
        false => upstreams.iter().position(|u| u.name == *name),
    }) else {
        return count(stats, Copied::Failed);
    };
    let mut request = Vec::with_capacity(prepared.out.len() + body.len());
    request.extend_from_slice(&prepared.out);
    request.extend_from_slice(body);
    // The route upstream's hash value: a hashing mirror upstream is keyed by it.
    let key = PickKey {
        hash: prepared.key.hash,
        sticky: None,
    };
    let under_way = UnderWay::start(stats.clone());
    let method = facts.method;
    // After a pooled connection's reset, resent only as the main path would (no body, an
    // idempotent method): a copy that may have reached the mirror is not replayed.
    let resend = method.is_idempotent() && body.is_empty();
    monoio::spawn(async move {
        let sent = background::exchange(&current, upstream, key, request, resend).await;
        let copied = match sent {
            Ok(mut got) => {
                let reusable = drain(&current, &mut got, method, upstream).await;
                got.finish(&current, reusable);
                Copied::Answered
            }
            Err(()) => Copied::Failed,
        };
        count(&under_way.0, copied);
    });
}

fn count(stats: &RouteStats, copied: Copied) {
    bump(&stats.mirror[copied as usize]);
}

/// One copy under way, counted in the route's gauge until it ends, however it ends (the
/// shard may drop the task when it stops).
struct UnderWay(Rc<RouteStats>);

impl UnderWay {
    fn start(stats: Rc<RouteStats>) -> UnderWay {
        stats.mirror_in_flight.set(stats.mirror_in_flight.get() + 1);
        UnderWay(stats)
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        let n = &self.0.mirror_in_flight;
        n.set(n.get().saturating_sub(1));
    }
}

/// Reads the copy's response body to its end, dropping it; whether the connection may be
/// pooled again (the body ended within [`DRAIN_MAX`] and `upstream_response`).
async fn drain(ctx: &ShardCtx, got: &mut Exchanged<'_>, method: Method, upstream: usize) -> bool {
    let framing = got.head.framing(method);
    if framing == BodyFraming::UntilClose || !got.head.upstream_keep_alive() {
        return false;
    }
    let wait = ctx.shared.config.upstream_response(upstream);
    let mut seen = 0u64;
    let read = got.read_body(ctx, framing, wait, |piece| {
        seen += piece.len() as u64;
        seen <= DRAIN_MAX
    });
    read.await.is_ok_and(|end| end.reusable)
}
