//! Observability, read side: the `/metrics` families of stage 1½/3½, *admit* (idle
//! connections and those closed to make room, access lists, rate limits, authentication,
//! the PROXY protocol), written by [`super::metrics::render`].

use std::fmt::Write;

use super::metrics::family;
use crate::stats::Snapshot;

/// Who was let in and who was not: access lists, rate limits, auth, PROXY protocol headers.
pub(super) fn admission(o: &mut String, all: &Snapshot) {
    family(
        o,
        "edgeshard_connections_idle",
        "gauge",
        "Client connections waiting for a request past the 200 ms hot window: parked between requests, or waiting in their task (a first request, TLS or mTLS, a drain); counted in edgeshard_connections_active.",
    );
    let _ = writeln!(o, "edgeshard_connections_idle {}", all.parked);
    family(
        o,
        "edgeshard_connections_closing",
        "gauge",
        "Client connections closing after a complete response to a client that had sent nothing more, waiting while it is in flight (timeouts.lingering_timeout); counted in edgeshard_connections_active.",
    );
    let _ = writeln!(o, "edgeshard_connections_closing {}", all.closing);
    family(
        o,
        "edgeshard_connections_reclaimed_total",
        "counter",
        "Idle connections (those in edgeshard_connections_idle) and closing ones (edgeshard_connections_closing) closed to admit a new one at a connection limit.",
    );
    let _ = writeln!(
        o,
        "edgeshard_connections_reclaimed_total {}",
        all.reclaimed_idle
    );
    family(
        o,
        "edgeshard_connections_retired_total",
        "counter",
        "Keep-alive connections closed after a response (Connection: close) because they reached limits.max_requests_per_connection (reason=requests) or timeouts.client_keepalive_time (reason=keepalive_time).",
    );
    for (reason, n) in ["requests", "keepalive_time"].iter().zip(all.retired) {
        let _ = writeln!(
            o,
            "edgeshard_connections_retired_total{{reason=\"{reason}\"}} {n}"
        );
    }
    family(
        o,
        "edgeshard_access_denied_total",
        "counter",
        "Refused by an allow/deny list: connections by their listener's (403, or a close before a TLS handshake), requests by their route's (403).",
    );
    let _ = writeln!(
        o,
        "edgeshard_access_denied_total{{scope=\"listener\"}} {}",
        all.denied_listener
    );
    let _ = writeln!(
        o,
        "edgeshard_access_denied_total{{scope=\"route\"}} {}",
        all.denied_route
    );
    family(
        o,
        "edgeshard_rate_limited_total",
        "counter",
        "Requests refused with 429 by a rate_limit, by where the limit is written (listener or route).",
    );
    let _ = writeln!(
        o,
        "edgeshard_rate_limited_total{{scope=\"listener\"}} {}",
        all.limited_listener
    );
    let _ = writeln!(
        o,
        "edgeshard_rate_limited_total{{scope=\"route\"}} {}",
        all.limited_route
    );
    family(
        o,
        "edgeshard_rate_limit_evictions_total",
        "counter",
        "Rate-limit keys that took over another key's bucket because the table (rate_limits.max_keys) was crowded around them.",
    );
    let _ = writeln!(
        o,
        "edgeshard_rate_limit_evictions_total {}",
        all.rate_evictions
    );
    family(
        o,
        "edgeshard_auth_total",
        "counter",
        "Route authentication checks, by mode (basic, forward) and result: ok (let through), denied (401, or the auth service's refusal), error (the auth service could not be asked: 500), overloaded (too many bcrypt checks waiting: 503).",
    );
    for m in crate::auth::Mode::ALL {
        for v in crate::auth::Verdict::ALL {
            let _ = writeln!(
                o,
                "edgeshard_auth_total{{mode=\"{}\",result=\"{}\"}} {}",
                m.label(),
                v.label(),
                all.auth[crate::auth::slot(m, v)]
            );
        }
    }
    family(
        o,
        "edgeshard_auth_bcrypt_total",
        "counter",
        "auth.basic passwords checked with bcrypt, on the verifier threads.",
    );
    let _ = writeln!(o, "edgeshard_auth_bcrypt_total {}", all.auth_bcrypt);
    family(
        o,
        "edgeshard_auth_cache_hits_total",
        "counter",
        "auth.basic passwords accepted from the shard's cache of recent verifications, without bcrypt.",
    );
    let _ = writeln!(o, "edgeshard_auth_cache_hits_total {}", all.auth_cache_hits);
    family(
        o,
        "edgeshard_proxy_protocol_total",
        "counter",
        "PROXY protocol headers on proxy_protocol listeners, by result: v1, v2, local (v2 LOCAL), or the connection closed for a bad or missing header, an untrusted peer, or a timeout.",
    );
    for r in crate::proxy_protocol::Outcome::ALL {
        let _ = writeln!(
            o,
            "edgeshard_proxy_protocol_total{{result=\"{}\"}} {}",
            r.label(),
            all.proxy_protocol[r as usize]
        );
    }
}
