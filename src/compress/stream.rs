//! Stage 7 of the pipeline, *respond*: the body of a compressed response, streamed. Upstream
//! framing (length, chunked, close) is decoded as [`crate::relay::relay_body`] does, each
//! piece goes through an [`Encoder`], and what the encoder gives is written to the client
//! chunked (HTTP/1.1) or close-delimited (HTTP/1.0) as soon as it is there: no more than one
//! read (64 KiB) of input and its output are held besides the encoder's own window.
//!
//! Memory per compressing response, the encoder's state (windows, hash tables, buffers),
//! peak over a 4 MiB JSON body fed in 64 KiB reads (a counting allocator for brotli,
//! `mallinfo2` for zstd's C allocations; loadtest/results/2026-12-06-vm-probes-5/): brotli
//! (window 2^18) from 0.3 MiB at quality 0 to 3.2 MiB at 4 and 10.8 MiB at 7; zstd (window
//! 2^19) from 1.4 MiB at level 1 to 2.1 MiB at 3, and 41 MiB at 12 with the level's own hash
//! and chain tables, 6.3 MiB with them capped at 2^20 and 2^19 entries ([`ZSTD_TABLES`]); gzip
//! about 0.5 MiB. Each is charged by its level ([`Encoder::memory`]). See
//! docs/ARCHITECTURE.md.

use std::io::Write;
use std::time::Duration;

use monoio::io::AsyncWriteRent;

use crate::config::{Algorithm, CompressConfig};
use crate::http::chunked::{encode_chunk, encode_last_chunk};
use crate::http::parse::BodyFraming;
use crate::io::IoFail;
use crate::relay::{Incoming, Leg, RelayError};
use crate::transport::Transport;

/// log2 of the zstd window: 512 KiB, which bounds its memory per response (level 3's own
/// 2 MiB gains little on web bodies).
pub const ZSTD_WINDOW_LOG: u32 = 19;

/// log2 of the brotli window: 256 KiB. Brotli's default (4 MiB) took 41 MiB per response at
/// quality 4, 2^19 took 6.7 MiB, 2^18 takes 3.7 MiB.
pub const BROTLI_WINDOW_LOG: u32 = 18;

/// Brotli's input buffer.
const BROTLI_BUFFER: usize = 16 * 1024;

/// log2 of zstd's hash and chain table entries, per level 1..=12 (libzstd 1.5's defaults for
/// an unknown size), capped at 2^20 and 2^19: with the window at 2^19 larger tables find
/// little more, and level 12's own took 41 MiB per response.
const ZSTD_TABLES: [(u32, u32); 12] = [
    (14, 13),
    (16, 15),
    (17, 16),
    (18, 18),
    (19, 18),
    (19, 18),
    (20, 19),
    (20, 19),
    (20, 19),
    (20, 19),
    (20, 19),
    (20, 19),
];

/// Peak bytes of one encoder, measured (this file's header) and rounded up, by level:
/// brotli by quality 0..=7, zstd by level 1..=12 (with [`ZSTD_TABLES`]).
const BROTLI_MEMORY_KIB: [u64; 8] = [512, 512, 1536, 1536, 3584, 4096, 5120, 11_264];
const ZSTD_MEMORY_KIB: [u64; 12] = [
    1536, 1792, 2304, 3584, 4096, 4096, 6656, 6656, 6656, 6656, 6656, 6656,
];
const GZIP_MEMORY_KIB: u64 = 640;

/// One response's encoder; its output accumulates in an inner `Vec` taken by
/// [`Encoder::output`].
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// An encoder for `alg` at the route's level. Fails only when zstd cannot allocate its
    /// context.
    pub fn new(alg: Algorithm, cfg: &CompressConfig) -> std::io::Result<Encoder> {
        Ok(match alg {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(cfg.gzip_level),
            )),
            Algorithm::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                cfg.br_quality,
                BROTLI_WINDOW_LOG,
            ))),
            Algorithm::Zstd => {
                use zstd::stream::raw::CParameter;
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), cfg.zstd_level)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                let (hash, chain) = ZSTD_TABLES[zstd_index(cfg.zstd_level)];
                e.set_parameter(CParameter::HashLog(hash))?;
                e.set_parameter(CParameter::ChainLog(chain))?;
                Encoder::Zstd(e)
            }
        })
    }

    /// What one encoder for `alg` at the route's level holds (this file's header): the charge
    /// against `limits.compress_memory` ([`crate::compress::Loan`]).
    pub fn memory(alg: Algorithm, cfg: &CompressConfig) -> u64 {
        let kib = match alg {
            Algorithm::Br => BROTLI_MEMORY_KIB[(cfg.br_quality as usize).min(7)],
            Algorithm::Zstd => ZSTD_MEMORY_KIB[zstd_index(cfg.zstd_level)],
            Algorithm::Gzip => GZIP_MEMORY_KIB,
        };
        kib << 10
    }

    /// Feeds `input`; what the encoder emits is appended to [`Encoder::output`].
    pub fn write(&mut self, input: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(input),
            Encoder::Br(e) => e.write_all(input),
            Encoder::Zstd(e) => e.write_all(input),
        }
    }

    /// Makes all input so far decodable from the output (gzip's sync flush, brotli's and
    /// zstd's flush operations), at a few bytes and some ratio: done when the backend pauses,
    /// so a streamed body (server-sent events, a slow report) reaches the client as it comes.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// The coded bytes emitted so far and not yet taken (clear it once they are sent).
    pub fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// Ends the stream: the output still to send, the end of the coded body included.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// A zstd level (1..=12, as the configuration allows) as an index into the level tables.
fn zstd_index(level: i32) -> usize {
    (level.clamp(1, 12) - 1) as usize
}

/// Body bytes a compressed relay read (decoded from the upstream's framing) and wrote
/// (coded, without the client's chunk framing).
#[derive(Clone, Copy, Debug, Default)]
pub struct Coded {
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Relays one body from `src` to `dst` through `enc`, each decoded piece also pushed to
/// `leg.tee` when the response is being stored (uncoded). Bytes already read sit in
/// `inbuf[*pos..]`; `out` holds the client head, sent with the first coded bytes. `incoming`
/// says how the body is delimited; `chunked` whether the client gets chunked framing (else
/// the body ends with the connection). Upstream trailers are dropped (they describe the
/// uncoded body). On success `*pos` points just past the body in `inbuf`.
///
/// When the backend pauses (nothing more to read now: one `recv(MSG_PEEK)` after input was
/// fed, so a backend that keeps its socket full costs one peek per 64 KiB read, and nothing
/// more within [`FLUSH_AFTER`]) the encoder is flushed and what it gives is sent: a body is
/// never held back for long waiting for bytes the backend has not sent. nginx holds it,
/// unless buffering is off.
#[allow(clippy::too_many_arguments)]
pub async fn relay_compressed<D: AsyncWriteRent>(
    src: &mut Transport,
    inbuf: &mut Vec<u8>,
    pos: &mut usize,
    dst: &mut D,
    out: &mut Vec<u8>,
    (incoming, chunked, chunk_overhead): (BodyFraming, bool, usize),
    mut enc: Encoder,
    leg: &mut Leg<'_>,
) -> Result<Coded, RelayError> {
    let coding = |_| RelayError::Write(IoFail::Io(std::io::Error::other("encoder failed")));
    let mut body = Incoming::new(incoming, chunk_overhead);
    let mut coded = Coded::default();
    // Input fed since the encoder was last flushed.
    let mut fed = false;
    loop {
        while !body.done && *pos < inbuf.len() {
            let (piece, consumed) = body.step(&inbuf[*pos..])?;
            let data = (*pos + piece.0, *pos + piece.1);
            if data.1 > data.0 {
                coded.bytes_in += (data.1 - data.0) as u64;
                enc.write(&inbuf[data.0..data.1]).map_err(coding)?;
                if let Some(tee) = leg.tee.as_deref_mut() {
                    // Stored as it came: the cache keeps identity bodies.
                    tee.push(&inbuf[data.0..data.1]);
                }
                fed = true;
            }
            *pos += consumed;
        }
        if body.done {
            let rest = enc.finish().map_err(coding)?;
            frame(&rest, chunked, out, &mut coded);
            if chunked {
                encode_last_chunk(b"", &|_| true, out);
            }
            leg.flush(dst, out).await?;
            return Ok(coded);
        }
        if fed && !src.has_unread() && !more_within(src, FLUSH_AFTER).await {
            enc.flush().map_err(coding)?;
            fed = false;
        }
        let produced = enc.output();
        if !produced.is_empty() {
            frame(produced, chunked, out, &mut coded);
            produced.clear();
        }
        if !out.is_empty() {
            leg.flush(dst, out).await?;
        }
        crate::coop::step().await;
        body.refill(src, inbuf, pos, leg).await?;
    }
}

/// Appends the given bytes of a stored body to the buffer ([`send_compressed`]).
pub type ReadStored<'a> = dyn Fn(std::ops::Range<usize>, &mut Vec<u8>) -> std::io::Result<()> + 'a;

/// How much of a stored body [`send_compressed`] codes at a time.
const PIECE: usize = 64 * 1024;

/// Writes a stored identity body of `len` bytes through `enc` after `out` (the client's
/// head, already rewritten): a cache hit for a client that takes a coding, coded on the way
/// out as nginx's `gzip` codes its `proxy_cache` hits. `read(range, buf)` appends those
/// bytes of the body to `buf` (from memory or the body file); [`PIECE`] bytes are coded and
/// sent at a time, so a slow reader holds one piece and its output, not the whole body.
pub async fn send_compressed<D: AsyncWriteRent>(
    dst: &mut D,
    out: &mut Vec<u8>,
    (len, read): (usize, &ReadStored<'_>),
    chunked: bool,
    mut enc: Encoder,
    leg: &mut Leg<'_>,
) -> Result<Coded, RelayError> {
    let coding = |_| RelayError::Write(IoFail::Io(std::io::Error::other("encoder failed")));
    let mut coded = Coded::default();
    let mut piece = Vec::new();
    let mut done = 0;
    while done < len {
        let to = (done + PIECE).min(len);
        piece.clear();
        read(done..to, &mut piece).map_err(|e| RelayError::Read(IoFail::Io(e)))?;
        enc.write(&piece).map_err(coding)?;
        coded.bytes_in += piece.len() as u64;
        done = to;
        let produced = enc.output();
        frame(produced, chunked, out, &mut coded);
        produced.clear();
        if !out.is_empty() && done < len {
            leg.flush(dst, out).await?;
        }
        crate::coop::step().await;
    }
    let rest = enc.finish().map_err(coding)?;
    frame(&rest, chunked, out, &mut coded);
    if chunked {
        encode_last_chunk(b"", &|_| true, out);
    }
    leg.flush(dst, out).await?;
    Ok(coded)
}

/// How long a backend that has nothing more to read may pause before what it sent so far is
/// flushed through the encoder: a body written in small pieces a few milliseconds apart is
/// coded whole (a flush per 90-byte row halved gzip's ratio), a stream that waits for its
/// next event is delivered 20 ms after its last byte.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

/// Whether `src` has more to read within `wait` (its socket becomes readable, or closes).
/// Boxed: monoio's timers are 128-byte aligned and only a paused body waits here.
async fn more_within(src: &Transport, wait: Duration) -> bool {
    let ready = monoio::time::timeout(wait, src.tcp().readable(false));
    matches!(Box::pin(ready).await, Ok(Ok(())))
}

/// Appends coded bytes to `out`, as one chunk when `chunked`.
fn frame(coded_bytes: &[u8], chunked: bool, out: &mut Vec<u8>, coded: &mut Coded) {
    if coded_bytes.is_empty() {
        return;
    }
    coded.bytes_out += coded_bytes.len() as u64;
    if chunked {
        encode_chunk(coded_bytes, out);
    } else {
        out.extend_from_slice(coded_bytes);
    }
}
