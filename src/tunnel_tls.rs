//! Stage 6 for upgraded connections with TLS on either side (`wss://` on a TLS listener, a
//! WebSocket to a TLS backend, or both): the tunnel of [`crate::tunnel`] with each side an
//! [`Side`], a plain socket or a TLS stream taken apart ([`crate::tls::stream::Parts`]). A TLS
//! side's socket stays whole for both directions' readiness waits, as the plain tunnel's
//! do, and its rustls connection sits in a `RefCell` borrowed only between awaits. Nothing
//! the stream held is lost: ciphertext read but not fed yet is fed first, plaintext rustls
//! decrypted but the HTTP side had not read is sent first.
//!
//! Each direction is one [`pump`]: read, then write all of it, then read again.
//! - **Reading a TLS side**: ciphertext by a non-blocking `recv` into a record-sized buffer,
//!   fed to rustls only as fast as its plaintext is sent on ([`feed`]); what rustls owes that
//!   peer on the way (an alert, a key update) goes out as far as the socket takes it.
//!   close_notify, or a TCP end without it (browsers skip it), is the end of the stream.
//! - **Writing a TLS side**: encrypted by rustls and sent straight from its record buffers
//!   ([`send_queued`]) before the next read, so rustls never holds more than one read's
//!   records. The other side's end is passed on as close_notify, then a half-close.
//!
//! Always copied, never spliced: the bytes on a TLS side's socket are records.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

use monoio::net::TcpStream;
use rustls::Connection;

use crate::splice::would_block;
use crate::tls::stream::{feed, send_queued, Parts};
use crate::transport::{recv_into, Transport};
use crate::tunnel::{send_all, shutdown, Moved, TUNNEL_BUF};

/// Ciphertext read per `recv`: a full record and its overhead.
const RECORD_READ: usize = 16 * 1024 + 512;

/// The client's side of a TLS tunnel.
pub struct TlsEnd {
    pub tcp: TcpStream,
    state: RefCell<State>,
}

struct State {
    conn: Connection,
    /// Ciphertext read; `rpos..` not yet fed to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// The socket reached its end (rustls was told).
    eof: bool,
    /// A backend: a TCP end without close_notify is an error, never passed on as an end.
    strict_eof: bool,
}

/// What the client's side has for the backend now.
enum Plain {
    Data(usize),
    /// close_notify, or the socket's end without one.
    End,
    /// Nothing decrypted yet: more ciphertext is needed.
    Empty,
}

impl TlsEnd {
    pub fn new(parts: Parts) -> TlsEnd {
        TlsEnd {
            tcp: parts.tcp,
            state: RefCell::new(State {
                conn: parts.conn,
                rbuf: parts.unfed,
                rpos: 0,
                eof: parts.eof,
                strict_eof: parts.strict_eof,
            }),
        }
    }

    /// Plaintext rustls holds, into `buf`.
    fn plain(&self, buf: &mut [u8]) -> io::Result<Plain> {
        let mut st = self.state.borrow_mut();
        match st.conn.reader().read(buf) {
            Ok(0) => Ok(Plain::End),
            Ok(n) => Ok(Plain::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Plain::Empty),
            // A TCP end without close_notify: clients often skip it.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !st.strict_eof => Ok(Plain::End),
            Err(e) => Err(e),
        }
    }

    /// Feeds ciphertext to rustls: what is buffered, else what the socket holds now.
    /// `Ok(false)`: nothing to feed until the socket is readable.
    fn take_in(&self) -> io::Result<bool> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        if st.rpos < st.rbuf.len() {
            feed(&mut st.conn, &mut st.rbuf, &mut st.rpos)?;
            return Ok(true);
        }
        if st.eof {
            // Told already; its reader reports the end. Never spins: `plain` returns `End`.
            return Ok(true);
        }
        st.rbuf.clear();
        st.rpos = 0;
        st.rbuf.resize(RECORD_READ, 0);
        let got = recv_into(self.tcp.as_raw_fd(), &mut st.rbuf, 0);
        let n = match got {
            Ok(n) => n,
            Err(e) => {
                // Freed, not cleared: a quiet tunnel holds no read buffer.
                st.rbuf = Vec::new();
                return if would_block(&e) { Ok(false) } else { Err(e) };
            }
        };
        st.rbuf.truncate(n);
        if n == 0 {
            st.eof = true;
            // Tells rustls: its reader then reports the end (with or without close_notify).
            let _ = st.conn.read_tls(&mut io::empty());
            let _ = st.conn.process_new_packets();
            return Ok(true);
        }
        feed(&mut st.conn, &mut st.rbuf, &mut st.rpos)?;
        Ok(true)
    }

    /// Sends what rustls has queued as far as the socket takes it now; whether some is left.
    /// A byte sent counts as traffic for `tunnel_idle`; nothing sent does not.
    fn send_now(&self, last: &Cell<Instant>) -> io::Result<bool> {
        let mut st = self.state.borrow_mut();
        if send_queued(&mut st.conn, self.tcp.as_raw_fd())? > 0 {
            last.set(Instant::now());
        }
        Ok(st.conn.wants_write())
    }

    /// Sends everything rustls has queued, waiting for the socket when it is full.
    async fn flush(&self, last: &Cell<Instant>) -> io::Result<()> {
        while self.send_now(last)? {
            self.tcp.writable(false).await?;
        }
        Ok(())
    }

    /// Encrypts `data` and sends it all.
    pub async fn send(&self, mut data: &[u8], last: &Cell<Instant>) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.state.borrow_mut().conn.writer().write(data)?;
            data = &data[n..];
            self.flush(last).await?;
        }
        Ok(())
    }
}

/// One side of a tunnel that is not plain on both: a plain socket, or a TLS stream taken
/// apart.
pub enum Side {
    Plain(TcpStream),
    /// Boxed: the rustls connection is over a kilobyte.
    Tls(Box<TlsEnd>),
}

impl Side {
    pub fn new(t: Transport) -> Side {
        match t {
            Transport::Plain(s) => Side::Plain(s),
            Transport::Tls(tls) => Side::Tls(Box::new(TlsEnd::new(tls.into_parts()))),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Side::Plain(s) => s,
            Side::Tls(t) => &t.tcp,
        }
    }

    /// The next bytes of the stream into `buf` (made [`TUNNEL_BUF`] long), waiting for them;
    /// `Ok(0)` at its end (a TLS side's close_notify, or a TCP end without one). `buf` is
    /// freed while the wait lasts, so a quiet tunnel holds no buffer.
    pub(crate) async fn read(&self, buf: &mut Vec<u8>, last: &Cell<Instant>) -> io::Result<usize> {
        buf.resize(TUNNEL_BUF, 0);
        let tls = match self {
            Side::Tls(t) => t,
            Side::Plain(s) => loop {
                match recv_into(s.as_raw_fd(), buf, 0) {
                    Err(e) if would_block(&e) => {
                        *buf = Vec::new();
                        s.readable(false).await?;
                        buf.resize(TUNNEL_BUF, 0);
                    }
                    got => return got,
                }
            },
        };
        loop {
            match tls.plain(buf)? {
                Plain::Data(n) => return Ok(n),
                Plain::End => return Ok(0),
                Plain::Empty => {}
            }
            let took = tls.take_in();
            // Replies rustls owes the peer (a key update; an alert for bad input), as far as
            // the socket takes them now: never waited for here, as the queue may hold the
            // other direction's records for a peer that reads them later (waiting would
            // stop this direction until it does). Their own flush sends the rest in order.
            tls.send_now(last)?;
            if !took? {
                *buf = Vec::new();
                tls.tcp.readable(false).await?;
                buf.resize(TUNNEL_BUF, 0);
            }
        }
    }

    /// Sends all of `data` (encrypted on a TLS side).
    pub(crate) async fn write(&self, data: &[u8], last: &Cell<Instant>) -> io::Result<()> {
        match self {
            Side::Plain(s) => send_all(s, data, last).await,
            Side::Tls(t) => t.send(data, last).await,
        }
    }

    /// Passes the other side's end on: close_notify first on a TLS side, then a half-close.
    pub(crate) async fn finish(&self, last: &Cell<Instant>) -> io::Result<()> {
        if let Side::Tls(t) = self {
            t.state.borrow_mut().conn.send_close_notify();
            t.flush(last).await?;
        }
        shutdown(self.tcp().as_raw_fd(), libc::SHUT_WR);
        Ok(())
    }
}

/// Moves one direction until `src`'s end (passed on to `dst`) or an error (both sockets
/// shut down, so the other direction ends at once), counting into `moved` and setting
/// `last` as bytes move.
pub(crate) async fn pump(src: &Side, dst: &Side, last: &Cell<Instant>, moved: &Moved<'_>) {
    let mut buf = Vec::new();
    let ended = loop {
        crate::coop::step().await;
        let n = match src.read(&mut buf, last).await {
            Ok(0) => break true,
            Ok(n) => n,
            Err(_) => break false,
        };
        last.set(Instant::now());
        if dst.write(&buf[..n], last).await.is_err() {
            break false;
        }
        moved.add(n as u64);
    };
    if ended && dst.finish(last).await.is_ok() {
        return;
    }
    shutdown(src.tcp().as_raw_fd(), libc::SHUT_RDWR);
    shutdown(dst.tcp().as_raw_fd(), libc::SHUT_RDWR);
}
