//! The response cache behind a trusted proxy (`server.trusted_proxies`): the backend gets
//! the proxy's `X-Forwarded-*` and `Forwarded` claims and builds its answer for the URL they
//! name, and it may pick the site by the `Host` it gets, so the key names both. Claims the
//! key cannot name keep the request out of the cache.

use crate::cache::{reply, x_cache};
use crate::support::*;

/// `GET path` with `Host: host` and `headers`.
fn fetch_as(c: &mut Client, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("Host", host)];
    h.extend_from_slice(headers);
    c.send(&request("GET", path, &h, b""));
    c.read_response_for("GET")
}

fn trusted_cache(origin: &Origin, engine: Engine) -> Proxy {
    Config::new()
        .upstream("main", &[origin.addr()])
        .route("main", "name = \"cached\"\ncache = { }")
        .server("trusted_proxies", "[\"127.0.0.1\"]")
        .admin("")
        .start(engine)
}

both_engines! {
    // ingress-nginx sends `X-Scheme` and `X-Forwarded-Scheme` beside `X-Forwarded-Proto` on
    // every request: from a
    // trusted proxy it is a scheme claim the key names (when it agrees), not one that keeps
    // every request out of the cache.
    fn a_trusted_proxys_x_scheme_is_keyed_as_its_scheme(engine) {
        let origin = Origin::with_handler("o", |_| reply(&[("Cache-Control", "max-age=100")], "page", false));
        let proxy = trusted_cache(&origin, engine);
        let mut c = Client::connect(proxy.addr());
        let via = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Scheme", "https"), ("X-Scheme", "https")];
        assert_eq!(x_cache(&fetch_as(&mut c, "shop.example", "/p", &via)), "MISS");
        assert_eq!(x_cache(&fetch_as(&mut c, "shop.example", "/p", &via)), "HIT");
        assert_eq!(x_cache(&fetch_as(&mut c, "shop.example", "/p", &[("X-Forwarded-Proto", "https")])), "HIT", "the same https URL");
        assert_eq!(x_cache(&fetch_as(&mut c, "shop.example", "/p", &[])), "MISS", "http is another URL");
        // Alone, it disagrees with the `X-Forwarded-Proto: http` the backend then gets.
        assert_eq!(x_cache(&fetch_as(&mut c, "shop.example", "/p", &[("X-Scheme", "https")])), "BYPASS");
        let disagree = [("X-Forwarded-Proto", "http"), ("X-Scheme", "https")];
        assert_eq!(x_cache(&fetch_as(&mut c, "shop.example", "/p", &disagree)), "BYPASS");
    }

    // Behind a trusted proxy the backend answers for the URL its X-Forwarded-Proto and -Host
    // name (a redirect to https, links to that host): the key names that URL too, or the
    // answer for http is served to https clients (a redirect loop), and one host's to
    // another's. A claim the key cannot name (a path prefix) keeps the request out.
    fn behind_a_trusted_proxy_the_key_names_the_forwarded_url(engine) {
        let origin = Origin::with_handler("o", |r| {
            let cc = ("Cache-Control", "max-age=100");
            match (r.header("x-forwarded-proto"), r.header("x-forwarded-host")) {
                (Some("http"), _) => Reply::Response {
                    status: 301,
                    headers: vec![(cc.0.into(), cc.1.into()), ("Location".into(), "https://shop.example/p".into())],
                    body: b"moved".to_vec(),
                    mode: BodyMode::Length,
                    close_after: false,
                },
                (_, host) => reply(&[cc], &format!("for {}", host.unwrap_or("?")), false),
            }
        });
        let proxy = trusted_cache(&origin, engine);
        let mut c = Client::connect(proxy.addr());
        let via = |proto: &'static str, host: &'static str| [("X-Forwarded-Proto", proto), ("X-Forwarded-Host", host)];
        let r = fetch_as(&mut c, "example.com", "/p", &via("http", "shop.example"));
        assert_eq!((r.status(), x_cache(&r)), (301, "MISS".into()));
        let r = fetch_as(&mut c, "example.com", "/p", &via("https", "shop.example"));
        assert_eq!((r.status(), r.body_str(), x_cache(&r)), (200, "for shop.example".into(), "MISS".into()));
        let r = fetch_as(&mut c, "example.com", "/p", &via("https", "other.example"));
        assert_eq!((r.body_str(), x_cache(&r)), ("for other.example".into(), "MISS".into()));
        for (proto, host, status) in [("http", "shop.example", 301), ("https", "shop.example", 200), ("https", "other.example", 200)] {
            let r = fetch_as(&mut c, "example.com", "/p", &via(proto, host));
            assert_eq!((r.status(), x_cache(&r)), (status, "HIT".into()), "{proto}://{host}");
        }
        // Purged by the URL the backend was told.
        let r = admin_post(proxy.admin_addr(), "/cache/purge?key=https://other.example/p", None);
        assert_eq!(r.json()["purged"].as_u64(), Some(1), "{}", r.body);
        let prefixed = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "shop.example"), ("X-Forwarded-Prefix", "/app")];
        assert_eq!(x_cache(&fetch_as(&mut c, "example.com", "/p", &prefixed)), "BYPASS");
        assert_eq!(origin.request_count(), 4);
    }

    // A backend may pick the site by `Host` and build links from `X-Forwarded-Host`: one
    // host's page keyed under another's claimed URL would be served to that host's clients
    // (found by the probe7 review). The `Host` it got is keyed beside the claimed URL; a
    // claimed host that is no authority (its `/` would move into the key's path), and
    // `X-Forwarded-*` and `Forwarded` claims that disagree, keep the request out.
    fn behind_a_trusted_proxy_the_key_names_the_host_the_backend_got_too(engine) {
        let origin = Origin::with_handler("o", |r| {
            let page = format!("{} for {}", r.header("host").unwrap_or("?"), r.header("x-forwarded-host").unwrap_or("?"));
            reply(&[("Cache-Control", "max-age=100")], &page, false)
        });
        let proxy = trusted_cache(&origin, engine);
        let mut c = Client::connect(proxy.addr());
        let victim = [("X-Forwarded-Host", "victim.example")];
        let r = fetch_as(&mut c, "evil.example", "/x", &victim);
        assert_eq!((r.body_str(), x_cache(&r)), ("evil.example for victim.example".into(), "MISS".into()));
        let r = fetch_as(&mut c, "victim.example", "/x", &victim);
        assert_eq!((r.body_str(), x_cache(&r)), ("victim.example for victim.example".into(), "MISS".into()), "another Host's page");
        for host in ["evil.example", "victim.example"] {
            let r = fetch_as(&mut c, host, "/x", &victim);
            assert_eq!((r.body_str(), x_cache(&r)), (format!("{host} for victim.example"), "HIT".into()));
        }
        // A purge of the URL takes every Host's entry.
        let r = admin_post(proxy.admin_addr(), "/cache/purge?key=http://victim.example/x", None);
        assert_eq!(r.json()["purged"].as_u64(), Some(2), "{}", r.body);
        // `/en/x` is not filled through a claimed host `shop.example/en`.
        let r = fetch_as(&mut c, "shop.example", "/x", &[("X-Forwarded-Host", "shop.example/en")]);
        assert_eq!(x_cache(&r), "BYPASS");
        let r = fetch_as(&mut c, "shop.example", "/en/x", &[]);
        assert_eq!(x_cache(&r), "MISS");
        for claims in [
            [("X-Forwarded-Host", "shop.example"), ("Forwarded", "host=evil.example")],
            [("X-Forwarded-Proto", "https"), ("Forwarded", "proto=http")],
            // A front that speaks only `Forwarded`: the backend is told `http` by
            // `X-Forwarded-Proto` (this listener's) and `https` by `Forwarded`.
            [("Forwarded", "proto=https"), ("X-Real-IP", "192.0.2.1")],
        ] {
            assert_eq!(x_cache(&fetch_as(&mut c, "shop.example", "/x", &claims)), "BYPASS", "{claims:?}");
        }
    }
}
