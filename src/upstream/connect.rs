//! Stage 5 of the pipeline, *pool*, when the pool has no connection: open a new one to a
//! backend, bounded by `upstream_connect` (TCP and, for an upstream with `tls`, the TLS
//! handshake), with `TCP_NODELAY` and the configured congestion control, counted in the
//! shard's stats. A failed connect is also a passive-check outcome. For an upstream with
//! `proxy_protocol`, the PROXY header naming the client is the connection's first bytes
//! (before a TLS handshake), within the same bound. Every connect goes through the backend's
//! circuit breaker first ([`Connector::connect_within`]).

use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::health::breaker::{Open, Resource};
use crate::health::Outcome as TryOutcome;
use crate::observe::errors::ErrorLimiter;
use crate::snapshot::Shared;
use crate::stats::{bump, Stats};
use crate::transport::Transport;
use crate::upstream::state::Backends;

/// What a connect needs from the shard: the snapshot, its counters, its error-log limiter
/// and its view of the backends (a failure feeds the passive check).
pub struct Connector<'a> {
    pub shared: &'a Shared,
    pub stats: &'a Stats,
    pub errors: &'a ErrorLimiter,
    pub backends: &'a Backends,
    /// The client's address and the address it connected to, for a PROXY header (`None`:
    /// not known, sent as the proxy's own connection).
    pub ends: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Out of descriptors: closes an idle connection to make room, pooled upstream first
    /// ([`crate::reclaim::descriptor`]); `None` where the connect serves no client.
    pub room: Option<&'a dyn Fn() -> bool>,
}

/// A socket could not be made for want of descriptors: the proxy's state, not the backend's.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Why [`Connector::connect_within`] made no connection.
#[derive(Debug)]
pub enum Refused {
    /// A breaker limit (connections or pending connects) was reached: no connect was tried.
    Breaker(Open),
    /// The connect was tried and failed (counted and fed to the passive check).
    Failed(std::io::Error),
}

impl Connector<'_> {
    /// Opens a new connection to `backend` within its breaker's `max_connections` (requests
    /// in flight to it, this one included, plus `idle` pooled connections) and `max_pending`:
    /// the one gate of every connect a request, a forward-auth check or a revalidation makes.
    pub async fn connect_within(&self, backend: usize, idle: usize) -> Result<Transport, Refused> {
        let breaker = &self.backends.breakers[backend];
        if let Some(limit) = breaker.limits().max_connections {
            // `in_flight` already counts this request: after this connect there would be
            // `open` connections.
            let open = self.stats.backends[backend].in_flight.get() + idle as u64;
            if open > u64::from(limit) {
                return Err(Refused::Breaker(Open {
                    resource: Resource::Connections,
                    limit,
                    queue: None,
                }));
            }
        }
        let pending = breaker
            .try_acquire(Resource::Pending)
            .map_err(Refused::Breaker)?;
        // Boxed: the connect's timers (monoio's, 128-byte aligned) would otherwise make every
        // request's boxed exchange future an over-aligned allocation (src/alloc.rs).
        let connected = Box::pin(self.connect(backend)).await;
        drop(pending);
        connected.map_err(Refused::Failed)
    }

    /// Opens a new connection to `backend`.
    pub async fn connect(&self, backend: usize) -> std::io::Result<Transport> {
        let addr = self.shared.backends[backend].address;
        let upstream = self.shared.backends[backend].upstream;
        let tls = self.shared.tls.upstream(upstream);
        let proxy_protocol = self.shared.config.upstreams[upstream].proxy_protocol;
        let timeout = self.shared.config.upstream_connect(upstream);
        let bstats = &self.stats.backends[backend];
        bump(&self.stats.upstream_connects);
        bump(&bstats.connects);
        let started = Instant::now();
        let mut tcp = monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await;
        if matches!(&tcp, Ok(Err(e)) if out_of_descriptors(e))
            && self.room.is_some_and(|room| room())
        {
            // One descriptor freed by closing an idle connection (`reclaim::descriptor`):
            // free once the loop has had a turn (on io_uring, once the driver has
            // submitted the close), within a few milliseconds and within the timeout.
            let wait_until = started + timeout.min(crate::reclaim::ROOM_WAIT);
            loop {
                monoio::time::sleep(Duration::from_millis(1)).await;
                let left = timeout.saturating_sub(started.elapsed());
                tcp = monoio::time::timeout(left, TcpStream::connect_addr(addr)).await;
                let again = matches!(&tcp, Ok(Err(e)) if out_of_descriptors(e));
                if !again || Instant::now() >= wait_until {
                    break;
                }
            }
        }
        let result = match tcp {
            Ok(Ok(mut s)) => {
                let _ = s.set_nodelay(true);
                if let Some(name) = &self.shared.config.congestion.upstream {
                    // Validated at start-up; a refusal now leaves the host's default.
                    if let Err(e) =
                        crate::listener::set_congestion(std::os::fd::AsRawFd::as_raw_fd(&s), name)
                    {
                        tracing::debug!(error = %e, "upstream_congestion");
                    }
                }
                let header = match proxy_protocol {
                    None => Ok(()),
                    Some(v) => {
                        let left = timeout.saturating_sub(started.elapsed());
                        let header = crate::proxy_protocol::encode(v, self.ends);
                        match monoio::time::timeout(left, s.write_all(header)).await {
                            Ok((r, _)) => r.map(drop),
                            Err(_) => Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "sending the PROXY header timed out",
                            )),
                        }
                    }
                };
                match (header, tls) {
                    (Err(e), _) => Err(e),
                    (Ok(()), None) => Ok(Transport::Plain(s)),
                    (Ok(()), Some(tls)) => {
                        let left = timeout.saturating_sub(started.elapsed());
                        match monoio::time::timeout(left, tls.connect(s, addr)).await {
                            Ok(Ok(t)) => Ok(Transport::Tls(Box::new(t))),
                            Ok(Err(e)) => Err(std::io::Error::other(format!(
                                "TLS handshake with the backend failed: {e}"
                            ))),
                            Err(_) => Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "TLS handshake with the backend timed out",
                            )),
                        }
                    }
                }
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )),
        };
        // Timed to when the connection can carry a request: TCP, the PROXY header and the
        // TLS handshake (nginx's $upstream_connect_time counts the handshake too).
        if result.is_ok() {
            self.stats
                .record_connect(started.elapsed().as_micros() as u64);
        }
        if let Err(e) = &result {
            bump(&self.stats.upstream_connect_errors);
            bump(&bstats.connect_errors);
            if self.errors.allow(self.stats) {
                tracing::warn!(backend = %addr, error = %e, "upstream connect failed");
            }
            // Out of descriptors says nothing about the backend: it is not marked failing.
            if !out_of_descriptors(e) {
                self.backends.observe(
                    self.shared,
                    self.stats,
                    self.errors,
                    backend,
                    TryOutcome::ConnectFailure,
                );
            }
        }
        result
    }
}
