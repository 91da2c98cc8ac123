//! The response cache's memory, one [`Store`] per cached route per shard (looked up between
//! *route* and *forward*, filled in *respond*): entries by key, bounded in bytes, least
//! recently used evicted first, with the `Vary` field names last seen for each URL. With
//! `policy = "tinylfu"` (the default) a newcomer that would evict entries must have been asked
//! for at least as often as the least recently used one ([`super::admission`]).

// Keys are the URLs clients choose: std's `HashMap` hashes with a per-process random key
// (SipHash), where an unseeded hash let a client build keys that all collide (each lookup then
// walked every one of them: 11 times slower at 12,000 entries, probe6-b).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use super::admission::{self, Sketch};
use super::body::Body;
use crate::config::CachePolicy;
use crate::http::parse::{parse_response, HeadLimits, Header, Parsed, ResponseHead, Span};

/// Bytes charged per entry beyond its key, head and body: the maps' slots, the `Rc`s, the
/// LRU index, the allocations' headers.
pub const ENTRY_OVERHEAD: u64 = 256;

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub status: u16,
    /// The backend's response head as received (or as a `304` refreshed it), parsed.
    pub head: Rc<StoredHead>,
    /// The decoded body (shared with the entry a revalidation refreshes it into, and with
    /// the hits writing it).
    pub body: Body,
    /// When it was stored, for its resident time.
    pub stored: Instant,
    /// Its corrected initial age in seconds (RFC 9111 §4.2.3).
    pub initial_age: u64,
    /// Freshness lifetime in seconds.
    pub lifetime: u64,
    pub etag: Option<Box<[u8]>>,
    pub last_modified: Option<u64>,
    /// Its `(stale-while-revalidate, stale-if-error)` windows in seconds
    /// ([`super::policy::stale_windows`]), before the route's caps.
    pub windows: (u64, u64),
}

impl Entry {
    /// Its current age in whole seconds.
    pub fn age(&self, now: Instant) -> u64 {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.stored).as_secs())
    }

    /// It can be revalidated with a conditional request.
    pub fn has_validator(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

/// A stored response head: its bytes and their parse, made once when it is stored, so that
/// a hit rewrites the head for the client ([`crate::http::encode::client_response_head`])
/// without parsing it again (a seventh of a 1 KiB hit's user-space instructions).
#[derive(Debug)]
pub struct StoredHead {
    pub bytes: Box<[u8]>,
    pub parsed: ResponseHead,
}

impl StoredHead {
    /// `bytes` parsed, or `None` when they are not exactly one complete response head.
    pub fn new(bytes: Box<[u8]>) -> Option<StoredHead> {
        let limits = HeadLimits {
            // Heads the proxy accepted once (or merged from two it accepted): their own
            // length and field count bound them already.
            max_header_bytes: bytes.len().max(16384),
            max_headers: 1024,
            max_uri_bytes: 8192,
        };
        let mut parsed = ResponseHead::default();
        match parse_response(&bytes, &limits, &mut parsed) {
            Ok(Parsed::Complete(())) if parsed.head_len == bytes.len() => {}
            _ => return None,
        }
        parsed.headers.shrink_to_fit();
        parsed.conn_tokens.shrink_to_fit();
        Some(StoredHead { bytes, parsed })
    }

    /// Bytes it holds: the head, its parse, and itself in its `Rc` (two counts).
    pub fn charge(&self) -> u64 {
        let p = &self.parsed;
        (self.bytes.len()
            + p.headers.capacity() * std::mem::size_of::<Header>()
            + p.conn_tokens.capacity() * std::mem::size_of::<Span>()
            + std::mem::size_of::<StoredHead>()
            + 2 * std::mem::size_of::<usize>()) as u64
    }
}

struct Slot {
    entry: Rc<Entry>,
    /// Its place in `order` (the last use).
    tick: u64,
    /// `key[..primary]` is the URL part of the key (the rest is the `Vary` part).
    primary: usize,
    /// The URL's hash in the admission sketch.
    url_hash: u64,
    size: u64,
}

/// The `Vary` names of one URL and the keys of its entries (one per variant: as many as
/// clients choose, under `Vary: Cookie`, so a set, not a list to scan).
struct Variants {
    names: Rc<[Box<[u8]>]>,
    keys: HashSet<Rc<[u8]>>,
    /// Bytes charged for the URL this is filed under ([`url_charge`]) when it is a copy of
    /// its own; 0 while it shares the key of the URL's entry without a `Vary` part, which
    /// charges them.
    charge: u64,
}

/// Bytes charged for a copy of a URL of `len` bytes in the `Vary` index: its bytes and the
/// counts of its `Rc`. Uncharged, a cache of long URLs held about twice its `size` (15,774
/// entries of 7.9 KB URLs: 134 MB counted, 270 MB resident).
fn url_charge(len: usize) -> u64 {
    (len + 2 * std::mem::size_of::<usize>()) as u64
}

/// Entries of one route on one shard.
pub struct Store {
    entries: HashMap<Rc<[u8]>, Slot>,
    /// Last use → key: the first is the least recently used.
    order: BTreeMap<u64, Rc<[u8]>>,
    /// URL → its variants. The URL's bytes are those of its entry's key when that has no
    /// `Vary` part (the usual case), else a copy charged to `bytes`.
    vary: HashMap<Rc<[u8]>, Variants>,
    tick: u64,
    bytes: u64,
    pub size: u64,
    /// URL popularity, with `policy = "tinylfu"`.
    sketch: Option<Sketch>,
    /// Responses not stored because they were less popular than what they would evict.
    pub rejected: u64,
    /// Background revalidations of this route's entries in flight on this shard.
    pub background: usize,
    /// Bytes held by this route's responses being stored on this shard ([`super::Tee`]),
    /// within `cache.fill_memory`.
    pub teeing: Rc<std::cell::Cell<u64>>,
}

impl Store {
    pub fn new(size: u64, policy: CachePolicy) -> Store {
        Store {
            entries: HashMap::default(),
            order: BTreeMap::new(),
            vary: HashMap::default(),
            tick: 0,
            bytes: 0,
            size,
            sketch: (policy == CachePolicy::TinyLfu)
                .then(|| Sketch::new(admission::width_for(size))),
            rejected: 0,
            background: 0,
            teeing: Rc::default(),
        }
    }

    /// Applies a reloaded route's `size` and `policy` (the counts start over when the
    /// sketch's width changes). A smaller size takes effect at the next insert.
    pub fn configure(&mut self, size: u64, policy: CachePolicy) {
        let width = admission::width_for(size);
        let keep = policy == CachePolicy::TinyLfu
            && self.sketch.as_ref().is_some_and(|s| s.width() == width);
        if !keep {
            self.sketch = (policy == CachePolicy::TinyLfu).then(|| Sketch::new(width));
        }
        self.size = size;
    }

    /// Counts a lookup of the URL `url` (hit or miss) for the admission policy.
    pub fn record(&mut self, url: &[u8]) {
        if let Some(sketch) = &mut self.sketch {
            sketch.record(admission::hash(url));
        }
    }

    /// Bytes held, the `Vary` index's copies of URLs included (never more than `size` after
    /// an insert).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `Vary` names last stored for the URL `primary` (none: the key is the URL).
    pub fn vary_names(&self, primary: &[u8]) -> Option<Rc<[Box<[u8]>]>> {
        self.vary.get(primary).map(|v| v.names.clone())
    }

    /// The entry under `key`, marked as just used.
    pub fn get(&mut self, key: &[u8]) -> Option<Rc<Entry>> {
        let slot = self.entries.get_mut(key)?;
        self.tick += 1;
        let k = self.order.remove(&slot.tick)?;
        slot.tick = self.tick;
        self.order.insert(self.tick, k);
        Some(slot.entry.clone())
    }

    /// Stores `entry` under `key` (whose first `primary` bytes are the URL, stored with the
    /// `Vary` names `names`), replacing any entry there, then evicts the least recently used
    /// until the store fits its size again. Returns how many entries were evicted; an entry
    /// larger than the whole store is not stored, nor (with the admission sketch) a new key
    /// whose URL was asked for less often than the least recently used entry's.
    pub fn insert(
        &mut self,
        key: &[u8],
        primary: usize,
        names: Rc<[Box<[u8]>]>,
        entry: Entry,
    ) -> u64 {
        self.store(key, primary, names, entry, false)
    }

    /// [`Store::insert`] of a response that replaces what was under `key` (a revalidation
    /// answered with a new response, the old entry already removed): never refused by the
    /// admission policy.
    pub fn replace(
        &mut self,
        key: &[u8],
        primary: usize,
        names: Rc<[Box<[u8]>]>,
        entry: Entry,
    ) -> u64 {
        self.store(key, primary, names, entry, true)
    }

    /// Whether an entry is stored under `key`.
    /// Whether `entry` itself is still stored under `key` (not purged, evicted, or replaced
    /// by a newer response).
    pub fn holds(&self, key: &[u8], entry: &Rc<Entry>) -> bool {
        self.entries
            .get(key)
            .is_some_and(|slot| Rc::ptr_eq(&slot.entry, entry))
    }

    fn store(
        &mut self,
        key: &[u8],
        primary: usize,
        names: Rc<[Box<[u8]>]>,
        entry: Entry,
        replacing: bool,
    ) -> u64 {
        let size = key.len() as u64 + entry.head.charge() + entry.body.charge() + ENTRY_OVERHEAD;
        let replacing = self.remove(key) || replacing;
        let primary = primary.min(key.len());
        // A URL new to the `Vary` index costs a copy of it, unless the key is the URL.
        let url_cost = match self.vary.contains_key(&key[..primary]) || primary == key.len() {
            true => 0,
            false => url_charge(primary),
        };
        if size + url_cost > self.size {
            return 0;
        }
        let url_hash = admission::hash(&key[..primary]);
        if !replacing && self.bytes + size + url_cost > self.size && !self.admits(url_hash) {
            self.rejected += 1;
            return 0;
        }
        let key: Rc<[u8]> = key.into();
        match self.vary.get_mut(&key[..primary]) {
            Some(v) => {
                v.names = names;
                v.keys.insert(key.clone());
            }
            None => {
                let url = match primary == key.len() {
                    true => key.clone(),
                    false => key[..primary].into(),
                };
                let (keys, charge) = (HashSet::from([key.clone()]), url_cost);
                let v = Variants {
                    names,
                    keys,
                    charge,
                };
                self.vary.insert(url, v);
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.bytes += size + url_cost;
        self.entries.insert(
            key,
            Slot {
                entry: Rc::new(entry),
                tick: self.tick,
                primary,
                url_hash,
                size,
            },
        );
        self.shrink_to(self.size)
    }

    /// Whether a newcomer whose URL hashes to `url_hash` may evict the least recently used
    /// entry: its URL was asked for at least as often (always, without the sketch).
    fn admits(&self, url_hash: u64) -> bool {
        let (Some(sketch), Some((_, victim))) = (&self.sketch, self.order.first_key_value()) else {
            return true;
        };
        let Some(v) = self.entries.get(victim) else {
            return true;
        };
        sketch.estimate(url_hash) >= sketch.estimate(v.url_hash)
    }

    /// Evicts the least recently used entries until at most `size` bytes are held; returns
    /// how many went.
    pub fn shrink_to(&mut self, size: u64) -> u64 {
        let mut evicted = 0;
        while self.bytes > size {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            self.remove(&key);
            evicted += 1;
        }
        evicted
    }

    /// Removes the entry under `key`, if any.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let Some((key, slot)) = self.entries.remove_entry(key) else {
            return false;
        };
        self.order.remove(&slot.tick);
        self.bytes -= slot.size;
        let url = &key[..slot.primary.min(key.len())];
        let shared = self
            .vary
            .get_key_value(url)
            .is_some_and(|(u, _)| Rc::ptr_eq(u, &key));
        if let Some(v) = self.vary.get_mut(url) {
            v.keys.remove(&key);
            if v.keys.is_empty() {
                self.bytes -= v.charge;
                self.vary.remove(url);
            } else if shared {
                // The URL's other variants keep the bytes this entry's key shared with the
                // index: the index is charged for them from now on.
                v.charge = url_charge(url.len());
                self.bytes += v.charge;
            }
        }
        true
    }

    /// Removes every entry of the URL `url` (each of its `Vary` variants); returns how many.
    pub fn remove_url(&mut self, url: &[u8]) -> u64 {
        let Some(v) = self.vary.remove(url) else {
            return 0;
        };
        self.bytes -= v.charge;
        for key in &v.keys {
            if let Some(slot) = self.entries.remove(key) {
                self.order.remove(&slot.tick);
                self.bytes -= slot.size;
            }
        }
        v.keys.len() as u64
    }

    /// Removes every entry whose URL (the key without its `Vary` part) `matches`; returns how
    /// many.
    pub fn purge(&mut self, matches: impl Fn(&[u8]) -> bool) -> u64 {
        let keys: Vec<Rc<[u8]>> = self
            .entries
            .iter()
            .filter(|(k, s)| matches(&k[..s.primary.min(k.len())]))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter(|k| self.remove(k)).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: usize) -> Entry {
        Entry {
            status: 200,
            head: Rc::new(StoredHead::new(b"HTTP/1.1 200 OK\r\n\r\n"[..].into()).unwrap()),
            body: vec![b'x'; body].into(),
            stored: Instant::now(),
            initial_age: 0,
            lifetime: 60,
            etag: None,
            last_modified: None,
            windows: (0, 0),
        }
    }

    fn none() -> Rc<[Box<[u8]>]> {
        Rc::from(Vec::new())
    }

    #[test]
    fn a_stored_head_charges_its_bytes_its_parse_and_itself() {
        let bare = StoredHead::new(b"HTTP/1.1 200 OK\r\n\r\n"[..].into()).unwrap();
        let two = StoredHead::new(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n"[..].into()).unwrap();
        assert!(bare.charge() >= 19 + std::mem::size_of::<StoredHead>() as u64);
        let fields = 2 * std::mem::size_of::<Header>() as u64;
        assert_eq!(two.charge() - bare.charge(), 12 + fields);
    }

    #[test]
    fn the_least_recently_used_goes_first_and_the_size_holds() {
        let one = 1 + entry(0).head.charge() + 1000 + ENTRY_OVERHEAD;
        let mut s = Store::new(3 * one, CachePolicy::Lru);
        for k in [b"a", b"b", b"c"] {
            assert_eq!(s.insert(k, 1, none(), entry(1000)), 0);
        }
        assert_eq!(s.bytes(), 3 * one);
        assert!(s.get(b"a").is_some(), "a is now the most recent");
        assert_eq!(s.insert(b"d", 1, none(), entry(1000)), 1);
        assert!(s.get(b"b").is_none(), "b was the least recently used");
        assert!(s.get(b"a").is_some() && s.get(b"c").is_some() && s.get(b"d").is_some());
        assert!(s.bytes() <= s.size);
        // Replacing keeps one copy; too large for the store: not stored at all.
        s.insert(b"a", 1, none(), entry(10));
        assert_eq!(s.len(), 3);
        assert_eq!(s.insert(b"e", 1, none(), entry(10_000)), 0);
        assert!(s.get(b"e").is_none());
        assert!(s.bytes() <= s.size);
        assert_eq!(s.shrink_to(0), 3);
        assert_eq!((s.bytes(), s.len(), s.vary.len()), (0, 0, 0));
    }

    #[test]
    fn variants_share_their_url_and_purges_match_urls() {
        let mut s = Store::new(1 << 20, CachePolicy::TinyLfu);
        let names: Rc<[Box<[u8]>]> = Rc::from(vec![Box::<[u8]>::from(&b"accept"[..])]);
        s.insert(b"http://h/a\naccept:x", 10, names.clone(), entry(1));
        s.insert(b"http://h/a\naccept:y", 10, names.clone(), entry(1));
        s.insert(b"http://h/b", 10, none(), entry(1));
        assert_eq!(s.vary_names(b"http://h/a").unwrap().len(), 1);
        assert_eq!(s.vary_names(b"http://h/b").unwrap().len(), 0);
        assert_eq!(s.purge(|url| url == b"http://h/a"), 2);
        assert!(s.vary_names(b"http://h/a").is_none());
        assert_eq!(s.purge(|url| url.starts_with(b"http://h/")), 1);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        // By URL: every variant, no scan.
        s.insert(b"http://h/a\naccept:x", 10, names.clone(), entry(1));
        s.insert(b"http://h/a\naccept:y", 10, names.clone(), entry(1));
        s.insert(b"http://h/ab", 11, none(), entry(1));
        assert_eq!(s.remove_url(b"http://h/a"), 2);
        assert_eq!((s.len(), s.remove_url(b"http://h/a")), (1, 0));
        assert_eq!(s.remove_url(b"http://h/ab"), 1);
        assert!(s.is_empty() && s.vary.is_empty());
    }

    #[test]
    fn tinylfu_keeps_popular_entries_from_one_off_urls() {
        let one = 7 + entry(0).head.charge() + 1000 + ENTRY_OVERHEAD;
        let mut s = Store::new(2 * one, CachePolicy::TinyLfu);
        for k in [b"http:/a", b"http:/b"] {
            for _ in 0..3 {
                s.record(k);
            }
            assert_eq!(s.insert(k, 7, none(), entry(1000)), 0);
        }
        // A URL asked for once would evict `a` (asked for 3 times): refused.
        s.record(b"http:/x");
        assert_eq!(s.insert(b"http:/x", 7, none(), entry(1000)), 0);
        assert_eq!(s.rejected, 1);
        assert!(s.get(b"http:/x").is_none() && s.get(b"http:/a").is_some());
        // Once asked for as often, it gets in (evicting the least recently used, `b`).
        for _ in 0..2 {
            s.record(b"http:/x");
        }
        assert_eq!(s.insert(b"http:/x", 7, none(), entry(1000)), 1);
        assert!(s.get(b"http:/x").is_some() && s.get(b"http:/b").is_none());
        // A replacement is always stored, however full the store.
        assert_eq!(s.insert(b"http:/a", 7, none(), entry(900)), 0);
        assert_eq!(s.rejected, 1);
        // So is a revalidation's new response, whose stale entry went when its head came.
        s.remove(b"http:/a");
        s.insert(b"http:/y", 7, none(), entry(900));
        s.record(b"http:/z");
        assert_eq!(s.insert(b"http:/z", 7, none(), entry(1000)), 0, "refused");
        assert_eq!(s.replace(b"http:/z", 7, none(), entry(1000)), 1);
        assert!(s.rejected == 2);
        // A revalidation's 304 refreshes the entry it revalidated only while that is the one
        // stored: not once a newer response took its place.
        let z = s.get(b"http:/z").expect("stored");
        assert!(s.holds(b"http:/z", &z));
        s.replace(b"http:/z", 7, none(), entry(1000));
        assert!(!s.holds(b"http:/z", &z) && s.get(b"http:/z").is_some());
        // Plain LRU admits everything.
        let mut l = Store::new(2 * one, CachePolicy::Lru);
        for k in [b"http:/a", b"http:/b", b"http:/x"] {
            l.insert(k, 7, none(), entry(1000));
        }
        assert!(l.get(b"http:/x").is_some() && l.rejected == 0);
    }

    /// Bytes the store's maps hold that an entry or a URL copy is charged for: each entry's
    /// charge, and each URL in the `Vary` index that is a copy (not its entry's key itself).
    fn held(s: &Store) -> u64 {
        let entries: u64 = s.entries.values().map(|slot| slot.size).sum();
        let copies = s.vary.keys().filter(|url| {
            let key = s.entries.get_key_value(&url[..]).map(|(k, _)| k.as_ptr());
            key != Some(url.as_ptr())
        });
        entries + copies.map(|url| url.len() as u64).sum::<u64>()
    }

    /// F4 of the second review: the `Vary` index kept an uncharged copy of each URL, so a
    /// store of long URLs held about twice its size.
    #[test]
    fn the_size_bounds_the_vary_index_s_urls_too() {
        let mut s = Store::new(1 << 20, CachePolicy::Lru);
        let names: Rc<[Box<[u8]>]> = Rc::from(vec![Box::<[u8]>::from(&b"accept"[..])]);
        for i in 0..400 {
            // 8 KB URLs with empty bodies, half with a `Vary` part (the index then holds a
            // copy of the URL) and half without (its key is the URL, shared).
            let url = format!("http://h/{i:08}{}", "a".repeat(8000));
            let (key, names) = match i % 2 {
                0 => (format!("{url}\naccept:x"), names.clone()),
                _ => (url.clone(), none()),
            };
            s.insert(key.as_bytes(), url.len(), names, entry(0));
            let held = held(&s);
            assert!(
                held <= s.size,
                "{held} held by {} entries of {}",
                s.len(),
                s.size
            );
            assert!(s.bytes() >= held, "{} counted, {held} held", s.bytes());
        }
        assert!(s.len() > 50 && s.vary.len() == s.len());
        // The entry whose key the index shares goes while another variant of its URL stays:
        // the index's URL is counted from then on, and goes with the last variant.
        s.shrink_to(0);
        s.insert(b"http://h/u", 10, none(), entry(0));
        s.insert(b"http://h/u\naccept:x", 10, names.clone(), entry(0));
        let both = s.bytes();
        s.remove(b"http://h/u");
        assert!(s.bytes() >= held(&s) && held(&s) > 0 && s.bytes() < both);
        assert_eq!(s.remove_url(b"http://h/u"), 1);
        assert_eq!((s.bytes(), s.len(), s.vary.len()), (0, 0, 0));
        s.insert(b"http://h/v\naccept:x", 10, names.clone(), entry(0));
        s.remove(b"http://h/v\naccept:x");
        assert_eq!((s.bytes(), s.vary.len()), (0, 0));
    }

    #[test]
    fn age_counts_the_initial_age() {
        let mut e = entry(1);
        e.initial_age = 59;
        assert_eq!(e.age(e.stored), 59);
        assert_eq!(e.age(e.stored + std::time::Duration::from_millis(2500)), 61);
    }
}
