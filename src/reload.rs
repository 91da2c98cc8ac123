//! The control plane's hot reload, beside the pipeline: on SIGHUP, `POST /reload` or
//! `edgeshard reload`, [`Reloader::reload`] reads and validates the configuration file again
//! (the same checks as start-up, certificates included) and binds the listeners it adds
//! ([`crate::listening`]), and either keeps everything as it is (reporting every problem with
//! its key path) or builds the next [`Shared`] ([`Shared::reloaded`]: backends that remain
//! keep their drain flag and health state), publishes it, and tells every shard, which
//! closes the accept loops of removed listeners, switches between requests
//! ([`crate::shard::ShardCtx::successor`]: pooled connections, passive-check state, breakers
//! and counters carried over by backend identity) and accepts on the added ones. Listeners
//! are matched by address ([`crate::snapshot::ListenerId`]), so one that remains keeps its
//! sockets wherever it moved in the file. The health prober is restarted on the new backend
//! set, resuming from the carried states. One reload runs at a time, and none during a binary
//! upgrade (the callers hold the `Reloader` in a mutex); nothing here is on the request path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedSender;

use crate::config::{Config, ConfigError};
use crate::dns::Dns;
use crate::health::prober::{ProbeTarget, ProberHandle};
use crate::listening::{Changes, Listening, OpenError, Opened};
use crate::snapshot::{ListenerId, Published, Shared};
use crate::tls::{TlsError, TlsListeners};
use crate::worker::{ShardQuery, ShardReload};

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
    #[error("{0}")]
    Listen(#[from] OpenError),
    #[error("listener: this process is stopping (a drain or a binary upgrade): listeners are not added or removed now; reload the process that serves next")]
    Stopping,
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
    /// The listening sockets in force (duplicates of the shards'), for the binary upgrade.
    listening: Listening,
    /// Set once the process drains or hands over: the listener set no longer changes.
    stopping: bool,
}

impl Reloader {
    /// `path`: the file to re-read (`None` in demo mode). Starts the prober and the
    /// certificate watcher for the snapshot in force. `base`: the file's configuration (host
    /// names unresolved), whose names `dns` has resolved into the snapshot in force.
    /// `listening`: the sockets the shards were started with.
    pub fn start(
        path: Option<PathBuf>,
        published: Arc<Published>,
        shards: Vec<UnboundedSender<ShardQuery>>,
        stats: Arc<ReloadStats>,
        base: Config,
        dns: Arc<Mutex<Dns>>,
        listening: Listening,
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
            listening,
            stopping: false,
        };
        r.watch(shared.tls.clone());
        Ok(r)
    }

    /// Every listening socket in force, labelled with its listener's position and address,
    /// for the binary upgrade. The descriptors stay open while the caller holds `self` (and
    /// with it the lock that keeps a reload from changing them).
    pub fn listening(&self) -> Vec<(usize, std::net::SocketAddr, std::os::fd::RawFd)> {
        self.listening.described(&self.published.load())
    }

    /// The process drains, or a successor serves the listeners: from now on a reload that
    /// adds or removes a listener is refused (the sockets may be the successor's), and the
    /// duplicates held for an upgrade are closed.
    pub fn retire(&mut self) {
        self.stopping = true;
        self.listening.clear();
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
        let changes = Changes::between(&old, &config);
        if self.stopping && !changes.is_empty() {
            return Err(ReloadError::Stopping);
        }
        let tls = Arc::new(carry_tls(&old, &config)?);
        let mut notes = restart_only_changes(&old.config, &config);
        // Host names: new ones are resolved now (one that does not resolve refuses the
        // reload); the others keep their last good answer.
        let mut dns = self.dns.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = dns.ensure(&config) {
            dns.configure(&self.base.dns);
            return Err(ReloadError::Dns(e));
        }
        // Added listeners are bound last: a reload refused before binds nothing, and one
        // refused here closes what it bound. `congestion.client` is the one in force (it
        // changes at restart only).
        let opened = match self
            .listening
            .open(changes, old.config.congestion.client.as_deref())
        {
            Ok(o) => o,
            Err(e) => {
                dns.configure(&self.base.dns);
                return Err(e.into());
            }
        };
        dns.track(&config);
        let resolved = dns.apply(&config);
        drop(dns);
        self.base = config;
        notes.extend(self.put_in_force(resolved, &old, tls.clone(), Some(opened)));
        self.watch(tls);
        *self.stats.version.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("{:08x}", crc32fast::hash(&text));
        self.stats
            .loaded_unix
            .store(crate::observe::admin::unix_now(), Ordering::Relaxed);
        Ok(notes)
    }

    /// Publishes `config` as the next snapshot, switches every shard to it (closing the
    /// listeners `opened` removes and accepting on those it adds) and restarts the prober on
    /// its backends (resuming from the carried states). Returns what a shard could not do.
    fn put_in_force(
        &mut self,
        config: Config,
        old: &Arc<Shared>,
        tls: Arc<TlsListeners>,
        opened: Option<Opened>,
    ) -> Vec<String> {
        let next = Arc::new(Shared::reloaded(config, old, tls));
        self.published.publish(next.clone());
        let problems = self.switch_shards(opened);
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
        problems
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
        self.put_in_force(config, &old, tls, None);
        tracing::info!(
            generation = self.published.generation(),
            ms = started.elapsed().as_millis() as u64,
            "dns: backends updated"
        );
    }

    /// Tells every shard to switch (with its sockets of the listeners `opened` adds, and
    /// those it removes) and waits until each has (a stopped shard does not answer; the
    /// wait is bounded). Then the listener set in force is `opened`'s. Returns what a shard
    /// could not do.
    fn switch_shards(&mut self, mut opened: Option<Opened>) -> Vec<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let close: Vec<ListenerId> = opened
            .as_ref()
            .map(|o| o.removed().to_vec())
            .unwrap_or_default();
        let mut asked = 0;
        for (shard, q) in self.shards.iter().enumerate() {
            let open = opened
                .as_mut()
                .and_then(|o| o.per_shard.get_mut(shard))
                .map(std::mem::take)
                .unwrap_or_default();
            let r = ShardReload {
                done: tx.clone(),
                open,
                close: close.clone(),
            };
            if q.unbounded_send(ShardQuery::Reload(r)).is_ok() {
                asked += 1;
            }
        }
        drop(tx);
        let mut problems = Vec::new();
        let until = Instant::now() + SHARD_SWITCH_TIMEOUT;
        for _ in 0..asked {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, p)) => problems.extend(p),
                Err(_) => {
                    tracing::warn!("reload: a shard did not switch in time (stopping?)");
                    break;
                }
            }
        }
        for p in &problems {
            tracing::error!("reload: {p}");
        }
        if let Some(o) = opened {
            for (key, addr) in &o.bound {
                tracing::info!(listener = %key, "reload: listening on {addr}");
            }
            for id in o.removed() {
                tracing::info!("reload: stopped listening on {id}");
            }
            self.listening.apply(o);
        }
        problems
    }
}

/// The listeners' TLS for `config`: a listener whose address, position and `tls` settings
/// are unchanged keeps its TLS state (certificate store and its counters, rustls
/// configuration) and re-reads its certificates in place, as SIGHUP always did (a bad file
/// is logged and counted by the TLS layer, which keeps the certificates in force); others
/// are built from the file (a moved one too: its metrics are labelled by position). The
/// session-ticket keys in force are kept for all, so clients resume across the reload. Every
/// file is also read here to validate the whole configuration, whatever changed.
fn carry_tls(old: &Shared, config: &Config) -> Result<TlsListeners, ReloadError> {
    let kept: Vec<Option<Arc<crate::tls::TlsListener>>> = ListenerId::all(&config.listeners)
        .into_iter()
        .zip(&config.listeners)
        .map(|(id, l)| {
            let j = old.listener(id)?;
            // The Debug text holds the key paths too: a moved listener differs.
            let same = format!("{:?}", old.config.listeners[j].tls) == format!("{:?}", l.tls);
            same.then(|| old.tls.get(j).cloned()).flatten()
        })
        .collect();
    for k in kept.iter().flatten() {
        match k.store.reload(true) {
            Some(Ok(())) => tracing::info!(listener = %k.key_path, "certificates reloaded"),
            Some(Err(e)) => {
                tracing::error!("certificate reload failed, keeping the certificates in force: {e}")
            }
            None => {}
        }
    }
    let built = TlsListeners::build_with(config, old.tls.ticketer())?;
    let listeners = built
        .listeners
        .into_iter()
        .zip(kept)
        .map(|(fresh, kept)| kept.or(fresh))
        .collect();
    // Upstreams are indexed by position, which a reload may change: their TLS clients
    // always come from the new file.
    Ok(TlsListeners {
        listeners,
        upstreams: built.upstreams,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `a.test` in a fresh directory; the directory is removed
    /// when the returned guard drops.
    struct Certs(PathBuf);

    impl Drop for Certs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn certs() -> Certs {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "edgeshard-reload-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        std::fs::write(dir.join("a.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("a.key"), c.signing_key.serialize_pem()).unwrap();
        Certs(dir)
    }

    /// A file with these listeners (`None`: plain; `Some(hsts)`: TLS with that HSTS value).
    fn shared(dir: &Certs, listeners: &[(&str, Option<&str>)]) -> Shared {
        let mut text = String::new();
        for (a, tls) in listeners {
            text.push_str(&format!("[[listener]]\naddress = \"{a}\"\n"));
            if let Some(h) = tls {
                text.push_str(&format!(
                    "tls = {{ certificates = [{{ cert = \"a.pem\", key = \"a.key\" }}], hsts = \"{h}\" }}\n"
                ));
            }
        }
        text.push_str("[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n");
        let config = Config::parse(&text, &dir.0.join("edge.toml")).unwrap();
        let tls = Arc::new(TlsListeners::build(&config).unwrap());
        Shared::new(config).with_tls(tls)
    }

    #[test]
    fn tls_state_is_kept_by_address_and_position_and_ticket_keys_for_all() {
        let dir = certs();
        let old = shared(
            &dir,
            &[
                ("127.0.0.1:8443", Some("max-age=1")),
                ("127.0.0.1:9443", Some("max-age=2")),
            ],
        );
        let kept = |new: &Shared, i: usize, j: usize| {
            let tls = carry_tls(&old, &new.config).unwrap();
            Arc::ptr_eq(tls.get(i).unwrap(), old.tls.get(j).unwrap())
        };
        // The same file: both keep their state.
        let same = shared(
            &dir,
            &[
                ("127.0.0.1:8443", Some("max-age=1")),
                ("127.0.0.1:9443", Some("max-age=2")),
            ],
        );
        assert!(kept(&same, 0, 0) && kept(&same, 1, 1));
        // A plain listener added in front: both moved (their key paths changed), rebuilt.
        let moved = shared(
            &dir,
            &[
                ("127.0.0.1:8080", None),
                ("127.0.0.1:8443", Some("max-age=1")),
                ("127.0.0.1:9443", Some("max-age=2")),
            ],
        );
        assert!(!kept(&moved, 1, 0) && !kept(&moved, 2, 1));
        // One's settings changed: the other keeps its state, the changed one is rebuilt.
        let changed = shared(
            &dir,
            &[
                ("127.0.0.1:8443", Some("max-age=1")),
                ("127.0.0.1:9443", Some("max-age=3")),
            ],
        );
        assert!(kept(&changed, 0, 0) && !kept(&changed, 1, 1));
        let tls = carry_tls(&old, &changed.config).unwrap();
        assert_eq!(tls.get(1).unwrap().hsts.as_deref(), Some("max-age=3"));
        // Ticket keys are those in force, for rebuilt listeners too.
        let before = old.tls.ticketer().unwrap();
        for t in [tls.get(0), tls.get(1)].into_iter().flatten() {
            assert!(Arc::ptr_eq(&t.config.ticketer, &before));
        }
    }
}
