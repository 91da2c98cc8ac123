//! Stage 5 of the pipeline, *pool*: each shard keeps its own idle keep-alive connections to
//! backends in a `slab`, with a LIFO stack of slab keys per backend (the most recently used
//! connection is the warmest). Idle connections are bounded per backend, closed after the
//! upstream's `idle_timeout`, and a periodic sweep closes those the backend has closed. Every
//! checkout looks at its candidate ([`Pool::checkout_armed`]), so that it never hands out a
//! connection the backend closed or wrote stray bytes on: on io_uring a plain connection is
//! checked in with a read-readiness wait posted on it (no syscall: it goes with the driver's
//! next submission), which the checkout looks at without a syscall and the exchange then awaits
//! for the response; elsewhere (epoll, TLS, or a wait the kernel has not seen yet) the checkout
//! [`probe`]s with a `MSG_PEEK`. On a reload a shard's pool hands its connections to the next
//! snapshot's pool by backend identity ([`Pool::hand_over`]) and forwards later checkins there.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::tcp::Readiness;
use monoio::net::TcpStream;
use slab::Slab;

use crate::transport::{recv_into, Transport};

struct Idle {
    stream: Transport,
    /// io_uring and a plain connection: the readiness wait posted at checkin.
    armed: Option<Armed>,
    backend: usize,
    since: Instant,
}

/// A read-readiness wait posted on an idle connection: it completes when the backend closes,
/// resets or writes, which is all a checkout needs to know, and a pending one is looked at
/// without a syscall. `reaps`: the driver's count of waits in the kernel
/// ([`monoio::utils::uring_reaps`]) when it was posted; until that count moves, the kernel has
/// not seen the wait (or has not posted what it saw: DEFER_TASKRUN), and a checkout probes.
struct Armed {
    wait: Readiness,
    reaps: u64,
}

impl Armed {
    /// Posts one on `stream` where that costs no syscall (io_uring, plain TCP).
    fn post(stream: &Transport) -> Option<Armed> {
        if monoio::utils::is_legacy() {
            return None;
        }
        let Transport::Plain(s) = stream else {
            return None;
        };
        let wait = s.armed_readable().ok()?;
        Some(Armed {
            wait,
            reaps: monoio::utils::uring_reaps(),
        })
    }
}

/// Looks at an idle connection: its posted wait when the kernel has seen it (pending = nothing
/// arrived as of the shard's last wait in the kernel), a [`probe`] otherwise (counted in
/// `probes`).
fn look(idle: &mut Idle, probes: &mut u64) -> Probe {
    match &mut idle.armed {
        Some(a) if a.reaps != monoio::utils::uring_reaps() => {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::Pin::new(&mut a.wait).poll(&mut cx) {
                std::task::Poll::Pending => Probe::Alive,
                std::task::Poll::Ready(_) => Probe::Dead,
            }
        }
        _ => {
            *probes += 1;
            probe(idle.stream.tcp())
        }
    }
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
            counters: PoolCounters::default(),
        }
    }

    /// Takes the most recently returned connection to `backend` that has not expired and on
    /// which the backend has neither closed nor sent anything since it was returned (bytes a
    /// backend sent beyond its framing would otherwise become the next client's response).
    pub fn checkout(&mut self, backend: usize, now: Instant) -> Option<Transport> {
        self.checkout_armed(backend, now).map(|(stream, _)| stream)
    }

    /// [`Pool::checkout`], with the connection's posted readiness wait when it has one: the
    /// exchange awaits it for the response instead of posting another.
    pub fn checkout_armed(
        &mut self,
        backend: usize,
        now: Instant,
    ) -> Option<(Transport, Option<Readiness>)> {
        let timeout = self.idle_timeout[backend];
        while let Some(key) = self.stacks[backend].pop() {
            let mut idle = self.conns.remove(key);
            if now.duration_since(idle.since) >= timeout {
                self.counters.evicted_idle += 1;
                continue;
            }
            if look(&mut idle, &mut self.counters.probes) == Probe::Dead {
                self.counters.evicted_dead += 1;
                continue;
            }
            self.counters.hits += 1;
            return Some((idle.stream, idle.armed.map(|a| a.wait)));
        }
        self.counters.misses += 1;
        None
    }

    /// Returns a connection for reuse; drops it when the backend's idle bound is reached.
    pub fn checkin(&mut self, backend: usize, stream: Transport, now: Instant) {
        if let Some(next) = &self.successor {
            // A request that started before a reload: its backend in the new list, if it
            // remains; a removed backend's connection is closed. The successor is never
            // borrowed while this one is (checkins do not nest).
            if let (Some(Some(b)), Ok(mut pool)) =
                (next.map.get(backend), next.pool.try_borrow_mut())
            {
                pool.checkin(*b, stream, now);
            }
            return;
        }
        if self.stacks[backend].len() >= self.max_idle[backend] {
            self.counters.rejected_full += 1;
            return;
        }
        let key = self.conns.insert(Idle {
            armed: Armed::post(&stream),
            stream,
            backend,
            since: now,
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
            } else if look(idle, &mut self.counters.probes) == Probe::Dead {
                self.counters.evicted_dead += 1;
                dead.push(key);
            }
        }
        for key in dead {
            let idle = self.conns.remove(key);
            self.stacks[idle.backend].retain(|&k| k != key);
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
            // Oldest first, so that each backend's stack keeps its LIFO order.
            for stack in std::mem::take(&mut self.stacks) {
                for key in stack {
                    let idle = self.conns.remove(key);
                    let Some(Some(b)) = map.get(idle.backend).copied() else {
                        continue;
                    };
                    if to.stacks.get(b).is_some_and(|s| s.len() < to.max_idle[b]) {
                        let key = to.conns.insert(Idle { backend: b, ..idle });
                        to.stacks[b].push(key);
                    }
                }
            }
        }
        self.conns.clear();
        self.stacks = vec![Vec::new(); self.max_idle.len()];
        self.successor = Some(Successor { pool: next, map });
    }

    /// Drops every idle connection (shutdown).
    pub fn clear(&mut self) {
        self.conns.clear();
        for s in &mut self.stacks {
            s.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn checkout_skips_connections_the_backend_closed_or_wrote_on_while_idle() {
        use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
        use std::io::Read;
        on_both_drivers(|| {
            Box::pin(async {
                let uring = !monoio::utils::is_legacy();
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let mut pool = Pool::new(&[(8, Duration::from_secs(60))]);
                let now = Instant::now();

                // Returned and taken again at once: the kernel has not seen the wait, so the
                // checkout peeks (and so it does on epoll).
                let s = TcpStream::connect_addr(addr).await.unwrap();
                let _peer = l.accept().unwrap().0;
                pool.checkin(0, Transport::Plain(s), now);
                let (s, ready) = pool.checkout_armed(0, now).unwrap();
                assert_eq!(pool.counters.probes, 1);
                assert_eq!(ready.is_some(), uring, "posted on io_uring only");
                drop((s, ready));

                let mut peers = Vec::new();
                let mut watches = Vec::new();
                for _ in 0..3 {
                    let s = TcpStream::connect_addr(addr).await.unwrap();
                    peers.push(l.accept().unwrap().0);
                    // The test's own wait on the same socket: once it has completed, the
                    // driver has waited in the kernel and reaped what the pool's wait saw too.
                    watches.push(s.armed_readable().unwrap());
                    pool.checkin(0, Transport::Plain(s), now);
                }
                // Handed out newest first: peers[2] sends stray bytes, peers[1] closes,
                // peers[0] stays quiet.
                peers[2].write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
                peers[1].shutdown(std::net::Shutdown::Both).unwrap();
                watches.pop().unwrap().await.unwrap();
                watches.pop().unwrap().await.unwrap();
                let (got, ready) = pool.checkout_armed(0, now).expect("the quiet one");
                assert_eq!(pool.counters.evicted_dead, 2, "{:?}", pool.counters);
                let peeked = if uring { 1 } else { 4 };
                assert_eq!(pool.counters.probes, peeked, "{:?}", pool.counters);

                // The wait handed out is the one the response is awaited on.
                let Transport::Plain(mut s) = got else {
                    unreachable!()
                };
                let (r, _) = s.write_all(b"ping").await;
                r.unwrap();
                let mut buf = [0u8; 4];
                peers[0].read_exact(&mut buf).unwrap();
                peers[0].write_all(b"pong").unwrap();
                match ready {
                    Some(wait) => wait.await.unwrap(),
                    None => s.readable(false).await.unwrap(),
                }
                let (r, buf) = s.read(Vec::with_capacity(8)).await;
                assert_eq!(r.unwrap(), 4);
                assert_eq!(&buf[..], b"pong");

                // The sweep looks the same way: a quiet connection stays, a closed one goes.
                let watch = s.armed_readable().unwrap();
                pool.checkin(0, Transport::Plain(s), now);
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
                    pool.checkin(0, Transport::Plain(s), now);
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
}
