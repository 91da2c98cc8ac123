//! Before the pipeline starts: the `[[upstream]]` tables validated into
//! [`UpstreamConfig`]s, each backend an IP address or a name the resolver follows
//! (`dns.rs`), with its balancing, TLS, PROXY protocol, pool and resilience settings.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// The most `buffer_request_body` may hold per request (a shard holds one per connection
/// uploading to such an upstream).
const MAX_BUFFERED_BODY: u64 = 64 << 20;

use super::dns::host_port;
use super::raw::{Checker, RawUpstream};
use super::{
    balancing, resilience, tls, valid_host, BackendConfig, NamedBackend, UpstreamConfig,
    DEFAULT_MAX_IDLE_PER_BACKEND,
};

/// Every `[[upstream]]` (`raw`), each problem recorded with its key path. Relative file
/// names are under `base`, the configuration file's directory.
pub(super) fn upstreams(
    c: &mut Checker,
    raw: Vec<toml::Value>,
    base: &Path,
) -> Vec<UpstreamConfig> {
    let mut upstreams = Vec::new();
    let mut names = HashSet::new();
    for (i, v) in raw.into_iter().enumerate() {
        let path = format!("upstream[{i}]");
        let name = v.get("name").and_then(|n| n.as_str()).map(str::to_owned);
        let Some(u) = c.section::<RawUpstream>(&path, v) else {
            // Routes naming it are told why it is missing ([`Checker::upstream_named`]).
            c.skipped_upstreams.extend(name.map(|n| (n, path)));
            continue;
        };
        if u.name.is_empty() {
            c.err(format!("{path}.name"), "must not be empty");
        } else if !u.name.bytes().all(|b| b.is_ascii_graphic()) {
            c.err(
                format!("{path}.name"),
                format!(
                    "invalid name {:?}: use printable ASCII without spaces (it is a metrics label and a log field)",
                    u.name
                ),
            );
        } else if u.name == super::LOG_NONE {
            c.err(
                format!("{path}.name"),
                format!("{:?} is reserved: the access log writes upstream={} for requests that went to no upstream; choose another name", u.name, super::LOG_NONE),
            );
        } else if !names.insert(u.name.clone()) {
            c.err(
                format!("{path}.name"),
                format!("upstream {:?} is defined twice", u.name),
            );
        }
        let balance = balancing::balancing(
            c,
            &path,
            balancing::RawBalancing {
                balance: u.balance.as_deref(),
                hash_key: u.hash_key.as_deref(),
                bounded_load: u.bounded_load,
                sticky: u.sticky.as_ref(),
            },
        );
        if u.backends.is_empty() {
            c.err(
                format!("{path}.backends"),
                "at least one backend is required",
            );
        }
        let mut backends = Vec::new();
        let mut named = Vec::new();
        // Each backend (address, host name and port, or SRV name) once per upstream: two
        // copies of one address are one backend to the admin API (a drain takes the first
        // only) and to the metrics (duplicate series), and share its counters after a
        // reload. A higher weight sends it more.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut once = |c: &mut Checker, at: String, what: String, j: usize| {
            if let Some(first) = seen.get(&what) {
                let fix = "list it once, with a higher weight to send it more";
                let why =
                    format!("{what} is listed twice in this upstream (also backends[{first}])");
                c.err(at, format!("{why}: {fix}"));
            } else {
                seen.insert(what, j);
            }
        };
        for (j, b) in u.backends.iter().enumerate() {
            let bpath = format!("{path}.backends[{j}]");
            let weight = b.weight.unwrap_or(1);
            if weight == 0 || weight > 10_000 {
                c.err(
                    format!("{bpath}.weight"),
                    format!("{weight} is out of range 1..=10000"),
                );
            }
            let (weight, backup) = (weight.clamp(1, 10_000), b.backup.unwrap_or(false));
            let address = match (&b.address, &b.srv) {
                (Some(_), Some(_)) => {
                    c.err(bpath.clone(), "set either address or srv, not both");
                    continue;
                }
                (None, None) => {
                    c.err(
                        format!("{bpath}.address"),
                        "required (or srv = \"_http._tcp.NAME\")",
                    );
                    continue;
                }
                (None, Some(srv)) => {
                    if valid_host(srv) && srv.starts_with('_') {
                        let host = srv.trim_end_matches('.').to_ascii_lowercase();
                        once(c, format!("{bpath}.srv"), format!("SRV name {host}"), j);
                        named.push(NamedBackend {
                            host,
                            port: 0,
                            weight,
                            backup,
                            srv: true,
                        });
                    } else {
                        c.err(
                            format!("{bpath}.srv"),
                            format!(
                                "invalid SRV name {srv:?}; write e.g. \"_http._tcp.app.internal\""
                            ),
                        );
                    }
                    continue;
                }
                (Some(a), None) => a,
            };
            if let Some((host, port)) = host_port(address) {
                once(c, format!("{bpath}.address"), format!("{host}:{port}"), j);
                named.push(NamedBackend {
                    host,
                    port,
                    weight,
                    backup,
                    srv: false,
                });
            } else if let Some(address) = c
                .backend_address(&format!("{bpath}.address"), address)
                .and_then(|a| c.connectable(&format!("{bpath}.address"), a))
            {
                once(c, format!("{bpath}.address"), address.to_string(), j);
                backends.push(BackendConfig {
                    address,
                    weight,
                    backup,
                });
            }
        }
        let tls = u
            .tls
            .and_then(|t| tls::upstream_tls(c, &format!("{path}.tls"), base, t));
        let proxy_protocol = tls::upstream_proxy_protocol(c, &path, u.proxy_protocol);
        let max_idle_per_backend = c.count(
            &format!("{path}.max_idle_per_backend"),
            u.max_idle_per_backend,
            DEFAULT_MAX_IDLE_PER_BACKEND,
            0,
            1 << 16,
        );
        upstreams.push(UpstreamConfig {
            tls,
            proxy_protocol,
            // A connection that named one client is not lent to another.
            max_idle_per_backend: if proxy_protocol.is_some() {
                0
            } else {
                max_idle_per_backend
            },
            idle_timeout: c.duration(
                &format!("{path}.idle_timeout"),
                u.idle_timeout.as_ref(),
                Duration::from_secs(60),
            ),
            connect_timeout: u.connect_timeout.as_ref().map(|raw| {
                c.duration(
                    &format!("{path}.connect_timeout"),
                    Some(raw),
                    Duration::ZERO,
                )
            }),
            buffer_request_body: c.size(
                &format!("{path}.buffer_request_body"),
                u.buffer_request_body.as_ref(),
                0,
                0,
                MAX_BUFFERED_BODY,
            ),
            response_timeout: u.response_timeout.as_ref().map(|raw| {
                c.duration(
                    &format!("{path}.response_timeout"),
                    Some(raw),
                    Duration::ZERO,
                )
            }),
            resilience: resilience::resilience(
                c,
                &path,
                resilience::RawResilience {
                    health_check: u.health_check.as_ref(),
                    outlier: u.outlier.as_ref(),
                    breaker: u.breaker.as_ref(),
                    retry: u.retry.as_ref(),
                    slow_start: u.slow_start.as_ref(),
                    fail_timeout: u.fail_timeout.as_ref(),
                },
            ),
            name: u.name,
            balance,
            backends,
            names: named,
        });
    }
    upstreams
}
