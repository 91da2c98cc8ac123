//! Config for stage 3½, *admit* by rate: `rate_limit = { rate, burst, key }` on listeners and
//! routes, and the process-wide `[rate_limits]` table (its size, the optional shared store).
//! Checked into [`RateLimit`] and [`RateLimits`]; enforced by [`crate::ratelimit`].

use std::time::Duration;

use serde::Deserialize;

use super::balancing::hash_key;
use super::raw::Checker;
use crate::balance::HashKey;

/// `rate_limit = { rate = 100, burst = 200, key = "client_ip" }` as written.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    rate: f64,
    burst: Option<u32>,
    key: Option<String>,
    ipv6_prefix: Option<u8>,
}

/// `[rate_limits]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimits {
    max_keys: Option<usize>,
    store: Option<String>,
    sync_interval: Option<String>,
}

/// What a limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// A value of the request (`client_ip`, `header:NAME`, ...), as for `hash_key`. A request
    /// without the value is not limited (nginx's `limit_req` skips an empty key too).
    Request(HashKey),
    /// `key = "route"` (or `"listener"`): one bucket for every request the limit sees.
    Whole,
}

/// One token bucket rule, in the units [`crate::ratelimit`] computes with.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Requests per second.
    pub rate: f64,
    /// Requests admitted at once after an idle period (the bucket's size).
    pub burst: u32,
    pub key: RateKey,
    /// Nanoseconds per token (1 s / rate).
    pub interval_ns: u64,
    /// A `client_ip` key counts an IPv6 client by its first this many bits (a /64 is one
    /// subscriber's: counted by whole addresses, one client would have 2^64 buckets).
    pub ipv6_prefix: u8,
    /// Which limit this is, mixed into every key's hash: stable across reloads while the rule
    /// and where it is written (`scope`) stay the same, so buckets survive a reload.
    pub id: u64,
}

/// Default `rate_limits.max_keys`: distinct keys held at once, all limits together.
pub const DEFAULT_MAX_KEYS: usize = 65_536;

/// Default `ipv6_prefix` of a rate limit: an IPv6 client is its /64.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Default `rate_limits.sync_interval`.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// `[rate_limits]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    pub max_keys: usize,
    /// `store = "redis://[USER:PASSWORD@]HOST:PORT"`: the Redis server the buckets are
    /// shared through with other edgeshard processes.
    pub store: Option<Store>,
    pub sync_interval: Duration,
}

/// The fleet store's address and credentials.
#[derive(Clone, PartialEq)]
pub struct Store {
    /// `HOST:PORT`.
    pub addr: String,
    /// Sent with `AUTH` (Redis 6 ACLs: a user; before: only the password).
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Store {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Checks one `rate_limit` written at `path` (`scope` names where: the listener's address or
/// the route's name, for [`RateLimit::id`]).
pub(super) fn rate_limit(
    c: &mut Checker,
    path: &str,
    scope: &str,
    raw: Option<&RawRateLimit>,
) -> Option<RateLimit> {
    let raw = raw?;
    let path = format!("{path}.rate_limit");
    if !(raw.rate.is_finite() && (0.001..=1_000_000.0).contains(&raw.rate)) {
        c.err(
            format!("{path}.rate"),
            format!(
                "{} is out of range 0.001..=1000000 (requests per second)",
                raw.rate
            ),
        );
        return None;
    }
    let burst = raw.burst.unwrap_or_else(|| (raw.rate.ceil() as u32).max(1));
    if burst == 0 || burst > 1_000_000 {
        c.err(
            format!("{path}.burst"),
            format!("{burst} is out of range 1..=1000000"),
        );
        return None;
    }
    let key = match raw.key.as_deref() {
        None => RateKey::Request(HashKey::ClientIp),
        Some("route" | "listener") => RateKey::Whole,
        Some(k) => match hash_key(k) {
            // The client writes what it likes there and the backend never sees it (the
            // proxy replaces or drops it): a new value per request would be a new bucket.
            Some(HashKey::Header(n)) if crate::http::fields::forwarding_claim(n.as_bytes()) => {
                c.err(
                    format!("{path}.key"),
                    format!("{k:?} is a forwarding claim a client can send anything in; count clients with key = \"client_ip\", which server.trusted_proxies derives from it"),
                );
                return None;
            }
            Some(k) => RateKey::Request(k),
            None => {
                c.err(
                    format!("{path}.key"),
                    format!("invalid key {k:?}; expected client_ip, header:NAME, cookie:NAME, path, uri, query:NAME, or route"),
                );
                return None;
            }
        },
    };
    let ipv6_prefix = raw.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX);
    if !(1..=128).contains(&ipv6_prefix) {
        c.err(
            format!("{path}.ipv6_prefix"),
            format!(
                "{ipv6_prefix} is out of range 1..=128 (bits of an IPv6 client address counted)"
            ),
        );
        return None;
    }
    if raw.ipv6_prefix.is_some() && !matches!(key, RateKey::Request(HashKey::ClientIp)) {
        c.err(
            format!("{path}.ipv6_prefix"),
            "applies to key = \"client_ip\" only",
        );
        return None;
    }
    let interval_ns = (1e9 / raw.rate).round().max(1.0) as u64;
    // A fixed hash (not std's, which may change between releases): processes of a fleet
    // sharing a store must give a rule the same id.
    let id = crate::ratelimit::fnv1a(&[
        scope.as_bytes(),
        format!("{key:?}").as_bytes(),
        &interval_ns.to_le_bytes(),
        &burst.to_le_bytes(),
        // Only when not the default: a rule's id (and its buckets in a fleet store) stays
        // what it was before the key existed.
        if ipv6_prefix == DEFAULT_IPV6_PREFIX {
            &[]
        } else {
            std::slice::from_ref(&ipv6_prefix)
        },
    ]);
    Some(RateLimit {
        rate: raw.rate,
        burst,
        key,
        interval_ns,
        ipv6_prefix,
        id,
    })
}

/// Checks `[rate_limits]`.
pub(super) fn rate_limits(c: &mut Checker, raw: Option<RawRateLimits>) -> RateLimits {
    let raw = raw.unwrap_or_default();
    let max_keys = c.count(
        "rate_limits.max_keys",
        raw.max_keys,
        DEFAULT_MAX_KEYS,
        16,
        1 << 24,
    );
    let has_store = raw.store.is_some();
    let store = raw.store.and_then(|s| match store_address(&s) {
        Some(a) => Some(a),
        None => {
            c.err(
                "rate_limits.store",
                format!("{:?}: write \"redis://HOST:PORT\" or \"redis://USER:PASSWORD@HOST:PORT\" (HOST a name, an IPv4 address or [IPv6]; USER may be empty; % escapes in USER and PASSWORD; no database or path)", redacted(&s)),
            );
            None
        }
    });
    if raw.sync_interval.is_some() && !has_store {
        c.err(
            "rate_limits.sync_interval",
            "has no effect without rate_limits.store (the shared store it syncs with)",
        );
    }
    let sync_interval = c.duration(
        "rate_limits.sync_interval",
        raw.sync_interval.as_ref(),
        DEFAULT_SYNC_INTERVAL,
    );
    if sync_interval < Duration::from_millis(10) {
        c.err(
            "rate_limits.sync_interval",
            "must be at least 10ms (each sync is a round trip to the store)",
        );
    }
    RateLimits {
        max_keys,
        store,
        sync_interval: sync_interval.max(Duration::from_millis(10)),
    }
}

/// `s` with a URL's userinfo hidden, for messages: what is before the `@` of any scheme's
/// URL may be a password (`rediss://:PW@h`, `redis://PW@h`), and an `@` without a scheme
/// hides what comes before it too.
fn redacted(s: &str) -> String {
    let (scheme, rest) = s.split_once("://").unwrap_or(("", s));
    match rest.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("…@{host}"),
        Some((_, host)) => format!("{scheme}://…@{host}"),
        None => s.to_string(),
    }
}

/// `redis://[USER[:PASSWORD]@]HOST[:PORT]` (port 6379 by default): HOST a DNS name, an IPv4
/// address or a bracketed IPv6 address; nothing after the port but an optional `/`; USER and
/// PASSWORD percent-decoded (an empty USER is none: `redis://:secret@h`, Redis before 6).
fn store_address(s: &str) -> Option<Store> {
    let rest = s.strip_prefix("redis://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, rest),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let decode = |v: &str| {
                let v = crate::route::percent_decode(v)?;
                String::from_utf8(v).ok()
            };
            let user = decode(user)?;
            let pass = decode(pass)?;
            if pass.is_empty() {
                return None;
            }
            ((!user.is_empty()).then_some(user), Some(pass))
        }
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if (h.starts_with('[') && h.ends_with(']')) || !h.contains(':') => {
            (h, p.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
        _ => (rest, 6379),
    };
    let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
    };
    ok.then(|| Store {
        addr: format!("{host}:{port}"),
        username,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::{redacted, store_address};

    #[test]
    fn store_addresses() {
        for (text, want) in [
            ("redis://127.0.0.1:6380", Some("127.0.0.1:6380")),
            ("redis://cache.internal", Some("cache.internal:6379")),
            ("redis://cache.internal:7000/", Some("cache.internal:7000")),
            ("redis://[::1]:6379", Some("[::1]:6379")),
            ("redis://[::1]", Some("[::1]:6379")),
            ("redis://h:6379/0", None),
            ("redis://::1", None),
            ("redis://h:0", None),
            ("redis://", None),
            ("http://h:1", None),
        ] {
            let got = store_address(text);
            assert_eq!(got.as_ref().map(|s| s.addr.as_str()), want, "{text}");
            assert!(got.is_none_or(|s| s.password.is_none()), "{text}");
        }
        for (text, user, pass) in [
            ("redis://:s3cret@h:6380", None, "s3cret"),
            ("redis://edge:p%40ss%3Aw@[::1]", Some("edge"), "p@ss:w"),
        ] {
            let got = store_address(text).unwrap();
            assert_eq!(
                (got.username.as_deref(), got.password.as_deref()),
                (user, Some(pass)),
                "{text}"
            );
            assert!(
                !format!("{got:?}").contains(pass),
                "the password stays out of debug output"
            );
        }
        for bad in ["redis://user@h", "redis://:@h", "redis://:%zz@h"] {
            assert!(store_address(bad).is_none(), "{bad}");
        }
        for (text, shown) in [
            ("redis://edge:s3cret@h:1", "redis://…@h:1"),
            ("rediss://:s3cret@h:1", "rediss://…@h:1"),
            ("redis://s3cret@h", "redis://…@h"),
            ("s3cret@h:1", "…@h:1"),
            ("redis://h:1", "redis://h:1"),
        ] {
            assert_eq!(redacted(text), shown, "{text}");
        }
    }
}
