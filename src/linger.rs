//! The end of the pipeline, *close*: how a client connection closes after its last response
//! (RFC 9112 §9.6), in stages, so that bytes the client sent or still sends do not make the
//! kernel answer with a reset that destroys the end of the response still in flight:
//! [`linger_close`] when the client may still be sending (an unread body, a refused head, a
//! pipelined request), [`close_after_response`] when it had sent nothing more; [`close`]
//! chooses between them after a complete response.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::client::{Client, Transport};
use crate::io::{read_more, IoFail};
use crate::shard::ShardCtx;
use crate::transport::unsent;
use crate::worker::ActiveGuard;

/// Closes a connection whose client may still be sending (an unread body, a refused head):
/// half-close, then read and discard for a bounded time, so that the kernel does not answer
/// the unread bytes with a reset that could destroy the response (RFC 9112 §9.6): for
/// `timeouts.lingering_timeout` (up to 256 KiB), and beyond that for as long as the response
/// is not all taken by the client (its bytes still in the socket's send queue, which a reset
/// would drop), each read within `lingering_timeout` of the last, all within
/// `timeouts.lingering_time` and 16 MiB (nginx's `lingering_timeout` and `lingering_time`;
/// the byte bound is ours: a client that sends fast and never reads would otherwise keep the
/// shard reading all that time). A TLS client's side is ended with close_notify (within
/// `lingering_time`), and what it sends after is read from the socket as it is, never
/// decrypted: nothing of it is used, and a read cut short by its timeout may lose bytes
/// (io_uring), which through rustls would be a broken record and an early close.
pub async fn linger_close(ctx: &ShardCtx, client: &mut Client) {
    linger(ctx, client, true).await
}

/// Closes a connection after its last, complete response: `unread`, the client may still be
/// sending ([`linger_close`]); else [`close_after_response`], unless it is a plain one whose
/// response is all acknowledged already (`SIOCOUTQ` at 0, the common case on a fast path:
/// no reset could destroy any of it), which is dropped (the close sends the FIN). The guard
/// of a [`close_after_response`] waits in the shard's register of closes, which a new
/// connection at a limit reclaims when no idle connection is left and the client has
/// acknowledged the whole response ([`crate::reclaim`]): the close then ends at once. A
/// [`linger_close`] keeps its guard: reclaimed, it would close on what its client sends.
pub async fn close(ctx: &ShardCtx, client: &mut Client, guard: ActiveGuard, unread: bool) {
    if unread {
        linger_close(ctx, client).await;
        drop(guard);
        return;
    }
    let fd = client.stream.tcp().as_raw_fd();
    if matches!(client.stream, Transport::Plain(_)) && unsent(fd) == 0 {
        return;
    }
    let closing = ctx.closing.enter_close(guard, Instant::now(), fd);
    monoio::select! {
        _ = close_after_response(ctx, client) => {}
        _ = closing.reclaimed() => {}
    }
}

/// Closes after a complete response that ends its connection, to a client that had sent
/// nothing more by then: the half-close, then only the second part of [`linger_close`]: what
/// the client sends while the response is still in flight is read and discarded. A client
/// that sends more once the whole response was queued (a confused pipeliner) is then not
/// answered with a reset that destroys the end still in flight (RFC 9112 §9.6 closes in
/// stages, until the client has acknowledged the response); one that takes the response and
/// closes, or acknowledges it, ends it within [`LINGER_STEP`]. A TLS client's side ends with
/// close_notify (RFC 8446 §6.1): a close-delimited body (an HTTP/1.0 client's) is complete to
/// the client only with it (RFC 9112 §9.8); a response cut short ends without one
/// ([`crate::client::Outcome::Cut`]). It is waited for within `lingering_timeout` (and
/// `client_send`): a client that does not read gets the TCP close then.
async fn close_after_response(ctx: &ShardCtx, client: &mut Client) {
    linger(ctx, client, false).await
}

/// How often a close waiting on the response in flight looks at the send queue again: no
/// event says that the client acknowledged it.
const LINGER_STEP: Duration = Duration::from_millis(100);

/// [`linger_close`] (`first_part`) and [`close_after_response`].
async fn linger(ctx: &ShardCtx, client: &mut Client, first_part: bool) {
    use monoio::io::AsyncWriteRent;
    const LINGER_BYTES: usize = 256 * 1024;
    const LINGER_MAX_BYTES: usize = 16 << 20;
    let timeouts = &ctx.shared.config.timeouts;
    let (linger, linger_max) = (timeouts.lingering_timeout, timeouts.lingering_time);
    let fd = client.stream.tcp().as_raw_fd();
    // `lingering_time` bounds the whole close, a TLS close_notify's wait included; after a
    // complete response, `lingering_timeout` and `client_send` bound that wait too.
    let shutdown_within = if first_part {
        linger_max
    } else {
        linger_max.min(linger).min(timeouts.client_send)
    };
    let begun = Instant::now();
    let shut = client
        .deadline
        .within(shutdown_within, client.stream.shutdown())
        .await;
    let shut = matches!(shut, Ok(Ok(())));
    if !first_part && !shut {
        return;
    }
    // The FIN, once queued, takes a sequence number of its own: all the response is
    // acknowledged when at most that one is not.
    let fin = usize::from(shut);
    // The reads' clocks start once the half-close is done: a close_notify that waited on a
    // client that did not read says nothing of what that client sends meanwhile, which waits
    // unread in the socket (taken for quiet, it would be closed on unread: the reset).
    let start = Instant::now();
    // The last read, or the end of the first part: past it, reads come within `linger`.
    let mut last = start;
    let mut drained = 0;
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        let total = now - begun;
        if total >= linger_max || drained >= LINGER_MAX_BYTES {
            break;
        }
        let base = first_part && drained < LINGER_BYTES && elapsed < linger;
        let wait = if base {
            linger - elapsed
        } else {
            let quiet = now - last;
            // Bytes that came with the last wait's end are read first: unread, they would
            // make the close a reset after all.
            let taken = unsent(fd) <= fin && !crate::transport::unread(fd);
            if taken || quiet >= linger {
                break;
            }
            (linger - quiet).min(LINGER_STEP)
        };
        client.buf.clear();
        let raw = match &mut client.stream {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.tcp_mut(),
        };
        let wait = wait.min(linger_max - total);
        match read_more(raw, &mut client.buf, &mut client.deadline, wait).await {
            Ok(n) => {
                drained += n;
                last = Instant::now();
            }
            // The first part ran out: what is still unsent decides (above), and the next
            // read has `linger` from here.
            Err(IoFail::Timeout) if base => last = Instant::now(),
            Err(IoFail::Timeout) => {}
            Err(_) => break,
        }
    }
}
