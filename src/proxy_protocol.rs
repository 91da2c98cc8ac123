//! Stage 1¼ of the pipeline, on listeners with `proxy_protocol = true`: between the accept
//! and the listener's `allow`/`deny`, the TLS handshake and the first request read, the
//! PROXY protocol header (v1 text or v2 binary, auto-detected) an L4 balancer prepends is
//! read and its source address becomes the connection's peer ([`crate::client::Client`]'s
//! `peer`), so access lists, `X-Forwarded-For`, the access log and hash keys see the real
//! client. Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//!
//! Only a peer in `server.trusted_proxies` may send one; any other is closed. The header must
//! arrive within the connection's head deadline (`timeouts.client_header` from the accept).
//! A missing, malformed or over-long header closes the connection without an answer (the
//! peer is a balancer, not an HTTP client). Exactly the header's bytes are taken from the
//! socket (the waiting bytes are peeked, then only the header's part is consumed), so a
//! ClientHello or request that arrived in the same segment is left for the next stage.
//!
//! Toward backends, [`encode`] writes the header an upstream with `proxy_protocol` gets at the
//! start of every new connection (see [`crate::upstream::connect`]).
//!
//! The parser ([`parse`]) is a pure function of the bytes received so far: it answers
//! "incomplete" for every proper prefix of a valid header, and fails as soon as a prefix
//! cannot start one. v2 TLVs are checked for structure and otherwise ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use monoio::net::TcpStream;

use crate::shard::ShardCtx;
use crate::stats::bump;
use crate::transport::{recv_into, would_wait};

/// The longest v1 line, CRLF included (spec, 2.1).
pub const V1_MAX: usize = 107;
/// The v2 signature (spec, 2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v2 address block accepted: a Unix-socket pair (216 bytes) and 1 KiB of TLVs.
pub const V2_MAX_LEN: usize = 216 + 1024;
/// The longest header of either version.
pub const MAX_HEADER: usize = 16 + V2_MAX_LEN;

const V1_PREFIX: &[u8] = b"PROXY ";

/// Which version a header was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What a header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// TCP over IPv4 or IPv6: the client's address and the one it connected to.
    Tcp {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 `LOCAL`: the balancer's own connection (a health check); the real peer stands.
    Local,
    /// v1 `UNKNOWN`, or v2 `PROXY` with an unspecified or Unix family: the real peer stands.
    Unknown,
}

/// A complete header: its version, what it says, and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub addresses: Addresses,
    pub len: usize,
}

/// Why bytes are not a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Neither `PROXY ` nor the v2 signature (no header was sent).
    Signature,
    /// A v1 line without CRLF within 107 bytes.
    TooLong,
    /// A v1 line that is not `PROXY TCP4|TCP6 src dst sport dport` or `PROXY UNKNOWN ...`.
    BadLine,
    /// A v2 version other than 2, or a command other than LOCAL/PROXY.
    BadVersion,
    /// A v2 family/protocol other than unspecified, TCP over IPv4/IPv6, or Unix stream.
    BadFamily,
    /// A v2 address block longer than [`V2_MAX_LEN`].
    Oversized,
    /// A v2 address block shorter than its family's addresses, or TLVs that do not fill it.
    BadLength,
    /// The connection ended inside a header.
    Truncated,
}

/// Parses the start of a connection's bytes. `Ok(None)`: not complete yet (every proper
/// prefix of a valid header gives it); `Ok(Some(h))`: a header of `h.len` bytes; `Err`: these
/// bytes cannot start a valid header. Bytes after the header are not looked at.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Error> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(Error::Signature),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Error> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(Error::Signature);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Error::TooLong)
        } else {
            Ok(None)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(Error::BadLine);
    }
    let line = &window[V1_PREFIX.len().min(lf - 1)..lf - 1];
    let addresses = v1_line(line).ok_or(Error::BadLine)?;
    Ok(Some(Header {
        version: Version::V1,
        addresses,
        len: lf + 1,
    }))
}

/// The part of a v1 line after `PROXY `, without CRLF.
fn v1_line(line: &[u8]) -> Option<Addresses> {
    if !line.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    let line = std::str::from_utf8(line).ok()?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Some(Addresses::Unknown);
    }
    let mut fields = line.split(' ');
    let family = fields.next()?;
    let (src, dst, sport, dport) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if fields.next().is_some() {
        return None;
    }
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            src.parse::<Ipv4Addr>().ok()?.into(),
            dst.parse::<Ipv4Addr>().ok()?.into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>().ok()?.into(),
            dst.parse::<Ipv6Addr>().ok()?.into(),
        ),
        _ => return None,
    };
    Some(Addresses::Tcp {
        source: SocketAddr::new(src, port(sport)?),
        destination: SocketAddr::new(dst, port(dport)?),
    })
}

/// A decimal port, 0..=65535, digits only, no leading zero (spec, 2.1).
fn port(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 5 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Error> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(Error::Signature);
    }
    // Byte 13: version (high nibble, must be 2) and command (0 LOCAL, 1 PROXY).
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(Error::BadVersion);
    }
    let local = ver_cmd & 0x0f == 0;
    // Byte 14: family and protocol. LOCAL headers' family is ignored (spec, 2.2).
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    let addr_len = match fam {
        _ if local => 0,
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        0x31 => 216,
        _ => return Err(Error::BadFamily),
    };
    let Some(len) = buf.get(14..16) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > V2_MAX_LEN {
        return Err(Error::Oversized);
    }
    if len < addr_len {
        return Err(Error::BadLength);
    }
    let Some(block) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    if !local && !tlvs_fill(&block[addr_len..]) {
        return Err(Error::BadLength);
    }
    let addresses = match fam {
        _ if local => Addresses::Local,
        0x11 => {
            let ip = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&block[o..o + 4]).unwrap());
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            Addresses::Tcp {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        0x21 => {
            let ip = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&block[o..o + 16]).unwrap());
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            Addresses::Tcp {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        _ => Addresses::Unknown,
    };
    Ok(Some(Header {
        version: Version::V2,
        addresses,
        len: 16 + len,
    }))
}

/// Whether `tlvs` is a sequence of whole type-length-value entries.
fn tlvs_fill(mut tlvs: &[u8]) -> bool {
    while !tlvs.is_empty() {
        let Some(l) = tlvs.get(1..3) else {
            return false;
        };
        let end = 3 + usize::from(u16::from_be_bytes([l[0], l[1]]));
        let Some(rest) = tlvs.get(end..) else {
            return false;
        };
        tlvs = rest;
    }
    true
}

/// The header edgeshard sends a backend (`[[upstream]] proxy_protocol`) at the start of a
/// new connection. `ends`: the client's address and the address it connected to; `None`:
/// the proxy's own connection (v1 `UNKNOWN`, v2 `LOCAL`). Addresses of two families (an IPv6
/// client through a balancer, on an IPv4 listener) are both written as IPv6, the IPv4 one
/// mapped (`::ffff:a.b.c.d`), as HAProxy writes them: the client is named all the same.
pub fn encode(version: Version, ends: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    // An IPv4 client on a dual-stack socket is seen as ::ffff:a.b.c.d.
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let as_v6 = |a: SocketAddr| SocketAddr::new(v6(a.ip()).into(), a.port());
    let same = ends.map(|(s, d)| match (canon(s), canon(d)) {
        (s, d) if s.is_ipv4() == d.is_ipv4() => (s, d),
        (s, d) => (as_v6(s), as_v6(d)),
    });
    match version {
        Version::V1 => match same {
            Some((s, d)) => format!(
                "PROXY {} {} {} {} {}\r\n",
                if s.is_ipv4() { "TCP4" } else { "TCP6" },
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes(),
            None => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        Version::V2 => {
            let mut h = V2_SIGNATURE.to_vec();
            let mut block = Vec::new();
            let (cmd, fam) = match same {
                None => (0x20, 0x00),
                Some((s, d)) => {
                    match (s.ip(), d.ip()) {
                        (IpAddr::V4(a), IpAddr::V4(b)) => {
                            block.extend_from_slice(&a.octets());
                            block.extend_from_slice(&b.octets());
                        }
                        (a, b) => {
                            block.extend_from_slice(&v6(a).octets());
                            block.extend_from_slice(&v6(b).octets());
                        }
                    }
                    block.extend_from_slice(&s.port().to_be_bytes());
                    block.extend_from_slice(&d.port().to_be_bytes());
                    (0x21, if s.is_ipv4() { 0x11 } else { 0x21 })
                }
            };
            h.push(cmd);
            h.push(fam);
            h.extend_from_slice(&(block.len() as u16).to_be_bytes());
            h.extend_from_slice(&block);
            h
        }
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// What to do with bytes waiting in the socket, given the header bytes taken so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Take this many of them (all are header bytes) and wait for more.
    More(usize),
    /// Take this many of them: the header is complete.
    Done(Header, usize),
}

/// The header bytes taken from the socket so far (at most [`MAX_HEADER`]).
#[derive(Default)]
pub struct Taken {
    buf: Vec<u8>,
}

impl Taken {
    /// How many waiting bytes to look at next: no more than could still be header.
    pub fn room(&self) -> usize {
        MAX_HEADER - self.buf.len()
    }

    /// Decides on `waiting` (bytes peeked from the socket, not yet taken) and records those
    /// it says to take. Never takes a byte past the header's end.
    pub fn offer(&mut self, waiting: &[u8]) -> Result<Step, Error> {
        let waiting = &waiting[..waiting.len().min(self.room())];
        let had = self.buf.len();
        self.buf.extend_from_slice(waiting);
        match parse(&self.buf) {
            Ok(None) => Ok(Step::More(waiting.len())),
            Ok(Some(h)) => {
                self.buf.truncate(h.len);
                Ok(Step::Done(h, h.len - had))
            }
            Err(e) => Err(e),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// How reading a header ended, as counted in `edgeshard_proxy_protocol_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    V1,
    V2,
    Local,
    Bad,
    Untrusted,
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::V1,
        Outcome::V2,
        Outcome::Local,
        Outcome::Bad,
        Outcome::Untrusted,
        Outcome::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::V1 => "v1",
            Outcome::V2 => "v2",
            Outcome::Local => "local",
            Outcome::Bad => "bad",
            Outcome::Untrusted => "untrusted",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Why reading stopped without a header.
enum Fail {
    Bad(Error),
    Timeout,
    /// Closed (or failed) before a byte of a header arrived: not counted.
    Gone,
    Io(std::io::Error),
}

/// On a `proxy_protocol` listener: checks that `peer` is a trusted proxy, reads its header
/// within `timeouts.client_header` of `accepted`, counts the outcome, and gives the
/// connection's peer: the header's source address (TCP), or `peer` (LOCAL, UNKNOWN) with
/// `true`: the peer is then the balancer itself, an L4 hop that wrote no X-Forwarded-For, so
/// the connection's own is not believed. `None`: close the connection.
pub async fn accept(
    ctx: &ShardCtx,
    stream: &TcpStream,
    peer: SocketAddr,
    accepted: Instant,
) -> Option<(SocketAddr, bool)> {
    let count = |r: Outcome| bump(&ctx.stats.proxy_protocol[r as usize]);
    if !crate::config::holds(&ctx.shared.config.trusted_proxies, peer.ip()) {
        count(Outcome::Untrusted);
        if ctx.errors.allow(&ctx.stats) {
            tracing::info!(shard = ctx.id, %peer, "PROXY protocol listener: the peer is not in server.trusted_proxies; closed");
        }
        return None;
    }
    let deadline = accepted + ctx.shared.config.timeouts.client_header;
    let fail = match read_header(stream, deadline).await {
        Ok(h) => {
            return Some(match h.addresses {
                Addresses::Tcp { source, .. } => {
                    count(match h.version {
                        Version::V1 => Outcome::V1,
                        Version::V2 => Outcome::V2,
                    });
                    // An IPv4 client named as ::ffff:a.b.c.d is that IPv4 client, for every
                    // stage (its rate-limit bucket, X-Forwarded-For, the log).
                    (
                        SocketAddr::new(source.ip().to_canonical(), source.port()),
                        false,
                    )
                }
                Addresses::Local => {
                    count(Outcome::Local);
                    (peer, true)
                }
                Addresses::Unknown => {
                    count(match h.version {
                        Version::V1 => Outcome::V1,
                        Version::V2 => Outcome::V2,
                    });
                    (peer, true)
                }
            });
        }
        Err(f) => f,
    };
    let why = match fail {
        Fail::Timeout => {
            count(Outcome::Timeout);
            "no complete header within timeouts.client_header".to_string()
        }
        Fail::Bad(e) => {
            count(Outcome::Bad);
            format!("{e:?}")
        }
        Fail::Gone => return None,
        Fail::Io(e) => {
            count(Outcome::Bad);
            e.to_string()
        }
    };
    if ctx.errors.allow(&ctx.stats) {
        tracing::info!(shard = ctx.id, %peer, error = %why, "bad PROXY protocol header; closed");
    }
    None
}

/// Reads exactly one header's bytes from `stream` by `deadline`: waits for readability,
/// peeks what is waiting, and takes (reads) only the bytes [`Taken::offer`] says are header.
async fn read_header(stream: &TcpStream, deadline: Instant) -> Result<Header, Fail> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let mut taken = Taken::default();
    let mut scratch = vec![0u8; MAX_HEADER];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fail::Timeout);
        }
        match monoio::time::timeout(left, stream.readable(false)).await {
            Err(_) => return Err(Fail::Timeout),
            Ok(Err(e)) => return Err(Fail::Io(e)),
            Ok(Ok(())) => {}
        }
        let want = taken.room();
        let n = match recv_into(fd, &mut scratch[..want], libc::MSG_PEEK) {
            Ok(0) if taken.is_empty() => return Err(Fail::Gone),
            Ok(0) => return Err(Fail::Bad(Error::Truncated)),
            Ok(n) => n,
            Err(e) if would_wait(&e) => continue,
            Err(_) if taken.is_empty() => return Err(Fail::Gone),
            Err(e) => return Err(Fail::Io(e)),
        };
        let (step, take) = match taken.offer(&scratch[..n]) {
            Ok(Step::More(k)) => (None, k),
            Ok(Step::Done(h, k)) => (Some(h), k),
            Err(e) => return Err(Fail::Bad(e)),
        };
        // The bytes were peeked, so this read takes exactly `take` of them at once.
        match recv_into(fd, &mut scratch[..take], 0) {
            Ok(got) if got == take => {}
            Ok(_) => return Err(Fail::Bad(Error::Truncated)),
            Err(e) => return Err(Fail::Io(e)),
        }
        if let Some(h) = step {
            return Ok(h);
        }
    }
}

#[cfg(test)]
#[path = "proxy_protocol_tests.rs"]
mod tests;
