//! Config for observability, outside the request pipeline proper: the admin listener
//! (`[admin]`), the error and access logs (`[log]`) and request ids (`[request_id]`). Raw
//! serde shapes and their validation into typed values live together here, so that
//! `config/mod.rs` only calls [`observe_sections`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{Checker, Size};
use crate::observe::template::{self, Escape, Template};

/// `[admin]`: the operator's HTTP endpoint (metrics, status, drain), off the public listeners.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// When set, every endpoint but `/healthz` and `/ready` needs `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// Connections served at once. A new one beyond it closes the oldest that has not sent
    /// its whole head (so slow clients cannot lock probes out).
    pub max_connections: usize,
    /// The whole request head must arrive within this of the accept.
    pub header_timeout: Duration,
    /// Writing the response.
    pub send_timeout: Duration,
}

impl AdminConfig {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
    pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=4096;
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(5);
    /// The most either timeout may be: longer would let slow clients hold the listener.
    pub const MAX_TIMEOUT: (Duration, &'static str) = (Duration::from_secs(60), "60s");
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessFormat {
    /// nginx's `combined`, followed by `key=value` fields (route, upstream, timings, id).
    Combined,
    /// One JSON object per line.
    Json,
    /// The operator's own line of `$variables` (nginx's `log_format`).
    Template(std::sync::Arc<Template>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessTarget {
    Stdout,
    File(PathBuf),
    /// `syslog:server=...`: one datagram per line.
    Syslog(crate::observe::syslog::SyslogTarget),
}

/// The access log: one line per request, buffered per shard, written by one writer thread.
#[derive(Clone, Debug)]
pub struct AccessLogConfig {
    pub target: AccessTarget,
    pub format: AccessFormat,
    /// Fraction of requests logged, 0 < sample <= 1 (0 too when `keep` has a rule).
    pub sample: f64,
    /// Requests logged whatever the sample says.
    pub keep: Keep,
    /// Per-shard buffer: handed to the writer when this full (or at `flush`).
    pub buffer_bytes: usize,
    /// Longest time a line waits in a shard's buffer.
    pub flush: Duration,
    /// Buffers queued for the writer, per process; when all are taken, lines are dropped
    /// and counted instead of stalling a shard.
    pub queue: usize,
}

/// `access_keep_status` and `access_keep_slower_than`: the requests an operator wants every
/// line of (errors, slow ones) while `access_sample` thins out the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    /// Requests answered with this status or above, or with none (`000`).
    pub status: Option<u16>,
    /// Requests that took at least this long, in µs.
    pub slower_than_us: Option<u64>,
}

impl Keep {
    /// Whether a request that got `status` (None: no response) after `total_us` is kept.
    pub fn keeps(&self, status: Option<u16>, total_us: u64) -> bool {
        self.status
            .is_some_and(|min| status.is_none_or(|s| s >= min))
            || self.slower_than_us.is_some_and(|t| total_us >= t)
    }

    pub fn any(&self) -> bool {
        self.status.is_some() || self.slower_than_us.is_some()
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `tracing` filter for the error log (`EDGESHARD_LOG` overrides it).
    pub level: String,
    /// Most error-log lines per second per shard for client- and backend-caused events;
    /// the rest are counted and summarised.
    pub error_rate: u32,
    pub access: Option<AccessLogConfig>,
}

/// `[request_id]`: every request carries an id, generated unless a peer in
/// `server.trusted_proxies` sent one.
#[derive(Clone, Debug)]
pub struct RequestIdConfig {
    /// Header name as configured (sent upstream with this spelling).
    pub header: String,
    /// Lower-case header name, for matching.
    pub header_lower: String,
    /// Also return the id to the client in the response.
    pub respond: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    address: String,
    token: Option<String>,
    token_file: Option<String>,
    #[serde(default)]
    allow_remote_without_token: bool,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    send_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    level: Option<String>,
    error_rate: Option<u32>,
    access: Option<String>,
    access_format: Option<String>,
    access_escape: Option<String>,
    access_sample: Option<f64>,
    access_keep_status: Option<u16>,
    access_keep_slower_than: Option<String>,
    access_buffer: Option<Size>,
    access_flush: Option<String>,
    access_queue: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequestId {
    header: Option<String>,
    trusted: Option<Vec<String>>,
    respond: Option<bool>,
}

pub(super) struct Observe {
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub request_id: RequestIdConfig,
}

/// `log.access_format` and `log.access_escape`.
fn access_format(c: &mut Checker, raw: &RawLog) -> AccessFormat {
    let escape = match raw.access_escape.as_deref() {
        None | Some("default") => Escape::Default,
        Some("json") => Escape::Json,
        Some(other) => {
            c.err(
                "log.access_escape",
                format!("unknown escaping {other:?}; expected default or json"),
            );
            Escape::Default
        }
    };
    let format = match raw.access_format.as_deref() {
        None | Some("combined") => AccessFormat::Combined,
        Some("json") => AccessFormat::Json,
        Some(line) if line.contains('$') => match template::parse(line, escape) {
            Ok(t) => AccessFormat::Template(std::sync::Arc::new(t)),
            Err(e) => {
                c.err("log.access_format", e);
                AccessFormat::Combined
            }
        },
        Some(other) => {
            c.err(
                "log.access_format",
                format!(
                    "unknown format {other:?}; expected combined, json, or a line of $variables"
                ),
            );
            AccessFormat::Combined
        }
    };
    let template = raw
        .access_format
        .as_deref()
        .is_some_and(|f| f.contains('$'));
    if raw.access_escape.is_some() && !template {
        c.err(
            "log.access_escape",
            "applies only to an access_format written as a line of $variables",
        );
    }
    format
}

/// Fields the request id must not replace.
fn token_ok(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic())
}

/// A `log.level` filter: comma-separated directives, each a level or `target=level` (a
/// `target[span]=level` too). A bare word that is not a level is refused: the filter syntax
/// reads it as a target name with every level on, so a typo such as `"warnn"` would turn off
/// every other line of the log.
fn filter_ok(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = |l: &str| LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l.trim()));
    !filter.trim().is_empty()
        && tracing_subscriber::EnvFilter::try_new(filter).is_ok()
        && filter.split(',').all(|d| match d.rsplit_once('=') {
            Some((target, l)) => !target.trim().is_empty() && level(l),
            None => level(d),
        })
}

/// Reads and validates `[admin]`, `[log]` and `[request_id]` out of the top-level table.
/// A relative `admin.token_file` is under `base`, the configuration file's directory (as
/// certificate and users files are), whatever the working directory.
pub(super) fn observe_sections(
    c: &mut Checker,
    table: &mut toml::Table,
    base: &std::path::Path,
) -> Observe {
    let admin = table
        .remove("admin")
        .and_then(|v| c.section::<RawAdmin>("admin", v))
        .and_then(|a| {
            let address = c.address("admin.address", &a.address)?;
            let token = match (a.token, a.token_file) {
                (Some(_), Some(_)) => {
                    c.err("admin", "set either token or token_file, not both");
                    None
                }
                (Some(t), None) => Some(t),
                (None, Some(f)) => match std::fs::read_to_string(base.join(&f)) {
                    Ok(t) => Some(t.trim().to_string()),
                    Err(e) => {
                        c.err("admin.token_file", format!("cannot read {f:?}: {e}"));
                        None
                    }
                },
                (None, None) => None,
            };
            if let Some(t) = &token {
                if !token_ok(t) {
                    c.err(
                        "admin.token",
                        "must be non-empty printable ASCII without spaces",
                    );
                }
            }
            // Reload, drain and disable on an address others can reach, with no token: refused
            // unless the operator says so (a firewall or a private network may make it safe).
            if token.is_none() && !address.ip().is_loopback() && !a.allow_remote_without_token {
                c.err(
                    "admin.address",
                    format!(
                        "{address} is not a loopback address and [admin] has no token: anyone \
                         who can reach it could reload, drain or disable backends; set \
                         admin.token (or token_file), listen on 127.0.0.1, or set \
                         admin.allow_remote_without_token = true"
                    ),
                );
            }
            let range = AdminConfig::MAX_CONNECTIONS_RANGE;
            let max_connections = match a.max_connections {
                None => AdminConfig::DEFAULT_MAX_CONNECTIONS,
                Some(n) if range.contains(&n) => n,
                Some(n) => {
                    c.err(
                        "admin.max_connections",
                        format!("{n} is out of range {}..={}", range.start(), range.end()),
                    );
                    AdminConfig::DEFAULT_MAX_CONNECTIONS
                }
            };
            let header_timeout = c.duration_up_to(
                "admin.header_timeout",
                a.header_timeout.as_ref(),
                AdminConfig::DEFAULT_HEADER_TIMEOUT,
                AdminConfig::MAX_TIMEOUT,
            );
            let send_timeout = c.duration_up_to(
                "admin.send_timeout",
                a.send_timeout.as_ref(),
                AdminConfig::DEFAULT_SEND_TIMEOUT,
                AdminConfig::MAX_TIMEOUT,
            );
            Some(AdminConfig {
                address,
                token,
                max_connections,
                header_timeout,
                send_timeout,
            })
        });

    let raw: RawLog = table
        .remove("log")
        .and_then(|v| c.section("log", v))
        .unwrap_or_default();
    let level = raw.level.clone().unwrap_or_else(|| "info".into());
    if !filter_ok(&level) {
        c.err(
            "log.level",
            format!(
                "invalid filter {level:?}; write e.g. \"info\", \"warn\" or \"edgeshard=debug\""
            ),
        );
    }
    let error_rate = match raw.error_rate {
        None => 10,
        Some(n) if (1..=100_000).contains(&n) => n,
        Some(n) => {
            c.err("log.error_rate", format!("{n} is out of range 1..=100000"));
            10
        }
    };
    let access = match raw.access.as_deref() {
        None | Some("off") => {
            for (set, key) in [
                (raw.access_format.is_some(), "access_format"),
                (raw.access_escape.is_some(), "access_escape"),
                (raw.access_sample.is_some(), "access_sample"),
                (raw.access_keep_status.is_some(), "access_keep_status"),
                (
                    raw.access_keep_slower_than.is_some(),
                    "access_keep_slower_than",
                ),
                (raw.access_buffer.is_some(), "access_buffer"),
                (raw.access_flush.is_some(), "access_flush"),
                (raw.access_queue.is_some(), "access_queue"),
            ] {
                if set {
                    c.err(
                        format!("log.{key}"),
                        "has no effect without log.access (\"stdout\" or a file path)",
                    );
                }
            }
            None
        }
        Some(t) => {
            let target = match t {
                "stdout" | "-" => AccessTarget::Stdout,
                "" => {
                    c.err(
                        "log.access",
                        "write \"stdout\", \"off\", a file path or syslog:server=ADDR",
                    );
                    AccessTarget::Stdout
                }
                t if t.starts_with("syslog:") => {
                    match crate::observe::syslog::parse(&t["syslog:".len()..]) {
                        Ok(s) => AccessTarget::Syslog(s),
                        Err(e) => {
                            c.err("log.access", e);
                            AccessTarget::Stdout
                        }
                    }
                }
                path => AccessTarget::File(PathBuf::from(path)),
            };
            let format = access_format(c, &raw);
            let keep = Keep {
                status: raw.access_keep_status.filter(|s| {
                    let ok = (100..=599).contains(s);
                    if !ok {
                        c.err(
                            "log.access_keep_status",
                            format!("{s} is not a status (100..=599)"),
                        );
                    }
                    ok
                }),
                slower_than_us: raw.access_keep_slower_than.as_ref().map(|_| {
                    let d = c.duration(
                        "log.access_keep_slower_than",
                        raw.access_keep_slower_than.as_ref(),
                        Duration::ZERO,
                    );
                    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
                }),
            };
            let sample = match raw.access_sample {
                None => 1.0,
                Some(s) if s > 0.0 && s <= 1.0 => s,
                // Only the kept requests: HAProxy's `option dontlog-normal`.
                Some(s) if s == 0.0 && keep.any() => s,
                Some(s) => {
                    c.err(
                        "log.access_sample",
                        format!(
                            "{s} is out of range: write a fraction greater than 0 and at most 1 (0 only with access_keep_status or access_keep_slower_than)"
                        ),
                    );
                    1.0
                }
            };
            Some(AccessLogConfig {
                target,
                format,
                sample,
                keep,
                buffer_bytes: c.size(
                    "log.access_buffer",
                    raw.access_buffer.as_ref(),
                    64 << 10,
                    4096,
                    64 << 20,
                ) as usize,
                flush: {
                    let d = c.duration(
                        "log.access_flush",
                        raw.access_flush.as_ref(),
                        Duration::from_secs(1),
                    );
                    if d < Duration::from_millis(10) {
                        c.err("log.access_flush", "must be at least 10ms");
                    }
                    d.max(Duration::from_millis(10))
                },
                queue: c.count("log.access_queue", raw.access_queue, 64, 1, 1 << 16),
            })
        }
    };

    let raw: RawRequestId = table
        .remove("request_id")
        .and_then(|v| c.section("request_id", v))
        .unwrap_or_default();
    let header = raw.header.unwrap_or_else(|| "X-Request-Id".into());
    let lower = header.to_ascii_lowercase();
    if !super::fields::token(&header) {
        c.err(
            "request_id.header",
            format!("invalid header name {header:?}"),
        );
    } else if !super::fields::own_field_allowed(&lower) {
        c.err(
            "request_id.header",
            format!("{header:?} is a field HTTP or the proxy defines (framing, hop-by-hop, Host, content, caching, forwarding); it would replace the real one on every request and response: choose another name such as X-Request-Id"),
        );
    }
    if raw.trusted.is_some() {
        c.err(
            "request_id.trusted",
            "moved to server.trusted_proxies, which also decides whose X-Forwarded-For is believed",
        );
    }
    let request_id = RequestIdConfig {
        header_lower: header.to_ascii_lowercase(),
        header,
        respond: raw.respond.unwrap_or(true),
    };
    Observe {
        admin,
        log: LogConfig {
            level,
            error_rate,
            access,
        },
        request_id,
    }
}

impl super::Config {
    /// A short human summary, printed by `edgeshard check`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for l in &self.listeners {
            let kind = match (&l.tls, &l.redirect_https) {
                (Some(t), _) => match t.certificates.len() {
                    1 => " (tls, 1 certificate)".to_string(),
                    n => format!(" (tls, {n} certificates)"),
                },
                (None, Some(r)) => format!(" (redirects to https port {})", r.port),
                (None, None) => String::new(),
            };
            s.push_str(&format!("listener {}{kind}\n", l.address));
        }
        for u in &self.upstreams {
            // Backends by host name are resolved when the proxy starts, not by a check.
            let named = match u.names.len() {
                0 => String::new(),
                n => format!(", {n} by host name"),
            };
            let n = u.backends.len();
            let plural = if n == 1 { "" } else { "s" };
            s.push_str(&format!(
                "upstream {} ({}, {n} backend{plural}{named})\n",
                u.name,
                u.balance.algorithm.as_str(),
            ));
        }
        let n = self.routes.len();
        s.push_str(&format!("{n} route{}\n", if n == 1 { "" } else { "s" }));
        s
    }
}
