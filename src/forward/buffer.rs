//! Stage 6 of the pipeline, *forward*, before the pick: `[[upstream]] buffer_request_body`
//! (nginx's `proxy_request_buffering`, HAProxy's `option http-buffer-request`). A request
//! body up to the bound is read whole into the client buffer before a backend is picked, so
//! a slow upload holds no backend connection (nor a thread of a backend that has one per
//! request), and the request can be sent again after a failed connect. A chunked body is
//! decoded there in place and sent with a `Content-Length`, as nginx sends it: a backend
//! that refuses chunked uploads (`411 Length Required`) takes it. The send itself is
//! `forward/body.rs`.

use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::{Kind, ProxyError, Stage};
use crate::http::chunked::ChunkedDecoder;
use crate::http::encode::{reframe_with_length, OutFraming};
use crate::http::parse::BodyFraming;
use crate::io::IoFail;

use super::{Forward, Prepared, RequestFacts};

/// Raw bytes of a chunked body a buffer of `limit` payload bytes reads before it gives up
/// and streams the body as it came: chunk framing may be most of a body made of tiny
/// chunks, and the raw bytes stay in the client buffer until the last chunk.
fn raw_cap(limit: u64) -> usize {
    usize::try_from(limit.saturating_mul(2).saturating_add(16 << 10)).unwrap_or(usize::MAX)
}

/// One buffered body's charge against the shard's `limits.buffer_memory`, given back when
/// the request's forward ends.
pub(super) type Held<'s> = crate::stats::Charge<'s>;

impl Forward<'_> {
    /// Reads the request body whole into the client buffer when the upstream buffers bodies
    /// and this one fits: a `Content-Length` up to the bound, or a chunked body whose payload
    /// turns out to be (then decoded in place and sent with a `Content-Length`: `facts` and
    /// `prepared` say so from here on). A chunked body found larger than the bound streams as
    /// without buffering; one larger than the route's `max_body_bytes` is refused (`413`)
    /// before any backend sees it. A client that sent `Expect: 100-continue` gets the
    /// `100 Continue` from the proxy.
    /// The body's bytes are charged to the shard's `limits.buffer_memory` while the request
    /// is forwarded (the returned [`Held`]); a body that would pass it streams instead.
    pub(super) async fn buffer_body(
        &self,
        client: &mut Client,
        facts: &mut RequestFacts,
        prepared: &mut Prepared<'_>,
    ) -> Result<Option<Held<'_>>, ProxyError> {
        let limit = self.cfg().upstreams[prepared.upstream].buffer_request_body;
        let whole = match facts.framing {
            BodyFraming::Length(n) => n > 0 && n <= limit && (client.buf.len() as u64) < n,
            // The head of an upgrade ends with its offer, not with the framing rewritten.
            BodyFraming::Chunked => !facts.upgrade,
            BodyFraming::None | BodyFraming::UntilClose => false,
        };
        if !whole {
            return Ok(None);
        }
        // At most what it may hold: a known length, or a chunked body's raw bound.
        let charge = match facts.framing {
            BodyFraming::Length(n) => n,
            _ => raw_cap(limit) as u64,
        };
        let stats = &self.ctx.stats;
        let Some(held) = Held::take(
            &stats.buffer_memory,
            self.cfg().limits.buffer_memory,
            charge,
        ) else {
            crate::stats::bump(&stats.buffer_memory_refused);
            return Ok(None);
        };
        // A client that waits for it before its body gets it from here (the forward, seeing
        // the body, will not send another).
        if facts.expect_continue && facts.minor == 1 && client.buf.is_empty() {
            Box::pin(self.send_continue(client)).await?;
        }
        match facts.framing {
            BodyFraming::Length(n) => read_whole_body(client, n, self.cfg())
                .await
                .map(|()| Some(held)),
            _ => {
                let Some(n) = self
                    .buffer_chunked(client, limit, prepared.body_limit)
                    .await?
                else {
                    return Ok(Some(held));
                };
                if reframe_with_length(&mut prepared.out, n) {
                    facts.framing = BodyFraming::Length(n);
                    prepared.out_framing = OutFraming::Length(n);
                    Ok(Some(held))
                } else {
                    // The head was not written as `upstream_request_head` writes one.
                    Err(ProxyError::client(Kind::Framing, Stage::Send))
                }
            }
        }
    }

    /// Reads a chunked body until its last chunk, then decodes it in place: the client
    /// buffer then starts with its payload (trailer fields dropped), followed by whatever
    /// was pipelined after it. `None`: the payload passed `limit` (or its framing
    /// [`raw_cap`]) first, and the buffer holds the body as it came, to be streamed. Each read
    /// within `client_body`; the whole within `client_body` plus what `client_body_min_rate`
    /// allows for the payload received (framing earns no time, as in [`crate::relay::Pace`]).
    async fn buffer_chunked(
        &self,
        client: &mut Client,
        limit: u64,
        body_limit: u64,
    ) -> Result<Option<u64>, ProxyError> {
        let cfg = self.cfg();
        let overhead = cfg.limits.max_header_bytes;
        let mut decoder = ChunkedDecoder::new(overhead);
        let (mut raw, mut payload) = (0usize, 0u64);
        let t = cfg.timeouts.client_body;
        let rate = cfg.limits.client_body_min_rate;
        let started = Instant::now();
        loop {
            while raw < client.buf.len() {
                let step = decoder
                    .decode(&client.buf[raw..])
                    .map_err(|_| ProxyError::client(Kind::Framing, Stage::Send))?;
                raw += step.consumed;
                payload += (step.data.1 - step.data.0) as u64;
                // As the relay does: a chunk whose size line says it cannot fit is refused
                // there, before its bytes are waited for.
                let announced = payload.saturating_add(decoder.announced());
                if announced > body_limit {
                    return Err(ProxyError::client(Kind::TooLarge, Stage::Send));
                }
                if step.done {
                    let n = decode_in_place(&mut client.buf, raw, overhead)
                        .ok_or(ProxyError::client(Kind::Framing, Stage::Send))?;
                    return Ok(Some(n));
                }
                if announced > limit || raw > raw_cap(limit) {
                    return Ok(None);
                }
            }
            // With no minimum rate, only each read is bounded (as for a known length).
            let left = match rate {
                0 => t,
                _ => (t + Duration::from_secs_f64(payload as f64 / rate as f64))
                    .saturating_sub(started.elapsed())
                    .min(t),
            };
            // Grown by what the cap still allows, not doubled past it.
            let buf = &mut client.buf;
            if buf.len() == buf.capacity() {
                let room = raw_cap(limit)
                    .saturating_sub(raw)
                    .clamp(4096, buf.capacity().max(4096));
                buf.reserve_exact(room);
            }
            read_body(client, left).await?;
        }
    }
}

/// Decodes the chunked body in `buf[..end]` (whole: its last chunk and trailer section end
/// at `end`) in place: its payload moves to the front and the framing goes, so `buf` holds
/// the payload followed by what came after `end`. Returns the payload's length; `None` when
/// `buf[..end]` is not one whole chunked body (`max_overhead` as for the decoder).
pub(super) fn decode_in_place(buf: &mut Vec<u8>, end: usize, max_overhead: usize) -> Option<u64> {
    let mut decoder = ChunkedDecoder::new(max_overhead);
    let (mut r, mut w) = (0usize, 0usize);
    while r < end {
        let step = decoder.decode(&buf[r..end]).ok()?;
        let (a, b) = (r + step.data.0, r + step.data.1);
        // The payload never moves forward: `w` trails `r` by the framing read so far.
        buf.copy_within(a..b, w);
        w += b - a;
        r += step.consumed;
        if step.done {
            break;
        }
    }
    if !decoder.is_done() || r != end {
        return None;
    }
    buf.drain(w..end);
    Some(w as u64)
}

/// Reads a body of `n` bytes (`Content-Length`) whole into the client buffer, behind what
/// it already holds: each read within `client_body`, the whole within `client_body` plus
/// what `client_body_min_rate` allows for its length, else a timeout (`408`).
pub(crate) async fn read_whole_body(
    client: &mut Client,
    n: u64,
    cfg: &crate::config::Config,
) -> Result<(), ProxyError> {
    let t = cfg.timeouts.client_body;
    let rate = cfg.limits.client_body_min_rate;
    let whole = (rate > 0).then(|| t + Duration::from_secs_f64(n as f64 / rate as f64));
    let started = Instant::now();
    client
        .buf
        .reserve((n as usize).saturating_sub(client.buf.len()));
    while (client.buf.len() as u64) < n {
        let left = whole.map_or(t, |w| w.saturating_sub(started.elapsed()).min(t));
        read_body(client, left).await?;
    }
    Ok(())
}

/// One read of a request body into the client buffer within `left`: no time left is a
/// client too slow (`408`), as is a read that times out; an EOF or a failed read ends it.
async fn read_body(client: &mut Client, left: Duration) -> Result<(), ProxyError> {
    if left.is_zero() {
        return Err(ProxyError::client(Kind::TooSlow, Stage::Send));
    }
    let read = crate::io::read_more(
        &mut client.stream,
        &mut client.buf,
        &mut client.deadline,
        left,
    )
    .await;
    match read {
        Ok(0) => Err(ProxyError::client(Kind::Closed, Stage::Send)),
        Ok(_) => Ok(()),
        Err(IoFail::Timeout) => Err(ProxyError::client(Kind::Timeout, Stage::Send)),
        Err(_) => Err(ProxyError::client(Kind::Closed, Stage::Send)),
    }
}

#[cfg(test)]
mod tests {
    use super::decode_in_place;

    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-T: 1\r\n\r\n";

    #[test]
    fn a_whole_chunked_body_becomes_its_payload_with_the_rest_behind_it() {
        let mut buf = [BODY, b"GET / HTTP/1.1\r\n"].concat();
        assert_eq!(decode_in_place(&mut buf, BODY.len(), 64), Some(11));
        assert_eq!(buf, b"hello worldGET / HTTP/1.1\r\n");
        let mut empty = b"0\r\n\r\nX".to_vec();
        assert_eq!(decode_in_place(&mut empty, 5, 64), Some(0));
        assert_eq!(empty, b"X");
    }

    #[test]
    fn a_cut_or_overlong_body_is_refused() {
        for end in 0..BODY.len() {
            let mut buf = BODY.to_vec();
            assert_eq!(decode_in_place(&mut buf, end, 64), None, "cut at {end}");
        }
        // One byte past the end: not one whole body.
        let mut buf = [BODY, b"X"].concat();
        assert_eq!(decode_in_place(&mut buf, BODY.len() + 1, 64), None);
    }
}
