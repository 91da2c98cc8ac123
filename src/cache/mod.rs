//! Stage 5½ of the pipeline, the response *cache* (a route's `cache`): looked up after
//! *route* and its auth, before *balance/forward* ([`lookup`]); a fresh hit is answered
//! from memory ([`serve`]) and no backend is contacted. A miss goes on with a [`Fill`]:
//! in *respond* it decides from the response head whether the response may be stored
//! ([`Fill::admit`]), tees the decoded body while it is relayed ([`Tee`], the copy path:
//! such a response is never spliced), and stores it once relayed whole ([`Fill::finish`]).
//!
//! Layout: one cache per shard ([`ShardCache`], in [`crate::shard::ShardCommon`]), one
//! [`store::Store`] per cached route, no locks and nothing shared between shards. With N
//! shards a key may be stored (and fetched) up to N times, and each shard holds up to the
//! route's `size`. Concurrent misses for one key on one shard collapse into one upstream
//! fetch: the first registers the key as in flight, the others wait for it to finish.
//! The rules (RFC 9111) are in [`policy`].

pub mod admission;
pub mod policy;
pub mod serve;
pub mod store;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;
use rustc_hash::FxHashMap;

use crate::config::CacheConfig;
use crate::http::parse::{BodyFraming, Method, RequestHead, ResponseHead};
use policy::{RequestRules, Storable};
use store::{Entry, Store};

pub use serve::serve;

/// `X-Cache` values.
pub const HIT: &[u8] = b"HIT";
pub const MISS: &[u8] = b"MISS";
pub const BYPASS: &[u8] = b"BYPASS";

/// One shard's cache: a store per cached route (by route name, so a reload keeps the
/// entries of routes that remain), the keys being fetched, and the counters.
#[derive(Default)]
pub struct ShardCache {
    stores: RefCell<FxHashMap<Box<str>, Store>>,
    /// Route name + key → those waiting for its fetch (woken when the fetch's [`Fill`]
    /// drops: the senders drop with it).
    inflight: RefCell<FxHashMap<Vec<u8>, Vec<oneshot::Sender<()>>>>,
    pub hits: Cell<u64>,
    pub misses: Cell<u64>,
    pub bypasses: Cell<u64>,
    pub evictions: Cell<u64>,
    /// Responses not stored by the admission policy (`cache.policy = "tinylfu"`).
    pub rejected: Cell<u64>,
}

/// What `POST /cache/purge` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// One URL key (all its `Vary` variants).
    Key(Vec<u8>),
    /// Every key starting with this.
    Prefix(Vec<u8>),
    All,
}

impl ShardCache {
    /// Bytes held by every store.
    pub fn bytes(&self) -> u64 {
        self.stores.borrow().values().map(Store::bytes).sum()
    }

    pub fn entries(&self) -> u64 {
        self.stores.borrow().values().map(|s| s.len() as u64).sum()
    }

    /// Removes what `p` names from every route's store; returns how many entries went.
    pub fn purge(&self, p: &Purge) -> u64 {
        let mut stores = self.stores.borrow_mut();
        stores
            .values_mut()
            .map(|s| match p {
                Purge::Key(k) => s.purge(|url| url == &k[..]),
                Purge::Prefix(pre) => s.purge(|url| url.starts_with(pre)),
                Purge::All => s.purge(|_| true),
            })
            .sum()
    }

    fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
}

/// A request as the lookup sees it.
pub struct Request<'r> {
    pub buf: &'r [u8],
    pub head: &'r RequestHead,
    pub method: Method,
    pub https: bool,
    pub host: &'r [u8],
    /// Origin-form path and query, as the client sent it.
    pub target: &'r [u8],
    /// A body, or an upgrade: never from the cache.
    pub unusual: bool,
    /// The proxy adds or changes fields of the forwarded request that may say who the client
    /// is or change the answer (route `auth`, an mTLS subject field, request header rules):
    /// the response is stored only when it says `public` or `s-maxage`, as for a request
    /// with `Authorization`, and never when it has a `Vary` (the key holds the client's
    /// fields, not those the backend saw).
    pub proxied_fields: bool,
}

impl Request<'_> {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.head
            .headers
            .iter()
            .map(|h| (h.name.get(self.buf), h.value.get(self.buf)))
    }

    fn value_of(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// A fresh entry for the request.
pub struct Hit {
    pub entry: Rc<Entry>,
    /// A conditional request it satisfies: answered `304 Not Modified`.
    pub not_modified: bool,
}

/// What the lookup found.
pub enum Lookup<'a> {
    Hit(Hit),
    /// Forward it; the fill stores the response when it may.
    Miss(Box<Fill<'a>>),
}

/// Requests of one shard that may wait on one key's fetch; more go to the backend.
const MAX_WAITERS: usize = 1024;

/// The longest a request waits on another's fetch of its key (nginx's
/// `proxy_cache_lock_timeout` default): then it goes to the backend itself.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Looks the request up in its route's store on this shard. A miss for a key another
/// request of this shard is already fetching waits for that fetch (at most `wait`) and
/// looks again; if still a miss it is fetched without waiting again.
pub async fn lookup<'a>(
    cache: &'a ShardCache,
    route: &str,
    cfg: &CacheConfig,
    req: &Request<'_>,
    wait: Duration,
) -> Lookup<'a> {
    let mut rules = policy::request_rules(req.fields());
    rules.authorization |= req.proxied_fields;
    let mut fill = Fill {
        cache,
        route: route.into(),
        cfg: cfg.clone(),
        key: Vec::new(),
        inflight: None,
        req: Vec::new(),
        rules,
        request_time: unix_now(),
        store: false,
        no_vary: req.proxied_fields,
        bypass: true,
        verdict: None,
        admitted: None,
        tee: None,
    };
    let usable = matches!(req.method, Method::Get | Method::Head);
    if !usable || req.unusual || rules.bypass {
        return Lookup::Miss(Box::new(fill));
    }
    fill.bypass = false;
    policy::primary_key(req.https, req.host, req.target, &mut fill.key);
    let mut waited = false;
    loop {
        if let Some(hit) = find(cache, route, &fill.key, req) {
            ShardCache::bump(&cache.hits);
            // Counted: the fill drops unused.
            fill.verdict = Some(HIT);
            return Lookup::Hit(hit);
        }
        if req.method == Method::Head {
            // A HEAD has no body to store; it is forwarded as it is.
            return Lookup::Miss(Box::new(fill));
        }
        let mut flight = Vec::with_capacity(route.len() + 1 + fill.key.len());
        flight.extend_from_slice(route.as_bytes());
        flight.push(b' ');
        flight.extend_from_slice(&fill.key);
        let rx = {
            let mut inflight = cache.inflight.borrow_mut();
            match inflight.get_mut(&flight) {
                Some(waiters) if !waited && waiters.len() < MAX_WAITERS => {
                    // Senders of waiters that gave up are dropped here, not kept.
                    waiters.retain(|tx| !tx.is_canceled());
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                Some(_) => None,
                None => {
                    inflight.insert(flight.clone(), Vec::new());
                    fill.inflight = Some(flight);
                    None
                }
            }
        };
        match rx {
            Some(rx) => {
                // Woken when the fetch ends, stored or not (its sender drops).
                let _ = monoio::time::timeout(wait.min(MAX_WAIT), rx).await;
                waited = true;
            }
            None => break,
        }
    }
    fill.store = true;
    fill.req = req
        .fields()
        .map(|(n, v)| (n.to_ascii_lowercase().into(), v.into()))
        .collect();
    Lookup::Miss(Box::new(fill))
}

/// The fresh entry for the request, if the store has one (a stale one is removed).
fn find(cache: &ShardCache, route: &str, url: &[u8], req: &Request<'_>) -> Option<Hit> {
    let mut stores = cache.stores.borrow_mut();
    let store = stores.get_mut(route)?;
    store.record(url);
    let names = store.vary_names(url)?;
    let mut key = url.to_vec();
    policy::vary_key(&names, req.fields(), &mut key);
    let entry = store.get(&key)?;
    if !entry.fresh(Instant::now()) {
        store.remove(&key);
        return None;
    }
    // Conditionals only change a 2xx answer (RFC 9110 §13.2.1): a stored 404 stays a 404.
    let not_modified = matches!(entry.status, 200 | 203)
        && policy::not_modified(
            req.value_of(b"if-none-match"),
            req.value_of(b"if-modified-since"),
            entry.etag.as_deref(),
            entry.last_modified,
            unix_now(),
        );
    Some(Hit {
        entry,
        not_modified,
    })
}

/// A response body as it is relayed, decoded, kept while it fits `max` bytes.
pub struct Tee {
    pub body: Vec<u8>,
    max: usize,
    /// More than `max` bytes came: nothing is kept.
    pub overflow: bool,
}

impl Tee {
    /// Keeps `data` (the next piece of the decoded body).
    #[inline]
    pub fn push(&mut self, data: &[u8]) {
        if self.overflow {
            return;
        }
        if self.body.len() + data.len() > self.max {
            self.overflow = true;
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(data);
        }
    }
}

/// A request field kept for the `Vary` part of the key: (name, value).
type Field = (Box<[u8]>, Box<[u8]>);

/// A response stored once its body is complete.
struct Admitted {
    status: u16,
    /// When the head came: the entry's resident time counts from here, not from the end
    /// of a (possibly slow) relay.
    at: Instant,
    head: Box<[u8]>,
    vary: Vec<Box<[u8]>>,
    lifetime: u64,
    initial_age: u64,
    etag: Option<Box<[u8]>>,
    last_modified: Option<u64>,
}

/// A cached route's request that was not answered from the cache: what storing its
/// response needs. Dropping it ends the fetch for requests waiting on the same key.
pub struct Fill<'a> {
    cache: &'a ShardCache,
    route: Box<str>,
    cfg: CacheConfig,
    /// The URL part of the key.
    key: Vec<u8>,
    /// The in-flight entry this fetch registered (the first miss for the key).
    inflight: Option<Vec<u8>>,
    /// The request's fields (names lower-case), for the `Vary` part of the key.
    req: Vec<Field>,
    rules: RequestRules,
    request_time: u64,
    /// Responses with a `Vary` are not stored ([`Request::proxied_fields`]).
    no_vary: bool,
    /// The response may be stored (a GET that was neither bypassed nor unusual).
    store: bool,
    /// The request bypassed the cache (method, body, `no-store`/`no-cache`).
    bypass: bool,
    verdict: Option<&'static [u8]>,
    admitted: Option<Admitted>,
    tee: Option<Tee>,
}

impl Fill<'_> {
    /// Decides from the response head (`head`, parsed from `buf`) whether the response is
    /// stored, counts the request, and returns its `X-Cache` value. A stored one's body is
    /// to be relayed through [`Fill::tee`].
    pub fn admit(
        &mut self,
        buf: &[u8],
        head: &ResponseHead,
        framing: BodyFraming,
    ) -> &'static [u8] {
        let verdict = if self.bypass {
            BYPASS
        } else if !self.store || self.decide(buf, head, framing) {
            MISS
        } else {
            BYPASS
        };
        self.verdict = Some(verdict);
        if self.admitted.is_none() {
            // Nothing will be stored: requests waiting on this key go to the backend now,
            // not after this response's (maybe slow, maybe huge) relay.
            self.release();
        }
        let c = &self.cache;
        ShardCache::bump(if verdict == MISS {
            &c.misses
        } else {
            &c.bypasses
        });
        verdict
    }

    fn decide(&mut self, buf: &[u8], head: &ResponseHead, framing: BodyFraming) -> bool {
        let max = self.cfg.max_object;
        match framing {
            BodyFraming::Length(n) if n > max => return false,
            BodyFraming::Length(_) | BodyFraming::Chunked => {}
            // Its end cannot be told from a backend that died mid-body: never stored.
            BodyFraming::UntilClose => return false,
            BodyFraming::None if head.status == 204 => {}
            BodyFraming::None => return false,
        }
        let facts = policy::response_facts(
            head.headers
                .iter()
                .map(|h| (h.name.get(buf), h.value.get(buf))),
        );
        let now = unix_now();
        let Storable::Yes { lifetime } = policy::storable(head.status, &facts, self.rules, now)
        else {
            return false;
        };
        if self.no_vary && !facts.vary.is_empty() {
            return false;
        }
        let initial_age = policy::initial_age(&facts, self.request_time, now);
        if initial_age >= lifetime || buf.len() < head.head_len {
            return false;
        }
        self.admitted = Some(Admitted {
            status: head.status,
            at: Instant::now(),
            head: buf[..head.head_len].into(),
            vary: facts.vary,
            lifetime,
            initial_age,
            etag: facts.etag,
            last_modified: facts.last_modified,
        });
        self.tee = Some(Tee {
            body: Vec::new(),
            max: usize::try_from(max).unwrap_or(usize::MAX),
            overflow: false,
        });
        true
    }

    /// Where the relay keeps the body of a response being stored.
    pub fn tee(&mut self) -> Option<&mut Tee> {
        self.tee.as_mut()
    }

    /// The response is relayed transformed (compressed for this client): nothing of it is
    /// stored, and the fetch ends without an entry when the fill is finished or dropped.
    pub fn skip(&mut self) {
        self.tee = None;
        self.admitted = None;
        self.release();
    }

    /// Ends the fetch for the requests waiting on this key (they look again, then go to
    /// the backend).
    fn release(&mut self) {
        if let Some(k) = self.inflight.take() {
            // Dropping the senders wakes the waiters.
            let waiters = self.cache.inflight.borrow_mut().remove(&k);
            drop(waiters);
        }
    }

    /// The response was relayed whole (`complete`): stores it if it was admitted and its
    /// body fitted. Then the fetch ends (waiters wake and look again).
    pub fn finish(mut self, complete: bool) {
        let (Some(a), Some(tee)) = (self.admitted.take(), self.tee.take()) else {
            return;
        };
        if !complete || tee.overflow {
            return;
        }
        let mut key = self.key.clone();
        let fields = self.req.iter().map(|(n, v)| (&n[..], &v[..]));
        policy::vary_key(&a.vary, fields, &mut key);
        let entry = Entry {
            status: a.status,
            head: a.head,
            body: tee.body.into(),
            stored: a.at,
            initial_age: a.initial_age,
            lifetime: a.lifetime,
            etag: a.etag,
            last_modified: a.last_modified,
        };
        let mut stores = self.cache.stores.borrow_mut();
        let store = stores
            .entry(self.route.clone())
            .or_insert_with(|| Store::new(self.cfg.size, self.cfg.policy));
        // A reload may have changed the size or the policy.
        store.configure(self.cfg.size, self.cfg.policy);
        let rejected = store.rejected;
        let evicted = store.insert(&key, self.key.len(), Rc::from(a.vary), entry);
        let c = &self.cache.evictions;
        c.set(c.get() + evicted);
        if store.rejected != rejected {
            ShardCache::bump(&self.cache.rejected);
        }
    }
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        if self.verdict.is_none() {
            // No response head came (the backend failed): a miss all the same.
            let c = &self.cache;
            ShardCache::bump(if self.bypass { &c.bypasses } else { &c.misses });
        }
        self.release();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
