//! TLS, the byte stream: a [`TlsStream`] runs a rustls buffered connection over the shard's
//! own `monoio` socket, so the handshake and every record are processed on the shard's thread
//! (no helper threads, no locks). [`accept`] drives a server handshake (a client of ours),
//! [`connect`] a client one (to a backend); after it the stream reads and writes plaintext
//! through `monoio`'s owned-buffer traits, which is all [`crate::transport::Transport`] asks.
//!
//! Ciphertext is read into one buffer per connection and fed to rustls only as fast as the
//! plaintext is consumed (rustls holds at most 16 KiB of plaintext), so a fast client cannot
//! grow memory; written plaintext is encrypted by rustls and sent, straight from rustls' record
//! buffers, before `write` returns. Two copies cost a shard relaying 1 MiB responses most of
//! its CPU and are avoided here (loadtest/results/2026-12-03-vm/tls-1m-profile.md): our own
//! ciphertext buffer (none: [`DirectSend`]) and plaintext copied into records at a distance the
//! CPU handles badly ([`alias_safe_split`]).

use std::io::{self, BufRead, Write as _};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::http::early::holds_final_response;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// Ciphertext read per `read(2)`: one full TLS record and its overhead, so a record usually
/// arrives in one read.
const READ_CHUNK: usize = 16 * 1024 + 512;
/// Where a record's plaintext lands, modulo a 4 KiB page: rustls copies it 5 bytes (the
/// record header) into a buffer of ~16.4 KiB, and mimalloc places blocks of that size on
/// 4 KiB boundaries (measured: every one).
const RECORD_PAYLOAD_PHASE: usize = 5;
/// A copy whose destination is up to this many bytes past its source, modulo 4 KiB, runs
/// ~20x slower on this project's AMD EPYC host (0.45 against 11.7 µs per 16 KiB record: the
/// loads alias the stores just made; 0..=64 measured, doubled for margin).
const ALIAS_WINDOW: usize = 128;
/// The short first record that moves the rest of a write out of that window.
const ALIAS_SHIFT: usize = 256;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the peer closed the connection during the handshake")]
    Eof,
    #[error("socket error during the handshake: {0}")]
    Io(io::Error),
    #[error("{0}")]
    Tls(rustls::Error),
}

impl HandshakeError {
    /// The metric label of this failure.
    pub fn reason(&self) -> super::stats::Failure {
        use super::stats::Failure;
        match self {
            HandshakeError::Eof => Failure::Eof,
            HandshakeError::Io(_) => Failure::Io,
            HandshakeError::Tls(e) => match e {
                rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                    Failure::Incompatible
                }
                rustls::Error::AlertReceived(_) => Failure::AlertReceived,
                rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_) => {
                    Failure::ClientCertificate
                }
                rustls::Error::General(m) if m.contains("no server certificate") => {
                    Failure::Incompatible
                }
                _ => Failure::Protocol,
            },
        }
    }
}

/// A TLS connection (either side) over a `monoio` TCP socket.
pub struct TlsStream {
    tcp: TcpStream,
    conn: Connection,
    /// Ciphertext read from the socket; `rpos..` is not yet fed to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// The socket reached EOF (rustls was told).
    eof: bool,
    /// We are the client (a backend connection): a TCP end without the peer's close_notify
    /// is an error, not the end of the stream ([`TlsStream::read_plain`]).
    strict_eof: bool,
    /// A look for an early answer ([`TlsStream::flush_tls`]) found the socket failed or at
    /// its end: no more looks.
    unwatched: bool,
}

/// Runs the server handshake on `tcp`. The caller bounds it with the handshake timeout.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<TlsStream, HandshakeError> {
    let conn = ServerConnection::new(config).map_err(HandshakeError::Tls)?;
    handshake(tcp, Connection::Server(conn), false).await
}

/// Runs the client handshake on `tcp` for `name` (SNI, and the name the certificate must
/// carry). The caller bounds it with the connect timeout.
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<TlsStream, HandshakeError> {
    let conn = ClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
    handshake(tcp, Connection::Client(conn), true).await
}

async fn handshake(
    tcp: TcpStream,
    conn: Connection,
    strict_eof: bool,
) -> Result<TlsStream, HandshakeError> {
    let mut s = TlsStream {
        tcp,
        conn,
        rbuf: Vec::new(),
        rpos: 0,
        eof: false,
        strict_eof,
        unwatched: false,
    };
    while s.conn.is_handshaking() {
        s.flush_tls().await.map_err(HandshakeError::Io)?;
        if !s.conn.is_handshaking() {
            break;
        }
        let step = if s.rpos < s.rbuf.len() {
            s.feed()
        } else if s.eof {
            return Err(HandshakeError::Eof);
        } else {
            s.read_socket(None).await
        };
        if let Err(e) = step {
            let _ = s.flush_tls().await; // the alert rustls queued, if any
            return Err(classify(e));
        }
    }
    // The last flight (and, from a server, TLS 1.3 session tickets).
    s.flush_tls().await.map_err(HandshakeError::Io)?;
    s.rbuf
        .shrink_to(if s.rpos < s.rbuf.len() { READ_CHUNK } else { 0 });
    Ok(s)
}

/// How many bytes of a write of `len` plaintext bytes at address `addr` to encrypt as a short
/// record of their own, so that the full records after it are not copied at an aliasing
/// distance ([`ALIAS_WINDOW`]); 0 when the write is safe as it is or too short to matter.
/// rustls cuts records every 16 KiB, a multiple of the page, so every record of a write sits
/// at the write's own phase.
fn alias_safe_split(addr: usize, len: usize) -> usize {
    let distance = RECORD_PAYLOAD_PHASE.wrapping_sub(addr) % 4096;
    if len > 4 * ALIAS_SHIFT && (1..=ALIAS_WINDOW).contains(&distance) {
        ALIAS_SHIFT
    } else {
        0
    }
}

/// The error a write to a backend ends with when the backend's final answer came first
/// ([`TlsStream::flush_tls`]): the answer is there to be read.
const ANSWERED: &str = "the backend answered before the whole request was sent";

/// Writes ciphertext to a socket without waiting ([`crate::transport::send_now`]).
struct DirectSend(std::os::fd::RawFd);

impl io::Write for DirectSend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // The descriptor belongs to the `TcpStream` of the `TlsStream` that made this
        // `DirectSend` for one `write_tls` call, during which it stays open.
        crate::transport::send_now(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A rustls error carried in an `io::Error` (see [`TlsStream::feed`]) is a TLS failure; the
/// rest are socket errors.
fn classify(e: io::Error) -> HandshakeError {
    if e.kind() == io::ErrorKind::InvalidData {
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return HandshakeError::Tls(inner.clone());
        }
    }
    HandshakeError::Io(e)
}

/// Feeds the ciphertext `rbuf[*rpos..]` to rustls until it is all taken or rustls holds as
/// much plaintext as it will (then the rest waits for the reader). A TLS error becomes
/// `InvalidData` carrying the rustls error.
pub(crate) fn feed(conn: &mut Connection, rbuf: &mut Vec<u8>, rpos: &mut usize) -> io::Result<()> {
    while *rpos < rbuf.len() {
        let mut rd = &rbuf[*rpos..];
        let n = match conn.read_tls(&mut rd) {
            Ok(n) => n,
            // Plaintext buffer full: the reader must consume first.
            Err(_) if !conn.wants_read() => break,
            // Anything else fails the same way on every call (a handshake message longer
            // than rustls joins: "message buffer full"): an error, never a retry, or the
            // caller would spin on the shard (a 64 KiB ClientHello in plain records did).
            Err(e) => return Err(e),
        };
        *rpos += n;
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if n == 0 || !conn.wants_read() {
            break;
        }
    }
    if *rpos == rbuf.len() {
        *rpos = 0;
        rbuf.clear();
    }
    Ok(())
}

/// Sends what rustls has queued on the socket `fd` as far as it takes it now, without
/// waiting, straight from rustls' record buffers ([`DirectSend`]); the bytes sent. `Ok` with
/// `conn.wants_write()` still true: the socket is full.
pub(crate) fn send_queued(conn: &mut Connection, fd: std::os::fd::RawFd) -> io::Result<usize> {
    let mut sent = 0;
    while conn.wants_write() {
        match conn.write_tls(&mut DirectSend(fd)) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// A TLS stream taken apart for the tunnel ([`crate::tunnel`]): its socket, its rustls
/// connection, and the ciphertext read but not yet fed to rustls.
pub struct Parts {
    pub tcp: TcpStream,
    pub conn: Connection,
    pub unfed: Vec<u8>,
    /// The socket reached its end (rustls was told).
    pub eof: bool,
    /// A TCP end without close_notify is a truncation (a backend), not the end.
    pub strict_eof: bool,
}

impl TlsStream {
    /// The rustls connection: negotiated version, suite, SNI, peer certificates.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Frees the ciphertext read buffer unless it holds bytes not yet fed to rustls (an idle
    /// connection keeps ~17 KiB less).
    pub fn release_buffers(&mut self) {
        if self.rpos >= self.rbuf.len() {
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
    }

    /// The socket underneath (socket options and liveness probes only).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Queues a close_notify and sends it, behind anything queued before it, as far as the
    /// socket takes it now (never waiting): for a connection about to be dropped, whose peer
    /// then sees the end of the stream rather than a truncation.
    pub fn close_notify_now(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush_now();
    }

    /// The stream taken apart, nothing it holds lost ([`Parts`]).
    pub fn into_parts(self) -> Parts {
        let mut unfed = self.rbuf;
        unfed.drain(..self.rpos);
        Parts {
            tcp: self.tcp,
            conn: self.conn,
            unfed,
            eof: self.eof,
            strict_eof: self.strict_eof,
        }
    }

    /// The socket underneath, to read and discard what a client still sends after this side
    /// closed ([`crate::linger::linger_close`]): its records are never decrypted.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Plaintext or ciphertext already here, or a close_notify or error already taken in: a
    /// read would not wait for the socket.
    pub fn has_buffered(&mut self) -> bool {
        self.rpos < self.rbuf.len()
            || !matches!(self.conn.reader().fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Feeds buffered ciphertext to rustls ([`feed`]).
    fn feed(&mut self) -> io::Result<()> {
        feed(&mut self.conn, &mut self.rbuf, &mut self.rpos)
    }

    /// One read from the socket into `rbuf` (which is empty), fed to rustls.
    async fn read_socket(&mut self, cancel: Option<CancelHandle>) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.rbuf);
        buf.clear();
        self.rpos = 0;
        if buf.capacity() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let (res, buf) = match cancel {
            Some(c) => self.tcp.cancelable_read(buf, c).await,
            None => self.tcp.read(buf).await,
        };
        self.rbuf = buf;
        if res? == 0 {
            self.eof = true;
            // Tells rustls: an EOF without close_notify is then reported by its reader.
            let _ = self.conn.read_tls(&mut io::empty());
            let _ = self.conn.process_new_packets();
            return Ok(());
        }
        self.feed()
    }

    /// Sends everything rustls has queued (handshake flights, records, alerts), straight
    /// from rustls' record buffers: a non-blocking `sendmsg(2)` of up to 64 records at a
    /// time ([`DirectSend`]), waiting for the socket's write readiness when it is full. No
    /// copy of the ciphertext is made in user space (a buffer of our own cost 8 % of a
    /// shard relaying 1 MiB responses, loadtest/results/2026-12-03-vm/tls-1m-profile.md).
    async fn flush_tls(&mut self) -> io::Result<()> {
        loop {
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut DirectSend(self.tcp.as_raw_fd())) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !self.conn.wants_write() {
                return Ok(());
            }
            if !self.watches_answers() {
                self.tcp.writable(false).await?;
                continue;
            }
            // A backend may answer a request (a 401, a 413 to an upload) before it has read
            // all of it, and stop reading: while the write waits, its answer is looked for
            // (boxed: every TLS write's future would otherwise carry the second wait).
            if Box::pin(self.writable_or_readable()).await?
                && self.plaintext_now(holds_final_response)
            {
                return Err(io::Error::other(ANSWERED));
            }
        }
    }

    /// Waits until the socket is writable (`false`) or readable (`true`).
    async fn writable_or_readable(&self) -> io::Result<bool> {
        monoio::select! {
            biased;
            w = self.tcp.writable(false) => w.map(|()| false),
            r = self.tcp.readable(false) => r.map(|()| true),
        }
    }

    /// Whether a wait to write looks for the peer's answer too: on a backend connection past
    /// its handshake, with nothing it sent waiting to be read (a `100` it sent first is left
    /// to the response's read: the body goes on) and its socket neither failed nor at its end.
    fn watches_answers(&mut self) -> bool {
        self.strict_eof
            && !self.unwatched
            && !self.eof
            && !self.conn.is_handshaking()
            && matches!(self.conn.reader().fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends what rustls has queued as far as the socket takes it now ([`send_queued`]).
    fn flush_now(&mut self) -> io::Result<()> {
        send_queued(&mut self.conn, self.tcp.as_raw_fd()).map(drop)
    }

    /// Takes in what the socket holds now (without waiting) and applies `test` to the start
    /// of the plaintext it decrypts to (empty when there is none yet): how a backend's answer
    /// that came before the whole request is looked at, past the session tickets and other
    /// records that may come ahead of it.
    pub fn plaintext_now(&mut self, test: impl FnOnce(&[u8]) -> bool) -> bool {
        // A few socket reads at most: an answer comes in a record or two.
        for _ in 0..4 {
            let waiting = match self.conn.reader().fill_buf() {
                Ok(chunk) => chunk.is_empty(),
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            };
            if !waiting || self.eof {
                break;
            }
            if self.rpos < self.rbuf.len() {
                if self.feed().is_err() {
                    self.unwatched = true;
                    break;
                }
                continue;
            }
            self.rbuf.clear();
            self.rpos = 0;
            self.rbuf.reserve(READ_CHUNK);
            let spare = self.rbuf.spare_capacity_mut();
            match crate::transport::recv_now(self.tcp.as_raw_fd(), spare, 0) {
                Ok(0) => {
                    self.eof = true;
                    let _ = self.conn.read_tls(&mut io::empty());
                    let _ = self.conn.process_new_packets();
                }
                Ok(n) => {
                    // SAFETY: `recv_now` initialised the `n` bytes after the vector's length
                    // (0). Exercised by early_answer's TLS backend test.
                    unsafe { self.rbuf.set_len(n) };
                    if self.feed().is_err() {
                        self.unwatched = true;
                        break;
                    }
                }
                Err(e) => {
                    self.unwatched |= !crate::transport::would_wait(&e);
                    break;
                }
            }
        }
        match self.conn.reader().fill_buf() {
            Ok(chunk) => test(chunk),
            Err(_) => test(&[]),
        }
    }

    /// Reads plaintext into `dst` (at most `cap` bytes), waiting for the socket when
    /// nothing is buffered. `Ok(0)` is the end of the stream: close_notify, or from a client
    /// a TCP EOF (clients often skip close_notify; HTTP framing tells a truncated request
    /// apart). From a backend a TCP EOF without close_notify is `UnexpectedEof`: a
    /// close-delimited body cut short that way is truncated, not complete (RFC 9112 §9.8).
    async fn read_plain(
        &mut self,
        dst: *mut u8,
        cap: usize,
        cancel: Option<CancelHandle>,
    ) -> io::Result<usize> {
        if cap == 0 {
            return Ok(0);
        }
        loop {
            match self.conn.reader().fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let n = chunk.len().min(cap);
                    // SAFETY: `dst` is valid for `cap` bytes of writes (the caller's
                    // `IoBufMut` contract) and `chunk` is rustls' own buffer, so the two
                    // cannot overlap; `n <= cap`. Exercised by every TLS integration test.
                    unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), dst, n) };
                    self.conn.reader().consume(n);
                    return Ok(n);
                }
                Ok(_) => return Ok(0), // close_notify
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !self.strict_eof => {
                    return Ok(0)
                }
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                Err(_) => {}
            }
            if self.rpos < self.rbuf.len() {
                let fed = self.feed();
                if fed.is_err() {
                    let _ = self.flush_now(); // the alert rustls queued, if any
                }
                fed?;
                continue;
            }
            if self.eof {
                return Ok(0);
            }
            // Key updates and the like may want an answer: sent now as far as the socket
            // takes it, never waited for, so a read does not wait for a peer that does not
            // read (a backend that answered an upload early and stopped reading it). What
            // stays queued goes out ahead of the next write. A send that fails (that backend
            // reset the connection after its answer) does not stop the read of what came.
            let _ = self.flush_now();
            self.read_socket(cancel.clone()).await?;
        }
    }

    async fn write_plain(&mut self, src: &[u8]) -> io::Result<usize> {
        let n = self.encrypt(src)?;
        self.flush_tls().await?;
        Ok(n)
    }

    /// Hands plaintext to rustls (which encrypts it into records), first a short record when
    /// `src` sits where copying it into record buffers would be slow ([`alias_safe_split`]).
    fn encrypt(&mut self, src: &[u8]) -> io::Result<usize> {
        let first = alias_safe_split(src.as_ptr() as usize, src.len());
        if first == 0 {
            return self.conn.writer().write(src);
        }
        let n = self.conn.writer().write(&src[..first])?;
        if n < first {
            return Ok(n);
        }
        Ok(n + self.conn.writer().write(&src[first..])?)
    }

    /// Waits until a read would return without waiting: buffered plaintext or ciphertext
    /// answers at once, otherwise the socket's readiness.
    pub async fn readable(&mut self) -> io::Result<()> {
        if self.has_buffered() || self.eof {
            return Ok(());
        }
        self.tcp.readable(false).await
    }

    /// Sends close_notify, then shuts the socket's write side.
    pub async fn close(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush_tls().await?;
        self.tcp.shutdown().await
    }
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let (ptr, cap) = (buf.write_ptr(), buf.bytes_total());
        let r = self.read_plain(ptr, cap, None).await;
        if let Ok(n) = r {
            // SAFETY: `read_plain` initialised exactly `n` bytes at `write_ptr`.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Into the first non-empty iovec: a short read is allowed.
        let (ptr, cnt) = (buf.write_iovec_ptr(), buf.write_iovec_len());
        // SAFETY: the `IoVecBufMut` contract makes `ptr` valid for `cnt` iovecs.
        let iovs = unsafe { std::slice::from_raw_parts(ptr, cnt) };
        let first = iovs.iter().find(|v| v.iov_len > 0).copied();
        let r = match first {
            None => Ok(0),
            Some(v) => self.read_plain(v.iov_base.cast(), v.iov_len, None).await,
        };
        if let Ok(n) = r {
            // SAFETY: `n` bytes were written to the start of the buffers.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }
}

impl CancelableAsyncReadRent for TlsStream {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        mut buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        let (ptr, cap) = (buf.write_ptr(), buf.bytes_total());
        let r = self.read_plain(ptr, cap, Some(c)).await;
        if let Ok(n) = r {
            // SAFETY: `read_plain` initialised exactly `n` bytes at `write_ptr`.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        _c: CancelHandle,
    ) -> BufResult<usize, T> {
        self.readv(buf).await
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the `IoBuf` contract: `read_ptr` is valid for `bytes_init` initialised bytes
        // while `buf` is alive.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let r = self.write_plain(src).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (ptr, cnt) = (buf.read_iovec_ptr(), buf.read_iovec_len());
        // SAFETY: the `IoVecBuf` contract makes `ptr` valid for `cnt` iovecs, each valid for
        // `iov_len` initialised bytes, while `buf` is alive.
        let iovs = unsafe { std::slice::from_raw_parts(ptr, cnt) };
        let mut total = 0;
        for v in iovs {
            // SAFETY: as above.
            let src = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            match self.encrypt(src) {
                Ok(n) => {
                    total += n;
                    if n < src.len() {
                        break;
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
        let r = self.flush_tls().await.map(|()| total);
        (r, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_engines::{block_on, engines};
    use monoio::buf::VecBuf;
    use monoio::io::Canceller;

    /// A TLS connection over loopback: (server side, client side).
    async fn tls_pair() -> (TlsStream, TlsStream) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        let provider = Arc::new(super::super::provider());
        let pk = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], pk)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let name = ServerName::try_from("a.test").unwrap();
        monoio::join!(
            async {
                accept(l.accept().await.unwrap().0, Arc::new(server))
                    .await
                    .unwrap()
            },
            async {
                let tcp = TcpStream::connect_addr(addr).await.unwrap();
                connect(tcp, Arc::new(client), name).await.unwrap()
            },
        )
    }

    #[test]
    fn a_vectored_read_fills_the_first_buffer_with_room() {
        for engine in engines() {
            block_on(engine, async {
                let (mut server, mut client) = tls_pair().await;
                let (r, _) = server.write(b"hello world".to_vec()).await;
                assert_eq!(r.unwrap(), 11);
                // An empty first buffer is skipped; the read is short (one buffer's room).
                let bufs: VecBuf = vec![Vec::new(), vec![0u8; 5], vec![0u8; 64]].into();
                let (r, bufs) = client.readv(bufs).await;
                assert_eq!(r.unwrap(), 5);
                let bufs: Vec<Vec<u8>> = bufs.into();
                assert_eq!(bufs[1], b"hello");
                let canceller = Canceller::new();
                let bufs: VecBuf = vec![vec![0u8; 64]].into();
                let (r, bufs) = client.cancelable_readv(bufs, canceller.handle()).await;
                assert_eq!(r.unwrap(), 6);
                let bufs: Vec<Vec<u8>> = bufs.into();
                assert_eq!(bufs[0], b" world");
            });
        }
    }

    #[test]
    fn a_write_at_an_aliasing_phase_gets_a_short_first_record() {
        // Payloads land at 5 modulo 4 KiB: a source at 0 (a fresh page) or just below a page
        // boundary would be copied from 5 and 69 bytes behind its destination.
        for addr in [
            0x7f00_0000_0000usize,
            0x7f00_0000_0000 + 4096 - 64,
            0x7f00_0000_0004,
        ] {
            assert_eq!(alias_safe_split(addr, 64 * 1024), ALIAS_SHIFT, "{addr:#x}");
            // After the short record the rest sits 256 bytes further: safe.
            assert_eq!(
                alias_safe_split(addr + ALIAS_SHIFT, 64 * 1024 - ALIAS_SHIFT),
                0
            );
        }
    }

    #[test]
    fn other_phases_and_short_writes_are_left_alone() {
        for off in [5usize, 6, 200, 2048, 4096 - 200] {
            assert_eq!(
                alias_safe_split(0x7f00_0000_0000 + off, 64 * 1024),
                0,
                "{off}"
            );
        }
        assert_eq!(alias_safe_split(0x7f00_0000_0000, 4 * ALIAS_SHIFT), 0);
        // Every phase either is safe or becomes safe after the split.
        for phase in 0..4096usize {
            let addr = 0x1000_0000 + phase;
            let first = alias_safe_split(addr, 16 * 1024);
            let d = RECORD_PAYLOAD_PHASE.wrapping_sub(addr + first) % 4096;
            assert!(!(1..=ALIAS_WINDOW).contains(&d), "phase {phase}");
        }
    }
}
