//! Server-side CPU per TLS handshake with rustls' two crypto providers (aws-lc-rs, ring), for
//! ECDSA P-256 and RSA 2048 certificates, full and resumed (TLS 1.3 tickets). Client and
//! server run in memory in one thread; only the server's processing is timed. Run pinned:
//! `cargo run --release` under `taskset -c 1`. Results: loadtest/results/2026-12-03-vm/tls-provider.md.
use std::sync::Arc;
use std::time::Instant;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, CertificateDer, ServerName};

fn pair(alg: &'static rcgen::SignatureAlgorithm) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    if alg == &rcgen::PKCS_RSA_SHA256 {
        // rcgen cannot make RSA keys with these features: openssl does.
        use rustls::pki_types::pem::PemObject;
        let dir = std::env::temp_dir().join(format!("tlsprov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("rsa.pem"), dir.join("rsa.key"));
        let ok = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=a.test",
                   "-addext", "subjectAltName=DNS:a.test", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
            .arg(&k).arg("-out").arg(&c)
            .stderr(std::process::Stdio::null())
            .status().unwrap().success();
        assert!(ok, "openssl req failed");
        let pair = (CertificateDer::from_pem_file(&c).unwrap(), PrivateKeyDer::from_pem_file(&k).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        return pair;
    }
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    let params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
    let cert = params.self_signed(&kp).unwrap();
    (cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der())))
}

fn run(name: &str, prov: CryptoProvider, cert: &CertificateDer<'static>, key: &PrivateKeyDer<'static>, resume: bool) {
    let prov = Arc::new(prov);
    let mut sc = rustls::ServerConfig::builder_with_provider(prov.clone()).with_safe_default_protocol_versions().unwrap()
        .with_no_client_auth().with_single_cert(vec![cert.clone()], key.clone_key()).unwrap();
    sc.ticketer = if name.starts_with("aws") { rustls::crypto::aws_lc_rs::Ticketer::new().unwrap() } else { rustls::crypto::ring::Ticketer::new().unwrap() };
    let sc = Arc::new(sc);
    let mut roots = rustls::RootCertStore::empty(); roots.add(cert.clone()).unwrap();
    let mut ccfg = rustls::ClientConfig::builder_with_provider(prov).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth(); if !resume { ccfg.resumption = rustls::client::Resumption::disabled(); } let cc = Arc::new(ccfg);
    let n = 2000; let mut server_ns = 0u128; let mut resumed = 0;
    for _ in 0..n {
        let mut c = rustls::ClientConnection::new(cc.clone(), ServerName::try_from("a.test").unwrap()).unwrap();
        let mut s = rustls::ServerConnection::new(sc.clone()).unwrap();
        loop {
            let mut buf = Vec::new();
            while c.wants_write() { c.write_tls(&mut buf).unwrap(); }
            let t = Instant::now();
            let mut rd = &buf[..]; while !rd.is_empty() { s.read_tls(&mut rd).unwrap(); }
            s.process_new_packets().unwrap();
            let mut out = Vec::new(); while s.wants_write() { s.write_tls(&mut out).unwrap(); }
            server_ns += t.elapsed().as_nanos();
            let mut rd = &out[..]; while !rd.is_empty() { c.read_tls(&mut rd).unwrap(); }
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() { break; }
        }
        if s.handshake_kind() == Some(rustls::HandshakeKind::Resumed) { resumed += 1; }
        if !resume { /* fresh client config per connection would drop cache; emulate: */ }
    }
    println!("{name} resume={resume}: server {:.1} us/handshake ({:.0}/s), resumed {resumed}/{n}", server_ns as f64 / n as f64 / 1000.0, 1e9 * n as f64 / server_ns as f64);
}

fn main() {
    for (an, alg) in [("p256", &rcgen::PKCS_ECDSA_P256_SHA256), ("rsa2048", &rcgen::PKCS_RSA_SHA256)] {
        let (cert, key) = pair(alg);
        for r in [false, true] {
        run(&format!("aws-{an}"), rustls::crypto::aws_lc_rs::default_provider(), &cert, &key, r);
        run(&format!("ring-{an}"), rustls::crypto::ring::default_provider(), &cert, &key, r);
        }
    }
}
