//! Observability, the admin listener: a small HTTP/1.1 server on its own thread and address
//! (never on the public listeners). It reads shard state only by asking each shard for a
//! [`Snapshot`] over a channel and merging the answers, so shards keep writing plain
//! per-shard counters. Endpoints: `GET /metrics` (Prometheus), `GET /status` (JSON),
//! `GET /healthz`, `GET /ready`, `POST /upstreams/NAME/backends/ADDR/drain|enable`,
//! `POST /upstreams/NAME/backends/ADDR/weight/N` ([`crate::weights`]), and
//! `POST /reload` (a hot reload, [`crate::reload`]; the outcome as JSON), and
//! `POST /cache/purge` (the routes' caches, every shard).
//! Responses close the connection; requests are small and bounded. The listener itself
//! (accepting, the connection bound, reading heads, answering) is in `admin_listen.rs`.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_channel::{mpsc, oneshot};

use crate::observe::admin_listen::{self, Counters};
use crate::observe::metrics::{render, ProcessInfo};
use crate::reload::{ReloadStats, Reloader};
use crate::snapshot::{Published, Shared};
use crate::stats::Snapshot;
use crate::worker::ShardQuery;

/// How long a scrape waits for one shard's answer.
const SHARD_TIMEOUT: Duration = Duration::from_secs(2);

/// One shard as `/status` describes it.
#[derive(Clone, Debug)]
pub struct ShardMeta {
    pub cpu: usize,
    pub engine: &'static str,
}

/// Everything the admin thread needs.
pub struct AdminState {
    /// The configuration snapshot in force, loaded by each request.
    pub snapshot: Arc<Published>,
    /// `[admin] token` as the process started with it: the listener stays bound where it
    /// started, so its token is start-up's too, whatever a reloaded file says (a file that
    /// dropped it must not open a bound, maybe public, address to anyone).
    pub token: Option<String>,
    pub shards: Vec<ShardMeta>,
    pub queries: Vec<mpsc::UnboundedSender<ShardQuery>>,
    pub started: Instant,
    pub config_path: Option<PathBuf>,
    /// Reload counts, and the version (hash) and load time of the file in force.
    pub reloads: Arc<ReloadStats>,
    /// `POST /reload` runs it (on this thread: a reload blocks the admin API, not a shard).
    pub reloader: Arc<Mutex<Reloader>>,
    /// Host-name resolutions by result (dns.rs).
    pub dns: Arc<crate::dns::DnsStats>,
}

/// The running admin thread; [`AdminHandle::stop`] ends it.
pub struct AdminHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminHandle {
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the admin server on an already bound listener.
pub fn start(listener: std::net::TcpListener, state: AdminState) -> std::io::Result<AdminHandle> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            match rt {
                Ok(mut rt) => rt.block_on(admin_listen::serve(listener, Rc::new(state), stop_rx)),
                Err(e) => tracing::error!(error = %e, "admin: cannot start its runtime"),
            }
        })?;
    Ok(AdminHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// A response: status line, content type, body.
pub(super) struct Reply {
    pub(super) status: &'static str,
    pub(super) content_type: &'static str,
    pub(super) body: String,
    pub(super) extra: &'static str,
}

pub(super) fn reply(status: &'static str, body: impl Into<String>) -> Reply {
    Reply {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
        extra: "",
    }
}

fn json(status: &'static str, v: serde_json::Value) -> Reply {
    let mut body = serde_json::to_string_pretty(&v).unwrap_or_default();
    body.push('\n');
    Reply {
        status,
        content_type: "application/json",
        body,
        extra: "",
    }
}

/// Compares without an early exit, so the token cannot be guessed byte by byte from timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(state: &AdminState, auth: Option<&[u8]>) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    // RFC 9110 §11.1: the scheme is case-insensitive.
    match auth.map(<[u8]>::trim_ascii) {
        Some(a) if a.len() > 7 && a[..7].eq_ignore_ascii_case(b"bearer ") => {
            same(a[7..].trim_ascii(), token.as_bytes())
        }
        _ => false,
    }
}

/// The answer to one request; `counters` are the admin thread's own (in `/metrics`).
pub(super) async fn route(
    state: &AdminState,
    counters: &Counters,
    method: &str,
    target: &str,
    auth: Option<&[u8]>,
) -> Reply {
    let path = target.split('?').next().unwrap_or(target);
    // Liveness and readiness stay open to probes that carry no token.
    match (method, path) {
        ("GET" | "HEAD", "/healthz") => return reply("200 OK", "ok\n"),
        ("GET" | "HEAD", "/ready") => {
            return if ready(state) {
                reply("200 OK", "ready\n")
            } else {
                reply("503 Service Unavailable", "not ready\n")
            };
        }
        _ => {}
    }
    if !authorized(state, auth) {
        let mut r = reply("401 Unauthorized", "unauthorized\n");
        r.extra = "WWW-Authenticate: Bearer\r\n";
        return r;
    }
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let (shared, per_shard, mut all) = gather(state).await;
            // The admin thread's own held-back error lines count with the shards'.
            all.log_suppressed += counters.log_suppressed();
            let info = process_info(state);
            let mut body = render(&shared, &info, &per_shard, &all);
            counters.render(&mut body);
            Reply {
                status: "200 OK",
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body,
                extra: "",
            }
        }
        ("POST", "/reload") => {
            let outcome = state
                .reloader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reload();
            let status = match (outcome.ok, outcome.applied) {
                (true, _) => "200 OK",
                // In force, but some shard does not serve a listener the file adds.
                (false, true) => "500 Internal Server Error",
                (false, false) => "422 Unprocessable Entity",
            };
            json(status, outcome.to_json())
        }
        (_, "/reload") => reply("405 Method Not Allowed", "use POST\n"),
        ("POST", "/cache/purge") => purge(state, target).await,
        (_, "/cache/purge") => reply("405 Method Not Allowed", "use POST\n"),
        ("GET" | "HEAD", "/status") => {
            let (shared, per_shard, all) = gather(state).await;
            json("200 OK", status_json(state, &shared, &per_shard, &all))
        }
        (_, p) if p.starts_with("/upstreams/") => {
            let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
            match (method, parts.as_slice()) {
                ("POST", ["upstreams", name, "backends", addr, action @ ("drain" | "enable")]) => {
                    set_drained(state, name, addr, *action == "drain").await
                }
                ("POST", ["upstreams", name, "backends", addr, "weight", value]) => {
                    set_weight(state, name, addr, value)
                }
                (_, ["upstreams", _, "backends", _, "drain" | "enable"])
                | (_, ["upstreams", _, "backends", _, "weight", _]) => {
                    reply("405 Method Not Allowed", "use POST\n")
                }
                _ => reply("404 Not Found", "not found\n"),
            }
        }
        ("GET" | "HEAD", _) => reply(
            "404 Not Found",
            "not found; try /metrics, /status, /healthz, /ready\n",
        ),
        _ => reply("405 Method Not Allowed", "method not allowed\n"),
    }
}

fn ready(state: &AdminState) -> bool {
    let accepting = &state.snapshot.load().accepting;
    !accepting.is_empty() && accepting.iter().all(|a| a.load(Ordering::Acquire))
}

/// Asks every shard for its counters and merges them, waiting at most `SHARD_TIMEOUT` in
/// all. A shard that does not answer (it is stopping) is `None`: its per-shard series are
/// left out rather than shifted onto another shard's label. Returns the snapshot the arrays
/// follow: while a reload is switching shards, the question is asked again (a few times),
/// and an answer for another snapshot is left out of the merge.
async fn gather(state: &AdminState) -> (Arc<Shared>, Vec<Option<Snapshot>>, Snapshot) {
    let mut tries = 0;
    loop {
        let shared = state.snapshot.load();
        let id = Arc::as_ptr(&shared) as usize;
        let per_shard = ask(state).await;
        tries += 1;
        let mixed = per_shard.iter().flatten().any(|s| s.snapshot_id != id);
        if mixed && tries < 5 {
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let mut all = empty_snapshot(&shared);
        for s in per_shard.iter().flatten().filter(|s| s.snapshot_id == id) {
            all.merge(s);
        }
        return (shared, per_shard, all);
    }
}

async fn ask(state: &AdminState) -> Vec<Option<Snapshot>> {
    let waits: Vec<_> = state
        .queries
        .iter()
        .map(|q| {
            let (tx, rx) = oneshot::channel();
            q.unbounded_send(ShardQuery::Snapshot(tx)).ok().map(|()| rx)
        })
        .collect();
    let until = Instant::now() + SHARD_TIMEOUT;
    let mut per_shard = Vec::with_capacity(waits.len());
    for rx in waits {
        let left = until.saturating_duration_since(Instant::now());
        let snap = match rx {
            Some(rx) => monoio::time::timeout(left, rx)
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        per_shard.push(snap);
    }
    per_shard
}

fn empty_snapshot(shared: &Shared) -> Snapshot {
    crate::stats::Stats::new(shared.routes.len(), shared.backends.len()).snapshot()
}

fn process_info(state: &AdminState) -> ProcessInfo<'static> {
    ProcessInfo {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs_f64(),
        reloads_ok: state.reloads.ok.load(Ordering::Relaxed),
        reloads_failed: state.reloads.failed.load(Ordering::Relaxed),
        dns_ok: state.dns.ok.load(Ordering::Relaxed),
        dns_failed: state.dns.failed.load(Ordering::Relaxed),
        dns_changes: state.dns.changes.load(Ordering::Relaxed),
        dns_updates: state.dns.updates.load(Ordering::Relaxed),
        store_ok: state.snapshot.rates.store_ok.load(Ordering::Relaxed),
        store_failed: state.snapshot.rates.store_failed.load(Ordering::Relaxed),
        generation: state.snapshot.generation(),
        shards: state
            .shards
            .iter()
            .zip(state.snapshot.load().accepting.iter())
            .map(|(m, a)| (m.cpu, a.load(Ordering::Acquire)))
            .collect(),
    }
}

fn backend_state(shared: &Shared, i: usize, failing: u64) -> &'static str {
    if shared.is_drained(i) {
        "drained"
    } else if !shared.board.is_usable(i) {
        "unhealthy"
    } else if failing > 0 {
        "failing"
    } else {
        "up"
    }
}

fn status_json(
    state: &AdminState,
    shared: &Shared,
    per_shard: &[Option<Snapshot>],
    all: &Snapshot,
) -> serde_json::Value {
    use serde_json::json;
    let cfg = &shared.config;
    let shards: Vec<_> = state
        .shards
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let snap = per_shard.get(i).and_then(Option::as_ref);
            json!({
                "id": i,
                "cpu": m.cpu,
                "io_engine": m.engine,
                "accepting": shared.accepting.get(i).is_some_and(|a| a.load(Ordering::Acquire)),
                "connections_active": snap.map(|s| s.active),
                "requests": snap.map(|s| s.requests),
            })
        })
        .collect();
    let upstreams: Vec<_> = cfg
        .upstreams
        .iter()
        .enumerate()
        .map(|(u, up)| {
            let backends: Vec<_> = shared.upstream_backends[u]
                .clone()
                .map(|b| {
                    let s = &all.backends[b];
                    json!({
                        "address": shared.backends[b].address.to_string(),
                        "weight": up.backends[shared.backends[b].local].weight,
                        "state": backend_state(shared, b, s.failing),
                        "in_flight": s.in_flight,
                        "idle_connections": s.idle,
                        "responses": s.status.iter().sum::<u64>(),
                    })
                })
                .collect();
            json!({
                "name": up.name,
                "balance": up.balance.algorithm.as_str(),
                "backends": backends,
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "ready": ready(state),
        "config": {
            "path": state.config_path.as_ref().map(|p| p.display().to_string()),
            "version": state.reloads.version(),
            "loaded_at": format!(
                "{}Z",
                crate::observe::access::format_iso_time(state.reloads.loaded_unix.load(Ordering::Relaxed))
            ),
            "generation": state.snapshot.generation(),
            "reloads": {
                "ok": state.reloads.ok.load(Ordering::Relaxed),
                "failed": state.reloads.failed.load(Ordering::Relaxed),
            },
        },
        "requests": all.requests,
        "connections_active": all.active,
        "shards": shards,
        "upstreams": upstreams,
    })
}

async fn set_drained(state: &AdminState, upstream: &str, addr: &str, drain: bool) -> Reply {
    let Some((shared, b, was)) = state.snapshot.set_drained(upstream, addr, drain) else {
        return reply(
            "404 Not Found",
            format!("no backend {addr} in upstream {upstream:?}\n"),
        );
    };
    let shared = &*shared;
    if was != drain {
        tracing::info!(
            upstream,
            backend = addr,
            "backend {} through the admin API",
            if drain { "drained" } else { "enabled" }
        );
    }
    // In-flight requests finish; report how many there are now (on the snapshot the drain
    // was set on; a reload in between reports what it knows).
    let (now, _, all) = gather(state).await;
    let seen = if Arc::ptr_eq(&now, &state.snapshot.load()) {
        now.backends
            .iter()
            .position(|x| x.id == shared.backends[b].id)
    } else {
        None
    };
    let snap = seen
        .and_then(|i| all.backends.get(i))
        .copied()
        .unwrap_or_default();
    json(
        "200 OK",
        serde_json::json!({
            "upstream": upstream,
            "backend": shared.backends[b].address.to_string(),
            "state": backend_state(shared, b, snap.failing),
            "in_flight": snap.in_flight,
        }),
    )
}

/// `POST /upstreams/NAME/backends/ADDR/weight/N` (or `/weight/file`): a new snapshot with
/// that weight, built and switched to as a reload's is (on this thread).
fn set_weight(state: &AdminState, upstream: &str, addr: &str, value: &str) -> Reply {
    use crate::weights::WeightError;
    let set = crate::weights::parse(value).and_then(|w| {
        let mut reloader = state.reloader.lock().unwrap_or_else(|p| p.into_inner());
        reloader.set_weight(upstream, addr, w)
    });
    match set {
        Ok(s) => json(
            "200 OK",
            serde_json::json!({
                "upstream": upstream,
                "backend": addr,
                "weight": s.weight,
                "file_weight": s.file_weight,
                "generation": s.generation,
            }),
        ),
        Err(e @ WeightError::NoBackend { .. }) => reply("404 Not Found", format!("{e}\n")),
        Err(e @ WeightError::Value(_)) => reply("400 Bad Request", format!("{e}\n")),
        Err(e @ (WeightError::Ignored(_) | WeightError::Stopping)) => {
            reply("409 Conflict", format!("{e}\n"))
        }
    }
}

/// `POST /cache/purge?key=URL`, `?prefix=URL`, or `?all`: removes those entries from every
/// shard's route caches (a URL key, percent-encoded, is `scheme://host[:port]/path?query`
/// and takes all its `Vary` variants); answers how many entries went.
async fn purge(state: &AdminState, target: &str) -> Reply {
    use crate::cache::Purge;
    let query = target.split_once('?').map_or("", |(_, q)| q);
    // Keys and prefixes are compared as the cache writes its keys (host lower-cased,
    // default port dropped); an empty prefix is not a way to say `all`.
    let key = |v, prefix| {
        let url = escape_unsendable(&crate::route::percent_decode(v)?);
        Some(crate::cache::policy::purge_key(&url, prefix))
    };
    let p = match query.split_once('=') {
        Some(("key", v)) => key(v, false).map(Purge::Key),
        Some(("prefix", v)) => key(v, true).filter(|p| !p.is_empty()).map(Purge::Prefix),
        None if query == "all" => Some(Purge::All),
        _ => None,
    };
    let Some(p) = p else {
        return reply(
            "400 Bad Request",
            "use ?key=URL, ?prefix=URL (percent-encoded, not empty) or ?all\n",
        );
    };
    let waits: Vec<_> = state
        .queries
        .iter()
        .filter_map(|q| {
            let (tx, rx) = oneshot::channel();
            q.unbounded_send(ShardQuery::Purge(p.clone(), tx))
                .ok()
                .map(|()| rx)
        })
        .collect();
    let until = Instant::now() + SHARD_TIMEOUT;
    let (mut purged, mut shards) = (0, 0);
    for rx in waits {
        let left = until.saturating_duration_since(Instant::now());
        if let Ok(Ok(n)) = monoio::time::timeout(left, rx).await {
            purged += n;
            shards += 1;
        }
    }
    json(
        "200 OK",
        serde_json::json!({ "purged": purged, "shards": shards }),
    )
}

/// A decoded URL with the bytes no request target may hold raw (controls, space, DEL,
/// non-ASCII) escaped again as `%XX`: keys hold targets as clients sent them, so
/// `?key=http://h/a%20b` (decoded to `a b`) finds the entry of `GET /a%20b`, as does the
/// doubly encoded `?key=http://h/a%2520b`.
fn escape_unsendable(url: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(url.len());
    for &b in url {
        if b <= b' ' || b >= 0x7f {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// Seconds since the epoch, for `loaded_unix`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
