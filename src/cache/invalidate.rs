//! Part of the response *cache* (stage 5½): invalidation across shards. An unsafe request
//! whose success removes its URL's entries (RFC 9111 §4.4, [`super::Fill::admit`]) is
//! served by one shard, but each shard has a cache of its own and the client's next request
//! may land on any of them (SO_REUSEPORT hashes the connection). So the shard that saw the
//! success also writes, before the response goes out, *when* the URL was invalidated into
//! a table all shards share ([`Invalidations`]): one word per slot, the slot chosen by a
//! keyed hash of the route and URL. A shard that finds an entry stored before its slot's
//! time treats it as gone (and removes the URL's entries), and a fill whose request went out
//! before it is not stored. So a request that starts after the client saw the response finds
//! no entry the unsafe request removed, whichever shard serves it.
//!
//! Fixed memory (512 KiB), one atomic store per invalidation and one load per entry found:
//! nothing queues, nothing overflows. Two URLs sharing a slot only cost the other a miss
//! (the hash is keyed per process, so clients cannot aim at one).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::ShardCache;

/// Slots in the table (a power of two).
const SLOTS: usize = 1 << 16;

/// When each slot's URLs were last invalidated, shared by all shards.
pub struct Invalidations {
    /// Times are nanoseconds since this, plus one (0: never).
    epoch: Instant,
    seed: std::hash::RandomState,
    slots: Box<[AtomicU64]>,
}

impl Default for Invalidations {
    fn default() -> Invalidations {
        Invalidations {
            epoch: Instant::now(),
            seed: std::hash::RandomState::new(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Invalidations {
    fn slot(&self, route: &str, url: &[u8]) -> &AtomicU64 {
        let h = self.seed.hash_one((route, url));
        &self.slots[h as usize & (SLOTS - 1)]
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// `url` of `route` was invalidated now. The real clock, not the shard's cached one: an
    /// entry another shard stored before now must read as older.
    fn post(&self, route: &str, url: &[u8]) {
        let now = self.nanos(Instant::now());
        self.slot(route, url).fetch_max(now, Ordering::Release);
    }

    /// Whether `url` of `route` may have been invalidated at or after `t`.
    fn since(&self, route: &str, url: &[u8], t: Instant) -> bool {
        self.slot(route, url).load(Ordering::Acquire) >= self.nanos(t)
    }
}

impl ShardCache {
    /// This shard's cache, with the process's invalidation table.
    pub fn shared(invalidations: std::sync::Arc<Invalidations>) -> ShardCache {
        ShardCache {
            peers: Some(invalidations),
            ..ShardCache::default()
        }
    }

    /// `url` of `route` was invalidated on this shard: tells the others.
    pub(super) fn tell_others(&self, route: &str, url: &[u8]) {
        if let Some(all) = &self.peers {
            all.post(route, url);
        }
    }

    /// Whether some shard invalidated `url` of `route` at or after `t` (when an entry was
    /// stored, or when a fill's request went out).
    pub(super) fn invalidated_since(&self, route: &str, url: &[u8], t: Instant) -> bool {
        self.peers
            .as_ref()
            .is_some_and(|all| all.since(route, url, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_invalidation_reads_as_newer_than_what_came_before_it_and_older_than_after() {
        let all = Arc::new(Invalidations::default());
        let (a, b) = (ShardCache::shared(all.clone()), ShardCache::shared(all));
        let before = Instant::now();
        assert!(
            !b.invalidated_since("r", b"http://h/a", before),
            "never invalidated"
        );
        a.tell_others("r", b"http://h/a");
        assert!(
            b.invalidated_since("r", b"http://h/a", before),
            "stored before: gone"
        );
        assert!(
            !b.invalidated_since("r", b"http://h/a", Instant::now()),
            "stored after: kept"
        );
        assert!(
            !b.invalidated_since("other", b"http://h/a", before),
            "another route"
        );
        assert!(
            !b.invalidated_since("r", b"http://h/b", before),
            "another URL"
        );
        assert!(!ShardCache::default().invalidated_since("r", b"http://h/a", before));
    }

    #[test]
    fn many_invalidations_cost_no_memory_and_disturb_few_other_urls() {
        let all = Invalidations::default();
        let before = Instant::now();
        for i in 0..10_000 {
            all.post("r", format!("http://h/flood/{i}").as_bytes());
        }
        // 10,000 of 65,536 slots taken: about 15 % of other URLs would miss once.
        let hit = (0..1000)
            .filter(|i| all.since("r", format!("http://h/other/{i}").as_bytes(), before))
            .count();
        assert!(
            hit < 250,
            "{hit} of 1,000 unrelated URLs read as invalidated"
        );
    }
}
