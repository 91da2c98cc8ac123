//! Stage 3 of the pipeline, *route*: an immutable table built once from the configuration and
//! shared read-only by every shard. Lookup is most-specific first: exact host, then wildcard
//! hosts from the longest suffix, then any host; within a host bucket, exact paths and longer
//! prefixes first, then declaration order. A lookup allocates nothing.

use rustc_hash::FxHashMap;

use crate::config::{Config, HostMatch, PathMatch};

/// A required request header: lower-case name and exact value.
#[derive(Debug)]
struct HeaderRule {
    name: Box<[u8]>,
    value: Box<[u8]>,
}

#[derive(Debug)]
pub struct Route {
    path: PathMatch,
    methods: Vec<Box<[u8]>>,
    headers: Vec<HeaderRule>,
    /// Index into the configured upstreams.
    pub upstream: usize,
    /// Position in the configuration, for logs and metrics.
    pub index: usize,
}

impl Route {
    fn matches<'a>(
        &self,
        path: &[u8],
        method: &[u8],
        header: &impl Fn(&[u8]) -> Option<&'a [u8]>,
    ) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p.as_bytes()),
            PathMatch::Exact(p) => path == p.as_bytes(),
        };
        path_ok
            && (self.methods.is_empty() || self.methods.iter().any(|m| &**m == method))
            && self
                .headers
                .iter()
                .all(|rule| header(&rule.name) == Some(&*rule.value))
    }
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: FxHashMap<Box<[u8]>, Vec<u32>>,
    /// Keys are suffixes with their leading dot: `.example.com`.
    suffix: FxHashMap<Box<[u8]>, Vec<u32>>,
    any: Vec<u32>,
    /// Longest wildcard suffix, to skip pointless probes.
    max_suffix_len: usize,
}

/// Longest host the table will look up; longer names only match host-less routes.
const MAX_HOST: usize = 255;

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let mut t = RouteTable::default();
        for (index, r) in config.routes.iter().enumerate() {
            let id = t.routes.len() as u32;
            t.routes.push(Route {
                path: r.path.clone(),
                methods: r.methods.iter().map(|m| m.as_bytes().into()).collect(),
                headers: r
                    .headers
                    .iter()
                    .map(|(n, v)| HeaderRule {
                        name: n.as_bytes().into(),
                        value: v.as_bytes().into(),
                    })
                    .collect(),
                upstream: r.upstream,
                index,
            });
            match &r.host {
                HostMatch::Any => t.any.push(id),
                HostMatch::Exact(h) => t.exact.entry(h.as_bytes().into()).or_default().push(id),
                HostMatch::Suffix(s) => {
                    t.max_suffix_len = t.max_suffix_len.max(s.len());
                    t.suffix.entry(s.as_bytes().into()).or_default().push(id)
                }
            }
        }
        let routes = &t.routes;
        let order = |ids: &mut Vec<u32>| {
            ids.sort_by_key(|&id| {
                let r = &routes[id as usize];
                let (len, exact) = match &r.path {
                    PathMatch::Any => (0, false),
                    PathMatch::Prefix(p) => (p.len(), false),
                    PathMatch::Exact(p) => (p.len(), true),
                };
                (std::cmp::Reverse(len), !exact, r.index)
            })
        };
        for ids in t.exact.values_mut() {
            order(ids);
        }
        for ids in t.suffix.values_mut() {
            order(ids);
        }
        order(&mut t.any);
        t
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Finds the route for a request. `host` is the raw Host value (any case, maybe with a
    /// port), `path` the target without the query, `header` looks up a request header by
    /// lower-case name.
    pub fn find<'a>(
        &self,
        host: &[u8],
        path: &[u8],
        method: &[u8],
        header: impl Fn(&[u8]) -> Option<&'a [u8]>,
    ) -> Option<&Route> {
        let mut lower = [0u8; MAX_HOST];
        let host = normalize_host(host, &mut lower);
        let first = |ids: &[u32]| {
            ids.iter()
                .map(|&id| &self.routes[id as usize])
                .find(|r| r.matches(path, method, &header))
        };
        if let Some(host) = host {
            if let Some(r) = self.exact.get(host).and_then(|ids| first(ids)) {
                return Some(r);
            }
            if !self.suffix.is_empty() {
                // Longest suffix first: for a.b.example.com try .b.example.com, .example.com, .com
                for (i, _) in host.iter().enumerate().filter(|(_, &b)| b == b'.') {
                    let suffix = &host[i..];
                    if suffix.len() > self.max_suffix_len {
                        continue;
                    }
                    if let Some(r) = self.suffix.get(suffix).and_then(|ids| first(ids)) {
                        return Some(r);
                    }
                }
            }
        }
        first(&self.any)
    }
}

/// Lower-cases the host into `out` and strips a port; `None` when it cannot be a name we route.
fn normalize_host<'a>(host: &[u8], out: &'a mut [u8; MAX_HOST]) -> Option<&'a [u8]> {
    let host = if host.first() == Some(&b'[') {
        // IPv6 literal: keep up to the closing bracket.
        let end = host.iter().position(|&b| b == b']')?;
        &host[..=end]
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) => &host[..i],
            None => host,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST {
        return None;
    }
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    Some(&out[..host.len()])
}

/// What a routable request must look like (checked before lookup; `400` otherwise).
/// RFC 9110 §7.2 / RFC 3986 authority: reg-name, IP literal and port characters only; no
/// userinfo. An empty Host is allowed (HTTP/1.0, or `Host:` with no value).
pub fn valid_authority(host: &[u8]) -> bool {
    host.iter().all(|&b| AUTHORITY_BYTES[usize::from(b)])
}

/// The bytes [`valid_authority`] allows, as a table: searching the punctuation list for each
/// byte cost ~20 instructions per byte of every request's Host (callgrind).
static AUTHORITY_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let punct = b"-._~!$&'()*+,;=%:[]";
    let mut i = 0;
    while i < punct.len() {
        t[punct[i] as usize] = true;
        i += 1;
    }
    t
};

/// A `.` or `..` path segment, plain or percent-encoded: a backend that normalises it would
/// serve a path the route table never matched.
pub fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|seg| {
        seg.len() <= 6
            && matches!(
                &seg.to_ascii_lowercase()[..],
                b"." | b".." | b"%2e" | b"%2e%2e" | b".%2e" | b"%2e."
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(routes: &str) -> RouteTable {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n{routes}\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        RouteTable::new(&Config::parse(&text, Path::new("t.toml")).unwrap())
    }

    fn find(
        t: &RouteTable,
        host: &str,
        path: &str,
        method: &str,
        hdr: Option<(&str, &str)>,
    ) -> Option<usize> {
        t.find(host.as_bytes(), path.as_bytes(), method.as_bytes(), |n| {
            hdr.filter(|(hn, _)| hn.as_bytes() == n)
                .map(|(_, v)| v.as_bytes())
        })
        .map(|r| r.index)
    }

    #[test]
    fn most_specific_first() {
        let t = table(
            r#"
[[route]]
upstream = "u"
[[route]]
host = "*.example.com"
upstream = "u"
[[route]]
host = "api.example.com"
path_prefix = "/v1/"
upstream = "u"
[[route]]
host = "api.example.com"
path_prefix = "/v1/admin/"
upstream = "u"
[[route]]
host = "api.example.com"
path = "/v1/exact"
upstream = "u"
[[route]]
host = "api.example.com"
methods = ["POST"]
upstream = "u"
[[route]]
host = "*.b.example.com"
headers = { "x-canary" = "1" }
upstream = "u"
"#,
        );
        assert_eq!(
            find(&t, "API.example.com:8080", "/v1/x", "GET", None),
            Some(2)
        );
        assert_eq!(
            find(&t, "api.example.com", "/v1/admin/x", "GET", None),
            Some(3)
        );
        assert_eq!(
            find(&t, "api.example.com", "/v1/exact", "GET", None),
            Some(4)
        );
        assert_eq!(find(&t, "api.example.com", "/other", "POST", None), Some(5));
        assert_eq!(find(&t, "api.example.com", "/other", "GET", None), Some(1));
        assert_eq!(
            find(&t, "x.b.example.com", "/", "GET", Some(("x-canary", "1"))),
            Some(6)
        );
        assert_eq!(
            find(&t, "x.b.example.com", "/", "GET", Some(("x-canary", "2"))),
            Some(1)
        );
        assert_eq!(find(&t, "example.com", "/", "GET", None), Some(0));
        assert_eq!(find(&t, "[::1]:80", "/", "GET", None), Some(0));
    }

    #[test]
    fn no_route_is_none() {
        let t = table("[[route]]\nhost = \"a.com\"\nupstream = \"u\"\n");
        assert_eq!(find(&t, "b.com", "/", "GET", None), None);
        assert_eq!(find(&t, "a.com.", "/", "GET", None), Some(0));
        let long = "a".repeat(300);
        assert_eq!(find(&t, &long, "/", "GET", None), None);
    }

    #[test]
    fn authorities() {
        for ok in [
            &b"example.com"[..],
            b"a.example:8080",
            b"[::1]:80",
            b"",
            b"xn--bcher-kva.example",
        ] {
            assert!(valid_authority(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [&b"a b"[..], b"user@host", b"a/b", b"a\\b", b"h\"q"] {
            assert!(!valid_authority(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// The table allows exactly RFC 3986's authority characters: every byte value.
    #[test]
    fn authority_table_is_the_character_list() {
        for b in 0..=255u8 {
            let listed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b);
            assert_eq!(valid_authority(&[b]), listed, "byte {b:#04x}");
        }
    }

    #[test]
    fn dot_segments() {
        for bad in [
            &b"/api/../admin"[..],
            b"/..",
            b"/a/./b",
            b"/a/%2E%2e/b",
            b"/a/.%2e",
            b"/.",
        ] {
            assert!(has_dot_segment(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        for ok in [
            &b"/"[..],
            b"/a/b.c",
            b"/.well-known/x",
            b"/a..b/",
            b"/...",
            b"*",
        ] {
            assert!(!has_dot_segment(ok), "{:?}", String::from_utf8_lossy(ok));
        }
    }
}
