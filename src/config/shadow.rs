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
    shadowed_counting(routes).0
}

/// Header conditions, sorted: a route's set of them.
type Headers<'r> = Vec<&'r (String, String)>;

/// Earlier routes are looked for among at most this many of one group: a table of thousands
/// of routes with the same path, hosts and headers but other methods may miss a warning, and
/// no table costs more than this many comparisons a route.
const CANDIDATES: usize = 64;

/// A route with more header conditions than this is only looked for under all of them and
/// under none (not each of their 2^n subsets).
const SUBSET_HEADERS: usize = 6;

/// [`shadowed_routes`], and how many pairs of routes it compared.
fn shadowed_counting(routes: &[RouteConfig]) -> (Vec<ConfigIssue>, u64) {
    let mut compared = 0u64;
    // Routes by (path, one of their hosts or none, their header conditions), each group in
    // declaration order. A route that shadows `b` has `b`'s path, is in the group of each of
    // `b`'s hosts, and its header conditions are a subset of `b`'s: for each such subset, the
    // smallest of those groups holds it, and the others tell whether it has every host. Routes
    // told apart by a header's value (one upstream per tenant) are then never compared.
    let mut groups: FxHashMap<(&PathMatch, Option<&HostMatch>, Headers), Vec<usize>> =
        FxHashMap::default();
    let mut warnings = Vec::new();
    for (i, b) in routes.iter().enumerate() {
        let hosts: Vec<Option<&HostMatch>> = match b.hosts.is_empty() {
            true => vec![None],
            false => b.hosts.iter().map(Some).collect(),
        };
        let mut headers: Headers = b.headers.iter().collect();
        headers.sort();
        let shadowing = subsets(&headers)
            .filter_map(|sub| {
                let lists = hosts
                    .iter()
                    .map(|&h| groups.get(&(&b.path, h, sub.clone())))
                    .collect::<Option<Vec<&Vec<usize>>>>()?;
                let smallest = lists.iter().min_by_key(|l| l.len())?;
                smallest.iter().take(CANDIDATES).copied().find(|&a| {
                    compared += 1;
                    methods_cover(&routes[a], b)
                        && lists.iter().all(|l| l.binary_search(&a).is_ok())
                })
            })
            .min();
        if let Some(a) = shadowing {
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
                        " and conditions (methods, headers) that every request of this one meets"
                    },
                ),
            });
        }
        for host in hosts {
            groups
                .entry((&b.path, host, headers.clone()))
                .or_default()
                .push(i);
        }
    }
    (warnings, compared)
}

/// The subsets of `headers` (sorted, as they are), each sorted; above [`SUBSET_HEADERS`],
/// only the empty one and the whole.
fn subsets<'h, 'r>(headers: &'h Headers<'r>) -> impl Iterator<Item = Headers<'r>> + 'h {
    let n = headers.len();
    let all = (1u32 << n.min(SUBSET_HEADERS)) - 1;
    let few = n <= SUBSET_HEADERS;
    (0..=all)
        .filter(move |&m| few || m == 0 || m == all)
        .map(move |m| match few || m == 0 {
            true => (headers.iter().enumerate())
                .filter(|&(j, _)| m >> j & 1 == 1)
                .map(|(_, h)| *h)
                .collect(),
            false => headers.clone(),
        })
}

/// Whether `a`'s methods (none: any) include every one of `b`'s (none: any), so that with
/// the same path, hosts and `a`'s headers among `b`'s, `a` takes every request `b` matches.
fn methods_cover(a: &RouteConfig, b: &RouteConfig) -> bool {
    a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)))
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
    use super::shadowed_counting;
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
                "headers = { \"x-b\" = \"2\" }",
                "headers = { \"x-a\" = \"1\", \"x-b\" = \"2\", \"x-c\" = \"3\" }",
            ),
            (
                "host = [\"b.example\", \"a.example\"]\nmethods = [\"GET\"]",
                "host = [\"a.example\", \"b.example\"]\nheaders = { \"x-a\" = \"1\" }\nmethods = [\"HEAD\"]",
            ),
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
            (
                "host = [\"a.example\", \"c.example\"]",
                "host = [\"a.example\", \"b.example\"]",
            ),
            (
                "headers = { \"x-a\" = \"1\", \"x-b\" = \"2\" }",
                "headers = { \"x-a\" = \"1\", \"x-c\" = \"2\" }",
            ),
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

    /// Routes that share a path and host but differ by a header's value (one upstream per
    /// tenant) are no pairs to compare: 40,000 of them cost 51 s of `check`, start and
    /// reload (longer than `edgeshard reload` waits) when each was compared with every
    /// earlier one. The comparisons grow with the routes, not their square, and a duplicate
    /// among them is still found.
    #[test]
    fn routes_told_apart_by_a_header_are_not_compared_pairwise() {
        let n = 4000;
        let mut text = String::from("[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n");
        for i in 0..n {
            text.push_str(&format!("[[route]]\nupstream = \"u\"\nhost = [\"a.example\", \"t{i}.example\"]\npath_prefix = \"/\"\nheaders = {{ \"x-tenant\" = \"{i}\" }}\n"));
        }
        for (extra, i) in [("", 17), ("methods = [\"POST\"]\n", 18)] {
            text.push_str(&format!("[[route]]\nupstream = \"u\"\nhost = \"a.example\"\npath_prefix = \"/\"\nheaders = {{ \"x-tenant\" = \"{i}\", \"x-b\" = \"1\" }}\n{extra}"));
        }
        let c = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let (warnings, compared) = shadowed_counting(&c.routes);
        let named: Vec<_> = warnings
            .iter()
            .map(|w| (&w.path[..], w.message.contains(&format!("route[{}]", 17))))
            .collect();
        assert_eq!(named.len(), 2, "{named:?}");
        assert_eq!(named[0], ("route[4000]", true));
        assert!(
            warnings[1].message.contains("route[18] "),
            "{}",
            warnings[1].message
        );
        assert!(compared <= 4 * n, "{compared} comparisons for {n} routes");
    }
}
