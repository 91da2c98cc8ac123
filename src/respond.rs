//! Stage 7 of the pipeline, *respond*, when the proxy answers itself: canned responses
//! (with the request id when configured), the status for a refused head, and the lingering
//! close after a refusal with an unread body.

use std::time::{Duration, Instant};

use crate::http::canned::Canned;
use crate::http::parse::ParseError;
use crate::io::{read_more, write_from, write_static};
use crate::proxy::{Client, Outcome};
use crate::shard::ShardCtx;
use crate::trace::RequestId;

/// Writes a canned response and says whether the connection must close afterwards.
pub async fn respond_canned(
    ctx: &ShardCtx,
    client: &mut Client,
    c: Canned,
    close: bool,
) -> Outcome {
    ctx.stats.canned(c);
    let close = close || c.forces_close();
    let t = ctx.shared.config.timeouts.client_send;
    match write_static(&mut client.stream, c.bytes(close), &mut client.deadline, t).await {
        Ok(()) if !close => Outcome::KeepAlive,
        _ => Outcome::Close,
    }
}

/// The request-id field for the proxy's own answers, when ids are returned to clients.
pub fn cfg_rid_header<'a>(ctx: &'a ShardCtx, rid: &'a RequestId) -> Option<(&'a [u8], &'a [u8])> {
    let cfg = &ctx.shared.config.request_id;
    cfg.respond.then(|| (cfg.header.as_bytes(), rid.bytes()))
}

/// [`respond_canned`] with one more header field (the request id) in the head.
pub async fn respond_canned_with(
    ctx: &ShardCtx,
    client: &mut Client,
    c: Canned,
    close: bool,
    extra: Option<(&[u8], &[u8])>,
) -> Outcome {
    let Some((name, value)) = extra else {
        return respond_canned(ctx, client, c, close).await;
    };
    ctx.stats.canned(c);
    let close = close || c.forces_close();
    let bytes = c.bytes(close);
    // The canned head ends at its first empty line: the field goes just before it.
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return respond_canned(ctx, client, c, close).await;
    };
    let mut out = ctx.take_buffer();
    out.extend_from_slice(&bytes[..end + 2]);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&bytes[end + 2..]);
    let n = out.len();
    let t = ctx.shared.config.timeouts.client_send;
    let r = write_from(&mut client.stream, &mut out, 0, n, &mut client.deadline, t).await;
    ctx.give_buffer(out);
    match r {
        Ok(()) if !close => Outcome::KeepAlive,
        _ => Outcome::Close,
    }
}

/// Closes a connection whose client may still be sending (an unread body, a refused head):
/// half-close, then read and discard for a bounded time, so that the kernel does not answer
/// the unread bytes with a reset that could destroy the response (RFC 9112 §9.6).
pub async fn linger_close(client: &mut Client) {
    use monoio::io::AsyncWriteRent;
    const LINGER: Duration = Duration::from_secs(1);
    const LINGER_BYTES: usize = 256 * 1024;
    let _ = client.stream.shutdown().await;
    let until = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        client.buf.clear();
        match read_more(
            &mut client.stream,
            &mut client.buf,
            &mut client.deadline,
            left,
        )
        .await
        {
            Ok(n) => drained += n,
            Err(_) => break,
        }
    }
}

/// Maps a request-head parse error to its status.
pub fn parse_error_status(e: ParseError) -> Canned {
    match e {
        ParseError::Malformed(_) => Canned::BadRequest,
        ParseError::TooManyHeaders | ParseError::HeadTooLarge => Canned::HeadersTooLarge,
        ParseError::UriTooLong => Canned::UriTooLong,
        ParseError::Version => Canned::VersionNotSupported,
        ParseError::Expectation => Canned::ExpectationFailed,
    }
}

/// A breaker limit was reached: count it and answer 503 without trying.
pub fn breaker_open(
    ctx: &ShardCtx,
    backend: usize,
    open: crate::health::breaker::Open,
    out: Vec<u8>,
    ubuf: Vec<u8>,
) -> crate::proxy::Failure {
    crate::stats::bump(&ctx.stats.backends[backend].breaker_rejected);
    if ctx.errors.allow(&ctx.stats) {
        tracing::warn!(shard = ctx.id, backend = %ctx.shared.backends[backend].address, "{open}");
    }
    ctx.give_buffer(out);
    ctx.give_buffer(ubuf);
    crate::proxy::Failure::Status(Canned::ServiceUnavailable)
}
