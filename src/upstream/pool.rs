//! Stage 5 of the pipeline, *pool*: each shard keeps its own idle keep-alive connections to
//! backends in a `slab`, with a LIFO stack of slab keys per backend (the most recently used
//! connection is the warmest). Idle connections are bounded per backend and per shard
//! (`limits.max_idle_upstream_per_shard`: at it, a checkin closes the shard's oldest idle
//! connection, whichever its backend, found through a list of all of them in checkin order),
//! closed after the upstream's `idle_timeout`, and a periodic sweep closes those the backend
//! has closed. Out of descriptors, the oldest idle one is closed before any client's
//! ([`Pool::evict_oldest`], [`crate::reclaim::descriptor`]). Every
//! checkout looks at its candidate ([`Pool::checkout_armed`]), so that it never hands out a
//! connection the backend closed or wrote stray bytes on: on io_uring a plain connection is
//! checked in with an op posted on it (no syscall: it goes with the driver's next submission),
//! a receive into the shard's ring ([`crate::bufring`]) or a read-readiness wait, which the
//! checkout looks at without a syscall and the exchange then awaits for the response;
//! elsewhere (epoll, TLS, or an op the kernel has not seen yet) the checkout [`probe`]s with a
//! `MSG_PEEK`. On a reload a shard's pool hands its connections to the next
//! snapshot's pool by backend identity ([`Pool::hand_over`]) and forwards later checkins there.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::tcp::{Readiness, RecvSelect};
use monoio::net::TcpStream;
use slab::Slab;

use crate::bufring::BufRing;
use crate::transport::{recv_into, Transport};
use crate::upstream::state::Backends;

/// How far below the most recent idle connection a checkout looks for one it can check
/// without a syscall ([`Pool::prefer_seen`]).
const SEEN_SEARCH: usize = 8;

/// Ends an exchange with `backend` on `stream`: back to `pool` when the exchange left it
/// `reusable` (its response read whole and nothing past it, from a backend that keeps it
/// open), else closed ([`Transport::close_now`]). Every exchange that ends in order ends
/// here; one that failed drops its connection as it is.
pub fn end_exchange(
    pool: &RefCell<Pool>,
    backends: &Backends,
    backend: usize,
    stream: Transport,
    reusable: bool,
) {
    if reusable {
        let small = backends.receives(backend);
        pool.borrow_mut()
            .checkin(backend, stream, crate::clock::now(), small);
    } else {
        stream.close_now();
    }
}

struct Idle {
    stream: Transport,
    /// io_uring and a plain connection: the op posted at checkin.
    armed: Option<Armed>,
    backend: usize,
    since: Instant,
    /// The shard's idle connections in checkin order: the slab keys of the one checked in
    /// just before this one and just after it ([`NONE`] at the ends).
    older: usize,
    newer: usize,
}

/// No slab key: the end of [`Idle`]'s list.
const NONE: usize = usize::MAX;

/// What is posted on an idle connection: a receive into the shard's ring
/// ([`crate::bufring`]), or a read-readiness wait where there is no ring. Either completes
/// when the backend closes, resets or writes, which is all a checkout needs to know, and a
/// pending one is looked at without a syscall; the exchange then awaits it for the response.
pub enum Posted {
    Receive(RecvSelect),
    Ready(Readiness),
}

/// A [`Posted`] op and the driver's count of waits in the kernel
/// ([`monoio::utils::uring_reaps`]) when it was posted; until that count moves, the kernel
/// has not seen the op (or has not posted what it saw: DEFER_TASKRUN), and a checkout
/// probes.
struct Armed {
    op: Posted,
    reaps: u64,
}

impl Armed {
    /// Posts one on `stream` where that costs no syscall (io_uring, plain TCP): a receive
    /// when given the shard's ring.
    fn post(stream: &Transport, ring: Option<&RefCell<BufRing>>) -> Option<Armed> {
        if monoio::utils::is_legacy() {
            return None;
        }
        let Transport::Plain(s) = stream else {
            return None;
        };
        let op = match ring.and_then(|r| r.borrow_mut().post(s)) {
            Some(op) => Posted::Receive(op),
            None => Posted::Ready(s.armed_readable().ok()?),
        };
        Some(Armed {
            op,
            reaps: monoio::utils::uring_reaps(),
        })
    }
}

/// Looks at an idle connection: its posted op first (finished: something arrived, dead; a
/// receive's buffer goes back to the ring), then, pending, alive if the kernel has seen the op
/// (nothing arrived as of the shard's last wait in the kernel), else a [`probe`] (counted in
/// `probes`).
fn look(idle: &mut Idle, ring: Option<&RefCell<BufRing>>, probes: &mut u64) -> Probe {
    let Some(a) = &mut idle.armed else {
        *probes += 1;
        return probe(idle.stream.tcp());
    };
    // Looked at first, seen by the kernel or not: a receive that finished has consumed what
    // arrived, which a peek would no longer find.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let pending = match &mut a.op {
        Posted::Ready(wait) => std::pin::Pin::new(wait).poll(&mut cx).is_pending(),
        Posted::Receive(op) => match std::pin::Pin::new(op).poll(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready((_, bid)) => {
                if let Some(ring) = ring {
                    // SAFETY: `bid` is what this receive's completion reported, taken once
                    // (the op is dropped below); it was posted through the shard's ring.
                    unsafe { ring.borrow_mut().put_back(bid) };
                }
                false
            }
        },
    };
    if !pending {
        // Finished: nothing left to drop (or to cancel).
        idle.armed = None;
        return Probe::Dead;
    }
    if a.reaps != monoio::utils::uring_reaps() {
        return Probe::Alive;
    }
    *probes += 1;
    probe(idle.stream.tcp())
}

/// Where a replaced pool sends later checkins (see [`Pool::hand_over`]).
struct Successor {
    pool: Rc<RefCell<Pool>>,
    /// Old backend index → new one (shared by every shard: `carry::Carry::pool`).
    map: std::sync::Arc<[Option<usize>]>,
}

/// What a liveness probe of an idle connection found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing to read and not closed: usable.
    Alive,
    /// The backend closed it, reset it, or sent bytes nobody asked for.
    Dead,
}

/// Checks an idle upstream socket without blocking and without consuming anything (a
/// one-byte `MSG_PEEK`; ~3 % of a small keep-alive GET's CPU, loadtest/results/2026-12-05-vm-heads/).
pub fn probe(stream: &TcpStream) -> Probe {
    let mut byte = [0u8; 1];
    match recv_into(stream.as_raw_fd(), &mut byte, libc::MSG_PEEK) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Probe::Alive,
        // Ok(0): orderly close; Ok(1): unsolicited bytes (a stray response); Err: a reset.
        _ => Probe::Dead,
    }
}

/// Counters the pool keeps; merged into the shard's stats.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolCounters {
    pub hits: u64,
    pub misses: u64,
    pub evicted_idle: u64,
    pub evicted_dead: u64,
    pub rejected_full: u64,
    /// The oldest idle connection closed for a checkin at the shard's bound.
    pub evicted_shard_full: u64,
    /// The oldest idle connection closed for a descriptor ([`Pool::evict_oldest`]).
    pub evicted_descriptors: u64,
    /// Checks that peeked with a syscall ([`probe`]) instead of looking at a posted wait.
    pub probes: u64,
}

pub struct Pool {
    /// Set once a reload replaced this pool ([`Pool::hand_over`]): connections checked in
    /// later, by requests that started on the old snapshot, go there.
    successor: Option<Successor>,
    conns: Slab<Idle>,
    /// Per backend (global backend index): slab keys, oldest first.
    stacks: Vec<Vec<usize>>,
    max_idle: Vec<usize>,
    idle_timeout: Vec<Duration>,
    /// Idle connections the shard keeps, all backends together.
    max_total: usize,
    /// Ends of the list of idle connections in checkin order ([`Idle::older`]).
    oldest: usize,
    newest: usize,
    /// The shard's ring, which receives are posted into at checkin ([`crate::bufring`]).
    ring: Option<Rc<RefCell<BufRing>>>,
    pub counters: PoolCounters,
}

impl Pool {
    /// `limits[i]` = (max idle, idle timeout) of global backend `i`.
    pub fn new(limits: &[(usize, Duration)]) -> Pool {
        Pool {
            successor: None,
            conns: Slab::new(),
            stacks: vec![Vec::new(); limits.len()],
            max_idle: limits.iter().map(|l| l.0).collect(),
            idle_timeout: limits.iter().map(|l| l.1).collect(),
            max_total: usize::MAX,
            oldest: NONE,
            newest: NONE,
            ring: None,
            counters: PoolCounters::default(),
        }
    }

    /// Posts receives into `ring` at checkin (io_uring, plain connections).
    pub fn with_ring(self, ring: Rc<RefCell<BufRing>>) -> Pool {
        Pool {
            ring: Some(ring),
            ..self
        }
    }

    /// Keeps at most `max` idle connections, all backends together
    /// (`limits.max_idle_upstream_per_shard`).
    pub fn with_shard_cap(self, max: usize) -> Pool {
        Pool {
            max_total: max,
            ..self
        }
    }

    /// Stores `idle` as the newest idle connection; its key.
    fn insert(&mut self, idle: Idle) -> usize {
        let key = self.conns.insert(Idle {
            older: self.newest,
            newer: NONE,
            ..idle
        });
        match self.newest {
            NONE => self.oldest = key,
            newest => self.conns[newest].newer = key,
        }
        self.newest = key;
        key
    }

    /// Takes `key` out of the slab and of the list (not out of its backend's stack).
    fn remove(&mut self, key: usize) -> Idle {
        let idle = self.conns.remove(key);
        match idle.older {
            NONE => self.oldest = idle.newer,
            older => self.conns[older].newer = idle.newer,
        }
        match idle.newer {
            NONE => self.newest = idle.older,
            newer => self.conns[newer].older = idle.older,
        }
        idle
    }

    /// Closes the shard's oldest idle connection, whichever its backend: the one least
    /// likely to be wanted again. Whether there was one.
    fn close_oldest(&mut self) -> bool {
        let key = self.oldest;
        if key == NONE {
            return false;
        }
        let idle = self.remove(key);
        let stack = &mut self.stacks[idle.backend];
        // The oldest of the shard is nearly always the oldest of its backend: the front.
        if let Some(i) = stack.iter().position(|&k| k == key) {
            stack.remove(i);
        }
        idle.stream.close_now();
        true
    }

    /// Out of descriptors: closes the oldest idle connection ([`crate::reclaim::descriptor`]
    /// tries this before closing a client's). Whether there was one.
    pub fn evict_oldest(&mut self) -> bool {
        let closed = self.close_oldest();
        if closed {
            self.counters.evicted_descriptors += 1;
        }
        closed
    }

    /// Takes the most recently returned connection to `backend` that has not expired and on
    /// which the backend has neither closed nor sent anything since it was returned (bytes a
    /// backend sent beyond its framing would otherwise become the next client's response).
    pub fn checkout(&mut self, backend: usize, now: Instant) -> Option<Transport> {
        self.checkout_armed(backend, now).map(|(stream, _)| stream)
    }

    /// [`Pool::checkout`], with the op posted on the connection when it has one: the exchange
    /// awaits it for the response instead of posting another.
    pub fn checkout_armed(
        &mut self,
        backend: usize,
        now: Instant,
    ) -> Option<(Transport, Option<Posted>)> {
        let timeout = self.idle_timeout[backend];
        self.prefer_seen(backend);
        while let Some(key) = self.stacks[backend].pop() {
            let mut idle = self.remove(key);
            if now.duration_since(idle.since) >= timeout {
                self.counters.evicted_idle += 1;
                idle.stream.close_now();
                continue;
            }
            if look(&mut idle, self.ring.as_deref(), &mut self.counters.probes) == Probe::Dead {
                self.counters.evicted_dead += 1;
                idle.stream.close_now();
                continue;
            }
            self.counters.hits += 1;
            return Some((idle.stream, idle.armed.map(|a| a.op)));
        }
        self.counters.misses += 1;
        None
    }

    /// The most recent connection, when its posted wait has not been seen by the kernel yet
    /// (checked in since the shard last waited there: its look would be a peek), gives its
    /// place to the most recent of the next [`SEEN_SEARCH`] whose wait has: a busy shard
    /// reuses connections within one turn of its loop, and would otherwise peek at them.
    fn prefer_seen(&mut self, backend: usize) {
        let stack = &mut self.stacks[backend];
        let reaps = monoio::utils::uring_reaps();
        let seen = |key: usize| self.conns[key].armed.as_ref().map(|a| a.reaps != reaps);
        let Some(&top) = stack.last() else {
            return;
        };
        if seen(top) != Some(false) {
            return;
        }
        let n = stack.len();
        let deeper = stack[n.saturating_sub(SEEN_SEARCH + 1)..n - 1]
            .iter()
            .rposition(|&k| seen(k) == Some(true));
        if let Some(i) = deeper {
            let i = n.saturating_sub(SEEN_SEARCH + 1) + i;
            stack.swap(i, n - 1);
        }
    }

    /// Returns a connection for reuse; drops it when the backend's idle bound is reached or when
    /// it holds bytes past its response ([`Transport::holds_input`]). At the shard's bound the
    /// shard's oldest idle connection is closed for it.
    /// `small`: its next response is expected to fit in a ring buffer
    /// ([`crate::upstream::state::Backends::receives`]): a receive is posted on it, else a
    /// readiness wait.
    pub fn checkin(&mut self, backend: usize, mut stream: Transport, now: Instant, small: bool) {
        // Bytes past the response's end that a TLS stream already decrypted: the checkout's
        // look at the socket would not see them, and the next request would read them.
        if stream.holds_input() {
            self.counters.evicted_dead += 1;
            return stream.close_now();
        }
        if let Some(next) = &self.successor {
            // A request that started before a reload: its backend in the new list, if it
            // remains; a removed backend's connection is closed. The successor is never
            // borrowed while this one is (checkins do not nest).
            match (next.map.get(backend), next.pool.try_borrow_mut()) {
                (Some(Some(b)), Ok(mut pool)) => pool.checkin(*b, stream, now, small),
                _ => stream.close_now(),
            }
            return;
        }
        if self.stacks[backend].len() >= self.max_idle[backend] || self.max_total == 0 {
            self.counters.rejected_full += 1;
            return stream.close_now();
        }
        if self.conns.len() >= self.max_total && self.close_oldest() {
            self.counters.evicted_shard_full += 1;
        }
        let key = self.insert(Idle {
            armed: Armed::post(&stream, self.ring.as_deref().filter(|_| small)),
            stream,
            backend,
            since: now,
            older: NONE,
            newer: NONE,
        });
        self.stacks[backend].push(key);
    }

    /// Closes idle connections that expired or that their backend closed. Run periodically.
    pub fn sweep(&mut self, now: Instant) {
        let mut dead = Vec::new();
        for (key, idle) in self.conns.iter_mut() {
            if now.duration_since(idle.since) >= self.idle_timeout[idle.backend] {
                self.counters.evicted_idle += 1;
                dead.push(key);
            } else if look(idle, self.ring.as_deref(), &mut self.counters.probes) == Probe::Dead {
                self.counters.evicted_dead += 1;
                dead.push(key);
            }
        }
        for key in dead {
            let idle = self.remove(key);
            self.stacks[idle.backend].retain(|&k| k != key);
            idle.stream.close_now();
        }
    }

    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.conns.len()
    }

    /// Idle connections to one backend.
    pub fn idle_for(&self, backend: usize) -> usize {
        self.stacks.get(backend).map_or(0, Vec::len)
    }

    /// Hands every idle connection over to the pool of a reloaded snapshot: `map[i]` is
    /// backend `i`'s index in the new backend list, `None` for a removed backend, whose
    /// connections are closed (its drain: nothing new is sent to it). From now on this pool
    /// forwards checkins there too. Counters move with the connections. Whatever the pool
    /// stores is moved as it is.
    pub fn hand_over(
        &mut self,
        next: Rc<RefCell<Pool>>,
        map: impl Into<std::sync::Arc<[Option<usize>]>>,
    ) {
        let map = map.into();
        {
            let mut to = next.borrow_mut();
            to.counters = self.counters;
            // Oldest first, so that each backend's stack keeps its LIFO order and the new
            // list its checkin order.
            let mut key = self.oldest;
            while key != NONE {
                let next = self.conns[key].newer;
                let idle = self.remove(key);
                key = next;
                let Some(Some(b)) = map.get(idle.backend).copied() else {
                    idle.stream.close_now();
                    continue;
                };
                if to.stacks.get(b).is_some_and(|s| s.len() < to.max_idle[b]) && to.max_total > 0 {
                    // Over a lower shard bound the newest stay, as at a checkin.
                    if to.conns.len() >= to.max_total {
                        to.close_oldest();
                    }
                    let key = to.insert(Idle { backend: b, ..idle });
                    to.stacks[b].push(key);
                } else {
                    idle.stream.close_now();
                }
            }
        }
        self.conns.clear();
        self.stacks = vec![Vec::new(); self.max_idle.len()];
        self.successor = Some(Successor { pool: next, map });
    }

    /// Drops every idle connection (shutdown).
    pub fn clear(&mut self) {
        for idle in self.conns.drain() {
            idle.stream.close_now();
        }
        self.oldest = NONE;
        self.newest = NONE;
        for s in &mut self.stacks {
            s.clear();
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
