//! DNS service discovery, beside the pipeline: backends written as `HOST:PORT` (A and AAAA)
//! or `{ srv = "_http._tcp.NAME" }` (SRV, then its targets) are resolved here, never on a
//! shard. [`Dns`] keeps the last good answer of every name and
//! when to ask again (the record's TTL clamped to `[dns] min_ttl..max_ttl`); one thread
//! ([`spawn`]) re-resolves the names that are due and, when an answer changed, has the
//! [`Reloader`] put the file's configuration with the new addresses in force, through the same
//! path as a reload ([`Reloader::apply_dns`]): backends whose address stays keep their pool,
//! health, outlier and breaker state (backend identity is upstream name + address). Changed
//! answers go in force at most once per `min_ttl` ([`Coalesce`]): each update switches every
//! shard.
//!
//! A failed resolution keeps the last good answer, is counted
//! (`edgeshard_dns_resolutions_total{result="failed"}`), logged with the name, and retried
//! after `min_ttl`. At start-up and on reload a name that does not resolve is an error (the
//! process does not start; the reload is refused): see docs/CONFIG.md, `[dns]`.
//!
//! The resolver is hickory-resolver on a current-thread tokio runtime owned by this module,
//! with its cache off (`cache_size = 0`) so every refresh asks the server and sees the TTL.
//! The thread asks the servers without the [`Dns`] lock (a refresh takes the names due and
//! the resolver under it, resolves, then takes it again to keep the answers): a reload, the
//! admin API and a stop wait for that lock, and a silent server costs seconds (each batch
//! of names is asked at once, [`lookup_all`]: tasks on the resolver's runtime, so the seconds
//! of one name, not of each).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::config::{Config, DnsConfig};
use crate::reload::Reloader;

/// Resolutions by result, for `/metrics`.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Answers that changed (a name's new address set).
    pub changes: AtomicU64,
    /// Configurations put in force for changed answers (each switches every shard).
    pub updates: AtomicU64,
}

struct Answer {
    /// Port 0 for a host name (the file gives it), the record's for an SRV name.
    ips: Vec<SocketAddr>,
    /// When to resolve the name again.
    due: Instant,
}

/// A resolver and the runtime it runs on, shared by the reloader and the DNS thread (a
/// current-thread runtime's `block_on` may be called from both at once).
type Resolver = Arc<(tokio::runtime::Runtime, TokioResolver)>;

/// The resolver and the answers in force. Locked by the reloader (start-up, reload) to
/// resolve new names and to read the answers, and by the DNS thread to take the names due
/// and to keep what it resolved ([`Dns::due`], [`Dns::settle`]), never while it waits on a
/// server.
pub struct Dns {
    config: DnsConfig,
    runtime: Option<Resolver>,
    /// Moves when `[dns]` changes: answers resolved under the settings before are dropped.
    epoch: u64,
    answers: HashMap<String, Answer>,
    /// The names of the configuration in force (what the thread keeps fresh).
    names: BTreeSet<String>,
    pub stats: Arc<DnsStats>,
}

impl Dns {
    pub fn new(config: &DnsConfig, stats: Arc<DnsStats>) -> Dns {
        Dns {
            config: config.clone(),
            runtime: None,
            epoch: 0,
            answers: HashMap::new(),
            names: BTreeSet::new(),
            stats,
        }
    }

    /// Takes `[dns]` from a new configuration: other servers or bounds rebuild the resolver
    /// and make every answer due at once (each stays the last good one until the new servers
    /// answer, so a refused reload that restores the old settings loses nothing).
    pub fn configure(&mut self, config: &DnsConfig) {
        if *config != self.config {
            self.config = config.clone();
            self.runtime = None;
            self.epoch += 1;
            let now = Instant::now();
            for a in self.answers.values_mut() {
                a.due = now;
            }
        }
    }

    fn resolver(&mut self) -> Result<Resolver, String> {
        if let Some(r) = &self.runtime {
            return Ok(r.clone());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the resolver runtime: {e}"))?;
        let provider = TokioConnectionProvider::default();
        let mut builder = match &self.config.servers {
            Some(servers) => {
                let mut rc = ResolverConfig::new();
                for &s in servers {
                    rc.add_name_server(NameServerConfig::new(s, Protocol::Udp));
                    rc.add_name_server(NameServerConfig::new(s, Protocol::Tcp));
                }
                TokioResolver::builder_with_config(rc, provider)
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.cache_size = 0;
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let resolver = Arc::new((rt, builder.build()));
        self.runtime = Some(resolver.clone());
        Ok(resolver)
    }

    /// Drops the resolver (and its runtime); the next resolution builds it again.
    pub fn release(&mut self) {
        self.runtime = None;
    }

    /// Resolves every host name of `config` that has no answer yet (start-up, reload).
    /// Errors: one line per name that does not resolve.
    pub fn ensure(&mut self, config: &Config) -> Result<(), Vec<String>> {
        self.configure(&config.dns);
        let mut errors = Vec::new();
        let new: Vec<String> = config
            .host_names()
            .into_iter()
            .filter(|h| !self.answers.contains_key(h))
            .collect();
        if new.is_empty() {
            // No resolver is built for a file without new names (nor its runtime started).
            return Ok(());
        }
        let bounds = (self.config.min_ttl, self.config.max_ttl);
        let results = match self.resolver() {
            Ok(r) => lookup_all(&r, &new, bounds),
            Err(e) => new.iter().map(|_| Err(e.clone())).collect(),
        };
        // One instant for the batch: names resolved together come due together, and are
        // asked again in one round (their changes then make one rebuild, not one per name
        // whose due time the logging between them moved past the round's start).
        let now = Instant::now();
        for (host, result) in new.into_iter().zip(results) {
            count(&self.stats, &result);
            match result {
                Ok((ips, ttl)) => {
                    tracing::info!(name = %host, addresses = ?ips, ttl_ms = ttl.as_millis() as u64, "dns: resolved");
                    self.answers.insert(
                        host,
                        Answer {
                            ips,
                            due: now + ttl,
                        },
                    );
                }
                Err(e) => errors.push(format!(
                    "{}host name {host:?} does not resolve: {e}",
                    config.where_named(&host)
                )),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// `config` (the file's) is now in force: keep its names fresh, forget the others.
    pub fn track(&mut self, config: &Config) {
        self.names = config.host_names();
        let names = &self.names;
        self.answers.retain(|h, _| names.contains(h));
    }

    /// A reload was refused after [`Dns::ensure`]: `in_force` (the file's configuration in
    /// force) stays, with its `[dns]` and its names; what was resolved for the refused file
    /// is forgotten (kept, nobody would refresh it, and a later reload would take it stale).
    pub fn refused(&mut self, in_force: &Config) {
        self.configure(&in_force.dns);
        self.track(in_force);
    }

    /// `config` (the file's) with every name replaced by its last good answer.
    pub fn apply(&self, config: &Config) -> Config {
        config.with_resolved(|h| self.answers.get(h).map(|a| a.ips.clone()))
    }

    /// When the next name in force is due (`None`: no names). Only those: [`Dns::due`] takes
    /// no other, so an answer of another name that fell due would be a wait of zero forever.
    pub fn next_due(&self) -> Option<Instant> {
        self.answers
            .iter()
            .filter(|(h, _)| self.names.contains(*h))
            .map(|(_, a)| a.due)
            .min()
    }

    /// The names due now, with what resolving them takes, for [`Due::resolve`] outside the
    /// lock; `None` when none is due.
    pub fn due(&mut self) -> Option<Due> {
        let now = Instant::now();
        let names: Vec<String> = self
            .answers
            .iter()
            .filter(|(h, a)| a.due <= now && self.names.contains(*h))
            .map(|(h, _)| h.clone())
            .collect();
        if names.is_empty() {
            return None;
        }
        let resolver = self.resolver().map_err(|e| e.to_string());
        Some(Due {
            names,
            resolver,
            bounds: (self.config.min_ttl, self.config.max_ttl),
            epoch: self.epoch,
            stats: self.stats.clone(),
        })
    }

    /// Keeps what a [`Due`] resolved: a changed answer replaces the last good one, a failure
    /// keeps it and is retried after `min_ttl`. Nothing is kept when `[dns]` changed
    /// meanwhile (the new servers are asked next), nor for a name no longer in use. Returns
    /// how many answers changed. The names of one round are due again at one instant (see
    /// [`Dns::ensure`]).
    pub fn settle(&mut self, epoch: u64, resolved: Vec<(String, Resolved)>) -> usize {
        if epoch != self.epoch {
            return 0;
        }
        let min = self.config.min_ttl;
        let now = Instant::now();
        let mut changed = 0;
        for (host, result) in resolved {
            let Some(a) = self.answers.get_mut(&host) else {
                continue;
            };
            match result {
                Ok((ips, ttl)) => {
                    if ips != a.ips {
                        tracing::info!(name = %host, from = ?a.ips, to = ?ips, "dns: the answer changed");
                        a.ips = ips;
                        changed += 1;
                        self.stats.changes.fetch_add(1, Ordering::Relaxed);
                    }
                    a.due = now + ttl;
                }
                Err(e) => {
                    tracing::warn!(name = %host, error = %e, kept = ?a.ips, "dns: resolution failed, keeping the last good answer");
                    a.due = now + min;
                }
            }
        }
        changed
    }
}

/// A resolution's answer (addresses, how long they may be kept) or why there is none.
pub type Resolved = Result<(Vec<SocketAddr>, Duration), String>;

/// The names a refresh resolves, and how ([`Dns::due`]).
pub struct Due {
    names: Vec<String>,
    resolver: Result<Resolver, String>,
    bounds: (Duration, Duration),
    pub epoch: u64,
    stats: Arc<DnsStats>,
}

impl Due {
    /// Resolves the names (counted, at once: [`lookup_all`]), without any lock; nothing once
    /// `stop` is set.
    pub fn resolve(&self, stop: &AtomicBool) -> Vec<(String, Resolved)> {
        if stop.load(Ordering::Acquire) {
            return Vec::new();
        }
        let results = match &self.resolver {
            Ok(r) => lookup_all(r, &self.names, self.bounds),
            Err(e) => self.names.iter().map(|_| Err(e.clone())).collect(),
        };
        results.iter().for_each(|r| count(&self.stats, r));
        self.names.iter().cloned().zip(results).collect()
    }
}

/// Names asked at once: up to this many lookups are in flight together, as tasks on the
/// resolver's runtime driven by the one thread that asks (a reload with ten new names, or a
/// refresh of ten, waits on a silent server as long as for one, not ten times: 6 s each, an
/// 18 s reload held the admin API and a stop with it). Each used to take a thread of its own,
/// 16 at a time: 2,000 names with 1 s TTLs spawned 2,000 threads a second, two thirds of the
/// process's CPU.
const AT_ONCE: usize = 16;

/// [`lookup`] of every key, in order, [`AT_ONCE`] in flight at a time (the next starts as soon
/// as one ends), on the calling thread.
fn lookup_all(r: &Resolver, keys: &[String], bounds: (Duration, Duration)) -> Vec<Resolved> {
    let (rt, resolver) = &**r;
    rt.block_on(async {
        let mut out: Vec<Option<Resolved>> = keys.iter().map(|_| None).collect();
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = keys.iter().enumerate();
        let mut start = |tasks: &mut tokio::task::JoinSet<(usize, Resolved)>| {
            let (i, key) = next.next()?;
            let (resolver, key) = (resolver.clone(), key.clone());
            tasks.spawn(async move { (i, lookup(&resolver, &key, bounds).await) });
            Some(())
        };
        for _ in 0..AT_ONCE {
            if start(&mut tasks).is_none() {
                break;
            }
        }
        while let Some(done) = tasks.join_next().await {
            // A task that failed (it panicked) leaves its name's slot empty: counted as
            // failed below.
            if let Ok((i, result)) = done {
                out[i] = Some(result);
            }
            start(&mut tasks);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err("the resolver task failed".into())))
            .collect()
    })
}

/// One resolution of `key` (a host name, or `srv:` and an SRV name whose targets are then
/// resolved): the answer and how long it may be kept (its TTL within `bounds`).
async fn lookup(resolver: &TokioResolver, key: &str, (min, max): (Duration, Duration)) -> Resolved {
    let lookup = async {
        if let Some(name) = key.strip_prefix("srv:") {
            let srv = resolver.srv_lookup(name).await?;
            let mut until = srv.as_lookup().valid_until();
            let mut out = Vec::new();
            for r in srv.iter() {
                let ips = resolver.lookup_ip(r.target().clone()).await?;
                until = until.min(ips.valid_until());
                out.extend(ips.iter().map(|ip| SocketAddr::new(ip, r.port())));
            }
            Ok::<_, hickory_resolver::ResolveError>((out, until))
        } else {
            let l = resolver.lookup_ip(key).await?;
            let out = l.iter().map(|ip: IpAddr| SocketAddr::new(ip, 0)).collect();
            Ok((out, l.valid_until()))
        }
    };
    lookup
        .await
        .map_err(|e| e.to_string())
        .and_then(|(mut ips, until)| {
            ips.sort();
            ips.dedup();
            if ips.is_empty() {
                return Err("no A or AAAA record".into());
            }
            let ttl = until.saturating_duration_since(Instant::now());
            Ok((ips, ttl.clamp(min, max)))
        })
}

fn count(stats: &DnsStats, result: &Resolved) {
    let counter = if result.is_ok() {
        &stats.ok
    } else {
        &stats.failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The shortest wait of the DNS thread between two rounds.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// When the DNS thread puts changed answers in force: at once when it put none in force within
/// the last `interval` (`[dns] min_ttl`), else once that interval has passed, every answer
/// that changed meanwhile in one rebuild. Each rebuild switches every shard to a new snapshot
/// (their requests wait meanwhile) and costs the control plane a full build: 2,000 names with
/// 1 s TTLs made 2 to 6 of them a second. `min_ttl` is the bound the operator set on how
/// often any one name is asked, so an answer is never held back longer than it could be
/// stale anyway.
#[derive(Debug, Default)]
pub struct Coalesce {
    /// When the last rebuild was asked for.
    last: Option<Instant>,
    /// Answers changed since, not yet in force.
    pending: usize,
}

impl Coalesce {
    /// `n` answers changed.
    pub fn changed(&mut self, n: usize) {
        self.pending += n;
    }

    /// When the changed answers go in force (`now` at the earliest); `None`: none changed.
    pub fn due(&self, now: Instant, interval: Duration) -> Option<Instant> {
        (self.pending > 0).then(|| self.last.map_or(now, |l| (l + interval).max(now)))
    }

    /// The number of changed answers to put in force now, if it is time; from then on the
    /// next rebuild waits `interval`.
    pub fn take(&mut self, now: Instant, interval: Duration) -> Option<usize> {
        if self.due(now, interval)? > now {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// The DNS thread: sleeps until a name is due, resolves the names due (holding no lock while
/// it waits on a server), and puts changed answers in force through the reloader, at most
/// once per `[dns] min_ttl` ([`Coalesce`]). Stops when `stop` is set (and the thread
/// unparked), before the next name it would resolve.
pub fn spawn(
    reloader: Arc<Mutex<Reloader>>,
    dns: Arc<Mutex<Dns>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let mut changes = Coalesce::default();
            loop {
                let (next, interval) = {
                    let d = lock(&dns);
                    (d.next_due(), d.config.min_ttl)
                };
                let now = Instant::now();
                let wake = next.into_iter().chain(changes.due(now, interval)).min();
                // At least `MIN_WAIT` between rounds: should a name ever be due with nothing to
                // take, the thread waits instead of spinning on the lock.
                let wait = wake
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or(Duration::from_secs(1))
                    .clamp(MIN_WAIT, Duration::from_secs(1));
                std::thread::park_timeout(wait);
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let due = lock(&dns).due();
                if let Some(due) = due {
                    let resolved = due.resolve(&stop);
                    changes.changed(lock(&dns).settle(due.epoch, resolved));
                }
                if let Some(names) = changes.take(Instant::now(), interval) {
                    if !stop.load(Ordering::Acquire) {
                        lock(&reloader).apply_dns(names);
                    }
                }
            }
        })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(due: Instant) -> Answer {
        Answer {
            ips: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            due,
        }
    }

    /// Changed answers go in force at once after a quiet spell, then at most once per
    /// interval, everything that changed meanwhile in one update (the instants are made up:
    /// nothing waits).
    #[test]
    fn changed_answers_go_in_force_at_most_once_per_interval() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let interval = Duration::from_secs(1);
        let mut c = Coalesce::default();
        assert_eq!(c.due(t0, interval), None, "nothing changed");
        assert_eq!(c.take(t0, interval), None);
        // A first change goes in force at once.
        c.changed(3);
        assert_eq!(c.due(t0, interval), Some(t0));
        assert_eq!(c.take(t0, interval), Some(3));
        // A burst in the interval after it: held, then one update for all of it.
        for at in [10, 300, 990] {
            c.changed(1);
            assert_eq!(
                c.take(ms(at), interval),
                None,
                "{at} ms after the last update"
            );
            assert_eq!(c.due(ms(at), interval), Some(ms(1000)));
        }
        assert_eq!(c.take(ms(1000), interval), Some(3));
        // A round that changed nothing makes no update, however long after.
        c.changed(0);
        assert_eq!(c.take(ms(5000), interval), None);
        // After a quiet interval the next change goes in force at once again.
        c.changed(2);
        assert_eq!(c.due(ms(5000), interval), Some(ms(5000)));
        assert_eq!(c.take(ms(5000), interval), Some(2));
    }

    /// The names of one round are due again at one instant, so the next refresh asks them in
    /// one round and their changes make one update (each had its own instant, microseconds
    /// apart, and a refresh split into rounds, each with an update of its own).
    #[test]
    fn names_resolved_together_come_due_together() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"a.test:80\" }]\n";
        let config = Config::parse(text, std::path::Path::new("edge.toml")).unwrap();
        let mut dns = Dns::new(&config.dns, Arc::default());
        let names: Vec<String> = (0..200).map(|i| format!("n{i}.test")).collect();
        let past = Instant::now() - Duration::from_secs(1);
        for n in &names {
            dns.answers.insert(n.clone(), answer(past));
        }
        let ttl = Duration::from_secs(1);
        let resolved = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let ip = SocketAddr::from(([127, 0, 0, 1 + (i % 2) as u8], 0));
                (n.clone(), Ok((vec![ip], ttl)))
            })
            .collect();
        assert_eq!(
            dns.settle(dns.epoch, resolved),
            100,
            "the answers that changed"
        );
        let due: BTreeSet<Instant> = dns.answers.values().map(|a| a.due).collect();
        assert_eq!(due.len(), 1, "one round, one instant");
    }

    #[test]
    fn only_names_in_force_are_due_and_a_refused_reload_forgets_its_answers() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"a.test:80\" }]\n";
        let config = Config::parse(text, std::path::Path::new("edge.toml")).unwrap();
        let mut dns = Dns::new(&config.dns, Arc::default());
        dns.track(&config);
        let later = Instant::now() + Duration::from_secs(3600);
        dns.answers.insert("a.test".into(), answer(later));
        // What a refused reload's `ensure` left: a name not in force, long due.
        let past = Instant::now() - Duration::from_secs(1);
        dns.answers.insert("b.test".into(), answer(past));
        assert_eq!(dns.next_due(), Some(later), "only the name in force counts");
        assert!(dns.due().is_none());
        dns.refused(&config);
        assert_eq!(
            dns.answers.keys().collect::<Vec<_>>(),
            ["a.test"],
            "the refused file's answer is forgotten"
        );
    }
}
