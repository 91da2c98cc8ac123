//! Tests of the circuit breaker (`breaker.rs`, feeding stages 4-6): its shares, permits and
//! queue, on both drivers, synchronised by polling the futures and yielding to spawned tasks
//! (never by sleeping).

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
use monoio::task::JoinHandle;

/// A request's turn that avoids no backend.
fn turn() -> Turn {
    Turn::new([])
}

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
                    let p = b.wait_request(&mut turn(), || {}, |_| true).await.unwrap();
                    order.borrow_mut().push(n);
                    p
                })
            };
            let (w1, w2) = (waiter(1), waiter(2));
            // Both are queued before anything is released.
            monoio::task::yield_to_others().await;
            assert_eq!(b.waiting.borrow().len(), 2);
            // The queue is full: a third is refused at once.
            let full = b
                .wait_request(&mut turn(), || {}, |_| true)
                .await
                .unwrap_err();
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
            let open = b
                .wait_request(&mut turn(), || {}, |_| true)
                .await
                .unwrap_err();
            assert_eq!(
                open.queue,
                Some(Queued::TimedOut(Duration::from_millis(50)))
            );
            assert!(b.waiting.borrow().is_empty());
            // A waiter dropped while it waits leaves the queue too; the unit released
            // after it goes back to the pool.
            let b2 = b.clone();
            let gone = monoio::spawn(async move {
                let mut t = turn();
                let wait = b2.wait_request(&mut t, || {}, |_| true);
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
            let mut t = turn();
            let mut gone = Box::pin(b.wait_request(&mut t, || {}, |_| true));
            poll_fn(|cx| {
                assert!(std::future::Future::poll(gone.as_mut(), cx).is_pending());
                Poll::Ready(())
            })
            .await;
            let b2 = b.clone();
            let next =
                monoio::spawn(async move { b2.wait_request(&mut turn(), || {}, |_| true).await });
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

/// Two linked breakers (one tier of an upstream that is not pinned), each at its limit
/// of one request, with the permits that hold them.
fn linked_and_full() -> (Rc<Breaker>, Rc<Breaker>, Permit, Permit) {
    let (a, b) = (queued(1, 4, 60_000), queued(1, 4, 60_000));
    Breaker::link(&[&a, &b]);
    assert!(a.any_linked(|x| Rc::ptr_eq(x, &b)) && b.any_linked(|x| Rc::ptr_eq(x, &a)));
    let (pa, pb) = (
        a.try_acquire(Resource::Requests),
        b.try_acquire(Resource::Requests),
    );
    (a, b, pa.unwrap(), pb.unwrap())
}

/// Spawns a request that waits at `home` with `turn`, refusing a unit at `refused`.
fn waiter(home: &Rc<Breaker>, refused: Option<&Rc<Breaker>>) -> JoinHandle<Permit> {
    let (home, refused) = (home.clone(), refused.cloned());
    monoio::spawn(async move {
        let mut t = turn();
        loop {
            let p = home.wait_request(&mut t, || {}, |_| true).await.unwrap();
            match &refused {
                Some(r) if p.is_at(r) => t.refuse(p),
                _ => return p,
            }
        }
    })
}

#[test]
fn a_unit_freed_at_a_linked_breaker_goes_to_the_oldest_waiter_of_either() {
    on_both_drivers(|| {
        Box::pin(async {
            let (a, b, pa, pb) = linked_and_full();
            let (w1, w2, w3) = (waiter(&a, None), waiter(&b, None), waiter(&a, None));
            monoio::task::yield_to_others().await;
            assert_eq!((a.waiting(), b.waiting()), (2, 1));
            // Freed at b: the oldest waiter, queued at a, takes it.
            drop(pb);
            let p1 = w1.await;
            assert!(
                p1.is_at(&b),
                "the oldest waiter is served by whichever frees first"
            );
            drop(pa);
            let p2 = w2.await;
            assert!(p2.is_at(&a));
            drop(p1);
            let p3 = w3.await;
            assert!(p3.is_at(&b));
            drop((p2, p3));
            assert_eq!(
                (a.in_use(Resource::Requests), b.in_use(Resource::Requests)),
                (0, 0)
            );
            // Unlinked (a reload made the upstream pinned), a unit serves its own queue.
            Breaker::link(&[&a]);
            Breaker::link(&[&b]);
            assert!(!a.any_linked(|_| true));
            let (pa, pb) = (
                a.try_acquire(Resource::Requests),
                b.try_acquire(Resource::Requests),
            );
            let w = waiter(&a, None);
            monoio::task::yield_to_others().await;
            drop(pb);
            assert_eq!((a.waiting(), b.in_use(Resource::Requests)), (1, 0));
            drop(pa);
            assert!(w.await.is_at(&a));
        })
    });
}

#[test]
fn a_refused_unit_passes_on_and_the_refuser_keeps_its_turn() {
    on_both_drivers(|| {
        Box::pin(async {
            let (a, b, pa, pb) = linked_and_full();
            // w1 cannot use b (drained while it waited); w2 can.
            let (w1, w2) = (waiter(&a, Some(&b)), waiter(&a, None));
            monoio::task::yield_to_others().await;
            drop(pb);
            // w1 was handed b's unit, refused it, and waits again, first.
            let p2 = w2.await;
            assert!(p2.is_at(&b));
            assert_eq!(a.waiting(), 1);
            drop(pa);
            let p1 = w1.await;
            assert!(p1.is_at(&a), "the refuser kept its turn at a");
            // A unit that no waiter takes goes back to the pool.
            let w3 = waiter(&a, Some(&b));
            monoio::task::yield_to_others().await;
            drop(p2);
            // Handed to w3, which refuses it.
            monoio::task::yield_to_others().await;
            assert_eq!((a.waiting(), b.in_use(Resource::Requests)), (1, 0));
            // A request's turn skips what it tried from the start: b's free unit is not
            // taken at its wait, so it queues.
            let mut t = Turn::new([&b]);
            let mut tried = Box::pin(a.wait_request(&mut t, || {}, |_| true));
            poll_fn(|cx| {
                assert!(std::future::Future::poll(tried.as_mut(), cx).is_pending());
                Poll::Ready(())
            })
            .await;
            assert_eq!(a.waiting(), 2);
            drop(tried);
            drop(p1);
            assert!(w3.await.is_at(&a));
            // Nor is a free unit of the breaker it waits at, if it avoids that one.
            assert_eq!(
                (a.in_use(Resource::Requests), b.in_use(Resource::Requests)),
                (0, 0)
            );
            let mut t = Turn::new([&a, &b]);
            let mut avoids_all = Box::pin(a.wait_request(&mut t, || {}, |_| true));
            poll_fn(|cx| {
                assert!(std::future::Future::poll(avoids_all.as_mut(), cx).is_pending());
                Poll::Ready(())
            })
            .await;
            assert_eq!(a.waiting(), 1);
        })
    });
}

#[test]
fn new_limits_count_what_is_in_use_and_a_raised_limit_serves_the_waiters_first() {
    on_both_drivers(|| {
        Box::pin(async {
            // A reload changes a remaining backend's limits (`Breaker::set_limits`).
            let b = queued(1, 4, 60_000);
            let held = b.try_acquire(Resource::Requests).unwrap();
            let (w1, w2) = (waiter(&b, None), waiter(&b, None));
            monoio::task::yield_to_others().await;
            assert_eq!(b.waiting(), 2);
            // Another queue_timeout: the request in flight still fills the one place.
            b.set_limits(BreakerLimits {
                queue_timeout: Duration::from_secs(30),
                ..b.limits()
            });
            assert!(b.try_acquire(Resource::Requests).is_err());
            assert_eq!(b.waiting(), 2);
            // Room for two more: the waiters take it, in order, before any newcomer.
            b.set_limits(BreakerLimits {
                max_requests: Some(3),
                ..b.limits()
            });
            assert_eq!((b.waiting(), b.in_use(Resource::Requests)), (0, 3));
            assert!(b.try_acquire(Resource::Requests).is_err());
            let (p1, p2) = (w1.await, w2.await);
            // Lowered below what is in use: nothing new until enough finish.
            b.set_limits(BreakerLimits {
                max_requests: Some(1),
                ..b.limits()
            });
            drop((p1, p2));
            assert!(b.try_acquire(Resource::Requests).is_err());
            drop(held);
            assert_eq!(b.in_use(Resource::Requests), 0);
            assert!(b.has_request_room());
        })
    });
}

#[test]
fn a_free_unit_at_a_linked_backend_the_request_may_not_use_is_left_alone() {
    on_both_drivers(|| {
        Box::pin(async {
            // b has room because nothing is sent to it (it is down): a request that waits
            // at full a neither takes b's unit nor comes to avoid b, so once b is back it
            // may be served there.
            let (a, b) = (queued(1, 4, 60_000), queued(1, 4, 60_000));
            Breaker::link(&[&a, &b]);
            let pa = a.try_acquire(Resource::Requests).unwrap();
            let (a2, b2) = (a.clone(), b.clone());
            let w = monoio::spawn(async move {
                let mut t = turn();
                let down = |x: &Rc<Breaker>| !Rc::ptr_eq(x, &b2);
                a2.wait_request(&mut t, || {}, down).await.unwrap()
            });
            monoio::task::yield_to_others().await;
            assert_eq!((a.waiting(), b.in_use(Resource::Requests)), (1, 0));
            // A unit handed over at b (b back, a request there finished) is taken.
            let pb = b.try_acquire(Resource::Requests).unwrap();
            drop(pb);
            let p = w.await;
            assert!(p.is_at(&b), "b's unit went to the waiter");
            drop((p, pa));
        })
    });
}

#[test]
fn a_lowered_limit_holds_while_requests_wait() {
    on_both_drivers(|| {
        Box::pin(async {
            // Three in flight under max_requests = 3, two waiting; a reload lowers the limit
            // to 1. A finishing request's unit is not handed on while more than the new
            // limit are in use: a queue that never empties would otherwise keep the old one.
            let b = queued(3, 4, 60_000);
            let held: Vec<Permit> = (0..3)
                .map(|_| b.try_acquire(Resource::Requests).unwrap())
                .collect();
            let (w1, w2) = (waiter(&b, None), waiter(&b, None));
            monoio::task::yield_to_others().await;
            assert_eq!(b.waiting(), 2);
            b.set_limits(BreakerLimits {
                max_requests: Some(1),
                ..b.limits()
            });
            let mut held = held.into_iter();
            drop(held.next());
            assert_eq!((b.waiting(), b.in_use(Resource::Requests)), (2, 2));
            drop(held.next());
            assert_eq!((b.waiting(), b.in_use(Resource::Requests)), (2, 1));
            // At the limit: the last one's unit goes to the first waiter, as before.
            drop(held.next());
            assert_eq!((b.waiting(), b.in_use(Resource::Requests)), (1, 1));
            drop(w1.await);
            assert_eq!((b.waiting(), b.in_use(Resource::Requests)), (0, 1));
            drop(w2.await);
            assert_eq!(b.in_use(Resource::Requests), 0);
        })
    });
}

#[test]
fn a_lowered_limit_holds_for_the_waiters_of_a_linked_breaker() {
    on_both_drivers(|| {
        Box::pin(async {
            // The same at a linked breaker: a's units do not go to b's waiter while a is
            // over its new limit.
            let (a, b, pa, pb) = linked_and_full();
            a.set_limits(BreakerLimits {
                max_requests: Some(2),
                ..a.limits()
            });
            let pa2 = a.try_acquire(Resource::Requests).unwrap();
            let w = waiter(&b, None);
            monoio::task::yield_to_others().await;
            a.set_limits(BreakerLimits {
                max_requests: Some(1),
                ..a.limits()
            });
            drop(pa);
            assert_eq!((b.waiting(), a.in_use(Resource::Requests)), (1, 1));
            drop(pa2);
            let p = w.await;
            assert!(p.is_at(&a));
            drop((p, pb));
            assert_eq!(
                (a.in_use(Resource::Requests), b.in_use(Resource::Requests)),
                (0, 0)
            );
        })
    });
}
