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
//! **The queue** (HAProxy's `maxconn` and `timeout queue`): with `queue` set, a request over
//! `max_requests` waits, first come first served, for a request to the backend to finish,
//! up to `queue_timeout`, instead of the `503` (which it still gets when the queue is full or
//! the wait ends). A finishing request hands its unit straight to the first waiter
//! ([`Breaker::wait_request`]), so a request arriving meanwhile cannot take it first.
//!
//! Single-threaded by construction (`Rc`, `Cell`): a [`Permit`] gives its unit back when
//! dropped, so a permit can live as long as what it counts (a pooled connection, a request
//! across `.await`s).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

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

/// Limits per resource; `None` is unlimited. `queue`: requests that may wait for a
/// `max_requests` unit (`None`: none wait), each for at most `queue_timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerLimits {
    pub max_connections: Option<u32>,
    pub max_pending: Option<u32>,
    pub max_requests: Option<u32>,
    pub queue: Option<u32>,
    pub queue_timeout: Duration,
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
            queue: share(self.queue),
            queue_timeout: self.queue_timeout,
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

/// The breaker is open: `resource` is at its `limit` on this shard (and, for a request
/// that could wait, why it does not: its queue full, or its wait over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Open {
    pub resource: Resource,
    pub limit: u32,
    pub queue: Option<Queued>,
}

/// Why a request over `max_requests` that could wait got no unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// This shard's share of `queue` requests were waiting already.
    Full(u32),
    /// It waited `queue_timeout`.
    TimedOut(Duration),
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker open: {} at this shard's limit of {}",
            self.resource.as_str(),
            self.limit
        )?;
        match self.queue {
            None => Ok(()),
            Some(Queued::Full(n)) => write!(f, ", its queue of {n} full"),
            Some(Queued::TimedOut(d)) => write!(f, ", after {d:?} in its queue"),
        }
    }
}

/// The shard-local breaker of one backend.
#[derive(Debug, Default)]
pub struct Breaker {
    limits: BreakerLimits,
    in_use: [Cell<u32>; 3],
    /// Requests waiting for a `max_requests` unit, first come first.
    waiting: RefCell<VecDeque<Rc<Waiter>>>,
}

/// One request in a breaker's queue.
#[derive(Debug, Default)]
struct Waiter {
    /// A finishing request handed it its unit.
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
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
            // While a request waits for a unit, all are in use (a finishing request's unit
            // goes to the waiter: `release_request`).
            if used >= limit {
                return Err(Open {
                    resource,
                    limit,
                    queue: None,
                });
            }
        }
        self.in_use[r].set(used.saturating_add(1));
        Ok(Permit {
            breaker: self.clone(),
            resource,
        })
    }

    /// Whether requests over `max_requests` wait for a unit here (`queue` is set).
    pub fn queues(&self) -> bool {
        self.limits.queue.is_some() && self.limits.max_requests.is_some()
    }

    /// Requests waiting in the queue now.
    pub fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Whether a request would get a `max_requests` unit now, without waiting.
    pub fn has_request_room(&self) -> bool {
        self.limits
            .max_requests
            .is_none_or(|l| self.in_use[Resource::Requests as usize].get() < l)
    }

    /// A `max_requests` unit: at once when one is free, else after waiting in the queue
    /// (first come first served) for a finishing request to hand its unit over, for at most
    /// `queue_timeout`. Open when the queue is full, or the wait ends with no unit.
    /// Dropping the future leaves the queue (and passes on a unit it was handed meanwhile).
    /// `entered` runs when the request takes its place in the queue.
    pub async fn wait_request(self: &Rc<Self>, entered: impl FnOnce()) -> Result<Permit, Open> {
        let open = match self.try_acquire(Resource::Requests) {
            Ok(p) => return Ok(p),
            Err(open) => open,
        };
        let Some(cap) = self.limits.queue else {
            return Err(open);
        };
        if self.waiting.borrow().len() >= cap as usize {
            return Err(Open {
                queue: Some(Queued::Full(cap)),
                ..open
            });
        }
        let me = Rc::new(Waiter::default());
        self.waiting.borrow_mut().push_back(me.clone());
        entered();
        let place = Place {
            breaker: self,
            me: &me,
        };
        let granted = poll_fn(|cx| {
            if me.granted.get() {
                return Poll::Ready(());
            }
            *me.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        let wait = self.limits.queue_timeout;
        match monoio::time::timeout(wait, granted).await {
            Ok(()) => {
                std::mem::forget(place);
                Ok(Permit {
                    breaker: self.clone(),
                    resource: Resource::Requests,
                })
            }
            Err(_) => Err(Open {
                queue: Some(Queued::TimedOut(wait)),
                ..open
            }),
        }
    }

    /// A `max_requests` unit given back: to the first waiter, else to the pool.
    fn release_request(&self) {
        let next = self.waiting.borrow_mut().pop_front();
        match next {
            Some(w) => {
                w.granted.set(true);
                if let Some(waker) = w.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
            None => {
                let c = &self.in_use[Resource::Requests as usize];
                c.set(c.get().saturating_sub(1));
            }
        }
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
        if self.resource == Resource::Requests {
            self.breaker.release_request();
            return;
        }
        let c = &self.breaker.in_use[self.resource as usize];
        c.set(c.get().saturating_sub(1));
    }
}

/// A waiter's place in the queue while [`Breaker::wait_request`] waits; dropped (the wait
/// ended or was dropped) without the unit being taken, it leaves the queue, and passes on a
/// unit it was handed.
struct Place<'a> {
    breaker: &'a Breaker,
    me: &'a Rc<Waiter>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.me.granted.get() {
            self.breaker.release_request();
        } else {
            self.breaker
                .waiting
                .borrow_mut()
                .retain(|w| !Rc::ptr_eq(w, self.me));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Breaker {
        /// Whether `try_acquire(resource)` fails now (the unit it takes, if any, given back).
        fn is_open(self: &Rc<Self>, resource: Resource) -> bool {
            self.try_acquire(resource).is_err()
        }
    }

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
        let wait = Duration::from_secs(3);
        let l = BreakerLimits {
            max_connections: Some(10),
            max_pending: None,
            max_requests: Some(4),
            queue: Some(9),
            queue_timeout: wait,
        };
        assert_eq!(
            l.shard_share(4, 1),
            BreakerLimits {
                max_connections: Some(3),
                max_pending: None,
                max_requests: Some(1),
                queue: Some(2),
                queue_timeout: wait,
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
                limit: 2,
                queue: None
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
            limit: 3,
            queue: None
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

    fn queued(max_requests: u32, queue: u32, wait_ms: u64) -> Rc<Breaker> {
        Breaker::new(BreakerLimits {
            max_requests: Some(max_requests),
            queue: Some(queue),
            queue_timeout: Duration::from_millis(wait_ms),
            ..BreakerLimits::default()
        })
    }

    use crate::test_engines::on_both_drivers;

    #[test]
    fn a_finishing_request_hands_its_unit_to_the_first_waiter() {
        on_both_drivers(|| {
            Box::pin(async {
                let b = queued(1, 2, 60_000);
                let first = b.try_acquire(Resource::Requests).unwrap();
                assert!(!b.has_request_room() && b.queues());
                let order = Rc::new(RefCell::new(Vec::new()));
                let waiter = |n: u32| {
                    let (b, order) = (b.clone(), order.clone());
                    monoio::spawn(async move {
                        let p = b.wait_request(|| {}).await.unwrap();
                        order.borrow_mut().push(n);
                        p
                    })
                };
                let (w1, w2) = (waiter(1), waiter(2));
                // Both are queued before anything is released.
                monoio::task::yield_to_others().await;
                assert_eq!(b.waiting.borrow().len(), 2);
                // The queue is full: a third is refused at once.
                let full = b.wait_request(|| {}).await.unwrap_err();
                assert_eq!(full.queue, Some(Queued::Full(2)));
                assert!(full.to_string().contains("its queue of 2 full"), "{full}");
                drop(first);
                // The unit went to the first waiter, not back to the pool.
                assert!(b.try_acquire(Resource::Requests).is_err());
                let p1 = w1.await;
                drop(p1);
                let p2 = w2.await;
                assert_eq!(*order.borrow(), vec![1, 2]);
                assert_eq!(b.in_use(Resource::Requests), 1);
                drop(p2);
                assert_eq!(b.in_use(Resource::Requests), 0);
                assert!(b.has_request_room());
            })
        });
    }

    #[test]
    fn a_wait_ends_at_the_queue_timeout_and_leaves_the_queue() {
        on_both_drivers(|| {
            Box::pin(async {
                let b = queued(1, 4, 50);
                let held = b.try_acquire(Resource::Requests).unwrap();
                let open = b.wait_request(|| {}).await.unwrap_err();
                assert_eq!(
                    open.queue,
                    Some(Queued::TimedOut(Duration::from_millis(50)))
                );
                assert!(b.waiting.borrow().is_empty());
                // A waiter dropped while it waits leaves the queue too; the unit released
                // after it goes back to the pool.
                let b2 = b.clone();
                let gone = monoio::spawn(async move {
                    let wait = b2.wait_request(|| {});
                    monoio::select! {
                        _ = wait => false,
                        _ = monoio::task::yield_to_others() => true,
                    }
                });
                assert!(gone.await);
                assert!(b.waiting.borrow().is_empty());
                drop(held);
                assert_eq!(b.in_use(Resource::Requests), 0);
            })
        });
    }

    #[test]
    fn a_unit_handed_to_a_waiter_that_is_gone_passes_on() {
        on_both_drivers(|| {
            Box::pin(async {
                let b = queued(1, 4, 60_000);
                let held = b.try_acquire(Resource::Requests).unwrap();
                // Queued (polled once), then handed the unit, then dropped before it takes
                // it (its client went away): the unit goes to the next waiter.
                let mut gone = Box::pin(b.wait_request(|| {}));
                poll_fn(|cx| {
                    assert!(std::future::Future::poll(gone.as_mut(), cx).is_pending());
                    Poll::Ready(())
                })
                .await;
                let b2 = b.clone();
                let next = monoio::spawn(async move { b2.wait_request(|| {}).await });
                monoio::task::yield_to_others().await;
                assert_eq!(b.waiting.borrow().len(), 2);
                drop(held);
                assert_eq!(b.waiting.borrow().len(), 1, "handed to the first");
                drop(gone);
                let p = next.await.unwrap();
                assert_eq!(b.in_use(Resource::Requests), 1);
                drop(p);
                assert_eq!(b.in_use(Resource::Requests), 0);
            })
        });
    }
}
