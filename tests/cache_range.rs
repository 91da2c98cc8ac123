//! Byte ranges from the response cache (RFC 9110 §14): a hit for a `GET` with one range is
//! answered `206` with that part of the stored body, a range past its end `416`, and what
//! the cache does not serve (several ranges, an `If-Range` that does not match, a `HEAD`)
//! the whole `200`; from memory, from the body file to a plain client (`sendfile`) and to a
//! TLS client (curl). Before, every ranged hit got the whole body: a video player's seek or
//! a resumed download fetched it all again. A ranged miss is forwarded and fills the cache
//! with the whole object in the background.

use std::process::Command;

use crate::support::pattern::pattern_vec;
use crate::support::tls::{tls_listener, CertDir, TestCa};
use crate::support::*;

const ETAG: &str = "\"v1\"";
const LAST_MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// `/b/N`: N pattern bytes, cacheable, with an ETag and a Last-Modified; `/n/N` the same
/// with `Accept-Ranges: none`. Any `Range` is ignored (a whole `200`), except on `/r/N`,
/// which answers `Range: bytes=A-B` with a `206`.
fn origin() -> Origin {
    Origin::with_handler("o", |r| {
        let mut headers = vec![
            ("Cache-Control".into(), "max-age=100".into()),
            ("ETag".into(), ETAG.into()),
            ("Last-Modified".into(), LAST_MODIFIED.into()),
            ("Content-Type".into(), "application/octet-stream".into()),
        ];
        if r.path().starts_with("/n/") {
            headers.push(("Accept-Ranges".into(), "none".into()));
        }
        let body = pattern_vec(r.path()[3..].parse().unwrap());
        let range = r.header("range").and_then(|v| v.strip_prefix("bytes="));
        let part = range
            .and_then(|v| v.split_once('-'))
            .map(|(a, b)| (a.parse::<usize>(), b.parse::<usize>()));
        if let (true, Some((Ok(a), Ok(b)))) = (r.path().starts_with("/r/"), part) {
            let len = body.len();
            headers.push(("Content-Range".into(), format!("bytes {a}-{b}/{len}")));
            return Reply::Response {
                status: 206,
                headers,
                body: body[a..=b].to_vec(),
                mode: BodyMode::Length,
                close_after: false,
            };
        }
        Reply::Response {
            status: 200,
            headers,
            body,
            mode: BodyMode::Length,
            close_after: false,
        }
    })
}

fn cached(origin: &Origin) -> Config {
    Config::new().upstream("main", &[origin.addr()]).route(
        "main",
        "cache = { size = \"64MiB\", max_object = \"16MiB\" }",
    )
}

fn ask(c: &mut Client, method: &str, path: &str, extra: &[(&str, &str)]) -> Response {
    let mut h = vec![("Host", "example.com")];
    h.extend_from_slice(extra);
    c.send(&request(method, path, &h, b""));
    c.read_response_for(method)
}

/// Asks for `range` of `path` (stored, `len` bytes) and checks the `206` carries bytes
/// `start..end` of the body.
fn part(c: &mut Client, path: &str, len: usize, range: &str, (start, end): (usize, usize)) {
    let r = ask(c, "GET", path, &[("Range", range)]);
    assert_eq!(
        (r.status(), r.header("X-Cache")),
        (206, Some("HIT")),
        "{range}:\n{}",
        r.head.raw
    );
    let want = format!("bytes {start}-{}/{len}", end - 1);
    assert_eq!(r.header("Content-Range"), Some(want.as_str()), "{range}");
    assert_eq!(
        r.header("Content-Length"),
        Some((end - start).to_string().as_str()),
        "{range}"
    );
    assert_eq!(
        r.header("ETag"),
        Some(ETAG),
        "{range}: a 206 carries the validators"
    );
    assert!(
        r.body == pattern_vec(len)[start..end],
        "{range}: not bytes {start}..{end}"
    );
}

both_engines! {
    // A small body, kept in memory: each form of range, the 416, and what is ignored. The
    // connection stays usable throughout and the backend is asked once.
    fn ranges_of_a_hit(engine) {
        let origin = origin();
        let proxy = cached(&origin).start(engine);
        let mut c = Client::connect(proxy.addr());
        // A miss forwards the Range; this backend ignores it and its 200 is stored (no
        // whole fetch follows: only a 206 starts one).
        let r = ask(&mut c, "GET", "/b/1000", &[("Range", "bytes=0-9")]);
        assert_eq!((r.status(), r.header("X-Cache"), r.body.len()), (200, Some("MISS"), 1000));
        part(&mut c, "/b/1000", 1000, "bytes=0-9", (0, 10));
        part(&mut c, "/b/1000", 1000, "bytes=990-", (990, 1000));
        part(&mut c, "/b/1000", 1000, "bytes=-7", (993, 1000));
        part(&mut c, "/b/1000", 1000, "bytes=500-5000", (500, 1000));
        part(&mut c, "/b/1000", 1000, "bytes=999-999", (999, 1000));
        let strong = [("Range", "bytes=1-2"), ("If-Range", ETAG)];
        assert_eq!(ask(&mut c, "GET", "/b/1000", &strong).status(), 206);
        let dated = [("Range", "bytes=1-2"), ("If-Range", LAST_MODIFIED)];
        assert_eq!(ask(&mut c, "GET", "/b/1000", &dated).status(), 206);

        let r = ask(&mut c, "GET", "/b/1000", &[("Range", "bytes=1000-")]);
        assert_eq!(r.status(), 416, "{}", r.head.raw);
        assert_eq!(r.header("Content-Range"), Some("bytes */1000"));
        assert!(r.body.is_empty());
        // It describes no representation: none of the stored one's metadata.
        for name in ["ETag", "Last-Modified", "Content-Type", "Cache-Control"] {
            assert_eq!(r.header(name), None, "a 416 with {name}:\n{}", r.head.raw);
        }

        for ignored in [
            vec![("Range", "bytes=0-1,5-6")],
            vec![("Range", "bytes=5-1")],
            vec![("Range", "items=0-1")],
            vec![("Range", "bytes=0-1"), ("If-Range", "\"v0\"")],
            vec![("Range", "bytes=0-1"), ("If-Range", "W/\"v1\"")],
            vec![("Range", "bytes=0-1"), ("If-Range", "Sun, 06 Nov 1994 08:49:38 GMT")],
        ] {
            let r = ask(&mut c, "GET", "/b/1000", &ignored);
            assert_eq!((r.status(), r.body.len()), (200, 1000), "{ignored:?}");
            assert_eq!(r.header("Content-Range"), None, "{ignored:?}");
        }
        let r = ask(&mut c, "HEAD", "/b/1000", &[("Range", "bytes=0-9")]);
        assert_eq!((r.status(), r.header("Content-Length")), (200, Some("1000")), "a HEAD ignores Range");
        // A condition that holds is a 304, whatever the range.
        let r = ask(&mut c, "GET", "/b/1000", &[("Range", "bytes=0-9"), ("If-None-Match", ETAG)]);
        assert_eq!(r.status(), 304);
        assert_eq!(origin.request_count(), 1);
    }

    // The fetches that may fill the cache ask for the whole object, as nginx's cache does: a
    // player's first `bytes=0-` (so range-only clients fill the cache), and a revalidation
    // (a 206 is never stored, and would remove the entry it answers). A backend's
    // `Accept-Ranges: none` holds for its hits too.
    fn fetches_that_may_be_stored_ask_for_the_whole(engine) {
        let origin = origin();
        let proxy = cached(&origin).start(engine);
        let mut c = Client::connect(proxy.addr());
        let r = ask(&mut c, "GET", "/b/100", &[("Range", "bytes=0-"), ("If-Range", ETAG)]);
        assert_eq!((r.status(), r.header("X-Cache")), (200, Some("MISS")));
        let seen = origin.last_request();
        assert!(!seen.has_header("range") && !seen.has_header("if-range"), "{}", seen.raw_head);
        part(&mut c, "/b/100", 100, "bytes=0-", (0, 100));
        // The client's min-fresh makes the entry revalidated first: conditionally, whole.
        let r = ask(&mut c, "GET", "/b/100", &[("Range", "bytes=5-9"), ("Cache-Control", "min-fresh=1000")]);
        // This backend ignores the condition: its whole 200 replaces the entry (a 206, had
        // the range been sent, would have removed it and stored nothing).
        assert_eq!((r.status(), r.header("X-Cache")), (200, Some("MISS")), "{}", r.head.raw);
        let seen = origin.last_request();
        assert!(seen.has_header("if-none-match") && !seen.has_header("range"), "{}", seen.raw_head);
        part(&mut c, "/b/100", 100, "bytes=5-9", (5, 10));
        assert_eq!(origin.request_count(), 2);
        assert_eq!(ask(&mut c, "GET", "/n/100", &[]).header("X-Cache"), Some("MISS"));
        let r = ask(&mut c, "GET", "/n/100", &[("Range", "bytes=0-9")]);
        assert_eq!((r.status(), r.header("X-Cache"), r.body.len()), (200, Some("HIT"), 100));
    }

    // A body in the body file, sent with sendfile from the range's offset.
    fn ranges_of_a_large_hit_from_the_body_file(engine) {
        let origin = origin();
        let proxy = cached(&origin).start(engine);
        let mut c = Client::connect(proxy.addr());
        let n = 200_003;
        let path = format!("/b/{n}");
        assert_eq!(ask(&mut c, "GET", &path, &[]).header("X-Cache"), Some("MISS"));
        part(&mut c, &path, n, "bytes=0-0", (0, 1));
        part(&mut c, &path, n, "bytes=100000-150000", (100_000, 150_001));
        part(&mut c, &path, n, "bytes=4095-4096", (4095, 4097));
        part(&mut c, &path, n, "bytes=-7", (n - 7, n));
        part(&mut c, &path, n, "bytes=65536-", (65536, n));
        let r = ask(&mut c, "GET", &path, &[]);
        assert!(r.status() == 200 && r.body == pattern_vec(n), "the whole body after ranges");
        assert_eq!(origin.request_count(), 1);
    }

    // A TLS client (curl --range) gets the range through the copying path.
    fn a_range_of_a_large_hit_over_tls(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("cache-range");
        let (cert, key) = dir.write_leaf("a", &ca.leaf(&["a.test"]));
        let ca_file = dir.write("ca.pem", &ca.pem);
        let origin = origin();
        let proxy = cached(&origin).only_listener(&tls_listener(&[(&cert, &key)], "")).start(engine);
        let n = 300_000;
        let url = format!("https://a.test:{}/b/{n}", proxy.addr().port());
        let resolve = format!("a.test:{}:127.0.0.1", proxy.addr().port());
        let curl = |range: Option<&str>| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "10", "-o", "-", "--cacert"]).arg(&ca_file);
            cmd.args(["--resolve", &resolve]);
            if let Some(r) = range {
                cmd.args(["--range", r]);
            }
            let out = cmd.arg(&url).output().expect("curl is installed");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        };
        assert_eq!(curl(None).len(), n);
        let body = curl(Some("70000-200000"));
        assert!(body == pattern_vec(n)[70_000..200_001], "{} bytes, not the range", body.len());
        assert_eq!(origin.request_count(), 1);
    }

    // Another range on a miss is forwarded as it came (its 206 relayed at once), and the
    // whole object is fetched in the background: the next range is a hit. A request for the
    // key while that fetch runs waits for it, as concurrent misses do.
    fn a_ranged_miss_fills_the_cache_in_the_background(engine) {
        let origin = origin();
        let proxy = cached(&origin).start(engine);
        let body = pattern_vec(1000);
        let mut c = Client::connect(proxy.addr());
        let r = ask(&mut c, "GET", "/r/1000", &[("Range", "bytes=100-199")]);
        assert_eq!((r.status(), r.header("X-Cache")), (206, Some("MISS")), "{}", r.head.raw);
        assert_eq!(r.header("Content-Range"), Some("bytes 100-199/1000"));
        assert_eq!(r.body, &body[100..200]);
        part(&mut c, "/r/1000", 1000, "bytes=500-599", (500, 600));
        let mut ranges: Vec<Option<String>> = origin
            .requests()
            .iter()
            .map(|q| q.header("range").map(str::to_string))
            .collect();
        ranges.sort();
        assert_eq!(ranges, [None, Some("bytes=100-199".to_string())]);
        // `only-if-cached` on a ranged miss: 504, no backend, no fetch.
        let r = ask(&mut c, "GET", "/r/2000", &[("Range", "bytes=0-9"), ("Cache-Control", "only-if-cached")]);
        assert_eq!(r.status(), 504);
        assert_eq!(origin.request_count(), 2);
        // Without background fetches (`background_revalidations = 0`) a ranged miss stores
        // nothing.
        let origin = self::origin();
        let proxy = Config::new().upstream("main", &[origin.addr()]).route(
            "main",
            "cache = { size = \"64MiB\", background_revalidations = 0 }",
        ).start(engine);
        let mut c = Client::connect(proxy.addr());
        for _ in 0..2 {
            let r = ask(&mut c, "GET", "/r/1000", &[("Range", "bytes=100-199")]);
            // A 206 cannot be stored.
            assert_eq!((r.status(), r.header("X-Cache")), (206, Some("BYPASS")));
        }
        assert_eq!(origin.request_count(), 2);
        // An object the cache could not store (over `max_object`, or `private`) is not
        // fetched whole: its 206 says so, and each range goes to the backend once.
        let origin = self::origin();
        let proxy = Config::new().upstream("main", &[origin.addr()]).route(
            "main",
            "cache = { size = \"64MiB\", max_object = \"1KiB\" }",
        ).start(engine);
        let mut c = Client::connect(proxy.addr());
        for range in ["bytes=0-9", "bytes=100-109", "bytes=4000-4009"] {
            let r = ask(&mut c, "GET", "/r/5000", &[("Range", range)]);
            assert_eq!((r.status(), r.header("X-Cache")), (206, Some("MISS")), "{range}");
        }
        assert_eq!(origin.request_count(), 3);
        assert!(origin.requests().iter().all(|q| q.header("range").is_some()));
    }
}
