//! The byte stream every stage reads and writes, on either side of the proxy: a client
//! connection ([`crate::client::Client`]) or a backend connection ([`crate::forward`], the
//! pool). [`Transport`] is plain TCP or TLS ([`crate::tls::stream::TlsStream`]); the IO steps
//! are generic over monoio's owned-buffer traits, which it implements, so the copy paths work
//! on both. Only [`Transport::plain`] (the socket, when its bytes are the HTTP bytes) lets a
//! stage splice or run a tunnel's raw pumps. On a plain socket a response that is ready is
//! read, and a write of [`SEND_NOW_MIN`] or more is sent, with a direct non-blocking system
//! call first, so the buffer is done with in the turn that filled it.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::tls::stream::TlsStream;

/// A byte stream to a client or a backend: plain TCP, or TLS, whose socket carries records,
/// not HTTP bytes, and which therefore has no [`Transport::plain`].
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    /// The socket, when the bytes on it are the HTTP bytes: `splice(2)` and the tunnel's raw
    /// pumps may then move them. `None` means copy through [`AsyncReadRent`] and
    /// [`AsyncWriteRent`].
    #[inline]
    pub fn plain(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(s) => Some(s),
            Transport::Tls(_) => None,
        }
    }

    /// The socket underneath, for socket options and liveness probes (never for its bytes
    /// when TLS).
    #[inline]
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.tcp(),
        }
    }

    /// Whether the peer sent something not read yet: bytes on the socket (a peek), or a TLS
    /// stream's input already taken in ([`Transport::holds_input`]). For a close, not the
    /// hot path: one `recv(2)`.
    pub fn has_unread(&mut self) -> bool {
        self.holds_input() || unread(self.tcp().as_raw_fd())
    }

    /// Closes a connection whose last exchange ended in order (the pool lets it go, or it
    /// cannot be reused): a TLS one with a close_notify first, sent if the socket takes it
    /// now, never waited for, so that its peer sees the end of the stream, not a truncation
    /// (OpenSSL 3 logs one as "unexpected eof"). A connection that failed or timed out is
    /// dropped as it is.
    pub fn close_now(mut self) {
        if let Transport::Tls(tls) = &mut self {
            tls.close_notify_now();
        }
    }

    /// Makes the coming close a reset (`SO_LINGER` 0) where an orderly one would say too
    /// much: a plain connection whose close-delimited body was cut short, or a backend's
    /// whose request body the client cut short (a TLS one ends without close_notify, which
    /// says so already). Best effort.
    pub fn reset_on_close(&self) {
        if let Transport::Plain(s) = self {
            // SAFETY: `s` owns the descriptor and outlives this borrow, which only sets an
            // option on it. Exercised by tests/response_framing.rs (an HTTP/1.0 client's
            // close-delimited body cut short).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(s.as_raw_fd()) };
            let _ = socket2::SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
        }
    }

    /// Whether something the peer sent is already taken in above the socket, where a look
    /// at the socket cannot see it: a TLS stream's plaintext, ciphertext not yet decrypted,
    /// a close_notify. A connection going back to the pool must hold nothing
    /// ([`crate::upstream::pool::Pool::checkin`]).
    #[inline]
    pub fn holds_input(&mut self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(s) => s.has_buffered(),
        }
    }

    /// Frees the buffers an idle connection does not need (a TLS stream's ciphertext
    /// buffers); the next read or write allocates them again.
    #[inline]
    pub fn release_buffers(&mut self) {
        if let Transport::Tls(s) = self {
            s.release_buffers();
        }
    }

    /// Reads what the socket already holds, without waiting: into `buf`'s spare room, at most
    /// `max` bytes; `Ok(0)` at EOF, `WouldBlock` when nothing is there. `None` for TLS (its
    /// bytes go through rustls). A response is read this way once its socket is readable:
    /// the buffer is filled when the exchange runs, not when the kernel completes an io_uring
    /// read posted in advance (with the shard busy, those completed reads wait in the ring,
    /// each holding a filled buffer; loadtest/results/2026-12-05-vm-direct/).
    pub fn read_now(&self, buf: &mut Vec<u8>, max: usize) -> Option<io::Result<usize>> {
        let Transport::Plain(s) = self else {
            return None;
        };
        let spare = buf.spare_capacity_mut();
        let want = spare.len().min(max);
        debug_assert!(want > 0, "a read into no room would look like EOF");
        let n = match recv_now(s.as_raw_fd(), &mut spare[..want], 0) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        // SAFETY: `recv_now` initialised the `n` bytes after the vector's length.
        unsafe { buf.set_len(buf.len() + n) };
        Some(Ok(n))
    }

    /// Waits until a read would not block (a TLS transport must also answer at once when it
    /// holds decrypted bytes).
    pub async fn readable(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.readable(false).await,
            Transport::Tls(s) => s.readable().await,
        }
    }
}

impl AsyncReadRent for Transport {
    #[inline]
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => s.read(buf).await,
            Transport::Tls(s) => s.read(buf).await,
        }
    }

    #[inline]
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => s.readv(buf).await,
            Transport::Tls(s) => s.readv(buf).await,
        }
    }
}

impl CancelableAsyncReadRent for Transport {
    #[inline]
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => s.cancelable_read(buf, c).await,
            Transport::Tls(s) => s.cancelable_read(buf, c).await,
        }
    }

    #[inline]
    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => s.cancelable_readv(buf, c).await,
            Transport::Tls(s) => s.cancelable_readv(buf, c).await,
        }
    }
}

/// A plain write of at least this many bytes is first tried with a direct, non-blocking
/// `sendmsg(2)`: a body leaves its buffer in the same turn of the shard's loop, so the buffer
/// goes back to the free list at once instead of after the ring's next completion (with the
/// shard busy, hundreds of 64 KiB buffers were waiting for their writes' completions;
/// loadtest/results/2026-12-05-vm-direct/). Smaller writes (heads, small responses) stay in
/// the ring, batched into its one `io_uring_enter`: no system call of their own.
const SEND_NOW_MIN: usize = 4096;

/// A direct call ([`Transport::read_now`], a direct send) that found nothing to do now, or
/// was interrupted: the engine does it instead.
pub fn would_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Sends `bufs` on the socket `fd` without waiting (`sendmsg(2)` with `MSG_DONTWAIT`, so a
/// full socket answers `WouldBlock` whatever the descriptor's mode: io_uring sockets are
/// blocking): the bytes sent. Large plain writes and every TLS write
/// (`tls::stream::DirectSend`) go out this way.
pub fn send_now(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    send_now_with(fd, bufs, 0)
}

/// [`send_now`] with `flags` besides `MSG_DONTWAIT | MSG_NOSIGNAL` (`MSG_MORE` for a head
/// whose body follows). The one place a direct send calls the kernel: every direct write of
/// the proxy (large plain writes, TLS records, tunnel pumps, a cached body's head) comes here.
pub fn send_now_with(fd: RawFd, bufs: &[io::IoSlice<'_>], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the caller's stream owns `fd` and outlives this call, so the descriptor stays
    // open while it is borrowed.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd)
        .send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | flags)
}

/// One `recv(2)` on the socket `fd` that never waits (`MSG_DONTWAIT`, besides `flags`:
/// `MSG_PEEK` to look without taking), into `buf`: the bytes received, 0 at EOF (or for an
/// empty `buf`). The one place a direct read calls the kernel: a ready response
/// ([`Transport::read_now`]), the pool's liveness look, the PROXY header, the tunnel's pumps.
pub fn recv_now(fd: RawFd, buf: &mut [MaybeUninit<u8>], flags: libc::c_int) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    // SAFETY: the caller's stream owns `fd` and outlives this call, so the descriptor stays
    // open while it is borrowed.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).recv_with_flags(buf, libc::MSG_DONTWAIT | flags)
}

/// Whether bytes wait on the socket `fd`, not read yet (a peek).
pub fn unread(fd: RawFd) -> bool {
    let mut byte = [MaybeUninit::uninit()];
    matches!(recv_now(fd, &mut byte, libc::MSG_PEEK), Ok(n) if n > 0)
}

/// Bytes the socket `fd` has not had acknowledged by its peer (sent or not yet sent:
/// `SIOCOUTQ`); 0 when it cannot say.
pub fn unsent(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int to the pointer, which points at `n`, alive
    // across the call; `fd` is the caller's open socket (a bad one is an error, not UB).
    // Exercised by tests/early_answer.rs (a large early answer to a fast uploading client).
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// [`recv_now`] into initialised bytes.
pub fn recv_into(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `MaybeUninit<u8>` has `u8`'s layout, and `recv_now` only ever writes bytes the
    // kernel received (initialised), so `buf` never holds an uninitialised byte afterwards.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    recv_now(fd, uninit, flags)
}

impl AsyncWriteRent for Transport {
    #[inline]
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => {
                let len = buf.bytes_init();
                if len >= SEND_NOW_MIN {
                    // SAFETY: the `IoBuf` contract makes `read_ptr` valid for `len` bytes
                    // while `buf` lives.
                    let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), len) };
                    match send_now(s.as_raw_fd(), &[io::IoSlice::new(bytes)]) {
                        Err(e) if would_wait(&e) => {}
                        // The socket is full: the rest goes through the engine at once
                        // (another direct try would find it full).
                        Ok(n) if n < len => {
                            let (r, rest) = s.write(buf.slice(n..)).await;
                            return (r.map(|m| n + m), rest.into_inner());
                        }
                        r => return (r, buf),
                    }
                }
                s.write(buf).await
            }
            Transport::Tls(s) => s.write(buf).await,
        }
    }

    #[inline]
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => {
                // SAFETY: the `IoVecBuf` contract makes `read_iovec_ptr` valid for
                // `read_iovec_len` iovecs while `buf` lives, and `IoSlice` is ABI-compatible
                // with `iovec` on Unix (std's documented guarantee).
                let bufs = unsafe {
                    std::slice::from_raw_parts(
                        buf.read_iovec_ptr().cast::<io::IoSlice<'_>>(),
                        buf.read_iovec_len(),
                    )
                };
                if bufs.iter().map(|b| b.len()).sum::<usize>() >= SEND_NOW_MIN {
                    match send_now(s.as_raw_fd(), bufs) {
                        Err(e) if would_wait(&e) => {}
                        r => return (r, buf),
                    }
                }
                s.writev(buf).await
            }
            Transport::Tls(s) => s.writev(buf).await,
        }
    }

    #[inline]
    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush().await,
            Transport::Tls(s) => s.flush().await,
        }
    }

    #[inline]
    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{write_from, write_two_from, Deadline};
    use crate::test_engines::TestEngine;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// Runs `test` on a runtime of each engine.
    fn on_both_engines<F: std::future::Future<Output = ()>>(test: impl Fn(TestEngine) -> F) {
        for engine in crate::test_engines::engines() {
            crate::test_engines::block_on(engine, test(engine));
        }
    }

    /// A connected pair: the proxy's side as a [`Transport`], the peer as a std socket.
    async fn pair() -> (Transport, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect_addr(l.local_addr().unwrap())
            .await
            .unwrap();
        (Transport::Plain(s), l.accept().unwrap().0)
    }

    #[test]
    fn read_now_takes_what_is_waiting_and_never_waits() {
        on_both_engines(|_| async {
            {
                let (mut t, mut peer) = pair().await;
                let mut buf = Vec::with_capacity(64);
                buf.extend_from_slice(b"kept");
                let r = t.read_now(&mut buf, 64).expect("plain");
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
                assert_eq!(buf, b"kept", "nothing read, nothing changed");

                peer.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
                t.readable().await.unwrap();
                // At most `max`, after the bytes already there.
                assert_eq!(t.read_now(&mut buf, 8).unwrap().unwrap(), 8);
                assert_eq!(buf, b"keptHTTP/1.1");
                // At most the spare room.
                let mut small = Vec::with_capacity(4);
                assert_eq!(t.read_now(&mut small, 64).unwrap().unwrap(), 4);
                assert_eq!(small, b" 200");
                assert_eq!(t.read_now(&mut buf, 64).unwrap().unwrap(), 5);
                assert_eq!(buf, b"keptHTTP/1.1 OK\r\n");

                drop(peer);
                t.readable().await.unwrap();
                assert_eq!(t.read_now(&mut buf, 64).unwrap().unwrap(), 0, "EOF");
            }
        });
    }

    #[test]
    fn large_writes_go_out_whole_and_in_order_when_the_socket_fills() {
        on_both_engines(|engine| async move {
            {
                // Small socket buffers, set before the connection is made.
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                socket2::SockRef::from(&l)
                    .set_recv_buffer_size(4096)
                    .unwrap();
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.set_send_buffer_size(4096).unwrap();
                s.connect(&l.local_addr().unwrap().into()).unwrap();
                let s = std::net::TcpStream::from(s);
                // As the engine's own sockets are: blocking under io_uring, non-blocking
                // under epoll.
                let epoll = engine == TestEngine::Epoll;
                s.set_nonblocking(epoll).unwrap();
                let mut t = Transport::Plain(TcpStream::from_std(s).unwrap());
                let peer = l.accept().unwrap().0;
                // Fill the socket with direct sends until one would block.
                let mut expect = Vec::new();
                let chunk: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
                loop {
                    match send_now(t.tcp().as_raw_fd(), &[io::IoSlice::new(&chunk)]) {
                        Ok(n) => expect.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                // Only now does the peer read: each write below finds the socket full first
                // (the direct send would block) and completes through the engine.
                let reader = std::thread::spawn(move || {
                    let mut peer = peer;
                    let mut got = Vec::new();
                    peer.read_to_end(&mut got).unwrap();
                    got
                });
                let mut dl = Deadline::new();
                let wait = Duration::from_secs(10);
                let mut one: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
                write_from(&mut t, &mut one, 0, 100_000, &mut dl, wait)
                    .await
                    .unwrap();
                expect.extend_from_slice(&one);
                let mut head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
                let mut body: Vec<u8> = (0..300_000u32).map(|i| (i % 239) as u8).collect();
                let (h, b) = (head.len(), body.len());
                write_two_from(&mut t, &mut head, 0..h, &mut body, 10..b, &mut dl, wait)
                    .await
                    .unwrap();
                expect.extend_from_slice(&head);
                expect.extend_from_slice(&body[10..]);
                // The end of the stream (a dropped stream's close waits for the engine's next
                // turn, and this thread now blocks in `join`).
                t.shutdown().await.unwrap();
                let got = reader.join().unwrap();
                assert_eq!(got.len(), expect.len());
                assert!(got == expect, "the bytes arrive whole and in order");
            }
        });
    }
}
