//! The response cache's rules (RFC 9111), between *route* and *forward* (lookup) and in
//! *respond* (store): the cache key, `Cache-Control` directives of requests and responses,
//! whether a response may be stored and for how long it is fresh, its age (§4.2.3), HTTP
//! dates, and conditional requests (`If-None-Match`, `If-Modified-Since`). Pure functions
//! over byte slices; nothing here can panic on network input.

use crate::http::fields::{same_field, written_by_proxy};
use std::time::Duration;

/// `Cache-Control` directives the cache acts on (others are ignored).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// RFC 5861's extensions: seconds past its lifetime a stale response may still be
    /// served while it is revalidated, or when revalidating it fails.
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// A request's `min-fresh` (RFC 9111 §5.2.1.3).
    pub min_fresh: Option<u64>,
    /// A request's `only-if-cached` (RFC 9111 §5.2.1.7).
    pub only_if_cached: bool,
}

impl Directives {
    /// Adds the directives of one `Cache-Control` field value (a comma-separated list of
    /// `name[=value]`, names case-insensitive, values possibly quoted). A delta-seconds value
    /// that does not parse makes its directive count as 0 (stale at once, RFC 9111 §1.2.2
    /// asks for the greatest value on overflow, which saturating parsing gives). A directive
    /// given more than once, in one field or several, keeps its strictest value: RFC 9111
    /// §4.2.1 allows the first or "stale", and `max-age=0, max-age=3600` (a framework's
    /// default appended to what the application said) must not make a response fresh for an
    /// hour; the smallest lifetime or window, the largest `min-fresh`, is never looser than
    /// the first.
    pub fn add(&mut self, value: &[u8]) {
        let least = |slot: &mut Option<u64>, v: u64| *slot = Some(slot.map_or(v, |o| o.min(v)));
        for item in crate::http::fields::list_members(value) {
            let item = item.trim_ascii();
            let (name, arg) = match item.iter().position(|&b| b == b'=') {
                Some(i) => (
                    item[..i].trim_ascii(),
                    Some(unquote(item[i + 1..].trim_ascii())),
                ),
                None => (item, None),
            };
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("no-store") {
                self.no_store = true;
            } else if is("no-cache") {
                self.no_cache = true;
            } else if is("only-if-cached") {
                self.only_if_cached = true;
            } else if is("private") {
                self.private = true;
            } else if is("public") {
                self.public = true;
            } else if is("max-age") {
                least(&mut self.max_age, arg.map_or(0, delta_seconds));
            } else if is("s-maxage") {
                least(&mut self.s_maxage, arg.map_or(0, delta_seconds));
            } else if is("must-revalidate") {
                self.must_revalidate = true;
            } else if is("proxy-revalidate") {
                self.proxy_revalidate = true;
            } else if is("stale-while-revalidate") {
                least(
                    &mut self.stale_while_revalidate,
                    arg.map_or(0, delta_seconds),
                );
            } else if is("stale-if-error") {
                least(&mut self.stale_if_error, arg.map_or(0, delta_seconds));
            } else if is("min-fresh") {
                let v = arg.map_or(0, delta_seconds);
                self.min_fresh = Some(self.min_fresh.map_or(v, |o| o.max(v)));
            }
        }
    }
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Delta-seconds (RFC 9111 §1.2.2): digits; too large saturates; anything else is 0.
pub fn delta_seconds(v: &[u8]) -> u64 {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    v.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

/// What the request asks of the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestRules {
    /// `Cache-Control: no-store` or `no-cache` (or `Pragma: no-cache` without a
    /// `Cache-Control`), or a method override ([`crate::http::fields::method_override`]):
    /// neither served from nor stored in the cache.
    pub bypass: bool,
    /// `Authorization` present: stored only when the response says `public` or `s-maxage`.
    pub authorization: bool,
    /// The request's `max-age` and `min-fresh` (RFC 9111 §5.2.1.1, §5.2.1.3): the oldest
    /// response, and the least freshness left, the client accepts ([`for_request`]).
    pub max_age: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `Cache-Control: only-if-cached` (RFC 9111 §5.2.1.7): a stored response fit for the
    /// request, or `504`, never the backend.
    pub only_if_cached: bool,
}

/// The request's cache rules from its fields (name, value).
pub fn request_rules<'h>(fields: impl Iterator<Item = (&'h [u8], &'h [u8])>) -> RequestRules {
    let mut d = Directives::default();
    let (mut cc, mut pragma, mut authorization, mut overridden) = (false, false, false, false);
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"cache-control") {
            cc = true;
            d.add(value);
        } else if name.eq_ignore_ascii_case(b"pragma") {
            pragma |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"no-cache"));
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = true;
        } else if crate::http::fields::method_override(name) {
            overridden = true;
        }
    }
    RequestRules {
        bypass: d.no_store || d.no_cache || (!cc && pragma) || overridden,
        authorization,
        max_age: d.max_age,
        min_fresh: d.min_fresh,
        only_if_cached: d.only_if_cached,
    }
}

/// Statuses a cache may store (RFC 9110 §15.1's heuristically cacheable ones; with heuristics
/// off each still needs explicit freshness).
pub fn cacheable_status(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// What storing a response needs from its head.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseFacts {
    pub directives: Directives,
    pub set_cookie: bool,
    /// `Vary` field names, lower-case, in order; `vary_any` for `Vary: *`.
    pub vary: Vec<Box<[u8]>>,
    pub vary_any: bool,
    pub date: Option<u64>,
    /// `Expires`; `Some(0)` when present but not a valid date (RFC 9111 §5.3: already expired).
    pub expires: Option<u64>,
    pub age: Option<u64>,
    pub etag: Option<Box<[u8]>>,
    pub last_modified: Option<u64>,
}

/// At most this many `Vary` names; a response varying on more is not stored.
pub const MAX_VARY: usize = 8;

/// Reads the fields of a response head that storing it depends on.
pub fn response_facts<'h>(fields: impl Iterator<Item = (&'h [u8], &'h [u8])>) -> ResponseFacts {
    let mut f = ResponseFacts::default();
    for (name, value) in fields {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("cache-control") {
            f.directives.add(value);
        } else if is("set-cookie") {
            f.set_cookie = true;
        } else if is("vary") {
            for v in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if v == b"*" {
                    f.vary_any = true;
                } else if !v.is_empty() && f.vary.len() <= MAX_VARY {
                    let lower: Box<[u8]> = v.to_ascii_lowercase().into();
                    if !f.vary.contains(&lower) {
                        f.vary.push(lower);
                    }
                }
            }
        } else if is("date") {
            f.date = parse_http_date(value);
        } else if is("expires") {
            // Two `Expires` lines: stale (RFC 9111 §4.2.1 allows that or the first).
            let at = parse_http_date(value).unwrap_or(0);
            f.expires = Some(if f.expires.is_some() { 0 } else { at });
        } else if is("age") {
            // A list (`7200, 0`, or one line per value) counts by its first member (RFC 9111
            // §5.1). One that is no delta-seconds (`abc`, `-5`, `7200.0`, `7200;x=1`) is the
            // greatest age (§1.2.2), stale: invalid freshness information is stale (§4.2.1),
            // and 0 would serve as fresh a response an upstream cache says is old.
            if f.age.is_none() {
                f.age = crate::http::fields::list_members(value)
                    .map(<[u8]>::trim_ascii)
                    .find(|m| !m.is_empty())
                    .map(|m| match m.iter().all(u8::is_ascii_digit) {
                        true => delta_seconds(m),
                        false => u64::MAX,
                    });
            }
        } else if is("etag") {
            f.etag = Some(value.trim_ascii().into());
        } else if is("last-modified") {
            f.last_modified = parse_http_date(value);
        }
    }
    f
}

/// Why a response is not stored (for tests and the reason in logs), or its freshness
/// lifetime in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storable {
    Yes { lifetime: u64 },
    No(&'static str),
}

/// Whether a shared cache may store this response (RFC 9111 §3), and its freshness lifetime
/// (§4.2.1: `s-maxage`, else `max-age`, else `Expires` − `Date`; no heuristics, but the
/// operator's `valid` lifetime for the status, nginx's `proxy_cache_valid`, when the response
/// gives none). `no-cache` would need revalidation on every use, which this cache does not do
/// yet: not stored. `own`: fields the proxy writes under names the configuration chose
/// ([`crate::snapshot::Shared::own_fields`]), beside those it always writes.
pub fn storable(
    status: u16,
    f: &ResponseFacts,
    req: RequestRules,
    own: &[Box<[u8]>],
    (now, valid): (u64, Option<u64>),
) -> Storable {
    let d = &f.directives;
    if !cacheable_status(status) && valid.is_none() {
        return Storable::No("status");
    }
    if d.no_store || d.private || d.no_cache {
        return Storable::No("cache-control");
    }
    if f.set_cookie {
        return Storable::No("set-cookie");
    }
    // A `Vary` on a field the proxy writes or drops chose the answer by a value the key cannot
    // hold (every client without `X-Forwarded-For` would share one client's answer).
    let proxys = |n: &[u8]| written_by_proxy(n) || own.iter().any(|o| same_field(n, o));
    if f.vary_any || f.vary.len() > MAX_VARY || f.vary.iter().any(|n| proxys(n)) {
        return Storable::No("vary");
    }
    if req.authorization && !d.public && d.s_maxage.is_none() {
        return Storable::No("authorization");
    }
    let lifetime = match (d.s_maxage, d.max_age, f.expires) {
        (Some(s), _, _) => s,
        (None, Some(m), _) => m,
        (None, None, Some(e)) => e.saturating_sub(f.date.unwrap_or(now)),
        (None, None, None) => match valid {
            Some(t) => t,
            None => return Storable::No("no explicit freshness"),
        },
    };
    if lifetime == 0 {
        return Storable::No("stale");
    }
    Storable::Yes { lifetime }
}

/// The stale windows a response grants, in seconds past its lifetime: its
/// `(stale-while-revalidate, stale-if-error)` (RFC 5861), none when it says
/// `must-revalidate` or `proxy-revalidate` (RFC 9111 §4.2.4: a stale response must then
/// not be served without validation). `s-maxage` implies `proxy-revalidate` (§5.2.2.10), but
/// an explicit window in the same field is read as the origin's wish (the common CDN
/// reading of `s-maxage=60, stale-while-revalidate=30`).
pub fn stale_windows(d: &Directives) -> (u64, u64) {
    if d.must_revalidate || d.proxy_revalidate {
        return (0, 0);
    }
    (
        d.stale_while_revalidate.unwrap_or(0),
        d.stale_if_error.unwrap_or(0),
    )
}

/// What a stored response of `age` seconds with freshness `lifetime` may be used for, given
/// its stale windows `(while_revalidate, if_error)` (already capped by the route's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Fresh,
    /// Stale: served at once while it is revalidated (`stale-while-revalidate`); it may
    /// also be within its `stale-if-error` window (`if_error`).
    WhileRevalidate {
        if_error: bool,
    },
    /// Stale: revalidated (or fetched again) before use; served instead of an error when
    /// `if_error`.
    Stale {
        if_error: bool,
    },
}

/// Where `age` falls: fresh below `lifetime`, then each window counts from the lifetime's
/// end (a window of `w` seconds covers ages `lifetime..lifetime + w`). Saturating.
pub fn usable(age: u64, lifetime: u64, (while_revalidate, if_error): (u64, u64)) -> Usable {
    if age < lifetime {
        return Usable::Fresh;
    }
    let past = age - lifetime;
    let if_error = past < if_error;
    if past < while_revalidate {
        Usable::WhileRevalidate { if_error }
    } else {
        Usable::Stale { if_error }
    }
}

/// `u`, an entry's own verdict at `age` with freshness `lifetime`, narrowed by what the
/// request accepts: with a request `max-age` or `min-fresh` (a browser's reload sends
/// `max-age=0`), an entry older than `max-age` or with less than `min-fresh` seconds of
/// freshness left is revalidated before use, and a stale entry is never served at once
/// while it is revalidated (§5.2.1.1: without `max-stale` the client "does not wish to
/// receive a stale response"); its `stale-if-error` window still applies when revalidating
/// fails. `max-stale` is not honoured (a cache need not serve stale).
pub fn for_request(u: Usable, age: u64, lifetime: u64, req: &RequestRules) -> Usable {
    if req.max_age.is_none() && req.min_fresh.is_none() {
        return u;
    }
    let too_old = req.max_age.is_some_and(|m| age > m);
    let too_close = req
        .min_fresh
        .is_some_and(|f| lifetime.saturating_sub(age) < f);
    match u {
        Usable::Fresh if !too_old && !too_close => Usable::Fresh,
        Usable::Fresh => Usable::Stale { if_error: false },
        Usable::WhileRevalidate { if_error } | Usable::Stale { if_error } => {
            Usable::Stale { if_error }
        }
    }
}

/// The largest `Age` the cache sends (RFC 9111 §1.2.2's 2^31): an age past it (a backend's
/// `Age` of many digits, or an invalid one, which counts as stale) is sent as this, not as a
/// 20-digit number that a recipient reading delta-seconds into 32 or 63 bits would refuse.
pub const SENT_AGE_MAX: u64 = 1 << 31;

/// The corrected initial age (RFC 9111 §4.2.3) of a response received at `response_time`
/// (Unix seconds) `delay` after its request was sent; its current age is this plus the
/// time it has been stored. The delay is measured, not the difference of two whole-second
/// clocks: those would add a second to a response that straddled a tick, and make one with
/// `max-age=1` unstorable.
pub fn initial_age(f: &ResponseFacts, delay: Duration, response_time: u64) -> u64 {
    let apparent = response_time.saturating_sub(f.date.unwrap_or(response_time));
    let delay = delay.as_secs();
    let corrected = f.age.unwrap_or(0).saturating_add(delay);
    apparent.max(corrected)
}

/// Weak comparison (RFC 9110 §8.8.3.2) of `If-None-Match`'s list against `etag`: `*`
/// matches any stored response.
pub fn none_match(if_none_match: &[u8], etag: Option<&[u8]>) -> bool {
    let strip = |t: &[u8]| -> Vec<u8> {
        let t = t.trim_ascii();
        t.strip_prefix(b"W/").unwrap_or(t).to_vec()
    };
    if if_none_match.trim_ascii() == b"*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    let etag = strip(etag);
    crate::http::fields::list_members(if_none_match)
        .any(|t| !t.trim_ascii().is_empty() && strip(t) == etag)
}

/// Whether a conditional request is answered `304 Not Modified` by a stored response with
/// `etag` and `last_modified` (Unix seconds): `If-None-Match` when present (then
/// `If-Modified-Since` is ignored, RFC 9110 §13.1.3), else `If-Modified-Since` against
/// `Last-Modified` (an unparsable date is ignored).
pub fn not_modified(
    if_none_match: Option<&[u8]>,
    if_modified_since: Option<&[u8]>,
    etag: Option<&[u8]>,
    last_modified: Option<u64>,
    now: impl FnOnce() -> u64,
) -> bool {
    if let Some(inm) = if_none_match {
        return none_match(inm, etag);
    }
    match (if_modified_since.and_then(parse_http_date), last_modified) {
        // A date in the future is ignored (RFC 9110 §13.1.3).
        (Some(since), Some(lm)) => lm <= since && since <= now(),
        _ => false,
    }
}

/// An HTTP-date as Unix seconds, in any of the three forms RFC 9110 §5.6.7 has recipients
/// accept: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`, its two-digit year read as the §5.6.7 says: not more
/// than 50 years ahead) and asctime (`Sun Nov  6 08:49:37 1994`). Anything else, or an
/// impossible date, is `None`: a `Date` so written is ignored, an `Expires` is in the past.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    parse_date_at(v, this_year)
}

/// [`parse_http_date`], with the current year (for RFC 850's two-digit years) from `year_now`.
fn parse_date_at(v: &[u8], year_now: impl FnOnce() -> u64) -> Option<u64> {
    let v = v.trim_ascii();
    let num = |s: &[u8]| -> Option<u64> {
        if s.is_empty() {
            return None;
        }
        s.iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    };
    let month = |m: &[u8]| {
        crate::http::date::MONTHS
            .iter()
            .position(|n| n.as_bytes() == m)
            .map(|i| i as u64 + 1)
    };
    // (day, month, year, the time's 8 bytes)
    let (day, mon, year, time) = if v.len() == 29 && &v[3..5] == b", " && &v[25..] == b" GMT" {
        if v[7] != b' ' || v[11] != b' ' || v[16] != b' ' {
            return None;
        }
        (
            num(&v[5..7])?,
            month(&v[8..11])?,
            num(&v[12..16])?,
            &v[17..25],
        )
    } else if v.len() == 24 && v[3] == b' ' && v[7] == b' ' && v[10] == b' ' && v[19] == b' ' {
        // asctime: the day of the month is padded with a space, not a zero.
        let day = match v[8] {
            b' ' => num(&v[9..10])?,
            _ => num(&v[8..10])?,
        };
        (day, month(&v[4..7])?, num(&v[20..24])?, &v[11..19])
    } else {
        const DAYS: [&[u8]; 7] = [
            b"Monday",
            b"Tuesday",
            b"Wednesday",
            b"Thursday",
            b"Friday",
            b"Saturday",
            b"Sunday",
        ];
        let comma = v.iter().position(|&b| b == b',')?;
        let rest = &v[comma..];
        if !DAYS.contains(&&v[..comma])
            || rest.len() != 24
            || &rest[..2] != b", "
            || rest[4] != b'-'
            || rest[8] != b'-'
            || rest[11] != b' '
            || &rest[20..] != b" GMT"
        {
            return None;
        }
        let yy = num(&rest[9..11])?;
        let now = year_now();
        let mut year = now - now % 100 + yy;
        if year > now + 50 {
            year -= 100;
        }
        (num(&rest[2..4])?, month(&rest[5..8])?, year, &rest[12..20])
    };
    if time[2] != b':' || time[5] != b':' {
        return None;
    }
    let (h, m, s) = (num(&time[..2])?, num(&time[3..5])?, num(&time[6..8])?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match mon {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    // `31 Feb` is no date (RFC 9111 §5.3: an invalid `Expires` is in the past), not 3 March.
    if !(1..=days_in_month).contains(&day) || year < 1970 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant), for years from 1970.
    let (y, mo) = if mon <= 2 {
        (year - 1, mon + 9)
    } else {
        (year, mon - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// The current year (UTC), for RFC 850 dates.
fn this_year() -> u64 {
    crate::http::date::split_time(super::unix_now()).0.max(1970) as u64
}

/// A purge URL as the cache keys it ([`primary_key`]): `http://Shop.Example:80/a` is
/// `http://shop.example/a`; a bare `http://host` is its `/` as a `key`, and stays a host
/// (`http://shop` also matches `http://shop.example/...`) as a `prefix`. Anything else is
/// kept as written.
pub fn purge_key(url: &[u8], prefix: bool) -> Vec<u8> {
    let starts = |p: &[u8]| url.len() >= p.len() && url[..p.len()].eq_ignore_ascii_case(p);
    let (https, rest) = if starts(b"https://") {
        (true, &url[8..])
    } else if starts(b"http://") {
        (false, &url[7..])
    } else {
        return url.to_vec();
    };
    let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    let (host, target) = rest.split_at(slash);
    let mut out = Vec::with_capacity(url.len() + 1);
    primary_key(
        https,
        host,
        if target.is_empty() { b"/" } else { target },
        &mut out,
    );
    if prefix && target.is_empty() {
        out.pop();
    }
    // A prefix that ends inside an escape (`/caf%c`): its hex digit in the keys' case.
    if prefix {
        if let [.., b'%', d] = &mut out[..] {
            if d.is_ascii_hexdigit() {
                d.make_ascii_uppercase();
            }
        }
    }
    out
}

/// The key ([`primary_key`]'s form) of the URL an unsafe request's `Location` or
/// `Content-Location` names, resolved against the request's own key `base` (RFC 3986 §5.2),
/// when it has the base's origin: RFC 9111 §4.4 lets a cache invalidate these URLs too, and
/// forbids it for another origin's (one site's answers must not empty another's entries).
/// `None` for another origin or scheme, or what is no URI reference.
pub fn named_url(base: &[u8], reference: &[u8]) -> Option<Vec<u8>> {
    let r = reference.trim_ascii();
    let r = &r[..r.iter().position(|&b| b == b'#').unwrap_or(r.len())];
    if r.is_empty() || !r.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    // Behind a trusted proxy the key ends with the `Host` the backend got: kept as it is.
    let sent = base
        .windows(SENT_HOST.len())
        .position(|w| w == SENT_HOST)
        .unwrap_or(base.len());
    let (base, sent) = base.split_at(sent);
    let scheme = base.iter().position(|&b| b == b':')?;
    let path_at = scheme + 3 + base.get(scheme + 3..)?.iter().position(|&b| b == b'/')?;
    let origin = &base[..path_at];
    let query = base[path_at..].iter().position(|&b| b == b'?');
    let base_path = &base[path_at..query.map_or(base.len(), |q| path_at + q)];
    let scheme_end = r
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')));
    let url = match scheme_end {
        Some(i) if i > 0 && r[i] == b':' && r[0].is_ascii_alphabetic() => r.to_vec(),
        _ if r.starts_with(b"//") => [&base[..=scheme], r].concat(),
        _ if r[0] == b'/' => [origin, r].concat(),
        _ if r[0] == b'?' => [origin, base_path, r].concat(),
        _ => {
            let dir = base_path
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(0, |i| i + 1);
            [origin, &base_path[..dir], r].concat()
        }
    };
    let mut key = purge_key(&without_dot_segments(&url)?, false);
    let same_origin = key.starts_with(origin) && key.get(origin.len()) == Some(&b'/');
    key.extend_from_slice(sent);
    same_origin.then_some(key)
}

/// An absolute `http(s)` URL with its path's `.` and `..` segments resolved (RFC 3986
/// §5.2.4); `None` for another scheme.
fn without_dot_segments(url: &[u8]) -> Option<Vec<u8>> {
    let start = url.windows(3).position(|w| w == b"://")? + 3;
    let path = start
        + url[start..]
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(url.len() - start);
    let query = url[path..]
        .iter()
        .position(|&b| b == b'?')
        .map_or(url.len(), |q| path + q);
    let mut out = url[..path].to_vec();
    let segments: Vec<&[u8]> = url[path..query].split(|&b| b == b'/').skip(1).collect();
    let mut kept: Vec<&[u8]> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            b"." | b".." => {
                if *seg == b".." {
                    kept.pop();
                }
                if last {
                    kept.push(b"");
                }
            }
            seg => kept.push(seg),
        }
    }
    for seg in kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    out.extend_from_slice(&url[query..]);
    Some(out)
}

/// Behind a trusted proxy whose claimed host is not the request's `Host`, the key names the
/// claimed URL and then this and the `Host` the backend got (it may pick a site by either).
/// `@` is no field name's byte: no `Vary` part reads the same.
pub const SENT_HOST: &[u8] = b"\n@host:";

/// The cache key of a request: `scheme://host/path?query` with the host lower-cased and its
/// default port (80 for http, 443 for https) removed; `target` is the origin-form path and
/// query as the client sent it (before any rewrite), but for the hex digits of its `%XX`
/// escapes, upper-cased: `%c3%a9` and `%C3%A9` are one URL to every backend (RFC 3986
/// §6.2.2.1), so one entry, and one purge finds it.
pub fn primary_key(https: bool, host: &[u8], target: &[u8], out: &mut Vec<u8>) {
    let (scheme, port): (&[u8], &[u8]) = if https {
        (b"https://", b":443")
    } else {
        (b"http://", b":80")
    };
    let host = host.strip_suffix(port).unwrap_or(host);
    out.reserve(scheme.len() + host.len() + 1 + target.len());
    out.extend_from_slice(scheme);
    out.extend(host.iter().map(u8::to_ascii_lowercase));
    if target.first() != Some(&b'/') {
        out.push(b'/');
    }
    let start = out.len();
    out.extend_from_slice(target);
    if target.contains(&b'%') {
        let t = &mut out[start..];
        for i in 0..t.len().saturating_sub(2) {
            if t[i] == b'%' && t[i + 1].is_ascii_hexdigit() && t[i + 2].is_ascii_hexdigit() {
                t[i + 1].make_ascii_uppercase();
                t[i + 2].make_ascii_uppercase();
            }
        }
    }
}

/// Appends the `Vary` part of a key: for each name, `\n` name `:` the values of that field
/// among the request's `fields` (several joined by `,`, each trimmed), then, when the
/// request also spells the name with `_` for `-` ([`same_field`]), `\n@_:` their values
/// (`@` is no field name's byte).
/// `Accept_Language` is `Accept-Language` to a CGI or WSGI backend but an unknown field to
/// most others: keyed apart, neither kind of backend's answer to it is served for the
/// other spelling.
pub fn vary_key<'h, I>(names: &[Box<[u8]>], fields: I, out: &mut Vec<u8>)
where
    I: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
{
    for name in names {
        out.push(b'\n');
        out.extend_from_slice(name);
        // An absent field matches only an absent one (RFC 9111 §4.1), not an empty one: `!`
        // marks absence, `:` starts the values (field values hold neither a newline nor
        // anything that could forge this layout).
        let exact = |n: &[u8]| n.eq_ignore_ascii_case(name);
        values(fields.clone().filter(|(n, _)| exact(n)), out);
        let mut other = fields
            .clone()
            .filter(|(n, _)| same_field(n, name) && !exact(n))
            .peekable();
        if other.peek().is_some() {
            out.extend_from_slice(b"\n@_");
            values(other, out);
        }
    }
}

/// `!` for no field, else `:` and the fields' values, trimmed, joined by `,`.
fn values<'h>(fields: impl Iterator<Item = (&'h [u8], &'h [u8])>, out: &mut Vec<u8>) {
    let mut any = false;
    for (_, v) in fields {
        out.push(if any { b',' } else { b':' });
        out.extend_from_slice(v.trim_ascii());
        any = true;
    }
    if !any {
        out.push(b'!');
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
