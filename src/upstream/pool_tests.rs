//! Unit tests of [`super`], the pool: liveness looks on both engines, LIFO order and
//! expiry, the shard bound and its list of idle connections through every removal path,
//! and the hand-over to a reloaded snapshot's pool.

use super::*;
use crate::bufring::{Receive, Received};
use std::io::Write;

use crate::test_engines::on_both_drivers;

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
            let port = |p: &Pool, k: usize| p.conns[k].stream.tcp().local_addr().unwrap().port();
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
