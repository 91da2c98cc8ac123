//! Stage 4 of the pipeline, *balance*, with what this shard knows of its backends: the
//! balancer cursors, passive checks (outlier detection), circuit breakers and retry budgets,
//! all per shard and never shared. [`Backends::pick`] chooses a backend (drained, unhealthy,
//! ejected and already-tried backends are skipped, and a recovering backend's share ramps
//! up over `slow_start`); [`Backends::forwarding`] counts a request against its backend
//! until it returns; [`Backends::observe`] feeds each try's outcome to the passive check.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use crate::balance::ShardBalancer;
use crate::carry::Carry;
use crate::health::breaker::{Breaker, BreakerLimits};
use crate::health::outlier::{OutlierDetector, OutlierEvent};
use crate::health::retry::RetryBudget;
use crate::health::slow_start::kept_share;
use crate::health::Outcome as TryOutcome;
use crate::observe::errors::ErrorLimiter;
use crate::snapshot::Shared;
use crate::stats::{bump, BackendStats, Stats};
use crate::upstream::loads::{Change, Loads};

/// This shard's balancer of each upstream of `shared`.
fn balancers(shared: &Shared, shard: usize) -> Vec<ShardBalancer> {
    shared
        .config
        .upstreams
        .iter()
        .map(|u| {
            let members = u.backends.iter().map(|b| (b.weight, b.backup));
            ShardBalancer::with_weights(&u.balance, members, shard)
        })
        .collect()
}

/// A fresh passive check of each upstream of `shared`.
fn outliers(shared: &Shared) -> Vec<OutlierDetector> {
    shared
        .config
        .upstreams
        .iter()
        .map(|u| OutlierDetector::new(u.resilience.outlier.clone(), u.backends.len()))
        .collect()
}

/// Whether `upstream`'s requests are free to go to any of its backends: no hash algorithm,
/// no sticky cookie pins them to one.
pub fn unpinned(shared: &Shared, upstream: usize) -> bool {
    let table = &shared.tables[upstream];
    !table.algorithm().is_hash() && table.sticky().is_none()
}

/// Whether `upstream`'s picks pass over backends at their `max_requests` (nginx's
/// `max_conns`, HAProxy's full servers): it sets that limit, and its requests are unpinned.
fn passes_over_full(shared: &Shared, upstream: usize) -> bool {
    let breaker = &shared.config.upstreams[upstream].resilience.breaker;
    breaker.max_requests.is_some() && unpinned(shared, upstream)
}

/// Whether `upstream` has a breaker queue and its requests are unpinned: then the backends
/// of a tier serve each other's queues ([`link_queues`]).
fn queues_unpinned(shared: &Shared, upstream: usize) -> bool {
    let breaker = &shared.config.upstreams[upstream].resilience.breaker;
    breaker.queue.is_some() && unpinned(shared, upstream)
}

/// Links the breakers of each tier (primaries, backups) of every upstream whose queues are
/// unpinned ([`Breaker::link`]), and unlinks the others' (a carried breaker's upstream may have
/// become pinned).
fn link_queues(shared: &Shared, breakers: &[Rc<Breaker>]) {
    for (u, up) in shared.config.upstreams.iter().enumerate() {
        let range = shared.upstream_backends[u].clone();
        if !queues_unpinned(shared, u) {
            range.for_each(|g| Breaker::link(&[&breakers[g]]));
            continue;
        }
        for backup in [false, true] {
            let in_tier = |g: &usize| up.backends[shared.backends[*g].local].backup == backup;
            let tier: Vec<&Rc<Breaker>> = range
                .clone()
                .filter(in_tier)
                .map(|g| &breakers[g])
                .collect();
            Breaker::link(&tier);
        }
    }
}

/// The outcome of choosing a backend for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Backend(usize),
    /// Every backend recently refused connections: fail fast with 503.
    NoneUsable,
    /// Every usable backend was tried by this request and refused: 502.
    Exhausted,
}

/// A pick's inputs that come from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickKey {
    /// The hash of the request's key (hash algorithms).
    pub hash: Option<u32>,
    /// The member (local index) its sticky cookie names, if valid.
    pub sticky: Option<usize>,
}

/// One shard's view of every backend. Indices are global backend indices (positions in
/// [`Shared::backends`]) unless named local.
pub struct Backends {
    /// The balancers; once a reload replaced this snapshot, what they count is counted on
    /// the shard's newest too (`loads.rs`).
    loads: Rc<Loads>,
    /// Passive checks per upstream (indices local to the upstream).
    outliers: RefCell<Vec<OutlierDetector>>,
    /// Per backend: this shard's share of its circuit-breaker limits.
    pub breakers: Vec<Rc<Breaker>>,
    /// Per upstream: the retry budget.
    budgets: RefCell<Vec<RetryBudget>>,
    /// Per backend: its last response body on this shard qualified for splicing (spliced,
    /// or copied for want of a pipe), so the next response head is read in a small piece
    /// (`relay::head_read_size`).
    pub spliced_last: Vec<Cell<bool>>,
    /// Per backend: its last response on this shard fit in one of the shard's ring buffers
    /// (`crate::bufring::fits`), so the next is received into one.
    pub small_last: Vec<Cell<bool>>,
    /// Slow start's draws (per shard, never shared).
    rng: crate::sample::Rng,
}

impl Backends {
    /// Whether `backend`'s next response is received into a ring buffer: its last one on this
    /// shard fit in one ([`Backends::small_last`]).
    pub fn receives(&self, backend: usize) -> bool {
        self.small_last[backend].get()
    }

    pub fn new(shared: &Shared, shard: usize) -> Backends {
        Backends::build(shared, shard)
    }

    /// A fresh view of `shared`.
    fn build(shared: &Shared, shard: usize) -> Backends {
        let shards = shared.accepting.len().max(1);
        let now = Instant::now();
        let upstreams = &shared.config.upstreams;
        let breakers: Vec<Rc<Breaker>> = shared
            .backends
            .iter()
            .map(|b| {
                let limits: BreakerLimits = upstreams[b.upstream].resilience.breaker;
                Breaker::new(limits.shard_share(shards, shard))
            })
            .collect();
        link_queues(shared, &breakers);
        Backends {
            loads: Loads::new(balancers(shared, shard), shared, None),
            outliers: RefCell::new(outliers(shared)),
            breakers,
            budgets: RefCell::new(
                upstreams
                    .iter()
                    .map(|u| RetryBudget::from_spec(&u.resilience.retry, now))
                    .collect(),
            ),
            spliced_last: shared.backends.iter().map(|_| Cell::new(false)).collect(),
            small_last: shared.backends.iter().map(|_| Cell::new(true)).collect(),
            rng: crate::sample::Rng::new(shard, 0x736c_6f77),
        }
    }

    /// This shard's view for a reloaded snapshot `shared`, keeping what `old` (the view of
    /// `old_shared`) knew of the backends that remain: `carry` says where each was in
    /// `old_shared` (matched by [`crate::snapshot::BackendId`]; `Shared::carry_from`). Kept:
    /// passive-check state (failure counts, ejections), the breaker (the same object, so
    /// requests still in flight on the old snapshot release what they hold, and those in
    /// flight or waiting count against changed limits: `Breaker::set_limits`), the retry
    /// budget of an upstream of the same name and retry settings, the splice hint, and each backend's requests in flight (the old balancers pass on
    /// every start and end: `loads.rs`). Balancer cursors start afresh (the tables may have
    /// changed). This runs on the shard while it switches: what is carried is taken as it
    /// is, not built and then replaced.
    pub fn carried(
        shared: &Shared,
        shard: usize,
        old: &Backends,
        old_shared: &Shared,
        carry: &Carry,
    ) -> Backends {
        let shards = shared.accepting.len().max(1);
        let now = Instant::now();
        let upstreams = &shared.config.upstreams;
        let map = &carry.backends;
        let mut outliers = outliers(shared);
        {
            let old_outliers = old.outliers.borrow();
            for (b, m) in shared.backends.iter().zip(map.iter()) {
                let Some(j) = *m else { continue };
                let was = &old_shared.backends[j];
                outliers[b.upstream].adopt(b.local, &old_outliers[was.upstream], was.local);
            }
        }
        let budgets = {
            let old_budgets = old.budgets.borrow();
            upstreams
                .iter()
                .zip(carry.budgets.iter())
                .map(|(up, kept)| match kept.and_then(|o| old_budgets.get(o)) {
                    Some(b) => b.clone(),
                    None => RetryBudget::from_spec(&up.resilience.retry, now),
                })
                .collect()
        };
        let breakers = shared
            .backends
            .iter()
            .zip(map.iter())
            .map(|(b, m)| {
                let limits = upstreams[b.upstream]
                    .resilience
                    .breaker
                    .shard_share(shards, shard);
                match m.and_then(|j| old.breakers.get(j)) {
                    Some(was) => {
                        if was.limits() != limits {
                            was.set_limits(limits);
                        }
                        was.clone()
                    }
                    None => Breaker::new(limits),
                }
            })
            .collect::<Vec<_>>();
        link_queues(shared, &breakers);
        let hint = |of: &[Cell<bool>], fresh: bool| -> Vec<Cell<bool>> {
            map.iter()
                .map(|m| Cell::new(m.and_then(|j| of.get(j)).map_or(fresh, Cell::get)))
                .collect()
        };
        let next = Backends {
            loads: Loads::new(balancers(shared, shard), shared, Some(&old.loads)),
            outliers: RefCell::new(outliers),
            breakers,
            budgets: RefCell::new(budgets),
            spliced_last: hint(&old.spliced_last, false),
            small_last: hint(&old.small_last, true),
            rng: crate::sample::Rng::new(shard, 0x736c_6f77),
        };
        old.loads.hand_over(&next.loads, map);
        next
    }

    /// Whether [`Backends::pick`] would find a backend of `upstream` (the same skips), without
    /// moving the balancer: a retry the budget refuses is counted only if it had somewhere
    /// to go.
    pub fn any_usable(
        &self,
        shared: &Shared,
        upstream: usize,
        tried: &[usize],
        now: Instant,
    ) -> bool {
        let range = shared.upstream_backends[upstream].clone();
        let outlier = &self.outliers.borrow()[upstream];
        (0..range.len()).any(|i| usable(shared, outlier, range.start, tried, now, i))
    }

    /// Picks a backend of `upstream`, skipping those this request already tried, drained
    /// ones, those failing their health check, and those this shard ejected. Returns whether
    /// a sticky cookie must be set.
    pub fn pick(
        &self,
        shared: &Shared,
        upstream: usize,
        tried: &[usize],
        now: Instant,
        key: PickKey,
    ) -> (Pick, bool) {
        let range = shared.upstream_backends[upstream].clone();
        let outlier = &self.outliers.borrow()[upstream];
        let board = &shared.board;
        let usable = |i: usize| usable(shared, outlier, range.start, tried, now, i);
        let table = &shared.tables[upstream];
        let balancer = &mut self.loads.balancers.borrow_mut()[upstream];
        let first = |b: &mut ShardBalancer| {
            if table.sticky().is_some() {
                let cookie = key.sticky.map(|i| table.sticky_value(i).as_bytes());
                b.pick_sticky(table, cookie, key.hash, usable)
                    .map(|p| (p.index, p.set_cookie))
            } else {
                b.pick(table, key.hash, usable).map(|i| (i, false))
            }
        };
        // A backend at its `max_requests` is passed over while another of its tier has room
        // (nginx's `max_conns`, HAProxy's full servers; a full primary is still usable, so
        // the backups stay out); only when all are full is the backend picked as usual, and
        // its breaker refuses the request or queues it. Hash algorithms and sticky cookies
        // keep their backend.
        let passes = passes_over_full(shared, upstream);
        let room = |i: usize| self.breakers[range.start + i].has_request_room();
        let pick = |b: &mut ShardBalancer| match passes {
            true => b
                .pick_preferring(table, key.hash, usable, room)
                .map(|i| (i, false)),
            false => first(b),
        };
        // A request's later picks (a retry, a connect failover) leave the rotation where its
        // first pick put it ([`ShardBalancer::aside`]).
        let mut picked = if tried.is_empty() {
            pick(balancer)
        } else {
            balancer.aside(pick)
        };
        // Slow start: a backend that just came back keeps a growing share of its picks
        // (`health::slow_start`); otherwise the pick is made again without it (hash
        // algorithms keep their mapping).
        let slow = shared.config.upstreams[upstream].resilience.slow_start;
        if let Some((i, set)) = picked {
            if !slow.is_zero() && !table.algorithm().is_hash() && (key.sticky != Some(i) || set) {
                let share = kept_share(board.ramp_from(range.start + i), slow, now);
                if share < 1.0 && self.rng.unit() >= share {
                    // Passing over full backends, a ramping backend with room is traded only
                    // for another of its tier with room: a full one would refuse (or queue)
                    // the request, and a backup is not used while a primary is usable.
                    let members = &shared.config.upstreams[upstream].backends;
                    let keep_room = passes && room(i);
                    let others = |j: usize| {
                        j != i
                            && usable(j)
                            && (!keep_room || room(j) && members[j].backup == members[i].backup)
                    };
                    if let Some(j) = balancer.aside(|b| b.pick(table, key.hash, others)) {
                        picked = Some((j, set));
                    }
                }
            }
        }
        match picked {
            Some((i, set_cookie)) => (Pick::Backend(range.start + i), set_cookie),
            None if tried.is_empty() => (Pick::NoneUsable, false),
            None => (Pick::Exhausted, false),
        }
    }

    /// A request is assigned to `backend` from its pick until the guard drops (the in-flight
    /// gauge, and the load signal of least_conn, p2c and bounded loads: counting from the
    /// pick, not from the connect, so a burst of new requests sees each other).
    #[inline]
    pub fn forwarding<'a>(
        &'a self,
        shared: &Shared,
        stats: &'a BackendStats,
        backend: usize,
    ) -> Forwarding<'a> {
        let info = &shared.backends[backend];
        self.loads.count(info.upstream, info.local, Change::Started);
        stats.in_flight.set(stats.in_flight.get() + 1);
        Forwarding {
            backends: self,
            stats,
            upstream: info.upstream,
            local: info.local,
            since: crate::clock::now(),
            sent: false,
        }
    }

    /// Feeds one attempt's outcome to the backend's passive check (outlier detection).
    pub fn observe(
        &self,
        shared: &Shared,
        stats: &Stats,
        errors: &ErrorLimiter,
        backend: usize,
        outcome: TryOutcome,
    ) {
        let info = &shared.backends[backend];
        let start = shared.upstream_backends[info.upstream].start;
        let event = self.outliers.borrow_mut()[info.upstream].observe(
            info.local,
            outcome,
            crate::clock::now(),
            |j| shared.is_drained(start + j) || !shared.board.is_usable(start + j),
        );
        match event {
            Some(e @ OutlierEvent::Ejected { .. }) => {
                bump(&stats.backends[backend].ejections);
                if errors.allow(stats) {
                    tracing::warn!(backend = %info.address, upstream = %shared.config.upstreams[info.upstream].name, ?outcome, "backend {e} on this shard");
                }
            }
            Some(OutlierEvent::Suppressed { .. }) => {
                bump(&stats.backends[backend].ejections_suppressed);
            }
            None => {}
        }
    }

    /// Whether this shard ejected the backend (local index `local` of `upstream`) at `now`.
    pub fn is_ejected(&self, upstream: usize, local: usize, now: Instant) -> bool {
        self.outliers.borrow()[upstream].is_ejected(local, now)
    }

    /// Counts a client request against its upstream's retry budget.
    #[inline]
    pub fn budget_request(&self, upstream: usize) {
        self.budgets.borrow_mut()[upstream].record_request(crate::clock::now());
    }

    /// Whether the upstream's retry budget allows one more retry now (nothing is spent nor
    /// counted: see [`RetryBudget::allows`]).
    #[inline]
    pub fn budget_allows(&self, upstream: usize) -> bool {
        self.budgets.borrow()[upstream].allows(crate::clock::now())
    }

    /// Counts a retry the upstream's budget refused.
    #[inline]
    pub fn budget_deny(&self, upstream: usize) {
        self.budgets.borrow_mut()[upstream].deny();
    }

    /// Spends a retry of the upstream's budget: the retry has a backend.
    #[inline]
    pub fn budget_spend(&self, upstream: usize) {
        self.budgets.borrow_mut()[upstream].spend(crate::clock::now());
    }

    /// Retries granted and denied per upstream since start.
    pub fn budget_counts(&self) -> Vec<(u64, u64)> {
        self.budgets
            .borrow()
            .iter()
            .map(|b| (b.granted(), b.denied()))
            .collect()
    }
}

/// Whether a pick may take backend `i` (local to its upstream, whose first is `start`): not
/// tried by this request, not drained, passing its health check, not ejected by this shard.
/// The one rule of [`Backends::pick`] and [`Backends::any_usable`].
fn usable(
    shared: &Shared,
    outlier: &OutlierDetector,
    start: usize,
    tried: &[usize],
    now: Instant,
    i: usize,
) -> bool {
    let g = start + i;
    !tried.contains(&g)
        && !shared.is_drained(g)
        && shared.board.is_usable(g)
        && !outlier.is_ejected(i, now)
}

impl Backends {
    /// Whether backend `g` (global index) may take a request that tried `tried`: not tried,
    /// drained, unhealthy or ejected on this shard (what a pick asks of it).
    pub fn is_usable(&self, shared: &Shared, g: usize, tried: &[usize], now: Instant) -> bool {
        let b = &shared.backends[g];
        let start = shared.upstream_backends[b.upstream].start;
        let outlier = &self.outliers.borrow()[b.upstream];
        usable(shared, outlier, start, tried, now, b.local)
    }
}

/// See [`Backends::forwarding`].
pub struct Forwarding<'a> {
    backends: &'a Backends,
    stats: &'a BackendStats,
    upstream: usize,
    local: usize,
    since: Instant,
    /// Set once the request was sent: only then does its time feed the latency signal.
    pub sent: bool,
}

impl Forwarding<'_> {
    /// When the backend was picked.
    pub fn since(&self) -> Instant {
        self.since
    }
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        let change = if self.sent {
            Change::Finished(crate::clock::now().saturating_duration_since(self.since))
        } else {
            Change::Abandoned
        };
        self.backends.loads.count(self.upstream, self.local, change);
        let c = &self.stats.in_flight;
        c.set(c.get().saturating_sub(1));
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
