//! tlsgen: the TLS load client of loadtest/tls.sh (see loadtest/README.md, "tls.sh").
//!
//! Blocking sockets, one OS thread per connection slot, rustls (ring provider) as the client.
//! Resumption is explicit: `--resume off` gives every connection a full handshake (the client
//! keeps no session state at all), `--resume on` keeps tickets / session ids per thread and
//! counts how many handshakes the server actually resumed (`handshake_kind()`).
//! Key exchange is X25519 only (no post-quantum hybrid share), so a rustls server and OpenSSL 3.0
//! (nginx) do the same work. Certificates are not verified by default (`--verify none`, as wrk
//! does): the figure of interest is the server's work, and a verifying client would be the
//! bottleneck long before the server on ECDSA. `--verify sig` checks the handshake signature.
//!
//! Modes (one `RESULT key=value ...` line on stdout, like rategen):
//!   handshake --addr A --threads T --duration S [--resume on|off] [--tls 1.3|1.2] [--path P]
//!       each thread: connect, handshake, `GET P` with `Connection: close`, read the whole response,
//!       read to EOF, close; repeat until S seconds are over.
//!   paced --addr A --conns C --rate R --duration S [--path P]
//!       C keep-alive TLS connections opened first (not timed), then R req/s in total, request i of a
//!       connection due at start + offset + i*C/R; latency from the due time (coordinated omission
//!       corrected), `lag` = how late the client itself sent (after max(due time, previous response)).
//!   idle --addr A --conns N [--threads T] [--path P]
//!       opens N connections, one handshake and one keep-alive GET each, prints
//!       `READY open=.. ok=.. failed=..`, waits for a line on stdin (or --hold seconds), then prints
//!       `ALIVE n` (connections the server has not closed) and exits.
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, SignatureScheme};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct Opts {
    mode: String,
    addr: SocketAddr,
    sni: String,
    path: String,
    threads: usize,
    conns: usize,
    rate: f64,
    duration: f64,
    resume: bool,
    tls12: bool,
    verify_sig: bool,
    hold: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: tlsgen handshake|paced|idle --addr 127.0.0.1:PORT [--sni NAME] [--path /] [--threads T] \
         [--conns C] [--rate R] [--duration S] [--resume on|off] [--tls 1.3|1.2] [--verify none|sig] [--hold S]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let mut o = Opts {
        mode,
        addr: "127.0.0.1:8443".parse().unwrap(),
        sni: "localhost".into(),
        path: "/".into(),
        threads: 4,
        conns: 16,
        rate: 1000.0,
        duration: 5.0,
        resume: false,
        tls12: false,
        verify_sig: false,
        hold: 120.0,
    };
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--addr" => o.addr = v.parse().unwrap_or_else(|_| usage()),
            "--sni" => o.sni = v,
            "--path" => o.path = v,
            "--threads" => o.threads = v.parse().unwrap_or_else(|_| usage()),
            "--conns" => o.conns = v.parse().unwrap_or_else(|_| usage()),
            "--rate" => o.rate = v.parse().unwrap_or_else(|_| usage()),
            "--duration" => o.duration = v.parse().unwrap_or_else(|_| usage()),
            "--resume" => o.resume = v == "on",
            "--tls" => o.tls12 = v == "1.2",
            "--verify" => o.verify_sig = v == "sig",
            "--hold" => o.hold = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if !o.addr.ip().is_loopback() {
        eprintln!("tlsgen: only loopback addresses are accepted");
        std::process::exit(2);
    }
    o
}

/// Accepts any certificate (the benchmark measures the server); optionally still checks the
/// handshake signature with the server's key, as OpenSSL does with SSL_VERIFY_NONE.
#[derive(Debug)]
struct NoVerify {
    provider: Arc<CryptoProvider>,
    check_sig: bool,
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_sig {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_sig {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(o: &Opts, resume: bool) -> Arc<ClientConfig> {
    let mut p = provider::default_provider();
    p.kx_groups = vec![provider::kx_group::X25519];
    let p = Arc::new(p);
    let versions: &[&rustls::SupportedProtocolVersion] =
        if o.tls12 { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13] };
    let mut cfg = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify { provider: p, check_sig: o.verify_sig }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = if resume { Resumption::in_memory_sessions(64) } else { Resumption::disabled() };
    Arc::new(cfg)
}

type Tls = rustls::StreamOwned<ClientConnection, TcpStream>;

/// connect + full handshake; returns the stream and the handshake kind
fn connect(o: &Opts, cfg: &Arc<ClientConfig>) -> io::Result<(Tls, HandshakeKind)> {
    let sock = TcpStream::connect_timeout(&o.addr, IO_TIMEOUT)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = ServerName::try_from(o.sni.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    let kind = s.conn.handshake_kind().unwrap_or(HandshakeKind::Full);
    Ok((s, kind))
}

/// Reads one response (Content-Length or, with `to_eof`, close-delimited) and returns (status, body bytes).
/// Leftover bytes beyond the response are an error (no pipelining here).
fn read_response(s: &mut Tls, buf: &mut Vec<u8>, to_eof: bool) -> io::Result<(u16, usize)> {
    buf.clear();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof before response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| io::Error::other("head not utf-8"))?;
    let status: u16 = head.get(9..12).and_then(|x| x.parse().ok()).ok_or_else(|| io::Error::other("bad status"))?;
    let mut clen: Option<usize> = None;
    for line in head.split("\r\n") {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                clen = v.trim().parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err(io::Error::other("chunked responses are not supported by tlsgen"));
            }
        }
    }
    let mut got = buf.len() - head_end;
    match clen {
        Some(len) => {
            while got < len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
                }
                got += n;
            }
            if got > len {
                return Err(io::Error::other("bytes after the response"));
            }
            if to_eof {
                drain_to_eof(s)?;
            }
            Ok((status, len))
        }
        None => {
            got += drain_to_eof(s)?;
            Ok((status, got))
        }
    }
}

fn drain_to_eof(s: &mut Tls) -> io::Result<usize> {
    let mut chunk = [0u8; 16384];
    let mut total = 0;
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            // a peer that closes without close_notify: the response was complete already
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn request(o: &Opts, close: bool) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tlsgen\r\n{}\r\n",
        o.path,
        o.sni,
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn cpu_self_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn describe(s: &Tls) -> (String, String) {
    let v = s.conn.protocol_version().map(|v| format!("{:?}", v)).unwrap_or_else(|| "?".into());
    let c = s
        .conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_else(|| "?".into());
    (v, c)
}

#[derive(Default)]
struct Stats {
    ok: u64,
    full: u64,
    resumed: u64,
    non2xx: u64,
    err_connect: u64,
    err_handshake: u64,
    err_io: u64,
    lat_us: Vec<u64>,
    lag_us: Vec<u64>,
    version: String,
    suite: String,
    last_err: String,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.full += o.full;
        self.resumed += o.resumed;
        self.non2xx += o.non2xx;
        self.err_connect += o.err_connect;
        self.err_handshake += o.err_handshake;
        self.err_io += o.err_io;
        self.lat_us.extend(o.lat_us);
        self.lag_us.extend(o.lag_us);
        if self.version.is_empty() {
            self.version = o.version;
            self.suite = o.suite;
        }
        if !o.last_err.is_empty() {
            self.last_err = o.last_err;
        }
    }
}

fn handshake_thread(o: Arc<Opts>, deadline: Instant) -> Stats {
    let cfg = client_config(&o, o.resume);
    let req = request(&o, true);
    let mut st = Stats::default();
    let mut buf = Vec::with_capacity(32 * 1024);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let (mut s, kind) = match connect(&o, &cfg) {
            Ok(x) => x,
            Err(e) => {
                if e.kind() == io::ErrorKind::ConnectionRefused || e.kind() == io::ErrorKind::AddrNotAvailable {
                    st.err_connect += 1;
                    thread::sleep(Duration::from_millis(10));
                } else {
                    st.err_handshake += 1;
                }
                st.last_err = e.to_string();
                continue;
            }
        };
        if st.version.is_empty() {
            (st.version, st.suite) = describe(&s);
        }
        let r = s.write_all(&req).and_then(|_| s.flush()).and_then(|_| read_response(&mut s, &mut buf, true));
        match r {
            Ok((status, _)) => {
                match kind {
                    HandshakeKind::Resumed => st.resumed += 1,
                    _ => st.full += 1,
                }
                if (200..400).contains(&status) {
                    st.ok += 1;
                    st.lat_us.push(t0.elapsed().as_micros() as u64);
                } else {
                    st.non2xx += 1;
                }
            }
            Err(e) => {
                st.err_io += 1;
                st.last_err = e.to_string();
            }
        }
    }
    st
}

fn print_result(o: &Opts, mut st: Stats, elapsed: f64, cpu_s: f64) {
    st.lat_us.sort_unstable();
    st.lag_us.sort_unstable();
    let mean = if st.lat_us.is_empty() { 0.0 } else { st.lat_us.iter().sum::<u64>() as f64 / st.lat_us.len() as f64 };
    let errors = st.non2xx + st.err_connect + st.err_handshake + st.err_io;
    println!(
        "RESULT mode={} resume={} threads={} conns={} rate={} duration_s={:.3} completed={} full={} resumed={} \
         errors={} non2xx={} err_connect={} err_handshake={} err_io={} per_s={:.1} p50_us={} p90_us={} p99_us={} \
         p999_us={} max_us={} mean_us={:.1} lag_p99_us={} lag_max_us={} client_cpu_s={:.3} version={} suite={}",
        o.mode,
        if o.resume { "on" } else { "off" },
        o.threads,
        o.conns,
        o.rate,
        elapsed,
        st.ok,
        st.full,
        st.resumed,
        errors,
        st.non2xx,
        st.err_connect,
        st.err_handshake,
        st.err_io,
        st.ok as f64 / elapsed,
        pct(&st.lat_us, 50.0),
        pct(&st.lat_us, 90.0),
        pct(&st.lat_us, 99.0),
        pct(&st.lat_us, 99.9),
        st.lat_us.last().copied().unwrap_or(0),
        mean,
        pct(&st.lag_us, 99.0),
        st.lag_us.last().copied().unwrap_or(0),
        cpu_s,
        if st.version.is_empty() { "-" } else { &st.version },
        if st.suite.is_empty() { "-" } else { &st.suite },
    );
    if !st.last_err.is_empty() {
        println!("LAST_ERROR {}", st.last_err);
    }
}

fn alive(fd: i32) -> bool {
    let mut b = [0u8; 1];
    let n = unsafe { libc::recv(fd, b.as_mut_ptr() as *mut libc::c_void, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n > 0 {
        return true;
    }
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

fn idle(o: Arc<Opts>) {
    let conns: Arc<Mutex<Vec<Tls>>> = Arc::new(Mutex::new(Vec::with_capacity(o.conns)));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let last_err = Arc::new(Mutex::new(String::new()));
    let per = o.conns.div_ceil(o.threads.max(1));
    let mut hs = Vec::new();
    for t in 0..o.threads.max(1) {
        let n = per.min(o.conns.saturating_sub(t * per));
        let (o, conns, failed, last_err) = (o.clone(), conns.clone(), failed.clone(), last_err.clone());
        hs.push(thread::spawn(move || {
            let cfg = client_config(&o, false);
            let req = request(&o, false);
            let mut buf = Vec::new();
            for _ in 0..n {
                let r = connect(&o, &cfg).and_then(|(mut s, _)| {
                    s.write_all(&req)?;
                    s.flush()?;
                    let (status, _) = read_response(&mut s, &mut buf, false)?;
                    if !(200..400).contains(&status) {
                        return Err(io::Error::other(format!("status {}", status)));
                    }
                    Ok(s)
                });
                match r {
                    Ok(s) => conns.lock().unwrap().push(s),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *last_err.lock().unwrap() = e.to_string();
                    }
                }
            }
        }));
    }
    for h in hs {
        let _ = h.join();
    }
    let open = conns.lock().unwrap().len();
    println!("READY open={} ok={} failed={}", open, open, failed.load(Ordering::Relaxed));
    let e = last_err.lock().unwrap().clone();
    if !e.is_empty() {
        println!("LAST_ERROR {}", e);
    }
    io::stdout().flush().ok();
    // wait for a line on stdin, at most --hold seconds
    let done = Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        thread::spawn(move || {
            let mut l = String::new();
            let _ = io::stdin().lock().read_line(&mut l);
            done.store(true, Ordering::Relaxed);
        });
    }
    let until = Instant::now() + Duration::from_secs_f64(o.hold);
    while !done.load(Ordering::Relaxed) && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    let n = conns.lock().unwrap().iter().filter(|s| alive(s.sock.as_raw_fd())).count();
    println!("ALIVE {}", n);
    io::stdout().flush().ok();
}

fn main() {
    let o = Arc::new(parse());
    match o.mode.as_str() {
        "handshake" => {
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(o.duration);
            let c0 = cpu_self_s();
            let hs: Vec<_> = (0..o.threads)
                .map(|_| {
                    let o = o.clone();
                    thread::spawn(move || handshake_thread(o, deadline))
                })
                .collect();
            let mut st = Stats::default();
            for h in hs {
                st.merge(h.join().expect("thread"));
            }
            print_result(&o, st, start.elapsed().as_secs_f64(), cpu_self_s() - c0);
        }
        "paced" => {
            let ready = Arc::new(std::sync::Barrier::new(o.conns + 1));
            // schedule starts after all connections are up (handshakes are not part of it)
            let start_cell: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
            let hs: Vec<_> = (0..o.conns)
                .map(|i| {
                    let (o, ready, start_cell) = (o.clone(), ready.clone(), start_cell.clone());
                    thread::spawn(move || paced_thread(o, i, ready, start_cell))
                })
                .collect();
            ready.wait();
            let start = Instant::now() + Duration::from_millis(50);
            *start_cell.lock().unwrap() = Some(start);
            let c0 = cpu_self_s();
            let mut st = Stats::default();
            for h in hs {
                st.merge(h.join().expect("thread"));
            }
            print_result(&o, st, o.duration, cpu_self_s() - c0);
        }
        "idle" => idle(o),
        _ => usage(),
    }
}

/// paced_thread needs the common start time, which is known only after every connection is up.
fn paced_thread(
    o: Arc<Opts>,
    idx: usize,
    ready: Arc<std::sync::Barrier>,
    start_cell: Arc<Mutex<Option<Instant>>>,
) -> Stats {
    let cfg = client_config(&o, false);
    let conn = connect(&o, &cfg);
    ready.wait();
    let start = loop {
        if let Some(s) = *start_cell.lock().unwrap() {
            break s;
        }
        thread::sleep(Duration::from_millis(1));
    };
    let deadline = start + Duration::from_secs_f64(o.duration);
    run_paced(o, idx, start, deadline, conn, cfg)
}

fn run_paced(
    o: Arc<Opts>,
    idx: usize,
    start: Instant,
    deadline: Instant,
    conn: io::Result<(Tls, HandshakeKind)>,
    cfg: Arc<ClientConfig>,
) -> Stats {
    let req = request(&o, false);
    let mut st = Stats::default();
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut s = match conn {
        Ok((s, _)) => s,
        Err(e) => {
            st.err_handshake += 1;
            st.last_err = e.to_string();
            return st;
        }
    };
    (st.version, st.suite) = describe(&s);
    let interval = Duration::from_secs_f64(o.conns as f64 / o.rate);
    let mut due = start + interval.mul_f64(idx as f64 / o.conns as f64);
    // when this connection may send: its due time, or later if the previous response came late
    // (that wait is the server's doing and is part of the latency, not of the client's lag)
    let mut free = start;
    while due < deadline {
        let now = Instant::now();
        if now < due {
            thread::sleep(due - now);
        }
        let sent = Instant::now();
        st.lag_us.push(sent.saturating_duration_since(due.max(free)).as_micros() as u64);
        let r = s.write_all(&req).and_then(|_| s.flush()).and_then(|_| read_response(&mut s, &mut buf, false));
        match r {
            Ok((status, _)) if (200..400).contains(&status) => {
                st.ok += 1;
                free = Instant::now();
                st.lat_us.push(free.saturating_duration_since(due).as_micros() as u64);
            }
            Ok(_) => {
                st.non2xx += 1;
                free = Instant::now();
            }
            Err(e) => {
                st.err_io += 1;
                st.last_err = e.to_string();
                free = Instant::now();
                match connect(&o, &cfg) {
                    Ok((n, _)) => s = n,
                    Err(e) => {
                        st.err_handshake += 1;
                        st.last_err = e.to_string();
                        return st;
                    }
                }
            }
        }
        due += interval;
    }
    st
}
