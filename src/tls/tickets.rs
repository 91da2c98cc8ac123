//! TLS, session tickets (beside stage 1, *accept*): every listener's tickets are sealed with
//! one key set shared by all shards (so a client resumes on whichever shard it lands on), and
//! each carries its listener's **scope**, the SHA-256 of its client-auth policy (required or
//! not, and the CA certificates trusted). A ticket resumes only where the scope is the same:
//! a session made on a listener without `client_auth` (or with another CA, or with the
//! certificate optional) never resumes on one that requires a certificate, and a reload that
//! changes a listener's CA ends its old sessions (rustls does not check a resumed session
//! against the verifier again).

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::ProducesTickets;
use sha2::{Digest, Sha256};

/// The bytes a ticket's plaintext starts with.
pub type Scope = [u8; 32];

/// The scope of a listener's tickets: `None` without `client_auth`, else whether a
/// certificate is required and the CA certificates trusted.
pub fn scope(client_auth: Option<(bool, &[CertificateDer<'_>])>) -> Scope {
    let mut h = Sha256::new();
    h.update(b"edgeshard ticket scope 1\0");
    match client_auth {
        None => h.update(b"no client auth"),
        Some((required, cas)) => {
            h.update(if required { b"required" } else { b"optional" });
            for ca in cas {
                h.update((ca.len() as u64).to_be_bytes());
                h.update(ca.as_ref());
            }
        }
    }
    h.finalize().into()
}

/// A listener's ticketer: the shared key set, its tickets carrying `scope`.
#[derive(Debug)]
pub struct Scoped {
    inner: Arc<dyn ProducesTickets>,
    scope: Scope,
}

impl Scoped {
    pub fn new(inner: Arc<dyn ProducesTickets>, scope: Scope) -> Scoped {
        Scoped { inner, scope }
    }
}

impl ProducesTickets for Scoped {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut scoped = Vec::with_capacity(self.scope.len() + plain.len());
        scoped.extend_from_slice(&self.scope);
        scoped.extend_from_slice(plain);
        self.inner.encrypt(&scoped)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let mut plain = self.inner.decrypt(cipher)?;
        if plain.get(..self.scope.len()) != Some(&self.scope[..]) {
            return None;
        }
        plain.drain(..self.scope.len());
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_resumes_only_under_its_own_scope() {
        let keys = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        let ca = CertificateDer::from(vec![1u8, 2, 3]);
        let other = CertificateDer::from(vec![1u8, 2, 4]);
        let open = Scoped::new(keys.clone(), scope(None));
        let required = Scoped::new(keys.clone(), scope(Some((true, std::slice::from_ref(&ca)))));
        let optional = Scoped::new(
            keys.clone(),
            scope(Some((false, std::slice::from_ref(&ca)))),
        );
        let other_ca = Scoped::new(keys, scope(Some((true, &[other]))));
        let t = open.encrypt(b"session").unwrap();
        assert_eq!(open.decrypt(&t).as_deref(), Some(&b"session"[..]));
        for (name, s) in [
            ("required", &required),
            ("optional", &optional),
            ("other CA", &other_ca),
        ] {
            assert_eq!(
                s.decrypt(&t),
                None,
                "a ticket without client auth resumed where {name}"
            );
        }
        let t = required.encrypt(b"with a certificate").unwrap();
        assert_eq!(
            required.decrypt(&t).as_deref(),
            Some(&b"with a certificate"[..])
        );
        assert_eq!(other_ca.decrypt(&t), None, "another CA");
        assert_eq!(open.decrypt(&t), None);
        // Garbage and short plaintexts are refused, never a panic.
        assert_eq!(open.decrypt(b""), None);
        assert_eq!(open.decrypt(&[0u8; 200]), None);
    }
}
