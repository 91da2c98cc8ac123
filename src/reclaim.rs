//! Stage 1's admission, at a connection limit: **which idle connection makes room**. A new
//! connection at `max_connections_per_shard` or `max_connections` is served, not reset, when
//! the shard holds a connection that is only waiting: the longest-idle connection parked
//! between requests ([`crate::park`]), however long the others waited (the common case, and
//! the cheapest to close) or, without one, the longest-waiting connection that waits in its
//! own task ([`Waits`]: a new connection's first request, a TLS or mTLS connection between
//! requests, any wait during a drain), past [`crate::conn`]'s hot window; without either,
//! the oldest connection that only closes after a complete response to a client that had
//! sent nothing more ([`crate::linger::close`]), once its client has acknowledged the whole
//! response: its close then ends at once. A close whose response is still in flight is not
//! reclaimed, as no connection with a response in flight is: should its client send more
//! bytes, the kernel would answer them with a reset that destroys the end of the response.
//! Only the oldest close is looked at (one `SIOCOUTQ`); a close ends by itself within
//! [`crate::linger`]'s step of its acknowledgement anyway.
//! nginx does the same when out of `worker_connections`: its "reusable" connections are the
//! keep-alive ones and those still waiting for their first request. RFC 9112 §9.5 allows a
//! server to close an idle connection at any time.
//!
//! So a flood of connections that open and say nothing cannot lock clients out: each new one
//! closes the oldest silent one, and a client that sends its request at once is served.
//! Connections sending a head, however slowly, are not reclaimed (`client_header` bounds them).
//!
//! A waiting task hands its [`ActiveGuard`] to the register for the wait ([`Waits::enter`]).
//! Reclaiming drops the guard at once (the connection no longer counts, so the new one is
//! admitted in the same call) and wakes the task, which closes its socket.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::task::{Poll, Waker};
use std::time::Instant;

use slab::Slab;

use crate::shard::{ShardCommon, ShardCtx};
use crate::stats::bump;
use crate::worker::ActiveGuard;

/// At a connection limit: closes the shard's longest-idle parked connection or, without
/// one, its longest-waiting in-task wait or, without either, ends its oldest close after a
/// complete response ([`crate::linger::close`]) if its client has acknowledged it all.
/// Whether there was one (counted in `reclaimed_idle`).
pub fn reclaim(common: &ShardCommon, ctx: &ShardCtx) -> bool {
    let made_room = match common.lot.evict_oldest() {
        Some(idle) => {
            drop(idle);
            true
        }
        None => {
            common.waits.evict_oldest()
                || common
                    .closing
                    .evict_oldest_if(|fd| crate::transport::unsent(fd) <= 1)
        }
    };
    if !made_room {
        return false;
    }
    bump(&ctx.stats.reclaimed_idle);
    true
}

/// How long an accept or a connect that made room with [`descriptor`] waits for the freed
/// descriptor (trying again each millisecond) before it may close another connection or
/// give up.
pub const ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Out of descriptors (`EMFILE`, `ENFILE`) for an accept with a client waiting or for an
/// upstream connect: closes the shard's oldest idle pooled upstream connection, which costs
/// no client anything ([`crate::upstream::pool::Pool::evict_oldest`]), or without one, as at
/// a connection limit, its longest-idle client connection ([`reclaim`]). Whether one was
/// closed. On io_uring the descriptor is free only once the driver has submitted the close
/// (a turn or two of the loop): the caller waits before it tries again.
pub fn descriptor(common: &ShardCommon, ctx: &ShardCtx) -> bool {
    // The pool of the snapshot in force: a request that began before a reload holds the
    // old one, which has handed its connections over.
    let live = common.current();
    let pool = &live.as_deref().unwrap_or(ctx).pool;
    let pooled = pool.try_borrow_mut().is_ok_and(|mut p| p.evict_oldest());
    pooled || reclaim(common, ctx)
}

/// The shard's register of connections waiting in their own task (see the module comment).
/// No borrow is held across an `.await` or while a guard is dropped or a task woken.
#[derive(Default)]
pub struct Waits {
    slots: RefCell<Slab<Slot>>,
    /// (start of the wait, key, generation), earliest first; entries of waits that ended
    /// stay until they surface, and are dropped when they outnumber the live ones.
    order: RefCell<BinaryHeap<Reverse<(Instant, u32, u32)>>>,
    next_gen: Cell<u32>,
}

struct Slot {
    guard: ActiveGuard,
    gen: u32,
    waker: Option<Waker>,
    /// The connection's socket, where the register looks at it ([`Waits::enter_close`]).
    fd: RawFd,
}

/// One connection's wait in the register: [`Waiting::reclaimed`] resolves when a new
/// connection took its place, [`Waiting::leave`] ends it. Dropped without `leave` (its task
/// dropped), the wait ends and its guard with it.
pub struct Waiting<'a> {
    waits: &'a Waits,
    key: u32,
    gen: u32,
}

impl Waits {
    /// Starts a wait, waiting since `since`: the register holds the connection's guard until
    /// [`Waiting::leave`].
    pub fn enter(&self, guard: ActiveGuard, since: Instant) -> Waiting<'_> {
        self.enter_close(guard, since, -1)
    }

    /// [`Waits::enter`] for a close on the socket `fd`, which [`Waits::evict_oldest_if`]
    /// looks at (the socket stays open while the wait lasts: its task holds it).
    pub fn enter_close(&self, guard: ActiveGuard, since: Instant, fd: RawFd) -> Waiting<'_> {
        let gen = self.next_gen.get().wrapping_add(1);
        self.next_gen.set(gen);
        let key = self.slots.borrow_mut().insert(Slot {
            guard,
            gen,
            waker: None,
            fd,
        }) as u32;
        let mut order = self.order.borrow_mut();
        order.push(Reverse((since, key, gen)));
        let live = self.slots.borrow().len();
        if order.len() > 2 * live + 64 {
            let slots = self.slots.borrow();
            order.retain(|&Reverse((_, k, g))| is_live(&slots, k, g));
        }
        Waiting {
            waits: self,
            key,
            gen,
        }
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the longest wait: its guard is dropped now, its task woken to close the socket.
    /// Whether there was one.
    fn evict_oldest(&self) -> bool {
        self.evict_oldest_if(|_| true)
    }

    /// [`Waits::evict_oldest`] if `ok` says yes for the longest wait's socket; else nothing.
    fn evict_oldest_if(&self, ok: impl FnOnce(RawFd) -> bool) -> bool {
        let slot = loop {
            let Some(&Reverse((_, key, gen))) = self.order.borrow().peek() else {
                return false;
            };
            let mut slots = self.slots.borrow_mut();
            if !is_live(&slots, key, gen) {
                drop(slots);
                self.order.borrow_mut().pop();
                continue;
            }
            if !ok(slots[key as usize].fd) {
                return false;
            }
            self.order.borrow_mut().pop();
            break slots.remove(key as usize);
        };
        let Slot { guard, waker, .. } = slot;
        drop(guard);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    fn take(&self, key: u32, gen: u32) -> Option<ActiveGuard> {
        let mut slots = self.slots.borrow_mut();
        is_live(&slots, key, gen).then(|| slots.remove(key as usize).guard)
    }
}

fn is_live(slots: &Slab<Slot>, key: u32, gen: u32) -> bool {
    slots.get(key as usize).is_some_and(|s| s.gen == gen)
}

impl Waiting<'_> {
    /// Resolves once the wait was reclaimed (its guard is gone: the connection must close).
    pub async fn reclaimed(&self) {
        poll_fn(|cx| {
            let mut slots = self.waits.slots.borrow_mut();
            match slots.get_mut(self.key as usize) {
                Some(s) if s.gen == self.gen => {
                    if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        s.waker = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        })
        .await
    }

    /// Ends the wait: the guard back, or `None` if the wait was reclaimed (close).
    pub fn leave(self) -> Option<ActiveGuard> {
        let guard = self.waits.take(self.key, self.gen);
        std::mem::forget(self);
        guard
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        drop(self.waits.take(self.key, self.gen));
    }
}
