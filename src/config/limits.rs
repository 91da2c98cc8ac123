//! `[limits]`: the bounds on what one request and one client may take (head, body, connections,
//! body rates), checked into typed values with their key paths.

use super::raw::{Checker, RawLimits};
use crate::http::parse::MAX_HEADERS_CAP;

/// The default minimum rate of a client's body, both ways (`limits.client_body_min_rate`,
/// `limits.client_send_min_rate`), in bytes per second: Apache `mod_reqtimeout`'s `MinRate`
/// default, and below the slowest links still in use (a 9.6 kbit/s GSM data call moves
/// 1,200 bytes per second). Only time spent waiting on the client is charged, and the
/// allowance starts at `client_body` / `client_send`, so no client that keeps up with the
/// slowest link is ever cut; a client trickling a byte per second is cut about
/// `client_body` after it starts.
pub const DEFAULT_MIN_RATE: u64 = 500;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    /// Open client connections per shard; 0 in a checked file that leaves it unset, made
    /// [`crate::admission::connections_per_shard`] when the snapshot is built.
    pub max_connections_per_shard: usize,
    /// Open client connections of the whole process; 0 = only the per-shard bound.
    pub max_connections: usize,
    /// Idle pooled upstream connections per shard, all backends together; 0 in a checked
    /// file that leaves it unset, made [`crate::admission::connections_per_shard`] when the
    /// snapshot is built.
    pub max_idle_upstream_per_shard: usize,
    /// Open client connections per client address, all shards together; 0 = no bound.
    pub max_connections_per_client: usize,
    /// Bits of an IPv6 client address that `max_connections_per_client` counts as one
    /// client ([`crate::admission::client_prefix`]).
    pub per_client_ipv6_prefix: u8,
    /// Bytes per second a request body must average over the time spent waiting for it
    /// (`client_body` plus 1 s per this many bytes); 0: no rule ([`crate::relay::Pace`]).
    pub client_body_min_rate: u64,
    /// The same for a response body as the client's socket accepts it (`client_send` plus
    /// 1 s per this many bytes); 0: no rule.
    pub client_send_min_rate: u64,
    /// Per shard: (user, password) pairs a route's `auth.basic` verified, remembered so
    /// the next request with them costs no bcrypt (`auth.basic.cache_ttl`); 0: none.
    pub auth_cache_entries: usize,
    /// For the whole process: bcrypt verifications waiting for or on the verifier threads;
    /// a request beyond it is answered 503 at once.
    pub auth_pending: usize,
    /// Per shard: bytes the encoders of compressing responses may hold at once (each is
    /// charged [`crate::compress::stream::Encoder::memory`]); a response beyond it is sent
    /// uncompressed.
    pub compress_memory: u64,
    /// Per shard: bytes of request bodies `buffer_request_body` may hold read whole at
    /// once; a body beyond it streams ([`crate::forward`]'s `buffer_body`).
    pub buffer_memory: u64,
    /// Requests served on one client connection before it closes after the response
    /// (nginx's `keepalive_requests`); 0 = no bound.
    pub max_requests_per_connection: u32,
}

/// Checks `[limits]` (`raw`) into [`Limits`], defaults filled in.
pub(super) fn limits(c: &mut Checker, limits: &RawLimits) -> Limits {
    let max_header_bytes = c.size(
        "limits.max_header_bytes",
        limits.max_header_bytes.as_ref(),
        16384,
        256,
        1 << 20,
    ) as usize;
    Limits {
        max_header_bytes,
        max_headers: c.count(
            "limits.max_headers",
            limits.max_headers,
            100,
            1,
            MAX_HEADERS_CAP,
        ),
        max_uri_bytes: c.size(
            "limits.max_uri_bytes",
            limits.max_uri_bytes.as_ref(),
            8192,
            16,
            max_header_bytes as u64,
        ) as usize,
        max_body_bytes: c.size(
            "limits.max_body_bytes",
            limits.max_body_bytes.as_ref(),
            16 << 20,
            0,
            u64::MAX >> 1,
        ),
        // 0: from the descriptor limit, when the snapshot is built
        // ([`crate::admission::connections_per_shard`]).
        max_connections_per_shard: c.count(
            "limits.max_connections_per_shard",
            limits.max_connections_per_shard,
            0,
            1,
            1 << 24,
        ),
        max_connections: c.count(
            "limits.max_connections",
            limits.max_connections,
            0,
            0,
            1 << 30,
        ),
        // 0: from the descriptor limit, when the snapshot is built.
        max_idle_upstream_per_shard: c.count(
            "limits.max_idle_upstream_per_shard",
            limits.max_idle_upstream_per_shard,
            0,
            1,
            1 << 24,
        ),
        max_connections_per_client: c.count(
            "limits.max_connections_per_client",
            limits.max_connections_per_client,
            0,
            0,
            1 << 24,
        ),
        per_client_ipv6_prefix: c.count(
            "limits.per_client_ipv6_prefix",
            limits.per_client_ipv6_prefix,
            usize::from(super::ratelimit::DEFAULT_IPV6_PREFIX),
            1,
            128,
        ) as u8,
        client_body_min_rate: c.size(
            "limits.client_body_min_rate",
            limits.client_body_min_rate.as_ref(),
            DEFAULT_MIN_RATE,
            0,
            1 << 40,
        ),
        client_send_min_rate: c.size(
            "limits.client_send_min_rate",
            limits.client_send_min_rate.as_ref(),
            DEFAULT_MIN_RATE,
            0,
            1 << 40,
        ),
        auth_cache_entries: c.count(
            "limits.auth_cache_entries",
            limits.auth_cache_entries,
            1024,
            0,
            1 << 20,
        ),
        auth_pending: c.count("limits.auth_pending", limits.auth_pending, 16, 1, 4096),
        compress_memory: c.size(
            "limits.compress_memory",
            limits.compress_memory.as_ref(),
            64 << 20,
            0,
            1 << 40,
        ),
        buffer_memory: c.size(
            "limits.buffer_memory",
            limits.buffer_memory.as_ref(),
            128 << 20,
            0,
            1 << 40,
        ),
        max_requests_per_connection: c.count(
            "limits.max_requests_per_connection",
            limits.max_requests_per_connection,
            0,
            0,
            u32::MAX as usize,
        ) as u32,
    }
}
