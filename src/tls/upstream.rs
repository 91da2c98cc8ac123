//! TLS, the backend side (stage 5, *pool*, when a connection is opened): each upstream with
//! `tls` gets one rustls client configuration, built at start and shared by every shard and
//! by the health prober. [`UpstreamTlsClient::connect`] runs the client handshake on a fresh
//! TCP connection; the result is pooled like a plain connection.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::stream::{self, HandshakeError, TlsStream};
use super::TlsError;
use crate::config::UpstreamTls;

/// How one upstream's backends are spoken to over TLS.
#[derive(Debug)]
pub struct UpstreamTlsClient {
    config: Arc<ClientConfig>,
    /// The configured SNI name; `None`: each backend's IP address.
    sni: Option<ServerName<'static>>,
    /// What it was built from (a reload keeps a health probe going only when these are
    /// unchanged).
    settings: UpstreamTls,
    /// A hash of the CA certificates it trusts as read when it was built (0: the host's
    /// store, or none verified): a reload carries pooled connections only to a client that
    /// trusts the same ([`crate::carry::Carry::pool`]).
    pub ca_hash: u64,
}

impl UpstreamTlsClient {
    pub fn build(t: &UpstreamTls, key_path: &str) -> Result<UpstreamTlsClient, TlsError> {
        let provider = Arc::new(super::provider());
        let mut ca_hash = 0;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup {
                key_path: key_path.to_string(),
                reason: e.to_string(),
            })?;
        let mut config = if !t.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            match &t.ca {
                Some(ca) => {
                    for c in super::certs::read_chain(key_path, "ca", ca)? {
                        ca_hash = {
                            use std::hash::{Hash, Hasher};
                            let mut h = std::collections::hash_map::DefaultHasher::new();
                            (ca_hash, c.as_ref()).hash(&mut h);
                            h.finish()
                        };
                        roots.add(c).map_err(|e| TlsError::File {
                            key_path: key_path.to_string(),
                            field: "ca",
                            file: ca.clone(),
                            reason: format!("not a usable CA certificate: {e}"),
                        })?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                    if roots.is_empty() {
                        return Err(TlsError::Setup {
                            key_path: key_path.to_string(),
                            reason: "no `ca` given and the host's trust store is empty or unreadable (install ca-certificates, or set ca)".into(),
                        });
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let sni = t
            .sni
            .as_deref()
            .map(|n| ServerName::try_from(n.to_string()))
            .transpose()
            .map_err(|e| TlsError::Setup {
                key_path: format!("{key_path}.sni"),
                reason: e.to_string(),
            })?;
        Ok(UpstreamTlsClient {
            config: Arc::new(config),
            sni,
            settings: t.clone(),
            ca_hash,
        })
    }

    /// The `tls` settings it was built from.
    pub fn settings(&self) -> &UpstreamTls {
        &self.settings
    }

    /// The handshake with the backend at `addr` on its fresh connection `tcp`. The caller
    /// bounds it (with what is left of `upstream_connect`).
    pub async fn connect(
        &self,
        tcp: monoio::net::TcpStream,
        addr: SocketAddr,
    ) -> Result<TlsStream, HandshakeError> {
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        stream::connect(tcp, self.config.clone(), name).await
    }
}

/// `verify = false`: every certificate is accepted (signatures are still checked, so the
/// handshake itself is sound; the peer is not authenticated).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
