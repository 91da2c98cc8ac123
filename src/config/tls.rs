//! Config, `[[listener]]` side: each listener's address and its raw `tls = { ... }` and
//! `redirect_https = { ... }` tables and their validation into [`ListenerTls`] and
//! [`RedirectHttps`]. Only names, ranges and paths are checked here; the files themselves are
//! read by [`crate::tls`] (at start, by `edgeshard check`, and on every reload), which names
//! the same key paths when a file is bad.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::raw::Checker;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    certificates: Vec<RawCertificate>,
    versions: Option<Vec<String>>,
    cipher_suites: Option<Vec<String>>,
    handshake_timeout: Option<String>,
    max_handshakes: Option<usize>,
    client_auth: Option<RawClientAuth>,
    hsts: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: String,
    key: String,
    ocsp: Option<String>,
    default: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientAuth {
    ca: String,
    required: Option<bool>,
    subject_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    sni: Option<String>,
    ca: Option<String>,
    verify: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    port: Option<u16>,
    status: Option<u16>,
    except: Option<Vec<String>>,
}

/// One certificate of a TLS listener: the files, resolved against the configuration file's
/// directory, and the key path they were written at (for error messages on reload).
#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ocsp: Option<PathBuf>,
    /// e.g. `listener[0].tls.certificates[1]`.
    pub key_path: String,
}

/// Which TLS versions a listener offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsVersions {
    pub tls12: bool,
    pub tls13: bool,
}

/// mTLS: client certificates verified against `ca`.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    pub ca: PathBuf,
    /// Refuse the handshake of a client without a valid certificate.
    pub required: bool,
    /// Where the verified client's subject (and SANs) are passed to the backend; any copy the
    /// client sends is removed.
    pub subject_header: Option<String>,
}

/// `[[listener]] tls = { ... }`, validated.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    pub certificates: Vec<CertificateFiles>,
    /// Index into `certificates` served to clients without SNI or with an unknown name.
    pub default: usize,
    pub versions: TlsVersions,
    /// rustls suite names, in preference order; `None` is the provider's default list.
    pub cipher_suites: Option<Vec<String>>,
    pub handshake_timeout: Duration,
    /// Handshakes in progress per shard; a connection beyond it is closed at once.
    pub max_handshakes: usize,
    pub client_auth: Option<ClientAuth>,
    /// `Strict-Transport-Security` value added to every response on this listener.
    pub hsts: Option<String>,
}

/// `[[listener]] redirect_https = { ... }`: every request on this (plain) listener is answered
/// with a redirect to the same host and path over https, but those under `except`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectHttps {
    pub port: u16,
    /// 301 or 308 (308 keeps the method and body).
    pub status: u16,
    /// Path prefixes (written as routes' are) whose requests are routed, not redirected:
    /// `/.well-known/acme-challenge/` for an ACME client answering on plain http.
    pub except: std::sync::Arc<[Box<[u8]>]>,
}

impl RedirectHttps {
    /// Whether a request with this (routing, [`crate::route::match_path`]ed) path is
    /// redirected.
    pub fn redirects(&self, path: &[u8]) -> bool {
        !self.except.iter().any(|p| path.starts_with(p))
    }
}

/// `[[upstream]] tls = { ... }`: backends of this upstream are spoken to over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified in the backend's certificate; `None`: each
    /// backend's IP address (verified against the certificate's IP SANs).
    pub sni: Option<String>,
    /// CAs the backends' certificates must chain to; `None`: the host's trust store.
    pub ca: Option<PathBuf>,
    /// `false` accepts any certificate (encryption without authentication: for testing).
    pub verify: bool,
}

/// Default `handshake_timeout`: a client that has not finished its handshake by then is
/// closed (nginx bounds the same wait with `client_header_timeout`, 60 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `max_handshakes` per shard.
pub const MAX_HANDSHAKES: usize = 1024;

/// The suite names a listener may restrict to: every suite of the crypto provider.
pub fn suite_names() -> Vec<&'static str> {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|s| s.suite().as_str())
        .collect()
}

fn file(base: &Path, s: &str) -> PathBuf {
    let p = Path::new(s);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub(super) fn listener_tls(
    c: &mut Checker,
    path: &str,
    base: &Path,
    raw: RawListenerTls,
) -> Option<ListenerTls> {
    let before = c.issues.len();
    if raw.certificates.is_empty() {
        c.err(
            format!("{path}.certificates"),
            "at least one { cert = \"...pem\", key = \"...key\" } is required",
        );
    }
    let mut default = None;
    let mut certificates = Vec::new();
    for (i, rc) in raw.certificates.into_iter().enumerate() {
        let key_path = format!("{path}.certificates[{i}]");
        if rc.default == Some(true) {
            if default.is_some() {
                c.err(
                    format!("{key_path}.default"),
                    "only one certificate may be the default",
                );
            }
            default = Some(i);
        }
        for (k, v) in [("cert", &rc.cert), ("key", &rc.key)] {
            if v.trim().is_empty() {
                c.err(format!("{key_path}.{k}"), "must name a PEM file");
            }
        }
        certificates.push(CertificateFiles {
            cert: file(base, &rc.cert),
            key: file(base, &rc.key),
            ocsp: rc.ocsp.as_deref().map(|o| file(base, o)),
            key_path,
        });
    }
    let versions = match raw.versions {
        None => TlsVersions {
            tls12: true,
            tls13: true,
        },
        Some(list) => {
            let mut v = TlsVersions {
                tls12: false,
                tls13: false,
            };
            for s in &list {
                match s.trim() {
                    "1.2" | "TLSv1.2" => v.tls12 = true,
                    "1.3" | "TLSv1.3" => v.tls13 = true,
                    other => c.err(
                        format!("{path}.versions"),
                        format!("{other:?} is not offered; write \"1.2\" and/or \"1.3\" (TLS 1.0 and 1.1 are insecure and not supported)"),
                    ),
                }
            }
            // An empty list (an unknown version is already reported by itself).
            if list.is_empty() {
                c.err(format!("{path}.versions"), "name at least one version");
            }
            v
        }
    };
    let cipher_suites = raw.cipher_suites.inspect(|list| {
        let known = suite_names();
        for s in list {
            if !known.contains(&s.as_str()) {
                c.err(
                    format!("{path}.cipher_suites"),
                    format!("unknown suite {s:?}; known: {}", known.join(", ")),
                );
            }
        }
        if list.is_empty() {
            c.err(format!("{path}.cipher_suites"), "name at least one suite");
        }
    });
    let handshake_timeout = c.duration(
        &format!("{path}.handshake_timeout"),
        raw.handshake_timeout.as_ref(),
        HANDSHAKE_TIMEOUT,
    );
    let max_handshakes = c.count(
        &format!("{path}.max_handshakes"),
        raw.max_handshakes,
        MAX_HANDSHAKES,
        1,
        1 << 20,
    );
    let client_auth = raw.client_auth.map(|a| {
        if let Some(h) = &a.subject_header {
            let key = format!("{path}.client_auth.subject_header");
            if !super::fields::token(h) {
                c.err(key, format!("invalid header name {h:?}"));
            } else if !super::fields::own_field_allowed(&h.to_ascii_lowercase()) {
                c.err(
                    key,
                    format!("{h:?} is a field HTTP or the proxy defines (framing, hop-by-hop, Host, content, authorization, forwarding): the proxy removes it from every client request and writes the subject there; choose another name such as X-Client-Subject"),
                );
            }
        }
        ClientAuth {
            ca: file(base, &a.ca),
            required: a.required.unwrap_or(true),
            subject_header: a.subject_header,
        }
    });
    if let Some(h) = &raw.hsts {
        if h.is_empty() || h.bytes().any(|b| b < 0x20 || b == 0x7f) {
            c.err(
                format!("{path}.hsts"),
                "must be a header value such as \"max-age=31536000; includeSubDomains\"",
            );
        }
    }
    if c.issues.len() > before {
        return None;
    }
    Some(ListenerTls {
        certificates,
        default: default.unwrap_or(0),
        versions,
        cipher_suites,
        handshake_timeout,
        max_handshakes,
        client_auth,
        hsts: raw.hsts,
    })
}

pub(super) fn redirect(c: &mut Checker, path: &str, raw: RawRedirect) -> Option<RedirectHttps> {
    let status = raw.status.unwrap_or(301);
    if status != 301 && status != 308 {
        c.err(
            format!("{path}.status"),
            format!("{status} is not a redirect this listener sends; use 301 or 308"),
        );
        return None;
    }
    if raw.port == Some(0) {
        c.err(
            format!("{path}.port"),
            "0 is not a port clients can connect to; write 1..=65535 (default 443)",
        );
        return None;
    }
    let mut except = Vec::new();
    for (i, p) in raw.except.unwrap_or_default().into_iter().enumerate() {
        // Compared as route prefixes are, so written as they must be.
        if !p.starts_with('/')
            || !p.bytes().all(|b| b.is_ascii_graphic())
            || crate::route::routed_path(&p, true).as_deref() != Some(p.as_str())
        {
            c.err(
                format!("{path}.except[{i}]"),
                format!("{p:?} is not a path prefix as requests are compared (it must start with '/', hold only visible ASCII, no dot segment, '?', '#' or escape of an unreserved character, no '//')"),
            );
            return None;
        }
        except.push(p.into_bytes().into_boxed_slice());
    }
    Some(RedirectHttps {
        port: raw.port.unwrap_or(443),
        status,
        except: except.into(),
    })
}

pub(super) fn upstream_tls(
    c: &mut Checker,
    path: &str,
    base: &Path,
    raw: RawUpstreamTls,
) -> Option<UpstreamTls> {
    if let Some(n) = &raw.sni {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            c.err(
                format!("{path}.sni"),
                format!("{n:?} is not a DNS name or IP address"),
            );
            return None;
        }
    }
    Some(UpstreamTls {
        sni: raw.sni,
        ca: raw.ca.as_deref().map(|a| file(base, a)),
        verify: raw.verify.unwrap_or(true),
    })
}

/// `[[upstream]] proxy_protocol`: `"v1"` or `"v2"`.
pub(super) fn upstream_proxy_protocol(
    c: &mut Checker,
    path: &str,
    raw: Option<String>,
) -> Option<crate::proxy_protocol::Version> {
    match raw.as_deref()? {
        "v1" => Some(crate::proxy_protocol::Version::V1),
        "v2" => Some(crate::proxy_protocol::Version::V2),
        other => {
            c.err(
                format!("{path}.proxy_protocol"),
                format!("unknown PROXY protocol version {other:?}: \"v1\" or \"v2\""),
            );
            None
        }
    }
}

/// Every `[[listener]]`: its address (unique unless `:0`), TLS, redirect and PROXY protocol,
/// each problem recorded with its key path. Relative file names are relative to `base`;
/// `has_trusted`: `server.trusted_proxies` names someone (`proxy_protocol` requires it).
pub(super) fn listeners(
    c: &mut Checker,
    raw: Vec<toml::Value>,
    base: &Path,
    has_trusted: bool,
) -> Vec<super::ListenerConfig> {
    let mut listeners = Vec::new();
    if raw.is_empty() {
        c.err(
            "listener",
            "at least one [[listener]] with an address is required",
        );
    }
    // Addresses so far, with their key paths: one process cannot listen on two that overlap
    // (the same port on the same or a wildcard address), which `run` would find only when
    // binding the second.
    let mut seen_listen: Vec<(String, std::net::SocketAddr)> = Vec::new();
    let dual_stack = crate::listener::dual_stack();
    for (i, v) in raw.into_iter().enumerate() {
        let path = format!("listener[{i}]");
        if let Some(l) = c.section::<super::raw::RawListener>(&path, v) {
            let tls = l
                .tls
                .and_then(|t| listener_tls(c, &format!("{path}.tls"), base, t));
            let redirect_https = l
                .redirect_https
                .and_then(|r| redirect(c, &format!("{path}.redirect_https"), r));
            if tls.is_some() && redirect_https.is_some() {
                c.err(
                    format!("{path}.redirect_https"),
                    "a TLS listener serves https itself; redirect_https belongs on a plain listener",
                );
            }
            let proxy_protocol = l.proxy_protocol.unwrap_or(false);
            if proxy_protocol && !has_trusted {
                c.err(
                    format!("{path}.proxy_protocol"),
                    "a PROXY protocol header is only believed from a trusted peer: set server.trusted_proxies to the balancers' addresses",
                );
            }
            if let Some(a) = c.address(&format!("{path}.address"), &l.address) {
                if let Some((key, b)) = seen_listen
                    .iter()
                    .find(|(_, b)| crate::listener::overlaps(a, *b, dual_stack))
                {
                    let what = if a == *b {
                        "is already used".to_owned()
                    } else {
                        format!(
                            "overlaps {key} ({b}: the same port on the same or a wildcard address)"
                        )
                    };
                    c.err(
                        format!("{path}.address"),
                        format!("listening address {a} {what} in the configuration"),
                    );
                }
                seen_listen.push((format!("{path}.address"), a));
                let access =
                    super::access::access_list(c, &path, l.allow.as_deref(), l.deny.as_deref());
                let rate_limit = super::ratelimit::rate_limit(
                    c,
                    &path,
                    &format!("listener {}", l.address),
                    l.rate_limit.as_ref(),
                );
                listeners.push(super::ListenerConfig {
                    address: a,
                    tls,
                    redirect_https,
                    access,
                    proxy_protocol,
                    rate_limit,
                    request_headers: super::rules::header_rules(
                        c,
                        &format!("{path}.request_headers"),
                        l.request_headers,
                        false,
                    ),
                    response_headers: super::rules::header_rules(
                        c,
                        &format!("{path}.response_headers"),
                        l.response_headers,
                        true,
                    ),
                });
            }
        }
    }
    listeners
}
