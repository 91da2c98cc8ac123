//! Request smuggling catalogue, the upgrade and response sides (docs/SMUGGLING.md; issue 16):
//! bytes pipelined after a declined upgrade, an unsolicited 101, and backend responses whose
//! framing is bad or leaves bytes behind (RFC 9112 §§6.1-6.3, 9.6, 11.2).
//!
//! What the backend received is checked once final ([`settle`]): each request the client sent
//! reached it as its own request written by the proxy, in order, and nothing else did; and no
//! client ever receives bytes a backend sent after (or instead of) a complete response.

use crate::smuggling::{assert_nothing_smuggled, settle};
use crate::support::*;

/// The bytes a misbehaving backend sends where nothing may follow: if they ever reach a client
/// as a response, a response was smuggled.
const SECRET: &str = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET";

/// A request the proxy must refuse (CL + TE): if it reaches the backend, it was tunnelled or
/// forwarded raw.
const BAD_NEXT: &str = "GET /smuggled HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

fn upgrade_request(proto: &str) -> String {
    format!("GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\n\r\n")
}

/// An origin named "o" that answers `path` with `bytes` verbatim and keeps the connection
/// open (reading the next request on it), and everything else with its default reply.
fn origin_replying(path: &'static str, bytes: String) -> Origin {
    Origin::with_handler("o", move |req| {
        if req.path() == path {
            Reply::Raw {
                bytes: bytes.clone().into_bytes(),
                close_after: false,
            }
        } else {
            Reply::Default
        }
    })
}

/// The answer to a request for `path` from the default origin "o": its own, not `SECRET`.
fn assert_own_answer(r: &Response, path: &str) {
    assert_eq!(r.status(), 200, "{path}:\n{}", r.head.raw);
    assert_ne!(
        r.body_str(),
        "SECRET",
        "{path}: a backend's stray response was delivered"
    );
    assert_eq!(r.body_str(), "o", "{path}");
    assert_eq!(r.header("x-path"), Some(path), "{path}:\n{}", r.head.raw);
}

/// After the bad exchange for `first`: a request on `same` (the client's connection, when the
/// proxy kept it open) and one on a new connection each get their own answer; once final, the
/// backend received exactly `first` and those requests, each once, in order.
fn next_requests_are_clean(proxy: Proxy, origin: &Origin, same: Option<Client>, first: &str) {
    let mut want = vec![first.to_string()];
    if let Some(mut c) = same {
        c.send(&get("example.com", "/victim-same"));
        assert_own_answer(&c.read_response(), "/victim-same");
        want.push("/victim-same".into());
    }
    let mut c = Client::connect(proxy.addr());
    c.send(&get("example.com", "/victim-new"));
    assert_own_answer(&c.read_response(), "/victim-new");
    want.push("/victim-new".into());
    settle(proxy, origin);
    let got: Vec<String> = origin
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .collect();
    assert_eq!(
        got,
        want,
        "what the backend received: {:#?}",
        origin.heads()
    );
    assert_eq!(origin.head_count(), want.len(), "{:#?}", origin.heads());
}

/// The backend answers `path` with `raw` (a response followed by `SECRET`, say) and the client
/// gets a response with `status` and exactly `body`; then [`next_requests_are_clean`].
fn stray_bytes_case(
    engine: Engine,
    method: &str,
    path: &'static str,
    raw: String,
    status: u16,
    body: &str,
) {
    let origin = origin_replying(path, raw);
    let proxy = Config::single(origin.addr()).start(engine);
    let mut c = Client::connect(proxy.addr());
    c.send(&request(method, path, &[("Host", "example.com")], b""));
    let r = c.read_response_for(method);
    assert_eq!(r.status(), status, "{}", r.head.raw);
    assert_eq!(r.body_str(), body);
    let same = (!r.has_token("connection", "close")).then_some(c);
    next_requests_are_clean(proxy, &origin, same, path);
}

/// The backend answers `path` with `raw`, whose framing is bad: the client gets a 502 (or, had
/// the head gone out, a truncated response), never `SECRET`; then [`next_requests_are_clean`].
fn bad_framing_case(engine: Engine, path: &'static str, raw: String) {
    let origin = origin_replying(path, raw);
    let proxy = Config::single(origin.addr()).start(engine);
    let mut c = Client::connect(proxy.addr());
    c.timeout = std::time::Duration::from_secs(5);
    c.send(&get("example.com", path));
    let same = match c.try_read_response() {
        Ok(r) => {
            assert_eq!(
                r.status(),
                502,
                "{path}: bad response framing:\n{}\n{:?}",
                r.head.raw,
                r.body_str()
            );
            (!r.has_token("connection", "close")).then_some(c)
        }
        Err(ClientError::Truncated(_)) | Err(ClientError::Reset) => None,
        Err(e) => panic!("{path}: expected 502 or a truncated response, got {e}"),
    };
    next_requests_are_clean(proxy, &origin, same, path);
}

// ---- Upgrades ----

both_engines! {
    fn declined_upgrade_then_pipelined_bad_request_is_parsed_not_tunnelled(engine) {
        // The backend declines with a 200: the bytes after the upgrade request are HTTP, and
        // this request is refused by the proxy, never handed to the backend raw.
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(format!("{}{BAD_NEXT}", upgrade_request("websocket")).as_bytes());
        assert_eq!(c.read_response().status(), 200);
        let r = c.read_response();
        assert_eq!(r.status(), 400, "{}", r.head.raw);
        c.expect_closed();
        settle(proxy, &origin);
        assert_nothing_smuggled(&origin);
        let paths: Vec<String> = origin.requests().iter().map(|r| r.path().to_string()).collect();
        assert_eq!(paths, ["/chat"], "{:#?}", origin.heads());
        assert_eq!(origin.head_count(), 1);
    }
    fn upgrade_declined_with_426_then_pipelined_request_is_a_new_request(engine) {
        let origin = Origin::with_handler("o", |req| {
            if req.path() == "/chat" {
                Reply::Response {
                    status: 426,
                    headers: vec![("Upgrade".into(), "websocket".into()), ("Connection".into(), "Upgrade".into())],
                    body: b"upgrade required".to_vec(),
                    mode: BodyMode::Length,
                    close_after: false,
                }
            } else {
                Reply::Default
            }
        });
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(format!("{}GET /second HTTP/1.1\r\nHost: t\r\n\r\n", upgrade_request("websocket")).as_bytes());
        let r = c.read_response();
        assert_eq!(r.status(), 426, "{}", r.head.raw);
        assert_eq!(r.body_str(), "upgrade required");
        let r = c.read_response();
        assert_eq!(r.status(), 200, "{}", r.head.raw);
        assert_eq!(r.header("x-path"), Some("/second"));
        // Bytes that are not HTTP after a declined upgrade: a 400, never tunnelled.
        c.send(format!("{}not http\r\n\r\n", upgrade_request("websocket")).as_bytes());
        assert_eq!(c.read_response().status(), 426);
        assert_eq!(c.read_response().status(), 400);
        c.expect_closed();
        settle(proxy, &origin);
        origin.assert_no_errors();
        let got = origin.requests();
        let paths: Vec<&str> = got.iter().map(|r| r.path()).collect();
        assert_eq!(paths, ["/chat", "/second", "/chat"], "{:#?}", origin.heads());
        assert_eq!(origin.head_count(), 3);
        // /second was parsed and rewritten by the proxy, not passed through.
        assert_eq!(got[1].header_all("via"), ["1.1 edgeshard"], "{}", got[1].raw_head);
        assert!(!got[1].has_header("upgrade"), "{}", got[1].raw_head);
    }
    fn unsolicited_101_is_a_bad_response_not_a_tunnel(engine) {
        // A backend may not switch protocols unasked (RFC 9110 §15.2.2): the proxy answers
        // 502 and never turns the connection into a tunnel, so the client's next bytes are
        // parsed, and refused here.
        let origin = origin_replying(
            "/plain",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhi".into(),
        );
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/plain"));
        let r = c.read_response();
        assert_eq!(r.status(), 502, "{}", r.head.raw);
        if !r.has_token("connection", "close") {
            c.send(BAD_NEXT.as_bytes());
            assert_eq!(c.read_response().status(), 400);
        }
        c.expect_closed();
        settle(proxy, &origin);
        assert_nothing_smuggled(&origin);
        assert_eq!(origin.head_count(), 1, "{:#?}", origin.heads());
    }
}

// ---- Bytes after a complete response ----

both_engines! {
    fn response_with_extra_bytes_after_content_length(engine) {
        // The stray response arrives in the same segment as the real one.
        stray_bytes_case(engine, "GET", "/extra", format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok{SECRET}"), 200, "ok");
    }
    fn response_204_with_transfer_encoding_has_no_body(engine) {
        // RFC 9112 §6.3: a 204 ends at its head whatever its fields say; the "body" left
        // behind must not become the next client's response.
        let raw = format!("HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SECRET}");
        let origin = origin_replying("/nc", raw);
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.com", "/nc"));
        let r = c.read_response();
        assert_eq!(r.status(), 204);
        assert!(r.body.is_empty());
        assert!(
            !r.head.raw.to_ascii_lowercase().contains("transfer-encoding"),
            "RFC 9112 §6.1: no Transfer-Encoding on a 204:\n{}",
            r.head.raw
        );
        next_requests_are_clean(proxy, &origin, Some(c), "/nc");
    }
    fn response_304_with_transfer_encoding_has_no_body(engine) {
        let raw = format!("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SECRET}");
        stray_bytes_case(engine, "GET", "/nm", raw, 304, "");
    }
    fn response_304_with_content_length_has_no_body(engine) {
        let raw = format!("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello{SECRET}");
        stray_bytes_case(engine, "GET", "/nm", raw, 304, "");
    }
    fn head_response_with_a_body(engine) {
        // The body a backend wrongly sends after a HEAD response is not the next response.
        let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello{SECRET}");
        stray_bytes_case(engine, "HEAD", "/head", raw, 200, "");
    }
    fn http_1_0_chunked_response_then_stray_bytes(engine) {
        // RFC 9112 §6.1: Transfer-Encoding in a 1.0 response is faulty framing; the body is
        // decoded but the connection is not reused.
        let raw = format!("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SECRET}");
        stray_bytes_case(engine, "GET", "/old", raw, 200, "hello");
    }
    fn response_with_bare_lf_line_endings_is_normalised(engine) {
        let raw = format!("HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 5\n\nhello{SECRET}");
        stray_bytes_case(engine, "GET", "/lf", raw, 200, "hello");
    }
    fn response_trailers_do_not_change_framing(engine) {
        // Framing fields in a response's trailer section come after the last chunk: the
        // body is what the chunks say, and the connection stays in step.
        let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n{SECRET}");
        stray_bytes_case(engine, "GET", "/trailers", raw, 200, "hello");
    }
}

both_engines! {
    fn response_trailer_framing_fields_are_not_forwarded(engine) {
        // RFC 9110 §6.5.1: framing, routing and connection fields may not be sent as trailers
        // (a recipient that merged them into the head would re-frame the message). The
        // proxy relays a response's other trailer fields and drops those.
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\nX-T: 1\r\ntransfer-encoding: chunked\r\nHost: evil.example\r\nConnection: x\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\r\n";
        let origin = origin_replying("/trailers", raw.into());
        let proxy = Config::single(origin.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET /trailers HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
        let got = c.read_until_closed(std::time::Duration::from_secs(10)).expect("the response, then a close");
        let got = String::from_utf8_lossy(&got).into_owned();
        let (head, body) = got.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{got:?}"));
        assert!(head.starts_with("HTTP/1.1 200 "), "{got:?}");
        assert!(head.to_ascii_lowercase().contains("\r\ntransfer-encoding: chunked"), "{got:?}");
        assert_eq!(body, "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", "the client's trailer section");
        settle(proxy, &origin);
        assert_eq!(origin.head_count(), 1);
    }
}

// ---- Bad response framing: tests/response_framing.rs covers CL+TE, TE+CL, 5/6, -5, `zz`, obs-fold ----

both_engines! {
    fn response_cl_te_hiding_a_second_response(engine) {
        let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SECRET}");
        bad_framing_case(engine, "/cl-te", raw);
    }
    fn response_two_identical_content_lengths(engine) {
        // RFC 9110 §8.6 lets a recipient accept identical duplicates; edgeshard refuses them.
        bad_framing_case(engine, "/cl-cl", format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello{SECRET}"));
    }
    fn response_content_length_list(engine) {
        bad_framing_case(engine, "/cl-list", format!("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello{SECRET}"));
    }
    fn response_content_length_plus_sign(engine) {
        bad_framing_case(engine, "/cl-plus", format!("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello{SECRET}"));
    }
    fn response_te_xchunked(engine) {
        bad_framing_case(engine, "/xchunked", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SECRET}"));
    }
    fn response_te_gzip_chunked_refused(engine) {
        // Valid HTTP/1.1, but a coding the proxy does not handle: refused, never guessed at.
        bad_framing_case(engine, "/gzip", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SECRET}"));
    }
    fn response_chunk_size_overflow(engine) {
        bad_framing_case(engine, "/overflow", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\nhello\r\n0\r\n\r\n{SECRET}"));
    }
    fn response_chunk_data_longer_than_size(engine) {
        bad_framing_case(engine, "/spill", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n{SECRET}"));
    }
    fn response_chunk_bare_lf(engine) {
        bad_framing_case(engine, "/lf-chunk", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{SECRET}"));
    }
    fn response_status_line_garbage_http_0_9(engine) {
        // An HTTP/0.9-style answer (a body without a status line).
        bad_framing_case(engine, "/h09", format!("<html>hello</html>\r\n\r\n{SECRET}"));
    }
}
