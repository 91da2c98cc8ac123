//! The request path's one error type. Every stage from *route* to *respond* fails with a
//! [`ProxyError`]: which side failed ([`Side`]), how ([`Kind`]), at which stage ([`Stage`]),
//! whether the upstream connection was a reused one and whether any request byte reached a
//! backend, and whether the client already has response bytes. [`ProxyError::answer`] is the
//! one place a failure becomes what the client sees; [`ProxyError::count`] the one place it
//! is counted.

use crate::http::canned::Canned;
use crate::stats::{bump, Stats};

/// Who failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client: it sent something the proxy refuses, was too slow, or went away.
    Client,
    /// A backend, or the upstream as a whole (none usable, all tried, breaker open).
    Upstream,
    /// The proxy's own decision about the request (no route, a forbidden method).
    Proxy,
}

/// How it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The proxy refuses the request with this status (routing and request checks).
    Refused(Canned),
    /// A step ran past its timeout.
    Timeout,
    /// The client moved a body below its minimum rate (`limits.client_body_min_rate`,
    /// `limits.client_send_min_rate`).
    TooSlow,
    /// The peer closed or reset the connection, or an IO call failed.
    Closed,
    /// The peer broke HTTP framing (a bad chunk, a malformed response head).
    Framing,
    /// The request body is larger than `max_body_bytes`.
    TooLarge,
    /// No backend of the upstream is usable (drained, unhealthy, ejected).
    NoneUsable,
    /// Every usable backend was tried and refused the connection.
    Exhausted,
    /// The backend's circuit breaker (this shard's share) is open.
    BreakerOpen,
}

/// Where in the pipeline it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before any backend was chosen (route, request checks).
    Route,
    /// Choosing a backend or connecting to it.
    Connect,
    /// Sending the request head or body.
    Send,
    /// Waiting for the response head.
    Head,
    /// Relaying the response (or the 101 head of an upgrade).
    Body,
}

/// A failed exchange, with what the retry rule and the status choice need to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyError {
    pub side: Side,
    pub kind: Kind,
    pub stage: Stage,
    /// The upstream connection came from the pool.
    pub reused: bool,
    /// Some request byte may have reached a backend.
    pub sent: bool,
    /// Some response byte reached the client: no status can be sent any more.
    pub responded: bool,
    /// The system's reason (errno) of the IO error behind it, for the error log
    /// (`observe::errors::upstream_failed`); 0 for an end of stream, a timeout or a protocol
    /// error. Two bytes (errnos are below 4096): the error lives in every request's future.
    pub os_error: u16,
}

impl ProxyError {
    /// The same failure, found to be the client's: it closed or reset its connection while
    /// the exchange waited ([`crate::io::Deadline::watch`]).
    pub fn client_left(self) -> ProxyError {
        ProxyError {
            side: Side::Client,
            kind: Kind::Closed,
            ..self
        }
    }
}

/// Why the proxy answered a request itself or its exchange ended early: the access log's
/// `$error_reason` ([`Reason::name`]). Four bytes: it lives in every request's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// One of the proxy's own answers, by its status: its
    /// `edgeshard_responses_generated_total` reason (`forbidden`, `rate_limited`, ...).
    Own(u16),
    ClientTimeout,
    ClientTooSlow,
    ClientClosed,
    NoUsableBackend,
    BreakerOpen,
    ConnectFailed,
    UpstreamTimeout,
    UpstreamClosed,
    UpstreamBadResponse,
    /// A route's `auth.forward` service refused the request (its answer was relayed).
    AuthDenied,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Own(status) => crate::http::canned::reason_of(status),
            Reason::ClientTimeout => "client_timeout",
            Reason::ClientTooSlow => "client_too_slow",
            Reason::ClientClosed => "client_closed",
            Reason::NoUsableBackend => "no_usable_backend",
            Reason::BreakerOpen => "breaker_open",
            Reason::ConnectFailed => "connect_failed",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamClosed => "upstream_closed",
            Reason::UpstreamBadResponse => "upstream_bad_response",
            Reason::AuthDenied => "auth_denied",
        }
    }
}

/// What the client gets for a failed exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A canned status (only possible before any response byte was written).
    Status(Canned),
    /// Close the connection without a word (the client went away, or the response head was
    /// already sent and the body cannot be completed).
    Close,
}

impl ProxyError {
    pub fn new(side: Side, kind: Kind, stage: Stage) -> ProxyError {
        ProxyError {
            side,
            kind,
            stage,
            reused: false,
            sent: false,
            responded: false,
            os_error: 0,
        }
    }

    /// A request the proxy refuses before forwarding it.
    pub fn refused(c: Canned) -> ProxyError {
        ProxyError::new(Side::Proxy, Kind::Refused(c), Stage::Route)
    }

    pub fn client(kind: Kind, stage: Stage) -> ProxyError {
        ProxyError::new(Side::Client, kind, stage)
    }

    pub fn upstream(kind: Kind, stage: Stage) -> ProxyError {
        ProxyError::new(Side::Upstream, kind, stage)
    }

    pub fn with_responded(mut self, responded: bool) -> ProxyError {
        self.responded = responded;
        self
    }

    /// The one mapping from a failure to what the client sees.
    pub fn answer(&self) -> Answer {
        if self.responded {
            return Answer::Close;
        }
        let status = match (self.side, self.kind) {
            (_, Kind::Refused(c)) => c,
            (Side::Client, Kind::Timeout | Kind::TooSlow) => Canned::RequestTimeout,
            (Side::Client, Kind::Framing) => Canned::BadRequest,
            (_, Kind::TooLarge) => Canned::PayloadTooLarge,
            (Side::Client, Kind::Closed) => return Answer::Close,
            (_, Kind::NoneUsable | Kind::BreakerOpen) => Canned::ServiceUnavailable,
            (_, Kind::Exhausted) => Canned::BadGateway,
            (_, Kind::Timeout | Kind::TooSlow) => Canned::GatewayTimeout,
            (_, Kind::Closed | Kind::Framing) => Canned::BadGateway,
        };
        Answer::Status(status)
    }

    /// Why the exchange ended so, for the access log's `$error_reason`.
    pub fn reason(&self) -> Reason {
        match (self.side, self.kind) {
            (_, Kind::Refused(c)) => Reason::Own(c.status()),
            (_, Kind::TooLarge) => Reason::Own(413),
            (Side::Client, Kind::Framing) => Reason::Own(400),
            (Side::Client, Kind::Timeout) => Reason::ClientTimeout,
            (Side::Client, Kind::TooSlow) => Reason::ClientTooSlow,
            (Side::Client, Kind::Closed) => Reason::ClientClosed,
            (_, Kind::NoneUsable) => Reason::NoUsableBackend,
            (_, Kind::BreakerOpen) => Reason::BreakerOpen,
            (_, Kind::Exhausted) => Reason::ConnectFailed,
            (_, Kind::Timeout | Kind::TooSlow) => Reason::UpstreamTimeout,
            (_, Kind::Closed) => Reason::UpstreamClosed,
            (_, Kind::Framing) => Reason::UpstreamBadResponse,
        }
    }

    /// Counts the failure: a client that went away is a client abort; a backend that failed
    /// after it was sent the request (a reset, a malformed head, a body cut short or stalled)
    /// is an upstream abort. A response head that never came in time is counted as a 504 only.
    /// A client below its minimum rate is counted by which body it was slow on.
    pub fn count(&self, stats: &Stats) {
        match (self.side, self.kind, self.stage) {
            (Side::Client, Kind::Closed, _) => bump(&stats.client_aborts),
            (Side::Client, Kind::TooSlow, Stage::Send) => bump(&stats.slow_request_bodies),
            (Side::Client, Kind::TooSlow, _) => bump(&stats.slow_response_readers),
            (Side::Upstream, Kind::Timeout, Stage::Head | Stage::Send) => {}
            (Side::Upstream, Kind::Closed | Kind::Framing | Kind::Timeout, _) => {
                bump(&stats.upstream_aborts)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_maps_to_one_answer() {
        use Kind::*;
        let cases = [
            (
                Side::Client,
                Timeout,
                Stage::Send,
                Answer::Status(Canned::RequestTimeout),
            ),
            (
                Side::Client,
                Framing,
                Stage::Send,
                Answer::Status(Canned::BadRequest),
            ),
            (
                Side::Client,
                TooLarge,
                Stage::Send,
                Answer::Status(Canned::PayloadTooLarge),
            ),
            (Side::Client, Closed, Stage::Send, Answer::Close),
            (
                Side::Client,
                TooSlow,
                Stage::Send,
                Answer::Status(Canned::RequestTimeout),
            ),
            (
                Side::Upstream,
                NoneUsable,
                Stage::Connect,
                Answer::Status(Canned::ServiceUnavailable),
            ),
            (
                Side::Upstream,
                BreakerOpen,
                Stage::Connect,
                Answer::Status(Canned::ServiceUnavailable),
            ),
            (
                Side::Upstream,
                Exhausted,
                Stage::Connect,
                Answer::Status(Canned::BadGateway),
            ),
            (
                Side::Upstream,
                Timeout,
                Stage::Head,
                Answer::Status(Canned::GatewayTimeout),
            ),
            (
                Side::Upstream,
                Closed,
                Stage::Head,
                Answer::Status(Canned::BadGateway),
            ),
            (
                Side::Upstream,
                Framing,
                Stage::Head,
                Answer::Status(Canned::BadGateway),
            ),
            (
                Side::Proxy,
                Refused(Canned::NotFound),
                Stage::Route,
                Answer::Status(Canned::NotFound),
            ),
        ];
        for (side, kind, stage, want) in cases {
            assert_eq!(
                ProxyError::new(side, kind, stage).answer(),
                want,
                "{side:?} {kind:?}"
            );
        }
    }

    #[test]
    fn nothing_but_a_close_once_the_client_has_response_bytes() {
        let e = ProxyError::upstream(Kind::Closed, Stage::Body).with_responded(true);
        assert_eq!(e.answer(), Answer::Close);
        let e = ProxyError::upstream(Kind::Timeout, Stage::Body);
        assert_eq!(e.answer(), Answer::Status(Canned::GatewayTimeout));
    }

    #[test]
    fn aborts_are_counted_by_side() {
        let stats = Stats::new(0, 0);
        ProxyError::client(Kind::Closed, Stage::Body).count(&stats);
        ProxyError::upstream(Kind::Closed, Stage::Head).count(&stats);
        ProxyError::upstream(Kind::Timeout, Stage::Head).count(&stats);
        ProxyError::upstream(Kind::Timeout, Stage::Body).count(&stats);
        ProxyError::refused(Canned::NotFound).count(&stats);
        ProxyError::client(Kind::TooSlow, Stage::Send).count(&stats);
        ProxyError::client(Kind::TooSlow, Stage::Body)
            .with_responded(true)
            .count(&stats);
        assert_eq!(stats.client_aborts.get(), 1);
        assert_eq!(stats.upstream_aborts.get(), 2);
        assert_eq!(stats.slow_request_bodies.get(), 1);
        assert_eq!(stats.slow_response_readers.get(), 1);
    }
}
