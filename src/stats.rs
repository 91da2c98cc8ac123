//! Per-shard counters and latency histograms, written along the whole pipeline. Each shard
//! writes only its own [`Stats`] (plain `Cell`s: no atomics, no sharing); the admin thread
//! asks every shard for a [`Snapshot`] (a copy taken on the shard's own thread) and merges
//! them on scrape.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use hdrhistogram::Histogram;

use crate::http::canned::Canned;

/// Requests that matched a route, by the status class sent to the client.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// 1xx..5xx (index 0..4).
    pub status: [Cell<u64>; 5],
    /// Closed without a response (client gone, or a body cut short after the head).
    pub aborted: Cell<u64>,
    /// `mirror` copies by [`crate::mirror::Copied`].
    pub mirror: [Cell<u64>; crate::mirror::RESULTS],
    /// `mirror` copies under way (a gauge, and the bound `max_in_flight` checks).
    pub mirror_in_flight: Cell<u64>,
}

/// One backend as this shard saw it.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Responses relayed from this backend by status class.
    pub status: [Cell<u64>; 5],
    /// Request body bytes sent to it, response body bytes relayed from it.
    pub bytes_sent: Cell<u64>,
    pub bytes_received: Cell<u64>,
    pub connects: Cell<u64>,
    pub connect_errors: Cell<u64>,
    /// Times this shard ejected it (outlier detection; by default one failed connect for
    /// `fail_timeout`).
    pub ejections: Cell<u64>,
    /// Ejections not done because `max_ejection_percent` was reached.
    pub ejections_suppressed: Cell<u64>,
    /// Requests refused with 503 because this shard's share of a breaker limit was reached.
    pub breaker_rejected: Cell<u64>,
    /// Requests that waited in its breaker's queue (`queue`), served or not.
    pub breaker_queued: Cell<u64>,
    /// Requests now being forwarded to it (a gauge).
    pub in_flight: Cell<u64>,
    /// Whether this shard currently skips it after a failed connect (a gauge, 0 or 1).
    pub failing: Cell<u64>,
}

/// The latency histograms, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Whole request: head parsed to last response byte written (or the canned answer).
    pub total: Histogram<u64>,
    /// New upstream connections: connect call to established.
    pub connect: Histogram<u64>,
    /// Request forwarded (head and body sent) to the first response-head byte parsed.
    pub first_byte: Histogram<u64>,
}

/// Highest latency recorded without clamping: 1 hour in microseconds.
const MAX_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 hour, 3 significant digits: about 180 KB per histogram.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds")
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            total: histogram(),
            connect: histogram(),
            first_byte: histogram(),
        }
    }
}

impl Latencies {
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds everywhere, so `add` cannot fail; saturating on the absurd.
        let _ = self.total.add(&other.total);
        let _ = self.connect.add(&other.connect);
        let _ = self.first_byte.add(&other.first_byte);
    }
}

/// Bytes charged to a shard-wide budget held in `held` (`limits.compress_memory`,
/// `limits.buffer_memory`), given back when the charge drops.
pub struct Charge<'s> {
    held: &'s Cell<u64>,
    bytes: u64,
}

impl<'s> Charge<'s> {
    /// `bytes` more, if `held` stays within `limit` with them.
    pub fn take(held: &'s Cell<u64>, limit: u64, bytes: u64) -> Option<Charge<'s>> {
        let now = held.get().checked_add(bytes).filter(|&n| n <= limit)?;
        held.set(now);
        Some(Charge { held, bytes })
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.held.set(self.held.get() - self.bytes);
    }
}

/// One shard's counters: the shard-wide [`Totals`] (reached through `Deref`), and the per-route
/// and per-backend arrays of the snapshot in force. A reload builds new arrays around the same
/// `Totals` and the same `Rc`s for the routes (by name) and backends (by `BackendId`) that
/// remain ([`Stats::carried`]), so a request still finishing on the old snapshot counts into
/// the objects the new one reports.
#[derive(Debug)]
pub struct Stats {
    totals: Rc<Totals>,
    /// One per configured route, plus a last one for requests that matched none.
    pub routes: Box<[Rc<RouteStats>]>,
    /// One per backend (global index).
    pub backends: Box<[Rc<BackendStats>]>,
}

impl std::ops::Deref for Stats {
    type Target = Totals;
    fn deref(&self) -> &Totals {
        &self.totals
    }
}

/// The counters of a shard that do not depend on the configuration.
#[derive(Debug)]
pub struct Totals {
    pub accepted: Cell<u64>,
    pub rejected_conn_limit: Cell<u64>,
    /// Idle connections (parked, or waiting in their task), and closes after a complete
    /// response ([`crate::linger::close`]), ended to admit a new one at a connection limit.
    pub reclaimed_idle: Cell<u64>,
    /// Keep-alive connections closed after a response because they reached
    /// `limits.max_requests_per_connection` ([0]) or `timeouts.client_keepalive_time` ([1]).
    pub retired: [Cell<u64>; 2],
    /// Closed at accept: the shard's snapshot does not have the listener (a shard that
    /// missed a reload's switch; see `worker::admit`).
    pub rejected_no_listener: Cell<u64>,
    /// Closed at accept: over `limits.max_connections` / `limits.max_connections_per_client`.
    pub rejected_total_limit: Cell<u64>,
    pub rejected_client_limit: Cell<u64>,
    /// Refused by the listener's `allow`/`deny` (answered 403, or closed on a TLS listener).
    pub denied_listener: Cell<u64>,
    /// Requests refused by their route's `allow`/`deny` (403).
    pub denied_route: Cell<u64>,
    /// Requests refused with 429 by a listener's / a route's `rate_limit`.
    pub limited_listener: Cell<u64>,
    pub limited_route: Cell<u64>,
    /// Rate-limit keys that displaced another key's bucket in a crowded table.
    pub rate_evictions: Cell<u64>,
    /// Quiet spells (250 ms without traffic) in which the shard freed its buffer lists and
    /// gave its free memory back (`worker`).
    pub memory_returns: Cell<u64>,
    /// PROXY protocol headers on `proxy_protocol` listeners, by
    /// [`crate::proxy_protocol::Outcome`].
    pub proxy_protocol: [Cell<u64>; 6],
    /// Route authentication checks, by [`crate::auth::Mode`] and [`crate::auth::Verdict`]
    /// (index `mode * Verdict::ALL.len() + verdict`).
    pub auth: [Cell<u64>; AUTH_SLOTS],
    /// `auth.basic` passwords checked with bcrypt (on a verifier thread).
    pub auth_bcrypt: Cell<u64>,
    /// `auth.basic` passwords accepted from the shard's cache, without bcrypt.
    pub auth_cache_hits: Cell<u64>,
    pub active: Cell<u64>,
    pub requests: Cell<u64>,
    /// Responses relayed from upstreams by status class 1xx..5xx (index 0..4).
    pub upstream_status: [Cell<u64>; 5],
    /// The proxy's own responses, by [`Canned`] variant.
    pub canned: [Cell<u64>; Canned::ALL.len()],
    pub upstream_connects: Cell<u64>,
    pub upstream_connect_errors: Cell<u64>,
    pub retries: Cell<u64>,
    pub client_aborts: Cell<u64>,
    pub upstream_aborts: Cell<u64>,
    /// Request bodies cut off below `limits.client_body_min_rate` (408, or a close).
    pub slow_request_bodies: Cell<u64>,
    /// Responses cut off because the client read them below `limits.client_send_min_rate`.
    pub slow_response_readers: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub access_lines: Cell<u64>,
    pub access_dropped: Cell<u64>,
    pub log_suppressed: Cell<u64>,
    /// Bodies (responses and uploads) relayed with splice(2).
    pub spliced: Cell<u64>,
    /// Body bytes that went socket → pipe → socket (the rest of those bodies was copied).
    pub spliced_bytes: Cell<u64>,
    /// Compressed responses, and their body bytes in (from the backend) and out (coded),
    /// by [`crate::config::Algorithm::index`].
    pub compressed: [Cell<u64>; 3],
    /// Bytes the encoders of this shard's compressing responses hold ([`crate::compress::Loan`]).
    pub compress_memory: Cell<u64>,
    /// Responses sent uncompressed because `limits.compress_memory` was taken.
    pub compress_memory_refused: Cell<u64>,
    /// Bytes of request bodies this shard holds read whole (`buffer_request_body`), and
    /// those streamed instead because `limits.buffer_memory` was taken.
    pub buffer_memory: Cell<u64>,
    pub buffer_memory_refused: Cell<u64>,
    pub compressed_in: [Cell<u64>; 3],
    pub compressed_out: [Cell<u64>; 3],
    pub latency: RefCell<Latencies>,
    pub tls: crate::tls::stats::TlsStats,
}

/// Slots of [`Totals::auth`]: every (mode, verdict) pair.
pub const AUTH_SLOTS: usize = crate::auth::Mode::ALL.len() * crate::auth::Verdict::ALL.len();

#[inline]
pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

#[inline]
pub fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

#[inline]
fn class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

#[inline]
fn record(h: &mut Histogram<u64>, micros: u64) {
    // saturating_record clamps outliers into the top bucket instead of failing.
    h.saturating_record(micros.clamp(1, MAX_US));
}

impl Stats {
    pub fn new(routes: usize, backends: usize) -> Stats {
        Stats {
            totals: Rc::new(Totals::new()),
            routes: (0..=routes).map(|_| Rc::default()).collect(),
            backends: (0..backends).map(|_| Rc::default()).collect(),
        }
    }

    /// Counters for a replacement snapshot: the same totals; per route, the old route's
    /// counters where `routes[i]` names it (the last entry is the unrouted one); per backend,
    /// the old backend's where `backends[i]` names it; fresh ones elsewhere.
    pub fn carried(&self, routes: &[Option<usize>], backends: &[Option<usize>]) -> Stats {
        fn pick<T: Default>(old: &[Rc<T>], map: &[Option<usize>]) -> Box<[Rc<T>]> {
            map.iter()
                .map(|m| m.and_then(|o| old.get(o)).cloned().unwrap_or_default())
                .collect()
        }
        Stats {
            totals: self.totals.clone(),
            routes: pick(&self.routes, routes),
            backends: pick(&self.backends, backends),
        }
    }
}

impl Totals {
    fn new() -> Totals {
        Totals {
            accepted: Cell::new(0),
            rejected_conn_limit: Cell::new(0),
            reclaimed_idle: Cell::new(0),
            retired: Default::default(),
            rejected_no_listener: Cell::new(0),
            rejected_total_limit: Cell::new(0),
            rejected_client_limit: Cell::new(0),
            denied_listener: Cell::new(0),
            denied_route: Cell::new(0),
            limited_listener: Cell::new(0),
            limited_route: Cell::new(0),
            rate_evictions: Cell::new(0),
            memory_returns: Cell::new(0),
            proxy_protocol: Default::default(),
            auth: Default::default(),
            auth_bcrypt: Cell::new(0),
            auth_cache_hits: Cell::new(0),
            active: Cell::new(0),
            requests: Cell::new(0),
            upstream_status: Default::default(),
            canned: Default::default(),
            upstream_connects: Cell::new(0),
            upstream_connect_errors: Cell::new(0),
            retries: Cell::new(0),
            client_aborts: Cell::new(0),
            upstream_aborts: Cell::new(0),
            slow_request_bodies: Cell::new(0),
            slow_response_readers: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            access_lines: Cell::new(0),
            access_dropped: Cell::new(0),
            log_suppressed: Cell::new(0),
            spliced: Cell::new(0),
            spliced_bytes: Cell::new(0),
            compressed: Default::default(),
            compress_memory: Cell::new(0),
            compress_memory_refused: Cell::new(0),
            buffer_memory: Cell::new(0),
            buffer_memory_refused: Cell::new(0),
            compressed_in: Default::default(),
            compressed_out: Default::default(),
            latency: RefCell::new(Latencies::default()),
            tls: Default::default(),
        }
    }
}

impl Stats {
    pub fn canned(&self, c: Canned) {
        let i = Canned::ALL.iter().position(|&x| x == c).unwrap_or(0);
        bump(&self.canned[i]);
    }

    /// One response coded with `alg`: its body bytes before and after.
    pub fn compressed(&self, alg: crate::config::Algorithm, bytes_in: u64, bytes_out: u64) {
        let i = alg.index();
        bump(&self.compressed[i]);
        add(&self.compressed_in[i], bytes_in);
        add(&self.compressed_out[i], bytes_out);
    }

    pub fn upstream_status(&self, backend: usize, status: u16) {
        bump(&self.upstream_status[class(status)]);
        if let Some(b) = self.backends.get(backend) {
            bump(&b.status[class(status)]);
        }
    }

    /// The final word on one request: which route (None: unrouted), what the client got
    /// (None: closed without a response) and how long it took.
    pub fn finish_request(&self, route: Option<usize>, status: Option<u16>, micros: u64) {
        let r = route
            .and_then(|r| self.routes.get(r))
            .or_else(|| self.routes.last());
        if let Some(r) = r {
            match status {
                Some(s) => bump(&r.status[class(s)]),
                None => bump(&r.aborted),
            }
        }
        record(&mut self.latency.borrow_mut().total, micros);
    }

    pub fn record_connect(&self, micros: u64) {
        record(&mut self.latency.borrow_mut().connect, micros);
    }

    pub fn record_first_byte(&self, micros: u64) {
        record(&mut self.latency.borrow_mut().first_byte, micros);
    }

    /// A one-line human summary, logged at shutdown.
    pub fn summary(&self) -> String {
        let lat = self.latency.borrow();
        let h = &lat.total;
        let canned: Vec<String> = Canned::ALL
            .iter()
            .zip(&self.canned)
            .filter(|(_, n)| n.get() > 0)
            .map(|(c, n)| format!("{}={}", c.status(), n.get()))
            .collect();
        format!(
            "accepted={} requests={} upstream_2xx={} upstream_5xx={} own=[{}] connects={} connect_errors={} retries={} p50={}us p99={}us",
            self.accepted.get(),
            self.requests.get(),
            self.upstream_status[1].get(),
            self.upstream_status[4].get(),
            canned.join(" "),
            self.upstream_connects.get(),
            self.upstream_connect_errors.get(),
            self.retries.get(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
        )
    }

    /// Copies every counter and histogram (on the shard's thread, between requests).
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &Cell<u64>| c.get();
        let five = |a: &[Cell<u64>; 5]| a.each_ref().map(get);
        Snapshot {
            accepted: self.accepted.get(),
            rejected_conn_limit: self.rejected_conn_limit.get(),
            reclaimed_idle: self.reclaimed_idle.get(),
            retired: self.retired.each_ref().map(get),
            parked: 0,
            closing: 0,
            rejected_no_listener: self.rejected_no_listener.get(),
            rejected_total_limit: self.rejected_total_limit.get(),
            rejected_client_limit: self.rejected_client_limit.get(),
            denied_listener: self.denied_listener.get(),
            denied_route: self.denied_route.get(),
            limited_listener: self.limited_listener.get(),
            limited_route: self.limited_route.get(),
            rate_evictions: self.rate_evictions.get(),
            memory_returns: self.memory_returns.get(),
            proxy_protocol: self.proxy_protocol.each_ref().map(get),
            auth: self.auth.each_ref().map(get),
            auth_bcrypt: self.auth_bcrypt.get(),
            auth_cache_hits: self.auth_cache_hits.get(),
            active: self.active.get(),
            requests: self.requests.get(),
            canned: self.canned.iter().map(get).collect(),
            retries: self.retries.get(),
            client_aborts: self.client_aborts.get(),
            upstream_aborts: self.upstream_aborts.get(),
            slow_request_bodies: self.slow_request_bodies.get(),
            slow_response_readers: self.slow_response_readers.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            routes: self
                .routes
                .iter()
                .map(|r| RouteSnap {
                    status: five(&r.status),
                    aborted: r.aborted.get(),
                    mirror: r.mirror.each_ref().map(Cell::get),
                    mirror_in_flight: r.mirror_in_flight.get(),
                })
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|b| BackendSnap {
                    status: five(&b.status),
                    bytes_sent: b.bytes_sent.get(),
                    bytes_received: b.bytes_received.get(),
                    connects: b.connects.get(),
                    connect_errors: b.connect_errors.get(),
                    ejections: b.ejections.get(),
                    ejections_suppressed: b.ejections_suppressed.get(),
                    breaker_rejected: b.breaker_rejected.get(),
                    breaker_queued: b.breaker_queued.get(),
                    breaker_waiting: 0,
                    in_flight: b.in_flight.get(),
                    failing: b.failing.get(),
                    idle: 0,
                })
                .collect(),
            upstreams: Vec::new(),
            snapshot_id: 0,
            pool_hits: 0,
            pool_misses: 0,
            pool_evicted_idle: 0,
            pool_evicted_dead: 0,
            pool_rejected_full: 0,
            pool_evicted_shard_full: 0,
            pool_evicted_descriptors: 0,
            pool_probes: 0,
            pool_ring_buffered: 0,
            pool_ring_empty: 0,
            access_lines: self.access_lines.get(),
            access_dropped: self.access_dropped.get(),
            log_suppressed: self.log_suppressed.get(),
            spliced: self.spliced.get(),
            spliced_bytes: self.spliced_bytes.get(),
            compressed: self.compressed.each_ref().map(get),
            compress_memory_refused: self.compress_memory_refused.get(),
            buffer_memory_refused: self.buffer_memory_refused.get(),
            compressed_in: self.compressed_in.each_ref().map(get),
            compressed_out: self.compressed_out.each_ref().map(get),
            cache: [0; 14],
            latency: self.latency.borrow().clone(),
            tls: self.tls.snapshot(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RouteSnap {
    pub status: [u64; 5],
    pub aborted: u64,
    pub mirror: [u64; crate::mirror::RESULTS],
    pub mirror_in_flight: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BackendSnap {
    pub status: [u64; 5],
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub connects: u64,
    pub connect_errors: u64,
    pub ejections: u64,
    pub ejections_suppressed: u64,
    pub breaker_rejected: u64,
    pub breaker_queued: u64,
    /// Requests waiting in its breaker's queue (a gauge the shard fills).
    pub breaker_waiting: u64,
    pub in_flight: u64,
    pub failing: u64,
    /// Idle pooled connections (a gauge).
    pub idle: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamSnap {
    /// Retries the budget allowed, and refused.
    pub retries_granted: u64,
    pub retries_denied: u64,
}

/// Plain copies of one shard's counters; [`Snapshot::merge`] adds shards together.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub accepted: u64,
    pub rejected_conn_limit: u64,
    pub reclaimed_idle: u64,
    pub retired: [u64; 2],
    /// Connections waiting for a request now, in the shard's parking lot or in their task
    /// (a gauge the shard fills).
    pub parked: u64,
    /// Connections closing after a complete response ([`crate::linger::close`]; a gauge the
    /// shard fills).
    pub closing: u64,
    pub rejected_no_listener: u64,
    pub rejected_total_limit: u64,
    pub rejected_client_limit: u64,
    pub denied_listener: u64,
    pub denied_route: u64,
    pub limited_listener: u64,
    pub limited_route: u64,
    pub rate_evictions: u64,
    pub memory_returns: u64,
    pub proxy_protocol: [u64; 6],
    pub auth: [u64; AUTH_SLOTS],
    pub auth_bcrypt: u64,
    pub auth_cache_hits: u64,
    pub active: u64,
    pub requests: u64,
    pub canned: Vec<u64>,
    pub retries: u64,
    pub client_aborts: u64,
    pub upstream_aborts: u64,
    pub slow_request_bodies: u64,
    pub slow_response_readers: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub routes: Vec<RouteSnap>,
    pub backends: Vec<BackendSnap>,
    /// Per upstream (filled in by the shard).
    pub upstreams: Vec<UpstreamSnap>,
    /// Which configuration snapshot the per-route and per-backend arrays follow (its
    /// address; filled in by the shard), so the admin thread merges only like with like.
    pub snapshot_id: usize,
    pub pool_hits: u64,
    pub pool_misses: u64,
    pub pool_evicted_idle: u64,
    pub pool_evicted_dead: u64,
    pub pool_rejected_full: u64,
    pub pool_evicted_shard_full: u64,
    pub pool_evicted_descriptors: u64,
    /// Pool checks that peeked with a syscall (see `upstream::pool`).
    pub pool_probes: u64,
    /// Responses received into the shard's ring buffers (io_uring, `crate::bufring`).
    pub pool_ring_buffered: u64,
    /// Responses that arrived while the ring was empty and were read directly.
    pub pool_ring_empty: u64,
    pub access_lines: u64,
    pub access_dropped: u64,
    pub log_suppressed: u64,
    pub spliced: u64,
    pub spliced_bytes: u64,
    pub compressed: [u64; 3],
    pub compress_memory_refused: u64,
    pub buffer_memory_refused: u64,
    pub compressed_in: [u64; 3],
    pub compressed_out: [u64; 3],
    /// The routes' caches ([`crate::cache`]): hits, misses, bypasses, evictions, the gauges
    /// bytes held and entries, then stale and revalidated answers, revalidations by result
    /// (not modified, replaced, failed), responses the admission policy did not store,
    /// responses not stored for `fill_memory`, and entries an unsafe request's success
    /// removed (filled in by the shard).
    pub cache: [u64; 14],
    pub latency: Latencies,
    pub tls: crate::tls::stats::TlsSnap,
}

impl Snapshot {
    /// Adds `other` into `self` (same configuration, so the same shapes).
    pub fn merge(&mut self, other: &Snapshot) {
        fn sum(a: &mut [u64], b: &[u64]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self.accepted += other.accepted;
        self.rejected_conn_limit += other.rejected_conn_limit;
        self.reclaimed_idle += other.reclaimed_idle;
        self.retired[0] += other.retired[0];
        self.retired[1] += other.retired[1];
        self.parked += other.parked;
        self.closing += other.closing;
        self.rejected_no_listener += other.rejected_no_listener;
        self.rejected_total_limit += other.rejected_total_limit;
        self.rejected_client_limit += other.rejected_client_limit;
        self.denied_listener += other.denied_listener;
        self.denied_route += other.denied_route;
        self.limited_listener += other.limited_listener;
        self.limited_route += other.limited_route;
        self.rate_evictions += other.rate_evictions;
        self.memory_returns += other.memory_returns;
        sum(&mut self.proxy_protocol, &other.proxy_protocol);
        sum(&mut self.auth, &other.auth);
        self.auth_bcrypt += other.auth_bcrypt;
        self.auth_cache_hits += other.auth_cache_hits;
        self.active += other.active;
        self.requests += other.requests;
        sum(&mut self.canned, &other.canned);
        self.retries += other.retries;
        self.client_aborts += other.client_aborts;
        self.upstream_aborts += other.upstream_aborts;
        self.slow_request_bodies += other.slow_request_bodies;
        self.slow_response_readers += other.slow_response_readers;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for (a, b) in self.routes.iter_mut().zip(&other.routes) {
            sum(&mut a.status, &b.status);
            a.aborted += b.aborted;
            sum(&mut a.mirror, &b.mirror);
            a.mirror_in_flight += b.mirror_in_flight;
        }
        for (a, b) in self.backends.iter_mut().zip(&other.backends) {
            sum(&mut a.status, &b.status);
            a.bytes_sent += b.bytes_sent;
            a.bytes_received += b.bytes_received;
            a.connects += b.connects;
            a.connect_errors += b.connect_errors;
            a.ejections += b.ejections;
            a.ejections_suppressed += b.ejections_suppressed;
            a.breaker_rejected += b.breaker_rejected;
            a.breaker_queued += b.breaker_queued;
            a.breaker_waiting += b.breaker_waiting;
            a.in_flight += b.in_flight;
            a.failing += b.failing;
            a.idle += b.idle;
        }
        if self.upstreams.len() < other.upstreams.len() {
            self.upstreams
                .resize(other.upstreams.len(), UpstreamSnap::default());
        }
        for (a, b) in self.upstreams.iter_mut().zip(&other.upstreams) {
            a.retries_granted += b.retries_granted;
            a.retries_denied += b.retries_denied;
        }
        self.pool_hits += other.pool_hits;
        self.pool_misses += other.pool_misses;
        self.pool_evicted_idle += other.pool_evicted_idle;
        self.pool_evicted_dead += other.pool_evicted_dead;
        self.pool_rejected_full += other.pool_rejected_full;
        self.pool_evicted_shard_full += other.pool_evicted_shard_full;
        self.pool_evicted_descriptors += other.pool_evicted_descriptors;
        self.pool_probes += other.pool_probes;
        self.pool_ring_buffered += other.pool_ring_buffered;
        self.pool_ring_empty += other.pool_ring_empty;
        self.access_lines += other.access_lines;
        self.access_dropped += other.access_dropped;
        self.log_suppressed += other.log_suppressed;
        self.spliced += other.spliced;
        self.spliced_bytes += other.spliced_bytes;
        sum(&mut self.compressed, &other.compressed);
        self.compress_memory_refused += other.compress_memory_refused;
        self.buffer_memory_refused += other.buffer_memory_refused;
        sum(&mut self.compressed_in, &other.compressed_in);
        sum(&mut self.compressed_out, &other.compressed_out);
        sum(&mut self.cache, &other.cache);
        self.latency.merge(&other.latency);
        self.tls.merge(&other.tls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_merge_counters_and_histograms() {
        let a = Stats::new(2, 3);
        let b = Stats::new(2, 3);
        a.finish_request(Some(0), Some(200), 100);
        a.finish_request(None, Some(404), 50);
        b.finish_request(Some(1), Some(502), 1_000);
        b.finish_request(Some(7), None, 10); // out of range: counted as unrouted
        a.upstream_status(2, 200);
        b.upstream_status(2, 503);
        let mut m = a.snapshot();
        m.merge(&b.snapshot());
        assert_eq!(m.routes[0].status, [0, 1, 0, 0, 0]);
        assert_eq!(m.routes[1].status, [0, 0, 0, 0, 1]);
        assert_eq!(m.routes[2].status, [0, 0, 0, 1, 0]);
        assert_eq!(m.routes[2].aborted, 1);
        assert_eq!(m.backends[2].status, [0, 1, 0, 0, 1]);
        assert_eq!(m.latency.total.len(), 4);
        assert_eq!(m.latency.total.max(), 1_000);
    }
}
