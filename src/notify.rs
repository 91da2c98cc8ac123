//! A shard-local notification used for shutdown: connections waiting in their tasks (and the
//! parking lot, [`crate::park`]) wait on it beside their read, so draining ends their wait at
//! the grace instead of after `client_idle`.
//! Single-threaded by construction (`Rc`/`Cell`); no borrow is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

#[derive(Default)]
pub struct Notify {
    fired: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

impl Notify {
    /// Fires once; every current and future waiter completes.
    pub fn notify_all(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self.waiters.borrow_mut().drain().collect();
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            key: None,
        }
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
    key: Option<usize>,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        match self.key {
            Some(k) if waiters.contains(k) => waiters[k].clone_from(cx.waker()),
            _ => {
                let k = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.key = Some(k);
            }
        }
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            let mut waiters = self.notify.waiters.borrow_mut();
            if waiters.contains(k) {
                waiters.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn waiters_are_woken_and_removed_on_drop() {
        let n = Notify::default();
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        {
            let mut dropped = Box::pin(n.notified());
            assert!(dropped.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            n.waiters.borrow().len(),
            0,
            "a dropped waiter must not linger"
        );
        let mut f = Box::pin(n.notified());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(n.waiters.borrow().len(), 1);
        n.notify_all();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(f.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(n.notified()).as_mut().poll(&mut cx).is_ready());
    }
}
