//! Config for the *route* stage's rules (issue 18): a route's or listener's header rules
//! (`request_headers`, `response_headers`), a route's path rewrite (`strip_prefix`,
//! `rewrite`, `add_prefix`), `upstream_host` and `redirect`. Everything a request needs is
//! compiled here, once: header names checked and lower-cased, value templates split into
//! literal parts and variables, regexes built. [`crate::rules`] applies them per request.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::fields::{reserved_request_field, reserved_response_field, token};
use super::raw::{Checker, RawRoute};
use crate::http::canned::Canned;

/// `request_headers` / `response_headers`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderRules {
    set: Option<BTreeMap<String, String>>,
    add: Option<BTreeMap<String, String>>,
    remove: Option<Vec<String>>,
    preset: Option<String>,
}

/// `rewrite = { regex, replace }`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRewrite {
    regex: String,
    replace: String,
}

/// `redirect = { status, to, query }`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    status: Option<u16>,
    to: String,
    query: Option<bool>,
}

/// A variable of a value template (`${name}`). Each describes the request as the client sent
/// it, before any rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// The client address (as `server.trusted_proxies` derives it).
    ClientIp,
    /// The request id (`[request_id]`).
    RequestId,
    /// The request's host (absolute-form authority or `Host`), with its port if it had one.
    Host,
    /// `http` or `https`: what the client spoke to the listener.
    Scheme,
    /// The path, without the query.
    Path,
    /// The query, without its `?` (empty when there is none).
    Query,
    /// The route's `name`.
    Route,
}

const VARS: &[(&str, Var)] = &[
    ("client_ip", Var::ClientIp),
    ("request_id", Var::RequestId),
    ("host", Var::Host),
    ("scheme", Var::Scheme),
    ("path", Var::Path),
    ("query", Var::Query),
    ("route", Var::Route),
];

/// Variables known when a response head is written (the request head is gone by then).
const RESPONSE_VARS: &[Var] = &[Var::ClientIp, Var::RequestId, Var::Scheme, Var::Route];

/// One piece of a compiled template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Lit(Box<[u8]>),
    Var(Var),
}

/// A value with `${var}` references, split at config time: per request it is only copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub parts: Box<[Part]>,
}

/// Why a template does not compile.
#[derive(Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// A byte a header value (or `Location`) cannot carry.
    Byte(char),
    Unclosed,
    Unknown(String),
    /// A known variable that has no value where the template is used.
    Unavailable(&'static str),
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::Byte(c) => write!(f, "character {c:?} is not allowed: printable ASCII only"),
            TemplateError::Unclosed => write!(f, "\"${{\" without its closing '}}'"),
            TemplateError::Unknown(v) => write!(
                f,
                "unknown variable ${{{v}}}: use client_ip, request_id, host, scheme, path, query or route"
            ),
            TemplateError::Unavailable(v) => write!(
                f,
                "${{{v}}} is not known when the response head is written: response rules may use client_ip, request_id, scheme and route"
            ),
        }
    }
}

impl Template {
    /// Compiles `text`: `${name}` is a variable of `allowed`; every other byte must be
    /// printable ASCII (with `space`, also space and tab).
    pub fn compile(text: &str, allowed: &[Var], space: bool) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            lit.extend_from_slice(&rest.as_bytes()[..i]);
            let after = &rest[i + 2..];
            let end = after.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &after[..end];
            let (vname, var) = VARS
                .iter()
                .find(|(n, _)| *n == name)
                .copied()
                .ok_or_else(|| TemplateError::Unknown(name.to_string()))?;
            if !allowed.contains(&var) {
                return Err(TemplateError::Unavailable(vname));
            }
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit).into()));
            }
            parts.push(Part::Var(var));
            rest = &after[end + 1..];
        }
        lit.extend_from_slice(rest.as_bytes());
        if let Some(i) = lit
            .iter()
            .position(|&b| !(b.is_ascii_graphic() || (space && (b == b' ' || b == b'\t'))))
        {
            // The character as written (`é`, not its first byte read as Latin-1).
            let c = std::str::from_utf8(&lit[i..])
                .ok()
                .and_then(|s| s.chars().next())
                .unwrap_or(char::from(lit[i]));
            return Err(TemplateError::Byte(c));
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into()));
        }
        Ok(Template {
            parts: parts.into(),
        })
    }
}

/// Compiled header rules of one route or listener, for one direction.
#[derive(Clone, Debug)]
pub struct HeaderRules {
    /// Lower-case names whose incoming fields are dropped: `remove` and `set` (and the preset's).
    pub drop: Box<[Box<str>]>,
    /// Fields written: `set` (and the preset's), then `add`.
    pub write: Box<[(Box<str>, Template)]>,
}

/// `response_headers.preset = "security"`: set unless the same rules name the field.
pub const SECURITY_PRESET: &[(&str, &str)] = &[
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
];

/// The first group `replace` refers to (`$1`, `${1}`, `$name`, `${name}`; `$$` is a `$`)
/// that `re` does not have.
fn unknown_group(re: &regex::bytes::Regex, replace: &str) -> Option<String> {
    let mut rest = replace;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => return None,
            }
        } else if let Some(after) = rest.strip_prefix('$') {
            rest = after;
            continue;
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        rest = after;
        if name.is_empty() {
            continue;
        }
        let known = match name.parse::<usize>() {
            Ok(n) => n < re.captures_len(),
            Err(_) => re.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            return Some(format!("${name}"));
        }
    }
    None
}

/// A route `host`: letters, digits, `-`, `.` and `_`, up to 253 bytes.
pub(crate) fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// One name of a route's `host` (at `key`): `"*"` (any), `"*.suffix"` or an exact name.
pub(super) fn host_match(c: &mut Checker, key: &str, h: &str) -> super::HostMatch {
    use super::HostMatch;
    match h.strip_prefix("*.") {
        _ if h == "*" => HostMatch::Any,
        _ if h.ends_with('.') || h.starts_with('.') || h.contains("..") => {
            // A request's trailing dot is removed before lookup: such a route would never
            // match.
            let bare = h
                .split('.')
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(".");
            c.err(key, format!("invalid host {h:?}: requests are looked up without a trailing dot, and a name has no empty label; write {bare:?}"));
            HostMatch::Any
        }
        Some(rest) if valid_host(rest) => {
            HostMatch::Suffix(format!(".{}", rest.to_ascii_lowercase()))
        }
        None if valid_host(h) => HostMatch::Exact(h.to_ascii_lowercase()),
        _ => {
            c.err(key, format!("invalid host {h:?}; write \"api.example.com\" or \"*.example.com\" (no port: any port matches)"));
            HostMatch::Any
        }
    }
}

/// Checks and compiles `request_headers` (`response = false`) or `response_headers`.
pub(super) fn header_rules(
    c: &mut Checker,
    path: &str,
    raw: Option<RawHeaderRules>,
    response: bool,
) -> Option<Box<HeaderRules>> {
    let raw = raw?;
    let mut drop: Vec<Box<str>> = Vec::new();
    let mut write = Vec::new();
    let allowed: &[Var] = if response {
        RESPONSE_VARS
    } else {
        &[
            Var::ClientIp,
            Var::RequestId,
            Var::Host,
            Var::Scheme,
            Var::Path,
            Var::Query,
            Var::Route,
        ]
    };
    let name_ok = |c: &mut Checker, key: &str, name: &str| {
        let lower = name.to_ascii_lowercase();
        let reserved = if response {
            reserved_response_field(&lower)
        } else {
            reserved_request_field(&lower)
        };
        if !token(name) {
            c.err(key, format!("invalid header name {name:?}"));
            None
        } else if reserved {
            c.err(
                key,
                format!("{name:?} is a hop-by-hop, framing or proxy-written field; rules cannot change it"),
            );
            None
        } else {
            Some(lower)
        }
    };
    for (j, name) in raw.remove.unwrap_or_default().iter().enumerate() {
        if let Some(l) = name_ok(c, &format!("{path}.remove[{j}]"), name) {
            drop.push(l.into());
        }
    }
    let fields = |c: &mut Checker, kind: &str, map: Option<BTreeMap<String, String>>| {
        let mut out = Vec::new();
        for (name, value) in map.unwrap_or_default() {
            let key = format!("{path}.{kind}.{name}");
            let Some(lower) = name_ok(c, &key, &name) else {
                continue;
            };
            match Template::compile(&value, allowed, true) {
                Ok(t) => out.push((lower, name.into_boxed_str(), t)),
                Err(e) => c.err(key, e.to_string()),
            }
        }
        out
    };
    let set = fields(c, "set", raw.set);
    let add = fields(c, "add", raw.add);
    for (lower, name, t) in set {
        drop.push(lower.into());
        write.push((name, t));
    }
    match raw.preset.as_deref() {
        None => {}
        Some("security") if response => {
            for (name, value) in SECURITY_PRESET {
                let lower = name.to_ascii_lowercase();
                if !drop.iter().any(|d| **d == *lower) {
                    drop.push(lower.into());
                    let t = Template::compile(value, &[], true).ok()?;
                    write.push(((*name).into(), t));
                }
            }
        }
        Some(p) => c.err(
            format!("{path}.preset"),
            if response {
                format!("unknown preset {p:?}: the one preset is \"security\"")
            } else {
                "presets are for response_headers".to_string()
            },
        ),
    }
    write.extend(add.into_iter().map(|(_, n, t)| (n, t)));
    Some(Box::new(HeaderRules {
        drop: drop.into(),
        write: write.into(),
    }))
}

/// What a route changes in the target it forwards: applied in this order.
#[derive(Clone, Debug)]
pub struct PathRewrite {
    /// `strip_prefix`: removed when the path starts with it (a `/` is kept in front).
    pub strip: Option<Box<[u8]>>,
    /// `rewrite`: the first match in the path replaced (`$1`, `${name}` for groups).
    pub regex: Option<(regex::bytes::Regex, Box<[u8]>)>,
    /// `add_prefix`: put in front of the path.
    pub add: Option<Box<[u8]>>,
}

/// A route's `redirect`: answered with `status` and `Location: to` (+ the query).
#[derive(Clone, Debug)]
pub struct Redirect {
    pub status: Canned,
    pub to: Template,
    /// `query`: the request's query is appended to the expanded `to`.
    pub query: bool,
}

/// Everything a route does besides matching and choosing an upstream.
#[derive(Clone, Debug, Default)]
pub struct RouteRules {
    pub request: Option<Box<HeaderRules>>,
    pub response: Option<Box<HeaderRules>>,
    pub rewrite: Option<Box<PathRewrite>>,
    /// `upstream_host`: the Host sent upstream (X-Forwarded-Host keeps the client's).
    pub upstream_host: Option<Box<str>>,
    pub redirect: Option<Box<Redirect>>,
}

fn path_chars(p: &str) -> bool {
    p.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
}

/// Checks and compiles a route's rules, taking their keys out of `r`.
pub(super) fn route_rules(c: &mut Checker, path: &str, r: &mut RawRoute) -> RouteRules {
    let request = header_rules(
        c,
        &format!("{path}.request_headers"),
        r.request_headers.take(),
        false,
    );
    let response = header_rules(
        c,
        &format!("{path}.response_headers"),
        r.response_headers.take(),
        true,
    );
    let mut prefix = |key: &str, v: Option<String>, add: bool| -> Option<Box<[u8]>> {
        let v = v?;
        let bad_end = add && v.len() > 1 && v.ends_with('/');
        if !v.starts_with('/') || !path_chars(&v) || bad_end || v.len() > 1024 {
            c.err(
                format!("{path}.{key}"),
                format!("{v:?} must start with '/'{} and hold printable ASCII path characters (no '?' or '#')", if add { ", not end with it," } else { "" }),
            );
            return None;
        }
        Some(v.into_bytes().into())
    };
    let strip = prefix("strip_prefix", r.strip_prefix.take(), false);
    let add = prefix("add_prefix", r.add_prefix.take(), true);
    let regex = r.rewrite.take().and_then(|rw| {
        let key = format!("{path}.rewrite");
        if !path_chars(&rw.replace) {
            c.err(
                format!("{key}.replace"),
                "printable ASCII path characters only (no spaces, '?' or '#')",
            );
        }
        match regex::bytes::RegexBuilder::new(&rw.regex)
            .size_limit(1 << 20)
            .build()
        {
            Ok(re) => {
                if let Some(group) = unknown_group(&re, &rw.replace) {
                    c.err(
                        format!("{key}.replace"),
                        format!("{group:?} names no group of the regex (it would be replaced by nothing)"),
                    );
                }
                Some((re, rw.replace.into_bytes().into_boxed_slice()))
            }
            Err(e) => {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or("invalid").trim().to_string();
                c.err(format!("{key}.regex"), format!("invalid regex: {last}"));
                None
            }
        }
    });
    let rewrite = (strip.is_some() || regex.is_some() || add.is_some())
        .then(|| Box::new(PathRewrite { strip, regex, add }));
    let upstream_host = r.upstream_host.take().and_then(|h| {
        // The port: after an IPv6 literal's `]`, else after the name's `:`.
        let port = match h.find(']') {
            Some(end) => h[end + 1..].strip_prefix(':'),
            None => h.split_once(':').map(|(_, p)| p),
        };
        let ok = !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
            && crate::route::valid_authority(h.as_bytes())
            && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
        if !ok {
            c.err(
                format!("{path}.upstream_host"),
                format!("invalid host {h:?}: a name or address, with an optional :port (1-65535)"),
            );
        }
        ok.then(|| h.into_boxed_str())
    });
    let redirect = r.redirect.take().and_then(|rd| {
        let key = format!("{path}.redirect");
        let status = match rd.status.unwrap_or(302) {
            301 => Canned::MovedPermanently,
            302 => Canned::Found,
            303 => Canned::SeeOther,
            307 => Canned::TemporaryRedirect,
            308 => Canned::PermanentRedirect,
            s => {
                c.err(
                    format!("{key}.status"),
                    format!("{s} is not a redirect status: 301, 302, 303, 307 or 308"),
                );
                return None;
            }
        };
        let all = VARS.iter().map(|(_, v)| *v).collect::<Vec<_>>();
        let to = match Template::compile(&rd.to, &all, false) {
            Ok(t) if !t.parts.is_empty() => t,
            Ok(_) => {
                c.err(format!("{key}.to"), "the redirect target is empty");
                return None;
            }
            Err(e) => {
                c.err(format!("{key}.to"), e.to_string());
                return None;
            }
        };
        Some(Box::new(Redirect {
            status,
            to,
            query: rd.query.unwrap_or(true),
        }))
    });
    RouteRules {
        request,
        response,
        rewrite,
        upstream_host,
        redirect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Var] = &[
        Var::ClientIp,
        Var::RequestId,
        Var::Host,
        Var::Scheme,
        Var::Path,
        Var::Query,
        Var::Route,
    ];

    fn lit(s: &str) -> Part {
        Part::Lit(s.as_bytes().into())
    }

    #[test]
    fn replacements_name_only_groups_the_regex_has() {
        let re = regex::bytes::Regex::new("^/old/(?P<rest>.*)$").unwrap();
        for ok in [
            "/new/$1",
            "/new/${rest}",
            "/$rest/x",
            "/$$9",
            "/${1}x",
            "/plain",
        ] {
            assert_eq!(unknown_group(&re, ok), None, "{ok}");
        }
        assert_eq!(unknown_group(&re, "/$9"), Some("$9".into()));
        assert_eq!(unknown_group(&re, "/${other}"), Some("$other".into()));
        assert_eq!(unknown_group(&re, "/$restx"), Some("$restx".into()));
    }

    #[test]
    fn templates_split_into_literals_and_variables() {
        let t = Template::compile("https://a.example${path}?from=${route}", ALL, false).unwrap();
        assert_eq!(
            &t.parts[..],
            &[
                lit("https://a.example"),
                Part::Var(Var::Path),
                lit("?from="),
                Part::Var(Var::Route)
            ]
        );
        let t = Template::compile("${client_ip}${request_id}", ALL, false).unwrap();
        assert_eq!(
            &t.parts[..],
            &[Part::Var(Var::ClientIp), Part::Var(Var::RequestId)]
        );
        // A `$` without `{` is a literal; so is an empty template.
        let t = Template::compile("a$b} c", ALL, true).unwrap();
        assert_eq!(&t.parts[..], &[lit("a$b} c")]);
        assert!(Template::compile("", ALL, true).unwrap().parts.is_empty());
    }

    #[test]
    fn templates_refuse_what_a_field_cannot_carry() {
        assert_eq!(
            Template::compile("a\r\nX-Evil: 1", ALL, true),
            Err(TemplateError::Byte('\r'))
        );
        assert_eq!(
            Template::compile("a\0", ALL, true),
            Err(TemplateError::Byte('\0'))
        );
        assert_eq!(
            Template::compile("é", ALL, true),
            Err(TemplateError::Byte('é'))
        );
        assert_eq!(
            Template::compile("a b", ALL, false),
            Err(TemplateError::Byte(' '))
        );
        assert_eq!(
            Template::compile("${path", ALL, true),
            Err(TemplateError::Unclosed)
        );
        assert_eq!(
            Template::compile("${nope}", ALL, true),
            Err(TemplateError::Unknown("nope".into()))
        );
        assert_eq!(
            Template::compile("x ${host}", RESPONSE_VARS, true),
            Err(TemplateError::Unavailable("host"))
        );
        assert!(Template::compile("${route} ${scheme}", RESPONSE_VARS, true).is_ok());
    }

    fn check(toml_text: &str, response: bool) -> (Option<Box<HeaderRules>>, Vec<String>) {
        let raw: RawHeaderRules = toml::from_str(toml_text).unwrap();
        let mut c = Checker::default();
        let r = header_rules(&mut c, "route[0].h", Some(raw), response);
        (
            r,
            c.issues
                .iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect(),
        )
    }

    #[test]
    fn header_rules_compile_in_order_and_refuse_framing_fields() {
        let (r, issues) = check(
            "set = { \"X-Route\" = \"${route}\" }\nadd = { \"X-A\" = \"1\" }\nremove = [\"X-Debug\"]\npreset = \"security\"",
            true,
        );
        assert!(issues.is_empty(), "{issues:?}");
        let r = r.unwrap();
        let names: Vec<&str> = r.write.iter().map(|(n, _)| &**n).collect();
        assert_eq!(
            names,
            [
                "X-Route",
                "X-Content-Type-Options",
                "X-Frame-Options",
                "Referrer-Policy",
                "X-A"
            ]
        );
        assert!(r.drop.iter().any(|d| &**d == "x-debug"));
        assert!(r.drop.iter().any(|d| &**d == "x-route"));
        assert!(!r.drop.iter().any(|d| &**d == "x-a"));
        // A `set` of a preset field wins over the preset.
        let (r, _) = check(
            "set = { \"X-Frame-Options\" = \"SAMEORIGIN\" }\npreset = \"security\"",
            true,
        );
        assert_eq!(r.unwrap().write.len(), 3);

        for (text, key) in [
            (
                "set = { \"Content-Length\" = \"1\" }",
                "route[0].h.set.Content-Length",
            ),
            (
                "add = { \"Transfer-Encoding\" = \"chunked\" }",
                "route[0].h.add.Transfer-Encoding",
            ),
            ("remove = [\"Connection\"]", "route[0].h.remove[0]"),
            (
                "set = { \"X-Forwarded-For\" = \"1.2.3.4\" }",
                "route[0].h.set.X-Forwarded-For",
            ),
            ("set = { \"Bad Name\" = \"1\" }", "route[0].h.set.Bad Name"),
            ("set = { \"X-A\" = \"${path}\" }", "route[0].h.set.X-A"),
        ] {
            let (_, issues) = check(text, !text.contains("Forwarded"));
            assert!(
                issues.iter().any(|i| i.starts_with(key)),
                "{text}: {issues:?}"
            );
        }
        let (_, issues) = check("preset = \"security\"", false);
        assert!(issues[0].starts_with("route[0].h.preset"), "{issues:?}");
    }
}
