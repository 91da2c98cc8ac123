//! Unit tests of negotiation, the decision and the head rewrite.

use std::io::Read;

use super::stream::Encoder;
use super::*;
use crate::config::CompressConfig;
use crate::http::parse::{parse_response, HeadLimits, Parsed};

const ALL: [Algorithm; 3] = Algorithm::ALL;

fn neg(fields: &[&str], algs: &[Algorithm]) -> Option<Algorithm> {
    negotiate(fields.iter().map(|f| f.as_bytes()), algs)
}

fn cfg() -> CompressConfig {
    CompressConfig {
        algorithms: ALL.to_vec(),
        types: vec![
            "text/html".into(),
            "application/json".into(),
            "text/*".into(),
        ],
        min_length: 1024,
        gzip_level: 6,
        br_quality: 4,
        zstd_level: 3,
    }
}

#[test]
fn the_highest_q_wins_ties_go_to_the_configured_order() {
    use Algorithm::*;
    assert_eq!(neg(&["gzip, deflate, br, zstd"], &ALL), Some(Zstd));
    assert_eq!(neg(&["gzip, deflate, br, zstd"], &[Gzip, Br]), Some(Gzip));
    assert_eq!(neg(&["gzip;q=1.0, br;q=0.9, zstd;q=0.5"], &ALL), Some(Gzip));
    assert_eq!(
        neg(&["gzip;q=0.5", "br;q=0.8"], &ALL),
        Some(Br),
        "two fields"
    );
    assert_eq!(neg(&["deflate"], &ALL), None);
    assert_eq!(neg(&[], &ALL), None, "no field: identity");
    assert_eq!(neg(&[""], &ALL), None);
    assert_eq!(neg(&["x-gzip"], &ALL), Some(Gzip));
    assert_eq!(neg(&["GZIP ; Q=0.3"], &ALL), Some(Gzip));
}

#[test]
fn q_zero_refuses_and_star_covers_the_rest() {
    use Algorithm::*;
    assert_eq!(neg(&["gzip;q=0"], &ALL), None);
    assert_eq!(neg(&["zstd;q=0, br"], &ALL), Some(Br));
    assert_eq!(neg(&["*"], &ALL), Some(Zstd));
    assert_eq!(neg(&["*;q=0.1, gzip;q=0.5"], &ALL), Some(Gzip));
    assert_eq!(neg(&["*;q=0"], &ALL), None);
    assert_eq!(neg(&["*, zstd;q=0"], &ALL), Some(Br));
    assert_eq!(neg(&["identity;q=0"], &ALL), None);
    assert_eq!(neg(&["identity;q=0, gzip"], &ALL), Some(Gzip));
    // Malformed q-values: the element is ignored.
    assert_eq!(neg(&["gzip;q=2"], &ALL), None);
    assert_eq!(neg(&["gzip;q=0.0001, br;q=abc"], &ALL), None);
    assert_eq!(parse_q(b"0.125"), Some(125));
    assert_eq!(parse_q(b"1.000"), Some(1000));
    assert_eq!(parse_q(b"1.001"), None);
    assert_eq!(parse_q(b"."), None);
}

fn head(text: &str) -> (Vec<u8>, ResponseHead) {
    let buf = text.replace('\n', "\r\n").into_bytes();
    let mut head = ResponseHead::default();
    let limits = HeadLimits {
        max_header_bytes: 8192,
        max_headers: 64,
        max_uri_bytes: 8192,
    };
    assert!(matches!(
        parse_response(&buf, &limits, &mut head),
        Ok(Parsed::Complete(()))
    ));
    (buf, head)
}

fn applies_to(text: &str) -> bool {
    let (buf, h) = head(text);
    applies(&cfg(), &buf, &h, h.framing(crate::http::parse::Method::Get))
}

#[test]
fn only_full_textual_uncoded_transformable_bodies_are_compressed() {
    let yes = "HTTP/1.1 200 OK\nContent-Type: text/html; charset=utf-8\nContent-Length: 2000\n\n";
    assert!(applies_to(yes));
    assert!(applies_to(
        "HTTP/1.1 200 OK\nContent-Type: Application/JSON\nTransfer-Encoding: chunked\n\n"
    ));
    assert!(applies_to(
        "HTTP/1.1 404 Not Found\nContent-Type: text/plain\n\n"
    ));
    assert!(applies_to(
        "HTTP/1.1 200 OK\nContent-Type: text/css\nContent-Encoding: identity\nContent-Length: 1024\n\n"
    ));
    for no in [
        "HTTP/1.1 200 OK\nContent-Type: text/html\nContent-Length: 1023\n\n",
        "HTTP/1.1 200 OK\nContent-Type: image/png\nContent-Length: 5000\n\n",
        "HTTP/1.1 200 OK\nContent-Length: 5000\n\n",
        "HTTP/1.1 200 OK\nContent-Type: textual/html\nContent-Length: 5000\n\n",
        "HTTP/1.1 200 OK\nContent-Type: text/html\nContent-Encoding: gzip\nContent-Length: 5000\n\n",
        "HTTP/1.1 200 OK\nContent-Type: text/html\nCache-Control: public, No-Transform\nContent-Length: 5000\n\n",
        "HTTP/1.1 206 Partial Content\nContent-Type: text/html\nContent-Range: bytes 0-4999/9000\nContent-Length: 5000\n\n",
        "HTTP/1.1 200 OK\nContent-Type: text/html\nContent-Range: bytes 0-4999/5000\nContent-Length: 5000\n\n",
        "HTTP/1.1 304 Not Modified\nContent-Type: text/html\n\n",
        "HTTP/1.1 204 No Content\nContent-Type: text/html\n\n",
        "HTTP/1.1 302 Found\nContent-Type: text/html\nContent-Length: 5000\n\n",
    ] {
        assert!(!applies_to(no), "{no}");
    }
    let (buf, h) = head(yes);
    let framing = h.framing(crate::http::parse::Method::Head);
    assert!(!applies(&cfg(), &buf, &h, framing), "HEAD");
}

#[test]
fn the_head_gets_the_coding_vary_and_a_weak_etag() {
    let rewrite = |h: &str| {
        let mut out = h.replace('\n', "\r\n").into_bytes();
        rewrite_head(&mut out, Algorithm::Br);
        String::from_utf8(out).unwrap().replace("\r\n", "\n")
    };
    assert_eq!(
        rewrite("HTTP/1.1 200 OK\nETag: \"abc\"\nTransfer-Encoding: chunked\n\n"),
        "HTTP/1.1 200 OK\nETag: W/\"abc\"\nTransfer-Encoding: chunked\nVary: Accept-Encoding\nContent-Encoding: br\n\n"
    );
    assert_eq!(
        rewrite("HTTP/1.1 200 OK\netag: W/\"abc\"\nVary: Origin\nContent-Encoding: identity\n\n"),
        "HTTP/1.1 200 OK\netag: W/\"abc\"\nVary: Origin, Accept-Encoding\nContent-Encoding: br\n\n"
    );
    assert_eq!(
        rewrite("HTTP/1.1 200 OK\nVary: accept-encoding, origin\n\n"),
        "HTTP/1.1 200 OK\nVary: accept-encoding, origin\nContent-Encoding: br\n\n"
    );
    assert_eq!(
        rewrite("HTTP/1.1 200 OK\nVary: *\n\n"),
        "HTTP/1.1 200 OK\nVary: *\nContent-Encoding: br\n\n"
    );
    // Ranges are over the identity body: a coded one advertises none.
    assert_eq!(
        rewrite("HTTP/1.1 200 OK\nAccept-Ranges: bytes\nVary: *\n\n"),
        "HTTP/1.1 200 OK\nVary: *\nContent-Encoding: br\n\n"
    );
    // Several Vary fields, a later one listing the coding: none changes.
    assert_eq!(
        rewrite("HTTP/1.1 200 OK\nVary: Cookie\nVary: Accept-Encoding\n\n"),
        "HTTP/1.1 200 OK\nVary: Cookie\nVary: Accept-Encoding\nContent-Encoding: br\n\n"
    );
    // Digests of the uncoded bytes would fail a client's check of the coded ones.
    assert_eq!(
        rewrite("HTTP/1.1 200 OK\nContent-Digest: sha-256=:x:\nRepr-Digest: sha-256=:y:\nContent-MD5: z\nVary: *\n\n"),
        "HTTP/1.1 200 OK\nVary: *\nContent-Encoding: br\n\n"
    );
    // The backend's trailers are dropped, so none is announced.
    assert_eq!(
        rewrite("HTTP/1.1 200 OK\nTrailer: Content-Digest\nVary: *\n\n"),
        "HTTP/1.1 200 OK\nVary: *\nContent-Encoding: br\n\n"
    );
}

/// Each encoder streams: fed in pieces, its output decodes (with the same crates) to the
/// exact input, for empty, tiny and larger-than-window bodies.
#[test]
fn every_encoder_round_trips_in_pieces() {
    let mut big = Vec::new();
    let mut x: u32 = 1;
    while big.len() < 3 << 20 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        big.extend_from_slice(format!("{{\"n\":{},\"s\":\"v{}\"}},", x % 1000, x % 97).as_bytes());
    }
    for body in [Vec::new(), b"x".to_vec(), big] {
        for alg in ALL {
            let mut enc = Encoder::new(alg, &cfg()).unwrap();
            let mut coded = Vec::new();
            for piece in body.chunks(50_000) {
                enc.write(piece).unwrap();
                coded.append(enc.output());
            }
            coded.extend(enc.finish().unwrap());
            let mut back = Vec::new();
            match alg {
                Algorithm::Gzip => {
                    flate2::read::GzDecoder::new(&coded[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Algorithm::Br => {
                    brotli::Decompressor::new(&coded[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Algorithm::Zstd => back = zstd::decode_all(&coded[..]).unwrap(),
            }
            assert!(back == body, "{alg:?}, {} bytes", body.len());
            if body.len() > 1 << 20 {
                assert!(coded.len() * 3 < body.len(), "{alg:?} compresses");
            }
        }
    }
}

#[test]
fn loans_stay_within_the_limit_and_come_back() {
    use super::loan;
    use Algorithm::{Br, Gzip, Zstd};
    let stats = crate::stats::Stats::new(0, 0);
    let held = &stats.compress_memory;
    let limit = 3 << 20;
    let c = cfg();
    let zstd = loan(&stats, limit, Zstd, &c).expect("2.25 MiB of 3");
    assert!(
        loan(&stats, limit, Br, &c).is_none(),
        "3.5 MiB more is over"
    );
    assert_eq!(
        stats.compress_memory_refused.get(),
        1,
        "a refusal is counted"
    );
    let gzip = loan(&stats, limit, Gzip, &c).expect("640 KiB more fits");
    assert_eq!(held.get(), (2304 + 640) << 10);
    drop(zstd);
    assert_eq!(held.get(), 640 << 10);
    drop(gzip);
    assert_eq!(held.get(), 0);
    assert!(
        loan(&stats, 0, Gzip, &c).is_none(),
        "0 refuses every encoder"
    );
}

// The charge follows the level: zstd 12's encoder (tables capped) and brotli 7's hold
// several times level 3's and quality 4's (they were charged alike, and 40 stalled zstd 12
// responses took 1.6 GiB against a 128 MiB bound, probe6-b).
#[test]
fn the_charge_follows_the_level() {
    let at = |zstd_level, br_quality| CompressConfig {
        zstd_level,
        br_quality,
        ..cfg()
    };
    let (low, high) = (at(3, 4), at(12, 7));
    assert_eq!(Encoder::memory(Algorithm::Zstd, &low), 2304 << 10);
    assert_eq!(Encoder::memory(Algorithm::Zstd, &high), 6656 << 10);
    assert_eq!(Encoder::memory(Algorithm::Br, &low), 3584 << 10);
    assert_eq!(Encoder::memory(Algorithm::Br, &high), 11_264 << 10);
    // Level 12 still round-trips with its tables capped.
    let body: Vec<u8> = (0..300_000u32)
        .flat_map(|i| format!("{{\"n\":{}}},", i % 997).into_bytes())
        .collect();
    let mut e = Encoder::new(Algorithm::Zstd, &high).unwrap();
    e.write(&body).unwrap();
    let coded = e.finish().unwrap();
    assert!(coded.len() * 10 < body.len());
    assert_eq!(zstd::decode_all(&coded[..]).unwrap(), body);
}

#[test]
fn vary_names_the_coding_once() {
    let vary = |head: &str| {
        let mut out = head.as_bytes().to_vec();
        add_vary(&mut out);
        String::from_utf8(out).unwrap()
    };
    let base = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n";
    assert_eq!(
        vary(&format!("{base}\r\n")),
        format!("{base}Vary: Accept-Encoding\r\n\r\n")
    );
    assert_eq!(
        vary(&format!("{base}Vary: Cookie\r\nVary: Origin\r\n\r\n")),
        format!("{base}Vary: Cookie, Accept-Encoding\r\nVary: Origin\r\n\r\n")
    );
    for covered in ["Vary: *\r\n", "vary: Origin, accept-encoding\r\n"] {
        let head = format!("{base}{covered}\r\n");
        assert_eq!(vary(&head), head);
    }
}
