//! Part of the response *cache* (stage 5½): invalidation across shards. An unsafe request
//! whose success removes its URL's entries (RFC 9111 §4.4, [`super::Fill::admit`]) is
//! served by one shard, but each shard has a cache of its own and the client's next request
//! may land on any of them (SO_REUSEPORT hashes the connection). So the shard that saw the
//! success posts the route and URL to every other shard's inbox before the response goes
//! out, and a shard reads its inbox before each lookup and before storing a fill
//! ([`ShardCache::catch_up`]): a request that starts after the client saw the response
//! finds no entry the unsafe request removed, whichever shard serves it.
//!
//! An inbox is a mutex-guarded list and a flag; the flag is read (one load of a line written
//! only by invalidations) per cached lookup, the mutex is taken only by invalidations and by
//! the shard emptying its inbox. An inbox holds at most [`MAX_PENDING`] URLs: past that
//! (a shard that serves no cached route while others take a flood of unsafe requests) the
//! shard empties its whole cache when it next looks, rather than serve what it was told to
//! remove.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::ShardCache;

/// URLs one shard's inbox holds before it overflows.
pub const MAX_PENDING: usize = 4096;

/// The inboxes of all shards (one per shard, by shard id), shared by them.
pub struct Invalidations {
    inboxes: Box<[Inbox]>,
}

#[derive(Default)]
struct Inbox {
    /// Something is in `posted`.
    pending: AtomicBool,
    posted: Mutex<Posted>,
}

#[derive(Default)]
struct Posted {
    /// (route name, URL key) pairs to remove.
    urls: Vec<(Box<str>, Box<[u8]>)>,
    /// More were posted than [`MAX_PENDING`]: remove everything.
    overflowed: bool,
}

impl Invalidations {
    pub fn new(shards: usize) -> Invalidations {
        Invalidations {
            inboxes: (0..shards.max(1)).map(|_| Inbox::default()).collect(),
        }
    }

    /// Tells every shard but `from` that `url` of `route` is to be removed.
    fn post(&self, from: usize, route: &str, url: &[u8]) {
        for (id, inbox) in self.inboxes.iter().enumerate() {
            if id == from {
                continue;
            }
            // A poisoned lock only means another shard panicked while holding it; the
            // list is still a list.
            let mut posted = inbox.posted.lock().unwrap_or_else(|e| e.into_inner());
            if posted.urls.len() < MAX_PENDING {
                posted.urls.push((route.into(), url.into()));
            } else {
                posted.overflowed = true;
            }
            inbox.pending.store(true, Ordering::Release);
        }
    }

    /// Takes what was posted to shard `id`, if anything.
    fn take(&self, id: usize) -> Option<Posted> {
        let inbox = self.inboxes.get(id)?;
        if !inbox.pending.load(Ordering::Acquire) {
            return None;
        }
        inbox.pending.store(false, Ordering::Relaxed);
        let mut posted = inbox.posted.lock().unwrap_or_else(|e| e.into_inner());
        Some(std::mem::take(&mut *posted))
    }
}

impl ShardCache {
    /// This shard's cache, with the process's inboxes (`shard` is its id).
    pub fn shared(invalidations: std::sync::Arc<Invalidations>, shard: usize) -> ShardCache {
        ShardCache {
            peers: Some((invalidations, shard)),
            ..ShardCache::default()
        }
    }

    /// `url` of `route` was invalidated on this shard: tells the others.
    pub(super) fn tell_others(&self, route: &str, url: &[u8]) {
        if let Some((all, me)) = &self.peers {
            all.post(*me, route, url);
        }
    }

    /// Removes what other shards invalidated since the last call: the URLs' entries, and
    /// their fetches in flight are not stored.
    pub(super) fn catch_up(&self) {
        let Some(posted) = self.peers.as_ref().and_then(|(all, me)| all.take(*me)) else {
            return;
        };
        if posted.overflowed {
            let gone = self.purge(&super::Purge::All);
            super::ShardCache::bump(&self.invalidation_overflows);
            crate::stats::add(&self.invalidated, gone);
            return;
        }
        for (route, url) in &posted.urls {
            let gone = match self.stores.borrow_mut().get_mut(route) {
                Some(store) => store.remove_url(url),
                None => 0,
            };
            crate::stats::add(&self.invalidated, gone);
            self.invalidated(route, url);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_reaches_every_other_shard_once_and_overflow_is_remembered() {
        let all = Invalidations::new(3);
        all.post(1, "r", b"http://h/a");
        assert!(all.take(1).is_none(), "not its own");
        for id in [0, 2] {
            let p = all.take(id).expect("posted");
            assert_eq!(p.urls, vec![("r".into(), b"http://h/a"[..].into())]);
            assert!(!p.overflowed);
            assert!(all.take(id).is_none(), "taken once");
        }
        for _ in 0..=MAX_PENDING {
            all.post(0, "r", b"u");
        }
        let p = all.take(1).unwrap();
        assert_eq!((p.urls.len(), p.overflowed), (MAX_PENDING, true));
        assert!(all.take(7).is_none(), "no such shard");
    }
}
