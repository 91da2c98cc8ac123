//! Part of the response *cache* (stage 5½): invalidation across shards. An unsafe request
//! whose success removes its URL's entries (RFC 9111 §4.4, [`super::Fill::admit`]) is
//! served by one shard, but each shard has a cache of its own and the client's next request
//! may land on any of them (SO_REUSEPORT hashes the connection). So the shard that saw the
//! success posts the route and URL to every other shard's inbox before the response goes
//! out, and a shard reads its inbox before each lookup and before storing a fill
//! ([`ShardCache::catch_up`]), and once a second: a request that starts after the client
//! saw the response finds no entry the unsafe request removed, whichever shard serves it.
//!
//! An inbox is a mutex-guarded list and a flag; the flag is read (one load of a line written
//! only by invalidations) per cached lookup, the mutex is taken only by invalidations and by
//! the shard emptying its inbox. An inbox holds at most [`MAX_PENDING`] URLs and
//! [`MAX_PENDING_BYTES`] of them: past that (a flood of unsafe requests within a second) the
//! shard empties its whole cache when it next looks, rather than serve what it was told to
//! remove.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::ShardCache;

/// URLs one shard's inbox holds before it overflows.
pub const MAX_PENDING: usize = 4096;

/// Bytes of route names and URLs one shard's inbox holds before it overflows (a URL may be
/// as long as `limits.max_uri_bytes` and the `Host`).
pub const MAX_PENDING_BYTES: usize = 1 << 20;

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
    /// Their bytes.
    bytes: usize,
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
            let bytes = posted.bytes + route.len() + url.len();
            if posted.overflowed {
                // Everything goes anyway.
            } else if posted.urls.len() < MAX_PENDING && bytes <= MAX_PENDING_BYTES {
                posted.urls.push((route.into(), url.into()));
                posted.bytes = bytes;
            } else {
                *posted = Posted {
                    overflowed: true,
                    ..Posted::default()
                };
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
    pub fn catch_up(&self) {
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
    use crate::cache::store::{Entry, Store, StoredHead};
    use std::rc::Rc;
    use std::sync::Arc;

    /// Shard `id` of `all`, with `urls` stored in route `r`'s store.
    fn cache_with(all: &Arc<Invalidations>, id: usize, urls: &[&str]) -> ShardCache {
        let cache = ShardCache::shared(all.clone(), id);
        let mut store = Store::new(1 << 20, crate::config::CachePolicy::Lru);
        for url in urls {
            let entry = Entry {
                status: 200,
                head: Rc::new(StoredHead::new(b"HTTP/1.1 200 OK\r\n\r\n"[..].into()).unwrap()),
                body: b"x"[..].to_vec().into(),
                stored: std::time::Instant::now(),
                initial_age: 0,
                lifetime: 60,
                etag: None,
                last_modified: None,
                windows: (0, 0),
            };
            store.insert(url.as_bytes(), url.len(), Rc::from(Vec::new()), entry);
        }
        cache.stores.borrow_mut().insert("r".into(), store);
        cache
    }

    #[test]
    fn catching_up_removes_what_was_posted_or_everything_after_an_overflow() {
        let all = Arc::new(Invalidations::new(2));
        let (writer, reader) = (cache_with(&all, 0, &[]), cache_with(&all, 1, &["a", "b"]));
        writer.tell_others("r", b"a");
        writer.tell_others("gone-route", b"b");
        reader.catch_up();
        assert_eq!(
            (reader.entries(), reader.invalidated.get()),
            (1, 1),
            "a went, b stays"
        );
        for _ in 0..=MAX_PENDING {
            writer.tell_others("r", b"zzz");
        }
        reader.catch_up();
        assert_eq!(reader.entries(), 0, "b too: the inbox overflowed");
        assert_eq!(reader.invalidation_overflows.get(), 1);
        assert_eq!(writer.entries(), 0);
    }

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
        assert_eq!(
            (p.urls.len(), p.overflowed),
            (0, true),
            "the list is let go"
        );
        assert!(all.take(7).is_none(), "no such shard");
        // Long URLs overflow it by their bytes first.
        let long = vec![b'a'; 8191]; // 8 KiB with the route's name
        for _ in 0..MAX_PENDING_BYTES / 8192 {
            all.post(0, "r", &long);
        }
        let p = all.take(1).unwrap();
        assert!(!p.overflowed && p.bytes <= MAX_PENDING_BYTES, "{}", p.bytes);
        for _ in 0..=MAX_PENDING_BYTES / 8192 {
            all.post(0, "r", &long);
        }
        assert!(all.take(1).unwrap().overflowed);
    }
}
