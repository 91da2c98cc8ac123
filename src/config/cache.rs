//! Config for the response cache of stage 5½ (between *route* and *forward*): a route's
//! `cache = { size, max_object, policy, stale_while_revalidate_max, stale_if_error_max,
//! background_revalidations, fill_memory, valid, bypass }`, checked into [`CacheConfig`]; used by
//! [`crate::cache`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{Checker, Size};
use crate::balance::HashKey;

/// `cache = { size = "64MiB", max_object = "8MiB" }` as written.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    size: Option<Size>,
    max_object: Option<Size>,
    policy: Option<String>,
    stale_while_revalidate_max: Option<String>,
    stale_if_error_max: Option<String>,
    background_revalidations: Option<usize>,
    fill_memory: Option<Size>,
    valid: Option<BTreeMap<String, String>>,
    bypass: Option<Vec<String>>,
}

/// Default `cache.size`: bytes one shard may hold for the route.
pub const DEFAULT_SIZE: u64 = 64 << 20;
/// Default `cache.max_object`: the largest response body stored.
pub const DEFAULT_MAX_OBJECT: u64 = 8 << 20;
/// Default `cache.stale_while_revalidate_max`: the longest `stale-while-revalidate` window
/// a response is granted.
pub const DEFAULT_STALE_WHILE_REVALIDATE_MAX: Duration = Duration::from_secs(3600);
/// Default `cache.stale_if_error_max`: the longest `stale-if-error` window.
pub const DEFAULT_STALE_IF_ERROR_MAX: Duration = Duration::from_secs(86_400);
/// Default `cache.fill_memory`: 4 × `max_object`, at most `size` (at least `max_object`).
pub const FILL_MEMORY_OBJECTS: u64 = 4;
/// Default `cache.background_revalidations`: per shard, for the route.
pub const DEFAULT_BACKGROUND_REVALIDATIONS: usize = 16;

/// A route's cache, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes one shard holds for this route (keys, heads, bodies and per-entry overhead).
    pub size: u64,
    /// Larger bodies pass through uncached (and keep splicing).
    pub max_object: u64,
    /// Caps on the responses' `stale-while-revalidate` and `stale-if-error` windows, in
    /// seconds (0: the route never serves stale that way).
    pub stale_while_revalidate_max: u64,
    pub stale_if_error_max: u64,
    /// Background revalidations (`stale-while-revalidate`) in flight at once on one shard
    /// for the route; beyond them a stale request revalidates in the foreground.
    pub background_revalidations: usize,
    /// Bytes the route's responses being stored (bodies relayed and kept until complete)
    /// may hold at once on one shard; beyond it a response is relayed without being stored.
    pub fill_memory: u64,
    pub policy: CachePolicy,
    /// `cache.valid`: (status, seconds) a response of that status without explicit
    /// freshness of its own is fresh for (nginx's `proxy_cache_valid`).
    pub valid: Vec<(u16, u64)>,
    /// `cache.bypass`: a request carrying one of these (not empty, not `0`) is neither
    /// answered from the cache nor stored (nginx's `proxy_cache_bypass` with `proxy_no_cache`).
    pub bypass: Vec<HashKey>,
}

impl CacheConfig {
    /// The lifetime `cache.valid` gives a response of `status` without one of its own.
    pub fn valid_for(&self, status: u16) -> Option<u64> {
        self.valid
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, t)| *t)
    }
}

/// The statuses `cache.valid` may name: those a cache may store by default
/// ([`crate::cache::policy::cacheable_status`]) and the temporary redirects nginx's
/// `proxy_cache_valid` is often given (302, 307).
fn valid_status(status: u16) -> bool {
    crate::cache::policy::cacheable_status(status) || matches!(status, 302 | 307)
}

/// The longest `cache.valid` lifetime.
const VALID_MAX: Duration = Duration::from_secs(365 * 86_400);

/// `cache.policy`: which responses a full store takes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// Every storable response; the least recently used entries make room.
    Lru,
    /// Only a response whose URL was asked for at least as often as the least recently used
    /// entry's (a TinyLFU-style frequency sketch, [`crate::cache::admission`]); the default.
    TinyLfu,
}

/// Checks a route's `cache`; `None` when it has none.
pub(super) fn route_cache(
    c: &mut Checker,
    path: &str,
    raw: Option<&RawCache>,
) -> Option<Box<CacheConfig>> {
    let raw = raw?;
    let size = c.size(
        &format!("{path}.cache.size"),
        raw.size.as_ref(),
        DEFAULT_SIZE,
        4096,
        1 << 40,
    );
    let max_object = c.size(
        &format!("{path}.cache.max_object"),
        raw.max_object.as_ref(),
        DEFAULT_MAX_OBJECT.min(size),
        1,
        1 << 40,
    );
    if max_object > size {
        c.err(
            format!("{path}.cache.max_object"),
            format!("{max_object} is larger than cache.size ({size})"),
        );
    }
    let policy = match raw.policy.as_deref() {
        None | Some("tinylfu") => CachePolicy::TinyLfu,
        Some("lru") => CachePolicy::Lru,
        Some(other) => {
            c.err(
                format!("{path}.cache.policy"),
                format!("unknown policy {other:?}; expected \"tinylfu\" or \"lru\""),
            );
            CachePolicy::TinyLfu
        }
    };
    let swr = window(
        c,
        &format!("{path}.cache.stale_while_revalidate_max"),
        raw.stale_while_revalidate_max.as_ref(),
        DEFAULT_STALE_WHILE_REVALIDATE_MAX,
    );
    let sie = window(
        c,
        &format!("{path}.cache.stale_if_error_max"),
        raw.stale_if_error_max.as_ref(),
        DEFAULT_STALE_IF_ERROR_MAX,
    );
    let fill_memory = c.size(
        &format!("{path}.cache.fill_memory"),
        raw.fill_memory.as_ref(),
        (FILL_MEMORY_OBJECTS * max_object).min(size).max(max_object),
        1,
        1 << 40,
    );
    if fill_memory < max_object {
        c.err(
            format!("{path}.cache.fill_memory"),
            format!("{fill_memory} is smaller than cache.max_object ({max_object}): such a response could never be stored"),
        );
    }
    let background_revalidations = c.count(
        &format!("{path}.cache.background_revalidations"),
        raw.background_revalidations,
        DEFAULT_BACKGROUND_REVALIDATIONS,
        0,
        1024,
    );
    let mut valid = Vec::new();
    for (status, d) in raw.valid.iter().flatten() {
        let key = format!("{path}.cache.valid.{status}");
        match status.parse::<u16>() {
            Ok(s) if status.len() == 3 && valid_status(s) => {
                // Zero: refused already (malformed, zero or over the maximum).
                match c.duration_up_to(&key, Some(d), Duration::ZERO, (VALID_MAX, "365 days")) {
                    t if t.is_zero() => {}
                    t if t < Duration::from_secs(1) => {
                        c.err(key, format!("{d:?}: write a lifetime from 1s to 365d"));
                    }
                    t => valid.push((s, t.as_secs())),
                }
            }
            _ => c.err(
                key,
                format!("{status:?} is not a status the cache may store: 200, 203, 204, 300, 301, 302, 307, 308, 404, 405, 410, 414 or 501"),
            ),
        }
    }
    let mut bypass = Vec::new();
    for (i, k) in raw.bypass.iter().flatten().enumerate() {
        match super::balancing::hash_key(k) {
            Some(k @ (HashKey::Header(_) | HashKey::Cookie(_) | HashKey::Query(_))) => {
                bypass.push(k)
            }
            _ => c.err(
                format!("{path}.cache.bypass[{i}]"),
                format!("{k:?}: write header:NAME, cookie:NAME or query:NAME"),
            ),
        }
    }
    Some(Box::new(CacheConfig {
        bypass,
        size,
        max_object,
        stale_while_revalidate_max: swr,
        stale_if_error_max: sie,
        background_revalidations,
        fill_memory,
        policy,
        valid,
    }))
}

/// A stale window's cap in whole seconds: a duration (at most 7 days), or `"0"` (off).
fn window(c: &mut Checker, path: &str, raw: Option<&String>, default: Duration) -> u64 {
    match raw {
        Some(s) if s.trim() == "0" || s.trim() == "0s" => 0,
        _ => c.duration(path, raw, default).as_secs(),
    }
}
