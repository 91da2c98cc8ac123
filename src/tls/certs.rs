//! TLS, certificates: a listener's certificates read from PEM files into a [`CertSet`] (the
//! SNI table: exact names and wildcards from each certificate's SANs, and a default), kept in
//! a [`CertStore`] that a reload replaces whole or not at all. The [`SniResolver`] rustls
//! calls during each handshake reads the current set without a lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;
use crate::config::CertificateFiles;

/// One certificate as served: the chain and key rustls signs with, and what the SNI table
/// and the expiry metric need from it.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the SANs (or the subject CN when there are none), lower case;
    /// wildcards as written (`*.example.com`).
    pub names: Vec<String>,
    /// notAfter of the leaf, in Unix seconds.
    pub not_after: i64,
    /// notBefore of the leaf, in Unix seconds.
    pub not_before: i64,
    /// e.g. `listener[0].tls.certificates[1]`, for metrics and logs.
    pub key_path: String,
}

/// The SNI table of one listener: a name goes to its exact match, else to the wildcard one
/// label up (`*.example.com` covers `a.example.com`, not `a.b.example.com` nor
/// `example.com`), else to the default. A name may have several certificates (an ECDSA and
/// an RSA one, as nginx serves several `ssl_certificate`s): each handshake gets the first, in
/// the configured order, that the client can use ([`CertSet::choose`]).
pub struct CertSet {
    pub certs: Vec<LoadedCert>,
    exact: HashMap<String, Vec<usize>>,
    wildcard: HashMap<String, Vec<usize>>,
    /// The default first, then the others that name its first name.
    default: Vec<usize>,
}

impl CertSet {
    fn new(certs: Vec<LoadedCert>, default: usize) -> CertSet {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                let list = match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_default(),
                    None => exact.entry(n.clone()).or_default(),
                };
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
        let mut set = CertSet {
            certs,
            exact,
            wildcard,
            default: vec![default],
        };
        let first = set.certs.get(default).and_then(|c| c.names.first());
        if let Some((list, true)) = first.map(|n| set.candidates(Some(n))) {
            let others = list
                .iter()
                .copied()
                .filter(|&i| i != default)
                .collect::<Vec<_>>();
            set.default.extend(others);
        }
        set
    }

    /// The certificates for a client's SNI, in order of preference, and whether the name
    /// matched one (false: the default's were chosen for an unknown name; no SNI is not a
    /// miss).
    pub fn candidates(&self, sni: Option<&str>) -> (&[usize], bool) {
        let Some(name) = sni else {
            return (&self.default, true);
        };
        let name = name.trim_end_matches('.');
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(list) = self.exact.get(name) {
            return (list, true);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(list) = self.wildcard.get(parent) {
                return (list, true);
            }
        }
        (&self.default, false)
    }

    /// Of `list`, the first certificate the client can use: its key signs with a scheme in
    /// `schemes`, and one of the listener's suites (`listener`, its versions' only) that the
    /// client offers (`suites`) goes with it: any TLS 1.3 suite; a TLS 1.2 one only with its
    /// own key type, ECDHE_ECDSA or ECDHE_RSA. The first of all when none can: the handshake
    /// then fails as it must.
    pub fn choose(
        &self,
        list: &[usize],
        listener: &[rustls::SupportedCipherSuite],
        schemes: &[rustls::SignatureScheme],
        suites: &[rustls::CipherSuite],
    ) -> usize {
        if list.len() > 1 {
            let usable = |&&i: &&usize| {
                let key = &self.certs[i].key.key;
                let mut offered = listener.iter().filter(|k| suites.contains(&k.suite()));
                // (A key signs only schemes of its own type: one of a TLS 1.2 suite's `sign`
                // schemes names the suite's.)
                key.choose_scheme(schemes).is_some()
                    && offered.any(|k| match k {
                        rustls::SupportedCipherSuite::Tls13(_) => true,
                        rustls::SupportedCipherSuite::Tls12(t) => {
                            key.choose_scheme(t.sign).is_some()
                        }
                    })
            };
            if let Some(&i) = list.iter().find(usable) {
                return i;
            }
        }
        list[0]
    }
}

/// A file that cannot be read, said with what to check.
fn read_err(key_path: &str, field: &'static str, file: &Path, e: std::io::Error) -> TlsError {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => {
            "check the path (a relative one is read from the configuration file's directory)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "make it readable by the user edgeshard starts as (it is read before any switch to server.user)"
        }
        _ => "check that it is a readable file",
    };
    file_err(
        key_path,
        field,
        file,
        format!("cannot read it: {e}; {hint}"),
    )
}

fn file_err(key_path: &str, field: &'static str, file: &Path, reason: String) -> TlsError {
    TlsError::File {
        key_path: key_path.to_string(),
        field,
        file: file.to_path_buf(),
        reason,
    }
}

/// Reads a PEM certificate chain (leaf first).
pub fn read_chain(
    key_path: &str,
    field: &'static str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(file).map_err(|e| read_err(key_path, field, file, e))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(key_path, field, file, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(
            key_path,
            field,
            file,
            "no CERTIFICATE block found".into(),
        ));
    }
    Ok(chain)
}

fn load_one(files: &CertificateFiles) -> Result<LoadedCert, TlsError> {
    let kp = &files.key_path;
    // Both files are read before either's problem is reported: a missing pair is two lines.
    let (chain, key_bytes) = match (
        read_chain(kp, "cert", &files.cert),
        std::fs::read(&files.key).map_err(|e| read_err(kp, "key", &files.key, e)),
    ) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(a), Err(b)) => return Err(TlsError::of(vec![a, b])),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        file_err(
            kp,
            "key",
            &files.key,
            format!("no PKCS#8, PKCS#1 or SEC1 private key found: {e}"),
        )
    })?;
    let (names, not_before, not_after) =
        leaf_facts(&chain[0]).map_err(|reason| file_err(kp, "cert", &files.cert, reason))?;
    let provider = super::provider();
    let mut certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        file_err(
            kp,
            "key",
            &files.key,
            format!("does not match {} ({e})", files.cert.display()),
        )
    })?;
    if let Some(ocsp) = &files.ocsp {
        let der = std::fs::read(ocsp).map_err(|e| read_err(kp, "ocsp", ocsp, e))?;
        certified.ocsp = Some(der);
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
        not_before,
        key_path: kp.clone(),
    })
}

impl LoadedCert {
    /// Why clients would refuse this certificate at `now` (Unix seconds): expired or not yet
    /// valid. nginx serves such a certificate too; edgeshard says so when it loads one.
    pub fn invalid_at(&self, now: i64) -> Option<String> {
        let at = |t: i64| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
            humantime::format_rfc3339_seconds(t)
        };
        if now > self.not_after {
            Some(format!("expired at {}", at(self.not_after)))
        } else if now < self.not_before {
            Some(format!("not valid before {}", at(self.not_before)))
        } else {
            None
        }
    }
}

/// The time now in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The leaf's DNS names, notBefore and notAfter.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the first certificate cannot be parsed: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    let validity = cert.validity();
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// What a file looked like when it was last read: a change to any of these is a reload.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// Every file of a listener's certificates, in order (`None`: cannot be read now).
type Stamps = Vec<Option<Stamp>>;

/// A listener's certificates: the set in force, and how to replace it.
pub struct CertStore {
    files: Vec<CertificateFiles>,
    default: usize,
    current: ArcSwap<CertSet>,
    /// The files' stamps at the last attempt, and a change seen but not yet settled (the
    /// watcher thread's own state).
    /// Also when to read the files again though they have not changed (a renewal refused
    /// because it is not valid yet is taken once it is: Unix seconds).
    stamps: Mutex<(Stamps, Option<Stamps>, Option<i64>)>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl CertStore {
    /// Reads every certificate; any bad file fails the whole listener.
    pub fn load(files: &[CertificateFiles], default: usize) -> Result<CertStore, TlsError> {
        let stamps = Self::stamps_of(files);
        let (certs, errors): (Vec<_>, Vec<_>) = files.iter().map(load_one).partition(Result::is_ok);
        if !errors.is_empty() {
            return Err(TlsError::of(
                errors.into_iter().filter_map(Result::err).collect(),
            ));
        }
        let certs = certs.into_iter().filter_map(Result::ok).collect();
        Ok(CertStore {
            files: files.to_vec(),
            default,
            current: ArcSwap::from_pointee(CertSet::new(certs, default)),
            stamps: Mutex::new((stamps, None, None)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        })
    }

    fn stamps_of(files: &[CertificateFiles]) -> Stamps {
        let paths = files
            .iter()
            .flat_map(|f| [Some(&f.cert), Some(&f.key), f.ocsp.as_ref()])
            .flatten();
        paths.map(|p: &PathBuf| stamp(p)).collect()
    }

    /// One line per certificate in force that clients would refuse now (expired, or not
    /// yet valid), naming its key path and file.
    pub fn invalid_now(&self) -> Vec<String> {
        let now = unix_now();
        let set = self.current.load();
        let files = set.certs.iter().zip(&self.files);
        let lines = files.filter_map(|(c, f)| {
            let why = c.invalid_at(now)?;
            Some(format!("{}.cert ({}): {why}", c.key_path, f.cert.display()))
        });
        lines.collect()
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<CertSet>> {
        self.current.load()
    }

    /// Re-reads every file when `force` (SIGHUP), or when one changed since the last attempt
    /// and has not changed again since the previous call (a deploy that replaces a
    /// certificate and then its key is read once both are in place). All or nothing: a bad
    /// file keeps the whole set in force. Returns `None` when nothing was attempted.
    pub fn reload(&self, force: bool) -> Option<Result<(), TlsError>> {
        let now = Self::stamps_of(&self.files);
        {
            let mut guard = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            let (last, pending, retry) = &mut *guard;
            let due = retry.is_some_and(|t| unix_now() >= t);
            if !force && !due {
                if *last == now {
                    *pending = None;
                    return None;
                }
                if pending.as_ref() != Some(&now) {
                    *pending = Some(now);
                    return None;
                }
            }
            *last = now;
            *pending = None;
            *retry = None;
        }
        let loaded = self
            .files
            .iter()
            .map(load_one)
            .collect::<Result<Vec<_>, _>>();
        // A renewal gone wrong must not replace a good certificate with a stale one: a file
        // now out of its validity, where the one in force is within it, keeps the set.
        let now = unix_now();
        let loaded = loaded.and_then(|certs| {
            let current = self.current.load();
            let mut stale = certs.iter().zip(&current.certs).enumerate();
            let stale = stale.find_map(|(i, (new, old))| {
                let why = new.invalid_at(now)?;
                old.invalid_at(now).is_none().then_some((i, why))
            });
            match stale {
                None => Ok(certs),
                Some((i, why)) => {
                    // Not valid yet: read again when it is (a good renewal for a clock a
                    // little ahead of this host's).
                    let valid_from = certs[i].not_before;
                    if now < valid_from {
                        let mut guard = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
                        guard.2 = Some(valid_from);
                    }
                    Err(file_err(
                        &certs[i].key_path,
                        "cert",
                        &self.files[i].cert,
                        format!("{why}, while the certificate in force is valid: not replaced"),
                    ))
                }
            }
        });
        Some(match loaded {
            Ok(certs) => {
                self.current
                    .store(Arc::new(CertSet::new(certs, self.default)));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        })
    }
}

/// What rustls asks for the certificate of each handshake: the listener's certificates, and
/// the suites its versions allow (to tell which of two certificates for one name a client can
/// use, [`CertSet::choose`]).
pub struct SniResolver {
    pub store: Arc<CertStore>,
    pub suites: Vec<rustls::SupportedCipherSuite>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.store.current.load();
        let (list, _) = set.candidates(hello.server_name());
        let (schemes, suites) = (hello.signature_schemes(), hello.cipher_suites());
        let i = set.choose(list, &self.suites, schemes, suites);
        set.certs.get(i).map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&[&str]]) -> CertSet {
        let key = super::super::provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(
                rcgen::KeyPair::generate().unwrap().serialize_der().into(),
            ))
            .unwrap();
        let certs = names
            .iter()
            .map(|ns| LoadedCert {
                key: Arc::new(CertifiedKey::new(vec![], key.clone())),
                names: ns.iter().map(|n| n.to_string()).collect(),
                not_after: 0,
                not_before: 0,
                key_path: String::new(),
            })
            .collect::<Vec<_>>();
        CertSet::new(certs, 0)
    }

    /// The first candidate, as a handshake offering every scheme gets it.
    fn lookup(s: &CertSet, sni: Option<&str>) -> (usize, bool) {
        let (list, matched) = s.candidates(sni);
        (list[0], matched)
    }

    #[test]
    fn sni_exact_beats_wildcard_and_wildcard_covers_one_label() {
        let s = set(&[&["a.test"], &["*.wild.test"], &["x.wild.test"]]);
        assert_eq!(lookup(&s, Some("a.test")), (0, true));
        assert_eq!(lookup(&s, Some("A.Test.")), (0, true));
        assert_eq!(lookup(&s, Some("y.wild.test")), (1, true));
        assert_eq!(lookup(&s, Some("x.wild.test")), (2, true));
        assert_eq!(lookup(&s, Some("b.y.wild.test")), (0, false));
        assert_eq!(lookup(&s, Some("wild.test")), (0, false));
        assert_eq!(lookup(&s, Some("other.test")), (0, false));
        assert_eq!(lookup(&s, None), (0, true));
    }

    /// An ECDSA and an RSA certificate for one name, in that order: a client that offers
    /// only RSA schemes gets the RSA one, any other the first; the default carries its
    /// partner along for clients without SNI.
    #[test]
    fn a_name_with_two_key_types_serves_the_one_the_client_can_verify() {
        use rustls::SignatureScheme as S;
        let load = |alg: &'static rcgen::SignatureAlgorithm| {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            super::super::provider()
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(pair.serialize_der().into()))
                .unwrap()
        };
        let cert = |key, names: &[&str]| LoadedCert {
            key: Arc::new(CertifiedKey::new(vec![], key)),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: 0,
            not_before: 0,
            key_path: String::new(),
        };
        let (ec, rsa) = (
            load(&rcgen::PKCS_ECDSA_P256_SHA256),
            load(&rcgen::PKCS_RSA_SHA256),
        );
        let s = CertSet::new(
            vec![
                cert(ec.clone(), &["a.test"]),
                cert(rsa, &["a.test", "b.test"]),
                cert(ec, &["c.test"]),
            ],
            0,
        );
        let rsa_only = [S::RSA_PSS_SHA256, S::RSA_PKCS1_SHA256];
        let both = [
            S::ECDSA_NISTP256_SHA256,
            S::RSA_PSS_SHA256,
            S::RSA_PKCS1_SHA256,
        ];
        let tls13 = [rustls::CipherSuite::TLS13_AES_128_GCM_SHA256];
        let all = super::super::provider().cipher_suites;
        let pick = |sni, offered: &[S]| s.choose(s.candidates(sni).0, &all, offered, &tls13);
        assert_eq!(pick(Some("a.test"), &both), 0);
        assert_eq!(pick(Some("a.test"), &rsa_only), 1);
        assert_eq!(pick(Some("a.test"), &[S::ECDSA_NISTP256_SHA256]), 0);
        assert_eq!(
            pick(None, &rsa_only),
            1,
            "the default's partner, without SNI"
        );
        assert_eq!(
            pick(Some("c.test"), &rsa_only),
            2,
            "no partner: the handshake fails there"
        );
        assert_eq!(pick(Some("b.test"), &both), 1);
        // TLS 1.2: the suite names the key type too. An old client offering only ECDHE_RSA
        // suites gets the RSA certificate though it could verify ECDSA signatures.
        let rsa_suite = [rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256];
        let a = s.candidates(Some("a.test")).0;
        assert_eq!(s.choose(a, &all, &both, &rsa_suite), 1);
        let ec_suite = [rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256];
        assert_eq!(s.choose(a, &all, &both, &ec_suite), 0);
        // A TLS 1.2-only listener: the TLS 1.3 suites a client offers beside ECDHE-RSA ones
        // will not be used, so they make no certificate usable.
        let tls12 = all
            .iter()
            .filter(|k| matches!(k, rustls::SupportedCipherSuite::Tls12(_)));
        let tls12 = tls12.copied().collect::<Vec<_>>();
        let mixed = [tls13[0], rsa_suite[0]];
        assert_eq!(s.choose(a, &all, &both, &mixed), 0);
        assert_eq!(s.choose(a, &tls12, &both, &mixed), 1);
    }
}
