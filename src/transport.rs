//! The byte stream every stage reads and writes, on either side of the proxy: a client
//! connection ([`crate::client::Client`]) or a backend connection ([`crate::forward`], the
//! pool). [`Transport`] is plain TCP or TLS ([`crate::tls::stream::TlsStream`]); the IO steps
//! are generic over monoio's owned-buffer traits, which it implements, so the copy paths work
//! on both. Only [`Transport::plain`] (the socket, when its bytes are the HTTP bytes) lets a
//! stage splice or run a tunnel's raw pumps.

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

    /// [`Transport::plain`], mutably.
    #[inline]
    pub fn plain_mut(&mut self) -> Option<&mut TcpStream> {
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

    /// Frees the buffers an idle connection does not need (a TLS stream's ciphertext
    /// buffers); the next read or write allocates them again.
    #[inline]
    pub fn release_buffers(&mut self) {
        if let Transport::Tls(s) = self {
            s.release_buffers();
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
