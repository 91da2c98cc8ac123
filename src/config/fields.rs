//! Config, header field names: the one place that says which names the configuration may
//! give a field, for each use. Header rules and forward-auth copies (`rules`, `auth`) may not
//! touch framing, hop-by-hop or proxy-written fields; a field the proxy fills with a value of
//! its own on every message (`request_id.header`, mTLS `subject_header`) may not take the
//! name of any field HTTP defines, since it replaces what the client or backend sent.

use crate::http::fields::forwarding_claim;

/// An HTTP field name (RFC 9110 token), at most 256 bytes.
pub(super) fn token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Fields no rule (and no forward-auth copy) may name: hop-by-hop and framing ones, their
/// underscore lookalikes (never forwarded), and those the proxy writes itself.
const NEVER: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "transfer_encoding",
    "content_length",
    "upgrade",
    "expect",
    "host",
];
const NEVER_REQUEST: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
];
const NEVER_RESPONSE: &[&str] = &["date", "server"];

/// Whether a request field (lower-case name) is the proxy's to write or drop: no request rule
/// and no forward-auth `copy_headers` may set it.
pub(super) fn reserved_request_field(lower: &str) -> bool {
    NEVER.contains(&lower) || NEVER_REQUEST.contains(&lower)
}

/// Whether a response field (lower-case name) is the proxy's to write: no response rule may
/// set it.
pub(super) fn reserved_response_field(lower: &str) -> bool {
    NEVER.contains(&lower) || NEVER_RESPONSE.contains(&lower)
}

/// Fields defined by HTTP itself (RFC 9110, 9111, 9112, cookies, CORS' `Origin`, HSTS).
const DEFINED: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authentication-info",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expires",
    "from",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "origin",
    "pragma",
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "user-agent",
    "vary",
    "warning",
    "www-authenticate",
];

/// Whether a field the proxy writes with its own value on every message (the request id,
/// the verified client subject) may take this name (lower case): not one HTTP defines, not
/// framing or hop-by-hop, not a forwarding claim. With any of those, every request (and, for
/// the id, every response) would lose the real field or carry two.
pub(super) fn own_field_allowed(lower: &str) -> bool {
    !(DEFINED.contains(&lower)
        || NEVER.contains(&lower)
        || NEVER_REQUEST.contains(&lower)
        || forwarding_claim(lower.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_fields_refuse_what_http_defines_and_take_custom_names() {
        for name in [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "content-type",
            "date",
            "authorization",
            "x-forwarded-for",
            "x-forwarded-port",
            "forwarded",
            "x-real-ip",
            "cookie",
        ] {
            assert!(!own_field_allowed(name), "{name}");
        }
        for name in [
            "x-request-id",
            "x-client-subject",
            "x-trace",
            "ssl-client-dn",
        ] {
            assert!(own_field_allowed(name), "{name}");
        }
    }

    #[test]
    fn rules_may_set_what_is_not_the_proxys() {
        assert!(reserved_request_field("host") && reserved_request_field("via"));
        assert!(!reserved_request_field("date") && reserved_response_field("date"));
        assert!(!reserved_response_field("x-real-ip") && !reserved_request_field("x-real-ip"));
        assert!(token("X-Id") && !token("a b") && !token("") && !token(&"a".repeat(257)));
    }
}
