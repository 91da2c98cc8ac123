//! Request smuggling catalogue, request side (docs/SMUGGLING.md; issue 16): one test per
//! pattern of PortSwigger's request-smuggling topics and RFC 9112 §§2.2, 3, 5, 6.1-6.3, 7.1
//! and 11.2 not already covered in tests/framing.rs.
//!
//! Every test checks what the backend received once it is final ([`settle`]: the proxy is
//! stopped, so every upstream connection ends, and the origin has read each one to its end):
//! nothing at all, or exactly one normalised request with the exact body, and never a second
//! request made of the bytes a desynchronised hop would have read as one ("/smuggled").

use crate::support::*;
use std::time::Duration;

fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: example.com\r\n{headers}\r\n{body}").into_bytes()
}

/// The request hidden in a body: a hop that misreads the framing would see it as a second
/// request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// Stops the proxy (its upstream connections close) and waits until the origin has read every
/// connection to its end: from then on `origin.heads()` and `origin.requests()` are all the
/// backend will ever receive.
pub fn settle(proxy: Proxy, origin: &Origin) {
    drop(proxy);
    assert!(
        origin.wait_for(Duration::from_secs(10), |s| s.closed == s.accepted),
        "the origin's connections did not end after the proxy stopped"
    );
}

/// Panics if any head the origin received names `/smuggled`.
pub fn assert_nothing_smuggled(origin: &Origin) {
    let heads = origin.heads();
    assert!(
        !heads.iter().any(|h| h.contains("/smuggled")),
        "a smuggled request reached the backend: {heads:#?}"
    );
}

/// `raw` is refused with `status` and `Connection: close`, the connection is closed, and the
/// backend received nothing at all: not a head, not a byte of a request.
fn refused_head(engine: Engine, raw: &[u8], status: u16) {
    let (proxy, origin) = proxy_with_origin(engine);
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send(raw);
    let what = String::from_utf8_lossy(raw).into_owned();
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("expected {status} for {what:?}, got {e}"));
    assert_eq!(r.status(), status, "{what:?}:\n{}", r.head.raw);
    assert!(
        r.has_token("connection", "close"),
        "{what:?}:\n{}",
        r.head.raw
    );
    c.expect_closed();
    settle(proxy, &origin);
    assert_eq!(
        origin.accepted(),
        0,
        "{what:?}: the proxy connected to the backend"
    );
    assert_eq!(origin.heads(), Vec::<String>::new(), "{what:?}");
}

/// A body-framing error: 400 + close; a streaming proxy may have sent the head, but the backend
/// never received a complete request, and nothing smuggled.
fn refused_body(engine: Engine, raw: &[u8]) {
    let (proxy, origin) = proxy_with_origin(engine);
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send(raw);
    let what = String::from_utf8_lossy(raw).into_owned();
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("expected 400 for {what:?}, got {e}"));
    assert_eq!(r.status(), 400, "{what:?}:\n{}", r.head.raw);
    assert!(
        r.has_token("connection", "close"),
        "{what:?}:\n{}",
        r.head.raw
    );
    c.expect_closed();
    settle(proxy, &origin);
    let got: Vec<String> = origin.requests().into_iter().map(|r| r.raw_head).collect();
    assert!(
        got.is_empty(),
        "{what:?}: the backend got a complete request: {got:#?}"
    );
    assert_nothing_smuggled(&origin);
}

/// `raw` holds `n` requests; each gets a 200, and the backend received exactly `n` requests,
/// each valid HTTP/1.1 written by the proxy (its `Via`), and nothing smuggled.
fn forwarded(engine: Engine, raw: &[u8], n: usize) -> Vec<Recorded> {
    let (proxy, origin) = proxy_with_origin(engine);
    let mut c = Client::connect(proxy.addr());
    c.send(raw);
    let what = String::from_utf8_lossy(raw).into_owned();
    for i in 0..n {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("{what:?}: response {i}: {e}"));
        assert_eq!(r.status(), 200, "{what:?}: response {i}:\n{}", r.head.raw);
    }
    settle(proxy, &origin);
    origin.assert_no_errors();
    assert_nothing_smuggled(&origin);
    let got = origin.requests();
    assert_eq!(
        got.len(),
        n,
        "{what:?}: the backend must get exactly {n} request(s): {:#?}",
        origin.heads()
    );
    assert_eq!(origin.head_count(), n, "{what:?}: {:#?}", origin.heads());
    for r in &got {
        assert_eq!(r.header_all("via"), ["1.1 edgeshard"], "{}", r.raw_head);
    }
    got
}

/// One request forwarded: the backend got exactly it, with exactly `body`.
fn forwarded_once(engine: Engine, raw: &[u8], body: &[u8]) -> Recorded {
    let r = forwarded(engine, raw, 1).remove(0);
    assert_eq!(
        r.body,
        body,
        "{:?}: body as received by the backend",
        String::from_utf8_lossy(raw)
    );
    r
}

/// The one forwarded request is chunked (`Transfer-Encoding: chunked`, one field, no
/// Content-Length) and carries `hello`.
fn forwarded_chunked_hello(engine: Engine, raw: &[u8]) -> Recorded {
    let r = forwarded_once(engine, raw, b"hello");
    assert!(r.chunked, "{}", r.raw_head);
    assert_eq!(
        r.header_all("transfer-encoding"),
        ["chunked"],
        "{}",
        r.raw_head
    );
    assert!(!r.has_header("content-length"), "{}", r.raw_head);
    r
}

const HELLO_CHUNKED: &str = "5\r\nhello\r\n0\r\n\r\n";

// ---- CL.TE / TE.CL: tests/framing.rs (cl_te_*, te_cl_*); variants hidden by obfuscation ----

both_engines! {
    fn cl_te_with_bare_lf_hidden_te_rejected(engine) {
        // A hop that ends field lines only at CRLF sees one field `X: x\nTransfer-Encoding:
        // chunked` and frames by Content-Length; edgeshard (RFC 9112 §2.2 lets it take a bare
        // LF as a line end) sees both fields, so the request is refused as CL + TE.
        let body = format!("0\r\n\r\n{SMUGGLED}");
        let raw = post(&format!("Content-Length: {}\r\nX: x\nTransfer-Encoding: chunked\r\n", body.len()), &body);
        refused_head(engine, &raw, 400);
    }
    fn cl_te_with_underscore_te_frames_by_content_length(engine) {
        // `Transfer_Encoding` is a different (valid) field name: framing is Content-Length's
        // and the hidden request stays body. The field itself is dropped: a backend that
        // reads `_` as `-` (CGI, WSGI) would take it for a second framing field.
        let body = format!("0\r\n\r\n{SMUGGLED}");
        let raw = post(&format!("Content-Length: {}\r\nTransfer_Encoding: chunked\r\ncontent_LENGTH: 0\r\n", body.len()), &body);
        let r = forwarded_once(engine, &raw, body.as_bytes());
        assert_eq!(r.header("content-length"), Some(body.len().to_string().as_str()));
        assert!(!r.has_header("transfer-encoding"), "{}", r.raw_head);
        assert!(!r.raw_head.to_ascii_lowercase().contains("transfer_encoding"), "{}", r.raw_head);
        assert!(!r.raw_head.to_ascii_lowercase().contains("content_length"), "{}", r.raw_head);
    }
    fn cl_te_when_connection_names_the_framing_fields(engine) {
        // `Connection: Content-Length, Transfer-Encoding` asks hops to drop them; the proxy
        // frames the body before dropping anything and writes its own framing.
        let body = format!("0\r\n\r\n{SMUGGLED}");
        let raw = post(&format!("Connection: Content-Length\r\nContent-Length: {}\r\n", body.len()), &body);
        let r = forwarded_once(engine, &raw, body.as_bytes());
        assert_eq!(r.header("content-length"), Some(body.len().to_string().as_str()));
        let raw = post("Connection: Transfer-Encoding, Host\r\nTransfer-Encoding: chunked\r\n", HELLO_CHUNKED);
        let r = forwarded_chunked_hello(engine, &raw);
        assert_eq!(r.header_all("host"), ["example.com"]);
    }
}

// ---- TE.TE: Transfer-Encoding obfuscations ----

both_engines! {
    fn te_leading_spaces_and_tab_are_ows_accepted(engine) {
        for v in ["  chunked", "\tchunked", "chunked\t", "chunked  "] {
            forwarded_chunked_hello(engine, &post(&format!("Transfer-Encoding:{v}\r\n"), HELLO_CHUNKED));
        }
    }
    fn te_upper_case_chunked_accepted(engine) {
        // Transfer codings are case-insensitive (RFC 9112 §7).
        forwarded_chunked_hello(engine, &post("Transfer-Encoding: CHUNKED\r\n", HELLO_CHUNKED));
    }
    fn te_empty_list_elements_accepted(engine) {
        // RFC 9110 §5.6.1: empty list elements are ignored.
        forwarded_chunked_hello(engine, &post("Transfer-Encoding: , chunked,\r\n", HELLO_CHUNKED));
    }
    fn te_space_before_colon_rejected(engine) {
        refused_head(engine, &post("Transfer-Encoding : chunked\r\n", HELLO_CHUNKED), 400);
    }
    fn te_chunked_then_identity_rejected(engine) {
        refused_head(engine, &post("Transfer-Encoding: chunked, identity\r\n", HELLO_CHUNKED), 400);
    }
    fn te_identity_then_chunked_rejected(engine) {
        refused_head(engine, &post("Transfer-Encoding: identity, chunked\r\n", HELLO_CHUNKED), 400);
    }
    fn te_gzip_then_chunked_refused(engine) {
        // Valid HTTP/1.1, but the proxy decodes only `chunked`: refused, never guessed at.
        refused_head(engine, &post("Transfer-Encoding: gzip, chunked\r\n", HELLO_CHUNKED), 400);
    }
    fn te_chunked_field_then_other_field_rejected(engine) {
        refused_head(engine, &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", HELLO_CHUNKED), 400);
    }
    fn te_quoted_chunked_rejected(engine) {
        refused_head(engine, &post("Transfer-Encoding: \"chunked\"\r\n", HELLO_CHUNKED), 400);
    }
    fn te_chunked_with_parameter_rejected(engine) {
        refused_head(engine, &post("Transfer-Encoding: chunked;q=1\r\n", HELLO_CHUNKED), 400);
    }
    fn te_empty_value_rejected(engine) {
        refused_head(engine, &post("Transfer-Encoding:\r\n", HELLO_CHUNKED), 400);
    }
    fn te_control_characters_rejected(engine) {
        for v in ["chunked\x00", "chunked\x0b", "chunked\x0c", "\x01chunked"] {
            refused_head(engine, &post(&format!("Transfer-Encoding: {v}\r\n"), HELLO_CHUNKED), 400);
        }
    }
    fn te_nul_in_name_rejected(engine) {
        refused_head(engine, &post("Transfer-Encoding\x00: chunked\r\n", HELLO_CHUNKED), 400);
    }
    fn te_as_first_field_folded_onto_request_line_rejected(engine) {
        // A line starting with whitespace right after the request line (RFC 9112 §2.2).
        refused_head(engine, b"POST /upload HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: example.com\r\n\r\n0\r\n\r\n", 400);
    }
    fn te_after_bare_lf_is_a_field_of_its_own(engine) {
        // RFC 9112 §2.2: a bare LF may end a line; the proxy then forwards the two fields each
        // on its own CRLF line, so the backend frames the body as the proxy did.
        let r = forwarded_chunked_hello(engine, &post("X: x\nTransfer-Encoding: chunked\r\n", HELLO_CHUNKED));
        assert_eq!(r.header("x"), Some("x"));
    }
}

// ---- Content-Length: tests/framing.rs covers duplicates, `5, 5`, `+5`, `-5`, `0x5`, `1 2`, empty ----

both_engines! {
    fn cl_different_values_list_rejected(engine) {
        refused_head(engine, &post("Content-Length: 5, 6\r\n", "hello!"), 400);
    }
    fn cl_trailing_comma_rejected(engine) {
        refused_head(engine, &post("Content-Length: 5,\r\n", "hello"), 400);
    }
    fn cl_decimal_point_rejected(engine) {
        refused_head(engine, &post("Content-Length: 5.0\r\n", "hello"), 400);
    }
    fn cl_exponent_rejected(engine) {
        refused_head(engine, &post("Content-Length: 1e1\r\n", "helloworld"), 400);
    }
    fn cl_u64_overflow_rejected(engine) {
        // 2^64: a parser that wraps would read 0 and take "hello" as the next request.
        refused_head(engine, &post("Content-Length: 18446744073709551616\r\n", "hello"), 400);
    }
    fn cl_leading_zero_normalised(engine) {
        let r = forwarded_once(engine, &post("Content-Length: 05\r\n", "hello"), b"hello");
        assert_eq!(r.header_all("content-length"), ["5"], "{}", r.raw_head);
    }
    fn cl_with_leading_space_normalised(engine) {
        let r = forwarded_once(engine, &post("Content-Length:  5\r\n", "hello"), b"hello");
        assert_eq!(r.header_all("content-length"), ["5"], "{}", r.raw_head);
    }
    fn cl_0_get_body_is_not_a_second_request(engine) {
        // CL.0: a backend that ignores the body of a GET would read it as a request. The
        // proxy forwards the body with its length, so a backend that honours Content-Length
        // (as the test origin does) gets one request; tests/regressions.rs checks that such a
        // connection is never pooled.
        let raw = format!("GET /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len());
        let r = forwarded_once(engine, raw.as_bytes(), SMUGGLED.as_bytes());
        assert_eq!(r.path(), "/a");
        assert_eq!(r.header_all("content-length"), [SMUGGLED.len().to_string().as_str()]);
    }
    fn zero_cl_body_sent_later_is_still_body(engine) {
        // 0.CL: the front end must wait for the Content-Length body even when it arrives in a
        // later segment; the next request on the connection is then the client's own.
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(format!("GET /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n", SMUGGLED.len()).as_bytes());
        assert!(origin.wait_for(Duration::from_secs(10), |s| s.heads.len() == 1), "the head is forwarded");
        c.send(SMUGGLED.as_bytes());
        assert_eq!(c.read_response().status(), 200);
        c.send(&get("example.com", "/next"));
        assert_eq!(c.read_response().status(), 200);
        settle(proxy, &origin);
        origin.assert_no_errors();
        assert_nothing_smuggled(&origin);
        let got = origin.requests();
        let paths: Vec<&str> = got.iter().map(|r| r.path()).collect();
        assert_eq!(paths, ["/a", "/next"]);
        assert_eq!(got[0].body, SMUGGLED.as_bytes());
        assert!(got[1].body.is_empty());
    }
}

// ---- Chunk sizes and extensions: tests/framing.rs covers `zz`, 18 f's, `-5`, `0x5`, empty ----

both_engines! {
    fn chunk_size_17_hex_digits_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "ffffffffffffffff1\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_size_over_15_digits_of_leading_zeros_refused(engine) {
        // Legal by the grammar (1*HEXDIG), refused by the 15-digit bound that rules out
        // overflow; refused, never truncated.
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "0000000000000005\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_size_leading_space_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", " 5\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_size_trailing_whitespace_accepted(engine) {
        // BWS before a `;` (RFC 9112 §7.1.1) is accepted, and so is BWS before the CRLF: the
        // size is unambiguous, and the proxy writes its own size lines.
        forwarded_chunked_hello(engine, &post("Transfer-Encoding: chunked\r\n", "5 \r\nhello\r\n0\t\r\n\r\n"));
    }
    fn chunk_extension_with_bws_accepted(engine) {
        forwarded_chunked_hello(engine, &post("Transfer-Encoding: chunked\r\n", "5 ; a=b\r\nhello\r\n0;last\r\n\r\n"));
    }
    fn chunk_extension_with_bare_lf_rejected(engine) {
        // A parser that ends the size line at the LF reads "xx" as data: the request hidden
        // after it would be a second request to it.
        let body = format!("5;a\nxx\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", &body));
    }
    fn chunk_extension_quoted_crlf_rejected(engine) {
        // A quoted-string cannot hold CR or LF; a parser that skips to the closing quote
        // would not see the size line end here.
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5;a=\"x\r\ny\"\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_extension_with_control_character_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5;a=\x01\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_data_shorter_than_size_then_request_rejected(engine) {
        // The size covers more than the data: a parser that trusts the CRLF it finds would
        // see the hidden request.
        let body = format!("a\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", &body));
    }
}

// ---- Line endings inside chunked framing ----

both_engines! {
    fn chunked_bare_lf_after_size_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"));
    }
    fn chunked_bare_lf_after_data_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\n0\r\n\r\n"));
    }
    fn chunked_bare_lf_after_last_chunk_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\n\r\n"));
    }
    fn chunked_bare_lf_ending_trailer_section_rejected(engine) {
        let body = format!("5\r\nhello\r\n0\r\n\n{SMUGGLED}");
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", &body));
    }
    fn chunked_bare_cr_after_size_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\rhello\r\n0\r\n\r\n"));
    }
    fn chunked_bare_cr_after_data_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r0\r\n\r\n"));
    }
}

// ---- Trailers ----

both_engines! {
    fn framing_fields_in_trailers_are_dropped(engine) {
        // A backend that merged trailers into the head would re-frame, or re-route, the
        // request: request trailers are never forwarded.
        let backend = LockStep::bind();
        let proxy = Config::single(backend.addr()).start(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&post(
            "Transfer-Encoding: chunked\r\n",
            "2;name=value\r\nhe\r\n3\r\nllo\r\n0\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\nHost: evil.example\r\n\r\n",
        ));
        let mut conn = backend.accept();
        let head = conn.read_head();
        assert!(head.starts_with("POST /upload HTTP/1.1\r\nHost: example.com\r\n"), "{head}");
        let (payload, framing) = read_chunked_raw(&mut conn);
        assert_eq!(payload, b"hello");
        let framing = String::from_utf8_lossy(&framing).into_owned();
        assert!(!framing.contains(';'), "chunk extensions must not be forwarded: {framing:?}");
        assert!(framing.ends_with("\r\n0\r\n\r\n"), "no trailer field may be forwarded: {framing:?}");
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(c.read_response().status(), 200);
        drop(proxy);
        let rest = conn.read_to_close(Duration::from_secs(10)).expect("the proxy closed its connection");
        assert!(rest.is_empty(), "bytes after the request: {:?}", String::from_utf8_lossy(&rest));
        assert_eq!(backend.accepted(), 1);
    }
    fn trailer_obs_fold_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n"));
    }
    fn trailer_starting_with_whitespace_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n Content-Length: 10\r\n\r\n"));
    }
    fn trailer_without_colon_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"));
    }
    fn trailer_name_with_space_rejected(engine) {
        refused_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nContent-Length : 10\r\n\r\n"));
    }
}

/// Reads one chunked body as the proxy wrote it: (decoded payload, the framing bytes alone).
fn read_chunked_raw(conn: &mut LockConn) -> (Vec<u8>, Vec<u8>) {
    fn line(conn: &mut LockConn) -> Vec<u8> {
        let mut l = Vec::new();
        while !l.ends_with(b"\r\n") {
            l.extend(conn.read_exact(1));
            assert!(l.len() < 4096, "framing line too long: {l:?}");
        }
        l
    }
    let (mut payload, mut framing) = (Vec::new(), Vec::new());
    loop {
        let l = line(conn);
        framing.extend_from_slice(&l);
        let hex: String = String::from_utf8_lossy(&l)
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        let n = usize::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("bad size line {l:?}"));
        if n == 0 {
            loop {
                let t = line(conn);
                framing.extend_from_slice(&t);
                if t == b"\r\n" {
                    return (payload, framing);
                }
            }
        }
        payload.extend(conn.read_exact(n));
        let end = conn.read_exact(2);
        assert_eq!(end, b"\r\n");
        framing.extend_from_slice(&end);
    }
}

// ---- Field syntax: tests/framing.rs covers bare CR, obs-fold, space before colon, NUL/CTL/DEL in values ----

both_engines! {
    fn field_name_with_space_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nContent Length: 5\r\n\r\nhello", 400);
    }
    fn field_name_with_tab_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length\t: 5\r\n\r\nhello", 400);
    }
    fn field_name_with_nul_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nX\x00Y: 1\r\n\r\n", 400);
    }
    fn field_name_with_non_token_byte_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nX(y): 1\r\n\r\n", 400);
    }
    fn field_with_empty_name_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\n: 1\r\n\r\n", 400);
    }
    fn bare_cr_ending_a_field_line_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\r\nX: 1\r\n\r\n", 400);
    }
    fn bare_lf_line_endings_normalised(engine) {
        // RFC 9112 §2.2 lets a recipient take a bare LF as a line end; what is forwarded is
        // CRLF-framed and has exactly the fields the proxy parsed.
        let r = forwarded_once(engine, b"POST /lf HTTP/1.1\nHost: example.com\nContent-Length: 5\nX-A: 1\n\nhello", b"hello");
        assert_eq!(r.path(), "/lf");
        assert_eq!(r.header("x-a"), Some("1"));
        assert_eq!(r.header_all("content-length"), ["5"]);
    }
    fn leading_empty_line_before_request_ignored(engine) {
        // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request.
        let r = forwarded_once(engine, b"\r\nGET /after-crlf HTTP/1.1\r\nHost: example.com\r\n\r\n", b"");
        assert_eq!(r.path(), "/after-crlf");
    }
}

// ---- Host ----

both_engines! {
    fn host_duplicate_differing_case_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1\r\nhost: a.example\r\nHOST: b.example\r\n\r\n", 400);
    }
    fn host_list_value_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n", 400);
    }
    fn absolute_form_authority_overrides_host(engine) {
        // RFC 9112 §3.2.2: the target's authority wins; the backend sees one Host, that one,
        // and an origin-form target.
        let r = forwarded_once(engine, b"GET http://b.example/x?q HTTP/1.1\r\nHost: a.example\r\n\r\n", b"");
        assert_eq!(r.target, "/x?q");
        assert_eq!(r.header_all("host"), ["b.example"], "{}", r.raw_head);
        assert!(!r.raw_head.contains("a.example"), "{}", r.raw_head);
    }
    fn absolute_form_without_host_rejected(engine) {
        refused_head(engine, b"GET http://b.example/x HTTP/1.1\r\n\r\n", 400);
    }
    fn absolute_form_with_an_invalid_host_rejected(engine) {
        // RFC 9112 §3.2: a Host with an invalid value is a 400 whatever the target's form (it
        // was ignored, unchecked, behind an absolute-form target; found by a review).
        refused_head(engine, b"GET http://b.example/x HTTP/1.1\r\nHost: x y [z]\r\n\r\n", 400);
        refused_head(engine, b"GET http://b.example/x HTTP/1.1\r\nHost: a.example:80:81\r\n\r\n", 400);
    }
    fn absolute_form_with_two_hosts_rejected(engine) {
        refused_head(engine, b"GET http://b.example/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    }
    fn target_in_none_of_the_four_forms_rejected(engine) {
        // RFC 9112 §3.2. A catch-all route would have taken each of these to the backend,
        // which may read `admin/secret` as `/admin/secret`: a path no route matched.
        for target in [
            "admin/secret",
            "?x",
            "*",
            "example.com:80",
            "http:/x",
            "http:///x",
            "ftp://b.example/x",
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n");
            refused_head(engine, raw.as_bytes(), 400);
        }
    }
    fn options_asterisk_forwarded_as_asterisk(engine) {
        let r = forwarded_once(engine, b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n", b"");
        assert_eq!(r.method, "OPTIONS");
        assert_eq!(r.target, "*", "{}", r.raw_head);
    }
}

// ---- Request line and version ----

both_engines! {
    fn request_line_double_space_rejected(engine) {
        refused_head(engine, b"GET  / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400);
    }
    fn request_line_trailing_space_rejected(engine) {
        refused_head(engine, b"GET / HTTP/1.1 \r\nHost: example.com\r\n\r\n", 400);
    }
    fn request_line_tab_separator_rejected(engine) {
        refused_head(engine, b"GET\t/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400);
    }
    fn request_line_leading_space_rejected(engine) {
        refused_head(engine, b" GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400);
    }
    fn http_0_9_request_rejected(engine) {
        refused_head(engine, b"GET /\r\n\r\n", 400);
    }
    fn lower_case_version_refused(engine) {
        // Not an HTTP-version at all (case-sensitive, RFC 9112 2.3): a malformed request
        // line, 400; 505 is for a version the proxy does not speak.
        refused_head(engine, b"GET / http/1.1\r\nHost: example.com\r\n\r\n", 400);
    }
    fn http_1_2_refused(engine) {
        refused_head(engine, b"GET / HTTP/1.2\r\nHost: example.com\r\n\r\n", 505);
    }
    fn http_1_0_with_te_chunked_rejected(engine) {
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
        let body = format!("0\r\n\r\n{SMUGGLED}");
        refused_head(engine, format!("POST /old HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes(), 400);
    }
    fn http_1_0_with_te_and_cl_rejected(engine) {
        let body = format!("0\r\n\r\n{SMUGGLED}");
        let raw = format!("POST /old HTTP/1.0\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}", body.len());
        refused_head(engine, raw.as_bytes(), 400);
    }
}

// ---- Expect ----

both_engines! {
    fn unknown_expectation_refused(engine) {
        refused_head(engine, &post("Expect: 100-continuex\r\nContent-Length: 5\r\n", "hello"), 417);
    }
    fn expect_100_continue_body_sent_at_once_is_one_request(engine) {
        // The client does not wait for the 100: the body is still body, and the pipelined
        // request after it is the client's next request.
        let mut raw = post("Expect: 100-continue\r\nContent-Length: 5\r\n", "hello");
        raw.extend_from_slice(&get("example.com", "/next"));
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&raw);
        let (_, r) = c.read_final_response("POST");
        assert_eq!(r.status(), 200);
        assert_eq!(c.read_response().status(), 200);
        settle(proxy, &origin);
        origin.assert_no_errors();
        let got = origin.requests();
        let paths: Vec<&str> = got.iter().map(|r| r.path()).collect();
        assert_eq!(paths, ["/upload", "/next"]);
        assert_eq!(got[0].body, b"hello");
    }
}
