//! TLS test kit: certificates made in the test (a CA, server leaves for SNI names, with RSA
//! keys or given dates, client certificates, all with rcgen) written as PEM files into a
//! temporary directory, `openssl s_client`, and a rustls client over a std socket for the
//! checks curl and openssl cannot make (which certificate was served, whether a session was
//! resumed).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};

/// A directory of PEM files, removed on drop.
pub struct CertDir {
    pub dir: PathBuf,
}

impl CertDir {
    pub fn new(tag: &str) -> CertDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("edgeshard-tls-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        CertDir { dir }
    }

    /// A directory kept after the run (under the build's temporary directory), for fixtures
    /// made once per test process.
    pub fn kept(tag: &str) -> std::mem::ManuallyDrop<CertDir> {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::mem::ManuallyDrop::new(CertDir { dir })
    }

    /// Writes `name` atomically (write a temporary file, then rename), as deploy tools do.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `leaf` as `name.pem` and `name.key`; returns (certificate, key) paths.
    pub fn write_leaf(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &leaf.cert_pem),
            self.write(&format!("{name}.key"), &leaf.key_pem),
        )
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub der: CertificateDer<'static>,
}

/// A certificate and its key, as PEM, and the certificate as DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(cn: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS SANs; `*.x` wildcards allowed).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params = san_params(names);
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        self.sign(params)
    }

    /// A server certificate for `names` valid only from `from` to `to`.
    pub fn leaf_valid(&self, names: &[&str], from: SystemTime, to: SystemTime) -> Leaf {
        let mut params = san_params(names);
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap();
        params.not_before = epoch + since_epoch(from);
        params.not_after = epoch + since_epoch(to);
        self.sign(params)
    }

    /// A server certificate for `names` with an RSA-2048 key (for a name that has an ECDSA
    /// certificate too).
    pub fn leaf_rsa(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        self.sign_with(san_params(names), key)
    }

    /// A server certificate with no SAN, named only by its subject's common name `cn`.
    pub fn leaf_by_cn(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        self.sign(params)
    }

    /// A client certificate with this common name and organisation.
    pub fn client(&self, cn: &str, org: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        self.sign_with(params, KeyPair::generate().unwrap())
    }

    fn sign_with(&self, params: CertificateParams, key: KeyPair) -> Leaf {
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A rustls client trusting only this CA that presents `client` (signed by any CA).
    pub fn client_config_with(&self, client: &Leaf) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client.der.clone()], key)
        .unwrap()
    }

    /// A rustls client trusting only this CA.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

/// Certificate parameters with `names` as DNS SANs.
fn san_params(names: &[&str]) -> CertificateParams {
    CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
}

/// `openssl s_client` with `args`, stdin closed; stdout and stderr together.
pub fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (tests/run.sh installs it)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a TLS connection made by [`tls_get`] saw.
pub struct TlsSeen {
    /// The leaf certificate the server presented.
    pub leaf: CertificateDer<'static>,
    pub resumed: bool,
    pub version: Option<rustls::ProtocolVersion>,
    /// The protocol ALPN agreed on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The whole response (head and body) to one `GET /` with `Connection: close`.
    pub response: String,
}

/// Connects to `addr` over TLS as `name` (SNI unless `config.enable_sni` is off), sends
/// `GET path` with `Connection: close`, reads the response to EOF.
pub fn tls_get(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
    path: &str,
) -> Result<TlsSeen, String> {
    let conn = rustls::ClientConnection::new(
        config.clone(),
        ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let c = &tls.conn;
    Ok(TlsSeen {
        leaf: c
            .peer_certificates()
            .and_then(|p| p.first())
            .cloned()
            .ok_or("no peer certificate")?,
        resumed: c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        version: c.protocol_version(),
        alpn: c.alpn_protocol().map(<[u8]>::to_vec),
        response: String::from_utf8_lossy(&out).into_owned(),
    })
}

/// A TLS listener body for [`crate::support::Config::only_listener`]: certificates
/// `(cert, key)` from `dir`, plus `extra` raw keys inside the `tls` table.
pub fn tls_listener(certs: &[(&Path, &Path)], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k)| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.display(),
                k.display()
            )
        })
        .collect();
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(
        "address = \"127.0.0.1:0\"\ntls = {{ certificates = [{}]{sep}{extra} }}",
        list.join(", ")
    )
}

/// The response a TLS origin sends behind its answer to `GET /extra`.
const STALE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTALE!";

/// A TLS origin: HTTP/1.1 keep-alive over rustls, answering every request with
/// `tls-origin conn=N proto=X-Forwarded-Proto body=LEN` (N counts its connections from 0).
/// A request for `/bye` is answered (as keep-alive) with a close_notify in the same TCP
/// write, and the connection is then held open without answering anything more. One for
/// `/until-close/clean` gets a close-delimited body ended by close_notify, any other
/// `/until-close...` the same body ended by a bare TCP close. A `HEAD` gets a `GET`'s head. A `POST /hold` is answered
/// 401 before its body, which is never read (the connection is held open for 30 s); a
/// `POST /hold-after-100` the same after a `100 Continue`; a `POST /refuse` 401 before its
/// body, then a close without close_notify (a reset: the body is unread) once the proxy has
/// the answer, `POST /refuse-now` the same at once. `GET /extra` is
/// answered and followed, in the same TCP write, by [`STALE`], a response nobody asked for.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// How each connection the proxy ended between requests ended ([`TlsOrigin::ends`]).
    ends: Ends,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// A rustls server configuration serving `leaf`, for the test's own TLS backends.
pub fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap(),
    )
}

impl TlsOrigin {
    pub fn start(leaf: &Leaf) -> TlsOrigin {
        let config = server_config(leaf);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ends = Ends::default();
        let (acc, st, en) = (accepted.clone(), stop.clone(), ends.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(s) = s else { continue };
                let id = acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let config = config.clone();
                let ends = en.clone();
                std::thread::spawn(move || serve_tls(config, s, id, &ends));
            }
        });
        TlsOrigin {
            addr,
            accepted,
            ends,
            stop,
        }
    }

    /// TCP connections accepted so far (handshakes attempted).
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits up to `within` until `n` connections have ended between requests; how each
    /// ended: `"close_notify"`, `"eof"` (a TCP end without it) or `"error"`.
    pub fn ends(&self, n: usize, within: Duration) -> Vec<&'static str> {
        let (ends, cv) = &*self.ends.0;
        let guard = ends.lock().unwrap();
        let guard = cv
            .wait_timeout_while(guard, within, |e| e.len() < n)
            .unwrap()
            .0;
        guard.clone()
    }
}

/// How connections to a [`TlsOrigin`] ended, and a wake-up for those who wait on it.
#[derive(Clone, Default)]
struct Ends(Arc<(std::sync::Mutex<Vec<&'static str>>, std::sync::Condvar)>);

impl Ends {
    fn record(&self, how: &'static str) {
        self.0 .0.lock().unwrap().push(how);
        self.0 .1.notify_all();
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn serve_tls(config: Arc<rustls::ServerConfig>, sock: TcpStream, id: usize, ends: &Ends) {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut s = rustls::StreamOwned::new(conn, sock);
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) if buf.is_empty() => return ends.record("close_notify"),
                Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return ends.record("eof")
                }
                Ok(0) | Err(_) => return ends.record("error"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let field = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = field("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if head.starts_with("POST /refuse-now ") {
            // The same answer, then a close at once: with the body unread the kernel resets
            // the connection, whether or not the proxy has read the answer yet. Sent without
            // Nagle's delay: held behind the unacknowledged session tickets, the answer
            // would be lost in this side's own reset, before any proxy could see it.
            let _ = s.sock.set_nodelay(true);
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno key");
            let _ = s.flush();
            return;
        }
        if head.starts_with("POST /refuse ") {
            // An answer before the body, then a close without close_notify: the unread body
            // makes the kernel reset the connection.
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno key");
            let _ = s.flush();
            // Closed once the proxy has the answer (nothing unacknowledged in the send queue):
            // a reset before would destroy the answer itself, and the proxy could only 502.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&s.sock);
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < until {
                let mut n: libc::c_int = 0;
                // SAFETY: TIOCOUTQ writes one int to `n`; `fd` is this thread's open socket.
                if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) } != 0 || n == 0 {
                    break;
                }
                std::thread::yield_now();
            }
            return;
        }
        if head.starts_with("POST /hold") {
            // An answer before the body (after a `100` for `/hold-after-100`), which is then
            // never read: the connection is held open, unread, for 30 s.
            if head.starts_with("POST /hold-after-100 ") {
                let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                let _ = s.flush();
            }
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\nno key");
            let _ = s.flush();
            std::thread::park_timeout(Duration::from_secs(30));
            return;
        }
        while buf.len() < end + len {
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + len);
        let body = format!(
            "tls-origin conn={id} proto={} body={len}",
            field("x-forwarded-proto").unwrap_or_default()
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if head.starts_with("GET /until-close") {
            // A close-delimited body, then the end: with close_notify for `/until-close/clean`,
            // a bare TCP close (a truncation, RFC 9112 §9.8) otherwise.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial body");
            let _ = s.flush();
            if head.starts_with("GET /until-close/clean ") {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            let _ = s.sock.shutdown(std::net::Shutdown::Both);
            return;
        }
        if head.starts_with("GET /extra ") {
            // The response, then a second one nobody asked for, in one TCP write (records of
            // their own): the connection then answers later requests as usual.
            let _ = s.conn.writer().write_all(resp.as_bytes());
            let _ = s.conn.writer().write_all(STALE);
            if s.flush().is_err() {
                return;
            }
            continue;
        }
        if head.starts_with("HEAD ") {
            // The head a GET would get, without its body.
            let end = resp.find("\r\n\r\n").unwrap() + 4;
            if s.write_all(&resp.as_bytes()[..end]).is_err() {
                return;
            }
            continue;
        }
        if head.starts_with("GET /bye ") {
            // The response and the close_notify in one write, then silence on an open socket.
            let _ = s.conn.writer().write_all(resp.as_bytes());
            s.conn.send_close_notify();
            while s.conn.wants_write() {
                if s.conn.write_tls(&mut s.sock).is_err() {
                    return;
                }
            }
            let mut rest = [0u8; 4096];
            while matches!(s.sock.read(&mut rest), Ok(n) if n > 0) {}
            return;
        }
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
