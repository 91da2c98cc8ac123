//! Stage 3½, *admit* by rate: what a `rate_limit` counts a request by. A limit is only as
//! good as its key's agreement with the backend: a key the backend reads as `victim` but the
//! limiter reads as something else (or as absent, which is not limited) is a way past the
//! limit. So where [`crate::balance::key`] reads one value as nginx would (for hashing,
//! where a mismatch costs nothing), a limit reads **every value a backend may read** and the
//! request counts against each ([`crate::ratelimit::check`]):
//!
//! - `header:NAME`: every field line of that name, in any case and with `_` for `-` (what a
//!   CGI or WSGI backend reads as the same variable); empty lines are skipped.
//! - `cookie:NAME`: every pair of that name (any case) in every `Cookie` line, split at `;`
//!   and at `,` (RFC 6265 parsers split at `;` only, nginx at both: both readings count),
//!   with surrounding quotes taken off the value; the value as sent and percent-decoded
//!   (PHP's `$_COOKIE`, Express's cookie-parser decode it), names decoded too.
//! - `query:NAME`: every argument of that name, arguments split at `&` and `;`, names and
//!   values percent-decoded (`+` is a space) and names compared in any case.
//!
//! A name also matches as PHP reads it: `.` and space in it read as `_` (`api.key=` is
//! `$_GET['api_key']`).
//!
//! Counting one request against several buckets is stricter than any backend's reading,
//! never looser; a request that repeats its key is unusual.

use std::borrow::Cow;

use crate::balance::key::{key_bytes, IpText, KeySource};
use crate::balance::HashKey;
use crate::http::fields::same_field;

/// The most distinct values one request may carry for a limit's key: each costs a bucket's
/// take, and a query of 8 KiB holds ~700 (1.1-1.6 ms of the shard per request, probe6-b).
pub const MAX_VALUES: usize = 16;

/// A request with more than [`MAX_VALUES`] distinct values for a limit's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany;

/// Calls `each` with every value `key` counts `src` by, each once: never when the request
/// has none (it is then not limited). `ip` holds the client address's text for `client_ip`.
/// Keys with one reading (`client_ip`, `path`, `uri`) collect nothing: no allocation on the
/// common path. `Err(TooMany)`, with `each` never called, when the request carries more than
/// [`MAX_VALUES`] distinct values (counting only some would let decoys in front of the real
/// one through).
pub fn for_each_value<'a, H>(
    key: &HashKey,
    src: KeySource<'a, H>,
    ip: &mut IpText,
    mut each: impl FnMut(&[u8]),
) -> Result<(), TooMany>
where
    H: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut out: Vec<Cow<'a, [u8]>> = Vec::new();
    let mut over = false;
    let mut add = |v: Cow<'a, [u8]>| {
        if !v.is_empty() && !over && !out.contains(&v) {
            over = out.len() == MAX_VALUES;
            out.push(v);
        }
    };
    match key {
        HashKey::Header(name) => {
            for (n, v) in src.headers {
                if same_field(n, name.as_bytes()) {
                    add(Cow::Borrowed(v.trim_ascii()));
                }
            }
        }
        HashKey::Cookie(name) => {
            let name = name.as_bytes();
            for (_, line) in src
                .headers
                .into_iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
            {
                for pair in line.split(|&b| b == b';' || b == b',') {
                    let Some((n, v)) = split_pair(pair) else {
                        continue;
                    };
                    if names(&decode(n.trim_ascii(), false), name) {
                        let v = v.trim_ascii();
                        let v = v
                            .strip_prefix(b"\"")
                            .and_then(|v| v.strip_suffix(b"\""))
                            .unwrap_or(v);
                        add(decode(v, false));
                        add(Cow::Borrowed(v));
                    }
                }
            }
        }
        HashKey::Query(name) => {
            let query = src
                .target
                .iter()
                .position(|&b| b == b'?')
                .map_or(&b""[..], |q| &src.target[q + 1..]);
            for arg in query.split(|&b| b == b'&' || b == b';') {
                let Some((n, v)) = split_pair(arg) else {
                    continue;
                };
                if names(&decode(n, true), name.as_bytes()) {
                    add(decode(v, true));
                }
            }
        }
        // One value, as hashing reads it (`path` and `uri` are normalised by the caller).
        _ => {
            if let Some(v) = key_bytes(key, src, ip) {
                each(v);
            }
            return Ok(());
        }
    }
    if out.len() > MAX_VALUES {
        return Err(TooMany);
    }
    for v in &out {
        each(v);
    }
    Ok(())
}

/// `name=value` split at its first `=`; `None` without one.
fn split_pair(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == b'=')?;
    Some((&s[..i], &s[i + 1..]))
}

/// Whether `sent`, a decoded argument or cookie name, names the key's `name` (any case) for
/// some backend: as it is, or as PHP reads it (`php_register_variable_ex`): leading spaces
/// dropped, `.`, space and an unclosed `[` as `_`.
fn names(sent: &[u8], name: &[u8]) -> bool {
    let php = |b: u8| {
        if matches!(b, b'.' | b' ' | b'[') {
            b'_'
        } else {
            b
        }
    };
    if sent.eq_ignore_ascii_case(name) {
        return true;
    }
    let sent = &sent[sent.iter().take_while(|&&b| b == b' ').count()..];
    sent.len() == name.len()
        && sent
            .iter()
            .zip(name)
            .all(|(&s, &n)| php(s).eq_ignore_ascii_case(&n))
}

/// `s` percent-decoded, with `plus` `+` as a space (a form-encoded query; a cookie keeps
/// it); a broken escape stays as it is. Borrowed when there is nothing to decode.
fn decode(s: &[u8], plus: bool) -> Cow<'_, [u8]> {
    if !s.iter().any(|&b| b == b'%' || (plus && b == b'+')) {
        return Cow::Borrowed(s);
    }
    let hex = |b: u8| crate::route::hex(b);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => match (
                s.get(i + 1).and_then(|&b| hex(b)),
                s.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(key: HashKey, target: &str, headers: &[(&str, &str)]) -> Vec<String> {
        let mut ip = IpText::default();
        let src = KeySource {
            client_ip: "192.0.2.7".parse().unwrap(),
            target: target.as_bytes(),
            headers: headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        };
        let mut got = Vec::new();
        let r = for_each_value(&key, src, &mut ip, |v| {
            got.push(String::from_utf8_lossy(v).into_owned())
        });
        if r.is_err() {
            assert!(got.is_empty());
            return vec!["too many".into()];
        }
        got
    }

    #[test]
    fn more_than_max_values_are_refused_whole() {
        let query = |n: usize| {
            (0..n)
                .map(|i| format!("key={i}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let q = |n| {
            values(
                HashKey::Query("key".into()),
                &format!("/p?{}", query(n)),
                &[],
            )
        };
        assert_eq!(q(MAX_VALUES).len(), MAX_VALUES);
        assert_eq!(q(MAX_VALUES + 1), ["too many"]);
        assert_eq!(q(700), ["too many"]);
        // Repeats of one value are one value.
        let same = vec!["key=v"; 100].join("&");
        assert_eq!(
            values(HashKey::Query("key".into()), &format!("/p?{same}"), &[]),
            ["v"]
        );
    }

    #[test]
    fn every_value_a_backend_may_read_is_counted() {
        let q = |t| values(HashKey::Query("key".into()), t, &[]);
        assert_eq!(q("/p?k%65y=victim"), ["victim"]);
        assert_eq!(q("/p?KEY=decoy&key=victim"), ["decoy", "victim"]);
        assert_eq!(q("/p?key=&key=victim"), ["victim"]);
        assert_eq!(q("/p?key=%76ictim&key=victim"), ["victim"]);
        assert_eq!(q("/p?a=1;key=victim"), ["victim"]);
        assert_eq!(q("/p?key=a+b"), ["a b"]);
        assert_eq!(q("/p?key=%zz"), ["%zz"]);
        assert!(q("/p?keys=1&key").is_empty());
        let c = |h: &[(&str, &str)]| values(HashKey::Cookie("sid".into()), "/", h);
        assert_eq!(
            c(&[("Cookie", "SID=decoy; sid=victim")]),
            ["decoy", "victim"]
        );
        assert_eq!(
            c(&[("Cookie", "x=1,sid=decoy; sid=victim")]),
            ["decoy", "victim"]
        );
        assert_eq!(c(&[("Cookie", "sid=; sid=victim")]), ["victim"]);
        assert_eq!(c(&[("Cookie", "sid=\"victim\"")]), ["victim"]);
        assert_eq!(
            c(&[("Cookie", "sid=decoy"), ("cookie", "sid=victim")]),
            ["decoy", "victim"]
        );
        // Cookie values as PHP and Express read them (percent-decoded, `+` kept), and the
        // name too.
        assert_eq!(c(&[("Cookie", "sid=%76ictim")]), ["victim", "%76ictim"]);
        assert_eq!(c(&[("Cookie", "s%69d=a+b")]), ["a+b"]);
        // Names as PHP reads them: `.` and space as `_`.
        let php = |k: HashKey, t: &str, h: &[(&str, &str)]| values(k, t, h);
        assert_eq!(
            php(HashKey::Query("api_key".into()), "/p?api.key=victim", &[]),
            ["victim"]
        );
        assert_eq!(
            php(HashKey::Query("api_key".into()), "/p?api+key=victim", &[]),
            ["victim"]
        );
        assert_eq!(
            php(
                HashKey::Cookie("s_id".into()),
                "/",
                &[("Cookie", "s.id=victim")]
            ),
            ["victim"]
        );
        assert!(php(HashKey::Query("api.key".into()), "/p?api_key=v", &[]).is_empty());
        // Leading spaces dropped, an unclosed `[` read as `_`.
        for t in [
            "/p?%20api_key=victim",
            "/p?+api_key=victim",
            "/p?api[key=victim",
        ] {
            assert_eq!(
                php(HashKey::Query("api_key".into()), t, &[]),
                ["victim"],
                "{t}"
            );
        }
        assert_eq!(
            php(
                HashKey::Cookie("s_id".into()),
                "/",
                &[("Cookie", "s[id=victim")]
            ),
            ["victim"]
        );
        let h = |h: &[(&str, &str)]| values(HashKey::Header("X-Api-Key".into()), "/", h);
        assert_eq!(h(&[("X_Api_Key", "victim")]), ["victim"]);
        assert_eq!(
            h(&[("X-Api-Key", ""), ("x-api-key", " victim ")]),
            ["victim"]
        );
        assert_eq!(
            h(&[("X-Api-Key", "decoy"), ("X-Api-Key", "victim")]),
            ["decoy", "victim"]
        );
        assert!(h(&[("X-Api-Keys", "v")]).is_empty());
        assert_eq!(values(HashKey::ClientIp, "/", &[]), ["192.0.2.7"]);
        assert_eq!(values(HashKey::Path, "/a/b?x", &[]), ["/a/b"]);
    }
}
