//! Config, warnings: a route no request can reach. Route precedence (docs/CONFIG.md, "How a
//! request finds its route"; [`crate::route`]) puts, among routes of one host and the same
//! path, the one declared first first; a later one whose every request the earlier one also
//! takes never matches. nginx refuses a duplicate `location`; this is a warning instead
//! (a configuration that relies on it still loads), printed by `check` and logged at start
//! and on every reload.

use rustc_hash::FxHashMap;

use super::{ConfigIssue, HostMatch, PathMatch, RouteConfig};

/// One warning per route that an earlier route shadows whole, naming the first such route.
pub(super) fn shadowed_routes(routes: &[RouteConfig]) -> Vec<ConfigIssue> {
    // Routes by (path, one of their hosts): a shadowing route has the same path and every
    // host of the shadowed one, so the shadowed route's first host's group holds it.
    let mut groups: FxHashMap<(&PathMatch, Option<&HostMatch>), Vec<usize>> = FxHashMap::default();
    let mut warnings = Vec::new();
    for (i, b) in routes.iter().enumerate() {
        let earlier = groups.entry((&b.path, b.hosts.first())).or_default();
        if let Some(&a) = earlier.iter().find(|&&a| covers(&routes[a], b)) {
            warnings.push(ConfigIssue {
                path: format!("route[{i}]"),
                message: format!(
                    "warning: route {:?} never matches: route[{a}] ({:?}), declared before it {} with {}{}, takes every request it would; declare this one first if it should take them, or remove it",
                    b.name,
                    routes[a].name,
                    match b.hosts.len() {
                        0 => "for any host",
                        1 => "for the same host",
                        _ => "for the same hosts",
                    },
                    describe(&b.path),
                    if routes[a].methods.is_empty() && routes[a].headers.is_empty() {
                        ""
                    } else {
                        " and methods and headers that include this one's"
                    },
                ),
            });
        }
        for host in b
            .hosts
            .iter()
            .map(Some)
            .chain(b.hosts.is_empty().then_some(None))
        {
            groups.entry((&b.path, host)).or_default().push(i);
        }
    }
    warnings
}

/// Whether `a`, declared before `b`, takes every request `b` matches: the same path match,
/// each of `b`'s hosts in `a`'s (a host-less `a` only covers a host-less `b`: hosts are
/// tried first), `a`'s methods (none: any) including `b`'s, `a`'s header conditions among
/// `b`'s.
fn covers(a: &RouteConfig, b: &RouteConfig) -> bool {
    a.path == b.path
        && a.hosts.is_empty() == b.hosts.is_empty()
        && b.hosts.iter().all(|h| a.hosts.contains(h))
        && (a.methods.is_empty()
            || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m))))
        && a.headers.iter().all(|h| b.headers.contains(h))
}

fn describe(path: &PathMatch) -> String {
    match path {
        PathMatch::Any => "no path".into(),
        PathMatch::Prefix(p) => format!("path_prefix {p:?}"),
        PathMatch::Exact(p) => format!("path {p:?}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    /// The routes each warning names, as (shadowed, shadowing).
    fn shadowed(routes: &str) -> Vec<(usize, usize)> {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n{routes}"
        );
        let c = Config::parse(&text, Path::new("t.toml")).unwrap();
        c.warnings
            .iter()
            .map(|w| {
                let num = |s: &str| s.split(']').next().unwrap().parse::<usize>().unwrap();
                let by = w.message.split("route[").nth(1).unwrap();
                (num(w.path.trim_start_matches("route[")), num(by))
            })
            .collect()
    }

    fn route(extra: &str) -> String {
        format!("[[route]]\nupstream = \"u\"\n{extra}\n")
    }

    #[test]
    fn a_route_an_earlier_one_takes_whole_is_warned_of() {
        let r = |a: &str, b: &str| shadowed(&(route(a) + &route(b)));
        // Whole: the same path and hosts, and conditions that include the later one's.
        for (a, b) in [
            ("", ""),
            ("", "methods = [\"POST\"]"),
            ("", "headers = { \"x-canary\" = \"1\" }"),
            ("path_prefix = \"/v1/\"", "path_prefix = \"/v1/\""),
            ("path = \"/x\"", "path = \"/x\"\nmethods = [\"PUT\"]"),
            (
                "host = [\"a.example\", \"b.example\"]",
                "host = \"a.example\"",
            ),
            ("host = \"*.example\"", "host = \"*.example\""),
            ("methods = [\"GET\"]", "methods = [\"HEAD\"]"),
            ("methods = [\"GET\", \"POST\"]", "methods = [\"POST\"]"),
            (
                "headers = { \"x-a\" = \"1\" }",
                "headers = { \"x-a\" = \"1\", \"x-b\" = \"2\" }",
            ),
        ] {
            assert_eq!(r(a, b), vec![(1, 0)], "{a:?} then {b:?}");
        }
        // Not whole: the later route takes some requests (or comes first).
        for (a, b) in [
            ("methods = [\"POST\"]", ""),
            ("methods = [\"POST\"]", "methods = [\"GET\"]"),
            ("headers = { \"x-canary\" = \"1\" }", ""),
            (
                "headers = { \"x-a\" = \"1\" }",
                "headers = { \"x-a\" = \"2\" }",
            ),
            ("path_prefix = \"/x\"", "path = \"/x\""),
            ("path = \"/x\"", "path_prefix = \"/x\""),
            ("path_prefix = \"/v1/\"", "path_prefix = \"/v1/a\""),
            ("path_prefix = \"/v1/a\"", "path_prefix = \"/v1/\""),
            ("", "host = \"a.example\""),
            ("host = \"a.example\"", ""),
            (
                "host = \"a.example\"",
                "host = [\"a.example\", \"b.example\"]",
            ),
            ("host = \"*.example\"", "host = \"a.example\""),
        ] {
            assert_eq!(r(a, b), vec![], "{a:?} then {b:?}");
        }
    }

    #[test]
    fn each_shadowed_route_names_the_first_route_that_takes_it() {
        let routes = [
            route("methods = [\"POST\"]"),
            route(""),
            route("host = \"a.example\""),
            route("headers = { \"x-a\" = \"1\" }"),
            route(""),
        ]
        .concat();
        assert_eq!(shadowed(&routes), vec![(3, 1), (4, 1)]);
        let c = Config::parse(
            &format!("[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n{}{}", route("name = \"all\""), route("name = \"again\"")),
            Path::new("edge.toml"),
        )
        .unwrap();
        assert_eq!(
            c.warning_lines(Path::new("edge.toml")),
            vec!["edge.toml: route[1]: warning: route \"again\" never matches: route[0] (\"all\"), declared before it for any host with no path, takes every request it would; declare this one first if it should take them, or remove it"]
        );
    }
}
