//! Stages 4 to 6 of the pipeline for one request: *balance* (pick a backend), *pool* (check a
//! connection out, or connect), *forward* (send the head and body, read the response head,
//! relaying interim 1xx responses to the client as they come: see [`crate::relay`]).
//! The upstream attempt loop is an explicit state machine (`Step`): each step names what it
//! holds, and after every try that gave no usable response the one retry rule
//! ([`crate::health::retry::decide`]) says what comes next. A request that may have reached a
//! backend is never replayed unless that rule allows it, and one whose backend's interim
//! response already reached the client never is.
//!
//! A backend may answer before it has read the whole request body (a 413 or 401 on an
//! upload, then close): the body stops, and its answer is relayed ([`Answered::early`]).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::clock::micros;
use crate::config::Config;
use crate::error::{Kind, ProxyError, Stage};
use crate::health::breaker::{Open, Permit, Resource};
use crate::health::retry::{decide, Decision, Try};
use crate::health::Outcome as TryOutcome;
use crate::http::encode::OutFraming;
use crate::http::parse::{BodyFraming, HeadLimits, Method, ResponseHead};
use crate::io::{write_from, IoFail};
use crate::observe::access::UpstreamTry;
use crate::observe::errors::ErrorLimiter;
use crate::relay::{head_read_size, read_response_head, HeadFail, HeadRead, Interim};
use crate::shard::{Buffers, PooledBuf, ShardCtx};
use crate::snapshot::Shared;
use crate::splice::PipePool;
use crate::stats::{bump, Stats};
use crate::trace::{saturating_u32, Trace};
use crate::transport::Transport;
use crate::upstream::connect::{Connector, Refused};
use crate::upstream::pool::{Pool, Posted};
use crate::upstream::state::{Backends, Forwarding, Pick, PickKey};

mod body;
mod buffer;
mod steps;
pub(crate) use buffer::read_whole_body;
mod wait;

use wait::{already_received, wait_ready, wait_response, Awaited};

/// The facts of the request the later stages need once the head buffer is reused.
#[derive(Clone, Copy)]
pub struct RequestFacts {
    pub method: Method,
    pub minor: u8,
    pub keep_alive: bool,
    pub framing: BodyFraming,
    pub expect_continue: bool,
    pub head_len: usize,
    /// The client asked to switch protocols and the upgrade will be forwarded.
    pub upgrade: bool,
    /// Who the client is ([`crate::admission::client_address`]).
    pub client_ip: std::net::IpAddr,
}

/// A request routed and encoded for its upstream, ready to send.
pub struct Prepared<'a> {
    pub upstream: usize,
    pub key: PickKey,
    /// The upstream request head (kept for a possible retry).
    pub out: PooledBuf<'a>,
    pub out_framing: OutFraming,
    /// The route's `max_body_bytes`: a chunked body past it gets `413`.
    pub body_limit: u64,
}

/// The forward stages of one request, on its shard: the snapshot's configuration and
/// backends, the pool, the counters, and the shard's own (a route's `mirror` starts its
/// copies there, [`crate::mirror::copy`]). One reference: every request's future holds it.
pub struct Forward<'a> {
    pub ctx: &'a ShardCtx,
}

impl<'a> Forward<'a> {
    pub fn new(ctx: &'a ShardCtx) -> Forward<'a> {
        Forward { ctx }
    }

    /// The configuration in force for this request (the snapshot's).
    pub fn cfg(&self) -> &'a Config {
        &self.ctx.shared.config
    }

    pub fn shared(&self) -> &'a Shared {
        &self.ctx.shared
    }

    pub fn backends(&self) -> &'a Backends {
        &self.ctx.backends
    }

    pub fn pool(&self) -> &'a RefCell<Pool> {
        &self.ctx.pool
    }

    pub fn stats(&self) -> &'a Stats {
        &self.ctx.stats
    }

    pub fn errors(&self) -> &'a ErrorLimiter {
        &self.ctx.errors
    }

    pub fn pipes(&self) -> &'a PipePool {
        &self.ctx.pipes
    }

    pub fn buffers(&self) -> &'a Buffers {
        &self.ctx.buffers
    }
}

/// A backend's response head, with the connection it came on and what still counts the
/// request against that backend (released when the response has been relayed).
pub struct Answered<'a> {
    pub upstream: Transport,
    pub backend: usize,
    pub head: ResponseHead,
    /// The head, and whatever of the body came with it.
    pub ubuf: PooledBuf<'a>,
    /// The request head buffer, reused for the client's response head.
    pub out: PooledBuf<'a>,
    /// A sticky session starts or moved: the response names the backend in a cookie.
    pub set_cookie: bool,
    /// When the request's first byte went to this backend.
    pub sending: Instant,
    /// The backend answered before it took the whole request body: the client's body is
    /// unread, so its connection closes after the response.
    pub early: bool,
    /// Interim (1xx) responses were relayed to the client before this head: a failure from
    /// here on closes the connection instead of answering with a status.
    pub interim: bool,
    pub guards: TryGuards<'a>,
}

/// What one try holds while it runs: the backend's in-flight count and its breaker permit.
/// Dropped (released) when the try ends, by ownership, whichever way it ends.
pub struct TryGuards<'a> {
    in_flight: Forwarding<'a>,
    _permit: Permit,
}

/// The attempt machine's steps.
enum Step<'a> {
    /// Choose a backend: the balancer's pick, or the one a retry already chose.
    Pick { chosen: Option<usize> },
    /// Take this shard's breaker permits, then a pooled connection (unless `fresh`) or a new
    /// one.
    Connect {
        backend: usize,
        fresh: bool,
        guards: TryGuards<'a>,
    },
    /// Send the head (and the body), then read the response head.
    Exchange {
        backend: usize,
        conn: Transport,
        /// The op posted on a pooled connection (see `upstream::pool`).
        ready: Option<Awaited<'a>>,
        reused: bool,
        guards: TryGuards<'a>,
    },
}

/// One request's state across the machine's steps.
struct Request<'a> {
    prepared: Prepared<'a>,
    facts: RequestFacts,
    /// The response head (and what came with it) is read into this.
    ubuf: PooledBuf<'a>,
    tries: Tries,
}

/// The connection one try runs on, and what counts that try against its backend.
struct Conn<'c, 'g> {
    backend: usize,
    conn: &'c mut Transport,
    /// Awaited for the response, when the pool posted it.
    ready: Option<Awaited<'g>>,
    reused: bool,
    guards: &'c mut TryGuards<'g>,
}

/// What one try produced.
struct TryResult {
    got: Result<ResponseHead, HeadFail>,
    outcome: TryOutcome,
    /// Some response byte arrived.
    any_byte: bool,
    /// Some interim response was relayed to the client: no retry, no status of our own.
    responded: bool,
    /// The request body stopped because the backend closed (it may have answered early).
    body_stopped: bool,
    /// When the request's first byte went out.
    sending: Instant,
}

impl TryResult {
    /// The error for a try that ends the request without a response head.
    fn error(&self, fail: &HeadFail, reused: bool) -> ProxyError {
        let kind = match fail {
            HeadFail::Io(IoFail::Timeout) => Kind::Timeout,
            HeadFail::Io(_) | HeadFail::Client(_) => Kind::Closed,
            HeadFail::Bad => Kind::Framing,
        };
        let stage = if self.body_stopped {
            Stage::Send
        } else {
            Stage::Head
        };
        // Interim heads relayed (`self.responded`) still leave the final response to send: the
        // client gets the 502 or 504, as HAProxy sends it after a 103 (nothing is retried).
        let os_error = match fail {
            HeadFail::Io(IoFail::Io(e)) => e.raw_os_error().and_then(|c| u16::try_from(c).ok()),
            _ => None,
        };
        ProxyError {
            reused,
            sent: true,
            os_error: os_error.unwrap_or(0),
            ..ProxyError::upstream(kind, stage)
        }
    }
}

/// Counts across the tries of one request.
struct Tries {
    upstream: usize,
    first_try: Instant,
    /// Backends this request tried (a failed connect, or a retried try). Bounded.
    tried: Vec<usize>,
    /// Policy tries so far (the first included).
    attempt: u32,
    connect_failures: usize,
    /// The current try is the fresh-connection resend of a stale pooled connection.
    resending: bool,
    set_cookie: bool,
}

impl<'a> Forward<'a> {
    /// Runs the attempt machine to a response head, or to the error the client is answered
    /// with. `trace` records the backend chosen.
    pub async fn forward(
        &self,
        client: &mut Client,
        mut prepared: Prepared<'a>,
        mut facts: RequestFacts,
        trace: &mut Trace,
    ) -> Result<Answered<'a>, ProxyError> {
        let upstream = prepared.upstream;
        // The body read whole holds its charge until the forward ends.
        let mut _buffered = None;
        if self.cfg().upstreams[upstream].buffer_request_body > 0 && !facts.framing.is_empty() {
            // Boxed: only requests with a body to an upstream that buffers them wait here.
            _buffered = Box::pin(self.buffer_body(client, &mut facts, &mut prepared)).await?;
        }
        // The route's `mirror`: a copy now, with the body if it is in hand.
        if let Some(route) = trace.route() {
            crate::mirror::copy(self.ctx, route, &prepared, &facts, &client.buf);
        }
        // `proxy_protocol` upstreams: whom the header on a new connection names.
        let ends = if self.cfg().upstreams[upstream].proxy_protocol.is_some() {
            let local = client.stream.tcp().local_addr().ok();
            local.map(|l| (client.peer, l))
        } else {
            None
        };
        let first_try = crate::clock::now();
        self.backends().budget_request(upstream);
        let mut req = Request {
            prepared,
            facts,
            ubuf: self.buffers().none(),
            tries: Tries {
                upstream,
                first_try,
                tried: Vec::new(),
                attempt: 1,
                connect_failures: 0,
                resending: false,
                set_cookie: false,
            },
        };
        let mut step = Step::Pick { chosen: None };
        loop {
            step = match step {
                Step::Pick { chosen } => 'pick: {
                    // No backend left, or its breaker refuses: the last try listed is the
                    // request's last.
                    let key = req.prepared.key;
                    let backend = self
                        .pick(upstream, chosen, key, &mut req.tries)
                        .inspect_err(|_| trace.last_try_was_listed())?;
                    // The breaker's request permit is this shard's share; over it, a
                    // backend with a queue has the request wait for a place (boxed: only
                    // then is the wait's state needed).
                    let breaker = &self.backends().breakers[backend];
                    let got = match breaker.try_acquire(Resource::Requests) {
                        Ok(permit) => Ok(Some((backend, permit))),
                        Err(_) if breaker.queues() => {
                            Box::pin(self.queue(backend, &req.tries, &mut trace.queued_us)).await
                        }
                        Err(open) => Err(open),
                    }
                    .map_err(|open| {
                        trace.last_try_was_listed();
                        self.breaker_open(backend, open)
                    })?;
                    // Its whole tier became unusable while it waited: picked again.
                    let Some((backend, permit)) = got else {
                        break 'pick Step::Pick { chosen: None };
                    };
                    // Counted against the backend from here on (load-aware balancers see
                    // it; its latency sample leaves the wait out).
                    let in_flight = self.backends().forwarding(
                        self.shared(),
                        &self.stats().backends[backend],
                        backend,
                    );
                    trace.backend = Some(backend as u32);
                    Step::Connect {
                        backend,
                        fresh: req.tries.resending,
                        guards: TryGuards {
                            in_flight,
                            _permit: permit,
                        },
                    }
                }
                Step::Connect {
                    backend,
                    fresh,
                    guards,
                } => match self.pooled(backend, fresh) {
                    Some((conn, ready)) => {
                        trace.upstream_connect_us = Some(0);
                        Step::Exchange {
                            backend,
                            conn,
                            ready,
                            reused: true,
                            guards,
                        }
                    }
                    None => match self.connect(backend, ends).await? {
                        Some(conn) => {
                            let us = micros(guards.in_flight.since());
                            trace.upstream_connect_us = Some(saturating_u32(us));
                            Step::Exchange {
                                backend,
                                conn,
                                ready: None,
                                reused: false,
                                guards,
                            }
                        }
                        None => {
                            let picked = guards.in_flight.since();
                            self.connect_failed(&mut req, backend, trace, picked)?
                        }
                    },
                },
                Step::Exchange {
                    backend,
                    mut conn,
                    ready,
                    reused,
                    mut guards,
                } => {
                    let t = self
                        .exchange(
                            client,
                            &mut req,
                            trace,
                            Conn {
                                backend,
                                conn: &mut conn,
                                ready,
                                reused,
                                guards: &mut guards,
                            },
                        )
                        .await?;
                    let decision = self.after(
                        &req.facts,
                        &req.tries,
                        t.outcome,
                        (reused, !req.prepared.out.is_empty()),
                        (t.any_byte, t.responded),
                    );
                    if decision == Decision::ResendFresh {
                        // A keep-alive race, not the backend's latency.
                        bump(&self.stats().retries);
                        guards.in_flight.sent = false;
                        req.tries.resending = true;
                        req.ubuf.clear();
                        // `req.prepared.out` still holds the head to resend.
                        Step::Connect {
                            backend,
                            fresh: true,
                            guards: self.regain(backend, guards),
                        }
                    } else {
                        let o = t.outcome;
                        self.backends().observe(
                            self.shared(),
                            self.stats(),
                            self.errors(),
                            backend,
                            o,
                        );
                        let retry = (decision == Decision::RetryAnother)
                            .then(|| self.retry_pick(backend, o, req.prepared.key, &mut req.tries))
                            .flatten();
                        let logged = self.logged(backend, &t, trace.upstream_connect_us);
                        if let Some(next) = retry {
                            trace.tried(logged);
                            // A reset says nothing about the backend's speed.
                            if o == TryOutcome::Reset {
                                guards.in_flight.sent = false;
                            }
                            req.ubuf.clear();
                            // The connection is dropped: its response (if any) is unread.
                            Step::Pick { chosen: Some(next) }
                        } else {
                            trace.last_try(&logged);
                            let head = match t.got {
                                Ok(head) => head,
                                Err(ref fail) => return Err(t.error(fail, reused)),
                            };
                            self.stats().record_first_byte(logged.us);
                            return Ok(Answered {
                                upstream: conn,
                                backend,
                                head,
                                ubuf: req.ubuf,
                                out: req.prepared.out,
                                set_cookie: req.tries.set_cookie,
                                sending: t.sending,
                                early: t.body_stopped,
                                interim: t.responded,
                                guards,
                            });
                        }
                    }
                }
            };
        }
    }

    /// One try on a connection: `100 Continue` if asked for, the head and body, then the
    /// response head. The error is the client's side failing (the try cannot go on).
    async fn exchange(
        &self,
        client: &mut Client,
        req: &mut Request<'a>,
        trace: &mut Trace,
        mut on: Conn<'_, '_>,
    ) -> Result<TryResult, ProxyError> {
        let Request {
            prepared,
            facts,
            ubuf,
            tries,
        } = req;
        let facts = &*facts;
        // `100 Continue` once we know the request will go somewhere.
        if facts.expect_continue
            && facts.minor == 1
            && !facts.framing.is_empty()
            && client.buf.is_empty()
        {
            Box::pin(self.send_continue(client)).await?;
        }
        // From here the backend may have the request.
        on.guards.in_flight.sent = true;
        let sending = crate::clock::now();
        let sent = if facts.framing.is_empty() {
            // The common case, a bodiless head, without the body relay's layers.
            let out = &mut *prepared.out;
            let n = out.len();
            let t = self.cfg().upstream_response(tries.upstream);
            write_from(on.conn, out, 0, n, &mut client.deadline, t).await
        } else {
            let (conn, ready, backend) = (&mut *on.conn, &mut on.ready, on.backend);
            let sent = Box::pin(
                self.send_body_watched(client, conn, ready, prepared, facts, backend, trace),
            )
            .await;
            sent.map_err(|e| ProxyError {
                reused: on.reused,
                ..e
            })?
        };
        // This try's bound on the response head: upstream_response, or the retry policy's
        // per-try and total timeouts when they are shorter.
        let retry = &self.cfg().upstreams[tries.upstream].resilience.retry;
        let most = self.cfg().upstream_response(tries.upstream);
        let timeout = retry
            .try_deadline(tries.first_try, sending)
            .map_or(most, |d| d.saturating_duration_since(sending).min(most));
        let mut any_byte = false;
        // While it waits for the answer, the exchange keeps an eye on its client: one that
        // left ends the wait (the backend connection is closed, not pooled).
        client.deadline.watch(client.stream.tcp().as_raw_fd());
        let mut interim = Interim {
            client: &mut client.stream,
            client_minor: facts.minor,
            write_timeout: self.cfg().timeouts.client_send,
            hide: &self.cfg().response.hide,
            relayed: false,
        };
        let body_stopped = sent.is_err();
        let got = match sent {
            // The body stopped because the backend closed: it may have answered first (read
            // what it sent). A bodiless request has no answer yet, and a stalled backend is
            // not waited for twice: after the body's write timed out, only an answer waiting
            // (a 401 to an upload from a backend that then stopped reading) is read.
            Err(e)
                if facts.framing.is_empty()
                    || matches!(e, IoFail::Timeout)
                        && !body::answer_waiting(on.conn, &mut on.ready) =>
            {
                Err(HeadFail::Io(e))
            }
            _ => {
                // The read buffer is taken when the response can be read, and the first
                // read takes what is there at once (`HeadRead::ready`): memory follows the
                // responses being read, not the requests waiting for theirs. That is the
                // rule where that read can be a direct one (a plain socket on io_uring).
                // On epoll, whose own read already waits for readiness (a wait of ours
                // costs a poll(2) more), and for TLS (read through rustls), the buffer is
                // taken first while the shard has one free. A buffer already held (a
                // resend) reads as before.
                // On a plain connection on io_uring with a small response expected, the
                // response is instead received into a buffer the kernel picks when it
                // arrives (`crate::bufring`): no read of ours at all.
                // A receive posted on the connection is always awaited, even with a buffer
                // already held (a retry's): a read of ours beside it would find nothing.
                let direct = on.conn.plain().is_some() && !monoio::utils::is_legacy();
                let receiving =
                    matches!(on.ready, Some(Awaited::Receive(_) | Awaited::Received(_)));
                let wait_first =
                    receiving || ubuf.capacity() == 0 && (direct || !self.buffers().large_free());
                let how = self.head_read(facts, on.backend, timeout, wait_first);
                let ready = if wait_first {
                    let dl = &mut client.deadline;
                    match on.ready {
                        Some(Awaited::Ready(wait)) => wait_ready(wait, dl, timeout).await,
                        Some(Awaited::Receive(r)) => {
                            wait_response(on.conn, Some(r), dl, timeout).await
                        }
                        Some(Awaited::Received(got)) => already_received(got, timeout),
                        None => {
                            let fresh = match on.conn.plain() {
                                Some(s) if direct && self.backends().receives(on.backend) => {
                                    self.buffers().receive(s)
                                }
                                _ => None,
                            };
                            wait_response(on.conn, fresh, dl, timeout).await
                        }
                    }
                } else {
                    Ok((timeout, None))
                };
                match ready {
                    Err(fail) => Err(fail),
                    Ok((timeout, got)) => {
                        let mut how = HeadRead { timeout, ..how };
                        if let Some(got) = got {
                            // Already read: parsed before any read of its own (a buffer
                            // held before, empty, goes back to its list).
                            debug_assert!(ubuf.is_empty());
                            *ubuf = self.buffers().lend(got);
                            how.ready = false;
                            any_byte = true;
                        } else if ubuf.capacity() == 0 {
                            *ubuf = self.buffers().take_large();
                        }
                        let dl = &mut client.deadline;
                        let i = &mut interim;
                        read_response_head(on.conn, ubuf, &how, dl, &mut any_byte, i).await
                    }
                }
            }
        };
        let responded = interim.relayed;
        let got = match got {
            Err(HeadFail::Io(IoFail::Timeout)) if client.deadline.unwatch() => {
                Err(HeadFail::Client(IoFail::Eof))
            }
            got => {
                client.deadline.unwatch();
                got
            }
        };
        if let Err(HeadFail::Client(e)) = got {
            let kind = match e {
                IoFail::Timeout => Kind::Timeout,
                _ => Kind::Closed,
            };
            return Err(ProxyError {
                reused: on.reused,
                sent: true,
                ..ProxyError::client(kind, Stage::Head).with_responded(responded)
            });
        }
        if let Ok(h) = &got {
            self.backends().small_last[on.backend].set(crate::bufring::fits(h));
        }
        let outcome = match &got {
            Ok(h) => TryOutcome::Response { status: h.status },
            Err(HeadFail::Io(IoFail::Timeout)) => TryOutcome::Timeout,
            Err(_) => TryOutcome::Reset,
        };
        Ok(TryResult {
            got,
            outcome,
            any_byte,
            responded,
            body_stopped,
            sending,
        })
    }

    /// How this try reads the response head (`ready`: its socket was just found readable).
    fn head_read(
        &self,
        facts: &RequestFacts,
        backend: usize,
        timeout: Duration,
        ready: bool,
    ) -> HeadRead {
        let cfg = self.cfg();
        HeadRead {
            limits: HeadLimits {
                max_header_bytes: cfg.limits.max_header_bytes.max(16384),
                max_headers: cfg.limits.max_headers.max(100),
                max_uri_bytes: cfg.limits.max_uri_bytes,
            },
            timeout,
            upgrade: facts.upgrade,
            max_read: head_read_size(&cfg.splice, self.backends().spliced_last[backend].get()),
            ready,
        }
    }
}
