//! The client side of a connection, as every stage sees it: the [`Client`] (its
//! [`Transport`], read buffer, peer and the one timer bounding its IO), lent by the
//! keep-alive loop ([`crate::conn`]) to each exchange, and the [`Outcome`] an exchange hands
//! back: whether the connection stays open (monolake's contract).
//!
//! The client's byte stream is a [`Transport`] (plain or TLS), like a backend's.

use std::net::SocketAddr;
use std::time::Instant;

use crate::io::Deadline;
pub use crate::transport::Transport;
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

/// Microseconds since `since`, saturating.
pub fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}
