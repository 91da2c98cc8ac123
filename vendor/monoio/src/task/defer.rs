//! edgeshard: a yield that lets the other ready tasks run first (see PATCHES.md).
//!
//! A task that wakes itself while it runs is put back at the *front* of the run queue
//! (`Harness::poll`, `Schedule::yield_now`), so it runs again before any other task: a loop
//! that yields that way still holds the thread. [`yield_to_others`] parks the task's waker in
//! a per-thread list instead; the runtime wakes the list (to the back of the queue) once the
//! round of tasks that were ready is over, then polls its driver, whose ready tasks queue
//! behind: every task gets its turn before the yielder's next one ends.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

thread_local! {
    static DEFERRED: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// Wakes the tasks that yielded to the others (the runtime, after a round of tasks).
pub(crate) fn wake_deferred() {
    let wakers = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    for w in wakers {
        w.wake();
    }
}

/// Yields once: the tasks ready now run first, and those the driver's next poll finds ready
/// run in the same round as the yielder.
pub fn yield_to_others() -> YieldToOthers {
    YieldToOthers { yielded: false }
}

/// The future of [`yield_to_others`].
pub struct YieldToOthers {
    yielded: bool,
}

impl Future for YieldToOthers {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        DEFERRED.with(|d| d.borrow_mut().push(cx.waker().clone()));
        Poll::Pending
    }
}
