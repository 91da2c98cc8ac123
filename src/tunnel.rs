//! Stage 6 of the pipeline, *forward*, for upgraded connections (WebSocket and other
//! `Upgrade` protocols): after the backend answered `101 Switching Protocols` (never before:
//! a declined upgrade keeps HTTP framing), bytes move both ways until both sides have
//! closed. A half-close is passed on (`shutdown(SHUT_WR)` on the other side), an error on
//! either side shuts both sockets down (so the other direction ends at once), and a tunnel
//! with no byte in either direction for `timeouts.tunnel_idle` is closed; once one direction
//! has ended, for `timeouts.tunnel_half_closed` (HAProxy's `timeout client-fin`), so a peer
//! that half-closed and an other that never answers do not hold the tunnel for an hour.
//! With TLS on either side (a TLS listener, a TLS backend) both directions are
//! [`crate::tunnel_tls`]'s (copied through rustls); what follows is the plain tunnel's.
//!
//! Each direction is one `pump` with two modes:
//! - **copy** (where every tunnel starts): a non-blocking `recv` into a 16 KiB buffer, then
//!   `send` until all of it is out. The buffer comes from the shard's free list when the
//!   source has bytes and goes back when it has none, so an idle tunnel holds none. Small
//!   messages (most WebSocket traffic) stay here: below ~64-256 KiB per piece, splicing costs
//!   more than copying (`loadtest/splice.sh`).
//! - **splice**: when one read fills the whole buffer (the sign of bulk) and the shard's
//!   `PipePool` lends a pipe, the direction moves what the source has *now* socket → pipe →
//!   socket with non-blocking `splice(2)` (a *burst*: it waits only for the destination's
//!   writability, never for the source). The pipe goes back to the pool at the end of every
//!   burst, empty, so an idle tunnel holds no pipe. The direction stays in splice mode, waiting
//!   for readability and borrowing a pipe again, as long as each burst moves at least a
//!   buffer's worth; a smaller burst (or no pipe to be had) returns it to copy mode.
//!
//! `SPLICE_F_MORE` is never passed: a tunnel cannot know that more follows, and a last piece
//! sent with it would stay corked. (Within one `splice` call the kernel already marks all but
//! the end of the pipe's contents as "more".)
//!
//! Both sockets stay whole (not split into monoio halves, which cannot wait for readiness):
//! the two pumps borrow both `&TcpStream`s, wait with `readable(false)`/`writable(false)`
//! (io_uring `POLL_ADD`, or epoll confirmed by `poll`) and do their own non-blocking
//! `recv`/`send`/`splice` syscalls on the `O_NONBLOCK` sockets, the same on both drivers.
//! No `IORING_OP_SPLICE` (the kernel would run it on io-wq worker threads).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{pin, Pin};
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::http::parse::{list_items, HeaderKind, RequestHead, ResponseHead};
use crate::shard::ShardCtx;
use crate::splice::{set_nonblocking, splice_once, would_block, Pipe};
use crate::stats::add;
use crate::transport::{recv_now, send_now, Transport};
use crate::tunnel_tls::{self, Side};

/// Per direction, the copy buffer; a read that fills it switches the direction to splicing.
pub(crate) const TUNNEL_BUF: usize = 16 * 1024;

/// The backend side of an upgraded exchange, handed from the proxy to the connection loop.
pub struct Upgraded {
    pub upstream: Transport,
    pub backend: usize,
    /// Bytes the backend sent after its 101 head (already the new protocol).
    pub early: Vec<u8>,
}

/// A request asking to switch protocols that may be forwarded: HTTP/1.1, no body,
/// `Upgrade` named in `Connection`, and not `h2c` (HTTP/2 cleartext is not proxied) on any
/// of its `Upgrade` lines.
pub fn wants_upgrade(buf: &[u8], head: &RequestHead) -> bool {
    if head.minor_version != 1
        || !head.framing().is_empty()
        || !head.named_in_connection(buf, b"upgrade")
    {
        return false;
    }
    let mut offered = false;
    for t in offer_tokens(buf, head) {
        if t.eq_ignore_ascii_case(b"h2c") {
            return false;
        }
        offered = true;
    }
    offered
}

/// The protocols a request's `Upgrade` lines offer, in order: several lines are one list
/// (RFC 9110 §5.3).
fn offer_tokens<'b>(buf: &'b [u8], head: &'b RequestHead) -> impl Iterator<Item = &'b [u8]> {
    head.headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Upgrade)
        .flat_map(move |h| list_items(h.value.get(buf)))
}

/// Appends the request's offer as one `Upgrade` value (`a, b`), for the backend.
pub fn write_offer(buf: &[u8], head: &RequestHead, out: &mut Vec<u8>) {
    for (i, t) in offer_tokens(buf, head).enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(t);
    }
}

/// The protocols an upgrade request offered, from its head as sent upstream: the `Upgrade`
/// field [`crate::proxy`] appends last (a client's own is hop-by-hop, never forwarded).
/// Empty when there is none.
pub fn offered_upgrade(sent: &[u8]) -> &[u8] {
    const NAME: &[u8] = b"\r\nUpgrade: ";
    let Some(at) = sent.windows(NAME.len()).rposition(|w| w == NAME) else {
        return b"";
    };
    let value = &sent[at + NAME.len()..];
    let end = value
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(value.len());
    &value[..end]
}

/// Whether a `101` (`head`, parsed in `buf`) switches only to protocols the client offered
/// (`offer`, its request's `Upgrade` value): RFC 9110 §7.8, a server "MUST NOT switch to a
/// protocol that was not indicated by the client", and §15.2.2, a `101` names the protocols
/// in `Upgrade`. Protocol names (with their versions) compare without regard to case, as
/// RFC 6455 has `websocket`. Anything else is a bad response (502), not a tunnel.
pub fn switch_agreed(offer: &[u8], buf: &[u8], head: &ResponseHead) -> bool {
    let mut named = 0;
    for h in head
        .headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Upgrade)
    {
        for t in list_items(h.value.get(buf)) {
            if !list_items(offer).any(|o| o.eq_ignore_ascii_case(t)) {
                return false;
            }
            named += 1;
        }
    }
    named > 0
}

/// Runs the tunnel to its end. `client_early` holds bytes the client sent after its request
/// head (already the new protocol). A TLS client's side is [`crate::tunnel_tls`]'s.
pub async fn run(ctx: &ShardCtx, client: Transport, client_early: Vec<u8>, up: Upgraded) {
    let send = ctx.shared.config.timeouts.client_send;
    let backend = up.backend;
    // The tunnel holds a connection to the backend: counted, until it ends, as a request in
    // flight (the in-flight gauge, `max_connections`, and the load least_conn, p2c and
    // bounded loads balance on), taken before the first wait, so no other request sees the
    // backend without it (the exchange's own count ended as its 101 went out). Never `sent`:
    // the tunnel's length is no response time.
    let _open = ctx
        .backends
        .forwarding(&ctx.shared, &ctx.stats.backends[backend], backend);
    let b = &ctx.stats.backends[backend];
    // Counted as they move, so a long-lived tunnel shows in the metrics while it is open.
    let sent = Moved::new(&ctx.stats.bytes_in, &b.bytes_sent);
    let received = Moved::new(&ctx.stats.bytes_out, &b.bytes_received);
    let last = Cell::new(Instant::now());
    match (client, up.upstream) {
        (Transport::Plain(mut client), Transport::Plain(mut upstream)) => {
            for (early, w, moved) in [
                (up.early, &mut client, &received),
                (client_early, &mut upstream, &sent),
            ] {
                if !early.is_empty() {
                    match monoio::time::timeout(send, w.write_all(early)).await {
                        Ok((Ok(n), _)) => moved.add(n as u64),
                        _ => return,
                    }
                }
            }
            if set_nonblocking(&client).is_err() || set_nonblocking(&upstream).is_err() {
                return;
            }
            let up = pin!(pump(ctx, &client, &upstream, &last, &sent));
            let down = pin!(pump(ctx, &upstream, &client, &last, &received));
            both_ways(ctx, up, down, &last).await;
        }
        // TLS on either side: copied through rustls ([`crate::tunnel_tls`]).
        (client, upstream) => {
            let (client, upstream) = (Side::new(client), Side::new(upstream));
            if set_nonblocking(client.tcp()).is_err() || set_nonblocking(upstream.tcp()).is_err() {
                return;
            }
            for (early, to, moved) in [
                (up.early, &client, &received),
                (client_early, &upstream, &sent),
            ] {
                match monoio::time::timeout(send, to.write(&early, &last)).await {
                    Ok(Ok(())) => moved.add(early.len() as u64),
                    _ => return,
                }
            }
            let up = pin!(tunnel_tls::pump(&client, &upstream, &last, &sent));
            let down = pin!(tunnel_tls::pump(&upstream, &client, &last, &received));
            both_ways(ctx, up, down, &last).await;
        }
    }
}

/// Runs the two directions `up` and `down` until both have ended: while both are open,
/// bounded by `tunnel_idle` without a byte; once one has ended, by `tunnel_half_closed`.
async fn both_ways(
    ctx: &ShardCtx,
    mut up: Pin<&mut impl Future<Output = ()>>,
    mut down: Pin<&mut impl Future<Output = ()>>,
    last: &Cell<Instant>,
) {
    let idle = ctx.shared.config.timeouts.tunnel_idle;
    // Both ways open: bounded by tunnel_idle.
    let first = monoio::select! {
        _ = &mut up => Some(true),
        _ = &mut down => Some(false),
        _ = quiet(last, idle) => None,
    };
    // One way ended (a half-close passed on; after an error both sockets are shut down, so
    // the other ends at once): the other is bounded by tunnel_half_closed from now on.
    let ended = match first {
        None => false,
        Some(up_ended) => {
            last.set(Instant::now());
            let bound = ctx.shared.config.timeouts.tunnel_half_closed.min(idle);
            let other = async {
                if up_ended {
                    (&mut down).await
                } else {
                    (&mut up).await
                }
            };
            monoio::select! {
                _ = other => true,
                _ = quiet(last, bound) => false,
            }
        }
    };
    if !ended {
        tracing::debug!(
            shard = ctx.id,
            half_closed = first.is_some(),
            "tunnel closed after tunnel_idle (or tunnel_half_closed) without traffic"
        );
    }
}

/// The bytes one direction of a tunnel moved: its own count (the pump's bulk test reads it)
/// and the client and backend byte counters it feeds as they move.
pub(crate) struct Moved<'a> {
    here: Cell<u64>,
    client: &'a Cell<u64>,
    backend: &'a Cell<u64>,
}

impl<'a> Moved<'a> {
    fn new(client: &'a Cell<u64>, backend: &'a Cell<u64>) -> Moved<'a> {
        Moved {
            here: Cell::new(0),
            client,
            backend,
        }
    }

    pub(crate) fn add(&self, n: u64) {
        self.here.set(self.here.get() + n);
        add(self.client, n);
        add(self.backend, n);
    }

    fn get(&self) -> u64 {
        self.here.get()
    }
}

/// Returns once `last` (the time a byte last moved) is `bound` ago.
async fn quiet(last: &Cell<Instant>, bound: Duration) {
    loop {
        let until = last.get() + bound;
        if Instant::now() >= until {
            return;
        }
        monoio::time::sleep_until(until.into()).await;
    }
}

/// How one direction ended.
enum End {
    /// The source closed its side: passed on as a half-close.
    Eof,
    /// An error on either socket: the whole tunnel ends.
    Failed,
}

/// Moves one direction until EOF or an error, counting into `moved` the bytes that reached
/// `dst` and setting `last` whenever a byte moves. A clean EOF is passed on as a half-close
/// (the other direction goes on); an error shuts both sockets down, so the other direction's
/// pending wait returns at once.
async fn pump(
    ctx: &ShardCtx,
    src: &TcpStream,
    dst: &TcpStream,
    last: &Cell<Instant>,
    moved: &Moved<'_>,
) {
    let may_splice = ctx.shared.config.splice.enabled;
    // Taken from the shard's free list when the source has bytes, given back when it has
    // no more: an idle tunnel holds no buffer (it held 16 KiB per direction for up to
    // `tunnel_idle`), a busy shard recycles a few.
    let mut buf = None;
    let mut bulk = false;
    let end = loop {
        crate::coop::step().await;
        if bulk {
            // Splicing needs no buffer, and its waits hold none.
            buf = None;
            if let Some(loan) = ctx.pipes.lend() {
                let before = moved.get();
                let eof = match burst(ctx, src, dst, loan.pipe(), last, moved).await {
                    Ok(eof) => eof,
                    // The loan is dropped: the pipe may hold bytes and is discarded.
                    Err(_) => break End::Failed,
                };
                loan.give_back();
                if eof {
                    break End::Eof;
                }
                bulk = moved.get() - before >= TUNNEL_BUF as u64;
                if bulk && src.readable(false).await.is_err() {
                    break End::Failed;
                }
                continue;
            }
            bulk = false;
        }
        let b = buf.get_or_insert_with(|| ctx.buffers.take_bulk(TUNNEL_BUF));
        b.clear();
        let n = match recv_now(
            src.as_raw_fd(),
            &mut b.spare_capacity_mut()[..TUNNEL_BUF],
            0,
        ) {
            Ok(0) => break End::Eof,
            Ok(n) => n,
            Err(e) if would_block(&e) => {
                buf = None;
                match src.readable(false).await {
                    Ok(()) => continue,
                    Err(_) => break End::Failed,
                }
            }
            Err(_) => break End::Failed,
        };
        // SAFETY: `recv_now` initialised the `n` bytes it received at the vector's start.
        unsafe { b.set_len(n) };
        last.set(Instant::now());
        if send_all(dst, b, last).await.is_err() {
            break End::Failed;
        }
        moved.add(n as u64);
        bulk = may_splice && n == TUNNEL_BUF;
    };
    match end {
        End::Eof => shutdown(dst.as_raw_fd(), libc::SHUT_WR),
        End::Failed => {
            shutdown(src.as_raw_fd(), libc::SHUT_RDWR);
            shutdown(dst.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// One burst of splice mode: moves what `src` has now through `pipe` into `dst`, waiting
/// only for `dst`'s writability. Returns, with the pipe empty, when `src` would block
/// (`Ok(false)`) or reached EOF (`Ok(true)`). On error the pipe may hold bytes.
async fn burst(
    ctx: &ShardCtx,
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    last: &Cell<Instant>,
    moved: &Moved<'_>,
) -> io::Result<bool> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let (pipe_r, pipe_w) = pipe.fds();
    let mut in_pipe = 0usize;
    let mut eof = false;
    loop {
        crate::coop::step().await;
        let mut dry = false;
        if !eof && in_pipe < pipe.size() {
            match splice_once(src_fd, pipe_w, pipe.size() - in_pipe, false) {
                Ok(0) => eof = true,
                Ok(n) => {
                    in_pipe += n;
                    last.set(Instant::now());
                }
                Err(e) if would_block(&e) => dry = true,
                Err(e) => return Err(e),
            }
        }
        if in_pipe > 0 {
            match splice_once(pipe_r, dst_fd, in_pipe, false) {
                // Cannot happen with bytes in the pipe; never spin on it.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    in_pipe -= n;
                    moved.add(n as u64);
                    add(&ctx.stats.spliced_bytes, n as u64);
                    last.set(Instant::now());
                }
                Err(e) if would_block(&e) => dst.writable(false).await?,
                Err(e) => return Err(e),
            }
        }
        if in_pipe == 0 && (eof || dry) {
            return Ok(eof);
        }
    }
}

/// Sends all of `data`, waiting for writability whenever the socket buffer is full.
pub(crate) async fn send_all(
    dst: &TcpStream,
    mut data: &[u8],
    last: &Cell<Instant>,
) -> io::Result<()> {
    while !data.is_empty() {
        match send_now(dst.as_raw_fd(), &[io::IoSlice::new(data)]) {
            Ok(n) => {
                data = &data[n..];
                last.set(Instant::now());
            }
            Err(e) if would_block(&e) => dst.writable(false).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) on a socket of this tunnel, kept alive by the caller's
    // `&TcpStream`; it changes socket state only (an error, e.g. ENOTCONN once the peer is
    // gone, is of no consequence). Exercised by the half-close and reset tests.
    unsafe { libc::shutdown(fd, how) };
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
