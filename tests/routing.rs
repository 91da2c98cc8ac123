//! Route selection: exact host > wildcard host > any host, longer
//! path_prefix wins, exact path, methods and header matches. Every backend
//! answers with its own name (X-Backend header and body).
//!
//! Routes are declared in an order where "first declared wins" would give a
//! different answer than "most specific wins" for the host and prefix cases.

use crate::support::*;

const NAMES: &[&str] = &[
    "wild",
    "exact",
    "api_v1",
    "admin",
    "post",
    "canary",
    "stable",
    "exactpath",
    "aliases",
    "any",
];

struct Routing {
    proxy: Proxy,
    _origins: Vec<Origin>,
}

impl Routing {
    fn start(engine: Engine) -> Routing {
        let origins: Vec<Origin> = NAMES.iter().map(|n| Origin::start(n)).collect();
        let mut cfg = Config::new();
        for o in &origins {
            cfg = cfg.upstream(o.name(), &[o.addr()]);
        }
        let cfg = cfg
            .route("wild", "host = \"*.example.com\"")
            .route("exact", "host = \"www.example.com\"")
            .route("api_v1", "host = \"api.example\"\npath_prefix = \"/v1/\"")
            .route(
                "admin",
                "host = \"api.example\"\npath_prefix = \"/v1/admin/\"",
            )
            .route("post", "path_prefix = \"/m/\"\nmethods = [\"POST\"]")
            .route(
                "canary",
                "path_prefix = \"/c/\"\nheaders = { \"x-canary\" = \"1\" }",
            )
            .route("stable", "path_prefix = \"/c/\"")
            .route("exactpath", "path = \"/exact\"")
            .route(
                "aliases",
                "host = [\"shop.test\", \"www.shop.test\", \"*.cdn.test\"]\npath_prefix = \"/s/\"",
            )
            .route("any", "");
        Routing {
            proxy: cfg.start(engine),
            _origins: origins,
        }
    }

    /// The backend that answered, or "status NNN" if the proxy answered.
    fn ask(&self, method: &str, host: &str, path: &str, extra: &[(&str, &str)]) -> String {
        let mut headers = vec![("Host", host)];
        headers.extend_from_slice(extra);
        let body: &[u8] = if method == "POST" { b"x" } else { b"" };
        if method == "POST" {
            headers.push(("Content-Length", "1"));
        }
        let mut c = Client::connect(self.proxy.addr());
        c.send(&request(method, path, &headers, body));
        let r = c.read_response_for(method);
        if r.status() != 200 {
            return format!("status {}", r.status());
        }
        r.header("x-backend")
            .unwrap_or("<no x-backend>")
            .to_string()
    }

    fn expect(&self, method: &str, host: &str, path: &str, extra: &[(&str, &str)], want: &str) {
        let got = self.ask(method, host, path, extra);
        assert_eq!(
            got, want,
            "{method} {path} Host: {host} {extra:?} must route to {want}"
        );
    }
}

both_engines! {
    fn exact_host_beats_wildcard(engine) {
        let r = Routing::start(engine);
        r.expect("GET", "www.example.com", "/", &[], "exact");
    }
    fn wildcard_host_matches_subdomain(engine) {
        let r = Routing::start(engine);
        r.expect("GET", "foo.example.com", "/", &[], "wild");
        r.expect("GET", "bar.example.com", "/x/y", &[], "wild");
    }
    fn unmatched_host_uses_any_host_route(engine) {
        let r = Routing::start(engine);
        r.expect("GET", "other.test", "/", &[], "any");
        r.expect("GET", "example.org", "/some/path", &[], "any");
    }
    fn host_port_is_ignored_for_matching(engine) {
        let r = Routing::start(engine);
        r.expect("GET", "www.example.com:8080", "/", &[], "exact");
        r.expect("GET", "foo.example.com:443", "/", &[], "wild");
    }
    fn host_match_is_case_insensitive(engine) {
        let r = Routing::start(engine);
        r.expect("GET", "WWW.Example.COM", "/", &[], "exact");
    }
    fn longer_path_prefix_wins(engine) {
        let r = Routing::start(engine);
        r.expect("GET", "api.example", "/v1/users", &[], "api_v1");
        r.expect("GET", "api.example", "/v1/admin/users", &[], "admin");
        r.expect("GET", "api.example", "/v1/admin/", &[], "admin");
    }
    // One route for several hosts (nginx's `server_name a b;`): each name, exact or
    // wildcard, finds it, with its path condition, and no other host does.
    fn a_route_names_several_hosts(engine) {
        let r = Routing::start(engine);
        for host in ["shop.test", "WWW.shop.test:8080", "img.cdn.test"] {
            r.expect("GET", host, "/s/cart", &[], "aliases");
        }
        r.expect("GET", "shop.test", "/other", &[], "any");
        r.expect("GET", "cdn.test", "/s/cart", &[], "any");
        r.expect("GET", "other.test", "/s/cart", &[], "any");
    }
    fn exact_path_matches_only_that_path(engine) {
        let r = Routing::start(engine);
        r.expect("GET", "other.test", "/exact", &[], "exactpath");
        r.expect("GET", "other.test", "/exact?q=1", &[], "exactpath");
        r.expect("GET", "other.test", "/exact/more", &[], "any");
        r.expect("GET", "other.test", "/exactly", &[], "any");
    }
    fn methods_restrict_route(engine) {
        let r = Routing::start(engine);
        r.expect("POST", "other.test", "/m/x", &[], "post");
        r.expect("GET", "other.test", "/m/x", &[], "any");
        r.expect("PUT", "other.test", "/m/x", &[], "any");
    }
    fn header_match_selects_canary(engine) {
        let r = Routing::start(engine);
        r.expect("GET", "other.test", "/c/x", &[("X-Canary", "1")], "canary");
        r.expect("GET", "other.test", "/c/x", &[], "stable");
        r.expect("GET", "other.test", "/c/x", &[("X-Canary", "2")], "stable");
        // Named in Connection, the field is not forwarded, and routes nothing.
        r.expect("GET", "other.test", "/c/x", &[("X-Canary", "1"), ("Connection", "X-Canary")], "stable");
    }
    fn keepalive_connection_routes_each_request(engine) {
        // Routing is per request, not per connection.
        let r = Routing::start(engine);
        let mut c = Client::connect(r.proxy.addr());
        for (host, path, want) in [
            ("www.example.com", "/", "exact"),
            ("foo.example.com", "/", "wild"),
            ("api.example", "/v1/admin/x", "admin"),
            ("other.test", "/", "any"),
            ("www.example.com", "/", "exact"),
        ] {
            c.send(&get(host, path));
            let resp = c.read_response();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.header("x-backend"), Some(want), "{host}{path} on a reused client connection");
            assert_eq!(resp.body_str(), want);
        }
    }
}

both_engines! {
    fn round_robin_spreads_requests(engine) {
        let a = Origin::start("a");
        let b = Origin::start("b");
        let proxy = Config::new()
            .upstream_with("pool", &[a.addr(), b.addr()], "balance = \"round_robin\"")
            .route("pool", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for _ in 0..20 {
            c.send(&get("example.com", "/"));
            assert_eq!(c.read_response().status(), 200);
        }
        let (na, nb) = (a.request_count(), b.request_count());
        assert_eq!(na + nb, 20);
        assert!(na == 10 && nb == 10, "round robin over 2 backends: a={na} b={nb}");
    }
    fn weighted_balance_follows_weights(engine) {
        let a = Origin::start("a");
        let b = Origin::start("b");
        let backends = format!("{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 1 }}", a.addr(), b.addr());
        let mut cfg = Config::new().route("pool", "");
        cfg.upstreams.push(format!("name = \"pool\"\nbalance = \"weighted\"\nbackends = [{backends}]"));
        let proxy = cfg.start(engine);
        let mut c = Client::connect(proxy.addr());
        for _ in 0..400 {
            c.send(&get("example.com", "/"));
            assert_eq!(c.read_response().status(), 200);
        }
        let (na, nb) = (a.request_count(), b.request_count());
        assert_eq!(na + nb, 400);
        assert!((270..=330).contains(&na), "weights 3:1 over 400 requests: a={na} b={nb}");
    }
}

both_engines! {
    // `redirect_https.except`: an ACME client answering http-01 challenges on plain http
    // (certbot --standalone or --webroot behind a backend) gets its requests routed while
    // everything else on the listener is redirected; the prefix is compared as routes
    // compare paths, so an escaped or doubled spelling is routed too, and a path that only
    // starts like it (no trailing `/`) is redirected.
    fn redirect_https_routes_the_paths_it_excepts(engine) {
        let (acme, site) = (Origin::start("acme"), Origin::start("site"));
        let proxy = Config::new()
            .only_listener("address = \"127.0.0.1:0\"\nredirect_https = { except = [\"/.well-known/acme-challenge/\"] }")
            .upstream("acme", &[acme.addr()])
            .upstream("site", &[site.addr()])
            .route("acme", "path_prefix = \"/.well-known/acme-challenge/\"")
            .route("site", "")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for path in [
            "/.well-known/acme-challenge/tok3n",
            "/.well-known/acme-challenge/%74ok",
            "//.well-known//acme-challenge/t",
        ] {
            c.send(&get("a.example", path));
            let r = c.read_response();
            assert_eq!((r.status(), r.body_str()), (200, "acme".into()), "{path}");
        }
        for path in ["/.well-known/acme-challenge", "/", "/login?next=/"] {
            c.send(&get("a.example", path));
            let r = c.read_response();
            assert_eq!(r.status(), 301, "{path}");
            assert_eq!(r.header("Location"), Some(&*format!("https://a.example{path}")));
        }
        assert_eq!((acme.request_count(), site.request_count()), (3, 0));
    }
}
