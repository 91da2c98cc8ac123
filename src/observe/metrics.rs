//! Observability, read side: renders merged shard [`Snapshot`]s as the Prometheus text
//! exposition format (version 0.0.4) for `/metrics`, and as JSON for `/status`. Latency
//! histograms are hdrhistogram per shard, merged here and written both as Prometheus
//! histograms (fixed buckets) and as p50/p90/p99/p99.9 gauges.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::http::canned::Canned;
use crate::snapshot::Shared;
use crate::stats::Snapshot;

use super::metrics_admission::admission;
use super::metrics_routes::routes;

/// Bucket bounds, in seconds, of every latency histogram.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

pub const QUANTILES: &[(f64, &str)] =
    &[(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A per-backend metric family: name, type, help, and how to read it from a snapshot.
type BackendFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::stats::BackendSnap) -> u64,
);

/// Facts about the running process that are not counters.
pub struct ProcessInfo<'a> {
    pub version: &'a str,
    pub uptime_secs: f64,
    /// Configuration reloads that took effect, and that were refused.
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Host-name resolutions of backends (dns.rs) that answered, and that failed.
    pub dns_ok: u64,
    pub dns_failed: u64,
    pub dns_changes: u64,
    pub dns_updates: u64,
    /// Syncs with the rate limits' fleet store (ratelimit_store.rs), by result.
    pub store_ok: u64,
    pub store_failed: u64,
    /// The snapshot generation in force (0 until the first reload).
    pub generation: u64,
    /// Per shard: (CPU, accepting).
    pub shards: Vec<(usize, bool)>,
}

/// A label value escaped for the exposition format (every family's, TLS's too): `\`, `"`
/// and a line feed escaped; another control character, which the format has no escape for
/// and parsers may refuse, is written as U+FFFD.
pub(crate) fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c if c.is_control() => s.push('\u{FFFD}'),
            c => s.push(c),
        }
    }
    s
}

pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one hdrhistogram (microseconds) as a Prometheus histogram in seconds, plus its
/// quantile gauges under `{name}_quantile_seconds`... written by the caller's loop.
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    family(out, name, "histogram", help);
    let mut counts = vec![0u64; BUCKETS.len()];
    let mut sum_us: f64 = 0.0;
    for v in h.iter_recorded() {
        let value = h.highest_equivalent(v.value_iterated_to());
        let n = v.count_at_value();
        sum_us += h.median_equivalent(value) as f64 * n as f64;
        let secs = value as f64 / 1e6;
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            counts[i] += n;
        }
    }
    let mut cumulative = 0;
    for (b, n) in BUCKETS.iter().zip(&counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum {}", sum_us / 1e6);
    let _ = writeln!(out, "{name}_count {}", h.len());
}

fn quantiles(out: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    family(out, name, "gauge", help);
    for (q, label) in QUANTILES {
        let v = if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(*q) as f64 / 1e6
        };
        let _ = writeln!(out, "{name}{{quantile=\"{label}\"}} {v}");
    }
}

/// Renders `/metrics`. `per_shard[i]` is shard i's snapshot, `all` their merge.
pub fn render(
    shared: &Shared,
    info: &ProcessInfo<'_>,
    per_shard: &[Option<Snapshot>],
    all: &Snapshot,
) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let cfg = &shared.config;

    family(
        &mut o,
        "edgeshard_build_info",
        "gauge",
        "Version of the running edgeshard.",
    );
    let _ = writeln!(
        o,
        "edgeshard_build_info{{version=\"{}\"}} 1",
        esc(info.version)
    );
    family(
        &mut o,
        "edgeshard_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    );
    let _ = writeln!(o, "edgeshard_uptime_seconds {}", info.uptime_secs);
    family(
        &mut o,
        "edgeshard_config_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP, POST /reload, edgeshard reload) by result: ok (in force on every shard) or failed (refused, the configuration in force kept).",
    );
    let _ = writeln!(
        o,
        "edgeshard_config_reloads_total{{result=\"ok\"}} {}",
        info.reloads_ok
    );
    let _ = writeln!(
        o,
        "edgeshard_config_reloads_total{{result=\"failed\"}} {}",
        info.reloads_failed
    );
    family(
        &mut o,
        "edgeshard_dns_resolutions_total",
        "counter",
        "Resolutions of backend host names by result: ok, or failed (the last good answer kept).",
    );
    let _ = writeln!(
        o,
        "edgeshard_dns_resolutions_total{{result=\"ok\"}} {}\nedgeshard_dns_resolutions_total{{result=\"failed\"}} {}",
        info.dns_ok, info.dns_failed
    );
    family(
        &mut o,
        "edgeshard_dns_answer_changes_total",
        "counter",
        "Resolutions whose addresses differed from the name's last answer.",
    );
    let _ = writeln!(o, "edgeshard_dns_answer_changes_total {}", info.dns_changes);
    family(
        &mut o,
        "edgeshard_dns_updates_total",
        "counter",
        "Backend sets put in force for changed DNS answers (at most one per dns.min_ttl; each switches every shard).",
    );
    let _ = writeln!(o, "edgeshard_dns_updates_total {}", info.dns_updates);
    family(
        &mut o,
        "edgeshard_rate_limit_store_syncs_total",
        "counter",
        "Syncs of the rate-limit buckets with rate_limits.store, by result: ok, or failed (the store unreachable: each process limits on its own meanwhile).",
    );
    let _ = writeln!(
        o,
        "edgeshard_rate_limit_store_syncs_total{{result=\"ok\"}} {}\nedgeshard_rate_limit_store_syncs_total{{result=\"failed\"}} {}",
        info.store_ok, info.store_failed
    );
    family(
        &mut o,
        "edgeshard_config_generation",
        "gauge",
        "Configuration snapshots put in force since start (0: the one loaded at start).",
    );
    let _ = writeln!(o, "edgeshard_config_generation {}", info.generation);

    // Per shard: to see balance across cores.
    family(
        &mut o,
        "edgeshard_shard_requests_total",
        "counter",
        "Requests served, per shard.",
    );
    for (i, s) in per_shard.iter().enumerate() {
        if let Some(s) = s {
            let _ = writeln!(
                o,
                "edgeshard_shard_requests_total{{shard=\"{i}\"}} {}",
                s.requests
            );
        }
    }
    family(
        &mut o,
        "edgeshard_shard_connections_active",
        "gauge",
        "Open client connections, per shard.",
    );
    for (i, s) in per_shard.iter().enumerate() {
        if let Some(s) = s {
            let _ = writeln!(
                o,
                "edgeshard_shard_connections_active{{shard=\"{i}\"}} {}",
                s.active
            );
        }
    }
    family(
        &mut o,
        "edgeshard_shard_accepting",
        "gauge",
        "1 while the shard accepts connections.",
    );
    for (i, (cpu, accepting)) in info.shards.iter().enumerate() {
        let _ = writeln!(
            o,
            "edgeshard_shard_accepting{{shard=\"{i}\",cpu=\"{cpu}\"}} {}",
            u8::from(*accepting)
        );
    }

    // Client side.
    family(
        &mut o,
        "edgeshard_connections_accepted_total",
        "counter",
        "Client connections accepted.",
    );
    let _ = writeln!(o, "edgeshard_connections_accepted_total {}", all.accepted);
    family(
        &mut o,
        "edgeshard_connections_active",
        "gauge",
        "Open client connections.",
    );
    let _ = writeln!(o, "edgeshard_connections_active {}", all.active);
    family(
        &mut o,
        "edgeshard_connections_rejected_total",
        "counter",
        "Client connections closed at accept, by reason.",
    );
    let _ = writeln!(
        o,
        "edgeshard_connections_rejected_total{{reason=\"max_connections_per_shard\"}} {}",
        all.rejected_conn_limit
    );
    let _ = writeln!(
        o,
        "edgeshard_connections_rejected_total{{reason=\"listener_not_in_force\"}} {}",
        all.rejected_no_listener
    );
    let _ = writeln!(
        o,
        "edgeshard_connections_rejected_total{{reason=\"max_connections\"}} {}",
        all.rejected_total_limit
    );
    let _ = writeln!(
        o,
        "edgeshard_connections_rejected_total{{reason=\"max_connections_per_client\"}} {}",
        all.rejected_client_limit
    );
    admission(&mut o, all);
    family(
        &mut o,
        "edgeshard_requests_total",
        "counter",
        "Requests received (heads parsed).",
    );
    let _ = writeln!(o, "edgeshard_requests_total {}", all.requests);
    routes(&mut o, cfg, all);
    family(
        &mut o,
        "edgeshard_responses_generated_total",
        "counter",
        "Responses the proxy wrote itself (refusals and gateway errors), by status and reason.",
    );
    for (c, n) in Canned::ALL.iter().zip(&all.canned) {
        let _ = writeln!(
            o,
            "edgeshard_responses_generated_total{{status=\"{}\",reason=\"{}\"}} {n}",
            c.status(),
            crate::http::canned::reason_of(c.status())
        );
    }
    family(
        &mut o,
        "edgeshard_client_bytes_received_total",
        "counter",
        "Request body bytes received from clients and forwarded.",
    );
    let _ = writeln!(o, "edgeshard_client_bytes_received_total {}", all.bytes_in);
    family(
        &mut o,
        "edgeshard_client_bytes_sent_total",
        "counter",
        "Response body bytes sent to clients.",
    );
    let _ = writeln!(o, "edgeshard_client_bytes_sent_total {}", all.bytes_out);
    family(
        &mut o,
        "edgeshard_client_aborts_total",
        "counter",
        "Exchanges cut short because the client went away.",
    );
    let _ = writeln!(o, "edgeshard_client_aborts_total {}", all.client_aborts);
    family(
        &mut o,
        "edgeshard_slow_clients_total",
        "counter",
        "Exchanges cut off because the client moved a body below its minimum rate, by reason.",
    );
    let _ = writeln!(
        o,
        "edgeshard_slow_clients_total{{reason=\"request_body\"}} {}",
        all.slow_request_bodies
    );
    let _ = writeln!(
        o,
        "edgeshard_slow_clients_total{{reason=\"response_body\"}} {}",
        all.slow_response_readers
    );

    // Upstream side, per backend.
    let backends: Vec<(String, String)> = shared
        .backends
        .iter()
        .map(|b| (esc(&cfg.upstreams[b.upstream].name), b.address.to_string()))
        .collect();
    family(
        &mut o,
        "edgeshard_upstream_responses_total",
        "counter",
        "Responses relayed from backends, by status class.",
    );
    for ((u, a), b) in backends.iter().zip(&all.backends) {
        for (c, n) in CLASSES.iter().zip(b.status) {
            let _ = writeln!(o, "edgeshard_upstream_responses_total{{upstream=\"{u}\",backend=\"{a}\",class=\"{c}\"}} {n}");
        }
    }
    let per_backend: [BackendFamily; 12] = [
        (
            "edgeshard_upstream_bytes_sent_total",
            "counter",
            "Request body bytes sent to the backend.",
            |b| b.bytes_sent,
        ),
        (
            "edgeshard_upstream_bytes_received_total",
            "counter",
            "Response body bytes received from the backend.",
            |b| b.bytes_received,
        ),
        (
            "edgeshard_upstream_connects_total",
            "counter",
            "New connections opened to the backend.",
            |b| b.connects,
        ),
        (
            "edgeshard_upstream_connect_errors_total",
            "counter",
            "Connects to the backend that failed or timed out.",
            |b| b.connect_errors,
        ),
        (
            "edgeshard_backend_ejections_total",
            "counter",
            "Times a shard ejected the backend (outlier detection; by default one failed connect for fail_timeout).",
            |b| b.ejections,
        ),
        (
            "edgeshard_upstream_requests_in_flight",
            "gauge",
            "Requests being forwarded to the backend now, and its open tunnels (upgraded connections).",
            |b| b.in_flight,
        ),
        (
            "edgeshard_upstream_connections_idle",
            "gauge",
            "Idle pooled connections to the backend.",
            |b| b.idle,
        ),
        (
            "edgeshard_upstream_connections_active",
            "gauge",
            "Open connections to the backend: in use plus idle.",
            |b| b.in_flight + b.idle,
        ),
        (
            "edgeshard_backend_ejections_suppressed_total",
            "counter",
            "Ejections not done because max_ejection_percent was reached.",
            |b| b.ejections_suppressed,
        ),
        (
            "edgeshard_breaker_rejected_total",
            "counter",
            "Requests answered 503 because a circuit-breaker limit of the backend was reached.",
            |b| b.breaker_rejected,
        ),
        (
            "edgeshard_breaker_queued_total",
            "counter",
            "Requests that waited in the backend's breaker queue for a max_requests place.",
            |b| b.breaker_queued,
        ),
        (
            "edgeshard_breaker_waiting",
            "gauge",
            "Requests waiting in the backend's breaker queue now.",
            |b| b.breaker_waiting,
        ),
    ];
    for (name, kind, help, get) in per_backend {
        family(&mut o, name, kind, help);
        for ((u, a), b) in backends.iter().zip(&all.backends) {
            let _ = writeln!(o, "{name}{{upstream=\"{u}\",backend=\"{a}\"}} {}", get(b));
        }
    }
    family(&mut o, "edgeshard_backend_up", "gauge", "1 when the backend is in rotation on every shard: not drained, not failing its health check, not ejected by any shard.");
    for (i, ((u, a), b)) in backends.iter().zip(&all.backends).enumerate() {
        let up = !shared.is_drained(i) && b.failing == 0 && shared.board.is_usable(i);
        let _ = writeln!(
            o,
            "edgeshard_backend_up{{upstream=\"{u}\",backend=\"{a}\"}} {}",
            u8::from(up)
        );
    }
    family(
        &mut o,
        "edgeshard_backend_drained",
        "gauge",
        "1 when the backend was drained through the admin API.",
    );
    for (i, (u, a)) in backends.iter().enumerate() {
        let _ = writeln!(
            o,
            "edgeshard_backend_drained{{upstream=\"{u}\",backend=\"{a}\"}} {}",
            u8::from(shared.is_drained(i))
        );
    }
    family(&mut o, "edgeshard_backend_health", "gauge", "Active health-check state (1 for the current state); unknown = no check yet or none configured (usable).");
    for (i, (u, a)) in backends.iter().enumerate() {
        let now = shared.board.state(i).as_str();
        for state in ["unknown", "healthy", "unhealthy"] {
            let _ = writeln!(
                o,
                "edgeshard_backend_health{{upstream=\"{u}\",backend=\"{a}\",state=\"{state}\"}} {}",
                u8::from(now == state)
            );
        }
    }
    family(
        &mut o,
        "edgeshard_health_checks_total",
        "counter",
        "Active health checks run, by result.",
    );
    for (i, (u, a)) in backends.iter().enumerate() {
        if let Some(slot) = shared.board.slot(i) {
            let _ = writeln!(o, "edgeshard_health_checks_total{{upstream=\"{u}\",backend=\"{a}\",result=\"ok\"}} {}", slot.checks_ok);
            let _ = writeln!(o, "edgeshard_health_checks_total{{upstream=\"{u}\",backend=\"{a}\",result=\"failed\"}} {}", slot.checks_failed);
        }
    }
    family(
        &mut o,
        "edgeshard_retry_budget_total",
        "counter",
        "Retries the upstream's retry budget allowed (granted) or refused (denied).",
    );
    for (i, up) in cfg.upstreams.iter().enumerate() {
        let x = all.upstreams.get(i).copied().unwrap_or_default();
        let u = esc(&up.name);
        let _ = writeln!(
            o,
            "edgeshard_retry_budget_total{{upstream=\"{u}\",result=\"granted\"}} {}",
            x.retries_granted
        );
        let _ = writeln!(
            o,
            "edgeshard_retry_budget_total{{upstream=\"{u}\",result=\"denied\"}} {}",
            x.retries_denied
        );
    }
    family(
        &mut o,
        "edgeshard_upstream_aborts_total",
        "counter",
        "Exchanges cut short by the backend (reset, bad response, timeout).",
    );
    let _ = writeln!(o, "edgeshard_upstream_aborts_total {}", all.upstream_aborts);
    family(&mut o, "edgeshard_retries_total", "counter", "Requests sent again: on a fresh connection after a pooled one died before any byte, or to another backend by the retry policy.");
    let _ = writeln!(o, "edgeshard_retries_total {}", all.retries);

    // Routes' caches.
    let c = &all.cache;
    family(&mut o, "edgeshard_cache_requests_total", "counter", "Requests on routes with a cache, by X-Cache result: hit (served from memory), miss (fetched; stored when allowed), bypass (not cacheable, or the request bypassed the cache), stale (a stale entry served: stale-while-revalidate or stale-if-error), revalidated (a stale entry the backend confirmed with a 304).");
    for (result, n) in [
        ("hit", c[0]),
        ("miss", c[1]),
        ("bypass", c[2]),
        ("stale", c[6]),
        ("revalidated", c[7]),
    ] {
        let _ = writeln!(
            o,
            "edgeshard_cache_requests_total{{result=\"{result}\"}} {n}"
        );
    }
    family(
        &mut o,
        "edgeshard_cache_evictions_total",
        "counter",
        "Cache entries evicted (least recently used) to stay within a route's cache.size.",
    );
    let _ = writeln!(o, "edgeshard_cache_evictions_total {}", c[3]);
    family(
        &mut o,
        "edgeshard_cache_admission_rejected_total",
        "counter",
        "Storable responses not stored because their URL was asked for less often than the entry they would evict (cache.policy = \"tinylfu\").",
    );
    let _ = writeln!(o, "edgeshard_cache_admission_rejected_total {}", c[11]);
    family(
        &mut o,
        "edgeshard_cache_fill_memory_dropped_total",
        "counter",
        "Storable responses not stored because the route's responses being stored on the shard would have held more than cache.fill_memory.",
    );
    let _ = writeln!(o, "edgeshard_cache_fill_memory_dropped_total {}", c[12]);
    family(
        &mut o,
        "edgeshard_cache_invalidated_total",
        "counter",
        "Cache entries removed because an unsafe request (POST, PUT, DELETE, ...) to their URL got a 2xx or 3xx, on every shard (RFC 9111 4.4).",
    );
    let _ = writeln!(o, "edgeshard_cache_invalidated_total {}", c[13]);
    family(&mut o, "edgeshard_cache_bytes", "gauge", "Bytes held by the routes' caches, all shards (each shard holds at most a route's cache.size).");
    let _ = writeln!(o, "edgeshard_cache_bytes {}", c[4]);
    family(
        &mut o,
        "edgeshard_cache_entries",
        "gauge",
        "Responses held by the routes' caches, all shards.",
    );
    let _ = writeln!(o, "edgeshard_cache_entries {}", c[5]);
    family(&mut o, "edgeshard_cache_revalidations_total", "counter", "Revalidations of stale cache entries with the backend (foreground and background), by result: not_modified (a 304 refreshed the entry), replaced (a new response replaced it), failed (unreachable, timed out, a 5xx, or a 4xx about the request such as a 401: the stale entry stays).");
    for (result, n) in [
        ("not_modified", c[8]),
        ("replaced", c[9]),
        ("failed", c[10]),
    ] {
        let _ = writeln!(
            o,
            "edgeshard_cache_revalidations_total{{result=\"{result}\"}} {n}"
        );
    }

    // Pool.
    family(
        &mut o,
        "edgeshard_pool_hits_total",
        "counter",
        "Requests that reused a pooled upstream connection.",
    );
    let _ = writeln!(o, "edgeshard_pool_hits_total {}", all.pool_hits);
    family(
        &mut o,
        "edgeshard_pool_misses_total",
        "counter",
        "Requests that found no pooled connection and connected.",
    );
    let _ = writeln!(o, "edgeshard_pool_misses_total {}", all.pool_misses);
    family(
        &mut o,
        "edgeshard_pool_probes_total",
        "counter",
        "Checks of idle pooled connections (checkouts and sweeps) that peeked at the socket with a syscall; on io_uring the others looked at a receive or readiness wait posted at checkin.",
    );
    let _ = writeln!(o, "edgeshard_pool_probes_total {}", all.pool_probes);
    family(
        &mut o,
        "edgeshard_pool_ring_receives_total",
        "counter",
        "Small responses received on pooled connections through the shard's provided-buffer ring (io_uring), by whether a ring buffer was free (buffered) or the ring was empty and the response was read with a recv of its own (empty).",
    );
    for (result, n) in [
        ("buffered", all.pool_ring_buffered),
        ("empty", all.pool_ring_empty),
    ] {
        let _ = writeln!(
            o,
            "edgeshard_pool_ring_receives_total{{result=\"{result}\"}} {n}"
        );
    }
    family(
        &mut o,
        "edgeshard_pool_evictions_total",
        "counter",
        "Pooled connections closed instead of reused, by reason.",
    );
    for (reason, n) in [
        ("idle_timeout", all.pool_evicted_idle),
        ("closed_by_backend", all.pool_evicted_dead),
        ("pool_full", all.pool_rejected_full),
        ("shard_full", all.pool_evicted_shard_full),
        ("out_of_descriptors", all.pool_evicted_descriptors),
    ] {
        let _ = writeln!(
            o,
            "edgeshard_pool_evictions_total{{reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut o,
        "edgeshard_memory_returns_total",
        "counter",
        "Quiet spells (250 ms without traffic) in which a shard freed its buffer lists and gave its free memory back.",
    );
    let _ = writeln!(o, "edgeshard_memory_returns_total {}", all.memory_returns);

    // Logs.
    family(
        &mut o,
        "edgeshard_access_log_lines_total",
        "counter",
        "Access log lines formatted.",
    );
    let _ = writeln!(o, "edgeshard_access_log_lines_total {}", all.access_lines);
    family(
        &mut o,
        "edgeshard_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer's queue was full.",
    );
    let _ = writeln!(
        o,
        "edgeshard_access_log_dropped_total {}",
        all.access_dropped
    );
    family(
        &mut o,
        "edgeshard_log_suppressed_total",
        "counter",
        "Error log lines held back by log.error_rate.",
    );
    let _ = writeln!(o, "edgeshard_log_suppressed_total {}", all.log_suppressed);
    let dropped = super::errors::STDERR_DROPPED.load(std::sync::atomic::Ordering::Relaxed);
    family(&mut o, "edgeshard_log_lines_dropped_total", "counter", "Error log lines (or their ends) dropped because stderr would have blocked: its reader had stalled.");
    let _ = writeln!(o, "edgeshard_log_lines_dropped_total {dropped}");

    family(
        &mut o,
        "edgeshard_spliced_responses_total",
        "counter",
        "Bodies (responses, and uploads of known length) relayed with splice(2): server.splice_min_bytes and up, and close-delimited responses.",
    );
    let _ = writeln!(o, "edgeshard_spliced_responses_total {}", all.spliced);
    family(
        &mut o,
        "edgeshard_spliced_bytes_total",
        "counter",
        "Body and tunnel bytes moved socket to pipe to socket; a spliced body's first bytes, \
         read with its head, are copied, and so are tunnel bytes outside bulk bursts.",
    );
    let _ = writeln!(o, "edgeshard_spliced_bytes_total {}", all.spliced_bytes);
    compressed(&mut o, all);
    // Latency.
    let lat = &all.latency;
    histogram(
        &mut o,
        "edgeshard_request_duration_seconds",
        "Request latency: head parsed to last response byte written.",
        &lat.total,
    );
    histogram(
        &mut o,
        "edgeshard_upstream_connect_duration_seconds",
        "Time to open a new upstream connection.",
        &lat.connect,
    );
    histogram(
        &mut o,
        "edgeshard_upstream_header_duration_seconds",
        "Request sent upstream to response head received (time to first byte).",
        &lat.first_byte,
    );
    quantiles(
        &mut o,
        "edgeshard_request_duration_quantile_seconds",
        "Request latency quantiles (from the merged hdrhistogram).",
        &lat.total,
    );
    quantiles(
        &mut o,
        "edgeshard_upstream_connect_duration_quantile_seconds",
        "Upstream connect time quantiles.",
        &lat.connect,
    );
    quantiles(
        &mut o,
        "edgeshard_upstream_header_duration_quantile_seconds",
        "Upstream time-to-first-byte quantiles.",
        &lat.first_byte,
    );
    // TLS: only when a listener terminates it.
    if shared.tls.any() {
        let shards: Vec<_> = per_shard
            .iter()
            .map(|s| s.as_ref().map(|s| &s.tls))
            .collect();
        crate::tls::stats::render(&mut o, &all.tls, &shards);
        shared.tls.render(&mut o);
    }
    o
}

/// `edgeshard_compressed_*`: responses a route's `compress` coded, by algorithm.
fn compressed(o: &mut String, all: &Snapshot) {
    let families = [
        ("edgeshard_compressed_responses_total", "Responses compressed by a route's compress, by algorithm.", &all.compressed),
        ("edgeshard_compressed_bytes_in_total", "Body bytes of compressed responses as the backend sent them (de-chunked), by algorithm.", &all.compressed_in),
        ("edgeshard_compressed_bytes_out_total", "Body bytes of compressed responses as coded for the client (without chunk framing), by algorithm.", &all.compressed_out),
    ];
    for (name, help, values) in families {
        family(o, name, "counter", help);
        for a in crate::config::Algorithm::ALL {
            let _ = writeln!(
                o,
                "{name}{{algorithm=\"{}\"}} {}",
                a.token(),
                values[a.index()]
            );
        }
    }
    family(
        o,
        "edgeshard_compress_memory_refused_total",
        "counter",
        "Responses sent uncompressed because the shard's encoders already held limits.compress_memory.",
    );
    let _ = writeln!(
        o,
        "edgeshard_compress_memory_refused_total {}",
        all.compress_memory_refused
    );
    family(o, "edgeshard_request_buffer_memory_refused_total", "counter", "Request bodies streamed instead of read whole (buffer_request_body) because the shard's buffered bodies already held limits.buffer_memory.");
    let _ = writeln!(
        o,
        "edgeshard_request_buffer_memory_refused_total {}",
        all.buffer_memory_refused
    );
}
