//! Stages 4 and 5 of the pipeline for one request, the attempt machine's choices
//! (`forward/mod.rs` runs the machine): *balance*, the pick and a retry's pick, within the
//! retry budget; *pool*, a pooled connection or a new one, and what a failed connect leads
//! to by the retry rule; the breaker's refusal; and each try as the access log lists it.

use std::time::Instant;

use super::*;
use crate::health::breaker::{Breaker, Turn};
use std::rc::Rc;

impl<'a> Forward<'a> {
    /// A try as the access log lists it: the backend's status (or the 502 or 504 nginx
    /// writes), from its first byte sent to its head, and its connect.
    pub(super) fn logged(
        &self,
        backend: usize,
        t: &TryResult,
        connect_us: Option<u32>,
    ) -> UpstreamTry {
        let us = micros(t.sending);
        UpstreamTry {
            address: self.shared().backends[backend].address,
            status: t
                .got
                .as_ref()
                .map_or_else(|f| f.logged_status(), |h| h.status),
            us,
            connect_us: connect_us.map(u64::from),
            header_us: t.got.is_ok().then_some(us),
        }
    }

    /// A connect failed (nothing was sent): another backend, by the retry rule, or 502.
    pub(super) fn connect_failed(
        &self,
        req: &mut Request<'a>,
        backend: usize,
        trace: &mut Trace,
        picked: Instant,
    ) -> Result<Step<'a>, ProxyError> {
        req.tries.tried.push(backend);
        req.tries.connect_failures += 1;
        let failed = TryOutcome::ConnectFailure;
        let decision = self.after(
            &req.facts,
            &req.tries,
            failed,
            (false, true),
            (false, false),
        );
        let us = micros(picked);
        let t = UpstreamTry {
            address: self.shared().backends[backend].address,
            status: 502,
            us,
            connect_us: Some(us),
            header_us: None,
        };
        if decision == Decision::ConnectAnother {
            trace.tried(t);
            Ok(Step::Pick { chosen: None })
        } else {
            trace.last_try(&t);
            Err(ProxyError::upstream(Kind::Exhausted, Stage::Connect))
        }
    }

    /// Balance: the chosen backend, or the balancer's pick among those not yet tried.
    pub(super) fn pick(
        &self,
        upstream: usize,
        chosen: Option<usize>,
        key: PickKey,
        tries: &mut Tries,
    ) -> Result<usize, ProxyError> {
        if let Some(b) = chosen {
            return Ok(b);
        }
        let (pick, set) = self.backends().pick(
            self.shared(),
            upstream,
            &tries.tried,
            crate::clock::now(),
            key,
        );
        tries.set_cookie = set;
        match pick {
            Pick::Backend(b) => Ok(b),
            Pick::NoneUsable => Err(ProxyError::upstream(Kind::NoneUsable, Stage::Connect)),
            Pick::Exhausted => Err(ProxyError::upstream(Kind::Exhausted, Stage::Connect)),
        }
    }

    /// The breaker's queue (every usable backend of the tier at its `max_requests`): waits
    /// for a place, the request counted at `home`, the backend picked for it. The place may
    /// come from another backend of the tier (their queues serve each other's,
    /// `Breaker::link`); one at a backend it cannot use now (tried, or drained, failing or
    /// ejected meanwhile) is passed on and the request waits on, keeping its turn, while one
    /// of the tier is left that it may use (one it refused that is back serves it again:
    /// `Turn::reconsider`); `None` when none is: pick again. Only a pinned
    /// request (hash, sticky cookie) takes its own backend's place whatever its state, as it
    /// waited for that one. A wait adds its time to `queued_us` (`$upstream_queue_time`).
    pub(super) async fn queue(
        &self,
        home: usize,
        tries: &Tries,
        queued_us: &mut u32,
    ) -> Result<Option<(usize, Permit)>, Open> {
        let breakers = &self.backends().breakers;
        let pinned = !crate::upstream::state::unpinned(self.shared(), tries.upstream);
        // The backend (global index) of a breaker: one of this upstream's, as every breaker
        // linked to `home` is (None for one of an older snapshot's).
        let range = self.shared().upstream_backends[tries.upstream].clone();
        let backend_of = |b: &Rc<Breaker>| range.clone().find(|&g| Rc::ptr_eq(&breakers[g], b));
        // Whether the request may use `b` now (as a pick would choose it).
        let usable = |b: &Rc<Breaker>| {
            let now = crate::clock::now();
            backend_of(b).is_some_and(|g| {
                self.backends()
                    .is_usable(self.shared(), g, &tries.tried, now)
            })
        };
        let mut turn = Turn::new(tries.tried.iter().map(|&t| &breakers[t]));
        let queued = &self.stats().backends[home].breaker_queued;
        // Set (and counted) once, when it first waits: `wait_request` runs `entered` only
        // then. Read afresh: the shard's clock is the poll's.
        let mut since = None;
        let got = loop {
            // A backend it refused a place at that is back meanwhile serves it again.
            turn.reconsider(usable);
            let entered = || {
                bump(queued);
                since = Some(Instant::now());
            };
            let permit = match breakers[home]
                .wait_request(&mut turn, entered, usable)
                .await
            {
                Ok(permit) => permit,
                Err(open) => break Err(open),
            };
            let at = range.clone().find(|&g| permit.is_at(&breakers[g]));
            match at {
                Some(b) if pinned && b == home || usable(&breakers[b]) => {
                    break Ok(Some((b, permit)));
                }
                _ => turn.refuse(permit),
            }
            // No backend of its tier left that it may use (all drained, failing or ejected
            // while it waited): it is picked again (a backup, or the 503 of none usable).
            if !usable(&breakers[home]) && !breakers[home].any_linked(usable) {
                break Ok(None);
            }
        };
        if let Some(since) = since {
            let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
            let waited = u64::from(*queued_us).saturating_add(us);
            *queued_us = saturating_u32(waited).max(1);
        }
        got
    }

    /// The guards of a resend to the same backend: its in-flight count starts again (the
    /// previous one ends first), and it keeps its breaker place. Given back, the place would
    /// go straight to a request waiting in the backend's queue, and the resend get the 503.
    pub(super) fn regain(&self, backend: usize, guards: TryGuards<'a>) -> TryGuards<'a> {
        let TryGuards { in_flight, _permit } = guards;
        drop(in_flight);
        let in_flight =
            self.backends()
                .forwarding(self.shared(), &self.stats().backends[backend], backend);
        TryGuards { in_flight, _permit }
    }

    /// The one retry rule, with this request's facts. `(any_response_byte, responded)`: some
    /// response byte arrived from the backend; some (interim) response byte went to the
    /// client.
    pub(super) fn after(
        &self,
        facts: &RequestFacts,
        tries: &Tries,
        outcome: TryOutcome,
        (reused, head_kept): (bool, bool),
        (any_response_byte, responded): (bool, bool),
    ) -> Decision {
        let res = &self.cfg().upstreams[tries.upstream].resilience;
        decide(
            &res.retry,
            &Try {
                outcome,
                idempotent: facts.method.is_idempotent(),
                has_body: !facts.framing.is_empty(),
                reused,
                any_response_byte,
                responded,
                attempt: tries.attempt,
                connect_failures: tries.connect_failures,
                was_resend: tries.resending,
                head_kept,
                // Read the clock only when a total timeout is set.
                time_left: res.retry.total_timeout.is_none()
                    || res
                        .retry
                        .has_time_left(tries.first_try, crate::clock::now()),
            },
        )
    }

    /// A policy retry: a usable backend this request has not tried, if the budget allows.
    pub(super) fn retry_pick(
        &self,
        failed: usize,
        outcome: TryOutcome,
        key: PickKey,
        tries: &mut Tries,
    ) -> Option<usize> {
        let upstream = tries.upstream;
        // The budget first: a pick moves the balancer (round robin's cursor), and a refused
        // retry that had picked would hand the failing backend every next first try.
        let mut others = tries.tried.clone();
        others.push(failed);
        if !self.backends().budget_allows(upstream) {
            // Counted only when the retry had somewhere to go.
            let now = crate::clock::now();
            if self
                .backends()
                .any_usable(self.shared(), upstream, &others, now)
            {
                self.backends().budget_deny(upstream);
            }
            return None;
        }
        let (pick, set) =
            self.backends()
                .pick(self.shared(), upstream, &others, crate::clock::now(), key);
        let Pick::Backend(next) = pick else {
            return None;
        };
        self.backends().budget_spend(upstream);
        tries.set_cookie = set;
        bump(&self.stats().retries);
        if self.errors().allow(self.stats()) {
            tracing::info!(backend = %self.shared().backends[failed].address, ?outcome, "retrying on another backend");
        }
        tries.tried.push(failed);
        tries.attempt += 1;
        tries.resending = false;
        Some(next)
    }

    /// Pool: a pooled connection to `backend`, unless this try must be `fresh`.
    #[inline]
    pub(super) fn pooled(
        &self,
        backend: usize,
        fresh: bool,
    ) -> Option<(Transport, Option<Awaited<'a>>)> {
        if fresh {
            return None;
        }
        let (conn, posted) = self
            .pool()
            .borrow_mut()
            .checkout_armed(backend, crate::clock::now())?;
        let awaited = posted.map(|p| match p {
            Posted::Receive(op) => Awaited::Receive(self.buffers().await_receive(op)),
            Posted::Ready(wait) => Awaited::Ready(wait),
        });
        Some((conn, awaited))
    }

    /// A new connection to `backend`, within the breaker's connection and pending limits.
    /// `ends`: whom a PROXY header names (see [`Connector::ends`]). `Ok(None)`: the connect
    /// failed.
    pub(super) async fn connect(
        &self,
        backend: usize,
        ends: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<Option<Transport>, ProxyError> {
        let room = || crate::reclaim::descriptor(self.ctx, self.ctx);
        let connector = Connector {
            shared: self.shared(),
            stats: self.stats(),
            errors: self.errors(),
            backends: self.backends(),
            ends,
            room: Some(&room),
        };
        let idle = self.pool().borrow().idle_for(backend);
        match connector.connect_within(backend, idle).await {
            Ok(c) => Ok(Some(c)),
            Err(Refused::Failed(_)) => Ok(None),
            Err(Refused::Breaker(open)) => Err(self.breaker_open(backend, open)),
        }
    }

    /// A breaker limit was reached: count it and answer 503 without trying.
    pub(super) fn breaker_open(&self, backend: usize, open: Open) -> ProxyError {
        bump(&self.stats().backends[backend].breaker_rejected);
        if self.errors().allow(self.stats()) {
            tracing::warn!(backend = %self.shared().backends[backend].address, "{open}");
        }
        ProxyError::upstream(Kind::BreakerOpen, Stage::Connect)
    }
}
