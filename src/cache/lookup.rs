//! The cache's *lookup* (stage 5½): the request's key, the store's entry for it (fresh,
//! stale within a window, or with a validator), conditional requests answered `304` from an
//! entry, and collapsed misses: a miss for a key another request of this shard is fetching
//! waits for that fetch. What it returns is in the parent module ([`super::Lookup`]).

use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;

use super::inflight::{fetch_key, Claim, ClientWait, Flight};
use super::policy::{self, RequestRules, Usable};
use super::store::Entry;
use super::{unix_now, Fill, FillState, Hit, Lookup, Request, ShardCache, Stale, HIT, STALE};
use crate::config::CacheConfig;
use crate::http::parse::Method;

/// A stale entry found for the request.
struct Found {
    entry: Rc<Entry>,
    /// Its whole key (URL and `Vary` part).
    key: Vec<u8>,
    usable: Usable,
    /// Fresh by its own lifetime: only the request's `max-age` / `min-fresh` refused it.
    fresh: bool,
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
    rules.bypass |= req.carries_any(&cfg.bypass);
    let usable = matches!(req.method, Method::Get | Method::Head);
    // Behind a trusted proxy, the URL its claims tell the backend (`None`: one a key cannot
    // name).
    let claimed = match req.trusted_forwarding {
        true => super::forwarded::origin(req.https, req.host, req.fields()),
        false => Some((req.https, Vec::new())),
    };
    let Some((https, claimed_host)) = claimed
        .as_ref()
        .filter(|_| usable && !req.unusual && !rules.bypass)
    else {
        // An unsafe method's success removes its URL's entries (RFC 9111 §4.4): its key,
        // when one can name it.
        let invalidates = !matches!(
            req.method,
            Method::Get | Method::Head | Method::Options | Method::Trace
        );
        let key = match claimed.filter(|_| invalidates) {
            Some((https, claimed_host)) => url_key(req, https, &claimed_host),
            None => Vec::new(),
        };
        let mut fill = new_fill(cache, route, cfg, req, rules, key);
        fill.s.invalidates = invalidates && !fill.key.is_empty();
        return Lookup::Miss(Box::new(fill));
    };
    let key = url_key(req, *https, claimed_host);
    // A fresh hit, the common case, needs no fill (no fetch, nothing to store).
    let first = find(cache, route, cfg, &key, req, &rules);
    if let Some(f) = first.as_ref().filter(|f| f.usable == Usable::Fresh) {
        ShardCache::bump(&cache.hits);
        return Lookup::Hit(hit_of(f.entry.clone(), req, HIT));
    }
    let mut fill = new_fill(cache, route, cfg, req, rules, key);
    fill.bypass = false;
    let mut first = Some(first);
    let mut waited = false;
    let mut stale: Option<Found>;
    loop {
        let found = match first.take() {
            Some(found) => found,
            None => find(cache, route, cfg, &fill.key, req, &fill.rules),
        };
        stale = match found {
            Some(f) if f.usable == Usable::Fresh => {
                ShardCache::bump(&cache.hits);
                // Counted: the fill drops unused.
                fill.verdict = Some(HIT);
                return Lookup::Hit(hit_of(f.entry, req, HIT));
            }
            found => found,
        };
        let while_revalidate = matches!(
            stale,
            Some(Found {
                usable: Usable::WhileRevalidate { .. },
                ..
            })
        );
        if req.method == Method::Head {
            // A HEAD has no body to store; it is forwarded as it is (a stale entry within
            // its window answers it, and is revalidated by the next GET).
            if let Some(f) = stale.take().filter(|_| while_revalidate) {
                return stale_answer(&mut fill, f.entry, req);
            }
            break;
        }
        let flight = fetch_key(route, &fill.key);
        let rx = {
            let mut inflight = cache.inflight.borrow_mut();
            match inflight.get_mut(&flight) {
                // Another request is revalidating it: the stale entry is the answer now.
                Some(_) if while_revalidate => None,
                Some(f) if !waited && f.waiters.len() < MAX_WAITERS => {
                    // Senders of waiters that gave up are dropped here, not kept.
                    f.waiters.retain(|tx| !tx.is_canceled());
                    let (tx, rx) = oneshot::channel();
                    f.waiters.push(tx);
                    Some((rx, f.client_wait.clone()))
                }
                Some(_) => None,
                None => {
                    let client_wait = ClientWait::default();
                    let f = Flight {
                        waiters: Vec::new(),
                        client_wait: client_wait.clone(),
                    };
                    inflight.insert(flight.clone(), f);
                    fill.inflight = Some(Claim {
                        inflight: cache.inflight.clone(),
                        key: flight,
                        client_wait,
                    });
                    None
                }
            }
        };
        match rx {
            Some((rx, client_wait)) => {
                // Boxed: a monoio timer inline would over-align the request's future.
                Box::pin(wait_for_fetch(rx, &client_wait, wait.min(MAX_WAIT))).await;
                waited = true;
            }
            None => break,
        }
    }
    // RFC 9111 §4.2.3: the age counts from when the request goes to the backend, not from
    // when it began to wait on another's fetch (up to MAX_WAIT, which would age the response
    // by as much, or make a short-lived one unstorable).
    fill.request_sent = crate::clock::now();
    if req.method == Method::Get {
        fill.store = true;
        fill.s.fetch = Some(cache.fetch(route, &fill.key));
        fill.req = req
            .forwarded_fields()
            .map(|(n, v)| (n.to_ascii_lowercase().into(), v.into()))
            .collect();
    }
    let stale = stale.map(|f| {
        let (while_revalidate, if_error) = match f.usable {
            Usable::WhileRevalidate { if_error } => (true, if_error),
            Usable::Stale { if_error } => (false, if_error),
            Usable::Fresh => (false, false),
        };
        let st = Stale {
            entry: f.entry,
            key: f.key,
            if_error,
            fresh: f.fresh,
        };
        (st, while_revalidate)
    });
    // A ranged miss this request fetches: the whole object in the background (holding the
    // key's claim, so concurrent misses wait for it), the range forwarded as it came.
    // The range's own fill may store a backend's whole 200 (one that ignores `Range`).
    if stale.is_none()
        && fill.store
        && fill.inflight.is_some()
        && !fill.rules.only_if_cached
        && super::range::asks_part(req.fields())
        && fill.claim_background()
    {
        let mut relayed = new_fill(cache, route, cfg, req, fill.rules, fill.key.clone());
        relayed.bypass = false;
        relayed.store = true;
        relayed.ranged = true;
        relayed.req = fill.req.clone();
        relayed.request_sent = fill.request_sent;
        relayed.s.fetch = Some(cache.fetch(route, &relayed.key));
        return Lookup::RangeMiss(Box::new(relayed), Box::new(fill));
    }
    match stale {
        Some((st, true)) if fill.inflight.is_none() => {
            // Someone else revalidates it.
            stale_answer(&mut fill, st.entry, req)
        }
        Some((st, true)) if fill.claim_background() => {
            let hit = stale_answer(&mut fill, st.entry.clone(), req);
            fill.stale = Some(st);
            match hit {
                Lookup::Stale(hit, _) => Lookup::Stale(hit, Some(Box::new(fill))),
                other => other,
            }
        }
        // Outside the window, or no room for another background revalidation: this
        // request revalidates it in the foreground.
        st => {
            fill.stale = st.map(|(st, _)| st);
            Lookup::Miss(Box::new(fill))
        }
    }
}

/// The fill of a request that is not a fresh hit (a bypass until the lookup says otherwise).
/// How often a request waiting on another's fetch looks whether that fetch's relay is held
/// by its client, and how long such a hold may last before it stops waiting.
const LOOK_EVERY: Duration = Duration::from_millis(50);
const HELD_BY_CLIENT: Duration = Duration::from_millis(200);

/// Waits until another request's fetch of the key ends (its claim drops, stored or not), at
/// most `max`, and no longer once that fetch's relay has waited [`HELD_BY_CLIENT`] on one
/// write to its client: the entry is stored when the body has gone through to that client,
/// and one that stops reading would otherwise hold every waiter for `max` (nginx's
/// `proxy_cache_lock` fills at the backend's pace). The waiter then fetches for itself.
async fn wait_for_fetch(mut rx: oneshot::Receiver<()>, client_wait: &ClientWait, max: Duration) {
    let until = crate::clock::now() + max;
    loop {
        let now = crate::clock::now();
        if now >= until || client_wait.get().is_some_and(|t| now - t >= HELD_BY_CLIENT) {
            return;
        }
        if monoio::time::timeout(LOOK_EVERY.min(until - now), &mut rx)
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// The URL part of the request's key: `https` and the host a trusted proxy's claims name
/// (`claimed_host`; the request's `Host` otherwise), then that `Host` too where it differs.
fn url_key(req: &Request<'_>, https: bool, claimed_host: &[u8]) -> Vec<u8> {
    let host = if req.trusted_forwarding {
        claimed_host
    } else {
        req.host
    };
    let mut key = Vec::new();
    policy::primary_key(https, host, req.target, &mut key);
    if req.trusted_forwarding && !host.eq_ignore_ascii_case(req.host) {
        key.extend_from_slice(policy::SENT_HOST);
        key.extend(req.host.iter().map(u8::to_ascii_lowercase));
    }
    key
}

fn new_fill<'a>(
    cache: &'a ShardCache,
    route: &str,
    cfg: &CacheConfig,
    req: &Request<'_>,
    rules: RequestRules,
    key: Vec<u8>,
) -> Fill<'a> {
    Fill {
        cache,
        whole: None,
        s: FillState {
            route: route.into(),
            cfg: cfg.clone(),
            key,
            inflight: None,
            req: Vec::new(),
            rules,
            request_sent: crate::clock::now(),
            store: false,
            no_vary: req.proxied_fields,
            own: req.own_fields.to_vec(),
            bypass: true,
            verdict: None,
            admitted: None,
            tee: None,
            stale: None,
            replaces: false,
            background: false,
            ranged: false,
            purges: cache.purges.get(),
            fetch: None,
            invalidates: false,
        },
    }
}

/// A stale entry as the answer (`X-Cache: STALE`), counted; the fill is not used.
fn stale_answer<'a>(fill: &mut Fill<'_>, entry: Rc<Entry>, req: &Request<'_>) -> Lookup<'a> {
    ShardCache::bump(&fill.cache.stale);
    fill.verdict = Some(STALE);
    Lookup::Stale(hit_of(entry, req, STALE), None)
}

/// The entry `entry` as the answer to `req`, labelled `x_cache`.
fn hit_of(entry: Rc<Entry>, req: &Request<'_>, x_cache: &'static [u8]) -> Hit {
    Hit::new(entry, req.fields(), x_cache)
}

/// Whether the request with `fields` gets a `304` from `entry`. Conditionals only change a
/// 2xx answer (RFC 9110 §13.2.1): a stored 404 stays a 404.
pub(super) fn answers_304<'h>(
    entry: &Entry,
    fields: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
) -> bool {
    let value_of = |name: &[u8]| {
        fields
            .clone()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    // Several `If-None-Match` lines are one list (RFC 9110 §5.3).
    let mut inm = fields
        .clone()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"if-none-match"))
        .map(|(_, v)| v);
    let joined;
    let if_none_match = match (inm.next(), inm.next()) {
        (Some(first), Some(second)) => {
            joined = [first, second]
                .into_iter()
                .chain(inm)
                .collect::<Vec<_>>()
                .join(&b", "[..]);
            Some(&joined[..])
        }
        (first, _) => first,
    };
    let if_modified_since = value_of(b"if-modified-since");
    // What `If-Modified-Since` compares with (RFC 9111 §4.3.2): the stored `Last-Modified`;
    // without one its `Date`; without that, when it was received. Looked up only for a
    // request that asks.
    let modified = match (entry.last_modified, if_modified_since, if_none_match) {
        (None, Some(_), None) => Some(
            entry
                .head
                .parsed
                .headers
                .iter()
                .find(|h| h.name.get(&entry.head.bytes).eq_ignore_ascii_case(b"date"))
                .and_then(|h| policy::parse_http_date(h.value.get(&entry.head.bytes)))
                .unwrap_or_else(|| {
                    let held = crate::clock::now().saturating_duration_since(entry.stored);
                    unix_now().saturating_sub(held.as_secs())
                }),
        ),
        (lm, ..) => lm,
    };
    matches!(entry.status, 200 | 203)
        && policy::not_modified(
            if_none_match,
            if_modified_since,
            entry.etag.as_deref(),
            modified,
            unix_now,
        )
}

/// The entry for the request, if the store has one it may use: fresh, or stale with a
/// validator or within a stale window (capped by `cfg`), as the request's `max-age` and
/// `min-fresh` allow ([`policy::for_request`]). Another stale one is removed.
fn find(
    cache: &ShardCache,
    route: &str,
    cfg: &CacheConfig,
    url: &[u8],
    req: &Request<'_>,
    rules: &RequestRules,
) -> Option<Found> {
    let mut stores = cache.stores.borrow_mut();
    let store = stores.get_mut(route)?;
    store.record(url);
    let names = store.vary_names(url)?;
    let mut key = url.to_vec();
    policy::vary_key(&names, req.forwarded_fields(), &mut key);
    let entry = store.get(&key)?;
    // Invalidated since it was stored, here or on another shard ([`super::invalidate`]).
    if cache.invalidated_since(route, url, entry.stored) {
        let gone = store.remove_url(url);
        crate::stats::add(&cache.invalidated, gone);
        return None;
    }
    let age = entry.age(crate::clock::now());
    let usable = policy::usable(age, entry.lifetime, windows(&entry, cfg));
    if usable == (Usable::Stale { if_error: false }) && !entry.has_validator() {
        store.remove(&key);
        return None;
    }
    let fresh = usable == Usable::Fresh;
    let usable = policy::for_request(usable, age, entry.lifetime, rules);
    Some(Found {
        entry,
        key,
        usable,
        fresh,
    })
}

/// `entry` may be served now because its backend failed: stale within its `stale-if-error`
/// window (or still fresh).
pub(super) fn within_if_error(entry: &Entry, cfg: &CacheConfig) -> bool {
    let age = entry.age(crate::clock::now());
    !matches!(
        policy::usable(age, entry.lifetime, windows(entry, cfg)),
        Usable::WhileRevalidate { if_error: false } | Usable::Stale { if_error: false }
    )
}

/// An entry's stale windows within the route's caps.
fn windows(entry: &Entry, cfg: &CacheConfig) -> (u64, u64) {
    (
        entry.windows.0.min(cfg.stale_while_revalidate_max),
        entry.windows.1.min(cfg.stale_if_error_max),
    )
}
