//! Part of stage 6, *forward*: the chunked transfer-coding (RFC 9112 §7.1). Decoding is a
//! pure, incremental state machine. The relay feeds it whatever bytes arrived; it hands back
//! payload ranges and keeps the trailer section. It never allocates per chunk and never
//! guesses: bad hex, an over-long size, a bare LF or CR, or junk after the data is an error.
//!
//! Encoding is written here only: chunk-size lines, the CRLF after a chunk's data and the last
//! chunk, for [`crate::relay`] (copied bodies re-chunked) and [`crate::splice`]
//! (close-delimited bodies spliced as chunks).

/// The decoder's position in the chunked grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `digits` counts them to refuse overflow.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size or an extension's value: BWS, which may only lead to `;` or CR.
    ExtStart {
        size: u64,
    },
    /// An extension (RFC 9112 §7.1.1: `BWS ";" BWS name [BWS "=" BWS value]`, the name a
    /// token, the value a token or a quoted string), at `at`.
    Extension {
        size: u64,
        at: Ext,
    },
    /// Saw CR ending the size line; expect LF.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data, `remaining` bytes to go.
    Data {
        remaining: u64,
    },
    /// After data: expect CR then LF.
    DataCr,
    DataLf,
    /// In the trailer section: at the start of a line (`empty` = nothing yet on this line).
    TrailerLine {
        empty: bool,
    },
    /// Saw CR inside the trailer section; `empty` says whether the line was empty.
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Where in one chunk extension the decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// After `;`: BWS, then the name's first byte.
    NameStart,
    Name,
    /// After the name: BWS, then `=`, `;` or CR.
    AfterName,
    /// After `=`: BWS, then a token or `"`.
    ValueStart,
    Token,
    Quoted,
    /// After `\` in a quoted string.
    QuotedPair,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedError {
    BadSize,
    SizeTooLong,
    BadLineEnding,
    BadExtension,
    BadTrailer,
    TooLarge,
}

/// What one call to [`ChunkedDecoder::decode`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes of input consumed (framing and payload).
    pub consumed: usize,
    /// Payload bytes within the input, as a range (empty when the call only consumed framing).
    pub data: (usize, usize),
    /// The terminating chunk and trailer section have been read.
    pub done: bool,
}

#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current chunk-size line (with extensions), or of the trailer section:
    /// bounded so that framing cannot grow without payload. Reset at each size line, so a
    /// body of many small chunks is bounded by the body limit, not by this.
    overhead: usize,
    max_overhead: usize,
    /// Raw trailer fields (each line with its CRLF), forwarded when re-encoding.
    pub trailers: Vec<u8>,
}

impl ChunkedDecoder {
    /// `max_overhead` bounds the bytes spent on size lines, extensions and trailers, which
    /// are not counted against the body limit.
    pub fn new(max_overhead: usize) -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
            overhead: 0,
            max_overhead,
            trailers: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes the current chunk's size line announced and that have not been
    /// returned yet: a body limit refuses a chunk too large for it at its size line, not
    /// after waiting for its bytes.
    pub fn announced(&self) -> u64 {
        match self.state {
            State::Data { remaining } => remaining,
            State::SizeLf { size } | State::ExtStart { size } | State::Extension { size, .. } => {
                size
            }
            State::Size { size, .. } => size,
            _ => 0,
        }
    }

    fn charge(&mut self, n: usize) -> Result<(), ChunkedError> {
        self.overhead += n;
        if self.overhead > self.max_overhead {
            Err(ChunkedError::TooLarge)
        } else {
            Ok(())
        }
    }

    /// Consumes framing from `input` up to the next payload bytes, and returns them.
    /// Call again with the rest of the input until `consumed == input.len()` or `done`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Data { remaining } => {
                    let n = remaining.min((input.len() - i) as u64) as usize;
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok(Step {
                        consumed: i + n,
                        data: (i, i + n),
                        done: false,
                    });
                }
                State::Size { size, digits } => {
                    let v = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match v {
                        Some(v) => {
                            if digits >= 15 {
                                return Err(ChunkedError::SizeTooLong);
                            }
                            self.state = State::Size {
                                size: size * 16 + u64::from(v),
                                digits: digits + 1,
                            };
                        }
                        None if digits == 0 => return Err(ChunkedError::BadSize),
                        None => match b {
                            b'\r' => self.state = State::SizeLf { size },
                            b';' => {
                                let at = Ext::NameStart;
                                self.state = State::Extension { size, at }
                            }
                            b' ' | b'\t' => self.state = State::ExtStart { size },
                            _ => return Err(ChunkedError::BadSize),
                        },
                    }
                    self.charge(1)?;
                }
                State::ExtStart { size } => {
                    match b {
                        b'\r' => self.state = State::SizeLf { size },
                        b';' => {
                            let at = Ext::NameStart;
                            self.state = State::Extension { size, at }
                        }
                        b' ' | b'\t' => {}
                        _ => return Err(ChunkedError::BadExtension),
                    }
                    self.charge(1)?;
                }
                State::Extension { size, at } => {
                    self.state = extension(size, at, b)?;
                    self.charge(1)?;
                }
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.charge(1)?;
                    if size == 0 {
                        // The trailer section gets its own budget.
                        self.overhead = 0;
                    }
                    self.state = if size == 0 {
                        State::TrailerLine { empty: true }
                    } else {
                        State::Data { remaining: size }
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.state = State::Size { size: 0, digits: 0 };
                    self.overhead = 0;
                }
                State::TrailerLine { empty } => {
                    match b {
                        b'\r' => self.state = State::TrailerLf { empty },
                        // obs-fold: a trailer line may not start with whitespace.
                        b' ' | b'\t' if empty => return Err(ChunkedError::BadTrailer),
                        b'\t' | b' '..=b'~' | 0x80..=0xff => {
                            self.trailers.push(b);
                            self.state = State::TrailerLine { empty: false };
                        }
                        _ => return Err(ChunkedError::BadTrailer),
                    }
                    self.charge(1)?;
                }
                State::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.charge(1)?;
                    if empty {
                        self.state = State::Done;
                        self.validate_trailers()?;
                        return Ok(Step {
                            consumed: i + 1,
                            data: (i + 1, i + 1),
                            done: true,
                        });
                    }
                    self.trailers.extend_from_slice(b"\r\n");
                    self.state = State::TrailerLine { empty: true };
                }
                State::Done => {
                    return Ok(Step {
                        consumed: i,
                        data: (i, i),
                        done: true,
                    })
                }
            }
            i += 1;
        }
        Ok(Step {
            consumed: i,
            data: (i, i),
            done: self.state == State::Done,
        })
    }

    /// Each trailer line must be `token ":" value`.
    fn validate_trailers(&self) -> Result<(), ChunkedError> {
        for line in self.trailers.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(ChunkedError::BadTrailer)?;
            if colon == 0 || !line[..colon].iter().all(|&b| is_tchar(b)) {
                return Err(ChunkedError::BadTrailer);
            }
        }
        Ok(())
    }
}

/// One byte of a chunk extension at `at` (see [`Ext`]): the next state, or the error for a
/// byte the grammar does not allow there (an empty name, a space inside a name, an
/// unterminated or control-bearing quoted string).
fn extension(size: u64, at: Ext, b: u8) -> Result<State, ChunkedError> {
    let ws = b == b' ' || b == b'\t';
    let to = |at| Ok(State::Extension { size, at });
    match (at, b) {
        (Ext::NameStart | Ext::ValueStart | Ext::AfterName, _) if ws => to(at),
        (Ext::NameStart, _) if is_tchar(b) => to(Ext::Name),
        (Ext::Name, _) if is_tchar(b) => to(Ext::Name),
        (Ext::Name, _) if ws => to(Ext::AfterName),
        (Ext::Name | Ext::AfterName, b'=') => to(Ext::ValueStart),
        (Ext::Name | Ext::AfterName | Ext::Token, b';') => to(Ext::NameStart),
        (Ext::Name | Ext::AfterName | Ext::Token, b'\r') => Ok(State::SizeLf { size }),
        (Ext::ValueStart, b'"') => to(Ext::Quoted),
        (Ext::ValueStart | Ext::Token, _) if is_tchar(b) => to(Ext::Token),
        (Ext::Token, _) if ws => Ok(State::ExtStart { size }),
        (Ext::Quoted, b'"') => Ok(State::ExtStart { size }),
        (Ext::Quoted, b'\\') => to(Ext::QuotedPair),
        // qdtext: HTAB, SP, VCHAR but `"` and `\`, obs-text; a quoted-pair: any of those.
        (Ext::Quoted | Ext::QuotedPair, b'\t' | b' '..=b'~' | 0x80..=0xff) => to(Ext::Quoted),
        _ => Err(ChunkedError::BadExtension),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Writes the chunk-size line for `len` payload bytes into `out`.
pub fn encode_chunk_header(len: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Ends a chunk's data.
pub const CHUNK_DATA_END: &[u8] = b"\r\n";

/// Writes one whole chunk of non-empty `data` into `out`: its size line, the data, the CRLF.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    encode_chunk_header(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_DATA_END);
}

/// Trailer fields never forwarded: those RFC 9110 §6.5.1 does not allow in a trailer
/// section, which a recipient that merged them into the head would act on: framing, routing
/// and connection fields (it would re-frame or re-route the message), request modifiers
/// (controls, conditionals), authentication and cookies, response control data (a
/// `Location`, a `Cache-Control` that a cache would store with the response) and the
/// content's own metadata. nginx drops every trailer field; HAProxy refuses such a
/// response. Fields a trailer may carry (checksums, timings, `grpc-status`) pass.
const NEVER_IN_TRAILERS: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
    b"range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
    b"max-forwards",
    b"authorization",
    b"proxy-authorization",
    b"www-authenticate",
    b"proxy-authenticate",
    b"authentication-info",
    b"cookie",
    b"set-cookie",
    b"age",
    b"cache-control",
    b"expires",
    b"date",
    b"location",
    b"retry-after",
    b"vary",
    b"warning",
    b"pragma",
    b"content-encoding",
    b"content-type",
    b"content-range",
    b"content-location",
    b"strict-transport-security",
];

/// Writes the last chunk and the (already validated) trailer section, less the fields in
/// [`NEVER_IN_TRAILERS`] (in any spelling with `_` for `-`) and those `keep` refuses.
pub fn encode_last_chunk(trailers: &[u8], keep: &dyn Fn(&[u8]) -> bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for line in trailers.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or(line);
        if NEVER_IN_TRAILERS
            .iter()
            .any(|n| super::fields::same_field(n, name))
            || !keep(name)
        {
            continue;
        }
        out.extend_from_slice(line);
        if !line.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` delivered in pieces cut at `cuts`; returns payload and trailers.
    fn decode_split(input: &[u8], cut: usize) -> Result<(Vec<u8>, Vec<u8>, usize), ChunkedError> {
        let mut d = ChunkedDecoder::new(1 << 16);
        let mut payload = Vec::new();
        let mut total = 0;
        for piece in [&input[..cut], &input[cut..]] {
            let mut pos = 0;
            while pos < piece.len() && !d.is_done() {
                let step = d.decode(&piece[pos..])?;
                payload.extend_from_slice(&piece[pos + step.data.0..pos + step.data.1]);
                pos += step.consumed;
            }
            total += pos;
            if d.is_done() {
                return Ok((payload, d.trailers.clone(), total));
            }
        }
        assert!(d.is_done(), "not done");
        Ok((payload, d.trailers, total))
    }

    #[test]
    fn valid_bodies_split_at_every_byte() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            (b"0\r\n\r\n", b"", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
            (
                b"5;ext=1;q=\"a b\"\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                b"hello world",
                b"",
            ),
            (
                b"5 ; a = \"x\\\"y\" ;b;c=d \r\nhello\r\n0;z\r\n\r\n",
                b"hello",
                b"",
            ),
            (
                b"A \r\n0123456789\r\n0\r\nX-Sum: abc\r\nY: 1\r\n\r\n",
                b"0123456789",
                b"X-Sum: abc\r\nY: 1\r\n",
            ),
            (b"000\r\n\r\n", b"", b""),
        ];
        for (input, want, trailers) in cases {
            for cut in 0..=input.len() {
                let (payload, t, consumed) = decode_split(input, cut).unwrap();
                assert_eq!(&payload, want, "cut {cut}");
                assert_eq!(&t, trailers);
                assert_eq!(consumed, input.len());
            }
        }
    }

    #[test]
    fn stops_at_end_leaving_pipelined_bytes() {
        let input = b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (payload, _, consumed) = decode_split(input, 3).unwrap();
        assert_eq!(payload, b"a");
        assert_eq!(consumed, 11);
    }

    #[test]
    fn invalid_bodies_are_errors_at_every_split() {
        let bad: &[&[u8]] = &[
            b"x\r\n\r\n",
            b"-1\r\na\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5;a\x01\r\nhello\r\n0\r\n\r\n",
            // Extensions outside RFC 9112 §7.1.1's grammar.
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a b=c\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;=b\r\nhello\r\n0\r\n\r\n",
            b"5;a=b c\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"b\"c\r\nhello\r\n0\r\n\r\n",
            b"5;a=(b)\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"b\x7f\"\r\nhello\r\n0\r\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
        ];
        for input in bad {
            for cut in 0..=input.len() {
                assert!(
                    decode_split(input, cut).is_err(),
                    "accepted {:?} cut {cut}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn many_small_chunks_are_not_limited_by_framing_budget() {
        let mut d = ChunkedDecoder::new(64);
        let body = "1;e=x\r\na\r\n".repeat(10_000) + "0\r\n\r\n";
        let mut pos = 0;
        let mut payload = 0;
        while !d.is_done() {
            let step = d.decode(&body.as_bytes()[pos..]).unwrap();
            payload += step.data.1 - step.data.0;
            pos += step.consumed;
        }
        assert_eq!(payload, 10_000);
    }

    #[test]
    fn overhead_is_bounded() {
        let mut d = ChunkedDecoder::new(64);
        let ext = format!("1;{}\r\n", "e".repeat(100));
        assert_eq!(d.decode(ext.as_bytes()), Err(ChunkedError::TooLarge));
    }

    #[test]
    fn encoder_roundtrip() {
        let mut out = Vec::new();
        for len in [1usize, 15, 16, 255, 4096, 1 << 20] {
            out.clear();
            encode_chunk_header(len, &mut out);
            assert_eq!(out, format!("{len:x}\r\n").as_bytes());
        }
        out.clear();
        encode_chunk(b"hello", &mut out);
        assert_eq!(out, b"5\r\nhello\r\n");
        out.clear();
        encode_last_chunk(b"X: 1\r\n", &|_| true, &mut out);
        assert_eq!(out, b"0\r\nX: 1\r\n\r\n");
        out.clear();
        encode_last_chunk(b"", &|_| true, &mut out);
        assert_eq!(out, b"0\r\n\r\n");
    }

    #[test]
    fn framing_and_connection_fields_are_dropped_from_trailers() {
        let mut out = Vec::new();
        encode_last_chunk(
            b"Content-Length: 5\r\nX-A: 1\r\ntransfer-encoding: chunked\r\nHost: h\r\n\
              Connection: c\r\nKeep-Alive: 1\r\nProxy-Connection: p\r\nTE: t\r\n\
              Trailer: X\r\nUpgrade: u\r\nX-Content-Length: 2\r\nContent_Length: 3\r\n\
              X-Hidden: h\r\nSet-Cookie: s=1\r\nLocation: /x\r\nCache-Control: max-age=9\r\n\
              Content-Type: text/html\r\nWWW_Authenticate: Basic\r\nServer-Timing: db;dur=5\r\n",
            &|name| !name.eq_ignore_ascii_case(b"x-hidden"),
            &mut out,
        );
        assert_eq!(
            out,
            b"0\r\nX-A: 1\r\nX-Content-Length: 2\r\nServer-Timing: db;dur=5\r\n\r\n"
        );
    }
}
