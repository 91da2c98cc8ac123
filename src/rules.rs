//! Stage 3 of the pipeline, *route* (its rules): what a chosen route, and the listener,
//! change in a request and its response, compiled by `config/rules.rs`. [`crate::proxy`]
//! answers a route's `redirect` ([`location`]) and a `redirect_https` listener's
//! ([`https_location`]), and rewrites the target ([`rewrite_target`])
//! before encoding; the head encoders ([`crate::http::encode`]) apply header rules
//! ([`Fields`]) while they copy fields. A request on a route without rules meets none of
//! this: every entry point is behind an `Option` that is `None`.

use std::net::IpAddr;

use crate::config::{HeaderRules, Part, PathRewrite, Redirect, RedirectHttps, Template, Var};
use crate::http::canned::Canned;
use crate::http::encode::{split_target, write_ip, SetHeader};
use crate::http::fields::same_field;
use crate::http::parse::RequestHead;
use crate::route::{has_dot_segment, valid_authority};

/// The values of the template variables for one request: the request as the client sent it.
pub struct Vars<'a> {
    pub client_ip: IpAddr,
    pub request_id: &'a [u8],
    /// Empty when the response head is written (response rules cannot name it).
    pub host: &'a [u8],
    pub https: bool,
    /// The path without its query; empty for response rules.
    pub path: &'a [u8],
    /// The query without its `?`; empty when there is none.
    pub query: &'a [u8],
    pub route: &'a str,
}

impl Vars<'_> {
    /// Appends `t` expanded.
    pub fn expand(&self, t: &Template, out: &mut Vec<u8>) {
        for p in t.parts.iter() {
            match p {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Var(v) => match v {
                    Var::ClientIp => write_ip(self.client_ip, out),
                    Var::RequestId => out.extend_from_slice(self.request_id),
                    Var::Host => out.extend_from_slice(self.host),
                    Var::Scheme => {
                        out.extend_from_slice(if self.https { b"https" } else { b"http" })
                    }
                    Var::Path => out.extend_from_slice(self.path),
                    Var::Query => out.extend_from_slice(self.query),
                    Var::Route => out.extend_from_slice(self.route.as_bytes()),
                },
            }
        }
    }
}

/// Splits an origin-form target into path and query (without its `?`).
pub fn path_and_query(target: &[u8]) -> (&[u8], &[u8]) {
    match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, b""),
    }
}

/// The header rules that apply to one head: the listener's, then the route's, as if applied
/// one after the other (a route's `set` or `remove` also replaces what the listener wrote).
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    pub levels: [Option<&'a HeaderRules>; 2],
    pub vars: &'a Vars<'a>,
}

/// Whether `rules` set or remove a field `name`: compared as a CGI or WSGI backend compares
/// names ([`same_field`]), so a client's `X_C` goes with the `X-C` a rule sets, as the proxy's
/// own fields' `_` spellings go.
fn named(rules: Option<&HeaderRules>, name: &[u8]) -> bool {
    rules.is_some_and(|r| r.drop.iter().any(|d| same_field(name, d.as_bytes())))
}

impl<'a> Fields<'a> {
    /// The rules of these levels, or None when neither has any (nothing to do per field).
    pub fn of(
        listener: Option<&'a HeaderRules>,
        route: Option<&'a HeaderRules>,
        vars: &'a Vars<'a>,
    ) -> Option<Fields<'a>> {
        (listener.is_some() || route.is_some()).then_some(Fields {
            levels: [listener, route],
            vars,
        })
    }

    /// Whether an incoming field of this name is dropped (removed or replaced).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.levels.iter().any(|l| named(*l, name))
    }

    /// Writes the rules' fields, except those of a name the proxy sets itself (`own`: the
    /// proxy's fields win) and the listener's that the route drops.
    pub fn write(&self, own: SetHeader<'_>, out: &mut Vec<u8>) {
        for (i, level) in self.levels.iter().enumerate() {
            let Some(rules) = level else { continue };
            for (name, value) in rules.write.iter() {
                let n = name.as_bytes();
                // An empty value of the proxy's own only removes the client's copy (the
                // `Authorization` a Basic route keeps back): a rule may still set it.
                if own
                    .iter()
                    .any(|(o, v)| !v.is_empty() && o.eq_ignore_ascii_case(n))
                    || (i == 0 && named(self.levels[1], n))
                {
                    continue;
                }
                out.extend_from_slice(n);
                out.extend_from_slice(b": ");
                self.vars.expand(value, out);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Why a rewritten target is not sent.
#[derive(Debug, PartialEq, Eq)]
pub enum RewriteError {
    /// The result is not an origin-form path (no leading `/`, a byte a target cannot hold,
    /// a `?` or `#`, a dot-segment), and the rule is at fault: a 500.
    Invalid,
    /// The same, but the request's path carried what made it invalid (its dots: `/api../x`
    /// or `/api%2e%2e/x` stripped of `/api`): a 400.
    InvalidRequest,
    /// Longer than `limits.max_uri_bytes`: a 414.
    TooLong,
}

/// `target` (origin-form path and query) rewritten: `strip_prefix`, then `rewrite`, then
/// `add_prefix` on the path; the query is kept as it was.
pub fn rewrite_target(
    rw: &PathRewrite,
    target: &[u8],
    max: usize,
) -> Result<Vec<u8>, RewriteError> {
    let (mut path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i..])),
        None => (target, None),
    };
    // `http://host?q` has an empty path, which is `/` (RFC 9110 §4.2.3).
    if path.is_empty() {
        path = b"/";
    }
    let mut owned;
    let mut lead = false;
    if let Some(p) = rw.strip.as_deref() {
        if let Some(rest) = path.strip_prefix(p) {
            lead = rest.first() != Some(&b'/');
            path = rest;
        }
    }
    if lead {
        owned = Vec::with_capacity(path.len() + 1);
        owned.push(b'/');
        owned.extend_from_slice(path);
    } else {
        owned = path.to_vec();
    }
    if let Some((re, with)) = &rw.regex {
        if let std::borrow::Cow::Owned(o) = re.replace(&owned, &with[..]) {
            owned = o;
        }
    }
    if let Some(p) = rw.add.as_deref() {
        let mut with = Vec::with_capacity(p.len() + owned.len() + query.map_or(0, <[u8]>::len));
        with.extend_from_slice(p);
        with.extend_from_slice(&owned);
        owned = with;
    }
    // A leading `//` is a host to a backend that reads the target as a URL relative to its
    // own (`new URL()`, `urljoin`): `/rw/-x/admin` through `/$1/$2$3` would reach `x`'s
    // `/admin`. Merged into one `/`, as nginx merges the slashes of a URI it rewrites.
    let extra = owned.iter().take_while(|&&b| b == b'/').count();
    if extra > 1 {
        owned.drain(..extra - 1);
    }
    let shaped = owned.first() == Some(&b'/')
        && owned
            .iter()
            // Bytes above 0x7e pass as they do on a route without rewrites (the parser
            // admits them in targets).
            .all(|&b| (b.is_ascii_graphic() || b >= 0x80) && b != b'?' && b != b'#');
    let dots = shaped && has_dot_segment(&owned);
    if let Some(q) = query {
        owned.extend_from_slice(q);
    }
    if !shaped {
        return Err(RewriteError::Invalid);
    }
    if dots {
        // A dot segment the request's own dots made (`/api../x` stripped of `/api`, or its
        // encoded `%2e` before the route's normalisation): the request's fault, a 400. Dots a
        // rule wrote into a path that had none are the rule's.
        let suspect = |w: &[u8]| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'e';
        let (path, _) = path_and_query(target);
        let from_request = path.contains(&b'.') || path.windows(3).any(suspect);
        return Err(if from_request {
            RewriteError::InvalidRequest
        } else {
            RewriteError::Invalid
        });
    }
    if owned.len() > max {
        return Err(RewriteError::TooLong);
    }
    Ok(owned)
}

/// A route `redirect`'s `Location`: `to` expanded, then (with `query`) the request's query,
/// before the target's `#fragment` if it has one. `None` when `to` names `${host}` and the
/// request has none (HTTP/1.0 without `Host`, an empty one): `https://${host}${path}` would
/// be `https:///evil.example/x`, which browsers read as host `evil.example` (a 400, as the
/// listener's `redirect_https` answers).
pub fn location(r: &Redirect, vars: &Vars<'_>) -> Option<Vec<u8>> {
    let names_host = r.to.parts.iter().any(|p| matches!(p, Part::Var(Var::Host)));
    if names_host && vars.host.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(64 + vars.path.len() + vars.query.len());
    // `${path}` in a Location is always one `/` and what follows: `GET //evil.example`
    // must not make `to = "${path}/"` a protocol-relative redirect elsewhere, nor `GET
    // @evil.example` turn `https://new.example${path}` into a userinfo@host.
    let start = vars
        .path
        .iter()
        .position(|&b| b != b'/' && b != b'\\')
        .unwrap_or(vars.path.len());
    let mut path = Vec::with_capacity(vars.path.len() + 1);
    path.push(b'/');
    path.extend_from_slice(&vars.path[start..]);
    let vars = &Vars {
        path: &path,
        ..*vars
    };
    vars.expand(&r.to, &mut out);
    if r.query && !vars.query.is_empty() {
        // RFC 3986: the query comes before the fragment.
        let fragment = out.iter().position(|&b| b == b'#');
        let before = fragment.map_or(&out[..], |f| &out[..f]);
        let mut q = Vec::with_capacity(vars.query.len() + 1);
        q.push(if before.contains(&b'?') { b'&' } else { b'?' });
        q.extend_from_slice(vars.query);
        let at = fragment.unwrap_or(out.len());
        out.splice(at..at, q);
    }
    Some(escape_uri(&out))
}

/// `raw` as a URI-reference for a `Location` (RFC 9110 §10.2.2): the bytes a URI cannot hold
/// that a request's path or query may carry (non-ASCII, `"<>\^`{|}`, a `%` that starts no
/// escape, and controls and space, which no target holds) percent-encoded; escapes already
/// there are kept.
pub fn escape_uri(raw: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let plain = |b: u8| b.is_ascii_graphic() && !b"\"<>\\^`{|}%".contains(&b);
    let escape = |i: usize| {
        let hex = |j: usize| raw.get(j).is_some_and(u8::is_ascii_hexdigit);
        hex(i + 1) && hex(i + 2)
    };
    let mut out = Vec::with_capacity(raw.len() + 16);
    for (i, &b) in raw.iter().enumerate() {
        if plain(b) || (b == b'%' && escape(i)) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

/// Whether a `redirect_https` listener redirects this request: not when its path (as routes
/// compare it) is under one of the listener's `except` prefixes; always when it cannot be
/// routed (an invalid Host is refused by the redirect; a path with a dot segment or a
/// parameter hiding a separator is redirected, and refused by the https side's routing).
pub fn redirected(buf: &[u8], head: &RequestHead, r: &RedirectHttps) -> bool {
    if r.except.is_empty() {
        return true;
    }
    let target = split_target(head.target.get(buf));
    match crate::route::routing_input(&target, head.host.map(|h| h.get(buf))) {
        Some((_, path)) => r.redirects(&crate::route::match_path(&path)),
        None => true,
    }
}

/// `https://HOST[:PORT]/PATH?QUERY` for a `redirect_https` listener: the request's host
/// without its port, and its target in origin form. A request without a valid host is a 400.
pub fn https_location(buf: &[u8], head: &RequestHead, port: u16) -> Result<Vec<u8>, Canned> {
    let target = split_target(head.target.get(buf));
    let host: &[u8] = match (target.authority, head.host) {
        (Some(a), _) => a,
        (None, Some(h)) => h.get(buf),
        (None, None) => b"",
    };
    // A Host with an invalid value is refused even behind an absolute-form target (as
    // `route::routing_input` refuses it).
    let host_field_ok = head.host.is_none_or(|h| valid_authority(h.get(buf)));
    if host.is_empty() || !valid_authority(host) || !host_field_ok {
        return Err(Canned::BadRequest);
    }
    // Strip a port (an IPv6 literal keeps its brackets).
    let name = match host.iter().rposition(|&b| b == b':') {
        Some(i) if !host[i..].contains(&b']') => &host[..i],
        _ => host,
    };
    let mut loc = Vec::with_capacity(16 + host.len() + target.path.len());
    loc.extend_from_slice(b"https://");
    loc.extend_from_slice(name);
    if port != 443 {
        loc.push(b':');
        loc.extend_from_slice(port.to_string().as_bytes());
    }
    // `OPTIONS *` asks about the server, not a resource: its redirect names the root.
    let path = if target.path == b"*" {
        &b""[..]
    } else {
        target.path
    };
    if path.first() != Some(&b'/') {
        loc.push(b'/');
    }
    loc.extend_from_slice(path);
    Ok(escape_uri(&loc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_uri_references() {
        assert_eq!(
            escape_uri("https://n.example/caf\u{e9}?q=<x>\"{}|^`\\&r=%20#f".as_bytes()),
            b"https://n.example/caf%C3%A9?q=%3Cx%3E%22%7B%7D%7C%5E%60%5C&r=%20#f"
        );
        assert_eq!(
            escape_uri(b"/x?q=100%&r=%4&s=%zz%41"),
            b"/x?q=100%25&r=%254&s=%25zz%41"
        );
    }

    fn vars() -> Vars<'static> {
        Vars {
            client_ip: "10.1.2.3".parse().unwrap(),
            request_id: b"rid-1",
            host: b"a.example:8080",
            https: true,
            path: b"/old/x",
            query: b"a=1&b=2",
            route: "r1",
        }
    }

    fn all() -> Vec<Var> {
        vec![
            Var::ClientIp,
            Var::RequestId,
            Var::Host,
            Var::Scheme,
            Var::Path,
            Var::Query,
            Var::Route,
        ]
    }

    #[test]
    fn templates_expand_every_variable() {
        let t = Template::compile(
            "${scheme}://${host}${path}?${query} ${client_ip} ${request_id} ${route}",
            &all(),
            true,
        )
        .unwrap();
        let mut out = Vec::new();
        vars().expand(&t, &mut out);
        assert_eq!(
            out,
            b"https://a.example:8080/old/x?a=1&b=2 10.1.2.3 rid-1 r1".to_vec()
        );
    }

    fn rw(strip: Option<&str>, re: Option<(&str, &str)>, add: Option<&str>) -> PathRewrite {
        PathRewrite {
            strip: strip.map(|s| s.as_bytes().into()),
            regex: re.map(|(r, w)| {
                (
                    regex::bytes::Regex::new(r).unwrap(),
                    w.as_bytes().to_vec().into_boxed_slice(),
                )
            }),
            add: add.map(|s| s.as_bytes().into()),
        }
    }

    #[test]
    fn rewrites_apply_in_order_and_keep_the_query() {
        let ok = |r: &PathRewrite, t: &str| {
            String::from_utf8(rewrite_target(r, t.as_bytes(), 8192).unwrap()).unwrap()
        };
        let strip = rw(Some("/api"), None, None);
        assert_eq!(ok(&strip, "/api/users?x=1"), "/users?x=1");
        assert_eq!(ok(&strip, "/api"), "/");
        assert_eq!(ok(&strip, "/api?q"), "/?q");
        assert_eq!(ok(&strip, "/other"), "/other");
        let strip_slash = rw(Some("/api/"), None, Some("/v2"));
        assert_eq!(ok(&strip_slash, "/api/users"), "/v2/users");
        let re = rw(None, Some(("^/old/(.*)$", "/new/$1")), None);
        assert_eq!(ok(&re, "/old/a/b?k=v"), "/new/a/b?k=v");
        assert_eq!(ok(&re, "/keep"), "/keep");
        // A rewrite that leaves no valid path is refused, never sent.
        let bad = rw(None, Some(("^/(.*)$", "$1")), None);
        assert_eq!(
            rewrite_target(&bad, b"/x", 8192),
            Err(RewriteError::Invalid)
        );
        // ... and when the request carried what broke it, the request is at fault.
        for carried in [&b"/api%2e%2e/x"[..], b"/api../x", b"/api./x?q=.."] {
            assert_eq!(
                rewrite_target(&strip, carried, 8192),
                Err(RewriteError::InvalidRequest),
                "{:?}",
                String::from_utf8_lossy(carried)
            );
        }
        assert_eq!(
            rewrite_target(&strip, b"/api/caf\xc3\xa9", 8192).as_deref(),
            Ok(&b"/caf\xc3\xa9"[..])
        );
        let dots = rw(None, Some(("^/a/(.*)$", "/a/../$1")), None);
        assert_eq!(
            rewrite_target(&dots, b"/a/x", 8192),
            Err(RewriteError::Invalid)
        );
        // Never a leading `//` (an empty capture, or a stripped prefix before `//`).
        let caps = rw(None, Some(("^/rw/([^/]*)-([^/]*)(.*)$", "/$1/$2$3")), None);
        assert_eq!(ok(&caps, "/rw/-x/admin?q"), "/x/admin?q");
        assert_eq!(ok(&caps, "/rw/-/evil.com"), "/evil.com");
        assert_eq!(ok(&caps, "/rw/a-b/c"), "/a/b/c");
        assert_eq!(ok(&strip, "/api//evil.com/x"), "/evil.com/x");
        assert_eq!(ok(&rw(None, None, Some("/")), "/x//y"), "/x//y");
        let long = rw(None, None, Some("/a-long-prefix"));
        assert_eq!(rewrite_target(&long, b"/x", 10), Err(RewriteError::TooLong));
    }

    #[test]
    fn a_location_path_is_always_one_slash_and_what_follows() {
        let redirect = |to: &str| Redirect {
            status: crate::http::canned::Canned::Found,
            to: Template::compile(to, &all(), false).unwrap(),
            query: false,
        };
        for (path, to, want) in [
            (&b"//evil.example"[..], "${path}/", "/evil.example/"),
            (b"/\\evil.example", "${path}", "/evil.example"),
            (
                b"@evil.example",
                "https://new.example${path}",
                "https://new.example/@evil.example",
            ),
            (
                b"/ok/x",
                "https://new.example${path}",
                "https://new.example/ok/x",
            ),
        ] {
            let v = Vars { path, ..vars() };
            assert_eq!(
                location(&redirect(to), &v).unwrap(),
                want.as_bytes(),
                "{to} with {path:?}"
            );
        }
    }

    #[test]
    fn locations_keep_or_drop_the_query() {
        let to = Template::compile("https://b.example${path}", &all(), false).unwrap();
        let mut r = Redirect {
            status: crate::http::canned::Canned::Found,
            to,
            query: true,
        };
        let loc = |r: &Redirect| location(r, &vars()).unwrap();
        assert_eq!(loc(&r), b"https://b.example/old/x?a=1&b=2".to_vec());
        r.query = false;
        assert_eq!(loc(&r), b"https://b.example/old/x".to_vec());
        r.query = true;
        r.to = Template::compile("/n?from=${route}", &all(), false).unwrap();
        assert_eq!(loc(&r), b"/n?from=r1&a=1&b=2".to_vec());
        // The query goes before a fragment (RFC 3986 §3), joined to the target's own.
        r.to = Template::compile("https://x.example/landing#top", &all(), false).unwrap();
        assert_eq!(loc(&r), b"https://x.example/landing?a=1&b=2#top".to_vec());
        r.to = Template::compile("/l?k=v#top?not-a-query", &all(), false).unwrap();
        assert_eq!(loc(&r), b"/l?k=v&a=1&b=2#top?not-a-query".to_vec());
    }

    #[test]
    fn a_location_naming_the_host_needs_one() {
        let r = Redirect {
            status: crate::http::canned::Canned::Found,
            to: Template::compile("https://${host}${path}", &all(), false).unwrap(),
            query: false,
        };
        assert_eq!(
            location(&r, &vars()).unwrap(),
            b"https://a.example:8080/old/x".to_vec()
        );
        let v = Vars {
            host: b"",
            ..vars()
        };
        assert_eq!(
            location(&r, &v),
            None,
            "https:///old/x would name host `old`"
        );
        // A target without ${host} needs none.
        let r = Redirect {
            to: Template::compile("/elsewhere${path}", &all(), false).unwrap(),
            ..r
        };
        assert_eq!(location(&r, &v).unwrap(), b"/elsewhere/old/x".to_vec());
    }
}
