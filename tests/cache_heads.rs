//! The response cache's stored heads as backends write them (found by the 2026-12-06
//! probe): a head with bare-LF line endings, which the parser accepts, answers a conditional
//! request with a whole `304`; several `If-None-Match` lines are one list; a stored chunked
//! response's `Trailer` field is not sent on hits framed with a length; `If-Modified-Since`
//! falls back to the stored `Date`.

use std::time::{SystemTime, UNIX_EPOCH};

use edgeshard::http::date::http_date;

use crate::support::*;

fn cached(origin: &Origin, engine: Engine) -> Proxy {
    Config::new()
        .upstream("main", &[origin.addr()])
        .route("main", "cache = { size = \"1MiB\" }")
        .start(engine)
}

fn fetch(c: &mut Client, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("Host", "example.com")];
    h.extend_from_slice(headers);
    c.send(&request("GET", path, &h, b""));
    c.read_response_for("GET")
}

both_engines! {
    // RFC 9112 §2.2 lets a recipient read a bare LF as a line ending, and the proxy does; a
    // response so written and stored answers a matching If-None-Match with a 304 that
    // carries its fields (RFC 9110 §15.4.5), whether every line ends in LF or only the
    // status line does.
    fn a_head_with_bare_lf_lines_answers_a_conditional_request(engine) {
        let origin = Origin::with_handler("o", |r| {
            let bytes: &[u8] = if r.path() == "/all-lf" {
                b"HTTP/1.1 200 OK\nETag: \"lf\"\nCache-Control: max-age=60\nContent-Length: 2\n\nlf"
            } else {
                b"HTTP/1.1 200 OK\nETag: \"lf2\"\r\nCache-Control: max-age=60\r\nContent-Length: 3\r\n\r\nlf2"
            };
            Reply::Raw { bytes: bytes.to_vec(), close_after: false }
        });
        let proxy = cached(&origin, engine);
        let mut c = Client::connect(proxy.addr());
        for (path, etag, body) in [("/all-lf", "\"lf\"", "lf"), ("/status-lf", "\"lf2\"", "lf2")] {
            let r = fetch(&mut c, path, &[]);
            assert_eq!((r.status(), r.body_str()), (200, body.to_string()), "{path}");
            let r = fetch(&mut c, path, &[("If-None-Match", etag)]);
            assert_eq!(r.status(), 304, "{path}: {}", r.head.raw);
            assert_eq!(r.header("ETag"), Some(etag), "{path}: {}", r.head.raw);
            assert_eq!(r.header("Cache-Control"), Some("max-age=60"), "{path}");
        }
        assert_eq!(origin.request_count(), 2);
    }

    // Field lines of one name are one list (RFC 9110 §5.3): an ETag on the second
    // If-None-Match line matches as one on the first does.
    fn several_if_none_match_lines_are_one_list(engine) {
        let origin = Origin::with_handler("o", |_| Reply::Response {
            status: 200,
            headers: vec![
                ("Cache-Control".into(), "max-age=60".into()),
                ("ETag".into(), "\"v1\"".into()),
            ],
            body: b"content".to_vec(),
            mode: BodyMode::Length,
            close_after: false,
        });
        let proxy = cached(&origin, engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(fetch(&mut c, "/c", &[]).status(), 200);
        let r = fetch(&mut c, "/c", &[("If-None-Match", "\"x\""), ("If-None-Match", "\"v1\"")]);
        assert_eq!(r.status(), 304, "{}", r.head.raw);
        let r = fetch(&mut c, "/c", &[("If-None-Match", "\"x\""), ("If-None-Match", "\"y\"")]);
        assert_eq!((r.status(), r.body_str()), (200, "content".into()));
        assert_eq!(origin.request_count(), 1);
    }

    // A chunked response announcing a trailer is served from the cache with a
    // Content-Length and without its `Trailer` field, which would announce fields that never
    // come; so is a 304 made from it.
    fn a_stored_chunked_responses_trailer_field_is_not_served(engine) {
        let origin = Origin::with_handler("o", |_| Reply::Response {
            status: 200,
            headers: vec![
                ("Cache-Control".into(), "max-age=60".into()),
                ("Trailer".into(), "X-T".into()),
            ],
            body: b"chunked body".to_vec(),
            mode: BodyMode::Chunked,
            close_after: false,
        });
        let proxy = cached(&origin, engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(fetch(&mut c, "/t", &[]).status(), 200);
        let r = fetch(&mut c, "/t", &[]);
        assert_eq!(r.header("X-Cache"), Some("HIT"));
        assert_eq!(r.header("Content-Length"), Some("12"));
        assert_eq!(r.header("Trailer"), None, "{}", r.head.raw);
        assert_eq!(r.body_str(), "chunked body");
        let r = fetch(&mut c, "/t", &[("If-None-Match", "*")]);
        assert_eq!(r.status(), 304, "{}", r.head.raw);
        assert_eq!(r.header("Trailer"), None, "{}", r.head.raw);
        assert_eq!(r.header("Cache-Control"), Some("max-age=60"));
    }

    // If-Modified-Since against an entry without Last-Modified compares with its Date
    // (RFC 9111 §4.3.2), where it was ignored.
    fn if_modified_since_uses_the_date_without_last_modified(engine) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let date = |t| String::from_utf8(http_date(t).to_vec()).unwrap();
        let (sent, day_before) = (date(now), date(now - 86_400));
        let head = format!("HTTP/1.1 200 OK\r\nDate: {sent}\r\nCache-Control: max-age=600\r\nContent-Length: 2\r\n\r\nok");
        let origin = Origin::with_handler("o", move |_| Reply::Raw {
            bytes: head.clone().into_bytes(),
            close_after: false,
        });
        let proxy = cached(&origin, engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(fetch(&mut c, "/d", &[]).status(), 200);
        let r = fetch(&mut c, "/d", &[("If-Modified-Since", &sent)]);
        assert_eq!(r.status(), 304, "{}", r.head.raw);
        let r = fetch(&mut c, "/d", &[("If-Modified-Since", &day_before)]);
        assert_eq!((r.status(), r.body_str()), (200, "ok".into()));
        assert_eq!(origin.request_count(), 1);
    }
}
