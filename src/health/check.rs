//! Feeds stage 4, *balance*: what an active health check is ([`CheckSpec`]: TCP connect or
//! HTTP request, interval, timeout, thresholds, jitter), with validation written for
//! operators, and why a probe failed ([`ProbeFailure`]). The prober ([`super::prober`]) runs
//! the checks; [`super::matcher`] judges an HTTP check's response.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::state::InitialState;

/// The largest response head a check accepts.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most body bytes searched for `body_contains`; a match further in is a failure.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An inclusive range of status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

/// The statuses a check accepts, e.g. `"200-399"` or `"200,204,300-302"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRanges(pub Vec<StatusRange>);

impl Default for StatusRanges {
    /// `200-399`: success and redirects.
    fn default() -> Self {
        StatusRanges(vec![StatusRange { lo: 200, hi: 399 }])
    }
}

impl StatusRanges {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|r| r.lo <= status && status <= r.hi)
    }
}

impl FromStr for StatusRanges {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let code = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!(
                    "`{}` is not a status code (100 to 599) in status ranges `{s}`",
                    t.trim()
                )),
            }
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let range = match part.split_once('-') {
                Some((lo, hi)) => StatusRange {
                    lo: code(lo)?,
                    hi: code(hi)?,
                },
                None => {
                    let c = code(part)?;
                    StatusRange { lo: c, hi: c }
                }
            };
            if range.lo > range.hi {
                return Err(format!(
                    "status range `{}` is empty (it must be low-high) in `{s}`",
                    part.trim()
                ));
            }
            ranges.push(range);
        }
        Ok(StatusRanges(ranges))
    }
}

/// An HTTP check: one request per probe on a fresh connection (`Connection: close`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    /// The `Host` header; `None` sends the backend's address (`ip:port`).
    pub host: Option<String>,
    pub expect: StatusRanges,
    /// If set, the (de-chunked) body must contain these bytes within [`MAX_BODY_BYTES`].
    pub body_contains: Option<Vec<u8>>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        HttpCheck {
            method: "GET".to_owned(),
            path: "/".to_owned(),
            host: None,
            expect: StatusRanges::default(),
            body_contains: None,
        }
    }
}

impl HttpCheck {
    /// Refuses what would make a malformed request or a check that cannot pass.
    pub fn validate(&self) -> Result<(), super::Invalid> {
        use super::Invalid;
        let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        if self.method.is_empty() || !self.method.bytes().all(token) {
            return Err(Invalid::new(
                "method",
                format!("`{}` is not a token", self.method),
            ));
        }
        if !self.path.starts_with('/') || !self.path.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(Invalid::new(
                "path",
                format!(
                    "`{}` must start with / and contain no spaces or control characters",
                    self.path
                ),
            ));
        }
        if let Some(h) = &self.host {
            if !h.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(Invalid::new(
                    "host",
                    format!("`{h}` must contain no spaces or control characters"),
                ));
            }
        }
        if self.body_contains.is_some() && self.method.eq_ignore_ascii_case("HEAD") {
            return Err(Invalid::new(
                "body_contains",
                "cannot be used with method HEAD",
            ));
        }
        Ok(())
    }

    /// The request bytes sent to `backend`.
    pub fn request(&self, backend: SocketAddr) -> Vec<u8> {
        let host = match &self.host {
            Some(h) => h.clone(),
            None => backend.to_string(),
        };
        format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: edgeshard-health\r\n\r\n",
            self.method, self.path
        )
        .into_bytes()
    }
}

/// TCP connect or HTTP request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckKind {
    /// Success = the TCP handshake completes within the timeout.
    #[default]
    Tcp,
    Http(HttpCheck),
}

/// An upstream's active health check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// Time between the end of one probe and the start of the next, before jitter.
    pub interval: Duration,
    /// Bound on one whole probe: connect, send, and read the response.
    pub timeout: Duration,
    /// Consecutive successes that bring an Unhealthy backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
    /// Each interval is scaled by a random factor in `[1 - jitter, 1 + jitter]` (0 to 0.5),
    /// so that probes of many backends do not fire in lock-step.
    pub jitter: f64,
    pub initial: InitialState,
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            jitter: 0.1,
            initial: InitialState::Unknown,
        }
    }
}

impl CheckSpec {
    /// Refuses specs the prober cannot run sensibly. Messages are for operators.
    pub fn validate(&self) -> Result<(), super::Invalid> {
        use super::Invalid;
        if self.interval < Duration::from_millis(10) {
            return Err(Invalid::new("interval", "must be at least 10ms"));
        }
        if self.timeout.is_zero() {
            return Err(Invalid::new("timeout", "must be more than 0"));
        }
        if self.rise == 0 {
            return Err(Invalid::new("rise", "must be at least 1"));
        }
        if self.fall == 0 {
            return Err(Invalid::new("fall", "must be at least 1"));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(Invalid::new(
                "jitter",
                format!("{} must be between 0 and 0.5", self.jitter),
            ));
        }
        match &self.kind {
            CheckKind::Tcp => Ok(()),
            CheckKind::Http(h) => h.validate(),
        }
    }
}

/// Why a probe failed (logged with the transition it causes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    Connect {
        error: std::io::ErrorKind,
    },
    /// No probe could be made: the proxy is out of file descriptors (`EMFILE`, `ENFILE`).
    /// Says nothing about the backend, so it is not counted towards `fall` (as a request's
    /// connect that fails so does not mark the backend failing).
    NoDescriptors,
    Timeout {
        after: Duration,
    },
    Io {
        error: std::io::ErrorKind,
    },
    /// The TLS handshake with a backend of an upstream with `tls` failed.
    Tls {
        error: String,
    },
    /// The backend closed before a complete response head.
    Closed,
    Malformed {
        what: &'static str,
    },
    Status {
        status: u16,
    },
    BodyMismatch,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Connect { error } => write!(f, "connect failed: {error}"),
            ProbeFailure::NoDescriptors => {
                f.write_str("no probe made: the proxy is out of file descriptors")
            }
            ProbeFailure::Timeout { after } => write!(f, "no answer within {after:?}"),
            ProbeFailure::Io { error } => write!(f, "i/o error: {error}"),
            ProbeFailure::Tls { error } => write!(f, "TLS handshake failed: {error}"),
            ProbeFailure::Closed => f.write_str("closed before a complete response head"),
            ProbeFailure::Malformed { what } => write!(f, "malformed response: {what}"),
            ProbeFailure::Status { status } => write!(f, "unexpected status {status}"),
            ProbeFailure::BodyMismatch => f.write_str("body does not contain the expected text"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        let r: StatusRanges = "200-399".parse().unwrap();
        assert!(r.contains(200) && r.contains(399) && !r.contains(400) && !r.contains(199));
        let r: StatusRanges = " 200 , 204, 300 - 302".parse().unwrap();
        assert!(r.contains(204) && r.contains(301) && !r.contains(201));
        for bad in ["", "abc", "99", "600", "300-200", "200-", "-200", "1-2-3"] {
            assert!(bad.parse::<StatusRanges>().is_err(), "{bad}");
        }
        assert_eq!(StatusRanges::default(), "200-399".parse().unwrap());
    }

    #[test]
    fn request_bytes() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut c = HttpCheck::default();
        assert_eq!(
            c.request(addr),
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\nUser-Agent: edgeshard-health\r\n\r\n"
        );
        c.method = "HEAD".into();
        c.path = "/healthz?x=1".into();
        c.host = Some("svc.internal".into());
        assert!(c
            .request(addr)
            .starts_with(b"HEAD /healthz?x=1 HTTP/1.1\r\nHost: svc.internal\r\n"));
    }

    #[test]
    fn validation() {
        assert!(HttpCheck::default().validate().is_ok());
        let bad = [
            HttpCheck {
                method: "G ET".into(),
                ..HttpCheck::default()
            },
            HttpCheck {
                method: String::new(),
                ..HttpCheck::default()
            },
            HttpCheck {
                path: "health".into(),
                ..HttpCheck::default()
            },
            HttpCheck {
                path: "/a b".into(),
                ..HttpCheck::default()
            },
            HttpCheck {
                path: "/a\r\nX: y".into(),
                ..HttpCheck::default()
            },
            HttpCheck {
                host: Some("a\nb".into()),
                ..HttpCheck::default()
            },
            HttpCheck {
                method: "HEAD".into(),
                body_contains: Some(b"ok".to_vec()),
                ..HttpCheck::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let mut spec = CheckSpec::default();
        assert!(spec.validate().is_ok());
        spec.jitter = 0.7;
        assert!(spec.validate().is_err());
        spec = CheckSpec {
            rise: 0,
            ..CheckSpec::default()
        };
        assert!(spec.validate().is_err());
        spec = CheckSpec {
            timeout: Duration::ZERO,
            ..CheckSpec::default()
        };
        assert!(spec.validate().is_err());
        spec = CheckSpec {
            interval: Duration::from_millis(1),
            ..CheckSpec::default()
        };
        assert!(spec.validate().is_err());
    }
}
