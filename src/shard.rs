//! The shard's own state: one per CPU, lent to every connection task of that shard's thread.
//! [`ShardCtx`] holds what the stages use (the snapshot, this shard's view of the backends,
//! its upstream pool, pipes, buffers, counters, access-log buffer and request ids) and the
//! drain signals; the thread, runtime and accept loop that own it are in [`crate::worker`].
//! It comes in two halves: [`ShardCtx`] for one configuration snapshot (replaced on a hot
//! reload, carrying over per-backend state by identity) and [`ShardCommon`] for the shard's
//! whole life. Nothing here is shared with another shard.

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::tcp::RecvSelect;
use monoio::net::TcpStream;

use crate::admission::ConnTable;
use crate::bufring::RING_BUFFER;
use crate::bufring::{BufRing, Receive};
use crate::client::ListenerSide;
use crate::http::date::DateCache;
use crate::notify::Notify;
use crate::observe::access::AccessLog;
use crate::observe::errors::ErrorLimiter;
use crate::observe::log_writer::LogSink;
use crate::observe::reqid::RequestIds;
use crate::ratelimit::{Leases, RateTable};
use crate::snapshot::Shared;
use crate::splice::PipePool;
use crate::stats::{Snapshot, Stats};
use crate::upstream::pool::Pool;
use crate::upstream::state::Backends;

/// Buffers kept for reuse per shard: small ones (from 4 KiB, what a head needs) and large ones
/// (an upstream read buffer grown for a response head and the body that came with it, up to
/// [`MAX_POOLED_BUFFER`]), kept apart, so that a head is never written from a buffer whose
/// pages a body once touched (it would hold them all resident for a few hundred bytes).
const MAX_SMALL_BUFFERS: usize = 256;
const MAX_LARGE_BUFFERS: usize = 64;
const MAX_POOLED_BUFFER: usize = 256 * 1024;
/// A head's buffer (the request head sent upstream, then the response head sent to the
/// client): 4 KiB holds nearly every head and grows for the rest. It is lent for the whole
/// exchange, so under 200 connections fetching 64 KiB a 16 KiB one held 3.2 MB of the heap's
/// peak for a few hundred bytes each.
const SMALL_BUFFER: usize = 4 * 1024;
/// A returned buffer of at least this capacity goes to the large list.
const LARGE_BUFFER: usize = 32 * 1024;

/// One shard's state for one configuration snapshot: the snapshot, this shard's view of its
/// backends, the upstream pool and the counters (arrays sized from the snapshot), plus the
/// shard-wide [`ShardCommon`] (reached through `Deref`: `ctx.drain`, `ctx.buffer()`, ...).
/// A reload builds the next one with [`ShardCtx::successor`] and makes it the shard's
/// current one ([`ShardCommon::current`]); connections take the current one before each
/// request, so a request finishes on the one it started with. Lives in an `Rc` on the
/// shard's thread; no borrow of its `RefCell`s is ever held across an `.await`.
pub struct ShardCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: Rc<RefCell<Pool>>,
    /// This shard's view of the backends: balancers, passive checks, breakers, budgets.
    pub backends: Backends,
    pub stats: Stats,
    /// Per listener (indexed like `shared.config.listeners`): the settings a connection
    /// accepted on it keeps for its life, built once per snapshot and shared by `Rc`.
    pub listeners: Box<[Rc<ListenerSide>]>,
    common: Rc<ShardCommon>,
}

/// What a shard keeps across reloads: buffers, pipes, the access log, request ids, the
/// error-log limiter, the drain signals, the live-connection count, and which [`ShardCtx`]
/// is current.
pub struct ShardCommon {
    pub id: usize,
    pub buffers: Buffers,
    /// The access log buffer, when enabled.
    pub access: Option<AccessLog>,
    /// Rate limit for client- and backend-caused error-log lines.
    pub errors: ErrorLimiter,
    /// The same for refused logins' lines, on a budget of their own
    /// ([`ErrorLimiter::of`]).
    pub logins: ErrorLimiter,
    pub ids: RequestIds,
    /// Draws for sampled work: a route's `mirror.sample` ([`crate::mirror`]).
    pub draws: crate::sample::Rng,
    /// Pipes for splicing large bodies.
    pub pipes: PipePool,
    /// `auth.basic`: recently verified credentials.
    pub auth: crate::auth::basic::Remembered,
    /// Routes' `cache`: this shard's stored responses ([`crate::cache`]).
    pub cache: crate::cache::ShardCache,
    /// The `Date` text of this second, for the proxy's own answers and forwarded responses
    /// without one.
    pub date: DateCache,
    /// The process's open-connection counts (`Published::conns`), for the connection limits.
    pub conns: Arc<ConnTable>,
    /// The process's rate-limit buckets (`Published::rates`), and the tokens this shard
    /// has leased from them.
    pub rates: Arc<RateTable>,
    pub leases: Leases,
    /// Fired when the shard starts draining (through [`ShardCtx::begin_drain`]).
    pub drain: Notify,
    /// Set when draining begins: until then an idle connection may still send one request.
    grace_end: Cell<Option<Instant>>,
    /// Fired when draining and the last connection closes.
    pub idle: Notify,
    /// Idle keep-alive connections parked outside their tasks ([`crate::park`]).
    pub lot: crate::park::Lot,
    /// Connections waiting for a request in their own task, which a limit may reclaim
    /// ([`crate::reclaim`]).
    pub waits: crate::reclaim::Waits,
    /// Connections whose last response is complete, their client having sent nothing more,
    /// that only close, in stages ([`crate::linger::close`]): the last a limit reclaims.
    pub closing: crate::reclaim::Waits,
    /// Spare cancel handles for the keep-alive hot read ([`crate::conn`]).
    pub cancellers: crate::conn::Cancellers,
    /// TLS handshakes in progress, oldest first (`tls.max_handshakes`).
    pub handshakes: crate::tls::Running,
    /// Live client connections (see `worker::ActiveGuard`).
    pub(crate) active: Cell<usize>,
    /// The state for the snapshot in force on this shard (`None` once the shard stopped).
    current: RefCell<Option<Rc<ShardCtx>>>,
}

impl Deref for ShardCtx {
    type Target = ShardCommon;
    fn deref(&self) -> &ShardCommon {
        &self.common
    }
}

impl ShardCtx {
    /// A shard context without an access log (unit tests).
    #[cfg(test)]
    pub fn new(id: usize, shared: Arc<Shared>) -> ShardCtx {
        let rates = Arc::new(RateTable::for_config(&shared.config.rate_limits));
        let invalidations = Arc::default();
        ShardCtx::with_log(id, shared, None, Arc::default(), rates, invalidations)
    }

    pub fn with_log(
        id: usize,
        shared: Arc<Shared>,
        sink: Option<LogSink>,
        conns: Arc<ConnTable>,
        rates: Arc<RateTable>,
        invalidations: Arc<crate::cache::invalidate::Invalidations>,
    ) -> ShardCtx {
        let common = Rc::new(ShardCommon {
            id,
            buffers: Buffers::default(),
            access: match (sink, &shared.config.log.access) {
                (Some(sink), Some(cfg)) => Some(AccessLog::new(id, cfg, sink)),
                _ => None,
            },
            errors: ErrorLimiter::new(shared.config.log.error_rate),
            logins: ErrorLimiter::of("refused-login lines", shared.config.log.error_rate),
            ids: RequestIds::new(id),
            draws: crate::sample::Rng::new(id, 0x6d69_7272_6f72),
            pipes: PipePool::new(
                shared.config.splice.max_pipes,
                shared.config.splice.pipe_bytes,
            ),
            date: DateCache::default(),
            auth: Default::default(),
            cache: crate::cache::ShardCache::shared(invalidations),
            conns,
            rates,
            leases: Leases::default(),
            drain: Notify::default(),
            grace_end: Cell::new(None),
            idle: Notify::default(),
            lot: crate::park::Lot::default(),
            waits: crate::reclaim::Waits::default(),
            closing: crate::reclaim::Waits::default(),
            cancellers: crate::conn::Cancellers::default(),
            handshakes: crate::tls::Running::default(),
            active: Cell::new(0),
            current: RefCell::new(None),
        });
        ShardCtx {
            id,
            pool: Rc::new(RefCell::new(
                Pool::new(&pool_limits(&shared))
                    .with_shard_cap(shared.config.limits.max_idle_upstream_per_shard)
                    .with_ring(common.buffers.ring()),
            )),
            backends: Backends::new(&shared, id),
            stats: Stats::new(shared.routes.len(), shared.backends.len()),
            listeners: listener_sides(&shared),
            common,
            shared,
        }
    }

    /// This shard's state for the reloaded snapshot `shared`, keeping, for backends that
    /// remain (by [`crate::snapshot::BackendId`]), their pooled connections (handed over
    /// where their transport is unchanged; removed backends' and the others are closed), passive-check state, breakers and counters, and the
    /// per-route counters of routes of the same name. Shard-wide state is shared.
    pub fn successor(&self, shared: Arc<Shared>) -> ShardCtx {
        // Worked out once by the reload that built `shared` when this shard is on the
        // snapshot it replaced (the usual case), else now (`carry.rs`).
        let carry = shared.carry_from(&self.shared);
        let pool = Pool::new(&pool_limits(&shared))
            .with_shard_cap(shared.config.limits.max_idle_upstream_per_shard)
            .with_ring(self.buffers.ring());
        let pool = Rc::new(RefCell::new(pool));
        // Old index → new index, for the pool: only where connections are made the same way.
        self.pool
            .borrow_mut()
            .hand_over(pool.clone(), carry.pool.clone());
        let backends = Backends::carried(&shared, self.id, &self.backends, &self.shared, &carry);
        let stats = self.stats.carried(&carry.routes, &carry.backends);
        drop(carry);
        ShardCtx {
            id: self.id,
            pool,
            backends,
            stats,
            listeners: listener_sides(&shared),
            common: self.common.clone(),
            shared,
        }
    }

    /// Starts the drain: the grace (`server.drain_grace`) runs from now, then every waiter
    /// on [`ShardCommon::drain`] wakes.
    pub fn begin_drain(&self) {
        if self.grace_end.get().is_none() {
            self.grace_end
                .set(Some(Instant::now() + self.shared.config.drain_grace));
        }
        self.drain.notify_all();
    }

    /// The shard-wide half, for tasks that outlive a snapshot (the accept loops).
    pub fn common(&self) -> &Rc<ShardCommon> {
        &self.common
    }
}

impl ShardCommon {
    pub fn draining(&self) -> bool {
        self.drain.is_fired()
    }

    /// When the drain's grace ends; `None` while not draining.
    pub fn grace_end(&self) -> Option<Instant> {
        self.grace_end.get()
    }

    /// A cleared buffer from the shard's free list, given back when the loan drops.
    pub fn buffer(&self) -> PooledBuf<'_> {
        self.buffers.take()
    }

    /// The state for the snapshot in force on this shard: a request takes it before it
    /// starts (a `RefCell` borrow and an `Rc` clone, no atomics).
    pub fn current(&self) -> Option<Rc<ShardCtx>> {
        self.current.borrow().clone()
    }

    /// Puts `ctx` in force on this shard (start-up, reload); `None` when the shard stops,
    /// which also ends the reference cycle through [`ShardCtx`]'s `common`.
    pub fn set_current(&self, ctx: Option<Rc<ShardCtx>>) {
        let old = self.current.replace(ctx);
        drop(old);
    }
}

/// Each listener's [`ListenerSide`], for [`ShardCtx::listeners`].
fn listener_sides(shared: &Shared) -> Box<[Rc<ListenerSide>]> {
    (0..shared.config.listeners.len())
        .map(|i| Rc::new(ListenerSide::of(shared, i)))
        .collect()
}

/// Per backend: (max idle, idle timeout), the pool's limits.
fn pool_limits(shared: &Shared) -> Vec<(usize, Duration)> {
    shared
        .backends
        .iter()
        .map(|b| {
            let u = &shared.config.upstreams[b.upstream];
            (u.max_idle_per_backend, u.idle_timeout)
        })
        .collect()
}

/// The shard's free lists of byte buffers.
#[derive(Default)]
pub struct Buffers {
    small: RefCell<Vec<Vec<u8>>>,
    large: RefCell<Vec<Vec<u8>>>,
    /// io_uring: the ring small responses are received into (its buffers come from `small`,
    /// and go back there once read).
    ring: Rc<RefCell<BufRing>>,
}

impl Buffers {
    /// Frees every buffer the lists hold (a quiet shard gives its memory back; the next
    /// loans allocate again).
    pub fn release_all(&self) {
        for list in [&self.small, &self.large] {
            let mut list = list.borrow_mut();
            list.clear();
            list.shrink_to_fit();
        }
    }

    /// A cleared buffer of at least [`SMALL_BUFFER`] (and under [`LARGE_BUFFER`]), given back
    /// when the loan drops.
    pub fn take(&self) -> PooledBuf<'_> {
        let buf = self.small.borrow_mut().pop();
        PooledBuf {
            buf: buf.unwrap_or_else(|| Vec::with_capacity(SMALL_BUFFER)),
            home: self,
        }
    }

    /// No buffer yet: an exchange takes its read buffer ([`Buffers::take_large`]) only when
    /// the response can be read.
    pub fn none(&self) -> PooledBuf<'_> {
        PooledBuf {
            buf: Vec::new(),
            home: self,
        }
    }

    /// Whether a large buffer is free. Where its first read cannot be a direct one (epoll,
    /// a TLS backend) an exchange takes one before its response arrives while one is
    /// (`forward::Forward::exchange`); with none free it waits for the response without a
    /// buffer first.
    pub fn large_free(&self) -> bool {
        !self.large.borrow().is_empty()
    }

    /// A cleared buffer with room for at least `n` bytes (at most [`LARGE_BUFFER`]) that goes
    /// back to the large list: a free large one, else a new one of that list's size. For a
    /// tunnel's copy while bytes flow ([`crate::tunnel`]), given back whenever it waits.
    pub fn take_bulk(&self, n: usize) -> PooledBuf<'_> {
        debug_assert!(n <= LARGE_BUFFER);
        let buf = self.large.borrow_mut().pop();
        PooledBuf {
            buf: buf.unwrap_or_else(|| Vec::with_capacity(LARGE_BUFFER.max(n))),
            home: self,
        }
    }

    /// A cleared buffer for reading a response: a large one if one is free (it will likely
    /// grow to that size anyway), else a new one: not one of the small list's, which heads
    /// need (with more responses being read than the large list holds, it would be drained).
    pub fn take_large(&self) -> PooledBuf<'_> {
        let buf = self.large.borrow_mut().pop();
        PooledBuf {
            // None free: an empty one, which the head read's `reserve` allocates at the
            // size it reads (a first allocation here would be reallocated at once).
            buf: buf.unwrap_or_default(),
            home: self,
        }
    }
}

impl Buffers {
    /// Posts a receive of a small response on `stream` into a buffer of the shard's ring ([`crate::bufring`]); `None` where there is no ring (the caller waits and
    /// reads directly).
    pub fn receive(&self, stream: &TcpStream) -> Option<Receive<'_>> {
        let op = self.ring.borrow_mut().post(stream)?;
        Some(self.await_receive(op))
    }

    /// A receive posted through the shard's ring (by the pool, at checkin), to be awaited.
    pub fn await_receive(&self, op: RecvSelect) -> Receive<'_> {
        // A head's buffer (one page, at most ENTRIES of them in the ring).
        let spare = || {
            let buf = self.small.borrow_mut().pop();
            buf.unwrap_or_else(|| Vec::with_capacity(RING_BUFFER))
        };
        Receive::new(op, &self.ring, spare)
    }

    /// The shard's ring, for its pool.
    pub fn ring(&self) -> Rc<RefCell<BufRing>> {
        self.ring.clone()
    }

    /// Lends `buf` (one a [`Receive`] filled): it goes back to the free list of its size.
    pub fn lend(&self, buf: Vec<u8>) -> PooledBuf<'_> {
        PooledBuf { buf, home: self }
    }
}

/// A buffer lent by [`ShardCtx::buffer`]: a `Vec<u8>` that goes back to the free list when
/// dropped (if it is of a size worth keeping), so every exit of a stage returns it.
pub struct PooledBuf<'a> {
    buf: Vec<u8>,
    home: &'a Buffers,
}

impl Deref for PooledBuf<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        let (list, max) = match buf.capacity() {
            c if !(SMALL_BUFFER..=MAX_POOLED_BUFFER).contains(&c) => return,
            c if c < LARGE_BUFFER => (&self.home.small, MAX_SMALL_BUFFERS),
            _ => (&self.home.large, MAX_LARGE_BUFFERS),
        };
        let mut list = list.borrow_mut();
        if list.len() < max {
            buf.clear();
            list.push(buf);
        }
    }
}

impl ShardCtx {
    /// This shard's counters, with the gauges only the shard can read (pool, backoff, the
    /// parking lot, the breakers' queues).
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = self.stats.snapshot();
        snap.snapshot_id = Arc::as_ptr(&self.shared) as usize;
        snap.parked = (self.common().lot.len() + self.common().waits.len()) as u64;
        snap.closing = self.common().closing.len() as u64;
        let now = Instant::now();
        let pool = self.pool.borrow();
        let c = pool.counters;
        snap.pool_hits = c.hits;
        snap.pool_misses = c.misses;
        snap.pool_evicted_idle = c.evicted_idle;
        snap.pool_evicted_dead = c.evicted_dead;
        snap.pool_rejected_full = c.rejected_full;
        snap.pool_evicted_shard_full = c.evicted_shard_full;
        snap.pool_evicted_descriptors = c.evicted_descriptors;
        snap.pool_probes = c.probes;
        let ring = self.buffers.ring.borrow().counters;
        snap.pool_ring_buffered = ring.buffered;
        snap.pool_ring_empty = ring.empty;
        let k = &self.cache;
        snap.cache = [
            k.hits.get(),
            k.misses.get(),
            k.bypasses.get(),
            k.evictions.get(),
            k.bytes(),
            k.entries(),
            k.stale.get(),
            k.revalidated.get(),
            k.revalidations_not_modified.get(),
            k.revalidations_replaced.get(),
            k.revalidations_failed.get(),
            k.rejected.get(),
            k.fill_dropped.get(),
            k.invalidated.get(),
        ];
        for (i, b) in snap.backends.iter_mut().enumerate() {
            b.idle = pool.idle_for(i) as u64;
            let info = &self.shared.backends[i];
            b.failing = u64::from(self.backends.is_ejected(info.upstream, info.local, now));
            b.breaker_waiting = self.backends.breakers[i].waiting() as u64;
        }
        snap.upstreams = self
            .backends
            .budget_counts()
            .into_iter()
            .map(|(granted, denied)| crate::stats::UpstreamSnap {
                retries_granted: granted,
                retries_denied: denied,
            })
            .collect();
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration of one upstream `u` balancing `backends`, with `retry.attempts`, and
    /// routes named `routes` to it.
    fn config(backends: &[&str], routes: &[&str], attempts: u32) -> crate::config::Config {
        let backends: Vec<String> = backends
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect();
        let mut text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{}]\n[upstream.retry]\nattempts = {attempts}\n",
            backends.join(", ")
        );
        for r in routes {
            text.push_str(&format!("[[route]]\nname = \"{r}\"\nupstream = \"u\"\n"));
        }
        crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    /// A reload works out once what every shard carries over (`carry.rs`) and the shard
    /// switching from the snapshot it replaced takes that; a shard still on an older one (it
    /// switched late, after a later reload) must not (those maps lead from another snapshot:
    /// here they would give backend `a`'s counters to `c`) but work its own out. Either way
    /// counters follow their backend and route by identity and name, breakers are the same
    /// objects, pooled connections go to the same backend, and a retry budget is kept only
    /// under the same settings.
    #[test]
    fn a_shard_carries_by_the_reloads_maps_or_by_its_own_when_it_skipped_one() {
        use std::borrow::Cow;
        let (a, b, c) = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3");
        let s1 = Arc::new(Shared::new(config(&[a, b], &["r1", "r2"], 2)));
        let s2 = Arc::new(Shared::reloaded(
            config(&[b, a, c], &["r2", "r1", "r3"], 2),
            &s1,
            Arc::default(),
        ));
        let s3 = Arc::new(Shared::reloaded(
            config(&[c, a], &["r3", "r1"], 3),
            &s2,
            Arc::default(),
        ));
        assert!(matches!(s2.carry_from(&s1), Cow::Borrowed(_)));
        assert!(matches!(s3.carry_from(&s2), Cow::Borrowed(_)));
        assert!(
            matches!(s3.carry_from(&s1), Cow::Owned(_)),
            "maps from another snapshot"
        );

        let ctx = ShardCtx::new(0, s1.clone());
        ctx.stats.backends[0].connects.set(7); // a
        ctx.stats.backends[1].connects.set(5); // b
        ctx.stats.routes[0].status[1].set(3); // r1's 2xx
        ctx.stats.routes[2].status[3].set(4); // unrouted 4xx
        let connects = |c: &ShardCtx| -> Vec<u64> {
            c.stats.backends.iter().map(|b| b.connects.get()).collect()
        };
        let ok = |c: &ShardCtx| -> Vec<u64> {
            c.stats.routes.iter().map(|r| r.status[1].get()).collect()
        };

        // The usual switch: s1 to s2, by the reload's maps.
        let next = ctx.successor(s2.clone());
        assert_eq!(connects(&next), [5, 7, 0]);
        assert_eq!(ok(&next), [0, 3, 0, 0]);
        assert_eq!(next.stats.routes[3].status[3].get(), 4, "the unrouted slot");
        assert!(Rc::ptr_eq(
            &next.backends.breakers[1],
            &ctx.backends.breakers[0]
        ));
        assert_eq!(&*s2.carry_from(&s1).pool, [Some(1), Some(0)]);
        assert_eq!(&*s2.carry_from(&s1).budgets, [Some(0)]);

        // A late shard: from s1 straight to s3, whose maps lead from s2.
        let late = ctx.successor(s3.clone());
        assert_eq!(connects(&late), [0, 7], "c is new to this shard; a kept");
        assert_eq!(ok(&late), [0, 3, 0]);
        assert!(Rc::ptr_eq(
            &late.backends.breakers[1],
            &ctx.backends.breakers[0]
        ));
        assert!(!Rc::ptr_eq(
            &late.backends.breakers[0],
            &ctx.backends.breakers[0]
        ));
        let carry = s3.carry_from(&s1);
        assert_eq!(&*carry.pool, [Some(1), None], "b was removed");
        assert_eq!(&*carry.budgets, [None], "other retry settings");
    }

    #[test]
    fn loans_come_back_by_size_and_a_quiet_shard_frees_them() {
        let b = Buffers::default();
        {
            let (mut x, mut y) = (b.take(), b.take_large());
            x.extend_from_slice(b"abc");
            y.reserve(68 * 1024);
        }
        assert_eq!(b.small.borrow().len(), 1, "the small loan came back");
        assert_eq!(
            b.large.borrow().len(),
            1,
            "the grown one is a large one now"
        );
        let small = b.take();
        assert!(small.is_empty(), "a loan is cleared");
        assert!(
            small.capacity() < LARGE_BUFFER,
            "a head never gets a large buffer"
        );
        assert!(b.take_large().capacity() >= 68 * 1024);
        drop(small);
        {
            let held: Vec<_> = (0..MAX_LARGE_BUFFERS + 1)
                .map(|_| {
                    let mut l = b.take_large();
                    l.reserve(LARGE_BUFFER);
                    l
                })
                .collect();
            assert_eq!(
                b.small.borrow().len(),
                1,
                "reads never drain the heads' list"
            );
            drop(held);
        }
        assert_eq!(
            b.large.borrow().len(),
            MAX_LARGE_BUFFERS,
            "the large list is bounded"
        );
        b.release_all();
        assert_eq!(b.small.borrow().capacity() + b.large.borrow().capacity(), 0);
    }
}
