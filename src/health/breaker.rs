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
//! the wait ends). A finishing request hands its unit straight to the oldest waiter that takes
//! it ([`Breaker::wait_request`]), so a request arriving meanwhile cannot take it first. The
//! backends of one tier of an upstream that is not pinned (no hash, no sticky cookie) serve
//! each other's queues ([`Breaker::link`]): as HAProxy's backend queue, a place freed at any
//! of them goes to the oldest request waiting at any of them. Each backend's queue still holds
//! its own share of `queue` (the backend the request was picked for).
//!
//! Single-threaded by construction (`Rc`, `Cell`): a [`Permit`] gives its unit back when
//! dropped, so a permit can live as long as what it counts (a pooled connection, a request
//! across `.await`s).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

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
    /// Replaced by a reload that changes them ([`Breaker::set_limits`]).
    limits: Cell<BreakerLimits>,
    in_use: [Cell<u32>; 3],
    /// Requests waiting for a `max_requests` unit, first come first.
    waiting: RefCell<VecDeque<Rc<Waiter>>>,
    /// The breakers whose queues a unit freed here also serves, and that serve this one's
    /// ([`Breaker::link`]).
    siblings: RefCell<Vec<Weak<Breaker>>>,
}

/// One request in a breaker's queue.
#[derive(Debug, Default)]
struct Waiter {
    /// Its order among the waiters of the shard: lower came first (0 until it first waits).
    seq: Cell<u64>,
    /// The breaker whose unit a finishing request handed it.
    granted: RefCell<Option<Rc<Breaker>>>,
    waker: RefCell<Option<Waker>>,
    /// Breakers it takes no unit from (compared by address only).
    avoid: RefCell<Vec<*const Breaker>>,
}

thread_local! {
    /// The last [`Waiter::seq`] given out on this thread (a shard's, or a test's).
    static LAST_SEQ: Cell<u64> = const { Cell::new(0) };
}

/// A request's turn in the queues: kept across its waits, so a request that refuses a unit
/// ([`Turn::refuse`]) keeps its order and its deadline.
#[derive(Debug)]
pub struct Turn {
    me: Rc<Waiter>,
    /// Set when it first waits: `queue_timeout` from then.
    until: Option<Instant>,
    /// The backends it refused a unit at (and avoids), until it may use one again
    /// ([`Turn::reconsider`]).
    refused: Vec<Weak<Breaker>>,
}

impl Turn {
    /// A turn that takes no unit at `avoid` (the backends the request tried already).
    pub fn new<'b>(avoid: impl IntoIterator<Item = &'b Rc<Breaker>>) -> Turn {
        let me = Waiter::default();
        me.avoid
            .borrow_mut()
            .extend(avoid.into_iter().map(Rc::as_ptr));
        Turn {
            me: Rc::new(me),
            until: None,
            refused: Vec::new(),
        }
    }

    /// Gives back `permit`, a unit at a backend the request cannot use now (drained, failing
    /// or ejected meanwhile): it goes to the next waiter that takes it, or to the pool. This
    /// request takes no unit there again until [`Turn::reconsider`] finds it usable, so a
    /// unit no one takes ends in the pool.
    pub fn refuse(&mut self, permit: Permit) {
        self.me.avoid.borrow_mut().push(Rc::as_ptr(&permit.breaker));
        self.refused.push(Rc::downgrade(&permit.breaker));
        drop(permit);
    }

    /// Takes units again at the backends it refused that `usable` says it may use now (back
    /// while it waited: enabled, passing its checks, its ejection over). Run before it waits
    /// again, so a place free there is taken at once.
    pub fn reconsider(&mut self, usable: impl Fn(&Rc<Breaker>) -> bool) {
        let mut back = Vec::new();
        self.refused.retain(|w| match w.upgrade() {
            Some(b) if usable(&b) => {
                back.push(Rc::as_ptr(&b));
                false
            }
            Some(_) => true,
            None => false,
        });
        if !back.is_empty() {
            self.me.avoid.borrow_mut().retain(|p| !back.contains(p));
        }
    }
}

impl Breaker {
    /// `limits` are this shard's share (see [`BreakerLimits::shard_share`]).
    pub fn new(limits: BreakerLimits) -> Rc<Breaker> {
        Rc::new(Breaker {
            limits: Cell::new(limits),
            ..Breaker::default()
        })
    }

    pub fn limits(&self) -> BreakerLimits {
        self.limits.get()
    }

    /// A reload's new limits for a backend that remains: what is in use and waiting stays
    /// counted against them. Where they leave room (a raised `max_requests`), the requests
    /// already waiting take it first; below what is in use (a lowered one), finishing
    /// requests free their units until it fits, and only then serve the waiters
    /// ([`Breaker::release_request`]).
    pub fn set_limits(self: &Rc<Self>, limits: BreakerLimits) {
        self.limits.set(limits);
        while self.has_request_room() {
            let Some(w) = self.next_waiter() else { break };
            let c = &self.in_use[Resource::Requests as usize];
            c.set(c.get().saturating_add(1));
            self.grant(&w);
        }
    }

    /// Takes one unit of `resource`, or reports the breaker open.
    pub fn try_acquire(self: &Rc<Self>, resource: Resource) -> Result<Permit, Open> {
        let r = resource as usize;
        let used = self.in_use[r].get();
        if let Some(limit) = self.limits().get(resource) {
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
        let limits = self.limits();
        limits.queue.is_some() && limits.max_requests.is_some()
    }

    /// Has the breakers of `group` (one tier of an upstream that is not pinned) serve each
    /// other's queues: a unit freed at one goes to the oldest request waiting at any of them
    /// that takes it. Set again on every reload, for the backends of the new snapshot.
    pub fn link(group: &[&Rc<Breaker>]) {
        for b in group {
            let others = group.iter().filter(|o| !Rc::ptr_eq(o, b));
            *b.siblings.borrow_mut() = others.map(|o| Rc::downgrade(o)).collect();
        }
    }

    /// Whether `f` holds for a breaker linked to this one ([`Breaker::link`]).
    pub fn any_linked(&self, f: impl Fn(&Rc<Breaker>) -> bool) -> bool {
        self.siblings
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .any(|b| f(&b))
    }

    /// Requests waiting in the queue now.
    pub fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Whether a request would get a `max_requests` unit now, without waiting.
    pub fn has_request_room(&self) -> bool {
        self.limits()
            .max_requests
            .is_none_or(|l| self.in_use[Resource::Requests as usize].get() < l)
    }

    /// A `max_requests` unit: at once when one is free here or at a linked breaker the
    /// request does not avoid, else after waiting in this breaker's queue (first come first
    /// served) for a finishing request to hand it one, up to `queue_timeout` from its first
    /// wait. Open when the queue is full at its first wait, or the wait ends with no unit.
    /// Dropping the future leaves the queue (and passes on a unit it was handed meanwhile).
    /// `entered` runs when the request first takes its place in the queue. The permit may be
    /// at a linked breaker (see [`Permit::is_at`]), one that `usable` says the request may
    /// use now when it is free at once, any when it is handed over (the request may refuse
    /// it: [`Turn::refuse`]).
    pub async fn wait_request(
        self: &Rc<Self>,
        turn: &mut Turn,
        entered: impl FnOnce(),
        usable: impl Fn(&Rc<Breaker>) -> bool,
    ) -> Result<Permit, Open> {
        // A breaker the request avoids is full to it.
        let avoided = turn.me.avoid.borrow().contains(&Rc::as_ptr(self));
        let open = match avoided {
            true => Open {
                resource: Resource::Requests,
                limit: self.limits().max_requests.unwrap_or(0),
                queue: None,
            },
            false => match self.try_acquire(Resource::Requests) {
                Ok(p) => return Ok(p),
                Err(open) => open,
            },
        };
        if let Some(p) = self.free_sibling(&turn.me, usable) {
            return Ok(p);
        }
        let Some(cap) = self.limits().queue else {
            return Err(open);
        };
        let me = &turn.me;
        let until = match turn.until {
            Some(until) => until,
            None => {
                if self.waiting.borrow().len() >= cap as usize {
                    return Err(Open {
                        queue: Some(Queued::Full(cap)),
                        ..open
                    });
                }
                me.seq.set(LAST_SEQ.with(|l| {
                    l.set(l.get() + 1);
                    l.get()
                }));
                entered();
                *turn
                    .until
                    .insert(Instant::now() + self.limits().queue_timeout)
            }
        };
        // After a refusal it keeps its order: behind those that came before it.
        {
            let mut waiting = self.waiting.borrow_mut();
            let at = waiting.partition_point(|w| w.seq.get() < me.seq.get());
            waiting.insert(at, me.clone());
        }
        let place = Place { breaker: self, me };
        let granted = poll_fn(|cx| {
            if me.granted.borrow().is_some() {
                return Poll::Ready(());
            }
            *me.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        let left = until.saturating_duration_since(Instant::now());
        let timed_out = monoio::time::timeout(left, granted).await.is_err();
        let granted = me.granted.borrow_mut().take();
        match granted {
            Some(breaker) => {
                std::mem::forget(place);
                Ok(Permit {
                    breaker,
                    resource: Resource::Requests,
                })
            }
            None => {
                debug_assert!(timed_out);
                Err(Open {
                    queue: Some(Queued::TimedOut(self.limits().queue_timeout)),
                    ..open
                })
            }
        }
    }

    /// A unit at a linked breaker `me` does not avoid and may use now, if one is free (a
    /// backend that is down has room: taking its unit would only end in a refusal, and the
    /// request would avoid it once it is back).
    fn free_sibling(&self, me: &Waiter, usable: impl Fn(&Rc<Breaker>) -> bool) -> Option<Permit> {
        let siblings = self.siblings.borrow();
        let avoid = me.avoid.borrow();
        siblings.iter().filter_map(Weak::upgrade).find_map(|b| {
            let skip = avoid.contains(&Rc::as_ptr(&b)) || !b.has_request_room() || !usable(&b);
            if skip {
                return None;
            }
            b.try_acquire(Resource::Requests).ok()
        })
    }

    /// A `max_requests` unit given back: to the oldest waiter, here or at a linked breaker,
    /// that takes a unit here; else to the pool. Over a limit a reload lowered
    /// ([`Breaker::set_limits`]), to the pool until what is in use fits it: handed on, the
    /// unit would keep the old limit for as long as requests wait.
    fn release_request(self: &Rc<Self>) {
        let c = &self.in_use[Resource::Requests as usize];
        let over = self.limits().max_requests.is_some_and(|l| c.get() > l);
        match (!over).then(|| self.next_waiter()).flatten() {
            Some(w) => self.grant(&w),
            None => c.set(c.get().saturating_sub(1)),
        }
    }

    /// Takes out of its queue the oldest waiter, here or at a linked breaker, that takes a
    /// unit here.
    fn next_waiter(&self) -> Option<Rc<Waiter>> {
        let here = self as *const Breaker;
        let takes = |w: &Rc<Waiter>| !w.avoid.borrow().contains(&here);
        let first = |b: &Breaker| {
            let waiting = b.waiting.borrow();
            let at = waiting.iter().position(takes)?;
            Some((at, waiting[at].seq.get()))
        };
        let mut best = first(self).map(|(at, seq)| (None, at, seq));
        let siblings = self.siblings.borrow();
        for (i, s) in siblings.iter().enumerate() {
            let Some(b) = s.upgrade() else { continue };
            if let Some((at, seq)) = first(&b) {
                if best.as_ref().is_none_or(|&(_, _, best)| seq < best) {
                    best = Some((Some(i), at, seq));
                }
            }
        }
        best.and_then(|(from, at, _)| match from {
            None => self.waiting.borrow_mut().remove(at),
            Some(i) => siblings[i].upgrade()?.waiting.borrow_mut().remove(at),
        })
    }

    /// Hands `w` a unit here (already counted in use) and wakes it.
    fn grant(self: &Rc<Self>, w: &Waiter) {
        *w.granted.borrow_mut() = Some(self.clone());
        if let Some(waker) = w.waker.borrow_mut().take() {
            waker.wake();
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

impl Permit {
    /// Whether this is a unit of `breaker` (a queued request's may be a linked one's).
    pub fn is_at(&self, breaker: &Rc<Breaker>) -> bool {
        Rc::ptr_eq(&self.breaker, breaker)
    }
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
/// was dropped) without the unit being taken, it leaves the queue, and passes on a unit it
/// was handed.
struct Place<'a> {
    breaker: &'a Breaker,
    me: &'a Rc<Waiter>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let granted = self.me.granted.borrow_mut().take();
        if let Some(b) = granted {
            b.release_request();
        } else {
            self.breaker
                .waiting
                .borrow_mut()
                .retain(|w| !Rc::ptr_eq(w, self.me));
        }
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
