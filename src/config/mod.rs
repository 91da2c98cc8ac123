//! Before the pipeline starts: the TOML file is read into raw structs (serde, in `raw.rs`,
//! `deny_unknown_fields`) and validated into the typed [`Config`] the shards run on. Every
//! problem found is reported, not just the first, each naming the file, the key path and what
//! is wrong, so `edgeshard check` reads like `nginx -t`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Idle upstream connections a shard keeps per backend unless configured. The pool never holds
/// more than were in use at once (each idle one was checked in after a request), so this cap
/// matters only above that concurrency: at 64, two shards serving 256 client connections
/// closed connections the next request needed and reconnected 12 times per 1,000 requests
/// (loadtest/results/2026-12-03-vm/pool-default.md); `idle_timeout` closes what a burst left.
pub const DEFAULT_MAX_IDLE_PER_BACKEND: usize = 1024;

/// The `route` label of requests that matched no route (or were refused before routing):
/// reserved, no route may be named so.
pub const NO_ROUTE: &str = "none";

/// What the access log writes for a request's route or upstream when it had none (nginx's
/// `-`): reserved, no route or upstream may be named so.
pub const LOG_NONE: &str = "-";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    Auto,
    Uring,
    Epoll,
}

impl IoEngine {
    pub fn parse(s: &str) -> Option<IoEngine> {
        match s {
            "auto" => Some(IoEngine::Auto),
            "uring" | "io_uring" => Some(IoEngine::Uring),
            "epoll" | "legacy" => Some(IoEngine::Epoll),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BackendConfig {
    pub address: SocketAddr,
    pub weight: u32,
    /// Used only when no primary backend is usable.
    pub backup: bool,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub name: String,
    /// Algorithm, hash key, bounded load, sticky cookie.
    pub balance: crate::balance::Spec,
    /// The backends in force: the IP literals of the file, then (once resolved, see
    /// [`Config::with_resolved`]) the addresses of the [`Self::names`].
    pub backends: Vec<BackendConfig>,
    /// Backends written as host names, resolved by dns.rs.
    pub names: Vec<NamedBackend>,
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
    /// `connect_timeout` and `response_timeout`: this upstream's `upstream_connect` and
    /// `upstream_response` (`None`: the `[timeouts]` ones; read through
    /// [`Config::upstream_connect`] and [`Config::upstream_response`]).
    pub connect_timeout: Option<Duration>,
    pub response_timeout: Option<Duration>,
    /// `buffer_request_body`: a request body of known length up to this many bytes is read
    /// whole before it goes to a backend of this upstream (0: streamed, the default).
    pub buffer_request_body: u64,
    /// Health checks, outlier detection (which carries `fail_timeout`), breaker, retries,
    /// slow start.
    pub resilience: Resilience,
    /// TLS to the backends (`None`: plain HTTP).
    pub tls: Option<UpstreamTls>,
    /// `proxy_protocol`: a PROXY header naming the client starts every new connection to
    /// its backends (health probes send v1 `UNKNOWN` / v2 `LOCAL`); such connections carry
    /// one client each, so they are not pooled (`max_idle_per_backend` is 0).
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// For logs and metrics: `name` from the file, else `route<N>` (its position).
    pub name: String,
    /// The hosts it matches (`host`, one name or a list); empty: any host.
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    /// Upper-case method names; empty = any.
    pub methods: Vec<String>,
    /// Lower-case header names with exact values.
    pub headers: Vec<(String, String)>,
    /// Index into [`Config::upstreams`]; `None` only on a route that answers itself
    /// (`redirect` or `respond`).
    pub upstream: Option<usize>,
    /// `respond`: the route's own answer, sent instead of forwarding.
    pub respond: Option<Box<RouteResponse>>,
    /// `allow`/`deny`: checked against the client address once the route is chosen.
    pub access: AccessList,
    /// `rate_limit`: a token bucket the route's requests pass after its `allow`/`deny`.
    pub rate_limit: Option<RateLimit>,
    /// `auth`: checked after `access` ([`crate::auth`]).
    pub auth: Option<RouteAuth>,
    /// Header rules, rewrites, `upstream_host`, `redirect` ([`crate::rules`]).
    pub rules: RouteRules,
    /// `compress`: responses compressed for clients that accept it ([`crate::compress`]).
    pub compress: Option<Box<CompressConfig>>,
    /// `cache`: responses kept per shard ([`crate::cache`]); `None` costs nothing.
    pub cache: Option<Box<CacheConfig>>,
    /// Largest request body on this route: its `max_body_bytes`, else `limits.max_body_bytes`.
    pub max_body_bytes: u64,
    /// `access_log = false`: its requests are left out of the access log.
    pub access_log: bool,
    /// `error_pages`: this route's pages, before `server.error_pages`.
    pub error_pages: Vec<ErrorPage>,
    /// `mirror`: a copy of each forwarded request (or a share) sent to another upstream
    /// ([`crate::mirror`]).
    pub mirror: Option<Mirror>,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub client_header: Duration,
    pub client_idle: Duration,
    pub client_body: Duration,
    pub client_send: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    /// An upgraded connection (WebSocket) with no byte in either direction this long is
    /// closed.
    pub tunnel_idle: Duration,
    /// The same once one direction of the tunnel has ended (HAProxy's `timeout client-fin`
    /// and `server-fin`); the shorter of the two applies.
    pub tunnel_half_closed: Duration,
    /// A keep-alive connection open this long closes after its current response (nginx's
    /// `keepalive_time`): connections are re-opened, and so re-balanced across shards and
    /// proxies, at least this often.
    pub client_keepalive_time: Duration,
    /// A lingering close (`linger::linger_close`): its first part, and the most it waits
    /// for each read after (nginx's `lingering_timeout`).
    pub lingering_timeout: Duration,
    /// The whole of a lingering close (nginx's `lingering_time`).
    pub lingering_time: Duration,
}

/// Zero-copy relay of large bodies (`[server] splice*`).
#[derive(Clone, Copy, Debug)]
pub struct SpliceConfig {
    /// `splice = "auto"` (default) or `"off"`.
    pub enabled: bool,
    /// Bodies of known length from this size up are spliced; smaller ones are copied.
    pub min_bytes: u64,
    /// Pipe capacity asked for (F_SETPIPE_SZ).
    pub pipe_bytes: usize,
    /// Pipes per shard (in use or idle); beyond it, bodies are copied.
    pub max_pipes: usize,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub io_engine: IoEngine,
    /// `server.huge_pages`: transparent huge pages for the process's memory (`alloc.rs`).
    pub huge_pages: bool,
    pub shutdown_timeout: Duration,
    /// How long, once draining, an idle keep-alive connection may still send one request
    /// (answered with `Connection: close`); at most `shutdown_timeout`.
    pub drain_grace: Duration,
    pub splice: SpliceConfig,
    pub congestion: Congestion,
    /// `server.user`: run as this user once the listeners are bound (see `privs.rs`).
    pub user: Option<String>,
    /// `server.group`: with `user`, run as this group instead of the user's primary group.
    pub group: Option<String>,
    /// `server.server_header`, `server.hide_response_headers` and `server.error_pages`.
    pub response: ResponseFields,
    /// `server.trusted_proxies`: peers whose X-Forwarded-For (and request id) is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub request_id: RequestIdConfig,
    pub dns: DnsConfig,
    pub rate_limits: RateLimits,
    /// What is valid but probably not meant (a route no request reaches), each with its key
    /// path; shown by `check` and logged at start and reload ([`Config::warning_lines`]).
    pub warnings: Vec<ConfigIssue>,
}

/// One `[[listener]]`: its address and, when it terminates TLS, how; or the https redirect a
/// plain listener answers every request with.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub redirect_https: Option<RedirectHttps>,
    /// `allow`/`deny`: checked against the connecting address at accept (the PROXY
    /// header's source address when `proxy_protocol` is on).
    pub access: AccessList,
    /// `proxy_protocol`: every connection starts with a PROXY protocol header (v1 or v2)
    /// from a peer in `server.trusted_proxies` (see [`crate::proxy_protocol`]).
    pub proxy_protocol: bool,
    /// `rate_limit`: a token bucket every request on this listener passes first.
    pub rate_limit: Option<RateLimit>,
    /// `request_headers` / `response_headers`: applied before a route's own.
    pub request_headers: Option<Box<HeaderRules>>,
    pub response_headers: Option<Box<HeaderRules>>,
}

/// Default `server.drain_grace`: long enough for a request a client sent as the drain began
/// (its bytes in flight, or its writer a scheduling slice late) to arrive, short enough not to
/// hold a stop up.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Default `server.splice_min_bytes`: below it a body is copied (see docs/ARCHITECTURE.md,
/// "Splice", for the measurement behind it).
pub const SPLICE_MIN_BYTES: u64 = 256 * 1024;

mod access;
mod auth;
mod balancing;
mod cache;
mod compress;
mod congestion;
mod dns;
mod fields;
mod limits;
mod mirror;
mod observe;
mod ratelimit;
mod raw;
mod resilience;
mod response;
mod rules;
mod shadow;
mod tls;
mod upstream;

use crate::route::routed_path;
pub use access::{holds, AccessList, IpNet};
pub use auth::{BasicAuth, ForwardAuth, RouteAuth};
pub use cache::{CacheConfig, CachePolicy};
pub use compress::{Algorithm, CompressConfig};
pub use congestion::Congestion;
use dns::dns_config;
pub use dns::{DnsConfig, NamedBackend};
pub use limits::{Limits, DEFAULT_MIN_RATE};
pub use mirror::Mirror;
pub use observe::{
    AccessFormat, AccessLogConfig, AccessTarget, AdminConfig, Keep, LogConfig, RequestIdConfig,
};
pub use ratelimit::{RateKey, RateLimit, RateLimits, Store as RateStore};
use raw::{array, Checker, RawDns, RawLimits, RawRoute, RawServer, RawTimeouts, TOP_LEVEL};
pub use raw::{parse_size, ConfigError, ConfigIssue};
pub use resilience::Resilience;
pub use response::{error_page, ErrorPage, ResponseFields, RouteResponse};
pub(super) use rules::valid_host;
pub use rules::{HeaderRules, Part, PathRewrite, Redirect, RouteRules, Template, Var};
pub use tls::{suite_names, CertificateFiles, ListenerTls, RedirectHttps, UpstreamTls};

impl Config {
    /// The bound on a connect (TCP and TLS) to a backend of `upstream`: its
    /// `connect_timeout`, else `timeouts.upstream_connect`.
    pub fn upstream_connect(&self, upstream: usize) -> Duration {
        self.upstreams[upstream]
            .connect_timeout
            .unwrap_or(self.timeouts.upstream_connect)
    }

    /// The bound on each wait for a backend of `upstream` (writes of the request, the
    /// response head, each read of its body): its `response_timeout`, else
    /// `timeouts.upstream_response`.
    pub fn upstream_response(&self, upstream: usize) -> Duration {
        self.upstreams[upstream]
            .response_timeout
            .unwrap_or(self.timeouts.upstream_response)
    }
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            issues: vec![ConfigIssue {
                path: String::new(),
                message: match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("cannot read the file: {e}; check the path given to --config")
                    }
                    std::io::ErrorKind::PermissionDenied => format!(
                        "cannot read the file: {e}; make it readable by the user edgeshard runs as"
                    ),
                    _ => format!("cannot read the file: {e}"),
                },
            }],
        })?;
        Config::parse(&text, file)
    }

    /// Validates configuration text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut c = Checker::default();
        let fail = |c: Checker| ConfigError {
            file: file.to_path_buf(),
            issues: c.issues,
        };
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let msg = e.message().to_string();
                let loc = e
                    .span()
                    .map(|s| {
                        let line = text[..s.start].matches('\n').count() + 1;
                        format!("line {line}: ")
                    })
                    .unwrap_or_default();
                c.err("", format!("{loc}invalid TOML: {msg}"));
                return Err(fail(c));
            }
        };
        let unknown: Vec<String> = table
            .keys()
            .filter(|k| !TOP_LEVEL.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            c.err(
                k,
                format!("unknown key; expected one of: {}", TOP_LEVEL.join(", ")),
            );
        }

        let mut server: RawServer = table
            .remove("server")
            .and_then(|v| c.section("server", v))
            .unwrap_or_default();
        let raw_dns: RawDns = table
            .remove("dns")
            .and_then(|v| c.section("dns", v))
            .unwrap_or_default();
        let dns = dns_config(&mut c, raw_dns);
        let timeouts: RawTimeouts = table
            .remove("timeouts")
            .and_then(|v| c.section("timeouts", v))
            .unwrap_or_default();
        let limits: RawLimits = table
            .remove("limits")
            .and_then(|v| c.section("limits", v))
            .unwrap_or_default();

        let observe =
            observe::observe_sections(&mut c, &mut table, file.parent().unwrap_or(Path::new(".")));
        let trusted_proxies = access::cidrs(
            &mut c,
            "server.trusted_proxies",
            server.trusted_proxies.as_deref(),
        );
        let mut response = response::response_fields(
            &mut c,
            server.server_header.take(),
            server.hide_response_headers.take(),
        );
        response.error_pages = response::error_pages(
            &mut c,
            "server.error_pages",
            server.error_pages.take().unwrap_or_default(),
            file.parent().unwrap_or(Path::new(".")),
        );

        let io_engine = match server.io_engine.as_deref() {
            None => IoEngine::Auto,
            Some(s) => IoEngine::parse(s).unwrap_or_else(|| {
                c.err(
                    "server.io_engine",
                    format!("unknown engine {s:?}; expected auto, uring or epoll"),
                );
                IoEngine::Auto
            }),
        };
        let shutdown_timeout = c.duration(
            "server.shutdown_timeout",
            server.shutdown_timeout.as_ref(),
            Duration::from_secs(30),
        );
        // Capped, not refused: the grace only makes sense inside the drain that bounds it.
        let drain_grace = c
            .duration(
                "server.drain_grace",
                server.drain_grace.as_ref(),
                DRAIN_GRACE,
            )
            .min(shutdown_timeout);
        let congestion = Congestion {
            client: congestion::validate(
                &mut c,
                "server.client_congestion",
                server.client_congestion.as_ref(),
            ),
            upstream: congestion::validate(
                &mut c,
                "server.upstream_congestion",
                server.upstream_congestion.as_ref(),
            ),
        };
        let name_ok = |n: &String| !n.is_empty() && !n.contains('\0') && n.trim() == n;
        for (key, v) in [
            ("server.user", &server.user),
            ("server.group", &server.group),
        ] {
            if let Some(n) = v.as_ref().filter(|n| !name_ok(n)) {
                c.err(key, format!("{n:?} is not a user or group name"));
            }
        }
        if server.group.is_some() && server.user.is_none() {
            c.err(
                "server.group",
                "set server.user too: the group is changed only together with the user",
            );
        }
        let splice = SpliceConfig {
            enabled: match server.splice.as_deref() {
                None | Some("auto") => true,
                Some("off") => false,
                Some(o) => {
                    c.err(
                        "server.splice",
                        format!("{o:?}: expected \"auto\" or \"off\""),
                    );
                    true
                }
            },
            min_bytes: c.size(
                "server.splice_min_bytes",
                server.splice_min_bytes.as_ref(),
                SPLICE_MIN_BYTES,
                0,
                u64::MAX >> 1,
            ),
            pipe_bytes: c.size(
                "server.splice_pipe_bytes",
                server.splice_pipe_bytes.as_ref(),
                1 << 20,
                4096,
                64 << 20,
            ) as usize,
            max_pipes: c.count(
                "server.splice_max_pipes",
                server.splice_max_pipes,
                1024,
                0,
                1 << 20,
            ),
        };

        let timeouts = Timeouts {
            client_header: c.duration(
                "timeouts.client_header",
                timeouts.client_header.as_ref(),
                Duration::from_secs(10),
            ),
            client_idle: c.duration(
                "timeouts.client_idle",
                timeouts.client_idle.as_ref(),
                Duration::from_secs(60),
            ),
            client_body: c.duration(
                "timeouts.client_body",
                timeouts.client_body.as_ref(),
                Duration::from_secs(30),
            ),
            client_send: c.duration(
                "timeouts.client_send",
                timeouts.client_send.as_ref(),
                Duration::from_secs(60),
            ),
            upstream_connect: c.duration(
                "timeouts.upstream_connect",
                timeouts.upstream_connect.as_ref(),
                Duration::from_secs(3),
            ),
            upstream_response: c.duration(
                "timeouts.upstream_response",
                timeouts.upstream_response.as_ref(),
                Duration::from_secs(30),
            ),
            tunnel_idle: c.duration(
                "timeouts.tunnel_idle",
                timeouts.tunnel_idle.as_ref(),
                Duration::from_secs(3600),
            ),
            tunnel_half_closed: c.duration(
                "timeouts.tunnel_half_closed",
                timeouts.tunnel_half_closed.as_ref(),
                Duration::from_secs(30),
            ),
            client_keepalive_time: c.duration(
                "timeouts.client_keepalive_time",
                timeouts.client_keepalive_time.as_ref(),
                Duration::from_secs(3600),
            ),
            lingering_timeout: c.duration(
                "timeouts.lingering_timeout",
                timeouts.lingering_timeout.as_ref(),
                Duration::from_secs(1),
            ),
            lingering_time: c.duration(
                "timeouts.lingering_time",
                timeouts.lingering_time.as_ref(),
                Duration::from_secs(30),
            ),
        };
        let limits = limits::limits(&mut c, &limits);

        let raw_listeners = array(&mut c, &mut table, "listener");
        let listeners = tls::listeners(
            &mut c,
            raw_listeners,
            file.parent().unwrap_or(Path::new(".")),
            !trusted_proxies.is_empty(),
        );
        if let Some(admin) = &observe.admin {
            let dual_stack = crate::listener::dual_stack();
            if let Some(i) = listeners
                .iter()
                .position(|l| crate::listener::overlaps(admin.address, l.address, dual_stack))
            {
                c.err(
                    "admin.address",
                    format!(
                        "{} overlaps listener[{i}].address ({}: the same port on the same or a wildcard address); give the admin API a port of its own",
                        admin.address, listeners[i].address
                    ),
                );
            }
        }

        let raw_upstreams = array(&mut c, &mut table, "upstream");
        let upstreams = upstream::upstreams(
            &mut c,
            raw_upstreams,
            file.parent().unwrap_or(Path::new(".")),
        );

        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        for (i, v) in array(&mut c, &mut table, "route").into_iter().enumerate() {
            let path = format!("route[{i}]");
            let Some(mut r) = c.section::<RawRoute>(&path, v) else {
                continue;
            };
            let redirects = r.redirect.is_some();
            let rules = rules::route_rules(&mut c, &path, &mut r);
            let hosts = match &r.host {
                None => Vec::new(),
                Some(raw::RawHosts::One(h)) => {
                    vec![rules::host_match(&mut c, &format!("{path}.host"), h)]
                }
                Some(raw::RawHosts::Many(list)) => {
                    if list.is_empty() {
                        c.err(format!("{path}.host"), "an empty list matches no host; leave host out (or write \"*\") to match any");
                    }
                    let mut hosts: Vec<HostMatch> = Vec::new();
                    for (j, h) in list.iter().enumerate() {
                        let m = rules::host_match(&mut c, &format!("{path}.host[{j}]"), h);
                        if !hosts.contains(&m) {
                            hosts.push(m);
                        }
                    }
                    hosts
                }
            };
            // "*" among names matches any host: the others add nothing.
            let hosts = match hosts.contains(&HostMatch::Any) {
                true => Vec::new(),
                false => hosts,
            };
            let pathm = match (&r.path_prefix, &r.path) {
                (Some(_), Some(_)) => {
                    c.err(&path, "set either path_prefix or path, not both");
                    PathMatch::Any
                }
                // A request target holds only visible ASCII (RFC 9112 §3.2): anything else
                // could never match.
                (Some(p), None) | (None, Some(p))
                    if !p.starts_with('/') || !p.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    let key = if r.path.is_some() {
                        "path"
                    } else {
                        "path_prefix"
                    };
                    c.err(
                        format!("{path}.{key}"),
                        format!("{p:?} must start with '/' and hold only visible ASCII (a request target has no other)"),
                    );
                    PathMatch::Any
                }
                (Some(p), None) | (None, Some(p))
                    if routed_path(p, r.path_prefix.is_some()).as_deref() != Some(p) =>
                {
                    let key = if r.path.is_some() {
                        "path"
                    } else {
                        "path_prefix"
                    };
                    let why = match routed_path(p, r.path_prefix.is_some()) {
                        Some(seen) => format!("requests are compared as {seen:?} (escapes of unreserved characters decoded, runs of '/' merged, %2F and %5C read as '/', ';' parameters removed), so {p:?} never matches; write {seen:?}"),
                        None => format!("{p:?} holds a '?', a '#', a byte or escape requests are refused for ('\\', '\"', '<', '>', '`', '{{', '}}', a '%' without two hex digits) or a dot segment, which no routed request path has"),
                    };
                    c.err(format!("{path}.{key}"), why);
                    PathMatch::Any
                }
                (Some(p), None) => PathMatch::Prefix(p.clone()),
                (None, Some(p)) => PathMatch::Exact(p.clone()),
                (None, None) => PathMatch::Any,
            };
            let mut methods = Vec::new();
            for (j, m) in r.methods.take().unwrap_or_default().into_iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                    c.err(
                        format!("{path}.methods[{j}]"),
                        format!("invalid method {m:?}"),
                    );
                }
                methods.push(m.to_ascii_uppercase());
            }
            // HEAD is GET without the body (RFC 9110 §9.3.2; backends run the GET handler):
            // a route for GET takes it too, as nginx's `limit_except GET` does, or a HEAD
            // would fall to a later route without this one's `auth` or limits.
            if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                methods.push("HEAD".into());
            }
            let mut headers = Vec::new();
            for (name, value) in r.headers.take().unwrap_or_default() {
                if !fields::token(&name) {
                    c.err(format!("{path}.headers.{name}"), "invalid header name");
                } else if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                    c.err(
                        format!("{path}.headers.{name}"),
                        format!("{value:?} holds a control character, which no field value the proxy accepts has"),
                    );
                }
                headers.push((name.to_ascii_lowercase(), value));
            }
            let base = file.parent().unwrap_or(Path::new("."));
            let (upstream, respond) =
                response::route_target(&mut c, &path, &mut r, &rules, base, &upstreams, redirects);
            let name = match r.name {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()) => n,
                Some(n) => {
                    c.err(
                        format!("{path}.name"),
                        format!("invalid name {n:?}: use printable ASCII without spaces"),
                    );
                    n
                }
                None => format!("route{i}"),
            };
            if name == LOG_NONE {
                c.err(
                    format!("{path}.name"),
                    format!("{name:?} is reserved: the access log writes route={LOG_NONE} for requests that matched no route; choose another name"),
                );
            } else if name == NO_ROUTE {
                // The metrics' label of requests that matched no route: a route of that name
                // would share its series.
                c.err(
                    format!("{path}.name"),
                    format!("{name:?} is reserved: the metrics label requests that matched no route route=\"{NO_ROUTE}\"; choose another name"),
                );
            } else if !route_names.insert(name.clone()) {
                c.err(
                    format!("{path}.name"),
                    format!("route name {name:?} is used twice (metrics would mix them)"),
                );
            }
            let access = access::access_list(&mut c, &path, r.allow.as_deref(), r.deny.as_deref());
            let rate_limit = ratelimit::rate_limit(
                &mut c,
                &path,
                &format!("route {name}"),
                r.rate_limit.as_ref(),
            );
            let auth = auth::route_auth(&mut c, &path, r.auth, base, &upstreams);
            let forwards = !redirects && respond.is_none();
            let mirror =
                mirror::route_mirror(&mut c, &path, r.mirror, &upstreams, upstream, forwards);
            routes.push(RouteConfig {
                name,
                hosts,
                path: pathm,
                methods,
                headers,
                upstream,
                respond,
                access,
                rate_limit,
                auth,
                rules,
                compress: compress::route_compress(&mut c, &path, r.compress),
                cache: cache::route_cache(&mut c, &path, r.cache.as_ref()),
                max_body_bytes: c.size(
                    &format!("{path}.max_body_bytes"),
                    r.max_body_bytes.as_ref(),
                    limits.max_body_bytes,
                    0,
                    u64::MAX >> 1,
                ),
                access_log: r.access_log.unwrap_or(true),
                error_pages: response::error_pages(
                    &mut c,
                    &format!("{path}.error_pages"),
                    r.error_pages.unwrap_or_default(),
                    base,
                ),
                mirror,
            });
        }
        let rate_limits = table
            .remove("rate_limits")
            .and_then(|v| c.section("rate_limits", v));
        let rate_limits = ratelimit::rate_limits(&mut c, rate_limits);

        if !c.issues.is_empty() {
            return Err(fail(c));
        }
        let warnings = shadow::shadowed_routes(&routes);
        Ok(Config {
            io_engine,
            huge_pages: server.huge_pages.unwrap_or(false),
            shutdown_timeout,
            drain_grace,
            splice,
            congestion,
            user: server.user,
            group: server.group,
            response,
            trusted_proxies,
            listeners,
            routes,
            upstreams,
            timeouts,
            limits,
            admin: observe.admin,
            log: observe.log,
            request_id: observe.request_id,
            dns,
            rate_limits,
            warnings,
        })
    }

    /// The warnings, one line each, named as errors are: `FILE: KEY: warning: ...`.
    pub fn warning_lines(&self, file: &Path) -> Vec<String> {
        if self.warnings.is_empty() {
            return Vec::new();
        }
        let all = ConfigError {
            file: file.to_path_buf(),
            issues: self.warnings.clone(),
        };
        all.to_string().lines().map(str::to_string).collect()
    }
}

/// A valid configuration with one `[[listener]]` per address, in order, and one upstream
/// (for unit tests of what listeners a configuration names).
#[cfg(test)]
pub(crate) fn with_listeners<S: AsRef<str>>(addresses: &[S]) -> Config {
    let mut text: String = addresses
        .iter()
        .map(|a| format!("[[listener]]\naddress = \"{}\"\n", a.as_ref()))
        .collect();
    text.push_str("[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n");
    Config::parse(&text, Path::new("t.toml")).unwrap()
}

#[cfg(test)]
mod tests;
