//! The shard's clock, read by every stage of the pipeline (deadlines in *parse* and *forward*,
//! the balancer's and the breakers' windows in *balance*, idle times in *pool*, latencies in
//! *respond*). Reading the time costs ~40 ns on this project's VM (vDSO, TSC) and one request
//! read it ~27 times, about 1 µs of a ~25 µs request; nginx reads it once per event-loop turn.
//! Here a connection's task reads it at most once per wake: [`fresh`] wraps the task's
//! future, and inside one poll of it [`now`] returns the time of its first call in that poll.
//! Between two polls there is always an `.await`, so anything timed across one is timed with
//! fresh readings; work done within one poll (microseconds, no waiting) reads as taking no time.
//! Outside a [`fresh`] task (another task, another thread) [`now`] reads the clock every time.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::time::Instant;

thread_local! {
    /// `None`: not inside a [`fresh`] poll. `Some(None)`: inside one, not read yet.
    static NOW: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
}

/// The time: inside a [`fresh`] task, the time this poll of it first asked for.
#[inline]
pub fn now() -> Instant {
    NOW.with(|c| match c.get() {
        Some(Some(t)) => t,
        Some(None) => {
            let t = Instant::now();
            c.set(Some(Some(t)));
            t
        }
        None => Instant::now(),
    })
}

/// Microseconds from `since` to [`now`], saturating (0 if `since` is later): for spans that
/// cross a wait (time to first byte, the backend's time).
#[inline]
pub fn micros(since: Instant) -> u64 {
    micros_between(since, now())
}

/// Microseconds from `since` to a reading of the clock itself: for a request's total time,
/// which may end in the poll it started in (a cache hit, a canned answer).
#[inline]
pub fn micros_total(since: Instant) -> u64 {
    micros_between(since, Instant::now())
}

fn micros_between(since: Instant, until: Instant) -> u64 {
    until
        .saturating_duration_since(since)
        .as_micros()
        .min(u128::from(u64::MAX)) as u64
}

/// Runs `task` with [`now`] read at most once per poll.
pub async fn fresh<F: Future>(task: F) -> F::Output {
    let mut task = pin!(task);
    std::future::poll_fn(move |cx| {
        let outer = NOW.replace(Some(None));
        let r = task.as_mut().poll(cx);
        NOW.set(outer);
        r
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    /// Returns `Pending` once (waking itself at once), so the task is polled again.
    async fn yield_once() {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await
    }

    /// Spins on the real clock until it has moved past `t`.
    fn until_after(t: Instant) {
        while Instant::now() <= t {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn one_reading_per_poll_inside_fresh_and_every_time_outside() {
        for engine in crate::test_engines::engines() {
            crate::test_engines::block_on(engine, async {
                let outside = now();
                until_after(outside);
                assert!(
                    now() > outside,
                    "outside a fresh task every call reads the clock"
                );

                fresh(async {
                    let first = now();
                    until_after(first + std::time::Duration::from_micros(2));
                    assert_eq!(now(), first, "the same poll: the first reading");
                    assert_eq!(micros(first), 0);
                    assert!(micros_total(first) >= 2, "a total reads the clock itself");
                    yield_once().await;
                    let second = now();
                    assert!(second > first, "a new poll reads the clock again");
                    until_after(second);
                    assert_eq!(now(), second);
                    // Nested: the inner task has its own reading, the outer one's is kept.
                    fresh(async {
                        assert!(now() > second);
                    })
                    .await;
                    assert_eq!(now(), second);
                })
                .await;

                let after = now();
                until_after(after);
                assert!(now() > after, "the scope ends with the task's poll");
            });
        }
    }
}
