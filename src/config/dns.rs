//! Config, DNS side: backends written by host name or SRV record ([`NamedBackend`], resolved
//! by [`crate::dns`]) and the `[dns]` table ([`DnsConfig`]).

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{Checker, RawDns};
use super::{valid_host, BackendConfig, Config};

/// A backend written as `HOST:PORT`: resolved off the shards (dns.rs), each address it
/// resolves to becoming one backend with this weight and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedBackend {
    pub host: String,
    /// 0 with `srv` (each SRV record names its port).
    pub port: u16,
    pub weight: u32,
    pub backup: bool,
    /// `{ srv = "_http._tcp.app.internal" }`: `host` is an SRV name.
    pub srv: bool,
}

impl NamedBackend {
    /// What dns.rs resolves: the host name, or `srv:` and the SRV name.
    pub fn key(&self) -> String {
        if self.srv {
            format!("srv:{}", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// `[dns]`: the name servers (`None`: /etc/resolv.conf) and the bounds a record's TTL is
/// clamped to before the name is resolved again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Option<Vec<SocketAddr>>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> DnsConfig {
        DnsConfig {
            servers: None,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
        }
    }
}

/// `HOST:PORT` with a host name (not an IP literal) and a port above 0.
pub(super) fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p > 0)?;
    let is_name = valid_host(host)
        && host.bytes().any(|b| b.is_ascii_alphabetic())
        && host.parse::<std::net::IpAddr>().is_err()
        && !host.starts_with('.')
        && !host.starts_with('-');
    is_name.then(|| (host.trim_end_matches('.').to_ascii_lowercase(), port))
}

pub(super) fn dns_config(c: &mut Checker, raw: RawDns) -> DnsConfig {
    let d = DnsConfig::default();
    let servers = raw.servers.map(|list| {
        if list.is_empty() {
            c.err(
                "dns.servers",
                "at least one server, or leave the key out (/etc/resolv.conf)",
            );
        }
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let key = format!("dns.servers[{i}]");
                c.address(&key, s).and_then(|a| c.connectable(&key, a))
            })
            .collect()
    });
    let min_ttl = c.duration("dns.min_ttl", raw.min_ttl.as_ref(), d.min_ttl);
    let max_ttl = c.duration("dns.max_ttl", raw.max_ttl.as_ref(), d.max_ttl);
    if min_ttl > max_ttl {
        c.err(
            "dns.min_ttl",
            format!("{min_ttl:?} is above dns.max_ttl ({max_ttl:?})"),
        );
    }
    DnsConfig {
        servers,
        min_ttl,
        max_ttl,
    }
}

impl super::Config {
    /// Every host name (and `srv:` SRV name, see [`NamedBackend::key`]) a backend is written
    /// with.
    pub fn host_names(&self) -> std::collections::BTreeSet<String> {
        self.upstreams
            .iter()
            .flat_map(|u| u.names.iter().map(NamedBackend::key))
            .collect()
    }

    /// Where the backend name `key` ([`NamedBackend::key`]) is written: `upstream[I] (NAME): `,
    /// for an error's start; empty if no upstream names it.
    pub fn where_named(&self, key: &str) -> String {
        self.upstreams
            .iter()
            .enumerate()
            .find(|(_, u)| u.names.iter().any(|n| n.key() == key))
            .map(|(i, u)| format!("upstream[{i}] ({}): ", u.name))
            .unwrap_or_default()
    }

    /// This configuration with each named backend replaced by the addresses `answer` gives
    /// for its [`NamedBackend::key`] (sorted, so every resolution of the same set builds the same ring; an
    /// address already in the upstream is not added twice; a name without an answer adds
    /// nothing).
    pub fn with_resolved(&self, answer: impl Fn(&str) -> Option<Vec<SocketAddr>>) -> Config {
        let mut c = self.clone();
        for u in &mut c.upstreams {
            for n in &u.names {
                // A name's answers carry port 0 (the port is the file's); an SRV name's carry
                // the records' ports.
                let mut found: Vec<SocketAddr> = answer(&n.key())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| {
                        if n.srv {
                            a
                        } else {
                            SocketAddr::new(a.ip(), n.port)
                        }
                    })
                    .collect();
                found.sort();
                for address in found {
                    if u.backends.iter().all(|b| b.address != address) {
                        u.backends.push(BackendConfig {
                            address,
                            weight: n.weight,
                            backup: n.backup,
                        });
                    }
                }
            }
        }
        c
    }
}
