//! Config unit tests: parsing, validation messages with their key paths, defaults.
use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

const GOOD: &str = r#"
[server]
io_engine = "epoll"
[[listener]]
address = "127.0.0.1:0"
[[route]]
host = "*.example.com"
path_prefix = "/v1/"
methods = ["get"]
headers = { "X-Canary" = "1" }
upstream = "api"
[[upstream]]
name = "api"
backends = [{ address = "127.0.0.1:9000", weight = 2 }]
[limits]
max_body_bytes = "1MiB"
[timeouts]
client_header = "250ms"
"#;

#[test]
fn good_config_validates() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.io_engine, IoEngine::Epoll);
    assert!(!c.huge_pages, "huge pages are off unless asked for");
    let on = parse(&GOOD.replace("[server]\n", "[server]\nhuge_pages = true\n")).unwrap();
    assert!(on.huge_pages);
    assert_eq!(c.limits.max_body_bytes, 1 << 20);
    assert_eq!(c.timeouts.client_header, Duration::from_millis(250));
    assert_eq!(
        c.routes[0].hosts,
        [HostMatch::Suffix(".example.com".into())]
    );
    assert_eq!(
        c.routes[0].methods,
        vec!["GET", "HEAD"],
        "GET brings HEAD along"
    );
    assert_eq!(c.routes[0].headers[0].0, "x-canary");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = r#"
[[listener]]
address = "not-an-address"
[[route]]
upstream = "missing"
colour = "blue"
[[route]]
upstream = "missing"
[[route]]
upstream = "api"
[[upstream]]
name = "api"
backends = [{ address = "127.0.0.1:1", wieght = 1 }]
[limits]
max_body_bytes = "lots"
"#;
    let err = parse(text).unwrap_err();
    let text = err.to_string();
    // The issue at exactly `path`, whose message contains `words`.
    let has = |path: &str, words: &str| {
        err.issues
            .iter()
            .any(|i| i.path == path && i.message.contains(words))
    };
    assert!(has("listener[0].address", "invalid address"), "{text}");
    // Each unknown key is named at its own path (not just any problem in its table).
    assert!(has("route[0].colour", "unknown field `colour`"), "{text}");
    assert!(
        has("route[1].upstream", "\"missing\" is not defined"),
        "{text}"
    );
    assert!(
        has("upstream[0].backends[0].wieght", "unknown field `wieght`"),
        "{text}"
    );
    // A route naming the upstream whose entry failed is told so, not to define it.
    assert!(
        has(
            "route[2].upstream",
            "left out for the error in its entry (upstream[0])"
        ),
        "{text}"
    );
    assert!(has("limits.max_body_bytes", "invalid size"), "{text}");
    assert!(text.lines().all(|l| l.starts_with("test.toml: ")), "{text}");
}

#[test]
fn backends_by_host_name_are_kept_for_the_resolver() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\n";
    let c = parse(&format!("{base}backends = [{{ address = \"127.0.0.1:1\" }}, {{ address = \"App.Internal:8080\", weight = 2 }}]\n[dns]\nservers = [\"127.0.0.1:5353\"]\nmin_ttl = \"2s\"\n")).unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.backends.len(), 1);
    assert_eq!(u.names[0].host, "app.internal");
    assert_eq!((u.names[0].port, u.names[0].weight), (8080, 2));
    assert_eq!(c.dns.servers, Some(vec!["127.0.0.1:5353".parse().unwrap()]));
    assert_eq!(c.dns.min_ttl, Duration::from_secs(2));
    let r = c.with_resolved(|h| {
        assert_eq!(h, "app.internal");
        Some(vec![
            "10.0.0.2:0".parse().unwrap(),
            "10.0.0.1:0".parse().unwrap(),
        ])
    });
    let addrs: Vec<String> = r.upstreams[0]
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(addrs, ["127.0.0.1:1", "10.0.0.1:8080", "10.0.0.2:8080"]);
    for bad in [
        "app.internal",
        "app.internal:0",
        "app..x:80x",
        "1.2.3.4:99999",
    ] {
        let e = parse(&format!("{base}backends = [{{ address = \"{bad}\" }}]\n")).unwrap_err();
        assert!(
            e.to_string().contains("upstream[0].backends[0].address"),
            "{bad}: {e}"
        );
    }
    let e = parse(&format!("{base}backends = [{{ address = \"127.0.0.1:1\" }}]\n[dns]\nmin_ttl = \"10m\"\nmax_ttl = \"1m\"\n")).unwrap_err();
    assert!(e.to_string().contains("dns.min_ttl"), "{e}");
}

#[test]
fn srv_backends_are_checked() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\n";
    let c = parse(&format!(
        "{base}backends = [{{ srv = \"_http._tcp.App.internal.\", backup = true }}]\n"
    ))
    .unwrap();
    let n = &c.upstreams[0].names[0];
    assert_eq!(
        (n.key().as_str(), n.backup),
        ("srv:_http._tcp.app.internal", true)
    );
    let r = c.with_resolved(|_| Some(vec!["10.0.0.1:8081".parse().unwrap()]));
    assert_eq!(
        r.upstreams[0].backends[0].address.to_string(),
        "10.0.0.1:8081"
    );
    for (entry, key) in [
        ("{ srv = \"app.internal\" }", "backends[0].srv"),
        (
            "{ address = \"127.0.0.1:1\", srv = \"_a._tcp.b\" }",
            "backends[0]",
        ),
        ("{ weight = 2 }", "backends[0].address"),
    ] {
        let e = parse(&format!("{base}backends = [{entry}]\n")).unwrap_err();
        assert!(e.to_string().contains(key), "{entry}: {e}");
    }
}

#[test]
fn route_host_with_port_is_refused() {
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nhost = \"a.example:8080\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.issues[0].path, "route[0].host", "{err}");
}

#[test]
fn route_values_no_request_could_match_are_refused() {
    // Requests are looked up without a host's trailing dot and with their paths normalised
    // (route::routed_path): a route written otherwise would never match, and its allow, deny
    // or auth would never apply.
    let text = |field: &str| {
        format!("[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\n{field}\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n")
    };
    for (field, key, hint) in [
        (
            "host = \"secure.example.\"",
            "route[0].host",
            "\"secure.example\"",
        ),
        (
            "host = \"*.corp.example.\"",
            "route[0].host",
            "\"*.corp.example\"",
        ),
        ("host = \"a..example\"", "route[0].host", "empty label"),
        (
            "host = [\"a.example\", \"b.example.\"]",
            "route[0].host[1]",
            "\"b.example\"",
        ),
        ("host = []", "route[0].host", "leave host out"),
        ("host = 5", "route[0].host", "a host name"),
        (
            "path_prefix = \"/%7Ebob/\"",
            "route[0].path_prefix",
            "\"/~bob/\"",
        ),
        (
            "path_prefix = \"/repo%2Fsecret\"",
            "route[0].path_prefix",
            "\"/repo/secret\"",
        ),
        (
            "path_prefix = \"/static//private/\"",
            "route[0].path_prefix",
            "\"/static/private/\"",
        ),
        (
            "path = \"/admin;jsessionid\"",
            "route[0].path",
            "\"/admin\"",
        ),
        ("path = \"/a?b=1\"", "route[0].path", "'?'"),
        (
            "path_prefix = \"/a/../b/\"",
            "route[0].path_prefix",
            "dot segment",
        ),
        ("path = \"/.\"", "route[0].path", "dot segment"),
        (
            "path_prefix = \"/a%zz/\"",
            "route[0].path_prefix",
            "two hex digits",
        ),
        (
            "path_prefix = \"/a\\\\b/\"",
            "route[0].path_prefix",
            "refused for",
        ),
        ("path = \"/{x}\"", "route[0].path", "refused for"),
    ] {
        let err = parse(&text(field)).unwrap_err();
        assert_eq!(err.issues[0].path, key, "{field}: {err}");
        assert!(err.issues[0].message.contains(hint), "{field}: {err}");
    }
    // A prefix's last segment is unfinished: "/." is the usual "hidden files" prefix.
    for field in [
        "host = \"a.example\"",
        "path_prefix = \"/~bob/\"",
        "path = \"/a%20b\"",
        "path_prefix = \"/.\"",
        "path_prefix = \"/static/.\"",
    ] {
        parse(&text(field)).unwrap_or_else(|e| panic!("{field}: {e}"));
    }
}

#[test]
fn user_and_group_are_checked_for_shape_here_and_looked_up_at_start() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    let c = parse(&format!("[server]\nuser = \"nobody\"\n{base}")).unwrap();
    assert_eq!(
        (c.user.as_deref(), c.group.as_deref()),
        (Some("nobody"), None)
    );
    let err = parse(&format!("[server]\ngroup = \"nogroup\"\n{base}")).unwrap_err();
    assert_eq!(err.issues[0].path, "server.group", "{err}");
    assert!(err.issues[0].message.contains("server.user"), "{err}");
    let err = parse(&format!("[server]\nuser = \"\"\n{base}")).unwrap_err();
    assert_eq!(err.issues[0].path, "server.user", "{err}");
}

#[test]
fn server_header_and_hidden_response_fields_are_checked() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    let c = parse(base).unwrap();
    assert!(c.response.server.is_none() && c.response.hide.is_empty());
    let c = parse(&format!(
        "[server]\nserver_header = \"edge/1\"\nhide_response_headers = [\"X-Backend\", \"x-backend\", \"Via\"]\n{base}"
    ))
    .unwrap();
    assert_eq!(c.response.server.as_deref(), Some("edge/1"));
    let hide: Vec<&str> = c.response.hide.iter().map(|h| &**h).collect();
    assert_eq!(hide, ["x-backend", "via"], "lowercased, once each");
    let err = parse(&format!(
        "[server]\nserver_header = \"a\\r\\nb\"\nhide_response_headers = [\"ok\", \"bad name\", \"Content-Length\", \"Date\"]\n{base}"
    ))
    .unwrap_err();
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "server.server_header",
            "server.hide_response_headers[1]",
            "server.hide_response_headers[2]",
            "server.hide_response_headers[3]"
        ],
        "{err}"
    );
}

#[test]
fn a_remote_admin_address_needs_a_token_or_an_explicit_waiver() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    let err = parse(&format!("[admin]\naddress = \"0.0.0.0:9901\"\n{base}")).unwrap_err();
    assert_eq!(err.issues[0].path, "admin.address", "{err}");
    assert!(err.issues[0].message.contains("token"), "{err}");
    for ok in [
        "[admin]\naddress = \"0.0.0.0:9901\"\ntoken = \"s3cret\"\n",
        "[admin]\naddress = \"0.0.0.0:9901\"\nallow_remote_without_token = true\n",
        "[admin]\naddress = \"127.0.0.1:9901\"\n",
        "[admin]\naddress = \"[::1]:9901\"\n",
    ] {
        parse(&format!("{ok}{base}")).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn admin_connection_bounds_have_safe_defaults_and_ranges() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n[admin]\naddress = \"127.0.0.1:9901\"\n";
    let a = parse(base).unwrap().admin.unwrap();
    assert_eq!(a.max_connections, 64);
    assert_eq!(a.header_timeout, Duration::from_secs(2));
    assert_eq!(a.send_timeout, Duration::from_secs(5));
    let a = parse(&format!(
        "{base}max_connections = 8\nheader_timeout = \"500ms\"\nsend_timeout = \"1m\"\n"
    ))
    .unwrap()
    .admin
    .unwrap();
    assert_eq!(a.max_connections, 8);
    assert_eq!(a.header_timeout, Duration::from_millis(500));
    assert_eq!(a.send_timeout, Duration::from_secs(60));
    for (bad, path) in [
        ("max_connections = 0", "admin.max_connections"),
        ("max_connections = 5000", "admin.max_connections"),
        ("header_timeout = \"0s\"", "admin.header_timeout"),
        ("header_timeout = \"2m\"", "admin.header_timeout"),
        ("send_timeout = \"soon\"", "admin.send_timeout"),
    ] {
        let err = parse(&format!("{base}{bad}\n")).unwrap_err();
        assert_eq!(err.issues[0].path, path, "{bad}: {err}");
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size("16MiB"), Some(16 << 20));
    assert_eq!(parse_size("64 KiB"), Some(64 << 10));
    assert_eq!(parse_size("100"), Some(100));
    assert_eq!(parse_size("1.5MiB"), None);
    assert_eq!(parse_size("-1"), None);
}

#[test]
fn body_min_rates_default_on_take_sizes_and_zero_turns_them_off() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    let c = parse(base).unwrap();
    assert_eq!(
        (c.limits.client_body_min_rate, c.limits.client_send_min_rate),
        (DEFAULT_MIN_RATE, DEFAULT_MIN_RATE)
    );
    let c = parse(&format!(
        "{base}[limits]\nclient_body_min_rate = \"1KiB\"\nclient_send_min_rate = 0\n"
    ))
    .unwrap();
    assert_eq!(
        (c.limits.client_body_min_rate, c.limits.client_send_min_rate),
        (1024, 0)
    );
    let err = parse(&format!(
        "{base}[limits]\nclient_body_min_rate = \"fast\"\nclient_send_min_rate = 1\n"
    ))
    .unwrap_err();
    let text = err.to_string();
    assert!(
        err.issues
            .iter()
            .any(|i| i.path == "limits.client_body_min_rate" && i.message.contains("invalid size")),
        "{text}"
    );
    let err = parse(&format!("{base}[limits]\nclient_send_min_rate = -1\n")).unwrap_err();
    assert!(
        err.to_string().contains("limits.client_send_min_rate"),
        "{err}"
    );
    // Not a [timeouts] key: refused there by name.
    let err = parse(&format!(
        "{base}[timeouts]\nclient_body_min_rate = \"1s\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("client_body_min_rate"), "{err}");
}

#[test]
fn fields_the_proxy_fills_cannot_take_a_name_http_defines() {
    // The request id and the mTLS subject replace what was sent under their name: a defined
    // field there would lose the real one on every message, or duplicate Host or framing.
    for name in [
        "Content-Type",
        "Date",
        "Host",
        "Transfer-Encoding",
        "X-Forwarded-Port",
    ] {
        let text = format!("{GOOD}[request_id]\nheader = \"{name}\"\n");
        let err = parse(&text).unwrap_err();
        assert!(
            err.issues
                .iter()
                .any(|i| i.path == "request_id.header" && i.message.contains("HTTP")),
            "{name}: {err}"
        );
        let tls = format!(
            "tls = {{ certificates = [{{ cert = \"/nonexistent/a.pem\", key = \"/nonexistent/a.key\" }}], client_auth = {{ ca = \"/nonexistent/ca.pem\", subject_header = \"{name}\" }} }}\n"
        );
        let text = GOOD.replace(
            "address = \"127.0.0.1:0\"\n",
            &format!("address = \"127.0.0.1:0\"\n{tls}"),
        );
        let err = parse(&text).unwrap_err();
        assert!(
            err.issues
                .iter()
                .any(|i| i.path == "listener[0].tls.client_auth.subject_header"
                    && i.message.contains("HTTP")),
            "{name}: {err}"
        );
    }
    let text = format!("{GOOD}[request_id]\nheader = \"X-Trace-Id\"\n");
    assert_eq!(parse(&text).unwrap().request_id.header, "X-Trace-Id");
}

#[test]
fn log_level_takes_levels_and_target_directives_but_not_a_bare_word() {
    for good in [
        "info",
        "WARN",
        "edgeshard=debug",
        "warn,edgeshard::reload=info",
        "off",
    ] {
        let text = format!("{GOOD}[log]\nlevel = \"{good}\"\n");
        assert!(parse(&text).is_ok(), "{good}");
    }
    // A bare word is a target with every level on to the filter, so a typo silenced the log.
    for bad in ["warnn", "loud", "", "info,", "=info", "edgeshard=loud"] {
        let text = format!("{GOOD}[log]\nlevel = \"{bad}\"\n");
        let err = parse(&text).unwrap_err();
        assert!(
            err.issues.iter().any(|i| i.path == "log.level"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn overlapping_listening_addresses_are_refused_by_check_as_run_refuses_them() {
    // `run` cannot bind the second of these; `check` used to pass them.
    let two = |a: &str, b: &str| {
        GOOD.replace(
            "address = \"127.0.0.1:0\"\n",
            &format!("address = \"{a}\"\n[[listener]]\naddress = \"{b}\"\n"),
        )
    };
    for (a, b) in [
        ("127.0.0.1:19080", "0.0.0.0:19080"),
        ("127.0.0.1:19080", "[::ffff:127.0.0.1]:19080"),
        ("127.0.0.1:19080", "127.0.0.1:19080"),
    ] {
        let err = parse(&two(a, b)).unwrap_err();
        assert!(
            err.issues.iter().any(|i| i.path == "listener[1].address"),
            "{a} {b}: {err}"
        );
    }
    assert!(parse(&two("127.0.0.1:19080", "127.0.0.2:19080")).is_ok());
    assert!(parse(&two("127.0.0.1:0", "0.0.0.0:0")).is_ok());
    let admin =
        GOOD.replace("127.0.0.1:0", "0.0.0.0:19081") + "[admin]\naddress = \"127.0.0.1:19081\"\n";
    let err = parse(&admin).unwrap_err();
    assert!(
        err.issues.iter().any(|i| i.path == "admin.address"),
        "{err}"
    );
}

#[test]
fn peers_must_be_addresses_one_can_connect_to() {
    for bad in [
        "127.0.0.1:0",
        "0.0.0.0:80",
        "[::]:80",
        "224.0.0.1:80",
        "255.255.255.255:80",
    ] {
        let err = parse(&GOOD.replace("127.0.0.1:9000", bad)).unwrap_err();
        assert!(
            err.issues
                .iter()
                .any(|i| i.path == "upstream[0].backends[0].address"),
            "{bad}: {err}"
        );
    }
    let err = parse(&format!("{GOOD}[dns]\nservers = [\"127.0.0.1:0\"]\n")).unwrap_err();
    assert!(
        err.issues.iter().any(|i| i.path == "dns.servers[0]"),
        "{err}"
    );
    let redirect = GOOD.replace(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nredirect_https = { port = 0 }\n",
    );
    let err = parse(&redirect).unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.path == "listener[0].redirect_https.port"),
        "{err}"
    );
    // `except` prefixes are written as routes' are: one that no request path has is refused.
    for bad in ["acme/", "/a//b/", "/%61/", "/a/../b/", "/a?b", ""] {
        let redirect = GOOD.replace(
            "address = \"127.0.0.1:0\"\n",
            &format!(
                "address = \"127.0.0.1:0\"\nredirect_https = {{ except = [\"/ok/\", {bad:?}] }}\n"
            ),
        );
        let err = parse(&redirect).unwrap_err();
        assert!(
            err.issues
                .iter()
                .any(|i| i.path == "listener[0].redirect_https.except[1]"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn resilience_ranges_name_their_own_key() {
    for (table, key, value) in [
        ("health_check", "interval", "\"1ms\""),
        ("health_check", "fall", "0"),
        ("health_check", "jitter", "0.7"),
        ("outlier", "consecutive", "0"),
        ("outlier", "max_ejection_percent", "101"),
        ("retry", "attempts", "0"),
        ("retry", "budget", "1.5"),
    ] {
        let text = format!("{GOOD}[upstream.{table}]\n{key} = {value}\n");
        let err = parse(&text).unwrap_err();
        let path = format!("upstream[0].{table}.{key}");
        assert!(err.issues.iter().any(|i| i.path == path), "{path}: {err}");
    }
}

#[test]
fn each_problem_is_one_line_whatever_the_file_holds() {
    // A line break in a key could split one problem in two, or forge another.
    let text = GOOD.replace(
        "headers = { \"X-Canary\" = \"1\" }",
        "headers = { \"X\\r\\nroute[9].fake: forged line\" = \"1\" }",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("X\\r\\nroute[9]"), "{err}");
}

#[test]
fn route_matches_that_could_never_match_are_refused() {
    let bad_path = GOOD.replace("path_prefix = \"/v1/\"", "path_prefix = \"/v1/\\r\\n\"");
    let err = parse(&bad_path).unwrap_err();
    assert!(
        err.issues.iter().any(|i| i.path == "route[0].path_prefix"),
        "{err}"
    );
    let bad_value = GOOD.replace("\"X-Canary\" = \"1\"", "\"X-Canary\" = \"1\\r\\n\"");
    let err = parse(&bad_value).unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.path == "route[0].headers.X-Canary"),
        "{err}"
    );
}

#[test]
fn a_route_body_bound_defaults_to_the_global_one_and_names_its_route() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n[limits]\nmax_body_bytes = 1000\n";
    let c = parse(&format!(
        "{base}[[route]]\nupstream = \"u\"\n[[route]]\nupstream = \"u\"\nmax_body_bytes = \"2MiB\"\n"
    ))
    .unwrap();
    let bounds: Vec<u64> = c.routes.iter().map(|r| r.max_body_bytes).collect();
    assert_eq!(bounds, [1000, 2 << 20]);
    let err = parse(&format!(
        "{base}[[route]]\nupstream = \"u\"\n[[route]]\nupstream = \"u\"\nmax_body_bytes = \"huge\"\n"
    ))
    .unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.path == "route[1].max_body_bytes" && i.message.contains("invalid size")),
        "{err}"
    );
}

#[test]
fn respond_routes_need_no_upstream_and_refuse_what_they_would_ignore() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    let c = parse(&format!(
        "{base}[[route]]\npath = \"/a\"\nrespond = {{ status = 404, body = \"no\" }}\n[[route]]\npath = \"/r\"\nredirect = {{ to = \"/x\" }}\n[[route]]\nupstream = \"u\"\n"
    ))
    .unwrap();
    let ups: Vec<Option<usize>> = c.routes.iter().map(|r| r.upstream).collect();
    assert_eq!(ups, [None, None, Some(0)]);
    let r = c.routes[0].respond.as_ref().unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        r.bytes(true),
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
    );
    let bad = |route: &str, key: &str, what: &str| {
        let err = parse(&format!("{base}[[route]]\n{route}\n")).unwrap_err();
        assert!(
            err.issues
                .iter()
                .any(|i| i.path == key && i.message.contains(what)),
            "{route}: {err}"
        );
    };
    bad("path = \"/a\"", "route[0].upstream", "missing");
    bad(
        "respond = { body = \"x\" }\nupstream = \"u\"",
        "route[0].upstream",
        "sends nothing upstream",
    );
    bad(
        "respond = { body = \"x\" }\ncache = { size = \"1MiB\" }",
        "route[0].respond",
        "remove cache",
    );
    bad(
        "respond = { body = \"x\" }\nredirect = { to = \"/x\" }",
        "route[0].respond",
        "remove redirect",
    );
    for (status, why) in [
        (99, "200 to 599"),
        (304, "conditional"),
        (301, "Location"),
        (401, "WWW-Authenticate"),
        (405, "Allow"),
        (408, "closes"),
        (416, "Content-Range"),
    ] {
        let route = format!("respond = {{ status = {status} }}");
        bad(&route, "route[0].respond.status", why);
    }
    bad(
        "respond = { status = 204, content_type = \"text/plain\" }",
        "route[0].respond.content_type",
        "no type",
    );
    bad(
        "respond = { body = \"x\" }\nmax_body_bytes = 10",
        "route[0].max_body_bytes",
        "forwards no body",
    );
    bad(
        "redirect = { to = \"/x\" }\nmax_body_bytes = 10",
        "route[0].max_body_bytes",
        "forwards no body",
    );
    bad(
        "respond = { body = \"x\", headers = { \"Content-Length\" = \"9\" } }",
        "route[0].respond.headers.Content-Length",
        "written by the proxy",
    );
    bad(
        "respond = { body = \"x\", headers = { \"X-A\" = \"a\\nb\" } }",
        "route[0].respond.headers.X-A",
        "control character",
    );
    // With the field its status needs, a status is fine.
    let c = parse(&format!(
        "{base}[[route]]\nrespond = {{ status = 405, headers = {{ allow = \"GET\", \"Cache-Control\" = \"no-store\" }} }}\n"
    ))
    .unwrap();
    let bytes = c.routes[0].respond.as_ref().unwrap().bytes(false);
    assert!(
        bytes.starts_with(
            b"HTTP/1.1 405 Method Not Allowed\r\nCache-Control: no-store\r\nallow: GET\r\n"
        ),
        "{}",
        String::from_utf8_lossy(bytes)
    );
    // An invalid redirect is reported as such, not as a missing upstream too.
    let err = parse(&format!("{base}[[route]]\nredirect = {{ to = \"\" }}\n")).unwrap_err();
    assert!(
        err.issues.iter().all(|i| i.path != "route[0].upstream"),
        "{err}"
    );
    bad(
        "respond = { status = 204, body = \"x\" }",
        "route[0].respond",
        "no body",
    );
    bad(
        "respond = { body = \"x\", file = \"f\" }",
        "route[0].respond",
        "either body or file",
    );
    bad(
        "respond = { file = \"/nonexistent/page.html\" }",
        "route[0].respond.file",
        "cannot read",
    );
    bad(
        "respond = { body = \"x\", content_type = \"a\\nb\" }",
        "route[0].respond.content_type",
        "printable ASCII",
    );
}

#[test]
fn a_route_may_name_several_hosts() {
    let text = |hosts: &str| {
        format!("[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nhost = {hosts}\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n")
    };
    let c = parse(&text("[\"A.example\", \"*.b.example\", \"a.example\"]")).unwrap();
    let want = [
        HostMatch::Exact("a.example".into()),
        HostMatch::Suffix(".b.example".into()),
    ];
    assert_eq!(
        c.routes[0].hosts, want,
        "lower-cased, the repeated one once"
    );
    let c = parse(&text("[\"a.example\", \"*\"]")).unwrap();
    assert!(c.routes[0].hosts.is_empty(), "\"*\" among them: any host");
}

#[test]
fn a_bare_number_for_a_duration_says_how_to_write_one() {
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[timeouts]\nclient_header = 10\n";
    let err = parse(text).unwrap_err();
    let issue = &err.issues[0];
    assert_eq!(issue.path, "timeouts.client_header", "{err}");
    assert!(issue.message.contains("integer `10`"), "{err}");
    assert!(issue.message.contains("e.g. \"10s\""), "{err}");
    // Not every string key is a duration: the hint does not say the key is one.
    let text = "[[listener]]\naddress = 8080\n";
    let err = parse(text).unwrap_err();
    let issue = &err.issues[0];
    assert_eq!(issue.path, "listener[0].address", "{err}");
    assert!(issue.message.contains("write it in quotes"), "{err}");
    assert!(!issue.message.contains("give a duration"), "{err}");
}

#[test]
fn a_huge_value_is_not_echoed_whole() {
    let huge = "x".repeat(1 << 20);
    let text = format!("[[listener]]\naddress = \"{huge}\"\n");
    let err = parse(&text).unwrap_err();
    let issue = &err.issues[0];
    assert_eq!(issue.path, "listener[0].address", "{err}");
    assert!(issue.message.len() < 2048, "{} bytes", issue.message.len());
    assert!(
        issue.message.ends_with("more bytes)"),
        "{}",
        &issue.message[..100]
    );
}

#[test]
fn the_summary_counts_in_words() {
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = { certificates = [{ cert = \"a.pem\", key = \"a.key\" }] }\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = { certificates = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = \"b.pem\", key = \"b.key\" }] }\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n[[route]]\nupstream = \"u\"\n";
    let summary = parse(text).unwrap().summary();
    assert!(summary.contains("(tls, 1 certificate)\n"), "{summary}");
    assert!(summary.contains("(tls, 2 certificates)\n"), "{summary}");
    assert!(summary.contains("(round_robin, 1 backend)\n"), "{summary}");
}
