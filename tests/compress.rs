//! Response compression (a route's `compress`): each algorithm decoded back to the exact
//! bytes, by the same crates and by real clients (curl --compressed for gzip, br and zstd;
//! Python's gzip), for bodies from 0 B to 64 MiB with every upstream framing; the responses
//! that must pass unchanged; the head (`Vary`, weak `ETag`, no `Content-Length`); HTTP/1.0
//! clients; the counters; that a 64 MiB body streams (the proxy's peak RSS barely moves);
//! and that a body whose backend pauses reaches the client decodable up to the pause.

use crate::support::prom::scrape;
use crate::support::*;
use std::io::Read;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const ALGS: [&str; 3] = ["gzip", "br", "zstd"];
const PERIOD: usize = 1_000_003;

/// Compressible text (JSON-like records), `len` bytes of a fixed cycle.
fn text(len: usize) -> Vec<u8> {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let mut v = Vec::with_capacity(PERIOD + 100);
        let mut i: u64 = 0;
        while v.len() < PERIOD {
            let x = i.wrapping_mul(2_654_435_761) % 100_000;
            v.extend_from_slice(
                format!(
                    "{{\"id\":{i},\"user\":\"u{x}\",\"score\":{},\"ok\":true}},\n",
                    x % 977
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.truncate(PERIOD);
        v
    });
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(PERIOD);
        out.extend_from_slice(&base[..n]);
    }
    out
}

/// `/t/LEN/MODE[/KIND]`: LEN bytes of [`text`] as application/json with a strong ETag,
/// framed by MODE (`cl`, `chunked`, `close`); KIND changes one thing: `encoded` (already
/// gzip), `notransform`, `png`, `range` (a 206), `vary` (`Vary: Origin`), `304`.
fn handler(rec: &Recorded) -> Reply {
    let parts: Vec<&str> = rec.path().split('/').collect();
    let ["", "t", len, mode, rest @ ..] = parts.as_slice() else {
        return Reply::status(404, "no");
    };
    let len: usize = len.parse().unwrap();
    let mode = match *mode {
        "cl" => BodyMode::Length,
        "chunked" => BodyMode::Chunked,
        _ => BodyMode::Close,
    };
    let mut status = 200;
    let mut headers = vec![("ETag".to_string(), "\"v1\"".to_string())];
    let mut ctype = "application/json; charset=utf-8";
    match rest.first().copied() {
        Some("encoded") => headers.push(("Content-Encoding".into(), "gzip".into())),
        Some("notransform") => {
            headers.push(("Cache-Control".into(), "max-age=60, no-transform".into()))
        }
        Some("png") => ctype = "image/png",
        Some("range") => {
            status = 206;
            headers.push((
                "Content-Range".into(),
                format!("bytes 0-{}/{}", len - 1, len * 2),
            ));
        }
        Some("vary") => headers.push(("Vary".into(), "Origin".into())),
        Some("304") => status = 304,
        _ => {}
    }
    headers.push(("Content-Type".into(), ctype.into()));
    let omit = status == 304;
    Reply::Response {
        status,
        headers,
        body: if omit { vec![] } else { text(len) },
        mode: if omit { BodyMode::Omit } else { mode },
        close_after: false,
    }
}

fn setup(engine: Engine, compress: &str) -> (Proxy, Origin) {
    let origin = Origin::with_handler("o", handler);
    let proxy = Config::new()
        .upstream("main", &[origin.addr()])
        .route("main", &format!("compress = {{ {compress} }}"))
        .admin("")
        .start(engine);
    (proxy, origin)
}

pub(crate) fn decode(alg: &str, coded: &[u8]) -> Vec<u8> {
    let mut back = Vec::new();
    match alg {
        "gzip" => flate2::read::GzDecoder::new(coded)
            .read_to_end(&mut back)
            .map(|_| ()),
        "br" => brotli::Decompressor::new(coded, 4096)
            .read_to_end(&mut back)
            .map(|_| ()),
        _ => zstd::stream::read::Decoder::new(coded)
            .and_then(|mut d| d.read_to_end(&mut back))
            .map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{alg} body does not decode: {e}"));
    back
}

fn fetch(c: &mut Client, target: &str, accept: Option<&str>) -> Response {
    let mut h = vec![("Host", "example.com")];
    if let Some(a) = accept {
        h.push(("Accept-Encoding", a));
    }
    c.send(&request("GET", target, &h, b""));
    c.read_response_for("GET")
}

/// curl --compressed asking for `alg` only: (Content-Encoding it got, the decoded body).
fn curl_decoded(url: &str, alg: &str) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--compressed",
            "--max-time",
            "60",
            "-D",
            "/dev/stderr",
            "-o",
            "-",
        ])
        .args(["-H", &format!("Accept-Encoding: {alg}"), url])
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    let coding = head
        .lines()
        .find_map(|l| l.strip_prefix("content-encoding:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    (coding, out.stdout)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

both_engines! {
    fn every_algorithm_decodes_to_the_exact_bytes_with_every_framing(engine) {
        let (proxy, origin) = setup(engine, "min_length = 1024");
        let mut c = Client::connect(proxy.addr());
        for alg in ALGS {
            for len in [0, 1, 1023, 1024, 1025, 65536, 1 << 20] {
                for mode in ["cl", "chunked", "close"] {
                    let r = fetch(&mut c, &format!("/t/{len}/{mode}"), Some(alg));
                    let what = format!("{alg}, {len} bytes, {mode}");
                    assert_eq!(r.status(), 200, "{what}");
                    let coded = mode != "cl" || len >= 1024;
                    if coded {
                        assert_eq!(r.header("content-encoding"), Some(alg), "{what}:\n{}", r.head.raw);
                        assert!(r.header("content-length").is_none(), "{what}");
                        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{what}");
                        assert!(r.has_token("vary", "Accept-Encoding"), "{what}");
                        assert_eq!(r.header("etag"), Some("W/\"v1\""), "{what}");
                        assert!(decode(alg, &r.body) == text(len), "{what}: decoded body differs");
                        if len >= 65536 {
                            assert!(r.body.len() * 4 < len, "{what}: {} coded bytes", r.body.len());
                        }
                    } else {
                        assert!(r.header("content-encoding").is_none(), "{what}:\n{}", r.head.raw);
                        assert_eq!(r.header("etag"), Some("\"v1\""), "{what}");
                        assert!(r.body == text(len), "{what}: body differs");
                    }
                }
            }
        }
        origin.assert_no_errors();
    }

    fn curl_and_python_decode_each_algorithm(engine) {
        let (proxy, _origin) = setup(engine, "");
        let base = format!("http://{}", proxy.addr());
        for alg in ALGS {
            for target in ["/t/1048576/cl", "/t/65536/chunked", "/t/5000/close", "/t/0/chunked"] {
                let (coding, body) = curl_decoded(&format!("{base}{target}"), alg);
                assert_eq!(coding, alg, "{target}");
                let len: usize = target.split('/').nth(2).unwrap().parse().unwrap();
                assert!(body == text(len), "curl --compressed ({alg}) {target}: body differs");
            }
        }
        let script = "import gzip,sys,urllib.request as u\n\
            r=u.urlopen(u.Request(sys.argv[1],headers={'Accept-Encoding':'gzip'}))\n\
            assert r.headers['Content-Encoding']=='gzip', r.headers\n\
            sys.stdout.buffer.write(gzip.decompress(r.read()))";
        for target in ["/t/1048576/cl", "/t/300000/chunked"] {
            let out = Command::new("python3")
                .args(["-c", script, &format!("{base}{target}")])
                .output()
                .expect("python3");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let len: usize = target.split('/').nth(2).unwrap().parse().unwrap();
            assert!(out.stdout == text(len), "python gzip {target}: body differs");
        }
    }

    fn a_64_mib_body_streams_through_each_encoder(engine) {
        let (proxy, _origin) = setup(engine, "");
        let base = format!("http://{}", proxy.addr());
        let len = 64 << 20;
        let expected = pattern::sha256_hex(&text(len));
        // Warm: every encoder once, so the peak below is the 64 MiB bodies' own.
        for alg in ALGS {
            let (coding, _) = curl_decoded(&format!("{base}/t/100000/chunked"), alg);
            assert_eq!(coding, alg);
        }
        let before = vm_hwm_kib(proxy.pid());
        for alg in ALGS {
            for mode in ["cl", "chunked"] {
                let (coding, body) = curl_decoded(&format!("{base}/t/{len}/{mode}"), alg);
                assert_eq!(coding, alg, "{mode}");
                assert_eq!(body.len(), len, "{alg} {mode}");
                assert_eq!(pattern::sha256_hex(&body), expected, "{alg} {mode}");
            }
        }
        let grew = vm_hwm_kib(proxy.pid()).saturating_sub(before);
        // Each shard's allocator keeps what an encoder freed (brotli's 3.7 MiB, zstd's 1.5):
        // a few MiB per shard, far from the 64 MiB a buffered body would take.
        assert!(grew < 32 * 1024, "the proxy's peak RSS grew by {grew} KiB for 64 MiB bodies");
    }

    fn responses_that_must_not_be_coded_pass_unchanged(engine) {
        let (proxy, origin) = setup(engine, "algorithms = [\"gzip\"], min_length = 100");
        let mut c = Client::connect(proxy.addr());
        let plain = |r: &Response, what: &str| {
            assert!(r.header("content-encoding").is_none(), "{what}:\n{}", r.head.raw);
            assert!(!r.has_token("vary", "accept-encoding"), "{what}:\n{}", r.head.raw);
            assert_eq!(r.header("etag"), Some("\"v1\""), "{what}");
        };
        for (target, accept) in [
            ("/t/5000/cl/notransform", Some("gzip")),
            ("/t/5000/chunked/png", Some("gzip")),
            ("/t/99/cl", Some("gzip")),
        ] {
            let r = fetch(&mut c, target, accept);
            plain(&r, &format!("{target} {accept:?}"));
            assert!(r.body == text(5000)[..r.body.len()] && r.body.len() >= 99, "{target}");
        }
        // A response the route codes, to a client that takes none of its codings: as it
        // came, but with `Vary: Accept-Encoding` (nginx's gzip_vary; operator review,
        // session 13), or a cache in front would keep this variant for every client.
        for accept in [Some("gzip;q=0, br"), Some("identity"), None] {
            let r = fetch(&mut c, "/t/5000/cl", accept);
            assert!(r.header("content-encoding").is_none(), "{accept:?}");
            assert_eq!(r.header_all("vary"), vec!["Accept-Encoding"], "{accept:?}:\n{}", r.head.raw);
            assert_eq!(r.header("etag"), Some("\"v1\""), "{accept:?}");
            assert!(r.body == text(5000), "{accept:?}");
        }
        let r = fetch(&mut c, "/t/5000/cl/encoded", Some("gzip"));
        assert_eq!(r.header("content-encoding"), Some("gzip"), "the backend's own coding");
        assert!(r.body == text(5000), "an encoded body is relayed as it is");
        let r = fetch(&mut c, "/t/5000/cl/range", Some("gzip"));
        assert_eq!(r.status(), 206);
        plain(&r, "206");
        assert_eq!(r.header("content-length"), Some("5000"));
        let r = fetch(&mut c, "/t/5000/cl/304", Some("gzip"));
        assert_eq!(r.status(), 304);
        plain(&r, "304");
        c.send(&request("HEAD", "/t/5000/cl", &[("Host", "x"), ("Accept-Encoding", "gzip")], b""));
        let r = c.read_response_for("HEAD");
        plain(&r, "HEAD");
        assert_eq!(r.header("content-length"), Some("5000"));
        // The same URL coded, on the same connection: framing stayed in step.
        let r = fetch(&mut c, "/t/5000/cl", Some("gzip"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert!(decode("gzip", &r.body) == text(5000));
        origin.assert_no_errors();
    }

    fn vary_is_extended_and_counters_count(engine) {
        let (proxy, _origin) = setup(engine, "algorithms = [\"br\", \"gzip\"]");
        let mut c = Client::connect(proxy.addr());
        let r = fetch(&mut c, "/t/5000/cl/vary", Some("gzip, br"));
        assert_eq!(r.header("content-encoding"), Some("br"), "a tie goes to the configured order");
        assert_eq!(r.header_all("vary"), vec!["Origin, Accept-Encoding"], "{}", r.head.raw);
        assert_eq!(r.header("etag"), Some("W/\"v1\""));
        let r = fetch(&mut c, "/t/8000/chunked", Some("br;q=0.5, gzip;q=0.8, zstd"));
        assert_eq!(r.header("content-encoding"), Some("gzip"), "the higher q; zstd not configured");
        let gz = r.body.len() as f64;
        let m = scrape(proxy.admin_addr(), None);
        let v = |name: &str, alg: &str| m.value(name, &[("algorithm", alg)]);
        assert_eq!(v("edgeshard_compressed_responses_total", "br"), 1.0);
        assert_eq!(v("edgeshard_compressed_responses_total", "gzip"), 1.0);
        assert_eq!(v("edgeshard_compressed_responses_total", "zstd"), 0.0);
        assert_eq!(v("edgeshard_compressed_bytes_in_total", "gzip"), 8000.0);
        assert_eq!(v("edgeshard_compressed_bytes_out_total", "gzip"), gz);
        assert_eq!(v("edgeshard_compressed_bytes_in_total", "br"), 5000.0);
    }

    // The encoders a shard holds are bounded in bytes (limits.compress_memory, each charged
    // by algorithm and level: gzip 640 KiB, zstd 3 2.25 MiB): beyond it a response goes
    // uncompressed, and a finished or abandoned response gives its share back.
    fn compression_memory_is_bounded_per_shard(engine) {
        let origin = Origin::with_handler("o", handler);
        let proxy = Config::new()
            .upstream("main", &[origin.addr()])
            .route("main", "compress = { }")
            .limit("compress_memory", "\"2MiB\"")
            .admin("")
            .start(engine);
        // One at a time: each gives its share back.
        for i in 0..5 {
            let mut c = Client::connect(proxy.addr());
            let r = fetch(&mut c, "/t/5000/cl", Some("gzip"));
            assert_eq!(r.header("content-encoding"), Some("gzip"), "{i}");
        }
        // A zstd encoder alone is over the bound: the body as it came.
        let mut c = Client::connect(proxy.addr());
        let r = fetch(&mut c, "/t/5000/cl", Some("zstd"));
        assert_eq!(r.header("content-encoding"), None, "{}", r.head.raw);
        assert!(r.body == text(5000));
        // Three gzip responses held open by clients that stop reading (their heads prove the
        // encoders were taken): a fourth goes uncompressed.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut c = Client::connect(proxy.addr());
            let req = request("GET", "/t/67108864/cl", &[("Host", "example.com"), ("Accept-Encoding", "gzip")], b"");
            c.send(&req);
            let head = c.read_head().unwrap();
            assert_eq!(head.header("content-encoding"), Some("gzip"));
            held.push(c);
        }
        let mut c = Client::connect(proxy.addr());
        let r = fetch(&mut c, "/t/5000/cl", Some("gzip"));
        assert_eq!(r.header("content-encoding"), None, "over the bound:\n{}", r.head.raw);
        let m = scrape(proxy.admin_addr(), None);
        assert_eq!(m.value("edgeshard_compress_memory_refused_total", &[]), 2.0);
        // The held clients go: their shares come back once the proxy sees them gone.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = Client::connect(proxy.addr());
            let r = fetch(&mut c, "/t/5000/cl", Some("gzip"));
            if r.header("content-encoding") == Some("gzip") {
                break;
            }
            assert!(Instant::now() < deadline, "the abandoned responses kept their encoders");
        }
    }

    fn http_1_0_clients_get_a_close_delimited_coded_body(engine) {
        let (proxy, _origin) = setup(engine, "");
        for mode in ["cl", "chunked"] {
            let mut c = Client::connect(proxy.addr());
            c.send(format!("GET /t/70000/{mode} HTTP/1.0\r\nAccept-Encoding: zstd\r\n\r\n").as_bytes());
            let r = c.read_response_for("GET");
            assert_eq!(r.header("content-encoding"), Some("zstd"), "{mode}:\n{}", r.head.raw);
            assert!(r.header("transfer-encoding").is_none(), "{mode}");
            assert!(r.header("content-length").is_none(), "{mode}");
            assert!(decode("zstd", &r.body) == text(70000), "{mode}");
            c.expect_closed();
        }
    }
}

/// A backend that answers one request with a chunked JSON body: `first`, then (once `gate`
/// is open) `second` and the last chunk.
fn pausing_backend(first: Vec<u8>, second: Vec<u8>, gate: Gate) -> std::net::SocketAddr {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let (first, second, gate) = (first.clone(), second.clone(), gate.clone());
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                if read_head_bytes(&mut s).is_err() {
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                let mut out = head.as_bytes().to_vec();
                out.extend_from_slice(&chunked(&first, &[first.len()])[..]);
                out.truncate(out.len() - 5); // no last chunk yet ("0\r\n\r\n")
                let _ = s.write_all(&out);
                gate.wait(Duration::from_secs(20));
                let _ = s.write_all(&chunked(&second, &[second.len()]));
            });
        }
    });
    addr
}

/// The complete chunks' data in `raw` (a chunked body from its start), and whether the last
/// chunk was among them.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
        if size == 0 {
            return (data, true);
        }
        let Some(chunk) = raw.get(eol + 2..eol + 2 + size + 2) else {
            break;
        };
        data.extend_from_slice(&chunk[..size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    (data, false)
}

both_engines! {
    // A backend that pauses mid-body (a report it is still computing, a stream of events):
    // what it has sent so far reaches the client decodable at once, not when the body ends.
    fn a_compressed_body_is_flushed_when_the_backend_pauses(engine) {
        let (first, second) = (text(5000), text(3000));
        for alg in ALGS {
            let gate = Gate::default();
            let backend = pausing_backend(first.clone(), second.clone(), gate.clone());
            let proxy = Config::new().upstream("main", &[backend]).route("main", "compress = {}").start(engine);
            let mut c = Client::connect(proxy.addr());
            c.send(&request("GET", "/p", &[("Host", "example.com"), ("Accept-Encoding", alg)], b""));
            let head = c.read_head().unwrap();
            assert_eq!(head.header("content-encoding"), Some(alg), "{}", head.raw);
            // While the backend holds the rest: the first part arrives, decodable.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut raw = c.pending().to_vec();
            let mut buf = [0u8; 65536];
            let decoded = loop {
                let so_far = stream_decode(alg, &dechunk(&raw).0);
                if so_far.len() >= first.len() || Instant::now() >= deadline {
                    break so_far;
                }
                c.stream().set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))).unwrap();
                match c.stream().read(&mut buf) {
                    Ok(0) | Err(_) => {}
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            };
            assert!(decoded == first, "{alg}: {} of the {} bytes sent before the pause reached the client", decoded.len(), first.len());
            gate.open();
            loop {
                let (coded, end) = dechunk(&raw);
                if end {
                    let mut whole = first.clone();
                    whole.extend_from_slice(&second);
                    assert!(decode(alg, &coded) == whole, "{alg}: the whole body");
                    break;
                }
                c.stream().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let n = c.stream().read(&mut buf).unwrap();
                assert!(n > 0, "{alg}: closed before the last chunk");
                raw.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// What a streaming decoder for `alg` makes of `coded`, a prefix of a coded body.
fn stream_decode(alg: &str, coded: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match alg {
        "gzip" => {
            let mut d = flate2::write::GzDecoder::new(Vec::new());
            let _ = d.write_all(coded);
            let _ = d.flush();
            std::mem::take(d.get_mut())
        }
        "br" => {
            let mut d = brotli::DecompressorWriter::new(Vec::new(), 1 << 16);
            let _ = d.write_all(coded);
            let _ = d.flush();
            std::mem::take(d.get_mut())
        }
        _ => {
            let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
            let _ = d.write_all(coded);
            let _ = d.flush();
            std::mem::take(d.get_mut())
        }
    }
}

#[test]
fn check_names_bad_compress_keys() {
    let cfg = |compress: &str| {
        Config::single("127.0.0.1:9".parse().unwrap())
            .route(
                "main",
                &format!("path = \"/c\"\ncompress = {{ {compress} }}"),
            )
            .render()
    };
    let bad = [
        (
            "algorithms = [\"lz4\"]",
            "route[1].compress.algorithms",
            "unknown algorithm",
        ),
        (
            "algorithms = [\"br\", \"br\"]",
            "route[1].compress.algorithms",
            "twice",
        ),
        (
            "types = [\"text/html; charset=utf-8\"]",
            "route[1].compress.types",
            "invalid media type",
        ),
        ("gzip_level = 10", "route[1].compress.gzip_level", "1..=9"),
        ("br_quality = 8", "route[1].compress.br_quality", "0..=7"),
        ("zstd_level = 13", "route[1].compress.zstd_level", "1..=12"),
        ("level = 3", "route[1].compress", "level"),
    ];
    for (raw, key, word) in bad {
        expect_check_error_in(&cfg(raw), key, &[word]);
    }
}
