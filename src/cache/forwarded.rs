//! Stage 5½ of the pipeline, the response *cache*: the URL a key names behind a trusted
//! proxy. From a peer in `server.trusted_proxies` the proxy forwards its `X-Forwarded-Proto`,
//! `X-Forwarded-Host` and the like to the backend (`http::encode`), and the backend builds
//! its answer for that URL (a redirect to https, links to that host): the key must name the
//! same URL, or an answer for `http://shop/` is served to `https://shop/` clients (a redirect
//! loop) and one for another host's links to this host's clients. Claims that change the URL
//! in ways a key cannot name (a path prefix, a URL override) keep the request out of the
//! cache.

use crate::http::fields::{client_address_claim, forwarding_claim, same_field};

/// The scheme and host (with a port when one was claimed) the backend is told the request
/// was for, from a trusted proxy's fields (`https` and `host`: the listener's scheme and the
/// request's own `Host`); `None` when a claim changes the URL in a way the key cannot hold.
/// The first valid `X-Forwarded-Proto` and the first non-empty `X-Forwarded-Host` the
/// proxy forwards, else the `X-Forwarded-Proto` and `X-Forwarded-Host` it writes (the
/// listener's scheme, the request's `Host`); `None` where the first `Forwarded` element's
/// `proto=` or `host=` disagrees with them, or the host is no valid authority; a port from
/// `X-Forwarded-Port` when the host names none. The `Host` the backend gets is keyed beside
/// it ([`super::policy::SENT_HOST`]). The other scheme claims (`X-Scheme` and
/// `X-Forwarded-Scheme`, which ingress-nginx sends on every request, `X-Url-Scheme`,
/// `Front-End-Https: on`, `X-Forwarded-Ssl: on`) must agree
/// with the `X-Forwarded-Proto` the backend gets (the proxy's own when none was sent). Client-address claims (`X-Forwarded-For`, `X-Real-IP`, ...) and
/// `X-Forwarded-Server` do not change the URL.
pub fn origin<'h>(
    https: bool,
    host: &'h [u8],
    fields: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) -> Option<(bool, Vec<u8>)> {
    let (mut proto, mut fwd_host, mut port): (Option<bool>, Option<&[u8]>, Option<&[u8]>) =
        (None, None, None);
    let (mut f_proto, mut f_host): (Option<bool>, Option<&[u8]>) = (None, None);
    let mut forwarded_seen = false;
    // `X-Scheme` and the like: every one must say the same.
    let mut other_proto: Option<bool> = None;
    for (name, value) in fields {
        if !forwarding_claim(name) {
            continue;
        }
        let other = if same_field(name, b"x-scheme")
            || same_field(name, b"x-url-scheme")
            || same_field(name, b"x-forwarded-scheme")
        {
            Some(scheme(value))
        } else if same_field(name, b"front-end-https") || same_field(name, b"x-forwarded-ssl") {
            Some(either(value, b"on", b"off"))
        } else {
            None
        };
        if let Some(s) = other {
            let s = s?;
            if other_proto.is_some_and(|o| o != s) {
                return None;
            }
            other_proto = Some(s);
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            proto = proto.or_else(|| scheme(value));
        } else if name.eq_ignore_ascii_case(b"x-forwarded-host") {
            fwd_host = fwd_host.or(Some(value).filter(|v| !v.is_empty()));
        } else if same_field(name, b"x-forwarded-port") {
            port = port.or(Some(value).filter(|v| valid_port(v)));
        } else if same_field(name, b"forwarded") {
            if !forwarded_seen {
                forwarded_seen = true;
                (f_proto, f_host) = first_element(value);
            }
        } else if !names_the_client(name) {
            return None;
        }
    }
    // What the backend gets in `X-Forwarded-Proto` and `X-Forwarded-Host` (`http::encode`):
    // the front's first valid claims, else the listener's scheme and the request's `Host`.
    let (https, host) = (proto.unwrap_or(https), fwd_host.unwrap_or(host));
    // It gets `Forwarded` and `X-Scheme` and the like beside them: where they disagree,
    // which one it builds from is its own choice, so no key can name the answer. (A
    // `Forwarded: proto=https` alone from a front that sends no `X-Forwarded-Proto` to a
    // plain listener is such a disagreement: the backend is told `http` too.)
    let hosts_differ = f_host.is_some_and(|f| !f.eq_ignore_ascii_case(host));
    let protos_differ =
        f_proto.is_some_and(|f| f != https) || other_proto.is_some_and(|o| o != https);
    if hosts_differ || protos_differ {
        return None;
    }
    // A claimed host that is no authority (`a.example/en`) would move into the key's path.
    if !crate::route::valid_authority(host) {
        return None;
    }
    let mut out = host.to_vec();
    if let Some(p) = port.filter(|_| !has_port(host)) {
        out.push(b':');
        out.extend_from_slice(p);
    }
    Some((https, out))
}

/// `Some(true)` for `yes`, `Some(false)` for `no` (any case), else `None`: a scheme claim's
/// `https` / `http`, `Front-End-Https`'s `on` / `off`.
fn either(v: &[u8], yes: &[u8], no: &[u8]) -> Option<bool> {
    if v.eq_ignore_ascii_case(yes) {
        Some(true)
    } else if v.eq_ignore_ascii_case(no) {
        Some(false)
    } else {
        None
    }
}

/// `http` or `https` (any case), as the proxy forwards it.
fn scheme(v: &[u8]) -> Option<bool> {
    either(v, b"https", b"http")
}

fn valid_port(v: &[u8]) -> bool {
    (1..=5).contains(&v.len()) && v.iter().all(u8::is_ascii_digit)
}

/// Whether an authority names a port (after an IPv6 literal's `]`).
fn has_port(host: &[u8]) -> bool {
    let after = host
        .iter()
        .rposition(|&b| b == b']')
        .map_or(host, |i| &host[i..]);
    after.contains(&b':')
}

/// Claims about who the client is, or which proxy: they do not change the URL.
fn names_the_client(name: &[u8]) -> bool {
    // `_` spellings of the proxy's own fields are never forwarded (`http::encode`).
    const NAMES: [&[u8]; 4] = [
        b"x-forwarded-for",
        b"x-forwarded-server",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ];
    client_address_claim(name) || NAMES.iter().any(|n| same_field(name, n))
}

/// `proto=` and `host=` of a `Forwarded` value's first element (RFC 7239 §4: the one the
/// client-facing proxy added), quoted or not.
fn first_element(v: &[u8]) -> (Option<bool>, Option<&[u8]>) {
    let first = v.split(|&b| b == b',').next().unwrap_or(v);
    let (mut proto, mut host) = (None, None);
    for pair in first.split(|&b| b == b';') {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (k, val) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        let val = val
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(val);
        if k.eq_ignore_ascii_case(b"proto") {
            proto = proto.or_else(|| scheme(val));
        } else if k.eq_ignore_ascii_case(b"host") && !val.is_empty() {
            host = host.or(Some(val));
        }
    }
    (proto, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(fields: &[(&str, &str)]) -> Option<(bool, String)> {
        let it = fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        origin(false, b"shop.example", it).map(|(h, o)| (h, String::from_utf8(o).unwrap()))
    }

    #[test]
    fn the_key_names_the_url_the_backend_is_told() {
        let own = Some((false, "shop.example".to_string()));
        assert_eq!(of(&[]), own);
        assert_eq!(
            of(&[("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "1.2.3.4")]),
            own
        );
        assert_eq!(
            of(&[("X-Forwarded-Proto", "https")]),
            Some((true, "shop.example".into()))
        );
        // The first valid one, as forwarded.
        let first_valid = [
            ("x-forwarded-proto", "ftp"),
            ("X-Forwarded-Proto", "HTTPS"),
            ("X-Forwarded-Proto", "http"),
        ];
        assert!(of(&first_valid).unwrap().0);
        assert_eq!(
            of(&[
                ("X-Forwarded-Host", ""),
                ("X-Forwarded-Host", "Other.Example")
            ])
            .unwrap()
            .1,
            "Other.Example"
        );
        assert_eq!(
            of(&[("X-Forwarded-Port", "8443")]).unwrap().1,
            "shop.example:8443"
        );
        assert_eq!(
            of(&[("X-Forwarded-Host", "a:81"), ("X-Forwarded-Port", "8443")])
                .unwrap()
                .1,
            "a:81"
        );
        assert_eq!(
            of(&[("X-Forwarded-Host", "[::1]"), ("X-Forwarded-Port", "x")])
                .unwrap()
                .1,
            "[::1]"
        );
        assert_eq!(
            of(&[("X-Forwarded-Host", "[::1]"), ("X-Forwarded-Port", "81")])
                .unwrap()
                .1,
            "[::1]:81"
        );
        // Forwarded's first element must say what the X- fields the backend gets say (the
        // listener's scheme and the request's `Host` when the front sent none).
        let f = [(
            "Forwarded",
            "for=1.2.3.4;proto=http;host=\"shop.example\", for=5.6.7.8;proto=https",
        )];
        assert_eq!(of(&f), Some((false, "shop.example".into())));
        let tls_front = [("Forwarded", "for=1.2.3.4;proto=https;host=\"b.example\"")];
        assert_eq!(
            of(&tls_front),
            None,
            "the backend also gets http and shop.example"
        );
        let both = [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "b"),
            ("Forwarded", "proto=https;host=b"),
        ];
        assert_eq!(of(&both), Some((true, "b".into())));
        let agree = [
            ("X-Forwarded-Host", "B"),
            ("Forwarded", "host=b;proto=http"),
        ];
        assert_eq!(of(&agree), Some((false, "B".into())));
        // Families that disagree, and a host that is no authority, keep it out of the cache.
        for fields in [
            [("X-Forwarded-Proto", "http"), ("Forwarded", "proto=https")],
            [("X-Forwarded-Host", "a"), ("Forwarded", "host=b")],
            [
                ("X-Forwarded-Host", "shop.example/en"),
                ("X-Real-IP", "1.2.3.4"),
            ],
            [("Forwarded", "host=\"a b\""), ("X-Real-IP", "1.2.3.4")],
        ] {
            assert_eq!(of(&fields), None, "{fields:?}");
        }
        // Claims the key cannot name keep the request out of the cache.
        for name in [
            "X-Forwarded-Prefix",
            "X-Original-URL",
            "x_host",
            "X-Forwarded-Ssl",
            "X-Forwarded-Scheme",
            "X-Script-Name",
        ] {
            assert_eq!(of(&[(name, "/x")]), None, "{name}");
        }
        // Other scheme claims (ingress-nginx sends X-Scheme on every request): keyed when
        // they agree with the rest, out of the cache when not (or not a scheme).
        let https = Some((true, "shop.example".to_string()));
        assert_eq!(
            of(&[("X-Scheme", "https"), ("X-Forwarded-Proto", "https")]),
            https
        );
        let three = [
            ("Front-End-Https", "ON"),
            ("X_Url_Scheme", "https"),
            ("X-Forwarded-Proto", "https"),
        ];
        assert_eq!(of(&three), https);
        // ingress-nginx: X-Forwarded-Proto, X-Forwarded-Scheme and X-Scheme together.
        let ingress = [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Scheme", "https"),
            ("X-Scheme", "https"),
            ("X-Forwarded-Ssl", "on"),
        ];
        assert_eq!(of(&ingress), https);
        assert_eq!(of(&[("X-Scheme", "http")]), own);
        // Alone, against the `X-Forwarded-Proto: http` the proxy then writes.
        assert_eq!(of(&[("X-Scheme", "https"), ("X-Real-IP", "1.2.3.4")]), None);
        for fields in [
            [("X-Scheme", "https"), ("X-Forwarded-Proto", "http")],
            [("X-Scheme", "https"), ("X-Scheme", "http")],
            [("Front-End-Https", "off"), ("Forwarded", "proto=https")],
            [("X-Scheme", "gopher"), ("X-Real-IP", "1.2.3.4")],
        ] {
            assert_eq!(of(&fields), None, "{fields:?}");
        }
    }
}
