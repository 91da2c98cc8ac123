//! Certificates out of their validity (expired, or not valid yet): loaded and served as
//! nginx does, but said at start and by `check`; and a renewal gone wrong (an expired file
//! put in place of a valid one) is not swapped in by the file watcher. Both engines.

use crate::support::tls::{tls_get, tls_listener, CertDir, Leaf, TestCa};
use crate::support::*;
use std::sync::Arc;
use std::time::Duration;

fn write_leaf(dir: &CertDir, name: &str, leaf: &Leaf) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.write(&format!("{name}.pem"), &leaf.cert_pem),
        dir.write(&format!("{name}.key"), &leaf.key_pem),
    )
}

both_engines! {
    fn an_expired_certificate_is_served_with_a_warning_at_start_and_from_check(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("expired");
        let (cert, key) = write_leaf(&dir, "a", &ca.leaf_dated(&["a.test"], (2020, 1, 1), (2021, 1, 1)));
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .start(engine);
        let said = format!("listener[0].tls.certificates[0].cert ({}): expired at 2021-01-01T00:00:00Z", cert.display());
        proxy.wait_for_output(&said, 1, Duration::from_secs(10));
        let (code, out) = check_file(proxy.config_path());
        assert_eq!(code, Some(0), "{out}");
        let warned = format!("certificate clients will refuse: {said}");
        assert_eq!(out.matches(&warned).count(), 1, "{out}");
        // Served all the same: a client that does not check dates gets it.
        let mut cfg = ca.client_config();
        cfg.dangerous().set_certificate_verifier(Arc::new(NoCheck));
        let seen = tls_get(proxy.addr(), &Arc::new(cfg), "a.test", "/").unwrap();
        assert!(seen.response.starts_with("HTTP/1.1 200"), "{}", seen.response);
    }

    fn an_expired_renewal_does_not_replace_a_valid_certificate(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("expired-renewal");
        let valid = ca.leaf(&["a.test"]);
        let (cert, key) = write_leaf(&dir, "a", &valid);
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .admin("")
            .start(engine);
        let fresh = || Arc::new(ca.client_config());
        write_leaf(&dir, "a", &ca.leaf_dated(&["a.test"], (2020, 1, 1), (2021, 1, 1)));
        proxy.wait_for_output("while the certificate in force is valid: not replaced", 1, Duration::from_secs(10));
        let seen = tls_get(proxy.addr(), &fresh(), "a.test", "/").unwrap();
        assert!(seen.leaf == valid.der, "the valid certificate stays in force");
        let m = scrape(proxy.admin_addr(), None);
        let reloads = |result| m.value("edgeshard_tls_certificate_reloads_total", &[("listener", "listener[0].tls"), ("result", result)]);
        assert_eq!((reloads("ok"), reloads("failed")), (0.0, 1.0));
        // A good renewal after it is swapped in.
        let renewed = ca.leaf(&["a.test"]);
        write_leaf(&dir, "a", &renewed);
        proxy.wait_for_output("certificates reloaded", 1, Duration::from_secs(10));
        assert!(tls_get(proxy.addr(), &fresh(), "a.test", "/").unwrap().leaf == renewed.der);
    }

    // A renewal not valid yet (issued by a clock ahead of this host's) is refused while it
    // is not, and taken once it is, though its files do not change again.
    fn a_renewal_not_valid_yet_is_taken_once_it_is(engine) {
        let ca = TestCa::new("test ca");
        let dir = CertDir::new("early-renewal");
        let valid = ca.leaf(&["a.test"]);
        let (cert, key) = write_leaf(&dir, "a", &valid);
        let origin = Origin::start("origin");
        let proxy = Config::single(origin.addr())
            .only_listener(&tls_listener(&[(&cert, &key)], ""))
            .start(engine);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let early = ca.leaf_valid_from(&["a.test"], now + 3);
        write_leaf(&dir, "a", &early);
        proxy.wait_for_output("not valid before", 1, Duration::from_secs(10));
        proxy.wait_for_output("certificates reloaded", 1, Duration::from_secs(15));
        let seen = tls_get(proxy.addr(), &Arc::new(ca.client_config()), "a.test", "/").unwrap();
        assert!(seen.leaf == early.der, "the renewal is in force once valid");
    }
}

/// A verifier that accepts any certificate (to reach a server whose certificate expired).
#[derive(Debug)]
struct NoCheck;

impl rustls::client::danger::ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
