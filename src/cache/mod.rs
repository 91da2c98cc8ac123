//! Stage 5½ of the pipeline, the response *cache* (a route's `cache`): looked up after
//! *route* and its auth, before *balance/forward* ([`lookup`]); a fresh hit is answered
//! from memory ([`serve`]) and no backend is contacted. A miss goes on with a [`Fill`]:
//! in *respond* it decides from the response head whether the response may be stored
//! ([`Fill::admit`]), tees the decoded body while it is relayed ([`Tee`], the copy path:
//! such a response is never spliced), and stores it once relayed whole ([`Fill::finish`]).
//!
//! Layout: one cache per shard ([`ShardCache`], in [`crate::shard::ShardCommon`]), one
//! [`store::Store`] per cached route, no locks and nothing shared between shards but the
//! table that tells them of invalidations ([`invalidate`]). With N
//! shards a key may be stored (and fetched) up to N times, and each shard holds up to the
//! route's `size`. Concurrent misses for one key on one shard collapse into one upstream
//! fetch: the first registers the key as in flight, the others wait for it to finish.
//! The rules (RFC 9111) are in [`policy`]. Bodies from 32 KiB are kept in the shard's body
//! file and sent from it without a copy ([`body`]).
//!
//! A stale entry is kept while it has a validator or a stale window
//! ([`policy::usable`]). Within `stale-while-revalidate` it is served at once (`X-Cache:
//! STALE`) and the first such request revalidates it in the background ([`refresh`]);
//! otherwise the request that finds it is forwarded as a conditional request built from the
//! entry ([`revalidate`]: a `304` refreshes the entry and the client gets it), and when that
//! fails within `stale-if-error` the stale entry is the answer. Stale requests for one key
//! collapse like misses.

pub mod admission;
pub mod body;
mod forwarded;
mod inflight;
pub mod invalidate;
mod lookup;
pub mod policy;
mod range;
pub mod refresh;
pub mod revalidate;
pub mod serve;
pub mod store;
mod tee;

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;

use crate::config::CacheConfig;
use crate::http::parse::{BodyFraming, Method, RequestHead, ResponseHead};
use inflight::{Claim, Fetch, Fetching, Inflight};
use policy::{RequestRules, Storable};
pub use range::Part;
use store::{Entry, Store, StoredHead};
pub use tee::Tee;

pub use lookup::lookup;
use lookup::{answers_304, within_if_error};
pub use revalidate::{settle, Settled};
pub use serve::serve;

/// `X-Cache` values.
pub const HIT: &[u8] = b"HIT";
pub const MISS: &[u8] = b"MISS";
pub const BYPASS: &[u8] = b"BYPASS";
/// A stale entry served (`stale-while-revalidate`, or `stale-if-error`).
pub const STALE: &[u8] = b"STALE";
/// A stale entry the backend confirmed with a `304`.
pub const REVALIDATED: &[u8] = b"REVALIDATED";

/// One shard's cache: a store per cached route (by route name, so a reload keeps the
/// entries of routes that remain), the keys being fetched, and the counters.
#[derive(Default)]
pub struct ShardCache {
    stores: RefCell<FxHashMap<Box<str>, Store>>,
    /// Route name + key → those waiting for its fetch (woken when the fetch's [`Claim`]
    /// drops: the senders drop with it).
    inflight: Inflight,
    pub hits: Cell<u64>,
    pub misses: Cell<u64>,
    pub bypasses: Cell<u64>,
    /// Responses with `X-Cache: STALE` and `REVALIDATED`.
    pub stale: Cell<u64>,
    pub revalidated: Cell<u64>,
    pub evictions: Cell<u64>,
    /// Responses not stored by the admission policy (`cache.policy = "tinylfu"`).
    pub rejected: Cell<u64>,
    /// Responses not stored because they would have passed `cache.fill_memory`.
    pub fill_dropped: Cell<u64>,
    /// Entries removed because an unsafe request to their URL succeeded (RFC 9111 §4.4).
    pub invalidated: Cell<u64>,
    /// Revalidations (foreground and background) by result: the backend answered `304`,
    /// a new response (stored or not), or failed (unreachable, timed out, 5xx).
    pub revalidations_not_modified: Cell<u64>,
    pub revalidations_replaced: Cell<u64>,
    pub revalidations_failed: Cell<u64>,
    /// The shard's file for large bodies ([`body`]).
    pub bodies: body::BodyFile,
    /// Purges so far: a fill that was in flight during one is not stored (its response may
    /// predate what the purge was for).
    purges: Cell<u64>,
    /// Route name + key of each URL being fetched to be stored → (fetches, invalidations
    /// since the first): a fetch during which its URL was invalidated (RFC 9111 §4.4) is not
    /// stored, it may predate the change. Held only while fetches are in flight ([`Fetch`]).
    fetching: Fetching,
    /// The process's invalidation table ([`invalidate`]); `None` in unit tests of one cache.
    peers: Option<std::sync::Arc<invalidate::Invalidations>>,
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
        Self::bump(&self.purges);
        let mut stores = self.stores.borrow_mut();
        stores
            .values_mut()
            .map(|s| match p {
                // With the `Host` a trusted proxy's claim was keyed beside, too.
                Purge::Key(k) => s.purge(|url| {
                    url.strip_prefix(&k[..])
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(policy::SENT_HOST))
                }),
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
    /// The peer is a trusted proxy, whose forwarding claims the backend is given: the key
    /// names the URL they tell it ([`forwarded::origin`]).
    pub trusted_forwarding: bool,
    /// Fields the proxy writes under names the configuration chose
    /// ([`crate::snapshot::Shared::own_fields`]; empty with the defaults): a response that
    /// varies on one is not stored.
    pub own_fields: &'r [Box<[u8]>],
}

impl Request<'_> {
    /// Whether the request carries a value for one of `keys` (`cache.bypass`): one a backend
    /// may read as it ([`crate::ratelimit_keys`]: any spelling, decoded), not empty and not
    /// `0`, as nginx's `proxy_cache_bypass` tests its strings.
    fn carries_any(&self, keys: &[crate::balance::HashKey]) -> bool {
        keys.iter().any(|key| {
            let src = crate::balance::key::KeySource {
                client_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                target: self.target,
                headers: self.fields(),
            };
            let mut ip = crate::balance::key::IpText::default();
            let mut found = false;
            let each = |v: &[u8]| found |= v != b"0";
            crate::ratelimit_keys::for_each_value(key, src, &mut ip, each).is_err() || found
        })
    }

    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.head
            .headers
            .iter()
            .map(|h| (h.name.get(self.buf), h.value.get(self.buf)))
    }

    /// The fields a `Vary` key is made of: those the backend received, so not the ones the
    /// request's `Connection` names (a client's `Accept-Language: fr` with `Connection:
    /// Accept-Language` got the default language's answer, which must not be stored as the
    /// French one).
    fn forwarded_fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        let named = !self.head.conn_tokens.is_empty();
        self.fields()
            .filter(move |(n, _)| !(named && self.head.named_in_connection(self.buf, n)))
    }
}

/// A stored entry that is the answer to the request.
pub struct Hit {
    pub entry: Rc<Entry>,
    /// A conditional request it satisfies: answered `304 Not Modified`.
    pub not_modified: bool,
    /// `X-Cache`: [`HIT`], [`STALE`] or [`REVALIDATED`].
    pub x_cache: &'static [u8],
    /// The part of the body a `GET` asks for (`Range`): a `206` or a `416` ([`range`]).
    pub part: Part,
}

impl Hit {
    /// `entry` as the answer to a request with `fields`: a `304` when its condition holds
    /// (evaluated before `Range`, RFC 9110 §13.2.2), else the part of a `200`'s body it
    /// asks for.
    fn new<'h>(
        entry: Rc<Entry>,
        fields: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
        x_cache: &'static [u8],
    ) -> Hit {
        let not_modified = answers_304(&entry, fields.clone());
        let mut part = if not_modified || entry.status != 200 {
            Part::Whole
        } else {
            let e = &entry;
            Part::of(
                fields,
                e.body.len() as u64,
                e.etag.as_deref(),
                e.last_modified,
            )
        };
        // The backend said it serves no ranges of it (`Accept-Ranges: none`): nor does the
        // cache. (Looked for only when a part is asked: most hits ask none.)
        let (bytes, head) = (&entry.head.bytes, &entry.head.parsed);
        if part != Part::Whole
            && head.headers.iter().any(|h| {
                h.name.get(bytes).eq_ignore_ascii_case(b"accept-ranges")
                    && h.value
                        .get(bytes)
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"none")
            })
        {
            part = Part::Whole;
        }
        Hit {
            entry,
            not_modified,
            x_cache,
            part,
        }
    }
}

/// What the lookup found.
pub enum Lookup<'a> {
    Hit(Hit),
    /// A stale entry within its `stale-while-revalidate` window: the answer at once. With a
    /// fill when this request claimed the key's revalidation, to be run in the background
    /// ([`refresh::spawn`]).
    Stale(Hit, Option<Box<Fill<'a>>>),
    /// Forward it; the fill stores the response when it may (and revalidates a stale
    /// entry: [`Fill::condition`], [`settle`]).
    Miss(Box<Fill<'a>>),
    /// A miss for a byte range other than `bytes=0-`: the request is forwarded as it is
    /// with the first fill (a `206` relayed, not stored; a backend's whole `200` stored), which
    /// holds the second until the response head ([`Fill::defer_whole`]): a `206` showing the
    /// object may be stored starts its whole fetch in the background
    /// ([`refresh::start_whole`]), so the next ranges hit.
    RangeMiss(Box<Fill<'a>>, Box<Fill<'a>>),
}

/// The stale entry a fill revalidates or falls back to.
pub struct Stale {
    pub entry: Rc<Entry>,
    pub key: Vec<u8>,
    /// Within `stale-if-error`: served when the backend fails.
    pub if_error: bool,
    /// Fresh by its own lifetime, refused only by the request's `max-age` / `min-fresh`: a new
    /// response replaces it only once that is stored (other requests keep hitting it).
    pub fresh: bool,
}

/// A request field kept for the `Vary` part of the key: (name, value).
type Field = (Box<[u8]>, Box<[u8]>);

/// A response stored once its body is complete.
struct Admitted {
    status: u16,
    /// When the head came: the entry's resident time counts from here, not from the end
    /// of a (possibly slow) relay.
    at: Instant,
    head: StoredHead,
    vary: Vec<Box<[u8]>>,
    lifetime: u64,
    initial_age: u64,
    etag: Option<Box<[u8]>>,
    last_modified: Option<u64>,
    windows: (u64, u64),
}

/// A cached route's request that was not answered from the cache: what storing its
/// response needs. Dropping it ends the fetch for requests waiting on the same key.
pub struct Fill<'a> {
    cache: &'a ShardCache,
    s: FillState,
    /// A ranged miss's fetch of the whole object, held until the backend's `206` shows the
    /// object may be stored ([`Fill::take_whole`]).
    whole: Option<Box<Whole<'a>>>,
}

/// The background fetch of a ranged miss's whole object: its fill (holding the key's claim
/// and a background slot), the request head without the `Range`, and where it goes.
pub struct Whole<'a> {
    pub fill: Box<Fill<'a>>,
    pub head: Vec<u8>,
    pub upstream: usize,
    pub key: crate::upstream::state::PickKey,
}

/// A fill without its shard's cache: what a background revalidation carries into its task
/// ([`Fill::detach`], [`FillState::attach`]).
pub struct FillState {
    route: Box<str>,
    cfg: CacheConfig,
    /// The URL part of the key.
    key: Vec<u8>,
    /// The in-flight entry this fetch registered (the first miss for the key), until the
    /// response is admitted (then its [`Tee`] holds it).
    inflight: Option<Claim>,
    /// The request's fields (names lower-case), for the `Vary` part of the key.
    req: Vec<Field>,
    rules: RequestRules,
    /// When the request went to the backend: the response's age counts its delay.
    request_sent: Instant,
    /// Responses with a `Vary` are not stored ([`Request::proxied_fields`]).
    no_vary: bool,
    /// [`Request::own_fields`].
    own: Vec<Box<[u8]>>,
    /// The response may be stored (a GET that was neither bypassed nor unusual).
    store: bool,
    /// The request bypassed the cache (method, body, `no-store`/`no-cache`).
    bypass: bool,
    /// An unsafe method (not GET, HEAD, OPTIONS, TRACE): its success removes the entries of
    /// its URL, `key` (RFC 9111 §4.4).
    invalidates: bool,
    verdict: Option<&'static [u8]>,
    admitted: Option<Admitted>,
    tee: Option<Tee>,
    /// The stale entry this fetch revalidates (or replaces), and falls back to.
    stale: Option<Stale>,
    /// The response replaces the entry stored under its key (a revalidation answered with
    /// a new response): stored whatever `cache.policy` thinks of the URL.
    replaces: bool,
    /// A background revalidation: counts no `X-Cache` result, holds a slot of
    /// `background_revalidations`.
    background: bool,
    /// The request is a ranged miss ([`Lookup::RangeMiss`]): its `206` is a `MISS`.
    ranged: bool,
    /// [`ShardCache`]'s purge count when the fetch began.
    purges: u64,
    /// Registered when the request goes to the backend, for a response that may be stored.
    fetch: Option<Fetch>,
}

impl Deref for Fill<'_> {
    type Target = FillState;
    fn deref(&self) -> &FillState {
        &self.s
    }
}

impl DerefMut for Fill<'_> {
    fn deref_mut(&mut self) -> &mut FillState {
        &mut self.s
    }
}

impl FillState {
    /// The fill again, on its shard's cache.
    pub fn attach(self, cache: &ShardCache) -> Fill<'_> {
        Fill {
            cache,
            s: self,
            whole: None,
        }
    }

    /// An empty state, left behind by [`Fill::detach`] (drops without effect).
    fn taken(cfg: CacheConfig) -> FillState {
        FillState {
            route: Box::from(""),
            cfg,
            key: Vec::new(),
            inflight: None,
            req: Vec::new(),
            rules: RequestRules::default(),
            request_sent: crate::clock::now(),
            no_vary: false,
            own: Vec::new(),
            store: false,
            bypass: false,
            verdict: Some(MISS),
            admitted: None,
            tee: None,
            stale: None,
            replaces: false,
            background: false,
            ranged: false,
            purges: 0,
            fetch: None,
            invalidates: false,
        }
    }
}

impl<'a> Fill<'a> {
    /// The request asked for a stored response only (`only-if-cached`): a miss is a `504`.
    pub fn only_if_cached(&self) -> bool {
        self.s.rules.only_if_cached
    }

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
        } else if self.ranged && head.status == 206 {
            // Not stored, but its object is fetched (or could not be): a miss.
            MISS
        } else {
            BYPASS
        };
        self.verdict = Some(verdict);
        if self.invalidates && (200..400).contains(&head.status) {
            self.invalidate(&self.s.key);
            // The URLs the answer names, in this origin (RFC 9111 §4.4): a POST's `201` with
            // `Location: /items/7`, a PUT's `Content-Location`.
            for name in [&b"location"[..], b"content-location"] {
                let named = (head.header(buf, name))
                    .and_then(|value| policy::named_url(&self.s.key, value));
                if let Some(url) = named.filter(|url| *url != self.s.key) {
                    self.invalidate(&url);
                }
            }
        }
        if let Some(stale) = self.stale.take() {
            // A new response (not the 304 or the 5xx [`settle`] takes) about the resource
            // itself replaces the stale entry, stored or not. Not one about this request
            // (its own credentials, preconditions, ranges: a 401, 412, 416, 429): the
            // revalidation went out with the client's fields, and one client's refusal
            // must not remove what every other client is served, `stale-if-error` too.
            let about_the_resource =
                head.status < 400 || matches!(head.status, 404 | 405 | 410 | 414);
            if self.store && about_the_resource {
                // A fresh entry stays until the new response is stored over it (it may not
                // be: a client gone mid-body, a body over `max_object`).
                if !stale.fresh {
                    self.remove(&stale.key);
                    ShardCache::bump(&self.cache.revalidations_replaced);
                }
                self.replaces = true;
            } else {
                if self.store && head.status < 500 {
                    // An answer about the request: the entry was not revalidated.
                    ShardCache::bump(&self.cache.revalidations_failed);
                }
                self.stale = Some(stale);
            }
        }
        if self.admitted.is_none() {
            // Nothing will be stored: requests waiting on this key go to the backend now,
            // not after this response's (maybe slow, maybe huge) relay.
            self.release();
        }
        if !self.background {
            let c = &self.cache;
            ShardCache::bump(if verdict == MISS {
                &c.misses
            } else {
                &c.bypasses
            });
        }
        verdict
    }

    /// Removes every entry of `url` (each `Vary` variant) here, and tells the other shards.
    fn invalidate(&self, url: &[u8]) {
        let gone = self.with_store(|store| store.remove_url(url));
        crate::stats::add(&self.cache.invalidated, gone);
        self.cache.invalidated(&self.s.route, url);
        self.cache.tell_others(&self.s.route, url);
    }

    /// Removes the entry under `key` from the route's store.
    fn remove(&self, key: &[u8]) {
        if let Some(store) = self.cache.stores.borrow_mut().get_mut(&self.route) {
            store.remove(key);
        }
    }

    /// Runs `f` on the route's store on this shard, made on first use (the route's name is
    /// copied only then).
    fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut stores = self.cache.stores.borrow_mut();
        match stores.get_mut(&self.route) {
            Some(store) => f(store),
            None => f(stores
                .entry(self.route.clone())
                .or_insert_with(|| Store::new(self.cfg.size, self.cfg.policy))),
        }
    }

    /// Stores `entry` under `key` (`key[..self.key.len()]` is its URL, `vary` its `Vary`
    /// names).
    fn insert(&self, key: &[u8], vary: Rc<[Box<[u8]>]>, entry: Entry) {
        self.with_store(|store| self.insert_into(store, key, vary, entry))
    }

    fn insert_into(&self, store: &mut Store, key: &[u8], vary: Rc<[Box<[u8]>]>, entry: Entry) {
        // A reload may have changed the size or the policy.
        store.configure(self.cfg.size, self.cfg.policy);
        let rejected = store.rejected;
        let evicted = if self.replaces {
            store.replace(key, self.key.len(), vary, entry)
        } else {
            store.insert(key, self.key.len(), vary, entry)
        };
        let c = &self.cache.evictions;
        c.set(c.get() + evicted);
        if store.rejected != rejected {
            ShardCache::bump(&self.cache.rejected);
        }
    }

    /// Takes one of the route's `background_revalidations` slots on this shard for this
    /// fill (given back when it drops); false when none is free.
    fn claim_background(&mut self) -> bool {
        let limit = self.cfg.background_revalidations;
        let claimed = self.with_store(|store| {
            let free = store.background < limit;
            store.background += usize::from(free);
            free
        });
        self.background = claimed;
        claimed
    }

    /// Holds `whole`, the fetch of the whole object behind this ranged miss, until the
    /// response head says whether to start it ([`Fill::take_whole`]).
    pub fn defer_whole(
        &mut self,
        fill: Box<Fill<'a>>,
        head: Vec<u8>,
        upstream: usize,
        key: crate::upstream::state::PickKey,
    ) {
        self.whole = Some(Box::new(Whole {
            fill,
            head,
            upstream,
            key,
        }));
    }

    /// The deferred whole-object fetch, when the response head `head` (in `buf`) shows the
    /// object may be stored: a `206` whose `Content-Range` names a length within
    /// `max_object` and `fill_memory`, with the fields a `200` would need to be stored
    /// (freshness, no `private`, `no-store`, `Set-Cookie`, ...). Otherwise it is dropped
    /// (its claim and slot released), and the backend is asked once per range, as before.
    pub fn take_whole(&mut self, buf: &[u8], head: &ResponseHead) -> Option<Box<Whole<'a>>> {
        let mut whole = self.whole.take()?;
        if self.whole_storable(buf, head) {
            return Some(whole);
        }
        // Not a miss of its own: the request's fill counts it.
        whole.fill.verdict = Some(MISS);
        None
    }

    fn whole_storable(&self, buf: &[u8], head: &ResponseHead) -> bool {
        if head.status != 206 || buf.len() < head.head_len {
            return false;
        }
        let total = (head.header(buf, b"content-range")).and_then(range::total_length);
        if total.is_none_or(|t| t > self.cfg.max_object || t > self.cfg.fill_memory) {
            return false;
        }
        let facts = stored_facts(buf, head);
        let valid = self.cfg.valid_for(200);
        let storable = policy::storable(200, &facts, self.rules, &self.own, (unix_now(), valid));
        matches!(storable, Storable::Yes { .. }) && (!self.no_vary || facts.vary.is_empty())
    }

    /// The fill without its cache reference, for a task of its own; dropping this one
    /// has no effect (the state, with its in-flight claim, moved).
    pub fn detach(mut self) -> FillState {
        let empty = FillState::taken(self.cfg.clone());
        std::mem::replace(&mut self.s, empty)
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
        let facts = stored_facts(buf, head);
        let now = unix_now();
        let valid = self.cfg.valid_for(head.status);
        let Storable::Yes { lifetime } =
            policy::storable(head.status, &facts, self.rules, &self.own, (now, valid))
        else {
            return false;
        };
        if self.no_vary && !facts.vary.is_empty() {
            return false;
        }
        let initial_age = policy::initial_age(&facts, self.request_sent.elapsed(), now);
        if initial_age >= lifetime || buf.len() < head.head_len {
            return false;
        }
        let held = self.with_store(|store| store.teeing.clone());
        if let BodyFraming::Length(n) = framing {
            // It would not fit beside the responses being stored now: not stored, and so
            // relayed as any other (spliced when large) instead of copied for nothing.
            if held.get().saturating_add(n) > self.cfg.fill_memory {
                ShardCache::bump(&self.cache.fill_dropped);
                return false;
            }
        }
        let Some(stored) = StoredHead::new(buf[..head.head_len].into()) else {
            return false;
        };
        self.admitted = Some(Admitted {
            status: head.status,
            at: Instant::now(),
            head: stored,
            vary: facts.vary,
            lifetime,
            initial_age,
            windows: policy::stale_windows(&facts.directives),
            etag: facts.etag,
            last_modified: facts.last_modified,
        });
        self.tee = Some(Tee::new(
            usize::try_from(max).unwrap_or(usize::MAX),
            held,
            self.cfg.fill_memory,
            self.s.inflight.take(),
        ));
        true
    }

    /// Where the relay keeps the body of a response being stored.
    pub fn tee(&mut self) -> Option<&mut Tee> {
        self.tee.as_mut()
    }

    /// Ends the fetch for the requests waiting on this key (they look again, then go to
    /// the backend).
    fn release(&mut self) {
        self.inflight = None;
    }

    /// The response was relayed whole (`complete`): stores it if it was admitted and its
    /// body fitted. Then the fetch ends (waiters wake and look again).
    pub fn finish(mut self, complete: bool) {
        self.keep(complete);
    }

    /// [`Fill::finish`], for a fill that is kept.
    fn keep(&mut self, complete: bool) {
        let (Some(a), Some(mut tee)) = (self.admitted.take(), self.tee.take()) else {
            return;
        };
        if tee.over_budget {
            ShardCache::bump(&self.cache.fill_dropped);
        }
        // A purge or an invalidation of its URL while it was fetched (here or on another
        // shard): what it removed may be this response.
        let invalidated = self.fetch.as_ref().is_some_and(Fetch::invalidated)
            || self
                .cache
                .invalidated_since(&self.route, &self.key, self.request_sent);
        if !complete || tee.overflow || self.cache.purges.get() != self.purges || invalidated {
            return;
        }
        let mut key = self.key.clone();
        let fields = self.req.iter().map(|(n, v)| (&n[..], &v[..]));
        policy::vary_key(&a.vary, fields, &mut key);
        let entry = Entry {
            status: a.status,
            head: Rc::new(a.head),
            body: self.cache.bodies.store(tee.take()),
            stored: a.at,
            initial_age: a.initial_age,
            lifetime: a.lifetime,
            etag: a.etag,
            last_modified: a.last_modified,
            windows: a.windows,
        };
        self.insert(&key, Rc::from(a.vary), entry);
    }
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        if self.background {
            if let Some(store) = self.cache.stores.borrow_mut().get_mut(&self.route) {
                store.background = store.background.saturating_sub(1);
            }
        }
        if self.verdict.is_none() && !self.background {
            // No response head came (the backend failed): a miss all the same.
            let c = &self.cache;
            ShardCache::bump(if self.bypass { &c.bypasses } else { &c.misses });
        }
        self.release();
    }
}

/// What storing the response `head` (in `buf`) depends on. A field the backend's
/// `Connection` names is for that hop only: the client never sees it, and neither does the
/// cache (`Connection: Cache-Control` hides its freshness).
fn stored_facts(buf: &[u8], head: &ResponseHead) -> policy::ResponseFacts {
    let named = !head.conn_tokens.is_empty();
    policy::response_facts(
        head.headers
            .iter()
            .map(|h| (h.name.get(buf), h.value.get(buf)))
            .filter(|(n, _)| !(named && head.named_in_connection(buf, n))),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
