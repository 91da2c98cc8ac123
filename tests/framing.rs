//! Request framing and smuggling defences (RFC 9112 sections 2, 5, 6, 7).
//!
//! Every malformed request must get `400` with `Connection: close`, the
//! connection must then be closed, and the origin must receive nothing
//! (body-framing errors: no complete request).

use crate::support::*;

fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: example.com\r\n{headers}\r\n{body}").into_bytes()
}

fn rejects(engine: Engine, raw: &[u8]) {
    let (proxy, origin) = proxy_with_origin(engine);
    assert_rejected_400(&proxy, &origin, raw);
}

fn rejects_body(engine: Engine, raw: &[u8]) {
    let (proxy, origin) = proxy_with_origin(engine);
    assert_rejected_400_body(&proxy, &origin, raw);
}

/// A valid request must be forwarded with the body `hello`.
fn accepts_hello(engine: Engine, raw: &[u8]) {
    let (proxy, origin) = proxy_with_origin(engine);
    let mut c = Client::connect(proxy.addr());
    c.send(raw);
    let r = c.read_response();
    assert_eq!(
        r.status(),
        200,
        "valid request {:?} must be proxied; got:\n{}",
        String::from_utf8_lossy(raw),
        r.head.raw
    );
    // Once final (the proxy stopped, every origin connection read to its end): exactly one
    // request, with the decoded body.
    crate::smuggling::settle(proxy, &origin);
    origin.assert_no_errors();
    assert_eq!(origin.head_count(), 1, "{:#?}", origin.heads());
    let rec = origin.last_request();
    assert_eq!(rec.body, b"hello", "origin must receive the decoded body");
}

// ---- Content-Length + Transfer-Encoding ----

both_engines! {
    fn cl_and_te_rejected(engine) {
        rejects(engine, &post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"));
    }
    fn te_and_cl_rejected(engine) {
        rejects(engine, &post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"));
    }
    fn cl_te_smuggled_request_never_reaches_backend(engine) {
        // CL.TE desync: a CL-trusting hop would see one request, a TE-trusting
        // hop would see a second request /smuggled hidden in the body.
        let body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let raw = post(&format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", body.len()), body);
        let (proxy, origin) = proxy_with_origin(engine);
        assert_rejected_400(&proxy, &origin, &raw);
        assert!(!origin.heads().iter().any(|h| h.contains("/smuggled")));
    }
    fn te_cl_smuggled_request_never_reaches_backend(engine) {
        // TE.CL desync: CL covers only the chunk-size line.
        let inner = "GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let body = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
        let raw = post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", &body);
        let (proxy, origin) = proxy_with_origin(engine);
        assert_rejected_400(&proxy, &origin, &raw);
        assert!(!origin.heads().iter().any(|h| h.contains("/smuggled")));
    }
}

// ---- Content-Length ----

both_engines! {
    fn duplicate_cl_same_value_rejected(engine) {
        rejects(engine, &post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"));
    }
    fn duplicate_cl_different_values_rejected(engine) {
        rejects(engine, &post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"));
    }
    fn cl_list_value_rejected(engine) {
        rejects(engine, &post("Content-Length: 5, 5\r\n", "hello"));
    }
    fn cl_plus_sign_rejected(engine) {
        rejects(engine, &post("Content-Length: +5\r\n", "hello"));
    }
    fn cl_negative_rejected(engine) {
        rejects(engine, &post("Content-Length: -5\r\n", "hello"));
    }
    fn cl_inner_space_rejected(engine) {
        rejects(engine, &post("Content-Length: 1 2\r\n", "hello world!"));
    }
    fn cl_hex_rejected(engine) {
        rejects(engine, &post("Content-Length: 0x5\r\n", "hello"));
    }
    fn cl_empty_rejected(engine) {
        rejects(engine, &post("Content-Length: \r\n", "hello"));
    }
}

// ---- Transfer-Encoding ----

both_engines! {
    fn te_chunked_then_gzip_rejected(engine) {
        rejects(engine, &post("Transfer-Encoding: chunked, gzip\r\n", "5\r\nhello\r\n0\r\n\r\n"));
    }
    fn te_gzip_only_rejected(engine) {
        rejects(engine, &post("Transfer-Encoding: gzip\r\n", "5\r\nhello\r\n0\r\n\r\n"));
    }
    fn te_identity_rejected(engine) {
        rejects(engine, &post("Transfer-Encoding: identity\r\n", "5\r\nhello\r\n0\r\n\r\n"));
    }
    fn te_chunked_twice_rejected(engine) {
        rejects(engine, &post("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"));
    }
    fn te_two_chunked_fields_rejected(engine) {
        rejects(engine, &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"));
    }
    fn te_xchunked_rejected(engine) {
        rejects(engine, &post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"));
    }
    fn te_obs_fold_rejected(engine) {
        rejects(engine, &post("Transfer-Encoding:\r\n chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"));
    }
}

// ---- Field syntax ----

both_engines! {
    fn bare_cr_in_request_line_rejected(engine) {
        rejects(engine, b"GET /a\rb HTTP/1.1\r\nHost: example.com\r\n\r\n");
    }
    fn bare_cr_in_header_value_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\rb\r\n\r\n");
    }
    fn obs_fold_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: first\r\n second\r\n\r\n");
    }
    fn space_before_colon_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Foo : bar\r\n\r\n");
    }
    fn space_before_colon_in_host_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n");
    }
    fn nul_in_header_value_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\0b\r\n\r\n");
    }
    fn ctl_in_header_value_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\x01b\r\n\r\n");
    }
    fn del_in_header_value_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a\x7fb\r\n\r\n");
    }
    fn missing_host_http11_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n");
    }
    fn two_host_headers_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n");
    }
    fn two_identical_host_headers_rejected(engine) {
        rejects(engine, b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n");
    }
}

// ---- Chunked body syntax ----

both_engines! {
    fn chunk_size_non_hex_rejected(engine) {
        rejects_body(engine, &post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_size_overflow_rejected(engine) {
        rejects_body(engine, &post("Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_size_negative_rejected(engine) {
        rejects_body(engine, &post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_size_0x_prefix_rejected(engine) {
        rejects_body(engine, &post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_size_empty_rejected(engine) {
        rejects_body(engine, &post("Transfer-Encoding: chunked\r\n", "\r\nhello\r\n0\r\n\r\n"));
    }
    fn chunk_data_without_crlf_rejected(engine) {
        rejects_body(engine, &post("Transfer-Encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n"));
    }
    fn chunk_data_longer_than_size_rejected(engine) {
        // The smuggled request sits where the CRLF after the data must be.
        rejects_body(engine, &post(
            "Transfer-Encoding: chunked\r\n",
            "3\r\nhelloGET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n0\r\n\r\n",
        ));
    }
}

// ---- Valid but unusual framing must still be accepted ----

both_engines! {
    fn valid_cl_with_ows_accepted(engine) {
        accepts_hello(engine, &post("Content-Length:   5  \r\n", "hello"));
    }
    fn valid_te_mixed_case_accepted(engine) {
        accepts_hello(engine, &post("Transfer-Encoding: Chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"));
    }
    fn valid_chunk_extensions_and_trailers_accepted(engine) {
        accepts_hello(engine, &post(
            "Transfer-Encoding: chunked\r\n",
            "2;name=value\r\nhe\r\n3;flag\r\nllo\r\n0\r\nX-Trailer: 1\r\n\r\n",
        ));
    }
    fn valid_chunk_size_leading_zeros_accepted(engine) {
        accepts_hello(engine, &post("Transfer-Encoding: chunked\r\n", "0005\r\nhello\r\n000\r\n\r\n"));
    }
    fn valid_uppercase_hex_chunk_size_accepted(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let body = pattern::pattern_vec(0xAB);
        let mut raw = post("Transfer-Encoding: chunked\r\n", "AB\r\n");
        raw.extend_from_slice(&body);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut c = Client::connect(proxy.addr());
        c.send(&raw);
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(origin.last_request().body, body);
    }
    fn http10_without_host_accepted(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(b"GET /old HTTP/1.0\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status(), 200, "an HTTP/1.0 request without Host is valid; got:\n{}", r.head.raw);
        assert_eq!(origin.last_request().path(), "/old");
    }
}
