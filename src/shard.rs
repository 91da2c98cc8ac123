//! The shard: one per CPU, a thread pinned with `core_affinity` running its own `monoio`
//! runtime (io_uring or epoll, chosen explicitly), its own listeners, upstream pool,
//! balancer cursors and counters. Shards share only the immutable [`Shared`] snapshot.
//! This file holds the per-shard state ([`ShardCtx`]), the accept loop and the drain on
//! shutdown.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::{mpsc, oneshot};

use monoio::net::{TcpListener, TcpStream};

use crate::balance::{Member, ShardBalancer, Table};
use crate::config::{Config, IoEngine};
use crate::health::breaker::{Breaker, BreakerLimits};
use crate::health::outlier::{OutlierDetector, OutlierEvent};
use crate::health::retry::RetryBudget;
use crate::health::{Health, HealthBoard, Outcome as TryOutcome};
use crate::notify::Notify;
use crate::observe::access::{AccessLog, LogSink};
use crate::observe::errors::ErrorLimiter;
use crate::observe::reqid::RequestIds;
use crate::route::RouteTable;
use crate::stats::{bump, Snapshot, Stats};
use crate::upstream::pool::Pool;

/// The outcome of choosing a backend for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Backend(usize),
    /// Every backend recently refused connections: fail fast with 503.
    NoneUsable,
    /// Every usable backend was tried by this request and refused: 502.
    Exhausted,
}

/// One backend as the shards see it.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    pub address: SocketAddr,
    pub upstream: usize,
    /// Position within its upstream.
    pub local: usize,
}

/// The immutable snapshot every shard reads: configuration, route table, backend list, plus
/// the few flags the control plane flips (read-mostly atomics: written only by an operator's
/// action or a shard starting or stopping, never per request).
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub routes: RouteTable,
    pub backends: Vec<BackendInfo>,
    /// Per upstream: the range of its backends in `backends`.
    pub upstream_backends: Vec<std::ops::Range<usize>>,
    /// Per upstream: the balancing table (schedule, ring, Maglev table, sticky values).
    pub tables: Vec<Table>,
    /// Per backend: taken out of rotation by the admin API (`/drain`), on every shard.
    pub drained: Box<[AtomicBool]>,
    /// Per shard: accepting connections (for `/ready`).
    pub accepting: Box<[AtomicBool]>,
    /// Active health-check state per backend, written by the one prober thread.
    pub board: Arc<HealthBoard>,
}

impl Shared {
    /// A snapshot for one shard (tests, benchmarks).
    pub fn new(config: Config) -> Shared {
        Shared::with_shards(config, 1)
    }

    pub fn with_shards(config: Config, shards: usize) -> Shared {
        let routes = RouteTable::new(&config);
        let mut backends = Vec::new();
        let mut upstream_backends = Vec::new();
        for (u, up) in config.upstreams.iter().enumerate() {
            let start = backends.len();
            for (local, b) in up.backends.iter().enumerate() {
                backends.push(BackendInfo {
                    address: b.address,
                    upstream: u,
                    local,
                });
            }
            upstream_backends.push(start..backends.len());
        }
        // Backends of upstreams whose checks start "unhealthy" wait for `rise` successes.
        let initial: Vec<Health> = backends
            .iter()
            .map(|b: &BackendInfo| {
                let up = &config.upstreams[b.upstream];
                match &up.resilience.health_check {
                    Some(h) if h.initial == crate::health::state::InitialState::Unhealthy => {
                        Health::Unhealthy
                    }
                    _ => Health::Unknown,
                }
            })
            .collect();
        let tables = config
            .upstreams
            .iter()
            .map(|u| Table::build(&u.balance, &members_of(u)))
            .collect();
        Shared {
            tables,
            board: Arc::new(HealthBoard::new(&initial)),
            drained: backends.iter().map(|_| AtomicBool::new(false)).collect(),
            accepting: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            config,
            routes,
            backends,
            upstream_backends,
        }
    }

    /// Whether the admin API drained this backend. Relaxed: the flag guards no other data,
    /// and a request picked a moment before the flip is an in-flight request the drain lets
    /// finish anyway.
    #[inline]
    pub fn is_drained(&self, backend: usize) -> bool {
        self.drained[backend].load(Ordering::Relaxed)
    }

    /// Finds a backend by upstream name and address text (`/upstreams/NAME/backends/ADDR`).
    pub fn find_backend(&self, upstream: &str, addr: &str) -> Option<usize> {
        let u = self
            .config
            .upstreams
            .iter()
            .position(|u| u.name == upstream)?;
        let addr: SocketAddr = addr.parse().ok()?;
        self.upstream_backends[u]
            .clone()
            .find(|&b| self.backends[b].address == addr)
    }
}

/// Buffers kept for reuse per shard (each up to [`MAX_POOLED_BUFFER`] bytes).
const MAX_POOLED_BUFFERS: usize = 256;
const MAX_POOLED_BUFFER: usize = 256 * 1024;
const BUFFER_SIZE: usize = 16 * 1024;

/// Everything one shard owns. Lives in an `Rc` on the shard's thread; no borrow of its
/// `RefCell`s is ever held across an `.await`.
pub struct ShardCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: RefCell<Pool>,
    balancers: RefCell<Vec<ShardBalancer>>,
    /// Passive checks per upstream (indices local to the upstream).
    outliers: RefCell<Vec<OutlierDetector>>,
    /// Per backend: this shard's share of its circuit-breaker limits.
    pub breakers: Vec<Rc<Breaker>>,
    /// Per upstream: the retry budget.
    budgets: RefCell<Vec<RetryBudget>>,
    buffers: RefCell<Vec<Vec<u8>>>,
    pub stats: Stats,
    /// The access log buffer, when enabled.
    pub access: Option<AccessLog>,
    /// Rate limit for client- and backend-caused error-log lines.
    pub errors: ErrorLimiter,
    pub ids: RequestIds,
    /// Pipes for splicing large bodies.
    pub pipes: crate::splice::PipePool,
    /// Per backend: its last response body on this shard qualified for splicing (spliced,
    /// or copied for want of a pipe), so the next response head is read in a small piece
    /// (`relay::head_read_size`).
    pub spliced_last: Vec<Cell<bool>>,
    /// xorshift64 state for slow start (per shard, never shared).
    rng: Cell<u64>,
    /// Fired when the shard starts draining.
    pub drain: Notify,
    /// Fired when draining and the last connection closes.
    pub idle: Notify,
    active: Cell<usize>,
}

impl ShardCtx {
    pub fn new(id: usize, shared: Arc<Shared>) -> ShardCtx {
        ShardCtx::with_log(id, shared, None)
    }

    pub fn with_log(id: usize, shared: Arc<Shared>, sink: Option<LogSink>) -> ShardCtx {
        let shards = shared.accepting.len().max(1);
        let now = Instant::now();
        let limits: Vec<(usize, Duration)> = shared
            .backends
            .iter()
            .map(|b| {
                let u = &shared.config.upstreams[b.upstream];
                (u.max_idle_per_backend, u.idle_timeout)
            })
            .collect();
        ShardCtx {
            id,
            pool: RefCell::new(Pool::new(&limits)),
            balancers: RefCell::new(
                shared
                    .config
                    .upstreams
                    .iter()
                    .map(|u| ShardBalancer::new(&u.balance, &members_of(u), id))
                    .collect(),
            ),
            outliers: RefCell::new(
                shared
                    .config
                    .upstreams
                    .iter()
                    .map(|u| OutlierDetector::new(u.resilience.outlier.clone(), u.backends.len()))
                    .collect(),
            ),
            breakers: shared
                .backends
                .iter()
                .map(|b| {
                    let limits: BreakerLimits =
                        shared.config.upstreams[b.upstream].resilience.breaker;
                    Breaker::new(limits.shard_share(shards, id))
                })
                .collect(),
            budgets: RefCell::new(
                shared
                    .config
                    .upstreams
                    .iter()
                    .map(|u| RetryBudget::from_spec(&u.resilience.retry, now))
                    .collect(),
            ),
            buffers: RefCell::new(Vec::new()),
            stats: Stats::new(shared.routes.len(), shared.backends.len()),
            access: match (sink, &shared.config.log.access) {
                (Some(sink), Some(cfg)) => Some(AccessLog::new(id, cfg, sink)),
                _ => None,
            },
            errors: ErrorLimiter::new(shared.config.log.error_rate),
            ids: RequestIds::new(id),
            pipes: crate::splice::PipePool::new(
                shared.config.splice.max_pipes,
                shared.config.splice.pipe_bytes,
            ),
            spliced_last: shared.backends.iter().map(|_| Cell::new(false)).collect(),
            rng: Cell::new(0x2545_F491_4F6C_DD1D ^ ((id as u64 + 1) << 17)),
            drain: Notify::default(),
            idle: Notify::default(),
            active: Cell::new(0),
            shared,
        }
    }

    pub fn draining(&self) -> bool {
        self.drain.is_fired()
    }

    /// A cleared buffer from the shard's free list.
    pub fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
    }

    pub fn give_buffer(&self, mut buf: Vec<u8>) {
        let mut buffers = self.buffers.borrow_mut();
        if buffers.len() < MAX_POOLED_BUFFERS
            && buf.capacity() <= MAX_POOLED_BUFFER
            && buf.capacity() >= BUFFER_SIZE
        {
            buf.clear();
            buffers.push(buf);
        }
    }

    /// Picks a backend of `upstream` (a global backend index), skipping those this request
    /// already tried, drained ones, those failing their health check, and those this shard
    /// ejected. `key` is the request's hash (hash algorithms), `sticky` the member its cookie
    /// names. Returns whether a sticky cookie must be set.
    pub fn pick_backend(
        &self,
        upstream: usize,
        tried: &[usize],
        now: Instant,
        key: Option<u32>,
        sticky: Option<usize>,
    ) -> (Pick, bool) {
        let range = self.shared.upstream_backends[upstream].clone();
        let outlier = &self.outliers.borrow()[upstream];
        let board = &self.shared.board;
        let usable = |i: usize| {
            let g = range.start + i;
            !tried.contains(&g)
                && !self.shared.is_drained(g)
                && board.is_usable(g)
                && !outlier.is_ejected(i, now)
        };
        let table = &self.shared.tables[upstream];
        let balancer = &mut self.balancers.borrow_mut()[upstream];
        let mut picked = if table.sticky().is_some() {
            let cookie = sticky.map(|i| table.sticky_value(i).as_bytes());
            balancer
                .pick_sticky(table, cookie, key, usable)
                .map(|p| (p.index, p.set_cookie))
        } else {
            balancer.pick(table, key, usable).map(|i| (i, false))
        };
        // Slow start: a backend that just came back takes a growing share. A pick of it is
        // kept with probability elapsed / slow_start, otherwise the pick is made again
        // without it (hash algorithms keep their mapping).
        let slow = self.shared.config.upstreams[upstream].resilience.slow_start;
        if let Some((i, set)) = picked {
            if !slow.is_zero() && !table.algorithm().is_hash() && (sticky != Some(i) || set) {
                if let Some(from) = board.ramp_from(range.start + i) {
                    let elapsed = now.saturating_duration_since(from);
                    if elapsed < slow
                        && self.unit_random() * slow.as_secs_f64() >= elapsed.as_secs_f64()
                    {
                        let others = |j: usize| j != i && usable(j);
                        if let Some(j) = balancer.pick(table, key, others) {
                            picked = Some((j, set));
                        }
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

    /// A number in [0, 1) from the shard's own generator.
    fn unit_random(&self) -> f64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A request is assigned to `backend` from its pick until the guard drops (the in-flight
    /// gauge, and the load signal of least_conn, p2c and bounded loads: counting from the
    /// pick, not from the connect, so a burst of new requests sees each other).
    pub fn forwarding(&self, backend: usize) -> Forwarding<'_> {
        let info = &self.shared.backends[backend];
        self.balancers.borrow_mut()[info.upstream].started(info.local);
        let c = &self.stats.backends[backend].in_flight;
        c.set(c.get() + 1);
        Forwarding {
            ctx: self,
            backend,
            since: Instant::now(),
            sent: false,
        }
    }

    /// Opens a new connection to a backend, bounded by `upstream_connect`.
    pub async fn connect(&self, backend: usize) -> std::io::Result<TcpStream> {
        let addr = self.shared.backends[backend].address;
        let timeout = self.shared.config.timeouts.upstream_connect;
        let bstats = &self.stats.backends[backend];
        bump(&self.stats.upstream_connects);
        bump(&bstats.connects);
        let started = Instant::now();
        let result = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
            Ok(Ok(s)) => {
                self.stats
                    .record_connect(started.elapsed().as_micros() as u64);
                let _ = s.set_nodelay(true);
                if let Some(name) = &self.shared.config.congestion.upstream {
                    // Validated at start-up; a refusal now leaves the host's default.
                    if let Err(e) =
                        crate::listener::set_congestion(std::os::fd::AsRawFd::as_raw_fd(&s), name)
                    {
                        tracing::debug!(shard = self.id, error = %e, "upstream_congestion");
                    }
                }
                Ok(s)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )),
        };
        if let Err(e) = &result {
            bump(&self.stats.upstream_connect_errors);
            bump(&bstats.connect_errors);
            if self.errors.allow(&self.stats) {
                tracing::warn!(shard = self.id, backend = %addr, error = %e, "upstream connect failed");
            }
            self.observe(backend, TryOutcome::ConnectFailure);
        }
        result
    }
}

impl ShardCtx {
    /// This shard's counters, with the gauges only the shard can read (pool, backoff).
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = self.stats.snapshot();
        let now = Instant::now();
        let pool = self.pool.borrow();
        let c = pool.counters;
        snap.pool_hits = c.hits;
        snap.pool_misses = c.misses;
        snap.pool_evicted_idle = c.evicted_idle;
        snap.pool_evicted_dead = c.evicted_dead;
        snap.pool_rejected_full = c.rejected_full;
        let outliers = self.outliers.borrow();
        for (i, b) in snap.backends.iter_mut().enumerate() {
            b.idle = pool.idle_for(i) as u64;
            let info = &self.shared.backends[i];
            b.failing = u64::from(outliers[info.upstream].is_ejected(info.local, now));
        }
        snap.upstreams = self
            .budgets
            .borrow()
            .iter()
            .map(|b| crate::stats::UpstreamSnap {
                retries_granted: b.granted(),
                retries_denied: b.denied(),
            })
            .collect();
        snap
    }
}

impl ShardCtx {
    /// Feeds one attempt's outcome to the backend's passive check (outlier detection).
    pub fn observe(&self, backend: usize, outcome: TryOutcome) {
        let info = &self.shared.backends[backend];
        let event =
            self.outliers.borrow_mut()[info.upstream].observe(info.local, outcome, Instant::now());
        match event {
            Some(OutlierEvent::Ejected { .. }) => {
                bump(&self.stats.backends[backend].ejections);
                if self.errors.allow(&self.stats) {
                    tracing::warn!(shard = self.id, backend = %info.address, upstream = %self.shared.config.upstreams[info.upstream].name, ?outcome, "backend ejected on this shard");
                }
            }
            Some(OutlierEvent::Suppressed { .. }) => {
                bump(&self.stats.backends[backend].ejections_suppressed);
            }
            None => {}
        }
    }

    /// Counts a client request against its upstream's retry budget.
    pub fn budget_request(&self, upstream: usize) {
        self.budgets.borrow_mut()[upstream].record_request(Instant::now());
    }

    /// Whether the upstream's retry budget allows one more retry now (counted either way).
    pub fn budget_retry(&self, upstream: usize) -> bool {
        self.budgets.borrow_mut()[upstream].try_retry(Instant::now())
    }
}

/// See [`ShardCtx::forwarding`].
pub struct Forwarding<'a> {
    ctx: &'a ShardCtx,
    backend: usize,
    since: Instant,
    /// Set once the request was sent: only then does its time feed the latency signal.
    pub sent: bool,
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        let info = &self.ctx.shared.backends[self.backend];
        let mut balancers = self.ctx.balancers.borrow_mut();
        if self.sent {
            balancers[info.upstream].finished(info.local, self.since.elapsed());
        } else {
            balancers[info.upstream].abandoned(info.local);
        }
        drop(balancers);
        let c = &self.ctx.stats.backends[self.backend].in_flight;
        c.set(c.get().saturating_sub(1));
    }
}

/// The balancing members of an upstream, in configuration order.
fn members_of(u: &crate::config::UpstreamConfig) -> Vec<Member> {
    u.backends
        .iter()
        .map(|b| Member {
            name: b.address.to_string(),
            weight: b.weight,
            backup: b.backup,
        })
        .collect()
}

/// A question the admin thread asks a shard; answered on the shard's own thread.
pub enum ShardQuery {
    Snapshot(oneshot::Sender<Snapshot>),
}

/// Counts a live client connection; wakes the drainer when the last one closes.
pub struct ActiveGuard {
    ctx: Rc<ShardCtx>,
}

impl ActiveGuard {
    fn new(ctx: Rc<ShardCtx>) -> ActiveGuard {
        ctx.active.set(ctx.active.get() + 1);
        ctx.stats.active.set(ctx.active.get() as u64);
        ActiveGuard { ctx }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let n = self.ctx.active.get() - 1;
        self.ctx.active.set(n);
        self.ctx.stats.active.set(n as u64);
        if n == 0 && self.ctx.draining() {
            self.ctx.idle.notify_all();
        }
    }
}

/// What a shard reports when it stops.
#[derive(Debug)]
pub struct ShardReport {
    pub id: usize,
    pub summary: String,
    pub unfinished: usize,
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// The shard's io_uring runtime. A shard's ring is used by its own thread only, so it asks the
/// kernel for SINGLE_ISSUER and DEFER_TASKRUN (completion work runs when the shard waits,
/// not by interrupting it) with COOP_TASKRUN: on this project's loadtest that cut the
/// proxy's CPU per keep-alive request by about a fifth (25.0 vs 32.0 µs). Kernels before 6.1
/// refuse those flags; the ring is then built with the defaults.
fn build_uring_runtime() -> std::io::Result<UringRuntime> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let tuned = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(urb)
        .enable_timer()
        .build();
    match tuned {
        Ok(rt) => Ok(rt),
        Err(e) => {
            tracing::info!(error = %e, "io_uring without DEFER_TASKRUN/SINGLE_ISSUER (kernel < 6.1?)");
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(1024)
                .enable_timer()
                .build()
        }
    }
}

/// Everything a shard thread is started with.
pub struct ShardStart {
    pub id: usize,
    pub engine: IoEngine,
    pub shared: Arc<Shared>,
    pub listeners: Vec<std::net::TcpListener>,
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
    /// Resolves (or is dropped) when the shard must drain and stop.
    pub shutdown: oneshot::Receiver<()>,
    /// Questions from the admin thread.
    pub queries: mpsc::UnboundedReceiver<ShardQuery>,
    /// Where full access-log buffers go, when the access log is on.
    pub log_sink: Option<LogSink>,
}

/// Builds this thread's runtime for the chosen engine and runs the shard to completion.
pub fn run_shard(start: ShardStart) -> ShardReport {
    let id = start.id;
    let failed = |ready: &std::sync::mpsc::Sender<_>, e: std::io::Error, what: &str| {
        let _ = ready.send(Err(format!("shard {id}: {what} runtime failed: {e}")));
        ShardReport {
            id,
            summary: String::new(),
            unfinished: 0,
        }
    };
    match start.engine {
        IoEngine::Uring | IoEngine::Auto => match build_uring_runtime() {
            Ok(mut rt) => rt.block_on(shard_main(start)),
            Err(e) => failed(&start.ready, e, "io_uring"),
        },
        IoEngine::Epoll => match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(shard_main(start)),
            Err(e) => failed(&start.ready, e, "epoll"),
        },
    }
}

async fn shard_main(start: ShardStart) -> ShardReport {
    let ShardStart {
        id,
        shared,
        listeners,
        ready,
        shutdown,
        mut queries,
        log_sink,
        ..
    } = start;
    let ctx = Rc::new(ShardCtx::with_log(id, shared, log_sink));
    let mut accepting = Vec::new();
    for l in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => accepting.push(l),
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: cannot register listener: {e}")));
                return ShardReport {
                    id,
                    summary: String::new(),
                    unfinished: 0,
                };
            }
        }
    }
    if let Some(flag) = ctx.shared.accepting.get(id) {
        flag.store(true, Ordering::Release);
    }
    let _ = ready.send(Ok(id));

    // Idle upstream connections: expire and close dead ones once a second. The access log's
    // buffer is handed to the writer at least every `flush` interval.
    let sweeper = {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            let tick = ctx
                .shared
                .config
                .log
                .access
                .as_ref()
                .map_or(Duration::from_secs(1), |a| {
                    a.flush.min(Duration::from_secs(1))
                });
            let mut last_sweep = Instant::now();
            loop {
                monoio::select! {
                    _ = monoio::time::sleep(tick) => {}
                    _ = ctx.drain.notified() => break,
                }
                let now = Instant::now();
                if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                    ctx.pool.borrow_mut().sweep(now);
                    last_sweep = now;
                }
                if let Some(log) = &ctx.access {
                    log.flush(&ctx.stats);
                }
                ctx.errors.report(ctx.id, &ctx.stats);
            }
        })
    };

    // The admin thread's questions, answered between requests on this thread.
    let answering = {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            while let Some(q) = next_query(&mut queries).await {
                match q {
                    ShardQuery::Snapshot(reply) => {
                        let _ = reply.send(ctx.snapshot());
                    }
                }
            }
        })
    };

    let accept_loops: Vec<_> = accepting
        .into_iter()
        .map(|l| {
            let ctx = ctx.clone();
            monoio::spawn(accept_loop(ctx, l))
        })
        .collect();

    // Run until told to stop (a dropped sender means the process is going down: stop too).
    let _ = shutdown.await;
    if let Some(flag) = ctx.shared.accepting.get(id) {
        flag.store(false, Ordering::Release);
    }
    ctx.drain.notify_all();
    for a in accept_loops {
        a.await;
    }
    // The accept loops owned the listeners: they are closed now.
    tracing::info!(shard = id, "listeners closed; draining");
    sweeper.await;
    ctx.pool.borrow_mut().clear();
    let deadline = ctx.shared.config.shutdown_timeout;
    if ctx.active.get() > 0 {
        let _ = monoio::time::timeout(deadline, ctx.idle.notified()).await;
    }
    if let Some(log) = &ctx.access {
        log.flush_final(&ctx.stats).await;
    }
    drop(answering);
    ShardReport {
        id,
        summary: ctx.stats.summary(),
        unfinished: ctx.active.get(),
    }
}

async fn next_query(rx: &mut mpsc::UnboundedReceiver<ShardQuery>) -> Option<ShardQuery> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *rx), cx))
        .await
}

/// Takes a listening socket out of LISTEN state at once: on io_uring dropping the listener
/// only queues an asynchronous close, and until it runs the kernel would still complete
/// handshakes into a backlog nobody accepts from.
fn stop_listening(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a descriptor owned by `listener`, which is alive for the call;
    // it changes socket state only and touches no memory of ours. Exercised by the
    // graceful-shutdown tests (new connections are refused right after the log line below).
    let _ = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
}

async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener) {
    let max = ctx.shared.config.limits.max_connections_per_shard;
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = ctx.drain.notified() => {
                stop_listening(&listener);
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                bump(&ctx.stats.accepted);
                if ctx.active.get() >= max {
                    bump(&ctx.stats.rejected_conn_limit);
                    drop(stream);
                    continue;
                }
                let guard = ActiveGuard::new(ctx.clone());
                monoio::spawn(async move {
                    let ctx = guard.ctx.clone();
                    crate::conn::serve(ctx, stream, peer, Instant::now()).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
