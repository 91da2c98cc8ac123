//! Which request fields belong to the proxy, for stage 6 (*forward*: the upstream head,
//! [`super::encode`]) and the response cache (a `Vary` on such a field cannot be keyed): names
//! compared the way the backends behind it compare them.

use super::parse::HeaderKind;

/// Whether two names are one field to a backend that reads `_` as `-` (CGI and WSGI
/// environments, Puma before 6.4.3): ASCII case and `_`/`-` ignored. A client's `X_Request_Id`
/// or `X_Client_Subject` is then the proxy's field, and goes with it.
#[inline]
pub fn same_field(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// `Forwarded` (RFC 7239), `X-Forwarded-*` and the like (`X-Real-IP`, `True-Client-IP`, ...,
/// any spelled with `_`): what a proxy tells a backend about the client's request.
/// Believed only from a trusted proxy: from anyone else they are claims a backend may act on
/// (build links from `Forwarded: host=`, a port from `X-Forwarded-Port`), and with a cache in
/// front, poison every client's copy.
pub fn forwarding_claim(name: &[u8]) -> bool {
    const X: &[u8] = b"x-forwarded-";
    // The other names proxies and CDNs give the client's address, the URL overrides some
    // servers route by (IIS URL Rewrite, older Symfony and Zend: `X-Original-URL: /admin`),
    // the host overrides some build links from (`X-Host`, IIS ARR's `X-Original-Host`), and
    // the scheme and prefix claims others do (the widely copied Flask "ReverseProxied"
    // recipe reads `X-Scheme` and `X-Script-Name`; IIS and OWA `Front-End-Https: on`).
    const CLAIMS: [&[u8]; 10] = [
        b"forwarded",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-host",
        b"x-original-host",
        b"x-http-host-override",
        b"x-scheme",
        b"x-url-scheme",
        b"front-end-https",
        b"x-script-name",
    ];
    (name.len() > X.len() && same_field(&name[..X.len()], X))
        || CLAIMS.iter().any(|c| same_field(name, c))
        || client_address_claim(name)
}

/// The forwarding claims that name the client's address (besides `X-Forwarded-For`), as
/// proxies and CDNs send them, and as "client IP" code reads them (PHP's `HTTP_CLIENT_IP`
/// and `HTTP_X_FORWARDED` are the usual first choices).
pub fn client_address_claim(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 16] = [
        b"x-real-ip",
        b"x-original-forwarded-for",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"cf-connecting-ipv6",
        b"fastly-client-ip",
        b"client-ip",
        b"x-forwarded",
        b"forwarded-for",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"x-proxyuser-ip",
        b"x-envoy-external-address",
    ];
    NAMES.iter().any(|n| same_field(name, n))
}

/// A method override (`X-HTTP-Method-Override: DELETE` on a GET): frameworks that honour one
/// answer another method than the request line's. Relayed (clients that cannot send PATCH
/// rely on them), but such a request is neither answered from nor stored in the cache: its
/// answer is not the GET's.
pub fn method_override(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 3] = [
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    ];
    NAMES.iter().any(|n| same_field(name, n))
}

/// Fields never forwarded, whoever sent them: `Proxy` (httpoxy: CGI turns it into
/// `HTTP_PROXY`, which HTTP client libraries take as their proxy). `Proxy-Authorization` is
/// relayed: not hop-by-hop (RFC 9110 §7.6.1), it is for the first inbound proxy that asks for
/// it (§11.7.2), which may be behind this one.
pub fn never_forwarded(name: &[u8]) -> bool {
    same_field(name, b"proxy")
}

/// A field the backend never gets from the client as the client sent it: one the parser gives
/// a meaning ([`HeaderKind`]: framing, hop-by-hop, `Host`, `Expect`, `X-Forwarded-*`), a
/// [`forwarding_claim`], `Proxy`, or one the proxy writes itself (`Via`, the request id).
pub fn written_by_proxy(name: &[u8]) -> bool {
    HeaderKind::classify(name) != HeaderKind::Other
        || forwarding_claim(name)
        || never_forwarded(name)
        || same_field(name, b"via")
        || same_field(name, b"x-request-id")
}

/// The members of a comma-separated field value (RFC 9110 §5.6.1), untrimmed: a comma inside
/// a quoted string (§5.6.4: `ext="a,b"`, the entity-tag `"x,y"`) is part of its member, and a
/// backslash in one quotes the next byte. An unterminated quote runs to the end.
pub fn list_members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let v = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in v.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    rest = Some(&v[i + 1..]);
                    return Some(&v[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(v)
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn list_members_keep_quoted_commas() {
        let split = |v: &[u8]| list_members(v).map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(split(b"a, b,c"), [&b"a"[..], b" b", b"c"]);
        assert_eq!(
            split(br#"max-age=0, ext="a,s-maxage=600,b""#),
            [&b"max-age=0"[..], br#" ext="a,s-maxage=600,b""#]
        );
        assert_eq!(split(br#""x\",y", z"#), [&br#""x\",y""#[..], b" z"]);
        assert_eq!(split(b""), [&b""[..]]);
        assert_eq!(split(b"a,"), [&b"a"[..], b""]);
        assert_eq!(
            split(br#""open, to the end"#),
            [&br#""open, to the end"#[..]]
        );
    }
    use super::*;

    #[test]
    fn the_proxys_fields_in_any_spelling() {
        for name in [
            &b"Connection"[..],
            b"Host",
            b"content_length",
            b"TE",
            b"X-Forwarded-Port",
            b"X_Forwarded_For",
            b"X-Real-IP",
            b"Proxy",
            b"via",
            b"X_Request_Id",
            b"X-Host",
            b"x_original_host",
        ] {
            assert!(written_by_proxy(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [
            &b"Accept-Language"[..],
            b"Proxy-Authorization",
            b"Cookie",
            b"X-Forwarded-",
        ] {
            assert!(!written_by_proxy(name), "{}", String::from_utf8_lossy(name));
        }
        // The other client-address claims "client IP" code reads.
        for name in [
            &b"Client-IP"[..],
            b"X_Forwarded",
            b"x-envoy-external-address",
        ] {
            assert!(forwarding_claim(name), "{}", String::from_utf8_lossy(name));
        }
        assert!(same_field(b"X_Client_Subject", b"x-client-subject"));
        assert!(method_override(b"X_HTTP_Method_Override") && method_override(b"x-http-method"));
        assert!(!method_override(b"X-Method"));
        assert!(!same_field(b"X-Client-Subject", b"x-client-subjec"));
    }
}
