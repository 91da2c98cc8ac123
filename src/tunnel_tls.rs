//! Stage 6 for upgraded connections on TLS listeners (`wss://`): the tunnel of
//! [`crate::tunnel`] with its client side a TLS stream and its backend side plain. The
//! stream is taken apart ([`crate::tls::stream::Parts`]): its socket stays whole for both
//! directions' readiness waits, as the plain tunnel's do, and its rustls connection sits in
//! a `RefCell` borrowed only between awaits. Nothing the stream held is lost: ciphertext
//! read but not fed yet is fed first, plaintext rustls decrypted but the HTTP side had not
//! read is sent first.
//!
//! - **From the client**: ciphertext by a non-blocking `recv` into a record-sized buffer,
//!   fed to rustls only as fast as its plaintext is sent on ([`feed`]), plaintext sent to the
//!   backend; what rustls owes the client on the way (an alert, a key update) goes out as
//!   soon as it is queued. close_notify, or a TCP end without it (browsers skip it), is a
//!   half-close passed on to the backend.
//! - **To the client**: the backend's bytes by a non-blocking `recv`, encrypted by rustls and
//!   sent straight from its record buffers ([`send_queued`]) before the next `recv`, so
//!   rustls never holds more than one read's records. The backend's end is passed on as
//!   close_notify, then a half-close of the socket.
//!
//! Always copied, never spliced: the bytes on the client's socket are records.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

use monoio::net::TcpStream;
use rustls::Connection;

use crate::splice::would_block;
use crate::tls::stream::{feed, send_queued, Parts};
use crate::transport::recv_into;
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
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Plain::End),
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
                st.rbuf.clear();
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

/// Client → backend: decrypts and sends on until the client's end or an error.
pub(crate) async fn from_client(
    end: &TlsEnd,
    dst: &TcpStream,
    last: &Cell<Instant>,
    moved: &Moved<'_>,
) {
    let mut buf = vec![0u8; TUNNEL_BUF];
    let ended = loop {
        crate::coop::step().await;
        match end.plain(&mut buf) {
            Ok(Plain::Data(n)) => {
                last.set(Instant::now());
                if send_all(dst, &buf[..n], last).await.is_err() {
                    break false;
                }
                moved.add(n as u64);
                continue;
            }
            Ok(Plain::End) => break true,
            Ok(Plain::Empty) => {}
            Err(_) => break false,
        }
        let took = end.take_in();
        // Replies rustls owes the client (a key update; an alert for bad input), as far as
        // the socket takes them now: never waited for here, as the queue may hold
        // to_client's records for a client that reads its download later (waiting would
        // stop the upload until it does). to_client's flush sends the rest in order.
        if end.send_now(last).is_err() {
            break false;
        }
        match took {
            Ok(true) => {}
            Ok(false) => {
                if end.tcp.readable(false).await.is_err() {
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    if ended {
        shutdown(dst.as_raw_fd(), libc::SHUT_WR);
    } else {
        shutdown(end.tcp.as_raw_fd(), libc::SHUT_RDWR);
        shutdown(dst.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Backend → client: encrypts what the backend sends until its end (then close_notify and
/// a half-close) or an error.
pub(crate) async fn to_client(
    src: &TcpStream,
    end: &TlsEnd,
    last: &Cell<Instant>,
    moved: &Moved<'_>,
) {
    let mut buf = vec![0u8; TUNNEL_BUF];
    let ended = loop {
        crate::coop::step().await;
        let n = match recv_into(src.as_raw_fd(), &mut buf, 0) {
            Ok(0) => break true,
            Ok(n) => n,
            Err(e) if would_block(&e) => match src.readable(false).await {
                Ok(()) => continue,
                Err(_) => break false,
            },
            Err(_) => break false,
        };
        last.set(Instant::now());
        if end.send(&buf[..n], last).await.is_err() {
            break false;
        }
        moved.add(n as u64);
    };
    if ended {
        end.state.borrow_mut().conn.send_close_notify();
        if end.flush(last).await.is_ok() {
            shutdown(end.tcp.as_raw_fd(), libc::SHUT_WR);
            return;
        }
    }
    shutdown(src.as_raw_fd(), libc::SHUT_RDWR);
    shutdown(end.tcp.as_raw_fd(), libc::SHUT_RDWR);
}
