//! A route's `compress` (response compression): checked here into [`CompressConfig`];
//! applied at stage 7, *respond*, by [`crate::compress`] (negotiated from the request's
//! `Accept-Encoding` after routing, decided when the response head arrives).

use super::raw::{Checker, RawCompress};

/// Default `compress.min_length`: responses of a known smaller length are sent as they are.
pub const MIN_LENGTH: u64 = 1024;
/// Default `compress.gzip_level` (zlib's own default).
pub const GZIP_LEVEL: u32 = 6;
/// Default `compress.br_quality`: brotli's quality 11 is for static files; 4 streams at
/// gzip-like speed with a better ratio.
pub const BR_QUALITY: u32 = 4;
/// Default `compress.zstd_level` (zstd's own default).
pub const ZSTD_LEVEL: i32 = 3;

/// Default `compress.types`: textual media types worth compressing.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/css",
    "text/plain",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/manifest+json",
    "image/svg+xml",
];

/// A content coding the proxy can apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Zstd,
    Br,
    Gzip,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Br, Algorithm::Gzip];

    /// The content-coding token (RFC 9110 §8.4.1), as written in `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Br => "br",
            Algorithm::Gzip => "gzip",
        }
    }

    /// Index into per-algorithm counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// `compress` of a route.
#[derive(Clone, Debug)]
pub struct CompressConfig {
    /// In order of preference: a tie between the client's q-values goes to the first.
    pub algorithms: Vec<Algorithm>,
    /// Lowercase media types (`type/subtype`, or `type/*`), parameters not included.
    pub types: Vec<Box<str>>,
    pub min_length: u64,
    pub gzip_level: u32,
    pub br_quality: u32,
    pub zstd_level: i32,
}

/// Checks a route's `compress` table.
pub(super) fn route_compress(
    c: &mut Checker,
    path: &str,
    raw: Option<RawCompress>,
) -> Option<Box<CompressConfig>> {
    let raw = raw?;
    let path = format!("{path}.compress");
    let mut algorithms = Vec::new();
    match raw.algorithms {
        None => algorithms.extend(Algorithm::ALL),
        Some(names) => {
            let names_given = names.len();
            for name in names {
                match Algorithm::ALL.into_iter().find(|a| a.token() == name) {
                    Some(a) if algorithms.contains(&a) => c.err(
                        format!("{path}.algorithms"),
                        format!("{name:?} listed twice"),
                    ),
                    Some(a) => algorithms.push(a),
                    None => c.err(
                        format!("{path}.algorithms"),
                        format!("unknown algorithm {name:?}: use \"zstd\", \"br\" or \"gzip\""),
                    ),
                }
            }
            // An empty list (an unknown name is already reported by itself).
            if names_given == 0 {
                c.err(format!("{path}.algorithms"), "name at least one algorithm");
            }
        }
    }
    let types: Vec<Box<str>> = match raw.types {
        None => DEFAULT_TYPES.iter().map(|t| Box::from(*t)).collect(),
        Some(list) => {
            for t in &list {
                if !valid_type(t) {
                    c.err(
                        format!("{path}.types"),
                        format!(
                            "invalid media type {t:?}: write type/subtype or type/*, no parameters"
                        ),
                    );
                }
            }
            if list.is_empty() {
                c.err(format!("{path}.types"), "name at least one media type");
            }
            list.iter().map(|t| t.to_ascii_lowercase().into()).collect()
        }
    };
    let min_length = c.size(
        &format!("{path}.min_length"),
        raw.min_length.as_ref(),
        MIN_LENGTH,
        0,
        u64::MAX,
    );
    let gzip_level = raw.gzip_level.unwrap_or(GZIP_LEVEL);
    if !(1..=9).contains(&gzip_level) {
        c.err(format!("{path}.gzip_level"), "must be 1..=9");
    }
    // Each read (up to 64 KiB) is encoded in one call on the shard: the slow top levels
    // (brotli 10-11 runs at about 1 MB/s, zstd 19 at a few) would stall every connection of
    // the shard for tens of milliseconds per read. They are for static files, not streams.
    let br_quality = raw.br_quality.unwrap_or(BR_QUALITY);
    if br_quality > 7 {
        c.err(
            format!("{path}.br_quality"),
            "must be 0..=7 (higher qualities are too slow to stream on a shard)",
        );
    }
    let zstd_level = raw.zstd_level.unwrap_or(ZSTD_LEVEL);
    if !(1..=12).contains(&zstd_level) {
        c.err(
            format!("{path}.zstd_level"),
            "must be 1..=12 (higher levels are too slow to stream on a shard)",
        );
    }
    Some(Box::new(CompressConfig {
        algorithms,
        types,
        min_length,
        gzip_level,
        br_quality,
        zstd_level,
    }))
}

/// `type/subtype` or `type/*`: RFC 9110 tokens, no parameters.
fn valid_type(t: &str) -> bool {
    match t.split_once('/') {
        Some((ty, sub)) => {
            super::fields::token(ty) && ty != "*" && (sub == "*" || super::fields::token(sub))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_type_slash_subtype_or_a_type_wildcard() {
        for ok in ["text/html", "application/json", "text/*", "image/svg+xml"] {
            assert!(valid_type(ok), "{ok}");
        }
        for bad in [
            "text",
            "*/*",
            "text/html; charset=utf-8",
            "/html",
            "text/",
            "",
        ] {
            assert!(!valid_type(bad), "{bad}");
        }
    }
}
