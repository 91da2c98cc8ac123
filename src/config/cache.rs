//! Config for the response cache of stage 5½ (between *route* and *forward*): a route's
//! `cache = { size, max_object, policy }`, checked into [`CacheConfig`]; used by [`crate::cache`].

use serde::Deserialize;

use super::raw::{Checker, Size};

/// `cache = { size = "64MiB", max_object = "8MiB" }` as written.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    size: Option<Size>,
    max_object: Option<Size>,
    policy: Option<String>,
}

/// Default `cache.size`: bytes one shard may hold for the route.
pub const DEFAULT_SIZE: u64 = 64 << 20;
/// Default `cache.max_object`: the largest response body stored.
pub const DEFAULT_MAX_OBJECT: u64 = 8 << 20;

/// A route's cache, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes one shard holds for this route (keys, heads, bodies and per-entry overhead).
    pub size: u64,
    /// Larger bodies pass through uncached (and keep splicing).
    pub max_object: u64,
    pub policy: CachePolicy,
}

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
    Some(Box::new(CacheConfig {
        size,
        max_object,
        policy,
    }))
}
