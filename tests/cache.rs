//! The per-route response cache (issue 18, first step), with a real client and a backend
//! that answers with chosen headers: hits never reach the backend, what RFC 9111 forbids is
//! not stored, `Vary` variants, `HEAD` and conditional requests from the cache, expiry, the
//! size bound, the admission policy, purge, the memory bound on responses being stored, and
//! the `X-Cache` values (collapsed misses: `cache_collapse.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// A backend reply with `headers` and `body` (Content-Length, or chunked).
pub(crate) fn reply(headers: &[(&str, &str)], body: &str, chunked: bool) -> Reply {
    Reply::Response {
        status: 200,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
        mode: if chunked {
            BodyMode::Chunked
        } else {
            BodyMode::Length
        },
        close_after: false,
    }
}

/// A proxy whose only route has `cache = { extra }` in front of `origin`.
pub(crate) fn cached(origin: &Origin, cache: &str, engine: Engine) -> Proxy {
    Config::new()
        .upstream("main", &[origin.addr()])
        .route("main", "path_prefix = \"/nc/\"\nname = \"plain\"")
        .route("main", &format!("name = \"cached\"\ncache = {{ {cache} }}"))
        .admin("")
        .start(engine)
}

fn fetch(c: &mut Client, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("Host", "example.com")];
    h.extend_from_slice(headers);
    c.send(&request(method, path, &h, b""));
    c.read_response_for(method)
}

pub(crate) fn x_cache(r: &Response) -> String {
    r.header("X-Cache").unwrap_or("none").to_string()
}

both_engines! {
    // From the review: a close-delimited body is never stored (its end cannot be told from a
    // backend that died mid-body); a stored 404 answers a conditional request with its 404,
    // not a 304; on a route whose request header rules change what the backend sees, a
    // response with Vary is not stored, nor one that does not say public.
    fn what_the_review_found_is_not_stored_or_served(engine) {
        let origin = Origin::with_handler("o", |r| {
            let cc = ("Cache-Control", "max-age=100");
            match r.path() {
                "/close" => Reply::Response {
                    status: 200,
                    headers: vec![("Cache-Control".into(), "max-age=100".into())],
                    body: b"cut?".to_vec(),
                    mode: BodyMode::Close,
                    close_after: true,
                },
                "/missing" => Reply::Response {
                    status: 404,
                    headers: vec![("Cache-Control".into(), "max-age=100".into()), ("ETag".into(), "\"e\"".into())],
                    body: b"no".to_vec(),
                    mode: BodyMode::Length,
                    close_after: false,
                },
                "/vary" => reply(&[("Cache-Control", "public, max-age=100"), ("Vary", "X-Team")], "v", false),
                "/public" => reply(&[("Cache-Control", "public, max-age=100")], "p", false),
                _ => reply(&[cc], "private by default", false),
            }
        });
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "path_prefix = \"/r/\"\nstrip_prefix = \"/r\"\nrequest_headers = { set = { \"X-Team\" = \"blue\" } }\ncache = { size = \"1MiB\" }")
            .route("main", "cache = { size = \"1MiB\" }")
            .start(engine);
        let twice = |path: &str, headers: &[(&str, &str)]| {
            let mut c = Client::connect(proxy.addr());
            let before = origin.request_count();
            let a = fetch(&mut c, "GET", path, headers);
            let b = fetch(&mut c, "GET", path, headers);
            (a, b, origin.request_count() - before)
        };
        let (_, b, n) = twice("/close", &[]);
        assert_eq!((n, x_cache(&b).as_str()), (2, "BYPASS"), "close-delimited is not stored");
        let (a, b, n) = twice("/missing", &[("If-None-Match", "*")]);
        assert_eq!((a.status(), b.status(), n), (404, 404, 1), "a stored 404 stays a 404");
        let (_, b, n) = twice("/r/vary", &[]);
        assert_eq!((n, x_cache(&b).as_str()), (2, "BYPASS"), "Vary on a route that sets fields");
        let (_, b, n) = twice("/r/other", &[]);
        assert_eq!((n, x_cache(&b).as_str()), (2, "BYPASS"), "not public on such a route");
        let (_, b, n) = twice("/r/public", &[]);
        assert_eq!((n, x_cache(&b).as_str()), (1, "HIT"), "public is stored there");
    }

    // With `compress` on the same route (operator review, session 13: every browser sends
    // `Accept-Encoding: gzip`, so its compressed misses were never stored, and a hit filled
    // by another client went out uncoded): the identity body is stored as it came, and each
    // hit is coded for its client as a relayed response is, as nginx's gzip codes its
    // proxy_cache hits. A body in memory and one in the body file (several pieces).
    fn compressed_misses_are_stored_and_hits_are_coded_per_client(engine) {
        for size in [4096, 200 * 1024] {
            let text: String = (0..size / 16).map(|i| format!("line {i} of the page\n")).collect();
            let text = text[..size].to_string();
            let body = text.clone().into_bytes();
            let origin = Origin::with_handler("o", move |_| {
                let fields = [("Cache-Control", "max-age=100"), ("Content-Type", "text/plain"), ("ETag", "\"v1\"")];
                reply(&fields, &text, false)
            });
            let proxy = Config::new()
                .upstream("main", &[origin.addr()])
                .route("main", "cache = { size = \"4MiB\" }\ncompress = { algorithms = [\"zstd\", \"gzip\"] }")
                .start(engine);
            let mut c = Client::connect(proxy.addr());
            for (accept, x) in [("gzip", "MISS"), ("gzip", "HIT"), ("zstd", "HIT"), ("gzip, zstd", "HIT")] {
                let r = fetch(&mut c, "GET", "/a", &[("Accept-Encoding", accept)]);
                let alg = if accept == "gzip" { "gzip" } else { "zstd" };
                assert_eq!((x_cache(&r).as_str(), r.header("Content-Encoding")), (x, Some(alg)), "{size} {accept}");
                assert_eq!(r.header("ETag"), Some("W/\"v1\""), "{size} {accept}");
                assert_eq!(r.header("Vary"), Some("Accept-Encoding"), "{size} {accept}");
                assert!(r.header("Content-Length").is_none());
                assert!(crate::compress::decode(alg, &r.body) == body, "{size} {accept}: the coded hit decodes to the body");
            }
            assert_eq!(origin.request_count(), 1, "{size}: the compressed miss was stored");
            // Without a coding, a range, or a HEAD: the stored identity body, as stored.
            let r = fetch(&mut c, "GET", "/a", &[]);
            assert_eq!((x_cache(&r).as_str(), r.header("Content-Encoding")), ("HIT", None), "{size}");
            assert_eq!(r.header("Vary"), Some("Accept-Encoding"), "{size}: the variant is named");
            assert!(r.body == body);
            let r = fetch(&mut c, "GET", "/a", &[("Accept-Encoding", "gzip"), ("Range", "bytes=10-19")]);
            assert_eq!((r.status(), r.header("Content-Encoding")), (206, None), "{size}: a range is of the identity body");
            assert_eq!(r.body, &body[10..20]);
            let r = fetch(&mut c, "HEAD", "/a", &[("Accept-Encoding", "gzip")]);
            assert_eq!((r.status(), r.header("Content-Encoding")), (200, None), "{size}: HEAD");
            // The weak tag a coded hit carried revalidates it (If-None-Match compares weakly).
            let r = fetch(&mut c, "GET", "/a", &[("Accept-Encoding", "gzip"), ("If-None-Match", "W/\"v1\"")]);
            assert_eq!(r.status(), 304, "{size}");
            assert_eq!(origin.request_count(), 1, "{size}");
        }
    }

    // Review 13: a compressed miss from a chunked backend stores the decoded identity body
    // (the tee sits before the encoder, after the chunked decoder), and a coded hit to an
    // HTTP/1.0 client is close-delimited (no chunked framing it cannot read).
    fn a_chunked_compressed_miss_is_stored_whole_and_a_coded_hit_to_http10_is_close_delimited(engine) {
        let text: String = (0..200 * 1024 / 16).map(|i| format!("line {i:>8} ....\n")).collect();
        let body = text.clone().into_bytes();
        let origin = Origin::with_handler("o", move |_| {
            reply(&[("Cache-Control", "max-age=100"), ("Content-Type", "text/plain")], &text, true)
        });
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "cache = { size = \"4MiB\" }\ncompress = { algorithms = [\"gzip\"] }")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        let r = fetch(&mut c, "GET", "/a", &[("Accept-Encoding", "gzip")]);
        assert_eq!((x_cache(&r).as_str(), r.header("Content-Encoding")), ("MISS", Some("gzip")));
        assert!(crate::compress::decode("gzip", &r.body) == body, "the coded miss");
        let r = fetch(&mut c, "GET", "/a", &[]);
        assert_eq!((x_cache(&r).as_str(), r.header("Content-Encoding")), ("HIT", None));
        assert_eq!(r.body.len(), body.len(), "the stored identity body");
        assert!(r.body == body, "the stored identity body");
        // HTTP/1.0 with gzip: coded, close-delimited.
        let mut raw = std::net::TcpStream::connect(proxy.addr()).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Write::write_all(&mut raw, b"GET /a HTTP/1.0\r\nHost: example.com\r\nAccept-Encoding: gzip\r\n\r\n").unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut raw, &mut got).unwrap();
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        assert!(head.contains("x-cache: hit") && head.contains("content-encoding: gzip"), "{head}");
        assert!(!head.contains("transfer-encoding") && !head.contains("content-length"), "{head}");
        assert!(crate::compress::decode("gzip", &got[end..]) == body, "the HTTP/1.0 coded hit");
        assert_eq!(origin.request_count(), 1);
    }

    // A cacheable response (chunked from the backend) is stored while relayed; the next
    // request is answered from memory: same status, fields and body, an Age, X-Cache: HIT,
    // and the backend sees nothing. A route without `cache` carries no X-Cache.
    fn a_cacheable_response_is_served_from_the_cache(engine) {
        let origin = Origin::with_handler("o", |r| {
            let body = format!("body of {}", r.target);
            reply(&[("Cache-Control", "public, max-age=100"), ("X-Origin", "o"), ("ETag", "\"v1\"")], &body, true)
        });
        let proxy = cached(&origin, "size = \"1MiB\"", engine);
        let mut c = Client::connect(proxy.addr());
        let first = fetch(&mut c, "GET", "/a?x=1", &[]);
        assert_eq!((first.status(), x_cache(&first)), (200, "MISS".into()));
        assert_eq!(first.body_str(), "body of /a?x=1");
        assert_eq!(origin.request_count(), 1);
        for _ in 0..3 {
            let hit = fetch(&mut c, "GET", "/a?x=1", &[]);
            assert_eq!((hit.status(), x_cache(&hit)), (200, "HIT".into()));
            assert_eq!(hit.body_str(), "body of /a?x=1");
            assert_eq!(hit.header("X-Origin"), Some("o"));
            assert_eq!(hit.header("Content-Length"), Some("14"));
            assert!(hit.header("Transfer-Encoding").is_none());
            let age: u64 = hit.header("Age").expect("an Age").parse().unwrap();
            assert!(age <= 2, "{age}");
        }
        assert_eq!(origin.request_count(), 1, "hits never reach the backend");
        // Another query, another host, another key.
        let other = fetch(&mut c, "GET", "/a?x=2", &[]);
        assert_eq!(x_cache(&other), "MISS");
        c.send(&get("EXAMPLE.com:80", "/a?x=1"));
        let r = c.read_response();
        assert_eq!(x_cache(&r), "HIT", "host case and the default port do not matter");
        c.send(&get("other.example", "/a?x=1"));
        assert_eq!(x_cache(&c.read_response()), "MISS");
        assert_eq!(origin.request_count(), 3);
        // HEAD from the stored GET: the head, with its length, and no body.
        let head = fetch(&mut c, "HEAD", "/a?x=1", &[]);
        assert_eq!((head.status(), x_cache(&head)), (200, "HIT".into()));
        assert_eq!(head.header("Content-Length"), Some("14"));
        assert!(head.body.is_empty());
        // The connection still works (no stray body bytes after the HEAD).
        assert_eq!(fetch(&mut c, "GET", "/a?x=1", &[]).body_str(), "body of /a?x=1");
        let plain = fetch(&mut c, "GET", "/nc/x", &[]);
        assert_eq!((plain.status(), x_cache(&plain)), (200, "none".into()));
        assert_eq!(origin.request_count(), 4);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_cache_requests_total", &[("result", "hit")]), 6.0);
        assert_eq!(m.value("edgeshard_cache_requests_total", &[("result", "miss")]), 3.0);
        assert!(m.value("edgeshard_cache_bytes", &[]) > 0.0);
        assert_eq!(m.value("edgeshard_cache_entries", &[]), 3.0);
        origin.assert_no_errors();
    }

    // What RFC 9111 keeps out of a shared cache is forwarded every time, marked BYPASS; so is
    // a request that asks for no-store or no-cache, and a non-GET.
    // `cache.valid` (nginx's `proxy_cache_valid`): responses that say nothing of their
    // freshness are stored for the lifetime given to their status, a 302 included; a status
    // it does not name, a response's own `max-age` and its `private` still rule.
    fn valid_gives_a_lifetime_to_responses_without_one(engine) {
        let origin = Origin::with_handler("o", |r| {
            let (status, headers): (u16, Vec<(String, String)>) = match r.path() {
                "/moved" => (302, vec![("Location".into(), "/new".into())]),
                "/gone" => (404, vec![]),
                "/own" => (200, vec![("Cache-Control".into(), "max-age=0".into())]),
                "/mine" => (200, vec![("Cache-Control".into(), "private".into())]),
                _ => (200, vec![]),
            };
            Reply::Response { status, headers, body: b"body".to_vec(), mode: BodyMode::Length, close_after: false }
        });
        let proxy = cached(&origin, "valid = { \"200\" = \"10m\", \"302\" = \"1m\" }", engine);
        let mut c = Client::connect(proxy.addr());
        for (path, status, second) in [
            ("/page", 200, "HIT"),
            ("/moved", 302, "HIT"),
            ("/gone", 404, "BYPASS"),
            ("/own", 200, "BYPASS"),
            ("/mine", 200, "BYPASS"),
        ] {
            let first = fetch(&mut c, "GET", path, &[]);
            assert_eq!((first.status(), x_cache(&first).as_str()), (status, if second == "HIT" { "MISS" } else { "BYPASS" }), "{path}");
            let again = fetch(&mut c, "GET", path, &[]);
            assert_eq!((again.status(), x_cache(&again).as_str()), (status, second), "{path}");
        }
        // The hit's age counts against the configured lifetime.
        let hit = fetch(&mut c, "GET", "/page", &[]);
        assert!(hit.header("Age").is_some(), "{}", hit.head.raw);
        assert_eq!(origin.request_count(), 2 + 2 * 3);
    }

    fn uncacheable_responses_and_requests_bypass_the_cache(engine) {
        let origin = Origin::with_handler("o", |r| {
            let cc = match r.path() {
                "/no-store" => "no-store, max-age=100",
                "/private" => "private, max-age=100",
                "/no-cache" => "no-cache, max-age=100",
                "/none" => "",
                _ => "max-age=100",
            };
            let mut h = vec![("Cache-Control", cc)];
            if r.path() == "/cookie" {
                h.push(("Set-Cookie", "a=b"));
            }
            if r.path() == "/star" {
                h.push(("Vary", "*"));
            }
            reply(&h, "x", false)
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        let mut expected = 0;
        for path in ["/no-store", "/private", "/no-cache", "/none", "/cookie", "/star"] {
            for _ in 0..2 {
                let r = fetch(&mut c, "GET", path, &[]);
                expected += 1;
                assert_eq!((r.status(), x_cache(&r)), (200, "BYPASS".into()), "{path}");
                assert_eq!(origin.request_count(), expected, "{path}");
            }
        }
        // Stored, but a request with no-cache or no-store goes to the backend.
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/ok", &[])), "MISS");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/ok", &[])), "HIT");
        expected += 1;
        for cc in ["no-cache", "no-store"] {
            let r = fetch(&mut c, "GET", "/ok", &[("Cache-Control", cc)]);
            assert_eq!(x_cache(&r), "BYPASS", "{cc}");
            expected += 1;
            assert_eq!(origin.request_count(), expected);
        }
        // So does a GET that a method override makes another method to frameworks that honour
        // one: its answer is not the GET's (neither served from nor stored in the cache).
        for name in ["X-HTTP-Method-Override", "X-HTTP-Method", "X_Method_Override"] {
            let r = fetch(&mut c, "GET", "/ok", &[(name, "DELETE")]);
            assert_eq!(x_cache(&r), "BYPASS", "{name}");
            expected += 1;
            assert_eq!(origin.request_count(), expected);
            assert_eq!(origin.last_request().header(name), Some("DELETE"), "relayed");
        }
        // With Authorization: not stored unless public or s-maxage.
        let r = fetch(&mut c, "GET", "/auth", &[("Authorization", "Bearer t")]);
        assert_eq!(x_cache(&r), "BYPASS");
        let r = fetch(&mut c, "DELETE", "/ok", &[]);
        assert_eq!(x_cache(&r), "BYPASS");
        assert_eq!(origin.request_count(), expected + 2);
    }

    // `Vary` keeps one entry per value of the named request fields.
    fn only_if_cached_gets_the_stored_response_or_504(engine) {
        // RFC 9111 §5.2.1.7: a stored response fit for the request, or 504; never the backend.
        let origin = Origin::with_handler("o", |_| reply(&[("Cache-Control", "max-age=100")], "stored", false));
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        let oic = [("Cache-Control", "only-if-cached")];
        assert_eq!(fetch(&mut c, "GET", "/oic", &oic).status(), 504);
        assert_eq!(origin.request_count(), 0, "only-if-cached never goes to the backend");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/oic", &[])), "MISS");
        let r = fetch(&mut c, "GET", "/oic", &oic);
        assert_eq!((r.status(), x_cache(&r), r.body_str()), (200, "HIT".to_string(), "stored".to_string()));
        assert_eq!(origin.request_count(), 1);
    }

    fn vary_separates_variants(engine) {
        let origin = Origin::with_handler("o", |r| {
            let lang = r.header("Accept-Language").unwrap_or("-").to_string();
            reply(&[("Cache-Control", "max-age=100"), ("Vary", "Accept-Language")], &lang, false)
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        for (lang, result, count) in [
            ("en", "MISS", 1),
            ("fr", "MISS", 2),
            ("en", "HIT", 2),
            ("fr", "HIT", 2),
            ("de", "MISS", 3),
        ] {
            let r = fetch(&mut c, "GET", "/v", &[("Accept-Language", lang)]);
            assert_eq!((x_cache(&r), r.body_str()), (result.to_string(), lang.to_string()));
            assert_eq!(origin.request_count(), count, "{lang}");
        }
        let r = fetch(&mut c, "GET", "/v", &[]);
        assert_eq!((x_cache(&r), r.body_str()), ("MISS".into(), "-".into()));
        // A spelling a CGI or WSGI backend reads as the same field is a variant of its own:
        // `Accept_Language: it` is not stored as the answer for no Accept-Language.
        let r = fetch(&mut c, "GET", "/u", &[("Accept_Language", "it")]);
        assert_eq!(x_cache(&r), "MISS");
        let r = fetch(&mut c, "GET", "/u", &[]);
        assert_eq!(x_cache(&r), "MISS", "the underscore spelling's answer was served for none");
        let r = fetch(&mut c, "GET", "/u", &[("accept_language", "it")]);
        assert_eq!(x_cache(&r), "HIT", "and it is found again in any case");
        // Nor is it the answer for `Accept-Language: it`: a backend that does not read the
        // `_` spelling (most are not CGI) answers it with its default, which one request
        // would otherwise store for every Italian client.
        let r = fetch(&mut c, "GET", "/u", &[("Accept-Language", "it")]);
        assert_eq!((x_cache(&r), r.body_str()), ("MISS".into(), "it".into()));
        let r = fetch(&mut c, "GET", "/w", &[("Accept_Language", "fr")]);
        assert_eq!((x_cache(&r), r.body_str()), ("MISS".into(), "-".into()), "this origin does not read it");
        let r = fetch(&mut c, "GET", "/w", &[("Accept-Language", "fr")]);
        assert_eq!((x_cache(&r), r.body_str()), ("MISS".into(), "fr".into()), "poisoned by the _ spelling");
    }

    // The key holds what the backend received: a field the client's `Connection` names is
    // not forwarded, so its answer is the variant for no such field, not for the value sent.
    // A `Vary` on a field the proxy writes (`X-Forwarded-For`) is not stored at all.
    fn vary_keys_on_the_fields_the_backend_received(engine) {
        let origin = Origin::with_handler("o", |r| {
            let lang = r.header("Accept-Language").unwrap_or("-").to_string();
            let vary = if r.path() == "/xff" { "X-Forwarded-For" } else { "Accept-Language" };
            reply(&[("Cache-Control", "max-age=100"), ("Vary", vary)], &lang, false)
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        let hidden = [("Accept-Language", "fr"), ("Connection", "Accept-Language")];
        let r = fetch(&mut c, "GET", "/v", &hidden);
        assert_eq!((x_cache(&r), r.body_str()), ("MISS".into(), "-".into()));
        for (lang, result, body) in [(Some("fr"), "MISS", "fr"), (None, "HIT", "-"), (Some("fr"), "HIT", "fr")] {
            let fields: Vec<(&str, &str)> = lang.map(|l| ("Accept-Language", l)).into_iter().collect();
            let r = fetch(&mut c, "GET", "/v", &fields);
            assert_eq!((x_cache(&r), r.body_str()), (result.to_string(), body.to_string()), "{lang:?}");
        }
        let before = origin.request_count();
        for _ in 0..2 {
            assert_eq!(x_cache(&fetch(&mut c, "GET", "/xff", &[])), "BYPASS", "Vary: X-Forwarded-For");
        }
        assert_eq!(origin.request_count(), before + 2, "never answered from the cache");
    }

    // The same for the request id's field under a configured name: the client's `X-Trace`
    // never reaches the backend (the proxy writes its own), so a key on it would be a key on
    // a value nobody answered for.
    fn vary_on_a_configured_request_id_field_is_not_stored(engine) {
        let origin = Origin::with_handler("o", |r| {
            let seen = r.header("X-Trace").unwrap_or("-").to_string();
            reply(&[("Cache-Control", "max-age=100"), ("Vary", "X-Trace")], &seen, false)
        });
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "cache = { }")
            .section("request_id", "header = \"X-Trace\"")
            .start(engine);
        let mut c = Client::connect(proxy.addr());
        for i in 1..=2 {
            let r = fetch(&mut c, "GET", "/v", &[("X-Trace", "chosen-by-client")]);
            assert_eq!(x_cache(&r), "BYPASS", "{i}");
            assert_ne!(r.body_str(), "chosen-by-client", "the backend got the proxy's id");
            assert_eq!(origin.request_count(), i);
        }
    }

    // `max-age` given twice (a framework's default appended to the application's
    // `max-age=0`) keeps the strictest value: not stored. Two `Expires` lines: stale.
    fn a_directive_given_twice_keeps_its_strictest_value(engine) {
        let origin = Origin::with_handler("o", |r| {
            let fields: &[(&str, &str)] = match r.path() {
                "/one-field" => &[("Cache-Control", "max-age=0, max-age=3600")],
                "/two-fields" => &[("Cache-Control", "max-age=0"), ("Cache-Control", "max-age=3600")],
                "/expires" => &[
                    ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                    ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ],
                _ => &[("Cache-Control", "max-age=3600, max-age=60")],
            };
            reply(fields, "x", false)
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        for path in ["/one-field", "/two-fields", "/expires"] {
            for i in 1..=2 {
                assert_eq!(x_cache(&fetch(&mut c, "GET", path, &[])), "BYPASS", "{path} {i}");
            }
        }
        let before = origin.request_count();
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/sixty", &[])), "MISS");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/sixty", &[])), "HIT");
        assert_eq!(origin.request_count(), before + 1);
    }

    // A `Cache-Control` the backend's `Connection` names is for its hop only: the client
    // never sees it, and the response is not stored by it.
    fn a_connection_named_cache_control_stores_nothing(engine) {
        let origin = Origin::with_handler("o", |_| {
            reply(&[("Cache-Control", "max-age=100"), ("Connection", "Cache-Control")], "x", false)
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        for i in 1..=2 {
            let r = fetch(&mut c, "GET", "/h", &[]);
            assert_eq!(x_cache(&r), "BYPASS", "{i}");
            assert!(r.header("cache-control").is_none(), "{:?}", r.head);
            assert_eq!(origin.request_count(), i);
        }
    }

    // If-None-Match (weak comparison) and If-Modified-Since against the stored ETag and
    // Last-Modified: 304 from the cache, without a body.
    fn conditional_requests_get_304_from_the_cache(engine) {
        let origin = Origin::with_handler("o", |_| {
            reply(&[
                ("Cache-Control", "max-age=100"),
                ("ETag", "W/\"v1\""),
                ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ], "content", false)
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/c", &[])), "MISS");
        for h in [
            ("If-None-Match", "\"v1\""),
            ("If-None-Match", "\"x\", W/\"v1\""),
            ("If-None-Match", "*"),
            ("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("If-Modified-Since", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ] {
            let r = fetch(&mut c, "GET", "/c", &[h]);
            assert_eq!((r.status(), x_cache(&r)), (304, "HIT".into()), "{h:?}");
            assert!(r.body.is_empty());
            assert_eq!(r.header("ETag"), Some("W/\"v1\""));
        }
        for h in [
            ("If-None-Match", "\"v2\""),
            ("If-Modified-Since", "Sat, 05 Nov 1994 08:49:37 GMT"),
        ] {
            let r = fetch(&mut c, "GET", "/c", &[h]);
            assert_eq!((r.status(), r.body_str()), (200, "content".into()), "{h:?}");
        }
        assert_eq!(origin.request_count(), 1);
    }

    // Freshness: an `Age` the backend reports counts (a response already as old as its
    // max-age is never stored; a younger one is served with its age added), and an entry
    // is served only until its lifetime ends.
    fn entries_expire(engine) {
        let origin = Origin::with_handler("o", |r| match r.path() {
            "/old" => reply(&[("Cache-Control", "max-age=10"), ("Age", "10")], "o", false),
            "/aged" => reply(&[("Cache-Control", "max-age=100"), ("Age", "30")], "a", false),
            "/expires" => reply(&[
                ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("Expires", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ], "e", false),
            _ => reply(&[("Cache-Control", "max-age=2")], "s", false),
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        for path in ["/old", "/old", "/expires", "/expires"] {
            assert_eq!(x_cache(&fetch(&mut c, "GET", path, &[])), "BYPASS", "{path}");
        }
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/aged", &[])), "MISS");
        let r = fetch(&mut c, "GET", "/aged", &[]);
        let age: u64 = r.header("Age").unwrap().parse().unwrap();
        assert_eq!(x_cache(&r), "HIT");
        assert!((30..=32).contains(&age), "{age}");
        // max-age=2: a hit while younger than two seconds, a miss once it is older. Ages are
        // whole seconds and the entry may be stored one second old already (its Date was the
        // previous second), so max-age=1 could be stale at once. What the test waits for is a
        // moment in time (the entry's age), so it waits until deadlines measured from just
        // after the store: 0.5 s (still fresh) and 2.2 s (certainly stale).
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/short", &[])), "MISS");
        let stored = Instant::now();
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/short", &[])), "HIT");
        wait_until(stored + Duration::from_millis(500));
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/short", &[])), "HIT", "expired too early");
        wait_until(stored + Duration::from_millis(2200));
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/short", &[])), "MISS", "never expired");
    }

    // An `Age` given as a list, on one line or several, counts by its first member (RFC 9111
    // §5.1): `7200, 0` is two hours old, `0, 7200` is new. An `Age` that is no number
    // (`abc`, `-7200`, `7200.0`, `7200;foo=bar`) is stale, not 0: an upstream cache said
    // the response is old, and reading it as new would serve it as fresh for its max-age
    // (http-cache-tests' age-parse tests).
    fn an_age_list_counts_by_its_first_member_and_an_invalid_age_as_stale(engine) {
        let origin = Origin::with_handler("o", |r| {
            let age: &[(&str, &str)] = match r.path() {
                "/old-first" => &[("Age", "7200, 0")],
                "/old-first-lines" => &[("Age", "7200"), ("Age", "0")],
                "/alpha" => &[("Age", "abc")],
                "/negative" => &[("Age", "-7200")],
                "/float" => &[("Age", "7200.0")],
                "/parameter" => &[("Age", "7200;foo=bar")],
                "/new-first" => &[("Age", "0, 7200")],
                _ => &[("Age", "0"), ("Age", "7200")],
            };
            let mut fields = vec![("Cache-Control", "max-age=3600")];
            fields.extend_from_slice(age);
            reply(&fields, "x", false)
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        for path in ["/old-first", "/old-first-lines", "/alpha", "/negative", "/float", "/parameter"] {
            for i in 1..=2 {
                assert_eq!(x_cache(&fetch(&mut c, "GET", path, &[])), "BYPASS", "{path} {i}");
            }
        }
        assert_eq!(origin.request_count(), 12, "none was stored");
        for path in ["/new-first", "/new-first-lines"] {
            assert_eq!(x_cache(&fetch(&mut c, "GET", path, &[])), "MISS", "{path}");
            let r = fetch(&mut c, "GET", path, &[]);
            assert_eq!(x_cache(&r), "HIT", "{path}");
            // The hit's own age, one number: not the stored list, nor its 7200.
            let age: u64 = r.header("Age").expect("an Age").parse().expect("one number");
            assert!(age < 3600, "{path}: {age}");
        }
        assert_eq!(origin.request_count(), 14);
    }

    // A route's cache never holds more than its size: older entries are evicted (least
    // recently used first) and counted; a body over max_object passes through uncached.
    fn the_cache_stays_within_its_size(engine) {
        let origin = Origin::with_handler("o", |r| {
            let n = if r.path() == "/big" { 5000 } else { 3000 };
            reply(&[("Cache-Control", "max-age=100")], &"b".repeat(n), false)
        });
        let proxy = cached(&origin, "size = \"16KiB\", max_object = \"4KiB\"", engine);
        let admin = proxy.admin_addr();
        let mut c = Client::connect(proxy.addr());
        for i in 0..12 {
            let r = fetch(&mut c, "GET", &format!("/p{i}"), &[]);
            assert_eq!((x_cache(&r), r.body.len()), ("MISS".into(), 3000));
            // Keep /p0 recently used: it survives.
            assert_eq!(x_cache(&fetch(&mut c, "GET", "/p0", &[])), "HIT", "{i}");
            let m = scrape(admin, None);
            assert!(m.value("edgeshard_cache_bytes", &[]) <= 16384.0, "{i}");
        }
        let m = scrape(admin, None);
        let entries = m.value("edgeshard_cache_entries", &[]);
        assert!((2.0..=4.0).contains(&entries), "{entries}");
        assert_eq!(m.value("edgeshard_cache_evictions_total", &[]), 12.0 - entries);
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/p11", &[])), "HIT");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/p1", &[])), "MISS", "evicted");
        for _ in 0..2 {
            let r = fetch(&mut c, "GET", "/big", &[]);
            assert_eq!((x_cache(&r), r.body.len()), ("BYPASS".into(), 5000));
        }
        assert_eq!(origin.request_count(), 12 + 1 + 2);
    }

    // cache.policy = "tinylfu" (the default): URLs asked for once cannot flush one asked for
    // often from a full store (and are counted); with "lru" they do.
    fn one_off_urls_do_not_flush_a_popular_one(engine) {
        let origin = Origin::with_handler("o", |_| {
            reply(&[("Cache-Control", "max-age=100")], &"b".repeat(3000), false)
        });
        for (policy, survives) in [("tinylfu", true), ("lru", false)] {
            let proxy = cached(&origin, &format!("size = \"16KiB\", policy = \"{policy}\""), engine);
            let mut c = Client::connect(proxy.addr());
            for _ in 0..5 {
                fetch(&mut c, "GET", "/hot", &[]);
            }
            // 16 KiB holds five of these entries: the scan overflows it.
            for i in 0..12 {
                let r = fetch(&mut c, "GET", &format!("/scan{i}"), &[]);
                assert_eq!(x_cache(&r), "MISS", "{policy} {i}");
            }
            let hot = x_cache(&fetch(&mut c, "GET", "/hot", &[]));
            assert_eq!(hot == "HIT", survives, "{policy}: /hot was {hot}");
            let m = scrape(proxy.admin_addr(), None);
            let rejected = m.value("edgeshard_cache_admission_rejected_total", &[]);
            assert_eq!(rejected > 0.0, survives, "{policy}: {rejected} rejected");
            assert!(m.value("edgeshard_cache_bytes", &[]) <= 16384.0);
        }
    }

    // A purge while a response for the key is being fetched: that response is relayed but
    // not stored (it may be what the purge was for), and the next request fetches again.
    fn a_fill_in_flight_during_a_purge_is_not_stored(engine) {
        let gate = Gate::default();
        let g = gate.clone();
        let origin = Origin::with_handler("o", move |r| {
            if r.path() == "/slow" && (r.conn, r.seq) == (0, 0) {
                g.wait(Duration::from_secs(20));
            }
            reply(&[("Cache-Control", "max-age=100")], "p", false)
        });
        let proxy = cached(&origin, "", engine);
        let admin = proxy.admin_addr();
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/slow"));
        assert!(origin.wait_for(Duration::from_secs(10), |s| !s.heads.is_empty()), "the fetch began");
        let r = admin_post(admin, "/cache/purge?key=http://example.com/slow", None);
        assert_eq!((r.status, r.json()["purged"].as_u64()), (200, Some(0)), "{}", r.body);
        gate.open();
        assert_eq!(x_cache(&c.read_response()), "MISS");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/slow", &[])), "MISS", "stored despite the purge");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/slow", &[])), "HIT");
        assert_eq!(origin.request_count(), 2);
    }

    // RFC 9111 §4.4: an unsafe method's 2xx or 3xx removes the entries of its URL (every
    // variant) on the shard that relayed it; a 4xx or 5xx, a safe method, or another URL
    // leaves them.
    fn an_unsafe_methods_success_removes_its_urls_entries(engine) {
        let version = Arc::new(AtomicUsize::new(1));
        let v = version.clone();
        let origin = Origin::with_handler("o", move |r| {
            if r.method != "GET" {
                if r.header("X-Fail").is_some() {
                    return Reply::Response { status: 409, headers: vec![], body: b"no".to_vec(), mode: BodyMode::Length, close_after: false };
                }
                v.fetch_add(1, Ordering::SeqCst);
                return reply(&[], "changed", false);
            }
            let lang = r.header("Accept-Language").unwrap_or("-").to_string();
            let body = format!("v{} {lang}", v.load(Ordering::SeqCst));
            reply(&[("Cache-Control", "max-age=100"), ("Vary", "Accept-Language")], &body, false)
        });
        let proxy = cached(&origin, "", engine);
        let mut c = Client::connect(proxy.addr());
        let fr = [("Accept-Language", "fr")];
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            for (path, h) in [("/doc", &[][..]), ("/doc", &fr[..]), ("/other", &[][..])] {
                fetch(&mut c, "GET", path, h);
                assert_eq!(x_cache(&fetch(&mut c, "GET", path, h)), "HIT", "{method}: {path} stored");
            }
            // Refused: nothing changed, the entries stay.
            assert_eq!(fetch(&mut c, method, "/doc", &[("X-Fail", "1")]).status(), 409);
            assert_eq!(x_cache(&fetch(&mut c, "GET", "/doc", &[])), "HIT", "{method}: a 409 leaves it");
            let r = fetch(&mut c, method, "/doc", &[]);
            assert_eq!((r.status(), x_cache(&r)), (200, "BYPASS".into()), "{method}");
            let n = version.load(Ordering::SeqCst);
            for h in [&[][..], &fr[..]] {
                let after = fetch(&mut c, "GET", "/doc", h);
                assert_eq!(x_cache(&after), "MISS", "{method} /doc succeeded: its old variants go");
                assert!(after.body_str().starts_with(&format!("v{n} ")), "{}", after.body_str());
            }
            assert_eq!(x_cache(&fetch(&mut c, "GET", "/other", &[])), "HIT", "{method}: another URL stays");
        }
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_cache_invalidated_total", &[]), 8.0, "two variants, four times");
    }

    // A GET whose fetch was in flight when a PUT changed the resource (sent before it) is
    // relayed but not stored: the writer then reads the new version, not the old one.
    fn a_fill_in_flight_is_not_stored_over_an_invalidation(engine) {
        let (gate, arrived, version) = (Gate::default(), Gate::default(), Arc::new(AtomicUsize::new(1)));
        let (g, a, v) = (gate.clone(), arrived.clone(), version.clone());
        let origin = Origin::with_handler("o", move |r| {
            if r.method != "GET" {
                v.fetch_add(1, Ordering::SeqCst);
                return reply(&[], "changed", false);
            }
            let seen = v.load(Ordering::SeqCst);
            if r.header("x-hold").is_some() {
                // Its version read: the PUT may go.
                a.open();
                g.wait(Duration::from_secs(20));
            }
            reply(&[("Cache-Control", "max-age=100")], &format!("v{seen}"), false)
        });
        let proxy = cached(&origin, "", engine);
        let mut reader = Client::connect(proxy.addr());
        reader.send(&request("GET", "/doc", &[("Host", "example.com"), ("X-Hold", "1")], b""));
        assert!(arrived.wait(Duration::from_secs(10)), "the held GET at the origin");
        let mut writer = Client::connect(proxy.addr());
        let r = fetch(&mut writer, "PUT", "/doc", &[("Content-Length", "0")]);
        assert_eq!(r.status(), 200);
        gate.open();
        let old = reader.read_response_for("GET");
        assert_eq!((x_cache(&old), old.body_str()), ("MISS".into(), "v1".into()));
        let after = fetch(&mut writer, "GET", "/doc", &[]);
        assert_eq!((x_cache(&after), after.body_str()), ("MISS".into(), "v2".into()), "the old version was stored after the PUT");
        assert_eq!(x_cache(&fetch(&mut writer, "GET", "/doc", &[])), "HIT");
    }

    // Only an invalidation of its own URL keeps a fetch from being stored: a POST to
    // another URL meanwhile does not.
    fn another_urls_invalidation_does_not_stop_a_store(engine) {
        let gate = Gate::default();
        let g = gate.clone();
        let origin = Origin::with_handler("o", move |r| {
            if r.method != "GET" {
                return reply(&[], "noted", false);
            }
            if r.header("x-hold").is_some() {
                g.wait(Duration::from_secs(20));
            }
            reply(&[("Cache-Control", "max-age=100")], "doc", false)
        });
        let proxy = cached(&origin, "", engine);
        let mut reader = Client::connect(proxy.addr());
        reader.send(&request("GET", "/doc", &[("Host", "example.com"), ("X-Hold", "1")], b""));
        assert!(origin.wait_for(Duration::from_secs(10), |o| o.requests.len() == 1), "the held GET at the origin");
        let mut poster = Client::connect(proxy.addr());
        for n in 0..64 {
            let r = fetch(&mut poster, "POST", &format!("/track?n={n}"), &[("Content-Length", "0")]);
            assert_eq!(r.status(), 200);
        }
        gate.open();
        assert_eq!(x_cache(&reader.read_response_for("GET")), "MISS");
        assert_eq!(x_cache(&fetch(&mut reader, "GET", "/doc", &[])), "HIT", "/doc was not stored");
    }

    // `bypass`: a request carrying a session cookie, a debug header or a `nocache` argument
    // (in any spelling a backend reads as one) is neither answered from the cache nor
    // stored: its answer may be that user's (web cache deception through `cache.valid`).
    fn requests_carrying_a_bypass_key_are_neither_served_nor_stored(engine) {
        let origin = Origin::with_handler("o", |r| {
            let who = r.header("Cookie").unwrap_or("anyone").to_string();
            reply(&[("Cache-Control", "max-age=100")], &format!("page for {who}"), false)
        });
        let proxy = cached(&origin, "bypass = [\"cookie:session\", \"header:X-Debug\", \"query:nocache\"]", engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/p", &[])), "MISS");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/p", &[])), "HIT");
        for (path, h) in [
            ("/p", ("Cookie", "theme=dark; session=alice")),
            ("/p", ("Cookie", "SESSION=%61lice")),
            ("/p", ("X_Debug", "1")),
            ("/p?nocache=yes", ("Accept", "*/*")),
        ] {
            let r = fetch(&mut c, "GET", path, &[h]);
            assert_eq!(x_cache(&r), "BYPASS", "{path} {h:?}");
        }
        // Not stored: the next plain request still gets the shared page.
        let r = fetch(&mut c, "GET", "/p", &[]);
        assert_eq!((x_cache(&r), r.body_str()), ("HIT".into(), "page for anyone".into()));
        let r = fetch(&mut c, "GET", "/q", &[("Cookie", "session=bob")]);
        assert_eq!(x_cache(&r), "BYPASS");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/q", &[])), "MISS", "bob's page was not stored");
        // Empty, `0`, or another cookie: cached as usual.
        for h in [("Cookie", "session="), ("X-Debug", "0"), ("Cookie", "theme=dark")] {
            assert_eq!(x_cache(&fetch(&mut c, "GET", "/p", &[h])), "HIT", "{h:?}");
        }
        assert_eq!(origin.request_count(), 1 + 4 + 2);
    }

    // POST /cache/purge: one key (with its variants), a prefix, everything.
    fn purge_through_the_admin_api(engine) {
        let origin = Origin::with_handler("o", |_| reply(&[("Cache-Control", "max-age=100")], "p", false));
        let proxy = cached(&origin, "", engine);
        let admin = proxy.admin_addr();
        let mut c = Client::connect(proxy.addr());
        let paths = ["/a?q=1", "/b/1", "/b/2", "/c"];
        let all_hit = |c: &mut Client, expect: [&str; 4]| {
            for (p, e) in paths.iter().zip(expect) {
                assert_eq!(x_cache(&fetch(c, "GET", p, &[])), e, "{p}");
            }
        };
        all_hit(&mut c, ["MISS"; 4]);
        all_hit(&mut c, ["HIT"; 4]);
        // The URL as a client wrote it (host case, default port): keyed as requests are.
        let r = admin_post(admin, "/cache/purge?key=http%3A%2F%2FExample.COM%3A80%2Fa%3Fq%3D1", None);
        assert_eq!((r.status, r.json()["purged"].as_u64()), (200, Some(1)), "{}", r.body);
        all_hit(&mut c, ["MISS", "HIT", "HIT", "HIT"]);
        let r = admin_post(admin, "/cache/purge?prefix=http://example.com/b/", None);
        assert_eq!(r.json()["purged"].as_u64(), Some(2), "{}", r.body);
        all_hit(&mut c, ["HIT", "MISS", "MISS", "HIT"]);
        let r = admin_post(admin, "/cache/purge?all", None);
        assert_eq!(r.json()["purged"].as_u64(), Some(4), "{}", r.body);
        all_hit(&mut c, ["MISS"; 4]);
        // A stored target with an escape, as clients send a space: found by the URL as
        // written (`%20`, decoded once by the query) and by its doubly encoded form.
        for key in ["/a%20b", "/a%2520b"] {
            assert_eq!(x_cache(&fetch(&mut c, "GET", "/a%20b", &[])), "MISS");
            let r = admin_post(admin, &format!("/cache/purge?key=http://example.com{key}"), None);
            assert_eq!(r.json()["purged"].as_u64(), Some(1), "{key}: {}", r.body);
        }
        // Escapes in either case are one URL (RFC 3986 §6.2.2.1): one entry, found by
        // either spelling.
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/caf%c3%a9", &[])), "MISS");
        assert_eq!(x_cache(&fetch(&mut c, "GET", "/caf%C3%A9", &[])), "HIT");
        let r = admin_post(admin, "/cache/purge?key=http://example.com/caf%c3%a9", None);
        assert_eq!(r.json()["purged"].as_u64(), Some(1), "{}", r.body);
        assert_eq!(admin_post(admin, "/cache/purge?what=1", None).status, 400);
        for bad in ["%+f", "%zz", "%f", "%-1"] {
            let r = admin_post(admin, &format!("/cache/purge?key={bad}"), None);
            assert_eq!(r.status, 400, "a bad escape {bad}: {}", r.body);
        }
        assert_eq!(admin_post(admin, "/cache/purge?prefix=", None).status, 400, "an empty prefix is not ?all");
        assert_eq!(admin_get(admin, "/cache/purge?all", None).status, 405);
        assert_eq!(origin.request_count(), 4 + 1 + 2 + 4 + 2 + 1);
    }

    // `fill_memory` (64 KiB here) bounds what a route's responses being stored hold at once
    // on a shard. Two chunked 40 KiB responses are relayed together: each client reads the
    // first 31 KiB (so the proxy holds ~62 KiB of the two), then the backend sends both
    // remainders; both cannot be held whole, so exactly one is stored, and both are relayed
    // whole. A response whose Content-Length does not fit beside what is held is not stored
    // from its head on (BYPASS: it keeps the splice path).
    fn responses_being_stored_are_held_to_fill_memory(engine) {
        use std::io::{Read, Write};
        let (first, total) = (31 * 1024, 40 * 1024);
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = backend.local_addr().unwrap();
        let go = Arc::new((Mutex::new(false), Condvar::new()));
        let g = go.clone();
        std::thread::spawn(move || {
            for conn in backend.incoming() {
                let Ok(mut conn) = conn else { return };
                let g = g.clone();
                std::thread::spawn(move || {
                    let body = pattern_body(total);
                    let wait_go = || {
                        let (lock, cv) = &*g;
                        let mut started = lock.lock().unwrap();
                        while !*started {
                            started = cv.wait(started).unwrap();
                        }
                    };
                    while let Ok(head) = read_head_bytes(&mut conn) {
                        let head = String::from_utf8_lossy(&head).to_string();
                        let cc = "HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\n";
                        let staged = head.contains("staged") && !*g.0.lock().unwrap();
                        let mut out = Vec::new();
                        if head.starts_with("GET /chunked") {
                            out.extend(format!("{cc}Transfer-Encoding: chunked\r\n\r\n{first:x}\r\n").bytes());
                            out.extend_from_slice(&body[..first]);
                            out.extend_from_slice(b"\r\n");
                            if conn.write_all(&out).is_err() {
                                return;
                            }
                            if staged {
                                wait_go();
                            }
                            out.clear();
                            out.extend(format!("{:x}\r\n", total - first).bytes());
                            out.extend_from_slice(&body[first..]);
                            out.extend_from_slice(b"\r\n0\r\n\r\n");
                        } else {
                            out.extend(format!("{cc}Content-Length: {total}\r\n\r\n").bytes());
                            out.extend_from_slice(&body);
                        }
                        if conn.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = Config::new()
            .upstream("main", &[addr])
            .route("main", "cache = { size = \"1MiB\", max_object = \"40KiB\", fill_memory = \"64KiB\" }")
            .admin("")
            .start(engine);
        let ask = |path: &str, close: bool| {
            let mut c = std::net::TcpStream::connect(proxy.addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut h = vec![("Host", "example.com"), ("X-Note", "staged")];
            if close {
                h.push(("Connection", "close"));
            }
            c.write_all(&request("GET", path, &h, b"")).unwrap();
            let head = String::from_utf8(read_head_bytes(&mut c).expect("a head")).unwrap();
            (c, head)
        };
        let mut clients: Vec<std::net::TcpStream> = ["/chunked/a", "/chunked/b"]
            .iter()
            .map(|p| {
                let (c, head) = ask(p, true);
                assert!(head.contains("X-Cache: MISS"), "{head}");
                c
            })
            .collect();
        // The proxy tees each piece before writing it: once a client has read (nearly) the
        // first part, chunk framing included, the proxy holds at least that much of it.
        let mut got = Vec::new();
        for c in clients.iter_mut() {
            let mut part = vec![0; first];
            c.read_exact(&mut part).unwrap();
            got.push(part);
        }
        // 62 KiB held: a 40 KiB response with a length does not fit beside them.
        let (mut c, head) = ask("/length", false);
        assert!(head.contains("X-Cache: BYPASS"), "{head}");
        let mut body = vec![0; total];
        c.read_exact(&mut body).unwrap();
        assert!(body == pattern_body(total));
        {
            let (lock, cv) = &*go;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        for (c, mut raw) in clients.iter_mut().zip(got) {
            c.read_to_end(&mut raw).unwrap();
            assert!(dechunk(&raw) == pattern_body(total), "relayed whole whether stored or not");
        }
        let mut c = Client::connect(proxy.addr());
        let seen: Vec<String> = ["/chunked/a", "/chunked/b", "/length"]
            .iter()
            .map(|p| {
                let r = fetch(&mut c, "GET", p, &[]);
                assert!(r.body == pattern_body(total));
                x_cache(&r)
            })
            .collect();
        let mut chunked = seen[..2].to_vec();
        chunked.sort();
        assert_eq!(chunked, ["HIT", "MISS"], "exactly one was stored: {seen:?}");
        assert_eq!(seen[2], "MISS", "/length was not stored");
        let m = scrape(proxy.admin_addr(), None);
        // /length at its head, one chunked response mid-body.
        assert_eq!(m.value("edgeshard_cache_fill_memory_dropped_total", &[]), 2.0);
    }
}

/// A route's cache settings that contradict each other are refused by `check`, naming the
/// field and why.
#[test]
fn cache_settings_that_contradict_are_refused() {
    let cfg = |cache: &str| {
        Config::new()
            .upstream("main", &["127.0.0.1:9".parse().unwrap()])
            .route("main", &format!("cache = {{ {cache} }}"))
            .render()
    };
    let bad = [
        (
            "size = \"1MiB\", max_object = \"2MiB\"",
            "cache.max_object",
            "larger than cache.size",
        ),
        (
            "max_object = \"1MiB\", fill_memory = \"512KiB\"",
            "cache.fill_memory",
            "smaller than cache.max_object",
        ),
        ("policy = \"lfu\"", "cache.policy", "unknown policy"),
    ];
    for (raw, key, words) in bad {
        expect_check_error_in(&cfg(raw), key, &[words]);
    }
}

/// The payload of a chunked body (no extensions, no trailers).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        raw = &raw[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// `len` bytes that change every position.
fn pattern_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}
