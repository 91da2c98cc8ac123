//! Body integrity in both directions and with every framing, compared by
//! SHA-256 at the other end (plus the offset of the first differing byte
//! for diagnostics). Large bodies are streamed, never built in memory.

use crate::support::*;
use std::io::{BufWriter, Write};

const SIZES: &[u64] = &[0, 1, 8191, 8192, 65536, 1 << 20];
const BIG: u64 = 64 << 20;
const CHUNK_SIZES: &[usize] = &[1, 100, 8192, 65536, 3, 1 << 20];

fn config(origin: &Origin) -> Config {
    Config::single(origin.addr()).limit("max_body_bytes", "\"256MiB\"")
}

#[derive(Clone, Copy, PartialEq)]
enum ReqFraming {
    Length,
    Chunked,
}

/// Streams a POST with `len` pattern bytes and checks what the origin saw.
fn upload(c: &mut Client, origin: &Origin, len: u64, framing: ReqFraming) {
    let head = match framing {
        ReqFraming::Length => format!("POST /upload/{len} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len}\r\n\r\n"),
        ReqFraming::Chunked => format!("POST /upload/{len} HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"),
    };
    {
        let s: &std::net::TcpStream = c.stream();
        let mut w = BufWriter::with_capacity(1 << 16, s);
        w.write_all(head.as_bytes()).unwrap();
        match framing {
            ReqFraming::Length => pattern::write_pattern(&mut w, len),
            ReqFraming::Chunked => {
                let mut off = 0u64;
                let mut i = 0;
                let r = (|| -> std::io::Result<()> {
                    while off < len {
                        let n = (CHUNK_SIZES[i % CHUNK_SIZES.len()] as u64).min(len - off) as usize;
                        write!(w, "{n:x}\r\n")?;
                        w.write_all(pattern::pattern_slice(off, n))?;
                        w.write_all(b"\r\n")?;
                        off += n as u64;
                        i += 1;
                    }
                    w.write_all(b"0\r\n\r\n")
                })();
                r
            }
        }
        .and_then(|_| w.flush())
        .unwrap_or_else(|e| panic!("uploading {len} bytes failed: {e}"));
    }
    let r = c.read_response_for("POST");
    assert_eq!(r.status(), 200, "upload of {len} bytes:\n{}", r.head.raw);
    assert_eq!(
        r.header("x-body-len"),
        Some(len.to_string().as_str()),
        "origin received a different body length"
    );
    assert_eq!(
        r.header("x-body-pattern"),
        Some("ok"),
        "origin body differs from what was sent ({len} bytes)"
    );
    assert_eq!(
        r.header("x-body-sha256"),
        Some(pattern::expected_sha256(len).as_str()),
        "SHA-256 of the {len}-byte body at the origin"
    );
    let rec = origin.last_request();
    assert_eq!(rec.target, format!("/upload/{len}"));
    match framing {
        ReqFraming::Length => {
            assert!(
                !rec.chunked,
                "a Content-Length body must stay Content-Length:\n{}",
                rec.raw_head
            );
            assert_eq!(
                rec.header("content-length"),
                Some(len.to_string().as_str()),
                "{}",
                rec.raw_head
            );
        }
        ReqFraming::Chunked => {
            assert!(
                rec.chunked,
                "a chunked body is re-encoded as chunked:\n{}",
                rec.raw_head
            );
        }
    }
}

/// GETs `/gen/len/mode` and verifies the streamed body.
fn download(c: &mut Client, len: u64, mode: &str) -> Framing {
    c.send(&get("example.com", &format!("/gen/{len}/{mode}")));
    let mut check = pattern::BodyCheck::new();
    let (head, framing) = c
        .read_response_streaming("GET", &mut |d| check.update(d))
        .unwrap_or_else(|e| panic!("download of {len} bytes ({mode}) failed: {e}"));
    assert_eq!(head.status, 200, "{}", head.raw);
    let (got_len, sha, mismatch) = check.finish();
    assert_eq!(
        mismatch, None,
        "{mode} body of {len} bytes differs from the origin's"
    );
    assert_eq!(got_len, len, "{mode} body length");
    assert_eq!(
        sha,
        pattern::expected_sha256(len),
        "SHA-256 of the {mode} body of {len} bytes"
    );
    framing
}

fn uploads(engine: Engine, sizes: &[u64], framing: ReqFraming) {
    let origin = Origin::start("o");
    let proxy = config(&origin).start(engine);
    let mut c = Client::connect(proxy.addr());
    for &len in sizes {
        upload(&mut c, &origin, len, framing);
    }
    origin.assert_no_errors();
}

fn downloads(engine: Engine, sizes: &[u64], mode: &str) {
    let origin = Origin::start("o");
    let proxy = config(&origin).start(engine);
    let mut c = Client::connect(proxy.addr());
    for &len in sizes {
        if download(&mut c, len, mode) == Framing::Close {
            c = Client::connect(proxy.addr());
        }
    }
    origin.assert_no_errors();
}

both_engines! {
    fn request_bodies_content_length(engine) {
        uploads(engine, SIZES, ReqFraming::Length);
    }
    fn request_bodies_chunked(engine) {
        uploads(engine, SIZES, ReqFraming::Chunked);
    }
    fn request_body_content_length_64mib(engine) {
        uploads(engine, &[BIG], ReqFraming::Length);
    }
    fn request_body_chunked_64mib(engine) {
        uploads(engine, &[BIG], ReqFraming::Chunked);
    }
    fn response_bodies_content_length(engine) {
        downloads(engine, SIZES, "cl");
    }
    fn response_bodies_chunked(engine) {
        downloads(engine, SIZES, "chunked");
    }
    fn response_bodies_close_delimited(engine) {
        downloads(engine, SIZES, "close");
    }
    fn response_body_content_length_64mib(engine) {
        downloads(engine, &[BIG], "cl");
    }
    fn response_body_chunked_64mib(engine) {
        downloads(engine, &[BIG], "chunked");
    }
    fn response_body_close_delimited_64mib(engine) {
        downloads(engine, &[BIG], "close");
    }
    fn post_with_content_length_0_keeps_it(engine) {
        // Contract: "CL stays CL". Some origins answer 411 to a POST without
        // Content-Length, so an explicit `Content-Length: 0` must be forwarded.
        let (proxy, origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        c.send(&request("POST", "/empty", &[("Host", "example.com"), ("Content-Length", "0")], b""));
        assert_eq!(c.read_response_for("POST").status(), 200);
        let rec = origin.last_request();
        assert_eq!(rec.header("content-length"), Some("0"), "forwarded head:\n{}", rec.raw_head);
    }
    fn content_length_response_keeps_content_length(engine) {
        let (proxy, _origin) = proxy_with_origin(engine);
        let mut c = Client::connect(proxy.addr());
        assert_eq!(download(&mut c, 8192, "cl"), Framing::Length(8192));
    }
    fn echo_roundtrip_chunked_in_length_out(engine) {
        let (proxy, origin) = proxy_with_origin(engine);
        let body = pattern::pattern_vec(300_000);
        let mut c = Client::connect(proxy.addr());
        c.send(&request(
            "POST",
            "/echo",
            &[("Host", "example.com"), ("Transfer-Encoding", "chunked")],
            &chunked(&body, &[7, 65536, 1000]),
        ));
        let r = c.read_response_for("POST");
        assert_eq!(r.status(), 200);
        assert!(r.body == body, "echoed body differs (len {} vs {})", r.body.len(), body.len());
        origin.assert_no_errors();
        // In: the request reached the origin chunked (its length is unknown to the proxy),
        // whole and intact.
        let req = origin.last_request();
        assert!(req.chunked, "the chunked request body must be forwarded chunked:\n{}", req.raw_head);
        assert_eq!(req.body_len, body.len() as u64);
        assert_eq!(req.pattern_mismatch, None);
        // Out: the origin's Content-Length response reached the client with that length.
        assert_eq!(
            r.framing,
            Framing::Length(body.len() as u64),
            "the Content-Length response must keep its length framing:\n{}",
            r.head.raw
        );
    }
}
