//! Stage 3 of the pipeline, *route*: an immutable table built once from the configuration and
//! shared read-only by every shard. Lookup is most-specific first: exact host, then wildcard
//! hosts from the longest suffix, then any host; within a host bucket, exact paths and longer
//! prefixes first, then declaration order. Hosts are hashed and each bucket's paths indexed
//! ([`Bucket`]), so a lookup does not grow with the number of hosts or paths (routes that
//! share one path, told apart by methods or headers, are tried in order); it allocates
//! nothing.

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
    /// The route's conditions besides host and path (which its bucket has matched).
    fn allows<'a>(&self, method: &[u8], header: &impl Fn(&[u8]) -> Option<&'a [u8]>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| &**m == method))
            && self
                .headers
                .iter()
                .all(|rule| header(&rule.name) == Some(&*rule.value))
    }
}

/// The routes of one host bucket (an exact host, a wildcard suffix, or any host), indexed by
/// path so that a lookup costs the same with 10 routes as with 10,000.
///
/// Precedence is that of a scan of the bucket sorted by (longest path first, `path` before
/// `path_prefix` of the same length, declaration order): an exact path can only match a
/// request of its own length, so exact matches come first; then every prefix of the request
/// path that is a route's `path_prefix`, longest first; a route without a path is the
/// prefix `""`, the shortest.
#[derive(Debug, Default)]
struct Bucket {
    /// `path = "..."` routes by path, each list in declaration order.
    exact: FxHashMap<Box<[u8]>, Box<[u32]>>,
    /// Distinct `path_prefix` values (and `""`), sorted bytewise.
    prefixes: Vec<Prefix>,
}

#[derive(Debug)]
struct Prefix {
    path: Box<[u8]>,
    /// Routes with this prefix, in declaration order.
    ids: Box<[u32]>,
    /// The longest other entry that is a prefix of this one (`NO_PARENT`: none).
    parent: u32,
}

const NO_PARENT: u32 = u32::MAX;

impl Bucket {
    fn build(routes: &[Route], ids: &[u32]) -> Bucket {
        let mut exact: FxHashMap<Box<[u8]>, Vec<u32>> = FxHashMap::default();
        let mut prefixes: std::collections::BTreeMap<&[u8], Vec<u32>> = Default::default();
        for &id in ids {
            match &routes[id as usize].path {
                PathMatch::Exact(p) => exact.entry(p.as_bytes().into()).or_default().push(id),
                PathMatch::Prefix(p) => prefixes.entry(p.as_bytes()).or_default().push(id),
                PathMatch::Any => prefixes.entry(b"").or_default().push(id),
            }
        }
        let by_index = |mut ids: Vec<u32>| {
            ids.sort_by_key(|&id| routes[id as usize].index);
            ids.into_boxed_slice()
        };
        // Sorted, every entry comes after its prefixes, and the entries that extend one are
        // contiguous after it: a stack of the current chain of prefixes finds each parent.
        let mut chain: Vec<u32> = Vec::new();
        let mut list: Vec<Prefix> = Vec::with_capacity(prefixes.len());
        for (path, ids) in prefixes {
            while let Some(&top) = chain.last() {
                if path.starts_with(&list[top as usize].path) {
                    break;
                }
                chain.pop();
            }
            let at = list.len() as u32;
            list.push(Prefix {
                path: path.into(),
                ids: by_index(ids),
                parent: chain.last().copied().unwrap_or(NO_PARENT),
            });
            chain.push(at);
        }
        Bucket {
            exact: exact
                .into_iter()
                .map(|(p, ids)| (p, by_index(ids)))
                .collect(),
            prefixes: list,
        }
    }

    /// The first route of this bucket that matches, in the order described on [`Bucket`].
    fn first<'r>(
        &self,
        routes: &'r [Route],
        path: &[u8],
        ok: &impl Fn(&Route) -> bool,
    ) -> Option<&'r Route> {
        let first = |ids: &[u32]| ids.iter().map(|&id| &routes[id as usize]).find(|r| ok(r));
        if !self.exact.is_empty() {
            if let Some(r) = self.exact.get(path).and_then(|ids| first(ids)) {
                return Some(r);
            }
        }
        // The greatest entry not after the path. Every entry that is a prefix of the path
        // sorts between that prefix and the path, so it is this entry or one of its
        // ancestors: walk up, longest first.
        let mut at = match self.prefixes.partition_point(|p| not_after(&p.path, path)) {
            0 => return None,
            n => n as u32 - 1,
        };
        while at != NO_PARENT {
            let p = &self.prefixes[at as usize];
            if is_prefix(&p.path, path) {
                if let Some(r) = first(&p.ids) {
                    return Some(r);
                }
            }
            at = p.parent;
        }
        None
    }
}

// The two comparisons of the walk, as loops. The slices' own comparisons call `memcmp`, and
// glibc's AVX-512 `memcmp` given the empty prefix (an empty `Box<[u8]>` points at the dangling
// address 1) costs ~40 ns a call on this VM's Xeon, against ~3 ns for a real address: the
// masked load of an unmapped page takes a microcode assist. Measured with `bench/engine.rs`
// (`route_lookup`: 129 ns a lookup with `memcmp`, 32 ns with these loops).

/// `a <= b`, bytewise.
fn not_after(a: &[u8], b: &[u8]) -> bool {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x < y;
        }
    }
    a.len() <= b.len()
}

/// `b.starts_with(a)`.
fn is_prefix(a: &[u8], b: &[u8]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: FxHashMap<Box<[u8]>, Bucket>,
    /// Keys are suffixes with their leading dot: `.example.com`.
    suffix: FxHashMap<Box<[u8]>, Bucket>,
    any: Bucket,
    /// Longest wildcard suffix, to skip pointless probes.
    max_suffix_len: usize,
}

/// Longest host the table will look up; longer names only match host-less routes.
const MAX_HOST: usize = 255;

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut exact: FxHashMap<Box<[u8]>, Vec<u32>> = FxHashMap::default();
        let mut suffix: FxHashMap<Box<[u8]>, Vec<u32>> = FxHashMap::default();
        let mut any = Vec::new();
        let mut max_suffix_len = 0;
        for (index, r) in config.routes.iter().enumerate() {
            let id = routes.len() as u32;
            routes.push(Route {
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
                any.push(id);
            }
            // A route with several hosts sits in each one's bucket.
            for host in &r.hosts {
                match host {
                    HostMatch::Any => any.push(id),
                    HostMatch::Exact(h) => exact.entry(h.as_bytes().into()).or_default().push(id),
                    HostMatch::Suffix(s) => {
                        max_suffix_len = max_suffix_len.max(s.len());
                        suffix.entry(s.as_bytes().into()).or_default().push(id)
                    }
                }
            }
        }
        let bucket = |(key, ids): (Box<[u8]>, Vec<u32>)| (key, Bucket::build(&routes, &ids));
        RouteTable {
            exact: exact.into_iter().map(bucket).collect(),
            suffix: suffix.into_iter().map(bucket).collect(),
            any: Bucket::build(&routes, &any),
            max_suffix_len,
            routes,
        }
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
        let ok = |r: &Route| r.allows(method, &header);
        let routes = &self.routes[..];
        if let Some(host) = host {
            if let Some(r) = self
                .exact
                .get(host)
                .and_then(|b| b.first(routes, path, &ok))
            {
                return Some(r);
            }
            if !self.suffix.is_empty() {
                // Longest suffix first: for a.b.example.com try .b.example.com, .example.com, .com
                for (i, _) in host.iter().enumerate().filter(|(_, &b)| b == b'.') {
                    let suffix = &host[i..];
                    if suffix.len() > self.max_suffix_len {
                        continue;
                    }
                    if let Some(r) = self
                        .suffix
                        .get(suffix)
                        .and_then(|b| b.first(routes, path, &ok))
                    {
                        return Some(r);
                    }
                }
            }
        }
        self.any.first(routes, path, &ok)
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
#[path = "route_tests.rs"]
mod tests;
