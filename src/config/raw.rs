//! Config, raw side: the TOML shapes exactly as written (serde, `deny_unknown_fields`), the
//! [`Checker`] that turns their strings into typed values while collecting every problem with
//! its key path, and the [`ConfigError`] those problems make. `super` (config/mod.rs)
//! assembles the typed [`super::Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path such as `route[2].upstream`; empty for file-level problems.
    pub path: String,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            // A key or value from the file may hold a line break or another control
            // character: escaped, so that each problem stays one line and none can be forged.
            let message = escape_controls(&issue.message);
            if issue.path.is_empty() {
                write!(f, "{}: {message}", self.file.display())?;
            } else {
                let path = escape_controls(&issue.path);
                write!(f, "{}: {path}: {message}", self.file.display())?;
            }
        }
        Ok(())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) io_engine: Option<String>,
    pub(super) huge_pages: Option<bool>,
    pub(super) shutdown_timeout: Option<String>,
    pub(super) drain_grace: Option<String>,
    pub(super) splice: Option<String>,
    pub(super) splice_min_bytes: Option<Size>,
    pub(super) splice_pipe_bytes: Option<Size>,
    pub(super) splice_max_pipes: Option<usize>,
    pub(super) client_congestion: Option<String>,
    pub(super) upstream_congestion: Option<String>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) server_header: Option<String>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) hide_response_headers: Option<Vec<String>>,
    /// Status code (as a string: TOML keys are) → file.
    pub(super) error_pages: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) servers: Option<Vec<String>>,
    pub(super) min_ttl: Option<String>,
    pub(super) max_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) address: String,
    pub(super) tls: Option<super::tls::RawListenerTls>,
    pub(super) redirect_https: Option<super::tls::RawRedirect>,
    pub(super) allow: Option<Vec<String>>,
    pub(super) deny: Option<Vec<String>>,
    pub(super) proxy_protocol: Option<bool>,
    pub(super) rate_limit: Option<super::ratelimit::RawRateLimit>,
    pub(super) request_headers: Option<super::rules::RawHeaderRules>,
    pub(super) response_headers: Option<super::rules::RawHeaderRules>,
}

/// A route's `host`: one name, or a list of them (nginx's `server_name a b;`).
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a host name (\"api.example.com\", \"*.example.com\", \"*\") or a list of them"
)]
pub(super) enum RawHosts {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<String>,
    pub(super) host: Option<RawHosts>,
    pub(super) path_prefix: Option<String>,
    pub(super) path: Option<String>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) headers: Option<BTreeMap<String, String>>,
    pub(super) upstream: Option<String>,
    pub(super) allow: Option<Vec<String>>,
    pub(super) deny: Option<Vec<String>>,
    pub(super) rate_limit: Option<super::ratelimit::RawRateLimit>,
    pub(super) auth: Option<super::auth::RawAuth>,
    pub(super) strip_prefix: Option<String>,
    pub(super) add_prefix: Option<String>,
    pub(super) rewrite: Option<super::rules::RawRewrite>,
    pub(super) upstream_host: Option<String>,
    pub(super) request_headers: Option<super::rules::RawHeaderRules>,
    pub(super) response_headers: Option<super::rules::RawHeaderRules>,
    pub(super) redirect: Option<super::rules::RawRedirect>,
    pub(super) compress: Option<RawCompress>,
    pub(super) cache: Option<super::cache::RawCache>,
    pub(super) max_body_bytes: Option<Size>,
    pub(super) respond: Option<super::response::RawRespond>,
    pub(super) access_log: Option<bool>,
    pub(super) error_pages: Option<std::collections::BTreeMap<String, String>>,
    pub(super) mirror: Option<super::mirror::RawMirror>,
}

/// A route's `compress` (checked by `compress::route_compress`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompress {
    pub(super) types: Option<Vec<String>>,
    pub(super) min_length: Option<Size>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) gzip_level: Option<u32>,
    pub(super) br_quality: Option<u32>,
    pub(super) zstd_level: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Option<String>,
    pub(super) srv: Option<String>,
    pub(super) weight: Option<u32>,
    pub(super) backup: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: String,
    pub(super) balance: Option<String>,
    pub(super) hash_key: Option<String>,
    pub(super) bounded_load: Option<f64>,
    pub(super) sticky: Option<super::balancing::RawSticky>,
    pub(super) backends: Vec<RawBackend>,
    pub(super) max_idle_per_backend: Option<usize>,
    pub(super) idle_timeout: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) response_timeout: Option<String>,
    pub(super) buffer_request_body: Option<Size>,
    pub(super) fail_timeout: Option<String>,
    pub(super) slow_start: Option<String>,
    pub(super) health_check: Option<super::resilience::RawHealthCheck>,
    pub(super) outlier: Option<super::resilience::RawOutlier>,
    pub(super) breaker: Option<super::resilience::RawBreaker>,
    pub(super) retry: Option<super::resilience::RawRetry>,
    pub(super) tls: Option<super::tls::RawUpstreamTls>,
    pub(super) proxy_protocol: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) client_header: Option<String>,
    pub(super) client_idle: Option<String>,
    pub(super) client_body: Option<String>,
    pub(super) client_send: Option<String>,
    pub(super) upstream_connect: Option<String>,
    pub(super) upstream_response: Option<String>,
    pub(super) tunnel_idle: Option<String>,
    pub(super) client_keepalive_time: Option<String>,
    pub(super) tunnel_half_closed: Option<String>,
    pub(super) lingering_timeout: Option<String>,
    pub(super) lingering_time: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_header_bytes: Option<Size>,
    pub(super) max_headers: Option<usize>,
    pub(super) max_uri_bytes: Option<Size>,
    pub(super) max_body_bytes: Option<Size>,
    pub(super) max_connections_per_shard: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_idle_upstream_per_shard: Option<usize>,
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) per_client_ipv6_prefix: Option<usize>,
    pub(super) client_body_min_rate: Option<Size>,
    pub(super) client_send_min_rate: Option<Size>,
    pub(super) auth_cache_entries: Option<usize>,
    pub(super) auth_pending: Option<usize>,
    pub(super) compress_memory: Option<Size>,
    pub(super) buffer_memory: Option<Size>,
    pub(super) max_requests_per_connection: Option<usize>,
}

/// A byte size written as an integer or a string such as "16MiB".
#[derive(Clone)]
pub(super) enum Size {
    Int(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size: whole bytes such as 65536, or a string such as \"64KiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size::Int(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size::Int)
                    .map_err(|_| E::custom(format!("{v} is negative; a size is 0 or more bytes")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number of bytes; write e.g. 1536 or \"1536KiB\""
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Upper bound for every duration, so deadline arithmetic can never overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) const TOP_LEVEL: &[&str] = &[
    "server",
    "listener",
    "route",
    "upstream",
    "timeouts",
    "limits",
    "admin",
    "log",
    "request_id",
    "dns",
    "rate_limits",
];

#[derive(Default)]
pub(super) struct Checker {
    pub(super) issues: Vec<ConfigIssue>,
    /// (name, key path) of each `[[upstream]]` left out for an error in its entry.
    pub(super) skipped_upstreams: Vec<(String, String)>,
}

/// The longest message a config issue keeps: many quote the value they refuse, and a value
/// may be megabytes long (a pasted file, a generated list).
const MAX_MESSAGE: usize = 1024;

impl Checker {
    pub(super) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            let cut = message.len() - end;
            message.truncate(end);
            message.push_str(&format!("… ({cut} more bytes)"));
        }
        self.issues.push(ConfigIssue {
            path: path.into(),
            message,
        });
    }

    /// Deserializes one value, recording an error with the precise key path on failure.
    pub(super) fn section<T: for<'de> Deserialize<'de>>(
        &mut self,
        path: &str,
        value: toml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner == "." || inner.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}.{inner}")
                };
                self.err(full, clean_serde_message(&e.into_inner().to_string()));
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        raw: Option<&String>,
        default: Duration,
    ) -> Duration {
        self.duration_up_to(path, raw, default, (MAX_DURATION, "7 days"))
    }

    /// [`Checker::duration`] with another maximum than 7 days: `(max, as the error says it)`.
    pub(super) fn duration_up_to(
        &mut self,
        path: &str,
        raw: Option<&String>,
        default: Duration,
        (max, said): (Duration, &str),
    ) -> Duration {
        match raw {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) if d > max => {
                    self.err(path, format!("{s:?} is longer than the maximum of {said}"));
                    default
                }
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(path, "must be greater than zero");
                    default
                }
                Err(e) => {
                    self.err(
                        path,
                        format!("invalid duration {s:?} ({e}); write e.g. \"10s\" or \"250ms\""),
                    );
                    default
                }
            },
        }
    }

    pub(super) fn size(
        &mut self,
        path: &str,
        raw: Option<&Size>,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let v = match raw {
            None => return default,
            Some(Size::Int(n)) => *n,
            Some(Size::Text(s)) => match parse_size(s) {
                Some(n) => n,
                None => {
                    self.err(
                        path,
                        format!("invalid size {s:?}; write bytes or e.g. \"64KiB\", \"16MiB\""),
                    );
                    return default;
                }
            },
        };
        if v < min || v > max {
            self.err(path, format!("{v} is out of range {min}..={max}"));
            return default;
        }
        v
    }

    /// The index of the `[[upstream]]` named `name`, given at `path`; an error when there is
    /// none.
    pub(super) fn upstream_named(
        &mut self,
        path: String,
        name: &str,
        upstreams: &[super::UpstreamConfig],
    ) -> Option<usize> {
        let found = upstreams.iter().position(|u| u.name == name);
        if found.is_none() {
            let skipped = self.skipped_upstreams.iter().find(|(n, _)| n == name);
            let message = match skipped {
                Some((_, at)) => format!(
                    "upstream {name:?} was left out for the error in its entry ({at}): fix that one"
                ),
                None => format!(
                    "upstream {name:?} is not defined; add an [[upstream]] with name = {name:?}"
                ),
            };
            self.err(path, message);
        }
        found
    }

    pub(super) fn count(
        &mut self,
        path: &str,
        raw: Option<usize>,
        default: usize,
        min: usize,
        max: usize,
    ) -> usize {
        match raw {
            None => default,
            Some(v) if v < min || v > max => {
                self.err(path, format!("{v} is out of range {min}..={max}"));
                default
            }
            Some(v) => v,
        }
    }

    /// A backend's address that is not `HOST:PORT` (those are taken before): an IP literal.
    pub(super) fn backend_address(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!("invalid address {s:?}; write IP:PORT such as \"127.0.0.1:8080\" or HOST:PORT such as \"app.internal:8080\""),
                );
                None
            }
        }
    }

    /// `a`, if the proxy can connect to it (a backend's or a name server's address): not port
    /// 0, not an unspecified, multicast or broadcast address.
    pub(super) fn connectable(&mut self, path: &str, a: SocketAddr) -> Option<SocketAddr> {
        let ip = a.ip();
        if a.port() == 0 {
            self.err(
                path,
                format!("{a}: port 0 cannot be connected to; write the peer's port"),
            );
            None
        } else if ip.is_unspecified() || ip.is_multicast() || ip == std::net::Ipv4Addr::BROADCAST {
            self.err(path, format!("{a} is an unspecified, multicast or broadcast address, not one a peer can have; write its own address"));
            None
        } else {
            Some(a)
        }
    }

    pub(super) fn address(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!("invalid address {s:?}; write IP:PORT such as \"127.0.0.1:8080\" (host names are not resolved)"),
                );
                None
            }
        }
    }
}

pub(super) fn clean_serde_message(m: &str) -> String {
    // serde_path_to_error already carries the path; toml adds a location line we do not need.
    let m = m.lines().next().unwrap_or(m).trim();
    // A bare number where text is expected is most often a duration written without its
    // unit and quotes (`interval = 1`), but not always (`address = 8080`): say to quote it,
    // and how a duration is written, without calling every such key a duration.
    if m.starts_with("invalid type: integer") || m.starts_with("invalid type: floating point") {
        if let Some(head) = m.strip_suffix("expected a string") {
            return format!("{head}expected a string: write it in quotes (a duration with its unit, e.g. \"10s\" or \"250ms\")");
        }
    }
    m.to_string()
}

/// Parses "16384", "64KiB", "16MiB", "1GiB", "10KB", "1MB" (K/M/G are powers of 1024 too).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(super) fn array(c: &mut Checker, table: &mut toml::Table, key: &str) -> Vec<toml::Value> {
    match table.remove(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            c.err(key, format!("must be an array of tables: write [[{key}]]"));
            Vec::new()
        }
    }
}
