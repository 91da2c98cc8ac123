//! TLS, counters: what each shard counts about its handshakes (plain `Cell`s, like
//! [`crate::stats`]), the [`TlsSnap`] copy the admin thread merges, and its Prometheus
//! families. Certificate expiry and reload counts are process-wide and rendered from the
//! [`super::TlsListeners`] themselves.

use std::cell::Cell;
use std::fmt::Write;

use crate::stats::bump;

/// Why a handshake failed (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not finished within `handshake_timeout`.
    Timeout,
    /// The client closed the connection.
    Eof,
    /// A socket error.
    Io,
    /// No version, suite, group, ALPN protocol or certificate in common.
    Incompatible,
    /// The client aborted with an alert (for example, it rejected our certificate).
    AlertReceived,
    /// mTLS: no client certificate, or one that does not verify.
    ClientCertificate,
    /// Anything else the peer got wrong.
    Protocol,
    /// Ended to make room: `max_handshakes` were running on the shard when a new connection
    /// came, and this was the oldest ([`super::Running`]).
    Overload,
}

impl Failure {
    pub const ALL: [Failure; 8] = [
        Failure::Timeout,
        Failure::Eof,
        Failure::Io,
        Failure::Incompatible,
        Failure::AlertReceived,
        Failure::ClientCertificate,
        Failure::Protocol,
        Failure::Overload,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Eof => "eof",
            Failure::Io => "io",
            Failure::Incompatible => "incompatible",
            Failure::AlertReceived => "alert_received",
            Failure::ClientCertificate => "client_certificate",
            Failure::Protocol => "protocol",
            Failure::Overload => "overload",
        }
    }
}

/// One shard's TLS counters.
#[derive(Debug)]
pub struct TlsStats {
    pub full: Cell<u64>,
    pub resumed: Cell<u64>,
    pub failed: [Cell<u64>; Failure::ALL.len()],
    /// Completed handshakes by version: TLS 1.2, TLS 1.3.
    pub versions: [Cell<u64>; 2],
    /// Completed handshakes by suite, indexed like [`super::suites`].
    pub suites: Box<[Cell<u64>]>,
    /// Clients whose SNI named no certificate (they got the default).
    pub sni_miss: Cell<u64>,
    /// Handshakes running now (a gauge).
    pub in_progress: Cell<u64>,
}

impl Default for TlsStats {
    fn default() -> Self {
        TlsStats {
            full: Cell::new(0),
            resumed: Cell::new(0),
            failed: Default::default(),
            versions: Default::default(),
            suites: super::suites().iter().map(|_| Cell::new(0)).collect(),
            sni_miss: Cell::new(0),
            in_progress: Cell::new(0),
        }
    }
}

impl TlsStats {
    pub fn failed(&self, f: Failure) {
        bump(&self.failed[f as usize]);
    }

    pub fn snapshot(&self) -> TlsSnap {
        TlsSnap {
            full: self.full.get(),
            resumed: self.resumed.get(),
            failed: self.failed.iter().map(Cell::get).collect(),
            versions: [self.versions[0].get(), self.versions[1].get()],
            suites: self.suites.iter().map(Cell::get).collect(),
            sni_miss: self.sni_miss.get(),
            in_progress: self.in_progress.get(),
        }
    }
}

/// A copy of [`TlsStats`].
#[derive(Debug, Clone, Default)]
pub struct TlsSnap {
    pub full: u64,
    pub resumed: u64,
    pub failed: Vec<u64>,
    pub versions: [u64; 2],
    pub suites: Vec<u64>,
    pub sni_miss: u64,
    pub in_progress: u64,
}

impl TlsSnap {
    pub fn merge(&mut self, o: &TlsSnap) {
        fn sum(a: &mut Vec<u64>, b: &[u64]) {
            if a.len() < b.len() {
                a.resize(b.len(), 0);
            }
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self.full += o.full;
        self.resumed += o.resumed;
        sum(&mut self.failed, &o.failed);
        self.versions[0] += o.versions[0];
        self.versions[1] += o.versions[1];
        sum(&mut self.suites, &o.suites);
        self.sni_miss += o.sni_miss;
        self.in_progress += o.in_progress;
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes the TLS families: `all` merged, `per_shard` for the resumed-vs-full split.
pub fn render(o: &mut String, all: &TlsSnap, per_shard: &[Option<&TlsSnap>]) {
    family(
        o,
        "edgeshard_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes by kind (full or resumed with a session ticket).",
    );
    let _ = writeln!(
        o,
        "edgeshard_tls_handshakes_total{{kind=\"full\"}} {}",
        all.full
    );
    let _ = writeln!(
        o,
        "edgeshard_tls_handshakes_total{{kind=\"resumed\"}} {}",
        all.resumed
    );
    family(
        o,
        "edgeshard_shard_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes by kind, per shard.",
    );
    for (i, s) in per_shard.iter().enumerate() {
        if let Some(s) = s {
            let _ = writeln!(
                o,
                "edgeshard_shard_tls_handshakes_total{{shard=\"{i}\",kind=\"full\"}} {}\nedgeshard_shard_tls_handshakes_total{{shard=\"{i}\",kind=\"resumed\"}} {}",
                s.full, s.resumed
            );
        }
    }
    family(
        o,
        "edgeshard_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that did not complete, by reason.",
    );
    for f in Failure::ALL {
        let n = all.failed.get(f as usize).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "edgeshard_tls_handshake_failures_total{{reason=\"{}\"}} {n}",
            f.label()
        );
    }
    family(
        o,
        "edgeshard_tls_handshakes_in_progress",
        "gauge",
        "TLS handshakes running now.",
    );
    let _ = writeln!(
        o,
        "edgeshard_tls_handshakes_in_progress {}",
        all.in_progress
    );
    family(
        o,
        "edgeshard_tls_versions_total",
        "counter",
        "Completed TLS handshakes by protocol version.",
    );
    for (v, n) in ["TLSv1.2", "TLSv1.3"].iter().zip(all.versions) {
        let _ = writeln!(o, "edgeshard_tls_versions_total{{version=\"{v}\"}} {n}");
    }
    family(
        o,
        "edgeshard_tls_cipher_suites_total",
        "counter",
        "Completed TLS handshakes by cipher suite.",
    );
    for (name, n) in super::suites().iter().zip(&all.suites) {
        let _ = writeln!(
            o,
            "edgeshard_tls_cipher_suites_total{{suite=\"{name}\"}} {n}"
        );
    }
    family(
        o,
        "edgeshard_tls_sni_misses_total",
        "counter",
        "TLS clients whose SNI named no configured certificate (they got the default).",
    );
    let _ = writeln!(o, "edgeshard_tls_sni_misses_total {}", all.sni_miss);
}
