//! Config for stage 3½, *admit* by rate: `rate_limit = { rate, burst, key }` on listeners and
//! routes, and the process-wide `[rate_limits]` table (its size, the optional shared store).
//! Checked into [`RateLimit`] and [`RateLimits`]; enforced by [`crate::ratelimit`].

use std::hash::{Hash, Hasher};
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
    /// Which limit this is, mixed into every key's hash: stable across reloads while the rule
    /// and where it is written (`scope`) stay the same, so buckets survive a reload.
    pub id: u64,
}

/// Default `rate_limits.max_keys`: distinct keys held at once, all limits together.
pub const DEFAULT_MAX_KEYS: usize = 65_536;

/// Default `rate_limits.sync_interval`.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// `[rate_limits]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    pub max_keys: usize,
    /// `store = "redis://HOST:PORT"`: the host and port of the Redis server the buckets are
    /// shared through with other edgeshard processes.
    pub store: Option<String>,
    pub sync_interval: Duration,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            max_keys: DEFAULT_MAX_KEYS,
            store: None,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        }
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
    let interval_ns = (1e9 / raw.rate).round().max(1.0) as u64;
    let mut h = std::hash::DefaultHasher::new();
    (scope, format!("{key:?}"), interval_ns, burst).hash(&mut h);
    Some(RateLimit {
        rate: raw.rate,
        burst,
        key,
        interval_ns,
        id: h.finish(),
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
    let store = raw.store.and_then(|s| match s.strip_prefix("redis://") {
        Some(rest) if !rest.is_empty() && !rest.contains(['@', '?']) => {
            let rest = rest.trim_end_matches('/');
            Some(
                if rest
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    rest.to_string()
                } else {
                    format!("{rest}:6379")
                },
            )
        }
        _ => {
            c.err(
                "rate_limits.store",
                format!("{s:?}: write \"redis://HOST:PORT\" (no user, password or database)"),
            );
            None
        }
    });
    RateLimits {
        max_keys,
        store,
        sync_interval: c.duration(
            "rate_limits.sync_interval",
            raw.sync_interval.as_ref(),
            DEFAULT_SYNC_INTERVAL,
        ),
    }
}
