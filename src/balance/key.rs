//! Stage "balance", hash keys: what the proxy hashes for `consistent_hash` and `maglev`
//! (`hash_key = ...`), taken from the parsed request without copying, and the hash itself.
//!
//! | `hash_key` | bytes hashed | nginx equivalent |
//! |---|---|---|
//! | `client_ip` | text form of the peer IP (`192.0.2.7`, `2001:db8::1`) | `$remote_addr` |
//! | `header:NAME` | value of the first `NAME` field (trimmed) | `$http_NAME` (nginx joins repeated `Cookie`/`X-Forwarded-For` lines) |
//! | `cookie:NAME` | raw value of cookie `NAME`, from every `Cookie` field | `$cookie_NAME` |
//! | `path` | the **raw** path, up to `?` | `$uri` is decoded and normalised: differs for `%XX`, `//`, `.`/`..` |
//! | `uri` | the raw target, path and query | `$request_uri` |
//! | `query:NAME` | raw value of the first `NAME=` argument, not decoded | `$arg_NAME` |
//!
//! Names match case-insensitively, as in nginx. An absent or empty key gives `None`; the
//! balancer then falls back to weighted round robin, as nginx does for an empty `hash` key.

use std::fmt::Write;
use std::net::IpAddr;

use super::HashKey;

/// CRC-32 (IEEE), the same value as nginx's `ngx_crc32_long`, which it uses for the ring.
#[inline]
pub fn key_hash(key_bytes: &[u8]) -> u32 {
    crc32fast::hash(key_bytes)
}

/// A stack buffer for the text form of an IP address (no allocation).
#[derive(Debug, Clone)]
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    /// Writes `ip` as text (`Display`: dotted quad, or RFC 5952 IPv6) and returns it.
    pub fn format(&mut self, ip: IpAddr) -> &[u8] {
        self.len = 0;
        let _ = write!(self, "{ip}");
        &self.buf[..self.len]
    }
}

impl Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The request fields a hash key may read. `target` is the origin-form target (path and
/// query, as `http::encode::split_target` gives it); `headers` yields (name, value) pairs in
/// request order.
pub struct KeySource<'a, H> {
    pub client_ip: IpAddr,
    pub target: &'a [u8],
    pub headers: H,
}

/// The bytes `key` selects from the request, or `None` when absent or empty. `ip_text` holds
/// the client IP text for `client_ip`.
pub fn key_bytes<'a: 'b, 'b, H>(
    key: &HashKey,
    src: KeySource<'a, H>,
    ip_text: &'b mut IpText,
) -> Option<&'b [u8]>
where
    H: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let bytes = match key {
        HashKey::ClientIp => ip_text.format(src.client_ip),
        HashKey::Header(name) => header_value(src.headers, name.as_bytes())?,
        HashKey::Cookie(name) => cookie_value(src.headers, name.as_bytes())?,
        HashKey::Path => split_query(src.target).0,
        HashKey::Uri => src.target,
        HashKey::Query(name) => query_arg(split_query(src.target).1?, name.as_bytes())?,
    };
    (!bytes.is_empty()).then_some(bytes)
}

/// `key_hash(key_bytes(..))`: the `key` argument of `ShardBalancer::pick`.
pub fn request_key<'a, H>(key: &HashKey, src: KeySource<'a, H>) -> Option<u32>
where
    H: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut ip = IpText::default();
    key_bytes(key, src, &mut ip).map(key_hash)
}

fn split_query(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    }
}

/// First field named `name` (case-insensitive).
pub fn header_value<'a>(
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    name: &[u8],
) -> Option<&'a [u8]> {
    headers
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// nginx's `$arg_NAME`: the first `&`-separated argument whose name equals `name`
/// (case-insensitive) and is followed by `=`; the raw value up to the next `&`.
pub fn query_arg<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|arg| {
        let rest = arg.get(name.len()..)?;
        (arg[..name.len()].eq_ignore_ascii_case(name) && rest.first() == Some(&b'='))
            .then(|| &rest[1..])
    })
}

/// nginx's `$cookie_NAME` (1.22, `ngx_http_parse_multi_header_lines`): in every `Cookie`
/// field, pairs separated by `;` or `,`, leading spaces skipped, the name compared
/// case-insensitively, spaces allowed around `=`; the raw value up to the next `;` or `,`.
pub fn cookie_value<'a>(
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    name: &[u8],
) -> Option<&'a [u8]> {
    headers
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
        .find_map(|(_, v)| {
            v.split(|&b| b == b';' || b == b',').find_map(|pair| {
                let pair = trim_start(pair);
                let rest = pair.get(name.len()..)?;
                if !pair[..name.len()].eq_ignore_ascii_case(name) {
                    return None;
                }
                let rest = trim_start(rest).strip_prefix(b"=")?;
                Some(trim_start(rest))
            })
        })
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src<'a>(
        target: &'a [u8],
        headers: &'a [(&'a [u8], &'a [u8])],
    ) -> KeySource<'a, impl Iterator<Item = (&'a [u8], &'a [u8])>> {
        KeySource {
            client_ip: "2001:db8::7".parse().unwrap(),
            target,
            headers: headers.iter().copied(),
        }
    }

    fn get(key: HashKey, target: &[u8], headers: &[(&[u8], &[u8])]) -> Option<Vec<u8>> {
        let mut ip = IpText::default();
        key_bytes(&key, src(target, headers), &mut ip).map(<[u8]>::to_vec)
    }

    #[test]
    fn crc_is_nginx_crc32() {
        // ngx_crc32_long("123456789") is the standard CRC-32 check value.
        assert_eq!(key_hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(key_hash(b""), 0);
    }

    #[test]
    fn each_key_kind() {
        let h: &[(&[u8], &[u8])] = &[
            (b"Host", b"a.example"),
            (b"X-User", b"alice"),
            (b"Cookie", b"a=1; SID = xyz ; b=2"),
            (b"cookie", b"sid=second"),
            (b"x-user", b"bob"),
        ];
        let t = b"/p/a%20b?x=1&KEY=v%41l&key=2";
        assert_eq!(get(HashKey::ClientIp, t, h).unwrap(), b"2001:db8::7");
        assert_eq!(
            get(HashKey::Header("x-user".into()), t, h).unwrap(),
            b"alice"
        );
        assert_eq!(get(HashKey::Cookie("sid".into()), t, h).unwrap(), b"xyz ");
        assert_eq!(get(HashKey::Cookie("b".into()), t, h).unwrap(), b"2");
        assert_eq!(get(HashKey::Path, t, h).unwrap(), b"/p/a%20b");
        assert_eq!(get(HashKey::Uri, t, h).unwrap(), t.to_vec());
        assert_eq!(get(HashKey::Query("key".into()), t, h).unwrap(), b"v%41l");
        assert_eq!(get(HashKey::Query("x".into()), t, h).unwrap(), b"1");
    }

    #[test]
    fn absent_or_empty_keys_are_none() {
        let h: &[(&[u8], &[u8])] = &[(b"Cookie", b"sidx=1; a=; sid"), (b"X-E", b"")];
        assert_eq!(get(HashKey::Cookie("sid".into()), b"/", h), None);
        assert_eq!(get(HashKey::Cookie("a".into()), b"/", h), None);
        assert_eq!(get(HashKey::Header("x-e".into()), b"/", h), None);
        assert_eq!(get(HashKey::Header("x-none".into()), b"/", h), None);
        assert_eq!(get(HashKey::Query("k".into()), b"/?kk=1&k", h), None);
        assert_eq!(get(HashKey::Query("k".into()), b"/?a=k=1", h), None);
        assert_eq!(get(HashKey::Query("k".into()), b"/", h), None);
        assert_eq!(get(HashKey::Query("k".into()), b"/?k=", h), None);
        assert_eq!(get(HashKey::Path, b"?q", h), None);
    }

    #[test]
    fn ip_text_forms() {
        let mut ip = IpText::default();
        assert_eq!(ip.format("192.0.2.7".parse().unwrap()), b"192.0.2.7");
        let long: IpAddr = "1111:2222:3333:4444:5555:6666:7777:8888".parse().unwrap();
        assert_eq!(ip.format(long), b"1111:2222:3333:4444:5555:6666:7777:8888");
        assert_eq!(
            request_key(&HashKey::ClientIp, src(b"/", &[])),
            Some(key_hash(b"2001:db8::7"))
        );
    }
}
