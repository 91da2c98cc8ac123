//! Stage "balance", sticky sessions: the cookie value naming a backend, and the way back from
//! a value to the backend. A value is 16 lower-case hex digits of a 64-bit hash of the
//! backend's name, so it is the same on every shard and after a restart, and stays valid as
//! long as the backend keeps its name. With the upstream's `sticky.secret` the hash is keyed
//! (SHA-256 of the secret and the name): the value reveals nothing. Without it the hash is a
//! public one, and a backend whose name can be guessed (its address) can be matched to its
//! value by anyone. A value that names no backend of the table (a removed backend, a forged
//! cookie) is simply not found.

use std::fmt::Write;

use super::hash64;

const SEED: u64 = 0x7374_6963_6b79_0001;

#[derive(Debug, Default)]
pub(super) struct Sticky {
    /// Member index → cookie value.
    values: Vec<String>,
    /// (hash, member index), sorted by hash: lookup is a binary search.
    sorted: Vec<(u64, u32)>,
}

impl Sticky {
    pub fn build<'a>(names: impl Iterator<Item = &'a str>, secret: Option<&str>) -> Sticky {
        let mut values = Vec::new();
        let mut sorted = Vec::new();
        for (i, name) in names.enumerate() {
            let h = match secret {
                None => hash64(SEED, name.as_bytes()),
                Some(k) => keyed(k, name),
            };
            let mut v = String::with_capacity(16);
            let _ = write!(v, "{h:016x}");
            values.push(v);
            sorted.push((h, i as u32));
        }
        // Stable: with two members of the same name, the first is the one found.
        sorted.sort_by_key(|&(h, _)| h);
        Sticky { values, sorted }
    }

    pub fn value(&self, i: usize) -> &str {
        self.values.get(i).map_or("", String::as_str)
    }

    pub fn lookup(&self, value: &[u8]) -> Option<usize> {
        let h = parse_hex16(value)?;
        let at = self.sorted.partition_point(|&(x, _)| x < h);
        match self.sorted.get(at) {
            Some(&(x, i)) if x == h => Some(i as usize),
            _ => None,
        }
    }
}

/// The first 8 bytes of SHA-256(len(secret), secret, name): without the secret, a value
/// cannot be matched to a name.
fn keyed(secret: &str, name: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((secret.len() as u64).to_be_bytes());
    h.update(secret.as_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Exactly 16 lower-case hex digits (what `value` writes), else `None`.
fn parse_hex16(v: &[u8]) -> Option<u64> {
    if v.len() != 16 {
        return None;
    }
    let mut h = 0u64;
    for &b in v {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        h = (h << 4) | u64::from(d);
    }
    Some(h)
}

/// Writes the sticky cookie's `Set-Cookie` value: `NAME=VALUE; Max-Age=TTL; Path=/; HttpOnly`
/// (no `Max-Age` for a session cookie, `ttl` None), then `Secure` when `secure` and
/// `SameSite=` when set.
pub(super) fn write_set_cookie(
    (name, value): (&str, &str),
    ttl_secs: Option<u64>,
    secure: bool,
    same_site: Option<SameSite>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    if let Some(mut n) = ttl_secs {
        out.extend_from_slice(b"; Max-Age=");
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
    }
    out.extend_from_slice(b"; Path=/; HttpOnly");
    if secure {
        out.extend_from_slice(b"; Secure");
    }
    if let Some(s) = same_site {
        out.extend_from_slice(b"; SameSite=");
        out.extend_from_slice(s.as_str().as_bytes());
    }
}

/// The sticky cookie's `SameSite` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    /// Sent on cross-site requests too; browsers take it only with `Secure`.
    None,
}

impl SameSite {
    pub fn parse(s: &str) -> Option<SameSite> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Some(SameSite::Strict),
            "lax" => Some(SameSite::Lax),
            "none" => Some(SameSite::None),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parse_is_strict() {
        assert_eq!(parse_hex16(b"00000000000000ff"), Some(255));
        assert_eq!(parse_hex16(b"00000000000000FF"), None);
        assert_eq!(parse_hex16(b"ff"), None);
        assert_eq!(parse_hex16(b"0000000000000g00"), None);
    }

    #[test]
    fn set_cookie_text() {
        let mut out = Vec::new();
        write_set_cookie(
            ("srv", "0123456789abcdef"),
            Some(3600),
            false,
            None,
            &mut out,
        );
        assert_eq!(out, b"srv=0123456789abcdef; Max-Age=3600; Path=/; HttpOnly");
        out.clear();
        write_set_cookie(("s", "v"), Some(0), false, None, &mut out);
        assert_eq!(out, b"s=v; Max-Age=0; Path=/; HttpOnly");
        out.clear();
        write_set_cookie(("s", "v"), None, true, Some(SameSite::Lax), &mut out);
        assert_eq!(out, b"s=v; Path=/; HttpOnly; Secure; SameSite=Lax");
        assert_eq!(SameSite::parse("NONE"), Some(SameSite::None));
        assert_eq!(SameSite::parse("lax "), None);
    }
}
