//! Stage 1 to 2 of the pipeline for one client connection: the keep-alive loop. It waits for
//! a request (bounded by `client_idle`, or `client_header` for the first), reads the head
//! within `client_header`, parses it in place and hands it to [`crate::proxy`]; pipelined
//! requests are answered in order because each is served before the next is parsed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::http::canned::Canned;
use crate::http::parse::{parse_request, HeadLimits, Parsed, RequestHead};
use crate::proxy::{
    parse_error_status, read_more, respond_canned, serve_request, Client, IoFail, Outcome,
};
use crate::shard::ShardCtx;

/// Client read buffers start small (idle keep-alive connections are the common case) and
/// grow up to `max_header_bytes` for heads, or the relay size for bodies.
const INITIAL_BUF: usize = 4096;
/// After an exchange a buffer larger than this is given back to the allocator.
const KEEP_BUF: usize = 32 * 1024;

pub async fn serve(ctx: Rc<ShardCtx>, stream: TcpStream, peer: SocketAddr, accepted: Instant) {
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        stream,
        buf: Vec::with_capacity(INITIAL_BUF),
        peer,
    };
    let limits = {
        let l = &ctx.shared.config.limits;
        HeadLimits {
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            max_uri_bytes: l.max_uri_bytes,
        }
    };
    let timeouts = ctx.shared.config.timeouts;
    let mut head = RequestHead::default();
    let mut first = true;
    loop {
        // -- wait for the first byte of the next request ------------------------------------
        // The first request's head must be complete within client_header of the accept; later
        // ones within client_header of their first byte.
        let mut deadline = accepted + timeouts.client_header;
        if client.buf.is_empty() {
            let wait = if first {
                deadline.saturating_duration_since(Instant::now())
            } else {
                timeouts.client_idle
            };
            let read = monoio::select! {
                r = read_more(&mut client.stream, &mut client.buf, wait) => Some(r),
                _ = ctx.drain.notified() => None,
            };
            match read {
                None => return, // draining: close idle connection
                Some(Err(IoFail::Timeout)) if first => {
                    // Opened but never sent a byte within client_header.
                    respond_canned(&ctx, &mut client, Canned::RequestTimeout, true).await;
                    return;
                }
                Some(Err(_)) => return, // idle expiry, client closed, or reset
                Some(Ok(_)) => {}
            }
        }
        if !first {
            deadline = Instant::now() + timeouts.client_header;
        }
        first = false;

        // -- read the head within client_header -------------------------------------------
        loop {
            match parse_request(&client.buf, &limits, &mut head) {
                Ok(Parsed::Complete(())) => break,
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    tracing::debug!(shard = ctx.id, %peer, error = ?e, "bad request head");
                    respond_canned(&ctx, &mut client, parse_error_status(e), true).await;
                    return;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let step = if left.is_zero() {
                Err(IoFail::Timeout)
            } else {
                read_more(&mut client.stream, &mut client.buf, left).await
            };
            match step {
                Ok(_) => {}
                Err(IoFail::Timeout) => {
                    respond_canned(&ctx, &mut client, Canned::RequestTimeout, true).await;
                    return;
                }
                Err(_) => return,
            }
        }

        // -- route, balance, forward, respond ----------------------------------------------
        let outcome = serve_request(&ctx, &mut client, &head).await;
        if outcome == Outcome::Close || ctx.draining() {
            return;
        }
        if client.buf.capacity() > KEEP_BUF && client.buf.len() < INITIAL_BUF {
            client.buf.shrink_to(INITIAL_BUF);
        }
    }
}
