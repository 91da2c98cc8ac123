//! Beside every stage that loops on IO (the keep-alive loop, the body relays, the splice and
//! tunnel pumps): cooperative yielding. A read or write that finds its socket ready completes
//! without going back to the runtime (always on the epoll engine, and for the direct system
//! calls on both), so a task fed without pause (a fast client pipelining requests the proxy
//! answers itself, a fast backend's copied or compressed body, a busy tunnel) would keep the
//! shard: every other connection on it waited for as long as that lasted (5 s of pipelined
//! cache hits on epoll; loadtest/results/2026-12-05-vm-probes/). Such loops call [`step`] once
//! a turn; every [`BUDGET`] turns on a thread it yields once, so the runtime polls its driver
//! and runs what became ready. A yield costs a task's trip through the run queue, once per
//! [`BUDGET`] turns of any loop of the shard.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Loop turns between two yields, over all the shard's tasks.
pub const BUDGET: u32 = 64;

thread_local! {
    static LEFT: Cell<u32> = const { Cell::new(BUDGET) };
}

/// One turn of an IO loop: yields to the runtime once the shard's budget is spent.
#[inline]
pub fn step() -> Step {
    let spent = LEFT.with(|l| {
        let left = l.get().saturating_sub(1);
        if left == 0 {
            l.set(BUDGET);
            true
        } else {
            l.set(left);
            false
        }
    });
    Step {
        pending: spent,
        yielding: None,
    }
}

/// The future of [`step`]: ready at once, or after the other ready tasks had their turn
/// (`monoio::task::yield_to_others`: a task that wakes itself runs again first).
pub struct Step {
    pending: bool,
    yielding: Option<monoio::task::YieldToOthers>,
}

impl Future for Step {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::take(&mut self.pending) {
            self.yielding = Some(monoio::task::yield_to_others());
        }
        match self.yielding.as_mut() {
            Some(y) => Pin::new(y).poll(cx),
            None => Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_budget_th_step_yields_once() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            LEFT.with(|l| l.set(BUDGET));
            let yields = std::rc::Rc::new(Cell::new(0u32));
            let other = {
                let yields = yields.clone();
                // Runs only when the loop below yields.
                monoio::spawn(async move { yields.set(yields.get() + 1) })
            };
            for i in 1..=BUDGET {
                step().await;
                assert_eq!(yields.get(), u32::from(i >= BUDGET), "after step {i}");
            }
            other.await;
        });
    }
}
