//! Config for stage 4, *balance*: `balance`, `hash_key`, `bounded_load` and `sticky` of an
//! `[[upstream]]`, validated into the [`crate::balance::Spec`] the shards build their tables
//! and balancers from.

use std::time::Duration;

use serde::Deserialize;

use super::fields::token;
use super::raw::Checker;
use crate::balance::{Algorithm, HashKey, SameSite, Spec, StickySpec};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    cookie: String,
    ttl: Option<String>,
    secret: Option<String>,
    secure: Option<bool>,
    same_site: Option<String>,
}

pub(super) struct RawBalancing<'a> {
    pub balance: Option<&'a str>,
    pub hash_key: Option<&'a str>,
    pub bounded_load: Option<f64>,
    pub sticky: Option<&'a RawSticky>,
}

const ALGORITHMS: &str =
    "round_robin, weighted, random, least_conn, p2c, consistent_hash or maglev";

/// A request key as `hash_key` (and `rate_limit.key`) writes it: `client_ip`, `path`, `uri`,
/// `header:NAME`, `cookie:NAME` or `query:NAME`.
pub(super) fn hash_key(k: &str) -> Option<HashKey> {
    match k.split_once(':') {
        None if k == "client_ip" => Some(HashKey::ClientIp),
        None if k == "path" => Some(HashKey::Path),
        None if k == "uri" => Some(HashKey::Uri),
        Some(("header", n)) if token(n) => Some(HashKey::Header(n.to_ascii_lowercase())),
        Some(("cookie", n)) if token(n) => Some(HashKey::Cookie(n.to_string())),
        Some(("query", n)) if !n.is_empty() && !n.contains(['&', '=', ' ']) => {
            Some(HashKey::Query(n.to_string()))
        }
        _ => None,
    }
}

pub(super) fn balancing(c: &mut Checker, path: &str, raw: RawBalancing<'_>) -> Spec {
    let algorithm = match raw.balance {
        None | Some("round_robin") => Algorithm::RoundRobin,
        Some("weighted") => Algorithm::Weighted,
        Some("random") => Algorithm::Random,
        Some("least_conn") => Algorithm::LeastConn,
        Some("p2c") => Algorithm::P2c,
        Some("consistent_hash") => Algorithm::ConsistentHash,
        Some("maglev") => Algorithm::Maglev,
        Some(other) => {
            c.err(
                format!("{path}.balance"),
                format!("unknown algorithm {other:?}; expected {ALGORITHMS}"),
            );
            Algorithm::RoundRobin
        }
    };
    let hash_key = match raw.hash_key {
        None if algorithm.is_hash() => {
            c.err(
                format!("{path}.hash_key"),
                "required by this algorithm: write e.g. \"client_ip\", \"header:X-User\", \"cookie:session\", \"path\", \"uri\" or \"query:id\"",
            );
            None
        }
        None => None,
        Some(_) if !algorithm.is_hash() => {
            c.err(
                format!("{path}.hash_key"),
                "only used by balance = \"consistent_hash\" or \"maglev\"",
            );
            None
        }
        Some(k) => {
            let parsed = hash_key(k);
            if parsed.is_none() {
                c.err(
                    format!("{path}.hash_key"),
                    format!("invalid key {k:?}; expected client_ip, path, uri, header:NAME, cookie:NAME or query:NAME"),
                );
            }
            parsed
        }
    };
    let bounded_load = match raw.bounded_load {
        None => None,
        Some(_) if !algorithm.is_hash() => {
            c.err(
                format!("{path}.bounded_load"),
                "only used by balance = \"consistent_hash\" or \"maglev\"",
            );
            None
        }
        Some(f) if (1.0..=100.0).contains(&f) => Some(f),
        Some(f) => {
            c.err(
                format!("{path}.bounded_load"),
                format!("{f} is out of range: write a factor from 1.0 to 100 (e.g. 1.25)"),
            );
            None
        }
    };
    let sticky = raw.sticky.map(|s| {
        if !token(&s.cookie) {
            c.err(
                format!("{path}.sticky.cookie"),
                "must be a cookie name (letters, digits, - _ .)",
            );
        }
        // "session": no Max-Age, the browser drops the cookie when it closes.
        let ttl = match s.ttl.as_deref() {
            Some("session") => None,
            _ => Some(c.duration(
                &format!("{path}.sticky.ttl"),
                s.ttl.as_ref(),
                Duration::from_secs(3600),
            )),
        };
        // Max-Age is in whole seconds, and Max-Age=0 deletes the cookie: no session would stick.
        if let Some(ttl) = ttl.filter(|t| t.subsec_nanos() != 0) {
            c.err(
                format!("{path}.sticky.ttl"),
                format!("{ttl:?} is not whole seconds, as the cookie's Max-Age must be (a Max-Age of 0 deletes it); write \"{}s\"", ttl.as_secs().max(1)),
            );
        }
        let same_site = s.same_site.as_deref().and_then(|v| {
            let parsed = SameSite::parse(v);
            if parsed.is_none() {
                c.err(format!("{path}.sticky.same_site"), format!("{v:?}: write \"Strict\", \"Lax\" or \"None\""));
            }
            parsed
        });
        if same_site == Some(SameSite::None) && s.secure == Some(false) {
            c.err(
                format!("{path}.sticky.secure"),
                "cannot be false with same_site = \"None\": browsers refuse such a cookie without Secure",
            );
        }
        if s.secret.as_deref().is_some_and(|k| k.len() < 16) {
            c.err(
                format!("{path}.sticky.secret"),
                "is too short to keep backends hidden: write at least 16 random characters (the same on every host)",
            );
        }
        StickySpec {
            cookie: s.cookie.clone(),
            ttl,
            secret: s.secret.clone(),
            secure: s.secure,
            same_site,
        }
    });
    Spec {
        hash_key,
        bounded_load,
        sticky,
        ..Spec::new(algorithm)
    }
}
