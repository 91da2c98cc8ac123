//! Stage 3 of the pipeline, *route*: an immutable table built once from the configuration and
//! shared read-only by every shard. Lookup is most-specific first: exact host, then wildcard
//! hosts from the longest suffix, then any host; within a host bucket, exact paths and longer
//! prefixes first, then declaration order. A lookup allocates nothing.

use std::borrow::Cow;

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
    /// Index into the configured upstreams (`None`: the route answers itself).
    pub upstream: Option<usize>,
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
            if r.hosts.is_empty() {
                t.any.push(id);
            }
            // A route with several hosts sits in each one's bucket.
            for host in &r.hosts {
                match host {
                    HostMatch::Any => t.any.push(id),
                    HostMatch::Exact(h) => t.exact.entry(h.as_bytes().into()).or_default().push(id),
                    HostMatch::Suffix(s) => {
                        t.max_suffix_len = t.max_suffix_len.max(s.len());
                        t.suffix.entry(s.as_bytes().into()).or_default().push(id)
                    }
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

/// What a request is routed by: its host (the absolute-form authority, else `Host`, else
/// empty) and its path (the target up to `?`, [`normalize_path`]ed); `None` when the request
/// may not be routed (`400`): a host outside [`valid_authority`] or a path with a
/// [`has_dot_segment`].
pub fn routing_input<'b>(
    target: &crate::http::encode::Target<'b>,
    host_field: Option<&'b [u8]>,
) -> Option<(&'b [u8], Cow<'b, [u8]>)> {
    let host = target.authority.or(host_field).unwrap_or(b"");
    // RFC 9112 §3.2: a Host with an invalid value is refused whatever the target's form,
    // though behind an absolute-form target it routes nothing (in origin form it is `host`,
    // checked below).
    let host_field_ok = target.authority.is_none() || host_field.is_none_or(valid_authority);
    let raw = target
        .path
        .split(|&b| b == b'?')
        .next()
        .unwrap_or(target.path);
    let path = normalize_path(raw);
    let routable = valid_authority(host)
        && host_field_ok
        && !has_dot_segment(&path)
        && !param_hides_separator(&path);
    routable.then_some((host, path))
}

/// A `;` path parameter holding an encoded slash or backslash (`/;%2Fx/admin/`): Tomcat and
/// Jetty drop the parameter, escape and all, before decoding (`//admin/`), a decoding backend
/// reads the escape as `/` (`/;/x/admin/`), and no one comparison stands for both, so such a
/// path is refused (`400`), as a dot segment is.
fn param_hides_separator(path: &[u8]) -> bool {
    path.contains(&b';')
        && path.split(|&b| b == b'/').any(|seg| {
            seg.iter()
                .position(|&b| b == b';')
                .is_some_and(|i| seg[i..].windows(3).any(encoded_separator))
        })
}

/// The path routes are matched on: percent-encoded unreserved characters decoded (RFC 3986
/// §6.2.2.2: `/%61dmin` is `/admin`) and runs of `/` merged into one (as nginx's
/// `merge_slashes`), so that `/%61dmin/x` and `//admin/x` meet the rules of the `/admin/`
/// route that a decoding or slash-merging backend will serve them from, not a catch-all's.
/// Other escapes (`%2F`, `%25`, ...) stay as they are: decoding them would change the path.
/// Borrowed, and free, for the usual path that has neither `%` nor `//`.
pub fn normalize_path(path: &[u8]) -> Cow<'_, [u8]> {
    let needs = path
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || (b == b'/' && path.get(i + 1) == Some(&b'/')));
    if !needs {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        let decoded = (b == b'%')
            .then(|| Some(hex(*path.get(i + 1)?)? << 4 | hex(*path.get(i + 2)?)?))
            .flatten()
            .filter(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'));
        match decoded {
            Some(c) => {
                out.push(c);
                i += 3;
            }
            None => {
                if !(b == b'/' && out.last() == Some(&b'/')) {
                    out.push(b);
                }
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// The path routes are compared with: the [`normalize_path`]ed one with each encoded slash
/// or backslash ([`encoded_separator`]) read as `/` (slashes merged again), and each
/// segment's `;` parameters removed. gunicorn and uWSGI put the decoded path in `PATH_INFO`,
/// and Gin and Go's older `ServeMux` route on it: to them `/admin%2Fx` is `/admin/x`, so it
/// meets the `/admin/` route's rules; IIS and ASP.NET read a decoded `\` as `/`; Tomcat,
/// Jetty and Spring serve `/admin;x/y` as `/admin/y`. Only the comparison: what is forwarded,
/// and what a route's rewrite works on, keeps the escapes and the parameters.
pub fn match_path(normalized: &[u8]) -> Cow<'_, [u8]> {
    let slash = encoded_separator;
    let params = normalized.contains(&b';');
    if !params && (!normalized.contains(&b'%') || !normalized.windows(3).any(slash)) {
        return Cow::Borrowed(normalized);
    }
    let mut out = Vec::with_capacity(normalized.len());
    let mut i = 0;
    let mut in_params = false;
    while i < normalized.len() {
        let raw = normalized[i];
        let (b, step) = match normalized.get(i..i + 3) {
            Some(w) if slash(w) => (b'/', 3),
            _ => (raw, 1),
        };
        i += step;
        // A parameter runs to the next literal `/`, as Tomcat reads it (one holding an
        // encoded one is refused before: [`param_hides_separator`]).
        in_params = raw == b';' || (in_params && raw != b'/');
        let doubled = b == b'/' && out.last() == Some(&b'/');
        if !in_params && !doubled {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// The path a configured `path` or `path_prefix` (`prefix`) of `p` is compared as: requests'
/// paths go through [`normalize_path`] and [`match_path`], so a route written any other way
/// (`/%7Eb/`, `//x/`, `/a;b`) would never match one. `None` for a path that no routed request
/// has: one with a query or fragment mark, a byte or broken escape requests are refused for
/// (`\`, `"<>`{}`, `%zz`: [`crate::http::parse`]'s `uri_bytes`), or a dot segment (refused
/// with `400`); a prefix's
/// last, unfinished segment is no segment yet (`path_prefix = "/."` matches `/.env`).
pub fn routed_path(p: &str, prefix: bool) -> Option<String> {
    let whole = match p.rfind('/') {
        Some(i) if prefix => &p[..=i],
        _ => p,
    };
    let refused = !crate::http::parse::uri_bytes(p.as_bytes());
    if refused || p.contains(['?', '#']) || has_dot_segment(whole.as_bytes()) {
        return None;
    }
    let seen = match_path(&normalize_path(p.as_bytes())).into_owned();
    String::from_utf8(seen).ok()
}

/// `%XX` decoded (and `+` kept as is); None for a bad escape: the admin API's query
/// strings and the userinfo of `rate_limits.store`.
pub(crate) fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits, nothing else (`from_str_radix` also took a sign: `%+f`).
            let digit = |at: usize| hex(*b.get(at)?);
            out.push(digit(i + 1)? << 4 | digit(i + 2)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// One hex digit's value (`%XX` escapes: here and in the admin API's query strings).
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What a routable request must look like (checked before lookup; `400` otherwise).
/// RFC 9110 §7.2 / RFC 3986 authority: reg-name, IP literal and port characters only; no
/// userinfo. An empty Host is allowed (HTTP/1.0, or `Host:` with no value).
pub fn valid_authority(host: &[u8]) -> bool {
    if !host.iter().all(|&b| AUTHORITY_BYTES[usize::from(b)]) {
        return false;
    }
    // Its shape: `name[:port]` or `[v6][:port]`, a port of digits only. `a.example:80:81` is
    // refused: routes cut a port at the last `:` (seeing `a.example:80`), nginx at the first
    // (seeing `a.example`), and the two would pick different virtual hosts.
    let (name, port) = if let Some(rest) = host.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &rest[..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (&b""[..], &rest[end + 1..])
    } else {
        match host.iter().position(|&b| b == b':') {
            Some(i) => (&host[..i], &host[i..]),
            None => (host, &b""[..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    // A name of labels: no empty one (`a..b`, `.a`; one trailing dot is the root's and is
    // dropped at lookup), and no escape (`app.exampl%65`, which no DNS name has and a WHATWG
    // URL parser decodes to the `app.example` the routes would have matched), as nginx
    // refuses them.
    let labels_ok = name.first() != Some(&b'.')
        && !name.windows(2).any(|w| w == b"..")
        && !name.contains(&b'%');
    port_ok && labels_ok && !name.contains(&b'[') && !name.contains(&b']')
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

/// A `.` or `..` path segment, plain or percent-encoded, between plain or encoded slashes or
/// encoded backslashes (`/a/%2e%2e/b`, `/a%2F..%2Fb`, `/a/..%5Cb`), or with path parameters after it (`/public/..;/admin`,
/// which Tomcat and Jetty resolve as `..`): a backend that decodes and normalises it would
/// serve a path the route table never matched.
pub fn has_dot_segment(path: &[u8]) -> bool {
    const DOTS: [&[u8]; 6] = [b".", b"..", b"%2e", b"%2e%2e", b".%2e", b"%2e."];
    let dots = |seg: &[u8]| {
        let seg = seg.split(|&b| b == b';').next().unwrap_or(seg);
        // Compared in place: lower-casing a copy allocated for every short segment.
        matches!(seg.first(), Some(b'.' | b'%'))
            && seg.len() <= 6
            && DOTS.iter().any(|d| seg.eq_ignore_ascii_case(d))
    };
    let escapes = path.contains(&b'%');
    path.split(|&b| b == b'/')
        .any(|seg| dots(seg) || (escapes && seg.len() > 3 && encoded_slash_pieces(seg).any(dots)))
}

/// `%2F` or `%5C` (any case): an escape that a decoding backend reads as a path separator.
fn encoded_separator(w: &[u8]) -> bool {
    w.len() >= 3 && w[0] == b'%' && matches!((w[1], w[2] | 0x20), (b'2', b'f') | (b'5', b'c'))
}

/// The pieces of a segment between its encoded separators ([`encoded_separator`]).
fn encoded_slash_pieces(seg: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(seg);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.windows(3).position(encoded_separator) {
            Some(i) => {
                rest = Some(&s[i + 3..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
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
            b"a.example:",
            b"[::ffff:127.0.0.1]",
            b"127.0.0.1:8080",
            b"a.example.",
            b"a.example.:80",
        ] {
            assert!(valid_authority(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"a b"[..],
            b"user@host",
            b"a/b",
            b"a\\b",
            b"h\"q",
            b"secret.example:80:81",
            b"secret.example:1:",
            b"a.example:8o",
            b"[::1",
            b"[]:80",
            b"[::1]x",
            b"[::1]:80:1",
            b"a[::1]",
            b"[g::1]",
            // Empty labels and escapes, which would miss the routes of the name they spell.
            b"app.exampl%65",
            b"app.example..",
            b".app.example",
            b"a..example:80",
        ] {
            assert!(!valid_authority(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// The table allows exactly RFC 3986's authority characters: every byte value.
    #[test]
    fn authority_table_is_the_character_list() {
        for b in 0..=255u8 {
            let listed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b);
            assert_eq!(AUTHORITY_BYTES[usize::from(b)], listed, "byte {b:#04x}");
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
            b"/a%2F..%2Fadmin",
            b"/a%2f%2e%2e%2fadmin",
            b"/a/..%2Fb",
            b"/a%2F.",
            b"/public/..;/admin",
            b"/a/.;x/b",
            b"/a/%2e%2e;jsessionid=1/b",
            b"/x/..%5Cadmin",
            b"/x%5C..%5Cadmin",
            b"/x/%2e%2e%5cadmin",
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
            b"/group%2Fproject",
            b"/a%2F...%2Fb",
            b"/%2F",
            b"/a;b/c",
            b"/a/..b;c",
            b"/a/;../b",
            b"/a%5Cb",
            b"/a..%5Cb",
        ] {
            assert!(!has_dot_segment(ok), "{:?}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn paths_are_matched_with_unreserved_escapes_decoded_and_slashes_merged() {
        for (raw, want) in [
            (&b"/%61dmin/x"[..], &b"/admin/x"[..]),
            (b"//admin///x", b"/admin/x"),
            (b"/%41%7e%2D%2e%5f", b"/A~-._"),
            // Reserved or other escapes stay: decoding them would change the path.
            (b"/a%2Fb%2f%25%3F%20", b"/a%2Fb%2f%25%3F%20"),
            // Decoded once only; broken escapes stay as they are.
            (b"/%2561dmin", b"/%2561dmin"),
            (b"/%6", b"/%6"),
            (b"/%zz/%", b"/%zz/%"),
            (b"/a%2F/%2F/b", b"/a%2F/%2F/b"),
        ] {
            assert_eq!(
                &normalize_path(raw)[..],
                want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // The usual path is not copied.
        assert!(matches!(normalize_path(b"/a/b.c"), Cow::Borrowed(_)));
        let t = table(
            "[[route]]\npath_prefix = \"/admin/\"\nupstream = \"u\"\n[[route]]\nupstream = \"u\"\n",
        );
        for raw in [
            "/%61dmin/x",
            "//admin/x",
            "/admin//x",
            "/%61%64%6d%69%6e/",
            "/admin%2Fx",
            "/admin%2f%2F/x",
            "%2Fadmin/x",
        ] {
            let path = normalize_path(raw.as_bytes());
            let got = t
                .find(b"a", &match_path(&path), b"GET", |_| None)
                .map(|r| r.index);
            assert_eq!(got, Some(0), "{raw}");
        }
        // Path parameters, as Tomcat, Jetty and Spring strip them: the `/admin/` route's.
        for raw in ["/admin;x/y", "/admin;/y", "/admin;a=b;c/"] {
            let path = normalize_path(raw.as_bytes());
            let got = t
                .find(b"a", &match_path(&path), b"GET", |_| None)
                .map(|r| r.index);
            assert_eq!(got, Some(0), "{raw}");
        }
        assert_eq!(&match_path(b"/admin;")[..], b"/admin");
        // A parameter runs to the next literal `/`, escapes and all (Tomcat's reading).
        assert_eq!(&match_path(b"/admin;x%2Fy/z")[..], b"/admin/z");
        // ... and one that holds an encoded separator is refused: Tomcat drops it, a
        // decoding backend reads a `/` in it.
        for refused in ["/;%2Fx/admin/secret", "/api/;%5Cx/admin/k", "/a;b%2f"] {
            assert!(param_hides_separator(refused.as_bytes()), "{refused}");
        }
        for fine in ["/a%2Fb;c/d", "/a;b/%2Fc", "/a;b"] {
            assert!(!param_hides_separator(fine.as_bytes()), "{fine}");
        }
        assert_eq!(&match_path(b"/a;x/b;y/c")[..], b"/a/b/c");
        assert!(matches!(match_path(b"/a/b%20c"), Cow::Borrowed(_)));
        assert_eq!(&match_path(b"/g%2Fp%2F/x")[..], b"/g/p/x");
        assert_eq!(&match_path(b"/admin%5Cx%5c%2f/y")[..], b"/admin/x/y");
    }
}
