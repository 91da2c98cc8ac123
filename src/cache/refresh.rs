//! The response cache's background fetches: the revalidation of a stale entry (RFC 5861
//! `stale-while-revalidate`), started by the request that was answered with it, and the
//! whole object behind a ranged miss ([`super::Lookup::RangeMiss`]), started by the request
//! whose range is forwarded. Each is a task of the shard, beside its connections, started
//! between *route* and *forward* ([`spawn`]). It sends the request through
//! [`background::exchange`] (*balance, pool and forward* with no client). A `304` refreshes
//! the entry ([`Fill::not_modified`]); another response is stored when it may be, its body
//! read into memory up to `max_object` within `upstream_response` more ([`Fill::admit`],
//! then the fill's store step); a failure or a 5xx keeps the stale entry. One such task per key at a
//! time (it holds the key's in-flight claim) and at most `background_revalidations` per
//! route on a shard (it holds a slot).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Fill, ShardCache, Whole};
use crate::forward::Prepared;
use crate::http::parse::{Method, ResponseHead};
use crate::shard::ShardCtx;
use crate::upstream::background::{self, Exchanged};
use crate::upstream::state::PickKey;

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
    // A conditional GET: idempotent and bodiless, so it may be resent.
    let mut got = background::exchange(ctx, upstream, key, head, true).await?;
    let wait = ctx.shared.config.upstream_response(upstream);
    let reusable = answer(ctx, fill, &mut got, wait).await?;
    got.finish(ctx, reusable);
    Ok(())
}

/// What the revalidation does with the response `resp` (head in `ubuf`): a `304` refreshes
/// the entry, a 5xx is a failure, another response replaces it (stored when it may be).
/// `Ok(true)`: the connection may be pooled again.
async fn answer(
    ctx: &ShardCtx,
    fill: &mut Fill<'_>,
    got: &mut Exchanged<'_>,
    wait: Duration,
) -> Result<bool, ()> {
    let resp = &got.head;
    let framing = resp.framing(Method::Get);
    if resp.status == 304 {
        let _ = fill.not_modified(&got.ubuf, resp);
        return Ok(resp.upstream_keep_alive() && got.ubuf.len() == resp.head_len);
    }
    if matches!(resp.status, 500 | 502 | 503 | 504) {
        return Err(());
    }
    fill.admit(&got.ubuf, resp, framing);
    let Some(tee) = fill.tee() else {
        // Not stored (and the stale entry is gone): the body is not read.
        return Ok(false);
    };
    let end = got
        .read_body(ctx, framing, wait, |piece| {
            tee.push(piece);
            !tee.overflow
        })
        .await?;
    fill.keep(end.complete);
    Ok(end.reusable)
}
