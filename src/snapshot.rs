//! The shared, read-only half of the pipeline's state: the validated configuration, the route
//! table, the flat backend list and the balancing tables, built once from a [`Config`] and
//! read by every shard without locks ([`Shared`]). The control plane publishes it through a
//! [`Published`] handle, the seam that hot reload replaces it through: shards and the admin
//! thread load the current snapshot from there, and every backend carries a stable identity
//! ([`BackendId`]: upstream name and address) by which per-shard state can be carried over to
//! a replacement for the backends that remain. Listeners have one too ([`ListenerId`]: the
//! configured address), by which an accept loop finds its listener's settings in whichever
//! snapshot is in force, wherever a reload moved it in the file.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use crate::admission::ConnTable;
use crate::balance::{Member, Table};
use crate::carry::{BackendIndex, Carry};
use crate::config::Config;
use crate::health::{Health, HealthBoard};
use crate::ratelimit::RateTable;
use crate::route::RouteTable;

/// A backend's identity across snapshots: the upstream it belongs to and its address. Two
/// snapshots that both list the same identity mean the same backend, whatever its position.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendId {
    pub upstream: Box<str>,
    pub address: SocketAddr,
}

/// [`BackendInfo::transport`] of `up`'s backends.
fn transport_of(up: &crate::config::UpstreamConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(t) = &up.tls {
        (&t.sni, &t.ca, t.verify).hash(&mut h);
    }
    up.tls.is_some().hash(&mut h);
    up.proxy_protocol.map(|v| v as u8).hash(&mut h);
    h.finish()
}

/// A listener's identity across snapshots: its configured address and, for an address the
/// file gives more than once (only `:0` ones may repeat), which of those it is, in file
/// order. A reload keeps the sockets of every identity that remains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId {
    pub address: SocketAddr,
    pub nth: usize,
}

impl ListenerId {
    /// The identities of `listeners`, in their order.
    pub fn all(listeners: &[crate::config::ListenerConfig]) -> Vec<ListenerId> {
        let mut ids: Vec<ListenerId> = Vec::with_capacity(listeners.len());
        for l in listeners {
            let nth = ids.iter().filter(|i| i.address == l.address).count();
            ids.push(ListenerId {
                address: l.address,
                nth,
            });
        }
        ids
    }
}

impl std::fmt::Display for ListenerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.nth {
            0 => write!(f, "{}", self.address),
            n => write!(f, "{} (#{})", self.address, n + 1),
        }
    }
}

/// One backend as the shards see it.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    pub address: SocketAddr,
    pub upstream: usize,
    /// Position within its upstream.
    pub local: usize,
    /// Stable across snapshots (see [`BackendId`]).
    pub id: BackendId,
    /// How connections to it are made: its upstream's `tls` settings and `proxy_protocol`,
    /// hashed. A pooled connection is carried across a reload only to a backend whose
    /// transport is the same, and whose TLS client trusts the same CA certificates
    /// ([`Carry::pool`]).
    pub transport: u64,
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
    /// Per listener: its TLS configuration and certificates (empty until
    /// [`Shared::with_tls`]).
    pub tls: Arc<crate::tls::TlsListeners>,
    /// Per listener: its identity (indexed like `config.listeners`).
    pub listener_ids: Vec<ListenerId>,
    /// Fields the proxy writes under names the configuration chose, beyond those it always
    /// writes ([`crate::http::fields::written_by_proxy`]): the request id's header when it is
    /// not `X-Request-Id`, and the listeners' mTLS subject headers (set by
    /// [`Shared::with_tls`]). A client's copy never reaches a backend, so the cache stores no
    /// response that varies on one. Empty with the defaults.
    pub own_fields: Box<[Box<[u8]>]>,
    /// Unique to this snapshot in the process (a [`Carry`] names the one it leads from).
    pub serial: u64,
    /// The backends by identity, hashed once and shared by every shard's balancers.
    pub index: Arc<BackendIndex>,
    /// Built by a reload: where each backend, route and upstream was in the snapshot this one
    /// replaced, worked out once here rather than by every shard while it switches.
    pub carry: Option<Carry>,
}

/// The next [`Shared::serial`].
static SERIAL: AtomicU64 = AtomicU64::new(1);

impl Shared {
    /// A snapshot for one shard (unit tests).
    #[cfg(test)]
    pub fn new(config: Config) -> Shared {
        Shared::with_shards(config, 1)
    }

    pub fn with_shards(config: Config, shards: usize) -> Shared {
        Shared::build(config, shards, None)
    }

    /// The snapshot a reload puts in force after `old`: built from `config` like the first,
    /// with what the control plane knows of the backends that remain (matched by
    /// [`BackendId`]) carried over: the admin API's drain flag and the active health state
    /// (state and timestamps while the upstream still has a check, probe counters always).
    /// The shards' accepting flags are copied as they are.
    pub fn reloaded(config: Config, old: &Shared, tls: Arc<crate::tls::TlsListeners>) -> Shared {
        let mut next =
            Shared::build(config, old.accepting.len(), Some(old.board.epoch())).with_tls(tls);
        let carry = Carry::between(&next, old);
        for (i, m) in carry.backends.iter().enumerate() {
            if let Some(j) = *m {
                let checked = next.checked(i) && old.checked(j);
                next.board.adopt(i, &old.board, j, checked);
                next.drained[i].store(old.is_drained(j), Ordering::Relaxed);
            }
        }
        for (flag, was) in next.accepting.iter().zip(old.accepting.iter()) {
            flag.store(was.load(Ordering::Acquire), Ordering::Release);
        }
        next.carry = Some(carry);
        next
    }

    /// What a shard on `old` carries over to this snapshot: the maps this snapshot's reload
    /// worked out when `old` is the snapshot it replaced, else (a shard that switches late,
    /// past a snapshot) worked out now.
    pub fn carry_from(&self, old: &Shared) -> std::borrow::Cow<'_, Carry> {
        match &self.carry {
            Some(c) if c.from == old.serial => std::borrow::Cow::Borrowed(c),
            _ => std::borrow::Cow::Owned(Carry::between(self, old)),
        }
    }

    /// Whether backend `i`'s upstream has an active health check: its board state is the
    /// prober's. A reload carries that state only from a checked backend to a checked one
    /// (without a check before, it is Unknown from the start, not what the new check's
    /// `initial` says; without one after, no prober would ever change it).
    pub fn checked(&self, i: usize) -> bool {
        let upstream = self.backends[i].upstream;
        self.config.upstreams[upstream]
            .resilience
            .health_check
            .is_some()
    }

    /// For each route of this snapshot, and last the "no route" slot, the index of the
    /// route of the same name in `old` (the per-route counters are kept by name).
    /// The reload runs it once ([`Carry`]), and a shard that skipped a snapshot while it
    /// switches (its requests wait), so the old names are hashed: a search of the old list
    /// for each route was quadratic, 10,000 routes held each shard ~140 ms on every reload.
    pub fn route_map(&self, old: &Shared) -> Vec<Option<usize>> {
        let by_name: FxHashMap<&str, usize> = old
            .config
            .routes
            .iter()
            .enumerate()
            .map(|(i, o)| (o.name.as_str(), i))
            .collect();
        let mut map: Vec<Option<usize>> = self
            .config
            .routes
            .iter()
            .map(|r| by_name.get(r.name.as_str()).copied())
            .collect();
        map.push(Some(old.config.routes.len()));
        map
    }

    fn build(mut config: Config, shards: usize, epoch: Option<std::time::Instant>) -> Shared {
        let limits = &mut config.limits;
        if limits.max_connections_per_shard == 0 || limits.max_idle_upstream_per_shard == 0 {
            let nofile = crate::admission::descriptor_limit();
            let per_shard = crate::admission::connections_per_shard(nofile, shards);
            if limits.max_connections_per_shard == 0 {
                limits.max_connections_per_shard = per_shard;
            }
            if limits.max_idle_upstream_per_shard == 0 {
                limits.max_idle_upstream_per_shard = per_shard;
            }
        }
        let routes = RouteTable::new(&config);
        let listener_ids = ListenerId::all(&config.listeners);
        let mut backends = Vec::new();
        let mut upstream_backends = Vec::new();
        for (u, up) in config.upstreams.iter().enumerate() {
            let start = backends.len();
            let transport = transport_of(up);
            for (local, b) in up.backends.iter().enumerate() {
                backends.push(BackendInfo {
                    address: b.address,
                    upstream: u,
                    local,
                    id: BackendId {
                        upstream: up.name.as_str().into(),
                        address: b.address,
                    },
                    transport,
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
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            index: Arc::new(BackendIndex::new(&backends, &upstream_backends)),
            carry: None,
            board: Arc::new(match epoch {
                Some(e) => HealthBoard::with_epoch(&initial, e),
                None => HealthBoard::new(&initial),
            }),
            drained: backends.iter().map(|_| AtomicBool::new(false)).collect(),
            accepting: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            config,
            routes,
            backends,
            upstream_backends,
            tls: Arc::default(),
            listener_ids,
            own_fields: Box::default(),
        }
        .with_own_fields()
    }

    /// This snapshot with its listeners' TLS (built by [`crate::tls::TlsListeners::build`]).
    pub fn with_tls(mut self, tls: Arc<crate::tls::TlsListeners>) -> Shared {
        self.tls = tls;
        self.with_own_fields()
    }

    /// [`Shared::own_fields`] from the configuration and the listeners' TLS.
    fn with_own_fields(mut self) -> Shared {
        let rid = self.config.request_id.header_lower.as_bytes();
        self.own_fields = std::iter::once(rid)
            .chain(self.tls.subject_headers.iter().map(|h| h.as_bytes()))
            .filter(|n| !crate::http::fields::written_by_proxy(n))
            .map(Box::from)
            .collect();
        self
    }

    /// The position of listener `id` in this snapshot, if it has it.
    pub fn listener(&self, id: ListenerId) -> Option<usize> {
        self.listener_ids.iter().position(|l| *l == id)
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

/// The balancing members of an upstream, in configuration order.
pub(crate) fn members_of(u: &crate::config::UpstreamConfig) -> Vec<Member> {
    u.backends
        .iter()
        .map(|b| Member {
            name: b.address.to_string(),
            weight: b.weight,
            backup: b.backup,
        })
        .collect()
}

/// The current snapshot, replaceable while shards run. Readers load it without a lock (an
/// `ArcSwap`) and keep the `Arc` they loaded: a shard builds its per-shard state for it when
/// told of a reload, the admin thread loads it per request, and a request runs to its end on
/// the snapshot it started with. `generation` counts replacements (one relaxed-or-acquire
/// load of a word written only by a reload).
/// It also holds what outlives every snapshot and is shared by all shards: the open-connection
/// counts the connection limits are checked against.
pub struct Published {
    current: ArcSwap<Shared>,
    generation: AtomicU64,
    /// Held by the admin API while it sets a drain flag and by the control plane while it
    /// builds the next snapshot (which copies those flags) and publishes it: a drain lands
    /// before the copy or on the snapshot just published, never on one being replaced.
    control: Mutex<()>,
    pub conns: Arc<ConnTable>,
    /// The rate limits' buckets (`rate_limits.max_keys` of the first configuration sets
    /// their number).
    pub rates: Arc<RateTable>,
    /// The shards' cache invalidation table ([`crate::cache::invalidate`]).
    pub invalidations: Arc<crate::cache::invalidate::Invalidations>,
}

impl Published {
    pub fn new(first: Arc<Shared>) -> Published {
        let rates = Arc::new(RateTable::for_config(&first.config.rate_limits));
        let invalidations = Arc::default();
        Published {
            current: ArcSwap::new(first),
            generation: AtomicU64::new(0),
            control: Mutex::new(()),
            conns: Arc::default(),
            rates,
            invalidations,
        }
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Shared> {
        self.current.load_full()
    }

    /// How many times the snapshot was replaced since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Builds the next snapshot from the one in force (`build` gets it) and puts it in force;
    /// readers that loaded the old one keep it until they load again. Only the control plane
    /// publishes (one reload at a time).
    pub fn publish_with(&self, build: impl FnOnce(&Arc<Shared>) -> Shared) -> Arc<Shared> {
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let next = Arc::new(build(&self.current.load_full()));
        self.current.store(next.clone());
        self.generation.fetch_add(1, Ordering::Release);
        next
    }

    /// Takes backend `addr` of `upstream` out of rotation (`drain`) or puts it back, on the
    /// snapshot in force. Returns that snapshot, the backend's index in it and whether it was
    /// drained before; `None` when there is no such backend.
    pub fn set_drained(
        &self,
        upstream: &str,
        addr: &str,
        drain: bool,
    ) -> Option<(Arc<Shared>, usize, bool)> {
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let shared = self.current.load_full();
        let b = shared.find_backend(upstream, addr)?;
        let was = shared.drained[b].swap(drain, Ordering::Relaxed);
        Some((shared, b, was))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shared(addresses: &[&str]) -> Arc<Shared> {
        Arc::new(unshared(addresses))
    }

    fn unshared(addresses: &[&str]) -> Shared {
        let backends: Vec<String> = addresses
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect();
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{}]\n",
            backends.join(", ")
        );
        Shared::new(Config::parse(&text, Path::new("t.toml")).unwrap())
    }

    /// Every shard maps the routes of the old snapshot to the new one's by name while it
    /// switches (its requests wait). Searched, 10,000 routes held each shard ~140 ms on every
    /// reload and 20,000 ~430 ms (quadratic; found by the session 13 scale review).
    #[test]
    fn route_map_matches_by_name_reordered_added_and_removed() {
        let routes = |names: &mut dyn Iterator<Item = String>| {
            let mut text = String::from(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n",
            );
            for n in names {
                text.push_str(&format!("[[route]]\nname = \"{n}\"\nupstream = \"u\"\n"));
            }
            Shared::new(Config::parse(&text, Path::new("t.toml")).unwrap())
        };
        let old = routes(&mut ["a", "b", "c"].iter().map(|s| s.to_string()));
        let new = routes(&mut ["c", "x", "a"].iter().map(|s| s.to_string()));
        // By name, whatever the order; a new name gets fresh counters; last, the no-route slot.
        assert_eq!(new.route_map(&old), vec![Some(2), None, Some(0), Some(3)]);

        const N: usize = 40_000;
        let old = routes(&mut (0..N).map(|i| format!("r{i}")));
        let new = routes(&mut (0..N).rev().map(|i| format!("r{i}")));
        let map = new.route_map(&old);
        assert_eq!(map.len(), N + 1);
        assert!(map[..N]
            .iter()
            .enumerate()
            .all(|(i, m)| *m == Some(N - 1 - i)));
        // Its cost at this size is `bench/engine.rs`'s `reload/route_map/40000` (hashed: a few
        // ms; searched, 8 × 10^8 comparisons: seconds), not a timed assertion here.
    }

    #[test]
    fn a_replacement_is_seen_by_new_loads_and_not_by_held_ones() {
        let first = shared(&["127.0.0.1:1"]);
        let published = Published::new(first.clone());
        let held = published.load();
        assert!(Arc::ptr_eq(&held, &first));
        assert_eq!(published.generation(), 0);
        let second = published.publish_with(|_| unshared(&["127.0.0.1:2", "127.0.0.1:1"]));
        assert_eq!(published.generation(), 1);
        assert!(Arc::ptr_eq(&published.load(), &second));
        // A request that started on the first snapshot finishes on it.
        assert_eq!(held.backends.len(), 1);
    }

    /// The admin API's drain and a reload (SIGHUP, or the DNS thread) run on different
    /// threads. A drain set on the snapshot a reload is replacing, after the reload copied
    /// its flags, would be lost: the backend would go back into rotation by itself.
    #[test]
    fn a_drain_set_while_a_reload_publishes_is_kept() {
        let published = Arc::new(Published::new(shared(&["127.0.0.1:1", "127.0.0.1:2"])));
        let until = |what: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !what() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the other thread stalled"
                );
                std::hint::spin_loop();
            }
        };
        for drain in [true, false, true] {
            // Set by the reload once it copied the flags; by the test when it asks the drain.
            let (copied, asked) = (AtomicBool::new(false), AtomicBool::new(false));
            std::thread::scope(|s| {
                let reload = s.spawn(|| {
                    published.publish_with(|now| {
                        let next = Shared::reloaded(now.config.clone(), now, now.tls.clone());
                        copied.store(true, Ordering::Release);
                        // The drain's turn: a millisecond before `next` is in force (it
                        // waits for the reload instead, or lands on `now` and is lost).
                        until(&|| asked.load(Ordering::Acquire));
                        let asked = std::time::Instant::now();
                        until(&|| asked.elapsed() > std::time::Duration::from_millis(1));
                        next
                    })
                });
                until(&|| copied.load(Ordering::Acquire));
                asked.store(true, Ordering::Release);
                published.set_drained("u", "127.0.0.1:1", drain).unwrap();
                reload.join().unwrap();
            });
            assert_eq!(published.load().is_drained(0), drain);
        }
    }

    #[test]
    fn a_listener_is_known_by_its_address_wherever_it_is_in_the_file() {
        let parse = |listeners: &[&str]| Shared::new(crate::config::with_listeners(listeners));
        let a = parse(&[
            "127.0.0.1:8080",
            "127.0.0.1:0",
            "127.0.0.1:8081",
            "127.0.0.1:0",
        ]);
        let b = parse(&[
            "127.0.0.1:0",
            "127.0.0.1:8081",
            "127.0.0.1:0",
            "127.0.0.1:8082",
        ]);
        let moved = |i: usize| b.listener(a.listener_ids[i]);
        assert_eq!(moved(0), None, "8080 was removed");
        assert_eq!(moved(1), Some(0), "the first :0 stays the first :0");
        assert_eq!(moved(2), Some(1));
        assert_eq!(moved(3), Some(2), "the second :0 stays the second :0");
        assert_eq!(a.listener(b.listener_ids[3]), None, "8082 is new");
        assert_eq!(a.listener_ids[3].to_string(), "127.0.0.1:0 (#2)");
    }

    #[test]
    fn a_reload_that_removes_the_check_does_not_keep_a_backend_unhealthy() {
        use crate::health::Health;
        let text = |check: &str| {
            format!("[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}, {{ address = \"127.0.0.1:2\" }}]\n{check}")
        };
        let config = |t: String| Config::parse(&t, Path::new("t.toml")).unwrap();
        let checked = text("[upstream.health_check]\ninterval = \"1s\"\n");
        let old = Shared::new(config(checked.clone()));
        old.board
            .publish(1, Health::Unhealthy, std::time::Instant::now());
        old.board.count_check(1, false);
        // Still checked: the state stays, for its prober to change.
        let kept = Shared::reloaded(config(checked), &old, Arc::default());
        assert!(!kept.board.is_usable(1));
        // No check any more: no prober would ever bring it back. Usable, counters kept.
        let next = Shared::reloaded(config(text("")), &old, Arc::default());
        assert!(
            next.board.is_usable(1),
            "an Unhealthy state outlived its check"
        );
        assert!(next.board.is_usable(0));
        assert_eq!(next.board.slot(1).unwrap().checks_failed, 1);
        // A check added by a reload starts from its own `initial`, not the Unknown of the
        // backends it found unchecked.
        let strict = text("[upstream.health_check]\ninterval = \"1s\"\ninitial = \"unhealthy\"\n");
        let added = Shared::reloaded(config(strict), &next, Arc::default());
        assert!(!added.board.is_usable(0), "initial = unhealthy ignored");
        let targets = crate::reload::probe_targets(&added, Some(&next));
        assert_eq!(targets.len(), 2);
        assert!(
            targets.iter().all(|t| t.resume.is_none()),
            "resumed from Unknown"
        );
    }

    #[test]
    fn a_backend_keeps_its_identity_whatever_its_position() {
        let a = shared(&["127.0.0.1:1", "127.0.0.1:2"]);
        let b = shared(&["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]);
        let same = |i: usize| b.backends.iter().position(|x| x.id == a.backends[i].id);
        assert_eq!(same(0), Some(2));
        assert_eq!(same(1), Some(0));
        assert_ne!(a.backends[0].id, b.backends[1].id);
    }
}
