//! The control plane's hot reload, beside the pipeline: on SIGHUP, `POST /reload` or
//! `edgeshard reload`, [`Reloader::reload`] reads and validates the configuration file again
//! (the same checks as start-up, certificates included), and either keeps everything as it
//! is (reporting every problem with its key path) or builds the next [`Shared`]
//! ([`Shared::reloaded`]: backends that remain keep their drain flag and health state),
//! publishes it, and tells every shard, which switches between requests
//! ([`crate::shard::ShardCtx::successor`]: pooled connections, passive-check state, breakers
//! and counters carried over by backend identity). The health prober is restarted on the new
//! backend set, resuming from the carried states. One reload runs at a time (the caller
//! holds the `Reloader` in a mutex); nothing here is on the request path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedSender;

use crate::config::{Config, ConfigError};
use crate::dns::Dns;
use crate::health::prober::{ProbeTarget, ProberHandle};
use crate::snapshot::{Published, Shared};
use crate::tls::{TlsError, TlsListeners};
use crate::worker::ShardQuery;

/// How long a reload waits for every shard to switch.
const SHARD_SWITCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a reload was refused (the configuration in force stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload (demo mode)")]
    NoFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{}", .0.join("\n"))]
    Dns(Vec<String>),
    #[error(
        "listener: listener changes need a restart/upgrade (running: {running}; file: {file})"
    )]
    Listeners { running: String, file: String },
}

/// Counts of reloads, and what the configuration in force is, for `/metrics` and `/status`.
#[derive(Debug)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// CRC-32 of the file in force, and when it was loaded (seconds since the epoch).
    pub version: Mutex<String>,
    pub loaded_unix: AtomicU64,
}

impl ReloadStats {
    pub fn new(version: String, loaded_unix: u64) -> ReloadStats {
        ReloadStats {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            version: Mutex::new(version),
            loaded_unix: AtomicU64::new(loaded_unix),
        }
    }

    pub fn version(&self) -> String {
        self.version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a reload did, as reported to its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// The snapshot generation in force after the attempt.
    pub generation: u64,
    /// One line per problem, each with its key path (failure only).
    pub errors: Vec<String>,
    /// Changes that were not applied and need a restart (success only).
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "result": if self.ok { "ok" } else { "failed" },
            "generation": self.generation,
            "errors": self.errors,
            "not_applied": self.notes,
        })
    }
}

/// Owns what a reload replaces besides the snapshot: the prober and the certificate watcher.
pub struct Reloader {
    path: Option<PathBuf>,
    published: Arc<Published>,
    shards: Vec<UnboundedSender<ShardQuery>>,
    prober: Option<ProberHandle>,
    watcher: Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>,
    pub stats: Arc<ReloadStats>,
    /// The configuration of the file in force, host names unresolved: what a DNS change
    /// re-resolves ([`Reloader::apply_dns`]).
    base: Config,
    dns: Arc<Mutex<Dns>>,
}

impl Reloader {
    /// `path`: the file to re-read (`None` in demo mode). Starts the prober and the
    /// certificate watcher for the snapshot in force. `base`: the file's configuration (host
    /// names unresolved), whose names `dns` has resolved into the snapshot in force.
    pub fn start(
        path: Option<PathBuf>,
        published: Arc<Published>,
        shards: Vec<UnboundedSender<ShardQuery>>,
        stats: Arc<ReloadStats>,
        base: Config,
        dns: Arc<Mutex<Dns>>,
    ) -> std::io::Result<Reloader> {
        let shared = published.load();
        let prober =
            crate::health::prober::spawn(shared.board.clone(), probe_targets(&shared, None), None)?;
        let mut r = Reloader {
            path,
            published,
            shards,
            prober: Some(prober),
            watcher: None,
            stats,
            base,
            dns,
        };
        r.watch(shared.tls.clone());
        Ok(r)
    }

    fn watch(&mut self, tls: Arc<TlsListeners>) {
        self.stop_watcher();
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(t) = tls.spawn_watcher(stop.clone()) {
            self.watcher = Some((t, stop));
        }
    }

    fn stop_watcher(&mut self) {
        if let Some((t, stop)) = self.watcher.take() {
            stop.store(true, Ordering::Release);
            t.thread().unpark();
            let _ = t.join();
        }
    }

    /// Stops the prober and the certificate watcher (shutdown).
    pub fn stop(&mut self) {
        if let Some(p) = self.prober.take() {
            p.stop();
        }
        self.stop_watcher();
    }

    /// Re-reads the file and puts it in force on every shard, or changes nothing. Logs the
    /// outcome (every error with its key path) and counts it.
    pub fn reload(&mut self) -> Outcome {
        let started = Instant::now();
        match self.try_reload() {
            Ok(notes) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                let generation = self.published.generation();
                tracing::info!(
                    generation,
                    ms = started.elapsed().as_millis() as u64,
                    "configuration reloaded"
                );
                for n in &notes {
                    tracing::warn!("reload: not applied until restart: {n}");
                }
                Outcome {
                    ok: true,
                    generation,
                    errors: Vec::new(),
                    notes,
                }
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let errors: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
                for line in &errors {
                    tracing::error!("reload failed, keeping the configuration in force: {line}");
                }
                Outcome {
                    ok: false,
                    generation: self.published.generation(),
                    errors,
                    notes: Vec::new(),
                }
            }
        }
    }

    fn try_reload(&mut self) -> Result<Vec<String>, ReloadError> {
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        let text = std::fs::read(&path).unwrap_or_default();
        let config = Config::load(&path)?;
        let old = self.published.load();
        let addresses = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| l.address.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (running, file) = (addresses(&old.config), addresses(&config));
        if running != file {
            return Err(ReloadError::Listeners { running, file });
        }
        // Unchanged TLS settings keep the listeners' TLS state (ticket keys, counters) and
        // re-read the certificates in place, as SIGHUP always did (a bad file is logged and
        // counted by the TLS layer, which keeps the certificates in force). The files are
        // also read here to validate the whole configuration, whatever changed.
        let same_tls = config
            .listeners
            .iter()
            .zip(&old.config.listeners)
            .all(|(a, b)| format!("{:?}", a.tls) == format!("{:?}", b.tls));
        if same_tls {
            old.tls.reload(true);
        }
        let built = TlsListeners::build(&config)?;
        // Upstreams are indexed by position, which a reload may change: their TLS clients
        // always come from the new file.
        let tls = if same_tls {
            Arc::new(TlsListeners {
                listeners: old.tls.listeners.clone(),
                upstreams: built.upstreams,
            })
        } else {
            Arc::new(built)
        };
        let notes = restart_only_changes(&old.config, &config);
        // Host names: new ones are resolved now (one that does not resolve refuses the
        // reload); the others keep their last good answer.
        let resolved = {
            let mut dns = self.dns.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = dns.ensure(&config) {
                dns.configure(&self.base.dns);
                return Err(ReloadError::Dns(e));
            }
            dns.track(&config);
            dns.apply(&config)
        };
        self.base = config;
        self.put_in_force(resolved, &old, tls.clone());
        if !same_tls {
            self.watch(tls);
        }
        *self.stats.version.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("{:08x}", crc32fast::hash(&text));
        self.stats
            .loaded_unix
            .store(crate::observe::admin::unix_now(), Ordering::Relaxed);
        Ok(notes)
    }

    /// Publishes `config` as the next snapshot, switches every shard to it and restarts the
    /// prober on its backends (resuming from the carried states).
    fn put_in_force(&mut self, config: Config, old: &Arc<Shared>, tls: Arc<TlsListeners>) {
        let next = Arc::new(Shared::reloaded(config, old, tls));
        self.published.publish(next.clone());
        self.switch_shards();
        if let Some(p) = self.prober.take() {
            p.stop();
        }
        match crate::health::prober::spawn(
            next.board.clone(),
            probe_targets(&next, Some(old)),
            None,
        ) {
            Ok(p) => self.prober = Some(p),
            Err(e) => tracing::error!(error = %e, "reload: cannot restart the health prober"),
        }
    }

    /// A host name's answer changed (the DNS thread): the file's configuration in force with
    /// the current answers becomes the next snapshot, like a reload of the same file.
    pub fn apply_dns(&mut self) {
        let started = Instant::now();
        let config = self
            .dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&self.base);
        let old = self.published.load();
        let tls = old.tls.clone();
        self.put_in_force(config, &old, tls);
        tracing::info!(
            generation = self.published.generation(),
            ms = started.elapsed().as_millis() as u64,
            "dns: backends updated"
        );
    }

    /// Tells every shard to switch and waits until each has (a stopped shard does not
    /// answer; the wait is bounded).
    fn switch_shards(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let asked = self
            .shards
            .iter()
            .filter(|q| q.unbounded_send(ShardQuery::Reload(tx.clone())).is_ok())
            .count();
        drop(tx);
        let until = Instant::now() + SHARD_SWITCH_TIMEOUT;
        for _ in 0..asked {
            let left = until.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                tracing::warn!("reload: a shard did not switch in time (stopping?)");
                return;
            }
        }
    }
}

/// Settings read once at start-up that differ between `old` and `new`.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    let mut differs = |name: &str, a: String, b: String| {
        if a != b {
            notes.push(format!("{name} changed; it takes effect after a restart"));
        }
    };
    differs(
        "admin",
        format!("{:?}", old.admin.as_ref().map(|a| a.address)),
        format!("{:?}", new.admin.as_ref().map(|a| a.address)),
    );
    differs(
        "log.access",
        format!("{:?}", old.log.access),
        format!("{:?}", new.log.access),
    );
    differs("log.level", old.log.level.clone(), new.log.level.clone());
    differs(
        "log.error_rate",
        old.log.error_rate.to_string(),
        new.log.error_rate.to_string(),
    );
    differs(
        "server.io_engine",
        format!("{:?}", old.io_engine),
        format!("{:?}", new.io_engine),
    );
    differs(
        "server.splice_max_pipes/splice_pipe_bytes",
        format!("{} {}", old.splice.max_pipes, old.splice.pipe_bytes),
        format!("{} {}", new.splice.max_pipes, new.splice.pipe_bytes),
    );
    differs(
        "server.client_congestion",
        format!("{:?}", old.congestion.client),
        format!("{:?}", new.congestion.client),
    );
    notes
}

/// The prober's targets for `shared`: every backend of an upstream with a health check.
/// After a reload (`old` given) a backend that remains resumes from its carried state.
pub fn probe_targets(shared: &Shared, old: Option<&Shared>) -> Vec<ProbeTarget> {
    let map = old.map(|o| shared.backend_map(o));
    shared
        .backends
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let up = &shared.config.upstreams[b.upstream];
            let spec = up.resilience.health_check.as_ref()?;
            let carried = map.as_ref().and_then(|m| m[i]).is_some();
            Some(ProbeTarget {
                backend: i,
                upstream: up.name.clone(),
                address: b.address,
                spec: spec.clone(),
                resume: carried.then(|| shared.board.state(i)),
                tls: shared.tls.upstream(b.upstream).cloned(),
            })
        })
        .collect()
}
