//! Unit tests of `http::parse`: heads whole, split at every byte, and refused.
use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 16384,
    max_headers: 100,
    max_uri_bytes: 8192,
};

fn req(bytes: &[u8]) -> Result<RequestHead, ParseError> {
    let mut head = RequestHead::default();
    match parse_request(bytes, &LIMITS, &mut head)? {
        Parsed::Complete(()) => Ok(head),
        Parsed::Partial => panic!("partial: {:?}", String::from_utf8_lossy(bytes)),
    }
}

/// Every prefix of a valid head is Partial; the whole is Complete with the same result.
fn split_everywhere(bytes: &[u8]) -> RequestHead {
    for cut in 0..bytes.len() {
        let mut head = RequestHead::default();
        match parse_request(&bytes[..cut], &LIMITS, &mut head) {
            Ok(Parsed::Partial) => {}
            other => panic!("prefix {cut} gave {:?}", other.map(|_| ())),
        }
    }
    req(bytes).expect("complete head")
}

#[test]
fn typical_get_split_at_every_byte() {
    let raw = b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
    let head = split_everywhere(raw);
    assert_eq!(head.method(), Method::Get);
    assert_eq!(head.target.get(raw), b"/a/b?c=d");
    assert_eq!(head.host.unwrap().get(raw), b"example.com");
    assert_eq!(head.framing(), BodyFraming::None);
    assert_eq!(head.head_len, raw.len());
    assert!(head.wants_keep_alive());
}

/// Request heads of many shapes: methods, target forms, versions, header spellings,
/// Content-Length / chunked / none, Connection and Expect, with a body or a pipelined
/// request after them. Each is valid; the expected method, target and framing come along.
fn generated_heads() -> Vec<(Vec<u8>, &'static str, &'static str, BodyFraming)> {
    const METHODS: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "PURGE",
    ];
    const TARGETS: &[&str] = &[
        "/",
        "/a/b?c=d&e=%20f",
        "*",
        "http://example.com:8080/x?y",
        "/very/long/path/with/many/segments/and-a-query?k=v&k2=v2",
    ];
    const SHAPES: &[&str] = &[
        "",
        "User-Agent: t\r\nAccept: */*\r\n",
        "x-lower: v\r\nX-UPPER: V\r\n",
        "X-Tight:v\r\nX-Padded:   v  \t\r\n",
        "X-Empty:\r\nX-Empty-Space: \r\n",
        "X-Tab: a\tb\r\nX-Obs: café\r\n",
        "Connection: close\r\n",
        "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n",
        "Expect: 100-continue\r\n",
        "Cookie: a=1; b=2\r\nCookie: c=3\r\nX-Forwarded-For: 1.2.3.4\r\n",
    ];
    const FRAMING: &[(&str, BodyFraming, &str)] = &[
        ("", BodyFraming::None, ""),
        ("Content-Length: 0\r\n", BodyFraming::Length(0), ""),
        ("Content-Length: 5\r\n", BodyFraming::Length(5), "hello"),
        (
            "content-length:12345\r\n",
            BodyFraming::Length(12345),
            "abc",
        ),
        (
            "Transfer-Encoding: chunked\r\n",
            BodyFraming::Chunked,
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding: CHUNKED\r\n",
            BodyFraming::Chunked,
            "0\r\n\r\n",
        ),
    ];
    let mut out = Vec::new();
    for (i, method) in METHODS.iter().enumerate() {
        for (j, target) in TARGETS.iter().enumerate() {
            if *target == "*" && *method != "OPTIONS" {
                continue; // asterisk-form is OPTIONS' alone
            }
            for (k, shape) in SHAPES.iter().enumerate() {
                let (framing, want, body) = FRAMING[(i + j + k) % FRAMING.len()];
                let version = if (i + k) % 5 == 0 { "1.0" } else { "1.1" };
                if version == "1.0" && want == BodyFraming::Chunked {
                    continue;
                }
                let host = match (version, k % 3) {
                    ("1.0", 0) => String::new(),
                    (_, 1) => "host: example.com:8080\r\n".into(),
                    _ => "Host: example.com\r\n".into(),
                };
                // The Host, the framing and the other fields in an order that varies.
                let fields = match (i + j) % 3 {
                    0 => format!("{host}{shape}{framing}"),
                    1 => format!("{shape}{framing}{host}"),
                    _ => format!("{framing}{host}{shape}"),
                };
                let after = if j % 2 == 0 {
                    body
                } else {
                    "GET /next HTTP/1.1\r\n"
                };
                let raw = format!("{method} {target} HTTP/{version}\r\n{fields}\r\n{after}");
                out.push((raw.into_bytes(), *method, *target, want));
            }
        }
    }
    out
}

/// Any generated head split at any byte boundary parses as it does whole: cut in two
/// pieces (a fresh head each time), and fed byte by byte into one reused head, as a
/// connection does. Prefixes shorter than the head are Partial; longer ones, with part
/// of the body or of the next request after it, give the same head.
#[test]
fn generated_heads_split_at_every_byte() {
    let heads = generated_heads();
    assert!(heads.len() > 300);
    for (raw, method, target, framing) in &heads {
        let whole = req(raw).expect("valid head");
        assert_eq!(whole.method.get(raw), method.as_bytes());
        assert_eq!(whole.target.get(raw), target.as_bytes());
        assert_eq!(whole.framing(), *framing);
        let n = whole.head_len;
        assert!(raw[..n].ends_with(b"\r\n\r\n"));
        let want = format!("{whole:?}");
        let mut reused = RequestHead::default();
        for cut in 0..=raw.len() {
            // Two pieces: the first alone, then both.
            let mut first = RequestHead::default();
            let r = parse_request(&raw[..cut], &LIMITS, &mut first);
            // Byte by byte: the buffer grows by one byte per parse.
            let b = parse_request(&raw[..cut], &LIMITS, &mut reused);
            for (r, head) in [(r, &first), (b, &reused)] {
                match r {
                    Ok(Parsed::Partial) if cut < n => {}
                    Ok(Parsed::Complete(())) if cut >= n => {
                        assert_eq!(format!("{head:?}"), want, "cut {cut}")
                    }
                    other => panic!(
                        "{:?} cut {cut} gave {:?}",
                        String::from_utf8_lossy(raw),
                        other.map(|_| ())
                    ),
                }
            }
        }
        assert_eq!(format!("{:?}", req(raw).unwrap()), want);
    }
}

/// Found writing the `request_head` fuzz target's split check: a request line longer than
/// `max_uri_bytes + 32` (a long method, a short target) was refused with 414 while it
/// arrived, but accepted when the whole head came in one read.
#[test]
fn long_request_line_is_refused_whole_and_in_pieces() {
    let small = HeadLimits {
        max_header_bytes: 96,
        max_headers: 3,
        max_uri_bytes: 16,
    };
    let raw = format!("{} / HTTP/1.0\r\n\r\n", "M".repeat(40));
    let mut head = RequestHead::default();
    assert_eq!(
        parse_request(&raw.as_bytes()[..50], &small, &mut head).err(),
        Some(ParseError::UriTooLong)
    );
    assert_eq!(
        parse_request(raw.as_bytes(), &small, &mut head).err(),
        Some(ParseError::UriTooLong)
    );
    // At the limit the line is accepted, whole and in every piece.
    let raw = format!("{} /{} HTTP/1.0\r\n\r\n", "M".repeat(21), "a".repeat(15));
    assert_eq!(raw.find('\n'), Some(small.max_uri_bytes + 32));
    for cut in 0..raw.len() {
        assert!(matches!(
            parse_request(&raw.as_bytes()[..cut], &small, &mut head),
            Ok(Parsed::Partial)
        ));
    }
    assert!(matches!(
        parse_request(raw.as_bytes(), &small, &mut head),
        Ok(Parsed::Complete(()))
    ));
}

/// Found writing the `response_head` fuzz target's split check: a head over the limit was
/// refused when it arrived in pieces but accepted when it came in one read.
#[test]
fn response_head_over_limit_is_refused_whole_and_in_pieces() {
    let small = HeadLimits {
        max_header_bytes: 64,
        max_headers: 10,
        max_uri_bytes: 16,
    };
    let raw = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(60));
    let mut head = ResponseHead::default();
    assert_eq!(
        parse_response(&raw.as_bytes()[..64], &small, &mut head).err(),
        Some(ParseError::HeadTooLarge)
    );
    assert_eq!(
        parse_response(raw.as_bytes(), &small, &mut head).err(),
        Some(ParseError::HeadTooLarge)
    );
    let raw = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(64 - 24));
    assert_eq!(raw.len(), 64);
    assert!(matches!(
        parse_response(raw.as_bytes(), &small, &mut head),
        Ok(Parsed::Complete(()))
    ));
}

#[test]
fn framing_rules() {
    let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
    assert_eq!(h.framing(), BodyFraming::Length(5));
    let h = req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
    assert_eq!(h.framing(), BodyFraming::Chunked);
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic a\r\nauthorization: Basic b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
        b"GET\r/ HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(
            matches!(req(bad), Err(ParseError::Malformed(_))),
            "accepted {:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn only_the_four_request_target_forms_are_accepted() {
    let line = |t: &str| format!("{t} HTTP/1.1\r\nHost: a\r\n\r\n");
    for good in [
        "GET /",
        "GET /a/b?c=d",
        "GET //double",
        "GET http://b.example/x",
        "GET HTTPS://B.example",
        "GET http://b.example?q",
        "GET http://[::1]:8080/x",
        "OPTIONS *",
        "OPTIONS /",
        "CONNECT b.example:443",
        "GET /caf\u{e9}?q=%C3%A9&r=%2f%2F",
        "GET /a!$&'()*+,;=:@-._~/b?c=[d]",
        // What browsers, fetch and curl send raw: `|` and `^` in a path, and in a query
        // anything visible (it is neither routed on nor decoded) but a fragment.
        "GET /a|b^c",
        "GET /maps?markers=color:red|label:S",
        "GET /search?filter={%22a%22:1}&x=`y`&z=a\\b&w=<\"v\">",
        "GET /q?x=100%&y=%zz",
        "GET http://b.example/p?{x}",
    ] {
        assert!(req(line(good).as_bytes()).is_ok(), "refused {good:?}");
    }
    for bad in [
        "GET foo",
        "GET admin/secret",
        "GET ?x",
        "GET *",
        "POST *",
        "GET b.example:443",
        "GET http:/x",
        "GET http:x",
        "GET http://",
        "GET http:///x",
        "GET https://?q",
        "GET ftp://b.example/x",
        "GET httpx://b.example/x",
        "GET /admin#x",
        "GET http://b.example/#",
        "GET /public\\..\\admin/x",
        "GET /\\admin",
        "GET /a\"b",
        "GET /a<b>",
        "GET /a`b",
        "GET /a{b}",
        "GET /%zz",
        "GET /%4",
        "GET /a%",
        "GET /?q#x",
        "GET /p?x={\"a\":1}#frag",
    ] {
        assert_eq!(
            req(line(bad).as_bytes()).err(),
            Some(ParseError::Malformed("request target form")),
            "accepted {bad:?}"
        );
    }
}

#[test]
fn limits_map_to_statuses() {
    let small = HeadLimits {
        max_header_bytes: 64,
        max_headers: 2,
        max_uri_bytes: 16,
    };
    let mut head = RequestHead::default();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(20));
    assert_eq!(
        parse_request(long_uri.as_bytes(), &small, &mut head).err(),
        Some(ParseError::UriTooLong)
    );
    let unfinished_uri = format!("GET /{}", "a".repeat(60));
    assert_eq!(
        parse_request(unfinished_uri.as_bytes(), &small, &mut head).err(),
        Some(ParseError::UriTooLong)
    );
    let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    assert_eq!(
        parse_request(many, &small, &mut head).err(),
        Some(ParseError::TooManyHeaders)
    );
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nA: {}\r\n", "x".repeat(80));
    assert_eq!(
        parse_request(big.as_bytes(), &small, &mut head).err(),
        Some(ParseError::HeadTooLarge)
    );
}

#[test]
fn connection_tokens_and_versions() {
    let raw = b"GET / HTTP/1.0\r\nConnection: keep-alive, X-Foo\r\n\r\n";
    let h = req(raw).unwrap();
    assert!(h.wants_keep_alive());
    assert!(h.named_in_connection(raw, b"x-foo"));
    let h = req(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(!h.wants_keep_alive());
    let h = req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    assert!(!h.wants_keep_alive());
    assert!(matches!(
        req(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"),
        Err(ParseError::Expectation)
    ));
    let h = req(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
        .unwrap();
    assert!(h.expect_continue);
    // Empty list members are ignored (RFC 9110 §5.6.1.2); a repeated 100-continue is one.
    for (expect, continues) in [
        ("", false),
        (" , 100-continue", true),
        ("100-continue, 100-continue", true),
        (",", false),
    ] {
        let raw =
            format!("PUT / HTTP/1.1\r\nHost: a\r\nExpect: {expect}\r\nContent-Length: 1\r\n\r\n");
        let h = req(raw.as_bytes()).unwrap_or_else(|e| panic!("{expect:?}: {e:?}"));
        assert_eq!(h.expect_continue, continues, "{expect:?}");
    }
    assert!(matches!(
        req(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, foo\r\n\r\n"),
        Err(ParseError::Expectation)
    ));
}

#[test]
fn a_version_it_does_not_speak_is_505_a_malformed_one_400_in_every_piece() {
    let cases: [(&[u8], ParseError); 5] = [
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", ParseError::Version),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", ParseError::Version),
        (b"\r\nGET / HTTP/3.0\r\n\r\n", ParseError::Version),
        (
            b"GET / x y\r\nHost: a\r\n\r\n",
            ParseError::Malformed("invalid HTTP version"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\r\n",
            ParseError::Malformed("invalid HTTP version"),
        ),
    ];
    for (raw, want) in cases {
        let text = String::from_utf8_lossy(raw);
        for cut in 1..=raw.len() {
            let mut head = RequestHead::default();
            match parse_request(&raw[..cut], &LIMITS, &mut head) {
                Ok(Parsed::Partial) => assert!(cut < raw.len(), "{text:?} whole"),
                Ok(Parsed::Complete(())) => panic!("{text:?} accepted at {cut}"),
                Err(e) => assert_eq!(e, want, "{text:?} cut at {cut}"),
            }
        }
    }
}

#[test]
fn header_by_name_is_the_first_match_in_any_case() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Id: one\r\nx-id: two\r\nEmpty:\r\n\r\n";
    let h = req(raw).unwrap();
    assert_eq!(h.header(raw, b"x-id"), Some(&b"one"[..]));
    assert_eq!(h.header(raw, b"X-ID"), Some(&b"one"[..]));
    assert_eq!(h.header(raw, b"empty"), Some(&b""[..]));
    assert_eq!(h.header(raw, b"x-i"), None);
    assert_eq!(h.header(raw, b"referer"), None);
}

#[test]
fn response_framing_split_at_every_byte() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y\r\n\r\n";
    for cut in 0..raw.len() {
        let mut head = ResponseHead::default();
        assert!(matches!(
            parse_response(&raw[..cut], &LIMITS, &mut head),
            Ok(Parsed::Partial)
        ));
    }
    let mut head = ResponseHead::default();
    assert!(matches!(
        parse_response(raw, &LIMITS, &mut head),
        Ok(Parsed::Complete(()))
    ));
    assert_eq!(head.framing(Method::Get), BodyFraming::Length(12));
    assert_eq!(head.framing(Method::Head), BodyFraming::None);
    assert_eq!(head.reason.get(raw), b"OK");
    // obs-text in the reason (RFC 9112 §4): kept as sent, not blanked.
    for (raw, reason) in [
        (
            &b"HTTP/1.1 404 Non trouv\xe9\r\n\r\n"[..],
            &b"Non trouv\xe9"[..],
        ),
        (
            "HTTP/1.1 200 OK \u{2713}\r\n\r\n".as_bytes(),
            "OK \u{2713}".as_bytes(),
        ),
        (b"HTTP/1.1 200 \r\n\r\n", b""),
        (b"HTTP/1.1 200\r\n\r\n", b""),
    ] {
        let mut head = ResponseHead::default();
        assert!(parse_response(raw, &LIMITS, &mut head).is_ok());
        assert_eq!(head.reason.get(raw), reason);
    }
    let mut head = ResponseHead::default();
    assert!(parse_response(b"HTTP/1.1 200 O\rK\r\n\r\n", &LIMITS, &mut head).is_err());

    let mut head = ResponseHead::default();
    let raw = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";
    assert!(parse_response(raw, &LIMITS, &mut head).is_ok());
    assert_eq!(head.framing(Method::Get), BodyFraming::None);
    let raw = b"HTTP/1.0 200 OK\r\n\r\n";
    assert!(parse_response(raw, &LIMITS, &mut head).is_ok());
    assert_eq!(head.framing(Method::Get), BodyFraming::UntilClose);
    assert!(!head.upstream_keep_alive());
    let raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
    assert!(parse_response(raw, &LIMITS, &mut head).is_ok());
    assert!(!head.upstream_keep_alive(), "never reused after HTTP/1.0");
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert!(parse_response(raw, &LIMITS, &mut head).is_err());
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(parse_response(raw, &LIMITS, &mut head).is_err());
}

#[test]
fn response_status_codes_are_100_to_599() {
    for (code, ok) in [
        (100, true),
        (200, true),
        (599, true),
        (600, false),
        (999, false),
    ] {
        let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
        let got = parse_response(raw.as_bytes(), &LIMITS, &mut ResponseHead::default());
        assert_eq!(got.is_ok(), ok, "{code}: {:?}", got.map(|_| ()));
    }
}
