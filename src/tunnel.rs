//! Stage 6 of the pipeline, *forward*, for upgraded connections (WebSocket and other
//! `Upgrade` protocols): after the backend answered `101 Switching Protocols` (never before:
//! a declined upgrade keeps HTTP framing), bytes are copied both ways until both sides have
//! closed. A half-close is passed on (`shutdown(SHUT_WR)` on the other side), and a tunnel
//! with no byte in either direction for `timeouts.tunnel_idle` is closed.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::http::parse::{HeaderKind, RequestHead, Span};
use crate::shard::ShardCtx;
use crate::stats::add;

/// Per direction, one buffer this large is posted for reads.
const TUNNEL_BUF: usize = 16 * 1024;

/// The backend side of an upgraded exchange, handed from the proxy to the connection loop.
pub struct Upgraded {
    pub upstream: TcpStream,
    pub backend: usize,
    /// Bytes the backend sent after its 101 head (already the new protocol).
    pub early: Vec<u8>,
}

/// A request asking to switch protocols that may be forwarded: HTTP/1.1, no body,
/// `Upgrade` named in `Connection`, and not `h2c` (HTTP/2 cleartext is not proxied).
pub fn wants_upgrade(buf: &[u8], head: &RequestHead) -> Option<Span> {
    if head.minor_version != 1
        || !head.framing().is_empty()
        || !head.named_in_connection(buf, b"upgrade")
    {
        return None;
    }
    let h = head
        .headers
        .iter()
        .find(|h| h.kind == HeaderKind::Upgrade)?;
    let v = h.value.get(buf);
    let h2c = v
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!v.is_empty() && !h2c).then_some(h.value)
}

/// Runs the tunnel to its end. `client_early` holds bytes the client sent after its request
/// head (already the new protocol).
pub async fn run(ctx: &ShardCtx, client: TcpStream, client_early: Vec<u8>, up: Upgraded) {
    let idle = ctx.shared.config.timeouts.tunnel_idle;
    let send = ctx.shared.config.timeouts.client_send;
    let backend = up.backend;
    let fds = [client.as_raw_fd(), up.upstream.as_raw_fd()];
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.upstream.into_split();
    for (early, w) in [(up.early, &mut cw), (client_early, &mut uw)] {
        if !early.is_empty() {
            match monoio::time::timeout(send, w.write_all(early)).await {
                Ok((Ok(_), _)) => {}
                _ => return,
            }
        }
    }
    let last = Cell::new(Instant::now());
    let both = async {
        monoio::join!(
            pump(&mut cr, &mut uw, &last, fds),
            pump(&mut ur, &mut cw, &last, fds)
        )
    };
    let watchdog = async {
        loop {
            let until = last.get() + idle;
            if Instant::now() >= until {
                return;
            }
            monoio::time::sleep_until(until.into()).await;
        }
    };
    let moved = monoio::select! {
        (up_bytes, down_bytes) = both => Some((up_bytes, down_bytes)),
        _ = watchdog => None,
    };
    if let Some((sent, received)) = moved {
        add(&ctx.stats.bytes_in, sent);
        add(&ctx.stats.bytes_out, received);
        let b = &ctx.stats.backends[backend];
        add(&b.bytes_sent, sent);
        add(&b.bytes_received, received);
    } else {
        tracing::debug!(
            shard = ctx.id,
            "tunnel closed after tunnel_idle without traffic"
        );
    }
}

/// Copies one direction until EOF or an error; returns the bytes copied. A clean EOF is
/// passed on as a half-close (the other direction goes on); an error ends the whole tunnel:
/// both sockets are shut down, so the other direction's pending read returns at once.
async fn pump(
    r: &mut OwnedReadHalf<TcpStream>,
    w: &mut OwnedWriteHalf<TcpStream>,
    last: &Cell<Instant>,
    fds: [RawFd; 2],
) -> u64 {
    let mut buf = Vec::with_capacity(TUNNEL_BUF);
    let mut total = 0u64;
    let clean = loop {
        let (res, b) = r.read(buf).await;
        buf = b;
        let n = match res {
            Ok(0) => break true,
            Err(_) => break false,
            Ok(n) => n,
        };
        last.set(Instant::now());
        let (res, b) = w.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break false;
        }
        total += n as u64;
        buf.clear();
    };
    if clean {
        let _ = w.shutdown().await;
    } else {
        for fd in fds {
            // SAFETY: shutdown(2) on the two sockets of this tunnel, whose halves (owned by
            // `run`) are alive for the whole call; it changes socket state only. Exercised by
            // tests/upgrade.rs (a backend that resets mid-tunnel).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
    total
}
