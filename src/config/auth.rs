//! A route's `auth` (`[route.auth]`): HTTP Basic against an htpasswd file of bcrypt hashes,
//! or forward authentication (ask an auth service). Checked into [`RouteAuth`] here, the
//! users file read and validated with it (at start and on every reload); enforced after
//! routing by [`crate::auth`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{Checker, Size};
use super::UpstreamConfig;

/// Default `auth.basic.cache_ttl`: how long a verified (user, password) is trusted without
/// bcrypt. A password removed from the file stops working at the reload that removes it
/// (the cache is keyed by the stored hash too), whatever this is.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// Default `auth.forward.timeout`: connect, send and the auth service's answer together.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Default `auth.forward.max_body`: the largest auth-service body relayed with a refusal.
pub const FORWARD_MAX_BODY: u64 = 64 * 1024;

/// The largest users file read (a few hundred thousand users).
const MAX_USERS_FILE: u64 = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    basic: Option<RawBasic>,
    forward: Option<RawForward>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    realm: Option<String>,
    users: String,
    cache_ttl: Option<String>,
    forward_authorization: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    upstream: String,
    uri: Option<String>,
    copy_headers: Option<Vec<String>>,
    timeout: Option<String>,
    max_body: Option<Size>,
}

/// How a route authenticates its requests.
#[derive(Clone, Debug)]
pub enum RouteAuth {
    Basic(BasicAuth),
    Forward(ForwardAuth),
}

/// `auth.basic`.
#[derive(Clone, Debug)]
pub struct BasicAuth {
    /// `WWW-Authenticate` value of a 401: `Basic realm="REALM", charset="UTF-8"`.
    pub challenge: Box<[u8]>,
    pub users: Arc<Users>,
    pub cache_ttl: Duration,
    /// `forward_authorization`: send the client's `Authorization` on to the backend
    /// (default: removed).
    pub forward_authorization: bool,
}

/// `auth.forward`.
#[derive(Clone, Debug)]
pub struct ForwardAuth {
    /// Index into [`super::Config::upstreams`]: where the auth service runs.
    pub upstream: usize,
    /// Path (and query) of the check request.
    pub uri: String,
    /// Fields of a 2xx answer copied into the forwarded request (client copies removed).
    pub copy_headers: Vec<String>,
    pub timeout: Duration,
    pub max_body: usize,
}

/// An htpasswd file: user name → bcrypt hash.
pub struct Users {
    pub file: PathBuf,
    by_name: HashMap<Box<[u8]>, Arc<str>>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hashes.
        write!(
            f,
            "Users({}, {} users)",
            self.file.display(),
            self.by_name.len()
        )
    }
}

impl Users {
    /// The stored hash of `user`.
    pub fn hash(&self, user: &[u8]) -> Option<&Arc<str>> {
        self.by_name.get(user)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Reads an htpasswd file: `user:hash` per line, `#` comments and blank lines skipped.
    /// Only bcrypt hashes (`$2y$`, `$2b$`, `$2a$`: `htpasswd -B`) are taken. The error
    /// names the file and the line.
    pub fn parse(text: &str, file: &Path) -> Result<Users, String> {
        let mut by_name = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let at = |what: String| format!("{} line {}: {what}", file.display(), i + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(at("expected user:hash".into()));
            };
            if user.is_empty() {
                return Err(at("empty user name".into()));
            }
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(at(format!(
                    "user {user:?}: not a bcrypt hash; only bcrypt is supported (htpasswd -B writes it: $2y$...)"
                )));
            }
            match hash.parse::<bcrypt::HashParts>() {
                Err(e) => return Err(at(format!("user {user:?}: invalid bcrypt hash ({e})"))),
                // Below 4 bcrypt refuses to verify (a silent lockout); above 16 one check takes
                // seconds to days and two would hold both verifier threads.
                Ok(p) if !(4..=16).contains(&p.get_cost()) => {
                    return Err(at(format!(
                        "user {user:?}: bcrypt cost {} is out of range 4..=16 (htpasswd -B -C 10)",
                        p.get_cost()
                    )))
                }
                Ok(_) => {}
            }
            if by_name
                .insert(user.as_bytes().into(), Arc::from(hash))
                .is_some()
            {
                return Err(at(format!("user {user:?} is listed twice")));
            }
        }
        Ok(Users {
            file: file.to_path_buf(),
            by_name,
        })
    }

    fn load(file: &Path) -> Result<Users, String> {
        let meta =
            std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if meta.len() > MAX_USERS_FILE {
            return Err(format!(
                "{} is larger than {MAX_USERS_FILE} bytes",
                file.display()
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        Users::parse(&text, file)
    }
}

/// Checks `PATH.auth` (`raw`). `base`: the directory a relative users file is under.
pub(super) fn route_auth(
    c: &mut Checker,
    path: &str,
    raw: Option<RawAuth>,
    base: &Path,
    upstreams: &[UpstreamConfig],
) -> Option<RouteAuth> {
    let raw = raw?;
    let path = format!("{path}.auth");
    match (raw.basic, raw.forward) {
        (Some(_), Some(_)) => {
            c.err(&path, "set either basic or forward, not both");
            None
        }
        (None, None) => {
            c.err(&path, "set basic = { ... } or forward = { ... }");
            None
        }
        (Some(b), None) => basic(c, &format!("{path}.basic"), b, base).map(RouteAuth::Basic),
        (None, Some(f)) => {
            forward(c, &format!("{path}.forward"), f, upstreams).map(RouteAuth::Forward)
        }
    }
}

fn basic(c: &mut Checker, path: &str, b: RawBasic, base: &Path) -> Option<BasicAuth> {
    let realm = b.realm.unwrap_or_else(|| "edgeshard".into());
    if realm.is_empty()
        || !realm
            .bytes()
            .all(|x| (0x20..0x7f).contains(&x) && x != b'"' && x != b'\\')
    {
        c.err(
            format!("{path}.realm"),
            format!("invalid realm {realm:?}: use printable ASCII without '\"' or '\\'"),
        );
    }
    let challenge = format!("Basic realm=\"{realm}\", charset=\"UTF-8\"");
    let cache_ttl = c.duration(
        &format!("{path}.cache_ttl"),
        b.cache_ttl.as_ref(),
        CACHE_TTL,
    );
    let file = base.join(&b.users);
    let users = match Users::load(&file) {
        Ok(u) => u,
        Err(e) => {
            c.err(format!("{path}.users"), e);
            return None;
        }
    };
    if users.is_empty() {
        c.err(
            format!("{path}.users"),
            format!("{} lists no user: nobody could get in", file.display()),
        );
    }
    Some(BasicAuth {
        challenge: challenge.into_bytes().into(),
        users: Arc::new(users),
        cache_ttl,
        forward_authorization: b.forward_authorization.unwrap_or(false),
    })
}

fn forward(
    c: &mut Checker,
    path: &str,
    f: RawForward,
    upstreams: &[UpstreamConfig],
) -> Option<ForwardAuth> {
    let upstream = c
        .upstream_named(format!("{path}.upstream"), &f.upstream, upstreams)
        .unwrap_or(0);
    let uri = f.uri.unwrap_or_else(|| "/".into());
    if !uri.starts_with('/') || !uri.bytes().all(|b| b.is_ascii_graphic()) {
        c.err(
            format!("{path}.uri"),
            format!("{uri:?} must start with '/' and hold no spaces or control characters"),
        );
    }
    let mut copy_headers = Vec::new();
    for (i, h) in f.copy_headers.unwrap_or_default().into_iter().enumerate() {
        let lower = h.to_ascii_lowercase();
        if !super::fields::token(&h) {
            c.err(format!("{path}.copy_headers[{i}]"), "invalid header name");
        } else if super::fields::reserved_request_field(&lower) {
            c.err(
                format!("{path}.copy_headers[{i}]"),
                format!(
                    "{h:?} is a framing, hop-by-hop or proxy-written field: it cannot be copied"
                ),
            );
        }
        copy_headers.push(h);
    }
    let timeout = c.duration(
        &format!("{path}.timeout"),
        f.timeout.as_ref(),
        FORWARD_TIMEOUT,
    );
    let max_body = c.size(
        &format!("{path}.max_body"),
        f.max_body.as_ref(),
        FORWARD_MAX_BODY,
        0,
        16 << 20,
    ) as usize;
    Some(ForwardAuth {
        upstream,
        uri,
        copy_headers,
        timeout,
        max_body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_files_name_the_line_and_what_is_wrong() {
        let f = Path::new("users");
        let hash = bcrypt::hash("pw", 4).unwrap();
        let ok = format!(
            "# comment\n\nalice:{hash}\nbob:{}\n",
            hash.replace("$2b$", "$2y$")
        );
        let u = Users::parse(&ok, f).unwrap();
        assert!(
            u.hash(b"alice").is_some() && u.hash(b"bob").is_some() && u.hash(b"carol").is_none()
        );
        assert!(!format!("{u:?}").contains("$2"), "Debug never shows hashes");
        let e = Users::parse(&format!("alice:{hash}\ncarol:$apr1$xyz$abc\n"), f).unwrap_err();
        assert!(
            e.starts_with("users line 2: ") && e.contains("bcrypt"),
            "{e}"
        );
        let e = Users::parse("dave\n", f).unwrap_err();
        assert!(e.contains("line 1") && e.contains("user:hash"), "{e}");
        let e = Users::parse("eve:$2y$05$short\n", f).unwrap_err();
        assert!(e.contains("invalid bcrypt hash"), "{e}");
        let e = Users::parse(&format!("a:{hash}\na:{hash}\n"), f).unwrap_err();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
    }
}
