//! Stage 7 of the pipeline, *respond*: the body of a compressed response, streamed. Upstream
//! framing (length, chunked, close) is decoded as [`crate::relay::relay_body`] does, each
//! piece goes through an [`Encoder`], and what the encoder gives is written to the client
//! chunked (HTTP/1.1) or close-delimited (HTTP/1.0) as soon as it is there: no more than one
//! read (64 KiB) of input and its output are held besides the encoder's own window.
//!
//! Memory per compressing response, the encoder's state (windows, hash tables, buffers),
//! measured with a counting allocator on an 8 MiB JSON body: brotli (window 2^18) 3.7 MiB
//! at quality 4 and 4.2 MiB at 5. Not measured (allocated outside Rust's allocator), computed
//! from their parameters: zstd level 3 with its window capped at 2^19 about 1.7 MiB (512 KiB
//! window, 512 KiB hash and 256 KiB chain tables, 128 KiB in and out buffers); gzip about
//! 260 KiB (zlib's formula for level 6: 2^(15+2) + 2^(8+9) bytes, plus its state). See
//! docs/ARCHITECTURE.md.

use std::io::Write;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::config::{Algorithm, CompressConfig};
use crate::http::chunked::{encode_chunk, encode_last_chunk};
use crate::http::parse::BodyFraming;
use crate::io::IoFail;
use crate::relay::{Incoming, Leg, RelayError};

/// log2 of the zstd window: 512 KiB, which bounds its memory per response (level 3's own
/// 2 MiB gains little on web bodies).
pub const ZSTD_WINDOW_LOG: u32 = 19;

/// log2 of the brotli window: 256 KiB. Brotli's default (4 MiB) took 41 MiB per response at
/// quality 4, 2^19 took 6.7 MiB, 2^18 takes 3.7 MiB.
pub const BROTLI_WINDOW_LOG: u32 = 18;

/// Brotli's input buffer.
const BROTLI_BUFFER: usize = 16 * 1024;

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
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), cfg.zstd_level)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                Encoder::Zstd(e)
            }
        })
    }

    /// What one encoder for `alg` holds, rounded up from the figures in this file's header
    /// (brotli 3.7 MiB measured, zstd 1.7 MiB and gzip 260 KiB computed): the charge
    /// against `limits.compress_memory` ([`crate::compress::Loan`]).
    pub const fn memory(alg: Algorithm) -> u64 {
        match alg {
            Algorithm::Br => 4 << 20,
            Algorithm::Zstd => 2 << 20,
            Algorithm::Gzip => 320 << 10,
        }
    }

    /// Feeds `input`; what the encoder emits is appended to [`Encoder::output`].
    pub fn write(&mut self, input: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(input),
            Encoder::Br(e) => e.write_all(input),
            Encoder::Zstd(e) => e.write_all(input),
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

/// Body bytes a compressed relay read (decoded from the upstream's framing) and wrote
/// (coded, without the client's chunk framing).
#[derive(Clone, Copy, Debug, Default)]
pub struct Coded {
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Relays one body from `src` to `dst` through `enc`. Bytes already read sit in
/// `inbuf[*pos..]`; `out` holds the client head, sent with the first coded bytes. `incoming`
/// says how the body is delimited; `chunked` whether the client gets chunked framing (else
/// the body ends with the connection). Upstream trailers are dropped (they describe the
/// uncoded body). On success `*pos` points just past the body in `inbuf`.
#[allow(clippy::too_many_arguments)]
pub async fn relay_compressed<S: AsyncReadRent, D: AsyncWriteRent>(
    src: &mut S,
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
    loop {
        while !body.done && *pos < inbuf.len() {
            let (piece, consumed) = body.step(&inbuf[*pos..])?;
            let data = (*pos + piece.0, *pos + piece.1);
            if data.1 > data.0 {
                coded.bytes_in += (data.1 - data.0) as u64;
                enc.write(&inbuf[data.0..data.1]).map_err(coding)?;
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
