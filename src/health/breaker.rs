//! Feeds stages 4-6 (*balance*, *pool*, *forward*): the circuit breaker of one backend on one
//! shard. Its permits bound pending requests (waiting for an upstream connection to be
//! established) and in-flight requests (sent, response not finished); its open-connections
//! limit is checked by the forwarder against what it already counts (requests in flight and
//! idle pooled connections, `forward::Forward::connect`), so no permit rides on a pooled
//! connection. When a limit is reached the breaker is *open* for that resource: the caller
//! fails fast with `503` and counts the rejection (`edgeshard_breaker_rejected_total`).
//!
//! **Shard shares.** The configured limits are per backend for the whole process. Each
//! shard enforces its share, so no counter is shared between cores: shard `k` of `N` gets
//! `limit / N`, plus one for the first `limit % N` shards ([`shard_share`]). The shares add
//! up to the limit exactly; `SO_REUSEPORT` spreads clients evenly, so shards fill their
//! shares at about the same rate. A limit below `N` cannot be divided that way without
//! giving some shards 0 (always open), so then every shard gets 1 and the process may use up
//! to `N` (documented in `docs/HEALTH.md`; configure limits ≥ the shard count).
//!
//! Single-threaded by construction (`Rc`, `Cell`): a [`Permit`] gives its unit back when
//! dropped, so a permit can live as long as what it counts (a pooled connection, a request
//! across `.await`s).

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

/// What a breaker limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Open upstream connections, idle pooled ones included.
    Connections = 0,
    /// Requests waiting for an upstream connection to be established.
    Pending = 1,
    /// Requests sent to the backend whose response has not finished.
    Requests = 2,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Pending => "pending requests",
            Resource::Requests => "requests",
        }
    }
}

/// Limits per resource; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerLimits {
    pub max_connections: Option<u32>,
    pub max_pending: Option<u32>,
    pub max_requests: Option<u32>,
}

impl BreakerLimits {
    pub fn get(&self, r: Resource) -> Option<u32> {
        match r {
            Resource::Connections => self.max_connections,
            Resource::Pending => self.max_pending,
            Resource::Requests => self.max_requests,
        }
    }

    /// Shard `shard`'s share (of `shards`) of these process-wide limits.
    pub fn shard_share(&self, shards: usize, shard: usize) -> BreakerLimits {
        let share = |l: Option<u32>| l.map(|l| shard_share(l, shards, shard));
        BreakerLimits {
            max_connections: share(self.max_connections),
            max_pending: share(self.max_pending),
            max_requests: share(self.max_requests),
        }
    }
}

/// Shard `shard`'s share of a process-wide `limit` across `shards` shards: `limit / shards`,
/// one more for the first `limit % shards` shards, and at least 1.
pub fn shard_share(limit: u32, shards: usize, shard: usize) -> u32 {
    let shards = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
    let shard = u32::try_from(shard).unwrap_or(u32::MAX);
    let extra = u32::from(shard % shards < limit % shards);
    (limit / shards + extra).max(1)
}

/// The breaker is open: `resource` is at its `limit` on this shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Open {
    pub resource: Resource,
    pub limit: u32,
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker open: {} at this shard's limit of {}",
            self.resource.as_str(),
            self.limit
        )
    }
}

/// The shard-local breaker of one backend.
#[derive(Debug, Default)]
pub struct Breaker {
    limits: BreakerLimits,
    in_use: [Cell<u32>; 3],
}

impl Breaker {
    /// `limits` are this shard's share (see [`BreakerLimits::shard_share`]).
    pub fn new(limits: BreakerLimits) -> Rc<Breaker> {
        Rc::new(Breaker {
            limits,
            ..Breaker::default()
        })
    }

    pub fn limits(&self) -> BreakerLimits {
        self.limits
    }

    /// Takes one unit of `resource`, or reports the breaker open.
    pub fn try_acquire(self: &Rc<Self>, resource: Resource) -> Result<Permit, Open> {
        let r = resource as usize;
        let used = self.in_use[r].get();
        if let Some(limit) = self.limits.get(resource) {
            if used >= limit {
                return Err(Open { resource, limit });
            }
        }
        self.in_use[r].set(used.saturating_add(1));
        Ok(Permit {
            breaker: self.clone(),
            resource,
        })
    }

    /// Whether the next `try_acquire(resource)` would fail.
    #[cfg(test)]
    fn is_open(&self, resource: Resource) -> bool {
        self.limits
            .get(resource)
            .is_some_and(|l| self.in_use[resource as usize].get() >= l)
    }

    #[cfg(test)]
    fn in_use(&self, resource: Resource) -> u32 {
        self.in_use[resource as usize].get()
    }
}

/// One unit of a resource; given back on drop.
#[derive(Debug)]
pub struct Permit {
    breaker: Rc<Breaker>,
    resource: Resource,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let c = &self.breaker.in_use[self.resource as usize];
        c.set(c.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_limit() {
        for limit in [1u32, 3, 7, 8, 100, 1024, 1025] {
            for shards in 1..=16usize {
                let shares: Vec<u32> = (0..shards).map(|k| shard_share(limit, shards, k)).collect();
                assert!(shares.iter().all(|&s| s >= 1));
                let total: u32 = shares.iter().sum();
                if limit as usize >= shards {
                    assert_eq!(total, limit, "limit {limit} shards {shards}");
                    let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                    assert!(hi - lo <= 1);
                } else {
                    assert_eq!(total as usize, shards);
                }
            }
        }
        assert_eq!(shard_share(10, 0, 0), 10);
        assert_eq!(shard_share(0, 4, 0), 1);
        let l = BreakerLimits {
            max_connections: Some(10),
            max_pending: None,
            max_requests: Some(4),
        };
        assert_eq!(
            l.shard_share(4, 1),
            BreakerLimits {
                max_connections: Some(3),
                max_pending: None,
                max_requests: Some(1)
            }
        );
    }

    #[test]
    fn opens_at_limit_and_closes_on_release() {
        let b = Breaker::new(BreakerLimits {
            max_requests: Some(2),
            ..BreakerLimits::default()
        });
        let p1 = b.try_acquire(Resource::Requests).unwrap();
        let p2 = b.try_acquire(Resource::Requests).unwrap();
        assert!(b.is_open(Resource::Requests));
        assert_eq!(
            b.try_acquire(Resource::Requests).unwrap_err(),
            Open {
                resource: Resource::Requests,
                limit: 2
            }
        );
        drop(p1);
        assert!(!b.is_open(Resource::Requests));
        assert_eq!(b.in_use(Resource::Requests), 1);
        let _p3 = b.try_acquire(Resource::Requests).unwrap();
        drop(p2);
        assert_eq!(b.in_use(Resource::Requests), 1);
        // Unlimited resources never open; resources are independent.
        let many: Vec<_> = (0..1000)
            .map(|_| b.try_acquire(Resource::Pending).unwrap())
            .collect();
        assert_eq!(b.in_use(Resource::Pending), 1000);
        assert!(!b.is_open(Resource::Pending));
        drop(many);
        assert_eq!(b.in_use(Resource::Pending), 0);
        assert!(b.limits().max_pending.is_none());
        assert!(Open {
            resource: Resource::Pending,
            limit: 3
        }
        .to_string()
        .contains("pending requests"));
    }

    #[test]
    fn permits_outlive_borrows() {
        let b = Breaker::new(BreakerLimits {
            max_requests: Some(1),
            ..BreakerLimits::default()
        });
        // A permit is held by the request across its awaits, away from the breaker's owner.
        let held: Vec<Permit> = vec![b.try_acquire(Resource::Requests).unwrap()];
        drop(b.clone());
        assert!(b.is_open(Resource::Requests));
        drop(held);
        assert!(!b.is_open(Resource::Requests));
    }
}
