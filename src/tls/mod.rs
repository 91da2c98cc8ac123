//! TLS termination, between stage 1 (*accept*) and stage 2 (*parse*): a connection accepted
//! on a TLS listener is handshaken on its shard ([`handshake`]) and then read and written
//! through [`crate::transport::Transport::Tls`]. This module builds each listener's rustls
//! configuration once at start ([`TlsListeners::build`]): the SNI certificate table
//! ([`certs`]), versions, suites, ALPN `http/1.1` (or `http/1.0`), optional client
//! certificates, and one session-ticket key set shared by every shard so that a client
//! resumes on whichever shard `SO_REUSEPORT` hands its next connection to (and kept by a
//! reload: [`TlsListeners::build_with`]). Certificates are re-read on SIGHUP and when
//! their files change ([`TlsListeners::reload`]); handshakes in progress and open connections
//! keep what they started with.

pub mod certs;
pub mod stats;
pub mod stream;
pub mod tickets;
pub mod upstream;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::client::Client;
use crate::config::{Config, ListenerTls};
use crate::http::fields::same_field;
use crate::http::parse::RequestHead;
use crate::shard::ShardCtx;
use crate::stats::bump;
use certs::{CertStore, SniResolver};
use stats::Failure;
use stream::TlsStream;

/// A TLS listener that cannot be set up, or a certificate file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key_path}.{field} ({}): {reason}", file.display())]
    File {
        key_path: String,
        field: &'static str,
        file: PathBuf,
        reason: String,
    },
    #[error("{key_path}: {reason}")]
    Setup { key_path: String, reason: String },
    /// Every problem of a configuration's TLS files, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<TlsError>),
}

impl TlsError {
    /// `errors` as one error: the only one, or [`TlsError::Several`].
    fn of(mut errors: Vec<TlsError>) -> TlsError {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            TlsError::Several(errors)
        }
    }
}

/// The crypto provider: aws-lc-rs (see Cargo.toml for the measurement behind the choice).
pub fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Every suite the provider knows, by name, in its order (the index of the suite counters).
pub fn suites() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(crate::config::suite_names)
}

/// One TLS listener, as every shard uses it.
pub struct TlsListener {
    pub config: Arc<ServerConfig>,
    pub store: Arc<CertStore>,
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
    /// mTLS: the header the verified client subject goes to (lower-case name kept as
    /// written for output).
    pub subject_header: Option<String>,
    /// `Strict-Transport-Security` for every relayed response.
    pub hsts: Option<String>,
    /// `listener[i].tls`, for logs.
    pub key_path: String,
    /// Its client-auth policy as read (the CA certificates' bytes too), its tickets' scope:
    /// a reload whose CA file changed rebuilds the listener ([`tickets`]).
    pub scope: tickets::Scope,
}

/// Every listener's TLS, indexed like `config.listeners`, and every upstream's, indexed like
/// `config.upstreams` (`None`: plain).
#[derive(Default)]
pub struct TlsListeners {
    pub listeners: Vec<Option<Arc<TlsListener>>>,
    pub upstreams: Vec<Option<Arc<upstream::UpstreamTlsClient>>>,
    /// Every listener's mTLS subject header, once each: the proxy owns these names on every
    /// listener, so a client's copy is removed wherever it arrives (a plain listener routing
    /// to the same upstream would otherwise let it forge a certificate's subject).
    pub subject_headers: Vec<String>,
    /// The session-ticket keys every listener seals its (scoped) tickets with.
    pub ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
}

impl std::fmt::Debug for TlsListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TlsListeners({} tls)",
            self.listeners.iter().flatten().count()
        )
    }
}

impl TlsListeners {
    /// Reads every certificate, key, OCSP response and client CA, and builds the rustls
    /// configurations. Errors name the key path and the file.
    pub fn build(config: &Config) -> Result<TlsListeners, TlsError> {
        TlsListeners::build_with(config, None)
    }

    /// [`TlsListeners::build`] with the session-ticket keys of `ticketer` when given (a
    /// reload keeps those in force, so that clients resume across it).
    pub fn build_with(
        config: &Config,
        ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    ) -> Result<TlsListeners, TlsError> {
        // One ticket key set (rotated every 6 hours, each accepted for 12) for all shards and
        // listeners: resumption works whichever shard a client lands on.
        let mut ticketer = ticketer;
        let mut listeners = Vec::new();
        // Every file is read, and every problem reported, not only the first.
        let mut errors = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(t) = &l.tls else {
                listeners.push(None);
                continue;
            };
            let key_path = format!("listener[{i}].tls");
            if ticketer.is_none() {
                ticketer = Some(rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
                    TlsError::Setup {
                        key_path: key_path.clone(),
                        reason: format!("cannot create session ticket keys: {e}"),
                    }
                })?);
            }
            let store = CertStore::load(&t.certificates, t.default).map(Arc::new);
            let built = store.and_then(|store| {
                let (sc, scope) = server_config(t, &key_path, store.clone())?;
                Ok((store, sc, scope))
            });
            let (store, mut sc, scope) = match built {
                Ok(b) => b,
                Err(e) => {
                    errors.push(e);
                    // The client CA file is read too, for its own problem.
                    let ca = t.client_auth.as_ref().map(|a| {
                        certs::read_chain(&format!("{key_path}.client_auth"), "ca", &a.ca)
                    });
                    if let Some(Err(e)) = ca {
                        errors.push(e);
                    }
                    listeners.push(None);
                    continue;
                }
            };
            if let Some(tk) = &ticketer {
                sc.ticketer = Arc::new(tickets::Scoped::new(tk.clone(), scope));
            }
            listeners.push(Some(Arc::new(TlsListener {
                config: Arc::new(sc),
                store,
                handshake_timeout: t.handshake_timeout,
                max_handshakes: t.max_handshakes,
                subject_header: t
                    .client_auth
                    .as_ref()
                    .and_then(|a| a.subject_header.clone()),
                hsts: t.hsts.clone(),
                key_path,
                scope,
            })));
        }
        let mut upstreams = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            let built = u.tls.as_ref().map(|t| {
                upstream::UpstreamTlsClient::build(t, &format!("upstream[{i}].tls")).map(Arc::new)
            });
            upstreams.push(match built.transpose() {
                Ok(b) => b,
                Err(e) => {
                    errors.push(e);
                    None
                }
            });
        }
        if !errors.is_empty() {
            return Err(TlsError::of(errors));
        }
        let mut subject_headers: Vec<String> = Vec::new();
        for h in listeners
            .iter()
            .flatten()
            .filter_map(|l| l.subject_header.as_ref())
        {
            if !subject_headers.iter().any(|s| s.eq_ignore_ascii_case(h)) {
                subject_headers.push(h.clone());
            }
        }
        let built = TlsListeners {
            listeners,
            upstreams,
            subject_headers,
            ticketer,
        };
        for line in built.invalid_now() {
            tracing::warn!("certificate clients will refuse: {line}");
        }
        Ok(built)
    }

    /// One line per certificate in force that clients would refuse now (expired, or not yet
    /// valid): loaded all the same, as nginx does, and said at start, on `check` and on each
    /// reload; a file watched for renewal is not swapped in when it is out of its validity
    /// and the one in force is not ([`CertStore::reload`]).
    pub fn invalid_now(&self) -> Vec<String> {
        let stores = self.listeners.iter().flatten();
        stores.flat_map(|l| l.store.invalid_now()).collect()
    }

    /// How to speak TLS to the backends of upstream `u`, if it has `tls`.
    pub fn upstream(&self, u: usize) -> Option<&Arc<upstream::UpstreamTlsClient>> {
        self.upstreams.get(u).and_then(Option::as_ref)
    }

    pub fn get(&self, listener: usize) -> Option<&Arc<TlsListener>> {
        self.listeners.get(listener).and_then(Option::as_ref)
    }

    pub fn any(&self) -> bool {
        self.listeners.iter().any(Option::is_some)
    }

    /// Re-reads certificates: all of them when `force` (SIGHUP), else those whose files
    /// changed. A failure keeps that listener's certificates in force and is logged with the
    /// key path and file.
    pub fn reload(&self, force: bool) {
        for l in self.listeners.iter().flatten() {
            match l.store.reload(force) {
                None => {}
                Some(Ok(())) => {
                    tracing::info!(listener = %l.key_path, "certificates reloaded");
                    for line in l.store.invalid_now() {
                        tracing::warn!("certificate clients will refuse: {line}");
                    }
                }
                Some(Err(e)) => tracing::error!(
                    "certificate reload failed, keeping the certificates in force: {e}"
                ),
            }
        }
    }

    /// Watches the certificate files twice a second until `stop` is set (a change is read
    /// once it has settled for one tick, so within a second); SIGHUP reloads at once through
    /// [`TlsListeners::reload`].
    pub fn spawn_watcher(
        self: Arc<Self>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        if !self.any() {
            return None;
        }
        std::thread::Builder::new()
            .name("tls-watch".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_millis(500));
                    self.reload(false);
                }
            })
            .ok()
    }

    /// Process-wide TLS families: certificate expiry and reload results. Label values are
    /// escaped as every family's are: a certificate's name is whatever its file says.
    pub fn render(&self, o: &mut String) {
        use crate::observe::metrics::esc;
        use std::fmt::Write;
        if !self.any() {
            return;
        }
        let now = crate::observe::admin::unix_now() as i64;
        let _ = writeln!(o, "# HELP edgeshard_tls_certificate_expiry_seconds Seconds until the certificate's notAfter (negative: expired).\n# TYPE edgeshard_tls_certificate_expiry_seconds gauge");
        for l in self.listeners.iter().flatten() {
            for c in &l.store.current().certs {
                let _ = writeln!(
                    o,
                    "edgeshard_tls_certificate_expiry_seconds{{certificate=\"{}\",name=\"{}\"}} {}",
                    esc(&c.key_path),
                    esc(c.names.first().map_or("", String::as_str)),
                    c.not_after - now
                );
            }
        }
        let _ = writeln!(o, "# HELP edgeshard_tls_certificate_reloads_total Certificate reloads by result (a failure keeps the certificates in force).\n# TYPE edgeshard_tls_certificate_reloads_total counter");
        for l in self.listeners.iter().flatten() {
            use std::sync::atomic::Ordering::Relaxed;
            let _ = writeln!(
                o,
                "edgeshard_tls_certificate_reloads_total{{listener=\"{}\",result=\"ok\"}} {}\nedgeshard_tls_certificate_reloads_total{{listener=\"{}\",result=\"failed\"}} {}",
                esc(&l.key_path),
                l.store.reloads_ok.load(Relaxed),
                esc(&l.key_path),
                l.store.reloads_failed.load(Relaxed)
            );
        }
    }
}

/// The listener's rustls configuration, and the scope of its session tickets
/// ([`tickets::scope`]).
fn server_config(
    t: &ListenerTls,
    key_path: &str,
    store: Arc<CertStore>,
) -> Result<(ServerConfig, tickets::Scope), TlsError> {
    let mut provider = provider();
    // The server's order decides (testssl.sh rates a client-chosen order HIGH): AES-128-GCM
    // first (the cheapest on CPUs with AES instructions), then AES-256-GCM, then ChaCha20,
    // for TLS 1.3 and then 1.2. A configured `cipher_suites` list is its own order.
    provider.cipher_suites.sort_by_key(|s| {
        let name = s.suite().as_str().unwrap_or("");
        (
            !name.starts_with("TLS13_"),
            if name.contains("AES_128_GCM") {
                0
            } else if name.contains("AES_256_GCM") {
                1
            } else {
                2
            },
        )
    });
    if let Some(names) = &t.cipher_suites {
        provider.cipher_suites = names
            .iter()
            .filter_map(|n| {
                rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
                    .iter()
                    .find(|s| s.suite().as_str() == Some(n.as_str()))
                    .copied()
            })
            .collect();
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if t.versions.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if t.versions.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    let setup = |reason: String| TlsError::Setup {
        key_path: key_path.to_string(),
        reason,
    };
    // The suites a handshake on this listener may end with: its own, of its versions.
    let suites = provider.cipher_suites.iter().filter(|k| match k {
        rustls::SupportedCipherSuite::Tls13(_) => t.versions.tls13,
        rustls::SupportedCipherSuite::Tls12(_) => t.versions.tls12,
    });
    let suites = suites.copied().collect();
    let builder = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| {
            setup(format!(
                "versions and cipher_suites have nothing in common: {e}"
            ))
        })?;
    let mut scope = tickets::scope(None);
    let builder = match &t.client_auth {
        None => builder.with_no_client_auth(),
        Some(a) => {
            let mut roots = RootCertStore::empty();
            let field_path = format!("{key_path}.client_auth");
            let cas = certs::read_chain(&field_path, "ca", &a.ca)?;
            scope = tickets::scope(Some((a.required, &cas)));
            for c in cas {
                roots.add(c).map_err(|e| TlsError::File {
                    key_path: field_path.clone(),
                    field: "ca",
                    file: a.ca.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(self::provider()),
            );
            let v = if a.required {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                v.build().map_err(|e| setup(format!("client_auth: {e}")))?,
            )
        }
    };
    let mut sc = builder.with_cert_resolver(Arc::new(SniResolver { store, suites }));
    // A client that offers h2 and http/1.1 gets http/1.1, one that offers only http/1.0
    // (`curl --http1.0`) http/1.0; one that offers only h2 is refused
    // (no_application_protocol), rather than spoken to in a protocol it did not ask for.
    sc.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    sc.ignore_client_order = true;
    // Tickets only: a session-id cache would be per process but locked per handshake.
    sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok((sc, scope))
}

/// The handshakes in progress on one shard, per listener (by its `key_path`), oldest first,
/// each with the sender that ends it early. At the listener's `max_handshakes` a new
/// connection ends that listener's oldest rather than being refused: a client that completes
/// its handshake does so within a few round trips, so the oldest is the likeliest to be
/// stalled, and sockets that never send a ClientHello cannot lock every new client out for
/// the handshake timeout (the cap still bounds the state held). Per listener: a connection to
/// one with a small cap must not end the handshakes of another.
#[derive(Default)]
pub struct Running {
    next: std::cell::Cell<u64>,
    lists: std::cell::RefCell<rustc_hash::FxHashMap<Box<str>, HandshakeList>>,
}

type HandshakeList = std::collections::VecDeque<(u64, futures_channel::oneshot::Sender<()>)>;

impl Running {
    /// Registers a handshake on `listener` (its id, and what resolves if it is ended early),
    /// first ending that listener's oldest when `max` are running there.
    fn start(&self, listener: &str, max: usize) -> (u64, futures_channel::oneshot::Receiver<()>) {
        let (end, ended) = futures_channel::oneshot::channel();
        let id = self.next.get();
        self.next.set(id + 1);
        let mut lists = self.lists.borrow_mut();
        let list = match lists.get_mut(listener) {
            Some(list) => list,
            None => lists.entry(listener.into()).or_default(),
        };
        while list.len() >= max.max(1) {
            // Dropping its sender resolves the oldest's receiver: it stops at its next poll.
            list.pop_front();
        }
        list.push_back((id, end));
        (id, ended)
    }

    fn finish(&self, listener: &str, id: u64) {
        let mut lists = self.lists.borrow_mut();
        let Some(list) = lists.get_mut(listener) else {
            return;
        };
        // An emptied list stays (one per listener key path ever seen: a few).
        if let Some(i) = list.iter().position(|(k, _)| *k == id) {
            list.remove(i);
        }
    }
}

/// Runs the handshake for a connection accepted on `tls`, within its timeout and the shard's
/// cap on concurrent handshakes ([`Running`]), and counts the outcome. `None`: the
/// connection is closed.
pub async fn handshake(
    ctx: &ShardCtx,
    tls: &TlsListener,
    tcp: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    accepted: Instant,
) -> Option<TlsStream> {
    let st = &ctx.stats.tls;
    let (id, ended) = ctx.handshakes.start(&tls.key_path, tls.max_handshakes);
    st.in_progress.set(st.in_progress.get() + 1);
    let left = tls.handshake_timeout.saturating_sub(accepted.elapsed());
    let r = monoio::select! {
        r = monoio::time::timeout(left, stream::accept(tcp, tls.config.clone())) => Some(r),
        _ = ended => None,
    };
    ctx.handshakes.finish(&tls.key_path, id);
    st.in_progress.set(st.in_progress.get() - 1);
    let failure = match r {
        Some(Ok(Ok(s))) => {
            count_ok(ctx, tls, &s);
            return Some(s);
        }
        None => Failure::Overload,
        Some(Err(_)) => Failure::Timeout,
        Some(Ok(Err(e))) => {
            let f = e.reason();
            if f != Failure::Eof && ctx.errors.allow(&ctx.stats) {
                tracing::info!(shard = ctx.id, %peer, listener = %tls.key_path, error = %e, "TLS handshake failed");
            }
            f
        }
    };
    st.failed(failure);
    None
}

fn count_ok(ctx: &ShardCtx, tls: &TlsListener, s: &TlsStream) {
    let st = &ctx.stats.tls;
    let c = s.conn();
    if c.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        bump(&st.resumed);
    } else {
        bump(&st.full);
    }
    match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => bump(&st.versions[0]),
        Some(rustls::ProtocolVersion::TLSv1_3) => bump(&st.versions[1]),
        _ => {}
    }
    if let Some(name) = c.negotiated_cipher_suite().and_then(|s| s.suite().as_str()) {
        if let Some(i) = suites().iter().position(|n| *n == name) {
            bump(&st.suites[i]);
        }
    }
    let sni = match c {
        rustls::Connection::Server(s) => s.server_name(),
        rustls::Connection::Client(_) => None,
    };
    if let Some(sni) = sni {
        if !tls.store.current().candidates(Some(sni)).1 {
            bump(&st.sni_miss);
        }
    }
}

/// The session a client's request came over, for the access log (`None` on plain TCP).
pub fn log_facts(client: &Client) -> Option<crate::observe::access::TlsFacts<'_>> {
    let crate::transport::Transport::Tls(s) = &client.stream else {
        return None;
    };
    let c = s.conn();
    let protocol = match c.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        _ => "-",
    };
    let cipher = c
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("-");
    let server_name = match c {
        rustls::Connection::Server(s) => s.server_name(),
        rustls::Connection::Client(_) => None,
    };
    Some(crate::observe::access::TlsFacts {
        protocol,
        cipher,
        server_name,
    })
}

/// The verified client certificate's subject, made safe for a header value.
pub fn client_subject(s: &TlsStream) -> Option<String> {
    let der = s.conn().peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(subject_text(cert.subject()))
}

/// `name` as `CN=alice, O=Example` (the certificate's order; ` + ` inside a multi-valued
/// RDN), each value escaped as RFC 4514 §2.4 says: a CN of `bob, O=Admin` is `CN=bob\,
/// O=Admin`, never the same text as a CN `bob` next to an `O=Admin` a backend would
/// authorise on. Control bytes are `\XX` escapes (header-safe); a value that is not a string
/// is `#` and its hex.
pub fn subject_text(name: &x509_parser::x509::X509Name<'_>) -> String {
    use std::fmt::Write;
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for (i, rdn) in name.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push_str(" + ");
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            let Some(value) = attribute_text(attr) else {
                out.push('#');
                for b in attr.as_slice() {
                    let _ = write!(out, "{b:02X}");
                }
                continue;
            };
            let last = value.chars().count().saturating_sub(1);
            for (k, c) in value.chars().enumerate() {
                match c {
                    '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    ' ' | '#' if k == 0 => {
                        out.push('\\');
                        out.push(c);
                    }
                    ' ' if k == last => out.push_str("\\ "),
                    c if c.is_control() => {
                        let mut b = [0u8; 4];
                        for byte in c.encode_utf8(&mut b).bytes() {
                            let _ = write!(out, "\\{byte:02X}");
                        }
                    }
                    c => out.push(c),
                }
            }
        }
    }
    out
}

/// A name attribute's value as text: the string types (a BMPString from UTF-16), else `None`.
fn attribute_text(attr: &x509_parser::x509::AttributeTypeAndValue<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let v = attr.attr_value();
    match v.tag() {
        Tag::NumericString
        | Tag::VisibleString
        | Tag::PrintableString
        | Tag::GeneralString
        | Tag::GraphicString
        | Tag::T61String
        | Tag::VideotexString
        | Tag::Utf8String
        | Tag::Ia5String => std::str::from_utf8(v.data).ok().map(str::to_owned),
        Tag::BmpString => {
            let units = v
                .data
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// A header field the proxy sets: (name, value).
pub type Field<'a> = (&'a [u8], &'a [u8]);

/// What the request path needs to know of the client's TLS: whether it is https, and the
/// client certificate header, if configured (always removed from what the client sent).
pub fn client_facts(client: &Client) -> (bool, Option<Field<'_>>) {
    match &client.listener.tls {
        None => (false, None),
        Some(t) => (
            true,
            t.subject_header.as_deref().map(|h| {
                (
                    h.as_bytes(),
                    client.client_subject.as_deref().unwrap_or("").as_bytes(),
                )
            }),
        ),
    }
}

/// The mTLS subject as the proxy's own readers of a request's fields see it: route
/// `headers`, `header:` keys of rate limits and balancing, the forward-auth check. They see
/// what the backend sees: a client's copies of any listener's subject header (any spelling,
/// [`same_field`]) are not there, and this connection's verified subject is.
#[derive(Clone, Copy)]
pub struct Subjects<'a> {
    /// Every listener's subject header (none without mTLS headers: nothing is hidden).
    names: &'a [String],
    /// This listener's header and the verified subject (empty without a certificate).
    verified: Option<Field<'a>>,
}

impl<'a> Subjects<'a> {
    pub fn of(client: &'a Client, shared: &'a crate::snapshot::Shared) -> Subjects<'a> {
        Subjects {
            names: &shared.tls.subject_headers,
            verified: client_facts(client).1,
        }
    }

    /// Whether `name` is a subject header: the client's copy is not its own to send.
    pub fn hides(&self, name: &[u8]) -> bool {
        self.names.iter().any(|h| same_field(h.as_bytes(), name))
    }

    /// The verified subject's field, when this connection has one.
    pub fn verified(&self) -> Option<Field<'a>> {
        self.verified.filter(|(_, v)| !v.is_empty())
    }

    /// The value of field `name` when it is a subject header (`Some`: the verified subject,
    /// if it is this listener's header), `None` when it is not one.
    pub fn field(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.hides(name).then(|| {
            self.verified()
                .filter(|(h, _)| same_field(h, name))
                .map(|(_, v)| v)
        })
    }

    /// The request's fields as its readers see them.
    pub fn fields(
        self,
        buf: &'a [u8],
        head: &'a RequestHead,
    ) -> impl Iterator<Item = Field<'a>> + Clone + 'a {
        head.headers
            .iter()
            .map(move |h| (h.name.get(buf), h.value.get(buf)))
            .filter(move |(n, _)| !self.hides(n))
            .chain(self.verified())
    }
}

/// Whether this kernel can take TLS records into the socket (kTLS: `tls` in
/// `net.ipv4.tcp_available_ulp`, or a loadable module). edgeshard does not use it yet (see
/// docs/ARCHITECTURE.md, "TLS"); start-up logs what it found.
pub fn ktls_available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|s| s.split_whitespace().any(|u| u == "tls"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::subject_text;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn subject(fields: &[(DnType, &str)]) -> String {
        let mut params = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let mut dn = DistinguishedName::new();
        for (t, v) in fields {
            dn.push(t.clone(), *v);
        }
        params.distinguished_name = dn;
        let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        subject_text(parsed.subject())
    }

    #[test]
    fn subject_values_are_escaped_as_rfc_4514_says() {
        let plain = subject(&[
            (DnType::CommonName, "alice"),
            (DnType::OrganizationName, "Example"),
        ]);
        assert_eq!(plain, "CN=alice, O=Example");
        // A CN that reads like two attributes is not the same text as two attributes.
        let forged = subject(&[(DnType::CommonName, "bob, O=Admin")]);
        let real = subject(&[
            (DnType::CommonName, "bob"),
            (DnType::OrganizationName, "Admin"),
        ]);
        assert_eq!(forged, "CN=bob\\, O=Admin");
        assert_eq!(real, "CN=bob, O=Admin");
        assert_ne!(forged, real);
        for (value, text) in [
            ("a+b;c<d>e\"f\\g", "CN=a\\+b\\;c\\<d\\>e\\\"f\\\\g"),
            ("#x", "CN=\\#x"),
            (" x ", "CN=\\ x\\ "),
            ("a\r\nb\0", "CN=a\\0D\\0Ab\\00"),
        ] {
            assert_eq!(subject(&[(DnType::CommonName, value)]), text, "{value:?}");
        }
    }
}
