//! What a shard's state carries from one snapshot to the next, worked out once per reload by
//! the control plane instead of by every shard while its requests wait. A snapshot built by
//! a reload ([`crate::snapshot::Shared::reloaded`]) holds a [`Carry`] from the snapshot it
//! replaced: for each backend, route and upstream, where it was in the old one (matched by
//! [`BackendId`], route name and upstream name), and which pooled connections may serve on.
//! A shard that switches from exactly that snapshot uses it as it is
//! ([`crate::snapshot::Shared::carry_from`]); one that skipped a snapshot (it switched late,
//! after a later reload) works its own out from the same code. Every snapshot also has a
//! [`BackendIndex`]: its backends by identity, hashed once (FxHash), which the maps look
//! names up in and which every shard's balancers share ([`crate::upstream::loads`]).
//!
//! Measured with one shard pinned to its own CPU and a sequential keep-alive client: every
//! shard used to hash the old backends with SipHash twice per reload, build its own hash index
//! of them for its balancers, and compare each upstream's retry policy by its `Debug` text;
//! 40,000 routes and 60,000 backends stalled each shard ~115 ms per reload, ~25 ms since.

use std::ops::Range;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::snapshot::{BackendId, BackendInfo, Shared};

/// A snapshot's backends by identity, built once with the snapshot and shared by every
/// shard's balancers (`Arc`).
#[derive(Debug, Default)]
pub struct BackendIndex {
    /// Per upstream: the range of its backends in the global list.
    ranges: Box<[Range<usize>]>,
    /// Per backend (global index): its upstream and position within it.
    places: Box<[(usize, usize)]>,
    ids: Box<[BackendId]>,
    by_id: FxHashMap<BackendId, usize>,
}

impl BackendIndex {
    pub fn new(backends: &[BackendInfo], ranges: &[Range<usize>]) -> BackendIndex {
        let mut by_id = FxHashMap::default();
        by_id.reserve(backends.len());
        for (i, b) in backends.iter().enumerate() {
            by_id.insert(b.id.clone(), i);
        }
        BackendIndex {
            ranges: ranges.into(),
            places: backends.iter().map(|b| (b.upstream, b.local)).collect(),
            ids: backends.iter().map(|b| b.id.clone()).collect(),
            by_id,
        }
    }

    /// The global index of the backend with identity `id`.
    #[inline]
    pub fn get(&self, id: &BackendId) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Member `local` of upstream `upstream`'s identity.
    pub fn id(&self, upstream: usize, local: usize) -> Option<&BackendId> {
        let r = self.ranges.get(upstream)?;
        let i = r.start + local;
        (i < r.end).then(|| &self.ids[i])
    }

    /// Backend `i`'s upstream and position within it.
    pub fn place(&self, i: usize) -> Option<(usize, usize)> {
        self.places.get(i).copied()
    }
}

/// Where each thing of a snapshot was in the one before it (`from`), for the shards' switch
/// ([`crate::shard::ShardCtx::successor`]) and the control plane's (drain flags, health
/// board, probe targets).
#[derive(Debug, Clone)]
pub struct Carry {
    /// The [`Shared::serial`] of the snapshot these lead from.
    pub from: u64,
    /// Per backend: its index in the old snapshot (same [`BackendId`]).
    pub backends: Box<[Option<usize>]>,
    /// Per backend of the old snapshot: its index here when its pooled connections may
    /// serve on (the same identity and transport, see `carry::pool_map`). Shared with
    /// each shard's replaced pool, which forwards later checkins by it.
    pub pool: Arc<[Option<usize>]>,
    /// Per route, and last the "no route" slot: the old route of the same name.
    pub routes: Box<[Option<usize>]>,
    /// Per upstream: the old upstream of the same name when its retry settings are the same
    /// (its retry budget is kept).
    pub budgets: Box<[Option<usize>]>,
}

impl Carry {
    /// The maps from `old` to `new`.
    pub fn between(new: &Shared, old: &Shared) -> Carry {
        let backends: Box<[Option<usize>]> =
            new.backends.iter().map(|b| old.index.get(&b.id)).collect();
        let pool = pool_map(new, old, &backends);
        let by_name: FxHashMap<&str, usize> = old
            .config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let budgets = new
            .config
            .upstreams
            .iter()
            .map(|up| {
                let o = *by_name.get(up.name.as_str())?;
                let before = &old.config.upstreams[o].resilience.retry;
                (*before == up.resilience.retry).then_some(o)
            })
            .collect();
        Carry {
            from: old.serial,
            backends,
            pool: pool.into(),
            routes: new.route_map(old).into(),
            budgets,
        }
    }
}

/// For each backend of `old`, the index of the same backend in `new` when its pooled
/// connections may serve it (`map`: new → old by identity): the same identity and the same
/// transport. A reload that turns verification on, changes the CA, the SNI name, or switches
/// the upstream to or from TLS or PROXY protocol closes the connections made under the old
/// settings (a pooled connection to a backend no longer trusted would otherwise serve on).
pub(crate) fn pool_map(new: &Shared, old: &Shared, map: &[Option<usize>]) -> Vec<Option<usize>> {
    // The CA certificates the TLS client in force was built from (a file replaced under the
    // same name is read again only by a reload, which builds a new client).
    let ca = |s: &Shared, b: &BackendInfo| s.tls.upstream(b.upstream).map(|c| c.ca_hash);
    let mut back = vec![None; old.backends.len()];
    for (j, m) in map.iter().enumerate() {
        let new_b = &new.backends[j];
        let same = |i: usize| {
            let was = &old.backends[i];
            was.transport == new_b.transport && ca(old, was) == ca(new, new_b)
        };
        if let Some(i) = m.filter(|&i| same(i)) {
            back[i] = Some(j);
        }
    }
    back
}
