//! Stage 2's idle half, between one exchange (*respond*) and the next *parse*: the shard's
//! **parking lot** for idle keep-alive connections. A plain connection that stays silent
//! through [`crate::conn`]'s hot window leaves its task: its socket, peer, listener and
//! active-connection count are stored here (a [`Parked`], an 88-byte slab slot) and its task
//! ends, so an idle connection holds no task, no read buffer, no timer and no head vectors.
//!
//! The lot owns an epoll instance of its own. Each parked socket is armed in it one-shot
//! (`EPOLLIN | EPOLLRDHUP | EPOLLONESHOT`, the slot's key and generation as its data), and one
//! task per shard ([`run`]) waits for that epoll descriptor to be readable (through monoio, on
//! either engine) and for the earliest deadline. A socket that becomes readable is taken out
//! and handed to a new task ([`crate::conn::resume`]); one whose `client_idle` passes is
//! closed silently, as the in-task wait did. When the shard drains, every parked connection
//! still silent at the drain's grace end is closed, and no connection is parked any more.
//!
//! Deadlines are kept in a min-heap of (deadline, key, generation); entries of connections
//! that were resumed stay until they surface, and the heap is compacted when they outnumber
//! the live ones. Parking costs a `dup` (the lot keeps a plain descriptor, not monoio's
//! stream: 4 bytes instead of 80 and a 64-byte allocation) and an `epoll_ctl(ADD)`; resuming
//! an `epoll_ctl(DEL)` (and, on the epoll engine, monoio's registration of the stream).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use slab::Slab;

use crate::client::{ListenerSide, Served};
use crate::shard::ShardCommon;
use crate::worker::ActiveGuard;

/// A connection waiting in the lot: what its next task needs to serve it.
pub struct Parked {
    /// The socket, as a plain descriptor: monoio's `TcpStream` is 80 bytes and its shared
    /// descriptor another 64-byte allocation ([`Parked::new`] takes a duplicate).
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub listener: Rc<ListenerSide>,
    /// [`crate::client::Client::forwarded_trusted`] and `balancer_itself`.
    pub trust: (bool, bool),
    pub served: Served,
    /// Counts the connection as active (a drain waits for it) until it is closed.
    pub guard: ActiveGuard,
    /// Tells a slot's occupants apart (a key is reused once its connection has left).
    gen: u32,
}

impl Parked {
    /// `None` (and `stream` closed) if the descriptor cannot be duplicated. A duplicate,
    /// not `into_raw_fd`: monoio panics there if an operation still holds the descriptor.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        listener: Rc<ListenerSide>,
        trust: (bool, bool),
        served: Served,
        guard: ActiveGuard,
    ) -> Result<Parked, (TcpStream, ActiveGuard)> {
        // SAFETY: F_DUPFD_CLOEXEC takes no pointers; a non-negative result is a new
        // descriptor nothing else owns, so OwnedFd may own (and close) it. Exercised by every
        // integration test whose connection goes idle past the hot window.
        let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err((stream, guard));
        }
        // SAFETY: see above.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        drop(stream);
        Ok(Parked {
            fd,
            peer,
            listener,
            trust,
            served,
            guard,
            gen: 0,
        })
    }
}

/// The shard's parking lot (see the module comment). No borrow is held across an `.await`.
pub struct Lot {
    /// The lot's epoll instance (`None` if it could not be created: nothing is parked).
    ep: Option<OwnedFd>,
    slots: RefCell<Slab<Parked>>,
    /// (deadline in microseconds since `epoch`, rounded up; key; generation): fine enough that
    /// [`Lot::evict_oldest`] takes the longest idle even among connections parked in one tick.
    expiry: RefCell<BinaryHeap<Reverse<(u64, u32, u32)>>>,
    epoch: Instant,
    next_gen: Cell<u32>,
    /// Connections parked so far (the shard's quiet detection counts them as activity).
    parks: Cell<u64>,
    /// Set while [`run`] serves the lot; parking is refused otherwise.
    running: Cell<bool>,
    /// What [`run`] sleeps until (`None`: no deadline), and its waker: a connection parked
    /// with an earlier deadline wakes it.
    until: Cell<Option<Instant>>,
    kicked: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Default for Lot {
    fn default() -> Lot {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns, so OwnedFd may own (and close) it. Exercised by every
        // integration test whose connection goes idle past the hot window.
        let ep = unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
        };
        Lot {
            ep,
            slots: RefCell::default(),
            expiry: RefCell::default(),
            epoch: Instant::now(),
            next_gen: Cell::new(0),
            parks: Cell::new(0),
            running: Cell::new(false),
            until: Cell::new(None),
            kicked: Cell::new(false),
            waker: Cell::new(None),
        }
    }
}

/// Epoll events asked for a parked socket: readable or closed by the peer, once.
const ARMED: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;

impl Lot {
    /// Connections parked now.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parks `p` until its socket is readable (then [`run`] resumes it) or its deadline.
    /// Handed back when the lot does not run (before the shard starts it, once it drains)
    /// or the socket cannot be armed; the caller then waits in its task.
    pub fn park(&self, mut p: Parked, deadline: Instant) -> Result<(), Parked> {
        let Some(ep) = &self.ep else { return Err(p) };
        if !self.running.get() {
            return Err(p);
        }
        let mut slots = self.slots.borrow_mut();
        let entry = slots.vacant_entry();
        let Ok(key) = u32::try_from(entry.key()) else {
            return Err(p);
        };
        let gen = self.next_gen.get().wrapping_add(1);
        self.next_gen.set(gen);
        let mut ev = libc::epoll_event {
            events: ARMED,
            u64: u64::from(gen) << 32 | u64::from(key),
        };
        let fd = p.fd.as_raw_fd();
        // SAFETY: epoll_ctl on our epoll descriptor and the socket's, both open for the call,
        // with a pointer to an epoll_event on this stack frame that the kernel only reads.
        // Exercised by tests/keepalive.rs (parked_connections_resume_and_close).
        let armed =
            unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) == 0 };
        if !armed {
            return Err(p);
        }
        p.gen = gen;
        entry.insert(p);
        self.parks.set(self.parks.get() + 1);
        let due = self.micros(deadline);
        drop(slots);
        let mut expiry = self.expiry.borrow_mut();
        expiry.push(Reverse((due, key, gen)));
        // Resumed connections' entries stay until they surface: drop them when they
        // outnumber the parked ones, so the heap stays within twice the lot.
        if expiry.len() > 2 * self.len() + 64 {
            let slots = self.slots.borrow();
            expiry.retain(|Reverse((_, k, g))| live(&slots, *k, *g));
        }
        drop(expiry);
        if self.until.get().is_none_or(|u| due < self.micros(u)) {
            self.kicked.set(true);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
        Ok(())
    }

    /// Connections parked so far.
    pub fn parks(&self) -> u64 {
        self.parks.get()
    }

    /// `at` in microseconds since the lot's epoch, rounded up (so never early).
    fn micros(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        let us = d.as_micros() + u128::from(d.subsec_nanos() % 1_000 != 0);
        u64::try_from(us).unwrap_or(u64::MAX)
    }

    /// Takes out every parked connection whose deadline is at or before `now`.
    fn expired(&self, now: Instant) -> Vec<Parked> {
        // Whole microseconds passed: a deadline (rounded up) at or before them has passed.
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_micros())
            .unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut expiry = self.expiry.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        while let Some(&Reverse((at, key, gen))) = expiry.peek() {
            if at > now {
                break;
            }
            expiry.pop();
            if live(&slots, key, gen) {
                out.push(slots.remove(key as usize));
            }
        }
        if slots.is_empty() && slots.capacity() > 1024 {
            // The lot emptied after a crowd: give its memory back.
            *slots = Slab::new();
            *expiry = BinaryHeap::new();
        }
        out
    }

    /// Takes out the parked connection with the earliest deadline (the longest idle: every
    /// one was parked with `client_idle`), for a new connection at a connection limit.
    pub fn evict_oldest(&self) -> Option<Parked> {
        let mut expiry = self.expiry.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        while let Some(Reverse((_, key, gen))) = expiry.pop() {
            if live(&slots, key, gen) {
                return Some(slots.remove(key as usize));
            }
        }
        None
    }

    /// The earliest deadline of a parked connection (stale heap entries may make it early:
    /// the wake finds nothing to close and sleeps again).
    fn next_deadline(&self) -> Option<Instant> {
        let at = self.expiry.borrow().peek().map(|Reverse((at, _, _))| *at)?;
        Some(self.epoch + Duration::from_micros(at))
    }

    /// Takes out every parked connection the epoll instance reports ready.
    fn ready(&self) -> Vec<Parked> {
        let mut out = Vec::new();
        let Some(ep) = &self.ep else { return out };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: epoll_wait writes at most `events.len()` entries into the array, which
            // lives on this stack frame for the call; timeout 0, so it never blocks.
            // Exercised by tests/regressions.rs (request_after_idle_window_is_intact).
            let n = unsafe {
                libc::epoll_wait(
                    ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    0,
                )
            };
            let n = usize::try_from(n).unwrap_or(0);
            let mut slots = self.slots.borrow_mut();
            for ev in &events[..n] {
                let data = ev.u64;
                let (key, gen) = (data as u32, (data >> 32) as u32);
                if live(&slots, key, gen) {
                    let p = slots.remove(key as usize);
                    // Out of the set: the descriptor goes to the new task's stream
                    // (`conn::resume` hands this very one to `TcpStream::from_std`), which
                    // registers it with the shard's own driver.
                    // SAFETY: epoll_ctl on our epoll descriptor and the parked socket's,
                    // both open; DEL reads no event. Exercised as above.
                    unsafe {
                        libc::epoll_ctl(
                            ep.as_raw_fd(),
                            libc::EPOLL_CTL_DEL,
                            p.fd.as_raw_fd(),
                            std::ptr::null_mut(),
                        )
                    };
                    out.push(p);
                }
            }
            if n < events.len() {
                return out;
            }
        }
    }

    /// Takes out every parked connection.
    fn all(&self) -> Vec<Parked> {
        self.expiry.borrow_mut().clear();
        self.slots.borrow_mut().drain().collect()
    }

    /// Closes every parked connection and refuses new ones (the shard stops; this also ends
    /// the reference cycle through their active-connection counts).
    pub fn close(&self) {
        self.running.set(false);
        drop(self.all());
    }

    /// A descriptor of the lot's epoll instance that monoio can wait on (readable = some
    /// parked socket is ready). A `TcpStream` only as monoio's wrapper for a pollable
    /// descriptor: [`run`] calls nothing on it but `readable` (a poll), and dropping it
    /// closes the duplicate.
    fn watch(&self) -> Option<TcpStream> {
        let ep = self.ep.as_ref()?;
        // SAFETY: F_DUPFD_CLOEXEC takes no pointers; a non-negative result is a new
        // descriptor nothing else owns, handed to the std wrapper that monoio takes over
        // (and closes). Exercised by every integration test that parks a connection.
        let dup = unsafe { libc::fcntl(ep.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: `dup` is open and owned by nothing else (see above).
        let std = unsafe { std::net::TcpStream::from_raw_fd(dup) };
        TcpStream::from_std(std).ok()
    }
}

fn live(slots: &Slab<Parked>, key: u32, gen: u32) -> bool {
    slots.get(key as usize).is_some_and(|p| p.gen == gen)
}

/// What woke the lot.
enum Woke {
    Ready(std::io::Result<()>),
    Timer,
    Drain,
    Kick,
}

/// Serves the shard's lot until the shard's drain grace ends: resumes the connections that
/// become readable, closes those whose deadline (or the grace) passes. Started once per
/// shard; parking is possible only while it runs.
pub async fn run(common: Rc<ShardCommon>) {
    let lot = &common.lot;
    let Some(watch) = lot.watch() else {
        tracing::warn!(
            shard = common.id,
            "no parking lot: idle connections wait in their tasks"
        );
        return;
    };
    lot.running.set(!common.draining());
    let mut readable = std::pin::pin!(watch.readable(false));
    let mut sleep = std::pin::pin!(monoio::time::sleep(Duration::from_secs(3600)));
    let mut drain = std::pin::pin!(common.drain.notified());
    let mut draining = common.draining();
    loop {
        let now = Instant::now();
        let grace = common.grace_end();
        if grace.is_some_and(|g| g <= now) {
            // Draining, and the grace is over: whoever is still silent is closed.
            lot.close();
            return;
        }
        drop(lot.expired(now));
        let until = match (lot.next_deadline(), grace) {
            (Some(d), Some(g)) => Some(d.min(g)),
            (d, g) => d.or(g),
        };
        lot.until.set(until);
        if let Some(u) = until {
            sleep.as_mut().reset(monoio::time::Instant::from_std(u));
        }
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = readable.as_mut().poll(cx) {
                return Poll::Ready(Woke::Ready(r));
            }
            if !draining && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Drain);
            }
            if until.is_some() && sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Timer);
            }
            if lot.kicked.take() {
                return Poll::Ready(Woke::Kick);
            }
            lot.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        lot.kicked.set(false);
        match woke {
            Woke::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                // The epoll engine's readiness check ends in poll(2), which a signal handler
                // interrupts (never restarted): wait again.
                readable.set(watch.readable(false));
            }
            Woke::Ready(Err(e)) => {
                // The lot's own descriptor failed: nothing parked can be woken any more.
                tracing::warn!(shard = common.id, error = %e, "parking lot failed; its idle connections are closed");
                lot.close();
                return;
            }
            Woke::Ready(Ok(())) => {
                // Re-armed at once (a completed wait is never polled again).
                readable.set(watch.readable(false));
                for p in lot.ready() {
                    match common.current() {
                        Some(ctx) => {
                            monoio::spawn(crate::clock::fresh(crate::conn::resume(ctx, p)));
                        }
                        None => drop(p),
                    }
                }
            }
            Woke::Drain => {
                // Nothing more is parked; those here wait until the grace ends.
                draining = true;
                lot.running.set(false);
            }
            Woke::Timer | Woke::Kick => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection budget in docs/ARCHITECTURE.md ("Memory when idle"): a parked
    /// connection's slab slot and its expiry heap entry.
    #[test]
    fn a_parked_connection_is_small() {
        // slab's (private) entry type: a vacant slot's next free key, or the value.
        #[allow(dead_code)]
        enum Entry {
            Vacant(usize),
            Occupied(Parked),
        }
        let slot = std::mem::size_of::<Entry>();
        let heap = std::mem::size_of::<Reverse<(u64, u32, u32)>>();
        assert!(slot <= 88, "slab slot {slot} bytes");
        assert_eq!(heap, 16);
    }
}
