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
    /// Old backend index → new one.
    map: Vec<Option<usize>>,
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
    pub fn hand_over(&mut self, next: Rc<RefCell<Pool>>, map: Vec<Option<usize>>) {
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
mod tests {
    use super::*;
    use crate::bufring::{Receive, Received};
    use std::io::Write;

    fn on_both_drivers(f: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>) {
        for engine in crate::test_engines::engines() {
            crate::test_engines::block_on(engine, f());
        }
    }

    #[test]
    fn probe_tells_alive_from_closed_and_from_stray_bytes() {
        on_both_drivers(|| {
            Box::pin(async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();

                let s = TcpStream::connect_addr(addr).await.unwrap();
                let (peer, _) = l.accept().unwrap();
                assert_eq!(probe(&s), Probe::Alive);
                drop(peer);
                s.readable(false).await.unwrap(); // the FIN has arrived
                assert_eq!(probe(&s), Probe::Dead);

                let s = TcpStream::connect_addr(addr).await.unwrap();
                let (mut peer, _) = l.accept().unwrap();
                peer.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
                s.readable(false).await.unwrap();
                assert_eq!(
                    probe(&s),
                    Probe::Dead,
                    "unsolicited bytes make a connection unusable"
                );

                // A reset (the peer closes with SO_LINGER 0).
                let s = TcpStream::connect_addr(addr).await.unwrap();
                let (peer, _) = l.accept().unwrap();
                assert_eq!(probe(&s), Probe::Alive);
                socket2::SockRef::from(&peer)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(peer);
                s.readable(false).await.unwrap();
                assert_eq!(probe(&s), Probe::Dead, "a reset connection is dead");
            })
        });
    }

    /// A pool with the shard's ring (receives posted at checkin) or without one (readiness
    /// waits: a kernel without provided-buffer rings).
    fn pool_with(ring: &Option<Rc<RefCell<BufRing>>>, max_idle: usize) -> Pool {
        let pool = Pool::new(&[(max_idle, Duration::from_secs(60))]);
        match ring {
            Some(r) => pool.with_ring(r.clone()),
            None => pool,
        }
    }

    #[test]
    fn checkout_skips_connections_the_backend_closed_or_wrote_on_while_idle() {
        on_both_drivers(|| Box::pin(skips_dead(None)));
        on_both_drivers(|| Box::pin(skips_dead(Some(Rc::default()))));
    }

    async fn skips_dead(ring: Option<Rc<RefCell<BufRing>>>) {
        use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
        use std::io::Read;
        let uring = !monoio::utils::is_legacy();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut pool = pool_with(&ring, 8);
        let now = Instant::now();

        // Returned and taken again at once: the kernel has not seen the posted op, so the
        // checkout peeks (and so it does on epoll).
        let s = TcpStream::connect_addr(addr).await.unwrap();
        let _peer = l.accept().unwrap().0;
        pool.checkin(0, Transport::Plain(s), now, true);
        let (s, posted) = pool.checkout_armed(0, now).unwrap();
        assert_eq!(pool.counters.probes, 1);
        assert_eq!(posted.is_some(), uring, "posted on io_uring only");
        let receive = matches!(posted, Some(Posted::Receive(_)));
        assert_eq!(
            receive,
            uring && ring.is_some(),
            "a receive where there is a ring"
        );
        drop((s, posted));

        let mut peers = Vec::new();
        let mut watches = Vec::new();
        for _ in 0..3 {
            let s = TcpStream::connect_addr(addr).await.unwrap();
            peers.push(l.accept().unwrap().0);
            // The test's own wait on the same socket: once it has completed, the driver has
            // waited in the kernel and reaped what the pool's op saw too.
            watches.push(s.armed_readable().unwrap());
            pool.checkin(0, Transport::Plain(s), now, true);
        }
        // Handed out newest first: peers[2] sends stray bytes, peers[1] closes, peers[0]
        // stays quiet.
        peers[2].write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        peers[1].shutdown(std::net::Shutdown::Both).unwrap();
        watches.pop().unwrap().await.unwrap();
        watches.pop().unwrap().await.unwrap();
        let (got, posted) = pool.checkout_armed(0, now).expect("the quiet one");
        assert_eq!(pool.counters.evicted_dead, 2, "{:?}", pool.counters);
        let peeked = if uring { 1 } else { 4 };
        assert_eq!(pool.counters.probes, peeked, "{:?}", pool.counters);

        // The op handed out is the one the response is awaited on: a receive is taken (and
        // the ring topped up for it) before the request goes out, as the exchange does.
        let ring_ref = ring.as_deref();
        let receive = match posted {
            Some(Posted::Receive(op)) => Ok(Receive::new(op, ring_ref.unwrap(), || {
                Vec::with_capacity(4096)
            })),
            other => Err(other),
        };
        let Transport::Plain(mut s) = got else {
            unreachable!()
        };
        let (r, _) = s.write_all(b"ping").await;
        r.unwrap();
        let mut buf = [0u8; 4];
        peers[0].read_exact(&mut buf).unwrap();
        peers[0].write_all(b"pong").unwrap();
        let got = match receive {
            Ok(receive) => match receive.await.unwrap() {
                Received::Data(buf) => buf,
                _ => panic!("the response, received into the ring"),
            },
            Err(Some(Posted::Ready(wait))) => {
                wait.await.unwrap();
                s.read(Vec::with_capacity(8)).await.1
            }
            Err(_) => {
                s.readable(false).await.unwrap();
                s.read(Vec::with_capacity(8)).await.1
            }
        };
        assert_eq!(&got[..], b"pong");

        // The sweep looks the same way: a quiet connection stays, a closed one goes.
        let watch = s.armed_readable().unwrap();
        pool.checkin(0, Transport::Plain(s), now, true);
        peers[0].shutdown(std::net::Shutdown::Both).unwrap();
        watch.await.unwrap();
        pool.sweep(now);
        assert_eq!(
            pool.idle_count(),
            0,
            "the sweep closes what the backend closed"
        );
        let peeked = if uring { 1 } else { 5 };
        assert_eq!(pool.counters.probes, peeked, "{:?}", pool.counters);
        if let Some(ring) = &ring {
            // The stray bytes' and the closes' buffers (if the kernel picked any) went back.
            let r = ring.borrow();
            assert!(r.held() <= 1, "{}", r.held());
        }
    }

    #[test]
    fn a_busy_checkout_takes_a_connection_it_can_check_without_a_syscall() {
        on_both_drivers(|| {
            Box::pin(async {
                let uring = !monoio::utils::is_legacy();
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let mut pool = pool_with(&Some(Rc::default()), 8);
                let now = Instant::now();
                let mut peers = Vec::new();
                let mut locals = Vec::new();
                let s = TcpStream::connect_addr(addr).await.unwrap();
                peers.push(l.accept().unwrap().0);
                locals.push(s.local_addr().unwrap());
                pool.checkin(0, Transport::Plain(s), now, true);
                // The kernel sees the first one's op (the shard waits there once: for a
                // socket of the test's own)...
                let other = TcpStream::connect_addr(addr).await.unwrap();
                let mut other_peer = l.accept().unwrap().0;
                let watch = other.armed_readable();
                other_peer.write_all(b"x").unwrap();
                if let Ok(watch) = watch {
                    watch.await.unwrap();
                }
                // ...not the second's: returned in this turn of the loop.
                let s = TcpStream::connect_addr(addr).await.unwrap();
                peers.push(l.accept().unwrap().0);
                locals.push(s.local_addr().unwrap());
                pool.checkin(0, Transport::Plain(s), now, true);
                let (got, _) = pool.checkout_armed(0, now).unwrap();
                let want = if uring { locals[0] } else { locals[1] };
                assert_eq!(
                    got.tcp().local_addr().unwrap(),
                    want,
                    "on io_uring the one the kernel has seen, else the most recent"
                );
                let probes = if uring { 0 } else { 1 };
                assert_eq!(pool.counters.probes, probes, "{:?}", pool.counters);
            })
        });
    }

    #[test]
    fn checkout_is_lifo_bounded_and_expires() {
        on_both_drivers(|| {
            Box::pin(async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let mut pool = Pool::new(&[(2, Duration::from_secs(60))]);
                let now = Instant::now();
                let mut peers = Vec::new();
                let mut locals = Vec::new();
                for _ in 0..3 {
                    let s = TcpStream::connect_addr(addr).await.unwrap();
                    peers.push(l.accept().unwrap().0);
                    locals.push(s.local_addr().unwrap());
                    pool.checkin(0, Transport::Plain(s), now, true);
                }
                assert_eq!(pool.idle_count(), 2, "bounded by max_idle_per_backend");
                assert_eq!(pool.counters.rejected_full, 1);
                let got = pool.checkout(0, now).unwrap();
                assert_eq!(
                    got.tcp().local_addr().unwrap(),
                    locals[1],
                    "most recent first"
                );
                let later = now + Duration::from_secs(61);
                assert!(
                    pool.checkout(0, later).is_none(),
                    "expired connections are dropped"
                );
                assert_eq!(pool.counters.evicted_idle, 1);
            })
        });
    }

    #[test]
    fn the_shard_bound_closes_the_oldest_idle_connection_of_any_backend() {
        on_both_drivers(|| {
            Box::pin(async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let limits = [(8, Duration::from_secs(60)); 3];
                let mut pool = Pool::new(&limits).with_shard_cap(3);
                let now = Instant::now();
                let mut peers = Vec::new();
                let mut locals = Vec::new();
                // Backends 0, 1, 0, 2, 1: the bound of 3 closes the two oldest, the first
                // of backend 0 and the first of backend 1.
                for backend in [0, 1, 0, 2, 1] {
                    let s = TcpStream::connect_addr(addr).await.unwrap();
                    peers.push(l.accept().unwrap().0);
                    locals.push(s.local_addr().unwrap());
                    pool.checkin(backend, Transport::Plain(s), now, true);
                }
                assert_eq!(pool.idle_count(), 3);
                assert_eq!(pool.counters.evicted_shard_full, 2);
                assert_eq!(
                    (pool.idle_for(0), pool.idle_for(1), pool.idle_for(2)),
                    (1, 1, 1)
                );
                let local = |t: Transport| t.tcp().local_addr().unwrap();
                assert_eq!(local(pool.checkout(1, now).unwrap()), locals[4]);
                // Out of descriptors: the oldest left (backend 0's second) goes first.
                assert!(pool.evict_oldest());
                assert_eq!(pool.counters.evicted_descriptors, 1);
                assert_eq!(pool.idle_for(0), 0);
                assert_eq!(local(pool.checkout(2, now).unwrap()), locals[3]);
                assert!(!pool.evict_oldest(), "nothing left to close");
                assert_eq!(pool.idle_count(), 0);
                // The list is whole again after emptying: a new checkin is the oldest.
                let s = TcpStream::connect_addr(addr).await.unwrap();
                peers.push(l.accept().unwrap().0);
                pool.checkin(2, Transport::Plain(s), now, true);
                assert!(pool.evict_oldest());
                assert_eq!(pool.idle_count(), 0);
                // Closed ones are closed: each peer of an evicted connection reads its EOF
                // (awaited: on io_uring the close goes with the driver's next submission).
                for (i, peer) in peers.into_iter().enumerate().take(3) {
                    peer.set_nonblocking(true).unwrap();
                    let mut peer = TcpStream::from_std(peer).unwrap();
                    let (n, _) = monoio::io::AsyncReadRent::read(&mut peer, vec![0u8; 1]).await;
                    assert_eq!(n.unwrap(), 0, "{i}");
                }
            })
        });
    }

    #[test]
    fn a_hand_over_keeps_the_shard_bound_and_the_newest() {
        on_both_drivers(|| {
            Box::pin(async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let limits = [(8, Duration::from_secs(60)); 2];
                let mut old = Pool::new(&limits);
                let now = Instant::now();
                let mut peers = Vec::new();
                let mut locals = Vec::new();
                for backend in [0, 1, 0, 1] {
                    let s = TcpStream::connect_addr(addr).await.unwrap();
                    peers.push(l.accept().unwrap().0);
                    locals.push(s.local_addr().unwrap());
                    old.checkin(backend, Transport::Plain(s), now, true);
                }
                let next = Rc::new(RefCell::new(Pool::new(&limits).with_shard_cap(3)));
                old.hand_over(next.clone(), vec![Some(1), Some(0)]);
                assert_eq!(old.idle_count(), 0);
                let mut next = next.borrow_mut();
                assert_eq!(
                    (next.idle_for(0), next.idle_for(1)),
                    (2, 1),
                    "backends swapped"
                );
                // The bound keeps the three newest, in their order (the oldest was closed).
                assert!(next.evict_oldest());
                let local = |t: Transport| t.tcp().local_addr().unwrap();
                assert_eq!(local(next.checkout(1, now).unwrap()), locals[2]);
                assert_eq!(local(next.checkout(0, now).unwrap()), locals[3]);
                assert!(next.checkout(1, now).is_none());
            })
        });
    }

    /// The list of idle connections in checkin order is whole after every kind of removal:
    /// walked both ways it holds exactly the slab's keys, each stack's keys are in it, and
    /// the oldest is the one `evict_oldest` closes (review 13: a model of the list checked
    /// after random checkins, checkouts, evictions at the shard bound and for descriptors,
    /// and sweeps of expired connections, then a hand-over and a clear).
    fn assert_whole(pool: &Pool, model: &[usize]) {
        let mut forward = Vec::new();
        let mut key = pool.oldest;
        let mut prev = NONE;
        while key != NONE {
            assert_eq!(pool.conns[key].older, prev, "older link of {key}");
            forward.push(key);
            prev = key;
            key = pool.conns[key].newer;
        }
        assert_eq!(pool.newest, prev, "newest end");
        assert_eq!(
            forward.len(),
            pool.conns.len(),
            "the list holds every idle connection"
        );
        let in_stacks: usize = pool.stacks.iter().map(Vec::len).sum();
        assert_eq!(
            in_stacks,
            pool.conns.len(),
            "the stacks hold every idle connection"
        );
        for (b, stack) in pool.stacks.iter().enumerate() {
            for &k in stack {
                assert_eq!(pool.conns[k].backend, b);
            }
        }
        assert_eq!(forward.len(), model.len(), "model size");
    }

    #[test]
    fn the_idle_list_stays_whole_through_every_removal() {
        on_both_drivers(|| {
            Box::pin(async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let limits = [
                    (4, Duration::from_secs(60)),
                    (4, Duration::from_secs(60)),
                    (4, Duration::from_millis(1)),
                ];
                let mut pool = Pool::new(&limits).with_shard_cap(6);
                // The model: local ports of the idle connections, oldest first.
                let mut model: Vec<(u16, usize)> = Vec::new();
                let mut peers = Vec::new();
                let mut seed = 0x2545_f491_4f6c_dd1du64;
                let mut next = || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let port =
                    |p: &Pool, k: usize| p.conns[k].stream.tcp().local_addr().unwrap().port();
                for step in 0..300 {
                    let r = next();
                    let backend = (r >> 8) as usize % 3;
                    let now = Instant::now();
                    match r % 5 {
                        0 | 1 => {
                            let s = TcpStream::connect_addr(addr).await.unwrap();
                            peers.push(l.accept().unwrap().0);
                            let p = s.local_addr().unwrap().port();
                            let full = model.iter().filter(|m| m.1 == backend).count() >= 4;
                            pool.checkin(backend, Transport::Plain(s), now, true);
                            if !full {
                                if model.len() >= 6 {
                                    model.remove(0);
                                }
                                model.push((p, backend));
                            }
                        }
                        2 => {
                            // Backend 2's connections expire at once: a checkout of it
                            // closes them all.
                            let got = pool.checkout(
                                backend,
                                now + Duration::from_millis(2 * (backend == 2) as u64),
                            );
                            match got {
                                Some(t) => {
                                    let p = t.tcp().local_addr().unwrap().port();
                                    let i = model
                                        .iter()
                                        .position(|m| m.0 == p)
                                        .expect("a connection the model has");
                                    assert_eq!(model[i].1, backend);
                                    model.remove(i);
                                }
                                None => model.retain(|m| m.1 != backend),
                            }
                        }
                        3 => {
                            let oldest = (pool.oldest != NONE).then(|| port(&pool, pool.oldest));
                            assert_eq!(
                                oldest,
                                model.first().map(|m| m.0),
                                "step {step}: the oldest"
                            );
                            assert_eq!(pool.evict_oldest(), !model.is_empty());
                            if !model.is_empty() {
                                model.remove(0);
                            }
                        }
                        _ => {
                            pool.sweep(now + Duration::from_millis(2));
                            model.retain(|m| m.1 != 2);
                        }
                    }
                    let order: Vec<u16> = {
                        let mut v = Vec::new();
                        let mut k = pool.oldest;
                        while k != NONE {
                            v.push(port(&pool, k));
                            k = pool.conns[k].newer;
                        }
                        v
                    };
                    assert_eq!(
                        order,
                        model.iter().map(|m| m.0).collect::<Vec<_>>(),
                        "step {step}: checkin order"
                    );
                    assert_whole(
                        &pool,
                        &model.iter().map(|m| m.0 as usize).collect::<Vec<_>>(),
                    );
                }
                let next = Rc::new(RefCell::new(Pool::new(&limits).with_shard_cap(6)));
                pool.hand_over(next.clone(), vec![Some(1), Some(0), None]);
                assert_whole(&pool, &[]);
                model.retain(|m| m.1 != 2);
                let moved: Vec<u16> = {
                    let to = next.borrow();
                    let mut v = Vec::new();
                    let mut k = to.oldest;
                    while k != NONE {
                        v.push(port(&to, k));
                        k = to.conns[k].newer;
                    }
                    assert_whole(&to, &model.iter().map(|m| m.0 as usize).collect::<Vec<_>>());
                    v
                };
                assert_eq!(
                    moved,
                    model.iter().map(|m| m.0).collect::<Vec<_>>(),
                    "hand-over keeps the order"
                );
                next.borrow_mut().clear();
                assert_whole(&next.borrow(), &[]);
            })
        });
    }
}
