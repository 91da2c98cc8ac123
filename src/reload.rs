//! The control plane's hot reload, beside the pipeline: on SIGHUP, `POST /reload` or
//! `edgeshard reload`, [`Reloader::reload`] reads and validates the configuration file again
//! (the same checks as start-up, certificates included) and binds the listeners it adds
//! ([`crate::listening`]), and either keeps everything as it is (reporting every problem with
//! its key path) or builds the next [`Shared`] ([`Shared::reloaded`]: backends that remain
//! keep their drain flag and health state), publishes it, and tells every shard, which
//! closes the accept loops of removed listeners, switches between requests
//! ([`crate::shard::ShardCtx::successor`]: pooled connections, passive-check state, breakers
//! and counters carried over by backend identity) and accepts on the added ones; an added
//! listener some shard does not take (or a shard that does not answer in time) is reported to
//! the caller as an error, the configuration being in force otherwise. Listeners are matched
//! by address ([`crate::snapshot::ListenerId`]), so one that remains keeps its sockets
//! wherever it moved in the file. Kept TLS listeners re-read their certificates only once
//! nothing can refuse the reload. The health prober is handed the new backend set
//! ([`crate::health::prober::ProberHandle::retarget`]): a backend checked as before keeps its
//! probing, probe in flight included; the others resume from the carried states. One reload
//! runs at a time, and none during a binary upgrade (the callers hold the `Reloader` in a
//! mutex); nothing here is on the request path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedSender;

use crate::config::{Config, ConfigError};
use crate::dns::Dns;
use crate::health::prober::{ProbeTarget, ProberHandle};
use crate::listening::{Changes, Failed, Listening, OpenError, Opened};
use crate::snapshot::{ListenerId, Published, Shared};
use crate::tls::{TlsError, TlsListener, TlsListeners};
use crate::weights::{WeightError, Weights};
use crate::worker::{ShardQuery, ShardReload, Switched};

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
    /// `server.user`/`server.group` that do not exist here: refused as at start-up.
    #[error("{0}")]
    User(#[from] crate::privs::PrivError),
    /// One line per listener the file adds or removes, each with its key path.
    #[error("{}", .0.join("\n"))]
    Stopping(Vec<String>),
    #[error("this process handed its listeners to a new one (binary upgrade) and is draining: reload the new process")]
    HandedOver,
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
    /// Everything in the file is in force (and `errors` is empty).
    pub ok: bool,
    /// The file's configuration was put in force: always when `ok`; when not, some shard
    /// does not serve a listener the file adds (`errors` says which; the rest is in force).
    pub applied: bool,
    /// The snapshot generation in force after the attempt.
    pub generation: u64,
    /// One line per problem, each with its key path.
    pub errors: Vec<String>,
    /// Changes that were not applied and need a restart (when `applied`).
    pub notes: Vec<String>,
    /// The file's warnings ([`Config::warning_lines`]), when it was put in force.
    pub warnings: Vec<String>,
}

impl Outcome {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "result": if self.ok { "ok" } else { "failed" },
            "applied": self.applied,
            "generation": self.generation,
            "errors": self.errors,
            "not_applied": self.notes,
            "warnings": self.warnings,
        })
    }
}

/// What a reload that was put in force reports: settings that need a restart, and the
/// added listeners some shard does not serve.
struct Applied {
    notes: Vec<String>,
    errors: Vec<String>,
    warnings: Vec<String>,
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
    /// The configuration the process started with: settings read once at start-up are still
    /// these, whatever the files reloaded since said ([`restart_only_changes`]).
    started: Config,
    dns: Arc<Mutex<Dns>>,
    /// The listening sockets in force (duplicates of the shards'), for the binary upgrade.
    listening: Listening,
    /// Set once the process drains or hands over: the listener set no longer changes.
    stopping: bool,
    /// Set once a successor serves the listeners: nothing is reloaded here any more (a
    /// reload that waited for the upgrade's outcome would change a process on its way out).
    handed_over: bool,
    /// Backend weights set through the admin API, laid over every snapshot built here.
    weights: Weights,
}

/// A weight set (or given back to the file) through the admin API.
pub struct WeightSet {
    /// The weight in force now, and the file's.
    pub weight: u32,
    pub file_weight: u32,
    /// The snapshot it is in force from.
    pub generation: u64,
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
            started: base.clone(),
            base,
            dns,
            listening,
            stopping: false,
            handed_over: false,
            weights: Weights::default(),
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
    /// The process drains (`handed_over`: a successor serves its listeners): no listener is
    /// added or removed any more, and after a hand-over nothing is reloaded at all.
    pub fn retire(&mut self, handed_over: bool) {
        self.stopping = true;
        self.handed_over |= handed_over;
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
    /// outcome (every error with its key path, once) and counts it: a reload put in force
    /// with an added listener some shard does not serve counts as failed.
    pub fn reload(&mut self) -> Outcome {
        let started = Instant::now();
        match self.try_reload() {
            Ok(Applied {
                notes,
                errors,
                warnings,
            }) => {
                let generation = self.published.generation();
                tracing::info!(
                    generation,
                    ms = started.elapsed().as_millis() as u64,
                    "configuration reloaded"
                );
                for n in &notes {
                    tracing::warn!("reload: not applied until restart: {n}");
                }
                for w in &warnings {
                    tracing::warn!("reload: {w}");
                }
                for e in &errors {
                    tracing::error!("reload: {e}");
                }
                let ok = errors.is_empty();
                let counter = if ok {
                    &self.stats.ok
                } else {
                    &self.stats.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Outcome {
                    ok,
                    applied: true,
                    generation,
                    errors,
                    notes,
                    warnings,
                }
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                // Each line names the file, as the configuration's own errors do.
                let file = self.path.as_ref().map(|p| format!("{}: ", p.display()));
                let errors: Vec<String> = e
                    .to_string()
                    .lines()
                    .map(|l| match &file {
                        Some(f) if !l.starts_with(f.as_str()) => format!("{f}{l}"),
                        _ => l.to_owned(),
                    })
                    .collect();
                for line in &errors {
                    tracing::error!("reload failed, keeping the configuration in force: {line}");
                }
                Outcome {
                    ok: false,
                    applied: false,
                    generation: self.published.generation(),
                    errors,
                    notes: Vec::new(),
                    warnings: Vec::new(),
                }
            }
        }
    }

    fn try_reload(&mut self) -> Result<Applied, ReloadError> {
        if self.handed_over {
            return Err(ReloadError::HandedOver);
        }
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        let text = std::fs::read(&path).unwrap_or_default();
        let config = Config::load(&path)?;
        // An unknown user or group is refused here as `check` and the start-up refuse it (the
        // switch itself happens at the next start).
        if let Some(user) = &config.user {
            crate::privs::Target::resolve(user, config.group.as_deref())?;
        }
        let old = self.published.load();
        let changes = Changes::between(&old, &config);
        if self.stopping && !changes.is_empty() {
            return Err(ReloadError::Stopping(stopping(&old, &changes)));
        }
        let (tls, kept) = carry_tls(&old, &config)?;
        let tls = Arc::new(tls);
        let notes = restart_only_changes(&self.started, &config);
        let warnings = config.warning_lines(&path);
        // Host names: new ones are resolved now (one that does not resolve refuses the
        // reload); the others keep their last good answer. A refusal from here on forgets
        // what was resolved for this file (`Dns::refused`).
        let mut dns = self.dns.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = dns.ensure(&config) {
            dns.refused(&self.base);
            return Err(ReloadError::Dns(e));
        }
        // Added listeners are bound last: a reload refused before binds nothing, and one
        // refused here closes what it bound. `congestion.client` is the one in force (it
        // changes at restart only).
        let opened =
            match self
                .listening
                .open(&old, changes, old.config.congestion.client.as_deref())
            {
                Ok(o) => o,
                Err(e) => {
                    dns.refused(&self.base);
                    return Err(e.into());
                }
            };
        // Nothing refuses the reload from here on: only now are the kept listeners'
        // certificates re-read in place (they are those in force too).
        reread_certificates(&kept);
        dns.track(&config);
        let mut resolved = dns.apply(&config);
        drop(dns);
        self.weights.lay_over(&mut resolved);
        self.base = config;
        let errors = self.put_in_force(resolved, &old, tls.clone(), Some(opened));
        self.watch(tls);
        *self.stats.version.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("{:08x}", crc32fast::hash(&text));
        self.stats
            .loaded_unix
            .store(crate::observe::admin::unix_now(), Ordering::Relaxed);
        Ok(Applied {
            notes,
            errors,
            warnings,
        })
    }

    /// Publishes `config` as the next snapshot, hands the prober its backends and switches
    /// every shard to it (closing the listeners `opened` removes and accepting on those it
    /// adds). Returns a line for each added listener some shard does not serve.
    fn put_in_force(
        &mut self,
        config: Config,
        old: &Arc<Shared>,
        tls: Arc<TlsListeners>,
        opened: Option<Opened>,
    ) -> Vec<String> {
        // The prober keeps its results to itself while the next board is copied from its
        // own (a transition published after the copy would be lost); its probes go on.
        if let Some(p) = &self.prober {
            p.hold();
        }
        // Built while the drain flags cannot change (`publish_with`): `old` is the snapshot in
        // force, only this reloader publishes.
        let next = self
            .published
            .publish_with(|now| Shared::reloaded(config, now, tls));
        // Backends probed as before keep their task, probe in flight and schedule included:
        // changes more frequent than a check's `timeout` must not keep a hung backend in.
        let targets = probe_targets(&next, Some(old));
        let retargeted = match self.prober.as_mut() {
            Some(p) => p.retarget(next.board.clone(), targets),
            None => crate::health::prober::spawn(next.board.clone(), targets, None)
                .map(|p| self.prober = Some(p)),
        };
        if let Err(e) = retargeted {
            tracing::error!(error = %e, "reload: cannot restart the health prober");
        }
        self.switch_shards(opened)
    }

    /// Host names' answers changed (`names` of them, since the DNS thread's last call): the
    /// file's configuration in force with the current answers becomes the next snapshot, like
    /// a reload of the same file.
    pub fn apply_dns(&mut self, names: usize) {
        if self.stopping {
            // Draining (or handed over): the shards take no new backend set.
            return;
        }
        let started = Instant::now();
        let mut config = self
            .dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&self.base);
        self.weights.lay_over(&mut config);
        let old = self.published.load();
        let tls = old.tls.clone();
        // No listener changes: nothing to report but a late shard, which is logged.
        self.put_in_force(config, &old, tls, None);
        self.dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats
            .updates
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            generation = self.published.generation(),
            names,
            ms = started.elapsed().as_millis() as u64,
            "dns: backends updated"
        );
    }

    /// Sets the weight of `upstream`'s backend `addr` (`None`: back to the file's) and puts
    /// it in force on every shard, as a reload of the same file would.
    pub fn set_weight(
        &mut self,
        upstream: &str,
        addr: &str,
        weight: Option<u32>,
    ) -> Result<WeightSet, WeightError> {
        if self.stopping {
            return Err(WeightError::Stopping);
        }
        let mut config = self
            .dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&self.base);
        let file_weight = self.weights.set(&config, upstream, addr, weight)?;
        self.weights.lay_over(&mut config);
        let old = self.published.load();
        let tls = old.tls.clone();
        self.put_in_force(config, &old, tls, None);
        let generation = self.published.generation();
        tracing::info!(
            upstream,
            backend = addr,
            weight = weight.unwrap_or(file_weight),
            generation,
            "backend weight set through the admin API"
        );
        Ok(WeightSet {
            weight: weight.unwrap_or(file_weight),
            file_weight,
            generation,
        })
    }

    /// Tells every shard to switch (with its sockets of the listeners `opened` adds, and
    /// those it removes) and waits until each has (the wait is bounded). Then the listener
    /// set in force is `opened`'s, less the sockets a shard did not take (closed, see
    /// [`Listening::apply`]). Returns a line for each added listener some shard does not
    /// serve.
    fn switch_shards(&mut self, mut opened: Option<Opened>) -> Vec<String> {
        let close: Vec<ListenerId> = opened
            .as_ref()
            .map(|o| o.removed().to_vec())
            .unwrap_or_default();
        let open = match opened.as_mut() {
            Some(o) => std::mem::take(&mut o.per_shard),
            None => Vec::new(),
        };
        let (asked, mut failed) = ask_shards(&self.shards, open, &close);
        failed.extend(await_shards(asked, SHARD_SWITCH_TIMEOUT));
        match opened {
            Some(o) => self.listening.apply(o, &failed),
            None => Vec::new(),
        }
    }
}

/// The shards a reload asked to switch, waiting for their answers: each one's id and the
/// added listeners it was sent a socket of.
struct Asked {
    answers: std::sync::mpsc::Receiver<Switched>,
    waiting: Vec<(usize, Vec<ListenerId>)>,
}

/// Sends each shard its [`ShardReload`] (`open[shard]`: its sockets of the added listeners;
/// `close`: the removed listeners). A shard that is not running any more (its queue closed)
/// gets nothing: its sockets are dropped with the message and reported failed.
fn ask_shards(
    shards: &[UnboundedSender<ShardQuery>],
    mut open: Vec<Vec<(ListenerId, std::net::TcpListener)>>,
    close: &[ListenerId],
) -> (Asked, Vec<Failed>) {
    let (tx, answers) = std::sync::mpsc::channel();
    let mut waiting = Vec::new();
    let mut failed = Vec::new();
    for (shard, q) in shards.iter().enumerate() {
        let open = open.get_mut(shard).map(std::mem::take).unwrap_or_default();
        let ids: Vec<ListenerId> = open.iter().map(|(id, _)| *id).collect();
        let r = ShardReload {
            done: tx.clone(),
            open,
            close: close.to_vec(),
        };
        if q.unbounded_send(ShardQuery::Reload(r)).is_ok() {
            waiting.push((shard, ids));
        } else {
            failed.extend(ids.into_iter().map(|listener| Failed {
                shard,
                listener,
                why: format!("shard {shard} is not running"),
            }));
        }
    }
    (Asked { answers, waiting }, failed)
}

/// Waits up to `timeout` for every shard `asked` to answer; returns the added sockets the
/// shards could not take, and those of every shard that did not answer in time (a stopped
/// or stuck shard: logged once; should it switch later, it finds its socket shut down).
fn await_shards(mut asked: Asked, timeout: Duration) -> Vec<Failed> {
    let mut failed = Vec::new();
    let until = Instant::now() + timeout;
    while !asked.waiting.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(answer) = asked.answers.recv_timeout(left) else {
            break;
        };
        asked.waiting.retain(|(shard, _)| *shard != answer.shard);
        failed.extend(answer.failed.into_iter().map(|(listener, why)| Failed {
            shard: answer.shard,
            listener,
            why,
        }));
    }
    for (shard, ids) in asked.waiting {
        tracing::warn!(
            shard,
            "reload: the shard did not switch within {timeout:?} (stopping?)"
        );
        failed.extend(ids.into_iter().map(|listener| Failed {
            shard,
            listener,
            why: format!("shard {shard} did not switch within {timeout:?}"),
        }));
    }
    failed
}

/// The lines of [`ReloadError::Stopping`]: each listener `changes` adds or removes.
fn stopping(old: &Shared, changes: &Changes) -> Vec<String> {
    const WHY: &str = "this process is stopping (a drain or a binary upgrade): listeners are not added or removed now; reload the process that serves next";
    let added = changes
        .added
        .iter()
        .map(|(i, id)| format!("listener[{i}].address: {id} would be added, but {WHY}"));
    let removed = changes.removed.iter().map(|id| {
        let at = old.listener(*id).unwrap_or_default();
        format!("listener[{at}].address: {id} (in force) would be removed, but {WHY}")
    });
    added.chain(removed).collect()
}

/// The listeners' TLS for `config`: a listener whose address, position and `tls` settings
/// are unchanged keeps its TLS state (certificate store and its counters, rustls
/// configuration), returned second so that its certificates are re-read in place once the
/// reload can no longer be refused ([`reread_certificates`]); others are built from the file
/// (a moved one too: its metrics are labelled by position). The session-ticket keys in force
/// are kept for all, so clients resume across the reload. Every file is read here to
/// validate the whole configuration, whatever changed; nothing in force is touched.
fn carry_tls(
    old: &Shared,
    config: &Config,
) -> Result<(TlsListeners, Vec<Arc<TlsListener>>), ReloadError> {
    // Each new listener's TLS in force now (same address and position), and whether its
    // settings are unchanged.
    let prev: Vec<Option<(Arc<TlsListener>, bool)>> = ListenerId::all(&config.listeners)
        .into_iter()
        .zip(&config.listeners)
        .map(|(id, l)| {
            let j = old.listener(id)?;
            // The Debug text holds the key paths too: a moved listener differs.
            let same = format!("{:?}", old.config.listeners[j].tls) == format!("{:?}", l.tls);
            old.tls.get(j).cloned().map(|t| (t, same))
        })
        .collect();
    let built = TlsListeners::build_with(config, old.tls.ticketer.clone())?;
    // A client CA file that changed under the same path changes the policy: rebuilt (with
    // the new CA, and a new ticket scope, so sessions made under the old CA end).
    let kept: Vec<Option<Arc<TlsListener>>> = prev
        .iter()
        .zip(&built.listeners)
        .map(|(prev, fresh)| {
            let (k, same) = prev.as_ref()?;
            let keep = *same && fresh.as_ref().is_some_and(|f| f.scope == k.scope);
            keep.then(|| k.clone())
        })
        .collect();
    // A listener rebuilt in place (same address and position, so the same metric labels)
    // keeps its series: its certificate reload counts go on from the old one's, the rebuild
    // (which read its certificates) one more `ok`, rather than dropping back to 0.
    for ((prev, fresh), kept) in prev.iter().zip(&built.listeners).zip(&kept) {
        if let (Some((p, _)), Some(f), None) = (prev, fresh, kept) {
            if p.key_path == f.key_path {
                use std::sync::atomic::Ordering::Relaxed;
                let ok = p.store.reloads_ok.load(Relaxed) + 1;
                f.store.reloads_ok.store(ok, Relaxed);
                let failed = p.store.reloads_failed.load(Relaxed);
                f.store.reloads_failed.store(failed, Relaxed);
            }
        }
    }
    let reread = kept.iter().flatten().cloned().collect();
    let listeners = built
        .listeners
        .into_iter()
        .zip(kept)
        .map(|(fresh, kept)| kept.or(fresh))
        .collect();
    // Upstreams are indexed by position, which a reload may change: their TLS clients
    // always come from the new file.
    Ok((
        TlsListeners {
            listeners,
            upstreams: built.upstreams,
            // Names from the new file: a kept listener's are the same.
            subject_headers: built.subject_headers,
            ticketer: built.ticketer,
        },
        reread,
    ))
}

/// Re-reads the certificates of the TLS listeners a reload keeps, in place, as SIGHUP always
/// did: a file that went bad since it was validated is logged and counted by the TLS layer,
/// which keeps the certificates in force.
fn reread_certificates(kept: &[Arc<TlsListener>]) {
    for k in kept {
        match k.store.reload(true) {
            Some(Ok(())) => tracing::info!(listener = %k.key_path, "certificates reloaded"),
            Some(Err(e)) => {
                tracing::error!("certificate reload failed, keeping the certificates in force: {e}")
            }
            None => {}
        }
    }
}

/// Settings read once at start-up whose value in `new` differs from the one in force since
/// then (`started`'s, whatever files were reloaded in between).
fn restart_only_changes(started: &Config, new: &Config) -> Vec<String> {
    let old = started;
    let mut notes = Vec::new();
    let mut differs = |name: &str, a: String, b: String| {
        if a != b {
            notes.push(format!(
                "{name} differs from the value in force since start-up; it takes effect after a restart"
            ));
        }
    };
    // The admin listener stays bound where it started, and so keeps start-up's token: a
    // file that drops `[admin]` or its token must not open that address to anyone.
    differs(
        "admin (address, token)",
        format!("{:?}", old.admin.as_ref().map(|a| (a.address, &a.token))),
        format!("{:?}", new.admin.as_ref().map(|a| (a.address, &a.token))),
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
        "server.huge_pages",
        old.huge_pages.to_string(),
        new.huge_pages.to_string(),
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
    differs(
        "server.user/group",
        format!("{:?} {:?}", old.user, old.group),
        format!("{:?} {:?}", new.user, new.group),
    );
    // Compared whole, the store's password too (its Debug text hides it).
    differs(
        "rate_limits",
        String::new(),
        match old.rate_limits == new.rate_limits {
            true => String::new(),
            false => "changed".into(),
        },
    );
    notes
}

/// The prober's targets for `shared`: every backend of an upstream with a health check.
/// After a reload (`old` given) a backend that remains, and was checked, resumes from its
/// carried state if the prober starts a task for it (one it keeps goes on from its own).
pub fn probe_targets(shared: &Shared, old: Option<&Shared>) -> Vec<ProbeTarget> {
    // The reload that built `shared` worked the map out already (`Shared::carry`).
    let map = old.map(|o| shared.carry_from(o));
    shared
        .backends
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let up = &shared.config.upstreams[b.upstream];
            let spec = up.resilience.health_check.as_ref()?;
            let carried = map
                .as_ref()
                .and_then(|m| m.backends[i])
                .zip(old)
                .is_some_and(|(j, o)| o.checked(j));
            Some(ProbeTarget {
                backend: i,
                upstream: up.name.clone(),
                address: b.address,
                spec: spec.clone(),
                resume: carried
                    .then(|| shared.board.slot(i).map(|v| (v.state, v.streak)))
                    .flatten(),
                tls: shared.tls.upstream(b.upstream).cloned(),
                proxy_protocol: up.proxy_protocol,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "reload_tests.rs"]
mod tests;
