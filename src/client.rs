//! The client side of a connection, as every stage sees it: the [`Client`] (its
//! [`Transport`], read buffer, peer and the one timer bounding its IO), lent by the
//! keep-alive loop ([`crate::conn`]) to each exchange, and the [`Outcome`] an exchange hands
//! back: whether the connection stays open (monolake's contract).
//!
//! The client's byte stream is a [`Transport`] (plain or TLS), like a backend's. What the
//! connection keeps of its listener ([`ListenerSide`]) is fixed when it is accepted.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{AccessList, Config, RedirectHttps};
use crate::io::Deadline;
use crate::snapshot::Shared;
use crate::tls::TlsListener;
pub use crate::transport::Transport;
use crate::tunnel::Upgraded;

/// Whether the client connection stays open after an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    KeepAlive,
    /// The response is complete and the connection closes (a TLS one with close_notify).
    Close,
    /// The client got no response, or one cut short: the connection closes without a word
    /// (no close_notify, which would make a close-delimited body look complete).
    Cut,
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
    /// The settings of the `[[listener]]` it was accepted on (an `Rc`: a stage holds them
    /// while it lends the client on, at the cost of a non-atomic increment).
    pub listener: Rc<ListenerSide>,
    /// mTLS: the verified client certificate's subject.
    pub client_subject: Option<Box<str>>,
    /// The peer is one of `server.trusted_proxies` speaking for its clients: its
    /// X-Forwarded-For names the client and its request id is kept (decided at accept and
    /// again after a reload, [`crate::conn`]'s `relisten`; never for a PROXY protocol
    /// balancer's own LOCAL or UNKNOWN connection).
    pub forwarded_trusted: bool,
    /// The peer is a PROXY protocol balancer's own connection (LOCAL, UNKNOWN): never
    /// trusted to speak for clients, whatever `trusted_proxies` says.
    pub balancer_itself: bool,
    /// When it was opened and how many requests it has carried (kept while it is parked).
    pub served: Served,
    /// The socket is known to be `O_NONBLOCK` ([`crate::splice::send_file`] sets it once).
    /// Both engines work with either mode.
    pub nonblocking: bool,
}

impl Client {
    /// A plain-TCP client with an empty buffer (allocated by its first read), no timer armed
    /// and no certificate subject.
    pub fn plain(
        stream: monoio::net::TcpStream,
        peer: SocketAddr,
        listener: Rc<ListenerSide>,
        (forwarded_trusted, balancer_itself): (bool, bool),
        served: Served,
    ) -> Client {
        Client {
            stream: Transport::Plain(stream),
            buf: Vec::new(),
            peer,
            deadline: Deadline::new(),
            upgraded: None,
            listener,
            client_subject: None,
            forwarded_trusted,
            balancer_itself,
            served,
            nonblocking: false,
        }
    }
}

/// What a keep-alive connection has served: `limits.max_requests_per_connection` and
/// `timeouts.client_keepalive_time` end it after a response (nginx's `keepalive_requests`
/// and `keepalive_time`), so that long-lived clients are re-balanced across shards and
/// proxies and no connection holds its resources for good. Eight bytes, as a parked
/// connection keeps it too ([`crate::park`]).
#[derive(Clone, Copy, Debug)]
pub struct Served {
    /// When it was opened: milliseconds on [`epoch_ms`]'s clock, which wraps after 49 days;
    /// ages are taken with a wrapping subtraction, so they are right below that, and a
    /// connection is checked by `client_keepalive_time` plus `client_idle` (at most 14 days).
    opened_ms: u32,
    requests: u32,
}

/// Why a request is its connection's last (the index of its `retired` counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retire {
    Requests = 0,
    KeepaliveTime = 1,
}

/// `t` in milliseconds since the process first asked (wrapping at 2^32).
fn epoch_ms(t: Instant) -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_millis() as u32
}

impl Served {
    pub fn new(opened: Instant) -> Served {
        Served {
            opened_ms: epoch_ms(opened),
            requests: 0,
        }
    }

    /// Requests counted so far.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// Counts a request that started `now`; `Some` when its response must close the
    /// connection.
    pub fn count(&mut self, cfg: &Config, now: Instant) -> Option<Retire> {
        self.requests = self.requests.saturating_add(1);
        let max = cfg.limits.max_requests_per_connection;
        let age_ms = epoch_ms(now).wrapping_sub(self.opened_ms);
        if max != 0 && self.requests >= max {
            Some(Retire::Requests)
        } else if u128::from(age_ms) >= cfg.timeouts.client_keepalive_time.as_millis() {
            Some(Retire::KeepaliveTime)
        } else {
            None
        }
    }
}

/// What a connection keeps of the `[[listener]]` it was accepted on: taken from the snapshot
/// in force at the accept. After a reload, its next request takes its listener's settings
/// in force then (`conn::relisten`: a new allow/deny, rate limit or header rule applies to
/// open connections too); a listener the reload removed, or turned from plain to TLS or
/// back, leaves its open connections these.
#[derive(Clone, Default)]
pub struct ListenerSide {
    /// Which listener (`None` only in tests' defaults).
    pub id: Option<crate::snapshot::ListenerId>,
    /// Its TLS (`None`: a plain listener).
    pub tls: Option<Arc<TlsListener>>,
    pub redirect_https: Option<RedirectHttps>,
    /// Its `allow`/`deny`, checked at accept (and at the next request after a reload).
    pub access: AccessList,
    /// Connections start with a PROXY protocol header ([`crate::proxy_protocol`]).
    pub proxy_protocol: bool,
    /// Its `rate_limit`, checked per request before routing.
    pub rate_limit: Option<crate::config::RateLimit>,
    /// Its `request_headers` / `response_headers` ([`crate::rules`]).
    pub request_headers: Option<Box<crate::config::HeaderRules>>,
    pub response_headers: Option<Box<crate::config::HeaderRules>>,
}

impl ListenerSide {
    /// The settings of `shared`'s `listener`-th listener (defaults if it has none).
    pub fn of(shared: &Shared, listener: usize) -> ListenerSide {
        ListenerSide {
            id: shared.listener_ids.get(listener).copied(),
            rate_limit: shared
                .config
                .listeners
                .get(listener)
                .and_then(|l| l.rate_limit.clone()),
            tls: shared.tls.get(listener).cloned(),
            redirect_https: shared
                .config
                .listeners
                .get(listener)
                .and_then(|l| l.redirect_https.clone()),
            access: shared
                .config
                .listeners
                .get(listener)
                .map(|l| l.access.clone())
                .unwrap_or_default(),
            proxy_protocol: shared
                .config
                .listeners
                .get(listener)
                .is_some_and(|l| l.proxy_protocol),
            request_headers: shared
                .config
                .listeners
                .get(listener)
                .and_then(|l| l.request_headers.clone()),
            response_headers: shared
                .config
                .listeners
                .get(listener)
                .and_then(|l| l.response_headers.clone()),
        }
    }
}
