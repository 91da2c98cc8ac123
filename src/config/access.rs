//! Who may connect and whose forwarding headers are believed: CIDR lists (`IpNet`),
//! `server.trusted_proxies`, and the `allow`/`deny` lists of listeners and routes
//! ([`AccessList`]). Checked at accept (listeners) and after routing (routes) by
//! [`crate::admission`].

use std::net::IpAddr;

use super::raw::Checker;

/// An IP network such as `10.0.0.0/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&n| n <= max)?,
            None => max,
        };
        // An IPv4-mapped network (::ffff:a.b.c.d/n, n >= 96) is the IPv4 network it maps,
        // since clients are matched in their IPv4 form.
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Some(IpNet {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                });
            }
        }
        Some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Whether any network of `list` holds `ip`.
pub fn holds(list: &[IpNet], ip: IpAddr) -> bool {
    list.iter().any(|n| n.contains(ip))
}

/// `allow` and `deny` of a listener or a route. A client is refused when `deny` holds its
/// address, or when `allow` is not empty and does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessList {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl AccessList {
    /// No rule at all: every address is admitted (and nothing needs checking).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn admits(&self, ip: IpAddr) -> bool {
        !holds(&self.deny, ip) && (self.allow.is_empty() || holds(&self.allow, ip))
    }
}

/// A list of networks at `path` (`path[i]` named in errors).
pub(super) fn cidrs(c: &mut Checker, path: &str, raw: Option<&[String]>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, t) in raw.unwrap_or_default().iter().enumerate() {
        match IpNet::parse(t) {
            Some(n) => out.push(n),
            None => c.err(
                format!("{path}[{i}]"),
                format!("invalid network {t:?}; write e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"192.0.2.7\""),
            ),
        }
    }
    out
}

/// `PATH.allow` and `PATH.deny`.
pub(super) fn access_list(
    c: &mut Checker,
    path: &str,
    allow: Option<&[String]>,
    deny: Option<&[String]>,
) -> AccessList {
    AccessList {
        allow: cidrs(c, &format!("{path}.allow"), allow),
        deny: cidrs(c, &format!("{path}.deny"), deny),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| IpNet::parse(s).unwrap()).collect()
    }

    #[test]
    fn networks() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.9.9.9".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        let mapped = IpNet::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("nonsense").is_none());
    }

    #[test]
    fn deny_wins_and_an_allow_list_closes_the_rest() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let open = AccessList::default();
        assert!(open.is_open() && open.admits(ip("192.0.2.1")));
        let l = AccessList {
            allow: nets(&["10.0.0.0/8", "2001:db8::/32"]),
            deny: nets(&["10.6.6.0/24"]),
        };
        assert!(l.admits(ip("10.1.2.3")));
        assert!(!l.admits(ip("10.6.6.7")), "deny is checked first");
        assert!(!l.admits(ip("192.0.2.1")), "not in allow");
        assert!(l.admits(ip("2001:db8::5")));
        assert!(
            l.admits(ip("::ffff:10.1.2.3")),
            "IPv4-mapped clients match IPv4 lists"
        );
        let d = AccessList {
            allow: vec![],
            deny: nets(&["127.0.0.1"]),
        };
        assert!(!d.admits(ip("127.0.0.1")) && d.admits(ip("127.0.0.2")));
    }
}
