//! The client side of a connection, as every stage sees it: the [`Client`] (its
//! [`Transport`], read buffer, peer and the one timer bounding its IO), lent by the
//! keep-alive loop ([`crate::conn`]) to each exchange, and the [`Outcome`] an exchange hands
//! back: whether the connection stays open (monolake's contract).
//!
//! [`Transport`] is the seam TLS termination plugs into: stages read and write the client
//! through it, and only [`Transport::plain`] (the socket, when its bytes are the HTTP bytes)
//! lets a stage splice or run a tunnel's raw pumps; [`Transport::Tls`] is copied.

use std::net::SocketAddr;
use std::time::Instant;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::io::Deadline;
use crate::tls::stream::TlsStream;
use crate::tunnel::Upgraded;

/// Whether the client connection stays open after an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    KeepAlive,
    Close,
    /// The backend answered 101: the connection becomes a tunnel ([`Client::upgraded`]).
    Upgraded,
}

/// The client side of a connection, owned by [`crate::conn`] and lent to each exchange.
pub struct Client {
    pub stream: Transport,
    /// Bytes read from the client; a request head starts at offset 0.
    pub buf: Vec<u8>,
    pub peer: SocketAddr,
    /// The one timer bounding whichever IO step this connection is waiting on.
    pub deadline: Deadline,
    /// Set when the backend accepted an upgrade: [`crate::conn`] then runs the tunnel.
    pub upgraded: Option<Box<Upgraded>>,
    /// Index of the `[[listener]]` it was accepted on.
    pub listener: usize,
    /// mTLS: the verified client certificate's subject.
    pub client_subject: Option<Box<str>>,
}

/// The byte stream to the client: plain TCP, or TLS, whose socket carries records, not HTTP
/// bytes, and which therefore has no [`Transport::plain`].
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

    /// [`Transport::plain`], mutably.
    #[inline]
    pub fn plain_mut(&mut self) -> Option<&mut TcpStream> {
        match self {
            Transport::Plain(s) => Some(s),
            Transport::Tls(_) => None,
        }
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

impl AsyncWriteRent for Transport {
    #[inline]
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => s.write(buf).await,
            Transport::Tls(s) => s.write(buf).await,
        }
    }

    #[inline]
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Transport::Plain(s) => s.writev(buf).await,
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

/// Microseconds since `since`, saturating.
pub fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}
