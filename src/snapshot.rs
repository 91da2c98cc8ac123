//! The shared, read-only half of the pipeline's state: the validated configuration, the route
//! table, the flat backend list and the balancing tables, built once from a [`Config`] and
//! read by every shard without locks ([`Shared`]). The control plane publishes it through a
//! [`Published`] handle, the seam that hot reload replaces it through: shards and the admin
//! thread load the current snapshot from there, and every backend carries a stable identity
//! ([`BackendId`]: upstream name and address) by which per-shard state can be carried over to
//! a replacement for the backends that remain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::balance::{Member, Table};
use crate::config::Config;
use crate::health::{Health, HealthBoard};
use crate::route::RouteTable;

/// A backend's identity across snapshots: the upstream it belongs to and its address. Two
/// snapshots that both list the same identity mean the same backend, whatever its position.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendId {
    pub upstream: Box<str>,
    pub address: SocketAddr,
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
                    id: BackendId {
                        upstream: up.name.as_str().into(),
                        address: b.address,
                    },
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
            tls: Arc::default(),
        }
    }

    /// This snapshot with its listeners' TLS (built by [`crate::tls::TlsListeners::build`]).
    pub fn with_tls(mut self, tls: Arc<crate::tls::TlsListeners>) -> Shared {
        self.tls = tls;
        self
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

/// The current snapshot, replaceable while shards run. Readers take an `Arc` of it when they
/// start (a shard, the admin thread) and keep it; a request runs to its end on the snapshot
/// it started with. `generation` lets a reader notice a replacement with one relaxed load of
/// a read-mostly word, without touching the lock.
#[derive(Debug)]
pub struct Published {
    current: Mutex<Arc<Shared>>,
    generation: AtomicU64,
}

impl Published {
    pub fn new(first: Arc<Shared>) -> Published {
        Published {
            current: Mutex::new(first),
            generation: AtomicU64::new(0),
        }
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Shared> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How many times the snapshot was replaced since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `next` in force; readers that loaded the old one keep it until they load again.
    pub fn publish(&self, next: Arc<Shared>) {
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        self.generation.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shared(addresses: &[&str]) -> Arc<Shared> {
        let backends: Vec<String> = addresses
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect();
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{}]\n",
            backends.join(", ")
        );
        Arc::new(Shared::new(
            Config::parse(&text, Path::new("t.toml")).unwrap(),
        ))
    }

    #[test]
    fn a_replacement_is_seen_by_new_loads_and_not_by_held_ones() {
        let first = shared(&["127.0.0.1:1"]);
        let published = Published::new(first.clone());
        let held = published.load();
        assert!(Arc::ptr_eq(&held, &first));
        assert_eq!(published.generation(), 0);
        let second = shared(&["127.0.0.1:2", "127.0.0.1:1"]);
        published.publish(second.clone());
        assert_eq!(published.generation(), 1);
        assert!(Arc::ptr_eq(&published.load(), &second));
        // A request that started on the first snapshot finishes on it.
        assert_eq!(held.backends.len(), 1);
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
