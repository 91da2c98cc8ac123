//! Unit tests of [`super`]: the upstream request head and the client response head, field
//! by field (forwarding, hop-by-hop, set and hidden fields, framing).

use super::*;
use crate::http::parse::{parse_request, parse_response, HeadLimits, Parsed};

const L: HeadLimits = HeadLimits {
    max_header_bytes: 16384,
    max_headers: 100,
    max_uri_bytes: 8192,
};

#[test]
fn request_head_drops_hop_by_hop_and_adds_forwarding() {
    let raw = b"POST /p?q HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret\r\n\
X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n\
X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nVia: 1.0 other\r\nTransfer-Encoding: chunked\r\nAccept: */*\r\n\r\n";
    let mut head = RequestHead::default();
    assert!(matches!(
        parse_request(raw, &L, &mut head),
        Ok(Parsed::Complete(()))
    ));
    let t = split_target(head.target.get(raw));
    let mut out = Vec::new();
    let req = UpstreamRequest {
        target: &t,
        host: b"a.example",
        client_ip: "10.0.0.9".parse().unwrap(),
        keep_forwarded_for: true,
        framing: OutFraming::Chunked,
        set: &[],
        https: false,
        upstream_host: None,
        rules: None,
    };
    upstream_request_head(raw, &head, &req, &mut out);
    let s = String::from_utf8(out).unwrap();
    // A trusted proxy's chain is extended and its scheme kept (its client used https).
    assert_eq!(
        s,
        "POST /p?q HTTP/1.1\r\nHost: a.example\r\nVia: 1.0 other\r\nAccept: */*\r\n\
X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: a.example\r\n\
Via: 1.1 edgeshard\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // From a peer that is not a trusted proxy, neither the chain nor the scheme is
    // believed.
    let mut out = Vec::new();
    let req = UpstreamRequest {
        keep_forwarded_for: false,
        ..req
    };
    upstream_request_head(raw, &head, &req, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.contains("\r\nX-Forwarded-For: 10.0.0.9\r\n"), "{s}");
    assert!(s.contains("\r\nX-Forwarded-Proto: http\r\n"), "{s}");
    assert!(!s.contains("1.2.3.4"), "{s}");
}

#[test]
fn a_chunked_head_is_reframed_with_a_length_only_as_written() {
    let raw = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Te: chunked\r\n\r\n";
    let mut head = RequestHead::default();
    assert!(matches!(
        parse_request(raw, &L, &mut head),
        Ok(Parsed::Complete(()))
    ));
    let t = split_target(head.target.get(raw));
    let req = |framing| UpstreamRequest {
        target: &t,
        host: b"a",
        client_ip: "10.0.0.9".parse().unwrap(),
        keep_forwarded_for: false,
        framing,
        set: &[],
        https: false,
        upstream_host: None,
        rules: None,
    };
    let (mut chunked, mut length) = (Vec::new(), Vec::new());
    upstream_request_head(raw, &head, &req(OutFraming::Chunked), &mut chunked);
    upstream_request_head(raw, &head, &req(OutFraming::Length(11)), &mut length);
    assert!(reframe_with_length(&mut chunked, 11));
    assert_eq!(
        String::from_utf8_lossy(&chunked),
        String::from_utf8_lossy(&length)
    );
    // A head that does not end with the chunked framing is left alone.
    let before = length.clone();
    assert!(!reframe_with_length(&mut length, 3));
    assert_eq!(length, before);
}

#[test]
fn lookalikes_other_client_address_names_and_httpoxy_are_not_forwarded() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\nX_Forwarded-Host: evil\r\n\
X_Request_Id: spoofed\r\nX-Client_Subject: CN=admin\r\nX-Real-IP: 1.2.3.4\r\nTrue-Client-IP: 1.2.3.4\r\n\
X-Client-IP: 1.2.3.4\r\nCF-Connecting-IP: 1.2.3.4\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
Proxy: http://evil:8080\r\nProxy-Authorization: Basic eDp5\r\nX-Real: kept\r\nX-Host: evil.host\r\n\
X-Original-Host: evil.origin\r\nX-Scheme: https\r\nX-Script-Name: //evil.example\r\nX-Url-Scheme: https\r\n\
Front-End-Https: on\r\nX-HTTP-Host-Override: evil.over\r\nX-Original-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n";
    let mut head = RequestHead::default();
    assert!(matches!(
        parse_request(raw, &L, &mut head),
        Ok(Parsed::Complete(()))
    ));
    let t = split_target(head.target.get(raw));
    let set: SetHeader = &[(b"X-Request-Id", b"abc"), (b"X-Client-Subject", b"")];
    for trusted in [false, true] {
        let mut out = Vec::new();
        let req = UpstreamRequest {
            target: &t,
            host: b"a",
            client_ip: "10.0.0.9".parse().unwrap(),
            keep_forwarded_for: trusted,
            framing: OutFraming::None,
            set,
            https: false,
            upstream_host: None,
            rules: None,
        };
        upstream_request_head(raw, &head, &req, &mut out);
        let s = String::from_utf8(out).unwrap();
        // The proxy's own fields and their `_` spellings go whoever sent them, and so does
        // `Proxy`; `Proxy-Authorization` is relayed (not hop-by-hop).
        for gone in ["spoofed", "CN=admin", "evil:8080"] {
            assert!(!s.contains(gone), "trusted={trusted}: {gone} in {s}");
        }
        assert!(s.contains("\r\nProxy-Authorization: Basic eDp5\r\n"), "{s}");
        assert!(s.contains("\r\nX-Request-Id: abc\r\n"), "{s}");
        assert!(s.contains("\r\nX-Real: kept\r\n"), "{s}");
        // Address and URL claims: only from a trusted proxy.
        assert_eq!(s.contains("1.2.3.4"), trusted, "{s}");
        assert_eq!(s.contains("X-Original-URL: /admin"), trusted, "{s}");
        // `_` spellings of the proxy's own forwarding fields: from nobody.
        assert!(!s.contains("X_Forwarded"), "{s}");
        assert_eq!(s.contains("X-Host: evil.host"), trusted, "{s}");
        assert_eq!(s.contains("X-Original-Host: evil.origin"), trusted, "{s}");
        // Scheme and prefix claims that links are built from.
        for claim in [
            "X-Scheme",
            "X-Script-Name",
            "X-Url-Scheme",
            "Front-End-Https",
            "X-HTTP-Host-Override",
        ] {
            assert_eq!(
                s.contains(&format!("\r\n{claim}: ")),
                trusted,
                "{claim}: {s}"
            );
        }
    }
}

#[test]
fn set_header_replaces_incoming_fields_of_that_name() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: evil\r\nx-request-id: twice\r\nAccept: */*\r\n\r\n";
    let mut head = RequestHead::default();
    assert!(matches!(
        parse_request(raw, &L, &mut head),
        Ok(Parsed::Complete(()))
    ));
    let t = split_target(head.target.get(raw));
    let mut out = Vec::new();
    let req = UpstreamRequest {
        target: &t,
        host: b"a",
        client_ip: "10.0.0.9".parse().unwrap(),
        keep_forwarded_for: false,
        framing: OutFraming::None,
        set: &[(b"X-Request-Id", b"abc")],
        https: false,
        upstream_host: None,
        rules: None,
    };
    upstream_request_head(raw, &head, &req, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(!s.contains("evil") && !s.contains("twice"), "{s}");
    assert_eq!(s.matches("X-Request-Id: abc\r\n").count(), 1, "{s}");

    let raw = b"HTTP/1.1 200 OK\r\nX-Request-Id: backend\r\nContent-Length: 0\r\n\r\n";
    let mut rh = ResponseHead::default();
    assert!(matches!(
        parse_response(raw, &L, &mut rh),
        Ok(Parsed::Complete(()))
    ));
    let mut out = Vec::new();
    client_response_head(
        raw,
        &rh,
        OutFraming::Length(0),
        false,
        1,
        Rewrite::set(&[(b"X-Request-Id", b"abc")]),
        &mut out,
    );
    let s = String::from_utf8(out).unwrap();
    assert!(!s.contains("backend"), "{s}");
    assert_eq!(s.matches("X-Request-Id: abc\r\n").count(), 1, "{s}");
}

/// Fields already written as `name: value\r\n` are copied in runs; the others are written
/// in that form. Every mix of the two, with dropped fields between them, comes out as if
/// each field were written on its own.
#[test]
fn fields_come_out_in_one_form_whatever_their_spelling() {
    let lines = [
        ("A: 1\r\n", "A: 1\r\n"),
        ("B:2\r\n", "B: 2\r\n"),
        ("C:   3  \r\n", "C: 3\r\n"),
        ("D: \r\n", "D: \r\n"),
        ("E:\t5\n", "E: 5\r\n"),
        ("Connection: close\r\n", ""),
        ("Server: x\r\n", ""),
        ("F: six six\r\n", "F: six six\r\n"),
    ];
    // Every ordering of a window of the lines, rotated, so runs start and end everywhere.
    for rot in 0..lines.len() {
        for len in 1..=lines.len() {
            let pick: Vec<_> = (0..len).map(|i| lines[(rot + i) % lines.len()]).collect();
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            let mut want = "HTTP/1.1 200 OK\r\n".to_string();
            for (line, out) in &pick {
                raw.extend_from_slice(line.as_bytes());
                want.push_str(out);
            }
            raw.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            want.push_str("Content-Length: 0\r\n\r\n");
            let mut head = ResponseHead::default();
            assert!(matches!(
                parse_response(&raw, &L, &mut head),
                Ok(Parsed::Complete(()))
            ));
            let mut out = Vec::new();
            let rw = Rewrite::set(&[]);
            client_response_head(&raw, &head, OutFraming::Length(0), false, 1, rw, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}

#[test]
fn absolute_form_targets() {
    let t = split_target(b"http://Example.com:8080/a?b");
    assert_eq!(t.authority, Some(&b"Example.com:8080"[..]));
    assert_eq!(t.path, b"/a?b");
    let t = split_target(b"http://example.com");
    assert_eq!(t.path, b"/");
    let t = split_target(b"/plain");
    assert_eq!(t.authority, None);
}

#[test]
fn response_head_framing() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-H\r\nX-H: 1\r\nX-S: s\r\n\r\n";
    let mut head = ResponseHead::default();
    assert!(matches!(
        parse_response(raw, &L, &mut head),
        Ok(Parsed::Complete(()))
    ));
    let (f, close) = response_out_framing(BodyFraming::Chunked, 0);
    assert_eq!((f, close), (OutFraming::Close, true));
    let mut out = Vec::new();
    client_response_head(raw, &head, f, close, 0, Rewrite::set(&[]), &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nX-S: s\r\nConnection: close\r\n\r\n"
    );
    out.clear();
    let (f, close) = response_out_framing(BodyFraming::UntilClose, 1);
    client_response_head(raw, &head, f, close, 1, Rewrite::set(&[]), &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nX-S: s\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
}

#[test]
fn interim_heads_keep_their_fields_but_not_hop_by_hop_ones_or_framing() {
    let raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: X-A\r\n\
X-A: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\nUpgrade: h2c\r\n\
Proxy-Connection: x\r\nTE: trailers\r\nlink: </b.js>; rel=preload\r\n\r\n";
    let mut head = ResponseHead::default();
    assert!(matches!(
        parse_response(raw, &L, &mut head),
        Ok(Parsed::Complete(()))
    ));
    let mut out = Vec::new();
    interim_response_head(raw, &head, &[], &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\
link: </b.js>; rel=preload\r\n\r\n"
    );
    // An HTTP/1.0 backend's interim head still goes out as HTTP/1.1; an empty reason stays
    // empty.
    let raw = b"HTTP/1.0 102 \r\n\r\n";
    assert!(matches!(
        parse_response(raw, &L, &mut head),
        Ok(Parsed::Complete(()))
    ));
    let mut out = Vec::new();
    interim_response_head(raw, &head, &[], &mut out);
    assert_eq!(out, b"HTTP/1.1 102 \r\n\r\n");
}

#[test]
fn ip_addresses() {
    for ip in [
        "0.0.0.0",
        "10.0.0.9",
        "255.255.255.255",
        "::1",
        "2001:db8::7",
    ] {
        let mut out = Vec::new();
        write_ip(ip.parse().unwrap(), &mut out);
        assert_eq!(out, ip.as_bytes());
    }
    // Every octet value in every position, against the standard library's text.
    for o in 0..=255u8 {
        let ip = std::net::Ipv4Addr::new(o, 255 - o, o / 3, o.wrapping_mul(7));
        let mut out = b"x".to_vec();
        write_ip(IpAddr::V4(ip), &mut out);
        assert_eq!(out, format!("x{ip}").as_bytes());
    }
}

#[test]
fn numbers() {
    for n in [0u64, 7, 10, 12345, u64::MAX] {
        assert_eq!(itoa_buf(n).as_str(), n.to_string().as_bytes());
    }
}
