//! The response cache's fetches under way on a shard (stage 5½): who is fetching which URL
//! now. A first miss for a key claims it ([`Claim`]) and the misses after it wait on that
//! fetch, seeing whether its relay is held by its own client ([`ClientWait`]); every fetch
//! whose response may be stored is counted per URL ([`Fetch`]), so one whose URL an unsafe
//! request invalidated meanwhile (RFC 9111 §4.4) is not stored.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use futures_channel::oneshot;

use super::ShardCache;

/// Keys being fetched and who waits on each. Keyed with std's random per-process hash, as
/// [`super::store::Store`]'s maps are. Shared with the [`Claim`]s (a fetch may move to a task of its
/// own, [`super::Fill::detach`]).
pub(super) type Inflight = Rc<RefCell<std::collections::HashMap<Vec<u8>, Flight>>>;

/// One key's fetch as its waiters see it: their senders, and since when its relay has been
/// waiting on its own client ([`super::tee::Tee::client_wait`]), whose pace it is held to.
pub struct Flight {
    pub waiters: Vec<oneshot::Sender<()>>,
    pub client_wait: ClientWait,
}

/// When the relay that fills an entry began the client write it still waits on (`None`
/// while it does not).
pub type ClientWait = Rc<Cell<Option<Instant>>>;

/// The key of a route's URL in [`ShardCache::fetching`] and the in-flight map: the route's
/// name, a space, the URL key.
pub(super) fn fetch_key(route: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(route.len() + 1 + key.len());
    k.extend_from_slice(route.as_bytes());
    k.push(b' ');
    k.extend_from_slice(key);
    k
}

/// A fetch's claim on its key (the first miss for it): requests of this shard missing the
/// same key wait for it. Dropping it ends the fetch for them (their senders drop: they wake
/// and look again). Held by the fill until its response is admitted, then by the [`super::tee::Tee`]
/// keeping the body, which drops it as soon as the body is known not to fit, so the waiters
/// need not wait out a large body's relay.
pub struct Claim {
    pub(super) inflight: Inflight,
    pub(super) key: Vec<u8>,
    pub(super) client_wait: ClientWait,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let waiters = self.inflight.borrow_mut().remove(&self.key);
        drop(waiters);
    }
}

pub(super) type Fetching = Rc<RefCell<std::collections::HashMap<Vec<u8>, (u32, u32)>>>;

/// A fetch whose response may be stored, counted in [`ShardCache::fetching`] until dropped.
pub struct Fetch {
    fetching: Fetching,
    key: Vec<u8>,
    /// The URL's invalidation count when the request went to the backend.
    seen: u32,
}

impl Fetch {
    /// The URL was invalidated since the request went to the backend.
    pub(super) fn invalidated(&self) -> bool {
        self.fetching
            .borrow()
            .get(&self.key)
            .is_some_and(|&(_, n)| n != self.seen)
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        let mut map = self.fetching.borrow_mut();
        if let Some(e) = map.get_mut(&self.key) {
            e.0 -= 1;
            if e.0 == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl ShardCache {
    /// The URL `key` of `route` is fetched to be stored, from now.
    pub(super) fn fetch(&self, route: &str, key: &[u8]) -> Fetch {
        let key = fetch_key(route, key);
        let mut map = self.fetching.borrow_mut();
        let e = map.entry(key.clone()).or_insert((0, 0));
        e.0 += 1;
        Fetch {
            fetching: self.fetching.clone(),
            seen: e.1,
            key,
        }
    }

    /// The URL `key` of `route` was invalidated: its fetches in flight are not stored.
    pub(super) fn invalidated(&self, route: &str, key: &[u8]) {
        if let Some(e) = self.fetching.borrow_mut().get_mut(&fetch_key(route, key)) {
            e.1 = e.1.wrapping_add(1);
        }
    }
}
