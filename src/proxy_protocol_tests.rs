//! The PROXY protocol parser and the byte-taking logic, on every way the bytes may arrive.

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp(src: &str, dst: &str) -> Addresses {
    Addresses::Tcp {
        source: sa(src),
        destination: sa(dst),
    }
}

/// A v2 header: signature, version/command, family, then `block` (addresses and TLVs).
fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | cmd);
    h.push(fam);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

fn v2_ipv4_block(tlvs: &[u8]) -> Vec<u8> {
    let mut b = vec![192, 0, 2, 7, 198, 51, 100, 1];
    b.extend_from_slice(&4711u16.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b.extend_from_slice(tlvs);
    b
}

fn v2_ipv6_block(tlvs: &[u8]) -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut b = src.octets().to_vec();
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&4711u16.to_be_bytes());
    b.extend_from_slice(&80u16.to_be_bytes());
    b.extend_from_slice(tlvs);
    b
}

/// ALPN "h2", an authority, and a NOOP with an empty value.
const TLVS: &[u8] = &[
    0x01, 0, 2, b'h', b'2', 0x02, 0, 11, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c',
    b'o', b'm', 0x04, 0, 0,
];

/// Every valid header of the tests, with what it must parse to.
fn valid() -> Vec<(Vec<u8>, Version, Addresses)> {
    vec![
        (
            b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 443\r\n".to_vec(),
            Version::V1,
            tcp("192.0.2.7:4711", "198.51.100.1:443"),
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n".to_vec(),
            Version::V1,
            tcp("[2001:db8::7]:65535", "[2001:db8::1]:0"),
        ),
        (
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec(),
            Version::V1,
            tcp(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), Version::V1, Addresses::Unknown),
        (
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
            Version::V1,
            Addresses::Unknown,
        ),
        (
            v2(1, 0x11, &v2_ipv4_block(&[])),
            Version::V2,
            tcp("192.0.2.7:4711", "198.51.100.1:443"),
        ),
        (
            v2(1, 0x11, &v2_ipv4_block(TLVS)),
            Version::V2,
            tcp("192.0.2.7:4711", "198.51.100.1:443"),
        ),
        (
            v2(1, 0x21, &v2_ipv6_block(TLVS)),
            Version::V2,
            tcp("[2001:db8::7]:4711", "[2001:db8::1]:80"),
        ),
        (v2(0, 0x00, &[]), Version::V2, Addresses::Local),
        // LOCAL with an address block: the block and its family are ignored.
        (
            v2(0, 0x11, &v2_ipv4_block(TLVS)),
            Version::V2,
            Addresses::Local,
        ),
        (v2(1, 0x00, &[]), Version::V2, Addresses::Unknown),
        (v2(1, 0x31, &[0; 216]), Version::V2, Addresses::Unknown),
    ]
}

const AFTER: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn valid_headers_parse_whole_and_followed_by_the_stream() {
    for (h, version, addresses) in valid() {
        let want = Header {
            version,
            addresses,
            len: h.len(),
        };
        assert_eq!(parse(&h), Ok(Some(want)), "{h:?}");
        let mut more = h.clone();
        more.extend_from_slice(AFTER);
        assert_eq!(parse(&more), Ok(Some(want)), "{h:?} + request");
        // A TLS ClientHello starts with 0x16.
        let mut more = h.clone();
        more.extend_from_slice(&[0x16, 3, 1, 0, 0xff, 1]);
        assert_eq!(parse(&more), Ok(Some(want)), "{h:?} + ClientHello");
    }
}

#[test]
fn every_proper_prefix_is_incomplete() {
    for (h, ..) in valid() {
        for k in 0..h.len() {
            assert_eq!(parse(&h[..k]), Ok(None), "{h:?} cut at {k}");
        }
    }
}

/// Feeds `stream` to a [`Taken`] in the chunks `cuts` makes, each chunk being what a peek
/// would see: the rest of the arrived bytes, untaken ones included. Returns the header and
/// how many bytes were taken in all.
fn feed(stream: &[u8], cuts: &[usize]) -> (Result<Header, Error>, usize) {
    let mut taken = Taken::default();
    let mut consumed = 0;
    let mut arrived = 0;
    for &c in cuts.iter().chain([stream.len()].iter()) {
        arrived = arrived.max(c);
        let waiting = &stream[consumed..arrived];
        if waiting.is_empty() {
            continue;
        }
        match taken.offer(waiting) {
            Ok(Step::More(k)) => {
                assert_eq!(k, waiting.len().min(MAX_HEADER - consumed));
                consumed += k;
            }
            Ok(Step::Done(h, k)) => return (Ok(h), consumed + k),
            Err(e) => return (Err(e), consumed),
        }
    }
    (Err(Error::Truncated), consumed)
}

#[test]
fn every_split_gives_the_same_header_and_takes_only_its_bytes() {
    for (h, ..) in valid() {
        let want = parse(&h).unwrap().unwrap();
        let mut stream = h.clone();
        stream.extend_from_slice(AFTER);
        // One cut at every byte boundary, and two cuts at every pair of them.
        for a in 0..=stream.len() {
            assert_eq!(feed(&stream, &[a]), (Ok(want), h.len()), "{h:?} cut at {a}");
        }
        for a in 0..=h.len() {
            for b in a..=h.len() + 1 {
                assert_eq!(
                    feed(&stream, &[a, b]),
                    (Ok(want), h.len()),
                    "{h:?} cut at {a}, {b}"
                );
            }
        }
        // A byte at a time.
        let cuts: Vec<usize> = (0..=stream.len()).collect();
        assert_eq!(feed(&stream, &cuts), (Ok(want), h.len()), "{h:?} bytewise");
    }
}

fn rejected(bytes: &[u8]) -> Error {
    match parse(bytes) {
        Err(e) => e,
        other => panic!(
            "{:?} must be rejected, got {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

#[test]
fn no_header_is_refused_at_its_first_bytes() {
    assert_eq!(rejected(b"GET / HTTP/1.1\r\n"), Error::Signature);
    assert_eq!(rejected(b"G"), Error::Signature);
    assert_eq!(rejected(b"PROXZ"), Error::Signature);
    assert_eq!(rejected(b"proxy TCP4"), Error::Signature);
    assert_eq!(rejected(&[0x16, 3, 1]), Error::Signature);
    assert_eq!(rejected(b"\r\n\r\n\0\r\nQUIX"), Error::Signature);
    assert_eq!(rejected(b"\r\n\r\n\x01"), Error::Signature);
}

#[test]
fn bad_v1_lines_are_refused() {
    for line in [
        &b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 443\n"[..],
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 443\r\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4\r\n",
        b"PROXY TCP5 192.0.2.7 198.51.100.1 4711 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4711\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 443 9\r\n",
        b"PROXY TCP4  192.0.2.7 198.51.100.1 4711 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 443 \r\n",
        b"PROXY TCP4 192.0.2.256 198.51.100.1 4711 443\r\n",
        b"PROXY TCP4 192.0.2 198.51.100.1 4711 443\r\n",
        b"PROXY TCP4 2001:db8::7 198.51.100.1 4711 443\r\n",
        b"PROXY TCP6 192.0.2.7 2001:db8::1 4711 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 04711 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 0x1bb\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 999999\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 443\0\r\n",
        b"PROXY UNKNOWNX\r\n",
        "PROXY UNKNOWN \u{e9}\r\n".as_bytes(),
    ] {
        assert_eq!(
            rejected(line),
            Error::BadLine,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn a_v1_line_without_crlf_in_107_bytes_is_too_long() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(105, b'x');
    line.extend_from_slice(b"\r\n");
    assert_eq!(line.len(), V1_MAX);
    assert!(parse(&line).unwrap().is_some());
    let mut long = line[..105].to_vec();
    long.extend_from_slice(b"x\r\n");
    assert_eq!(rejected(&long), Error::TooLong);
    let mut endless = b"PROXY TCP4 ".to_vec();
    endless.resize(4096, b'1');
    assert_eq!(rejected(&endless), Error::TooLong);
    assert_eq!(rejected(&endless[..V1_MAX]), Error::TooLong);
    assert_eq!(parse(&endless[..V1_MAX - 1]), Ok(None));
}

#[test]
fn bad_v2_headers_are_refused() {
    let good = v2(1, 0x11, &v2_ipv4_block(TLVS));
    // Version 1 and 3 in the high nibble; command 2.
    for vc in [0x11, 0x31, 0x22, 0x2f] {
        let mut h = good.clone();
        h[12] = vc;
        assert_eq!(rejected(&h), Error::BadVersion, "{vc:#x}");
        assert_eq!(rejected(&h[..13]), Error::BadVersion, "{vc:#x} alone");
    }
    // UDP, unknown families and protocols.
    for fam in [0x12, 0x22, 0x32, 0x01, 0x10, 0x13, 0x41, 0xff] {
        let mut h = good.clone();
        h[13] = fam;
        assert_eq!(rejected(&h), Error::BadFamily, "{fam:#x}");
    }
    // An address block shorter than the family's addresses.
    assert_eq!(rejected(&v2(1, 0x11, &[0; 11])), Error::BadLength);
    assert_eq!(rejected(&v2(1, 0x21, &[0; 35])), Error::BadLength);
    assert_eq!(rejected(&v2(1, 0x31, &[0; 215])), Error::BadLength);
    // TLVs that do not fill the block: a lone type byte, a length past the end.
    assert_eq!(
        rejected(&v2(1, 0x11, &v2_ipv4_block(&[0x04]))),
        Error::BadLength
    );
    assert_eq!(
        rejected(&v2(1, 0x11, &v2_ipv4_block(&[0x04, 0, 2, 0]))),
        Error::BadLength
    );
    // A length over the bound is refused from the length field alone.
    let mut h = v2(1, 0x11, &v2_ipv4_block(&[]));
    h[14..16].copy_from_slice(&((V2_MAX_LEN + 1) as u16).to_be_bytes());
    assert_eq!(rejected(&h[..16]), Error::Oversized);
    let mut h = v2(1, 0x11, &v2_ipv4_block(&[]));
    h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(rejected(&h), Error::Oversized);
    // The largest block accepted.
    let mut tlvs = vec![0x04];
    tlvs.extend_from_slice(&((V2_MAX_LEN - 12 - 3) as u16).to_be_bytes());
    tlvs.resize(V2_MAX_LEN - 12, 0);
    let h = v2(1, 0x11, &v2_ipv4_block(&tlvs));
    assert_eq!(h.len(), MAX_HEADER);
    assert_eq!(parse(&h).unwrap().unwrap().len, MAX_HEADER);
}

#[test]
fn a_truncated_header_stays_incomplete_and_never_completes_on_its_own() {
    for (h, ..) in valid() {
        let cut = &h[..h.len() - 1];
        assert_eq!(feed(cut, &[]), (Err(Error::Truncated), cut.len()));
    }
}

#[test]
fn no_input_panics_and_taking_never_passes_the_header() {
    let rng = crate::sample::Rng::seeded(0x9e37_79b9_7f4a_7c15);
    let seeds: Vec<Vec<u8>> = valid().into_iter().map(|(h, ..)| h).collect();
    for i in 0..20_000 {
        // Mutate a valid header: flip, drop or insert bytes, or cut it.
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let at = (rng.next_u64() as usize) % (b.len() + 1);
            match rng.next_u64() % 4 {
                0 if at < b.len() => b[at] = rng.next_u64() as u8,
                1 if at < b.len() => {
                    b.remove(at);
                }
                2 => b.insert(at, rng.next_u64() as u8),
                _ => b.truncate(at),
            }
        }
        let whole = parse(&b);
        if let Ok(Some(h)) = whole {
            assert!(h.len <= b.len() && h.len <= MAX_HEADER);
        }
        let cut = (rng.next_u64() as usize) % (b.len() + 1);
        let (fed, took) = feed(&b, &[cut]);
        assert!(took <= b.len());
        match (whole, fed) {
            (Ok(Some(h)), Ok(g)) => assert_eq!((h, h.len), (g, took)),
            (Ok(None), Err(Error::Truncated)) => {}
            (Err(e), Err(f)) => assert_eq!(e, f),
            (w, f) => panic!("{b:?}: whole {w:?}, fed {f:?}"),
        }
    }
}

#[test]
fn encoded_headers_parse_back() {
    let v4 = (sa("192.0.2.7:4711"), sa("198.51.100.1:443"));
    let v6 = (sa("[2001:db8::7]:4711"), sa("[2001:db8::1]:80"));
    let mapped = (
        sa("[::ffff:192.0.2.7]:4711"),
        sa("[::ffff:198.51.100.1]:443"),
    );
    let mixed = (sa("192.0.2.7:4711"), sa("[2001:db8::1]:80"));
    for version in [Version::V1, Version::V2] {
        let back = |ends| {
            let h = encode(version, ends);
            let p = parse(&h).unwrap().unwrap();
            assert_eq!((p.version, p.len), (version, h.len()));
            p.addresses
        };
        assert_eq!(back(Some(v4)), tcp("192.0.2.7:4711", "198.51.100.1:443"));
        assert_eq!(
            back(Some(mapped)),
            tcp("192.0.2.7:4711", "198.51.100.1:443")
        );
        assert_eq!(
            back(Some(v6)),
            tcp("[2001:db8::7]:4711", "[2001:db8::1]:80")
        );
        // Two families: both as IPv6, the IPv4 one mapped; the client is still named.
        assert_eq!(
            back(Some(mixed)),
            tcp("[::ffff:192.0.2.7]:4711", "[2001:db8::1]:80")
        );
        let own = if version == Version::V1 {
            Addresses::Unknown
        } else {
            Addresses::Local
        };
        assert_eq!(back(None), own);
    }
    assert_eq!(
        encode(Version::V1, Some(v4)),
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4711 443\r\n"
    );
    let client_v6 = (sa("[2001:db8::7]:4711"), sa("127.0.0.1:443"));
    assert_eq!(
        encode(Version::V1, Some(client_v6)),
        b"PROXY TCP6 2001:db8::7 ::ffff:127.0.0.1 4711 443\r\n"
    );
}

#[test]
fn outcome_labels_follow_the_counter_order() {
    let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.label()).collect();
    assert_eq!(labels, ["v1", "v2", "local", "bad", "untrusted", "timeout"]);
    for (i, o) in Outcome::ALL.iter().enumerate() {
        assert_eq!(*o as usize, i);
    }
}
