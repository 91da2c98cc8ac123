//! Stage 6 of the pipeline, *forward* (bytes): reads the upstream's response head (relaying
//! the interim 1xx responses before it to the client) and relays one body between two
//! sockets, de-chunking, re-chunking or copying as the two sides' framings require. Used by
//! [`crate::forward`] for request bodies (client to upstream) and response bodies (upstream
//! to client, from [`crate::respond`]). [`Leg`] (one direction's timer, wait bounds and
//! whether it has written) is shared with [`crate::splice`], which relays large bodies.
//!
//! The minimum-rate rule for slow clients ([`Pace`], in `relay/pace.rs`) is applied in
//! [`Leg`] too: every wait of a body relay, copied, spliced or through TLS, goes through
//! [`Leg::begin`] and [`Leg::end`], so the rule is written once; only payload earns time, not
//! chunk framing ([`Leg::framing`]).

use std::time::{Duration, Instant};

use crate::transport::Transport;
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::config::{Config, SpliceConfig};
use crate::http::chunked::{encode_chunk, encode_last_chunk, ChunkedDecoder};
use crate::http::encode::TrailerFilter;
use crate::http::encode::{interim_response_head, OutFraming};
use crate::http::parse::{parse_response, BodyFraming, HeadLimits, Parsed, ResponseHead};
use crate::io::{read_more, read_more_at_most, write_from, write_two_from, Deadline, IoFail};

mod pace;
pub use pace::{rate_allowance, Pace};

/// Why a body relay stopped early.
#[derive(Debug)]
pub enum RelayError {
    Read(IoFail),
    Write(IoFail),
    Framing,
    TooLarge,
    /// The client's side of the body fell below its minimum rate ([`Pace`]): the request
    /// body arrived too slowly, or the response was read too slowly.
    TooSlow,
}

/// Why no response head was read.
pub enum HeadFail {
    /// Reading from the backend failed.
    Io(IoFail),
    /// The backend's head was malformed, or not acceptable here.
    Bad,
    /// Relaying an interim response to the client failed.
    Client(IoFail),
}

impl HeadFail {
    /// The status nginx logs in `$upstream_status` for such a try: 504 when it timed out,
    /// else 502.
    pub fn logged_status(&self) -> u16 {
        match self {
            HeadFail::Io(IoFail::Timeout) => 504,
            _ => 502,
        }
    }
}

/// The most one read of a response head asks for. What follows a head in the same read is a
/// body prefix that is copied even when the rest is spliced, so the body part of the read is
/// capped at a quarter of the smallest body that may be spliced (16 KiB to 64 KiB), or at
/// 16 KiB when the backend's last body qualified for splicing (`after_spliced`: it likely
/// sends large ones), plus 4 KiB of room for the head itself. The default `splice_min_bytes` of 256 KiB
/// gives 68 KiB: a response of up to 64 KiB still arrives in one read, as it did before any
/// cap (loadtest/results/2026-12-03-vm/headread-ab.md: a 16 KiB read cost a 16 KiB response a
/// second read and write, +20 % CPU), and after a spliced body 20 KiB, so a 1 MiB download
/// copies at most 16 KiB of itself. Pooled buffers grow, and an uncapped head read into a
/// grown one pulled up to 256 KiB of a body about to be spliced through user space.
pub fn head_read_size(splice: &SpliceConfig, after_spliced: bool) -> usize {
    const MIN: usize = 16 * 1024;
    const MAX: usize = 64 * 1024;
    const HEAD_ROOM: usize = 4 * 1024;
    let body = if !splice.enabled {
        MAX
    } else if after_spliced {
        MIN
    } else {
        usize::try_from(splice.min_bytes / 4)
            .unwrap_or(MAX)
            .clamp(MIN, MAX)
    };
    body + HEAD_ROOM
}

/// How one response head is read: parse limits, the time allowed, whether the request asked
/// for an upgrade, and the most one read asks for ([`head_read_size`]).
pub struct HeadRead {
    pub limits: HeadLimits,
    pub timeout: Duration,
    pub upgrade: bool,
    pub max_read: usize,
    /// The socket was just found readable: the first read takes what is there without
    /// waiting ([`crate::transport::Transport::read_now`]; TLS reads as usual).
    pub ready: bool,
}

/// The most interim (1xx) responses one exchange may carry before its final one; one more
/// is a bad response, like a malformed head. Real backends send one or two (a `100
/// Continue`, a `103 Early Hints`); the bound keeps a backend from holding a request in an
/// endless stream of them.
pub const MAX_INTERIM: usize = 16;

/// Whether an interim response with `status` (1xx, not 101) is relayed to a client speaking
/// HTTP/1.`client_minor` (RFC 9110 §15.2). Never to HTTP/1.0 clients. Never a `100
/// Continue`: the proxy answers `Expect: 100-continue` itself and the backend never sees
/// the `Expect` field (`crate::forward`), so a backend's `100` is either a second one (the
/// proxy already sent its own) or one the client did not ask for; a proxy need not forward
/// a 1xx it caused. Every other 1xx (`103 Early Hints`, `102`, unknown ones) is relayed.
pub fn relays_interim(status: u16, client_minor: u8) -> bool {
    client_minor >= 1 && status != 100
}

/// Where [`read_response_head`] relays interim responses: the client (its stream and HTTP
/// minor version), each write bounded by `write_timeout`.
pub struct Interim<'c> {
    pub client: &'c mut Transport,
    pub client_minor: u8,
    pub write_timeout: Duration,
    /// `server.hide_response_headers`.
    pub hide: &'c [Box<str>],
    /// Set once any interim byte was written to the client: from then on the exchange can
    /// no longer be answered with a status of the proxy's, nor retried on another backend.
    pub relayed: bool,
}

/// Reads the upstream's response head into `ubuf` (which may hold bytes after it). Interim
/// 1xx responses before it are relayed to the client when [`relays_interim`] says so, as
/// [`interim_response_head`] writes them, and dropped otherwise; more than [`MAX_INTERIM`]
/// of them is a bad response. A 101 is returned only when `how.upgrade` (the request asked
/// for one); otherwise it is refused as malformed.
pub async fn read_response_head(
    upstream: &mut Transport,
    ubuf: &mut Vec<u8>,
    how: &HeadRead,
    dl: &mut Deadline,
    any_byte: &mut bool,
    interim: &mut Interim<'_>,
) -> Result<ResponseHead, HeadFail> {
    let HeadRead {
        ref limits,
        timeout,
        upgrade,
        max_read,
        mut ready,
    } = *how;
    let mut deadline = crate::clock::now() + timeout;
    // Room for a typical response's fields at once: grown from empty, the vector would be
    // allocated and then reallocated for every response (callgrind: ~800 instructions).
    let mut head = ResponseHead {
        headers: Vec::with_capacity(16),
        ..ResponseHead::default()
    };
    let mut interims = 0;
    loop {
        if !ubuf.is_empty() {
            match parse_response(ubuf, limits, &mut head) {
                Ok(Parsed::Complete(())) => {
                    if head.status == 101 {
                        // HTTP/1.0 has no 101 and no upgrade (RFC 9110 §7.8, §15.2.2).
                        return if upgrade && head.minor_version == 1 {
                            Ok(head)
                        } else {
                            Err(HeadFail::Bad)
                        };
                    }
                    if (100..200).contains(&head.status) {
                        interims += 1;
                        if interims > MAX_INTERIM {
                            return Err(HeadFail::Bad);
                        }
                        if relays_interim(head.status, interim.client_minor) {
                            let mut out = Vec::with_capacity(head.head_len + 16);
                            interim_response_head(ubuf, &head, interim.hide, &mut out);
                            let n = out.len();
                            interim.relayed = true;
                            let writing = crate::clock::now();
                            write_from(interim.client, &mut out, 0, n, dl, interim.write_timeout)
                                .await
                                .map_err(HeadFail::Client)?;
                            // The time the client took is not the backend's: its head
                            // deadline moves by as much.
                            deadline += crate::clock::now().saturating_duration_since(writing);
                        }
                        ubuf.drain(..head.head_len);
                        continue;
                    }
                    return Ok(head);
                }
                Ok(Parsed::Partial) => {}
                Err(_) => return Err(HeadFail::Bad),
            }
        }
        if ubuf.capacity() - ubuf.len() < max_read {
            ubuf.reserve(max_read);
        }
        // A direct read waits for nothing, so it comes before the deadline's check: a
        // response found ready just as the time ran out is read, not timed out.
        let now = if std::mem::take(&mut ready) {
            upstream.read_now(ubuf, max_read)
        } else {
            None
        };
        match now {
            Some(Ok(0)) => return Err(HeadFail::Io(IoFail::Eof)),
            Some(Ok(_)) => {}
            Some(Err(e)) if !crate::transport::would_wait(&e) => {
                return Err(HeadFail::Io(IoFail::Io(e)))
            }
            // Not there after all (or TLS): wait for it.
            _ => {
                let left = deadline.saturating_duration_since(crate::clock::now());
                if left.is_zero() {
                    return Err(HeadFail::Io(IoFail::Timeout));
                }
                read_more_at_most(upstream, ubuf, dl, left, max_read)
                    .await
                    .map_err(HeadFail::Io)?;
            }
        }
        *any_byte = true;
    }
}

/// Which end of a relay a wait (and its failure) belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The source: waits for it are bounded by `read_timeout` and fail as
    /// [`RelayError::Read`].
    Src,
    /// The destination: waits for it are bounded by `write_timeout` and fail as
    /// [`RelayError::Write`].
    Dst,
}

/// One wait begun by [`Leg::begin`]: its bound, and for a wait on the paced side when it
/// started and whether the rate (not the per-wait timeout) is what bounds it.
#[must_use]
pub struct Wait {
    pub timeout: Duration,
    paced: Option<(Instant, bool)>,
    side: Side,
}

/// One direction of an exchange as a body relay sees it: the connection's timer, the bound
/// on each wait for the source and for the destination, whether the destination has had
/// a byte yet (from then on a failure can no longer be answered with a status), and the
/// minimum rate the client's side is held to.
pub struct Leg<'a> {
    pub deadline: &'a mut Deadline,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Set once anything was written to the destination.
    pub written: &'a mut bool,
    /// The minimum rate of the side `paced` (the client's), over the whole body.
    pub pace: Pace,
    pub paced: Side,
    /// A response being stored by the route's cache: the decoded body is kept here too.
    pub tee: Option<&'a mut crate::cache::Tee>,
}

impl<'a> Leg<'a> {
    /// A request body's leg, client → upstream: each wait for the client is bounded by
    /// `client_body`, each wait for the upstream by `upstream` (its upstream's
    /// [`Config::upstream_response`]), and the client is held to `client_body_min_rate` over
    /// the body.
    pub fn request(
        deadline: &'a mut Deadline,
        cfg: &Config,
        upstream: Duration,
        written: &'a mut bool,
    ) -> Leg<'a> {
        let t = &cfg.timeouts;
        let mut leg = Leg::new(deadline, t.client_body, upstream, written);
        leg.pace = Pace::new(t.client_body, cfg.limits.client_body_min_rate);
        leg.paced = Side::Src;
        leg
    }

    /// A response body's leg, upstream → client: each wait for the upstream is bounded by
    /// `upstream` (its upstream's [`Config::upstream_response`]), each wait for the client by
    /// `client_send`, and the client is held to `client_send_min_rate` over the body.
    pub fn response(
        deadline: &'a mut Deadline,
        cfg: &Config,
        upstream: Duration,
        written: &'a mut bool,
    ) -> Leg<'a> {
        let t = &cfg.timeouts;
        let mut leg = Leg::new(deadline, upstream, t.client_send, written);
        leg.pace = Pace::new(t.client_send, cfg.limits.client_send_min_rate);
        leg.paced = Side::Dst;
        leg
    }

    /// A leg whose waits for the source are bounded by `read_timeout`, for the destination
    /// by `write_timeout`, with no minimum rate.
    pub fn new(
        deadline: &'a mut Deadline,
        read_timeout: Duration,
        write_timeout: Duration,
        written: &'a mut bool,
    ) -> Leg<'a> {
        Leg {
            deadline,
            read_timeout,
            write_timeout,
            written,
            pace: Pace::OFF,
            paced: Side::Src,
            tee: None,
        }
    }

    /// Begins a wait on `side`: its bound is that side's timeout or, on the paced side, what
    /// the minimum rate leaves when that is less. Fails at once when nothing is left.
    #[inline]
    pub fn begin(&self, side: Side) -> Result<Wait, RelayError> {
        let timeout = match side {
            Side::Src => self.read_timeout,
            Side::Dst => self.write_timeout,
        };
        let left = if side == self.paced {
            self.pace.left()
        } else {
            None
        };
        match left {
            None => Ok(Wait {
                timeout,
                paced: None,
                side,
            }),
            Some(left) if left.is_zero() => Err(RelayError::TooSlow),
            Some(left) => Ok(Wait {
                timeout: timeout.min(left),
                paced: Some((crate::clock::now(), left < timeout)),
                side,
            }),
        }
    }

    /// Ends a wait begun by [`Leg::begin`]: charges its time to the rate, credits the
    /// `moved` bytes it moved on the paced side, and maps its failure to that side's error
    /// ([`RelayError::TooSlow`] when the rate bounded it and it timed out).
    #[inline]
    pub fn end<T>(
        &mut self,
        wait: Wait,
        r: Result<T, IoFail>,
        moved: usize,
    ) -> Result<T, RelayError> {
        let mut rate_bound = false;
        if let Some((started, binds)) = wait.paced {
            self.pace.waited += crate::clock::now().saturating_duration_since(started);
            rate_bound = binds;
        }
        match r {
            Ok(v) => {
                self.moved(wait.side, moved);
                Ok(v)
            }
            Err(IoFail::Timeout) if rate_bound => Err(RelayError::TooSlow),
            Err(e) => Err(match wait.side {
                Side::Src => RelayError::Read(e),
                Side::Dst => RelayError::Write(e),
            }),
        }
    }

    /// Credits `n` bytes moved on `side` without a wait (a non-blocking splice or send).
    #[inline]
    pub fn moved(&mut self, side: Side, n: usize) {
        if side == self.paced {
            self.pace.bytes = self.pace.bytes.saturating_add(n as u64);
        }
    }

    /// Notes `n` bytes read from the source that were chunk framing, not payload: on the
    /// paced side they earn no time ([`Pace::framing`]).
    #[inline]
    pub fn framing(&mut self, n: usize) {
        if self.paced == Side::Src {
            self.pace.framing = self.pace.framing.saturating_add(n as u64);
        }
    }

    /// Reads more of the body from `src` into `buf` (one wait on the source).
    pub async fn read<S: AsyncReadRent>(
        &mut self,
        src: &mut S,
        buf: &mut Vec<u8>,
    ) -> Result<usize, RelayError> {
        let wait = self.begin(Side::Src)?;
        let r = read_more(src, buf, self.deadline, wait.timeout).await;
        let n = *r.as_ref().unwrap_or(&0);
        self.end(wait, r, n)
    }

    /// Writes `buf[from..to]` to `dst`, each wait bounded by the write timeout.
    pub async fn write<D: AsyncWriteRent>(
        &mut self,
        dst: &mut D,
        buf: &mut Vec<u8>,
        from: usize,
        to: usize,
    ) -> Result<(), RelayError> {
        *self.written = true;
        let wait = self.begin(Side::Dst)?;
        self.client_wait(true);
        let r = write_from(dst, buf, from, to, self.deadline, wait.timeout).await;
        self.client_wait(false);
        self.end(wait, r, to - from)
    }

    /// A relay filling the cache tells the requests waiting on it when it waits on its
    /// client ([`crate::cache::Tee::client_wait`]).
    #[inline]
    fn client_wait(&self, waiting: bool) {
        if let Some(tee) = self.tee.as_deref() {
            tee.client_wait(waiting.then(crate::clock::now));
        }
    }

    /// Writes all of `out`, then `buf[from..to]`, to `dst` in vectored writes, and empties
    /// `out`.
    pub async fn flush_with<D: AsyncWriteRent>(
        &mut self,
        dst: &mut D,
        out: &mut Vec<u8>,
        buf: &mut Vec<u8>,
        from: usize,
        to: usize,
    ) -> Result<(), RelayError> {
        *self.written = true;
        let n = out.len();
        let wait = self.begin(Side::Dst)?;
        self.client_wait(true);
        let r = write_two_from(dst, out, 0..n, buf, from..to, self.deadline, wait.timeout).await;
        self.client_wait(false);
        self.end(wait, r, n + (to - from))?;
        out.clear();
        Ok(())
    }

    /// Writes all of `out` to `dst` and empties it.
    pub async fn flush<D: AsyncWriteRent>(
        &mut self,
        dst: &mut D,
        out: &mut Vec<u8>,
    ) -> Result<(), RelayError> {
        let n = out.len();
        self.write(dst, out, 0, n).await?;
        out.clear();
        Ok(())
    }
}

/// How one body is relayed: framing in and out and its size limit.
pub struct BodyPlan<'a> {
    pub incoming: BodyFraming,
    pub outgoing: OutFraming,
    pub limit: u64,
    /// Bound on one chunk-size line or the trailer section.
    pub chunk_overhead: usize,
    /// What becomes of a chunked body's trailer fields when it is chunked on the way out:
    /// relayed, those the filter keeps (a response's, less what its head did not show), or
    /// with `None` dropped (a request's: RFC 9110 §6.5.1 allows it, and it keeps fields
    /// like Content-Length or Host out of a backend's trailer parser). Boxed: every
    /// request's future holds a pointer, not the filter.
    pub trailers: Option<Box<TrailerFilter<'a>>>,
}

/// The last chunk of a body chunked on the way out, with the trailer fields `trailers` lets
/// through of those `decoder` kept.
fn last_chunk(
    decoder: Option<&ChunkedDecoder>,
    trailers: Option<&TrailerFilter>,
    out: &mut Vec<u8>,
) {
    match (decoder, trailers) {
        (Some(d), Some(f)) => encode_last_chunk(&d.trailers, &|name| f.keeps(name), out),
        _ => encode_last_chunk(b"", &|_| true, out),
    }
}

/// One body as it arrives: where its bytes are in what was read (Content-Length counted
/// down, chunked decoded, close-delimited to the end) and reading the next piece. The step
/// every body relay shares (this one, and the compressing one in [`crate::compress`]).
pub struct Incoming {
    framing: BodyFraming,
    remaining: u64,
    pub decoder: Option<ChunkedDecoder>,
    /// The whole body has been seen.
    pub done: bool,
}

/// Large bodies are read in pieces of this size.
pub const RELAY_BUF: usize = 64 * 1024;

impl Incoming {
    pub fn new(framing: BodyFraming, chunk_overhead: usize) -> Incoming {
        let remaining = match framing {
            BodyFraming::Length(n) => n,
            _ => u64::MAX,
        };
        Incoming {
            framing,
            remaining,
            decoder: (framing == BodyFraming::Chunked).then(|| ChunkedDecoder::new(chunk_overhead)),
            done: framing == BodyFraming::None || remaining == 0,
        }
    }

    /// The next piece of body at the start of `avail`: its payload's range within `avail`
    /// and how many bytes of `avail` it took.
    pub fn step(&mut self, avail: &[u8]) -> Result<((usize, usize), usize), RelayError> {
        match self.decoder.as_mut() {
            Some(d) => {
                let step = d.decode(avail).map_err(|_| RelayError::Framing)?;
                self.done = step.done;
                Ok((step.data, step.consumed))
            }
            None => {
                let n = (avail.len() as u64).min(self.remaining) as usize;
                if matches!(self.framing, BodyFraming::Length(_)) {
                    self.remaining -= n as u64;
                    self.done = self.remaining == 0;
                }
                Ok(((0, n), n))
            }
        }
    }

    /// Everything buffered was consumed: reads the next piece into `inbuf` (emptied, at
    /// least [`RELAY_BUF`] of room). The end of a close-delimited body is its EOF.
    pub async fn refill<S: AsyncReadRent>(
        &mut self,
        src: &mut S,
        inbuf: &mut Vec<u8>,
        pos: &mut usize,
        leg: &mut Leg<'_>,
    ) -> Result<(), RelayError> {
        inbuf.clear();
        *pos = 0;
        if inbuf.capacity() < RELAY_BUF {
            inbuf.reserve(RELAY_BUF);
        }
        match leg.read(src, inbuf).await {
            Ok(_) => Ok(()),
            Err(RelayError::Read(IoFail::Eof)) if self.framing == BodyFraming::UntilClose => {
                self.done = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Relays one body from `src` to `dst`. Bytes already read sit in `inbuf[*pos..]`; `out`
/// holds bytes to send first (a head) and is flushed with the first payload. `incoming` says
/// how the body is delimited on the way in, `outgoing` how to write it. On success `*pos`
/// points just past the body in `inbuf` (pipelined bytes may follow).
pub async fn relay_body<S: AsyncReadRent, D: AsyncWriteRent>(
    src: &mut S,
    inbuf: &mut Vec<u8>,
    pos: &mut usize,
    dst: &mut D,
    out: &mut Vec<u8>,
    plan: &BodyPlan<'_>,
    leg: &mut Leg<'_>,
) -> Result<u64, RelayError> {
    let BodyPlan {
        incoming,
        outgoing,
        limit,
        chunk_overhead,
        ..
    } = *plan;
    let mut body = Incoming::new(incoming, chunk_overhead);
    let rechunk = outgoing == OutFraming::Chunked;
    let mut total: u64 = 0;
    // Whether `inbuf` holds bytes this relay read (credited to the leg), not an earlier read's.
    let mut read = false;
    loop {
        while !body.done && *pos < inbuf.len() {
            let (piece, consumed) = body.step(&inbuf[*pos..])?;
            let data = (*pos + piece.0, *pos + piece.1);
            let len = data.1 - data.0;
            total += len as u64;
            if read {
                leg.framing(consumed.saturating_sub(len));
            }
            // A chunk whose size line already says it cannot fit is refused there, before
            // its bytes are waited for (and before the head goes out with the first ones).
            let announced = body.decoder.as_ref().map_or(0, ChunkedDecoder::announced);
            if total.saturating_add(announced) > limit {
                return Err(RelayError::TooLarge);
            }
            if len > 0 {
                if let Some(tee) = leg.tee.as_deref_mut() {
                    tee.push(&inbuf[data.0..data.1]);
                }
                if rechunk {
                    encode_chunk(&inbuf[data.0..data.1], out);
                } else if out.is_empty() && len >= 4096 {
                    // Large piece, nothing pending: write straight from the read buffer.
                    leg.write(dst, inbuf, data.0, data.1).await?;
                } else if len >= 4096 {
                    // Large piece behind a pending head: both in one vectored write, the
                    // piece from the read buffer (not copied behind the head).
                    leg.flush_with(dst, out, inbuf, data.0, data.1).await?;
                } else {
                    out.extend_from_slice(&inbuf[data.0..data.1]);
                }
            }
            *pos += consumed;
        }
        if body.done {
            if rechunk {
                last_chunk(body.decoder.as_ref(), plan.trailers.as_deref(), out);
            }
            leg.flush(dst, out).await?;
            return Ok(total);
        }
        if !out.is_empty() {
            leg.flush(dst, out).await?;
        }
        crate::coop::step().await;
        body.refill(src, inbuf, pos, leg).await?;
        read = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splice(enabled: bool, min_bytes: u64) -> SpliceConfig {
        SpliceConfig {
            enabled,
            min_bytes,
            pipe_bytes: 1 << 20,
            max_pipes: 16,
        }
    }

    #[test]
    fn interim_responses_reach_http_1_1_clients_except_100() {
        for status in [102, 103, 104, 150, 199] {
            assert!(relays_interim(status, 1), "{status}");
            assert!(!relays_interim(status, 0), "{status} to HTTP/1.0");
        }
        assert!(!relays_interim(100, 1));
        assert!(!relays_interim(100, 0));
    }

    #[test]
    fn head_reads_are_a_quarter_of_the_splice_threshold_within_16_to_64_kib_plus_4() {
        let size = |enabled, min, after| head_read_size(&splice(enabled, min), after);
        assert_eq!(size(true, 256 * 1024, false), (64 + 4) * 1024);
        assert_eq!(size(true, 128 * 1024, false), (32 + 4) * 1024);
        assert_eq!(size(true, 0, false), (16 + 4) * 1024);
        assert_eq!(size(true, 1 << 40, false), (64 + 4) * 1024);
        assert_eq!(size(true, u64::MAX, false), (64 + 4) * 1024);
        assert_eq!(size(false, 0, false), (64 + 4) * 1024);
        // After a spliced body: the smallest read, unless splicing is off.
        assert_eq!(size(true, 256 * 1024, true), (16 + 4) * 1024);
        assert_eq!(size(true, u64::MAX, true), (16 + 4) * 1024);
        assert_eq!(size(false, 0, true), (64 + 4) * 1024);
    }

    /// The leg applies the rate to its paced side only, bounds a wait by the rate when that
    /// is shorter, names a timeout the rate caused `TooSlow` (any other stays that side's
    /// timeout), and refuses a wait when nothing is left.
    #[test]
    fn the_leg_bounds_and_names_waits_on_the_paced_side_only() {
        crate::test_engines::block_on(
            crate::test_engines::engines()[0],
            Box::pin(async {
                let s = Duration::from_secs;
                let mut dl = Deadline::new();
                let mut w = false;
                let mut leg = Leg::new(&mut dl, s(10), s(20), &mut w);
                leg.pace = Pace::new(s(10), 100);
                leg.paced = Side::Dst;
                // The other side: its own timeout, no rate, bytes not credited.
                let wait = leg.begin(Side::Src).unwrap();
                assert_eq!(wait.timeout, s(10));
                let r: Result<(), _> = leg.end(wait, Err(IoFail::Timeout), 0);
                assert!(matches!(r, Err(RelayError::Read(IoFail::Timeout))));
                leg.moved(Side::Src, 1000);
                leg.framing(1000);
                assert_eq!((leg.pace.bytes, leg.pace.framing), (0, 0));
                // The paced side: the rate leaves 10 s, less than the 20 s per wait.
                let wait = leg.begin(Side::Dst).unwrap();
                assert!(wait.timeout <= s(10) && wait.timeout > s(9));
                let r: Result<(), _> = leg.end(wait, Err(IoFail::Timeout), 0);
                assert!(matches!(r, Err(RelayError::TooSlow)), "{r:?}");
                // Bytes extend it: 3000 bytes at 100/s are 30 s more, so the per-wait
                // timeout binds again and its expiry is a plain timeout.
                leg.moved(Side::Dst, 3000);
                let wait = leg.begin(Side::Dst).unwrap();
                assert_eq!(wait.timeout, s(20));
                let r: Result<(), _> = leg.end(wait, Err(IoFail::Timeout), 0);
                assert!(
                    matches!(r, Err(RelayError::Write(IoFail::Timeout))),
                    "{r:?}"
                );
                // A completed wait credits what it moved.
                let wait = leg.begin(Side::Dst).unwrap();
                leg.end(wait, Ok(()), 500).unwrap();
                assert_eq!(leg.pace.bytes, 3500);
                // Nothing left: refused before waiting.
                leg.pace.waited = s(3600);
                assert!(matches!(leg.begin(Side::Dst), Err(RelayError::TooSlow)));
                assert!(leg.begin(Side::Src).is_ok());
                // On a paced source (a request body) chunk framing earns no time.
                (leg.paced, leg.pace) = (Side::Src, Pace::new(s(10), 100));
                leg.moved(Side::Src, 700);
                leg.framing(600);
                assert_eq!(leg.pace.left(), Some(s(11)));
            }),
        );
    }
}
